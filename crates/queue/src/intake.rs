//! What `queue-write` stores, checked as it is copied.
//!
//! The input is read once. Every byte read goes to the temporary file
//! before anything looks at it, so what is stored is exactly what came,
//! and the job is checked on the way: the header (magic, version, CRCs,
//! the metadata limits), and when the header carries them the payload's
//! length and digest. A compressed job is decoded in-process and checked
//! the same way (it is stored as it came, compressed); an age-encrypted one
//! is decrypted and checked when identities are given, and otherwise only
//! its age header is checked. Anything else is refused: the caller removes
//! the temporary, so nothing is stored.
//!
//! A large plain payload (with a declared length) is copied by the kernel
//! (`copy_file_range` from a file, `splice` from a pipe: no pass through
//! our memory), while a second thread hashes what has been stored, read
//! back from the page cache: the digest is of exactly the stored bytes,
//! whatever happens to the input meanwhile. Every few megabytes the kernel
//! is asked to start writing the temporary to disk
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the final `fsync` has
//! little left to wait for.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use fspl_codec::{Compression, MAGIC_LEN, Peeked};
use fspl_format::{Digest, Extension, HeaderError, read_header};
use fspl_trust::crypt::{Identities, check_header, decrypt, is_age};
use fspl_trust::digest::{Hasher, hash_range};

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
/// Start writeback of the temporary every this many bytes; also the size
/// of one kernel copy.
const CHUNK: u64 = 8 * 1024 * 1024;
/// A declared payload at least this much larger than what the first read
/// brought is copied by the kernel and hashed on a second thread.
const KERNEL_COPY_MIN: u64 = 1024 * 1024;
/// Buffer for hashing on this thread, and for reading the stored payload
/// back on the hashing thread.
const HASH_BUF: usize = 128 * 1024;

/// Reads the input and writes every byte it reads to the temporary before
/// passing it on (a write-through buffered reader).
struct Tee<'a> {
    input: &'a mut dyn JobSource,
    /// What the input is, for errors ("stdin", a file).
    from: &'a Path,
    /// Where the job is stored; None when it is only checked.
    file: Option<&'a File>,
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
    /// The input said it ended (a read returned nothing).
    eof: bool,
}

