//! Durable delivery over JetStream (`--durable`), what remaphore cannot do.
//!
//! - One stream per message subject (`remaphore-<subject>-<suffix>`),
//!   created if missing: limits retention, `durable_max_age` (default 24h),
//!   file storage, a duplicate window keyed by the message hash
//!   (`Nats-Msg-Id`). A stream also stores what plain remaphore nodes
//!   publish on that subject.
//! - One durable pull consumer per waiting destination (named after it),
//!   delivering everything the stream holds, one message at a time.
//! - A replayed stream message is old by design, so the skew check is
//!   replaced by a maximum age (`durable_max_age`; a time in the future
//!   still has to be within `allow_skew`), and replays are refused by a
//!   record of the message hashes already handled (a file, fsynced before
//!   the acknowledgement).
//! - A message is acknowledged only after its script has finished (and
//!   its hash is recorded); while the script runs, progress is signalled
//!   so the server does not redeliver it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;
use tokio::time::Instant;

use super::config::Config;
use super::node::{
    Common, Observer, Reject, RemaphoreError, WaitArgs, check, lost, now_nanos, servers_text, until,
};

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The stream a message subject is kept in.
pub fn stream_name(subject: &str) -> String {
    format!("remaphore-{}", sanitize(subject))
}

/// The durable consumer of a destination.
pub fn consumer_name(destination: &str) -> String {
    sanitize(destination)
}

fn js_err(what: &str, e: impl std::error::Error + 'static) -> RemaphoreError {
    RemaphoreError::Runtime(format!("{what}: {}", crate::error::one_line(&e)))
}

/// The stream for `subject`, created if missing.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &Config,
    subject: &str,
) -> Result<stream::Stream, RemaphoreError> {
    let name = stream_name(subject);
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.to_string()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: cfg.durable_max_age,
        duplicate_window: cfg.durable_max_age.min(Duration::from_secs(120)),
        storage: stream::StorageType::File,
        description: Some("fspl nats --durable (remaphore messages)".into()),
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(&format!("JetStream stream {name}"), e))
}

