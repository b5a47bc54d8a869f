//! `fspl push ssh://...` and `fspl serve-stdin` through a real sshd (issue
//! 13): the forced command, the mapping of identities to queues, trust at
//! intake, the protocol's refusals and limits, and crashes of every
//! process on the way.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fspl_transport::TransportErrorKind;
use fspl_transport::ssh::{SshOptions, SshSink, SshTarget};
use fspl_transport::wire::{self, Msg};

use crate::helper::sshd::Sshd;
use crate::helper::*;

/// A receiver: sshd, an intake configuration and its queues.
struct Receiver {
    sb: Sandbox,
    sshd: Sshd,
    config: PathBuf,
}

impl Receiver {
    fn new() -> Receiver {
        let sb = Sandbox::new();
        let sshd = Sshd::start(&sb.path("sshd"));
        let config = sb.path("intake.toml");
        Receiver { sb, sshd, config }
    }

    fn configure(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// A client key whose authorized_keys line is
    /// `restrict,command="FSPL serve-stdin IDENTITY -c CONFIG"`.
    fn key_for(&self, identity: &str) -> PathBuf {
        let cmd = format!(
            "{} serve-stdin {identity} -c {}",
            fspl_bin().display(),
            self.config.display()
        );
        self.sshd.authorize(identity, "restrict", &cmd)
    }

    fn target(&self, queue: &str) -> SshTarget {
        SshTarget {
            user: None,
            host: "fspl-test-host".into(),
            port: None,
            queue: queue.into(),
        }
    }

    fn opts(&self, key: &Path) -> SshOptions {
        SshOptions {
            timeout: Duration::from_secs(30),
            command: Some(self.sshd.ssh_words(key)),
        }
    }
}

/// Make a job with `fspl prepare` (payload `payload`, params `args`) and
/// put it into `outbox` with `queue-write`.
fn make_job(outbox: &Path, seqfile: &Path, payload: &[u8], extra: &[&str]) {
    let mut prep = fspl();
    prep.arg("prepare").arg("-s").arg(seqfile);
    prep.args(extra);
    prep.args(["-i", "-", "--", "job"]);
    let job = ok(run_with_input(prep, payload));
    ok(run_with_input(
        ours([
            OsStr::new("queue-write"),
            OsStr::new("-q"),
            outbox.as_os_str(),
        ]),
        &job,
    ));
}

/// The seq of each job file in a queue, by name.
fn seqs(queue: &Path) -> Vec<(String, u64)> {
    let q = fspl_queue::Queue::new(queue);
    let mut v: Vec<(String, u64)> = std::fs::read_dir(queue.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| fspl_queue::classify(n) == fspl_queue::EntryKind::Job)
        .map(|n| {
            // An encrypted job (unreadable here) sorts last.
            let seq = q
                .read_job_header(&n, None)
                .map_or(u64::MAX, |d| d.header.seq);
            (n.to_string_lossy().into_owned(), seq)
        })
        .collect();
    v.sort_by_key(|(n, s)| (*s, n.clone()));
    v
}

/// What one push did.
#[derive(Debug, Default)]
struct Pushed {
    /// Jobs that left the outbox (acknowledged), in seq order.
    acked: Vec<String>,
    /// Jobs refused by the receiver: (name, reason).
    refused: Vec<(String, String)>,
    error: Option<fspl_transport::TransportError>,
}

/// Push `outbox` with fspl-transport's push driver and the ssh sink (the
/// code `fspl push` runs, in this process, so that the error's kind can
/// be asserted); with `only`, just those jobs (the others wait outside).
fn push_jobs(
    rx: &Receiver,
    key: &Path,
    queue: &str,
    outbox: &Path,
    only: Option<&[String]>,
) -> Pushed {
    let aside = outbox.join("aside");
    let mut moved = Vec::new();
    if let Some(keep) = only {
        std::fs::create_dir_all(&aside).unwrap();
        for (n, _) in seqs(outbox) {
            if !keep.contains(&n) {
                std::fs::rename(outbox.join("jobs").join(&n), aside.join(&n)).unwrap();
                moved.push(n);
            }
        }
    }
    let before = seqs(outbox);
    let mut sink = SshSink::new(rx.target(queue), rx.opts(key));
    let report = fspl_transport::push::push(outbox, &mut sink, &Default::default());
    drop(sink);
    let after: Vec<String> = seqs(outbox).into_iter().map(|(n, _)| n).collect();
    for n in moved {
        std::fs::rename(aside.join(&n), outbox.join("jobs").join(&n)).unwrap();
    }
    let mut out = Pushed {
        acked: before
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !after.contains(n))
            .collect(),
        ..Pushed::default()
    };
    match report {
        Ok(r) => {
            out.refused = r
                .refused
                .into_iter()
                .map(|f| {
                    (
                        f.file.file_name().unwrap().to_string_lossy().into_owned(),
                        f.reason,
                    )
                })
                .collect();
            out.error = r.error;
        }
        Err(e) => out.error = Some(e),
    }
    out
}

