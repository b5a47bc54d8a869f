//! ed25519 keys. `fspl keygen` writes OpenSSH-format key pairs, so keys made
//! by `ssh-keygen -t ed25519` work the same way, and the public key line of
//! either can go into a trust file or be an age recipient. Base58 keys as
//! remaphore uses them (32-byte public key; 64-byte secret = seed followed by
//! public key) are read too.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ssh_key::private::{Ed25519Keypair, Ed25519PrivateKey};
use ssh_key::public::Ed25519PublicKey;
use ssh_key::{HashAlg, LineEnding};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: permissions {mode:04o} are too open: a secret key must not be accessible by group or others (chmod 600 {})",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{}: passphrase-protected keys are not supported; remove the passphrase (ssh-keygen -p -N '' -f KEY) or use a key made by `fspl keygen`", path.display())]
    Encrypted { path: PathBuf },
    #[error("{}: not an ed25519 key (found {found})", path.display())]
    NotEd25519 { path: PathBuf, found: String },
    #[error("{}: not a secret key fspl can read (expected an OpenSSH ed25519 private key or a base58 ed25519 secret)", path.display())]
    UnreadableSecret { path: PathBuf },
    #[error(
        "not a public key: {reason} (expected \"ssh-ed25519 AAAA...\" or a base58 ed25519 key)"
    )]
    BadPublic { reason: String },
    #[error(
        "weak ed25519 key: a small-order point, for which signatures can be forged without any secret key; refusing it"
    )]
    WeakPublic,
    #[error("{}: the key's public half is a weak (small-order) ed25519 key; refusing it", path.display())]
    WeakSecret { path: PathBuf },
    #[error("{} already exists; not overwriting a key", path.display())]
    Exists { path: PathBuf },
    #[error("cannot encode the key")]
    Encode(#[source] ssh_key::Error),
}

/// A secret signing key.
pub struct SecretKey {
    signing: SigningKey,
    comment: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().fingerprint())
    }
}

/// A public key that verifies signatures.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl SecretKey {
    pub fn generate(comment: impl Into<String>) -> SecretKey {
        SecretKey {
            signing: SigningKey::generate(&mut rand_core::OsRng),
            comment: comment.into(),
        }
    }

    /// From a 32-byte seed (tests, remaphore identities).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey {
            signing: SigningKey::from_bytes(&seed),
            comment: String::new(),
        }
    }

    /// Load a secret key, refusing files that group or others can access
    /// (as ssh does).
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
            action: "read secret key",
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            action: "read secret key",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// A key whose public half is weak is refused. (It cannot happen for a
    /// public half derived from a seed, and files that carry a public half
    /// are checked against the seed; this keeps the promise explicit.)
    fn checked(self, path: &Path) -> Result<SecretKey, KeyError> {
        if self.signing.verifying_key().is_weak() {
            return Err(KeyError::WeakSecret {
                path: path.to_path_buf(),
            });
        }
        Ok(self)
    }

    fn parse(path: &Path, text: &str) -> Result<SecretKey, KeyError> {
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            let key = ssh_key::PrivateKey::from_openssh(trimmed).map_err(|_| {
                KeyError::UnreadableSecret {
                    path: path.to_path_buf(),
                }
            })?;
            if key.is_encrypted() {
                return Err(KeyError::Encrypted {
                    path: path.to_path_buf(),
                });
            }
            let Some(pair) = key.key_data().ed25519() else {
                return Err(KeyError::NotEd25519 {
                    path: path.to_path_buf(),
                    found: key.algorithm().to_string(),
                });
            };
            // ssh-key checks the file's public half against the seed.
            return SecretKey {
                signing: SigningKey::from_bytes(&pair.private.to_bytes()),
                comment: key.comment().to_string(),
            }
            .checked(path);
        }
        // remaphore: base58 of seed || public key (64 bytes), or a bare seed.
        if let Ok(bytes) = bs58::decode(trimmed).into_vec() {
            let seed: Option<[u8; 32]> = match bytes.len() {
                64 => bytes[..32].try_into().ok(),
                32 => bytes[..].try_into().ok(),
                _ => None,
            };
            if let Some(seed) = seed {
                let key = SecretKey::from_seed(seed);
                if bytes.len() == 64 && key.public().bytes()[..] != bytes[32..] {
                    // A public half that is not the seed's (a weak one
                    // among them) is refused.
                    return Err(KeyError::UnreadableSecret {
                        path: path.to_path_buf(),
                    });
                }
                return key.checked(path);
            }
        }
        Err(KeyError::UnreadableSecret {
            path: path.to_path_buf(),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    pub fn comment(&self) -> &str {
        &self.comment
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The 32-byte seed (for age identities derived from this key).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// OpenSSH private key text.
    pub fn to_openssh(&self) -> Result<String, KeyError> {
        let pair = Ed25519Keypair {
            public: Ed25519PublicKey(self.public().bytes()),
            private: Ed25519PrivateKey::from_bytes(&self.signing.to_bytes()),
        };
        let key =
            ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), &self.comment)
                .map_err(KeyError::Encode)?;
        Ok(key
            .to_openssh(LineEnding::LF)
            .map_err(KeyError::Encode)?
            .to_string())
    }

    /// Write a new key pair: `path` (secret, mode 0600, never overwritten)
    /// and `path.pub` (one line).
    pub fn write_pair(&self, path: &Path) -> Result<PathBuf, KeyError> {
        let mut pub_path = path.as_os_str().to_os_string();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(KeyError::Exists {
                    path: p.to_path_buf(),
                });
            }
        }
        let secret = self.to_openssh()?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| KeyError::Io {
                action: "create",
                path: path.to_path_buf(),
                source,
            })?;
        f.write_all(secret.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| KeyError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            })?;
        let line = format!("{}\n", self.public().to_openssh(&self.comment));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&pub_path)
            .map_err(|source| KeyError::Io {
                action: "create",
                path: pub_path.clone(),
                source,
            })?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| KeyError::Io {
                action: "write",
                path: pub_path.clone(),
                source,
            })?;
        Ok(pub_path)
    }
}

