//! age encryption of whole job files. Recipients are `age1...` X25519 keys
//! or `ssh-ed25519` public key lines (so an fspl or ssh key pair can be
//! used); identities are age identity files or OpenSSH private keys.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("invalid recipient {0:?}: expected an age1... key or an ssh-ed25519 public key line")]
    Recipient(String),
    #[error(
        "recipient {0:?} is a weak (small-order) key: anyone could decrypt what is encrypted to it; refusing it"
    )]
    WeakRecipient(String),
    #[error("cannot read identity file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: permissions {mode:04o} are too open: an identity must not be accessible by group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: not an age identity file or unencrypted OpenSSH private key", path.display())]
    Identity { path: PathBuf },
    #[error(
        "{}: an OpenSSH {algorithm} key: only ed25519 keys can decrypt (RSA and ECDSA keys are not supported)",
        path.display()
    )]
    IdentityAlgorithm { path: PathBuf, algorithm: String },
    #[error("cannot encrypt")]
    Encrypt(#[source] age::EncryptError),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("invalid age header: {0}")]
    Header(String),
}

/// Whether a stream starts like an age file (binary or armored); needs at
/// least 16 bytes of it to tell.
pub fn is_age(prefix: &[u8]) -> bool {
    const BINARY: &[u8] = b"age-encryption.org/v1\n";
    const ARMORED: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
    let starts = |magic: &[u8]| {
        let n = prefix.len().min(magic.len());
        n >= 16 && prefix[..n] == magic[..n]
    };
    starts(BINARY) || starts(ARMORED)
}

/// Identities to decrypt with (from one or more `--identity` files).
pub struct Identities(pub Vec<Box<dyn age::Identity + Send + Sync>>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({})", self.0.len())
    }
}

impl Identities {
    /// Load every file's identities.
    pub fn load(paths: &[PathBuf]) -> Result<Identities, CryptError> {
        let mut all = Vec::new();
        for p in paths {
            all.extend(load_identities(p)?);
        }
        Ok(Identities(all))
    }
}

/// One recipient. A weak (small-order) key is refused: the file key
/// wrapped for it could be unwrapped by anyone (and age itself panics on
/// an `age1` key of small order).
pub fn parse_recipient(s: &str) -> Result<Box<dyn age::Recipient + Send>, CryptError> {
    let t = s.trim();
    if t.starts_with("age1") {
        let r = t
            .parse::<age::x25519::Recipient>()
            .map_err(|_| CryptError::Recipient(t.to_string()))?;
        if age1_is_weak(t) {
            return Err(CryptError::WeakRecipient(t.to_string()));
        }
        return Ok(Box::new(r));
    }
    if t.starts_with("ssh-ed25519 ") {
        if let Err(crate::KeyError::WeakPublic) = crate::PublicKey::parse(t) {
            return Err(CryptError::WeakRecipient(t.to_string()));
        }
        return t
            .parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|_| CryptError::Recipient(t.to_string()));
    }
    Err(CryptError::Recipient(t.to_string()))
}

/// Whether an `age1...` recipient (already parsed by age, so well formed)
/// is an X25519 point of small order: a clamped scalar (a multiple of the
/// cofactor 8) times it is then the all-zero point.
fn age1_is_weak(t: &str) -> bool {
    use bech32::FromBase32;
    let Ok((_, data, _)) = bech32::decode(t) else {
        return false;
    };
    let Ok(bytes) = Vec::<u8>::from_base32(&data) else {
        return false;
    };
    let Ok(u) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    curve25519_dalek::montgomery::MontgomeryPoint(u)
        .mul_clamped([0x5a; 32])
        .to_bytes()
        == [0u8; 32]
}

