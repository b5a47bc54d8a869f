//! Moving job files: a sender's outbox is pushed to a destination, a
//! source is pulled into a queue. Synchronous, like `fspl-queue`: the
//! plain CLI never starts an async runtime; backends built on async SDKs
//! (S3, NATS) are driven from the daemon's blocking threads through the
//! same traits.
//!
//! The durability order of both directions is written once, here, and
//! every backend only moves bytes:
//!
//! - **push** ([`push::push`]): a job leaves the outbox only after the
//!   destination has acknowledged it durable ([`Ack::Durable`]); the
//!   removal from the outbox is itself made durable (one directory fsync
//!   per batch) before the job counts as sent.
//! - **pull** ([`pull::pull`]): a job is removed at the source
//!   ([`Source::remove`]) only after it is durable in the local queue
//!   (verified, written, fsynced, renamed, directory fsynced), batch by
//!   batch.
//!
//! Delivery is at-least-once: a crash between the two halves sends or
//! takes a job again, and the receiving queue runs a byte-identical copy
//! (or a seq below nextseq) once.

pub mod dir;
pub mod error;
pub mod fdio;
pub mod intake;
pub mod pull;
pub mod push;
pub mod ssh;
pub mod url;
pub mod wire;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use fspl_queue::JobSource;

pub use error::{TransportError, TransportErrorKind};
pub use url::Location;

/// Opens a [`Sink`] for a [`Location::Remote`] of its scheme.
pub type SinkOpener = fn(&Location) -> Result<Box<dyn Sink>, TransportError>;
/// Opens a [`Source`] for a [`Location::Remote`] of its scheme.
pub type SourceOpener = fn(&Location) -> Result<Box<dyn Source>, TransportError>;

/// A backend that lives in a crate above this one (async SDKs: S3, NATS)
/// and plugs into [`open_sink`]/[`open_source`]: the binary registers the
/// ones it was built with at start-up, so neither this crate nor the
/// daemon depends on them.
#[derive(Clone, Copy)]
pub struct Backend {
    /// The URL scheme, one of [`url::REMOTE_SCHEMES`].
    pub scheme: &'static str,
    pub open_sink: SinkOpener,
    pub open_source: SourceOpener,
}

static BACKENDS: std::sync::RwLock<Vec<Backend>> = std::sync::RwLock::new(Vec::new());

/// Make a backend available to [`open_sink`] and [`open_source`]
/// (registering a scheme again replaces the earlier one).
pub fn register(backend: Backend) {
    let mut all = BACKENDS.write().unwrap_or_else(|e| e.into_inner());
    all.retain(|b| b.scheme != backend.scheme);
    all.push(backend);
}

fn backend(scheme: &str) -> Result<Backend, TransportError> {
    BACKENDS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|b| b.scheme == scheme)
        .copied()
        .ok_or_else(|| {
            TransportError::Unsupported(format!(
                "{scheme}:// support is not compiled into this fspl (cargo feature \"{scheme}\")"
            ))
        })
}

/// The destination a URL names, ready to take jobs.
pub fn open_sink(location: &Location) -> Result<Box<dyn Sink>, TransportError> {
    match location {
        Location::Remote { scheme, .. } => (backend(scheme)?.open_sink)(location),
        Location::Dir(path) => Ok(Box::new(dir::DirSink::open(path)?)),
        Location::Ssh { .. } => {
            let target = ssh::SshTarget::from_location(location).expect("an ssh location");
            Ok(Box::new(ssh::SshSink::new(
                target,
                ssh::SshOptions::default(),
            )))
        }
    }
}

/// The source a URL names, ready to list jobs.
pub fn open_source(location: &Location) -> Result<Box<dyn Source>, TransportError> {
    match location {
        Location::Remote { scheme, .. } => (backend(scheme)?.open_source)(location),
        Location::Dir(path) => Ok(Box::new(dir::DirSource::open(path)?)),
        Location::Ssh { .. } => Err(TransportError::Unsupported(
            "ssh:// is a destination of `fspl push`; it cannot be pulled from".into(),
        )),
    }
}

