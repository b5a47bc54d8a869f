//! The payload's length and digest: checked before the command starts, or
//! while it reads (without a trust file), and the form in which the payload
//! reaches it (the job file, a private spool copy, a pipe fed under a read
//! lease, a pipe from the decoder).

use std::ffi::OsStr;
use std::io::{self, Seek, SeekFrom};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;

use fspl_format::{DigestAlg, Extension};
use tracing::debug;

use super::{ProcessError, Run};
use crate::bounded::too_long;
use crate::concurrent::{self, FileCheck, HashingReader};
use crate::error::QueueError;
use crate::exec::Outcome;
use crate::lease::{LeaseFeed, Leased, ReadLease, check_under_lease};
use crate::pump::Pump;
use crate::queue::{CopyError, OpenedJob, Payload, PayloadFinish};
use crate::spool;
use crate::verify::{self, Refusal};

/// What vetting a job's payload decided.
pub(super) enum Verdict {
    Run(Box<OpenedJob>, Plan),
    Refuse(Refusal),
    /// The payload cannot be read to the end (e.g. corrupt compression):
    /// a failed job, as if the command had failed on it.
    Fail(Outcome),
}

/// How a payload that passed reaches the command.
pub(super) enum Plan {
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

/// Why a payload is vetted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Its command is about to run.
    Run,
    /// Telling copies of one seq apart: nothing runs on it.
    Judge,
}

