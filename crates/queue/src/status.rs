//! What state a queue is in and why: the analysis behind `queue-status`
//! (and, later, the daemon's status).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::decoder::Decoder;
use crate::error::{QueueError, Result};
use crate::last_failure::{self, LastFailure};
use crate::lock::{LockState, lock_state};
use crate::queue::{EntryKind, Queue};
use crate::scan::{self, Vetting, temp_is_stale};
use crate::seqnum;
use fspl_trust::TrustFile;

/// Whether processing can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// No job at or after nextseq.
    Empty,
    /// The next job is present: `runnable` jobs can run in a row.
    Ready { runnable: u64 },
    /// Processing cannot go on until something changes; `reason` says what.
    Blocked { reason: String },
    /// No nextseq/lock: jobs can be written and listed, not processed.
    AppendOnly,
}

/// Several files claiming one seq, judged as `queue-process` would (see
/// `scan::judge_copies`).
#[derive(Clone, Debug)]
pub struct Duplicate {
    pub seq: u64,
    /// Every file claiming the seq, sorted.
    pub files: Vec<OsString>,
    /// The files not set aside are one job and run once (byte-identical,
    /// or with a trust file the same signed content). Vacuously true when
    /// every file would be refused.
    pub identical: bool,
    /// The files not set aside are byte-identical.
    pub same_bytes: bool,
    /// Files that would be refused rather than run, with the reasons: at
    /// or after nextseq with a trust file, those whose header does not
    /// pass; for the next seq, when the others disagree, those whose
    /// payload does not match their length and digest.
    pub refused: Vec<(OsString, String)>,
}

#[derive(Clone, Debug)]
pub struct TempFile {
    pub name: OsString,
    /// Filespooler 1.2.4's temporary (no lock to tell a live writer by).
    pub reference: bool,
    /// Its writer is gone.
    pub stale: bool,
}

#[derive(Clone, Debug)]
pub struct QueueStatus {
    pub dir: PathBuf,
    pub nextseq: Option<u64>,
    pub jobs: u64,
    pub lowest: Option<u64>,
    pub highest: Option<u64>,
    /// Files whose seq is below nextseq: already run (kept by
    /// --never-delete or --on-error leave) or skipped; never run again.
    pub below_next: u64,
    pub duplicates: Vec<Duplicate>,
    pub unreadable: Vec<(OsString, String)>,
    pub temps: Vec<TempFile>,
    pub lock: LockState,
    pub state: State,
    /// Jobs that cannot be decrypted (no matching identity).
    pub encrypted: Vec<OsString>,
    /// With a trust file: jobs at or after nextseq that would be refused.
    pub would_refuse: Vec<(u64, OsString, String)>,
    /// Files already moved to `rejected/` (with their reasons).
    pub rejected: Vec<(OsString, String)>,
    /// The job `queue-process` last left in the queue after it failed
    /// (`--on-error retry`), while that still applies: its file is still
    /// there with that seq, at or after nextseq.
    pub last_failure: Option<LastFailure>,
    /// Blocked on a gap: the missing seqs and the first one present after.
    pub gap: Option<Gap>,
    /// With a trust file: how many jobs at or after nextseq had their
    /// header (signature, signer, params, destination, time) checked.
    /// Their payloads were not read, except to judge copies of the next seq
    /// that disagree.
    pub vetted: Option<u64>,
}

/// Seqs `waiting_for` to `present - 1` are missing; `present` is the
/// lowest seq after them that is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub waiting_for: u64,
    pub present: u64,
}

impl QueueStatus {
    /// Exit status for `queue-status`: 0 can progress or empty, 1 blocked.
    pub fn exit_code(&self) -> u8 {
        match self.state {
            State::Blocked { .. } => 1,
            _ => 0,
        }
    }

