//! The audit: from what was sent and what was read back, did the processor
//! keep the contract? Pure: no Kafka, no clock, so every rule is unit-tested
//! with hand-made outcomes (see `tests/audit_catches.rs`).
//!
//! The rules:
//! - every readable order sent has exactly one decision (`accepted` or
//!   `rejected`): none is `missing_status`, two identical copies are
//!   `duplicate_statuses`, two different ones `conflicting_statuses`;
//! - the decision is one the generator's intent allows (`unexpected_reasons`
//!   counts wrong reasons and acceptances of orders built to be rejected);
//!   orders for hot SKUs may be accepted, `out_of_stock` or
//!   `customer_limit_exceeded`, and an ordinary order may be `out_of_stock`
//!   only if its SKUs were asked for more units than they had;
//! - per SKU, units of accepted orders minus units of cancelled ones never
//!   exceed `stock_set` plus `stock_adjusted` (`oversold_units`);
//! - each accepted order has exactly one `fulfillment_requested` per address
//!   it ships to, with the address unchanged, and none for rejected orders
//!   (`fulfillment_errors`);
//! - each cancellation of an accepted order gives one `cancelled` status and
//!   one `fulfillment_cancelled` per shipment; nothing else is cancelled
//!   (`cancellation_errors`);
//! - every malformed record reaches the dead-letter topic, bytes untouched,
//!   with the expected `error` header (`dlq_missing`, `dlq_wrong`);
//! - with payments audited (`payments.audit` in the scenario), every
//!   accepted order the customer did not cancel ends as its authorizations
//!   say: captured (`payment_captured` for every payment through the
//!   gateway, and `order_paid` unless one is cash on delivery), cancelled
//!   with reason `payment_declined` after a `payment_declined` (its units
//!   count as given back, so they may be sold again within the stock), or
//!   in attention (`payment_attention`); an end not reached within the
//!   drain time is `payments_unsettled`, another end `payments_wrong_end`.
//!   A declined order's cancellation is checked like a customer's (one
//!   `cancelled` status, one `fulfillment_cancelled` per shipment);
//! - no command was answered twice with different outcomes: `payment_result`
//!   records on `orders` with the same `command_id` and `attempt` agree
//!   (`conflicting_results`).

use crate::order::decode::DlqReason;
use crate::order::events::Status;
use crate::order::{Address, Reason};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// How many violations are described in the report (the counts are exact).
pub const MAX_EXAMPLES: usize = 20;

/// What the generator meant an order to get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Valid, for SKUs with plenty of stock.
    Accept,
    /// Valid, but competing for a hot SKU: accepted, `out_of_stock` or
    /// `customer_limit_exceeded` are all correct.
    Contended,
    /// Built to be rejected for exactly this reason.
    Reject(Reason),
}

/// One readable `order_placed` as sent (its first copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentOrder {
    pub order_id: String,
    pub intent: Intent,
    /// Units per SKU the order asks for.
    pub demand: Vec<(String, u32)>,
    /// (address key, fingerprint) of every address a line ships to, for
    /// orders that may be accepted.
    pub shipments: Vec<(String, u64)>,
    /// Whether an `order_cancelled` was sent for it.
    pub cancelled: bool,
    /// What the simulated gateway does with its first payment.
    pub fate: PaymentFate,
    /// Indexes of the payments captured through the gateway (every payment
    /// but cash on delivery).
    pub captures: Vec<u32>,
}

/// What the generator meant an order's first payment to meet at the
/// simulated gateway (contract Part 2: the gateway decides by the
/// `authorization_id`); the other payments are always captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentFate {
    /// Captured at the first attempt.
    Captured,
    /// `flaky-N`: fails N times, then captured (after N backoffs).
    Flaky(u8),
    /// `decline`: the order is cancelled with reason `payment_declined`.
    Declined,
    /// `down`: fails every attempt; attention after the last one.
    Down,
    /// `cash_on_delivery`: no command; paid at delivery, so no `order_paid`
    /// within the sale.
    CashOnDelivery,
}

impl PaymentFate {
    /// The marker the simulated gateway reads in the authorization ID.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            PaymentFate::Flaky(1) => Some("flaky-1"),
            PaymentFate::Flaky(_) => Some("flaky-2"),
            PaymentFate::Declined => Some("decline"),
            PaymentFate::Down => Some("down"),
            PaymentFate::Captured | PaymentFate::CashOnDelivery => None,
        }
    }
}

