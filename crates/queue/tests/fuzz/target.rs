//! The fuzz target shared by `tests/reliability_fuzz.rs` (in-process,
//! structure-aware mutation under `cargo test`) and the coverage-guided AFL++
//! harness in `fuzz/` (`scripts/fuzz`): one job file's bytes go through
//! every reader a hostile file can reach, and every property that must hold
//! for any input is asserted (a failed assertion is a panic, which both
//! drivers report as a crash).
//!
//! Readers exercised: `fspl_format::decode` (slice), `read_header` (a stream
//! that hands out a few bytes at a time), `fspl_queue::open_stream` (magic
//! detection, in-process zstd/gzip/xz/lz4 decoding, age decryption with and
//! without an identity) followed by reading the payload (bounded), the
//! `x-fspl` extension (signed bytes, signature and trust checks, payload
//! length and digest), and the job environment built from the header.

#![allow(dead_code)]

use std::io::{self, Read};
use std::path::PathBuf;

use fspl_format::{Decoded, HeaderError, JobLocation, decode, format_env, read_header};
use fspl_queue::{StreamPayload, open_stream};
use fspl_trust::TrustFile;
use fspl_trust::crypt::{Identities, load_identities};
use fspl_trust::keys::SecretKey;

/// How much of a payload is read per input (a compressed bomb may expand
/// without bound: the command would read it, we need not).
pub const PAYLOAD_READ_LIMIT: u64 = 1 << 20;

/// The fixed key the corpus is signed and encrypted with, so checked-in
/// encrypted inputs decrypt on every run.
pub const KEY_SEED: [u8; 32] = [7; 32];

pub fn secret_key() -> SecretKey {
    SecretKey::from_seed(KEY_SEED)
}

/// Readers' state: an identity for the fixed key and a trust file that
/// lists it (with a param allowlist and a queue glob, so every check runs).
pub struct Target {
    /// Check signatures (slow in a debug build) for one input in this many
    /// (chosen by a hash of the input, so a replay checks the same ones).
    pub verify_every: u64,
    pub identities: Identities,
    pub trust: TrustFile,
    _dir: PathBuf,
}

