//! The daemon run in-process (`fspl_daemon::run` with a shutdown future on
//! a tokio runtime): ordering across queues, event-driven and polled
//! pick-up, parallelism, error state and clearing, lock exclusion,
//! graceful and forced shutdown. Timings are only ever deadlines.

mod helper;

use std::time::{Duration, Instant};

use fspl_daemon::state::JobState;
use fspl_queue::Queue;
use helper::*;

/// Several queues at once, jobs arriving out of order: nothing runs while
/// seq 1 is missing ("waiting"), then every queue runs 1, 2, 3 in order.
/// Events only (rescan and poll an hour away), so every pick-up here is
/// event-driven.
#[test]
fn queues_run_in_order_when_jobs_arrive_out_of_order() {
    let sb = Sandbox::new();
    let names = ["a", "b", "c"];
    let mut jobs = Vec::new();
    for n in names {
        let q = sb.queue(n);
        let log = sb.path(format!("{n}.log"));
        jobs.push(process_job(
            n,
            &q,
            &recorder(&log, ""),
            "poll_min = 3600\npoll_max = 3600",
        ));
    }
    let d = Daemon::start(&sb, &sb.config("max_parallel = 2", &jobs));
    d.settled();
    for n in names {
        write_job(&sb.path(n), 3, &format!("{n}3"));
        write_job(&sb.path(n), 2, &format!("{n}2"));
    }
    for n in names {
        wait_for(&format!("{n} waiting for seq 1"), SOON, || {
            matches!(d.state(n), JobState::Waiting { seq: 1, .. })
        });
        assert!(lines(&sb.path(format!("{n}.log"))).is_empty());
        assert_eq!(nextseq(&sb.path(n)), 1);
    }
    for n in names {
        write_job(&sb.path(n), 1, &format!("{n}1"));
    }
    for n in names {
        let log = sb.path(format!("{n}.log"));
        wait_for(&format!("{n} to run 3 jobs"), SOON, || {
            lines(&log).len() == 3
        });
        assert_eq!(
            lines(&log),
            [format!("1 {n}1"), format!("2 {n}2"), format!("3 {n}3")]
        );
        wait_for(&format!("{n} idle"), SOON, || d.state(n) == JobState::Idle);
        let s = d.job(n);
        assert_eq!(s.next_seq, Some(4));
        assert_eq!(s.jobs_succeeded, 3);
        assert_eq!(s.queued, Some(0));
        assert!(s.last_success.is_some());
        assert_eq!(nextseq(&sb.path(n)), 4);
        assert_eq!(job_files(&sb.path(n)), 0);
    }
    let (r, _) = d.stop();
    r.unwrap();
}

/// A job stored while the daemon is idle starts on the filesystem event,
/// long before the (hour-long) poll and rescan intervals.
#[test]
fn a_new_job_is_picked_up_by_filesystem_event() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[process_job(
                "q",
                &q,
                &recorder(&log, ""),
                "poll_min = 3600\npoll_max = 3600",
            )],
        ),
    );
    d.settled();
    let t0 = Instant::now();
    write_job(&q, 1, "x");
    wait_for("the job to run", SOON, || lines(&log).len() == 1);
    eprintln!("event to command: {:?}", t0.elapsed());
    assert_eq!(lines(&log), ["1 x"]);
    wait_for("nextseq 2", SOON, || nextseq(&q) == 2);
}

/// `poll = true`: no filesystem events; the queue is looked at every
/// poll_min seconds while idle (grown ×1.3 up to poll_max).
#[test]
fn polling_picks_up_jobs_without_events() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[process_job(
                "q",
                &q,
                &recorder(&log, ""),
                "poll = true\npoll_min = 1\npoll_max = 1",
            )],
        ),
    );
    d.settled();
    write_job(&q, 1, "x");
    write_job(&q, 2, "y");
    wait_for("both jobs to run", SOON, || lines(&log).len() == 2);
    assert_eq!(lines(&log), ["1 x", "2 y"]);
    wait_for("nextseq 3", SOON, || nextseq(&q) == 3);
}

/// max_parallel bounds how many queues run at once, and different queues
/// do run at the same time.
#[test]
fn max_parallel_bounds_concurrent_queues() {
    let sb = Sandbox::new();
    let shared = sb.path("shared.log");
    let cmd = [
        "/bin/sh",
        "-c",
        "echo start >> \"$1\"; sleep 2; echo end >> \"$1\"",
        "sh",
        shared.to_str().unwrap(),
    ];
    let mut jobs = Vec::new();
    for n in ["a", "b", "c"] {
        let q = sb.queue(n);
        write_job(&q, 1, "");
        jobs.push(process_job(n, &q, &cmd, ""));
    }
    let d = Daemon::start(&sb, &sb.config("max_parallel = 2", &jobs));
    wait_for("three jobs to run", SOON, || lines(&shared).len() == 6);
    let (mut now, mut max) = (0, 0);
    for l in lines(&shared) {
        now += if l == "start" { 1 } else { -1 };
        max = max.max(now);
    }
    assert_eq!(max, 2, "{:?}", lines(&shared));
    drop(d);
}