impl Run<'_> {
    /// The trust file's name for a job's signer, if there is a trust file
    /// and it lists the key.
    pub(super) fn signer_name(&self, ext: &Extension) -> Option<String> {
        let key = ext.signer?;
        let trust = self.opts.trust.as_deref()?;
        trust.sender(&key).map(|s| s.name.clone())
    }

    /// Decide how the payload of a job that promises a length or digest
    /// is checked, and check what must be checked before anything runs.
    ///
    /// - The length of a job file's payload is always checked first, from
    ///   the file's size (and an encrypted one's from the age file's size):
    ///   a file cut short or grown in transit is refused before any of it
    ///   is read.
    /// - Without a trust file the digest guards against accidental damage
    ///   only; when the command reads the payload it gets it at once and
    ///   the digest is checked meanwhile (`Plan::CheckWhileRunning`,
    ///   `Plan::HashOnTheWay`): a mismatch then fails the job.
    /// - With a trust file the command reads nothing unchecked: the job
    ///   file's payload is hashed under a read lease and fed to the command
    ///   from it (`Plan::Leased`), or, where no lease can be had, copied
    ///   while hashed; a decoded payload is copied while hashed.
    /// - Judging copies of one job (`Purpose::Judge`), or a command that
    ///   ignores the payload: hashed before, nothing copied.
    pub(super) fn verify_payload(
        &mut self,
        name: &OsStr,
        mut job: OpenedJob,
        purpose: Purpose,
    ) -> Result<Verdict, ProcessError> {
        let ext = job.ext.clone();
        // The header of the file actually opened is what counts: the one
        // vetted earlier came from another open of the same name, which a
        // writer could have replaced in between.
        if self.opts.trust.is_some()
            && let Err(r) = self.vet_header(&job.header, &ext)
        {
            job.payload.close();
            return Ok(Verdict::Refuse(r));
        }
        if ext.payload_len.is_none() && ext.digest.is_none() {
            return Ok(Verdict::Run(Box::new(job), Plan::AsIs));
        }
        let alg = ext.digest.map(|d| d.alg).unwrap_or(DigestAlg::Blake3);
        let path = self.queue.job_path(name);
        let declared = ext.payload_len;
        let trusted = self.opts.trust.is_some();
        // Whether the command will read the payload.
        let reads = purpose == Purpose::Run && !self.opts.ignore_payload;
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
                    .map_err(|source| QueueError::Io {
                        action: "stat",
                        path: path.clone(),
                        source,
                    })?
                    .len()
                    .saturating_sub(job.header_len);
                if let Some(r) = concurrent::length_refusal(&ext, size) {
                    return refuse(self, job, r);
                }
                if ext.digest.is_none() {
                    // A length alone: the file's size says it all.
                    return Ok(Verdict::Run(Box::new(job), Plan::AsIs));
                }
                if reads && !trusted {
                    debug!(
                        seq = job.header.seq,
                        "payload checked while the command reads it"
                    );
                    return Ok(Verdict::Run(Box::new(job), Plan::CheckWhileRunning));
                }
                if reads {
                    // With a trust file.
                    match check_under_lease(f, job.header_len, &ext) {
                        Ok(Leased::Passed(lease, len)) => {
                            debug!(seq = job.header.seq, "payload checked under a read lease");
                            return Ok(Verdict::Run(Box::new(job), Plan::Leased(lease, len)));
                        }
                        Ok(Leased::Failed(why)) => return refuse(self, job, Refusal::new(why)),
                        Err(e) => {
                            job.payload.close();
                            return Ok(self.unreadable_payload(&ext, e, false));
                        }
                        // Copied below.
                        Ok(Leased::Unavailable) => {
                            debug!(
                                seq = job.header.seq,
                                "no read lease on the job file; copying the payload"
                            );
                        }
                    }
                } else {
                    // Nothing runs on it, or not on the payload: hash it
                    // where it is.
                    let never = AtomicBool::new(false);
                    return match concurrent::check_file_range(f, job.header_len, &ext, &never) {
                        Ok(None) => Ok(Verdict::Run(Box::new(job), Plan::AsIs)),
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
                    return Ok(Verdict::Run(Box::new(job), Plan::HashOnTheWay));
                }
            }
            Payload::Decoded { .. } => {}
        }
        let decoded = !matches!(job.payload, Payload::File(_));
        if !reads {
            // Nothing runs on it (or the command does not read it): hash
            // it, keep nothing.
            let hashed = fspl_trust::digest::hash_reader(alg, &mut job.payload_reader());
            return match hashed {
                Ok((len, digest)) => match verify::check_payload(&ext, len, &digest) {
                    Ok(()) => Ok(Verdict::Run(Box::new(job), Plan::AsIs)),
                    Err(r) => refuse(self, job, r),
                },
                Err(e) => {
                    job.payload.close();
                    Ok(self.unreadable_payload(&ext, e, decoded))
                }
            };
        }
        // The command reads a private copy, made while the payload is
        // hashed: an unlinked temporary file next to the queue. A decoded
        // stream (compressed, encrypted, -d) cannot be rewound, and decoding
        // it twice would let a swapped file feed the command bytes that were
        // never checked; with a trust file, a plain one that cannot be
        // leased is copied (or reflinked) too, so that a writer changing the
        // job file in place after the check cannot change what the command
        // reads. Never more than one byte past the header's length is read.
        let jobs_dir = self.queue.jobs_dir();
        let copied = match &mut job.payload {
            Payload::File(f) => {
                if let Err(source) = f.seek(SeekFrom::Start(job.header_len)) {
                    job.payload.close();
                    return Err(QueueError::Io {
                        action: "seek to the payload of",
                        path,
                        source,
                    }
                    .into());
                }
                spool::private_copy_of_file(jobs_dir, f, alg, declared)
            }
            other => spool::private_copy_of_stream(Some(jobs_dir), other.reader(), alg, declared),
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
                    path,
                    source,
                }
                .into());
            }
        };
        if let Err(mut r) = verify::check_payload(&ext, spooled.len, &spooled.digest) {
            r.sender = self.signer_name(&ext);
            return Ok(Verdict::Refuse(r));
        }
        Ok(Verdict::Run(
            Box::new(OpenedJob {
                header,
                header_len,
                ext,
                payload: Payload::File(spooled.file),
            }),
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

/// The command's stdin for a payload, and what settles it afterwards.
pub(super) fn payload_stdio(
    payload: Payload,
    header_len: u64,
    ext: &Extension,
    plan: Plan,
) -> io::Result<(Stdio, PayloadFinish)> {
    Ok(match (plan, payload) {
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
