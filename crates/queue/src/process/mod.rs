//! The processing loop of `queue-process` (and of the daemon).
//!
//! Order of steps for each job in Sequence order (docs/durability.md explains
//! what a crash between any two of them leads to):
//!
//! 1. find the file whose header says `seq == nextseq` (one directory scan
//!    per run; the directory is read again only when the next number is
//!    missing, to pick up jobs that arrived meanwhile);
//! 2. open it and read the header again (it is what will run);
//! 3. run the command with the payload on stdin and wait for it;
//! 4. on success, or on failure with `--on-error Delete|Leave`: make
//!    `nextseq = seq + 1` durable;
//! 5. then delete the job file (unless `--never-delete`, or Leave on failure).
//!
//! A crash before 4 runs the same job again next time (at-least-once); a
//! crash between 4 and 5 leaves a file whose seq is below nextseq, which is
//! never run again (`queue-status` lists it; it is not removed, because
//! `--never-delete` and `--on-error Leave` keep such files on purpose).
//!
//! Where each part lives:
//!
//! - this module: the options, the [`Observer`] hooks, the [`Summary`] and
//!   the entry point [`process`], and what every order shares (counting,
//!   recording a failure, deleting);
//! - `sequence`: Sequence order (the index of job files by seq, gaps,
//!   advancing nextseq);
//! - `timestamp`: Timestamp order;
//! - `vet`: the candidates for a seq vetted against the trust file, the
//!   choice among copies of one seq, files that cannot be read, refusing
//!   (moving to `rejected/`);
//! - `payload`: [`JobCheck`], the public check every job passes before its
//!   command runs (also used by `stdin-process`, and open to a transport's
//!   intake): the header against the trust file, the payload's length and
//!   digest checked before or while the command reads it (the spool copy,
//!   the read-lease feed, the concurrent check);
//! - `run`: starting the command, waiting for it, settling its payload
//!   (also [`run_stream_job`], for `stdin-process`).

use std::ffi::{OsStr, OsString};
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fspl_format::JobHeader;
use fspl_trust::TrustFile;
use tracing::{debug, warn};

use crate::decoder::Decoder;
use crate::error::QueueError;
use crate::exec::{KillHandle, Outcome, SpawnError};
use crate::last_failure;
use crate::queue::Queue;

mod payload;
mod run;
mod sequence;
mod timestamp;
mod vet;

pub use payload::{Cleared, JobCheck, PayloadUse, Verdict};
pub use run::run_stream_job;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrderBy {
    #[default]
    Sequence,
    Timestamp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    #[default]
    Retry,
    Delete,
    Leave,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputTo {
    #[default]
    PassBoth,
    SaveBoth,
}

/// How log messages name the options of [`ProcessOptions`]: as the
/// `queue-process` flags, or as the keys of a configuration file (the
/// daemon's). See [`Observer::option_names`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptionNames {
    /// `--on-error Delete`, `--allow-job-params`
    #[default]
    Flags,
    /// `on_error = "delete"`, `allow_job_params`
    ConfigKeys,
}

impl OptionNames {
    /// The option `on_error` set to `v`.
    pub fn on_error(self, v: OnError) -> String {
        match self {
            OptionNames::Flags => format!("--on-error {v:?}"),
            OptionNames::ConfigKeys => {
                format!("on_error = \"{}\"", format!("{v:?}").to_ascii_lowercase())
            }
        }
    }

    /// Why job params were not appended: `allow_job_params` is off.
    pub fn params_not_allowed(self) -> &'static str {
        match self {
            OptionNames::Flags => "--allow-job-params was not given",
            OptionNames::ConfigKeys => "allow_job_params is false",
        }
    }
}

/// Every `queue-process` option.
#[derive(Clone, Debug, Default)]
pub struct ProcessOptions {
    pub command: OsString,
    pub args: Vec<OsString>,
    pub decoder: Option<Decoder>,
    pub order_by: OrderBy,
    pub on_error: OnError,
    pub never_delete: bool,
    pub maxjobs: Option<u64>,
    pub output_to: OutputTo,
    pub allow_job_params: bool,
    pub ignore_payload: bool,
    pub timeout: Option<Duration>,
    /// With a trust file, every job must be signed by a listed sender (see
    /// `verify`); refused jobs are moved to `rejected/`.
    pub trust: Option<Arc<TrustFile>>,
}

/// A job as reported to an observer.
pub struct JobReport<'a> {
    pub seq: u64,
    pub name: &'a OsStr,
    pub header: &'a JobHeader,
    /// Payload size when known (the header says, or the stored file tells).
    pub payload_bytes: Option<u64>,
}

