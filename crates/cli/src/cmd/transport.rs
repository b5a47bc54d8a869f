//! `push` and `pull` (fspl extensions): moving jobs between an outbox, a
//! destination or source named by URL, and a queue. The work is in
//! fspl-transport; this prints what happened and picks the exit status:
//! 0 = everything moved, 1 = some job was not (one line each), 2 = usage
//! or configuration error (a bad URL, a missing directory).

use std::ffi::OsStr;
use std::process::ExitCode;

use fspl_queue::Queue;
use fspl_transport::pull::{PullOptions, pull as do_pull};
use fspl_transport::push::{PushOptions, Refusal, push as do_push};
use fspl_transport::{Location, TransportError};
use serde::Serialize;

use crate::output::write_stdout;

/// One `fspl: error: ...` line (control characters escaped).
fn error_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "fspl: error: {}",
        fspl_queue::escape_controls(text)
    );
}

/// An error before anything moved: 2 when it is about the configuration
/// (it will not go away by itself), 1 when it may (a busy outbox).
fn setup_error(e: &TransportError) -> ExitCode {
    error_line(&fspl_queue::display_chain(e));
    if e.is_transient() {
        ExitCode::from(crate::EXIT_FAILURE)
    } else {
        ExitCode::from(crate::EXIT_USAGE)
    }
}

fn refusal_line(verb: &str, r: &Refusal) {
    let seq = r.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
    error_line(&format!("{verb}: {}{seq}: {}", r.file.display(), r.reason));
}

#[derive(Serialize)]
struct RefusalJson {
    file: String,
    seq: Option<u64>,
    reason: String,
}

fn refusals_json(r: &[Refusal]) -> Vec<RefusalJson> {
    r.iter()
        .map(|r| RefusalJson {
            file: r.file.display().to_string(),
            seq: r.seq,
            reason: r.reason.clone(),
        })
        .collect()
}

#[derive(Serialize)]
struct PushJson {
    outbox: String,
    destination: String,
    sent: u64,
    bytes: u64,
    seconds: f64,
    refused: Vec<RefusalJson>,
    unsent: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct PullJson {
    source: String,
    queue: String,
    taken: u64,
    bytes: u64,
    seconds: f64,
    refused: Vec<RefusalJson>,
    untaken: u64,
    error: Option<String>,
}

fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    write_stdout(s.as_bytes())?;
    Ok(())
}

pub fn push(outbox: &OsStr, dest: &OsStr, keep: bool, json: bool) -> anyhow::Result<ExitCode> {
    let location = match Location::parse_os(dest) {
        Ok(l) => l,
        Err(e) => return Ok(setup_error(&e)),
    };
    fspl_queue::batch::raise_fd_limit();
    let mut sink = match fspl_transport::open_sink(&location) {
        Ok(s) => s,
        Err(e) => return Ok(setup_error(&e)),
    };
    let opts = PushOptions { keep };
    let report = match do_push(std::path::Path::new(outbox), &mut *sink, &opts) {
        Ok(r) => r,
        Err(e) => return Ok(setup_error(&e)),
    };
    for r in &report.refused {
        refusal_line("not sent", r);
    }
    if let Some(e) = &report.error {
        error_line(&format!(
            "push stopped, {} job(s) not sent: {}",
            report.unsent,
            fspl_queue::display_chain(e)
        ));
    }
    tracing::info!(
        "pushed {} job(s), {} bytes, in {:.2} s to {}{}",
        report.sent,
        report.bytes,
        report.elapsed.as_secs_f64(),
        dest.to_string_lossy(),
        left(report.refused.len() as u64 + report.unsent)
    );
    if json {
        print_json(&PushJson {
            outbox: outbox.to_string_lossy().into_owned(),
            destination: dest.to_string_lossy().into_owned(),
            sent: report.sent,
            bytes: report.bytes,
            seconds: report.elapsed.as_secs_f64(),
            refused: refusals_json(&report.refused),
            unsent: report.unsent,
            error: report.error.as_ref().map(|e| fspl_queue::display_chain(e)),
        })?;
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FAILURE)
    })
}

fn left(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; {n} job(s) left behind")
    }
}

pub fn pull(src: &OsStr, queue: &OsStr, keep: bool, json: bool) -> anyhow::Result<ExitCode> {
    let location = match Location::parse_os(src) {
        Ok(l) => l,
        Err(e) => return Ok(setup_error(&e)),
    };
    fspl_queue::batch::raise_fd_limit();
    let q = Queue::new(queue);
    if let Err(e) = q.check_exists() {
        return Ok(setup_error(&e.into()));
    }
    let mut source = match fspl_transport::open_source(&location) {
        Ok(s) => s,
        Err(e) => return Ok(setup_error(&e)),
    };
    let mut report = match do_pull(&mut *source, &q, &PullOptions { keep }) {
        Ok(r) => r,
        Err(e) => return Ok(setup_error(&e)),
    };
    // A remote source lists a bounded number of jobs at a time: take
    // listings until one brings nothing.
    let mut round_took = report.taken;
    while matches!(location, Location::Remote { .. }) && report.complete() && round_took > 0 {
        match do_pull(&mut *source, &q, &PullOptions::default()) {
            Ok(mut more) => {
                round_took = more.taken;
                more.taken += report.taken;
                more.bytes += report.bytes;
                more.gone += report.gone;
                more.elapsed += report.elapsed;
                report = more;
            }
            Err(e) => {
                report.error = Some(e);
                break;
            }
        }
    }
    for r in &report.refused {
        refusal_line("not taken", r);
    }
    if let Some(e) = &report.error {
        error_line(&format!(
            "pull stopped, {} job(s) not taken: {}",
            report.untaken,
            fspl_queue::display_chain(e)
        ));
    }
    tracing::info!(
        "pulled {} job(s), {} bytes, in {:.2} s from {}{}",
        report.taken,
        report.bytes,
        report.elapsed.as_secs_f64(),
        src.to_string_lossy(),
        left(report.refused.len() as u64 + report.untaken)
    );
    if json {
        print_json(&PullJson {
            source: src.to_string_lossy().into_owned(),
            queue: queue.to_string_lossy().into_owned(),
            taken: report.taken,
            bytes: report.bytes,
            seconds: report.elapsed.as_secs_f64(),
            refused: refusals_json(&report.refused),
            untaken: report.untaken,
            error: report.error.as_ref().map(|e| fspl_queue::display_chain(e)),
        })?;
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_FAILURE)
    })
}

/// Whether a push or pull names a location whose backend lives in
/// `fspl-full` (`s3://`, `nats://`): an async SDK. A location that does
/// not parse stays here, for the usual one-line error.
pub(crate) fn needs_full(cmd: &crate::cli::Cmd) -> bool {
    let url = match cmd {
        crate::cli::Cmd::Push { dest, .. } => dest,
        crate::cli::Cmd::Pull { src, .. } => src,
        _ => return false,
    };
    cfg!(any(feature = "s3", feature = "nats"))
        && matches!(Location::parse_os(url), Ok(Location::Remote { .. }))
}