/// Run the queue with a command that appends "SEQ PAYLOAD" to `log`.
fn process(queue: &Path, log: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = fspl();
    c.arg("queue-process").arg("-q").arg(queue);
    c.args(extra);
    c.args(["sh", "--", "-c"]);
    c.arg(format!(
        "printf '%s %s\\n' \"$FSPL_SEQ\" \"$(cat)\" >> '{}'",
        log.display()
    ));
    run(c)
}

#[test]
fn out_of_order_and_duplicated_pushes_end_in_order_at_the_receiver() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nbackups = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let seqfile = rx.sb.path("seq");
    for i in 1..=6 {
        make_job(&outbox, &seqfile, format!("p{i}").as_bytes(), &[]);
    }
    let all = seqs(&outbox);
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    // Jobs 4..6 first, then 1..3: the receiver holds 4..6 until 1..3 come.
    let later = names[3..].to_vec();
    let first = names[..3].to_vec();
    let copies: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(outbox.join("jobs").join(n)).unwrap())
        .collect();
    let p = push_jobs(&rx, &key, "backups", &outbox, Some(&later));
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(p.acked, later);
    let log = rx.sb.path("log");
    ok(process(&inbox, &log, &[]));
    assert!(!log.exists(), "nothing runs before seq 1 arrives");
    // Job 2 again, as a sender that lost the acknowledgement would send it
    // (same name, same bytes), and then everything that is left.
    std::fs::write(outbox.join("jobs").join(&names[1]), &copies[1]).unwrap();
    let p = push_jobs(&rx, &key, "backups", &outbox, Some(&[names[1].clone()]));
    assert_eq!(p.acked, [names[1].clone()], "{:?}", p.error);
    std::fs::write(outbox.join("jobs").join(&names[1]), &copies[1]).unwrap();
    let p = push_jobs(&rx, &key, "backups", &outbox, Some(&first));
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(p.acked, first);
    assert!(
        rx.sb.job_files(&outbox).is_empty(),
        "acknowledged jobs leave the outbox"
    );
    // Every job arrived under its outbox name, byte for byte, once.
    let arrived = seqs(&inbox);
    assert_eq!(
        arrived.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        names
    );
    for (n, bytes) in names.iter().zip(&copies) {
        assert_eq!(&std::fs::read(inbox.join("jobs").join(n)).unwrap(), bytes);
    }
    ok(process(&inbox, &log, &[]));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "1 p1\n2 p2\n3 p3\n4 p4\n5 p5\n6 p6\n"
    );
    // A job sent again after it ran is stored below nextseq and never runs.
    std::fs::write(outbox.join("jobs").join(&names[0]), &copies[0]).unwrap();
    let p = push_jobs(&rx, &key, "backups", &outbox, Some(&[names[0].clone()]));
    assert_eq!(p.acked, [names[0].clone()], "{:?}", p.error);
    ok(process(&inbox, &log, &[]));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        6,
        "no job ran twice"
    );
    // No temporary is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(inbox.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".fspl-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_job_with_the_name_of_a_different_job_is_refused_and_the_first_kept() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    make_job(&outbox, &rx.sb.path("seq"), b"genuine", &[]);
    let name = seqs(&outbox)[0].0.clone();
    let genuine = std::fs::read(outbox.join("jobs").join(&name)).unwrap();
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert_eq!(p.acked, std::slice::from_ref(&name), "{:?}", p.error);
    // Another job under the same name.
    make_job(&outbox, &rx.sb.path("seq2"), b"impostor", &[]);
    let other = seqs(&outbox)[0].0.clone();
    std::fs::rename(
        outbox.join("jobs").join(&other),
        outbox.join("jobs").join(&name),
    )
    .unwrap();
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert!(p.acked.is_empty());
    assert_eq!(p.refused.len(), 1);
    assert!(
        p.refused[0].1.contains("a different job named"),
        "{:?}",
        p.refused
    );
    assert_eq!(
        std::fs::read(inbox.join("jobs").join(&name)).unwrap(),
        genuine
    );
    assert_eq!(rx.sb.job_files(&inbox).len(), 1);
}

/// The one line a failed push gives, and whether it is permanent.
fn failure(p: &Pushed) -> (String, TransportErrorKind) {
    let e = p.error.as_ref().expect("the push failed");
    let line = e.to_string();
    assert!(!line.contains('\n'), "one line: {line:?}");
    (line, e.kind())
}

