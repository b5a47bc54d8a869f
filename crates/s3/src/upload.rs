//! `fspl s3-upload`: jollyae's spool-directory uploader (see [`crate::spool`]
//! for the directory protocol). An [`Uploader`] drains INCOMING/ with a
//! few worker threads, each file claimed, uploaded to `PREFIX + name`
//! (retried with backoff on transient errors, at once to FAILED/ on
//! permanent ones), then completed or failed. [`Uploader::watch`] keeps
//! doing it as files land (inotify, a rescan after an overflow and every
//! `rescan` seconds, polling where events are not available); the daemon
//! kind `s3-upload` calls [`Uploader::drain`] once per run.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use std::path::PathBuf;

use crate::spool::{
    Claim, FailedTo, NotClaimed, OnFailure, OnSuccess, Spool, SpoolDirs, SpoolError, same_dir,
};

/// How an upload failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutError {
    /// May go away by itself (network, 5xx, 429): retried with backoff.
    pub transient: bool,
    /// What went wrong, on one line.
    pub message: String,
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where files go: a bucket, or nowhere (`-n`).
pub trait Target: Send + Sync {
    /// Upload `len` bytes of `file` (read from its start) under `key`.
    /// `stop`: give up soon (an error) when set. `progress` is told of the
    /// bytes sent so far.
    fn put(
        &self,
        key: &str,
        file: &File,
        len: u64,
        stop: &AtomicBool,
        progress: &dyn Fn(u64),
    ) -> Result<(), PutError>;

    /// What it is, for the log: "s3://bucket", "nowhere (-n)".
    fn describe(&self) -> String;
}

/// `-n`: nothing is sent; each upload fails with probability `fail`.
pub struct FakeTarget {
    pub fail: f64,
}

impl Target for FakeTarget {
    fn put(
        &self,
        _: &str,
        _: &File,
        len: u64,
        _: &AtomicBool,
        p: &dyn Fn(u64),
    ) -> Result<(), PutError> {
        if self.fail > 0.0 && fastrand::f64() < self.fail {
            return Err(PutError {
                transient: false,
                message: "no upload (-n): random failure (--random-no-upload-fail)".into(),
            });
        }
        p(len);
        Ok(())
    }

    fn describe(&self) -> String {
        "nowhere (-n: fake uploads)".into()
    }
}

/// The uploader's settings besides the directories.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Keys are `prefix` + the file's name.
    pub prefix: String,
    /// Files uploaded at once.
    pub jobs: usize,
    /// Tries of one upload on transient errors before it fails.
    pub tries: u32,
    /// The first delay between tries (doubled each time, up to 30 s).
    pub retry_delay: Duration,
    /// A line per file at info level (else debug).
    pub verbose: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            prefix: String::new(),
            jobs: 4,
            tries: 6,
            retry_delay: Duration::from_millis(500),
            verbose: false,
        }
    }
}

/// Counters, for `fspl status`, metrics and the summary line.
#[derive(Debug, Default)]
pub struct Stats {
    pub uploaded: AtomicU64,
    pub failed: AtomicU64,
    /// Bytes of completed uploads.
    pub bytes: AtomicU64,
    /// Uploads under way now.
    pub uploading: AtomicUsize,
    /// Bytes sent of the uploads under way.
    pub uploading_bytes: AtomicU64,
    /// The wall-clock time during which at least one upload was under
    /// way (for throughput: bytes completed over busy time).
    pub busy: BusyClock,
}

/// Wall-clock time during which at least one of several concurrent
/// activities is under way.
#[derive(Debug, Default)]
pub struct BusyClock(Mutex<BusyInner>);

#[derive(Debug, Default)]
struct BusyInner {
    active: usize,
    since: Option<Instant>,
    total: Duration,
}

