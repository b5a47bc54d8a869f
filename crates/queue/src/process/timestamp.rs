//! Timestamp order: every job, oldest first by the time it was created.

use super::{ProcessError, Run, StopReason, Summary, unless_gone};
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
            let Some(job) = unless_gone(self.queue.open_job(&entry.name, decoder))? else {
                continue;
            };
            let seq = job.header.seq;
            let Some(outcome) = self.check_and_run(&entry.name, job)? else {
                continue;
            };
            let ok = outcome.is_success();
            if !ok && let Some(end) = self.end_after_failure(seq, &entry.name, outcome)? {
                return Ok(end);
            }
            self.moved_on();
            if self.should_delete(ok) {
                self.delete(&entry.name);
            }
        }
        Ok(self.summary(StopReason::Drained { next: None }))
    }
}
