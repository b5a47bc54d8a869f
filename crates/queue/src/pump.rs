//! Feeding a decoded payload (decompressed, decrypted) to a command through
//! a pipe, from a thread, and telling afterwards whether the whole payload
//! was intact.
//!
//! The job is over when its command exits. Something else may still hold
//! the pipe then (a background process the command started), reading
//! slowly or not at all; the pump must not wait for it. So it writes
//! without blocking and sleeps in `poll` on the pipe together with a cancel
//! pipe, which [`Pump::finish`] closes once the command has been reaped:
//! from then on nothing more is written.

use std::io::{self, ErrorKind, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::concurrent::{Problem, ProblemKind};

/// The pipe's size asked for (Linux lets anyone have 1 MiB by default).
const PIPE_SIZE: usize = 1 << 20;

/// How a pump ended.
#[derive(Debug)]
pub enum PumpResult {
    /// Every byte was decoded and written to the command.
    Complete { bytes: u64 },
    /// The command stopped reading before the end (it closed the pipe, or
    /// it ended while something else held the pipe); the rest was decoded
    /// anyway (to check its integrity) and is `verified`.
    ConsumerStopped { verified: io::Result<u64> },
    /// Decoding failed (truncated or corrupt data).
    SourceError(io::Error),
}

impl PumpResult {
    /// `None` when the payload was whole, else why it was not.
    pub fn payload_error(&self) -> Option<String> {
        self.problem().map(|p| p.why)
    }

    /// `None` when the payload was whole, else what was wrong: a payload
    /// checked on its way (see [`crate::concurrent::HashingReader`]) that
    /// did not match its header, or one that could not be read or decoded
    /// to the end.
    pub fn problem(&self) -> Option<Problem> {
        match self {
            PumpResult::Complete { .. } | PumpResult::ConsumerStopped { verified: Ok(_) } => None,
            PumpResult::ConsumerStopped { verified: Err(e) } | PumpResult::SourceError(e) => {
                Some(match crate::concurrent::mismatch(e) {
                    Some(why) => Problem {
                        why,
                        kind: ProblemKind::Mismatch,
                    },
                    None => Problem {
                        why: e.to_string(),
                        kind: ProblemKind::Incomplete,
                    },
                })
            }
        }
    }
}

/// What to do with the rest of the payload once the command has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing: the command failed, was killed or never started.
    Skip,
    /// The command succeeded: read the rest to check that the payload was
    /// intact, giving up at `deadline` (the end of the job's timeout).
    Rest { deadline: Option<Instant> },
}

#[derive(Default)]
struct Flags {
    /// The command has ended: write nothing more.
    ended: AtomicBool,
    /// Nobody waits for the result any more: stop reading too.
    abandoned: AtomicBool,
}

pub struct Pump {
    result: mpsc::Receiver<PumpResult>,
    /// Closing it wakes the pump out of `poll`.
    cancel: OwnedFd,
    flags: Arc<Flags>,
}

/// Why writing to the command stopped.
enum Stop {
    /// The command (and everything else) closed the pipe, or the command
    /// ended: the consumer is gone.
    Gone,
    Error(io::Error),
}

