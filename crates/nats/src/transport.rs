//! `nats://HOST:PORT/NAME`: a queue's jobs carried by a JetStream stream.
//!
//! - The stream `fspl-NAME` (file storage, work-queue retention: a
//!   message is gone once the puller acknowledged it) takes subject
//!   `fspl.jobs.NAME`; it is created on first use, with no maximum age
//!   unless `max_age=` says, and a duplicate window of 10 minutes (or
//!   `dup_window=`).
//! - Push publishes each job file as one message, its `Nats-Msg-Id` the
//!   job's content digest (BLAKE3 of the file, hex) and its header
//!   `Fspl-Name` the job's name in the outbox, many at once (up to
//!   [`MAX_INFLIGHT`] awaiting the server's acknowledgement): a job counts
//!   as sent when JetStream acknowledged it stored. A resend within the
//!   duplicate window is stored once. A job larger than the server's
//!   `max_payload` is refused (it stays in the outbox, with one line
//!   saying so): NATS is not meant for big messages, and a job in pieces
//!   would need its own reassembly and cleanup of partial pieces, which
//!   `s3://` or `ssh://` avoid.
//! - Pull reads through the durable pull consumer `fspl-pull`, stores
//!   each job with the verifying durable queue write (kept under its
//!   `Fspl-Name`, so a message delivered twice lands on its own earlier
//!   copy), and acknowledges the messages only once their batch is
//!   durable. Jobs run in the order of their fspl seqs, never the
//!   stream's; a job delivered again after it ran is below the queue's
//!   nextseq and is not run again.
//!
//! URL: `nats://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/NAME` with
//! optional `?creds=PATH` (a `.creds` file; else `$FSPL_NATS_CREDS` when
//! set), `timeout=SECONDS` (connect and request timeout, default 10),
//! `max_age=SECONDS`, `dup_window=SECONDS`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use fspl_queue::{EntryKind, JobSource, classify};
use fspl_transport::{
    Ack, AckSink, Backend, Location, OutgoingJob, RemoteJob, Sink, Source, TransportError,
    TransportErrorKind, hand_over,
};
use futures::StreamExt;

use crate::connect::ConnectConfig;
use crate::error::{NatsError, one_line};
use crate::jetstream::{ConsumerSpec, StreamSpec, context, ensure_stream, fresh_pull_consumer};
use crate::runtime::block_on;

/// Publishes awaiting their acknowledgement at once.
pub const MAX_INFLIGHT: usize = 1024;
/// The header naming the job file.
pub const NAME_HEADER: &str = "Fspl-Name";
/// The durable consumer pulls read through.
pub const CONSUMER: &str = "fspl-pull";
/// Jobs one listing of a pull holds (their bytes are in memory until
/// their batch is durable); `fspl pull` lists again until the stream is
/// empty.
pub const LIST_MAX_JOBS: usize = 10_000;
/// Bytes one listing holds (at least one job, whatever its size).
pub const LIST_MAX_BYTES: usize = 64 << 20;
/// Room left in `max_payload` for the headers of a job message.
const HEADER_ROOM: usize = 256;
/// The environment variable naming a `.creds` file when the URL does not.
pub const CREDS_ENV: &str = "FSPL_NATS_CREDS";

/// The backend to register with [`fspl_transport::register`].
pub fn backend() -> Backend {
    Backend {
        scheme: "nats",
        open_sink,
        open_source,
    }
}

fn open_sink(location: &Location) -> Result<Box<dyn Sink>, TransportError> {
    let target = NatsTarget::from_location(location)?;
    Ok(Box::new(NatsSink::open(target)?))
}

fn open_source(location: &Location) -> Result<Box<dyn Source>, TransportError> {
    let target = NatsTarget::from_location(location)?;
    Ok(Box::new(NatsSource::open(target)?))
}

