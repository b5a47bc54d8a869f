//! Scanning a tree: every path (never following a symbolic link) with its
//! type, size, mtime in nanoseconds and mode, minus what is excluded.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::SyncError;
use crate::fsops::TEMP_PREFIX;
use crate::meta::{Meta, within};

/// The sync's own directory at the top of the tree: state, marker,
/// pending change sets. Never synced.
pub const PRIVATE_DIR: &str = ".fspl-sync";

/// What is never synced: the sync's own directory, the queues and state directory when they are inside the tree,
/// and the `exclude` patterns (gitignore syntax).
pub struct Filter {
    ignore: Gitignore,
    /// Tree-relative directories never synced (queues, state inside the
    /// tree).
    own: Vec<Vec<u8>>,
}

impl Filter {
    /// `root` must exist; `own` are absolute paths the sync owns.
    pub fn new(root: &Path, patterns: &[String], own: &[PathBuf]) -> Result<Filter, SyncError> {
        let mut b = GitignoreBuilder::new(root);
        for p in patterns {
            b.add_line(None, p).map_err(|e| SyncError::Config {
                message: format!("exclude pattern {p:?}: {e}"),
            })?;
        }
        let ignore = b.build().map_err(|e| SyncError::Config {
            message: format!("exclude patterns: {e}"),
        })?;
        let canon_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let mut own_rel = vec![PRIVATE_DIR.as_bytes().to_vec()];
        for o in own {
            let c = o.canonicalize().unwrap_or_else(|_| o.clone());
            if let Ok(rel) = c.strip_prefix(&canon_root) {
                if rel.as_os_str().is_empty() {
                    continue;
                }
                own_rel.push(rel.as_os_str().as_bytes().to_vec());
            }
        }
        Ok(Filter {
            ignore,
            own: own_rel,
        })
    }

    /// Whether `rel` (or a directory it is in) is never synced.
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.own.iter().any(|o| within(rel, o)) {
            return true;
        }
        let p = Path::new(std::ffi::OsStr::from_bytes(rel));
        self.ignore
            .matched_path_or_any_parents(p, is_dir)
            .is_ignore()
    }
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Scanned {
    pub entries: BTreeMap<Vec<u8>, Meta>,
    /// Directories that could not be read: nothing under them counts as
    /// deleted.
    pub unreadable: Vec<Vec<u8>>,
    /// Special files (FIFOs, sockets, devices), not synced.
    pub special: u64,
    /// Temporary files a killed apply left behind.
    pub temps: Vec<Vec<u8>>,
}

/// Scan `root`.
pub fn scan(root: &Path, filter: &Filter) -> Result<Scanned, SyncError> {
    let mut out = Scanned::default();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            !filter.excluded(rel.as_os_str().as_bytes(), e.file_type().is_dir())
        });
    for item in walker {
        let e = match item {
            Ok(e) => e,
            Err(err) => {
                let Some(p) = err.path() else {
                    return Err(SyncError::Scan {
                        path: root.to_path_buf(),
                        source: err.into(),
                    });
                };
                if err.depth() == 0 {
                    return Err(SyncError::Scan {
                        path: p.to_path_buf(),
                        source: err.into(),
                    });
                }
                let rel = p.strip_prefix(root).unwrap_or(p);
                tracing::warn!(
                    "cannot read {}: {err}; nothing under it is synced this round",
                    p.display()
                );
                out.unreadable.push(rel.as_os_str().as_bytes().to_vec());
                continue;
            }
        };
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap_or(e.path())
            .as_os_str()
            .as_bytes()
            .to_vec();
        let name = rel.rsplit(|&c| c == b'/').next().unwrap_or(&rel);
        if name.starts_with(TEMP_PREFIX.as_bytes()) {
            out.temps.push(rel);
            continue;
        }
        let md = match e.metadata() {
            Ok(m) => m,
            Err(err) => {
                if err.io_error().map(|e| e.kind()) == Some(std::io::ErrorKind::NotFound) {
                    continue; // gone since the directory was read
                }
                out.unreadable.push(rel);
                continue;
            }
        };
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        let mode = md.mode() & 0o7777;
        let ft = md.file_type();
        let meta = if ft.is_file() {
            Meta::File {
                size: md.size(),
                mtime,
                mode,
            }
        } else if ft.is_dir() {
            Meta::Dir { mode }
        } else if ft.is_symlink() {
            match std::fs::read_link(e.path()) {
                Ok(t) => Meta::Link {
                    target: t.into_os_string().into_vec_bytes(),
                    mtime,
                },
                Err(_) => continue,
            }
        } else {
            out.special += 1;
            continue;
        };
        out.entries.insert(rel, meta);
    }
    Ok(out)
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt;
        self.into_vec()
    }
}
