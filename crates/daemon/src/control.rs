//! The control socket: `fspl status` asks the running daemon over a Unix
//! socket (mode 0600, in a directory checked by [`crate::sockpath`]). One
//! JSON request line, one JSON response line.
//!
//! Whatever clients do, the daemon keeps going: at most
//! [`MAX_CONNECTIONS`] connections are served at once (a new one closes the
//! oldest), a request line must arrive within [`REQUEST_TIMEOUT`] and be at
//! most [`MAX_REQUEST`] bytes long, and an accept that fails (out of file
//! descriptors) is retried after a pause instead of at once.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::sockpath::{self, DirProblem};
use crate::state::JobStatus;

/// Control connections served at once; a further one closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request line (and to take the
/// answer) before the daemon hangs up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line the daemon reads (requests are a few dozen
/// bytes); a longer one gets an error answer and the connection is closed.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest answer `fspl status` reads.
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// The pause after a failed accept (e.g. EMFILE: the pending connection
/// stays in the backlog, and accepting again at once would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    #[error("unsafe control socket {}: its directory {} {problem}", path.display(), dir.display())]
    UnsafeDir {
        path: PathBuf,
        dir: PathBuf,
        problem: DirProblem,
    },
    #[error("unsafe control socket {}: it is a symbolic link", path.display())]
    SymlinkSocket { path: PathBuf },
    #[error("cannot create control socket directory {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not trusting the fspl daemon at {}: it runs as uid {uid}, not as you (uid {ours}) or root",
        path.display()
    )]
    Untrusted { path: PathBuf, uid: u32, ours: u32 },
    #[error("cannot listen on control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `fspl status` found no daemon to talk to at `path`.
    #[error("cannot reach the fspl daemon at {}: {why}", path.display())]
    Unreachable { path: PathBuf, why: Unreachable },
    #[error("cannot reach the fspl daemon at {} (is it running?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from the fspl daemon at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// Why nothing answers at a control socket's path, as precisely as can be
/// told.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("its directory {} does not exist (is the daemon running?)", dir.display())]
    DirMissing { dir: PathBuf },
    #[error("it does not exist (is the daemon running?)")]
    Missing,
    #[error("it is {what}, not a socket")]
    NotASocket { what: &'static str },
    #[error("nothing listens on it (a socket left by a daemon that has stopped; is it running?)")]
    Refused,
    #[error("permission denied (the socket is mode 0600: ask as the daemon's user or root)")]
    Denied,
    #[error("{0}")]
    Other(std::io::Error),
}

/// What a file that is not a socket is, for [`Unreachable::NotASocket`].
fn what_is(m: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    Some(if t.is_socket() {
        return None;
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a socket either"
    })
}

/// Bind the control socket: create its directory (mode 0700) when missing
/// and refuse an unsafe one ([`sockpath::check_dir`]; the default directory
/// must be ours with mode 0700); refuse to take over a socket that a live
/// daemon answers on, and remove a stale one left by a dead daemon (only a
/// socket: any other file at that path is an error, never removed).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let ours = sockpath::our_uid();
    let dir = sockpath::create_dir(path)
        .map_err(|(dir, source)| ControlError::CreateDir { dir, source })?;
    let checked = if path == sockpath::default_socket() {
        sockpath::check_private_dir(&dir, ours)
    } else {
        sockpath::check_dir(&dir, ours, false).map(drop)
    };
    checked.map_err(|problem| ControlError::UnsafeDir {
        path: path.to_path_buf(),
        dir: dir.clone(),
        problem,
    })?;
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

/// The connections being served, oldest first, so that a new one can close
/// the oldest when [`MAX_CONNECTIONS`] are open.
#[derive(Default)]
struct Connections {
    live: BTreeMap<u64, tokio::task::AbortHandle>,
}

/// Removes a connection from [`Connections`] when its task ends (done,
/// timed out or aborted).
struct Slot {
    conns: Arc<Mutex<Connections>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.live.remove(&self.id);
    }
}

/// A request line, read with a size limit.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    None,
}

async fn read_request(r: tokio::net::unix::OwnedReadHalf) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut limited = BufReader::new(r.take(MAX_REQUEST as u64 + 1));
    limited.read_until(b'\n', &mut buf).await?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Line::Complete(buf))
    } else if buf.len() > MAX_REQUEST {
        Ok(Line::TooLong)
    } else if buf.is_empty() {
        Ok(Line::None)
    } else {
        // The last line of a connection closed for writing.
        Ok(Line::Complete(buf))
    }
}