/// Identities from a file: an age identity file (`AGE-SECRET-KEY-1...`
/// lines) or an unencrypted OpenSSH private key. Refused when group or
/// others can read it.
pub fn load_identities(
    path: &Path,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptError> {
    let io_err = |source| CryptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(io_err)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let data = std::fs::read(path).map_err(io_err)?;
    if data.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----") {
        // Only ed25519: age would accept an RSA key too, and then run an
        // RSA decryption (not constant-time in the rsa crate: Marvin,
        // RUSTSEC-2023-0071) on every ssh-rsa stanza a job carries, although
        // no fspl sender encrypts to RSA (recipients are ed25519 or age1).
        let algorithm = std::str::from_utf8(&data)
            .ok()
            .and_then(|t| ssh_key::PrivateKey::from_openssh(t).ok())
            .map(|k| k.algorithm());
        match algorithm {
            Some(ssh_key::Algorithm::Ed25519) => {}
            Some(other) => {
                return Err(CryptError::IdentityAlgorithm {
                    path: path.to_path_buf(),
                    algorithm: other.as_str().to_string(),
                });
            }
            None => {
                return Err(CryptError::Identity {
                    path: path.to_path_buf(),
                });
            }
        }
        let id = age::ssh::Identity::from_buffer(&data[..], Some(path.display().to_string()))
            .map_err(|_| CryptError::Identity {
                path: path.to_path_buf(),
            })?;
        if !matches!(id, age::ssh::Identity::Unencrypted(_)) {
            return Err(CryptError::Identity {
                path: path.to_path_buf(),
            });
        }
        return Ok(vec![Box::new(id)]);
    }
    // An age identity file: AGE-SECRET-KEY-1... lines, # comments.
    let text = String::from_utf8(data).map_err(|_| CryptError::Identity {
        path: path.to_path_buf(),
    })?;
    let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let id = line
            .parse::<age::x25519::Identity>()
            .map_err(|_| CryptError::Identity {
                path: path.to_path_buf(),
            })?;
        ids.push(Box::new(id));
    }
    if ids.is_empty() {
        return Err(CryptError::Identity {
            path: path.to_path_buf(),
        });
    }
    Ok(ids)
}

/// An encrypting writer; `finish` must be called to write the last chunk.
pub struct Encrypting<W: Write> {
    inner: age::stream::StreamWriter<W>,
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Encrypting<W> {
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()
    }
}

pub fn encrypt<W: Write>(
    recipients: &[Box<dyn age::Recipient + Send>],
    w: W,
) -> Result<Encrypting<W>, CryptError> {
    let enc = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(CryptError::Encrypt)?;
    let inner = enc
        .wrap_output(w)
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    Ok(Encrypting { inner })
}

pub use crate::agefile::{BINARY_MAGIC, DecryptedFile, decrypt_file};

/// Decrypt an age stream (binary or armored) with any of `identities`.
pub fn decrypt<'a, R: Read + Send + 'a>(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    r: R,
) -> Result<Box<dyn Read + Send + 'a>, CryptError> {
    let armored = age::armor::ArmoredReader::new(BufReader::new(r));
    let dec = age::Decryptor::new(HeaderLimit::new(armored))
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    let reader = dec
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    Ok(Box::new(reader))
}

/// Check that an age stream (binary or armored) starts with a well-formed
/// header, without decrypting anything (the header's MAC needs the file
/// key, so it is not checked). Reads the header and at most a buffer's
/// worth beyond it.
pub fn check_header<R: Read>(r: R) -> Result<(), CryptError> {
    let armored = age::armor::ArmoredReader::new(BufReader::new(r));
    age::Decryptor::new(HeaderLimit::new(armored))
        .map(|_| ())
        .map_err(|e| CryptError::Header(e.to_string()))
}

/// Longest age header we read (about 70 recipients). age re-parses its
/// header from the start every time it needs more bytes, so reading time
/// grows with the square of the header's length: a crafted file with a
/// megabyte-long header would take minutes, one of a few megabytes hours.
pub const MAX_AGE_HEADER: u64 = 8 * 1024;

