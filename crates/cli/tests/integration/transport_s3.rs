//! `s3://BUCKET/PREFIX` as a destination of `fspl push` and a source of
//! `fspl pull` (issue 14), against a real s3s-fs server started by the
//! tests on 127.0.0.1 (fspl_testkit::s3):
//!
//! - sender outbox -> S3 -> receiver queue -> ordered execution, with jobs
//!   pushed out of order and twice: each runs once, in order; keys sort by
//!   seq and are unique per content;
//! - `pull --keep` leaves the objects and takes each once;
//! - a server that ignores `If-None-Match` is refused with one line;
//! - wrong credentials: one line, exit 2, and no retry storm;
//! - the server stopped mid-push, then restarted: the next push completes
//!   and nothing runs twice;
//! - SIGKILL of push and pull at random instants: nothing lost, nothing
//!   run twice (more rounds with FSPL_RELIABILITY_LONG=1);
//! - daemon push and pull jobs with s3:// URLs move jobs end to end.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fspl_testkit::s3::{Proxy, S3Server};

use crate::helper::*;
use crate::reliability_common::*;

const BUCKET: &str = "jobs";

struct World {
    sb: Sandbox,
    s3: S3Server,
}

impl World {
    fn new() -> World {
        let sb = Sandbox::new();
        let s3 = S3Server::start(&sb.path("s3"));
        s3.create_bucket(BUCKET);
        World { sb, s3 }
    }

    /// Our binary, configured for the server (and nothing else of AWS_*).
    fn fspl<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = clean_fspl(args);
        self.s3.configure(&mut c);
        c
    }

    fn push_cmd(&self, outbox: &Path, url: &str, extra: &[&str]) -> Command {
        let mut c = self.fspl([OsStr::new("push"), OsStr::new("-q"), outbox.as_os_str()]);
        c.arg(url).args(extra);
        c
    }

    fn push(&self, outbox: &Path, url: &str, extra: &[&str]) -> Output {
        run(self.push_cmd(outbox, url, extra))
    }

    fn pull_cmd(&self, url: &str, q: &Path, extra: &[&str]) -> Command {
        let mut c = self.fspl(["pull", url, "-q"]);
        c.arg(q).args(extra);
        c
    }

    fn pull(&self, url: &str, q: &Path, extra: &[&str]) -> Output {
        run(self.pull_cmd(url, q, extra))
    }

    /// The keys under `prefix/` in the bucket (as the server stores them).
    /// Keys under `prefix/`, but for the marker of the conditional-write
    /// check (one per prefix, left there on purpose).
    fn keys(&self, prefix: &str) -> Vec<String> {
        let mut k = self.all_keys(prefix);
        k.retain(|k| k != PROBE_KEY);
        k
    }

    fn all_keys(&self, prefix: &str) -> Vec<String> {
        self.s3
            .keys(BUCKET)
            .into_iter()
            .filter_map(|k| k.strip_prefix(&format!("{prefix}/")).map(str::to_string))
            .collect()
    }
}

/// The marker of the conditional-write check (docs/s3.md).
const PROBE_KEY: &str = ".fspl-conditional-write-check";

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

