//! One supervisor for every kind of job: when to run it (filesystem
//! events, polling, the safety rescan, a clear), at most `max_parallel`
//! runs at once, backoff after a failed run, the error state, and what
//! `fspl status` and the metrics show about it all. What one run does is
//! the kind's business ([`Kind::run`]: `process` runs a queue, `push`
//! sends an outbox, `pull` takes from a source), on a blocking thread.
//!
//! A run ends in one of three ways ([`Outcome`]):
//!
//! - done: the job is idle (or waiting at a gap in its queue); polling
//!   slows down (×1.3 up to `poll_max`) while runs find nothing to do;
//! - locked: someone else holds what the job needs (a manual
//!   `queue-process`); tried again every second, not a failure;
//! - failed, in one of three classes ([`FailureClass`]):
//!   - **counted** (a job's command failed): retried after a backoff
//!     (`poll_min`, ×1.5 per failure up to `poll_max`); after
//!     `max_failures` counted failures in a row, the error state;
//!   - **transient** (network down, a busy server, a full disk): retried
//!     after the same backoff, and never enters the error state: it may
//!     go away by itself. It shows as `retrying`, with the failures in a
//!     row, in `fspl status` and `fspl_consecutive_failures`;
//!   - **permanent** (authentication refused, a queue the sender may not
//!     write, a destination that is not a directory): the error state at
//!     once, with the reason: retrying will not help until someone changes
//!     something.
//!
//! The error state lasts until `fspl status --clear`, a reload, or (for a
//! watched directory that went away) the directory coming back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fspl_queue::exec::KillHandle;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{Instrument, debug, error, info, warn};

use crate::config::{Bad, Checker, KeyLines, Keys, boolean, number, secs};
use crate::hooks::{Context as HookContext, Event, Hooks, JobHooks};
use crate::state::{JobState, JobStatus, Registry, now_rfc3339};

/// What every task shares with the daemon.
#[derive(Clone)]
pub struct Shared {
    pub registry: Registry,
    pub semaphore: Arc<Semaphore>,
    /// Set once on shutdown: running loops stop between jobs.
    pub shutting_down: Arc<AtomicBool>,
    /// Commands running now, by job name (killed after the shutdown grace).
    /// An entry goes as soon as its command is reaped; its handle signals
    /// nothing after that anyway.
    pub running: Arc<Mutex<HashMap<String, KillHandle>>>,
    pub rescan_interval: Duration,
    /// The `fspl status` command that reaches this daemon, for hints:
    /// `fspl status` with the default socket, else with `-c CONFIG` (the
    /// configuration's absolute path, quoted for a shell).
    pub status_command: Arc<str>,
    /// Every hook of this daemon (killed after the shutdown grace).
    pub hooks: crate::hooks::HookGroup,
}

/// Quote `s` for a POSIX shell when it needs it (hints are meant to be
/// pasted).
pub fn shell_quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("{s:?}"))
}

impl Shared {
    /// The command that ends job `name`'s error state, for hints.
    pub fn clear_hint(&self, name: &str) -> String {
        format!("{} --clear {}", self.status_command, shell_quote(name))
    }
}

/// The supervisor's keys of a `[[job]]`, the same for every kind.
pub const SUPERVISION_KEYS: &[&str] = &[
    "poll",
    "poll_min",
    "poll_max",
    "max_failures",
    "stale_after",
    "on_success",
    "on_failure",
    "on_error_state",
    "on_refused",
    "hook_timeout",
];

/// How a job is supervised.
#[derive(Clone, Debug, PartialEq)]
pub struct Supervision {
    /// Poll instead of relying on filesystem events.
    pub poll: bool,
    /// The polling interval after activity, and the first retry delay.
    pub poll_min: Duration,
    /// The longest polling interval and retry delay.
    pub poll_max: Duration,
    /// Counted failed runs in a row before the job enters its error state.
    pub max_failures: u32,
    /// No success for this long while jobs wait: the job is `stale`.
    pub stale_after: Option<Duration>,
    /// Commands run on events (see [`crate::hooks`]).
    pub hooks: Hooks,
}