/// Hooks for progress displays, logs and metrics. All optional.
pub trait Observer {
    /// The jobs known to be ready when the run starts (Sequence order: the
    /// unbroken run from nextseq; Timestamp: all).
    fn planned(&mut self, _ready: u64) {}
    fn started(&mut self, _job: &JobReport<'_>) {}
    /// The job's command is running (not called for NOP and Fail jobs). A
    /// supervisor may keep the handle to kill it to shut down: it signals
    /// the command only until the command is reaped, never a later process
    /// that got the same pid.
    fn spawned(&mut self, _command: &KillHandle) {}
    /// The command has ended and been reaped; what remains of the job
    /// (settling its payload, recording the outcome) runs no process of its
    /// own. A supervisor should forget the command's handle now.
    fn reaped(&mut self) {}
    fn finished(&mut self, _job: &JobReport<'_>, _outcome: &Outcome, _elapsed: Duration) {}
    /// Checked between jobs: return true to end the run early (shutdown).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// A job was refused (moved to `rejected/`) without running; `seq` is
    /// unknown for a file whose header cannot be read.
    fn refused(&mut self, _seq: Option<u64>, _name: &OsStr, _reason: &str) {}
    /// How the run's log messages name options (default: as flags).
    fn option_names(&self) -> OptionNames {
        OptionNames::Flags
    }
}

/// An observer that does nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// Why a run ended without error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// No job left (Timestamp order), or none at or after nextseq.
    Drained { next: Option<u64> },
    /// Sequence order: job `waiting_for` is missing while later ones are here.
    Gap {
        waiting_for: u64,
        later_present: u64,
    },
    /// `--maxjobs` reached.
    MaxJobs,
    /// The observer asked to stop.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub processed: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Jobs refused (moved to `rejected/`) and not run.
    pub refused: u64,
    pub stop: StopReason,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("job {seq} ({}): {outcome}; stopped with the job left in the queue (--on-error Retry)", path.display())]
    JobFailed {
        seq: u64,
        path: PathBuf,
        outcome: Outcome,
        summary: Summary,
    },
    #[error("job {seq} ({})", path.display())]
    Spawn {
        seq: u64,
        path: PathBuf,
        #[source]
        source: SpawnError,
    },
    #[error("job {seq} ({}): waiting for the command", path.display())]
    Wait {
        seq: u64,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Process a queue until it is drained, blocked, or `maxjobs` is reached.
/// Takes the queue lock for the whole run.
pub fn process(
    queue: &Queue,
    opts: &ProcessOptions,
    obs: &mut dyn Observer,
) -> Result<Summary, ProcessError> {
    let _lock = queue.lock()?;
    let mut run = Run {
        queue,
        opts,
        obs,
        processed: 0,
        succeeded: 0,
        failed: 0,
        refused: 0,
        warned_params: false,
        check: JobCheck::new(opts.trust.as_deref(), queue.name()?, opts.allow_job_params)
            .spool_in(queue.jobs_dir()),
        failure_recorded: last_failure::path(queue).symlink_metadata().is_ok(),
    };
    match opts.order_by {
        OrderBy::Sequence => run.sequence(),
        OrderBy::Timestamp => run.timestamp(),
    }
}

struct Run<'a> {
    queue: &'a Queue,
    opts: &'a ProcessOptions,
    obs: &'a mut dyn Observer,
    processed: u64,
    succeeded: u64,
    failed: u64,
    refused: u64,
    warned_params: bool,
    /// The checks every job passes before it runs.
    check: JobCheck<'a>,
    /// `DIR/last-failure` exists (or may): clear it when moving on.
    failure_recorded: bool,
}

impl Run<'_> {
    fn summary(&self, stop: StopReason) -> Summary {
        Summary {
            processed: self.processed,
            succeeded: self.succeeded,
            failed: self.failed,
            refused: self.refused,
            stop,
        }
    }

    fn limit_reached(&self) -> bool {
        self.opts.maxjobs.is_some_and(|m| self.processed >= m)
    }

    /// Record an outcome reached without running the command.
    fn count(&mut self, header: &JobHeader, name: &OsStr, outcome: Outcome) -> Outcome {
        let seq = header.seq;
        let report = JobReport {
            seq,
            name,
            header,
            payload_bytes: None,
        };
        // Observers see it like any other job: started, then failed.
        self.obs.started(&report);
        self.obs.finished(&report, &outcome, Duration::ZERO);
        self.processed += 1;
        self.failed += 1;
        if self.opts.on_error != OnError::Retry {
            warn!(seq, file = %self.queue.job_path(name).display(), "job failed: {outcome}; moving on ({})", self.obs.option_names().on_error(self.opts.on_error));
        }
        outcome
    }

    /// After a job that did not succeed: the summary when the run ends
    /// here because it is shutting down (the job was killed, or failed,
    /// meanwhile: job and nextseq are left as a crash would leave them, so
    /// it simply runs again later), or the error that ends it with
    /// `--on-error retry`; `None` to move on.
    fn end_after_failure(
        &mut self,
        seq: u64,
        name: &OsStr,
        outcome: Outcome,
    ) -> Result<Option<Summary>, ProcessError> {
        if self.obs.should_stop() {
            return Ok(Some(self.summary(StopReason::Stopped)));
        }
        if self.opts.on_error == OnError::Retry {
            return Err(self.failed_error(seq, name, outcome));
        }
        Ok(None)
    }

    /// The job stays to run again (`--on-error retry`): recorded in
    /// `DIR/last-failure` for `queue-status` (best effort).
    fn failed_error(&mut self, seq: u64, name: &OsStr, outcome: Outcome) -> ProcessError {
        match last_failure::record(self.queue, seq, name, &outcome.to_string()) {
            Ok(()) => self.failure_recorded = true,
            Err(e) => {
                warn!(seq, error = %crate::display_chain(&e), "cannot record the failure for queue-status")
            }
        }
        ProcessError::JobFailed {
            seq,
            path: self.queue.job_path(name),
            outcome,
            summary: self.summary(StopReason::Drained { next: Some(seq) }),
        }
    }

    /// Processing moved past a job: a recorded failure no longer applies.
    fn moved_on(&mut self) {
        if std::mem::take(&mut self.failure_recorded)
            && let Err(e) = last_failure::clear(self.queue)
        {
            debug!(error = %crate::display_chain(&e), "cannot remove the failure record");
        }
    }

    fn should_delete(&self, ok: bool) -> bool {
        !self.opts.never_delete && (ok || self.opts.on_error == OnError::Delete)
    }

    fn delete(&self, name: &OsStr) {
        let path = self.queue.job_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot delete processed job file; it is below nextseq and will not run again")
            }
        }
    }
}

/// `None` for a job file that has gone since the directory was read (a
/// writer or another reader removed it).
fn unless_gone<T>(r: Result<T, QueueError>) -> Result<Option<T>, QueueError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
