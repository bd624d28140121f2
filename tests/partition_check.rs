//! One order ID on two partitions must be decided once. Upstream producers
//! with different partitioners (the Java client's murmur2, librdkafka's
//! default CRC32) put the same order on two partitions; the processor
//! checks each record's partition against `kafka.orders_partitioner` and
//! dead-letters a misrouted one as `wrong_partition`, naming the
//! partitioner it does match, before it touches any book or stock.
//!
//! On a real broker: outside clients produce with librdkafka's own
//! partitioners, so these tests also check that `orderflow::partitioner`
//! agrees with librdkafka bit for bit, and that the loadtest's producer
//! (the demo's too) sends every record where the check expects it.

mod common;

use common::{header, inventory_records, json, wait_for, Broker, Processor};
use orderflow::config::Config;
use orderflow::loadtest::scenario::{Overrides, Scenario, DEMO_TOML};
use orderflow::loadtest::{self, Options};
use orderflow::partitioner::Partitioner;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const PARTITIONS: i32 = 4;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A producer that picks partitions with librdkafka's `partitioner`.
fn producer(broker: &Broker, partitioner: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("partitioner", partitioner)
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// Produces one record and returns the partition librdkafka chose.
fn send(producer: &FutureProducer, topic: &str, key: Option<&[u8]>, value: &[u8]) -> i32 {
    send_all(producer, topic, &[(key, value)])[0]
}

/// Produces records (key, value) at once; the partition of each, in order.
fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<&[u8]>, &[u8])],
) -> Vec<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut pending = Vec::new();
        for (key, value) in records {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(*value);
            if let Some(key) = key {
                record = record.key(*key);
            }
            pending.push(producer.send_result(record).expect("enqueued"));
        }
        let mut partitions = Vec::new();
        for delivery in pending {
            let delivery = delivery.await.expect("delivery").expect("delivered");
            partitions.push(delivery.partition);
        }
        partitions
    })
}

