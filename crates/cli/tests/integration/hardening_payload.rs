//! Issue 11 ("Hardening"), the payload items, each as an attacker would
//! try it against real processes, files and keys:
//!
//! - a writer changing a job file in place after its payload was checked
//!   (the command must only ever read checked bytes, with `--trust`);
//! - a small compressed job that decodes to far more than its header says
//!   (nothing past one byte more may be decoded, or written anywhere);
//! - a command that exits while a background child of its holds the
//!   payload pipe (the job is over when the command is; `--timeout`
//!   bounds it);
//! - the daemon's shutdown kill, which must never signal a command it has
//!   already reaped (its pid may belong to someone else by then).
//!
//! Every timing below is a generous deadline for something that hung
//! before, never a measurement of speed.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;

/// How long the background child of a command sleeps: far beyond every
/// deadline below.
const CHILD_SLEEP: u64 = 60;
/// What "promptly" means next to it.
const PROMPT: Duration = Duration::from_secs(20);

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Into the queue: through queue-write, or for a job it refuses (a bomb, a
/// corrupt stream) straight into `jobs/`, as a sync tool could.
fn write_job(queue: &Path, job: &[u8]) {
    deliver(queue, job);
}

/// Letters and newlines, never `Z`, `X` or `APPENDED` in a row.
fn text_payload(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            if i % 61 == 60 {
                b'\n'
            } else {
                b'a' + ((i * 7 + i / 13) % 23) as u8
            }
        })
        .collect()
}

/// A zstd frame holding `job` followed by `zeros` zero bytes, made of
/// run-length blocks: 4 bytes per 128 KiB, so a gigabyte takes 32 KB.
/// (Decoding such blocks is a memset: some 36 GB/s on our machines.)
fn zstd_with_zeros(job: &[u8], zeros: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 * 1024;
    fn block_header(last: bool, kind: u32, size: u64) -> [u8; 3] {
        let v = u32::from(last) | (kind << 1) | ((size as u32) << 3);
        let b = v.to_le_bytes();
        [b[0], b[1], b[2]]
    }
    assert!((job.len() as u64) < BLOCK);
    // Magic; no content size, no checksum; a 128 KiB window.
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let blocks = zeros.div_ceil(BLOCK);
    out.extend_from_slice(&block_header(blocks == 0, 0, job.len() as u64));
    out.extend_from_slice(job);
    for i in 0..blocks {
        let size = (zeros - i * BLOCK).min(BLOCK);
        out.extend_from_slice(&block_header(i + 1 == blocks, 1, size));
        out.push(0);
    }
    out
}

/// Run with a deadline (a hang fails the test instead of stalling it).
fn run_bounded(cmd: Command, stdin: Stdio, deadline: Duration) -> (Output, Duration) {
    run_bounded_to(cmd, stdin, Stdio::piped(), deadline)
}

/// The same with stdout going to `stdout`.
fn run_bounded_to(
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    deadline: Duration,
) -> (Output, Duration) {
    let t0 = Instant::now();
    let child = cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + deadline + Duration::from_secs(30);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: probing (signal 0) our own child.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: our own child, hung far past its deadline.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    let elapsed = t0.elapsed();
    drop(watchdog);
    (out, elapsed)
}

// ---- 1: a payload changed in place after the check ----

/// Before reading its stdin, the command changes the job file in place (a
/// byte in the middle of the payload, its last byte) and appends to it, as
/// `rsync --inplace` or any writer of the file could do after the check.
/// Then it records what it reads.
const CHANGE_THEN_READ: &str = r#"f="${FSPL_JOB_FULLPATH:-$JOBFILE}"
size=$(wc -c < "$f")
printf X | dd of="$f" bs=1 seek=$((size - 40)) conv=notrunc 2>/dev/null
printf Z | dd of="$f" bs=1 seek=$((size - 1)) conv=notrunc 2>/dev/null
printf APPENDED >> "$f"
echo changed > "$1/changed"
cat > "$1/seen"
"#;

/// What the command saw, checked against what it may see: never a byte
/// written after the check. Either it ran to the end on exactly the
/// checked payload (a payload that fits in the pipe is all in it before
/// the writer gets in; or no lease could be had and the command read a
/// private copy), or the writer's open broke the read lease, the command
/// was killed before the writer could write, and the job failed without
/// advancing (it is checked again on the next run).
fn assert_saw_only_checked_bytes(
    out: &Output,
    rec: &Path,
    payload: &[u8],
    small: bool,
    what: &str,
) {
    let err = String::from_utf8_lossy(&out.stderr);
    let seen = std::fs::read(rec.join("seen")).unwrap_or_default();
    assert!(
        payload.starts_with(&seen),
        "{what}: the command read bytes written after the check; stderr: {err}"
    );
    if out.status.success() {
        assert!(
            rec.join("changed").exists(),
            "{what}: the writer did not run"
        );
        assert_eq!(seen.len(), payload.len(), "{what}: length the command saw");
    } else {
        assert!(
            !small,
            "{what}: a payload that fits in the pipe failed: {err}"
        );
        assert!(
            err.contains("opened for writing while its command was reading the payload"),
            "{what}: {err}"
        );
    }
}

