//! Exactly-once on Apache Kafka, tested where it holds: the processor
//! binary, with `kafka.transactions = "on"`, (a) killed with SIGKILL
//! mid-sale and started again, (b) one of two instances stopped with
//! SIGSTOP until its partitions move to the other, then continued with
//! SIGCONT: it must be fenced, stop with an error and get nothing more
//! committed, (c) under a broker killed and restarted mid-sale (an outage
//! longer than the transaction timeout: the processor stops on the
//! aborted transaction and its supervisor, the test, starts it again). Each run
//! ends with a `read_committed` reader seeing every `event_id` of statuses
//! and fulfillments, and every dead letter, exactly once; no order
//! without its status, the hot SKU sold out exactly (none oversold); and
//! the group's committed offsets, read from the broker, at the end of
//! every partition.
//!
//! The same runs with `kafka.transactions = "off"` keep the guarantee
//! without transactions: no status twice; follow-ups (fulfillments, dead
//! letters) may repeat, with the same `event_id`. Where a paused instance
//! wakes up after losing its partitions (b), that guarantee does not hold
//! without transactions (docs/architecture.md, "A zombie owner"): the run
//! shows what happens and asserts only what still holds.
//!
//! And where the brokers cannot commit a transaction (a MockCluster
//! without EndTxn, as tansu was), `"auto"` falls back and decides orders,
//! and `"on"` refuses to start.
//!
//! The tests run one at a time ([`common::one_at_a_time`]): session
//! timeouts and a stopped process's partitions moving need the two cores.

mod common;

use common::{free_port, http_get, json, one_at_a_time, wait_for, Broker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaApiKey;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const ORDERS: usize = 6_000;
const HOT_STOCK: i64 = 300;
const NORMAL_SKUS: usize = 20;
/// Every this many orders, one record that is no order event at all.
const MALFORMED_EVERY: usize = 150;
/// The sale is produced in batches of this many records, one batch every
/// `BATCH_PAUSE`: about 4,000 records a second, so the faults below land
/// while orders still arrive.
const BATCH: usize = 200;
const BATCH_PAUSE: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(180);
/// The consumer group session timeout of (a) and (b) (the broker's
/// minimum): a killed or stopped instance loses its partitions after it.
/// The transaction timeout is half of it (3 s), so the coordinator aborts
/// a stopped instance's transaction (3 s plus the harness's 2 s abort
/// check) before its partitions move.
const SHORT_SESSION: &str = "kafka.session_timeout_ms=6000";
/// How long the broker stays down in (c), which runs with the default
/// session timeout (45 s, so a transaction timeout of 22.5 s). With the
/// broker's restart after SIGKILL (log recovery: 18 s measured here) the
/// outage outlasts the transaction timeout: the processor aborts, stops
/// with exit status 1 as documented, and its supervisor (the test)
/// starts it again. Without transactions it rides the outage out.
const BROKER_DOWNTIME: Duration = Duration::from_secs(10);
/// How long a fenced instance may take to stop after SIGCONT.
const FENCED_EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const GROUP: &str = "orderflow";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transactions {
    On,
    Off,
}

impl Transactions {
    fn setting(self) -> &'static str {
        match self {
            Transactions::On => "kafka.transactions=on",
            Transactions::Off => "kafka.transactions=off",
        }
    }
}

/// The processor binary as a child process, its standard error collected.
struct Instance {
    child: Child,
    metrics: String,
    stderr: Arc<Mutex<String>>,
    collector: Option<thread::JoinHandle<()>>,
}

/// Partitions the instance whose metrics listen at `metrics` owns, their
/// state restored (`orderflow_partitions_assigned` less
/// `orderflow_partitions_restoring`).
fn partitions_at(metrics: &str) -> Option<u64> {
    let (_, body) = http_get(metrics, "/metrics")?;
    let gauge = |name: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
    };
    gauge("orderflow_partitions_assigned")?.checked_sub(gauge("orderflow_partitions_restoring")?)
}

