//! Hooks: commands a job runs when something happens to it
//! (`on_success`, `on_failure`, `on_error_state`, `on_refused`), shared by
//! every kind through the supervisor.
//!
//! A hook is an argv array (no shell), run with the job's context in
//! `FSPL_HOOK_*` variables, stdin from /dev/null, its output discarded
//! (the first line of its stderr is logged when it fails). It runs on a
//! thread of its own: the job never waits for it. One that outlives
//! `hook_timeout` is killed (its whole process group), logged, and
//! forgotten; so is one still running when the daemon stops, once the
//! shutdown grace is over ([`HookGroup`]). At most [`MAX_RUNNING`] hooks
//! run at once in the daemon; an event past that is logged and its hook
//! not run (a hook that hangs never piles up processes).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::config::{Bad, Checker, Keys, secs, strings};

/// Hooks running at once, daemon-wide, at most.
pub const MAX_RUNNING: usize = 32;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A job ran successfully (process), or a run moved jobs (push, pull).
    Success,
    /// A job failed (process), or a run failed (push, pull).
    Failure,
    /// The job entered its error state.
    ErrorState,
    /// A job was refused (moved to rejected/, or refused by the other
    /// side).
    Refused,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Success => "success",
            Event::Failure => "failure",
            Event::ErrorState => "error_state",
            Event::Refused => "refused",
        }
    }
}

/// A job's hooks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hooks {
    pub on_success: Option<Vec<String>>,
    pub on_failure: Option<Vec<String>>,
    pub on_error_state: Option<Vec<String>>,
    pub on_refused: Option<Vec<String>>,
    pub timeout: Duration,
}

/// The default `hook_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn argv(span: std::ops::Range<usize>, all: Vec<String>) -> Result<Vec<String>, Bad> {
    match all.first() {
        None => Err((span, "must name a program".into())),
        Some(p) if p.is_empty() => Err((
            span,
            "must name a program (the first element is empty)".into(),
        )),
        Some(_) if all.iter().any(|a| a.contains('\0')) => {
            Err((span, "contains a NUL character".into()))
        }
        Some(p) if p.contains('/') && !p.starts_with('/') => Err((
            span,
            format!(
                "{p:?} is a relative path: give an absolute path, or a bare name to look up in PATH"
            ),
        )),
        Some(_) => Ok(all),
    }
}

impl Hooks {
    pub(crate) fn parse(c: &mut Checker<'_>, k: &Keys<'_, '_>, l: &str) -> Hooks {
        let mut one = |key: &str| {
            c.get(k, key, l, |v| {
                let all = strings(v, "[\"/usr/local/bin/notify\", \"--flag\"]")?;
                argv(v.span(), all)
            })
        };
        let on_success = one("on_success");
        let on_failure = one("on_failure");
        let on_error_state = one("on_error_state");
        let on_refused = one("on_refused");
        let timeout = c
            .get(k, "hook_timeout", l, |v| secs(v, 1))
            .unwrap_or(DEFAULT_TIMEOUT);
        Hooks {
            on_success,
            on_failure,
            on_error_state,
            on_refused,
            timeout,
        }
    }

    fn command(&self, e: Event) -> Option<&Vec<String>> {
        match e {
            Event::Success => self.on_success.as_ref(),
            Event::Failure => self.on_failure.as_ref(),
            Event::ErrorState => self.on_error_state.as_ref(),
            Event::Refused => self.on_refused.as_ref(),
        }
    }

    pub fn any(&self) -> bool {
        self.on_success.is_some()
            || self.on_failure.is_some()
            || self.on_error_state.is_some()
            || self.on_refused.is_some()
    }
}

/// What a hook is told about the event (each `None` is left out of its
/// environment).
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub seq: Option<u64>,
    pub exit_status: Option<i32>,
    pub reason: Option<String>,
    pub duration: Option<Duration>,
    pub file: Option<String>,
}

/// The hooks of one daemon: how many run, and whether the daemon is
/// done waiting for them (then each is killed with its group).
#[derive(Clone, Debug, Default)]
pub struct HookGroup {
    live: Arc<AtomicUsize>,
    over: Arc<AtomicBool>,
}

