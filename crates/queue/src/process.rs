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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fspl_format::{DigestAlg, Extension, JobHeader, JobLocation};
use fspl_trust::TrustFile;
use tracing::{debug, warn};

use crate::bounded::too_long;
use crate::concurrent::{self, FileCheck, HashingReader, Problem, ProblemKind};
use crate::decoder::Decoder;
use crate::error::QueueError;
use crate::exec::{self, KillHandle, Outcome, Output, RunSpec, SpawnError};
use crate::failpoint::hit;
use crate::last_failure;
use crate::lease::{LeaseFeed, Leased, ReadLease, check_under_lease};
use crate::nextseq::NextSeq;
use crate::pump::{Check, Pump};
use crate::queue::{CopyError, OpenedJob, Payload, PayloadFinish, Queue};
use crate::scan::{self, JobEntry};
use crate::spool;
use crate::verify::{self, Refusal};

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
        queue_name: queue.name()?,
        sig_memo: verify::SignatureMemo::default(),
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
    queue_name: Option<String>,
    sig_memo: verify::SignatureMemo,
    /// `DIR/last-failure` exists (or may): clear it when moving on.
    failure_recorded: bool,
}

/// What vetting a job's payload decided.
enum Verdict {
    Run(Box<OpenedJob>, Plan),
    Refuse(Refusal),
    /// The payload cannot be read to the end (e.g. corrupt compression):
    /// a failed job, as if the command had failed on it.
    Fail(Outcome),
}

/// How a payload that passed reaches the command.
enum Plan {
    /// As it is: checked already, or nothing to check.
    AsIs,
    /// The job file itself; its digest is checked meanwhile (no trust file).
    CheckWhileRunning,
    /// Through a pipe from the decrypting reader, hashed on its way (no
    /// trust file; the length was checked from the file's size).
    HashOnTheWay,
    /// Checked under a read lease; fed to the command through a pipe from
    /// the leased file (`len` bytes).
    Leased(ReadLease, u64),
}

/// Why a payload is vetted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Its command is about to run.
    Run,
    /// Telling copies of one seq apart: nothing runs on it.
    Judge,
}

/// Job files by seq, built from one scan and extended by rescans.
#[derive(Default)]
struct Index {
    by_seq: HashMap<u64, Vec<OsString>>,
    seen: HashSet<OsString>,
}

impl Index {
    /// Read the directory; headers only of names not seen before. Returns
    /// how many new jobs were found.
    /// Returns how many new jobs were found, and the files named like jobs
    /// that could not be read.
    fn refresh(
        &mut self,
        queue: &Queue,
        decoder: Option<&Decoder>,
        first: bool,
    ) -> Result<(usize, Vec<scan::Skipped>), QueueError> {
        let s = scan::scan(queue, decoder, if first { None } else { Some(&self.seen) })?;
        if first {
            scan::remove_stale_temps(queue, &s.temps);
        }
        let found = s.jobs.len();
        for JobEntry { name, seq, .. } in s.jobs {
            self.seen.insert(name.clone());
            self.by_seq.entry(seq).or_default().push(name);
        }
        for sk in &s.skipped {
            self.seen.insert(sk.name.clone());
        }
        Ok((found, s.skipped))
    }

    fn ready_from(&self, mut seq: u64) -> u64 {
        let mut n = 0;
        while self.by_seq.contains_key(&seq) {
            n += 1;
            match seq.checked_add(1) {
                Some(s) => seq = s,
                None => break,
            }
        }
        n
    }

    fn later_than(&self, seq: u64) -> u64 {
        self.by_seq.keys().filter(|&&s| s > seq).count() as u64
    }
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

