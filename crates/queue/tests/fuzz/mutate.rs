//! Seed jobs and structure-aware mutations for the in-process fuzzer.
//!
//! Seeds are real job files of every shape (NOP, Fail, Command with binary
//! params and env, with and without `x-fspl` length/digest/destination/
//! signature), each also compressed with every codec and age-encrypted.
//! Mutations work at four levels: raw bytes; the 30-byte prefix (lengths
//! and CRCs, with the prefix CRC fixed up); the MessagePack metadata with
//! both CRCs fixed up afterwards (so the decoder itself is reached, not
//! just the checksums); and the wrapping (a mutated plain job compressed or
//! encrypted again, or a compressed one mutated inside its frame).

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use fspl_codec::CompressSpec;
use fspl_format::{
    CmdType, Command, Ctime, Digest, DigestAlg, Extension, JobHeader, MAGIC, PREFIX_LEN,
};
use fspl_trust::crypt::{encrypt, parse_recipient};

use super::target::secret_key;

/// splitmix64.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Compress a whole job file (as `prepare --compress` does).
pub fn compress(data: &[u8], spec: &str) -> Vec<u8> {
    #[derive(Clone)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Shared(Arc::new(Mutex::new(Vec::new())));
    let spec: CompressSpec = spec.parse().unwrap();
    let mut enc = spec.encoder(out.clone()).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap();
    out.0.lock().unwrap().clone()
}

