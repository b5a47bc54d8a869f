//! `fspl-full`: every `fspl` command, including those that need the async
//! SDKs (tokio, object_store, async-nats). `fspl` execs it for them; it can
//! also be called directly.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[path = "mathshim.rs"]
mod mathshim;

fn main() -> std::process::ExitCode {
    fspl::main_full()
}
