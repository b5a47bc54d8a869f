//! Decrypting an age file that is a regular file, on several threads.
//!
//! age encrypts its payload in independent 64 KiB chunks (STREAM, see
//! C2SP age.md): chunk `i` is ChaCha20-Poly1305 under the payload key with
//! the 12-byte nonce `i` (11 bytes, big endian) followed by a flag byte, 1
//! for the last chunk and 0 for every other. Knowing the file's size, every
//! chunk's place and whether it is the last is known before reading any, so
//! worker threads can read and decrypt chunks out of order, and the reader
//! hands them out in order.
//!
//! The header is read, and the file key unwrapped and the header MAC
//! checked, by the age crate itself (its `Decryptor`, with the identities
//! wrapped to see which file key they unwrapped): every refusal of a header
//! is age's own. The payload key is then derived as age does (HKDF-SHA-256,
//! the 16-byte nonce after the header as salt, "payload" as info). Chunks
//! are refused under the same rules as age's `StreamReader`: any chunk that
//! does not authenticate with its index and flag (changed, swapped, cut
//! short, or a middle chunk where the last was due: a file truncated at a
//! chunk boundary), an empty last chunk after others, a file that ends
//! before its last chunk, and data after it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;

use crate::crypt::{CryptError, HeaderLimit};

/// Plaintext bytes per STREAM chunk.
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
/// Ciphertext bytes per full chunk.
const ENC: usize = CHUNK + TAG;
/// Chunks per unit of work (a little over 1 MiB of ciphertext; fewer in
/// unit tests, so that small files span several).
const BATCH: u64 = if cfg!(test) { 3 } else { 16 };

/// How a binary (not armored) age file starts.
pub const BINARY_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A decrypting reader over an age file, and what its size says.
pub struct DecryptedFile {
    pub reader: Box<dyn Read + Send>,
    /// The plaintext's length, from the file's size when it was opened
    /// (valid as long as the file does not change; the reader checks).
    pub len: Option<u64>,
}

/// Decrypt the binary age file `file` (from its first byte) with any of
/// `identities`. Header errors (no matching identity, a bad MAC, a header
/// longer than `MAX_AGE_HEADER`) are returned here; payload errors by the
/// reader. Uses up to `threads` threads (none for a file of one batch).
pub fn decrypt_file(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    file: File,
    threads: usize,
) -> Result<DecryptedFile, CryptError> {
    let (start, aead) = open_payload(identities, &file)?;
    let size = file
        .metadata()
        .map_err(|e| CryptError::Decrypt(format!("cannot stat the file: {e}")))?
        .len();
    let ct_len = size.saturating_sub(start);
    let nchunks = ct_len.div_ceil(ENC as u64);
    let last_len = (ct_len - nchunks.saturating_sub(1) * ENC as u64) as usize;
    let len = (nchunks > 0 && last_len >= TAG)
        .then(|| (nchunks - 1) * CHUNK as u64 + (last_len - TAG) as u64);
    let nbatches = nchunks.div_ceil(BATCH);
    let want = if threads > 1 && nbatches > 1 {
        threads.min(nbatches as usize)
    } else {
        0
    };
    let shared = Arc::new(Shared {
        file,
        window: (2 * want).max(1) as u64,
        aead,
        start,
        ct_len,
        nchunks,
        last_len,
        state: Mutex::new(State::default()),
        work: Condvar::new(),
        ready: Condvar::new(),
    });
    let mut workers = 0;
    {
        for _ in 0..want {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("fspl-decrypt".into())
                .stack_size(256 * 1024)
                .spawn(move || s.work());
            if spawned.is_ok() {
                workers += 1;
            }
        }
    }
    Ok(DecryptedFile {
        reader: Box::new(Reader {
            shared,
            threaded: workers > 0,
            nbatches,
            next: 0,
            cur: None,
            failed: None,
            ended: false,
        }),
        len,
    })
}