/// After max_failures failed runs in a row the job enters its error state
/// and stays there (no more attempts) until cleared; then it resumes.
#[test]
fn error_state_after_max_failures_until_cleared() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let ok = sb.path("ok");
    let cmd = fails_until(&ok);
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[process_job("q", &q, &cmd, "poll_min = 1\npoll_max = 1")],
        ),
    );
    d.settled();
    write_job(&q, 1, "");
    wait_for("a retry", SOON, || {
        matches!(d.state("q"), JobState::Retrying { failures: 1, .. })
    });
    let (s, message) = d.error("q");
    assert_eq!(s.consecutive_failures, 3);
    assert_eq!(s.jobs_failed, 3);
    assert!(message.contains("job 1"), "{message}");
    // It stays there: no more attempts.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(matches!(d.state("q"), JobState::Error { .. }));
    assert_eq!(d.job("q").jobs_failed, 3);
    assert_eq!(nextseq(&q), 1);
    std::fs::write(&ok, "").unwrap();
    d.clear("q");
    wait_for("the job to succeed", SOON, || nextseq(&q) == 2);
    wait_for("idle", SOON, || d.state("q") == JobState::Idle);
    let s = d.job("q");
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.jobs_succeeded, 1);
    assert_eq!(job_files(&q), 0);
}

/// Regression: `--clear` of a job that was not in its error state stored a
/// wake-up that later ended the next error state at once.
#[test]
fn clear_of_a_healthy_job_does_not_end_its_next_error_state() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[process_job(
                "q",
                &q,
                &["/bin/false"],
                "poll_min = 1\nmax_failures = 1",
            )],
        ),
    );
    d.settled();
    d.clear("q");
    write_job(&q, 1, "");
    d.error("q");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(matches!(d.state("q"), JobState::Error { .. }));
    assert_eq!(d.job("q").jobs_failed, 1);
}

/// Another holder of the queue lock (a manual queue-process): the daemon
/// shows "locked" and runs nothing until the lock is released.
#[test]
fn a_queue_locked_elsewhere_is_left_alone_until_released() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let lock = Queue::new(&q).lock().unwrap();
    write_job(&q, 1, "x");
    let d = Daemon::start(
        &sb,
        &sb.config("", &[process_job("q", &q, &recorder(&log, ""), "")]),
    );
    wait_for("the locked state", SOON, || {
        matches!(d.state("q"), JobState::Locked { .. })
    });
    // Still locked after a few retries, and nothing ran.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(matches!(d.state("q"), JobState::Locked { .. }));
    assert!(lines(&log).is_empty());
    drop(lock);
    wait_for("the job to run", SOON, || lines(&log).len() == 1);
    wait_for("nextseq 2", SOON, || nextseq(&q) == 2);
    wait_for("idle", SOON, || d.state("q") == JobState::Idle);
}

/// Shutdown while a command runs longer than the grace period: it is
/// killed, the job stays (nextseq unchanged) and runs again on the next
/// start.
#[test]
fn shutdown_kills_a_long_job_which_runs_again_next_start() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let fast = sb.path("fast");
    let then = format!("test -e {} || exec sleep 60", fast.display());
    let text = sb.config("", &[process_job("q", &q, &recorder(&log, &then), "")]);
    let d = Daemon::start(&sb, &text);
    write_job(&q, 1, "x");
    wait_for("the job to start", SOON, || {
        matches!(d.state("q"), JobState::Running { seq: 1, .. }) && lines(&log).len() == 1
    });
    let (r, took) = d.stop();
    r.unwrap();
    assert!(took < SOON, "shutdown took {took:?}");
    eprintln!("shutdown with a command past its grace (1 s): {took:?}");
    assert_eq!(nextseq(&q), 1);
    assert_eq!(job_files(&q), 1);
    assert!(!sb.socket().exists(), "control socket left behind");

    std::fs::write(&fast, "").unwrap();
    let d = Daemon::start(&sb, &text);
    wait_for("the job to run again", SOON, || nextseq(&q) == 2);
    assert_eq!(lines(&log), ["1 x", "1 x"]);
    // nextseq advances before the file is deleted.
    wait_for("the job file to go", SOON, || job_files(&q) == 0);
    drop(d);
}

/// Shutdown while a command runs within the grace period: it is let
/// finish, and counts.
#[test]
fn shutdown_lets_a_running_command_finish_within_grace() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let text = sb
        .config("", &[process_job("q", &q, &recorder(&log, "sleep 1"), "")])
        .replace("shutdown_grace = 1", "shutdown_grace = 60");
    let d = Daemon::start(&sb, &text);
    write_job(&q, 1, "x");
    write_job(&q, 2, "y");
    wait_for("the job to start", SOON, || lines(&log).len() == 1);
    let (r, _) = d.stop();
    r.unwrap();
    // Job 1 finished and was recorded; job 2 was not started.
    assert_eq!(nextseq(&q), 2);
    assert_eq!(lines(&log), ["1 x"]);
    assert_eq!(job_files(&q), 1);
}

