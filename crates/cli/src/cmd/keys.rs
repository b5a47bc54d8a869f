//! `keygen`, and loading `--identity` / `--trust` for the other commands.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fspl_trust::crypt::Identities;
use fspl_trust::{SecretKey, TrustFile};

use crate::cli::{IdentityArgs, KeyArgs};

/// The identities to decrypt with, if any were given.
pub fn identities(a: &IdentityArgs) -> anyhow::Result<Option<Arc<Identities>>> {
    if a.identity.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Identities::load(&a.identity)?)))
}

/// The trust file, if one was given.
pub fn trust(a: &KeyArgs) -> anyhow::Result<Option<Arc<TrustFile>>> {
    match &a.trust {
        None => Ok(None),
        Some(p) => Ok(Some(Arc::new(TrustFile::load(p)?))),
    }
}

fn default_comment() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "fspl".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

pub fn keygen(
    output: &std::path::Path,
    comment: Option<&str>,
    format: crate::cli::KeyFormat,
) -> anyhow::Result<ExitCode> {
    if format == crate::cli::KeyFormat::Base58 {
        return keygen_base58(output);
    }
    let key = SecretKey::generate(comment.map(str::to_string).unwrap_or_else(default_comment));
    let pub_path = key.write_pair(output)?;
    let line = std::fs::read_to_string(&pub_path)
        .with_context(|| format!("cannot read back {}", pub_path.display()))?;
    crate::output::write_stdout(
        format!(
            "secret key: {} (mode 0600; keep it private)\npublic key: {}\nfingerprint: {}\n{}",
            output.display(),
            pub_path.display(),
            key.public().fingerprint(),
            line
        )
        .as_bytes(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `keygen --format base58`: a key pair as remaphore writes them (PATH:
/// base58 of the seed followed by the public key, mode 0600; PATH.pub: the
/// base58 public key), ready for a remaphore config's [ Identities ] and
/// the peers' [ Peers ].
fn keygen_base58(output: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate("");
    let public = key.public().to_base58();
    let mut secret = key.seed().to_vec();
    secret.extend_from_slice(&key.public().bytes());
    let secret = bs58::encode(&secret).into_string();
    let mut pub_path = output.as_os_str().to_os_string();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    for p in [output, pub_path.as_path()] {
        if p.exists() {
            anyhow::bail!("{} already exists; not overwriting a key", p.display());
        }
    }
    for (p, text, mode) in [
        (output, &secret, 0o600),
        (pub_path.as_path(), &public, 0o644),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        f.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    crate::output::write_stdout(
        format!(
            "secret key: {} (mode 0600; keep it private)\npublic key: {}\n\
             [ Identities ] line: {public} <the secret key file's content> [ping]\n\
             [ Peers ] line on the other nodes: DESTINATION {public} [ping]\n",
            output.display(),
            pub_path.display(),
        )
        .as_bytes(),
    )?;
    Ok(ExitCode::SUCCESS)
}
