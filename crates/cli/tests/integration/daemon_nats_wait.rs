//! The daemon's `type = "nats-wait"` job (issue 15): `fspl nats wait` as a
//! supervised daemon job, on a real nats-server, against messages sent by
//! `fspl nats send` and by the original remaphore.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fspl_testkit::nats::NatsServer;
use fspl_testkit::prometheus::{http_get, promtool};
use fspl_testkit::remaphore::{remaphore_bin, write_dummy_creds};

use crate::helper::*;

/// A server, two nodes (the waiter `com.test.w` run by the daemon, the
/// sender `com.test.s`) whose configs list each other, and a command that
/// records its argv and environment.
struct Net {
    sb: Sandbox,
    server: NatsServer,
    /// The waiter's remaphore config.
    wconf: PathBuf,
    /// The sender's.
    sconf: PathBuf,
    /// The sender's public key.
    spub: String,
    /// The recording command.
    cmd: PathBuf,
}

/// A base58 key pair from `fspl keygen --format base58`: (public, secret).
fn keypair(dir: &Path, name: &str) -> (String, String) {
    let k = dir.join(format!("{name}.key"));
    let out = Command::new(fspl_bin())
        .args(["keygen", "--format", "base58", "-o"])
        .arg(&k)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(k.with_extension("key.pub")).unwrap();
    let secret = std::fs::read_to_string(&k).unwrap();
    (public.trim().to_string(), secret.trim().to_string())
}

/// A remaphore config: this node's identity (every verb), its peers.
fn write_conf(
    path: &Path,
    server: &str,
    dest: &str,
    me: &(String, String),
    peers: &[(&str, &str)],
    extra: &str,
) {
    let mut s = format!(
        "server: {server}\nsubject: remaphore\ndestination: {dest}\nallow_skew: 5s\n{extra}\n\n[ Identities ]\n{} {} [*]\n\n[ Peers ]\n",
        me.0, me.1
    );
    for (d, k) in peers {
        s.push_str(&format!("{d} {k} [*]\n"));
    }
    std::fs::write(path, s).unwrap();
}

