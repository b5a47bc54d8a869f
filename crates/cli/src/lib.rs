//! The code of the `fspl` and `fspl-full` binaries (not a library API).
//!
//! Both binaries parse the same command line. `fspl` ([`main_lean`]) runs
//! every command that needs no async SDK and hands the others to
//! `fspl-full` by exec ([`main_full`] runs them all). The split is made
//! by monomorphisation over [`Heavy`]: nothing reachable from
//! `main_lean` names the daemon, S3 or NATS code, so the linker leaves it
//! out of `fspl` (docs/compatibility.md, "Two binaries").

use std::process::ExitCode;

mod cli;
mod cmd;
mod logging;
mod output;

/// Exit statuses (docs/cli.md): 0 success; 1 failure (a job failed, an I/O
/// error, a locked queue, bad input); 2 usage error. `queue-status` also
/// uses 1 for "blocked" and 2 for "could not tell".
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// The name of the binary that runs the commands needing an async SDK.
pub const FULL_BINARY: &str = "fspl-full";

/// How a binary runs the commands that need an async SDK.
trait Heavy {
    /// Before dispatch: register the transports this binary carries.
    fn setup();
    /// Called as `remaphore`: run remaphore's own command line.
    fn remaphore() -> ExitCode;
    /// Run (or hand over) a command that needs an async SDK.
    fn run(cmd: cli::Cmd, level: tracing::Level) -> anyhow::Result<ExitCode>;
}

/// `fspl`: hands heavy commands to `fspl-full`.
struct Lean;

impl Heavy for Lean {
    fn setup() {}

    fn remaphore() -> ExitCode {
        finish(exec_full())
    }

    fn run(_: cli::Cmd, _: tracing::Level) -> anyhow::Result<ExitCode> {
        exec_full()
    }
}

/// `fspl-full`: runs them.
struct Full;

impl Heavy for Full {
    fn setup() {
        // Transports of optional crates: only function pointers are stored
        // (no runtime, no TLS until an s3:// location is opened).
        #[cfg(feature = "s3")]
        fspl_s3::register();
        // Backends of nats:// (no runtime is started until one is used).
        #[cfg(feature = "nats")]
        fspl_nats::register();
    }

    fn remaphore() -> ExitCode {
        #[cfg(feature = "nats")]
        {
            logging::init(tracing::Level::INFO);
            cmd::nats::remaphore_main(std::env::args_os().skip(1).collect())
        }
        #[cfg(not(feature = "nats"))]
        finish(Err(anyhow::anyhow!(
            "this build has no NATS support (cargo feature `nats`)"
        )))
    }

    fn run(cmd: cli::Cmd, level: tracing::Level) -> anyhow::Result<ExitCode> {
        cmd::run_heavy(cmd, level)
    }
}

/// Replace this process with `fspl-full` (next to this executable), same
/// arguments, same argv[0]: exit status, signals, stdio and the process
/// id (systemd's `Type=notify`) all carry over.
fn exec_full() -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().context("finding fspl-full: /proc/self/exe")?;
    let full = me.with_file_name(FULL_BINARY);
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "fspl".into());
    let err = std::process::Command::new(&full)
        .arg0(arg0)
        .args(args)
        .exec();
    Err(anyhow::Error::new(err).context(format!(
        "this command runs in {FULL_BINARY}, which could not be started: {}",
        full.display()
    )))
}

/// `fspl`: the lean binary.
pub fn main_lean() -> ExitCode {
    main_with::<Lean>()
}

/// `fspl-full`: every command.
pub fn main_full() -> ExitCode {
    main_with::<Full>()
}

fn main_with<H: Heavy>() -> ExitCode {
    // Called as `remaphore` (a symlink): remaphore's own flags (docs/nats.md).
    if cfg!(feature = "nats") && invoked_as_remaphore() {
        return H::remaphore();
    }
    let cli = match cli::parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            // Help and version go to stdout; a closed pipe there is not an error.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The daemon sets up its own log formats.
    let own_logging = matches!(cli.command, cli::Cmd::Daemon { check: false, .. });
    if !own_logging {
        logging::init(cli.log_level);
    }
    H::setup();
    // Fault injection (reliability tests; a no-op without the feature).
    let _failpoints = fspl_queue::failpoint::setup();
    finish(cmd::run::<H>(cli.command, cli.log_level))
}

/// An error as one line and an exit status.
fn finish(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                // Our reader went away (`fspl queue-ls | head`): nothing to report.
                return ExitCode::SUCCESS;
            }
            output::print_error(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Whether argv[0]'s file name is `remaphore`.
fn invoked_as_remaphore() -> bool {
    use std::os::unix::ffi::OsStrExt;
    std::env::args_os().next().is_some_and(|a0| {
        std::path::Path::new(&a0)
            .file_name()
            .is_some_and(|n| n.as_bytes() == b"remaphore")
    })
}
