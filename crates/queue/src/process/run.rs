//! Running a job: its command started with the payload on stdin, waited
//! for, and the payload settled (a command that succeeded on a payload
//! found damaged meanwhile has failed).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fspl_format::{JobHeader, JobLocation};
use tracing::{debug, warn};

use super::{Cleared, JobReport, OnError, OutputTo, PayloadUse, ProcessError, Run, Verdict};
use crate::concurrent::{Problem, ProblemKind};
use crate::error::QueueError;
use crate::exec::{self, KillHandle, Outcome, Output, RunSpec};
use crate::pump::Check;
use crate::queue::{OpenedJob, Payload, PayloadFinish};

impl Run<'_> {
    /// The job's verdict before its command runs (see [`super::JobCheck::job`]).
    fn admit(&self, name: &OsStr, job: OpenedJob) -> Result<Verdict, QueueError> {
        let usage = if self.opts.ignore_payload {
            PayloadUse::Unused
        } else {
            PayloadUse::Read
        };
        self.check.job(job, usage, &self.queue.job_path(name))
    }

    /// Check a job and run it: its outcome (counted and reported), or
    /// `None` when it was refused (moved to `rejected/`).
    pub(super) fn check_and_run(
        &mut self,
        name: &OsStr,
        job: OpenedJob,
    ) -> Result<Option<Outcome>, ProcessError> {
        let seq = job.header.seq;
        let header = job.header.clone();
        Ok(Some(match self.admit(name, job)? {
            Verdict::Run(job) => self.run_job(name, *job)?,
            Verdict::Fail(outcome) => self.count(&header, name, outcome),
            Verdict::Refuse(r) => {
                self.refuse(name, Some(seq), &r)?;
                return Ok(None);
            }
        }))
    }

    /// Run a job that passed its check (see [`Run::admit`]).
    fn run_job(&mut self, name: &OsStr, cleared: Cleared) -> Result<Outcome, ProcessError> {
        let job = &cleared.job;
        let seq = job.header.seq;
        let path = self.queue.job_path(name);
        // Kept for the reports and the command's environment: the payload
        // goes its own way.
        let header = job.header.clone();
        let payload_bytes = job.ext.payload_len.or_else(|| match &job.payload {
            Payload::File(f) => f
                .metadata()
                .ok()
                .map(|m| m.len().saturating_sub(job.header_len)),
            _ => None,
        });
        let report = JobReport {
            seq,
            name,
            header: &header,
            payload_bytes,
        };
        if !self.opts.allow_job_params && !self.warned_params && !header.params().is_empty() {
            self.warned_params = true;
            warn!(
                seq,
                "job params ignored because {} (shown once per run)",
                self.obs.option_names().params_not_allowed()
            );
        }
        self.obs.started(&report);
        let t0 = Instant::now();
        let output = match self.opts.output_to {
            OutputTo::PassBoth => Output::Inherit,
            OutputTo::SaveBoth => {
                let mut out_name = name.to_os_string();
                out_name.push(".out");
                let out_path = self.queue.job_path(&out_name);
                Output::File(open_output(&out_path).map_err(|source| QueueError::Io {
                    action: "create output file",
                    path: out_path.clone(),
                    source,
                })?)
            }
        };
        let (stdin, finish) = if self.opts.ignore_payload {
            cleared.close();
            // As in Filespooler: the command's stdin is left alone (ours,
            // inherited), not redirected from /dev/null.
            (Stdio::inherit(), PayloadFinish::Nothing)
        } else {
            cleared
                .into_stdio()
                .map_err(QueueError::io("set up the payload for", &path))?
        };
        let location = JobLocation {
            queuedir: self.queue.dir().as_os_str(),
            filename: name,
        };
        let spec = RunSpec {
            command: &self.opts.command,
            args: &self.opts.args,
            header: &header,
            location: Some(location),
            allow_job_params: self.opts.allow_job_params,
            stdin,
            output,
            timeout: self.opts.timeout,
        };
        let outcome = run_to_end(spec, finish, seq, &path, &mut |ev| match ev {
            CommandEvent::Spawned(h) => self.obs.spawned(h),
            CommandEvent::Reaped => self.obs.reaped(),
        })?;
        self.processed += 1;
        if outcome.is_success() {
            self.succeeded += 1;
        } else {
            self.failed += 1;
            if self.opts.on_error != OnError::Retry {
                let what = match self.opts.on_error {
                    OnError::Delete if !self.opts.never_delete => "deleted",
                    _ => "left in place",
                };
                warn!(seq, file = %path.display(), "job failed: {outcome}; {what}, moving on ({})", self.obs.option_names().on_error(self.opts.on_error));
            }
        }
        self.obs.finished(&report, &outcome, t0.elapsed());
        Ok(outcome)
    }
}