impl HookGroup {
    /// Hooks running now.
    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Wait until no hook runs, or `until`.
    pub async fn wait(&self, until: tokio::time::Instant) {
        while self.live() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kill every hook still running (each by its own thread, which
    /// reaps it), and wait up to `wait` for them to be gone.
    pub async fn kill_all(&self, wait: Duration) {
        self.over.store(true, Ordering::SeqCst);
        self.wait(tokio::time::Instant::now() + wait).await;
    }
}

/// A job's hooks and who it is (name, kind, queue), for firing.
#[derive(Clone, Debug)]
pub struct JobHooks {
    pub hooks: Arc<Hooks>,
    pub job: String,
    pub kind: &'static str,
    pub queue: String,
    /// The daemon's hooks, this job's among them.
    pub group: HookGroup,
}

impl JobHooks {
    /// Run the hook of event `e`, if the job has one, without waiting for
    /// it.
    pub fn fire(&self, e: Event, cx: Context) {
        let Some(argv) = self.hooks.command(e) else {
            return;
        };
        if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING {
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            warn!(
                job = %self.job,
                event = e.name(),
                "hook not run: {MAX_RUNNING} hooks are running already"
            );
            return;
        }
        let mut env: Vec<(&'static str, OsString)> = vec![
            ("FSPL_HOOK_EVENT", e.name().into()),
            ("FSPL_HOOK_JOB", self.job.clone().into()),
            ("FSPL_HOOK_KIND", self.kind.into()),
            ("FSPL_HOOK_QUEUE", self.queue.clone().into()),
        ];
        if let Some(s) = cx.seq {
            env.push(("FSPL_HOOK_SEQ", s.to_string().into()));
        }
        if let Some(s) = cx.exit_status {
            env.push(("FSPL_HOOK_EXIT_STATUS", s.to_string().into()));
        }
        if let Some(r) = &cx.reason {
            env.push(("FSPL_HOOK_REASON", r.replace('\0', " ").into()));
        }
        if let Some(d) = cx.duration {
            env.push((
                "FSPL_HOOK_DURATION",
                format!("{:.3}", d.as_secs_f64()).into(),
            ));
        }
        if let Some(f) = &cx.file {
            env.push(("FSPL_HOOK_FILE", f.clone().into()));
        }
        let argv = argv.clone();
        let timeout = self.hooks.timeout;
        let job = self.job.clone();
        let group = self.group.clone();
        group.live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("fspl-hook".into())
            .spawn(move || {
                run(&job, e, &argv, &env, timeout, &group.over);
                group.live.fetch_sub(1, Ordering::SeqCst);
                RUNNING.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.group.live.fetch_sub(1, Ordering::SeqCst);
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            warn!(job = %self.job, event = e.name(), "hook not run: cannot start a thread");
        }
    }
}

fn run(
    job: &str,
    e: Event,
    argv: &[String],
    env: &[(&'static str, OsString)],
    timeout: Duration,
    over: &AtomicBool,
) {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(err) => {
            warn!(job, event = e.name(), hook = %argv[0], "hook could not be started: {err}");
            return;
        }
    };
    // Its stderr, read on the side (at most 4 KiB kept).
    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut s).take(4096).read_to_end(&mut buf);
            // Drain the rest so the hook never blocks on a full pipe.
            let _ = std::io::copy(&mut s, &mut std::io::sink());
            buf
        })
    });
    let pgid = child.id() as i32;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t0.elapsed() >= timeout || over.load(Ordering::SeqCst) => {
                // The whole group: a hook's own children go too.
                // SAFETY: kill(2) with a negative pid signals a process
                // group; no memory is involved.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => {
                warn!(job, event = e.name(), hook = %argv[0], "cannot wait for hook: {err}");
                return;
            }
        }
    };
    let first_line = || {
        stderr
            .and_then(|h| h.join().ok())
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    match status {
        None if t0.elapsed() < timeout => warn!(
            job,
            event = e.name(),
            hook = %argv[0],
            "hook killed: the daemon is stopping"
        ),
        None => warn!(
            job,
            event = e.name(),
            hook = %argv[0],
            timeout_s = timeout.as_secs(),
            "hook killed after its timeout"
        ),
        Some(st) if st.success() => {
            debug!(job, event = e.name(), hook = %argv[0], duration_ms = t0.elapsed().as_millis() as u64, "hook ran")
        }
        Some(st) => warn!(
            job,
            event = e.name(),
            hook = %argv[0],
            "hook failed ({st}): {}",
            fspl_queue::escape_controls(&first_line())
        ),
    }
}
