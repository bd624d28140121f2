//! A shard: one thread that runs the engine over the records of the
//! partitions routed to it, holding those partitions' order books, and
//! turns each outcome's outputs into records for the sink.

use super::sink::{owned_headers, Outgoing, Sink};
use super::source::Record;
use super::tracker::{token, OffsetTracker};
use super::Fatal;
use crate::config::Topics;
use crate::engine::{self, Engine, OrderBook, Outcome, Output, Processed};
use crate::order::decode::{DeadLetter, DlqReason};
use crate::partitioner::Routing;
use crate::shutdown::Shutdown;
use crate::state;
use crate::telemetry;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How often a shard reports its queue depth.
const DEPTH_REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How often a shard fires its orders' due lifecycle timers (payment
/// retries, result timeouts): the lateness a timer may have on top of its
/// due time, small next to the shortest backoff a sale would set.
const TICK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a shard retires its orders whose retention is over.
const RETENTION_PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Stored orders one retention pass looks at per partition, at most: a
/// sale's orders expire together, 90 days on; retiring them is spread over
/// passes (500 a second per partition), each one hold of the transaction.
pub const RETIRE_BATCH: usize = 500;

/// What the consumer hands a shard, in the order it must be done.
#[derive(Debug)]
pub enum Work {
    /// A record of a partition this shard holds the book of.
    Record(Record),
    /// A partition this process now owns, with its restored book: sent
    /// before any of its records.
    Adopt {
        partition: i32,
        book: Box<OrderBook>,
    },
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
    /// The partition check of `orders` (`kafka.orders_partitioner`).
    pub routing: Routing,
    /// Failed when a record arrives that this shard cannot decide safely.
    pub shutdown: Shutdown,
    /// Whether orders past `lifecycle.retention_days` are retired (with
    /// order stores and transactions: see `retire`).
    pub retention: bool,
}

