//! The fixed 30-byte prefix and the MessagePack metadata that follows it.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::bytes::{Bin, Text};
use crate::error::{EncodeError, HeaderError};

/// The 12-byte tag every job file starts with.
pub const MAGIC: [u8; 12] = *b"*FILESPOOLER";
/// The only format version there is.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the fixed prefix: tag, version, metadata length, two CRCs.
pub const PREFIX_LEN: usize = 30;
/// Largest metadata block we accept (and write): 16 MiB. The format allows
/// 2^64 bytes and Filespooler sets no limit; a real header is a few hundred
/// bytes. Params and env entries come from `prepare`'s own command line and
/// environment, which Linux caps at 6 MiB together (3/4 of the 8 MiB
/// `_STK_LIM`, whatever the stack rlimit), and are stored at most two bytes
/// per byte: 12 MiB at the very most. Anything larger is corruption or an
/// attack; refusing it before reading it keeps a reader's memory small.
pub const MAX_METADATA_LEN: u64 = 16 * 1024 * 1024;
/// Most memory a decoded header may take: 16 MiB, counted as the heap
/// blocks it holds: 24 bytes per param, env name or value in its vector
/// (48 per env pair), the bytes of each non-empty string, and 32 bytes of
/// allocator overhead per block. Real headers take a few hundred bytes;
/// this admits, say, 16 MiB of param bytes, 690,000 empty params or
/// 290,000 one-byte ones. Decoding charges every allocation to this budget
/// before making it and stops as soon as it would be exceeded, so metadata
/// of any length N costs at most N (the raw block) plus this much, however
/// it is arranged: 16 MiB of one-byte empty arrays would otherwise decode
/// to 384 MiB of empty vectors. `encode_with` refuses a header over either
/// limit, so no fspl writes a job that fspl cannot read.
pub const MAX_DECODED_SIZE: usize = 16 * 1024 * 1024;
/// Nesting limit for MessagePack arrays and maps, the metadata map included:
/// metadata that has this many open at once is refused. A real header
/// nests 6 deep (map, cmd_type map, Command map, env array, pair, byte
/// array); rmp-serde's default of 1024 let a crafted extension value
/// overflow a 2 MiB thread stack in a debug build (2-4 KiB a level), so a
/// file could abort the reader instead of being refused.
pub const MAX_METADATA_DEPTH: usize = 128;

/// A job's creation time, as stored: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ctime {
    pub secs: i64,
    pub nanos: u32,
}

impl Ctime {
    /// The current wall-clock time.
    pub fn now() -> Ctime {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Ctime {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            // A clock before 1970: store it as a negative offset, as the
            // reference's time library does.
            Err(e) => {
                let d = e.duration();
                let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Ctime { secs, nanos }
            }
        }
    }
}

/// What a job does when it is run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CmdType {
    /// Always succeeds; runs nothing.
    Nop,
    /// Always fails; runs nothing (a barrier in a queue).
    Fail,
    /// Runs the receiver's command with these extra params and env entries.
    Command(Command),
}

impl CmdType {
    /// The name used in logs and `--json` output.
    pub fn name(&self) -> &'static str {
        match self {
            CmdType::Nop => "NOP",
            CmdType::Fail => "Fail",
            CmdType::Command(_) => "Command",
        }
    }
}

/// The parameters and environment a Command job carries, as raw bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Command {
    pub params: Vec<Vec<u8>>,
    /// `(name, value)` with the `FSPL_SET_` prefix removed from the name.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A decoded job header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobHeader {
    pub seq: u64,
    pub ctime: Ctime,
    pub cmd_type: CmdType,
}

/// What `decode` found: the header, fspl's extension metadata (empty for
/// jobs made by Filespooler), and how many bytes of input the header used
/// (the payload starts at that offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub header: JobHeader,
    pub header_len: u64,
    pub ext: Extension,
}

/// The top-level metadata key under which fspl keeps its own fields.
/// Filespooler 1.2.4 ignores unknown keys, so it reads such jobs as if the
/// key were not there.
pub const EXTENSION_KEY: &str = "x-fspl";

/// Payload digest algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlg {
    Blake3,
    Sha256,
}

impl DigestAlg {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Blake3 => "blake3",
            DigestAlg::Sha256 => "sha256",
        }
    }
}

/// A payload digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    pub alg: DigestAlg,
    pub bytes: [u8; 32],
}

