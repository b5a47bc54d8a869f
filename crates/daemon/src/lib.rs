//! `fspl daemon`: watches many queues and runs them as jobs arrive, each
//! strictly in order (the same loop as `queue-process`), several at once;
//! backs off and enters an error state after repeated failures; serves its
//! state over a control socket (`fspl status`) and, optionally, Prometheus
//! metrics; reloads its configuration on SIGHUP; shuts down gracefully on
//! SIGTERM/SIGINT.
//!
//! Tests start it in-process with [`run`] and a shutdown future.

pub mod config;
pub mod control;
pub mod hooks;
pub mod kinds;
pub mod lag;
pub mod log;
pub mod metric_names;
pub use fspl_queue::program;
pub mod state;
pub mod supervisor;
pub use fspl_control::sockpath;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

pub use config::{Config, ConfigError, JobConfig, JobKind, LogFormat, Problem};
use control::{ControlError, Request, Response};
use state::Registry;
use supervisor::{Shared, TaskHandle};
use watch::Watcher;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start the metrics endpoint on {addr}: {message}")]
    Metrics {
        addr: std::net::SocketAddr,
        message: String,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Check a configuration beyond its syntax: every queue exists and can be
/// processed, every trust file and identity loads, every command is an
/// executable file (a bare name looked up in our PATH, as the daemon will
/// when it runs it). Returns every problem of every job, each with the
/// line of its key.
pub fn check(config: &Config) -> Vec<Problem> {
    let path_var = std::env::var_os("PATH");
    let mut problems = Vec::new();
    for j in &config.jobs {
        for (key, why) in j.kind.check(path_var.as_deref()) {
            problems.push(Problem {
                path: config.path.clone(),
                line: Some(j.lines.of(key)),
                message: format!("job {:?}: {key}: {why}", j.name),
            });
        }
    }
    problems
}

/// Per job name: what ends its error state, and its watched directory.
type Clears = Arc<Mutex<HashMap<String, (Arc<Notify>, Option<PathBuf>)>>>;

struct Running {
    config: Config,
    tasks: HashMap<String, (JobConfig, TaskHandle, Option<PathBuf>)>,
    watcher: Watcher,
    shared: Shared,
    /// Tasks of removed jobs still finishing their current command (shutdown
    /// waits for them, and kills their commands after the grace).
    retiring: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Start a job's task; `after`: the task of its previous configuration,
    /// still finishing its command (the new one waits for it).
    fn start_job(&mut self, j: JobConfig, after: Option<tokio::task::JoinHandle<()>>) {
        let wake = Arc::new(Notify::new());
        let returned = Arc::new(Notify::new());
        let watched = match j.kind.watch() {
            Some(w) if j.enabled && !j.supervision.poll => {
                self.watcher
                    .watch(&w.dir, w.ready, wake.clone(), returned.clone())
            }
            _ => None,
        };
        let handle = kinds::spawn(
            &j,
            self.shared.clone(),
            watched.is_some().then_some(returned),
            wake,
            after,
        );
        self.tasks.insert(j.name.clone(), (j, handle, watched));
    }

    /// Stop a job's task: it finishes the job it is running, then ends.
    fn stop_job(&mut self, name: &str) -> Option<tokio::task::JoinHandle<()>> {
        let (_, handle, dir) = self.tasks.remove(name)?;
        if let Some(d) = dir {
            self.watcher.unwatch(&d);
        }
        handle.stop_flag.store(true, Ordering::SeqCst);
        let _ = handle.stop.send(true);
        self.shared.registry.remove(name);
        Some(handle.join)
    }

    /// Apply a new configuration at once: removed and changed jobs stop
    /// after the command they are running (never waited for here: a long
    /// command must not hold up the reload or a SIGTERM), added ones start,
    /// changed ones start once their old task has ended; unchanged ones read
    /// their trust files and identities again before their next run and
    /// have their directory watched afresh; every job in an error state gets
    /// a fresh start.
    fn reload(&mut self, new: Config) {
        self.retiring.retain(|h| !h.is_finished());
        let mut stopped = HashMap::new();
        let old_names: Vec<String> = self.tasks.keys().cloned().collect();
        for name in old_names {
            let keep = new
                .jobs
                .iter()
                .any(|j| j.name == name && self.tasks.get(&name).is_some_and(|t| t.0 == *j));
            if !keep && let Some(h) = self.stop_job(&name) {
                stopped.insert(name, h);
            }
        }
        for j in &new.jobs {
            match self.tasks.get(&j.name) {
                Some((_, h, dir)) => {
                    // Unchanged job: reread its trust file and identities
                    // before its next run, end its error state, and watch
                    // its directory afresh (it may have been replaced).
                    h.refresh.store(true, Ordering::SeqCst);
                    h.clear.notify_waiters();
                    if let Some(d) = dir {
                        self.watcher.rearmer().rearm(d);
                    }
                }
                None => {
                    let after = stopped.remove(&j.name);
                    self.start_job(j.clone(), after);
                }
            }
        }
        self.retiring.extend(stopped.into_values());
        self.config = new;
    }
}

/// Install the log layer for the daemon (human, logfmt or JSON on stderr).
pub fn init_logging(format: LogFormat, level: tracing::Level) {
    use tracing_subscriber::prelude::*;
    let layer = log::LineLayer::new(format, Box::new(std::io::stderr()))
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level))
        .with_filter(quiet_libraries(level));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Client libraries' own events (async-nats logs a refused connection at
