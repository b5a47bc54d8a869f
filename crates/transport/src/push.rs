//! `fspl push`: send every job of an outbox to a [`Sink`], and remove each
//! from the outbox once the sink has acknowledged it durable.
//!
//! The order, for every backend:
//!
//! 1. take the outbox's lock (`nextseq.lock`, or `push.lock` for an
//!    outbox without one), so two pushes (or a push and a queue-process)
//!    never work on one outbox at once;
//! 2. read every job's header; order by seq (ties by name; encrypted jobs
//!    the sender cannot read come last, by name). A file that is not a
//!    readable job is refused: reported, left in the outbox;
//! 3. send the jobs one after the other, collecting acknowledgements as
//!    they arrive (the sink may pipeline and commit in batches);
//! 4. for acknowledged jobs, a batch at a time: unlink each from `jobs/`
//!    (`--keep`: move it to `OUTBOX/sent/`, never replacing a file there),
//!    then ONE fsync of `jobs/` (and of `sent/`). Only then do they count
//!    as sent. This runs on a thread of its own (the outbox is not the
//!    destination's directory), overlapping with the sending of the next
//!    jobs.
//!
//! A crash anywhere leaves every job not yet removed in the outbox, and
//! the next push sends it again: the destination gets a byte-identical
//! copy (under the same name where it keeps names), which its queue runs
//! once. A job the sink refuses stays in the outbox and is reported.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fspl_format::HeaderError;
use fspl_queue::failpoint::hit;
use fspl_queue::{Queue, QueueError};
use tracing::debug;

use crate::dir::{lock_queue, remove_durably, same_dir};
use crate::error::TransportError;
use crate::{Ack, OutgoingJob, Sink};

/// Acknowledged jobs are removed from the outbox when this many are
/// waiting (and at the end).
const REMOVE_BATCH: usize = 1024;

/// Where `--keep` moves sent jobs.
pub const SENT_DIR: &str = "sent";

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Move sent jobs to `OUTBOX/sent/` instead of deleting them.
    pub keep: bool,
}

/// A job that was not sent and stays where it is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub file: PathBuf,
    pub seq: Option<u64>,
    pub reason: String,
}

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Jobs acknowledged and removed from the outbox (or moved to sent/).
    pub sent: u64,
    pub bytes: u64,
    /// Jobs refused (by the sink, or unreadable here): still in the outbox.
    pub refused: Vec<Refusal>,
    /// Jobs found but neither sent nor refused (the push stopped early).
    pub unsent: u64,
    /// Jobs that left the outbox by other means while the push ran.
    pub gone: u64,
    /// What stopped the push early, if anything.
    pub error: Option<TransportError>,
    pub elapsed: Duration,
}

impl PushReport {
    /// Everything found was sent.
    pub fn complete(&self) -> bool {
        self.error.is_none() && self.refused.is_empty() && self.unsent == 0
    }
}

struct Item {
    name: OsString,
    seq: Option<u64>,
    /// The whole job, read with its header (small jobs, up to
    /// `KEEP_BUDGET` in all): sent from memory, the file not opened again.
    bytes: Option<std::sync::Arc<[u8]>>,
}

/// At most this many bytes of small jobs are kept from the scan.
const KEEP_BUDGET: u64 = 64 << 20;

