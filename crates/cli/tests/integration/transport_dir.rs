//! `fspl push` and `fspl pull` with `dir:` destinations and sources (issue
//! 13), as real processes on real directories:
//!
//! - push into a queue directory and into a plain folder, pull from a
//!   plain folder; names and bytes are kept, nothing else appears;
//! - jobs pushed out of order, and pushed twice, run in order, once;
//! - `--keep` moves sent jobs to `OUTBOX/sent/`, never replacing a file;
//! - a corrupt job in the outbox, or a different file under a job's name
//!   at the destination, is reported (exit 1) and kept; the rest is sent;
//! - a second push of one outbox is refused, naming the first one's pid;
//! - usage and configuration errors are one line, exit 2;
//! - a daemon watching the destination queue runs jobs as they arrive;
//! - reliability: a fault (abort, EIO) at every step of push, pull and the
//!   batch commit, and SIGKILL of push and pull at random instants, lose
//!   no job, leave no partial file under a job name, and run every job
//!   once, in order (short mode here; FSPL_RELIABILITY_LONG=1, as
//!   scripts/reliability sets it, runs more rounds).

use std::collections::BTreeMap;
#[cfg(feature = "failpoints")]
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::helper::*;
use crate::reliability_common::*;
use fspl_testkit::lines as log_lines;

/// `fspl prepare --seq SEQ -i -` with `payload` on stdin.
fn job(seq: u64, payload: &str) -> Vec<u8> {
    ok(run_with_input(
        clean_fspl(["prepare", "--seq", &seq.to_string(), "-i", "-"]),
        payload.as_bytes(),
    ))
}

fn write(q: &Path, job: &[u8]) {
    ok(run_with_input(
        clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
        job,
    ));
}

fn push_cmd(outbox: &Path, dest: impl AsRef<OsStr>, extra: &[&str]) -> std::process::Command {
    let mut c = clean_fspl([OsStr::new("push"), OsStr::new("-q"), outbox.as_os_str()]);
    c.arg(dest).args(extra);
    c
}

fn push(outbox: &Path, dest: impl AsRef<OsStr>, extra: &[&str]) -> Output {
    run(push_cmd(outbox, dest, extra))
}

fn pull_cmd(src: impl AsRef<OsStr>, q: &Path) -> std::process::Command {
    let mut c = clean_fspl([OsStr::new("pull")]);
    c.arg(src).arg("-q").arg(q);
    c
}

fn pull(src: impl AsRef<OsStr>, q: &Path) -> Output {
    run(pull_cmd(src, q))
}

