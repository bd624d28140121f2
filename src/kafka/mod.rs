//! The Kafka layer: translates records into calls on the engine and
//! outcomes back into records. Nothing about orders is decided here.
//!
//! - [`source`]: the `orders` consumer's poll loop; its rebalance callback
//!   only records what changed; routes each partition to one shard, stores
//!   offsets only once their outputs are acknowledged, hands a revoked
//!   partition over only once that is so.
//! - [`ownership`]: where each assigned partition stands (restoring, owned,
//!   being handed over), and which are paused (restoring, revoking, too
//!   many outputs in flight, a shared whole stock) and whether the process
//!   is ready. Pure bookkeeping.
//! - [`worker`]: a shard thread running the engine over its records.
//! - [`inventory_feed`]: reads `inventory` to its end before orders are
//!   decided, then keeps the cache current; dead-letters each unreadable
//!   record once.
//! - [`recovery`]: rebuilds a partition's book and holdings from its part of
//!   the status topic each time the partition is assigned, on a thread of
//!   its own.
//! - [`catch_up`]: reading a whole topic before deciding anything.
//! - [`preflight`]: at start, whether the brokers accept the credentials.
//! - [`sink`]: the producer, with delivery tracking, outputs sized to fit,
//!   and redelivery after an outage.
//! - [`tracker`]: which consumed offsets are safe to commit, and which
//!   outputs wait for an earlier record's.
//! - [`transaction`]: Kafka transactions where the brokers support them.

pub mod catch_up;
pub mod inventory_feed;
pub mod ownership;
pub mod preflight;
pub mod recovery;
pub mod sink;
pub mod source;
pub mod tracker;
pub mod transaction;
pub mod worker;

use crate::config::KafkaConfig;
use crate::telemetry::{self, KafkaErrorKind};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use std::time::Duration;

/// How long metadata and watermark requests may take at start-up.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often librdkafka reports statistics (consumer lag).
pub const STATISTICS_INTERVAL_MS: &str = "1000";

/// Errors of the Kafka layer that stop the processor from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "topic {topic:?} does not exist on {brokers} (create it with explicit partition counts)"
    )]
    TopicMissing { topic: String, brokers: String },
    #[error(
        "topic {topic:?} has {partitions} partitions, fewer than the {orders_partitions} of \
         {orders:?}: each orders partition writes its {what} to the partition with the same \
         number (create {topic:?} with {orders_partitions} partitions)"
    )]
    OutputPartitions {
        topic: String,
        partitions: usize,
        /// What the partition holds: "statuses, its changelog", ...
        what: &'static str,
        orders: String,
        orders_partitions: usize,
    },
    #[error(
        "limits.max_record_bytes = {max_record_bytes} lets one order produce outputs of up to \
         {worst_bytes} bytes, over the producer's message.max.bytes of {message_max_bytes}: \
         lower limits.max_record_bytes to at most {fits}, or raise \
         kafka.producer.\"message.max.bytes\" (and the output topics' max.message.bytes)"
    )]
    OutputLimit {
        max_record_bytes: usize,
        worst_bytes: usize,
        message_max_bytes: usize,
        fits: usize,
    },
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A partition's local order store could not be opened, read or
    /// written during a restore (the restore is tried again).
    #[error("{0} (check engine.store_dir's disk)")]
    Store(String),
}

/// Why a running processor stops on its own (besides a failed
/// transaction, see `transaction`): going on could break a promise.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(
        "a record of orders partition {partition} (offset {offset}) reached the engine while \
         the partition's state was not restored: deciding it could decide an order twice, \
         skipping it would commit past it; restarting restores the state first"
    )]
    RecordWithoutState { partition: i32, offset: i64 },
    #[error(
        "an output to {topic:?} is {bytes} bytes, over the producer's message.max.bytes of \
         {limit}; it was not sent and its source record stays uncommitted"
    )]
    OutputTooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "the brokers refused an output to {topic:?} for good ({error}); sending it again \
         cannot help (check the topic's max.message.bytes against the producer's \
         message.max.bytes, and the ACLs); its source record stays uncommitted"
    )]
    Undeliverable { topic: String, error: String },
    #[error(
        "the on-disk order store of orders partition {partition} failed ({error}): an order \
         it holds could be decided again; the record that met it stays uncommitted, and a \
         restart restores the partition from its store's checkpoint and the changelog (check \
         engine.store_dir's disk)"
    )]
    OrderStore { partition: i32, error: String },
}

