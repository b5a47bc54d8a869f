//! Filesystem events: one inotify watcher (through `notify`) for every
//! queue's `jobs/` directory; an event for a job-named file wakes the task
//! of that queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fspl_queue::{EntryKind, classify};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

type Routes = Arc<Mutex<HashMap<PathBuf, Arc<Notify>>>>;

pub struct Watcher {
    inner: Option<RecommendedWatcher>,
    routes: Routes,
}

impl Watcher {
    /// A watcher, or one that watches nothing when the platform has no
    /// event support (every queue then polls).
    pub fn new() -> Watcher {
        let routes: Routes = Arc::default();
        let r = routes.clone();
        let inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Remove(_)) {
                return;
            }
            let Ok(routes) = r.lock() else { return };
            for p in &ev.paths {
                let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                    continue;
                };
                if classify(name) != EntryKind::Job {
                    continue;
                }
                if let Some(n) = routes.get(dir) {
                    n.notify_one();
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "filesystem events unavailable; every queue polls"))
        .ok();
        Watcher { inner, routes }
    }

    /// Wake `notify` when a job appears in `dir`. Returns false when events
    /// are not available for it (the caller then polls).
    pub fn watch(&mut self, dir: &Path, notify: Arc<Notify>) -> bool {
        let Some(w) = self.inner.as_mut() else {
            return false;
        };
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                if let Ok(mut r) = self.routes.lock() {
                    r.insert(dir, notify);
                }
                true
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for filesystem events; polling instead");
                false
            }
        }
    }

    pub fn unwatch(&mut self, dir: &Path) {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if let Some(w) = self.inner.as_mut() {
            let _ = w.unwatch(&dir);
        }
        if let Ok(mut r) = self.routes.lock() {
            r.remove(&dir);
        }
    }
}

impl Default for Watcher {
    fn default() -> Self {
        Watcher::new()
    }
}
