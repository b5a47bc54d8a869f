//! A sender's sequence file (`prepare -s SEQFILE`), guarded by an exclusive
//! lock on `SEQFILE.lock` while a number is taken.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::durable::sibling;
use crate::error::{QueueError, Result};
use crate::lock::FileLock;
use crate::seqnum;

/// How long to wait for another `prepare` to let go of the lock. It holds it
/// for a few milliseconds; Filespooler fails at once instead.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// A locked sequence file.
#[derive(Debug)]
pub struct SenderSeq {
    path: PathBuf,
    _lock: FileLock,
}

impl SenderSeq {
    /// Lock SEQFILE (creating SEQFILE.lock when needed).
    pub fn lock(path: &Path) -> Result<SenderSeq> {
        let lock = FileLock::acquire_within(&sibling(path, ".lock"), true, LOCK_PATIENCE)?;
        Ok(SenderSeq {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next number to use; 1 when the file does not exist yet.
    pub fn next(&self) -> Result<u64> {
        Ok(seqnum::read(&self.path)?.unwrap_or(1))
    }

    /// The next number, creating the file (holding 1) when it is missing, as
    /// `prepare-get-next` does in Filespooler.
    pub fn next_creating(&self) -> Result<u64> {
        match seqnum::read(&self.path)? {
            Some(v) => Ok(v),
            None => {
                seqnum::write(&self.path, 1)?;
                Ok(1)
            }
        }
    }

    /// Durably store the next number.
    pub fn set(&self, value: u64) -> Result<()> {
        seqnum::write(&self.path, value)
    }

    /// Record that `used` was taken: store `used + 1`.
    pub fn commit(&self, used: u64) -> Result<()> {
        let next = used.checked_add(1).ok_or(QueueError::SeqExhausted {
            path: self.path.clone(),
            value: used,
        })?;
        self.set(next)
    }
}
