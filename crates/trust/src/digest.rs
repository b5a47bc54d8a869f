//! Payload length and digest.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len};
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

/// What [`hash_file_at`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeHash {
    /// How many of the asked-for bytes the file held: less than asked when
    /// it ended early (the digest is then of no use).
    pub present: u64,
    pub digest: Digest,
}

/// Below this many bytes a payload is hashed on one thread.
const PARALLEL_MIN: u64 = 4 << 20;
/// Bytes read per `pread`.
const READ_BUF: usize = 256 * 1024;

/// Hash `len` bytes of `file` starting at `offset`, reading with `pread`
/// (the file position is neither used nor moved, so the descriptor can be
/// shared with a process reading it meanwhile). A BLAKE3 digest of a large
/// range is computed on up to `threads` threads, each reading and hashing
/// its own subtrees of BLAKE3's tree, with the same result as one pass.
/// No memory mapping: a file cut short meanwhile is a short read, never a
/// SIGBUS. Setting `stop` makes it give up soon (an `Other` error).
pub fn hash_file_at(
    file: &File,
    offset: u64,
    len: u64,
    alg: DigestAlg,
    threads: usize,
    stop: &AtomicBool,
) -> io::Result<RangeHash> {
    if alg != DigestAlg::Blake3 || threads <= 1 || len < PARALLEL_MIN {
        let mut h = Hasher::new(alg);
        let present = read_range(file, offset, 0, len, stop, &mut |b| h.update(b))?;
        return Ok(RangeHash {
            present,
            digest: h.finish(),
        });
    }
    // Leaves of at most `target` bytes, each a whole BLAKE3 subtree (split
    // the way BLAKE3 splits: the left part the largest power of two of
    // chunks). About four per thread, so that uneven splits even out.
    let target = (len / (threads as u64 * 4)).max(1 << 20);
    let mut leaves = Vec::new();
    let tree = split(0, len, target, &mut leaves);
    let cvs: Vec<Mutex<Option<ChainingValue>>> = leaves.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let short = Mutex::new(None::<u64>);
    let failed = AtomicBool::new(false);
    let work = || -> io::Result<()> {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(&(start, n)) = leaves.get(i) else {
                return Ok(());
            };
            if failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut h = blake3::Hasher::new();
            h.set_input_offset(start);
            let got = read_range(file, offset, start, n, stop, &mut |b| {
                h.update(b);
            })
            .inspect_err(|_| failed.store(true, Ordering::SeqCst))?;
            if got < n {
                // The file ended inside this leaf: `got` bytes of it are
                // there; the leaves to the right hold nothing.
                let mut s = short.lock().unwrap_or_else(|p| p.into_inner());
                let at = start + got;
                *s = Some(s.map_or(at, |x| x.min(at)));
                failed.store(true, Ordering::SeqCst);
                return Ok(());
            }
            *cvs[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(h.finalize_non_root());
        }
    };
    let results: Vec<io::Result<()>> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(leaves.len()))
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("fspl-hash".into())
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut r = vec![work()];
        r.extend(helpers.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked")))
        }));
        r
    });
    for r in results {
        r?;
    }
    if let Some(present) = *short.lock().unwrap_or_else(|p| p.into_inner()) {
        return Ok(RangeHash {
            present,
            digest: Digest {
                alg,
                bytes: [0; 32],
            },
        });
    }
    let cv = |i: usize| {
        cvs[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or([0; 32])
    };
    let root = match &tree {
        Node::Parent(l, r) => {
            blake3::hazmat::merge_subtrees_root(&l.merge(&cv), &r.merge(&cv), Mode::Hash)
        }
        // One leaf only when `len` is below PARALLEL_MIN: handled above.
        Node::Leaf(_) => return Err(io::Error::other("internal: a single-leaf tree")),
    };
    Ok(RangeHash {
        present: len,
        digest: Digest {
            alg,
            bytes: *root.as_bytes(),
        },
    })
}

/// The shape of the BLAKE3 tree down to the leaves we hash.
enum Node {
    Leaf(usize),
    Parent(Box<Node>, Box<Node>),
}

impl Node {
    fn merge(&self, cv: &dyn Fn(usize) -> ChainingValue) -> ChainingValue {
        match self {
            Node::Leaf(i) => cv(*i),
            Node::Parent(l, r) => {
                blake3::hazmat::merge_subtrees_non_root(&l.merge(cv), &r.merge(cv), Mode::Hash)
            }
        }
    }
}

fn split(start: u64, len: u64, target: u64, leaves: &mut Vec<(u64, u64)>) -> Node {
    if len <= target || len <= blake3::CHUNK_LEN as u64 {
        leaves.push((start, len));
        return Node::Leaf(leaves.len() - 1);
    }
    let left = left_subtree_len(len);
    let l = split(start, left, target, leaves);
    let r = split(start + left, len - left, target, leaves);
    Node::Parent(Box::new(l), Box::new(r))
}