#[test]
fn payload_changed_in_place_after_the_digest_check_never_reaches_the_command() {
    let sb = Sandbox::new();
    let k = keys(&sb);
    let cmd = script(&sb, "change-then-read", CHANGE_THEN_READ);
    // One chunk, and several (the copy is made on two threads; a lease
    // holds the rest in the file while the pipe is full).
    for n in [100, 3 * 1024 * 1024 + 5] {
        let q = sb.queue(&format!("q{n}"));
        let payload = text_payload(n);
        let job = prepare(
            &sb,
            1,
            &payload,
            &[OsStr::new("--sign"), k.secret.as_os_str()],
        );
        write_job(&q, &job);
        let rec = sb.path(format!("rec{n}"));
        std::fs::create_dir(&rec).unwrap();
        let out = run(ours([
            OsStr::new("queue-process"),
            OsStr::new("-q"),
            q.as_os_str(),
            OsStr::new("--trust"),
            k.trust.as_os_str(),
            cmd.as_os_str(),
            OsStr::new("--"),
            rec.as_os_str(),
        ]));
        assert_saw_only_checked_bytes(&out, &rec, &payload, n == 100, &format!("{n} bytes"));
        assert_eq!(nextseq(&q), if out.status.success() { 2 } else { 1 });
    }
}

#[test]
fn stdin_process_trust_never_passes_on_a_payload_changed_after_the_check() {
    let sb = Sandbox::new();
    let k = keys(&sb);
    let cmd = script(&sb, "change-then-read", CHANGE_THEN_READ);
    for n in [100, 3 * 1024 * 1024 + 5] {
        let payload = text_payload(n);
        let job = prepare(
            &sb,
            1,
            &payload,
            &[OsStr::new("--sign"), k.secret.as_os_str()],
        );
        let file = sb.path(format!("job{n}.fspl"));
        std::fs::write(&file, &job).unwrap();
        let rec = sb.path(format!("rec{n}"));
        std::fs::create_dir(&rec).unwrap();
        let mut c = ours([
            OsStr::new("stdin-process"),
            OsStr::new("--trust"),
            k.trust.as_os_str(),
            cmd.as_os_str(),
            OsStr::new("--"),
            rec.as_os_str(),
        ]);
        c.env("JOBFILE", &file);
        let out = run_with_file(c, &file);
        assert_saw_only_checked_bytes(&out, &rec, &payload, n == 100, &format!("{n} bytes"));
    }
}

