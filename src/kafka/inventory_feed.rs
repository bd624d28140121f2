//! The inventory feed: reads the `inventory` topic from its beginning to
//! its end before any order is decided, then keeps the cache current.
//!
//! The feed reads every partition with no consumer group and commits
//! nothing: stock is rebuilt from the whole topic on every start, which is
//! safe because inventory events set and adjust *stock*, while units sold
//! are the processor's own state (see the `inventory` and `state` modules).

use super::catch_up::read_to_end;
use super::sink::Sink;
use super::tracker::token;
use super::StartError;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::order::decode::decode_inventory;
use crate::shutdown::Shutdown;
use crate::telemetry;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const POLL_TIMEOUT: Duration = Duration::from_millis(100);

struct Feed {
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
                let (key, value) = (message.key(), message.payload());
                self.sink
                    .send_dead_letter(&self.dlq, source, key, value, &dead, token::UNTRACKED);
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
    let group = format!("{}-inventory", config.kafka.group_id);
    let consumer: BaseConsumer = super::reader_config(&config.kafka, &group).create()?;
    let feed = Feed {
        inventory,
        sink,
        topic: config.topics.inventory.clone(),
        dlq: config.topics.dlq.clone(),
        max_record_bytes: config.limits.max_record_bytes,
    };
    read_to_end(
        &consumer,
        &feed.topic,
        None,
        &config.kafka.brokers,
        &shutdown,
        |m| feed.apply(m),
    )?;
    tracing::info!(skus = feed.inventory.sku_count(), "inventory loaded");
    let handle = std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                match consumer.poll(POLL_TIMEOUT) {
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
