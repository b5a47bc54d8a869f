//! Read leases: reading a job file that nobody can write meanwhile.
//!
//! With a trust file the command must read exactly the bytes that were
//! checked. Copying the payload guarantees that but costs a second write
//! of it. A read lease (`fcntl(F_SETLEASE, F_RDLCK)`) proves the same
//! without a copy, on local file systems where every writer goes through
//! this kernel:
//!
//! - it is granted only while nobody has the file open for writing (a
//!   shared writable mapping counts), so no writer can be in the middle of
//!   a change when we start;
//! - any later open for writing (or truncate) first *breaks* it: the opener
//!   is held until we release the lease (or `/proc/sys/fs/lease-break-time`,
//!   45 s by default, has passed), and the lease reports the break at once
//!   (`F_GETLEASE` no longer says `F_RDLCK`).
//!
//! So bytes read while the lease still reads `F_RDLCK` *after* the read are
//! the bytes the file held when the lease was taken. We hash the payload
//! under the lease, then feed it to the command through a pipe: a thread
//! splices a block (the pipe takes references to the file's pages, no
//! copy), checks the lease, and goes on only while it stands. The last
//! pipe's worth is copied instead, which pushes every spliced page out of
//! the pipe, so the lease can go as soon as the whole payload is in (a
//! writer waits at most as long as the command takes to read it). When
//! feeding stops early, or the lease breaks, we empty the pipe through a
//! read end of our own before the lease goes, so nothing left holding the
//! pipe (a background child) reads a page a writer changed. The command
//! never holds the job file itself, so neither it nor anything it starts
//! (a `tar` under `sh`) can read the file after a writer got in. A break
//! while feeding kills the command (before the lease is released) and
//! fails the job, so that it is checked again on the next run.
//!
//! Where a lease cannot be had (someone has the file open for writing, we
//! are neither its owner nor have `CAP_LEASE`, leases are disabled, or the
//! file system is not one where local leases see every writer: network
//! and FUSE file systems can change under us) the caller copies the
//! payload instead.

use std::fs::File;
use std::io::{self, ErrorKind, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use fspl_format::Extension;

use crate::concurrent::{Problem, ProblemKind, check_file_range};
use crate::exec::KillHandle;

/// `fcntl` command to choose the signal sent on a lease break (Linux:
/// asm-generic/fcntl.h; the libc crate does not define it for glibc).
const F_SETSIG: libc::c_int = 10;

/// File systems whose every write goes through this kernel's VFS, so that
/// a local lease sees every writer.
const LOCAL_FS: [i64; 7] = [
    0xEF53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
    0xCA45_1A4E, // bcachefs
    0x2FC1_2FC1, // zfs
];

/// How long the feeding thread sleeps at most while the pipe is full
/// before it looks at the lease again.
const POLL_MS: libc::c_int = 20;
/// Bytes per read of the job file and write to the pipe.
const BLOCK: usize = 1 << 20;

/// A read lease on a job file.
pub struct ReadLease {
    file: Arc<File>,
    held: bool,
}

impl ReadLease {
    /// Take a read lease on `file`, which must have been opened read-only.
    /// `None` when none can be had (see the module documentation).
    pub fn take(file: Arc<File>) -> Option<ReadLease> {
        let fd = file.as_raw_fd();
        // SAFETY: statfs is plain data, filled in by fstatfs on our own
        // descriptor; the result is checked.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)]
        let kind = st.f_type as i64;
        if !LOCAL_FS.contains(&kind) {
            return None;
        }
        // A break signals the descriptor's owner (us: taking the lease
        // makes us its owner) with SIGIO, whose default action ends the
        // process. SIGURG's default is to be ignored: nothing is delivered,
        // and the break is seen by asking (F_GETLEASE).
        // SAFETY: fcntl on a descriptor we own; results checked.
        unsafe {
            if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
                return None;
            }
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
                return None;
            }
        }
        Some(ReadLease { file, held: true })
    }

    /// Whether the lease still stands: nobody has opened the file for
    /// writing (or truncated it) since it was taken.
    pub fn intact(&self) -> bool {
        // SAFETY: fcntl on a descriptor we own.
        self.held
            && unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) } == libc::F_RDLCK
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Let writers in.
    pub fn release(&mut self) {
        if self.held {
            self.held = false;
            // SAFETY: fcntl on a descriptor we own; nothing to do on error
            // (closing the descriptor ends the lease too).
            unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        }
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        self.release();
    }
}