/// The record of message hashes already handled by one consumer.
#[derive(Debug)]
pub struct Handled {
    path: PathBuf,
    file: std::fs::File,
    ids: HashMap<[u8; 32], i64>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> RemaphoreError {
    RemaphoreError::Runtime(format!("cannot {what} {}: {e}", path.display()))
}

impl Handled {
    /// Open (creating it and its directory), forgetting entries older than
    /// `keep` (they are refused by age anyway).
    pub fn open(path: &Path, keep: Duration) -> Result<Handled, RemaphoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        }
        let cutoff = now_nanos().saturating_sub(keep.as_nanos() as i64);
        let mut ids = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut f = line.split(' ');
                    let (Some(h), Some(t)) = (f.next(), f.next()) else {
                        continue;
                    };
                    let (Some(h), Ok(t)) = (unhex32(h), t.parse::<i64>()) else {
                        continue;
                    };
                    if t >= cutoff {
                        ids.insert(h, t);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", path, e)),
        }
        // Rewrite without the expired entries (atomically).
        let tmp = path.with_extension("handled.tmp");
        let mut text = String::new();
        for (h, t) in &ids {
            text.push_str(&format!("{} {t}\n", super::wire::hex(h)));
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .map_err(|e| io_err("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err("rename", &tmp, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| io_err("open", path, e))?;
        Ok(Handled {
            path: path.to_path_buf(),
            file,
            ids,
        })
    }

    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.ids.contains_key(hash)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Record a handled message, durably.
    pub fn record(&mut self, hash: [u8; 32], time: i64) -> Result<(), RemaphoreError> {
        self.file
            .write_all(format!("{} {time}\n", super::wire::hex(&hash)).as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("write", &self.path.clone(), e))?;
        self.ids.insert(hash, time);
        Ok(())
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

async fn ack(m: &jetstream::Message, kind: AckKind) {
    if let Err(e) = m.double_ack_with(kind).await {
        tracing::warn!("acknowledgement not confirmed (the message may come again): {e}");
    }
}

/// The durable receive loop.
pub(crate) async fn wait(
    common: &Common,
    args: &WaitArgs,
    client: &Client,
    deadline: Option<Instant>,
    obs: &mut dyn Observer,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<bool, RemaphoreError> {
    let mut stop = stop;
    let cfg = &common.config;
    let subject = cfg.message_subject(common.subject.as_deref());
    let js = jetstream::new(client.clone());
    let stream = ensure_stream(&js, cfg, &subject).await?;
    let cname = consumer_name(&cfg.destination);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &cname,
            consumer::pull::Config {
                durable_name: Some(cname.clone()),
                description: Some(format!("fspl nats wait --durable for {}", cfg.destination)),
                filter_subject: subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: cfg.durable_ack_wait,
                max_ack_pending: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| js_err(&format!("JetStream consumer {cname}"), e))?;
    let sname = super::durable::stream_name(&subject);
    let record = super::node::handled_default(common, &sname, &cname);
    let mut handled = Handled::open(&record, cfg.durable_max_age + cfg.allow_skew)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| js_err("JetStream consume", e))?;
    tracing::info!("ready: waiting on {subject} (durable consumer {cname} of {sname})");
    obs.ready(&subject);
    let watch = obs.fail_on_disconnect();
    let max_age = cfg.durable_max_age.as_nanos() as i64;
    let skew = cfg.allow_skew.as_nanos() as i64;
    let mut received = false;
    loop {
        let next = tokio::select! {
            n = until(deadline, messages.next()) => match n {
                Some(n) => n,
                None => break,
            },
            _ = &mut stop => break,
            _ = lost(client, watch) => {
                return Err(RemaphoreError::Disconnected(servers_text(cfg)));
            }
        };
        let jm = match next {
            None => {
                return Err(RemaphoreError::Runtime(
                    "the JetStream consumer ended".into(),
                ));
            }
            Some(Err(e)) => {
                // Server restarts and missed heartbeats pass: the client
                // reconnects and the consumer resumes.
                tracing::warn!("JetStream: {e}");
                // Not in a tight loop while the server is away.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(Ok(m)) => m,
        };
        let m = match check(cfg, &jm.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("dropped message: {e}");
                obs.dropped(&e);
                ack(&jm, AckKind::Term).await;
                continue;
            }
        };
        let now = now_nanos();
        if now - m.time_nanos > max_age || m.time_nanos - now > skew {
            tracing::warn!("dropped message: {} (durable_max_age)", Reject::Time);
            obs.dropped(&Reject::Time);
            ack(&jm, AckKind::Term).await;
            continue;
        }
        if handled.contains(&m.hash) {
            tracing::info!("message already handled; acknowledging it again");
            ack(&jm, AckKind::Ack).await;
            continue;
        }
        if !args.matches(cfg, &m) {
            tracing::debug!("message does not match the filters");
            ack(&jm, AckKind::Ack).await;
            continue;
        }
        received = true;
        // Progress while the script runs, so the server waits for it.
        let progress = {
            let jm = jm.clone();
            let every = cfg.durable_ack_wait / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = jm.ack_with(AckKind::Progress).await;
                }
            })
        };
        let outcome = super::node::handle(client, cfg, args, &m, deadline, obs).await;
        progress.abort();
        if let Err(e) = outcome {
            // Not handled: delivered again, to the next wait.
            ack(&jm, AckKind::Nak(None)).await;
            return Err(e);
        }
        handled.record(m.hash, m.time_nanos)?;
        ack(&jm, AckKind::Ack).await;
        if args.once {
            break;
        }
    }
    Ok(received)
}

/// One line per stream and consumer: what `fspl nats streams` prints.
pub async fn streams(client: &Client) -> Result<Vec<String>, RemaphoreError> {
    let js = jetstream::new(client.clone());
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(n) = names.next().await {
        let n = n.map_err(|e| js_err("JetStream stream list", e))?;
        if !n.starts_with("remaphore-") {
            continue;
        }
        let mut s = js
            .get_stream(&n)
            .await
            .map_err(|e| js_err(&format!("JetStream stream {n}"), e))?;
        let info = s
            .info()
            .await
            .map_err(|e| js_err(&format!("JetStream stream {n}"), e))?
            .clone();
        out.push(format!(
            "stream {n} subjects {} messages {} bytes {} max_age {}",
            info.config.subjects.join(","),
            info.state.messages,
            info.state.bytes,
            super::duration::format(info.config.max_age),
        ));
        let mut consumers = s.consumers();
        while let Some(c) = consumers.next().await {
            let c = c.map_err(|e| js_err(&format!("JetStream consumers of {n}"), e))?;
            out.push(format!(
                "  consumer {} pending {} unacknowledged {} redelivered {}",
                c.name, c.num_pending, c.num_ack_pending, c.num_redelivered
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_record_survives_reopening_and_forgets_what_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.handled");
        let now = now_nanos();
        {
            let mut h = Handled::open(&p, Duration::from_secs(60)).unwrap();
            assert!(h.is_empty());
            h.record([1; 32], now).unwrap();
            h.record([2; 32], now - 3_600_000_000_000).unwrap();
            assert!(h.contains(&[1; 32]));
        }
        let h = Handled::open(&p, Duration::from_secs(60)).unwrap();
        assert!(h.contains(&[1; 32]));
        assert!(!h.contains(&[2; 32]), "older than kept: forgotten");
        assert_eq!(h.len(), 1);
        // Garbage lines are skipped, never a panic.
        std::fs::write(&p, "zz 1\n\nabc\n").unwrap();
        assert!(
            Handled::open(&p, Duration::from_secs(60))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn stream_and_consumer_names_are_valid_jetstream_names() {
        assert_eq!(stream_name("remaphore.all"), "remaphore-remaphore_all");
        assert_eq!(consumer_name("com.test.*"), "com_test__");
        assert_eq!(consumer_name("a b>c"), "a_b_c");
    }
}
