//! What each configured job is doing, shared between the job tasks, the
//! control socket and the metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use fspl_control::{JobState, JobStatus};

/// What a job's status keeps across a restart of its task (a reload that
/// changed it, or removed it and added it back), like the metrics do.
#[derive(Clone, Debug, Default)]
struct Kept {
    last_success: Option<String>,
    jobs_succeeded: u64,
    jobs_failed: u64,
    jobs_refused: u64,
    runs: u64,
    runs_failed: u64,
    bytes: Option<u64>,
    last_success_unix: Option<i64>,
    throughput_bps: Option<u64>,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, JobStatus>,
    /// Counters of jobs whose task has gone, by name.
    kept: BTreeMap<String, Kept>,
}

#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Inner>>);

impl Registry {
    /// Add (or replace) a job's status; the counters of an earlier task of
    /// the same name carry over.
    pub fn set(&self, mut s: JobStatus) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(k) = m.kept.remove(&s.name) {
                s.last_success = k.last_success;
                s.jobs_succeeded = k.jobs_succeeded;
                s.jobs_failed = k.jobs_failed;
                s.jobs_refused = k.jobs_refused;
                s.runs = k.runs;
                s.runs_failed = k.runs_failed;
                if s.bytes.is_some() {
                    s.bytes = k.bytes.or(s.bytes);
                }
                s.lag.last_success_unix = k.last_success_unix;
                s.lag.throughput_bps = k.throughput_bps;
            }
            m.jobs.insert(s.name.clone(), s);
        }
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut m) = self.0.lock()
            && let Some(s) = m.jobs.get_mut(name)
        {
            f(s);
        }
    }

    /// Remove a job from the status; its counters are kept for a later
    /// task of the same name.
    pub fn remove(&self, name: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some(s) = m.jobs.remove(name)
        {
            m.kept.insert(
                s.name,
                Kept {
                    last_success: s.last_success,
                    jobs_succeeded: s.jobs_succeeded,
                    jobs_failed: s.jobs_failed,
                    jobs_refused: s.jobs_refused,
                    runs: s.runs,
                    runs_failed: s.runs_failed,
                    bytes: s.bytes,
                    last_success_unix: s.lag.last_success_unix,
                    throughput_bps: s.lag.throughput_bps,
                },
            );
        }
    }

    /// Recompute every job's lag as of `now`: (name, lag, queued, stale
    /// before).
    pub fn refresh_lag(&self, now: i64) -> Vec<(String, fspl_control::Lag, Option<u64>, bool)> {
        let Ok(mut m) = self.0.lock() else {
            return Vec::new();
        };
        m.jobs
            .values_mut()
            .map(|s| {
                let was = s.lag.stale;
                s.lag.refresh(now, s.queued);
                (s.name.clone(), s.lag.clone(), s.queued, was)
            })
            .collect()
    }

    /// Every job's status, each with its state in words (what a client
    /// that does not know the state shows).
    pub fn snapshot(&self) -> Vec<JobStatus> {
        let mut jobs: Vec<JobStatus> = self
            .0
            .lock()
            .map(|m| m.jobs.values().cloned().collect())
            .unwrap_or_default();
        for j in &mut jobs {
            j.description = Some(j.state.describe());
        }
        jobs
    }

    pub fn get(&self, name: &str) -> Option<JobStatus> {
        self.0.lock().ok().and_then(|m| m.jobs.get(name).cloned())
    }
}

pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    fspl_format::rfc3339_utc(fspl_format::Ctime {
        secs: d.as_secs() as i64,
        nanos: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters of a job whose task is restarted (a reload that
    /// changed it, or removed it and added it back) go on from where they
    /// were, as the metrics do; the failures in a row do not.
    #[test]
    fn counters_survive_a_restart_of_the_jobs_task() {
        let fresh = |name: &str| JobStatus::idle(name, "process", "/q".into());
        let r = Registry::default();
        r.set(fresh("a"));
        r.update("a", |s| {
            s.jobs_succeeded = 5;
            s.jobs_failed = 2;
            s.jobs_refused = 1;
            s.runs = 9;
            s.runs_failed = 2;
            s.consecutive_failures = 2;
            s.last_success = Some("t".into());
        });
        r.remove("a");
        assert!(r.get("a").is_none());
        r.set(fresh("a"));
        let s = r.get("a").unwrap();
        assert_eq!(
            (
                s.jobs_succeeded,
                s.jobs_failed,
                s.jobs_refused,
                s.runs,
                s.runs_failed
            ),
            (5, 2, 1, 9, 2)
        );
        assert_eq!(s.last_success.as_deref(), Some("t"));
        assert_eq!(s.consecutive_failures, 0);
        // Another name starts from zero.
        r.set(fresh("b"));
        assert_eq!(r.get("b").unwrap().runs, 0);
    }

    #[test]
    fn waiting_is_described_once() {
        let w = |detail: &str| {
            JobState::Waiting {
                seq: 5,
                detail: detail.into(),
            }
            .describe()
        };
        assert_eq!(
            w("waiting for seq 5; seqs 6–9 present"),
            "waiting for seq 5; seqs 6–9 present"
        );
        assert_eq!(w(""), "waiting for seq 5");
        assert_eq!(w("odd"), "waiting for seq 5 (odd)");
    }
}
