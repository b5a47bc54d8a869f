//! The spool-directory protocol of `fspl s3-upload`, as jollyae documents
//! it: a producer renames a complete file into INCOMING/; a worker claims
//! it by renaming it into WORKING/ (rename is atomic: one worker wins);
//! after the upload it goes into COMPLETED/ (or is removed, `-r`), or into
//! FAILED/ (or is removed, `-R`; FAILED = INCOMING resubmits it).
//!
//! What we add so that several uploaders can share one spool, and a crash
//! loses nothing:
//!
//! - **A lock per claimed file.** A worker opens the file in INCOMING/ and
//!   takes an exclusive `flock` on it *before* renaming it into WORKING/,
//!   and keeps it until the file has left WORKING/ (moved or removed). A
//!   lock follows the file (it is on the inode, not the name), and the
//!   kernel drops it when its holder dies. So a file in WORKING/ that
//!   nobody holds locked was left there by a worker that crashed (or was
//!   killed) before it could confirm the upload.
//! - **Taking back the orphans** ([`Spool::recover`], on start): every
//!   file in WORKING/ that can be locked (no live worker holds it) and is
//!   still the file at that name goes back into INCOMING/, to be uploaded
//!   again. A file that a live worker holds is left alone, whoever that
//!   worker is (another process on the same spool, or this one). Every
//!   mover of a file (claim, completion, failure, recovery) holds its lock
//!   while it moves it, so a recovering worker that holds the lock and sees
//!   the file still at its name can move it without a race.
//! - **No clobbering.** The claim is `renameat2(RENAME_NOREPLACE)`: a file
//!   whose name is already in WORKING/ (a newer file of the same name
//!   submitted while the older one is still being uploaded) waits in
//!   INCOMING/ until the older one is done. A resubmission into INCOMING/
//!   (FAILED = INCOMING) and a recovery never replace a newer file of the
//!   same name either: the older copy then stays in WORKING/ and is taken
//!   back later. Only COMPLETED/ and a separate FAILED/ replace an older
//!   file of the same name, as jollyae does.
//! - Files whose name begins with a dot (the temporaries of rsync and of
//!   many editors) and anything that is not a regular file (directories,
//!   symbolic links, FIFOs) are never claimed.
//!
//! Without a WORKING/ directory (`-i` not given), jollyae works in
//! COMPLETED/ itself; so do we, but then a file in it cannot be told from a
//! completed one, and nothing is taken back on start. Give `-i` for crash
//! recovery.
//!
//! Delivery is at least once: a crash after an upload and before the file
//! left WORKING/ uploads it again on restart (the same key and content: an
//! idempotent overwrite). The renames are not fsynced: a rename lost in a
//! power failure only means the same.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

/// An error of the spool protocol, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

fn io_err(action: &'static str, path: &Path, e: impl Into<io::Error>) -> SpoolError {
    SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Where a file goes after a successful upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnSuccess {
    /// Into this directory (`-d`).
    Move(PathBuf),
    /// Removed (`-r`).
    Remove,
}

/// Where a file goes after a failed upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Into this directory (`-f`; INCOMING resubmits it).
    Move(PathBuf),
    /// Removed (`-R`).
    Remove,
    /// Left where it is being worked on (neither `-f` nor `-R`, as
    /// jollyae): taken back into INCOMING/ at the next start when WORKING/
    /// is its own directory.
    Stay,
}

/// The directories of a spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolDirs {
    /// `-s`: where complete files appear.
    pub incoming: PathBuf,
    /// `-i`: where a claimed file is while it is uploaded (COMPLETED/ when
    /// not given).
    pub working: PathBuf,
    pub on_success: OnSuccess,
    pub on_failure: OnFailure,
}

impl SpoolDirs {
    /// Whether WORKING/ is a directory of its own (not COMPLETED/), so that
    /// what is in it is work under way and orphans can be taken back.
    pub fn recoverable(&self) -> bool {
        match &self.on_success {
            OnSuccess::Move(d) => !same_dir(d, &self.working),
            OnSuccess::Remove => true,
        }
    }

    /// Whether failed files are resubmitted (FAILED = INCOMING).
    pub fn resubmits(&self) -> bool {
        matches!(&self.on_failure, OnFailure::Move(d) if same_dir(d, &self.incoming))
    }
}

