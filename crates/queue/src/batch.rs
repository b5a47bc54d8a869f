//! Group commit: many jobs made durable with one flush.
//!
//! `queue-write` pays two journal commits per job (`fsync` of the file,
//! `fsync` of `jobs/`). A transport that delivers thousands of jobs at once
//! (`fspl push`, `fspl pull`, an SSH intake) stores them as a batch:
//!
//! 1. [`Batch::add`] / [`Batch::add_named`]: each job is received into its
//!    own temporary, checked on the way by the same code as `queue-write`
//!    ([`crate::queue`]'s `receive`): an unnamed file in DIR
//!    (`O_TMPFILE`: no directory entry until it is complete and flushed,
//!    nothing left behind by a crash), or where the file system lacks
//!    that, `DIR/.fspl-tmp-<uuid>-<n>` (created `O_EXCL`, never following
//!    a link, and `flock`ed while the batch holds it, so a cleaner can
//!    tell it from a dead writer's);
//! 2. [`Batch::commit`]: the data of every temporary is made durable with
//!    ONE flush: `syncfs(2)` of the file system holding DIR (a single
//!    temporary: `fsync` of that file). Measured on ext4 for 10,000 small
//!    files, one `syncfs` costs about as much as `sync`, while an
//!    `fdatasync` per file costs a journal commit each (1-3 ms), and
//!    `fdatasync`s issued from 64 threads at once were not batched much
//!    better. The price: `syncfs` also writes out other programs' dirty
//!    data on that file system. On kernels before 5.8, where `syncfs`
//!    does not report write errors, every file is `fsync`ed instead;
//! 3. every temporary gets its job name without replacing anything: an
//!    unnamed one is linked (`linkat` of `/proc/self/fd/N`, which never
//!    replaces), a named one renamed (`renameat2(RENAME_NOREPLACE)`).
//!    (Creating unnamed files and linking them costs the directory less
//!    than creating named ones and renaming them.) A name that is already
//!    taken by a file with the same bytes is a job delivered before (a
//!    resend): that copy is `fsync`ed and the job counts as stored; a
//!    name taken by other bytes is a conflict, and the job is not stored;
//! 4. ONE `fsync` of DIR;
//! 5. only now is every job of the batch reported stored.
//!
//! A crash before step 4 returns leaves complete files under job names
//! (and named temporaries; unnamed ones vanish), never a partial file
//! under a job name, and nothing was acknowledged: the sender sends the
//! batch again, and a job whose name was kept lands on its own earlier
//! copy. A named temporary left by a crash is removed by `queue-process`
//! once stale, like any other.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fspl_trust::crypt::Identities;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::error::{QueueError, Result};
use crate::failpoint::hit;
use crate::queue::{EntryKind, JobSource, Queue, TEMP_PREFIX, check_only, classify, receive};

/// When a batch should be committed.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Jobs in one batch (also bounded by the open files the process may
    /// have: each pending job holds its temporary open and locked).
    pub max_jobs: usize,
    /// Bytes in one batch.
    pub max_bytes: u64,
    /// Time since the first job of the batch (so that a slow stream of
    /// jobs is still acknowledged now and then).
    pub max_age: Duration,
}

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits {
            max_jobs: 16_384,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(10),
        }
    }
}

/// What became of one job of a committed batch.
#[derive(Debug)]
pub enum Outcome {
    /// Stored under its name.
    Stored,
    /// A file with the same name and the same bytes was there already (a
    /// resend): it is made durable and counts as stored.
    AlreadyThere,
    /// A file with the same name but other bytes is there: not stored.
    Conflict,
    /// Renaming it into place failed: not stored.
    Failed(QueueError),
}

impl Outcome {
    /// The job is durable under its name.
    pub fn is_stored(&self) -> bool {
        matches!(self, Outcome::Stored | Outcome::AlreadyThere)
    }
}

/// One job of a committed batch, in the order they were added.
#[derive(Debug)]
pub struct Committed {
    pub name: OsString,
    pub outcome: Outcome,
}

struct Pending {
    /// The temporary's name; `None` for an unnamed file (`O_TMPFILE`).
    tmp: Option<OsString>,
    name: OsString,
    /// Open (and, when named, locked) until the batch is done with it.
    file: File,
}

impl Pending {
    /// Remove the temporary (an unnamed one goes when it is closed).
    fn discard(&self, dir: &File) {
        if let Some(t) = &self.tmp {
            let _ = rustix::fs::unlinkat(dir, t.as_os_str(), AtFlags::empty());
        }
    }
}

