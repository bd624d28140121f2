//! Crash safety on a real broker (Apache Kafka, see `common::Broker`): the
//! processor binary is killed with SIGKILL mid-sale and started again;
//! three instances share a sale (the shipped cooperative-sticky
//! assignment), one is killed and another added mid-sale; separately, the
//! broker itself is killed mid-sale under a running processor, for longer
//! than the producer's `message.timeout.ms`, so outputs fail and are sent
//! again; and two whole-stock instances pause rather than share. Each run
//! ends with every order decided exactly once (one status each; follow-up
//! copies with the same event_id allowed), zero oversold units, the hot SKU
//! sold out exactly, and fulfillments consistent with the decisions.
//!
//! The processors keep the default `kafka.transactions = "auto"`, so on
//! Kafka they run with transactions, except in the outage test, which is
//! about redelivery without them.

mod common;

use common::{free_port, http_get, json, wait_for, Broker};
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
const ORDERS: usize = 6_000;
const HOT_STOCK: i64 = 300;
const NORMAL_SKUS: usize = 20;
const BATCH: usize = 250;
const TIMEOUT: Duration = Duration::from_secs(180);
/// The processors' consumer group session timeout (Kafka's minimum,
/// `group.min.session.timeout.ms`): a killed instance's partitions move on
/// soon after.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the broker stays down in the outage test: longer than the
/// processor's `message.timeout.ms` there, so deliveries fail for good and
/// the redelivery runs.
const BROKER_DOWNTIME: Duration = Duration::from_secs(30);
/// The processor's `message.timeout.ms` in the outage test.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// The processor's `linger.ms` in the outage test: its outputs wait this
/// long in the producer before they are sent, so the broker dies with
/// outputs in flight however fast the processor decided (on Kafka it
/// decides the whole sale within a second or two).
const LINGER: Duration = Duration::from_secs(5);

/// The processor binary, run against `broker` until killed or stopped.
struct ProcessorProcess {
    child: Child,
    /// Where its `/metrics` is served, if enabled.
    metrics: Option<String>,
}

impl ProcessorProcess {
    fn start(broker: &Broker) -> ProcessorProcess {
        Self::start_with(broker, &["metrics.enabled=false"])
    }

    /// One of several instances sharing the sale: each partition sells its
    /// quota of every SKU; metrics on a free port to tell who decided what.
    fn start_sharing(broker: &Broker) -> ProcessorProcess {
        Self::start_observed(broker, "partition")
    }

    /// An instance with `engine.stock_split = split` and metrics served,
    /// one of several in the group (with the shipped cooperative-sticky
    /// assignment).
    fn start_observed(broker: &Broker, split: &str) -> ProcessorProcess {
        Self::start_metered(broker, &[&format!("engine.stock_split={split}")])
    }

    /// An instance with `overrides` and metrics served on a free port.
    fn start_metered(broker: &Broker, overrides: &[&str]) -> ProcessorProcess {
        let listen = format!("127.0.0.1:{}", free_port());
        let metrics = format!("metrics.listen={listen}");
        let settings: Vec<&str> = overrides
            .iter()
            .copied()
            .chain([metrics.as_str()])
            .collect();
        let mut processor = Self::start_with(broker, &settings);
        processor.metrics = Some(listen);
        processor
    }

    /// The HTTP status of `/ready`, once the instance answers.
    fn ready_status(&self) -> Option<u16> {
        let addr = self.metrics.as_ref().expect("metrics enabled");
        http_get(addr, "/ready").map(|(status, _)| status)
    }

    fn start_with(broker: &Broker, overrides: &[&str]) -> ProcessorProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .args(["run", "--brokers", &broker.addr()])
            .args([
                "--set",
                &format!("kafka.session_timeout_ms={}", SESSION_TIMEOUT.as_millis()),
            ])
            .args(["--set", "log.level=warn"]);
        for setting in overrides {
            command.args(["--set", setting]);
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .expect("starting orderflow");
        ProcessorProcess {
            child,
            metrics: None,
        }
    }

    /// The sum of the series of /metrics whose line starts with one of
    /// `series`; `None` while the instance does not serve them yet.
    fn metric(&self, series: &[&str]) -> Option<u64> {
        let addr = self.metrics.as_ref().expect("metrics enabled");
        let (_, body) = http_get(addr, "/metrics")?;
        let sum = body
            .lines()
            .filter(|line| series.iter().any(|s| line.starts_with(&format!("{s} "))))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Some(sum as u64)
    }

