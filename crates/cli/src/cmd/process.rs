//! `queue-process`, `stdin-process`.

use std::io::{IsTerminal, Seek};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use fspl_format::Decoded;
use fspl_queue::exec::Outcome;
use fspl_queue::process::{
    self, JobCheck, JobReport, Observer, OnError, OrderBy, OutputTo, PayloadUse, ProcessError,
    ProcessOptions, StopReason, Verdict,
};
use fspl_queue::{OpenedJob, Payload, PayloadFinish, Queue, StreamPayload};

use crate::output::RawStdin;

use crate::cli::{OnErrorArg, OrderByArg, OutputToArg, QueueProcessArgs, StdinProcessArgs};

pub fn queue_process(a: QueueProcessArgs) -> anyhow::Result<ExitCode> {
    let q = Queue::new(&a.q.queuedir).with_identities(super::keys::identities(&a.keys.ids)?);
    let opts = ProcessOptions {
        trust: super::keys::trust(&a.keys)?,
        command: a.command,
        args: a.params,
        decoder: super::queue::decoder(a.d.decoder.as_deref()),
        order_by: match a.order_by {
            OrderByArg::Sequence => OrderBy::Sequence,
            OrderByArg::Timestamp => OrderBy::Timestamp,
        },
        on_error: match a.on_error {
            OnErrorArg::Retry => OnError::Retry,
            OnErrorArg::Delete => OnError::Delete,
            OnErrorArg::Leave => OnError::Leave,
        },
        never_delete: a.never_delete,
        maxjobs: a.maxjobs,
        output_to: match a.output_to {
            OutputToArg::PassBoth => OutputTo::PassBoth,
            OutputToArg::SaveBoth => OutputTo::SaveBoth,
        },
        allow_job_params: a.run.allow_job_params,
        ignore_payload: a.run.ignore_payload,
        timeout: a.run.timeout.map(Duration::from_secs),
    };
    let mut progress = Progress::new();
    let result = process::process(&q, &opts, &mut progress);
    progress.done();
    let summary = match result {
        Ok(s) => s,
        Err(ProcessError::JobFailed {
            seq, path, outcome, ..
        }) => {
            anyhow::bail!(
                "job {seq} ({}): {outcome}; stopped, the job stays queued and runs again next time (--on-error retry)",
                path.display()
            )
        }
        Err(e) => return Err(e.into()),
    };
    if std::io::stderr().is_terminal() {
        let tail = match summary.stop {
            StopReason::Gap {
                waiting_for,
                later_present,
            } => {
                format!(
                    "; waiting for seq {waiting_for} ({later_present} later jobs present; see `fspl queue-status`)"
                )
            }
            _ => String::new(),
        };
        if summary.processed > 0 || !tail.is_empty() {
            tracing::info!(
                "{} jobs run ({} succeeded, {} failed){tail}",
                summary.processed,
                summary.succeeded,
                summary.failed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stdin_process(a: StdinProcessArgs) -> anyhow::Result<ExitCode> {
    let trust = super::keys::trust(&a.keys)?;
    let (d, payload) = super::info::stdin_job(&a.keys.ids)?;
    let seq = d.header.seq;
    let header = d.header.clone();
    let (stdin, finish) =
        if d.ext.payload_len.is_some() || d.ext.digest.is_some() || trust.is_some() {
            // Checked as queue-process checks a job file: the header against
            // the trust file (no queue here: a job addressed to a queue is
            // checked only against the sender's allowed queue names), then the
            // payload. A regular file read by the command is the file itself,
            // its digest checked meanwhile; with --trust, checked under a read
            // lease and fed through a pipe, or copied. Anything else is checked
            // in full before the command sees a byte (a pipe or a decoded
            // payload copied to a temporary file). So is the payload with
            // --ignore-payload, where the command inherits our stdin and so
            // could read it: it then gets the checked copy (or our stdin
            // itself, where it is a regular file and there is no trust file).
            let check = JobCheck::new(trust.as_deref(), d.ext.to.clone(), a.run.allow_job_params);
            let usage = if a.run.ignore_payload {
                PayloadUse::Exposed
            } else {
                PayloadUse::Read
            };
            let job = stdin_as_job(d, payload)?;
            let verdict = check
                .job(job, usage, Path::new("stdin"))
                .with_context(|| format!("job {seq} (stdin)"))?;
            match verdict {
                Verdict::Run(cleared) => cleared
                    .into_stdio()
                    .with_context(|| format!("job {seq} (stdin): cannot set up the payload"))?,
                Verdict::Refuse(r) => anyhow::bail!("job {seq} (stdin) refused: {}", r.reason),
                Verdict::Fail(Outcome::PayloadError(e)) => {
                    anyhow::bail!("job {seq} (stdin) refused: cannot read the payload: {e}")
                }
                Verdict::Fail(outcome) => anyhow::bail!("job {seq} (stdin): {outcome}"),
            }
        } else if a.run.ignore_payload {
            // As in Filespooler, --ignore-payload leaves the command's stdin
            // alone: it inherits ours (positioned after the header).
            (Stdio::inherit(), PayloadFinish::Nothing)
        } else {
            match payload {
                // Our stdin is positioned at the payload: the command inherits it.
                StreamPayload::Plain(_) => (Stdio::inherit(), PayloadFinish::Nothing),
                StreamPayload::Decoded { reader, what } => Payload::Stream {
                    reader,
                    what,
                    size: None,
                }
                .into_stdio()
                .context("cannot set up the payload pipe")?,
            }
        };
    let outcome = process::run_stream_job(
        &header,
        stdin,
        finish,
        &a.command,
        &a.params,
        a.run.allow_job_params,
        a.run.timeout.map(Duration::from_secs),
    )?;
    if !outcome.is_success() {
        anyhow::bail!("job {seq} (stdin): {outcome}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The job on stdin as an opened job for [`JobCheck`]: a regular file as
/// itself (its payload starting where stdin is positioned, just after the
/// header), anything else (a pipe, a decoded payload) as a stream.
fn stdin_as_job(d: Decoded, payload: StreamPayload<RawStdin>) -> anyhow::Result<OpenedJob> {
    let (header_len, payload) = match payload {
        StreamPayload::Plain(stdin) if stdin_is_file() => {
            let mut f = stdin.into_file().context("cannot duplicate stdin")?;
            let pos = f
                .stream_position()
                .context("cannot tell stdin's position")?;
            (pos, Payload::File(f))
        }
        StreamPayload::Plain(stdin) => (
            d.header_len,
            Payload::Stream {
                reader: Box::new(stdin),
                what: "stdin",
                size: None,
            },
        ),
        StreamPayload::Decoded { reader, what } => (
            d.header_len,
            Payload::Stream {
                reader,
                what,
                size: None,
            },
        ),
    };
    Ok(OpenedJob {
        header: d.header,
        header_len,
        ext: d.ext,
        payload,
    })
}

/// Whether fd 0 is a regular file.
fn stdin_is_file() -> bool {
    // SAFETY: stat is plain data, filled in by fstat on fd 0; the result
    // is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstat(0, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG }
}

/// A progress bar on stderr when it is a terminal: jobs done of those ready,
/// the current seq, payload bytes. Nothing at all otherwise (cron, pipes).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    bytes: u64,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr_with_hz(4),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} jobs  {msg}  {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Progress { bar, bytes: 0 }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn planned(&mut self, ready: u64) {
        if let Some(b) = &self.bar {
            b.set_length(ready);
        }
    }

    fn started(&mut self, job: &JobReport<'_>) {
        if let Some(b) = &self.bar {
            if b.position() >= b.length().unwrap_or(0) {
                b.inc_length(1);
            }
            b.set_message(format!(
                "seq {}  {} payload",
                job.seq,
                indicatif::BinaryBytes(self.bytes + job.payload_bytes.unwrap_or(0))
            ));
        }
    }

    fn finished(&mut self, job: &JobReport<'_>, _outcome: &Outcome, _elapsed: Duration) {
        self.bytes += job.payload_bytes.unwrap_or(0);
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
}
