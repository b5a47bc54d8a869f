//! Reordering and duplicates (issue 7, part 6): jobs arrive the way a sync
//! tool delivers them, shuffled, in batches, about 10% of them twice
//! (byte-identical copies, some arriving after the original already ran);
//! `queue-process` runs after every batch. Every job must run exactly once,
//! in exact sequence order, with its own payload. The same seq with
//! different contents must be reported (queue-process's one-line error,
//! queue-status, queue-check, the daemon's status) and block: neither copy
//! runs until one is removed; nothing is guessed.
//!
//! Jobs are made in-process with fspl_format (a third carry fspl's payload
//! length and digest) and dropped into `jobs/` by rename, as queue-write
//! does, because spawning two processes per job would dominate the run.
//!
//! Environment:
//! - `FSPL_ORDER_JOBS`: jobs in the shuffled run (default 1,000; 10,000
//!   with `FSPL_RELIABILITY_LONG=1`);
//! - `FSPL_ORDER_SEED`: shuffle seed (default: changes per run; printed on
//!   failure).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use fspl_format::{CmdType, Command as JobCommand, Ctime, Digest, DigestAlg, Extension, JobHeader};
use serde_json::Value;

use crate::helper::*;
use crate::reliability_common::{Rng, Tally, long_mode};
use crate::reliability_procs::*;

