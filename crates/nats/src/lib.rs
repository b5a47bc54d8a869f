//! fspl's NATS backend: the nats:// transport over JetStream and the remaphore-compatible remote semaphore (fspl nats), on async-nats.

pub mod remaphore;
