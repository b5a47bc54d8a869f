//! One function per command; main.rs turns errors into one line and an exit
//! status.

use std::process::ExitCode;

use crate::cli::Cmd;

mod info;
mod prepare;
mod process;
mod queue;
mod status;

pub fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::GenUuid => misc_print(&format!("{}\n", uuid::Uuid::new_v4())),
        Cmd::GenFilename => misc_print(&format!("fspl-{}.fspl\n", uuid::Uuid::new_v4())),
        Cmd::ShowLicense => misc_print(LICENSE),
        Cmd::Prepare { seq, input, params } => {
            prepare::prepare(&seq, input.as_deref(), prepare::Kind::Command(params))
        }
        Cmd::PrepareNop { seq } => prepare::prepare(&seq, None, prepare::Kind::Nop),
        Cmd::PrepareFail { seq } => prepare::prepare(&seq, None, prepare::Kind::Fail),
        Cmd::PrepareGetNext { seqfile } => prepare::get_next(&seqfile),
        Cmd::PrepareSetNext { seqfile, id } => prepare::set_next(&seqfile, id),
        Cmd::QueueInit { q, append_only } => queue::init(&q.queuedir, append_only),
        Cmd::QueueWrite { q } => queue::write(&q.queuedir),
        Cmd::QueueLs { q, d, json } => queue::ls(&q.queuedir, d.decoder.as_deref(), json),
        Cmd::QueueInfo { q, d, job, json } => {
            queue::info(&q.queuedir, d.decoder.as_deref(), job, json)
        }
        Cmd::QueuePayload { q, d, job } => queue::payload(&q.queuedir, d.decoder.as_deref(), job),
        Cmd::QueueGetNext { q } => queue::get_next(&q.queuedir),
        Cmd::QueueSetNext { q, id } => queue::set_next(&q.queuedir, id),
        Cmd::QueueStatus { q, d, json } => status::status(&q.queuedir, d.decoder.as_deref(), json),
        Cmd::QueueProcess(args) => process::queue_process(args),
        Cmd::StdinInfo => info::stdin_info(),
        Cmd::StdinPayload => info::stdin_payload(),
        Cmd::StdinProcess(args) => process::stdin_process(args),
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