fn order(id: &str, sku: &str) -> Vec<u8> {
    let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
    serde_json::to_vec(&json!({
        "type": "order_placed", "order_id": id, "customer_id": format!("c-{id}"),
        "placed_at": now, "currency": "EUR",
        "lines": [{"sku": sku, "quantity": 1, "unit_price_minor": 500, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë Ørsted 🏠", "line1": "Hauptstraße 1",
                               "city": "Berlin", "postal_code": "10115", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": 500, "authorization_id": "a-1"}]}))
    .unwrap()
}

/// The first order ID with `prefix` whose murmur2 and CRC32 partitions differ.
fn split_id(prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            Partitioner::Murmur2.partition(id.as_bytes(), PARTITIONS as u32)
                != Partitioner::ConsistentRandom.partition(id.as_bytes(), PARTITIONS as u32)
        })
        .unwrap()
}

fn key_of(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}

#[test]
fn one_order_on_two_partitions_is_decided_once() {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    broker.produce(
        "inventory",
        &inventory_records(&[
            // One unit: whichever copy took it first would be accepted.
            json!({"type": "stock_set", "sku": "ONE", "available": 1, "prices": {"EUR": 500}}),
            json!({"type": "stock_set", "sku": "MANY", "available": 1000, "prices": {"EUR": 500}}),
        ]),
    );
    let processor = Processor::start(&broker, &["engine.shards=2"]);
    let java_like = producer(&broker, "murmur2_random");
    let librdkafka_default = producer(&broker, "consistent_random");

    // The same order from two producers: the librdkafka one first, so a
    // check that came after the engine would let it take the unit.
    let id = split_id("o-twice");
    let misrouted = order(&id, "ONE");
    let crc_partition = send(
        &librdkafka_default,
        "orders",
        Some(id.as_bytes()),
        &misrouted,
    );
    // Until the first copy is processed, whatever its outcome.
    wait_for("the first copy's outcome", TIMEOUT, || {
        ["orders-dlq", "order-status"]
            .iter()
            .any(|topic| broker.read_to_end(topic).iter().any(|m| key_of(m) == id))
            .then_some(())
    });
    let murmur_partition = send(
        &java_like,
        "orders",
        Some(id.as_bytes()),
        &order(&id, "ONE"),
    );
    assert_ne!(
        crc_partition, murmur_partition,
        "the premise: two partitions"
    );

    // A record on a partition neither partitioner gives its key.
    let lost = split_id("o-lost");
    let neither = (0..PARTITIONS)
        .find(|p| {
            [Partitioner::Murmur2, Partitioner::ConsistentRandom]
                .iter()
                .all(|k| k.partition(lost.as_bytes(), PARTITIONS as u32) != Some(*p as u32))
        })
        .unwrap();
    broker.produce_to_partition("orders", neither, lost.as_bytes(), &order(&lost, "MANY"));
    // A record without a key: dead-lettered for its key, as before.
    let keyless = "o-keyless";
    send(&java_like, "orders", None, &order(keyless, "MANY"));
    // Sentinels: once each partition's is decided, everything before it was.
    let sentinels: Vec<String> = (0..PARTITIONS)
        .map(|p| common::key_for_partition("o-sentinel", p, PARTITIONS))
        .collect();
    for sentinel in &sentinels {
        send(
            &java_like,
            "orders",
            Some(sentinel.as_bytes()),
            &order(sentinel, "MANY"),
        );
    }
    broker.read_until("order-status", TIMEOUT, |m| {
        sentinels.iter().all(|s| m.iter().any(|m| key_of(m) == *s))
    });
    processor.stop();

    let statuses = broker.read_to_end("order-status");
    let of_id: Vec<Value> = statuses
        .iter()
        .filter(|m| key_of(m) == id)
        .map(json)
        .collect();
    assert_eq!(of_id.len(), 1, "exactly one status for {id}: {of_id:?}");
    assert_eq!(
        of_id[0]["status"], "accepted",
        "the misrouted copy took nothing: {of_id:?}"
    );
    for sentinel in &sentinels {
        let status = statuses.iter().find(|m| key_of(m) == *sentinel).map(json);
        assert_eq!(status.unwrap()["status"], "accepted", "{sentinel}");
    }
    assert!(
        !statuses.iter().any(|m| key_of(m) == lost),
        "a record matching no partitioner decides nothing"
    );

    let dlq = broker.read_to_end("orders-dlq");
    let by_key: HashMap<String, &OwnedMessage> = dlq.iter().map(|m| (key_of(m), m)).collect();
    assert_eq!(dlq.iter().filter(|m| key_of(m) == id).count(), 1);
    let twice = by_key[&id];
    assert_eq!(header(twice, "error").as_deref(), Some("wrong_partition"));
    assert_eq!(
        header(twice, "source_partition"),
        Some(crc_partition.to_string())
    );
    let detail = header(twice, "error_detail").unwrap();
    assert!(
        detail.contains(&format!("on partition {crc_partition} of {PARTITIONS}"))
            && detail.contains(&format!("puts its key on partition {murmur_partition}"))
            && detail.contains("matches partitioner consistent_random"),
        "{detail}"
    );
    assert_eq!(
        twice.payload(),
        Some(misrouted.as_slice()),
        "the value untouched"
    );
    let lost_dead = by_key[&lost];
    assert_eq!(
        header(lost_dead, "error").as_deref(),
        Some("wrong_partition")
    );
    assert!(
        header(lost_dead, "error_detail")
            .unwrap()
            .contains("matches no known partitioner"),
        "{:?}",
        header(lost_dead, "error_detail")
    );
    let keyless_dead: Vec<&OwnedMessage> = dlq.iter().filter(|m| m.key().is_none()).collect();
    assert_eq!(keyless_dead.len(), 1);
    assert_eq!(
        header(keyless_dead[0], "error").as_deref(),
        Some("key_mismatch"),
        "a record without a key keeps its reason"
    );
    assert_eq!(
        dlq.len(),
        3,
        "nothing else dead-lettered: {:?}",
        dlq.iter().map(key_of).collect::<Vec<_>>()
    );
}

#[test]
fn librdkafkas_partitioners_agree_with_the_check_bit_for_bit() {
    let broker = Broker::start();
    let topics: [(&str, i32); 3] = [("keys-7", 7), ("keys-16", 16), ("keys-1", 1)];
    broker.create_topics(&topics);
    // ASCII, every length up to a few words, unicode, and raw bytes.
    let mut keys: Vec<Vec<u8>> = (0..300).map(|i| format!("o-{i:06}").into_bytes()).collect();
    keys.extend((1..=40).map(|n| "Zoë🏠ß".repeat(n).into_bytes()));
    keys.extend((0..=255u8).map(|b| vec![b, b.wrapping_mul(31), 0, 7]));
    for (partitioner, ours) in [
        ("murmur2_random", Partitioner::Murmur2),
        ("consistent_random", Partitioner::ConsistentRandom),
    ] {
        let producer = producer(&broker, partitioner);
        let records: Vec<(Option<&[u8]>, &[u8])> = keys
            .iter()
            .map(|key| (Some(key.as_slice()), &b"x"[..]))
            .collect();
        for (topic, partitions) in topics {
            let got = send_all(&producer, topic, &records);
            for (key, got) in keys.iter().zip(got) {
                assert_eq!(
                    ours.partition(key, partitions as u32),
                    Some(got as u32),
                    "{partitioner} put {key:?} on partition {got} of {partitions}"
                );
            }
        }
    }
}

#[test]
fn the_loadtest_producer_sends_every_record_where_the_check_expects_it() {
    // The demo's sale, shortened: every kind of record the generator makes.
    let scenario = Scenario::layered(
        &[("built-in loadtest/demo.toml", DEMO_TOML)],
        &Overrides {
            duration_secs: Some(6.0),
            ..Overrides::default()
        },
    )
    .unwrap();
    for partitioner in ["murmur2", "consistent_random"] {
        // A broker of its own per partitioner: the payment adapter answers
        // the commands of the sale before it (placed by that sale's
        // partitioner) into `orders`, which the check would dead-letter.
        let broker = Broker::start();
        broker.create_contract_topics(PARTITIONS);
        let setting = format!("kafka.orders_partitioner={partitioner}");
        // The demo scenario audits payments: the processor retries on its
        // short policy, as the demo sets it.
        let processor = Processor::start(
            &broker,
            &[
                "engine.shards=2",
                &setting,
                "payments.retry_initial_ms=200",
                "payments.retry_max_ms=1000",
                "payments.max_attempts=4",
            ],
        );
        let config =
            Config::load(None, &[format!("kafka.brokers={}", broker.addr()), setting]).unwrap();
        let summary = loadtest::run(&config, &scenario, &Options::default(), &mut |_| {})
            .expect("the loadtest runs");
        processor.stop();
        let misrouted: Vec<String> = broker
            .read_to_end("orders-dlq")
            .iter()
            .filter(|m| header(m, "error").as_deref() == Some("wrong_partition"))
            .map(|m| format!("{}: {:?}", key_of(m), header(m, "error_detail")))
            .collect();
        assert!(
            misrouted.is_empty(),
            "{partitioner}: {} record(s) dead-lettered as wrong_partition, e.g. {:?}",
            misrouted.len(),
            &misrouted[..misrouted.len().min(3)]
        );
        assert!(summary.passed, "{partitioner}: {summary}");
        assert!(
            summary.orders_sent > 800,
            "{partitioner}: {} orders",
            summary.orders_sent
        );
        assert_eq!(summary.missing_status, 0, "{partitioner}");
        assert!(summary.malformed_sent > 0 && summary.dlq == summary.malformed_sent);
    }
}
