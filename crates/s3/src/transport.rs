//! `s3://BUCKET/PREFIX` as a destination of `fspl push` and a source of
//! `fspl pull`.
//!
//! **Keys.** A job goes to `PREFIX/fspl-<seq, 20 digits>-<digest>.fspl`,
//! the digest being the first 128 bits of the BLAKE3 hash of the whole
//! job file (hex). Keys sort by seq (encrypted jobs the sender cannot
//! read get `fspl-x-<digest>.fspl`, after all others); two different jobs
//! never share a key, and sending a job again names the same key. The
//! key's last part is a job file name, so a receiving queue stores the
//! job under it, and a job taken twice lands on its own copy.
//!
//! **Push.** Each job is created with `If-None-Match: *` (up to
//! [`PUSH_WINDOW`] at once): it is never overwritten. When the key exists
//! already, the object is read back and compared: the same bytes count
//! as delivered; anything else is a refusal. Before the first job, the
//! server is checked to honour conditional writes (a probe object is
//! created, if missing, and created again under
//! `PREFIX/.fspl-conditional-write-check`, which stays); a
//! server that silently overwrites is refused with one line.
//!
//! **Pull.** The objects directly under `PREFIX/` whose names are job
//! file names are taken in key order (= seq order), through the
//! verifying queue-write path of [`fspl_transport::pull`], and removed
//! from the bucket once durable in the queue. With `--keep` they stay,
//! and the keys taken are appended (and fsynced) to
//! `QUEUE/s3-pull-taken`, which later pulls skip.
//!
//! **URL options** (after `?`, `&`-separated): `endpoint=URL`,
//! `region=NAME`, `path_style=true|false`, `profile=NAME`; the rest comes
//! from the AWS environment ([`crate::config`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use fspl_queue::{EntryKind, JobSource, classify};
use fspl_transport::{
    Ack, AckSink, Location, OutgoingJob, RemoteJob, Sink, Source, TransportError,
    TransportErrorKind, hand_over,
};

use crate::client::{Client, PutOutcome};
use crate::config::S3Config;
use crate::error::S3Error;
use crate::runtime;

/// Puts in flight at once during a push.
pub const PUSH_WINDOW: usize = 32;
/// Bytes of jobs held in memory for puts in flight (one job larger than
/// this is still sent, alone).
pub const PUSH_WINDOW_BYTES: u64 = 64 << 20;
/// The largest job a push sends (a conditional create is one PUT, whose
/// body is held in memory while it is sent and retried).
pub const MAX_JOB_BYTES: u64 = 1 << 30;
/// Where `fspl pull --keep` remembers what it took, in the queue.
pub const KEEP_STATE: &str = "s3-pull-taken";

/// A parsed `s3://` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, TransportError> {
        let bad = |reason: String| TransportError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: s3://BUCKET/PREFIX".into()));
        }
        if bucket.len() > 255
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(bad(format!("bad bucket name {bucket:?}")));
        }
        let prefix = prefix.trim_matches('/');
        for seg in prefix.split('/').filter(|_| !prefix.is_empty()) {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad(format!("bad prefix {prefix:?} (empty, . or .. part)")));
            }
            if seg.chars().any(|c| c.is_control()) {
                return Err(bad("a control character in the prefix".into()));
            }
        }
        let mut u = S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            region: None,
            path_style: None,
            profile: None,
        };
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if v.is_empty() {
                return Err(bad(format!("option {k:?} needs a value")));
            }
            match k {
                "endpoint" => u.endpoint = Some(v.to_string()),
                "region" => u.region = Some(v.to_string()),
                "profile" => u.profile = Some(v.to_string()),
                "path_style" => {
                    u.path_style = Some(match v {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad(format!("path_style={v:?}: true or false"))),
                    })
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option {k:?} (known: endpoint, region, path_style, profile)"
                    )));
                }
            }
        }
        Ok(u)
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    pub fn config(&self) -> Result<S3Config, S3Error> {
        let mut c = S3Config {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            profile: self.profile.clone(),
            ..S3Config::default()
        };
        c.fill_from_env()?;
        Ok(c)
    }

    fn show(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// The key name of a job: sorts by seq, unique per content.
pub fn job_name(seq: Option<u64>, data: &[u8]) -> String {
    let h = blake3::hash(data);
    let hex = h.to_hex();
    match seq {
        Some(s) => format!("fspl-{s:020}-{}.fspl", &hex[..32]),
        None => format!("fspl-x-{}.fspl", &hex[..32]),
    }
}

fn url_of(location: &Location) -> Result<S3Url, TransportError> {
    match location {
        Location::Remote { scheme, url } if scheme == "s3" => S3Url::parse(url),
        other => Err(TransportError::Unsupported(format!(
            "not an s3:// location: {other:?}"
        ))),
    }
}

/// One client per URL per process (the daemon opens its sinks and
/// sources again every run; connections are kept).
fn client_for(u: &S3Url) -> Result<Client, TransportError> {
    static CLIENTS: Mutex<Option<HashMap<S3Url, Client>>> = Mutex::new(None);
    let mut all = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    let all = all.get_or_insert_with(HashMap::new);
    let mut base = u.clone();
    base.prefix.clear();
    if let Some(c) = all.get(&base) {
        return Ok(c.clone());
    }
    let c = Client::new(&u.config()?)?;
    all.insert(base, c.clone());
    Ok(c)
}

impl std::hash::Hash for S3Url {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            &self.bucket,
            &self.prefix,
            &self.endpoint,
            &self.region,
            &self.path_style,
            &self.profile,
        )
            .hash(state)
    }
}

