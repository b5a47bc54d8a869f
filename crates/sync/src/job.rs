//! Change sets as fspl jobs: made like `fspl prepare` makes a job (a
//! header with the payload's length and BLAKE3 digest, signed when asked;
//! the whole job compressed and encrypted when asked), spooled in the
//! sync's `pending/` directory, then stored in the outbox through
//! `Queue::write_job` as `queue-write` does. Read back from the inbox
//! through `Queue::open_job`, vetted against the trust file, the payload
//! copied privately while it is hashed and checked before anything is
//! applied.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fspl_format::{CmdType, Command, Ctime, Digest, DigestAlg, Extension, JobHeader};

use crate::changeset::{Out, Writer};
use fspl_queue::Queue;
use fspl_trust::crypt::{Encrypting, encrypt, parse_recipient};

use crate::{Keys, SyncError};

/// The command a change-set job names. Nothing by this name exists: a
/// `queue-process` run on an inbox by mistake fails instead of eating the
/// change set.
pub const CHANGESET_COMMAND: &[u8] = b"fspl-sync-changeset";

enum Sink {
    Plain(File),
    Encrypted(Encrypting<File>),
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(b),
            Sink::Encrypted(e) => e.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Encrypted(e) => e.flush(),
        }
    }
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Option<Sink>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self.0.lock().ok().as_mut().and_then(|g| g.as_mut()) {
            Some(s) => s.write(b),
            None => Err(io::Error::other("the job file was closed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock().ok().as_mut().and_then(|g| g.as_mut()) {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

/// The header of change set `seq`'s job: the payload's length and
/// digest, signed when asked.
fn header_bytes(seq: u64, len: u64, digest: Digest, keys: &Keys) -> Result<Vec<u8>, SyncError> {
    let header = JobHeader {
        seq,
        ctime: Ctime::now(),
        cmd_type: CmdType::Command(Command {
            params: vec![CHANGESET_COMMAND.to_vec()],
            env: vec![],
        }),
    };
    let mut ext = Extension {
        payload_len: Some(len),
        digest: Some(digest),
        ..Extension::default()
    };
    if let Some(k) = &keys.signer {
        ext.signer = Some(k.public().bytes());
        let signed = header
            .signed_bytes(&ext)
            .map_err(|e| SyncError::Job(format!("cannot encode the signed fields: {e}")))?;
        ext.signature = Some(k.sign(&signed));
    }
    header
        .encode_with(&ext)
        .map_err(|e| SyncError::Job(format!("cannot encode the job header: {e}")))
}

/// Room for the header at the start of a job written as its change set
/// is made (far more than a header takes: about 300 bytes signed).
const HEADER_ROOM: u64 = 4096;

/// The zstd level of change sets.
const ZSTD_LEVEL: i32 = 3;

fn create(dest: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        // As `queue-write` makes them: the file is linked into the outbox
        // as it is.
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
}

/// Begin the job of a change set at `dest`: the writer the change set is
/// written into. With zstd (the default) and no encryption, the change
/// set is compressed straight into the job file as it is made (on other
/// cores than the one reading the tree), after room left for the header,
/// which [`complete`] writes last. Otherwise it goes to a private
/// temporary in `tmp` first, and [`complete`] makes the job from it.
pub fn start(
    dest: &Path,
    tmp: &Path,
    keys: &Keys,
    compression: Option<fspl_codec::CompressSpec>,
) -> Result<Writer, SyncError> {
    let streamed = keys.recipients.is_empty()
        && matches!(compression, Some(c) if c.kind == fspl_codec::Compression::Zstd);
    if !streamed {
        let f =
            tempfile::tempfile_in(tmp).map_err(|e| SyncError::io("create a file in", tmp, e))?;
        return Ok(Writer::new(f));
    }
    let io = |what: &'static str| move |e: io::Error| SyncError::io(what, dest, e);
    let level = compression.and_then(|c| c.level).unwrap_or(ZSTD_LEVEL);
    let mut file = create(dest).map_err(io("create"))?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(HEADER_ROOM))
        .map_err(io("write"))?;
    let mut enc = zstd::stream::write::Encoder::new(file, level).map_err(io("compress"))?;
    enc.include_checksum(true).map_err(io("compress"))?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = (cores.saturating_sub(1)).clamp(1, 4) as u32;
    enc.multithread(workers).map_err(io("compress"))?;
    // Jobs of 2 MiB: a few in flight keep memory small.
    enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(2 << 20))
        .map_err(io("compress"))?;
    Ok(Writer::to(Out::Zstd(Box::new(enc))))
}

/// A zstd skippable frame of exactly `len` bytes (at least 8): decoders
/// pass over it.
fn skippable_frame(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    f.extend_from_slice(&((len - 8) as u32).to_le_bytes());
    f.resize(len, 0);
    f
}

/// Finish the job [`start`] began at `dest`, with the change set's
/// length and digest ([`Writer::finish`]): synced.
pub fn complete(
    out: Out,
    len: u64,
    digest: Digest,
    seq: u64,
    keys: &Keys,
    compression: Option<fspl_codec::CompressSpec>,
    dest: &Path,
) -> Result<(), SyncError> {
    let io = |what: &'static str| move |e: io::Error| SyncError::io(what, dest, e);
    match out {
        Out::File(mut tmp) => build(&mut tmp, len, Some(digest), seq, keys, compression, dest),
        Out::Zstd(enc) => {
            let file = enc.finish().map_err(io("write"))?;
            // The header, a zstd frame of its own, then a skippable frame
            // up to where the payload's frame starts: one stream that
            // decodes to the header followed by the payload.
            let bytes = header_bytes(seq, len, digest, keys)?;
            let level = compression.and_then(|c| c.level).unwrap_or(ZSTD_LEVEL);
            let mut head = {
                let mut e =
                    zstd::stream::write::Encoder::new(Vec::new(), level).map_err(io("compress"))?;
                e.include_checksum(true).map_err(io("compress"))?;
                e.write_all(&bytes).map_err(io("compress"))?;
                e.finish().map_err(io("compress"))?
            };
            let room = HEADER_ROOM as usize;
            if head.len() + 8 > room {
                return Err(SyncError::Job(format!(
                    "the job header takes {} bytes compressed, more than the {} kept for it",
                    head.len(),
                    room - 8
                )));
            }
            let pad = room - head.len();
            head.extend_from_slice(&skippable_frame(pad));
            use std::os::unix::fs::FileExt;
            file.write_all_at(&head, 0).map_err(io("write"))?;
            file.sync_all().map_err(io("sync"))?;
            Ok(())
        }
    }
}

/// Make the job of change set `seq` from the tar in `payload` (`len`
/// bytes; its digest, or None to hash it here) into a new file at
/// `dest`, synced.
pub fn build(
    payload: &mut File,
    len: u64,
    digest: Option<Digest>,
    seq: u64,
    keys: &Keys,
    compression: Option<fspl_codec::CompressSpec>,
    dest: &Path,
) -> Result<(), SyncError> {
    let io = |what: &'static str| move |e: io::Error| SyncError::io(what, dest, e);
    let digest = match digest {
        Some(d) => d,
        None => {
            fspl_trust::digest::hash_file(DigestAlg::Blake3, payload, len).map_err(io("hash"))?
        }
    };
    let bytes = header_bytes(seq, len, digest, keys)?;
    let file = create(dest).map_err(io("create"))?;
    let sink = if keys.recipients.is_empty() {
        Sink::Plain(file)
    } else {
        let mut rs = Vec::new();
        for r in &keys.recipients {
            rs.push(parse_recipient(r).map_err(|e| SyncError::Keys(e.to_string()))?);
        }
        Sink::Encrypted(encrypt(&rs, file).map_err(|e| SyncError::Keys(e.to_string()))?)
    };
    let shared = Shared(Arc::new(Mutex::new(Some(sink))));
    use std::io::Seek;
    payload
        .seek(io::SeekFrom::Start(0))
        .map_err(io("read the change set for"))?;
    match compression {
        Some(spec) => {
            let mut enc = spec.encoder(shared.clone()).map_err(io("compress"))?;
            enc.write_all(&bytes).map_err(io("write"))?;
            io::copy(payload, &mut enc).map_err(io("write"))?;
            enc.finish().map_err(io("write"))?;
        }
        None => {
            let mut w = io::BufWriter::new(shared.clone());
            w.write_all(&bytes).map_err(io("write"))?;
            io::copy(payload, &mut w).map_err(io("write"))?;
            w.flush().map_err(io("write"))?;
        }
    }
    let sink = shared.0.lock().ok().and_then(|mut g| g.take());
    let file = match sink {
        Some(Sink::Plain(f)) => f,
        Some(Sink::Encrypted(e)) => e.finish().map_err(io("write"))?,
        None => return Err(SyncError::Job("the job file went missing".into())),
    };
    file.sync_all().map_err(io("sync"))?;
    Ok(())
}

/// Store a spooled job file (made and synced by [`build`]) into the
/// outbox: linked in when both are on one file system (its bytes are on
/// disk already; only the outbox's directory is synced), else copied and
/// checked as `queue-write` does.
pub fn store(outbox: &Queue, job: &Path) -> Result<(), SyncError> {
    let linked = outbox.link_job(job).map_err(|e| SyncError::Queue {
        what: format!("store change set {} in the outbox", job.display()),
        source: e,
    })?;
    if linked.is_some() {
        return Ok(());
    }
    let mut f = File::open(job).map_err(|e| SyncError::io("open", job, e))?;
    outbox
        .write_job_from(&mut f, job)
        .map_err(|e| SyncError::Queue {
            what: format!("store change set {} in the outbox", job.display()),
            source: e,
        })?;
    Ok(())
}

/// A change set read from the inbox: its seq and its payload.
pub struct Received {
    pub seq: u64,
    pub payload: Payload,
    /// Who signed it (with a trust file).
    pub sender: Option<String>,
}

/// Where a received change set's payload is read from, once per pass of
/// the apply.
pub enum Payload {
    /// A private copy, checked (length and digest) as it was made.
    Copy(File),
    /// The job file itself, read again from the same descriptor for each
    /// pass (never opened again by its name). Only for a job file that
    /// nobody but this user can have written (see [`private_to_us`]); the
    /// first pass checks its length and digest, before a second pass can
    /// change anything.
    Job {
        inbox: Queue,
        file: File,
        path: std::path::PathBuf,
        ext: Box<Extension>,
        checked: bool,
    },
}

impl Payload {
    /// Run `f` over the payload from its start. The first pass over a job
    /// file reads the payload to its end and checks its length and digest:
    /// a payload that does not match is [`SyncError::Damaged`], whatever
    /// `f` made of it.
    pub fn pass<T>(
        &mut self,
        f: impl FnOnce(&mut dyn io::Read) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        use std::io::Seek;
        match self {
            Payload::Copy(file) => {
                file.seek(io::SeekFrom::Start(0)).map_err(|e| {
                    SyncError::io(
                        "read the private copy of a change set",
                        Path::new("(unnamed)"),
                        e,
                    )
                })?;
                f(&mut io::BufReader::with_capacity(256 * 1024, file))
            }
            Payload::Job {
                inbox,
                file,
                path,
                ext,
                checked,
            } => {
                let reopen = || -> io::Result<File> {
                    let mut f = file.try_clone()?;
                    f.seek(io::SeekFrom::Start(0))?;
                    Ok(f)
                };
                let again = reopen().map_err(|e| SyncError::io("read", path, e))?;
                let mut job = inbox
                    .open_job_file(again, path)
                    .map_err(|e| SyncError::Damaged(fspl_queue::display_chain(&e)))?;
                if *checked {
                    let r = f(&mut io::BufReader::with_capacity(
                        256 * 1024,
                        job.payload_reader(),
                    ));
                    job.payload.close();
                    return r;
                }
                let alg = ext
                    .digest
                    .as_ref()
                    .map(|d| d.alg)
                    .unwrap_or(DigestAlg::Blake3);
                let mut hashing = Hashing {
                    inner: job.payload_reader(),
                    hasher: fspl_trust::digest::Hasher::new(alg),
                    len: 0,
                };
                let r = f(&mut io::BufReader::with_capacity(256 * 1024, &mut hashing));
                // The rest (what `f` did not read, or all of it after an
                // error) goes through the hash too.
                let rest = io::copy(&mut hashing, &mut io::sink());
                let (len, hasher) = (hashing.len, hashing.hasher);
                job.payload.close();
                if let Err(e) = rest {
                    return Err(SyncError::Damaged(format!("cannot read its payload: {e}")));
                }
                fspl_queue::verify::check_payload(ext, len, &hasher.finish())
                    .map_err(|r| SyncError::Damaged(r.reason))?;
                *checked = true;
                r
            }
        }
    }
}

/// Hashes and counts what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: fspl_trust::digest::Hasher,
    len: u64,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A job file only this user can have written: owned by us, with no write
/// permission for group or others. A file another user made (a push from
/// another account into a shared inbox) may still be open for writing in
/// that user's process, and could change between the pass that checks it
/// and the pass that applies it: its payload is copied first.
fn private_to_us(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.uid() == euid && m.mode() & 0o022 == 0)
}

