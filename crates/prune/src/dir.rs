//! Pruning a directory fspl manages: which files are the directory's to
//! prune (the rules never see any other), their times, and their durable
//! removal.
//!
//! | directory | what it prunes | time |
//! | --- | --- | --- |
//! | a queue (`jobs/` and `nextseq`) | job files below nextseq (kept by `never_delete`, `on_error = "leave"`), and `fspl-*.fspl.out` files (`saveboth`) of jobs below nextseq or gone | a job's ctime (its header); an `.out` file's mtime |
//! | a queue's `.out` files only (`keep_output`) | `fspl-*.fspl.out` as above | mtime |
//! | `rejected/`, `corrupt/` | `fspl-*.fspl` (with their `.reason` files) | a job's ctime |
//! | `sent/` (an outbox's, `push --keep`) | `fspl-*.fspl` | a job's ctime |
//! | `completed/`, `failed/` (an uploader's) | regular files not starting with `.` | a job's ctime; any other file's mtime |
//!
//! A job file (named `fspl-*.fspl`, as a queue names jobs) is timed by its
//! ctime, read from its header, wherever it is; one whose header cannot be
//! read without a key or a decoder (encrypted, encoded, corrupt) outside a
//! queue falls back to its mtime. Each entry says which ([`TimeSource`]).
//!
//! Never pruned: a job at or after nextseq, its `.out` file (the job may be
//! running and writing it), a job whose header cannot be read, temporaries
//! (`.`-names), anything that is not a regular file, names that are not
//! UTF-8.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fspl_queue::Queue;
use fspl_queue::{EntryKind, classify};

use crate::rules::{Entry, Rule, evaluate};

/// The kind of directory being pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirKind {
    /// A queue: leftover jobs below nextseq and `.out` files.
    Queue,
    /// A queue's `.out` files only.
    Outputs,
    /// `rejected/` or `corrupt/`: quarantined jobs (with reasons).
    Quarantine,
    /// An outbox's `sent/`.
    Sent,
    /// An uploader's `completed/` or `failed/`.
    Uploaded,
}

impl DirKind {
    pub fn describe(self) -> &'static str {
        match self {
            DirKind::Queue => "queue (jobs below nextseq, .out files)",
            DirKind::Outputs => "queue (.out files)",
            DirKind::Quarantine => "quarantine (refused or corrupt jobs)",
            DirKind::Sent => "outbox sent/",
            DirKind::Uploaded => "uploader completed/ or failed/",
        }
    }
}

/// Where an entry's time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSource {
    /// The job's ctime, from its header.
    Ctime,
    /// The file's modification time.
    Mtime,
}

/// One file the rules judged.
#[derive(Clone, Debug)]
pub struct Judged {
    pub name: String,
    pub time: i128,
    pub source: TimeSource,
    pub kept_by: Vec<usize>,
    pub removed: bool,
    /// Files removed with it (a quarantined job's `.reason`).
    pub companions: Vec<String>,
}

/// What pruning one directory decides (and, after [`Plan::apply`], did).
#[derive(Debug)]
pub struct Plan {
    /// The path as given.
    pub path: PathBuf,
    /// The directory the files are in (`jobs/` for a queue).
    pub files_dir: PathBuf,
    pub kind: DirKind,
    /// Oldest first.
    pub entries: Vec<Judged>,
    /// Files of the directory's kind left alone, and why.
    pub left_alone: Vec<(String, &'static str)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{}: not a directory fspl prunes (a queue directory, or its rejected/, corrupt/, sent/, completed/ or failed/)", path.display())]
    NotManaged { path: PathBuf },
    #[error("{}: cannot {action}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] fspl_queue::QueueError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PruneError + 'a {
    move |source| PruneError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The kind of directory `path` is, from what is in it (a queue) or its
/// name (`rejected`, `corrupt`, `sent`, `completed`, `failed`).
pub fn detect(path: &Path) -> Result<DirKind, PruneError> {
    let md = std::fs::metadata(path).map_err(io("read", path))?;
    if !md.is_dir() {
        return Err(PruneError::NotManaged {
            path: path.to_path_buf(),
        });
    }
    if path.join("jobs").is_dir()
        && (path.join("nextseq").exists() || path.join("nextseq.lock").exists())
    {
        return Ok(DirKind::Queue);
    }
    let base = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_os_string()))
        .unwrap_or_default();
    match base.as_bytes() {
        b"rejected" | b"corrupt" => Ok(DirKind::Quarantine),
        b"sent" => Ok(DirKind::Sent),
        b"completed" | b"failed" => Ok(DirKind::Uploaded),
        _ => Err(PruneError::NotManaged {
            path: path.to_path_buf(),
        }),
    }
}