impl Shard {
    /// Runs until the queue's senders are gone and the queue is empty.
    pub fn run(self, queue: Receiver<Work>) {
        let mut books: HashMap<i32, OrderBook> = HashMap::new();
        let mut outputs = Vec::new();
        let mut last_depth_report = quanta::Instant::now();
        let mut last_tick = quanta::Instant::now();
        let mut last_retention = quanta::Instant::now();
        let mut metrics = telemetry::ShardTelemetry::new();
        telemetry::shard_queue_depth(self.id, 0);
        loop {
            // Waking up when idle keeps the depth gauge current after a burst
            // drains, instead of frozen at the last busy reading.
            let now = quanta::Instant::now();
            if now.duration_since(last_tick) >= TICK_INTERVAL {
                self.tick(&mut books, &mut outputs, &mut metrics);
                last_tick = now;
            }
            if self.retention && now.duration_since(last_retention) >= RETENTION_PASS_INTERVAL {
                if !self.retire(&mut books) {
                    break;
                }
                last_retention = now;
            }
            let record = match queue.recv_timeout(TICK_INTERVAL) {
                Ok(Work::Record(record)) => record,
                Ok(Work::Adopt { partition, book }) => {
                    // Commands that were out when the partition's state was
                    // written may never have left: they go again, with the
                    // same IDs (gateways deduplicate by command_id).
                    outputs.clear();
                    self.engine
                        .resume(&book, OffsetDateTime::now_utc(), &mut outputs);
                    metrics.outputs_emitted(&outputs);
                    self.send_untracked(partition, &mut outputs);
                    books.insert(partition, *book);
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
                    if last_depth_report.elapsed() >= DEPTH_REPORT_INTERVAL {
                        metrics.payments_in_attention(in_attention(&books));
                        metrics.flush();
                        telemetry::shard_queue_depth(self.id, queue.len());
                        last_depth_report = quanta::Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let Some(book) = books.get_mut(&record.partition) else {
                // The consumer dispatches a partition's records only after
                // its book (see `source`), so this is a broken invariant:
                // decided blind, an order could be decided twice; skipped,
                // later offsets would be committed past it. Stop instead:
                // nothing more is decided here, and the restart restores.
                self.shutdown.fail(Fatal::RecordWithoutState {
                    partition: record.partition,
                    offset: record.offset,
                });
                break;
            };
            outputs.clear();
            // Before the engine: a record of an order another partition
            // owns must not touch this partition's book or the stock.
            let processed = match self.routing.check(record.partition, record.key.as_deref()) {
                Ok(()) => self.engine.process(
                    book,
                    record.offset,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    OffsetDateTime::now_utc(),
                    &mut outputs,
                ),
                Err(misrouted) => {
                    outputs.push(Output::DeadLetter(DeadLetter {
                        reason: DlqReason::WrongPartition,
                        detail: misrouted.to_string(),
                    }));
                    Processed {
                        outcome: Outcome::DeadLetter(DlqReason::WrongPartition),
                        latency: crate::engine::Latency::Absent,
                    }
                }
            };
            if let Some(failure) = book.cold_failure() {
                // The book may have missed an order its store holds: this
                // record's outputs stay unsent and its offset uncommitted.
                self.shutdown.fail(Fatal::OrderStore {
                    partition: record.partition,
                    error: failure.to_string(),
                });
                break;
            }
            // Register before sending, so no delivery report can come first.
            self.tracker
                .begin(record.partition, record.offset, records_of(&outputs));
            metrics.outputs_emitted(&outputs);
            // An order's later record (its cancellation) sends nothing
            // before the record that placed it has all its outputs
            // acknowledged, so its statuses land in order (see `tracker`).
            let earlier = outputs
                .iter()
                .find_map(order_of)
                .and_then(|id| book.get(id))
                .map(|known| known.placed_offset)
                .filter(|placed| *placed < record.offset);
            self.send(&record, earlier, &mut outputs);
            // One clock read serves the processing time and the report timer.
            let done = quanta::Instant::now();
            metrics.order_processed(
                processed.outcome,
                processed.latency,
                done.duration_since(record.received),
            );
            if done.duration_since(last_depth_report) >= DEPTH_REPORT_INTERVAL {
                metrics.payments_in_attention(in_attention(&books));
                metrics.flush();
                telemetry::shard_queue_depth(self.id, queue.len());
                last_depth_report = done;
            }
        }
        metrics.flush();
        telemetry::shard_queue_depth(self.id, 0);
    }

    /// Fires the due lifecycle timers of every book and sends what they
    /// caused.
    fn tick(
        &self,
        books: &mut HashMap<i32, OrderBook>,
        outputs: &mut Vec<Output>,
        metrics: &mut telemetry::ShardTelemetry,
    ) {
        let now = OffsetDateTime::now_utc();
        for (partition, book) in books.iter_mut() {
            outputs.clear();
            if self.engine.tick(book, now, outputs) > 0 {
                metrics.outputs_emitted(outputs);
                self.send_untracked(*partition, outputs);
            }
        }
    }

    /// Retires the orders of every book whose retention is over: each
    /// partition's tombstones and the retired units they move go to the
    /// state topic in one hold of the open transaction, so a restore sees
    /// both or neither (without transactions a crash could fall between
    /// them, which is why retention runs only with them). Lost in a crash
    /// or an abort, they are made again: the stores keep the orders until
    /// their tombstones commit. False when the processor must stop.
    fn retire(&self, books: &mut HashMap<i32, OrderBook>) -> bool {
        let now = crate::lifecycle::Millis::from_datetime(OffsetDateTime::now_utc());
        for (partition, book) in books.iter_mut() {
            let retired = engine::retention::retire(book, now, RETIRE_BATCH);
            if let Some(failure) = book.cold_failure() {
                self.shutdown.fail(Fatal::OrderStore {
                    partition: *partition,
                    error: failure,
                });
                return false;
            }
            if retired.is_empty() {
                continue;
            }
            telemetry::orders_retired(retired.orders.len());
            let state_record = |key: Vec<u8>, payload: Option<Vec<u8>>| Outgoing {
                topic: self.topics.state.clone(),
                partition: Some(*partition),
                key: Some(key),
                payload,
                headers: None,
            };
            let units = retired.units.into_iter().map(|(sku, units)| {
                let total = state::RetiredUnits {
                    partition: *partition,
                    units,
                };
                state_record(state::retired_key(&sku), Some(state::encode_retired(total)))
            });
            let tombstones = retired
                .orders
                .into_iter()
                .map(|order_id| state_record(order_id.into_bytes(), None));
            self.sink
                .send_together(units.chain(tombstones).collect(), token::UNTRACKED);
        }
        true
    }

    /// Sends outputs no consumed record caused (the clock's, a restore's
    /// resend). They hold no offset back: if they are lost in a crash, the
    /// restored state still has the timer or the command in flight that
    /// made them, and makes them again with the same IDs.
    fn send_untracked(&self, partition: i32, outputs: &mut Vec<Output>) {
        if outputs.is_empty() {
            return;
        }
        let Records { first, copy, then } = records(&self.topics, partition, outputs, |dead| {
            debug_assert!(false, "the clock made a dead letter: {dead:?}");
        });
        // Nothing holds a transaction's commit back for untracked outputs
        // (see `transaction`), so a status and its copy go in together.
        match (first, copy) {
            (Some(first), Some(copy)) => self.sink.send_with(first, copy, token::UNTRACKED, then),
            (Some(first), None) => self.sink.send_then(first, token::UNTRACKED, then),
            (None, _) => then
                .into_iter()
                .for_each(|next| self.sink.send(next, token::UNTRACKED)),
        }
    }

    /// Sends one record's outputs, after every output of the record at
    /// offset `earlier` if given. Fulfillments follow their status: they
    /// are sent once the status is acknowledged (see `sink`).
    fn send(&self, record: &Record, earlier: Option<i64>, outputs: &mut Vec<Output>) {
        let token = token::pack(record.partition, record.offset);
        let records = records(&self.topics, record.partition, outputs, |dead| {
            self.sink.send_dead_letter(
                &self.topics.dlq,
                (&self.topics.orders, record.partition, record.offset),
                record.key.as_deref(),
                record.value.as_deref(),
                &dead,
                token,
            )
        });
        let send = |record: Outgoing, then: Vec<Outgoing>| match earlier {
            Some(earlier) => self.sink.send_after(earlier, record, token, then),
            None => self.sink.send_then(record, token, then),
        };
        // The copy follows its status: a transaction commits only once
        // every follow-up of the records it covers is acknowledged.
        let Records {
            first: status,
            copy,
            then: mut fulfillments,
        } = records;
        if let Some(copy) = copy {
            fulfillments.insert(0, copy);
        }
        match status {
            Some(status) => send(status, fulfillments),
            // A replay: the status is already out; only follow-ups go again.
            None => fulfillments.into_iter().for_each(|f| send(f, Vec::new())),
        }
    }
}

/// What one orders record's outputs become, of orders `partition`.
#[derive(Debug, Default)]
struct Records {
    /// The status (with its changelog header), or the state record of a
    /// change without a status: the rest follows it.
    first: Option<Outgoing>,
    /// The state topic's copy of a status's record: in the transaction
    /// of the status, where there are transactions.
    copy: Option<Outgoing>,
    /// Fulfillments, events and commands.
    then: Vec<Outgoing>,
}

/// The records of one orders record's outputs, of orders `partition`;
/// dead letters go to `dead_letter` (the sink cuts them to fit).
fn records(
    topics: &Topics,
    partition: i32,
    outputs: &mut Vec<Output>,
    mut dead_letter: impl FnMut(crate::order::decode::DeadLetter),
) -> Records {
    let mut status = None;
    let mut copy = None;
    let mut fulfillments = Vec::new();
    for output in outputs.drain(..) {
        match output {
            Output::Status {
                order_id,
                payload,
                record: change,
            } => {
                let header = state::encode_record(partition, &change);
                // The order's record goes twice: in the status's header
                // (the status topic, which a restore without transactions
                // reads whole) and to the compacted state topic (all that
                // a restore with transactions reads). Same partition
                // number in each (see `recovery`).
                copy = Some(keyed(
                    &topics.state,
                    partition,
                    order_id.clone(),
                    header.clone(),
                ));
                status = Some(Outgoing {
                    topic: topics.status.clone(),
                    partition: Some(partition),
                    key: Some(order_id.into_bytes()),
                    payload: Some(payload),
                    headers: Some(owned_headers(&[(state::HEADER, &header)])),
                });
            }
            Output::Fulfillment {
                order_id, payload, ..
            } => {
                fulfillments.push(Outgoing {
                    topic: topics.fulfillments.clone(),
                    partition: None,
                    key: Some(order_id.into_bytes()),
                    payload: Some(payload),
                    headers: None,
                });
            }
            // Part 2: every order's records go to the partition with its
            // `orders` partition's number in each topic.
            Output::Event {
                order_id, payload, ..
            } => fulfillments.push(keyed(&topics.events, partition, order_id, payload)),
            Output::Command {
                order_id, payload, ..
            } => fulfillments.push(keyed(
                &topics.payment_requests,
                partition,
                order_id,
                payload,
            )),
            // A change without a status: the order's new record goes first
            // to the state topic, its events and commands follow it.
            Output::State {
                order_id,
                record: change,
            } => {
                status = Some(keyed(
                    &topics.state,
                    partition,
                    order_id,
                    state::encode_record(partition, &change),
                ));
            }
            Output::DeadLetter(dead) => dead_letter(dead),
        }
    }
    Records {
        first: status,
        copy,
        then: fulfillments,
    }
}

fn keyed(topic: &str, partition: i32, order_id: String, payload: Vec<u8>) -> Outgoing {
    Outgoing {
        topic: topic.to_string(),
        partition: Some(partition),
        key: Some(order_id.into_bytes()),
        payload: Some(payload),
        headers: None,
    }
}

/// Payments and refunds waiting for staff in `books`.
fn in_attention(books: &HashMap<i32, OrderBook>) -> usize {
    books.values().map(OrderBook::in_attention).sum()
}

/// How many records `outputs` become (see `records`): a status also
/// writes its order's record to the state topic.
fn records_of(outputs: &[Output]) -> u32 {
    let statuses = outputs
        .iter()
        .filter(|output| matches!(output, Output::Status { .. }))
        .count();
    u32::try_from(outputs.len() + statuses).unwrap_or(u32::MAX)
}

/// The order an output is about, if any.
fn order_of(output: &Output) -> Option<&str> {
    match output {
        Output::Status { order_id, .. }
        | Output::Fulfillment { order_id, .. }
        | Output::Event { order_id, .. }
        | Output::Command { order_id, .. }
        | Output::State { order_id, .. } => Some(order_id),
        Output::DeadLetter(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Inventory;
    use crate::kafka::sink::{OutputLimits, SinkSetup};
    use crate::order::validate::Limits;
    use rdkafka::ClientConfig;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            partition,
            offset,
            key: Some(b"o-1".to_vec()),
            value: Some(b"{}".to_vec()),
            received: quanta::Instant::now(),
        }
    }

    fn topics() -> Topics {
        Topics {
            orders: "orders".into(),
            inventory: "inventory".into(),
            status: "order-status".into(),
            fulfillments: "fulfillments".into(),
            dlq: "orders-dlq".into(),
            events: "order-events".into(),
            payment_requests: "payment-requests".into(),
            state: "order-state".into(),
        }
    }

    /// An order of `lines` lines of `sku_bytes`-byte SKUs, shipped to one
    /// address whose key has `key_bytes` bytes, padded with a long order ID
    /// until its record is `record_bytes` long.
    fn hostile_order(
        record_bytes: usize,
        lines: usize,
        sku_bytes: usize,
        key_bytes: usize,
    ) -> Vec<u8> {
        let build = |id: &str| {
            let key = "k".repeat(key_bytes);
            let lines: Vec<_> = (0..lines)
                .map(|i| {
                    serde_json::json!({"sku": format!("{i:0>width$}", width = sku_bytes),
                    "quantity": 1, "unit_price_minor": 1, "ship_to": key})
                })
                .collect();
            let total = lines.len();
            serde_json::to_vec(&serde_json::json!({"type": "order_placed", "order_id": id,
                "customer_id": "c", "placed_at": "2026-11-23T12:00:00Z", "currency": "USD",
                "lines": lines,
                "addresses": {key.clone(): {"name": "n", "line1": "l", "city": "c",
                    "postal_code": "p", "country": "US"}},
                "payments": [{"method": "card", "amount_minor": total, "authorization_id": "a"}]}))
            .unwrap()
        };
        let bare = build("o").len();
        build(&"o".repeat(record_bytes.saturating_sub(bare) + 1))
    }

    #[test]
    fn every_status_and_fulfillment_fits_the_checked_output_bound() {
        let record_bytes = 16 * 1024;
        let limits = Limits {
            max_record_bytes: record_bytes,
            max_text_chars: record_bytes,
            ..Limits::default()
        };
        let bound = record_bytes * crate::kafka::OUTPUT_BYTES_PER_RECORD_BYTE
            + crate::kafka::OUTPUT_OVERHEAD_BYTES;
        let mut largest = 0;
        for (lines, sku_bytes, key_bytes) in [
            (1, 1, 1),
            (1, 4_000, 1),
            (100, 100, 1),
            (1, 1, 4_000),
            (10, 1, 1_400),
        ] {
            let order = hostile_order(record_bytes, lines, sku_bytes, key_bytes);
            let value: serde_json::Value = serde_json::from_slice(&order).unwrap();
            let id = value["order_id"].as_str().unwrap().to_string();
            let inventory = Arc::new(Inventory::new());
            for line in value["lines"].as_array().unwrap() {
                inventory
                    .apply(&crate::order::InventoryEvent::StockSet {
                        sku: line["sku"].as_str().unwrap().to_string(),
                        available: 10,
                        prices: [("USD".to_string(), 1)].into_iter().collect(),
                        max_per_customer: None,
                    })
                    .unwrap();
            }
            let engine = Engine::new(inventory, limits.clone());
            let mut book = OrderBook::new(10);
            let cancel =
                serde_json::to_vec(&serde_json::json!({"type": "order_cancelled", "order_id": id}))
                    .unwrap();
            let reject =
                serde_json::to_vec(&serde_json::json!({"type": "order_placed", "order_id": id,
                "lines": "x".repeat(record_bytes.saturating_sub(id.len() + 200))}))
                .unwrap();
            for (offset, value) in [(0, &order), (1, &cancel)] {
                let mut outputs = Vec::new();
                let now = time::OffsetDateTime::now_utc();
                engine.process(
                    &mut book,
                    offset,
                    Some(id.as_bytes()),
                    Some(value),
                    now,
                    &mut outputs,
                );
                assert!(
                    !outputs.is_empty(),
                    "{lines}/{sku_bytes}/{key_bytes}: {outputs:?}"
                );
                let Records { first, copy, then } = records(&topics(), 0, &mut outputs, |_| {});
                for output in first.iter().chain(&copy).chain(&then) {
                    let bytes = output.wire_bytes();
                    largest = largest.max(bytes * 1000 / value.len().max(order.len()));
                    assert!(
                        bytes <= bound,
                        "{lines}/{sku_bytes}/{key_bytes}: {bytes} > {bound}"
                    );
                }
            }
            let mut outputs = Vec::new();
            let mut fresh = OrderBook::new(10);
            engine.process(
                &mut fresh,
                0,
                Some(id.as_bytes()),
                Some(&reject),
                time::OffsetDateTime::now_utc(),
                &mut outputs,
            );
            let status = records(&topics(), 0, &mut outputs, |_| {})
                .first
                .expect("a rejection");
            assert!(
                status.wire_bytes() <= bound,
                "rejection: {}",
                status.wire_bytes()
            );
        }
        println!(
            "largest output per record byte: {}.{:03}",
            largest / 1000,
            largest % 1000
        );
    }

    #[test]
    fn a_status_copies_its_record_to_the_state_topic_and_the_tracker_counts_it() {
        let inventory = Arc::new(Inventory::new());
        inventory
            .apply(&crate::order::InventoryEvent::StockSet {
                sku: "S".into(),
                available: 10,
                prices: [("USD".to_string(), 100)].into_iter().collect(),
                max_per_customer: None,
            })
            .unwrap();
        let engine = Engine::new(inventory, Limits::default());
        let mut book = OrderBook::new(10);
        let order = serde_json::to_vec(&serde_json::json!({"type": "order_placed",
            "order_id": "o-1", "customer_id": "c", "placed_at": "2026-11-23T12:00:00Z",
            "currency": "USD", "lines": [{"sku": "S", "quantity": 2, "unit_price_minor": 100}]}))
        .unwrap();
        let mut outputs = Vec::new();
        engine.process(
            &mut book,
            7,
            Some(b"o-1"),
            Some(&order),
            OffsetDateTime::now_utc(),
            &mut outputs,
        );
        let counted = records_of(&outputs);
        let Records { first, copy, then } = records(&topics(), 3, &mut outputs, |_| {});
        let status = first.expect("a status");
        let copy = copy.expect("the status's record, copied");
        assert_eq!(status.topic, "order-status");
        assert_eq!(
            (copy.topic.as_str(), copy.partition),
            ("order-state", Some(3))
        );
        assert_eq!(copy.key.as_deref(), Some(&b"o-1"[..]));
        let header = status.headers.as_ref().and_then(|headers| {
            use rdkafka::message::Headers;
            headers
                .iter()
                .find(|h| h.key == state::HEADER)
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        });
        assert_eq!(copy.payload, header, "the copy is the status's header");
        let entry = state::decode(copy.payload.as_deref().unwrap()).unwrap();
        assert_eq!((entry.partition, entry.record.offset), (3, 7));
        assert_eq!(
            counted as usize,
            2 + then.len(),
            "the tracker waits for the status, its copy and what follows"
        );
    }

    #[test]
    fn a_record_without_its_partitions_book_stops_the_processor() {
        let tracker = Arc::new(OffsetTracker::new());
        let shutdown = Shutdown::new();
        let mut config = ClientConfig::new();
        // Nothing listens there: nothing is sent in this test.
        config.set("bootstrap.servers", "127.0.0.1:9");
        let sink = Sink::new(
            config,
            SinkSetup {
                orders: tracker.clone(),
                inventory: Arc::new(OffsetTracker::new()),
                limits: OutputLimits {
                    message_max_bytes: 1_000_000,
                    max_dlq_payload_bytes: 900_000,
                },
                transactional: false,
                shutdown: shutdown.clone(),
                shutdown_timeout: Duration::from_secs(1),
                changelog: None,
            },
        )
        .unwrap();
        let shard = Shard {
            id: 0,
            engine: Arc::new(Engine::new(Arc::new(Inventory::new()), Limits::default())),
            sink: Arc::new(sink),
            tracker: tracker.clone(),
            topics: topics(),
            routing: Routing::OFF,
            shutdown: shutdown.clone(),
            retention: false,
        };
        let (queue, work) = crossbeam_channel::unbounded();
        queue.send(Work::Record(record(0, 5))).unwrap();
        queue
            .send(Work::Adopt {
                partition: 0,
                book: Box::new(OrderBook::new(10)),
            })
            .unwrap();
        queue.send(Work::Record(record(0, 6))).unwrap();
        drop(queue);
        std::thread::spawn(move || shard.run(work))
            .join()
            .expect("the shard stops without panicking");
        let failure = shutdown.take_failure().expect("the processor stops");
        assert!(
            failure.to_string().contains("partition 0 (offset 5)"),
            "{failure}"
        );
        assert_eq!(
            tracker.committable(0),
            None,
            "nothing of the partition is committed past the record"
        );
    }
}
