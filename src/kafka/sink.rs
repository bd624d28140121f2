//! The producer side: status, fulfillment and dead-letter records.
//!
//! Sends never wait for the broker: records go into librdkafka's queue and
//! librdkafka's thread reports deliveries, which feed the [`OffsetTracker`].
//!
//! A record can carry follow-ups, sent only once it is acknowledged: the
//! fulfillments of an order go out after its status. The status (with its
//! changelog header) is the commit point of a decision, so a crash can never
//! leave a fulfillment for an order whose decision was lost and then made
//! differently after the restart. Likewise the outputs of an order's later
//! record (its cancellation) can be held until the earlier record's are
//! acknowledged (see `tracker`), so an order's statuses land in order even
//! when one of them had to be sent again.
//!
//! Every record is sized before it is sent, key and headers included,
//! against the producer's `message.max.bytes` ([`OutputLimits`]): a dead
//! letter that would not fit leaves out its value, then cuts its key, and
//! says so in its headers; a status or fulfillment that would not fit
//! cannot happen with the limits checked at start (see
//! `kafka::check_output_limits`), and stops the processor if it does. A
//! send therefore never waits on an error that cannot go away.
//!
//! Records whose delivery failed after librdkafka's own retries (an outage
//! longer than `message.timeout.ms`) are sent again by the redelivery
//! thread: all that failed so far in one go, at the speed librdkafka's
//! queue takes them, after one backoff per round (growing while nothing
//! gets through). Their source offsets stay uncommitted until they are
//! acknowledged, so nothing is dropped; the consumer pauses while too many
//! outputs are in flight, so memory stays bounded. A delivery the broker
//! refuses for good (too large for the topic, not authorized) is not sent
//! again: the processor stops and says why.
//!
//! With Kafka transactions (see `transaction`) every send goes into the
//! open transaction, behind a [`Gate`] that a commit closes while it runs.
//! A failed delivery is then not sent again: it dooms the transaction,
//! which is aborted at its commit, and the processor stops.
//!
//! With the local order stores on, each delivered copy to the state topic
//! goes to its partition's store ([`ChangelogFeed`]) once it is committed:
//! at its delivery without transactions, with the commit of its
//! transaction with them (dropped if it aborts), so a store never holds a
//! record the changelog does not.

use super::error_kind;
use super::tracker::{token, OffsetTracker};
use super::Fatal;
use crate::cold::{Committed, Stores};
use crate::order::decode::DeadLetter;
use crate::shutdown::Shutdown;
use crate::telemetry;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rand::Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// First wait before a round of re-sending failed records; doubles up to
/// the max while rounds keep failing with nothing delivered in between.
const REDELIVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REDELIVERY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Wait when librdkafka's local queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);
/// librdkafka's `message.max.bytes` when the config does not set it.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// What librdkafka adds to key, value and headers when it checks a record
/// against `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`: the
/// varints of a v2 record, at their largest).
const RECORD_OVERHEAD_BYTES: usize = 36;
/// What one header adds besides its name and value: two varint lengths,
/// at their largest.
const HEADER_OVERHEAD_BYTES: usize = 20;

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

impl Outgoing {
    /// The size librdkafka checks against `message.max.bytes` (an upper
    /// bound of it).
    pub fn wire_bytes(&self) -> usize {
        let headers: usize = self.headers.as_ref().map_or(0, |headers| {
            headers
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + HEADER_OVERHEAD_BYTES)
                .sum()
        });
        RECORD_OVERHEAD_BYTES
            + self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + headers
    }
}

/// What a delivery report needs: the source record's position, and the
/// records to send once this one is acknowledged.
pub struct Delivery {
    token: usize,
    then: Vec<Outgoing>,
}

