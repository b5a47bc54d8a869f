//! The control socket's server: `fspl status` asks the running daemon
//! over a Unix socket (mode 0600, in a directory checked by
//! [`fspl_control::sockpath`]). One JSON request line, one JSON answer
//! line, in the protocol of [`fspl_control::proto`] (shared with the
//! blocking client of `fspl status`).
//!
//! Whatever clients do, the daemon keeps going: at most
//! [`MAX_CONNECTIONS`] connections are served at once (a new one closes the
//! oldest), a request line must arrive within [`REQUEST_TIMEOUT`] and be at
//! most [`MAX_REQUEST`] bytes long, and an accept that fails (out of file
//! descriptors) is retried after a pause instead of at once.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub use fspl_control::client::{MAX_ANSWER, MAX_REQUEST, REQUEST_TIMEOUT};
use fspl_control::sockpath;
pub use fspl_control::{ControlError, Reply, Request, Response, Unreachable, request};

/// Control connections served at once; a further one closes the oldest.
pub const MAX_CONNECTIONS: usize = 64;
/// The pause after a failed accept (e.g. EMFILE: the pending connection
/// stays in the backlog, and accepting again at once would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    if fspl_control::client::daemon_answers(path) {
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
                Line::Complete(bytes) => match fspl_control::proto::decode_request(&bytes) {
                    Ok((_version, req)) => handle(req),
                    Err(message) => Response::Error { message },
                },
            };
            let out = fspl_control::proto::encode_response(&resp);
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
