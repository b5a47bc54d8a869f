//! The kinds of job, one module each: its configuration table (parsed by
//! the module itself), what it holds for itself (so that two jobs never
//! fight over one thing), what `daemon --check` looks at, and what one run
//! does ([`crate::supervisor::Kind`]). The supervisor does the rest, the
//! same for every kind.
//!
//! Adding a kind: a module here, a variant of [`JobKind`], and a line in
//! each `match` below.

#[cfg(feature = "nats")]
pub mod nats_wait;
pub mod process;
pub mod prune;
pub mod pull;
pub mod push;
#[cfg(feature = "s3")]
pub mod s3_upload;
pub mod sync;
mod transfer;

use std::ffi::OsStr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{Checker, JobConfig, JobKind, Keys};
use crate::supervisor::{self, Shared, TaskHandle, WatchSpec};

/// Every `type` this build knows.
pub const KINDS: &[&str] = &[
    "process",
    "push",
    "pull",
    "prune",
    "sync",
    #[cfg(feature = "s3")]
    "s3-upload",
    #[cfg(feature = "nats")]
    "nats-wait",
];

/// Something a job holds for itself while it runs: two jobs may not hold
/// the same (their runs would fight over it). A `process` job holds its
/// queue's lock, a `push` job its outbox's, a `pull` job its source; a
/// `pull` job and a `process` job on one queue do not conflict (the pull
/// only writes jobs into it, as `queue-write` does).
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The path (canonicalized when the configuration is read).
    pub path: PathBuf,
    /// The key naming it in the job's table (for the message's line).
    pub key: &'static str,
    /// The value as written.
    pub shown: String,
    /// What it is, in "two jobs on one {noun}": "queue".
    pub noun: &'static str,
    /// What they would fight over: "its lock".
    pub what: &'static str,
}

/// The kind a table without `type` most likely is, by its keys, so that
/// its other problems are found too.
pub fn guess(has: impl Fn(&str) -> bool) -> &'static str {
    if has("command") {
        "process"
    } else if has("outbox") || has("to") {
        "push"
    } else if has("from") {
        "pull"
    } else if has("paths") || has("keep") {
        "prune"
    } else {
        "process"
    }
}

/// The keys of a kind's own (besides `name`, `type`, `enabled` and the
/// supervisor's), in the order messages list them.
pub fn keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "push" => push::KEYS,
        "pull" => pull::KEYS,
        "prune" => prune::KEYS,
        "sync" => sync::KEYS,
        #[cfg(feature = "s3")]
        "s3-upload" => s3_upload::KEYS,
        #[cfg(feature = "nats")]
        "nats-wait" => nats_wait::KEYS,
        _ => process::KEYS,
    }
}

/// What the jobs of a kind do to what they hold, in "already ... by job":
/// "run".
pub fn verb(kind: &str) -> &'static str {
    match kind {
        "push" => "pushed",
        "pull" => "pulled from",
        "prune" => "pruned",
        "sync" => "synced",
        "s3-upload" => "uploaded from",
        "nats-wait" => "waited on",
        _ => "run",
    }
}

/// A job table's own keys, by its kind (every problem recorded).
pub(crate) fn parse(
    kind: &str,
    c: &mut Checker<'_>,
    k: &Keys<'_, '_>,
    table: &Range<usize>,
    label: &str,
) -> JobKind {
    match kind {
        "push" => JobKind::Push(push::PushJob::parse(c, k, table, label)),
        "pull" => JobKind::Pull(pull::PullJob::parse(c, k, table, label)),
        "prune" => JobKind::Prune(prune::PruneJob::parse(c, k, table, label)),
        "sync" => JobKind::Sync(sync::SyncJob::parse(c, k, table, label)),
        #[cfg(feature = "s3")]
        "s3-upload" => JobKind::S3Upload(s3_upload::S3UploadJob::parse(c, k, table, label)),
        #[cfg(feature = "nats")]
        "nats-wait" => JobKind::NatsWait(nats_wait::NatsWaitJob::parse(c, k, table, label)),
        _ => JobKind::Process(process::ProcessJob::parse(c, k, table, label)),
    }
}

impl JobKind {
    /// The kind's name (`type`).
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Process(_) => "process",
            JobKind::Push(_) => "push",
            JobKind::Pull(_) => "pull",
            JobKind::Prune(_) => "prune",
            JobKind::Sync(_) => "sync",
            #[cfg(feature = "s3")]
            JobKind::S3Upload(_) => "s3-upload",
            #[cfg(feature = "nats")]
            JobKind::NatsWait(_) => "nats-wait",
        }
    }

    /// What the job holds for itself, if anything.
    pub fn resource(&self) -> Option<Resource> {
        match self {
            JobKind::Process(p) => p.resource(),
            JobKind::Push(p) => p.resource(),
            JobKind::Pull(p) => p.resource(),
            JobKind::Prune(_) => None,
            JobKind::Sync(p) => p.resource(),
            #[cfg(feature = "s3")]
            JobKind::S3Upload(p) => p.resource(),
            #[cfg(feature = "nats")]
            JobKind::NatsWait(p) => p.resource(),
        }
    }

    /// The directory whose new job files wake the job.
    pub fn watch(&self) -> Option<WatchSpec> {
        use supervisor::Kind;
        match self {
            JobKind::Process(p) => p.watch(),
            JobKind::Push(p) => p.watch(),
            JobKind::Pull(p) => p.watch(),
            JobKind::Prune(p) => p.watch(),
            JobKind::Sync(p) => p.watch(),
            #[cfg(feature = "s3")]
            JobKind::S3Upload(p) => p.watch(),
            #[cfg(feature = "nats")]
            JobKind::NatsWait(p) => p.watch(),
        }
    }

    /// What keeps the job from running, key by key (for `daemon
    /// --check`); commands are looked up in `path_var`.
    pub fn check(&self, path_var: Option<&OsStr>) -> Vec<(&'static str, String)> {
        match self {
            JobKind::Process(p) => p.check(path_var),
            JobKind::Push(p) => p.check(),
            JobKind::Pull(p) => p.check(),
            JobKind::Prune(p) => p.check(),
            JobKind::Sync(p) => p.check(),
            #[cfg(feature = "s3")]
            JobKind::S3Upload(p) => p.check(),
            #[cfg(feature = "nats")]
            JobKind::NatsWait(p) => p.check(path_var),
        }
    }
}

/// Start a job's task under the supervisor (see [`supervisor::spawn`]).
pub fn spawn(
    j: &JobConfig,
    shared: Shared,
    returned: Option<Arc<Notify>>,
    wake: Arc<Notify>,
    after: Option<tokio::task::JoinHandle<()>>,
) -> TaskHandle {
    let (name, enabled, sup) = (j.name.clone(), j.enabled, j.supervision.clone());
    match &j.kind {
        JobKind::Process(p) => {
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        JobKind::Push(p) => {
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        JobKind::Pull(p) => {
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        JobKind::Prune(p) => {
            // Every `interval`, whatever happens (no events, no slowing).
            let sup = supervisor::Supervision {
                poll: true,
                poll_min: p.interval,
                poll_max: p.interval,
                ..sup
            };
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        JobKind::Sync(p) => {
            let sup = p.supervision(sup);
            p.set_wake(wake.clone());
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        #[cfg(feature = "s3")]
        JobKind::S3Upload(p) => {
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
        #[cfg(feature = "nats")]
        JobKind::NatsWait(p) => {
            supervisor::spawn(p.clone(), name, enabled, sup, shared, returned, wake, after)
        }
    }
}