impl Supervision {
    /// The supervisor's keys of a job table (every problem recorded).
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        l: &str,
        lines: &KeyLines,
    ) -> Supervision {
        let poll = c.get(k, "poll", l, boolean).unwrap_or(false);
        let poll_min = c.get(k, "poll_min", l, |v| secs(v, 1));
        let poll_max = c.get(k, "poll_max", l, |v| secs(v, 1));
        let (poll_min, poll_max) = match (poll_min, poll_max) {
            (Some(a), Some(b)) if a > b => {
                c.at_key(
                    lines,
                    "poll_max",
                    format!(
                        "{l}poll_max: must be at least poll_min ({}), not {}",
                        a.as_secs(),
                        b.as_secs()
                    ),
                );
                (a, a)
            }
            // A bound given alone moves the other default out of its way.
            (a, b) => {
                let min = a.unwrap_or(Duration::from_secs(10).min(b.unwrap_or(Duration::MAX)));
                let max = b.unwrap_or(Duration::from_secs(30).max(min));
                (min, max)
            }
        };
        let max_failures = c
            .get(k, "max_failures", l, |v| -> Result<u64, Bad> {
                number(v, 1, u32::MAX as u64, "")
            })
            .unwrap_or(3) as u32;
        let stale_after = c.get(k, "stale_after", l, |v| secs(v, 1));
        let hooks = Hooks::parse(c, k, l);
        Supervision {
            poll,
            poll_min,
            poll_max,
            max_failures,
            stale_after,
            hooks,
        }
    }

    /// The delay before the next try after `failures` failed runs in a
    /// row: `poll_min`, ×1.5 per further failure, at most `poll_max` (and
    /// never below `poll_min`). Any number of failures is fine: the delay
    /// is computed in floating point and capped before it becomes a
    /// [`Duration`].
    pub fn backoff(&self, failures: u32) -> Duration {
        let cap = self.poll_max.max(self.poll_min);
        let exp = failures.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.poll_min.as_secs_f64() * 1.5f64.powi(exp);
        if secs.is_finite() && secs < cap.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            cap
        }
    }
}

/// How a failed run counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Towards `max_failures` (a job's command failed).
    Counted,
    /// May go away by itself (network down, server busy, disk full):
    /// retried with backoff, never the error state.
    Transient,
    /// Retrying will not help (authentication refused, a queue not
    /// allowed, bad configuration): the error state at once.
    Permanent,
}

impl FailureClass {
    /// A transport error's class: transient or permanent, as it says.
    pub fn of_transport(e: &fspl_transport::TransportError) -> FailureClass {
        if e.is_transient() {
            FailureClass::Transient
        } else {
            FailureClass::Permanent
        }
    }
}

/// How one run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing more to do for now. `worked`: the run did something (the
    /// polling interval goes back to `poll_min`); `waiting`: the queue
    /// waits for a missing seq (the seq and what is there instead).
    Done {
        worked: bool,
        waiting: Option<(u64, String)>,
    },
    /// Someone else holds what the job needs (the queue lock): tried again
    /// shortly, not a failure.
    Locked { pid: Option<u32> },
    /// The run failed.
    Failed {
        message: String,
        class: FailureClass,
    },
}

/// A run's outcome, and what it learnt about the queue for `fspl status`.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The queue's nextseq, when the kind tells.
    pub next_seq: Option<u64>,
    /// Jobs waiting (in the queue at or after nextseq; in the outbox).
    pub queued: Option<u64>,
}

/// What a run may touch: the job's name, the shared state (status,
/// running commands), and whether to stop.
pub struct RunContext {
    pub name: String,
    pub shared: Shared,
    pub stop_flag: Arc<AtomicBool>,
    /// The job's hooks, for the events a kind sees itself (each job of a
    /// process run).
    pub hooks: JobHooks,
    /// Set by [`RunContext::recovered`]: [`RECOVERED_TRANSIENT`] or
    /// [`RECOVERED_ALL`].
    recovered: Arc<AtomicU8>,
    /// The failed runs in a row before this one ended with a transient
    /// failure.
    after_transient: bool,
}

