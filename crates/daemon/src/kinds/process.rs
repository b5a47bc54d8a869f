//! `type = "process"`: run a queue, with the same processing loop as
//! `queue-process` (fspl_queue::process), when jobs arrive. The job holds
//! its queue's lock while it runs (as `queue-process` does): two process
//! jobs on one queue are refused.

use std::ffi::OsString;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fspl_queue::Queue;
use fspl_queue::decoder::Decoder;
use fspl_queue::exec::{KillHandle, Outcome as ExecOutcome};
use fspl_queue::process::{
    JobReport, Observer, OnError, OptionNames, OrderBy, OutputTo, ProcessError, ProcessOptions,
    StopReason, Summary, process,
};
use fspl_queue::status::State;
use tracing::{debug, info, info_span, warn};

use super::Resource;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::{Bad, Checker, Keys, boolean, one_of, path_value, secs, string, strings};
use crate::hooks::{Context as HookContext, Event};
use crate::state::{JobState, JobStatus, now_rfc3339};
use crate::supervisor::{FailureClass, Kind, Outcome, RunContext, RunReport, WatchSpec, unix_now};

/// The keys of a `type = "process"` job of its own.
pub const KEYS: &[&str] = &[
    "queue",
    "command",
    "decoder",
    "order_by",
    "on_error",
    "never_delete",
    "output_to",
    "allow_job_params",
    "ignore_payload",
    "timeout",
    "trust",
    "identity",
    "keep_output",
];

