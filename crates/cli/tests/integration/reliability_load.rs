//! Concurrency and load (issue 7, part 7).
//!
//! 1. Concurrent writers: W writers, each with its own sender sequence
//!    file and queue, run `fspl prepare -s SEQ | fspl queue-write` J times
//!    while one `fspl daemon` processes all W queues and a manual
//!    `fspl queue-process` keeps competing for random queues. Every job
//!    runs exactly once, in order per queue; the manual run either runs
//!    jobs or fails with one line naming the daemon's pid as the lock
//!    holder; nothing hangs.
//! 2. SIGKILLed daemon: N jobs through one daemon, which is SIGKILLed
//!    (with its process group, so its running job dies too, as in a power
//!    cut or systemd's KillMode=control-group) K times at random moments
//!    and restarted each time. Every job runs, in order; only a job in
//!    flight at a kill may run again (at most K repeats, each right after
//!    its first run).
//!
//! Environment (defaults short / with `FSPL_RELIABILITY_LONG=1`):
//! - `FSPL_LOAD_WRITERS` (8 / 8), `FSPL_LOAD_JOBS` jobs per writer
//!   (100 / 1,000);
//! - `FSPL_LOAD_KILL_JOBS` (5,000 / 100,000), `FSPL_LOAD_KILLS` (3 / 20);
//! - `FSPL_LOAD_SEED`.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helper::*;
use crate::reliability_common::{Rng, Tally, clean_fspl, long_mode};
use crate::reliability_order::{order_job, order_recorder};
use crate::reliability_procs::*;

const LIMIT: Duration = Duration::from_secs(600);

fn env_u64(name: &str, short: u64, long: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) if long_mode() => long,
        Err(_) => short,
    }
}

