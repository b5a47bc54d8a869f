//! Running a job's command: argument vector, environment, stdin, output,
//! timeout. Shared by `queue-process`, `stdin-process` and the daemon.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fspl_format::{CmdType, JobHeader, JobLocation};

/// Where the command's stdout and stderr go.
#[derive(Debug)]
pub enum Output {
    /// Inherit ours.
    Inherit,
    /// Both into this file (one open file description, so the two streams
    /// interleave in the order they were written and never overwrite each other).
    File(File),
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// NOP job, or the command exited 0.
    Success,
    /// The command exited nonzero or was killed by a signal.
    Exited(ExitStatus),
    /// The command ran past the timeout and was killed.
    TimedOut(Duration),
    /// A Fail job (a barrier): always a failure, runs nothing.
    FailJob,
    /// The job cannot be run as stored (e.g. a NUL byte in a param).
    Invalid(String),
    /// The command exited 0 but the payload reached it incomplete.
    PayloadError(String),
    /// The payload, checked while the command read it, did not match its
    /// header's length or digest (whatever the command's own status), or
    /// the job file was opened for writing while the command read it.
    PayloadCheckFailed(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// A short word for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Exited(_) => "failed",
            Outcome::TimedOut(_) => "timeout",
            Outcome::FailJob => "fail-job",
            Outcome::Invalid(_) => "invalid",
            Outcome::PayloadError(_) | Outcome::PayloadCheckFailed(_) => "payload-error",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success => f.write_str("succeeded"),
            Outcome::Exited(st) => match (st.code(), st.signal()) {
                (Some(c), _) => write!(f, "command exited with status {c}"),
                (None, Some(s)) => write!(f, "command was killed by signal {s}"),
                _ => write!(f, "command failed ({st})"),
            },
            Outcome::TimedOut(d) => {
                write!(f, "command timed out after {}s and was killed", d.as_secs())
            }
            Outcome::FailJob => f.write_str("it is a Fail job"),
            Outcome::Invalid(why) => write!(f, "job cannot be run: {why}"),
            Outcome::PayloadError(why) => write!(f, "payload incomplete: {why}"),
            Outcome::PayloadCheckFailed(why) => write!(f, "payload check failed: {why}"),
        }
    }
}

/// Everything needed to run one job.
pub struct RunSpec<'a> {
    pub command: &'a OsStr,
    pub args: &'a [OsString],
    pub header: &'a JobHeader,
    pub location: Option<JobLocation<'a>>,
    pub allow_job_params: bool,
    pub stdin: Stdio,
    pub output: Output,
    pub timeout: Option<Duration>,
}

/// Why a command could not be started at all. This is a problem of the
/// receiving side (missing program, no memory), not of the job, so it stops
/// processing whatever `--on-error` says.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {command:?}")]
pub struct SpawnError {
    pub command: String,
    #[source]
    pub source: io::Error,
}

/// A running job command.
pub struct Running {
    child: Child,
    started: Instant,
    timeout: Option<Duration>,
    handle: KillHandle,
}

/// A way to kill a job's command from elsewhere (a supervisor shutting
/// down) that never signals anything but that command: once the command
/// has been reaped its pid may belong to an unrelated process, and the
/// handle then sends nothing. Backed by a pidfd where the kernel has them
/// (a pidfd names one process, never a later one with the same pid); the
/// waiter also marks the command reaped, under the same lock as `kill`,
/// before it reaps it.
#[derive(Clone)]
pub struct KillHandle {
    inner: Arc<KillInner>,
}

struct KillInner {
    pid: u32,
    pidfd: Option<OwnedFd>,
    reaped: Mutex<bool>,
}

