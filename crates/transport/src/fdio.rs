//! Reading and writing pipes with a deadline: a peer that goes silent (or
//! stops reading) ends the session with a timeout instead of a hang.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// Wait until `fd` is readable (`write == false`) or writable, at most
/// `timeout`; `false` when the time ran out. Hang-ups and errors count as
/// ready: the read or write that follows reports them.
pub fn wait(fd: &impl AsFd, write: bool, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut p = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n > 0 {
            return Ok(true);
        }
        if left.is_zero() {
            return Ok(false);
        }
    }
}

/// A buffered reader of a pipe whose every wait for data is bounded by
/// `timeout` (an error of kind `TimedOut` then).
pub struct TimedReader {
    file: File,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    pub timeout: Duration,
}

impl TimedReader {
    pub fn new(file: File, timeout: Duration) -> TimedReader {
        TimedReader {
            file,
            buf: vec![0u8; 256 * 1024].into_boxed_slice(),
            pos: 0,
            end: 0,
            timeout,
        }
    }

    /// Whether a read would return at once: bytes are buffered, or the
    /// pipe has some (or has ended).
    pub fn pending(&self) -> bool {
        self.pos < self.end || wait(&self.file, false, Duration::ZERO).unwrap_or(true)
    }

    fn wait_readable(&self) -> io::Result<()> {
        if wait(&self.file, false, self.timeout)? {
            Ok(())
        } else {
            Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("nothing arrived for {} s", self.timeout.as_secs()),
            ))
        }
    }
}

impl Read for TimedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end {
            self.wait_readable()?;
            // Large reads go straight into the caller's buffer.
            if out.len() >= self.buf.len() {
                return self.file.read(out);
            }
            self.pos = 0;
            self.end = self.file.read(&mut self.buf)?;
            if self.end == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A buffered writer to a pipe whose every wait for room is bounded by
/// `timeout`. The pipe should be non-blocking (`set_nonblocking`); on a
/// blocking one it writes at most one page at a time after the pipe said
/// it had room, which a pipe takes without blocking.
pub struct TimedWriter {
    file: File,
    buf: Vec<u8>,
    nonblocking: bool,
    pub timeout: Duration,
}

impl TimedWriter {
    pub fn new(file: File, timeout: Duration) -> TimedWriter {
        let nonblocking = is_nonblocking(&file);
        TimedWriter {
            file,
            buf: Vec::with_capacity(64 * 1024),
            nonblocking,
            timeout,
        }
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Queue bytes; written on `flush`, or at once when the buffer is full.
    pub fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() > self.buf.capacity().max(64 * 1024) && !self.buf.is_empty()
        {
            self.flush_buf()?;
        }
        if data.len() >= 64 * 1024 {
            return self.write_direct(data);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    pub fn flush_buf(&mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_direct(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    fn write_direct(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if !self.nonblocking && !wait(&self.file, true, self.timeout)? {
                return Err(self.timed_out());
            }
            let chunk = if self.nonblocking {
                data
            } else {
                &data[..data.len().min(4096)]
            };
            match self.file.write(chunk) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !wait(&self.file, true, self.timeout)? {
                        return Err(self.timed_out());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            ErrorKind::TimedOut,
            format!(
                "the other side took nothing for {} s",
                self.timeout.as_secs()
            ),
        )
    }

    pub fn into_inner(self) -> File {
        self.file
    }
}

impl Write for TimedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.put(data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

fn is_nonblocking(f: &File) -> bool {
    // SAFETY: F_GETFL on a valid descriptor.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// Ask for a pipe buffer of `bytes` (Linux `F_SETPIPE_SZ`; at most
/// /proc/sys/fs/pipe-max-size, 1 MiB by default): fewer, larger hand-overs
/// between the processes on either end. Anything but a pipe, or a refusal,
/// is left as it is.
pub fn grow_pipe(f: &impl AsFd, bytes: usize) {
    let fd = f.as_fd().as_raw_fd();
    // SAFETY: F_SETPIPE_SZ on a valid descriptor; fails harmlessly on
    // anything that is not a pipe.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes as libc::c_int);
    }
}

/// Make our end of a pipe non-blocking (only for pipes we created: the
/// flag belongs to the open file, which others may share).
pub fn set_nonblocking(f: &impl AsFd) -> io::Result<()> {
    let fd = f.as_fd().as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a valid descriptor.
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

    fn pipe() -> (File, File) {
        let (r, w) = std::io::pipe().unwrap();
        (
            File::from(std::os::fd::OwnedFd::from(r)),
            File::from(std::os::fd::OwnedFd::from(w)),
        )
    }

    #[test]
    fn a_silent_writer_times_the_reader_out() {
        let (r, _w) = pipe();
        let mut tr = TimedReader::new(r, Duration::from_millis(50));
        assert!(!tr.pending());
        let e = tr.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn data_and_the_end_are_pending() {
        let (r, mut w) = pipe();
        let mut tr = TimedReader::new(r, Duration::from_secs(5));
        w.write_all(b"abc").unwrap();
        assert!(tr.pending());
        let mut b = [0u8; 2];
        assert_eq!(tr.read(&mut b).unwrap(), 2);
        assert!(tr.pending(), "one byte is buffered");
        assert_eq!(tr.read(&mut b).unwrap(), 1);
        drop(w);
        assert!(tr.pending(), "the end is ready to be read");
        assert_eq!(tr.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn a_reader_that_stops_reading_times_the_writer_out() {
        for nonblocking in [false, true] {
            let (_r, w) = pipe();
            if nonblocking {
                set_nonblocking(&w).unwrap();
            }
            let mut tw = TimedWriter::new(w, Duration::from_millis(50));
            let e = tw.put(&vec![0u8; 4 << 20]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TimedOut, "nonblocking={nonblocking}");
        }
    }
}