/// The private copy needs room; when it cannot be written (a full disk,
/// here a file size limit with SIGXFSZ ignored, so writes fail with EFBIG)
/// that is the receiver's problem, not the job's: processing stops with an
/// error and the genuine job stays queued, never refused.
#[test]
fn a_payload_copy_that_cannot_be_written_leaves_the_job_queued_instead_of_refusing_it() {
    let sb = Sandbox::new();
    let k = keys(&sb);
    let payload = noise(3 << 20, 11);
    let cases: [(&str, Vec<&OsStr>, bool); 2] = [
        // A compressed job with a digest: always copied.
        (
            "zstd",
            vec![OsStr::new("--compress"), OsStr::new("zstd")],
            false,
        ),
        // A plain signed job under --trust: copied.
        (
            "trust",
            vec![OsStr::new("--sign"), k.secret.as_os_str()],
            true,
        ),
    ];
    for (what, extra, trust) in cases {
        let q = sb.queue(&format!("q-{what}"));
        write_job(&q, &prepare(&sb, 1, &payload, &extra));
        // Someone has the job file open for writing: no read lease can be
        // had, so a trusted plain payload is copied too.
        let name = sb.job_files(&q).remove(0);
        let _writer = std::fs::OpenOptions::new()
            .append(true)
            .open(q.join("jobs").join(&name))
            .unwrap();
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg("trap '' XFSZ && ulimit -f 2048 && exec \"$@\"")
            .arg("sh")
            .arg(fspl_bin())
            .args([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
        if trust {
            c.arg("--trust").arg(&k.trust);
        }
        c.arg("true");
        let (out, _) = run_bounded(c, Stdio::null(), PROMPT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("private copy of the payload"), "{what}: {err}");
        assert!(!err.contains("refused"), "{what}: {err}");
        assert!(
            !q.join("rejected").exists(),
            "{what}: the genuine job was refused"
        );
        assert_eq!(sb.job_files(&q).len(), 1, "{what}");
        assert_eq!(nextseq(&q), 1, "{what}");
        // With room, it runs.
        let mut c = ours([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
        if trust {
            c.arg("--trust").arg(&k.trust);
        }
        c.arg("true");
        ok(run(c));
        assert_eq!(nextseq(&q), 2, "{what}");
    }
}

// ---- 8: decoded-payload bombs ----

/// `sh -c 'ulimit -f N; exec fspl ARGS'`: no file the process writes may
/// grow past about a megabyte (SIGXFSZ kills it otherwise).
fn small_files(args: &[&OsStr]) -> Command {
    let mut c = Command::new("/bin/sh");
    c.env("TZ", "UTC")
        .arg("-c")
        .arg("ulimit -f 2048 && exec \"$@\"")
        .arg("sh")
        .arg(fspl_bin())
        .args(args);
    c
}

#[track_caller]
fn not_killed_for_file_size(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        out.status.signal(),
        Some(libc::SIGXFSZ),
        "{what}: wrote a file of more than a megabyte for a 6-byte payload"
    );
}

#[test]
fn decoded_payload_bomb_is_refused_without_decoding_past_its_declared_length() {
    let sb = Sandbox::new();
    let k = keys(&sb);
    let payload = b"six b\n";
    let job = prepare(
        &sb,
        1,
        payload,
        &[OsStr::new("--sign"), k.secret.as_os_str()],
    );
    // 1 GiB of zeros after the 6 declared bytes, in 32 KB.
    let bomb = zstd_with_zeros(&job, 1 << 30);
    assert!(bomb.len() < 64 * 1024);
    let bomb_file = sb.path("bomb.fspl.zst");
    std::fs::write(&bomb_file, &bomb).unwrap();
    let marker = sb.path("ran");
    let touch = script(&sb, "touch-marker", &format!("touch {}\n", p(&marker)));
    let longer = "payload is longer than the 6 bytes the header says";

    // queue-process, with and without a trust file: refused, moved aside.
    for trust in [true, false] {
        let q = sb.queue(&format!("q-{trust}"));
        write_job(&q, &bomb);
        let mut args = vec![OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()];
        if trust {
            args.extend([OsStr::new("--trust"), k.trust.as_os_str()]);
        }
        args.push(touch.as_os_str());
        let (out, took) = run_bounded(small_files(&args), Stdio::null(), PROMPT);
        eprintln!("queue-process (trust {trust}) on the bomb: {took:?}");
        not_killed_for_file_size(&out, "queue-process");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "trust {trust}: {err}");
        assert!(err.contains("job refused") && err.contains(longer), "{err}");
        assert!(!marker.exists(), "the command ran");
        let reasons: Vec<String> = std::fs::read_dir(q.join("rejected"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("reason")))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains(longer), "{reasons:?}");
        assert_eq!(nextseq(&q), 1);

        // queue-payload writes the declared bytes, then fails.
        let q2 = sb.queue(&format!("q2-{trust}"));
        write_job(&q2, &bomb);
        let dump = sb.path(format!("queue-payload-{trust}"));
        let c = small_files(&[
            OsStr::new("queue-payload"),
            OsStr::new("-q"),
            q2.as_os_str(),
            OsStr::new("-j"),
            OsStr::new("1"),
        ]);
        let to = Stdio::from(File::create(&dump).unwrap());
        let (out, _) = run_bounded_to(c, Stdio::null(), to, PROMPT);
        not_killed_for_file_size(&out, "queue-payload");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(longer), "{err}");
        assert_eq!(std::fs::read(&dump).unwrap(), payload);

        // queue-check names it.
        let (out, _) = run_bounded(
            small_files(&[OsStr::new("queue-check"), OsStr::new("-q"), q2.as_os_str()]),
            Stdio::null(),
            PROMPT,
        );
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{report}");
        assert!(report.contains(longer), "{report}");
    }

    // stdin-process, with and without a trust file.
    for trust in [true, false] {
        let mut args = vec![OsStr::new("stdin-process")];
        if trust {
            args.extend([OsStr::new("--trust"), k.trust.as_os_str()]);
        }
        args.push(touch.as_os_str());
        let (out, _) = run_bounded(
            small_files(&args),
            Stdio::from(File::open(&bomb_file).unwrap()),
            PROMPT,
        );
        not_killed_for_file_size(&out, "stdin-process");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "trust {trust}: {err}");
        assert!(err.contains("refused") && err.contains(longer), "{err}");
        assert!(!marker.exists(), "the command ran");
    }

    // stdin-payload writes the declared bytes, then fails.
    let dump = sb.path("stdin-payload");
    let c = small_files(&[OsStr::new("stdin-payload")]);
    let (out, _) = run_bounded_to(
        c,
        Stdio::from(File::open(&bomb_file).unwrap()),
        Stdio::from(File::create(&dump).unwrap()),
        PROMPT,
    );
    not_killed_for_file_size(&out, "stdin-payload");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(longer), "{err}");
    assert_eq!(std::fs::read(&dump).unwrap(), payload);
}

