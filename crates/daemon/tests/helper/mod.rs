//! Fixtures for the in-process daemon tests: queues and jobs made through
//! the library, a daemon started with `fspl_daemon::run` on a tokio runtime
//! of its own, and its control socket.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fspl_daemon::control::{Request, Response, request};
use fspl_daemon::state::{JobState, JobStatus};
use fspl_daemon::{Config, DaemonError};
pub use fspl_testkit::daemon::{config_text, dir_url, process_job, pull_job, push_job, recorder};
pub use fspl_testkit::{SOON, job, lines, nextseq, q, wait_for};

pub use fspl_testkit::Sandbox;

/// Queues made through the library.
pub trait MakeQueue {
    /// A fresh queue SANDBOX/name (nextseq 1).
    fn queue(&self, name: &str) -> PathBuf;
}

impl MakeQueue for Sandbox {
    fn queue(&self, name: &str) -> PathBuf {
        fspl_testkit::init_queue(&self.path(name))
    }
}

/// A job command that fails until `path` exists, then succeeds.
pub fn fails_until(path: &Path) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "test -e \"$1\"".into(),
        "sh".into(),
        path.to_str().unwrap().into(),
    ]
}

/// Store a job the way `queue-write` does (temporary name, then rename).
pub fn write_job(queue: &Path, seq: u64, payload: &str) {
    fspl_testkit::write_job(queue, seq, payload.as_bytes());
}

/// Job files in the queue.
pub fn job_files(queue: &Path) -> usize {
    fspl_testkit::job_names(&queue.join("jobs")).len()
}

/// A daemon running in this process, on a thread with its own runtime.
pub struct Daemon {
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl Daemon {
    /// Write the config to `sb/daemon.toml`, parse it and start the daemon;
    /// returns once the control socket answers.
    pub fn start(sb: &Sandbox, text: &str) -> Daemon {
        let path = sb.path("daemon.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let d = Daemon::spawn(config);
        let socket = d.socket.clone();
        let mut d = Some(d);
        wait_for("the control socket", SOON, || {
            if let Some(t) = d.as_ref().and_then(|d| d.thread.as_ref())
                && t.is_finished()
            {
                let r = d.take().unwrap().thread.take().unwrap().join().unwrap();
                panic!("daemon ended at start: {r:?}");
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        d.unwrap()
    }

    /// Start without waiting for anything.
    pub fn spawn(config: Config) -> Daemon {
        let socket = config.daemon.socket.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(fspl_daemon::run(config, async {
                let _ = rx.await;
            }))
        });
        Daemon {
            socket,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Every job's status.
    pub fn status(&self) -> Vec<JobStatus> {
        match request(&self.socket, &Request::Status).unwrap() {
            Response::Status { jobs } => jobs,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// One job's status.
    pub fn job(&self, name: &str) -> JobStatus {
        self.status()
            .into_iter()
            .find(|j| j.name == name)
            .unwrap_or_else(|| panic!("no job {name} in the status"))
    }

    pub fn state(&self, name: &str) -> JobState {
        self.job(name).state
    }

    /// Wait until job `name` is in its error state; its status and the
    /// error's message.
    #[track_caller]
    pub fn error(&self, name: &str) -> (JobStatus, String) {
        wait_for(&format!("{name} in its error state"), SOON, || {
            matches!(self.state(name), JobState::Error { .. })
        });
        let s = self.job(name);
        let JobState::Error { message } = &s.state else {
            panic!("{name} left its error state at once: {s:?}")
        };
        let message = message.clone();
        (s, message)
    }

    /// `fspl status --clear NAME`.
    pub fn clear(&self, name: &str) {
        match request(
            &self.socket,
            &Request::Clear {
                job: name.to_string(),
            },
        )
        .unwrap()
        {
            Response::Cleared { job } => assert_eq!(job, name),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Wait until the first run of every job has ended (the status knows
    /// the queue's nextseq; push and pull jobs: a run is counted).
    pub fn settled(&self) {
        wait_for("the first run of every job", SOON, || {
            self.status().iter().all(|j| {
                let ran = match j.kind.as_str() {
                    "process" => j.next_seq.is_some(),
                    _ => j.runs > 0,
                };
                ran && !matches!(j.state, JobState::Running { .. } | JobState::Busy { .. })
            })
        });
    }

    /// Shut down and wait; returns what `run` returned and how long it took.
    pub fn stop(mut self) -> (Result<(), DaemonError>, Duration) {
        let t0 = Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = self.thread.take().unwrap().join().unwrap();
        (r, t0.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
