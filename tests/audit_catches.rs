//! The audit must catch a processor that breaks the contract. A sale from
//! the real generator is run through the real engine (no Kafka), giving a
//! correct outcome that audits clean; then each test breaks that outcome in
//! one way and checks the audit names the breakage.

use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::Inventory;
use orderflow::loadtest::audit::{
    self, address_fingerprint, bytes_fingerprint, Audit, DeadLetterSeen, FulfillmentSeen, Intent,
    Seen, Sent, StatusSeen,
};
use orderflow::loadtest::generator::{Generator, Note, Topic};
use orderflow::loadtest::scenario::{Overrides, Scenario};
use orderflow::order::events::{FulfillmentEvent, Status, StatusEvent};
use orderflow::order::validate::Limits;
use orderflow::order::{InventoryEvent, Reason};
use std::sync::Arc;
use time::OffsetDateTime;

const SCENARIO: &str = r#"
name = "audit-test"
[load]
rate = 100.0
duration_secs = 6.0
burst_at_secs = 2.0
burst_secs = 2.0
tail_secs = 1.0
seed = 99
[catalog]
skus = 50
hot_skus = 2
hot_stock = 20
hot_restock = 5
[mix]
hot_share = 0.3
invalid_share = 0.15
malformed_share = 0.03
duplicate_share = 0.05
cancel_share = 0.1
"#;

/// A sale and the outcome a correct processor gives it.
fn correct_run() -> (Sent, Seen) {
    let scenario = Scenario::layered(&[("audit-test", SCENARIO)], &Overrides::default()).unwrap();
    let limits = Limits::default();
    let now = OffsetDateTime::now_utc();
    let generator = Generator::new(&scenario, &limits, "at", now);
    let inventory = Arc::new(Inventory::new());
    let mut sent = Sent::default();
    for sku in generator.catalog().all() {
        inventory.apply(&sku.stock_set());
        sent.stock.insert(sku.sku.clone(), sku.stock);
    }
    let engine = Engine::new(inventory, limits);
    let mut book = OrderBook::new(100_000);
    let mut offset: i64 = 0;
    let mut seen = Seen::default();
    for planned in generator {
        match planned.note {
            Note::Placed { order, .. } => sent.orders.push(order),
            Note::Malformed(m) => sent.malformed.push(m),
            Note::Restock { sku, delta } => *sent.stock.get_mut(&sku).unwrap() += delta,
            Note::Duplicate { .. } | Note::Cancel { .. } => {}
        }
        if planned.topic == Topic::Inventory {
            let event: InventoryEvent = serde_json::from_slice(&planned.value).unwrap();
            engine.inventory().apply(&event);
            continue;
        }
        let mut out = Vec::new();
        engine.process(
            &mut book,
            {
                offset += 1;
                offset
            },
            Some(&planned.key),
            Some(&planned.value),
            now,
            &mut out,
        );
        for output in out {
            match output {
                Output::Status { payload, .. } => {
                    let status: StatusEvent = serde_json::from_slice(&payload).unwrap();
                    seen.statuses.push(StatusSeen {
                        order_id: status.order_id,
                        status: status.status,
                        reason: status.reason,
                    });
                }
                Output::Fulfillment { payload, .. } => {
                    seen.fulfillments
                        .push(match serde_json::from_slice(&payload).unwrap() {
                            FulfillmentEvent::FulfillmentRequested {
                                fulfillment_id,
                                order_id,
                                address,
                                ..
                            } => FulfillmentSeen::Requested {
                                address_key: key_of(&order_id, &fulfillment_id),
                                address_fingerprint: address_fingerprint(&address),
                                order_id,
                            },
                            FulfillmentEvent::FulfillmentCancelled {
                                fulfillment_id,
                                order_id,
                                ..
                            } => FulfillmentSeen::Cancelled {
                                address_key: key_of(&order_id, &fulfillment_id),
                                order_id,
                            },
                        });
                }
                Output::DeadLetter(dead) => seen.dead_letters.push(DeadLetterSeen {
                    key: planned.key.clone(),
                    error: Some(dead.reason.as_str().to_string()),
                    payload_fingerprint: bytes_fingerprint(&planned.value),
                }),
            }
        }
    }
    (sent, seen)
}

fn key_of(order_id: &str, fulfillment_id: &str) -> String {
    fulfillment_id[order_id.len() + 1..].to_string()
}

fn decision_of<'a>(seen: &'a mut Seen, order_id: &str) -> &'a mut StatusSeen {
    seen.statuses
        .iter_mut()
        .find(|s| s.order_id == order_id && s.status != Status::Cancelled)
        .unwrap()
}

/// Audits a broken copy of the correct outcome.
fn audit_broken(break_it: impl FnOnce(&Sent, &mut Seen)) -> Audit {
    let (sent, mut seen) = correct_run();
    break_it(&sent, &mut seen);
    let audit = audit::audit(&sent, &seen);
    assert!(!audit.is_clean(), "the audit missed it: {audit:?}");
    assert!(
        !audit.examples.is_empty(),
        "a violation comes with an example"
    );
    audit
}

#[test]
fn the_correct_outcome_audits_clean_and_covers_every_reason() {
    let (sent, seen) = correct_run();
    let audit = audit::audit(&sent, &seen);
    assert!(audit.is_clean(), "{audit:#?}");
    for reason in Reason::ALL {
        assert!(
            audit.rejected.get(reason.as_str()).is_some_and(|n| *n > 0),
            "{reason:?}: {:?}",
            audit.rejected
        );
    }
    assert!(audit.cancelled > 0 && audit.dlq > 0 && audit.accepted > 0);
    assert_eq!(
        audit::outstanding(&sent, &seen),
        0,
        "nothing is outstanding"
    );
}

