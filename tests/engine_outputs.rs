//! The engine's outputs, byte for byte, against those of the path it
//! replaced (issue 14): serde_json decoding, the first validator and
//! per-record allocations, at commit fdf6902.
//!
//! A fixed stream of records (the benchmark's order mix, then seeded random
//! orders: escapes, `\u` escapes, pretty-printed and reordered JSON, wrong
//! types, missing fields, numbers past i64, duplicate keys, unknown nested
//! fields, broken JSON, non-UTF-8, records over the size limit, other
//! event types, cancellations, duplicates and replays) goes through the
//! engine twice: selling the whole stock, and as partition 1 of 4 with a
//! quota. Everything a record produces (outcome, latency, each output's key,
//! payload and changelog header, each dead letter's reason and detail) is
//! written as text and hashed; `tests/fixtures/engine_outputs.txt` holds
//! the hashes the old path produced for the same stream. A mismatch prints
//! the record and what the engine produced now.
//!
//! `ENGINE_OUTPUTS_WRITE=1 cargo test --test engine_outputs` rewrites the
//! fixture: only ever from the path the fixture stands for (see its commit).

#[path = "../benches/support/mod.rs"]
mod support;

use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::{Inventory, Quota};
use orderflow::order::validate::Limits;
use orderflow::order::InventoryEvent;
use orderflow::state::{self, ChangelogEntry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::Arc;
use time::OffsetDateTime;

const FIXTURE: &str = "tests/fixtures/engine_outputs.txt";
const WRITE_ENV: &str = "ENGINE_OUTPUTS_WRITE";
/// Records of the benchmark's mix, then random ones.
const MIX_RECORDS: usize = 1_500;
const RANDOM_RECORDS: usize = 3_500;
/// Small enough that the stream forgets orders (evictions, then a
/// duplicate of a forgotten order is decided again).
const BOOK_CAPACITY: usize = 1_200;
/// SKUs with a per-customer limit of 2, and with little stock.
const LIMITED_SKU: &str = "LIMITED";
const SCARCE_SKU: &str = "SCARCE";
const SCARCE_STOCK: i64 = 40;

/// One record of the stream: key, value, and the offset it arrives at
/// (a replay comes again at the offset it first came at).
struct Record {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    offset: i64,
}

fn inventory() -> Inventory {
    let inventory = support::inventory(support::CATALOG_SKUS);
    for (sku, available, limit) in [
        (LIMITED_SKU, support::ENDLESS_STOCK, Some(2)),
        (SCARCE_SKU, SCARCE_STOCK, None),
    ] {
        inventory
            .apply(&InventoryEvent::StockSet {
                sku: sku.into(),
                available,
                prices: support::CURRENCIES
                    .iter()
                    .map(|c| (c.to_string(), support::price(7, c)))
                    .collect(),
                max_per_customer: limit,
            })
            .unwrap();
    }
    inventory
}

/// Text that upsets a decoder: quotes, backslashes, control characters,
/// non-ASCII of every width, and plain runs.
fn text(rng: &mut StdRng) -> String {
    const PIECES: [&str; 14] = [
        "Zoë", " ", "\"", "\\", "\n", "\t", "\u{1}", "李", "🏠", "Ørsted", "abcdefgh", "/", "é",
        "\u{7f}",
    ];
    let n = rng.gen_range(1..=6);
    (0..n)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

/// The first line, address or payment of an order, if it has one.
fn first<'a>(order: &'a mut Value, field: &str) -> Option<&'a mut serde_json::Map<String, Value>> {
    match order.get_mut(field)? {
        Value::Array(items) => items.first_mut()?.as_object_mut(),
        Value::Object(map) => map.values_mut().next()?.as_object_mut(),
        _ => None,
    }
}