/// A record that is not an order event, sent to test the dead-letter path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMalformed {
    /// Unique per record, so its dead letter can be found by key.
    pub key: String,
    pub expect: DlqReason,
    pub payload_fingerprint: u64,
}

/// Everything the generator sent that the audit needs.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Readable orders whose first copy was delivered to the broker.
    pub orders: Vec<SentOrder>,
    pub malformed: Vec<SentMalformed>,
    /// Per SKU: `stock_set` plus every delivered `stock_adjusted`.
    pub stock: HashMap<String, i64>,
    /// Whether payment ends are checked (`payments.audit`): only when
    /// something answers the processor's commands and fires its retries.
    pub payments_audited: bool,
}

/// A status event read back (only the fields the audit needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSeen {
    pub order_id: String,
    pub status: Status,
    /// A rejection's reason.
    pub reason: Option<Reason>,
    /// A cancellation's reason (`payment_declined`, `staff`; none for the
    /// customer's).
    pub cancel_reason: Option<String>,
}

/// A lifecycle event read back from `order-events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSeen {
    pub order_id: String,
    /// Its `type`.
    pub kind: String,
    pub payment: Option<u32>,
}

/// A command attempt read back from `payment-requests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSeen {
    pub order_id: String,
    /// `capture`, `void` or `refund`.
    pub kind: String,
    pub command_id: String,
    pub attempt: u32,
}

/// A `payment_result` read back from `orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSeen {
    pub order_id: String,
    pub command_id: String,
    pub attempt: u32,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FulfillmentSeen {
    Requested {
        order_id: String,
        address_key: String,
        address_fingerprint: u64,
    },
    Cancelled {
        order_id: String,
        address_key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSeen {
    pub key: Vec<u8>,
    /// The `error` header.
    pub error: Option<String>,
    pub payload_fingerprint: u64,
}

/// Everything read back from the output topics for this run.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub statuses: Vec<StatusSeen>,
    pub fulfillments: Vec<FulfillmentSeen>,
    pub dead_letters: Vec<DeadLetterSeen>,
    pub events: Vec<EventSeen>,
    pub commands: Vec<CommandSeen>,
    pub results: Vec<ResultSeen>,
}

/// The audit's findings. Every field but the tallies is a violation count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub cancelled: u64,
    pub dlq: u64,
    pub fulfillments_requested: u64,
    pub fulfillments_cancelled: u64,
    /// Units sold beyond stock, summed over SKUs; must be 0.
    pub oversold_units: i64,
    pub missing_status: u64,
    pub duplicate_statuses: u64,
    pub conflicting_statuses: u64,
    pub unexpected_reasons: u64,
    /// Statuses or fulfillments for orders this run never placed.
    pub unknown_orders: u64,
    pub fulfillment_errors: u64,
    pub cancellation_errors: u64,
    pub dlq_missing: u64,
    pub dlq_wrong: u64,
    /// Payments captured, declined, given up to staff; retries scheduled;
    /// command attempts sent (all read back, for this run's orders).
    pub payments_captured: u64,
    pub payments_declined: u64,
    pub payments_attention: u64,
    pub payment_retries: u64,
    pub payment_commands: u64,
    /// Accepted orders whose payments reached no end within the drain time.
    pub payments_unsettled: u64,
    /// Accepted orders whose payments ended otherwise than their
    /// authorizations say.
    pub payments_wrong_end: u64,
    /// Commands answered twice (same `command_id` and `attempt`) with
    /// different outcomes.
    pub conflicting_results: u64,
    /// The first [`MAX_EXAMPLES`] violations, in words.
    pub examples: Vec<String>,
}

impl Audit {
    /// Total count of violations of the contract.
    pub fn violations(&self) -> u64 {
        self.oversold_units.max(0) as u64
            + self.missing_status
            + self.duplicate_statuses
            + self.conflicting_statuses
            + self.unexpected_reasons
            + self.unknown_orders
            + self.fulfillment_errors
            + self.cancellation_errors
            + self.dlq_missing
            + self.dlq_wrong
            + self.payments_unsettled
            + self.payments_wrong_end
            + self.conflicting_results
    }

    pub fn is_clean(&self) -> bool {
        self.violations() == 0
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(text());
        }
    }
}

