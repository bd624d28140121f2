//! Restoring a partition's state when this process takes it over: at start
//! and at every rebalance that assigns it a partition, before any of that
//! partition's records is decided.
//!
//! Every status goes to the partition of the status topic with the same
//! number as its order's partition of `orders` (see `worker`), so the state
//! of orders partition `p` is status partition `p` read from the beginning:
//! each status's changelog header rebuilds `p`'s order book and puts back
//! in the inventory what `p`'s orders hold (see the `state` module).

use super::catch_up::{partitions_of, read_to_end};
use super::StartError;
use crate::config::Config;
use crate::engine::OrderBook;
use crate::inventory::Inventory;
use crate::shutdown::Shutdown;
use crate::state::{self, Restorer};
use crate::telemetry;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First wait before trying a failed restore again; doubles up to the max.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Restores partitions from the status topic, with its own reader.
pub struct Recovery {
    reader: BaseConsumer,
    topic: String,
    brokers: String,
    inventory: Arc<Inventory>,
    capacity: usize,
    /// Partitions of `orders` when each sells only its quota.
    quota_of: Option<u32>,
}

impl Recovery {
    pub fn new(config: &Config, inventory: Arc<Inventory>) -> Result<Self, StartError> {
        let group = format!("{}-restore", config.kafka.group_id);
        Ok(Recovery {
            reader: super::reader_config(&config.kafka, &group).create()?,
            topic: config.topics.status.clone(),
            brokers: config.kafka.brokers.clone(),
            inventory,
            capacity: config.engine.dedup_window_orders,
            quota_of: None,
        })
    }

    /// Restores books that sell only their quota of `partitions`.
    pub fn with_quotas(mut self, partitions: u32) -> Self {
        self.quota_of = Some(partitions);
        self
    }

    /// Partition count of `topic`.
    pub fn partition_count(&self, topic: &str) -> Result<usize, StartError> {
        Ok(partitions_of(&self.reader, topic, &self.brokers)?.len())
    }

    /// Rebuilds the books of `partitions` and takes what their orders hold
    /// in the inventory. A broker that does not answer is tried again, with
    /// backoff, until it does or shutdown comes (then `None`): deciding a
    /// partition without its state could decide an order twice.
    pub fn restore(
        &self,
        partitions: &[i32],
        shutdown: &Shutdown,
    ) -> Option<HashMap<i32, OrderBook>> {
        let mut backoff = RETRY_BACKOFF_MIN;
        while !shutdown.is_triggered() {
            let started = Instant::now();
            let mut restorer = Restorer::new(&self.inventory, self.capacity, self.quota_of);
            match self.read(partitions, &mut restorer, shutdown) {
                Ok(()) if !shutdown.is_triggered() => {
                    telemetry::orders_recovered(partitions, restorer.applied, started.elapsed());
                    return Some(restorer.finish(partitions));
                }
                Ok(()) => return None,
                Err(error) => {
                    // What this attempt took goes back before the next one.
                    for book in restorer.finish(&[]).values() {
                        crate::engine::forget(&self.inventory, book);
                    }
                    telemetry::kafka_error("restore", &error.to_string());
                    tracing::warn!(?partitions, %error, retry_in_ms = backoff.as_millis() as u64,
                        "restoring partition state failed; trying again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        None
    }

    fn read(
        &self,
        partitions: &[i32],
        restorer: &mut Restorer<'_>,
        shutdown: &Shutdown,
    ) -> Result<(), StartError> {
        let mut unreadable = 0u64;
        read_to_end(
            &self.reader,
            &self.topic,
            Some(partitions),
            &self.brokers,
            shutdown,
            |message| {
                let entry = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == state::HEADER))
                    .and_then(|h| h.value)
                    .map(state::decode);
                match (
                    message.key().and_then(|k| std::str::from_utf8(k).ok()),
                    entry,
                ) {
                    // A status of another orders partition (written before
                    // statuses followed their order's partition) is not ours.
                    (Some(order_id), Some(Ok(entry))) if partitions.contains(&entry.partition) => {
                        restorer.apply(order_id, entry)
                    }
                    (Some(_), Some(Ok(_))) => {}
                    _ => unreadable += 1,
                }
            },
        )?;
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "status records without a readable state header were skipped"
            );
        }
        Ok(())
    }
}
