//! `queue-process`, `stdin-process`.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use fspl_format::{DigestAlg, Extension};
use fspl_queue::process::{
    self, JobReport, Observer, OnError, OrderBy, OutputTo, ProcessError, ProcessOptions, StopReason,
};
use fspl_queue::verify;
use fspl_queue::{Payload, PayloadFinish, Queue, StreamPayload};
use fspl_trust::digest::hash_reader;

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
    if let Some(t) = trust.as_deref() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_secs() as i64)
            .unwrap_or(0);
        // No queue here: a job addressed to a queue is checked only against
        // the sender's allowed queue names.
        verify::check_header(
            &d.header,
            &d.ext,
            Some(t),
            d.ext.to.as_deref(),
            a.run.allow_job_params,
            now,
        )
        .map_err(|r| anyhow::anyhow!("job {seq} (stdin) refused: {}", r.reason))?;
    }
    let (stdin, finish) = match payload {
        // The whole payload is checked before the command sees a byte: a
        // regular file is read twice, anything else spooled. Also with
        // --ignore-payload, where the command inherits our stdin and so
        // could read it: it then gets the checked copy (or our stdin itself,
        // rewound to the payload).
        payload if d.ext.payload_len.is_some() || d.ext.digest.is_some() => {
            let file = checked_payload(payload, &d.ext)
                .map_err(|e| anyhow::anyhow!("job {seq} (stdin) refused: {e}"))?;
            (Stdio::from(file), PayloadFinish::Nothing)
        }
        // As in Filespooler, --ignore-payload leaves the command's stdin
        // alone: it inherits ours (positioned after the header).
        _ if a.run.ignore_payload => (Stdio::inherit(), PayloadFinish::Nothing),
        // Our stdin is positioned at the payload: the command inherits it.
        StreamPayload::Plain(_) => (Stdio::inherit(), PayloadFinish::Nothing),
        StreamPayload::Decoded { reader, what } => Payload::Stream { reader, what }
            .into_stdio()
            .context("cannot set up the payload pipe")?,
    };
    let outcome = process::run_stream_job(
        &d.header,
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

/// Read a stdin payload to the end, checking its length and digest, and
/// return a file positioned at its start: stdin itself when it is a
/// regular file, else an unlinked temporary copy.
fn checked_payload(payload: StreamPayload<RawStdin>, ext: &Extension) -> anyhow::Result<File> {
    let alg = ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
    let (mut reader, mut regular): (Box<dyn Read>, Option<(File, u64)>) = match payload {
        StreamPayload::Plain(stdin) => {
            let f = stdin.into_file().context("cannot duplicate stdin")?;
            let meta = f.metadata().context("cannot stat stdin")?;
            if meta.is_file() {
                let pos = (&f)
                    .stream_position()
                    .context("cannot tell stdin's position")?;
                let dup = f.try_clone().context("cannot duplicate stdin")?;
                (Box::new(dup), Some((f, pos)))
            } else {
                (Box::new(f), None)
            }
        }
        StreamPayload::Decoded { reader, .. } => (reader, None),
    };
    if let Some((f, pos)) = regular.take() {
        let (len, digest) = hash_reader(alg, &mut reader).context("cannot read the payload")?;
        verify::check_payload(ext, len, &digest).map_err(|r| anyhow::anyhow!(r.reason))?;
        let mut f = f;
        f.seek(SeekFrom::Start(pos))
            .context("cannot rewind stdin")?;
        return Ok(f);
    }
    let mut spool =
        tempfile::tempfile().context("cannot create a temporary file for the payload")?;
    let mut hasher = fspl_trust::digest::Hasher::new(alg);
    let mut buf = vec![0u8; 128 * 1024];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the payload")),
        };
        hasher.update(&buf[..n]);
        spool
            .write_all(&buf[..n])
            .context("cannot write the temporary payload copy")?;
        len += n as u64;
    }
    verify::check_payload(ext, len, &hasher.finish()).map_err(|r| anyhow::anyhow!(r.reason))?;
    spool
        .seek(SeekFrom::Start(0))
        .context("cannot rewind the temporary payload copy")?;
    Ok(spool)
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

    fn finished(
        &mut self,
        job: &JobReport<'_>,
        _outcome: &fspl_queue::exec::Outcome,
        _elapsed: Duration,
    ) {
        self.bytes += job.payload_bytes.unwrap_or(0);
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
}