impl Target {
    pub fn new() -> Target {
        let key = secret_key();
        let dir = std::env::temp_dir().join(format!(
            "fspl-fuzz-key-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let pub_path = key.write_pair(&path).unwrap();
        let identities = Identities(load_identities(&path).unwrap());
        let public = std::fs::read_to_string(&pub_path).unwrap();
        let trust_text = format!(
            "max_future_skew = 300\n[[sender]]\nname = \"fuzz\"\nkey = {:?}\nparams = [[\"backup\", \"*\"], [\"x\", \"**\"]]\nqueues = [\"q*\"]\n",
            public.trim()
        );
        let trust = TrustFile::parse(&dir.join("trust.toml"), &trust_text).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Target {
            verify_every: 1,
            identities,
            trust,
            _dir: dir,
        }
    }

    /// Run one input through every reader; panics when a property fails.
    /// Returns a short class of what happened (for the in-process driver's
    /// notion of "a new kind of input").
    pub fn check(&self, data: &[u8]) -> String {
        let sliced = decode(data);
        let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let verify = h % self.verify_every.max(1) == 0;
        // A stream that returns a few bytes per read must decode the same.
        for step in [1usize, 7, 4096] {
            let mut r = Chunked { data, pos: 0, step };
            let streamed = read_header(&mut r);
            agree(&sliced, &streamed, data);
            if let Ok(d) = &streamed {
                assert_eq!(
                    r.pos as u64, d.header_len,
                    "read_header consumed bytes past the header"
                );
            }
        }
        let mut class = match &sliced {
            Ok(d) => {
                self.check_decoded(d, verify);
                format!("plain:{}", d.header.cmd_type.name())
            }
            Err(e) => format!("plain-err:{}", error_class(e)),
        };
        // Without an identity only an age file reads differently.
        let ids: &[Option<&Identities>] = if fspl_trust::crypt::is_age(&data[..data.len().min(64)])
        {
            &[None, Some(&self.identities)]
        } else {
            &[Some(&self.identities)]
        };
        for &ids in ids {
            let s = self.check_stream(data, ids, &sliced, verify);
            class.push('|');
            class.push_str(&s);
        }
        class
    }

    fn check_decoded(&self, d: &Decoded, verify: bool) {
        // The decoded values re-encode to bytes that decode to the same
        // values (unknown keys and wide encodings are not kept, the values
        // are).
        let again = d
            .header
            .encode_with(&d.ext)
            .expect("a decoded header encodes");
        let back = decode(&again).expect("a re-encoded header decodes");
        assert_eq!(back.header, d.header, "header round trip");
        assert_eq!(back.ext, d.ext, "x-fspl round trip");
        assert_eq!(back.header_len, again.len() as u64);
        let _ = d.header.signed_bytes(&d.ext).expect("signed bytes encode");
        // Signature checks are slow in a debug build: once per input and
        // reader kind (the first call checks the signature, the second the
        // clock and params past it, when it verifies).
        if verify {
            for (now, allow) in [(i64::MIN, false), (d.header.ctime.secs, true)] {
                let _ = fspl_queue::verify::check_header(
                    &d.header,
                    &d.ext,
                    Some(&self.trust),
                    Some("queue"),
                    allow,
                    now,
                );
            }
        }
        let _ = fspl_queue::verify::check_header(&d.header, &d.ext, None, None, true, 0);
        let loc = JobLocation {
            queuedir: std::ffi::OsStr::new("q"),
            filename: std::ffi::OsStr::new("fspl-x.fspl"),
        };
        let env = d.header.environment(Some(loc));
        let _ = format_env(&env);
        let _ = d.header.environment(None);
    }

    fn check_stream(
        &self,
        data: &[u8],
        ids: Option<&Identities>,
        sliced: &Result<Decoded, HeaderError>,
        verify: bool,
    ) -> String {
        let input = io::Cursor::new(data.to_vec());
        match open_stream(input, ids) {
            Err(e) => format!("stream-err:{}", error_class(&e)),
            Ok((d, payload)) => {
                // A plain stream decodes to exactly what `decode` saw.
                self.check_decoded(&d, verify && !matches!(payload, StreamPayload::Plain(_)));
                match payload {
                    StreamPayload::Plain(mut cursor) => {
                        // Not compressed, not encrypted: exactly what decode saw.
                        let s = sliced
                            .as_ref()
                            .expect("open_stream read a header decode refused");
                        assert_eq!(s, &d, "open_stream and decode disagree");
                        assert_eq!(cursor.position(), d.header_len);
                        self.check_payload(&d, &mut cursor);
                        "stream:plain".into()
                    }
                    StreamPayload::Decoded { mut reader, what } => {
                        self.check_payload(&d, &mut reader);
                        format!("stream:{what}")
                    }
                }
            }
        }
    }

    /// Read (a bounded amount of) the payload and check it against the
    /// header's length and digest, as queue-process does before running.
    fn check_payload(&self, d: &Decoded, r: &mut dyn Read) {
        let alg = d
            .ext
            .digest
            .map(|x| x.alg)
            .unwrap_or(fspl_format::DigestAlg::Blake3);
        let mut limited = r.take(PAYLOAD_READ_LIMIT);
        if let Ok((len, digest)) = fspl_trust::digest::hash_reader(alg, &mut limited) {
            let _ = fspl_queue::verify::check_payload(&d.ext, len, &digest);
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::new()
    }
}

/// Slice and stream decoding must agree: the same header, extension and
/// length, or both an error (truncation errors may differ in what they
/// counted, the verdict may not).
fn agree(a: &Result<Decoded, HeaderError>, b: &Result<Decoded, HeaderError>, data: &[u8]) {
    match (a, b) {
        (Ok(x), Ok(y)) => assert_eq!(x, y, "decode and read_header disagree"),
        (Err(_), Err(_)) => {}
        (x, y) => panic!(
            "decode and read_header disagree on {} bytes: {:?} vs {:?}",
            data.len(),
            x.as_ref().map(|d| d.header_len),
            y.as_ref().map(|d| d.header_len)
        ),
    }
}

/// The kind of an error without the numbers in it.
pub fn error_class(e: &HeaderError) -> String {
    let s = match e {
        HeaderError::Metadata(m) => format!("metadata:{m}"),
        HeaderError::Io(io) => format!("io:{io}"),
        other => format!("{other:?}"),
    };
    let mut out = String::new();
    let mut last_digit = false;
    for c in s.chars().take(60) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// A reader that hands out at most `step` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    step: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