impl BusyClock {
    /// One activity starts.
    pub fn start(&self) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if b.active == 0 {
            b.since = Some(Instant::now());
        }
        b.active += 1;
    }

    /// One activity ends.
    pub fn end(&self) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.active = b.active.saturating_sub(1);
        if b.active == 0
            && let Some(t) = b.since.take()
        {
            b.total += t.elapsed();
        }
    }

    /// The busy time so far (the current stretch included).
    pub fn total(&self) -> Duration {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.total + b.since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub uploaded: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Files left for later: a same-named file was being uploaded, or a
    /// resubmitted file whose retry delay has not passed.
    pub later: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
}

/// How one file went.
enum FileResult {
    Uploaded(u64),
    Failed(String),
    Later,
    Skipped,
}

/// The uploader of one spool.
pub struct Uploader {
    pub spool: Spool,
    pub target: Box<dyn Target>,
    pub settings: Settings,
    pub stats: Stats,
    /// Resubmitted files (FAILED = INCOMING) and when they may be tried
    /// again, with their failures so far: a file that keeps failing is not
    /// retried in a busy loop.
    retry_at: Mutex<HashMap<OsString, (Instant, u32)>>,
    /// Files whose claim failed with an error, logged once.
    complained: Mutex<std::collections::HashSet<OsString>>,
}

/// Delay before a resubmitted file is tried again after `n` failures.
fn resubmit_delay(base: Duration, n: u32) -> Duration {
    let d = base.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(16) as i32);
    Duration::from_secs_f64(d.min(60.0))
}

impl Uploader {
    pub fn new(spool: Spool, target: Box<dyn Target>, settings: Settings) -> Uploader {
        Uploader {
            spool,
            target,
            settings,
            stats: Stats::default(),
            retry_at: Mutex::default(),
            complained: Mutex::default(),
        }
    }

