//! End to end on Apache Kafka: thousands of orders of every kind in the
//! contract go in through a real producer; every output topic is read back
//! (read_committed) and each order's outcome checked against what the
//! contract says it must be.

mod common;

use common::{header, json, Broker, Processor};
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const PARTITIONS: i32 = 4;
/// The processor's default `kafka.max_dlq_payload_bytes`.
const DLQ_PAYLOAD_LIMIT: usize = 900_000;
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the test expects for one order ID.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Accepted,
    Rejected(&'static str),
    /// Accepted, then cancelled.
    Cancelled,
    /// Competes for the hot SKU: accepted or out_of_stock.
    Hot,
    /// One of a pair for a limited SKU: accepted or customer_limit_exceeded.
    Limited,
}

/// (expected `error` header, key, value) of an unreadable record.
type DeadRecord = (&'static str, Option<Vec<u8>>, Vec<u8>);

struct Scenario {
    inventory: Vec<Value>,
    /// (key, value) in send order.
    orders: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    expect: BTreeMap<String, Expect>,
    /// order_id → the order as sent (for checking fulfillments).
    placed: HashMap<String, Value>,
    /// Unreadable records sent, by the `error` header they must get.
    dead: Vec<DeadRecord>,
    stock: HashMap<String, i64>,
}

const HOT_STOCK: i64 = 100;
const NAMES: [&str; 6] = [
    "Zoë Ørsted 🏠",
    "李小龍",
    "Jürgen Groß",
    "Анна Каренина",
    "محمد 🚀",
    "O'Brien \"Bob\"",
];

fn address(i: usize, label: &str) -> Value {
    let country = ["DE", "JP", "US", "EG"][i % 4];
    json!({"name": format!("{} {label}", NAMES[i % NAMES.len()]), "line1": format!("Straße {i} 🏢"),
           "city": "Berlin", "postal_code": format!("{:05}", i), "country": country})
}

/// An order with `lines` (sku, qty, unit price) over `addresses` addresses,
/// paid in up to three payments that add up to the total.
fn order(
    id: &str,
    customer: &str,
    currency: &str,
    lines: &[(&str, i64, i64)],
    addresses: usize,
) -> Value {
    let total: i64 = lines.iter().map(|(_, q, p)| q * p).sum();
    let labels: Vec<String> = (0..addresses).map(|a| format!("addr{a}")).collect();
    let lines: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, q, p))| json!({"sku": sku, "quantity": q, "unit_price_minor": p, "ship_to": labels[i % addresses]}))
        .collect();
    let addr: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(a, l)| (l.clone(), address(id.len() + a, l)))
        .collect();
    let payments = if total >= 3 {
        json!([{"method": "card", "amount_minor": total - 2, "authorization_id": "auth-1"},
               {"method": "wallet", "amount_minor": 1, "authorization_id": "auth-2"},
               {"method": "cash_on_delivery", "amount_minor": 1}])
    } else {
        json!([{"method": "card", "amount_minor": total, "authorization_id": "auth-1"}])
    };
    json!({"type": "order_placed", "order_id": id, "customer_id": customer, "placed_at": "2026-11-23T12:00:00.000Z",
           "currency": currency, "lines": lines, "addresses": addr, "payments": payments, "channel": "app"})
}

