//! The S3 target of `fspl s3-upload` (placeholder until the client lands).

use std::fs::File;
use std::sync::atomic::AtomicBool;

use crate::upload::{PutError, Target};

/// What the S3 target needs besides the environment's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub bucket: String,
    pub acl: Option<String>,
    pub part_size: u64,
}

pub struct S3Target {
    opts: Options,
}

impl S3Target {
    pub fn new(opts: Options) -> Result<S3Target, String> {
        Err(format!("s3://{}: S3 uploads are not built yet", opts.bucket))
    }
}

impl Target for S3Target {
    fn put(&self, _: &str, _: &File, _: u64, _: &AtomicBool, _: &dyn Fn(u64)) -> Result<(), PutError> {
        unreachable!()
    }
    fn describe(&self) -> String {
        format!("s3://{}", self.opts.bucket)
    }
}
