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
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fspl_queue::batch::{Batch, BatchLimits, Outcome};
use fspl_queue::{Queue, display_chain, escape_controls};
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
/// cannot be raised to fit them): a client that sends faster than the
/// disk flushes gets acknowledgements a batch at a time, and removes
/// those jobs from its outbox while the next batch is received.
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
    // Batches hold one open temporary per job.
    fspl_queue::batch::raise_fd_limit();
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
        inp: TimedReader::new(input, timeout),
        out,
        batch: None,
        ids: Vec::new(),
        summary: Summary::default(),
        queue: None,
        trust: None,
        identities: None,
        allow_job_params: false,
        max_job_size: 0,
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
    inp: TimedReader,
    out: TimedWriter,
    /// Jobs received and not yet committed (fspl-queue's group commit).
    batch: Option<Batch>,
    /// The client's ids of the jobs in `batch`, in the same order.
    ids: Vec<u64>,
    summary: Summary,
    queue: Option<Queue>,
    trust: Option<TrustFile>,
    identities: Option<Arc<Identities>>,
    allow_job_params: bool,
    max_job_size: u64,
    buf: Vec<u8>,
}

impl Session {
    fn read_msg(&mut self) -> Result<Msg, WireError> {
        Msg::read_from(&mut self.inp)
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
        self.inp.timeout = config.idle_timeout;
        self.out.timeout = config.idle_timeout;
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
        self.batch = Some(
            Batch::open(
                queue.jobs_dir(),
                queue.dir(),
                self.identities.clone(),
                BatchLimits {
                    max_jobs: BATCH_JOBS,
                    max_bytes: BATCH_BYTES,
                    ..BatchLimits::default()
                },
            )
            .map_err(|e| Fatal::queue(&e))?,
        );
        self.summary.queue = dir;
        self.queue = Some(queue);
        self.send(&Msg::Ready {
            version,
            max_job_len: config.max_job_size,
        })?;
        self.flush()?;
        loop {
            let idle = !self.inp.pending();
            let commit = !self.ids.is_empty() && (idle || self.batch().is_full());
            if commit {
                self.commit()?;
            }
            // Acknowledgements go out as soon as their batch is durable:
            // the client removes those jobs from its outbox meanwhile.
            if commit || idle || self.out.buffered() >= 32 * 1024 {
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

    fn batch(&mut self) -> &mut Batch {
        self.batch.as_mut().expect("opened before the first job")
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

    /// Take one job off the wire into the batch, or refuse it.
    fn job(&mut self, id: u64, len: u64, name: &[u8]) -> Result<(), Fatal> {
        if len > self.max_job_size {
            // The client was told the limit and refuses such jobs itself.
            return Err(Fatal::permanent(format!(
                "protocol error: a job of {len} bytes, above the limit of {} the server announced",
                self.max_job_size
            )));
        }
        let refusal = match check_job_name(name) {
            Err(reason) => {
                self.skip(len, blake3::Hasher::new(), name)?;
                Some(reason)
            }
            Ok(name) => self.receive(name, len)?,
        };
        match refusal {
            None => self.ids.push(id),
            Some(reason) => {
                self.summary.refused += 1;
                self.send(&Msg::Refused { id, reason })?;
            }
        }
        Ok(())
    }

    /// Receive a job into the batch; `Some(reason)` when it is refused
    /// (and not in the batch).
    fn receive(&mut self, name: &OsStr, len: u64) -> Result<Option<String>, Fatal> {
        let mut hasher = blake3::Hasher::new();
        let mut held = Vec::new();
        if self.trust.is_some() {
            // The header, from bytes held in memory, before anything is
            // written: a refused job never takes disk space.
            let (h, header) = self.read_header(len, &mut hasher)?;
            held = h;
            if let Err(reason) = header {
                let left = len - held.len() as u64;
                return self
                    .skip(left, hasher, name.as_bytes())
                    .map(|()| Some(reason));
            }
            // The batch checks the payload (its length and digest,
            // decompressed or decrypted) as it stores it.
        }
        let left = len - held.len() as u64;
        let mut stream = JobStream {
            inp: &mut self.inp,
            name: name.as_bytes(),
            held,
            held_pos: 0,
            left,
            hasher,
            veto: None,
            ended: false,
        };
        let batch = self.batch.as_mut().expect("opened before the first job");
        let added = batch.add_named(&mut stream, Path::new("the client"), name);
        // The batch refuses what queue-write would (not a job, a payload
        // that does not match its header) as soon as it knows, maybe
        // before the end: the rest is read (and its digest checked) to
        // stay in step with the client.
        if let Err(e) = &added
            && e.is_refusal()
            && stream.veto.is_none()
        {
            let _ = io::copy(&mut stream, &mut io::sink());
        }
        let veto = stream.veto.take();
        drop(stream);
        match (added, veto) {
            (Ok(_), None) => Ok(None),
            // The job was not added (its temporary is gone).
            (_, Some(f)) => Err(f),
            (Err(fspl_queue::QueueError::InvalidJob { reason, .. }), None) => Ok(Some(reason)),
            (Err(e), None) if e.is_refusal() => Ok(Some(display_chain(&e))),
            (Err(e), None) => Err(Fatal::queue(&e)),
        }
    }

    /// Read the first bytes of a job until its header can be read (or the
    /// job ends, or 32 MiB are held), hashing them for the trailer; then
    /// check the header against the trust file.
    fn read_header(
        &mut self,
        len: u64,
        hasher: &mut blake3::Hasher,
    ) -> Result<(Vec<u8>, Result<(), String>), Fatal> {
        let mut held: Vec<u8> = Vec::new();
        loop {
            let left = len - held.len() as u64;
            // At least as much again as is held: a few attempts at most.
            let want = (held.len().max(64 * 1024))
                .min(HEADER_HOLD - held.len())
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let start = held.len();
            held.resize(start + want, 0);
            let mut got = 0;
            while got < want {
                got += read_some(&mut self.inp, &mut held[start + got..start + want])?;
            }
            hasher.update(&held[start..]);
            let parsed = fspl_queue::open_stream(
                std::io::Cursor::new(held.clone()),
                self.identities.as_deref(),
            );
            let left = len - held.len() as u64;
            let decoded = match parsed {
                Ok((d, _)) => d,
                Err(e) if needs_more(&e) && left > 0 && held.len() < HEADER_HOLD => continue,
                Err(fspl_format::HeaderError::Encrypted) => {
                    return Ok((held, Err("the job is encrypted, and the server has no identity to read it with for the trust check (decrypt_with)".into())));
                }
                Err(e) if needs_more(&e) && left > 0 => {
                    return Ok((held, Err("no job header within its first 32 MiB".into())));
                }
                Err(e) => {
                    return Ok((
                        held,
                        Err(format!("not a readable job: {}", display_chain(&e))),
                    ));
                }
            };
            let queue_name = self.queue.as_ref().and_then(|q| q.name().ok().flatten());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let verdict = fspl_queue::verify::check_header(
                &decoded.header,
                &decoded.ext,
                self.trust.as_ref(),
                queue_name.as_deref(),
                self.allow_job_params,
                now,
            )
            .map(|_| ())
            .map_err(|r| match &r.sender {
                Some(who) => format!("sender {who:?}: {}", r.reason),
                None => r.reason,
            });
            return Ok((held, verdict));
        }
    }

    /// Read and drop the rest of a refused job, and check its digest.
    fn skip(
        &mut self,
        mut left: u64,
        mut hasher: blake3::Hasher,
        name: &[u8],
    ) -> Result<(), Fatal> {
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = read_some(&mut self.inp, &mut self.buf[..want])?;
            hasher.update(&self.buf[..n]);
            left -= n as u64;
        }
        check_trailer(&mut self.inp, hasher.finalize(), name)
    }

    /// Commit the batch (one flush, the renames, one directory fsync) and
    /// acknowledge each of its jobs.
    fn commit(&mut self) -> Result<(), Fatal> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.ids);
        let committed = self.batch().commit().map_err(|e| Fatal::queue(&e))?;
        let mut failed = None;
        for (id, c) in ids.into_iter().zip(committed) {
            match c.outcome {
                Outcome::Stored => {
                    self.summary.stored += 1;
                    self.send(&Msg::Ack { id })?;
                }
                Outcome::AlreadyThere => {
                    self.summary.duplicates += 1;
                    self.send(&Msg::Ack { id })?;
                }
                Outcome::Conflict => {
                    self.summary.refused += 1;
                    self.send(&Msg::Refused {
                        id,
                        reason: format!(
                            "a different job named {} is already in the queue",
                            escape_controls(&c.name.to_string_lossy())
                        ),
                    })?;
                }
                // Not stored, not acknowledged: sent again next time.
                Outcome::Failed(e) => {
                    failed.get_or_insert(Fatal::queue(&e));
                }
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Whether reading a header failed for want of bytes that may still come.
fn needs_more(e: &fspl_format::HeaderError) -> bool {
    use fspl_format::HeaderError as H;
    e.is_truncation() || matches!(e, H::Io(_) | H::Decrypt(_))
}

/// One job's bytes as the batch reads them: first those held for the
/// header check, then the rest from the wire, hashed for the trailer. At
/// the end it reads the trailer and fails the read (which makes the batch
/// drop the job) when the digest does not match; a failing connection
/// fails the read too. Either ends the session.
struct JobStream<'a> {
    inp: &'a mut TimedReader,
    name: &'a [u8],
    held: Vec<u8>,
    held_pos: usize,
    /// Bytes still to come from the wire (after the held ones).
    left: u64,
    hasher: blake3::Hasher,
    veto: Option<Fatal>,
    /// The trailer was read: every later read is the end.
    ended: bool,
}

impl fspl_queue::JobSource for JobStream<'_> {}

impl JobStream<'_> {
    fn stop(&mut self, f: Fatal) -> io::Error {
        let e = io::Error::other(f.message.clone());
        self.veto = Some(f);
        e
    }
}

impl Read for JobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.veto.is_some() {
            return Err(io::Error::other("stopped"));
        }
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        if self.held_pos < self.held.len() {
            let n = buf.len().min(self.held.len() - self.held_pos);
            buf[..n].copy_from_slice(&self.held[self.held_pos..self.held_pos + n]);
            self.held_pos += n;
            return Ok(n);
        }
        if self.left == 0 {
            // The end: the digest.
            let digest = std::mem::replace(&mut self.hasher, blake3::Hasher::new()).finalize();
            if let Err(f) = check_trailer(self.inp, digest, self.name) {
                return Err(self.stop(f));
            }
            self.ended = true;
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match read_some(self.inp, &mut buf[..want]) {
            Ok(n) => n,
            Err(f) => return Err(self.stop(f)),
        };
        self.left -= n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Read a job's digest trailer and compare it with ours.
fn check_trailer(inp: &mut TimedReader, ours: blake3::Hash, name: &[u8]) -> Result<(), Fatal> {
    let mut theirs = [0u8; DIGEST_LEN];
    let mut n = 0;
    while n < theirs.len() {
        n += read_some(inp, &mut theirs[n..])?;
    }
    if ours.as_bytes() != &theirs {
        let shown = if name.is_empty() {
            String::new()
        } else {
            format!(" {}", escape_controls(&String::from_utf8_lossy(name)))
        };
        return Err(Fatal::transient(format!(
            "a job{shown} arrived damaged: its bytes do not match the digest the client sent"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/fspl/intake.toml"), text).map_err(|e| e.to_string())
    }

    /// A session over pipes, as sshd would run it: `frames` are what the
    /// client sends; returns what the server answered and how it ended.
    fn session(
        config: &Path,
        request: &str,
        frames: Vec<u8>,
    ) -> (Vec<Msg>, Result<Summary, Fatal>) {
        let (from_client, to_server) = std::io::pipe().unwrap();
        let (from_server, to_client) = std::io::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = to_server;
            let _ = std::io::Write::write_all(&mut w, &frames);
        });
        let config = config.to_path_buf();
        let request = request.to_string();
        let server = std::thread::spawn(move || {
            serve(
                &config,
                "laptop",
                Some(&request),
                File::from(std::os::fd::OwnedFd::from(from_client)),
                File::from(std::os::fd::OwnedFd::from(to_client)),
            )
        });
        let mut r = from_server;
        let mut msgs = Vec::new();
        while let Ok(m) = Msg::read_from(&mut r) {
            msgs.push(m);
        }
        writer.join().unwrap();
        (msgs, server.join().unwrap())
    }

    /// A job (a NOP header, then `payload`, with its length and digest).
    fn job(seq: u64, payload: &[u8]) -> Vec<u8> {
        let h = fspl_format::JobHeader {
            seq,
            ctime: fspl_format::Ctime { secs: 1, nanos: 2 },
            cmd_type: fspl_format::CmdType::Nop,
        };
        let (len, digest) =
            fspl_trust::digest::hash_reader(fspl_format::DigestAlg::Blake3, &mut &payload[..])
                .unwrap();
        let ext = fspl_format::Extension {
            payload_len: Some(len),
            digest: Some(digest),
            ..Default::default()
        };
        let mut out = h.encode_with(&ext).unwrap();
        out.extend_from_slice(payload);
        out
    }

    fn frame(id: u64, name: &str, bytes: &[u8]) -> Vec<u8> {
        Msg::job_frame(id, name.as_bytes(), bytes)
    }

    fn hello() -> Vec<u8> {
        Msg::Hello {
            min: wire::VERSION_MIN,
            max: wire::VERSION_MAX,
        }
        .encode()
    }

    #[test]
    fn a_session_stores_jobs_under_their_names_and_takes_a_resend_as_delivered() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::init(d.path().join("q").as_os_str(), false).unwrap();
        let config = d.path().join("intake.toml");
        std::fs::write(
            &config,
            format!("[identity.laptop.queues]\nq = \"{}\"\n", q.dir().display()),
        )
        .unwrap();
        // Small jobs (read whole by the batch's first 4 KiB read, after
        // which it reads once more) and a larger one; then the first again,
        // and a different job under its name.
        let (one, big, empty) = (job(1, b"one"), job(2, &vec![7u8; 3_000_000]), job(3, b""));
        let mut frames = hello();
        frames.extend(frame(1, "fspl-a.fspl", &one));
        frames.extend(frame(2, "fspl-b.fspl", &big));
        frames.extend(frame(3, "fspl-c.fspl", &empty));
        frames.extend(Msg::End.encode());
        let (msgs, r) = session(&config, "fspl-push q", frames);
        let s = r.unwrap();
        assert_eq!((s.stored, s.duplicates, s.refused), (3, 0, 0));
        assert!(matches!(msgs[0], Msg::Hello { .. }));
        assert!(matches!(msgs[1], Msg::Ready { .. }));
        let mut acks: Vec<&Msg> = msgs[2..msgs.len() - 1].iter().collect();
        acks.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(
            acks,
            [
                &Msg::Ack { id: 1 },
                &Msg::Ack { id: 2 },
                &Msg::Ack { id: 3 }
            ]
        );
        assert_eq!(msgs.last(), Some(&Msg::Bye));
        assert_eq!(
            std::fs::read(q.job_path(OsStr::new("fspl-a.fspl"))).unwrap(),
            one
        );
        assert_eq!(
            std::fs::read(q.job_path(OsStr::new("fspl-b.fspl"))).unwrap(),
            big
        );
        assert_eq!(
            std::fs::read(q.job_path(OsStr::new("fspl-c.fspl"))).unwrap(),
            empty
        );

        // A job that is not one, and a job whose payload was cut, are
        // refused without ending the session (the rest of each is read).
        let mut cut = job(9, b"cut short");
        cut.truncate(cut.len() - 3);
        let mut frames = hello();
        frames.extend(frame(7, "fspl-a.fspl", &one));
        frames.extend(frame(8, "fspl-b.fspl", &job(2, b"not b")));
        frames.extend(frame(
            9,
            "fspl-x.fspl",
            b"not a job at all, but long enough to be read",
        ));
        frames.extend(frame(10, "fspl-y.fspl", &cut));
        frames.extend(frame(11, "fspl-d.fspl", &job(4, b"four")));
        frames.extend(Msg::End.encode());
        let (msgs, r) = session(&config, "fspl-push q", frames);
        let s = r.unwrap();
        assert_eq!((s.stored, s.duplicates, s.refused), (1, 1, 3), "{msgs:?}");
        assert!(msgs.contains(&Msg::Ack { id: 11 }), "{msgs:?}");
        for id in [9, 10] {
            assert!(
                msgs.iter()
                    .any(|m| matches!(m, Msg::Refused { id: i, .. } if *i == id)),
                "{id}: {msgs:?}"
            );
        }
        assert!(msgs.contains(&Msg::Ack { id: 7 }), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| matches!(m, Msg::Refused { id: 8, reason } if reason.contains("a different job named fspl-b.fspl"))),
            "{msgs:?}"
        );
        assert_eq!(
            std::fs::read(q.job_path(OsStr::new("fspl-b.fspl"))).unwrap(),
            big
        );
        let names: Vec<_> = std::fs::read_dir(q.jobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 4, "no temporary left: {names:?}");
    }

    #[test]
    fn a_damaged_job_ends_the_session_and_is_not_stored_but_the_jobs_before_it_are() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::init(d.path().join("q").as_os_str(), false).unwrap();
        let config = d.path().join("intake.toml");
        std::fs::write(
            &config,
            format!("[identity.laptop.queues]\nq = \"{}\"\n", q.dir().display()),
        )
        .unwrap();
        let mut frames = hello();
        frames.extend(frame(1, "fspl-a.fspl", &job(1, b"good")));
        let mut bad = frame(2, "fspl-b.fspl", &job(2, b"bad"));
        let n = bad.len();
        bad[n - 1] ^= 1;
        frames.extend(bad);
        frames.extend(frame(3, "fspl-c.fspl", &job(3, b"never read")));
        let (msgs, r) = session(&config, "fspl-push q", frames);
        let f = r.unwrap_err();
        assert_eq!(f.kind, FatalKind::Transient);
        assert!(f.message.contains("fspl-b.fspl arrived damaged"), "{f}");
        assert!(matches!(msgs.last(), Some(Msg::Fatal { .. })), "{msgs:?}");
        let names: Vec<_> = std::fs::read_dir(q.jobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsStr::new("fspl-a.fspl")]);
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