#[test]
fn an_identity_writing_a_queue_it_may_not_is_refused_and_nothing_is_stored() {
    let rx = Receiver::new();
    let backups = rx.sb.queue("backups");
    let photos = rx.sb.queue("photos");
    let root = rx.sb.path("laptop");
    std::fs::create_dir(&root).unwrap();
    rx.configure(&format!(
        "[identity.laptop.queues]\nbackups = \"{}\"\n\"<\" = \"{}\"\n\
         [identity.phone.queues]\nphotos = \"{}\"\n",
        backups.display(),
        root.display(),
        photos.display()
    ));
    let phone = rx.key_for("phone");
    let laptop = rx.key_for("laptop");
    let tablet = rx.key_for("tablet");
    let outbox = rx.sb.queue("outbox");
    make_job(&outbox, &rx.sb.path("seq"), b"x", &[]);
    let before = rx.sb.job_files(&outbox);

    let p = push_jobs(&rx, &phone, "backups", &outbox, None);
    let (line, kind) = failure(&p);
    assert!(
        line.contains("serve-stdin: identity \"phone\" may not write queue \"backups\""),
        "{line}"
    );
    assert_eq!(kind, TransportErrorKind::Permanent);

    let p = push_jobs(&rx, &tablet, "backups", &outbox, None);
    let (line, kind) = failure(&p);
    assert!(
        line.contains("identity \"tablet\" is not in the server's intake configuration"),
        "{line}"
    );
    assert_eq!(kind, TransportErrorKind::Permanent);

    // The subtree rule takes existing queues only.
    let p = push_jobs(&rx, &laptop, "mail", &outbox, None);
    let (line, kind) = failure(&p);
    assert!(
        line.contains("queue \"mail\" does not exist on the server"),
        "{line}"
    );
    assert!(
        !line.contains(&root.display().to_string()),
        "no server path: {line}"
    );
    assert_eq!(kind, TransportErrorKind::Permanent);
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "nothing created"
    );

    for q in [&backups, &photos] {
        assert!(rx.sb.job_files(q).is_empty());
        assert_eq!(std::fs::read_dir(q.join("jobs")).unwrap().count(), 0);
    }
    assert_eq!(
        rx.sb.job_files(&outbox),
        before,
        "the job stays in the outbox"
    );

    // The same job goes where it may.
    std::fs::create_dir(root.join("mail")).unwrap();
    std::fs::remove_dir(root.join("mail")).unwrap();
    ok(run(ours([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        root.join("mail").as_os_str(),
    ])));
    let p = push_jobs(&rx, &laptop, "mail", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(rx.sb.job_files(&root.join("mail")), before);
}