/// [`RunContext::recovered`] without the counted failures.
const RECOVERED_TRANSIENT: u8 = 1;
/// [`RunContext::recovered`] with them.
const RECOVERED_ALL: u8 = 2;

impl RunContext {
    /// Shutting down, or the job was stopped (removed, changed): finish
    /// what is under way and stop.
    pub fn should_stop(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst) || self.stop_flag.load(Ordering::SeqCst)
    }

    /// Update the job's status.
    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        self.shared.registry.update(&self.name, f)
    }

    /// A long run (one that lasts until the job stops: `nats-wait`) got
    /// past what failed before, so the failed runs in a row end here:
    /// `all` when it did its work (a command succeeded): every failure is
    /// forgotten; else (it is connected again) only failures in a row that
    /// ended with a transient one, while failures that count towards
    /// `max_failures` keep counting. Shown at once in `fspl status` and
    /// the gauges.
    pub fn recovered(&self, all: bool) {
        if !all && !self.after_transient {
            return;
        }
        let level = if all {
            RECOVERED_ALL
        } else {
            RECOVERED_TRANSIENT
        };
        if self.recovered.fetch_max(level, Ordering::SeqCst) >= level {
            return;
        }
        reset_failures(&self.shared, &self.name);
        set_gauges(&self.name, None, false, false);
    }
}

/// A directory whose new job files wake the job.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchSpec {
    pub dir: std::path::PathBuf,
    /// A file that exists once the directory's queue is complete (its lock
    /// file): after the directory comes back, the job is woken only then.
    pub ready: Option<std::path::PathBuf>,
}

/// One kind of job, as the supervisor drives it.
pub trait Kind: Send + Sync + 'static {
    /// What a run needs that is loaded once (trust files, identities),
    /// and again after a reload.
    type Prepared: Send + Sync + 'static;

    /// The kind's name (`type = "..."`).
    fn name(&self) -> &'static str;
    /// What the job works on, for messages: "queue directory", "outbox".
    fn watched_noun(&self) -> &'static str;
    /// What its runs do, for messages: "processing", "pushing".
    fn activity(&self) -> &'static str;
    /// Its first status row (`type`, `queue`, `to`, `from`; counters at
    /// zero).
    fn status(&self, name: &str) -> JobStatus;
    /// The log context of its lines: `job`, `kind` and what it works on.
    fn span(&self, name: &str) -> tracing::Span;
    /// Its own metrics, at zero.
    fn init_metrics(&self, name: &str);
    /// The directory whose new job files wake it, when events can tell.
    fn watch(&self) -> Option<WatchSpec>;
    /// What `fspl status` shows while a run is under way (`busy`), when
    /// the run does not say itself (process shows each job it runs).
    fn busy(&self) -> Option<String> {
        None
    }
    /// The kind fires `on_success`/`on_failure` for each job itself
    /// (process); else the supervisor fires them for each run that moved
    /// something or failed.
    fn fires_job_hooks(&self) -> bool {
        false
    }
    /// The queue (or outbox) whose waiting jobs are the job's lag: the
    /// age of the oldest, their bytes (sampled after each run).
    fn lag_queue(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Load what runs need. An error is permanent: the error state, with
    /// the message, until a clear or a reload.
    fn prepare(&self) -> Result<Self::Prepared, String>;
    /// One run, on a blocking thread.
    fn run(&self, prepared: &Self::Prepared, ctx: &RunContext) -> RunReport;
}

/// How the daemon controls one task.
pub struct TaskHandle {
    pub stop: watch::Sender<bool>,
    pub stop_flag: Arc<AtomicBool>,
    /// Wakes the task out of its error state or backoff; only a task
    /// waiting for it is woken (`notify_waiters`), so a clear sent while
    /// the job is healthy is not kept for later.
    pub clear: Arc<Notify>,
    /// Set on reload: build the run's options again (trust file and
    /// identities read anew) before the next run.
    pub refresh: Arc<AtomicBool>,
    pub join: tokio::task::JoinHandle<()>,
}