/// A record on its way, with what its delivery report needs.
pub struct Queued {
    record: Outgoing,
    delivery: Box<Delivery>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("topic", &self.record.topic)
            .field("token", &self.delivery.token)
            .finish()
    }
}

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
    /// Why, the first failure: the error that stops the processor says
    /// which topic (see [`undeliverable`]).
    doom_reason: parking_lot::Mutex<Option<String>>,
    /// Transactions committed so far.
    committed: AtomicU64,
    /// A dead letter of an `inventory` record is in the open transaction.
    inventory_dead_letters: AtomicBool,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: RwLock::new(TxnState::Idle),
            doomed: AtomicBool::new(false),
            doom_reason: parking_lot::Mutex::new(None),
            committed: AtomicU64::new(0),
            inventory_dead_letters: AtomicBool::new(false),
        }
    }

    /// Whether a dead letter of an `inventory` record is in the open
    /// transaction (an abort loses it; see `transaction`).
    pub fn held_inventory_dead_letters(&self) -> bool {
        self.inventory_dead_letters.load(Ordering::Acquire)
    }

    /// Counts a committed transaction.
    pub fn committed(&self) {
        self.committed.fetch_add(1, Ordering::AcqRel);
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

    fn doom(&self, reason: String) {
        self.doom_reason.lock().get_or_insert(reason);
        self.doomed.store(true, Ordering::Release);
    }

    /// Why the open transaction is doomed (the first failure).
    pub fn doom_reason(&self) -> String {
        self.doom_reason
            .lock()
            .clone()
            .unwrap_or_else(|| "an output could not be delivered".into())
    }

    /// A new transaction starts with nothing lost and nothing in it.
    pub fn reset_doom(&self) {
        self.doom_reason.lock().take();
        self.doomed.store(false, Ordering::Release);
        self.inventory_dead_letters.store(false, Ordering::Release);
    }
}

/// What the delivery reports and the sending threads share.
struct Shared {
    /// Offsets of `orders` records, and of `inventory` records whose dead
    /// letters are tracked (see `inventory_feed`).
    orders: Arc<OffsetTracker>,
    inventory: Arc<OffsetTracker>,
    /// Transactional mode: failed deliveries doom the transaction instead
    /// of being sent again.
    gate: Option<Arc<Gate>>,
    shutdown: Shutdown,
    /// How long sends keep waiting for room in librdkafka's queue once
    /// shutdown started; past it they give up (their records stay
    /// uncommitted, as after a crash), so SIGTERM never hangs.
    shutdown_timeout: Duration,
    /// When this sink first saw shutdown while waiting for room.
    shutdown_seen: OnceLock<Instant>,
    /// Set by every successful delivery: the redelivery backoff starts
    /// over once something gets through.
    delivered: AtomicBool,
    feed: Option<ChangelogFeed>,
    /// Copies delivered in the open transaction, in delivery order: the
    /// feed's once it commits.
    uncommitted: parking_lot::Mutex<Vec<(i32, Committed)>>,
}

/// Where delivered copies of order records go once committed: the local
/// stores of their partitions (see `cold`).
#[derive(Clone)]
pub struct ChangelogFeed {
    /// The state topic (`topics.state`).
    pub topic: String,
    pub stores: Arc<Stores>,
}

impl Shared {
    /// A delivered record: to the feed if it is a copy for the stores.
    fn feed(&self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(feed) = &self.feed else {
            return;
        };
        if message.topic() != feed.topic {
            return;
        }
        let copy = Committed {
            offset: message.offset(),
            // Made moments ago, by this process: its retention counts from
            // now (the delivery's time is the broker's, or the mock's 1234).
            timestamp_ms: None,
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        };
        if self.gate.is_some() {
            self.uncommitted.lock().push((message.partition(), copy));
        } else {
            feed.stores.committed(message.partition(), vec![copy]);
        }
    }

    /// The open transaction committed: its copies go to the stores, by
    /// partition, in order.
    fn release_committed(&self) {
        let Some(feed) = &self.feed else {
            return;
        };
        let copies = std::mem::take(&mut *self.uncommitted.lock());
        let mut by_partition: std::collections::BTreeMap<i32, Vec<Committed>> =
            std::collections::BTreeMap::new();
        for (partition, copy) in copies {
            by_partition.entry(partition).or_default().push(copy);
        }
        for (partition, copies) in by_partition {
            feed.stores.committed(partition, copies);
        }
    }
}

impl Shared {
    fn tracker(&self, source: token::Source) -> &OffsetTracker {
        match source {
            token::Source::Orders => &self.orders,
            token::Source::Inventory => &self.inventory,
        }
    }

