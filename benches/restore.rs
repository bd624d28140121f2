//! Restore time and records read, from the compacted changelog, for one
//! partition with 1, 5 and 10 million orders in retention, on Apache Kafka
//! (tests/common's harness).
//!
//! Each order's history is written to `order-state` as orderflow writes
//! it: its record when it was accepted, then its record when it was
//! cancelled (the engine's own records, encoded by `state::encode_record`),
//! so the topic holds two records per order before compaction. Once the
//! log cleaner has compacted it, `Recovery::restore` (the processor's
//! restore, with transactions: the state topic alone) rebuilds the
//! partition's book, and the run reports the records read, the time, and
//! the resident memory the restored book holds: with the order store on
//! (`engine.store_dir`: the book keeps `engine.dedup_window_orders` orders
//! in memory, every order in the store), which fills the partition's
//! store from the changelog; then, after a tail of changes to 1 % of the
//! orders, again from that store's checkpoint plus the tail (what a
//! restart on the same machine reads); then with the store off. The
//! first restore of a run is in a fresh process, so its resident memory
//! is the book's and the store's alone. For the smallest size,
//! when it is at most a million, the same history on a topic that is not
//! compacted: what a restore read before (every change ever made).
//!
//! With `RESTORE_RETIRED=P` (a percentage, 0 by default: skipped), each
//! size then has P % of its orders retired, as a retention pass retires
//! them: a tombstone per order (they were cancelled, so they hold no units
//! and no retired-units record changes). Once compacted, the changelog
//! holds the live orders' records and the tombstones (Kafka keeps a
//! tombstone for the topic's `delete.retention.ms`, a day by default, after
//! it is cleaned), and the partition is restored from the changelog into
//! an empty store, then from the first store's checkpoint plus the
//! tombstones after it.
//!
//! Only with `--bench`. Run: `cargo bench --bench restore`
//! (`RESTORE_ORDERS=1000000,5000000,10000000` by default;
//! `RESTORE_WINDOW`, the orders kept in memory, by default the config's
//! `engine.dedup_window_orders`; `RESTORE_RETIRED`; `RESTORE_SCATTERED=1`
//! for order IDs scattered over the key space instead of in key order).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use common::{wait_for, Broker, KafkaOptions};
use orderflow::cold::Stores;
use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::Inventory;
use orderflow::kafka::recovery::Recovery;
use orderflow::order::validate::Limits;
use orderflow::order::InventoryEvent;
use orderflow::state;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SIZES: &[usize] = &[1_000_000, 5_000_000, 10_000_000];
/// The largest first size that also gets the control (not compacted).
const CONTROL_MAX_ORDERS: usize = 1_000_000;
/// How long the cleaner may take to compact the largest history.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(1_800);
/// Longer than the topics' `segment.ms` (2 s), so the next record written
/// starts a segment and the one before can be cleaned.
const SEGMENT_ROLL: Duration = Duration::from_secs(3);
/// Orders the restored book keeps in memory: the default window, or
/// `RESTORE_WINDOW`, else the default config's window.
fn window() -> usize {
    std::env::var("RESTORE_WINDOW")
        .ok()
        .map(|n| {
            n.trim()
                .parse()
                .expect("RESTORE_WINDOW: a number of orders")
        })
        .unwrap_or_else(|| {
            orderflow::config::Config::defaults()
                .engine
                .dedup_window_orders
        })
}

/// `RESTORE_RETIRED`: the percentage of each size's orders retired after
/// its restores, 0 (none) unless set.
fn retired_percent() -> usize {
    std::env::var("RESTORE_RETIRED").map_or(0, |n| {
        let percent = n
            .trim()
            .parse()
            .expect("RESTORE_RETIRED: a percentage of orders");
        assert!(percent <= 100, "RESTORE_RETIRED: at most 100");
        percent
    })
}

