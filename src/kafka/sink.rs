//! The producer side: status, fulfillment and dead-letter records.
//!
//! Sends never wait for the broker: records go into librdkafka's queue and
//! librdkafka's thread reports deliveries, which feed the [`OffsetTracker`].
//!
//! A record can carry follow-ups, sent only once it is acknowledged: the
//! fulfillments of an order go out after its status. The status (with its
//! changelog header) is the commit point of a decision, so a crash can never
//! leave a fulfillment for an order whose decision was lost and then made
//! differently after the restart.
//!
//! A record whose delivery failed after librdkafka's own retries is sent
//! again with exponential backoff and jitter; its source offset stays
//! uncommitted until it is acknowledged, so nothing is dropped.
//!
//! With Kafka transactions (see `transaction`) every send goes into the
//! open transaction, behind a [`Gate`] that a commit closes while it runs.
//! A failed delivery is then not sent again: it dooms the transaction,
//! which is aborted at its commit, and the processor stops.

use super::tracker::{token, OffsetTracker};
use crate::order::decode::DeadLetter;
use crate::telemetry;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rand::Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// First wait before re-sending a failed record; doubles up to the max.
const REDELIVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REDELIVERY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Wait when librdkafka's local queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// An owned record to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    /// `None`: the partitioner picks one from the key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// What a delivery report needs: the source record's position, and the
/// records to send once this one is acknowledged.
pub struct Delivery {
    token: usize,
    then: Vec<Outgoing>,
}

type Resend = (Outgoing, Box<Delivery>);

/// Where the transaction of a transactional sink stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// Not begun yet (start-up), or between a commit and the next begin.
    Idle,
    /// Sends go into it.
    Open,
    /// Committed at shutdown, or aborted after a failure: sends are
    /// dropped (they would belong to no transaction).
    Finished,
}

/// The open transaction of a transactional sink. Sends hold it shared
/// while they enqueue; a commit holds it exclusively, so no record lands
/// between the commit and the next begin.
#[derive(Debug)]
pub struct Gate {
    state: RwLock<TxnState>,
    /// A record of the open transaction could not be sent or delivered:
    /// the transaction can only be aborted.
    doomed: AtomicBool,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: RwLock::new(TxnState::Idle),
            doomed: AtomicBool::new(false),
        }
    }

    /// Shared access while the transaction is open; `None` otherwise.
    fn open(&self) -> Option<RwLockReadGuard<'_, TxnState>> {
        let state = self.state.read();
        (*state == TxnState::Open).then_some(state)
    }

    /// Exclusive access, for committing, aborting and beginning.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, TxnState> {
        self.state.write()
    }

    pub fn state(&self) -> TxnState {
        *self.state.read()
    }

    /// Whether a record of the open transaction was lost.
    pub fn doomed(&self) -> bool {
        self.doomed.load(Ordering::Acquire)
    }

    fn doom(&self) {
        self.doomed.store(true, Ordering::Release);
    }

    /// A new transaction starts with nothing lost.
    pub fn reset_doom(&self) {
        self.doomed.store(false, Ordering::Release);
    }
}

