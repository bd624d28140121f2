//! Restore at start: reads the status topic whole and rebuilds, from the
//! changelog header of each status, the order books and reservations (see
//! the `state` module for why that is the whole state).

use super::catch_up::read_to_end;
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

/// Rebuilds state from the status topic into `inventory`; returns the
/// order books by partition. Call after the inventory is loaded, so that
/// per-customer limits are known.
pub fn restore(
    config: &Config,
    inventory: &Inventory,
    shutdown: &Shutdown,
) -> Result<HashMap<i32, OrderBook>, StartError> {
    let group = format!("{}-restore", config.kafka.group_id);
    let consumer: BaseConsumer = super::reader_config(&config.kafka, &group).create()?;
    let mut restorer = Restorer::new(inventory, config.engine.dedup_window_orders);
    let mut unreadable = 0u64;
    let topic = &config.topics.status;
    read_to_end(
        &consumer,
        topic,
        &config.kafka.brokers,
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
                (Some(order_id), Some(Ok(entry))) => restorer.apply(order_id, entry),
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
    telemetry::orders_recovered(restorer.applied);
    tracing::info!(
        decisions = restorer.applied,
        "state restored from the status topic"
    );
    Ok(restorer.finish())
}