    /// Whether a send waiting for room in the queue should give up.
    fn give_up(&self) -> bool {
        if !self.shutdown.is_triggered() {
            return false;
        }
        let since = *self.shutdown_seen.get_or_init(Instant::now);
        since.elapsed() >= self.shutdown_timeout
    }
}

pub struct SinkContext {
    shared: Arc<Shared>,
    failed: Sender<Queued>,
    follow_ups: Sender<Queued>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(error_kind(&error), reason);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut delivery: Box<Delivery>) {
        match result {
            Ok(message) => {
                self.shared.delivered.store(true, Ordering::Relaxed);
                self.shared.feed(message);
                if let Some((source, partition, offset)) = token::unpack(delivery.token) {
                    let tracker = self.shared.tracker(source);
                    // Outputs held until this record's were all delivered
                    // (a cancellation after its acceptance) go out now.
                    for released in tracker.delivered(partition, offset) {
                        let _ = self.follow_ups.send(released);
                    }
                }
                for next in delivery.then.drain(..) {
                    let single = Box::new(Delivery {
                        token: delivery.token,
                        then: Vec::new(),
                    });
                    // The follow-up thread lives as long as the producer.
                    let _ = self.follow_ups.send(Queued {
                        record: next,
                        delivery: single,
                    });
                }
            }
            Err((error, message)) => {
                telemetry::kafka_error(error_kind(error), &error.to_string());
                if let Some(gate) = &self.shared.gate {
                    // librdkafka will refuse to commit this transaction;
                    // re-sending into it cannot help.
                    gate.doom(undeliverable(message.topic(), error));
                    return;
                }
                if refused_for_good(error) {
                    // Sending it again would fail again, forever; its
                    // source record stays uncommitted.
                    self.shared.shutdown.fail(Fatal::Undeliverable {
                        topic: message.topic().to_string(),
                        error: error.to_string(),
                    });
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
                let _ = self.failed.send(Queued {
                    record: again,
                    delivery,
                });
            }
        }
    }
}

/// Why a record for `topic` could not be delivered, for the error that
/// stops the processor. (A write refused for want of an ACL shows here as
/// purged: librdkafka purges the records of a transaction that failed to
/// add the topic. The ACLs are checked at start, see `preflight`.)
fn undeliverable(topic: &str, error: &KafkaError) -> String {
    format!("an output to topic {topic} could not be delivered ({error})")
}

/// Whether the broker refused a record in a way that sending it again
/// cannot change (a retriable error, or a timeout, can).
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// The limits every output is sized against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The producer's `message.max.bytes`: no record may be larger, key
    /// and headers included.
    pub message_max_bytes: usize,
    /// Dead-letter values larger than this are left out
    /// (`kafka.max_dlq_payload_bytes`).
    pub max_dlq_payload_bytes: usize,
}

impl OutputLimits {
    /// The limits of a producer created from `config`.
    pub fn of(config: &ClientConfig, max_dlq_payload_bytes: usize) -> Self {
        OutputLimits {
            message_max_bytes: config
                .get("message.max.bytes")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES),
            max_dlq_payload_bytes,
        }
    }
}

/// What a sink needs besides its producer config.
pub struct SinkSetup {
    pub orders: Arc<OffsetTracker>,
    pub inventory: Arc<OffsetTracker>,
    pub limits: OutputLimits,
    /// With a `transactional.id` in the producer config, this must be
    /// true: sends then wait for an open transaction (see `transaction`).
    pub transactional: bool,
    pub shutdown: Shutdown,
    /// See `Shared::shutdown_timeout` (`engine.shutdown_timeout_ms`).
    pub shutdown_timeout: Duration,
    /// Where committed copies of order records go (`None`: no stores).
    pub changelog: Option<ChangelogFeed>,
}

pub struct Sink {
    producer: Arc<ThreadedProducer<SinkContext>>,
    shared: Arc<Shared>,
    limits: OutputLimits,
}

/// One header of a dead-letter record.
pub type HeaderPair<'a> = (&'a str, &'a [u8]);

