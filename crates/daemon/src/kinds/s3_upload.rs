//! `type = "s3-upload"`: `fspl s3-upload` as a daemon job (jollyae's
//! spool-directory uploader; see docs/s3.md). Its keys are the long forms
//! of the command's flags. A run takes back what crashed uploaders left in
//! `working`, then watches `incoming` (inotify, a rescan every 30 s and
//! after an overflow, polling where events are not available) and uploads
//! each file as it lands, until the daemon stops or reloads the job; so
//! the job does not hold its spool: several uploaders (in this daemon or
//! elsewhere) may share one. `fspl status` shows the files queued in
//! `incoming`, those being uploaded and the bytes sent, and the uploaded
//! and failed counts and bytes; the metrics
//! `fspl_s3_upload_files_total{result="uploaded"|"failed"}`,
//! `fspl_s3_upload_bytes_total`, `fspl_s3_upload_queued_files` and
//! `fspl_s3_upload_uploading_files` too.
//!
//! Throughput (`throughput_bps` in the status,
//! `fspl_s3_upload_throughput_bytes_per_second`): the bytes of the uploads
//! completed since the last measure over the wall-clock time during which
//! at least one upload was under way meanwhile; measured when the
//! uploader has nothing under way, or after 10 s of busy time (a steady
//! stream of uploads), whichever comes first.
//!
//! `keep_completed = [RULES]` prunes `completed` with keep rules (as
//! `fspl prune` does, through [`super::prune::prune_logged`], like a
//! process job's `keep_output`): after uploads complete (at most once a
//! second while they go on) and when the run ends.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fspl_s3::upload::{Config, Uploader};
use toml::Spanned;
use toml::de::DeValue;
use tracing::info_span;

use super::Resource;
use crate::config::{Bad, Checker, Keys, boolean, kind_of, number, path_value, string};
use crate::state::{JobState, JobStatus, now_rfc3339};
use crate::supervisor::{FailureClass, Kind, Outcome, RunContext, RunReport, WatchSpec};

/// The keys of a `type = "s3-upload"` job of its own.
pub const KEYS: &[&str] = &[
    "bucket",
    "prefix",
    "incoming",
    "working",
    "completed",
    "failed",
    "remove",
    "remove_failed",
    "acl",
    "no_upload",
    "random_no_upload_fail",
    "jobs",
    "tries",
    "part_size",
    "verbose",
    "keep_completed",
];

/// How often, at most, `keep_completed` prunes while uploads complete.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The busy time after which throughput is measured even while uploads
/// go on.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

/// `type = "s3-upload"`.
#[derive(Clone, Debug, PartialEq)]
pub struct S3UploadJob {
    pub config: Config,
    /// Keep rules for `completed` (applied as uploads complete).
    pub keep_completed: Option<super::prune::KeepRules>,
}

fn probability(v: &Spanned<DeValue<'_>>) -> Result<f64, Bad> {
    let p = match v.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
        other => {
            return Err((
                v.span(),
                format!("must be a number from 0.0 to 1.0, not {}", kind_of(other)),
            ));
        }
    };
    match p {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err((v.span(), "must be a number from 0.0 to 1.0".into())),
    }
}

impl S3UploadJob {
    pub(crate) fn parse(
        c: &mut Checker<'_>,
        k: &Keys<'_, '_>,
        table: &Range<usize>,
        l: &str,
    ) -> S3UploadJob {
        c.require(k, table, l, "incoming", "\"/var/spool/doodad/incoming\"");
        let path = |c: &mut Checker<'_>, key| c.get(k, key, l, path_value);
        let config = Config {
            bucket: c.get(k, "bucket", l, string),
            prefix: c.get(k, "prefix", l, string).unwrap_or_default(),
            incoming: path(c, "incoming"),
            working: path(c, "working"),
            completed: path(c, "completed"),
            failed: path(c, "failed"),
            remove: c.get(k, "remove", l, boolean).unwrap_or(false),
            remove_failed: c.get(k, "remove_failed", l, boolean).unwrap_or(false),
            acl: c.get(k, "acl", l, string),
            no_upload: c.get(k, "no_upload", l, boolean).unwrap_or(false),
            random_no_upload_fail: c.get(k, "random_no_upload_fail", l, probability),
            jobs: c.get(k, "jobs", l, |v| number(v, 1, 256, "")).unwrap_or(4) as usize,
            tries: c
                .get(k, "tries", l, |v| number(v, 1, 1000, ""))
                .unwrap_or(6) as u32,
            part_size_mib: c
                .get(k, "part_size", l, |v| number(v, 5, 5120, " of MiB"))
                .unwrap_or(8),
            verbose: c.get(k, "verbose", l, boolean).unwrap_or(false),
        };
        if config.incoming.is_some()
            && let Err(why) = config.spool_dirs()
        {
            c.at(table, format!("{l}{why}"));
        }
        let keep_completed = c.get(k, "keep_completed", l, super::prune::keep_rules);
        if keep_completed.is_some() && config.completed.is_none() {
            c.at(
                &k["keep_completed"].0,
                format!(
                    "{l}keep_completed: only with completed (uploaded files are not kept otherwise)"
                ),
            );
        }
        S3UploadJob {
            config,
            keep_completed,
        }
    }