    /// What needs a look although it may not stop processing, one short
    /// phrase each (the details are in the other fields): a job that
    /// fails, unreadable or undecryptable files, jobs that would be
    /// refused, refused jobs in `rejected/`, conflicting copies of a later
    /// seq, stale temporaries, files below nextseq.
    pub fn attention(&self) -> Vec<String> {
        fn n(count: usize, one: &str, many: &str) -> String {
            if count == 1 {
                format!("1 {one}")
            } else {
                format!("{count} {many}")
            }
        }
        let mut v = Vec::new();
        if let Some(f) = &self.last_failure {
            v.push(format!(
                "job {} failed at {} ({}) and will be retried",
                f.seq,
                fspl_format::rfc3339_local(fspl_format::Ctime {
                    secs: f.time_secs,
                    nanos: 0
                }),
                f.outcome
            ));
        }
        if !self.unreadable.is_empty() {
            v.push(n(
                self.unreadable.len(),
                "unreadable file",
                "unreadable files",
            ));
        }
        if !self.encrypted.is_empty() {
            v.push(n(
                self.encrypted.len(),
                "encrypted job not read",
                "encrypted jobs not read",
            ));
        }
        if !self.would_refuse.is_empty() {
            v.push(n(
                self.would_refuse.len(),
                "queued job would be refused",
                "queued jobs would be refused",
            ));
        }
        // Conflicting copies of the next seq block processing (the state
        // says so); later ones will.
        let conflicts: Vec<u64> = self
            .duplicates
            .iter()
            .filter(|d| !d.identical && self.nextseq.is_some_and(|next| d.seq > next))
            .map(|d| d.seq)
            .collect();
        match conflicts.as_slice() {
            [] => {}
            [seq] => v.push(format!("seq {seq} is in files with different contents")),
            seqs => v.push(format!(
                "seqs {} are in files with different contents",
                ranges(seqs.iter().copied(), 4)
            )),
        }
        if !self.rejected.is_empty() {
            v.push(n(
                self.rejected.len(),
                "refused job in rejected/",
                "refused jobs in rejected/",
            ));
        }
        let stale = self.temps.iter().filter(|t| t.stale).count();
        if stale > 0 {
            v.push(n(stale, "stale temporary file", "stale temporary files"));
        }
        if self.below_next > 0 {
            v.push(n(
                self.below_next as usize,
                "file below next seq (never run again)",
                "files below next seq (never run again)",
            ));
        }
        v
    }
}

/// Seqs as compact ranges: "6–9, 12, 15–20", at most `max` ranges.
pub fn ranges(seqs: impl IntoIterator<Item = u64>, max: usize) -> String {
    let mut v: Vec<u64> = seqs.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    let mut total = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        total += 1;
        if parts.len() < max {
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}–{end}")
            });
        }
        i += 1;
    }
    if total > max {
        parts.push(format!("… ({} more ranges)", total - max));
    }
    parts.join(", ")
}

