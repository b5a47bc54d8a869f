//! `fspl serve-stdin IDENTITY`: the receiving end of `fspl push ssh://...`,
//! run by sshd as the forced command of one authorized_keys line.
//!
//! - The identity comes from that line (the argument), never from the
//!   client. What the client asked for (`SSH_ORIGINAL_COMMAND`) is data:
//!   it must read `fspl-push QUEUE` ([`wire::parse_request`]) and QUEUE is
//!   looked up in what the identity may write ([`Config::resolve`]).
//! - Jobs arrive framed ([`crate::wire`]) and are stored under the name
//!   they have in the sender's outbox, by the queue's new-job protocol
//!   (temporary name, data flushed, rename, directory fsync), in groups:
//!   the jobs that arrived back to back are committed together with one
//!   flush of their data and one fsync of `jobs/`, then each is
//!   acknowledged. Nothing is acknowledged before it is durable.
//! - A job whose name is already in `jobs/` with the same bytes is
//!   acknowledged without being stored again (a resend after a lost
//!   acknowledgement); with other bytes it is refused.
//! - With a trust file, a job that `queue-process --trust` would refuse is
//!   refused here: its header is checked before a byte of it is written to
//!   disk, its payload (length and digest) before it is committed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fspl_format::DigestAlg;
use fspl_queue::bounded::{Bounded, too_long};
use fspl_queue::{Queue, StreamPayload, TEMP_PREFIX, display_chain, escape_controls};
use fspl_trust::TrustFile;
use fspl_trust::crypt::Identities;
use serde::Deserialize;

use crate::fdio::{TimedReader, TimedWriter};
use crate::url::check_queue_name;
use crate::wire::{self, DIGEST_LEN, FatalKind, Msg, WireError};

/// Where `serve-stdin` reads its configuration unless `-c` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/fspl/intake.toml";
/// Jobs larger than this are not taken unless the configuration says so.
pub const DEFAULT_MAX_JOB_SIZE: u64 = 16 << 30;
/// A client that sends nothing for this long is hung up on.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 300;
/// At most this many jobs (each holds an open, locked temporary file) or
/// bytes are committed together (fewer jobs when the limit on open files
/// cannot be raised to fit them).
pub const BATCH_JOBS: usize = 1024;
pub const BATCH_BYTES: u64 = 64 << 20;
/// With a trust file, the bytes of a job held in memory until its header
/// is read and checked (a header is at most 16 MiB, compressed or not).
const HEADER_HOLD: usize = 32 << 20;

/// The subtree rule's key in a `queues` table.
pub const SUBTREE: &str = "<";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    max_job_size: Option<u64>,
    idle_timeout: Option<u64>,
    #[serde(default)]
    identity: BTreeMap<String, RawIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    queues: BTreeMap<String, PathBuf>,
    trust: Option<PathBuf>,
    #[serde(default)]
    decrypt_with: Vec<PathBuf>,
    #[serde(default)]
    allow_job_params: bool,
}

/// `serve-stdin`'s configuration: which identity may write which queues.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub max_job_size: u64,
    pub idle_timeout: Duration,
    pub identities: BTreeMap<String, Rules>,
}

