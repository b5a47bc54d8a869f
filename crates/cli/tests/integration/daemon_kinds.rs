//! The daemon's job kinds as real processes (issue 13): `push` jobs
//! sending an outbox as jobs land in it, `pull` jobs filling a queue that
//! a `process` job runs, one supervisor for all: transient failures back
//! off without the error state, permanent ones enter it at once with the
//! reason; `fspl status` shows each job's kind, state and counters over
//! the versioned control protocol, without an async runtime; `daemon
//! --check` applies the one-job-per-resource rule per kind. Every timing
//! is a generous deadline, never a measurement.

use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::helper::*;
use crate::reliability_common::require_failpoints;

/// Events only: the polling an hour away (the rescan is, in `config`).
const EVENTS_ONLY: &str = "poll_min = 3600\npoll_max = 3600";

/// Job files in a directory (a queue's jobs/, or a folder).
fn job_files(dir: &Path) -> usize {
    job_names(dir).len()
}

/// Wait until every job of the daemon has had its first run (push and
/// pull jobs have no nextseq: their runs are counted).
fn settled(d: &Daemon) {
    wait_soon("the first runs", || {
        d.status().0.iter().all(|j| {
            j["runs"].as_u64().unwrap_or(0) > 0 && j["state"] != "running" && j["state"] != "busy"
        })
    });
}

/// `fspl status --socket S` as text.
fn table(d: &Daemon) -> String {
    let out = run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        d.socket.as_os_str(),
    ]));
    String::from_utf8(out.stdout).unwrap()
}

/// The words of the row of job `name` in the status table.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name}: {table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A sender's daemon pushes its outbox, as jobs land in it, into a queue
/// that a second daemon (the receiver's) runs: jobs written out of order
/// run in order, as they arrive. Events only: nothing waits for a poll.
#[test]
fn a_push_daemon_feeds_a_queue_another_daemon_runs_as_jobs_arrive() {
    let (sa, sb) = (Sandbox::new(), Sandbox::new());
    let outbox = sa.queue("outbox");
    let inq = sb.queue("in");
    let log = sb.path("log");
    let receiver = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[process_job("run", &inq, &recorder(&log, ""), EVENTS_ONLY)],
        ),
        "logfmt",
    );
    let sender = Daemon::start(
        &sa,
        &config(
            &sa,
            "",
            &[push_job("send", &outbox, &dir_url(&inq), EVENTS_ONLY)],
        ),
        "logfmt",
    );
    settled(&sender);
    send(&outbox, 2, "two", &[]);
    wait_soon("seq 2 to wait at the receiver", || {
        receiver.state("run") == "waiting"
    });
    assert!(lines(&log).is_empty());
    send(&outbox, 1, "one", &[]);
    wait_soon("both jobs to run", || lines(&log).len() == 2);
    assert_eq!(lines(&log), ["1 one", "2 two"]);
    send(&outbox, 3, "three", &[]);
    wait_soon("the third to run", || lines(&log).len() == 3);
    assert_eq!(lines(&log)[2], "3 three");
    wait_soon("nextseq 4", || nextseq(&inq) == 4);
    assert_eq!(job_files(&outbox.join("jobs")), 0);
    wait_soon("send idle with 3 sent", || {
        let j = sender.job("send");
        j["state"] == "idle" && j["jobs_succeeded"] == 3
    });
    let j = sender.job("send");
    assert_eq!(j["type"], "push");
    assert_eq!(j["to"], dir_url(&inq).as_str());
    assert_eq!(j["queue"], outbox.to_str().unwrap());
    assert_eq!(j["runs_failed"], 0);
    assert!(j["bytes"].as_u64().unwrap() > 0, "{j}");
    // Its log lines carry the job and its kind.
    let text = sender.stop_ok();
    let pushed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("msg=\"pushed "))
        .collect();
    assert!(!pushed.is_empty(), "{text}");
    for l in pushed {
        assert!(
            l.contains(" job=send ") && l.contains(" kind=push ") && l.contains(" jobs="),
            "{l}"
        );
    }
    receiver.stop();
}

