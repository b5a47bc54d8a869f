//! Filespooler queue directories and sender sequence files: durable writes,
//! scanning, locking and the processing loop. Synchronous by design: the
//! plain CLI starts in about a millisecond.

pub mod batch;
pub mod bounded;
pub mod check;
pub mod concurrent;
pub mod decoder;
pub mod durable;
mod error;
pub mod exec;
pub mod failpoint;
mod intake;
pub mod last_failure;
pub mod lease;
pub mod lock;
pub mod nextseq;
pub mod process;
pub mod program;
pub mod pump;
pub mod quarantine;
mod queue;
pub mod scan;
pub mod seqfile;
pub mod seqnum;
pub mod spool;
pub mod status;
pub mod verify;

pub use error::{QueueError, Result, io_is_transient};
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

/// `s` made safe for a one-line log message or reason: control characters
/// (C0, DEL, C1) are shown as escapes (`\n`, `\r`, `\t`, `\x1b`...), and
/// characters that reorder or break lines on a terminal (bidirectional
/// overrides and isolates, line and paragraph separators) as `\u{...}`. A
/// file name or any other text a job controls cannot start a line of its
/// own, forge one, or send escape sequences to the terminal. Everything
/// else, including backslashes and non-ASCII text, is kept as it is.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_controls("plain /q/jobs/fspl-1.fspl ü \\n"),
            "plain /q/jobs/fspl-1.fspl ü \\n"
        );
        assert_eq!(
            escape_controls("a\nfspl: info: x\r\t\x1b[2J\x07\x7f\u{85}b"),
            "a\\nfspl: info: x\\r\\t\\x1b[2J\\x07\\x7f\\x85b"
        );
        assert_eq!(
            escape_controls("x\u{202e}y\u{2028}"),
            "x\\u{202e}y\\u{2028}"
        );
        assert!(
            !escape_controls("\u{0}\u{1f}\u{9f}")
                .chars()
                .any(char::is_control)
        );
    }

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