#[test]
fn hostile_queue_names_are_refused_and_nothing_is_created() {
    let rx = Receiver::new();
    let root = rx.sb.path("tree");
    std::fs::create_dir(&root).unwrap();
    // What `../x` would reach, and a queue the subtree holds.
    let victim = rx.sb.queue("x");
    let fine = rx.sb.queue("tree/fine");
    rx.configure(&format!(
        "[identity.laptop.queues]\n\"<\" = \"{}\"\n",
        root.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    make_job(&outbox, &rx.sb.path("seq"), b"x", &[]);
    let long = "q".repeat(300);
    for name in [
        "../x", "..", "a/b", "/etc", ".hidden", ".", "a\nb", "\x1b[2J", "tab\tq", &long,
    ] {
        let p = push_jobs(&rx, &key, name, &outbox, None);
        let (line, kind) = failure(&p);
        assert!(
            line.contains("serve-stdin: refused: queue name"),
            "{name:?}: {line}"
        );
        assert!(!line.contains('\x1b'), "{line:?}");
        assert_eq!(kind, TransportErrorKind::Permanent, "{name:?}");
    }
    assert!(rx.sb.job_files(&victim).is_empty());
    assert!(rx.sb.job_files(&fine).is_empty());
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    entries.sort();
    assert_eq!(entries, ["fine"], "nothing created in the subtree");
    // NUL cannot cross ssh (the request is a C string): the client cannot
    // even start ssh with it.
    let p = push_jobs(&rx, &key, "a\0b", &outbox, None);
    assert!(p.error.is_some());
    // The queue that is there takes the job.
    let p = push_jobs(&rx, &key, "fine", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(rx.sb.job_files(&fine).len(), 1);
}

#[test]
fn a_client_asking_for_another_command_gets_a_one_line_refusal() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let marker = rx.sb.path("ran");
    let injected = format!("fspl-push q; touch {}", marker.display());
    let substituted = format!("fspl-push \"$(touch {})\"", marker.display());
    for (request, want) in [
        (None, "the client asked for an interactive session"),
        (Some("ls -la /"), "the client asked for \"ls -la /\""),
        (Some("fspl-push"), "the client asked for \"fspl-push\""),
        (Some("fspl-push a b"), "the client asked for"),
        (Some("fspl serve-stdin root"), "the client asked for"),
        (Some(injected.as_str()), "the client asked for"),
        (Some("fspl-push 'unclosed"), "the client asked for"),
    ] {
        let mut c = rx.sshd.ssh(&key);
        if let Some(r) = request {
            c.arg(r);
        }
        let out = run(c);
        assert!(!out.status.success(), "{request:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{request:?}: {err}");
        assert!(
            lines[0]
                .starts_with("fspl: error: this key only accepts `fspl push` (fspl-push QUEUE)")
                || lines[0].starts_with("fspl: error: this key only accepts `fspl push`; "),
            "{err}"
        );
        assert!(lines[0].contains(want), "{request:?}: {err}");
    }
    // A request that splits into two words is data: the queue name is
    // checked, nothing is run.
    let mut c = rx.sshd.ssh(&key);
    c.arg(&substituted).stdin(Stdio::null());
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(!marker.exists(), "nothing the client sent was run");
    assert!(rx.sb.job_files(&inbox).is_empty());
}

#[test]
fn trust_at_intake_refuses_an_unsigned_or_altered_job_and_accepts_a_signed_one() {
    let rx = Receiver::new();
    let inbox = rx.sb.path("inbox");
    ok(run(ours([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        inbox.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("backups"),
    ])));
    let sk = rx.sb.path("laptop.key");
    ok(run(ours([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        sk.as_os_str(),
        OsStr::new("-C"),
        OsStr::new("laptop"),
    ])));
    let trust = rx.sb.path("trust.toml");
    std::fs::write(
        &trust,
        format!(
            "[[sender]]\nname = \"laptop\"\nkey = \"{}\"\nqueues = [\"backups\"]\n",
            std::fs::read_to_string(sk.with_extension("key.pub"))
                .unwrap()
                .trim()
        ),
    )
    .unwrap();
    rx.configure(&format!(
        "[identity.laptop]\ntrust = \"{}\"\n[identity.laptop.queues]\nbackups = \"{}\"\n",
        trust.display(),
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let seq = rx.sb.path("seq");
    let sign = ["--sign", sk.to_str().unwrap(), "--to", "backups"];
    make_job(&outbox, &seq, b"signed", &sign);
    make_job(&outbox, &seq, b"unsigned", &[]);
    make_job(&outbox, &seq, b"altered!", &sign);
    make_job(
        &outbox,
        &seq,
        &vec![7u8; 300_000],
        &[
            "--compress",
            "zstd",
            "--sign",
            sk.to_str().unwrap(),
            "--to",
            "backups",
        ],
    );
    let jobs = seqs(&outbox);
    // Change the last payload byte of job 3 after signing.
    let altered = outbox.join("jobs").join(&jobs[2].0);
    let mut bytes = std::fs::read(&altered).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&altered, &bytes).unwrap();

    let p = push_jobs(&rx, &key, "backups", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(p.acked, [jobs[0].0.clone(), jobs[3].0.clone()]);
    assert_eq!(p.refused.len(), 2, "{:?}", p.refused);
    assert_eq!(p.refused[0].0, jobs[1].0);
    assert!(
        p.refused[0].1.starts_with("unsigned job"),
        "{:?}",
        p.refused
    );
    assert_eq!(p.refused[1].0, jobs[2].0);
    assert!(p.refused[1].1.starts_with("payload"), "{:?}", p.refused);
    assert!(p.refused[1].1.contains("does not match"), "{:?}", p.refused);
    // Only the signed jobs are in the queue; nothing else was left there.
    let names: Vec<String> = std::fs::read_dir(inbox.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut want = vec![jobs[0].0.clone(), jobs[3].0.clone()];
    want.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, want);
    let log = rx.sb.path("log");
    let out = process(&inbox, &log, &["--trust", trust.to_str().unwrap()]);
    ok(out);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "1 signed\n");
}

/// A raw session: ssh with `request`, our end of its pipes.
struct Raw {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::process::ChildStdout,
}

impl Raw {
    fn start(rx: &Receiver, key: &Path, request: &str) -> Raw {
        let mut c = rx.sshd.ssh(key);
        c.arg(request)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        Raw {
            child,
            stdin,
            stdout,
        }
    }

    /// A session for queue `q` past the handshake: our hello sent, the
    /// server's hello and go-ahead read.
    fn ready(rx: &Receiver, key: &Path) -> Raw {
        let mut raw = Raw::start(rx, key, "fspl-push q");
        raw.send(&hello());
        assert!(matches!(raw.msg(), Msg::Hello { .. }));
        assert!(matches!(raw.msg(), Msg::Ready { .. }));
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        let _ = self.stdin.as_mut().unwrap().write_all(bytes);
        let _ = self.stdin.as_mut().unwrap().flush();
    }

    fn msg(&mut self) -> Msg {
        Msg::read_from(&mut self.stdout).unwrap()
    }

    /// Every message until the server's output ends, then its exit
    /// status and stderr; fails the test if that takes more than `limit`
    /// (a hang).
    fn end(mut self, limit: Duration) -> (Vec<Msg>, std::process::ExitStatus, String) {
        let pid = self.child.id() as i32;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        // A hang fails the test instead of blocking it: ssh is killed.
        let watchdog = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        });
        let mut msgs = Vec::new();
        while let Ok(m) = Msg::read_from(&mut self.stdout) {
            msgs.push(m);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            !watchdog.join().unwrap(),
            "the server did not end within {limit:?}"
        );
        drop(self.stdin.take());
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let st = self.child.wait().unwrap();
        (msgs, st, err)
    }
}

fn hello() -> Vec<u8> {
    Msg::Hello {
        min: wire::VERSION_MIN,
        max: wire::VERSION_MAX,
    }
    .encode()
}

fn fatal(msgs: &[Msg]) -> (wire::FatalKind, String) {
    match msgs.last() {
        Some(Msg::Fatal { kind, message }) => (*kind, message.clone()),
        other => panic!("expected a fatal message last, got {other:?} in {msgs:?}"),
    }
}

#[test]
fn a_protocol_version_mismatch_is_one_clear_line_on_both_sides() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    // A client from the future.
    let mut raw = Raw::start(&rx, &key, "fspl-push q");
    assert_eq!(
        raw.msg(),
        Msg::Hello {
            min: wire::VERSION_MIN,
            max: wire::VERSION_MAX
        }
    );
    raw.send(&Msg::Hello { min: 7, max: 9 }.encode());
    let (msgs, st, err) = raw.end(Duration::from_secs(20));
    let (kind, message) = fatal(&msgs);
    assert_eq!(kind, wire::FatalKind::Permanent);
    assert!(
        message.starts_with("protocol version mismatch: the client speaks versions 7 to 9, this fspl speaks version 1"),
        "{message}"
    );
    assert!(!st.success());
    assert_eq!(err.trim_end(), format!("fspl: error: {message}"));
    // A server from the future, as our client sees it.
    let script = "printf '\\001\\000\\000\\000\\014fspl-ssh\\000\\011\\000\\011'; cat > /dev/null";
    let opts = SshOptions {
        timeout: Duration::from_secs(10),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "fake-ssh".into(),
        ]),
    };
    let e = SshSink::connect(&rx.target("q"), &opts)
        .err()
        .expect("refused");
    assert_eq!(e.kind(), TransportErrorKind::Permanent);
    assert!(
        e.to_string().contains(
            "protocol version mismatch: the server speaks version 9, this fspl speaks version 1"
        ),
        "{e}"
    );
    // Something that is not fspl at all.
    let opts = SshOptions {
        timeout: Duration::from_secs(10),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo 'Welcome to the server!'".into(),
            "x".into(),
        ]),
    };
    let e = SshSink::connect(&rx.target("q"), &opts)
        .err()
        .expect("refused");
    assert_eq!(e.kind(), TransportErrorKind::Permanent);
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn a_silent_client_is_hung_up_on() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "idle_timeout = 1\n[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    // Silent after its hello, and silent in the middle of a job.
    for partial in [false, true] {
        let mut raw = Raw::ready(&rx, &key);
        if partial {
            raw.send(
                &Msg::Job {
                    id: 1,
                    len: 1000,
                    name: b"fspl-a.fspl".to_vec(),
                }
                .encode(),
            );
            raw.send(&[0u8; 10]);
        }
        let (msgs, st, _) = raw.end(Duration::from_secs(30));
        let (kind, message) = fatal(&msgs);
        assert_eq!(kind, wire::FatalKind::Transient);
        assert!(
            message.contains("the client went silent: nothing arrived for 1 s"),
            "{message}"
        );
        assert!(!st.success());
    }
    assert_eq!(
        std::fs::read_dir(inbox.join("jobs")).unwrap().count(),
        0,
        "no job, no temporary"
    );
}

