//! Filesystem events: one inotify watcher (through `notify`) for every
//! queue's `jobs/` directory; an event for a job-named file wakes the task
//! of that queue.
//!
//! A watched directory that goes away (removed, or renamed: inotify then
//! drops or moves its watch) is watched again when it comes back: until
//! then its nearest existing ancestor is watched instead, and each entry
//! created there is a reason to look again. Once the directory is back and
//! its queue complete (the lock file, which `queue-init` creates last,
//! exists), the watch is re-armed and the task woken, for the jobs that
//! arrived meanwhile, and told that its directory is back (which ends a
//! backoff or error state, as `fspl status --clear` does). [`Rearm`]
//! watches a directory afresh on demand (`fspl status --clear`, a reload),
//! for changes no event reports (a parent directory renamed away).
//!
//! The `notify` event thread calls our handler, and `watch`/`unwatch` wait
//! for that thread; so re-arming runs on a thread of its own, and the
//! handler never waits for the lock the watcher is held under.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use fspl_queue::{EntryKind, classify};
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// One watched directory (a queue's `jobs/`).
struct Target {
    wake: Arc<Notify>,
    /// Told when the directory has come back after going away (ends the
    /// task's backoff or error state).
    returned: Arc<Notify>,
    /// A file that exists once the queue is complete (its lock file): the
    /// task is woken after a re-arm only then.
    ready: Option<PathBuf>,
}

#[derive(Default)]
struct Routes {
    targets: HashMap<PathBuf, Target>,
    /// Targets whose own watch is in place.
    armed: HashSet<PathBuf>,
    /// Targets found missing, not back yet.
    missing: HashSet<PathBuf>,
    /// Stand-in watches: an existing ancestor of a target that is missing
    /// (or the queue directory of one not complete yet) -> those targets.
    standins: HashMap<PathBuf, HashSet<PathBuf>>,
}

enum Msg {
    /// Watch a target again; `forced`: asked for (clear, reload), not
    /// caused by the directory going away.
    Arm {
        target: PathBuf,
        forced: bool,
    },
    Quit,
}