/// A fingerprint of an address's text, field by field, so the audit can
/// tell an address came back unchanged without keeping every address.
pub fn address_fingerprint(address: &Address) -> u64 {
    bytes_fingerprint(&serde_json::to_vec(address).expect("addresses always serialize"))
}

/// A fingerprint of raw bytes (dead letters must come back untouched).
pub fn bytes_fingerprint(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: stable within a process, which is all the
    // audit compares.
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// What came back for one order.
#[derive(Default)]
struct Outputs<'a> {
    decisions: Vec<&'a StatusSeen>,
    cancelled: usize,
    /// The reason of each cancelled status.
    cancel_reasons: Vec<Option<&'a str>>,
    requested: Vec<(&'a str, u64)>,
    fulfillment_cancels: Vec<&'a str>,
    /// Payments (by index) captured, declined, in attention.
    captured: HashSet<u32>,
    declined: HashSet<u32>,
    attention: HashSet<u32>,
    paid: bool,
}

/// Where an accepted order's payments stand against its fate.
#[derive(Debug, PartialEq, Eq)]
enum PaymentEnd {
    /// The end the fate says.
    Reached,
    /// Not yet there, and nothing contradicts it.
    Pending,
    /// An end the fate rules out, in words.
    Wrong(String),
}

/// The payment end of an accepted order the customer did not cancel.
fn payment_end(order: &SentOrder, out: &Outputs<'_>) -> PaymentEnd {
    let declined_cancel = out.cancel_reasons.contains(&Some(DECLINED_REASON));
    let all_captured = order.captures.iter().all(|i| out.captured.contains(i));
    let first_captured = out.captured.contains(&0);
    let wrong = |what: &str| PaymentEnd::Wrong(format!("{:?}, yet {what}", order.fate));
    match order.fate {
        PaymentFate::Captured | PaymentFate::Flaky(_) => {
            if !out.declined.is_empty() || !out.attention.is_empty() || out.cancelled > 0 {
                wrong("declined, in attention or cancelled")
            } else if all_captured && out.paid {
                PaymentEnd::Reached
            } else {
                PaymentEnd::Pending
            }
        }
        PaymentFate::CashOnDelivery => {
            if out.paid {
                wrong("order_paid before any delivery")
            } else if !out.declined.is_empty() || !out.attention.is_empty() || out.cancelled > 0 {
                wrong("declined, in attention or cancelled")
            } else if all_captured {
                PaymentEnd::Reached
            } else {
                PaymentEnd::Pending
            }
        }
        PaymentFate::Declined => {
            if first_captured || out.paid {
                wrong("captured")
            } else if out.declined.contains(&0) && declined_cancel {
                PaymentEnd::Reached
            } else {
                PaymentEnd::Pending
            }
        }
        PaymentFate::Down => {
            if first_captured || out.paid || !out.declined.is_empty() || out.cancelled > 0 {
                wrong("captured, declined or cancelled")
            } else if out.attention.contains(&0) {
                PaymentEnd::Reached
            } else {
                PaymentEnd::Pending
            }
        }
    }
}

/// The status reason of an order cancelled after a declined capture.
pub const DECLINED_REASON: &str = "payment_declined";

/// How many outcomes are still to come: orders with no decision, accepted
/// orders short of fulfillments or of an expected cancellation, malformed
/// records not yet dead-lettered. Zero once everything arrived, so the
/// loadtest can wait on it after the last order.
pub fn outstanding(sent: &Sent, seen: &Seen) -> u64 {
    let mut scratch = Audit::default();
    let outputs = group(sent, seen, &mut scratch);
    let empty = Outputs::default();
    let mut missing = 0;
    for order in &sent.orders {
        let out = outputs.get(order.order_id.as_str()).unwrap_or(&empty);
        let Some(decision) = out.decisions.first() else {
            missing += 1;
            continue;
        };
        if decision.status != Status::Accepted {
            continue;
        }
        if out.requested.len() < order.shipments.len() {
            missing += 1;
        }
        if order.cancelled
            && (out.cancelled == 0 || out.fulfillment_cancels.len() < order.shipments.len())
        {
            missing += 1;
        }
        if !order.cancelled {
            // A decline's cancellation, once it began (audited: always
            // expected), is waited for to its last fulfillment_cancelled.
            let declined =
                order.fate == PaymentFate::Declined && (sent.payments_audited || out.cancelled > 0);
            let cancels_short = declined && out.fulfillment_cancels.len() < order.shipments.len();
            let pending = sent.payments_audited && payment_end(order, out) == PaymentEnd::Pending;
            if pending || cancels_short {
                missing += 1;
            }
        }
    }
    let dead: HashSet<&[u8]> = seen.dead_letters.iter().map(|d| d.key.as_slice()).collect();
    missing
        + sent
            .malformed
            .iter()
            .filter(|m| !dead.contains(m.key.as_bytes()))
            .count() as u64
}

/// Checks `seen` against `sent`.
pub fn audit(sent: &Sent, seen: &Seen) -> Audit {
    let mut audit = Audit::default();
    let outputs = group(sent, seen, &mut audit);
    let oversubscribed = oversubscribed_skus(sent);
    let mut sold: HashMap<&str, i64> = HashMap::new();
    let empty = Outputs::default();
    for order in &sent.orders {
        let id = order.order_id.as_str();
        let out = outputs.get(id).unwrap_or(&empty);
        let Some(decision) = out.decisions.first() else {
            audit.missing_status += 1;
            audit.note(|| format!("{id}: no status ({:?})", order.intent));
            continue;
        };
        let distinct: HashSet<(Status, Option<Reason>)> =
            out.decisions.iter().map(|d| (d.status, d.reason)).collect();
        if distinct.len() > 1 {
            audit.conflicting_statuses += 1;
            audit.note(|| format!("{id}: conflicting statuses {distinct:?}"));
        } else if out.decisions.len() > 1 {
            audit.duplicate_statuses += 1;
            audit.note(|| format!("{id}: {} copies of its status", out.decisions.len()));
        }
        let accepted = decision.status == Status::Accepted;
        if accepted {
            audit.accepted += 1;
        } else {
            let reason = decision.reason.map_or("none", Reason::as_str);
            *audit.rejected.entry(reason.to_string()).or_default() += 1;
        }
        if !outcome_allowed(order, decision, &oversubscribed) {
            audit.unexpected_reasons += 1;
            audit.note(|| {
                format!(
                    "{id}: intended {:?}, got {} {}",
                    order.intent,
                    decision.status.as_str(),
                    decision.reason.map_or("", Reason::as_str)
                )
            });
        }
        check_fulfillments(&mut audit, order, out, accepted, sent.payments_audited);
        if accepted && sent.payments_audited && !order.cancelled {
            match payment_end(order, out) {
                PaymentEnd::Reached => {}
                PaymentEnd::Pending => {
                    audit.payments_unsettled += 1;
                    audit.note(|| {
                        format!(
                            "{id}: payments ({:?}) unsettled: captured {:?}, declined {:?}, attention {:?}, paid {}",
                            order.fate, out.captured, out.declined, out.attention, out.paid
                        )
                    });
                }
                PaymentEnd::Wrong(what) => {
                    audit.payments_wrong_end += 1;
                    audit.note(|| format!("{id}: payments ended wrong: {what}"));
                }
            }
        }
        if accepted {
            // Units of an order cancelled for any reason (the customer's, a
            // declined payment) are back in stock: sellable again.
            let returned = out.cancelled > 0;
            for (sku, units) in &order.demand {
                let units = i64::from(*units);
                *sold.entry(sku.as_str()).or_default() += if returned { 0 } else { units };
            }
        }
    }
    for (sku, units) in &sold {
        let stock = sent.stock.get(*sku).copied().unwrap_or(0);
        if *units > stock {
            audit.oversold_units += units - stock;
            audit.note(|| format!("SKU {sku}: {units} units sold, stock {stock}"));
        }
    }
    audit.cancelled = outputs.values().map(|o| o.cancelled as u64).sum();
    check_dead_letters(&mut audit, sent, seen);
    check_results(&mut audit, sent, seen);
    audit
}

/// Tallies the payment events and commands of this run's orders, and
/// finds commands answered twice with different outcomes.
fn check_results(audit: &mut Audit, sent: &Sent, seen: &Seen) {
    let known: HashSet<&str> = sent.orders.iter().map(|o| o.order_id.as_str()).collect();
    for event in seen
        .events
        .iter()
        .filter(|e| known.contains(e.order_id.as_str()))
    {
        match event.kind.as_str() {
            "payment_captured" => audit.payments_captured += 1,
            "payment_declined" => audit.payments_declined += 1,
            "payment_attention" => audit.payments_attention += 1,
            "payment_retry_scheduled" => audit.payment_retries += 1,
            _ => {}
        }
    }
    audit.payment_commands = seen
        .commands
        .iter()
        .filter(|c| known.contains(c.order_id.as_str()))
        .count() as u64;
    let mut answers: HashMap<(&str, u32), &str> = HashMap::new();
    let mut conflicting: HashSet<(&str, u32)> = HashSet::new();
    for result in &seen.results {
        let key = (result.command_id.as_str(), result.attempt);
        match answers.get(&key) {
            None => {
                answers.insert(key, result.outcome.as_str());
            }
            Some(first) if *first != result.outcome => {
                if conflicting.insert(key) {
                    audit.conflicting_results += 1;
                    audit.note(|| {
                        format!(
                            "{}: command {} attempt {} answered {first} and {}",
                            result.order_id, result.command_id, result.attempt, result.outcome
                        )
                    });
                }
            }
            Some(_) => {}
        }
    }
}

/// Groups what came back by order; counts outputs for unknown orders.
fn group<'a>(sent: &Sent, seen: &'a Seen, audit: &mut Audit) -> HashMap<&'a str, Outputs<'a>> {
    let known: HashSet<&str> = sent.orders.iter().map(|o| o.order_id.as_str()).collect();
    let mut outputs: HashMap<&str, Outputs<'_>> = HashMap::with_capacity(sent.orders.len());
    for status in &seen.statuses {
        if !known.contains(status.order_id.as_str()) {
            audit.unknown_orders += 1;
            audit.note(|| {
                format!(
                    "{}: status {:?} for an order never placed",
                    status.order_id, status.status
                )
            });
            continue;
        }
        let entry = outputs.entry(status.order_id.as_str()).or_default();
        match status.status {
            Status::Cancelled => {
                entry.cancelled += 1;
                entry.cancel_reasons.push(status.cancel_reason.as_deref());
            }
            Status::Accepted | Status::Rejected => entry.decisions.push(status),
        }
    }
    for event in &seen.events {
        // Events of unknown orders: the collector keeps only this run's.
        let Some(entry) = outputs.get_mut(event.order_id.as_str()) else {
            continue;
        };
        let payment = event.payment.unwrap_or(u32::MAX);
        match event.kind.as_str() {
            "payment_captured" => {
                entry.captured.insert(payment);
            }
            "payment_declined" => {
                entry.declined.insert(payment);
            }
            "payment_attention" => {
                entry.attention.insert(payment);
            }
            "order_paid" => entry.paid = true,
            _ => {}
        }
    }
    for fulfillment in &seen.fulfillments {
        let (order_id, key) = match fulfillment {
            FulfillmentSeen::Requested {
                order_id,
                address_key,
                ..
            }
            | FulfillmentSeen::Cancelled {
                order_id,
                address_key,
            } => (order_id, address_key),
        };
        if !known.contains(order_id.as_str()) {
            audit.unknown_orders += 1;
            audit.note(|| format!("{order_id}: fulfillment for an order never placed"));
            continue;
        }
        let entry = outputs.entry(order_id.as_str()).or_default();
        match fulfillment {
            FulfillmentSeen::Requested {
                address_fingerprint,
                ..
            } => {
                audit.fulfillments_requested += 1;
                entry.requested.push((key.as_str(), *address_fingerprint));
            }
            FulfillmentSeen::Cancelled { .. } => {
                audit.fulfillments_cancelled += 1;
                entry.fulfillment_cancels.push(key.as_str());
            }
        }
    }
    outputs
}

