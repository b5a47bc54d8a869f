//! Writing to stdout and stderr.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// Print an error and its causes on one line: `fspl: error: a: b: c`.
pub fn print_error(e: &anyhow::Error) {
    // One line, whatever the messages contain (file names, job data):
    // control characters are shown escaped.
    let chain = fspl_queue::display_chain(e.as_ref());
    let _ = writeln!(
        io::stderr().lock(),
        "fspl: error: {}",
        fspl_queue::escape_controls(&chain)
    );
}

/// True when the error comes from writing to a closed stdout pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<StdoutError>()
                .is_some_and(|s| s.0.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A failed write to stdout.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout")]
pub struct StdoutError(#[source] pub io::Error);

/// Our stdout as an unbuffered file (fd 1): binary data goes straight out,
/// and copies between files can use the kernel's fast paths.
pub fn raw_stdout() -> ManuallyDrop<File> {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop
    // keeps us from closing it.
    ManuallyDrop::new(unsafe { File::from_raw_fd(1) })
}

/// Our stdin as an unbuffered file (fd 0), so that reading a header consumes
/// exactly the header and a child can inherit the rest.
pub fn raw_stdin() -> ManuallyDrop<File> {
    // SAFETY: as for raw_stdout, with fd 0.
    ManuallyDrop::new(unsafe { File::from_raw_fd(0) })
}

/// Write all of `bytes` to stdout.
pub fn write_stdout(bytes: &[u8]) -> Result<(), StdoutError> {
    let mut out = raw_stdout();
    out.write_all(bytes).map_err(StdoutError)
}

/// fd 0 as an owned reader that never closes it, for APIs that need
/// `Read + Send + 'static`.
pub struct RawStdin(ManuallyDrop<File>);

impl RawStdin {
    pub fn new() -> RawStdin {
        RawStdin(raw_stdin())
    }

    /// A duplicate of fd 0 as an owned file (it shares the file offset).
    pub fn into_file(self) -> io::Result<File> {
        self.0.try_clone()
    }
}

impl io::Read for RawStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
