//! `queue-process`, `stdin-process`.

use std::fs::File;
use std::io::{IsTerminal, Seek, SeekFrom};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use fspl_format::{DigestAlg, Extension};
use fspl_queue::bounded::{Bounded, too_long};
use fspl_queue::process::{
    self, JobReport, Observer, OnError, OrderBy, OutputTo, ProcessError, ProcessOptions, StopReason,
};
use fspl_queue::{CopyError, Payload, PayloadFinish, Queue, StreamPayload};
use fspl_queue::{concurrent, lease, spool, verify};
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
        // A regular file read by the command: as queue-process does (the
        // file itself, its digest checked meanwhile; with --trust, checked
        // under a read lease and fed through a pipe, or copied).
        StreamPayload::Plain(stdin)
            if (d.ext.payload_len.is_some() || d.ext.digest.is_some())
                && !a.run.ignore_payload
                && stdin_is_file() =>
        {
            let f = stdin.into_file().context("cannot duplicate stdin")?;
            file_payload(f, &d.ext, trust.is_some())
                .map_err(|e| anyhow::anyhow!("job {seq} (stdin) refused: {e}"))?
        }
        // Otherwise the whole payload is checked before the command sees
        // a byte: a regular file is read twice (with --trust: copied while
        // it is checked), anything else spooled. Also with
        // --ignore-payload, where the command inherits our stdin and so
        // could read it: it then gets the checked copy (or our stdin
        // itself, rewound to the payload).
        payload if d.ext.payload_len.is_some() || d.ext.digest.is_some() => {
            let file = checked_payload(payload, &d.ext, trust.is_some())
                .map_err(|e| anyhow::anyhow!("job {seq} (stdin) refused: {e}"))?;
            (Stdio::from(file), PayloadFinish::Nothing)
        }
        // As in Filespooler, --ignore-payload leaves the command's stdin
        // alone: it inherits ours (positioned after the header).
        _ if a.run.ignore_payload => (Stdio::inherit(), PayloadFinish::Nothing),
        // Our stdin is positioned at the payload: the command inherits it.
        StreamPayload::Plain(_) => (Stdio::inherit(), PayloadFinish::Nothing),
        StreamPayload::Decoded { reader, what } => Payload::Stream {
            reader,
            what,
            size: None,
        }
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

/// Whether fd 0 is a regular file.
fn stdin_is_file() -> bool {
    // SAFETY: stat is plain data, filled in by fstat on fd 0; the result
    // is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstat(0, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG }
}

/// The payload of a regular file on stdin (positioned at it) for a command
/// that reads it. The length is checked from the file's size first. Without
/// `trusted` the command gets the file and the digest is checked meanwhile;
/// with it the payload is checked under a read lease and fed through a pipe
/// (or, where no lease can be had, checked while copied).
fn file_payload(
    mut f: File,
    ext: &Extension,
    trusted: bool,
) -> anyhow::Result<(Stdio, PayloadFinish)> {
    let pos = f
        .stream_position()
        .context("cannot tell stdin's position")?;
    let size = f.metadata().context("cannot stat stdin")?.len();
    if let Some(r) = concurrent::length_refusal(ext, size.saturating_sub(pos)) {
        anyhow::bail!(r.reason);
    }
    if ext.digest.is_none() {
        return Ok((Stdio::from(f), PayloadFinish::Nothing));
    }
    if !trusted {
        let check = concurrent::FileCheck::start(
            f.try_clone().context("cannot duplicate stdin")?,
            pos,
            ext,
        )
        .context("cannot start checking the payload")?;
        return Ok((Stdio::from(f), PayloadFinish::Check(check)));
    }
    match lease::check_under_lease(&f, pos, ext) {
        Ok(lease::Leased::Passed(l, len)) => {
            tracing::debug!("payload checked under a read lease");
            let (pipe, feed) =
                lease::LeaseFeed::new(l, pos, len).context("cannot set up the payload pipe")?;
            Ok((Stdio::from(pipe), PayloadFinish::Lease(feed)))
        }
        Ok(lease::Leased::Failed(why)) => Err(anyhow::anyhow!(why)),
        Err(e) => Err(unreadable(&e)),
        Ok(lease::Leased::Unavailable) => {
            tracing::debug!("no read lease on stdin; copying the payload");
            let copied = spool::private_copy_of_file(
                &std::env::temp_dir(),
                &mut f,
                ext.digest.map_or(DigestAlg::Blake3, |d| d.alg),
                ext.payload_len,
            );
            let spooled = match copied {
                Ok(s) => s,
                Err(CopyError::Read(e)) => return Err(unreadable(&e)),
                Err(CopyError::Write(e)) => {
                    return Err(anyhow::anyhow!(
                        "cannot write the temporary payload copy: {e}"
                    ));
                }
            };
            verify::check_payload(ext, spooled.len, &spooled.digest)
                .map_err(|r| anyhow::anyhow!(r.reason))?;
            Ok((Stdio::from(spooled.file), PayloadFinish::Nothing))
        }
    }
}

/// Read a stdin payload to the end (no further than one byte past the
/// length its header says), checking its length and digest, and return a
/// file positioned at its start. Without `trusted`, a regular file on stdin
/// is stdin itself, rewound; anything else (and with `trusted`, everything)
/// is a private unlinked copy, hashed as it was written, so that the
/// command reads exactly the bytes that were checked.
fn checked_payload(
    payload: StreamPayload<RawStdin>,
    ext: &Extension,
    trusted: bool,
) -> anyhow::Result<File> {
    let alg = ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
    let declared = ext.payload_len;
    let copied = match payload {
        StreamPayload::Plain(stdin) => {
            let mut f = stdin.into_file().context("cannot duplicate stdin")?;
            let meta = f.metadata().context("cannot stat stdin")?;
            if meta.is_file() && !trusted {
                let pos = f
                    .stream_position()
                    .context("cannot tell stdin's position")?;
                let (len, digest) = hash_reader(alg, &mut Bounded::new(&mut f, declared))
                    .map_err(|e| unreadable(&e))?;
                verify::check_payload(ext, len, &digest).map_err(|r| anyhow::anyhow!(r.reason))?;
                f.seek(SeekFrom::Start(pos))
                    .context("cannot rewind stdin")?;
                return Ok(f);
            }
            if meta.is_file() {
                spool::private_copy_of_file(&std::env::temp_dir(), &mut f, alg, declared)
            } else {
                spool::private_copy_of_stream(None, &mut f, alg, declared)
            }
        }
        StreamPayload::Decoded { mut reader, .. } => {
            spool::private_copy_of_stream(None, &mut reader, alg, declared)
        }
    };
    let spooled = match copied {
        Ok(s) => s,
        Err(CopyError::Read(e)) => return Err(unreadable(&e)),
        Err(CopyError::Write(e)) => {
            return Err(anyhow::anyhow!(
                "cannot write the temporary payload copy: {e}"
            ));
        }
    };
    verify::check_payload(ext, spooled.len, &spooled.digest)
        .map_err(|r| anyhow::anyhow!(r.reason))?;
    Ok(spooled.file)
}

/// Why a payload could not be read to the end, in one line.
fn unreadable(e: &std::io::Error) -> anyhow::Error {
    match too_long(e) {
        Some(t) => anyhow::anyhow!("{t}"),
        None => anyhow::anyhow!("cannot read the payload: {e}"),
    }
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