/// Every entry of a directory: name -> bytes (None for what is not a
/// regular file).
fn entries(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let regular = e.file_type().unwrap().is_file();
            (
                e.file_name().to_string_lossy().into_owned(),
                regular.then(|| std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

/// The job files (fspl-*.fspl) of a directory: name -> bytes.
fn jobs_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    entries(dir)
        .into_iter()
        .filter(|(n, b)| n.starts_with("fspl-") && n.ends_with(".fspl") && b.is_some())
        .map(|(n, b)| (n, b.unwrap()))
        .collect()
}

/// Run queue `q` with a command that appends "SEQ PAYLOAD" to `log`.
fn process(q: &Path, log: &Path) {
    let mut c = clean_fspl([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
    c.args(["sh", "--", "-c", r#"p=$(cat); echo "$FSPL_SEQ $p" >> "$0""#])
        .arg(log);
    ok(run(c));
}

fn stderr_lines(out: &Output) -> Vec<String> {
    text(&out.stderr).lines().map(str::to_string).collect()
}

fn error_lines(out: &Output) -> Vec<String> {
    stderr_lines(out)
        .into_iter()
        .filter(|l| l.starts_with("fspl: error: "))
        .collect()
}

#[track_caller]
fn exit_code(out: &Output, want: i32) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "exit status {} (want {want}); stderr: {}",
        out.status,
        text(&out.stderr)
    );
}

/// An outbox with jobs `seqs` (payload "p<seq>"): name -> bytes.
fn outbox_with(sb: &Sandbox, name: &str, seqs: &[u64]) -> (PathBuf, BTreeMap<String, Vec<u8>>) {
    let ob = sb.queue(name);
    for &s in seqs {
        write(&ob, &job(s, &format!("p{s}")));
    }
    let jobs = jobs_in(&ob.join("jobs"));
    assert_eq!(jobs.len(), seqs.len());
    (ob, jobs)
}

#[test]
fn push_into_a_queue_and_a_folder_keeps_names_and_bytes_and_pull_takes_them() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[3, 1, 4, 2]);
    let dest = sb.queue("dest");
    let out = push(&ob, &dest, &[]);
    exit_code(&out, 0);
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("fspl: info: pushed 4 job(s), ") && lines[0].contains(" s to "),
        "{lines:?}"
    );
    assert!(jobs_in(&ob.join("jobs")).is_empty(), "the outbox is empty");
    assert_eq!(
        entries(&dest.join("jobs")),
        sent.iter()
            .map(|(n, b)| (n.clone(), Some(b.clone())))
            .collect(),
        "the destination holds exactly the outbox's files, names and bytes"
    );
    let log = sb.path("log");
    process(&dest, &log);
    assert_eq!(log_lines(&log), ["1 p1", "2 p2", "3 p3", "4 p4"]);

    // A plain folder (dir:), then pulled into the queue.
    let (ob2, sent2) = outbox_with(&sb, "outbox2", &[6, 5]);
    let folder = sb.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let mut dest_url = std::ffi::OsString::from("dir:");
    dest_url.push(&folder);
    let out = push(&ob2, &dest_url, &["--json"]);
    exit_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sent"], 2);
    assert_eq!(
        v["bytes"],
        sent2.values().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(v["refused"], serde_json::json!([]));
    assert_eq!(
        entries(&folder),
        sent2
            .iter()
            .map(|(n, b)| (n.clone(), Some(b.clone())))
            .collect(),
        "the folder holds the jobs and nothing else (no temporary)"
    );
    let out = pull(&folder, &dest);
    exit_code(&out, 0);
    assert!(
        text(&out.stderr).starts_with("fspl: info: pulled 2 job(s), "),
        "{}",
        text(&out.stderr)
    );
    assert!(entries(&folder).is_empty(), "taken from the folder");
    assert_eq!(
        jobs_in(&dest.join("jobs")),
        sent2,
        "stored under their names"
    );
    process(&dest, &log);
    assert_eq!(
        log_lines(&log),
        ["1 p1", "2 p2", "3 p3", "4 p4", "5 p5", "6 p6"]
    );
    // Nothing left to do: exit 0, zero jobs.
    let out = push(&ob, &dest, &[]);
    exit_code(&out, 0);
    assert!(text(&out.stderr).contains("pushed 0 job(s)"));
}

#[test]
fn jobs_pushed_out_of_order_and_twice_run_in_order_once() {
    let sb = Sandbox::new();
    let dest = sb.queue("dest");
    let log = sb.path("log");
    let jobs: BTreeMap<u64, Vec<u8>> = (1..=6).map(|s| (s, job(s, &format!("p{s}")))).collect();
    let outbox = |name: &str, seqs: &[u64]| {
        let ob = sb.queue(name);
        for s in seqs {
            write(&ob, &jobs[s]);
        }
        ob
    };
    // 4 and 2 first, with --keep, then resent as a push killed after the
    // acknowledgement would resend them (same names, same bytes).
    let a = outbox("a", &[4, 2]);
    exit_code(&push(&a, &dest, &["--keep"]), 0);
    for (name, _) in jobs_in(&a.join("sent")) {
        std::fs::rename(a.join("sent").join(&name), a.join("jobs").join(&name)).unwrap();
    }
    exit_code(&push(&a, &dest, &[]), 0);
    assert!(jobs_in(&a.join("jobs")).is_empty());
    assert_eq!(
        jobs_in(&dest.join("jobs")).len(),
        2,
        "a resend lands on its copy"
    );
    // 6 and 3, and 2 again under another name (the same job written twice).
    let b = outbox("b", &[6, 3, 2]);
    exit_code(&push(&b, &dest, &[]), 0);
    assert_eq!(jobs_in(&dest.join("jobs")).len(), 5);
    process(&dest, &log);
    assert!(log_lines(&log).is_empty(), "job 1 is missing: nothing runs");
    let c = outbox("c", &[5, 1]);
    exit_code(&push(&c, &dest, &[]), 0);
    process(&dest, &log);
    let want: Vec<String> = (1..=6).map(|s| format!("{s} p{s}")).collect();
    assert_eq!(log_lines(&log), want);
    // Job 3 pushed once more after it ran: below nextseq, never run again.
    let d = outbox("d", &[3]);
    exit_code(&push(&d, &dest, &[]), 0);
    process(&dest, &log);
    assert_eq!(log_lines(&log), want);
}

#[test]
fn keep_moves_sent_jobs_to_sent_and_never_replaces_a_file_there() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[1, 2]);
    let dest = sb.queue("dest");
    let (taken, _) = sent.iter().next().unwrap();
    std::fs::create_dir(ob.join("sent")).unwrap();
    std::fs::write(ob.join("sent").join(taken), b"precious").unwrap();
    exit_code(&push(&ob, &dest, &["--keep"]), 0);
    assert!(jobs_in(&ob.join("jobs")).is_empty());
    let kept = entries(&ob.join("sent"));
    assert_eq!(kept[taken.as_str()].as_deref(), Some(&b"precious"[..]));
    let suffixed = taken.replace(".fspl", ".1.fspl");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(kept[&suffixed].as_ref(), Some(&sent[taken]));
    for (name, bytes) in &sent {
        if name != taken {
            assert_eq!(kept[name].as_ref(), Some(bytes));
        }
    }
    assert_eq!(jobs_in(&dest.join("jobs")), sent);
}

