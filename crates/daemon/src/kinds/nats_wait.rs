//! `type = "nats-wait"`: `fspl nats wait` as a daemon job (docs/nats.md,
//! "As a daemon job"). Its keys are the command's flags, spelled out; it
//! runs the same function (`fspl_nats::remaphore::node::wait_observed`),
//! so the checks, the filters, the command's `SCRIPT... VERB PAYLOAD`
//! argv and REMAPHORE_* environment, the replies to requests and durable
//! mode are those of the command.
//!
//! One long run waits for messages and runs the command for each matching
//! one, one at a time, until the daemon stops or reloads the job. A command
//! that fails (nonzero exit, a signal, the `timeout`) ends the run as a
//! counted failure: the daemon's backoff, then the error state after
//! `max_failures`; in durable mode that message is not acknowledged and
//! comes again to the next run. A lost connection to the server ends it
//! as a transient failure (backoff, retried for as long as it takes); a
//! remaphore configuration that does not load, or credentials refused,
//! as a permanent one (the error state at once).
//!
//! `fspl status` shows the remaphore configuration as the job's queue, the
//! subject and servers in `from`, OK and FAILED as the commands that
//! succeeded and failed, REFUSED the messages dropped by the checks; the
//! metric `fspl_nats_wait_messages_total{result="success"|"failed"|"dropped"}`
//! counts the same.

use std::ffi::OsString;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use fspl_nats::remaphore::Message;
use fspl_nats::remaphore::config::Config;
use fspl_nats::remaphore::node::{
    self, Common, DestFilter, Observer, Reject, RemaphoreError, WaitArgs,
};
use fspl_queue::exec::KillHandle;
use fspl_trust::PublicKey;
use tracing::{info, info_span, warn};

use super::Resource;
use crate::config::{Checker, Keys, boolean, path_value, secs, string, strings};
use crate::hooks::{Context as HookContext, Event};
use crate::state::{JobState, JobStatus, now_rfc3339};
use crate::supervisor::{FailureClass, Kind, Outcome, RunContext, RunReport, WatchSpec, unix_now};

/// The keys of a `type = "nats-wait"` job of its own.
pub const KEYS: &[&str] = &[
    "config",
    "command",
    "destination",
    "any_destination",
    "verbs",
    "pubkey",
    "uuid",
    "subject",
    "durable",
    "state",
    "timeout",
];

/// Every `result` of `fspl_nats_wait_messages_total`.
pub const RESULTS: &[&str] = &["success", "failed", "dropped"];

/// `type = "nats-wait"`.
#[derive(Clone, Debug, PartialEq)]
pub struct NatsWaitJob {
    /// The remaphore configuration (`-c`).
    pub config: PathBuf,
    /// The command: `command... VERB PAYLOAD` runs per message.
    pub command: Vec<OsString>,
    /// `-D DEST`: the message's destination pattern must be this.
    pub destination: Option<String>,
    /// `-d`: any destination.
    pub any_destination: bool,
    /// `-v`: only these verbs (empty: any).
    pub verbs: Vec<String>,
    /// `-p`: only from this sender.
    pub pubkey: Option<PublicKey>,
    /// `-u`: only the message(s) with this uuid.
    pub uuid: Option<String>,
    /// `-S`: the subject suffix (default `all`).
    pub subject: Option<String>,
    /// `--durable`.
    pub durable: bool,
    /// `--state`: the durable record of handled messages.
    pub state: Option<PathBuf>,
    /// Kill the command after this long (a failure).
    pub timeout: Option<Duration>,
}

/// A subject suffix NATS accepts for publishing: dot-separated tokens,
/// none empty, no wildcard, no white space.
fn subject_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be empty (leave it out for \"all\")");
    }
    if s.split('.').any(str::is_empty) {
        return Some("has an empty token (a leading, trailing or doubled \".\")");
    }
    if s.contains(['*', '>']) {
        return Some("contains a wildcard (\"*\" or \">\"): messages are sent on one subject");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains white space or a control character");
    }
    None
}