impl<'a> Tee<'a> {
    fn new(
        input: &'a mut dyn JobSource,
        from: &'a Path,
        file: Option<&'a File>,
        tmp: &'a Path,
    ) -> Tee<'a> {
        Tee {
            input,
            from,
            file,
            tmp,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            stored: 0,
            kicked: 0,
            failed: None,
            mid_copy_done: false,
            eof: false,
        }
    }

    fn fail(&mut self, e: QueueError) -> io::Error {
        let msg = crate::display_chain(&e);
        if self.failed.is_none() {
            self.failed = Some(e);
        }
        io::Error::other(msg)
    }

    /// The error of a kernel copy, which does not say which side failed.
    fn copy_failed(&mut self, source: io::Error) -> Failure {
        let action = if self.from == Path::new("stdin") {
            "copy the job from stdin into"
        } else {
            "copy the job into"
        };
        Failure::Io(self.failed.take().unwrap_or_else(|| QueueError::Io {
            action,
            path: self.tmp.to_path_buf(),
            source,
        }))
    }

    /// One read from the input (retrying EINTR).
    fn read_input(&mut self, into: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.input.read(into) {
                Ok(n) => {
                    self.eof |= n == 0 && !into.is_empty();
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(self.fail(QueueError::Io {
                        action: "read job from",
                        path: self.from.to_path_buf(),
                        source,
                    }));
                }
            }
        }
    }

    /// Write `data` to the temporary; start writeback now and then.
    fn store(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(mut f) = self.file
            && let Err(source) = f.write_all(data)
        {
            return Err(self.fail(QueueError::Io {
                action: "write",
                path: self.tmp.to_path_buf(),
                source,
            }));
        }
        self.stored += data.len() as u64;
        self.mid_copy()?;
        if self.stored - self.kicked >= CHUNK {
            self.start_writeback();
        }
        Ok(())
    }

    /// Once part of the job is stored: a fault here leaves a partial file.
    fn mid_copy(&mut self) -> io::Result<()> {
        if !self.mid_copy_done && self.stored > 0 {
            self.mid_copy_done = true;
            if let Err(source) = hit("write:mid-copy") {
                return Err(self.fail(QueueError::Io {
                    action: "write",
                    path: self.tmp.to_path_buf(),
                    source,
                }));
            }
        }
        Ok(())
    }

    /// Ask the kernel to start writing what was stored since last time.
    fn start_writeback(&mut self) {
        if let Some(f) = self.file {
            start_writeback(f, self.kicked, self.stored);
        }
        self.kicked = self.stored;
    }

    /// The next `n` bytes (fewer at the end of the input), without
    /// consuming them.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; TEE_BUF];
        }
        if self.pos > 0 && self.filled - self.pos < n {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        while self.filled - self.pos < n && self.filled < self.buf.len() {
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.read_input(&mut buf[self.filled..]);
            let r = r.and_then(|k| self.store(&buf[self.filled..self.filled + k]).map(|()| k));
            self.buf = buf;
            match r? {
                0 => break,
                k => self.filled += k,
            }
        }
        let end = self.filled.min(self.pos + n);
        Ok(&self.buf[self.pos..end])
    }

    /// Bytes read and stored but not yet consumed.
    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    fn consume_buffered(&mut self) {
        self.pos = self.filled;
    }

    /// Copy up to `len` more bytes of the input to the temporary, unread
    /// (the kernel copies from a file or a pipe), calling `progress` with
    /// the stored length after each chunk. Returns the number copied
    /// (less than `len` only at the end of the input).
    fn kernel_copy(&mut self, len: u64, progress: &mut dyn FnMut(u64)) -> Result<u64, Failure> {
        self.consume_buffered();
        // A second descriptor of the input (sharing its offset), so that
        // the tee stays free to use.
        let src = match self.file {
            Some(_) => self.input.as_file().map(File::try_clone).transpose(),
            None => Ok(None),
        };
        let src = match src {
            Ok(src) => src,
            Err(e) => return Err(self.copy_failed(e)),
        };
        let (Some(mut src), Some(mut dst)) = (src, self.file) else {
            // Not a file (or only checked): through the buffer.
            let mut buf = vec![0u8; TEE_BUF];
            let mut done = 0u64;
            while done < len {
                let want = usize::try_from((len - done).min(TEE_BUF as u64)).unwrap_or(TEE_BUF);
                let n = self.read_input(&mut buf[..want]);
                let n = n.and_then(|n| self.store(&buf[..n]).map(|()| n));
                match n {
                    Ok(0) => break,
                    Ok(n) => done += n as u64,
                    Err(e) => return Err(self.copy_failed(e)),
                }
                progress(self.stored);
            }
            return Ok(done);
        };
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(CHUNK);
            match io::copy(&mut (&mut src).take(want), &mut dst) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.stored += n;
                }
                Err(e) => return Err(self.copy_failed(e)),
            }
            if let Err(e) = self.mid_copy() {
                return Err(self.copy_failed(e));
            }
            self.start_writeback();
            progress(self.stored);
        }
        Ok(done)
    }

    /// Copy the rest of the input to the temporary unread (nothing more to
    /// check).
    fn drain(&mut self) -> Result<(), Failure> {
        if self.eof {
            return Ok(());
        }
        // One plain read first: a small job is usually all in already,
        // and a read that says so is one call where a kernel copy costs
        // six (dup, fstat of both ends, copy_file_range, sendfile, close),
        // which adds up over a batch of thousands (`fspl push`).
        self.consume_buffered();
        let mut probe = [0u8; 4096];
        match self.read_input(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if let Err(e) = self.store(&probe[..n]) {
                    return Err(self.copy_failed(e));
                }
            }
            Err(e) => return Err(self.copy_failed(e)),
        }
        self.kernel_copy(u64::MAX, &mut |_| {}).map(|_| ())
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
            self.pos = 0;
            self.filled = 0;
            if self.peek(1)?.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The flush of the temporary, done once everything is stored.
pub(crate) type SyncFn<'a> = &'a dyn Fn() -> Result<(), QueueError>;

/// Read the job from `input` (`from` names it in errors: "stdin", a file,
/// a transport) into `file` (the open temporary at `tmp`),
/// check it, and flush it with `sync` once it is wholly stored (for a
/// large payload while its hashing ends; otherwise after the check). `Ok`
/// when the job is valid, wholly stored and synced.
pub(crate) fn receive(
    input: &mut dyn JobSource,
    file: &File,
    tmp: &Path,
    identities: Option<&Identities>,
    from: &Path,
    sync: SyncFn,
) -> Result<(), Failure> {
    let mut tee = Tee::new(input, from, Some(file), tmp);
    let mut synced = false;
    let checked = check(&mut tee, identities, sync, &mut synced);
    // An I/O error says more than what the check made of it.
    if let Some(e) = tee.failed.take() {
        return Err(Failure::Io(e));
    }
    checked?;
    tee.drain()?;
    if !synced {
        sync().map_err(Failure::Io)?;
    }
    Ok(())
}