// ---- 9: a background child holding the payload pipe ----

/// The command hands its stdin to a background sleep (fd 3: a
/// non-interactive shell gives `&` jobs /dev/null as fd 0) and records its
/// pid in `$1`; then runs `$2`.
fn holder(sb: &Sandbox) -> PathBuf {
    script(
        sb,
        "leave-a-holder",
        &format!(
            "exec 3<&0\nsleep {CHILD_SLEEP} >/dev/null 2>&1 &\necho $! > \"$1\"\nexec 3<&-\neval \"$2\"\n"
        ),
    )
}

/// A compressed job without digest (its payload is pumped through a pipe)
/// of 2 MiB, far more than a pipe holds; `corrupt` breaks the zstd
/// checksum at its very end.
fn pumped_job(sb: &Sandbox, seq: u64, corrupt: bool) -> Vec<u8> {
    let mut job = prepare(
        sb,
        seq,
        &noise(2 << 20, 11),
        &[
            OsStr::new("--no-digest"),
            OsStr::new("--compress"),
            OsStr::new("zstd"),
        ],
    );
    if corrupt {
        let n = job.len();
        job[n - 1] ^= 0xff;
    }
    job
}

/// What the command does after leaving the holder behind, and how the job
/// must end.
struct HolderCase {
    then: &'static str,
    timeout: Option<&'static str>,
    corrupt: bool,
    /// `Ok`, or the failure's text.
    expect: Result<(), &'static str>,
}

const HOLDER_CASES: [HolderCase; 3] = [
    // The command exits 0 at once: done, the payload's rest checked.
    HolderCase {
        then: "exit 0",
        timeout: None,
        corrupt: false,
        expect: Ok(()),
    },
    // ... and the rest turns out corrupt: a failure, said so.
    HolderCase {
        then: "exit 0",
        timeout: None,
        corrupt: true,
        expect: Err("payload incomplete"),
    },
    // The command itself runs past --timeout: killed, a timeout.
    HolderCase {
        then: "exec sleep 60 >/dev/null 2>&1",
        timeout: Some("2"),
        corrupt: false,
        expect: Err("timed out after 2s and was killed"),
    },
];

