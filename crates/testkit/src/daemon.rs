//! A `fspl daemon` run as a real process (the binary is given by path, so
//! this crate needs neither the binary nor the daemon library), and the
//! config text it reads: the `[daemon]` section, `process` job tables and a
//! recording job command.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{SOON, q, wait_for};

/// How long a daemon may take to open its control socket.
const START: Duration = Duration::from_secs(60);

/// A config text: `[daemon]` with the socket at `socket` (the default when
/// None), events only (the safety rescan an hour away), a 1 s shutdown
/// grace, plus the `extra` lines; then the job tables.
pub fn config_text(socket: Option<&Path>, extra: &str, jobs: &[String]) -> String {
    let mut t = String::from("[daemon]\n");
    if let Some(s) = socket {
        t.push_str(&format!("socket = {}\n", q(s)));
    }
    t.push_str("rescan_interval = 3600\nshutdown_grace = 1\n");
    t.push_str(extra);
    t.push('\n');
    for j in jobs {
        t.push('\n');
        t.push_str(j);
    }
    t
}

/// A `[[job]]` table of type process; `command` is the argv; `extra` adds
/// key lines.
pub fn process_job<S: AsRef<str>>(name: &str, queue: &Path, command: &[S], extra: &str) -> String {
    let argv: Vec<String> = command.iter().map(|s| q(s.as_ref())).collect();
    format!(
        "[[job]]\nname = {}\ntype = \"process\"\nqueue = {}\ncommand = [{}]\n{extra}\n",
        q(name),
        q(queue),
        argv.join(", ")
    )
}

/// A `[[job]]` table of type push: `outbox` to the URL `to`.
pub fn push_job(name: &str, outbox: &Path, to: &str, extra: &str) -> String {
    format!(
        "[[job]]\nname = {}\ntype = \"push\"\noutbox = {}\nto = {}\n{extra}\n",
        q(name),
        q(outbox),
        q(to)
    )
}

/// A `[[job]]` table of type pull: the URL `from` into `queue`.
pub fn pull_job(name: &str, from: &str, queue: &Path, extra: &str) -> String {
    format!(
        "[[job]]\nname = {}\ntype = \"pull\"\nfrom = {}\nqueue = {}\n{extra}\n",
        q(name),
        q(from),
        q(queue)
    )
}

/// The `dir:` URL of a directory.
pub fn dir_url(p: &Path) -> String {
    format!("dir:{}", p.display())
}

/// A job command that appends "SEQ PAYLOAD" to `log`, then runs the shell
/// in `then` (e.g. `exec sleep 30`; may be empty).
pub fn recorder(log: &Path, then: &str) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("p=$(cat); echo \"$FSPL_SEQ $p\" >> \"$1\"; {then}"),
        "sh".into(),
        log.to_str().unwrap().into(),
    ]
}

/// `BIN daemon -c CONFIG --log-format FORMAT`, TZ=UTC.
pub fn command(bin: &Path, config: &Path, format: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("TZ", "UTC")
        .arg("daemon")
        .arg("-c")
        .arg(config)
        .args(["--log-format", format]);
    c
}

/// A running daemon process, stderr appended to a log file; killed (with
/// its process group, when it has one of its own) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// The binary `status` runs (`BIN status --socket S --json`).
    pub bin: PathBuf,
    /// The config file (empty when the caller did not say).
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    group: bool,
}

impl Daemon {
    /// Start `cmd` (a `daemon` command: stdin and stdout to /dev/null,
    /// stderr appended to `log`) and return once `socket` accepts
    /// connections; a daemon that exits first fails the test with its log.
    /// `bin` answers [`Daemon::status`].
    pub fn spawn(bin: &Path, cmd: Command, socket: &Path, log: &Path) -> Daemon {
        Daemon::launch(bin, cmd, socket, log, false)
    }

    /// [`Daemon::spawn`] in a process group of its own, so that a SIGKILL to
    /// the group ([`Daemon::kill_group`], or the drop) takes its running job
    /// commands too, as a power cut or systemd's KillMode=control-group.
    pub fn spawn_group(bin: &Path, mut cmd: Command, socket: &Path, log: &Path) -> Daemon {
        cmd.process_group(0);
        Daemon::launch(bin, cmd, socket, log, true)
    }

    fn launch(bin: &Path, mut cmd: Command, socket: &Path, log: &Path, group: bool) -> Daemon {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut d = Daemon {
            child: Some(cmd.spawn().expect("start the daemon")),
            bin: bin.to_path_buf(),
            config: PathBuf::new(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            group,
        };
        wait_for("the control socket", START, || {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({st}): {}", d.log_text());
            }
            std::os::unix::net::UnixStream::connect(&d.socket).is_ok()
        });
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait ([`SOON`]) for `needle` in the log.
    #[track_caller]
    pub fn wait_log(&self, needle: &str) {
        self.wait_for(&format!("{needle:?} in the daemon log"), || {
            self.log_text().contains(needle)
        });
    }

    /// [`wait_for`] within [`SOON`], with the daemon's log in the failure.
    #[track_caller]
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + SOON;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the daemon's log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `BIN status --socket S --json`: (the jobs, the exit code: 0, or 1
    /// when a job needs attention).
    pub fn status(&self) -> (Vec<Value>, i32) {
        let out = Command::new(&self.bin)
            .env("TZ", "UTC")
            .arg("status")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .expect("run status");
        let code = out.status.code().unwrap();
        assert!(
            code == 0 || code == 1,
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v.as_array().unwrap().clone(), code)
    }

    /// [`Daemon::status`], which must exit 0 (no job needs attention).
    #[track_caller]
    pub fn status_ok(&self) -> Vec<Value> {
        let (jobs, code) = self.status();
        assert_eq!(code, 0, "status needs attention: {jobs:?}");
        jobs
    }

    /// One job's status.
    pub fn job(&self, name: &str) -> Value {
        self.status()
            .0
            .into_iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name} in the status"))
    }

    pub fn state(&self, name: &str) -> String {
        self.job(name)["state"].as_str().unwrap().to_string()
    }

    /// Wait until every (process) job has had its first run.
    pub fn settled(&self) {
        wait_for("the first runs", SOON, || {
            self.status()
                .0
                .iter()
                .all(|j| !j["next_seq"].is_null() && j["state"] != "running")
        });
    }

    /// Send `sig` and wait ([`SOON`]) for the daemon to exit.
    pub fn stop_with(mut self, sig: libc::c_int) -> (ExitStatus, String) {
        crate::procs::signal(self.pid(), sig);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + SOON;
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not stop: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (st, self.log_text())
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// SIGTERM; the exit must be a success; the log.
    #[track_caller]
    pub fn stop_ok(self) -> String {
        let (st, log) = self.stop();
        assert!(st.success(), "daemon exit {st}: {log}");
        log
    }

    /// SIGTERM; wait (60 s) for the exit, failing as soon as the log has a
    /// line containing `never`; the log.
    pub fn stop_never_logging(mut self, never: &str) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        crate::procs::signal(child.id(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, self.log_text());
            }
            let log = self.log_text();
            if log.contains(never) || Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon logged {never:?} or did not stop: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; wait (bounded) for the exit; its code, None when it did
    /// not end in time (then the drop kills it).
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        crate::procs::signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the daemon (and its process group, when it has its own);
    /// reaped.
    pub fn kill_group(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.group {
                // SAFETY: the process group this fixture created.
                unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
