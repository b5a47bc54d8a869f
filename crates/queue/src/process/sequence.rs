//! Sequence order: the job whose seq is nextseq, then the next, until one
//! is missing (a gap, or the end).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use tracing::debug;

use super::{ProcessError, Run, StopReason, Summary, unless_gone};
use crate::decoder::Decoder;
use crate::error::QueueError;
use crate::failpoint::hit;
use crate::nextseq::NextSeq;
use crate::queue::Queue;
use crate::scan::{self, JobEntry};

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
    pub(super) fn sequence(&mut self) -> Result<Summary, ProcessError> {
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
            let Some(job) = unless_gone(self.queue.open_job(&name, decoder))? else {
                // Removed behind our back; look again.
                index.seen.remove(&name);
                continue;
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
            let Some(outcome) = self.check_and_run(&name, job)? else {
                // Refused: the genuine job of this seq may still come.
                continue;
            };
            hit("process:after-run").map_err(QueueError::io("record the outcome of", &path))?;
            let ok = outcome.is_success();
            if !ok && let Some(end) = self.end_after_failure(seq, &name, outcome)? {
                return Ok(end);
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
}
