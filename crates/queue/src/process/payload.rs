//! Checking a job before its command runs: its header against the trust
//! file, its payload's length and digest, and the form in which the
//! payload reaches the command (the job file itself, a private spool copy,
//! a pipe fed under a read lease, a pipe hashing what a decoder passes on).
//!
//! [`JobCheck::job`] is the one place that decides whether a job runs:
//! `queue-process` and the daemon (through [`super::process`]) and
//! `stdin-process` call it, and so can a transport's intake. It decides
//! [`Verdict::Run`] with a [`Cleared`] job whose payload the command may
//! read, [`Verdict::Refuse`], or [`Verdict::Fail`].
//!
//! - The length of a job file's payload is always checked first, from the
//!   file's size (and an encrypted one's from the age file's size): a file
//!   cut short or grown in transit is refused before any of it is read.
//! - Without a trust file the digest guards against accidental damage
//!   only; when the command reads the payload it gets it at once and the
//!   digest is checked meanwhile (the concurrent check of a job file, or
//!   hashed on its way through the pump): a mismatch then fails the job.
//! - With a trust file the command reads nothing unchecked: the job file's
//!   payload is hashed under a read lease and fed to the command from it,
//!   or, where no lease can be had, copied while hashed; a decoded payload
//!   is copied while hashed.
//! - A payload nothing reads ([`PayloadUse::Unused`]: judging copies of
//!   one job, a command that ignores its payload) is hashed before, and
//!   nothing is copied.

use std::borrow::Cow;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;

use fspl_format::{DigestAlg, Extension, JobHeader};
use fspl_trust::TrustFile;
use tracing::debug;

use crate::bounded::too_long;
use crate::concurrent::{self, FileCheck, HashingReader};
use crate::error::QueueError;
use crate::exec::Outcome;
use crate::lease::{LeaseFeed, Leased, ReadLease, check_under_lease};
use crate::pump::Pump;
use crate::queue::{CopyError, OpenedJob, Payload, PayloadFinish};
use crate::spool;
use crate::verify::{self, Refusal, SignatureMemo, Vetted};

/// What the check of a job decided.
pub enum Verdict {
    /// It may run: the job, with its payload as the command may read it.
    Run(Box<Cleared>),
    /// It must not run: the header does not pass the trust file, or the
    /// payload does not match the header (the caller moves it aside, or
    /// reports it).
    Refuse(Refusal),
    /// The payload cannot be read to the end (a plain job file's I/O
    /// error): a failed job, as if the command had failed on it.
    Fail(Outcome),
}

/// A job that passed its check, and how its payload reaches the command.
pub struct Cleared {
    pub job: OpenedJob,
    plan: Plan,
}

/// How a payload that passed reaches the command.
enum Plan {
    /// As it is: checked already, or nothing to check.
    AsIs,
    /// The job file itself; its digest is checked meanwhile (no trust file).
    CheckWhileRunning,
    /// Through a pipe from the decrypting reader, hashed on its way (no
    /// trust file; the length was checked from the file's size).
    HashOnTheWay,
    /// Checked under a read lease; fed to the command through a pipe from
    /// the leased file (`len` bytes).
    Leased(ReadLease, u64),
}

/// What becomes of a job's payload once the job is cleared, which decides
/// when and how it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadUse {
    /// The command reads it as it runs (`queue-process`, `stdin-process`).
    Read,
    /// The command gets it on stdin but is not meant to read it
    /// (`stdin-process --ignore-payload`, where fspl's own stdin is the
    /// job): checked in full before the command starts, and what the
    /// command could read is checked bytes (the job file itself without a
    /// trust file, a private copy with one).
    Exposed,
    /// Nothing reads it (`queue-process --ignore-payload`, telling copies
    /// of one seq apart): checked in full where it is, nothing copied.
    Unused,
}

/// What a job must pass before its command runs (see the module docs).
pub struct JobCheck<'a> {
    trust: Option<&'a TrustFile>,
    queue_name: Option<String>,
    allow_job_params: bool,
    spool_dir: Option<&'a Path>,
    /// A header is vetted up to three times per job (see
    /// [`SignatureMemo`]).
    memo: SignatureMemo,
}

