//! What `queue-write` stores, checked as it is copied.
//!
//! The input is read once. Every byte read goes to the temporary file
//! before anything looks at it (so what is stored is exactly what came),
//! and the job is checked on the way: the header (magic, version, CRCs,
//! the metadata limits), and when the header carries them the payload's
//! length and digest. A compressed job is decoded in-process and checked
//! the same way (it is stored as it came, compressed); an age-encrypted one
//! is decrypted and checked when identities are given, and otherwise only
//! its age header is checked. Anything else is refused: the caller removes
//! the temporary, so nothing is stored.
//!
//! Speed: a large plain payload is hashed on a second thread while this
//! one reads and writes the next buffer, and the kernel is asked to start
//! writing the temporary to disk every few megabytes
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the final `fsync`
//! has little left to wait for.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use fspl_codec::{Compression, Peeked};
use fspl_format::{Extension, HeaderError, read_header};
use fspl_trust::crypt::{Identities, check_header, decrypt, is_age};
use fspl_trust::digest::{HashThread, Hasher};

use crate::bounded::PayloadTooLong;
use crate::error::QueueError;
use crate::failpoint::hit;
use crate::queue::JobSource;

/// Why a job was not stored.
pub(crate) enum Failure {
    /// Reading the input or writing the temporary failed.
    Io(QueueError),
    /// The input is not a valid job; the reason, in words.
    Invalid(String),
}

/// Size of the tee's own buffer, and so of most reads from the input.
const TEE_BUF: usize = 64 * 1024;
/// Start writeback of the temporary every this many bytes.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// Buffers of the hashing thread (count and size).
const HASH_BUFFERS: usize = 3;
const HASH_BUF: usize = 512 * 1024;
/// A payload hashed on this thread up to here moves to a hashing thread.
const HASH_INLINE_MAX: u64 = 4 * 1024 * 1024;
/// Buffer for hashing on this thread.
const INLINE_BUF: usize = 256 * 1024;

/// Reads the input and writes every byte it reads to the temporary before
/// passing it on (a write-through buffered reader).
struct Tee<'a> {
    input: &'a mut dyn JobSource,
    file: &'a File,
    tmp: &'a Path,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    /// Bytes stored so far, and how far writeback has been started.
    stored: u64,
    kicked: u64,
    /// The first I/O error (input or temporary); it wins over whatever the
    /// reader above makes of the failed read.
    failed: Option<QueueError>,
    mid_copy_done: bool,
}

impl<'a> Tee<'a> {
    fn new(input: &'a mut dyn JobSource, file: &'a File, tmp: &'a Path) -> Tee<'a> {
        Tee {
            input,
            file,
            tmp,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            stored: 0,
            kicked: 0,
            failed: None,
            mid_copy_done: false,
        }
    }

    fn fail(&mut self, e: QueueError) -> io::Error {
        let msg = crate::display_chain(&e);
        if self.failed.is_none() {
            self.failed = Some(e);
        }
        io::Error::other(msg)
    }

    /// One read from the input (retrying EINTR).
    fn read_input(&mut self, into: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.input.read(into) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(self.fail(QueueError::Io {
                        action: "read job from",
                        path: PathBuf::from("stdin"),
                        source,
                    }));
                }
            }
        }
    }

    /// Write `data` to the temporary; start writeback now and then.
    fn store(&mut self, data: &[u8]) -> io::Result<()> {
        if let Err(source) = self.file.write_all(data) {
            return Err(self.fail(QueueError::Io {
                action: "write",
                path: self.tmp.to_path_buf(),
                source,
            }));
        }
        self.stored += data.len() as u64;
        if !self.mid_copy_done {
            // Part of the job is in: a fault here leaves a partial file.
            self.mid_copy_done = true;
            if let Err(source) = hit("write:mid-copy") {
                return Err(self.fail(QueueError::Io {
                    action: "write",
                    path: self.tmp.to_path_buf(),
                    source,
                }));
            }
        }
        if self.stored - self.kicked >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    /// Ask the kernel to start writing what was stored since last time.
    fn start_writeback(&mut self) {
        start_writeback(self.file, self.kicked, self.stored);
        self.kicked = self.stored;
    }

    /// Copy the rest of the input to the temporary unread (nothing more to
    /// check). From a file or pipe the kernel copies.
    fn drain(&mut self) -> Result<(), Failure> {
        // Whatever is still buffered was stored already.
        self.pos = self.filled;
        let failed = |t: &mut Tee, e: io::Error| {
            Failure::Io(t.failed.take().unwrap_or_else(|| QueueError::Io {
                action: "copy the job from stdin into",
                path: t.tmp.to_path_buf(),
                source: e,
            }))
        };
        if let Some(mut src) = self.input.as_file() {
            let mut dst: &File = self.file;
            let (mut stored, mut kicked) = (self.stored, self.kicked);
            let copied = loop {
                match io::copy(&mut (&mut src).take(WRITEBACK_EVERY), &mut dst) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        stored += n;
                        start_writeback(dst, kicked, stored);
                        kicked = stored;
                    }
                    Err(e) => break Err(e),
                }
            };
            (self.stored, self.kicked) = (stored, kicked);
            return copied.map_err(|e| failed(self, e));
        }
        let mut buf = vec![0u8; TEE_BUF];
        loop {
            match self.read_input(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if let Err(e) = self.store(&buf[..n]) {
                        return Err(failed(self, e));
                    }
                }
                Err(e) => return Err(failed(self, e)),
            }
        }
    }
}