/// level error) are left out unless debugging: their failures reach the
/// log once, as the job's error.
pub fn quiet_libraries(
    level: tracing::Level,
) -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    let verbose = level >= tracing::Level::DEBUG;
    tracing_subscriber::filter::filter_fn(move |m| verbose || !m.target().starts_with("async_nats"))
}

/// Tell systemd (Type=notify) how we are doing, when it asked.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), &path);
    }
}

/// The `fspl status` command that reaches this daemon, for the hints in
/// its log: plain `fspl status` when it listens on the default socket;
/// else `fspl status -c CONFIG` with the configuration's absolute path (a
/// hint is pasted anywhere), or `--socket PATH` when the configured socket
/// is a relative path (which `-c` would resolve elsewhere).
fn status_command(config: &Config) -> String {
    let socket = &config.daemon.socket;
    if *socket == config::default_socket() {
        return "fspl status".into();
    }
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .to_string_lossy()
            .into_owned()
    };
    if socket.is_relative() {
        format!(
            "fspl status --socket {}",
            supervisor::shell_quote(&absolute(socket))
        )
    } else {
        format!(
            "fspl status -c {}",
            supervisor::shell_quote(&absolute(&config.path))
        )
    }
}

/// Run the daemon until `shutdown` completes. Installs no signal handlers
/// (tests run it in-process); see [`run_blocking`] for the real thing.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_inner(config, shutdown, false).await
}

