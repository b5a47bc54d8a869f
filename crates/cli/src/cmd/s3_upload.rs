//! `fspl s3-upload`: jollyae's spool-directory uploader, with its flags
//! (see docs/s3.md). The work is in fspl_s3::upload; this checks the flags
//! (a contradiction is one line and exit status 2, as a usage error),
//! builds the uploader and runs it once (`--once`) or until killed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fspl_s3::spool::{OnFailure, OnSuccess, Spool, SpoolDirs, same_dir};
use fspl_s3::upload::{FakeTarget, Settings, Target, Uploader};

// The flags of `fspl s3-upload`: jollyae's (short and long forms), and
// ours.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// The destination bucket (not needed with -n)
    #[arg(short = 'b', long = "bucket", value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// Keys are PREFIX followed by the file's name (default: the name)
    /// (fspl extension)
    #[arg(long = "prefix", value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// The spool's incoming directory: complete files appear here (by
    /// rename)
    #[arg(short = 's', long = "src", visible_alias = "incoming", value_name = "INCOMING")]
    pub src: Option<PathBuf>,
    /// Where a file is while it is uploaded (default: COMPLETED); needed
    /// for crash recovery and with -r
    #[arg(short = 'i', long = "interim", visible_alias = "working", value_name = "WORKING")]
    pub interim: Option<PathBuf>,
    /// Where uploaded files go
    #[arg(short = 'd', long = "dest", visible_alias = "completed", value_name = "COMPLETED")]
    pub dest: Option<PathBuf>,
    /// Where files whose upload failed go; INCOMING resubmits them (tried
    /// again after a growing delay)
    #[arg(short = 'f', long = "fail", visible_alias = "failed", value_name = "FAILED")]
    pub fail: Option<PathBuf>,
    /// Remove files once uploaded (instead of -d; needs -i)
    #[arg(short = 'r', long = "remove")]
    pub remove: bool,
    /// Remove files whose upload failed (instead of -f)
    #[arg(short = 'R', long = "remove-failed")]
    pub remove_failed: bool,
    /// A canned ACL for each object: private, public-read,
    /// public-read-write, authenticated-read, bucket-owner-read,
    /// bucket-owner-full-control...
    #[arg(short = 'a', long = "acl", value_name = "ACL")]
    pub acl: Option<String>,
    /// Fake the uploads: nothing is sent (to test a pipeline)
    #[arg(short = 'n', long = "no-upload")]
    pub no_upload: bool,
    /// With -n: each fake upload fails with probability P (0.0 to 1.0)
    #[arg(long = "random-no-upload-fail", value_name = "P")]
    pub random_no_upload_fail: Option<f64>,
    /// A line for each file (uploading, uploaded, where it went)
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Upload what is in INCOMING now and exit: 0 when every file was
    /// uploaded, 1 when one failed (fspl extension)
    #[arg(long = "once")]
    pub once: bool,
    /// Files uploaded at once (fspl extension)
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,
    /// Tries of one upload on transient errors (network, 5xx, 429), with
    /// a doubling delay, before it counts as failed (fspl extension)
    #[arg(long = "tries", value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tries: u32,
    /// Without filesystem events: look for new files every SECS seconds
    /// (fspl extension)
    #[arg(long = "poll", value_name = "SECS", default_value_t = 1.0)]
    pub poll: f64,
    /// Multipart uploads for files of at least this many MiB, in parts of
    /// this size (fspl extension)
    #[arg(long = "part-size", value_name = "MIB", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(5..=5120))]
    pub part_size: u64,
}

/// A usage error: one line, exit status 2.
fn usage(text: &str) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "fspl: error: {}",
        fspl_queue::escape_controls(text)
    );
    ExitCode::from(crate::EXIT_USAGE)
}

