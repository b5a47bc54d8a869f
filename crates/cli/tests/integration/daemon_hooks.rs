//! Hooks, lag and health (issue 17) with a real daemon: each hook fires
//! with its FSPL_HOOK_* variables (success, failure, error state,
//! refusal); a hanging hook is killed at its timeout while the queue goes
//! on; the lag fields and metrics move as jobs queue and drain; `stale`
//! appears (status exit 1, a metric) and clears; `fspl status --watch`
//! redraws in place on a terminal and exits 0 on Ctrl-C. Every timing is
//! a generous deadline, never a measurement.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::daemon::http_get;
use crate::helper::wait_soon as wait_for;
use crate::helper::*;

/// A hook that writes its FSPL_HOOK_* variables to
/// DIR/EVENT-SEQ (SEQ "none" when unset).
fn recording_hook(dir: &Path) -> String {
    format!(
        "[\"/bin/sh\", \"-c\", \"env | grep ^FSPL_HOOK_ | sort > \\\"$1/$FSPL_HOOK_EVENT-${{FSPL_HOOK_SEQ:-none}}.tmp\\\" && mv \\\"$1/$FSPL_HOOK_EVENT-${{FSPL_HOOK_SEQ:-none}}.tmp\\\" \\\"$1/$FSPL_HOOK_EVENT-${{FSPL_HOOK_SEQ:-none}}\\\"\", \"sh\", {}]",
        q(dir)
    )
}

/// Every hook key set to HOOK (replaced by the caller).
const HOOKS: &str =
    "on_success = HOOK\non_failure = HOOK\non_error_state = HOOK\non_refused = HOOK\n";

