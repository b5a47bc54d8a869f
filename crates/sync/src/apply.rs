//! Applying a change set to the tree.
//!
//! For each change (path, the sender's base, the new version), the path as
//! it is here now decides:
//!
//! - already the new version: nothing to do;
//! - still the sender's base: the change is applied (a fast-forward);
//! - else both sides changed it since they last agreed: a **conflict**.
//!   The newer time wins (a file's or link's mtime; a deletion's time is
//!   when it was noticed); on a tie a modification beats a deletion, and
//!   between two modifications the side whose name sorts last wins (both
//!   sides decide alike). The loser is kept beside the winner as
//!   `NAME.sync-conflict-YYYYMMDD-HHMMSS-ORIGIN.EXT` (its mtime, and the
//!   side it came from), so no version is ever lost; both sides name it
//!   alike.
//!
//! Every file lands atomically (temporary name, fsync, rename, fsync of
//! the directory); a directory that still holds entries is never removed.

use std::io::Read;

use crate::changeset::{self, Change, Item, Manifest};
use crate::fsops::{Root, TEMP_PREFIX, Temp};
use crate::meta::{Meta, Version, within};
use crate::scan::{Filter, PRIVATE_DIR};
use crate::state::State;
use crate::{SyncConfig, SyncError, now_ns};

/// What applying one change set did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub conflicts: u64,
    /// Entries skipped because they are excluded here.
    pub excluded: u64,
    /// The peer's clock is this many seconds ahead (beyond max_skew).
    pub skew: Option<String>,
}

/// The conflict copy's name of `rel` for a version of `time` (ns) made
/// by `origin`: `NAME.sync-conflict-YYYYMMDD-HHMMSS-ORIGIN.EXT`.
pub fn conflict_name(rel: &[u8], time: i64, origin: &str) -> Vec<u8> {
    let (dir, name) = match rel.iter().rposition(|&c| c == b'/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    let stamp = fspl_format::rfc3339_utc(fspl_format::Ctime {
        secs: time.div_euclid(1_000_000_000),
        nanos: 0,
    });
    // 2026-12-01T19:14:37Z -> 20261201-191437
    let digits: String = stamp.chars().filter(|c| c.is_ascii_digit()).collect();
    let stamp = if digits.len() >= 14 {
        format!("{}-{}", &digits[..8], &digits[8..14])
    } else {
        digits
    };
    let (stem, ext) = match name.iter().rposition(|&c| c == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(stem);
    out.extend_from_slice(format!(".sync-conflict-{stamp}-{origin}").as_bytes());
    out.extend_from_slice(ext);
    out
}

/// A change that must be refused for what its path is: the sync's own
/// directory, a temporary name, or under a link the set itself makes.
fn forbidden(c: &Change, links: &[Vec<u8>]) -> Option<String> {
    let p = &c.path;
    if within(p, PRIVATE_DIR.as_bytes()) {
        return Some("a path in the sync's own directory".into());
    }
    let name = p.rsplit(|&x| x == b'/').next().unwrap_or(p);
    if name.starts_with(TEMP_PREFIX.as_bytes()) {
        return Some("a temporary file's name".into());
    }
    if links.iter().any(|l| l != p && within(p, l)) {
        return Some("a path under a symbolic link the change set makes".into());
    }
    None
}

/// How many deletions are too many: more than `share` of `total`, once
/// there are at least 10 of them (net of additions, so that a rename of a
/// large directory passes).
pub fn too_many_deletes(deletes: usize, adds: usize, total: usize, share: f64) -> bool {
    let net = deletes.saturating_sub(adds);
    deletes >= 10 && net as f64 > share * total.max(1) as f64
}

