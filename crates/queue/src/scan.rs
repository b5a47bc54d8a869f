//! Reading a queue's `jobs/` directory.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime};

use fspl_format::{Ctime, DigestAlg, Extension, JobHeader};
use fspl_trust::TrustFile;
use tracing::debug;

use crate::decoder::Decoder;
use crate::error::{QueueError, Result};
use crate::process::{JobCheck, PayloadUse, Verdict};
use crate::queue::{EntryKind, Queue, classify};
use crate::verify::{Refusal, Vetted};

/// A temporary file older than this, whose writer holds no lock on it, is
/// left over from a killed writer.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// A job file whose header decoded: what ordering and listing need, not
/// the header itself. A scan holds one entry per file, and a header may
/// take up to `MAX_DECODED_SIZE` bytes decoded; keeping only these fields
/// keeps a scan's memory flat in the size of the files (a reader that needs
/// a whole header reads that one file again).
#[derive(Clone, Debug)]
pub struct JobEntry {
    pub name: OsString,
    pub seq: u64,
    pub ctime: Ctime,
    /// The command type's name: "NOP", "Fail" or "Command".
    pub kind: &'static str,
    /// Scanned with a `Vetting` (and at or after its `from_seq`): who
    /// signed the job, or why it would be refused.
    pub vetted: Option<Box<std::result::Result<Vetted, Refusal>>>,
    /// The whole file, for a small job scanned by [`scan_keeping`].
    pub bytes: Option<std::sync::Arc<[u8]>>,
}

/// A trust file and what checking a header against it needs (see
/// `verify::check_header`).
#[derive(Clone, Copy, Debug)]
pub struct Vetting<'a> {
    pub trust: &'a TrustFile,
    pub queue_name: Option<&'a str>,
    pub allow_job_params: bool,
    /// The receiver's clock, seconds since the epoch.
    pub now: i64,
    /// A scan vets only jobs with this seq or a later one.
    pub from_seq: u64,
}

impl<'a> Vetting<'a> {
    /// Vetting against `trust` for `queue`, now, params not used.
    pub fn new(trust: &'a TrustFile, queue_name: Option<&'a str>) -> Vetting<'a> {
        Vetting {
            trust,
            queue_name,
            allow_job_params: false,
            now: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            from_seq: 0,
        }
    }

    pub fn check(
        &self,
        header: &JobHeader,
        ext: &Extension,
    ) -> std::result::Result<Vetted, Refusal> {
        crate::verify::check_header(
            header,
            ext,
            Some(self.trust),
            self.queue_name,
            self.allow_job_params,
            self.now,
        )
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
    scan_vetted(queue, decoder, skip, None)
}

/// `scan`, also checking each header (from `vet.from_seq` on) against a
/// trust file while it is in memory.
pub fn scan_vetted(
    queue: &Queue,
    decoder: Option<&Decoder>,
    skip: Option<&HashSet<OsString>>,
    vet: Option<&Vetting<'_>>,
) -> Result<Scan> {
    scan_with(queue, decoder, skip, vet, None)
}

/// A job file at most this long is kept whole by [`scan_keeping`].
pub const KEEP_UP_TO: u64 = 64 * 1024;

/// `scan`, keeping the bytes of each job of at most [`KEEP_UP_TO`] bytes
/// (read whole instead of just its header, at no extra cost for a small
/// one) until `budget` bytes are kept: a reader that sends every job
/// (`fspl push`) then opens only the larger ones again.
pub fn scan_keeping(queue: &Queue, budget: u64) -> Result<Scan> {
    let mut left = budget;
    scan_with(queue, None, None, None, Some(&mut left))
}

