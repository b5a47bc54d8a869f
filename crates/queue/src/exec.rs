//! Running a job's command: argument vector, environment, stdin, output,
//! timeout. Shared by `queue-process`, `stdin-process` and the daemon.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
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
            Outcome::PayloadError(_) => "payload-error",
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
    Ok(Ok(Running {
        child,
        started: Instant::now(),
        timeout: spec.timeout,
    }))
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the command, killing it (SIGKILL, like Filespooler) when the
    /// timeout passes.
    pub fn wait(mut self) -> io::Result<Outcome> {
        let status = match self.timeout {
            None => self.child.wait()?,
            Some(limit) => match wait_until(&mut self.child, self.started + limit)? {
                Some(st) => st,
                None => {
                    let _ = self.child.kill();
                    self.child.wait()?;
                    return Ok(Outcome::TimedOut(limit));
                }
            },
        };
        Ok(if status.success() {
            Outcome::Success
        } else {
            Outcome::Exited(status)
        })
    }
}

/// Wait for `child` until `deadline`; `None` when it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    // A pidfd becomes readable when the process exits, so we can sleep in
    // poll() with a timeout instead of polling wait().
    // SAFETY: plain syscall with a pid we own; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let pidfd = if fd >= 0 {
        // SAFETY: pidfd_open returned a fresh descriptor that we now own.
        Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    } else {
        None
    };
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let left = deadline - now;
        match &pidfd {
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