/// `enabled = false`: shown as disabled, never run.
#[test]
fn a_disabled_job_is_shown_and_not_run() {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("a"), sb.queue("b"));
    let (la, lb) = (sb.path("a.log"), sb.path("b.log"));
    write_job(&qa, 1, "x");
    write_job(&qb, 1, "x");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[
                process_job("a", &qa, &recorder(&la, ""), ""),
                process_job("b", &qb, &recorder(&lb, ""), "enabled = false"),
            ],
        ),
    );
    wait_for("a to run", SOON, || nextseq(&qa) == 2);
    assert_eq!(d.state("b"), JobState::Disabled);
    assert!(lines(&lb).is_empty());
    assert_eq!(nextseq(&qb), 1);
}

/// A queue that cannot be processed (missing) is an error state at once,
/// with the reason; the other jobs run.
#[test]
fn a_missing_queue_is_an_error_and_others_run() {
    let sb = Sandbox::new();
    let qa = sb.queue("a");
    let la = sb.path("a.log");
    write_job(&qa, 1, "x");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[
                process_job("a", &qa, &recorder(&la, ""), ""),
                process_job("gone", &sb.path("gone"), &["/bin/true"], ""),
            ],
        ),
    );
    let (_, message) = d.error("gone");
    assert!(message.contains("gone"), "{message}");
    wait_for("a to run", SOON, || nextseq(&qa) == 2);
    // Fixed, then cleared: it runs.
    let qg = sb.queue("gone");
    write_job(&qg, 1, "");
    d.clear("gone");
    wait_for("gone to run", SOON, || nextseq(&qg) == 2);
}

/// The control socket is mode 0600.
#[test]
fn control_socket_is_private() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let _d = Daemon::start(
        &sb,
        &sb.config("", &[process_job("q", &q, &["/bin/true"], "")]),
    );
    let m = std::fs::symlink_metadata(sb.socket()).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

/// `--clear` while a job backs off between failed attempts retries it at
/// once instead of at the end of the backoff.
#[test]
fn clear_during_backoff_retries_at_once() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let ok = sb.path("ok");
    let cmd = fails_until(&ok);
    let d = Daemon::start(
        &sb,
        &sb.config("", &[process_job("q", &q, &cmd, "poll_min = 3600")]),
    );
    d.settled();
    write_job(&q, 1, "");
    wait_for("a retry an hour away", SOON, || {
        matches!(d.state("q"), JobState::Retrying { failures: 1, .. })
    });
    std::fs::write(&ok, "").unwrap();
    d.clear("q");
    wait_for("the job to succeed", SOON, || nextseq(&q) == 2);
    wait_for("idle", SOON, || d.state("q") == JobState::Idle);
    assert_eq!(d.job("q").consecutive_failures, 0);
}

/// Regression: a `socket` path naming a file that is not a socket (a typo,
/// or a file of something else) was deleted at start. Now the daemon
/// refuses to start and leaves it alone; a stale socket is still replaced.
#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    std::fs::write(sb.socket(), "precious").unwrap();
    let path = sb.path("daemon.toml");
    std::fs::write(
        &path,
        sb.config("", &[process_job("q", &q, &["/bin/true"], "")]),
    )
    .unwrap();
    let d = Daemon::spawn(fspl_daemon::Config::load(&path).unwrap());
    let (r, _) = d.stop();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(sb.socket()).unwrap(), "precious");

    // A stale socket (its daemon gone) is replaced.
    std::fs::remove_file(sb.socket()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(sb.socket()).unwrap());
    let d = Daemon::start(&sb, &std::fs::read_to_string(&path).unwrap());
    d.settled();
}

/// The example configurations in docs/examples parse, with the values
/// their comments describe.
#[test]
fn example_configs_parse() {
    use fspl_daemon::config::JobKind;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let c = fspl_daemon::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.jobs.is_empty(), "{}", p.display());
            n += 1;
        }
    }
    assert!(n > 0);
    let c = fspl_daemon::Config::load(&dir.join("daemon.toml")).unwrap();
    assert_eq!(c.daemon.max_parallel, 4);
    assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(30));
    let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["backups", "deploy", "to-office", "from-laptop"]);
    let JobKind::Process(deploy) = &c.jobs[1].kind else {
        panic!("{:?}", c.jobs[1].kind)
    };
    assert!(deploy.trust.is_some() && deploy.identity.len() == 1 && c.jobs[1].supervision.poll);
    let JobKind::Push(push) = &c.jobs[2].kind else {
        panic!("{:?}", c.jobs[2].kind)
    };
    assert_eq!(push.to_url, "dir:/srv/fspl/sync/office");
    assert!(!push.keep);
    let JobKind::Pull(pull) = &c.jobs[3].kind else {
        panic!("{:?}", c.jobs[3].kind)
    };
    assert_eq!(pull.queue, std::path::Path::new("/srv/fspl/backups"));
}
