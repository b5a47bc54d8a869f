//! `fspl sync status`: what is pending on each side, conflicts present,
//! the last round.

use serde::Serialize;

use crate::round::{RoundReport, report_path};
use crate::scan::{Filter, scan};
use crate::state::{State, state_file};
use crate::{SyncConfig, SyncError};

#[derive(Debug, Serialize)]
pub struct SyncStatus {
    pub name: String,
    pub peer: String,
    pub dir: String,
    /// Local changes not yet put into a change set.
    pub local_changes: u64,
    /// Change sets made but not yet in the outbox (a killed round).
    pub pending: u64,
    /// Change sets in the outbox, not yet carried to the peer.
    pub outbox: u64,
    /// Change sets from the peer waiting in the inbox.
    pub inbox: u64,
    /// The seq the inbox applies next.
    pub inbox_next_seq: Option<u64>,
    /// The seq this side's next change set gets.
    pub next_seq: u64,
    /// Conflict copies present in the tree.
    pub conflicts: Vec<String>,
    pub last_round: Option<RoundReport>,
}

fn count_jobs(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("jobs"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("fspl-") && n.ends_with(".fspl")
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// The status of a sync (reads only; does not take the sync's lock).
pub fn status(cfg: &SyncConfig) -> Result<SyncStatus, SyncError> {
    let private = cfg.private_dir();
    let state = State::load(&state_file(&private))?.unwrap_or_default();
    let mut local_changes = 0;
    let mut conflicts = Vec::new();
    if cfg.dir.is_dir() {
        let filter = Filter::new(
            &cfg.dir,
            &cfg.exclude,
            &[private.clone(), cfg.inbox.clone(), cfg.outbox.clone()],
        )?;
        let s = scan(&cfg.dir, &filter)?;
        for (p, m) in &s.entries {
            if !state.entries.get(p).is_some_and(|o| o.same(m)) {
                local_changes += 1;
            }
            if p.windows(15).any(|w| w == b".sync-conflict-") {
                conflicts.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        local_changes += state
            .entries
            .keys()
            .filter(|p| !s.entries.contains_key(*p))
            .count() as u64;
    }
    let pending = std::fs::read_dir(private.join("pending"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".fspl"))
                .count() as u64
        })
        .unwrap_or(0);
    let last_round = std::fs::read(report_path(cfg))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let inbox_next_seq = std::fs::read_to_string(cfg.inbox.join("nextseq"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(SyncStatus {
        name: cfg.name.clone(),
        peer: cfg.peer.clone(),
        dir: cfg.dir.display().to_string(),
        local_changes,
        pending,
        outbox: count_jobs(&cfg.outbox),
        inbox: count_jobs(&cfg.inbox),
        inbox_next_seq,
        next_seq: state.next_seq.max(1),
        conflicts,
        last_round,
    })
}
