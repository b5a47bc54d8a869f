//! `fspl daemon` and `fspl status` as real processes: ordering across
//! queues, event and polled pick-up, the error state through `fspl status
//! --json` and `--clear`, SIGHUP reloads (good and bad), SIGTERM during a
//! long job, the lock shared with a manual `queue-process`, the three log
//! formats, the Prometheus endpoint, the control socket's mode, systemd
//! notifications, and `daemon --check`. Small intervals keep it fast; every
//! timing is a generous deadline, never a measurement.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helper::*;

/// Several queues, jobs arriving out of order while the daemon runs: each
/// waits at the gap ("waiting" in `fspl status`), then runs in order. The
/// safety rescan and polling are an hour away, so every pick-up is by
/// filesystem event.
#[test]
fn daemon_runs_each_queue_in_order_as_jobs_arrive() {
    let sb = Sandbox::new();
    let names = ["a", "b", "c"];
    let mut jobs = Vec::new();
    for n in names {
        let qd = sb.queue(n);
        jobs.push(process_job(
            n,
            &qd,
            &recorder(&sb.path(format!("{n}.log")), ""),
            "poll_min = 3600\npoll_max = 3600",
        ));
    }
    let d = Daemon::start(&sb, &config(&sb, "max_parallel = 2", &jobs), "logfmt");
    d.settled();
    for n in names {
        send(&sb.path(n), 3, &format!("{n}3"), &[]);
        send(&sb.path(n), 2, &format!("{n}2"), &[]);
    }
    for n in names {
        wait_soon(&format!("{n} waiting"), || {
            let j = d.job(n);
            j["state"] == "waiting" && j["seq"] == 1
        });
        assert!(lines(&sb.path(format!("{n}.log"))).is_empty());
    }
    let (_, code) = d.status();
    assert_eq!(code, 0);
    let t0 = Instant::now();
    for n in names {
        send(&sb.path(n), 1, &format!("{n}1"), &[]);
    }
    for n in names {
        let log = sb.path(format!("{n}.log"));
        wait_soon(&format!("{n} to run its jobs"), || lines(&log).len() == 3);
        assert_eq!(
            lines(&log),
            [format!("1 {n}1"), format!("2 {n}2"), format!("3 {n}3")]
        );
    }
    eprintln!("three queues: event to all 9 jobs done: {:?}", t0.elapsed());
    for n in names {
        wait_soon(&format!("{n} idle"), || d.state(n) == "idle");
        let j = d.job(n);
        assert_eq!(j["next_seq"], 4);
        assert_eq!(j["queued"], 0);
        assert_eq!(j["jobs_succeeded"], 3);
        assert_eq!(nextseq(&sb.path(n)), 4);
        assert!(sb.job_files(&sb.path(n)).is_empty());
    }
    // The table form names every job.
    let table = String::from_utf8(ok(run(ours([
        OsStr::new("status"),
        OsStr::new("-c"),
        d.config.as_os_str(),
    ]))))
    .unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    for n in names {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(n) && l.ends_with("idle")),
            "{table}"
        );
    }
    d.stop_ok();
}

/// `poll = true`: the queue is looked at every poll_min seconds.
#[test]
fn daemon_polls_when_asked() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let log = sb.path("log");
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[process_job(
                "q",
                &qd,
                &recorder(&log, ""),
                "poll = true\npoll_min = 1\npoll_max = 2",
            )],
        ),
        "logfmt",
    );
    d.settled();
    send(&qd, 1, "x", &[]);
    wait_soon("the job to run", || lines(&log).len() == 1);
    assert_eq!(lines(&log), ["1 x"]);
    wait_soon("nextseq 2", || nextseq(&qd) == 2);
}