/// Check the job read from `input` as [`receive`] does, storing nothing
/// (a job that is linked into place, not copied).
pub(crate) fn check_only(
    input: &mut dyn JobSource,
    identities: Option<&Identities>,
    from: &Path,
) -> Result<(), Failure> {
    let mut tee = Tee::new(input, from, None, from);
    let mut synced = true;
    let checked = check(&mut tee, identities, &|| Ok(()), &mut synced);
    if let Some(e) = tee.failed.take() {
        return Err(Failure::Io(e));
    }
    checked
}

/// Check the job as it streams by (`sync` and `synced`: see
/// [`copy_and_hash`]).
fn check(
    tee: &mut Tee,
    identities: Option<&Identities>,
    sync: SyncFn,
    synced: &mut bool,
) -> Result<(), Failure> {
    let head = tee
        .peek(MAGIC_LEN)
        .map_err(|e| Failure::Invalid(e.to_string()))?
        .to_vec();
    let invalid = Failure::Invalid;
    if is_age(&head) {
        let Some(ids) = identities else {
            // Nothing to decrypt with: the header must at least be age's.
            return check_header(&mut *tee).map_err(|e| invalid(format!("encrypted (age): {e}")));
        };
        let plain = decrypt(&ids.0, &mut *tee).map_err(|e| {
            invalid(format!(
                "encrypted (age), and none of the --identity keys decrypts it: {e}"
            ))
        })?;
        let mut inner = Peeked::new(plain).map_err(|e| invalid(format!("age data: {e}")))?;
        return match inner.compression() {
            None => check_job(&mut inner, "age").map_err(invalid),
            Some(c) => {
                let what = match c {
                    Compression::Zstd => "age+zstd",
                    Compression::Gzip => "age+gzip",
                    Compression::Xz => "age+xz",
                    Compression::Lz4 => "age+lz4",
                };
                let mut d = c
                    .decoder(inner)
                    .map_err(|e| invalid(format!("{what} data: {e}")))?;
                check_job(&mut d, what).map_err(invalid)
            }
        };
    }
    if let Some(c) = Compression::detect(&head) {
        let mut d = c
            .decoder(&mut *tee)
            .map_err(|e| invalid(format!("{c} data: {e}")))?;
        return check_job(&mut d, c.name()).map_err(invalid);
    }
    // A plain job: the header through the tee, the payload by the kernel
    // when it is large.
    let decoded = read_header(&mut *tee).map_err(|e| invalid(header_error(e, "")))?;
    let ext = &decoded.ext;
    match ext.payload_len {
        Some(declared)
            if ext.digest.is_some()
                && declared > tee.buffered().len() as u64 + KERNEL_COPY_MIN
                && tee.input.as_file().is_some()
                && tee.file.is_some() =>
        {
            copy_and_hash(tee, ext, declared, sync, synced)
        }
        _ => check_payload(&mut *tee, ext, "").map_err(invalid),
    }
}

/// A header error as a reason; `what` names the encoding ("" for none).
fn header_error(e: HeaderError, what: &str) -> String {
    let msg = match e {
        HeaderError::Io(io) => crate::strip_os_errors(&io.to_string()),
        other => crate::display_chain(&other),
    };
    if what.is_empty() {
        msg
    } else {
        format!("{what} data: {msg}")
    }
}

/// Check a decoded job: its header, then its payload against the length
/// and digest the header states. `what` names the encoding for messages.
fn check_job(r: &mut dyn Read, what: &str) -> Result<(), String> {
    let decoded = read_header(r).map_err(|e| header_error(e, what))?;
    check_payload(r, &decoded.ext, what)
}

