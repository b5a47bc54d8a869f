//! `fspl`: a drop-in, crash-safe Filespooler.
//!
//! This binary links no async SDK: the commands that need one (`daemon`,
//! `status`, `nats`, `s3-upload`, push and pull of `s3://` and `nats://`)
//! are handed, by exec, to `fspl-full` next to it, so that `prepare`,
//! `queue-write` and the rest start in about a millisecond.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod mathshim;

fn main() -> std::process::ExitCode {
    fspl::main_lean()
}
