//! The S3 target of `fspl s3-upload`: each file through
//! [`crate::Client::upload`] (one PUT for a small file, a multipart upload
//! read part by part for a large one, in constant memory), with a SHA-256
//! checksum on every request and the canned ACL (`-a`) on the upload.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::upload::{PutError, Target};
use crate::{Client, S3Config, S3Error, UploadOptions};

/// What the S3 target needs besides the environment's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub bucket: String,
    pub acl: Option<String>,
    /// Multipart threshold and part size, in bytes.
    pub part_size: u64,
}

pub struct S3Target {
    client: Client,
    bucket: String,
    upload: UploadOptions,
}

fn line(e: &S3Error) -> String {
    fspl_queue::display_chain(e)
}

impl S3Target {
    /// A client for the bucket from the AWS environment (nothing is sent
    /// yet). The error is one line.
    pub fn new(opts: Options) -> Result<S3Target, String> {
        let mut cfg = S3Config::from_env(&opts.bucket).map_err(|e| line(&e))?;
        cfg.acl = opts.acl;
        cfg.checksum = true;
        let client = Client::new(&cfg).map_err(|e| line(&e))?;
        Ok(S3Target {
            client,
            bucket: opts.bucket,
            upload: UploadOptions {
                part_size: opts.part_size as usize,
                concurrency: 2,
            },
        })
    }
}

/// Reads a claimed file from its start by offset (so a retry reads it
/// again from the start), at most `len` bytes (what was claimed), telling
/// `progress` how far it got; stops with an error when `stop` is set.
struct FileReader<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
    stop: &'a AtomicBool,
    progress: &'a dyn Fn(u64),
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("stopping"));
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        (self.progress)(self.pos);
        Ok(n)
    }
}

impl Target for S3Target {
    fn put(
        &self,
        key: &str,
        file: &File,
        len: u64,
        stop: &AtomicBool,
        progress: &dyn Fn(u64),
    ) -> Result<(), PutError> {
        let mut r = FileReader {
            file,
            pos: 0,
            len,
            stop,
            progress,
        };
        match self.client.upload(key, &mut r, &self.upload) {
            Ok(u) if u.bytes == len => Ok(()),
            Ok(u) => Err(PutError {
                transient: true,
                message: format!(
                    "s3://{}/{key}: sent {} bytes of {len} (the file shrank while it was read)",
                    self.bucket, u.bytes
                ),
            }),
            Err(e) => Err(PutError {
                transient: e.is_transient(),
                message: line(&e),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }
}