/// Feed bytes `[start, start + len)` of the range at `base` to `f`;
/// returns how many there were (fewer when the file ends first).
fn read_range(
    file: &File,
    base: u64,
    start: u64,
    len: u64,
    stop: &AtomicBool,
    f: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUF.min(len.max(1) as usize)];
    let mut done = 0u64;
    while done < len {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("abandoned"));
        }
        let want = (len - done).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], base + start + done) {
            Ok(0) => break,
            Ok(n) => {
                f(&buf[..n]);
                done += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether `file` holds at least one byte at `at` (a payload longer than
/// its header says).
pub fn has_byte_at(file: &File, at: u64) -> io::Result<bool> {
    let mut b = [0u8; 1];
    loop {
        match file.read_at(&mut b, at) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How many cores hashing may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The digest of the first `len` bytes of `file`, read with positional
/// reads (the file offset stays where it is), on every core for a large
/// BLAKE3 input (see [`hash_file_at`]). A file that holds fewer bytes
/// fails with `UnexpectedEof`.
pub fn hash_file(alg: DigestAlg, file: &File, len: u64) -> io::Result<Digest> {
    let r = hash_file_at(file, 0, len, alg, cores(), &AtomicBool::new(false))?;
    if r.present < len {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "the file ended at byte {}, before the {len} bytes it had when \
                 hashing began (it changed while being read)",
                r.present
            ),
        ));
    }
    Ok(r.digest)
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

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 1021) as u8).collect()
    }

    #[test]
    fn hashing_a_file_range_on_threads_matches_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let stop = AtomicBool::new(false);
        // Around every split point: small, one chunk, the parallel
        // threshold, powers of two and uneven sizes.
        let sizes = [
            0usize,
            1,
            1024,
            1025,
            (4 << 20) - 1,
            4 << 20,
            (4 << 20) + 1,
            (5 << 20) + 3,
            8 << 20,
            (12 << 20) + 1024 * 7 + 5,
        ];
        for n in sizes {
            let d = data(n + 100);
            std::fs::write(&p, &d).unwrap();
            let f = File::open(&p).unwrap();
            // SHA-256 is one pass whatever the threads.
            for (alg, threads) in [
                (DigestAlg::Blake3, 1),
                (DigestAlg::Blake3, 2),
                (DigestAlg::Blake3, 3),
                (DigestAlg::Blake3, 8),
                (DigestAlg::Sha256, 2),
            ] {
                let want = hash_reader(alg, &mut &d[100..100 + n]).unwrap().1;
                let got = hash_file_at(&f, 100, n as u64, alg, threads, &stop).unwrap();
                assert_eq!(got.present, n as u64, "{n} bytes, {threads} threads");
                assert_eq!(got.digest, want, "{n} bytes, {threads} threads, {alg:?}");
            }
        }
    }

    #[test]
    fn a_file_shorter_than_the_range_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for n in [10usize, (9 << 20) + 17] {
            std::fs::write(&p, data(n)).unwrap();
            let f = File::open(&p).unwrap();
            for threads in [1, 2, 4] {
                let got = hash_file_at(
                    &f,
                    3,
                    n as u64 + 1000,
                    DigestAlg::Blake3,
                    threads,
                    &AtomicBool::new(false),
                )
                .unwrap();
                assert_eq!(got.present, n as u64 - 3, "{n} bytes, {threads} threads");
            }
            assert!(has_byte_at(&f, n as u64 - 1).unwrap());
            assert!(!has_byte_at(&f, n as u64).unwrap());
        }
        // Asked to stop, it stops with an error.
        let f = File::open(&p).unwrap();
        assert!(
            hash_file_at(&f, 0, 9 << 20, DigestAlg::Blake3, 2, &AtomicBool::new(true)).is_err()
        );
    }

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

    fn data2(n: usize) -> Vec<u8> {
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
        let all = data2(PARALLEL_MIN as usize * 4 + 3 * M + 1000);
        let f = file_with(&all);
        for n in [
            0,
            1,
            1023,
            1024,
            1025,
            READ_BUF + 1,
            (1usize << 20),
            PARALLEL_MIN as usize - 1,
            PARALLEL_MIN as usize,
            PARALLEL_MIN as usize + 1,
            PARALLEL_MIN as usize + (1usize << 20) / 2 + 17,
            3 * (1usize << 20) + 1024,
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
            let f = file_with(&data2(n));
            let e = hash_file(DigestAlg::Blake3, &f, n as u64 + 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
            assert!(e.to_string().contains("changed while being read"), "{e}");
        }
    }

    #[test]
    fn hash_range_adds_exactly_that_range() {
        let all = data2(700_000);
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