/// Three failed runs in a row: the error state, in `fspl status --json`
/// (exit 1) and the log (once); `fspl status --clear` resumes it. The
/// next time, a reload (SIGHUP) resumes it.
#[test]
fn daemon_error_state_shows_in_status_and_is_cleared() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let ok_file = sb.path("ok");
    let cmd = [
        "/bin/sh",
        "-c",
        "test -e \"$1\"",
        "sh",
        ok_file.to_str().unwrap(),
    ];
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[process_job("q", &qd, &cmd, "poll_min = 1\npoll_max = 2")],
        ),
        "logfmt",
    );
    d.settled();
    send(&qd, 1, "", &[]);
    wait_soon("the error state", || d.state("q") == "error");
    let (jobs, code) = d.status();
    assert_eq!(code, 1, "status exits 1 while a job is in its error state");
    let j = &jobs[0];
    assert_eq!(j["consecutive_failures"], 3);
    assert_eq!(j["jobs_failed"], 3);
    assert!(j["message"].as_str().unwrap().contains("job 1"), "{j}");
    let log = d.log_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("stopped after 3 failures"))
            .count(),
        1,
        "{log}"
    );
    // The way out, as a command that reaches this daemon (its socket is
    // not the default one: -c names the configuration).
    assert!(
        log.contains(&format!(
            "`fspl status -c {} --clear q` resumes",
            d.config.display()
        )),
        "{log}"
    );
    // The table shows it too.
    let out = run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        d.socket.as_os_str(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error: job 1"));

    std::fs::write(&ok_file, "").unwrap();
    let out = ok(run(ours([
        OsStr::new("status"),
        OsStr::new("-c"),
        d.config.as_os_str(),
        OsStr::new("--clear"),
        OsStr::new("q"),
    ])));
    assert_eq!(out, b"cleared q\n");
    wait_soon("the job to succeed", || nextseq(&qd) == 2);
    wait_soon("idle", || d.state("q") == "idle");
    assert_eq!(d.status().1, 0);

    // Again, and this time a reload resumes it.
    std::fs::remove_file(&ok_file).unwrap();
    send(&qd, 2, "", &[]);
    wait_soon("the error state again", || d.state("q") == "error");
    std::fs::write(&ok_file, "").unwrap();
    signal(d.pid(), libc::SIGHUP);
    wait_soon("the job to succeed after the reload", || nextseq(&qd) == 3);
    assert_eq!(d.job("q")["consecutive_failures"], 0);

    // Clearing a job that does not exist is an error.
    let e = one_line_error(run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        d.socket.as_os_str(),
        OsStr::new("--clear"),
        OsStr::new("nope"),
    ])));
    assert!(e.contains("nope"), "{e}");
}

/// SIGHUP with a valid config starts a new queue's job; with an invalid
/// one it is refused with a log line naming file and line, and the old
/// configuration keeps running.
#[test]
fn daemon_reloads_on_sighup_and_refuses_a_bad_config() {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("a"), sb.queue("b"));
    let (la, lb) = (sb.path("a.log"), sb.path("b.log"));
    let job_a = process_job("a", &qa, &recorder(&la, ""), "");
    let job_b = process_job("b", &qb, &recorder(&lb, ""), "");
    let d = Daemon::start(&sb, &config(&sb, "", std::slice::from_ref(&job_a)), "human");
    send(&qa, 1, "x", &[]);
    wait_soon("a to run", || lines(&la).len() == 1);

    let good = config(&sb, "", &[job_a.clone(), job_b.clone()]);
    std::fs::write(&d.config, &good).unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("configuration reloaded");
    wait_soon("b in the status", || {
        d.status().0.iter().any(|j| j["name"] == "b")
    });
    send(&qb, 1, "y", &[]);
    wait_soon("b to run", || lines(&lb).len() == 1);
    assert_eq!(lines(&lb), ["1 y"]);

    // A typo on a known line.
    let bad = format!("{good}bogus_key = 1\n");
    let bad_line = bad.lines().count();
    std::fs::write(&d.config, &bad).unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("reload refused");
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(line.contains(d.config.to_str().unwrap()), "{line}");
    assert!(line.contains(&format!("line {bad_line}")), "{line}");
    assert!(line.contains("bogus_key"), "{line}");
    assert!(line.contains("old one stays in effect"), "{line}");
    // Both old jobs still run.
    send(&qa, 2, "x2", &[]);
    send(&qb, 2, "y2", &[]);
    wait_soon("a and b to run", || {
        lines(&la).len() == 2 && lines(&lb).len() == 2
    });
    let names: Vec<Value> = d.status().0.iter().map(|j| j["name"].clone()).collect();
    assert_eq!(names, ["a", "b"]);

    // Removing a job by reload stops it; [daemon] settings wait for a
    // restart, and the log says so.
    std::fs::write(&d.config, config(&sb, "max_parallel = 3", &[job_b])).unwrap();
    signal(d.pid(), libc::SIGHUP);
    wait_soon("a gone from the status", || {
        d.status().0.iter().all(|j| j["name"] != "a")
    });
    d.wait_log("take effect on restart");
    d.stop_ok();
}

