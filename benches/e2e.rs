//! End to end on Apache Kafka (tests/common's harness: one KRaft broker on
//! loopback, a fresh log dir), every system in the same run, over the same
//! preloaded `orders` topic:
//!
//! - **orderflow**: `orderflow::app::run` in this process deciding every
//!   order into its own six output topics (status with its changelog
//!   header, fulfillments, order events, payment commands, order state,
//!   dead letters), read back `read_committed` as downstream consumers
//!   would; with Kafka transactions or without (`E2E_TRANSACTIONS`).
//! - **B**, the baseline: a plain rdkafka passthrough (BaseConsumer +
//!   ThreadedProducer, no decoding, no per-record await) that writes, per
//!   consumed order, the very records orderflow writes for it (same
//!   topics' count, keys, payloads, headers, partitions), looked up by
//!   partition and offset in a plan made by running the engine over the
//!   same records beforehand; same producer settings, and transactions
//!   committed every `engine.commit_interval_ms` with the consumed offsets
//!   when orderflow runs with them. What the broker and client can do at
//!   all with orderflow's output.
//! - **Redis peer**: the usual flash-sale stack: consume, one Lua
//!   check-and-decrement per order (pipelined per poll batch), produce a
//!   status (needs `redis-server`).
//!
//! The systems take turns, round after round. Each one's rate is orders
//! divided by the time from its first output to its last output read back
//! by a reader thread (every output topic counted), so consumer-group joins
//! and start-up are outside it, the same way for all. Then a latency run
//! per transaction mode: orders produced at half of orderflow's measured
//! rate (with that mode, in the same run) onto a fresh topic with
//! `placed_at` = send time, placed → status read back, and the processor's
//! own `orderflow_processing_seconds` histogram read from its metrics
//! recorder.
//!
//! The processor runs with `payments.adapter = "external"` and the longest
//! result timeout: the simulated adapter would write payment results back
//! onto the shared `orders` topic (and the next round's processor would
//! read them), and a timed-out capture would add outputs the plan cannot
//! know of. Every output counted is one the plan has.
//!
//! Only with `--bench` (`cargo test --all-targets` runs this target in test
//! mode, where it returns at once). Run:
//! `cargo bench --bench e2e` (E2E_ORDERS, E2E_ROUNDS, E2E_LATENCY_SECS,
//! E2E_TRANSACTIONS=on|off|both, E2E_LATENCY_LINGER_MS, E2E_B_ACKED=1,
//! E2E_CEILING_RECORDS; orderflow's own settings through its ORDERFLOW__…
//! variables, which B's commit interval follows too).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use common::Broker;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::kafka::sink::{self, OutputLimits};
use orderflow::partitioner::Partitioner;
use orderflow::shutdown::Shutdown;
use orderflow::state;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::IntoOpaque;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Skus;