/// What one identity may do.
#[derive(Debug, Default)]
pub struct Rules {
    /// Queue names and their directories.
    pub queues: BTreeMap<String, PathBuf>,
    /// Any existing queue directly under this directory, by its name.
    pub subtree: Option<PathBuf>,
    /// Refuse at intake what `queue-process --trust FILE` would refuse.
    pub trust: Option<PathBuf>,
    /// age identities to read encrypted jobs with (for the trust check).
    pub decrypt_with: Vec<PathBuf>,
    /// The queue runs with `--allow-job-params`: check params too.
    pub allow_job_params: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read intake configuration {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("intake configuration {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim().replace('\n', " ")))?;
        let mut identities = BTreeMap::new();
        for (id, r) in raw.identity {
            let mut rules = Rules {
                trust: r.trust,
                decrypt_with: r.decrypt_with,
                allow_job_params: r.allow_job_params,
                ..Rules::default()
            };
            for (name, dir) in r.queues {
                if !dir.is_absolute() {
                    return Err(bad(format!(
                        "identity {id:?}: queue {name:?}: {} is not an absolute path",
                        dir.display()
                    )));
                }
                if name == SUBTREE {
                    rules.subtree = Some(dir);
                    continue;
                }
                check_queue_name(&name)
                    .map_err(|e| bad(format!("identity {id:?}: {e} (use \"<\" for a subtree)")))?;
                rules.queues.insert(name, dir);
            }
            for p in rules.trust.iter().chain(&rules.decrypt_with) {
                if !p.is_absolute() {
                    return Err(bad(format!(
                        "identity {id:?}: {} is not an absolute path",
                        p.display()
                    )));
                }
            }
            if !rules.decrypt_with.is_empty() && rules.trust.is_none() {
                return Err(bad(format!(
                    "identity {id:?}: decrypt_with is only used to check jobs against a trust file; set trust too"
                )));
            }
            identities.insert(id, rules);
        }
        let idle = raw.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
        if idle == 0 {
            return Err(bad("idle_timeout must be at least 1 second".into()));
        }
        Ok(Config {
            path: path.to_path_buf(),
            max_job_size: raw.max_job_size.unwrap_or(DEFAULT_MAX_JOB_SIZE),
            idle_timeout: Duration::from_secs(idle),
            identities,
        })
    }

    /// The directory of queue `name` for `identity`, or why not (a line
    /// for the client: it names no server path).
    pub fn resolve(&self, identity: &str, name: &str) -> Result<PathBuf, String> {
        let Some(rules) = self.identities.get(identity) else {
            return Err(format!(
                "identity {:?} is not in the server's intake configuration",
                escape_controls(identity)
            ));
        };
        check_queue_name(name).map_err(|e| format!("refused: {}", escape_controls(&e)))?;
        if let Some(dir) = rules.queues.get(name) {
            return Ok(dir.clone());
        }
        match &rules.subtree {
            Some(root) => Ok(root.join(name)),
            None => Err(format!(
                "identity {:?} may not write queue {:?}",
                escape_controls(identity),
                escape_controls(name)
            )),
        }
    }
}

/// Why a session ended early: one line, sent to the client as a
/// [`Msg::Fatal`] (once it speaks the protocol) and printed on stderr.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Fatal {
    pub kind: FatalKind,
    pub message: String,
}

impl Fatal {
    fn permanent(message: impl Into<String>) -> Fatal {
        Fatal {
            kind: FatalKind::Permanent,
            message: message.into(),
        }
    }
    fn transient(message: impl Into<String>) -> Fatal {
        Fatal {
            kind: FatalKind::Transient,
            message: message.into(),
        }
    }
    fn io(what: &str, e: &io::Error) -> Fatal {
        let message = format!("{what}: {}", fspl_queue::strip_os_errors(&e.to_string()));
        if fspl_queue::io_is_transient(e) || e.kind() == ErrorKind::TimedOut {
            Fatal::transient(message)
        } else {
            Fatal::permanent(message)
        }
    }
    fn queue(e: &fspl_queue::QueueError) -> Fatal {
        let message = display_chain(e);
        if e.is_transient() {
            Fatal::transient(message)
        } else {
            Fatal::permanent(message)
        }
    }
}

/// What a session did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub queue: PathBuf,
    /// Jobs stored.
    pub stored: u64,
    /// Jobs that were already there, byte for byte.
    pub duplicates: u64,
    pub refused: u64,
}

/// Serve one session on `input`/`output` (sshd's pipes). `request` is
/// `SSH_ORIGINAL_COMMAND`. A request that is not `fspl-push QUEUE` is
/// refused before anything is written to `output` (the client may not be
/// fspl); after that every fatal error is also sent to the client.
pub fn serve(
    config_path: &Path,
    identity: &str,
    request: Option<&str>,
    input: File,
    output: File,
) -> Result<Summary, Fatal> {
    let queue_name = wire::parse_request(request).map_err(Fatal::permanent)?;
    crate::fdio::grow_pipe(&input, 1 << 20);
    let timeout = Duration::from_secs(DEFAULT_IDLE_TIMEOUT);
    let mut out = TimedWriter::new(output, timeout);
    let hello = Msg::Hello {
        min: wire::VERSION_MIN,
        max: wire::VERSION_MAX,
    };
    out.put(&hello.encode())
        .and_then(|()| out.flush_buf())
        .map_err(|e| Fatal::io("cannot answer the client", &e))?;
    let mut session = Session {
        inp: Some(TimedReader::new(input, timeout)),
        out,
        batch: Vec::new(),
        batch_bytes: 0,
        summary: Summary::default(),
        queue: None,
        jobs_dir: None,
        trust: None,
        identities: None,
        allow_job_params: false,
        max_job_size: 0,
        batch_jobs: batch_jobs(),
        buf: vec![0u8; 256 * 1024],
    };
    let r = session.run(config_path, identity, &queue_name);
    // Jobs that arrived whole are kept whatever ended the session (their
    // acknowledgements may not reach the client: it sends them again and
    // gets them acknowledged as already there).
    let committed = session.commit();
    let r = r
        .and(committed.map(|_| ()))
        .map(|()| session.summary.clone());
    match r {
        Ok(s) => {
            session.out.put(&Msg::Bye.encode()).ok();
            session.out.flush_buf().ok();
            Ok(s)
        }
        Err(f) => {
            let m = Msg::Fatal {
                kind: f.kind,
                message: f.message.clone(),
            };
            if session.out.put(&m.encode()).is_ok() {
                let _ = session.out.flush_buf();
            }
            Err(f)
        }
    }
}