/// Regression: a reload (SIGHUP) kept unchanged jobs with the trust file
/// they had read at start, so a sender added to the trust file stayed
/// refused until a restart.
#[test]
fn sighup_rereads_trust_files_of_unchanged_jobs() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let log = sb.path("log");
    for k in ["alice", "bob"] {
        ok(run(ours([
            OsStr::new("keygen"),
            OsStr::new("-o"),
            sb.path(k).as_os_str(),
        ])));
    }
    let sender = |name: &str| {
        let key = std::fs::read_to_string(sb.path(format!("{name}.pub"))).unwrap();
        format!("[[sender]]\nname = {}\nkey = {}\n", q(name), q(key.trim()))
    };
    let trust = sb.path("trust.toml");
    std::fs::write(&trust, sender("alice")).unwrap();
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[process_job(
                "q",
                &qd,
                &recorder(&log, ""),
                &format!("trust = {}", q(&trust)),
            )],
        ),
        "logfmt",
    );
    let (alice, bob) = (sb.path("alice"), sb.path("bob"));
    let (alice, bob) = (alice.to_str().unwrap(), bob.to_str().unwrap());
    send(&qd, 1, "from alice", &["--sign", alice]);
    wait_soon("alice's job", || nextseq(&qd) == 2);
    send(&qd, 2, "from bob", &["--sign", bob]);
    d.wait_log("job refused");
    assert_eq!(nextseq(&qd), 2);
    assert_eq!(lines(&log), ["1 from alice"]);

    std::fs::write(&trust, format!("{}\n{}", sender("alice"), sender("bob"))).unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("configuration reloaded");
    send(&qd, 2, "from bob", &["--sign", bob]);
    wait_soon("bob's job", || nextseq(&qd) == 3);
    assert_eq!(lines(&log), ["1 from alice", "2 from bob"]);
}

/// SIGTERM while a command runs past the shutdown grace: it is killed, and
/// nothing is lost: the job is still there, nextseq unchanged, and it runs
/// again on the next start. Meanwhile a manual queue-process is refused
/// the lock.
#[test]
fn daemon_sigterm_during_a_long_job_loses_nothing() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let log = sb.path("log");
    let fast = sb.path("fast");
    let then = format!("test -e {} || exec sleep 60", fast.display());
    let text = config(
        &sb,
        "",
        &[process_job("q", &qd, &recorder(&log, &then), "")],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    send(&qd, 1, "x", &[]);
    wait_soon("the job to start", || {
        let j = d.job("q");
        j["state"] == "running" && j["seq"] == 1 && lines(&log).len() == 1
    });
    // The daemon holds the queue lock.
    let e = one_line_error(run(ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        qd.as_os_str(),
        OsStr::new("/bin/true"),
    ])));
    assert!(e.contains("locked by another process"), "{e}");

    let t0 = Instant::now();
    let (st, out) = d.stop();
    eprintln!(
        "SIGTERM with a command past its 1 s grace: {:?}",
        t0.elapsed()
    );
    assert!(st.success(), "{out}");
    assert!(out.contains("SIGTERM"), "{out}");
    assert!(out.contains("killing the running command"), "{out}");
    assert!(out.contains("fspl daemon stopped"), "{out}");
    assert_eq!(nextseq(&qd), 1);
    assert_eq!(sb.job_files(&qd).len(), 1);
    assert!(!sb.path("d.sock").exists(), "control socket left behind");

    std::fs::write(&fast, "").unwrap();
    let d = Daemon::start(&sb, &text, "logfmt");
    wait_soon("the job to run again", || nextseq(&qd) == 2);
    assert_eq!(lines(&log), ["1 x", "1 x"]);
    // nextseq advances before the file is deleted.
    wait_soon("the job file to go", || sb.job_files(&qd).is_empty());
    let (st, _) = d.stop_with(libc::SIGINT);
    assert!(st.success());
}

