//! Sequence number files: a sender's SEQFILE and a queue's `nextseq`. Both
//! hold one line with a decimal number; like Filespooler, readers take the
//! first line with surrounding whitespace removed.

use std::io::ErrorKind;
use std::path::Path;

use crate::durable::replace_file;
use crate::error::{QueueError, Result};

/// Parse the contents of a sequence file.
pub fn parse(path: &Path, content: &[u8]) -> Result<u64> {
    let first = content.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = String::from_utf8_lossy(first);
    let trimmed = text.trim();
    trimmed
        .parse::<u64>()
        .map_err(|source| QueueError::BadSeqNumber {
            path: path.to_path_buf(),
            content: trimmed.chars().take(40).collect(),
            source,
        })
}

/// Read a sequence file; `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<u64>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(path, &bytes).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(QueueError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Replace a sequence file durably (temporary file, fsync, rename, fsync dir).
pub fn write(path: &Path, value: u64) -> Result<()> {
    replace_file(path, format!("{value}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Option<u64> {
        parse(Path::new("x"), s).ok()
    }

    #[test]
    fn accepts_what_the_reference_accepts() {
        assert_eq!(p(b"7\n"), Some(7));
        assert_eq!(p(b"  7  \n"), Some(7));
        assert_eq!(p(b"7"), Some(7));
        assert_eq!(p(b"007\n"), Some(7));
        assert_eq!(p(b"+7\n"), Some(7));
        assert_eq!(p(b"7\r\n"), Some(7));
        assert_eq!(p(b"7\n8\n"), Some(7));
        assert_eq!(p(b"7\n\0\0"), Some(7));
        assert_eq!(p(b"18446744073709551615\n"), Some(u64::MAX));
    }

    #[test]
    fn refuses_what_the_reference_refuses() {
        for bad in [
            &b""[..],
            b"\n7\n",
            b"abc\n",
            b"7 8\n",
            b"-1\n",
            b"18446744073709551616\n",
        ] {
            assert_eq!(p(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
