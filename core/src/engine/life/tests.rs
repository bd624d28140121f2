//! The lifecycle through the engine: Part 2 records in, the order's record
//! first and its events and commands after, stock given back once.

use super::super::*;
use crate::lifecycle::{CommandKind, Millis};
use crate::order::InventoryEvent;
use crate::state::{ChangelogEntry, Restorer};
use std::collections::BTreeMap;

const PRICE: i64 = 100;

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap() + time::Duration::milliseconds(ms)
}

/// Short waits, so the clock moves through retries quickly.
const POLICY: Policy = Policy {
    result_timeout_ms: 1_000,
    retry_initial_ms: 100,
    retry_max_ms: 1_000,
    max_attempts: 3,
};

fn engine(stock: i64) -> Engine {
    let inventory = Arc::new(Inventory::new());
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: "A".into(),
            available: stock,
            prices: BTreeMap::from([("EUR".to_string(), PRICE)]),
            max_per_customer: None,
        })
        .unwrap();
    Engine::new(inventory, Limits::default()).with_policy(POLICY)
}

/// Two units of A shipped home, paid by the given payments (auth IDs, or
/// `None` for cash on delivery), the amounts split evenly.
fn placed(order_id: &str, auths: &[Option<&str>]) -> Vec<u8> {
    let share = 2 * PRICE / auths.len() as i64;
    let payments: Vec<_> = auths
        .iter()
        .enumerate()
        .map(|(i, auth)| {
            let amount = if i == 0 { 2 * PRICE - share * (auths.len() as i64 - 1) } else { share };
            match auth {
                Some(auth) => serde_json::json!({"method": "card", "amount_minor": amount, "authorization_id": auth}),
                None => serde_json::json!({"method": "cash_on_delivery", "amount_minor": amount}),
            }
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "type": "order_placed", "order_id": order_id, "customer_id": "c-1",
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR",
        "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": PRICE, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë", "line1": "L", "city": "C", "postal_code": "1", "country": "DE"}},
        "payments": payments
    }))
    .unwrap()
}

fn record(json: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json).unwrap()
}

fn result(order_id: &str, payment: usize, attempt: u32, outcome: &str) -> Vec<u8> {
    record(
        serde_json::json!({"type": "payment_result", "order_id": order_id,
        "command_id": format!("{order_id}/p{payment}:capture"), "attempt": attempt,
        "outcome": outcome, "code": "x", "gateway_ref": "ch_1"}),
    )
}

fn step(
    engine: &Engine,
    book: &mut OrderBook,
    offset: i64,
    id: &str,
    value: &[u8],
    ms: i64,
) -> (Outcome, Vec<Output>) {
    let mut out = Vec::new();
    let processed = engine.process(
        book,
        offset,
        Some(id.as_bytes()),
        Some(value),
        at(ms),
        &mut out,
    );
    (processed.outcome, out)
}

/// The outputs as (kind, detail) pairs: status names, event types, command
/// kinds with attempts, `state` for a state record.
fn shape(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            Output::Status { payload, .. } => {
                let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
                format!("status:{}", json["status"].as_str().unwrap())
            }
            Output::Fulfillment { kind, .. } => format!("fulfillment:{kind}"),
            Output::Event { kind, .. } => format!("event:{kind}"),
            Output::Command { kind, payload, .. } => {
                let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
                format!("command:{}:{}", kind.as_str(), json["attempt"])
            }
            Output::State { .. } => "state".into(),
            Output::DeadLetter(d) => format!("dlq:{}", d.reason.as_str()),
        })
        .collect()
}

fn available(engine: &Engine) -> i64 {
    engine.inventory().get("A").unwrap().available()
}

#[test]
fn acceptance_sends_a_capture_after_the_status_and_a_success_pays_the_order() {
    let engine = engine(10);
    let mut book = OrderBook::new(100);
    let (outcome, out) = step(
        &engine,
        &mut book,
        0,
        "o-1",
        &placed("o-1", &[Some("auth-1")]),
        0,
    );
    assert_eq!(outcome, Outcome::Accepted);
    assert_eq!(
        shape(&out),
        [
            "status:accepted",
            "fulfillment:fulfillment_requested",
            "command:capture:1"
        ]
    );
    let (outcome, out) = step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 0, 1, "succeeded"),
        5,
    );
    assert_eq!(
        outcome,
        Outcome::Life(LifeOutcome::Applied {
            captured_after_ms: Some(5)
        })
    );
    assert_eq!(
        shape(&out),
        ["state", "event:payment_captured", "event:order_paid"]
    );
    let Output::State { record, .. } = &out[0] else {
        unreachable!()
    };
    assert_eq!((record.version, record.offset), (2, 1));
    // The same record read again after a crash: its events go out again,
    // byte for byte, and nothing changes.
    let (outcome, again) = step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 0, 1, "succeeded"),
        99,
    );
    assert_eq!(outcome, Outcome::Replayed);
    assert_eq!(again, out[1..].to_vec());
    assert_eq!(book.get("o-1").unwrap().version, 2);
}

