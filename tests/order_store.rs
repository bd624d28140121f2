//! The partitions' local order stores (`engine.store_dir`, see
//! `src/cold.rs`), on Apache Kafka: orders past the dedup window leave
//! memory and are found in the store again, so an order is decided once
//! however late its duplicate comes, and a cancellation of an old order
//! gives its units back. A restart after SIGKILL with the store's files
//! kept starts from the store's checkpoint and reads only the changelog
//! after it; with them deleted, it restores from the changelog; neither
//! decides an old order twice.
//!
//! The changelog: every change of an order writes its record to
//! `order-state` (compacted by order ID), so a restore with transactions
//! reads about one record per order, however many changes the sale made,
//! instead of every status ever written. Without transactions a restore
//! reads the status topic too (a status may lack its copy after a crash):
//! the control.

mod common;

use common::{
    free_port, http_get, inventory_records, json, wait_for, Broker, KafkaOptions, Processor,
};
use orderflow::cold::Stores;
use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
/// Orders each partition keeps in memory: the test's, small on purpose.
const WINDOW: usize = 50;
/// Units of the one SKU: never the constraint.
const STOCK: i64 = 100_000;
/// Where the processor keeps its stores under `engine.store_dir`: its
/// consumer group and state topic (the defaults).
const NAMESPACE: &str = "orderflow.order-state";

/// An order of one unit, cash on delivery: no capture, so nothing keeps
/// it in memory (orders waiting on the gateway stay there).
fn order(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "order_placed", "order_id": id, "customer_id": format!("c-{id}"),
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR",
        "lines": [{"sku": "A", "quantity": 1, "unit_price_minor": 500, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë Ørsted 🏠", "line1": "Hauptstraße 1",
                               "city": "Berlin", "postal_code": "10115", "country": "DE"}},
        "payments": [{"method": "cash_on_delivery", "amount_minor": 500}]}))
    .unwrap()
}

fn cancel(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "order_cancelled", "order_id": id})).unwrap()
}

fn record(id: &str, value: Vec<u8>) -> (Option<Vec<u8>>, Vec<u8>) {
    (Some(id.as_bytes().to_vec()), value)
}

fn key_of(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}

/// Statuses by order ID, in the order they were written.
fn statuses(broker: &Broker) -> HashMap<String, Vec<String>> {
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for message in broker.read_to_end("order-status") {
        let status = json(&message)["status"].as_str().unwrap_or("?").to_string();
        by_id.entry(key_of(&message)).or_default().push(status);
    }
    by_id
}

fn broker_with_stock() -> Broker {
    broker_with_partitions(1)
}

fn broker_with_partitions(partitions: i32) -> Broker {
    let broker = Broker::start();
    broker.create_contract_topics(partitions);
    broker.produce(
        "inventory",
        &inventory_records(&[
            json!({"type": "stock_set", "sku": "A", "available": STOCK, "prices": {"EUR": 500}}),
        ]),
    );
    broker
}

/// Waits until `id` has a status.
fn wait_for_status(broker: &Broker, id: &str) {
    broker.read_until("order-status", TIMEOUT, |messages| {
        messages.iter().any(|m| key_of(m) == id)
    });
}

/// One order, then three windows of others, then the order again and its
/// cancellation: the statuses of the first order.
fn late_duplicate_and_cancel(store_dir: &str) -> Vec<String> {
    let broker = broker_with_stock();
    let window = format!("engine.dedup_window_orders={WINDOW}");
    let store = format!("engine.store_dir={store_dir}");
    let processor = Processor::start(&broker, &[&window, &store, "payments.adapter=external"]);
    let mut records = vec![record("o-first", order("o-first"))];
    for i in 0..3 * WINDOW {
        let id = format!("o-{i}");
        records.push(record(&id, order(&id)));
    }
    records.push(record("o-first", order("o-first")));
    records.push(record("o-first", cancel("o-first")));
    records.push(record("o-sentinel", order("o-sentinel")));
    broker.produce("orders", &records);
    wait_for_status(&broker, "o-sentinel");
    processor.stop();
    let mut by_id = statuses(&broker);
    for i in 0..3 * WINDOW {
        assert_eq!(by_id[&format!("o-{i}")], ["accepted"], "o-{i}");
    }
    by_id.remove("o-first").unwrap_or_default()
}