/// Run until `shutdown` completes or, with `signals`, SIGTERM/SIGINT
/// arrives; with `signals`, SIGHUP reloads the configuration from
/// `config.path`.
async fn run_inner(
    config: Config,
    shutdown: impl Future<Output = ()>,
    signals: bool,
) -> Result<(), DaemonError> {
    if let Some(addr) = config.daemon.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| DaemonError::Metrics {
                addr,
                message: e.to_string(),
            })?;
        metric_names::describe();
    }
    // The signals are ours before anything can see the daemon: a SIGTERM
    // as soon as the control socket answers stops it cleanly (regression
    // sigterm_as_soon_as_the_control_socket_answered_killed_the_daemon).
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let sig = |k: SignalKind| -> Result<Option<Signal>, DaemonError> {
        if signals {
            signal(k).map(Some).map_err(DaemonError::Signals)
        } else {
            Ok(None)
        }
    };
    let (mut hup, mut term, mut int) = (
        sig(SignalKind::hangup())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
    );
    let listener = control::bind(&config.daemon.socket)?;
    let registry = Registry::default();
    let shared = Shared {
        registry: registry.clone(),
        semaphore: Arc::new(Semaphore::new(config.daemon.max_parallel)),
        shutting_down: Arc::new(AtomicBool::new(false)),
        running: Arc::new(Mutex::new(HashMap::new())),
        rescan_interval: config.daemon.rescan_interval,
        status_command: status_command(&config).into(),
        hooks: Default::default(),
    };
    let running = Arc::new(tokio::sync::Mutex::new(Running {
        config: config.clone(),
        tasks: HashMap::new(),
        watcher: Watcher::new(),
        shared: shared.clone(),
        retiring: Vec::new(),
    }));
    {
        let mut r = running.lock().await;
        for j in config.jobs.clone() {
            r.start_job(j, None);
        }
    }
    // Control socket. A clear also watches the job's directory afresh.
    let clears: Clears = Arc::default();
    let refresh_clears = |r: &Running, c: &Clears| {
        if let Ok(mut m) = c.lock() {
            *m = r
                .tasks
                .iter()
                .map(|(k, v)| (k.clone(), (v.1.clear.clone(), v.2.clone())))
                .collect();
        }
    };
    let rearm = {
        let r = running.lock().await;
        refresh_clears(&r, &clears);
        r.watcher.rearmer()
    };
    let (reg, cl) = (registry.clone(), clears.clone());
    let server = tokio::spawn(control::serve(listener, move |req| match req {
        Request::Status => {
            lag::refresh(&reg);
            Response::Status {
                jobs: reg.snapshot(),
            }
        }
        Request::Clear { job } => match cl.lock().ok().and_then(|m| m.get(&job).cloned()) {
            Some((n, dir)) => {
                if let Some(d) = dir {
                    rearm.rearm(&d);
                }
                n.notify_waiters();
                Response::Cleared { job }
            }
            None => Response::Error {
                message: format!("no job named {job:?}"),
            },
        },
    }));
    // Lag ages and `stale`, recomputed every second.
    let ticker = {
        let reg = registry.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                lag::refresh(&reg);
            }
        })
    };

    // Ready only once the signals are ours: a SIGHUP right after READY=1
    // reloads, never kills (its default action).
    info!(
        jobs = config.jobs.len(),
        socket = %config.daemon.socket.display(),
        "fspl daemon started"
    );
    sd_notify("READY=1");
    async fn recv(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = recv(&mut term) => { info!("SIGTERM: shutting down"); break; }
            _ = recv(&mut int) => { info!("SIGINT: shutting down"); break; }
            _ = recv(&mut hup) => {
                sd_notify("RELOADING=1");
                let path = running.lock().await.config.path.clone();
                match Config::load(&path) {
                    Ok(new) => {
                        let mut r = running.lock().await;
                        if new.daemon != r.config.daemon {
                            warn!("[daemon] settings changed; they take effect on restart (the jobs are reloaded now)");
                        }
                        r.reload(new);
                        refresh_clears(&r, &clears);
                        info!(jobs = r.config.jobs.len(), "configuration reloaded");
                    }
                    Err(e) => error!("configuration reload refused, the old one stays in effect: {}", fspl_queue::display_chain(&e)),
                }
                sd_notify("READY=1");
            }
        }
    }
    sd_notify("STOPPING=1");
    // Stop starting jobs; let running commands finish within the grace
    // period, then kill them. Killed jobs are left as a crash would leave
    // them (they run again next time).
    shared.shutting_down.store(true, Ordering::SeqCst);
    let grace = config.daemon.shutdown_grace;
    let grace_ends = tokio::time::Instant::now() + grace;
    let mut joins = Vec::new();
    {
        let mut r = running.lock().await;
        let names: Vec<String> = r.tasks.keys().cloned().collect();
        for n in names {
            if let Some(j) = r.stop_job(&n) {
                joins.push(j);
            }
        }
        joins.append(&mut r.retiring);
    }
    let all = futures_join(joins);
    tokio::pin!(all);
    if tokio::time::timeout(grace, &mut all).await.is_err() {
        let commands: Vec<(String, fspl_queue::exec::KillHandle)> = shared
            .running
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (job, command) in commands {
            // Only a command not yet reaped is signalled: never a process
            // that reused the pid of one that ended.
            if command.kill() {
                warn!(job = %job, pid = command.pid(), "grace period over; killing the running command (the job will run again)");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut all).await;
    }
    // Hooks get what is left of the grace too; then those still running
    // are killed with their groups (nothing would enforce their timeout
    // once the daemon is gone).
    shared.hooks.wait(grace_ends).await;
    shared.hooks.kill_all(Duration::from_secs(5)).await;
    server.abort();
    ticker.abort();
    let _ = std::fs::remove_file(&config.daemon.socket);
    info!("fspl daemon stopped");
    Ok(())
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Raise the soft limit on open files to the hard one, so that a burst of
/// control connections or busy queues does not run the daemon out of file
/// descriptors before the hard limit. Returns the limit now in effect.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return None;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l = raised;
            }
        }
    }
    // rlim_t is u64 here, narrower on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    Some(l.rlim_cur as u64)
}

/// Run the daemon on a runtime of its own (for the `fspl daemon` command).
pub fn run_blocking(config: Config) -> Result<(), DaemonError> {
    let files = raise_open_file_limit();
    tracing::debug!(open_files = files, "open file limit");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(config.daemon.max_parallel + 2)
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(run_inner(config, std::future::pending(), true))
}