/// Push every job of the queue directory `outbox` to `sink`. An `Err` is
/// an error before anything was sent (the outbox is missing, locked, or
/// is the destination); errors later are in the report, with what was
/// sent until then.
pub fn push(
    outbox: &Path,
    sink: &mut dyn Sink,
    opts: &PushOptions,
) -> Result<PushReport, TransportError> {
    let started = Instant::now();
    let q = Queue::new(outbox);
    q.check_exists()?;
    let _lock = lock_queue(outbox)?;
    if let Some(dest) = sink.delivers_into()
        && same_dir(dest, q.jobs_dir())
    {
        return Err(TransportError::SamePlace {
            path: dest.to_path_buf(),
            what: "is the outbox's own jobs/ directory; push to another directory",
        });
    }
    if has_a_job(&q) {
        // ssh's log-in (or any sink's connecting) overlaps with reading
        // every job's header.
        sink.prepare();
    }
    let mut report = PushReport::default();
    let items = list(&q, &mut report)?;
    let unreadable = report.refused.len();
    let jobs_fd = fspl_queue::durable::open_dir_following(q.jobs_dir())?;
    let remover = Remover::start(&q, &jobs_fd, opts.keep)?;
    let mut run = Run {
        q: &q,
        jobs_fd,
        inflight: HashMap::new(),
        acked: Vec::new(),
        remover,
        report,
    };
    let total = items.len() as u64;
    let result = run.send_all(sink, items);
    if let Err(e) = result {
        // Whatever was acknowledged before the failure is removed.
        if let Ok(acks) = sink.poll() {
            let _ = run.take_acks(acks);
        }
        run.report.error = Some(e);
    }
    run.remove_acked();
    let mut report = run.report;
    let (sent, bytes, error) = run.remover.finish();
    report.sent = sent;
    report.bytes = bytes;
    if let Some(e) = error {
        report.error.get_or_insert(e);
    }
    let refused_sent = (report.refused.len() - unreadable) as u64;
    report.unsent = total.saturating_sub(report.sent + refused_sent + report.gone);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Whether `jobs/` has at least one entry named like a job (one
/// directory read, usually).
fn has_a_job(q: &Queue) -> bool {
    std::fs::read_dir(q.jobs_dir()).is_ok_and(|mut rd| {
        rd.any(|e| {
            e.is_ok_and(|e| {
                matches!(
                    fspl_queue::classify(&e.file_name()),
                    fspl_queue::EntryKind::Job
                )
            })
        })
    })
}

/// The jobs of the outbox in the order they are sent; files that cannot
/// be sent go to `report.refused`.
fn list(q: &Queue, report: &mut PushReport) -> Result<Vec<Item>, TransportError> {
    let scan = fspl_queue::scan::scan_keeping(q, KEEP_BUDGET)?;
    let mut known: Vec<Item> = scan
        .jobs
        .into_iter()
        .map(|j| Item {
            name: j.name,
            seq: Some(j.seq),
            bytes: j.bytes,
        })
        .collect();
    let mut sealed = Vec::new();
    for s in scan.skipped {
        match &s.error {
            QueueError::BadJob {
                source: HeaderError::Encrypted | HeaderError::Decrypt(_),
                ..
            } => sealed.push(Item {
                name: s.name,
                seq: None,
                bytes: None,
            }),
            // Gone since the directory was read.
            QueueError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {}
            e => report.refused.push(Refusal {
                file: q.job_path(&s.name),
                seq: None,
                reason: fspl_queue::display_chain(e),
            }),
        }
    }
    known.sort_by(|a, b| (a.seq, &a.name).cmp(&(b.seq, &b.name)));
    sealed.sort_by(|a, b| a.name.cmp(&b.name));
    known.extend(sealed);
    Ok(known)
}

struct Run<'a> {
    q: &'a Queue,
    jobs_fd: File,
    inflight: HashMap<u64, (Item, u64)>,
    /// Acknowledged, not yet handed to the remover: (name, len).
    acked: Vec<(OsString, u64)>,
    remover: Remover,
    report: PushReport,
}

impl Run<'_> {
    fn send_all(&mut self, sink: &mut dyn Sink, items: Vec<Item>) -> Result<(), TransportError> {
        for (id, mut item) in items.into_iter().enumerate() {
            if self.remover.failed() {
                // Its error is reported when it is joined.
                return Ok(());
            }
            let id = id as u64;
            if let Some(bytes) = item.bytes.take() {
                let len = bytes.len() as u64;
                let mut job = OutgoingJob {
                    name: &item.name,
                    seq: item.seq,
                    len,
                    reader: &mut &bytes[..],
                };
                sink.send(id, &mut job)?;
                self.sent(sink, id, item, len)?;
                continue;
            }
            let path = self.q.job_path(&item.name);
            let (mut file, len) = match open_job(&self.jobs_fd, &item.name, &path) {
                Ok(f) => f,
                Err(QueueError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    debug!(file = ?item.name, "gone from the outbox before it was sent");
                    self.report.gone += 1;
                    continue;
                }
                Err(e) => {
                    self.report.refused.push(Refusal {
                        file: self.q.job_path(&item.name),
                        seq: item.seq,
                        reason: fspl_queue::display_chain(&e),
                    });
                    continue;
                }
            };
            let mut job = OutgoingJob {
                name: &item.name,
                seq: item.seq,
                len,
                reader: &mut file,
            };
            sink.send(id, &mut job)?;
            self.sent(sink, id, item, len)?;
        }
        sink.finish(&mut |acks| self.acknowledged(acks))?;
        if !self.inflight.is_empty() {
            return Err(TransportError::Backend {
                message: format!(
                    "the destination finished without acknowledging {} job(s)",
                    self.inflight.len()
                ),
                kind: crate::TransportErrorKind::Transient,
            });
        }
        Ok(())
    }

    /// Job `id` was handed to the sink: note it, and take the
    /// acknowledgements that came meanwhile.
    fn sent(
        &mut self,
        sink: &mut dyn Sink,
        id: u64,
        item: Item,
        len: u64,
    ) -> Result<(), TransportError> {
        self.inflight.insert(id, (item, len));
        let acks = sink.poll()?;
        self.acknowledged(acks)
    }

    /// Take acknowledgements, and hand a full batch of them to the
    /// remover.
    fn acknowledged(&mut self, acks: Vec<Ack>) -> Result<(), TransportError> {
        self.take_acks(acks)?;
        if self.acked.len() >= REMOVE_BATCH {
            self.remove_acked();
        }
        Ok(())
    }

    fn take_acks(&mut self, acks: Vec<Ack>) -> Result<(), TransportError> {
        for ack in acks {
            let id = match &ack {
                Ack::Durable(id) | Ack::Refused { id, .. } => *id,
            };
            let Some((item, len)) = self.inflight.remove(&id) else {
                return Err(TransportError::Backend {
                    message: format!(
                        "the destination acknowledged job {id}, which it was not sent"
                    ),
                    kind: crate::TransportErrorKind::Permanent,
                });
            };
            match ack {
                Ack::Durable(_) => self.acked.push((item.name, len)),
                Ack::Refused { reason, .. } => self.report.refused.push(Refusal {
                    file: self.q.job_path(&item.name),
                    seq: item.seq,
                    reason,
                }),
            }
        }
        Ok(())
    }

    /// Hand every acknowledged job to the remover.
    fn remove_acked(&mut self) {
        if !self.acked.is_empty() {
            self.remover.submit(std::mem::take(&mut self.acked));
        }
    }
}