    fn log_file(&self, msg: std::fmt::Arguments<'_>) {
        if self.settings.verbose {
            info!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    /// Take back what crashed workers left in WORKING/ (see
    /// [`Spool::recover`]); logs what it did.
    pub fn recover(&self) -> Result<usize, SpoolError> {
        let r = self.spool.recover()?;
        for n in &r.taken_back {
            info!(file = %n.to_string_lossy(), "taken back into the incoming directory (left in the working directory by a worker that stopped before confirming it)");
        }
        for n in &r.left {
            warn!(file = %n.to_string_lossy(), "left in the working directory: a newer file of the same name is queued");
        }
        Ok(r.taken_back.len())
    }

    /// The files in INCOMING/ that may be tried now, and the earliest time
    /// one that may not will be due.
    fn due(&self, names: Vec<OsString>) -> (Vec<OsString>, u64, Option<Instant>) {
        let now = Instant::now();
        let mut retry = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        retry.retain(|n, _| names.binary_search(n).is_ok());
        let mut next = None::<Instant>;
        let mut later = 0;
        let due = names
            .into_iter()
            .filter(|n| match retry.get(n) {
                Some(&(at, _)) if at > now => {
                    later += 1;
                    next = Some(next.map_or(at, |x| x.min(at)));
                    false
                }
                _ => true,
            })
            .collect();
        (due, later, next)
    }

    /// Upload every file in INCOMING/ now (each tried once), `jobs` at a
    /// time, until done or `stop`. Returns what it did and when a file
    /// left for later is due.
    pub fn drain(&self, stop: &AtomicBool) -> Result<(Drained, Option<Instant>), SpoolError> {
        let (names, mut later, next) = self.due(self.spool.list_incoming()?);
        let idx = AtomicUsize::new(0);
        let out = Mutex::new(Drained::default());
        let busy = AtomicU64::new(0);
        let worker = || {
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = idx.fetch_add(1, Ordering::SeqCst);
                let Some(name) = names.get(i) else { break };
                let r = self.one(name, stop);
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    FileResult::Uploaded(b) => {
                        o.uploaded += 1;
                        o.bytes += b;
                    }
                    FileResult::Failed(m) => {
                        o.failed += 1;
                        o.first_error.get_or_insert(m);
                    }
                    FileResult::Later => {
                        busy.fetch_add(1, Ordering::SeqCst);
                    }
                    FileResult::Skipped => {}
                }
            }
        };
        let n = self.settings.jobs.clamp(1, names.len().max(1));
        std::thread::scope(|s| {
            for _ in 1..n {
                s.spawn(worker);
            }
            worker();
        });
        let mut d = out.into_inner().unwrap_or_else(|e| e.into_inner());
        later += busy.load(Ordering::SeqCst);
        d.later = later;
        // A file that waited for a same-named one is due at once.
        let next = if busy.load(Ordering::SeqCst) > 0 {
            Some(Instant::now() + Duration::from_millis(200))
        } else {
            None
        }
        .into_iter()
        .chain(next)
        .chain(
            self.retry_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|v| v.0),
        )
        .min();
        Ok((d, next))
    }

    /// Claim, upload and finish one file.
    fn one(&self, name: &OsStr, stop: &AtomicBool) -> FileResult {
        let shown = name.to_string_lossy();
        let claim = match self.spool.claim(name) {
            Ok(Ok(c)) => c,
            Ok(Err(NotClaimed::Gone)) => return FileResult::Skipped,
            Ok(Err(NotClaimed::Busy)) => {
                self.log_file(format_args!(
                    "{shown}: a file of the same name is being uploaded; it waits"
                ));
                return FileResult::Later;
            }
            Err(e) => {
                let msg = fspl_queue::display_chain(&e);
                let mut c = self.complained.lock().unwrap_or_else(|e| e.into_inner());
                if c.insert(name.to_os_string()) {
                    warn!("{msg}");
                }
                return FileResult::Failed(msg);
            }
        };
        self.complained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let len = claim.len;
        self.stats.busy.start();
        self.stats.uploading.fetch_add(1, Ordering::SeqCst);
        let r = self.put(&claim, stop);
        self.stats.uploading.fetch_sub(1, Ordering::SeqCst);
        self.stats.busy.end();
        match r {
            Ok(()) => {
                let done = self.spool.complete(claim);
                self.stats.uploaded.fetch_add(1, Ordering::SeqCst);
                self.stats.bytes.fetch_add(len, Ordering::SeqCst);
                self.retry_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name);
                if let Err(e) = done {
                    // Uploaded; it stays in WORKING/ and is uploaded again
                    // after a restart (at least once).
                    warn!("uploaded, but {}", fspl_queue::display_chain(&e));
                }
                FileResult::Uploaded(len)
            }
            Err(_) if stop.load(Ordering::SeqCst) => {
                // Stopping: the claim goes (its lock with it) and the file
                // is taken back at the next start.
                drop(claim);
                FileResult::Skipped
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::SeqCst);
                let to = self.spool.fail(claim);
                let whither = match &to {
                    Ok(FailedTo::Moved) => "moved to the failed directory".to_string(),
                    Ok(FailedTo::Resubmitted) => {
                        let mut r = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
                        let n = r.get(name).map_or(0, |v| v.1) + 1;
                        let d = resubmit_delay(self.settings.retry_delay, n);
                        r.insert(name.to_os_string(), (Instant::now() + d, n));
                        format!("resubmitted (tried again in {:.1} s)", d.as_secs_f64())
                    }
                    Ok(FailedTo::Removed) => "removed (-R)".to_string(),
                    Ok(FailedTo::Stayed) => "left in the working directory".to_string(),
                    Err(e) => fspl_queue::display_chain(e),
                };
                warn!(file = %shown, "upload failed: {e}; {whither}");
                FileResult::Failed(format!("{shown}: {e}"))
            }
        }
    }

    /// Upload a claimed file, with retries on transient errors.
    fn put(&self, claim: &Claim, stop: &AtomicBool) -> Result<(), PutError> {
        let Some(name) = claim.name.to_str() else {
            return Err(PutError {
                transient: false,
                message: "the file name is not UTF-8, which an S3 key must be".into(),
            });
        };
        let key = format!("{}{name}", self.settings.prefix);
        let mut delay = self.settings.retry_delay;
        let mut tries = 0;
        loop {
            tries += 1;
            self.log_file(format_args!(
                "uploading {name} ({} bytes) to {} key {key}",
                claim.len,
                self.target.describe()
            ));
            let last = AtomicU64::new(0);
            let progress = |n: u64| {
                let before = last.swap(n, Ordering::SeqCst);
                if n >= before {
                    self.stats
                        .uploading_bytes
                        .fetch_add(n - before, Ordering::SeqCst);
                }
            };
            let r = self
                .target
                .put(&key, &claim.file, claim.len, stop, &progress);
            self.stats
                .uploading_bytes
                .fetch_sub(last.load(Ordering::SeqCst), Ordering::SeqCst);
            match r {
                Ok(()) => {
                    self.log_file(format_args!("uploaded {name} to key {key}"));
                    return Ok(());
                }
                Err(e)
                    if e.transient
                        && tries < self.settings.tries
                        && !stop.load(Ordering::SeqCst) =>
                {
                    warn!(file = %name, try_ = tries, retry_in_s = delay.as_secs_f64(), "upload failed, retrying: {e}");
                    sleep_unless(stop, delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Upload files as they land in INCOMING/ until `stop`: inotify where
    /// it works (a rescan after an overflow, and every `rescan` anyway),
    /// else polling every `poll`.
    pub fn watch(
        &self,
        stop: &AtomicBool,
        poll: Duration,
        rescan: Duration,
    ) -> Result<(), SpoolError> {
        use notify::Watcher as _;
        let (tx, rx) = mpsc::channel::<()>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Any event (or an error: maybe an overflow) means: look.
            let _ = res;
            let _ = tx.send(());
        })
        .and_then(|mut w| {
            w.watch(
                &self.spool.dirs.incoming,
                notify::RecursiveMode::NonRecursive,
            )
            .map(|()| w)
        });
        let watching = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %self.spool.dirs.incoming.display(), "no filesystem events ({e}); polling every {:.1} s", poll.as_secs_f64());
                None
            }
        };
        let wait = if watching.is_some() { rescan } else { poll };
        while !stop.load(Ordering::SeqCst) {
            // Events that came before this scan are covered by it.
            while rx.try_recv().is_ok() {}
            let (d, next) = self.drain(stop)?;
            if d.uploaded + d.failed > 0 {
                self.log_file(format_args!(
                    "{} uploaded, {} failed ({} bytes)",
                    d.uploaded, d.failed, d.bytes
                ));
            }
            let mut until = Instant::now() + wait;
            if let Some(n) = next {
                until = until.min(n);
            }
            // Wait for an event, the next due file, the rescan, or stop
            // (looked at every 200 ms).
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let slice = (until - now).min(Duration::from_millis(200));
                match rx.recv_timeout(slice) {
                    Ok(()) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(slice);
                    }
                }
            }
        }
        drop(watching);
        Ok(())
    }
}

