//! `fspl push ssh://...` and `fspl serve-stdin` through a real sshd (issue
//! 13): the forced command, the mapping of identities to queues, trust at
//! intake, the protocol's refusals and limits, and crashes of every
//! process on the way.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fspl_transport::ssh::{SshOptions, SshSink, SshTarget};
use fspl_transport::wire::{self, Msg};
use fspl_transport::{Ack, OutgoingJob, Sink, TransportErrorKind};

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
        ours([OsStr::new("queue-write"), OsStr::new("-q"), outbox.as_os_str()]),
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
            let seq = q.read_job_header(&n, None).unwrap().header.seq;
            (n.to_string_lossy().into_owned(), seq)
        })
        .collect();
    v.sort_by_key(|(n, s)| (*s, n.clone()));
    v
}

/// What one push did.
#[derive(Debug, Default)]
struct Pushed {
    acked: Vec<String>,
    refused: Vec<(String, String)>,
    error: Option<fspl_transport::TransportError>,
}

/// Push every job of `outbox` (in seq order, or the order given) through
/// an `SshSink`, removing each acknowledged one: the push driver in
/// miniature.
fn push_jobs(rx: &Receiver, key: &Path, queue: &str, outbox: &Path, only: Option<&[String]>) -> Pushed {
    let mut names: Vec<String> = seqs(outbox).into_iter().map(|(n, _)| n).collect();
    if let Some(o) = only {
        names = o.to_vec();
    }
    let mut out = Pushed::default();
    let mut sink = match SshSink::connect(&rx.target(queue), &rx.opts(key)) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let note = |acks: Vec<Ack>, out: &mut Pushed| {
        for a in acks {
            match a {
                Ack::Durable(id) => {
                    let n = &names[id as usize];
                    std::fs::remove_file(outbox.join("jobs").join(n)).unwrap();
                    out.acked.push(n.clone());
                }
                Ack::Refused { id, reason } => out.refused.push((names[id as usize].clone(), reason)),
            }
        }
    };
    for (i, n) in names.iter().enumerate() {
        let path = outbox.join("jobs").join(n);
        let mut f = std::fs::File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        let mut job = OutgoingJob {
            name: OsStr::new(n),
            seq: 0,
            len,
            reader: &mut f,
        };
        if let Err(e) = sink.send(i as u64, &mut job) {
            out.error = Some(e);
            break;
        }
        match sink.poll() {
            Ok(a) => note(a, &mut out),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    if out.error.is_none() {
        match sink.finish() {
            Ok(a) => note(a, &mut out),
            Err(e) => out.error = Some(e),
        }
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
    assert!(rx.sb.job_files(&outbox).is_empty(), "acknowledged jobs leave the outbox");
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
    assert_eq!(p.acked, [name.clone()], "{:?}", p.error);
    // Another job under the same name.
    make_job(&outbox, &rx.sb.path("seq2"), b"impostor", &[]);
    let other = seqs(&outbox)[0].0.clone();
    std::fs::rename(outbox.join("jobs").join(&other), outbox.join("jobs").join(&name)).unwrap();
    let p = push_jobs(&rx, &key, "q", &outbox, None);
    assert!(p.error.is_none(), "{:?}", p.error);
    assert!(p.acked.is_empty());
    assert_eq!(p.refused.len(), 1);
    assert!(
        p.refused[0].1.contains("a different job named"),
        "{:?}",
        p.refused
    );
    assert_eq!(std::fs::read(inbox.join("jobs").join(&name)).unwrap(), genuine);
    assert_eq!(rx.sb.job_files(&inbox).len(), 1);
}
