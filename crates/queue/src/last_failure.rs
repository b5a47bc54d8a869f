//! `DIR/last-failure`: the job that failed last and stays in the queue to
//! be run again (`--on-error retry`), so that `queue-status` can say that
//! the job it would run next fails.
//!
//! `queue-process` writes it only when a job fails under `retry` (replaced
//! durably: temporary file, fsync, rename, directory fsync; it holds the
//! queue lock) and removes it when processing moves past a job. The removal
//! is not synced: a record that comes back after a crash names a job that
//! has run, and readers take a record only while it applies (`read` with
//! the scan: the file it names is still there with that seq).
//!
//! The format is a few `key=value` lines (`seq`, `time` in seconds since
//! the epoch, `file`, `outcome`); anything else in the file is ignored, and
//! a file that does not parse is no record.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::error::{QueueError, Result};
use crate::queue::Queue;

/// The record's file name in the queue directory.
pub const FILE: &str = "last-failure";

/// Longest outcome text kept (the rest is cut).
const MAX_OUTCOME: usize = 1000;
/// Longest record read.
const MAX_RECORD: u64 = 8 * 1024;

/// A job that failed and was left in the queue to run again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastFailure {
    pub seq: u64,
    /// The job file's name in `jobs/`.
    pub file: OsString,
    /// When it failed, seconds since the epoch.
    pub time_secs: i64,
    /// How it failed (`command exited with status 1`, ...).
    pub outcome: String,
}

pub fn path(queue: &Queue) -> PathBuf {
    queue.dir().join(FILE)
}

/// Record that job `seq` (file `file`) failed now with `outcome`.
pub fn record(queue: &Queue, seq: u64, file: &OsStr, outcome: &str) -> Result<()> {
    let time = fspl_format::Ctime::now().secs;
    let mut outcome = crate::escape_controls(outcome).into_owned();
    if outcome.len() > MAX_OUTCOME {
        let mut cut = MAX_OUTCOME;
        while !outcome.is_char_boundary(cut) {
            cut -= 1;
        }
        outcome.truncate(cut);
        outcome.push('…');
    }
    let mut text = format!("seq={seq}\ntime={time}\nfile=").into_bytes();
    text.extend_from_slice(file.as_bytes());
    text.extend_from_slice(format!("\noutcome={outcome}\n").as_bytes());
    crate::durable::replace_file(&path(queue), &text)
}

/// Forget the record (none is fine).
pub fn clear(queue: &Queue) -> Result<()> {
    let p = path(queue);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(QueueError::Io {
            action: "remove",
            path: p,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The record as stored, if there is one that parses (whether it still
/// applies is for the caller to decide, from a scan).
pub fn read(queue: &Queue) -> Option<LastFailure> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path(queue))
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_RECORD).read_to_end(&mut bytes).ok()?;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Option<LastFailure> {
    let (mut seq, mut time, mut file, mut outcome) = (None, None, None, None);
    for line in bytes.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let text = || std::str::from_utf8(value).ok();
        match key {
            b"seq" => seq = text().and_then(|v| v.parse::<u64>().ok()),
            b"time" => time = text().and_then(|v| v.parse::<i64>().ok()),
            b"file" => file = Some(OsString::from_vec(value.to_vec())),
            // Shown on a terminal: whoever wrote the file, one plain line.
            b"outcome" => {
                outcome = Some(crate::escape_controls(&String::from_utf8_lossy(value)).into_owned())
            }
            _ => {}
        }
    }
    Some(LastFailure {
        seq: seq?,
        time_secs: time?,
        file: file.filter(|f| !f.is_empty())?,
        outcome: outcome?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::init(dir.path().join("q"), false).unwrap();
        assert_eq!(read(&q), None);
        record(
            &q,
            5,
            OsStr::new("fspl-x.fspl"),
            "command exited\nwith status 1",
        )
        .unwrap();
        let r = read(&q).unwrap();
        assert_eq!(r.seq, 5);
        assert_eq!(r.file, "fspl-x.fspl");
        assert_eq!(r.outcome, "command exited\\nwith status 1");
        assert!(r.time_secs > 1_600_000_000);
        clear(&q).unwrap();
        assert_eq!(read(&q), None);
        clear(&q).unwrap();
    }

    #[test]
    fn a_damaged_record_is_no_record() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"seq=5\ntime=1\nfile=\noutcome=x\n"), None);
        assert_eq!(parse(b"seq=x\ntime=1\nfile=f\noutcome=x\n"), None);
        assert_eq!(parse(b"seq=5\ntime=1\nfile=f\n"), None);
        assert_eq!(
            parse(b"seq=5\ntime=1\nfile=f\noutcome=a\x1b[2Jb\r\n")
                .unwrap()
                .outcome,
            "a\\x1b[2Jb\\r"
        );
        assert_eq!(
            parse(b"junk\nseq=5\ntime=1\nfile=f\noutcome=o=k\n"),
            Some(LastFailure {
                seq: 5,
                time_secs: 1,
                file: "f".into(),
                outcome: "o=k".into()
            })
        );
    }
}
