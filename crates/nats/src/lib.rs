//! fspl's NATS backend: the nats:// transport over JetStream and the remaphore-compatible remote semaphore (fspl nats), on async-nats.

pub mod connect;
pub mod error;
pub mod remaphore;
pub mod runtime;

pub use connect::ConnectConfig;
pub use error::NatsError;