fn nanos(md: &std::fs::Metadata) -> i128 {
    md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
}

/// A job name with an optional quarantine suffix: `fspl-*.fspl`.
fn is_job_name(b: &[u8]) -> bool {
    b.starts_with(b"fspl-") && b.ends_with(b".fspl") && b.len() > 10
}

/// From how many files a listing reads job headers on several threads.
const PARALLEL_FROM: usize = 2048;

/// The most threads a listing reads job headers on.
const MAX_THREADS: usize = 8;

/// How much of a job file is read at once for its header (one read
/// holds any usual header; a longer one is read on from the file).
const HEAD_READ: usize = 8192;

/// What a listing knows of a file: whether it is a regular file, and its
/// time and where that came from.
struct Stamp {
    is_file: bool,
    time: i128,
    source: TimeSource,
}

/// A job file's stamp: the ctime in its header, if it can be read without
/// a key or decoder, else its mtime. One open, one read and one close for
/// a readable header; an fstat besides otherwise. Opened without following
/// a link and without blocking, so that whatever was put in place of the
/// regular file the directory listed (a FIFO, a directory) fails to read
/// instead of hanging the run. None: it cannot be opened.
fn job_stamp(path: &Path) -> Option<Stamp> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut buf = vec![0u8; HEAD_READ];
    let n = loop {
        match f.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break 0,
        }
    };
    buf.truncate(n);
    let ctime = |d: fspl_format::Decoded| {
        let ct = d.header.ctime;
        Stamp {
            is_file: true,
            time: ct.secs as i128 * 1_000_000_000 + ct.nanos as i128,
            source: TimeSource::Ctime,
        }
    };
    // The header within what was read (the usual case): no more reads.
    if let Ok((d, _)) = fspl_queue::open_stream(std::io::Cursor::new(buf.clone()), None) {
        return Some(ctime(d));
    }
    let md = f.metadata().ok()?;
    if md.len() > n as u64
        && let Ok((d, _)) = fspl_queue::open_stream(std::io::Cursor::new(buf).chain(f), None)
    {
        // A header longer than one read.
        return Some(ctime(d));
    }
    Some(Stamp {
        is_file: md.file_type().is_file(),
        time: nanos(&md),
        source: TimeSource::Mtime,
    })
}

/// The candidates of a directory: (name, time, source, companions).
type Candidate = (String, i128, TimeSource, Vec<String>);