impl Sink {
    /// Creates the producer from `config` (idempotent, so librdkafka's
    /// retries never duplicate or reorder).
    pub fn new(mut config: ClientConfig, setup: SinkSetup) -> Result<Sink, KafkaError> {
        config.set("enable.idempotence", "true");
        let gate = setup.transactional.then(|| Arc::new(Gate::new()));
        // Both hold at most the outputs in flight, which the consumer keeps
        // bounded (it pauses past `source::max_outputs_in_flight`).
        let (failed_tx, failed_rx) = crossbeam_channel::unbounded();
        let (follow_tx, follow_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            orders: setup.orders,
            inventory: setup.inventory,
            gate,
            shutdown: setup.shutdown,
            shutdown_timeout: setup.shutdown_timeout,
            shutdown_seen: OnceLock::new(),
            delivered: AtomicBool::new(false),
            feed: setup.changelog,
            uncommitted: parking_lot::Mutex::new(Vec::new()),
        });
        let context = SinkContext {
            shared: shared.clone(),
            failed: failed_tx,
            follow_ups: follow_tx,
        };
        let producer: ThreadedProducer<SinkContext> = config.create_with_context(context)?;
        let producer = Arc::new(producer);
        // The threads hold weak references: the channels' senders live in the
        // producer's context, so dropping the producer ends the threads.
        let weak = Arc::downgrade(&producer);
        let for_redelivery = shared.clone();
        std::thread::Builder::new()
            .name("redelivery".into())
            .spawn(move || redeliver(&weak, &for_redelivery, &failed_rx))
            .expect("spawning a thread");
        let weak = Arc::downgrade(&producer);
        let for_follow_ups = shared.clone();
        std::thread::Builder::new()
            .name("follow-ups".into())
            .spawn(move || {
                while let Ok(queued) = follow_rx.recv() {
                    let Some(producer) = weak.upgrade() else {
                        return;
                    };
                    send_until_queued(&producer, &for_follow_ups, queued);
                }
            })
            .expect("spawning a thread");
        Ok(Sink {
            producer,
            shared,
            limits: setup.limits,
        })
    }

    /// The producer and its gate, in transactional mode.
    pub fn transactional(&self) -> Option<(&ThreadedProducer<SinkContext>, &Gate)> {
        self.shared
            .gate
            .as_deref()
            .map(|gate| (&*self.producer, gate))
    }

    /// Enqueues one record; waits only while librdkafka's queue is full.
    pub fn send(&self, record: Outgoing, token: usize) {
        self.send_then(record, token, Vec::new());
    }

    /// Enqueues `record`; `then` is sent once it is acknowledged.
    pub fn send_then(&self, record: Outgoing, token: usize, then: Vec<Outgoing>) {
        if let Some(queued) = self.sized(record, token, then) {
            send_until_queued(&self.producer, &self.shared, queued);
        }
    }

    /// Like [`Sink::send_then`], and `sibling` (no follow-ups) with it, in
    /// the same transaction where there are transactions.
    pub fn send_with(
        &self,
        record: Outgoing,
        sibling: Outgoing,
        token: usize,
        then: Vec<Outgoing>,
    ) {
        let Some(first) = self.sized(record, token, then) else {
            return;
        };
        if let Some(second) = self.sized(sibling, token, Vec::new()) {
            send_all_until_queued(&self.producer, &self.shared, [first, second]);
        }
    }

    /// Sends `records` in one hold of the open transaction (where there
    /// are transactions): all of them commit together or none (a
    /// retention pass's tombstones and the retired units they move).
    pub fn send_together(&self, records: Vec<Outgoing>, token: usize) {
        let queued: Option<Vec<Queued>> = records
            .into_iter()
            .map(|record| self.sized(record, token, Vec::new()))
            .collect();
        if let Some(queued) = queued {
            send_all_until_queued(&self.producer, &self.shared, queued);
        }
    }

    /// Like [`Sink::send_then`], but if every output of the record at
    /// offset `earlier` of the same partition is not acknowledged yet, the
    /// record is held and sent once they are (an order's cancellation
    /// after its acceptance).
    pub fn send_after(&self, earlier: i64, record: Outgoing, token: usize, then: Vec<Outgoing>) {
        let Some(queued) = self.sized(record, token, then) else {
            return;
        };
        let now = match token::unpack(token) {
            Some((source, partition, _)) => self
                .shared
                .tracker(source)
                .hold_until_done(partition, earlier, queued),
            None => Some(queued),
        };
        if let Some(queued) = now {
            send_until_queued(&self.producer, &self.shared, queued);
        }
    }

    /// `record` and its follow-ups as one queued send, if each fits the
    /// producer's limit; otherwise the processor stops (see the module
    /// doc: with the limits checked at start this cannot happen).
    fn sized(&self, record: Outgoing, token: usize, then: Vec<Outgoing>) -> Option<Queued> {
        let limit = self.limits.message_max_bytes;
        if let Some(over) = std::iter::once(&record)
            .chain(&then)
            .find(|r| r.wire_bytes() > limit)
        {
            self.shared.shutdown.fail(Fatal::OutputTooLarge {
                topic: over.topic.clone(),
                bytes: over.wire_bytes(),
                limit,
            });
            return None;
        }
        Some(Queued {
            record,
            delivery: Box::new(Delivery { token, then }),
        })
    }

    /// Sends an input record to the dead-letter topic with the contract's
    /// headers (`error`, `error_detail`, `source_topic`,
    /// `source_partition`, `source_offset`), cut to fit the producer (see
    /// [`dead_letter`]).
    pub fn send_dead_letter(
        &self,
        dlq_topic: &str,
        source: (&str, i32, i64),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        dead: &DeadLetter,
        token: usize,
    ) {
        let record = dead_letter(dlq_topic, source, key, value, dead, self.limits);
        self.send(record, token);
    }

    /// How many transactions have committed so far (`None` without
    /// transactions): a record acknowledged now is committed once this
    /// has grown past what it is now.
    pub fn committed_transactions(&self) -> Option<u64> {
        self.shared
            .gate
            .as_deref()
            .map(|gate| gate.committed.load(Ordering::Acquire))
    }

    /// The open transaction committed (called under the gate, before the
    /// next begins): the copies delivered in it go to the stores.
    pub fn transaction_committed(&self) {
        self.shared.release_committed();
    }

    /// The open transaction aborted: its copies are not the changelog's.
    pub fn transaction_aborted(&self) {
        self.shared.uncommitted.lock().clear();
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// The dead letter of an input record: its key and value untouched, with
/// the contract's headers. What would not fit the producer's limit is left
/// out, in this order, each saying so in a header: the value (also when
/// over `max_dlq_payload_bytes`; header `payload_omitted_bytes`, its size),
/// then the end of the key (header `key_omitted_bytes`, how many bytes were
/// cut), then the end of `error_detail`. The source headers always point at
/// the original, so nothing vanishes and the shard never stalls.
pub fn dead_letter(
    dlq_topic: &str,
    (source_topic, partition, offset): (&str, i32, i64),
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    dead: &DeadLetter,
    limits: OutputLimits,
) -> Outgoing {
    let partition = partition.to_string();
    let offset = offset.to_string();
    let value_bytes = value.map_or(0, <[u8]>::len);
    let key_bytes = key.map_or(0, <[u8]>::len);
    let fixed = [
        ("error", dead.reason.as_str().as_bytes()),
        ("source_topic", source_topic.as_bytes()),
        ("source_partition", partition.as_bytes()),
        ("source_offset", offset.as_bytes()),
    ];
    // Room for what may be cut: the two omission headers at their largest.
    let omission = ["payload_omitted_bytes", "key_omitted_bytes"]
        .iter()
        .map(|name| name.len() + usize::MAX.to_string().len() + HEADER_OVERHEAD_BYTES)
        .sum::<usize>();
    let header_bytes = |pairs: &[HeaderPair<'_>]| -> usize {
        pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES)
            .sum()
    };
    let budget = limits
        .message_max_bytes
        .saturating_sub(RECORD_OVERHEAD_BYTES + header_bytes(&fixed) + omission);
    // The detail is diagnostic: cut at a character boundary if even the
    // headers alone would not fit (a tiny message.max.bytes).
    let detail_room = budget.saturating_sub("error_detail".len() + HEADER_OVERHEAD_BYTES);
    let detail = cut(&dead.detail, detail_room);
    let budget = budget.saturating_sub("error_detail".len() + detail.len() + HEADER_OVERHEAD_BYTES);
    let keep_value =
        value_bytes <= limits.max_dlq_payload_bytes && key_bytes + value_bytes <= budget;
    let key_room = if keep_value {
        budget - value_bytes
    } else {
        budget
    };
    let key_kept = key_bytes.min(key_room);
    let omitted_value = value_bytes.to_string();
    let omitted_key = (key_bytes - key_kept).to_string();
    let mut headers: Vec<HeaderPair<'_>> = vec![fixed[0], ("error_detail", detail.as_bytes())];
    headers.extend_from_slice(&fixed[1..]);
    if value.is_some() && !keep_value {
        headers.push(("payload_omitted_bytes", omitted_value.as_bytes()));
    }
    if key_kept < key_bytes {
        headers.push(("key_omitted_bytes", omitted_key.as_bytes()));
    }
    Outgoing {
        topic: dlq_topic.to_string(),
        partition: None,
        // A key cut to nothing is left out; an empty one stays empty.
        key: key
            .filter(|k| key_kept > 0 || k.is_empty())
            .map(|k| k[..key_kept].to_vec()),
        payload: value.filter(|_| keep_value).map(<[u8]>::to_vec),
        headers: Some(owned_headers(&headers)),
    }
}