#[test]
fn a_decline_cancels_gives_the_stock_back_once_and_voids_the_other_payment() {
    let engine = engine(2);
    let mut book = OrderBook::new(100);
    let order = placed("o-1", &[Some("auth-ok"), Some("auth-decline")]);
    step(&engine, &mut book, 0, "o-1", &order, 0);
    assert_eq!(available(&engine), 0);
    let (_, out) = step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 1, 1, "declined"),
        5,
    );
    assert_eq!(
        shape(&out),
        [
            "status:cancelled",
            "event:payment_declined",
            "command:void:1",
            "fulfillment:fulfillment_cancelled"
        ]
    );
    let Output::Status { payload, .. } = &out[0] else {
        unreachable!()
    };
    let status: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(status["reason"], "payment_declined");
    assert_eq!(available(&engine), 2, "the units are back");
    // A later order gets them.
    let (outcome, _) = step(
        &engine,
        &mut book,
        2,
        "o-2",
        &placed("o-2", &[Some("a")]),
        6,
    );
    assert_eq!(outcome, Outcome::Accepted);
    // The decline read again gives nothing back twice.
    step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 1, 1, "declined"),
        7,
    );
    let (outcome, out) = step(
        &engine,
        &mut book,
        3,
        "o-1",
        &record(serde_json::json!(
        {"type": "order_cancelled", "order_id": "o-1"})),
        8,
    );
    assert_eq!((outcome, out.len()), (Outcome::CancelIgnored, 0));
    assert_eq!(available(&engine), 0);
}

#[test]
fn records_for_unknown_or_rejected_orders_are_refused_with_input_rejected() {
    let engine = engine(1);
    let mut book = OrderBook::new(100);
    let (outcome, out) = step(
        &engine,
        &mut book,
        0,
        "o-9",
        &result("o-9", 0, 1, "succeeded"),
        0,
    );
    assert_eq!(
        outcome,
        Outcome::Life(LifeOutcome::Refused(
            crate::lifecycle::Refusal::UnknownOrder
        ))
    );
    let Output::Event { payload, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(event["type"], "input_rejected");
    assert_eq!(event["reason"], "unknown_order");
    assert_eq!(event["input"], "payment_result");
    assert_eq!(event["input_id"], "o-9/p0:capture");
    // Out of stock: rejected, so later records about it are refused.
    step(
        &engine,
        &mut book,
        1,
        "o-1",
        &placed("o-1", &[Some("a")]),
        0,
    );
    let (_, out) = step(
        &engine,
        &mut book,
        2,
        "o-1",
        &record(serde_json::json!(
        {"type": "shipment_shipped", "order_id": "o-1", "fulfillment_id": "o-1/home"})),
        0,
    );
    let Output::Event { payload, .. } = &out[0] else {
        panic!("{out:?}")
    };
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(event["reason"], "order_not_active");
    // A bad field is `invalid`, naming the input.
    let (outcome, _) = step(
        &engine,
        &mut book,
        3,
        "o-1",
        &record(serde_json::json!(
        {"type": "payment_result", "order_id": "o-1", "command_id": "c", "attempt": 0, "outcome": "ok"})),
        0,
    );
    assert_eq!(
        outcome,
        Outcome::Life(LifeOutcome::Refused(crate::lifecycle::Refusal::Invalid))
    );
}

#[test]
fn the_clock_retries_a_failed_capture_and_a_restore_resends_what_was_in_flight() {
    let engine = engine(10);
    let mut book = OrderBook::new(100);
    step(
        &engine,
        &mut book,
        0,
        "o-1",
        &placed("o-1", &[Some("auth-flaky-1")]),
        0,
    );
    let (_, out) = step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 0, 1, "failed"),
        10,
    );
    assert_eq!(shape(&out), ["state", "event:payment_retry_scheduled"]);
    let mut out = Vec::new();
    assert_eq!(engine.tick(&mut book, at(50), &mut out), 0, "not due yet");
    assert!(out.is_empty());
    assert_eq!(engine.tick(&mut book, at(200), &mut out), 1);
    assert_eq!(shape(&out), ["state", "command:capture:2"]);
    // A crash now: the state records written so far rebuild the book, and
    // the attempt out is sent again, with its number.
    let Output::State { record, .. } = &out[0] else {
        unreachable!()
    };
    let bytes = crate::state::encode(&ChangelogEntry {
        partition: 0,
        record: (**record).clone(),
    });
    let inventory = Inventory::new();
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: "A".into(),
            available: 10,
            prices: BTreeMap::from([("EUR".to_string(), PRICE)]),
            max_per_customer: None,
        })
        .unwrap();
    let mut restorer = Restorer::new(&inventory, 100, None);
    restorer.apply("o-1", crate::state::decode(&bytes).unwrap());
    let restored = restorer.finish(&[0]).remove(&0).unwrap();
    assert_eq!(inventory.get("A").unwrap().reserved, 2);
    let mut resent = Vec::new();
    engine.resume(&restored, at(300), &mut resent);
    assert_eq!(shape(&resent), ["command:capture:2"]);
    let Output::Command { payload, .. } = &resent[0] else {
        unreachable!()
    };
    let command: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(command["command_id"], "o-1/p0:capture");
    assert_eq!(command["type"], CommandKind::Capture.as_str());
    let _ = Millis(0);
}