/// A manual `queue-process` holding the lock with a long job: the daemon
/// shows the queue as locked and runs nothing of it until the manual run
/// ends; the commands never overlap.
#[test]
fn daemon_and_manual_queue_process_never_run_one_queue_at_once() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let log = sb.path("log");
    for s in 1..=3 {
        send(&qd, s, "", &[]);
    }
    let tagged = |tag: &str, pause: &str| {
        format!(
            "echo \"start {tag}$FSPL_SEQ\" >> \"$1\"; {pause} echo \"end {tag}$FSPL_SEQ\" >> \"$1\""
        )
    };
    let mut manual = ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        qd.as_os_str(),
        OsStr::new("--maxjobs"),
        OsStr::new("1"),
        OsStr::new("/bin/sh"),
        OsStr::new("--"),
        OsStr::new("-c"),
        OsStr::new(&tagged("m", "sleep 2;")),
        OsStr::new("sh"),
        log.as_os_str(),
    ])
    .stdin(Stdio::null())
    .spawn()
    .unwrap();
    wait_soon("the manual run to start", || !lines(&log).is_empty());
    let cmd = [
        "/bin/sh",
        "-c",
        &tagged("d", ""),
        "sh",
        log.to_str().unwrap(),
    ];
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[process_job("q", &qd, &cmd, "")]),
        "logfmt",
    );
    wait_soon("the locked state", || d.state("q") == "locked");
    let j = d.job("q");
    assert_eq!(j["pid"], manual.id(), "{j}");
    assert_eq!(lines(&log), ["start m1"]);
    assert!(manual.wait().unwrap().success());
    wait_soon("the daemon to run the rest", || nextseq(&qd) == 4);
    assert_eq!(
        lines(&log),
        [
            "start m1", "end m1", "start d2", "end d2", "start d3", "end d3"
        ]
    );
    wait_soon("idle", || d.state("q") == "idle");
}

/// Split one logfmt line into its key/value pairs.
pub(crate) fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = line.chars().peekable();
    loop {
        while it.peek() == Some(&' ') {
            it.next();
        }
        if it.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        for c in it.by_ref() {
            if c == '=' {
                break;
            }
            assert!(c != ' ' && c != '"', "bad logfmt key in {line:?}");
            key.push(c);
        }
        let mut val = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            loop {
                match it.next() {
                    Some('"') => break,
                    Some('\\') => match it.next() {
                        Some('n') => val.push('\n'),
                        Some('t') => val.push('\t'),
                        Some('r') => val.push('\r'),
                        Some(c) => val.push(c),
                        None => panic!("dangling escape in {line:?}"),
                    },
                    Some(c) => val.push(c),
                    None => panic!("unterminated quote in {line:?}"),
                }
            }
            assert!(
                matches!(it.peek(), None | Some(' ')),
                "junk after a quoted value in {line:?}"
            );
        } else {
            while let Some(&c) = it.peek() {
                if c == ' ' {
                    break;
                }
                val.push(c);
                it.next();
            }
        }
        out.push((key, val));
    }
}

