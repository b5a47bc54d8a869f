//! `dir:PATH` (or a plain path): a local directory as destination and
//! source.
//!
//! - **A queue directory** (it has `jobs/`): jobs are delivered into its
//!   `jobs/`, and taken from there, like `queue-write` and `queue-process`
//!   would, so a queue on a mounted disk or a shared file system can be
//!   pushed to and pulled from. Taking jobs from a queue holds its lock
//!   (`nextseq.lock`, or `push.lock` when it has none), as a push from it
//!   would, so nothing processes or pushes them meanwhile.
//! - **Any other directory** (a Syncthing or Dropbox folder, a USB stick):
//!   a job appears as `PATH/fspl-<uuid>.fspl`, by an atomic rename of a
//!   complete, flushed `PATH/.fspl-tmp-<uuid>`, so a watcher on the other
//!   side never sees a partial file. Pulling takes `fspl-*.fspl` regular
//!   files (no link is followed; temporaries, which synced folders also
//!   use under their own names, are ignored).
//!
//! Either way jobs are stored through [`fspl_queue::batch::Batch`]: checked
//! as `queue-write` checks them, one flush and one directory fsync per
//! batch, and under the name they had in the outbox, never replacing a
//! file: a resent job lands on its own earlier copy (identical bytes: an
//! acknowledgement), and a different file under that name is a refusal.
//! A job file on the destination's file system (and the pusher's own) is
//! linked into place rather than copied ([`Batch::add_linked`]).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fspl_queue::batch::{Batch, BatchLimits, Outcome, Sealed};
use fspl_queue::lock::FileLock;
use fspl_queue::{EntryKind, JobSource, Queue, classify};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use tracing::warn;

use crate::{AckSink, hand_over};

use crate::error::TransportError;
use crate::{Ack, OutgoingJob, RemoteJob, Sink, Source};

/// The lock file an outbox without `nextseq.lock` (an append-only queue)
/// gets for pushes and pulls.
pub const PUSH_LOCK: &str = "push.lock";