/// Why a job of the inbox is not applied.
pub enum Refused {
    /// Refused for good (moved to `rejected/`).
    Job(String),
    Error(SyncError),
}

/// Open job `name` of the inbox and vet it. Its payload is read from the
/// job file itself for each pass of the apply when only this user can
/// have written it ([`Payload::Job`]); else it is first copied into a
/// private file in `tmp` while hashing it ([`Payload::Copy`]).
pub fn receive(
    inbox: &Queue,
    name: &std::ffi::OsStr,
    keys: &Keys,
    tmp: &Path,
) -> Result<Received, Refused> {
    let path = inbox.job_path(name);
    let file = inbox.open_file(name).map_err(|e| {
        Refused::Error(SyncError::Queue {
            what: "open a change set of the inbox".into(),
            source: e,
        })
    })?;
    let direct = private_to_us(&file);
    let keep = if direct {
        Some(
            file.try_clone()
                .map_err(|e| Refused::Error(SyncError::io("open", &path, e)))?,
        )
    } else {
        None
    };
    let mut job = inbox.open_job_file(file, &path).map_err(|e| match e {
        fspl_queue::QueueError::InvalidJob { .. } | fspl_queue::QueueError::BadJob { .. } => {
            Refused::Job(fspl_queue::display_chain(&e))
        }
        e => Refused::Error(SyncError::Queue {
            what: "open a change set of the inbox".into(),
            source: e,
        }),
    })?;
    let mut sender = None;
    if let Some(trust) = &keys.trust {
        let qname = inbox.name().ok().flatten();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match fspl_queue::verify::check_header(
            &job.header,
            &job.ext,
            Some(trust),
            qname.as_deref(),
            false,
            now,
        ) {
            Ok(v) => sender = v.sender,
            Err(r) => return Err(Refused::Job(r.reason)),
        }
    }
    match &job.header.cmd_type {
        CmdType::Command(c) if c.params == [CHANGESET_COMMAND.to_vec()] => {}
        _ => {
            return Err(Refused::Job(
                "not a change set of fspl sync (its command is not fspl-sync-changeset)".into(),
            ));
        }
    }
    if job.ext.digest.is_none() {
        return Err(Refused::Job("its header has no payload digest".into()));
    }
    if job.ext.payload_len.is_none() {
        return Err(Refused::Job("its header has no payload length".into()));
    }
    let ext = job.ext.clone();
    let seq = job.header.seq;
    if let Some(file) = keep {
        job.payload.close();
        return Ok(Received {
            seq,
            payload: Payload::Job {
                inbox: inbox.clone(),
                file,
                path,
                ext: Box::new(ext),
                checked: false,
            },
            sender,
        });
    }
    let alg = ext.digest.as_ref().map_or(DigestAlg::Blake3, |d| d.alg);
    let spooled = fspl_queue::spool::private_copy_of_stream(
        Some(tmp),
        &mut job.payload_reader(),
        alg,
        ext.payload_len,
    )
    .map_err(|e| match e {
        fspl_queue::CopyError::Read(e) => Refused::Job(format!("cannot read its payload: {e}")),
        fspl_queue::CopyError::Write(e) => {
            Refused::Error(SyncError::io("write a private copy in", tmp, e))
        }
    })?;
    job.payload.close();
    fspl_queue::verify::check_payload(&ext, spooled.len, &spooled.digest)
        .map_err(|r| Refused::Job(r.reason))?;
    Ok(Received {
        seq,
        payload: Payload::Copy(spooled.file),
        sender,
    })
}
