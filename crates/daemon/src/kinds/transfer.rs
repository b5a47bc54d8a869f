//! What the `push` and `pull` kinds share: reading a URL key, telling a
//! transport error's class, counting what a run moved, and the messages
//! about refused jobs.

use std::path::Path;

use fspl_transport::push::Refusal;
use fspl_transport::{Location, TransportError};
use toml::Spanned;
use toml::de::DeValue;
use tracing::{info, warn};

use crate::config::{Bad, string};
use crate::supervisor::{FailureClass, Outcome, RunContext, unix_now};

/// A URL key (`to`, `from`): parsed now, so that a bad scheme or URL is a
/// configuration problem at its line, not a failure at run time.
pub(crate) fn url(v: &Spanned<DeValue<'_>>) -> Result<(Location, String), Bad> {
    let s = string(v)?;
    match Location::parse(&s) {
        Ok(l) => Ok((l, s)),
        Err(e) => Err((v.span(), fspl_queue::display_chain(&e))),
    }
}

/// The `result`s of `fspl_transport_jobs_total` for a kind: what moved
/// (`sent`, `taken`) and `refused`.
pub(crate) fn init_metrics(name: &str, moved: &'static str) {
    for r in [moved, "refused"] {
        metrics::counter!("fspl_transport_jobs_total", "fspl_job" => name.to_string(), "result" => r)
            .increment(0);
    }
    metrics::counter!("fspl_transport_bytes_total", "fspl_job" => name.to_string()).increment(0);
    metrics::gauge!("fspl_transport_throughput_bytes_per_second", "fspl_job" => name.to_string())
        .set(0.0);
}

/// What an error before anything moved means for the supervisor: someone
/// else holds the outbox or source (another push or pull, a manual
/// `queue-process`): locked, tried again shortly; else a failure of the
/// error's class.
pub(crate) fn setup_failure(e: &TransportError) -> Outcome {
    if let TransportError::Busy {
        source: fspl_queue::QueueError::Locked { holder, .. },
        ..
    } = e
    {
        return Outcome::Locked { pid: *holder };
    }
    Outcome::Failed {
        message: fspl_queue::display_chain(e),
        class: FailureClass::of_transport(e),
    }
}

/// Count and log what a run moved (`moved` jobs of `bytes` bytes) and
/// refused; `verb`: "pushed", "pulled".
pub(crate) fn count(
    ctx: &RunContext,
    verb: &str,
    result: &'static str,
    moved: u64,
    bytes: u64,
    refused: &[Refusal],
    elapsed: std::time::Duration,
) {
    let name = &ctx.name;
    metrics::counter!("fspl_transport_jobs_total", "fspl_job" => name.clone(), "result" => result)
        .increment(moved);
    metrics::counter!("fspl_transport_jobs_total", "fspl_job" => name.clone(), "result" => "refused")
        .increment(refused.len() as u64);
    metrics::counter!("fspl_transport_bytes_total", "fspl_job" => name.clone()).increment(bytes);
    for r in refused {
        match r.seq {
            Some(seq) => warn!(seq, file = %r.file.display(), "job refused: {}", r.reason),
            None => warn!(file = %r.file.display(), "job refused: {}", r.reason),
        }
    }
    if moved > 0 {
        info!(
            jobs = moved,
            bytes,
            duration_ms = elapsed.as_millis() as u64,
            "{verb} {moved} job{}",
            if moved == 1 { "" } else { "s" }
        );
        metrics::gauge!("fspl_last_success_timestamp_seconds", "fspl_job" => name.clone())
            .set(unix_now() as f64);
    }
    let throughput = (bytes > 0).then(|| (bytes as f64 / elapsed.as_secs_f64().max(1e-6)) as u64);
    if let Some(t) = throughput {
        metrics::gauge!("fspl_transport_throughput_bytes_per_second", "fspl_job" => name.clone())
            .set(t as f64);
    }
    for r in refused {
        ctx.hooks.fire(
            crate::hooks::Event::Refused,
            crate::hooks::Context {
                seq: r.seq,
                reason: Some(r.reason.clone()),
                file: Some(r.file.display().to_string()),
                ..Default::default()
            },
        );
    }
    let now = (moved > 0).then(crate::state::now_rfc3339);
    ctx.update(|s| {
        s.jobs_succeeded += moved;
        s.jobs_refused += refused.len() as u64;
        s.bytes = Some(s.bytes.unwrap_or(0) + bytes);
        if let Some(t) = now {
            s.last_success = Some(t);
            s.lag.last_success_unix = Some(unix_now());
        }
        if throughput.is_some() {
            s.lag.throughput_bps = throughput;
        }
    });
}

/// How a run that moved what it could ended: stopped by an error (of its
/// class), else with refused jobs (permanent: the same job would be
/// refused again), else done.
pub(crate) fn outcome(
    error: Option<&TransportError>,
    left: u64,
    refused: &[Refusal],
    moved: u64,
    whom: &str,
) -> Outcome {
    if let Some(e) = error {
        return Outcome::Failed {
            message: format!(
                "stopped with {left} job{} left: {}",
                if left == 1 { "" } else { "s" },
                fspl_queue::display_chain(e)
            ),
            class: FailureClass::of_transport(e),
        };
    }
    if let Some(first) = refused.first() {
        let seq = first.seq.map(|s| format!("job {s} ")).unwrap_or_default();
        let more = match refused.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Outcome::Failed {
            message: format!(
                "{seq}{} refused by {whom}: {}{more}; it stays where it is: remove it or fix what refuses it",
                first.file.display(),
                first.reason
            ),
            class: FailureClass::Permanent,
        };
    }
    Outcome::Done {
        worked: moved > 0,
        waiting: None,
    }
}

/// Job files in a directory (an outbox's `jobs/`), for `fspl status`.
pub(crate) fn job_files(dir: &Path) -> Option<u64> {
    let rd = std::fs::read_dir(dir).ok()?;
    Some(
        rd.flatten()
            .filter(|e| fspl_queue::classify(&e.file_name()) == fspl_queue::EntryKind::Job)
            .count() as u64,
    )
}

/// Why a `dir:` location cannot be used now (for `daemon --check`).
pub(crate) fn check_dir(l: &Location) -> Option<String> {
    let Location::Dir(p) = l else { return None };
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{}: not a directory", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{}: no such directory", p.display()))
        }
        Err(e) => Some(format!("{}: {e}", p.display())),
    }
}