/// A `command` key: the argv, its program an absolute path or a bare
/// name to look up in PATH (also `nats-wait`'s).
pub(crate) fn command_argv(v: &Spanned<DeValue<'_>>) -> Result<Vec<String>, Bad> {
    let argv = strings(v, "[\"/usr/local/bin/handler\", \"--flag\"]")?;
    let Some(program) = argv.first() else {
        return Err((v.span(), "must name a program".into()));
    };
    if program.is_empty() {
        return Err((
            v.span(),
            "must name a program (the first element is empty)".into(),
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err((v.span(), "contains a NUL character".into()));
    }
    if program.contains('/') && !program.starts_with('/') {
        return Err((
            v.span(),
            format!(
                "{program:?} is a relative path: give an absolute path, or a bare name to look up in PATH (a relative path would depend on the directory the daemon happens to be started in)"
            ),
        ));
    }
    Ok(argv)
}

/// `type = "process"`: run a queue, like `queue-process`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessJob {
    pub queue: PathBuf,
    /// The program: an absolute path, or a bare name looked up in PATH.
    pub command: OsString,
    pub args: Vec<OsString>,
    pub decoder: Option<OsString>,
    pub order_by: OrderBy,
    pub on_error: OnError,
    pub never_delete: bool,
    pub output_to: OutputTo,
    pub allow_job_params: bool,
    pub ignore_payload: bool,
    pub timeout: Option<Duration>,
    pub trust: Option<PathBuf>,
    pub identity: Vec<PathBuf>,
    /// Keep rules for the queue's `.out` files (`output_to =
    /// "saveboth"`), applied after each run (fspl-prune).
    pub keep_output: Option<super::prune::KeepRules>,
}

impl ProcessJob {
    /// The job's own keys (every problem recorded; defaults in place of
    /// bad values).
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> ProcessJob {
        c.require(k, table, l, "queue", "\"/srv/fspl/backups\"");
        c.require(k, table, l, "command", "[\"/usr/local/bin/handler\"]");
        let queue = c.get(k, "queue", l, path_value).unwrap_or_default();
        let argv = c.get(k, "command", l, command_argv).unwrap_or_default();
        let decoder = c.get(k, "decoder", l, |v| {
            let s = string(v)?;
            if s.trim().is_empty() {
                return Err((v.span(), "must not be empty (leave it out for none)".into()));
            }
            Ok(OsString::from(s))
        });
        let order_by = match c
            .get(k, "order_by", l, |v| one_of(v, &["sequence", "timestamp"]))
            .as_deref()
        {
            Some("timestamp") => OrderBy::Timestamp,
            _ => OrderBy::Sequence,
        };
        let on_error = match c
            .get(k, "on_error", l, |v| {
                one_of(v, &["retry", "delete", "leave"])
            })
            .as_deref()
        {
            Some("delete") => OnError::Delete,
            Some("leave") => OnError::Leave,
            _ => OnError::Retry,
        };
        let output_to = match c
            .get(k, "output_to", l, |v| one_of(v, &["passboth", "saveboth"]))
            .as_deref()
        {
            Some("saveboth") => OutputTo::SaveBoth,
            _ => OutputTo::PassBoth,
        };
        let mut flag = |key: &str| c.get(k, key, l, boolean).unwrap_or(false);
        let never_delete = flag("never_delete");
        let allow_job_params = flag("allow_job_params");
        let ignore_payload = flag("ignore_payload");
        let timeout = c.get(k, "timeout", l, |v| secs(v, 1));
        let trust = c.get(k, "trust", l, path_value);
        let identity = c
            .get(k, "identity", l, |v| {
                Ok(strings(v, "[\"/etc/fspl/host.key\"]")?
                    .into_iter()
                    .map(PathBuf::from)
                    .collect())
            })
            .unwrap_or_default();
        let keep_output = c.get(k, "keep_output", l, super::prune::keep_rules);
        if keep_output.is_some() && output_to != OutputTo::SaveBoth {
            c.at(
                &k["keep_output"].0,
                format!("{l}keep_output: only with output_to = \"saveboth\" (there are no .out files to prune otherwise)"),
            );
        }
        let (command, args) = match argv.split_first() {
            Some((c, rest)) => (OsString::from(c), rest.iter().map(OsString::from).collect()),
            None => (OsString::new(), Vec::new()),
        };
        ProcessJob {
            queue,
            command,
            args,
            decoder,
            order_by,
            on_error,
            never_delete,
            output_to,
            allow_job_params,
            ignore_payload,
            timeout,
            trust,
            identity,
            keep_output,
        }
    }

    /// The queue's lock: one process job per queue.
    pub fn resource(&self) -> Option<Resource> {
        (!self.queue.as_os_str().is_empty()).then(|| Resource {
            path: self.queue.clone(),
            key: "queue",
            shown: self.queue.display().to_string(),
            noun: "queue",
            what: "its lock",
        })
    }

    /// The jobs dir the job watches.
    pub fn jobs_dir(&self) -> PathBuf {
        Queue::new(&self.queue).jobs_dir().to_path_buf()
    }

    /// What keeps the job from running, key by key (for `daemon --check`):
    /// its queue (present and processable; locked by someone else is
    /// fine), its trust file, its identities, its command (looked up in
    /// `path_var`, the PATH the daemon runs commands with). Values the
    /// configuration already found wrong (left empty) are not looked at
    /// again.
    pub fn check(&self, path_var: Option<&std::ffi::OsStr>) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.queue.as_os_str().is_empty() {
            match Queue::new(&self.queue).lock() {
                Ok(_) | Err(fspl_queue::QueueError::Locked { .. }) => {}
                Err(e) => problems.push(("queue", fspl_queue::display_chain(&e))),
            }
        }
        if let Some(t) = &self.trust
            && let Err(e) = fspl_trust::TrustFile::load(t)
        {
            problems.push(("trust", fspl_queue::display_chain(&e)));
        }
        if !self.identity.is_empty()
            && let Err(e) = fspl_trust::crypt::Identities::load(&self.identity)
        {
            problems.push(("identity", fspl_queue::display_chain(&e)));
        }
        if !self.command.is_empty()
            && let Err(why) = crate::program::find(&self.command, path_var)
        {
            problems.push(("command", why));
        }
        problems
    }
}

/// Every `result` of `fspl_jobs_processed_total`: an [`ExecOutcome`]'s
/// label, or `not-started` (the command could not be started).
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

/// Count one job attempt that did not succeed, by its result.
fn count_job_failure(ctx: &RunContext, result: &'static str) {
    metrics::counter!("fspl_jobs_processed_total", "fspl_job" => ctx.name.clone(), "result" => result)
        .increment(1);
    ctx.update(|s| s.jobs_failed += 1);
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

/// Reports the processing loop's progress to the status, the metrics and
/// the log.
struct DaemonObserver<'a> {
    ctx: &'a RunContext,
    seq_span: Option<tracing::span::EnteredSpan>,
}