/// Run queue `q` with a command that appends "SEQ PAYLOAD" to `log`.
fn process(q: &Path, log: &Path) {
    let mut c = clean_fspl([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
    c.args(["sh", "--", "-c", r#"p=$(cat); echo "$FSPL_SEQ $p" >> "$0""#])
        .arg(log);
    ok(run(c));
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
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

fn queue_jobs(q: &Path) -> Vec<String> {
    job_names(&q.join("jobs"))
}

#[test]
fn s3_jobs_pushed_out_of_order_and_twice_run_in_order_once() {
    let w = World::new();
    let url = format!("s3://{BUCKET}/to-server");
    let dest = w.sb.queue("dest");
    let log = w.sb.path("log");
    let jobs: BTreeMap<u64, Vec<u8>> = (1..=6).map(|s| (s, job(s, &format!("p{s}")))).collect();
    let outbox = |name: &str, seqs: &[u64]| {
        let ob = w.sb.queue(name);
        for s in seqs {
            write(&ob, &jobs[s]);
        }
        ob
    };
    // 4 and 2 with --keep, then the same files again, as a push killed
    // after the upload but before the outbox removal would resend them.
    let a = outbox("a", &[4, 2]);
    exit_code(&w.push(&a, &url, &["--keep"]), 0);
    let keys = w.keys("to-server");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].starts_with("fspl-00000000000000000002-")
            && keys[1].starts_with("fspl-00000000000000000004-")
            && keys.iter().all(|k| k.ends_with(".fspl")),
        "keys sort by seq: {keys:?}"
    );
    for name in job_names(&a.join("sent")) {
        std::fs::rename(a.join("sent").join(&name), a.join("jobs").join(&name)).unwrap();
    }
    let out = w.push(&a, &url, &[]);
    exit_code(&out, 0);
    assert!(
        text(&out.stderr).contains("pushed 2 job(s)"),
        "{}",
        text(&out.stderr)
    );
    assert!(queue_jobs(&a).is_empty());
    assert_eq!(w.keys("to-server"), keys, "a resend is the same object");
    // 6 and 3, and 2 again from another outbox (another file name, the
    // same bytes): one object per content.
    let b = outbox("b", &[6, 3, 2]);
    exit_code(&w.push(&b, &url, &[]), 0);
    assert_eq!(w.keys("to-server").len(), 4);
    let out = w.pull(&url, &dest, &[]);
    exit_code(&out, 0);
    assert!(
        text(&out.stderr).contains("pulled 4 job(s)"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.keys("to-server").is_empty(), "taken objects are removed");
    assert_eq!(queue_jobs(&dest).len(), 4);
    process(&dest, &log);
    assert!(log_lines(&log).is_empty(), "job 1 is missing: nothing runs");
    let c = outbox("c", &[5, 1]);
    exit_code(&w.push(&c, &url, &[]), 0);
    exit_code(&w.pull(&url, &dest, &[]), 0);
    process(&dest, &log);
    let want: Vec<String> = (1..=6).map(|s| format!("{s} p{s}")).collect();
    assert_eq!(log_lines(&log), want);
    // Job 3 once more after it ran: delivered, below nextseq, never run
    // again.
    let d = outbox("d", &[3]);
    exit_code(&w.push(&d, &url, &[]), 0);
    exit_code(&w.pull(&url, &dest, &[]), 0);
    process(&dest, &log);
    assert_eq!(log_lines(&log), want);
    // Objects that are not job files under the prefix (and anything in
    // deeper "directories") are left alone.
    std::fs::create_dir_all(w.s3.data.join(BUCKET).join("to-server/deeper")).unwrap();
    std::fs::write(w.s3.data.join(BUCKET).join("to-server/notes.txt"), "x").unwrap();
    let deeper = w.s3.data.join(BUCKET).join("to-server/deeper");
    std::fs::write(deeper.join("fspl-00000000000000000007-x.fspl"), &jobs[&1]).unwrap();
    let out = w.pull(&url, &dest, &[]);
    exit_code(&out, 0);
    assert!(
        text(&out.stderr).contains("pulled 0 job(s)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.keys("to-server").len(), 2);
}

#[test]
fn s3_pull_keep_leaves_objects_and_takes_each_once() {
    let w = World::new();
    let url = format!("s3://{BUCKET}/k");
    let ob = w.sb.queue("outbox");
    for s in [2, 1, 3] {
        write(&ob, &job(s, &format!("p{s}")));
    }
    exit_code(&w.push(&ob, &url, &[]), 0);
    let dest = w.sb.queue("dest");
    let out = w.pull(&url, &dest, &["--keep", "--json"]);
    exit_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["taken"], 3);
    assert_eq!(w.keys("k").len(), 3, "--keep leaves the objects");
    let state = std::fs::read_to_string(dest.join("s3-pull-taken")).unwrap();
    assert_eq!(state.lines().count(), 3, "{state}");
    let log = w.sb.path("log");
    process(&dest, &log);
    assert_eq!(log_lines(&log), ["1 p1", "2 p2", "3 p3"]);
    let out = w.pull(&url, &dest, &["--keep", "--json"]);
    exit_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["taken"], 0, "what was taken is not taken again");
    // A new job is taken, the old ones still not.
    write(&ob, &job(4, "p4"));
    exit_code(&w.push(&ob, &url, &[]), 0);
    let out = w.pull(&url, &dest, &["--keep", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["taken"], 1);
    process(&dest, &log);
    assert_eq!(log_lines(&log), ["1 p1", "2 p2", "3 p3", "4 p4"]);
    // --keep from a directory source is refused, with one line.
    let line = one_line_error(w.pull(&ob.display().to_string(), &dest, &["--keep"]));
    assert!(line.contains("--keep is not supported"), "{line}");
}

#[test]
fn s3_push_to_a_server_that_ignores_conditional_writes_is_refused_with_one_line() {
    let w = World::new();
    let proxy = Proxy::start(w.s3.port, true);
    let ob = w.sb.queue("outbox");
    write(&ob, &job(1, "p1"));
    let mut c = w.push_cmd(&ob, &format!("s3://{BUCKET}/p"), &[]);
    c.env("AWS_ENDPOINT_URL", proxy.endpoint());
    let out = run(c);
    exit_code(&out, 2);
    let line = one_line_error(out);
    assert!(
        line.contains("does not honour conditional writes (If-None-Match: *)"),
        "{line}"
    );
    assert_eq!(queue_jobs(&ob).len(), 1, "the job stays in the outbox");
    assert!(
        w.keys("p").is_empty(),
        "nothing was sent (the marker of the check aside)"
    );
    // Through the same proxy without the rewriting, the push works.
    let honest = Proxy::start(w.s3.port, false);
    let mut c = w.push_cmd(&ob, &format!("s3://{BUCKET}/p"), &[]);
    c.env("AWS_ENDPOINT_URL", honest.endpoint());
    exit_code(&run(c), 0);
    assert_eq!(w.keys("p").len(), 1);
}

#[test]
fn s3_wrong_credentials_are_one_line_and_not_retried() {
    let w = World::new();
    let proxy = Proxy::start(w.s3.port, false);
    let ob = w.sb.queue("outbox");
    write(&ob, &job(1, "p1"));
    let dest = w.sb.queue("dest");
    let url = format!("s3://{BUCKET}/p");
    for (what, secret, key) in [
        (
            "a wrong secret",
            "not-the-secret".to_string(),
            w.s3.access_key.clone(),
        ),
        (
            "an unknown key",
            w.s3.secret_key.clone(),
            "AKNOBODY".to_string(),
        ),
    ] {
        let before = proxy.responses();
        let mut c = w.push_cmd(&ob, &url, &[]);
        c.env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_ACCESS_KEY_ID", &key);
        let out = run(c);
        exit_code(&out, 2);
        let line = one_line_error(out);
        assert!(line.contains("refused the credentials"), "{what}: {line}");
        assert!(
            line.contains("AWS_ACCESS_KEY_ID"),
            "{what}: says where they came from: {line}"
        );
        assert!(
            !line.contains(&secret) || secret == w.s3.secret_key,
            "never the secret: {line}"
        );
        let n = proxy.responses() - before;
        assert!(n <= 2, "{what}: {n} requests: a refusal is not retried");
        let mut c = w.pull_cmd(&url, &dest, &[]);
        c.env("AWS_ENDPOINT_URL", proxy.endpoint())
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AWS_ACCESS_KEY_ID", &key);
        let out = run(c);
        exit_code(&out, 2);
        let line = one_line_error(out);
        assert!(line.contains("refused the credentials"), "{what}: {line}");
    }
    assert_eq!(queue_jobs(&ob).len(), 1);
    // A bucket that does not exist: one line too, permanent (exit 2).
    // (s3s-fs creates a bucket on PUT, so the pull shows it.)
    let out = w.pull("s3://no-such-bucket/p", &dest, &[]);
    exit_code(&out, 2);
    let line = one_line_error(out);
    assert!(
        line.contains("s3://no-such-bucket: no such bucket"),
        "{line}"
    );
    // No credentials at all (and no instance metadata to ask).
    let mut c = w.push_cmd(&ob, &url, &[]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let line = one_line_error(run(c));
    assert!(line.contains("no AWS credentials found"), "{line}");
}

#[test]
fn s3_server_stopped_mid_push_then_restarted_loses_and_repeats_nothing() {
    let mut w = World::new();
    let url = format!("s3://{BUCKET}/p");
    let ob = w.sb.queue("outbox");
    let n = 1500u64;
    let payloads = sized_payloads(n, 2_000);
    for s in 1..=n {
        write_raw(&ob, s, &payloads[&s]);
    }
    let mut c = w.push_cmd(&ob, &url, &[]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    fspl_testkit::wait_for("the push to upload a job", fspl_testkit::SOON, || {
        w.keys("p").iter().any(|k| k.starts_with("fspl-"))
    });
    w.s3.stop();
    let out = child.wait_with_output().unwrap();
    let left = queue_jobs(&ob).len() as u64;
    eprintln!(
        "server stopped: the push ended {}, {left} of {n} jobs left",
        out.status
    );
    if out.status.success() {
        // The push won the race: nothing to check mid-way.
        assert_eq!(left, 0);
    } else {
        exit_code(&out, 1);
        let err = text(&out.stderr);
        assert!(err.contains("push stopped"), "{err}");
        assert!(left > 0, "{err}");
    }
    w.s3.restart();
    exit_code(&w.push(&ob, &url, &[]), 0);
    assert!(queue_jobs(&ob).is_empty());
    assert_eq!(w.keys("p").len() as u64, n, "one object per job");
    let dest = w.sb.queue("dest");
    exit_code(&w.pull(&url, &dest, &[]), 0);
    let dir = w.sb.path("payloads");
    run_checking(&dest, &dir, &payloads);
    let log = dir.join("log");
    let want: Vec<String> = (1..=n).map(|s| format!("{s} ok")).collect();
    assert_eq!(log_lines(&log), want);
}

/// Payloads for seqs 1..=n, of about `size` bytes each, all different.
fn sized_payloads(n: u64, size: usize) -> BTreeMap<u64, Vec<u8>> {
    (1..=n)
        .map(|s| {
            let mut p = format!("job {s} ").into_bytes();
            p.resize(size + (s as usize % 97), b'a' + (s % 26) as u8);
            (s, p)
        })
        .collect()
}

/// A job written through the library (no process per job).
fn write_raw(q: &Path, seq: u64, payload: &[u8]) {
    fspl_testkit::write_job(q, seq, payload);
}

/// Process `q` with a command that checks each payload against
/// `dir/p<SEQ>` and logs "SEQ ok|bad" to `dir/log`.
fn run_checking(q: &Path, dir: &Path, payloads: &BTreeMap<u64, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (s, p) in payloads {
        let f = dir.join(format!("p{s}"));
        if !f.exists() {
            std::fs::write(f, p).unwrap();
        }
    }
    let mut c = clean_fspl([OsStr::new("queue-process"), OsStr::new("-q"), q.as_os_str()]);
    c.args(["sh", "--", "-c", SCRIPT]).arg(dir);
    ok(run(c));
}

/// SIGKILL of push and pull at random instants, with the receiving queue
/// processed now and then: no job is lost (each is in the outbox, the
/// bucket, the queue or has run), and at the end every job ran once, in
/// order, with the bytes it was sent with. Long mode (scripts/reliability)
/// runs more rounds.
#[test]
fn reliability_s3_push_and_pull_killed_at_random_instants() {
    let mut tally = Tally::new("s3-transport-kill");
    let w = World::new();
    let url = format!("s3://{BUCKET}/r");
    let ob = w.sb.queue("outbox");
    let dest = w.sb.queue("dest");
    let dir = w.sb.path("payloads");
    let log = dir.join("log");
    let rounds = if long_mode() { 150 } else { 16 };
    let mut rng = Rng(0x53_0014);
    let mut next = 1u64;
    let mut payloads = BTreeMap::new();
    let mut kills = 0;
    for round in 0..rounds {
        let batch = 1 + rng.below(60);
        let size = 300 + rng.below(3000) as usize;
        let new = sized_payloads(next + batch - 1, size);
        for s in next..next + batch {
            write_raw(&ob, s, &new[&s]);
            payloads.insert(s, new[&s].clone());
        }
        next += batch;
        let push = rng.below(2) == 0;
        let mut c = if push {
            w.push_cmd(&ob, &url, &[])
        } else {
            w.pull_cmd(&url, &dest, &[])
        };
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        let _ = child.kill();
        let st = child.wait().unwrap();
        tally.runs += 1;
        let label = if push { "push" } else { "pull" };
        if st.code().is_none() {
            kills += 1;
            tally.faults += 1;
        } else if st.code() != Some(0) {
            tally.failures.push(format!(
                "round {round}: {label} ended {st} without being killed"
            ));
        }
        if rng.below(3) == 0 {
            run_checking(&dest, &dir, &payloads);
        }
        // Nothing lost: every seq is somewhere.
        let ran: Vec<u64> = log_lines(&log)
            .iter()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        let in_outbox = seqs_in(&ob.join("jobs"));
        let in_queue = seqs_in(&dest.join("jobs"));
        let in_bucket: Vec<u64> = w
            .keys("r")
            .iter()
            .filter_map(|k| k.get(5..25).and_then(|d| d.parse().ok()))
            .collect();
        let mut p = Vec::new();
        for s in payloads.keys() {
            if !(ran.contains(s)
                || in_outbox.contains(s)
                || in_queue.contains(s)
                || in_bucket.contains(s))
            {
                p.push(format!("job {s} is nowhere"));
            }
        }
        tally.states += 1;
        tally.problems(&format!("round {round} ({label})"), p);
    }
    // Recover: a push and a pull that are not killed.
    exit_code(&w.push(&ob, &url, &[]), 0);
    exit_code(&w.pull(&url, &dest, &[]), 0);
    run_checking(&dest, &dir, &payloads);
    let want: Vec<String> = payloads.keys().map(|s| format!("{s} ok")).collect();
    if log_lines(&log) != want {
        tally.failures.push(format!(
            "after recovery, the run log is not every job once, in order: {:?}",
            log_lines(&log)
        ));
    }
    // Regression s3_probe_objects_littered_the_bucket_when_a_push_was_
    // killed: the long mode found five probe objects of killed pushes.
    if w.all_keys("r") != [PROBE_KEY] {
        tally
            .failures
            .push(format!("left in the bucket: {:?}", w.all_keys("r")));
    }
    eprintln!("s3 kill test: {kills} kills in {rounds} rounds");
    tally.finish();
}

fn seqs_in(dir: &Path) -> Vec<u64> {
    job_names(dir)
        .iter()
        .filter_map(|n| {
            let b = std::fs::read(dir.join(n)).ok()?;
            fspl_format::decode(&b).ok().map(|j| j.header.seq)
        })
        .collect()
}

#[test]
fn s3_daemon_push_and_pull_jobs_move_jobs_end_to_end() {
    let w = World::new();
    let url = format!("s3://{BUCKET}/d");
    let ob = w.sb.queue("outbox");
    let dest = w.sb.queue("dest");
    let log = w.sb.path("log");
    let config = w.sb.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {sock}\n\n\
             [[job]]\nname = \"out\"\ntype = \"push\"\noutbox = {ob}\nto = {url:?}\npoll_min = 1\npoll_max = 2\n\n\
             [[job]]\nname = \"in\"\ntype = \"pull\"\nfrom = {url:?}\nqueue = {dest}\npoll_min = 1\npoll_max = 2\n\n\
             [[job]]\nname = \"run\"\ntype = \"process\"\nqueue = {dest}\ncommand = [\"sh\", \"-c\", \"cat >> {log}; echo >> {log}\"]\n",
            sock = fspl_testkit::q(w.sb.path("d.sock")),
            ob = fspl_testkit::q(&ob),
            dest = fspl_testkit::q(&dest),
            log = log.display(),
        ),
    )
    .unwrap();
    let mut c = w.fspl([OsStr::new("daemon"), OsStr::new("-c"), config.as_os_str()]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(w.sb.path("daemon.log")).unwrap());
    let mut daemon = KillOnDrop(c.spawn().unwrap());
    for s in [2, 1, 3] {
        write(&ob, &job(s, &format!("p{s}")));
    }
    fspl_testkit::wait_for("the jobs to run", fspl_testkit::SOON, || {
        log_lines(&log).len() >= 3
    });
    assert_eq!(log_lines(&log), ["p1", "p2", "p3"]);
    assert!(queue_jobs(&ob).is_empty());
    fspl_testkit::wait_for("the bucket to be emptied", fspl_testkit::SOON, || {
        w.keys("d").is_empty()
    });
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let dlog = std::fs::read_to_string(w.sb.path("daemon.log")).unwrap();
    assert!(!dlog.contains("ERROR"), "{dlog}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