/// The variables a hook recorded.
fn vars(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Success, failure, refusal and error state each run their hook with
/// the job's context; the queue is never held up by them.
#[test]
fn hooks_fire_with_their_variables_for_success_failure_refusal_and_error_state() {
    let sb = Sandbox::new();
    let rec = sb.path("hooks");
    std::fs::create_dir(&rec).unwrap();
    let hook = recording_hook(&rec);
    let hooks = HOOKS.replace("HOOK", &hook);
    let good = sb.queue("good");
    let bad = sb.queue("bad");
    let trusting = sb.queue("trusting");
    let key = sb.path("sender.key");
    ok(run(ours([
        OsStr::new("keygen"),
        OsStr::new("-o"),
        key.as_os_str(),
    ])));
    let public = std::fs::read_to_string(sb.path("sender.key.pub")).unwrap();
    let trust = sb.path("trust.toml");
    std::fs::write(
        &trust,
        format!("[[sender]]\nname = \"sender\"\nkey = {:?}\n", public.trim()),
    )
    .unwrap();
    let text = config(
        &sb,
        "",
        &[
            process_job("good", &good, &["/bin/true"], &hooks),
            process_job(
                "bad",
                &bad,
                &["/bin/sh", "-c", "exit 3"],
                &format!("{hooks}max_failures = 2\npoll_min = 1\npoll_max = 1\n"),
            ),
            process_job(
                "trusting",
                &trusting,
                &["/bin/true"],
                &format!("{hooks}trust = {}\n", q(&trust)),
            ),
        ],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    d.settled();
    send(&good, 1, "one", &[]);
    send(&bad, 1, "x", &[]);
    send(&trusting, 1, "unsigned", &[]);
    wait_for("every hook", || {
        ["success-1", "failure-1", "refused-1", "error_state-none"]
            .iter()
            .all(|f| rec.join(f).exists())
    });
    let s = vars(&rec.join("success-1"));
    assert_eq!(s["FSPL_HOOK_EVENT"], "success");
    assert_eq!(s["FSPL_HOOK_JOB"], "good");
    assert_eq!(s["FSPL_HOOK_KIND"], "process");
    assert_eq!(s["FSPL_HOOK_QUEUE"], good.display().to_string());
    assert_eq!(s["FSPL_HOOK_SEQ"], "1");
    assert_eq!(s["FSPL_HOOK_EXIT_STATUS"], "0");
    assert!(s["FSPL_HOOK_DURATION"].parse::<f64>().unwrap() >= 0.0);
    let f = vars(&rec.join("failure-1"));
    assert_eq!(f["FSPL_HOOK_JOB"], "bad");
    assert_eq!(f["FSPL_HOOK_EXIT_STATUS"], "3");
    assert!(f["FSPL_HOOK_REASON"].contains("status 3"), "{f:?}");
    let r = vars(&rec.join("refused-1"));
    assert_eq!(r["FSPL_HOOK_JOB"], "trusting");
    assert!(!r["FSPL_HOOK_REASON"].is_empty());
    assert!(r["FSPL_HOOK_FILE"].starts_with("fspl-"), "{r:?}");
    let e = vars(&rec.join("error_state-none"));
    assert_eq!(e["FSPL_HOOK_EVENT"], "error_state");
    assert_eq!(e["FSPL_HOOK_JOB"], "bad");
    assert!(
        e["FSPL_HOOK_REASON"].contains("failures in a row")
            || e["FSPL_HOOK_REASON"].contains("status 3"),
        "{e:?}"
    );
    assert!(!e.contains_key("FSPL_HOOK_SEQ"));
    assert_eq!(d.state("bad"), "error");
    // The good queue went on.
    send(&good, 2, "two", &[]);
    wait_for("seq 2's success hook", || rec.join("success-2").exists());
    assert_eq!(nextseq(&good), 3);
}

/// A hook that hangs is killed (its process group) at hook_timeout, and
/// logged; meanwhile the queue runs every job.
#[test]
fn a_hanging_hook_is_killed_at_its_timeout_and_the_queue_goes_on() {
    let (_sb, qd, pids, d) = with_sleeping_hook(3);
    for s in 1..=3 {
        send(&qd, s, "x", &[]);
    }
    wait_for("three jobs and their hooks started", || {
        nextseq(&qd) == 4 && (1..=3).all(|s| pids.join(s.to_string()).exists())
    });
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) } == 0;
    let pid = |s: u64| -> i32 {
        std::fs::read_to_string(pids.join(s.to_string()))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    d.wait_log("hook killed after its timeout");
    wait_for("every hook's sleep killed with its group", || {
        (1..=3).all(|s| !alive(pid(s)) || is_zombie(pid(s)))
    });
    // Each kill is logged once its hook is reaped: the last line may
    // come a moment after the sleeps are gone.
    d.wait_for("three hooks killed in the log", || {
        d.log_text()
            .matches("hook killed after its timeout")
            .count()
            >= 3
    });
    let log = d.log_text();
    assert_eq!(
        log.matches("hook killed after its timeout").count(),
        3,
        "{log}"
    );
    // The queue still runs, and its next hook is killed in its turn
    // (waited for: a daemon that stops does not kill its hooks).
    send(&qd, 4, "x", &[]);
    wait_for("seq 4", || nextseq(&qd) == 5);
    d.wait_for("the fourth hook killed", || {
        d.log_text()
            .matches("hook killed after its timeout")
            .count()
            == 4
    });
    wait_for("seq 4's hook's sleep killed with its group", || {
        !alive(pid(4)) || is_zombie(pid(4))
    });
}

/// Regression: a hook still running when the daemon stopped was never
/// killed: its thread went with the daemon, and with it the timeout, so
/// a hung hook outlived the daemon for good. Now the hooks get what is
/// left of the shutdown grace, then are killed with their groups.
#[test]
fn a_hook_still_running_when_the_daemon_stops_is_killed_with_its_group() {
    let (_sb, qd, pids, d) = with_sleeping_hook(600);
    send(&qd, 1, "x", &[]);
    wait_for("the hook started", || pids.join("1").exists());
    let pid: i32 = std::fs::read_to_string(pids.join("1"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the hook's sleep runs");
    let log = d.stop_ok();
    assert!(log.contains("hook killed: the daemon is stopping"), "{log}");
    wait_for("the hook's sleep killed with its group", || {
        (unsafe { libc::kill(pid, 0) }) != 0 || is_zombie(pid)
    });
}

/// A daemon running queue `q` (`/bin/true` per job) whose success hook
/// starts `sleep 1000` in its group, writes its pid to `pids/SEQ` and
/// waits for it, with `hook_timeout` seconds: the sandbox, the queue, the
/// pids directory and the daemon, settled.
fn with_sleeping_hook(hook_timeout: u64) -> (Sandbox, PathBuf, PathBuf, Daemon) {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let pids = sb.path("pids");
    std::fs::create_dir(&pids).unwrap();
    let hook = format!(
        "[\"/bin/sh\", \"-c\", \"sleep 1000 & echo $! > \\\"$1/$FSPL_HOOK_SEQ\\\"; wait\", \"sh\", {}]",
        q(&pids)
    );
    let text = config(
        &sb,
        "",
        &[process_job(
            "run",
            &qd,
            &["/bin/true"],
            &format!("on_success = {hook}\nhook_timeout = {hook_timeout}\n"),
        )],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    d.settled();
    (sb, qd, pids, d)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// A metric's value for job `job` in a Prometheus text body.
fn metric(body: &str, name: &str, job: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("fspl_job=\"{job}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The lag moves: a job waiting at a gap ages (status and metrics), its
/// bytes are counted; with stale_after = 2 the job turns stale (status
/// exit 1, fspl_job_stale 1, the table says so); the gap filled, the
/// queue drains, and stale, the age and the bytes go back to nothing.
#[test]
fn lag_moves_as_jobs_queue_and_drain_and_stale_appears_and_clears() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let port = free_port();
    let text = config(
        &sb,
        &format!("metrics = \"127.0.0.1:{port}\""),
        &[process_job("run", &qd, &["/bin/true"], "stale_after = 2\n")],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    d.settled();
    let (_, code) = d.status();
    assert_eq!(code, 0);
    // Seq 2 waits for seq 1.
    send(&qd, 2, "waiting payload", &[]);
    wait_for("seq 2 waiting", || d.state("run") == "waiting");
    let j = d.job("run");
    assert!(j["bytes_queued"].as_u64().unwrap() > 0, "{j}");
    let first_age = j["oldest_queued_age_s"].as_u64().unwrap();
    wait_for("the age to grow", || {
        d.job("run")["oldest_queued_age_s"].as_u64().unwrap() > first_age
    });
    wait_for("stale", || {
        d.status().1 == 1 && d.job("run")["stale"] == true
    });
    let table = String::from_utf8(
        run(ours([
            OsStr::new("status"),
            OsStr::new("--socket"),
            d.socket.as_os_str(),
        ]))
        .stdout,
    )
    .unwrap();
    assert!(table.contains("stale (no success for"), "{table}");
    wait_for("the stale metric", || {
        http_get(port, "/metrics").and_then(|b| metric(&b, "fspl_job_stale", "run")) == Some(1.0)
    });
    let body = http_get(port, "/metrics").unwrap();
    assert!(
        metric(&body, "fspl_oldest_queued_age_seconds", "run").unwrap() >= 1.0,
        "{body}"
    );
    assert!(
        metric(&body, "fspl_queue_bytes", "run").unwrap() > 0.0,
        "{body}"
    );
    d.wait_log("job is stale");
    // Fill the gap: both run, nothing waits, stale clears.
    send(&qd, 1, "one", &[]);
    wait_for("the queue to drain", || nextseq(&qd) == 3);
    wait_for("stale to clear", || {
        let (jobs, code) = d.status();
        let j = &jobs[0];
        code == 0
            && j["stale"].is_null()
            && j["oldest_queued_age_s"].is_null()
            && j["bytes_queued"] == 0
    });
    let j = d.job("run");
    assert!(j["since_success_s"].as_u64().is_some(), "{j}");
    wait_for("the metrics to follow", || {
        http_get(port, "/metrics").is_some_and(|b| {
            metric(&b, "fspl_job_stale", "run") == Some(0.0)
                && metric(&b, "fspl_queue_bytes", "run") == Some(0.0)
                && metric(&b, "fspl_oldest_queued_age_seconds", "run") == Some(0.0)
        })
    });
    d.wait_log("job is no longer stale");
}

/// `fspl status --watch` on a terminal redraws in place (cursor home,
/// lines cleared to their ends, never the whole screen), and exits 0 on
/// SIGINT; on a pipe it prints table after table, and exits 0 too.
#[test]
fn status_watch_redraws_in_place_on_a_terminal_and_exits_cleanly_on_sigint() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[process_job("run", &qd, &["/bin/true"], "")]),
        "logfmt",
    );
    d.settled();
    let watch = |stdout: Stdio| {
        let mut c = ours([
            OsStr::new("status"),
            OsStr::new("--socket"),
            d.socket.as_os_str(),
            OsStr::new("--watch"),
            OsStr::new("--interval"),
            OsStr::new("0.2"),
        ]);
        c.stdout(stdout).stderr(Stdio::piped()).stdin(Stdio::null());
        c.spawn().unwrap()
    };
    // A terminal: a pty's secondary side as stdout.
    let (mut primary, secondary) = {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty fills two fds.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh fds we own.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    };
    let mut child = watch(Stdio::from(secondary));
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match primary.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    });
    std::thread::sleep(Duration::from_millis(900));
    signal(child.id(), libc::SIGINT);
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(0), "{st}");
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(out.matches("\x1b[H").count() >= 2, "{out:?}");
    assert!(out.contains("\x1b[K"), "{out:?}");
    assert!(out.contains("\x1b[J"), "{out:?}");
    assert!(!out.contains("\x1b[2J"), "no full clear: {out:?}");
    assert!(out.contains("NAME"), "{out:?}");
    // A pipe: plain tables, one after the other.
    let mut child = watch(Stdio::piped());
    let mut so = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(900));
    signal(child.id(), libc::SIGINT);
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(0), "{st}");
    let mut out = String::new();
    so.read_to_string(&mut out).unwrap();
    assert!(out.matches("NAME").count() >= 2, "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("--watch did not exit on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
