//! Private copies of payloads, hashed as they are made.
//!
//! A payload that is checked and then read again from a file someone else
//! can write to may change in between. With a trust file the command reads
//! a private copy instead: an unlinked temporary file, hashed while it is
//! written, so every byte the command can read is a byte that was hashed.
//! On file systems that share extents (btrfs, XFS, bcachefs) the copy is a
//! reflink clone, which costs no data copy; it is hashed after cloning.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use fspl_format::{Digest, DigestAlg};

use crate::bounded::Bounded;
use crate::queue::CopyError;

/// A payload copy that passed through the hasher.
pub struct Spooled {
    /// Unlinked, readable, positioned at the first payload byte.
    pub file: File,
    pub len: u64,
    pub digest: Digest,
}

/// Copy the payload of the regular file `src` (from its current position
/// to its end, but no further than `declared` plus one byte) into a new
/// unlinked file in `dir`, hashing exactly the bytes that land in the copy.
/// A read error is `CopyError::Read` (the payload); creating or writing the
/// copy, `CopyError::Write`.
pub fn private_copy_of_file(
    dir: &Path,
    src: &mut File,
    alg: DigestAlg,
    declared: Option<u64>,
) -> Result<Spooled, CopyError> {
    copy_file(dir, src, alg, declared, true)
}

fn copy_file(
    dir: &Path,
    src: &mut File,
    alg: DigestAlg,
    declared: Option<u64>,
    try_reflink: bool,
) -> Result<Spooled, CopyError> {
    let offset = src.stream_position().map_err(CopyError::Read)?;
    let mut copy = tempfile::tempfile_in(dir).map_err(CopyError::Write)?;
    if try_reflink && reflink(&copy, src) {
        // The clone holds the whole file as it was at one instant; nobody
        // else can reach it. Blank what precedes the payload so that the
        // command, which could seek back, finds nothing there it was not
        // meant to see; then hash what it will read.
        blank(&copy, offset).map_err(CopyError::Write)?;
        copy.seek(SeekFrom::Start(offset))
            .map_err(CopyError::Write)?;
        let (len, digest) =
            hash(alg, &mut Bounded::new(&mut copy, declared)).map_err(CopyError::Read)?;
        copy.seek(SeekFrom::Start(offset))
            .map_err(CopyError::Write)?;
        return Ok(Spooled {
            file: copy,
            len,
            digest,
        });
    }
    let (len, digest) = hash_and_copy(alg, &mut Bounded::new(src, declared), &mut copy)?;
    copy.seek(SeekFrom::Start(0)).map_err(CopyError::Write)?;
    Ok(Spooled {
        file: copy,
        len,
        digest,
    })
}

/// Copy a payload stream (decoded, or not a regular file) into a new
/// unlinked file in `dir` (the system's temporary directory when `None`)
/// while hashing it; no further than `declared` plus one byte.
pub fn private_copy_of_stream(
    dir: Option<&Path>,
    src: &mut dyn Read,
    alg: DigestAlg,
    declared: Option<u64>,
) -> Result<Spooled, CopyError> {
    let mut copy = match dir {
        Some(d) => tempfile::tempfile_in(d),
        None => tempfile::tempfile(),
    }
    .map_err(CopyError::Write)?;
    let (len, digest) = hash_and_copy(alg, &mut Bounded::new(src, declared), &mut copy)?;
    copy.seek(SeekFrom::Start(0)).map_err(CopyError::Write)?;
    Ok(Spooled {
        file: copy,
        len,
        digest,
    })
}

/// Make `dst` a clone of `src` sharing its extents (FICLONE). False where
/// the file system cannot (ext4, tmpfs, different file systems): the caller
/// copies instead.
fn reflink(dst: &File, src: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open and ours. Failure leaves `dst` empty.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

/// Overwrite the first `n` bytes of `f` with zeros.
fn blank(f: &File, n: u64) -> io::Result<()> {
    let zeros = [0u8; 4096];
    let mut at = 0u64;
    while at < n {
        let k = (n - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..k], at)?;
        at += k as u64;
    }
    Ok(())
}

/// Read `r` to the end; its length and digest.
fn hash(alg: DigestAlg, r: &mut dyn Read) -> io::Result<(u64, Digest)> {
    fspl_trust::digest::hash_reader(alg, r)
}

