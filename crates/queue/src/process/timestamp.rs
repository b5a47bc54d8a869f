//! Timestamp order: every job, oldest first by the time it was created.

use std::io::ErrorKind;

use super::Verdict;
use super::{OnError, ProcessError, Run, StopReason, Summary};
use crate::error::QueueError;
use crate::scan;

impl Run<'_> {
    pub(super) fn timestamp(&mut self) -> Result<Summary, ProcessError> {
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
            if let Err(r) = self.check.header(&job.header, &job.ext) {
                job.payload.close();
                self.refuse(&entry.name, Some(seq), &r)?;
                continue;
            }
            let header = job.header.clone();
            let outcome = match self.admit(&entry.name, job)? {
                Verdict::Run(job) => self.run_job(&entry.name, *job)?,
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
}