impl Net {
    fn new() -> Net {
        let sb = Sandbox::new();
        let server = NatsServer::start(&sb.path("nats"));
        let w = keypair(sb.dir.path(), "w");
        let s = keypair(sb.dir.path(), "s");
        let (wconf, sconf) = (sb.path("w.conf"), sb.path("s.conf"));
        let url = server.url();
        write_conf(&wconf, &url, "com.test.w", &w, &[("com.test.s", &s.0)], "");
        write_conf(&sconf, &url, "com.test.s", &s, &[("com.test.w", &w.0)], "");
        // Records its argv and sorted environment in runs.log; fails
        // (status 3) while the file `fail` exists; sleeps while `hold`
        // exists, after writing its pid to `pid`.
        let cmd = sb.path("on-message.sh");
        std::fs::write(
            &cmd,
            format!(
                "#!/bin/sh\n\
                 {{ printf 'argv:'; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; echo; env | sort; echo ---; }} >> {log}\n\
                 if [ -e {hold} ]; then echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; exec sleep 120; fi\n\
                 echo \"handled $REMAPHORE_MSG\"\n\
                 if [ -e {fail} ]; then exit 3; fi\n",
                log = sb.path("runs.log").display(),
                hold = sb.path("hold").display(),
                pid = sb.path("pid").display(),
                fail = sb.path("fail").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cmd, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Net {
            sb,
            server,
            wconf,
            sconf,
            spub: s.0,
            cmd,
        }
    }

    /// The job table: `extra` adds key lines.
    fn job(&self, extra: &str) -> String {
        format!(
            "[[job]]\nname = \"w\"\ntype = \"nats-wait\"\nconfig = {}\ncommand = [{}, \"first arg\"]\nverbs = [\"deploy\"]\npoll_min = 1\npoll_max = 2\n{extra}\n",
            q(&self.wconf),
            q(&self.cmd)
        )
    }

    /// Start the daemon with the job; returns once it is subscribed.
    fn daemon(&self, daemon_extra: &str, extra: &str) -> Daemon {
        let d = Daemon::start(
            &self.sb,
            &config(&self.sb, daemon_extra, &[self.job(extra)]),
            "logfmt",
        );
        d.wait_for("the job to subscribe", || !d.job("w")["from"].is_null());
        d
    }

    /// `fspl nats -c s.conf send ARGS...`, which must succeed.
    fn send(&self, args: &[&str]) {
        let out = Command::new(fspl_bin())
            .arg("nats")
            .arg("-c")
            .arg(&self.sconf)
            .arg("send")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "send {args:?}: {out:?}");
    }

    /// The command's runs so far: (argv line, environment lines).
    fn runs(&self) -> crate::nats_remaphore::Runs {
        crate::nats_remaphore::runs(
            &std::fs::read_to_string(self.sb.path("runs.log")).unwrap_or_default(),
        )
    }

    fn argvs(&self) -> Vec<String> {
        self.runs().into_iter().map(|r| r.0).collect()
    }
}

/// The value of a series (exact name and labels) in a scrape.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn messages(result: &str) -> String {
    format!("fspl_nats_wait_messages_total{{fspl_job=\"w\",result=\"{result}\"}}")
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Each matching message runs the command once, with `fspl nats wait`'s
/// argv (`COMMAND... VERB PAYLOAD`) and exactly the REMAPHORE_*
/// environment; a verb or destination the job does not want runs nothing,
/// a message from an unknown key is dropped; `fspl status` and the
/// metrics count them, and the metrics pass `promtool check metrics`.
#[test]
fn nats_wait_job_runs_its_command_once_per_matching_message_with_remaphore_argv_and_env() {
    let net = Net::new();
    let port = free_port();
    let d = net.daemon(&format!("metrics = \"127.0.0.1:{port}\""), "");
    assert_eq!(d.job("w")["type"], "nats-wait");
    for i in 1..=3 {
        net.send(&[
            "-D",
            "com.test.*",
            "-v",
            "deploy",
            "-u",
            &format!("id-{i}"),
            "--",
            "payload",
            &i.to_string(),
        ]);
    }
    // Not for this job: another verb, another destination.
    net.send(&["-D", "com.test.w", "-v", "ping", "not-this-verb"]);
    net.send(&["-D", "com.test.other", "-v", "deploy", "not-this-node"]);
    // From a key the waiter does not know: dropped by the checks.
    let x = keypair(net.sb.dir.path(), "x");
    let xconf = net.sb.path("x.conf");
    write_conf(&xconf, &net.server.url(), "com.test.x", &x, &[], "");
    let out = Command::new(fspl_bin())
        .arg("nats")
        .arg("-c")
        .arg(&xconf)
        .args(["send", "-D", "com.test.w", "-v", "deploy", "stranger"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A last one: once it has run, everything before it has been seen.
    net.send(&["-D", "com.test.w", "-v", "deploy", "last"]);
    d.wait_for("four commands", || net.runs().len() >= 4);
    d.wait_for("the status counts", || {
        let j = d.job("w");
        j["jobs_succeeded"] == 4 && j["jobs_refused"] == 1
    });
    let runs = net.runs();
    assert_eq!(
        net.argvs(),
        [
            "argv: [first arg] [deploy] [payload 1]",
            "argv: [first arg] [deploy] [payload 2]",
            "argv: [first arg] [deploy] [payload 3]",
            "argv: [first arg] [deploy] [last]",
        ]
    );
    let env = &runs[0].1;
    for want in [
        format!("REMAPHORE_SENDER={}", net.spub),
        "REMAPHORE_VERB=deploy".to_string(),
        "REMAPHORE_MSG=payload 1".to_string(),
        "REMAPHORE_DESTMATCH=com.test.w".to_string(),
        format!("REMAPHORE_UUID={}", hex("id-1")),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    let keys: Vec<&str> = env.iter().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(keys, crate::nats_remaphore::SCRIPT_ENV);
    let j = d.job("w");
    assert_eq!(j["state"], "idle", "{j}");
    assert_eq!(j["jobs_failed"], 0, "{j}");
    assert!(j["last_success"].is_string(), "{j}");
    assert!(j["last_success_unix"].is_i64(), "{j}");
    assert_eq!(j["queue"], net.wconf.display().to_string());
    assert!(j["from"].as_str().unwrap().contains("remaphore.all"), "{j}");
    let mut body = String::new();
    d.wait_for("the metrics", || {
        body = scrape(port);
        sample(&body, &messages("success")) == Some(4.0)
            && sample(&body, &messages("failed")) == Some(0.0)
            && sample(&body, &messages("dropped")) == Some(1.0)
    });
    let out = promtool(&["check", "metrics"], body.as_bytes());
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop_ok();
}

/// Durable: messages sent while the daemon is down are handled when it
/// comes back, each once (a sentinel sent last proves nothing else
/// comes).
#[test]
fn durable_nats_wait_job_gets_what_was_sent_while_the_daemon_was_down_once_each() {
    let net = Net::new();
    let extra = format!("durable = true\nstate = {}", q(net.sb.path("handled")));
    let d = net.daemon("", &extra);
    net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", "before"]);
    d.wait_for("the first message", || net.runs().len() == 1);
    d.wait_for("its success", || d.job("w")["jobs_succeeded"] == 1);
    d.stop_ok();
    for p in ["while-down-1", "while-down-2", "while-down-3"] {
        net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", p]);
    }
    let d = net.daemon("", &extra);
    net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", "sentinel"]);
    d.wait_for("the sentinel", || {
        net.argvs().iter().any(|a| a.ends_with("[sentinel]"))
    });
    assert_eq!(
        net.argvs(),
        [
            "argv: [first arg] [deploy] [before]",
            "argv: [first arg] [deploy] [while-down-1]",
            "argv: [first arg] [deploy] [while-down-2]",
            "argv: [first arg] [deploy] [while-down-3]",
            "argv: [first arg] [deploy] [sentinel]",
        ]
    );
    d.wait_for("the count", || d.job("w")["jobs_succeeded"] == 4);
    d.stop_ok();
}

/// A failing command fails the run: the daemon backs off and tries again
/// (durable: the same message comes again), enters the error state after
/// `max_failures`, and once the command is fixed, `fspl status --clear`
/// resumes the job, which handles that message and the next ones.
#[test]
fn failing_nats_wait_command_backs_off_into_the_error_state_and_recovers_after_a_clear() {
    let net = Net::new();
    let port = free_port();
    std::fs::write(net.sb.path("fail"), "").unwrap();
    let d = net.daemon(
        &format!("metrics = \"127.0.0.1:{port}\""),
        "durable = true\nmax_failures = 2",
    );
    net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", "m1"]);
    d.wait_for("the error state", || d.state("w") == "error");
    let (jobs, code) = d.status();
    assert_eq!(code, 1, "the error state needs attention: {jobs:?}");
    let j = d.job("w");
    let msg = j["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("exited with status 3"), "{j}");
    assert!(msg.contains("\"deploy\" from com.test.s"), "{j}");
    assert_eq!(j["jobs_failed"], 2, "{j}");
    // Tried twice, the same message, with a backoff between.
    assert_eq!(
        net.argvs(),
        [
            "argv: [first arg] [deploy] [m1]",
            "argv: [first arg] [deploy] [m1]"
        ]
    );
    let log = d.log_text();
    assert!(
        log.contains("run failed:") && log.contains("failures=1"),
        "{log}"
    );
    assert!(log.contains("stopped after 2 failures in a row"), "{log}");
    let body = scrape(port);
    assert_eq!(sample(&body, &messages("failed")), Some(2.0), "{body}");
    assert_eq!(sample(&body, "fspl_queue_error{fspl_job=\"w\"}"), Some(1.0));

    // Fixed; cleared: m1 again, this time handled, then the next.
    std::fs::remove_file(net.sb.path("fail")).unwrap();
    let out = Command::new(fspl_bin())
        .args(["status", "--socket"])
        .arg(net.sb.socket())
        .args(["--clear", "w"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.wait_for("m1 handled", || d.job("w")["jobs_succeeded"] == 1);
    net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", "m2"]);
    d.wait_for("m2 handled", || d.job("w")["jobs_succeeded"] == 2);
    assert_eq!(net.argvs().len(), 4, "{:?}", net.argvs());
    assert!(net.argvs()[3].ends_with("[m2]"));
    assert_eq!(d.state("w"), "idle");
    d.wait_for("the metrics", || {
        sample(&scrape(port), "fspl_queue_error{fspl_job=\"w\"}") == Some(0.0)
    });
    d.stop_ok();
}

/// A lost connection to the server is a transient failure: the job backs
/// off and retries (never the error state) until the server is back, then
/// handles messages again.
#[test]
fn nats_wait_job_retries_while_the_server_is_down_and_resumes_when_it_is_back() {
    let mut net = Net::new();
    let d = net.daemon("", "max_failures = 1");
    net.server.stop();
    d.wait_for("retrying", || {
        let j = d.job("w");
        j["state"] == "retrying" && j["consecutive_failures"].as_u64() >= Some(2)
    });
    assert!(d.log_text().contains("transient=true"), "{}", d.log_text());
    net.server.start_again();
    // Connected again, during the run: no longer failing.
    d.wait_for("connected again", || {
        let j = d.job("w");
        j["consecutive_failures"] == 0 && j["state"] == "idle"
    });
    // Subscribed again once the run is under way: send until one lands.
    let mut n = 0;
    d.wait_for("a message handled after the restart", || {
        n += 1;
        net.send(&["-D", "com.test.w", "-v", "deploy", &format!("after-{n}")]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        d.job("w")["jobs_succeeded"].as_u64() >= Some(1)
    });
    assert_eq!(d.job("w")["state"], "idle");
    d.stop_ok();
}

/// A message and a request from the original remaphore: the job runs the
/// command for the message, and answers the request with the command's
/// exit status and output, as `fspl nats wait` does.
#[test]
fn messages_and_requests_from_the_reference_remaphore_are_handled_by_a_nats_wait_job() {
    let net = Net::new();
    // The original insists on a credentials file (the server ignores it).
    let creds = write_dummy_creds(&net.sb.path("test.creds"));
    let text = std::fs::read_to_string(&net.sconf).unwrap();
    std::fs::write(
        &net.sconf,
        text.replacen(
            "subject:",
            &format!("credentials: {}\nsubject:", creds.display()),
            1,
        ),
    )
    .unwrap();
    let d = net.daemon("", "");
    let original = |args: &[&str]| -> Output {
        Command::new(remaphore_bin())
            .arg("-c")
            .arg(&net.sconf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = original(&["-s", "-D", "com.test.w", "-v", "deploy", "from", "go"]);
    assert!(out.status.success(), "{out:?}");
    d.wait_for("the message", || d.job("w")["jobs_succeeded"] == 1);
    assert_eq!(net.argvs(), ["argv: [first arg] [deploy] [from go]"]);
    let out = original(&[
        "-r",
        "-t",
        "20s",
        "-D",
        "com.test.w",
        "-v",
        "deploy",
        "asked",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "com.test.w,0,handled asked"
    );
    d.wait_for("the request's command", || {
        d.job("w")["jobs_succeeded"] == 2
    });
    d.stop_ok();
}

/// SIGTERM while the command runs: the daemon waits the shutdown grace,
/// kills the command (it does not outlive the daemon) and exits; in
/// durable mode the message, not acknowledged, runs again next time.
#[test]
fn daemon_sigterm_stops_a_nats_wait_job_and_kills_its_running_command() {
    let net = Net::new();
    let extra = format!("durable = true\nstate = {}", q(net.sb.path("handled")));
    let d = net.daemon("", &extra);
    std::fs::write(net.sb.path("hold"), "").unwrap();
    net.send(&["--durable", "-D", "com.test.w", "-v", "deploy", "long"]);
    d.wait_for("the command's pid", || net.sb.path("pid").exists());
    let pid: i32 = std::fs::read_to_string(net.sb.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(d.state("w"), "busy");
    let log = d.stop_ok();
    assert!(
        log.contains("grace period over; killing the running command"),
        "{log}"
    );
    wait_soon("the command gone", || gone(pid));
    // Not acknowledged: it comes again.
    std::fs::remove_file(net.sb.path("hold")).unwrap();
    let d = net.daemon("", &extra);
    d.wait_for("the message again", || d.job("w")["jobs_succeeded"] == 1);
    assert_eq!(
        net.argvs(),
        [
            "argv: [first arg] [deploy] [long]",
            "argv: [first arg] [deploy] [long]"
        ]
    );
    // Idle, it stops as soon as it is told.
    d.stop_ok();
}

/// A command that runs past the job's `timeout` is killed, and that is a
/// failure of the command (here the error state at once, `max_failures =
/// 1`).
#[test]
fn nats_wait_command_past_its_timeout_is_killed_and_fails_the_run() {
    let net = Net::new();
    std::fs::write(net.sb.path("hold"), "").unwrap();
    let d = net.daemon("", "timeout = 1\nmax_failures = 1");
    net.send(&["-D", "com.test.w", "-v", "deploy", "slow"]);
    d.wait_for("the command's pid", || net.sb.path("pid").exists());
    let pid: i32 = std::fs::read_to_string(net.sb.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.wait_for("the error state", || d.state("w") == "error");
    let j = d.job("w");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("did not exit normally"),
        "{j}"
    );
    assert_eq!(j["jobs_failed"], 1, "{j}");
    wait_soon("the command killed", || gone(pid));
    d.stop_ok();
}

/// `daemon --check` names the job and the key of a remaphore config that
/// does not load, a subject or destination that cannot work, a sender
/// key that is not a peer; the daemon puts such a job in its error state
/// at once.
#[test]
fn daemon_check_names_a_nats_wait_job_with_a_bad_config_or_pattern() {
    let sb = Sandbox::new();
    let (me, other) = (keypair(sb.dir.path(), "me"), keypair(sb.dir.path(), "o"));
    let wild = sb.path("wild.conf");
    write_conf(
        &wild,
        "nats://127.0.0.1:1",
        "com.*",
        &me,
        &[("com.o", &other.0)],
        "",
    );
    let good = sb.path("good.conf");
    write_conf(
        &good,
        "nats://127.0.0.1:1",
        "com.me",
        &me,
        &[("com.o", &other.0)],
        "",
    );
    let job = |name: &str, conf: &Path, extra: &str| {
        format!(
            "[[job]]\nname = {}\ntype = \"nats-wait\"\nconfig = {}\ncommand = [\"/bin/true\"]\n{extra}\n",
            q(name),
            q(conf)
        )
    };
    let check = |jobs: &[String]| -> (Option<i32>, String) {
        let path = sb.path("check.toml");
        std::fs::write(&path, config(&sb, "", jobs)).unwrap();
        let out = Command::new(fspl_bin())
            .args(["daemon", "--check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = sb.path("missing.conf");
    let cases: Vec<(String, &str)> = vec![
        (job("a", &missing, ""), "job \"a\": config: cannot read"),
        (job("b", &good, "subject = \"x y\""), "job \"b\": subject:"),
        (job("c", &good, "subject = \"a..b\""), "job \"c\": subject:"),
        (
            job("d", &good, "destination = \"com.a,com.b\""),
            "job \"d\": destination:",
        ),
        (job("e", &wild, ""), "job \"e\": config:"),
        (
            job("f", &good, &format!("pubkey = {}", q(&me.0))),
            "job \"f\": pubkey:",
        ),
        (
            job("g", &good, "pubkey = \"not-a-key\""),
            "job \"g\": pubkey:",
        ),
        (
            job("h", &good, "destination = \"x\"\nany_destination = true"),
            "job \"h\": any_destination:",
        ),
        (job("i", &good, "state = \"/tmp/x\""), "job \"i\": state:"),
        (
            job("j", &good, "").replace("/bin/true", "/nonexistent/handler"),
            "job \"j\": command:",
        ),
    ];
    for (table, want) in &cases {
        let (code, err) = check(std::slice::from_ref(table));
        assert_eq!(code, Some(1), "{table}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{table}: one line: {err}");
        assert!(lines[0].starts_with("fspl: error: "), "{err}");
        assert!(lines[0].contains(want), "{want:?} not in {err}");
    }
    let (code, err) = check(&[job("ok", &good, "verbs = [\"deploy\"]\ndurable = true")]);
    assert_eq!(code, Some(0), "{err}");

    // Run anyway: the job that cannot load its config is in its error
    // state at once, with the reason.
    let d = Daemon::start(&sb, &config(&sb, "", &[job("a", &missing, "")]), "logfmt");
    d.wait_for("the error state", || d.state("a") == "error");
    let j = d.job("a");
    assert!(
        j["message"].as_str().unwrap().contains("missing.conf"),
        "{j}"
    );
    d.stop_ok();
}

/// docs/nats.md's "As a daemon job" walk-through runs as written (its sh
/// block, with fspl and nats-server on PATH, in a scratch HOME, on a free
/// port): the daemon's job runs the script for the message sent, and
/// `fspl status` lists the job.
#[test]
fn docs_nats_wait_walk_through_runs_as_written() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let doc = std::fs::read_to_string(root().join("docs/nats.md")).unwrap();
    let section = doc
        .split("### As a daemon job")
        .nth(1)
        .expect("the section")
        .split("\n## ")
        .next()
        .unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("an sh block")
        .split("\n```")
        .next()
        .unwrap();
    let (home, bin) = (sb.path("home"), sb.path("bin"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(fspl_bin(), bin.join("fspl")).unwrap();
    std::os::unix::fs::symlink(fspl_testkit::nats::server_bin(), bin.join("nats-server")).unwrap();
    // A watchdog ends a script that would wait forever; the process group
    // goes with the test whatever happens.
    let child = Command::new("timeout")
        .args(["60", "sh", "-c", block])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("NATS_PORT", free_port().to_string())
        .env("TZ", "UTC")
        .current_dir(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let out = child.wait_with_output().unwrap();
    // SAFETY: the process group this test made.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let dir = home.join("nats-try");
    let apub = std::fs::read_to_string(dir.join("a.key.pub")).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("deploys.log")).unwrap(),
        format!("deploy release-42 from {}\n", apub.trim())
    );
    assert!(stdout.contains("daemon.toml: OK, 1 job"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("deploys") && l.contains("nats-wait")),
        "{stdout}"
    );
}
