//! `fspl s3-upload`: jollyae's spool-directory uploader, with its flags
//! (see docs/s3.md). The work is in fspl_s3::upload; this checks the flags
//! (a contradiction is one line and exit status 2, as a usage error),
//! builds the uploader and runs it once (`--once`) or until killed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fspl_s3::upload::Config;

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
    #[arg(
        short = 's',
        long = "src",
        visible_alias = "incoming",
        value_name = "INCOMING"
    )]
    pub src: Option<PathBuf>,
    /// Where a file is while it is uploaded (default: COMPLETED); needed
    /// for crash recovery and with -r
    #[arg(
        short = 'i',
        long = "interim",
        visible_alias = "working",
        value_name = "WORKING"
    )]
    pub interim: Option<PathBuf>,
    /// Where uploaded files go
    #[arg(
        short = 'd',
        long = "dest",
        visible_alias = "completed",
        value_name = "COMPLETED"
    )]
    pub dest: Option<PathBuf>,
    /// Where files whose upload failed go; INCOMING resubmits them (tried
    /// again after a growing delay)
    #[arg(
        short = 'f',
        long = "fail",
        visible_alias = "failed",
        value_name = "FAILED"
    )]
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

impl Args {
    fn config(&self) -> Config {
        Config {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            incoming: self.src.clone(),
            working: self.interim.clone(),
            completed: self.dest.clone(),
            failed: self.fail.clone(),
            remove: self.remove,
            remove_failed: self.remove_failed,
            acl: self.acl.clone(),
            no_upload: self.no_upload,
            random_no_upload_fail: self.random_no_upload_fail,
            jobs: self.jobs as usize,
            tries: self.tries,
            part_size_mib: self.part_size,
            verbose: self.verbose,
        }
    }
}

pub fn s3_upload(a: Args) -> anyhow::Result<ExitCode> {
    if !(a.poll.is_finite() && a.poll > 0.0 && a.poll <= 3600.0) {
        return Ok(usage(&format!(
            "--poll: {} is not a number of seconds from 0 to 3600",
            a.poll
        )));
    }
    let up = match a.config().build() {
        Ok(u) => u,
        Err(e) => return Ok(usage(&e)),
    };
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
                "{} uploaded ({} bytes), {} failed",
                d.uploaded,
                d.bytes,
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
