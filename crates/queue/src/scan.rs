//! Reading a queue's `jobs/` directory.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime};

use fspl_format::{Extension, JobHeader};
use tracing::debug;

use crate::decoder::Decoder;
use crate::error::{QueueError, Result};
use crate::queue::{EntryKind, Queue, classify};

/// A temporary file older than this, whose writer holds no lock on it, is
/// left over from a killed writer.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// A job file whose header decoded.
#[derive(Clone, Debug)]
pub struct JobEntry {
    pub name: OsString,
    pub header: JobHeader,
    pub header_len: u64,
    /// fspl's extension metadata, `None` when empty (most jobs): a listing
    /// keeps every entry in memory. See `ext()`.
    pub ext_box: Option<Box<Extension>>,
}

impl JobEntry {
    pub fn ext(&self) -> &Extension {
        static EMPTY: std::sync::OnceLock<Extension> = std::sync::OnceLock::new();
        self.ext_box
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Extension::default))
    }
}

/// A file named like a job that could not be read as one.
#[derive(Debug)]
pub struct Skipped {
    pub name: OsString,
    pub error: QueueError,
    /// A regular file (not a symlink, directory, FIFO...).
    pub regular: bool,
}

/// A `queue-write` temporary.
#[derive(Clone, Debug)]
pub struct TempEntry {
    pub name: OsString,
    pub kind: EntryKind,
}

/// One pass over `jobs/`, in directory order.
#[derive(Debug, Default)]
pub struct Scan {
    pub jobs: Vec<JobEntry>,
    pub skipped: Vec<Skipped>,
    pub temps: Vec<TempEntry>,
}

/// Read every job header in the queue. Names in `skip` are not looked at
/// again (a rescan picks up only new arrivals).
pub fn scan(
    queue: &Queue,
    decoder: Option<&Decoder>,
    skip: Option<&HashSet<OsString>>,
) -> Result<Scan> {
    let jobs_dir = queue.jobs_dir();
    let rd = std::fs::read_dir(jobs_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            match queue.check_exists() {
                Err(q) => q,
                Ok(()) => QueueError::Io {
                    action: "read directory",
                    path: jobs_dir.to_path_buf(),
                    source: e,
                },
            }
        } else {
            QueueError::Io {
                action: "read directory",
                path: jobs_dir.to_path_buf(),
                source: e,
            }
        }
    })?;
    let mut out = Scan::default();
    for entry in rd {
        let entry = entry.map_err(QueueError::io("read directory", jobs_dir))?;
        let name = entry.file_name();
        if skip.is_some_and(|s| s.contains(&name)) {
            continue;
        }
        match classify(&name) {
            EntryKind::Job => {}
            kind @ (EntryKind::Temp | EntryKind::ReferenceTemp) => {
                out.temps.push(TempEntry { name, kind });
                continue;
            }
            EntryKind::Other => {
                debug!(file = ?name, "ignoring file that is not named like a job");
                continue;
            }
        }
        // d_type saves a stat per file; open_file re-checks what it opens.
        if let Ok(ft) = entry.file_type()
            && !ft.is_file()
        {
            let what = if ft.is_symlink() {
                "a symbolic link (not followed)"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            debug!(file = ?name, "skipping: {what}");
            out.skipped.push(Skipped {
                regular: false,
                error: QueueError::Io {
                    action: "read",
                    path: queue.job_path(&name),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
                },
                name,
            });
            continue;
        }
        match queue.read_job_header(&name, decoder) {
            Ok(d) => out.jobs.push(JobEntry {
                name,
                header: d.header,
                header_len: d.header_len,
                ext_box: (!d.ext.is_empty()).then(|| Box::new(d.ext)),
            }),
            Err(error) => {
                debug!(file = ?name, error = %crate::display_chain(&error), "skipping unreadable job file");
                let regular = !matches!(&error, QueueError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput || source.raw_os_error() == Some(libc::ELOOP));
                out.skipped.push(Skipped {
                    name,
                    error,
                    regular,
                });
            }
        }
    }
    Ok(out)
}

/// Whether a temporary file's writer is gone: its lock is free and it has
/// not been written to for `STALE_TEMP_AGE`. Filespooler's own temporaries
/// carry no lock, so for those only the age counts.
pub fn temp_is_stale(queue: &Queue, temp: &TempEntry, now: SystemTime) -> bool {
    let path = queue.job_path(&temp.name);
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    else {
        return false;
    };
    let old = f
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age >= STALE_TEMP_AGE);
    if !old {
        return false;
    }
    match temp.kind {
        EntryKind::Temp => f.try_lock().is_ok(),
        _ => true,
    }
}

/// Remove our own stale temporaries (never Filespooler's: it takes no lock,
/// so a slow writer cannot be told from a dead one). Returns what was removed.
pub fn remove_stale_temps(queue: &Queue, temps: &[TempEntry]) -> Vec<OsString> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for t in temps {
        if t.kind == EntryKind::Temp && temp_is_stale(queue, t, now) {
            let path = queue.job_path(&t.name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    debug!(file = %path.display(), "removed a temporary file left by a killed writer");
                    removed.push(t.name.clone());
                }
                Err(e) => {
                    debug!(file = %path.display(), error = %e, "could not remove stale temporary file")
                }
            }
        }
    }
    removed
}

/// Find the one job with this seq (for `-j` lookups). Byte-identical copies
/// count as one; copies with different contents are an error.
pub fn find_job(queue: &Queue, seq: u64, decoder: Option<&Decoder>) -> Result<JobEntry> {
    let s = scan(queue, decoder, None)?;
    let mut found: Vec<JobEntry> = s.jobs.into_iter().filter(|j| j.header.seq == seq).collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let mut it = found.into_iter();
    let Some(first) = it.next() else {
        return Err(QueueError::JobNotFound {
            dir: queue.dir().to_path_buf(),
            seq,
        });
    };
    let rest: Vec<OsString> = it.map(|j| j.name).collect();
    check_duplicates(queue, seq, &first.name, &rest)?;
    Ok(first)
}

/// Several files claim the same seq. Byte-identical copies (a sync tool
/// delivering a file twice) are one job; different contents are an error:
/// we never guess which one is meant.
pub fn check_duplicates(
    queue: &Queue,
    seq: u64,
    first: &OsString,
    others: &[OsString],
) -> Result<()> {
    for other in others {
        let same = same_contents(&queue.job_path(first), &queue.job_path(other)).map_err(
            QueueError::io("compare duplicate job files", queue.job_path(other)),
        )?;
        if !same {
            let mut files = vec![first.to_string_lossy().into_owned()];
            files.extend(others.iter().map(|n| n.to_string_lossy().into_owned()));
            return Err(QueueError::DuplicateSeq {
                dir: queue.dir().to_path_buf(),
                seq,
                files,
            });
        }
    }
    Ok(())
}

/// Whether two files hold the same bytes.
pub fn same_contents(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<bool> {
    use std::fs::File;
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = fspl_format::read_full(&mut fa, &mut ba)?;
        let nb = fspl_format::read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}
