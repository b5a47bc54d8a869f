//! Transport errors say whether trying again later may help.

use std::path::PathBuf;

use crate::url::KNOWN;

/// Whether an error may go away by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// Network down, server busy, a peer that went away, a full disk:
    /// back off and retry.
    Transient,
    /// Bad configuration, authentication refused, a queue the sender may
    /// not write: retrying will not help until someone changes something.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0:?}: unknown scheme {scheme:?}; known: {KNOWN}", scheme = .1)]
    UnknownScheme(String, String),
    #[error("{url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A scheme that is known but cannot be used this way (yet).
    #[error("{0}")]
    Unsupported(String),
    #[error("{}: no such directory", path.display())]
    NoSuchDir { path: PathBuf },
    #[error("{}: not a directory", path.display())]
    NotADir { path: PathBuf },
    /// The source or destination is the outbox or queue itself.
    #[error("{}: {what}", path.display())]
    SamePlace { path: PathBuf, what: &'static str },
    /// Another push or pull (or a queue-process) holds the lock of the
    /// outbox or source.
    #[error("{} is busy (another push, pull or queue-process is using it)", outbox.display())]
    Busy {
        outbox: PathBuf,
        #[source]
        source: fspl_queue::QueueError,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        kind: TransportErrorKind,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] fspl_queue::QueueError),
    /// Anything a backend reports (its own message), with its kind.
    #[error("{message}")]
    Backend {
        message: String,
        kind: TransportErrorKind,
    },
}

impl TransportError {
    pub fn kind(&self) -> TransportErrorKind {
        match self {
            TransportError::UnknownScheme(..)
            | TransportError::BadUrl { .. }
            | TransportError::Unsupported(_)
            | TransportError::NoSuchDir { .. }
            | TransportError::NotADir { .. }
            | TransportError::SamePlace { .. } => TransportErrorKind::Permanent,
            TransportError::Busy { .. } => TransportErrorKind::Transient,
            TransportError::Io { kind, .. } | TransportError::Backend { kind, .. } => *kind,
            TransportError::Queue(q) => {
                if q.is_transient() {
                    TransportErrorKind::Transient
                } else {
                    TransportErrorKind::Permanent
                }
            }
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind() == TransportErrorKind::Transient
    }

    /// An I/O error, transient when the error may go away by itself.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let kind = if fspl_queue::io_is_transient(&source) {
            TransportErrorKind::Transient
        } else {
            TransportErrorKind::Permanent
        };
        TransportError::Io {
            action,
            path: path.into(),
            kind,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let e = TransportError::io(
            "write",
            "/x",
            std::io::Error::from_raw_os_error(libc_enospc()),
        );
        assert!(e.is_transient());
        let e = TransportError::io("open", "/x", std::io::Error::from_raw_os_error(13));
        assert!(!e.is_transient());
        assert!(!TransportError::Unsupported("x".into()).is_transient());
        let busy = TransportError::Busy {
            outbox: "/o".into(),
            source: fspl_queue::QueueError::Locked {
                path: "/o/nextseq.lock".into(),
                holder: Some(7),
            },
        };
        assert!(busy.is_transient());
        assert!(fspl_queue::display_chain(&busy).ends_with("locked by another process (pid 7)"));
    }

    fn libc_enospc() -> i32 {
        28
    }
}
