//! The control socket: `fspl status` asks the running daemon over a Unix
//! socket (mode 0600). One JSON request line, one JSON response line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::state::JobStatus;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Clear { job: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status { jobs: Vec<JobStatus> },
    Cleared { job: String },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another fspl daemon is already listening on {}", path.display())]
    InUse { path: PathBuf },
    #[error("control socket path {} exists and is not a socket; not touching it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the fspl daemon at {} (is it running?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from the fspl daemon at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// Bind the control socket, refusing to take over one that a live daemon
/// answers on, and removing a stale one left by a dead daemon (only a
/// socket: any other file at that path is an error, never removed).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse {
            path: path.to_path_buf(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        let _ = std::fs::create_dir_all(dir);
    }
    // Bind under umask 077 so the socket is never, even briefly, open to
    // others; then set 0600 explicitly.
    // SAFETY: umask only changes this process's file creation mask.
    let old_mask = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old_mask) };
    let l = bound.map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(l)
}

/// Serve requests until the listener is dropped.
pub async fn serve(
    listener: UnixListener,
    handle: impl Fn(Request) -> Response + Clone + Send + 'static,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            if let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(req),
                    Err(e) => Response::Error {
                        message: format!("bad request: {e}"),
                    },
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into());
                out.push('\n');
                let _ = w.write_all(out.as_bytes()).await;
            }
        });
    }
}

/// Ask a running daemon (blocking; used by the `fspl status` command).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