#[test]
fn a_duplicate_sent_after_three_times_the_window_gets_no_second_status() {
    let base = tempfile::tempdir().unwrap();
    let with_store = late_duplicate_and_cancel(base.path().to_str().unwrap());
    assert_eq!(
        with_store,
        ["accepted", "cancelled"],
        "decided once, and the cancellation found it"
    );
    // The stopped processor's store stays, vouching for a prefix of the
    // changelog: the next start on this machine begins there.
    let stores = Stores::new(base.path().to_str().unwrap(), NAMESPACE, WINDOW).unwrap();
    let store = stores.open(0).unwrap();
    assert!(store.checkpoint().is_some(), "a checkpoint at stop");
    assert!(!store.is_empty(), "the committed records are kept");

    // Without the store the window forgot the order: what the store is for.
    let without = late_duplicate_and_cancel("off");
    assert_eq!(without, ["accepted", "accepted", "cancelled"]);
}

/// A child process, killed (SIGKILL) when dropped: also when an
/// assertion fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `orderflow run` as a child process, with `sets` (`section.key=value`)
/// after the test's own.
fn spawn(broker: &Broker, sets: &[&str]) -> Killed {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command.args(["run", "--brokers", &broker.addr()]);
    for set in [
        "kafka.session_timeout_ms=6000",
        "log.level=warn",
        "metrics.enabled=false",
        "payments.adapter=external",
    ]
    .iter()
    .chain(sets)
    {
        command.args(["--set", set]);
    }
    Killed(
        command
            .stdin(Stdio::null())
            .spawn()
            .expect("starting orderflow"),
    )
}

/// A process with its stores under `store_dir`, its metrics at `metrics`,
/// with Kafka transactions or without.
fn spawn_with_store(
    broker: &Broker,
    store_dir: &Path,
    metrics: &str,
    transactions: bool,
) -> Killed {
    let window = format!("engine.dedup_window_orders={WINDOW}");
    let store = format!("engine.store_dir={}", store_dir.display());
    let listen = format!("metrics.listen={metrics}");
    let mode = if transactions {
        "kafka.transactions=on"
    } else {
        "kafka.transactions=off"
    };
    spawn(
        broker,
        &[&window, &store, "metrics.enabled=true", &listen, mode],
    )
}

/// A counter of /metrics at `metrics`, once the restore has finished.
fn restore_counter(metrics: &str, name: &str) -> u64 {
    wait_for("the restore to finish", TIMEOUT, || {
        let (_, body) = http_get(metrics, "/metrics")?;
        // Both counters appear together, when the restore has finished.
        body.lines()
            .find(|line| line.starts_with("orderflow_restore_records_local_total "))?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
    })
}

/// Orders of the SIGKILL tests: many past the window, so most live only
/// in the store.
const KILL_ORDERS: usize = WINDOW + 4 * orderflow::cold::WRITE_BATCH;