#[test]
fn hostile_frames_end_the_session_without_storing_or_allocating() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "max_job_size = 1000\n[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let job = |len: u64| {
        Msg::Job {
            id: 1,
            len,
            name: b"fspl-a.fspl".to_vec(),
        }
        .encode()
    };
    let mut huge_frame = vec![0x10];
    huge_frame.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut bad_digest = job(3);
    bad_digest.extend_from_slice(b"abc");
    bad_digest.extend_from_slice(&[0u8; 32]);
    for (bytes, kind, want) in [
        (
            job(u64::MAX),
            wire::FatalKind::Permanent,
            "above the limit of 1000",
        ),
        (
            huge_frame,
            wire::FatalKind::Permanent,
            "more than its limit",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            wire::FatalKind::Permanent,
            "unknown message type",
        ),
        (bad_digest, wire::FatalKind::Transient, "arrived damaged"),
        (
            Msg::Ack { id: 3 }.encode(),
            wire::FatalKind::Permanent,
            "unexpected Ack",
        ),
    ] {
        let mut raw = Raw::start(&rx, &key, "fspl-push q");
        raw.send(&hello());
        assert!(matches!(raw.msg(), Msg::Hello { .. }));
        assert!(matches!(
            raw.msg(),
            Msg::Ready {
                max_job_len: 1000,
                ..
            }
        ));
        raw.send(&bytes);
        let (msgs, st, err) = raw.end(Duration::from_secs(20));
        let (k, message) = fatal(&msgs);
        assert_eq!(k, kind, "{message}");
        assert!(message.contains(want), "{want}: {message}");
        assert!(!st.success());
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A job name that is not one, or bytes that are not a job, are refused
    // alone; the session goes on.
    let job = ok(run_with_input(
        ours(["prepare", "--seq", "1", "-i", "-"]),
        b"hi",
    ));
    let mut raw = Raw::ready(&rx, &key);
    for (id, name, bytes) in [
        (1u64, &b"../fspl-x.fspl"[..], &job[..]),
        (2, b"fspl-junk.fspl", b"junk, not a job"),
        (3, b"fspl-ok.fspl", &job[..]),
    ] {
        raw.send(&Msg::job_frame(id, name, bytes));
    }
    raw.send(&Msg::End.encode());
    let (msgs, st, _) = raw.end(Duration::from_secs(20));
    assert!(st.success(), "{msgs:?}");
    assert!(
        matches!(&msgs[0], Msg::Refused { id: 1, reason } if reason.contains("is not a job file name")),
        "{msgs:?}"
    );
    assert!(
        matches!(&msgs[1], Msg::Refused { id: 2, reason } if reason.contains("bad magic")),
        "{msgs:?}"
    );
    assert_eq!(msgs[2..], [Msg::Ack { id: 3 }, Msg::Bye]);
    assert_eq!(rx.sb.job_files(&inbox), ["fspl-ok.fspl"]);
    assert_eq!(std::fs::read(inbox.join("jobs/fspl-ok.fspl")).unwrap(), job);
    assert_eq!(
        std::fs::read_dir(inbox.join("jobs")).unwrap().count(),
        1,
        "no temporary left"
    );
}