struct Session {
    /// `None` only while a trust check holds it.
    inp: Option<TimedReader>,
    out: TimedWriter,
    batch: Vec<Pending>,
    batch_bytes: u64,
    summary: Summary,
    queue: Option<Queue>,
    jobs_dir: Option<File>,
    trust: Option<TrustFile>,
    identities: Option<Arc<Identities>>,
    allow_job_params: bool,
    max_job_size: u64,
    batch_jobs: usize,
    buf: Vec<u8>,
}

/// How many jobs a batch may hold: [`BATCH_JOBS`], each an open file,
/// within the limit on open files (raised to its hard limit if needed).
fn batch_jobs() -> usize {
    let want = (BATCH_JOBS + 64) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 64;
        }
        if lim.rlim_cur < want && lim.rlim_max > lim.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    let cur = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    cur.saturating_sub(64).clamp(1, BATCH_JOBS)
}

/// A job received and not yet acknowledged.
struct Pending {
    id: u64,
    name: OsString,
    what: PendingKind,
}

enum PendingKind {
    /// In a temporary file (locked, written, not yet flushed).
    New { tmp: OsString, file: File },
    /// Already in `jobs/` with the same bytes.
    Duplicate,
}

/// How a job's bytes were taken off the wire.
enum Received {
    Pending(PendingKind),
    Refused(String),
}

impl Session {
    fn inp(&mut self) -> &mut TimedReader {
        self.inp
            .as_mut()
            .expect("the input is back after a trust check")
    }

    fn read_msg(&mut self) -> Result<Msg, WireError> {
        Msg::read_from(self.inp())
    }

    fn run(&mut self, config_path: &Path, identity: &str, queue_name: &str) -> Result<(), Fatal> {
        // The client's hello first: a client of another version gets the
        // version error, whatever else is wrong.
        let theirs = match self.read_msg() {
            Ok(Msg::Hello { min, max }) => (min, max),
            Ok(other) => {
                return Err(Fatal::permanent(format!(
                    "protocol error: the client began with {other:?} instead of its hello"
                )));
            }
            Err(e) => return Err(wire_fatal(e)),
        };
        let version = wire::agree((wire::VERSION_MIN, wire::VERSION_MAX), theirs)
            .ok_or_else(|| Fatal::permanent(wire::version_mismatch("client", theirs)))?;
        let config = Config::load(config_path).map_err(|e| {
            Fatal::permanent(format!(
                "the server's intake configuration is broken: {}",
                display_chain(&e)
            ))
        })?;
        let timeout = config.idle_timeout;
        self.inp().timeout = timeout;
        self.out.timeout = timeout;
        let dir = config
            .resolve(identity, queue_name)
            .map_err(Fatal::permanent)?;
        let rules = &config.identities[identity];
        let queue = Queue::new(&dir);
        queue.check_exists().map_err(|e| match e {
            fspl_queue::QueueError::NoSuchQueue { .. } | fspl_queue::QueueError::NotAQueue { .. } => {
                Fatal::permanent(format!(
                    "queue {:?} does not exist on the server (the administrator creates it with fspl queue-init)",
                    escape_controls(queue_name)
                ))
            }
            e => Fatal::queue(&e),
        })?;
        if let Some(t) = &rules.trust {
            self.trust = Some(TrustFile::load(t).map_err(|e| {
                Fatal::permanent(format!(
                    "the server's trust file for identity {identity:?} cannot be loaded: {}",
                    display_chain(&e)
                ))
            })?);
            if !rules.decrypt_with.is_empty() {
                self.identities = Some(Arc::new(Identities::load(&rules.decrypt_with).map_err(
                    |e| {
                        Fatal::permanent(format!(
                            "the server's identity files for identity {identity:?} cannot be loaded: {}",
                            display_chain(&e)
                        ))
                    },
                )?));
            }
        }
        self.allow_job_params = rules.allow_job_params;
        self.max_job_size = config.max_job_size;
        self.jobs_dir =
            Some(fspl_queue::durable::open_dir(queue.jobs_dir()).map_err(|e| Fatal::queue(&e))?);
        self.summary.queue = dir;
        self.queue = Some(queue);
        self.send(&Msg::Ready {
            version,
            max_job_len: config.max_job_size,
        })?;
        self.flush()?;
        loop {
            let idle = !self.inp().pending();
            if !self.batch.is_empty()
                && (idle || self.batch.len() >= self.batch_jobs || self.batch_bytes >= BATCH_BYTES)
            {
                self.commit()?;
            }
            if idle || self.out.buffered() >= 32 * 1024 {
                self.flush()?;
            }
            match self.read_msg() {
                Ok(Msg::Job { id, len, name }) => self.job(id, len, &name)?,
                Ok(Msg::End) => return Ok(()),
                Ok(other) => {
                    return Err(Fatal::permanent(format!(
                        "protocol error: unexpected {other:?} from the client"
                    )));
                }
                Err(WireError::Closed) => {
                    return Err(Fatal::transient(
                        "the client closed the connection before it said it was done",
                    ));
                }
                Err(e) => return Err(wire_fatal(e)),
            }
        }
    }

