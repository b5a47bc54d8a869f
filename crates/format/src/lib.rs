//! The Filespooler v1 job file format: a 30-byte prefix, MessagePack metadata
//! and a raw payload. This crate encodes and decodes headers and builds the
//! environment a job runs with; it knows nothing of queues or files.
//!
//! ```
//! use fspl_format::{CmdType, Ctime, JobHeader};
//! let h = JobHeader { seq: 7, ctime: Ctime { secs: 1, nanos: 2 }, cmd_type: CmdType::Nop };
//! let bytes = h.encode().unwrap();
//! let back = fspl_format::decode(&bytes).unwrap();
//! assert_eq!(back.header, h);
//! assert_eq!(back.header_len, bytes.len() as u64);
//! ```

mod budget;
mod bytes;
mod env;
mod error;
mod header;

pub use env::{EnvVar, JobLocation, SET_PREFIX, format_env, rfc3339_local, rfc3339_utc};
pub use error::{EncodeError, HeaderError};
pub use header::{
    CmdType, Command, Ctime, Decoded, Digest, DigestAlg, EXTENSION_KEY, Extension, FORMAT_VERSION,
    JobHeader, MAGIC, MAX_DECODED_SIZE, MAX_METADATA_DEPTH, MAX_METADATA_LEN, PREFIX_LEN, Prefix,
    decode, parse_metadata, parse_metadata_ext, parse_prefix, read_full, read_header,
};
