//! `prepare`, `prepare-nop`, `prepare-fail`, `prepare-get-next`,
//! `prepare-set-next`.
//!
//! Unlike Filespooler 1.2.4, a failed `prepare` never silently burns a
//! sequence number: the input is opened before a number is taken, and the
//! sequence file is advanced only after the header reached stdout. When the
//! payload fails later, the error names the number that is now missing and
//! how to fill the gap.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use fspl_format::{CmdType, Command, Ctime, JobHeader, SET_PREFIX};
use fspl_queue::seqfile::SenderSeq;
use fspl_queue::{CopyError, copy_stream};

use crate::cli::SeqArgs;
use crate::output::{print_error, raw_stdin, raw_stdout};

pub enum Kind {
    Command(Vec<OsString>),
    Nop,
    Fail,
}

pub fn prepare(seq: &SeqArgs, input: Option<&OsStr>, kind: Kind) -> anyhow::Result<ExitCode> {
    // Errors are printed here, not in main: even a closed stdout is worth
    // reporting, because the job did not get through.
    match prepare_inner(seq, input, kind) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            print_error(&e);
            Ok(ExitCode::from(crate::EXIT_FAILURE))
        }
    }
}

enum Input {
    Empty,
    Stdin,
    File(File, OsString),
}

impl Input {
    fn open(input: Option<&OsStr>) -> anyhow::Result<Input> {
        Ok(match input {
            None => Input::Empty,
            Some(s) if s == "-" => Input::Stdin,
            Some(p) => {
                let f = File::open(p).with_context(|| {
                    format!(
                        "cannot open input file {} (no sequence number was used)",
                        p.to_string_lossy()
                    )
                })?;
                if f.metadata().is_ok_and(|m| m.is_dir()) {
                    bail!(
                        "input {} is a directory (no sequence number was used)",
                        p.to_string_lossy()
                    );
                }
                Input::File(f, p.to_os_string())
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Input::Empty => "nothing".into(),
            Input::Stdin => "stdin".into(),
            Input::File(_, p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// Every `FSPL_SET_*` variable, in environment order, prefix removed.
fn captured_env() -> Vec<(Vec<u8>, Vec<u8>)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_vec();
            k.strip_prefix(SET_PREFIX.as_bytes())
                .map(|name| (name.to_vec(), v.into_vec()))
        })
        .collect()
}

fn prepare_inner(seq: &SeqArgs, input: Option<&OsStr>, kind: Kind) -> anyhow::Result<()> {
    let mut input = Input::open(input)?;
    let cmd_type = match kind {
        Kind::Nop => CmdType::Nop,
        Kind::Fail => CmdType::Fail,
        Kind::Command(params) => CmdType::Command(Command {
            params: params.into_iter().map(OsStringExt::into_vec).collect(),
            env: captured_env(),
        }),
    };

    // Take a number (holding the sequence file's lock until it is committed).
    let sender = match (&seq.seq, &seq.seqfile) {
        (Some(_), _) => None,
        (None, Some(f)) if f == "-" => None,
        (None, Some(f)) => Some(SenderSeq::lock(f.as_ref())?),
        (None, None) => bail!("either -s/--seqfile or --seq is needed"),
    };
    let number = match (&seq.seq, &sender) {
        (Some(n), _) => *n,
        (None, Some(s)) => s.next()?,
        (None, None) => 1,
    };
    let header = JobHeader {
        seq: number,
        ctime: Ctime::now(),
        cmd_type,
    };
    let bytes = header.encode().context("cannot encode the job header")?;
    let mut out: Box<dyn Output> = match &seq.compress {
        None => Box::new(Plain(raw_stdout())),
        Some(spec) => Box::new(Compressed(Some(
            spec.encoder(Plain(raw_stdout()))
                .context("cannot start the compressor")?,
        ))),
    };
    // Flushed, so that with --compress too the header has reached stdout
    // before the number is committed.
    out.write_all(&bytes).and_then(|()| out.flush()).map_err(|e| {
        anyhow!(e).context(format!(
            "cannot write job {number} to stdout (no sequence number was used; the next is still {number})"
        ))
    })?;
    if let Some(s) = &sender {
        s.commit(number).with_context(|| {
            format!(
                "job {number} was written to stdout but the sequence file {} could not be advanced; \
                 discard that job, or the next prepare will use seq {number} again",
                s.path().display()
            )
        })?;
    }
    drop(sender);

    let copied = match &mut input {
        Input::Empty => Ok(0),
        Input::Stdin => copy_stream(&mut *raw_stdin() as &mut dyn Read, &mut out),
        Input::File(f, _) => copy_stream(f, &mut out),
    }
    .and_then(|n| out.finish().map(|()| n).map_err(CopyError::Write));
    if let Err(e) = copied {
        let cause = match e {
            CopyError::Read(e) => anyhow!(e).context(format!("reading {} failed", input.name())),
            CopyError::Write(e) => anyhow!(e).context("writing to stdout failed"),
        };
        return Err(cause.context(format!(
            "job {number} is incomplete and seq {number} is now missing for the receiver; \
             fill the gap with `fspl prepare-nop --seq {number}` (or resend the job with \
             `fspl prepare --seq {number} ...`)"
        )));
    }
    Ok(())
}

pub fn get_next(seqfile: &OsStr) -> anyhow::Result<ExitCode> {
    let n = if seqfile == "-" {
        1
    } else {
        SenderSeq::lock(seqfile.as_ref())?.next_creating()?
    };
    crate::output::write_stdout(format!("{n}\n").as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub fn set_next(seqfile: &OsStr, id: u64) -> anyhow::Result<ExitCode> {
    if seqfile == "-" {
        bail!("-s - means no sequence file, so there is nothing to set");
    }
    SenderSeq::lock(seqfile.as_ref())?.set(id)?;
    Ok(ExitCode::SUCCESS)
}

/// Where a job goes: stdout as is, or through a compressor whose trailer
/// (with its checksum) must be written at the end.
trait Output: Write {
    fn finish(&mut self) -> std::io::Result<()>;
}

struct Plain(std::mem::ManuallyDrop<File>);

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output for Plain {
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Compressed(Option<Box<dyn fspl_codec::FinishWrite>>);

impl Write for Compressed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("compressor already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Output for Compressed {
    fn finish(&mut self) -> std::io::Result<()> {
        match self.0.take() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }
}
