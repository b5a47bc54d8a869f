//! `serve-stdin`: the forced command of an authorized_keys line; the logic
//! is in `fspl_transport::intake`.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use fspl_transport::intake;

/// The variable sshd sets to what the client asked to run.
const ORIGINAL_COMMAND: &str = "SSH_ORIGINAL_COMMAND";

pub fn serve_stdin(identity: &str, config: &Path) -> anyhow::Result<ExitCode> {
    let request = match std::env::var_os(ORIGINAL_COMMAND) {
        None => None,
        Some(s) => Some(s.into_string().map_err(|_| {
            anyhow::anyhow!("this key only accepts `fspl push`; the client's request is not UTF-8")
        })?),
    };
    // Our own descriptors for sshd's pipes: read and written unbuffered,
    // with timeouts (std's stdin would buffer ahead of us).
    let input = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let output = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    match intake::serve(config, identity, request.as_deref(), input, output) {
        Ok(s) => {
            tracing::debug!(
                queue = %s.queue.display(),
                stored = s.stored,
                duplicates = s.duplicates,
                refused = s.refused,
                "session done"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => Err(anyhow::anyhow!(f.message)),
    }
}