impl PublicKey {
    /// A valid ed25519 point that is not of small order: the identity and
    /// the other seven small-order points ("weak keys") are refused, since
    /// a signature under them can be made without any secret key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|e| KeyError::BadPublic {
            reason: e.to_string(),
        })?;
        if key.is_weak() {
            return Err(KeyError::WeakPublic);
        }
        Ok(PublicKey(key))
    }

    /// Parse `ssh-ed25519 AAAA... [comment]` or a base58 key.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let t = text.trim();
        if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-") {
            let key = ssh_key::PublicKey::from_openssh(t).map_err(|e| KeyError::BadPublic {
                reason: e.to_string(),
            })?;
            let Some(ed) = key.key_data().ed25519() else {
                return Err(KeyError::BadPublic {
                    reason: format!(
                        "{} keys are not supported, only ssh-ed25519",
                        key.algorithm()
                    ),
                });
            };
            return PublicKey::from_bytes(&ed.0);
        }
        let bytes = bs58::decode(t)
            .into_vec()
            .map_err(|e| KeyError::BadPublic {
                reason: e.to_string(),
            })?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadPublic {
                reason: format!("base58 key decodes to {} bytes, not 32", bytes.len()),
            })?;
        PublicKey::from_bytes(&arr)
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Strict verification (ed25519-dalek's `verify_strict`): canonical S,
    /// no small-order R or key, and the cofactorless equation, so a
    /// signature verifies only if it was made with the secret key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// `SHA256:...`, the same fingerprint `ssh-keygen -l` prints.
    pub fn fingerprint(&self) -> String {
        let key = ssh_key::PublicKey::from(Ed25519PublicKey(self.bytes()));
        key.fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn to_openssh(&self, comment: &str) -> String {
        let mut key = ssh_key::PublicKey::from(Ed25519PublicKey(self.bytes()));
        key.set_comment(comment);
        key.to_openssh().unwrap_or_default()
    }

    pub fn to_base58(&self) -> String {
        bs58::encode(self.bytes()).into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_we_can_read_and_both_halves_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = SecretKey::generate("me@host");
        let pubp = k.write_pair(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = SecretKey::load(&p).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(again.comment(), "me@host");
        let line = std::fs::read_to_string(&pubp).unwrap();
        assert!(
            line.starts_with("ssh-ed25519 AAAA") && line.trim_end().ends_with(" me@host"),
            "{line}"
        );
        assert_eq!(PublicKey::parse(&line).unwrap(), k.public());
        assert!(matches!(k.write_pair(&p), Err(KeyError::Exists { .. })));
    }

    #[test]
    fn a_secret_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        SecretKey::generate("").write_pair(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretKey::load(&p).unwrap_err();
        assert!(matches!(e, KeyError::TooOpen { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_bytes_and_key() {
        let k = SecretKey::generate("");
        let other = SecretKey::generate("");
        let sig = k.sign(b"hello");
        assert!(k.public().verify(b"hello", &sig));
        assert!(!k.public().verify(b"hellp", &sig));
        assert!(!other.public().verify(b"hello", &sig));
    }

    /// Every small-order point: the identity, the point of order 2, and
    /// the points of order 4 and 8 (with their sign-bit variants).
    fn small_order_points() -> Vec<[u8; 32]> {
        let hex = [
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        ];
        hex.iter()
            .map(|h| {
                let mut b = [0u8; 32];
                for (i, byte) in b.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
                }
                b
            })
            .collect()
    }

    #[test]
    fn weak_public_keys_are_refused_in_every_form() {
        for p in small_order_points() {
            assert!(VerifyingKey::from_bytes(&p).unwrap().is_weak());
            assert!(matches!(
                PublicKey::from_bytes(&p),
                Err(KeyError::WeakPublic)
            ));
            let b58 = bs58::encode(p).into_string();
            let e = PublicKey::parse(&b58).unwrap_err();
            assert!(e.to_string().contains("weak"), "{e}");
            let line = ssh_key::PublicKey::from(Ed25519PublicKey(p))
                .to_openssh()
                .unwrap();
            let e = PublicKey::parse(&line).unwrap_err();
            assert!(e.to_string().contains("weak"), "{e}");
        }
    }

    #[test]
    fn a_keyless_signature_under_a_weak_key_does_not_verify() {
        // R = identity, s = 0 satisfies the cofactored and the plain
        // equation for the identity key and any message; only strict
        // verification refuses it.
        let identity = small_order_points()[0];
        let key = PublicKey(VerifyingKey::from_bytes(&identity).unwrap());
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&identity);
        assert!(!key.verify(b"any job header", &sig));
        // A small-order R with a genuine key is refused too.
        let k = SecretKey::generate("");
        let mut good = k.sign(b"m");
        assert!(k.public().verify(b"m", &good));
        good[..32].copy_from_slice(&identity);
        assert!(!k.public().verify(b"m", &good));
    }

    #[test]
    fn a_base58_secret_whose_public_half_is_weak_is_refused() {
        let k = SecretKey::generate("");
        let mut bytes = k.seed().to_vec();
        bytes.extend_from_slice(&small_order_points()[0]);
        let text = bs58::encode(&bytes).into_string();
        let e = SecretKey::parse(Path::new("r.conf"), &text).unwrap_err();
        assert!(e.to_string().contains("r.conf"), "{e}");
    }

    #[test]
    fn remaphore_base58_keys_are_read() {
        // From remaphore's test configuration (shared/remaphore/vectors/a.conf).
        let public = "CNXjr76S81qV8EUC2xUJqcHtGUWxHTEHiLMbfU1CEHot";
        let secret = "3L3mFH2KbBuYNsNXR7Fuq7L4qL5x4wvgAhdhyzLuJuycGPb85vK5b1aGM4i7GskrKbKbHz1Wgd1HhU9Ta8TC6VQz";
        let k = SecretKey::parse(Path::new("a.conf"), secret).unwrap();
        assert_eq!(k.public(), PublicKey::parse(public).unwrap());
        assert_eq!(k.public().to_base58(), public);
    }
}