/// The engine's records of one order: accepted, then cancelled.
fn history() -> [Vec<u8>; 2] {
    let inventory = Arc::new(Inventory::new());
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: "A".into(),
            available: 1_000_000,
            prices: [("EUR".to_string(), 500)].into_iter().collect(),
            max_per_customer: None,
        })
        .unwrap();
    let engine = Engine::new(inventory, Limits::default());
    let mut book = OrderBook::new(10);
    let mut records = Vec::new();
    for (offset, value) in [
        serde_json::json!({"type": "order_placed", "order_id": "o-00000000",
            "customer_id": "c-00000000", "placed_at": "2026-11-23T12:00:00Z",
            "currency": "EUR", "lines": [{"sku": "A", "quantity": 1,
            "unit_price_minor": 500, "ship_to": "home"}],
            "addresses": {"home": {"name": "N", "line1": "L", "city": "Berlin",
                "postal_code": "10115", "country": "DE"}},
            "payments": [{"method": "cash_on_delivery", "amount_minor": 500}]}),
        serde_json::json!({"type": "order_cancelled", "order_id": "o-00000000"}),
    ]
    .iter()
    .enumerate()
    {
        let mut out = Vec::new();
        engine.process(
            &mut book,
            offset as i64,
            Some(b"o-00000000"),
            Some(&serde_json::to_vec(value).unwrap()),
            time::OffsetDateTime::now_utc(),
            &mut out,
        );
        let record = out
            .into_iter()
            .find_map(|output| match output {
                Output::Status { record, .. } => Some(record),
                _ => None,
            })
            .expect("a status");
        records.push(state::encode_record(0, &record));
    }
    records.try_into().unwrap()
}

fn producer(broker: &Broker) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.addr())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    config.create().expect("a producer")
}

/// Writes each order's history (all acceptances, then all cancellations)
/// to partition 0 of `topic`; returns the records written.
fn write_history(broker: &Broker, topic: &str, orders: usize, history: &[Vec<u8>; 2]) -> u64 {
    let producer = producer(broker);
    let mut written = 0;
    for payload in history {
        written += write_records(&producer, topic, orders, Some(payload));
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    written
}

/// Writes tombstones for the first `orders` orders to partition 0 of
/// `topic`, as a retention pass retires them; returns the records written.
fn write_tombstones(broker: &Broker, topic: &str, orders: usize) -> u64 {
    let producer = producer(broker);
    let written = write_records(&producer, topic, orders, None);
    producer.flush(Duration::from_secs(300)).expect("flushed");
    written
}

/// Order `i`'s ID: `o-00000000` onwards, in key order; with
/// `RESTORE_SCATTERED=1` scattered over the key space (splitmix of `i`),
/// as checkout services' IDs are, so the store's flushed tables overlap
/// and compaction merges them.
fn order_key(i: usize) -> String {
    static SCATTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let scattered =
        *SCATTERED.get_or_init(|| std::env::var("RESTORE_SCATTERED").is_ok_and(|v| v == "1"));
    if !scattered {
        return format!("o-{i:08}");
    }
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("o-{:016x}", z ^ (z >> 31))
}

/// Sends one record per order ([`order_key`]) from the first on, `payload` its value
/// (`None`: a tombstone), waiting while the producer's queue is full.
fn write_records(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    orders: usize,
    payload: Option<&Vec<u8>>,
) -> u64 {
    for i in 0..orders {
        let key = order_key(i);
        let mut record = BaseRecord::<[u8], Vec<u8>>::to(topic)
            .partition(0)
            .key(key.as_bytes());
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    orders as u64
}

/// The offset up to which the cleaner has compacted partition 0 of
/// `topic` (its `cleaner-offset-checkpoint` entry).
fn cleaned_up_to(broker: &Broker, topic: &str) -> i64 {
    let text = std::fs::read_to_string(broker.dir.join("data/cleaner-offset-checkpoint"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some(t), Some("0"), Some(offset)) if t == topic => offset.parse().ok(),
                _ => None,
            }
        })
        .next()
        .unwrap_or(0)
}