/// Check change set `seq` (in `payload`) and apply it: first a pass that
/// reads everything and refuses the whole set when any entry is hostile,
/// is addressed to another sync, or deletes too much; then the changes.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    cfg: &SyncConfig,
    root: &Root,
    filter: &Filter,
    state: &mut State,
    payload: &mut crate::job::Payload,
    seq: u64,
    force: bool,
) -> Result<Applied, SyncError> {
    let seqd = |e: SyncError| match e {
        SyncError::Hostile { source, .. } => SyncError::Hostile { seq, source },
        e => e,
    };
    let hostile = |m: String| SyncError::Hostile {
        seq,
        source: changeset::ReadError::Bad(m),
    };
    // A change set lists a directory's entries together: each is reached
    // from the one before, not walked to from the root.
    let _cached = root.cache_dirs();
    // Pass 1: everything checked before anything is touched.
    let mut out = Applied::default();
    let mut links: Vec<Vec<u8>> = Vec::new();
    let (mut deletes, mut adds) = (0usize, 0usize);
    let mut manifest: Option<Manifest> = None;
    // Changes taken back by the sender (by their index among the changes).
    let mut retracted: std::collections::HashSet<usize> = Default::default();
    let mut index = 0usize;
    payload.pass(|r| changeset::read(r, |item| {
        match item {
            Item::Retract => {
                if let Some(i) = index.checked_sub(1) {
                    retracted.insert(i);
                }
            }
            Item::Manifest(m) => {
                if m.from != cfg.peer || m.to != cfg.name {
                    return Err(hostile(format!(
                        "it is from {:?} to {:?}, but this sync takes change sets from {:?} to {:?}",
                        m.from, m.to, cfg.peer, cfg.name
                    )));
                }
                if m.seq != seq {
                    return Err(hostile(format!("its manifest says seq {}, its job {seq}", m.seq)));
                }
                manifest = Some(m);
            }
            Item::Change(c, _) => {
                if let Some(why) = forbidden(&c, &links) {
                    return Err(hostile(format!(
                        "entry {:?}: {why}",
                        String::from_utf8_lossy(&c.path)
                    )));
                }
                match &c.new {
                    Version::Present(Meta::Link { .. }) => links.push(c.path.clone()),
                    Version::Deleted { .. } => {
                        if matches!(root.lstat(&c.path), Ok(Some(_))) {
                            deletes += 1;
                        }
                    }
                    _ => adds += 1,
                }
                index += 1;
            }
        }
        Ok(())
    }))
    .map_err(seqd)?;
    let Some(m) = manifest else {
        return Err(hostile("no manifest".into()));
    };
    let skew_ns = m.created_ns.saturating_sub(now_ns());
    if skew_ns > cfg.max_skew as i64 * 1_000_000_000 {
        let s = format!(
            "{}'s clock is {} s ahead of ours (change set seq {seq} was made in our future; more than max_skew = {} s): conflicts are decided by mtimes, check the clocks",
            cfg.peer,
            skew_ns / 1_000_000_000,
            cfg.max_skew
        );
        tracing::warn!("{s}");
        out.skew = Some(s);
    }
    let total = state.entries.len();
    if !force && too_many_deletes(deletes, adds, total, cfg.max_delete) {
        return Err(SyncError::TooManyDeletes {
            what: format!("change set seq {seq} from {}", cfg.peer),
            deletes,
            total,
            share: (cfg.max_delete * 100.0).round() as u32,
        });
    }
    // Pass 2: the changes, in order (small files in batches, see
    // [`Batch`]); then
    // the directories they changed are synced, before the caller saves
    // the state that records them.
    Batch::with(root, |batch| {
        payload
            .pass(|r| {
                let mut index = 0usize;
                changeset::read(r, |item| {
                    if let Item::Change(c, data) = item {
                        if !retracted.contains(&index) {
                            one(cfg, root, filter, state, &c, data, &mut out, batch)?;
                        }
                        index += 1;
                    }
                    Ok(())
                })
            })
            .map_err(seqd)?;
        batch.flush(root)
    })?;
    root.sync_dirs()
        .map_err(|e| SyncError::io("sync the directories of", &root.path, e))?;
    Ok(out)
}

fn err(p: &[u8], e: std::io::Error) -> SyncError {
    SyncError::Apply {
        path: String::from_utf8_lossy(p).into_owned(),
        source: e,
    }
}

/// Files up to this size are written in batches.
const SMALL: u64 = 256 * 1024;
/// A batch holds at most this many files...
const BATCH_FILES: usize = 4096;
/// ... and this many bytes.
const BATCH_BYTES: u64 = 64 << 20;

