//! Checking a payload's length and digest while its command reads it.
//!
//! Without a trust file the digest guards against accidental damage only
//! (docs/security.md), so it need not be checked before the command
//! starts: the command gets the payload at once (the job file itself, or a
//! pipe from the decrypting pump) and the check runs beside it, reading
//! the file a second time (`pread`, on several threads) or hashing what
//! the pump passes on. When the command has ended, a payload that did not
//! match fails the job, whatever the command's own status: it is never
//! counted as a success.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use fspl_format::{DigestAlg, Extension};
use fspl_trust::digest::{Hasher, has_byte_at, hash_file_at};

use crate::bounded::{Bounded, PayloadTooLong};
use crate::pump::Check;
use crate::verify::{self, Refusal};

/// Threads to hash or decrypt a large payload with.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// What was wrong with a payload, found once its command had run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub why: String,
    pub kind: ProblemKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// It could not be read or decoded to the end: a failure only when the
    /// command succeeded (`Outcome::PayloadError`).
    Incomplete,
    /// Its length or digest does not match the header: a failure only when
    /// the command succeeded (`Outcome::PayloadCheckFailed`).
    Mismatch,
    /// The job file was opened for writing while the command read it: the
    /// command was killed; the job fails whatever its status.
    Tampered,
}

/// The length check, from what the file holds: `Some` when a payload of
/// `have` bytes does not have the length the header states.
pub fn length_refusal(ext: &Extension, have: u64) -> Option<Refusal> {
    let declared = ext.payload_len?;
    if have > declared {
        return Some(Refusal::new(PayloadTooLong { declared }.to_string()));
    }
    (have < declared).then(|| {
        Refusal::new(format!(
            "payload is {have} bytes, the header says {declared} (cut short or altered)"
        ))
    })
}

/// Hash bytes `[offset, offset + len)` of `file` and compare them with the
/// header: why they do not match, if they do not. `len` is the declared
/// length, or without one what the file held when the check began.
pub fn check_file_range(
    file: &File,
    offset: u64,
    ext: &Extension,
    stop: &AtomicBool,
) -> io::Result<Option<String>> {
    let alg = ext.digest.map_or(DigestAlg::Blake3, |d| d.alg);
    let len = match ext.payload_len {
        Some(l) => l,
        None => file.metadata()?.len().saturating_sub(offset),
    };
    let h = hash_file_at(file, offset, len, alg, threads(), stop)?;
    if h.present < len {
        return Ok(length_refusal(ext, h.present)
            .map(|r| r.reason)
            .or_else(|| Some("the job file was cut short while its payload was read".into())));
    }
    if has_byte_at(file, offset + len)? {
        return Ok(Some(match ext.payload_len {
            Some(declared) => PayloadTooLong { declared }.to_string(),
            None => "the job file grew while its payload was read".into(),
        }));
    }
    Ok(verify::check_payload(ext, len, &h.digest)
        .err()
        .map(|r| r.reason))
}

/// Payloads up to this size are checked without a thread of their own.
const INLINE: u64 = 256 * 1024;

/// A check of a job file's payload running on its own thread(s).
pub struct FileCheck {
    result: mpsc::Receiver<Option<String>>,
    stop: Arc<AtomicBool>,
}