fn seed() -> u64 {
    std::env::var("FSPL_LOAD_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn nextseq(q: &Path) -> u64 {
    std::fs::read_to_string(q.join("nextseq"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The daemon's command: `sh -c SCRIPT LOG` (the order recorder).
fn daemon_command(log: &Path) -> Vec<String> {
    let mut cmd = vec!["sh".to_string()];
    cmd.extend(
        order_recorder(log)
            .into_iter()
            .skip(2)
            .map(|s| s.to_string_lossy().into_owned()),
    );
    cmd
}

/// Check a log of "SEQ payload-SEQ-VARIANT" lines: collapsing runs of the
/// same line gives exactly 1..=n; returns (problems, repeats).
fn check_runs(lines: &[String], n: u64, variant: &str, max_repeats: u64) -> (Vec<String>, u64) {
    let mut problems = Vec::new();
    let mut collapsed: Vec<&String> = Vec::new();
    let mut repeats = 0u64;
    for l in lines {
        if collapsed.last() == Some(&l) {
            repeats += 1;
        } else {
            collapsed.push(l);
        }
    }
    if repeats > max_repeats {
        problems.push(format!(
            "{repeats} repeated runs (at most {max_repeats} allowed)"
        ));
    }
    if collapsed.len() as u64 != n {
        problems.push(format!(
            "{} distinct runs in sequence for {n} jobs",
            collapsed.len()
        ));
    }
    for (i, l) in collapsed.iter().enumerate() {
        let want = format!("{} payload-{}-{variant}", i + 1, i + 1);
        if **l != want {
            problems.push(format!("run #{}: {l:?}, expected {want:?}", i + 1));
            break;
        }
    }
    (problems, repeats)
}

#[test]
fn reliability_load_concurrent_writers_daemon_and_manual_runs() {
    let writers = env_u64("FSPL_LOAD_WRITERS", 8, 8);
    let jobs = env_u64("FSPL_LOAD_JOBS", 100, 1_000);
    let seed = seed();
    let mut t = Tally::new("load_concurrent_writers");
    let sb = Sandbox::new();
    let queues: Vec<PathBuf> = (0..writers).map(|w| sb.queue(&format!("q{w}"))).collect();
    let logs: Vec<PathBuf> = (0..writers).map(|w| sb.path(format!("log{w}"))).collect();
    let socket = sb.path("d.sock");
    let cfg = sb.path("d.toml");
    let table: Vec<(String, PathBuf, Vec<String>, String)> = (0..writers as usize)
        .map(|w| {
            (
                format!("q{w}"),
                queues[w].clone(),
                daemon_command(&logs[w]),
                String::new(),
            )
        })
        .collect();
    std::fs::write(&cfg, daemon_config(&socket, &table)).unwrap();
    let d = start_daemon(&cfg, &socket, &sb.path("d.log"));
    let daemon_pid = d.pid() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let problems = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // The writers.
    let handles: Vec<_> = (0..writers as usize)
        .map(|w| {
            let (q, seqfile) = (queues[w].clone(), sb.path(format!("seq{w}")));
            let (writes, problems) = (writes.clone(), problems.clone());
            std::thread::spawn(move || {
                for j in 1..=jobs {
                    let mut prep = clean_fspl([OsStr::new("prepare"), OsStr::new("-s")]);
                    prep.arg(&seqfile).args(["-i", "-"]);
                    let job = run_with_input(prep, format!("payload-{j}-w{w}\n").as_bytes());
                    let write = run_with_input(
                        clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
                        &job.stdout,
                    );
                    if !job.status.success() || !write.status.success() {
                        problems.lock().unwrap().push(format!(
                            "writer {w} job {j}: {} {}",
                            String::from_utf8_lossy(&job.stderr),
                            String::from_utf8_lossy(&write.stderr)
                        ));
                        return;
                    }
                    writes.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // The manual competitor.
    let manual = {
        let (queues, logs, done, problems) =
            (queues.clone(), logs.clone(), done.clone(), problems.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let (mut ran, mut locked, mut runs) = (0u64, 0u64, 0u64);
            while !done.load(Ordering::SeqCst) {
                let w = rng.below(queues.len() as u64) as usize;
                let mut args: Vec<OsString> = vec![
                    "queue-process".into(),
                    "-q".into(),
                    queues[w].as_os_str().into(),
                ];
                args.extend(order_recorder(&logs[w]));
                let f = fspl_bounded(&args, None, LIMIT);
                runs += 1;
                let mut p = f.problems();
                let want = format!("locked by another process (pid {daemon_pid})");
                match f.code {
                    Some(0) => ran += 1,
                    Some(1) if f.stderr.lines().count() == 1 && f.stderr.contains(&want) => {
                        locked += 1
                    }
                    _ => p.push(format!("manual run: {:?} {}", f.code, f.stderr)),
                }
                problems.lock().unwrap().extend(p);
                std::thread::sleep(Duration::from_millis(rng.below(30)));
            }
            (runs, ran, locked)
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    let total = writers * jobs;
    let all_ran = wait_until(LIMIT, || {
        logs.iter().map(|l| file_lines(l).len() as u64).sum::<u64>() >= total
            && queues.iter().all(|q| nextseq(q) == jobs + 1)
    });
    done.store(true, Ordering::SeqCst);
    let (runs, ran, locked) = manual.join().unwrap();
    let mut problems = problems.lock().unwrap().clone();
    if !all_ran {
        problems.push(format!(
            "not every job ran within {LIMIT:?}: nextseqs {:?}; daemon log tail: {}",
            queues.iter().map(|q| nextseq(q)).collect::<Vec<_>>(),
            d.log_text()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    let code = d.terminate(LIMIT);
    if code != Some(0) {
        problems.push(format!("daemon exit {code:?}"));
    }
    for (w, log) in logs.iter().enumerate() {
        let (p, _) = check_runs(&file_lines(log), jobs, &format!("w{w}"), 0);
        t.problems(&format!("queue {w}"), p);
    }
    t.runs = writes.load(Ordering::SeqCst) + runs;
    t.faults = locked;
    t.states = writers;
    eprintln!(
        "load_concurrent_writers: {total} jobs, {runs} manual runs ({ran} ran, {locked} found the daemon's lock)"
    );
    if !problems.is_empty() {
        problems.insert(0, format!("seed {seed}"));
    }
    t.problems("concurrent writers", problems);
    t.finish();
}

/// Counts the lines appended to a file since the last call.
struct Tail {
    path: PathBuf,
    offset: u64,
    lines: u64,
}

impl Tail {
    fn lines(&mut self) -> u64 {
        if let Ok(mut f) = std::fs::File::open(&self.path) {
            let _ = f.seek(SeekFrom::Start(self.offset));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            self.offset += buf.len() as u64;
            self.lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        self.lines
    }
}

#[test]
fn reliability_load_daemon_sigkilled_at_random() {
    let n = env_u64("FSPL_LOAD_KILL_JOBS", 5_000, 100_000);
    let kills = env_u64("FSPL_LOAD_KILLS", 3, 20);
    let seed = seed();
    let mut rng = Rng(seed ^ 0x5eed);
    let mut t = Tally::new("load_daemon_sigkill");
    let sb = Sandbox::new();
    let q = sb.queue("q");
    let log = sb.path("log");
    let socket = sb.path("d.sock");
    let cfg = sb.path("d.toml");
    std::fs::write(
        &cfg,
        daemon_config(
            &socket,
            &[("big".into(), q.clone(), daemon_command(&log), String::new())],
        ),
    )
    .unwrap();
    // Jobs arrive while the daemon works, in windows of 64 shuffled.
    let writer = {
        let q = q.clone();
        let mut rng = Rng(seed);
        std::thread::spawn(move || {
            let mut seqs: Vec<u64> = (1..=n).collect();
            for w in seqs.chunks_mut(64) {
                for i in (1..w.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    w.swap(i, j);
                }
            }
            for (i, s) in seqs.into_iter().enumerate() {
                drop_job(&q, &order_job(s, "k"));
                if i % 256 == 255 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    // Kill a few random milliseconds after the log passes these counts, so
    // kills land in every phase of the loop (and, when two points are
    // close, during the restarted daemon's first scan).
    let mut points: Vec<u64> = (0..kills).map(|_| 1 + rng.below(n - 1)).collect();
    points.sort_unstable();
    let mut tail = Tail {
        path: log.clone(),
        offset: 0,
        lines: 0,
    };
    let mut problems = Vec::new();
    let mut states = BTreeSet::new();
    let mut d = start_daemon(&cfg, &socket, &sb.path("d.log"));
    let mut done_kills = 0u64;
    let started = Instant::now();
    for &p in &points {
        if !wait_until(LIMIT, || tail.lines() >= p) {
            problems.push(format!("no progress towards {p} runs in {LIMIT:?}"));
            break;
        }
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
        d.kill_group();
        done_kills += 1;
        states.insert(nextseq(&q));
        d = start_daemon(&cfg, &socket, &sb.path("d.log"));
    }
    writer.join().unwrap();
    let finished = wait_until(LIMIT, || nextseq(&q) == n + 1);
    if !finished {
        problems.push(format!(
            "nextseq {} after {:?}, expected {}",
            nextseq(&q),
            started.elapsed(),
            n + 1
        ));
    }
    let code = d.terminate(LIMIT);
    if code != Some(0) {
        problems.push(format!("daemon exit {code:?}"));
    }
    let (p, repeats) = check_runs(&file_lines(&log), n, "k", done_kills);
    problems.extend(p);
    // Nothing left to run; leftovers only below nextseq.
    let f = queue_status_json(&q, LIMIT);
    problems.extend(f.problems());
    let st: serde_json::Value = serde_json::from_slice(&f.stdout).unwrap_or_default();
    if st["state"] != "empty" {
        problems.push(format!("queue-status after the run: {st}"));
    }
    t.runs = n + repeats;
    t.faults = done_kills;
    t.states = states.len() as u64;
    eprintln!("load_daemon_sigkill: {n} jobs, {done_kills} kills, {repeats} repeated runs");
    if !problems.is_empty() {
        problems.insert(0, format!("seed {seed}"));
    }
    t.problems("SIGKILLed daemon", problems);
    t.finish();
}