/// What checking a payload under a read lease found.
pub enum Leased {
    /// It matches its header, and nobody has opened the file for writing
    /// since the lease was taken: feed it with [`LeaseFeed`] (`len` bytes).
    Passed(ReadLease, u64),
    /// It does not match its header: why.
    Failed(String),
    /// No lease could be had, or a writer opened the file while it was
    /// being checked: check it another way (a private copy).
    Unavailable,
}

/// Take a read lease on (a duplicate of) `file` and check the payload
/// that starts at `offset` under it. A read error is returned as such.
pub fn check_under_lease(file: &File, offset: u64, ext: &Extension) -> io::Result<Leased> {
    let Some(lease) = ReadLease::take(Arc::new(file.try_clone()?)) else {
        return Ok(Leased::Unavailable);
    };
    let len = match ext.payload_len {
        Some(l) => l,
        None => lease.file().metadata()?.len().saturating_sub(offset),
    };
    let found = check_file_range(lease.file(), offset, ext, &AtomicBool::new(false))?;
    if !lease.intact() {
        return Ok(Leased::Unavailable);
    }
    Ok(match found {
        None => Leased::Passed(lease, len),
        Some(why) => Leased::Failed(why),
    })
}

/// How feeding the pipe ended.
enum Fed {
    /// All of it is in the pipe (or the command closed it): copies only.
    Done,
    /// The command ended first.
    Stopped,
    /// Someone opened the job file for writing; the command was killed (or
    /// is killed as soon as it starts).
    Broken,
    Error(io::Error),
}

/// What the feeding needs, moved into its thread.
struct Feeder {
    lease: ReadLease,
    /// `None` once the command has all of its payload (or must get no more).
    writer: Option<PipeWriter>,
    /// A non-blocking read end of the same pipe, to empty it before the
    /// lease is let go: spliced bytes in the pipe are the file's own pages,
    /// which a writer let in could change before a (background) reader
    /// gets them. `None`: nothing is spliced.
    drain: Option<File>,
    cancel: io::PipeReader,
    offset: u64,
    len: u64,
    /// Bytes already in the pipe.
    pos: u64,
    /// Bytes before this position are spliced (page references, no copy);
    /// the rest, one pipe's worth, is copied. Once that copy is all in the
    /// pipe it fills every slot, so no spliced page is left in it.
    splice_end: u64,
    /// Read and checked: `buf[done..filled]` is not yet in the pipe (it
    /// follows `pos`).
    buf: Vec<u8>,
    done: usize,
    filled: usize,
}

/// Feeds a leased payload to the command through a pipe.
pub struct LeaseFeed {
    feeder: Option<Feeder>,
    /// How feeding ended before the command started, if it did.
    early: Option<Fed>,
    cancel_tx: Option<OwnedFd>,
    ended: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Fed, Feeder)>>,
    no_thread: bool,
}