/// SKUs asked for more units, by orders that may take stock, than they have:
/// an ordinary order for one of them may rightly be `out_of_stock`.
fn oversubscribed_skus(sent: &Sent) -> HashSet<&str> {
    let mut asked: HashMap<&str, i64> = HashMap::new();
    for order in sent
        .orders
        .iter()
        .filter(|o| matches!(o.intent, Intent::Accept | Intent::Contended))
    {
        for (sku, units) in &order.demand {
            *asked.entry(sku.as_str()).or_default() += i64::from(*units);
        }
    }
    asked
        .into_iter()
        .filter(|(sku, units)| *units > sent.stock.get(*sku).copied().unwrap_or(0))
        .map(|(sku, _)| sku)
        .collect()
}

fn outcome_allowed(
    order: &SentOrder,
    decision: &StatusSeen,
    oversubscribed: &HashSet<&str>,
) -> bool {
    let reason = decision.reason;
    match (order.intent, decision.status) {
        (Intent::Accept | Intent::Contended, Status::Accepted) => reason.is_none(),
        (Intent::Reject(want), Status::Rejected) => reason == Some(want),
        (Intent::Contended, Status::Rejected) => {
            matches!(
                reason,
                Some(Reason::OutOfStock | Reason::CustomerLimitExceeded)
            )
        }
        (Intent::Accept, Status::Rejected) => {
            reason == Some(Reason::OutOfStock)
                && order
                    .demand
                    .iter()
                    .any(|(sku, _)| oversubscribed.contains(sku.as_str()))
        }
        _ => false,
    }
}