/// A parsed `nats://` URL.
#[derive(Clone, Debug, PartialEq)]
pub struct NatsTarget {
    /// The URL as given (for messages).
    pub url: String,
    pub connect: ConnectConfig,
    /// The queue name: the stream is `fspl-NAME`, the subject
    /// `fspl.jobs.NAME`.
    pub name: String,
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

fn bad(url: &str, reason: impl Into<String>) -> TransportError {
    TransportError::BadUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn seconds(url: &str, key: &str, v: &str) -> Result<Duration, TransportError> {
    let s: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .ok_or_else(|| bad(url, format!("{key}={v:?}: not a number of seconds")))?;
    Ok(Duration::from_secs_f64(s))
}

impl NatsTarget {
    pub fn from_location(location: &Location) -> Result<NatsTarget, TransportError> {
        match location {
            Location::Remote { scheme, url } if scheme == "nats" => NatsTarget::parse(url),
            other => Err(TransportError::Unsupported(format!(
                "not a nats:// location: {other:?}"
            ))),
        }
    }

    pub fn parse(url: &str) -> Result<NatsTarget, TransportError> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| bad(url, "not a nats:// URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, name) = rest
            .split_once('/')
            .ok_or_else(|| bad(url, "needs a queue name: nats://HOST:PORT/NAME"))?;
        check_name(name).map_err(|r| bad(url, r))?;
        if authority.is_empty() {
            return Err(bad(url, "no server"));
        }
        // user:password@ applies to every server listed.
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut servers = Vec::new();
        for h in hosts.split(',') {
            if h.is_empty() || h.starts_with('-') {
                return Err(bad(url, format!("{h:?} is not a server")));
            }
            servers.push(match userinfo {
                Some(u) => format!("nats://{u}@{h}"),
                None => format!("nats://{h}"),
            });
        }
        let mut connect = ConnectConfig {
            servers,
            name: format!("fspl {name}"),
            ..ConnectConfig::default()
        };
        let mut t = NatsTarget {
            url: url.to_string(),
            connect: ConnectConfig::default(),
            name: name.to_string(),
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(600),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "creds" if !v.is_empty() => connect.creds = Some(PathBuf::from(v)),
                "timeout" => {
                    let d = seconds(url, k, v)?;
                    if d.is_zero() {
                        return Err(bad(url, "timeout=0 would never connect"));
                    }
                    connect.connect_timeout = d;
                    connect.request_timeout = d;
                }
                "max_age" => t.max_age = seconds(url, k, v)?,
                "dup_window" => t.duplicate_window = seconds(url, k, v)?,
                _ => {
                    return Err(bad(
                        url,
                        format!(
                            "unknown option {k:?} (known: creds, timeout, max_age, dup_window)"
                        ),
                    ));
                }
            }
        }
        if connect.creds.is_none()
            && let Some(p) = std::env::var_os(CREDS_ENV).filter(|p| !p.is_empty())
        {
            connect.creds = Some(PathBuf::from(p));
        }
        connect.addrs().map_err(|e| bad(url, one_line(&e)))?;
        t.connect = connect;
        Ok(t)
    }

    pub fn stream_name(&self) -> String {
        format!("fspl-{}", self.name)
    }

    pub fn subject(&self) -> String {
        format!("fspl.jobs.{}", self.name)
    }

    /// The URL without its options (no credentials path in messages).
    pub fn shown(&self) -> &str {
        self.url.split('?').next().unwrap_or(&self.url)
    }

    fn stream_spec(&self) -> StreamSpec {
        StreamSpec {
            name: self.stream_name(),
            subjects: vec![self.subject()],
            retention: RetentionPolicy::WorkQueue,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            storage: StorageType::File,
        }
    }

    fn consumer_spec(&self) -> ConsumerSpec {
        ConsumerSpec {
            durable: CONSUMER.into(),
            filter_subject: self.subject(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: (LIST_MAX_JOBS * 2) as i64,
        }
    }

    /// Connect and make sure the stream exists.
    async fn open(
        &self,
    ) -> Result<(async_nats::Client, Context, jetstream::stream::Stream), NatsError> {
        let client = self.connect.connect().await?;
        let js = context(client.clone(), self.connect.request_timeout, MAX_INFLIGHT)?;
        let stream = ensure_stream(&js, &self.stream_spec()).await?;
        Ok((client, js, stream))
    }
}

/// A queue name: one to 64 of `A-Z a-z 0-9 _ -` (it becomes part of a
/// stream name and a subject).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("needs a queue name after the server: nats://HOST:PORT/NAME".into());
    }
    if name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{name:?}: a queue name is 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
        ));
    }
    Ok(())
}

