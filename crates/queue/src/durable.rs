//! Durable file operations: nothing becomes visible under its final name
//! until it is complete and on disk, and a rename is made durable by syncing
//! the directory that holds it.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{QueueError, Result};
use crate::failpoint::hit;

/// fsync a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(QueueError::io("open directory", dir))?;
    d.sync_all().map_err(QueueError::io("sync directory", dir))
}

/// Create the directory `dir` inside `parent` unless it exists, make its
/// creation durable (fsync `parent`), and open it. Used for the quarantine
/// directories (`rejected/`, `corrupt/`) that files are moved into: one
/// that is a symbolic link (or not a directory) is refused
/// (`O_NOFOLLOW`), and the handle returned is the directory that was
/// checked, for `*at` calls that cannot be redirected afterwards.
pub fn ensure_dir(parent: &Path, dir: &Path) -> Result<File> {
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(QueueError::Io {
                action: "create directory",
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    open_dir(dir)
}

/// Open a directory for `*at` calls and fsync, refusing a symbolic link.
pub fn open_dir(dir: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => QueueError::NotADirectory {
                path: dir.to_path_buf(),
            },
            _ => QueueError::Io {
                action: "open directory",
                path: dir.to_path_buf(),
                source,
            },
        })
}

/// Open a directory for `*at` calls and fsync, following a symbolic link
/// (a queue's `jobs/` may be a link to a synced folder); anything but a
/// directory is refused.
pub fn open_dir_following(dir: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ENOTDIR) => QueueError::NotADirectory {
                path: dir.to_path_buf(),
            },
            _ => QueueError::Io {
                action: "open directory",
                path: dir.to_path_buf(),
                source,
            },
        })
}

/// The directory a path lives in ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replace `path` with `contents` atomically and durably: write a temporary
/// file beside it, fsync it, rename it over `path`, fsync the directory.
/// Callers hold the lock that guards `path`, so the temporary name is fixed.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(QueueError::io("create", &tmp))?;
    f.write_all(contents)
        .map_err(QueueError::io("write", &tmp))?;
    hit("replace:after-write").map_err(QueueError::io("sync", &tmp))?;
    f.sync_all().map_err(QueueError::io("sync", &tmp))?;
    drop(f);
    hit("replace:before-rename").map_err(QueueError::io("rename into place", path))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        QueueError::Io {
            action: "rename into place",
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    hit("replace:before-dirsync").map_err(QueueError::io("sync directory", parent_dir(path)))?;
    sync_dir(parent_dir(path))
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or(OsStr::new("")).to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_and_sibling_names() {
        assert_eq!(parent_dir(Path::new("nextseq")), Path::new("."));
        assert_eq!(parent_dir(Path::new("q/nextseq")), Path::new("q"));
        assert_eq!(parent_dir(Path::new("/nextseq")), Path::new("/"));
        assert_eq!(
            sibling(Path::new("q/nextseq"), ".tmp"),
            Path::new("q/nextseq.tmp")
        );
        assert_eq!(
            sibling(Path::new("seq.txt"), ".lock"),
            Path::new("seq.txt.lock")
        );
    }

    #[test]
    fn replace_file_creates_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        replace_file(&p, b"1\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"1\n");
        replace_file(&p, b"12345\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"12345\n");
        replace_file(&p, b"7\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"7\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["nextseq"]);
    }

    #[test]
    fn a_temporary_left_by_a_killed_writer_is_overwritten_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        std::fs::write(sibling(&p, ".tmp"), b"99999999999\ngarbage").unwrap();
        replace_file(&p, b"3\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"3\n");
        assert!(!sibling(&p, ".tmp").exists());
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        std::fs::write(&p, b"5\n").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, sibling(&p, ".tmp")).unwrap();
        let e = replace_file(&p, b"6\n").unwrap_err();
        assert!(
            matches!(&e, QueueError::Io { action: "create", path, .. } if path.ends_with("nextseq.tmp")),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&p).unwrap(), b"5\n");
    }

    #[test]
    fn a_failed_rename_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be renamed over.
        let p = dir.path().join("nextseq");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"x").unwrap();
        let e = replace_file(&p, b"6\n").unwrap_err();
        assert!(
            matches!(
                &e,
                QueueError::Io {
                    action: "rename into place",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(p.join("inside").exists());
        assert!(!sibling(&p, ".tmp").exists());
    }

    #[test]
    fn ensure_dir_creates_opens_and_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("rejected");
        ensure_dir(dir.path(), &d).unwrap();
        assert!(d.is_dir());
        ensure_dir(dir.path(), &d).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = dir.path().join("corrupt");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = ensure_dir(dir.path(), &link).unwrap_err();
        assert!(
            matches!(&e, QueueError::NotADirectory { path } if *path == link),
            "{e:?}"
        );
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(matches!(
            ensure_dir(dir.path(), &dir.path().join("file")),
            Err(QueueError::NotADirectory { .. })
        ));
    }

    #[test]
    fn sync_dir_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        match sync_dir(&missing) {
            Err(QueueError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        sync_dir(dir.path()).unwrap();
    }
}
