//! `fspl sync`: two-way replication of a directory tree as ordered,
//! signed jobs. Each round scans the tree, compares it with the last
//! synced state, puts the changes (files as a tar stream, deletions as
//! tombstones) into one change-set job in the outbox, then applies every
//! change set waiting in the inbox in seq order. See docs/sync.md for the
//! model, the conflict rule and the safety rules.

pub mod apply;
pub mod changeset;
pub mod config;
pub mod fsops;
pub mod job;
pub mod meta;
pub mod round;
pub mod scan;
pub mod state;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Compression, SyncConfig};
pub use round::{Options, RoundReport, round};

/// What a sync round needs that is loaded once: keys, trust, identities.
pub struct Keys {
    pub signer: Option<fspl_trust::SecretKey>,
    pub trust: Option<fspl_trust::TrustFile>,
    /// `encrypt_to` recipients, checked when loaded, parsed at each use.
    pub recipients: Vec<String>,
    pub identities: Option<Arc<fspl_trust::crypt::Identities>>,
}

impl Keys {
    pub fn load(cfg: &SyncConfig) -> Result<Keys, SyncError> {
        let signer = match &cfg.sign {
            Some(p) => Some(fspl_trust::SecretKey::load(p).map_err(|e| {
                SyncError::Keys(format!("sign: {}", fspl_queue::display_chain(&e)))
            })?),
            None => None,
        };
        let trust = match &cfg.trust {
            Some(p) => Some(fspl_trust::TrustFile::load(p).map_err(|e| {
                SyncError::Keys(format!("trust: {}", fspl_queue::display_chain(&e)))
            })?),
            None => None,
        };
        let mut recipients = Vec::new();
        for spec in &cfg.encrypt_to {
            if let Some(path) = spec.strip_prefix('@') {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| SyncError::io("read recipients file", Path::new(path), e))?;
                recipients.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            } else {
                recipients.push(spec.clone());
            }
        }
        for r in &recipients {
            fspl_trust::crypt::parse_recipient(r)
                .map_err(|e| SyncError::Keys(format!("encrypt_to: {e}")))?;
        }
        let identities = if cfg.identity.is_empty() {
            None
        } else {
            Some(Arc::new(
                fspl_trust::crypt::Identities::load(&cfg.identity).map_err(|e| {
                    SyncError::Keys(format!("identity: {}", fspl_queue::display_chain(&e)))
                })?,
            ))
        };
        Ok(Keys {
            signer,
            trust,
            recipients,
            identities,
        })
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{message}")]
    Config { message: String },
    #[error(
        "syncing is disabled: exclude contains {pattern:?} (as in CoCalc, `.` or `~` in the list turns syncing off)"
    )]
    Disabled { pattern: String },
    #[error("the tree's root {} is missing: refusing to sync (never \"delete everything\"); mount or create it", path.display())]
    RootMissing { path: PathBuf },
    #[error("the tree's root {} is not a directory", path.display())]
    RootNotDir { path: PathBuf },
    #[error("the tree's root {} does not hold this sync's marker ({why}): is it unmounted, or another tree? refusing to sync; check it, then run `fspl sync once --force` to accept this tree", path.display())]
    Unmounted { path: PathBuf, why: String },
    #[error("the tree's root {} is empty but {synced} entries were synced before: is it unmounted or wiped? refusing to send their deletion; check it, then run `fspl sync once --force`", path.display())]
    EmptyRoot { path: PathBuf, synced: usize },
    #[error(
        "{what} would delete {deletes} of {total} entries (more than the {share}% allowed by max_delete): refusing; check it, then run `fspl sync once --force`"
    )]
    TooManyDeletes {
        what: String,
        deletes: usize,
        total: usize,
        share: u32,
    },
    #[error("another sync round on {} is under way", path.display())]
    Busy { path: PathBuf },
    #[error("the inbox {} is locked by another process{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InboxLocked { path: PathBuf, pid: Option<u32> },
    #[error("change set seq {seq} in the inbox was refused and moved to {}: {reason}; the inbox waits for seq {seq}: ask the peer to resend it", moved.display())]
    Refused {
        seq: u64,
        reason: String,
        moved: PathBuf,
    },
    #[error("change set seq {seq}: {source}")]
    Hostile {
        seq: u64,
        #[source]
        source: changeset::ReadError,
    },
    /// A change set's payload does not match its header (found while the
    /// apply reads it from the job file): the round refuses it for good.
    #[error("its payload does not match its header: {0}")]
    Damaged(String),
    #[error("keys: {0}")]
    Keys(String),
    #[error("{0}")]
    Job(String),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot scan {}", path.display())]
    Scan {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}")]
    Queue {
        what: String,
        #[source]
        source: fspl_queue::QueueError,
    },
    #[error("sync state {} is damaged: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Apply {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SyncError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> SyncError {
        SyncError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Retrying will not help until someone acts (a refused change set, a
    /// safety refusal, a configuration that turns syncing off, bad keys).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SyncError::Config { .. }
                | SyncError::Disabled { .. }
                | SyncError::Unmounted { .. }
                | SyncError::EmptyRoot { .. }
                | SyncError::TooManyDeletes { .. }
                | SyncError::Refused { .. }
                | SyncError::Hostile { .. }
                | SyncError::Damaged(_)
                | SyncError::Keys(_)
                | SyncError::State { .. }
        )
    }

    /// Someone else holds what the round needs: try again shortly.
    pub fn is_locked(&self) -> bool {
        matches!(self, SyncError::Busy { .. } | SyncError::InboxLocked { .. })
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
