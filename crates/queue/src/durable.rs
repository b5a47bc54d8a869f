//! Durable file operations: nothing becomes visible under its final name
//! until it is complete and on disk, and a rename is made durable by syncing
//! the directory that holds it.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{QueueError, Result};

/// fsync a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(QueueError::io("open directory", dir))?;
    d.sync_all().map_err(QueueError::io("sync directory", dir))
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
    f.sync_all().map_err(QueueError::io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        QueueError::Io {
            action: "rename into place",
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    sync_dir(parent_dir(path))
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or(OsStr::new("")).to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}
