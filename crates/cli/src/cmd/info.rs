//! `stdin-info`, `stdin-payload`.

use std::process::ExitCode;

use anyhow::Context;
use fspl_format::{Decoded, format_env};
use fspl_queue::bounded::Bounded;
use fspl_queue::{CopyError, StreamPayload, copy_stream, open_stream};

use crate::cli::IdentityArgs;
use crate::output::{RawStdin, StdoutError, raw_stdout, write_stdout};

/// Read the header of the job on stdin (compressed as a whole or not). A
/// plain job is read exactly up to its payload, so stdin can be handed on.
pub fn stdin_job(ids: &IdentityArgs) -> anyhow::Result<(Decoded, StreamPayload<RawStdin>)> {
    let ids = super::keys::identities(ids)?;
    open_stream(RawStdin::new(), ids.as_deref()).context("job on stdin")
}

pub fn stdin_info(ids: &IdentityArgs) -> anyhow::Result<ExitCode> {
    let (d, _) = stdin_job(ids)?;
    write_stdout(&format_env(&d.header.environment(None)))?;
    Ok(ExitCode::SUCCESS)
}

pub fn stdin_payload(ids: &IdentityArgs) -> anyhow::Result<ExitCode> {
    let (d, payload) = stdin_job(ids)?;
    let (reader, what): (Box<dyn std::io::Read>, &str) = match payload {
        StreamPayload::Plain(r) => (Box::new(r), "stdin"),
        StreamPayload::Decoded { reader, what } => (reader, what),
    };
    // No further than one byte past the length the header says: a small
    // compressed job cannot make us decode gigabytes it does not declare.
    let mut reader = Bounded::new(reader, d.ext.payload_len);
    match copy_stream(&mut reader, &mut *raw_stdout()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(CopyError::Write(e)) => Err(StdoutError(e).into()),
        Err(CopyError::Read(e)) => Err(anyhow::Error::new(e)
            .context(format!("job on stdin: cannot read the payload ({what})"))),
    }
}