#[test]
fn queue_process_does_not_wait_for_a_background_child_holding_the_payload_pipe() {
    let sb = Sandbox::new();
    let cmd = holder(&sb);
    let mut leftovers = Leftovers(Vec::new());
    for (i, c) in HOLDER_CASES.iter().enumerate() {
        let HolderCase {
            then,
            timeout,
            corrupt,
            expect,
        } = *c;
        let q = sb.queue(&format!("q{i}"));
        write_job(&q, &pumped_job(&sb, 1, corrupt));
        let pidfile = sb.path(format!("holder{i}"));
        leftovers.0.push(pidfile.clone());
        let mut c = ours([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
        if let Some(t) = timeout {
            c.args(["--timeout", t]);
        }
        c.arg(&cmd).arg("--").arg(&pidfile).arg(then);
        let (out, took) = run_bounded(c, Stdio::null(), PROMPT);
        eprintln!("case {i} ({then}, timeout {timeout:?}): {took:?}");
        assert!(pidfile.exists(), "case {i}: the holder did not start");
        assert!(
            took < PROMPT,
            "case {i}: queue-process waited {took:?} for the command's background child"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        match expect {
            Ok(()) => {
                assert!(out.status.success(), "case {i}: {err}");
                assert_eq!(nextseq(&q), 2, "case {i}");
                assert!(sb.job_files(&q).is_empty(), "case {i}");
            }
            Err(why) => {
                assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
                assert!(err.contains(why), "case {i}: {err} does not say {why:?}");
                assert_eq!(nextseq(&q), 1, "case {i}");
                assert_eq!(sb.job_files(&q).len(), 1, "case {i}");
            }
        }
    }
}

#[test]
fn stdin_process_does_not_wait_for_a_background_child_holding_the_payload_pipe() {
    let sb = Sandbox::new();
    let cmd = holder(&sb);
    let mut leftovers = Leftovers(Vec::new());
    for (i, c) in HOLDER_CASES.iter().enumerate() {
        let HolderCase {
            then,
            timeout,
            corrupt,
            expect,
        } = *c;
        let file = sb.path(format!("job{i}.fspl"));
        std::fs::write(&file, pumped_job(&sb, 1, corrupt)).unwrap();
        let pidfile = sb.path(format!("holder{i}"));
        leftovers.0.push(pidfile.clone());
        let mut c = ours([OsStr::new("stdin-process")]);
        if let Some(t) = timeout {
            c.args(["--timeout", t]);
        }
        c.arg(&cmd).arg("--").arg(&pidfile).arg(then);
        let (out, took) = run_bounded(c, Stdio::from(File::open(&file).unwrap()), PROMPT);
        eprintln!("case {i} ({then}, timeout {timeout:?}): {took:?}");
        assert!(pidfile.exists(), "case {i}: the holder did not start");
        assert!(
            took < PROMPT,
            "case {i}: stdin-process waited {took:?} for the command's background child"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        match expect {
            Ok(()) => assert!(out.status.success(), "case {i}: {err}"),
            Err(why) => {
                assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
                assert!(err.contains(why), "case {i}: {err} does not say {why:?}");
            }
        }
    }
}

/// A command that stops reading early leaves the rest of a pumped payload
/// to be checked; with `--timeout` that check ends with the timeout too,
/// and a payload that could not be checked in time is not called a
/// success.
#[test]
fn checking_the_rest_of_a_payload_after_the_command_ended_stops_at_the_timeout() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    // 1 TiB of zeros (32 MB of zstd): far more than can be decoded in the
    // 2 s timeout (about 30 s at 36 GB/s, as fast as we have seen).
    let header = prepare(&sb, 1, b"", &[OsStr::new("--no-digest")]);
    // Straight into jobs/: queue-write would decode all of it to check it.
    place(&q, &zstd_with_zeros(&header, 1 << 40));
    let c = ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        q.as_os_str(),
        OsStr::new("--timeout"),
        OsStr::new("2"),
        OsStr::new("head"),
        OsStr::new("--"),
        OsStr::new("-c"),
        OsStr::new("1"),
    ]);
    let (out, took) = run_bounded(c, Stdio::null(), Duration::from_secs(60));
    eprintln!("queue-process --timeout 2, 1 TiB unread: {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("payload incomplete")
            && err.contains("could not be checked before the timeout"),
        "{err}"
    );
    assert_eq!(nextseq(&q), 1);
    assert!(took < PROMPT, "the check of the rest took {took:?}");
}

// ---- 10: the daemon's shutdown kill ----

/// The command exits (and is reaped) while its job is still settling its
/// payload; the daemon is stopped then, and its grace runs out. Nothing may
/// be signalled: the command's pid is no longer the daemon's to kill (an
/// unrelated process may have it by now).
#[test]
fn daemon_shutdown_never_signals_the_pid_of_a_command_it_already_reaped() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let header = prepare(&sb, 1, b"", &[OsStr::new("--no-digest")]);
    // 1 TiB of zeros to check after the command read one byte: the job
    // stays busy (until its 5 s timeout) after the command has gone. Put
    // straight into jobs/: queue-write would decode all of it to check it.
    place(&q, &zstd_with_zeros(&header, 1 << 40));
    let pidfile = sb.path("pid");
    let command = format!("echo $$ > {}; exec head -c 1 >/dev/null", p(&pidfile));
    let text = config(
        &sb,
        "",
        &[process_job(
            "q",
            &q,
            &["/bin/sh", "-c", &command],
            "timeout = 5",
        )],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    d.wait_for("the command to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.wait_for("the command to be reaped", || gone(pid));
    // The job is still settling its payload: the daemon shows it running.
    let (jobs, _) = d.status();
    assert_eq!(
        jobs[0]["state"], "running",
        "the premise failed: the job was no longer busy after its command ended: {jobs:?}"
    );
    // The grace (1 s) runs out while the job still settles its payload.
    let (st, log) = d.stop_never_logging("killing the running command");
    assert!(st.success(), "{log}");
    assert!(log.contains("fspl daemon stopped"), "{log}");
    assert_eq!(nextseq(&q), 1, "the unfinished job must stay");
}