/// Encrypt a whole job file to the fixed key (as `prepare --encrypt-to`).
pub fn encrypt_to_key(data: &[u8]) -> Vec<u8> {
    let line = secret_key().public().to_openssh("fuzz");
    let r = parse_recipient(&line).unwrap();
    let mut w = encrypt(&[r], Vec::new()).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

pub const CODECS: [&str; 4] = ["zstd:1", "gzip:1", "xz:0", "lz4"];

fn header(seq: u64, cmd_type: CmdType) -> JobHeader {
    JobHeader {
        seq,
        ctime: Ctime {
            secs: 1_700_000_000,
            nanos: 123,
        },
        cmd_type,
    }
}

/// A job with this header, extension and payload.
pub fn job(h: &JobHeader, ext: &Extension, payload: &[u8]) -> Vec<u8> {
    let mut v = h.encode_with(ext).unwrap();
    v.extend_from_slice(payload);
    v
}

fn digest_of(payload: &[u8]) -> Digest {
    let mut h = fspl_trust::digest::Hasher::new(DigestAlg::Blake3);
    h.update(payload);
    h.finish()
}

/// A signed job (signature over `signed_bytes`, as `prepare --sign`).
pub fn signed_job(h: &JobHeader, to: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let k = secret_key();
    let mut ext = Extension {
        payload_len: Some(payload.len() as u64),
        digest: Some(digest_of(payload)),
        to: to.map(str::to_string),
        signer: Some(k.public().bytes()),
        signature: None,
    };
    let sig = k.sign(&h.signed_bytes(&ext).unwrap());
    ext.signature = Some(sig);
    job(h, &ext, payload)
}

/// Seed inputs, named (the names become corpus file names).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let cmd = CmdType::Command(Command {
        params: vec![b"backup".to_vec(), vec![0xff, 0xfe, 0], b"../../x".to_vec()],
        env: vec![
            (b"REASON".to_vec(), b"nightly".to_vec()),
            (b"A=B".to_vec(), vec![0x80, 0x81]),
            (b"../../x".to_vec(), Vec::new()),
        ],
    });
    let payload = b"payload bytes\n".repeat(5);
    let plain_ext = Extension {
        payload_len: Some(payload.len() as u64),
        digest: Some(digest_of(&payload)),
        ..Extension::default()
    };
    let mut plain: Vec<(String, Vec<u8>)> = vec![
        (
            "nop".into(),
            job(&header(1, CmdType::Nop), &Extension::default(), b""),
        ),
        (
            "fail".into(),
            job(&header(2, CmdType::Fail), &Extension::default(), b"x"),
        ),
        (
            "command".into(),
            job(&header(3, cmd.clone()), &Extension::default(), &payload),
        ),
        (
            "command-digest".into(),
            job(&header(4, cmd.clone()), &plain_ext, &payload),
        ),
        (
            "command-sha256".into(),
            job(
                &header(4, cmd.clone()),
                &Extension {
                    digest: Some(Digest {
                        alg: DigestAlg::Sha256,
                        bytes: [1; 32],
                    }),
                    ..Extension::default()
                },
                &payload,
            ),
        ),
        (
            "signed".into(),
            signed_job(&header(5, cmd.clone()), Some("queue"), &payload),
        ),
        (
            "signed-nop".into(),
            signed_job(&header(6, CmdType::Nop), None, b""),
        ),
        (
            "seq-max".into(),
            job(&header(u64::MAX, CmdType::Nop), &Extension::default(), b""),
        ),
    ];
    // Hostile shapes with valid checksums.
    let nop = header(7, CmdType::Nop);
    plain.extend([
        ("len-max".to_string(), frame(b"", u64::MAX)),
        (
            "len-over-limit".to_string(),
            frame(b"\x80", fspl_format::MAX_METADATA_LEN + 1),
        ),
        ("len-short".to_string(), frame(b"\x80", 4096)),
        ("deep-arrays".to_string(), with_extra(&nop, &[0x91; 5000])),
        (
            "deep-maps".to_string(),
            with_extra(&nop, &b"\x81\xa1a".repeat(3000)),
        ),
        (
            "deep-ext".to_string(),
            with_key(&nop, b"\xa6x-fspl", &[0x91; 5000]),
        ),
        (
            "array32-huge".to_string(),
            with_extra(&nop, &[0xdd, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "map32-huge".to_string(),
            with_extra(&nop, &[0xdf, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "str32-huge".to_string(),
            with_extra(&nop, &[0xdb, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "bin32-huge".to_string(),
            with_extra(&nop, &[0xc6, 0xff, 0xff, 0xff, 0xff]),
        ),
        (
            "ext-len-huge".to_string(),
            with_key(
                &nop,
                b"\xa6x-fspl",
                b"\x81\xa3len\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
            ),
        ),
        (
            "ext-bad-alg".to_string(),
            with_key(
                &nop,
                b"\xa6x-fspl",
                b"\x82\xa3alg\xa3md5\xa6digest\xc4\x01\x00",
            ),
        ),
        (
            "big-string".to_string(),
            with_extra(&nop, &{
                let mut v = vec![0xda, 0xff, 0xff];
                v.extend(std::iter::repeat_n(b'a', 0xffff));
                v
            }),
        ),
        (
            "non-utf8-key".to_string(),
            with_key(&nop, b"\xa2\xff\xfe", b"\xc0"),
        ),
        ("truncated-prefix".to_string(), plain[2].1[..20].to_vec()),
        ("truncated-meta".to_string(), plain[2].1[..40].to_vec()),
        ("empty".to_string(), Vec::new()),
        (
            "age-truncated".to_string(),
            encrypt_to_key(&plain[0].1)[..60].to_vec(),
        ),
    ]);
    let mut out = Vec::new();
    for (name, bytes) in &plain[..8] {
        for c in CODECS {
            let cname = c.split(':').next().unwrap();
            out.push((format!("{name}.{cname}"), compress(bytes, c)));
        }
        out.push((format!("{name}.age"), encrypt_to_key(bytes)));
    }
    out.push((
        "command.zstd.age".into(),
        encrypt_to_key(&compress(&plain[2].1, "zstd:1")),
    ));
    plain.append(&mut out);
    plain
}

/// A job whose metadata map has one more entry, `"zzz": value` (an unknown
/// key every reader must skip over).
pub fn with_extra(h: &JobHeader, value: &[u8]) -> Vec<u8> {
    with_key(h, b"\xa3zzz", value)
}

/// A job whose metadata map has one more entry: `key` and `value` given as
/// MessagePack bytes.
pub fn with_key(h: &JobHeader, key: &[u8], value: &[u8]) -> Vec<u8> {
    let full = h.encode().unwrap();
    let mut meta = full[PREFIX_LEN..].to_vec();
    assert_eq!(meta[0] & 0xf0, 0x80, "a fixmap");
    meta[0] += 1;
    meta.extend_from_slice(key);
    meta.extend_from_slice(value);
    frame(&meta, meta.len() as u64)
}

// ---- mutation ----

const INTERESTING: [u8; 24] = [
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xcc, 0xcd, 0xce, 0xcf, 0xd9,
    0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x80,
];

/// MessagePack fragments that stress a decoder: huge claimed lengths,
/// deep nesting, wrong types.
fn msgpack_fragment(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => vec![0xdd, 0xff, 0xff, 0xff, 0xff], // array32 of 4G elements
        1 => vec![0xdf, 0xff, 0xff, 0xff, 0xff], // map32
        2 => vec![0xdb, 0xff, 0xff, 0xff, 0xff], // str32
        3 => vec![0xc6, 0x7f, 0xff, 0xff, 0xff], // bin32
        4 => vec![0x91; 1 + rng.below(300)],     // nesting
        5 => [0x81, 0xa1, b'a'].repeat(1 + rng.below(200)), // nested maps
        6 => vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        7 => vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
        8 => b"\xa6x-fspl".to_vec(),
        _ => vec![INTERESTING[rng.below(INTERESTING.len())]],
    }
}

/// Rebuild the 30-byte prefix around `meta` with correct CRCs.
pub fn frame(meta: &[u8], claimed_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + meta.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&claimed_len.to_be_bytes());
    out.extend_from_slice(&crc32fast_hash(meta).to_be_bytes());
    let c = crc32fast_hash(&out[..26]);
    out.extend_from_slice(&c.to_be_bytes());
    out.extend_from_slice(meta);
    out
}

/// CRC-32 (IEEE), as the format uses; written out so the fuzzer needs no
/// extra dependency.
pub fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One raw byte-level mutation.
fn raw(data: &mut Vec<u8>, rng: &mut Rng, pool: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        3 => {
            let i = rng.below(len + 1);
            let frag = if rng.chance(50) {
                msgpack_fragment(rng)
            } else {
                let n = 1 + rng.below(16);
                rng.bytes(n)
            };
            data.splice(i..i, frag);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            data.drain(i..i + n);
        }
        5 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let chunk: Vec<u8> = data[i..i + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        6 => data.truncate(rng.below(len + 1)),
        7 if !pool.is_empty() => {
            // Splice: our head, another input's tail.
            let other = &pool[rng.below(pool.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if len >= 4 => {
            // A 16/32/64-bit big-endian field set to an edge value.
            let w = [2usize, 4, 8][rng.below(3)].min(len);
            let i = rng.below(len - w + 1);
            let v: u64 = match rng.below(4) {
                0 => u64::MAX,
                1 => 0,
                2 => 1u64 << rng.below(64),
                _ => rng.next(),
            };
            data[i..i + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
        }
        _ => data.push(rng.next() as u8),
    }
}

/// Split a plain job into (metadata, payload) when its prefix parses.
fn split(data: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let p = fspl_format::parse_prefix(data.get(..PREFIX_LEN)?).ok()?;
    let end = PREFIX_LEN.checked_add(usize::try_from(p.metadata_len).ok()?)?;
    if end > data.len() {
        return None;
    }
    Some((data[PREFIX_LEN..end].to_vec(), data[end..].to_vec()))
}

/// Mutate `input` (never empty-handed: returns a new input).
pub fn mutate(input: &[u8], rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = input.to_vec();
    let rounds = 1 + rng.below(4);
    match rng.below(10) {
        // Raw bytes anywhere (CRCs will usually catch it).
        0..=2 => {
            for _ in 0..rounds {
                raw(&mut data, rng, pool);
            }
        }
        // Metadata mutated, CRCs and length fixed up: reaches the decoder.
        3..=6 => {
            if let Some((mut meta, payload)) = split(&data) {
                for _ in 0..rounds {
                    raw(&mut meta, rng, pool);
                }
                let claimed = if rng.chance(5) {
                    meta.len() as u64 + rng.below(1000) as u64
                } else {
                    meta.len() as u64
                };
                data = frame(&meta, claimed);
                if rng.chance(80) {
                    data.extend_from_slice(&payload);
                }
            } else {
                raw(&mut data, rng, pool);
            }
        }
        // The prefix's length field, prefix CRC fixed up.
        7 => {
            if let Some((meta, payload)) = split(&data) {
                let claimed = match rng.below(4) {
                    0 => u64::MAX,
                    1 => fspl_format::MAX_METADATA_LEN + rng.below(2) as u64,
                    2 => rng.next(),
                    _ => (meta.len() as u64).saturating_sub(rng.below(8) as u64),
                };
                data = frame(&meta, claimed);
                data.extend_from_slice(&payload);
            } else {
                raw(&mut data, rng, pool);
            }
        }
        // Wrap the (mutated) job: compressed or encrypted.
        8 => {
            if rng.chance(50)
                && let Some((mut meta, payload)) = split(&data)
            {
                raw(&mut meta, rng, pool);
                data = frame(&meta, meta.len() as u64);
                data.extend_from_slice(&payload);
            }
            data = if rng.chance(80) {
                compress(&data, CODECS[rng.below(CODECS.len())])
            } else {
                encrypt_to_key(&data)
            };
        }
        // Inside a compressed or encrypted frame: flip bytes past its magic.
        _ => {
            if data.len() > 40 {
                for _ in 0..rounds {
                    let i = 16 + rng.below(data.len() - 16);
                    data[i] ^= 1 << rng.below(8);
                }
            } else {
                raw(&mut data, rng, pool);
            }
        }
    }
    // Keep inputs small: fuzzing speed, not size, finds bugs here.
    data.truncate(256 * 1024);
    data
}
