//! `queue-status` (fspl extension): explain what a queue is waiting for.
//! Exit 0: can progress or empty; 1: blocked; 2: could not tell (error).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::process::ExitCode;

use fspl_queue::Queue;
use fspl_queue::lock::LockState;
use fspl_queue::status::{QueueStatus, State, status as analyse};
use serde::Serialize;

use crate::cli::KeyArgs;
use crate::output::{print_error, write_stdout};

pub fn status(
    dir: &OsStr,
    d: Option<&OsStr>,
    json: bool,
    keys: &KeyArgs,
) -> anyhow::Result<ExitCode> {
    let loaded =
        super::keys::identities(&keys.ids).and_then(|ids| Ok((ids, super::keys::trust(keys)?)));
    let (ids, trust) = match loaded {
        Ok(v) => v,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let q = Queue::new(dir).with_identities(ids);
    let dec = super::queue::decoder(d);
    let st = match analyse(&q, dec.as_ref(), trust.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            print_error(&e.into());
            return Ok(ExitCode::from(2));
        }
    };
    let text = if json {
        to_json(&st, false)?
    } else {
        to_text(&st, false)
    };
    write_stdout(text.as_bytes())?;
    Ok(ExitCode::from(st.exit_code()))
}

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// The state, and what needs attention: `ready: 2 jobs can run now;
/// attention: 1 unreadable file, 1 refused job in rejected/`.
fn state_text(st: &QueueStatus) -> String {
    let mut s = base_state_text(st);
    let attention = st.attention();
    if !attention.is_empty() {
        s.push_str("; attention: ");
        s.push_str(&attention.join(", "));
    }
    s
}

/// `s` as one shell word.
fn shell_word(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| s.to_string())
}

/// The two ways past a gap, with the real numbers: fill it from the sender
/// with NOP jobs, or give up on the missing seqs here.
fn hints(st: &QueueStatus) -> Vec<String> {
    let Some(g) = st.gap else {
        return Vec::new();
    };
    let dir = shell_word(&st.dir.to_string_lossy());
    let last = g.present.saturating_sub(1);
    let mut v = Vec::new();
    // A job this reader could not decrypt may be the missing one.
    if !st.encrypted.is_empty() {
        v.push(format!(
            "first give --identity: {} encrypted job{} not read, one may be seq {}",
            st.encrypted.len(),
            if st.encrypted.len() == 1 {
                " was"
            } else {
                "s were"
            },
            g.waiting_for
        ));
    }
    v.extend(if last <= g.waiting_for {
        vec![
            format!(
                "to fill the gap, send a NOP job from the sender: fspl prepare-nop --seq {}",
                g.waiting_for
            ),
            format!(
                "or give up on seq {} here: fspl queue-set-next -q {dir} {}",
                g.waiting_for, g.present
            ),
        ]
    } else {
        vec![
            format!(
                "to fill the gap, send NOP jobs from the sender: fspl prepare-nop --seq N, for N = {} to {last}",
                g.waiting_for
            ),
            format!(
                "or give up on seqs {}–{last} here: fspl queue-set-next -q {dir} {}",
                g.waiting_for, g.present
            ),
        ]
    });
    v
}

/// With a trust file: what was checked. `payloads_read`: the caller
/// (`queue-check`) read every payload.
fn trust_text(st: &QueueStatus, payloads_read: bool) -> Option<String> {
    let n = st.vetted?;
    let jobs = if n == 1 { "job" } else { "jobs" };
    Some(if payloads_read {
        format!(
            "{n} pending {jobs}: signature, sender, params and queue checked, and every payload read"
        )
    } else {
        format!(
            "{n} pending {jobs}: signature, sender, params and queue checked; payloads not read (queue-check --trust reads them)"
        )
    })
}

fn failure_time(f: &fspl_queue::last_failure::LastFailure) -> String {
    fspl_format::rfc3339_local(fspl_format::Ctime {
        secs: f.time_secs,
        nanos: 0,
    })
}

fn base_state_text(st: &QueueStatus) -> String {
    match &st.state {
        State::Empty => "idle: no jobs waiting".into(),
        State::Ready { runnable } => format!(
            "ready: {runnable} job{} can run now",
            if *runnable == 1 { "" } else { "s" }
        ),
        State::Blocked { reason } => format!("blocked: {reason}"),
        State::AppendOnly => {
            "append-only: jobs can be written and listed, not processed here".into()
        }
    }
}

