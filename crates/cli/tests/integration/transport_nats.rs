//! `nats://HOST:PORT/NAME` as a transport (issue 15, part 3), with a real
//! nats-server (JetStream on, its own store) started by each test on
//! 127.0.0.1 (`fspl_testkit::nats`):
//!
//! - jobs pushed out of order, and pushed twice, are pulled under their
//!   names with their bytes, and run in order, once; a job delivered
//!   again after it ran is not run again;
//! - server restarts (SIGTERM and SIGKILL) and SIGKILLs of push and pull
//!   at random instants lose no job and run none twice (1,000 jobs, 2
//!   restarts, 5 kills here; FSPL_RELIABILITY_LONG=1: 10,000 jobs, 5
//!   restarts, 20 kills);
//! - credentials: a `.creds` file made with nkeys works (from the URL or
//!   $FSPL_NATS_CREDS); one the server does not know is a one-line,
//!   permanent error (exit 2); a server that is not there is transient
//!   (exit 1);
//! - a job above the server's max_payload is refused with one line and
//!   stays in the outbox; the others are sent;
//! - the daemon's push and pull jobs take nats:// URLs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fspl_testkit::nats::{JwtAuth, NatsServer, Options, write_private};

use crate::helper::*;
use crate::reliability_common::{Rng, Tally, clean_fspl, long_mode, text};

fn push_cmd(outbox: &Path, url: &str) -> Command {
    let mut c = clean_fspl([OsStr::new("push"), OsStr::new("-q"), outbox.as_os_str()]);
    c.arg(url);
    c
}