/// The candidates of `dir`, by `f` (given each name's [`Stamp`]); with
/// `header_times`, a job file (`fspl-*.fspl`) is timed by its header's
/// ctime when it can be read ([`job_stamp`]), else every file by its
/// mtime.
fn list(
    dir: &Path,
    header_times: bool,
    mut f: impl FnMut(&str, &Stamp, &[u8]) -> Option<Result<Candidate, &'static str>>,
    left_alone: &mut Vec<(String, &'static str)>,
) -> Result<Vec<Candidate>, PruneError> {
    let mut ents = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
        let ent = ent.map_err(io("read directory", dir))?;
        let os = ent.file_name();
        if os.as_bytes().starts_with(b".") || os.to_str().is_none() {
            continue;
        }
        ents.push((ent, os));
    }
    // A job file listed as a regular file: its header (no stat when it
    // can be read). Anything else: one stat (not following links).
    let stamp = |(ent, os): &(std::fs::DirEntry, OsString)| -> Option<Stamp> {
        let b = os.as_bytes();
        if header_times
            && is_job_name(b)
            && ent.file_type().is_ok_and(|t| t.is_file())
            && let Some(st) = job_stamp(&dir.join(os))
        {
            return Some(st);
        }
        let md = ent.metadata().ok()?;
        Some(Stamp {
            is_file: md.file_type().is_file(),
            time: nanos(&md),
            source: TimeSource::Mtime,
        })
    };
    // Reading headers is an open, a read and a close per file: spread
    // over a few threads when there are many.
    let threads = if header_times && ents.len() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    } else {
        1
    };
    let stamps: Vec<Option<Stamp>> = if threads > 1 {
        let chunk = ents.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let parts: Vec<_> = ents
                .chunks(chunk)
                .map(|c| sc.spawn(move || c.iter().map(stamp).collect::<Vec<_>>()))
                .collect();
            let mut all = Vec::with_capacity(ents.len());
            for h in parts {
                match h.join() {
                    Ok(v) => all.extend(v),
                    // Never expected; the stamps must line up with the
                    // names, so do it again on this thread.
                    Err(_) => return ents.iter().map(stamp).collect(),
                }
            }
            all
        })
    } else {
        ents.iter().map(stamp).collect()
    };
    let mut out = Vec::new();
    for ((_, os), st) in ents.iter().zip(stamps) {
        let Some(st) = st else { continue };
        let b = os.as_bytes();
        let Some(name) = os.to_str() else { continue };
        match f(name, &st, b) {
            None => {}
            Some(Err(why)) => left_alone.push((name.to_string(), why)),
            Some(Ok(c)) if st.is_file => out.push(c),
            Some(Ok(_)) => left_alone.push((name.to_string(), "not a regular file")),
        }
    }
    Ok(out)
}