#[test]
fn a_corrupt_job_in_the_outbox_is_reported_and_kept_and_the_others_sent() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[1, 2, 3]);
    std::fs::write(ob.join("jobs/fspl-bad.fspl"), b"*FILESPOOLER\0garbage").unwrap();
    let dest = sb.queue("dest");
    let out = push(&ob, &dest, &["--json"]);
    exit_code(&out, 1);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("fspl: error: not sent: ") && errors[0].contains("fspl-bad.fspl: "),
        "{errors:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sent"], 3);
    assert_eq!(v["refused"].as_array().unwrap().len(), 1);
    assert!(
        v["refused"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("jobs/fspl-bad.fspl")
    );
    assert_eq!(jobs_in(&dest.join("jobs")), sent);
    assert_eq!(
        jobs_in(&ob.join("jobs")).into_keys().collect::<Vec<_>>(),
        ["fspl-bad.fspl"]
    );
}

/// A job larger than what a push keeps in memory (64 KiB), pushed to a
/// destination on the same file system, is linked into place instead of
/// copied: the very file arrives. It is checked all the same: one whose
/// payload was altered is refused and stays in the outbox.
#[test]
fn large_jobs_on_one_file_system_are_linked_not_copied_and_still_checked() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    let ob = sb.queue("outbox");
    let big = |seq: u64, seed: u64| {
        let p = sb.path(format!("payload{seq}"));
        std::fs::write(&p, noise(300 << 10, seed)).unwrap();
        let mut c = clean_fspl(["prepare", "--seq", &seq.to_string(), "-i"]);
        c.arg(&p);
        ok(run(c))
    };
    write(&ob, &big(1, 1));
    let good = jobs_in(&ob.join("jobs"));
    let (name, bytes) = good.iter().next().unwrap();
    let ino = std::fs::metadata(ob.join("jobs").join(name)).unwrap().ino();
    let mut altered = big(2, 2);
    let mid = altered.len() / 2;
    altered[mid] ^= 0xff;
    std::fs::write(ob.join("jobs/fspl-altered.fspl"), &altered).unwrap();
    for dest in [sb.queue("dest"), sb.path("folder")] {
        let _ = std::fs::create_dir(&dest);
        let into = if dest.join("jobs").is_dir() {
            dest.join("jobs")
        } else {
            dest.clone()
        };
        let out = push(&ob, &dest, &["--keep"]);
        exit_code(&out, 1);
        let errors = error_lines(&out);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("fspl-altered.fspl (seq 2): refusing the job"),
            "{errors:?}"
        );
        assert_eq!(jobs_in(&into), good, "only the good job arrived");
        assert_eq!(
            std::fs::metadata(into.join(name)).unwrap().ino(),
            ino,
            "the outbox's file itself, linked"
        );
        assert_eq!(std::fs::read(into.join(name)).unwrap(), *bytes);
        assert!(ob.join("jobs/fspl-altered.fspl").exists(), "kept");
        // --keep moved the sent job to sent/: put it back for the next
        // destination.
        std::fs::rename(ob.join("sent").join(name), ob.join("jobs").join(name)).unwrap();
    }
}

/// A job whose header reads but whose payload is not what the header
/// says (cut short) is refused by the destination's checks, as
/// `queue-write` would refuse it: by push (it stays in the outbox) and by
/// pull (it stays in the folder). Nothing of it is stored.
#[test]
fn a_job_with_a_cut_payload_is_refused_at_the_destination_by_push_and_pull() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[1]);
    // A job from a regular file carries its payload's length and digest.
    let p = sb.path("payload");
    std::fs::write(&p, b"a payload of some length").unwrap();
    let mut c = clean_fspl(["prepare", "--seq", "2", "-i"]);
    c.arg(&p);
    let mut cut = ok(run(c));
    cut.truncate(cut.len() - 5);
    std::fs::write(ob.join("jobs/fspl-cut.fspl"), &cut).unwrap();
    let dest = sb.queue("dest");
    let out = push(&ob, &dest, &[]);
    exit_code(&out, 1);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(
            "fspl-cut.fspl (seq 2): refusing the job from fspl-cut.fspl, nothing was stored"
        ),
        "{errors:?}"
    );
    assert_eq!(
        jobs_in(&dest.join("jobs")),
        sent,
        "only the good job arrived"
    );
    assert_eq!(
        entries(&dest.join("jobs")).len(),
        1,
        "no temporary left behind"
    );
    assert_eq!(
        jobs_in(&ob.join("jobs")).into_keys().collect::<Vec<_>>(),
        ["fspl-cut.fspl"]
    );

    let folder = sb.path("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("fspl-cut.fspl"), &cut).unwrap();
    let out = pull(&folder, &dest);
    exit_code(&out, 1);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("fspl: error: not taken: ")
            && errors[0].contains("folder/fspl-cut.fspl: refusing the job from"),
        "{errors:?}"
    );
    assert!(folder.join("fspl-cut.fspl").exists());
    assert_eq!(jobs_in(&dest.join("jobs")), sent);
}

