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

pub fn keygen(output: &std::path::Path, comment: Option<&str>) -> anyhow::Result<ExitCode> {
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