const LIMIT: Duration = Duration::from_secs(600);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn seed() -> u64 {
    env_u64("FSPL_ORDER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// Job `seq` with payload "payload-SEQ-VARIANT\n"; every third carries its
/// payload length and BLAKE3 digest.
pub fn order_job(seq: u64, variant: &str) -> Vec<u8> {
    let payload = format!("payload-{seq}-{variant}\n").into_bytes();
    let h = JobHeader {
        seq,
        ctime: Ctime {
            secs: 1_700_000_000 + seq as i64,
            nanos: 7,
        },
        cmd_type: CmdType::Command(JobCommand {
            params: vec![format!("p{seq}").into_bytes()],
            env: vec![],
        }),
    };
    let ext = if seq.is_multiple_of(3) {
        let mut hasher = fspl_trust::digest::Hasher::new(DigestAlg::Blake3);
        hasher.update(&payload);
        let d: Digest = hasher.finish();
        Extension {
            payload_len: Some(payload.len() as u64),
            digest: Some(d),
            ..Extension::default()
        }
    } else {
        Extension::default()
    };
    let mut v = h.encode_with(&ext).unwrap();
    v.extend_from_slice(&payload);
    v
}

/// Reads the payload's first line, logs "SEQ LINE".
pub fn order_recorder(log: &Path) -> Vec<OsString> {
    vec![
        "sh".into(),
        "--".into(),
        "-c".into(),
        r#"read -r p; echo "$FSPL_SEQ $p" >> "$0""#.into(),
        log.as_os_str().to_os_string(),
    ]
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

fn process(q: &Path, log: &Path, extra: &[&str]) -> Finished {
    let mut args: Vec<OsString> = vec!["queue-process".into(), "-q".into(), q.as_os_str().into()];
    args.extend(extra.iter().map(OsString::from));
    args.extend(order_recorder(log));
    fspl_bounded(&args, None, LIMIT)
}

fn status_json(q: &Path) -> (Option<i32>, Value) {
    let f = queue_status_json(q, LIMIT);
    assert!(f.problems().is_empty(), "{:?}", f.problems());
    (f.code, serde_json::from_slice(&f.stdout).unwrap())
}

/// Check the run log: exactly 1..=n once each, in order, right payloads.
fn check_log(log: &Path, n: u64, variant: &str) -> Vec<String> {
    let lines = file_lines(log);
    let mut problems = Vec::new();
    if lines.len() as u64 != n {
        problems.push(format!("{} runs logged for {n} jobs", lines.len()));
    }
    for (i, l) in lines.iter().enumerate() {
        let want = format!("{} payload-{}-{variant}", i + 1, i + 1);
        if *l != want {
            problems.push(format!("run #{}: {l:?}, expected {want:?}", i + 1));
            if problems.len() > 10 {
                break;
            }
        }
    }
    problems
}

#[test]
fn reliability_order_shuffled_with_duplicates() {
    let n = env_u64("FSPL_ORDER_JOBS").unwrap_or(if long_mode() { 10_000 } else { 1_000 });
    let seed = seed();
    let mut rng = Rng(seed);
    let mut t = Tally::new("order_shuffled_with_duplicates");
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    // Every job once, 10% twice (byte-identical), shuffled the way a sync
    // tool does it: each file arrives up to n/5 places off its turn (so the
    // runs in between make progress and meet gaps), a copy anywhere after
    // its original, often after it ran.
    let mut keyed: Vec<(u64, u64)> = (1..=n).map(|s| (s + rng.below(n / 5 + 1), s)).collect();
    let dups = n / 10;
    for _ in 0..dups {
        let s = 1 + rng.below(n);
        keyed.push((s + rng.below(n / 2 + 1), s));
    }
    shuffle(&mut keyed, &mut rng);
    keyed.sort_by_key(|&(k, _)| k);
    let deliveries: Vec<u64> = keyed.into_iter().map(|(_, s)| s).collect();
    let mut problems = Vec::new();
    let mut states = BTreeSet::new();
    let batches = 20;
    let per = deliveries.len().div_ceil(batches);
    let mut late_dups = 0u64;
    for (b, chunk) in deliveries.chunks(per).enumerate() {
        for &seq in chunk {
            if seq < nextseq(&q) {
                late_dups += 1;
            }
            drop_job(&q, &order_job(seq, "a"));
        }
        // Sometimes a limited run (as from a cron job with -n), then the rest.
        if b % 3 == 1 {
            let f = process(&q, &log, &["-n", &(1 + rng.below(20)).to_string()]);
            t.runs += 1;
            problems.extend(f.problems());
        }
        let f = process(&q, &log, &[]);
        t.runs += 1;
        problems.extend(f.problems());
        if !f.success() {
            problems.push(format!(
                "batch {b}: queue-process exit {:?}: {}",
                f.code, f.stderr
            ));
        }
        states.insert(nextseq(&q));
    }
    problems.extend(check_log(&log, n, "a"));
    if nextseq(&q) != n + 1 {
        problems.push(format!(
            "nextseq {} after all, expected {}",
            nextseq(&q),
            n + 1
        ));
    }
    // Copies that arrived after their job ran stay below nextseq: reported,
    // never run.
    let (code, st) = status_json(&q);
    if code != Some(0) || st["state"] != "empty" {
        problems.push(format!("queue-status: {code:?} {st}"));
    }
    if st["below_next"].as_u64() != Some(late_dups) {
        problems.push(format!(
            "queue-status says {} files below next, {late_dups} late copies were delivered",
            st["below_next"]
        ));
    }
    t.faults = dups;
    t.states = states.len() as u64;
    if !problems.is_empty() {
        problems.insert(0, format!("seed {seed}, {n} jobs"));
    }
    t.problems("shuffled delivery", problems);
    t.finish();
}

#[test]
fn reliability_order_conflicting_copies_block() {
    let seed = seed();
    let mut rng = Rng(seed);
    let mut t = Tally::new("order_conflicting_copies_block");
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let m = 60u64;
    let k = 10 + rng.below(40);
    let mut order: Vec<u64> = (1..=m).collect();
    shuffle(&mut order, &mut rng);
    let mut names = Vec::new();
    for &seq in &order {
        let name = drop_job(&q, &order_job(seq, "a"));
        if seq == k {
            names.push(name);
        }
    }
    // Seq k a second time, other contents (a resend with another payload).
    names.push(drop_job(&q, &order_job(k, "b")));
    // And an identical copy of another job, which is harmless.
    drop_job(&q, &order_job(k + 1, "a"));
    let mut problems = Vec::new();
    for round in 0..3 {
        let f = process(&q, &log, &[]);
        t.runs += 1;
        problems.extend(f.problems());
        let err = f.stderr.trim();
        if f.code != Some(1)
            || !err.contains(&format!(
                "seq {k} is in more than one file with different contents"
            ))
            || !names.iter().all(|n| err.contains(n.as_str()))
        {
            problems.push(format!("round {round}: queue-process {:?}: {err}", f.code));
        }
        if nextseq(&q) != k {
            problems.push(format!(
                "round {round}: nextseq {} (conflict at {k})",
                nextseq(&q)
            ));
        }
    }
    problems.extend(check_log(&log, k - 1, "a"));
    let (code, st) = status_json(&q);
    let reason = st["reason"].as_str().unwrap_or("");
    if code != Some(1)
        || st["state"] != "blocked"
        || !reason.contains(&format!("seq {k} is in 2 files with different contents"))
    {
        problems.push(format!("queue-status: {code:?} {st}"));
    }
    let dup = st["duplicates"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["seq"] == k))
        .cloned()
        .unwrap_or(Value::Null);
    if dup["identical"] != false {
        problems.push(format!("queue-status duplicates: {}", st["duplicates"]));
    }
    let f = fspl_bounded(
        [
            OsStr::new("queue-check"),
            OsStr::new("-q"),
            q.as_os_str(),
            OsStr::new("--json"),
        ],
        None,
        LIMIT,
    );
    t.runs += 1;
    problems.extend(f.problems());
    let text = f.stdout_text();
    if f.code != Some(1) || !names.iter().all(|n| text.contains(n.as_str())) {
        problems.push(format!("queue-check: {:?} {text}", f.code));
    }
    // The daemon reports it too, and runs neither copy.
    let socket = sb.path("d.sock");
    let cfg = sb.path("d.toml");
    let mut cmd = vec!["sh".to_string()];
    cmd.extend(
        order_recorder(&log)
            .into_iter()
            .skip(2)
            .map(|s| s.to_string_lossy().into_owned()),
    );
    std::fs::write(
        &cfg,
        daemon_config(
            &socket,
            &[(
                "conflict".into(),
                q.clone(),
                cmd,
                "poll_min = 1\npoll_max = 1\nmax_failures = 2".into(),
            )],
        ),
    )
    .unwrap();
    let d = start_daemon(&cfg, &socket, &sb.path("d.log"));
    let mut seen = Value::Null;
    let reported = wait_until(Duration::from_secs(60), || {
        let f = fspl_bounded(
            [
                OsStr::new("status"),
                OsStr::new("--socket"),
                socket.as_os_str(),
                OsStr::new("--json"),
            ],
            None,
            LIMIT,
        );
        seen = serde_json::from_slice(&f.stdout).unwrap_or(Value::Null);
        seen.to_string().contains("different contents")
    });
    if !reported {
        problems.push(format!("daemon status never named the conflict: {seen}"));
    }
    if d.terminate(LIMIT) != Some(0) {
        problems.push("the daemon did not stop cleanly".into());
    }
    t.runs += 1;
    problems.extend(check_log(&log, k - 1, "a"));
    // Remove the wrong copy: everything runs, the right one included.
    std::fs::remove_file(q.join("jobs").join(&names[1])).unwrap();
    let f = process(&q, &log, &[]);
    t.runs += 1;
    problems.extend(f.problems());
    problems.extend(check_log(&log, m, "a"));
    t.faults = 2;
    t.states = 3;
    if !problems.is_empty() {
        problems.insert(0, format!("seed {seed}, conflict at seq {k}"));
    }
    t.problems("conflicting copies", problems);
    t.finish();
}