/// Jobs being stored in one directory, committed together.
pub struct Batch {
    /// Where the jobs go: a queue's `jobs/`, or any folder.
    dir: PathBuf,
    dir_fd: Arc<File>,
    /// The queue (or folder) named in refusals.
    owner: PathBuf,
    identities: Option<Arc<Identities>>,
    limits: BatchLimits,
    pending: Vec<Pending>,
    bytes: u64,
    first: Option<Instant>,
    /// Whether temporaries are unnamed files (`O_TMPFILE`, linked to their
    /// names at commit); false where the file system (or a missing /proc)
    /// does not allow it.
    unnamed: bool,
    /// The device of `dir` (a job file on it can be linked in).
    dev: u64,
    /// Named temporaries are `.fspl-tmp-<tag>-<n>`: one random tag per
    /// batch (unique among writers), a counter within it.
    tag: uuid::Uuid,
    counter: u64,
}

impl Queue {
    /// A batch of jobs for this queue's `jobs/`, checked with the queue's
    /// identities (see [`Batch`]).
    pub fn batch(&self) -> Result<Batch> {
        self.check_exists()?;
        Batch::open(
            self.jobs_dir(),
            self.dir(),
            self.identities_arc(),
            BatchLimits::default(),
        )
    }
}

impl Batch {
    /// A batch storing into `dir` (a queue's `jobs/`, or a plain folder);
    /// `owner` is what refusals name (the queue directory, or `dir`).
    pub fn open(
        dir: &Path,
        owner: &Path,
        identities: Option<Arc<Identities>>,
        mut limits: BatchLimits,
    ) -> Result<Batch> {
        let dir_fd = Arc::new(crate::durable::open_dir_following(dir)?);
        let dev = rustix::fs::fstat(&*dir_fd).map_or(u64::MAX, |st| st.st_dev);
        limits.max_jobs = limits.max_jobs.clamp(1, fd_budget());
        Ok(Batch {
            dir: dir.to_path_buf(),
            dir_fd,
            owner: owner.to_path_buf(),
            identities,
            limits,
            pending: Vec::new(),
            bytes: 0,
            first: None,
            unnamed: proc_fd_links(),
            dev,
            tag: uuid::Uuid::new_v4(),
            counter: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes received into the batch so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the batch should be committed now (see [`BatchLimits`]).
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limits.max_jobs
            || self.bytes >= self.limits.max_bytes
            || self
                .first
                .is_some_and(|t| t.elapsed() >= self.limits.max_age)
    }

    /// Receive a job from `input` (`from` names it in errors) under a
    /// fresh `fspl-<uuid>.fspl` name. It is stored only by [`commit`].
    ///
    /// [`commit`]: Batch::commit
    pub fn add(&mut self, input: &mut dyn JobSource, from: &Path) -> Result<OsString> {
        let name = OsString::from(format!("fspl-{}.fspl", uuid::Uuid::new_v4()));
        self.add_named(input, from, &name)
    }

    /// Receive a job to be stored as `name` (a job name, `fspl-*.fspl`,
    /// one path component): a sender's name is kept, so that a resend
    /// lands on the earlier copy.
    pub fn add_named(
        &mut self,
        input: &mut dyn JobSource,
        from: &Path,
        name: &OsStr,
    ) -> Result<OsString> {
        check_name(name)?;
        let (file, tmp, tmp_path) = self.create_temp()?;
        let result = (|| {
            if tmp.is_some() {
                file.lock().map_err(QueueError::io("lock", &tmp_path))?;
            }
            // Flushed with the rest of the batch at commit.
            receive(
                input,
                &file,
                &tmp_path,
                self.identities.as_deref(),
                &self.owner,
                from,
                &|| Ok(()),
            )?;
            let len = file
                .metadata()
                .map_err(QueueError::io("stat", &tmp_path))?
                .len();
            hit("batch:after-add").map_err(QueueError::io("write", &tmp_path))?;
            Ok(len)
        })();
        match result {
            Ok(len) => {
                self.bytes += len;
                self.first.get_or_insert_with(Instant::now);
                self.pending.push(Pending {
                    tmp,
                    name: name.to_os_string(),
                    file,
                });
                Ok(name.to_os_string())
            }
            Err(e) => {
                if let Some(t) = &tmp {
                    let _ = rustix::fs::unlinkat(&self.dir_fd, t.as_os_str(), AtFlags::empty());
                }
                Err(e)
            }
        }
    }

    /// Take the complete job file `file` (a local outbox's, open at its
    /// start) to be stored as `name` by linking that very file into place
    /// at commit instead of copying it: checked as [`Batch::add_named`]
    /// checks a job (read; nothing written), and flushed with the batch
    /// (the commit's `syncfs` covers it: it is on the same file system).
    /// `Ok(None)` when it cannot be linked here: on another file system,
    /// owned by someone else (the link would keep their file, with their
    /// ownership, in this directory), or no way to link an open file; the
    /// caller copies it with [`Batch::add_named`].
    pub fn add_linked(
        &mut self,
        file: &File,
        from: &Path,
        name: &OsStr,
    ) -> Result<Option<OsString>> {
        check_name(name)?;
        if !self.unnamed {
            return Ok(None);
        }
        let Ok(st) = rustix::fs::fstat(file) else {
            return Ok(None);
        };
        let regular =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
        if !regular || st.st_dev != self.dev || st.st_uid != rustix::process::geteuid().as_raw() {
            return Ok(None);
        }
        let (mut reader, kept) = match (file.try_clone(), file.try_clone()) {
            (Ok(r), Ok(k)) => (r, k),
            _ => return Ok(None),
        };
        check_only(&mut reader, self.identities.as_deref(), &self.owner, from)?;
        self.bytes += st.st_size as u64;
        self.first.get_or_insert_with(Instant::now);
        self.pending.push(Pending {
            tmp: None,
            name: name.to_os_string(),
            file: kept,
        });
        Ok(Some(name.to_os_string()))
    }

    /// A new temporary in the directory: an unnamed file where the file
    /// system allows (nothing to see, nothing left behind by a crash),
    /// else `.fspl-tmp-<tag>-<n>`. Returns the file, its name if any, and
    /// a path for messages.
    fn create_temp(&mut self) -> Result<(File, Option<OsString>, PathBuf)> {
        if self.unnamed {
            match rustix::fs::openat(
                &self.dir_fd,
                ".",
                OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(fd) => {
                    return Ok((File::from(fd), None, self.dir.join("(new unnamed file)")));
                }
                // No O_TMPFILE here: named temporaries from now on.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                    self.unnamed = false;
                }
                Err(e) => {
                    return Err(QueueError::Io {
                        action: "create a file in",
                        path: self.dir.clone(),
                        source: e.into(),
                    });
                }
            }
        }
        self.counter += 1;
        let tmp = OsString::from(format!("{TEMP_PREFIX}{}-{}", self.tag, self.counter));
        let tmp_path = self.dir.join(&tmp);
        let fd = rustix::fs::openat(
            &self.dir_fd,
            tmp.as_os_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .map_err(|e| QueueError::Io {
            action: "create",
            path: tmp_path.clone(),
            source: e.into(),
        })?;
        Ok((File::from(fd), Some(tmp), tmp_path))
    }

    /// Take the jobs received so far, to be committed (on this thread or
    /// another: a [`Sealed`] batch can be sent); the batch is empty again
    /// and takes more jobs.
    pub fn seal(&mut self) -> Sealed {
        self.bytes = 0;
        self.first = None;
        Sealed {
            dir: self.dir.clone(),
            dir_fd: self.dir_fd.clone(),
            pending: std::mem::take(&mut self.pending),
        }
    }

    /// Store every job received so far: `self.seal().commit()`.
    pub fn commit(&mut self) -> Result<Vec<Committed>> {
        self.seal().commit()
    }
}

/// Jobs of a [`Batch`] taken to be stored together. Dropped without being
/// committed, its temporaries are removed.
pub struct Sealed {
    dir: PathBuf,
    dir_fd: Arc<File>,
    pending: Vec<Pending>,
}

impl Sealed {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Store every job received so far (the order of the module doc):
    /// one flush, the renames, one directory fsync. Returns what became of
    /// each job, in the order they were added; an error means nothing of
    /// the batch may be taken as stored (its temporaries are removed).
    pub fn commit(mut self) -> Result<Vec<Committed>> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let remove_all = |pending: &[Pending]| {
            for p in pending {
                p.discard(&self.dir_fd);
            }
        };
        if let Err(e) = self.flush(&pending) {
            remove_all(&pending);
            return Err(e);
        }
        if let Err(e) = hit("batch:before-rename") {
            remove_all(&pending);
            return Err(QueueError::Io {
                action: "rename into place",
                path: self.dir.join(&pending[0].name),
                source: e,
            });
        }
        let mut out = Vec::with_capacity(pending.len());
        for (i, p) in pending.iter().enumerate() {
            if i == 1
                && let Err(e) = hit("batch:mid-rename")
            {
                remove_all(&pending[i..]);
                out.extend(pending[i..].iter().map(|p| Committed {
                    name: p.name.clone(),
                    outcome: Outcome::Failed(QueueError::Io {
                        action: "rename into place",
                        path: self.dir.join(&p.name),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }),
                }));
                break;
            }
            let outcome = self.place(p);
            out.push(Committed {
                name: p.name.clone(),
                outcome,
            });
        }
        hit("batch:before-dirsync").map_err(QueueError::io("sync directory", &self.dir))?;
        self.dir_fd
            .sync_all()
            .map_err(QueueError::io("sync directory", &self.dir))?;
        hit("batch:after-dirsync").map_err(QueueError::io("sync directory", &self.dir))?;
        Ok(out)
    }

    /// Make the data of every pending temporary durable with one flush.
    fn flush(&self, pending: &[Pending]) -> Result<()> {
        hit("batch:before-flush").map_err(QueueError::io("sync", &self.dir))?;
        if pending.len() > 1 && syncfs_reports_errors() {
            return rustix::fs::syncfs(&self.dir_fd).map_err(|e| QueueError::Io {
                action: "sync the file system of",
                path: self.dir.clone(),
                source: e.into(),
            });
        }
        for p in pending {
            p.file.sync_all().map_err(QueueError::io(
                "sync",
                self.dir
                    .join(p.tmp.as_deref().unwrap_or(p.name.as_os_str())),
            ))?;
        }
        Ok(())
    }

    /// Give one temporary its name, never replacing a file: link an
    /// unnamed one, rename a named one.
    fn place(&self, p: &Pending) -> Outcome {
        let dest = self.dir.join(&p.name);
        let placed = match &p.tmp {
            None => link_unnamed(&p.file, &self.dir_fd, &p.name),
            Some(t) => rename_noreplace(&self.dir_fd, t, &self.dir_fd, &p.name),
        };
        match placed {
            Ok(()) => Outcome::Stored,
            Err(Errno::EXIST) => {
                let same = same_bytes(&self.dir_fd, &p.name, &p.file, &dest);
                p.discard(&self.dir_fd);
                match same {
                    Ok(Some(existing)) => match existing.sync_all() {
                        Ok(()) => Outcome::AlreadyThere,
                        Err(e) => Outcome::Failed(QueueError::Io {
                            action: "sync",
                            path: dest,
                            source: e,
                        }),
                    },
                    Ok(None) => Outcome::Conflict,
                    Err(e) => Outcome::Failed(e),
                }
            }
            Err(e) => {
                p.discard(&self.dir_fd);
                Outcome::Failed(QueueError::Io {
                    action: "rename into place",
                    path: dest,
                    source: e.into(),
                })
            }
        }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        for p in &self.pending {
            p.discard(&self.dir_fd);
        }
    }
}

impl Drop for Batch {
    /// Temporaries of a batch never committed are removed.
    fn drop(&mut self) {
        for p in &self.pending {
            p.discard(&self.dir_fd);
        }
    }
}

/// A name a batch may store a job under: `fspl-*.fspl`, one component.
fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if classify(name) != EntryKind::Job || b.contains(&b'/') || b.len() > 255 {
        return Err(QueueError::InvalidName {
            name: String::from_utf8_lossy(b).into_owned(),
        });
    }
    Ok(())
}