/// Restores partition 0 from `topic` and prints the records read, the
/// time, and resident memory before and after (the restored books held);
/// with `store`, the partition's local store in that directory (kept
/// between calls: a second restore starts from its checkpoint).
fn restore(broker: &Broker, topic: &str, store: Option<&Path>, label: &str) {
    let store_dir = store.map_or_else(|| "off".to_string(), |dir| dir.display().to_string());
    let flags = vec![
        format!("kafka.brokers={}", broker.addr()),
        format!("topics.state={topic}"),
        format!("engine.dedup_window_orders={}", window()),
        format!("engine.store_dir={store_dir}"),
    ];
    let config = orderflow::config::Config::load(None, &flags).expect("config");
    let inventory = Arc::new(Inventory::new());
    let stores = Stores::new(&store_dir, topic, window());
    let recovery = Recovery::new(&config, inventory, stores)
        .expect("a reader")
        .with_transactions(true);
    let before = support::rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let books = recovery.restore(&[0], &|| false).expect("restored");
    let elapsed = started.elapsed().as_secs_f64();
    let after = support::rss_bytes().unwrap_or(0);
    let book = &books[&0];
    let read = read_counter();
    println!(
        "{label}: read {read} records in {elapsed:.1} s ({:.0} records/s); the book holds {} \
         orders in memory; resident {:.0} -> {:.0} MiB",
        read as f64 / elapsed,
        book.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    drop(books);
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// What the restore counted (`orderflow_restore_records_read_total`),
/// since the last call.
fn read_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let total = RECORDER
        .get()
        .map(|handle| {
            handle
                .render()
                .lines()
                .find_map(|line| {
                    line.strip_prefix(orderflow::telemetry::RESTORE_RECORDS_READ_TOTAL)
                        .and_then(|rest| rest.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0) as u64
        })
        .unwrap_or(0);
    total - SEEN.swap(total, Ordering::AcqRel)
}

static RECORDER: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

fn main() {
    if !support::bench_mode() {
        return;
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a metrics recorder");
    let _ = RECORDER.set(handle);
    let sizes: Vec<usize> = std::env::var("RESTORE_ORDERS")
        .ok()
        .map(|list| list.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    let history = history();
    println!(
        "record bytes: accepted {}, cancelled {}",
        history[0].len(),
        history[1].len()
    );
    let broker = Broker::start_kafka(&KafkaOptions {
        properties: vec![
            "log.cleaner.backoff.ms=500".into(),
            // Room for 10 million keys in one cleaning pass.
            "log.cleaner.dedupe.buffer.size=402653184".into(),
        ],
        ..KafkaOptions::default()
    });
    for (n, &orders) in sizes.iter().enumerate() {
        let topic = format!("order-state-{orders}");
        broker.create_configured_topics(&[(
            &topic,
            1,
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", "2000"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("min.compaction.lag.ms", "0"),
            ],
        )]);
        let started = Instant::now();
        let written = write_history(&broker, &topic, orders, &history);
        println!(
            "{orders} orders: {written} records written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if n == 0 && orders <= CONTROL_MAX_ORDERS {
            // The control: the same history, never compacted.
            let plain = format!("order-state-history-{orders}");
            broker.create_topics(&[(&plain, 1)]);
            write_history(&broker, &plain, orders, &history);
            restore(
                &broker,
                &plain,
                None,
                &format!("{orders} orders, not compacted"),
            );
        }
        let started = Instant::now();
        compact(&broker, &topic, &history);
        println!(
            "{orders} orders: compacted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let store = tempfile::tempdir().unwrap();
        restore(
            &broker,
            &topic,
            Some(store.path()),
            &format!("{orders} orders, store on, from the changelog"),
        );
        // The sale goes on: a tail of changes after the store's checkpoint.
        let tail = write_history(&broker, &topic, (orders / 100).max(1), &history);
        restore(
            &broker,
            &topic,
            Some(store.path()),
            &format!("{orders} orders, from the checkpoint plus a tail of {tail} records"),
        );
        println!(
            "{orders} orders: the store takes {:.0} MiB on disk",
            dir_bytes(store.path()) as f64 / 1048576.0
        );
        restore(
            &broker,
            &topic,
            None,
            &format!("{orders} orders, store off"),
        );
        let retired = orders * retired_percent() / 100;
        if retired > 0 {
            let started = Instant::now();
            write_tombstones(&broker, &topic, retired);
            compact(&broker, &topic, &history);
            println!(
                "{orders} orders: {retired} retired (tombstones), compacted in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let fresh = tempfile::tempdir().unwrap();
            restore(
                &broker,
                &topic,
                Some(fresh.path()),
                &format!("{orders} orders, {retired} retired, store on, from the changelog"),
            );
            restore(
                &broker,
                &topic,
                Some(store.path()),
                &format!("{orders} orders, {retired} retired, from the checkpoint"),
            );
            println!(
                "{orders} orders, {retired} retired: the stores take {:.0} MiB (from the \
                 changelog) and {:.0} MiB (from the checkpoint) on disk",
                dir_bytes(fresh.path()) as f64 / 1048576.0,
                dir_bytes(store.path()) as f64 / 1048576.0
            );
        }
    }
}

/// The end offset of partition 0 of `topic`.
fn end_offset(broker: &Broker, topic: &str) -> i64 {
    broker.end_offsets(topic)[&0]
}

/// Waits until the log cleaner has compacted everything written to
/// partition 0 of `topic` so far (a later segment is written first, so
/// that the last one written can be cleaned).
fn compact(broker: &Broker, topic: &str, history: &[Vec<u8>; 2]) {
    let end = end_offset(broker, topic);
    std::thread::sleep(SEGMENT_ROLL);
    write_history(broker, topic, 1, history);
    wait_for(
        "the cleaner to compact the history",
        COMPACTION_TIMEOUT,
        || (cleaned_up_to(broker, topic) >= end).then_some(()),
    );
}
