//! Filespooler queue directories and sender sequence files: durable writes,
//! scanning, locking and the processing loop. Synchronous by design: the
//! plain CLI starts in about a millisecond.

pub mod bounded;
pub mod check;
pub mod decoder;
pub mod durable;
mod error;
pub mod exec;
pub mod failpoint;
pub mod lock;
pub mod nextseq;
pub mod process;
pub mod pump;
mod queue;
pub mod scan;
pub mod seqfile;
pub mod seqnum;
pub mod spool;
pub mod status;
pub mod verify;

pub use error::{QueueError, Result};
pub use queue::{
    CopyError, EntryKind, JobSource, OpenedJob, Payload, PayloadFinish, Queue,
    REFERENCE_TEMP_PREFIX, StreamPayload, TEMP_PREFIX, classify, copy_stream, open_stream,
};

/// An error and its causes on one line, `a: b: c`. A cause whose text the
/// message before it already ends with is not repeated (some errors, such
/// as rmp-serde's, include their source in their own message).
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut prev = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !prev.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        prev = msg;
        cur = c.source();
    }
    s
}