/// fspl's extension metadata (`x-fspl`): payload length and digest (so a
/// cut-short or altered payload is caught before the command runs), the
/// queue the job is meant for, and the signer's key and signature.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Extension {
    pub payload_len: Option<u64>,
    pub digest: Option<Digest>,
    /// Name of the queue the job is addressed to (`prepare --to`).
    pub to: Option<String>,
    /// The signer's ed25519 public key.
    pub signer: Option<[u8; 32]>,
    /// ed25519 signature over `signed_bytes`.
    pub signature: Option<[u8; 64]>,
}

impl Extension {
    pub fn is_empty(&self) -> bool {
        *self == Extension::default()
    }
}

// ---- wire representation (MessagePack through serde) ----

#[derive(Serialize, Deserialize)]
struct WireMeta {
    seq: u64,
    ctime: (i64, u32),
    cmd_type: WireCmd,
    #[serde(rename = "x-fspl", default, skip_serializing_if = "Option::is_none")]
    ext: Option<WireExt>,
}

#[derive(Serialize, Deserialize, Default)]
struct WireExt {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<Bin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Bin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<Bin>,
}

impl WireExt {
    fn from_ext(e: &Extension, with_signature: bool) -> Option<WireExt> {
        if e.is_empty() {
            return None;
        }
        Some(WireExt {
            len: e.payload_len,
            alg: e.digest.map(|d| Text(d.alg.name().to_string())),
            digest: e.digest.map(|d| Bin(d.bytes.to_vec())),
            to: e.to.clone().map(Text),
            key: e.signer.map(|k| Bin(k.to_vec())),
            sig: if with_signature {
                e.signature.map(|s| Bin(s.to_vec()))
            } else {
                None
            },
        })
    }

    fn into_ext(self) -> Result<Extension, String> {
        let digest = match (self.alg.as_ref().map(|a| a.0.as_str()), self.digest) {
            (None, None) => None,
            (Some(alg), Some(d)) => {
                let alg = match alg {
                    "blake3" => DigestAlg::Blake3,
                    "sha256" => DigestAlg::Sha256,
                    other => return Err(format!("unknown digest algorithm {other:?}")),
                };
                let bytes: [u8; 32] =
                    d.0.as_slice()
                        .try_into()
                        .map_err(|_| "digest is not 32 bytes".to_string())?;
                Some(Digest { alg, bytes })
            }
            _ => return Err("digest without algorithm, or algorithm without digest".into()),
        };
        let signer = match self.key {
            None => None,
            Some(k) => Some(
                <[u8; 32]>::try_from(k.0.as_slice())
                    .map_err(|_| "signer key is not 32 bytes".to_string())?,
            ),
        };
        let signature = match self.sig {
            None => None,
            Some(s) => Some(
                <[u8; 64]>::try_from(s.0.as_slice())
                    .map_err(|_| "signature is not 64 bytes".to_string())?,
            ),
        };
        Ok(Extension {
            payload_len: self.len,
            digest,
            to: self.to.map(|t| t.0),
            signer,
            signature,
        })
    }
}

#[derive(Serialize, Deserialize)]
enum WireCmd {
    #[serde(rename = "NOP")]
    Nop,
    Fail,
    /// Serialized as serde does any `Vec<u8>`: an array of small
    /// integers, exactly as Filespooler writes byte strings.
    Command {
        #[serde(deserialize_with = "crate::bytes::de_params")]
        params: Vec<Vec<u8>>,
        #[serde(deserialize_with = "crate::bytes::de_env")]
        env: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl JobHeader {
    /// The job's params (empty for NOP and Fail jobs).
    pub fn params(&self) -> &[Vec<u8>] {
        match &self.cmd_type {
            CmdType::Command(c) => &c.params,
            _ => &[],
        }
    }

    /// Encode the whole header (prefix and metadata), byte-identical to what
    /// Filespooler 1.2.4 writes for the same job.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with(&Extension::default())
    }

    /// Encode the header with fspl's extension metadata (none when `ext` is
    /// empty: then the bytes are exactly Filespooler's).
    pub fn encode_with(&self, ext: &Extension) -> Result<Vec<u8>, EncodeError> {
        let meta = self.metadata_bytes(ext, true)?;
        // Never write what no reader accepts.
        if meta.len() as u64 > MAX_METADATA_LEN {
            return Err(EncodeError::MetadataTooLarge(meta.len() as u64));
        }
        let decoded = self.decoded_size(ext);
        if decoded > MAX_DECODED_SIZE {
            return Err(EncodeError::DecodedTooLarge(decoded));
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + meta.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&meta).to_be_bytes());
        let prefix_crc = crc32fast::hash(&out[..26]);
        out.extend_from_slice(&prefix_crc.to_be_bytes());
        out.extend_from_slice(&meta);
        Ok(out)
    }

