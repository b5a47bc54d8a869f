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

use fspl_format::{CmdType, Command, Ctime, DigestAlg, Extension, JobHeader};
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

/// Make the job of change set `seq` from the tar in `payload` (`len`
/// bytes) into a new file at `dest`, synced.
pub fn build(
    payload: &mut File,
    len: u64,
    seq: u64,
    keys: &Keys,
    compression: Option<fspl_codec::CompressSpec>,
    dest: &Path,
) -> Result<(), SyncError> {
    let io = |what: &'static str| move |e: io::Error| SyncError::io(what, dest, e);
    let digest =
        fspl_trust::digest::hash_file(DigestAlg::Blake3, payload, len).map_err(io("hash"))?;
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
    let bytes = header
        .encode_with(&ext)
        .map_err(|e| SyncError::Job(format!("cannot encode the job header: {e}")))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io("create"))?;
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

/// Store a spooled job file into the outbox as `queue-write` does.
pub fn store(outbox: &Queue, job: &Path) -> Result<(), SyncError> {
    let mut f = File::open(job).map_err(|e| SyncError::io("open", job, e))?;
    outbox
        .write_job_from(&mut f, job)
        .map_err(|e| SyncError::Queue {
            what: format!("store change set {} in the outbox", job.display()),
            source: e,
        })?;
    Ok(())
}

/// A change set read from the inbox: its seq and its payload, privately
/// copied and checked.
pub struct Received {
    pub seq: u64,
    pub payload: File,
    pub len: u64,
    /// Who signed it (with a trust file).
    pub sender: Option<String>,
}

/// Why a job of the inbox is not applied.
pub enum Refused {
    /// Refused for good (moved to `rejected/`).
    Job(String),
    Error(SyncError),
}

/// Open job `name` of the inbox, vet it, and copy its payload into a
/// private file in `tmp` while hashing it.
pub fn receive(
    inbox: &Queue,
    name: &std::ffi::OsStr,
    keys: &Keys,
    tmp: &Path,
) -> Result<Received, Refused> {
    let mut job = inbox.open_job(name, None).map_err(|e| match e {
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
    let alg = job
        .ext
        .digest
        .as_ref()
        .map(|d| d.alg)
        .unwrap_or(DigestAlg::Blake3);
    let declared = job.ext.payload_len;
    let ext = job.ext.clone();
    let seq = job.header.seq;
    let spooled = fspl_queue::spool::private_copy_of_stream(
        Some(tmp),
        &mut job.payload_reader(),
        alg,
        declared,
    )
    .map_err(|e| match e {
        fspl_queue::CopyError::Read(e) => Refused::Job(format!("cannot read its payload: {e}")),
        fspl_queue::CopyError::Write(e) => {
            Refused::Error(SyncError::io("write a private copy in", tmp, e))
        }
    })?;
    job.payload.close();
    if ext.digest.is_none() {
        return Err(Refused::Job("its header has no payload digest".into()));
    }
    fspl_queue::verify::check_payload(&ext, spooled.len, &spooled.digest)
        .map_err(|r| Refused::Job(r.reason))?;
    Ok(Received {
        seq,
        payload: spooled.file,
        len: spooled.len,
        sender,
    })
}
