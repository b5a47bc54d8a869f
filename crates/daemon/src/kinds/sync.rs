//! `type = "sync"`: two-way tree sync (see fspl-sync and docs/sync.md).
//! Every round scans the tree, puts the local changes into one change-set
//! job in `outbox`, and applies the peer's change sets waiting in `inbox`
//! in seq order. Rounds run every `interval_min` seconds, stretched ×1.3
//! after a round with nothing to do and ×1.5 after a failure (up to
//! `interval_max`), back to `interval_min` after any activity; three
//! failed rounds in a row (or a safety refusal at once) put the job in its
//! error state until `fspl status --clear NAME`.
//!
//! `fspl status` shows each round's progress as CoCalc does (scanning 0%,
//! sending-state 20%, sending N files 50%, receiving 70%, applying 80%,
//! then idle = ready); the last round's counts are kept in the sync's
//! `last-round.json` (`fspl sync status`) and in the metrics
//! `fspl_sync_files_total{what=sent|received|deleted|conflicts}`,
//! `fspl_sync_bytes_total{direction}` and `fspl_sync_last_round_files{what}`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use fspl_sync::{Compression, Keys, Options, SyncConfig};
use toml::de::DeValue;
use tracing::info_span;

use super::Resource;
use crate::config::{Bad, Checker, Keys as TomlKeys, path_value, string, strings};
use crate::state::{JobState, JobStatus};
use crate::supervisor::{
    FailureClass, Kind, Outcome, RunContext, RunReport, Supervision, WatchSpec,
};

/// The keys of a `type = "sync"` job of its own.
pub const KEYS: &[&str] = &[
    "dir",
    "peer",
    "local_name",
    "outbox",
    "inbox",
    "state",
    "exclude",
    "compression",
    "sign",
    "trust",
    "encrypt_to",
    "identity",
    "interval_min",
    "interval_max",
    "max_delete",
    "max_skew",
];

/// `type = "sync"`.
#[derive(Clone, Debug)]
pub struct SyncJob {
    pub cfg: SyncConfig,
    /// The task's wake-up, set when the task starts: a change in the tree
    /// wakes the job before its interval is up.
    wake: Arc<Mutex<Option<Arc<Notify>>>>,
}

impl PartialEq for SyncJob {
    fn eq(&self, other: &SyncJob) -> bool {
        self.cfg == other.cfg
    }
}

/// What a sync's runs need: its keys, and the watch on its tree (dropped
/// with it).
pub struct Prepared {
    keys: Keys,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Watch the tree (recursively, through inotify): any change outside the
/// sync's own directory and the excludes wakes the job. None when it
/// cannot (too many directories for the inotify limit...): the job polls.
fn watch_tree(cfg: &SyncConfig, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let root = cfg.dir.canonicalize().ok()?;
    let private = cfg.private_dir();
    let filter = fspl_sync::scan::Filter::new(
        &root,
        &cfg.exclude,
        &[private, cfg.inbox.clone(), cfg.outbox.clone()],
    )
    .ok()?;
    let base = root.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        use std::os::unix::ffi::OsStrExt;
        let relevant = ev.paths.iter().any(|p| {
            let rel = p.strip_prefix(&base).unwrap_or(p).as_os_str().as_bytes();
            let name = rel.rsplit(|&c| c == b'/').next().unwrap_or(rel);
            !rel.is_empty()
                && !name.starts_with(fspl_sync::fsops::TEMP_PREFIX.as_bytes())
                && !filter.excluded(rel, false)
        });
        if relevant {
            wake.notify_one();
        }
    })
    .ok()?;
    match w.watch(&root, notify::RecursiveMode::Recursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch the tree for changes ({e}); it is scanned every interval only"
            );
            None
        }
    }
}

fn float(v: &toml::Spanned<DeValue<'_>>) -> Result<f64, Bad> {
    let f = match v.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
        _ => None,
    };
    match f {
        Some(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err((v.span(), "must be a share between 0 and 1, like 0.5".into())),
    }
}

fn secs(v: &toml::Spanned<DeValue<'_>>) -> Result<u64, Bad> {
    crate::config::number(v, 1, crate::config::MAX_SECS, " of seconds")
}