impl FileCheck {
    /// Start checking the payload of `file` (a descriptor of its own or a
    /// duplicate: only `pread` is used) that starts at `offset`.
    pub fn start(file: File, offset: u64, ext: &Extension) -> io::Result<FileCheck> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(1);
        if ext.payload_len.is_some_and(|l| l <= INLINE) {
            // A small payload: checking it here costs less than a thread
            // (the answer is given only when the command has ended, like
            // any other's).
            let r = match check_file_range(&file, offset, ext, &stop) {
                Ok(r) => r,
                Err(e) => Some(format!("the payload cannot be read: {e}")),
            };
            let _ = tx.send(r);
            return Ok(FileCheck { result: rx, stop });
        }
        let ext = ext.clone();
        let s = stop.clone();
        std::thread::Builder::new()
            .name("fspl-check".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = match check_file_range(&file, offset, &ext, &s) {
                    Ok(r) => r,
                    Err(e) => Some(format!("the payload cannot be read: {e}")),
                };
                let _ = tx.send(r);
            })?;
        Ok(FileCheck { result: rx, stop })
    }

    /// The command has ended. With `Check::Skip` (it failed or never ran)
    /// the check is abandoned; otherwise its answer is waited for, until
    /// the deadline at most.
    pub fn finish(self, check: Check) -> Option<Problem> {
        let mismatch = |why: String| Problem {
            why,
            kind: ProblemKind::Mismatch,
        };
        let got = match check {
            Check::Skip => {
                self.stop.store(true, Ordering::SeqCst);
                return None;
            }
            Check::Rest { deadline: None } => self.result.recv().ok(),
            Check::Rest { deadline: Some(at) } => match self
                .result
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.stop.store(true, Ordering::SeqCst);
                    return Some(mismatch(
                        "its length and digest could not be checked before the timeout".into(),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        match got {
            Some(why) => why.map(mismatch),
            None => Some(mismatch("the checking thread failed".into())),
        }
    }
}

/// A payload reader that hashes what goes through it and, at its end,
/// fails with [`Mismatch`] when length or digest differ from the header;
/// it reads no further than one byte past the declared length.
pub struct HashingReader<R> {
    inner: Bounded<R>,
    hasher: Option<Hasher>,
    ext: Extension,
}

/// The error a [`HashingReader`] ends with when the payload does not match.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, ext: &Extension) -> HashingReader<R> {
        let alg = ext.digest.map_or(DigestAlg::Blake3, |d| d.alg);
        HashingReader {
            inner: Bounded::new(inner, ext.payload_len),
            hasher: Some(Hasher::new(alg)),
            ext: ext.clone(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .map_err(|e| match crate::bounded::too_long(&e) {
                Some(t) => io::Error::new(ErrorKind::InvalidData, Mismatch(t.to_string())),
                None => e,
            })?;
        if n == 0 && !buf.is_empty() {
            if let Some(h) = self.hasher.take() {
                let digest = h.finish();
                if let Err(r) = verify::check_payload(&self.ext, self.inner.count(), &digest) {
                    return Err(io::Error::new(ErrorKind::InvalidData, Mismatch(r.reason)));
                }
            }
            return Ok(0);
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Whether an error from a payload reader (or what wraps it) is a
/// [`Mismatch`]; its reason if so.
pub fn mismatch(e: &io::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cur {
        if let Some(m) = c.downcast_ref::<Mismatch>() {
            return Some(m.0.clone());
        }
        if let Some(io) = c.downcast_ref::<io::Error>()
            && let Some(m) = mismatch(io)
        {
            return Some(m);
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use fspl_format::Digest;
    use std::io::Write;

    fn ext_for(payload: &[u8]) -> Extension {
        let (len, digest): (u64, Digest) =
            fspl_trust::digest::hash_reader(DigestAlg::Blake3, &mut &payload[..]).unwrap();
        Extension {
            payload_len: Some(len),
            digest: Some(digest),
            ..Extension::default()
        }
    }

    #[test]
    fn a_file_check_finds_every_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..(6 << 20) + 3).map(|i| (i % 253) as u8).collect();
        let ext = ext_for(&payload);
        let p = dir.path().join("job");
        let mut flipped = payload.clone();
        flipped[5 << 20] ^= 1;
        let mut longer = payload.clone();
        longer.push(0);
        let cases: [(&[u8], Option<&str>); 4] = [
            (&payload, None),
            (&flipped, Some("does not match the header's")),
            (&longer, Some("longer than")),
            (&payload[..1000], Some("payload is 1000 bytes")),
        ];
        for (content, want) in cases {
            let mut f = File::create(&p).unwrap();
            f.write_all(b"HEADER").unwrap();
            f.write_all(content).unwrap();
            drop(f);
            let check = FileCheck::start(File::open(&p).unwrap(), 6, &ext).unwrap();
            let got = check.finish(Check::Rest { deadline: None });
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(p)) => {
                    assert!(p.why.contains(w), "{} vs {w}", p.why);
                    assert_eq!(p.kind, ProblemKind::Mismatch);
                }
                (w, g) => panic!("expected {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn a_hashing_reader_fails_at_the_end_of_a_payload_that_does_not_match() {
        let payload = vec![9u8; 300_000];
        let ext = ext_for(&payload);
        let mut out = Vec::new();
        HashingReader::new(&payload[..], &ext)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == payload);
        let mut bad = payload.clone();
        bad[299_999] = 8;
        let e = HashingReader::new(&bad[..], &ext)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(mismatch(&e).unwrap().contains("does not match"), "{e}");
        let mut longer = payload.clone();
        longer.extend_from_slice(&[0; 10]);
        let e = HashingReader::new(&longer[..], &ext)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(mismatch(&e).unwrap().contains("longer than"), "{e}");
        let e = HashingReader::new(&payload[..10], &ext)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(mismatch(&e).unwrap().contains("payload is 10 bytes"), "{e}");
        // Wrapped, as the pump's error wraps it.
        let wrapped = io::Error::other(e);
        assert!(mismatch(&wrapped).is_some());
    }
}
