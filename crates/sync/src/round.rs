//! One round: scan, send the local changes as one change set, apply the
//! peer's change sets waiting in the inbox, in seq order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fspl_queue::Queue;
use fspl_queue::lock::FileLock;
use fspl_queue::nextseq::NextSeq;
use serde::{Deserialize, Serialize};

use crate::apply::{self, too_many_deletes};
use crate::changeset::{Manifest, Writer};
use crate::fsops::{Root, fstat_meta};
use crate::job;
use crate::meta::{Meta, Version, within};
use crate::scan::{Filter, PRIVATE_DIR, scan};
use crate::state::{State, state_file};
use crate::{Keys, SyncConfig, SyncError, now_ns};

/// How a round runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Go on despite a safety refusal (unmounted or emptied root, too many
    /// deletions).
    pub force: bool,
}

/// What a round did (also kept in the private directory as
/// `last-round.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    /// When the round started (RFC 3339, UTC).
    pub started: String,
    pub elapsed_ms: u64,
    /// Entries in the tree after the scan.
    pub entries: u64,
    /// Change sets sent (0 or 1) and what they carried.
    pub sets_sent: u64,
    pub files_sent: u64,
    pub deletes_sent: u64,
    pub bytes_sent: u64,
    /// Files that changed while they were read, three times in a row:
    /// left for the next round.
    pub torn: u64,
    /// Change sets applied and what they did here.
    pub sets_received: u64,
    pub files_received: u64,
    pub deleted: u64,
    pub conflicts: u64,
    pub bytes_received: u64,
    /// Entries of received change sets excluded here.
    pub excluded: u64,
    /// The peer's clock is ahead of ours by more than max_skew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<String>,
    /// The inbox waits for this seq while later ones are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<u64>,
    /// The error that ended the round, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RoundReport {
    /// The round changed something (a local change sent, a change set
    /// received): the schedule goes back to interval_min.
    pub fn worked(&self) -> bool {
        self.sets_sent > 0 || self.sets_received > 0
    }
}

/// A progress step, as CoCalc reports it: scanning 0%, sending-state 20%,
/// sending N files 50%, receiving 70%, applying 80%, ready 100%.
pub type Progress<'a> = &'a (dyn Fn(&str, u8) + Sync);

fn rfc3339_now() -> String {
    fspl_format::rfc3339_utc(fspl_format::Ctime::now())
}

/// Where the last round's report is kept.
pub fn report_path(cfg: &SyncConfig) -> PathBuf {
    cfg.private_dir().join("last-round.json")
}

