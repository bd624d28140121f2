//! A shard: one thread that runs the engine over the records of the
//! partitions routed to it, holding those partitions' order books, and
//! turns each outcome's outputs into records for the sink.

use super::sink::Sink;
use super::source::Record;
use super::tracker::{token, OffsetTracker};
use crate::config::Topics;
use crate::engine::{Engine, OrderBook, Output};
use crate::telemetry;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How often a shard reports its queue depth.
const DEPTH_REPORT_INTERVAL: Duration = Duration::from_millis(500);

pub struct Shard {
    pub id: usize,
    pub engine: Arc<Engine>,
    pub sink: Arc<Sink>,
    pub tracker: Arc<OffsetTracker>,
    pub topics: Topics,
    /// Capacity of each partition's order book.
    pub dedup_window_orders: usize,
}

impl Shard {
    /// Runs until the queue's senders are gone and the queue is empty.
    pub fn run(self, queue: Receiver<Record>) {
        let mut books: HashMap<i32, OrderBook> = HashMap::new();
        let mut outputs = Vec::new();
        let mut last_depth_report = quanta::Instant::now();
        let mut metrics = telemetry::ShardTelemetry::new();
        telemetry::shard_queue_depth(self.id, 0);
        loop {
            // Waking up when idle keeps the depth gauge current after a burst
            // drains, instead of frozen at the last busy reading.
            let record = match queue.recv_timeout(DEPTH_REPORT_INTERVAL) {
                Ok(record) => record,
                Err(RecvTimeoutError::Timeout) => {
                    metrics.flush();
                    telemetry::shard_queue_depth(self.id, queue.len());
                    last_depth_report = quanta::Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let book = books
                .entry(record.partition)
                .or_insert_with(|| OrderBook::new(self.dedup_window_orders));
            outputs.clear();
            let processed = self.engine.process(
                book,
                record.key.as_deref(),
                record.value.as_deref(),
                OffsetDateTime::now_utc(),
                &mut outputs,
            );
            // Register before sending, so no delivery report can come first.
            self.tracker
                .begin(record.partition, record.offset, outputs.len() as u32);
            let token = token::pack(record.partition, record.offset);
            for output in outputs.drain(..) {
                if let Output::Fulfillment { kind, .. } = &output {
                    metrics.fulfillment_emitted(kind);
                }
                self.send(&record, output, token);
            }
            // One clock read serves the processing time and the report timer.
            let done = quanta::Instant::now();
            metrics.order_processed(
                processed.outcome,
                processed.latency,
                done.duration_since(record.received),
            );
            if done.duration_since(last_depth_report) >= DEPTH_REPORT_INTERVAL {
                metrics.flush();
                telemetry::shard_queue_depth(self.id, queue.len());
                last_depth_report = done;
            }
        }
        metrics.flush();
        telemetry::shard_queue_depth(self.id, 0);
    }

    fn send(&self, record: &Record, output: Output, token: usize) {
        match output {
            Output::Status { order_id, payload } => self.sink.send(
                &self.topics.status,
                Some(order_id.as_bytes()),
                Some(&payload),
                &[],
                token,
            ),
            Output::Fulfillment {
                order_id, payload, ..
            } => self.sink.send(
                &self.topics.fulfillments,
                Some(order_id.as_bytes()),
                Some(&payload),
                &[],
                token,
            ),
            Output::DeadLetter(dead) => self.sink.send_dead_letter(
                &self.topics.dlq,
                (&self.topics.orders, record.partition, record.offset),
                record.key.as_deref(),
                record.value.as_deref(),
                &dead,
                token,
            ),
        }
    }
}