#[test]
fn a_different_file_under_a_jobs_name_at_the_destination_is_not_replaced() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[1, 2]);
    let dest = sb.queue("dest");
    // The job of seq 1 (names are random: the first by name may be seq 2).
    let (name, _) = sent.iter().find(|(_, b)| b.ends_with(b"p1")).unwrap();
    let other = job(9, "someone else's");
    std::fs::write(dest.join("jobs").join(name), &other).unwrap();
    let out = push(&ob, &dest, &[]);
    exit_code(&out, 1);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(name.as_str())
            && errors[0].contains("(seq 1)")
            && errors[0].contains("a different file named"),
        "{errors:?}"
    );
    assert_eq!(std::fs::read(dest.join("jobs").join(name)).unwrap(), other);
    assert_eq!(
        jobs_in(&ob.join("jobs")).into_keys().collect::<Vec<_>>(),
        std::slice::from_ref(name),
        "the refused job stays in the outbox; the other was sent"
    );
}

#[test]
fn usage_and_configuration_errors_are_one_line_and_exit_2() {
    let sb = Sandbox::new();
    let (ob, _) = outbox_with(&sb, "outbox", &[1]);
    let q = sb.queue("q");
    let missing = sb.path("missing");
    let cases: Vec<(Output, &str)> = vec![
        (push(&ob, "ftp://host/x", &[]), "unknown scheme \"ftp\""),
        (
            push(&ob, "s3x:bucket", &[]),
            "known: a plain path, dir:PATH, ssh://",
        ),
        (push(&ob, "ssh://host", &[]), "needs a queue name"),
        (push(&ob, &missing, &[]), "no such directory"),
        (push(&missing, &q, &[]), "no such queue directory"),
        (push(&ob, &ob, &[]), "is the outbox's own jobs/ directory"),
        (
            push(&ob, ob.join("jobs"), &[]),
            "is the outbox's own jobs/ directory",
        ),
        (
            pull(q.join("jobs"), &q),
            "is the queue's own jobs/ directory",
        ),
        (pull(&missing, &q), "no such directory"),
        (pull(&ob, &missing), "no such queue directory"),
    ];
    for (out, want) in cases {
        exit_code(&out, 2);
        let line = one_line_error(out);
        assert!(line.contains(want), "{line:?} lacks {want:?}");
    }
    assert_eq!(jobs_in(&ob.join("jobs")).len(), 1, "nothing was sent");
}

#[test]
fn pull_takes_regular_job_files_only() {
    let sb = Sandbox::new();
    let folder = sb.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let good = job(1, "p1");
    std::fs::write(folder.join("fspl-good.fspl"), &good).unwrap();
    let secret = sb.path("secret");
    std::fs::write(&secret, job(2, "p2")).unwrap();
    std::os::unix::fs::symlink(&secret, folder.join("fspl-link.fspl")).unwrap();
    std::fs::write(folder.join(".fspl-tmp-partial"), b"*FILESPOOLER\0").unwrap();
    std::fs::write(folder.join("notes.txt"), b"hello").unwrap();
    std::fs::create_dir(folder.join("fspl-dir.fspl")).unwrap();
    let q = sb.queue("q");
    let out = pull(&folder, &q);
    exit_code(&out, 0);
    assert_eq!(
        jobs_in(&q.join("jobs")),
        BTreeMap::from([("fspl-good.fspl".to_string(), good)])
    );
    let left: Vec<String> = entries(&folder).into_keys().collect();
    assert_eq!(
        left,
        [
            ".fspl-tmp-partial",
            "fspl-dir.fspl",
            "fspl-link.fspl",
            "notes.txt"
        ]
    );
    assert!(secret.exists());
    assert!(
        text(&out.stderr).contains("a symbolic link (not followed)"),
        "{}",
        text(&out.stderr)
    );
    // A second pull of the folder at once is refused, naming the holder.
    std::fs::write(folder.join("fspl-next.fspl"), job(2, "p2")).unwrap();
    let held = std::fs::File::open(&folder).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let out = pull(&folder, &q);
    exit_code(&out, 1);
    let line = one_line_error(out);
    assert!(
        line.contains("is busy") && line.contains(&format!("(pid {})", std::process::id())),
        "{line}"
    );
    assert!(folder.join("fspl-next.fspl").exists());
}