/// The marker object of the conditional-write check, under the prefix.
pub const PROBE_KEY: &str = ".fspl-conditional-write-check";

/// Check once per process and bucket that the server refuses to create an
/// object that exists (`If-None-Match: *`).
pub fn probe_conditional_writes(client: &Client, u: &S3Url) -> Result<(), TransportError> {
    /// (bucket, endpoint) pairs checked.
    type Checked = HashSet<(String, Option<String>)>;
    static HONOURED: Mutex<Option<Checked>> = Mutex::new(None);
    let id = (u.bucket.clone(), u.endpoint.clone());
    if HONOURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .contains(&id)
    {
        return Ok(());
    }
    // One fixed marker object per prefix, created once and left there:
    // probing never needs a delete, so a push killed mid-probe leaves
    // nothing behind (regression s3_probe_objects_littered_the_bucket_
    // when_a_push_was_killed: a uuid per probe, removed after it, stayed
    // forever when the push died in between), and concurrent probes agree.
    // Whether the first create finds it or makes it does not matter; the
    // second must be refused.
    let key = u.key(PROBE_KEY);
    client.put_if_absent(&key, Bytes::from_static(b"fspl conditional-write check\n"))?;
    let second = client.put_if_absent(
        &key,
        Bytes::from_static(b"fspl conditional-write check 2\n"),
    );
    match second? {
        PutOutcome::Exists => {}
        PutOutcome::Created { .. } => {
            return Err(TransportError::Backend {
                message: format!(
                    "s3://{}: the server does not honour conditional writes (If-None-Match: *), so a job could be overwritten; refusing to push there",
                    u.bucket
                ),
                kind: TransportErrorKind::Permanent,
            });
        }
    }
    HONOURED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(id);
    Ok(())
}

/// `fspl_transport::Backend::open_sink` for `s3://`.
pub fn open_sink(location: &Location) -> Result<Box<dyn Sink>, TransportError> {
    let u = url_of(location)?;
    let client = client_for(&u)?;
    probe_conditional_writes(&client, &u)?;
    Ok(Box::new(S3Sink {
        client,
        url: u,
        inflight: VecDeque::new(),
        inflight_bytes: 0,
        acks: Vec::new(),
    }))
}

/// `fspl_transport::Backend::open_source` for `s3://`.
pub fn open_source(location: &Location) -> Result<Box<dyn Source>, TransportError> {
    let u = url_of(location)?;
    let client = client_for(&u)?;
    Ok(Box::new(S3Source {
        client,
        url: u,
        keep: None,
        ahead: VecDeque::new(),
        fetching: VecDeque::new(),
    }))
}

struct Pending {
    id: u64,
    key: String,
    digest: blake3::Hash,
    len: u64,
    rx: std::sync::mpsc::Receiver<Result<PutOutcome, S3Error>>,
}

/// The destination of a push: conditional creates, a window of them in
/// flight on the S3 runtime.
pub struct S3Sink {
    client: Client,
    url: S3Url,
    inflight: VecDeque<Pending>,
    inflight_bytes: u64,
    acks: Vec<Ack>,
}

impl S3Sink {
    /// Record the answer to one put.
    fn settle(
        &mut self,
        p: Pending,
        r: Result<Result<PutOutcome, S3Error>, std::sync::mpsc::RecvError>,
    ) -> Result<(), TransportError> {
        self.inflight_bytes -= p.len;
        let r = r.map_err(|_| S3Error::Runtime("a put stopped without an answer".into()))?;
        match r? {
            PutOutcome::Created { .. } => self.acks.push(Ack::Durable(p.id)),
            PutOutcome::Exists => {
                // Sent before (a push that was stopped before it removed
                // the job from the outbox): the same bytes are a delivery.
                let same_size = self.client.head(&p.key)?.is_none_or(|o| o.size == p.len);
                let existing = if same_size {
                    self.client.get(&p.key, p.len)?
                } else {
                    Some(Vec::new())
                };
                match existing {
                    None => {
                        // Taken by a pull since: it was there, so it was
                        // delivered.
                        self.acks.push(Ack::Durable(p.id))
                    }
                    Some(b) if blake3::hash(&b) == p.digest => self.acks.push(Ack::Durable(p.id)),
                    Some(_) => self.acks.push(Ack::Refused {
                        id: p.id,
                        reason: format!(
                            "a different object is already at {} (not replaced)",
                            self.url.show(&p.key)
                        ),
                    }),
                }
            }
        }
        Ok(())
    }