impl LeaseFeed {
    /// A pipe for the command to read bytes `[offset, offset + len)` of the
    /// leased file from. As much as the pipe holds is written at once,
    /// before the command starts: a payload that fits is all in the pipe
    /// (copied), and the lease released, before the command can do
    /// anything.
    pub fn new(lease: ReadLease, offset: u64, len: u64) -> io::Result<(PipeReader, LeaseFeed)> {
        let (reader, writer) = io::pipe()?;
        let (cancel_rx, cancel_tx) = io::pipe()?;
        // SAFETY: fcntl on our own pipe descriptors; a larger pipe means
        // fewer wake-ups, and failing to get one changes nothing else (the
        // size it has is asked for below).
        let cap = unsafe {
            libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, BLOCK as libc::c_int);
            let fl = libc::fcntl(writer.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::fcntl(writer.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        // A read end of our own that never waits (a new open of the same
        // pipe: its non-blocking flag is not the command's). Without it, or
        // without the pipe's size (the copied tail must fill the pipe),
        // everything is copied.
        let drain = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", reader.as_raw_fd()))
            .ok();
        let splice_end = match (u64::try_from(cap), &drain) {
            (Ok(cap), Some(_)) if cap > 0 => len.saturating_sub(cap),
            _ => 0,
        };
        let mut feeder = Feeder {
            lease,
            writer: Some(writer),
            drain,
            cancel: cancel_rx,
            offset,
            len,
            pos: 0,
            splice_end,
            buf: vec![0u8; BLOCK.min(len.max(1) as usize)],
            done: 0,
            filled: 0,
        };
        let early = feeder.fill();
        let feeder = match early {
            Some(Fed::Done) => {
                // All of it is in the pipe (copies: it fits): writers may
                // come, and the command gets the end of its payload after it.
                feeder.lease.release();
                None
            }
            _ => Some(feeder),
        };
        Ok((
            reader,
            LeaseFeed {
                feeder,
                early,
                cancel_tx: Some(OwnedFd::from(cancel_tx)),
                ended: Arc::new(AtomicBool::new(false)),
                thread: None,
                no_thread: false,
            },
        ))
    }

    /// The command runs: feed it the rest (killing it through `command`
    /// should the lease break).
    pub fn spawned(&mut self, command: &KillHandle) {
        if matches!(self.early, Some(Fed::Broken | Fed::Error(_))) {
            command.kill();
            return;
        }
        let Some(feeder) = self.feeder.take() else {
            return;
        };
        let (ended, handle) = (self.ended.clone(), command.clone());
        let spawned = std::thread::Builder::new()
            .name("fspl-feed".into())
            .stack_size(256 * 1024)
            .spawn(move || feeder.run(&ended, &handle));
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(_) => {
                // No thread to feed it: the command must not take the end
                // of the pipe for the end of its payload.
                command.kill();
                self.no_thread = true;
            }
        }
    }

    /// The command has ended (been reaped), or never started. Stop
    /// feeding, release the lease; a break while the command read (or
    /// before it started) fails the job.
    pub fn finish(mut self) -> Option<Problem> {
        self.ended.store(true, Ordering::SeqCst);
        drop(self.cancel_tx.take());
        let fed = match (self.thread.take(), self.early.take()) {
            (Some(t), _) => match t.join() {
                Ok((fed, feeder)) => {
                    // Empties the pipe, then lets writers in.
                    drop(feeder);
                    fed
                }
                Err(_) => Fed::Error(io::Error::other("the payload thread failed")),
            },
            (None, Some(fed)) => fed,
            (None, None) if self.no_thread => Fed::Broken,
            // Never started (a NOP job, or the command could not start);
            // the lease goes with the feeder.
            (None, None) => Fed::Stopped,
        };
        drop(self.feeder.take());
        match fed {
            Fed::Done | Fed::Stopped => None,
            Fed::Broken => Some(Problem {
                why: "the job file was opened for writing while its command was reading the \
                      payload; the command was killed, and the job will be checked again"
                    .into(),
                kind: ProblemKind::Tampered,
            }),
            Fed::Error(e) => Some(Problem {
                why: format!("reading the payload: {e}"),
                kind: ProblemKind::Tampered,
            }),
        }
    }
}

impl Feeder {
    /// Write what the pipe takes without waiting; `Some` when feeding is
    /// over (all written, or the lease broke, or an error).
    fn fill(&mut self) -> Option<Fed> {
        loop {
            if self.done == self.filled {
                if self.pos >= self.len {
                    return Some(Fed::Done);
                }
                if self.pos < self.splice_end {
                    match self.splice() {
                        Ok(true) => continue,
                        Ok(false) => return None,
                        Err(fed) => return Some(fed),
                    }
                }
                match self.read_checked() {
                    Ok(()) => {}
                    Err(fed) => return Some(fed),
                }
            }
            let Some(writer) = &self.writer else {
                return Some(Fed::Done);
            };
            match (&*writer).write(&self.buf[self.done..self.filled]) {
                Ok(k) => {
                    self.done += k;
                    self.pos += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Some(Fed::Error(e)),
            }
        }
    }

    /// Move the next bytes before `splice_end` into the pipe as references
    /// to the file's pages: true when some moved, false when the pipe is
    /// full. A file system that cannot splice gets copies from here on.
    fn splice(&mut self) -> Result<bool, Fed> {
        let Some(writer) = &self.writer else {
            return Ok(false);
        };
        let want = (self.splice_end - self.pos).min(BLOCK as u64) as usize;
        let mut at = (self.offset + self.pos) as libc::loff_t;
        // SAFETY: splice between a file and a pipe we hold, with our own
        // offset variable; the result is checked.
        let n = unsafe {
            libc::splice(
                self.lease.file().as_raw_fd(),
                &mut at,
                writer.as_raw_fd(),
                std::ptr::null_mut(),
                want,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::WouldBlock => Ok(false),
                ErrorKind::Interrupted => Ok(true),
                _ if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.splice_end = self.pos;
                    Ok(true)
                }
                _ => Err(Fed::Error(e)),
            };
        }
        self.moved(n as usize)?;
        self.pos += n as u64;
        Ok(true)
    }