/// Whether two paths name the same directory (by device and inode when
/// both exist, else as written).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// An open spool: a handle on each directory, so that every rename is
/// relative to the directory that was checked.
#[derive(Debug)]
pub struct Spool {
    pub dirs: SpoolDirs,
    incoming: File,
    working: File,
    completed: Option<(File, PathBuf)>,
    failed: Option<(File, PathBuf)>,
    /// WORKING/ is COMPLETED/: the claim may replace (as jollyae's rename).
    working_is_completed: bool,
}

fn open_dir(path: &Path) -> Result<File, SpoolError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOTDIR => SpoolError::NotADirectory {
            path: path.to_path_buf(),
        },
        e => io_err("open directory", path, e),
    })?;
    Ok(File::from(fd))
}

/// A claimed file: in WORKING/, open for reading and locked.
#[derive(Debug)]
pub struct Claim {
    /// Its name (the same in every directory).
    pub name: OsString,
    /// The open file (locked; read the upload from it).
    pub file: File,
    /// Its size when claimed.
    pub len: u64,
}

/// Why a file could not be claimed.
#[derive(Debug)]
pub enum NotClaimed {
    /// Someone else has it, or it is gone, or not a regular file.
    Gone,
    /// A file of the same name is in WORKING/: try again later.
    Busy,
}

/// What [`Spool::recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Files taken back into INCOMING/.
    pub taken_back: Vec<OsString>,
    /// Files left in WORKING/ because a file of the same name is in
    /// INCOMING/ (taken back later).
    pub left: Vec<OsString>,
    /// Files a live worker holds.
    pub held: usize,
}

/// Whether a directory entry's name may be claimed: not empty, not a
/// dot-file.
pub fn claimable_name(name: &OsStr) -> bool {
    !name.is_empty() && !name.as_bytes().starts_with(b".")
}

/// Open `name` in `dir` for reading without following a symbolic link
/// and without blocking on a FIFO; None when it is gone or not a regular
/// file.
fn open_regular(dir: &File, dir_path: &Path, name: &OsStr) -> Result<Option<File>, SpoolError> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NXIO) => return Ok(None),
        Err(e) => return Err(io_err("open", &dir_path.join(name), e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat", &dir_path.join(name), e))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    Ok(Some(File::from(fd)))
}

/// Lock `f` exclusively without waiting: false when someone holds it.
fn try_lock(f: &File, path: &Path) -> Result<bool, SpoolError> {
    match rustix::fs::flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(io_err("lock", path, e)),
    }
}

