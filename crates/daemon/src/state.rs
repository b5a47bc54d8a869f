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
}

#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<String, JobStatus>>>);

impl Registry {
    pub fn set(&self, s: JobStatus) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(s.name.clone(), s);
        }
    }

    pub fn update(&self, name: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut m) = self.0.lock()
            && let Some(s) = m.get_mut(name)
        {
            f(s);
        }
    }

    pub fn remove(&self, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(name);
        }
    }

    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<JobStatus> {
        self.0.lock().ok().and_then(|m| m.get(name).cloned())
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