/// The normal set-up on a receiving machine: a pull job takes what lands
/// in a synced folder (here put there by `fspl push`) into a queue, a
/// process job runs that queue. `fspl status` shows each job's kind, state
/// and counters, in its table (with a TYPE column) and as JSON.
#[test]
fn pull_and_process_on_one_queue_run_what_lands_in_a_folder() {
    let sb = Sandbox::new();
    let (outbox, inq) = (sb.queue("outbox"), sb.queue("in"));
    let folder = sb.path("sync");
    std::fs::create_dir(&folder).unwrap();
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[
                pull_job("take", &dir_url(&folder), &inq, EVENTS_ONLY),
                process_job("run", &inq, &recorder(&log, ""), EVENTS_ONLY),
            ],
        ),
        "json",
    );
    settled(&d);
    for (seq, p) in [(1, "a"), (2, "b"), (3, "c")] {
        send(&outbox, seq, p, &[]);
    }
    ok(run(ours([
        OsStr::new("push"),
        OsStr::new("-q"),
        outbox.as_os_str(),
        folder.as_os_str(),
    ])));
    wait_soon("three jobs to run", || lines(&log).len() == 3);
    assert_eq!(lines(&log), ["1 a", "2 b", "3 c"]);
    wait_soon("the folder to be empty", || job_files(&folder) == 0);
    wait_soon("both idle, counted", || {
        let (take, run) = (d.job("take"), d.job("run"));
        take["state"] == "idle"
            && take["jobs_succeeded"] == 3
            && run["state"] == "idle"
            && run["jobs_succeeded"] == 3
    });
    let take = d.job("take");
    assert_eq!(take["type"], "pull");
    assert_eq!(take["from"], dir_url(&folder).as_str());
    assert_eq!(take["queue"], inq.to_str().unwrap());
    assert_eq!(take["description"], "idle");
    assert_eq!(
        (&take["jobs_refused"], &take["runs_failed"]),
        (&Value::from(0), &Value::from(0))
    );
    let t = table(&d);
    assert_eq!(
        t.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "NAME", "TYPE", "NEXT", "QUEUED", "LAST", "SUCCESS", "OK", "FAILED", "REFUSED", "STATE"
        ],
        "{t}"
    );
    let bytes = d.job("take")["bytes"].as_u64().unwrap();
    let take = row(&t, "take");
    assert_eq!(take[1], "pull", "{t}");
    // STATE: idle, then the bytes moved and the last throughput.
    assert_eq!(
        &take[5..11],
        ["3", "0", "0", "idle;", "moved", &bytes.to_string()],
        "{t}"
    );
    assert_eq!(&take[11..12], ["bytes,"], "{t}");
    assert_eq!(take.last().map(String::as_str), Some("B/s"), "{t}");
    let run_row = row(&t, "run");
    assert_eq!(
        (run_row[1].as_str(), run_row[2].as_str()),
        ("process", "4"),
        "{t}"
    );
    let text = d.stop_ok();
    let pulled: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["msg"].as_str().unwrap().starts_with("pulled "))
        .collect();
    assert!(!pulled.is_empty(), "{text}");
    for v in pulled {
        assert_eq!(
            (&v["job"], &v["kind"]),
            (&"take".into(), &"pull".into()),
            "{v}"
        );
        assert_eq!(v["queue"], inq.to_str().unwrap());
    }
}