/// Read the header of the age file `file` with age's own parser, unwrap
/// the file key with `identities`, check the header MAC, and derive the
/// payload key. Returns where the first chunk starts and the cipher.
fn open_payload(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    file: &File,
) -> Result<(u64, PayloadKey), CryptError> {
    let decrypt_err = |e: age::DecryptError| CryptError::Decrypt(e.to_string());
    let mut counted = Counted {
        inner: HeaderLimit::new(BufReader::with_capacity(8192, ReadAt { file, pos: 0 })),
        n: 0,
        last: [0; 16],
    };
    // age reads exactly its header and the 16-byte nonce that follows.
    let dec = age::Decryptor::new(&mut counted).map_err(decrypt_err)?;
    let key: Mutex<Option<Box<[u8; 16]>>> = Mutex::new(None);
    let wrapped: Vec<Capture<'_>> = identities
        .iter()
        .map(|i| Capture {
            inner: i.as_ref(),
            key: &key,
        })
        .collect();
    // Unwraps the file key and checks the header MAC with it.
    drop(
        dec.decrypt(wrapped.iter().map(|c| c as &dyn age::Identity))
            .map_err(decrypt_err)?,
    );
    let (start, nonce) = (counted.n, counted.last);
    let Some(mut file_key) = key.into_inner().unwrap_or_else(|p| p.into_inner()) else {
        return Err(CryptError::Decrypt("no file key was unwrapped".into()));
    };
    let mut payload_key = [0u8; 32];
    let expanded =
        Hkdf::<Sha256>::new(Some(&nonce), &file_key[..]).expand(b"payload", &mut payload_key);
    file_key.fill(0);
    expanded.map_err(|_| CryptError::Decrypt("cannot derive the payload key".into()))?;
    let aead = PayloadKey::new(&payload_key);
    payload_key.fill(0);
    Ok((start, aead))
}

/// The payload key of an age file: ChaCha20-Poly1305 (ring's, in
/// assembly: two to three times the portable implementation's speed).
struct PayloadKey(LessSafeKey);

impl PayloadKey {
    fn new(key: &[u8; 32]) -> PayloadKey {
        PayloadKey(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key"),
        ))
    }

    /// Decrypt `ct` in place under `nonce`, checking `tag`; false when it
    /// does not authenticate (`ct` is then garbage).
    fn open(&self, nonce: [u8; 12], ct: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; TAG]>::try_from(tag) else {
            return false;
        };
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                tag.into(),
                ct,
                0..,
            )
            .is_ok()
    }

    /// Encrypt `buf` in place; the tag (tests forge chunks with it).
    #[cfg(test)]
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; TAG] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
}

/// Reads a file from a position with `pread`, whatever its descriptor's
/// own offset.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Counts what age consumed and keeps its last 16 bytes (the nonce).
struct Counted<R> {
    inner: R,
    n: u64,
    last: [u8; 16],
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        let got = &buf[..k];
        if got.len() >= 16 {
            self.last.copy_from_slice(&got[got.len() - 16..]);
        } else {
            self.last.rotate_left(got.len());
            self.last[16 - got.len()..].copy_from_slice(got);
        }
        Ok(k)
    }
}

/// An identity that remembers the file key it unwrapped.
struct Capture<'a> {
    inner: &'a (dyn age::Identity + Send + Sync),
    key: &'a Mutex<Option<Box<[u8; 16]>>>,
}

impl Capture<'_> {
    fn keep(
        &self,
        r: Option<Result<FileKey, age::DecryptError>>,
    ) -> Option<Result<FileKey, age::DecryptError>> {
        if let Some(Ok(k)) = &r {
            *self.key.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Box::new(*k.expose_secret()));
        }
        r
    }
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        self.keep(self.inner.unwrap_stanza(stanza))
    }

    fn unwrap_stanzas(&self, stanzas: &[Stanza]) -> Option<Result<FileKey, age::DecryptError>> {
        self.keep(self.inner.unwrap_stanzas(stanzas))
    }
}

struct Shared {
    file: File,
    /// How many batches workers may be ahead of the reader.
    window: u64,
    aead: PayloadKey,
    /// Where the first chunk starts.
    start: u64,
    ct_len: u64,
    nchunks: u64,
    /// Ciphertext length of the last chunk.
    last_len: usize,
    state: Mutex<State>,
    /// Workers wait here for room in the window.
    work: Condvar,
    /// The reader waits here for its next batch.
    ready: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches handed to workers.
    claimed: u64,
    /// Batches taken by the reader.
    taken: u64,
    done: BTreeMap<u64, Batch>,
    /// The reader is gone: stop.
    stop: bool,
    spare: Vec<Vec<u8>>,
}

