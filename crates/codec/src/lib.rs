//! Whole-file compression of job files.
//!
//! A stored job file may be compressed as a whole (`zstd job.fspl`,
//! `fspl prepare --compress zstd`). Readers recognise the format by its
//! magic bytes and decode in-process, streaming, in bounded memory.

use std::fmt;
use std::io::{self, Read, Write};

/// How much of a stream we look at to tell what it is. Every job file is
/// longer than this (30-byte prefix plus metadata), so reading this much
/// never reads past a plain job's header.
pub const MAGIC_LEN: usize = 32;

/// Largest decoder window/dictionary we accept, so a hostile file cannot
/// make us allocate without bound (zstd: 2^27 = 128 MiB, the zstd CLI's own
/// default limit; xz: the same budget).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const XZ_MEMLIMIT: u64 = 1 << 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Zstd,
    Gzip,
    Xz,
    Lz4,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::Zstd,
        Compression::Gzip,
        Compression::Xz,
        Compression::Lz4,
    ];

    /// Recognise a compressed stream by its first bytes (up to `MAGIC_LEN`).
    pub fn detect(prefix: &[u8]) -> Option<Compression> {
        if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if prefix.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if prefix.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
            Some(Compression::Lz4)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The decompressing command a Filespooler user would pass with `-d`.
    pub fn reference_decoder(self) -> &'static str {
        match self {
            Compression::Zstd => "zstdcat",
            Compression::Gzip => "zcat",
            Compression::Xz => "xzcat",
            Compression::Lz4 => "lz4cat",
        }
    }

    /// A streaming decoder over `r`. Concatenated members/frames are decoded
    /// as one stream, as the command-line tools do.
    pub fn decoder<'a, R: Read + Send + 'a>(self, r: R) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(r)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Box::new(d)
            }
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
            }
            Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(r)),
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--compress` argument: `zstd[:LEVEL]`, `gzip[:LEVEL]`, `xz[:LEVEL]`, `lz4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressSpec {
    pub kind: Compression,
    pub level: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown compression {0:?} (expected zstd, gzip, xz or lz4, optionally with :LEVEL)")]
    Unknown(String),
    #[error("invalid level {level:?} for {kind}: expected {range}")]
    Level {
        kind: Compression,
        level: String,
        range: &'static str,
    },
}

impl std::str::FromStr for CompressSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<CompressSpec, SpecError> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "zstd" | "zst" => Compression::Zstd,
            "gzip" | "gz" => Compression::Gzip,
            "xz" => Compression::Xz,
            "lz4" => Compression::Lz4,
            _ => return Err(SpecError::Unknown(s.to_string())),
        };
        let (lo, hi, range) = match kind {
            Compression::Zstd => (1, 22, "1-22"),
            Compression::Gzip => (0, 9, "0-9"),
            Compression::Xz => (0, 9, "0-9"),
            Compression::Lz4 => (0, 0, "no level (lz4 has one)"),
        };
        let level = match level {
            None => None,
            Some(l) => match l.parse::<i32>() {
                Ok(v) if (lo..=hi).contains(&v) && kind != Compression::Lz4 => Some(v),
                _ => {
                    return Err(SpecError::Level {
                        kind,
                        level: l.to_string(),
                        range,
                    });
                }
            },
        };
        Ok(CompressSpec { kind, level })
    }
}

/// A compressing writer; `finish` writes the trailer (checksum) and must be
/// called, or the output is truncated.
pub trait FinishWrite: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct Zstd<W: Write>(zstd::stream::write::Encoder<'static, W>);
struct Gzip<W: Write>(flate2::write::GzEncoder<W>);
struct Xz<W: Write>(liblzma::write::XzEncoder<W>);
struct Lz4<W: Write>(lz4_flex::frame::FrameEncoder<W>);

macro_rules! forward_write {
    ($t:ident) => {
        impl<W: Write + Send> Write for $t<W> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.flush()
            }
        }
    };
}
forward_write!(Zstd);
forward_write!(Gzip);
forward_write!(Xz);
forward_write!(Lz4);

impl<W: Write + Send> FinishWrite for Zstd<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}
impl<W: Write + Send> FinishWrite for Gzip<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}
impl<W: Write + Send> FinishWrite for Xz<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}
impl<W: Write + Send> FinishWrite for Lz4<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish().map_err(io::Error::other)?.flush()
    }
}