impl KillHandle {
    fn new(pid: u32) -> KillHandle {
        // SAFETY: plain syscall with the pid of a child nobody has reaped
        // yet (it was spawned just now); the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: pidfd_open returned a fresh descriptor that we now own.
            unsafe { OwnedFd::from_raw_fd(fd as i32) }
        });
        KillHandle {
            inner: Arc::new(KillInner {
                pid,
                pidfd,
                reaped: Mutex::new(false),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Whether the command has been reaped (or is about to be: it has
    /// exited and its waiter has it).
    pub fn reaped(&self) -> bool {
        *self.lock()
    }

    /// SIGKILL the command if it has not been reaped. Returns whether a
    /// signal was sent.
    pub fn kill(&self) -> bool {
        let reaped = self.lock();
        if *reaped {
            return false;
        }
        // SAFETY: signalling the process the pidfd names, or, without a
        // pidfd, a child that cannot have been reaped: the lock is held and
        // the waiter takes it before reaping.
        let r = unsafe {
            match &self.inner.pidfd {
                Some(fd) => libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ),
                None => libc::kill(self.inner.pid as libc::pid_t, libc::SIGKILL) as libc::c_long,
            }
        };
        r == 0
    }

    fn set_reaped(&self) {
        *self.lock() = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.inner.reaped.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Check that the job's params and env can be passed to a process at all.
fn validate(header: &JobHeader) -> Result<(), String> {
    if let CmdType::Command(cmd) = &header.cmd_type {
        // A '=' in a name is passed on as is (FSPL_SET_A=B=v is the
        // variable FSPL_SET_A with value B=v), as Filespooler does.
        for (k, v) in &cmd.env {
            if k.contains(&0) {
                return Err(format!(
                    "the name of env entry {:?} contains a NUL byte",
                    String::from_utf8_lossy(k)
                ));
            }
            if v.contains(&0) {
                return Err(format!(
                    "the value of env entry {:?} contains a NUL byte",
                    String::from_utf8_lossy(k)
                ));
            }
        }
        if let Some(i) = cmd.params.iter().position(|p| p.contains(&0)) {
            // Params always travel as FSPL_PARAM_n variables, used or not.
            return Err(format!("param {} contains a NUL byte", i + 1));
        }
    }
    Ok(())
}

/// Start a job's command. NOP and Fail jobs return their outcome at once.
pub fn start(spec: RunSpec<'_>) -> Result<Result<Running, Outcome>, SpawnError> {
    let cmd_params = match &spec.header.cmd_type {
        CmdType::Nop => return Ok(Err(Outcome::Success)),
        CmdType::Fail => return Ok(Err(Outcome::FailJob)),
        CmdType::Command(c) => &c.params,
    };
    if let Err(why) = validate(spec.header) {
        return Ok(Err(Outcome::Invalid(why)));
    }
    let mut cmd = Command::new(spec.command);
    cmd.args(spec.args);
    if spec.allow_job_params {
        cmd.args(cmd_params.iter().map(|p| OsStr::from_bytes(p)));
    }
    for (k, v) in spec.header.environment(spec.location) {
        cmd.env(OsStr::from_bytes(&k), OsStr::from_bytes(&v));
    }
    cmd.stdin(spec.stdin);
    if let Output::File(f) = spec.output {
        let err = f.try_clone().map_err(|source| SpawnError {
            command: spec.command.to_string_lossy().into_owned(),
            source,
        })?;
        cmd.stdout(f).stderr(err);
    }
    let child = cmd.spawn().map_err(|source| SpawnError {
        command: spec.command.to_string_lossy().into_owned(),
        source,
    })?;
    let handle = KillHandle::new(child.id());
    Ok(Ok(Running {
        child,
        started: Instant::now(),
        timeout: spec.timeout,
        handle,
    }))
}

/// Start a command that is not a job's (a daemon job kind's own command,
/// such as `nats-wait`'s), with the same [`KillHandle`] and waiting as a
/// job's: [`Running::wait`] reaps it, killing it at `timeout`.
pub fn spawn(cmd: &mut Command, timeout: Option<Duration>) -> io::Result<Running> {
    let child = cmd.spawn()?;
    let handle = KillHandle::new(child.id());
    Ok(Running {
        child,
        started: Instant::now(),
        timeout,
        handle,
    })
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A handle that can kill the command until it is reaped.
    pub fn handle(&self) -> KillHandle {
        self.handle.clone()
    }

    /// Wait for the command, killing it (SIGKILL, like Filespooler) when the
    /// timeout passes, and reap it. The handle is marked reaped first, so
    /// that nobody signals the pid once it may be reused.
    pub fn wait(mut self) -> io::Result<Outcome> {
        let deadline = self.timeout.map(|t| self.started + t);
        let exited = wait_exit(&self.handle, deadline)?;
        if !exited {
            self.handle.kill();
            wait_exit(&self.handle, None)?;
        }
        self.handle.set_reaped();
        let status = self.child.wait()?;
        if let (false, Some(limit)) = (exited, self.timeout) {
            return Ok(Outcome::TimedOut(limit));
        }
        Ok(if status.success() {
            Outcome::Success
        } else {
            Outcome::Exited(status)
        })
    }
}

/// Wait until the command has exited, without reaping it (so its pid stays
/// its own), or until `deadline`; false when it is still running then.
fn wait_exit(h: &KillHandle, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let nohang = if deadline.is_some() { libc::WNOHANG } else { 0 };
        // SAFETY: siginfo_t is plain data; zeroed, si_pid reads 0 unless a
        // child's state was returned.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, WNOWAIT leaves it waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                h.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | nohang,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: filled in by waitid (or still zero).
        if unsafe { info.si_pid() } != 0 {
            return Ok(true);
        }
        let Some(deadline) = deadline else {
            continue;
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let left = deadline - now;
        match &h.inner.pidfd {
            // A pidfd becomes readable when the process exits: sleep in
            // poll() with a timeout instead of polling waitid.
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(i32::MAX as u128) as i32;
                // SAFETY: one valid pollfd; the result only tells us to look again.
                unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            }
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(cmd: &mut Command, timeout: Option<Duration>) -> Running {
        let child = cmd.spawn().unwrap();
        let handle = KillHandle::new(child.id());
        Running {
            child,
            started: Instant::now(),
            timeout,
            handle,
        }
    }

    /// Once the command was reaped its pid may be reused by anyone: the
    /// handle must not signal it any more.
    #[test]
    fn a_kill_handle_signals_nothing_once_its_command_was_reaped() {
        let r = running(&mut Command::new("true"), None);
        let h = r.handle();
        assert!(!h.reaped());
        assert_eq!(r.wait().unwrap(), Outcome::Success);
        assert!(h.reaped());
        assert!(!h.kill(), "a reaped command's pid was signalled");
    }

    #[test]
    fn a_kill_handle_kills_its_running_command() {
        let r = running(Command::new("sleep").arg("30"), None);
        let h = r.handle();
        let t0 = Instant::now();
        assert!(h.kill(), "the running command was not signalled");
        match r.wait().unwrap() {
            Outcome::Exited(st) => assert_eq!(st.signal(), Some(libc::SIGKILL)),
            o => panic!("{o:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert!(!h.kill());
    }

    #[test]
    fn the_timeout_kills_and_reaps_the_command() {
        let r = running(
            Command::new("sleep").arg("30"),
            Some(Duration::from_millis(200)),
        );
        let h = r.handle();
        let t0 = Instant::now();
        assert_eq!(
            r.wait().unwrap(),
            Outcome::TimedOut(Duration::from_millis(200))
        );
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert!(h.reaped());
        // Within the timeout: the command's own status.
        let r = running(
            Command::new("sh").args(["-c", "exit 3"]),
            Some(Duration::from_secs(20)),
        );
        match r.wait().unwrap() {
            Outcome::Exited(st) => assert_eq!(st.code(), Some(3)),
            o => panic!("{o:?}"),
        }
    }
}