fn pull_cmd(url: &str, queue: &Path) -> Command {
    let mut c = clean_fspl(["pull", url, "-q"]);
    c.arg(queue);
    c
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

/// Job files of a queue's `jobs/`: name -> bytes.
fn jobs_in(queue: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fspl_testkit::job_names(&queue.join("jobs"))
        .into_iter()
        .filter_map(|n| match std::fs::read(queue.join("jobs").join(&n)) {
            Ok(b) => Some((n, b)),
            // Taken by a push running meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{}: {e}", queue.display()),
        })
        .collect()
}

/// How many jobs a queue's `jobs/` holds (cheap, while push and pull run).
fn count_in(queue: &Path) -> usize {
    fspl_testkit::job_names(&queue.join("jobs")).len()
}

/// Run `queue` with a command that appends "SEQ PAYLOAD" to `log`.
fn process(queue: &Path, log: &Path) {
    let mut c = clean_fspl([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        queue.as_os_str(),
    ]);
    // `read`, not `$(cat)`: one process less per job.
    c.args([
        "sh",
        "--",
        "-c",
        r#"IFS= read -r p; echo "$FSPL_SEQ $p" >> "$0""#,
    ])
    .arg(log);
    ok(run(c));
}

fn log_lines(log: &Path) -> Vec<String> {
    fspl_testkit::lines(log)
}

/// An outbox (a queue directory) holding jobs `seqs` with payload "p<seq>".
fn outbox(sb: &Sandbox, name: &str, seqs: impl IntoIterator<Item = u64>) -> PathBuf {
    let ob = sb.queue(name);
    for s in seqs {
        fspl_testkit::write_job(&ob, s, format!("p{s}").as_bytes());
    }
    ob
}

#[test]
fn nats_push_and_pull_run_jobs_in_order_once_with_out_of_order_and_duplicate_pushes() {
    let sb = Sandbox::new();
    let server = NatsServer::start(&sb.path("nats"));
    // A short duplicate window, so that a resend after it is stored again
    // and delivered twice.
    let url = format!("{}/orders?dup_window=0.2", server.url());
    let a = outbox(&sb, "a", [3, 1]);
    let b = outbox(&sb, "b", [4, 2]);
    let sent_a = jobs_in(&a);
    let sent_b = jobs_in(&b);
    exit_code(&run(push_cmd(&a, &url)), 0);
    assert!(jobs_in(&a).is_empty(), "pushed jobs leave the outbox");
    // The same jobs again at once (a resend after a crash): stored once.
    for (n, bytes) in &sent_a {
        std::fs::write(a.join("jobs").join(n), bytes).unwrap();
    }
    exit_code(&run(push_cmd(&a, &url)), 0);
    exit_code(&run(push_cmd(&b, &url)), 0);

    let dest = sb.queue("dest");
    let out = run(pull_cmd(&url, &dest));
    exit_code(&out, 0);
    let mut want = sent_a.clone();
    want.extend(sent_b.clone());
    assert_eq!(jobs_in(&dest), want, "names and bytes kept, each once");
    // Nothing left in the stream.
    exit_code(&run(pull_cmd(&url, &dest)), 0);
    assert_eq!(jobs_in(&dest).len(), 4);

    let log = sb.path("log");
    process(&dest, &log);
    let ran: Vec<String> = (1..=4).map(|s| format!("{s} p{s}")).collect();
    assert_eq!(log_lines(&log), ran);

    // Every job sent again after the duplicate window: delivered again,
    // below the queue's nextseq, never run again.
    std::thread::sleep(Duration::from_millis(400));
    for (n, bytes) in want.iter() {
        std::fs::write(a.join("jobs").join(n), bytes).unwrap();
    }
    exit_code(&run(push_cmd(&a, &url)), 0);
    exit_code(&run(pull_cmd(&url, &dest)), 0);
    assert_eq!(jobs_in(&dest).len(), 4, "delivered again");
    process(&dest, &log);
    assert_eq!(log_lines(&log), ran, "a job delivered again ran again");
    // Left there below nextseq (never run, never deleted, as any such
    // file).
    assert_eq!(jobs_in(&dest), want);
}

#[test]
fn nats_creds_file_works_and_a_stranger_one_is_a_one_line_permanent_error() {
    let sb = Sandbox::new();
    let server = NatsServer::start_with(
        &sb.path("nats"),
        Options {
            auth: Some(JwtAuth::new()),
            ..Options::default()
        },
    );
    let good = server.write_creds(&sb.path("good.creds"));
    let bad = sb.path("bad.creds");
    write_private(
        &bad,
        &server.auth.as_ref().unwrap().stranger_creds("mallory"),
    );
    let ob = outbox(&sb, "ob", [1, 2]);
    let sent = jobs_in(&ob);
    let base = format!("{}/secure", server.url());

    // Refused credentials: one line, exit 2 (retrying will not help), the
    // jobs stay.
    let out = run(push_cmd(&ob, &format!("{base}?creds={}", bad.display())));
    exit_code(&out, 2);
    let line = one_line_error(out);
    assert!(
        line.contains("refused") && line.contains("authorization violation"),
        "{line}"
    );
    assert!(line.contains(bad.to_str().unwrap()), "{line}");
    assert_eq!(jobs_in(&ob), sent);
    // No credentials: refused as well.
    exit_code(&run(push_cmd(&ob, &base)), 2);

    // Good ones, in the URL for push and from the environment for pull.
    exit_code(
        &run(push_cmd(&ob, &format!("{base}?creds={}", good.display()))),
        0,
    );
    assert!(jobs_in(&ob).is_empty());
    let dest = sb.queue("dest");
    let mut pull = pull_cmd(&base, &dest);
    pull.env("FSPL_NATS_CREDS", &good);
    exit_code(&run(pull), 0);
    assert_eq!(jobs_in(&dest), sent);

    // A server that is not there: transient, exit 1, one line.
    let port = fspl_testkit::free_port();
    let out = run(push_cmd(
        &ob,
        &format!("nats://127.0.0.1:{port}/secure?timeout=2"),
    ));
    exit_code(&out, 1);
    let line = one_line_error(out);
    assert!(line.contains(&port.to_string()), "{line}");
}

#[test]
fn nats_job_above_max_payload_is_refused_in_one_line_and_kept() {
    let sb = Sandbox::new();
    let server = NatsServer::start_with(
        &sb.path("nats"),
        Options {
            max_payload: Some(8192),
            ..Options::default()
        },
    );
    let url = format!("{}/big", server.url());
    let ob = outbox(&sb, "ob", [1, 3]);
    fspl_testkit::write_job(&ob, 2, &vec![b'x'; 20_000]);
    let big: Vec<String> = jobs_in(&ob)
        .into_iter()
        .filter(|(_, b)| b.len() > 8192)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(big.len(), 1);
    let out = run(push_cmd(&ob, &url));
    exit_code(&out, 1);
    let err = text(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("fspl: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&big[0]) && lines[0].contains("max_payload 8192"),
        "{err}"
    );
    assert_eq!(
        jobs_in(&ob).into_keys().collect::<Vec<_>>(),
        big,
        "only the big job stays"
    );
    let dest = sb.queue("dest");
    exit_code(&run(pull_cmd(&url, &dest)), 0);
    assert_eq!(jobs_in(&dest).len(), 2);
}

#[test]
fn nats_daemon_push_and_pull_jobs_carry_jobs_through_jetstream() {
    let sb = Sandbox::new();
    let server = NatsServer::start(&sb.path("nats"));
    let url = format!("{}/daemon", server.url());
    let ob = sb.queue("outbox");
    let dest = sb.queue("dest");
    let log = sb.path("log");
    let fast = "poll_min = 1\npoll_max = 1";
    let text = config(
        &sb,
        "",
        &[
            format!(
                "[[job]]\nname = \"out\"\ntype = \"push\"\noutbox = {}\nto = {}\n{fast}\n",
                q(&ob),
                q(&url)
            ),
            format!(
                "[[job]]\nname = \"in\"\ntype = \"pull\"\nfrom = {}\nqueue = {}\n{fast}\n",
                q(&url),
                q(&dest)
            ),
            process_job("run", &dest, &recorder(&log, ""), ""),
        ],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    for s in [2, 1, 3] {
        fspl_testkit::write_job(&ob, s, format!("p{s}").as_bytes());
    }
    wait_soon("jobs 1-3 to run", || log_lines(&log).len() >= 3);
    assert_eq!(log_lines(&log), ["1 p1", "2 p2", "3 p3"]);
    let (st, _) = d.stop();
    assert!(st.success(), "{st}");
}

/// Kill a child with SIGKILL (if it still runs) and reap it; whether the
/// kill ended it.
fn kill(child: &mut Child) -> bool {
    let _ = child.kill();
    child.wait().unwrap().code().is_none()
}

fn spawn_quiet(mut c: Command) -> Child {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().unwrap()
}

#[test]
fn reliability_nats_transport_survives_server_restarts_and_killed_push_and_pull() {
    let (jobs, restarts, kills) = if long_mode() {
        (10_000u64, 5u32, 20u32)
    } else {
        (1_000, 2, 5)
    };
    let sb = Sandbox::new();
    let mut server = NatsServer::start(&sb.path("nats"));
    let url = format!("{}/chaos?timeout=3", server.url());
    let ob = sb.queue("outbox");
    let dest = sb.queue("dest");
    // The jobs arrive in waves, one before each round of faults, so that
    // every kill can land while jobs move (regression
    // nats_chaos_never_ended_once_jobs_moved_faster_than_the_kills: with
    // all jobs written first, push and pull had nothing left to do after
    // the first round, ended in milliseconds, and no later kill landed).
    let mut written = 0u64;
    let mut sent = std::collections::BTreeMap::new();
    let mut rng = Rng(0x4e41_5453);
    let mut tally = Tally::new("nats-transport");
    let started = Instant::now();
    let (mut restarted, mut killed, mut landed, mut killed_midway) = (0, 0, 0, 0);
    // How long an undisturbed push or pull took last: kills fall inside it.
    let mut typical = Duration::from_millis(300);
    // A guard against a hang, not a measurement: generous for a loaded CI.
    let deadline = Instant::now() + Duration::from_secs(if long_mode() { 1800 } else { 600 });
    // Faults while push and pull run side by side.
    // Until `kills` kills have landed on a running push or pull (a kill
    // after it ended counts as an attempt only).
    while restarted < restarts || landed < kills || written < jobs {
        assert!(Instant::now() < deadline, "faults took too long");
        assert!(
            killed < 10 * kills,
            "{landed} of {killed} kills landed: push and pull end too soon"
        );
        if written < jobs {
            // The jobs left, spread over about twice the kills still due.
            let due = u64::from(kills.saturating_sub(landed)).max(1);
            let wave = (jobs - written).div_ceil(2 * due);
            for s in (written + 1..=written + wave).rev() {
                fspl_testkit::write_job(&ob, s, format!("p{s}").as_bytes());
            }
            written += wave;
            sent.extend(jobs_in(&ob));
        }
        let t0 = Instant::now();
        let mut push = spawn_quiet(push_cmd(&ob, &url));
        let mut pull = spawn_quiet(pull_cmd(&url, &dest));
        tally.runs += 2;
        let window = u64::try_from(typical.as_millis()).unwrap_or(300).max(2);
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        let moving = count_in(&ob) > 0 || count_in(&dest) < sent.len();
        let mut victim_is_push = None;
        if landed < kills {
            let push_victim = rng.below(2) == 0;
            let victim = if push_victim { &mut push } else { &mut pull };
            killed += 1;
            if kill(victim) {
                landed += 1;
                victim_is_push = Some(push_victim);
                if moving {
                    killed_midway += 1;
                }
            }
        }
        if restarted < restarts && rng.below(3) == 0 {
            if restarted % 2 == 0 {
                server.stop();
            } else {
                server.kill();
            }
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            server.start_again();
            restarted += 1;
        }
        // The other one ends by itself (a failure is fine while the
        // server restarts); bounded by its timeouts.
        for (is_push, c) in [(true, &mut push), (false, &mut pull)] {
            let end = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() {
                assert!(Instant::now() < end, "push or pull hangs");
                std::thread::sleep(Duration::from_millis(5));
            }
            if victim_is_push != Some(is_push) {
                typical = t0.elapsed();
            }
        }
    }
    eprintln!("nats chaos: faults took {:?}", started.elapsed());
    let faults_took = Instant::now();
    // Then everything through: push until the outbox is empty, pull until
    // the stream is.
    for round in 0.. {
        assert!(round < 20, "the outbox does not empty");
        let out = run(push_cmd(&ob, &url));
        if out.status.success() && jobs_in(&ob).is_empty() {
            break;
        }
    }
    for round in 0.. {
        assert!(round < 20, "pull keeps failing");
        let out = run(pull_cmd(&url, &dest));
        if out.status.success() {
            break;
        }
    }
    eprintln!("nats chaos: recovery took {:?}", faults_took.elapsed());
    let got = jobs_in(&dest);
    let missing = sent.keys().filter(|n| !got.contains_key(*n)).count();
    assert_eq!(missing, 0, "jobs lost");
    assert_eq!(got, sent, "every job once, with its bytes");
    let log = sb.path("log");
    let t = Instant::now();
    process(&dest, &log);
    eprintln!("nats chaos: queue-process took {:?}", t.elapsed());
    let want: Vec<String> = (1..=jobs).map(|s| format!("{s} p{s}")).collect();
    assert_eq!(log_lines(&log), want, "every job run once, in order");
    eprintln!(
        "nats chaos: {jobs} jobs, {restarted} restarts, {landed} of {killed} kills landed ({killed_midway} mid-transfer)"
    );
    assert!(killed_midway > 0, "no kill happened while jobs were moving");
    tally.faults = u64::from(restarted + landed);
    tally.states = jobs;
    tally.finish();
}
