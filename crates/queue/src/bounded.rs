//! Reading a payload no further than its header says.
//!
//! A compressed or encrypted job can expand without bound: a 66 KB zstd
//! file decodes to a gigabyte of zeros. When the header states the
//! payload's length, every reader of the payload goes through [`Bounded`],
//! which takes at most that many bytes plus one from the decoder: the one
//! extra byte proves the payload is too long, and nothing after it is
//! decoded.

use std::io::{self, ErrorKind, Read};

/// The error a [`Bounded`] reader returns when the payload goes on past the
/// length its header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload is longer than the {declared} bytes the header says (reading stopped there)")]
pub struct PayloadTooLong {
    pub declared: u64,
}

/// `Some` when `e` (or what it wraps) says a payload was longer than its
/// header declared.
pub fn too_long(e: &io::Error) -> Option<PayloadTooLong> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<PayloadTooLong>() {
            return Some(*t);
        }
        if let Some(io) = c.downcast_ref::<io::Error>()
            && let Some(t) = too_long(io)
        {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// A payload reader that yields at most `declared` bytes, then either ends
/// (the source ends there too) or fails with [`PayloadTooLong`]. It never
/// reads more than `declared + 1` bytes from its source. Without a declared
/// length it passes everything through.
pub struct Bounded<R> {
    inner: R,
    declared: Option<u64>,
    read: u64,
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, declared: Option<u64>) -> Bounded<R> {
        Bounded {
            inner,
            declared,
            read: 0,
        }
    }

    /// Bytes passed on so far.
    pub fn count(&self) -> u64 {
        self.read
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(declared) = self.declared else {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            return Ok(n);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let left = declared.saturating_sub(self.read);
        if left == 0 {
            // One byte more tells a payload that ends here from one that
            // goes on; nothing after it is asked of the decoder.
            let mut probe = [0u8; 1];
            loop {
                return match self.inner.read(&mut probe) {
                    Ok(0) => Ok(0),
                    Ok(_) => Err(io::Error::new(
                        ErrorKind::InvalidData,
                        PayloadTooLong { declared },
                    )),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            }
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what is taken from it: an endless source of zeros.
    struct Endless(u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn an_endless_source_is_read_only_one_byte_past_the_declared_length() {
        for declared in [0u64, 1, 6, 65_536, 1_000_003] {
            let mut b = Bounded::new(Endless(0), Some(declared));
            let e = io::copy(&mut b, &mut io::sink()).unwrap_err();
            assert_eq!(too_long(&e), Some(PayloadTooLong { declared }), "{e}");
            assert!(e.to_string().contains("the header says"), "{e}");
            assert_eq!(b.count(), declared);
            assert_eq!(b.into_inner().0, declared + 1, "read past one byte more");
        }
    }

    #[test]
    fn exact_and_short_payloads_pass_through() {
        let data = vec![7u8; 300_000];
        for (declared, have) in [(300_000u64, 300_000usize), (300_000, 10), (0, 0)] {
            let mut b = Bounded::new(&data[..have], Some(declared));
            let mut out = Vec::new();
            b.read_to_end(&mut out).unwrap();
            assert_eq!(out.len(), have);
        }
        let mut b = Bounded::new(&data[..], None);
        assert_eq!(io::copy(&mut b, &mut io::sink()).unwrap(), 300_000);
    }

    #[test]
    fn too_long_is_found_inside_wrapping_errors() {
        let inner = io::Error::new(ErrorKind::InvalidData, PayloadTooLong { declared: 6 });
        let outer = io::Error::other(inner);
        assert_eq!(too_long(&outer), Some(PayloadTooLong { declared: 6 }));
        assert_eq!(too_long(&io::Error::other("x")), None);
    }
}
