//! `fspl pull`: take every job from a [`Source`] into a local queue, and
//! remove each at the source once it is durable in the queue.
//!
//! The order, for every backend:
//!
//! 1. list the source;
//! 2. receive each job into a batch of the queue ([`Queue::batch`]: the
//!    checks of `queue-write`, a temporary per job), keeping its name when
//!    it is a job name (`fspl-*.fspl`) so that taking it again lands on
//!    the same file;
//! 3. commit the batch (one flush, the renames, one fsync of `jobs/`);
//! 4. remove the batch's jobs at the source ([`Source::remove`]: for a
//!    directory, unlink each, then one fsync of it).
//!
//! A crash before 4 completes leaves the jobs at the source, and the next
//! pull takes them again: a byte-identical copy under the same name is an
//! acknowledgement, and a copy the queue already ran is below its nextseq.
//! A job the queue will not take (not a valid job, or a different file
//! under its name) stays at the source and is reported.

use std::path::Path;
use std::time::{Duration, Instant};

use fspl_queue::batch::{Batch, Outcome};
use fspl_queue::failpoint::hit;
use fspl_queue::{EntryKind, Queue, classify};

use crate::dir::same_dir;
use crate::error::TransportError;
use crate::push::Refusal;
use crate::{RemoteJob, Source};

#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Leave the jobs at the source and remember in the queue what was
    /// taken ([`Source::keep_in`]).
    pub keep: bool,
}

/// What a pull did.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Jobs stored in the queue and removed at the source.
    pub taken: u64,
    pub bytes: u64,
    /// Jobs left at the source because the queue will not take them.
    pub refused: Vec<Refusal>,
    /// Jobs listed but neither taken nor refused (the pull stopped early).
    pub untaken: u64,
    /// Jobs that left the source by other means while the pull ran.
    pub gone: u64,
    /// What stopped the pull early, if anything.
    pub error: Option<TransportError>,
    pub elapsed: Duration,
}

impl PullReport {
    pub fn complete(&self) -> bool {
        self.error.is_none() && self.refused.is_empty() && self.untaken == 0
    }
}

/// Take every job `source` lists into `queue`. An `Err` is an error before
/// anything was taken; errors later are in the report.
pub fn pull(
    source: &mut dyn Source,
    queue: &Queue,
    opts: &PullOptions,
) -> Result<PullReport, TransportError> {
    let started = Instant::now();
    queue.check_exists()?;
    if let Some(from) = source.takes_from()
        && same_dir(from, queue.jobs_dir())
    {
        return Err(TransportError::SamePlace {
            path: from.to_path_buf(),
            what: "is the queue's own jobs/ directory; pull from another directory",
        });
    }
    if opts.keep {
        source.keep_in(queue.dir())?;
    }
    let mut batch = queue.batch()?;
    let mut report = PullReport::default();
    let jobs = source.list()?;
    let total = jobs.len() as u64;
    let result = take_all(source, &mut batch, jobs, &mut report);
    if let Err(e) = result {
        report.error = Some(e);
    }
    report.untaken = total.saturating_sub(report.taken + report.refused.len() as u64 + report.gone);
    report.elapsed = started.elapsed();
    Ok(report)
}

fn take_all(
    source: &mut dyn Source,
    batch: &mut Batch,
    jobs: Vec<RemoteJob>,
    report: &mut PullReport,
) -> Result<(), TransportError> {
    let mut in_batch: Vec<(RemoteJob, u64)> = Vec::new();
    for job in jobs {
        let from = source.describe(&job);
        let added = {
            let Some(mut reader) = source.open(&job)? else {
                report.gone += 1;
                continue;
            };
            // The source's name when it is a job name (a directory's
            // `fspl-*.fspl`), else a fresh one.
            let name = Path::new(&job.key)
                .file_name()
                .filter(|n| classify(n) == EntryKind::Job)
                .map(|n| n.to_os_string());
            let before = batch.bytes();
            let r = match &name {
                Some(n) => batch.add_named(&mut *reader, &from, n),
                None => batch.add(&mut *reader, &from),
            };
            r.map(|_| batch.bytes() - before)
        };
        match added {
            Ok(len) => in_batch.push((job, len)),
            Err(e) if e.is_refusal() => report.refused.push(Refusal {
                file: from,
                seq: None,
                reason: fspl_queue::display_chain(&e),
            }),
            Err(e) => return Err(e.into()),
        }
        if batch.is_full() {
            commit(source, batch, &mut in_batch, report)?;
        }
    }
    commit(source, batch, &mut in_batch, report)
}

/// Commit the batch, then remove what it stored at the source.
fn commit(
    source: &mut dyn Source,
    batch: &mut Batch,
    in_batch: &mut Vec<(RemoteJob, u64)>,
    report: &mut PullReport,
) -> Result<(), TransportError> {
    let jobs = std::mem::take(in_batch);
    let done = batch.commit()?;
    hit("pull:after-commit").map_err(|e| TransportError::io("sync directory", batch.dir(), e))?;
    let mut stored = Vec::new();
    let mut bytes = 0;
    let mut failed = None;
    for ((job, len), c) in jobs.into_iter().zip(done) {
        match c.outcome {
            Outcome::Stored | Outcome::AlreadyThere => {
                bytes += len;
                stored.push(job);
            }
            Outcome::Conflict => report.refused.push(Refusal {
                file: source.describe(&job),
                seq: None,
                reason: format!(
                    "a different file named {} is already in {} (not replaced)",
                    c.name.to_string_lossy(),
                    batch.dir().display()
                ),
            }),
            Outcome::Failed(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    source.remove(&stored)?;
    report.taken += stored.len() as u64;
    report.bytes += bytes;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