impl Pump {
    /// Start copying `src` into a new pipe; the read end is for the command.
    pub fn start(mut src: Box<dyn Read + Send>) -> io::Result<(PipeReader, Pump)> {
        let (reader, writer) = io::pipe()?;
        set_nonblocking(&writer)?;
        // A larger pipe means fewer wake-ups of pump and command; without
        // one (a system limit), nothing else changes.
        // SAFETY: fcntl on our own pipe descriptor.
        unsafe {
            libc::fcntl(
                writer.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let (cancel_rx, cancel_tx) = io::pipe()?;
        let flags = Arc::new(Flags::default());
        let (tx, rx) = mpsc::sync_channel(1);
        let f = flags.clone();
        std::thread::Builder::new()
            .name("fspl-pump".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = pump(&mut *src, writer, &cancel_rx, &f);
                let _ = tx.send(r);
            })?;
        Ok((
            reader,
            Pump {
                result: rx,
                cancel: OwnedFd::from(cancel_tx),
                flags,
            },
        ))
    }

    /// The command has ended (it has been reaped, so whatever still holds
    /// the pipe is not the job). Stop writing at once; then, as `check`
    /// says, settle the rest of the payload. Returns why the payload was
    /// not whole, if it was not (or could not be checked by the deadline).
    /// Never waits for a reader of the pipe, and with `Check::Skip` or a
    /// deadline never waits for the source past it either: a pump still
    /// busy then is left to stop on its own at its next read.
    pub fn finish(self, check: Check) -> Option<String> {
        self.finish_problem(check).map(|p| p.why)
    }

    /// [`Pump::finish`], telling a payload that did not match its header
    /// from one that could not be read to the end.
    pub fn finish_problem(self, check: Check) -> Option<Problem> {
        let Pump {
            result,
            cancel,
            flags,
        } = self;
        flags.ended.store(true, Ordering::SeqCst);
        drop(cancel);
        let got = match check {
            Check::Skip => {
                flags.abandoned.store(true, Ordering::SeqCst);
                return None;
            }
            Check::Rest { deadline: None } => result.recv().map_err(|_| None),
            Check::Rest { deadline: Some(at) } => result
                .recv_timeout(at.saturating_duration_since(Instant::now()))
                .map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => Some(at),
                    mpsc::RecvTimeoutError::Disconnected => None,
                }),
        };
        let incomplete = |why: &str| Problem {
            why: why.into(),
            kind: ProblemKind::Incomplete,
        };
        match got {
            Ok(r) => r.problem(),
            Err(Some(_)) => {
                flags.abandoned.store(true, Ordering::SeqCst);
                Some(incomplete(
                    "the command ended before reading all of it, and the rest could not be \
                     checked before the timeout",
                ))
            }
            Err(None) => Some(incomplete("payload thread failed")),
        }
    }
}

fn pump(src: &mut dyn Read, writer: PipeWriter, cancel: &PipeReader, flags: &Flags) -> PumpResult {
    let mut buf = vec![0u8; PIPE_SIZE / 4];
    let mut total = 0u64;
    loop {
        if flags.abandoned.load(Ordering::SeqCst) {
            return PumpResult::SourceError(io::Error::other("abandoned"));
        }
        let n = match src.read(&mut buf) {
            Ok(0) => return PumpResult::Complete { bytes: total },
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return PumpResult::SourceError(e),
        };
        match write_all(&writer, &buf[..n], cancel, flags) {
            Ok(()) => total += n as u64,
            Err(Stop::Gone) => {
                drop(writer);
                let verified = drain(src, &mut buf, flags).map(|rest| total + n as u64 + rest);
                return PumpResult::ConsumerStopped { verified };
            }
            Err(Stop::Error(e)) => {
                return PumpResult::SourceError(io::Error::new(
                    e.kind(),
                    format!("writing to the command: {e}"),
                ));
            }
        }
    }
}