    /// Orders this instance decided (accepted or rejected).
    fn decided(&self) -> Option<u64> {
        self.metric(&[
            "orderflow_orders_total{outcome=\"accepted\"}",
            "orderflow_orders_total{outcome=\"rejected\"}",
        ])
    }

    /// Partitions of `orders` this instance owns, their state restored.
    fn partitions(&self) -> Option<u64> {
        let assigned = self.metric(&["orderflow_partitions_assigned"])?;
        let restoring = self.metric(&["orderflow_partitions_restoring"])?;
        assigned.checked_sub(restoring)
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = wait_for(
            "orderflow to exit after SIGTERM",
            Duration::from_secs(60),
            || self.child.try_wait().unwrap(),
        );
        assert!(status.success(), "orderflow exited with {status}");
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn sku(i: usize) -> String {
    format!("SKU-{i}")
}

fn order(id: &str, hot: bool, i: usize) -> Value {
    let mut lines = vec![
        json!({"sku": sku(i % NORMAL_SKUS), "quantity": 1 + i % 3, "unit_price_minor": 100, "ship_to": "home"}),
    ];
    if hot {
        lines
            .push(json!({"sku": "HOT", "quantity": 1, "unit_price_minor": 999, "ship_to": "work"}));
    }
    let total = 100 * (1 + i % 3) as i64 + if hot { 999 } else { 0 };
    let address = |name: &str| json!({"name": name, "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"});
    json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{i}"),
           "placed_at": "2026-11-23T12:00:00Z", "currency": "USD", "lines": lines,
           "addresses": {"home": address("Ada 🏠"), "work": address("Ada 🏢")},
           "payments": [{"method": "card", "amount_minor": total, "authorization_id": "a"}]})
}

/// All records of the sale in send order: orders (a quarter want the hot
/// SKU, whose demand is five times its stock), duplicates, cancellations.
fn sale() -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut records = Vec::new();
    for i in 0..ORDERS {
        let id = format!("o-{i}");
        let value = serde_json::to_vec(&order(&id, i % 4 == 0, i)).unwrap();
        records.push((Some(id.clone().into_bytes()), value.clone()));
        if i % 50 == 0 {
            records.push((Some(id.clone().into_bytes()), value)); // a producer retry
        }
        if i % 10 == 5 {
            let cancel = json!({"type": "order_cancelled", "order_id": id});
            records.push((Some(id.into_bytes()), serde_json::to_vec(&cancel).unwrap()));
        }
    }
    records
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

/// Produces `records` in batches from a thread, so faults hit mid-sale.
fn produce_in_background(
    broker: &Broker,
    records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
) -> thread::JoinHandle<()> {
    let addr = broker.addr();
    thread::spawn(move || {
        let producer = common::producer_for(&addr);
        for batch in records.chunks(BATCH) {
            common::produce_with(&producer, "orders", batch);
        }
    })
}

/// Waits until the processor has decided at least `count` distinct orders.
fn wait_for_decisions(broker: &Broker, count: usize) {
    broker.read_until("order-status", TIMEOUT, |messages| {
        let ids: HashSet<&[u8]> = messages.iter().filter_map(|m| m.key()).collect();
        ids.len() >= count
    });
}

/// Sentinels at the end of every partition: once each is decided, every
/// record before it was processed.
fn produce_sentinels_and_wait(broker: &Broker) {
    for p in 0..PARTITIONS {
        let id = common::key_for_partition("sentinel", p, PARTITIONS);
        let value = serde_json::to_vec(&order(&id, false, 0)).unwrap();
        broker.produce_to_partition("orders", p, id.as_bytes(), &value);
    }
    broker.read_until("order-status", TIMEOUT, |messages| {
        let keys: HashSet<&[u8]> = messages.iter().filter_map(|m| m.key()).collect();
        (0..PARTITIONS)
            .all(|p| keys.contains(common::key_for_partition("sentinel", p, PARTITIONS).as_bytes()))
    });
}