fn check_fulfillments(
    audit: &mut Audit,
    order: &SentOrder,
    out: &Outputs<'_>,
    accepted: bool,
    payments_audited: bool,
) {
    let id = order.order_id.as_str();
    if !accepted {
        if !out.requested.is_empty() {
            audit.fulfillment_errors += 1;
            audit.note(|| {
                format!(
                    "{id}: rejected, yet {} fulfillment(s) requested",
                    out.requested.len()
                )
            });
        }
        if out.cancelled > 0 || !out.fulfillment_cancels.is_empty() {
            audit.cancellation_errors += 1;
            audit.note(|| format!("{id}: rejected, yet cancelled"));
        }
        return;
    }
    let mut requested: Vec<(&str, u64)> = out.requested.clone();
    requested.sort_unstable();
    let mut want: Vec<(&str, u64)> = order
        .shipments
        .iter()
        .map(|(k, f)| (k.as_str(), *f))
        .collect();
    want.sort_unstable();
    if requested != want {
        audit.fulfillment_errors += 1;
        let got_keys: Vec<&str> = requested.iter().map(|(k, _)| *k).collect();
        let want_keys: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
        audit.note(|| {
            if got_keys == want_keys {
                format!("{id}: an address came back altered")
            } else {
                format!("{id}: fulfillments requested for {got_keys:?}, expected one each for {want_keys:?}")
            }
        });
    }
    // A declined first payment cancels the order, if something answered
    // its capture; audited, something must have.
    let declined = order.fate == PaymentFate::Declined && !order.cancelled;
    let cancel_expected = order.cancelled || (declined && (payments_audited || out.cancelled > 0));
    let mut cancels: Vec<&str> = out.fulfillment_cancels.clone();
    cancels.sort_unstable();
    let reason_ok = |reason: &Option<&str>| {
        if order.cancelled {
            // The customer's (reason null), unless a decline came first.
            reason.is_none() || *reason == Some(DECLINED_REASON)
        } else {
            *reason == Some(DECLINED_REASON)
        }
    };
    let cancel_ok = if cancel_expected {
        out.cancelled == 1
            && out.cancel_reasons.iter().all(reason_ok)
            && cancels == want.iter().map(|(k, _)| *k).collect::<Vec<_>>()
    } else {
        out.cancelled == 0 && cancels.is_empty()
    };
    if !cancel_ok {
        audit.cancellation_errors += 1;
        audit.note(|| {
            format!(
                "{id}: cancellation {}: {} cancelled status(es), {} fulfillment cancellation(s) for {} shipment(s)",
                if cancel_expected { "sent" } else { "not sent" },
                out.cancelled,
                cancels.len(),
                want.len()
            )
        });
    }
}

