//! The producer side: status, fulfillment and dead-letter records.
//!
//! Sends never wait for the broker: records go into librdkafka's queue and a
//! background thread reports deliveries, which feed the [`OffsetTracker`].
//! A record whose delivery failed after librdkafka's own retries is sent
//! again by the redelivery thread with exponential backoff and jitter;
//! its source offset stays uncommitted until it is acknowledged.

use super::tracker::{token, OffsetTracker};
use crate::order::decode::DeadLetter;
use crate::telemetry;
use crossbeam_channel::{Receiver, Sender};
use rand::Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// First wait before re-sending a failed record; doubles up to the max.
const REDELIVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REDELIVERY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Wait when librdkafka's local queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// A record that failed delivery, owned so it can be sent again.
struct Failed {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    token: usize,
}

pub struct SinkContext {
    tracker: Arc<OffsetTracker>,
    failed: Sender<Failed>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(error_kind(&error), reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, token: usize) {
        match result {
            Ok(_) => {
                if let Some((partition, offset)) = token::unpack(token) {
                    self.tracker.delivered(partition, offset);
                }
            }
            Err((error, message)) => {
                telemetry::kafka_error(error_kind(error), &error.to_string());
                let failed = Failed {
                    topic: message.topic().to_string(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: message.headers().map(|h| h.detach()),
                    token,
                };
                // The redelivery thread lives as long as the sink.
                let _ = self.failed.send(failed);
            }
        }
    }
}

/// A closed set of error kinds for the `kind` label.
pub fn error_kind(error: &KafkaError) -> &'static str {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => "message_timed_out",
        Some(RDKafkaErrorCode::QueueFull) => "queue_full",
        Some(RDKafkaErrorCode::AllBrokersDown) => "all_brokers_down",
        Some(RDKafkaErrorCode::BrokerTransportFailure) => "transport",
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            "unknown_topic"
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => "message_too_large",
        Some(_) => "broker",
        None => "client",
    }
}

pub struct Sink {
    producer: Arc<ThreadedProducer<SinkContext>>,
}

/// One header of a dead-letter record.
pub type HeaderPair<'a> = (&'a str, &'a [u8]);

impl Sink {
    /// Creates the producer from `config` (idempotent, so librdkafka's
    /// retries never duplicate or reorder).
    pub fn new(mut config: ClientConfig, tracker: Arc<OffsetTracker>) -> Result<Sink, KafkaError> {
        config.set("enable.idempotence", "true");
        let (failed_tx, failed_rx) = crossbeam_channel::unbounded();
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(SinkContext {
            tracker,
            failed: failed_tx,
        })?;
        let producer = Arc::new(producer);
        // The thread holds a weak reference: the channel's sender lives in the
        // producer's context, so dropping the producer ends the thread.
        let weak = Arc::downgrade(&producer);
        std::thread::Builder::new()
            .name("redelivery".into())
            .spawn(move || redeliver(&weak, &failed_rx))
            .expect("spawning a thread");
        Ok(Sink { producer })
    }

    /// Enqueues one record; waits only while librdkafka's queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[HeaderPair<'_>],
        token: usize,
    ) {
        let owned_headers = (!headers.is_empty()).then(|| {
            headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(*v),
                })
            })
        });
        let mut record = BaseRecord::with_opaque_to(topic, token);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(h) = owned_headers {
            record = record.headers(h);
        }
        send_until_queued(&self.producer, record);
    }

    /// Sends an input record unchanged to the dead-letter topic, with the
    /// contract's headers: `error`, `error_detail`, `source_topic`,
    /// `source_partition`, `source_offset`.
    pub fn send_dead_letter(
        &self,
        dlq_topic: &str,
        (source_topic, partition, offset): (&str, i32, i64),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        dead: &DeadLetter,
        token: usize,
    ) {
        let partition = partition.to_string();
        let offset = offset.to_string();
        let headers = [
            ("error", dead.reason.as_str().as_bytes()),
            ("error_detail", dead.detail.as_bytes()),
            ("source_topic", source_topic.as_bytes()),
            ("source_partition", partition.as_bytes()),
            ("source_offset", offset.as_bytes()),
        ];
        self.send(dlq_topic, key, value, &headers, token);
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

fn send_until_queued<K, P>(
    producer: &ThreadedProducer<SinkContext>,
    mut record: BaseRecord<'_, K, P, usize>,
) where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, returned)) => {
                // Not retryable locally (e.g. too large): count it and let the
                // redelivery path keep trying with backoff, never dropping it.
                telemetry::kafka_error(error_kind(&error), &error.to_string());
                record = returned;
                std::thread::sleep(REDELIVERY_BACKOFF_MAX);
            }
        }
    }
}

fn redeliver(producer: &Weak<ThreadedProducer<SinkContext>>, failed: &Receiver<Failed>) {
    let mut backoff = REDELIVERY_BACKOFF_MIN;
    while let Ok(record) = failed.recv() {
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        std::thread::sleep(backoff + Duration::from_millis(jitter));
        backoff = (backoff * 2).min(REDELIVERY_BACKOFF_MAX);
        let mut base = BaseRecord::with_opaque_to(&record.topic, record.token);
        if let Some(key) = &record.key {
            base = base.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            base = base.payload(payload.as_slice());
        }
        if let Some(headers) = record.headers.clone() {
            base = base.headers(headers);
        }
        let Some(producer) = producer.upgrade() else {
            return;
        };
        send_until_queued(&producer, base);
        if failed.is_empty() {
            backoff = REDELIVERY_BACKOFF_MIN;
        }
    }
}