impl NatsWaitJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> NatsWaitJob {
        c.require(k, table, l, "config", "\"/etc/remaphore/remaphore.conf\"");
        c.require(k, table, l, "command", "[\"/usr/local/bin/on-message\"]");
        let config = c.get(k, "config", l, path_value).unwrap_or_default();
        let command = c
            .get(k, "command", l, super::process::command_argv)
            .unwrap_or_default()
            .into_iter()
            .map(OsString::from)
            .collect();
        let destination = c.get(k, "destination", l, |v| {
            let s = string(v)?;
            if s.is_empty() {
                return Err((
                    v.span(),
                    "must not be empty (leave it out to match this node's destination)".into(),
                ));
            }
            if s.contains(',') {
                return Err((
                    v.span(),
                    format!(
                        "{s:?} contains a comma: no message's destination can (it would never match)"
                    ),
                ));
            }
            Ok(s)
        });
        let any_destination = c.get(k, "any_destination", l, boolean).unwrap_or(false);
        if any_destination && destination.is_some() {
            c.at(
                &k["any_destination"].0,
                format!("{l}any_destination: not with destination (one or the other)"),
            );
        }
        let verbs = c
            .get(k, "verbs", l, |v| {
                let verbs = strings(v, "[\"deploy\", \"ping\"]")?;
                if verbs.iter().any(|s| s.trim().is_empty() || s.contains(',')) {
                    return Err((
                        v.span(),
                        "a verb may be neither empty nor contain a comma".into(),
                    ));
                }
                Ok(verbs)
            })
            .unwrap_or_default();
        let pubkey = c.get(k, "pubkey", l, |v| {
            let s = string(v)?;
            PublicKey::parse(&s)
                .map_err(|e| (v.span(), format!("{s:?} is not a base58 public key: {e}")))
        });
        let uuid = c.get(k, "uuid", l, |v| {
            let s = string(v)?;
            if s.is_empty() {
                return Err((v.span(), "must not be empty (leave it out for any)".into()));
            }
            Ok(s)
        });
        let subject = c.get(k, "subject", l, |v| {
            let s = string(v)?;
            match subject_problem(&s) {
                Some(why) => Err((v.span(), format!("{s:?} {why}"))),
                None => Ok(s),
            }
        });
        let durable = c.get(k, "durable", l, boolean).unwrap_or(false);
        let state = c.get(k, "state", l, path_value);
        if state.is_some() && !durable {
            c.at(
                &k["state"].0,
                format!("{l}state: only with durable = true (it records the messages handled through JetStream)"),
            );
        }
        let timeout = c.get(k, "timeout", l, |v| secs(v, 1));
        NatsWaitJob {
            config,
            command,
            destination,
            any_destination,
            verbs,
            pubkey,
            uuid,
            subject,
            durable,
            state,
            timeout,
        }
    }

    /// Nothing: waiters share a subject. (Two durable jobs of one
    /// destination share its consumer: each message goes to one of them.)
    pub fn resource(&self) -> Option<Resource> {
        None
    }

    /// The destination filter, as `fspl nats wait` makes it.
    fn dest(&self) -> DestFilter {
        match (&self.destination, self.any_destination) {
            (_, true) => DestFilter::Any,
            (Some(d), false) => DestFilter::Exact(d.clone()),
            (None, false) => DestFilter::Local,
        }
    }

    /// For `daemon --check`: the remaphore configuration loads, and can
    /// let a message through; the command is there.
    pub fn check(&self, path_var: Option<&std::ffi::OsStr>) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.config.as_os_str().is_empty() {
            match Config::load(&self.config) {
                Err(e) => problems.push(("config", fspl_queue::display_chain(&e))),
                Ok(cfg) => problems.extend(self.check_against(&cfg)),
            }
        }
        if let Some(program) = self.command.first()
            && let Err(why) = crate::program::find(program, path_var)
        {
            problems.push(("command", why));
        }
        problems
    }

    /// What the loaded remaphore configuration makes of the filters.
    fn check_against(&self, cfg: &Config) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.dest() == DestFilter::Local && cfg.destination.contains('*') {
            problems.push((
                "config",
                format!(
                    "{}: destination {:?} contains \"*\": it matches no message (set destination or any_destination in the job to filter otherwise)",
                    self.config.display(),
                    cfg.destination
                ),
            ));
        }
        if let Some(k) = &self.pubkey
            && cfg.peer(k).is_none()
        {
            problems.push((
                "pubkey",
                format!(
                    "{} is not a [ Peers ] key of {}: no message from it would pass the checks",
                    k.to_base58(),
                    self.config.display()
                ),
            ));
        }
        problems
    }

    fn from(&self, cfg: &Config) -> String {
        format!(
            "{} on {}",
            cfg.message_subject(self.subject.as_deref()),
            cfg.servers.join(",")
        )
    }
}

