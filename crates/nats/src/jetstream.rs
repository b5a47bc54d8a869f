//! JetStream helpers shared by the transport and `fspl nats --durable`: a
//! stream created when missing with explicit retention, maximum age and
//! duplicate window (an existing stream is used as it is, but one whose
//! retention differs is refused rather than silently misused), and a
//! durable pull consumer.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, Stream};
pub use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::error::NatsError;

/// A JetStream context whose API calls and publish acknowledgements wait
/// at most `timeout`, with up to `max_inflight` publishes awaiting their
/// acknowledgement (more wait for one to arrive). (It starts a task on
/// the NATS runtime, which is started if need be.)
pub fn context(
    client: Client,
    timeout: Duration,
    max_inflight: usize,
) -> Result<Context, NatsError> {
    let _inside = crate::runtime::handle()?.enter();
    Ok(jetstream::ContextBuilder::new()
        .timeout(timeout)
        .max_ack_inflight(max_inflight)
        .backpressure_on_inflight(true)
        .build(client))
}

/// What a stream must be.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: RetentionPolicy,
    /// Messages older than this are dropped (zero: never).
    pub max_age: Duration,
    /// Publishes with the same `Nats-Msg-Id` within this window are stored
    /// once.
    pub duplicate_window: Duration,
    pub storage: StorageType,
}

impl StreamSpec {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: self.retention,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            storage: self.storage,
            num_replicas: 1,
            ..Default::default()
        }
    }
}

fn retention_name(r: RetentionPolicy) -> &'static str {
    match r {
        RetentionPolicy::Limits => "limits",
        RetentionPolicy::Interest => "interest",
        RetentionPolicy::WorkQueue => "workqueue",
    }
}

/// The stream `spec` names, created as `spec` says when it does not
/// exist. An existing stream with another retention policy, or that does
/// not take `spec`'s subjects, is an error.
pub async fn ensure_stream(js: &Context, spec: &StreamSpec) -> Result<Stream, NatsError> {
    let what = || format!("JetStream stream {}", spec.name);
    let mut s = js
        .get_or_create_stream(spec.config())
        .await
        .map_err(|e| NatsError::js(what(), &e))?;
    let info = s.info().await.map_err(|e| NatsError::js(what(), &e))?;
    let have = &info.config;
    if have.retention != spec.retention {
        return Err(NatsError::JetStream {
            what: what(),
            reason: format!(
                "exists with retention {}, not {} as fspl needs; delete it or use another name",
                retention_name(have.retention),
                retention_name(spec.retention)
            ),
            transient: false,
        });
    }
    for want in &spec.subjects {
        if !have.subjects.iter().any(|h| h == want) {
            return Err(NatsError::JetStream {
                what: what(),
                reason: format!(
                    "exists without subject {want:?} (it has {:?}); delete it or use another name",
                    have.subjects
                ),
                transient: false,
            });
        }
    }
    Ok(s)
}

/// What a durable pull consumer must be.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSpec {
    pub durable: String,
    /// Only messages on this subject (empty: all of the stream's).
    pub filter_subject: String,
    /// A message not acknowledged within this is delivered again.
    pub ack_wait: Duration,
    /// At most this many delivered messages await their acknowledgement.
    pub max_ack_pending: i64,
}

impl ConsumerSpec {
    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            filter_subject: self.filter_subject.clone(),
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

/// The durable pull consumer `spec` names on `stream`, created when
/// missing.
pub async fn durable_pull_consumer(
    stream: &Stream,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, NatsError> {
    stream
        .get_or_create_consumer(&spec.durable, spec.config())
        .await
        .map_err(|e| NatsError::js(format!("JetStream consumer {}", spec.durable), &e))
}

/// As [`durable_pull_consumer`], but a consumer that has messages out for
/// acknowledgement (its last reader died holding them) is created anew,
/// so that they are delivered now rather than after `ack_wait`. Only for
/// work-queue streams, where acknowledged messages are gone and a new
/// consumer that delivers "all" starts at the first unacknowledged one.
pub async fn fresh_pull_consumer(
    stream: &Stream,
    spec: &ConsumerSpec,
) -> Result<PullConsumer, NatsError> {
    let what = || format!("JetStream consumer {}", spec.durable);
    match stream.consumer_info(&spec.durable).await {
        Ok(info) if info.num_ack_pending > 0 => {
            tracing::debug!(
                consumer = %spec.durable,
                pending = info.num_ack_pending,
                "re-creating the consumer: messages delivered to a reader that went away"
            );
            stream
                .delete_consumer(&spec.durable)
                .await
                .map_err(|e| NatsError::js(what(), &e))?;
        }
        _ => {}
    }
    durable_pull_consumer(stream, spec).await
}