/// Checks every promise against what the output topics hold.
fn audit(broker: &Broker) {
    let statuses = broker.read_to_end("order-status");
    let fulfillments = broker.read_to_end("fulfillments");
    let mut decisions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut copies = 0;
    let mut cancelled: HashSet<String> = HashSet::new();
    for m in &statuses {
        let v = json(m);
        let id = v["order_id"].as_str().unwrap().to_string();
        match v["status"].as_str().unwrap() {
            "cancelled" => {
                if !cancelled.insert(id) {
                    copies += 1;
                }
            }
            status => {
                let seen = decisions.entry(id).or_default();
                if !seen.insert(status.to_string()) || seen.len() > 1 {
                    copies += 1;
                }
            }
        }
    }
    let placed: Vec<String> = (0..ORDERS).map(|i| format!("o-{i}")).collect();
    let missing = placed
        .iter()
        .filter(|id| !decisions.contains_key(*id))
        .count();
    let conflicting = decisions.values().filter(|s| s.len() > 1).count();
    let accepted: HashSet<&String> = decisions
        .iter()
        .filter(|(_, s)| s.contains("accepted"))
        .map(|(id, _)| id)
        .collect();
    let hot_accepted = (0..ORDERS)
        .step_by(4)
        .filter(|i| accepted.contains(&format!("o-{i}")))
        .count() as i64;
    let hot_cancelled = (0..ORDERS)
        .step_by(4)
        .filter(|i| i % 10 == 5 && cancelled.contains(&format!("o-{i}")))
        .count() as i64;
    let hot_sold = hot_accepted - hot_cancelled;
    let mut requested: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &fulfillments {
        let v = json(m);
        if v["type"] == "fulfillment_requested" {
            requested
                .entry(v["order_id"].as_str().unwrap().into())
                .or_default()
                .insert(v["fulfillment_id"].as_str().unwrap().into());
        }
    }
    let wrong_fulfillments: Vec<String> = decisions
        .iter()
        .filter_map(|(id, s)| {
            let hot = id
                .strip_prefix("o-")
                .is_some_and(|n| n.parse::<usize>().unwrap() % 4 == 0);
            let want = if !s.contains("accepted") {
                0
            } else if hot {
                2
            } else {
                1
            };
            let got = requested.get(id).map_or(0, HashSet::len);
            (got != want).then(|| format!("{id}: {s:?} with {got} shipments, want {want}"))
        })
        .collect();
    let fulfillment_errors = wrong_fulfillments.len();
    println!(
        "wrong fulfillments: {:?}",
        &wrong_fulfillments[..fulfillment_errors.min(5)]
    );
    let wrong_cancels = cancelled.iter().filter(|id| !accepted.contains(id)).count();
    println!(
        "statuses={} orders_decided={} copies={copies} missing={missing} conflicting={conflicting} \
         hot_accepted={hot_accepted} hot_cancelled={hot_cancelled} hot_sold={hot_sold} hot_stock={HOT_STOCK} \
         cancelled={} fulfillment_errors={fulfillment_errors}",
        statuses.len(),
        decisions.len(),
        cancelled.len()
    );
    assert_eq!(missing, 0, "orders without a status");
    assert_eq!(copies, 0, "orders with the same status twice");
    assert_eq!(conflicting, 0, "orders with two different statuses");
    assert_eq!(
        wrong_cancels, 0,
        "cancelled statuses for orders never accepted"
    );
    assert!(
        hot_sold <= HOT_STOCK,
        "oversold the hot SKU: {hot_sold} > {HOT_STOCK}"
    );
    assert_eq!(
        hot_sold, HOT_STOCK,
        "demand exceeds stock, so all stock sells"
    );
    assert_eq!(
        fulfillment_errors, 0,
        "accepted orders need one fulfillment per address, rejected none"
    );
}

#[test]
fn kill_9_mid_sale_then_restart_loses_and_doubles_nothing() {
    let broker = setup();
    let first = ProcessorProcess::start(&broker);
    let producing = produce_in_background(&broker, sale());
    wait_for_decisions(&broker, ORDERS / 4);
    let killed_at = Instant::now();
    first.kill_9();
    println!(
        "killed the processor with SIGKILL after {} decisions",
        ORDERS / 4
    );
    // Started at once: the group expires the dead member after its session
    // timeout and gives the replacement every partition.
    let second = ProcessorProcess::start(&broker);
    producing.join().unwrap();
    produce_sentinels_and_wait(&broker);
    println!(
        "recovered and finished the sale {:?} after the kill",
        killed_at.elapsed()
    );
    second.stop();
    audit(&broker);
}

