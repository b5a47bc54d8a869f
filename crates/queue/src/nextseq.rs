//! A queue's `nextseq`, held open for a processing run.
//!
//! Advancing after every job must be durable before the next job starts, and
//! it sits on the hot path of `queue-process`. Two ways to make it durable:
//!
//! * replace: temporary file, fsync, rename, fsync the directory (two
//!   journal commits, ~0.5 ms on the reference machine);
//! * overwrite in place: `pwrite` the new line at offset 0 and `fdatasync`
//!   (one data flush, ~0.1 ms; no metadata changes while the length stays).
//!
//! We overwrite in place when the new line is at least as long as the file
//! (sequence numbers only grow, so that is every advance). Any crash leaves
//! either the old or the new number, because readers take the first line
//! and the write lies within one disk sector, which storage writes
//! atomically (the assumption ext4's own journal commit block rests on):
//! growing "9\n" to "10\n" can at worst leave "10" under the old length,
//! which reads as 10. Every other change (initialising, `queue-set-next`,
//! shrinking, replacing a malformed file) uses the replace protocol.
//! docs/durability.md has the whole argument.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{QueueError, Result};
use crate::failpoint::hit;
use crate::seqnum;

#[derive(Debug)]
pub struct NextSeq {
    path: PathBuf,
    file: File,
    len: u64,
    value: u64,
}

impl NextSeq {
    /// Open `nextseq` for reading and in-place updates, creating it (holding
    /// 1, like Filespooler) when it is missing. The caller holds the queue lock.
    pub fn open(path: &Path) -> Result<NextSeq> {
        loop {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(mut file) => {
                    let mut buf = Vec::with_capacity(32);
                    (&mut file)
                        .take(4096)
                        .read_to_end(&mut buf)
                        .map_err(QueueError::io("read", path))?;
                    let value = seqnum::parse(path, &buf)?;
                    let len = file.metadata().map_err(QueueError::io("stat", path))?.len();
                    return Ok(NextSeq {
                        path: path.to_path_buf(),
                        file,
                        len,
                        value,
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => seqnum::write(path, 1)?,
                Err(e) => {
                    return Err(QueueError::Io {
                        action: "open",
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably record `value`; returns only once it is on disk.
    pub fn set(&mut self, value: u64) -> Result<()> {
        let line = format!("{value}\n");
        if line.len() as u64 >= self.len {
            hit("nextseq:before-write").map_err(QueueError::io("write", &self.path))?;
            self.file
                .write_all_at(line.as_bytes(), 0)
                .map_err(QueueError::io("write", &self.path))?;
            hit("nextseq:before-sync").map_err(QueueError::io("sync", &self.path))?;
            self.file
                .sync_data()
                .map_err(QueueError::io("sync", &self.path))?;
            hit("nextseq:after-sync").map_err(QueueError::io("sync", &self.path))?;
            self.len = line.len() as u64;
        } else {
            seqnum::write(&self.path, value)?;
            *self = NextSeq::open(&self.path)?;
        }
        self.value = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_place_and_shrinks_by_replacing_and_always_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        let mut n = NextSeq::open(&p).unwrap();
        assert_eq!(n.value(), 1);
        assert_eq!(std::fs::read(&p).unwrap(), b"1\n");
        for v in [2, 9, 10, 11, 99, 100, 12345] {
            n.set(v).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), format!("{v}\n").as_bytes());
            assert_eq!(seqnum::read(&p).unwrap(), Some(v));
        }
        n.set(3).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"3\n");
        n.set(4).unwrap();
        assert_eq!(NextSeq::open(&p).unwrap().value(), 4);
    }

    #[test]
    fn a_padded_file_from_elsewhere_is_read_and_then_normalised() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        std::fs::write(&p, "5        \n").unwrap();
        let mut n = NextSeq::open(&p).unwrap();
        assert_eq!(n.value(), 5);
        n.set(6).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"6\n");
    }

    #[test]
    fn a_torn_grow_still_reads_as_the_new_value() {
        // What a crash during "9\n" -> "10\n" can leave: new bytes, old length.
        assert_eq!(seqnum::parse(Path::new("x"), b"10").unwrap(), 10);
    }

    /// Every file state a crash can leave while `set` grows the line in
    /// place (given that a write within one sector is atomic): the old
    /// bytes; the new bytes under the old length (data written, size not);
    /// the old bytes under the new length (size written, data not: the
    /// tail reads as zeros); the new bytes. Each must read as the old or
    /// the new number, never as anything else.
    #[test]
    fn every_crash_state_of_an_in_place_advance_reads_as_old_or_new() {
        let mut values: Vec<u64> = (0..=1100).collect();
        let mut p = 10u64;
        while let Some(next) = p.checked_mul(10) {
            values.extend([p - 2, p - 1, p, p + 1]);
            p = next;
        }
        values.extend([p - 1, p, u64::MAX - 2, u64::MAX - 1]);
        for old in values {
            let new = old + 1;
            let (o, n) = (
                format!("{old}\n").into_bytes(),
                format!("{new}\n").into_bytes(),
            );
            assert!(n.len() >= o.len());
            let mut size_only = o.clone();
            size_only.resize(n.len(), 0);
            for state in [o.clone(), n[..o.len()].to_vec(), size_only, n.clone()] {
                let got = seqnum::parse(Path::new("x"), &state)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: state {state:?} unreadable: {e}"));
                assert!(
                    got == old || got == new,
                    "{old} -> {new}: state {:?} reads as {got}",
                    String::from_utf8_lossy(&state)
                );
            }
        }
    }

    #[test]
    fn open_creates_a_missing_file_holding_1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        let n = NextSeq::open(&p).unwrap();
        assert_eq!(n.value(), 1);
        assert_eq!(n.path(), p);
        assert_eq!(std::fs::read(&p).unwrap(), b"1\n");
    }

    #[test]
    fn a_malformed_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        for bad in [
            &b""[..],
            b"\n",
            b"abc\n",
            b"-3\n",
            b"18446744073709551616\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = NextSeq::open(&p).unwrap_err();
            assert!(
                matches!(e, QueueError::BadSeqNumber { .. }),
                "{bad:?}: {e:?}"
            );
            assert_eq!(std::fs::read(&p).unwrap(), bad);
        }
    }

    #[test]
    fn trailing_lines_are_ignored_and_dropped_by_the_next_set() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        std::fs::write(&p, "7\nwritten by hand\n").unwrap();
        let mut n = NextSeq::open(&p).unwrap();
        assert_eq!(n.value(), 7);
        n.set(8).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"8\n");
        // After the replace, the handle updates in place again.
        n.set(9).unwrap();
        n.set(10).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"10\n");
    }

    #[test]
    fn the_largest_value_is_stored_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        let mut n = NextSeq::open(&p).unwrap();
        n.set(u64::MAX).unwrap();
        assert_eq!(n.value(), u64::MAX);
        assert_eq!(NextSeq::open(&p).unwrap().value(), u64::MAX);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            format!("{}\n", u64::MAX).as_bytes()
        );
    }

    #[test]
    fn a_long_run_of_advances_never_leaves_anything_but_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nextseq");
        let mut n = NextSeq::open(&p).unwrap();
        for v in 2..=150u64 {
            n.set(v).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), format!("{v}\n").as_bytes());
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["nextseq"]);
    }
}