fn build() -> Scenario {
    let mut s = Scenario {
        inventory: Vec::new(),
        orders: Vec::new(),
        expect: BTreeMap::new(),
        placed: HashMap::new(),
        dead: Vec::new(),
        stock: HashMap::new(),
    };
    let price = |i: usize| 100 + i as i64 * 7;
    for i in 0..40 {
        let sku = format!("SKU-{i}");
        s.inventory.push(json!({"type": "stock_set", "sku": sku, "available": 100_000,
                                "prices": {"EUR": price(i), "USD": price(i) + 10, "JPY": price(i) * 150}}));
        s.stock.insert(sku, 100_000);
    }
    s.inventory.push(json!({"type": "stock_set", "sku": "HOT", "available": HOT_STOCK / 2, "prices": {"EUR": 999}}));
    s.inventory
        .push(json!({"type": "stock_adjusted", "sku": "HOT", "delta": HOT_STOCK / 2}));
    s.stock.insert("HOT".into(), HOT_STOCK);
    s.inventory.push(json!({"type": "stock_set", "sku": "LIMITED", "available": 10_000, "prices": {"EUR": 50}, "max_per_customer": 2}));
    s.stock.insert("LIMITED".into(), 10_000);
    s.inventory
        .push(json!({"type": "stock_set", "sku": "EMPTY", "available": 0, "prices": {"EUR": 10}}));
    s.stock.insert("EMPTY".into(), 0);

    let push = |s: &mut Scenario, id: String, value: Value, expect: Expect| {
        s.orders.push((
            Some(id.clone().into_bytes()),
            serde_json::to_vec(&value).unwrap(),
        ));
        s.placed.insert(id.clone(), value);
        s.expect.insert(id, expect);
    };
    // Valid orders: 1–3 lines, 1–3 addresses, 1–3 payments, three currencies.
    for i in 0..2_000 {
        let currency = ["EUR", "USD", "JPY"][i % 3];
        let n_lines = i % 3 + 1;
        let lines: Vec<(String, i64, i64)> = (0..n_lines)
            .map(|l| {
                let k = (i * 7 + l * 13) % 40;
                let p = match currency {
                    "EUR" => price(k),
                    "USD" => price(k) + 10,
                    _ => price(k) * 150,
                };
                (format!("SKU-{k}"), (l + 1) as i64, p)
            })
            .collect();
        let lines: Vec<(&str, i64, i64)> =
            lines.iter().map(|(s, q, p)| (s.as_str(), *q, *p)).collect();
        let id = format!("o-valid-{i}");
        let expect = if i % 10 == 0 {
            Expect::Cancelled
        } else {
            Expect::Accepted
        };
        push(
            &mut s,
            id.clone(),
            order(&id, &format!("c-{i}"), currency, &lines, i % 3 + 1),
            expect,
        );
    }
    // A hot SKU with far less stock than demand, hit from every partition.
    for i in 0..600 {
        let id = format!("o-hot-{i}");
        push(
            &mut s,
            id.clone(),
            order(
                &id,
                &format!("c-hot-{i}"),
                "EUR",
                &[("HOT", 1, 999), ("SKU-1", 1, price(1))],
                1,
            ),
            Expect::Hot,
        );
    }
    // Pairs of orders of one customer for a SKU limited to 2 per customer.
    for i in 0..50 {
        for half in ["a", "b"] {
            let id = format!("o-limit-{i}-{half}");
            push(
                &mut s,
                id.clone(),
                order(
                    &id,
                    &format!("c-limit-{i}"),
                    "EUR",
                    &[("LIMITED", 2, 50)],
                    1,
                ),
                Expect::Limited,
            );
        }
    }
    // Every rejection reason, 40 of each, several ways to be invalid.
    for i in 0..40 {
        let base = |tag: &str| format!("o-{tag}-{i}");
        let good = |id: &str| order(id, "c-r", "EUR", &[("SKU-3", 1, price(3))], 2);
        let id = base("invalid");
        let mut v = good(&id);
        match i % 8 {
            0 => v["lines"] = json!([]),
            1 => v["lines"][0]["quantity"] = json!(0),
            2 => v["lines"][0]["quantity"] = json!(101),
            3 => v["addresses"]["addr0"]["country"] = json!("XX"),
            4 => v["addresses"]["addr0"]["name"] = json!("é".repeat(257)),
            5 => v
                .as_object_mut()
                .unwrap()
                .remove("customer_id")
                .map(|_| ())
                .unwrap(),
            6 => v["lines"][0]["quantity"] = json!("two"),
            _ => {
                v["lines"][0]["unit_price_minor"] = json!(i64::MAX); // 2 × MAX overflows
                v["lines"][0]["quantity"] = json!(2);
            }
        }
        push(&mut s, id, v, Expect::Rejected("invalid_order"));
        let id = base("currency");
        let mut v = good(&id);
        v["currency"] = json!("EURO");
        push(&mut s, id, v, Expect::Rejected("unknown_currency"));
        let id = base("sku");
        push(
            &mut s,
            id.clone(),
            order(
                &id,
                "c-r",
                "EUR",
                &[("SKU-3", 1, price(3)), ("NOPE", 1, 5)],
                1,
            ),
            Expect::Rejected("unknown_sku"),
        );
        let id = base("price");
        let v = if i % 2 == 0 {
            order(&id, "c-r", "EUR", &[("SKU-3", 1, price(3) + 1)], 1)
        } else {
            order(&id, "c-r", "GBP", &[("SKU-3", 1, price(3))], 1) // no GBP price in the catalog
        };
        push(&mut s, id, v, Expect::Rejected("price_mismatch"));
        let id = base("payment");
        let mut v = good(&id);
        match i % 3 {
            0 => v["payments"][0]["amount_minor"] = json!(1),
            1 => v["payments"][0]["method"] = json!("bitcoin"),
            _ => v["payments"][0]
                .as_object_mut()
                .unwrap()
                .remove("authorization_id")
                .map(|_| ())
                .unwrap(),
        }
        push(&mut s, id, v, Expect::Rejected("payment_mismatch"));
        let id = base("stock");
        push(
            &mut s,
            id.clone(),
            order(
                &id,
                "c-r",
                "EUR",
                &[("SKU-4", 1, price(4)), ("EMPTY", 1, 10)],
                1,
            ),
            Expect::Rejected("out_of_stock"),
        );
    }
    // Duplicates: producer retries of placed orders.
    let duplicates: Vec<_> = s.orders.iter().step_by(7).take(300).cloned().collect();
    s.orders.extend(duplicates);
    // Cancellations (after their orders), plus cancellations that change nothing.
    let cancels: Vec<String> = s
        .expect
        .iter()
        .filter(|(_, e)| **e == Expect::Cancelled)
        .map(|(id, _)| id.clone())
        .collect();
    for id in cancels
        .iter()
        .chain(["o-never-placed".to_string(), "o-invalid-0".to_string()].iter())
    {
        let v = json!({"type": "order_cancelled", "order_id": id, "cancelled_at": "2026-11-23T12:01:00Z", "reason": "customer_request"});
        s.orders.push((
            Some(id.clone().into_bytes()),
            serde_json::to_vec(&v).unwrap(),
        ));
    }
    // A second cancellation of the same order changes nothing.
    let again = json!({"type": "order_cancelled", "order_id": cancels[0]});
    s.orders.push((
        Some(cancels[0].clone().into_bytes()),
        serde_json::to_vec(&again).unwrap(),
    ));
    // Records that are not order events at all.
    let valid_bytes = serde_json::to_vec(&order(
        "o-dlq-key",
        "c",
        "EUR",
        &[("SKU-1", 1, price(1))],
        1,
    ))
    .unwrap();
    s.dead = vec![
        (
            "not_json",
            Some(b"k1".to_vec()),
            b"{\"type\": \"order_placed\", ".to_vec(),
        ),
        (
            "not_utf8",
            Some(b"k2".to_vec()),
            b"{\"type\":\"order_placed\",\"order_id\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "too_large",
            Some(b"k3".to_vec()),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
        ),
        (
            "missing_order_id",
            Some(b"k4".to_vec()),
            br#"{"type":"order_placed","customer_id":"c"}"#.to_vec(),
        ),
        (
            "key_mismatch",
            Some(b"another-key".to_vec()),
            valid_bytes.clone(),
        ),
        ("key_mismatch", None, valid_bytes),
        (
            "not_an_order_event",
            Some(b"k5".to_vec()),
            br#"{"type":"order_shipped","order_id":"k5"}"#.to_vec(),
        ),
        (
            "not_json",
            Some(b"k6".to_vec()),
            format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        ),
    ];
    for (_, key, value) in s.dead.clone() {
        s.orders.push((key, value));
    }
    s
}

