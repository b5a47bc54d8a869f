//! Payload length and digest.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::FileExt;

use fspl_format::{Digest, DigestAlg};
use sha2::Digest as _;

/// Hashes a payload as it goes by.
pub enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(alg: DigestAlg) -> Hasher {
        match alg {
            DigestAlg::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            DigestAlg::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            // Large buffers go through BLAKE3's SIMD paths.
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Blake3(h) => Digest {
                alg: DigestAlg::Blake3,
                bytes: *h.finalize().as_bytes(),
            },
            Hasher::Sha256(h) => Digest {
                alg: DigestAlg::Sha256,
                bytes: h.finalize().into(),
            },
        }
    }
}

/// Read `r` to the end; its length and digest.
pub fn hash_reader(alg: DigestAlg, r: &mut dyn Read) -> io::Result<(u64, Digest)> {
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((len, h.finish())),
            Ok(n) => {
                h.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Size of one positional read when hashing a file.
const FILE_BUF: usize = 128 * 1024;

/// Files at least this large are hashed on two threads (BLAKE3 only).
pub const PARALLEL_MIN: u64 = 8 * 1024 * 1024;

/// The largest piece of a file one hashing thread takes at a time (a power
/// of two, and a multiple of BLAKE3's 1 KiB chunk, below `PARALLEL_MIN`).
const PIECE: u64 = 4 * 1024 * 1024;

/// Whether more than one core is available for hashing.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Hash bytes `start..end` of `file` (positional reads: the file offset is
/// not moved), passing them to `h`. A file that ends early fails with
/// `UnexpectedEof`.
fn hash_span(
    file: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
    h: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = buf
            .len()
            .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        match file.read_at(&mut buf[..want], pos) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended at byte {pos}, before the {end} bytes it had when \
                         hashing began (it changed while being read)"
                    ),
                ));
            }
            Ok(n) => {
                h(&buf[..n]);
                pos += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A read buffer for hashing `len` bytes: `FILE_BUF`, or less for less.
fn file_buf(len: u64) -> Vec<u8> {
    vec![0u8; usize::try_from(len).map_or(FILE_BUF, |l| l.clamp(1, FILE_BUF))]
}

/// The subtrees BLAKE3's tree cuts `start..end` into, down to pieces of at
/// most `PIECE` bytes, left to right.
fn leaves(start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    if end - start <= PIECE {
        out.push((start, end));
    } else {
        let mid = start + blake3::hazmat::left_subtree_len(end - start);
        leaves(start, mid, out);
        leaves(mid, end, out);
    }
}

/// The chaining value of the subtree `start..end`, merged from the leaves'
/// values (taken in order from `cvs`) along the same cuts as `leaves`.
fn subtree_cv(
    start: u64,
    end: u64,
    cvs: &mut dyn Iterator<Item = blake3::hazmat::ChainingValue>,
) -> Option<blake3::hazmat::ChainingValue> {
    if end - start <= PIECE {
        return cvs.next();
    }
    let mid = start + blake3::hazmat::left_subtree_len(end - start);
    let l = subtree_cv(start, mid, cvs)?;
    let r = subtree_cv(mid, end, cvs)?;
    Some(blake3::hazmat::merge_subtrees_non_root(
        &l,
        &r,
        blake3::hazmat::Mode::Hash,
    ))
}

/// The digest of the first `len` bytes of `file`, read with positional
/// reads (the file offset stays where it is). A file that holds fewer
/// bytes fails with `UnexpectedEof`.
///
/// A large input is hashed with BLAKE3 on two threads: BLAKE3 is a tree
/// hash, so the input is cut along its tree into subtrees of at most
/// `PIECE` bytes, the two threads take them in turn, and the subtrees'
/// chaining values are merged as the tree says. The result is the ordinary
/// BLAKE3 digest (the tests compare it with `blake3::hash`). Memory: one
/// read buffer per thread.
pub fn hash_file(alg: DigestAlg, file: &File, len: u64) -> io::Result<Digest> {
    if alg != DigestAlg::Blake3 || len < PARALLEL_MIN || cores() < 2 {
        let mut h = Hasher::new(alg);
        hash_span(file, 0, len, &mut file_buf(len), &mut |b| h.update(b))?;
        return Ok(h.finish());
    }
    let mut spans = Vec::new();
    leaves(0, len, &mut spans);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cvs: Vec<std::sync::OnceLock<blake3::hazmat::ChainingValue>> =
        spans.iter().map(|_| std::sync::OnceLock::new()).collect();
    // Each thread's buffer is made here: the second thread allocates
    // nothing (no malloc arena of its own).
    let work = |mut buf: Vec<u8>| -> io::Result<()> {
        use blake3::hazmat::HasherExt;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(start, end)) = spans.get(i) else {
                return Ok(());
            };
            let mut h = blake3::Hasher::new();
            h.set_input_offset(start);
            hash_span(file, start, end, &mut buf, &mut |b| {
                h.update(b);
            })?;
            let _ = cvs[i].set(h.finalize_non_root());
        }
    };
    let (buf1, buf2) = (file_buf(PIECE), file_buf(PIECE));
    std::thread::scope(|s| {
        let other = std::thread::Builder::new()
            .name("fspl-hash".into())
            .spawn_scoped(s, || work(buf2))?;
        let mine = work(buf1);
        let theirs = other
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
        mine.and(theirs)
    })?;
    let mut cvs = cvs.into_iter().map(|c| c.into_inner());
    let mut cvs = std::iter::from_fn(|| cvs.next().flatten());
    let mid = blake3::hazmat::left_subtree_len(len);
    let l = subtree_cv(0, mid, &mut cvs);
    let r = subtree_cv(mid, len, &mut cvs);
    let (Some(l), Some(r)) = (l, r) else {
        return Err(io::Error::other("a hashing thread left a piece unhashed"));
    };
    Ok(Digest {
        alg: DigestAlg::Blake3,
        bytes: *blake3::hazmat::merge_subtrees_root(&l, &r, blake3::hazmat::Mode::Hash).as_bytes(),
    })
}