/// Transient failures (here the destination's disk is full for four
/// runs: ENOSPC, injected) back off and retry without entering the error
/// state, though they outnumber max_failures; the jobs go once the disk
/// has room. A command failing as often would have stopped the job.
#[test]
fn a_transient_push_failure_backs_off_without_the_error_state() {
    require_failpoints();
    let sb = Sandbox::new();
    let outbox = sb.queue("outbox");
    let folder = sb.path("sync");
    std::fs::create_dir(&folder).unwrap();
    send(&outbox, 1, "a", &[]);
    let d = Daemon::start_with(
        &sb,
        &config(
            &sb,
            "",
            &[push_job(
                "send",
                &outbox,
                &dir_url(&folder),
                "poll_min = 1\npoll_max = 1\nmax_failures = 2",
            )],
        ),
        "logfmt",
        |c| {
            c.env("FAILPOINTS", "batch:before-flush=4*return(enospc)");
        },
    );
    let mut worst = 0;
    wait_soon("the job to be sent", || {
        let j = d.job("send");
        assert_ne!(j["state"], "error", "{j}");
        if j["state"] == "retrying" {
            worst = worst.max(j["failures"].as_u64().unwrap());
        }
        job_files(&folder) == 1
    });
    wait_soon("send idle", || d.state("send") == "idle");
    let j = d.job("send");
    assert_eq!(j["runs_failed"], 4, "{j}");
    assert_eq!(
        (&j["jobs_succeeded"], &j["consecutive_failures"]),
        (&1.into(), &0.into())
    );
    assert!(worst >= 3, "seen up to {worst} failures in a row");
    assert_eq!(job_files(&outbox.join("jobs")), 0);
    let text = d.stop_ok();
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("run failed")).collect();
    assert_eq!(failed.len(), 4, "{text}");
    for l in failed {
        assert!(
            l.contains("transient=true") && l.contains("No space left on device"),
            "{l}"
        );
    }
    assert!(!text.contains("level=error"), "{text}");
}

/// A permanent failure (the destination is a file, not a directory)
/// enters the error state at the first failed run, with the reason, in
/// `fspl status` (exit 1) and the log; nothing is retried meanwhile.
#[test]
fn a_permanent_push_failure_enters_the_error_state_at_once() {
    let sb = Sandbox::new();
    let outbox = sb.queue("outbox");
    let dest = sb.path("dest");
    std::fs::write(&dest, "a file").unwrap();
    send(&outbox, 1, "a", &[]);
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[push_job(
                "send",
                &outbox,
                &dir_url(&dest),
                "poll_min = 1\npoll_max = 1",
            )],
        ),
        "logfmt",
    );
    wait_soon("the error state", || d.state("send") == "error");
    let (jobs, code) = d.status();
    assert_eq!(code, 1);
    let j = &jobs[0];
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .ends_with("dest: not a directory"),
        "{j}"
    );
    assert_eq!(
        (&j["consecutive_failures"], &j["runs_failed"]),
        (&1.into(), &1.into())
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(d.job("send")["runs_failed"], 1);
    let r = row(&table(&d), "send");
    assert_eq!((r[1].as_str(), r[8].as_str()), ("push", "error:"));
    d.wait_log("pushing failed, and retrying will not help");
    assert_eq!(job_files(&outbox.join("jobs")), 1);
}