/// Run one round. The report is also written to `last-round.json`, with
/// the error when the round failed.
pub fn round(
    cfg: &SyncConfig,
    keys: &Keys,
    opts: &Options,
    progress: Progress<'_>,
) -> Result<RoundReport, SyncError> {
    let t0 = Instant::now();
    let mut report = RoundReport {
        started: rfc3339_now(),
        ..RoundReport::default()
    };
    let r = run(cfg, keys, opts, progress, &mut report);
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    if let Err(e) = &r {
        report.error = Some(fspl_queue::display_chain(e));
    }
    // The report of a round that could not even start (no root) has
    // nowhere to go.
    if cfg.private_dir().is_dir()
        && let Ok(json) = serde_json::to_vec_pretty(&report)
    {
        // Informational: replaced atomically, not synced (an idle round
        // writes nothing durable).
        let path = report_path(cfg);
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, &json).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    match r {
        Ok(()) => {
            progress("ready", 100);
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

fn check_root(cfg: &SyncConfig) -> Result<(), SyncError> {
    for p in &cfg.exclude {
        if p.trim() == "." || p.trim() == "~" {
            return Err(SyncError::Disabled { pattern: p.clone() });
        }
    }
    match std::fs::metadata(&cfg.dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SyncError::RootNotDir {
            path: cfg.dir.clone(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SyncError::RootMissing {
            path: cfg.dir.clone(),
        }),
        Err(e) => Err(SyncError::io("look at", &cfg.dir, e)),
    }
}

fn ensure_dir(p: &Path) -> Result<(), SyncError> {
    std::fs::create_dir_all(p).map_err(|e| SyncError::io("create directory", p, e))
}

/// Create a queue that does not exist yet.
fn queue(
    p: &Path,
    identities: Option<std::sync::Arc<fspl_trust::crypt::Identities>>,
) -> Result<Queue, SyncError> {
    if !p.exists() {
        if let Some(parent) = p.parent() {
            ensure_dir(parent)?;
        }
        Queue::init(p, false).map_err(|e| SyncError::Queue {
            what: format!("create queue {}", p.display()),
            source: e,
        })?;
    }
    let q = Queue::new(p).with_identities(identities);
    q.check_exists().map_err(|e| SyncError::Queue {
        what: format!("use queue {}", p.display()),
        source: e,
    })?;
    Ok(q)
}

/// Open the tree and the private directory, lock it, load the state and
/// check the tree's marker.
pub(crate) struct Opened {
    pub private: PathBuf,
    pub _lock: FileLock,
    pub state: State,
    pub root: Root,
    pub filter: Filter,
    /// The state changed since it was loaded.
    pub dirty: bool,
}

pub(crate) fn open(cfg: &SyncConfig, opts: &Options) -> Result<Opened, SyncError> {
    cfg.validate()?;
    check_root(cfg)?;
    let private = cfg.private_dir();
    let marker_dir = cfg.dir.join(PRIVATE_DIR);
    ensure_dir(&private)?;
    ensure_dir(&marker_dir)?;
    let lock_path = private.join("lock");
    let lock = FileLock::try_acquire(&lock_path, true).map_err(|e| match e {
        fspl_queue::QueueError::Locked { .. } => SyncError::Busy {
            path: cfg.dir.clone(),
        },
        e => SyncError::Queue {
            what: "lock the sync".into(),
            source: e,
        },
    })?;
    let sf = state_file(&private);
    let marker = marker_dir.join("marker");
    let state = match State::load(&sf)? {
        Some(s) => {
            let found = std::fs::read_to_string(&marker).ok();
            if found.as_deref().map(str::trim) != Some(s.marker.as_str()) {
                if !opts.force {
                    return Err(SyncError::Unmounted {
                        path: cfg.dir.clone(),
                        why: match found {
                            None => format!("{} is missing", marker.display()),
                            Some(_) => format!("{} names another sync", marker.display()),
                        },
                    });
                }
                fspl_queue::durable::replace_file(&marker, s.marker.as_bytes()).map_err(|e| {
                    SyncError::Queue {
                        what: "write the tree's marker".into(),
                        source: e,
                    }
                })?;
            }
            s
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            fspl_queue::durable::replace_file(&marker, id.as_bytes()).map_err(|e| {
                SyncError::Queue {
                    what: "write the tree's marker".into(),
                    source: e,
                }
            })?;
            State::new(id)
        }
    };
    let root = Root::open(&cfg.dir).map_err(|e| SyncError::io("open", &cfg.dir, e))?;
    let filter = Filter::new(
        &cfg.dir,
        &cfg.exclude,
        &[private.clone(), cfg.inbox.clone(), cfg.outbox.clone()],
    )?;
    Ok(Opened {
        private,
        _lock: lock,
        state,
        root,
        filter,
        dirty: false,
    })
}

/// Store the change sets spooled in `pending/` into the outbox, in seq
/// order (left there by a round that was killed before it could).
fn flush_pending(pending: &Path, outbox: &Queue) -> Result<u64, SyncError> {
    let mut jobs: Vec<(u64, PathBuf)> = Vec::new();
    let rd = match std::fs::read_dir(pending) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SyncError::io("read directory", pending, e)),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".fspl")
            .and_then(|s| s.parse::<u64>().ok())
        {
            jobs.push((seq, e.path()));
        } else if name.ends_with(".part") {
            // A job file whose building was interrupted: its round saved
            // no state, so the next scan sends its changes again.
            let _ = std::fs::remove_file(e.path());
        }
    }
    jobs.sort();
    for (_, p) in &jobs {
        job::store(outbox, p)?;
        std::fs::remove_file(p).map_err(|e| SyncError::io("remove", p, e))?;
        fspl_queue::durable::sync_dir(pending).map_err(|e| SyncError::Queue {
            what: "sync the pending directory".into(),
            source: e,
        })?;
    }
    Ok(jobs.len() as u64)
}

/// The local changes since the last synced state: deletions (deepest
/// first), then everything new or changed (parents first). The scan is
/// used up (its paths move into the changes: a large tree's paths are
/// not held twice).
pub(crate) fn diff(
    o: &mut Opened,
    scanned: crate::scan::Scanned,
    now: i64,
) -> Vec<(Vec<u8>, Version, Version)> {
    let mut dels = Vec::new();
    let mut forget = Vec::new();
    for (p, old) in &o.state.entries {
        if scanned.entries.contains_key(p) {
            continue;
        }
        if o.filter.excluded(p, old.is_dir()) {
            forget.push(p.clone());
            continue;
        }
        if scanned.unreadable.iter().any(|u| within(p, u)) {
            continue;
        }
        dels.push((
            p.clone(),
            Version::Present(old.clone()),
            Version::Deleted { at: now },
        ));
    }
    o.dirty |= !forget.is_empty();
    for p in forget {
        o.state.forget(&p);
    }
    dels.reverse();
    let mut changes = dels;
    for (p, m) in scanned.entries {
        let base = match o.state.entries.get(&p) {
            Some(old) if old.same(&m) => continue,
            Some(old) => Version::Present(old.clone()),
            None => match o.state.deleted.get(&p) {
                Some(at) => Version::Deleted { at: *at },
                None => Version::Absent,
            },
        };
        changes.push((p, base, Version::Present(m)));
    }
    changes
}

fn run(
    cfg: &SyncConfig,
    keys: &Keys,
    opts: &Options,
    progress: Progress<'_>,
    report: &mut RoundReport,
) -> Result<(), SyncError> {
    progress("scanning", 0);
    let mut o = open(cfg, opts)?;
    let outbox = queue(&cfg.outbox, None)?;
    let pending = o.private.join("pending");
    let tmp = o.private.join("tmp");
    ensure_dir(&pending)?;
    ensure_dir(&tmp)?;
    flush_pending(&pending, &outbox)?;
    let sf = state_file(&o.private);

    // Scan and compare.
    let now = now_ns();
    let scanned = scan(&cfg.dir, &o.filter)?;
    remove_temps(&cfg.dir, &scanned.temps);
    report.entries = scanned.entries.len() as u64;
    if scanned.entries.is_empty() && !o.state.entries.is_empty() && !opts.force {
        return Err(SyncError::EmptyRoot {
            path: cfg.dir.clone(),
            synced: o.state.entries.len(),
        });
    }
    let changes = diff(&mut o, scanned, now);
    let deletes = changes
        .iter()
        .filter(|c| matches!(c.2, Version::Deleted { .. }))
        .count();
    if !opts.force
        && too_many_deletes(
            deletes,
            changes.len() - deletes,
            o.state.entries.len(),
            cfg.max_delete,
        )
    {
        return Err(SyncError::TooManyDeletes {
            what: "the local changes".into(),
            deletes,
            total: o.state.entries.len(),
            share: (cfg.max_delete * 100.0).round() as u32,
        });
    }

    // Send.
    if !changes.is_empty() {
        progress("sending-state", 20);
        let seq = o.state.next_seq;
        let part = pending.join(format!("{seq}.fspl.part"));
        let _ = std::fs::remove_file(&part);
        let compression = cfg.compression.spec();
        let mut w = job::start(&part, &tmp, keys, compression)?;
        let wio = |e: std::io::Error| SyncError::io("write the change set in", &part, e);
        w.manifest(&Manifest {
            version: 1,
            from: cfg.name.clone(),
            to: cfg.peer.clone(),
            seq,
            created_ns: now,
        })
        .map_err(wio)?;
        let files = changes
            .iter()
            .filter(|c| matches!(c.2, Version::Present(Meta::File { .. })))
            .count();
        progress(&format!("sending {files} files"), 50);
        let mut sent = 0u64;
        // Files of one directory come together (the changes are sorted):
        // each is opened from the one before's directory.
        let cached = o.root.cache_dirs();
        for (p, base, new) in &changes {
            match new {
                Version::Present(m @ Meta::File { .. }) => {
                    match send_file(&o.root, &mut w, p, base, m).map_err(wio)? {
                        Some(m) => {
                            if let Meta::File { size, .. } = m {
                                report.bytes_sent += size;
                            }
                            o.state.set(p, m);
                            report.files_sent += 1;
                            sent += 1;
                        }
                        None => report.torn += 1,
                    }
                }
                Version::Present(m) => {
                    w.entry(p, base, new).map_err(wio)?;
                    o.state.set(p, m.clone());
                    sent += 1;
                }
                Version::Deleted { at } => {
                    w.entry(p, base, new).map_err(wio)?;
                    o.state.delete(p, *at);
                    report.deletes_sent += 1;
                    sent += 1;
                }
                Version::Absent => {}
            }
        }
        drop(cached);
        let (out, len, digest) = w.finish().map_err(wio)?;
        if sent > 0 {
            job::complete(out, len, digest, seq, keys, compression, &part)?;
            let done = pending.join(format!("{seq}.fspl"));
            std::fs::rename(&part, &done).map_err(|e| SyncError::io("rename", &part, e))?;
            fspl_queue::durable::sync_dir(&pending).map_err(|e| SyncError::Queue {
                what: "sync the pending directory".into(),
                source: e,
            })?;
            o.state.next_seq = seq + 1;
            o.state.save(&sf, now)?;
            flush_pending(&pending, &outbox)?;
            report.sets_sent = 1;
        } else {
            drop(out);
            let _ = std::fs::remove_file(&part);
        }
    }
    if o.dirty || !sf.exists() {
        o.state.save(&sf, now)?;
    }

    // Receive and apply.
    progress("receiving", 70);
    let inbox = queue(&cfg.inbox, keys.identities.clone())?;
    let _inbox_lock = inbox.lock().map_err(|e| match e {
        fspl_queue::QueueError::Locked { holder, .. } => SyncError::InboxLocked {
            path: cfg.inbox.clone(),
            pid: holder,
        },
        e => SyncError::Queue {
            what: "lock the inbox".into(),
            source: e,
        },
    })?;
    let qerr = |what: &str| {
        let what = what.to_string();
        move |e| SyncError::Queue { what, source: e }
    };
    let mut ns = NextSeq::open(&inbox.nextseq_path()).map_err(qerr("read the inbox's nextseq"))?;
    loop {
        let s = fspl_queue::scan::scan(&inbox, None, None).map_err(qerr("scan the inbox"))?;
        let next = ns.value();
        let mut by_seq: BTreeMap<u64, Vec<OsString>> = BTreeMap::new();
        for j in s.jobs {
            by_seq.entry(j.seq).or_default().push(j.name);
        }
        // Copies of change sets already applied (a sender killed after
        // storing one, before noting it): identical, dropped.
        for (seq, names) in by_seq.range(..next) {
            for n in names {
                tracing::info!(seq, "dropping a copy of a change set already applied");
                let _ = std::fs::remove_file(inbox.job_path(n));
            }
        }
        let Some(mut names) = by_seq.remove(&next) else {
            if by_seq.range(next..).next().is_some() {
                report.waiting_for = Some(next);
            }
            break;
        };
        names.sort();
        progress("applying", 80);
        let refuse = |reason: String| -> SyncError {
            let moved = fspl_queue::verify::reject(
                &inbox,
                &names[0],
                Some(next),
                &fspl_queue::verify::Refusal {
                    reason: reason.clone(),
                    sender: None,
                },
            );
            match moved {
                Ok(moved) => SyncError::Refused {
                    seq: next,
                    reason,
                    moved,
                },
                Err(e) => qerr("move a refused change set aside")(e),
            }
        };
        let got = match job::receive(&inbox, &names[0], keys, &tmp) {
            Ok(r) => r,
            Err(job::Refused::Error(e)) => return Err(e),
            Err(job::Refused::Job(reason)) => return Err(refuse(reason)),
        };
        let mut payload = got.payload;
        let applied = match apply::apply(
            cfg,
            &o.root,
            &o.filter,
            &mut o.state,
            &mut payload,
            got.seq,
            opts.force,
        ) {
            Ok(a) => a,
            // Found by the apply's first pass, before anything was changed.
            Err(SyncError::Damaged(reason)) => return Err(refuse(reason)),
            Err(e) => return Err(e),
        };
        o.state.save(&sf, now_ns())?;
        for n in &names {
            let p = inbox.job_path(n);
            std::fs::remove_file(&p).map_err(|e| SyncError::io("remove", &p, e))?;
        }
        fspl_queue::durable::sync_dir(inbox.jobs_dir()).map_err(qerr("sync the inbox"))?;
        ns.set(next + 1)
            .map_err(qerr("advance the inbox's nextseq"))?;
        report.sets_received += 1;
        report.files_received += applied.files;
        report.deleted += applied.deleted;
        report.conflicts += applied.conflicts;
        report.bytes_received += applied.bytes;
        report.excluded += applied.excluded;
        if applied.skew.is_some() {
            report.skew = applied.skew;
        }
    }
    Ok(())
}

/// Put a regular file into the change set, retrying when it changes
/// while it is read (the torn copy is retracted: see
/// [`Writer::retract`]); the version sent, or None after three tries.
fn send_file(
    root: &Root,
    w: &mut Writer,
    p: &[u8],
    base: &Version,
    scanned: &Meta,
) -> std::io::Result<Option<Meta>> {
    if !matches!(scanned, Meta::File { .. }) {
        return Ok(None);
    }
    for _ in 0..3 {
        let Some(mut f) = root.open_file(p)? else {
            return Ok(None); // gone: the next round sends its deletion
        };
        let (size, mtime, mode, regular) = fstat_meta(&f)?;
        if !regular {
            return Ok(None);
        }
        let m = Meta::File { size, mtime, mode };
        let whole = w.file(p, base, &m, &mut f)?;
        let after = fstat_meta(&f)?;
        if whole && after == (size, mtime, mode, true) {
            return Ok(Some(m));
        }
        w.retract(p)?;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::warn!(
        path = %String::from_utf8_lossy(p),
        "the file kept changing while it was read: left for the next round"
    );
    Ok(None)
}

fn remove_temps(root: &Path, temps: &[Vec<u8>]) {
    use std::os::unix::ffi::OsStrExt;
    for t in temps {
        let _ = std::fs::remove_file(root.join(std::ffi::OsStr::from_bytes(t)));
    }
}
