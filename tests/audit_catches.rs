//! The audit must catch a processor that breaks the contract. A sale from
//! the real generator is run through the real engine (no Kafka), with the
//! simulated gateway answering every command and the clock advanced past
//! every retry, giving a correct outcome that audits clean; then each test
//! breaks that outcome in one way and checks the audit names the breakage.

use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::Inventory;
use orderflow::lifecycle::Policy;
use orderflow::loadtest::audit::{
    self, address_fingerprint, bytes_fingerprint, Audit, CommandSeen, DeadLetterSeen, EventSeen,
    FulfillmentSeen, Intent, PaymentFate, ResultSeen, Seen, Sent, StatusSeen,
};
use orderflow::loadtest::generator::{Generator, Note, Topic};
use orderflow::loadtest::scenario::{Overrides, Scenario};
use orderflow::order::events::{FulfillmentEvent, Status};
use orderflow::order::validate::Limits;
use orderflow::order::{InventoryEvent, Reason};
use orderflow::payments::{self, CommandHead};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
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
[mix.payments]
decline_share = 0.1
flaky_1_share = 0.1
flaky_2_share = 0.1
down_share = 0.05
cash_on_delivery_share = 0.1
[payments]
audit = true
retry_initial_ms = 100
retry_max_ms = 400
max_attempts = 3
"#;

/// How far the clock moves per round of timers after the sale: past the
/// longest backoff, so every retry due fires in the next round.
const TICK: Duration = Duration::from_millis(500);
/// Rounds of timers: more than `max_attempts`, so every retry is done.
const TICKS: usize = 8;

/// The engine and the simulated gateway, with a clock.
struct Sale {
    engine: Engine,
    book: OrderBook,
    offset: i64,
    now: OffsetDateTime,
    seen: Seen,
}

impl Sale {
    /// Feeds one record on `orders`, and every gateway answer it causes.
    fn feed(&mut self, key: &[u8], value: &[u8]) {
        let mut queue = VecDeque::from([(key.to_vec(), value.to_vec())]);
        while let Some((key, value)) = queue.pop_front() {
            let mut out = Vec::new();
            self.offset += 1;
            self.engine.process(
                &mut self.book,
                self.offset,
                Some(&key),
                Some(&value),
                self.now,
                &mut out,
            );
            self.read(&key, &value, out, &mut queue);
        }
    }

    /// Moves the clock and fires the timers due, with their answers.
    fn tick(&mut self) {
        self.now += TICK;
        let mut out = Vec::new();
        self.engine.tick(&mut self.book, self.now, &mut out);
        let mut queue = VecDeque::new();
        self.read(&[], &[], out, &mut queue);
        while let Some((key, value)) = queue.pop_front() {
            self.feed(&key, &value);
        }
    }

