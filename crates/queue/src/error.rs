use std::io;
use std::path::PathBuf;

use fspl_format::HeaderError;

/// Errors of queue and sequence-file operations. Every I/O error carries the
/// path it concerns and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a queue (no jobs/ directory); create one with `fspl queue-init -q {}`", dir.display(), shell_word(dir))]
    NotAQueue { dir: PathBuf },
    #[error("{}: no such queue directory; create one with `fspl queue-init -q {}`", dir.display(), shell_word(dir))]
    NoSuchQueue { dir: PathBuf },
    #[error("{}: no nextseq.lock; this may be an append-only queue, which can be written and listed but not processed", dir.display())]
    AppendOnly { dir: PathBuf },
    #[error("{}: {}", path.display(), match holder { Some(pid) => format!("locked by another process (pid {pid})"), None => "locked by another process".to_string() })]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("{}: invalid sequence number {content:?}", path.display())]
    BadSeqNumber {
        path: PathBuf,
        content: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("{}: sequence number {value} cannot be incremented", path.display())]
    SeqExhausted { path: PathBuf, value: u64 },
    #[error("job file {}", path.display())]
    BadJob {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    #[error("{}: job {seq} not found", dir.display())]
    JobNotFound { dir: PathBuf, seq: u64 },
    #[error("{}: seq {seq} is in more than one file with different contents: {}; remove the wrong one", dir.display(), files.join(", "))]
    DuplicateSeq {
        dir: PathBuf,
        seq: u64,
        files: Vec<String>,
    },
    #[error("decoder {command:?} for {}", path.display())]
    Decoder {
        command: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a real directory (a symbolic link or another kind of file is in its place); refusing to move anything into it", path.display())]
    NotADirectory { path: PathBuf },
    #[error("refusing the job {}, nothing was stored in {}: {reason}", origin(from), dir.display())]
    InvalidJob {
        dir: PathBuf,
        /// Where the job came from: "stdin", or a file.
        from: PathBuf,
        reason: String,
    },
    #[error("{}: queue directory already exists", dir.display())]
    AlreadyExists { dir: PathBuf },
    #[error("{name:?} is not a job name (fspl-*.fspl, one path component)")]
    InvalidName { name: String },
}

/// "on stdin", or "from FILE".
fn origin(from: &std::path::Path) -> String {
    if from == std::path::Path::new("stdin") {
        "on stdin".to_string()
    } else {
        format!("from {}", from.display())
    }
}

/// `path` as one shell word, for commands suggested in messages: as is when
/// it is made of harmless characters, else in single quotes.
fn shell_word(path: &std::path::Path) -> String {
    let s = path.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=~".contains(c))
        && !s.starts_with('~');
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl QueueError {
    /// Whether the error is about the job itself (not a valid job, not a
    /// job name), so that sending the same job again cannot help: a
    /// transport reports it as refused rather than failing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            QueueError::InvalidName { .. } | QueueError::InvalidJob { .. }
        )
    }

    /// Whether the error may go away without anyone changing anything
    /// (another process holds the lock, the disk is full, the system is
    /// short of memory or descriptors, a network file system timed out):
    /// worth retrying later. Everything else (a missing or misconfigured
    /// queue, a bad job, conflicting copies) waits for someone to act.
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Locked { .. } => true,
            QueueError::Io { source, .. } | QueueError::Decoder { source, .. } => {
                io_is_transient(source)
            }
            _ => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> QueueError {
        let path = path.into();
        move |source| QueueError::Io {
            action,
            path,
            source,
        }
    }
}

/// Whether an I/O error may go away by itself (see
/// [`QueueError::is_transient`]).
pub fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        Interrupted | WouldBlock | TimedOut | OutOfMemory | StorageFull | ResourceBusy
    ) {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EBUSY
                | libc::ETIMEDOUT
                | libc::EIO
        )
    )
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_init_hint_quotes_a_path_a_shell_would_split() {
        let hint = |p: &str| {
            QueueError::NoSuchQueue {
                dir: PathBuf::from(p),
            }
            .to_string()
        };
        assert!(hint("/srv/q-1").ends_with("`fspl queue-init -q /srv/q-1`"));
        assert!(hint("my queue").ends_with("`fspl queue-init -q 'my queue'`"));
        assert!(hint("it's").ends_with(r"`fspl queue-init -q 'it'\''s'`"));
        assert!(hint("~x").ends_with("`fspl queue-init -q '~x'`"));
    }

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let io = |errno| QueueError::Io {
            action: "write",
            path: "q".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(io(libc::ENOSPC).is_transient());
        assert!(io(libc::EMFILE).is_transient());
        assert!(!io(libc::EACCES).is_transient());
        assert!(!io(libc::ENOENT).is_transient());
        let locked = QueueError::Locked {
            path: "q".into(),
            holder: None,
        };
        assert!(locked.is_transient());
        assert!(!QueueError::NoSuchQueue { dir: "q".into() }.is_transient());
    }
}
