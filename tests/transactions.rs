//! `kafka.transactions`: on Apache Kafka a small sale ends with exactly one
//! status per order, no follow-up copies, the hot SKU sold exactly, all
//! read back as committed (read_committed), and the group's committed
//! offsets, read from the broker (Kafka stores the offsets a transaction
//! commits), at the end of every orders partition. On a broker that cannot
//! commit a transaction (Kafka whose transaction state log cannot be
//! created), "auto" falls back and decides orders, and "on" refuses to
//! start.

mod common;

use common::{
    inventory_records, produce_with, producer_for, wait_for, Broker, KafkaOptions, Processor,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const ORDERS: usize = 300;
/// Every third order wants one unit of HOT: 100 units of demand.
const HOT_STOCK: i64 = 40;
const TIMEOUT: Duration = Duration::from_secs(120);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

fn hot(i: usize) -> bool {
    i.is_multiple_of(3)
}

fn cancelled(i: usize) -> bool {
    !hot(i) && i % 7 == 3
}

/// Order `i`: one line of a plentiful SKU, plus one HOT unit shipped to a
/// second address for hot orders.
fn order(i: usize) -> Value {
    let id = format!("o-{i}");
    let address = |name: &str| json!({"name": name, "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"});
    let mut lines = vec![
        json!({"sku": format!("SKU-{}", i % 10), "quantity": 1, "unit_price_minor": 100, "ship_to": "home"}),
    ];
    let mut addresses = json!({"home": address("Ada 🏠")});
    let mut total = 100;
    if hot(i) {
        lines
            .push(json!({"sku": "HOT", "quantity": 1, "unit_price_minor": 999, "ship_to": "work"}));
        addresses["work"] = address("Ada 🏢");
        total += 999;
    }
    json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{i}"),
           "placed_at": "2026-11-23T12:00:00Z", "currency": "USD", "lines": lines,
           "addresses": addresses,
           "payments": [{"method": "card", "amount_minor": total, "authorization_id": "a"}]})
}

/// Orders `range` in send order, each tenth sent twice (a producer retry),
/// cancellations right after the orders they cancel.
fn records(range: std::ops::Range<usize>) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut records = Vec::new();
    for i in range {
        let id = format!("o-{i}").into_bytes();
        let value = serde_json::to_vec(&order(i)).unwrap();
        records.push((Some(id.clone()), value.clone()));
        if i.is_multiple_of(10) {
            records.push((Some(id.clone()), value));
        }
        if cancelled(i) {
            let cancel = json!({"type": "order_cancelled", "order_id": format!("o-{i}")});
            records.push((Some(id), serde_json::to_vec(&cancel).unwrap()));
        }
    }
    records
}

fn reader(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// The high watermark of every partition of `topic` (with read_committed,
/// the last stable offset).
fn ends(consumer: &BaseConsumer, topic: &str) -> HashMap<i32, i64> {
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT).unwrap();
            (p, high)
        })
        .collect()
}

/// Every committed record of `topic`, read to its end as of now. The end
/// is found by position, since transaction markers take offsets too.
fn read_committed(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer = reader(brokers, "test-reader");
    let ends = ends(&consumer, topic);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut messages = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            messages.push(result.expect("consuming").detach());
            continue;
        }
        let position = consumer.position().unwrap();
        let at_end = position.elements().iter().all(|e| match e.offset() {
            Offset::Offset(next) => next >= ends[&e.partition()],
            _ => ends[&e.partition()] == 0,
        });
        if at_end {
            return messages;
        }
        assert!(Instant::now() < deadline, "timed out reading {topic}");
    }
}

/// The offsets the processor's group committed for `topic`, read from
/// the broker: the next record to read, per partition.
fn committed(brokers: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer = reader(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, KAFKA_TIMEOUT)
        .unwrap()
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
        .collect()
}