type Inner = Arc<Mutex<Option<RecommendedWatcher>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Watcher {
    inner: Inner,
    routes: Arc<Mutex<Routes>>,
    tx: mpsc::Sender<Msg>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// Asks the watcher to watch a directory afresh (a cheap handle for the
/// control socket and reloads).
#[derive(Clone)]
pub struct Rearm(mpsc::Sender<Msg>);

impl Rearm {
    /// Watch `dir` (a key returned by [`Watcher::watch`]) afresh, and wake
    /// its task once that is done.
    pub fn rearm(&self, dir: &Path) {
        let _ = self.0.send(Msg::Arm {
            target: dir.to_path_buf(),
            forced: true,
        });
    }
}

/// What an event means for the targets: the paths to re-arm, the tasks to
/// wake.
fn route(routes: &mut Routes, ev: &notify::Event) -> (Vec<PathBuf>, Vec<Arc<Notify>>) {
    let mut rearm = Vec::new();
    let mut wake = Vec::new();
    let gone = matches!(
        ev.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
    );
    let appeared = matches!(
        ev.kind,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
    );
    for p in &ev.paths {
        if gone {
            // A directory went away: notify drops the watches of a removed
            // one and of everything under it (a renamed one's follow it
            // elsewhere). Targets and stand-ins there are to be watched
            // anew.
            let under: Vec<PathBuf> = routes
                .targets
                .keys()
                .filter(|t| t.starts_with(p))
                .cloned()
                .collect();
            for t in under {
                routes.armed.remove(&t);
                rearm.push(t);
            }
            let stale: Vec<PathBuf> = routes
                .standins
                .keys()
                .filter(|s| s.starts_with(p))
                .cloned()
                .collect();
            for s in stale {
                if let Some(ts) = routes.standins.remove(&s) {
                    rearm.extend(ts);
                }
            }
        }
        let Some(dir) = p.parent() else { continue };
        if appeared && let Some(ts) = routes.standins.get(dir) {
            // Something appeared where a missing target is awaited: maybe
            // the next directory on its way, or the queue's lock file.
            rearm.extend(ts.iter().cloned());
        }
        if matches!(ev.kind, EventKind::Access(_) | EventKind::Remove(_)) {
            continue;
        }
        let Some(name) = p.file_name() else { continue };
        if classify(name) != EntryKind::Job || !routes.armed.contains(dir) {
            continue;
        }
        if let Some(t) = routes.targets.get(dir) {
            wake.push(t.wake.clone());
        }
    }
    rearm.sort();
    rearm.dedup();
    (rearm, wake)
}

impl Watcher {
    /// A watcher, or one that watches nothing when the platform has no
    /// event support (every queue then polls).
    pub fn new() -> Watcher {
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let (r, etx) = (routes.clone(), tx.clone());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let (rearm, wake) = route(&mut lock(&r), &ev);
            for n in wake {
                n.notify_one();
            }
            for target in rearm {
                let _ = etx.send(Msg::Arm {
                    target,
                    forced: false,
                });
            }
        })
        .map_err(|e| {
            tracing::warn!(
                "filesystem events unavailable; every queue polls: {}",
                why_no_events(&e)
            )
        })
        .ok();
        let available = watcher.is_some();
        let inner: Inner = Arc::new(Mutex::new(watcher));
        let worker = available.then(|| {
            let (inner, routes) = (inner.clone(), routes.clone());
            std::thread::Builder::new()
                .name("fspl-watch".into())
                .spawn(move || {
                    while let Ok(Msg::Arm { target, forced }) = rx.recv() {
                        arm(&inner, &routes, &target, forced);
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start the re-watch thread"))
                .ok()
        });
        Watcher {
            inner,
            routes,
            tx,
            worker: worker.flatten(),
        }
    }

    /// A handle that re-arms watches from elsewhere.
    pub fn rearmer(&self) -> Rearm {
        Rearm(self.tx.clone())
    }

    /// Wake `notify` when a job appears in `dir`. When the directory has
    /// gone away and come back (and `ready`, the queue's lock file, exists),
    /// wake `notify` and tell `returned`. Returns the key to unwatch or
    /// re-arm it with, or None when events are not available for it (the
    /// caller then polls).
    pub fn watch(
        &mut self,
        dir: &Path,
        ready: Option<PathBuf>,
        notify: Arc<Notify>,
        returned: Arc<Notify>,
    ) -> Option<PathBuf> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut inner = lock(&self.inner);
        let w = inner.as_mut()?;
        match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                let mut r = lock(&self.routes);
                r.targets.insert(
                    dir.clone(),
                    Target {
                        wake: notify,
                        returned,
                        ready,
                    },
                );
                r.armed.insert(dir.clone());
                Some(dir)
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch for filesystem events; polling instead: {}", why_unwatchable(&e));
                None
            }
        }
    }

    /// Stop watching `dir` (a key returned by [`Watcher::watch`]).
    pub fn unwatch(&mut self, dir: &Path) {
        let mut inner = lock(&self.inner);
        let drop_standins = {
            let mut r = lock(&self.routes);
            r.targets.remove(dir);
            r.armed.remove(dir);
            r.missing.remove(dir);
            set_standin(&mut r, dir, None)
        };
        if let Some(w) = inner.as_mut() {
            let _ = w.unwatch(dir);
            for s in drop_standins {
                let _ = w.unwatch(&s);
            }
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Quit);
        // Stops notify's thread and drops the handler (and its sender).
        drop(lock(&self.inner).take());
        if let Some(t) = self.worker.take() {
            let _ = t.join();
        }
    }
}

/// Make `standin` (or nothing) the one stand-in watch of `target`; returns
/// the stand-ins no target needs any more (to unwatch, unless they are
/// targets themselves).
fn set_standin(r: &mut Routes, target: &Path, standin: Option<&Path>) -> Vec<PathBuf> {
    let mut unused = Vec::new();
    r.standins.retain(|s, ts| {
        if Some(s.as_path()) != standin {
            ts.remove(target);
        }
        if ts.is_empty() {
            unused.push(s.clone());
            false
        } else {
            true
        }
    });
    if let Some(s) = standin {
        r.standins
            .entry(s.to_path_buf())
            .or_default()
            .insert(target.to_path_buf());
        unused.retain(|u| u != s);
    }
    unused.retain(|u| !r.targets.contains_key(u));
    unused
}

