//! The last-synced state: what each path was after the last round (as
//! scanned and sent, or as received and applied), deleted paths with the
//! time they were noticed (kept a while for conflicts), the next seq of
//! the change sets this side sends, and the tree's marker. Kept in one
//! MessagePack file, replaced atomically and durably after every step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SyncError;
use crate::meta::Meta;

/// Tombstones older than this are forgotten (90 days, in ns).
pub const TOMBSTONE_KEEP_NS: i64 = 90 * 24 * 3600 * 1_000_000_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The id written in the tree's marker file when this state began.
    pub marker: String,
    /// The seq of the next change set this side sends.
    pub next_seq: u64,
    pub entries: BTreeMap<Vec<u8>, Meta>,
    /// Deleted paths and when the deletion was noticed (ns).
    pub deleted: BTreeMap<Vec<u8>, i64>,
}

impl State {
    pub fn new(marker: String) -> State {
        State {
            version: 1,
            marker,
            next_seq: 1,
            ..State::default()
        }
    }

    /// Read the state file; None when there is none yet.
    pub fn load(path: &Path) -> Result<Option<State>, SyncError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SyncError::io("read", path, e)),
        };
        rmp_serde::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SyncError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Replace the state file (temporary, fsync, rename, fsync of the
    /// directory).
    pub fn save(&mut self, path: &Path, now: i64) -> Result<(), SyncError> {
        self.deleted
            .retain(|_, at| now.saturating_sub(*at) < TOMBSTONE_KEEP_NS);
        let bytes = rmp_serde::to_vec(self).map_err(|e| SyncError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        fspl_queue::durable::replace_file(path, &bytes).map_err(|e| SyncError::Queue {
            what: "save the sync state".into(),
            source: e,
        })
    }

    /// Record a path as now being `meta`.
    pub fn set(&mut self, p: &[u8], meta: Meta) {
        self.deleted.remove(p);
        self.entries.insert(p.to_vec(), meta);
    }

    /// Record a path as deleted at `at`.
    pub fn delete(&mut self, p: &[u8], at: i64) {
        self.entries.remove(p);
        self.deleted.insert(p.to_vec(), at);
    }

    /// Forget a path (excluded now, or a directory that stayed).
    pub fn forget(&mut self, p: &[u8]) {
        self.entries.remove(p);
        self.deleted.remove(p);
    }
}

/// Where the state lives: `state` as configured, else the private
/// directory.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.msgpack")
}