/// `text` cut to at most `bytes` bytes at a character boundary.
fn cut(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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

fn send_until_queued(producer: &ThreadedProducer<SinkContext>, shared: &Shared, queued: Queued) {
    send_all_until_queued(producer, shared, [queued]);
}

/// Enqueues every record of `all` in one open transaction (where there
/// are transactions): a commit cannot run between them.
fn send_all_until_queued(
    producer: &ThreadedProducer<SinkContext>,
    shared: &Shared,
    all: impl IntoIterator<Item = Queued>,
) {
    // Held until the records are queued, so a commit cannot run in between.
    let _open = match shared.gate.as_deref() {
        None => None,
        Some(gate) => match gate.open() {
            Some(open) => Some(open),
            None => {
                // The transaction was aborted (the processor is stopping)
                // or committed for the last time: these records belong to
                // no transaction, and their source record stays uncommitted.
                tracing::debug!("not sent: no open transaction");
                return;
            }
        },
    };
    for queued in all {
        enqueue(producer, shared, queued);
    }
}

/// Hands one record to librdkafka, waiting while its queue is full.
fn enqueue(producer: &ThreadedProducer<SinkContext>, shared: &Shared, queued: Queued) {
    let Queued { record, delivery } = queued;
    if let Some(gate) = shared.gate.as_deref() {
        if matches!(
            token::unpack(delivery.token),
            Some((token::Source::Inventory, _, _))
        ) {
            gate.inventory_dead_letters.store(true, Ordering::Release);
        }
    }
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
                if shared.give_up() {
                    tracing::debug!(topic = %record.topic, "not sent: shutdown timed out");
                    return;
                }
                base = returned;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => {
                // Not retryable locally, and the record was sized to fit:
                // sending it again cannot help. Its source record stays
                // uncommitted.
                telemetry::kafka_error(error_kind(&error), &error.to_string());
                match shared.gate.as_deref() {
                    // In a transaction: it will be aborted, and the
                    // processor stops (see `transaction`).
                    Some(gate) => gate.doom(undeliverable(&record.topic, &error)),
                    None => shared.shutdown.fail(Fatal::Undeliverable {
                        topic: record.topic.clone(),
                        error: error.to_string(),
                    }),
                }
                return;
            }
        }
    }
}