/// Where jobs go in `path`: its `jobs/` when it is a queue directory, else
/// the directory itself. Errors when it is missing or not a directory.
fn target(path: &Path) -> Result<(PathBuf, bool), TransportError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(TransportError::NotADir {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TransportError::NoSuchDir {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(TransportError::io("open directory", path, e)),
    }
    let q = Queue::new(path);
    if std::fs::metadata(q.jobs_dir()).is_ok_and(|m| m.is_dir()) {
        Ok((q.jobs_dir().to_path_buf(), true))
    } else {
        Ok((path.to_path_buf(), false))
    }
}

/// Take the lock that keeps two pushes (or a push and a queue-process) of
/// one queue directory apart: `nextseq.lock` when it has one, else
/// `push.lock` (created).
pub fn lock_queue(dir: &Path) -> Result<FileLock, TransportError> {
    let q = Queue::new(dir);
    let (path, create) = if q.lock_path().exists() {
        (q.lock_path(), false)
    } else {
        (dir.join(PUSH_LOCK), true)
    };
    FileLock::try_acquire(&path, create).map_err(|e| match e {
        e @ fspl_queue::QueueError::Locked { .. } => TransportError::Busy {
            outbox: dir.to_path_buf(),
            source: e,
        },
        e => TransportError::Queue(e),
    })
}

/// An exclusive `flock` on an open directory, released when it is closed.
fn lock_dir(dir_fd: &File, dir: &Path) -> Result<(), TransportError> {
    use rustix::fs::{FlockOperation, flock};
    match flock(dir_fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(Errno::WOULDBLOCK) => Err(TransportError::Busy {
            outbox: dir.to_path_buf(),
            source: fspl_queue::QueueError::Locked {
                path: dir.to_path_buf(),
                holder: fspl_queue::lock::lock_holder(dir_fd),
            },
        }),
        Err(e) => Err(TransportError::io("lock directory", dir, e.into())),
    }
}

/// How many jobs a push into a directory commits at a time: several
/// batches, so that one is flushed and linked while the next is received
/// and the one before is removed from the outbox (three threads).
pub const SINK_BATCH_JOBS: usize = 2048;

/// A local directory as the destination of a push. Jobs are received into
/// a batch on the caller's thread; a full batch is committed on a thread
/// of its own while the next one fills (at most one batch waits), and its
/// acknowledgements come back through `poll`.
pub struct DirSink {
    batch: Batch,
    dir: PathBuf,
    /// The caller's ids of the jobs in the batch, in order.
    ids: Vec<u64>,
    /// Acknowledgements ready for `poll` (refusals found while receiving,
    /// and what the committer sent back).
    acks: Vec<Ack>,
    committer: Committer,
}

/// What a committed batch gives back: an acknowledgement per job, and the
/// error of a job (or of the whole batch) that could not be stored.
type Done = (Vec<Ack>, Option<TransportError>);

struct Committer {
    tx: Option<std::sync::mpsc::SyncSender<(Vec<u64>, Sealed)>>,
    rx: std::sync::mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Batches handed over and not yet answered.
    outstanding: usize,
}

impl Committer {
    fn start(dir: &Path) -> Result<Committer, TransportError> {
        // A rendezvous: handing over a batch waits until the previous one
        // is being committed, so at most two batches hold files open.
        let (tx, jobs) = std::sync::mpsc::sync_channel::<(Vec<u64>, Sealed)>(0);
        let (done, rx) = std::sync::mpsc::channel::<Done>();
        let path = dir.to_path_buf();
        let dir = path.clone();
        let thread = std::thread::Builder::new()
            .name("fspl-commit".into())
            .spawn(move || {
                for (ids, sealed) in jobs {
                    if done.send(commit(&dir, ids, sealed)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| TransportError::io("start a thread to commit into", &path, e))?;
        Ok(Committer {
            tx: Some(tx),
            rx,
            thread: Some(thread),
            outstanding: 0,
        })
    }

    fn submit(&mut self, ids: Vec<u64>, sealed: Sealed) -> Result<(), TransportError> {
        let gone = || TransportError::Backend {
            message: "the thread committing batches stopped".into(),
            kind: crate::TransportErrorKind::Permanent,
        };
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send((ids, sealed)).map_err(|_| gone())?;
        self.outstanding += 1;
        Ok(())
    }

    /// Answers that arrived, without waiting.
    fn collect(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while self.outstanding > 0 {
            match self.rx.try_recv() {
                Ok(d) => {
                    self.outstanding -= 1;
                    out.push(d);
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Wait for the answer to the oldest batch outstanding (there is one).
    fn next(&mut self) -> Done {
        match self.rx.recv() {
            Ok(d) => {
                self.outstanding -= 1;
                d
            }
            Err(_) => {
                // The thread died (a panic): nothing more will come.
                self.outstanding = 0;
                (
                    Vec::new(),
                    Some(TransportError::Backend {
                        message: "the thread committing batches stopped".into(),
                        kind: crate::TransportErrorKind::Permanent,
                    }),
                )
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Commit one sealed batch: an acknowledgement for each job (durable, or
/// refused when another file has its name); a job that could not be
/// placed, or a failed flush, is the error.
fn commit(dir: &Path, ids: Vec<u64>, sealed: Sealed) -> Done {
    let done = match sealed.commit() {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Some(e.into())),
    };
    let mut acks = Vec::with_capacity(done.len());
    let mut failed = None;
    for (id, c) in ids.into_iter().zip(done) {
        match c.outcome {
            Outcome::Stored | Outcome::AlreadyThere => acks.push(Ack::Durable(id)),
            Outcome::Conflict => acks.push(Ack::Refused {
                id,
                reason: format!(
                    "a different file named {} is already in {} (not replaced)",
                    c.name.to_string_lossy(),
                    dir.display()
                ),
            }),
            Outcome::Failed(e) => {
                failed.get_or_insert(e.into());
            }
        }
    }
    (acks, failed)
}

impl DirSink {
    pub fn open(path: &Path) -> Result<DirSink, TransportError> {
        let limits = BatchLimits {
            max_jobs: SINK_BATCH_JOBS,
            ..BatchLimits::default()
        };
        DirSink::with_limits(path, limits)
    }

    pub fn with_limits(path: &Path, limits: BatchLimits) -> Result<DirSink, TransportError> {
        let (dir, queue) = target(path)?;
        let batch = Batch::open(&dir, path, None, limits)?;
        if !queue {
            // In a queue, queue-process removes what a killed writer left;
            // in a plain folder, nobody else would.
            remove_stale_temps(&dir);
        }
        Ok(DirSink {
            batch,
            committer: Committer::start(&dir)?,
            dir,
            ids: Vec::new(),
            acks: Vec::new(),
        })
    }

    /// Hand the batch to the committer.
    fn seal(&mut self) -> Result<(), TransportError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.ids);
        self.committer.submit(ids, self.batch.seal())
    }

    /// Wait for the committer's next answer: its acknowledgements into
    /// `acks`, its error returned.
    fn gather_one(&mut self) -> Result<(), TransportError> {
        let (acks, err) = self.committer.next();
        self.acks.extend(acks);
        err.map_or(Ok(()), Err)
    }

    /// Move what the committer answered into `acks`; the first error, if
    /// any (the acknowledgements stay for the next `poll`).
    fn gather(&mut self) -> Result<(), TransportError> {
        let mut first = None;
        for (acks, err) in self.committer.collect() {
            self.acks.extend(acks);
            if let Some(e) = err {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Sink for DirSink {
    fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError> {
        // A job file on this file system is linked into place, not copied.
        let linked = match job.reader.as_file() {
            Some(f) => self.batch.add_linked(f, Path::new(job.name), job.name),
            None => Ok(None),
        };
        let added = match linked {
            Ok(None) => self
                .batch
                .add_named(job.reader, Path::new(job.name), job.name),
            r => r.map(|n| n.unwrap_or_default()),
        };
        match added {
            Ok(_) => self.ids.push(id),
            Err(e) if e.is_refusal() => self.acks.push(Ack::Refused {
                id,
                reason: fspl_queue::display_chain(&e),
            }),
            Err(e) => return Err(e.into()),
        }
        if self.batch.is_full() {
            self.seal()?;
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<Ack>, TransportError> {
        self.gather()?;
        Ok(std::mem::take(&mut self.acks))
    }

    fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
        self.seal()?;
        // One batch at a time: the driver removes a batch's jobs from the
        // outbox while the next one is committed.
        while self.committer.outstanding > 0 {
            let r = self.gather_one();
            hand_over(&mut self.acks, acked)?;
            r?;
        }
        hand_over(&mut self.acks, acked)
    }

    fn delivers_into(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// A local directory as the source of a pull.
pub struct DirSource {
    dir: PathBuf,
    dir_fd: File,
    /// Held while jobs are taken from a queue directory.
    _lock: Option<FileLock>,
}

impl DirSource {
    pub fn open(path: &Path) -> Result<DirSource, TransportError> {
        let (dir, queue) = target(path)?;
        let lock = if queue { Some(lock_queue(path)?) } else { None };
        let dir_fd = fspl_queue::durable::open_dir_following(&dir)?;
        if !queue {
            // Two pulls of one folder on this machine take turns (a lock
            // file would be synced to the other side: the directory
            // itself is locked).
            lock_dir(&dir_fd, &dir)?;
        }
        Ok(DirSource {
            dir,
            dir_fd,
            _lock: lock,
        })
    }
}

impl Source for DirSource {
    fn list(&mut self) -> Result<Vec<RemoteJob>, TransportError> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| TransportError::io("read directory", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| TransportError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            if classify(&name) != EntryKind::Job {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(TransportError::io("stat", entry.path(), e)),
            };
            if !meta.file_type().is_file() {
                let what = if meta.file_type().is_symlink() {
                    "a symbolic link (not followed)"
                } else {
                    "not a regular file"
                };
                warn!(file = %entry.path().display(), "not taking {what}");
                continue;
            }
            out.push(RemoteJob {
                key: name,
                len: Some(meta.size()),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn open(&mut self, job: &RemoteJob) -> Result<Option<Box<dyn JobSource + '_>>, TransportError> {
        let path = self.dir.join(&job.key);
        let fd = match rustix::fs::openat(
            &self.dir_fd,
            job.key.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(TransportError::io("open", path, e.into())),
        };
        let f = File::from(fd);
        let meta = f
            .metadata()
            .map_err(|e| TransportError::io("stat", &path, e))?;
        if !meta.is_file() {
            return Err(TransportError::io(
                "read",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        Ok(Some(Box::new(f)))
    }

    fn remove(&mut self, jobs: &[RemoteJob]) -> Result<(), TransportError> {
        remove_durably(
            &self.dir_fd,
            &self.dir,
            jobs.iter().map(|j| j.key.as_os_str()),
            "pull",
        )
    }

    fn describe(&self, job: &RemoteJob) -> PathBuf {
        self.dir.join(&job.key)
    }

    fn takes_from(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// Remove temporaries (`.fspl-tmp-*`) that a killed push left in a plain
/// folder: unlocked and not written to for
/// [`fspl_queue::scan::STALE_TEMP_AGE`], as `queue-process` does in
/// queues. Best effort: a failure only leaves the file.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in rd.flatten() {
        if classify(&e.file_name()) != EntryKind::Temp {
            continue;
        }
        let path = e.path();
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_flags())
            .open(&path)
        else {
            continue;
        };
        let stale = f
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= fspl_queue::scan::STALE_TEMP_AGE);
        if stale && f.try_lock().is_ok() && std::fs::remove_file(&path).is_ok() {
            tracing::debug!(file = %path.display(), "removed a temporary file left by a killed push");
        }
    }
}

fn libc_flags() -> i32 {
    (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
}

/// Unlink every name in `dir` (one that is gone already is fine), then
/// fsync `dir` once. `family` names the failpoints (`push:`, `pull:`).
pub(crate) fn remove_durably<'a>(
    dir_fd: &File,
    dir: &Path,
    names: impl IntoIterator<Item = &'a OsStr>,
    family: &str,
) -> Result<(), TransportError> {
    use fspl_queue::failpoint::hit;
    let fp = |step: &str| format!("{family}:{step}");
    for (i, name) in names.into_iter().enumerate() {
        if i == 1 {
            hit(&fp("mid-remove")).map_err(|e| TransportError::io("remove", dir.join(name), e))?;
        }
        match rustix::fs::unlinkat(dir_fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(TransportError::io("remove", dir.join(name), e.into())),
        }
    }
    hit(&fp("before-remove-sync")).map_err(|e| TransportError::io("sync directory", dir, e))?;
    dir_fd
        .sync_all()
        .map_err(|e| TransportError::io("sync directory", dir, e))?;
    hit(&fp("after-remove-sync")).map_err(|e| TransportError::io("sync directory", dir, e))
}

/// Whether two paths are the same directory (device and inode).
pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
