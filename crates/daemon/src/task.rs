//! `type = "process"`: one task per queue. It runs the same processing loop
//! as `queue-process` (fspl_queue::process), on a blocking thread, when
//! jobs arrive (filesystem events), on a timer (polling, and a periodic
//! safety rescan), and backs off after failures until an error state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fspl_queue::Queue;
use fspl_queue::decoder::Decoder;
use fspl_queue::exec::{KillHandle, Outcome};
use fspl_queue::process::{
    JobReport, Observer, OptionNames, ProcessError, ProcessOptions, StopReason, Summary, process,
};
use fspl_queue::status::State;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::ProcessJob;
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
    fn clear_hint(&self, name: &str) -> String {
        format!("{} --clear {}", self.status_command, shell_quote(name))
    }
}

/// Every `result` of `fspl_jobs_processed_total`: an [`Outcome`]'s label,
/// or `not-started` (the command could not be started).
pub const JOB_RESULTS: &[&str] = &[
    "success",
    "failed",
    "timeout",
    "fail-job",
    "invalid",
    "payload-error",
    NOT_STARTED,
];
const NOT_STARTED: &str = "not-started";

/// A job's metrics, every series at zero (so that they are there from the
/// start, and a rate over them is right from the first event).
fn init_metrics(name: &str) {
    for r in JOB_RESULTS {
        metrics::counter!("fspl_jobs_processed_total", "job" => name.to_string(), "result" => *r)
            .increment(0);
    }
    metrics::counter!("fspl_jobs_refused_total", "job" => name.to_string()).increment(0);
    for r in ["success", "failed"] {
        metrics::counter!("fspl_runs_total", "job" => name.to_string(), "result" => r).increment(0);
    }
    metrics::gauge!("fspl_consecutive_failures", "job" => name.to_string()).set(0.0);
}

/// Count one job attempt that did not succeed, by its result.
fn count_job_failure(shared: &Shared, name: &str, result: &'static str) {
    metrics::counter!("fspl_jobs_processed_total", "job" => name.to_string(), "result" => result)
        .increment(1);
    shared.registry.update(name, |s| s.jobs_failed += 1);
}

/// Count one run of the queue; `failures`: failed runs in a row now.
fn count_run(shared: &Shared, name: &str, failed: bool, failures: u32) {
    let result = if failed { "failed" } else { "success" };
    metrics::counter!("fspl_runs_total", "job" => name.to_string(), "result" => result)
        .increment(1);
    metrics::gauge!("fspl_consecutive_failures", "job" => name.to_string()).set(failures as f64);
    shared.registry.update(name, |s| {
        s.runs += 1;
        if failed {
            s.runs_failed += 1;
        }
        s.consecutive_failures = failures;
    });
}

/// Failed runs in a row back to zero (a clear, a reload, the queue's
/// directory back).
fn reset_failures(shared: &Shared, name: &str) {
    metrics::gauge!("fspl_consecutive_failures", "job" => name.to_string()).set(0.0);
    shared.registry.update(name, |s| s.consecutive_failures = 0);
}