/// Run a daemon with one succeeding and one failing queue in `format`;
/// return its log.
fn log_sample(format: &str, stop: libc::c_int) -> (String, PathBuf) {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("ok"), sb.queue("bad"));
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[
                process_job("ok", &qa, &["/bin/true"], ""),
                process_job("bad", &qb, &["/bin/false"], "on_error = \"delete\""),
            ],
        ),
        format,
    );
    send(&qa, 1, "", &[]);
    send(&qb, 1, "", &[]);
    wait_soon("both to run", || nextseq(&qa) == 2 && nextseq(&qb) == 2);
    let (st, log) = d.stop_with(stop);
    assert!(st.success(), "{log}");
    // The sandbox goes; the queue path is only compared as text.
    (log, qa)
}

#[test]
fn daemon_logs_in_logfmt() {
    let (log, qa) = log_sample("logfmt", libc::SIGTERM);
    let mut seen_job = false;
    for line in log.lines() {
        let kv = logfmt(line);
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(kv[0].0, "ts", "{line}");
        assert_eq!(kv[1].0, "level", "{line}");
        assert!(
            ["error", "warn", "info", "debug", "trace"].contains(&get("level").unwrap()),
            "{line}"
        );
        assert!(get("msg").is_some(), "{line}");
        if get("msg") == Some("job succeeded") {
            seen_job = true;
            assert_eq!(get("job"), Some("ok"), "{line}");
            assert_eq!(get("queue"), qa.to_str(), "{line}");
            assert_eq!(get("seq"), Some("1"), "{line}");
            assert!(get("duration_ms").is_some(), "{line}");
        }
        if get("msg").unwrap().starts_with("job failed") {
            assert_eq!(get("level"), Some("warn"), "{line}");
            assert_eq!(get("job"), Some("bad"), "{line}");
            assert_eq!(get("seq"), Some("1"), "{line}");
        }
    }
    assert!(seen_job, "{log}");
    assert!(log.contains("msg=\"fspl daemon started\""), "{log}");
    assert!(log.contains("msg=\"fspl daemon stopped\""), "{log}");
}

#[test]
fn daemon_logs_in_json() {
    let (log, qa) = log_sample("json", libc::SIGINT);
    let mut msgs = Vec::new();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v["ts"].is_string() && v["level"].is_string(), "{line}");
        let msg = v["msg"].as_str().unwrap().to_string();
        if msg == "job succeeded" {
            assert_eq!(v["job"], "ok");
            assert_eq!(v["queue"], qa.to_str().unwrap());
            assert_eq!(v["seq"], 1);
            assert!(v["duration_ms"].is_u64(), "{line}");
        }
        if msg.starts_with("job failed") {
            assert_eq!(v["level"], "warn");
            assert_eq!(v["job"], "bad");
            assert_eq!(v["seq"], 1);
        }
        msgs.push(msg);
    }
    for m in [
        "fspl daemon started",
        "job succeeded",
        "SIGINT: shutting down",
        "fspl daemon stopped",
    ] {
        assert!(msgs.iter().any(|x| x == m), "{m:?} missing: {log}");
    }
}

#[test]
fn daemon_logs_for_humans() {
    let (log, _) = log_sample("human", libc::SIGTERM);
    for line in log.lines() {
        let mut w = line.split_whitespace();
        let ts = w.next().unwrap();
        assert!(ts.len() == 20 && ts.ends_with('Z'), "{line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&w.next().unwrap()),
            "{line}"
        );
    }
    assert!(
        log.lines().any(|l| l.contains(" [ok][1] job succeeded")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" WARN [bad][1] job failed")),
        "{log}"
    );
    assert!(log.contains(" INFO fspl daemon started"), "{log}");
}

