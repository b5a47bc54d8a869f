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

/// The ctime in a job file's header (nanoseconds since the epoch), if it
/// can be read without a key or decoder. Opened without following a link
/// and without blocking (a FIFO put in its place never hangs the run);
/// only as much is read as the header needs.
pub fn job_ctime(path: &Path) -> Option<i128> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let (d, _) = fspl_queue::open_stream(std::io::BufReader::with_capacity(4096, f), None).ok()?;
    let ct = d.header.ctime;
    Some(ct.secs as i128 * 1_000_000_000 + ct.nanos as i128)
}

/// A candidate's time: a job file's ctime (its header) when it can be
/// read, else the file's mtime.
fn time_of(dir: &Path, name: &str, md: &std::fs::Metadata) -> (i128, TimeSource) {
    if md.file_type().is_file()
        && is_job_name(name.as_bytes())
        && let Some(t) = job_ctime(&dir.join(name))
    {
        return (t, TimeSource::Ctime);
    }
    (nanos(md), TimeSource::Mtime)
}

/// The candidates of a directory: (name, time, source, companions).
type Candidate = (String, i128, TimeSource, Vec<String>);

fn list(
    dir: &Path,
    mut f: impl FnMut(&str, &std::fs::Metadata, &[u8]) -> Option<Result<Candidate, &'static str>>,
    left_alone: &mut Vec<(String, &'static str)>,
) -> Result<Vec<Candidate>, PruneError> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
        let ent = ent.map_err(io("read directory", dir))?;
        let os = ent.file_name();
        let b = os.as_bytes();
        if b.starts_with(b".") {
            continue;
        }
        let Ok(name) = std::str::from_utf8(b) else {
            continue;
        };
        // One stat per file (not following links).
        let Ok(md) = ent.metadata() else { continue };
        match f(name, &md, b) {
            None => {}
            Some(Err(why)) => left_alone.push((name.to_string(), why)),
            Some(Ok(c)) if md.file_type().is_file() => out.push(c),
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
                |name, md, b| {
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
                        _ => Ok((name.to_string(), nanos(md), TimeSource::Mtime, Vec::new())),
                    })
                },
                &mut left_alone,
            )?;
            (jobs, c)
        }
        DirKind::Quarantine => {
            let c = list(
                path,
                |name, md, b| {
                    if !is_job_name(b) {
                        return None;
                    }
                    let reason = format!("{name}.reason");
                    let companions = if path.join(&reason).is_file() {
                        vec![reason]
                    } else {
                        Vec::new()
                    };
                    let (t, src) = time_of(path, name, md);
                    Some(Ok((name.to_string(), t, src, companions)))
                },
                &mut left_alone,
            )?;
            (path.to_path_buf(), c)
        }
        DirKind::Sent => {
            let c = list(
                path,
                |name, md, b| {
                    is_job_name(b).then(|| {
                        let (t, src) = time_of(path, name, md);
                        Ok((name.to_string(), t, src, Vec::new()))
                    })
                },
                &mut left_alone,
            )?;
            (path.to_path_buf(), c)
        }
        DirKind::Uploaded => {
            let c = list(
                path,
                |name, md, _| {
                    let (t, src) = time_of(path, name, md);
                    Some(Ok((name.to_string(), t, src, Vec::new())))
                },
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
        let h = JobHeader {
            seq: 1,
            ctime: Ctime {
                secs: ctime_secs,
                nanos: 123,
            },
            cmd_type: CmdType::Command(Default::default()),
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
}