/// One job file on its way out.
pub struct OutgoingJob<'a> {
    /// Its name in the outbox (`fspl-<uuid>.fspl`); destinations that keep
    /// names use it, so a resent job lands under the same name.
    pub name: &'a std::ffi::OsStr,
    /// The job's sequence number (from its header), for logs and
    /// ordering; `None` for an encrypted job the sender cannot read.
    pub seq: Option<u64>,
    /// Size of the job file in bytes.
    pub len: u64,
    /// The job file's bytes, from the start (a file: local sinks let the
    /// kernel copy it).
    pub reader: &'a mut dyn JobSource,
}

/// What a destination says about a job it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The job with this id is durable at the destination.
    Durable(u64),
    /// The destination will not take this job (it fails verification, the
    /// sender may not write there...): sending it again will not help.
    Refused { id: u64, reason: String },
}

/// Where [`Sink::finish`] hands acknowledgements as they arrive.
pub type AckSink<'a> = dyn FnMut(Vec<Ack>) -> Result<(), TransportError> + 'a;

/// Hand the acknowledgements collected in `acks` (if any) to `acked`,
/// leaving `acks` empty: what a sink's `finish` does as they come.
pub fn hand_over(acks: &mut Vec<Ack>, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
    if acks.is_empty() {
        return Ok(());
    }
    acked(std::mem::take(acks))
}

/// A destination of `fspl push`.
pub trait Sink {
    /// Jobs are coming: a sink may start connecting now, in the
    /// background. Nothing is reported here; a failure shows in the first
    /// `send` (or in `finish`).
    fn prepare(&mut self) {}
    /// Send one job. `id` is the caller's handle for it, echoed in the
    /// acknowledgement. The job need not be durable when this returns:
    /// sinks may pipeline and commit in batches.
    fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError>;
    /// Acknowledgements that arrived so far, without waiting.
    fn poll(&mut self) -> Result<Vec<Ack>, TransportError>;
    /// No more jobs come: make everything sent durable at the destination.
    /// The acknowledgements not yet returned by `poll` go to `acked` as
    /// they arrive, so the driver removes those jobs while the rest are
    /// still on their way; on an error, those that came before it have
    /// been handed over (or are kept for `poll`).
    fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError>;
    /// The local directory jobs land in, if any: the driver refuses to
    /// push an outbox into itself (every job would be "already there" and
    /// then removed).
    fn delivers_into(&self) -> Option<&Path> {
        None
    }
}

/// A job file waiting at a source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteJob {
    /// How the source names it (a file name, an object key, a message id).
    pub key: OsString,
    /// Its size, when the listing tells.
    pub len: Option<u64>,
}

/// A source of `fspl pull`.
pub trait Source {
    /// The jobs waiting now.
    fn list(&mut self) -> Result<Vec<RemoteJob>, TransportError>;
    /// Read one job's bytes. `Ok(None)`: it is gone (taken by someone
    /// else since the listing).
    fn open(&mut self, job: &RemoteJob) -> Result<Option<Box<dyn JobSource + '_>>, TransportError>;
    /// Remove jobs that are durable at the receiver, durably (for a
    /// directory: unlink them, then one fsync of the directory). A job
    /// that is gone already is not an error.
    fn remove(&mut self, jobs: &[RemoteJob]) -> Result<(), TransportError>;
    /// How to name a job in messages (for a directory: its path).
    fn describe(&self, job: &RemoteJob) -> PathBuf {
        PathBuf::from(&job.key)
    }
    /// The local directory jobs are taken from, if any: the driver refuses
    /// to pull a queue into itself.
    fn takes_from(&self) -> Option<&Path> {
        None
    }
    /// `--keep`: leave the jobs at the source, and remember in the queue
    /// directory `queue_dir` which were taken (so that they are taken
    /// once): from now on `remove` records instead of removing, and `list`
    /// leaves out what was recorded. Sources that cannot do this say so.
    fn keep_in(&mut self, queue_dir: &Path) -> Result<(), TransportError> {
        let _ = queue_dir;
        Err(TransportError::Unsupported(
            "--keep is not supported when pulling from this kind of source".into(),
        ))
    }
}