/// Orders preloaded into `orders` (E2E_ORDERS overrides).
const DEFAULT_ORDERS: usize = 200_000;
/// Rounds of every system taking its turn (E2E_ROUNDS overrides).
const DEFAULT_ROUNDS: usize = 2;
/// How long each latency run sends orders (E2E_LATENCY_SECS overrides).
const DEFAULT_LATENCY_SECS: u64 = 10;
/// Latency run's rate when no round measured one (E2E_ROUNDS=0).
const DEFAULT_LATENCY_RATE: f64 = 400.0;
/// Partitions of `orders` and of every output topic but the dead letters',
/// as in the e2e test.
const PARTITIONS: i32 = 4;
/// Partitions of the dead-letter topics, as the contract's `orders-dlq`.
const DLQ_PARTITIONS: i32 = 1;
/// Shards of the processor: one per core of this machine.
const SHARDS: usize = 2;
/// The longest one system may take to get through every order.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Consumer session timeout of the processor under test: orderflow's
/// default. (On tansu, busy writing a burst of outputs on a shared two-core
/// machine, heartbeats were seen answered more than 10 s late; the
/// rebalance that follows would be measured instead of the processor.)
const SESSION_TIMEOUT_MS: u64 = 45_000;
/// How long the reader's fetches wait for data on the broker. Kafka
/// answers a fetch as soon as data is there, so this adds no latency; it
/// only bounds how often an idle reader asks.
const READER_FETCH_WAIT_MS: &str = "100";
/// How often a reader that is still waiting says how far it got.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Messages the peer takes from the consumer per Redis round trip.
const PEER_BATCH: usize = 256;
/// Producer settings every system uses: orderflow's defaults.
const LINGER_MS: &str = "5";
const COMPRESSION: &str = "lz4";
/// Where the metrics of the processor under test are served.
const METRICS_LISTEN: &str = "127.0.0.1:0";
/// How often the latency generator wakes to send what is due.
const PACING_TICK: Duration = Duration::from_millis(1);
/// Orders the latency run sends first, and waits to see decided, so that
/// the measured ones do not wait for the processor's group join.
const WARMUP_ORDERS: usize = 20;
/// How long the warm-up orders may take to be decided.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Records of Kafka's own ProducerPerformance run (E2E_CEILING_RECORDS
/// overrides; 0 skips it).
const DEFAULT_CEILING_RECORDS: usize = 1_000_000;
/// Orders whose records make the payload file (ProducerPerformance holds
/// the file in its 512 MiB heap, as strings).
const PAYLOAD_FILE_ORDERS: usize = 20_000;
/// How long B's transaction calls (init, offsets, commit) may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// orderflow's result timeout in the bench (the range's top): no capture
/// times out during a run, so no output comes that the plan lacks.
const RESULT_TIMEOUT_MS: u64 = 86_400_000;
/// Dead-letter limits of the plan: orderflow's defaults (librdkafka's
/// `message.max.bytes`, `kafka.max_dlq_payload_bytes`).
const PLAN_LIMITS: OutputLimits = OutputLimits {
    message_max_bytes: 1_000_000,
    max_dlq_payload_bytes: 900_000,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The output topics orderflow writes, in the order of `Kind as usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Status,
    Fulfillment,
    Event,
    Command,
    State,
    DeadLetter,
}

const KINDS: [Kind; 6] = [
    Kind::Status,
    Kind::Fulfillment,
    Kind::Event,
    Kind::Command,
    Kind::State,
    Kind::DeadLetter,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Fulfillment => "fulfillments",
            Kind::Event => "events",
            Kind::Command => "payments",
            Kind::State => "state",
            Kind::DeadLetter => "dlq",
        }
    }

    fn partitions(self) -> i32 {
        match self {
            Kind::DeadLetter => DLQ_PARTITIONS,
            _ => PARTITIONS,
        }
    }
}

/// The topic of `kind` for `system` ("of" or "b") in run `run`.
fn topic(system: &str, kind: Kind, run: &str) -> String {
    format!("{system}-{}-{run}", kind.name())
}

/// With Kafka transactions or without: orderflow's `kafka.transactions`
/// ("on" or "off"; its default "auto" finds them on Kafka) and B's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    On,
    Off,
}

impl Tx {
    fn setting(self) -> &'static str {
        match self {
            Tx::On => "on",
            Tx::Off => "off",
        }
    }

    /// The suffix of a run's name.
    fn tag(self) -> &'static str {
        match self {
            Tx::On => "t",
            Tx::Off => "n",
        }
    }
}

/// One record orderflow writes for an order, as it writes it.
struct Planned {
    kind: Kind,
    /// Written to the order's `orders` partition number (status, events,
    /// commands, state); else the producer's partitioner picks.
    same_partition: bool,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

impl Planned {
    /// `record` (its topic and opaque set) with this record's key,
    /// payload, headers and, where orderflow fixes it, partition.
    fn fill<'a, D: IntoOpaque>(
        &'a self,
        mut record: BaseRecord<'a, [u8], [u8], D>,
        partition: i32,
    ) -> BaseRecord<'a, [u8], [u8], D> {
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        if self.same_partition {
            record = record.partition(partition);
        }
        if let Some(headers) = &self.headers {
            record = record.headers(headers.clone());
        }
        record
    }

    fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// Every record orderflow writes for the preloaded orders, by `orders`
/// partition and offset (the preload is the topics' only, idempotent
/// producer, so offsets follow send order from 0).
struct Plan {
    /// `[partition][offset]`: the order's key and its records.
    outputs: Vec<Vec<(Vec<u8>, Vec<Planned>)>>,
    /// Records per kind.
    counts: [usize; KINDS.len()],
    /// Key and payload bytes per kind.
    bytes: [usize; KINDS.len()],
    headers: usize,
}

impl Plan {
    /// Runs the engine over `records` as orderflow would (one book per
    /// partition of `orders`, by the murmur2 partitioner the preload uses)
    /// and turns each output into its record the way `kafka::worker` does.
    fn new(records: &[support::Record], limits: orderflow::order::validate::Limits) -> Plan {
        let engine = Engine::new(Arc::new(support::inventory(support::CATALOG_SKUS)), limits);
        let mut books: Vec<OrderBook> = (0..PARTITIONS)
            .map(|_| OrderBook::new(records.len()))
            .collect();
        let mut plan = Plan {
            outputs: (0..PARTITIONS).map(|_| Vec::new()).collect(),
            counts: [0; KINDS.len()],
            bytes: [0; KINDS.len()],
            headers: 0,
        };
        let mut out = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        for (key, value) in records {
            let partition = Partitioner::Murmur2
                .partition(key, PARTITIONS as u32)
                .expect("murmur2 places every key") as usize;
            let offset = plan.outputs[partition].len() as i64;
            out.clear();
            engine.process(
                &mut books[partition],
                offset,
                Some(key),
                Some(value),
                now,
                &mut out,
            );
            let partition = partition as i32;
            let planned: Vec<Planned> = out
                .drain(..)
                .flat_map(|output| planned(output, partition, offset, key, value))
                .collect();
            for p in &planned {
                plan.counts[p.kind as usize] += 1;
                plan.bytes[p.kind as usize] += p.bytes();
                plan.headers += p.headers.as_ref().map_or(0, header_bytes);
            }
            plan.outputs[partition as usize].push((key.clone(), planned));
        }
        plan
    }

    /// Writes the payloads of the plan's JSON records (all but the state
    /// topic's, which are binary), one a line, for ProducerPerformance's
    /// `--payload-file`; returns how many and their bytes.
    fn write_payloads(&self, path: &std::path::Path) -> (usize, usize) {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let (mut lines, mut bytes) = (0, 0);
        // The first orders of partition 0, then 1, …: a sample of the mix.
        let orders = self.outputs.iter().flatten().take(PAYLOAD_FILE_ORDERS);
        for (_, planned) in orders {
            for payload in planned
                .iter()
                .filter(|p| p.kind != Kind::State)
                .filter_map(|p| p.payload.as_deref())
                .filter(|p| !p.contains(&b'\n') && std::str::from_utf8(p).is_ok())
            {
                file.write_all(payload).unwrap();
                file.write_all(b"\n").unwrap();
                lines += 1;
                bytes += payload.len();
            }
        }
        file.flush().unwrap();
        (lines, bytes)
    }

    fn records(&self) -> usize {
        self.counts.iter().sum()
    }

    /// The records of the order at `partition`/`offset`, checked against
    /// its key (no JSON read).
    fn of(&self, partition: i32, offset: i64, key: &[u8]) -> &[Planned] {
        let (planned_key, planned) = &self.outputs[partition as usize][offset as usize];
        assert_eq!(planned_key.as_slice(), key, "orders {partition}/{offset}");
        planned
    }

    /// `(topic, partitions, records)` of every kind `system` writes.
    fn expected(&self, system: &str, run: &str) -> Vec<(String, i32, usize)> {
        KINDS
            .iter()
            .filter(|k| self.counts[**k as usize] > 0)
            .map(|k| {
                (
                    topic(system, *k, run),
                    k.partitions(),
                    self.counts[*k as usize],
                )
            })
            .collect()
    }
}

fn header_bytes(headers: &OwnedHeaders) -> usize {
    use rdkafka::message::Headers;
    headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum()
}

/// orderflow's records for one output, as `kafka::worker::records` builds
/// them (dead letters by `kafka::sink::dead_letter` itself): a status
/// also copies its record to the state topic.
fn planned(output: Output, partition: i32, offset: i64, key: &[u8], value: &[u8]) -> Vec<Planned> {
    let keyed = |kind, order_id: String, payload| Planned {
        kind,
        same_partition: true,
        key: Some(order_id.into_bytes()),
        payload: Some(payload),
        headers: None,
    };
    let one = match output {
        Output::Status {
            order_id,
            payload,
            record,
        } => {
            let header = state::encode_record(partition, &record);
            let status = Planned {
                headers: Some(OwnedHeaders::new().insert(Header {
                    key: state::HEADER,
                    value: Some(&header),
                })),
                ..keyed(Kind::Status, order_id.clone(), payload)
            };
            return vec![status, keyed(Kind::State, order_id, header)];
        }
        Output::Fulfillment {
            order_id, payload, ..
        } => Planned {
            same_partition: false,
            ..keyed(Kind::Fulfillment, order_id, payload)
        },
        Output::Event {
            order_id, payload, ..
        } => keyed(Kind::Event, order_id, payload),
        Output::Command {
            order_id, payload, ..
        } => keyed(Kind::Command, order_id, payload),
        Output::State { order_id, record } => keyed(
            Kind::State,
            order_id,
            state::encode_record(partition, &record),
        ),
        Output::DeadLetter(dead) => {
            let record = sink::dead_letter(
                "dlq",
                ("orders", partition, offset),
                Some(key),
                Some(value),
                &dead,
                PLAN_LIMITS,
            );
            Planned {
                kind: Kind::DeadLetter,
                same_partition: false,
                key: record.key,
                payload: record.payload,
                headers: record.headers,
            }
        }
    };
    vec![one]
}

fn producer_config(broker: &Broker, linger_ms: &str) -> rdkafka::ClientConfig {
    let mut config = broker.client_config();
    config
        .set("linger.ms", linger_ms)
        .set("compression.type", COMPRESSION)
        .set("enable.idempotence", "true")
        // As the Java client: the processor's default kafka.orders_partitioner.
        .set("partitioner", "murmur2_random");
    config
}

fn producer(broker: &Broker) -> ThreadedProducer<DefaultProducerContext> {
    producer_config(broker, LINGER_MS).create().unwrap()
}

/// Enqueues without waiting for the broker; waits only while the local
/// queue is full.
fn send_record<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) {
    send_record(producer, BaseRecord::to(topic).key(key).payload(value));
}

/// A consumer of every partition of `topic` from its beginning. Assigned,
/// not subscribed: B and the peer need no group membership (B's group ID
/// is only where its transactions commit the consumed offsets).
fn assigned_consumer(broker: &Broker, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("assigned-{}", common::free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// When a system's outputs were read back: first and last arrival.
struct ReadBack {
    first: Instant,
    last: Instant,
}

/// Reads every partition of each `(topic, partitions, want)` from the
/// beginning, `read_committed` (librdkafka's default), on a thread until
/// `want` records of each arrived; `on_record` sees each one (topic, key,
/// when it was read, its CreateTime in ms since the epoch if it has one).
fn read_back(
    broker: &Broker,
    topics: Vec<(String, i32, usize)>,
    on_record: impl Fn(&str, &[u8], Instant, Option<i64>) + Send + 'static,
) -> std::thread::JoinHandle<ReadBack> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("reader-{}", common::free_port()))
        .set("enable.auto.commit", "false")
        .set(
            "fetch.wait.max.ms",
            std::env::var("E2E_READER_FETCH_WAIT_MS")
                .unwrap_or_else(|_| READER_FETCH_WAIT_MS.to_string()),
        )
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions, _) in &topics {
        for p in 0..*partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    std::thread::spawn(move || {
        let want: Vec<usize> = topics.iter().map(|t| t.2).collect();
        let names: Vec<&str> = topics.iter().map(|t| t.0.as_str()).collect();
        let mut got = vec![0usize; topics.len()];
        let mut first = None;
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut next_report = Instant::now() + PROGRESS_INTERVAL;
        while got.iter().zip(&want).any(|(g, w)| g < w) {
            if Instant::now() >= next_report {
                eprintln!("  reading back {names:?}: {got:?} of {want:?}");
                next_report = Instant::now() + PROGRESS_INTERVAL;
            }
            assert!(
                Instant::now() < deadline,
                "timed out reading {names:?}: {got:?} of {want:?}"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("reading back");
                let now = Instant::now();
                first.get_or_insert(now);
                let index = names.iter().position(|t| *t == message.topic()).unwrap();
                got[index] += 1;
                on_record(
                    message.topic(),
                    message.key().unwrap_or_default(),
                    now,
                    message.timestamp().to_millis(),
                );
            }
        }
        ReadBack {
            first: first.unwrap(),
            last: Instant::now(),
        }
    })
}

fn rate(orders: usize, read: &ReadBack) -> f64 {
    orders as f64 / (read.last - read.first).as_secs_f64()
}

/// B: per consumed order, writes the records the plan has for it (no
/// decoding; a lookup by partition and offset), to as many topics as
/// orderflow. With `Tx::On`, in transactions committed every
/// `commit_interval` with the consumed offsets, as orderflow's.
fn passthrough(
    broker: &Broker,
    plan: &Plan,
    n: usize,
    run: &str,
    tx: Tx,
    commit_interval: Duration,
) -> f64 {
    let topics: Vec<String> = KINDS.iter().map(|k| topic("b", *k, run)).collect();
    let reader = read_back(broker, plan.expected("b", run), |_, _, _, _| {});
    let consumer = assigned_consumer(broker, "orders");
    let mut config = producer_config(broker, LINGER_MS);
    if tx == Tx::On {
        config.set("transactional.id", format!("b-{run}"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
    let group = consumer
        .group_metadata()
        .expect("B's consumer has a group ID");
    if tx == Tx::On {
        producer.init_transactions(TRANSACTION_TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
    }
    // How long each commit takes (offsets, then EndTxn after a flush):
    // with transactions, what a status waits on top of the interval.
    let mut commits = Histogram::<u64>::new(3).unwrap();
    let mut commit = |producer: &ThreadedProducer<DefaultProducerContext>| {
        let started = Instant::now();
        let offsets = consumer.position().unwrap();
        producer
            .send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)
            .unwrap();
        producer.commit_transaction(TRANSACTION_TIMEOUT).unwrap();
        commits
            .record(started.elapsed().as_micros() as u64)
            .unwrap();
    };
    let mut last_commit = Instant::now();
    let mut copied = 0;
    while copied < n {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consuming");
            let partition = message.partition();
            let planned = plan.of(
                partition,
                message.offset(),
                message.key().unwrap_or_default(),
            );
            for out in planned {
                let record = BaseRecord::to(&topics[out.kind as usize]);
                send_record(&producer, out.fill(record, partition));
            }
            copied += 1;
        }
        if tx == Tx::On && last_commit.elapsed() >= commit_interval {
            commit(&producer);
            producer.begin_transaction().unwrap();
            last_commit = Instant::now();
        }
    }
    match tx {
        Tx::On => commit(&producer),
        Tx::Off => producer.flush(RUN_TIMEOUT).unwrap(),
    }
    let rate = rate(n, &reader.join().unwrap());
    if tx == Tx::On {
        eprintln!(
            "  B's {} commits (every {} ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms each",
            commits.len(),
            commit_interval.as_millis(),
            commits.value_at_quantile(0.5) as f64 / 1e3,
            commits.value_at_quantile(0.99) as f64 / 1e3,
            commits.max() as f64 / 1e3
        );
    }
    rate
}

/// Tells B-acked which orders' statuses the broker acknowledged.
struct AckedContext {
    acked: std::sync::mpsc::Sender<(i32, i64)>,
}

impl ClientContext for AckedContext {}

impl ProducerContext for AckedContext {
    /// The `orders` partition and offset of a status; `None` for the
    /// records sent after it.
    type DeliveryOpaque = Box<Option<(i32, i64)>>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        result
            .as_ref()
            .map_err(|e| e.0.clone())
            .expect("B-acked delivery");
        if let Some(order) = *opaque {
            let _ = self.acked.send(order);
        }
    }
}

/// B-acked (`E2E_B_ACKED=1`, without transactions): B, but sending each
/// order's records after its status the way orderflow does, once the
/// status is acknowledged. Tells what that ordering costs apart from the
/// rest of orderflow.
fn passthrough_acked(broker: &Broker, plan: &Plan, n: usize, run: &str) -> f64 {
    let topics: Vec<String> = KINDS.iter().map(|k| topic("ba", *k, run)).collect();
    let reader = read_back(broker, plan.expected("ba", run), |_, _, _, _| {});
    let consumer = assigned_consumer(broker, "orders");
    let (acked, acks) = std::sync::mpsc::channel();
    let producer: ThreadedProducer<AckedContext> = producer_config(broker, LINGER_MS)
        .create_with_context(AckedContext { acked })
        .unwrap();
    let follow_ups = |partition: i32, offset: i64| {
        let (_, planned) = &plan.outputs[partition as usize][offset as usize];
        for out in &planned[1..] {
            let record = BaseRecord::with_opaque_to(&topics[out.kind as usize], Box::new(None));
            send_record(&producer, out.fill(record, partition));
        }
    };
    let (mut consumed, mut followed) = (0, 0);
    while followed < n {
        while let Ok((partition, offset)) = acks.try_recv() {
            follow_ups(partition, offset);
            followed += 1;
        }
        if consumed == n {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Some(message) = consumer.poll(Duration::from_millis(1)) {
            let message = message.expect("consuming");
            let (partition, offset) = (message.partition(), message.offset());
            let planned = plan.of(partition, offset, message.key().unwrap_or_default());
            assert_eq!(planned[0].kind, Kind::Status, "a status first");
            let record = BaseRecord::with_opaque_to(
                &topics[Kind::Status as usize],
                Box::new(Some((partition, offset))),
            );
            send_record(&producer, planned[0].fill(record, partition));
            consumed += 1;
        }
    }
    producer.flush(RUN_TIMEOUT).unwrap();
    rate(n, &reader.join().unwrap())
}

/// The Redis peer end to end: consume, EVALSHA per order (one pipeline
/// per poll batch), produce a status per order (no transactions).
fn redis_peer(broker: &Broker, redis: &support::RedisServer, n: usize, out: &str) -> f64 {
    let (mut conn, script) = redis.connect_with_catalog(support::CATALOG_SKUS);
    let reader = read_back(
        broker,
        vec![(out.to_string(), PARTITIONS, n)],
        |_, _, _, _| {},
    );
    let consumer = assigned_consumer(broker, "orders");
    let producer = producer(broker);
    let mut done = 0;
    let mut batch = Vec::with_capacity(PEER_BATCH);
    while done < n {
        batch.clear();
        let mut wait = Duration::from_millis(100);
        while batch.len() < PEER_BATCH {
            match consumer.poll(wait) {
                Some(message) => batch.push(message.expect("consuming").detach()),
                None => break,
            }
            wait = Duration::ZERO;
        }
        let mut pipe = redis::pipe();
        let mut asked = Vec::with_capacity(batch.len());
        for message in &batch {
            asked.push(support::peer_reserve(
                &mut pipe,
                &script,
                message.payload().unwrap_or_default(),
            ));
        }
        let mut answers: std::vec::IntoIter<i64> = if asked.iter().any(|a| *a) {
            pipe.query::<Vec<i64>>(&mut conn).unwrap().into_iter()
        } else {
            Vec::new().into_iter()
        };
        for (message, asked) in batch.iter().zip(&asked) {
            let accepted = *asked && answers.next() == Some(1);
            let id = String::from_utf8_lossy(message.key().unwrap_or_default());
            let status = if accepted { "accepted" } else { "rejected" };
            let value =
                format!(r#"{{"event_id":"{id}:{status}","order_id":"{id}","status":"{status}"}}"#);
            send(&producer, out, id.as_bytes(), value.as_bytes());
        }
        done += batch.len();
    }
    producer.flush(RUN_TIMEOUT).unwrap();
    rate(n, &reader.join().unwrap())
}

/// orderflow's config for one run: its own group and output topics.
fn processor_config(
    broker: &Broker,
    run: &str,
    orders_topic: &str,
    tx: Tx,
) -> orderflow::config::Config {
    let flags = vec![
        format!("kafka.brokers={}", broker.addr()),
        format!("kafka.group_id=of-{run}"),
        format!("kafka.transactions={}", tx.setting()),
        format!("topics.orders={orders_topic}"),
        format!("topics.status={}", topic("of", Kind::Status, run)),
        format!(
            "topics.fulfillments={}",
            topic("of", Kind::Fulfillment, run)
        ),
        format!("topics.events={}", topic("of", Kind::Event, run)),
        format!(
            "topics.payment_requests={}",
            topic("of", Kind::Command, run)
        ),
        format!("topics.state={}", topic("of", Kind::State, run)),
        format!("topics.dlq={}", topic("of", Kind::DeadLetter, run)),
        format!("engine.shards={SHARDS}"),
        format!("kafka.session_timeout_ms={SESSION_TIMEOUT_MS}"),
        "payments.adapter=external".to_string(),
        format!("payments.result_timeout_ms={RESULT_TIMEOUT_MS}"),
        // Served by the recorder the bench installed once, in-process.
        "metrics.enabled=false".to_string(),
        format!("metrics.listen={METRICS_LISTEN}"),
        "log.level=warn".to_string(),
    ];
    orderflow::config::Config::load(None, &flags).expect("bench config")
}

fn run_orderflow(broker: &Broker, plan: &Plan, n: usize, run: &str, tx: Tx) -> f64 {
    let reader = read_back(broker, plan.expected("of", run), |_, _, _, _| {});
    let config = processor_config(broker, run, "orders", tx);
    let shutdown = Shutdown::new();
    let for_thread = shutdown.clone();
    let processor = std::thread::spawn(move || orderflow::app::run(config, for_thread));
    let read = reader.join().unwrap();
    shutdown.trigger();
    processor.join().unwrap().expect("processor");
    rate(n, &read)
}

/// Every output topic of orderflow and B in `run`, and the peer's.
fn run_topics(run: &str, systems: &[&str]) -> Vec<(String, i32)> {
    let mut topics = Vec::new();
    for system in systems {
        for kind in KINDS {
            topics.push((topic(system, kind, run), kind.partitions()));
        }
    }
    topics
}

/// RFC 3339 UTC with exactly three decimals: the length of the template's
/// placeholder (the contract's format trims trailing zeros).
fn placed_at_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Cumulative bucket counts of `orderflow_processing_seconds`, by bound.
fn processing_buckets(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter(|l| l.starts_with("orderflow_processing_seconds_bucket{le=\""))
        .filter_map(|l| {
            let le = l.split('"').nth(1)?;
            let count = l.split_whitespace().last()?.parse().ok()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count))
        })
        .collect()
}

/// The smallest bucket bound below which `q` of the records fall.
fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    buckets
        .iter()
        .find(|(_, count)| *count as f64 >= q * total as f64)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

/// The records of orders `records`, stamped with `placed_at` = now.
fn stamped(value: &[u8]) -> Vec<u8> {
    // Pre-built with a placeholder time of the same length.
    let placeholder = "2026-11-23T12:00:00.123Z";
    let mut value = value.to_vec();
    let at = value
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .unwrap();
    value[at..at + placeholder.len()].copy_from_slice(placed_at_now().as_bytes());
    value
}

/// Orders at `rate_per_s` for `seconds` onto a fresh `orders-lat-…`;
/// placed → status read back, and the processor's processing-time
/// histogram. The generator's linger is `E2E_LATENCY_LINGER_MS` (the
/// upstream producer's, orderflow's default 5 ms unless set).
fn latency_run(broker: &Broker, rate_per_s: f64, seconds: u64, tx: Tx, metrics: &PrometheusHandle) {
    let run = format!("lat-{}", tx.tag());
    let orders_topic = format!("orders-{run}");
    let total = (rate_per_s * seconds as f64) as usize;
    let records = support::orders(total, "lat", Skus::Uniform, 99);
    let warmup = support::orders(WARMUP_ORDERS, "warm", Skus::Uniform, 98);
    // When each order was sent: a monotonic instant and the wall clock in
    // ms (the unit of record timestamps).
    let sent_at: Arc<Mutex<Vec<Option<SentAt>>>> = Arc::new(Mutex::new(vec![None; total]));
    // placed → read back (µs); placed → status created, created → read (ms).
    let latencies = Arc::new(Mutex::new(
        (0..3)
            .map(|_| Histogram::<u64>::new(3).unwrap())
            .collect::<Vec<_>>(),
    ));
    let warmed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (sent_at, latencies, warmed) = (sent_at.clone(), latencies.clone(), warmed.clone());
        read_back(
            broker,
            vec![(
                topic("of", Kind::Status, &run),
                PARTITIONS,
                total + WARMUP_ORDERS,
            )],
            move |_, key, now, created| {
                let read_ms = unix_ms();
                let id = std::str::from_utf8(key).unwrap();
                let Some(i) = id.strip_prefix("o-lat-") else {
                    warmed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let i: usize = i.parse().unwrap();
                if let Some((sent, sent_ms)) = sent_at.lock().unwrap()[i] {
                    let mut h = latencies.lock().unwrap();
                    h[0].record((now - sent).as_micros() as u64).unwrap();
                    // The status's CreateTime (orderflow's producer, when it
                    // enqueued the status) splits the wait in two.
                    if let Some(created) = created {
                        h[1].record((created - sent_ms).max(0) as u64).unwrap();
                        h[2].record((read_ms - created).max(0) as u64).unwrap();
                    }
                }
            },
        )
    };
    let config = processor_config(broker, &run, &orders_topic, tx);
    let (linger, commit_interval) = (
        config
            .kafka
            .producer
            .get("linger.ms")
            .cloned()
            .unwrap_or_default(),
        config.engine.commit_interval_ms,
    );
    let generator_linger =
        std::env::var("E2E_LATENCY_LINGER_MS").unwrap_or_else(|_| LINGER_MS.to_string());
    let shutdown = Shutdown::new();
    let for_thread = shutdown.clone();
    let processor = std::thread::spawn(move || orderflow::app::run(config, for_thread));
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config(broker, &generator_linger).create().unwrap();
    // Until the processor decides, the measured orders would time its
    // group join and restore.
    for (key, value) in &warmup {
        send(&producer, &orders_topic, key, &stamped(value));
    }
    common::wait_for("the warm-up orders' statuses", WARMUP_TIMEOUT, || {
        (warmed.load(Ordering::Relaxed) >= WARMUP_ORDERS).then_some(())
    });
    let before = processing_buckets(&metrics.render());
    let load_before = load_average();
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate_per_s) as usize).min(total);
        while sent < due {
            let (key, value) = &records[sent];
            let value = stamped(value);
            sent_at.lock().unwrap()[sent] = Some((Instant::now(), unix_ms()));
            send(&producer, &orders_topic, key, &value);
            sent += 1;
        }
        std::thread::sleep(PACING_TICK);
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    reader.join().unwrap();
    let after = processing_buckets(&metrics.render());
    shutdown.trigger();
    processor.join().unwrap().expect("processor");
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, count)| {
            let was = before.iter().find(|b| b.0 == *le).map(|b| b.1).unwrap_or(0);
            (*le, count - was)
        })
        .collect();
    let histograms = latencies.lock().unwrap();
    let h = &histograms[0];
    println!(
        "latency run, transactions {} (commit_interval_ms {commit_interval}): {total} orders at {achieved:.0}/s (asked {rate_per_s:.0}/s), processor linger.ms {linger}, generator linger.ms {generator_linger}; load {load_before} -> {}",
        tx.setting(),
        load_average()
    );
    println!(
        "  placed → status read back: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms  (target p99 ≤ 10 ms)",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
    let (to_created, to_read) = (&histograms[1], &histograms[2]);
    println!(
        "  split by the status's CreateTime (ms): placed → status enqueued by orderflow p50 {} p99 {} p99.9 {}; enqueued → read back p50 {} p99 {} p99.9 {}",
        to_created.value_at_quantile(0.5),
        to_created.value_at_quantile(0.99),
        to_created.value_at_quantile(0.999),
        to_read.value_at_quantile(0.5),
        to_read.value_at_quantile(0.99),
        to_read.value_at_quantile(0.999)
    );
    println!(
        "  orderflow_processing_seconds (record received → outputs enqueued, bucket bounds): p50 ≤ {} µs, p99 ≤ {} µs  (target p99 ≤ 100 µs)",
        bucket_quantile(&diff, 0.5) * 1e6,
        bucket_quantile(&diff, 0.99) * 1e6
    );
}

/// When a latency order was sent: a monotonic instant, and the wall clock
/// in ms since the epoch to compare with its status's CreateTime.
type SentAt = (Instant, i64);

/// The wall clock in ms since the epoch, as record timestamps have it.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// CPU time (user and system) this process has used, every thread.
fn process_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable rusage for the call's duration.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF)");
    // SAFETY: getrusage filled it (rc 0); zeroed is valid for it anyway.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The machine's 1, 5 and 15 minute load averages, as `uptime` shows them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The transaction modes of `E2E_TRANSACTIONS`: "on" (orderflow's
/// default on Kafka), "off", or "both" (each round runs both).
fn modes() -> Vec<Tx> {
    match std::env::var("E2E_TRANSACTIONS").as_deref() {
        Ok("off") => vec![Tx::Off],
        Ok("both") => vec![Tx::On, Tx::Off],
        Ok("on") | Err(_) => vec![Tx::On],
        Ok(other) => panic!("E2E_TRANSACTIONS: on, off or both, found {other:?}"),
    }
}

fn main() {
    if !support::bench_mode() {
        println!("e2e: skipped in test mode (run `cargo bench --bench e2e`)");
        return;
    }
    let n: usize = env_or("E2E_ORDERS", DEFAULT_ORDERS);
    let rounds: usize = env_or("E2E_ROUNDS", DEFAULT_ROUNDS);
    let latency_secs: u64 = env_or("E2E_LATENCY_SECS", DEFAULT_LATENCY_SECS);
    let modes = modes();
    let b_acked = std::env::var("E2E_B_ACKED").is_ok_and(|v| v == "1");
    orderflow::app::init_logging(&orderflow::config::LogConfig {
        level: std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
        format: orderflow::config::LogFormat::Text,
    });

    // Metrics on for every orderflow run, as in production: the telemetry
    // calls are part of the hot path being measured.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics_port = common::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    // Rendered in-process: the exposition text is what /metrics would serve.
    let metrics = runtime.block_on(async {
        let config = orderflow::config::MetricsConfig {
            enabled: true,
            listen: metrics_addr.clone(),
            watched_skus: Vec::new(),
        };
        let readiness = orderflow::telemetry::Readiness::new(&orderflow::shutdown::Shutdown::new());
        orderflow::app::serve_metrics(&config, &readiness)
            .expect("installing the metrics recorder")
            .expect("metrics are enabled")
    });

    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut runs: Vec<(String, Tx)> = Vec::new();
    for r in 0..rounds {
        for tx in &modes {
            let run = format!("r{r}{}", tx.tag());
            topics.extend(run_topics(&run, &["of", "b", "ba"]));
            runs.push((run, *tx));
        }
        topics.push((format!("peer-r{r}"), PARTITIONS));
    }
    if latency_secs > 0 {
        for tx in &modes {
            let run = format!("lat-{}", tx.tag());
            topics.push((format!("orders-{run}"), PARTITIONS));
            topics.extend(run_topics(&run, &["of"]));
        }
    }
    // The state topics are changelogs: compacted, as the processor requires.
    let borrowed: Vec<(&str, i32, common::TopicConfigs<'_>)> = topics
        .iter()
        .map(|(t, p)| {
            let configs = if t.contains("-state-") {
                common::COMPACTED
            } else {
                &[]
            };
            (t.as_str(), *p, configs)
        })
        .collect();
    broker.create_configured_topics(&borrowed);

    let inventory: Vec<(Option<Vec<u8>>, Vec<u8>)> = support::catalog(support::CATALOG_SKUS)
        .iter()
        .map(|e| {
            (
                Some(e.sku().as_bytes().to_vec()),
                serde_json::to_vec(e).unwrap(),
            )
        })
        .collect();
    broker.produce("inventory", &inventory);
    let records = support::orders(n, "e2e", Skus::Uniform, 7);
    let defaults = orderflow::config::Config::defaults();
    let plan = Plan::new(&records, defaults.limits.clone());
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    let preload = Instant::now();
    let loader = producer(&broker);
    for (key, value) in &records {
        send(&loader, "orders", key, value);
    }
    loader.flush(RUN_TIMEOUT).unwrap();
    println!(
        "preloaded {n} orders ({} bytes on average) in {:.1} s; {PARTITIONS} partitions, Apache Kafka",
        bytes / n,
        preload.elapsed().as_secs_f64()
    );
    let total: usize = plan.bytes.iter().sum();
    println!(
        "orderflow's records for them (the plan B writes): {} records, {:.2} per order, {} bytes of key and payload on average, {} of headers",
        plan.records(),
        plan.records() as f64 / n as f64,
        total / plan.records().max(1),
        plan.headers / plan.records().max(1)
    );
    for kind in KINDS {
        let count = plan.counts[kind as usize];
        println!(
            "  {:<12} {count:>8} records, {:>5} bytes on average",
            kind.name(),
            plan.bytes[kind as usize] / count.max(1)
        );
    }
    drop(records);
    let redis = support::RedisServer::start();
    if redis.is_none() {
        eprintln!("redis-server not found: skipping the Redis peer (apt-get install redis-server)");
    }
    let commit_interval = Duration::from_millis(
        processor_config(&broker, "b", "orders", Tx::On)
            .engine
            .commit_interval_ms,
    );

    // Per mode: rates and per-round ratios.
    let mut of: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut b: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut of_vs_b: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let (mut peer, mut of_vs_peer) = (vec![], vec![]);
    eprintln!("rounds start");
    for r in 0..rounds {
        let mut first_of = None;
        for (m, tx) in modes.iter().enumerate() {
            let run = format!("r{r}{}", tx.tag());
            let load = load_average();
            // orderflow first: its consumer group is the only one on the broker.
            let cpu = process_cpu_time();
            let ours = run_orderflow(&broker, &plan, n, &run, *tx);
            let our_cpu = process_cpu_time() - cpu;
            // A mark for profilers watching the output: B starts now.
            eprintln!("{run}: orderflow done, B next");
            let cpu = process_cpu_time();
            let pass = passthrough(&broker, &plan, n, &run, *tx, commit_interval);
            let pass_cpu = process_cpu_time() - cpu;
            if b_acked && *tx == Tx::Off {
                let cpu = process_cpu_time();
                let acked = passthrough_acked(&broker, &plan, n, &run);
                println!(
                    "{run}: B-acked (follow-ups after the status's ack) {acked:>8.0} orders/s  orderflow/B-acked {:.3}  B-acked/B {:.3}  (CPU per order {:.1} µs; load {})",
                    ours / acked,
                    acked / pass,
                    (process_cpu_time() - cpu).as_secs_f64() * 1e6 / n as f64,
                    load_average()
                );
            }
            println!(
                "{run} (transactions {}): B {pass:>8.0} orders/s  orderflow {ours:>8.0} orders/s  orderflow/B {:.3}  (load {load} -> {}; CPU of this process per order, start-up and reader included: orderflow {:.1} µs, B {:.1} µs)",
                tx.setting(),
                ours / pass,
                load_average(),
                our_cpu.as_secs_f64() * 1e6 / n as f64,
                pass_cpu.as_secs_f64() * 1e6 / n as f64
            );
            of[m].push(ours);
            b[m].push(pass);
            of_vs_b[m].push(ours / pass);
            first_of.get_or_insert(ours);
        }
        if let Some(redis) = &redis {
            let load = load_average();
            let theirs = redis_peer(&broker, redis, n, &format!("peer-r{r}"));
            let ours = first_of.unwrap_or(f64::NAN);
            println!(
                "r{r}: redis peer {theirs:>8.0} orders/s  orderflow (transactions {})/redis {:.2}  (load {load} -> {})",
                modes[0].setting(),
                ours / theirs,
                load_average()
            );
            peer.push(theirs);
            of_vs_peer.push(ours / theirs);
        }
    }
    let mut latency_rates =
        vec![env_or("E2E_LATENCY_RATE", DEFAULT_LATENCY_RATE) * 2.0; modes.len()];
    if rounds > 0 {
        println!(
            "medians over {rounds} rounds (ratios from one round each, systems back to back):"
        );
        for (m, tx) in modes.iter().enumerate() {
            latency_rates[m] = support::median(&mut of[m]);
            println!(
                "  transactions {:<3}: B {:>9.0} orders/s  orderflow {:>9.0} orders/s  orderflow/B {:.3}  (target ≥ 0.85)",
                tx.setting(),
                support::median(&mut b[m]),
                latency_rates[m],
                support::median(&mut of_vs_b[m])
            );
        }
        if !peer.is_empty() {
            println!(
                "  redis peer {:>9.0} orders/s  orderflow/redis {:.2}  (target > 1)",
                support::median(&mut peer),
                support::median(&mut of_vs_peer)
            );
        }
    }
    if latency_secs > 0 {
        for (m, tx) in modes.iter().enumerate() {
            latency_run(&broker, latency_rates[m] / 2.0, latency_secs, *tx, &metrics);
        }
    }
    let ceiling: usize = env_or("E2E_CEILING_RECORDS", DEFAULT_CEILING_RECORDS);
    if ceiling > 0 {
        kafka_ceiling(&broker, &plan, ceiling);
    }
}

/// Kafka's own tools on this broker (scripts/kafka-perf.sh): records of
/// orderflow's output mix from a payload file, orderflow's producer
/// settings.
fn kafka_ceiling(broker: &Broker, plan: &Plan, records: usize) {
    let path = std::env::temp_dir().join(format!("e2e-payloads-{}.txt", std::process::id()));
    let (lines, bytes) = plan.write_payloads(&path);
    println!(
        "Kafka's ceiling: ProducerPerformance / ConsumerPerformance, {records} records picked from {lines} of orderflow's JSON records ({} bytes on average), load {}",
        bytes / lines.max(1),
        load_average()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-perf.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(["--bootstrap", &broker.addr(), "--topic", "perf"])
        .args(["--records", &records.to_string()])
        .arg("--payload-file")
        .arg(&path)
        .status()
        .expect("running scripts/kafka-perf.sh");
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "scripts/kafka-perf.sh failed: {status}");
    println!("  (load after: {})", load_average());
}