fn transient(message: String) -> TransportError {
    TransportError::Backend {
        message,
        kind: TransportErrorKind::Transient,
    }
}

/// The result of one publish, as the background task reports it.
type Published = (u64, Result<(), String>);

/// `fspl push` to `nats://`.
pub struct NatsSink {
    target: NatsTarget,
    js: Context,
    subject: String,
    /// The largest job that fits in one message.
    max_job: usize,
    tx: mpsc::Sender<Published>,
    rx: mpsc::Receiver<Published>,
    inflight: usize,
    /// Acknowledgements not yet returned.
    ready: Vec<Ack>,
}

impl NatsSink {
    pub fn open(target: NatsTarget) -> Result<NatsSink, TransportError> {
        let (client, js, _stream) = block_on(target.open())??;
        let max_job = client.server_info().max_payload.saturating_sub(HEADER_ROOM);
        let (tx, rx) = mpsc::channel();
        Ok(NatsSink {
            subject: target.subject(),
            target,
            js,
            max_job,
            tx,
            rx,
            inflight: 0,
            ready: Vec::new(),
        })
    }

    fn refuse_big(&mut self, id: u64, len: u64) {
        self.ready.push(Ack::Refused {
            id,
            reason: format!(
                "{len} bytes is more than the NATS server takes in one message (max_payload {} bytes, less {HEADER_ROOM} for headers); raise max_payload in the server's configuration or send it by another transport",
                self.max_job + HEADER_ROOM
            ),
        });
    }

    fn take(&mut self, (id, r): Published) -> Result<(), TransportError> {
        self.inflight -= 1;
        match r {
            Ok(()) => {
                self.ready.push(Ack::Durable(id));
                Ok(())
            }
            Err(e) => Err(transient(format!(
                "{}: no acknowledgement from JetStream: {e}",
                self.target.shown()
            ))),
        }
    }