/// Removes acknowledged jobs from the outbox (or moves them to `sent/`),
/// a batch at a time, durably, on a thread of its own: the outbox's
/// directory is not the destination's, so unlinking one batch overlaps
/// with receiving the next on another core.
struct Remover {
    tx: Option<std::sync::mpsc::Sender<Vec<(OsString, u64)>>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64, Option<TransportError>)>>,
}

impl Remover {
    fn start(q: &Queue, jobs_fd: &File, keep: bool) -> Result<Remover, TransportError> {
        let q = q.clone();
        let jobs_path = q.jobs_dir().to_path_buf();
        let jobs_fd = jobs_fd
            .try_clone()
            .map_err(|e| TransportError::io("open directory", &jobs_path, e))?;
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failed.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(OsString, u64)>>();
        let thread = std::thread::Builder::new()
            .name("fspl-remove".into())
            .spawn(move || {
                let (mut sent, mut bytes) = (0u64, 0u64);
                for acked in rx {
                    let done = remove_batch(&q, &jobs_fd, keep, &acked);
                    if let Err(e) = done {
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        return (sent, bytes, Some(e));
                    }
                    sent += acked.len() as u64;
                    bytes += acked.iter().map(|a| a.1).sum::<u64>();
                }
                (sent, bytes, None)
            })
            .map_err(|e| TransportError::io("start a thread to clean up", &jobs_path, e))?;
        Ok(Remover {
            tx: Some(tx),
            failed,
            thread: Some(thread),
        })
    }

