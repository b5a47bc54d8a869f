//! A queue directory: `nextseq`, `nextseq.lock` and `jobs/`.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};

use std::sync::Arc;

use fspl_codec::{Compression, Peeked};
use fspl_format::{Decoded, Extension, HeaderError, JobHeader, read_header};
use fspl_trust::crypt::{BINARY_MAGIC, Identities, decrypt, decrypt_file, is_age};

use crate::bounded::Bounded;
use crate::concurrent::{FileCheck, Problem, ProblemKind};
use crate::decoder::{Decoder, DecoderChild};
use crate::durable::{parent_dir, sync_dir};
use crate::error::{QueueError, Result};
use crate::exec::KillHandle;
use crate::failpoint::hit;
use crate::lease::LeaseFeed;
use crate::lock::FileLock;
use crate::pump::{Check, Pump};
use crate::seqnum;

/// Prefix of the temporary names `queue-write` streams into. They never look
/// like jobs (`fspl-*.fspl`), so no reader can take a partial file for one.
pub const TEMP_PREFIX: &str = ".fspl-tmp-";
/// What Filespooler 1.2.4 names its temporaries: `tmp-fspl-<uuid>.fspl.tmp`.
pub const REFERENCE_TEMP_PREFIX: &str = "tmp-fspl-";

/// The file in a queue directory that holds its name.
pub const NAME_FILE: &str = "name";

/// What a name in `jobs/` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// `fspl-*.fspl`
    Job,
    /// One of our `queue-write` temporaries.
    Temp,
    /// A Filespooler 1.2.4 `queue-write` temporary.
    ReferenceTemp,
    /// Anything else (`.out` files, other files): ignored.
    Other,
}

pub fn classify(name: &OsStr) -> EntryKind {
    let b = name.as_bytes();
    if b.starts_with(b"fspl-") && b.ends_with(b".fspl") && b.len() > 10 {
        EntryKind::Job
    } else if b.starts_with(TEMP_PREFIX.as_bytes()) {
        EntryKind::Temp
    } else if b.starts_with(REFERENCE_TEMP_PREFIX.as_bytes()) && b.ends_with(b".fspl.tmp") {
        EntryKind::ReferenceTemp
    } else {
        EntryKind::Other
    }
}

/// A queue directory, named as the user gave it (the `-q` argument is
/// passed to jobs verbatim in `FSPL_JOB_QUEUEDIR`).
#[derive(Clone, Debug)]
pub struct Queue {
    dir: PathBuf,
    jobs: PathBuf,
    /// age identities for reading encrypted job files.
    identities: Option<Arc<Identities>>,
}

/// A job file opened for reading, positioned at its payload.
pub struct OpenedJob {
    pub header: JobHeader,
    pub header_len: u64,
    /// fspl's extension metadata (payload length and digest, signature).
    pub ext: Extension,
    pub payload: Payload,
}

impl OpenedJob {
    /// The payload, read no further than one byte past the length the
    /// header declares (when it declares one): a payload that goes on fails
    /// with [`crate::bounded::PayloadTooLong`] instead of being decoded to
    /// its end.
    pub fn payload_reader(&mut self) -> Bounded<&mut dyn Read> {
        Bounded::new(self.payload.reader(), self.ext.payload_len)
    }
}

/// Where a job's payload comes from.
pub enum Payload {
    /// The stored file itself, positioned at the first payload byte; handed
    /// to commands as their stdin without copying.
    File(File),
    /// The stdout of a `-d` decoder.
    Decoded {
        stdout: ChildStdout,
        decoder: DecoderChild,
    },
    /// Decoded in-process (a compressed job file); `what` names the format.
    Stream {
        reader: Box<dyn Read + Send>,
        what: &'static str,
        /// The payload's length as the container says, when it says
        /// (an encrypted file whose content is not compressed: its size
        /// tells the plaintext's), before a byte of it is read.
        size: Option<u64>,
    },
}

/// What must happen once a command that read a payload has ended.
pub enum PayloadFinish {
    Nothing,
    /// Stop the `-d` decoder (its status is not judged, as in Filespooler).
    KillDecoder(DecoderChild),
    /// Collect the pump and check that the payload was whole.
    Pump(Pump, &'static str),
    /// Collect the check of a payload that the command read meanwhile.
    Check(FileCheck),
    /// Stop feeding a leased payload and release the lease.
    Lease(LeaseFeed),
}

impl PayloadFinish {
    /// The command has started (and can be killed through `command`).
    pub fn spawned(&mut self, command: &KillHandle) {
        if let PayloadFinish::Lease(f) = self {
            f.spawned(command);
        }
    }