/// A random change to an order's JSON value, one of many kinds (none when
/// an earlier change removed what it would change).
fn mutate(rng: &mut StdRng, order: &mut Value) {
    let pick = |rng: &mut StdRng, n: usize| rng.gen_range(0..n.max(1));
    let kind = rng.gen_range(0..34);
    let text = text(rng);
    let n = pick(rng, 10);
    let choose = |values: &[Value]| values[n % values.len()].clone();
    let Some(object) = order.as_object_mut() else {
        return;
    };
    let set = |map: Option<&mut serde_json::Map<String, Value>>, field: &str, value: Value| {
        if let Some(map) = map {
            map.insert(field.to_string(), value);
        }
    };
    let remove = |map: Option<&mut serde_json::Map<String, Value>>, field: &str| {
        if let Some(map) = map {
            map.remove(field);
        }
    };
    match kind {
        0 => {
            let field = [
                "customer_id",
                "placed_at",
                "currency",
                "lines",
                "addresses",
                "payments",
                "type",
                "order_id",
            ][n % 8];
            object.remove(field);
        }
        1 => set(first(order, "lines"), "quantity", json!("two")),
        2 => set(
            first(order, "lines"),
            "quantity",
            choose(&[
                json!(0),
                json!(-1),
                json!(101),
                json!(1i64 << 32),
                json!(i64::MAX),
                json!(i64::MIN),
                json!(100),
                json!(1),
            ]),
        ),
        3 => set(first(order, "lines"), "unit_price_minor", json!(-5)),
        4 => {
            object.insert(
                "currency".into(),
                choose(&[
                    json!("eur"),
                    json!("EURO"),
                    json!("XXX"),
                    json!(""),
                    json!("JPY"),
                    json!("USD"),
                ]),
            );
        }
        5 => {
            object.insert(
                "placed_at".into(),
                choose(&[
                    json!("2026-11-23T12:00:00Z"),
                    json!("2026-11-23T12:00:00.1+02:00"),
                    json!("2026-11-23t12:00:00z"),
                    json!("2026-02-30T12:00:00Z"),
                    json!("2026-11-23T23:59:60Z"),
                    json!("yesterday"),
                    json!("2026-11-23T12:00:00.123456789Z"),
                    json!("2026-11-23 12:00:00Z"),
                    json!("1970-01-01T00:00:00Z"),
                    json!("2026-11-23T12:00:00.123-00:00"),
                ]),
            );
        }
        6 => set(first(order, "addresses"), "name", json!(text)),
        7 => {
            let field = ["line2", "region"][n % 2];
            set(
                first(order, "addresses"),
                field,
                choose(&[json!(null), json!(text), json!(""), json!(7)]),
            );
        }
        8 => {
            let field = ["name", "line1", "city", "postal_code", "country"][n % 5];
            remove(first(order, "addresses"), field);
        }
        9 => set(
            first(order, "addresses"),
            "country",
            choose(&[
                json!("de"),
                json!("XX"),
                json!("D"),
                json!("DEU"),
                json!("FR"),
            ]),
        ),
        10 => set(
            first(order, "payments"),
            "method",
            choose(&[
                json!("bitcoin"),
                json!("wallet"),
                json!(""),
                json!("cash_on_delivery"),
                json!("CARD"),
            ]),
        ),
        11 => remove(first(order, "payments"), "authorization_id"),
        12 => set(first(order, "payments"), "authorization_id", json!(null)),
        13 => {
            object.insert("payments".into(), json!([]));
        }
        14 => {
            object.insert("lines".into(), json!([]));
        }
        15 => set(
            first(order, "payments"),
            "amount_minor",
            choose(&[json!(0), json!(-1), json!(i64::MAX)]),
        ),
        16 => set(first(order, "lines"), "ship_to", json!("moon")),
        17 => {
            // An address name with the fulfillment separator.
            let Some(Value::Object(addresses)) = object.get_mut("addresses") else {
                return;
            };
            let Some(key) = addresses.keys().next().cloned() else {
                return;
            };
            let address = addresses.remove(&key).unwrap();
            let renamed = format!("{key}/x");
            addresses.insert(renamed.clone(), address);
            if let Some(Value::Array(lines)) = object.get_mut("lines") {
                for line in lines {
                    if line.get("ship_to") == Some(&json!(key)) {
                        line["ship_to"] = json!(renamed);
                    }
                }
            }
        }
        18 => set(
            first(order, "lines"),
            "sku",
            choose(&[
                json!(LIMITED_SKU),
                json!(SCARCE_SKU),
                json!(support::EMPTY_SKU),
                json!("NOPE"),
                json!(""),
            ]),
        ),
        19 => {
            object.insert(
                "customer_id".into(),
                choose(&[
                    json!(""),
                    json!(null),
                    json!(5),
                    json!(text),
                    json!("x".repeat(300)),
                ]),
            );
        }
        20 => {
            object.insert(
                "unknown".into(),
                json!({"a": [1, {"b": [true, false, null, 1.5e3, -0.25, "s\u{1}"]}], "c": {}}),
            );
        }
        21 => {
            object.insert(
                "type".into(),
                choose(&[
                    json!("order_cancelled"),
                    json!("payment_result"),
                    json!(""),
                    json!("ORDER_PLACED"),
                ]),
            );
        }
        22 => {
            object.insert(
                "order_id".into(),
                choose(&[json!(""), json!(7), json!(null)]),
            );
        }
        23 => {
            object.insert("lines".into(), json!({"sku": "x"}));
        }
        24 => {
            if let Some(line) = first(order, "lines").map(|l| Value::Object(l.clone())) {
                order["lines"] = json!(vec![line; 100 + n % 2]);
            }
        }
        25 => {
            let Some(Value::Object(addresses)) = object.get_mut("addresses") else {
                return;
            };
            let Some(first) = addresses.values().next().cloned() else {
                return;
            };
            for k in 0..11 {
                addresses.insert(format!("extra{k}"), first.clone());
            }
        }
        26 => {
            if let Some(payment) = first(order, "payments").map(|p| Value::Object(p.clone())) {
                order["payments"] = json!(vec![payment; 6]);
            }
        }
        27 => set(
            first(order, "lines"),
            "note",
            json!({"deep": [[[[["x"]]]]]}),
        ),
        28 => set(first(order, "lines"), "quantity", json!(2.0)),
        29 => {
            object.insert("addresses".into(), json!(null));
        }
        30 => set(
            first(order, "lines"),
            "unit_price_minor",
            json!(i64::MAX / 2),
        ),
        31 => set(
            first(order, "addresses"),
            "city",
            json!("é".repeat(256 + n % 2)),
        ),
        32 => {
            object.insert("addresses".into(), json!({}));
        }
        _ => {
            object.insert("customer_id".into(), json!(format!("c-{}", n % 5)));
        }
    }
}

