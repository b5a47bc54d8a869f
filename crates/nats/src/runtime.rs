//! The tokio runtime the NATS client runs on, started on first use (the
//! plain CLI never gets here: `fspl prepare`, `queue-*` never start it).
//!
//! A current-thread runtime driven by a thread of its own (`fspl-nats`),
//! so the connection keeps reading, answering pings and reconnecting
//! while the synchronous caller (the push and pull drivers, a daemon's
//! blocking thread) is between calls. Callers wait for a future with
//! [`block_on`]; tasks spawned with [`spawn`] run on the driver thread.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

use crate::error::NatsError;

static RUNTIME: OnceLock<Result<Handle, String>> = OnceLock::new();

fn start() -> Result<Handle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the NATS client's runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("fspl-nats".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("cannot start the NATS client's thread: {e}"))?;
    Ok(handle)
}

/// The runtime's handle, starting it on first use.
pub fn handle() -> Result<&'static Handle, NatsError> {
    RUNTIME
        .get_or_init(start)
        .as_ref()
        .map_err(|e| NatsError::Runtime(e.clone()))
}

/// Run `f` to completion on the NATS runtime, from a synchronous thread
/// (never from inside an async task).
pub fn block_on<F: Future>(f: F) -> Result<F::Output, NatsError> {
    Ok(handle()?.block_on(f))
}

/// Run `f` on the runtime's thread in the background.
pub fn spawn<F>(f: F) -> Result<tokio::task::JoinHandle<F::Output>, NatsError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(handle()?.spawn(f))
}
