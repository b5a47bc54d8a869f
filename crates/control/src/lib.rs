//! The control protocol of the fspl daemon, for both of its ends: the
//! requests and answers of `fspl status` ([`proto`]), with a protocol
//! version exchanged on every request; where the control socket lives and
//! whom to trust on it ([`sockpath`]); and a blocking client
//! ([`client::request`]).
//!
//! No async runtime here: `fspl status` asks with plain blocking I/O, and
//! the daemon (tokio) serves the same types.

pub mod client;
pub mod proto;
pub mod sockpath;

pub use client::{ControlError, Unreachable, request, request_reply};
pub use proto::{JobState, JobStatus, Lag, PROTOCOL_VERSION, Reply, Request, Response};