    fn send(&mut self, m: &Msg) -> Result<(), Fatal> {
        self.out
            .put(&m.encode())
            .map_err(|e| Fatal::io("cannot write to the client", &e))
    }

    fn flush(&mut self) -> Result<(), Fatal> {
        self.out
            .flush_buf()
            .map_err(|e| Fatal::io("cannot write to the client", &e))
    }

    fn queue(&self) -> &Queue {
        self.queue.as_ref().expect("set before the first job")
    }

    /// Take one job off the wire and set it aside for the next commit (or
    /// refuse it).
    fn job(&mut self, id: u64, len: u64, name: &[u8]) -> Result<(), Fatal> {
        if len > self.max_job_size {
            // The client was told the limit and refuses such jobs itself.
            return Err(Fatal::permanent(format!(
                "protocol error: a job of {len} bytes, above the limit of {} the server announced",
                self.max_job_size
            )));
        }
        let received = match check_job_name(name) {
            Err(reason) => {
                self.discard(len)?;
                Received::Refused(reason)
            }
            Ok(name) => self.receive(name, len)?,
        };
        match received {
            Received::Pending(what) => {
                self.batch_bytes += len;
                self.batch.push(Pending {
                    id,
                    name: OsStr::from_bytes(name).to_os_string(),
                    what,
                });
            }
            Received::Refused(reason) => {
                self.summary.refused += 1;
                self.send(&Msg::Refused { id, reason })?;
            }
        }
        Ok(())
    }

    fn receive(&mut self, name: &OsStr, len: u64) -> Result<Received, Fatal> {
        let existing = self.queue().job_path(name);
        match std::fs::symlink_metadata(&existing) {
            Ok(_) => self.compare(name, &existing, len),
            Err(e) if e.kind() == ErrorKind::NotFound => self.store(name, len),
            Err(e) => Err(Fatal::io(
                &format!("cannot look at {}", existing.display()),
                &e,
            )),
        }
    }

    /// A job whose name is not in `jobs/`: into a temporary file.
    fn store(&mut self, name: &OsStr, len: u64) -> Result<Received, Fatal> {
        if self.trust.is_some() {
            return self.receive_checked(name, len);
        }
        let (tmp, mut file) = self.create_temp()?;
        let mut hasher = blake3::Hasher::new();
        let mut left = len;
        let result: Result<(), Fatal> = (|| {
            while left > 0 {
                let want = self
                    .buf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = read_some(self.inp.as_mut().expect("input"), &mut self.buf[..want])?;
                hasher.update(&self.buf[..n]);
                file.write_all(&self.buf[..n]).map_err(|e| {
                    Fatal::io(
                        &format!("cannot write {}", self.queue().job_path(&tmp).display()),
                        &e,
                    )
                })?;
                left -= n as u64;
            }
            self.check_trailer(hasher.finalize(), name)
        })();
        match result {
            Ok(()) => Ok(Received::Pending(PendingKind::New { tmp, file })),
            Err(f) => {
                self.remove_temp(&tmp);
                Err(f)
            }
        }
    }

