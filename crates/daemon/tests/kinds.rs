//! The `push` and `pull` kinds, in-process beside `process` jobs: an
//! outbox pushed as jobs land in it, to a queue a process job runs in
//! order; a folder pulled into a queue a process job runs; a permanent
//! failure (a destination that is not a directory, a refused job) is the
//! error state at once, with the reason. Timings are only ever deadlines.

mod helper;

use std::path::Path;

use fspl_daemon::state::JobState;
use helper::*;

/// A job file dropped into a plain folder the way a push to a folder
/// does: a temporary, renamed into place.
fn drop_job(folder: &Path, seq: u64, payload: &str) {
    let tmp = folder.join(format!(".fspl-tmp-{seq}"));
    std::fs::write(&tmp, job(seq, payload.as_bytes())).unwrap();
    std::fs::rename(&tmp, folder.join(format!("fspl-{seq:032}.fspl"))).unwrap();
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            fspl_queue::classify(&e.as_ref().unwrap().file_name()) == fspl_queue::EntryKind::Job
        })
        .count()
}

/// A push job watching an outbox sends each job as it lands there (events
/// only: the rescan and the polling an hour away) to a queue, where a
/// process job runs them in order, whatever the order they were written
/// in.
#[test]
fn a_push_job_delivers_an_outbox_to_a_queue_run_in_order() {
    let sb = Sandbox::new();
    let (outbox, dest) = (sb.queue("outbox"), sb.queue("dest"));
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[
                push_job(
                    "send",
                    &outbox,
                    &dir_url(&dest),
                    "poll_min = 3600\npoll_max = 3600",
                ),
                process_job(
                    "run",
                    &dest,
                    &recorder(&log, ""),
                    "poll_min = 3600\npoll_max = 3600",
                ),
            ],
        ),
    );
    d.settled();
    write_job(&outbox, 3, "c");
    wait_for("seq 3 at the destination, waiting for 1", SOON, || {
        matches!(d.state("run"), JobState::Waiting { seq: 1, .. })
    });
    assert!(lines(&log).is_empty());
    write_job(&outbox, 1, "a");
    write_job(&outbox, 2, "b");
    wait_for("three jobs to run", SOON, || lines(&log).len() == 3);
    assert_eq!(lines(&log), ["1 a", "2 b", "3 c"]);
    wait_for("the outbox to be empty", SOON, || {
        files(&outbox.join("jobs")) == 0
    });
    wait_for("send idle", SOON, || d.state("send") == JobState::Idle);
    let s = d.job("send");
    assert_eq!(s.kind, "push");
    assert_eq!(s.to.as_deref(), Some(dir_url(&dest).as_str()));
    assert_eq!(s.jobs_succeeded, 3);
    assert_eq!((s.jobs_refused, s.runs_failed), (0, 0));
    assert!(s.bytes.unwrap() > 0);
    assert!(s.last_success.is_some());
    wait_for("nextseq 4", SOON, || nextseq(&dest) == 4);
}

/// A pull job takes what lands in a folder into a queue, where a process
/// job on the same queue runs it: the normal set-up.
#[test]
fn a_pull_job_fills_a_queue_a_process_job_runs() {
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let inbox = sb.path("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[
                pull_job(
                    "take",
                    &dir_url(&inbox),
                    &q,
                    "poll_min = 3600\npoll_max = 3600",
                ),
                process_job(
                    "run",
                    &q,
                    &recorder(&log, ""),
                    "poll_min = 3600\npoll_max = 3600",
                ),
            ],
        ),
    );
    d.settled();
    drop_job(&inbox, 2, "b");
    drop_job(&inbox, 1, "a");
    wait_for("both jobs to run", SOON, || lines(&log).len() == 2);
    assert_eq!(lines(&log), ["1 a", "2 b"]);
    wait_for("the folder to be empty", SOON, || files(&inbox) == 0);
    wait_for("take to count two", SOON, || {
        d.job("take").jobs_succeeded == 2
    });
    let s = d.job("take");
    assert_eq!(s.kind, "pull");
    assert_eq!(s.from.as_deref(), Some(dir_url(&inbox).as_str()));
    assert_eq!(s.queue, q.display().to_string());
    assert_eq!(s.runs_failed, 0);
}

/// A destination that is not a directory will not become one by retrying:
/// the error state at the first failed run (max_failures is 3), with the
/// reason; fixed and cleared, the job pushes.
#[test]
fn a_push_to_a_file_is_the_error_state_at_once() {
    let sb = Sandbox::new();
    let outbox = sb.queue("outbox");
    let dest = sb.path("dest");
    std::fs::write(&dest, "not a directory").unwrap();
    write_job(&outbox, 1, "a");
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[push_job(
                "send",
                &outbox,
                &dir_url(&dest),
                "poll_min = 1\npoll_max = 1",
            )],
        ),
    );
    let (s, message) = d.error("send");
    assert!(message.contains("not a directory"), "{message}");
    assert_eq!((s.consecutive_failures, s.runs_failed), (1, 1));
    // It stays there.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(d.job("send").runs_failed, 1);
    assert_eq!(files(&outbox.join("jobs")), 1);
    std::fs::remove_file(&dest).unwrap();
    std::fs::create_dir(&dest).unwrap();
    d.clear("send");
    wait_for("the job to be sent", SOON, || files(&dest) == 1);
    wait_for("send idle", SOON, || d.state("send") == JobState::Idle);
    assert_eq!(files(&outbox.join("jobs")), 0);
    assert_eq!(d.job("send").consecutive_failures, 0);
}

/// A job the destination refuses (a different file under its name is
/// there) would be refused again: the error state at once, naming the job
/// and why; it stays in the outbox, counted as refused.
#[test]
fn a_refused_job_is_the_error_state_at_once_with_the_reason() {
    let sb = Sandbox::new();
    let outbox = sb.queue("outbox");
    let folder = sb.path("folder");
    std::fs::create_dir(&folder).unwrap();
    write_job(&outbox, 1, "a");
    let name = std::fs::read_dir(outbox.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .find(|n| fspl_queue::classify(n) == fspl_queue::EntryKind::Job)
        .unwrap();
    std::fs::write(folder.join(&name), "something else").unwrap();
    let d = Daemon::start(
        &sb,
        &sb.config(
            "",
            &[push_job(
                "send",
                &outbox,
                &dir_url(&folder),
                "poll_min = 1\npoll_max = 1",
            )],
        ),
    );
    let (s, message) = d.error("send");
    assert!(
        message.starts_with("job 1 ")
            && message.contains("refused")
            && message.contains("different file"),
        "{message}"
    );
    assert_eq!((s.jobs_refused, s.jobs_succeeded, s.runs_failed), (1, 0, 1));
    assert_eq!(files(&outbox.join("jobs")), 1);
    assert_eq!(
        std::fs::read(folder.join(&name)).unwrap(),
        b"something else"
    );
}
