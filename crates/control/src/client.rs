//! The blocking client (`fspl status`), and the errors of both ends of the
//! control socket.
//!
//! Before it believes an answer, the client checks the socket's directory
//! ([`sockpath::check_dir`]; root accepts any owner), refuses a socket
//! that is a symlink, and asks the kernel who listens (`SO_PEERCRED`):
//! only ourselves or root ([`sockpath::trusted_peer`]). It reads at most
//! [`MAX_ANSWER`] bytes of answer, with a timeout.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{self, Reply, Request, Response};
use crate::sockpath::{self, DirProblem};

/// How long a client may take to send its request line (and to take the
/// answer) before the daemon hangs up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line the daemon reads (requests are a few dozen
/// bytes); a longer one gets an error answer and the connection is closed.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest answer `fspl status` reads.
pub const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// How long `fspl status` waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Ask a running daemon. Refuses a socket in an unsafe directory
/// ([`sockpath::check_dir`]; root accepts any owner) or that is a symlink,
/// and an answer from a process that runs as another user than us or root
/// ([`sockpath::trusted_peer`]). An answer of a kind this build does not
/// know (a newer daemon's) is an error naming both protocol versions.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let reply = request_reply(path, req)?;
    match reply.response {
        Response::Unknown { result } => Err(ControlError::Protocol {
            path: path.to_path_buf(),
            message: format!(
                "an answer of a kind this fspl does not know ({result:?}; the daemon speaks control protocol version {}, this fspl version {})",
                reply.version,
                proto::PROTOCOL_VERSION
            ),
        }),
        r => Ok(r),
    }
}

/// [`request`], with the daemon's protocol version.
pub fn request_reply(path: &Path, req: &Request) -> Result<Reply, ControlError> {
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
    let s = UnixStream::connect(path).map_err(|e| {
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
    exchange(path, s, req, ANSWER_TIMEOUT)
}

fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })
}

/// Send `req` on a connected socket and read the answer line (at most
/// [`MAX_ANSWER`] bytes).
fn exchange(
    path: &Path,
    mut s: UnixStream,
    req: &Request,
    timeout: Duration,
) -> Result<Reply, ControlError> {
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let line = proto::encode_request(req);
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
    proto::decode_response(&answer).map_err(|message| ControlError::Protocol {
        path: path.to_path_buf(),
        message,
    })
}

/// Whether a live daemon answers on `path` (for a daemon about to bind
/// it). A successful `connect` alone does not say so: the kernel completes
/// a connection for any process that still holds the listening socket, and
/// right after a daemon was killed that can be one of its children caught
/// between `fork` and `exec` (it holds a copy of every descriptor until the
/// `exec` closes them), which never answers and dies a moment later. So
/// ask for the status, as `fspl status` would, and count only an answer.
pub fn daemon_answers(path: &Path) -> bool {
    if UnixStream::connect(path).is_err() {
        return false;
    }
    let mut tries = 0;
    loop {
        let asked =
            connect(path).and_then(|s| exchange(path, s, &Request::Status, Duration::from_secs(1)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-shot server answering `answer` to whatever it is asked;
    /// returns what it was asked.
    fn serve_once(path: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut asked = String::new();
            std::io::BufReader::new(&s).read_line(&mut asked).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            asked
        })
    }

    fn private_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    /// The client sends its version; a newer daemon's answer (a state and
    /// fields it does not know) is read, with the daemon's version.
    #[test]
    fn the_client_sends_its_version_and_reads_a_newer_daemon() {
        let d = private_dir();
        let path = d.path().join("d.sock");
        let server = serve_once(
            &path,
            "{\"version\":3,\"result\":\"status\",\"jobs\":[{\"name\":\"a\",\"type\":\"process\",\"state\":\"hibernating\",\"description\":\"asleep\",\"dreams\":[1,2]}]}\n",
        );
        let reply = request_reply(&path, &Request::Status).unwrap();
        let asked = server.join().unwrap();
        assert_eq!(asked, "{\"version\":2,\"cmd\":\"status\"}\n");
        assert_eq!(reply.version, 3);
        let Response::Status { jobs } = reply.response else {
            panic!("{:?}", reply.response)
        };
        assert_eq!(jobs[0].describe(), "asleep");
    }

    #[test]
    fn an_answer_of_an_unknown_kind_is_a_one_line_error_naming_both_versions() {
        let d = private_dir();
        let path = d.path().join("d.sock");
        let server = serve_once(&path, "{\"version\":5,\"result\":\"streamed\"}\n");
        let e = request(&path, &Request::Status).unwrap_err().to_string();
        server.join().unwrap();
        assert!(
            e.contains("\"streamed\"")
                && e.contains("control protocol version 5, this fspl version 2"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
