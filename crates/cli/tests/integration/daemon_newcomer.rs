//! A newcomer's first hour with `fspl daemon` (issue 12, items 5 to 9):
//! hints in the daemon's log that work when pasted, `fspl status` errors
//! that say which socket they tried, `daemon --check` reporting every
//! problem at once (command lookup included), counters that agree between
//! `fspl status`, /metrics and docs/daemon.md, log lines that name options
//! as the configuration spells them, an inotify failure that says which
//! limit to raise, and the first steps of docs/daemon.md run as written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::http_get;
use crate::helper::*;

/// Start `fspl daemon -c CONFIG_ARG --log-format json` in `cwd` (stderr to
/// `log`); returns once `socket` answers.
fn start_in(
    cwd: &Path,
    config_arg: &Path,
    socket: &Path,
    log: &Path,
    tweak: impl FnOnce(&mut Command),
) -> Daemon {
    let mut cmd = fspl_testkit::daemon::command(&fspl_bin(), config_arg, "json");
    cmd.current_dir(cwd);
    tweak(&mut cmd);
    let mut d = Daemon::spawn(&fspl_bin(), cmd, socket, log);
    d.config = cwd.join(config_arg);
    d
}

/// The JSON log lines of a daemon.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `fspl status ...` commands quoted in backticks in the log messages
/// about job `job`.
fn hints(log: &str, job: &str) -> Vec<String> {
    json_lines(log)
        .iter()
        .filter(|v| v["job"] == job)
        .filter_map(|v| {
            let msg = v["msg"].as_str()?;
            let start = msg.find("`fspl status")? + 1;
            let len = msg[start..].find('`')?;
            Some(msg[start..start + len].to_string())
        })
        .collect()
}

/// A directory with only a `fspl` link to our binary in it, for a PATH.
fn bin_dir(sb: &Sandbox) -> PathBuf {
    let bin = sb.path("bin");
    if !bin.exists() {
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(fspl_bin(), bin.join("fspl")).unwrap();
    }
    bin
}

/// Run a command line as a user pastes it: `sh -c LINE` in `/`, with our
/// `fspl` first on PATH and nothing else in the environment but `env`.
fn paste(sb: &Sandbox, line: &str, env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", line])
        .current_dir("/")
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir(sb).display()))
        .env("LANG", "C.UTF-8");
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

// ---------------------------------------------------------------------------
// Item 5: hints and "cannot reach" errors.

/// Regression: the daemon's hints said `fspl status --clear NAME` even when
/// its socket was not the default one, so the pasted hint asked the wrong
/// socket ("cannot reach the fspl daemon ... is it running?"). Now they say
/// `-c CONFIG`, with the configuration's absolute path (quoted for the
/// shell), and work when pasted anywhere.
#[test]
fn daemon_hint_with_a_non_default_socket_works_when_pasted() {
    let sb = Sandbox::new();
    let confdir = sb.path("my configs");
    std::fs::create_dir(&confdir).unwrap();
    let qd = sb.queue("q");
    let ql = sb.queue("late");
    let ok_file = sb.path("ok");
    let key = sb.path("late.key");
    let check = [
        "/bin/sh",
        "-c",
        "test -e \"$1\"",
        "sh",
        ok_file.to_str().unwrap(),
    ];
    let text = config(
        &sb,
        "",
        &[
            process_job("q", &qd, &check, "max_failures = 1"),
            process_job(
                "late",
                &ql,
                &["/bin/true"],
                &format!("identity = [{}]", q(&key)),
            ),
        ],
    );
    std::fs::write(confdir.join("daemon.toml"), &text).unwrap();
    // Started from its directory with a relative -c, as a newcomer would.
    let d = start_in(
        &confdir,
        Path::new("daemon.toml"),
        &sb.path("d.sock"),
        &sb.path("daemon.log"),
        |_| {},
    );
    send(&qd, 1, "", &[]);
    wait_soon("q in its error state", || d.state("q") == "error");
    wait_soon("late in its error state", || d.state("late") == "error");
    let log = d.log_text();
    let config_path = confdir.join("daemon.toml");
    for (job, fix) in [("q", &ok_file), ("late", &key)] {
        let h = hints(&log, job);
        assert_eq!(h.len(), 1, "one hint for {job}: {log}");
        let hint = &h[0];
        assert_eq!(
            hint,
            &format!("fspl status -c '{}' --clear {job}", config_path.display()),
            "{log}"
        );
        // Fix the cause, paste the hint: it works.
        if job == "late" {
            ok(run(ours([
                OsStr::new("keygen"),
                OsStr::new("-o"),
                fix.as_os_str(),
            ])));
        } else {
            std::fs::write(fix, "").unwrap();
        }
        let out = paste(&sb, hint, &[]);
        assert_eq!(
            String::from_utf8_lossy(&ok(out)),
            format!("cleared {job}\n"),
            "{hint}"
        );
    }
    wait_soon("q's job to run after the clear", || nextseq(&qd) == 2);
    wait_soon("late to leave its error state", || {
        d.state("late") == "idle"
    });
    d.stop_ok();
}