    fn submit(&self, batch: Vec<(OsString, u64)>) {
        if let Some(tx) = &self.tx {
            // A remover that stopped has its error; the rest stays.
            let _ = tx.send(batch);
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait for every batch handed over: jobs and bytes removed, and the
    /// error that stopped it, if any.
    fn finish(&mut self) -> (u64, u64, Option<TransportError>) {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => (
                0,
                0,
                Some(TransportError::Backend {
                    message: "the thread removing sent jobs from the outbox panicked".into(),
                    kind: crate::TransportErrorKind::Permanent,
                }),
            ),
            None => (0, 0, None),
        }
    }
}

/// Remove (or move to sent/) one batch of acknowledged jobs, durably.
fn remove_batch(
    q: &Queue,
    jobs_fd: &File,
    keep: bool,
    acked: &[(OsString, u64)],
) -> Result<(), TransportError> {
    hit("push:after-ack").map_err(|e| TransportError::io("remove", q.jobs_dir(), e))?;
    if keep {
        move_to_sent(q, jobs_fd, acked.iter().map(|a| a.0.as_os_str()))
    } else {
        remove_durably(
            jobs_fd,
            q.jobs_dir(),
            acked.iter().map(|a| a.0.as_os_str()),
            "push",
        )
    }
}

/// Open a job file of the outbox for sending (no link followed, no
/// blocking on a FIFO, regular files only): the file and its length.
fn open_job(jobs: &File, name: &OsStr, path: &Path) -> Result<(File, u64), QueueError> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        jobs,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| QueueError::Io {
        action: if e == rustix::io::Errno::LOOP {
            "open (symbolic links are not followed)"
        } else {
            "open"
        },
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| QueueError::Io {
        action: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(QueueError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    Ok((file, meta.len()))
}

/// Move each job from `jobs/` to `sent/` without replacing anything there
/// (a taken name gets a suffix, as in quarantine), then fsync `sent/` and
/// `jobs/`.
fn move_to_sent<'a>(
    q: &Queue,
    jobs_fd: &File,
    names: impl IntoIterator<Item = &'a OsStr>,
) -> Result<(), TransportError> {
    use rustix::io::Errno;
    let sent_path = q.dir().join(SENT_DIR);
    let sent = fspl_queue::durable::ensure_dir(q.dir(), &sent_path)?;
    for (i, name) in names.into_iter().enumerate() {
        if i == 1 {
            hit("push:mid-remove")
                .map_err(|e| TransportError::io("move to sent/", q.job_path(name), e))?;
        }
        let mut n = 0u32;
        loop {
            let cand = fspl_queue::quarantine::suffixed(name, n);
            match fspl_queue::batch::rename_noreplace(jobs_fd, name, &sent, &cand) {
                Ok(()) | Err(Errno::NOENT) => break,
                Err(Errno::EXIST) if n < 100_000 => n += 1,
                Err(e) => {
                    return Err(TransportError::io(
                        "move to sent/",
                        sent_path.join(&cand),
                        e.into(),
                    ));
                }
            }
        }
    }
    hit("push:before-remove-sync")
        .map_err(|e| TransportError::io("sync directory", &sent_path, e))?;
    sent.sync_all()
        .map_err(|e| TransportError::io("sync directory", &sent_path, e))?;
    jobs_fd
        .sync_all()
        .map_err(|e| TransportError::io("sync directory", q.jobs_dir(), e))?;
    hit("push:after-remove-sync").map_err(|e| TransportError::io("sync directory", q.jobs_dir(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AckSink;
    use crate::dir::{DirSink, DirSource};
    use crate::pull::{PullOptions, pull};
    use fspl_queue::batch::BatchLimits;

    fn job(seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = fspl_format::JobHeader {
            seq,
            ctime: fspl_format::Ctime { secs: 1, nanos: 2 },
            cmd_type: fspl_format::CmdType::Nop,
        };
        let mut out = h.encode().unwrap();
        out.extend_from_slice(payload);
        out
    }

    fn outbox(dir: &Path, seqs: &[u64]) -> Queue {
        let q = Queue::init(dir.join("outbox").as_os_str(), false).unwrap();
        for &s in seqs {
            q.write_job(&mut job(s, format!("p{s}").as_bytes()).as_slice())
                .unwrap();
        }
        q
    }

    fn small(max_jobs: usize) -> BatchLimits {
        BatchLimits {
            max_jobs,
            ..BatchLimits::default()
        }
    }

    fn files(dir: &Path) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn jobs_are_listed_in_seq_order_and_unreadable_files_refused() {
        let d = tempfile::tempdir().unwrap();
        let q = outbox(d.path(), &[5, 1, 3, 3]);
        std::fs::write(q.job_path(OsStr::new("fspl-bad.fspl")), b"junk").unwrap();
        let mut report = PushReport::default();
        let items = list(&q, &mut report).unwrap();
        let seqs: Vec<Option<u64>> = items.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [Some(1), Some(3), Some(3), Some(5)]);
        assert!(items[1].name < items[2].name, "ties by name");
        assert_eq!(report.refused.len(), 1);
        assert!(report.refused[0].file.ends_with("fspl-bad.fspl"));
    }

    #[test]
    fn a_push_in_several_batches_sends_everything_and_a_pull_takes_it_back() {
        let d = tempfile::tempdir().unwrap();
        let seqs: Vec<u64> = (1..=7).rev().collect();
        let q = outbox(d.path(), &seqs);
        let sent = files(q.jobs_dir());
        let folder = d.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let mut sink = DirSink::with_limits(&folder, small(3)).unwrap();
        let r = push(q.dir(), &mut sink, &PushOptions::default()).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.sent, 7);
        assert_eq!(r.bytes, sent.iter().map(|b| b.len() as u64).sum::<u64>());
        assert!(files(q.jobs_dir()).is_empty());
        assert_eq!(files(&folder), sent);

        let dest = Queue::init(d.path().join("dest").as_os_str(), false).unwrap();
        let mut source = DirSource::open(&folder).unwrap();
        let r = pull(&mut source, &dest, &PullOptions::default()).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.taken, 7);
        assert!(files(&folder).is_empty());
        assert_eq!(files(dest.jobs_dir()), sent);
    }

    #[test]
    fn keep_moves_to_sent_and_an_outbox_is_never_its_own_destination() {
        let d = tempfile::tempdir().unwrap();
        let q = outbox(d.path(), &[1, 2]);
        let sent = files(q.jobs_dir());
        let mut sink = DirSink::open(q.dir()).unwrap();
        let e = push(q.dir(), &mut sink, &PushOptions::default()).unwrap_err();
        assert!(matches!(e, TransportError::SamePlace { .. }), "{e:?}");
        assert_eq!(files(q.jobs_dir()), sent);
        let dest = d.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut sink = DirSink::open(&dest).unwrap();
        let r = push(q.dir(), &mut sink, &PushOptions { keep: true }).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!(files(&q.dir().join(SENT_DIR)), sent);
        assert_eq!(files(&dest), sent);
    }

    /// A destination that takes every job and answers only in `finish`:
    /// first `REMOVE_BATCH` acknowledgements, then (after looking at the
    /// outbox) the rest.
    #[derive(Default)]
    struct Late {
        prepared: bool,
        ids: Vec<u64>,
        /// Jobs left in the outbox while `finish` still held the rest.
        left_meanwhile: Option<usize>,
        outbox: PathBuf,
    }

    impl Sink for Late {
        fn prepare(&mut self) {
            self.prepared = true;
        }
        fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError> {
            std::io::copy(job.reader, &mut std::io::sink()).unwrap();
            self.ids.push(id);
            Ok(())
        }
        fn poll(&mut self) -> Result<Vec<Ack>, TransportError> {
            Ok(Vec::new())
        }
        fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
            if self.ids.is_empty() {
                return Ok(());
            }
            let rest = self.ids.split_off(REMOVE_BATCH);
            let total = REMOVE_BATCH + rest.len();
            acked(self.ids.drain(..).map(Ack::Durable).collect())?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let left = || std::fs::read_dir(&self.outbox).unwrap().count();
            while left() > total - REMOVE_BATCH && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.left_meanwhile = Some(left());
            acked(rest.into_iter().map(Ack::Durable).collect())
        }
    }

    /// Regression: the acknowledgements a destination gave after the last
    /// job was sent were removed from the outbox only once all of them
    /// had come, so a fast push did all its removing at the end.
    #[test]
    fn acknowledgements_after_the_last_job_are_removed_as_they_come() {
        let d = tempfile::tempdir().unwrap();
        let q = outbox(d.path(), &[]);
        let mut sink = Late {
            outbox: q.jobs_dir().to_path_buf(),
            ..Late::default()
        };
        // An empty outbox: nothing to connect to.
        let r = push(q.dir(), &mut sink, &PushOptions::default()).unwrap();
        assert!(r.complete() && r.sent == 0, "{r:?}");
        assert!(!sink.prepared);
        let n = REMOVE_BATCH as u64 + 10;
        for seq in 1..=n {
            let name = format!("fspl-00000000-0000-4000-8000-{seq:012}.fspl");
            std::fs::write(q.job_path(OsStr::new(&name)), job(seq, b"x")).unwrap();
        }
        let r = push(q.dir(), &mut sink, &PushOptions::default()).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.sent, n);
        assert!(sink.prepared, "told before the headers were read");
        assert_eq!(
            sink.left_meanwhile,
            Some(10),
            "the first part removed before the rest came"
        );
        assert!(files(q.jobs_dir()).is_empty());
    }

