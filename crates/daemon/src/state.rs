//! What each configured job is doing, shared between the job tasks, the
//! control socket and the metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// A job's state, as `fspl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    /// Nothing to do; waiting for jobs to arrive.
    Idle,
    /// A command is running.
    Running { seq: u64, since: String },
    /// Sequence order: the next seq is missing; `detail` says what is here.
    Waiting { seq: u64, detail: String },
    /// Failed; retried at `retry_at` (backing off).
    Retrying {
        message: String,
        failures: u32,
        retry_at: String,
    },
    /// Stopped after repeated failures until `fspl status --clear` or a reload.
    Error { message: String },
    /// Another process (e.g. a manual queue-process) holds the queue lock.
    Locked { pid: Option<u32> },
    /// `enabled = false` in the configuration.
    Disabled,
}

impl JobState {
    pub fn describe(&self) -> String {
        match self {
            JobState::Idle => "idle".into(),
            JobState::Running { seq, since } => format!("running seq {seq} since {since}"),
            // The detail (from queue-status) usually says it all already:
            // "waiting for seq 5; seqs 6–9 present".
            JobState::Waiting { detail, .. } if detail.starts_with("waiting for seq") => {
                detail.clone()
            }
            JobState::Waiting { seq, detail } if detail.is_empty() => {
                format!("waiting for seq {seq}")
            }
            JobState::Waiting { seq, detail } => format!("waiting for seq {seq} ({detail})"),
            JobState::Retrying {
                message,
                failures,
                retry_at,
            } => format!("failed {failures}x, retrying at {retry_at}: {message}"),
            JobState::Error { message } => format!("error: {message}"),
            JobState::Locked { pid: Some(p) } => format!("locked by pid {p}"),
            JobState::Locked { pid: None } => "locked by another process".into(),
            JobState::Disabled => "disabled".into(),
        }
    }
}

/// One row of `fspl status`.
///
/// The counters count, since the daemon started (a reload keeps them, as
/// it keeps the metrics): `jobs_succeeded` and `jobs_failed` every attempt
/// to run a job (a job retried three times is three), by its result, those
/// that failed before their command could start included; `jobs_refused`
/// the jobs refused without running (moved to `rejected/`); `runs` every
/// run of the queue (one `queue-process` pass, or an attempt that could
/// not start one: its queue, trust file or identities could not be
/// loaded), `runs_failed` those that failed. `consecutive_failures` is
/// the number of failed runs in a row, since the last run that did not
/// fail (or a `--clear`, a reload, the queue's directory coming back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub queue: String,
    #[serde(flatten)]
    pub state: JobState,
    pub next_seq: Option<u64>,
    pub queued: Option<u64>,
    pub last_success: Option<String>,
    pub consecutive_failures: u32,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    #[serde(default)]
    pub jobs_refused: u64,
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub runs_failed: u64,
}

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
                },
            );
        }
    }

    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.0
            .lock()
            .map(|m| m.jobs.values().cloned().collect())
            .unwrap_or_default()
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
        let fresh = |name: &str| JobStatus {
            name: name.into(),
            kind: "process".into(),
            queue: "/q".into(),
            state: JobState::Idle,
            next_seq: None,
            queued: None,
            last_success: None,
            consecutive_failures: 0,
            jobs_succeeded: 0,
            jobs_failed: 0,
            jobs_refused: 0,
            runs: 0,
            runs_failed: 0,
        };
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