/// With the default socket the hint is plain `fspl status --clear NAME`,
/// and it works when pasted in the same environment.
#[test]
fn daemon_hint_with_the_default_socket_is_plain_fspl_status() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let runtime = sb.path("run");
    let socket = runtime.join("fspl/daemon.sock");
    let job = process_job("q", &qd, &["/bin/false"], "max_failures = 1");
    let text = format!("[daemon]\nrescan_interval = 3600\nshutdown_grace = 1\n\n{job}");
    std::fs::write(sb.path("daemon.toml"), text).unwrap();
    let d = start_in(
        sb.dir.path(),
        Path::new("daemon.toml"),
        &socket,
        &sb.path("daemon.log"),
        |c| {
            c.env("XDG_RUNTIME_DIR", &runtime);
        },
    );
    send(&qd, 1, "", &[]);
    wait_soon("the error state", || d.state("q") == "error");
    let h = hints(&d.log_text(), "q");
    assert_eq!(h, ["fspl status --clear q"], "{}", d.log_text());
    let out = paste(&sb, &h[0], &[("XDG_RUNTIME_DIR", &runtime)]);
    assert_eq!(ok(out), b"cleared q\n");
    d.stop_ok();
}

/// `fspl status` with this environment and these arguments: its one error
/// line.
fn status_error(runtime: Option<&Path>, args: &[&OsStr]) -> String {
    let mut c = ours([OsStr::new("status")]);
    c.args(args);
    match runtime {
        Some(r) => c.env("XDG_RUNTIME_DIR", r),
        None => c.env_remove("XDG_RUNTIME_DIR"),
    };
    one_line_error(run(c))
}

