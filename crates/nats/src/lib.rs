//! fspl's NATS backend: the nats:// transport over JetStream and the
//! remaphore-compatible remote semaphore (fspl nats), on async-nats.
//!
//! - [`runtime`]: the tokio runtime, started on first use;
//! - [`connect`]: servers, `.creds` files, timeouts, typed errors;
//! - [`jetstream`]: streams and durable pull consumers;
//! - [`transport`]: `nats://HOST:PORT/NAME` for `fspl push` and `pull`;
//! - [`remaphore`]: `fspl nats`, a remaphore-compatible remote semaphore.

pub mod connect;
pub mod error;
pub mod jetstream;
pub mod remaphore;
pub mod runtime;
pub mod transport;

pub use connect::ConnectConfig;
pub use error::NatsError;

/// Make `nats://` available to `fspl push`/`pull` and the daemon's push
/// and pull jobs.
pub fn register() {
    fspl_transport::register(transport::backend());
}