/// A batch also ends at this many directories (each is held open until
/// its files are in place).
const BATCH_DIRS: usize = 256;

type Temps = Vec<(Vec<u8>, Temp)>;

/// Small files written under temporary names, not yet in place: one
/// `syncfs` makes them all durable, then each is renamed into place (one
/// flush instead of one fsync per file; every file still lands whole and
/// durable before its name appears). A full batch is committed (flushed,
/// then renamed) by a thread of its own while the next one is written;
/// [`Batch::flush`] hands over what is there and waits until every batch
/// is in place, before anything else changes the tree.
struct Batch {
    temps: Temps,
    bytes: u64,
    dirs: usize,
    tx: std::sync::mpsc::SyncSender<Temps>,
    rx: std::sync::mpsc::Receiver<Result<(), SyncError>>,
    outstanding: usize,
}

/// Flush a batch's temporaries, then put each in place.
fn commit(root: &Root, temps: Temps) -> Result<(), SyncError> {
    root.syncfs()
        .map_err(|e| SyncError::io("sync the file system of", &root.path, e))?;
    for (p, t) in temps {
        root.put_in_place(&p, &t).map_err(|e| err(&p, e))?;
    }
    Ok(())
}

impl Batch {
    /// Run `f` with a batch whose committer runs beside it; every batch
    /// handed over is committed (or failed) before this returns.
    fn with<T>(
        root: &Root,
        f: impl FnOnce(&mut Batch) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        std::thread::scope(|scope| {
            // A rendezvous: handing over a batch waits while the one
            // before is committed.
            let (tx, jobs) = std::sync::mpsc::sync_channel::<Temps>(0);
            let (done, rx) = std::sync::mpsc::channel();
            let committer = std::thread::Builder::new()
                .name("fspl-sync-commit".into())
                .spawn_scoped(scope, move || {
                    for temps in jobs {
                        if done.send(commit(root, temps)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| SyncError::io("start a thread to commit files in", &root.path, e))?;
            let mut batch = Batch {
                temps: Vec::new(),
                bytes: 0,
                dirs: 0,
                tx,
                rx,
                outstanding: 0,
            };
            let r = f(&mut batch);
            // What was handed over is waited for, even after an error
            // (what was not stays under temporary names, removed by the
            // next round).
            let waited = batch.wait();
            drop(batch);
            let _ = committer.join();
            let v = r?;
            waited?;
            Ok(v)
        })
    }

    fn add(
        &mut self,
        root: &Root,
        p: &[u8],
        data: &mut dyn Read,
        size: u64,
        mode: u32,
        mtime: i64,
    ) -> Result<(), SyncError> {
        let tmp = root
            .write_temp(p, data, size, mode, mtime, false)
            .map_err(|e| err(p, e))?;
        if !self.temps.last().is_some_and(|(_, t)| t.same_dir(&tmp)) {
            self.dirs += 1;
        }
        self.temps.push((p.to_vec(), tmp));
        self.bytes += size;
        if self.temps.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES || self.dirs >= BATCH_DIRS {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Hand the batch to the committer (waiting while it commits the one
    /// before); an error it already reported is returned.
    fn hand_over(&mut self) -> Result<(), SyncError> {
        while let Ok(r) = self.rx.try_recv() {
            self.outstanding -= 1;
            r?;
        }
        if self.temps.is_empty() {
            return Ok(());
        }
        let temps = std::mem::take(&mut self.temps);
        self.bytes = 0;
        self.dirs = 0;
        self.tx
            .send(temps)
            .map_err(|_| SyncError::Job("the thread committing files stopped".into()))?;
        self.outstanding += 1;
        Ok(())
    }

    /// Wait until every batch handed over is in place.
    fn wait(&mut self) -> Result<(), SyncError> {
        let mut first = None;
        while self.outstanding > 0 {
            let r = self.rx.recv().unwrap_or_else(|_| {
                Err(SyncError::Job("the thread committing files stopped".into()))
            });
            self.outstanding -= 1;
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Everything written so far in place.
    fn flush(&mut self, _root: &Root) -> Result<(), SyncError> {
        self.hand_over()?;
        self.wait()
    }
}

/// Apply one change.
#[allow(clippy::too_many_arguments)]
fn one(
    cfg: &SyncConfig,
    root: &Root,
    filter: &Filter,
    state: &mut State,
    c: &Change,
    data: &mut dyn Read,
    out: &mut Applied,
    batch: &mut Batch,
) -> Result<(), SyncError> {
    let p = c.path.as_slice();
    let new_is_dir = matches!(c.new, Version::Present(Meta::Dir { .. }));
    if filter.excluded(p, new_is_dir) {
        out.excluded += 1;
        return Ok(());
    }
    let local = match root.lstat(p).map_err(|e| err(p, e))? {
        Some(m) => Version::Present(m),
        None => Version::Absent,
    };
    // Already what it becomes.
    if local.same(&c.new) {
        record(state, p, &c.new);
        return Ok(());
    }
    let at_base = match (&c.base, &local) {
        (Version::Present(b), Version::Present(l)) => b.same(l),
        (Version::Present(_), _) | (_, Version::Present(_)) => false,
        _ => true,
    };
    if at_base {
        if let Version::Present(Meta::File { size, mode, mtime }) = c.new
            && size <= SMALL
            && !matches!(local, Version::Present(Meta::Dir { .. }))
        {
            batch.add(root, p, data, size, mode, mtime)?;
            out.files += 1;
            out.bytes += size;
            record(state, p, &c.new);
            return Ok(());
        }
        if !new_is_dir {
            batch.flush(root)?;
        }
        install(cfg, root, p, &local, &c.new, data, out)?;
        record(state, p, &c.new);
        return Ok(());
    }
    // A conflict: both sides changed the path since they last agreed.
    batch.flush(root)?;
    let local_time = match &local {
        Version::Present(m) => m.time(),
        _ => state.deleted.get(p).copied().unwrap_or_else(now_ns),
    };
    let incoming_time = match &c.new {
        Version::Present(m) => m.time(),
        Version::Deleted { at } => *at,
        Version::Absent => 0,
    };
    let incoming_wins = if incoming_time != local_time {
        incoming_time > local_time
    } else {
        match (c.new.meta().is_some(), local.meta().is_some()) {
            (true, false) => true,
            (false, true) => false,
            _ => cfg.peer > cfg.name,
        }
    };
    tracing::info!(
        path = %String::from_utf8_lossy(p),
        winner = if incoming_wins { cfg.peer.as_str() } else { cfg.name.as_str() },
        "conflict: changed on both sides"
    );
    if incoming_wins {
        // Keep the local version beside it.
        match &local {
            Version::Present(Meta::File { .. } | Meta::Link { .. }) => {
                let to = free_name(root, conflict_name(p, local_time, &cfg.name))?;
                root.rename(p, &to).map_err(|e| err(p, e))?;
                out.conflicts += 1;
            }
            // A directory against a file: the directory (with all it
            // holds) moves aside, unless it is empty.
            Version::Present(Meta::Dir { .. })
                if c.new.meta().is_some()
                    && !new_is_dir
                    && !root.remove(p).map_err(|e| err(p, e))? =>
            {
                let to = free_name(root, conflict_name(p, local_time, &cfg.name))?;
                root.rename(p, &to).map_err(|e| err(p, e))?;
                out.conflicts += 1;
            }
            _ => {}
        }
        let now = root.lstat(p).map_err(|e| err(p, e))?;
        let now = now.map(Version::Present).unwrap_or(Version::Absent);
        install(cfg, root, p, &now, &c.new, data, out)?;
        record(state, p, &c.new);
    } else {
        // Keep the incoming version beside the local one.
        match &c.new {
            Version::Present(m @ Meta::File { size, mode, mtime }) => {
                let to = conflict_name(p, *mtime, &cfg.peer);
                let there = root.lstat(&to).map_err(|e| err(&to, e))?;
                if !there.as_ref().is_some_and(|t| t.same(m)) {
                    let to = free_name(root, to)?;
                    root.write_file(&to, data, *size, *mode, *mtime)
                        .map_err(|e| err(&to, e))?;
                }
                out.conflicts += 1;
            }
            Version::Present(Meta::Link { target, mtime }) => {
                let to = free_name(root, conflict_name(p, *mtime, &cfg.peer))?;
                root.symlink(&to, target, *mtime).map_err(|e| err(&to, e))?;
                out.conflicts += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `name`, or `name` with `.1`, `.2`... before its extension when taken.
fn free_name(root: &Root, name: Vec<u8>) -> Result<Vec<u8>, SyncError> {
    if root.lstat(&name).map_err(|e| err(&name, e))?.is_none() {
        return Ok(name);
    }
    for i in 1..1000 {
        let mut n = name.clone();
        n.extend_from_slice(format!(".{i}").as_bytes());
        if root.lstat(&n).map_err(|e| err(&n, e))?.is_none() {
            return Ok(n);
        }
    }
    Err(err(
        &name,
        std::io::Error::other("too many conflict copies"),
    ))
}

/// The state after a path became `v`.
fn record(state: &mut State, p: &[u8], v: &Version) {
    match v {
        Version::Present(m) => state.set(p, m.clone()),
        Version::Deleted { at } => state.delete(p, *at),
        Version::Absent => state.forget(p),
    }
}

/// Make `p` (now `local`) the version `new`.
fn install(
    cfg: &SyncConfig,
    root: &Root,
    p: &[u8],
    local: &Version,
    new: &Version,
    data: &mut dyn Read,
    out: &mut Applied,
) -> Result<(), SyncError> {
    let _ = cfg;
    // Something of another type in the way: a file or link goes (it was
    // the base, or it lost); a directory goes only when empty.
    let in_the_way = match (local, new) {
        (Version::Present(Meta::Dir { .. }), Version::Present(Meta::Dir { .. })) => false,
        (Version::Present(Meta::Dir { .. }), Version::Present(_)) => true,
        (Version::Present(_), Version::Present(Meta::Dir { .. })) => true,
        _ => false,
    };
    if in_the_way && !root.remove(p).map_err(|e| err(p, e))? {
        // A directory with entries against a file or link: it moves aside.
        let to = free_name(root, conflict_name(p, now_ns(), &cfg.name))?;
        root.rename(p, &to).map_err(|e| err(p, e))?;
        out.conflicts += 1;
    }
    match new {
        Version::Present(Meta::File { size, mtime, mode }) => {
            root.write_file(p, data, *size, *mode, *mtime)
                .map_err(|e| err(p, e))?;
            out.files += 1;
            out.bytes += size;
        }
        Version::Present(Meta::Dir { mode }) => root.mkdir(p, *mode).map_err(|e| err(p, e))?,
        Version::Present(Meta::Link { target, mtime }) => {
            root.symlink(p, target, *mtime).map_err(|e| err(p, e))?;
            out.files += 1;
        }
        Version::Deleted { .. } | Version::Absent => {
            if local.meta().is_some() {
                if root.remove(p).map_err(|e| err(p, e))? {
                    out.deleted += 1;
                } else {
                    // A directory that still holds entries (a file made
                    // in it here): it stays, and goes back to the peer.
                    tracing::info!(
                        path = %String::from_utf8_lossy(p),
                        "directory deleted by the peer still holds entries here: kept"
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_follow_syncthing() {
        let t = 1_764_616_477_000_000_000; // 2025-12-01T19:14:37Z
        assert_eq!(
            conflict_name(b"dir/report.txt", t, "laptop"),
            b"dir/report.sync-conflict-20251201-191437-laptop.txt".to_vec()
        );
        assert_eq!(
            conflict_name(b"Makefile", t, "b"),
            b"Makefile.sync-conflict-20251201-191437-b".to_vec()
        );
        assert_eq!(
            conflict_name(b".bashrc", t, "b"),
            b".bashrc.sync-conflict-20251201-191437-b".to_vec()
        );
    }

    #[test]
    fn deletion_guard() {
        assert!(!too_many_deletes(9, 0, 10, 0.5));
        assert!(too_many_deletes(90, 0, 100, 0.5));
        assert!(!too_many_deletes(90, 90, 100, 0.5)); // a rename
        assert!(!too_many_deletes(40, 0, 100, 0.5));
        assert!(too_many_deletes(40, 0, 100, 0.3));
    }
}