/// Whether `name` in `dir` is still the file open as `f`.
fn still_there(dir: &File, name: &OsStr, f: &File) -> bool {
    let (Ok(a), Ok(b)) = (
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        rustix::fs::fstat(f),
    ) else {
        return false;
    };
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

impl Spool {
    /// Open the spool's directories (each must exist and be a directory).
    pub fn open(dirs: SpoolDirs) -> Result<Spool, SpoolError> {
        let incoming = open_dir(&dirs.incoming)?;
        let working = open_dir(&dirs.working)?;
        let completed = match &dirs.on_success {
            OnSuccess::Move(p) => Some((open_dir(p)?, p.clone())),
            OnSuccess::Remove => None,
        };
        let failed = match &dirs.on_failure {
            OnFailure::Move(p) => Some((open_dir(p)?, p.clone())),
            _ => None,
        };
        let working_is_completed = !dirs.recoverable();
        Ok(Spool {
            dirs,
            incoming,
            working,
            completed,
            failed,
            working_is_completed,
        })
    }

    /// The claimable names in INCOMING/ now, sorted (oldest names first is
    /// what producers that name by time expect).
    pub fn list_incoming(&self) -> Result<Vec<OsString>, SpoolError> {
        list(&self.dirs.incoming)
    }

    /// The names in WORKING/ (for status).
    pub fn list_working(&self) -> Result<Vec<OsString>, SpoolError> {
        list(&self.dirs.working)
    }

    /// Claim `name`: lock it in INCOMING/ and rename it into WORKING/.
    pub fn claim(&self, name: &OsStr) -> Result<Result<Claim, NotClaimed>, SpoolError> {
        let ipath = &self.dirs.incoming;
        let Some(file) = open_regular(&self.incoming, ipath, name)? else {
            return Ok(Err(NotClaimed::Gone));
        };
        if !try_lock(&file, &ipath.join(name))? || !still_there(&self.incoming, name, &file) {
            return Ok(Err(NotClaimed::Gone));
        }
        let moved = if self.working_is_completed {
            rustix::fs::renameat(&self.incoming, name, &self.working, name)
        } else {
            fspl_queue::batch::rename_noreplace(&self.incoming, name, &self.working, name)
        };
        match moved {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(Err(NotClaimed::Gone)),
            Err(Errno::EXIST) => return Ok(Err(NotClaimed::Busy)),
            Err(e) => {
                return Err(io_err(
                    "claim (rename into the working directory)",
                    &ipath.join(name),
                    e,
                ));
            }
        }
        let wpath = self.dirs.working.join(name);
        // The producer may have renamed another file over the name between
        // the check and the claim: then that one was claimed, unlocked.
        // Lock it in turn (or leave it to whoever holds it).
        let file = if still_there(&self.working, name, &file) {
            file
        } else {
            match open_regular(&self.working, &self.dirs.working, name)? {
                Some(f) if try_lock(&f, &wpath)? && still_there(&self.working, name, &f) => f,
                _ => return Ok(Err(NotClaimed::Gone)),
            }
        };
        let len = file
            .metadata()
            .map_err(|e| io_err("stat", &wpath, e))?
            .len();
        Ok(Ok(Claim {
            name: name.to_os_string(),
            file,
            len,
        }))
    }

    /// After a successful upload: into COMPLETED/ (replacing an older file
    /// of the name), or removed. The lock goes with the claim.
    pub fn complete(&self, claim: Claim) -> Result<(), SpoolError> {
        let name = claim.name.as_os_str();
        match &self.completed {
            Some((dir, path)) => {
                if !self.working_is_completed {
                    rustix::fs::renameat(&self.working, name, dir, name).map_err(|e| {
                        io_err("move into the completed directory", &path.join(name), e)
                    })?;
                }
            }
            None => rustix::fs::unlinkat(&self.working, name, AtFlags::empty())
                .map_err(|e| io_err("remove", &self.dirs.working.join(name), e))?,
        }
        drop(claim);
        Ok(())
    }

    /// After a failed upload: into FAILED/ (without replacing a newer file
    /// in INCOMING/ when FAILED = INCOMING: then it stays in WORKING/), or
    /// removed, or left in WORKING/. Returns where it went, for the log.
    pub fn fail(&self, claim: Claim) -> Result<FailedTo, SpoolError> {
        let name = claim.name.as_os_str();
        let to = match (&self.dirs.on_failure, &self.failed) {
            (OnFailure::Move(_), Some((dir, path))) => {
                let r = if self.dirs.resubmits() {
                    fspl_queue::batch::rename_noreplace(&self.working, name, dir, name)
                } else {
                    rustix::fs::renameat(&self.working, name, dir, name)
                };
                match r {
                    Ok(()) if self.dirs.resubmits() => FailedTo::Resubmitted,
                    Ok(()) => FailedTo::Moved,
                    Err(Errno::EXIST) => FailedTo::Stayed,
                    Err(e) => {
                        return Err(io_err(
                            "move into the failed directory",
                            &path.join(name),
                            e,
                        ));
                    }
                }
            }
            (OnFailure::Remove, _) => {
                rustix::fs::unlinkat(&self.working, name, AtFlags::empty())
                    .map_err(|e| io_err("remove", &self.dirs.working.join(name), e))?;
                FailedTo::Removed
            }
            _ => FailedTo::Stayed,
        };
        drop(claim);
        Ok(to)
    }

    /// Take back into INCOMING/ the files in WORKING/ that no live worker
    /// holds (see the module's documentation). Nothing when WORKING/ is
    /// COMPLETED/.
    pub fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut r = Recovered::default();
        if self.working_is_completed {
            return Ok(r);
        }
        let wdir = &self.dirs.working;
        for name in list(wdir)? {
            let Some(f) = open_regular(&self.working, wdir, &name)? else {
                continue;
            };
            if !try_lock(&f, &wdir.join(&name))? {
                r.held += 1;
                continue;
            }
            if !still_there(&self.working, &name, &f) {
                continue;
            }
            match fspl_queue::batch::rename_noreplace(&self.working, &name, &self.incoming, &name) {
                Ok(()) => r.taken_back.push(name),
                Err(Errno::EXIST) => r.left.push(name),
                Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(io_err(
                        "take back (rename into the incoming directory)",
                        &wdir.join(&name),
                        e,
                    ));
                }
            }
        }
        Ok(r)
    }
}