/// Ask the kernel to start writing bytes `from..to` of `file` to disk (no
/// waiting; only a hint: the `fsync` at the end is what makes them durable,
/// and it reports any error, so one here is ignored).
fn start_writeback(file: &File, from: u64, to: u64) {
    if to <= from {
        return;
    }
    // SAFETY: sync_file_range on an open descriptor of ours; it only
    // schedules I/O.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Read for Tee<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.filled {
            if out.len() >= TEE_BUF {
                // Large reads go straight into the caller's buffer.
                let n = self.read_input(out)?;
                self.store(&out[..n])?;
                return Ok(n);
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(TEE_BUF, 0);
            let r = self.read_input(&mut buf);
            let r = r.and_then(|n| self.store(&buf[..n]).map(|()| n));
            self.buf = buf;
            self.pos = 0;
            self.filled = r?;
            if self.filled == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read the job from `input` into `file` (the open temporary at `tmp`) and
/// check it; `Ok` when it is valid and wholly stored (not yet synced).
pub(crate) fn receive(
    input: &mut dyn JobSource,
    file: &File,
    tmp: &Path,
    identities: Option<&Identities>,
) -> Result<(), Failure> {
    let mut tee = Tee::new(input, file, tmp);
    let checked = check(&mut tee, identities);
    // An I/O error says more than what the check made of it.
    if let Some(e) = tee.failed.take() {
        return Err(Failure::Io(e));
    }
    match checked {
        Ok(()) => tee.drain(),
        Err(reason) => Err(Failure::Invalid(reason)),
    }
}

/// Check the job as it streams by; the reason when it is not valid.
fn check(tee: &mut Tee, identities: Option<&Identities>) -> Result<(), String> {
    let mut peeked = Peeked::new(&mut *tee).map_err(|e| e.to_string())?;
    if is_age(peeked.head()) {
        let Some(ids) = identities else {
            // Nothing to decrypt with: the header must at least be age's.
            return check_header(&mut peeked).map_err(|e| format!("encrypted (age): {e}"));
        };
        let plain = decrypt(&ids.0, &mut peeked).map_err(|e| {
            format!("encrypted (age), and none of the --identity keys decrypts it: {e}")
        })?;
        let mut inner = Peeked::new(plain).map_err(|e| format!("age data: {e}"))?;
        return match inner.compression() {
            None => check_job(&mut inner, "age"),
            Some(c) => {
                let what = match c {
                    Compression::Zstd => "age+zstd",
                    Compression::Gzip => "age+gzip",
                    Compression::Xz => "age+xz",
                    Compression::Lz4 => "age+lz4",
                };
                let mut d = c.decoder(inner).map_err(|e| format!("{what} data: {e}"))?;
                check_job(&mut d, what)
            }
        };
    }
    match peeked.compression() {
        None => check_job(&mut peeked, ""),
        Some(c) => {
            let mut d = c
                .decoder(&mut peeked)
                .map_err(|e| format!("{c} data: {e}"))?;
            check_job(&mut d, c.name())
        }
    }
}

/// Check a (decoded) job: its header, then its payload against the length
/// and digest the header states. `what` names the encoding for messages
/// ("" for a plain job).
fn check_job(r: &mut dyn Read, what: &str) -> Result<(), String> {
    let prefix = |e: String| {
        if what.is_empty() {
            e
        } else {
            format!("{what} data: {e}")
        }
    };
    let decoded = read_header(r).map_err(|e| match e {
        HeaderError::Io(io) => prefix(crate::strip_os_errors(&io.to_string())),
        other => prefix(crate::display_chain(&other)),
    })?;
    let ext = &decoded.ext;
    if ext.payload_len.is_none() && ext.digest.is_none() {
        // Nothing to check the payload against (jobs made by Filespooler).
        // A compressed or encrypted one is still decoded to its end, which
        // checks the encoding's own integrity (checksums, authentication).
        if !what.is_empty() {
            let mut sink = io::sink();
            crate::copy_stream(r, &mut sink).map_err(|e| match e {
                crate::CopyError::Read(e) => prefix(crate::strip_os_errors(&e.to_string())),
                crate::CopyError::Write(e) => e.to_string(),
            })?;
        }
        return Ok(());
    }
    check_payload(r, ext).map_err(|e| match e {
        PayloadError::Read(e) => prefix(crate::strip_os_errors(&e.to_string())),
        PayloadError::Invalid(s) => s,
    })
}

enum PayloadError {
    Read(io::Error),
    Invalid(String),
}

/// Fill `buf` as far as the input goes; how much was read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, PayloadError> {
    fspl_format::read_full(r, buf).map_err(PayloadError::Read)
}

/// Read the payload to its end (no further than one byte past the declared
/// length), hashing it, and compare with what the header says.
fn check_payload(r: &mut dyn Read, ext: &Extension) -> Result<(), PayloadError> {
    let declared = ext.payload_len;
    // How much the next read may take: up to one byte past the declared
    // length, which tells a payload that ends there from a longer one.
    let room = |total: u64, cap: usize| -> usize {
        match declared {
            Some(d) => usize::try_from(d.saturating_sub(total).saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(cap),
            None => cap,
        }
    };
    let too_long = |total: u64| match declared {
        Some(d) if total > d => Err(PayloadError::Invalid(
            PayloadTooLong { declared: d }.to_string(),
        )),
        _ => Ok(()),
    };
    let mut hasher = ext.digest.map(|d| Hasher::new(d.alg));
    let mut total = 0u64;
    let mut buf = vec![0u8; room(0, INLINE_BUF).max(1)];
    // The first few megabytes are hashed here; a longer payload moves to a
    // hashing thread, so that hashing overlaps with reading and writing.
    let parallel = std::thread::available_parallelism().map_or(1, usize::from) > 1;
    loop {
        let want = room(total, buf.len());
        let n = fill(r, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        total += n as u64;
        too_long(total)?;
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        if n < want {
            break;
        }
        if parallel
            && total >= HASH_INLINE_MAX
            && let Some(h) = hasher.take()
        {
            drop(buf);
            let digest = hash_on_thread(r, h, &mut total, &room, &too_long)?;
            return finish(ext, total, digest.as_ref());
        }
    }
    let digest = hasher.map(Hasher::finish);
    finish(ext, total, digest.as_ref())
}

/// The rest of the payload, hashed on a second thread.
fn hash_on_thread(
    r: &mut dyn Read,
    h: Hasher,
    total: &mut u64,
    room: &dyn Fn(u64, usize) -> usize,
    too_long: &dyn Fn(u64) -> Result<(), PayloadError>,
) -> Result<Option<fspl_format::Digest>, PayloadError> {
    let thread_failed = |e: io::Error| PayloadError::Invalid(format!("cannot hash the payload: {e}"));
    let mut t = HashThread::start(h, HASH_BUFFERS, HASH_BUF).map_err(thread_failed)?;
    loop {
        let mut buf = t.buffer().map_err(thread_failed)?;
        let want = room(*total, buf.len());
        let n = fill(r, &mut buf[..want])?;
        *total += n as u64;
        too_long(*total)?;
        t.submit(buf, n).map_err(thread_failed)?;
        if n < want {
            break;
        }
    }
    t.finish().map(Some).map_err(thread_failed)
}

fn finish(
    ext: &Extension,
    len: u64,
    digest: Option<&fspl_format::Digest>,
) -> Result<(), PayloadError> {
    if let Some(want) = ext.payload_len
        && want != len
    {
        return Err(PayloadError::Invalid(format!(
            "payload is {len} bytes, the header says {want} (cut short or altered)"
        )));
    }
    if let Some(d) = digest {
        crate::verify::check_payload(ext, len, d).map_err(|r| PayloadError::Invalid(r.reason))?;
    }
    Ok(())
}