/// The job's generic metrics, at zero (so that they are there from the
/// start, and a rate over them is right from the first event).
fn init_metrics(name: &str) {
    for r in ["success", "failed"] {
        metrics::counter!("fspl_runs_total", "fspl_job" => name.to_string(), "result" => r)
            .increment(0);
    }
    metrics::gauge!("fspl_consecutive_failures", "fspl_job" => name.to_string()).set(0.0);
    crate::lag::init_metrics(name);
}

/// Count one run; `failures`: failed runs in a row now.
fn count_run(shared: &Shared, name: &str, failed: bool, failures: u32) {
    let result = if failed { "failed" } else { "success" };
    metrics::counter!("fspl_runs_total", "fspl_job" => name.to_string(), "result" => result)
        .increment(1);
    metrics::gauge!("fspl_consecutive_failures", "fspl_job" => name.to_string())
        .set(failures as f64);
    shared.registry.update(name, |s| {
        s.runs += 1;
        if failed {
            s.runs_failed += 1;
        }
        s.consecutive_failures = failures;
    });
}

/// Failed runs in a row back to zero (a clear, a reload, the watched
/// directory back).
fn reset_failures(shared: &Shared, name: &str) {
    metrics::gauge!("fspl_consecutive_failures", "fspl_job" => name.to_string()).set(0.0);
    shared.registry.update(name, |s| s.consecutive_failures = 0);
}