    /// The memory this header takes once decoded, as the decode budget
    /// counts it (see `MAX_DECODED_SIZE`).
    pub fn decoded_size(&self, ext: &Extension) -> usize {
        use std::mem::size_of;
        let block = |n: usize| {
            if n == 0 {
                0
            } else {
                n + crate::budget::BLOCK_OVERHEAD
            }
        };
        let cmd = match &self.cmd_type {
            CmdType::Command(c) => {
                block(c.params.len() * size_of::<Vec<u8>>())
                    + c.params.iter().map(|p| block(p.len())).sum::<usize>()
                    + block(c.env.len() * size_of::<(Vec<u8>, Vec<u8>)>())
                    + c.env
                        .iter()
                        .map(|(k, v)| block(k.len()) + block(v.len()))
                        .sum::<usize>()
            }
            _ => 0,
        };
        let ext = ext.to.as_ref().map_or(0, |t| block(t.len()))
            + ext
                .digest
                .map_or(0, |d| block(d.alg.name().len()) + block(d.bytes.len()))
            + ext.signer.map_or(0, |k| block(k.len()))
            + ext.signature.map_or(0, |s| block(s.len()));
        cmd + ext
    }

    /// What a signature covers: a fixed domain string, then the metadata as
    /// `encode_with` writes it but without the signature itself. It includes
    /// seq, ctime, command type, params, env, payload length and digest,
    /// destination queue and signer key. Verifiers rebuild it from the
    /// decoded fields, so any change to any of them breaks the signature.
    pub fn signed_bytes(&self, ext: &Extension) -> Result<Vec<u8>, EncodeError> {
        let mut out = b"fspl signed job v1\0".to_vec();
        out.extend_from_slice(&self.metadata_bytes(ext, false)?);
        Ok(out)
    }

    fn metadata_bytes(
        &self,
        ext: &Extension,
        with_signature: bool,
    ) -> Result<Vec<u8>, EncodeError> {
        let wire = WireMeta {
            seq: self.seq,
            ctime: (self.ctime.secs, self.ctime.nanos),
            cmd_type: match &self.cmd_type {
                CmdType::Nop => WireCmd::Nop,
                CmdType::Fail => WireCmd::Fail,
                CmdType::Command(c) => WireCmd::Command {
                    params: c.params.clone(),
                    env: c.env.clone(),
                },
            },
            ext: WireExt::from_ext(ext, with_signature),
        };
        rmp_serde::to_vec_named(&wire).map_err(EncodeError::Metadata)
    }

    /// Encode and write the header in one `write_all`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<(), EncodeError> {
        let bytes = self.encode()?;
        w.write_all(&bytes).map_err(EncodeError::Io)
    }
}

/// The checked fields of a 30-byte prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub metadata_len: u64,
    pub metadata_crc: u32,
}

/// Check the 30-byte prefix: magic, version, prefix CRC, metadata length bound.
/// `buf` may be shorter than 30 bytes (a truncated file).
pub fn parse_prefix(buf: &[u8]) -> Result<Prefix, HeaderError> {
    if buf.is_empty() {
        return Err(HeaderError::Empty);
    }
    // Check the magic on whatever we have, so that a short non-job file is
    // called "not a job" rather than "truncated".
    let tag_len = buf.len().min(MAGIC.len());
    if buf[..tag_len] != MAGIC[..tag_len] {
        return Err(HeaderError::BadMagic);
    }
    if buf.len() < PREFIX_LEN {
        return Err(HeaderError::TruncatedPrefix { got: buf.len() });
    }
    let version = u16::from_be_bytes([buf[12], buf[13]]);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let stored = u32::from_be_bytes([buf[26], buf[27], buf[28], buf[29]]);
    let computed = crc32fast::hash(&buf[..26]);
    if stored != computed {
        return Err(HeaderError::PrefixCrc { stored, computed });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&buf[14..22]);
    let metadata_len = u64::from_be_bytes(len);
    if metadata_len > MAX_METADATA_LEN {
        return Err(HeaderError::MetadataTooLarge(metadata_len));
    }
    let metadata_crc = u32::from_be_bytes([buf[22], buf[23], buf[24], buf[25]]);
    Ok(Prefix {
        metadata_len,
        metadata_crc,
    })
}