/// Watch `target` again: its own watch when it exists (then wake its task,
/// and end its backoff or error state, once its queue is complete), else a
/// stand-in on its nearest existing ancestor. Runs on the re-watch thread.
fn arm(inner: &Inner, routes: &Arc<Mutex<Routes>>, target: &Path, forced: bool) {
    let mut guard = lock(inner);
    let Some(w) = guard.as_mut() else { return };
    // A few rounds at most: each one follows a directory that appeared
    // between a look and a watch.
    for _ in 0..16 {
        let ready = match lock(routes).targets.get(target) {
            Some(t) => t.ready.clone(),
            // Unwatched meanwhile (job removed or changed).
            None => return,
        };
        let standin: PathBuf;
        let waiting_for_ready = target.is_dir();
        if waiting_for_ready {
            // Start afresh: a watch notify still holds for this path may
            // belong to a directory renamed away.
            let _ = w.unwatch(target);
            if let Err(e) = w.watch(target, RecursiveMode::NonRecursive) {
                if target.is_dir() {
                    tracing::warn!(dir = %target.display(), "cannot watch for filesystem events again; the safety rescan will find its jobs: {}", why_unwatchable(&e));
                    return;
                }
                continue;
            }
            lock(routes).armed.insert(target.to_path_buf());
            let complete = ready.as_ref().is_none_or(|r| r.exists());
            match target.parent().filter(|_| !complete) {
                None => {
                    let unused = set_standin(&mut lock(routes), target, None);
                    for u in unused {
                        let _ = w.unwatch(&u);
                    }
                    // Back after going away (not just watched afresh).
                    let back = lock(routes).missing.remove(target) || !forced;
                    if back {
                        tracing::info!(dir = %target.display(), "jobs directory is back; watching it again");
                    } else {
                        tracing::debug!(dir = %target.display(), "watching afresh");
                    }
                    if let Some(t) = lock(routes).targets.get(target) {
                        t.wake.notify_one();
                        if back {
                            t.returned.notify_one();
                        }
                    }
                    return;
                }
                // Wait for the queue to be complete: watch its directory.
                Some(q) => standin = q.to_path_buf(),
            }
        } else {
            lock(routes).armed.remove(target);
            if lock(routes).missing.insert(target.to_path_buf()) {
                tracing::info!(dir = %target.display(), "jobs directory is gone; it will be watched again when it comes back");
            }
            let mut a = target.parent();
            while let Some(d) = a {
                if d.is_dir() {
                    break;
                }
                a = d.parent();
            }
            let Some(a) = a else { return };
            standin = a.to_path_buf();
        }
        // Already watched as a stand-in (for this target or another): a
        // stand-in that went away was dropped from `standins` by `route`.
        let watching = lock(routes).standins.contains_key(&standin);
        if !watching {
            // A watch notify may still hold for this path follows a
            // directory renamed away: drop it first.
            if !lock(routes).targets.contains_key(&standin) {
                let _ = w.unwatch(&standin);
            }
            if w.watch(&standin, RecursiveMode::NonRecursive).is_err() {
                // Gone again already: look again.
                continue;
            }
        }
        let unused = set_standin(&mut lock(routes), target, Some(&standin));
        for u in unused {
            let _ = w.unwatch(&u);
        }
        // What we wait for may have appeared before the stand-in watch was
        // in place: then go on at once.
        let next_exists = if waiting_for_ready {
            // The lock file came, or the directory went again.
            ready.as_ref().is_none_or(|r| r.exists()) || !target.is_dir()
        } else {
            // The next directory on the way came (or all of them).
            target
                .strip_prefix(&standin)
                .ok()
                .and_then(|rest| rest.components().next())
                .is_some_and(|c| standin.join(c).is_dir())
        };
        if !next_exists {
            return;
        }
    }
}

/// A kernel setting under /proc/sys, for messages.
fn sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The soft limit on open files, and how many are open now (None: cannot
/// tell).
fn open_files() -> (Option<u64>, Option<u64>) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct given.
    let limit = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0)
        // rlim_t is u64 here, narrower on some 32-bit targets.
        .then(|| {
            #[allow(clippy::unnecessary_cast)]
            let n = l.rlim_cur as u64;
            n
        });
    // Reading the directory takes a descriptor of its own: not counted.
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| (d.count() as u64).saturating_sub(1));
    (limit, open)
}

/// What ran out when inotify (or the descriptors `notify` needs beside
/// it) could not be had with EMFILE: this process's open files, or the
/// user's inotify instances. Told apart by trying `inotify_init1` once
/// more: it fails with EMFILE while a descriptor is free only when the
/// instances are used up.
#[derive(Debug, PartialEq, Eq)]
enum Emfile {
    OpenFiles {
        open: Option<u64>,
        limit: Option<u64>,
    },
    Instances,
}