/// A pull from a queue directory (an outbox on a mounted disk) holds its
/// lock, as a push would, and empties it.
#[test]
fn pull_from_a_queue_directory_takes_its_jobs_under_its_lock() {
    let sb = Sandbox::new();
    let (ob, sent) = outbox_with(&sb, "outbox", &[1, 2]);
    let q = sb.queue("q");
    let holder = std::fs::File::open(ob.join("nextseq.lock")).unwrap();
    holder.lock().unwrap();
    let out = pull(&ob, &q);
    exit_code(&out, 1);
    let line = one_line_error(out);
    assert!(
        line.contains("is busy") && line.contains(&format!("(pid {})", std::process::id())),
        "{line}"
    );
    drop(holder);
    exit_code(&pull(&ob, &q), 0);
    assert!(jobs_in(&ob.join("jobs")).is_empty());
    assert_eq!(jobs_in(&q.join("jobs")), sent);
}

/// Two pushes of one outbox at once: the second is refused at once and
/// names the first one's pid; the first completes. Also for an outbox
/// without nextseq.lock (append-only), which gets a push.lock.
#[cfg(feature = "failpoints")]
#[test]
fn a_second_push_of_one_outbox_is_refused_naming_the_first() {
    require_failpoints();
    for append_only in [false, true] {
        let sb = Sandbox::new();
        let ob = sb.path("outbox");
        let mut init = clean_fspl([OsStr::new("queue-init"), OsStr::new("-q"), ob.as_os_str()]);
        if append_only {
            init.arg("--append-only");
        }
        ok(run(init));
        for s in 1..=3 {
            write(&ob, &job(s, &format!("p{s}")));
        }
        let dest = sb.queue("dest");
        let mut first = push_cmd(&ob, &dest, &[]);
        first
            .env("FAILPOINTS", "batch:before-flush=sleep(3000)")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let first = first.spawn().unwrap();
        let pid = first.id();
        // Wait until it holds the outbox's lock (it then waits 3 s
        // before flushing its batch).
        let lock = if append_only {
            ob.join("push.lock")
        } else {
            ob.join("nextseq.lock")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while lock_holder(&lock) != Some(pid) {
            assert!(
                Instant::now() < deadline,
                "the first push never took the lock"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = push(&ob, &dest, &[]);
        exit_code(&out, 1);
        let line = one_line_error(out);
        assert!(
            line.contains("is busy (another push, pull or queue-process is using it)")
                && line.contains(&format!("locked by another process (pid {pid})")),
            "{line}"
        );
        let done = first.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", text(&done.stderr));
        assert_eq!(jobs_in(&dest.join("jobs")).len(), 3);
        assert_eq!(ob.join("push.lock").exists(), append_only);
    }
}

/// The pid holding an flock on `path`, from /proc/locks.
#[cfg(feature = "failpoints")]
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let dev = m.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        m.ino()
    );
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && f[1] == "FLOCK" && f[5] == want)
                .then(|| f[4].parse().ok())
                .flatten()
        })
}

/// A daemon with a `process` job on the destination queue runs pushed
/// jobs as they arrive (picked up by filesystem events: its safety rescan
/// is an hour away).
#[test]
fn a_push_to_a_queue_watched_by_a_daemon_runs_its_jobs_as_they_arrive() {
    let sb = Sandbox::new();
    let dest = sb.queue("dest");
    let log = sb.path("log");
    let config = sb.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {:?}\nrescan_interval = 3600\nshutdown_grace = 1\n\n\
             [[job]]\nname = \"dest\"\ntype = \"process\"\nqueue = {:?}\n\
             command = [\"/bin/sh\", \"-c\", \"p=$(cat); echo \\\"$FSPL_SEQ $p\\\" >> \\\"$1\\\"\", \"sh\", {:?}]\n",
            sb.path("d.sock").to_str().unwrap(),
            dest.to_str().unwrap(),
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    let stderr = std::fs::File::create(sb.path("daemon.log")).unwrap();
    let mut daemon = fspl()
        .arg("daemon")
        .arg("-c")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log: {}",
                std::fs::read_to_string(sb.path("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    wait_for("the control socket", &|| {
        std::os::unix::net::UnixStream::connect(sb.path("d.sock")).is_ok()
    });
    let (a, _) = outbox_with(&sb, "a", &[2, 1, 3]);
    exit_code(&push(&a, &dest, &[]), 0);
    wait_for("jobs 1-3 to run", &|| log_lines(&log).len() >= 3);
    let (b, _) = outbox_with(&sb, "b", &[5, 4]);
    exit_code(&push(&b, &dest, &[]), 0);
    wait_for("jobs 4-5 to run", &|| log_lines(&log).len() >= 5);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let st = daemon.wait().unwrap();
    assert!(st.success(), "daemon: {st}");
    let want: Vec<String> = (1..=5).map(|s| format!("{s} p{s}")).collect();
    assert_eq!(log_lines(&log), want);
}