/// `daemon --check`: the one-job-per-queue rule is per kind. A pull and a
/// process job on one queue is fine; two process jobs on one queue, two
/// push jobs on one outbox are refused, at the line of the key.
#[test]
fn daemon_check_applies_the_resource_rule_per_kind() {
    let sb = Sandbox::new();
    let (qd, outbox) = (sb.queue("q"), sb.queue("outbox"));
    let folder = sb.path("sync");
    std::fs::create_dir(&folder).unwrap();
    let check = |jobs: &[String]| {
        let path = sb.path("check.toml");
        std::fs::write(&path, config(&sb, "", jobs)).unwrap();
        run(ours([
            OsStr::new("daemon"),
            OsStr::new("--check"),
            OsStr::new("-c"),
            path.as_os_str(),
        ]))
    };
    let out = check(&[
        pull_job("take", &dir_url(&folder), &qd, ""),
        process_job("run", &qd, &["/bin/true"], ""),
        push_job("send", &outbox, &dir_url(&folder), ""),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("check.toml: OK, 3 jobs\n"));
    let out = check(&[
        process_job("a", &qd, &["/bin/true"], ""),
        process_job("b", &qd, &["/bin/true"], ""),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(": line 17: job \"b\": queue ")
            && e.contains(
                " is already run by job \"a\"; two jobs on one queue would fight over its lock"
            ),
        "{e}"
    );
    let out = check(&[
        push_job("a", &outbox, &dir_url(&folder), ""),
        push_job("b", &outbox, &dir_url(&qd), ""),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(": line 17: job \"b\": outbox ")
            && e.contains(" is already pushed by job \"a\""),
        "{e}"
    );
    // What --check looks at beyond the syntax: a missing outbox and a
    // destination that is not a directory.
    let out = check(&[push_job(
        "a",
        &sb.path("nope"),
        &dir_url(&qd.join("nextseq")),
        "",
    )]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(
        e.contains(": line 10: job \"a\": outbox: ") && e.contains("no such queue"),
        "{e}"
    );
    assert!(
        e.contains(": line 11: job \"a\": to: ") && e.contains("not a directory"),
        "{e}"
    );
}

/// `fspl status` talks to the daemon with plain blocking I/O: no async
/// runtime starts (tokio's would create an epoll instance; the daemon's
/// does, which shows the trace would see it).
#[test]
fn fspl_status_starts_no_async_runtime() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]),
        "logfmt",
    );
    let traced = |args: &[&OsStr], trace: &Path| {
        let st = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=epoll_create,epoll_create1", "-o"])
            .arg(trace)
            .arg(fspl_bin())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("strace (apt-get install -y strace)");
        (st, std::fs::read_to_string(trace).unwrap())
    };
    let (st, trace) = traced(
        &[
            OsStr::new("status"),
            OsStr::new("--socket"),
            d.socket.as_os_str(),
        ],
        &sb.path("status.trace"),
    );
    assert!(st.success());
    assert!(!trace.contains("epoll_create"), "{trace}");
    // The same trace of a daemon shows its runtime.
    let other = Sandbox::new();
    let qo = other.queue("q");
    let text = config(&other, "", &[process_job("q", &qo, &["/bin/true"], "")]);
    let cfg = other.path("daemon.toml");
    std::fs::write(&cfg, text).unwrap();
    let trace = other.path("daemon.trace");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=epoll_create,epoll_create1", "-o"])
        .arg(&trace)
        .arg(fspl_bin())
        .args([OsStr::new("daemon"), OsStr::new("-c"), cfg.as_os_str()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = other.path("d.sock");
    wait_soon("the traced daemon's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let _ = run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ]));
    // SIGTERM to the daemon, the child of strace.
    let daemon_pid = wait_for_child_of(child.id());
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(daemon_pid, libc::SIGTERM) };
    child.wait().unwrap();
    assert!(
        std::fs::read_to_string(&trace)
            .unwrap()
            .contains("epoll_create"),
        "the daemon's trace shows no runtime"
    );
    d.stop();
}

/// The pid of the first child of `parent` (from /proc).
fn wait_for_child_of(parent: u32) -> libc::pid_t {
    let path = format!("/proc/{parent}/task/{parent}/children");
    let mut pid = 0;
    wait_soon("the traced process", || {
        pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(0);
        pid > 0
    });
    pid
}

/// The control protocol: a request of protocol 1 (no version: an fspl
/// from before versions) gets an answer it can read, with the daemon's
/// version 2; a request this daemon does not know, from a newer client,
/// gets a one-line error naming both versions; `fspl status` sends its
/// version.
#[test]
fn the_control_protocol_is_versioned_and_reads_old_requests() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]),
        "logfmt",
    );
    let ask = |line: &str| -> Value {
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let v = ask("{\"cmd\":\"status\"}\n");
    assert_eq!(v["version"], 2);
    assert_eq!(v["result"], "status");
    let job = &v["jobs"][0];
    for key in [
        "name",
        "type",
        "queue",
        "state",
        "next_seq",
        "jobs_succeeded",
    ] {
        assert!(!job[key].is_null() || key == "next_seq", "{key}: {v}");
    }
    assert_eq!(job["type"], "process");
    let v = ask("{\"version\":9,\"cmd\":\"subscribe\"}\n");
    assert_eq!((&v["version"], &v["result"]), (&2.into(), &"error".into()));
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("unknown request \"subscribe\"")
            && m.contains("control protocol version 2")
            && m.contains("the client speaks version 9"),
        "{m}"
    );
    d.stop();
}
