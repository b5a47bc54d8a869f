//! `stdin-info`, `stdin-payload`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use fspl_format::{format_env, read_header};
use fspl_queue::{CopyError, copy_stream};

use crate::output::{StdoutError, raw_stdin, raw_stdout, write_stdout};

/// Read the header of the job on stdin, consuming exactly the header.
pub fn stdin_header() -> anyhow::Result<fspl_format::Decoded> {
    read_header(&mut *raw_stdin() as &mut dyn Read).context("job on stdin")
}

pub fn stdin_info() -> anyhow::Result<ExitCode> {
    let d = stdin_header()?;
    write_stdout(&format_env(&d.header.environment(None)))?;
    Ok(ExitCode::SUCCESS)
}

pub fn stdin_payload() -> anyhow::Result<ExitCode> {
    stdin_header()?;
    match copy_stream(&mut *raw_stdin() as &mut dyn Read, &mut *raw_stdout()) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(CopyError::Write(e)) => Err(StdoutError(e).into()),
        Err(CopyError::Read(e)) => {
            Err(anyhow::Error::new(e).context("cannot read the payload from stdin"))
        }
    }
}
