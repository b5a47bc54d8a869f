//! `type = "push"`: send every job of an outbox (a queue directory that is
//! pushed instead of processed) to a destination URL, as `fspl push` does,
//! as soon as a job lands in the outbox's `jobs/`. The job holds the
//! outbox's lock while it pushes: two push jobs on one outbox, or a push
//! and a process job on one queue, are refused.

use std::ops::Range;
use std::path::PathBuf;

use fspl_queue::Queue;
use fspl_transport::Location;
use fspl_transport::push::{PushOptions, push};
use tracing::info_span;

use super::{Resource, transfer};
use crate::config::{Checker, Keys, boolean, path_value};
use crate::state::JobStatus;
use crate::supervisor::{Kind, RunContext, RunReport, WatchSpec};

/// The keys of a `type = "push"` job of its own.
pub const KEYS: &[&str] = &["outbox", "to", "keep"];

/// `type = "push"`: send an outbox's jobs to `to`.
#[derive(Clone, Debug, PartialEq)]
pub struct PushJob {
    /// The outbox: a queue directory.
    pub outbox: PathBuf,
    /// Where its jobs go.
    pub to: Location,
    /// `to` as written.
    pub to_url: String,
    /// Move sent jobs to `OUTBOX/sent/` instead of deleting them.
    pub keep: bool,
}

impl PushJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> PushJob {
        c.require(k, table, l, "outbox", "\"/srv/fspl/outbox\"");
        c.require(k, table, l, "to", "\"dir:/mnt/sync/fspl\"");
        let outbox = c.get(k, "outbox", l, path_value).unwrap_or_default();
        let (to, to_url) = c
            .get(k, "to", l, transfer::url)
            .unwrap_or_else(|| (Location::Dir(PathBuf::new()), String::new()));
        let keep = c.get(k, "keep", l, boolean).unwrap_or(false);
        PushJob {
            outbox,
            to,
            to_url,
            keep,
        }
    }

    /// The outbox's lock: one push job per outbox.
    pub fn resource(&self) -> Option<Resource> {
        (!self.outbox.as_os_str().is_empty()).then(|| Resource {
            path: self.outbox.clone(),
            key: "outbox",
            shown: self.outbox.display().to_string(),
            noun: "outbox",
            what: "its lock",
        })
    }

    /// For `daemon --check`: the outbox is a queue, a `dir:` destination a
    /// directory.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.outbox.as_os_str().is_empty()
            && let Err(e) = Queue::new(&self.outbox).check_exists()
        {
            problems.push(("outbox", fspl_queue::display_chain(&e)));
        }
        if !self.to_url.is_empty()
            && let Some(why) = transfer::check_dir(&self.to)
        {
            problems.push(("to", why));
        }
        problems
    }
}

impl Kind for PushJob {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "push"
    }

    fn watched_noun(&self) -> &'static str {
        "outbox directory"
    }

    fn activity(&self) -> &'static str {
        "pushing"
    }

    fn status(&self, name: &str) -> JobStatus {
        JobStatus {
            to: Some(self.to_url.clone()),
            bytes: Some(0),
            ..JobStatus::idle(name, "push", self.outbox.display().to_string())
        }
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "push", outbox = %self.outbox.display(), to = %self.to_url)
    }

    fn init_metrics(&self, name: &str) {
        transfer::init_metrics(name, "sent");
    }

    /// A push runs as soon as a job lands in the outbox's `jobs/`.
    fn watch(&self) -> Option<WatchSpec> {
        let q = Queue::new(&self.outbox);
        let lock = q.lock_path();
        Some(WatchSpec {
            dir: q.jobs_dir().to_path_buf(),
            ready: lock.exists().then_some(lock),
        })
    }

    fn busy(&self) -> Option<String> {
        Some(format!("pushing to {}", self.to_url))
    }

    fn prepare(&self) -> Result<(), String> {
        Ok(())
    }

    fn lag_queue(&self) -> Option<std::path::PathBuf> {
        Some(self.outbox.clone())
    }

    fn run(&self, _: &(), ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let queued = || transfer::job_files(Queue::new(&self.outbox).jobs_dir());
        let report = fspl_transport::open_sink(&self.to)
            .and_then(|mut sink| push(&self.outbox, &mut *sink, &PushOptions { keep: self.keep }));
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                return RunReport {
                    outcome: transfer::setup_failure(&e),
                    next_seq: None,
                    queued: queued(),
                };
            }
        };
        transfer::count(
            ctx,
            "pushed",
            "sent",
            report.sent,
            report.bytes,
            &report.refused,
            report.elapsed,
        );
        RunReport {
            outcome: transfer::outcome(
                report.error.as_ref(),
                report.unsent,
                &report.refused,
                report.sent,
                &self.to_url,
            ),
            next_seq: None,
            queued: queued(),
        }
    }
}