/// Sleep for `d`, or less when `stop` is set meanwhile.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// Everything an uploader is made from: the flags of `fspl s3-upload`, the
/// keys of a daemon job `type = "s3-upload"`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub bucket: Option<String>,
    pub prefix: String,
    pub incoming: Option<PathBuf>,
    pub working: Option<PathBuf>,
    pub completed: Option<PathBuf>,
    pub failed: Option<PathBuf>,
    pub remove: bool,
    pub remove_failed: bool,
    pub acl: Option<String>,
    pub no_upload: bool,
    pub random_no_upload_fail: Option<f64>,
    pub jobs: usize,
    pub tries: u32,
    pub part_size_mib: u64,
    pub verbose: bool,
}

impl Config {
    /// The spool's directories, or why the settings contradict each other
    /// (one line, naming the flags).
    pub fn spool_dirs(&self) -> Result<SpoolDirs, String> {
        if self.remove && self.completed.is_some() {
            return Err("-r (--remove) and -d (--dest) contradict each other: uploaded files are either removed or moved to COMPLETED".into());
        }
        if self.remove_failed && self.failed.is_some() {
            return Err("-R (--remove-failed) and -f (--fail) contradict each other: failed files are either removed or moved to FAILED".into());
        }
        let Some(src) = self.incoming.clone() else {
            return Err("no incoming directory: give -s INCOMING".into());
        };
        let on_success = match (&self.completed, self.remove) {
            (Some(d), _) => OnSuccess::Move(d.clone()),
            (None, true) => OnSuccess::Remove,
            (None, false) => {
                return Err("no destination: give -d COMPLETED, or -i WORKING with -r".into());
            }
        };
        let working = match (&self.working, &self.completed) {
            (Some(i), _) => i.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err("-r needs -i WORKING (where files are while uploaded)".into());
            }
        };
        let on_failure = match (&self.failed, self.remove_failed) {
            (Some(f), _) => OnFailure::Move(f.clone()),
            (None, true) => OnFailure::Remove,
            (None, false) => OnFailure::Stay,
        };
        if same_dir(&working, &src) {
            return Err("-i (WORKING) is the same directory as -s (INCOMING)".into());
        }
        if let Some(d) = &self.completed {
            if same_dir(d, &src) {
                return Err("-d (COMPLETED) is the same directory as -s (INCOMING)".into());
            }
            if self.working.is_some() && same_dir(d, &working) {
                return Err("-i (WORKING) is the same directory as -d (COMPLETED)".into());
            }
        }
        if let Some(f) = &self.failed
            && self.working.is_some()
            && same_dir(f, &working)
        {
            return Err("-f (FAILED) is the same directory as -i (WORKING)".into());
        }
        if let Some(p) = self.random_no_upload_fail {
            if !self.no_upload {
                return Err(
                    "--random-no-upload-fail only makes sense with -n (--no-upload)".into(),
                );
            }
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "--random-no-upload-fail: {p} is not a probability (0.0 to 1.0)"
                ));
            }
        }
        if self.no_upload && self.remove && self.random_no_upload_fail.unwrap_or(0.0) == 0.0 {
            return Err(
                "-n and -r: nothing would be uploaded and every file removed; use rm(1)".into(),
            );
        }
        if !self.no_upload && self.bucket.as_deref().is_none_or(str::is_empty) {
            return Err("no bucket: give -b BUCKET (or -n to fake the uploads)".into());
        }
        Ok(SpoolDirs {
            incoming: src,
            working,
            on_success,
            on_failure,
        })
    }

    /// The uploader: its spool opened, its target made (the S3 client is
    /// configured, nothing is sent yet). The error is one line.
    pub fn build(&self) -> Result<Uploader, String> {
        let dirs = self.spool_dirs()?;
        let spool = Spool::open(dirs).map_err(|e| fspl_queue::display_chain(&e))?;
        let target: Box<dyn Target> = if self.no_upload {
            Box::new(FakeTarget {
                fail: self.random_no_upload_fail.unwrap_or(0.0),
            })
        } else {
            Box::new(crate::upload_s3::S3Target::new(
                crate::upload_s3::Options {
                    bucket: self.bucket.clone().unwrap_or_default(),
                    acl: self.acl.clone(),
                    part_size: self.part_size_mib.max(5) * 1024 * 1024,
                },
            )?)
        };
        let settings = Settings {
            prefix: self.prefix.clone(),
            jobs: self.jobs.max(1),
            tries: self.tries.max(1),
            verbose: self.verbose,
            ..Settings::default()
        };
        Ok(Uploader::new(spool, target, settings))
    }
}