fn scan_with(
    queue: &Queue,
    decoder: Option<&Decoder>,
    skip: Option<&HashSet<OsString>>,
    vet: Option<&Vetting<'_>>,
    mut keep: Option<&mut u64>,
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
        let read = match keep.as_deref_mut() {
            Some(left) => queue
                .read_job_header_keeping(&name, KEEP_UP_TO.min(*left))
                .map(|(d, bytes)| {
                    *left -= bytes.as_ref().map_or(0, |b| b.len() as u64);
                    (d, bytes)
                }),
            None => queue.read_job_header(&name, decoder).map(|d| (d, None)),
        };
        match read {
            Ok((d, bytes)) => out.jobs.push(JobEntry {
                vetted: vet
                    .filter(|v| d.header.seq >= v.from_seq)
                    .map(|v| Box::new(v.check(&d.header, &d.ext))),
                name,
                seq: d.header.seq,
                ctime: d.header.ctime,
                kind: d.header.cmd_type.name(),
                bytes,
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

/// Find the one job with this seq (for `-j` lookups), deciding among
/// several files as `queue-process` would (see `judge_copies`); copies
/// that are not one job are an error naming them. With a `Vetting`, a file
/// that would be refused is passed over for another copy; when every file
/// would be, the first is returned (the caller vets it and says why).
pub fn find_job(
    queue: &Queue,
    seq: u64,
    decoder: Option<&Decoder>,
    vet: Option<&Vetting<'_>>,
) -> Result<JobEntry> {
    let s = scan(queue, decoder, None)?;
    let mut found: Vec<JobEntry> = s.jobs.into_iter().filter(|j| j.seq == seq).collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    if found.is_empty() {
        return Err(QueueError::JobNotFound {
            dir: queue.dir().to_path_buf(),
            seq,
        });
    }
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    let names: Vec<OsString> = found.iter().map(|j| j.name.clone()).collect();
    let copies = judge_copies(queue, decoder, &names, vet, true)?;
    if !copies.one_job {
        return Err(duplicate_error(queue, seq, &copies.kept));
    }
    let chosen = copies.kept.first().unwrap_or(&names[0]);
    let at = found.iter().position(|j| &j.name == chosen).unwrap_or(0);
    Ok(found.swap_remove(at))
}

/// What readers decide about several files claiming one seq: the decision
/// `queue-process` makes, without moving anything.
#[derive(Clone, Debug, Default)]
pub struct Copies {
    /// Files `queue-process` would refuse, with the reasons: with a trust
    /// file those whose header does not pass, and (when the others do not
    /// agree) those whose payload does not match its length and digest.
    pub refused: Vec<(OsString, String)>,
    /// The rest, sorted by name; the first is the one that runs.
    pub kept: Vec<OsString>,
    /// The kept files are one job (run once): byte-identical, or with a
    /// trust file carrying the same signed content. Vacuously true when
    /// none is kept.
    pub one_job: bool,
    /// The kept files are byte-identical.
    pub same_bytes: bool,
}

/// Judge the files (two or more) that claim one seq, by the rules of
/// `queue-process`: with a trust file, a file whose header would be
/// refused is set aside; when the others are not one job and
/// `read_payloads`, files whose payload does not match their own length
/// and digest are set aside too; what is left is one job when
/// byte-identical or, with a trust file, when every copy carries the same
/// signed content (`same_job`).
pub fn judge_copies(
    queue: &Queue,
    decoder: Option<&Decoder>,
    names: &[OsString],
    vet: Option<&Vetting<'_>>,
    read_payloads: bool,
) -> Result<Copies> {
    let mut names = names.to_vec();
    names.sort();
    let mut c = Copies::default();
    for name in names {
        if let Some(v) = vet {
            match queue.read_job_header(&name, decoder) {
                Ok(d) => {
                    if let Err(r) = v.check(&d.header, &d.ext) {
                        c.refused.push((name, r.reason));
                        continue;
                    }
                }
                // Removed meanwhile: not a copy any more.
                Err(QueueError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => {
                    c.refused.push((name, crate::display_chain(&e)));
                    continue;
                }
            }
        }
        c.kept.push(name);
    }
    (c.one_job, c.same_bytes) = all_one_job(queue, decoder, &c.kept, vet)?;
    if !c.one_job && read_payloads {
        let kept = std::mem::take(&mut c.kept);
        for name in kept {
            match payload_refusal(queue, decoder, &name)? {
                Some(why) => c.refused.push((name, why)),
                None => c.kept.push(name),
            }
        }
        (c.one_job, c.same_bytes) = all_one_job(queue, decoder, &c.kept, vet)?;
    }
    c.refused.sort();
    Ok(c)
}

/// Whether every file is one job with the first, and whether all are
/// byte-identical.
fn all_one_job(
    queue: &Queue,
    decoder: Option<&Decoder>,
    names: &[OsString],
    vet: Option<&Vetting<'_>>,
) -> Result<(bool, bool)> {
    let Some((first, others)) = names.split_first() else {
        return Ok((true, true));
    };
    let mut first_id = None;
    let mut same_bytes = true;
    for other in others {
        match same_job(queue, decoder, first, other, vet, &mut first_id)? {
            Same::No => return Ok((false, false)),
            Same::Bytes => {}
            Same::Signed => same_bytes = false,
        }
    }
    Ok((true, same_bytes))
}

/// How two files are the same job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Same {
    No,
    Bytes,
    /// Different bytes (another compression, an extra unknown header key,
    /// another valid signature), but both pass the trust file's checks and
    /// carry the same signed content.
    Signed,
}

fn same_job(
    queue: &Queue,
    decoder: Option<&Decoder>,
    a: &OsString,
    b: &OsString,
    vet: Option<&Vetting<'_>>,
    a_id: &mut Option<Option<fspl_format::Digest>>,
) -> Result<Same> {
    let same = same_contents(&queue.job_path(a), &queue.job_path(b)).map_err(QueueError::io(
        "compare duplicate job files",
        queue.job_path(b),
    ))?;
    if same {
        return Ok(Same::Bytes);
    }
    let Some(v) = vet else {
        return Ok(Same::No);
    };
    if a_id.is_none() {
        *a_id = Some(signed_identity(queue, decoder, a, v)?);
    }
    let (Some(Some(x)), Some(y)) = (*a_id, signed_identity(queue, decoder, b, v)?) else {
        return Ok(Same::No);
    };
    Ok(if x == y { Same::Signed } else { Same::No })
}

/// What identifies a job whose header passes the trust file's checks: a
/// digest of its signed bytes (seq, ctime, type, params, env, payload
/// length and digest, destination, signer key). Two such files are
/// statements of one trusted sender about one job; their bytes may differ
/// in what is not signed (compression, unknown keys, the signature's own
/// bytes). `None` when the header does not pass (or cannot be read).
fn signed_identity(
    queue: &Queue,
    decoder: Option<&Decoder>,
    name: &OsStr,
    vet: &Vetting<'_>,
) -> Result<Option<fspl_format::Digest>> {
    let d = match queue.read_job_header(name, decoder) {
        Ok(d) => d,
        Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if vet.check(&d.header, &d.ext).is_err() {
        return Ok(None);
    }
    let Ok(signed) = d.header.signed_bytes(&d.ext) else {
        return Ok(None);
    };
    let mut h = fspl_trust::digest::Hasher::new(DigestAlg::Blake3);
    h.update(&signed);
    Ok(Some(h.finish()))
}

/// Why `queue-process` would refuse this file for its payload (length or
/// digest not matching the header's, or a compressed or encrypted payload
/// that cannot be decoded to the end), as its check
/// ([`crate::process::JobCheck::job`]) decides; `None` when it would not
/// (or the file has gone).
pub fn payload_refusal(
    queue: &Queue,
    decoder: Option<&Decoder>,
    name: &OsStr,
) -> Result<Option<String>> {
    let job = match queue.open_job(name, decoder) {
        Ok(j) => j,
        Err(QueueError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let check = JobCheck::new(None, None, false);
    Ok(
        match check.job(job, PayloadUse::Unused, &queue.job_path(name))? {
            Verdict::Refuse(r) => Some(r.reason),
            Verdict::Run(cleared) => {
                cleared.close();
                None
            }
            // A plain file that cannot be read fails when run; not refused.
            Verdict::Fail(_) => None,
        },
    )
}

/// Several files claim the same seq. Byte-identical copies (a sync tool
/// delivering a file twice) are one job; with a trust file, so are copies
/// that pass its checks and carry the same signed content (`same_job`);
/// anything else is an error: we never guess which one is meant. The
/// caller has set aside the files it refuses.
pub fn check_duplicates(
    queue: &Queue,
    decoder: Option<&Decoder>,
    seq: u64,
    first: &OsString,
    others: &[OsString],
    vet: Option<&Vetting<'_>>,
) -> Result<()> {
    let mut first_id = None;
    for other in others {
        if same_job(queue, decoder, first, other, vet, &mut first_id)? == Same::No {
            let mut files = vec![first.clone()];
            files.extend(others.iter().cloned());
            return Err(duplicate_error(queue, seq, &files));
        }
    }
    Ok(())
}

fn duplicate_error(queue: &Queue, seq: u64, files: &[OsString]) -> QueueError {
    QueueError::DuplicateSeq {
        dir: queue.dir().to_path_buf(),
        seq,
        files: files
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
    }
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