/// Check the metadata CRC and decode the MessagePack map.
pub fn parse_metadata(prefix: &Prefix, meta: &[u8]) -> Result<JobHeader, HeaderError> {
    parse_metadata_ext(prefix, meta).map(|(h, _)| h)
}

/// Like `parse_metadata`, also returning fspl's extension metadata.
pub fn parse_metadata_ext(
    prefix: &Prefix,
    meta: &[u8],
) -> Result<(JobHeader, Extension), HeaderError> {
    let computed = crc32fast::hash(meta);
    if computed != prefix.metadata_crc {
        return Err(HeaderError::MetadataCrc {
            stored: prefix.metadata_crc,
            computed,
        });
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(meta);
    de.set_max_depth(MAX_METADATA_DEPTH);
    let budget = crate::budget::enter(MAX_DECODED_SIZE);
    let wire = WireMeta::deserialize(&mut de).map_err(|e| {
        if budget.exceeded() {
            HeaderError::DecodedTooLarge
        } else {
            HeaderError::Metadata(e)
        }
    })?;
    drop(budget);
    let ext = match wire.ext {
        None => Extension::default(),
        Some(w) => w.into_ext().map_err(HeaderError::Extension)?,
    };
    let header = JobHeader {
        seq: wire.seq,
        ctime: Ctime {
            secs: wire.ctime.0,
            nanos: wire.ctime.1,
        },
        cmd_type: match wire.cmd_type {
            WireCmd::Nop => CmdType::Nop,
            WireCmd::Fail => CmdType::Fail,
            WireCmd::Command { params, env } => CmdType::Command(Command { params, env }),
        },
    };
    Ok((header, ext))
}

/// Decode a header from the start of `buf`. `buf` must hold the whole header
/// (more is fine: the rest is payload).
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let prefix = parse_prefix(&buf[..buf.len().min(PREFIX_LEN)])?;
    let end = PREFIX_LEN as u64 + prefix.metadata_len;
    let have = buf.len() as u64;
    if have < end {
        return Err(HeaderError::TruncatedMetadata {
            got: have - PREFIX_LEN as u64,
            expected: prefix.metadata_len,
        });
    }
    // `end` <= buf.len() here, so it fits in usize.
    let (header, ext) = parse_metadata_ext(&prefix, &buf[PREFIX_LEN..end as usize])?;
    Ok(Decoded {
        header,
        header_len: end,
        ext,
    })
}

/// Read exactly one header from a stream, consuming nothing beyond it, so the
/// stream is left at the first payload byte (it can be a pipe handed on to a
/// command afterwards).
pub fn read_header<R: Read + ?Sized>(r: &mut R) -> Result<Decoded, HeaderError> {
    let mut prefix_buf = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix_buf).map_err(HeaderError::Io)?;
    let prefix = parse_prefix(&prefix_buf[..got])?;
    // Grow the buffer as data arrives (doubling, never beyond the stored
    // length) instead of trusting the stored length with one allocation.
    let want = prefix.metadata_len as usize; // <= MAX_METADATA_LEN
    let mut meta: Vec<u8> = Vec::new();
    while meta.len() < want {
        if meta.len() == meta.capacity() {
            let more = meta.capacity().max(64 * 1024).min(want - meta.len());
            meta.reserve_exact(more);
        }
        let room = meta.capacity().min(want) - meta.len();
        let n = Read::take(&mut *r, room as u64)
            .read_to_end(&mut meta)
            .map_err(HeaderError::Io)?;
        if n == 0 {
            break;
        }
    }
    let got = meta.len() as u64;
    if got < prefix.metadata_len {
        return Err(HeaderError::TruncatedMetadata {
            got,
            expected: prefix.metadata_len,
        });
    }
    let (header, ext) = parse_metadata_ext(&prefix, &meta)?;
    Ok(Decoded {
        header,
        header_len: PREFIX_LEN as u64 + prefix.metadata_len,
        ext,
    })
}

/// Read until `buf` is full or the stream ends; returns how much was read.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