    /// The name is taken: the same bytes are the same job, sent again.
    fn compare(&mut self, name: &OsStr, path: &Path, len: u64) -> Result<Received, Fatal> {
        let different = || {
            Received::Refused(format!(
                "a different job named {} is already in the queue",
                escape_controls(&name.to_string_lossy())
            ))
        };
        let mut existing = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file() && m.len() == len) => Some(f),
            Ok(_) => None,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Processed and deleted meanwhile: store it again (a seq
                // below nextseq never runs again).
                return self.store(name, len);
            }
            Err(_) => None,
        };
        let mut hasher = blake3::Hasher::new();
        let mut left = len;
        let mut theirs = vec![0u8; self.buf.len()];
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = read_some(self.inp.as_mut().expect("input"), &mut self.buf[..want])?;
            hasher.update(&self.buf[..n]);
            if let Some(f) = &mut existing {
                let same = fspl_format::read_full(f, &mut theirs[..n])
                    .is_ok_and(|k| k == n && theirs[..n] == self.buf[..n]);
                if !same {
                    existing = None;
                }
            }
            left -= n as u64;
        }
        self.check_trailer(hasher.finalize(), name)?;
        if let Some(f) = &mut existing
            && fspl_format::read_full(f, &mut theirs[..1]).is_ok_and(|k| k == 0)
        {
            return Ok(Received::Pending(PendingKind::Duplicate));
        }
        Ok(different())
    }

    /// With a trust file: the header is read from the bytes held in memory
    /// and checked before anything is written; the payload is checked as
    /// it is written.
    fn receive_checked(&mut self, name: &OsStr, len: u64) -> Result<Received, Fatal> {
        let state = Arc::new(Mutex::new(Tee {
            inp: self.inp.take(),
            left: len,
            hasher: blake3::Hasher::new(),
            sink: TeeSink::Hold(Vec::new()),
            wire_error: None,
            disk_error: None,
        }));
        let queue = self.queue().clone();
        let queue_name = queue.name().ok().flatten();
        let trust = self.trust.as_ref().expect("trust mode");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut temp: Option<OsString> = None;
        let mut create_err: Option<Fatal> = None;
        let verdict: Result<(), String> = (|| {
            let (decoded, payload) =
                fspl_queue::open_stream(SharedTee(state.clone()), self.identities.as_deref())
                    .map_err(|e| match e {
                        fspl_format::HeaderError::Encrypted => "the job is encrypted, and the server has no identity to read it with for the trust check (decrypt_with)".to_string(),
                        e => format!("not a readable job: {}", display_chain(&e)),
                    })?;
            fspl_queue::verify::check_header(
                &decoded.header,
                &decoded.ext,
                Some(trust),
                queue_name.as_deref(),
                self.allow_job_params,
                now,
            )
            .map_err(|r| {
                let mut s = format!("seq {}: ", decoded.header.seq);
                if let Some(who) = &r.sender {
                    s.push_str(&format!("sender {who:?}: "));
                }
                s.push_str(&r.reason);
                s
            })?;
            // The header passes: from here on the bytes go to disk.
            match create_temp(&queue) {
                Ok((tmp, mut file)) => {
                    let mut st = state.lock().expect("tee");
                    if let TeeSink::Hold(held) = std::mem::replace(&mut st.sink, TeeSink::Discard)
                        && let Err(e) = file.write_all(&held)
                    {
                        st.disk_error = Some(e);
                    }
                    st.sink = TeeSink::File(file);
                    temp = Some(tmp);
                }
                Err(f) => {
                    create_err = Some(f);
                    return Err(String::new());
                }
            }
            let alg = decoded
                .ext
                .digest
                .map(|d| d.alg)
                .unwrap_or(DigestAlg::Blake3);
            let mut reader: Box<dyn Read> = match payload {
                StreamPayload::Plain(r) => Box::new(r),
                StreamPayload::Decoded { reader, .. } => reader,
            };
            let hashed = fspl_trust::digest::hash_reader(
                alg,
                &mut Bounded::new(&mut reader, decoded.ext.payload_len),
            );
            match hashed {
                Ok((n, digest)) => fspl_queue::verify::check_payload(&decoded.ext, n, &digest)
                    .map_err(|r| format!("seq {}: {}", decoded.header.seq, r.reason)),
                Err(e) if too_long(&e).is_some() => Err(format!("seq {}: {e}", decoded.header.seq)),
                Err(e) => Err(format!(
                    "seq {}: payload cannot be read to the end ({e}), so its length and digest cannot be checked",
                    decoded.header.seq
                )),
            }
        })();
        let fail = |this: &mut Session, temp: &Option<OsString>, f: Fatal| {
            if let Some(t) = temp {
                this.remove_temp(t);
            }
            Err(f)
        };
        let mut st = state.lock().expect("tee");
        if verdict.is_err() {
            st.sink = TeeSink::Discard;
        }
        let early = st.wire_error.take().or(create_err).or_else(|| {
            st.disk_error
                .take()
                .map(|e| Fatal::io("cannot write a job", &e))
        });
        if let Some(f) = early {
            self.inp = st.inp.take();
            drop(st);
            return fail(self, &temp, f);
        }
        // The rest of the job's bytes (past a refused header, or whatever
        // the payload reader did not need), then the digest.
        drop(st);
        let drained = io::copy(&mut SharedTee(state.clone()), &mut io::sink());
        let mut st = state.lock().expect("tee");
        self.inp = st.inp.take();
        if let Some(e) = st.wire_error.take() {
            return fail(self, &temp, e);
        }
        if let Err(e) = drained {
            return fail(self, &temp, Fatal::io("cannot read a job", &e));
        }
        if let Some(e) = st.disk_error.take() {
            return fail(self, &temp, Fatal::io("cannot write a job", &e));
        }
        let digest = std::mem::replace(&mut st.hasher, blake3::Hasher::new()).finalize();
        let file = match std::mem::replace(&mut st.sink, TeeSink::Discard) {
            TeeSink::File(f) => Some(f),
            _ => None,
        };
        drop(st);
        if let Err(f) = self.check_trailer(digest, name) {
            return fail(self, &temp, f);
        }
        match (verdict, temp, file) {
            (Ok(()), Some(tmp), Some(file)) => {
                Ok(Received::Pending(PendingKind::New { tmp, file }))
            }
            (Err(reason), temp, _) => {
                if let Some(t) = &temp {
                    self.remove_temp(t);
                }
                Ok(Received::Refused(reason))
            }
            (Ok(()), temp, _) => fail(
                self,
                &temp,
                Fatal::transient("internal error: no temporary file"),
            ),
        }
    }

    /// Read and drop a job's bytes and its digest (a job refused by name).
    fn discard(&mut self, len: u64) -> Result<(), Fatal> {
        let mut left = len;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = read_some(self.inp.as_mut().expect("input"), &mut self.buf[..want])?;
            left -= n as u64;
        }
        let mut d = [0u8; DIGEST_LEN];
        read_exact_wire(self.inp(), &mut d)
    }

    fn check_trailer(&mut self, ours: blake3::Hash, name: &OsStr) -> Result<(), Fatal> {
        let mut theirs = [0u8; DIGEST_LEN];
        read_exact_wire(self.inp(), &mut theirs)?;
        if ours.as_bytes() != &theirs {
            return Err(Fatal::transient(format!(
                "job {} arrived damaged: its bytes do not match the digest the client sent",
                escape_controls(&name.to_string_lossy())
            )));
        }
        Ok(())
    }

    fn create_temp(&self) -> Result<(OsString, File), Fatal> {
        create_temp(self.queue())
    }

    fn remove_temp(&self, tmp: &OsStr) {
        let _ = std::fs::remove_file(self.queue().job_path(tmp));
    }

    /// Make every job of the batch durable under its name, then
    /// acknowledge each: one flush of the data (the file's own fsync for a
    /// single job, `syncfs` for several), the renames, one fsync of `jobs/`.
    fn commit(&mut self) -> Result<(), Fatal> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let queue = self.queue().clone();
        let jobs = self.jobs_dir.as_ref().expect("set with the queue");
        let new: Vec<&File> = batch
            .iter()
            .filter_map(|p| match &p.what {
                PendingKind::New { file, .. } => Some(file),
                PendingKind::Duplicate => None,
            })
            .collect();
        let flushed = match new.as_slice() {
            [] => Ok(()),
            [one] => one.sync_all(),
            _ => rustix::fs::syncfs(jobs).map_err(io::Error::from),
        };
        if let Err(e) = flushed {
            for p in &batch {
                if let PendingKind::New { tmp, .. } = &p.what {
                    let _ = std::fs::remove_file(queue.job_path(tmp));
                }
            }
            return Err(Fatal::io(
                &format!("cannot flush jobs to {}", queue.jobs_dir().display()),
                &e,
            ));
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut failed: Option<Fatal> = None;
        for p in &batch {
            match &p.what {
                PendingKind::Duplicate => {
                    self.summary.duplicates += 1;
                    answers.push(Msg::Ack { id: p.id });
                }
                PendingKind::New { tmp, .. } if failed.is_some() => {
                    let _ = std::fs::remove_file(queue.job_path(tmp));
                }
                PendingKind::New { tmp, .. } => match rename_noreplace(jobs, tmp, &p.name) {
                    Ok(()) => {
                        self.summary.stored += 1;
                        answers.push(Msg::Ack { id: p.id });
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        // Another session stored the same name meanwhile.
                        let same = fspl_queue::scan::same_contents(
                            &queue.job_path(tmp),
                            &queue.job_path(&p.name),
                        )
                        .unwrap_or(false);
                        let _ = std::fs::remove_file(queue.job_path(tmp));
                        if same {
                            self.summary.duplicates += 1;
                            answers.push(Msg::Ack { id: p.id });
                        } else {
                            self.summary.refused += 1;
                            answers.push(Msg::Refused {
                                id: p.id,
                                reason: format!(
                                    "a different job named {} is already in the queue",
                                    escape_controls(&p.name.to_string_lossy())
                                ),
                            });
                        }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(queue.job_path(tmp));
                        failed = Some(Fatal::io(
                            &format!(
                                "cannot rename a job into place in {}",
                                queue.jobs_dir().display()
                            ),
                            &e,
                        ));
                    }
                },
            }
        }
        // The renames (and a duplicate's rename by an earlier session that
        // may not have reached its own fsync) are durable from here.
        jobs.sync_all().map_err(|e| {
            Fatal::io(
                &format!("cannot sync directory {}", queue.jobs_dir().display()),
                &e,
            )
        })?;
        // Temporaries are unlocked only now that they are jobs.
        drop(batch);
        for m in &answers {
            self.send(m)?;
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// A job name as a sender's outbox has it: `fspl-*.fspl`, one path
/// component, no control characters, at most 255 bytes.
pub fn check_job_name(name: &[u8]) -> Result<&OsStr, String> {
    let shown = || escape_controls(&String::from_utf8_lossy(name)).into_owned();
    if name.len() > 255
        || name.iter().any(|&b| b == b'/' || b < 0x20 || b == 0x7f)
        || fspl_queue::classify(OsStr::from_bytes(name)) != fspl_queue::EntryKind::Job
    {
        return Err(format!(
            "job name {:?} is not a job file name (fspl-*.fspl, one path component, no control characters)",
            shown()
        ));
    }
    Ok(OsStr::from_bytes(name))
}

fn create_temp(queue: &Queue) -> Result<(OsString, File), Fatal> {
    let tmp = OsString::from(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4()));
    let path = queue.job_path(&tmp);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Fatal::io(&format!("cannot create {}", path.display()), &e))?;
    // Locked while it is a temporary, as queue-write's are: a cleaner tells
    // a live writer from a dead one by the lock.
    file.lock()
        .map_err(|e| Fatal::io(&format!("cannot lock {}", path.display()), &e))?;
    Ok((tmp, file))
}

