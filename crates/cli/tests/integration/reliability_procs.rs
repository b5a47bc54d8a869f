//! Process plumbing for the hostile, order and load reliability tests:
//! every command runs under a deadline (a hang is a finding, never a stuck
//! test) with its peak RSS measured by `/usr/bin/time`, and a daemon that can be
//! SIGKILLed with its whole process group.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::reliability_common::clean_fspl;

/// How a bounded run ended.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Peak resident set of fspl itself (not its children), KiB, as
    /// `/usr/bin/time -f %M` reports it (0 when not measured). Not from our
    /// own wait4: Linux carries the forking parent's high-water mark across
    /// exec, so only a small intermediate process measures the child alone.
    pub maxrss_kb: u64,
    pub timed_out: bool,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// What must hold for any command on any input: it ended by itself
    /// within its deadline, did not panic (exit 101, "panicked"), was not
    /// killed by a signal, and every stderr line is one of ours
    /// (`fspl: ...`), with at most one error line.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.timed_out {
            p.push(format!("{}: did not finish in time (hang)", self.what));
        }
        if self.code == Some(101) || self.stderr.contains("panicked") {
            p.push(format!("{}: panicked: {}", self.what, self.stderr.trim()));
        }
        if let Some(s) = self.signal.filter(|_| !self.timed_out) {
            p.push(format!("{}: killed by signal {s}", self.what));
        }
        let lines: Vec<&str> = self.stderr.lines().collect();
        if let Some(l) = lines.iter().find(|l| !l.starts_with("fspl: ")) {
            p.push(format!(
                "{}: stderr line not in fspl's one-line form: {l:?}",
                self.what
            ));
        }
        let errors = lines
            .iter()
            .filter(|l| l.starts_with("fspl: error:"))
            .count();
        if errors > 1 {
            p.push(format!(
                "{}: {errors} error lines: {}",
                self.what,
                self.stderr.trim()
            ));
        }
        if self.code.is_some_and(|c| c != 0)
            && !self.timed_out
            && errors == 0
            && self.what_expects_error_line()
        {
            p.push(format!(
                "{}: failed (exit {:?}) without an error line",
                self.what, self.code
            ));
        }
        p
    }

    fn what_expects_error_line(&self) -> bool {
        // queue-status and queue-check exit 1 for "blocked"/"problems found"
        // and say so on stdout.
        !(self.what.contains("queue-status")
            || self.what.contains("queue-check")
            || self.what.contains(" status"))
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Run `cmd` (in a process group of its own) with `input` on stdin, for at
/// most `limit`; on timeout the whole group is SIGKILLed.
pub fn run_bounded(
    what: &str,
    mut cmd: Command,
    input: Option<&[u8]>,
    limit: Duration,
) -> Finished {
    cmd.process_group(0)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let pid = child.id() as libc::pid_t;
    let writer = input.map(|data| {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let t0 = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if timed_out {
        // Leftover children of the group may hold the pipes open.
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    if std::env::var_os("FSPL_RELIABILITY_TIMING").is_some() {
        eprintln!("TIMING {:?} {what}", t0.elapsed());
    }
    let stdout = out.join().unwrap();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = (status.code(), status.signal());
    Finished {
        what: what.to_string(),
        code,
        signal,
        stdout,
        stderr,
        maxrss_kb: 0,
        timed_out,
    }
}

/// `/usr/bin/time` measures peak RSS (scripts/test installs it).
pub const TIME: &str = "/usr/bin/time";

/// `fspl queue-status -q Q --json` under a deadline.
pub fn queue_status_json(q: &Path, limit: Duration) -> Finished {
    fspl_bounded(
        [
            OsStr::new("queue-status"),
            OsStr::new("-q"),
            q.as_os_str(),
            OsStr::new("--json"),
        ],
        None,
        limit,
    )
}

/// `fspl ARGS` (clean environment) under a deadline.
pub fn fspl_bounded<I, S>(args: I, input: Option<&[u8]>, limit: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    fspl_bounded_with(args, input, limit, |_| {})
}

/// [`fspl_bounded`], with `tweak` applied to the command (the
/// `/usr/bin/time` wrapper) before it starts.
pub fn fspl_bounded_with<I, S>(
    args: I,
    input: Option<&[u8]>,
    limit: Duration,
    tweak: impl FnOnce(&mut Command),
) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let what = format!(
        "fspl {}",
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rss = tempfile::NamedTempFile::new().unwrap();
    assert!(
        Path::new(TIME).exists(),
        "{TIME} is missing (Debian package `time`; scripts/test installs it)"
    );
    let mut c = Command::new(TIME);
    c.args(["-f", "%M", "-o"])
        .arg(rss.path())
        .arg(crate::helper::fspl_bin())
        .args(&args)
        .env("TZ", "UTC");
    crate::helper::clean_env(&mut c);
    tweak(&mut c);
    let mut f = run_bounded(&what, c, input, limit);
    // "Command exited with non-zero status N" or "Command terminated by
    // signal N" may come first; the number is last.
    let report = std::fs::read_to_string(rss.path()).unwrap_or_default();
    f.maxrss_kb = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if let Some(sig) = report
        .lines()
        .find_map(|l| l.strip_prefix("Command terminated by signal "))
    {
        f.signal = sig.trim().parse().ok();
        f.code = None;
    }
    f
}

pub use crate::helper::Daemon;
/// A TOML basic string.
pub use fspl_testkit::q as toml_str;

/// A `fspl daemon -c CONFIG --log-format logfmt` (clean environment, no
/// core dumps) in a process group of its own (so a SIGKILL to the group
/// takes its running job command too, as a power cut or systemd's
/// KillMode=control-group would), stderr appended to `log`.
pub fn start_daemon(config: &Path, socket: &Path, log: &Path) -> Daemon {
    let mut cmd = clean_fspl([OsStr::new("daemon"), OsStr::new("-c"), config.as_os_str()]);
    cmd.args(["--log-format", "logfmt"]);
    let mut d = Daemon::spawn_group(&crate::helper::fspl_bin(), cmd, socket, log);
    d.config = config.to_path_buf();
    d
}

/// `[daemon]` (socket, no safety rescan, short grace) and `[[job]]` tables
/// of type process with `command`.
pub fn daemon_config(socket: &Path, jobs: &[(String, PathBuf, Vec<String>, String)]) -> String {
    let tables: Vec<String> = jobs
        .iter()
        .map(|(name, queue, command, extra)| {
            crate::helper::process_job(name, queue, command, extra)
        })
        .collect();
    crate::helper::config_text(Some(socket), "max_parallel = 8", &tables)
}

/// Lines of a file, invalid UTF-8 replaced (empty when missing).
pub fn file_lines(p: &Path) -> Vec<String> {
    std::fs::read(p)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `f` every few ms until true or `limit`; false on timeout.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Write `bytes` into `jobs/` as `queue-write` does (temporary name, then
/// rename), without spawning a process: for tests that need thousands.
pub fn drop_job(queue: &Path, bytes: &[u8]) -> String {
    let name = format!("fspl-{}.fspl", uuid::Uuid::new_v4());
    let tmp = queue.join("jobs").join(format!(".fspl-tmp-{name}"));
    let mut f = File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    std::fs::rename(&tmp, queue.join("jobs").join(&name)).unwrap();
    name
}