#[test]
fn transactions_on_kafka_commit_each_decision_and_its_offsets_once() {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let brokers = broker.addr();
    let producer = producer_for(&brokers);
    let mut inventory: Vec<_> = (0..10)
        .map(|i| json!({"type": "stock_set", "sku": format!("SKU-{i}"), "available": 1_000_000, "prices": {"USD": 100}}))
        .collect();
    inventory.push(
        json!({"type": "stock_set", "sku": "HOT", "available": HOT_STOCK, "prices": {"USD": 999}}),
    );
    produce_with(&producer, "inventory", &inventory_records(&inventory));

    // No payment adapter: its results would still be arriving on `orders`
    // after the last commit, and this test compares the group's committed
    // offsets with the end of `orders` (tests/payments.rs covers payments).
    let processor = Processor::start(
        &broker,
        &["kafka.transactions=on", "payments.adapter=external"],
    );
    produce_with(&producer, "orders", &records(0..ORDERS));
    // Statuses become readable only as their transactions commit.
    wait_for("a committed status for every order", TIMEOUT, || {
        let ids: HashSet<String> = read_committed(&brokers, "order-status")
            .iter()
            .filter_map(|m| {
                let v: Value = serde_json::from_slice(m.payload()?).ok()?;
                Some(v["order_id"].as_str()?.to_string())
            })
            .collect();
        (ids.len() >= ORDERS).then_some(())
    });
    processor.stop();

    let statuses = read_committed(&brokers, "order-status");
    let fulfillments = read_committed(&brokers, "fulfillments");
    let mut decisions: HashMap<String, Vec<String>> = HashMap::new();
    let mut cancels: HashMap<String, usize> = HashMap::new();
    for m in &statuses {
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let id = v["order_id"].as_str().unwrap().to_string();
        let status = v["status"].as_str().unwrap();
        if status == "cancelled" {
            *cancels.entry(id).or_default() += 1;
        } else {
            let reason = v["reason"].as_str().unwrap_or("-");
            decisions
                .entry(id)
                .or_default()
                .push(format!("{status}/{reason}"));
        }
    }
    let mut hot_accepted = 0;
    for i in 0..ORDERS {
        let id = format!("o-{i}");
        let got = decisions
            .get(&id)
            .unwrap_or_else(|| panic!("{id}: no status"));
        assert_eq!(got.len(), 1, "{id}: {got:?}");
        match (hot(i), got[0].as_str()) {
            (true, "accepted/-") => hot_accepted += 1,
            (true, "rejected/out_of_stock") | (false, "accepted/-") => {}
            other => panic!("{id}: {other:?}"),
        }
        let want_cancel = usize::from(cancelled(i));
        assert_eq!(cancels.get(&id).copied().unwrap_or(0), want_cancel, "{id}");
    }
    assert_eq!(decisions.len(), ORDERS, "a status for an unknown order");
    assert_eq!(
        hot_accepted, HOT_STOCK,
        "the hot SKU sells exactly its stock"
    );

    let mut event_ids = HashSet::new();
    let mut shipments: HashMap<String, (usize, usize)> = HashMap::new();
    for m in &fulfillments {
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let event_id = v["event_id"].as_str().unwrap().to_string();
        assert!(event_ids.insert(event_id.clone()), "copy of {event_id}");
        let entry = shipments
            .entry(v["order_id"].as_str().unwrap().to_string())
            .or_default();
        match v["type"].as_str().unwrap() {
            "fulfillment_requested" => entry.0 += 1,
            _ => entry.1 += 1,
        }
    }
    for (id, got) in &decisions {
        let i: usize = id[2..].parse().unwrap();
        let addresses = if hot(i) { 2 } else { 1 };
        let want = match got[0].as_str() {
            "accepted/-" if cancelled(i) => (addresses, addresses),
            "accepted/-" => (addresses, 0),
            _ => (0, 0),
        };
        assert_eq!(shipments.get(id).copied().unwrap_or((0, 0)), want, "{id}");
    }
    let ends = ends(&reader(&brokers, "test-ends"), "orders");
    assert_eq!(
        committed(&brokers, "orderflow", "orders"),
        ends,
        "the group's committed offsets are the end of every orders partition"
    );
    println!(
        "statuses {} (decisions {}, cancellations {}), fulfillments {}, hot sold {hot_accepted}, \
         orders ends {ends:?}",
        statuses.len(),
        decisions.len(),
        cancels.len(),
        fulfillments.len()
    );
    drop(producer);
}

/// The processor binary with `settings` against `broker`, and a thread
/// collecting its standard error.
fn orderflow(
    broker: &Broker,
    settings: &[&str],
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args(["run", "--brokers", &broker.addr()])
        .env("NO_COLOR", "1");
    for setting in ["metrics.enabled=false", "log.level=info"]
        .iter()
        .chain(settings)
    {
        command.args(["--set", setting]);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting orderflow");
    let mut stderr = child.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    (child, collector)
}

fn exit_status(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    wait_for(what, TIMEOUT, || child.try_wait().unwrap())
}

#[test]
fn auto_falls_back_without_transactions_and_on_refuses() {
    // A broker that cannot commit a transaction: its transaction state log
    // wants three replicas, and it is alone, so no transaction coordinator
    // ever loads and the start-up probe times out.
    let broker = Broker::start_kafka(&KafkaOptions {
        properties: vec!["transaction.state.log.replication.factor=3".into()],
        ..KafkaOptions::default()
    });
    broker.create_contract_topics(PARTITIONS);
    let inventory =
        json!({"type": "stock_set", "sku": "SKU-1", "available": 1000, "prices": {"USD": 100}});
    broker.produce(
        "inventory",
        &[(
            Some(b"SKU-1".to_vec()),
            serde_json::to_vec(&inventory).unwrap(),
        )],
    );

    // "on": start-up fails with an error naming the setting.
    let started = Instant::now();
    let (mut child, stderr) = orderflow(&broker, &["kafka.transactions=on"]);
    let status = exit_status(&mut child, "orderflow with transactions on to exit");
    let stderr = stderr.join().unwrap();
    assert!(!status.success(), "started without transactions: {stderr}");
    assert!(
        stderr.contains("kafka.transactions = \"on\", but the brokers at")
            && stderr.contains("cannot commit a transaction"),
        "{stderr}"
    );
    println!("\"on\" refused to start after {:?}", started.elapsed());

    // "auto" (the default): a warning naming the setting, then orders are
    // decided without transactions.
    let started = Instant::now();
    let (mut child, stderr) = orderflow(&broker, &[]);
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
    broker.produce("orders", &orders);
    let statuses = broker.read_until("order-status", TIMEOUT, |m| m.len() >= orders.len());
    let decided = started.elapsed();
    assert!(
        statuses
            .iter()
            .all(|m| common::json(m)["status"] == "accepted"),
        "every order accepted"
    );
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = exit_status(&mut child, "orderflow to exit after SIGTERM");
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stderr.contains("kafka.transactions = \"auto\": the brokers cannot commit a transaction, running without"),
        "{stderr}"
    );
    assert!(stderr.contains("transactional=false"), "{stderr}");
    println!(
        "\"auto\" fell back and decided {} orders within {decided:?}",
        statuses.len()
    );
}