/// GET a URL path from 127.0.0.1:port with plain HTTP/1.0.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The Prometheus endpoint serves the counters and gauges after real jobs.
#[test]
fn daemon_serves_prometheus_metrics() {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("good"), sb.queue("bad"));
    let port = free_port();
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            &format!("metrics = \"127.0.0.1:{port}\""),
            &[
                process_job("good", &qa, &["/bin/true"], ""),
                process_job("bad", &qb, &["/bin/false"], "max_failures = 1"),
            ],
        ),
        "logfmt",
    );
    send(&qa, 1, "", &[]);
    send(&qa, 2, "", &[]);
    send(&qb, 1, "", &[]);
    wait_soon("good to run", || nextseq(&qa) == 3);
    wait_soon("bad in error", || d.state("bad") == "error");
    let mut body = String::new();
    wait_soon("the metrics", || {
        body = http_get(port, "/metrics").unwrap_or_default();
        body.contains("fspl_jobs_processed_total{fspl_job=\"good\",result=\"success\"} 2")
            && body.contains("fspl_queue_error{fspl_job=\"bad\"} 1")
    });
    assert!(body.starts_with("HTTP/1."), "{body}");
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing: {body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("fspl_jobs_processed_total{fspl_job=\"bad\",result=\"failed\"}"),
        1.0
    );
    assert_eq!(
        value("fspl_job_duration_seconds_count{fspl_job=\"good\"}"),
        2.0
    );
    assert!(value("fspl_job_duration_seconds_sum{fspl_job=\"good\"}") > 0.0);
    assert_eq!(value("fspl_queue_jobs{fspl_job=\"good\"}"), 0.0);
    assert_eq!(value("fspl_queue_jobs{fspl_job=\"bad\"}"), 1.0);
    assert_eq!(value("fspl_queue_blocked{fspl_job=\"good\"}"), 0.0);
    assert_eq!(value("fspl_queue_blocked{fspl_job=\"bad\"}"), 1.0);
    assert_eq!(value("fspl_queue_error{fspl_job=\"good\"}"), 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value("fspl_last_success_timestamp_seconds{fspl_job=\"good\"}");
    assert!((now - last).abs() < 3600.0, "{last} vs {now}");
    assert!(
        !body.contains("fspl_last_success_timestamp_seconds{fspl_job=\"bad\"}"),
        "{body}"
    );
    for name in [
        "fspl_jobs_processed_total",
        "fspl_job_duration_seconds",
        "fspl_queue_jobs",
        "fspl_queue_blocked",
        "fspl_queue_error",
        "fspl_last_success_timestamp_seconds",
    ] {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name}: {body}");
    }
}

/// The control socket is a socket of mode 0600; it goes away on exit.
#[test]
fn daemon_control_socket_is_mode_0600() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]),
        "logfmt",
    );
    let m = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    // A second daemon on the same socket is refused; the first keeps it.
    let out = run(ours([
        OsStr::new("daemon"),
        OsStr::new("-c"),
        d.config.as_os_str(),
    ]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listening"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
    let socket = d.socket.clone();
    let (st, _) = d.stop();
    assert!(st.success());
    assert!(!socket.exists());
    // No daemon: status says so on one line.
    let e = one_line_error(run(ours([
        OsStr::new("status"),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ])));
    assert!(
        e.contains("it does not exist (is the daemon running?)"),
        "{e}"
    );
}

/// Type=notify: READY=1 once up, RELOADING=1 and READY=1 around a reload,
/// STOPPING=1 on the way out, on $NOTIFY_SOCKET.
#[test]
fn daemon_notifies_systemd() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let ns = sb.path("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&ns).unwrap();
    rx.set_read_timeout(Some(SOON)).unwrap();
    let recv = || {
        let mut b = [0u8; 256];
        let n = rx.recv(&mut b).expect("a notification");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let d = Daemon::start_with(
        &sb,
        &config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]),
        "logfmt",
        |c| {
            c.env("NOTIFY_SOCKET", &ns);
        },
    );
    assert_eq!(recv(), "READY=1");
    signal(d.pid(), libc::SIGHUP);
    assert_eq!(recv(), "RELOADING=1");
    assert_eq!(recv(), "READY=1");
    let (st, _) = d.stop();
    assert!(st.success());
    assert_eq!(recv(), "STOPPING=1");
}