/// `Some(file)` (the existing file, open) when `name` in `dir` is a
/// regular file with the same bytes as `ours`.
fn same_bytes(dir: &File, name: &OsStr, ours: &File, path: &Path) -> Result<Option<File>> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // A link or something else: not our job.
        Err(Errno::LOOP | Errno::NXIO) => return Ok(None),
        Err(e) => {
            return Err(QueueError::Io {
                action: "open",
                path: path.to_path_buf(),
                source: e.into(),
            });
        }
    };
    let existing = File::from(fd);
    let meta = existing.metadata().map_err(QueueError::io("stat", path))?;
    let ours_len = ours.metadata().map_err(QueueError::io("stat", path))?.len();
    if !meta.is_file() || meta.len() != ours_len {
        return Ok(None);
    }
    // Our temporary is open for reading too (at offset 0 with pread).
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = read_full_at(&existing, &mut ba, off).map_err(QueueError::io("read", path))?;
        let m = read_full_at(ours, &mut bb, off).map_err(QueueError::io("read", path))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(None);
        }
        if n == 0 {
            return Ok(Some(existing));
        }
        off += n as u64;
    }
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Give the unnamed file `file` the name `name` in `dir`: `linkat` with
/// `AT_EMPTY_PATH` where the process may (it needs `CAP_DAC_READ_SEARCH`;
/// the cheaper call), else of `/proc/self/fd/N`. A link never replaces
/// anything: a taken name is `EEXIST`.
fn link_unnamed(file: &File, dir: &File, name: &OsStr) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_EMPTY_PATH: AtomicBool = AtomicBool::new(false);
    if !NO_EMPTY_PATH.load(Ordering::Relaxed) {
        match rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH) {
            Err(Errno::NOENT | Errno::PERM | Errno::INVAL) => {
                NO_EMPTY_PATH.store(true, Ordering::Relaxed);
            }
            r => return r,
        }
    }
    rustix::fs::linkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
}

