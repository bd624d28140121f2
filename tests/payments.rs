//! Payments after acceptance on Apache Kafka (contract Part 2, issue 12):
//! captures with retries and backoff, a decline that cancels and restocks,
//! a payment that reaches staff and a staff retry that captures it, and a
//! kill -9 between a command and its result. The simulated adapter answers
//! by authorization ID; for the others the test plays the gateway
//! (`payments.adapter = "external"`): it reads `payment-requests` and writes
//! `payment_result` records to the command's partition of `orders`.

mod common;

use common::{free_port, json, one_at_a_time, Broker, Processor};
use rdkafka::message::{Message, OwnedMessage};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const PARTITIONS: i32 = 2;
const TIMEOUT: Duration = Duration::from_secs(120);
/// The sale's short retry policy (the defaults wait minutes).
const RETRY_INITIAL_MS: i64 = 500;
const RETRY_MAX_MS: i64 = 2_000;
const MAX_ATTEMPTS: u64 = 3;

fn policy() -> Vec<String> {
    vec![
        format!("payments.retry_initial_ms={RETRY_INITIAL_MS}"),
        format!("payments.retry_max_ms={RETRY_MAX_MS}"),
        format!("payments.max_attempts={MAX_ATTEMPTS}"),
        "payments.result_timeout_ms=60000".to_string(),
    ]
}

fn broker_with_stock(stock: &[(&str, i64)]) -> Broker {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let events: Vec<Value> = stock
        .iter()
        .map(|(sku, units)| json!({"type": "stock_set", "sku": sku, "available": units, "prices": {"EUR": 500}}))
        .collect();
    broker.produce("inventory", &common::inventory_records(&events));
    broker
}

/// One line of one unit of `sku` at 500, paid by `payments`
/// (method, amount, authorization ID).
fn order(id: &str, sku: &str, payments: &[(&str, i64, &str)]) -> (Option<Vec<u8>>, Vec<u8>) {
    let payments: Vec<Value> = payments
        .iter()
        .map(|(method, amount, auth)| json!({"method": method, "amount_minor": amount, "authorization_id": auth}))
        .collect();
    let value = json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{id}"),
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR",
        "lines": [{"sku": sku, "quantity": 1, "unit_price_minor": 500, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë Ørsted 🏠", "line1": "Hauptstraße 1", "city": "Berlin",
            "postal_code": "10115", "country": "DE"}},
        "payments": payments});
    (
        Some(id.as_bytes().to_vec()),
        serde_json::to_vec(&value).unwrap(),
    )
}

fn of_order<'a>(messages: &'a [OwnedMessage], id: &str) -> Vec<(Value, &'a OwnedMessage)> {
    messages
        .iter()
        .filter(|m| m.key() == Some(id.as_bytes()))
        .map(|m| (json(m), m))
        .collect()
}

/// The order's lifecycle events of `kind`, one per event ID.
fn events_of(broker: &Broker, id: &str, kind: &str, at_least: usize) -> Vec<Value> {
    let messages = broker.read_until("order-events", TIMEOUT, |messages| {
        distinct(of_order(messages, id), kind).len() >= at_least
    });
    distinct(of_order(&messages, id), kind)
}

fn distinct(values: Vec<(Value, &OwnedMessage)>, kind: &str) -> Vec<Value> {
    let mut seen = HashMap::new();
    for (value, _) in values {
        if value["type"] == kind {
            seen.entry(value["event_id"].as_str().unwrap().to_string())
                .or_insert(value);
        }
    }
    let mut values: Vec<Value> = seen.into_values().collect();
    values.sort_by_key(|v| v["at"].as_str().unwrap().to_string());
    values
}

