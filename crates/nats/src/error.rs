//! Errors of the NATS backend, each saying whether trying again later may
//! help ([`NatsError::is_transient`]): a server that is down, restarting
//! or slow is transient; refused credentials, a bad URL or a stream set up
//! differently are permanent and say so in one line.

use std::path::PathBuf;

use fspl_transport::{TransportError, TransportErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A URL, option or name that cannot work.
    #[error("{0}")]
    Config(String),
    #[error("cannot read the NATS credentials file {}", path.display())]
    ReadCreds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a NATS credentials file ({reason})", path.display())]
    BadCreds { path: PathBuf, reason: String },
    /// The server refused who we are.
    #[error("{servers}: the NATS server refused the connection: {reason}")]
    Auth { servers: String, reason: String },
    /// No server could be reached (refused, timed out, name not resolved).
    #[error("{servers}: cannot connect to NATS: {reason}")]
    Connect { servers: String, reason: String },
    /// A JetStream request failed.
    #[error("{what}: {reason}")]
    JetStream {
        what: String,
        reason: String,
        transient: bool,
    },
    #[error("{0}")]
    Runtime(String),
}

impl NatsError {
    pub fn is_transient(&self) -> bool {
        match self {
            NatsError::Connect { .. } => true,
            NatsError::JetStream { transient, .. } => *transient,
            NatsError::ReadCreds { source, .. } => fspl_queue::io_is_transient(source),
            NatsError::Config(_)
            | NatsError::BadCreds { .. }
            | NatsError::Auth { .. }
            | NatsError::Runtime(_) => false,
        }
    }

    /// A JetStream error (any of async-nats' error types), with what was
    /// being done.
    pub fn js(what: impl Into<String>, e: &(dyn std::error::Error + 'static)) -> NatsError {
        let reason = one_line(e);
        NatsError::JetStream {
            what: what.into(),
            transient: looks_transient(&reason),
            reason,
        }
    }
}

/// An error and its sources, on one line.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// Whether a JetStream error's text says the server was unreachable, slow
/// or had no JetStream answer yet (all of which pass), rather than that
/// it refused the request.
pub(crate) fn looks_transient(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "no responders",
        "disconnected",
        "connection",
        "broken pipe",
        "jetstream not enabled",
        "jetstream system temporarily unavailable",
        "insufficient resources",
        "i/o",
        "io error",
    ]
    .iter()
    .any(|k| r.contains(k))
}

impl From<NatsError> for TransportError {
    fn from(e: NatsError) -> TransportError {
        let kind = if e.is_transient() {
            TransportErrorKind::Transient
        } else {
            TransportErrorKind::Permanent
        };
        TransportError::Backend {
            message: one_line(&e),
            kind,
        }
    }
}
