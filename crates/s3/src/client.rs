//! A small synchronous S3 client over object_store: every call runs on the
//! S3 runtime ([`crate::runtime`]) and returns when the server answered.
//! Keys are plain strings relative to the bucket (`prefix/name`).
//!
//! - [`Client::put_if_absent`]: a conditional create (`If-None-Match: *`);
//! - [`Client::upload`]: a stream of any length, in one PUT when it fits
//!   one part, else a multipart upload with a bounded number of parts in
//!   memory (`part_size` × `concurrency`), aborted when anything fails so
//!   no partial object is ever visible;
//! - [`Client::list`], [`Client::head`], [`Client::get`] (small objects),
//!   [`Client::reader`] (a streaming `Read`), [`Client::delete`].
//!
//! Transient failures (network, 5xx, 429) are retried inside a call a few
//! times with backoff (object_store's retry); what is still failing comes
//! back as an [`S3Error`] whose `is_transient` says whether to try again
//! later. Refused credentials are never retried.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum, S3ConditionalPut};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use crate::config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_TIMEOUT,
    S3Config,
};
use crate::error::S3Error;
use crate::runtime;

/// An object as a listing or HEAD shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: SystemTime,
}

/// What a conditional create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created {
        etag: Option<String>,
    },
    /// The key was taken: nothing was written.
    Exists,
}

/// How [`Client::upload`] sends a stream.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Bytes per part (S3: at least 5 MiB except the last). A stream that
    /// ends within the first part goes up in a single PUT.
    pub part_size: usize,
    /// Parts in flight at once (memory: `part_size` × this).
    pub concurrency: usize,
}

pub const MIN_PART_SIZE: usize = 5 << 20;

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 << 20,
            concurrency: 4,
        }
    }
}

/// What [`Client::upload`] sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    /// 0 for a single PUT.
    pub parts: usize,
    pub etag: Option<String>,
}

/// A connection to one bucket. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Client {
    store: Arc<AmazonS3>,
    bucket: String,
    cred_source: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client(s3://{})", self.bucket)
    }
}

fn path(key: &str) -> StorePath {
    StorePath::from(key)
}