    /// What the loadtest's collector would read of `out`; the simulated
    /// gateway's answers to its commands go on `queue`.
    fn read(
        &mut self,
        key: &[u8],
        value: &[u8],
        out: Vec<Output>,
        queue: &mut VecDeque<(Vec<u8>, Vec<u8>)>,
    ) {
        let seen = &mut self.seen;
        for output in out {
            match output {
                Output::Status { payload, .. } => {
                    let status: Value = serde_json::from_slice(&payload).unwrap();
                    let state: Status = serde_json::from_value(status["status"].clone()).unwrap();
                    let reason = status["reason"].as_str().map(str::to_string);
                    seen.statuses.push(StatusSeen {
                        order_id: status["order_id"].as_str().unwrap().to_string(),
                        status: state,
                        reason: match state {
                            Status::Cancelled => None,
                            _ => reason
                                .as_ref()
                                .map(|r| serde_json::from_value(Value::String(r.clone())).unwrap()),
                        },
                        cancel_reason: (state == Status::Cancelled).then_some(reason).flatten(),
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
                    key: key.to_vec(),
                    error: Some(dead.reason.as_str().to_string()),
                    payload_fingerprint: bytes_fingerprint(value),
                }),
                Output::Event { payload, .. } => {
                    let event: Value = serde_json::from_slice(&payload).unwrap();
                    seen.events.push(EventSeen {
                        order_id: event["order_id"].as_str().unwrap().to_string(),
                        kind: event["type"].as_str().unwrap().to_string(),
                        payment: event["payment"].as_u64().map(|p| p as u32),
                    });
                }
                Output::Command { payload, .. } => {
                    let command: CommandHead = serde_json::from_slice(&payload).unwrap();
                    seen.commands.push(CommandSeen {
                        order_id: command.order_id.clone(),
                        kind: command.kind.as_str().to_string(),
                        command_id: command.command_id.clone(),
                        attempt: command.attempt,
                    });
                    let answer = payments::simulated(&command);
                    seen.results.push(ResultSeen {
                        order_id: command.order_id.clone(),
                        command_id: command.command_id.clone(),
                        attempt: command.attempt,
                        outcome: answer.outcome.as_str().to_string(),
                    });
                    queue.push_back((
                        command.order_id.clone().into_bytes(),
                        payments::result_json(&command, &answer),
                    ));
                }
                Output::State { .. } => {}
            }
        }
    }
}

/// A sale and the outcome a correct processor gives it.
fn correct_run() -> (Sent, Seen) {
    let scenario = Scenario::layered(&[("audit-test", SCENARIO)], &Overrides::default()).unwrap();
    let limits = Limits::default();
    let now = OffsetDateTime::now_utc();
    let generator = Generator::new(&scenario, &limits, "at", now);
    let inventory = Arc::new(Inventory::new());
    let mut sent = Sent {
        payments_audited: scenario.payments.audit,
        ..Sent::default()
    };
    for sku in generator.catalog().all() {
        inventory.apply(&sku.stock_set()).unwrap();
        sent.stock.insert(sku.sku.clone(), sku.stock);
    }
    let policy = Policy {
        retry_initial_ms: scenario.payments.retry_initial_ms,
        retry_max_ms: scenario.payments.retry_max_ms,
        max_attempts: scenario.payments.max_attempts,
        ..Policy::DEFAULT
    };
    assert!(TICK.as_millis() as u64 > policy.retry_max_ms);
    assert!(TICKS as u32 > policy.max_attempts);
    let mut sale = Sale {
        engine: Engine::new(inventory, limits).with_policy(policy),
        book: OrderBook::new(100_000),
        offset: 0,
        now,
        seen: Seen::default(),
    };
    for planned in generator {
        match planned.note {
            Note::Placed { order, .. } => sent.orders.push(order),
            Note::Malformed(m) => sent.malformed.push(m),
            Note::Restock { sku, delta } => *sent.stock.get_mut(&sku).unwrap() += delta,
            Note::Duplicate { .. } | Note::Cancel { .. } => {}
        }
        if planned.topic == Topic::Inventory {
            let event: InventoryEvent = serde_json::from_slice(&planned.value).unwrap();
            sale.engine.inventory().apply(&event).unwrap();
            continue;
        }
        sale.feed(&planned.key, &planned.value);
    }
    for _ in 0..TICKS {
        sale.tick();
    }
    (sent, sale.seen)
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
            cancel_reason: None,
        });
    });
    assert_eq!(audit.unknown_orders, 1);
}

/// The first order the generator gave `fate` that was accepted and not
/// cancelled by its customer.
fn order_with(sent: &Sent, seen: &Seen, fate: PaymentFate) -> String {
    sent.orders
        .iter()
        .filter(|o| o.fate == fate && !o.cancelled)
        .find(|o| {
            seen.statuses
                .iter()
                .any(|s| s.order_id == o.order_id && s.status == Status::Accepted)
        })
        .unwrap_or_else(|| panic!("the scenario has an accepted {fate:?} order"))
        .order_id
        .clone()
}