impl SyncJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &TomlKeys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> SyncJob {
        c.require(k, table, l, "dir", "\"/home/me/work\"");
        c.require(k, table, l, "peer", "\"server\"");
        c.require(k, table, l, "outbox", "\"/srv/fspl/sync-out\"");
        c.require(k, table, l, "inbox", "\"/srv/fspl/sync-in\"");
        let p = |c: &mut Checker<'_>, key: &str| c.get(k, key, l, path_value);
        let mut cfg = SyncConfig::new(
            p(c, "dir").unwrap_or_default(),
            c.get(k, "peer", l, string).unwrap_or_default(),
            p(c, "outbox").unwrap_or_default(),
            p(c, "inbox").unwrap_or_default(),
        );
        if let Some(n) = c.get(k, "local_name", l, string) {
            cfg.name = n;
        }
        cfg.state = p(c, "state");
        cfg.exclude = c
            .get(k, "exclude", l, |v| strings(v, "[\"*.tmp\", \"build/\"]"))
            .unwrap_or_default();
        if let Some(x) = c.get(k, "compression", l, |v| {
            crate::config::one_of(v, &["zstd", "lz4", "none"])
        }) {
            cfg.compression = Compression::parse(&x).unwrap_or(Compression::Zstd);
        }
        cfg.sign = p(c, "sign");
        cfg.trust = p(c, "trust");
        cfg.encrypt_to = c
            .get(k, "encrypt_to", l, |v| strings(v, "[\"age1...\"]"))
            .unwrap_or_default();
        cfg.identity = c
            .get(k, "identity", l, |v| strings(v, "[\"/etc/fspl/age.key\"]"))
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect();
        cfg.interval_min = c.get(k, "interval_min", l, secs).unwrap_or(10);
        cfg.interval_max = c
            .get(k, "interval_max", l, secs)
            .unwrap_or(30.max(cfg.interval_min));
        cfg.max_delete = c.get(k, "max_delete", l, float).unwrap_or(0.5);
        cfg.max_skew = c.get(k, "max_skew", l, secs).unwrap_or(10);
        if !cfg.peer.is_empty()
            && !cfg.dir.as_os_str().is_empty()
            && let Err(e) = cfg.validate()
        {
            c.at(table, format!("{l}{e}"));
        }
        SyncJob {
            cfg,
            wake: Arc::default(),
        }
    }

    /// The task's wake-up (see [`SyncJob::wake`]).
    pub fn set_wake(&self, wake: Arc<Notify>) {
        if let Ok(mut w) = self.wake.lock() {
            *w = Some(wake);
        }
    }

    /// The tree: one sync job per tree.
    pub fn resource(&self) -> Option<Resource> {
        (!self.cfg.dir.as_os_str().is_empty()).then(|| Resource {
            path: self.cfg.dir.clone(),
            key: "dir",
            shown: self.cfg.dir.display().to_string(),
            noun: "tree",
            what: "its state",
        })
    }

    /// `interval_min`/`interval_max` are the job's polling bounds; a sync
    /// always polls (its rounds scan the tree).
    pub fn supervision(&self, mut sup: Supervision) -> Supervision {
        sup.poll = true;
        sup.poll_min = Duration::from_secs(self.cfg.interval_min);
        sup.poll_max = Duration::from_secs(self.cfg.interval_max.max(self.cfg.interval_min));
        sup
    }

    /// For `daemon --check`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.cfg.dir.as_os_str().is_empty() && !self.cfg.dir.is_dir() {
            problems.push((
                "dir",
                format!("{} is not a directory", self.cfg.dir.display()),
            ));
        }
        if let Err(e) = Keys::load(&self.cfg) {
            problems.push(("sign", e.to_string()));
        }
        problems
    }
}

impl Kind for SyncJob {
    type Prepared = Prepared;