/// `daemon --check`: OK for a good config; for a bad one, one error line
/// naming the file, the line and the key, and a nonzero exit. `daemon`
/// refuses a bad config the same way.
#[test]
fn daemon_check_validates_configs() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let good = config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]);
    let path = sb.path("c.toml");
    std::fs::write(&path, &good).unwrap();
    let check = |args: &[&OsStr]| {
        let mut c = ours([OsStr::new("daemon"), OsStr::new("-c"), path.as_os_str()]);
        c.args(args);
        run(c)
    };
    let out = String::from_utf8(ok(check(&[OsStr::new("--check")]))).unwrap();
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains(path.to_str().unwrap()), "{out}");

    // (text, line, key)
    let job = |extra: &str| process_job("q", &qd, &["/bin/true"], extra);
    let cases = [
        (
            config(&sb, "", &[job("on_error = \"sometimes\"")]),
            "on_error",
        ),
        (config(&sb, "", &[job("typo = 1")]), "typo"),
        (config(&sb, "max_parallel = 0", &[job("")]), "max_parallel"),
        (config(&sb, "log_level = \"loud\"", &[job("")]), "log_level"),
        (
            config(&sb, "metrics = \"not an address\"", &[job("")]),
            "metrics",
        ),
        (
            config(&sb, "", &[job("").replace("\"process\"", "\"nats\"")]),
            "nats",
        ),
        (config(&sb, "", &[job(""), job("")]), "twice"),
    ];
    for (text, key) in cases {
        // The line the key (or, for a duplicate, the second name) is on.
        let line = if key == "twice" {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with("name ="))
                .nth(1)
                .unwrap()
                .0
                + 1
        } else {
            text.lines()
                .position(|l| l.contains(key))
                .unwrap_or_else(|| panic!("{key} not in {text}"))
                + 1
        };
        std::fs::write(&path, &text).unwrap();
        for args in [&[OsStr::new("--check")][..], &[]] {
            let e = one_line_error(check(args));
            assert!(e.contains(path.to_str().unwrap()), "{e}");
            assert!(e.contains(&format!("line {line}:")), "{key}: {e}\n{text}");
            assert!(e.contains(key), "{e}");
        }
    }

    // A queue that does not exist: --check names the file and the job.
    let missing = config(
        &sb,
        "",
        &[process_job("gone", &sb.path("gone"), &["/bin/true"], "")],
    );
    std::fs::write(&path, &missing).unwrap();
    let out = check(&[OsStr::new("--check")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("\"gone\""), "{err}");

    // A file that cannot be read.
    std::fs::remove_file(&path).unwrap();
    let e = one_line_error(check(&[OsStr::new("--check")]));
    assert!(e.contains(path.to_str().unwrap()), "{e}");
}

/// Regression: a reload that changed a job busy with a long command waited
/// for that command inside the signal loop, so the reload (new jobs
/// included) and a later SIGTERM took effect only once the command ended.
/// Now the reload is immediate, the changed job takes over when its old
/// run ends, and SIGTERM still stops within the grace.
#[test]
fn sighup_changing_a_busy_job_does_not_hold_up_reload_or_sigterm() {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("a"), sb.queue("b"));
    let (la, lb) = (sb.path("a.log"), sb.path("b.log"));
    let fast = sb.path("fast");
    let then = format!("test -e {} || exec sleep 120", fast.display());
    let job_a = |extra: &str| process_job("a", &qa, &recorder(&la, &then), extra);
    let job_b = process_job("b", &qb, &recorder(&lb, ""), "");
    let d = Daemon::start(&sb, &config(&sb, "", &[job_a("")]), "logfmt");
    send(&qa, 1, "x", &[]);
    wait_soon("a's long command", || {
        d.state("a") == "running" && lines(&la).len() == 1
    });
    // Change a (and add b) while a's command runs.
    std::fs::write(
        &d.config,
        config(&sb, "", &[job_a("poll_min = 5"), job_b.clone()]),
    )
    .unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("configuration reloaded");
    send(&qb, 1, "y", &[]);
    wait_soon("b to run meanwhile", || lines(&lb).len() == 1);
    assert_eq!(lines(&la).len(), 1, "a ran twice at once");
    let log = d.stop_ok();
    assert!(log.contains("killing the running command"), "{log}");
    assert_eq!(nextseq(&qa), 1);

    std::fs::write(&fast, "").unwrap();
    let d = Daemon::start(
        &sb,
        &config(&sb, "", &[job_a("poll_min = 5"), job_b]),
        "logfmt",
    );
    wait_soon("a's job to run again", || nextseq(&qa) == 2);
    assert_eq!(lines(&la), ["1 x", "1 x"]);
    drop(d);
}