/// Regression: "cannot reach the fspl daemon at PATH (is it running?)"
/// whatever was at PATH and wherever PATH came from. Now the error says
/// which socket it tried and why it came to that one (the default, a
/// configuration's `socket`, `--socket`), how to point at another, and,
/// for `--socket`, what is at the path when it is not a socket.
#[test]
fn status_cannot_reach_says_which_socket_it_tried_and_why() {
    let sb = Sandbox::new();
    // The default socket, not there.
    let runtime = sb.path("run");
    let e = status_error(Some(&runtime), &[]);
    let default = runtime.join("fspl/daemon.sock");
    assert!(e.contains(&default.display().to_string()), "{e}");
    assert!(e.contains("default"), "{e}");
    assert!(
        e.contains("-c CONFIG") && e.contains("--socket PATH"),
        "{e}"
    );
    // Without XDG_RUNTIME_DIR: /run/fspl for root, /tmp/fspl-UID else (as
    // docs/daemon.md, the unit and the example configuration say).
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let e = status_error(None, &[]);
    let expected = if uid == 0 {
        "/run/fspl/daemon.sock".to_string()
    } else {
        format!("/tmp/fspl-{uid}/daemon.sock")
    };
    assert!(e.contains(&expected), "{e}");
    let doc = std::fs::read_to_string(root().join("docs/daemon.md")).unwrap();
    for promise in [
        "`$XDG_RUNTIME_DIR/fspl/`",
        "`/run/fspl/`",
        "`/tmp/fspl-UID/`",
        "`/run/fspl/daemon.sock`",
    ] {
        assert!(doc.contains(promise), "docs/daemon.md lacks {promise}");
    }

    // A configuration's socket.
    let conf = sb.path("daemon.toml");
    let sock = sb.path("sub/d.sock");
    std::fs::write(&conf, format!("[daemon]\nsocket = {}\n", q(&sock))).unwrap();
    let e = status_error(Some(&runtime), &[OsStr::new("-c"), conf.as_os_str()]);
    assert!(e.contains(&sock.display().to_string()), "{e}");
    assert!(e.contains(&conf.display().to_string()), "{e}");

    // --socket at things that are not sockets: said precisely, and no
    // "is it running?" for a file or a directory.
    let file = sb.path("file");
    std::fs::write(&file, "").unwrap();
    let dir = sb.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let stale = sb.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for (path, says) in [
        (&file, "is a regular file, not a socket"),
        (&dir, "is a directory, not a socket"),
        (&sb.path("missing.sock"), "does not exist"),
        (&stale, "nothing listens on it"),
    ] {
        let e = status_error(Some(&runtime), &[OsStr::new("--socket"), path.as_os_str()]);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(says), "{says:?}: {e}");
        assert!(e.contains("-c CONFIG"), "{e}");
        if path == &file || path == &dir {
            assert!(!e.contains("is it running"), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Item 6: `daemon --check`.

/// `fspl daemon [--check] -c PATH [args]` with PATH=`path_env`.
fn daemon_cmd(config: &Path, check: bool, path_env: &str) -> Output {
    let mut c = ours([OsStr::new("daemon"), OsStr::new("-c"), config.as_os_str()]);
    if check {
        c.arg("--check");
    }
    c.env("PATH", path_env);
    run(c)
}

/// The `fspl: error:` lines of an output, each checked to be one.
fn error_lines(out: &Output) -> Vec<String> {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Vec<String> = err.lines().map(str::to_string).collect();
    for l in &v {
        assert!(l.starts_with("fspl: error: "), "{err}");
    }
    v
}

/// The 1-based line of the first line of `text` that starts with `start`,
/// after the first line that contains `after`.
fn line_of(text: &str, after: &str, start: &str) -> usize {
    let from = text.lines().position(|l| l.contains(after)).unwrap();
    from + text
        .lines()
        .skip(from)
        .position(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("{start} not after {after}"))
        + 1
}

/// Regression: `daemon --check` stopped at the first problem (and `command =
/// "ls"` on line 5 was reported at line 2 without its key); `poll_min = 0`,
/// `max_failures = 0` and `poll_min` above `poll_max` were silently
/// changed, a duration too large to add to the clock was accepted; a
/// command that does not exist passed. Now every problem of every job is
/// one line naming file, line and key, and the exit status is 1.
#[test]
fn daemon_check_reports_every_problem_of_every_job_at_once() {
    let sb = Sandbox::new();
    let qa = sb.queue("a");
    let qc = sb.queue("c");
    let text = format!(
        "[daemon]\nsocket = {}\nmax_parallel = 0\nrescan_interval = 9223372036854775807\n\n\
         [[job]]\nname = \"a\"\ntype = \"process\"\nqueue = {}\ncommand = \"ls\"\npoll_min = 0\nmax_failures = 0\ntypo = 1\n\n\
         [[job]]\nname = \"b\"\ntype = \"process\"\nqueue = {}\ncommand = [\"/nonexistent/handler\"]\npoll_min = 20\npoll_max = 10\n\n\
         [[job]]\nname = \"c\"\ntype = \"process\"\nqueue = {}\ncommand = [\"no-such-handler-fspl-test\"]\ntimeout = 9223372036854775807\n\
         trust = \"/nonexistent/trust.toml\"\nidentity = [\"/nonexistent/host.key\"]\n",
        q(sb.path("d.sock")),
        q(&qa),
        q(sb.path("missing")),
        q(&qc),
    );
    let conf = sb.path("daemon.toml");
    std::fs::write(&conf, &text).unwrap();
    let out = daemon_cmd(&conf, true, "/usr/bin:/bin");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let errors = error_lines(&out);
    let c = conf.display().to_string();
    // (line, words every one of which the line must contain)
    let expected: Vec<(Option<usize>, Vec<&str>)> = vec![
        (
            Some(line_of(&text, "[daemon]", "max_parallel")),
            vec!["max_parallel", "at least 1"],
        ),
        (
            Some(line_of(&text, "[daemon]", "rescan_interval")),
            vec!["rescan_interval", "at most"],
        ),
        (
            Some(line_of(&text, "\"a\"", "command")),
            vec!["job \"a\"", "command", "array"],
        ),
        (
            Some(line_of(&text, "\"a\"", "poll_min")),
            vec!["job \"a\"", "poll_min", "at least 1"],
        ),
        (
            Some(line_of(&text, "\"a\"", "max_failures")),
            vec!["job \"a\"", "max_failures", "at least 1"],
        ),
        (
            Some(line_of(&text, "\"a\"", "typo")),
            vec!["job \"a\"", "typo"],
        ),
        (
            Some(line_of(&text, "\"b\"", "poll_max")),
            vec!["job \"b\"", "poll_min", "poll_max"],
        ),
        (
            Some(line_of(&text, "\"c\"", "timeout")),
            vec!["job \"c\"", "timeout", "at most"],
        ),
        // What would keep the jobs from running, at their keys' lines.
        (
            Some(line_of(&text, "\"b\"", "queue")),
            vec!["job \"b\"", "queue:", "missing"],
        ),
        (
            Some(line_of(&text, "\"b\"", "command")),
            vec![
                "job \"b\"",
                "command:",
                "/nonexistent/handler",
                "does not exist",
            ],
        ),
        (
            Some(line_of(&text, "\"c\"", "command")),
            vec![
                "job \"c\"",
                "command:",
                "no-such-handler-fspl-test",
                "not found in PATH",
                "/usr/bin:/bin",
            ],
        ),
        (
            Some(line_of(&text, "\"c\"", "trust")),
            vec!["job \"c\"", "trust:", "/nonexistent/trust.toml"],
        ),
        (
            Some(line_of(&text, "\"c\"", "identity")),
            vec!["job \"c\"", "identity:", "/nonexistent/host.key"],
        ),
    ];
    for (line, words) in &expected {
        let found = errors.iter().any(|e| {
            e.contains(&c)
                && line.is_none_or(|n| e.contains(&format!(": line {n}: ")))
                && words.iter().all(|w| e.contains(w))
        });
        assert!(
            found,
            "no line {line:?} with {words:?} in:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));

    // `daemon` itself refuses the configuration with the same lines
    // (those of the file; queues and commands are checked when run).
    let out = daemon_cmd(&conf, false, "/usr/bin:/bin");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_lines(&out).len(),
        8,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Exit status 2: a usage error (no -c).
    let out = run(ours(["daemon", "--check"]));
    assert_eq!(out.status.code(), Some(2));
    // The exit statuses are documented.
    let doc = std::fs::read_to_string(root().join("docs/daemon.md")).unwrap();
    assert!(
        doc.contains("exits 0") && doc.contains("exits 1") && doc.contains("2 for a usage error")
    );
}

/// Regression: `--check` passed a command that the daemon then could not
/// start. Now `command[0]` is looked up as the daemon looks it up when it
/// runs it: an absolute path must be an executable file, a bare name is
/// searched in the daemon's PATH (the one `--check` runs with: under the
/// unit, ExecStartPre has the same environment), and a relative path with a
/// slash (relative to whatever directory the daemon was started in) is
/// refused.
#[test]
fn daemon_check_looks_up_the_command_as_the_daemon_runs_it() {
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let tools = sb.path("tools");
    std::fs::create_dir(&tools).unwrap();
    let handler = tools.join("handler");
    std::fs::write(&handler, "#!/bin/sh\ncat > \"$1\"\n").unwrap();
    std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plain = tools.join("plain");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf = sb.path("daemon.toml");
    let out_file = sb.path("got");
    let with = |command: &[&str]| {
        std::fs::write(
            &conf,
            config(&sb, "", &[process_job("q", &qd, command, "")]),
        )
        .unwrap();
    };
    let path_with_tools = format!("{}:/usr/bin:/bin", tools.display());

    with(&["handler", out_file.to_str().unwrap()]);
    let out = daemon_cmd(&conf, true, &path_with_tools);
    assert_eq!(
        String::from_utf8_lossy(&ok(out)),
        format!("{}: OK, 1 job\n", conf.display())
    );
    let e = one_line_error(daemon_cmd(&conf, true, "/usr/bin:/bin"));
    assert!(
        e.contains("\"handler\" is not found in PATH (/usr/bin:/bin)"),
        "{e}"
    );

    // The daemon started with that PATH runs it.
    let d = Daemon::start_with(
        &sb,
        &config(
            &sb,
            "",
            &[process_job(
                "q",
                &qd,
                &["handler", out_file.to_str().unwrap()],
                "",
            )],
        ),
        "logfmt",
        |c| {
            c.env("PATH", &path_with_tools);
        },
    );
    send(&qd, 1, "payload", &[]);
    wait_soon("the handler to run", || nextseq(&qd) == 2);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "payload");
    drop(d);

    with(&[plain.to_str().unwrap()]);
    let e = one_line_error(daemon_cmd(&conf, true, &path_with_tools));
    assert!(
        e.contains(&format!("{} is not executable", plain.display())),
        "{e}"
    );
    with(&[tools.to_str().unwrap()]);
    let e = one_line_error(daemon_cmd(&conf, true, &path_with_tools));
    assert!(
        e.contains(&format!("{} is a directory", tools.display())),
        "{e}"
    );
    with(&["tools/handler"]);
    for check in [true, false] {
        let e = one_line_error(daemon_cmd(&conf, check, &path_with_tools));
        assert!(e.contains("command"), "{e}");
        assert!(e.contains("\"tools/handler\" is a relative path"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Item 7: counters.

/// The value of one series in a Prometheus text body (0 when absent).
fn series(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// The sum of every series of `metric` with label fspl_job=`job`.
fn sum_of(body: &str, metric: &str, job: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(&format!("fspl_job=\"{job}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Regression: after three runs that failed before the command started
/// (the command missing), `fspl status --json` said `consecutive_failures:
/// 3, jobs_failed: 0` and /metrics had no `fspl_jobs_processed_total`
/// series, though docs/daemon.md said such jobs count. Now one job that
/// succeeds, one whose command fails, one whose command is missing, one
/// whose queue is missing and one refused give the same numbers in the
/// status and in /metrics, and every counter is documented.
#[test]
fn status_metrics_and_docs_agree_on_counters() {
    let sb = Sandbox::new();
    let port = free_port();
    let good = sb.queue("good");
    let bad = sb.queue("bad");
    let nocmd = sb.queue("nocmd");
    let trusting = sb.queue("trusting");
    let trust = keys(&sb).trust;
    let inbox = sb.path("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let retry = "max_failures = 2\npoll_min = 1\npoll_max = 1";
    let text = config(
        &sb,
        &format!("metrics = \"127.0.0.1:{port}\""),
        &[
            process_job("good", &good, &["/bin/true"], ""),
            process_job("bad", &bad, &["/bin/false"], retry),
            process_job("nocmd", &nocmd, &["/nonexistent/fspl-handler"], retry),
            process_job("noqueue", &sb.path("absent"), &["/bin/true"], retry),
            process_job(
                "trusting",
                &trusting,
                &["/bin/true"],
                &format!("trust = {}", q(&trust)),
            ),
            // A pull job (into good's queue), for the transport metrics.
            format!(
                "[[job]]\nname = \"intake\"\ntype = \"pull\"\nfrom = {}\nqueue = {}\n",
                q(&inbox),
                q(&good)
            ),
            // A prune job (of good's queue), for the prune metrics.
            format!(
                "[[job]]\nname = \"tidy\"\ntype = \"prune\"\npaths = [{}]\nkeep = [\"last_n:100\"]\n",
                q(&good)
            ),
        ],
    );
    let d = Daemon::start(&sb, &text, "logfmt");
    wait_soon("the first runs", || {
        d.status().0.iter().all(|j| {
            j["name"] == "noqueue"
                || (j["type"] == "pull" && j["runs"] != 0 && j["state"] == "idle")
                || (j["type"] == "prune" && j["runs"] != 0)
                || (!j["next_seq"].is_null() && j["state"] != "running")
        })
    });
    send(&good, 1, "", &[]);
    send(&good, 2, "", &[]);
    send(&bad, 1, "", &[]);
    send(&nocmd, 1, "", &[]);
    send(&trusting, 1, "", &[]);
    wait_soon("the jobs to settle", || {
        let st = |n: &str| d.state(n);
        nextseq(&good) == 3
            && st("bad") == "error"
            && st("nocmd") == "error"
            && st("noqueue") == "error"
            && trusting.join("rejected").read_dir().unwrap().count() > 0
            && st("trusting") == "idle"
    });
    // The status and the metrics, read until they agree (a run may end
    // between the two reads).
    let counters = [
        "jobs_succeeded",
        "jobs_failed",
        "jobs_refused",
        "runs",
        "runs_failed",
        "consecutive_failures",
    ];
    let from_metrics = |body: &str, job: &str| -> BTreeMap<&str, f64> {
        let l = format!("{{fspl_job=\"{job}\"");
        BTreeMap::from([
            (
                "jobs_succeeded",
                series(
                    body,
                    &format!("fspl_jobs_processed_total{l},result=\"success\"}}"),
                ),
            ),
            (
                "jobs_failed",
                sum_of(body, "fspl_jobs_processed_total", job)
                    - series(
                        body,
                        &format!("fspl_jobs_processed_total{l},result=\"success\"}}"),
                    ),
            ),
            (
                "jobs_refused",
                series(body, &format!("fspl_jobs_refused_total{l}}}")),
            ),
            ("runs", sum_of(body, "fspl_runs_total", job)),
            (
                "runs_failed",
                series(body, &format!("fspl_runs_total{l},result=\"failed\"}}")),
            ),
            (
                "consecutive_failures",
                series(body, &format!("fspl_consecutive_failures{l}}}")),
            ),
        ])
    };
    let mut status = Vec::new();
    let mut body = String::new();
    let names = ["good", "bad", "nocmd", "noqueue", "trusting"];
    wait_soon("status and metrics to agree", || {
        status = d.status().0;
        body = http_get(port, "/metrics").unwrap_or_default();
        names.iter().all(|n| {
            let j = status.iter().find(|j| j["name"] == *n).unwrap();
            let m = from_metrics(&body, n);
            counters.iter().all(|c| j[c].as_f64() == Some(m[c]))
        })
    });
    let get = |name: &str, c: &str| -> u64 {
        status.iter().find(|j| j["name"] == name).unwrap()[c]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no {c}"))
    };
    // What docs/daemon.md says each case counts.
    let expect = [
        // job, succeeded, failed, refused, runs failed, in a row
        ("good", 2, 0, 0, 0, 0),
        ("bad", 0, 2, 0, 2, 2),
        ("nocmd", 0, 2, 0, 2, 2),
        ("noqueue", 0, 0, 0, 1, 1),
        ("trusting", 0, 0, 1, 0, 0),
    ];
    for (name, ok_jobs, failed, refused, runs_failed, in_a_row) in expect {
        let got = (
            get(name, "jobs_succeeded"),
            get(name, "jobs_failed"),
            get(name, "jobs_refused"),
            get(name, "runs_failed"),
            get(name, "consecutive_failures"),
        );
        assert_eq!(
            got,
            (ok_jobs, failed, refused, runs_failed, in_a_row),
            "{name}: {status:?}"
        );
        assert!(get(name, "runs") >= runs_failed, "{name}");
    }
    assert_eq!(
        series(
            &body,
            "fspl_jobs_processed_total{fspl_job=\"nocmd\",result=\"not-started\"}"
        ),
        2.0,
        "{body}"
    );
    assert_eq!(
        series(
            &body,
            "fspl_jobs_processed_total{fspl_job=\"bad\",result=\"failed\"}"
        ),
        2.0
    );
    // Every series is there from the start, at zero.
    assert!(
        body.contains("fspl_jobs_refused_total{fspl_job=\"good\"} 0"),
        "{body}"
    );
    // The table shows the job counters.
    let table = String::from_utf8_lossy(
        &run(ours([
            OsStr::new("status"),
            OsStr::new("--socket"),
            d.socket.as_os_str(),
        ]))
        .stdout,
    )
    .into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect();
    // (A TYPE column, as one job is not a process job.)
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "NEXT",
            "QUEUED",
            "LAST SUCCESS",
            "OK",
            "FAILED",
            "REFUSED",
            "STATE"
        ],
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("nocmd ")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[5..8], ["0", "2", "0"], "{table}");

    // docs/daemon.md documents every status counter and every metric.
    let doc = std::fs::read_to_string(root().join("docs/daemon.md")).unwrap();
    for c in counters {
        assert!(
            doc.contains(&format!("`{c}`")),
            "docs/daemon.md lacks `{c}`"
        );
    }
    let documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `fspl_"))
        .map(|l| format!("fspl_{}", l.split(['{', '`']).next().unwrap()))
        .collect();
    let served: Vec<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .filter(|n| n.starts_with("fspl_"))
        .collect();
    for m in &served {
        assert!(documented.contains(m), "{m} is not documented");
    }
    for m in &documented {
        assert!(
            served.contains(m),
            "{m} is documented but not served: {body}"
        );
    }
    for r in ["not-started", "success", "failed"] {
        assert!(doc.contains(&format!("`{r}`")), "result {r} undocumented");
    }
    d.stop_ok();
}

// ---------------------------------------------------------------------------
// Item 8: option names in the daemon's log.

/// Regression: the daemon's log named options as `queue-process` flags
/// (`--on-error Delete`, `--allow-job-params`, `(--on-error Retry)`), which
/// a daemon user never types. Now it names them as the configuration
/// does; `queue-process` keeps its flags.
#[test]
fn daemon_log_names_options_as_the_config_spells_them() {
    let sb = Sandbox::new();
    let del = sb.queue("del");
    let params = sb.queue("params");
    let retry = sb.queue("retry");
    let d = Daemon::start(
        &sb,
        &config(
            &sb,
            "",
            &[
                process_job("del", &del, &["/bin/false"], "on_error = \"delete\""),
                process_job("params", &params, &["/bin/true"], ""),
                process_job("retry", &retry, &["/bin/false"], "max_failures = 1"),
            ],
        ),
        "logfmt",
    );
    send(&del, 1, "", &[]);
    send(&params, 1, "", &["--", "a", "b"]);
    send(&retry, 1, "", &[]);
    wait_soon("the three jobs", || {
        nextseq(&del) == 2 && nextseq(&params) == 2 && d.state("retry") == "error"
    });
    let log = d.stop_ok();
    assert!(
        log.contains("moving on (on_error = \\\"delete\\\")"),
        "{log}"
    );
    assert!(log.contains("because allow_job_params is false"), "{log}");
    assert!(
        log.contains("stopped with the job left in the queue (on_error = \\\"retry\\\")"),
        "{log}"
    );
    for flag in ["--on-error", "--allow-job-params", "--trust", "--identity"] {
        assert!(!log.contains(flag), "{flag} in the daemon log: {log}");
    }
    // queue-process still names its flags.
    send(&params, 2, "", &["--", "c"]);
    let out = run(ours([
        OsStr::new("queue-process"),
        OsStr::new("-q"),
        params.as_os_str(),
        OsStr::new("/bin/true"),
    ]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-job-params was not given"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Item 9: why filesystem events are unavailable.

/// Regression: with too few file descriptors the daemon said only
/// "filesystem events unavailable; every queue polls" with "Too many open
/// files". Now it says which limit ran out and how to raise it. Provoked
/// with a tiny RLIMIT_NOFILE (soft and hard: the daemon raises the soft
/// limit to the hard one), found by trying limits upwards.
#[test]
fn filesystem_events_unavailable_says_which_limit_to_raise() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let qd = sb.queue("q");
    let conf = sb.path("daemon.toml");
    std::fs::write(
        &conf,
        config(&sb, "", &[process_job("q", &qd, &["/bin/true"], "")]),
    )
    .unwrap();
    let mut found = None;
    let mut tried = Vec::new();
    for limit in 4..64u64 {
        let log = sb.path(format!("daemon-{limit}.log"));
        let mut cmd = fspl();
        cmd.arg("daemon")
            .arg("-c")
            .arg(&conf)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        // SAFETY: only setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + SOON;
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let exited = child.try_wait().unwrap().is_some();
            if exited
                || text.contains("filesystem events unavailable")
                || text.contains("fspl daemon started")
            {
                // Whatever came after.
                std::thread::sleep(Duration::from_millis(100));
                break std::fs::read_to_string(&log).unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "daemon with {limit} fds: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(sb.path("d.sock"));
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("filesystem events unavailable"))
        {
            found = Some(line.to_string());
            break;
        }
        tried.push((limit, text.clone()));
        if text.contains("fspl daemon started") {
            break;
        }
    }
    let line = found.unwrap_or_else(|| panic!("never provoked: {tried:?}"));
    let v: Value = serde_json::from_str(&line).unwrap();
    let msg = v["msg"].as_str().unwrap();
    eprintln!("{msg}");
    assert!(msg.contains("every queue polls"), "{msg}");
    assert!(msg.contains("RLIMIT_NOFILE"), "{msg}");
    assert!(msg.contains("LimitNOFILE="), "{msg}");
    assert!(!msg.contains("max_user_instances"), "{msg}");
}

// ---------------------------------------------------------------------------
// The documentation.

/// docs/daemon.md's "Try it" section runs as written in a fresh home, its
/// daemon in the background, and shows what it promises.
#[test]
fn daemon_doc_try_it_runs_verbatim() {
    let sb = Sandbox::new();
    let out = crate::newcomer::run_doc_section(
        &sb,
        "docs/daemon.md",
        "## Try it in a scratch directory",
        &[("XDG_RUNTIME_DIR", &sb.path("run"))],
    );
    let home = sb.path("me/home");
    // The handler got both payloads, in order.
    assert_eq!(
        lines(&home.join("fspl-try/received.txt")),
        ["job 1: hello", "job 2: world"]
    );
    // The status table shown is the one printed, but for the time.
    let status = out
        .iter()
        .find(|r| r.0.contains("fspl status\n"))
        .expect("a block running fspl status");
    let doc = std::fs::read_to_string(root().join("docs/daemon.md")).unwrap();
    let shown: Vec<&str> = doc
        .lines()
        .skip_while(|l| !l.starts_with("NAME  NEXT"))
        .take(2)
        .collect();
    // The table, then grep's count.
    let printed: Vec<&str> = status.1.lines().collect();
    assert_eq!(printed.len(), 3, "{}", status.1);
    assert_eq!(printed[0], shown[0], "the header");
    let words = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .map(|w| {
                if w.len() == 20 && w.ends_with('Z') {
                    "TIME".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect()
    };
    assert_eq!(words(printed[1]), words(shown[1]), "{}", status.1);
    assert_eq!(printed[1].len(), shown[1].len(), "the columns");
}