/// The spool's directories from the flags, or the contradiction.
pub fn dirs(a: &Args) -> Result<SpoolDirs, String> {
    if a.remove && a.dest.is_some() {
        return Err("-r (--remove) and -d (--dest) contradict each other: uploaded files are either removed or moved to COMPLETED".into());
    }
    if a.remove_failed && a.fail.is_some() {
        return Err("-R (--remove-failed) and -f (--fail) contradict each other: failed files are either removed or moved to FAILED".into());
    }
    let Some(src) = a.src.clone() else {
        return Err("no incoming directory: give -s INCOMING".into());
    };
    let on_success = match (&a.dest, a.remove) {
        (Some(d), _) => OnSuccess::Move(d.clone()),
        (None, true) => OnSuccess::Remove,
        (None, false) => {
            return Err("no destination: give -d COMPLETED, or -i WORKING with -r".into());
        }
    };
    let working = match (&a.interim, &a.dest) {
        (Some(i), _) => i.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => return Err("-r needs -i WORKING (where files are while uploaded)".into()),
    };
    let on_failure = match (&a.fail, a.remove_failed) {
        (Some(f), _) => OnFailure::Move(f.clone()),
        (None, true) => OnFailure::Remove,
        (None, false) => OnFailure::Stay,
    };
    if a.interim.is_some() && same_dir(&working, &src) {
        return Err("-i (WORKING) is the same directory as -s (INCOMING)".into());
    }
    if let Some(d) = &a.dest {
        if same_dir(d, &src) {
            return Err("-d (COMPLETED) is the same directory as -s (INCOMING)".into());
        }
        if a.interim.is_some() && same_dir(d, &working) {
            return Err("-i (WORKING) is the same directory as -d (COMPLETED)".into());
        }
    }
    if let Some(f) = &a.fail
        && a.interim.is_some()
        && same_dir(f, &working)
    {
        return Err("-f (FAILED) is the same directory as -i (WORKING)".into());
    }
    Ok(SpoolDirs {
        incoming: src,
        working,
        on_success,
        on_failure,
    })
}

/// Everything else the flags must agree on.
fn check(a: &Args) -> Result<(), String> {
    if let Some(p) = a.random_no_upload_fail {
        if !a.no_upload {
            return Err("--random-no-upload-fail only makes sense with -n (--no-upload)".into());
        }
        if !(0.0..=1.0).contains(&p) {
            return Err(format!(
                "--random-no-upload-fail: {p} is not a probability (0.0 to 1.0)"
            ));
        }
    }
    if a.no_upload && a.remove && a.random_no_upload_fail.unwrap_or(0.0) == 0.0 {
        return Err("-n and -r: nothing would be uploaded and every file removed; use rm(1)".into());
    }
    if !a.no_upload && a.bucket.as_deref().is_none_or(str::is_empty) {
        return Err("no bucket: give -b BUCKET (or -n to fake the uploads)".into());
    }
    if !(a.poll.is_finite() && a.poll > 0.0 && a.poll <= 3600.0) {
        return Err(format!("--poll: {} is not a number of seconds from 0 to 3600", a.poll));
    }
    Ok(())
}

pub fn s3_upload(a: Args) -> anyhow::Result<ExitCode> {
    let dirs = match dirs(&a).and_then(|d| check(&a).map(|()| d)) {
        Ok(d) => d,
        Err(e) => return Ok(usage(&e)),
    };
    let spool = match Spool::open(dirs) {
        Ok(s) => s,
        Err(e) => return Ok(usage(&fspl_queue::display_chain(&e))),
    };
    let target: Box<dyn Target> = if a.no_upload {
        Box::new(FakeTarget {
            fail: a.random_no_upload_fail.unwrap_or(0.0),
        })
    } else {
        let opts = fspl_s3::upload_s3::Options {
            bucket: a.bucket.clone().unwrap_or_default(),
            acl: a.acl.clone(),
            part_size: a.part_size * 1024 * 1024,
        };
        match fspl_s3::upload_s3::S3Target::new(opts) {
            Ok(t) => Box::new(t),
            Err(e) => return Ok(usage(&e)),
        }
    };
    let settings = Settings {
        prefix: a.prefix.clone(),
        jobs: a.jobs as usize,
        tries: a.tries,
        verbose: a.verbose,
        ..Settings::default()
    };
    let up = Uploader::new(spool, target, settings);
    if a.verbose {
        tracing::info!(
            "uploading from {} to {}",
            up.spool.dirs.incoming.display(),
            up.target.describe()
        );
    }
    up.recover()?;
    let stop = AtomicBool::new(false);
    if a.once {
        let (d, _) = up.drain(&stop)?;
        if a.verbose || d.failed > 0 {
            tracing::info!(
                uploaded = d.uploaded,
                failed = d.failed,
                bytes = d.bytes,
                "{} uploaded, {} failed",
                d.uploaded,
                d.failed
            );
        }
        return Ok(if d.failed > 0 {
            ExitCode::from(crate::EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        });
    }
    up.watch(
        &stop,
        Duration::from_secs_f64(a.poll),
        Duration::from_secs(30),
    )?;
    Ok(ExitCode::SUCCESS)
}