/// Write all of `data` unless the consumer goes away first; sleeps in
/// `poll` on the pipe and the cancel pipe while the pipe is full.
fn write_all(
    mut w: &PipeWriter,
    mut data: &[u8],
    cancel: &PipeReader,
    flags: &Flags,
) -> Result<(), Stop> {
    while !data.is_empty() {
        if flags.ended.load(Ordering::SeqCst) {
            return Err(Stop::Gone);
        }
        match w.write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = [
                    libc::pollfd {
                        fd: w.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: cancel.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds on descriptors we hold; the
                // result only tells us to look again.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if fds[1].revents != 0 {
                    return Err(Stop::Gone);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(Stop::Gone),
            Err(e) => return Err(Stop::Error(e)),
        }
    }
    Ok(())
}

/// Decode the rest to check it, unless nobody waits for the answer any more.
fn drain(src: &mut dyn Read, buf: &mut [u8], flags: &Flags) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        if flags.abandoned.load(Ordering::SeqCst) {
            return Err(io::Error::other("abandoned"));
        }
        match src.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn set_nonblocking(w: &PipeWriter) -> io::Result<()> {
    let fd = w.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; the results are checked. Only
    // our end of the pipe changes: the command's end stays blocking.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Zeros without end; counts what was taken.
    struct Endless(Arc<std::sync::atomic::AtomicU64>);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            self.0.fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(buf.len())
        }
    }

    /// A reader of the pipe that never reads (a background process holding
    /// the command's stdin) does not keep the pump, or its finish, waiting.
    #[test]
    fn finish_does_not_wait_for_a_holder_of_the_pipe_that_never_reads() {
        for check in [
            Check::Skip,
            Check::Rest {
                deadline: Some(Instant::now() + Duration::from_millis(300)),
            },
        ] {
            let data = vec![5u8; 4 << 20];
            let (reader, pump) = Pump::start(Box::new(io::Cursor::new(data))).unwrap();
            // Let it fill the pipe and block.
            std::thread::sleep(Duration::from_millis(100));
            let t0 = Instant::now();
            let r = pump.finish(check);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "finish waited {:?}",
                t0.elapsed()
            );
            // 4 MiB of memory: checking the rest is quick and it is whole.
            if let Check::Rest { .. } = check {
                assert_eq!(r, None, "{check:?}");
            }
            drop(reader);
        }
    }

    /// When checking the rest cannot end before the deadline (an endless
    /// payload), finish says so instead of waiting, and the pump stops.
    #[test]
    fn an_endless_rest_is_abandoned_at_the_deadline() {
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (reader, pump) = Pump::start(Box::new(Endless(count.clone()))).unwrap();
        drop(reader);
        let r = pump.finish(Check::Rest {
            deadline: Some(Instant::now() + Duration::from_millis(200)),
        });
        let why = r.expect("an unchecked rest must be reported");
        assert!(why.contains("could not be checked"), "{why}");
        // It stops on its own soon after.
        std::thread::sleep(Duration::from_millis(200));
        let a = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.load(Ordering::SeqCst), a, "the pump is still reading");
    }

    /// Patterned bytes, then an error at `fail_at` (or the end at `len`).
    struct Pattern {
        pos: usize,
        len: usize,
        fail_at: Option<usize>,
    }
    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = self.fail_at.unwrap_or(self.len);
            if self.pos >= end {
                return match self.fail_at {
                    Some(_) => Err(io::Error::new(ErrorKind::InvalidData, "damaged at the end")),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(end - self.pos).min(100_000);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.pos + i) % 251) as u8;
            }
            self.pos += n;
            Ok(n)
        }
    }

    /// A payload many pipes long arrives whole and in order.
    #[test]
    fn a_large_payload_arrives_whole() {
        let len = (24 << 20) + 12_345;
        let src = Pattern {
            pos: 0,
            len,
            fail_at: None,
        };
        let (mut reader, pump) = Pump::start(Box::new(src)).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert_eq!(pump.finish(Check::Rest { deadline: None }), None);
    }

    /// A command that stops reading part way still has the rest of its
    /// payload checked, and damage at the very end is reported.
    #[test]
    fn a_payload_damaged_past_where_the_command_stopped_reading_is_still_reported() {
        let len = 24 << 20;
        let src = Pattern {
            pos: 0,
            len,
            fail_at: Some(len - 10),
        };
        let (mut reader, pump) = Pump::start(Box::new(src)).unwrap();
        let mut part = vec![0u8; 9 << 20];
        reader.read_exact(&mut part).unwrap();
        drop(reader);
        let why = pump
            .finish(Check::Rest { deadline: None })
            .expect("the damage at the end must be reported");
        assert!(why.contains("damaged at the end"), "{why}");
    }

    #[test]
    fn a_reader_that_reads_everything_gets_everything() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut reader, pump) = Pump::start(Box::new(io::Cursor::new(data.clone()))).unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert!(got == data);
        assert_eq!(pump.finish(Check::Rest { deadline: None }), None);
    }
}