    #[test]
    fn small_jobs_are_kept_whole_from_the_scan_within_a_budget_and_large_ones_opened_again() {
        let d = tempfile::tempdir().unwrap();
        let q = outbox(d.path(), &[1, 2]);
        let big = job(3, &vec![b'x'; fspl_queue::scan::KEEP_UP_TO as usize]);
        q.write_job(&mut big.as_slice()).unwrap();
        let mut report = PushReport::default();
        let items = list(&q, &mut report).unwrap();
        for item in &items[..2] {
            let on_disk = std::fs::read(q.job_path(&item.name)).unwrap();
            assert_eq!(item.bytes.as_deref(), Some(&on_disk[..]));
        }
        assert!(items[2].bytes.is_none(), "above KEEP_UP_TO");
        // A budget for one small job: the other is read again.
        let one = items[0].bytes.as_ref().unwrap().len() as u64;
        let scan = fspl_queue::scan::scan_keeping(&q, one + 1).unwrap();
        let kept = scan.jobs.iter().filter(|j| j.bytes.is_some()).count();
        assert_eq!((scan.jobs.len(), kept), (3, 1));
        // Sent from memory or not, what arrives is the file.
        let sent = files(q.jobs_dir());
        let folder = d.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let mut sink = DirSink::open(&folder).unwrap();
        let r = push(q.dir(), &mut sink, &PushOptions::default()).unwrap();
        assert!(r.complete() && r.sent == 3, "{r:?}");
        assert_eq!(files(&folder), sent);
    }
}
