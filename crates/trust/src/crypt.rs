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
    #[error("cannot encrypt")]
    Encrypt(#[source] age::EncryptError),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
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

/// One recipient.
pub fn parse_recipient(s: &str) -> Result<Box<dyn age::Recipient + Send>, CryptError> {
    let t = s.trim();
    if t.starts_with("age1") {
        return t
            .parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|_| CryptError::Recipient(t.to_string()));
    }
    if t.starts_with("ssh-ed25519 ") {
        return t
            .parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|_| CryptError::Recipient(t.to_string()));
    }
    Err(CryptError::Recipient(t.to_string()))
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

/// Decrypt an age stream (binary or armored) with any of `identities`.
pub fn decrypt<'a, R: Read + Send + 'a>(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    r: R,
) -> Result<Box<dyn Read + Send + 'a>, CryptError> {
    let armored = age::armor::ArmoredReader::new(BufReader::new(r));
    let dec = age::Decryptor::new(armored).map_err(|e| CryptError::Decrypt(e.to_string()))?;
    let reader = dec
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    Ok(Box::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

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
}