    /// After `n` bytes were read or spliced: they are the checked bytes if
    /// the lease still stands and the file did not end early (with the
    /// lease intact it cannot be shorter than when it was checked; fail
    /// rather than feed a short payload).
    fn moved(&self, n: usize) -> Result<(), Fed> {
        if !self.lease.intact() {
            return Err(Fed::Broken);
        }
        if n == 0 {
            return Err(Fed::Error(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the job file is shorter than when it was checked",
            )));
        }
        Ok(())
    }

    /// Read the next block into `buf` (all of it written already), and
    /// check that the lease still stood when the read was over: then these
    /// are the checked bytes.
    fn read_checked(&mut self) -> Result<(), Fed> {
        let at = self.pos;
        let want = (self.len - at).min(self.buf.len() as u64) as usize;
        let n = loop {
            match self
                .lease
                .file()
                .read_at(&mut self.buf[..want], self.offset + at)
            {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Fed::Error(e)),
            }
        };
        self.moved(n)?;
        (self.done, self.filled) = (0, n);
        Ok(())
    }

    /// Feed the rest while the command runs.
    fn run(mut self, ended: &AtomicBool, command: &KillHandle) -> (Fed, Feeder) {
        let fed = loop {
            if ended.load(Ordering::SeqCst) {
                break Fed::Stopped;
            }
            if let Some(fed) = self.fill() {
                break fed;
            }
            // The pipe is full: sleep until it has room or the job is
            // over, looking at the lease now and then (a writer waits for
            // us: stop the command now, not when it next wants data).
            if self.wait_for_room() || ended.load(Ordering::SeqCst) {
                break Fed::Stopped;
            }
            if !self.lease.intact() {
                break Fed::Broken;
            }
        };
        match fed {
            Fed::Done => {
                // All of it is in the pipe, and the copied tail has pushed
                // every spliced page out of it: writers may come.
                self.lease.release();
                self.writer = None;
            }
            Fed::Broken | Fed::Error(_) => {
                // Take back what is in the pipe before anything else: the
                // writer waits for the lease, but only so long.
                self.empty_pipe();
                command.kill();
                // Keep the pipe open until the job is over: the killed
                // command must not see an early end of its payload as a
                // normal one.
                wait_readable(&self.cancel, -1);
            }
            Fed::Stopped => {}
        }
        (fed, self)
    }

    /// Take out whatever the pipe holds; never waits.
    fn empty_pipe(&mut self) {
        let Some(drain) = &self.drain else {
            return;
        };
        loop {
            match (&*drain).read(&mut self.buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Sleep until the pipe has room; true when the job is over instead.
    fn wait_for_room(&self) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        let mut fds = [
            libc::pollfd {
                fd: writer.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: self.cancel.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds on descriptors we hold.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        fds[1].revents != 0
    }
}

impl Drop for Feeder {
    /// Feeding stopped before the end (or never began): close the pipe and
    /// empty it while the lease still keeps writers out, so that whatever
    /// still holds its read end (a background child) never reads a spliced
    /// page after a writer got in. Then the lease goes.
    fn drop(&mut self) {
        if self.lease.held {
            self.writer = None;
            self.empty_pipe();
            self.lease.release();
        }
    }
}

/// Sleep until `fd` is readable (or closed by its writer), at most `ms`
/// milliseconds (-1: no limit).
fn wait_readable(fd: &io::PipeReader, ms: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on a descriptor we hold.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 || io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn local(dir: &std::path::Path) -> bool {
        let f = File::open(dir).unwrap();
        // SAFETY: plain data filled in by fstatfs on our own descriptor.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) }, 0);
        #[allow(clippy::unnecessary_cast)]
        LOCAL_FS.contains(&(st.f_type as i64))
    }

    fn ext_for(payload: &[u8]) -> Extension {
        let (len, digest) =
            fspl_trust::digest::hash_reader(fspl_format::DigestAlg::Blake3, &mut &payload[..])
                .unwrap();
        Extension {
            payload_len: Some(len),
            digest: Some(digest),
            ..Extension::default()
        }
    }

    /// A lease is never had while someone can write the file, and any
    /// open for writing afterwards shows at once (here a non-blocking
    /// open, which fails instead of waiting for the lease).
    #[test]
    fn a_lease_is_refused_to_open_writers_and_broken_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job");
        std::fs::write(&p, b"HEADERpayload").unwrap();
        let take = || ReadLease::take(Arc::new(File::open(&p).unwrap()));
        let Some(lease) = take() else {
            assert!(
                !local(dir.path()),
                "no lease on a local file system (as root?)"
            );
            return;
        };
        assert!(lease.intact());
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p);
        assert_eq!(
            opened.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::WouldBlock),
            "a writer got past the lease"
        );
        assert!(!lease.intact(), "the break was not seen");
        drop(lease);
        // Released: the writer gets in; and while it has the file open, no
        // new lease is granted.
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert!(take().is_none(), "a lease was granted with a writer open");
        drop(w);
        assert!(take().is_some());
    }

    #[test]
    fn a_payload_is_checked_under_a_lease_or_said_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job");
        let payload: Vec<u8> = (0..(5 << 20) + 3).map(|i| (i % 251) as u8).collect();
        let mut content = b"HEADER".to_vec();
        content.extend_from_slice(&payload);
        std::fs::write(&p, &content).unwrap();
        let f = File::open(&p).unwrap();
        let ext = ext_for(&payload);
        match check_under_lease(&f, 6, &ext).unwrap() {
            Leased::Passed(l, len) => {
                assert_eq!(len, payload.len() as u64);
                assert!(l.intact());
            }
            Leased::Unavailable => {
                assert!(!local(dir.path()));
                return;
            }
            Leased::Failed(why) => panic!("{why}"),
        }
        let mut other = payload.clone();
        other[4 << 20] ^= 1;
        match check_under_lease(&f, 6, &ext_for(&other)).unwrap() {
            Leased::Failed(why) => assert!(why.contains("does not match"), "{why}"),
            _ => panic!("a different digest passed"),
        }
        let _w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        assert!(matches!(
            check_under_lease(&f, 6, &ext).unwrap(),
            Leased::Unavailable
        ));
    }
}