    /// Clean up once the command has ended (been reaped); `Some(reason)`
    /// when the payload turned out to be incomplete or corrupt. A pump stops
    /// writing at once (whatever still holds the pipe is not the job) and
    /// checks the rest of the payload as `check` says.
    pub fn finish(self, check: Check) -> Option<String> {
        self.settle(check).map(|p| p.why)
    }

    /// [`PayloadFinish::finish`], saying what kind of problem it was.
    pub fn settle(self, check: Check) -> Option<Problem> {
        match self {
            PayloadFinish::Nothing => None,
            PayloadFinish::KillDecoder(d) => {
                d.kill();
                None
            }
            PayloadFinish::Pump(p, what) => p.finish_problem(check).map(|p| match p.kind {
                ProblemKind::Incomplete => Problem {
                    why: format!("{what} data: {}", p.why),
                    kind: p.kind,
                },
                _ => p,
            }),
            PayloadFinish::Check(c) => c.finish(check),
            PayloadFinish::Lease(f) => f.finish(),
        }
    }
}

impl Payload {
    /// Split into something a child process can read as stdin and what to
    /// do once the child is done.
    pub fn into_stdio(self) -> io::Result<(Stdio, PayloadFinish)> {
        Ok(match self {
            Payload::File(f) => (Stdio::from(f), PayloadFinish::Nothing),
            Payload::Decoded { stdout, decoder } => {
                (Stdio::from(stdout), PayloadFinish::KillDecoder(decoder))
            }
            Payload::Stream { reader, what, .. } => {
                let (pipe, pump) = Pump::start(reader)?;
                (Stdio::from(pipe), PayloadFinish::Pump(pump, what))
            }
        })
    }

    pub fn reader(&mut self) -> &mut dyn Read {
        match self {
            Payload::File(f) => f,
            Payload::Decoded { stdout, .. } => stdout,
            Payload::Stream { reader, .. } => reader,
        }
    }

    /// Stop the decoder, if any.
    pub fn close(self) {
        if let Payload::Decoded { decoder, .. } = self {
            decoder.kill();
        }
    }
}

/// Read a job header from a stream that may be compressed as a whole.
/// Returns the header and the payload reader (the stream itself, positioned
/// at the payload, when it is not compressed).
pub fn open_stream<R: Read + Send + 'static>(
    input: R,
    identities: Option<&Identities>,
) -> std::result::Result<(Decoded, StreamPayload<R>), HeaderError> {
    let mut peeked = Peeked::new(input).map_err(HeaderError::Io)?;
    if is_age(peeked.head()) {
        let ids = identities.ok_or(HeaderError::Encrypted)?;
        let plain =
            decrypt(&ids.0, peeked).map_err(|e| HeaderError::Decrypt(crate::display_chain(&e)))?;
        let (d, reader, what) = decrypted_job(plain)?;
        return Ok((d, StreamPayload::Decoded { reader, what }));
    }
    match peeked.compression() {
        None => {
            let d = read_header(&mut peeked)?;
            Ok((d, StreamPayload::Plain(peeked.into_inner())))
        }
        Some(c) => {
            let mut reader = c.decoder(peeked).map_err(HeaderError::Io)?;
            let d = read_header(&mut reader).map_err(|e| compressed_error(c, e))?;
            Ok((
                d,
                StreamPayload::Decoded {
                    reader,
                    what: c.name(),
                },
            ))
        }
    }
}

/// Read the job header from a decrypted age stream (which may hold a
/// compressed job). Returns the header, the payload reader and its name.
fn decrypted_job(
    plain: Box<dyn Read + Send>,
) -> std::result::Result<(Decoded, Box<dyn Read + Send>, &'static str), HeaderError> {
    let inner = Peeked::new(plain).map_err(|e| HeaderError::Decrypt(e.to_string()))?;
    let (mut reader, what): (Box<dyn Read + Send>, &'static str) = match inner.compression() {
        None => (Box::new(inner), "age"),
        Some(c) => (
            c.decoder(inner).map_err(HeaderError::Io)?,
            match c {
                Compression::Zstd => "age+zstd",
                Compression::Gzip => "age+gzip",
                Compression::Xz => "age+xz",
                Compression::Lz4 => "age+lz4",
            },
        ),
    };
    let d = read_header(&mut reader).map_err(|e| match e {
        HeaderError::Io(io) => {
            HeaderError::Io(io::Error::new(io.kind(), format!("{what} data: {io}")))
        }
        other => other,
    })?;
    Ok((d, reader, what))
}

