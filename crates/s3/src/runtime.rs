//! One current-thread tokio runtime on a thread of its own, started the
//! first time anything talks to S3 (commands that do not use S3 never
//! start it). Callers on any thread, async or not, hand it a future and
//! wait for the result on a plain channel, so the synchronous API works
//! from the CLI, from the daemon's blocking threads and from tests alike.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::S3Error;

static HANDLE: OnceLock<Result<tokio::runtime::Handle, String>> = OnceLock::new();

fn handle() -> Result<&'static tokio::runtime::Handle, S3Error> {
    HANDLE
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("fspl-s3")
                .build()
                .map_err(|e| format!("cannot start: {e}"))?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name("fspl-s3".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .map_err(|e| format!("cannot start its thread: {e}"))?;
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| S3Error::Runtime(e.clone()))
}

/// Whether the runtime was started (tests of "plain commands start no
/// runtime").
pub fn started() -> bool {
    HANDLE.get().is_some()
}

/// Run `fut` on the S3 runtime and wait for its result.
pub fn run<F, T>(fut: F) -> Result<T, S3Error>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rx = spawn(fut)?;
    rx.recv()
        .map_err(|_| S3Error::Runtime("a task stopped without an answer".into()))
}

/// Start `fut` on the S3 runtime; its result arrives on the receiver.
pub fn spawn<F, T>(fut: F) -> Result<std::sync::mpsc::Receiver<T>, S3Error>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    Ok(rx)
}
