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
        // When the holder lets go between our attempt and the look at
        // /proc/locks, nobody is listed: try again then, so that we either
        // get the lock or can name who has it. (Never waits: a few tries.)
        for attempt in 0..10 {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(FileLock {
                        file,
                        path: path.to_path_buf(),
                    });
                }
                Err(TryLockError::WouldBlock) => {
                    let holder = lock_holder(&file);
                    if holder.is_some() || attempt == 9 {
                        return Err(QueueError::Locked {
                            path: path.to_path_buf(),
                            holder,
                        });
                    }
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
        unreachable!("the last attempt returns")
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

    #[test]
    fn regression_a_lock_released_while_it_was_reported_lost_the_holder_pid() {
        // A holder that lets go between our failed attempt and the look at
        // /proc/locks left "locked by another process" without a pid (seen
        // when a manual queue-process competed with the daemon).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        FileLock::try_acquire(&p, true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flapper = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Runs of a few hundred microseconds, as a daemon
                    // run with nothing to do takes.
                    if let Ok(l) = FileLock::try_acquire(&p, false) {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        drop(l);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            })
        };
        let mut without_pid = 0;
        let mut contended = 0;
        // Until enough refusals were seen (a loaded machine may not run
        // the flapper for a while), within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut attempts = 0u64;
        while (attempts < 5_000 || contended < 50) && std::time::Instant::now() < deadline {
            attempts += 1;
            if let Err(QueueError::Locked { holder, .. }) = FileLock::try_acquire(&p, false) {
                contended += 1;
                if holder.is_none() {
                    without_pid += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        flapper.join().unwrap();
        assert!(contended > 0, "no contention arose");
        assert_eq!(
            without_pid, 0,
            "{without_pid} of {contended} refusals named no holder"
        );
    }
}
