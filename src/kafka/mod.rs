//! The Kafka layer: translates records into calls on the engine and
//! outcomes back into records. Nothing about orders is decided here.
//!
//! - [`source`]: the `orders` consumer; routes each partition to one shard,
//!   stores offsets only once their outputs are acknowledged.
//! - [`worker`]: a shard thread running the engine over its records.
//! - [`inventory_feed`]: reads `inventory` to its end before orders are
//!   decided, then keeps the cache current.
//! - [`recovery`]: rebuilds a partition's book and holdings from its part of
//!   the status topic each time the partition is assigned.
//! - [`catch_up`]: reading a whole topic before deciding anything.
//! - [`sink`]: the producer, with delivery tracking and redelivery.
//! - [`tracker`]: which consumed offsets are safe to commit.
//! - [`transaction`]: Kafka transactions where the brokers support them.

pub mod catch_up;
pub mod inventory_feed;
pub mod recovery;
pub mod sink;
pub mod source;
pub mod tracker;
pub mod transaction;
pub mod worker;

use crate::config::KafkaConfig;
use rdkafka::ClientConfig;
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
        "topic {status:?} has {status_partitions} partitions, fewer than the {orders_partitions} \
         of {orders:?}: each orders partition writes its statuses, its changelog, to the status \
         partition with the same number (create {status:?} with {orders_partitions} partitions)"
    )]
    StatusPartitions {
        status: String,
        status_partitions: usize,
        orders: String,
        orders_partitions: usize,
    },
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

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
        .set("auto.offset.reset", &kafka.auto_offset_reset)
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