    /// Take the results that arrived, the first error last.
    fn drain(&mut self, wait: bool) -> Result<(), TransportError> {
        let mut first = None;
        loop {
            let r = if wait && self.inflight > 0 {
                // Each publish's acknowledgement is bounded by the request
                // timeout; this is a backstop.
                match self
                    .rx
                    .recv_timeout(self.target.connect.request_timeout * 3 + Duration::from_secs(5))
                {
                    Ok(r) => r,
                    Err(_) => {
                        first.get_or_insert(transient(format!(
                            "{}: {} publish(es) still unacknowledged",
                            self.target.shown(),
                            self.inflight
                        )));
                        break;
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            if let Err(e) = self.take(r) {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Sink for NatsSink {
    fn send(&mut self, id: u64, job: &mut OutgoingJob<'_>) -> Result<(), TransportError> {
        if job.len > self.max_job as u64 {
            self.refuse_big(id, job.len);
            return Ok(());
        }
        let mut buf = Vec::with_capacity(job.len as usize);
        (&mut *job.reader)
            .take(self.max_job as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| TransportError::io("read", PathBuf::from(job.name), e))?;
        if buf.len() > self.max_job {
            self.refuse_big(id, buf.len() as u64);
            return Ok(());
        }
        let digest = blake3::hash(&buf).to_hex();
        let mut msg = PublishMessage::build()
            .payload(buf.into())
            .message_id(digest.as_str());
        if let Some(name) = job.name.to_str() {
            msg = msg.header(NAME_HEADER, name);
        }
        let js = self.js.clone();
        let subject = self.subject.clone();
        let published = block_on(async move { js.send_publish(subject, msg).await })?;
        let ack = match published {
            Ok(a) => a,
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.refuse_big(id, job.len);
                return Ok(());
            }
            Err(e) => {
                return Err(transient(format!(
                    "{}: cannot publish: {}",
                    self.target.shown(),
                    one_line(&e)
                )));
            }
        };
        let tx = self.tx.clone();
        crate::runtime::spawn(async move {
            let r = ack.await.map(|_| ()).map_err(|e| one_line(&e));
            let _ = tx.send((id, r));
        })?;
        self.inflight += 1;
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<Ack>, TransportError> {
        self.drain(false)?;
        Ok(std::mem::take(&mut self.ready))
    }

    fn finish(&mut self, acked: &mut AckSink<'_>) -> Result<(), TransportError> {
        let r = self.drain(true);
        hand_over(&mut self.ready, acked)?;
        r
    }
}

/// `fspl pull` from `nats://`.
pub struct NatsSource {
    target: NatsTarget,
    consumer: PullConsumer,
    /// Messages delivered and not yet acknowledged, by listing key.
    held: HashMap<OsString, jetstream::Message>,
    /// Their stream sequences, by key (for messages).
    seqs: HashMap<OsString, u64>,
}

impl NatsSource {
    pub fn open(target: NatsTarget) -> Result<NatsSource, TransportError> {
        let spec = target.consumer_spec();
        let consumer = block_on(async {
            let (_client, _js, stream) = target.open().await?;
            fresh_pull_consumer(&stream, &spec).await
        })??;
        Ok(NatsSource {
            target,
            consumer,
            held: HashMap::new(),
            seqs: HashMap::new(),
        })
    }

    /// Fetch up to `max` messages that are there now (the server answers
    /// at once; a server that went away mid-answer is given the request
    /// timeout, and what arrived until then is kept).
    fn fetch(&self, max: usize, max_bytes: usize) -> Result<Vec<jetstream::Message>, NatsError> {
        let what = || format!("{}: fetching from consumer {CONSUMER}", self.target.shown());
        let deadline = tokio::time::Instant::now() + self.target.connect.request_timeout;
        block_on(async {
            let mut batch = tokio::time::timeout_at(
                deadline,
                self.consumer
                    .fetch()
                    .max_messages(max)
                    .max_bytes(max_bytes)
                    .messages(),
            )
            .await
            .map_err(|_| NatsError::JetStream {
                what: what(),
                reason: "no answer within the request timeout".into(),
                transient: true,
            })?
            .map_err(|e| NatsError::js(what(), &e))?;
            let mut out = Vec::new();
            while let Ok(Some(m)) = tokio::time::timeout_at(deadline, batch.next()).await {
                out.push(m.map_err(|e| NatsError::js(what(), &*e))?);
            }
            Ok(out)
        })?
    }
}

impl Source for NatsSource {
    fn list(&mut self) -> Result<Vec<RemoteJob>, TransportError> {
        let mut jobs = Vec::new();
        let mut bytes = 0usize;
        let mut seen: std::collections::HashSet<u64> = self.seqs.values().copied().collect();
        while jobs.len() < LIST_MAX_JOBS && bytes < LIST_MAX_BYTES {
            let want = (LIST_MAX_JOBS - jobs.len()).min(1000);
            let got = self.fetch(want, LIST_MAX_BYTES - bytes)?;
            let n = got.len();
            for m in got {
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                if !seen.insert(seq) {
                    continue;
                }
                // Its job name when the header holds one, so that a
                // message delivered twice lands on its own earlier copy.
                let name = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(NAME_HEADER))
                    .map(|v| v.as_str().to_string())
                    .filter(|n| !n.contains('/') && classify(OsStr::new(n)) == EntryKind::Job)
                    .unwrap_or_else(|| "message".into());
                let key = OsString::from(format!("{seq}/{name}"));
                bytes += m.payload.len();
                jobs.push(RemoteJob {
                    key: key.clone(),
                    len: Some(m.payload.len() as u64),
                });
                self.seqs.insert(key.clone(), seq);
                self.held.insert(key, m);
            }
            if n < want {
                break;
            }
        }
        Ok(jobs)
    }

    fn open(&mut self, job: &RemoteJob) -> Result<Option<Box<dyn JobSource + '_>>, TransportError> {
        Ok(self
            .held
            .get(&job.key)
            .map(|m| Box::new(&m.payload[..]) as Box<dyn JobSource + '_>))
    }

    fn remove(&mut self, jobs: &[RemoteJob]) -> Result<(), TransportError> {
        let msgs: Vec<jetstream::Message> = jobs
            .iter()
            .filter_map(|j| {
                self.seqs.remove(&j.key);
                self.held.remove(&j.key)
            })
            .collect();
        if msgs.is_empty() {
            return Ok(());
        }
        // Every acknowledgement confirmed by the server, all at once.
        let results = block_on(futures::future::join_all(
            msgs.iter().map(|m| async move { m.double_ack().await }),
        ))?;
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| one_line(&**e)))
            .collect();
        if let Some(first) = failed.first() {
            return Err(transient(format!(
                "{}: {} of {} acknowledgement(s) not confirmed (those jobs will be delivered again, and not run twice): {first}",
                self.target.shown(),
                failed.len(),
                msgs.len()
            )));
        }
        Ok(())
    }

    fn describe(&self, job: &RemoteJob) -> PathBuf {
        let key = job.key.to_string_lossy();
        let (seq, name) = key.split_once('/').unwrap_or(("?", &key));
        PathBuf::from(format!("{} message {seq} ({name})", self.target.shown()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_servers_queue_and_options() {
        let t = NatsTarget::parse(
            "nats://u:p@a:4222,b/q_1-x?creds=/c/x.creds&timeout=2.5&max_age=60&dup_window=5",
        )
        .unwrap();
        assert_eq!(t.connect.servers, ["nats://u:p@a:4222", "nats://u:p@b"]);
        assert_eq!(t.name, "q_1-x");
        assert_eq!(t.stream_name(), "fspl-q_1-x");
        assert_eq!(t.subject(), "fspl.jobs.q_1-x");
        assert_eq!(
            t.connect.creds.as_deref(),
            Some(std::path::Path::new("/c/x.creds"))
        );
        assert_eq!(t.connect.connect_timeout, Duration::from_millis(2500));
        assert_eq!(t.max_age, Duration::from_secs(60));
        assert_eq!(t.duplicate_window, Duration::from_secs(5));
        assert_eq!(t.shown(), "nats://u:p@a:4222,b/q_1-x");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("nats://h:4222", "queue name"),
            ("nats://h:4222/", "queue name"),
            ("nats://h/a.b", "A-Z"),
            ("nats://h/a*", "A-Z"),
            ("nats:///q", "no server"),
            ("nats://h,,i/q", "not a server"),
            ("nats://-h/q", "not a server"),
            ("nats://h/q?bogus=1", "unknown option"),
            ("nats://h/q?timeout=0", "never connect"),
            ("nats://h/q?timeout=x", "seconds"),
            ("nats://h/q?max_age=-1", "seconds"),
            ("nats://h/q?max_age=inf", "seconds"),
        ] {
            let e = NatsTarget::parse(url).unwrap_err();
            assert!(!e.is_transient(), "{url}");
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        let long = format!("nats://h/{}", "a".repeat(65));
        assert!(NatsTarget::parse(&long).is_err());
    }
}