#[test]
fn broker_killed_and_restarted_mid_sale() {
    let mut broker = setup();
    let timeout = format!(
        "kafka.producer.message.timeout.ms={}",
        MESSAGE_TIMEOUT.as_millis()
    );
    let linger = format!("kafka.producer.linger.ms={}", LINGER.as_millis());
    let processor =
        ProcessorProcess::start_metered(&broker, &["kafka.transactions=off", &timeout, &linger]);
    let producing = produce_in_background(&broker, sale());
    wait_for_decisions(&broker, ORDERS / 4);
    broker.kill();
    // An outage of a fixed length is the point here, not a wait for a condition.
    thread::sleep(BROKER_DOWNTIME);
    broker.restart();
    println!("broker was down for {BROKER_DOWNTIME:?} mid-sale");
    producing.join().unwrap();
    produce_sentinels_and_wait(&broker);
    let redelivered = processor
        .metric(&["orderflow_outputs_redelivered_total"])
        .expect("the processor serves /metrics");
    let timed_out = processor
        .metric(&["orderflow_kafka_errors_total{kind=\"message_timed_out\"}"])
        .expect("the processor serves /metrics");
    println!("outputs timed out: {timed_out}, sent again: {redelivered}");
    assert!(
        redelivered > 0,
        "the outage outlasted message.timeout.ms, yet nothing was sent again"
    );
    processor.stop();
    audit(&broker);
}

/// Waits until every partition of `orders` is owned and each of
/// `instances` owns at least one.
fn wait_until_shared(instances: &[&ProcessorProcess]) {
    wait_for("the instances to share every partition", TIMEOUT, || {
        let owned: Option<Vec<u64>> = instances.iter().map(|i| i.partitions()).collect();
        owned.filter(|o| o.iter().all(|n| *n > 0) && o.iter().sum::<u64>() == PARTITIONS as u64)
    });
}

#[test]
fn three_instances_share_a_sale_one_killed_one_added() {
    let broker = setup();
    let [first, killed, third] = [(); 3].map(|_| ProcessorProcess::start_sharing(&broker));
    wait_until_shared(&[&first, &killed, &third]);
    let mut records = sale();
    let second_half = records.split_off(records.len() / 2);
    let producing = produce_in_background(&broker, records);
    wait_for_decisions(&broker, ORDERS / 4);
    let killed_decisions = killed.decided().expect("instance 1 serves /metrics");
    killed.kill_9();
    println!("killed instance 1 with SIGKILL after it decided {killed_decisions} orders");
    assert!(
        killed_decisions > 0,
        "the killed instance took part in the sale"
    );
    // Added at once: the dead member's partitions move to the live ones as
    // the group expires it, and the added instance takes its share.
    let added = ProcessorProcess::start_sharing(&broker);
    wait_until_shared(&[&first, &third, &added]);
    producing.join().unwrap();
    // The second half of the sale goes to the instances as they are now.
    produce_in_background(&broker, second_half).join().unwrap();
    produce_sentinels_and_wait(&broker);
    let survivors = [
        ("instance 0", first),
        ("instance 2", third),
        ("added", added),
    ];
    for (name, instance) in survivors {
        let decided = instance.decided().expect("a live instance serves /metrics");
        let owned = instance
            .partitions()
            .expect("a live instance serves /metrics");
        println!("{name} decided {decided} orders, owns {owned} partitions");
        // More than the sentinels of the partitions it owns.
        assert!(decided > PARTITIONS as u64, "{name} took part in the sale");
        instance.stop();
    }
    audit(&broker);
}

#[test]
fn whole_stock_instances_pause_rather_than_share_a_sale() {
    let broker = setup();
    let first = ProcessorProcess::start_observed(&broker, "whole");
    let second = ProcessorProcess::start_observed(&broker, "whole");
    // Both own partitions, so both pause and say so on /ready.
    wait_for("both instances to pause", TIMEOUT, || {
        let both = [&first, &second].map(|i| (i.partitions(), i.ready_status()));
        both.iter()
            .all(|(owned, ready)| owned.is_some_and(|n| n > 0) && *ready == Some(503))
            .then_some(())
    });
    println!("two whole-stock instances share the group: both paused, /ready 503");
    // Half the sale arrives while they are paused: had they decided it,
    // each would have sold the hot SKU's whole stock.
    let mut records = sale();
    let second_half = records.split_off(records.len() / 2);
    produce_in_background(&broker, records).join().unwrap();
    second.stop();
    wait_for(
        "the remaining instance to own every partition",
        TIMEOUT,
        || {
            let resumed =
                first.partitions() == Some(PARTITIONS as u64) && first.ready_status() == Some(200);
            resumed.then_some(())
        },
    );
    println!("one instance left: it owns every partition and decides again");
    produce_in_background(&broker, second_half).join().unwrap();
    produce_sentinels_and_wait(&broker);
    first.stop();
    audit(&broker);
}