/// Decrypted chunks in place: chunk `j`'s plaintext at `j * ENC`; the
/// first `n` are good, and `err` says what went wrong with the next.
struct Batch {
    buf: Vec<u8>,
    first: u64,
    n: u64,
    err: Option<io::Error>,
}

fn truncated() -> io::Error {
    io::Error::new(ErrorKind::UnexpectedEof, "age file is truncated")
}

fn bad_chunk() -> io::Error {
    io::Error::new(ErrorKind::InvalidData, "decryption error")
}

impl Shared {
    fn plain_len(&self, chunk: u64) -> usize {
        if chunk + 1 == self.nchunks {
            self.last_len - TAG
        } else {
            CHUNK
        }
    }

    /// Decrypt batch `b`. Like age's own reader, the chunks before a bad
    /// one are delivered, then the error.
    fn decrypt_batch(&self, b: u64, mut buf: Vec<u8>) -> Batch {
        let first = b * BATCH;
        let n = BATCH.min(self.nchunks - first);
        let ends = first + n == self.nchunks;
        let len = if ends {
            (n as usize - 1) * ENC + self.last_len
        } else {
            n as usize * ENC
        };
        buf.resize(len, 0);
        let mut batch = Batch {
            buf,
            first,
            n: 0,
            err: None,
        };
        // Read what is there (the file may have been cut short since it
        // was opened: the chunks read whole are still good).
        let mut got = 0;
        while got < len {
            match self.file.read_at(
                &mut batch.buf[got..],
                self.start + first * ENC as u64 + got as u64,
            ) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    batch.err = Some(e);
                    break;
                }
            }
        }
        for j in 0..n {
            let i = first + j;
            let last = i + 1 == self.nchunks;
            let at = j as usize * ENC;
            let clen = if last { self.last_len } else { ENC };
            if at + clen > got {
                batch.err.get_or_insert_with(truncated);
                return batch;
            }
            if clen < TAG {
                batch.err = Some(bad_chunk());
                return batch;
            }
            let (ct, tag) = batch.buf[at..at + clen].split_at_mut(clen - TAG);
            let mut nonce = [0u8; 12];
            nonce[..11].copy_from_slice(&u128::from(i).to_be_bytes()[5..]);
            nonce[11] = u8::from(last);
            let backup = (last && clen == ENC).then(|| ct.to_vec());
            if !self.aead.open(nonce, ct, tag) {
                // A full chunk at the end that is not flagged last: the
                // file was cut at a chunk boundary. As age does, deliver
                // it, then say the file is truncated.
                if let Some(orig) = backup {
                    ct.copy_from_slice(&orig);
                    nonce[11] = 0;
                    if self.aead.open(nonce, ct, tag) {
                        batch.n = j + 1;
                        batch.err = Some(truncated());
                        return batch;
                    }
                }
                batch.err = Some(bad_chunk());
                return batch;
            }
            if last && clen == TAG && self.nchunks > 1 {
                batch.err = Some(io::Error::new(
                    ErrorKind::InvalidData,
                    "last STREAM chunk is empty",
                ));
                return batch;
            }
            batch.n = j + 1;
        }
        batch
    }

    /// A worker: claim the next batch while the reader is not too far
    /// behind, decrypt it, hand it over.
    fn work(&self) {
        let nbatches = self.nchunks.div_ceil(BATCH);
        let window = self.window;
        loop {
            let (b, buf) = {
                let mut st = self.lock();
                while !st.stop && st.claimed < nbatches && st.claimed >= st.taken + window {
                    st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.stop || st.claimed >= nbatches {
                    return;
                }
                st.claimed += 1;
                (st.claimed - 1, st.spare.pop().unwrap_or_default())
            };
            // Should decrypting panic, the reader gets an error for the
            // batch instead of waiting for it forever.
            let mut guard = Handover {
                shared: self,
                batch: b,
                result: None,
            };
            guard.result = Some(self.decrypt_batch(b, buf));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands a batch's result to the reader when dropped.
struct Handover<'a> {
    shared: &'a Shared,
    batch: u64,
    result: Option<Batch>,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let r = self.result.take().unwrap_or_else(|| Batch {
            buf: Vec::new(),
            first: self.batch * BATCH,
            n: 0,
            err: Some(io::Error::other("a decryption thread failed")),
        });
        let mut st = self.shared.lock();
        if !st.stop {
            st.done.insert(self.batch, r);
        }
        self.shared.ready.notify_all();
    }
}

struct Reader {
    shared: Arc<Shared>,
    threaded: bool,
    nbatches: u64,
    /// The next batch to take.
    next: u64,
    /// The batch being read: (batch, chunk within it, offset in the chunk).
    cur: Option<(Batch, u64, usize)>,
    /// Once an error was returned, every later read returns it again.
    failed: Option<(ErrorKind, String)>,
    ended: bool,
}

impl Reader {
    fn take(&mut self, b: u64) -> Batch {
        if !self.threaded {
            let buf = self
                .cur
                .take()
                .map(|(old, _, _)| old.buf)
                .unwrap_or_default();
            return self.shared.decrypt_batch(b, buf);
        }
        let mut st = self.shared.lock();
        if let Some((old, _, _)) = self.cur.take() {
            st.spare.push(old.buf);
        }
        loop {
            if let Some(r) = st.done.remove(&b) {
                st.taken = b + 1;
                self.shared.work.notify_all();
                return r;
            }
            st = self
                .shared
                .ready
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((batch, j, off)) = &mut self.cur {
                while *j < batch.n {
                    let plen = self.shared.plain_len(batch.first + *j);
                    if *off < plen {
                        let at = *j as usize * ENC + *off;
                        let k = (plen - *off).min(out.len());
                        out[..k].copy_from_slice(&batch.buf[at..at + k]);
                        *off += k;
                        return Ok(k);
                    }
                    *j += 1;
                    *off = 0;
                }
                if let Some(e) = batch.err.take() {
                    return Err(e);
                }
            }
            if self.next >= self.nbatches {
                if self.ended {
                    return Ok(0);
                }
                self.ended = true;
                if self.shared.nchunks == 0 {
                    return Err(truncated());
                }
                // Nothing may follow the last chunk (the file grew since
                // it was opened).
                let end = self.shared.start + self.shared.ct_len;
                if crate::digest::has_byte_at(&self.shared.file, end)? {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "data after the last STREAM chunk",
                    ));
                }
                return Ok(0);
            }
            let b = self.next;
            self.next += 1;
            let batch = self.take(b);
            self.cur = Some((batch, 0, 0));
        }
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.fill(out).inspect_err(|e| {
            self.failed = Some((e.kind(), e.to_string()));
            self.stop();
        })
    }
}

