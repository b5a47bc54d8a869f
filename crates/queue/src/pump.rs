//! Feeding a decoded payload (decompressed, later decrypted) to a command
//! through a pipe, from a thread, and telling afterwards whether the whole
//! payload was intact.

use std::io::{self, ErrorKind, PipeReader, Read, Write};
use std::thread::JoinHandle;

/// How a pump ended.
#[derive(Debug)]
pub enum PumpResult {
    /// Every byte was decoded and written to the command.
    Complete { bytes: u64 },
    /// The command stopped reading before the end; the rest was decoded
    /// anyway (to check its integrity) and is `verified`.
    ConsumerStopped { verified: io::Result<u64> },
    /// Decoding failed (truncated or corrupt data).
    SourceError(io::Error),
}

impl PumpResult {
    /// `None` when the payload was whole, else why it was not.
    pub fn payload_error(&self) -> Option<String> {
        match self {
            PumpResult::Complete { .. } | PumpResult::ConsumerStopped { verified: Ok(_) } => None,
            PumpResult::ConsumerStopped { verified: Err(e) } | PumpResult::SourceError(e) => {
                Some(e.to_string())
            }
        }
    }
}

pub struct Pump {
    handle: JoinHandle<PumpResult>,
}

impl Pump {
    /// Start copying `src` into a new pipe; the read end is for the command.
    pub fn start(mut src: Box<dyn Read + Send>) -> io::Result<(PipeReader, Pump)> {
        let (reader, mut writer) = io::pipe()?;
        let handle = std::thread::Builder::new()
            .name("fspl-pump".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = match src.read(&mut buf) {
                        Ok(0) => return PumpResult::Complete { bytes: total },
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return PumpResult::SourceError(e),
                    };
                    if let Err(e) = writer.write_all(&buf[..n]) {
                        if e.kind() == ErrorKind::BrokenPipe {
                            drop(writer);
                            let verified =
                                io::copy(&mut src, &mut io::sink()).map(|n2| total + n as u64 + n2);
                            return PumpResult::ConsumerStopped { verified };
                        }
                        return PumpResult::SourceError(io::Error::new(
                            e.kind(),
                            format!("writing to the command: {e}"),
                        ));
                    }
                    total += n as u64;
                }
            })?;
        Ok((reader, Pump { handle }))
    }

    /// Wait for the pump (the command has ended, so it cannot block on the
    /// pipe any more).
    pub fn join(self) -> PumpResult {
        self.handle
            .join()
            .unwrap_or_else(|_| PumpResult::SourceError(io::Error::other("payload thread failed")))
    }
}