/// Hash a payload while copying it into `out`; the digest is of exactly the
/// bytes written.
pub fn hash_and_copy(
    alg: DigestAlg,
    r: &mut dyn Read,
    out: &mut File,
) -> Result<(u64, Digest), CopyError> {
    use std::io::Write as _;
    const CHUNK: usize = 256 * 1024;
    let mut first = vec![0u8; CHUNK];
    let n = fspl_format::read_full(r, &mut first).map_err(CopyError::Read)?;
    if n < CHUNK {
        // All of it in one chunk: no second thread for a small payload.
        let mut h = fspl_trust::digest::Hasher::new(alg);
        h.update(&first[..n]);
        out.write_all(&first[..n]).map_err(CopyError::Write)?;
        return Ok((n as u64, h.finish()));
    }
    // A large payload: reading it (decompression, decryption: this thread)
    // overlaps with hashing it and writing it to the copy (a second
    // thread). The chunks go over a bounded channel, so memory stays at a
    // few chunks, and come back for reuse.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("fspl-spool".into())
            .spawn_scoped(scope, move || -> io::Result<(u64, Digest)> {
                let mut h = fspl_trust::digest::Hasher::new(alg);
                let mut len = 0u64;
                for buf in rx {
                    h.update(&buf);
                    out.write_all(&buf)?;
                    len += buf.len() as u64;
                    let _ = back_tx.send(buf);
                }
                Ok((len, h.finish()))
            })
            .map_err(CopyError::Write)?;
        let mut read_result = Ok(());
        let mut next = Some(first);
        while let Some(buf) = next.take() {
            if tx.send(buf).is_err() {
                break; // the writer failed: its error is returned below
            }
            let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            match fspl_format::read_full(r, &mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    buf.truncate(n);
                    next = Some(buf);
                }
                Err(e) => read_result = Err(e),
            }
        }
        drop(tx);
        let written = worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spool thread panicked")))
            .map_err(CopyError::Write);
        // A write error first: after it the reader stopped early, and its
        // own result says nothing about the payload.
        let written = written?;
        read_result.map_err(CopyError::Read)?;
        Ok(written)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn expected(alg: DigestAlg, d: &[u8]) -> Digest {
        fspl_trust::digest::hash_reader(alg, &mut &d[..]).unwrap().1
    }

    fn rest(f: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn hash_and_copy_small_and_large_payloads_match_a_plain_hash() {
        // Below, at and above one chunk, and several chunks plus a tail.
        for n in [
            0,
            1,
            256 * 1024 - 1,
            256 * 1024,
            256 * 1024 + 1,
            3 * 1024 * 1024 + 7,
        ] {
            for alg in [DigestAlg::Blake3, DigestAlg::Sha256] {
                let d = data(n);
                let mut out = tempfile::tempfile().unwrap();
                let (len, digest) = hash_and_copy(alg, &mut &d[..], &mut out).unwrap();
                assert_eq!(len, n as u64, "length for {n} bytes");
                assert_eq!(digest, expected(alg, &d), "digest for {n} bytes");
                out.rewind().unwrap();
                assert!(rest(&mut out) == d, "spooled copy of {n} bytes differs");
            }
        }
    }

    /// A decoder that fails part way (a corrupt or cut-short compressed or
    /// encrypted payload).
    struct FailsAfter(usize, usize);
    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 >= self.1 {
                return Err(io::Error::new(ErrorKind::InvalidData, "checksum mismatch"));
            }
            let n = buf.len().min(self.1 - self.0).min(10_000);
            buf[..n].fill(1);
            self.0 += n;
            Ok(n)
        }
    }

    #[test]
    fn hash_and_copy_reports_a_decoder_error_in_the_middle() {
        for at in [100, 300 * 1024, 2 * 1024 * 1024 + 5] {
            let mut out = tempfile::tempfile().unwrap();
            match hash_and_copy(DigestAlg::Blake3, &mut FailsAfter(0, at), &mut out) {
                Err(CopyError::Read(e)) => assert_eq!(e.kind(), ErrorKind::InvalidData),
                other => panic!("failure after {at} bytes: {:?}", other.map(|r| r.0)),
            }
        }
    }

    #[test]
    fn hash_and_copy_reports_a_spool_write_error_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro");
        std::fs::write(&p, b"").unwrap();
        // Opened read-only: every write fails (like ENOSPC on the spool).
        let mut out = File::open(&p).unwrap();
        for n in [10, 5 * 1024 * 1024] {
            let d = data(n);
            assert!(
                matches!(
                    hash_and_copy(DigestAlg::Blake3, &mut &d[..], &mut out),
                    Err(CopyError::Write(_))
                ),
                "a failing spool write of {n} bytes was not reported as one"
            );
        }
    }

    /// The copy of a file's payload holds what was hashed, starts where the
    /// payload starts, and does not change when the file does.
    #[test]
    fn a_private_copy_does_not_follow_later_writes_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for n in [5, 3 * 1024 * 1024 + 11] {
            for reflink in [true, false] {
                let p = dir.path().join("job");
                let payload = data(n);
                let mut content = b"HEADER".to_vec();
                content.extend_from_slice(&payload);
                std::fs::write(&p, &content).unwrap();
                let mut src = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .unwrap();
                src.seek(SeekFrom::Start(6)).unwrap();
                let s = copy_file(
                    dir.path(),
                    &mut src,
                    DigestAlg::Blake3,
                    Some(n as u64),
                    reflink,
                )
                .unwrap_or_else(|_| panic!("copy of {n} bytes"));
                assert_eq!(s.len, n as u64);
                assert_eq!(s.digest, expected(DigestAlg::Blake3, &payload));
                // The file changes in place and grows.
                src.write_all_at(b"XXXX", 6).unwrap();
                src.write_all_at(b"MORE", content.len() as u64).unwrap();
                let mut f = s.file;
                let got = rest(&mut f);
                assert!(got == payload, "the copy of {n} bytes changed");
                // Whatever precedes the payload in the copy is not the header.
                let mut head = vec![0u8; 6];
                let k = f.read_at(&mut head, 0).unwrap();
                assert!(
                    head[..k] != b"HEADER"[..k] || k == 0,
                    "header readable in the copy"
                );
            }
        }
    }

    #[test]
    fn a_private_copy_stops_one_byte_past_the_declared_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut zeros = io::repeat(0).take(1 << 40);
        match private_copy_of_stream(Some(dir.path()), &mut zeros, DigestAlg::Blake3, Some(6)) {
            Err(CopyError::Read(e)) => {
                assert_eq!(crate::bounded::too_long(&e).map(|t| t.declared), Some(6))
            }
            Err(CopyError::Write(e)) => panic!("write error {e}"),
            Ok(s) => panic!("accepted {} bytes", s.len),
        }
        assert_eq!(zeros.limit(), (1 << 40) - 7);
    }
}