fn to_text(st: &QueueStatus, payloads_read: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "queue:       {}", st.dir.display());
    let _ = writeln!(o, "state:       {}", state_text(st));
    for h in hints(st) {
        let _ = writeln!(o, "hint:        {h}");
    }
    match st.nextseq {
        Some(n) => {
            let _ = writeln!(o, "next seq:    {n}");
        }
        None => {
            let _ = writeln!(o, "next seq:    -");
        }
    }
    let span = match (st.lowest, st.highest) {
        (Some(l), Some(h)) if l == h => format!(" (seq {l})"),
        (Some(l), Some(h)) => format!(" (seqs {l}–{h})"),
        _ => String::new(),
    };
    let _ = writeln!(o, "jobs:        {}{span}", st.jobs);
    if let Some(f) = &st.last_failure {
        let _ = writeln!(
            o,
            "failed:      job {} ({}) at {}: {}; it will be retried",
            f.seq,
            lossy(&f.file),
            failure_time(f),
            f.outcome
        );
    }
    if st.below_next > 0 {
        let _ = writeln!(
            o,
            "below next:  {} (already run or skipped; never run again)",
            st.below_next
        );
    }
    if st.duplicates.is_empty() {
        let _ = writeln!(o, "duplicates:  none");
    }
    for d in &st.duplicates {
        let files: Vec<String> = d.files.iter().map(|f| lossy(f)).collect();
        let refused = d.refused.len();
        let kept = d.files.len() - refused;
        let others = match refused {
            0 => String::new(),
            1 => "; 1 other would be refused".to_string(),
            n => format!("; {n} others would be refused"),
        };
        let how = if kept == 0 {
            "every one would be refused".to_string()
        } else if !d.identical {
            "DIFFERENT contents".to_string()
        } else if kept == 1 {
            format!("1 would run{others}")
        } else if d.same_bytes {
            format!("identical (run once{others})")
        } else {
            format!("one signed job (run once{others})")
        };
        let _ = writeln!(
            o,
            "duplicates:  seq {} in {} files, {how}: {}",
            d.seq,
            d.files.len(),
            files.join(", ")
        );
    }
    for (name, err) in &st.unreadable {
        let _ = writeln!(o, "unreadable:  {}: {err}", lossy(name));
    }
    for e in &st.encrypted {
        let _ = writeln!(o, "encrypted:   {} (give --identity to read it)", lossy(e));
    }
    if let Some(t) = trust_text(st, payloads_read) {
        let _ = writeln!(o, "trust:       {t}");
    }
    for (seq, name, why) in &st.would_refuse {
        let _ = writeln!(o, "refusable:   seq {seq}, {}: {why}", lossy(name));
    }
    for (name, why) in &st.rejected {
        let _ = writeln!(o, "rejected:    {}: {why}", lossy(name));
    }
    for t in &st.temps {
        let what = match (t.stale, t.reference) {
            (false, _) => "being written",
            (true, false) => "stale, left by a killed writer (the next queue-process removes it)",
            (true, true) => "stale Filespooler temporary (not removed automatically)",
        };
        let _ = writeln!(o, "temp file:   {}: {what}", lossy(&t.name));
    }
    let lock = match st.lock {
        LockState::Free => "free".to_string(),
        LockState::Held { pid: Some(p) } => format!("held by pid {p} (being processed)"),
        LockState::Held { pid: None } => "held by another process (being processed)".into(),
        LockState::Missing => "none (append-only queue)".into(),
    };
    let _ = writeln!(o, "lock:        {lock}");
    o
}

#[derive(Serialize)]
struct Json {
    queue: String,
    state: &'static str,
    reason: Option<String>,
    summary: String,
    nextseq: Option<u64>,
    jobs: u64,
    lowest: Option<u64>,
    highest: Option<u64>,
    runnable: u64,
    below_next: u64,
    duplicates: Vec<JsonDup>,
    unreadable: Vec<JsonUnreadable>,
    temp_files: Vec<JsonTemp>,
    lock: JsonLock,
    encrypted: Vec<String>,
    would_refuse: Vec<JsonRefusal>,
    rejected: Vec<JsonRejected>,
    /// What needs a look (also at the end of `summary`).
    attention: Vec<String>,
    /// Ways past a gap (`gap`), as shown after the state.
    hints: Vec<String>,
    gap: Option<JsonGap>,
    last_failure: Option<JsonFailure>,
    /// With --trust: what was checked.
    trust: Option<JsonTrust>,
}

