//! Issue 12: payloads verified at the speed of one hash, with real
//! processes, files and keys.
//!
//! - Without a trust file the command gets its payload at once and the
//!   digest is checked meanwhile: a payload that does not match fails the
//!   job (never a success; `--on-error` applies). A payload of the wrong
//!   length is still refused before anything runs.
//! - With a trust file the command only ever reads checked bytes: the job
//!   file's payload is checked under a read lease and fed through a pipe; a
//!   writer opening the file meanwhile gets the command killed before it
//!   can write; a writer that already had it open gets the command a
//!   private copy.
//! - Encrypted jobs are decrypted on several threads, refusing everything
//!   age refuses (files made by the age CLI and by `--encrypt-to`).
//!
//! Every timing below is a generous deadline for something that would
//! hang, never a measurement of speed.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;
use crate::security::{
    PAYLOAD, QUEUE_NAME, SCRIPT, Setup, age, age_keygen, assert_refused, fs, nextseq,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// Whether the file system holding `dir` is one where fspl takes read
/// leases (local file systems whose every write goes through the kernel's
/// VFS; the same list as crates/queue/src/lease.rs) and leases can be had.
fn leases_apply(dir: &Path) -> bool {
    // SAFETY: statfs is plain data filled in by statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    let local = [
        0xEF53,
        0x5846_5342,
        0x9123_683E,
        0x0102_1994,
        0xF2F5_2010,
        0xCA45_1A4E,
        0x2FC1_2FC1,
    ]
    .contains(&kind);
    let probe = dir.join(".lease-probe");
    std::fs::write(&probe, b"x").unwrap();
    let f = File::open(&probe).unwrap();
    // SAFETY: fcntl on our own descriptor (F_SETSIG = 10: a break would
    // be signalled with SIGURG, which is ignored).
    let leased = unsafe {
        libc::fcntl(f.as_raw_fd(), 10, libc::SIGURG) == 0
            && libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) == 0
            && libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) == 0
    };
    drop(f);
    std::fs::remove_file(&probe).unwrap();
    local && leased
}