#[test]
fn a_received_return_restocks_once_and_the_partition_gives_back_only_the_rest() {
    let engine = engine(2);
    let mut book = OrderBook::new(100);
    step(
        &engine,
        &mut book,
        0,
        "o-1",
        &placed("o-1", &[Some("auth-1")]),
        0,
    );
    step(
        &engine,
        &mut book,
        1,
        "o-1",
        &result("o-1", 0, 1, "succeeded"),
        1,
    );
    let (_, out) = step(
        &engine,
        &mut book,
        2,
        "o-1",
        &record(serde_json::json!(
        {"type": "shipment_delivered", "order_id": "o-1", "fulfillment_id": "o-1/home"})),
        2,
    );
    assert_eq!(
        shape(&out),
        ["state", "event:shipment_delivered", "event:order_delivered"]
    );
    step(
        &engine,
        &mut book,
        3,
        "o-1",
        &record(serde_json::json!(
        {"type": "return_requested", "order_id": "o-1", "return_id": "r-1",
         "lines": [{"sku": "A", "quantity": 1}]})),
        3,
    );
    let received = record(serde_json::json!(
        {"type": "return_received", "order_id": "o-1", "return_id": "r-1",
         "lines": [{"sku": "A", "quantity": 1, "restock": true}]}));
    let (_, out) = step(&engine, &mut book, 4, "o-1", &received, 4);
    assert_eq!(
        shape(&out),
        ["state", "event:return_received", "command:refund:1"]
    );
    assert_eq!(available(&engine), 1, "one unit back in stock");
    // Delivered again, and at a new offset: once.
    step(&engine, &mut book, 4, "o-1", &received, 5);
    step(&engine, &mut book, 5, "o-1", &received, 6);
    assert_eq!(available(&engine), 1);
    assert_eq!(
        book.get("o-1").unwrap().holding.as_ref().unwrap().demand,
        vec![("A".to_string(), 1)]
    );
    // The partition moves: only the unit still held goes back.
    forget(engine.inventory(), &book);
    assert_eq!(available(&engine), 2);
}

#[test]
fn the_book_counts_payments_waiting_for_staff() {
    let engine = engine(10);
    let mut book = OrderBook::new(100);
    step(
        &engine,
        &mut book,
        0,
        "o-1",
        &placed("o-1", &[Some("auth-down")]),
        0,
    );
    let mut offset = 1;
    for attempt in 1..=POLICY.max_attempts {
        step(
            &engine,
            &mut book,
            offset,
            "o-1",
            &result("o-1", 0, attempt, "failed"),
            0,
        );
        offset += 1;
        let mut out = Vec::new();
        engine.tick(&mut book, at(10_000 * i64::from(attempt)), &mut out);
    }
    assert_eq!(book.in_attention(), 1);
    let retry = record(
        serde_json::json!({"type": "staff_action", "order_id": "o-1",
        "action_id": "a-1", "actor": "maria", "action": "retry_payment", "target": "o-1/p0"}),
    );
    step(&engine, &mut book, offset, "o-1", &retry, 50_000);
    assert_eq!(book.in_attention(), 0, "back in the gateway's hands");
}