#[derive(Serialize)]
struct JsonGap {
    /// The missing seqs: `waiting_for` to `missing_to`.
    waiting_for: u64,
    missing_to: u64,
    /// The lowest seq present after the gap.
    present: u64,
}

#[derive(Serialize)]
struct JsonFailure {
    seq: u64,
    filename: String,
    time: String,
    time_secs: i64,
    outcome: String,
}

#[derive(Serialize)]
struct JsonTrust {
    /// Jobs at or after nextseq whose headers were checked (signature,
    /// sender, params, queue).
    headers_checked: u64,
    /// Whether their payloads were read and checked against their length
    /// and digest (`queue-check`; not `queue-status`).
    payloads_checked: bool,
}

#[derive(Serialize)]
struct JsonRefusal {
    seq: u64,
    filename: String,
    reason: String,
}

#[derive(Serialize)]
struct JsonRejected {
    filename: String,
    reason: String,
}

#[derive(Serialize)]
struct JsonDup {
    seq: u64,
    files: Vec<String>,
    /// One job, run once (byte-identical, or the same signed content).
    identical: bool,
    same_bytes: bool,
    /// Copies that would be refused rather than run.
    refused: Vec<JsonRejected>,
}

#[derive(Serialize)]
struct JsonUnreadable {
    filename: String,
    error: String,
}

#[derive(Serialize)]
struct JsonTemp {
    filename: String,
    stale: bool,
    filespooler: bool,
}

#[derive(Serialize)]
struct JsonLock {
    held: bool,
    pid: Option<u32>,
}

fn to_json(st: &QueueStatus, payloads_read: bool) -> anyhow::Result<String> {
    let (state, reason, runnable) = match &st.state {
        State::Empty => ("empty", None, 0),
        State::Ready { runnable } => ("ready", None, *runnable),
        State::Blocked { reason } => ("blocked", Some(reason.clone()), 0),
        State::AppendOnly => ("append-only", None, 0),
    };
    let doc = Json {
        queue: st.dir.display().to_string(),
        state,
        reason,
        summary: state_text(st),
        nextseq: st.nextseq,
        jobs: st.jobs,
        lowest: st.lowest,
        highest: st.highest,
        runnable,
        below_next: st.below_next,
        duplicates: st
            .duplicates
            .iter()
            .map(|d| JsonDup {
                seq: d.seq,
                files: d.files.iter().map(|f| lossy(f)).collect(),
                identical: d.identical,
                same_bytes: d.same_bytes,
                refused: d
                    .refused
                    .iter()
                    .map(|(n, r)| JsonRejected {
                        filename: lossy(n),
                        reason: r.clone(),
                    })
                    .collect(),
            })
            .collect(),
        unreadable: st
            .unreadable
            .iter()
            .map(|(n, e)| JsonUnreadable {
                filename: lossy(n),
                error: e.clone(),
            })
            .collect(),
        temp_files: st
            .temps
            .iter()
            .map(|t| JsonTemp {
                filename: lossy(&t.name),
                stale: t.stale,
                filespooler: t.reference,
            })
            .collect(),
        encrypted: st.encrypted.iter().map(|e| lossy(e)).collect(),
        would_refuse: st
            .would_refuse
            .iter()
            .map(|(seq, n, r)| JsonRefusal {
                seq: *seq,
                filename: lossy(n),
                reason: r.clone(),
            })
            .collect(),
        rejected: st
            .rejected
            .iter()
            .map(|(n, r)| JsonRejected {
                filename: lossy(n),
                reason: r.clone(),
            })
            .collect(),
        lock: match st.lock {
            LockState::Held { pid } => JsonLock { held: true, pid },
            _ => JsonLock {
                held: false,
                pid: None,
            },
        },
        attention: st.attention(),
        hints: hints(st),
        gap: st.gap.map(|g| JsonGap {
            waiting_for: g.waiting_for,
            missing_to: g.present.saturating_sub(1),
            present: g.present,
        }),
        last_failure: st.last_failure.as_ref().map(|f| JsonFailure {
            seq: f.seq,
            filename: lossy(&f.file),
            time: failure_time(f),
            time_secs: f.time_secs,
            outcome: f.outcome.clone(),
        }),
        trust: st.vetted.map(|n| JsonTrust {
            headers_checked: n,
            payloads_checked: payloads_read,
        }),
    };
    let mut s = serde_json::to_string_pretty(&doc)?;
    s.push('\n');
    Ok(s)
}