/// Read the payload to its end (no further than one byte past the declared
/// length), hashing it, and compare with what the header says. Without a
/// length or digest there is nothing to compare; a compressed or encrypted
/// payload is still decoded to its end, which checks the encoding's own
/// integrity (checksums, authentication).
fn check_payload(r: &mut dyn Read, ext: &Extension, what: &str) -> Result<(), String> {
    let read_error = |e: io::Error| {
        let msg = crate::strip_os_errors(&e.to_string());
        if what.is_empty() {
            msg
        } else {
            format!("{what} data: {msg}")
        }
    };
    if ext.payload_len.is_none() && ext.digest.is_none() {
        if !what.is_empty() {
            crate::copy_stream(r, &mut io::sink()).map_err(|e| match e {
                crate::CopyError::Read(e) => read_error(e),
                crate::CopyError::Write(e) => e.to_string(),
            })?;
        }
        return Ok(());
    }
    let declared = ext.payload_len;
    let mut hasher = ext.digest.map(|d| Hasher::new(d.alg));
    let mut total = 0u64;
    // Up to one byte past the declared length, which tells a payload that
    // ends there from a longer one.
    let room = |total: u64, cap: usize| -> usize {
        match declared {
            Some(d) => usize::try_from(d.saturating_sub(total).saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(cap),
            None => cap,
        }
    };
    let mut buf = vec![0u8; room(0, HASH_BUF).max(1)];
    loop {
        let want = room(total, buf.len());
        let n = fspl_format::read_full(r, &mut buf[..want]).map_err(read_error)?;
        total += n as u64;
        if let Some(d) = declared
            && total > d
        {
            return Err(PayloadTooLong { declared: d }.to_string());
        }
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        if n < want || n == 0 {
            break;
        }
    }
    compare(ext, total, hasher.map(Hasher::finish).as_ref())
}

/// Copy the rest of a declared-length payload by the kernel while a second
/// thread hashes what is stored, read back from the temporary. Once all of
/// it is stored, the temporary is flushed (`sync`, and `synced` set) while
/// the hashing ends: the disk writes and the last hashing overlap. (If the
/// payload then turns out wrong, that flush was for nothing; the caller
/// removes the temporary all the same.)
fn copy_and_hash(
    tee: &mut Tee,
    ext: &Extension,
    declared: u64,
    sync: SyncFn,
    synced: &mut bool,
) -> Result<(), Failure> {
    let Some(alg) = ext.digest.map(|d| d.alg) else {
        return Err(Failure::Invalid("no digest to check".into()));
    };
    let buffered = tee.buffered().len() as u64;
    if buffered > declared {
        return Err(Failure::Invalid(PayloadTooLong { declared }.to_string()));
    }
    let Some(file) = tee.file else {
        return Err(Failure::Invalid("nowhere to hash it from".into()));
    };
    // Where the payload starts in the temporary.
    let start = tee.stored - buffered;
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(16);
    // Made here and moved over: the thread allocates nothing (no malloc
    // arena of its own).
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; HASH_BUF];
    std::thread::scope(|s| {
        let hashing = std::thread::Builder::new()
            .name("fspl-hash".into())
            .spawn_scoped(s, move || -> io::Result<Digest> {
                let mut at = start;
                for upto in rx {
                    hash_range(&mut h, file, at, upto, &mut buf)?;
                    at = upto;
                }
                Ok(h.finish())
            })
            .map_err(|e| Failure::Invalid(format!("cannot start hashing: {e}")))?;
        let _ = tx.send(tee.stored);
        let copied = tee.kernel_copy(declared - buffered, &mut |stored| {
            let _ = tx.send(stored);
        });
        drop(tx);
        let whole = copied.and_then(|n| {
            let total = buffered + n;
            if total < declared {
                return Err(Failure::Invalid(length_mismatch(total, declared)));
            }
            // One byte more would mean the payload goes on.
            let mut probe = [0u8; 1];
            match tee.read_input(&mut probe) {
                Ok(0) => Ok(total),
                Ok(_) => Err(Failure::Invalid(PayloadTooLong { declared }.to_string())),
                Err(e) => Err(tee.copy_failed(e)),
            }
        });
        // All of it stored: flush while the hashing ends.
        let flushed = match whole {
            Ok(_) => {
                *synced = true;
                sync().map_err(Failure::Io)
            }
            Err(_) => Ok(()),
        };
        let digest = hashing
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
        let total = whole?;
        flushed?;
        let digest = digest.map_err(|source| {
            Failure::Io(QueueError::Io {
                action: "read back",
                path: tee.tmp.to_path_buf(),
                source,
            })
        })?;
        compare(ext, total, Some(&digest)).map_err(Failure::Invalid)
    })
}

/// Compare the payload's length and digest with what the header says.
fn compare(ext: &Extension, len: u64, digest: Option<&Digest>) -> Result<(), String> {
    if let Some(want) = ext.payload_len
        && want != len
    {
        return Err(length_mismatch(len, want));
    }
    if let Some(d) = digest {
        crate::verify::check_payload(ext, len, d).map_err(|r| r.reason)?;
    }
    Ok(())
}