/// Every command record for the order (copies included), with the
/// partition it was written to.
fn commands(broker: &Broker, id: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<(Value, i32)> {
    let messages = broker.read_until("payment-requests", TIMEOUT, |messages| {
        let values: Vec<Value> = of_order(messages, id).into_iter().map(|(v, _)| v).collect();
        enough(&values)
    });
    of_order(&messages, id)
        .into_iter()
        .map(|(v, m)| (v, m.partition()))
        .collect()
}

fn at(value: &Value, field: &str) -> OffsetDateTime {
    OffsetDateTime::parse(value[field].as_str().unwrap(), &Rfc3339).unwrap()
}

/// The test's gateway answers one command attempt.
fn answer(broker: &Broker, command: &Value, partition: i32, outcome: &str) {
    let id = command["order_id"].as_str().unwrap();
    let result = json!({"type": "payment_result", "order_id": id,
        "command_id": command["command_id"], "attempt": command["attempt"],
        "outcome": outcome, "code": if outcome == "succeeded" { "ok" } else { "gateway_test" },
        "gateway_ref": format!("test-{}", command["attempt"])});
    broker.produce_to_partition(
        "orders",
        partition,
        id.as_bytes(),
        &serde_json::to_vec(&result).unwrap(),
    );
}

fn attempt(value: &Value) -> u64 {
    value["attempt"].as_u64().unwrap()
}

fn statuses(broker: &Broker, id: &str, at_least: usize) -> Vec<Value> {
    let messages = broker.read_until("order-status", TIMEOUT, |messages| {
        of_order(messages, id).len() >= at_least
    });
    of_order(&messages, id)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

#[test]
fn a_flaky_authorization_is_captured_on_attempt_three_after_two_backoffs() {
    let _one = one_at_a_time();
    let broker = broker_with_stock(&[("SKU-1", 10)]);
    let settings = policy();
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let processor = Processor::start(&broker, &settings);
    broker.produce(
        "orders",
        &[order("o-flaky", "SKU-1", &[("card", 500, "auth-flaky-2")])],
    );

    let captured = events_of(&broker, "o-flaky", "payment_captured", 1);
    assert_eq!(captured.len(), 1, "captured once: {captured:?}");
    let commands = commands(&broker, "o-flaky", |c| c.len() >= 3);
    let mut attempts: Vec<(u64, OffsetDateTime)> = commands
        .iter()
        .map(|(c, _)| {
            assert_eq!(c["command_id"], "o-flaky/p0:capture", "one command ID");
            assert_eq!(c["type"], "capture");
            (attempt(c), at(c, "requested_at"))
        })
        .collect();
    attempts.sort();
    attempts.dedup_by_key(|(n, _)| *n);
    let numbers: Vec<u64> = attempts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3], "attempts of the capture");
    // Backoffs: initial, then doubled (each with at most 10 % jitter),
    // counted from the failed result, which comes after the attempt.
    let first = (attempts[1].1 - attempts[0].1).whole_milliseconds();
    let second = (attempts[2].1 - attempts[1].1).whole_milliseconds();
    assert!(
        first >= i128::from(RETRY_INITIAL_MS),
        "first backoff {first} ms"
    );
    assert!(
        second >= i128::from(2 * RETRY_INITIAL_MS),
        "second backoff {second} ms"
    );
    let retries = events_of(&broker, "o-flaky", "payment_retry_scheduled", 2);
    let next: Vec<u64> = retries.iter().map(attempt).collect();
    assert_eq!(next, [2, 3], "retries scheduled: {retries:?}");
    let paid = events_of(&broker, "o-flaky", "order_paid", 1);
    assert_eq!(paid[0]["amount_minor"], 500);
    assert!(captured[0]["gateway_ref"].is_string(), "{captured:?}");
    processor.stop();
}

#[test]
fn a_decline_cancels_restocks_and_voids_and_staff_retry_captures_a_payment_in_attention() {
    let _one = one_at_a_time();
    let broker = broker_with_stock(&[("ONE", 1), ("MANY", 10)]);
    let mut settings = policy();
    settings.push("payments.adapter=external".to_string());
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let processor = Processor::start(&broker, &settings);

    // Decline: the card is declined before the wallet is answered.
    broker.produce(
        "orders",
        &[order(
            "o-decline",
            "ONE",
            &[("card", 300, "a-1"), ("wallet", 200, "a-2")],
        )],
    );
    let captures = commands(&broker, "o-decline", |c| c.len() >= 2);
    let card = captures
        .iter()
        .find(|(c, _)| c["command_id"] == "o-decline/p0:capture")
        .expect("the card's capture");
    answer(&broker, &card.0, card.1, "declined");
    let status = statuses(&broker, "o-decline", 2);
    assert_eq!(status[0]["status"], "accepted");
    assert_eq!(status[1]["status"], "cancelled");
    assert_eq!(status[1]["reason"], "payment_declined", "{:?}", status[1]);
    events_of(&broker, "o-decline", "payment_declined", 1);
    let void = commands(&broker, "o-decline", |c| {
        c.iter().any(|c| c["type"] == "void")
    });
    let void = void
        .iter()
        .find(|(c, _)| c["type"] == "void")
        .expect("a void");
    assert_eq!(
        void.0["command_id"], "o-decline/p1:void",
        "the wallet is voided"
    );
    answer(&broker, &void.0, void.1, "succeeded");
    events_of(&broker, "o-decline", "payment_voided", 1);
    // The unit came back exactly once: one later order gets it, the next
    // does not.
    broker.produce(
        "orders",
        &[order("o-after-1", "ONE", &[("card", 500, "a-3")])],
    );
    assert_eq!(statuses(&broker, "o-after-1", 1)[0]["status"], "accepted");
    broker.produce(
        "orders",
        &[order("o-after-2", "ONE", &[("card", 500, "a-4")])],
    );
    let late = &statuses(&broker, "o-after-2", 1)[0];
    assert_eq!(
        (late["status"].as_str(), late["reason"].as_str()),
        (Some("rejected"), Some("out_of_stock"))
    );

    // Down: every attempt fails until the payment needs staff.
    broker.produce(
        "orders",
        &[order("o-down", "MANY", &[("card", 500, "a-down")])],
    );
    for n in 1..=MAX_ATTEMPTS {
        let all = commands(&broker, "o-down", |c| c.iter().any(|c| attempt(c) == n));
        let (command, partition) = all.iter().find(|(c, _)| attempt(c) == n).unwrap();
        answer(&broker, command, *partition, "failed");
    }
    let attention = events_of(&broker, "o-down", "payment_attention", 1);
    assert_eq!(attention[0]["attempts"], MAX_ATTEMPTS, "{attention:?}");
    let staff = json!({"type": "staff_action", "order_id": "o-down", "action_id": "act-1",
        "actor": "maria", "action": "retry_payment", "target": "o-down/p0",
        "note": "customer updated card"});
    broker.produce(
        "orders",
        &[(
            Some(b"o-down".to_vec()),
            serde_json::to_vec(&staff).unwrap(),
        )],
    );
    let next = MAX_ATTEMPTS + 1;
    let all = commands(&broker, "o-down", |c| c.iter().any(|c| attempt(c) == next));
    let (command, partition) = all.iter().find(|(c, _)| attempt(c) == next).unwrap();
    assert_eq!(
        command["command_id"], "o-down/p0:capture",
        "the same command"
    );
    answer(&broker, command, *partition, "succeeded");
    events_of(&broker, "o-down", "payment_captured", 1);
    events_of(&broker, "o-down", "order_paid", 1);
    events_of(&broker, "o-down", "staff_action_applied", 1);
    processor.stop();
}