fn which_emfile() -> Emfile {
    // SAFETY: inotify_init1 has no memory arguments; a descriptor it
    // returns is closed at once.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd) };
    }
    let (limit, open) = open_files();
    let free = match (limit, open) {
        (Some(l), Some(o)) => l.saturating_sub(o),
        // Cannot even read /proc/self/fd: out of descriptors.
        _ => 0,
    };
    if fd < 0 && errno == Some(libc::EMFILE) && free > 0 {
        Emfile::Instances
    } else {
        Emfile::OpenFiles { open, limit }
    }
}

/// Why no watcher could be made (inotify_init, or notify's epoll and
/// eventfd), and what to raise.
fn why_no_events(e: &notify::Error) -> String {
    let errno = match &e.kind {
        notify::ErrorKind::Io(io) => io.raw_os_error(),
        notify::ErrorKind::MaxFilesWatch => Some(libc::ENOSPC),
        _ => None,
    };
    match errno {
        Some(libc::EMFILE) => describe_emfile(&which_emfile()),
        Some(libc::ENFILE) => format!(
            "the system is out of file descriptors (ENFILE: {e}); raise fs.file-max (now {}) with sysctl, or find what holds them",
            sysctl("fs.file-max")
        ),
        Some(libc::ENOSPC) => why_unwatchable(e),
        Some(libc::ENOMEM) => format!("the kernel is out of memory for inotify (ENOMEM: {e})"),
        Some(libc::ENOSYS) => "the kernel has no inotify (ENOSYS)".into(),
        _ => e.to_string(),
    }
}

fn describe_emfile(which: &Emfile) -> String {
    match which {
        Emfile::OpenFiles { open, limit } => {
            let how_many = match (open, limit) {
                (Some(o), Some(l)) => format!("{o} open, RLIMIT_NOFILE is {l}"),
                // Not even /proc/self/fd could be opened.
                (None, Some(l)) => format!("all {l} that RLIMIT_NOFILE allows are open"),
                _ => "RLIMIT_NOFILE reached".into(),
            };
            format!(
                "this process is out of file descriptors (EMFILE: {how_many}); raise the limit: LimitNOFILE= in the systemd unit, or ulimit -n where the daemon is started"
            )
        }
        Emfile::Instances => {
            let now = sysctl("fs.inotify.max_user_instances");
            let more = now.parse::<u64>().map(|n| (n * 2).max(256)).unwrap_or(1024);
            format!(
                "this user has as many inotify instances as the kernel allows (EMFILE from inotify_init; fs.inotify.max_user_instances = {now}); raise it: sysctl -w fs.inotify.max_user_instances={more}, and in /etc/sysctl.d/ to keep it"
            )
        }
    }
}

/// Why one directory could not be watched, and what to raise when a limit
/// is the cause.
fn why_unwatchable(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            let now = sysctl("fs.inotify.max_user_watches");
            let more = now
                .parse::<u64>()
                .map(|n| (n * 2).max(65536))
                .unwrap_or(524288);
            format!(
                "this user has as many inotify watches as the kernel allows (ENOSPC from inotify_add_watch; fs.inotify.max_user_watches = {now}); raise it: sysctl -w fs.inotify.max_user_watches={more}, and in /etc/sysctl.d/ to keep it"
            )
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            describe_emfile(&which_emfile())
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_named_with_the_setting_to_raise() {
        let m = why_unwatchable(&notify::Error::new(notify::ErrorKind::MaxFilesWatch));
        assert!(
            m.contains("ENOSPC") && m.contains("sysctl -w fs.inotify.max_user_watches="),
            "{m}"
        );
        let m = describe_emfile(&Emfile::Instances);
        assert!(
            m.contains("fs.inotify.max_user_instances = ")
                && m.contains("sysctl -w fs.inotify.max_user_instances="),
            "{m}"
        );
        let m = describe_emfile(&Emfile::OpenFiles {
            open: Some(7),
            limit: Some(8),
        });
        assert!(
            m.contains("7 open, RLIMIT_NOFILE is 8") && m.contains("LimitNOFILE="),
            "{m}"
        );
        let m = why_no_events(&notify::Error::io(std::io::Error::from_raw_os_error(
            libc::ENFILE,
        )));
        assert!(m.contains("fs.file-max"), "{m}");
    }
}
