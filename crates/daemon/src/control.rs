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
    if daemon_answers(path) {
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

/// Whether a live daemon answers on `path`. A successful `connect` alone
/// does not say so: the kernel completes a connection for any process that
/// still holds the listening socket, and right after a daemon was killed
/// that can be one of its children caught between `fork` and `exec` (it
/// holds a copy of every descriptor until the `exec` closes them), which
/// never answers and dies a moment later. So ask for the status, as
/// `fspl status` would, and count only an answer.
fn daemon_answers(path: &Path) -> bool {
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        return false;
    }
    let mut tries = 0;
    loop {
        match request_timeout(path, &Request::Status, std::time::Duration::from_secs(1)) {
            Ok(_) => return true,
            // No answer in time: ask once more, in case the holder is a
            // live daemon that was slow to answer (e.g. under heavy load).
            Err(ControlError::Connect { source, .. })
                if tries == 0
                    && matches!(
                        source.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                tries += 1
            }
            // Refused, reset, closed without an answer, or silent twice:
            // nobody is serving this socket.
            Err(_) => return false,
        }
    }
}

/// Ask a running daemon (blocking; used by the `fspl status` command).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    request_timeout(path, req, std::time::Duration::from_secs(10))
}

fn request_timeout(
    path: &Path,
    req: &Request,
    timeout: std::time::Duration,
) -> Result<Response, ControlError> {
    use std::io::{BufRead, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let _ = s.set_read_timeout(Some(timeout));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    /// Regression (load_daemon_sigkill, long mode): a daemon restarted
    /// right after a SIGKILL found its old socket still accepting
    /// connections, held by a child caught between fork and exec, and
    /// refused to start with "another fspl daemon is already listening".
    #[test]
    fn a_socket_held_by_a_silent_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        // Listening, never accepting: what the half-spawned child holds.
        let _silent = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let rt = runtime();
        let bound = rt.block_on(async { bind(&path) });
        assert!(bound.is_ok(), "{:?}", bound.err());
        // The new listener is the one at the path now.
        let l = bound.unwrap();
        rt.block_on(async {
            let served = tokio::spawn(serve(l, |_| Response::Cleared { job: "x".into() }));
            let p = path.clone();
            let answer = tokio::task::spawn_blocking(move || request(&p, &Request::Status))
                .await
                .unwrap();
            assert!(matches!(answer, Ok(Response::Cleared { .. })), "{answer:?}");
            served.abort();
        });
    }

    #[test]
    fn a_socket_a_daemon_answers_on_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let rt = runtime();
        rt.block_on(async {
            let l = bind(&path).unwrap();
            let served = tokio::spawn(serve(l, |_| Response::Cleared { job: "x".into() }));
            let p = path.clone();
            let second = tokio::task::spawn_blocking(move || bind(&p).map(|_| ()))
                .await
                .unwrap();
            assert!(
                matches!(second, Err(ControlError::InUse { .. })),
                "{second:?}"
            );
            served.abort();
        });
    }
}