/// Judge the files of `path` (of kind `kind`, else detected) by `rules`.
/// Nothing is removed.
pub fn plan(path: &Path, kind: Option<DirKind>, rules: &[Rule]) -> Result<Plan, PruneError> {
    let kind = match kind {
        Some(k) => k,
        None => detect(path)?,
    };
    let mut left_alone = Vec::new();
    let (files_dir, cands) = match kind {
        DirKind::Queue | DirKind::Outputs => {
            let q = Queue::new(path);
            q.check_exists()?;
            let next = fspl_queue::seqnum::read(&q.nextseq_path())?.unwrap_or(1);
            // Every job's seq (headers read without decoding: an encoded
            // job is not ours to judge).
            let scan = fspl_queue::scan::scan(&q, None, None)?;
            let mut seq_of = std::collections::HashMap::new();
            for j in &scan.jobs {
                seq_of.insert(j.name.clone(), (j.seq, j.ctime));
            }
            let unreadable: std::collections::HashSet<OsString> =
                scan.skipped.iter().map(|s| s.name.clone()).collect();
            let jobs = q.jobs_dir().to_path_buf();
            let c = list(
                &jobs,
                false,
                |name, st, b| {
                    if classify(std::ffi::OsStr::from_bytes(b)) == EntryKind::Job {
                        if kind == DirKind::Outputs {
                            return None;
                        }
                        return Some(match seq_of.get(std::ffi::OsStr::from_bytes(b)) {
                            Some((seq, _)) if *seq >= next => Err("at or after nextseq"),
                            Some((_, ct)) => Ok((
                                name.to_string(),
                                ct.secs as i128 * 1_000_000_000 + ct.nanos as i128,
                                TimeSource::Ctime,
                                Vec::new(),
                            )),
                            None => Err("header not readable"),
                        });
                    }
                    let job = b.strip_suffix(b".out")?;
                    if !is_job_name(job) {
                        return None;
                    }
                    let job = std::ffi::OsStr::from_bytes(job);
                    Some(match seq_of.get(job) {
                        Some((seq, _)) if *seq >= next => {
                            Err("its job is at or after nextseq (may be running)")
                        }
                        None if unreadable.contains(job) => Err("its job is not readable"),
                        _ => Ok((name.to_string(), st.time, st.source, Vec::new())),
                    })
                },
                &mut left_alone,
            )?;
            (jobs, c)
        }
        DirKind::Quarantine => {
            let c = list(
                path,
                true,
                |name, st, b| {
                    if !is_job_name(b) {
                        return None;
                    }
                    let reason = format!("{name}.reason");
                    let companions = if path.join(&reason).is_file() {
                        vec![reason]
                    } else {
                        Vec::new()
                    };
                    Some(Ok((name.to_string(), st.time, st.source, companions)))
                },
                &mut left_alone,
            )?;
            (path.to_path_buf(), c)
        }
        DirKind::Sent => {
            let c = list(
                path,
                true,
                |name, st, b| {
                    is_job_name(b).then(|| Ok((name.to_string(), st.time, st.source, Vec::new())))
                },
                &mut left_alone,
            )?;
            (path.to_path_buf(), c)
        }
        DirKind::Uploaded => {
            let c = list(
                path,
                true,
                |name, st, _| Some(Ok((name.to_string(), st.time, st.source, Vec::new()))),
                &mut left_alone,
            )?;
            (path.to_path_buf(), c)
        }
    };
    let entries: Vec<Entry> = cands
        .iter()
        .map(|(n, t, _, _)| Entry {
            name: n.clone(),
            time: *t,
        })
        .collect();
    let verdicts = evaluate(&entries, rules);
    let mut judged: Vec<Judged> = cands
        .into_iter()
        .zip(verdicts)
        .map(|((name, time, source, companions), v)| Judged {
            name,
            time,
            source,
            kept_by: v.kept_by,
            removed: v.removed,
            companions,
        })
        .collect();
    judged.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)));
    left_alone.sort();
    Ok(Plan {
        path: path.to_path_buf(),
        files_dir,
        kind,
        entries: judged,
        left_alone,
    })
}

/// A file a real run could not remove.
#[derive(Debug)]
pub struct RemoveFailure {
    pub name: String,
    pub error: std::io::Error,
}

impl Plan {
    /// The entries to remove.
    pub fn removals(&self) -> impl Iterator<Item = &Judged> {
        self.entries.iter().filter(|e| e.removed)
    }

    /// Remove what the plan removes, durably: each file unlinked (a
    /// quarantined job's reason file after it), then the directory
    /// fsynced once. A file already gone counts as removed. Returns the
    /// files that could not be removed; an error: the directory could not
    /// be made durable.
    pub fn apply(&self) -> Result<Vec<RemoveFailure>, PruneError> {
        let mut failures = Vec::new();
        let mut any = false;
        for e in self.removals() {
            for name in std::iter::once(&e.name).chain(&e.companions) {
                match std::fs::remove_file(self.files_dir.join(name)) {
                    Ok(()) => any = true,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => failures.push(RemoveFailure {
                        name: name.clone(),
                        error,
                    }),
                }
            }
        }
        if any {
            let d = File::open(&self.files_dir).map_err(io("open directory", &self.files_dir))?;
            d.sync_all()
                .map_err(io("sync directory", &self.files_dir))?;
        }
        Ok(failures)
    }
}