#[derive(Serialize)]
struct CheckJson {
    queue: String,
    good: u64,
    payload_bytes: u64,
    bad: Vec<JsonRefusal>,
    foreign: Vec<String>,
    stale_temps: Vec<String>,
    problems: usize,
    blocked: bool,
    status: serde_json::Value,
    repaired: Option<RepairJson>,
}

#[derive(Serialize)]
struct RepairJson {
    moved_to_corrupt: Vec<String>,
    removed_temps: Vec<String>,
}

/// `queue-check`: 0 clean, 1 problems or blocked, 2 error.
pub fn check(
    dir: &OsStr,
    d: Option<&OsStr>,
    repair: bool,
    json: bool,
    keys: &KeyArgs,
) -> anyhow::Result<ExitCode> {
    let run = || -> anyhow::Result<(fspl_queue::check::CheckReport, Option<fspl_queue::check::Repaired>)> {
        let ids = super::keys::identities(&keys.ids)?;
        let trust = super::keys::trust(keys)?;
        let q = Queue::new(dir).with_identities(ids);
        let dec = super::queue::decoder(d);
        let report = fspl_queue::check::check(&q, dec.as_ref(), trust.as_deref())?;
        if !repair {
            return Ok((report, None));
        }
        let done = fspl_queue::check::repair(&q, &report)?;
        // Look again after repairing.
        let after = fspl_queue::check::check(&q, dec.as_ref(), trust.as_deref())?;
        Ok((after, Some(done)))
    };
    let (report, repaired) = match run() {
        Ok(r) => r,
        Err(e) => {
            print_error(&e);
            return Ok(ExitCode::from(2));
        }
    };
    let out = if json {
        let doc = CheckJson {
            queue: dir.to_string_lossy().into_owned(),
            good: report.good,
            payload_bytes: report.bytes,
            bad: report
                .bad
                .iter()
                .map(|b| JsonRefusal {
                    seq: b.seq.unwrap_or(0),
                    filename: lossy(&b.name),
                    reason: b.reason.clone(),
                })
                .collect(),
            foreign: report.foreign.iter().map(|f| lossy(f)).collect(),
            stale_temps: report.stale_temps.iter().map(|f| lossy(f)).collect(),
            problems: report.problems(),
            blocked: report.blocked(),
            status: serde_json::from_str(&to_json(&report.status, true)?)?,
            repaired: repaired.as_ref().map(|r| RepairJson {
                moved_to_corrupt: r.moved.iter().map(|f| lossy(f)).collect(),
                removed_temps: r.removed_temps.iter().map(|f| lossy(f)).collect(),
            }),
        };
        let mut s = serde_json::to_string_pretty(&doc)?;
        s.push('\n');
        s
    } else {
        let mut o = String::new();
        if let Some(r) = &repaired {
            let _ = writeln!(
                o,
                "repaired:    moved {} bad file(s) to {}/corrupt/, removed {} stale temporary file(s)",
                r.moved.len(),
                dir.to_string_lossy(),
                r.removed_temps.len()
            );
        }
        let _ = writeln!(
            o,
            "checked:     {} job(s) read completely ({} payload bytes){}",
            report.good,
            report.bytes,
            if report.problems() == 0 {
                ", no problems"
            } else {
                ""
            }
        );
        for b in &report.bad {
            match b.seq {
                Some(s) => {
                    let _ = writeln!(o, "bad:         {} (seq {s}): {}", lossy(&b.name), b.reason);
                }
                None => {
                    let _ = writeln!(o, "bad:         {}: {}", lossy(&b.name), b.reason);
                }
            }
        }
        for f in &report.foreign {
            let _ = writeln!(o, "foreign:     {} (not a job, ignored)", lossy(f));
        }
        o.push_str(&to_text(&report.status, true));
        o
    };
    write_stdout(out.as_bytes())?;
    Ok(ExitCode::from(report.exit_code()))
}
