//! Transport errors say whether trying again later may help.

use std::path::PathBuf;

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
    #[error("{0:?}: unknown scheme {scheme:?}; known: a plain path, dir:PATH, ssh://[USER@]HOST[:PORT]/QUEUE", scheme = .1)]
    UnknownScheme(String, String),
    #[error("{url:?}: {reason}")]
    BadUrl { url: String, reason: String },
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
            TransportError::UnknownScheme(..) | TransportError::BadUrl { .. } => {
                TransportErrorKind::Permanent
            }
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
}
