use std::io;

use crate::header::{MAX_DECODED_SIZE, MAX_METADATA_LEN, PREFIX_LEN};

/// Why a job header could not be read. The messages name what is wrong; the
/// caller adds which file (or stdin) it was.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("empty file: no job header")]
    Empty,
    #[error("bad magic: not a Filespooler job file")]
    BadMagic,
    #[error("truncated header: only {got} of the {PREFIX_LEN} prefix bytes")]
    TruncatedPrefix { got: usize },
    #[error("unsupported format version {0} (this fspl reads version 1)")]
    UnsupportedVersion(u16),
    #[error("CRC-32 mismatch on file prefix (stored {stored:08x}, computed {computed:08x})")]
    PrefixCrc { stored: u32, computed: u32 },
    #[error("metadata length {0} exceeds the limit of {MAX_METADATA_LEN} bytes")]
    MetadataTooLarge(u64),
    #[error("truncated header: only {got} of {expected} metadata bytes")]
    TruncatedMetadata { got: u64, expected: u64 },
    #[error("CRC-32 mismatch on metadata (stored {stored:08x}, computed {computed:08x})")]
    MetadataCrc { stored: u32, computed: u32 },
    #[error("invalid metadata")]
    Metadata(#[source] rmp_serde::decode::Error),
    #[error("metadata would take more than {MAX_DECODED_SIZE} bytes of memory decoded")]
    DecodedTooLarge,
    #[error("invalid fspl extension metadata (x-fspl): {0}")]
    Extension(String),
    #[error("encrypted (age): give --identity to read it")]
    Encrypted,
    #[error("cannot decrypt (age): {0}")]
    Decrypt(String),
    #[error("read error")]
    Io(#[source] io::Error),
}

impl HeaderError {
    /// True when the input simply ended early (a partial file), as opposed to
    /// holding wrong bytes.
    pub fn is_truncation(&self) -> bool {
        matches!(
            self,
            HeaderError::Empty
                | HeaderError::TruncatedPrefix { .. }
                | HeaderError::TruncatedMetadata { .. }
        )
    }
}

/// Why a header could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode job metadata")]
    Metadata(#[source] rmp_serde::encode::Error),
    #[error(
        "job metadata would be {0} bytes, more than the {MAX_METADATA_LEN} bytes readers accept (params and environment too large)"
    )]
    MetadataTooLarge(u64),
    #[error(
        "job metadata would take {0} bytes of memory decoded, more than the {MAX_DECODED_SIZE} bytes readers allow (too many params or environment entries)"
    )]
    DecodedTooLarge(usize),
    #[error("cannot write job header")]
    Io(#[source] io::Error),
}