/// `orderflow run` as a process of its own, so it can be killed.
fn start_binary(broker: &Broker, metrics: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args(["run", "--brokers", &broker.addr()])
        .args(["--set", "kafka.session_timeout_ms=6000"])
        .args(["--set", "payments.adapter=external"])
        .args(["--set", &format!("metrics.listen={metrics}")])
        .args(["--set", "log.level=warn"]);
    command
        .stdin(Stdio::null())
        .spawn()
        .expect("starting orderflow")
}

#[test]
fn kill_9_between_a_command_and_its_result_neither_loses_nor_doubles_the_attempt() {
    let _one = one_at_a_time();
    let broker = broker_with_stock(&[("SKU-1", 10)]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut first = start_binary(&broker, &metrics);
    broker.produce(
        "orders",
        &[order("o-crash", "SKU-1", &[("card", 500, "a-1")])],
    );
    // The command is out (committed, with transactions); no result yet.
    let before = commands(&broker, "o-crash", |c| !c.is_empty());
    first.kill().unwrap();
    first.wait().unwrap();

    let mut second = start_binary(&broker, &metrics);
    // The restored processor sends the attempt that was out again, with
    // its number: it may never have reached the gateway.
    let after = commands(&broker, "o-crash", |c| c.len() > before.len());
    for (command, _) in &after {
        assert_eq!(command["command_id"], "o-crash/p0:capture");
        assert_eq!(attempt(command), 1, "no new attempt number: {command}");
    }
    let (command, partition) = &after[after.len() - 1];
    answer(&broker, command, *partition, "succeeded");
    let captured = events_of(&broker, "o-crash", "payment_captured", 1);
    assert_eq!(captured.len(), 1);
    events_of(&broker, "o-crash", "order_paid", 1);
    // The gateway's answer to the copy of the same attempt changes
    // nothing: a shipment record after it (same order, same partition, so
    // applied after it) shows it was read, and the capture is still one
    // record (exactly once with transactions, not only one event ID).
    answer(&broker, &before[0].0, before[0].1, "succeeded");
    let shipped = json!({"type": "shipment_shipped", "order_id": "o-crash",
        "fulfillment_id": "o-crash/home", "carrier": "DHL", "tracking_number": "JD1",
        "shipped_at": "2026-11-24T09:00:00Z"});
    broker.produce(
        "orders",
        &[(
            Some(b"o-crash".to_vec()),
            serde_json::to_vec(&shipped).unwrap(),
        )],
    );
    events_of(&broker, "o-crash", "shipment_shipped", 1);
    let records = broker.read_to_end("order-events");
    let captures = of_order(&records, "o-crash")
        .into_iter()
        .filter(|(v, _)| v["type"] == "payment_captured")
        .count();
    assert_eq!(captures, 1, "captured exactly once");
    let _ = second.kill();
    let _ = second.wait();
}