    /// Settle the puts that are done (`wait_until`: wait until at most
    /// that many are in flight).
    fn collect(&mut self, wait_until: Option<usize>) -> Result<(), TransportError> {
        let mut first_err = None;
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.inflight.len() {
                match self.inflight[i].rx.try_recv() {
                    Err(std::sync::mpsc::TryRecvError::Empty) => i += 1,
                    r => {
                        let p = self.inflight.remove(i).expect("in range");
                        let r = r.map_err(|_| std::sync::mpsc::RecvError);
                        if let Err(e) = self.settle(p, r) {
                            first_err.get_or_insert(e);
                        }
                        progressed = true;
                    }
                }
            }
            match wait_until {
                Some(n) if self.inflight.len() > n => {
                    if !progressed {
                        let p = self.inflight.pop_front().expect("not empty");
                        let r = p.rx.recv();
                        if let Err(e) = self.settle(p, r) {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                _ => break,
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Sink for S3Sink {
    fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError> {
        if job.len > MAX_JOB_BYTES {
            self.acks.push(Ack::Refused {
                id,
                reason: format!(
                    "{} bytes: larger than s3:// takes ({MAX_JOB_BYTES} bytes in one conditional PUT)",
                    job.len
                ),
            });
            return Ok(());
        }
        let mut data = Vec::with_capacity(job.len as usize);
        job.reader
            .take(MAX_JOB_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| TransportError::io("read", Path::new(job.name), e))?;
        let len = data.len() as u64;
        // Room in the window first (bytes and count).
        while !self.inflight.is_empty()
            && (self.inflight.len() >= PUSH_WINDOW || self.inflight_bytes + len > PUSH_WINDOW_BYTES)
        {
            let keep = self.inflight.len() - 1;
            self.collect(Some(keep))?;
        }
        let digest = blake3::hash(&data);
        let key = self.url.key(&job_name(job.seq, &data));
        let fut = self.client.put_if_absent_async(&key, Bytes::from(data));
        let rx = runtime::spawn(fut)?;
        self.inflight_bytes += len;
        self.inflight.push_back(Pending {
            id,
            key,
            digest,
            len,
            rx,
        });
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<Ack>, TransportError> {
        let r = self.collect(None);
        let acks = std::mem::take(&mut self.acks);
        match r {
            // The acknowledgements gathered so far come with the next
            // poll (the driver polls again after an error).
            Err(e) => {
                self.acks = acks;
                Err(e)
            }
            Ok(()) => Ok(acks),
        }
    }

    fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
        let r = self.collect(Some(0));
        hand_over(&mut self.acks, acked)?;
        r
    }
}

/// What `--keep` remembers: the keys taken, appended to a file in the
/// queue.
struct KeepState {
    path: PathBuf,
    taken: HashSet<String>,
}

/// Objects a pull fetches ahead, while the queue stores the one before.
pub const PULL_WINDOW: usize = 16;
/// Objects at most this large are fetched ahead whole; larger ones are
/// streamed when their turn comes.
pub const PREFETCH_MAX: u64 = 1 << 20;

type Fetch = std::sync::mpsc::Receiver<Result<Option<Bytes>, S3Error>>;

/// The source of a pull: the job objects directly under the prefix.
pub struct S3Source {
    client: Client,
    url: S3Url,
    keep: Option<KeepState>,
    /// The listing not yet fetched ahead, in order.
    ahead: VecDeque<RemoteJob>,
    /// Fetches in flight, in listing order.
    fetching: VecDeque<(std::ffi::OsString, Fetch)>,
}

impl S3Source {
    /// Keep up to PULL_WINDOW small objects being fetched.
    fn top_up(&mut self) -> Result<(), TransportError> {
        while self.fetching.len() < PULL_WINDOW {
            let Some(job) = self.ahead.pop_front() else {
                break;
            };
            if job.len.is_none_or(|l| l > PREFETCH_MAX) {
                // Streamed when its turn comes.
                continue;
            }
            let key = job.key.to_string_lossy().into_owned();
            let rx = runtime::spawn(self.client.get_small_async(&key, PREFETCH_MAX))?;
            self.fetching.push_back((job.key, rx));
        }
        Ok(())
    }
}

impl Source for S3Source {
    fn list(&mut self) -> Result<Vec<RemoteJob>, TransportError> {
        let objects = self.client.list(&self.url.prefix)?;
        let parent = &self.url.prefix;
        let mut out = Vec::new();
        for o in objects {
            let (dir, name) = o.key.rsplit_once('/').unwrap_or(("", &o.key));
            if dir != parent || classify(std::ffi::OsStr::new(name)) != EntryKind::Job {
                continue;
            }
            if let Some(k) = &self.keep
                && k.taken.contains(&o.key)
            {
                continue;
            }
            out.push(RemoteJob {
                key: o.key.into(),
                len: Some(o.size),
            });
        }
        self.ahead = out.iter().cloned().collect();
        self.fetching.clear();
        Ok(out)
    }

    fn open(&mut self, job: &RemoteJob) -> Result<Option<Box<dyn JobSource + '_>>, TransportError> {
        // Fetched ahead (the driver opens jobs in listing order)?
        // (Keys are listed sorted: what sorts before this job was skipped.)
        while self.fetching.front().is_some_and(|(k, _)| *k < job.key) {
            self.fetching.pop_front();
        }
        let fetched = match self.fetching.front() {
            Some((key, _)) if *key == job.key => {
                let (_, rx) = self.fetching.pop_front().expect("front");
                Some(rx.recv().unwrap_or_else(|_| {
                    Err(S3Error::Runtime("a fetch stopped without an answer".into()))
                })?)
            }
            _ => None,
        };
        while self.ahead.front().is_some_and(|j| j.key <= job.key) {
            self.ahead.pop_front();
        }
        self.top_up()?;
        if let Some(b) = fetched {
            return Ok(b.map(|b| Box::new(BytesJob(b, 0)) as Box<dyn JobSource>));
        }
        let key = job.key.to_string_lossy();
        Ok(self
            .client
            .reader(&key)?
            .map(|r| Box::new(r) as Box<dyn JobSource>))
    }

    fn remove(&mut self, jobs: &[RemoteJob]) -> Result<(), TransportError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = jobs
            .iter()
            .map(|j| j.key.to_string_lossy().into_owned())
            .collect();
        match &mut self.keep {
            Some(k) => {
                let mut text = String::new();
                for key in &keys {
                    text.push_str(key);
                    text.push('\n');
                }
                let existed = k.path.exists();
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(&k.path)
                    .map_err(|e| TransportError::io("open", &k.path, e))?;
                f.write_all(text.as_bytes())
                    .and_then(|_| f.sync_data())
                    .map_err(|e| TransportError::io("write", &k.path, e))?;
                if !existed && let Some(dir) = k.path.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| TransportError::io("sync directory", dir, e))?;
                }
                k.taken.extend(keys);
                Ok(())
            }
            None => Ok(self.client.delete_many(&keys)?),
        }
    }

    fn describe(&self, job: &RemoteJob) -> PathBuf {
        PathBuf::from(self.url.show(&job.key.to_string_lossy()))
    }

    fn keep_in(&mut self, queue_dir: &Path) -> Result<(), TransportError> {
        let path = queue_dir.join(KEEP_STATE);
        let taken = match std::fs::read_to_string(&path) {
            Ok(s) => s.lines().map(str::to_string).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(TransportError::io("read", &path, e)),
        };
        self.keep = Some(KeepState { path, taken });
        Ok(())
    }
}

/// A job fetched whole.
struct BytesJob(Bytes, usize);

impl Read for BytesJob {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.0[self.1..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.1 += n;
        Ok(n)
    }
}

impl JobSource for BytesJob {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse("s3://jobs/to/server/?endpoint=http://127.0.0.1:9000&path_style=true")
            .unwrap();
        assert_eq!(u.bucket, "jobs");
        assert_eq!(u.prefix, "to/server");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.path_style, Some(true));
        assert_eq!(u.key("fspl-1.fspl"), "to/server/fspl-1.fspl");
        let u = S3Url::parse("s3://jobs").unwrap();
        assert_eq!(u.key("k"), "k");
        for (bad, why) in [
            ("s3:///x", "no bucket"),
            ("s3://b/a//c", "bad prefix"),
            ("s3://b/../c", "bad prefix"),
            ("s3://b/p?colour=red", "unknown option"),
            ("s3://b/p?path_style=maybe", "true or false"),
            ("s3://b c/p", "bad bucket"),
        ] {
            let e = S3Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn job_names_sort_by_seq_and_differ_by_content() {
        let a = job_name(Some(9), b"one");
        let b = job_name(Some(10), b"one");
        let c = job_name(Some(10), b"two");
        let x = job_name(None, b"sealed");
        assert!(a < b && b != c && c < x && b < x, "{a} {b} {c} {x}");
        assert_eq!(a, job_name(Some(9), b"one"));
        for n in [a, b, c, x] {
            assert_eq!(classify(std::ffi::OsStr::new(&n)), EntryKind::Job, "{n}");
        }
    }
}