    fn sequence(&mut self) -> Result<Summary, ProcessError> {
        let decoder = self.opts.decoder.as_ref();
        let mut nextseq = NextSeq::open(&self.queue.nextseq_path())?;
        let mut index = Index::default();
        let (_, unreadable) = index.refresh(self.queue, decoder, true)?;
        self.refuse_unreadable(unreadable)?;
        hit("process:after-scan").map_err(QueueError::io("scan", self.queue.jobs_dir()))?;
        self.obs.planned(index.ready_from(nextseq.value()));
        loop {
            if self.limit_reached() {
                return Ok(self.summary(StopReason::MaxJobs));
            }
            if self.obs.should_stop() {
                return Ok(self.summary(StopReason::Stopped));
            }
            let seq = nextseq.value();
            let names = match index.by_seq.remove(&seq) {
                Some(n) => n,
                None => {
                    // Jobs may have arrived while we worked.
                    let (found, unreadable) = index.refresh(self.queue, decoder, false)?;
                    self.refuse_unreadable(unreadable)?;
                    if found > 0 && index.by_seq.contains_key(&seq) {
                        continue;
                    }
                    let later = index.later_than(seq);
                    debug!(seq, later, "next job not present; stopping");
                    return Ok(self.summary(if later > 0 {
                        StopReason::Gap {
                            waiting_for: seq,
                            later_present: later,
                        }
                    } else {
                        StopReason::Drained { next: Some(seq) }
                    }));
                }
            };
            let names = self.vet_candidates(seq, names)?;
            if names.is_empty() {
                // Every file with this seq was refused: wait for the real one.
                continue;
            }
            let (name, duplicates) = self.pick_among_duplicates(seq, names)?;
            let job = match self.queue.open_job(&name, decoder) {
                Ok(j) => j,
                Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    // Removed behind our back; look again.
                    index.seen.remove(&name);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if job.header.seq != seq {
                // The file was replaced since the scan; index what it is now.
                index.by_seq.entry(job.header.seq).or_default().push(name);
                job.payload.close();
                continue;
            }
            // Checked before running: a job whose successor cannot be
            // recorded would otherwise run again on every call.
            let Some(next) = seq.checked_add(1) else {
                job.payload.close();
                return Err(QueueError::SeqExhausted {
                    path: nextseq.path().to_path_buf(),
                    value: seq,
                }
                .into());
            };
            let path = self.queue.job_path(&name);
            hit("process:before-run").map_err(QueueError::io("run", &path))?;
            let header = job.header.clone();
            let outcome = match self.verify_payload(&name, job, Purpose::Run)? {
                Verdict::Run(job, plan) => self.run_job(&name, *job, plan)?,
                Verdict::Fail(outcome) => self.count(&header, &name, outcome),
                Verdict::Refuse(r) => {
                    self.refuse(&name, Some(seq), &r)?;
                    continue;
                }
            };
            hit("process:after-run").map_err(QueueError::io("record the outcome of", &path))?;
            let ok = outcome.is_success();
            if !ok && self.obs.should_stop() {
                // Killed (or failed) while shutting down: leave job and
                // nextseq as a crash would, so it simply runs again later.
                return Ok(self.summary(StopReason::Stopped));
            }
            if !ok && self.opts.on_error == OnError::Retry {
                return Err(self.failed_error(seq, &name, outcome));
            }
            nextseq.set(next)?;
            self.moved_on();
            hit("process:after-advance").map_err(QueueError::io("delete", &path))?;
            if self.should_delete(ok) {
                self.delete(&name);
                for d in &duplicates {
                    self.delete(d);
                }
            }
            hit("process:after-delete").map_err(QueueError::io("continue after", &path))?;
        }
    }

    fn timestamp(&mut self) -> Result<Summary, ProcessError> {
        let decoder = self.opts.decoder.as_ref();
        let s = scan::scan(self.queue, decoder, None)?;
        scan::remove_stale_temps(self.queue, &s.temps);
        self.refuse_unreadable(s.skipped)?;
        let mut jobs = s.jobs;
        jobs.sort_by_key(|j| j.ctime);
        self.obs.planned(jobs.len() as u64);
        for entry in jobs {
            if self.limit_reached() {
                return Ok(self.summary(StopReason::MaxJobs));
            }
            if self.obs.should_stop() {
                return Ok(self.summary(StopReason::Stopped));
            }
            let job = match self.queue.open_job(&entry.name, decoder) {
                Ok(j) => j,
                Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let seq = job.header.seq;
            if let Err(r) = self.vet_header(&job.header, &job.ext) {
                job.payload.close();
                self.refuse(&entry.name, Some(seq), &r)?;
                continue;
            }
            let header = job.header.clone();
            let outcome = match self.verify_payload(&entry.name, job, Purpose::Run)? {
                Verdict::Run(job, plan) => self.run_job(&entry.name, *job, plan)?,
                Verdict::Fail(outcome) => self.count(&header, &entry.name, outcome),
                Verdict::Refuse(r) => {
                    self.refuse(&entry.name, Some(seq), &r)?;
                    continue;
                }
            };
            let ok = outcome.is_success();
            if !ok && self.obs.should_stop() {
                return Ok(self.summary(StopReason::Stopped));
            }
            if !ok && self.opts.on_error == OnError::Retry {
                return Err(self.failed_error(seq, &entry.name, outcome));
            }
            self.moved_on();
            if self.should_delete(ok) {
                self.delete(&entry.name);
            }
        }
        Ok(self.summary(StopReason::Drained { next: None }))
    }

    fn vet_header(
        &self,
        header: &JobHeader,
        ext: &Extension,
    ) -> Result<crate::verify::Vetted, Refusal> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        verify::check_header_memo(
            header,
            ext,
            self.opts.trust.as_deref(),
            self.queue_name.as_deref(),
            self.opts.allow_job_params,
            now,
            &self.sig_memo,
        )
    }

    /// With a trust file, refuse every file of this seq whose header does
    /// not pass (so a forged copy cannot block the genuine one); returns
    /// the rest.
    fn vet_candidates(
        &mut self,
        seq: u64,
        names: Vec<OsString>,
    ) -> Result<Vec<OsString>, ProcessError> {
        if self.opts.trust.is_none() {
            return self.refuse_bad_copies(seq, names);
        }
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            let d = match self
                .queue
                .read_job_header(&name, self.opts.decoder.as_ref())
            {
                Ok(d) => d,
                Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match self.vet_header(&d.header, &d.ext) {
                Ok(_) => kept.push(name),
                Err(r) => self.refuse(&name, Some(seq), &r)?,
            }
        }
        self.refuse_bad_copies(seq, kept)
    }

    /// When several files hold this seq, refuse those whose payload does
    /// not match their header's length and digest, so that a copy with a
    /// changed payload cannot block the genuine one as "same seq, different
    /// contents"; returns the rest.
    fn refuse_bad_copies(
        &mut self,
        seq: u64,
        names: Vec<OsString>,
    ) -> Result<Vec<OsString>, ProcessError> {
        if names.len() < 2 {
            return Ok(names);
        }
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            let job = match self.queue.open_job(&name, self.opts.decoder.as_ref()) {
                Ok(j) => j,
                Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match self.verify_payload(&name, job, Purpose::Judge)? {
                Verdict::Refuse(r) => self.refuse(&name, Some(seq), &r)?,
                Verdict::Run(job, _) => {
                    job.payload.close();
                    kept.push(name);
                }
                Verdict::Fail(_) => kept.push(name),
            }
        }
        Ok(kept)
    }

    /// The trust file's name for a job's signer, if there is a trust file
    /// and it lists the key.
    fn signer_name(&self, ext: &Extension) -> Option<String> {
        let key = ext.signer?;
        let trust = self.opts.trust.as_deref()?;
        trust.sender(&key).map(|s| s.name.clone())
    }

    /// Decide how the payload of a job that promises a length or digest
    /// is checked, and check what must be checked before anything runs.
    ///
    /// - The length of a job file's payload is always checked first, from
    ///   the file's size (and an encrypted one's from the age file's size):
    ///   a file cut short or grown in transit is refused before any of it
    ///   is read.
    /// - Without a trust file the digest guards against accidental damage
    ///   only; when the command reads the payload it gets it at once and
    ///   the digest is checked meanwhile (`Plan::CheckWhileRunning`,
    ///   `Plan::HashOnTheWay`): a mismatch then fails the job.
    /// - With a trust file the command reads nothing unchecked: the job
    ///   file's payload is hashed under a read lease and fed to the command
    ///   from it (`Plan::Leased`), or, where no lease can be had, copied
    ///   while hashed; a decoded payload is copied while hashed.
    /// - Judging copies of one job (`Purpose::Judge`), or a command that
    ///   ignores the payload: hashed before, nothing copied.
    fn verify_payload(
        &mut self,
        name: &OsStr,
        mut job: OpenedJob,
        purpose: Purpose,
    ) -> Result<Verdict, ProcessError> {
        let ext = job.ext.clone();
        // The header of the file actually opened is what counts: the one
        // vetted earlier came from another open of the same name, which a
        // writer could have replaced in between.
        if self.opts.trust.is_some()
            && let Err(r) = self.vet_header(&job.header, &ext)
        {
            job.payload.close();
            return Ok(Verdict::Refuse(r));
        }
        if ext.payload_len.is_none() && ext.digest.is_none() {
            return Ok(Verdict::Run(Box::new(job), Plan::AsIs));
        }
        let alg = ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
        let path = self.queue.job_path(name);
        let declared = ext.payload_len;
        let trusted = self.opts.trust.is_some();
        // Whether the command will read the payload.
        let reads = purpose == Purpose::Run && !self.opts.ignore_payload;
        let refuse = |this: &Self, job: OpenedJob, mut r: Refusal| {
            job.payload.close();
            // With a trust file the header has passed: name its signer.
            r.sender = this.signer_name(&job.ext);
            Ok(Verdict::Refuse(r))
        };
        match &mut job.payload {
            Payload::File(f) => {
                let size = f
                    .metadata()
                    .map_err(|source| QueueError::Io {
                        action: "stat",
                        path: path.clone(),
                        source,
                    })?
                    .len()
                    .saturating_sub(job.header_len);
                if let Some(r) = concurrent::length_refusal(&ext, size) {
                    return refuse(self, job, r);
                }
                if ext.digest.is_none() {
                    // A length alone: the file's size says it all.
                    return Ok(Verdict::Run(Box::new(job), Plan::AsIs));
                }
                if reads && !trusted {
                    debug!(
                        seq = job.header.seq,
                        "payload checked while the command reads it"
                    );
                    return Ok(Verdict::Run(Box::new(job), Plan::CheckWhileRunning));
                }
                if reads {
                    // With a trust file.
                    match check_under_lease(f, job.header_len, &ext) {
                        Ok(Leased::Passed(lease, len)) => {
                            debug!(seq = job.header.seq, "payload checked under a read lease");
                            return Ok(Verdict::Run(Box::new(job), Plan::Leased(lease, len)));
                        }
                        Ok(Leased::Failed(why)) => return refuse(self, job, Refusal::new(why)),
                        Err(e) => {
                            job.payload.close();
                            return Ok(self.unreadable_payload(&ext, e, false));
                        }
                        // Copied below.
                        Ok(Leased::Unavailable) => {
                            debug!(
                                seq = job.header.seq,
                                "no read lease on the job file; copying the payload"
                            );
                        }
                    }
                } else {
                    // Nothing runs on it, or not on the payload: hash it
                    // where it is.
                    let never = AtomicBool::new(false);
                    return match concurrent::check_file_range(f, job.header_len, &ext, &never) {
                        Ok(None) => Ok(Verdict::Run(Box::new(job), Plan::AsIs)),
                        Ok(Some(why)) => refuse(self, job, Refusal::new(why)),
                        Err(e) => {
                            job.payload.close();
                            Ok(self.unreadable_payload(&ext, e, false))
                        }
                    };
                }
            }
            Payload::Stream { size, .. } => {
                if let Some(have) = *size
                    && let Some(r) = concurrent::length_refusal(&ext, have)
                {
                    return refuse(self, job, r);
                }
                if reads && !trusted && size.is_some() {
                    debug!(
                        seq = job.header.seq,
                        "payload hashed on its way to the command"
                    );
                    return Ok(Verdict::Run(Box::new(job), Plan::HashOnTheWay));
                }
            }
            Payload::Decoded { .. } => {}
        }
        let decoded = !matches!(job.payload, Payload::File(_));
        if !reads {
            // Nothing runs on it (or the command does not read it): hash
            // it, keep nothing.
            let hashed = fspl_trust::digest::hash_reader(alg, &mut job.payload_reader());
            return match hashed {
                Ok((len, digest)) => match verify::check_payload(&ext, len, &digest) {
                    Ok(()) => Ok(Verdict::Run(Box::new(job), Plan::AsIs)),
                    Err(r) => refuse(self, job, r),
                },
                Err(e) => {
                    job.payload.close();
                    Ok(self.unreadable_payload(&ext, e, decoded))
                }
            };
        }
        // The command reads a private copy, made while the payload is
        // hashed: an unlinked temporary file next to the queue. A decoded
        // stream (compressed, encrypted, -d) cannot be rewound, and decoding
        // it twice would let a swapped file feed the command bytes that were
        // never checked; with a trust file, a plain one that cannot be
        // leased is copied (or reflinked) too, so that a writer changing the
        // job file in place after the check cannot change what the command
        // reads. Never more than one byte past the header's length is read.
        let jobs_dir = self.queue.jobs_dir();
        let copied = match &mut job.payload {
            Payload::File(f) => {
                if let Err(source) = f.seek(SeekFrom::Start(job.header_len)) {
                    job.payload.close();
                    return Err(QueueError::Io {
                        action: "seek to the payload of",
                        path,
                        source,
                    }
                    .into());
                }
                spool::private_copy_of_file(jobs_dir, f, alg, declared)
            }
            other => spool::private_copy_of_stream(Some(jobs_dir), other.reader(), alg, declared),
        };
        let OpenedJob {
            header,
            header_len,
            ext,
            payload,
        } = job;
        payload.close();
        let spooled = match copied {
            Ok(s) => s,
            Err(CopyError::Read(e)) => return Ok(self.unreadable_payload(&ext, e, decoded)),
            Err(CopyError::Write(source)) => {
                return Err(QueueError::Io {
                    action: "write a private copy of the payload of",
                    path,
                    source,
                }
                .into());
            }
        };
        if let Err(mut r) = verify::check_payload(&ext, spooled.len, &spooled.digest) {
            r.sender = self.signer_name(&ext);
            return Ok(Verdict::Refuse(r));
        }
        Ok(Verdict::Run(
            Box::new(OpenedJob {
                header,
                header_len,
                ext,
                payload: Payload::File(spooled.file),
            }),
            Plan::AsIs,
        ))
    }

    /// What a payload that cannot be read to the end gets: one longer than
    /// its header says, or a compressed or encrypted one that cannot be
    /// decoded to the end (cut short, corrupt), is refused like one whose
    /// length or digest does not match (failing it would let --on-error
    /// delete move past the genuine job's seq); a plain file that cannot
    /// be read (an I/O error) fails the job.
    fn unreadable_payload(&self, ext: &Extension, e: io::Error, decoded: bool) -> Verdict {
        let reason = if let Some(t) = too_long(&e) {
            t.to_string()
        } else if decoded {
            format!(
                "payload cannot be read to the end ({e}), so its length and digest cannot be checked"
            )
        } else {
            return Verdict::Fail(Outcome::PayloadError(e.to_string()));
        };
        Verdict::Refuse(Refusal {
            reason,
            sender: self.signer_name(ext),
        })
    }

    /// With a trust file, a file named like a job that cannot be read
    /// (corrupt, truncated, undecryptable) is refused like any other bad
    /// job; without one it is skipped, as Filespooler does. Symbolic links
    /// and other non-regular files are always left alone.
    fn refuse_unreadable(&mut self, skipped: Vec<scan::Skipped>) -> Result<(), ProcessError> {
        if self.opts.trust.is_none() {
            return Ok(());
        }
        for sk in skipped {
            if !sk.regular {
                continue;
            }
            let reason = match &sk.error {
                QueueError::BadJob { source, .. } => format!("unreadable job file: {source}"),
                other => format!("unreadable job file: {}", crate::display_chain(other)),
            };
            self.refuse(
                &sk.name,
                None,
                &Refusal {
                    reason,
                    sender: None,
                },
            )?;
        }
        Ok(())
    }

    /// Move a refused job aside and say so.
    fn refuse(&mut self, name: &OsStr, seq: Option<u64>, r: &Refusal) -> Result<(), ProcessError> {
        let to = verify::reject(self.queue, name, seq, r)?;
        self.refused += 1;
        self.obs.refused(seq, name, &r.reason);
        // The seq of a file that cannot be read is unknown: "-", not 0.
        let seq_field = seq.map_or_else(|| "-".to_string(), |s| s.to_string());
        warn!(
            seq = %seq_field,
            file = %self.queue.job_path(name).display(),
            sender = r.sender.as_deref().unwrap_or("-"),
            "job refused: {}; moved to {}",
            r.reason,
            to.display()
        );
        Ok(())
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

    /// Copies of one job run once (and are all deleted after): byte-
    /// identical copies, and with a trust file copies that pass it and
    /// carry the same signed content (another compression, an extra
    /// unknown header key); the first by name runs. Copies that are not
    /// one job stop processing with an error.
    fn pick_among_duplicates(
        &self,
        seq: u64,
        mut names: Vec<OsString>,
    ) -> Result<(OsString, Vec<OsString>), ProcessError> {
        names.sort();
        let first = names.remove(0);
        let vet = self.opts.trust.as_deref().map(|t| scan::Vetting {
            allow_job_params: self.opts.allow_job_params,
            ..scan::Vetting::new(t, self.queue_name.as_deref())
        });
        scan::check_duplicates(
            self.queue,
            self.opts.decoder.as_ref(),
            seq,
            &first,
            &names,
            vet.as_ref(),
        )?;
        if !names.is_empty() {
            debug!(
                seq,
                copies = names.len() + 1,
                "copies of one job; running it once"
            );
        }
        Ok((first, names))
    }

    fn run_job(
        &mut self,
        name: &OsStr,
        job: crate::queue::OpenedJob,
        plan: Plan,
    ) -> Result<Outcome, ProcessError> {
        let seq = job.header.seq;
        let path = self.queue.job_path(name);
        let report_header = job.header.clone();
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
            header: &report_header,
            payload_bytes,
        };
        if !self.opts.allow_job_params && !self.warned_params && !job.header.params().is_empty() {
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
            job.payload.close();
            // As in Filespooler: the command's stdin is left alone (ours,
            // inherited), not redirected from /dev/null.
            (Stdio::inherit(), PayloadFinish::Nothing)
        } else {
            payload_stdio(job.payload, job.header_len, &job.ext, plan).map_err(|source| {
                QueueError::Io {
                    action: "set up the payload for",
                    path: path.clone(),
                    source,
                }
            })?
        };
        let location = JobLocation {
            queuedir: self.queue.dir().as_os_str(),
            filename: name,
        };
        let spec = RunSpec {
            command: &self.opts.command,
            args: &self.opts.args,
            header: &job.header,
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

/// The command's stdin for a payload, and what settles it afterwards.
fn payload_stdio(
    payload: Payload,
    header_len: u64,
    ext: &Extension,
    plan: Plan,
) -> io::Result<(Stdio, PayloadFinish)> {
    Ok(match (plan, payload) {
        (Plan::CheckWhileRunning, Payload::File(f)) => {
            // A descriptor of its own for the check (only `pread`: the
            // command's file position is its own business).
            let check = FileCheck::start(f.try_clone()?, header_len, ext)?;
            (Stdio::from(f), PayloadFinish::Check(check))
        }
        (Plan::HashOnTheWay, Payload::Stream { reader, what, .. }) => {
            let (pipe, pump) = Pump::start(Box::new(HashingReader::new(reader, ext)))?;
            (Stdio::from(pipe), PayloadFinish::Pump(pump, what))
        }
        (Plan::Leased(lease, len), payload) => {
            payload.close();
            let (pipe, feed) = LeaseFeed::new(lease, header_len, len)?;
            (Stdio::from(pipe), PayloadFinish::Lease(feed))
        }
        (_, payload) => payload.into_stdio()?,
    })
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