#[test]
fn every_order_gets_the_contract_outcome() {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let s = build();
    let inventory: Vec<_> = s
        .inventory
        .iter()
        .map(|v| {
            (
                Some(v["sku"].as_str().unwrap().as_bytes().to_vec()),
                serde_json::to_vec(v).unwrap(),
            )
        })
        .collect();
    broker.produce("inventory", &inventory);
    let processor = Processor::start(&broker, &["engine.shards=2"]);
    broker.produce("orders", &s.orders);
    // A sentinel at the end of every partition: once each has its status,
    // every record before it was processed (partitions are read in order).
    for p in 0..PARTITIONS {
        let id = common::key_for_partition("o-sentinel", p, PARTITIONS);
        let value = serde_json::to_vec(&order(&id, "c-s", "EUR", &[("SKU-2", 1, 114)], 1)).unwrap();
        broker.produce_to_partition("orders", p, id.as_bytes(), &value);
    }
    broker.read_until("order-status", OUTPUT_TIMEOUT, |messages| {
        let ids: HashSet<String> = messages
            .iter()
            .map(|m| json(m)["order_id"].as_str().unwrap().to_string())
            .collect();
        (0..PARTITIONS)
            .all(|p| ids.contains(&common::key_for_partition("o-sentinel", p, PARTITIONS)))
    });
    processor.stop();

    let statuses = broker.read_to_end("order-status");
    let fulfillments = broker.read_to_end("fulfillments");
    let dlq = broker.read_to_end("orders-dlq");

    // Exactly one decision per placed order, and the expected one.
    let mut decisions: HashMap<String, Vec<Value>> = HashMap::new();
    let mut cancelled: HashMap<String, usize> = HashMap::new();
    for m in &statuses {
        let v = json(m);
        let id = v["order_id"].as_str().unwrap().to_string();
        assert_eq!(m.key(), Some(id.as_bytes()), "status keyed by order id");
        assert_eq!(
            v["event_id"],
            format!("{id}:{}", v["status"].as_str().unwrap())
        );
        if v["status"] == "cancelled" {
            *cancelled.entry(id).or_default() += 1;
        } else {
            decisions.entry(id).or_default().push(v);
        }
    }
    let missing: Vec<&String> = s
        .expect
        .keys()
        .filter(|id| !decisions.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} orders without a status, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let (mut hot_accepted, mut limited_pairs) = (0, HashMap::<String, Vec<String>>::new());
    for (id, expect) in &s.expect {
        let got = decisions
            .get(id)
            .unwrap_or_else(|| panic!("{id}: no status"));
        assert_eq!(got.len(), 1, "{id}: {} decisions: {got:?}", got.len());
        let (status, reason) = (
            got[0]["status"].as_str().unwrap(),
            got[0]["reason"].as_str(),
        );
        *counts
            .entry(format!("{status}/{}", reason.unwrap_or("-")))
            .or_default() += 1;
        match expect {
            Expect::Accepted | Expect::Cancelled => {
                assert_eq!(status, "accepted", "{id}: {:?}", got[0])
            }
            Expect::Rejected(want) => {
                assert_eq!(
                    (status, reason),
                    ("rejected", Some(*want)),
                    "{id}: {:?}",
                    got[0]
                );
                assert!(
                    got[0]["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{id}: rejection has a detail"
                );
            }
            Expect::Hot => match (status, reason) {
                ("accepted", _) => hot_accepted += 1,
                ("rejected", Some("out_of_stock")) => {}
                other => panic!("{id}: {other:?}"),
            },
            Expect::Limited => {
                let key = id.rsplit_once('-').unwrap().0.to_string();
                limited_pairs
                    .entry(key)
                    .or_default()
                    .push(format!("{status}/{}", reason.unwrap_or("-")));
            }
        }
    }
    println!("outcomes: {counts:#?}");
    assert_eq!(
        hot_accepted, HOT_STOCK,
        "demand exceeds stock: the hot SKU sells out exactly"
    );
    for (pair, outcomes) in &limited_pairs {
        let mut outcomes = outcomes.clone();
        outcomes.sort();
        assert_eq!(
            outcomes,
            ["accepted/-", "rejected/customer_limit_exceeded"],
            "{pair}"
        );
    }
    assert_eq!(
        decisions.len(),
        s.expect.len() + PARTITIONS as usize,
        "no status for an unknown order"
    );

    // Cancellations: one status each, only for accepted orders.
    let want_cancelled: HashSet<&String> = s
        .expect
        .iter()
        .filter(|(_, e)| **e == Expect::Cancelled)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(cancelled.len(), want_cancelled.len());
    assert!(
        cancelled
            .iter()
            .all(|(id, n)| *n == 1 && want_cancelled.contains(id)),
        "one cancelled status per cancelled order"
    );

    // Fulfillments: one per address of each accepted order, text unchanged;
    // one cancellation per shipment of a cancelled order.
    let mut requested: HashMap<String, Vec<Value>> = HashMap::new();
    let mut fulfillment_cancels: HashMap<String, usize> = HashMap::new();
    for m in &fulfillments {
        let v = json(m);
        let id = v["order_id"].as_str().unwrap().to_string();
        match v["type"].as_str().unwrap() {
            "fulfillment_requested" => requested.entry(id).or_default().push(v),
            "fulfillment_cancelled" => *fulfillment_cancels.entry(id).or_default() += 1,
            other => panic!("unknown fulfillment type {other}"),
        }
    }
    let mut sold: HashMap<String, i64> = HashMap::new();
    for (id, got) in &decisions {
        if got[0]["status"] != "accepted" {
            assert!(
                !requested.contains_key(id),
                "{id}: rejected order got a fulfillment"
            );
            continue;
        }
        let Some(sent) = s.placed.get(id) else {
            continue;
        }; // sentinels
        let addresses = sent["addresses"].as_object().unwrap();
        let shipments = requested
            .get(id)
            .unwrap_or_else(|| panic!("{id}: no fulfillment"));
        assert_eq!(
            shipments.len(),
            addresses.len(),
            "{id}: one fulfillment per address"
        );
        for f in shipments {
            let key = f["fulfillment_id"]
                .as_str()
                .unwrap()
                .rsplit_once('/')
                .unwrap()
                .1;
            assert_eq!(f["address"], addresses[key], "{id}: address text unchanged");
        }
        if want_cancelled.contains(id) {
            assert_eq!(
                fulfillment_cancels.get(id),
                Some(&addresses.len()),
                "{id}: one cancellation per shipment"
            );
        } else {
            for line in sent["lines"].as_array().unwrap() {
                *sold
                    .entry(line["sku"].as_str().unwrap().to_string())
                    .or_default() += line["quantity"].as_i64().unwrap();
            }
        }
    }
    for (sku, units) in &sold {
        assert!(
            *units <= s.stock[sku],
            "{sku}: {units} units sold, stock {}",
            s.stock[sku]
        );
    }

    // Dead letters: the original bytes, untouched, with the contract headers.
    assert_eq!(
        dlq.len(),
        s.dead.len(),
        "one dead letter per unreadable record"
    );
    for (error, key, value) in &s.dead {
        let omitted = value.len() > DLQ_PAYLOAD_LIMIT;
        let found = dlq
            .iter()
            .find(|m| {
                let same_value = if omitted {
                    m.payload().is_none()
                } else {
                    m.payload() == Some(value.as_slice())
                };
                same_value && m.key().map(<[u8]>::to_vec) == *key
            })
            .unwrap_or_else(|| panic!("no dead letter for a {error} record"));
        let omitted_header = header(found, "payload_omitted_bytes");
        assert_eq!(
            omitted_header,
            omitted.then(|| value.len().to_string()),
            "{error}: payload_omitted_bytes"
        );
        assert_eq!(header(found, "error").as_deref(), Some(*error));
        assert_eq!(header(found, "source_topic").as_deref(), Some("orders"));
        assert!(header(found, "error_detail").is_some_and(|d| !d.is_empty()));
        let partition: i32 = header(found, "source_partition").unwrap().parse().unwrap();
        assert!((0..PARTITIONS).contains(&partition));
        assert!(header(found, "source_offset")
            .unwrap()
            .parse::<i64>()
            .is_ok());
    }
}
