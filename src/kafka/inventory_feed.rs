//! The inventory feed: reads the `inventory` topic from its beginning to
//! its end before any order is decided, then keeps the cache current.
//!
//! The feed reads every partition with no consumer group and commits
//! nothing: stock is rebuilt from the whole topic on every start, which is
//! safe because inventory events set and adjust *stock*, while units sold
//! are the processor's own state (see the `inventory` module).

use super::sink::Sink;
use super::tracker::token;
use super::{StartError, METADATA_TIMEOUT};
use crate::config::Config;
use crate::inventory::Inventory;
use crate::order::decode::decode_inventory;
use crate::shutdown::Shutdown;
use crate::telemetry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often catching up logs its progress.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

struct Feed {
    consumer: BaseConsumer,
    inventory: Arc<Inventory>,
    sink: Arc<Sink>,
    topic: String,
    dlq: String,
    max_record_bytes: usize,
}

impl Feed {
    fn apply(&self, message: &BorrowedMessage<'_>) {
        match decode_inventory(message.key(), message.payload(), self.max_record_bytes) {
            Ok(event) => {
                self.inventory.apply(&event);
                telemetry::inventory_event(Ok(()));
            }
            Err(dead) => {
                telemetry::inventory_event(Err(dead.reason));
                let source = (self.topic.as_str(), message.partition(), message.offset());
                self.sink.send_dead_letter(
                    &self.dlq,
                    source,
                    message.key(),
                    message.payload(),
                    &dead,
                    token::UNTRACKED,
                );
            }
        }
    }
}

/// Reads `inventory` to its end (returning only then), and leaves a thread
/// applying new events until shutdown.
pub fn start(
    config: &Config,
    inventory: Arc<Inventory>,
    sink: Arc<Sink>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let topic = config.topics.inventory.clone();
    let mut client = super::consumer_config(
        &config.kafka,
        &format!("{}-inventory", config.kafka.group_id),
    );
    client.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client.create()?;
    let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(StartError::TopicMissing {
            topic,
            brokers: config.kafka.brokers.clone(),
        });
    }
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, *partition, METADATA_TIMEOUT)?;
        if high > low {
            remaining.insert(*partition, high);
        }
        tpl.add_partition_offset(&topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let feed = Feed {
        consumer,
        inventory,
        sink,
        topic,
        dlq: config.topics.dlq.clone(),
        max_record_bytes: config.limits.max_record_bytes,
    };
    let started = Instant::now();
    let mut last_log = Instant::now();
    while !remaining.is_empty() && !shutdown.is_triggered() {
        match feed.consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                feed.apply(&message);
                if remaining
                    .get(&message.partition())
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    remaining.remove(&message.partition());
                }
            }
            Some(Err(error)) => {
                telemetry::kafka_error(super::sink::error_kind(&error), &error.to_string())
            }
            // Compaction or transaction markers can leave the last offset
            // below the high watermark: the position says where we really are.
            None => {
                if let Ok(position) = feed.consumer.position() {
                    for element in position.elements() {
                        if let Offset::Offset(next) = element.offset() {
                            if remaining
                                .get(&element.partition())
                                .is_some_and(|high| next >= *high)
                            {
                                remaining.remove(&element.partition());
                            }
                        }
                    }
                }
            }
        }
        if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            tracing::info!(
                partitions_left = remaining.len(),
                skus = feed.inventory.sku_count(),
                "reading inventory"
            );
            last_log = Instant::now();
        }
    }
    tracing::info!(
        skus = feed.inventory.sku_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "inventory read to its end"
    );
    let handle = std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                match feed.consumer.poll(POLL_TIMEOUT) {
                    Some(Ok(message)) => feed.apply(&message),
                    Some(Err(error)) => {
                        telemetry::kafka_error(super::sink::error_kind(&error), &error.to_string())
                    }
                    None => {}
                }
            }
        })
        .expect("spawning a thread");
    Ok(handle)
}