/// Rename within `dir`, failing with `AlreadyExists` rather than replacing
/// a file (`renameat2(RENAME_NOREPLACE)`, or link and unlink where the file
/// system does not support that).
fn rename_noreplace(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    use rustix::fs::{AtFlags, RenameFlags};
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?;
            let _ = rustix::fs::unlinkat(dir, from, AtFlags::empty());
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn read_some(r: &mut TimedReader, buf: &mut [u8]) -> Result<usize, Fatal> {
    loop {
        match r.read(buf) {
            Ok(0) => {
                return Err(Fatal::transient(
                    "the client closed the connection in the middle of a job",
                ));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(read_fatal(&e)),
        }
    }
}

fn read_exact_wire(r: &mut TimedReader, buf: &mut [u8]) -> Result<(), Fatal> {
    let mut n = 0;
    while n < buf.len() {
        n += read_some(r, &mut buf[n..])?;
    }
    Ok(())
}

fn read_fatal(e: &io::Error) -> Fatal {
    if e.kind() == ErrorKind::TimedOut {
        Fatal::transient(format!("the client went silent: {e}"))
    } else {
        Fatal::io("cannot read from the client", e)
    }
}

fn wire_fatal(e: WireError) -> Fatal {
    match e {
        WireError::Closed | WireError::Truncated => Fatal::transient(e.to_string()),
        WireError::Protocol(m) => Fatal::permanent(format!("protocol error: {m}")),
        WireError::Io(e) => read_fatal(&e),
    }
}

/// A job's bytes on their way through a trust check: counted, hashed and
/// passed on to where they go (held in memory until the header is
/// checked, then a file; or nowhere, for a refused job).
struct Tee {
    inp: Option<TimedReader>,
    left: u64,
    hasher: blake3::Hasher,
    sink: TeeSink,
    /// What went wrong with the connection (ends the session) rather than
    /// with the job.
    wire_error: Option<Fatal>,
    disk_error: Option<io::Error>,
}

enum TeeSink {
    Hold(Vec<u8>),
    File(File),
    Discard,
}

/// The job's bytes as a reader that owns nothing the session needs back
/// (header decoders want `'static` readers).
struct SharedTee(Arc<Mutex<Tee>>);

impl Read for SharedTee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let st = &mut *st;
        if st.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        if st.wire_error.is_some() {
            return Err(io::Error::other("the connection failed"));
        }
        let want = buf
            .len()
            .min(usize::try_from(st.left).unwrap_or(usize::MAX));
        let Some(inp) = st.inp.as_mut() else {
            return Err(io::Error::other("no input"));
        };
        let n = match read_some(inp, &mut buf[..want]) {
            Ok(n) => n,
            Err(f) => {
                let msg = f.message.clone();
                st.wire_error = Some(f);
                return Err(io::Error::other(msg));
            }
        };
        st.left -= n as u64;
        st.hasher.update(&buf[..n]);
        match &mut st.sink {
            TeeSink::Hold(v) => {
                if v.len() + n > HEADER_HOLD {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "no job header within the first 32 MiB",
                    ));
                }
                v.extend_from_slice(&buf[..n]);
            }
            TeeSink::File(f) => {
                if st.disk_error.is_none()
                    && let Err(e) = f.write_all(&buf[..n])
                {
                    st.disk_error = Some(e);
                }
            }
            TeeSink::Discard => {}
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/fspl/intake.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn explicit_names_and_the_subtree_rule() {
        let c = cfg(r#"
            [identity.laptop.queues]
            backups = "/srv/fspl/backups"
            "<" = "/srv/fspl/laptop/"
            [identity.phone.queues]
            photos = "/srv/fspl/photos"
            "#)
        .unwrap();
        assert_eq!(
            c.resolve("laptop", "backups").unwrap(),
            Path::new("/srv/fspl/backups")
        );
        assert_eq!(
            c.resolve("laptop", "mail").unwrap(),
            Path::new("/srv/fspl/laptop/mail")
        );
        assert_eq!(
            c.resolve("phone", "photos").unwrap(),
            Path::new("/srv/fspl/photos")
        );
        let e = c.resolve("phone", "backups").unwrap_err();
        assert!(e.contains("may not write queue \"backups\""), "{e}");
        let e = c.resolve("tablet", "backups").unwrap_err();
        assert!(
            e.contains("not in the server's intake configuration"),
            "{e}"
        );
        assert_eq!(c.max_job_size, DEFAULT_MAX_JOB_SIZE);
        assert_eq!(c.idle_timeout, Duration::from_secs(DEFAULT_IDLE_TIMEOUT));
    }

    #[test]
    fn hostile_queue_names_never_leave_the_subtree() {
        let c = cfg("[identity.laptop.queues]\n\"<\" = \"/srv/fspl/laptop\"\n").unwrap();
        let long = "a".repeat(256);
        for bad in [
            "..", "../x", "a/b", "/etc", ".hidden", ".", "", "a\0b", "a\nb", "\x1b[2J", &long,
        ] {
            let e = c.resolve("laptop", bad).unwrap_err();
            assert!(e.starts_with("refused: "), "{bad:?}: {e}");
            assert!(
                !e.contains('\n') && !e.contains('\x1b') && !e.contains('\0'),
                "{e:?}"
            );
        }
        assert!(c.resolve("laptop", &"a".repeat(255)).is_ok());
        assert!(c.resolve("laptop", "a..b").is_ok());
    }

    #[test]
    fn bad_configurations_are_one_line_errors() {
        for (text, want) in [
            (
                "[identity.a.queues]\nq = \"rel/dir\"\n",
                "not an absolute path",
            ),
            (
                "[identity.a.queues]\n\"<\" = \"rel\"\n",
                "not an absolute path",
            ),
            ("[identity.a.queues]\n\"a/b\" = \"/x\"\n", "contains '/'"),
            ("[identity.a.queues]\n\"..\" = \"/x\"\n", "starts with '.'"),
            ("[identity.a]\ntrust = \"t.toml\"\n", "not an absolute path"),
            ("[identity.a]\ndecrypt_with = [\"/k\"]\n", "set trust too"),
            ("[identity.a]\nqueue = {}\n", "unknown field"),
            ("idle_timeout = 0\n", "at least 1 second"),
            ("max_job_size = -1\n", "max_job_size"),
            ("[identity.a\n", "intake configuration"),
        ] {
            let e = cfg(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn job_names_are_single_outbox_names() {
        assert!(check_job_name(b"fspl-2b4c.fspl").is_ok());
        let long = format!("fspl-{}.fspl", "a".repeat(250));
        for bad in [
            &b"../fspl-x.fspl"[..],
            b"fspl-a/b.fspl",
            b"x.fspl",
            b"fspl-x",
            b".fspl-tmp-1",
            b"fspl-\n.fspl",
            b"fspl-\0.fspl",
            b"fspl-.fspl",
            long.as_bytes(),
        ] {
            assert!(
                check_job_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