fn time_text(t: i128) -> String {
    let secs = t.div_euclid(1_000_000_000);
    fspl_format::rfc3339_utc(fspl_format::Ctime {
        secs: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

impl Plan {
    /// What the plan says, a line per file (oldest first): `keep` (with
    /// the rules that keep it, by number and text), `remove` (`would
    /// remove` in a dry run); then the files left alone.
    pub fn lines(&self, rules: &[Rule], dry_run: bool) -> Vec<String> {
        let mut out = Vec::with_capacity(self.entries.len() + 1);
        let removed = self.removals().count();
        out.push(format!(
            "{} ({}): {} kept, {} {}",
            self.path.display(),
            self.kind.describe(),
            self.entries.len() - removed,
            removed,
            if dry_run {
                "would be removed"
            } else {
                "removed"
            }
        ));
        for e in &self.entries {
            let src = match e.source {
                TimeSource::Ctime => "ctime",
                TimeSource::Mtime => "mtime",
            };
            let mut line = format!(
                "  {:<12} {} {src} {}",
                if !e.removed {
                    "keep"
                } else if dry_run {
                    "would remove"
                } else {
                    "remove"
                },
                time_text(e.time),
                e.name
            );
            if !e.kept_by.is_empty() {
                let by: Vec<String> = e
                    .kept_by
                    .iter()
                    .map(|r| {
                        format!(
                            "#{} {}",
                            r + 1,
                            rules.get(*r).map(|r| r.to_string()).unwrap_or_default()
                        )
                    })
                    .collect();
                line.push_str(&format!("  (kept by {})", by.join(", ")));
            }
            out.push(line);
        }
        for (name, why) in &self.left_alone {
            out.push(format!("  {:<12} {name} ({why})", "left alone"));
        }
        out
    }

    /// The plan as JSON: `{"path", "kind", "dry_run", "entries": [{"name",
    /// "time", "time_ns", "time_source", "action", "kept_by": [{"rule":
    /// N, "text"}]}], "left_alone": [{"name", "why"}]}`.
    pub fn json(&self, rules: &[Rule], dry_run: bool) -> serde_json::Value {
        use serde_json::json;
        json!({
            "path": self.path.display().to_string(),
            "kind": self.kind,
            "dry_run": dry_run,
            "entries": self.entries.iter().map(|e| json!({
                "name": e.name,
                "time": time_text(e.time),
                "time_ns": e.time.to_string(),
                "time_source": e.source,
                "action": if e.removed { "remove" } else { "keep" },
                "kept_by": e.kept_by.iter().map(|r| json!({
                    "rule": r + 1,
                    "text": rules.get(*r).map(|r| r.to_string()).unwrap_or_default(),
                })).collect::<Vec<_>>(),
                "also_removes": e.companions,
            })).collect::<Vec<_>>(),
            "left_alone": self.left_alone.iter().map(|(n, w)| json!({"name": n, "why": w})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use fspl_format::{CmdType, Ctime, JobHeader};

    use super::*;
    use crate::rules::Rule;

    const DAY: i64 = 86_400;

    /// A real job file (header and payload) with this ctime, its mtime set
    /// `mtime_ago` seconds before now.
    fn job_file(path: &Path, ctime_secs: i64, mtime_ago: u64) {
        job_file_with(path, ctime_secs, mtime_ago, Default::default());
    }

    fn job_file_with(path: &Path, ctime_secs: i64, mtime_ago: u64, cmd: fspl_format::Command) {
        let h = JobHeader {
            seq: 1,
            ctime: Ctime {
                secs: ctime_secs,
                nanos: 123,
            },
            cmd_type: CmdType::Command(cmd),
        };
        let mut b = h.encode().unwrap();
        b.extend_from_slice(b"payload");
        std::fs::write(path, b).unwrap();
        set_mtime(path, mtime_ago);
    }

    fn set_mtime(path: &Path, ago: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(ago))
            .unwrap();
    }

    fn now_secs() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Job files in rejected/, sent/ and completed/ are timed by their
    /// ctime (the header's), not their mtime, and say so; a job file whose
    /// header cannot be read, and any other file, by their mtime. The
    /// grid then judges by those times: the jobs made an hour apart long
    /// ago (mtime: just now) are judged as long ago.
    #[test]
    fn job_files_outside_a_queue_were_timed_by_their_mtime() {
        let root = tempfile::tempdir().unwrap();
        let now = now_secs();
        for dir in ["rejected", "sent", "completed"] {
            let d = root.path().join(dir);
            std::fs::create_dir(&d).unwrap();
            // ctime: 10 days ago and 10 days + 1 h ago; mtime: a minute ago.
            job_file(&d.join("fspl-new.fspl"), now - 10 * DAY, 60);
            job_file(&d.join("fspl-old.fspl"), now - 10 * DAY - 3600, 60);
            // Not readable as a job: its mtime (2 days ago).
            std::fs::write(d.join("fspl-junk.fspl"), b"not a job").unwrap();
            set_mtime(&d.join("fspl-junk.fspl"), 2 * DAY as u64);
            let rules = [Rule::parse("grid:1x1h(keep=all)").unwrap()];
            let p = plan(&d, None, &rules).unwrap();
            let by: std::collections::HashMap<&str, &Judged> =
                p.entries.iter().map(|e| (e.name.as_str(), e)).collect();
            let new = by["fspl-new.fspl"];
            assert_eq!(new.source, TimeSource::Ctime, "{dir}: {:?}", p.entries);
            assert_eq!(new.time, (now - 10 * DAY) as i128 * 1_000_000_000 + 123);
            assert_eq!(by["fspl-old.fspl"].source, TimeSource::Ctime);
            let junk = by["fspl-junk.fspl"];
            assert_eq!(junk.source, TimeSource::Mtime, "{dir}");
            let age = now as i128 - junk.time / 1_000_000_000;
            assert!((2 * DAY as i128 - 5..=2 * DAY as i128 + 5).contains(&age));
            // now = the junk file (2 days ago, the youngest): both jobs
            // are 8 days older, outside the one-hour grid.
            let removed: Vec<&str> = p.removals().map(|e| e.name.as_str()).collect();
            assert_eq!(removed, ["fspl-old.fspl", "fspl-new.fspl"], "{dir}");
            let lines = p.lines(&rules, true).join("\n");
            assert!(lines.contains("ctime fspl-new.fspl"), "{lines}");
            assert!(lines.contains("mtime fspl-junk.fspl"), "{lines}");
            let j = p.json(&rules, true);
            let src: Vec<&str> = j["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["time_source"].as_str().unwrap())
                .collect();
            assert_eq!(src, ["ctime", "ctime", "mtime"], "{j}");
        }
        // completed/ holds any file: a non-job is timed by its mtime.
        let c = root.path().join("completed");
        std::fs::write(c.join("report.csv"), b"a,b").unwrap();
        let p = plan(&c, None, &[Rule::parse("last_n:1").unwrap()]).unwrap();
        let r = p.entries.iter().find(|e| e.name == "report.csv").unwrap();
        assert_eq!(r.source, TimeSource::Mtime);
    }

    /// A header longer than one read is read on from the file; a FIFO
    /// named like a job is left alone without hanging the listing.
    #[test]
    fn long_headers_are_read_whole_and_a_fifo_named_like_a_job_never_blocks() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("sent");
        std::fs::create_dir(&d).unwrap();
        let now = now_secs();
        let cmd = fspl_format::Command {
            params: vec![vec![b'p'; 3 * HEAD_READ]],
            env: Vec::new(),
        };
        job_file_with(&d.join("fspl-long.fspl"), now - 5 * DAY, 0, cmd);
        let fifo = std::ffi::CString::new(d.join("fspl-fifo.fspl").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let p = plan(&d, None, &[Rule::parse("last_n:1").unwrap()]).unwrap();
        assert_eq!(p.entries.len(), 1, "{:?}", p.entries);
        assert_eq!(p.entries[0].source, TimeSource::Ctime);
        assert_eq!(
            p.entries[0].time,
            (now - 5 * DAY) as i128 * 1_000_000_000 + 123
        );
        assert_eq!(
            p.left_alone,
            [("fspl-fifo.fspl".to_string(), "not a regular file")]
        );
    }
}
