//! Moving a job file out of `jobs/` into a quarantine directory
//! (`rejected/` for refused jobs, `corrupt/` for `queue-check --repair`),
//! with a one-line reason beside it, never replacing anything there.
//!
//! - The directory must be a real directory: a symbolic link in its place
//!   is refused (`O_NOFOLLOW`), and every later step works on the handle
//!   of the directory that was checked (`openat`, `renameat`), so it
//!   cannot be swapped for a link halfway.
//! - A name that is taken gets a suffix (`fspl-ID.fspl` -> `fspl-ID.1.fspl`,
//!   `.2`, ...: still a job name, so it can be put back as it is), and the
//!   reason file follows the final name (`fspl-ID.1.fspl.reason`). The move
//!   itself is a `renameat2(RENAME_NOREPLACE)` (or `link` + `unlink` where
//!   the file system lacks it), so even a file that appears meanwhile is
//!   not replaced.
//! - The durability order is that of any other state change: the reason
//!   is written to a temporary, fsynced and renamed into place and the
//!   directory fsynced; then the job is moved and both directories are
//!   fsynced before the move is reported.
//! - Quarantiners of one directory are serialised by an exclusive `flock`
//!   on it (`queue-process` holds the queue lock anyway; `queue-check
//!   --repair` holds none), so a reason file without its job beside it is
//!   always a leftover (of a crash between the two steps) and may be
//!   replaced.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::batch::rename_noreplace;
use crate::durable::ensure_dir;
use crate::error::{QueueError, Result};
use crate::failpoint::hit;
use crate::queue::Queue;

/// Where a file is quarantined, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quarantine {
    /// `rejected/`: a job refused by `queue-process`.
    Rejected,
    /// `corrupt/`: a bad file moved by `queue-check --repair`.
    Corrupt,
}

impl Quarantine {
    pub fn dir_name(self) -> &'static str {
        match self {
            Quarantine::Rejected => crate::verify::REJECTED_DIR,
            Quarantine::Corrupt => crate::check::CORRUPT_DIR,
        }
    }

    fn action(self) -> &'static str {
        match self {
            Quarantine::Rejected => "move refused job to",
            Quarantine::Corrupt => "move bad job to",
        }
    }
}

/// How many names are tried before giving up (each taken one is a file
/// already in quarantine under that name).
const MAX_SUFFIX: u32 = 100_000;

/// `name` with suffix `n` (0: the name itself): before a final `.fspl`,
/// so the result is still a job name, else at the end.
pub fn suffixed(name: &OsStr, n: u32) -> OsString {
    if n == 0 {
        return name.to_os_string();
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 8);
    match b.strip_suffix(b".fspl") {
        Some(stem) => {
            out.extend_from_slice(stem);
            out.extend_from_slice(format!(".{n}.fspl").as_bytes());
        }
        None => {
            out.extend_from_slice(b);
            out.extend_from_slice(format!(".{n}").as_bytes());
        }
    }
    OsString::from_vec(out)
}

fn with_suffix(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

/// Move `jobs/NAME` into the quarantine directory with `reason` (one
/// line; control characters are escaped) beside it. Returns where it
/// went, or `None` when `jobs/NAME` is gone (someone else moved or
/// deleted it; nothing is left behind then).
pub fn quarantine(
    queue: &Queue,
    kind: Quarantine,
    name: &OsStr,
    reason: &str,
) -> Result<Option<PathBuf>> {
    let dir_path = queue.dir().join(kind.dir_name());
    let dir = ensure_dir(queue.dir(), &dir_path)?;
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        QueueError::Io {
            action: "lock directory",
            path: dir_path.clone(),
            source: e.into(),
        }
    })?;
    // `jobs/` itself may be a link (to a synced folder, say): followed.
    let jobs = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(queue.jobs_dir())
        .map_err(QueueError::io("open directory", queue.jobs_dir()))?;
    let mut line = crate::escape_controls(reason).into_owned();
    line.push('\n');
    for n in 0..=MAX_SUFFIX {
        let cand = suffixed(name, n);
        let to = dir_path.join(&cand);
        match rustix::fs::statat(&dir, cand.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => continue,
            Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(QueueError::Io {
                    action: "look at",
                    path: to,
                    source: e.into(),
                });
            }
        }
        let reason_name = with_suffix(&cand, ".reason");
        write_reason(&dir, &dir_path, &reason_name, line.as_bytes())?;
        if kind == Quarantine::Rejected {
            hit("reject:before-move").map_err(QueueError::io(kind.action(), &to))?;
        }
        match rename_noreplace(&jobs, name, &dir, &cand) {
            Ok(()) => {}
            Err(e) if e == Errno::EXIST || e == Errno::NOENT => {
                // A file took the name meanwhile (not one of ours: we hold
                // the lock), or the job is gone: our reason must not stay.
                let _ = rustix::fs::unlinkat(&dir, reason_name.as_os_str(), AtFlags::empty());
                sync(&dir, &dir_path)?;
                if e == Errno::EXIST {
                    continue;
                }
                return Ok(None);
            }
            Err(e) => {
                return Err(QueueError::Io {
                    action: kind.action(),
                    path: to,
                    source: e.into(),
                });
            }
        }
        if kind == Quarantine::Rejected {
            hit("reject:after-move").map_err(QueueError::io("sync directory", &dir_path))?;
        }
        sync(&dir, &dir_path)?;
        sync(&jobs, queue.jobs_dir())?;
        return Ok(Some(to));
    }
    Err(QueueError::Io {
        action: kind.action(),
        path: dir_path.join(name),
        source: std::io::Error::other(format!("{MAX_SUFFIX} files of that name are there already")),
    })
}

