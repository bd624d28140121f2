//! Orders past the dedup window, on Apache Kafka: they leave memory for the
//! partition's on-disk store (`engine.store_dir`, see `src/cold.rs`) and
//! are found there again, so an order is decided once however late its
//! duplicate comes, and a cancellation of an old order gives its units
//! back. A restart after SIGKILL rebuilds the store from the status topic
//! (the killed process's files are never read, and are removed) and
//! decides no old order twice.

mod common;

use common::{inventory_records, json, wait_for, Broker, Processor};
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
    let broker = Broker::start();
    broker.create_contract_topics(1);
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
    let stores = base
        .path()
        .join(format!("orderflow-store-{}", std::process::id()));
    assert!(
        !stores.exists() || std::fs::read_dir(&stores).unwrap().count() == 0,
        "a stopped processor's stores are deleted"
    );

    // Without the store the window forgot the order: what the store is for.
    let without = late_duplicate_and_cancel("off");
    assert_eq!(without, ["accepted", "accepted", "cancelled"]);
}

/// `orderflow run` as a child process, its stores under `store_dir`.
fn spawn(broker: &Broker, store_dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["run", "--brokers", &broker.addr()])
        .args(["--set", "kafka.session_timeout_ms=6000"])
        .args(["--set", "log.level=warn"])
        .args(["--set", "metrics.enabled=false"])
        .args(["--set", "payments.adapter=external"])
        .args(["--set", &format!("engine.dedup_window_orders={WINDOW}")])
        .args([
            "--set",
            &format!("engine.store_dir={}", store_dir.display()),
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("starting orderflow")
}

#[test]
fn after_sigkill_the_store_is_rebuilt_from_the_status_topic_and_nothing_is_decided_twice() {
    // Enough past the window for the store to write (and so make its
    // files): orders leave memory in batches.
    const ORDERS: usize = WINDOW + 2 * orderflow::cold::WRITE_BATCH;
    let broker = broker_with_stock();
    let base = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..ORDERS).map(|i| format!("o-{i}")).collect();

    let mut first = spawn(&broker, base.path());
    let first_stores = base.path().join(format!("orderflow-store-{}", first.id()));
    let mut records: Vec<_> = ids.iter().map(|id| record(id, order(id))).collect();
    records.push(record("o-sentinel-1", order("o-sentinel-1")));
    broker.produce("orders", &records);
    wait_for_status(&broker, "o-sentinel-1");
    assert!(
        first_stores.exists(),
        "orders past the window went to a store at {}",
        first_stores.display()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(first_stores.exists(), "SIGKILL left the store's files");

    let mut second = spawn(&broker, base.path());
    // Every order again (older than the window, and than the restore's
    // window too), a cancellation of the oldest, then a sentinel.
    let mut records: Vec<_> = ids.iter().map(|id| record(id, order(id))).collect();
    records.push(record(&ids[0], cancel(&ids[0])));
    records.push(record("o-sentinel-2", order("o-sentinel-2")));
    broker.produce("orders", &records);
    wait_for_status(&broker, "o-sentinel-2");
    wait_for("the killed process's stores to be removed", TIMEOUT, || {
        (!first_stores.exists()).then_some(())
    });
    second.kill().unwrap();
    second.wait().unwrap();

    let by_id = statuses(&broker);
    assert_eq!(by_id[&ids[0]], ["accepted", "cancelled"], "{}", ids[0]);
    for id in &ids[1..] {
        assert_eq!(by_id[id], ["accepted"], "{id} decided once");
    }
}
