//! Authenticity, integrity, access control and confidentiality for fspl
//! jobs: ed25519 keys (OpenSSH or base58), trust files, age encryption.

mod agefile;
pub mod crypt;
pub mod digest;
pub mod keys;
pub mod policy;

pub use keys::{KeyError, PublicKey, SecretKey};
pub use policy::{Sender, TrustFile, TrustFileError};