impl Observer for DaemonObserver<'_> {
    fn planned(&mut self, ready: u64) {
        self.ctx
            .update(|s| s.queued = Some(ready.max(s.queued.unwrap_or(0))));
    }

    fn started(&mut self, job: &JobReport<'_>) {
        self.seq_span = Some(info_span!("seq", seq = job.seq).entered());
        debug!(file = ?job.name, "job started");
        let since = now_rfc3339();
        self.ctx.update(|s| {
            s.state = JobState::Running {
                seq: job.seq,
                since,
            };
            s.next_seq = Some(job.seq);
        });
    }

    fn spawned(&mut self, command: &KillHandle) {
        if let Ok(mut r) = self.ctx.shared.running.lock() {
            r.insert(self.ctx.name.clone(), command.clone());
        }
    }

    fn reaped(&mut self) {
        if let Ok(mut r) = self.ctx.shared.running.lock() {
            r.remove(&self.ctx.name);
        }
    }

    fn finished(&mut self, job: &JobReport<'_>, outcome: &ExecOutcome, elapsed: Duration) {
        let name = &self.ctx.name;
        if let Ok(mut r) = self.ctx.shared.running.lock() {
            r.remove(name);
        }
        let ms = elapsed.as_millis() as u64;
        metrics::counter!("fspl_jobs_processed_total", "fspl_job" => name.clone(), "result" => outcome.label())
            .increment(1);
        metrics::histogram!("fspl_job_duration_seconds", "fspl_job" => name.clone())
            .record(elapsed.as_secs_f64());
        if outcome.is_success() {
            info!(duration_ms = ms, "job succeeded");
            self.ctx.hooks.fire(
                Event::Success,
                HookContext {
                    seq: Some(job.seq),
                    exit_status: Some(0),
                    duration: Some(elapsed),
                    file: Some(job.name.to_string_lossy().into_owned()),
                    ..Default::default()
                },
            );
            let now = now_rfc3339();
            metrics::gauge!("fspl_last_success_timestamp_seconds", "fspl_job" => name.clone())
                .set(unix_now() as f64);
            self.ctx.update(|s| {
                s.last_success = Some(now);
                s.lag.last_success_unix = Some(unix_now());
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
            self.ctx.update(|s| s.jobs_failed += 1);
            self.ctx.hooks.fire(
                Event::Failure,
                HookContext {
                    seq: Some(job.seq),
                    exit_status: match outcome {
                        ExecOutcome::Exited(st) => st.code().or_else(|| {
                            std::os::unix::process::ExitStatusExt::signal(st).map(|s| 128 + s)
                        }),
                        _ => None,
                    },
                    reason: Some(outcome.to_string()),
                    duration: Some(elapsed),
                    file: Some(job.name.to_string_lossy().into_owned()),
                },
            );
        }
        self.seq_span = None;
    }

    fn refused(&mut self, seq: Option<u64>, name: &std::ffi::OsStr, reason: &str) {
        metrics::counter!("fspl_jobs_refused_total", "fspl_job" => self.ctx.name.clone())
            .increment(1);
        self.ctx.update(|s| s.jobs_refused += 1);
        self.ctx.hooks.fire(
            Event::Refused,
            HookContext {
                seq,
                reason: Some(reason.to_string()),
                file: Some(name.to_string_lossy().into_owned()),
                ..Default::default()
            },
        );
    }

    fn option_names(&self) -> OptionNames {
        OptionNames::ConfigKeys
    }

    fn should_stop(&mut self) -> bool {
        self.ctx.should_stop()
    }
}

/// The options of one run, built once (trust file and identities loaded).
pub struct Prepared {
    queue: Queue,
    opts: ProcessOptions,
}

impl Kind for ProcessJob {
    type Prepared = Prepared;

    fn name(&self) -> &'static str {
        "process"
    }

    fn watched_noun(&self) -> &'static str {
        "queue directory"
    }

    fn activity(&self) -> &'static str {
        "processing"
    }

    fn status(&self, name: &str) -> JobStatus {
        JobStatus::idle(name, "process", self.queue.display().to_string())
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "process", queue = %self.queue.display())
    }

    fn init_metrics(&self, name: &str) {
        for r in JOB_RESULTS {
            metrics::counter!("fspl_jobs_processed_total", "fspl_job" => name.to_string(), "result" => *r)
                .increment(0);
        }
        metrics::counter!("fspl_jobs_refused_total", "fspl_job" => name.to_string()).increment(0);
    }

    fn fires_job_hooks(&self) -> bool {
        true
    }

    fn lag_queue(&self) -> Option<PathBuf> {
        Some(self.queue.clone())
    }

    fn watch(&self) -> Option<WatchSpec> {
        Some(WatchSpec {
            dir: self.jobs_dir(),
            ready: Some(Queue::new(&self.queue).lock_path()),
        })
    }

    fn prepare(&self) -> Result<Prepared, String> {
        let identities = if self.identity.is_empty() {
            None
        } else {
            Some(Arc::new(
                fspl_trust::crypt::Identities::load(&self.identity)
                    .map_err(|e| fspl_queue::display_chain(&e))?,
            ))
        };
        let trust = match &self.trust {
            None => None,
            Some(p) => Some(Arc::new(
                fspl_trust::TrustFile::load(p).map_err(|e| fspl_queue::display_chain(&e))?,
            )),
        };
        let queue = Queue::new(&self.queue).with_identities(identities);
        queue.lock().map(drop).or_else(|e| match e {
            fspl_queue::QueueError::Locked { .. } => Ok(()),
            e => Err(fspl_queue::display_chain(&e)),
        })?;
        Ok(Prepared {
            queue,
            opts: ProcessOptions {
                command: self.command.clone(),
                args: self.args.clone(),
                decoder: self.decoder.clone().map(Decoder::new),
                order_by: self.order_by,
                on_error: self.on_error,
                never_delete: self.never_delete,
                maxjobs: None,
                output_to: self.output_to,
                allow_job_params: self.allow_job_params,
                ignore_payload: self.ignore_payload,
                timeout: self.timeout,
                trust,
            },
        })
    }

    /// One `queue-process` run, then a look at the queue for `fspl
    /// status`. Every failure counts towards `max_failures`.
    fn run(&self, p: &Prepared, ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let mut obs = DaemonObserver {
            ctx,
            seq_span: None,
        };
        let result = process(&p.queue, &p.opts, &mut obs);
        drop(obs);
        if let Some(rules) = &self.keep_output {
            let _ = super::prune::prune_logged(
                &self.queue,
                Some(fspl_prune::DirKind::Outputs),
                &rules.rules,
            );
        }
        // What the queue looks like now, for `fspl status` and the metrics.
        let st =
            fspl_queue::status::status(&p.queue, p.opts.decoder.as_ref(), p.opts.trust.as_deref())
                .ok();
        let next_seq = st.as_ref().and_then(|s| s.nextseq);
        let queued = st.as_ref().map(|s| s.jobs - s.below_next);
        let outcome = match result {
            Ok(summary) => Outcome::Done {
                worked: summary.processed > 0,
                waiting: match (&summary, &st) {
                    (
                        Summary {
                            stop: StopReason::Gap { waiting_for, .. },
                            ..
                        },
                        Some(s),
                    ) => Some((
                        *waiting_for,
                        match &s.state {
                            State::Blocked { reason } => reason.clone(),
                            _ => String::new(),
                        },
                    )),
                    _ => None,
                },
            },
            Err(ProcessError::Queue(fspl_queue::QueueError::Locked { holder, .. })) => {
                Outcome::Locked { pid: holder }
            }
            Err(e) => {
                // A job whose command could not be started (or waited
                // for) failed too, though no observer saw it finish.
                match &e {
                    ProcessError::Spawn { .. } => count_job_failure(ctx, NOT_STARTED),
                    ProcessError::Wait { .. } => count_job_failure(ctx, "failed"),
                    _ => {}
                }
                if matches!(e, ProcessError::Spawn { .. } | ProcessError::Wait { .. }) {
                    ctx.hooks.fire(
                        Event::Failure,
                        HookContext {
                            reason: Some(describe_failure(&e)),
                            ..Default::default()
                        },
                    );
                }
                Outcome::Failed {
                    message: describe_failure(&e),
                    class: FailureClass::Counted,
                }
            }
        };
        RunReport {
            outcome,
            next_seq,
            queued,
        }
    }
}
