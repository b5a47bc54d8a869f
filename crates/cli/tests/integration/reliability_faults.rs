//! Reliability suite (issue 7): a fault at every step.
//!
//! For every failpoint in `fspl_queue::failpoint::NAMES`, a real `fspl`
//! process (prepare, queue-write, queue-process, or a queue-process --trust
//! that refuses a job) is run with `FAILPOINTS=<name>=return(<action>)`:
//!
//! - `abort`: the process dies there (SIGABRT, like SIGKILL: no cleanup);
//! - `eio` / `enospc`: the step fails with that error; fspl must exit
//!   nonzero with exactly one `fspl: error: ...` line naming the error.
//!
//! After each fault the queue is checked (`Lab::check`):
//!
//! - every file under a job name is byte for byte a job that was sent, and
//!   `fspl queue-check` reports no bad file (with --trust, only the
//!   deliberately unsigned job may be "would be refused") and no
//!   conflicting duplicates;
//! - nextseq holds one valid number, never goes back, never passes the jobs
//!   sent;
//! - every acknowledged job is in jobs/ or below nextseq (already run);
//! - the run log, consecutive repeats collapsed, is exactly 1, 2, ..., M
//!   with M = nextseq - 1 (or nextseq when the job in flight ran but was
//!   not recorded, its file still present); every run got exactly its
//!   payload; only a job that was in flight at a fault runs twice;
//! - a refused job is in rejected/ and never ran; no genuine job is there.
//!
//! Then the sender recovers as the error message says (rerun, resend with
//! `prepare --seq N`, retry the write), a last unfaulted `queue-process`
//! runs, and every job must have run, in order.
//!
//! Prepare faults additionally check the sender's side: the sequence file
//! advanced exactly when the error says the number was used (the error then
//! names `--seq N` to fill the gap), and a partial job on stdout, if a
//! pipeline delivered it anyway, is reported bad by `queue-check` (its
//! payload length and digest do not match), never taken as a good job.
//!
//! Short mode (plain `cargo test`): each failpoint once (per-job ones at the
//! first and second job). Long mode (FSPL_RELIABILITY_LONG=1, as
//! scripts/reliability sets): more rounds with other payload sizes, queue
//! lengths and hit counts.
//!
//! Every reliability test prints one line to stderr:
//! `RELIABILITY|<test>|runs=<n>|faults=<n>|states=<n>|outcome=<ok|failed:N>`
//! that scripts/reliability collects into docs/reliability.md.

#![cfg(feature = "failpoints")]

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use crate::helper::*;
use crate::reliability_common::*;

/// Which command a failpoint is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// `prepare -s SEQFILE -i FILE` (the sender; seqfile:* is its commit
    /// in place, replace:* its commit when the file must be replaced, which
    /// the scenario arranges by padding the file).
    Prepare,
    /// `queue-write`.
    Write,
    /// `queue-process` over a few jobs.
    Process,
    /// `queue-process --trust` over signed jobs and one unsigned one, which
    /// it refuses (replace:* is the reason file, reject:* the move).
    Refuse,
}

fn drivers_for(point: &str) -> Vec<Driver> {
    match point.split(':').next().unwrap() {
        "prepare" | "seqfile" => vec![Driver::Prepare],
        "write" => vec![Driver::Write],
        "replace" => vec![Driver::Prepare, Driver::Refuse],
        "nextseq" | "process" => vec![Driver::Process],
        "reject" => vec![Driver::Refuse],
        // Transports: transport_dir::reliability_transport_faults_at_every_step.
        "batch" | "push" | "pull" => vec![],
        other => panic!(
            "failpoint {point}: no reliability scenario reaches the {other}:* family; \
             add one to drivers_for in reliability_faults.rs"
        ),
    }
}

/// Failpoints hit once per job of a run (so a later job can be hit too).
fn per_job(point: &str) -> bool {
    point.starts_with("nextseq:")
        || matches!(
            point,
            "process:before-run"
                | "process:after-run"
                | "process:after-advance"
                | "process:after-delete"
        )
}