impl CompressSpec {
    /// A streaming encoder writing to `w`, with the format's integrity check.
    pub fn encoder<W: Write + Send + 'static>(&self, w: W) -> io::Result<Box<dyn FinishWrite>> {
        Ok(match self.kind {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, self.level.unwrap_or(3))?;
                e.include_checksum(true)?;
                Box::new(Zstd(e))
            }
            Compression::Gzip => Box::new(Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(self.level.unwrap_or(6) as u32),
            ))),
            Compression::Xz => Box::new(Xz(liblzma::write::XzEncoder::new(
                w,
                self.level.unwrap_or(6) as u32,
            ))),
            Compression::Lz4 => {
                let mut info = lz4_flex::frame::FrameInfo::new();
                info.content_checksum = true;
                Box::new(Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, w)))
            }
        })
    }
}

/// A reader that has had its first bytes looked at: they are read again
/// before the rest of the stream.
pub struct Peeked<R> {
    head: [u8; MAGIC_LEN],
    pos: usize,
    len: usize,
    inner: R,
}

impl<R: Read> Peeked<R> {
    /// Read up to `MAGIC_LEN` bytes from `inner` (fewer only at end of stream).
    pub fn new(mut inner: R) -> io::Result<Peeked<R>> {
        let mut head = [0u8; MAGIC_LEN];
        let mut len = 0;
        while len < MAGIC_LEN {
            match inner.read(&mut head[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Peeked {
            head,
            pos: 0,
            len,
            inner,
        })
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..self.len]
    }

    pub fn compression(&self) -> Option<Compression> {
        Compression::detect(self.head())
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x3f)
            .collect()
    }

    fn roundtrip(spec: &str) -> Vec<u8> {
        let spec: CompressSpec = spec.parse().unwrap();
        let data = sample();
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut e = spec.encoder(Shared(buf.clone())).unwrap();
        e.write_all(&data).unwrap();
        e.finish().unwrap();
        let compressed = buf.lock().unwrap().clone();
        assert_eq!(Compression::detect(&compressed), Some(spec.kind));
        let mut out = Vec::new();
        spec.kind
            .decoder(&compressed[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data, "{spec:?}");
        compressed
    }

    #[test]
    fn every_format_round_trips_and_is_detected() {
        for s in ["zstd", "zstd:19", "gzip", "gzip:1", "xz", "xz:0", "lz4"] {
            roundtrip(s);
        }
    }

    #[test]
    fn truncation_and_corruption_are_errors_not_short_reads() {
        for s in ["zstd", "gzip", "xz", "lz4"] {
            let c = roundtrip(s);
            let kind = Compression::detect(&c).unwrap();
            for cut in [c.len() / 3, c.len() / 2, c.len() - 1] {
                let mut out = Vec::new();
                let r = kind.decoder(&c[..cut]).unwrap().read_to_end(&mut out);
                assert!(
                    r.is_err(),
                    "{s}: truncation at {cut} of {} read as {} bytes",
                    c.len(),
                    out.len()
                );
            }
            let mut bad = c.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x10;
            let mut out = Vec::new();
            assert!(
                kind.decoder(&bad[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .is_err(),
                "{s}: flip undetected"
            );
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!("zstd:0".parse::<CompressSpec>().is_err());
        assert!("zstd:23".parse::<CompressSpec>().is_err());
        assert!("lz4:1".parse::<CompressSpec>().is_err());
        assert!("brotli".parse::<CompressSpec>().is_err());
        assert_eq!(
            "ZSTD:19".parse::<CompressSpec>().unwrap(),
            CompressSpec {
                kind: Compression::Zstd,
                level: Some(19)
            }
        );
    }

    #[test]
    fn peeked_replays_the_head() {
        let data = b"*FILESPOOLER and the rest";
        let mut p = Peeked::new(&data[..]).unwrap();
        assert_eq!(p.head(), b"*FILESPOOLER and the rest");
        assert_eq!(p.compression(), None);
        let mut all = Vec::new();
        p.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        let short = Peeked::new(&b"ab"[..]).unwrap();
        assert_eq!(short.head(), b"ab");
    }
}