impl Client {
    /// A client for `config` (which [`S3Config::from_env`] or
    /// [`S3Config::fill_from_env`] completed). Sends nothing yet.
    pub fn new(config: &S3Config) -> Result<Client, S3Error> {
        if config.bucket.is_empty() {
            return Err(S3Error::Config("no bucket given".into()));
        }
        // Keys, the environment chain and the profile were resolved by
        // S3Config; object_store's own look-ups (web identity, container
        // and instance credentials) apply only when it found no keys.
        let mut b = if config.env_override.is_some() {
            AmazonS3Builder::new()
        } else {
            AmazonS3Builder::from_env()
        };
        b = b
            .with_bucket_name(&config.bucket)
            .with_region(config.region())
            .with_virtual_hosted_style_request(config.path_style == Some(false))
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            // Never a token from the environment with keys from elsewhere.
            b = b.with_token(config.session_token.clone().unwrap_or_default());
        }
        let mut opts = ClientOptions::new()
            .with_connect_timeout(config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .with_timeout(config.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT));
        if let Some(acl) = &config.acl {
            // On every request (object_store has no per-upload ACL); the
            // server uses it where it applies (PUT, multipart creation).
            let v = http::HeaderValue::from_str(acl)
                .map_err(|_| S3Error::Config(format!("ACL {acl:?}: not a header value")))?;
            let mut h = http::HeaderMap::new();
            h.insert("x-amz-acl", v);
            opts = opts.with_default_headers(h);
        }
        if let Some(ep) = &config.endpoint {
            let ep = ep.trim_end_matches('/');
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(S3Error::Config(format!(
                    "endpoint {ep:?}: needs http:// or https://"
                )));
            }
            opts = opts.with_allow_http(ep.starts_with("http://"));
            b = b.with_endpoint(ep);
        }
        b = b.with_client_options(opts).with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: config.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            retry_timeout: config.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
        });
        if config.checksum {
            b = b.with_checksum_algorithm(Checksum::SHA256);
        }
        let bucket = config.bucket.clone();
        let store = runtime::run(async move { b.build() })?
            .map_err(|e| S3Error::Config(format!("s3://{bucket}: {e}")))?;
        Ok(Client {
            store: Arc::new(store),
            bucket: config.bucket.clone(),
            cred_source: config.credential_source.clone(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn err(&self, e: object_store::Error, key: &str, op: &'static str) -> S3Error {
        S3Error::from_store(e, &self.bucket, key, op, self.cred_source.as_deref())
    }

    /// Write `data` to `key`, replacing what is there.
    pub fn put(&self, key: &str, data: Bytes) -> Result<Option<String>, S3Error> {
        let store = self.store.clone();
        let p = path(key);
        runtime::run(async move { store.put(&p, PutPayload::from(data)).await })?
            .map(|r| r.e_tag)
            .map_err(|e| self.err(e, key, "put"))
    }

    /// Create `key` with `data` unless it exists (`If-None-Match: *`).
    pub fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, S3Error> {
        runtime::run(self.put_if_absent_async(key, data))?
    }

    /// [`Client::put_if_absent`] as a future, to run several at once on
    /// the S3 runtime ([`runtime::spawn`]).
    pub fn put_if_absent_async(
        &self,
        key: &str,
        data: Bytes,
    ) -> impl std::future::Future<Output = Result<PutOutcome, S3Error>> + Send + 'static {
        let this = self.clone();
        let key = key.to_string();
        async move {
            let p = path(&key);
            let r = this
                .store
                .put_opts(
                    &p,
                    PutPayload::from(data),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match r {
                Ok(r) => Ok(PutOutcome::Created { etag: r.e_tag }),
                Err(e) => match this.err(e, &key, "put") {
                    S3Error::AlreadyExists { .. } => Ok(PutOutcome::Exists),
                    e => Err(e),
                },
            }
        }
    }

    /// Upload everything `reader` yields to `key` (replacing it): a single
    /// PUT when it fits one part, else a multipart upload in constant
    /// memory. Nothing is visible under `key` unless all of it arrived.
    pub fn upload(
        &self,
        key: &str,
        reader: &mut dyn Read,
        opts: &UploadOptions,
    ) -> Result<Uploaded, S3Error> {
        let part_size = opts.part_size.max(MIN_PART_SIZE);
        let concurrency = opts.concurrency.max(1);
        let first = self.read_part(key, reader, part_size)?;
        if first.len() < part_size {
            let bytes = first.len() as u64;
            let etag = self.put(key, first)?;
            return Ok(Uploaded {
                bytes,
                parts: 0,
                etag,
            });
        }
        let store = self.store.clone();
        let p = path(key);
        let mut upload: Box<dyn MultipartUpload> = runtime::run(async move {
            store
                .put_multipart_opts(&p, PutMultipartOptions::default())
                .await
        })?
        .map_err(|e| self.err(e, key, "start multipart upload"))?;
        let mut inflight: VecDeque<std::sync::mpsc::Receiver<object_store::Result<()>>> =
            VecDeque::new();
        let mut bytes = 0u64;
        let mut parts = 0usize;
        let mut next = Some(first);
        let result: Result<(), S3Error> = (|| {
            while let Some(chunk) = next.take() {
                if chunk.is_empty() {
                    break;
                }
                bytes += chunk.len() as u64;
                parts += 1;
                let full = chunk.len() == part_size;
                let fut = upload.put_part(PutPayload::from(chunk));
                inflight.push_back(runtime::spawn(fut)?);
                while inflight.len() >= concurrency {
                    wait_part(inflight.pop_front().expect("not empty"))
                        .map_err(|e| self.err(e, key, "upload part"))?;
                }
                if full {
                    next = Some(self.read_part(key, reader, part_size)?);
                }
            }
            while let Some(rx) = inflight.pop_front() {
                wait_part(rx).map_err(|e| self.err(e, key, "upload part"))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Wait for the parts still running, then abort (best effort:
            // a crash leaves an incomplete upload, which is never visible
            // as an object and which a bucket lifecycle rule removes).
            for rx in inflight {
                let _ = rx.recv();
            }
            let _ = runtime::run(async move { upload.abort().await });
            return Err(e);
        }
        let (mut upload, r) = runtime::run(async move {
            let r = upload.complete().await;
            (upload, r)
        })?;
        match r {
            Ok(r) => Ok(Uploaded {
                bytes,
                parts,
                etag: r.e_tag,
            }),
            Err(e) => {
                let _ = runtime::run(async move { upload.abort().await });
                Err(self.err(e, key, "complete multipart upload"))
            }
        }
    }

    /// Up to `size` bytes from `reader` (fewer only at its end).
    fn read_part(&self, key: &str, reader: &mut dyn Read, size: usize) -> Result<Bytes, S3Error> {
        let mut buf = Vec::with_capacity(size);
        let mut taken = reader.take(size as u64);
        loop {
            match taken.read_to_end(&mut buf) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(S3Error::Read {
                        bucket: self.bucket.clone(),
                        key: key.to_string(),
                        source: e,
                    });
                }
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Every object whose key starts with `prefix` (a whole path segment:
    /// `a/b` lists `a/b/...`), in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        let store = self.store.clone();
        let p = (!prefix.is_empty()).then(|| path(prefix));
        let r = runtime::run(async move {
            let mut s = store.list(p.as_ref());
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                out.push(m?);
            }
            Ok::<_, object_store::Error>(out)
        })?
        .map_err(|e| self.err(e, prefix, "list"))?;
        let mut out: Vec<ObjectInfo> = r.into_iter().map(info).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The object's metadata; `None` when there is no such object.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let store = self.store.clone();
        let p = path(key);
        match runtime::run(async move { store.head(&p).await })? {
            Ok(m) => Ok(Some(info(m))),
            Err(e) => match self.err(e, key, "head") {
                S3Error::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The whole object, if it is at most `max` bytes (else an error);
    /// `None` when there is no such object.
    pub fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, S3Error> {
        let Some(mut r) = self.reader(key)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        (&mut r)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| r.error_or(e))?;
        if out.len() as u64 > max {
            return Err(S3Error::Request {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                op: "get",
                message: format!("larger than {max} bytes"),
                transient: false,
            });
        }
        Ok(Some(out))
    }

    /// [`Client::get`] of a small object as a future (to fetch several at
    /// once on the S3 runtime); `None` when there is no such object.
    pub fn get_small_async(
        &self,
        key: &str,
        max: u64,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, S3Error>> + Send + 'static {
        let this = self.clone();
        let key = key.to_string();
        async move {
            let p = path(&key);
            let r = async {
                let g = this.store.get(&p).await?;
                if g.meta.size > max {
                    return Ok(None);
                }
                g.bytes().await.map(Some)
            }
            .await;
            match r {
                Ok(Some(b)) if b.len() as u64 <= max => Ok(Some(b)),
                Ok(_) => Err(S3Error::Request {
                    bucket: this.bucket.clone(),
                    key,
                    op: "get",
                    message: format!("larger than {max} bytes"),
                    transient: false,
                }),
                Err(e) => match this.err(e, &key, "get") {
                    S3Error::NotFound { .. } => Ok(None),
                    e => Err(e),
                },
            }
        }
    }

    /// A streaming reader of the object (a few chunks buffered ahead);
    /// `None` when there is no such object.
    pub fn reader(&self, key: &str) -> Result<Option<ObjectReader>, S3Error> {
        let store = self.store.clone();
        let p = path(key);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, object_store::Error>>(4);
        let opened = runtime::run(async move {
            let got = store.get(&p).await;
            match got {
                Ok(g) => {
                    let size = g.meta.size;
                    let mut s = g.into_stream();
                    tokio::spawn(async move {
                        while let Some(chunk) = s.next().await {
                            let stop = chunk.is_err();
                            if tx.send(chunk).await.is_err() || stop {
                                break;
                            }
                        }
                    });
                    Ok(size)
                }
                Err(e) => Err(e),
            }
        })?;
        match opened {
            Ok(size) => Ok(Some(ObjectReader {
                rx,
                buf: Bytes::new(),
                size,
                error: None,
                client: self.clone(),
                key: key.to_string(),
            })),
            Err(e) => match self.err(e, key, "get") {
                S3Error::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Remove `key`; one that does not exist is not an error.
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        let store = self.store.clone();
        let p = path(key);
        match runtime::run(async move { store.delete(&p).await })? {
            Ok(()) => Ok(()),
            Err(e) => match self.err(e, key, "delete") {
                S3Error::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Remove several keys (concurrently, a few at a time).
    pub fn delete_many(&self, keys: &[String]) -> Result<(), S3Error> {
        let store = self.store.clone();
        let paths: Vec<(String, StorePath)> = keys.iter().map(|k| (k.clone(), path(k))).collect();
        let results = runtime::run(async move {
            futures::stream::iter(paths)
                .map(|(k, p)| {
                    let store = store.clone();
                    async move { (k, store.delete(&p).await) }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })?;
        for (k, r) in results {
            if let Err(e) = r {
                match self.err(e, &k, "delete") {
                    S3Error::NotFound { .. } => {}
                    e => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn info(m: object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: m.location.to_string(),
        size: m.size,
        etag: m.e_tag,
        last_modified: SystemTime::from(m.last_modified),
    }
}

fn wait_part(rx: std::sync::mpsc::Receiver<object_store::Result<()>>) -> object_store::Result<()> {
    rx.recv().unwrap_or_else(|_| {
        Err(object_store::Error::Generic {
            store: "S3",
            source: "the S3 runtime dropped a part upload".into(),
        })
    })
}

/// An object being read (see [`Client::reader`]). A failure mid-stream
/// is an `io::Error` whose message is the whole S3 error; the typed
/// error is kept in [`ObjectReader::take_error`].
pub struct ObjectReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, object_store::Error>>,
    buf: Bytes,
    size: u64,
    error: Option<S3Error>,
    client: Client,
    key: String,
}

impl ObjectReader {
    /// The object's size as the server said.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The S3 error behind the last failed read, if any.
    pub fn take_error(&mut self) -> Option<S3Error> {
        self.error.take()
    }

    fn error_or(&mut self, e: std::io::Error) -> S3Error {
        self.error.take().unwrap_or(S3Error::Read {
            bucket: self.client.bucket.clone(),
            key: self.key.clone(),
            source: e,
        })
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            // A channel works with any executor: waiting here never
            // needs (or disturbs) a tokio context.
            match futures::executor::block_on(self.rx.recv()) {
                None => return Ok(0),
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => {
                    let e = self.client.err(e, &self.key, "get");
                    let transient = e.is_transient();
                    let msg = fspl_queue::display_chain(&e);
                    self.error = Some(e);
                    let kind = if transient {
                        std::io::ErrorKind::ConnectionReset
                    } else {
                        std::io::ErrorKind::Other
                    };
                    return Err(std::io::Error::new(kind, msg));
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

impl fspl_queue::JobSource for ObjectReader {}