/// How a faulted process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Ok,
    Aborted,
    Failed(i32),
    Other,
}

fn end_of(out: &Output) -> End {
    match (out.status.code(), out.status.signal()) {
        (Some(0), _) => End::Ok,
        (Some(c), _) => End::Failed(c),
        (None, Some(libc::SIGABRT)) => End::Aborted,
        _ => End::Other,
    }
}

/// Payload sizes for a round: small, over one 4 KiB block (so mid-copy
/// faults leave a partial file), larger.
fn sizes(rng: &mut Rng, round: u64) -> Vec<usize> {
    if round == 0 {
        return vec![300, 0, 70_000, 9_000];
    }
    (0..4)
        .map(|_| match rng.below(4) {
            0 => rng.below(100) as usize,
            1 => 4_097 + rng.below(10_000) as usize,
            2 => 20_000 + rng.below(200_000) as usize,
            _ => rng.below(4_096) as usize,
        })
        .collect()
}

/// The failpoint spec: fire `action` at hit number `hit` (0 = first).
fn spec(point: &str, action: &str, hit: u64) -> String {
    if hit == 0 {
        format!("{point}=return({action})")
    } else {
        format!("{point}={hit}*off->return({action})")
    }
}

/// The error text of an injected action, as fspl prints it (the system's
/// message, without std's ` (os error N)`).
fn errno_text(action: &str) -> &'static str {
    match action {
        "eio" => "Input/output error",
        "enospc" => "No space left on device",
        _ => "",
    }
}

/// Run one case: a fresh lab, `jobs` jobs sent, then the driver with the
/// fault; checks; recovery; final checks. Returns whether the fault fired.
/// One fault to inject into a fresh lab.
struct Case<'a> {
    point: &'a str,
    driver: Driver,
    action: &'a str,
    /// Fire at this hit of the failpoint (0 = the first).
    hit: u64,
    /// Jobs sent before the fault.
    jobs: u64,
    salt: u64,
    sizes: Vec<usize>,
}

