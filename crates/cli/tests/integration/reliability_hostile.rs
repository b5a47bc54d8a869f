//! Hostile queue contents (issue 7, part 4) and path traversal (part 8).
//!
//! A queue gets, beside genuine jobs, everything a careless or malicious
//! transport could drop into `jobs/`: job names that are symlinks (to
//! /etc/passwd, to a job outside the queue, to a FIFO, to a directory,
//! dangling, looping), a FIFO and a directory named like jobs, headers
//! claiming 2^64-1 bytes of metadata, deeply nested and huge MessagePack
//! with valid CRCs, an age file with a megabyte-long header, non-UTF-8 file
//! names, params and env, a sparse 4 GiB payload, a chmod 000 file. Every
//! reader (queue-ls, -status, -check, -info, -payload, -process, the
//! daemon) must finish within its deadline, never panic, keep its peak RSS
//! small, follow no symlink out of the queue (checked on `strace -f -y`
//! traces: no descriptor ever resolves outside it), print one-line
//! messages, and leave the genuine jobs listing and running in order.
//!
//! Path traversal: params, env names, `--to` and queue names like
//! `../../x`, a job file named `fspl-..%2f..fspl`, SaveBoth output,
//! `rejected/` and `corrupt/`: nothing is written outside the queue.
//!
//! No knobs: these tests are the same in short and long mode.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fspl_format::{CmdType, Command as JobCommand, Ctime, JobHeader};

use crate::helper::*;
use crate::reliability_common::{Tally, clean_fspl};
use crate::reliability_procs::*;

const LIMIT: Duration = Duration::from_secs(120);
/// Peak RSS any reader may reach here, KiB. The largest legitimate
/// allocation is one 4 MiB metadata block; a reader that read a 4 GiB
/// payload, or trusted a 2^64 length, would be far above.
const RSS_LIMIT_KB: u64 = 64 * 1024;

fn header(seq: u64, cmd: CmdType) -> JobHeader {
    JobHeader {
        seq,
        ctime: Ctime {
            secs: 1_700_000_000 + seq as i64,
            nanos: 0,
        },
        cmd_type: cmd,
    }
}

fn command(params: &[&[u8]], env: &[(&[u8], &[u8])]) -> CmdType {
    CmdType::Command(JobCommand {
        params: params.iter().map(|p| p.to_vec()).collect(),
        env: env.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
    })
}

fn job(seq: u64, cmd: CmdType, payload: &[u8]) -> Vec<u8> {
    let mut v = header(seq, cmd).encode().unwrap();
    v.extend_from_slice(payload);
    v
}

/// The 30-byte prefix around `meta` with valid CRCs, claiming `len`.
fn frame(meta: &[u8], len: u64) -> Vec<u8> {
    let mut out = fspl_format::MAGIC.to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32(meta).to_be_bytes());
    let c = crc32(&out);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(meta);
    out
}