/// docs/transports.md's "Try it" runs as pasted, in a fresh home, and
/// prints what it shows.
#[test]
fn transports_doc_try_it_runs_verbatim() {
    use crate::newcomer::{
        blocks, check_promises, host, path_with_only_fspl, read_doc, run_blocks, shown_after,
    };
    let sb = Sandbox::new();
    let base = sb.dir.path();
    let path = path_with_only_fspl(base);
    let hosts = BTreeMap::from([("on", host(base, "on"))]);
    let md = read_doc("docs/transports.md");
    let all = blocks(&md, "## Try it");
    let cmds: Vec<_> = all.iter().filter(|b| b.runs()).cloned().collect();
    assert_eq!(cmds.len(), 2);
    let ran = run_blocks(&cmds, &hosts, "on", &path, base);
    // push and pull report on stderr (info), the bad URL is an error.
    check_promises("docs/transports.md Try it", &ran, &[0, 1]);
    let home = hosts["on"].home.to_str().unwrap();
    let shape = |s: &str| -> Vec<String> {
        s.replace(home, "/home/me")
            .lines()
            .map(|l| {
                // Sizes and times vary with the machine.
                l.split(' ')
                    .map(|w| {
                        if w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                            "N"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(shape(&ran[0].stderr), shape(shown_after(&all, &ran[0])));
    let err: Vec<&str> = ran[1]
        .stderr
        .lines()
        .filter(|l| l.contains("error"))
        .collect();
    assert_eq!(err.join("\n") + "\n", shown_after(&all, &ran[1]));
    let q = hosts["on"].home.join("queue");
    assert_eq!(std::fs::read_to_string(q.join("nextseq")).unwrap(), "4\n");
    assert_eq!(jobs_in(&hosts["on"].home.join("outbox/sent")).len(), 1);
}

// ---------------------------------------------------------------- reliability

/// Where the jobs of a reliability lab are: the sender's outbox, a plain
/// folder between (pushed to, pulled from), and the receiving queue
/// (`lab.q`), which `lab.check` and `lab.finish` judge.
#[cfg(feature = "failpoints")]
struct Transfer {
    lab: Lab,
    outbox: PathBuf,
    folder: PathBuf,
}

#[cfg(feature = "failpoints")]
impl Transfer {
    fn new(salt: u64, sizes: Vec<usize>) -> Transfer {
        let lab = Lab::new(false, salt, sizes);
        let outbox = lab.sb.queue("outbox");
        let folder = lab.sb.path("folder");
        std::fs::create_dir(&folder).unwrap();
        Transfer {
            lab,
            outbox,
            folder,
        }
    }

    /// Prepare the next job into the outbox.
    fn send(&mut self) -> u64 {
        let (n, c) = self.lab.prepare_cmd();
        let job = ok(run(c));
        self.lab.note_sent(n, &job);
        write(&self.outbox, &job);
        n
    }

    /// Every job sent and not yet run is somewhere, complete; every file
    /// under a job name anywhere is a job that was sent; the rest of the
    /// invariants on the receiving queue (`Lab::check`).
    fn check(&mut self, sent: &BTreeMap<u64, Vec<u8>>, tally: &mut Tally) -> Vec<String> {
        let mut p = Vec::new();
        let mut found: BTreeSet<u64> = BTreeSet::new();
        for (label, dir) in [
            ("outbox", self.outbox.join("jobs")),
            ("folder", self.folder.clone()),
            ("queue", self.lab.q.join("jobs")),
        ] {
            for (name, bytes) in jobs_in(&dir) {
                match sent.iter().find(|(_, b)| **b == bytes) {
                    Some((&seq, _)) => {
                        found.insert(seq);
                    }
                    None => p.push(format!(
                        "{label}/{name} ({} bytes) is under a job name but is not a job that was sent",
                        bytes.len()
                    )),
                }
            }
            for (name, bytes) in entries(&dir) {
                let ok_name = (name.starts_with("fspl-") && name.ends_with(".fspl"))
                    || name.starts_with(".fspl-tmp-");
                if !ok_name || bytes.is_none() {
                    p.push(format!("unexpected {label}/{name}"));
                }
            }
        }
        let next = self.lab.nextseq().unwrap_or(1);
        for &seq in sent.keys() {
            if seq >= next && !found.contains(&seq) {
                p.push(format!(
                    "job {seq} is lost: in no directory, and not run (nextseq {next})"
                ));
            }
        }
        p.extend(self.lab.check(tally));
        p
    }

    /// Everything moved on without faults: push the outbox to the folder,
    /// pull the folder, and push what is left straight to the queue.
    fn recover(&mut self) -> Vec<String> {
        let mut p = Vec::new();
        for (what, out) in [
            ("push to the folder", push(&self.outbox, &self.folder, &[])),
            ("pull", pull(&self.folder, &self.lab.q)),
            ("push to the queue", push(&self.outbox, &self.lab.q, &[])),
        ] {
            if !out.status.success() {
                p.push(format!(
                    "recovery {what} failed ({}): {}",
                    out.status,
                    text(&out.stderr).trim()
                ));
            }
        }
        if !jobs_in(&self.outbox.join("jobs")).is_empty() || !jobs_in(&self.folder).is_empty() {
            p.push("jobs left in the outbox or folder after recovery".into());
        }
        p
    }
}

/// How a faulted command is run.
#[cfg(feature = "failpoints")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// push OUTBOX QUEUE
    PushQueue,
    /// push --keep OUTBOX QUEUE
    PushKeep,
    /// push OUTBOX FOLDER
    PushFolder,
    /// pull FOLDER -q QUEUE (the folder filled by an unfaulted push)
    Pull,
}

#[cfg(feature = "failpoints")]
fn vias_for(point: &str) -> Vec<Via> {
    match point.split(':').next().unwrap() {
        "batch" => vec![Via::PushQueue, Via::PushFolder, Via::Pull],
        "push" => vec![Via::PushQueue, Via::PushKeep],
        "pull" => vec![Via::Pull],
        _ => vec![],
    }
}

#[cfg(feature = "failpoints")]
fn errno_text(action: &str) -> &'static str {
    match action {
        "eio" => "Input/output error",
        _ => "",
    }
}

/// A fault (abort, or an EIO) at every step of push, pull and the batch
/// commit, through every command that reaches it.
#[cfg(feature = "failpoints")]
#[test]
fn reliability_transport_faults_at_every_step() {
    require_failpoints();
    let mut tally = Tally::new("transport-faults");
    let rounds = if long_mode() { 4 } else { 1 };
    let mut rng = Rng(0x7a45_0001);
    let points: Vec<&str> = fspl_queue::failpoint::NAMES
        .iter()
        .copied()
        .filter(|p| !vias_for(p).is_empty())
        .collect();
    assert!(points.len() >= 14, "{points:?}");
    let mut never: BTreeSet<String> = BTreeSet::new();
    for round in 0..rounds {
        for &point in &points {
            for via in vias_for(point) {
                for action in ["abort", "eio"] {
                    let sizes = if round == 0 {
                        vec![300, 9_000, 0, 70_000]
                    } else {
                        (0..4).map(|_| rng.below(20_000) as usize).collect()
                    };
                    let jobs = 3 + rng.below(3);
                    let ctx = format!("{action} at {point} via {via:?}, {jobs} jobs");
                    let mut t = Transfer::new(rng.next(), sizes);
                    for _ in 0..jobs {
                        t.send();
                    }
                    // What each seq's job file is (for the checks).
                    let sent: BTreeMap<u64, Vec<u8>> = jobs_in(&t.outbox.join("jobs"))
                        .into_values()
                        .map(|b| (fspl_format::decode(&b).unwrap().header.seq, b))
                        .collect();
                    let fp = format!("{point}=return({action})");
                    let mut c = match via {
                        Via::PushQueue => push_cmd(&t.outbox, &t.lab.q, &[]),
                        Via::PushKeep => push_cmd(&t.outbox, &t.lab.q, &["--keep"]),
                        Via::PushFolder => push_cmd(&t.outbox, &t.folder, &[]),
                        Via::Pull => {
                            exit_code(&push(&t.outbox, &t.folder, &[]), 0);
                            pull_cmd(&t.folder, &t.lab.q)
                        }
                    };
                    c.env("FAILPOINTS", &fp);
                    tally.runs += 1;
                    let out = run(c);
                    let mut p = Vec::new();
                    use std::os::unix::process::ExitStatusExt;
                    let fired = match (action, out.status.code(), out.status.signal()) {
                        (_, Some(0), _) => false,
                        ("abort", _, Some(libc::SIGABRT)) => true,
                        ("eio", Some(1), _) => {
                            let errors = error_lines(&out);
                            if errors.len() != 1 || !errors[0].contains(errno_text(action)) {
                                p.push(format!(
                                    "expected one error line naming the fault, got {:?}",
                                    text(&out.stderr)
                                ));
                            }
                            true
                        }
                        _ => {
                            p.push(format!(
                                "unexpected end {}: {}",
                                out.status,
                                text(&out.stderr).trim()
                            ));
                            true
                        }
                    };
                    if !fired {
                        never.insert(format!("{point} via {via:?}"));
                    } else {
                        tally.faults += 1;
                    }
                    if action == "eio" && via != Via::PushKeep {
                        // A failed (not killed) command leaves no temporary.
                        for dir in [t.lab.q.join("jobs"), t.folder.clone()] {
                            let temps = entries(&dir)
                                .keys()
                                .filter(|n| n.starts_with(".fspl-tmp-"))
                                .count();
                            if temps > 0 {
                                p.push(format!(
                                    "{temps} temporary file(s) left in {}",
                                    dir.display()
                                ));
                            }
                        }
                    }
                    p.extend(t.check(&sent, &mut tally));
                    p.extend(t.recover());
                    t.lab.acked.extend(sent.keys());
                    p.extend(t.check(&sent, &mut tally));
                    p.extend(t.lab.finish(&mut tally));
                    tally.problems(&format!("{ctx} {}", t.lab.ctx()), p);
                }
            }
        }
    }
    for n in never {
        tally
            .failures
            .push(format!("failpoint {n} was never reached"));
    }
    tally.finish();
}

/// SIGKILL of push and pull at random instants, round after round, with
/// the receiving queue processed now and then: no job is lost, no partial
/// file appears under a job name, and at the end every job ran once, in
/// order. A push of a few jobs takes milliseconds, so in most rounds one
/// step of the transfer (a random failpoint of the batch commit, the push
/// or the pull) is stretched by a few milliseconds (`sleep`), and the kill
/// comes at a random instant over the whole run: the kills land before,
/// inside and after every step.
#[cfg(feature = "failpoints")]
#[test]
fn reliability_push_and_pull_killed_at_random_instants() {
    require_failpoints();
    let mut tally = Tally::new("transport-kill");
    let rounds = if long_mode() { 150 } else { 30 };
    let mut rng = Rng(0x7a45_0002);
    let mut t = Transfer::new(rng.next(), vec![200, 5_000, 0, 40_000, 1_000]);
    let mut sent: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut kills = 0u64;
    // Kills that left the directories changed (something had moved).
    let mut killed_midway = 0u64;
    // Kills land at a random instant within this many microseconds.
    let mut window_us = 25_000u64;
    for round in 0..rounds {
        for _ in 0..1 + rng.below(6) {
            t.send();
        }
        for (_, b) in jobs_in(&t.outbox.join("jobs")) {
            let seq = fspl_format::decode(&b).unwrap().header.seq;
            sent.entry(seq).or_insert(b);
        }
        let mut c = match rng.below(3) {
            0 => push_cmd(&t.outbox, &t.lab.q, &[]),
            1 => push_cmd(&t.outbox, &t.folder, &[]),
            _ => pull_cmd(&t.folder, &t.lab.q),
        };
        let label = format!("{:?}", c.get_args().next().unwrap());
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let before = (
            jobs_in(&t.outbox.join("jobs")),
            jobs_in(&t.folder),
            jobs_in(&t.lab.q.join("jobs")),
        );
        let steps: Vec<&str> = fspl_queue::failpoint::NAMES
            .iter()
            .copied()
            .filter(|p| !vias_for(p).is_empty())
            .collect();
        if rng.below(5) != 0 {
            let step = steps[rng.below(steps.len() as u64) as usize];
            c.env("FAILPOINTS", format!("{step}=sleep({})", 5 + rng.below(20)));
        }
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(window_us)));
        let _ = child.kill();
        let st = child.wait().unwrap();
        tally.runs += 1;
        if st.code().is_none() {
            kills += 1;
            tally.faults += 1;
            let after = (
                jobs_in(&t.outbox.join("jobs")),
                jobs_in(&t.folder),
                jobs_in(&t.lab.q.join("jobs")),
            );
            if after != before {
                killed_midway += 1;
                window_us = 25_000;
            } else {
                // On a loaded machine a command may not get far within
                // 25 ms: widen the window until kills land mid-way.
                window_us = (window_us * 3 / 2).min(2_000_000);
            }
        } else if st.code() != Some(0) {
            tally.failures.push(format!(
                "round {round}: {label} ended {st} without being killed"
            ));
        } else {
            // It was done before the kill came: narrow the window so
            // kills land while it works.
            window_us = (window_us * 2 / 3).max(1_000);
        }
        let mut p = t.check(&sent, &mut tally);
        if rng.below(3) == 0 {
            let out = run(t.lab.process_cmd());
            if !out.status.success() {
                p.push(format!("queue-process failed: {}", text(&out.stderr)));
            }
            p.extend(t.check(&sent, &mut tally));
        }
        tally.problems(&format!("round {round} ({label})"), p);
    }
    let mut p = t.recover();
    t.lab.acked.extend(sent.keys());
    p.extend(t.check(&sent, &mut tally));
    p.extend(t.lab.finish(&mut tally));
    tally.problems("after recovery", p);
    eprintln!("transport-kill: {kills} kills, {killed_midway} after something had moved");
    if killed_midway == 0 {
        tally
            .failures
            .push("no command was ever killed after it had moved something".into());
    }
    tally.finish();
}