fn run_case(case: Case, tally: &mut Tally) -> bool {
    let Case {
        point,
        driver,
        action,
        hit,
        jobs,
        salt,
        sizes,
    } = case;
    let ctx = format!("{action} at {point} (hit {hit}) via {driver:?}, {jobs} jobs");
    let mut lab = Lab::new(driver == Driver::Refuse, salt, sizes);
    let ctx = format!("{ctx} {}", lab.ctx());
    match driver {
        Driver::Refuse => {
            // 1 signed, 2 unsigned (refused), 3.. signed.
            lab.send();
            lab.send_hostile(2);
            for n in 3..=jobs.max(3) {
                let job = lab.prepare_fixed(n);
                lab.write_ok(n, &job);
            }
        }
        _ => {
            for _ in 0..jobs {
                lab.send();
            }
        }
    }
    tally.runs += 1;
    let fp = spec(point, action, hit);
    let mut p = Vec::new();

    // The faulted command.
    let (out, job_n, job_bytes) = match driver {
        Driver::Prepare => {
            if point.starts_with("replace:") {
                // A sequence file padded by hand (longer than the next
                // line) is replaced rather than advanced in place.
                let n = lab.seqfile_value();
                std::fs::write(&lab.seqfile, format!("{n}{}\n", " ".repeat(30))).unwrap();
            }
            let (n, mut c) = lab.prepare_cmd();
            c.env("FAILPOINTS", &fp);
            (run(c), n, Vec::new())
        }
        Driver::Write => {
            let (n, c) = lab.prepare_cmd();
            let job = ok(run(c));
            lab.note_sent(n, &job);
            let mut c = lab.write_cmd();
            c.env("FAILPOINTS", &fp);
            (run_with_input(c, &job), n, job)
        }
        Driver::Process | Driver::Refuse => {
            let mut c = lab.process_cmd();
            c.env("FAILPOINTS", &fp);
            (run(c), 0, Vec::new())
        }
    };
    let end = end_of(&out);
    let stderr = text(&out.stderr);
    let fired = match (action, end) {
        (_, End::Ok) => false,
        ("abort", End::Aborted) => true,
        ("abort", e) => {
            p.push(format!("expected an abort, got {e:?}: {}", stderr.trim()));
            true
        }
        (_, End::Failed(_)) => {
            let lines: Vec<&str> = stderr.lines().collect();
            if lines.len() != 1 || !lines[0].starts_with("fspl: error: ") {
                p.push(format!("expected one `fspl: error:` line, got: {stderr:?}"));
            } else if !lines[0].contains(errno_text(action)) {
                p.push(format!(
                    "the error does not name the injected fault ({}): {}",
                    errno_text(action),
                    lines[0]
                ));
            }
            true
        }
        (_, e) => {
            p.push(format!(
                "expected a one-line error, got {e:?}: {}",
                stderr.trim()
            ));
            true
        }
    };
    if !fired {
        // Not reached (e.g. a per-job point past the last job): only the
        // first hit must always fire, which the caller checks.
        return false;
    }
    tally.faults += 1;
    if driver == Driver::Refuse || driver == Driver::Process {
        lab.allow_repeat_of_in_flight();
    }
    p.extend(lab.check(tally));

    // Driver-specific checks and the sender's recovery.
    match driver {
        Driver::Prepare => {
            let n = job_n;
            let after = lab.seqfile_value();
            let hint = format!("--seq {n}");
            if after != n && after != n + 1 {
                p.push(format!("sequence file went from {n} to {after}"));
            }
            if action != "abort" {
                let says_used = stderr.contains(&hint);
                if (after == n + 1) != says_used {
                    p.push(format!(
                        "sequence file now says {after} (job {n} {}), but the error {} `{hint}`: {}",
                        if after == n + 1 { "used" } else { "not used" },
                        if says_used { "names" } else { "does not name" },
                        stderr.trim()
                    ));
                }
            }
            // Is stdout the whole job (the fault came after the last byte)?
            let want = std::fs::read(lab.payload_path(n)).unwrap();
            let complete = match fspl_format::decode(&out.stdout) {
                Ok(d) => {
                    if d.header.seq != n {
                        p.push(format!("prepare wrote seq {} instead of {n}", d.header.seq));
                    }
                    out.stdout[d.header_len as usize..] == want[..]
                }
                Err(_) => false,
            };
            if !out.stdout.is_empty()
                && !complete
                && let Some(e) = lab.partial_is_detected(&out.stdout, tally)
            {
                p.push(e);
            }
            if out.stdout.is_empty() && after == n + 1 {
                p.push(format!("seq {n} was used but nothing was written"));
            }
            if after == n {
                // Nothing used: simply prepare again.
                let m = lab.send();
                if m != n {
                    p.push(format!("the rerun used seq {m}, expected {n}"));
                }
            } else {
                if complete {
                    // Everything was written: send it.
                    lab.write_ok(n, &out.stdout);
                } else {
                    // Used but incomplete: resend it, as the error says.
                    let job = lab.prepare_fixed(n);
                    lab.write_ok(n, &job);
                }
                lab.send();
            }
        }
        Driver::Write => {
            if action != "abort" {
                let temps = std::fs::read_dir(lab.q.join("jobs"))
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".fspl-tmp-"))
                    .count();
                if temps > 0 {
                    p.push(format!(
                        "a failed queue-write left {temps} temporary file(s)"
                    ));
                }
            }
            // The sender retries the write it saw fail.
            let retry = run_with_input(lab.write_cmd(), &job_bytes);
            if retry.status.success() {
                lab.acked.insert(job_n);
            } else {
                p.push(format!(
                    "retrying the write failed: {}",
                    text(&retry.stderr)
                ));
            }
        }
        Driver::Process | Driver::Refuse => {}
    }
    p.extend(lab.check(tally));
    p.extend(lab.finish(tally));
    tally.problems(&ctx, p);
    true
}