/// The largest peak RSS of a reader in the hostile-contents test, KiB.
static PEAK_RSS_KB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A NOP job with one more metadata entry, "zzz": `value` (MessagePack).
fn nop_with_extra(seq: u64, value: &[u8]) -> Vec<u8> {
    let full = header(seq, CmdType::Nop).encode().unwrap();
    let mut meta = full[fspl_format::PREFIX_LEN..].to_vec();
    meta[0] += 1; // fixmap of 3 -> 4 entries
    meta.extend_from_slice(b"\xa3zzz");
    meta.extend_from_slice(value);
    frame(&meta, meta.len() as u64)
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// The command every genuine job runs: "SEQ FILENAME" appended to LOG,
/// stdin not read (so a 4 GiB payload costs nothing).
fn recorder(log: &Path) -> Vec<OsString> {
    vec![
        "sh".into(),
        "--".into(),
        "-c".into(),
        r#"echo "$FSPL_SEQ $FSPL_JOB_FILENAME" >> "$0""#.into(),
        log.as_os_str().to_os_string(),
    ]
}

/// Paths in an `strace -f -y` trace that resolve outside `inside` (the
/// queue) and inside `watched` (where the symlink targets live), or to
/// /etc/passwd: a followed symlink shows as such a descriptor.
fn escapes(trace: &str, watched: &Path) -> Vec<String> {
    let w = watched.to_string_lossy().into_owned();
    trace
        .lines()
        .filter(|l| {
            // Descriptors print as <path>; a return value "= N<path>" too.
            l.contains(&format!("<{w}")) || l.contains("</etc/passwd>")
        })
        .map(str::to_string)
        .collect()
}

/// A queue full of hostile entries and the genuine jobs 1..=5; returns
/// (queue, dir outside it holding the symlink targets, genuine names).
struct Hostile {
    sb: Sandbox,
    q: PathBuf,
    outside: PathBuf,
    log: PathBuf,
    key: PathBuf,
}

fn hostile_queue() -> Hostile {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let jobs = q.join("jobs");
    let outside = sb.path("outside");
    std::fs::create_dir(&outside).unwrap();
    // Symlink targets outside the queue: a valid job claiming seq 3 with
    // other contents (if it were followed it would be listed, or block
    // seq 3 as a conflicting copy), a FIFO, a directory with a job in it.
    std::fs::write(
        outside.join("victim.fspl"),
        job(3, command(&[b"VICTIM"], &[]), b"victim"),
    )
    .unwrap();
    mkfifo(&outside.join("fifo"));
    std::fs::create_dir(outside.join("dir")).unwrap();
    std::fs::write(outside.join("dir/fspl-x.fspl"), job(4, CmdType::Nop, b"")).unwrap();

    // Genuine jobs 1..=5.
    std::fs::write(
        jobs.join("fspl-1.fspl"),
        job(1, command(&[b"one"], &[]), b"p1"),
    )
    .unwrap();
    // Non-UTF-8 name, params and env.
    let name2 = OsString::from_vec(b"fspl-\xff\xfe-2.fspl".to_vec());
    std::fs::write(
        jobs.join(&name2),
        job(
            2,
            command(&[b"\xff\xfe", b"caf\xe9"], &[(b"N\xffAME", b"v\x80al")]),
            b"p2",
        ),
    )
    .unwrap();
    std::fs::write(
        jobs.join("fspl-3.fspl"),
        job(3, command(&[b"three"], &[]), b"p3"),
    )
    .unwrap();
    // (A sparse 4 GiB payload has a test of its own: queue-check would
    // spend seconds reading it here.)
    std::fs::write(jobs.join("fspl-4.fspl"), job(4, command(&[], &[]), b"p4")).unwrap();
    // 4 MiB of valid metadata (a str under an unknown key).
    let mut big = vec![0xdb];
    big.extend_from_slice(&(4u32 << 20).to_be_bytes());
    big.extend(std::iter::repeat_n(b'a', 4 << 20));
    std::fs::write(jobs.join("fspl-5-bigmeta.fspl"), nop_with_extra(5, &big)).unwrap();

    // Symlinks named like jobs.
    symlink("/etc/passwd", &jobs.join("fspl-link-passwd.fspl"));
    symlink(
        outside.join("victim.fspl"),
        &jobs.join("fspl-link-victim.fspl"),
    );
    symlink(
        "../../outside/victim.fspl",
        &jobs.join("fspl-link-relative.fspl"),
    );
    symlink(outside.join("fifo"), &jobs.join("fspl-link-fifo.fspl"));
    symlink(outside.join("dir"), &jobs.join("fspl-link-dir.fspl"));
    symlink(
        outside.join("missing"),
        &jobs.join("fspl-link-dangling.fspl"),
    );
    symlink("fspl-link-loop.fspl", &jobs.join("fspl-link-loop.fspl"));
    // A FIFO and a directory named like jobs.
    mkfifo(&jobs.join("fspl-fifo.fspl"));
    std::fs::create_dir(jobs.join("fspl-dir.fspl")).unwrap();
    std::fs::write(
        jobs.join("fspl-dir.fspl/fspl-inner.fspl"),
        job(3, CmdType::Nop, b""),
    )
    .unwrap();
    // Lengths and nesting (all with valid CRCs).
    std::fs::write(jobs.join("fspl-len-max.fspl"), frame(b"", u64::MAX)).unwrap();
    std::fs::write(
        jobs.join("fspl-len-over.fspl"),
        frame(b"\x80", (64 << 20) + 1),
    )
    .unwrap();
    std::fs::write(jobs.join("fspl-len-short.fspl"), frame(b"\x80", 1 << 20)).unwrap();
    std::fs::write(
        jobs.join("fspl-deep-arrays.fspl"),
        nop_with_extra(3, &[0x91; 200_000]),
    )
    .unwrap();
    std::fs::write(
        jobs.join("fspl-deep-maps.fspl"),
        nop_with_extra(3, &b"\x81\xa1a".repeat(100_000)),
    )
    .unwrap();
    std::fs::write(
        jobs.join("fspl-array32.fspl"),
        nop_with_extra(3, &[0xdd, 0xff, 0xff, 0xff, 0xff]),
    )
    .unwrap();
    std::fs::write(
        jobs.join("fspl-str32.fspl"),
        nop_with_extra(3, &[0xdb, 0xff, 0xff, 0xff, 0xff]),
    )
    .unwrap();
    // Non-UTF-8 name of a corrupt file.
    std::fs::write(
        jobs.join(OsStr::from_bytes(b"fspl-\x80bad.fspl")),
        b"*FILESPOOLER garbage",
    )
    .unwrap();
    // An age file whose header never ends (1 MiB).
    let key = sb.path("id");
    ok(run(clean_fspl([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        key.as_os_str(),
    ])));
    let mut age = b"age-encryption.org/v1\n-> X25519 AAAA\n".to_vec();
    age.extend(std::iter::repeat_n(b'a', 1 << 20));
    std::fs::write(jobs.join("fspl-age-header.fspl"), age).unwrap();
    // Unreadable: mode 000 (root reads it anyway: then it is a Fail job
    // far ahead, seq 100, which must not disturb anything).
    let locked = jobs.join("fspl-mode000.fspl");
    std::fs::write(&locked, job(100, CmdType::Fail, b"")).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let log = sb.path("log");
    Hostile {
        sb,
        q,
        outside,
        log,
        key,
    }
}

/// Count a run and collect what went wrong with it, peak RSS included.
fn check(f: &Finished, t: &mut Tally, problems: &mut Vec<String>) {
    t.runs += 1;
    PEAK_RSS_KB.fetch_max(f.maxrss_kb, std::sync::atomic::Ordering::SeqCst);
    problems.extend(f.problems());
    if f.maxrss_kb > RSS_LIMIT_KB {
        problems.push(format!("{}: peak RSS {} KiB", f.what, f.maxrss_kb));
    }
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                stack.push(p.clone());
                out.push((p, b"<dir>".to_vec()));
            } else if ft.is_file() {
                let data = std::fs::read(&p).unwrap();
                out.push((p, data));
            } else {
                out.push((p, format!("<{ft:?}>").into_bytes()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reliability_hostile_queue_contents() {
    let mut t = Tally::new("hostile_queue_contents");
    let h = hostile_queue();
    let qa = h.q.as_os_str();
    let outside_before = snapshot(&h.outside);
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    let mut problems = Vec::new();
    let qarg = |args: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![args[0].into(), "-q".into(), qa.to_os_string()];
        v.extend(args[1..].iter().map(OsString::from));
        v
    };
    // Every reader, with and without an identity.
    let id = h.key.as_os_str().to_os_string();
    let mut ls_out = String::new();
    for args in [
        vec!["queue-ls"],
        vec!["queue-ls", "--json"],
        vec!["queue-status"],
        vec!["queue-status", "--json"],
        vec!["queue-check"],
        vec!["queue-check", "--json"],
        vec!["queue-info", "-j", "2"],
        vec!["queue-info", "-j", "3", "--json"],
        vec!["queue-payload", "-j", "3"],
        vec!["queue-info", "-j", "99"],
    ] {
        let f = fspl_bounded(qarg(&args), None, LIMIT);
        check(&f, &mut t, &mut problems);
        if args == ["queue-ls"] {
            ls_out = f.stdout_text();
        }
        if args[0] == "queue-payload" && f.stdout != b"p3" {
            problems.push(format!("queue-payload -j 3 gave {:?}", f.stdout_text()));
        }
        if args[0] == "queue-info" && args[2] == "3" && f.stdout_text().contains("VICTIM") {
            problems.push("queue-info -j 3 read the job a symlink points to".into());
        }
        // With an identity the age file is parsed too (a bounded header,
        // about a second in a debug build), so only for three readers.
        let mut with_id = qarg(&args);
        with_id.push("--identity".into());
        with_id.push(id.clone());
        if [
            vec!["queue-ls"],
            vec!["queue-status", "--json"],
            vec!["queue-check"],
        ]
        .contains(&args)
        {
            check(&fspl_bounded(with_id, None, LIMIT), &mut t, &mut problems);
        }
    }
    // Genuine jobs list; no symlink, FIFO or directory does.
    for seq in ["1", "2", "3", "4", "5"] {
        if !ls_out
            .lines()
            .any(|l| l.split_whitespace().next() == Some(seq))
        {
            problems.push(format!("queue-ls does not list seq {seq}:\n{ls_out}"));
        }
    }
    for bad in [
        "fspl-link",
        "fspl-fifo",
        "fspl-dir",
        "fspl-len",
        "fspl-deep",
    ] {
        if ls_out.contains(bad) {
            problems.push(format!("queue-ls lists {bad}*:\n{ls_out}"));
        }
    }
    // An age file is shown as such without an identity, by design.
    if !ls_out
        .lines()
        .any(|l| l.contains("(encrypted)") && l.contains("fspl-age-header.fspl"))
    {
        problems.push(format!(
            "queue-ls does not show the age file as encrypted:\n{ls_out}"
        ));
    }
    // Traced runs: no descriptor may resolve outside the queue.
    for args in [vec!["queue-ls"], vec!["queue-status"], vec!["queue-check"]] {
        let trace = h.sb.path("trace");
        let mut c = std::process::Command::new("strace");
        c.args(["-f", "-y", "-qq", "-o"])
            .arg(&trace)
            .arg(fspl_bin())
            .args(qarg(&args));
        let f = run_bounded(&format!("strace fspl {}", args.join(" ")), c, None, LIMIT);
        t.runs += 1;
        if f.timed_out || f.code == Some(101) || f.stderr.contains("panicked") {
            problems.push(format!("{}: {:?} {}", f.what, f.code, f.stderr));
        }
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        assert!(
            text.contains("openat"),
            "strace recorded nothing: {}",
            f.stderr
        );
        for l in escapes(&text, &h.outside) {
            problems.push(format!(
                "{}: followed a symlink out of the queue: {l}",
                f.what
            ));
        }
    }
    // Processing: the genuine jobs run in order, from their own files.
    let mut proc_args = qarg(&["queue-process"]);
    proc_args.extend(recorder(&h.log));
    let trace = h.sb.path("trace-process");
    let mut c = std::process::Command::new("strace");
    c.args(["-f", "-y", "-qq", "-o"])
        .arg(&trace)
        .arg(fspl_bin())
        .args(&proc_args);
    let f = run_bounded("strace fspl queue-process", c, None, LIMIT);
    t.runs += 1;
    problems.extend(f.problems());
    for l in escapes(
        &std::fs::read_to_string(&trace).unwrap_or_default(),
        &h.outside,
    ) {
        problems.push(format!(
            "queue-process followed a symlink out of the queue: {l}"
        ));
    }
    let want = vec![
        "1 fspl-1.fspl".to_string(),
        "2 fspl-\u{fffd}\u{fffd}-2.fspl".to_string(),
        "3 fspl-3.fspl".to_string(),
        "4 fspl-4.fspl".to_string(),
    ];
    // Job 5 is a NOP: it runs nothing, so the log has 1-4.
    let got = file_lines(&h.log);
    if got != want {
        problems.push(format!("ran {got:?}, expected {want:?}"));
    }
    let next = std::fs::read_to_string(h.q.join("nextseq")).unwrap();
    if next.trim() != "6" {
        problems.push(format!("nextseq is {next:?} after the run, expected 6"));
    }
    // Measured again without strace: peak RSS of processing the rest.
    std::fs::write(
        h.q.join("jobs/fspl-6.fspl"),
        job(6, command(&[], &[]), b"p6"),
    )
    .unwrap();
    let mut proc_args = qarg(&["queue-process", "--output-to", "saveboth"]);
    proc_args.extend(recorder(&h.log));
    check(
        &fspl_bounded(&proc_args, None, LIMIT),
        &mut t,
        &mut problems,
    );
    // The daemon on the same queue.
    std::fs::write(
        h.q.join("jobs/fspl-7.fspl"),
        job(7, command(&[], &[]), b"p7"),
    )
    .unwrap();
    let socket = h.sb.path("d.sock");
    let cfg = h.sb.path("daemon.toml");
    let argv: Vec<String> = recorder(&h.log)
        .into_iter()
        .skip(2)
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let mut cmd = vec!["sh".to_string()];
    cmd.extend(argv);
    std::fs::write(
        &cfg,
        daemon_config(
            &socket,
            &[("hostile".into(), h.q.clone(), cmd, String::new())],
        ),
    )
    .unwrap();
    let dlog = h.sb.path("daemon.log");
    let d = start_daemon(&cfg, &socket, &dlog);
    if !wait_until(LIMIT, || {
        file_lines(&h.log).iter().any(|l| l.starts_with("7 "))
    }) {
        problems.push(format!("the daemon did not run job 7: {}", d.log_text()));
    }
    let st = fspl_bounded(
        [
            OsStr::new("status"),
            OsStr::new("--socket"),
            socket.as_os_str(),
            OsStr::new("--json"),
        ],
        None,
        LIMIT,
    );
    check(&st, &mut t, &mut problems);
    let code = d.terminate(LIMIT);
    t.runs += 1;
    let dl = std::fs::read_to_string(&dlog).unwrap_or_default();
    if code != Some(0) || dl.contains("panicked") {
        problems.push(format!("daemon exit {code:?}: {dl}"));
    }
    // The queue's repair moves the hostile entries (links themselves, not
    // their targets) into corrupt/.
    let f = fspl_bounded(qarg(&["queue-check", "--repair"]), None, LIMIT);
    check(&f, &mut t, &mut problems);
    // Nothing outside the queue changed.
    if snapshot(&h.outside) != outside_before {
        problems.push("files outside the queue changed".into());
    }
    if std::fs::read("/etc/passwd").unwrap() != passwd_before {
        problems.push("/etc/passwd changed".into());
    }
    let remaining = file_lines(&h.log);
    if remaining.iter().filter(|l| l.starts_with("6 ")).count() != 1 {
        problems.push(format!("job 6 did not run exactly once: {remaining:?}"));
    }
    eprintln!(
        "hostile_queue_contents: largest peak RSS of a reader {} KiB (limit {RSS_LIMIT_KB})",
        PEAK_RSS_KB.load(std::sync::atomic::Ordering::SeqCst)
    );
    t.faults = 24; // hostile entries in the queue
    t.states = 4; // listing, tracing, processing, daemon
    t.problems("hostile queue", problems);
    t.finish();
}

#[test]
fn reliability_hostile_sparse_4gib_payload() {
    let mut t = Tally::new("hostile_sparse_4gib_payload");
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let jobs = q.join("jobs");
    for (seq, len) in [(1u64, 4u64 << 30), (2, 0), (3, 4 << 30)] {
        let p = jobs.join(format!("fspl-{seq}.fspl"));
        std::fs::write(&p, job(seq, command(&[], &[]), b"")).unwrap();
        if len > 0 {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len)
                .unwrap();
        }
    }
    let mut problems = Vec::new();
    let qa = q.as_os_str().to_os_string();
    let mut runs: Vec<Vec<OsString>> = vec![
        vec!["queue-ls".into(), "-q".into(), qa.clone()],
        vec!["queue-status".into(), "-q".into(), qa.clone()],
        vec![
            "queue-info".into(),
            "-q".into(),
            qa.clone(),
            "-j".into(),
            "1".into(),
        ],
    ];
    let mut process: Vec<OsString> = vec!["queue-process".into(), "-q".into(), qa.clone()];
    process.extend(recorder(&log));
    runs.push(process);
    let mut peak = 0;
    for args in runs {
        let f = fspl_bounded(&args, None, LIMIT);
        t.runs += 1;
        problems.extend(f.problems());
        // Far below what reading the payload into memory would take.
        peak = peak.max(f.maxrss_kb);
        if f.maxrss_kb > 64 * 1024 {
            problems.push(format!("{}: peak RSS {} KiB", f.what, f.maxrss_kb));
        }
    }
    if file_lines(&log) != ["1 fspl-1.fspl", "2 fspl-2.fspl", "3 fspl-3.fspl"] {
        problems.push(format!("ran {:?}", file_lines(&log)));
    }
    eprintln!("hostile_sparse_4gib_payload: largest peak RSS {peak} KiB");
    t.faults = 2;
    t.states = 4;
    t.problems("sparse payload", problems);
    t.finish();
}

#[test]
fn regression_a_fifo_named_like_a_jobs_output_file_hung_queue_process() {
    // (Also: a symlink or hard link under that name wrote outside the queue.)
    // `--output-to saveboth` opened jobs/NAME.out for writing, which on a
    // FIFO waits for a reader: forever.
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    std::fs::write(q.join("jobs/fspl-1.fspl"), job(1, command(&[], &[]), b"")).unwrap();
    mkfifo(&q.join("jobs/fspl-1.fspl.out"));
    std::fs::write(q.join("jobs/fspl-2.fspl"), job(2, command(&[], &[]), b"")).unwrap();
    symlink("/etc/passwd", &q.join("jobs/fspl-2.fspl.out"));
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let mut args: Vec<OsString> = vec![
        "queue-process".into(),
        "-q".into(),
        q.as_os_str().into(),
        "--output-to".into(),
        "saveboth".into(),
    ];
    args.extend(recorder(&log));
    let f = fspl_bounded(&args, None, Duration::from_secs(60));
    assert!(f.problems().is_empty(), "{:?}", f.problems());
    assert_eq!(f.code, Some(1));
    assert!(
        f.stderr.contains("fspl-1.fspl.out: not a regular file"),
        "{}",
        f.stderr
    );
    assert!(!log.exists(), "the job ran without its output file");
    // Once the FIFO is gone the job runs; the symlink is refused, not followed.
    std::fs::remove_file(q.join("jobs/fspl-1.fspl.out")).unwrap();
    let f = fspl_bounded(&args, None, Duration::from_secs(60));
    assert_eq!(f.code, Some(1), "{}", f.stderr);
    assert!(f.stderr.contains("fspl-2.fspl.out"), "{}", f.stderr);
    assert_eq!(file_lines(&log), ["1 fspl-1.fspl"]);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    // A hard link to a file outside the queue is not overwritten either.
    std::fs::remove_file(q.join("jobs/fspl-2.fspl.out")).unwrap();
    let outside = sb.path("precious");
    std::fs::write(&outside, b"keep me").unwrap();
    std::fs::write(q.join("jobs/fspl-3.fspl"), job(3, command(&[], &[]), b"")).unwrap();
    std::fs::hard_link(&outside, q.join("jobs/fspl-3.fspl.out")).unwrap();
    let f = fspl_bounded(&args, None, Duration::from_secs(60));
    assert_eq!(f.code, Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("fspl-3.fspl.out: has other hard links"),
        "{}",
        f.stderr
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    assert_eq!(file_lines(&log), ["1 fspl-1.fspl", "2 fspl-2.fspl"]);
}

/// Every path under `root` except those under `allowed`.
fn tree_outside(root: &Path, allowed: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if allowed.iter().any(|a| p.starts_with(a)) {
                continue;
            }
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn reliability_hostile_path_traversal() {
    let mut t = Tally::new("hostile_path_traversal");
    let sb = Sandbox::new();
    // Deep enough that ../../x from jobs/ or from the queue lands in the
    // sandbox, where it would be seen.
    std::fs::create_dir_all(sb.path("a/b")).unwrap();
    let q = sb.queue("a/b/q");
    let tq = sb.path("a/b/tq");
    let mut problems = Vec::new();
    // A queue name with slashes is refused outright (and creates nothing).
    let f = fspl_bounded(
        [
            OsStr::new("queue-init"),
            OsStr::new("-q"),
            tq.as_os_str(),
            OsStr::new("--name"),
            OsStr::new("../../evil"),
        ],
        None,
        LIMIT,
    );
    problems.extend(f.problems());
    if f.code != Some(1) || !f.stderr.contains("invalid queue name") || tq.exists() {
        problems.push(format!(
            "queue-init --name ../../evil: {:?} {}",
            f.code, f.stderr
        ));
    }
    let _ = std::fs::remove_dir_all(&tq);
    ok(run(clean_fspl([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        tq.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("evil"),
    ])));
    let rec = sb.path("rec");
    std::fs::create_dir(&rec).unwrap();
    // The daemon's socket goes here: private whatever the umask.
    std::fs::set_permissions(&rec, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let log = rec.join("log");
    let key = sb.path("keys/laptop");
    std::fs::create_dir(sb.path("keys")).unwrap();
    ok(run(clean_fspl([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        key.as_os_str(),
    ])));
    let public = std::fs::read_to_string(sb.path("keys/laptop.pub")).unwrap();
    let trust = sb.path("keys/trust.toml");
    std::fs::write(
        &trust,
        format!(
            "[[sender]]\nname = \"../../sender\"\nkey = \"{}\"\n",
            public.trim()
        ),
    )
    .unwrap();
    let before = tree_outside(sb.dir.path(), &[q.clone(), tq.clone(), rec.clone()]);

    // Jobs whose names, params and env try to climb out, made by the CLI.
    let jobs_cwd = q.join("jobs");
    let prep = |args: &[&OsStr], env: &[(&OsStr, &OsStr)]| -> Vec<u8> {
        let mut c = clean_fspl(args);
        c.current_dir(&jobs_cwd);
        for (k, v) in env {
            c.env(k, v);
        }
        ok(run(c))
    };
    let dots = OsStr::new("../../x");
    let j1 = prep(
        &[
            OsStr::new("prepare"),
            OsStr::new("--seq"),
            OsStr::new("1"),
            OsStr::new("--"),
            dots,
            OsStr::new("/etc/passwd"),
            OsStr::new(".."),
        ],
        &[
            (OsStr::new("FSPL_SET_../../x"), OsStr::new("v1")),
            (OsStr::new("FSPL_SET_/etc/passwd"), OsStr::new("v2")),
        ],
    );
    std::fs::write(q.join("jobs/fspl-..%2f..fspl"), &j1).unwrap();
    let j2 = prep(
        &[
            OsStr::new("prepare-nop"),
            OsStr::new("--seq"),
            OsStr::new("2"),
        ],
        &[],
    );
    std::fs::write(q.join("jobs/fspl-..%2f..%2f..%2fx.fspl"), &j2).unwrap();
    std::fs::write(
        q.join("jobs/fspl-..%2fcorrupt.fspl"),
        b"*FILESPOOLER\0\x01broken",
    )
    .unwrap();
    // queue-write from inside jobs/ with a relative queue dir.
    let mut w = clean_fspl(["queue-write", "-q", "../../q"]);
    w.current_dir(&jobs_cwd);
    ok(run_with_input(
        w,
        &prep(
            &[
                OsStr::new("prepare-nop"),
                OsStr::new("--seq"),
                OsStr::new("3"),
            ],
            &[],
        ),
    ));
    let args: Vec<OsString> = vec![
        "queue-process".into(),
        "-q".into(),
        q.as_os_str().into(),
        "--output-to".into(),
        "saveboth".into(),
        "--allow-job-params".into(),
        "sh".into(),
        "--".into(),
        "-c".into(),
        // (sh drops variables with such names: read what fspl passed.)
        r#"echo "$FSPL_SEQ $FSPL_JOB_FILENAME $*" >> "$0"; tr '\0' '\n' < /proc/$$/environ | grep '^FSPL_SET_' | sort"#.into(),
        log.as_os_str().into(),
    ];
    let f = fspl_bounded(&args, None, LIMIT);
    t.runs += 1;
    problems.extend(f.problems());
    let got = file_lines(&log);
    if got != ["1 fspl-..%2f..fspl ../../x /etc/passwd .."] {
        problems.push(format!("job 1 ran with {got:?}"));
    }
    let env = file_lines(&q.join("jobs/fspl-..%2f..fspl.out"));
    if env != ["FSPL_SET_../../x=v1", "FSPL_SET_/etc/passwd=v2"] {
        problems.push(format!("job 1 got the env entries {env:?}"));
    }
    for out in ["fspl-..%2f..fspl.out", "fspl-..%2f..%2f..%2fx.fspl.out"] {
        if !q.join("jobs").join(out).is_file() {
            problems.push(format!("{out} is not in jobs/"));
        }
    }
    // Repair moves the corrupt file into q/corrupt/.
    let f = fspl_bounded(
        [
            OsStr::new("queue-check"),
            OsStr::new("-q"),
            q.as_os_str(),
            OsStr::new("--repair"),
        ],
        None,
        LIMIT,
    );
    t.runs += 1;
    problems.extend(f.problems());
    if !q.join("corrupt/fspl-..%2fcorrupt.fspl").is_file() {
        problems.push("the corrupt file is not in q/corrupt/".into());
    }

    // A queue with a trust file: a job signed to it runs; one signed to
    // "../../evil" (a sender may write any --to) and an unsigned one named
    // fspl-..%2f..fspl are refused into tq/rejected/.
    let signed = |seq: &str, to: &str| -> Vec<u8> {
        let mut c = clean_fspl(["prepare", "--seq", seq, "--to", to, "--sign"]);
        c.arg(&key);
        c.current_dir(&jobs_cwd);
        ok(run(c))
    };
    std::fs::write(tq.join("jobs/fspl-a.fspl"), signed("1", "../../evil")).unwrap();
    std::fs::write(tq.join("jobs/fspl-..%2f..fspl"), &j1).unwrap();
    std::fs::write(tq.join("jobs/fspl-b.fspl"), signed("1", "evil")).unwrap();
    let mut targs: Vec<OsString> = vec![
        "queue-process".into(),
        "-q".into(),
        tq.as_os_str().into(),
        "--trust".into(),
        trust.as_os_str().into(),
        "--output-to".into(),
        "saveboth".into(),
    ];
    targs.extend(recorder(&log));
    let f = fspl_bounded(&targs, None, LIMIT);
    t.runs += 1;
    problems.extend(f.problems());
    if !file_lines(&log).iter().any(|l| l == "1 fspl-b.fspl") {
        problems.push(format!("the job signed to evil did not run: {}", f.stderr));
    }
    for r in ["fspl-a.fspl", "fspl-..%2f..fspl"] {
        if !tq.join("rejected").join(r).is_file() {
            problems.push(format!("{r} is not in tq/rejected/: {}", f.stderr));
        }
    }
    // A daemon whose job name climbs: no path is made from it.
    std::fs::write(tq.join("jobs/fspl-c.fspl"), signed("2", "evil")).unwrap();
    let socket = rec.join("d.sock");
    let cfg = rec.join("daemon.toml");
    let argv: Vec<String> = recorder(&log)
        .into_iter()
        .skip(2)
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let mut cmd = vec!["sh".to_string()];
    cmd.extend(argv);
    std::fs::write(
        &cfg,
        daemon_config(
            &socket,
            &[(
                "../../x/../../y".into(),
                tq.clone(),
                cmd,
                format!("trust = {}\noutput_to = \"saveboth\"", toml_str(&trust)),
            )],
        ),
    )
    .unwrap();
    let d = start_daemon(&cfg, &socket, &rec.join("daemon.log"));
    if !wait_until(LIMIT, || {
        file_lines(&log).iter().any(|l| l == "2 fspl-c.fspl")
    }) {
        problems.push(format!("the daemon did not run job 2: {}", d.log_text()));
    }
    let code = d.terminate(LIMIT);
    t.runs += 1;
    if code != Some(0) {
        problems.push(format!("daemon exit {code:?}"));
    }
    let after = tree_outside(sb.dir.path(), &[q.clone(), tq.clone(), rec.clone()]);
    if after != before {
        let new: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
        problems.push(format!("written outside the queues: {new:?}"));
    }
    t.faults = 9; // hostile names tried
    t.states = 3;
    t.problems("path traversal", problems);
    t.finish();
}

#[test]
fn reliability_hostile_loose_identity_permissions() {
    // prepare --sign and stdin-info --identity are covered by
    // security.rs; here the other entry points: queue-process --identity
    // and a daemon job's identity (daemon --check and start).
    let mut t = Tally::new("hostile_loose_identity_permissions");
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let key = sb.path("id");
    ok(run(clean_fspl([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        key.as_os_str(),
    ])));
    std::fs::write(q.join("jobs/fspl-1.fspl"), job(1, command(&[], &[]), b"")).unwrap();
    let mut problems = Vec::new();
    for mode in [0o640, 0o604, 0o666] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut args: Vec<OsString> = vec![
            "queue-process".into(),
            "-q".into(),
            q.as_os_str().into(),
            "--identity".into(),
            key.as_os_str().into(),
        ];
        args.extend(recorder(&log));
        let f = fspl_bounded(&args, None, LIMIT);
        t.runs += 1;
        problems.extend(f.problems());
        if f.code != Some(1) || !f.stderr.contains("too open") {
            problems.push(format!(
                "queue-process --identity (mode {mode:o}): {:?} {}",
                f.code, f.stderr
            ));
        }
        let socket = sb.path("d.sock");
        let cfg = sb.path("daemon.toml");
        std::fs::write(
            &cfg,
            daemon_config(
                &socket,
                &[(
                    "j".into(),
                    q.clone(),
                    vec!["true".into()],
                    format!("identity = [{}]", toml_str(&key)),
                )],
            ),
        )
        .unwrap();
        let f = fspl_bounded(
            [
                OsStr::new("daemon"),
                OsStr::new("-c"),
                cfg.as_os_str(),
                OsStr::new("--check"),
            ],
            None,
            LIMIT,
        );
        t.runs += 1;
        problems.extend(f.problems());
        if f.code != Some(1) || !f.stderr.contains("too open") {
            problems.push(format!(
                "daemon --check (mode {mode:o}): {:?} {}",
                f.code, f.stderr
            ));
        }
    }
    if log.exists() {
        problems.push("a job ran".into());
    }
    t.faults = 3;
    t.states = 2;
    t.problems("loose permissions", problems);
    t.finish();
}
