//! A sender's sequence file (`prepare -s SEQFILE`), guarded by an exclusive
//! lock on `SEQFILE.lock` while a number is taken.
//!
//! Taking a number advances the file in place, as `queue-process` advances
//! nextseq (see [`crate::nextseq`] and docs/durability.md): `pwrite` of the
//! new line at offset 0 and `fdatasync`, one flush instead of the replace
//! protocol's two. Numbers only grow, so the new line is never shorter
//! than the old one, and a crash during the write leaves the old or the new
//! number. A file that is missing, that cannot be opened for writing
//! (permissions, a symbolic link), or whose contents are longer than the
//! new line (padding, more lines) is replaced instead, as before.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::durable::sibling;
use crate::error::{QueueError, Result};
use crate::failpoint::hit;
use crate::lock::FileLock;
use crate::seqnum;

/// How long to wait for another `prepare` to let go of the lock. It holds it
/// for a few milliseconds; Filespooler fails at once instead.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Longest first line we read (a u64 is at most 20 digits; anything longer
/// is not a number and is refused by the parser anyway).
const READ_MAX: usize = 4096;

/// A locked sequence file.
#[derive(Debug)]
pub struct SenderSeq {
    path: PathBuf,
    _lock: FileLock,
    /// The file, open for reading and writing in place, and its length when
    /// last read or written; `None` until [`SenderSeq::read_next`] opened it, or
    /// when it cannot be updated in place.
    file: Option<(File, u64)>,
}

impl SenderSeq {
    /// Lock SEQFILE (creating SEQFILE.lock when needed).
    pub fn lock(path: &Path) -> Result<SenderSeq> {
        let lock = FileLock::acquire_within(&sibling(path, ".lock"), true, LOCK_PATIENCE)?;
        Ok(SenderSeq {
            path: path.to_path_buf(),
            _lock: lock,
            file: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next number to use; 1 when the file does not exist yet. Keeps
    /// the file open for [`SenderSeq::commit`].
    pub fn read_next(&mut self) -> Result<u64> {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path);
        match opened {
            Ok(f) => {
                let mut buf = vec![0u8; READ_MAX];
                let mut n = 0;
                while n < buf.len() {
                    match f.read_at(&mut buf[n..], n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(QueueError::Io {
                                action: "read",
                                path: self.path.clone(),
                                source: e,
                            });
                        }
                    }
                }
                let value = seqnum::parse(&self.path, &buf[..n])?;
                let len = f
                    .metadata()
                    .map_err(QueueError::io("stat", &self.path))?
                    .len();
                self.file = Some((f, len));
                Ok(value)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.file = None;
                Ok(1)
            }
            // A symbolic link, a file we may read but not write, ...: read
            // it as before; committing replaces it.
            Err(_) => {
                self.file = None;
                Ok(seqnum::read(&self.path)?.unwrap_or(1))
            }
        }
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

    /// Durably store the next number (replace protocol).
    pub fn set(&self, value: u64) -> Result<()> {
        seqnum::write(&self.path, value)
    }

    /// Record that `used` was taken: store `used + 1`, durably. In place
    /// when [`SenderSeq::read_next`] opened the file and the new line is at
    /// least as long as the file; replaced otherwise.
    pub fn commit(&mut self, used: u64) -> Result<()> {
        let next = used.checked_add(1).ok_or(QueueError::SeqExhausted {
            path: self.path.clone(),
            value: used,
        })?;
        let line = format!("{next}\n");
        match &mut self.file {
            Some((f, len)) if line.len() as u64 >= *len => {
                hit("seqfile:before-write").map_err(QueueError::io("write", &self.path))?;
                f.write_all_at(line.as_bytes(), 0)
                    .map_err(QueueError::io("write", &self.path))?;
                hit("seqfile:before-sync").map_err(QueueError::io("sync", &self.path))?;
                f.sync_data().map_err(QueueError::io("sync", &self.path))?;
                *len = line.len() as u64;
                hit("seqfile:after-sync").map_err(QueueError::io("sync", &self.path))
            }
            _ => {
                self.file = None;
                self.set(next)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(p: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap())
    }

    #[test]
    fn numbers_are_taken_in_place_once_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seq");
        let mut s = SenderSeq::lock(&p).unwrap();
        assert_eq!(s.read_next().unwrap(), 1);
        s.commit(1).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2\n");
        let ino = inode(&p);
        for v in 2..=123u64 {
            assert_eq!(s.read_next().unwrap(), v);
            s.commit(v).unwrap();
            assert_eq!(
                std::fs::read(&p).unwrap(),
                format!("{}\n", v + 1).as_bytes()
            );
        }
        // The same file all along (no replace), and nothing beside it but
        // the lock.
        assert_eq!(inode(&p), ino);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["seq", "seq.lock"]);
    }

    #[test]
    fn a_padded_or_longer_file_is_replaced_and_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seq");
        for content in ["5        \n", "5\nwritten by hand\n", "  5"] {
            std::fs::write(&p, content).unwrap();
            let mut s = SenderSeq::lock(&p).unwrap();
            assert_eq!(s.read_next().unwrap(), 5, "{content:?}");
            s.commit(5).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), b"6\n", "{content:?}");
        }
        // A line that grows ("99\n" -> "100\n") is written in place.
        std::fs::write(&p, "99\n").unwrap();
        let ino = inode(&p);
        let mut s = SenderSeq::lock(&p).unwrap();
        assert_eq!(s.read_next().unwrap(), 99);
        s.commit(99).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"100\n");
        assert_eq!(inode(&p), ino);
    }

    #[test]
    fn a_symlinked_sequence_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "7\n").unwrap();
        let p = dir.path().join("seq");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let mut s = SenderSeq::lock(&p).unwrap();
        assert_eq!(s.read_next().unwrap(), 7);
        s.commit(7).unwrap();
        // As before: the link is replaced by a file, the target untouched.
        assert_eq!(std::fs::read(&target).unwrap(), b"7\n");
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"8\n");
    }

    #[test]
    fn a_malformed_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seq");
        std::fs::write(&p, "abc\n").unwrap();
        let mut s = SenderSeq::lock(&p).unwrap();
        assert!(matches!(
            s.read_next(),
            Err(QueueError::BadSeqNumber { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"abc\n");
    }

    #[test]
    fn the_last_number_cannot_be_committed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seq");
        std::fs::write(&p, format!("{}\n", u64::MAX)).unwrap();
        let mut s = SenderSeq::lock(&p).unwrap();
        assert_eq!(s.read_next().unwrap(), u64::MAX);
        assert!(matches!(
            s.commit(u64::MAX),
            Err(QueueError::SeqExhausted { .. })
        ));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            format!("{}\n", u64::MAX).as_bytes()
        );
    }
}