impl Reader {
    fn stop(&self) {
        let mut st = self.shared.lock();
        st.stop = true;
        st.done.clear();
        self.shared.work.notify_all();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::{decrypt, encrypt, parse_recipient};
    use std::io::Write;

    type Ids = Vec<Box<dyn age::Identity + Send + Sync>>;

    fn key() -> (Ids, Box<dyn age::Recipient + Send>) {
        let id = age::x25519::Identity::generate();
        let r = parse_recipient(&id.to_public().to_string()).unwrap();
        (vec![Box::new(id)], r)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + i / 65_536) as u8).collect()
    }

    fn encrypted(r: &dyn age::Recipient, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = age::Encryptor::with_recipients(std::iter::once(r)).unwrap();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    fn file_of(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> File {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        File::open(&p).unwrap()
    }

    /// Decrypt all of it; the error as text if any.
    fn read_all(ids: &Ids, f: File, threads: usize) -> Result<Vec<u8>, String> {
        let d = decrypt_file(ids, f, threads).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut r = d.reader;
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Where the chunks start (the header and nonce before).
    fn payload_start(ids: &Ids, bytes: &[u8], dir: &tempfile::TempDir) -> u64 {
        open_payload(ids, &file_of(dir, "probe", bytes)).unwrap().0
    }

    #[test]
    fn decrypting_on_threads_gives_what_age_gives_for_every_chunk_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        for n in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK,
            3 * CHUNK + 1,
            10 * CHUNK + 7,
            12 * CHUNK,
        ] {
            let plain = data(n);
            let ct = encrypted(r.as_ref(), &plain);
            let mut by_age = Vec::new();
            decrypt(&ids, &ct[..])
                .unwrap()
                .read_to_end(&mut by_age)
                .unwrap();
            assert!(by_age == plain);
            for threads in [1, 2, 4] {
                let d = decrypt_file(&ids, file_of(&dir, "f", &ct), threads).unwrap();
                assert_eq!(d.len, Some(n as u64), "{n} bytes");
                let mut got = Vec::new();
                let mut rd = d.reader;
                rd.read_to_end(&mut got).unwrap();
                assert!(got == plain, "{n} bytes, {threads} threads");
            }
        }
    }

    #[test]
    fn a_file_truncated_anywhere_is_refused_as_age_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        let ct = encrypted(r.as_ref(), &data(8 * CHUNK + 100));
        let start = payload_start(&ids, &ct, &dir) as usize;
        // At every chunk boundary, and inside the first, a middle and the
        // last chunk.
        let mut cuts: Vec<usize> = (0..=8).map(|k| start + k * ENC).collect();
        cuts.extend([
            start + 5,
            start + 4 * ENC + 100,
            ct.len() - 1,
            ct.len() - 17,
        ]);
        for cut in cuts {
            let short = &ct[..cut];
            let mut sink = Vec::new();
            let by_age = decrypt(&ids, short).and_then(|mut rd| {
                rd.read_to_end(&mut sink)
                    .map_err(|e| CryptError::Decrypt(e.to_string()))
            });
            assert!(by_age.is_err(), "age took a file cut at {cut}");
            for threads in [1, 2] {
                assert!(
                    read_all(&ids, file_of(&dir, "f", short), threads).is_err(),
                    "a file cut at {cut} of {} was decrypted ({threads} threads)",
                    ct.len()
                );
            }
            // Cut at a boundary, the chunks before it come out first, as
            // from age.
            if cut > start && (cut - start).is_multiple_of(ENC) {
                let d = decrypt_file(&ids, file_of(&dir, "f", short), 2).unwrap();
                let mut rd = d.reader;
                let mut got = Vec::new();
                let mut buf = [0u8; 7000];
                let e = loop {
                    match rd.read(&mut buf) {
                        Ok(0) => panic!("cut at {cut}: no error"),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => break e,
                    }
                };
                assert_eq!(got.len(), (cut - start) / ENC * CHUNK, "cut at {cut}");
                assert!(e.to_string().contains("truncated"), "cut at {cut}: {e}");
            }
        }
    }

    #[test]
    fn a_changed_byte_in_any_chunk_a_swapped_chunk_or_data_after_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        let ct = encrypted(r.as_ref(), &data(7 * CHUNK + 1000));
        let start = payload_start(&ids, &ct, &dir) as usize;
        let nchunks = (ct.len() - start).div_ceil(ENC);
        for k in 0..nchunks {
            let mut bad = ct.clone();
            let at = (start + k * ENC + 77).min(ct.len() - 1);
            bad[at] ^= 0x20;
            for threads in [1, 3] {
                let e = read_all(&ids, file_of(&dir, "f", &bad), threads).unwrap_err();
                assert!(e.contains("decryption error"), "chunk {k}: {e}");
                // As age does, the chunks before the bad one are delivered.
                let d = decrypt_file(&ids, file_of(&dir, "f", &bad), threads).unwrap();
                let mut rd = d.reader;
                let mut got = Vec::new();
                let mut buf = [0u8; 10_000];
                let err = loop {
                    match rd.read(&mut buf) {
                        Ok(0) => panic!("chunk {k}: no error"),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => break e,
                    }
                };
                assert_eq!(got.len(), k * CHUNK, "chunk {k}: {err}");
            }
        }
        // Two chunks swapped.
        let mut swapped = ct.clone();
        let (a, b) = (start + 2 * ENC, start + 5 * ENC);
        let first: Vec<u8> = swapped[a..a + ENC].to_vec();
        swapped.copy_within(b..b + ENC, a);
        swapped[b..b + ENC].copy_from_slice(&first);
        assert!(read_all(&ids, file_of(&dir, "f", &swapped), 2).is_err());
        // Anything after the last chunk.
        let mut longer = ct.clone();
        longer.push(0);
        assert!(read_all(&ids, file_of(&dir, "f", &longer), 2).is_err());
        // Data appended after the file was opened.
        let p = dir.path().join("grows");
        std::fs::write(&p, &ct).unwrap();
        let d = decrypt_file(&ids, File::open(&p).unwrap(), 2).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[1; ENC])
            .unwrap();
        let mut rd = d.reader;
        let e = rd.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("after the last"), "{e}");
        // Once failed, it stays failed.
        assert!(rd.read(&mut [0; 10]).is_err());
    }

    #[test]
    fn a_bad_header_mac_or_a_stranger_identity_is_refused_before_any_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        let ct = encrypted(r.as_ref(), b"secret job");
        // The MAC line is "--- " and 43 base64 characters; change one (to
        // another letter: still valid base64, another MAC).
        let mac_at = ct.windows(4).position(|w| w == b"\n---").unwrap() + 5;
        let mut bad = ct.clone();
        bad[mac_at] = if bad[mac_at] == b'A' { b'B' } else { b'A' };
        let e = read_all(&ids, file_of(&dir, "f", &bad), 2).unwrap_err();
        assert!(e.contains("MAC"), "{e}");
        let (stranger, _) = key();
        let e = read_all(&stranger, file_of(&dir, "f", &ct), 2).unwrap_err();
        assert!(e.contains("No matching keys"), "{e}");
        // A changed recipient stanza: the MAC no longer matches (or the
        // key does not unwrap).
        let mut bad = ct.clone();
        bad[30] ^= 0x01;
        assert!(read_all(&ids, file_of(&dir, "f", &bad), 2).is_err());
    }

    /// Chunks forged with the right key: what age never writes must still
    /// be refused (an empty last chunk after others; a chunk flagged last
    /// with more after it; a last chunk without the flag).
    #[test]
    fn forged_chunk_sequences_break_the_last_chunk_rules_and_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        let ct = encrypted(r.as_ref(), b"x");
        let (start, aead) = open_payload(&ids, &file_of(&dir, "f", &ct)).unwrap();
        let head = &ct[..start as usize];
        let chunk = |i: u64, last: bool, plain: &[u8]| {
            let mut nonce = [0u8; 12];
            nonce[..11].copy_from_slice(&u128::from(i).to_be_bytes()[5..]);
            nonce[11] = u8::from(last);
            let mut buf = plain.to_vec();
            let tag = aead.seal(nonce, &mut buf);
            buf.extend_from_slice(&tag);
            buf
        };
        let full = vec![7u8; CHUNK];
        let build = |parts: Vec<Vec<u8>>| {
            let mut f = head.to_vec();
            for p in parts {
                f.extend(p);
            }
            f
        };
        // The genuine shapes pass: one full last chunk; a full chunk then
        // a short last one; an empty only chunk.
        for ok in [
            build(vec![chunk(0, true, &full)]),
            build(vec![chunk(0, false, &full), chunk(1, true, b"end")]),
            build(vec![chunk(0, true, b"")]),
        ] {
            read_all(&ids, file_of(&dir, "f", &ok), 2).unwrap();
        }
        for (what, bad) in [
            (
                "an empty last chunk after a full one",
                build(vec![chunk(0, false, &full), chunk(1, true, b"")]),
            ),
            (
                "a full chunk flagged last with more after it",
                build(vec![chunk(0, true, &full), chunk(1, true, b"end")]),
            ),
            (
                "a last chunk without the flag",
                build(vec![chunk(0, false, &full), chunk(1, false, b"end")]),
            ),
            (
                "a full last chunk without the flag",
                build(vec![chunk(0, false, &full)]),
            ),
            ("chunks out of order", {
                build(vec![chunk(1, false, &full), chunk(0, true, b"end")])
            }),
        ] {
            for threads in [1, 2] {
                assert!(
                    read_all(&ids, file_of(&dir, "f", &bad), threads).is_err(),
                    "{what} was accepted"
                );
            }
            // age agrees.
            let mut sink = Vec::new();
            let by_age = decrypt(&ids, &bad[..]).map(|mut rd| rd.read_to_end(&mut sink));
            assert!(matches!(by_age, Err(_) | Ok(Err(_))), "age accepted {what}");
        }
    }

    #[test]
    fn our_encrypt_round_trips_through_the_parallel_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (ids, r) = key();
        let plain = data(7 * CHUNK + 5);
        let mut out = Vec::new();
        let mut e = encrypt(&[r], &mut out).unwrap();
        e.write_all(&plain).unwrap();
        e.finish().unwrap();
        assert!(read_all(&ids, file_of(&dir, "f", &out), 2).unwrap() == plain);
    }
}