/// What a run needs: the remaphore configuration, loaded, and the wait's
/// arguments.
pub struct Prepared {
    common: Common,
    args: WaitArgs,
}

/// Reports the wait's progress to the status, the metrics, the log and
/// the hooks, and fails the run when the command fails.
struct DaemonObserver<'a> {
    ctx: &'a RunContext,
    job: &'a NatsWaitJob,
    cfg: &'a Config,
    running: Option<KillHandle>,
}

impl DaemonObserver<'_> {
    fn who(&self, m: &Message) -> String {
        match self.cfg.peer(&m.sender) {
            Some(p) => p.destination.clone(),
            None => m.sender.to_base58(),
        }
    }

    fn forget_command(&mut self) {
        if self.running.take().is_some()
            && let Ok(mut r) = self.ctx.shared.running.lock()
        {
            r.remove(&self.ctx.name);
        }
    }

    fn count(&self, result: &'static str) {
        metrics::counter!("fspl_nats_wait_messages_total", "fspl_job" => self.ctx.name.clone(), "result" => result)
            .increment(1);
    }
}

impl Observer for DaemonObserver<'_> {
    fn ready(&mut self, _subject: &str) {
        // Connected again after a lost connection: no longer failing.
        self.ctx.recovered(false);
        let from = self.job.from(self.cfg);
        self.ctx.update(|s| {
            s.from = Some(from);
            s.state = JobState::Idle;
        });
    }

    fn dropped(&mut self, _why: &Reject) {
        self.count("dropped");
        self.ctx.update(|s| s.jobs_refused += 1);
    }

    fn started(&mut self, m: &Message) {
        let doing = format!(
            "running {} for {:?} from {}",
            self.job.command[0].to_string_lossy(),
            m.verb,
            self.who(m)
        );
        let since = now_rfc3339();
        self.ctx
            .update(|s| s.state = JobState::Busy { doing, since });
    }

    fn spawned(&mut self, h: &KillHandle) {
        self.running = Some(h.clone());
        if let Ok(mut r) = self.ctx.shared.running.lock() {
            r.insert(self.ctx.name.clone(), h.clone());
        }
    }

    fn finished(&mut self, m: &Message, code: i32, ran: Duration) -> Result<(), String> {
        self.forget_command();
        let name = &self.ctx.name;
        let ms = ran.as_millis() as u64;
        let what = format!(
            "the message {:?} from {} (uuid {})",
            m.verb,
            self.who(m),
            fspl_nats::remaphore::wire::hex(&m.uuid)
        );
        if code == 0 {
            self.ctx.recovered(true);
            self.count("success");
            info!(duration_ms = ms, verb = %m.verb, "command succeeded for {what}");
            metrics::gauge!("fspl_last_success_timestamp_seconds", "fspl_job" => name.clone())
                .set(unix_now() as f64);
            let now = now_rfc3339();
            self.ctx.update(|s| {
                s.jobs_succeeded += 1;
                s.last_success = Some(now);
                s.lag.last_success_unix = Some(unix_now());
                s.state = JobState::Idle;
            });
            self.ctx.hooks.fire(
                Event::Success,
                HookContext {
                    exit_status: Some(0),
                    duration: Some(ran),
                    ..Default::default()
                },
            );
            return Ok(());
        }
        self.count("failed");
        self.ctx.update(|s| s.jobs_failed += 1);
        let program = self.job.command[0].to_string_lossy();
        let why = if code > 0 {
            format!("{program} exited with status {code} for {what}")
        } else {
            format!(
                "{program} did not exit normally for {what} (it could not be started, was killed, or died by a signal)"
            )
        };
        let again = if self.job.durable {
            "; it comes again"
        } else {
            ""
        };
        warn!(duration_ms = ms, verb = %m.verb, "command failed: {why}{again}");
        self.ctx.hooks.fire(
            Event::Failure,
            HookContext {
                exit_status: (code >= 0).then_some(code),
                reason: Some(why.clone()),
                duration: Some(ran),
                ..Default::default()
            },
        );
        Err(format!("{why}{again}"))
    }

    fn fail_on_disconnect(&self) -> bool {
        true
    }
}