pub fn set_gauges(name: &str, queued: Option<u64>, blocked: bool, error: bool) {
    if let Some(q) = queued {
        metrics::gauge!("fspl_queue_jobs", "fspl_job" => name.to_string()).set(q as f64);
    }
    metrics::gauge!("fspl_queue_blocked", "fspl_job" => name.to_string()).set(if blocked {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("fspl_queue_error", "fspl_job" => name.to_string()).set(if error {
        1.0
    } else {
        0.0
    });
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Start the task of a job of kind `K`. With `after` (the task of the
/// job's previous configuration, told to stop), it begins once that one
/// has ended, so the two never run at once and the daemon need not wait
/// for a long command to apply a reload. `returned`: Some when the job's
/// directory is watched for events (else it polls); notified when the
/// directory has come back after going away.
#[allow(clippy::too_many_arguments)]
pub fn spawn<K: Kind>(
    kind: K,
    name: String,
    enabled: bool,
    supervision: Supervision,
    shared: Shared,
    returned: Option<Arc<Notify>>,
    wake: Arc<Notify>,
    after: Option<tokio::task::JoinHandle<()>>,
) -> TaskHandle {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let clear = Arc::new(Notify::new());
    let refresh = Arc::new(AtomicBool::new(false));
    let mut status = kind.status(&name);
    status.lag.stale_after_s = supervision.stale_after.map(|d| d.as_secs());
    status.lag.started_unix = Some(unix_now());
    let hooks = JobHooks {
        hooks: Arc::new(supervision.hooks.clone()),
        job: name.clone(),
        kind: kind.name(),
        queue: status.queue.clone(),
        group: shared.hooks.clone(),
    };
    status.state = if enabled {
        JobState::Idle
    } else {
        JobState::Disabled
    };
    shared.registry.set(status);
    init_metrics(&name);
    kind.init_metrics(&name);
    set_gauges(&name, None, false, false);
    // The task's log context. Instrumented, not entered: an entered span
    // held across an await would lend its fields to whatever else runs on
    // the thread meanwhile.
    let span = kind.span(&name);
    let run = enabled.then(|| {
        Task {
            kind: Arc::new(kind),
            name,
            hooks,
            sup: supervision,
            shared,
            returned,
            wake: wake.clone(),
            stop: stop_rx,
            stop_flag: stop_flag.clone(),
            clear: clear.clone(),
            refresh: refresh.clone(),
        }
        .run()
        .instrument(span)
    });
    let join = tokio::spawn(async move {
        if let Some(previous) = after {
            let _ = previous.await;
        }
        if let Some(run) = run {
            run.await;
        }
    });
    TaskHandle {
        stop: stop_tx,
        stop_flag,
        clear,
        refresh,
        join,
    }
}

/// One job's supervision loop.
struct Task<K: Kind> {
    kind: Arc<K>,
    name: String,
    hooks: JobHooks,
    sup: Supervision,
    shared: Shared,
    returned: Option<Arc<Notify>>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
    stop_flag: Arc<AtomicBool>,
    clear: Arc<Notify>,
    refresh: Arc<AtomicBool>,
}

/// What ended an error state.
enum Resumed {
    Cleared,
    Back,
    Stopped,
}

impl<K: Kind> Task<K> {
    /// Show the error state with `message` and wait for what ends it.
    /// The clear is listened for before the state shows: a clear only
    /// wakes a job that is waiting for one.
    async fn error_state(&mut self, message: &str, queued: Option<u64>, blocked: bool) -> Resumed {
        let cleared = self.clear.notified();
        tokio::pin!(cleared);
        cleared.as_mut().enable();
        self.hooks.fire(
            Event::ErrorState,
            HookContext {
                reason: Some(message.to_string()),
                ..Default::default()
            },
        );
        self.shared.registry.update(&self.name, |s| {
            s.state = JobState::Error {
                message: message.to_string(),
            }
        });
        set_gauges(&self.name, queued, blocked, true);
        let returned = self.returned.clone();
        let back = async move {
            match &returned {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cleared => Resumed::Cleared,
            _ = back => Resumed::Back,
            _ = self.stop.changed() => Resumed::Stopped,
        }
    }

    async fn run(mut self) {
        let polling = self.sup.poll || self.returned.is_none();
        let noun = self.kind.watched_noun();
        let mut interval = self.sup.poll_min;
        // Failed runs in a row, and those of them that count towards
        // max_failures (transient ones do not).
        let mut failures: u32 = 0;
        let mut counted: u32 = 0;
        // The last failed run (of those in a row) was a transient failure.
        let mut after_transient = false;
        let mut next_run = Instant::now();
        let mut backing_off = false;
        let mut prepared: Option<Arc<K::Prepared>> = None;
        // The job's directory came back after going away (removed and
        // re-created): a failure or error state that caused ends at once.
        let returned = self.returned.clone();
        let back = || async {
            match &returned {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        loop {
            let sleep = tokio::time::sleep_until(next_run.into());
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified(), if !backing_off => {}
                // The directory back, or a clear, while backing off: retry
                // at once, from zero failures.
                _ = back(), if backing_off => {
                    info!("{noun} is back; retrying now");
                    (failures, counted) = (0, 0);
                    reset_failures(&self.shared, &self.name);
                    backing_off = false;
                    interval = self.sup.poll_min;
                }
                _ = self.clear.notified(), if backing_off => {
                    info!("cleared; retrying now");
                    (failures, counted) = (0, 0);
                    reset_failures(&self.shared, &self.name);
                    backing_off = false;
                    interval = self.sup.poll_min;
                }
                _ = self.stop.changed() => return,
            }
            if *self.stop.borrow() {
                return;
            }
            if self.refresh.swap(false, Ordering::SeqCst) {
                prepared = None;
            }
            let p = match &prepared {
                Some(p) => p.clone(),
                None => match self.kind.prepare() {
                    Ok(p) => {
                        let p = Arc::new(p);
                        prepared = Some(p.clone());
                        p
                    }
                    Err(message) => {
                        // A run that could not start: it failed, and at
                        // once puts the job in its error state.
                        failures += 1;
                        count_run(&self.shared, &self.name, true, failures);
                        error!(
                            "cannot start {}: {message}; fix it, then `{}` or reload",
                            self.kind.activity(),
                            self.shared.clear_hint(&self.name)
                        );
                        if let Resumed::Stopped = self.error_state(&message, None, false).await {
                            return;
                        }
                        (failures, counted) = (0, 0);
                        reset_failures(&self.shared, &self.name);
                        next_run = Instant::now();
                        continue;
                    }
                },
            };
            let permit = tokio::select! {
                p = self.shared.semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.stop.changed() => return,
            };
            // A return of the directory before this run is no news to it.
            if let Some(n) = &self.returned {
                forget_notification(n);
            }
            if let Some(doing) = self.kind.busy() {
                let since = now_rfc3339();
                self.shared
                    .registry
                    .update(&self.name, |s| s.state = JobState::Busy { doing, since });
            }
            let recovered = Arc::new(AtomicU8::new(0));
            let ctx = RunContext {
                name: self.name.clone(),
                shared: self.shared.clone(),
                stop_flag: self.stop_flag.clone(),
                hooks: self.hooks.clone(),
                recovered: recovered.clone(),
                after_transient: failures > 0 && after_transient,
            };
            let kind = self.kind.clone();
            let t0 = Instant::now();
            let r = tokio::task::spawn_blocking(move || {
                let r = kind.run(&p, &ctx);
                // The lag, sampled where blocking is fine.
                if let Some(q) = kind.lag_queue() {
                    let (oldest, bytes) = crate::lag::sample(&q, r.next_seq);
                    ctx.update(|s| {
                        s.lag.oldest_queued_ctime = oldest;
                        s.lag.bytes_queued = Some(bytes);
                    });
                    crate::lag::set_queue_gauges(&ctx.name, bytes);
                }
                r
            })
            .await;
            drop(permit);
            let Ok(r) = r else {
                return;
            };
            match recovered.load(Ordering::SeqCst) {
                RECOVERED_ALL => (failures, counted) = (0, 0),
                RECOVERED_TRANSIENT => failures = 0,
                _ => {}
            }
            if !self.kind.fires_job_hooks() {
                match &r.outcome {
                    Outcome::Done { worked: true, .. } => self.hooks.fire(
                        Event::Success,
                        HookContext {
                            duration: Some(t0.elapsed()),
                            ..Default::default()
                        },
                    ),
                    Outcome::Failed { message, .. } => self.hooks.fire(
                        Event::Failure,
                        HookContext {
                            reason: Some(message.clone()),
                            duration: Some(t0.elapsed()),
                            ..Default::default()
                        },
                    ),
                    _ => {}
                }
            }
            match r.outcome {
                Outcome::Done { worked, waiting } => {
                    (failures, counted) = (0, 0);
                    count_run(&self.shared, &self.name, false, 0);
                    backing_off = false;
                    if worked {
                        interval = self.sup.poll_min;
                    } else {
                        interval = interval.mul_f64(1.3).min(self.sup.poll_max);
                    }
                    let state = match waiting {
                        Some((seq, detail)) => JobState::Waiting { seq, detail },
                        None => JobState::Idle,
                    };
                    let blocked = matches!(state, JobState::Waiting { .. });
                    self.shared.registry.update(&self.name, |s| {
                        s.state = state;
                        s.next_seq = r.next_seq;
                        s.queued = r.queued;
                        s.consecutive_failures = 0;
                    });
                    set_gauges(&self.name, r.queued, blocked, false);
                    next_run = Instant::now()
                        + if polling {
                            interval
                        } else {
                            self.shared.rescan_interval
                        };
                }
                Outcome::Locked { pid } => {
                    debug!(holder = ?pid, "{noun} locked by another process; trying again shortly");
                    self.shared
                        .registry
                        .update(&self.name, |s| s.state = JobState::Locked { pid });
                    next_run = Instant::now() + Duration::from_secs(1);
                }
                Outcome::Failed { message, class } => {
                    failures = failures.saturating_add(1);
                    after_transient = class == FailureClass::Transient;
                    if class == FailureClass::Counted {
                        counted = counted.saturating_add(1);
                    }
                    count_run(&self.shared, &self.name, true, failures);
                    self.shared.registry.update(&self.name, |s| {
                        s.next_seq = r.next_seq;
                        s.queued = r.queued;
                    });
                    let stop_now = match class {
                        FailureClass::Permanent => {
                            error!(
                                failures,
                                "{} failed, and retrying will not help: {message}; fix it, then `{}` or reload",
                                self.kind.activity(),
                                self.shared.clear_hint(&self.name)
                            );
                            true
                        }
                        FailureClass::Counted if counted >= self.sup.max_failures => {
                            error!(
                                failures,
                                "stopped after {failures} failures in a row: {message}; `{}` resumes",
                                self.shared.clear_hint(&self.name)
                            );
                            true
                        }
                        _ => false,
                    };
                    if stop_now {
                        let resumed = self.error_state(&message, r.queued, true).await;
                        match resumed {
                            Resumed::Stopped => return,
                            Resumed::Cleared => info!("error cleared; resuming"),
                            Resumed::Back => info!("{noun} is back; resuming"),
                        }
                        (failures, counted) = (0, 0);
                        backing_off = false;
                        interval = self.sup.poll_min;
                        self.shared
                            .registry
                            .update(&self.name, |s| s.state = JobState::Idle);
                        reset_failures(&self.shared, &self.name);
                        set_gauges(&self.name, r.queued, false, false);
                        next_run = Instant::now();
                    } else {
                        interval = interval.mul_f64(1.5).min(self.sup.poll_max.max(interval));
                        let delay = self.sup.backoff(failures);
                        if class == FailureClass::Transient {
                            warn!(
                                failures,
                                retry_in_s = delay.as_secs_f64(),
                                transient = true,
                                "run failed: {message}"
                            );
                        } else {
                            warn!(
                                failures,
                                retry_in_s = delay.as_secs_f64(),
                                "run failed: {message}"
                            );
                        }
                        let retry_at = fspl_format::rfc3339_utc(fspl_format::Ctime {
                            secs: unix_now().saturating_add(delay.as_secs() as i64),
                            nanos: 0,
                        });
                        self.shared.registry.update(&self.name, |s| {
                            s.state = JobState::Retrying {
                                message: message.clone(),
                                failures,
                                retry_at,
                            }
                        });
                        set_gauges(&self.name, r.queued, true, false);
                        backing_off = true;
                        next_run = Instant::now() + delay;
                    }
                }
            }
        }
    }
}

/// Drop a notification stored for no waiter (`notify_one` before anyone
/// waited), without waiting for one.
fn forget_notification(n: &Notify) {
    let f = n.notified();
    tokio::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = std::future::Future::poll(f, &mut cx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(min: u64, max: u64) -> Supervision {
        Supervision {
            poll: false,
            poll_min: Duration::from_secs(min),
            poll_max: Duration::from_secs(max),
            max_failures: 3,
            stale_after: None,
            hooks: Hooks::default(),
        }
    }

    #[test]
    fn backoff_grows_by_half_up_to_poll_max() {
        let s = sup(10, 30);
        let d: Vec<u64> = (1..=5).map(|f| s.backoff(f).as_secs()).collect();
        assert_eq!(d, [10, 15, 22, 30, 30]);
        assert_eq!(sup(5, 5).backoff(1), Duration::from_secs(5));
    }

    /// Regression: the delay after a failure was poll_min × 1.5^(n-1) as a
    /// Duration before the cap, which overflows (a panic in the job's
    /// task) after about 110 failures in a row: reachable with a large
    /// max_failures, and with transient failures, which never stop.
    #[test]
    fn backoff_after_very_many_failures_does_not_overflow() {
        let s = sup(crate::config::MAX_SECS, crate::config::MAX_SECS);
        for f in [111, 1000, u32::MAX] {
            assert_eq!(s.backoff(f), Duration::from_secs(crate::config::MAX_SECS));
        }
        assert_eq!(sup(1, 60).backoff(u32::MAX), Duration::from_secs(60));
    }
}