    fn name(&self) -> &'static str {
        "sync"
    }

    fn watched_noun(&self) -> &'static str {
        "tree"
    }

    fn activity(&self) -> &'static str {
        "syncing"
    }

    fn status(&self, name: &str) -> JobStatus {
        JobStatus {
            to: Some(self.cfg.outbox.display().to_string()),
            from: Some(self.cfg.inbox.display().to_string()),
            bytes: Some(0),
            ..JobStatus::idle(name, "sync", self.cfg.dir.display().to_string())
        }
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "sync", dir = %self.cfg.dir.display(), peer = %self.cfg.peer)
    }

    fn init_metrics(&self, name: &str) {
        for what in ["sent", "received", "deleted", "conflicts"] {
            metrics::counter!("fspl_sync_files_total", "fspl_job" => name.to_string(), "what" => what)
                .increment(0);
        }
        for d in ["sent", "received"] {
            metrics::counter!("fspl_sync_bytes_total", "fspl_job" => name.to_string(), "direction" => d)
                .increment(0);
        }
        metrics::gauge!("fspl_sync_progress_percent", "fspl_job" => name.to_string()).set(100.0);
        metrics::gauge!("fspl_sync_throughput_bytes_per_second", "fspl_job" => name.to_string())
            .set(0.0);
    }

    /// A change set arriving in the inbox wakes the job (and a change in
    /// the tree, see [`watch_tree`]).
    fn watch(&self) -> Option<WatchSpec> {
        let jobs = self.cfg.inbox.join("jobs");
        let lock = self.cfg.inbox.join("nextseq.lock");
        Some(WatchSpec {
            dir: jobs,
            ready: lock.exists().then_some(lock),
        })
    }

    fn busy(&self) -> Option<String> {
        Some("sync: scanning (0%)".into())
    }

    fn prepare(&self) -> Result<Prepared, String> {
        let keys = Keys::load(&self.cfg).map_err(|e| fspl_queue::display_chain(&e))?;
        let wake = self.wake.lock().ok().and_then(|w| w.clone());
        Ok(Prepared {
            keys,
            _watcher: wake.and_then(|w| watch_tree(&self.cfg, w)),
        })
    }

    fn run(&self, prepared: &Prepared, ctx: &RunContext) -> RunReport {
        let keys = &prepared.keys;
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let since = crate::state::now_rfc3339();
        let name = ctx.name.clone();
        let progress = |phase: &str, pct: u8| {
            metrics::gauge!("fspl_sync_progress_percent", "fspl_job" => name.clone())
                .set(pct as f64);
            if pct < 100 {
                let doing = format!("sync: {phase} ({pct}%)");
                let since = since.clone();
                ctx.update(|s| s.state = JobState::Busy { doing, since });
            }
        };
        let started = std::time::Instant::now();
        let r = fspl_sync::round(&self.cfg, keys, &Options::default(), &progress);
        let elapsed = started.elapsed();
        let outcome = match r {
            Ok(r) => {
                let job = ctx.name.clone();
                let add = |what: &'static str, n: u64| {
                    metrics::counter!("fspl_sync_files_total", "fspl_job" => job.clone(), "what" => what)
                        .increment(n);
                    metrics::gauge!("fspl_sync_last_round_files", "fspl_job" => job.clone(), "what" => what)
                        .set(n as f64);
                };
                add("sent", r.files_sent);
                add("received", r.files_received);
                add("deleted", r.deleted);
                add("conflicts", r.conflicts);
                metrics::counter!("fspl_sync_bytes_total", "fspl_job" => job.clone(), "direction" => "sent")
                    .increment(r.bytes_sent);
                metrics::counter!("fspl_sync_bytes_total", "fspl_job" => job.clone(), "direction" => "received")
                    .increment(r.bytes_received);
                // Bytes per second of the last round that moved any.
                let moved = r.bytes_sent + r.bytes_received;
                let throughput =
                    (moved > 0).then(|| (moved as f64 / elapsed.as_secs_f64().max(1e-6)) as u64);
                if let Some(t) = throughput {
                    metrics::gauge!("fspl_sync_throughput_bytes_per_second", "fspl_job" => job.clone())
                        .set(t as f64);
                }
                ctx.update(|s| {
                    if throughput.is_some() {
                        s.lag.throughput_bps = throughput;
                    }
                    s.jobs_succeeded += r.sets_received;
                    s.bytes = Some(s.bytes.unwrap_or(0) + r.bytes_sent + r.bytes_received);
                    if r.worked() {
                        s.last_success = Some(crate::state::now_rfc3339());
                        s.lag.last_success_unix = Some(crate::supervisor::unix_now());
                    }
                });
                if r.worked() {
                    tracing::info!(
                        files_sent = r.files_sent,
                        deletes_sent = r.deletes_sent,
                        sets_received = r.sets_received,
                        files_received = r.files_received,
                        deleted = r.deleted,
                        conflicts = r.conflicts,
                        "sync round"
                    );
                }
                Outcome::Done {
                    worked: r.worked(),
                    waiting: None,
                }
            }
            Err(e) if e.is_locked() => Outcome::Locked { pid: None },
            Err(e) => Outcome::Failed {
                message: fspl_queue::display_chain(&e),
                class: if e.is_permanent() {
                    FailureClass::Permanent
                } else {
                    FailureClass::Counted
                },
            },
        };
        RunReport {
            outcome,
            next_seq: None,
            queued: None,
        }
    }
}