/// Serve requests until the listener is dropped.
pub async fn serve(
    listener: UnixListener,
    handle: impl Fn(Request) -> Response + Clone + Send + 'static,
) {
    let conns: Arc<Mutex<Connections>> = Arc::default();
    let mut next_id: u64 = 0;
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                failing = false;
                s
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "control socket: cannot accept a connection; trying again");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let handle = handle.clone();
        let slot = Slot {
            conns: conns.clone(),
            id,
        };
        let serve_one = async move {
            let _slot = slot;
            let (r, mut w) = stream.into_split();
            let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(r)).await {
                Ok(Ok(l)) => l,
                // Too slow, or the connection failed: hang up.
                Err(_) | Ok(Err(_)) => return,
            };
            let resp = match line {
                Line::None => return,
                Line::TooLong => Response::Error {
                    message: format!("bad request: longer than {MAX_REQUEST} bytes"),
                },
                Line::Complete(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                    Ok(req) => handle(req),
                    Err(e) => Response::Error {
                        message: format!("bad request: {e}"),
                    },
                },
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into());
            out.push('\n');
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(out.as_bytes())).await;
        };
        // Register the connection (closing the oldest ones over the cap)
        // under the lock, so that its task cannot end and unregister
        // before it is registered.
        let evicted = {
            let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
            let mut evicted = Vec::new();
            while c.live.len() >= MAX_CONNECTIONS {
                match c.live.pop_first() {
                    Some((_, h)) => evicted.push(h),
                    None => break,
                }
            }
            let task = tokio::spawn(serve_one);
            c.live.insert(id, task.abort_handle());
            evicted
        };
        for h in evicted {
            h.abort();
        }
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
        let asked = connect(path)
            .and_then(|s| exchange(path, s, &Request::Status, std::time::Duration::from_secs(1)));
        match asked {
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
/// Refuses a socket in an unsafe directory ([`sockpath::check_dir`]; root
/// accepts any owner) or that is a symlink, and an answer from a process
/// that runs as another user than us or root ([`sockpath::trusted_peer`]).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let ours = sockpath::our_uid();
    let dir = sockpath::dir_of(path);
    let dir_owner = match sockpath::check_dir(&dir, ours, ours == 0) {
        Ok(owner) => owner,
        Err(DirProblem::Missing) => {
            return Err(ControlError::Unreachable {
                path: path.to_path_buf(),
                why: Unreachable::DirMissing { dir },
            });
        }
        Err(problem) => {
            return Err(ControlError::UnsafeDir {
                path: path.to_path_buf(),
                dir,
                problem,
            });
        }
    };
    let unreachable = |why| ControlError::Unreachable {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(ControlError::SymlinkSocket {
                path: path.to_path_buf(),
            });
        }
        Ok(m) => {
            if let Some(what) = what_is(&m) {
                return Err(unreachable(Unreachable::NotASocket { what }));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unreachable(Unreachable::Missing));
        }
        Err(_) => {}
    }
    let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        unreachable(match e.raw_os_error() {
            Some(libc::ENOENT) => Unreachable::Missing,
            Some(libc::ECONNREFUSED) => Unreachable::Refused,
            Some(libc::EACCES) | Some(libc::EPERM) => Unreachable::Denied,
            _ => Unreachable::Other(e),
        })
    })?;
    let uid = sockpath::peer_uid(s.as_fd()).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    if !sockpath::trusted_peer(uid, ours, dir_owner) {
        return Err(ControlError::Untrusted {
            path: path.to_path_buf(),
            uid,
            ours,
        });
    }
    exchange(path, s, req, std::time::Duration::from_secs(10))
}

fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ControlError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })
}

/// Send `req` on a connected socket and read the answer line (at most
/// [`MAX_ANSWER`] bytes).
fn exchange(
    path: &Path,
    mut s: std::os::unix::net::UnixStream,
    req: &Request,
    timeout: std::time::Duration,
) -> Result<Response, ControlError> {
    use std::io::{BufRead, Read, Write};
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
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
    let mut answer = Vec::new();
    std::io::BufReader::new(s.take(MAX_ANSWER))
        .read_until(b'\n', &mut answer)
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    serde_json::from_slice(&answer).map_err(|e| ControlError::Protocol {
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
