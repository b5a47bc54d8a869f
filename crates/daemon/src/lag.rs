//! Lag and health: the age of the oldest job waiting, the bytes waiting,
//! the time since the last success, and `stale` (no success for
//! `stale_after` while jobs wait), in `fspl status` and the metrics.
//!
//! The waiting jobs are sampled after each run (on the run's blocking
//! thread); the ages and `stale` are recomputed every second (and at each
//! `fspl status`), so that they go on growing while a job is stuck.

use std::path::Path;

use fspl_queue::Queue;
use tracing::{info, warn};

use crate::state::Registry;
use crate::supervisor::unix_now;

/// The oldest waiting job's ctime (seconds since the epoch) and the bytes
/// of the waiting job files in queue (or outbox) `dir`: jobs at or after
/// `next_seq` when given, else every job. A job whose header cannot be
/// read (encrypted, encoded) counts with its file's mtime.
pub fn sample(dir: &Path, next_seq: Option<u64>) -> (Option<i64>, u64) {
    let q = Queue::new(dir);
    let Ok(scan) = fspl_queue::scan::scan(&q, None, None) else {
        return (None, 0);
    };
    let mut oldest: Option<i64> = None;
    let mut bytes = 0u64;
    let size = |name: &std::ffi::OsStr| {
        std::fs::symlink_metadata(q.job_path(name))
            .ok()
            .filter(|m| m.is_file())
    };
    for j in &scan.jobs {
        if next_seq.is_some_and(|n| j.seq < n) {
            continue;
        }
        if let Some(m) = size(&j.name) {
            bytes = bytes.saturating_add(m.len());
            oldest = Some(oldest.map_or(j.ctime.secs, |o| o.min(j.ctime.secs)));
        }
    }
    for s in &scan.skipped {
        if let Some(m) = size(&s.name) {
            use std::os::unix::fs::MetadataExt;
            bytes = bytes.saturating_add(m.len());
            oldest = Some(oldest.map_or(m.mtime(), |o| o.min(m.mtime())));
        }
    }
    (oldest, bytes)
}

pub fn set_queue_gauges(name: &str, bytes: u64) {
    metrics::gauge!("fspl_queue_bytes", "fspl_job" => name.to_string()).set(bytes as f64);
}

/// The lag metrics of a job, at zero.
pub fn init_metrics(name: &str) {
    for g in [
        "fspl_oldest_queued_age_seconds",
        "fspl_queue_bytes",
        "fspl_job_stale",
    ] {
        metrics::gauge!(g, "fspl_job" => name.to_string()).set(0.0);
    }
}

/// Recompute every job's ages and `stale` now; set the gauges; log when a
/// job becomes stale or stops being.
pub fn refresh(registry: &Registry) {
    let now = unix_now();
    for (name, lag, queued, was) in registry.refresh_lag(now) {
        let job = name.clone();
        metrics::gauge!("fspl_oldest_queued_age_seconds", "fspl_job" => job.clone())
            .set(lag.oldest_queued_age_s.unwrap_or(0) as f64);
        if let Some(s) = lag.since_success_s {
            metrics::gauge!("fspl_seconds_since_success", "fspl_job" => job.clone()).set(s as f64);
        }
        metrics::gauge!("fspl_job_stale", "fspl_job" => job).set(if lag.stale { 1.0 } else { 0.0 });
        match (was, lag.stale) {
            (false, true) => warn!(
                job = %name,
                queued = queued.unwrap_or(0),
                stale_after_s = lag.stale_after_s.unwrap_or(0),
                "job is stale: no success for {}s while jobs wait",
                lag.stale_after_s.unwrap_or(0)
            ),
            (true, false) => info!(job = %name, "job is no longer stale"),
            _ => {}
        }
    }
}
