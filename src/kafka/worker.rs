//! A shard: one thread that runs the engine over the records of the
//! partitions routed to it, holding those partitions' order books, and
//! turns each outcome's outputs into records for the sink.

use super::sink::{owned_headers, Outgoing, Sink};
use super::source::Record;
use super::tracker::{token, OffsetTracker};
use crate::config::Topics;
use crate::engine::{self, Engine, OrderBook, Output};
use crate::state;
use crate::telemetry;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How often a shard reports its queue depth.
const DEPTH_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// What the consumer hands a shard, in the order it must be done.
#[derive(Debug)]
pub enum Work {
    /// A record of a partition this shard holds the book of.
    Record(Record),
    /// A partition this process now owns, with its restored book: sent
    /// before any of its records.
    Adopt { partition: i32, book: OrderBook },
    /// A partition this process no longer owns: sent after its last record;
    /// `done` hears once its holdings are given back.
    Release {
        partition: i32,
        done: crossbeam_channel::Sender<()>,
    },
}

pub struct Shard {
    pub id: usize,
    pub engine: Arc<Engine>,
    pub sink: Arc<Sink>,
    pub tracker: Arc<OffsetTracker>,
    pub topics: Topics,
}

impl Shard {
    /// Runs until the queue's senders are gone and the queue is empty.
    pub fn run(self, queue: Receiver<Work>) {
        let mut books: HashMap<i32, OrderBook> = HashMap::new();
        let mut outputs = Vec::new();
        let mut last_depth_report = quanta::Instant::now();
        let mut metrics = telemetry::ShardTelemetry::new();
        telemetry::shard_queue_depth(self.id, 0);
        loop {
            // Waking up when idle keeps the depth gauge current after a burst
            // drains, instead of frozen at the last busy reading.
            let record = match queue.recv_timeout(DEPTH_REPORT_INTERVAL) {
                Ok(Work::Record(record)) => record,
                Ok(Work::Adopt { partition, book }) => {
                    books.insert(partition, book);
                    continue;
                }
                Ok(Work::Release { partition, done }) => {
                    if let Some(book) = books.remove(&partition) {
                        engine::forget(self.engine.inventory(), &book);
                    }
                    let _ = done.send(());
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {
                    metrics.flush();
                    telemetry::shard_queue_depth(self.id, queue.len());
                    last_depth_report = quanta::Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let Some(book) = books.get_mut(&record.partition) else {
                // The consumer adopts a partition before dispatching its
                // records; a record without a book would be decided blind.
                debug_assert!(false, "record of a partition without a book");
                tracing::error!(
                    partition = record.partition,
                    "record of a partition whose state was not restored; not decided"
                );
                continue;
            };
            outputs.clear();
            let processed = self.engine.process(
                book,
                record.offset,
                record.key.as_deref(),
                record.value.as_deref(),
                OffsetDateTime::now_utc(),
                &mut outputs,
            );
            // Register before sending, so no delivery report can come first.
            self.tracker
                .begin(record.partition, record.offset, outputs.len() as u32);
            for output in &outputs {
                if let Output::Fulfillment { kind, .. } = output {
                    metrics.fulfillment_emitted(kind);
                }
            }
            self.send(&record, &mut outputs);
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

    /// Sends one record's outputs. Fulfillments follow their status: they
    /// are sent once the status is acknowledged (see `sink`).
    fn send(&self, record: &Record, outputs: &mut Vec<Output>) {
        let token = token::pack(record.partition, record.offset);
        let mut status = None;
        let mut fulfillments = Vec::new();
        for output in outputs.drain(..) {
            match output {
                Output::Status {
                    order_id,
                    payload,
                    record: change,
                } => {
                    let entry = state::ChangelogEntry {
                        partition: record.partition,
                        record: change,
                    };
                    let header = state::encode(&entry);
                    // The status topic is the changelog of each orders
                    // partition: same partition number (see `recovery`).
                    status = Some(Outgoing {
                        topic: self.topics.status.clone(),
                        partition: Some(record.partition),
                        key: Some(order_id.into_bytes()),
                        payload: Some(payload),
                        headers: Some(owned_headers(&[(state::HEADER, &header)])),
                    });
                }
                Output::Fulfillment {
                    order_id, payload, ..
                } => {
                    fulfillments.push(Outgoing {
                        topic: self.topics.fulfillments.clone(),
                        partition: None,
                        key: Some(order_id.into_bytes()),
                        payload: Some(payload),
                        headers: None,
                    });
                }
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
        match status {
            Some(status) => self.sink.send_then(status, token, fulfillments),
            // A replay: the status is already out; only follow-ups go again.
            None => fulfillments
                .into_iter()
                .for_each(|f| self.sink.send(f, token)),
        }
    }
}
