//! `type = "pull"`: take every job from a source URL into a queue, as
//! `fspl pull` does: when a job appears in a `dir:` source (it is watched),
//! else (an `s3://` source) every `poll_min`..`poll_max` seconds: ×1.3
//! while runs find nothing, back to `poll_min` when one took something. The job holds its source (a
//! folder's lock, or a queue's): two pull jobs from one source are
//! refused. It does not hold the queue it fills, which a `process` job
//! runs: that is the normal set-up.

use std::ops::Range;
use std::path::PathBuf;

use fspl_queue::Queue;
use fspl_transport::Location;
use fspl_transport::pull::{PullOptions, pull};
use tracing::info_span;

use super::{Resource, transfer};
use crate::config::{Bad, Checker, Keys, boolean, path_value};
use crate::state::JobStatus;
use crate::supervisor::{Kind, RunContext, RunReport, WatchSpec};

/// The keys of a `type = "pull"` job of its own.
pub const KEYS: &[&str] = &["from", "queue", "keep"];

/// `type = "pull"`: take jobs from `from` into `queue`.
#[derive(Clone, Debug, PartialEq)]
pub struct PullJob {
    /// Where jobs are taken from.
    pub from: Location,
    /// `from` as written.
    pub from_url: String,
    /// The queue they go into.
    pub queue: PathBuf,
    /// Leave jobs at the source, remembering in the queue what was taken.
    pub keep: bool,
}

impl PullJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> PullJob {
        c.require(k, table, l, "from", "\"dir:/mnt/sync/fspl\"");
        c.require(k, table, l, "queue", "\"/srv/fspl/backups\"");
        let (from, from_url) = c
            .get(k, "from", l, |v| -> Result<_, Bad> {
                let (loc, s) = transfer::url(v)?;
                match loc {
                    Location::Dir(_) | Location::Remote { .. } => Ok((loc, s)),
                    _ => Err((
                        v.span(),
                        format!(
                            "{s:?}: only a directory (a plain path or dir:PATH), s3:// or nats:// can be pulled from; ssh:// is a destination of push jobs"
                        ),
                    )),
                }
            })
            .unwrap_or_else(|| (Location::Dir(PathBuf::new()), String::new()));
        let queue = c.get(k, "queue", l, path_value).unwrap_or_default();
        let keep = c.get(k, "keep", l, boolean).unwrap_or(false);
        PullJob {
            from,
            from_url,
            queue,
            keep,
        }
    }

    /// The source's directory, when it is one.
    fn source_dir(&self) -> Option<&PathBuf> {
        match &self.from {
            Location::Dir(p) if !p.as_os_str().is_empty() => Some(p),
            _ => None,
        }
    }

    /// The source: one pull job per source.
    pub fn resource(&self) -> Option<Resource> {
        self.source_dir().map(|p| Resource {
            path: p.clone(),
            key: "from",
            shown: self.from_url.clone(),
            noun: "source",
            what: "it",
        })
    }

    /// For `daemon --check`: a `dir:` source is a directory, the queue a
    /// queue.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.source_dir().is_some()
            && let Some(why) = transfer::check_dir(&self.from)
        {
            problems.push(("from", why));
        }
        if !self.queue.as_os_str().is_empty()
            && let Err(e) = Queue::new(&self.queue).check_exists()
        {
            problems.push(("queue", fspl_queue::display_chain(&e)));
        }
        problems
    }
}

impl Kind for PullJob {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "pull"
    }

    fn watched_noun(&self) -> &'static str {
        "source directory"
    }

    fn activity(&self) -> &'static str {
        "pulling"
    }

    fn status(&self, name: &str) -> JobStatus {
        JobStatus {
            from: Some(self.from_url.clone()),
            bytes: Some(0),
            ..JobStatus::idle(name, "pull", self.queue.display().to_string())
        }
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "pull", from = %self.from_url, queue = %self.queue.display())
    }

    fn init_metrics(&self, name: &str) {
        transfer::init_metrics(name, "taken");
    }

    /// A directory source is watched: its `jobs/` when it is a queue,
    /// else the folder itself (jobs appear there by rename).
    fn watch(&self) -> Option<WatchSpec> {
        let dir = self.source_dir()?;
        let q = Queue::new(dir);
        if q.jobs_dir().is_dir() {
            let lock = q.lock_path();
            Some(WatchSpec {
                dir: q.jobs_dir().to_path_buf(),
                ready: lock.exists().then_some(lock),
            })
        } else {
            Some(WatchSpec {
                dir: dir.clone(),
                ready: None,
            })
        }
    }

    fn busy(&self) -> Option<String> {
        Some(format!("pulling from {}", self.from_url))
    }

    fn prepare(&self) -> Result<(), String> {
        Ok(())
    }

    fn run(&self, _: &(), ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let queue = Queue::new(&self.queue);
        let report = fspl_transport::open_source(&self.from)
            .and_then(|mut source| pull(&mut *source, &queue, &PullOptions { keep: self.keep }));
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                return RunReport {
                    outcome: transfer::setup_failure(&e),
                    next_seq: None,
                    queued: None,
                };
            }
        };
        transfer::count(
            ctx,
            "pulled",
            "taken",
            report.taken,
            report.bytes,
            &report.refused,
            report.elapsed,
        );
        let left = report.untaken + report.refused.len() as u64;
        RunReport {
            outcome: transfer::outcome(
                report.error.as_ref(),
                report.untaken,
                &report.refused,
                report.taken,
                &self.queue.display().to_string(),
            ),
            next_seq: None,
            queued: Some(left),
        }
    }
}