pub struct SinkContext {
    tracker: Arc<OffsetTracker>,
    failed: Sender<Resend>,
    follow_ups: Sender<Resend>,
    /// Transactional mode: failed deliveries doom the transaction instead
    /// of being sent again.
    gate: Option<Arc<Gate>>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(error_kind(&error), reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut delivery: Box<Delivery>) {
        match result {
            Ok(_) => {
                if let Some((partition, offset)) = token::unpack(delivery.token) {
                    self.tracker.delivered(partition, offset);
                }
                for next in delivery.then.drain(..) {
                    let single = Box::new(Delivery {
                        token: delivery.token,
                        then: Vec::new(),
                    });
                    // The follow-up thread lives as long as the producer.
                    let _ = self.follow_ups.send((next, single));
                }
            }
            Err((error, message)) => {
                telemetry::kafka_error(error_kind(error), &error.to_string());
                if let Some(gate) = &self.gate {
                    // librdkafka will refuse to commit this transaction;
                    // re-sending into it cannot help.
                    gate.doom();
                    return;
                }
                let again = Outgoing {
                    topic: message.topic().to_string(),
                    // A status keeps the partition it was sent to; for the
                    // others the key gives the same partition again.
                    partition: (message.partition() >= 0).then_some(message.partition()),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: message.headers().map(|h| h.detach()),
                };
                let _ = self.failed.send((again, delivery));
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
    /// Dead-letter values larger than this are left out (see `send_dead_letter`).
    max_dlq_payload_bytes: usize,
    /// Transactional mode only; `None` keeps sends free of any lock.
    gate: Option<Arc<Gate>>,
}

/// One header of a dead-letter record.
pub type HeaderPair<'a> = (&'a str, &'a [u8]);

impl Sink {
    /// Creates the producer from `config` (idempotent, so librdkafka's
    /// retries never duplicate or reorder). With a `transactional.id` in
    /// `config`, `transactional` must be true: sends then wait for an open
    /// transaction (see `transaction`).
    pub fn new(
        mut config: ClientConfig,
        tracker: Arc<OffsetTracker>,
        max_dlq_payload_bytes: usize,
        transactional: bool,
    ) -> Result<Sink, KafkaError> {
        config.set("enable.idempotence", "true");
        let gate = transactional.then(|| Arc::new(Gate::new()));
        let (failed_tx, failed_rx) = crossbeam_channel::unbounded();
        let (follow_tx, follow_rx) = crossbeam_channel::unbounded();
        let context = SinkContext {
            tracker,
            failed: failed_tx,
            follow_ups: follow_tx,
            gate: gate.clone(),
        };
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(context)?;
        let producer = Arc::new(producer);
        // The threads hold weak references: the channels' senders live in the
        // producer's context, so dropping the producer ends the threads.
        for (name, queue, backoff) in [
            ("redelivery", failed_rx, true),
            ("follow-ups", follow_rx, false),
        ] {
            let weak = Arc::downgrade(&producer);
            let gate = gate.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || resend(&weak, gate.as_deref(), &queue, backoff))
                .expect("spawning a thread");
        }
        Ok(Sink {
            producer,
            max_dlq_payload_bytes,
            gate,
        })
    }

    /// The producer and its gate, in transactional mode.
    pub fn transactional(&self) -> Option<(&ThreadedProducer<SinkContext>, &Gate)> {
        self.gate.as_deref().map(|gate| (&*self.producer, gate))
    }

    /// Enqueues one record; waits only while librdkafka's queue is full.
    pub fn send(&self, record: Outgoing, token: usize) {
        self.send_then(record, token, Vec::new());
    }

    /// Enqueues `record`; `then` is sent once it is acknowledged.
    pub fn send_then(&self, record: Outgoing, token: usize, then: Vec<Outgoing>) {
        let delivery = Box::new(Delivery { token, then });
        send_until_queued(&self.producer, self.gate.as_deref(), &record, delivery);
    }

    /// Sends an input record unchanged to the dead-letter topic, with the
    /// contract's headers: `error`, `error_detail`, `source_topic`,
    /// `source_partition`, `source_offset`. A value too large for the broker
    /// to take (over `kafka.max_dlq_payload_bytes`) is left out and its size
    /// given in the header `payload_omitted_bytes`; the source headers still
    /// point at the original, so nothing vanishes and the shard never stalls.
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
        let mut headers = vec![
            ("error", dead.reason.as_str().as_bytes()),
            ("error_detail", dead.detail.as_bytes()),
            ("source_topic", source_topic.as_bytes()),
            ("source_partition", partition.as_bytes()),
            ("source_offset", offset.as_bytes()),
        ];
        let size = value.map_or(0, <[u8]>::len);
        let omitted = size.to_string();
        let payload = if size > self.max_dlq_payload_bytes {
            headers.push(("payload_omitted_bytes", omitted.as_bytes()));
            None
        } else {
            value.map(<[u8]>::to_vec)
        };
        let record = Outgoing {
            topic: dlq_topic.to_string(),
            partition: None,
            key: key.map(<[u8]>::to_vec),
            payload,
            headers: Some(owned_headers(&headers)),
        };
        self.send(record, token);
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

pub fn owned_headers(headers: &[HeaderPair<'_>]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        },
    )
}

fn send_until_queued(
    producer: &ThreadedProducer<SinkContext>,
    gate: Option<&Gate>,
    record: &Outgoing,
    delivery: Box<Delivery>,
) {
    // Held until the record is queued, so a commit cannot run in between.
    let _open = match gate {
        None => None,
        Some(gate) => match gate.open() {
            Some(open) => Some(open),
            None => {
                // The transaction was aborted (the processor is stopping)
                // or committed for the last time: this record belongs to
                // no transaction, and its source record stays uncommitted.
                tracing::debug!(topic = %record.topic, "not sent: no open transaction");
                return;
            }
        },
    };
    let mut base = BaseRecord::with_opaque_to(&record.topic, delivery);
    if let Some(partition) = record.partition {
        base = base.partition(partition);
    }
    if let Some(key) = &record.key {
        base = base.key(key.as_slice());
    }
    if let Some(payload) = &record.payload {
        base = base.payload(payload.as_slice());
    }
    if let Some(headers) = &record.headers {
        base = base.headers(headers.clone());
    }
    loop {
        match producer.send(base) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                base = returned;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, returned)) => {
                // Not retryable locally (e.g. too large for the broker): count
                // it and keep trying with the longest backoff, never dropping.
                telemetry::kafka_error(error_kind(&error), &error.to_string());
                if let Some(gate) = gate {
                    // In a transaction: it will be aborted, and the
                    // processor stops (see `transaction`).
                    gate.doom();
                    return;
                }
                base = returned;
                std::thread::sleep(REDELIVERY_BACKOFF_MAX);
            }
        }
    }
}

/// Sends records from `queue` until the producer is gone; with `backoff`,
/// waits exponentially longer (with jitter) while failures keep coming.
fn resend(
    producer: &Weak<ThreadedProducer<SinkContext>>,
    gate: Option<&Gate>,
    queue: &Receiver<Resend>,
    backoff: bool,
) {
    let mut wait = REDELIVERY_BACKOFF_MIN;
    while let Ok((record, delivery)) = queue.recv() {
        if backoff {
            let jitter = rand::thread_rng().gen_range(0..=wait.as_millis() as u64 / 2);
            std::thread::sleep(wait + Duration::from_millis(jitter));
            wait = if queue.is_empty() {
                REDELIVERY_BACKOFF_MIN
            } else {
                (wait * 2).min(REDELIVERY_BACKOFF_MAX)
            };
        }
        let Some(producer) = producer.upgrade() else {
            return;
        };
        send_until_queued(&producer, gate, &record, delivery);
    }
}
