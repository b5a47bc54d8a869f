//! `fspl`: a drop-in, crash-safe Filespooler.

use std::process::ExitCode;

mod cli;
mod cmd;
mod logging;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod mathshim;
mod output;

/// Exit statuses (docs/cli.md): 0 success; 1 failure (a job failed, an I/O
/// error, a locked queue, bad input); 2 usage error. `queue-status` also
/// uses 1 for "blocked" and 2 for "could not tell".
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
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
    #[cfg(feature = "daemon")]
    let own_logging = matches!(cli.command, cli::Cmd::Daemon { check: false, .. });
    #[cfg(not(feature = "daemon"))]
    let own_logging = false;
    if !own_logging {
        logging::init(cli.log_level);
    }
    // Transports of optional crates: only function pointers are stored
    // (no runtime, no TLS until an s3:// location is opened).
    #[cfg(feature = "s3")]
    fspl_s3::register();
    // Fault injection (reliability tests; a no-op without the feature).
    let _failpoints = fspl_queue::failpoint::setup();
    match cmd::run(cli.command, cli.log_level) {
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
