//! Command-line definitions. Names, value names and parsing mirror
//! Filespooler 1.2.4 so that scripts, and even their error messages, carry
//! over; our additions are marked "(fspl extension)".

use std::ffi::OsString;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "fspl",
    version,
    long_version = long_version(),
    about = "Ordered, asynchronous remote execution: a drop-in, crash-safe Filespooler",
    long_about = None,
    disable_help_subcommand = false
)]
pub struct Cli {
    /// Logging (to stderr) level: trace, debug, info, warn or error (any
    /// case), or 1-5
    #[arg(
        short = 'l',
        long = "log-level",
        value_name = "LEVEL",
        default_value = "INFO"
    )]
    pub log_level: tracing::Level,

    #[command(subcommand)]
    pub command: Cmd,
}

/// Each command's options are built only when that command is used (or
/// its help, completions or manual page are asked for): every call starts
/// faster than if the whole tree were built first.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Cmd {
    /// Print a fresh UUID (version 4)
    #[command(after_help = "Examples:\n  fspl gen-uuid")]
    GenUuid,
    /// Print a fresh fspl-<uuid>.fspl file name
    #[command(after_help = "Examples:\n  \
        fspl prepare -s ~/fspl.seq -i notes.txt > sync/$(fspl gen-filename)")]
    GenFilename,
    /// Write a Command job to stdout (captures every FSPL_SET_* variable)
    ///
    /// The job is binary: redirect it to a file or a pipe (prepare refuses to
    /// write it to a terminal).
    #[command(after_help = "Examples:\n  \
        tar czf - Documents | fspl prepare -s ~/fspl.seq -i - -- docs-backup > sync/$(fspl gen-filename)\n  \
        FSPL_SET_REASON=nightly fspl prepare -s ~/fspl.seq -i db.dump -- db | base64 > job.b64")]
    Prepare {
        #[command(flatten)]
        seq: SeqArgs,
        /// Payload: a file, or "-" for stdin; without it the payload is empty
        #[arg(short = 'i', long = "input", value_name = "INPUT")]
        input: Option<OsString>,
        /// Parameters to send along (used by the receiver only with
        /// --allow-job-params)
        #[arg(last = true, value_name = "PARAMS")]
        params: Vec<OsString>,
    },
    /// Write a NOP job (always succeeds, runs nothing) to stdout
    #[command(after_help = "Examples:\n  \
        fspl prepare-nop --seq 5 > sync/$(fspl gen-filename)    # fill the gap left by job 5")]
    PrepareNop {
        #[command(flatten)]
        seq: SeqArgs,
    },
    /// Write a Fail job (always fails, runs nothing) to stdout
    #[command(after_help = "Examples:\n  \
        fspl prepare-fail -s ~/fspl.seq > sync/$(fspl gen-filename)    # a barrier")]
    PrepareFail {
        #[command(flatten)]
        seq: SeqArgs,
    },
    /// Print the sender's next sequence number
    #[command(after_help = "Examples:\n  fspl prepare-get-next -s ~/fspl.seq")]
    PrepareGetNext {
        /// The sender's sequence file (created holding 1 if missing); "-"
        /// for none
        #[arg(short = 's', long = "seqfile", value_name = "FILE")]
        seqfile: OsString,
    },
    /// Set the sender's next sequence number
    #[command(after_help = "Examples:\n  fspl prepare-set-next -s ~/fspl.seq 10")]
    PrepareSetNext {
        /// The sender's sequence file (created if missing)
        #[arg(short = 's', long = "seqfile", value_name = "FILE")]
        seqfile: OsString,
        /// The number to set it to
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Run the jobs in a queue
    #[command(after_help = "Examples:\n  \
        fspl queue-process -q ~/queue --allow-job-params ~/handle-job\n  \
        fspl queue-process -q ~/queue --on-error delete -n 10 sh -- -c 'cat > ~/out.$FSPL_SEQ'")]
    QueueProcess(QueueProcessArgs),
    /// Create a queue directory
    #[command(after_help = "Examples:\n  \
        fspl queue-init -q ~/queue\n  \
        fspl queue-init -q /srv/fspl/backups --name backups")]
    QueueInit {
        #[command(flatten)]
        q: QueueArg,
        /// Create only jobs/: such a queue can be written and listed but not
        /// processed
        #[arg(long = "append-only")]
        append_only: bool,
        /// Give the queue a name: signed jobs must then be addressed to it
        /// (`prepare --to NAME`) (fspl extension)
        #[arg(long = "name", value_name = "NAME")]
        name: Option<String>,
    },
    /// Show the environment of one job in a queue
    #[command(after_help = "Examples:\n  \
        fspl queue-info -q ~/queue -j 3\n  \
        fspl queue-info -q ~/queue -j 3 --json")]
    QueueInfo {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        d: DecoderArg,
        /// The job's sequence number
        #[arg(short = 'j', long = "job", value_name = "ID")]
        job: u64,
        /// Print JSON (fspl extension)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Store a job read from stdin in a queue (durably, under a fresh name)
    ///
    /// The job is checked as it is copied: header, and the payload's length
    /// and digest when the job carries them (compressed jobs are decoded to
    /// check them; encrypted ones only with --identity). A job that is not
    /// valid is refused (exit 1) and nothing is stored.
    #[command(after_help = "Examples:\n  \
        for f in sync/*.fspl; do fspl queue-write -q ~/queue < \"$f\" && rm \"$f\"; done\n  \
        base64 -d < job.b64 | fspl queue-write -q ~/queue")]
    QueueWrite {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        ids: IdentityArgs,
    },
    /// Send every job of an outbox to a destination (fspl extension)
    ///
    /// OUTBOX is a queue directory that is pushed instead of processed
    /// (`fspl prepare ... | fspl queue-write -q OUTBOX`). Jobs go in seq
    /// order; each leaves the outbox only once DEST has confirmed it
    /// durable (--keep moves it to OUTBOX/sent/ instead). A killed push
    /// loses nothing: run it again, and DEST gets identical copies, which
    /// run once. DEST: a directory (a queue directory: into its jobs/; any
    /// other folder, e.g. a Syncthing folder: files appear there as
    /// fspl-<uuid>.fspl by atomic rename), dir:PATH,
    /// ssh://[USER@]HOST[:PORT]/QUEUE, or s3://BUCKET/PREFIX (conditional
    /// creates; see docs/s3.md). Exit status: 0 = everything sent,
    /// 1 = some job not sent (one line each, what and why), 2 = usage or
    /// configuration error (see docs/transports.md).
    #[command(after_help = "Examples:\n  \
        fspl push -q ~/outbox /media/usb/queue\n  \
        fspl push -q ~/outbox s3://my-bucket/to-server")]
    Push {
        /// The outbox (a queue directory)
        #[arg(short = 'q', long = "queuedir", value_name = "OUTBOX")]
        outbox: OsString,
        /// Where to: a directory, dir:PATH, ssh://[USER@]HOST[:PORT]/QUEUE or s3://BUCKET/PREFIX
        #[arg(value_name = "DEST")]
        dest: OsString,
        /// Move sent jobs to OUTBOX/sent/ instead of deleting them
        #[arg(long)]
        keep: bool,
        /// Print what was done as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Two-way tree sync as ordered change-set jobs (fspl extension; see docs/sync.md)
    #[command(after_help = "Examples:\n  \
        fspl sync once -c ~/.config/fspl/sync-docs.toml\n  \
        fspl sync status -c ~/.config/fspl/sync-docs.toml --json")]
    Sync {
        #[command(subcommand)]
        cmd: crate::cmd::sync::SyncCmd,
    },
    /// Take every job from a source into a queue (fspl extension)
    ///
    /// Stores each job with the checks of queue-write (durably, under the
    /// name it had at the source), and removes it at the source only once
    /// it is durable here. A killed pull loses nothing: run it again. SRC:
    /// a directory (a queue directory: from its jobs/, holding its lock;
    /// any other folder: its fspl-*.fspl files), dir:PATH, or
    /// s3://BUCKET/PREFIX (its job objects, in seq order; see docs/s3.md).
    /// Exit status:
    /// 0 = everything taken, 1 = some job not taken (one line each, what
    /// and why), 2 = usage or configuration error.
    #[command(after_help = "Examples:\n  \
        fspl pull ~/Sync/from-laptop -q ~/queue\n  \
        fspl pull s3://my-bucket/to-server -q ~/queue --json")]
    Pull {
        /// Where from: a directory, dir:PATH or s3://BUCKET/PREFIX
        #[arg(value_name = "SRC")]
        src: OsString,
        #[command(flatten)]
        q: QueueArg,
        /// Leave the jobs at the source (s3://) and remember in
        /// QUEUE/s3-pull-taken what was taken
        #[arg(long)]
        keep: bool,
        /// Print what was done as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// List the jobs in a queue
    #[command(after_help = "Examples:\n  \
        fspl queue-ls -q ~/queue\n  \
        fspl queue-ls -q ~/queue --json")]
    QueueLs {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        d: DecoderArg,
        /// Print JSON (fspl extension)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Explain why a queue is or is not moving (fspl extension)
    ///
    /// Shows the next job, gaps (and the two ways past one), duplicates,
    /// unreadable and refused jobs, a job that keeps failing, leftover
    /// temporaries and who holds the lock; the state line ends with what
    /// needs attention. Takes no lock. Exit status: 0 = processing can go
    /// on (or nothing to do), 1 = blocked, 2 = the state could not be
    /// determined.
    #[command(after_help = "Examples:\n  \
        fspl queue-status -q ~/queue\n  \
        fspl queue-status -q ~/queue --json")]
    QueueStatus {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        d: DecoderArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Check every job file completely (fspl extension)
    ///
    /// Checks header, codec, payload digest and (with --trust) signature of
    /// every job and reports bad files, stale temporaries, duplicates, jobs
    /// below nextseq and what blocks processing. --repair moves bad files to
    /// DIR/corrupt/ (never deletes one) and removes stale temporaries. Takes
    /// no lock. Exit status: 0 = clean, 1 = problems found or blocked, 2 =
    /// the queue could not be checked.
    #[command(after_help = "Examples:\n  \
        fspl queue-check -q ~/queue\n  \
        fspl queue-check -q ~/queue --repair")]
    QueueCheck {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        d: DecoderArg,
        /// Move bad job files to DIR/corrupt/ and remove stale temporaries
        #[arg(long)]
        repair: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print the queue's next sequence number
    #[command(after_help = "Examples:\n  fspl queue-get-next -q ~/queue")]
    QueueGetNext {
        #[command(flatten)]
        q: QueueArg,
    },
    /// Set the queue's next sequence number
    #[command(after_help = "Examples:\n  \
        fspl queue-set-next -q ~/queue 6    # give up on job 5: run 6 next")]
    QueueSetNext {
        #[command(flatten)]
        q: QueueArg,
        /// The number to set it to
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Write the payload of one job in a queue to stdout
    #[command(after_help = "Examples:\n  fspl queue-payload -q ~/queue -j 3 > payload.tgz")]
    QueuePayload {
        #[command(flatten)]
        q: QueueArg,
        #[command(flatten)]
        d: DecoderArg,
        /// The job's sequence number
        #[arg(short = 'j', long = "job", value_name = "ID")]
        job: u64,
        #[command(flatten)]
        ids: IdentityArgs,
    },
    /// Show the environment of the job on stdin
    #[command(after_help = "Examples:\n  \
        fspl stdin-info < sync/fspl-4b1e0f8e-5a7d-4f0c-9a51-6f2d1c1e2b3a.fspl\n  \
        base64 -d < job.b64 | fspl stdin-info")]
    StdinInfo {
        #[command(flatten)]
        ids: IdentityArgs,
    },
    /// Write the payload of the job on stdin to stdout
    #[command(after_help = "Examples:\n  base64 -d < job.b64 | fspl stdin-payload > payload.tgz")]
    StdinPayload {
        #[command(flatten)]
        ids: IdentityArgs,
    },
    /// Run the job on stdin; exits nonzero when it fails
    #[command(after_help = "Examples:\n  \
        base64 -d < job.b64 | fspl stdin-process --allow-job-params ~/handle-job")]
    StdinProcess(StdinProcessArgs),
    /// Show the license
    #[command(after_help = "Examples:\n  fspl show-license")]
    ShowLicense,
    /// Watch and run many queues as jobs arrive (see docs/daemon.md) (fspl
    /// extension)
    ///
    /// Each [[job]] of the configuration has a type: "process" runs a
    /// queue, "push" sends an outbox to a destination URL as jobs land in
    /// it, "pull" takes jobs from a source URL into a queue.
    #[command(after_help = "Examples:\n  \
        fspl daemon --check -c /etc/fspl/daemon.toml\n  \
        fspl daemon -c /etc/fspl/daemon.toml")]
    Daemon {
        /// The configuration file
        #[arg(short = 'c', long = "config", value_name = "CONFIG")]
        config: std::path::PathBuf,
        /// Validate the configuration (syntax, values, queues, trust files,
        /// keys, commands), print every problem, and exit: 0 when there is
        /// none, 1 otherwise
        #[arg(long)]
        check: bool,
        /// Log format: human (default on a terminal), logfmt (default
        /// otherwise) or json; overrides the configuration
        #[arg(long = "log-format", value_name = "FORMAT")]
        log_format: Option<fspl_daemon::LogFormat>,
    },
    /// Show what a running daemon is doing, or clear an error (fspl extension)
    ///
    /// Asks the daemon over its control socket; with --clear NAME, ends job
    /// NAME's error state (or backoff) so that it runs again at once.
    #[command(after_help = "Examples:\n  \
        fspl status -c /etc/fspl/daemon.toml\n  \
        fspl status -c /etc/fspl/daemon.toml --clear home")]
    Status {
        /// The daemon's configuration file (to find its control socket)
        #[arg(
            short = 'c',
            long = "config",
            value_name = "CONFIG",
            conflicts_with = "socket"
        )]
        config: Option<std::path::PathBuf>,
        /// The daemon's control socket
        #[arg(long = "socket", value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Clear this job's error state so it resumes at once
        #[arg(long = "clear", value_name = "NAME")]
        clear: Option<String>,
        /// Refresh the table in place (like `watch`) until Ctrl-C
        #[arg(long, conflicts_with_all = ["clear", "json"])]
        watch: bool,
        /// Seconds between refreshes with --watch
        #[arg(long, value_name = "SECS", default_value_t = 2.0, requires = "watch")]
        interval: f64,
    },
    /// Remove files no keep rule keeps (zrepl's grid, last_n, regex) (fspl extension)
    ///
    /// PATH is a queue directory (its jobs below nextseq and .out files),
    /// or a rejected/, corrupt/, sent/, completed/ or failed/ directory; no
    /// other file is ever touched. A file is removed only if no rule keeps
    /// it. RULE: grid:SPEC[;regex=RE] (SPEC like `1x1h(keep=all) | 24x1h |
    /// 14x1d`), last_n:COUNT[;regex=RE], regex:RE, not_regex:RE. Times: a
    /// job file's ctime (its header) wherever it is, else the file's mtime
    /// (each line says which). Exit status: 0 =
    /// done, 1 = a file could not be removed, 2 = a bad rule or path.
    #[command(after_help = "Examples:\n  \
        fspl prune ~/queue --keep 'grid:1x1h(keep=all) | 24x1h | 14x1d' --dry-run\n  \
        fspl prune ~/queue/rejected ~/outbox/sent --keep last_n:100 --json")]
    Prune {
        /// The directories to prune
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<std::path::PathBuf>,
        /// A keep rule (repeat for more; at least one)
        #[arg(long = "keep", value_name = "RULE", required = true)]
        keep: Vec<String>,
        /// Only say what would be removed (zrepl's `test`)
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Receive jobs over ssh: an authorized_keys forced command (fspl extension)
    ///
    /// Run by sshd for `fspl push ssh://HOST/QUEUE`, never by hand: the
    /// authorized_keys line fixes IDENTITY, the client only names QUEUE
    /// (in SSH_ORIGINAL_COMMAND, `fspl-push QUEUE`), which CONFIG must
    /// allow IDENTITY to write. Each job is acknowledged once it is durable
    /// in the queue. Anything else the client asks for is refused with one
    /// line on stderr. Exit status: 0 = the client sent its jobs and said
    /// it was done; 1 = the session ended early (a refusal, a broken
    /// connection, a timeout), with one line on stderr, also sent to the
    /// client. See docs/transports.md.
    #[command(after_help = "Examples:\n  \
        restrict,command=\"fspl serve-stdin laptop\" ssh-ed25519 AAAAC3Nz... laptop    # in ~/.ssh/authorized_keys\n  \
        restrict,command=\"fspl serve-stdin laptop -c /srv/fspl/intake.toml\" ssh-ed25519 AAAAC3Nz... laptop")]
    ServeStdin {
        /// Who the client is (a table in CONFIG); set by the authorized_keys
        /// line, never by the client
        #[arg(value_name = "IDENTITY")]
        identity: String,
        /// The intake configuration: which queues each identity may write
        #[arg(
            short = 'c',
            long = "config",
            value_name = "CONFIG",
            default_value = fspl_transport::intake::DEFAULT_CONFIG
        )]
        config: std::path::PathBuf,
    },
    /// A remaphore-compatible remote semaphore over NATS (fspl extension)
    ///
    /// send, wait and request signed messages as remaphore does (existing
    /// remaphore nodes understand them), without its faults, and with
    /// --durable over JetStream. See docs/nats.md.
    #[cfg(feature = "nats")]
    #[command(after_help = crate::cmd::nats::AFTER_HELP)]
    Nats(crate::cmd::nats::NatsArgs),
    /// Make an ed25519 key pair for signing and encryption (fspl extension)
    ///
    /// Writes PATH (the secret key, mode 0600, never overwritten) and
    /// PATH.pub (the public key line) and prints their paths and the key's
    /// fingerprint.
    #[command(after_help = "Examples:\n  fspl keygen -o ~/.config/fspl/laptop.key -C laptop")]
    Keygen {
        /// Where to write the secret key; the public key goes to PATH.pub
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: std::path::PathBuf,
        /// A comment for the public key line (default: user@host)
        #[arg(short = 'C', long = "comment", value_name = "COMMENT")]
        comment: Option<String>,
        /// openssh (default), or base58 as remaphore writes keys (PATH: the
        /// 64-byte secret; PATH.pub: the public key)
        #[arg(long = "format", value_name = "FORMAT", default_value = "openssh")]
        format: KeyFormat,
    },
    /// Upload each file landing in a spool directory to S3, as jollyae (fspl extension)
    ///
    /// Watches INCOMING; claims each complete file by renaming it into
    /// WORKING (one of several uploaders wins), uploads it to
    /// s3://BUCKET/PREFIX+NAME (multipart for large files, retries with
    /// backoff on transient errors), then moves it into COMPLETED (or
    /// removes it, -r), or into FAILED (or removes it, -R; FAILED =
    /// INCOMING resubmits it). Files left in WORKING by a crash are taken
    /// back on start. Credentials and endpoint: the AWS environment
    /// (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL...). Exit status (--once): 0 =
    /// every file uploaded, 1 = some failed; 2 = usage error. See
    /// docs/s3.md.
    #[cfg(feature = "s3")]
    #[command(after_help = "Examples:\n  \
        fspl s3-upload -v -b results -s spool/incoming -i spool/working -d spool/completed -f spool/failed\n  \
        fspl s3-upload --once -b logs --prefix host1/ -s spool/incoming -i spool/working -r -f spool/incoming")]
    S3Upload(Box<crate::cmd::s3_upload::Args>),
    /// Print a shell completion script (fspl extension)
    #[command(after_help = "Examples:\n  \
        fspl completions bash > ~/.local/share/bash-completion/completions/fspl\n  \
        fspl completions zsh > ~/.zfunc/_fspl    # with fpath+=~/.zfunc before compinit")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into a directory (fspl extension)
    ///
    /// Writes fspl.1 and one fspl-COMMAND.1 per command, and prints their
    /// paths.
    #[command(after_help = "Examples:\n  \
        fspl man --out ~/.local/share/man/man1\n  \
        sudo fspl man --out /usr/local/share/man/man1")]
    Man {
        /// The directory to write them to (created if missing)
        #[arg(short = 'o', long = "out", value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

/// The cargo features compiled into this binary, in a fixed order.
pub fn features() -> Vec<&'static str> {
    let mut v = Vec::new();
    // In every build; named so that the list reads as what the binary has.
    v.push("daemon");
    if cfg!(feature = "s3") {
        v.push("s3");
    }
    if cfg!(feature = "nats") {
        v.push("nats");
    }
    if cfg!(feature = "failpoints") {
        v.push("failpoints");
    }
    v
}

/// What `fspl --version` prints after "fspl ": the version and the
/// features compiled in, on one line (`-V` prints the version only).
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let f = features();
        let list = if f.is_empty() {
            "none".to_string()
        } else {
            f.join(", ")
        };
        format!("{} (features: {list})", env!("CARGO_PKG_VERSION"))
    })
}

/// Parse the command line. As `Cli::try_parse`, except that when a
/// mistyped command has several look-alikes, the closest comes first (clap
/// lists them least similar first) and only the three closest are named.
pub fn parse() -> Result<Cli, clap::Error> {
    use clap::error::{ContextKind, ContextValue};
    let mut e = match Cli::try_parse() {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    for kind in [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ] {
        if let Some(ContextValue::Strings(v)) = e.get(kind) {
            let best: Vec<String> = v.iter().rev().take(3).cloned().collect();
            e.insert(kind, ContextValue::Strings(best));
        }
    }
    Err(e)
}

#[derive(clap::Args, Debug)]
pub struct SeqArgs {
    /// The sender's sequence file; "-" for none (the job gets seq 1)
    #[arg(
        short = 's',
        long = "seqfile",
        value_name = "FILE",
        required_unless_present = "seq"
    )]
    pub seqfile: Option<OsString>,
    /// Use this sequence number and leave any sequence file alone, e.g. to
    /// fill a gap left by a failed prepare (fspl extension)
    #[arg(long = "seq", value_name = "N")]
    pub seq: Option<u64>,
    /// Compress the whole job file: zstd[:LEVEL], gzip[:LEVEL], xz[:LEVEL]
    /// or lz4. fspl readers detect it; Filespooler reads it with -d zstdcat
    /// (zcat, xzcat, lz4cat) (fspl extension)
    #[arg(long = "compress", value_name = "FORMAT[:LEVEL]")]
    pub compress: Option<fspl_codec::CompressSpec>,
    /// Sign the job with this secret key (fspl keygen or ssh-keygen -t
    /// ed25519); receivers with --trust verify it (fspl extension)
    #[arg(long = "sign", value_name = "KEY")]
    pub sign: Option<std::path::PathBuf>,
    /// The name of the queue the job is meant for (see queue-init --name);
    /// covered by the signature (fspl extension)
    #[arg(long = "to", value_name = "QUEUE-NAME")]
    pub to: Option<String>,
    /// Encrypt the whole job file to this age recipient (age1... or an
    /// ssh-ed25519 public key line, or @FILE to read them from a file);
    /// repeatable (fspl extension)
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Leave out the payload length and digest that jobs from a regular
    /// file carry, for output byte-identical to Filespooler's (fspl extension)
    #[arg(long = "no-digest", conflicts_with = "sign")]
    pub no_digest: bool,
}

#[derive(clap::Args, Debug, Default)]
pub struct IdentityArgs {
    /// age identity file or OpenSSH private key to decrypt encrypted jobs
    /// with; repeatable (fspl extension)
    #[arg(long = "identity", value_name = "FILE")]
    pub identity: Vec<std::path::PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct KeyArgs {
    #[command(flatten)]
    pub ids: IdentityArgs,
    /// Trust file: accept only jobs signed by the senders it lists, within
    /// their allowed params and queues (fspl extension)
    #[arg(long = "trust", value_name = "FILE")]
    pub trust: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct QueueArg {
    /// The queue directory
    #[arg(short = 'q', long = "queuedir", value_name = "DIR")]
    pub queuedir: OsString,
}

#[derive(clap::Args, Debug)]
pub struct DecoderArg {
    /// Decoder for stored files, run as `$SHELL -c DECODECMD` with the file on
    /// stdin (e.g. zcat, 'gpg -q -d')
    #[arg(short = 'd', long = "decoder", value_name = "DECODECMD")]
    pub decoder: Option<OsString>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Append the job's params to the command line (after PARAMS given here)
    #[arg(long = "allow-job-params")]
    pub allow_job_params: bool,
    /// Do not connect the payload to the command's stdin
    #[arg(long = "ignore-payload")]
    pub ignore_payload: bool,
    /// Kill the command after this many seconds; counts as a failure
    #[arg(long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct QueueProcessArgs {
    #[command(flatten)]
    pub q: QueueArg,
    #[command(flatten)]
    pub d: DecoderArg,
    /// What to do when a job fails: Retry, Delete or Leave (any case)
    #[arg(
        long = "on-error",
        value_name = "ONERROR",
        default_value = "retry",
        value_parser = on_error_value
    )]
    pub on_error: OnErrorArg,
    /// In what order to run jobs: Sequence or Timestamp (any case)
    #[arg(
        long = "order-by",
        value_name = "ORDERING",
        default_value = "sequence",
        value_parser = order_by_value
    )]
    pub order_by: OrderByArg,
    /// Never delete job files, even after success
    #[arg(long = "never-delete")]
    pub never_delete: bool,
    /// Stop after this many jobs
    #[arg(short = 'n', long = "maxjobs", value_name = "JOBS")]
    pub maxjobs: Option<u64>,
    /// Where the command's stdout and stderr go: PassBoth or SaveBoth (any
    /// case)
    #[arg(
        long = "output-to",
        value_name = "DEST",
        default_value = "passboth",
        value_parser = output_to_value
    )]
    pub output_to: OutputToArg,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The command to run (directly, no shell)
    #[arg(value_name = "COMMAND")]
    pub command: OsString,
    /// Arguments for COMMAND, before any job params
    #[arg(last = true, value_name = "PARAMS")]
    pub params: Vec<OsString>,
}

#[derive(clap::Args, Debug)]
pub struct StdinProcessArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The command to run (directly, no shell)
    #[arg(value_name = "COMMAND")]
    pub command: OsString,
    /// Arguments for COMMAND, before any job params
    #[arg(last = true, value_name = "PARAMS")]
    pub params: Vec<OsString>,
}

/// Enum option values as Filespooler 1.2.4 reads them: any case, surrounding
/// whitespace ignored (`--on-error ' Delete'` works), and the same wording
/// when a value is not one of them.
fn enum_value<T: ValueEnum>(s: &str, option: &str, expected: &str) -> Result<T, String> {
    T::from_str(s.trim(), true).map_err(|_| format!("{option} must be {expected}"))
}

fn on_error_value(s: &str) -> Result<OnErrorArg, String> {
    enum_value(s, "on-error", "'delete', 'leave', or 'retry'")
}

fn order_by_value(s: &str) -> Result<OrderByArg, String> {
    enum_value(s, "order-by", "'sequence' or 'timestamp'")
}

fn output_to_value(s: &str) -> Result<OutputToArg, String> {
    enum_value(s, "output-to", "'passboth' or 'saveboth'")
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OnErrorArg {
    /// Stop, exit nonzero, keep the job and nextseq: it runs again next time
    Retry,
    /// Delete the job, advance, continue
    Delete,
    /// Keep the file, advance, continue
    Leave,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OrderByArg {
    /// Run seq == nextseq, then the next; stop at the first missing number
    Sequence,
    /// Run every job, oldest creation time first; nextseq is not used
    Timestamp,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OutputToArg {
    /// The command's stdout and stderr are ours
    #[value(name = "passboth")]
    PassBoth,
    /// Both go to jobs/<jobfile>.out
    #[value(name = "saveboth")]
    SaveBoth,
}

/// `fspl keygen --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyFormat {
    Openssh,
    Base58,
}