/// Why a run failed, in the daemon's words: a failed job names
/// `on_error = "retry"` (the configuration's spelling), not the flag.
fn describe_failure(e: &ProcessError) -> String {
    match e {
        ProcessError::JobFailed {
            seq, path, outcome, ..
        } => format!(
            "job {seq} ({}): {outcome}; stopped with the job left in the queue (on_error = \"retry\")",
            path.display()
        ),
        e => fspl_queue::display_chain(e),
    }
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

struct DaemonObserver {
    name: String,
    shared: Shared,
    stop_flag: Arc<AtomicBool>,
    seq_span: Option<tracing::span::EnteredSpan>,
}

impl Observer for DaemonObserver {
    fn planned(&mut self, ready: u64) {
        self.shared.registry.update(&self.name, |s| {
            s.queued = Some(ready.max(s.queued.unwrap_or(0)))
        });
    }

    fn started(&mut self, job: &JobReport<'_>) {
        self.seq_span = Some(info_span!("seq", seq = job.seq).entered());
        debug!(file = ?job.name, "job started");
        let since = now_rfc3339();
        self.shared.registry.update(&self.name, |s| {
            s.state = JobState::Running {
                seq: job.seq,
                since,
            };
            s.next_seq = Some(job.seq);
        });
    }

    fn spawned(&mut self, command: &KillHandle) {
        if let Ok(mut r) = self.shared.running.lock() {
            r.insert(self.name.clone(), command.clone());
        }
    }

    fn reaped(&mut self) {
        if let Ok(mut r) = self.shared.running.lock() {
            r.remove(&self.name);
        }
    }

    fn finished(&mut self, job: &JobReport<'_>, outcome: &Outcome, elapsed: Duration) {
        if let Ok(mut r) = self.shared.running.lock() {
            r.remove(&self.name);
        }
        let ms = elapsed.as_millis() as u64;
        metrics::counter!("fspl_jobs_processed_total", "job" => self.name.clone(), "result" => outcome.label())
            .increment(1);
        metrics::histogram!("fspl_job_duration_seconds", "job" => self.name.clone())
            .record(elapsed.as_secs_f64());
        if outcome.is_success() {
            info!(duration_ms = ms, "job succeeded");
            let now = now_rfc3339();
            metrics::gauge!("fspl_last_success_timestamp_seconds", "job" => self.name.clone())
                .set(unix_now() as f64);
            self.shared.registry.update(&self.name, |s| {
                s.last_success = Some(now);
                s.jobs_succeeded += 1;
                s.next_seq = Some(job.seq.saturating_add(1));
                s.queued = s.queued.map(|q| q.saturating_sub(1));
            });
        } else {
            warn!(
                duration_ms = ms,
                outcome = outcome.label(),
                "job failed: {outcome}"
            );
            self.shared
                .registry
                .update(&self.name, |s| s.jobs_failed += 1);
        }
        self.seq_span = None;
    }

    fn refused(&mut self, _seq: Option<u64>, _name: &std::ffi::OsStr, _reason: &str) {
        metrics::counter!("fspl_jobs_refused_total", "job" => self.name.clone()).increment(1);
        self.shared
            .registry
            .update(&self.name, |s| s.jobs_refused += 1);
    }

    fn option_names(&self) -> OptionNames {
        OptionNames::ConfigKeys
    }

    fn should_stop(&mut self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst) || self.stop_flag.load(Ordering::SeqCst)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The options of one run, built once (trust file and identities loaded).
struct Prepared {
    queue: Queue,
    opts: ProcessOptions,
}

fn prepare(cfg: &ProcessJob) -> Result<Prepared, String> {
    let identities = if cfg.identity.is_empty() {
        None
    } else {
        Some(Arc::new(
            fspl_trust::crypt::Identities::load(&cfg.identity)
                .map_err(|e| fspl_queue::display_chain(&e))?,
        ))
    };
    let trust = match &cfg.trust {
        None => None,
        Some(p) => Some(Arc::new(
            fspl_trust::TrustFile::load(p).map_err(|e| fspl_queue::display_chain(&e))?,
        )),
    };
    let queue = Queue::new(&cfg.queue).with_identities(identities);
    queue.lock().map(drop).or_else(|e| match e {
        fspl_queue::QueueError::Locked { .. } => Ok(()),
        e => Err(fspl_queue::display_chain(&e)),
    })?;
    Ok(Prepared {
        queue,
        opts: ProcessOptions {
            command: cfg.command.clone(),
            args: cfg.args.clone(),
            decoder: cfg.decoder.clone().map(Decoder::new),
            order_by: cfg.order_by,
            on_error: cfg.on_error,
            never_delete: cfg.never_delete,
            maxjobs: None,
            output_to: cfg.output_to,
            allow_job_params: cfg.allow_job_params,
            ignore_payload: cfg.ignore_payload,
            timeout: cfg.timeout,
            trust,
        },
    })
}

/// The result of one run, with the queue's state afterwards.
struct RunResult {
    result: Result<Summary, ProcessError>,
    next_seq: Option<u64>,
    queued: Option<u64>,
    waiting: Option<(u64, String)>,
}

fn run_once(name: &str, p: &Prepared, shared: &Shared, stop_flag: &Arc<AtomicBool>) -> RunResult {
    let span = info_span!("job", job = name, queue = %p.queue.dir().display());
    let _e = span.enter();
    let mut obs = DaemonObserver {
        name: name.to_string(),
        shared: shared.clone(),
        stop_flag: stop_flag.clone(),
        seq_span: None,
    };
    let result = process(&p.queue, &p.opts, &mut obs);
    drop(obs);
    // What the queue looks like now, for `fspl status` and the metrics.
    let st =
        fspl_queue::status::status(&p.queue, p.opts.decoder.as_ref(), p.opts.trust.as_deref()).ok();
    let next_seq = st.as_ref().and_then(|s| s.nextseq);
    let queued = st.as_ref().map(|s| s.jobs - s.below_next);
    let waiting = match (&result, &st) {
        (
            Ok(Summary {
                stop: StopReason::Gap { waiting_for, .. },
                ..
            }),
            Some(s),
        ) => Some((
            *waiting_for,
            match &s.state {
                State::Blocked { reason } => reason.clone(),
                _ => String::new(),
            },
        )),
        _ => None,
    };
    RunResult {
        result,
        next_seq,
        queued,
        waiting,
    }
}

/// Start the task for a process job. With `after` (the task of the job's
/// previous configuration, told to stop), it begins once that one has
/// ended, so the two never run the queue at once and the daemon need not
/// wait for a long command to apply a reload. `returned`: Some when the
/// queue is watched for events (else it polls); notified when its jobs
/// directory has come back after going away.
pub fn spawn(
    name: String,
    cfg: ProcessJob,
    enabled: bool,
    shared: Shared,
    returned: Option<Arc<Notify>>,
    wake: Arc<Notify>,
    after: Option<tokio::task::JoinHandle<()>>,
) -> TaskHandle {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let clear = Arc::new(Notify::new());
    let refresh = Arc::new(AtomicBool::new(false));
    shared.registry.set(JobStatus {
        name: name.clone(),
        kind: "process".into(),
        queue: cfg.queue.display().to_string(),
        state: if enabled {
            JobState::Idle
        } else {
            JobState::Disabled
        },
        next_seq: None,
        queued: None,
        last_success: None,
        consecutive_failures: 0,
        jobs_succeeded: 0,
        jobs_failed: 0,
        jobs_refused: 0,
        runs: 0,
        runs_failed: 0,
    });
    init_metrics(&name);
    set_gauges(&name, None, false, false);
    // The task's log context. Instrumented, not entered: an entered span
    // held across an await would lend its fields to whatever else runs on
    // the thread meanwhile.
    let span = info_span!("job", job = %name, queue = %cfg.queue.display());
    let run = enabled.then(|| {
        task(
            name,
            cfg,
            shared,
            returned,
            wake.clone(),
            stop_rx,
            stop_flag.clone(),
            clear.clone(),
            refresh.clone(),
        )
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

fn set_gauges(name: &str, queued: Option<u64>, blocked: bool, error: bool) {
    if let Some(q) = queued {
        metrics::gauge!("fspl_queue_jobs", "job" => name.to_string()).set(q as f64);
    }
    metrics::gauge!("fspl_queue_blocked", "job" => name.to_string()).set(if blocked {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("fspl_queue_error", "job" => name.to_string()).set(if error {
        1.0
    } else {
        0.0
    });
}

#[allow(clippy::too_many_arguments)]
async fn task(
    name: String,
    cfg: ProcessJob,
    shared: Shared,
    returned: Option<Arc<Notify>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    stop_flag: Arc<AtomicBool>,
    clear: Arc<Notify>,
    refresh: Arc<AtomicBool>,
) {
    let polling = cfg.poll || returned.is_none();
    // The queue's jobs directory came back after going away (removed and
    // re-created): a failure or error state that caused ends at once.
    let back = || async {
        match &returned {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    let mut interval = cfg.poll_min;
    let mut failures: u32 = 0;
    let mut next_run = Instant::now();
    let mut backing_off = false;
    let mut prepared: Option<Arc<Prepared>> = None;
    loop {
        let sleep = tokio::time::sleep_until(next_run.into());
        tokio::select! {
            _ = sleep => {}
            _ = wake.notified(), if !backing_off => {}
            // The queue's directory back, or a clear, while backing off:
            // retry at once, from zero failures.
            _ = back(), if backing_off => {
                info!("queue directory is back; retrying now");
                failures = 0;
                reset_failures(&shared, &name);
                backing_off = false;
                interval = cfg.poll_min;
            }
            _ = clear.notified(), if backing_off => {
                info!("cleared; retrying now");
                failures = 0;
                reset_failures(&shared, &name);
                backing_off = false;
                interval = cfg.poll_min;
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if refresh.swap(false, Ordering::SeqCst) {
            prepared = None;
        }
        let p = match &prepared {
            Some(p) => p.clone(),
            None => match prepare(&cfg) {
                Ok(p) => {
                    let p = Arc::new(p);
                    prepared = Some(p.clone());
                    p
                }
                Err(message) => {
                    // Listen for a clear before the error state shows: a
                    // clear only wakes a job that is waiting for one.
                    let cleared = clear.notified();
                    tokio::pin!(cleared);
                    cleared.as_mut().enable();
                    // A run that could not start: it failed, and at once
                    // puts the job in its error state.
                    failures += 1;
                    count_run(&shared, &name, true, failures);
                    error!(
                        "cannot start processing: {message}; fix it, then `{}` or reload",
                        shared.clear_hint(&name)
                    );
                    shared.registry.update(&name, |s| {
                        s.state = JobState::Error {
                            message: message.clone(),
                        }
                    });
                    set_gauges(&name, None, false, true);
                    tokio::select! {
                        _ = cleared => {}
                        _ = back() => {}
                        _ = stop.changed() => return,
                    }
                    failures = 0;
                    reset_failures(&shared, &name);
                    next_run = Instant::now();
                    continue;
                }
            },
        };
        let permit = tokio::select! {
            p = shared.semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        // A return of the directory before this run is no news to it.
        if let Some(n) = &returned {
            forget_notification(n);
        }
        let (n, sh, sf, pp) = (name.clone(), shared.clone(), stop_flag.clone(), p.clone());
        let r = tokio::task::spawn_blocking(move || run_once(&n, &pp, &sh, &sf)).await;
        drop(permit);
        let Ok(r) = r else {
            return;
        };
        match r.result {
            Ok(summary) => {
                failures = 0;
                count_run(&shared, &name, false, 0);
                backing_off = false;
                if summary.processed > 0 {
                    interval = cfg.poll_min;
                } else {
                    interval = interval.mul_f64(1.3).min(cfg.poll_max);
                }
                let state = match r.waiting {
                    Some((seq, detail)) => JobState::Waiting { seq, detail },
                    None => JobState::Idle,
                };
                let blocked = matches!(state, JobState::Waiting { .. });
                shared.registry.update(&name, |s| {
                    s.state = state;
                    s.next_seq = r.next_seq;
                    s.queued = r.queued;
                    s.consecutive_failures = 0;
                });
                set_gauges(&name, r.queued, blocked, false);
                next_run = Instant::now()
                    + if polling {
                        interval
                    } else {
                        shared.rescan_interval
                    };
            }
            Err(ProcessError::Queue(fspl_queue::QueueError::Locked { holder, .. })) => {
                debug!(
                    ?holder,
                    "queue locked by another process; trying again shortly"
                );
                shared
                    .registry
                    .update(&name, |s| s.state = JobState::Locked { pid: holder });
                next_run = Instant::now() + Duration::from_secs(1);
            }
            Err(e) => {
                failures += 1;
                // A job whose command could not be started (or waited
                // for) failed too, though no observer saw it finish.
                match &e {
                    ProcessError::Spawn { .. } => count_job_failure(&shared, &name, NOT_STARTED),
                    ProcessError::Wait { .. } => count_job_failure(&shared, &name, "failed"),
                    _ => {}
                }
                count_run(&shared, &name, true, failures);
                let message = describe_failure(&e);
                shared.registry.update(&name, |s| {
                    s.next_seq = r.next_seq;
                    s.queued = r.queued;
                });
                if failures >= cfg.max_failures {
                    let cleared = clear.notified();
                    tokio::pin!(cleared);
                    cleared.as_mut().enable();
                    error!(
                        failures,
                        "stopped after {failures} failures in a row: {message}; `{}` resumes",
                        shared.clear_hint(&name)
                    );
                    shared.registry.update(&name, |s| {
                        s.state = JobState::Error {
                            message: message.clone(),
                        }
                    });
                    set_gauges(&name, r.queued, true, true);
                    tokio::select! {
                        _ = cleared => {
                            info!("error cleared; resuming");
                            failures = 0;
                            backing_off = false;
                            interval = cfg.poll_min;
                            shared.registry.update(&name, |s| s.state = JobState::Idle);
                            reset_failures(&shared, &name);
                            set_gauges(&name, r.queued, false, false);
                            next_run = Instant::now();
                        }
                        _ = back() => {
                            info!("queue directory is back; resuming");
                            failures = 0;
                            backing_off = false;
                            interval = cfg.poll_min;
                            shared.registry.update(&name, |s| s.state = JobState::Idle);
                            reset_failures(&shared, &name);
                            set_gauges(&name, r.queued, false, false);
                            next_run = Instant::now();
                        }
                        _ = stop.changed() => return,
                    }
                } else {
                    interval = interval.mul_f64(1.5).min(cfg.poll_max.max(interval));
                    let delay = cfg
                        .poll_min
                        .mul_f64(1.5f64.powi(failures as i32 - 1))
                        .min(cfg.poll_max.max(cfg.poll_min));
                    warn!(
                        failures,
                        retry_in_s = delay.as_secs_f64(),
                        "run failed: {message}"
                    );
                    let retry_at = fspl_format::rfc3339_utc(fspl_format::Ctime {
                        secs: unix_now() + delay.as_secs() as i64,
                        nanos: 0,
                    });
                    shared.registry.update(&name, |s| {
                        s.state = JobState::Retrying {
                            message: message.clone(),
                            failures,
                            retry_at,
                        }
                    });
                    set_gauges(&name, r.queued, true, false);
                    backing_off = true;
                    next_run = Instant::now() + delay;
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

/// The jobs dir a task watches.
pub fn jobs_dir(cfg: &ProcessJob) -> std::path::PathBuf {
    Queue::new(&cfg.queue).jobs_dir().to_path_buf()
}

/// What keeps a job from running, key by key (for `daemon --check`): its
/// queue (present and processable; locked by someone else is fine), its
/// trust file, its identities, its command (looked up in `path_var`, the
/// PATH the daemon runs commands with). Values the configuration already
/// found wrong (left empty) are not looked at again.
pub fn check(cfg: &ProcessJob, path_var: Option<&std::ffi::OsStr>) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if !cfg.queue.as_os_str().is_empty() {
        match Queue::new(&cfg.queue).lock() {
            Ok(_) | Err(fspl_queue::QueueError::Locked { .. }) => {}
            Err(e) => problems.push(("queue", fspl_queue::display_chain(&e))),
        }
    }
    if let Some(t) = &cfg.trust
        && let Err(e) = fspl_trust::TrustFile::load(t)
    {
        problems.push(("trust", fspl_queue::display_chain(&e)));
    }
    if !cfg.identity.is_empty()
        && let Err(e) = fspl_trust::crypt::Identities::load(&cfg.identity)
    {
        problems.push(("identity", fspl_queue::display_chain(&e)));
    }
    if !cfg.command.is_empty()
        && let Err(why) = crate::program::find(&cfg.command, path_var)
    {
        problems.push(("command", why));
    }
    problems
}
