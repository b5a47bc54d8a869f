//! External decoders (`-d CMD`): `$SHELL -c CMD` reads the stored file on
//! stdin and writes the job file on stdout, exactly as in Filespooler.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};

/// A decoder command line.
#[derive(Clone, Debug)]
pub struct Decoder {
    command: OsString,
}

/// A decoder running on one file; its stdout yields the decoded job.
pub struct DecoderChild {
    child: Child,
    pub stdout: Option<ChildStdout>,
}

impl Decoder {
    pub fn new(command: impl Into<OsString>) -> Decoder {
        Decoder {
            command: command.into(),
        }
    }

    pub fn command(&self) -> &OsStr {
        &self.command
    }

    /// Start the decoder with `input` as its stdin, in a process group of its
    /// own so that it and anything it starts can be stopped together.
    pub fn spawn(&self, input: File) -> io::Result<DecoderChild> {
        let shell = std::env::var_os("SHELL")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| OsString::from("/bin/sh"));
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(&self.command)
            .stdin(input)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let stdout = child.stdout.take();
        Ok(DecoderChild { child, stdout })
    }
}

impl DecoderChild {
    /// Stop the decoder and everything in its process group, once we have
    /// read what we need or the job's command has ended. Like Filespooler, a
    /// decoder's exit status is not judged.
    pub fn kill(mut self) {
        self.stdout = None;
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

fn kill_group(child: &Child) {
    // SAFETY: signalling the process group we created for this child; a
    // stale group id at worst yields ESRCH, which we ignore.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
}