fn check_dead_letters(audit: &mut Audit, sent: &Sent, seen: &Seen) {
    let mut by_key: HashMap<&[u8], Vec<&DeadLetterSeen>> = HashMap::new();
    for dead in &seen.dead_letters {
        by_key.entry(dead.key.as_slice()).or_default().push(dead);
    }
    audit.dlq = seen.dead_letters.len() as u64;
    for malformed in &sent.malformed {
        let key = malformed.key.as_str();
        match by_key.get(key.as_bytes()).map(Vec::as_slice) {
            None | Some([]) => {
                audit.dlq_missing += 1;
                audit.note(|| {
                    format!(
                        "{key}: {} record never reached the DLQ",
                        malformed.expect.as_str()
                    )
                });
            }
            Some([dead]) => {
                let error_ok = dead.error.as_deref() == Some(malformed.expect.as_str());
                if !error_ok || dead.payload_fingerprint != malformed.payload_fingerprint {
                    audit.dlq_wrong += 1;
                    audit.note(|| {
                        format!(
                            "{key}: dead letter with error {:?} (expected {}){}",
                            dead.error,
                            malformed.expect.as_str(),
                            if dead.payload_fingerprint == malformed.payload_fingerprint {
                                ""
                            } else {
                                ", bytes changed"
                            }
                        )
                    });
                }
            }
            Some(many) => {
                audit.dlq_wrong += 1;
                audit.note(|| format!("{key}: {} dead letters for one record", many.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, intent: Intent, demand: &[(&str, u32)]) -> SentOrder {
        SentOrder {
            order_id: id.into(),
            intent,
            demand: demand.iter().map(|(s, u)| (s.to_string(), *u)).collect(),
            shipments: vec![("home".into(), 7)],
            cancelled: false,
            fate: PaymentFate::Captured,
            captures: vec![0],
        }
    }

    fn status(id: &str, status: Status, reason: Option<Reason>) -> StatusSeen {
        StatusSeen {
            order_id: id.into(),
            status,
            reason,
            cancel_reason: None,
        }
    }

    fn shipped(id: &str) -> FulfillmentSeen {
        FulfillmentSeen::Requested {
            order_id: id.into(),
            address_key: "home".into(),
            address_fingerprint: 7,
        }
    }

    #[test]
    fn a_clean_run_is_clean() {
        let sent = Sent {
            orders: vec![
                order("a", Intent::Accept, &[("S", 1)]),
                order("b", Intent::Reject(Reason::UnknownSku), &[("X", 1)]),
                order("c", Intent::Contended, &[("HOT", 1)]),
            ],
            malformed: vec![],
            stock: HashMap::from([("S".into(), 5), ("HOT".into(), 0)]),
            payments_audited: false,
        };
        let seen = Seen {
            statuses: vec![
                status("a", Status::Accepted, None),
                status("b", Status::Rejected, Some(Reason::UnknownSku)),
                status("c", Status::Rejected, Some(Reason::OutOfStock)),
            ],
            fulfillments: vec![shipped("a")],
            dead_letters: vec![],
            ..Seen::default()
        };
        let audit = audit(&sent, &seen);
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!(audit.accepted, 1);
        assert_eq!(audit.rejected["out_of_stock"], 1);
    }

    #[test]
    fn ordinary_out_of_stock_only_when_oversubscribed() {
        let mut sent = Sent {
            orders: vec![
                order("a", Intent::Accept, &[("S", 3)]),
                order("b", Intent::Accept, &[("S", 3)]),
            ],
            malformed: vec![],
            stock: HashMap::from([("S".into(), 5)]),
            payments_audited: false,
        };
        let seen = Seen {
            statuses: vec![
                status("a", Status::Accepted, None),
                status("b", Status::Rejected, Some(Reason::OutOfStock)),
            ],
            fulfillments: vec![shipped("a")],
            dead_letters: vec![],
            ..Seen::default()
        };
        assert!(audit(&sent, &seen).is_clean());
        sent.stock.insert("S".into(), 6);
        assert_eq!(audit(&sent, &seen).unexpected_reasons, 1);
    }

    #[test]
    fn cancelled_units_go_back_to_stock() {
        let mut cancelled = order("a", Intent::Contended, &[("HOT", 2)]);
        cancelled.cancelled = true;
        let sent = Sent {
            orders: vec![cancelled, order("b", Intent::Contended, &[("HOT", 2)])],
            malformed: vec![],
            stock: HashMap::from([("HOT".into(), 2)]),
            payments_audited: false,
        };
        let seen = Seen {
            statuses: vec![
                status("a", Status::Accepted, None),
                status("a", Status::Cancelled, None),
                status("b", Status::Accepted, None),
            ],
            fulfillments: vec![
                shipped("a"),
                FulfillmentSeen::Cancelled {
                    order_id: "a".into(),
                    address_key: "home".into(),
                },
                shipped("b"),
            ],
            dead_letters: vec![],
            ..Seen::default()
        };
        let audit = audit(&sent, &seen);
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!(audit.cancelled, 1);
    }
}