/// A change to the record's text that a JSON value cannot express.
fn mutate_text(rng: &mut StdRng, text: &mut Vec<u8>) {
    let replace = |text: &mut Vec<u8>, from: &str, to: &str| {
        let s = String::from_utf8(std::mem::take(text)).unwrap();
        *text = s.replacen(from, to, 1).into_bytes();
    };
    match rng.gen_range(0..14) {
        0 => replace(text, "ë", "\\u00eb"),
        1 => replace(text, "🏠", "\\ud83c\\udfe0"),
        2 => replace(text, "\"city\":", "\"city\":\"dup\",\"city\":"),
        3 => replace(text, "\"currency\":", "\"currency\":\"EUR\",\"currency\":"),
        4 => replace(
            text,
            "\"quantity\":",
            "\"quantity\":99999999999999999999,\"x\":",
        ),
        5 => {
            let cut = rng.gen_range(0..text.len());
            text.truncate(cut);
        }
        6 => {
            let at = rng.gen_range(0..text.len());
            text.insert(at, 0xff);
        }
        7 => replace(text, "\"home\"", "\"h\\u006fme\""),
        8 => replace(text, "\"order_id\"", "\"order\\u005fid\""),
        9 => replace(text, "{", "{ \n\t\r"),
        10 => replace(text, "\"channel\":\"app\"", "\"channel\":\"\\ud800\""),
        11 => replace(text, "\"Berlin\"", "\"Ber\\/lin\\b\\f\\r\\t\""),
        12 => text.extend_from_slice(b" x"),
        _ => replace(text, ":", " : "),
    }
}