/// How many bytes of output one byte of an order record can become, at
/// most: a status repeats the order ID in its key, event ID and payload and
/// carries the customer, SKUs and address keys in its changelog header; a
/// fulfillment repeats the order ID four times and an address key twice,
/// and carries its address and lines. JSON escaping never grows a string
/// beyond its escaped form in the input. (A unit test builds the worst
/// orders it can within a limit and checks every output against this.)
pub const OUTPUT_BYTES_PER_RECORD_BYTE: usize = 6;
/// Output bytes that do not come from the order record: field names,
/// timestamps, a status's reason and its detail (bounded by the engine),
/// headers and the record overhead.
pub const OUTPUT_OVERHEAD_BYTES: usize = 16 * 1024;

/// Checks at start that no order within `limits.max_record_bytes` can
/// produce a status or fulfillment over the producer's limit, so every
/// output can be sent (dead letters are cut to fit instead, see `sink`).
pub fn check_output_limits(
    max_record_bytes: usize,
    limits: sink::OutputLimits,
) -> Result<(), StartError> {
    let worst = max_record_bytes
        .saturating_mul(OUTPUT_BYTES_PER_RECORD_BYTE)
        .saturating_add(OUTPUT_OVERHEAD_BYTES);
    if worst <= limits.message_max_bytes {
        return Ok(());
    }
    Err(StartError::OutputLimit {
        max_record_bytes,
        worst_bytes: worst,
        message_max_bytes: limits.message_max_bytes,
        fits: limits
            .message_max_bytes
            .saturating_sub(OUTPUT_OVERHEAD_BYTES)
            / OUTPUT_BYTES_PER_RECORD_BYTE,
    })
}

/// The `kind` an error of the Kafka client is counted as.
pub fn error_kind(error: &KafkaError) -> KafkaErrorKind {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => KafkaErrorKind::MessageTimedOut,
        Some(RDKafkaErrorCode::QueueFull) => KafkaErrorKind::QueueFull,
        Some(RDKafkaErrorCode::AllBrokersDown) => KafkaErrorKind::AllBrokersDown,
        Some(RDKafkaErrorCode::BrokerTransportFailure) => KafkaErrorKind::Transport,
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => {
            KafkaErrorKind::UnknownTopic
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => KafkaErrorKind::MessageTooLarge,
        Some(_) => KafkaErrorKind::Broker,
        None => KafkaErrorKind::Client,
    }
}

/// The context of the consumers that read whole topics on their own
/// (inventory feed, restore, the transactions probe): their errors are
/// counted, and logged rate-limited, like every Kafka error, and so are
/// librdkafka's own warnings.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        telemetry::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(error_kind(&error), reason);
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer that reads whole topics on its own.
pub type Reader = BaseConsumer<ReaderContext>;

fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Config for consumers in the processor's group. The settings that
/// correctness depends on (manual offset store) are applied last.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        .set("group.id", group_id)
        .set("auto.offset.reset", kafka.auto_offset_reset.as_str())
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        // Moves only the partitions that change owner in a rebalance; the
        // others keep deciding (each moved one is restored, see `recovery`).
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    for (key, value) in &kafka.consumer {
        config.set(key, value);
    }
    config
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    config
}

/// Config for the `orders` consumer of the processor's group. With Kafka
/// transactions, consumed offsets are committed inside each transaction
/// (`send_offsets_to_transaction`), never by the consumer itself.
pub fn orders_consumer_config(kafka: &KafkaConfig, transactional: bool) -> ClientConfig {
    let mut config = consumer_config(kafka, &kafka.group_id);
    if transactional {
        config.set("enable.auto.commit", "false");
    }
    config
}

/// Config for a consumer that reads whole topics on its own (inventory
/// feed, restore): no group commits, no statistics (the default context
/// would log them), and committed records only: a status of an aborted or
/// still open transaction is no decision (librdkafka's default, made
/// explicit because restoring depends on it).
pub fn reader_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = consumer_config(kafka, group_id);
    config
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0")
        .set("isolation.level", "read_committed");
    config
}

/// Config for the output producer.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base_config(kafka);
    for (key, value) in &kafka.producer {
        config.set(key, value);
    }
    config
}