/// Regression: a job task kept its log span entered while it awaited a
/// clear in its error state, so lines logged meanwhile by the daemon itself
/// (reload, shutdown) carried that job's `job` and `queue` fields.
#[test]
fn daemon_log_lines_outside_jobs_carry_no_job_context() {
    let sb = Sandbox::new();
    let (qa, qb) = (sb.queue("ok"), sb.queue("bad"));
    let text = config(
        &sb,
        "",
        &[
            process_job("ok", &qa, &["/bin/true"], ""),
            process_job("bad", &qb, &["/bin/false"], "max_failures = 1"),
        ],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    send(&qb, 1, "", &[]);
    wait_soon("bad in error", || d.state("bad") == "error");
    std::fs::write(&d.config, format!("{text}oops\n")).unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("reload refused");
    std::fs::write(&d.config, &text).unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_log("configuration reloaded");
    send(&qa, 1, "", &[]);
    wait_soon("ok to run", || nextseq(&qa) == 2);
    let log = d.stop_ok();
    for line in log.lines() {
        let kv = logfmt(line);
        let msg = &kv.iter().find(|(k, _)| k == "msg").unwrap().1;
        let job = kv.iter().find(|(k, _)| k == "job").map(|(_, v)| v.as_str());
        if msg.contains("reload") || msg.contains("SIGTERM") || msg.contains("fspl daemon") {
            assert_eq!(job, None, "{line}");
        }
        if msg == "job succeeded" {
            assert_eq!(job, Some("ok"), "{line}");
        }
        if msg.starts_with("job failed") || msg.starts_with("stopped after") {
            assert_eq!(job, Some("bad"), "{line}");
        }
    }
}

/// contrib/fspl.service keeps what docs/daemon.md promises about it, and
/// agrees with the example configuration.
#[test]
fn contrib_unit_matches_the_daemon() {
    let unit = std::fs::read_to_string(root().join("contrib/fspl.service")).unwrap();
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("ProtectHome"), "yes");
    assert_eq!(value("PrivateTmp"), "yes");
    assert!(!value("ReadWritePaths").is_empty());
    assert!(value("ExecStart").contains(" daemon -c /etc/fspl/daemon.toml"));
    assert!(value("ExecStartPre").contains(" daemon --check -c /etc/fspl/daemon.toml"));
    let example = std::fs::read_to_string(root().join("docs/examples/daemon.toml")).unwrap();
    let grace: u64 = example
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace = "))
        .unwrap()
        .parse()
        .unwrap();
    let stop: u64 = value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        stop > grace,
        "TimeoutStopSec {stop} <= shutdown_grace {grace}"
    );
    // The socket lives in the unit's RuntimeDirectory.
    let rd = value("RuntimeDirectory");
    assert!(
        example.contains(&format!("socket = \"/run/{rd}/daemon.sock\"")),
        "example socket not in /run/{rd}"
    );
    assert!(unit.contains("--socket /run/fspl/daemon.sock"));
}