#[test]
fn a_job_above_the_servers_limit_is_refused_and_the_others_go_through() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "max_job_size = 2000\n[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let seq = rx.sb.path("seq");
    make_job(&outbox, &seq, b"small", &[]);
    make_job(&outbox, &seq, &vec![b'x'; 5000], &[]);
    make_job(&outbox, &seq, b"small too", &[]);
    let jobs = seqs(&outbox);
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(p.acked, [jobs[0].0.clone(), jobs[2].0.clone()]);
    assert_eq!(p.refused.len(), 1);
    assert!(
        p.refused[0]
            .1
            .contains("more than the 2000 the server takes"),
        "{:?}",
        p.refused
    );
    assert_eq!(rx.sb.job_files(&inbox).len(), 2);
}

/// What the crash test kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Push,
    Ssh,
    ServeStdin,
    SshdSession,
}

/// The pids of `victim` for this receiver.
fn victims(rx: &Receiver, victim: Victim) -> Vec<i32> {
    let config = rx.config.display().to_string();
    let ssh_config = rx.sshd.ssh_config.display().to_string();
    let listener = rx.sshd.pid() as i32;
    crate::helper::sshd::processes()
        .into_iter()
        .filter(|(_, ppid, argv)| match victim {
            Victim::Ssh => argv.first().is_some_and(|a| a == "ssh") && argv.contains(&ssh_config),
            Victim::ServeStdin => argv.iter().any(|a| a == "serve-stdin") && argv.contains(&config),
            Victim::SshdSession => *ppid == listener,
            Victim::Push => false,
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

#[test]
fn reliability_sigkill_on_either_side_of_an_ssh_push_loses_no_job_and_runs_none_twice() {
    use crate::reliability_common::{Rng, Tally, long_mode, payload};
    let mut tally = Tally::new("transport_ssh::sigkill_anywhere");
    let rounds = if long_mode() { 150 } else { 20 };
    let seed = std::env::var("FSPL_SSH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Rng(seed);
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let seqfile = rx.sb.path("seq");
    let log = rx.sb.path("log");
    let payloads = rx.sb.path("payloads");
    std::fs::create_dir(&payloads).unwrap();
    let mut made = 0u64;
    let mut expected = String::new();
    for round in 0..rounds {
        let ctx = format!("seed {seed} round {round}");
        // A few new jobs each round, now and then a larger one (a longer
        // window to be killed in).
        for _ in 0..3 {
            made += 1;
            let len = if rng.below(4) == 0 { 2 << 20 } else { 40 };
            let p = payload(made, seed, len);
            make_job(&outbox, &seqfile, &p, &[]);
            std::fs::write(payloads.join(made.to_string()), &p).unwrap();
            expected.push_str(&format!("{made} ok\n"));
        }
        let victim = match rng.below(4) {
            0 => Victim::Push,
            1 => Victim::Ssh,
            2 => Victim::ServeStdin,
            _ => Victim::SshdSession,
        };
        let delay = Duration::from_millis(rng.below(400));
        // `fspl push`, as a user or the daemon runs it.
        let mut child = fspl()
            .args(["push", "-q"])
            .arg(&outbox)
            .arg("ssh://fspl-test-host/q")
            .env(fspl_transport::ssh::SSH_ENV, rx.sshd.fspl_ssh(&key))
            .env(fspl_transport::ssh::TIMEOUT_ENV, "30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut killed = false;
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() >= delay {
                let pids = match victim {
                    Victim::Push => vec![child.id() as i32],
                    v => victims(&rx, v),
                };
                for pid in pids {
                    // SAFETY: our child, or a process of this test's own
                    // sshd session.
                    killed |= unsafe { libc::kill(pid, libc::SIGKILL) } == 0;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !killed && !out.status.success() {
            tally.problems(&ctx, vec![format!("a push failed without a kill: {err}")]);
        }
        if err.contains("error: not sent: ") {
            tally.problems(&ctx, vec![format!("refused: {err}")]);
        }
        tally.runs += 1;
        if killed {
            tally.faults += 1;
        }
        // Now and then the receiver runs what it has.
        if rng.below(3) == 0 {
            let out = process_checked(&inbox, &payloads, &log);
            if !out.status.success() {
                tally.problems(
                    &ctx,
                    vec![format!(
                        "queue-process failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )],
                );
            }
        }
    }
    // Then a push nobody kills takes what is left.
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    if let Some(e) = p.error {
        tally.problems("final push", vec![e.to_string()]);
    }
    if !rx.sb.job_files(&outbox).is_empty() {
        tally.problems(
            "final push",
            vec![format!(
                "left in the outbox: {:?}",
                rx.sb.job_files(&outbox)
            )],
        );
    }
    let out = process_checked(&inbox, &payloads, &log);
    if !out.status.success() {
        tally.problems(
            "final run",
            vec![String::from_utf8_lossy(&out.stderr).into_owned()],
        );
    }
    let ran = std::fs::read_to_string(&log).unwrap_or_default();
    tally.states += ran.lines().count() as u64;
    if ran != expected {
        let got: Vec<&str> = ran
            .lines()
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        tally.problems(
            &format!("seed {seed}"),
            vec![format!(
                "every job once, in order: ran seqs {got:?}, expected 1..={made}"
            )],
        );
    }
    tally.finish();
}

/// Run the queue with a command that appends "SEQ ok" to `log` when the
/// payload is the one in `payloads/SEQ`, "SEQ BAD" when not.
fn process_checked(queue: &Path, payloads: &Path, log: &Path) -> std::process::Output {
    let mut c = fspl();
    c.arg("queue-process").arg("-q").arg(queue);
    c.args(["sh", "--", "-c"]);
    c.arg(format!(
        "if cmp -s - '{p}'/\"$FSPL_SEQ\"; then r=ok; else r=BAD; fi; echo \"$FSPL_SEQ $r\" >> '{l}'",
        p = payloads.display(),
        l = log.display()
    ));
    run(c)
}

#[test]
fn fspl_push_over_ssh_reports_in_one_line_and_needs_no_connection_for_an_empty_outbox() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    rx.configure(&format!(
        "[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let push = |url: &str, ssh: &str| {
        let mut c = fspl();
        c.args(["push", "-q"])
            .arg(&outbox)
            .arg(url)
            .env(fspl_transport::ssh::SSH_ENV, ssh)
            .env(fspl_transport::ssh::TIMEOUT_ENV, "30");
        run(c)
    };
    // Nothing to send: ssh is never started.
    let out = push("ssh://fspl-test-host/q", "/nonexistent/ssh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq = rx.sb.path("seq");
    make_job(&outbox, &seq, b"one", &[]);
    make_job(&outbox, &seq, b"two", &[]);
    // A queue the key may not write: one error line, the jobs stay.
    let out = push("ssh://fspl-test-host/other", &rx.sshd.fspl_ssh(&key));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("fspl: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(
            "ssh://fspl-test-host/other: serve-stdin: identity \"laptop\" may not write queue \"other\""
        ),
        "{err}"
    );
    assert_eq!(rx.sb.job_files(&outbox).len(), 2);
    // ssh itself failing (no such program) is one line too.
    let out = push("ssh://fspl-test-host/q", "/nonexistent/ssh");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot run \"/nonexistent/ssh\""), "{err}");
    // And the real thing.
    let mut c = fspl();
    c.args(["push", "--json", "-q"])
        .arg(&outbox)
        .arg("ssh://fspl-test-host/q")
        .env(fspl_transport::ssh::SSH_ENV, rx.sshd.fspl_ssh(&key));
    let json: serde_json::Value = serde_json::from_slice(&ok(run(c))).unwrap();
    assert_eq!(json["sent"], 2, "{json}");
    assert!(rx.sb.job_files(&outbox).is_empty());
    assert_eq!(rx.sb.job_files(&inbox).len(), 2);
}

#[test]
fn trust_at_intake_reads_encrypted_jobs_only_with_decrypt_with() {
    let rx = Receiver::new();
    let inbox = rx.sb.path("inbox");
    ok(run(ours([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        inbox.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("q"),
    ])));
    let sk = rx.sb.path("laptop.key");
    let server = rx.sb.path("server.key");
    for (k, c) in [(&sk, "laptop"), (&server, "server")] {
        ok(run(ours([
            OsStr::new("keygen"),
            OsStr::new("-o"),
            k.as_os_str(),
            OsStr::new("-C"),
            OsStr::new(c),
        ])));
    }
    let trust = rx.sb.path("trust.toml");
    std::fs::write(
        &trust,
        format!(
            "[[sender]]\nname = \"laptop\"\nkey = \"{}\"\n",
            std::fs::read_to_string(sk.with_extension("key.pub"))
                .unwrap()
                .trim()
        ),
    )
    .unwrap();
    let configure = |decrypt: bool| {
        let extra = if decrypt {
            format!("decrypt_with = [\"{}\"]\n", server.display())
        } else {
            String::new()
        };
        rx.configure(&format!(
            "[identity.laptop]\ntrust = \"{}\"\n{extra}[identity.laptop.queues]\nq = \"{}\"\n",
            trust.display(),
            inbox.display()
        ));
    };
    let key = rx.key_for("laptop");
    let outbox = rx.sb.queue("outbox");
    let recipient = format!("@{}", server.with_extension("key.pub").display());
    make_job(
        &outbox,
        &rx.sb.path("seq"),
        b"sealed",
        &[
            "--sign",
            sk.to_str().unwrap(),
            "--to",
            "q",
            "--encrypt-to",
            &recipient,
        ],
    );
    configure(false);
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert_eq!(p.refused.len(), 1, "{p:?}");
    assert!(p.refused[0].1.contains("the job is encrypted"), "{p:?}");
    assert!(rx.sb.job_files(&inbox).is_empty());
    configure(true);
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert!(p.error.is_none() && p.refused.is_empty(), "{p:?}");
    assert_eq!(p.acked.len(), 1);
    let log = rx.sb.path("log");
    ok(process(
        &inbox,
        &log,
        &[
            "--trust",
            trust.to_str().unwrap(),
            "--identity",
            server.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "1 sealed\n");
}

/// Regression: serve-stdin sent the acknowledgements of a full batch only
/// when the client paused (or once 32 KiB of them had piled up), so a
/// client sending back to back heard nothing until its last job, and
/// removed nothing from its outbox meanwhile. Here the client sends a
/// full batch and the start of one more job, then waits: the batch must
/// be acknowledged while that job is still coming.
#[test]
fn a_full_batch_is_acknowledged_at_once_while_the_client_is_still_sending() {
    let rx = Receiver::new();
    let inbox = rx.sb.queue("inbox");
    // A server that hears nothing for 10 s hangs up: the old behaviour
    // fails the test instead of hanging it.
    rx.configure(&format!(
        "idle_timeout = 10\n[identity.laptop.queues]\nq = \"{}\"\n",
        inbox.display()
    ));
    let key = rx.key_for("laptop");
    let mut raw = Raw::ready(&rx, &key);
    let n = fspl_transport::intake::BATCH_JOBS as u64;
    let name = |id: u64| format!("fspl-00000000-0000-4000-8000-{id:012}.fspl");
    let mut stream = Vec::new();
    for id in 0..n {
        stream.extend(Msg::job_frame(
            id,
            name(id).as_bytes(),
            &fspl_testkit::job(id + 1, b"x"),
        ));
    }
    let last = Msg::job_frame(n, name(n).as_bytes(), &fspl_testkit::job(n + 1, b"last"));
    let (start, rest) = last.split_at(last.len() - 40);
    stream.extend_from_slice(start);
    raw.send(&stream);
    let mut acked = Vec::new();
    while (acked.len() as u64) < n {
        match raw.msg() {
            Msg::Ack { id } => acked.push(id),
            other => panic!(
                "after {} acknowledgements, the server sent {other:?}",
                acked.len()
            ),
        }
    }
    acked.sort_unstable();
    assert_eq!(acked, (0..n).collect::<Vec<_>>());
    assert_eq!(rx.sb.job_files(&inbox).len() as u64, n);
    // The last job, completed, goes through the same session.
    raw.send(rest);
    raw.send(&Msg::End.encode());
    let (msgs, st, err) = raw.end(Duration::from_secs(30));
    assert!(st.success(), "{msgs:?} {err}");
    assert_eq!(msgs, [Msg::Ack { id: n }, Msg::Bye], "{err}");
    assert_eq!(rx.sb.job_files(&inbox).len() as u64, n + 1);
}