fn sync(dir: &File, path: &Path) -> Result<()> {
    dir.sync_all()
        .map_err(QueueError::io("sync directory", path))
}

/// Write `NAME.tmp` in `dir`, fsync it, rename it to `NAME` (replacing a
/// leftover reason whose job is not there; the caller checked), fsync the
/// directory. The `replace:*` failpoints are hit as in
/// [`crate::durable::replace_file`].
fn write_reason(dir: &File, dir_path: &Path, name: &OsStr, contents: &[u8]) -> Result<()> {
    let tmp = with_suffix(name, ".tmp");
    let tmp_path = dir_path.join(&tmp);
    let path = dir_path.join(name);
    let fd = rustix::fs::openat(
        dir,
        tmp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| QueueError::Io {
        action: "create",
        path: tmp_path.clone(),
        source: e.into(),
    })?;
    let mut f = File::from(fd);
    f.write_all(contents)
        .map_err(QueueError::io("write", &tmp_path))?;
    hit("replace:after-write").map_err(QueueError::io("sync", &tmp_path))?;
    f.sync_all().map_err(QueueError::io("sync", &tmp_path))?;
    drop(f);
    hit("replace:before-rename").map_err(QueueError::io("rename into place", &path))?;
    rustix::fs::renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
        QueueError::Io {
            action: "rename into place",
            path: path.clone(),
            source: e.into(),
        }
    })?;
    hit("replace:before-dirsync").map_err(QueueError::io("sync directory", dir_path))?;
    sync(dir, dir_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_keep_a_job_name_a_job_name() {
        let n = OsStr::new("fspl-abc.fspl");
        assert_eq!(suffixed(n, 0), "fspl-abc.fspl");
        assert_eq!(suffixed(n, 1), "fspl-abc.1.fspl");
        assert_eq!(suffixed(n, 12), "fspl-abc.12.fspl");
        assert_eq!(suffixed(OsStr::new("other"), 2), "other.2");
    }

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::init(dir.path().join("q").as_os_str(), false).unwrap();
        (dir, q)
    }

    #[test]
    fn a_taken_name_gets_a_suffix_and_its_reason_follows() {
        let (_d, q) = queue();
        let name = OsStr::new("fspl-1.fspl");
        let mut went = Vec::new();
        for (i, body) in [&b"first"[..], b"second", b"third"].iter().enumerate() {
            std::fs::write(q.job_path(name), body).unwrap();
            let to = quarantine(&q, Quarantine::Corrupt, name, &format!("why {i}\nx"))
                .unwrap()
                .unwrap();
            assert_eq!(std::fs::read(&to).unwrap(), *body);
            let reason = std::fs::read_to_string(crate::durable::sibling(&to, ".reason")).unwrap();
            assert_eq!(reason, format!("why {i}\\nx\n"));
            went.push(to.file_name().unwrap().to_os_string());
        }
        assert_eq!(went, ["fspl-1.fspl", "fspl-1.1.fspl", "fspl-1.2.fspl"]);
        assert!(!q.job_path(name).exists());
        // A leftover reason without its job is replaced; a vanished job
        // leaves nothing behind.
        let leftover = q.dir().join("corrupt/fspl-2.fspl.reason");
        std::fs::write(&leftover, "stale\n").unwrap();
        std::fs::write(q.job_path(OsStr::new("fspl-2.fspl")), b"x").unwrap();
        let to = quarantine(&q, Quarantine::Corrupt, OsStr::new("fspl-2.fspl"), "new")
            .unwrap()
            .unwrap();
        assert_eq!(to.file_name().unwrap(), "fspl-2.fspl");
        assert_eq!(std::fs::read_to_string(&leftover).unwrap(), "new\n");
        assert_eq!(
            quarantine(&q, Quarantine::Corrupt, OsStr::new("fspl-3.fspl"), "gone").unwrap(),
            None
        );
        assert!(!q.dir().join("corrupt/fspl-3.fspl.reason").exists());
        let mut names: Vec<String> = std::fs::read_dir(q.dir().join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "fspl-1.1.fspl",
                "fspl-1.1.fspl.reason",
                "fspl-1.2.fspl",
                "fspl-1.2.fspl.reason",
                "fspl-1.fspl",
                "fspl-1.fspl.reason",
                "fspl-2.fspl",
                "fspl-2.fspl.reason"
            ]
        );
    }
}