/// Look at a queue without changing anything and without taking its lock.
pub fn status(
    queue: &Queue,
    decoder: Option<&Decoder>,
    trust: Option<&TrustFile>,
) -> Result<QueueStatus> {
    queue.check_exists()?;
    let lock = lock_state(&queue.lock_path());
    let (nextseq, nextseq_problem) = if lock == LockState::Missing {
        (None, None)
    } else {
        match seqnum::read(&queue.nextseq_path()) {
            Ok(Some(n)) => (Some(n), None),
            // Missing nextseq: queue-process starts at 1 (and creates it).
            Ok(None) => (Some(1), None),
            Err(e @ QueueError::BadSeqNumber { .. }) => (None, Some(crate::display_chain(&e))),
            Err(e) => return Err(e),
        }
    };
    let queue_name = queue.name()?;
    // Headers are checked while the scan has them (jobs below nextseq
    // never run again: not checked).
    let vet = trust.map(|t| Vetting {
        from_seq: nextseq.unwrap_or(0),
        ..Vetting::new(t, queue_name.as_deref())
    });
    let s = scan::scan_vetted(queue, decoder, None, vet.as_ref())?;
    let now = SystemTime::now();
    let temps = s
        .temps
        .iter()
        .map(|t| TempFile {
            name: t.name.clone(),
            reference: t.kind == EntryKind::ReferenceTemp,
            stale: temp_is_stale(queue, t, now),
        })
        .collect();
    let mut by_seq: BTreeMap<u64, Vec<OsString>> = BTreeMap::new();
    for j in &s.jobs {
        by_seq.entry(j.seq).or_default().push(j.name.clone());
    }
    let mut duplicates = Vec::new();
    for (seq, files) in &by_seq {
        if files.len() > 1 {
            let mut files = files.clone();
            files.sort();
            // Copies that may still run are judged as queue-process would;
            // payloads are read only for the next seq, and only when its
            // copies disagree (what decides whether processing is blocked).
            let pending = nextseq.is_some_and(|n| *seq >= n);
            let vet = vet.as_ref().filter(|_| pending);
            let read_payloads = nextseq == Some(*seq);
            // A copy removed meanwhile, or unreadable now: compare no
            // further, call them different (the default).
            let c =
                scan::judge_copies(queue, decoder, &files, vet, read_payloads).unwrap_or_default();
            duplicates.push(Duplicate {
                seq: *seq,
                files,
                identical: c.one_job,
                same_bytes: c.same_bytes,
                refused: c.refused,
            });
        }
    }
    let encrypted: Vec<OsString> = s
        .skipped
        .iter()
        .filter(|sk| {
            matches!(
                sk.error,
                QueueError::BadJob {
                    source: fspl_format::HeaderError::Encrypted,
                    ..
                }
            )
        })
        .map(|sk| sk.name.clone())
        .collect();
    let unreadable: Vec<(OsString, String)> = s
        .skipped
        .iter()
        .filter(|sk| !encrypted.contains(&sk.name))
        .map(|sk| (sk.name.clone(), crate::display_chain(&sk.error)))
        .collect();
    let mut would_refuse = Vec::new();
    for j in &s.jobs {
        if let Some(Err(r)) = j.vetted.as_deref() {
            would_refuse.push((j.seq, j.name.clone(), r.reason.clone()));
        }
    }
    would_refuse.sort();
    let rejected = rejected_files(queue);
    let below_next = match nextseq {
        Some(n) => s.jobs.iter().filter(|j| j.seq < n).count() as u64,
        None => 0,
    };
    let mut gap = None;
    let state = if lock == LockState::Missing {
        State::AppendOnly
    } else if let Some(problem) = nextseq_problem {
        State::Blocked {
            reason: format!(
                "nextseq cannot be read ({problem}); fix it with `fspl queue-set-next`"
            ),
        }
    } else {
        let next = nextseq.unwrap_or(1);
        let later: Vec<u64> = by_seq.range(next..).map(|(k, _)| *k).collect();
        if later.is_empty() {
            State::Empty
        } else if later[0] != next {
            gap = Some(Gap {
                waiting_for: next,
                present: later[0],
            });
            let mut reason = format!(
                "waiting for seq {next}; seq{} {} present",
                if later.len() == 1 { "" } else { "s" },
                ranges(later.iter().copied(), 8)
            );
            if !unreadable.is_empty() {
                reason.push_str(&format!(
                    "; {} job file{} could not be read (one may be seq {next})",
                    unreadable.len(),
                    if unreadable.len() == 1 { "" } else { "s" }
                ));
            }
            State::Blocked { reason }
        } else if let Some((_, name, why)) = would_refuse
            .iter()
            .find(|(seq, _, _)| *seq == next)
            .filter(|_| by_seq.get(&next).is_some_and(|v| v.len() == 1))
        {
            State::Blocked {
                reason: format!(
                    "the next job (seq {next}, {}) would be refused: {why}",
                    name.to_string_lossy()
                ),
            }
        } else if let Some(d) = duplicates
            .iter()
            .find(|d| d.seq == next && d.refused.len() == d.files.len())
        {
            State::Blocked {
                reason: format!(
                    "every file with seq {next} ({}) would be refused",
                    d.files.len()
                ),
            }
        } else if let Some(d) = duplicates.iter().find(|d| d.seq == next && !d.identical) {
            State::Blocked {
                reason: format!(
                    "seq {next} is in {} files with different contents; remove the wrong one",
                    d.files.len() - d.refused.len()
                ),
            }
        } else {
            // Up to the first seq processing would stop at: copies that are
            // not one job, or a job (every copy) that would be refused.
            let stops_at = |seq: u64| {
                duplicates
                    .iter()
                    .any(|d| d.seq == seq && (!d.identical || d.refused.len() == d.files.len()))
                    || (by_seq.get(&seq).is_some_and(|v| v.len() == 1)
                        && would_refuse.iter().any(|(s, _, _)| *s == seq))
            };
            let mut runnable = 0;
            let mut seq = next;
            while by_seq.contains_key(&seq) && !stops_at(seq) {
                runnable += 1;
                match seq.checked_add(1) {
                    Some(n) => seq = n,
                    None => break,
                }
            }
            State::Ready { runnable }
        }
    };
    // A recorded failure applies while its job is still there and may run.
    let last_failure = last_failure::read(queue).filter(|f| {
        nextseq.is_none_or(|n| f.seq >= n)
            && s.jobs.iter().any(|j| j.seq == f.seq && j.name == f.file)
    });
    let vetted = vet
        .as_ref()
        .map(|_| s.jobs.iter().filter(|j| j.vetted.is_some()).count() as u64);
    Ok(QueueStatus {
        dir: queue.dir().to_path_buf(),
        nextseq,
        jobs: s.jobs.len() as u64,
        lowest: by_seq.keys().next().copied(),
        highest: by_seq.keys().next_back().copied(),
        below_next,
        duplicates,
        unreadable,
        temps,
        lock,
        state,
        encrypted,
        would_refuse,
        rejected,
        last_failure,
        gap,
        vetted,
    })
}

/// The jobs in `rejected/` and the first line of each one's reason.
fn rejected_files(queue: &Queue) -> Vec<(OsString, String)> {
    let dir = queue.dir().join(crate::verify::REJECTED_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(OsString, String)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".reason"))
        .map(|n| {
            let mut r = n.clone();
            r.push(".reason");
            let why = std::fs::read_to_string(dir.join(&r))
                .map(|s| s.lines().next().unwrap_or("").to_string())
                .unwrap_or_default();
            (n, why)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_are_compact_and_capped() {
        assert_eq!(ranges([6, 7, 8, 9], 8), "6–9");
        assert_eq!(ranges([12, 6, 7, 15, 16, 8], 8), "6–8, 12, 15–16");
        assert_eq!(ranges([1, 3, 5, 7], 2), "1, 3, … (2 more ranges)");
        assert_eq!(ranges([], 3), "");
    }
}