/// Passes an age stream through, failing once more than `MAX_AGE_HEADER`
/// bytes went by without the header's last line (`--- MAC`) ending.
pub(crate) struct HeaderLimit<R> {
    inner: R,
    seen: u64,
    /// The last four bytes, to spot "\n---".
    window: u32,
    in_mac_line: bool,
    done: bool,
}

impl<R> HeaderLimit<R> {
    pub(crate) fn new(inner: R) -> HeaderLimit<R> {
        HeaderLimit {
            inner,
            seen: 0,
            window: 0,
            in_mac_line: false,
            done: false,
        }
    }
}

impl<R: Read> Read for HeaderLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return self.inner.read(buf);
        }
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            self.seen += 1;
            self.window = (self.window << 8) | u32::from(b);
            if self.in_mac_line && b == b'\n' {
                self.done = true;
                return Ok(n);
            }
            if self.window == u32::from_be_bytes(*b"\n---") {
                self.in_mac_line = true;
            }
        }
        if self.seen > MAX_AGE_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("age header longer than {MAX_AGE_HEADER} bytes"),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    /// Before: an ssh-rsa private key was accepted as an identity, so every
    /// job carrying an ssh-rsa stanza ran an RSA decryption with it (the
    /// rsa crate's is not constant-time: RUSTSEC-2023-0071).
    #[test]
    fn an_ssh_rsa_identity_is_refused_so_no_rsa_decryption_ever_runs() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_rsa");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("run ssh-keygen");
        assert!(st.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_identities(&key)
            .err()
            .expect("an RSA identity is refused");
        assert!(
            matches!(&e, CryptError::IdentityAlgorithm { algorithm, .. } if algorithm == "ssh-rsa"),
            "{e}"
        );
        assert!(
            e.to_string().contains("only ed25519 keys can decrypt"),
            "{e}"
        );
        // An ed25519 key made the same way still loads.
        let ed = dir.path().join("id_ed25519");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&ed)
            .status()
            .expect("run ssh-keygen");
        assert!(st.success());
        std::fs::set_permissions(&ed, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_identities(&ed).unwrap().len(), 1);
    }

    #[test]
    fn weak_recipients_are_refused_and_good_ones_kept() {
        use bech32::ToBase32;
        // Small-order X25519 u-coordinates: 0, 1, p-1, and the two points
        // of order 8.
        let weak = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        ];
        for h in weak {
            let bytes: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let r = bech32::encode("age", bytes.to_base32(), bech32::Variant::Bech32).unwrap();
            let e = parse_recipient(&r)
                .err()
                .expect("a weak age1 key is refused");
            assert!(matches!(e, CryptError::WeakRecipient(_)), "{r}: {e}");
        }
        let mut id = [0u8; 32];
        id[0] = 1;
        let line = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(id))
            .to_openssh()
            .unwrap();
        assert!(matches!(
            parse_recipient(&line).err(),
            Some(CryptError::WeakRecipient(_))
        ));
        let good = age::x25519::Identity::generate().to_public().to_string();
        assert!(parse_recipient(&good).is_ok());
        let k = SecretKey::generate("");
        assert!(parse_recipient(&k.public().to_openssh("c")).is_ok());
    }

    #[test]
    fn an_fspl_key_pair_encrypts_and_decrypts_and_detection_works() {
        let dir = tempfile::tempdir().unwrap();
        let kp = dir.path().join("k");
        let k = SecretKey::generate("c");
        let pubp = k.write_pair(&kp).unwrap();
        let recipient = parse_recipient(&std::fs::read_to_string(&pubp).unwrap()).unwrap();
        let x = age::x25519::Identity::generate();
        let r2 = parse_recipient(&x.to_public().to_string()).unwrap();
        let mut out = Vec::new();
        let mut e = encrypt(&[recipient, r2], &mut out).unwrap();
        e.write_all(b"secret job").unwrap();
        e.finish().unwrap();
        assert!(is_age(&out[..32]));
        assert!(!is_age(b"*FILESPOOLER\0\x01 and so on..."));
        assert!(!is_age(b"-----BEGIN PGP MESSAGE-----"));
        let ids = load_identities(&kp).unwrap();
        let mut plain = Vec::new();
        decrypt(&ids, &out[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"secret job");
        // Truncated ciphertext is an error, not a short read.
        let mut short = Vec::new();
        let cut = decrypt(&ids, &out[..out.len() - 5]).map(|mut r| r.read_to_end(&mut short));
        assert!(matches!(cut, Err(_) | Ok(Err(_))));
        // A stranger's identity cannot decrypt.
        let other = dir.path().join("o");
        SecretKey::generate("").write_pair(&other).unwrap();
        assert!(decrypt(&load_identities(&other).unwrap(), &out[..]).is_err());
    }

    type Ids = Vec<Box<dyn age::Identity + Send + Sync>>;
    type Recipients = Vec<Box<dyn age::Recipient + Send>>;

    fn x25519_ids(n: usize) -> (Ids, Recipients) {
        let ids: Vec<age::x25519::Identity> =
            (0..n).map(|_| age::x25519::Identity::generate()).collect();
        let recipients = ids
            .iter()
            .map(|i| parse_recipient(&i.to_public().to_string()).unwrap())
            .collect();
        let ids = ids
            .into_iter()
            .map(|i| Box::new(i) as Box<dyn age::Identity + Send + Sync>)
            .collect();
        (ids, recipients)
    }

    #[test]
    fn regression_a_long_age_header_took_quadratic_time() {
        // Found by the fuzzer: a 55 KB header line took 48 s in a debug
        // build (age re-parses the header for every byte it needs).
        let (ids, recipients) = x25519_ids(1);
        let mut out = Vec::new();
        let mut e = encrypt(&recipients, &mut out).unwrap();
        e.write_all(b"job").unwrap();
        e.finish().unwrap();
        let mut hostile = out[..60].to_vec();
        hostile.extend(std::iter::repeat_n(b'a', 1 << 20));
        let t0 = std::time::Instant::now();
        let err = match decrypt(&ids, &hostile[..]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a 1 MiB header decrypted"),
        };
        assert!(err.contains("age header longer than 8192 bytes"), "{err}");
        // Generous: it is a few milliseconds; the bug took hours.
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
        // Many recipients (a header of about 6 KB) still decrypt.
        let (ids, recipients) = x25519_ids(60);
        let mut out = Vec::new();
        let mut e = encrypt(&recipients, &mut out).unwrap();
        e.write_all(b"job").unwrap();
        e.finish().unwrap();
        let mut plain = Vec::new();
        decrypt(&ids[59..], &out[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"job");
    }

    #[test]
    fn check_header_accepts_an_age_header_and_refuses_a_broken_one() {
        let (_, recipients) = x25519_ids(2);
        let mut out = Vec::new();
        let mut e = encrypt(&recipients, &mut out).unwrap();
        e.write_all(b"job").unwrap();
        e.finish().unwrap();
        check_header(&out[..]).unwrap();
        // Cut inside the header, a changed stanza line, garbage, a header
        // that never ends.
        let header_end = out.windows(4).position(|w| w == b"\n---").unwrap();
        let mut changed = out.clone();
        changed[25] = b'\n';
        let mut endless = out[..30].to_vec();
        endless.extend(std::iter::repeat_n(b'a', 100_000));
        for (what, bad) in [
            ("cut", &out[..header_end - 3]),
            ("changed", &changed[..]),
            ("garbage", &b"age-encryption.org/v1\nnonsense\n"[..]),
            ("endless", &endless[..]),
        ] {
            let e = check_header(bad).unwrap_err();
            assert!(matches!(e, CryptError::Header(_)), "{what}: {e}");
        }
    }
}
