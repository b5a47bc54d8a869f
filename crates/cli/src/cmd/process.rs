//! `queue-process`, `stdin-process`.

use std::io::IsTerminal;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use fspl_queue::process::{
    self, NoObserver, OnError, OrderBy, OutputTo, ProcessError, ProcessOptions, StopReason,
};
use fspl_queue::{Payload, PayloadFinish, Queue, StreamPayload};

use crate::cli::{OnErrorArg, OrderByArg, OutputToArg, QueueProcessArgs, StdinProcessArgs};

pub fn queue_process(a: QueueProcessArgs) -> anyhow::Result<ExitCode> {
    let q = Queue::new(&a.q.queuedir);
    let opts = ProcessOptions {
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
    let summary = match process::process(&q, &opts, &mut NoObserver) {
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
    let (d, payload) = super::info::stdin_job()?;
    let (stdin, finish) = match payload {
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
        anyhow::bail!("job {} (stdin): {outcome}", d.header.seq);
    }
    Ok(ExitCode::SUCCESS)
}