    /// Nothing: several uploaders may share a spool (a claim is a rename,
    /// which one of them wins).
    pub fn resource(&self) -> Option<Resource> {
        None
    }

    /// For `daemon --check`: the spool's directories exist.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let mut problems = Vec::new();
        for (key, dir) in [
            ("incoming", &c.incoming),
            ("working", &c.working),
            ("completed", &c.completed),
            ("failed", &c.failed),
        ] {
            if let Some(d) = dir
                && !d.is_dir()
            {
                problems.push((key, format!("{}: no such directory", d.display())));
            }
        }
        problems
    }

    fn incoming(&self) -> PathBuf {
        self.config.incoming.clone().unwrap_or_default()
    }

    /// Apply `keep_completed` to `completed`, if both are set.
    fn prune_completed(&self) {
        if let (Some(rules), Some(dir)) = (&self.keep_completed, &self.config.completed) {
            let _ =
                super::prune::prune_logged(dir, Some(fspl_prune::DirKind::Uploaded), &rules.rules);
        }
    }
}

impl Kind for S3UploadJob {
    type Prepared = Uploader;

    fn name(&self) -> &'static str {
        "s3-upload"
    }

    fn watched_noun(&self) -> &'static str {
        "incoming directory"
    }

    fn activity(&self) -> &'static str {
        "uploading"
    }

    fn status(&self, name: &str) -> JobStatus {
        let to = match (&self.config.bucket, self.config.no_upload) {
            (_, true) => "nowhere (no_upload)".to_string(),
            (Some(b), false) => format!("s3://{b}/{}", self.config.prefix),
            (None, false) => String::new(),
        };
        JobStatus {
            to: Some(to),
            bytes: Some(0),
            ..JobStatus::idle(name, "s3-upload", self.incoming().display().to_string())
        }
    }

    fn span(&self, name: &str) -> tracing::Span {
        info_span!("job", job = %name, kind = "s3-upload", incoming = %self.incoming().display())
    }

    fn init_metrics(&self, name: &str) {
        for r in ["uploaded", "failed"] {
            metrics::counter!("fspl_s3_upload_files_total", "fspl_job" => name.to_string(), "result" => r)
                .increment(0);
        }
        metrics::counter!("fspl_s3_upload_bytes_total", "fspl_job" => name.to_string())
            .increment(0);
        metrics::gauge!("fspl_s3_upload_queued_files", "fspl_job" => name.to_string()).set(0.0);
        metrics::gauge!("fspl_s3_upload_uploading_files", "fspl_job" => name.to_string()).set(0.0);
        metrics::gauge!("fspl_s3_upload_throughput_bytes_per_second", "fspl_job" => name.to_string())
            .set(0.0);
    }

    /// None: a run watches `incoming` itself, for as long as the job runs.
    fn watch(&self) -> Option<WatchSpec> {
        None
    }

    fn prepare(&self) -> Result<Uploader, String> {
        self.config.build()
    }

    fn run(&self, up: &Uploader, ctx: &RunContext) -> RunReport {
        let span = self.span(&ctx.name);
        let _e = span.enter();
        let failed = |message: String| RunReport {
            outcome: Outcome::Failed {
                message,
                class: FailureClass::Transient,
            },
            next_seq: None,
            queued: None,
        };
        if let Err(e) = up.recover() {
            return failed(fspl_queue::display_chain(&e));
        }
        self.prune_completed();
        let stop = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let name = ctx.name.clone();
        let result = std::thread::scope(|s| {
            // Tell the status and the metrics what the uploader does, and
            // pass on a stop.
            s.spawn(|| {
                let st = &up.stats;
                let (mut ok, mut bad, mut bytes) = (
                    st.uploaded.load(Ordering::SeqCst),
                    st.failed.load(Ordering::SeqCst),
                    st.bytes.load(Ordering::SeqCst),
                );
                let mut counted: Option<Instant> = None;
                let mut queued = None;
                // Uploads completed since `completed` was last pruned.
                let mut unpruned = 0u64;
                let mut pruned: Option<Instant> = None;
                // Completed bytes and busy time at the last throughput
                // measure.
                let (mut mark_bytes, mut mark_busy) = (bytes, st.busy.total());
                loop {
                    let last = done.load(Ordering::SeqCst);
                    if ctx.should_stop() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    let (o, b, y) = (
                        st.uploaded.load(Ordering::SeqCst),
                        st.failed.load(Ordering::SeqCst),
                        st.bytes.load(Ordering::SeqCst),
                    );
                    let (d_ok, d_bad, d_bytes) = (o - ok, b - bad, y - bytes);
                    (ok, bad, bytes) = (o, b, y);
                    if counted.is_none_or(|c| c.elapsed() >= Duration::from_secs(2)) {
                        counted = Some(Instant::now());
                        queued = up.spool.list_incoming().ok().map(|v| v.len() as u64);
                    }
                    let uploading = st.uploading.load(Ordering::SeqCst);
                    let sent = st.uploading_bytes.load(Ordering::SeqCst);
                    let busy = st.busy.total();
                    let throughput = (bytes > mark_bytes
                        && (uploading == 0 || busy - mark_busy >= THROUGHPUT_WINDOW))
                        .then(|| {
                            let t = (bytes - mark_bytes) as f64
                                / (busy - mark_busy).as_secs_f64().max(1e-6);
                            (mark_bytes, mark_busy) = (bytes, busy);
                            t as u64
                        });
                    if let Some(t) = throughput {
                        metrics::gauge!("fspl_s3_upload_throughput_bytes_per_second", "fspl_job" => name.clone())
                            .set(t as f64);
                    }
                    metrics::counter!("fspl_s3_upload_files_total", "fspl_job" => name.clone(), "result" => "uploaded").increment(d_ok);
                    metrics::counter!("fspl_s3_upload_files_total", "fspl_job" => name.clone(), "result" => "failed").increment(d_bad);
                    metrics::counter!("fspl_s3_upload_bytes_total", "fspl_job" => name.clone())
                        .increment(d_bytes);
                    metrics::gauge!("fspl_s3_upload_uploading_files", "fspl_job" => name.clone())
                        .set(uploading as f64);
                    if let Some(q) = queued {
                        metrics::gauge!("fspl_s3_upload_queued_files", "fspl_job" => name.clone())
                            .set(q as f64);
                    }
                    let now = (d_ok > 0).then(now_rfc3339);
                    ctx.update(|s| {
                        s.jobs_succeeded += d_ok;
                        s.jobs_failed += d_bad;
                        s.bytes = Some(s.bytes.unwrap_or(0) + d_bytes);
                        s.queued = queued;
                        if throughput.is_some() {
                            s.lag.throughput_bps = throughput;
                        }
                        if let Some(t) = now {
                            s.last_success = Some(t);
                            s.lag.last_success_unix = Some(crate::supervisor::unix_now());
                        }
                        s.state = if uploading > 0 {
                            let since = match &s.state {
                                JobState::Busy { since, .. } => since.clone(),
                                _ => now_rfc3339(),
                            };
                            JobState::Busy {
                                doing: format!(
                                    "uploading {uploading} file{} ({sent} bytes sent)",
                                    if uploading == 1 { "" } else { "s" }
                                ),
                                since,
                            }
                        } else {
                            JobState::Idle
                        };
                    });
                    unpruned += d_ok;
                    if unpruned > 0 && (last || pruned.is_none_or(|p| p.elapsed() >= PRUNE_EVERY)) {
                        unpruned = 0;
                        pruned = Some(Instant::now());
                        self.prune_completed();
                    }
                    if last {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            let r = up.watch(&stop, Duration::from_secs(1), Duration::from_secs(30));
            done.store(true, Ordering::SeqCst);
            r
        });
        match result {
            Ok(()) => RunReport {
                outcome: Outcome::Done {
                    worked: true,
                    waiting: None,
                },
                next_seq: None,
                queued: None,
            },
            Err(e) => failed(fspl_queue::display_chain(&e)),
        }
    }
}