/// Open a job file that is a binary age file: decrypted on several
/// threads, with the payload's length known from the file's size when
/// the job inside is not compressed.
fn open_age_file(
    file: File,
    ids: &Identities,
) -> std::result::Result<(Decoded, Payload), HeaderError> {
    let df = decrypt_file(&ids.0, file, crate::concurrent::threads())
        .map_err(|e| HeaderError::Decrypt(crate::display_chain(&e)))?;
    let (d, reader, what) = decrypted_job(df.reader)?;
    let size = match what {
        "age" => df.len.map(|l| l.saturating_sub(d.header_len)),
        _ => None,
    };
    Ok((d, Payload::Stream { reader, what, size }))
}

/// Whether `file` starts like a binary age file.
fn is_binary_age(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; BINARY_MAGIC.len()];
    matches!(file.read_exact_at(&mut head, 0), Ok(()) if head[..] == *BINARY_MAGIC)
}

/// The payload of a job read by `open_stream`.
pub enum StreamPayload<R> {
    /// The input itself, positioned just after the header (which was read
    /// exactly: a pipe can be handed on to a command).
    Plain(R),
    Decoded {
        reader: Box<dyn Read + Send>,
        what: &'static str,
    },
}

/// A read error inside a compressed stream says which format failed.
fn compressed_error(c: Compression, e: HeaderError) -> HeaderError {
    match e {
        HeaderError::Io(io) => {
            HeaderError::Io(io::Error::new(io.kind(), format!("{c} data: {io}")))
        }
        other => other,
    }
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Queue {
        let dir = dir.into();
        // The literal string "/jobs" appended, as Filespooler does, so a
        // trailing slash in -q stays visible the same way in every path.
        let mut jobs = dir.as_os_str().to_os_string();
        jobs.push("/jobs");
        Queue {
            dir,
            jobs: PathBuf::from(jobs),
            identities: None,
        }
    }

    /// Read encrypted job files with these identities.
    pub fn with_identities(mut self, identities: Option<Arc<Identities>>) -> Queue {
        self.identities = identities;
        self
    }

    pub fn identities(&self) -> Option<&Identities> {
        self.identities.as_deref()
    }

    pub fn identities_arc(&self) -> Option<Arc<Identities>> {
        self.identities.clone()
    }

    /// The queue's name (`queue-init --name`), if it has one.
    pub fn name(&self) -> Result<Option<String>> {
        let p = self.dir.join(NAME_FILE);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(QueueError::Io {
                action: "read",
                path: p,
                source: e,
            }),
        }
    }

    /// Give the queue a name (jobs signed `--to NAME` are meant for it).
    pub fn set_name(&self, name: &str) -> Result<()> {
        crate::durable::replace_file(&self.dir.join(NAME_FILE), format!("{name}\n").as_bytes())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn jobs_dir(&self) -> &Path {
        &self.jobs
    }

    pub fn nextseq_path(&self) -> PathBuf {
        self.dir.join("nextseq")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("nextseq.lock")
    }

    pub fn job_path(&self, name: &OsStr) -> PathBuf {
        self.jobs.join(name)
    }

    /// Create a queue: DIR, DIR/jobs, nextseq (holding 1) and nextseq.lock;
    /// only DIR/jobs when `append_only`. DIR must not exist yet, or be an
    /// empty directory. Every step is made durable before returning.
    pub fn init(dir: impl Into<PathBuf>, append_only: bool) -> Result<Queue> {
        let q = Queue::new(dir);
        match std::fs::create_dir(&q.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let empty = std::fs::read_dir(&q.dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty {
                    return Err(QueueError::AlreadyExists { dir: q.dir });
                }
            }
            Err(e) => {
                return Err(QueueError::Io {
                    action: "create queue directory",
                    path: q.dir,
                    source: e,
                });
            }
        }
        std::fs::create_dir(&q.jobs).map_err(QueueError::io("create directory", &q.jobs))?;
        sync_dir(&q.jobs)?;
        if !append_only {
            seqnum::write(&q.nextseq_path(), 1)?;
            let lock = q.lock_path();
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
                .map_err(QueueError::io("create", &lock))?;
        }
        sync_dir(&q.dir)?;
        sync_dir(parent_dir(&q.dir))?;
        Ok(q)
    }

    /// Fail with a helpful message unless DIR/jobs exists.
    pub fn check_exists(&self) -> Result<()> {
        match std::fs::metadata(&self.jobs) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(QueueError::NotAQueue {
                dir: self.dir.clone(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Err(d) = std::fs::metadata(&self.dir) {
                    if d.kind() == ErrorKind::NotFound {
                        Err(QueueError::NoSuchQueue {
                            dir: self.dir.clone(),
                        })
                    } else {
                        Err(QueueError::Io {
                            action: "open queue directory",
                            path: self.dir.clone(),
                            source: d,
                        })
                    }
                } else {
                    Err(QueueError::NotAQueue {
                        dir: self.dir.clone(),
                    })
                }
            }
            Err(e) => Err(QueueError::Io {
                action: "open",
                path: self.jobs.clone(),
                source: e,
            }),
        }
    }

    /// Take the queue's processing lock without waiting.
    pub fn lock(&self) -> Result<FileLock> {
        let path = self.lock_path();
        match FileLock::try_acquire(&path, false) {
            Err(QueueError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                self.check_exists()?;
                Err(QueueError::AppendOnly {
                    dir: self.dir.clone(),
                })
            }
            other => other,
        }
    }

    /// Durably store a job read from `input` under a fresh
    /// `fspl-<uuid>.fspl` name: stream into a temporary name (locked, so a
    /// cleaner can tell a live writer from a dead one), checking it on the
    /// way (see [`crate::intake`]: header, payload length and digest,
    /// compressed and encrypted jobs; encrypted ones in full only with
    /// the queue's identities), fsync, rename, fsync the directory. Returns
    /// the new name once all of that is done. A job that is not valid is
    /// [`QueueError::InvalidJob`], and nothing is left behind. Errors say
    /// the job came from stdin (see [`Queue::write_job_from`]).
    pub fn write_job(&self, input: &mut dyn JobSource) -> Result<OsString> {
        self.write_job_from(input, Path::new("stdin"))
    }

    /// [`Queue::write_job`] for a job read from `from`, which errors name
    /// ("refusing the job from FROM", "cannot read job from FROM"): a file,
    /// a transport's source (`ssh intake from laptop`, a URL).
    pub fn write_job_from(&self, input: &mut dyn JobSource, from: &Path) -> Result<OsString> {
        self.check_exists()?;
        let id = uuid::Uuid::new_v4();
        let name = OsString::from(format!("fspl-{id}.fspl"));
        let tmp = self.jobs.join(format!("{TEMP_PREFIX}{id}"));
        // Readable too: a large payload is hashed as stored, read back.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(QueueError::io("create", &tmp))?;
        let result = (|| {
            f.lock().map_err(QueueError::io("lock", &tmp))?;
            hit("write:after-create").map_err(QueueError::io("write", &tmp))?;
            // Copied and checked in one pass, and synced (a large payload's
            // flush overlaps with the end of its hashing): only a valid job
            // is kept.
            let sync = || {
                hit("write:before-fsync").map_err(QueueError::io("sync", &tmp))?;
                f.sync_all().map_err(QueueError::io("sync", &tmp))
            };
            receive(input, &f, &tmp, self.identities(), &self.dir, from, &sync)?;
            let dest = self.jobs.join(&name);
            hit("write:before-rename").map_err(QueueError::io("rename into place", &dest))?;
            std::fs::rename(&tmp, &dest).map_err(QueueError::io("rename into place", &dest))?;
            hit("write:before-dirsync").map_err(QueueError::io("sync directory", &self.jobs))?;
            sync_dir(&self.jobs)?;
            hit("write:after-dirsync").map_err(QueueError::io("sync directory", &self.jobs))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| name)
    }

    /// Store a job file this process made itself, complete and already
    /// synced (a sync's spooled change set), by linking it into `jobs/`
    /// under a fresh `fspl-<uuid>.fspl` name and syncing the directory: no
    /// copy, no second flush of its bytes. The file stays where it was
    /// (the caller removes it once this returns: a crash in between leaves
    /// a second copy to store, never none). Returns `Ok(None)` when the
    /// file is on another file system (or the file system has no hard
    /// links): the caller copies it with [`Queue::write_job_from`].
    pub fn link_job(&self, file: &Path) -> Result<Option<OsString>> {
        self.check_exists()?;
        let name = OsString::from(format!("fspl-{}.fspl", uuid::Uuid::new_v4()));
        let dest = self.jobs.join(&name);
        match std::fs::hard_link(file, &dest) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(QueueError::io("link into place", &dest)(e)),
        }
        sync_dir(&self.jobs)?;
        Ok(Some(name))
    }

    /// Open a job file for reading its header: no symlinks followed, no
    /// blocking on FIFOs, regular files only.
    pub fn open_file(&self, name: &OsStr) -> Result<File> {
        self.open_file_len(name).map(|(f, _)| f)
    }

    /// [`Queue::open_file`], and the file's length.
    fn open_file_len(&self, name: &OsStr) -> Result<(File, u64)> {
        let path = self.job_path(name);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    QueueError::Io {
                        action: "open (symbolic links are not followed)",
                        path: path.clone(),
                        source: e,
                    }
                } else {
                    QueueError::Io {
                        action: "open",
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
        let meta = f.metadata().map_err(QueueError::io("stat", &path))?;
        if !meta.is_file() {
            return Err(QueueError::Io {
                action: "read",
                path,
                source: io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        Ok((f, meta.len()))
    }

    /// [`Queue::open_job`] (no decoder) of a job file already open (from
    /// its start), named `path` in errors: a file read more than once
    /// opens it again from the same descriptor, never by its name again.
    pub fn open_job_file(&self, file: File, path: &Path) -> Result<OpenedJob> {
        let (d, payload) = match self.identities() {
            Some(ids) if is_binary_age(&file) => {
                open_age_file(file, ids).map_err(|source| bad_job(path, source))?
            }
            ids => {
                let (d, payload) =
                    open_stream(file, ids).map_err(|source| bad_job(path, source))?;
                let payload = match payload {
                    StreamPayload::Plain(f) => Payload::File(f),
                    StreamPayload::Decoded { reader, what } => Payload::Stream {
                        reader,
                        what,
                        size: None,
                    },
                };
                (d, payload)
            }
        };
        Ok(OpenedJob {
            header: d.header,
            header_len: d.header_len,
            ext: d.ext,
            payload,
        })
    }

    /// Open a job and read its header, leaving the payload ready to read.
    /// A job file compressed as a whole is decoded in-process unless a
    /// decoder is given (an explicit `-d` always wins).
    pub fn open_job(&self, name: &OsStr, decoder: Option<&Decoder>) -> Result<OpenedJob> {
        let path = self.job_path(name);
        let file = self.open_file(name)?;
        match decoder {
            None => self.open_job_file(file, &path),
            Some(dec) => {
                let mut child = dec.spawn(file).map_err(|source| QueueError::Decoder {
                    command: dec.command().to_string_lossy().into_owned(),
                    path: path.clone(),
                    source,
                })?;
                let Some(mut stdout) = child.stdout.take() else {
                    child.kill();
                    return Err(QueueError::Decoder {
                        command: dec.command().to_string_lossy().into_owned(),
                        path,
                        source: io::Error::other("no stdout pipe"),
                    });
                };
                match read_header(&mut stdout) {
                    Ok(d) => Ok(OpenedJob {
                        header: d.header,
                        header_len: d.header_len,
                        ext: d.ext,
                        payload: Payload::Decoded {
                            stdout,
                            decoder: child,
                        },
                    }),
                    Err(source) => {
                        drop(stdout);
                        child.kill();
                        Err(bad_job(&path, source))
                    }
                }
            }
        }
    }

    /// [`Queue::read_job_header`] without a decoder, also keeping the
    /// file's bytes when it is at most `keep_up_to` bytes long (it is read
    /// whole then, with the same one read a header takes for a small job).
    pub fn read_job_header_keeping(
        &self,
        name: &OsStr,
        keep_up_to: u64,
    ) -> Result<(Decoded, Option<Arc<[u8]>>)> {
        let path = self.job_path(name);
        let (mut file, len) = self.open_file_len(name)?;
        if len > keep_up_to {
            let r = BufReader::with_capacity(4096, file);
            return open_stream(r, self.identities())
                .map(|(d, _)| (d, None))
                .map_err(|source| bad_job(&path, source));
        }
        let mut bytes = Vec::with_capacity(len as usize + 1);
        Read::by_ref(&mut file)
            .take(keep_up_to + 1)
            .read_to_end(&mut bytes)
            .map_err(QueueError::io("read", &path))?;
        let bytes: Arc<[u8]> = bytes.into();
        let (d, _) = open_stream(io::Cursor::new(bytes.clone()), self.identities())
            .map_err(|source| bad_job(&path, source))?;
        // A file that grew meanwhile is not kept (its bytes are read again
        // when they are needed).
        let whole = bytes.len() as u64 <= keep_up_to;
        Ok((d, whole.then_some(bytes)))
    }

    /// Read just the header of a job (for listings and scans). Reads one
    /// block for a plain file; stops a decoder as soon as the header is in.
    pub fn read_job_header(&self, name: &OsStr, decoder: Option<&Decoder>) -> Result<Decoded> {
        match decoder {
            None => {
                let path = self.job_path(name);
                let file = self.open_file(name)?;
                let r = BufReader::with_capacity(4096, file);
                // Only as much is decompressed as the header needs.
                open_stream(r, self.identities())
                    .map(|(d, _)| d)
                    .map_err(|source| bad_job(&path, source))
            }
            Some(_) => {
                let job = self.open_job(name, decoder)?;
                job.payload.close();
                Ok(Decoded {
                    header: job.header,
                    header_len: job.header_len,
                    ext: job.ext,
                })
            }
        }
    }
}

/// Receive a job from `input` (read from `from`, named in errors) into the
/// temporary `file` (at `tmp`, in the directory of the queue or folder
/// `dir`), checking it as it is copied ([`crate::intake`]), and flush it
/// with `sync`. The one place where what a queue stores is received:
/// `write_job_from` and [`crate::batch::Batch`] (whose `sync` does nothing:
/// the batch is flushed at once) both call it. A job that is not valid is
/// [`QueueError::InvalidJob`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive(
    input: &mut dyn JobSource,
    file: &File,
    tmp: &Path,
    identities: Option<&Identities>,
    dir: &Path,
    from: &Path,
    sync: crate::intake::SyncFn,
) -> Result<()> {
    crate::intake::receive(input, file, tmp, identities, from, sync).map_err(|e| match e {
        crate::intake::Failure::Io(e) => e,
        crate::intake::Failure::Invalid(reason) => QueueError::InvalidJob {
            dir: dir.to_path_buf(),
            from: from.to_path_buf(),
            reason,
        },
    })
}

/// Check the job read from `input` as [`receive`] does, storing nothing.
pub(crate) fn check_only(
    input: &mut dyn JobSource,
    identities: Option<&Identities>,
    dir: &Path,
    from: &Path,
) -> Result<()> {
    crate::intake::check_only(input, identities, from).map_err(|e| match e {
        crate::intake::Failure::Io(e) => e,
        crate::intake::Failure::Invalid(reason) => QueueError::InvalidJob {
            dir: dir.to_path_buf(),
            from: from.to_path_buf(),
            reason,
        },
    })
}

pub(crate) fn bad_job(path: &Path, source: HeaderError) -> QueueError {
    match source {
        HeaderError::Io(e) => QueueError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: e,
        },
        source => QueueError::BadJob {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// What `write_job` reads from: any reader, and when it is a file (stdin
/// is one, even when it is a pipe) the kernel can copy it directly.
pub trait JobSource: Read + Send {
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl JobSource for File {
    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

impl JobSource for &[u8] {}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy a stream to the end, telling read errors from write errors.
/// (std's io::copy uses splice/copy_file_range where it can but cannot say
/// which side failed, which matters for our error messages.)
pub fn copy_stream(r: &mut dyn Read, w: &mut dyn io::Write) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_job_file_is_linked_into_jobs_under_a_fresh_name_and_stays_where_it_was() {
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join("q");
        Queue::init(&q, false).unwrap();
        let q = Queue::new(&q);
        let made = t.path().join("made.fspl");
        std::fs::write(&made, b"job bytes").unwrap();
        let name = q.link_job(&made).unwrap().expect("one file system: linked");
        let name = name.to_str().unwrap().to_string();
        assert!(
            name.starts_with("fspl-") && name.ends_with(".fspl"),
            "{name}"
        );
        let linked = q.job_path(OsStr::new(&name));
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(&made).unwrap().ino(),
            "the same file, not a copy"
        );
        // A second store of the same file is a second job, never a
        // replacement.
        let again = q.link_job(&made).unwrap().unwrap();
        assert_ne!(again.to_str().unwrap(), name);
        assert_eq!(std::fs::read_dir(q.jobs_dir()).unwrap().count(), 2);
    }
}
