//! Advisory `flock` locks, as Filespooler uses them: `nextseq.lock` guards a
//! queue's nextseq; `SEQFILE.lock` guards a sender's sequence file.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{QueueError, Result};

/// A held exclusive lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Take the lock without waiting; fail at once naming the holder when
    /// another process has it. `create` makes the lock file when missing.
    pub fn try_acquire(path: &Path, create: bool) -> Result<FileLock> {
        let file = open_lock_file(path, create)?;
        match file.try_lock() {
            Ok(()) => Ok(FileLock {
                file,
                path: path.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => Err(QueueError::Locked {
                path: path.to_path_buf(),
                holder: lock_holder(&file),
            }),
            Err(TryLockError::Error(e)) => Err(QueueError::Io {
                action: "lock",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Take the lock, waiting up to `patience` for another holder to let go.
    pub fn acquire_within(path: &Path, create: bool, patience: Duration) -> Result<FileLock> {
        let file = open_lock_file(path, create)?;
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(FileLock {
                        file,
                        path: path.to_path_buf(),
                    });
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(QueueError::Locked {
                        path: path.to_path_buf(),
                        holder: lock_holder(&file),
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(QueueError::Io {
                        action: "lock",
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(QueueError::io("open lock file", path))
}

/// Whether a lock file is held, found without taking the lock (taking it,
/// even briefly, could make a starting `queue-process` fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    Free,
    Held {
        pid: Option<u32>,
    },
    /// No lock file: an append-only queue.
    Missing,
}

pub fn lock_state(path: &Path) -> LockState {
    let Ok(file) = File::open(path) else {
        return LockState::Missing;
    };
    match lock_holder(&file) {
        Some(pid) => LockState::Held { pid: Some(pid) },
        None if std::fs::metadata("/proc/locks").is_ok() => LockState::Free,
        // No /proc: the only way left to tell is to try.
        None => match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                LockState::Free
            }
            Err(_) => LockState::Held { pid: None },
        },
    }
}

/// Who holds a lock on this file, if we can tell: Linux lists every flock in
/// /proc/locks with the owner's pid and the file's device and inode.
pub fn lock_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in_proc_locks(&locks, &want)
}

fn holder_in_proc_locks(locks: &str, dev_ino: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters carry
        // "->" after the id and are not holders.
        if fields.len() < 6 || fields.get(1) == Some(&"->") || fields[1] != "FLOCK" {
            return None;
        }
        if fields[5] != dev_ino {
            return None;
        }
        fields[4].parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_parsing_finds_the_holder_not_the_waiter() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:77 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 fd:01:77 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 5 fd:01:78 0 EOF\n";
        assert_eq!(holder_in_proc_locks(text, "fd:01:77"), Some(4242));
        assert_eq!(holder_in_proc_locks(text, "fd:01:78"), None);
        assert_eq!(holder_in_proc_locks(text, "fd:01:79"), None);
    }

    #[test]
    fn a_second_open_file_cannot_take_a_held_lock_and_names_this_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let held = FileLock::try_acquire(&p, true).unwrap();
        match FileLock::try_acquire(&p, false) {
            Err(QueueError::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        FileLock::try_acquire(&p, false).unwrap();
    }
}