#[test]
fn the_correct_outcome_settles_every_payment_fate() {
    let (sent, seen) = correct_run();
    let audit = audit::audit(&sent, &seen);
    assert!(audit.is_clean(), "{audit:#?}");
    for fate in [
        PaymentFate::Captured,
        PaymentFate::Flaky(1),
        PaymentFate::Flaky(2),
        PaymentFate::Declined,
        PaymentFate::Down,
        PaymentFate::CashOnDelivery,
    ] {
        order_with(&sent, &seen, fate);
    }
    assert!(
        audit.payments_captured > 0
            && audit.payments_declined > 0
            && audit.payments_attention > 0
            && audit.payment_retries > 0
            && audit.payment_commands > audit.payments_captured,
        "{audit:?}"
    );
    // A flaky-2 authorization is captured on its third attempt.
    let flaky = order_with(&sent, &seen, PaymentFate::Flaky(2));
    let attempts: Vec<u32> = seen
        .commands
        .iter()
        .filter(|c| c.order_id == flaky && c.command_id.ends_with("/p0:capture"))
        .map(|c| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
}

#[test]
fn catches_a_capture_that_never_came() {
    let audit = audit_broken(|sent, seen| {
        let id = order_with(sent, seen, PaymentFate::Flaky(1));
        seen.events
            .retain(|e| !(e.order_id == id && e.kind == "payment_captured"));
    });
    assert_eq!(audit.payments_unsettled, 1, "{audit:?}");
    let (sent, mut seen) = correct_run();
    let id = order_with(&sent, &seen, PaymentFate::Captured);
    seen.events
        .retain(|e| !(e.order_id == id && e.kind == "order_paid"));
    assert!(
        audit::outstanding(&sent, &seen) > 0,
        "the drain waits for order_paid"
    );
    assert_eq!(audit::audit(&sent, &seen).payments_unsettled, 1);
}

#[test]
fn catches_a_down_authorization_that_never_reaches_attention() {
    let audit = audit_broken(|sent, seen| {
        let id = order_with(sent, seen, PaymentFate::Down);
        seen.events
            .retain(|e| !(e.order_id == id && e.kind == "payment_attention"));
    });
    assert_eq!(audit.payments_unsettled, 1, "{audit:?}");
}

#[test]
fn catches_a_payment_that_ended_otherwise_than_its_authorization_says() {
    // A down authorization captured, and cash on delivery paid before
    // any delivery.
    let audit = audit_broken(|sent, seen| {
        for (fate, kind) in [
            (PaymentFate::Down, "payment_captured"),
            (PaymentFate::CashOnDelivery, "order_paid"),
        ] {
            let id = order_with(sent, seen, fate);
            seen.events.push(EventSeen {
                order_id: id,
                kind: kind.into(),
                payment: (kind == "payment_captured").then_some(0),
            });
        }
    });
    assert_eq!(audit.payments_wrong_end, 2, "{audit:?}");
}

#[test]
fn catches_a_decline_that_does_not_cancel_the_order() {
    let audit = audit_broken(|sent, seen| {
        let id = order_with(sent, seen, PaymentFate::Declined);
        seen.statuses
            .retain(|s| !(s.order_id == id && s.status == Status::Cancelled));
    });
    assert_eq!(audit.payments_unsettled, 1, "{audit:?}");
    assert_eq!(audit.cancellation_errors, 1, "{audit:?}");
    // Cancelled, but as if by the customer.
    let audit = audit_broken(|sent, seen| {
        let id = order_with(sent, seen, PaymentFate::Declined);
        for status in seen.statuses.iter_mut() {
            if status.order_id == id && status.status == Status::Cancelled {
                status.cancel_reason = None;
            }
        }
    });
    assert_eq!(audit.cancellation_errors, 1, "{audit:?}");
}

#[test]
fn catches_a_declined_order_whose_units_were_never_given_back() {
    // A SKU of a declined order whose stock is exactly what the other
    // accepted orders hold: clean while the declined units count as given
    // back; sold beyond stock if they were never given back (as if kept
    // by the declined order while later orders were sold them).
    let (mut sent, mut seen) = correct_run();
    let id = order_with(&sent, &seen, PaymentFate::Declined);
    let declined = sent.orders.iter().find(|o| o.order_id == id).unwrap();
    let (sku, units) = declined.demand[0].clone();
    let cancelled: std::collections::HashSet<&str> = seen
        .statuses
        .iter()
        .filter(|s| s.status == Status::Cancelled)
        .map(|s| s.order_id.as_str())
        .collect();
    let held: i64 = sent
        .orders
        .iter()
        .filter(|o| !cancelled.contains(o.order_id.as_str()))
        .filter(|o| {
            seen.statuses
                .iter()
                .any(|s| s.order_id == o.order_id && s.status == Status::Accepted)
        })
        .flat_map(|o| o.demand.iter())
        .filter(|(s, _)| *s == sku)
        .map(|(_, u)| i64::from(*u))
        .sum();
    sent.stock.insert(sku.clone(), held);
    let audit = audit::audit(&sent, &seen);
    assert_eq!(audit.oversold_units, 0, "{audit:?}");
    seen.statuses
        .retain(|s| !(s.order_id == id && s.status == Status::Cancelled));
    let audit = audit::audit(&sent, &seen);
    assert_eq!(audit.oversold_units, i64::from(units), "{audit:?}");
}

#[test]
fn catches_a_command_answered_twice_with_different_outcomes() {
    let (sent, mut seen) = correct_run();
    // The same answer twice is a redelivery, not a conflict.
    let first = seen.results[0].clone();
    seen.results.push(first.clone());
    assert!(audit::audit(&sent, &seen).is_clean());
    let audit = audit_broken(|_, seen| {
        let mut other = seen.results[0].clone();
        other.outcome = if other.outcome == "succeeded" {
            "declined".into()
        } else {
            "succeeded".into()
        };
        seen.results.push(other);
    });
    assert_eq!(audit.conflicting_results, 1, "{audit:?}");
}