impl Instance {
    fn start(brokers: &str, settings: &[&str]) -> Instance {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .args(["run", "--brokers", brokers])
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        let listen = format!("metrics.listen={metrics}");
        // No payment adapter: its results would keep arriving on `orders`
        // after the sale, and these runs audit the decision's outputs and
        // the group's committed offsets against the end of `orders`
        // (tests/payments.rs covers payments through crashes).
        let defaults = [
            listen.as_str(),
            "log.level=warn",
            "payments.adapter=external",
        ];
        for setting in defaults.iter().chain(settings) {
            command.args(["--set", setting]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting orderflow");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let collector = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Instance {
            child,
            metrics,
            stderr,
            collector: Some(collector),
        }
    }

    /// Partitions of `orders` this instance owns, once it serves /metrics.
    fn partitions(&self) -> Option<u64> {
        partitions_at(&self.metrics)
    }

    fn signal(&self, signal: i32) {
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "sending signal {signal}");
    }

    /// Whether the instance logged `text` so far.
    fn logged(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().contains(text)
    }

    /// Its exit status, if it exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits until the process exits; its status and standard error.
    fn wait_exit(mut self, what: &str, timeout: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_for(what, timeout, || self.child.try_wait().unwrap());
        if let Some(collector) = self.collector.take() {
            collector.join().unwrap();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then a clean exit.
    fn stop(self) {
        self.signal(libc::SIGTERM);
        let (status, stderr) = self.wait_exit("orderflow to exit after SIGTERM", TIMEOUT);
        assert!(
            status.success(),
            "orderflow exited with {status}:\n{stderr}"
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let stderr = self.stderr.lock().unwrap();
            let lines: Vec<&str> = stderr.lines().collect();
            eprintln!(
                "orderflow (pid {}) logged, last 40 lines:\n{}",
                self.child.id(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

fn sku(i: usize) -> String {
    format!("SKU-{i}")
}

fn hot(i: usize) -> bool {
    i.is_multiple_of(4)
}

fn cancelled(i: usize) -> bool {
    i % 10 == 5
}

fn order(id: &str, i: usize) -> Value {
    let mut lines = vec![
        json!({"sku": sku(i % NORMAL_SKUS), "quantity": 1 + i % 3, "unit_price_minor": 100, "ship_to": "home"}),
    ];
    if hot(i) {
        lines
            .push(json!({"sku": "HOT", "quantity": 1, "unit_price_minor": 999, "ship_to": "work"}));
    }
    let total = 100 * (1 + i % 3) as i64 + if hot(i) { 999 } else { 0 };
    let address = |name: &str| json!({"name": name, "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"});
    json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{i}"),
           "placed_at": "2026-11-23T12:00:00Z", "currency": "USD", "lines": lines,
           "addresses": {"home": address("Ada 🏠"), "work": address("Ada 🏢")},
           "payments": [{"method": "card", "amount_minor": total, "authorization_id": "a"}]})
}

/// The malformed record sent after order `i` (every `MALFORMED_EVERY`th).
fn malformed(i: usize) -> (Vec<u8>, Vec<u8>) {
    (
        format!("bad-{i}").into_bytes(),
        format!("{{\"type\": \"order_placed\", \"order_id\": \"bad-{i}\"").into_bytes(),
    )
}

/// All records of the sale in send order: orders (a quarter want the hot
/// SKU, whose demand is five times its stock), producer retries,
/// cancellations and malformed records.
fn sale() -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut records = Vec::new();
    for i in 0..ORDERS {
        let id = format!("o-{i}");
        let value = serde_json::to_vec(&order(&id, i)).unwrap();
        records.push((Some(id.clone().into_bytes()), value.clone()));
        if i % 50 == 0 {
            records.push((Some(id.clone().into_bytes()), value));
        }
        if cancelled(i) {
            let cancel = json!({"type": "order_cancelled", "order_id": id});
            records.push((Some(id.into_bytes()), serde_json::to_vec(&cancel).unwrap()));
        }
        if i % MALFORMED_EVERY == 7 {
            let (key, value) = malformed(i);
            records.push((Some(key), value));
        }
    }
    records
}

fn malformed_sent() -> HashSet<Vec<u8>> {
    (0..ORDERS)
        .filter(|i| i % MALFORMED_EVERY == 7)
        .map(|i| malformed(i).0)
        .collect()
}

fn setup() -> Broker {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let mut inventory: Vec<_> = (0..NORMAL_SKUS)
        .map(|i| json!({"type": "stock_set", "sku": sku(i), "available": 1_000_000, "prices": {"USD": 100}}))
        .collect();
    inventory.push(
        json!({"type": "stock_set", "sku": "HOT", "available": HOT_STOCK, "prices": {"USD": 999}}),
    );
    broker.produce("inventory", &common::inventory_records(&inventory));
    broker
}

/// Produces the sale from a thread, paced, so faults hit mid-sale. The
/// producer's retries ride out a broker outage.
fn produce_in_background(broker: &Broker) -> thread::JoinHandle<()> {
    let addr = broker.addr();
    thread::spawn(move || {
        let producer = common::producer_for(&addr);
        for batch in sale().chunks(BATCH) {
            common::produce_with(&producer, "orders", batch);
            thread::sleep(BATCH_PAUSE);
        }
    })
}

/// Waits until a `read_committed` reader of `order-status` has seen
/// statuses of at least `count` distinct orders.
fn wait_for_decisions(broker: &Broker, count: usize) {
    let consumer = broker.committed_reader("order-status");
    let mut orders = HashSet::new();
    wait_for(
        &format!("committed statuses of {count} orders"),
        TIMEOUT,
        || {
            while let Some(message) = consumer.poll(Duration::from_millis(50)) {
                if let Some(key) = message.expect("consuming").key() {
                    orders.insert(key.to_vec());
                }
            }
            (orders.len() >= count).then_some(())
        },
    );
}

/// Sentinels at the end of every partition: once each has its committed
/// status, every record before it was decided and committed.
fn produce_sentinels_and_wait(broker: &Broker) {
    // Keys that murmur2 puts on their partition, or the partition check
    // would dead-letter them (wrong_partition).
    let sentinels: Vec<String> = (0..PARTITIONS)
        .map(|p| common::key_for_partition("sentinel", p, PARTITIONS))
        .collect();
    for (p, id) in (0..PARTITIONS).zip(&sentinels) {
        let value = serde_json::to_vec(&order(id, 1)).unwrap();
        broker.produce_to_partition("orders", p, id.as_bytes(), &value);
    }
    broker.read_until("order-status", TIMEOUT, |messages| {
        let keys: HashSet<&[u8]> = messages.iter().filter_map(|m| m.key()).collect();
        sentinels.iter().all(|id| keys.contains(id.as_bytes()))
    });
}

/// Copies beyond the first of each identity.
fn copies<'a>(ids: impl Iterator<Item = &'a str>) -> (usize, Vec<String>) {
    let mut seen = HashSet::new();
    let mut copied = Vec::new();
    for id in ids {
        if !seen.insert(id) {
            copied.push(id.to_string());
        }
    }
    (copied.len(), copied)
}

/// A dead letter's identity: the record it stands for.
fn dead_letter_id(message: &OwnedMessage) -> String {
    format!(
        "{}@{}",
        common::header(message, "source_partition").expect("source_partition header"),
        common::header(message, "source_offset").expect("source_offset header")
    )
}

/// What the run allows beyond exactly-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allow {
    /// Every status, fulfillment and dead letter exactly once.
    Nothing,
    /// Without transactions: follow-ups (fulfillments, dead letters) may
    /// repeat with the same identity; statuses never.
    FollowUpCopies,
    /// A zombie instance without transactions: statuses may repeat too
    /// (same `event_id`), and two decisions of one order may differ.
    Zombie,
}

/// Checks every promise against what a `read_committed` reader of the
/// output topics sees, and the group's committed offsets on the broker.
fn audit(broker: &Broker, allow: Allow) {
    let statuses = broker.read_to_end("order-status");
    let fulfillments = broker.read_to_end("fulfillments");
    let dead_letters = broker.read_to_end("orders-dlq");
    let status_values: Vec<Value> = statuses.iter().map(json).collect();
    let fulfillment_values: Vec<Value> = fulfillments.iter().map(json).collect();

    let (status_copies, copied_statuses) = copies(
        status_values
            .iter()
            .map(|v| v["event_id"].as_str().expect("a status event_id")),
    );
    let (fulfillment_copies, copied_fulfillments) = copies(
        fulfillment_values
            .iter()
            .map(|v| v["event_id"].as_str().expect("a fulfillment event_id")),
    );
    let dead_ids: Vec<String> = dead_letters.iter().map(dead_letter_id).collect();
    let (dead_copies, _) = copies(dead_ids.iter().map(String::as_str));

    // One decision per order: accepted or rejected, never both.
    let mut decisions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut cancelled_ids: HashSet<String> = HashSet::new();
    for v in &status_values {
        let id = v["order_id"].as_str().unwrap().to_string();
        match v["status"].as_str().unwrap() {
            "cancelled" => {
                cancelled_ids.insert(id);
            }
            status => {
                decisions.entry(id).or_default().insert(status.to_string());
            }
        }
    }
    let missing: Vec<String> = (0..ORDERS)
        .map(|i| format!("o-{i}"))
        .filter(|id| !decisions.contains_key(id))
        .collect();
    let conflicting = decisions.values().filter(|s| s.len() > 1).count();
    let accepted = |i: usize| {
        decisions
            .get(&format!("o-{i}"))
            .is_some_and(|s| s.contains("accepted"))
    };
    let hot_accepted = (0..ORDERS).filter(|i| hot(*i) && accepted(*i)).count() as i64;
    let hot_cancelled = (0..ORDERS)
        .filter(|i| hot(*i) && cancelled(*i) && cancelled_ids.contains(&format!("o-{i}")))
        .count() as i64;
    let hot_sold = hot_accepted - hot_cancelled;
    let wrong_cancels: Vec<&String> = cancelled_ids
        .iter()
        .filter(|id| {
            id.strip_prefix("o-")
                .is_some_and(|n| !accepted(n.parse().unwrap()))
        })
        .collect();
    let missing_cancels = (0..ORDERS)
        .filter(|i| cancelled(*i) && accepted(*i) && !cancelled_ids.contains(&format!("o-{i}")))
        .count();

    // Fulfillments: one requested per address of each accepted order, one
    // cancellation per shipment of a cancelled one, none for rejected.
    let mut requested: HashMap<String, HashSet<String>> = HashMap::new();
    let mut fulfillment_cancels: HashMap<String, HashSet<String>> = HashMap::new();
    for v in &fulfillment_values {
        let id = v["order_id"].as_str().unwrap().to_string();
        let shipment = v["fulfillment_id"].as_str().unwrap().to_string();
        match v["type"].as_str().unwrap() {
            "fulfillment_requested" => requested.entry(id).or_default().insert(shipment),
            _ => fulfillment_cancels.entry(id).or_default().insert(shipment),
        };
    }
    let wrong_fulfillments: Vec<String> = (0..ORDERS)
        .filter_map(|i| {
            let id = format!("o-{i}");
            let shipments = if !accepted(i) {
                0
            } else if hot(i) {
                2
            } else {
                1
            };
            let cancels = if cancelled(i) { shipments } else { 0 };
            let got = (
                requested.get(&id).map_or(0, HashSet::len),
                fulfillment_cancels.get(&id).map_or(0, HashSet::len),
            );
            (got != (shipments, cancels)).then(|| {
                format!("{id}: {got:?} shipments, cancellations; want {shipments}, {cancels}")
            })
        })
        .collect();

    // Dead letters: one for each malformed record, none for anything else.
    let dead_keys: HashSet<Vec<u8>> = dead_letters
        .iter()
        .map(|m| m.key().unwrap_or_default().to_vec())
        .collect();
    let want_dead = malformed_sent();

    // Aborted records: what read_uncommitted sees beyond read_committed.
    let aborted = ["order-status", "fulfillments", "orders-dlq"]
        .iter()
        .map(|topic| broker.read_to_end_uncommitted(topic).len())
        .sum::<usize>()
        - (statuses.len() + fulfillments.len() + dead_letters.len());

    let committed = broker.committed_offsets(GROUP, "orders");
    let ends = broker.end_offsets("orders");

    println!(
        "audit ({allow:?}): statuses={} decided={} status_copies={status_copies} \
         fulfillments={} fulfillment_copies={fulfillment_copies} dead_letters={} \
         dead_letter_copies={dead_copies} aborted_records={aborted} missing={} \
         conflicting={conflicting} hot_sold={hot_sold}/{HOT_STOCK} committed={committed:?} \
         ends={ends:?}",
        statuses.len(),
        decisions.len(),
        fulfillments.len(),
        dead_letters.len(),
        missing.len(),
    );
    println!(
        "copied statuses (first 5): {:?}; copied fulfillments (first 5): {:?}; wrong \
         fulfillments (first 5): {:?}",
        &copied_statuses[..copied_statuses.len().min(5)],
        &copied_fulfillments[..copied_fulfillments.len().min(5)],
        &wrong_fulfillments[..wrong_fulfillments.len().min(5)],
    );

    assert!(missing.is_empty(), "orders without a status: {missing:?}");
    assert!(
        hot_sold <= HOT_STOCK,
        "oversold the hot SKU: {hot_sold} > {HOT_STOCK}"
    );
    assert_eq!(dead_keys, want_dead, "one dead letter per malformed record");
    if allow == Allow::Zombie {
        // Without transactions, once a zombie wrote, a partition's
        // committed offset can end behind the end, or absent (seen
        // 2026-12-02: set back by the zombie's last commit; none at all for
        // one partition; an open question, see the session's note): a
        // restart then reads those records again and the book counts them
        // duplicates. Nothing is lost: every order has its status (above)
        // and no committed offset is past the end.
        for (partition, end) in &ends {
            let at = committed.get(partition).copied().flatten();
            assert!(
                at.is_none_or(|at| at <= *end),
                "partition {partition}: committed {at:?}, past the end {end}"
            );
        }
        return; // what holds without transactions once a zombie wrote
    }
    assert_eq!(
        committed,
        ends.iter().map(|(p, end)| (*p, Some(*end))).collect(),
        "the group's committed offsets are the end of every orders partition"
    );
    assert_eq!(status_copies, 0, "statuses seen twice: {copied_statuses:?}");
    assert_eq!(conflicting, 0, "orders with two different statuses");
    assert!(
        wrong_cancels.is_empty(),
        "cancelled but never accepted: {wrong_cancels:?}"
    );
    assert_eq!(
        missing_cancels, 0,
        "accepted orders whose cancellation is missing"
    );
    assert_eq!(
        hot_sold, HOT_STOCK,
        "demand exceeds stock, so all stock sells"
    );
    assert!(
        wrong_fulfillments.is_empty(),
        "{} orders with the wrong fulfillments",
        wrong_fulfillments.len()
    );
    if allow == Allow::Nothing {
        assert_eq!(
            fulfillment_copies, 0,
            "fulfillments seen twice: {copied_fulfillments:?}"
        );
        assert_eq!(dead_copies, 0, "dead letters seen twice");
    }
}

fn allow_for(transactions: Transactions) -> Allow {
    match transactions {
        Transactions::On => Allow::Nothing,
        Transactions::Off => Allow::FollowUpCopies,
    }
}

/// (a) SIGKILL mid-sale, then a new instance.
fn kill_9_mid_sale(transactions: Transactions) {
    let _serial = one_at_a_time();
    let broker = setup();
    let settings = [transactions.setting(), SHORT_SESSION];
    let first = Instance::start(&broker.addr(), &settings);
    let sale_started = Instant::now();
    let producing = produce_in_background(&broker);
    wait_for_decisions(&broker, ORDERS / 4);
    println!(
        "{transactions:?}: {} decisions {:?} into the sale",
        ORDERS / 4,
        sale_started.elapsed()
    );
    let killed_at = Instant::now();
    first.kill_9();
    // Kafka expires the dead member after its session timeout by itself;
    // the new instance restores what the dead one committed.
    let second = Instance::start(&broker.addr(), &settings);
    producing.join().unwrap();
    println!(
        "{transactions:?}: the sale was produced {:?} after the kill",
        killed_at.elapsed()
    );
    produce_sentinels_and_wait(&broker);
    println!(
        "{transactions:?}: killed with SIGKILL after {} committed decisions; the sale finished \
         {:?} later",
        ORDERS / 4,
        killed_at.elapsed()
    );
    second.stop();
    audit(&broker, allow_for(transactions));
}

#[test]
fn kill_9_mid_sale_with_transactions_commits_everything_once() {
    kill_9_mid_sale(Transactions::On);
}

#[test]
fn kill_9_mid_sale_without_transactions_keeps_one_status_per_order() {
    kill_9_mid_sale(Transactions::Off);
}

/// Waits until `instance` owns `count` partitions.
fn wait_for_partitions(partitions: impl Fn() -> Option<u64>, count: u64, what: &str) {
    wait_for(what, TIMEOUT, || {
        (partitions() == Some(count)).then_some(())
    });
}

/// (b) Two instances share the sale; one is stopped with SIGSTOP until
/// the other owns every partition, then continued.
fn paused_instance_loses_its_partitions(transactions: Transactions) {
    let _serial = one_at_a_time();
    let broker = setup();
    let settings = [
        transactions.setting(),
        SHORT_SESSION,
        "engine.stock_split=partition",
    ];
    let mut paused = Instance::start(&broker.addr(), &settings);
    // The other instance runs as it would in production, supervised: with
    // transactions, a transaction that fails for good stops it, to be
    // restarted from what was committed (docs/architecture.md). A
    // rebalance racing its commit (ILLEGAL_GENERATION, seen in CI on
    // 2026-12-02) no longer does: it rewinds in-process.
    let other = Supervisor::start(
        broker.addr(),
        settings.iter().map(|s| s.to_string()).collect(),
    );
    wait_for("the two instances to share the partitions", TIMEOUT, || {
        let owned = [paused.partitions()?, other.partitions()?];
        (owned.iter().all(|n| *n > 0) && owned.iter().sum::<u64>() == PARTITIONS as u64)
            .then_some(())
    });
    let producing = produce_in_background(&broker);
    wait_for_decisions(&broker, ORDERS / 4);
    paused.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    wait_for_partitions(
        || other.partitions(),
        PARTITIONS as u64,
        "the other instance to own every partition",
    );
    println!(
        "{transactions:?}: SIGSTOP; the other instance owned every partition {:?} later",
        stopped_at.elapsed()
    );
    paused.signal(libc::SIGCONT);
    let paused = match transactions {
        Transactions::On => {
            // Its transaction was aborted by the coordinator and the group
            // moved on: whatever it decided since can never commit. It
            // must notice and not go on with its state: it stops (fenced),
            // or, where only the group refused its offsets, rewinds what it
            // still owns to the committed offsets.
            let noticed = wait_for("the fenced instance to notice", FENCED_EXIT_TIMEOUT, || {
                let rewound = paused.logged(REWOUND).then_some(None);
                rewound.or_else(|| paused.exited().map(Some))
            });
            println!(
                "the continued instance {} {:?} after SIGCONT",
                match noticed {
                    Some(status) => format!("exited with {status}"),
                    None => "rewound to the committed offsets".to_string(),
                },
                stopped_at.elapsed()
            );
            if noticed.is_none() {
                Some(paused)
            } else {
                let (status, stderr) = paused.wait_exit("the fenced instance", TIMEOUT);
                assert!(!status.success(), "the fenced instance exited 0:\n{stderr}");
                assert!(
                    stderr.contains("could not be committed") && stderr.contains("aborted"),
                    "the fenced instance says its transaction was aborted:\n{stderr}"
                );
                None
            }
        }
        Transactions::Off => Some(paused),
    };
    producing.join().unwrap();
    produce_sentinels_and_wait(&broker);
    if let Some(paused) = paused {
        paused.stop();
    }
    let restarts = other.stop();
    println!(
        "{transactions:?}: the other instance was restarted {} times",
        restarts.len()
    );
    if transactions == Transactions::Off {
        assert!(
            restarts.is_empty(),
            "restarted without transactions: {restarts:?}"
        );
    }
    audit(
        &broker,
        match transactions {
            Transactions::On => Allow::Nothing,
            Transactions::Off => Allow::Zombie,
        },
    );
}

#[test]
fn paused_instance_with_transactions_is_fenced_and_commits_nothing_more() {
    paused_instance_loses_its_partitions(Transactions::On);
}

#[test]
fn paused_instance_without_transactions_loses_nothing() {
    paused_instance_loses_its_partitions(Transactions::Off);
}

/// What `orderflow run` says when the group refused a transaction's
/// offsets and it rewound its partitions instead of stopping.
const REWOUND: &str = "a rebalance raced the transaction's commit";

/// What `orderflow run` says when a transaction failed for good and it
/// stopped so that its supervisor restarts it (docs/architecture.md).
const ABORTED: &str = "a transaction could not be committed";

/// Runs one instance the way a supervisor (systemd, Kubernetes) does:
/// started again whenever it exits on its own. Only the documented exit
/// of a failed transaction is accepted; any other exit fails the test.
struct Supervisor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: thread::JoinHandle<Vec<String>>,
    /// Where the instance running now serves its metrics.
    metrics: Arc<Mutex<String>>,
}

impl Supervisor {
    fn start(brokers: String, settings: Vec<String>) -> Supervisor {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let metrics = Arc::new(Mutex::new(String::new()));
        let current = metrics.clone();
        let handle = thread::spawn(move || {
            let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
            let mut restarts = Vec::new();
            let started = Instant::now();
            let mut instance = Instance::start(&brokers, &settings);
            *current.lock().unwrap() = instance.metrics.clone();
            loop {
                if stopping.load(std::sync::atomic::Ordering::Acquire) {
                    instance.stop();
                    return restarts;
                }
                if instance.child.try_wait().unwrap().is_some() {
                    let (status, stderr) = instance.wait_exit("the exited instance", TIMEOUT);
                    let reason = stderr
                        .lines()
                        .rfind(|line| line.contains(ABORTED))
                        .unwrap_or_else(|| {
                            panic!("orderflow exited with {status}, not for a failed transaction:\n{stderr}")
                        })
                        .to_string();
                    assert_eq!(status.code(), Some(1), "{reason}");
                    println!(
                        "the supervisor restarts orderflow {:?} into the run: {reason}",
                        started.elapsed()
                    );
                    restarts.push(reason);
                    instance = Instance::start(&brokers, &settings);
                    *current.lock().unwrap() = instance.metrics.clone();
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Supervisor {
            stop,
            handle,
            metrics,
        }
    }

    /// Partitions the instance running now owns (`None` between two).
    fn partitions(&self) -> Option<u64> {
        let metrics = self.metrics.lock().unwrap().clone();
        (!metrics.is_empty())
            .then(|| partitions_at(&metrics))
            .flatten()
    }

    /// Stops the instance (SIGTERM, a clean exit); the reasons it was
    /// restarted for.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        match self.handle.join() {
            Ok(restarts) => restarts,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// (c) The broker is killed mid-sale and started again on its data, under
/// a supervised processor.
fn broker_restart_mid_sale(transactions: Transactions) {
    let _serial = one_at_a_time();
    let mut broker = setup();
    let processor = Supervisor::start(broker.addr(), vec![transactions.setting().to_string()]);
    let producing = produce_in_background(&broker);
    wait_for_decisions(&broker, ORDERS / 4);
    let killed_at = Instant::now();
    broker.kill();
    // An outage of a fixed length is the point here, not a wait for a condition.
    thread::sleep(BROKER_DOWNTIME);
    broker.restart();
    println!(
        "{transactions:?}: the broker was killed mid-sale and answers again {:?} later",
        killed_at.elapsed()
    );
    producing.join().unwrap();
    produce_sentinels_and_wait(&broker);
    let restarts = processor.stop();
    println!("{transactions:?}: restarted {} times", restarts.len());
    if transactions == Transactions::Off {
        // Without transactions nothing times out: outputs wait in the
        // producer's queue and are sent again until acknowledged.
        assert!(
            restarts.is_empty(),
            "restarted without transactions: {restarts:?}"
        );
    }
    audit(&broker, allow_for(transactions));
}

#[test]
fn broker_restart_mid_sale_with_transactions_commits_everything_once() {
    broker_restart_mid_sale(Transactions::On);
}

#[test]
fn broker_restart_mid_sale_without_transactions_keeps_one_status_per_order() {
    broker_restart_mid_sale(Transactions::Off);
}

/// A broker without transactions, as tansu was: librdkafka's MockCluster
/// with EndTxn taken out of its ApiVersions, so librdkafka refuses to
/// commit a transaction exactly as it did on tansu ("EndTxnRequest
/// (KIP-98) not supported by broker"). `"on"` must refuse to start,
/// naming the setting; `"auto"` must warn, naming it, and decide orders
/// without transactions.
#[test]
fn auto_falls_back_where_the_brokers_cannot_commit_a_transaction() {
    let cluster = MockCluster::new(1).unwrap();
    cluster
        .apiversion(RDKafkaApiKey::EndTxn, None, None)
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [
        ("orders", PARTITIONS),
        ("inventory", 1),
        ("order-status", PARTITIONS),
        ("fulfillments", PARTITIONS),
        ("orders-dlq", 1),
        ("order-events", PARTITIONS),
        ("payment-requests", PARTITIONS),
        ("order-state", PARTITIONS),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let producer = common::producer_for(&brokers);
    let inventory =
        json!({"type": "stock_set", "sku": "SKU-1", "available": 1000, "prices": {"USD": 100}});
    common::produce_with(
        &producer,
        "inventory",
        &common::inventory_records(&[inventory]),
    );
    // The mock broker holds empty fetches for their full wait (see demo).
    let fetch = "kafka.consumer.fetch.wait.max.ms=5";

    let started = Instant::now();
    let on = Instance::start(&brokers, &["kafka.transactions=on", fetch]);
    let (status, stderr) = on.wait_exit("orderflow with transactions on to exit", TIMEOUT);
    assert!(!status.success(), "started without transactions:\n{stderr}");
    assert!(
        stderr.contains("kafka.transactions = \"on\", but the brokers at")
            && stderr.contains("cannot commit a transaction")
            && stderr.contains("not supported by broker"),
        "{stderr}"
    );
    println!("\"on\" refused to start after {:?}", started.elapsed());

    let started = Instant::now();
    let auto = Instance::start(&brokers, &[fetch]);
    let orders: Vec<_> = (0..20)
        .map(|i| {
            let order = json!({"type": "order_placed", "order_id": format!("o-{i}"),
                "customer_id": "c", "placed_at": "2026-11-23T12:00:00Z", "currency": "USD",
                "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 100, "ship_to": "home"}],
                "addresses": {"home": {"name": "Ada", "line1": "1 Main St", "city": "Springfield",
                                       "postal_code": "12345", "country": "US"}},
                "payments": [{"method": "card", "amount_minor": 100, "authorization_id": "a"}]});
            (
                Some(format!("o-{i}").into_bytes()),
                serde_json::to_vec(&order).unwrap(),
            )
        })
        .collect();
    common::produce_with(&producer, "orders", &orders);
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "test-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("order-status", p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let mut accepted = HashSet::new();
    wait_for("a status for every order", TIMEOUT, || {
        while let Some(message) = reader.poll(Duration::from_millis(50)) {
            let v = json(&message.expect("consuming").detach());
            assert_eq!(v["status"], "accepted", "{v}");
            accepted.insert(v["order_id"].as_str().unwrap().to_string());
        }
        (accepted.len() == orders.len()).then_some(())
    });
    println!(
        "\"auto\" fell back and decided {} orders within {:?}",
        accepted.len(),
        started.elapsed()
    );
    auto.signal(libc::SIGTERM);
    let (status, stderr) = auto.wait_exit("orderflow to exit after SIGTERM", TIMEOUT);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stderr.contains(
            "kafka.transactions = \"auto\": the brokers cannot commit a transaction, running without"
        ),
        "{stderr}"
    );
    // Clients before the cluster: closing a consumer whose broker is gone
    // waits for it (about 45 s measured).
    drop(reader);
    drop(producer);
    drop(cluster);
}