fn random_record(
    rng: &mut StdRng,
    i: usize,
    placed: &[(String, Vec<u8>)],
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let id = format!("r-{i}");
    match rng.gen_range(0..20) {
        // Cancellations: of an order of the stream, or of an unknown one.
        0 | 1 => {
            let target = if placed.is_empty() || rng.gen_bool(0.2) {
                format!("nobody-{i}")
            } else {
                placed[rng.gen_range(0..placed.len())].0.clone()
            };
            let mut cancel = json!({"type": "order_cancelled", "order_id": target});
            if rng.gen_bool(0.5) {
                cancel["reason"] = json!("customer_request");
                cancel["cancelled_at"] = json!("2026-11-23T12:01:00Z");
            }
            if rng.gen_bool(0.1) {
                cancel["reason"] = json!(5);
            }
            (
                Some(target.into_bytes()),
                Some(serde_json::to_vec(&cancel).unwrap()),
            )
        }
        // An upstream duplicate of an order of the stream.
        2 if !placed.is_empty() => {
            let (key, value) = placed[rng.gen_range(0..placed.len())].clone();
            (Some(key.into_bytes()), Some(value))
        }
        3 => {
            let junk: [&[u8]; 8] = [b"", b"{}", b"[1,2]", b"null", b"\"s\"", b"{\"type\":\"order_placed\"}", b"not json", b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["];
            (
                Some(id.into_bytes()),
                Some(junk[rng.gen_range(0..junk.len())].to_vec()),
            )
        }
        // Contract Part 2 records about an order of the stream (the slow
        // path): mostly refused or invalid, some staff cancellations.
        5 if !placed.is_empty() => {
            let target = placed[rng.gen_range(0..placed.len())].0.clone();
            let record = match rng.gen_range(0..4) {
                0 => json!({"type": "payment_result", "order_id": target,
                    "command_id": format!("{target}:capture:1"), "attempt": 1,
                    "outcome": "ok"}),
                1 => json!({"type": "shipment_shipped", "order_id": target,
                    "fulfillment_id": format!("{target}/home"), "carrier": "ups",
                    "tracking_number": "1Z"}),
                2 => json!({"type": "staff_action", "order_id": target,
                    "action_id": format!("s-{i}"), "actor": "ann", "action": "cancel_order",
                    "note": "fraud"}),
                _ => json!({"type": "return_requested", "order_id": target}),
            };
            (
                Some(target.into_bytes()),
                Some(serde_json::to_vec(&record).unwrap()),
            )
        }
        4 => {
            // Over the record size limit.
            let mut order = support::order_value(
                rng,
                &id,
                i,
                support::Skus::Uniform,
                "2026-11-23T12:00:00.123Z",
            );
            order["padding"] = json!("p".repeat(70_000));
            (
                Some(id.into_bytes()),
                Some(serde_json::to_vec(&order).unwrap()),
            )
        }
        _ => {
            let mut order = support::order_value(
                rng,
                &id,
                i,
                support::Skus::Uniform,
                "2026-11-23T12:00:00.123Z",
            );
            if rng.gen_bool(0.05) {
                // A customer buying the limited SKU again and again.
                order["customer_id"] = json!(format!("c-{}", rng.gen_range(0..5)));
                let currency = order["currency"].as_str().unwrap().to_string();
                let price = support::price(7, &currency);
                let mut total = 0;
                for line in order["lines"].as_array_mut().unwrap() {
                    line["sku"] = json!(LIMITED_SKU);
                    line["unit_price_minor"] = json!(price);
                    total += price * line["quantity"].as_i64().unwrap();
                }
                order["payments"] =
                    json!([{"method": "card", "amount_minor": total, "authorization_id": "a"}]);
            }
            for _ in 0..rng.gen_range(0..=2) {
                mutate(rng, &mut order);
            }
            let mut value = if rng.gen_bool(0.1) {
                serde_json::to_vec_pretty(&order).unwrap()
            } else {
                serde_json::to_vec(&order).unwrap()
            };
            if rng.gen_bool(0.3) {
                mutate_text(rng, &mut value);
            }
            let key = match rng.gen_range(0..30) {
                0 => None,
                1 => Some(b"someone-else".to_vec()),
                _ => Some(id.into_bytes()),
            };
            (key, Some(value))
        }
    }
}

/// The stream: the mix, then random records, with some records replayed
/// at their first offset (as after a crash).
fn stream() -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut placed: Vec<(String, Vec<u8>)> = Vec::new();
    let mix = support::orders(MIX_RECORDS, "g", support::Skus::Uniform, 7);
    let mut rng = StdRng::seed_from_u64(14);
    let mut offset = 0;
    let mut push = |records: &mut Vec<Record>,
                    key: Option<Vec<u8>>,
                    value: Option<Vec<u8>>,
                    rng: &mut StdRng| {
        records.push(Record { key, value, offset });
        offset += 1;
        if rng.gen_bool(0.03) {
            let back = records.len() - rng.gen_range(1..=records.len().min(20));
            let again = &records[back];
            let replay = Record {
                key: again.key.clone(),
                value: again.value.clone(),
                offset: again.offset,
            };
            records.push(replay);
        }
    };
    for (key, value) in mix {
        placed.push((String::from_utf8(key.clone()).unwrap(), value.clone()));
        push(&mut records, Some(key), Some(value), &mut rng);
    }
    for i in 0..RANDOM_RECORDS {
        let (key, value) = random_record(&mut rng, i, &placed);
        if let (Some(k), Some(v)) = (&key, &value) {
            if let Ok(k) = String::from_utf8(k.clone()) {
                if v.starts_with(b"{\"type\":\"order_placed\"") || v.starts_with(b"{\n") {
                    placed.push((k, v.clone()));
                }
            }
        }
        push(&mut records, key, value, &mut rng);
    }
    records
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The changelog header a status or state record carries.
fn header(record: &orderflow::engine::OrderRecord) -> Vec<u8> {
    state::encode(&ChangelogEntry {
        partition: 1,
        record: record.clone(),
    })
}

/// Everything the engine produced for one record, as text.
fn describe(processed: &orderflow::engine::Processed, outputs: &[Output]) -> String {
    let mut text = format!("{:?} {:?}\n", processed.outcome, processed.latency);
    for output in outputs {
        match output {
            Output::Status {
                order_id,
                payload,
                record,
            } => {
                let header = header(record);
                let _ = writeln!(
                    text,
                    "status {order_id:?} {} {header:02x?}",
                    String::from_utf8_lossy(payload)
                );
            }
            Output::Fulfillment {
                order_id,
                kind,
                payload,
            } => {
                let _ = writeln!(
                    text,
                    "fulfillment {order_id:?} {kind} {}",
                    String::from_utf8_lossy(payload)
                );
            }
            Output::DeadLetter(dead) => {
                let _ = writeln!(text, "dead {:?} {:?}", dead.reason, dead.detail);
            }
            Output::Event {
                order_id,
                kind,
                payload,
            } => {
                let _ = writeln!(
                    text,
                    "event {order_id:?} {kind} {}",
                    String::from_utf8_lossy(payload)
                );
            }
            Output::Command {
                order_id,
                kind,
                payload,
            } => {
                let _ = writeln!(
                    text,
                    "command {order_id:?} {kind:?} {}",
                    String::from_utf8_lossy(payload)
                );
            }
            Output::State { order_id, record } => {
                let header = header(record);
                let _ = writeln!(text, "state {order_id:?} {header:02x?}");
            }
        }
    }
    text
}

/// Runs the stream through one engine and book; one text per record.
fn run(records: &[Record], quota: Option<Quota>) -> Vec<String> {
    let engine = Engine::new(Arc::new(inventory()), Limits::default());
    let mut book = match quota {
        Some(quota) => OrderBook::with_quota(BOOK_CAPACITY, quota),
        None => OrderBook::new(BOOK_CAPACITY),
    };
    // Ten milliseconds after the mix's placed_at.
    let now = OffsetDateTime::from_unix_timestamp_nanos(1_795_435_200_133_000_000).unwrap();
    let mut out = Vec::new();
    records
        .iter()
        .map(|record| {
            out.clear();
            let processed = engine.process(
                &mut book,
                record.offset,
                record.key.as_deref(),
                record.value.as_deref(),
                now,
                &mut out,
            );
            describe(&processed, &out)
        })
        .collect()
}

#[test]
fn outputs_are_byte_identical_to_the_replaced_path() {
    let records = stream();
    let whole = run(&records, None);
    let quota = run(
        &records,
        Some(Quota {
            partition: 1,
            partitions: 4,
        }),
    );
    let lines: Vec<String> = whole
        .iter()
        .zip(&quota)
        .enumerate()
        .map(|(i, (w, q))| {
            let outcome = w.split(' ').next().unwrap_or_default();
            format!(
                "{i} {outcome} {:016x} {:016x}",
                fnv1a(w.as_bytes()),
                fnv1a(q.as_bytes())
            )
        })
        .collect();
    if std::env::var_os(WRITE_ENV).is_some() {
        std::fs::write(FIXTURE, lines.join("\n") + "\n").unwrap();
        return;
    }
    let fixture = std::fs::read_to_string(FIXTURE).unwrap();
    let expected: Vec<&str> = fixture.lines().collect();
    assert_eq!(expected.len(), lines.len(), "records in the fixture");
    let mut wrong = 0;
    for (i, (want, got)) in expected.iter().zip(&lines).enumerate() {
        if *want != got {
            wrong += 1;
            if wrong <= 5 {
                let record = &records[i];
                eprintln!(
                    "record {i} differs: fixture {want}, now {got}\nkey {:?}\nvalue {}\nwhole stock:\n{}quota:\n{}",
                    record.key.as_deref().map(String::from_utf8_lossy),
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()),
                    whole[i],
                    quota[i]
                );
            }
        }
    }
    assert_eq!(wrong, 0, "records whose outputs differ from the fixture's");
    // The stream reaches every kind of outcome.
    let outcomes: std::collections::BTreeSet<&str> = whole
        .iter()
        .map(|w| w.split([' ', '(']).next().unwrap_or_default())
        .collect();
    for kind in [
        "Accepted",
        "Rejected",
        "Cancelled",
        "Duplicate",
        "CancelIgnored",
        "Replayed",
        "DeadLetter",
    ] {
        assert!(outcomes.contains(kind), "no {kind} in {outcomes:?}");
    }
    for reason in orderflow::order::Reason::ALL {
        let shown = format!("Rejected({reason:?})");
        assert!(whole.iter().any(|w| w.starts_with(&shown)), "no {shown}");
    }
}