/// Add bytes `start..end` of `file` to `h`, read with positional reads
/// into `buf` (the file offset is not moved). A file that ends early
/// fails with `UnexpectedEof`.
pub fn hash_range(
    h: &mut Hasher,
    file: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    hash_span(file, start, end, buf, &mut |b| h.update(b))
}

/// Lowercase hex, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        let (n, d) = hash_reader(DigestAlg::Sha256, &mut &b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            hex(&d.bytes),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (_, d) = hash_reader(DigestAlg::Blake3, &mut &b""[..]).unwrap();
        assert_eq!(
            hex(&d.bytes),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect()
    }

    fn file_with(d: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, d).unwrap();
        f
    }

    #[test]
    fn hash_file_is_the_plain_digest_at_every_size_and_split() {
        const M: usize = 1024 * 1024;
        let all = data(PARALLEL_MIN as usize * 4 + 3 * M + 1000);
        let f = file_with(&all);
        for n in [
            0,
            1,
            1023,
            1024,
            1025,
            FILE_BUF + 1,
            PIECE as usize,
            PARALLEL_MIN as usize - 1,
            PARALLEL_MIN as usize,
            PARALLEL_MIN as usize + 1,
            PARALLEL_MIN as usize + PIECE as usize / 2 + 17,
            3 * PIECE as usize + 1024,
            all.len(),
        ] {
            let d = hash_file(DigestAlg::Blake3, &f, n as u64).unwrap();
            assert_eq!(d.bytes, *blake3::hash(&all[..n]).as_bytes(), "{n} bytes");
            let s = hash_file(DigestAlg::Sha256, &f, n.min(3 * M) as u64).unwrap();
            assert_eq!(
                s,
                hash_reader(DigestAlg::Sha256, &mut &all[..n.min(3 * M)])
                    .unwrap()
                    .1
            );
        }
        // The file offset did not move.
        assert_eq!(
            std::io::Seek::stream_position(&mut &f).unwrap(),
            all.len() as u64
        );
    }

    #[test]
    fn hash_file_of_a_file_shorter_than_asked_fails() {
        for n in [10usize, PARALLEL_MIN as usize + 5] {
            let f = file_with(&data(n));
            let e = hash_file(DigestAlg::Blake3, &f, n as u64 + 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
            assert!(e.to_string().contains("changed while being read"), "{e}");
        }
    }

    #[test]
    fn hash_range_adds_exactly_that_range() {
        let all = data(700_000);
        let f = file_with(&all);
        let mut h = Hasher::new(DigestAlg::Blake3);
        let mut buf = vec![0u8; 1000];
        hash_range(&mut h, &f, 0, 10, &mut buf).unwrap();
        hash_range(&mut h, &f, 10, 10, &mut buf).unwrap();
        hash_range(&mut h, &f, 10, 654_321, &mut buf).unwrap();
        assert_eq!(h.finish().bytes, *blake3::hash(&all[..654_321]).as_bytes());
        let mut h = Hasher::new(DigestAlg::Blake3);
        let e = hash_range(&mut h, &f, 600_000, 700_001, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    }
}
