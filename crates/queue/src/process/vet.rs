//! Vetting: headers checked against the trust file, the copies of one
//! seq told apart (and the bad ones refused), files that cannot be read
//! refused, and refused jobs moved to `rejected/`.

use std::ffi::{OsStr, OsString};

use tracing::{debug, warn};

use super::payload::{PayloadUse, Verdict};
use super::{ProcessError, Run, unless_gone};
use crate::error::QueueError;
use crate::scan;
use crate::verify::{self, Refusal};

impl Run<'_> {
    /// With a trust file, refuse every file of this seq whose header does
    /// not pass (so a forged copy cannot block the genuine one); returns
    /// the rest.
    pub(super) fn vet_candidates(
        &mut self,
        seq: u64,
        names: Vec<OsString>,
    ) -> Result<Vec<OsString>, ProcessError> {
        if self.opts.trust.is_none() {
            return self.refuse_bad_copies(seq, names);
        }
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            let read = self
                .queue
                .read_job_header(&name, self.opts.decoder.as_ref());
            let Some(d) = unless_gone(read)? else {
                continue;
            };
            match self.check.header(&d.header, &d.ext) {
                Ok(_) => kept.push(name),
                Err(r) => self.refuse(&name, Some(seq), &r)?,
            }
        }
        self.refuse_bad_copies(seq, kept)
    }

    /// When several files hold this seq, refuse those whose payload does
    /// not match their header's length and digest, so that a copy with a
    /// changed payload cannot block the genuine one as "same seq, different
    /// contents"; returns the rest.
    fn refuse_bad_copies(
        &mut self,
        seq: u64,
        names: Vec<OsString>,
    ) -> Result<Vec<OsString>, ProcessError> {
        if names.len() < 2 {
            return Ok(names);
        }
        let mut kept = Vec::with_capacity(names.len());
        for name in names {
            let Some(job) = unless_gone(self.queue.open_job(&name, self.opts.decoder.as_ref()))?
            else {
                continue;
            };
            let path = self.queue.job_path(&name);
            match self.check.job(job, PayloadUse::Unused, &path)? {
                Verdict::Refuse(r) => self.refuse(&name, Some(seq), &r)?,
                Verdict::Run(job) => {
                    job.close();
                    kept.push(name);
                }
                Verdict::Fail(_) => kept.push(name),
            }
        }
        Ok(kept)
    }

    /// With a trust file, a file named like a job that cannot be read
    /// (corrupt, truncated, undecryptable) is refused like any other bad
    /// job; without one it is skipped, as Filespooler does. Symbolic links
    /// and other non-regular files are always left alone.
    pub(super) fn refuse_unreadable(
        &mut self,
        skipped: Vec<scan::Skipped>,
    ) -> Result<(), ProcessError> {
        if self.opts.trust.is_none() {
            return Ok(());
        }
        for sk in skipped {
            if !sk.regular {
                continue;
            }
            let reason = match &sk.error {
                QueueError::BadJob { source, .. } => format!("unreadable job file: {source}"),
                other => format!("unreadable job file: {}", crate::display_chain(other)),
            };
            self.refuse(
                &sk.name,
                None,
                &Refusal {
                    reason,
                    sender: None,
                },
            )?;
        }
        Ok(())
    }

    /// Move a refused job aside and say so.
    pub(super) fn refuse(
        &mut self,
        name: &OsStr,
        seq: Option<u64>,
        r: &Refusal,
    ) -> Result<(), ProcessError> {
        let to = verify::reject(self.queue, name, seq, r)?;
        self.refused += 1;
        self.obs.refused(seq, name, &r.reason);
        // The seq of a file that cannot be read is unknown: "-", not 0.
        let seq_field = seq.map_or_else(|| "-".to_string(), |s| s.to_string());
        warn!(
            seq = %seq_field,
            file = %self.queue.job_path(name).display(),
            sender = r.sender.as_deref().unwrap_or("-"),
            "job refused: {}; moved to {}",
            r.reason,
            to.display()
        );
        Ok(())
    }

    /// Copies of one job run once (and are all deleted after): byte-
    /// identical copies, and with a trust file copies that pass it and
    /// carry the same signed content (another compression, an extra
    /// unknown header key); the first by name runs. Copies that are not
    /// one job stop processing with an error.
    pub(super) fn pick_among_duplicates(
        &self,
        seq: u64,
        mut names: Vec<OsString>,
    ) -> Result<(OsString, Vec<OsString>), ProcessError> {
        names.sort();
        let first = names.remove(0);
        let vet = self.opts.trust.as_deref().map(|t| scan::Vetting {
            allow_job_params: self.opts.allow_job_params,
            ..scan::Vetting::new(t, self.check.queue_name())
        });
        scan::check_duplicates(
            self.queue,
            self.opts.decoder.as_ref(),
            seq,
            &first,
            &names,
            vet.as_ref(),
        )?;
        if !names.is_empty() {
            debug!(
                seq,
                copies = names.len() + 1,
                "copies of one job; running it once"
            );
        }
        Ok((first, names))
    }
}