fn length_mismatch(len: u64, want: u64) -> String {
    format!("payload is {len} bytes, the header says {want} (cut short or altered)")
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom};

    use fspl_format::{CmdType, Ctime, DigestAlg, JobHeader};

    use crate::{Queue, QueueError};

    /// A job with `payload`, carrying its length and digest when `ext`.
    fn job(payload: &[u8], ext: bool) -> Vec<u8> {
        let mut e = fspl_format::Extension::default();
        if ext {
            let (len, d) =
                fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &payload[..]).unwrap();
            e.payload_len = Some(len);
            e.digest = Some(d);
        }
        let h = JobHeader {
            seq: 1,
            ctime: Ctime { secs: 1, nanos: 2 },
            cmd_type: CmdType::Nop,
        };
        let mut v = h.encode_with(&e).unwrap();
        v.extend_from_slice(payload);
        v
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect()
    }

    fn queue() -> (tempfile::TempDir, Queue) {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::init(d.path().join("q"), false).unwrap();
        (d, q)
    }

    fn names(q: &Queue) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(q.jobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

    /// Write `bytes` from a slice and from a file (the kernel-copy path).
    fn both_ways(q: &Queue, bytes: &[u8]) -> [Result<Vec<u8>, QueueError>; 2] {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut slice: &[u8] = bytes;
        let a = q.write_job(&mut slice);
        let b = q.write_job(&mut f);
        [a, b].map(|r| {
            r.map(|name| {
                let p = q.job_path(&name);
                let got = std::fs::read(&p).unwrap();
                std::fs::remove_file(p).unwrap();
                got
            })
        })
    }

    #[test]
    fn valid_jobs_are_stored_as_they_came_from_a_slice_and_from_a_file() {
        let (_d, q) = queue();
        for n in [0usize, 1, 5000, 70_000, 3 * 1024 * 1024 + 17] {
            for ext in [true, false] {
                let j = job(&payload(n), ext);
                for got in both_ways(&q, &j) {
                    assert!(got.unwrap() == j, "{n} bytes, ext {ext}");
                }
            }
        }
        assert!(names(&q).is_empty());
    }

    #[test]
    fn a_wrong_payload_is_refused_and_leaves_nothing() {
        let (_d, q) = queue();
        for n in [10usize, 3 * 1024 * 1024 + 17] {
            let j = job(&payload(n), true);
            let mut flipped = j.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            let mut longer = j.clone();
            longer.push(0);
            for (bad, why) in [
                (&j[..j.len() - 1], "cut short"),
                (&flipped[..], "digest"),
                (&longer[..], "longer than"),
                (&b""[..], "empty"),
                (&b"not a job at all, just some text"[..], "bad magic"),
            ] {
                for r in both_ways(&q, bad) {
                    match r {
                        Err(QueueError::InvalidJob { reason, .. }) => {
                            assert!(reason.contains(why), "{n}: {reason:?} lacks {why:?}");
                        }
                        other => panic!("{n} {why}: {:?}", other.map(|v| v.len())),
                    }
                }
                assert!(names(&q).is_empty(), "{n} {why}: {:?}", names(&q));
            }
        }
    }

    /// An input whose reads fail after `ok` bytes of a job.
    struct FailingInput {
        job: Vec<u8>,
        ok: usize,
    }

    impl std::io::Read for FailingInput {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let n = buf.len().min(self.ok).min(self.job.len());
            buf[..n].copy_from_slice(&self.job[..n]);
            self.job.drain(..n);
            self.ok -= n;
            Ok(n)
        }
    }

    impl crate::JobSource for FailingInput {}

    #[test]
    fn write_job_errors_said_stdin_for_a_job_from_elsewhere() {
        let (_d, q) = queue();
        let from = std::path::Path::new("ssh intake from laptop");
        let j = job(&payload(100), true);
        // Not a valid job: refused, naming where it came from.
        let e = q.write_job_from(&mut &j[..j.len() - 1], from).unwrap_err();
        let msg = crate::display_chain(&e);
        assert!(
            msg.starts_with("refusing the job from ssh intake from laptop, nothing was stored in "),
            "{msg}"
        );
        assert!(!msg.contains("stdin"), "{msg}");
        // The input fails: the read error names it too.
        let mut input = FailingInput {
            job: j.clone(),
            ok: 20,
        };
        let e = q.write_job_from(&mut input, from).unwrap_err();
        let msg = crate::display_chain(&e);
        assert!(
            msg.starts_with("cannot read job from ssh intake from laptop: "),
            "{msg}"
        );
        assert!(!msg.contains("stdin"), "{msg}");
        // write_job still reads stdin, and says so.
        let e = q.write_job(&mut &j[..j.len() - 1]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("refusing the job on stdin, nothing was stored in "),
            "{e}"
        );
        let mut input = FailingInput { job: j, ok: 20 };
        let e = q.write_job(&mut input).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read job from stdin"),
            "{e}"
        );
        assert!(names(&q).is_empty(), "{:?}", names(&q));
    }
}
