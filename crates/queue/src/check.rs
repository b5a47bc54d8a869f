//! `queue-check`: read every job completely (header, codec, digest and,
//! with a trust file, signature), and report what is wrong with a queue;
//! `--repair` moves bad files to `DIR/corrupt/` (never deletes them) and
//! removes stale temporaries.

use std::ffi::OsString;
use std::time::SystemTime;

use fspl_format::DigestAlg;
use fspl_trust::TrustFile;
use fspl_trust::digest::hash_reader;

use crate::decoder::Decoder;
use crate::durable::sync_dir;
use crate::error::{QueueError, Result};
use crate::queue::{EntryKind, Queue, classify};
use crate::scan::temp_is_stale;
use crate::status::{QueueStatus, status};

/// Where `--repair` puts bad job files.
pub const CORRUPT_DIR: &str = "corrupt";

/// A job file that cannot run as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFile {
    pub name: OsString,
    pub seq: Option<u64>,
    pub reason: String,
}

#[derive(Debug)]
pub struct CheckReport {
    /// What `queue-status` says (gaps, duplicates, below nextseq, lock...).
    pub status: QueueStatus,
    /// Job files read completely and found whole.
    pub good: u64,
    /// Payload bytes read.
    pub bytes: u64,
    pub bad: Vec<BadFile>,
    /// Files in `jobs/` that are neither jobs, `.out` files nor temporaries.
    pub foreign: Vec<OsString>,
    /// Temporaries whose writer is gone.
    pub stale_temps: Vec<OsString>,
}

impl CheckReport {
    /// Problems found: bad files, stale temporaries, conflicting copies of
    /// a seq. (A queue that waits for a job that has not arrived is not a
    /// problem here; `blocked` says whether processing can go on.)
    pub fn problems(&self) -> usize {
        self.bad.len()
            + self.stale_temps.len()
            + self
                .status
                .duplicates
                .iter()
                .filter(|d| !d.identical)
                .count()
    }

    pub fn blocked(&self) -> bool {
        matches!(self.status.state, crate::status::State::Blocked { .. })
    }

    /// 0: nothing wrong and processing can go on (or nothing to do);
    /// 1: problems found, or blocked.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.problems() > 0 || self.blocked())
    }
}

/// Read every job fully and report.
pub fn check(
    queue: &Queue,
    decoder: Option<&Decoder>,
    trust: Option<&TrustFile>,
) -> Result<CheckReport> {
    let st = status(queue, decoder, trust)?;
    let mut report = CheckReport {
        good: 0,
        bytes: 0,
        bad: Vec::new(),
        foreign: Vec::new(),
        stale_temps: st
            .temps
            .iter()
            .filter(|t| t.stale)
            .map(|t| t.name.clone())
            .collect(),
        status: st,
    };
    for (name, why) in &report.status.unreadable {
        report.bad.push(BadFile {
            name: name.clone(),
            seq: None,
            reason: why.clone(),
        });
    }
    for (seq, name, why) in &report.status.would_refuse {
        report.bad.push(BadFile {
            name: name.clone(),
            seq: Some(*seq),
            reason: format!("would be refused: {why}"),
        });
    }
    let rd = std::fs::read_dir(queue.jobs_dir())
        .map_err(QueueError::io("read directory", queue.jobs_dir()))?;
    let mut names: Vec<OsString> = Vec::new();
    for e in rd {
        let e = e.map_err(QueueError::io("read directory", queue.jobs_dir()))?;
        let name = e.file_name();
        match classify(&name) {
            EntryKind::Job => names.push(name),
            EntryKind::Temp | EntryKind::ReferenceTemp => {}
            EntryKind::Other => {
                if !name.to_string_lossy().ends_with(".fspl.out") {
                    report.foreign.push(name);
                }
            }
        }
    }
    names.sort();
    for name in names {
        if report.bad.iter().any(|b| b.name == name) {
            continue;
        }
        let mut job = match queue.open_job(&name, decoder) {
            Ok(j) => j,
            // Unreadable headers were reported by status already.
            Err(_) => continue,
        };
        let seq = job.header.seq;
        let alg = job.ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
        // No further than one byte past the length the header says.
        let read = hash_reader(alg, &mut job.payload_reader());
        job.payload.close();
        match read {
            Err(e) => report.bad.push(BadFile {
                name,
                seq: Some(seq),
                reason: match crate::bounded::too_long(&e) {
                    Some(t) => t.to_string(),
                    None => format!("payload unreadable: {e}"),
                },
            }),
            Ok((len, digest)) => match crate::verify::check_payload(&job.ext, len, &digest) {
                Err(r) => report.bad.push(BadFile {
                    name,
                    seq: Some(seq),
                    reason: r.reason,
                }),
                Ok(()) => {
                    report.good += 1;
                    report.bytes += len;
                }
            },
        }
    }
    report.bad.sort_by(|a, b| a.name.cmp(&b.name));
    report.foreign.sort();
    Ok(report)
}

/// What `--repair` did.
#[derive(Debug, Default)]
pub struct Repaired {
    pub moved: Vec<OsString>,
    pub removed_temps: Vec<OsString>,
}

/// Move every bad job file to `DIR/corrupt/` (with a `.reason` beside it)
/// and remove stale temporaries. Never deletes a job, and never replaces a
/// file already in `corrupt/` (see [`crate::quarantine`]); `moved` names
/// the files as they are called there.
pub fn repair(queue: &Queue, report: &CheckReport) -> Result<Repaired> {
    let mut done = Repaired::default();
    // Each move is made durable (both directories fsynced) before the next
    // one, as `reject` does; a name already in corrupt/ gets a suffix.
    for b in &report.bad {
        let line = match b.seq {
            Some(s) => format!("seq {s}: {}", b.reason),
            None => b.reason.clone(),
        };
        if let Some(to) = crate::quarantine::quarantine(
            queue,
            crate::quarantine::Quarantine::Corrupt,
            &b.name,
            &line,
        )? && let Some(n) = to.file_name()
        {
            done.moved.push(n.to_os_string());
        }
    }
    let now = SystemTime::now();
    for t in &report.status.temps {
        if !t.stale {
            continue;
        }
        let entry = crate::scan::TempEntry {
            name: t.name.clone(),
            kind: if t.reference {
                EntryKind::ReferenceTemp
            } else {
                EntryKind::Temp
            },
        };
        // Look again: its writer may have come back meanwhile.
        if temp_is_stale(queue, &entry, now)
            && std::fs::remove_file(queue.job_path(&t.name)).is_ok()
        {
            done.removed_temps.push(t.name.clone());
        }
    }
    sync_dir(queue.jobs_dir())?;
    Ok(done)
}