#[test]
fn catches_an_oversold_sku() {
    // Accept every hot order that was turned away for lack of stock.
    let audit = audit_broken(|sent, seen| {
        let sold_out: Vec<String> = sent
            .orders
            .iter()
            .filter(|o| o.intent == Intent::Contended)
            .map(|o| o.order_id.clone())
            .collect();
        let mut flipped = 0;
        for id in sold_out {
            let decision = decision_of(seen, &id);
            if decision.reason == Some(Reason::OutOfStock) {
                decision.status = Status::Accepted;
                decision.reason = None;
                flipped += 1;
                let order = sent.orders.iter().find(|o| o.order_id == id).unwrap();
                for (key, fingerprint) in &order.shipments {
                    seen.fulfillments.push(FulfillmentSeen::Requested {
                        order_id: id.clone(),
                        address_key: key.clone(),
                        address_fingerprint: *fingerprint,
                    });
                }
            }
        }
        assert!(flipped > 0, "the scenario sells a hot SKU out");
    });
    assert!(audit.oversold_units > 0, "{audit:?}");
    assert_eq!(
        audit.unexpected_reasons, 0,
        "accepting a hot order is allowed: only the units are wrong"
    );
}

#[test]
fn catches_a_missing_status() {
    let audit = audit_broken(|_, seen| {
        let i = seen
            .statuses
            .iter()
            .position(|s| s.status == Status::Rejected)
            .unwrap();
        seen.statuses.remove(i);
    });
    assert_eq!(audit.missing_status, 1);
    let (sent, mut seen) = correct_run();
    seen.statuses.retain(|s| s.status != Status::Accepted);
    assert!(
        audit::outstanding(&sent, &seen) > 0,
        "the drain keeps waiting"
    );
}

#[test]
fn catches_a_conflicting_second_status() {
    let audit = audit_broken(|_, seen| {
        let accepted = seen
            .statuses
            .iter()
            .find(|s| s.status == Status::Accepted)
            .unwrap()
            .clone();
        seen.statuses.push(StatusSeen {
            status: Status::Rejected,
            reason: Some(Reason::OutOfStock),
            ..accepted
        });
    });
    assert_eq!(audit.conflicting_statuses, 1);
}

#[test]
fn catches_a_duplicate_status() {
    let audit = audit_broken(|_, seen| {
        let copy = seen
            .statuses
            .iter()
            .find(|s| s.status == Status::Rejected)
            .unwrap()
            .clone();
        seen.statuses.push(copy);
    });
    assert_eq!(audit.duplicate_statuses, 1);
}

#[test]
fn catches_a_wrong_reason() {
    let audit = audit_broken(|_, seen| {
        let status = seen
            .statuses
            .iter_mut()
            .find(|s| s.reason == Some(Reason::UnknownSku))
            .unwrap();
        status.reason = Some(Reason::PriceMismatch);
    });
    assert_eq!(audit.unexpected_reasons, 1);
}

#[test]
fn catches_an_accepted_order_that_should_be_rejected() {
    let audit = audit_broken(|sent, seen| {
        let invalid = sent
            .orders
            .iter()
            .find(|o| o.intent == Intent::Reject(Reason::PaymentMismatch))
            .unwrap();
        let decision = decision_of(seen, &invalid.order_id);
        decision.status = Status::Accepted;
        decision.reason = None;
    });
    assert_eq!(audit.unexpected_reasons, 1);
}

#[test]
fn catches_an_altered_address() {
    let audit = audit_broken(|_, seen| {
        let requested = seen
            .fulfillments
            .iter_mut()
            .find_map(|f| match f {
                FulfillmentSeen::Requested {
                    address_fingerprint,
                    ..
                } => Some(address_fingerprint),
                FulfillmentSeen::Cancelled { .. } => None,
            })
            .unwrap();
        // As if one character of the name had been normalised.
        *requested ^= 1;
    });
    assert_eq!(audit.fulfillment_errors, 1);
    assert!(
        audit.examples[0].contains("altered"),
        "{:?}",
        audit.examples
    );
}

#[test]
fn catches_a_missing_fulfillment_and_a_missing_cancellation() {
    let audit = audit_broken(|_, seen| {
        let i = seen
            .fulfillments
            .iter()
            .position(|f| matches!(f, FulfillmentSeen::Requested { .. }))
            .unwrap();
        seen.fulfillments.remove(i);
        let j = seen
            .statuses
            .iter()
            .position(|s| s.status == Status::Cancelled)
            .unwrap();
        seen.statuses.remove(j);
    });
    assert!(audit.fulfillment_errors >= 1, "{audit:?}");
    assert!(audit.cancellation_errors >= 1, "{audit:?}");
}

#[test]
fn catches_a_lost_or_altered_dead_letter() {
    let audit = audit_broken(|_, seen| {
        seen.dead_letters.remove(0);
        seen.dead_letters[0].error = Some("not_an_order_event".into());
        seen.dead_letters[1].payload_fingerprint ^= 1;
    });
    assert_eq!((audit.dlq_missing, audit.dlq_wrong), (1, 2));
}

#[test]
fn catches_statuses_for_orders_never_placed() {
    let audit = audit_broken(|_, seen| {
        seen.statuses.push(StatusSeen {
            order_id: "someone-else".into(),
            status: Status::Accepted,
            reason: None,
        });
    });
    assert_eq!(audit.unknown_orders, 1);
}