/// Whether unnamed files can be linked by their /proc/self/fd path.
fn proc_fd_links() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// Rename without replacing: `renameat2(RENAME_NOREPLACE)`, or where the
/// file system does not support it, `link` (which never replaces) and
/// `unlink`.
pub fn rename_noreplace(
    from_dir: &File,
    from: &OsStr,
    to_dir: &File,
    to: &OsStr,
) -> rustix::io::Result<()> {
    match rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
            rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty())?;
            rustix::fs::unlinkat(from_dir, from, AtFlags::empty())
        }
        r => r,
    }
}

/// Whether `syncfs(2)` reports write-back errors: Linux 5.8 and later.
fn syncfs_reports_errors() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&release, (5, 8))
    })
}

fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// How many temporaries a batch may hold open: the soft limit on open
/// files, less a margin for everything else (the job being read, the
/// directories, a few hundred to spare).
fn fd_budget() -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(n) => (n as usize).saturating_sub(256).max(1),
        None => usize::MAX,
    }
}

/// Raise the soft limit on open files to the hard limit (at most 65,536),
/// so batches can be large; what `ulimit -n` would do. For commands that
/// store batches; errors are ignored (the batch then stays smaller).
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let want = l.maximum.map_or(65_536, |m| m.min(65_536));
    if l.current.is_some_and(|c| c < want) {
        l.current = Some(want);
        let _ = setrlimit(Resource::Nofile, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::init(dir.path().join("q").as_os_str(), false).unwrap();
        (dir, q)
    }

    fn job(seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = fspl_format::JobHeader {
            seq,
            ctime: fspl_format::Ctime { secs: 1, nanos: 2 },
            cmd_type: fspl_format::CmdType::Nop,
        };
        let mut out = h.encode().unwrap();
        out.extend_from_slice(payload);
        out
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_visible_before_commit_and_everything_after() {
        let (_d, q) = queue();
        let mut b = q.batch().unwrap();
        let mut added = Vec::new();
        for i in 1..=5 {
            let j = job(i, format!("payload {i}").as_bytes());
            added.push((b.add(&mut j.as_slice(), Path::new("test")).unwrap(), j));
        }
        assert_eq!(b.len(), 5);
        // Unnamed files here (ext4, tmpfs): nothing at all to see.
        assert!(b.unnamed, "this test's file system has O_TMPFILE");
        assert_eq!(names(q.jobs_dir()), Vec::<String>::new());
        let done = b.commit().unwrap();
        assert_eq!(done.len(), 5);
        for (c, (name, bytes)) in done.iter().zip(&added) {
            assert_eq!(&c.name, name);
            assert!(matches!(c.outcome, Outcome::Stored), "{:?}", c.outcome);
            assert_eq!(&std::fs::read(q.job_path(name)).unwrap(), bytes);
        }
        let after = names(q.jobs_dir());
        assert!(after.iter().all(|n| n.starts_with("fspl-")), "{after:?}");
        assert!(b.is_empty());
        assert!(b.commit().unwrap().is_empty());
    }

    #[test]
    fn a_kept_name_taken_by_the_same_bytes_is_an_ack_and_by_other_bytes_a_conflict() {
        let (_d, q) = queue();
        let a = OsStr::new("fspl-a.fspl");
        let j = job(1, b"one");
        std::fs::write(q.job_path(a), &j).unwrap();
        std::fs::write(q.job_path(OsStr::new("fspl-b.fspl")), job(2, b"two")).unwrap();
        let mut b = q.batch().unwrap();
        b.add_named(&mut j.as_slice(), Path::new("t"), a).unwrap();
        b.add_named(
            &mut job(2, b"not two").as_slice(),
            Path::new("t"),
            OsStr::new("fspl-b.fspl"),
        )
        .unwrap();
        b.add_named(
            &mut job(3, b"three").as_slice(),
            Path::new("t"),
            OsStr::new("fspl-c.fspl"),
        )
        .unwrap();
        let done = b.commit().unwrap();
        let outcomes: Vec<String> = done.iter().map(|c| format!("{:?}", c.outcome)).collect();
        assert_eq!(outcomes, ["AlreadyThere", "Conflict", "Stored"]);
        assert_eq!(
            std::fs::read(q.job_path(OsStr::new("fspl-b.fspl"))).unwrap(),
            job(2, b"two"),
            "the conflicting file was not replaced"
        );
        assert_eq!(
            names(q.jobs_dir()),
            ["fspl-a.fspl", "fspl-b.fspl", "fspl-c.fspl"]
        );
    }

    #[test]
    fn names_that_are_not_job_names_are_refused_before_anything_is_written() {
        let (_d, q) = queue();
        let mut b = q.batch().unwrap();
        for bad in [
            "../fspl-x.fspl",
            "x.fspl",
            "fspl-a/b.fspl",
            ".fspl-tmp-x",
            "fspl-.fspl",
        ] {
            let e = b
                .add_named(&mut job(1, b"").as_slice(), Path::new("t"), OsStr::new(bad))
                .unwrap_err();
            assert!(matches!(e, QueueError::InvalidName { .. }), "{bad}: {e:?}");
        }
        assert!(names(q.jobs_dir()).is_empty());
    }

    #[test]
    fn a_dropped_batch_leaves_no_temporary() {
        let (_d, q) = queue();
        let mut b = q.batch().unwrap();
        b.add(&mut job(1, b"x").as_slice(), Path::new("t")).unwrap();
        drop(b);
        assert!(names(q.jobs_dir()).is_empty());
    }

    #[test]
    fn named_temporaries_are_invisible_as_jobs_and_locked_so_no_cleaner_takes_them() {
        let (_d, q) = queue();
        let mut b = q.batch().unwrap();
        // As where the file system has no O_TMPFILE.
        b.unnamed = false;
        b.add(&mut job(1, b"x").as_slice(), Path::new("t")).unwrap();
        b.add(&mut job(2, b"y").as_slice(), Path::new("t")).unwrap();
        let before = names(q.jobs_dir());
        assert_eq!(before.len(), 2);
        assert!(
            before.iter().all(|n| n.starts_with(TEMP_PREFIX)),
            "{before:?}"
        );
        let other = File::open(q.jobs_dir().join(&before[0])).unwrap();
        assert!(
            other.try_lock().is_err(),
            "a pending temporary is not locked"
        );
        drop(other);
        let done = b.commit().unwrap();
        assert!(done.iter().all(|c| c.outcome.is_stored()), "{done:?}");
        let after = names(q.jobs_dir());
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|n| n.starts_with("fspl-")), "{after:?}");
        // A dropped batch removes its named temporaries.
        let mut b = q.batch().unwrap();
        b.unnamed = false;
        b.add(&mut job(3, b"z").as_slice(), Path::new("t")).unwrap();
        assert_eq!(names(q.jobs_dir()).len(), 3);
        drop(b);
        assert_eq!(names(q.jobs_dir()), after);
    }

    #[test]
    fn limits_say_when_to_commit() {
        let (_d, q) = queue();
        let limits = BatchLimits {
            max_jobs: 2,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
        };
        let mut b = Batch::open(q.jobs_dir(), q.dir(), None, limits).unwrap();
        b.add(&mut job(1, b"x").as_slice(), Path::new("t")).unwrap();
        assert!(!b.is_full());
        b.add(&mut job(2, b"x").as_slice(), Path::new("t")).unwrap();
        assert!(b.is_full());
        b.commit().unwrap();
        let limits = BatchLimits {
            max_bytes: 10,
            ..limits
        };
        let mut b = Batch::open(q.jobs_dir(), q.dir(), None, limits).unwrap();
        b.add(&mut job(3, b"0123456789").as_slice(), Path::new("t"))
            .unwrap();
        assert!(b.is_full());
    }

    #[test]
    fn kernel_releases_compare() {
        assert!(kernel_at_least("6.18.44-fc-v1045", (5, 8)));
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 8)));
        assert!(!kernel_at_least("4.19", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)));
    }
}