impl Kind for NatsWaitJob {
    type Prepared = Prepared;

    fn name(&self) -> &'static str {
        "nats-wait"
    }

    fn watched_noun(&self) -> &'static str {
        "remaphore configuration"
    }

    fn activity(&self) -> &'static str {
        "waiting for messages"
    }

    fn status(&self, name: &str) -> JobStatus {
        JobStatus::idle(name, "nats-wait", self.config.display().to_string())
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "nats-wait", config = %self.config.display())
    }

    fn init_metrics(&self, name: &str) {
        for r in RESULTS {
            metrics::counter!("fspl_nats_wait_messages_total", "fspl_job" => name.to_string(), "result" => *r)
                .increment(0);
        }
    }

    /// Per message, by the run itself.
    fn fires_job_hooks(&self) -> bool {
        true
    }

    /// None: a run waits for messages itself, for as long as the job runs.
    fn watch(&self) -> Option<WatchSpec> {
        None
    }

    fn prepare(&self) -> Result<Prepared, String> {
        let config = Config::load(&self.config).map_err(|e| fspl_queue::display_chain(&e))?;
        if let Some((_, why)) = self.check_against(&config).into_iter().next() {
            return Err(why);
        }
        Ok(Prepared {
            common: Common {
                config,
                subject: self.subject.clone(),
                durable: self.durable,
                state: self.state.clone(),
            },
            args: WaitArgs {
                dest: self.dest(),
                once: false,
                sender: self.pubkey,
                uuid: self.uuid.clone().map(String::into_bytes),
                verbs: self.verbs.clone(),
                timeout: None,
                script_timeout: self.timeout,
                script: self.command.clone(),
            },
        })
    }

    fn run(&self, p: &Prepared, ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let mut obs = DaemonObserver {
            ctx,
            job: self,
            cfg: &p.common.config,
            running: None,
        };
        // Stop between messages (a command under way finishes first, or
        // is killed by the daemon after the shutdown grace).
        let stop = async {
            while !ctx.should_stop() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let result =
            fspl_nats::runtime::block_on(node::wait_observed(&p.common, &p.args, &mut obs, stop));
        obs.forget_command();
        drop(obs);
        let failed = |message: String, class: FailureClass| {
            if class != FailureClass::Counted {
                ctx.hooks.fire(
                    Event::Failure,
                    HookContext {
                        reason: Some(message.clone()),
                        ..Default::default()
                    },
                );
            }
            RunReport {
                outcome: Outcome::Failed { message, class },
                next_seq: None,
                queued: None,
            }
        };
        let done = |worked| RunReport {
            outcome: Outcome::Done {
                worked,
                waiting: None,
            },
            next_seq: None,
            queued: None,
        };
        match result {
            Err(e) => failed(fspl_queue::display_chain(&e), FailureClass::Permanent),
            Ok(Ok(received)) => done(received),
            // A command killed at shutdown: not a failure of the job.
            Ok(Err(RemaphoreError::Command(_))) if ctx.should_stop() => done(false),
            Ok(Err(e)) => {
                let class = match &e {
                    RemaphoreError::Command(_) => FailureClass::Counted,
                    RemaphoreError::Nats(n) if n.is_transient() => FailureClass::Transient,
                    RemaphoreError::Disconnected(_) | RemaphoreError::Runtime(_) => {
                        FailureClass::Transient
                    }
                    _ => FailureClass::Permanent,
                };
                failed(fspl_queue::display_chain(&e), class)
            }
        }
    }
}