/// Where a failed file went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedTo {
    Moved,
    Resubmitted,
    Removed,
    Stayed,
}

fn list(dir: &Path) -> Result<Vec<OsString>, SpoolError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io_err("read directory", dir, e))?;
        let name = e.file_name();
        if !claimable_name(&name) {
            continue;
        }
        // Skip what is surely not a regular file without a stat when the
        // file system tells the type.
        match e.file_type() {
            Ok(t) if t.is_dir() || t.is_symlink() => continue,
            _ => names.push(name),
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(root: &Path, working: bool) -> Spool {
        for d in ["incoming", "working", "completed", "failed"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Spool::open(SpoolDirs {
            incoming: root.join("incoming"),
            working: root.join(if working { "working" } else { "completed" }),
            on_success: OnSuccess::Move(root.join("completed")),
            on_failure: OnFailure::Move(root.join("failed")),
        })
        .unwrap()
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_one_of_two_claimants_wins_and_the_other_cannot_take_it_back() {
        let t = tempfile::tempdir().unwrap();
        let a = spool(t.path(), true);
        let b = spool(t.path(), true);
        std::fs::write(t.path().join("incoming/x"), b"data").unwrap();
        let c = a.claim(OsStr::new("x")).unwrap().unwrap();
        assert_eq!(c.len, 4);
        assert!(matches!(
            b.claim(OsStr::new("x")).unwrap(),
            Err(NotClaimed::Gone)
        ));
        // b starts while a holds x: x is a live worker's, not an orphan.
        let r = b.recover().unwrap();
        assert_eq!((r.taken_back.len(), r.held), (0, 1));
        assert_eq!(names(&t.path().join("working")), ["x"]);
        a.complete(c).unwrap();
        assert_eq!(names(&t.path().join("completed")), ["x"]);
        assert!(names(&t.path().join("working")).is_empty());
    }

    #[test]
    fn an_orphan_in_working_is_taken_back_once_its_holder_is_gone() {
        let t = tempfile::tempdir().unwrap();
        let a = spool(t.path(), true);
        std::fs::write(t.path().join("incoming/x"), b"data").unwrap();
        let c = a.claim(OsStr::new("x")).unwrap().unwrap();
        drop(c); // the worker dies: its lock goes
        let r = spool(t.path(), true).recover().unwrap();
        assert_eq!(r.taken_back, [OsString::from("x")]);
        assert_eq!(names(&t.path().join("incoming")), ["x"]);
    }

    #[test]
    fn a_same_named_file_waits_while_the_older_one_is_uploaded() {
        let t = tempfile::tempdir().unwrap();
        let a = spool(t.path(), true);
        std::fs::write(t.path().join("incoming/x"), b"old").unwrap();
        let c = a.claim(OsStr::new("x")).unwrap().unwrap();
        std::fs::write(t.path().join("incoming/x"), b"new").unwrap();
        assert!(matches!(
            a.claim(OsStr::new("x")).unwrap(),
            Err(NotClaimed::Busy)
        ));
        assert_eq!(std::fs::read(t.path().join("working/x")).unwrap(), b"old");
        // Resubmitting the old one must not replace the new one.
        let s = Spool::open(SpoolDirs {
            on_failure: OnFailure::Move(t.path().join("incoming")),
            ..a.dirs.clone()
        })
        .unwrap();
        assert_eq!(s.fail(c).unwrap(), FailedTo::Stayed);
        assert_eq!(std::fs::read(t.path().join("incoming/x")).unwrap(), b"new");
    }

    #[test]
    fn dot_files_directories_and_symlinks_are_never_claimed() {
        let t = tempfile::tempdir().unwrap();
        let a = spool(t.path(), true);
        let inc = t.path().join("incoming");
        std::fs::write(inc.join(".tmp"), b"x").unwrap();
        std::fs::create_dir(inc.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", inc.join("l")).unwrap();
        assert!(a.list_incoming().unwrap().is_empty());
        assert!(matches!(
            a.claim(OsStr::new("l")).unwrap(),
            Err(NotClaimed::Gone)
        ));
    }

    #[test]
    fn without_a_working_directory_nothing_is_taken_back() {
        let t = tempfile::tempdir().unwrap();
        let a = spool(t.path(), false);
        std::fs::write(t.path().join("completed/done"), b"x").unwrap();
        assert_eq!(a.recover().unwrap(), Recovered::default());
        assert_eq!(names(&t.path().join("completed")), ["done"]);
    }
}