impl<'a> JobCheck<'a> {
    /// Jobs checked against `trust` (without one, only the payload's own
    /// length and digest, when the header carries them) for the queue
    /// named `queue_name` (`stdin-process`: the job's own destination),
    /// with job params used by the command or not (`allow_job_params`).
    pub fn new(
        trust: Option<&'a TrustFile>,
        queue_name: Option<String>,
        allow_job_params: bool,
    ) -> JobCheck<'a> {
        JobCheck {
            trust,
            queue_name,
            allow_job_params,
            spool_dir: None,
            memo: SignatureMemo::default(),
        }
    }

    /// Private copies of payloads are made in `dir` (`queue-process`: the
    /// queue's `jobs/`), not in the system's temporary directory.
    pub fn spool_in(mut self, dir: &'a Path) -> JobCheck<'a> {
        self.spool_dir = Some(dir);
        self
    }

    pub fn trust(&self) -> Option<&'a TrustFile> {
        self.trust
    }

    pub fn queue_name(&self) -> Option<&str> {
        self.queue_name.as_deref()
    }

    /// The checks on the header alone (cheap; done before the payload is
    /// read), against the receiver's clock now. Without a trust file
    /// nothing is required of the header.
    pub fn header(&self, header: &JobHeader, ext: &Extension) -> Result<Vetted, Refusal> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        verify::check_header_memo(
            header,
            ext,
            self.trust,
            self.queue_name.as_deref(),
            self.allow_job_params,
            now,
            &self.memo,
        )
    }

    /// The trust file's name for a job's signer, if there is a trust file
    /// and it lists the key.
    pub fn signer_name(&self, ext: &Extension) -> Option<String> {
        let key = ext.signer?;
        self.trust?.sender(&key).map(|s| s.name.clone())
    }

    /// Check a job (its header again when there is a trust file, then its
    /// payload as `usage` needs) and decide whether it runs. `path` names
    /// the job in I/O errors. For a [`Payload::File`], `job.header_len` is
    /// where the payload starts in the file. Errors are I/O errors of the
    /// check itself (stat, seek, writing the private copy); a payload that
    /// cannot be read is a verdict.
    pub fn job(
        &self,
        mut job: OpenedJob,
        usage: PayloadUse,
        path: &Path,
    ) -> Result<Verdict, QueueError> {
        let ext = job.ext.clone();
        // The header of the file actually opened is what counts: one
        // vetted earlier came from another open of the same name, which a
        // writer could have replaced in between.
        if self.trust.is_some()
            && let Err(r) = self.header(&job.header, &ext)
        {
            job.payload.close();
            return Ok(Verdict::Refuse(r));
        }
        if ext.payload_len.is_none() && ext.digest.is_none() {
            return Ok(cleared(job, Plan::AsIs));
        }
        let alg = ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
        let declared = ext.payload_len;
        let trusted = self.trust.is_some();
        // Whether the command reads the payload as it runs, and whether it
        // can read what is handed back.
        let reads = usage == PayloadUse::Read;
        let handed = usage != PayloadUse::Unused;
        let refuse = |this: &Self, job: OpenedJob, mut r: Refusal| {
            job.payload.close();
            // With a trust file the header has passed: name its signer.
            r.sender = this.signer_name(&job.ext);
            Ok(Verdict::Refuse(r))
        };
        match &mut job.payload {
            Payload::File(f) => {
                let size = f
                    .metadata()
                    .map_err(QueueError::io("stat", path))?
                    .len()
                    .saturating_sub(job.header_len);
                if let Some(r) = concurrent::length_refusal(&ext, size) {
                    return refuse(self, job, r);
                }
                if ext.digest.is_none() {
                    // A length alone: the file's size says it all.
                    return Ok(cleared(job, Plan::AsIs));
                }
                if reads && !trusted {
                    debug!(
                        seq = job.header.seq,
                        "payload checked while the command reads it"
                    );
                    return Ok(cleared(job, Plan::CheckWhileRunning));
                }
                if reads {
                    // With a trust file.
                    match check_under_lease(f, job.header_len, &ext) {
                        Ok(Leased::Passed(lease, len)) => {
                            debug!(seq = job.header.seq, "payload checked under a read lease");
                            return Ok(cleared(job, Plan::Leased(lease, len)));
                        }
                        Ok(Leased::Failed(why)) => return refuse(self, job, Refusal::new(why)),
                        Err(e) => {
                            job.payload.close();
                            return Ok(self.unreadable_payload(&ext, e, false));
                        }
                        // Copied below (as a payload handed to a command
                        // that is not meant to read it is).
                        Ok(Leased::Unavailable) => {
                            debug!(
                                seq = job.header.seq,
                                "no read lease on the job file; copying the payload"
                            );
                        }
                    }
                } else if !(handed && trusted) {
                    // Nothing reads it, or the command may read the job
                    // file itself once it is checked (no trust file): hash
                    // it where it is.
                    let never = AtomicBool::new(false);
                    return match concurrent::check_file_range(f, job.header_len, &ext, &never) {
                        Ok(None) => Ok(cleared(job, Plan::AsIs)),
                        Ok(Some(why)) => refuse(self, job, Refusal::new(why)),
                        Err(e) => {
                            job.payload.close();
                            Ok(self.unreadable_payload(&ext, e, false))
                        }
                    };
                }
            }
            Payload::Stream { size, .. } => {
                if let Some(have) = *size
                    && let Some(r) = concurrent::length_refusal(&ext, have)
                {
                    return refuse(self, job, r);
                }
                if reads && !trusted && size.is_some() {
                    debug!(
                        seq = job.header.seq,
                        "payload hashed on its way to the command"
                    );
                    return Ok(cleared(job, Plan::HashOnTheWay));
                }
            }
            Payload::Decoded { .. } => {}
        }
        let decoded = !matches!(job.payload, Payload::File(_));
        if !handed {
            // Nothing reads it: hash it, keep nothing.
            let hashed = fspl_trust::digest::hash_reader(alg, &mut job.payload_reader());
            return match hashed {
                Ok((len, digest)) => match verify::check_payload(&ext, len, &digest) {
                    Ok(()) => Ok(cleared(job, Plan::AsIs)),
                    Err(r) => refuse(self, job, r),
                },
                Err(e) => {
                    job.payload.close();
                    Ok(self.unreadable_payload(&ext, e, decoded))
                }
            };
        }
        // The command reads a private copy, made while the payload is
        // hashed: an unlinked temporary file (`queue-process`: next to the
        // queue, see `spool_in`). A decoded stream (compressed, encrypted,
        // -d, a pipe) cannot be rewound, and decoding it twice would let a
        // swapped file feed the command bytes that were never checked;
        // with a trust file, a plain one that cannot be leased is copied
        // (or reflinked) too, so that a writer changing the job file in
        // place after the check cannot change what the command reads.
        // Never more than one byte past the header's length is read.
        let copied = match &mut job.payload {
            Payload::File(f) => {
                if let Err(source) = f.seek(SeekFrom::Start(job.header_len)) {
                    job.payload.close();
                    return Err(QueueError::Io {
                        action: "seek to the payload of",
                        path: path.to_path_buf(),
                        source,
                    });
                }
                let dir = self
                    .spool_dir
                    .map_or_else(|| Cow::Owned(std::env::temp_dir()), Cow::Borrowed);
                spool::private_copy_of_file(&dir, f, alg, declared)
            }
            other => spool::private_copy_of_stream(self.spool_dir, other.reader(), alg, declared),
        };
        let OpenedJob {
            header,
            header_len,
            ext,
            payload,
        } = job;
        payload.close();
        let spooled = match copied {
            Ok(s) => s,
            Err(CopyError::Read(e)) => return Ok(self.unreadable_payload(&ext, e, decoded)),
            Err(CopyError::Write(source)) => {
                return Err(QueueError::Io {
                    action: "write a private copy of the payload of",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if let Err(mut r) = verify::check_payload(&ext, spooled.len, &spooled.digest) {
            r.sender = self.signer_name(&ext);
            return Ok(Verdict::Refuse(r));
        }
        Ok(cleared(
            OpenedJob {
                header,
                header_len,
                ext,
                payload: Payload::File(spooled.file),
            },
            Plan::AsIs,
        ))
    }

    /// What a payload that cannot be read to the end gets: one longer than
    /// its header says, or a compressed or encrypted one that cannot be
    /// decoded to the end (cut short, corrupt), is refused like one whose
    /// length or digest does not match (failing it would let --on-error
    /// delete move past the genuine job's seq); a plain file that cannot
    /// be read (an I/O error) fails the job.
    fn unreadable_payload(&self, ext: &Extension, e: io::Error, decoded: bool) -> Verdict {
        let reason = if let Some(t) = too_long(&e) {
            t.to_string()
        } else if decoded {
            format!(
                "payload cannot be read to the end ({e}), so its length and digest cannot be checked"
            )
        } else {
            return Verdict::Fail(Outcome::PayloadError(e.to_string()));
        };
        Verdict::Refuse(Refusal {
            reason,
            sender: self.signer_name(ext),
        })
    }
}

fn cleared(job: OpenedJob, plan: Plan) -> Verdict {
    Verdict::Run(Box::new(Cleared { job, plan }))
}

impl Cleared {
    /// The command's stdin, and what settles the payload once the command
    /// has ended (see [`PayloadFinish`]: the concurrent check's answer, the
    /// rest of a pumped payload, the end of a lease feed).
    pub fn into_stdio(self) -> io::Result<(Stdio, PayloadFinish)> {
        let Cleared { job, plan } = self;
        let (header_len, ext) = (job.header_len, &job.ext);
        Ok(match (plan, job.payload) {
            (Plan::CheckWhileRunning, Payload::File(f)) => {
                // A descriptor of its own for the check (only `pread`: the
                // command's file position is its own business).
                let check = FileCheck::start(f.try_clone()?, header_len, ext)?;
                (Stdio::from(f), PayloadFinish::Check(check))
            }
            (Plan::HashOnTheWay, Payload::Stream { reader, what, .. }) => {
                let (pipe, pump) = Pump::start(Box::new(HashingReader::new(reader, ext)))?;
                (Stdio::from(pipe), PayloadFinish::Pump(pump, what))
            }
            (Plan::Leased(lease, len), payload) => {
                payload.close();
                let (pipe, feed) = LeaseFeed::new(lease, header_len, len)?;
                (Stdio::from(pipe), PayloadFinish::Lease(feed))
            }
            (_, payload) => payload.into_stdio()?,
        })
    }

    /// Nothing will read the payload: stop its decoder, if any (a lease is
    /// released as it is dropped).
    pub fn close(self) {
        self.job.payload.close();
    }
}
