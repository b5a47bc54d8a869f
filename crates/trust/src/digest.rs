//! Payload length and digest.

use std::io::{self, ErrorKind, Read};

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
}