/// Every failpoint, through every command that reaches it, with `action`.
fn sweep(test: &str, action: &str) {
    sweep_only(test, action, &[]);
}

/// Like `sweep`, over the failpoints whose names start with one of
/// `prefixes` (all when empty).
pub fn sweep_only(test: &str, action: &str, prefixes: &[&str]) {
    require_failpoints();
    let mut tally = Tally::new(test);
    let rounds = if long_mode() { 6 } else { 1 };
    let mut rng = Rng(0x5eed_0000 ^ action.len() as u64);
    let mut never_fired: BTreeSet<(String, String)> = BTreeSet::new();
    for round in 0..rounds {
        let sizes = sizes(&mut rng, round);
        let jobs = 3 + if round == 0 { 0 } else { rng.below(4) };
        for &point in fspl_queue::failpoint::NAMES {
            if !prefixes.is_empty() && !prefixes.iter().any(|p| point.starts_with(p)) {
                continue;
            }
            for driver in drivers_for(point) {
                let max_hit = match (per_job(point), long_mode()) {
                    (false, _) => 0,
                    (true, false) => 1,
                    (true, true) => jobs,
                };
                for hit in 0..=max_hit {
                    let case = Case {
                        point,
                        driver,
                        action,
                        hit,
                        jobs,
                        salt: rng.next(),
                        sizes: sizes.clone(),
                    };
                    let fired = run_case(case, &mut tally);
                    let key = (point.to_string(), format!("{driver:?}"));
                    if hit == 0 && !fired {
                        never_fired.insert(key);
                    }
                    if !fired {
                        break;
                    }
                }
            }
        }
    }
    for (point, driver) in never_fired {
        tally.failures.push(format!(
            "failpoint {point} was never reached through {driver}: the scenario no longer gets there"
        ));
    }
    tally.finish();
}

#[test]
fn reliability_abort_at_every_failpoint() {
    sweep("failpoint-abort", "abort");
}

#[test]
fn reliability_eio_at_every_failpoint() {
    sweep("failpoint-eio", "eio");
}

#[test]
fn reliability_enospc_at_every_failpoint() {
    sweep("failpoint-enospc", "enospc");
}

/// Regression: when the directory fsync after the sequence file's rename
/// failed, `prepare` said the number was not used ("discard that job, or
/// the next prepare will use seq N again") although the file already said
/// N+1: a sender who followed that advice left the receiver waiting for N
/// forever. The error must say that N is used and how to fill it. The same
/// holds for the in-place advance when its `fdatasync` fails after the
/// write (the file says N+1), and the opposite when the write itself
/// failed (the file still says N: nothing used).
#[test]
fn regression_prepare_dirsync_failure_said_discard_although_seq_was_used() {
    require_failpoints();
    for (content, point, used) in [
        // Padded: replaced, and the rename came before the failed sync.
        ("7                 \n", "replace:before-dirsync", true),
        // In place: written, then the sync failed.
        ("7\n", "seqfile:before-sync", true),
        // In place: the write failed.
        ("7\n", "seqfile:before-write", false),
    ] {
        let lab = Lab::new(false, 1, vec![10]);
        std::fs::write(&lab.seqfile, content).unwrap();
        let (n, mut c) = lab.prepare_cmd();
        assert_eq!(n, 7);
        c.env("FAILPOINTS", format!("{point}=return(eio)"));
        let line = one_line_error(run(c));
        assert_eq!(
            lab.seqfile_value(),
            if used { 8 } else { 7 },
            "{point}: {line}"
        );
        if used {
            assert!(
                line.contains("--seq 7") && !line.contains("discard"),
                "{point}: the error must say seq 7 is used and how to fill it: {line}"
            );
        } else {
            assert!(
                line.contains("discard") && !line.contains("--seq 7"),
                "{point}: the error must say seq 7 is not used: {line}"
            );
        }
    }
}