/// A sale of [`KILL_ORDERS`] orders decided by a process that is then
/// killed with SIGKILL; `between` runs after the kill; a second process
/// then gets every order again, a cancellation of the oldest and a
/// sentinel. Returns the second process's restore: records read from
/// Kafka and from the local store.
fn kill_and_restart(transactions: bool, between: impl FnOnce(&Path)) -> (u64, u64) {
    let broker = broker_with_stock();
    let base = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let ids: Vec<String> = (0..KILL_ORDERS).map(|i| format!("o-{i}")).collect();

    let first = spawn_with_store(&broker, base.path(), &metrics, transactions);
    let mut records: Vec<_> = ids.iter().map(|id| record(id, order(id))).collect();
    records.push(record("o-sentinel-1", order("o-sentinel-1")));
    broker.produce("orders", &records);
    wait_for_status(&broker, "o-sentinel-1");
    // The kill comes once the store's writer has written every copy (it
    // writes them after their commit, on its own thread).
    let copies = KILL_ORDERS as u64 + 1;
    wait_for("the store to hold every copy", TIMEOUT, || {
        let (_, body) = http_get(&metrics, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix("orderflow_store_records_written_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|written| *written as u64 >= copies)
    });
    drop(first); // SIGKILL
    between(base.path());

    let started = std::time::Instant::now();
    let second = spawn_with_store(&broker, base.path(), &metrics, transactions);
    let read = restore_counter(&metrics, "orderflow_restore_records_read_total");
    let local = restore_counter(&metrics, "orderflow_restore_records_local_total");
    println!(
        "restart after SIGKILL: restored in {:.1} s (process start included), {read} records \
         read from Kafka, {local} from the local store",
        started.elapsed().as_secs_f64()
    );
    // Every order again (older than the window), a cancellation of the
    // oldest, then a sentinel.
    let mut records: Vec<_> = ids.iter().map(|id| record(id, order(id))).collect();
    records.push(record(&ids[0], cancel(&ids[0])));
    records.push(record("o-sentinel-2", order("o-sentinel-2")));
    broker.produce("orders", &records);
    wait_for_status(&broker, "o-sentinel-2");
    drop(second);

    let by_id = statuses(&broker);
    assert_eq!(by_id[&ids[0]], ["accepted", "cancelled"], "{}", ids[0]);
    for id in &ids[1..] {
        assert_eq!(by_id[id], ["accepted"], "{id} decided once");
    }
    (read, local)
}

#[test]
fn after_sigkill_with_the_stores_files_deleted_the_partition_is_restored_from_the_changelog() {
    let (read, local) = kill_and_restart(true, |base| {
        let store = base.join(NAMESPACE).join("p0");
        assert!(
            store.exists(),
            "the killed process's store at {}",
            store.display()
        );
        std::fs::remove_dir_all(base).unwrap();
    });
    assert_eq!(local, 0, "no store to start from");
    assert!(
        read > KILL_ORDERS as u64,
        "the changelog read whole: {read} records for {KILL_ORDERS} orders"
    );
}

#[test]
fn after_sigkill_with_the_stores_files_kept_the_restore_starts_from_the_checkpoint() {
    let (read, local) = kill_and_restart(true, |_| {});
    // Killed once the store held every copy: nothing is read from Kafka
    // (a restore's count of 0 is its own: the counters appear together).
    assert_eq!(local, KILL_ORDERS as u64 + 1, "every order from the store");
    assert_eq!(read, 0, "nothing after the checkpoint to read from Kafka");
}

#[test]
fn without_transactions_a_restart_after_sigkill_reads_the_statuses_then_the_store_and_decides_nothing_twice(
) {
    // Without transactions a status may lack its copy after a crash: the
    // restore reads the status topic whole, the store, and the changelog
    // after the checkpoint.
    let (read, local) = kill_and_restart(false, |_| {});
    assert_eq!(local, KILL_ORDERS as u64 + 1, "every order from the store");
    assert!(
        read > KILL_ORDERS as u64,
        "{read} records read from Kafka: the statuses too"
    );
}

/// Waits until every one of `ids` has a status.
fn wait_for_statuses(broker: &Broker, ids: &[String]) {
    broker.read_until("order-status", TIMEOUT, |messages| {
        let seen: std::collections::HashSet<String> = messages.iter().map(key_of).collect();
        ids.iter().all(|id| seen.contains(id))
    });
}

#[test]
fn partitions_moving_between_two_processes_on_one_machine_and_back_decide_nothing_twice() {
    // Two processes share the machine's store directory: a partition
    // handed over opens the store its last owner closed (or, while that
    // one still holds it, a scratch store), and comes back after a
    // SIGKILL to the first process, from its store's checkpoint.
    const BATCH: usize = 300;
    let broker = broker_with_partitions(2);
    let base = tempfile::tempdir().unwrap();
    let (metrics_a, metrics_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let batch = |n: usize| -> Vec<String> { (0..BATCH).map(|i| format!("o-{n}-{i}")).collect() };
    // Two instances of one sale: each partition sells its quota.
    let instance = |metrics: &str| {
        let window = format!("engine.dedup_window_orders={WINDOW}");
        let store = format!("engine.store_dir={}", base.path().display());
        let listen = format!("metrics.listen={metrics}");
        spawn(
            &broker,
            &[
                &window,
                &store,
                "metrics.enabled=true",
                &listen,
                "kafka.transactions=on",
                "engine.stock_split=partition",
            ],
        )
    };
    let placed =
        |ids: &[String]| -> Vec<_> { ids.iter().map(|id| record(id, order(id))).collect() };

    let a = instance(&metrics_a);
    let first = batch(1);
    broker.produce("orders", &placed(&first));
    wait_for_statuses(&broker, &first);

    // B joins: one partition moves to it.
    let b = instance(&metrics_b);
    let local_b = restore_counter(&metrics_b, "orderflow_restore_records_local_total");
    let second = batch(2);
    let mut records = placed(&second);
    records.extend(placed(&first)); // duplicates, on both owners
    broker.produce("orders", &records);
    wait_for_statuses(&broker, &second);

    // B is killed: A takes its partition back, from the store B left.
    drop(b);
    let third = batch(3);
    let mut records = placed(&third);
    records.extend(placed(&first));
    records.extend(placed(&second));
    broker.produce("orders", &records);
    wait_for_statuses(&broker, &third);
    drop(a);

    println!("B restored {local_b} orders from the machine's store when it joined");
    let by_id = statuses(&broker);
    for id in first.iter().chain(&second).chain(&third) {
        assert_eq!(by_id[id], ["accepted"], "{id} decided once");
    }
}

/// Orders of the changelog test's sale; each is placed, then cancelled:
/// two changes.
const SALE_ORDERS: usize = 300;
/// Records a compacted read may hold besides one per order: the newest
/// segments, which the cleaner leaves alone (the sentinels' records).
const ACTIVE_SLACK: u64 = 10;

/// The records a finished restore read, from /metrics.
fn restored_records(metrics: &str) -> u64 {
    wait_for("the restore to finish", TIMEOUT, || {
        let (_, body) = http_get(metrics, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix("orderflow_restore_records_read_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| *value > 0.0)
            .map(|value| value as u64)
    })
}

#[test]
fn a_restore_with_transactions_reads_the_compacted_state_topic_not_the_sales_history() {
    // The log cleaner looks for work every 200 ms (default 15 s), and
    // `order-state` rolls a segment every 100 ms and compacts any dirt.
    let broker = Broker::start_kafka(&KafkaOptions {
        properties: vec!["log.cleaner.backoff.ms=200".into()],
        ..KafkaOptions::default()
    });
    broker.create_configured_topics(&[(
        "order-state",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "0"),
        ],
    )]);
    broker.create_contract_topics(1);
    broker.produce(
        "inventory",
        &inventory_records(&[
            json!({"type": "stock_set", "sku": "A", "available": 100_000, "prices": {"EUR": 500}}),
        ]),
    );
    let ids: Vec<String> = (0..SALE_ORDERS).map(|i| format!("o-{i}")).collect();

    let metrics = format!("127.0.0.1:{}", free_port());
    let listen = format!("metrics.listen={metrics}");
    let first = spawn(
        &broker,
        &[
            "metrics.enabled=true",
            &listen,
            "kafka.transactions=on",
            // What is read from Kafka alone (no store to start from).
            "engine.store_dir=off",
        ],
    );
    let placed: Vec<_> = ids.iter().map(|id| record(id, order(id))).collect();
    broker.produce("orders", &placed);
    wait_for_status(&broker, &ids[SALE_ORDERS - 1]);
    let cancelled: Vec<_> = ids.iter().map(|id| record(id, cancel(id))).collect();
    broker.produce("orders", &cancelled);
    wait_for_status(&broker, &ids[SALE_ORDERS - 1]);
    broker.read_until("order-status", TIMEOUT, |messages| {
        messages.len() >= 2 * SALE_ORDERS
    });
    // Later records roll the cancellations' segment, so the cleaner may
    // compact it: one sentinel at a time until the log is compacted.
    let mut sentinels = 0;
    wait_for("order-state to be compacted", TIMEOUT, || {
        sentinels += 1;
        let id = format!("o-sentinel-{sentinels}");
        broker.produce("orders", &[record(&id, order(&id))]);
        wait_for_status(&broker, &id);
        let kept = broker.read_to_end("order-state").len() as u64;
        (kept <= SALE_ORDERS as u64 + ACTIVE_SLACK).then_some(kept)
    });
    drop(first);

    // SIGKILL, then a new instance: it restores from order-state alone.
    let second = spawn(
        &broker,
        &[
            "metrics.enabled=true",
            &listen,
            "kafka.transactions=on",
            // What is read from Kafka alone (no store to start from).
            "engine.store_dir=off",
        ],
    );
    let read = restored_records(&metrics);
    let history = broker.read_to_end("order-status").len() as u64;
    assert!(
        read <= SALE_ORDERS as u64 + ACTIVE_SLACK + sentinels,
        "the restore read {read} records for {SALE_ORDERS} orders"
    );
    assert!(
        history >= 2 * SALE_ORDERS as u64,
        "{history} statuses written"
    );
    // Every order again, and its cancellation: nothing is decided twice.
    let again: Vec<_> = ids
        .iter()
        .flat_map(|id| [record(id, order(id)), record(id, cancel(id))])
        .chain([record("o-last", order("o-last"))])
        .collect();
    broker.produce("orders", &again);
    wait_for_status(&broker, "o-last");
    drop(second);
    let by_id = statuses(&broker);
    for id in &ids {
        assert_eq!(by_id[id], ["accepted", "cancelled"], "{id} decided once");
    }

    // The control: without transactions the restore reads the statuses
    // too, so its count grows with the sale's history.
    let third = spawn(
        &broker,
        &["metrics.enabled=true", &listen, "kafka.transactions=off"],
    );
    let read_without = restored_records(&metrics);
    drop(third);
    // With transactions, when told to (orders decided before statuses were
    // copied): the status topic too.
    let fourth = spawn(
        &broker,
        &[
            "metrics.enabled=true",
            &listen,
            "kafka.transactions=on",
            "engine.restore_statuses=true",
        ],
    );
    let read_told = restored_records(&metrics);
    drop(fourth);
    assert!(
        read_told >= history,
        "engine.restore_statuses: the restore read {read_told} records, fewer than the \
         {history} statuses"
    );
    println!(
        "{SALE_ORDERS} orders, {history} statuses: the restore read {read} records with \
         transactions, {read_without} without, {read_told} with engine.restore_statuses"
    );
    assert!(
        read_without >= history,
        "without transactions the restore read {read_without} records, \
         fewer than the {history} statuses"
    );
}

#[test]
fn a_state_topic_that_is_not_compacted_is_refused_at_start() {
    let broker = Broker::start();
    // Deleted by time: orders older than its retention would be forgotten.
    broker.create_topics(&[("order-state", 1)]);
    broker.create_contract_topics(1);
    let flags = vec![
        format!("kafka.brokers={}", broker.addr()),
        "metrics.enabled=false".to_string(),
    ];
    let config = orderflow::config::Config::load(None, &flags).unwrap();
    let shutdown = orderflow::shutdown::Shutdown::new();
    let (done, result) = std::sync::mpsc::channel();
    let for_run = shutdown.clone();
    std::thread::spawn(move || {
        let _ = done.send(orderflow::app::run(config, for_run));
    });
    // A processor that started would run until told to stop.
    let outcome = result.recv_timeout(TIMEOUT);
    shutdown.trigger();
    let error = match outcome {
        Ok(Err(error)) => error,
        Ok(Ok(())) => panic!("the processor ran and stopped without refusing"),
        Err(_) => panic!("the start was not refused within {TIMEOUT:?}"),
    };
    let message = format!("{error:#}");
    assert!(
        message.contains("topic order-state has cleanup.policy=delete")
            && message.contains("--add-config cleanup.policy=compact"),
        "{message}"
    );
}

/// An order of one unit of the scarce SKU `R`.
fn scarce(id: &str) -> Vec<u8> {
    let mut order: serde_json::Value = serde_json::from_slice(&order(id)).unwrap();
    order["lines"][0]["sku"] = json!("R");
    serde_json::to_vec(&order).unwrap()
}

/// Units of `R`.
const SCARCE: i64 = 10;
/// Retention of the retention test, in days: four seconds.
const RETENTION_DAYS: &str = "lifecycle.retention_days=0.0000463";

/// A process of the retention test: stores under `base`, transactions,
/// a four-second retention.
fn spawn_retaining(broker: &Broker, base: &Path, metrics: &str) -> Killed {
    let window = format!("engine.dedup_window_orders={WINDOW}");
    let store = format!("engine.store_dir={}", base.display());
    let listen = format!("metrics.listen={metrics}");
    spawn(
        broker,
        &[
            &window,
            &store,
            "metrics.enabled=true",
            &listen,
            "kafka.transactions=on",
            RETENTION_DAYS,
        ],
    )
}

/// A counter of /metrics at `metrics` once it is at least `least`.
fn counter_at_least(metrics: &str, name: &str, least: u64) -> u64 {
    wait_for(&format!("{name} to reach {least}"), TIMEOUT, || {
        let (_, body) = http_get(metrics, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .filter(|value| *value >= least)
    })
}

/// Sends `ids` (orders of `R`) and a sentinel, waits for all their
/// statuses; how many of `ids` were accepted.
fn sell_scarce(broker: &Broker, ids: &[String], sentinel: &str) -> usize {
    let mut records: Vec<_> = ids.iter().map(|id| record(id, scarce(id))).collect();
    records.push(record(sentinel, order(sentinel)));
    broker.produce("orders", &records);
    let mut all = ids.to_vec();
    all.push(sentinel.to_string());
    wait_for_statuses(broker, &all);
    let by_id = statuses(broker);
    ids.iter()
        .filter(|id| by_id[*id].last().map(String::as_str) == Some("accepted"))
        .count()
}

#[test]
fn orders_past_their_retention_are_retired_and_what_they_sold_stays_sold_through_restarts() {
    let broker = Broker::start();
    broker.create_contract_topics(1);
    broker.produce(
        "inventory",
        &inventory_records(&[
            json!({"type": "stock_set", "sku": "A", "available": STOCK, "prices": {"EUR": 500}}),
            json!({"type": "stock_set", "sku": "R", "available": SCARCE, "prices": {"EUR": 500}}),
        ]),
    );
    let base = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let ids = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    };

    // Six units sold, then retention retires the orders (and the sentinel).
    let first = spawn_retaining(&broker, base.path(), &metrics);
    let sold = ids("r", 6);
    assert_eq!(sell_scarce(&broker, &sold, "s-1"), 6);
    counter_at_least(&metrics, "orderflow_orders_retired_total", 7);
    // In the changelog, once the pass's transaction commits: each order's
    // last record a tombstone, and the partition's retired units of R, six.
    let last_records = |messages: &[OwnedMessage]| {
        let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for message in messages {
            let key = message.key().unwrap_or_default().to_vec();
            last.insert(key, message.payload().map(<[u8]>::to_vec));
        }
        last
    };
    let messages = broker.read_until("order-state", TIMEOUT, |messages| {
        let last = last_records(messages);
        sold.iter().all(|id| last.get(id.as_bytes()) == Some(&None))
    });
    let last = last_records(&messages);
    let retired = last[&orderflow::state::retired_key("R")].clone().unwrap();
    assert_eq!(orderflow::state::decode_retired(&retired).unwrap().units, 6);
    // Retired: a duplicate now is a new order (retention, not a count,
    // removed it), and takes a seventh unit.
    assert_eq!(sell_scarce(&broker, &sold[..1], "s-2"), 1);
    assert_eq!(statuses(&broker)[&sold[0]], ["accepted", "accepted"]);
    drop(first); // SIGKILL

    // Restored from the changelog (no files): 3 of 10 units left.
    std::fs::remove_dir_all(base.path()).unwrap();
    let second = spawn_retaining(&broker, base.path(), &metrics);
    assert_eq!(
        sell_scarce(&broker, &ids("after-changelog", 4), "s-3"),
        3,
        "the changelog's retired units count as sold"
    );
    counter_at_least(&metrics, "orderflow_store_records_written_total", 1);
    drop(second); // SIGKILL

    // Restored from the store's checkpoint: none left.
    let third = spawn_retaining(&broker, base.path(), &metrics);
    let local = restore_counter(&metrics, "orderflow_restore_records_local_total");
    assert!(local > 0, "restored from the store");
    assert_eq!(
        sell_scarce(&broker, &ids("after-checkpoint", 2), "s-4"),
        0,
        "the retired units stay sold: never more than {SCARCE} in all"
    );
    drop(third);
}
