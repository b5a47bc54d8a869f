//! A remaphore-compatible remote semaphore (`fspl nats`, argv[0]
//! `remaphore`): signed text messages on a NATS subject, filtered by
//! destination pattern and verb, that wire-compatible with remaphore
//! (upstream d71c197) but without its faults, and optionally durable over
//! JetStream. docs/nats.md tells it for users; PROTOCOL.md (shared) is the
//! protocol as observed.

pub mod config;
pub mod duration;
pub mod pattern;
pub mod seen;
pub mod wire;

pub use config::Config;
pub use wire::Message;
pub mod durable;
pub mod node;