/// Wait for a child, killing it past the deadline.
fn wait_bounded(mut child: Child, what: &str) -> Output {
    let end = Instant::now() + DEADLINE;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} hung; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_file(p: &Path, what: &str) {
    let end = Instant::now() + DEADLINE;
    while !p.exists() {
        assert!(
            Instant::now() < end,
            "{what}: {} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- without a trust file: checked while the command reads ----

/// Regression (issue 12): without a trust file the whole payload was
/// hashed before the command started (3.3x the time of reading it). Now
/// the command gets it at once and the digest is checked meanwhile, so a
/// payload changed in transit reaches the command; what must hold is that
/// the job then fails, whatever the command's own status, and that
/// `--on-error` decides what happens next. Small payloads and large ones
/// (hashed on several threads) alike.
#[test]
fn a_changed_payload_without_trust_fails_the_job_after_the_command_ran_never_a_success() {
    let t = Setup::new();
    for (n, big) in [(PAYLOAD.len(), false), (9 << 20, true)] {
        let payload = if big { noise(n, 12) } else { PAYLOAD.to_vec() };
        std::fs::write(&t.payload, &payload).unwrap();
        let job = t.prepare(1, None, None, &[], &[]);
        let mut bad = job.clone();
        let len = bad.len();
        bad[len - 3] ^= 0x08;
        for on_error in ["retry", "delete", "leave"] {
            let what = format!("{n} bytes, --on-error {on_error}");
            let q = t.queue(&format!("q-{n}-{on_error}"), None);
            let f = t.write(&q, &bad);
            let _ = std::fs::remove_file(t.marker(1));
            let out = t.process_with(&q, None, &["--on-error", on_error]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("payload check failed: payload blake3 digest")
                    && err.contains("does not match the header's"),
                "{what}: {err}"
            );
            // The command ran (on the changed payload: it was not checked
            // before), exited 0, and the job failed all the same.
            assert!(t.marker(1).exists(), "{what}: the command did not run");
            assert!(!q.join("rejected").exists(), "{what}: refused instead");
            let present = q.join("jobs").join(&f).exists();
            match on_error {
                "retry" => {
                    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
                    assert_eq!(nextseq(&q), 1, "{what}");
                    assert!(present, "{what}");
                }
                "delete" => {
                    assert!(out.status.success(), "{what}: {err}");
                    assert!(err.contains("job failed:"), "{what}: {err}");
                    assert_eq!(nextseq(&q), 2, "{what}");
                    assert!(!present, "{what}");
                }
                _ => {
                    assert!(out.status.success(), "{what}: {err}");
                    assert_eq!(nextseq(&q), 2, "{what}");
                    assert!(present, "{what}");
                }
            }
        }
        // The intact job runs and succeeds.
        let q = t.queue(&format!("q-{n}-good"), None);
        t.write(&q, &job);
        ok(t.process_with(&q, None, &[]));
        assert!(std::fs::read(t.marker(1)).unwrap() == payload);
        assert_eq!(nextseq(&q), 2);
    }
}

/// The same for `stdin-process` with a regular file on stdin.
#[test]
fn a_changed_payload_on_stdin_without_trust_fails_stdin_process_after_the_command_ran() {
    let t = Setup::new();
    std::fs::write(&t.payload, noise(5 << 20, 12)).unwrap();
    let mut job = t.prepare(1, None, None, &[], &[]);
    let len = job.len();
    job[len - 100] ^= 0x01;
    let file = t.s.path("job.fspl");
    std::fs::write(&file, &job).unwrap();
    let mut c = fs(["stdin-process", "sh", "--", "-c", SCRIPT]);
    c.arg(&t.marks);
    let line = one_line_error(run_with_file(c, &file));
    assert!(
        line.contains("job 1 (stdin): payload check failed: payload blake3 digest"),
        "{line}"
    );
    assert!(t.marker(1).exists(), "the command did not run");
    // Cut short: refused before the command runs.
    std::fs::remove_file(t.marker(1)).unwrap();
    std::fs::write(&file, &job[..len - 1]).unwrap();
    let mut c = fs(["stdin-process", "sh", "--", "-c", SCRIPT]);
    c.arg(&t.marks);
    let line = one_line_error(run_with_file(c, &file));
    assert!(line.contains("job 1 (stdin) refused: payload is"), "{line}");
    t.not_run(1);
}

// ---- with a trust file: a writer while the command reads ----

/// Reads some of its payload, says so, waits for `go` (at most 10 s),
/// reads the rest. Everything it read ends up in `$1/seen`.
const SLOW_READER: &str = r#"head -c 100000 > "$1/seen"
: > "$1/ready"
i=0
while [ ! -e "$1/go" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
cat >> "$1/seen"
"#;

/// How a trusted run met its writer.
struct Met {
    out: Output,
    seen: Vec<u8>,
    leased: bool,
    /// The writer, if it was still held when the command went on.
    writer: Option<Child>,
}

/// Start `fspl ARGS SLOW_READER REC` (queue-process or stdin-process with
/// `stdin`), wait until the command has read its first block, let
/// `writer` at the job file, then let the command go on.
fn trusted_run_meets_a_writer(
    s: &Sandbox,
    args: &[&OsStr],
    stdin: Stdio,
    rec: &Path,
    writer: impl FnOnce() -> Option<Child>,
    wait_break_of: Option<&Path>,
) -> Met {
    let cmd = script(s, "slow-reader", SLOW_READER);
    std::fs::create_dir_all(rec).unwrap();
    let mut c = fs(["--log-level", "debug"]);
    c.args(args)
        .arg(&cmd)
        .arg("--")
        .arg(rec)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    wait_for_file(&rec.join("ready"), "the command");
    let writer = writer();
    if let Some(file) = wait_break_of {
        // Let the command go on only once the writer's open has started
        // breaking the lease (or fspl has ended), so that the writer
        // cannot come too late, after the whole payload was fed.
        use std::os::unix::fs::MetadataExt;
        let ino = format!(":{} ", std::fs::metadata(file).unwrap().ino());
        let end = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none()
            && !std::fs::read_to_string("/proc/locks")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("LEASE") && l.contains("BREAKING") && l.contains(&ino))
        {
            assert!(Instant::now() < end, "the writer never broke the lease");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::fs::write(rec.join("go"), b"").unwrap();
    let out = wait_bounded(child, "fspl");
    let err = String::from_utf8_lossy(&out.stderr);
    let leased = err.contains("payload checked under a read lease");
    let seen = std::fs::read(rec.join("seen")).unwrap_or_default();
    Met {
        out,
        seen,
        leased,
        writer,
    }
}

/// `printf XXXX | dd of=FILE seek=AT conv=notrunc`: opens the file for
/// writing in place (as rsync --inplace would), in the background.
fn start_writer(file: &Path, at: u64) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(r#"printf XXXX | dd of="$0" bs=1 seek="$1" conv=notrunc 2>/dev/null"#)
        .arg(file)
        .arg(at.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Regression (issue 12, and the lease that replaces the private copy):
/// with a trust file, a writer that opens the job file while the command
/// is reading it must never get a byte to the command. Under a read lease
/// the writer's open is held, the command is killed, and only then may
/// the writer write; the job fails (a payload check failure, whatever the
/// command's status), stays queued, and is refused on the next run
/// because the file changed. fspl itself is not killed by the lease break
/// (SIGIO). For `queue-process` and for `stdin-process` with a regular
/// file on stdin.
#[test]
fn a_writer_opening_the_job_file_while_a_trusted_command_reads_gets_the_command_killed_first() {
    let t = Setup::new();
    let payload = noise(8 << 20, 12);
    std::fs::write(&t.payload, &payload).unwrap();
    let job = t.genuine(1);
    let must_lease = leases_apply(t.s.dir.path());
    for via in ["queue-process", "stdin-process"] {
        let rec = t.s.path(format!("rec-{via}"));
        let (args, stdin, file): (Vec<&OsStr>, Stdio, PathBuf) = if via == "queue-process" {
            let name = t.write(&t.q, &job);
            let args = vec![
                OsStr::new("queue-process"),
                OsStr::new("-q"),
                t.q.as_os_str(),
                OsStr::new("--trust"),
                t.trust.as_os_str(),
            ];
            (args, Stdio::null(), t.q.join("jobs").join(name))
        } else {
            let file = t.s.path("stdin-job.fspl");
            std::fs::write(&file, &job).unwrap();
            let args = vec![
                OsStr::new("stdin-process"),
                OsStr::new("--trust"),
                t.trust.as_os_str(),
            ];
            (args, Stdio::from(File::open(&file).unwrap()), file)
        };
        let at = job.len() as u64 - 10;
        let met = trusted_run_meets_a_writer(
            &t.s,
            &args,
            stdin,
            &rec,
            || {
                let w = start_writer(&file, at);
                if must_lease {
                    // Its open is held by the lease until the command is dead.
                    Some(w)
                } else {
                    // Nothing holds it: let it finish first.
                    wait_bounded(w, "the writer");
                    None
                }
            },
            must_lease.then_some(file.as_path()),
        );
        let err = String::from_utf8_lossy(&met.out.stderr);
        if let Some(w) = met.writer {
            wait_bounded(w, "the writer");
        }
        assert!(
            payload.starts_with(&met.seen),
            "{via}: the command read a byte written after the check; stderr: {err}"
        );
        if must_lease {
            assert_eq!(
                std::fs::read(&file).unwrap_or_else(|e| panic!("{via}: {e}; stderr: {err}"))
                    [at as usize..at as usize + 4],
                *b"XXXX",
                "{via}: the writer did not write"
            );
            assert!(met.leased, "{via}: no read lease was taken: {err}");
            assert_eq!(met.out.status.code(), Some(1), "{via}: {err}");
            assert!(
                err.contains("payload check failed: the job file was opened for writing while its command was reading the payload"),
                "{via}: {err}"
            );
            assert!(met.seen.len() < payload.len(), "{via}");
            if via == "queue-process" {
                // Still queued; the next run refuses it (it changed).
                assert_eq!(nextseq(&t.q), 1);
                let name = file.file_name().unwrap().to_str().unwrap().to_string();
                let out = t.process(&t.q, &[]);
                t.not_run(1);
                assert_refused(&t.q, &out, &name, Some(1), Some("laptop"), "does not match");
            }
        } else {
            // A private copy: the command read all of the checked payload.
            ok(met.out);
            assert!(met.seen == payload, "{via}");
        }
    }
}

/// A writer that already had the job file open when it was checked: no
/// lease can be had, so the command reads a private copy, and what the
/// writer writes meanwhile never reaches it.
#[test]
fn a_writer_that_had_the_job_file_open_before_the_check_cannot_change_what_a_trusted_command_reads()
{
    let t = Setup::new();
    let payload = noise(4 << 20, 12);
    std::fs::write(&t.payload, &payload).unwrap();
    let job = t.genuine(1);
    let name = t.write(&t.q, &job);
    let path = t.q.join("jobs").join(&name);
    let held = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let rec = t.s.path("rec");
    let args = [
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        t.q.as_os_str(),
        OsStr::new("--trust"),
        t.trust.as_os_str(),
    ];
    let met = trusted_run_meets_a_writer(
        &t.s,
        &args,
        Stdio::null(),
        &rec,
        || {
            use std::os::unix::fs::FileExt;
            held.write_all_at(b"XXXX", job.len() as u64 - 10).unwrap();
            None
        },
        None,
    );
    let err = String::from_utf8_lossy(&met.out.stderr).into_owned();
    assert!(
        !met.leased,
        "a lease was taken on a file open for writing: {err}"
    );
    assert!(
        err.contains("no read lease on the job file; copying the payload"),
        "{err}"
    );
    ok(met.out);
    assert!(
        met.seen == payload,
        "the command read bytes written after the check"
    );
    assert_eq!(nextseq(&t.q), 2);
}

/// `queue-process --trust --never-delete sh -c SCRIPT` on the setup's
/// queue, stdin null and output captured; the caller adds the script's
/// `$0`, `$1`, ...
fn trusted_sh(t: &Setup, script: &str) -> Command {
    let mut c = fs([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        t.q.as_os_str(),
        OsStr::new("--trust"),
        t.trust.as_os_str(),
        OsStr::new("--never-delete"),
        OsStr::new("sh"),
        OsStr::new("--"),
        OsStr::new("-c"),
        OsStr::new(script),
    ]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A background process the command leaves holding its stdin (the pipe
/// the payload is fed through) keeps neither the job nor the job file:
/// once the command has exited, the file can be opened for writing at once
/// (a lease still held would make a non-blocking open fail).
#[test]
fn a_background_child_holding_the_payload_pipe_cannot_keep_the_job_file_leased() {
    let t = Setup::new();
    std::fs::write(&t.payload, noise(6 << 20, 12)).unwrap();
    let name = t.write(&t.q, &t.genuine(1));
    let path = t.q.join("jobs").join(&name);
    let pidfile = t.s.path("bg.pid");
    let mut c = trusted_sh(
        &t,
        r#"sleep 60 > /dev/null 2>&1 & echo $! > "$0"; head -c 10 > /dev/null"#,
    );
    c.arg(&pidfile);
    let out = wait_bounded(c.spawn().unwrap(), "queue-process");
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
    };
    // SAFETY: the background sleep this test started.
    unsafe { libc::kill(bg, libc::SIGKILL) };
    ok(out);
    assert!(
        opened.is_ok(),
        "the job file is still leased after its command ended: {opened:?}"
    );
    assert_eq!(nextseq(&t.q), 2);
}

/// The payload goes into the pipe as references to the job file's own
/// pages where it can (splice: no copy), so bytes still in the pipe when
/// the command ends are the file's pages, not copies. A background child
/// that reads the pipe after the command exited and after a writer changed
/// the file must still never read a byte that was not checked: the pipe is
/// emptied before the lease lets the writer in. Without that, this child
/// would read the writer's `X`s.
#[test]
fn a_background_child_reading_the_payload_pipe_after_a_writer_got_in_reads_no_changed_byte() {
    background_reader_after_a_writer(0);
}

/// The same when the command read all but the last 512 KiB itself: the
/// whole payload is in the pipe, so the lease is let go at once, and what
/// is left in the pipe must be copies (the last pipe's worth is always
/// copied), which the background child then reads in full, unchanged.
#[test]
fn a_background_child_reading_the_payload_tail_after_a_writer_got_in_reads_the_checked_tail() {
    background_reader_after_a_writer((6 << 20) - (512 << 10));
}

/// The command reads `first` bytes of its 6 MiB payload (whole 4 KiB
/// blocks) and exits, leaving a background child holding the pipe; once
/// the job is over a writer overwrites the payload with `X`s, then the
/// child reads what the pipe still holds.
fn background_reader_after_a_writer(first: usize) {
    let t = Setup::new();
    let payload = noise(6 << 20, 13);
    std::fs::write(&t.payload, &payload).unwrap();
    let name = t.write(&t.q, &t.genuine(1));
    let path = t.q.join("jobs").join(&name);
    assert!(
        leases_apply(&t.q),
        "this test needs leases on the test directory"
    );
    let (got, go, pidfile) = (t.s.path("bg.out"), t.s.path("go"), t.s.path("bg.pid"));
    // The pipe goes to the background list as fd 3 (its stdin would be
    // /dev/null).
    let mut c = trusted_sh(
        &t,
        r#"dd bs=4096 count="$3" iflag=fullblock of=/dev/null status=none; exec 3<&0; { n=0; while [ ! -e "$1" ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; cat <&3 > "$0"; } >/dev/null 2>&1 & echo $! > "$2""#,
    );
    c.arg(&got)
        .arg(&go)
        .arg(&pidfile)
        .arg((first / 4096).to_string());
    ok(wait_bounded(c.spawn().unwrap(), "queue-process"));
    // The job is over; a writer overwrites the payload in place.
    let len = std::fs::metadata(&path).unwrap().len();
    let body = (len as usize) - payload.len();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![b'X'; payload.len()], body as u64)
            .unwrap();
    }
    std::fs::write(&go, b"").unwrap();
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let end = Instant::now() + DEADLINE;
    // SAFETY: signal 0 only asks whether the background child still runs.
    while unsafe { libc::kill(bg, 0) } == 0 {
        assert!(Instant::now() < end, "the background reader never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = std::fs::read(&got).unwrap();
    assert!(
        payload[first..].starts_with(&read),
        "the background child read {} bytes that are not the checked payload's bytes from \
         {first} on (first X at {:?})",
        read.len(),
        read.iter().position(|&b| b == b'X')
    );
    if first > 0 {
        assert_eq!(
            read.len(),
            payload.len() - first,
            "the tail was not all there"
        );
    }
    assert_eq!(nextseq(&t.q), 2);
}

// ---- encrypted jobs ----

/// Chunk geometry of a binary age file: where the payload's chunks start.
fn age_payload_start(file: &[u8]) -> usize {
    let mac = file.windows(4).position(|w| w == b"\n---").unwrap() + 1;
    let eol = mac + file[mac..].iter().position(|&b| b == b'\n').unwrap();
    eol + 1 + 16
}

const ENC: usize = 64 * 1024 + 16;

/// Jobs encrypted by the age CLI (binary and armored) and by
/// `--encrypt-to` decrypt to their payload, on several threads for the
/// binary ones; cut short at every chunk boundary or by a byte, a flipped
/// byte in any chunk, two chunks swapped, a changed header MAC: all
/// refused, and the command never runs.
#[test]
fn age_files_from_the_cli_and_encrypt_to_decrypt_and_every_damage_is_refused() {
    let t = Setup::new();
    let (id, recipient) = age_keygen(&t.s, "receiver.age");
    let payload = noise(1_300_000, 12);
    std::fs::write(&t.payload, &payload).unwrap();
    let key = Some(t.laptop.secret.as_path());
    let plain = t.prepare(1, key, Some(QUEUE_NAME), &[], &["backup", "db"]);
    let r = OsStr::new(&recipient);
    let by_cli = age(&[OsStr::new("-r"), r], &plain);
    let armored = age(&[OsStr::new("-a"), OsStr::new("-r"), r], &plain);
    let by_us = t.prepare(
        1,
        key,
        Some(QUEUE_NAME),
        &["--encrypt-to", &recipient],
        &["backup", "db"],
    );
    let id_arg = id.to_str().unwrap();
    for (what, job) in [
        ("age", &by_cli),
        ("age -a", &armored),
        ("--encrypt-to", &by_us),
    ] {
        let q = t.queue(&format!("q-{}", what.replace(' ', "")), Some(QUEUE_NAME));
        t.write(&q, job);
        let _ = std::fs::remove_file(t.marker(1));
        ok(t.process_with(&q, Some(&t.trust), &["--identity", id_arg]));
        assert!(
            std::fs::read(t.marker(1)).unwrap() == payload,
            "{what}: wrong payload"
        );
    }
    std::fs::remove_file(t.marker(1)).unwrap();
    // Every kind of damage to the binary file.
    let start = age_payload_start(&by_cli);
    let nchunks = (by_cli.len() - start).div_ceil(ENC);
    assert!(nchunks > 16, "more than one batch of chunks: {nchunks}");
    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for k in 0..nchunks {
        damaged.push((
            format!("cut at chunk {k}"),
            by_cli[..start + k * ENC].to_vec(),
        ));
        let mut flipped = by_cli.clone();
        flipped[(start + k * ENC + 1000).min(by_cli.len() - 1)] ^= 0x10;
        damaged.push((format!("chunk {k} flipped"), flipped));
    }
    damaged.push(("last byte cut".into(), by_cli[..by_cli.len() - 1].to_vec()));
    let mut swapped = by_cli.clone();
    let (a, b) = (start + 2 * ENC, start + 17 * ENC);
    let first = swapped[a..a + ENC].to_vec();
    swapped.copy_within(b..b + ENC, a);
    swapped[b..b + ENC].copy_from_slice(&first);
    damaged.push(("chunks 2 and 17 swapped".into(), swapped));
    let mac = by_cli.windows(4).position(|w| w == b"\n---").unwrap() + 5;
    let mut bad_mac = by_cli.clone();
    bad_mac[mac] = if bad_mac[mac] == b'A' { b'B' } else { b'A' };
    damaged.push(("header MAC changed".into(), bad_mac));
    // All at once, in timestamp order (a refusal does not stop it).
    let q = t.queue("damaged", Some(QUEUE_NAME));
    for (_, job) in &damaged {
        t.write(&q, job);
    }
    let out = t.process_with(
        &q,
        Some(&t.trust),
        &["--identity", id_arg, "--order-by", "timestamp"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    t.not_run(1);
    let left = t.s.job_files(&q);
    assert!(left.is_empty(), "not refused: {left:?}; {err}");
    assert_eq!(err.matches("job refused").count(), damaged.len(), "{err}");
}

/// Regression (issue 12): without a trust file an encrypted payload with a
/// digest was decrypted into a private copy before the command started.
/// Now it streams to the command through a pipe, decrypted on several
/// threads and hashed on its way; a file cut short is refused before
/// anything runs (the age file's size tells the payload's), while a
/// damaged chunk, or a payload that decrypts but does not match its
/// digest, fails the job after the command ran: never a success.
#[test]
fn an_encrypted_payload_without_trust_streams_to_the_command_and_damage_fails_the_job() {
    let t = Setup::new();
    let (id, recipient) = age_keygen(&t.s, "receiver.age");
    let id_arg = id.to_str().unwrap();
    let payload = noise(2_500_000, 12);
    std::fs::write(&t.payload, &payload).unwrap();
    let plain = t.prepare(1, None, None, &[], &[]);
    let r = OsStr::new(&recipient);
    let good = age(&[OsStr::new("-r"), r], &plain);
    let rec = t.s.path("rec");
    std::fs::create_dir(&rec).unwrap();
    let kind_script =
        r#"if [ -p /dev/stdin ]; then echo pipe; else echo other; fi > "$0/kind"; cat > "$0/seen""#;
    let process = |q: &Path, extra: &[&str]| {
        let mut c = fs([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
        c.args(["--identity", id_arg])
            .args(extra)
            .args(["sh", "--", "-c", kind_script])
            .arg(&rec);
        run(c)
    };
    let q = t.queue("good", None);
    t.write(&q, &good);
    ok(process(&q, &[]));
    assert_eq!(std::fs::read_to_string(rec.join("kind")).unwrap(), "pipe\n");
    assert!(std::fs::read(rec.join("seen")).unwrap() == payload);
    // A chunk in the middle flipped: the command ran, the job failed.
    let start = age_payload_start(&good);
    let mut flipped = good.clone();
    flipped[start + 20 * ENC + 5] ^= 0x01;
    // A payload changed before encryption: every chunk authenticates, the
    // digest does not match.
    let mut changed = plain.clone();
    let n = changed.len();
    changed[n - 7] ^= 0x02;
    let changed = age(&[OsStr::new("-r"), r], &changed);
    for (what, job, says) in [
        (
            "a flipped chunk",
            &flipped,
            "payload incomplete: age data: decryption error",
        ),
        (
            "a changed payload",
            &changed,
            "payload check failed: payload blake3 digest",
        ),
    ] {
        let q = t.queue(&format!("q-{}", what.replace(' ', "-")), None);
        let f = t.write(&q, job);
        std::fs::remove_file(rec.join("seen")).unwrap();
        let out = process(&q, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(rec.join("seen").exists(), "{what}: the command did not run");
        assert!(q.join("jobs").join(f).exists(), "{what}");
        assert_eq!(nextseq(&q), 1, "{what}");
    }
    // Cut short at a chunk boundary: refused by its size, nothing runs.
    let q = t.queue("cut", None);
    let f = t.write(&q, &good[..start + 30 * ENC]);
    std::fs::remove_file(rec.join("seen")).unwrap();
    let out = process(&q, &[]);
    assert!(!rec.join("seen").exists(), "the command ran");
    assert_refused(&q, &out, &f, Some(1), None, "the header says");
}