/// Sends failed records again until the producer is gone: one round per
/// wake-up, sending everything that failed so far, after a backoff that
/// grows (with jitter) while rounds fail with nothing delivered between
/// them, and starts over once something gets through.
fn redeliver(
    producer: &Weak<ThreadedProducer<SinkContext>>,
    shared: &Shared,
    failed: &Receiver<Queued>,
) {
    let mut wait = REDELIVERY_BACKOFF_MIN;
    while let Ok(first) = failed.recv() {
        let jitter = rand::thread_rng().gen_range(0..=wait.as_millis() as u64 / 2);
        std::thread::sleep(wait + Duration::from_millis(jitter));
        let round: Vec<Queued> = std::iter::once(first).chain(failed.try_iter()).collect();
        let Some(producer) = producer.upgrade() else {
            return;
        };
        telemetry::outputs_redelivered(round.len());
        tracing::info!(records = round.len(), "sending failed outputs again");
        // A delivery since the last round means the broker is back.
        wait = if shared.delivered.swap(false, Ordering::Relaxed) {
            REDELIVERY_BACKOFF_MIN
        } else {
            (wait * 2).min(REDELIVERY_BACKOFF_MAX)
        };
        for queued in round {
            send_until_queued(&producer, shared, queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::decode::DlqReason;

    fn dead(detail: &str) -> DeadLetter {
        DeadLetter {
            reason: DlqReason::KeyMismatch,
            detail: detail.to_string(),
        }
    }

    fn limits(message_max_bytes: usize) -> OutputLimits {
        OutputLimits {
            message_max_bytes,
            max_dlq_payload_bytes: 900_000,
        }
    }

    fn header(record: &Outgoing, name: &str) -> Option<String> {
        record
            .headers
            .as_ref()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_dead_letter_that_fits_is_untouched() {
        let record = dead_letter(
            "dlq",
            ("orders", 3, 42),
            Some(b"k"),
            Some(b"not json"),
            &dead("bad"),
            limits(1_000_000),
        );
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.payload.as_deref(), Some(&b"not json"[..]));
        for (name, value) in [
            ("error", "key_mismatch"),
            ("error_detail", "bad"),
            ("source_topic", "orders"),
            ("source_partition", "3"),
            ("source_offset", "42"),
        ] {
            assert_eq!(header(&record, name).as_deref(), Some(value), "{name}");
        }
        assert_eq!(header(&record, "payload_omitted_bytes"), None);
        assert_eq!(header(&record, "key_omitted_bytes"), None);
    }

    #[test]
    fn a_dead_letter_leaves_out_its_value_then_cuts_its_key_to_fit() {
        let limit = 10_000;
        for (key_bytes, value_bytes) in [(100, 9_900), (9_000, 2_000), (50_000, 10), (20, 20_000)] {
            let key = vec![b'k'; key_bytes];
            let value = vec![b'v'; value_bytes];
            let record = dead_letter(
                "dlq",
                ("orders", 0, 7),
                Some(&key),
                Some(&value),
                &dead("detail"),
                limits(limit),
            );
            assert!(
                record.wire_bytes() <= limit,
                "{key_bytes}/{value_bytes}: {}",
                record.wire_bytes()
            );
            assert!(record.payload.is_none(), "{key_bytes}/{value_bytes}");
            assert_eq!(
                header(&record, "payload_omitted_bytes"),
                Some(value_bytes.to_string())
            );
            let kept = record.key.as_ref().map_or(0, Vec::len);
            assert_eq!(
                kept == key_bytes,
                header(&record, "key_omitted_bytes").is_none()
            );
            if kept < key_bytes {
                assert_eq!(
                    header(&record, "key_omitted_bytes"),
                    Some((key_bytes - kept).to_string())
                );
            }
            assert_eq!(header(&record, "source_offset").as_deref(), Some("7"));
        }
        // Over kafka.max_dlq_payload_bytes, the value is left out although
        // the record would fit.
        let record = dead_letter(
            "dlq",
            ("orders", 0, 7),
            None,
            Some(&[b'v'; 2_000][..]),
            &dead("detail"),
            OutputLimits {
                message_max_bytes: 1_000_000,
                max_dlq_payload_bytes: 1_000,
            },
        );
        assert!(record.payload.is_none());
        assert_eq!(
            header(&record, "payload_omitted_bytes").as_deref(),
            Some("2000")
        );
    }

    #[test]
    fn a_dead_letter_fits_the_smallest_producer_limit() {
        // librdkafka's smallest message.max.bytes is 1,000.
        let record = dead_letter(
            "dlq",
            (&"t".repeat(249), i32::MAX, i64::MAX),
            Some(&[b'k'; 5_000][..]),
            Some(&[b'v'; 5_000][..]),
            &dead(&"é".repeat(1_000)),
            limits(1_000),
        );
        assert!(record.wire_bytes() <= 1_000, "{}", record.wire_bytes());
        assert_eq!(header(&record, "source_offset"), Some(i64::MAX.to_string()));
    }
}
