//! One function per command; main.rs turns errors into one line and an exit
//! status.

use std::process::ExitCode;

use crate::cli::Cmd;

mod daemon;
mod docs;
mod info;
mod keys;
#[cfg(feature = "nats")]
pub mod nats;
mod prepare;
mod process;
mod prune;
mod queue;
#[cfg(feature = "s3")]
pub(crate) mod s3_upload;
mod serve;
mod status;
pub mod sync;
mod transport;

/// Run a command. The ones that need an async SDK go to `H::run`: in
/// `fspl-full` that is [`run_heavy`], in `fspl` an exec of `fspl-full`.
#[allow(private_bounds)]
pub(crate) fn run<H: crate::Heavy>(cmd: Cmd, level: tracing::Level) -> anyhow::Result<ExitCode> {
    match cmd {
        c @ (Cmd::Daemon { .. } | Cmd::Status { .. }) => H::run(c, level),
        #[cfg(feature = "nats")]
        c @ Cmd::Nats(_) => H::run(c, level),
        #[cfg(feature = "s3")]
        c @ Cmd::S3Upload(_) => H::run(c, level),
        c @ (Cmd::Push { .. } | Cmd::Pull { .. }) if transport::needs_full(&c) => H::run(c, level),
        Cmd::Prune {
            paths,
            keep,
            dry_run,
            json,
        } => prune::prune(&paths, &keep, dry_run, json),
        Cmd::GenUuid => misc_print(&format!("{}\n", uuid::Uuid::new_v4())),
        Cmd::GenFilename => misc_print(&format!("fspl-{}.fspl\n", uuid::Uuid::new_v4())),
        Cmd::ShowLicense => misc_print(LICENSE),
        Cmd::Completions { shell } => docs::completions(shell),
        Cmd::Man { out } => docs::man(&out),
        Cmd::Keygen {
            output,
            comment,
            format,
        } => keys::keygen(&output, comment.as_deref(), format),
        Cmd::Prepare { seq, input, params } => {
            prepare::prepare(&seq, input.as_deref(), prepare::Kind::Command(params))
        }
        Cmd::PrepareNop { seq } => prepare::prepare(&seq, None, prepare::Kind::Nop),
        Cmd::PrepareFail { seq } => prepare::prepare(&seq, None, prepare::Kind::Fail),
        Cmd::PrepareGetNext { seqfile } => prepare::get_next(&seqfile),
        Cmd::PrepareSetNext { seqfile, id } => prepare::set_next(&seqfile, id),
        Cmd::QueueInit {
            q,
            append_only,
            name,
        } => queue::init(&q.queuedir, append_only, name.as_deref()),
        Cmd::QueueWrite { q, ids } => queue::write(&q.queuedir, &ids),
        Cmd::Push {
            outbox,
            dest,
            keep,
            json,
        } => transport::push(&outbox, &dest, keep, json),
        Cmd::Sync { cmd } => sync::run(cmd),
        Cmd::Pull { src, q, keep, json } => transport::pull(&src, &q.queuedir, keep, json),
        Cmd::QueueLs { q, d, json, keys } => {
            queue::ls(&q.queuedir, d.decoder.as_deref(), json, &keys)
        }
        Cmd::QueueInfo {
            q,
            d,
            job,
            json,
            keys,
        } => queue::info(&q.queuedir, d.decoder.as_deref(), job, json, &keys),
        Cmd::QueuePayload { q, d, job, ids } => {
            queue::payload(&q.queuedir, d.decoder.as_deref(), job, &ids)
        }
        Cmd::QueueCheck {
            q,
            d,
            repair,
            json,
            keys,
        } => status::check(&q.queuedir, d.decoder.as_deref(), repair, json, &keys),
        Cmd::QueueGetNext { q } => queue::get_next(&q.queuedir),
        Cmd::QueueSetNext { q, id } => queue::set_next(&q.queuedir, id),
        Cmd::QueueStatus { q, d, json, keys } => {
            status::status(&q.queuedir, d.decoder.as_deref(), json, &keys)
        }
        Cmd::QueueProcess(args) => process::queue_process(args),
        Cmd::StdinInfo { ids } => info::stdin_info(&ids),
        Cmd::StdinPayload { ids } => info::stdin_payload(&ids),
        Cmd::StdinProcess(args) => process::stdin_process(args),
        Cmd::ServeStdin { identity, config } => serve::serve_stdin(&identity, &config),
    }
}

/// The commands that need an async SDK (`fspl-full` only).
pub(crate) fn run_heavy(cmd: Cmd, level: tracing::Level) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Daemon {
            config,
            check,
            log_format,
        } => daemon::daemon(&config, check, log_format, level),
        Cmd::Status {
            config,
            socket,
            json,
            clear,
            watch,
            interval,
        } => daemon::status(
            config.as_deref(),
            socket.as_deref(),
            json,
            clear.as_deref(),
            watch.then_some(interval),
        ),
        #[cfg(feature = "nats")]
        Cmd::Nats(a) => Ok(nats::run(a)),
        #[cfg(feature = "s3")]
        Cmd::S3Upload(args) => s3_upload::s3_upload(*args),
        Cmd::Push {
            outbox,
            dest,
            keep,
            json,
        } => transport::push(&outbox, &dest, keep, json),
        Cmd::Pull { src, q, keep, json } => transport::pull(&src, &q.queuedir, keep, json),
        // Not reached: `run` hands only the commands above to `H::run`.
        // (Push and pull stay explicit: `run` would hand them back here.)
        other => run::<crate::Full>(other, level),
    }
}

const LICENSE: &str = concat!(
    "fspl ",
    env!("CARGO_PKG_VERSION"),
    "\n\n",
    include_str!("../../../../LICENSE")
);

fn misc_print(s: &str) -> anyhow::Result<ExitCode> {
    crate::output::write_stdout(s.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
