//! Filespooler queue directories and sender sequence files: durable writes,
//! scanning, locking and the processing loop. Synchronous by design: the
//! plain CLI starts in about a millisecond.

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
pub mod status;
pub mod verify;

pub use error::{QueueError, Result};
pub use queue::{
    CopyError, EntryKind, JobSource, OpenedJob, Payload, PayloadFinish, Queue,
    REFERENCE_TEMP_PREFIX, StreamPayload, TEMP_PREFIX, classify, copy_stream, open_stream,
};

/// An error and its causes on one line, `a: b: c`. A cause whose text the
/// message before it already ends with is not repeated (some errors, such
/// as rmp-serde's, include their source in their own message). The
/// ` (os error N)` that std appends to system errors is left out: the text
/// before it says the same thing in words.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut s = strip_os_errors(&e.to_string());
    let mut prev = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = strip_os_errors(&c.to_string());
        if !prev.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        prev = msg;
        cur = c.source();
    }
    s
}

/// `text` without the ` (os error N)` markers std's `io::Error` puts after
/// the system's message (`No such file or directory (os error 2)` becomes
/// `No such file or directory`), wherever they occur in it.
pub fn strip_os_errors(text: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
            .map_or(after.len(), |(i, _)| i);
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_numbers_are_left_out_of_error_lines() {
        assert_eq!(
            strip_os_errors("No such file or directory (os error 2)"),
            "No such file or directory"
        );
        assert_eq!(
            strip_os_errors("read (x (os error 5)) and (os error -28), done"),
            "read (x) and, done"
        );
        // Not an os error marker: left alone.
        assert_eq!(strip_os_errors("a (os error x)"), "a (os error x)");
        assert_eq!(strip_os_errors("a (os error 12"), "a (os error 12");
        assert_eq!(strip_os_errors("a (os error )"), "a (os error )");
        let e = std::io::Error::from_raw_os_error(28);
        let chain = display_chain(&QueueError::Io {
            action: "write",
            path: "q/nextseq".into(),
            source: e,
        });
        assert_eq!(chain, "cannot write q/nextseq: No space left on device");
    }
}
