//! fspl's S3 backend, on object_store (rustls, no system TLS library):
//!
//! - [`config`]: the standard AWS settings chain (environment, profiles);
//! - [`client`]: a small synchronous client (conditional create,
//!   streaming multipart upload in constant memory, list, get, head,
//!   delete) with typed errors that say whether to retry;
//! - [`runtime`]: the current-thread tokio runtime it runs on, started on
//!   first use only (commands that do not use S3 never start it);
//! - [`spool`], [`upload`], [`upload_s3`]: `fspl s3-upload`, jollyae's
//!   spool-directory uploader (and the daemon's `s3-upload` jobs);
//! - [`transport`]: `s3://BUCKET/PREFIX` as a destination of `fspl push`
//!   and a source of `fspl pull` ([`register`] plugs it into
//!   `fspl_transport::open_sink`/`open_source`).

pub mod client;
pub mod config;
pub mod error;
pub mod runtime;
pub mod spool;
pub mod transport;
pub mod upload;
pub mod upload_s3;

pub use client::{Client, ObjectInfo, ObjectReader, PutOutcome, UploadOptions, Uploaded};
pub use config::S3Config;
pub use error::S3Error;

/// Make `s3://` URLs work in `fspl_transport::open_sink`/`open_source`
/// (push, pull, and the daemon's push and pull jobs). Cheap: nothing
/// starts until an `s3://` location is opened.
pub fn register() {
    fspl_transport::register(fspl_transport::Backend {
        scheme: "s3",
        open_sink: transport::open_sink,
        open_source: transport::open_source,
    });
}
