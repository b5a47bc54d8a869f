//! Shared by the reliability tests (issue 7): the counts line every one
//! prints, long mode, and `Lab`, a queue with a sender and a record of what
//! was sent, acknowledged and run, whose `check` tests every invariant of
//! the crash-safety promise (docs/durability.md).
//!
//! Convention: every reliability test prints exactly one line to stderr,
//! `RELIABILITY|<test>|runs=<n>|faults=<n>|states=<n>|outcome=<ok|failed:N|panicked>`,
//! which scripts/reliability collects into docs/reliability.md.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::helper::*;

/// Set (to anything but "" or "0") for the long runs of scripts/reliability.
pub const LONG_ENV: &str = "FSPL_RELIABILITY_LONG";

pub fn long_mode() -> bool {
    std::env::var(LONG_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The counts of one reliability test, printed as one `RELIABILITY|...`
/// line when it ends (also when it panics: outcome=panicked).
pub struct Tally {
    pub name: String,
    pub runs: u64,
    pub faults: u64,
    pub states: u64,
    pub failures: Vec<String>,
    reported: bool,
}

impl Tally {
    pub fn new(name: &str) -> Tally {
        Tally {
            name: name.to_string(),
            runs: 0,
            faults: 0,
            states: 0,
            failures: Vec::new(),
            reported: false,
        }
    }

    fn line(&self, outcome: &str) -> String {
        format!(
            "RELIABILITY|{}|runs={}|faults={}|states={}|outcome={outcome}",
            self.name, self.runs, self.faults, self.states
        )
    }

    /// Record problems found in one run, with its context.
    pub fn problems(&mut self, ctx: &str, problems: Vec<String>) {
        for p in problems {
            self.failures.push(format!("{ctx}: {p}"));
        }
    }

    /// Print the counts line, then fail listing every problem, if any.
    pub fn finish(mut self) {
        self.reported = true;
        let outcome = if self.failures.is_empty() {
            "ok".to_string()
        } else {
            format!("failed:{}", self.failures.len())
        };
        eprintln!("{}", self.line(&outcome));
        if !self.failures.is_empty() {
            let shown: Vec<&String> = self.failures.iter().take(40).collect();
            panic!(
                "{}: {} problem(s):\n{}",
                self.name,
                self.failures.len(),
                shown
                    .iter()
                    .map(|s| format!("  - {s}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !self.reported {
            eprintln!("{}", self.line("panicked"));
        }
    }
}

pub use fspl_testkit::jobs::Rng;

/// The payload of job `seq` (`len` bytes, distinct per seq and salt).
pub fn payload(seq: u64, salt: u64, len: usize) -> Vec<u8> {
    let mut out = format!("job {seq}\n").into_bytes();
    out.truncate(len);
    let mut g = Rng(seq.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ salt);
    while out.len() < len {
        let w = g.next().to_le_bytes();
        let n = (len - out.len()).min(8);
        out.extend_from_slice(&w[..n]);
    }
    out
}

/// Our binary without inherited FSPL_* or FAILPOINTS variables, and
/// without core dumps (aborts are expected).
pub fn clean_fspl<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = fspl();
    clean_env(&mut c);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    c.args(args);
    c
}

/// Fail clearly unless the fspl binary has fault injection compiled in
/// (a build without `--features fspl/failpoints` ignores FAILPOINTS, and
/// a fault test would then test nothing).
#[track_caller]
pub fn require_failpoints() {
    let sb = Sandbox::new();
    let q = sb.path("probe");
    ok(run(clean_fspl([
        OsStr::new("queue-init"),
        OsStr::new("-q"),
        q.as_os_str(),
    ])));
    let mut c = clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]);
    c.env("FAILPOINTS", "write:after-create=return(eio)");
    let out = run_with_input(c, b"x");
    assert!(
        !out.status.success(),
        "{} ignores FAILPOINTS: it was built without `--features fspl/failpoints` \
         (or rebuilt without it by a concurrent cargo run sharing the target directory); \
         run `cargo test --features fspl/failpoints` as scripts/test does",
        fspl_bin().display()
    );
}

/// The command every job runs: compares its stdin with the payload sent
/// for its seq and appends "SEQ ok" or "SEQ bad" to DIR/log.
pub const SCRIPT: &str = r#"if cmp -s - "$0/p$FSPL_SEQ"; then r=ok; else r=bad; cat >/dev/null; fi; echo "$FSPL_SEQ $r" >> "$0/log""#;

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A queue, a sender and a record of what was sent, acknowledged and run.
pub struct Lab {
    pub sb: Sandbox,
    pub q: PathBuf,
    pub seqfile: PathBuf,
    /// Payload files p<SEQ> and the run log.
    pub dir: PathBuf,
    /// (trust file, the sender's secret key) for --trust labs.
    trust: Option<(PathBuf, PathBuf)>,
    salt: u64,
    sizes: Vec<usize>,
    /// Every version of a job that may legitimately be under a job name.
    sent: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Jobs that must be refused and never run.
    hostile: Vec<Vec<u8>>,
    pub acked: BTreeSet<u64>,
    last_nextseq: u64,
    /// seq -> how many extra runs are allowed (faults while it was in flight).
    repeat_budget: BTreeMap<u64, u64>,
    top: u64,
}

impl Lab {
    pub fn new(trust: bool, salt: u64, sizes: Vec<usize>) -> Lab {
        Lab::in_dir(Sandbox::new(), None, trust, salt, sizes)
    }

    /// A lab whose queue and sequence file live in `data` (default: the
    /// sandbox itself).
    pub fn in_dir(
        sb: Sandbox,
        data: Option<PathBuf>,
        trust: bool,
        salt: u64,
        sizes: Vec<usize>,
    ) -> Lab {
        let data = data.unwrap_or_else(|| sb.dir.path().to_path_buf());
        let q = data.join("q");
        ok(run(clean_fspl([
            OsStr::new("queue-init"),
            OsStr::new("-q"),
            q.as_os_str(),
        ])));
        let dir = sb.path("lab");
        std::fs::create_dir(&dir).unwrap();
        let trust = trust.then(|| {
            let key = sb.path("laptop");
            ok(run(clean_fspl([
                OsStr::new("keygen"),
                OsStr::new("-o"),
                key.as_os_str(),
                OsStr::new("-C"),
                OsStr::new("laptop"),
            ])));
            let public = std::fs::read_to_string(sb.path("laptop.pub")).unwrap();
            let file = sb.path("trust.toml");
            std::fs::write(
                &file,
                format!(
                    "[[sender]]\nname = \"laptop\"\nkey = \"{}\"\n",
                    public.trim()
                ),
            )
            .unwrap();
            (file, key)
        });
        Lab {
            seqfile: data.join("seq"),
            sb,
            q,
            dir,
            trust,
            salt,
            sizes,
            sent: BTreeMap::new(),
            hostile: Vec::new(),
            acked: BTreeSet::new(),
            last_nextseq: 1,
            repeat_budget: BTreeMap::new(),
            top: 0,
        }
    }

    pub fn ctx(&self) -> String {
        format!("(queue {})", self.q.display())
    }

    /// The payload file of job `seq` (written on first use).
    pub fn payload_path(&self, seq: u64) -> PathBuf {
        let p = self.dir.join(format!("p{seq}"));
        if !p.exists() {
            let len = self.sizes[(seq as usize - 1) % self.sizes.len()];
            std::fs::write(&p, payload(seq, self.salt, len)).unwrap();
        }
        p
    }

    /// The sender's next number: what `prepare -s` will use.
    pub fn seqfile_value(&self) -> u64 {
        match std::fs::read_to_string(&self.seqfile) {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("sequence file {} holds {s:?}", self.seqfile.display())),
            Err(_) => 1,
        }
    }

    fn sign_args(&self, c: &mut Command) {
        if let Some((_, key)) = &self.trust {
            c.arg("--sign").arg(key);
        }
    }

    /// `prepare -s SEQFILE -i p<N>` for the N the sequence file holds.
    pub fn prepare_cmd(&self) -> (u64, Command) {
        let n = self.seqfile_value();
        let mut c = clean_fspl([OsStr::new("prepare"), OsStr::new("-s")]);
        c.arg(&self.seqfile).arg("-i").arg(self.payload_path(n));
        self.sign_args(&mut c);
        (n, c)
    }

    /// `prepare --seq N -i p<N>`: a resend.
    pub fn prepare_fixed(&self, n: u64) -> Vec<u8> {
        let mut c = clean_fspl(["prepare", "--seq", &n.to_string(), "-i"]);
        c.arg(self.payload_path(n));
        self.sign_args(&mut c);
        ok(run(c))
    }

    pub fn write_cmd(&self) -> Command {
        clean_fspl([
            OsStr::new("queue-write"),
            OsStr::new("-q"),
            self.q.as_os_str(),
        ])
    }

    pub fn process_cmd(&self) -> Command {
        let mut c = clean_fspl([
            OsStr::new("queue-process"),
            OsStr::new("-q"),
            self.q.as_os_str(),
        ]);
        if let Some((t, _)) = &self.trust {
            c.arg("--trust").arg(t);
        }
        c.args(["sh", "--", "-c", SCRIPT]).arg(&self.dir);
        c
    }

    /// Remember that `job` (seq `n`) may be in the queue.
    pub fn note_sent(&mut self, n: u64, job: &[u8]) {
        let v = self.sent.entry(n).or_default();
        if !v.iter().any(|j| j == job) {
            v.push(job.to_vec());
        }
        self.top = self.top.max(n);
    }

    /// queue-write `job` and insist on success: acknowledged.
    pub fn write_ok(&mut self, n: u64, job: &[u8]) {
        self.note_sent(n, job);
        let out = run_with_input(self.write_cmd(), job);
        ok(out);
        self.acked.insert(n);
    }

    /// prepare -s + queue-write, both unfaulted: the job's seq.
    pub fn send(&mut self) -> u64 {
        let (n, c) = self.prepare_cmd();
        let job = ok(run(c));
        self.write_ok(n, &job);
        n
    }

    /// An unsigned job with seq `n` and a payload other than p<n>: with
    /// --trust it must be refused; if it ran, the log would say "n bad".
    pub fn send_hostile(&mut self, n: u64) {
        let p = self.sb.path(format!("hostile{n}"));
        std::fs::write(&p, b"not the payload the sender signed\n").unwrap();
        let mut c = clean_fspl(["prepare", "--seq", &n.to_string(), "-i"]);
        c.arg(&p);
        let job = ok(run(c));
        ok(run_with_input(self.write_cmd(), &job));
        self.hostile.push(job);
    }

    pub fn nextseq(&self) -> Option<u64> {
        let raw = std::fs::read(self.q.join("nextseq")).ok()?;
        text(&raw).trim().parse().ok()
    }

    /// After a fault in queue-process: the job that ran but whose run was
    /// not recorded (the last run is of seq == nextseq) may run once more;
    /// no other job may.
    pub fn allow_repeat_of_in_flight(&mut self) {
        let last = self.runs().last().map(|r| r.0);
        if let Some(n) = self.nextseq()
            && last == Some(n)
        {
            *self.repeat_budget.entry(n).or_default() += 1;
        }
    }

    /// The run log: (seq, payload was right).
    pub fn runs(&self) -> Vec<(u64, bool)> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (s, r) = l.split_once(' ').unwrap_or((l, ""));
                (s.parse().unwrap_or(0), r == "ok")
            })
            .collect()
    }

    /// Job files (name -> seq) and how many temporaries, in jobs/.
    pub fn job_files(&self, problems: &mut Vec<String>) -> (BTreeMap<String, u64>, usize) {
        let mut jobs = BTreeMap::new();
        let mut temps = 0;
        for e in std::fs::read_dir(self.q.join("jobs")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("fspl-") && name.ends_with(".fspl") {
                let bytes = std::fs::read(e.path()).unwrap();
                let seq = match fspl_format::decode(&bytes) {
                    Ok(d) => d.header.seq,
                    Err(err) => {
                        problems.push(format!(
                            "{name} ({} bytes) is under a job name but is not a job: {err}",
                            bytes.len()
                        ));
                        continue;
                    }
                };
                let known = self.sent.get(&seq).is_some_and(|v| v.contains(&bytes))
                    || self.hostile.contains(&bytes);
                if !known {
                    problems.push(format!(
                        "{name} (seq {seq}, {} bytes) is under a job name but is not a job that was sent (partial or altered)",
                        bytes.len()
                    ));
                }
                jobs.insert(name, seq);
            } else if name.starts_with(".fspl-tmp-") {
                temps += 1;
            } else {
                problems.push(format!("unexpected file {name:?} in jobs/"));
            }
        }
        (jobs, temps)
    }

    /// `queue-check --json` (with --trust for trust labs): its problems.
    fn queue_check(&self, problems: &mut Vec<String>) {
        let mut c = clean_fspl([
            OsStr::new("queue-check"),
            OsStr::new("--json"),
            OsStr::new("-q"),
            self.q.as_os_str(),
        ]);
        if let Some((t, _)) = &self.trust {
            c.arg("--trust").arg(t);
        }
        let out = run(c);
        if !matches!(out.status.code(), Some(0 | 1)) {
            problems.push(format!(
                "queue-check failed ({}): {}",
                out.status,
                text(&out.stderr).trim()
            ));
            return;
        }
        let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("queue-check --json printed no JSON: {e}"));
                return;
            }
        };
        for b in v["bad"].as_array().into_iter().flatten() {
            let name = b["filename"].as_str().unwrap_or("");
            let reason = b["reason"].as_str().unwrap_or("");
            let bytes = std::fs::read(self.q.join("jobs").join(name)).unwrap_or_default();
            let expected_refusal =
                reason.starts_with("would be refused") && self.hostile.contains(&bytes);
            if !expected_refusal {
                problems.push(format!("queue-check: bad file {name}: {reason}"));
            }
        }
        for d in v["status"]["duplicates"].as_array().into_iter().flatten() {
            if d["identical"] != serde_json::Value::Bool(true) {
                problems.push(format!("queue-check: conflicting duplicates {d}"));
            }
        }
        for f in v["foreign"].as_array().into_iter().flatten() {
            problems.push(format!("queue-check: foreign file {f}"));
        }
    }

    /// Every invariant of the module doc; returns the problems found.
    pub fn check(&mut self, tally: &mut Tally) -> Vec<String> {
        tally.states += 1;
        let mut p = Vec::new();
        // nextseq: one valid number, monotonic, not past the jobs sent.
        let raw = std::fs::read(self.q.join("nextseq")).unwrap_or_default();
        let s = text(&raw);
        let well_formed = s.ends_with('\n')
            && s.len() >= 2
            && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit());
        let n: u64 = if well_formed {
            s.trim().parse().unwrap_or(0)
        } else {
            p.push(format!("nextseq holds {s:?}"));
            self.last_nextseq
        };
        if n < self.last_nextseq {
            p.push(format!(
                "nextseq went back from {} to {n}",
                self.last_nextseq
            ));
        }
        if n > self.top + 1 {
            p.push(format!(
                "nextseq {n} is past every job sent (top {})",
                self.top
            ));
        }
        self.last_nextseq = self.last_nextseq.max(n);

        let (jobs, _temps) = self.job_files(&mut p);
        let present: BTreeSet<u64> = jobs.values().copied().collect();
        self.queue_check(&mut p);

        for &a in &self.acked {
            if a >= n && !present.contains(&a) {
                p.push(format!(
                    "acknowledged job {a} is lost: not in jobs/ and not below nextseq {n}"
                ));
            }
        }

        // The run log.
        let runs = self.runs();
        let mut count: BTreeMap<u64, u64> = BTreeMap::new();
        for &(seq, good) in &runs {
            if !good {
                p.push(format!(
                    "job {seq} ran with a payload other than the one sent (or a refused job ran)"
                ));
            }
            *count.entry(seq).or_default() += 1;
        }
        let mut collapsed: Vec<u64> = runs.iter().map(|r| r.0).collect();
        collapsed.dedup();
        let m = collapsed.len() as u64;
        if !collapsed.iter().copied().eq(1..=m) {
            p.push(format!("jobs ran out of order or with gaps: {collapsed:?}"));
        }
        if !(m + 1 == n || (m == n && present.contains(&n))) {
            p.push(format!(
                "ran 1..={m} but nextseq is {n} (job {n} present: {})",
                present.contains(&n)
            ));
        }
        for (&seq, &c) in &count {
            let allowed = 1 + self.repeat_budget.get(&seq).copied().unwrap_or(0);
            if c > allowed {
                p.push(format!(
                    "job {seq} ran {c} times; only a job in flight at a fault may repeat ({allowed} allowed)"
                ));
            }
        }

        // Refused jobs: in rejected/, with a reason; never a genuine one.
        if let Ok(rd) = std::fs::read_dir(self.q.join("rejected")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("fspl-") && name.ends_with(".fspl")) {
                    continue;
                }
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if !self.hostile.contains(&bytes) {
                    p.push(format!(
                        "rejected/{name} is not a job that should be refused"
                    ));
                }
            }
        }
        p
    }

    /// An unfaulted `queue-process`; then every job sent must have run, in
    /// order, and nothing at or above nextseq be left.
    pub fn finish(&mut self, tally: &mut Tally) -> Vec<String> {
        let mut p = Vec::new();
        let out = run(self.process_cmd());
        if !out.status.success() {
            p.push(format!(
                "the recovery queue-process failed ({}): {}",
                out.status,
                text(&out.stderr).trim()
            ));
            return p;
        }
        if self.trust.is_some() && !self.hostile.is_empty() {
            // The unsigned job was refused; the genuine one is sent now.
            let held = self.nextseq().unwrap_or(0);
            let rejected = std::fs::read_dir(self.q.join("rejected"))
                .map(|rd| rd.count())
                .unwrap_or(0);
            if rejected != 2 * self.hostile.len() {
                p.push(format!(
                    "rejected/ holds {rejected} files, expected each refused job and its reason"
                ));
            }
            let job = self.prepare_fixed(held);
            self.write_ok(held, &job);
            let out = run(self.process_cmd());
            if !out.status.success() {
                p.push(format!(
                    "queue-process after resending {held} failed: {}",
                    text(&out.stderr).trim()
                ));
                return p;
            }
        }
        p.extend(self.check(tally));
        let n = self.nextseq().unwrap_or(0);
        if n != self.top + 1 {
            p.push(format!(
                "after recovery nextseq is {n}, expected {} (every job sent run)",
                self.top + 1
            ));
        }
        let mut scratch = Vec::new();
        let (jobs, _) = self.job_files(&mut scratch);
        for (name, seq) in jobs {
            if seq >= n {
                p.push(format!("job file {name} (seq {seq}) left unrun"));
            }
        }
        p
    }

    /// Offer `partial` (a sender's incomplete output) to queue-write, which
    /// must refuse it and store nothing; then put it in a scratch queue by
    /// hand (as a sync tool could) and insist that queue-check reports it
    /// bad rather than good.
    pub fn partial_is_detected(&self, partial: &[u8], tally: &mut Tally) -> Option<String> {
        tally.states += 1;
        let q = self.sb.path("scratch");
        if !q.exists() {
            ok(run(clean_fspl([
                OsStr::new("queue-init"),
                OsStr::new("-q"),
                q.as_os_str(),
            ])));
        }
        let out = run_with_input(
            clean_fspl([OsStr::new("queue-write"), OsStr::new("-q"), q.as_os_str()]),
            partial,
        );
        let left = std::fs::read_dir(q.join("jobs")).unwrap().count();
        if out.status.code() != Some(1) || left != 0 {
            return Some(format!(
                "queue-write of a partial job ({} bytes) exited {:?} and left {left} files: {}",
                partial.len(),
                out.status.code(),
                text(&out.stderr).trim()
            ));
        }
        std::fs::write(
            q.join("jobs/fspl-00000000-0000-4000-8000-000000000001.fspl"),
            partial,
        )
        .unwrap();
        let out = run(clean_fspl([
            OsStr::new("queue-check"),
            OsStr::new("--json"),
            OsStr::new("-q"),
            q.as_os_str(),
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let result =
            if v["good"].as_u64() != Some(0) || v["bad"].as_array().is_none_or(Vec::is_empty) {
                Some(format!(
                    "a partial job ({} bytes) was not reported bad by queue-check: {}",
                    partial.len(),
                    text(&out.stdout)
                ))
            } else {
                None
            };
        for e in std::fs::read_dir(q.join("jobs")).unwrap().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        result
    }
}