/// Create or truncate a job's `.out` file. A FIFO, symlink or directory
/// dropped under that name is refused instead of blocking (opening a FIFO
/// for writing waits for a reader) or being followed.
fn open_output(path: &std::path::Path) -> io::Result<File> {
    // Truncated below, once we know it is ours alone.
    #[allow(clippy::suspicious_open_options)]
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A FIFO nobody reads.
            Some(libc::ENXIO) => io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // A hard link dropped under this name would make us overwrite a file
    // elsewhere (outside the queue).
    use std::os::unix::fs::MetadataExt;
    if meta.nlink() > 1 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "has other hard links; not overwritten",
        ));
    }
    f.set_len(0)?;
    // The command writes to it: leave it an ordinary blocking descriptor.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
    Ok(f)
}

/// What happens to a job's command, for a supervisor.
enum CommandEvent<'a> {
    Spawned(&'a KillHandle),
    Reaped,
}

/// Start a job's command, wait for it, and settle its payload: a command
/// that succeeded on a payload that turned out to be cut short or corrupt
/// (a compressed job's checksum) has failed. The job is over when the
/// command has exited: what it left behind (a background process holding
/// its stdin) is not waited for, and the rest of a pumped payload is
/// checked only until the job's timeout.
fn run_to_end(
    spec: RunSpec<'_>,
    mut finish: PayloadFinish,
    seq: u64,
    path: &std::path::Path,
    on_event: &mut dyn FnMut(CommandEvent<'_>),
) -> Result<Outcome, ProcessError> {
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let outcome = match exec::start(spec) {
        Err(source) => {
            finish.finish(Check::Skip);
            return Err(ProcessError::Spawn {
                seq,
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(Err(outcome)) => outcome,
        Ok(Ok(running)) => {
            debug!(seq, pid = running.pid(), "started command");
            let handle = running.handle();
            on_event(CommandEvent::Spawned(&handle));
            finish.spawned(&handle);
            let waited = running.wait();
            on_event(CommandEvent::Reaped);
            match waited {
                Ok(o) => o,
                Err(source) => {
                    finish.finish(Check::Skip);
                    return Err(ProcessError::Wait {
                        seq,
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
    };
    let check = if outcome.is_success() {
        Check::Rest { deadline }
    } else {
        Check::Skip
    };
    Ok(match (finish.settle(check), outcome) {
        // The command may have been killed for it: whatever its status.
        (
            Some(Problem {
                why,
                kind: ProblemKind::Tampered,
            }),
            _,
        ) => Outcome::PayloadCheckFailed(why),
        (Some(p), Outcome::Success) => match p.kind {
            ProblemKind::Incomplete => Outcome::PayloadError(p.why),
            _ => Outcome::PayloadCheckFailed(p.why),
        },
        (_, outcome) => outcome,
    })
}

/// Run one job read from a stream (`stdin-process`): header already read,
/// payload on `stdin` (settled by `finish`).
pub fn run_stream_job(
    header: &JobHeader,
    stdin: Stdio,
    finish: PayloadFinish,
    command: &OsStr,
    args: &[OsString],
    allow_job_params: bool,
    timeout: Option<Duration>,
) -> Result<Outcome, ProcessError> {
    if !allow_job_params && !header.params().is_empty() {
        warn!(
            seq = header.seq,
            "job params ignored because --allow-job-params was not given"
        );
    }
    let spec = RunSpec {
        command,
        args,
        header,
        location: None,
        allow_job_params,
        stdin,
        output: Output::Inherit,
        timeout,
    };
    run_to_end(
        spec,
        finish,
        header.seq,
        std::path::Path::new("stdin"),
        &mut |_| {},
    )
}
