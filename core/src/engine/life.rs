//! The engine's side of an order's life after its decision: Part 2 inputs
//! and the clock applied to the order's [`OrderLife`], and its effects
//! carried out on the book, the inventory and the outputs.
//!
//! Every change is written as the order's new record first (a status for a
//! cancellation, else a record of the state topic), and what it emits
//! (events, commands, fulfillment cancellations) follows once that record
//! is acknowledged, as fulfillments follow a status. The record keeps
//! those outputs in its outbox by the input's offset, so a replay of the
//! input after a crash sends them again with the same IDs and decides
//! nothing twice. (With Kafka transactions all of it commits together.)

use super::book::{Outbox, MAX_OUTBOX};
use super::{push_fulfillment, Engine, OrderBook, OrderRecord, OrderState, Outcome, Output};
use crate::lifecycle::{
    self, Accepted, CancelReason, Ctx, Effect, Input, LifeLine, Millis, OrderLife, PlacedPayment,
    Refusal,
};
use crate::order::events;
use crate::order::validate::ValidOrder;
use time::OffsetDateTime;

/// What a Part 2 input (or the clock) did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifeOutcome {
    /// The order changed; `captured_after_ms`: a payment was captured,
    /// this long after the order's acceptance.
    Applied { captured_after_ms: Option<u64> },
    /// Nothing to change: a repeat, or an answer already settled.
    Unchanged,
    /// Refused: an `input_rejected` event was sent.
    Refused(Refusal),
}

/// The lifecycle's view of an accepted order.
pub fn accepted(order: &ValidOrder<'_>) -> Accepted {
    Accepted {
        currency: order.currency.code().to_string(),
        lines: order
            .lines()
            .map(|line| LifeLine {
                sku: line.sku.to_string(),
                // Validation keeps quantities within 1..=u32::MAX.
                quantity: u32::try_from(line.quantity).unwrap_or(u32::MAX),
                unit_price_minor: line.unit_price_minor,
                // A valid order's line names one of its addresses.
                ship_to: order
                    .address(line.address)
                    .map(|address| address.key.to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        payments: order
            .payments()
            .map(|payment| PlacedPayment {
                method: payment.method.to_string(),
                amount_minor: payment.amount_minor,
                authorization_id: payment.authorization_id.map(str::to_string),
                // No authorization to capture through a gateway (cash on
                // delivery): paid when the last shipment is delivered.
                on_delivery: payment.authorization_id.is_none(),
            })
            .collect(),
        shipments: events::shipment_keys(order),
    }
}

impl Engine {
    pub(super) fn ctx<'a>(&'a self, order_id: &'a str, now: OffsetDateTime) -> Ctx<'a> {
        Ctx {
            order_id,
            now: Millis::from_datetime(now),
            policy: &self.policy,
        }
    }

    /// Applies a Part 2 input (or a customer's cancellation of an order
    /// with a life) read at `offset`.
    pub(super) fn life_input(
        &self,
        book: &mut OrderBook,
        offset: i64,
        order_id: &str,
        input: &Input,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let Some(seen) = book.find(order_id) else {
            return self.refuse(order_id, input, Refusal::UnknownOrder, offset, now, out);
        };
        let Some(life) = seen.life.as_deref() else {
            return self.refuse(order_id, input, Refusal::OrderNotActive, offset, now, out);
        };
        if offset <= seen.offset {
            // Applied before: this is a replay after a crash or a
            // rebalance. What it sent may not have reached the broker.
            if let Some(entry) = seen.outbox.iter().find(|e| e.offset == offset) {
                self.resend(order_id, seen, entry, out);
            }
            return Outcome::Replayed;
        }
        let mut next = life.clone();
        match next.apply(self.ctx(order_id, now), input) {
            Err(Refusal::OrderNotActive) if *input == Input::Cancel => Outcome::CancelIgnored,
            Err(refusal) => self.refuse(order_id, input, refusal, offset, now, out),
            Ok(effects) if effects.is_empty() && next == *life => {
                Outcome::Life(LifeOutcome::Unchanged)
            }
            Ok(effects) => {
                let captured = effects.iter().any(|effect| {
                    matches!(effect, Effect::Event(event)
                        if matches!(event.kind, lifecycle::EventKind::PaymentCaptured { .. }))
                });
                let captured_after_ms = captured.then(|| {
                    let since = Millis::from_datetime(now)
                        .0
                        .saturating_sub(next.accepted_at.0);
                    u64::try_from(since).unwrap_or(0)
                });
                let record = seen.clone();
                let cancelled = self.carry_out(
                    book,
                    order_id,
                    record,
                    next,
                    Some(offset),
                    effects,
                    now,
                    out,
                );
                if cancelled && *input == Input::Cancel {
                    Outcome::Cancelled
                } else {
                    Outcome::Life(LifeOutcome::Applied { captured_after_ms })
                }
            }
        }
    }

    /// Fires every lifecycle timer of `book` due by `now`: attempts that
    /// got no result in time, retries whose time came. Returns how many
    /// orders changed.
    pub fn tick(&self, book: &mut OrderBook, now: OffsetDateTime, out: &mut Vec<Output>) -> usize {
        let mut changed = 0;
        for order_id in book.due(Millis::from_datetime(now)) {
            let Some(record) = book.find(&order_id) else {
                continue;
            };
            let Some(life) = record.life.as_deref() else {
                continue;
            };
            let mut next = life.clone();
            let Ok(effects) = next.apply(self.ctx(&order_id, now), &Input::Due) else {
                continue; // the clock is never refused
            };
            if next == *life {
                continue;
            }
            let record = record.clone();
            self.carry_out(book, &order_id, record, next, None, effects, now, out);
            changed += 1;
        }
        changed
    }

    /// After a restore: every command attempt that was out awaiting its
    /// result is sent again with its attempt number (it may never have
    /// left before the crash; gateways deduplicate by `command_id`).
    pub fn resume(&self, book: &OrderBook, now: OffsetDateTime, out: &mut Vec<Output>) {
        let at = Millis::from_datetime(now);
        for (order_id, record) in book.lives() {
            let Some(life) = record.life.as_deref() else {
                continue;
            };
            for command in life.in_flight(self.ctx(order_id, now)) {
                push_command(out, order_id, &command, at);
            }
        }
    }

    /// The commands of a placement read again: those still out.
    pub(super) fn replay_commands(
        &self,
        order_id: &str,
        record: &OrderRecord,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) {
        if let Some(life) = record.life.as_deref() {
            let at = Millis::from_datetime(now);
            for command in life.in_flight(self.ctx(order_id, now)) {
                push_command(out, order_id, &command, at);
            }
        }
    }

    fn refuse(
        &self,
        order_id: &str,
        input: &Input,
        refusal: Refusal,
        offset: i64,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let event = lifecycle::rejected(order_id, input, refusal, &offset.to_string());
        push_event(out, order_id, &event, Millis::from_datetime(now));
        Outcome::Life(LifeOutcome::Refused(refusal))
    }

    /// An input that could be read but not as a valid Part 2 input.
    pub(super) fn invalid_input(
        &self,
        order_id: &str,
        input: &'static str,
        input_id: Option<String>,
        offset: i64,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let event = lifecycle::Event {
            event_id: format!("{order_id}@{offset}:input_rejected"),
            kind: lifecycle::EventKind::InputRejected {
                input: input.into(),
                input_id,
                reason: Refusal::Invalid,
            },
        };
        push_event(out, order_id, &event, Millis::from_datetime(now));
        Outcome::Life(LifeOutcome::Refused(Refusal::Invalid))
    }

    /// Carries out the effects of one change of `order_id` from `record`
    /// to `life`: the order's new record first, then what it emits.
    /// Returns whether the change cancelled the order.
    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &self,
        book: &mut OrderBook,
        order_id: &str,
        mut record: OrderRecord,
        life: OrderLife,
        offset: Option<i64>,
        effects: Vec<Effect>,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> bool {
        let at = Millis::from_datetime(now);
        let mut entry = Outbox {
            offset: offset.unwrap_or(record.offset),
            at,
            events: Vec::new(),
            commands: Vec::new(),
            cancelled: false,
        };
        let mut cancel_reason = None;
        for effect in effects {
            match effect {
                Effect::Event(event) => entry.events.push(event),
                Effect::Command(command) => entry.commands.push(command),
                Effect::Cancel(reason) => {
                    if let Some(holding) = &record.holding {
                        if record.state == OrderState::Accepted {
                            self.inventory
                                .release(&holding.customer_id, holding.units());
                            book.gave_back(holding.units());
                        }
                    }
                    record.state = OrderState::Cancelled;
                    entry.cancelled = true;
                    cancel_reason = Some(reason);
                }
                Effect::Restock(lines) => {
                    let Some(holding) = record.holding.as_mut() else {
                        continue;
                    };
                    let units: Vec<(String, u32)> = lines
                        .iter()
                        .map(|line| (line.sku.clone(), line.quantity))
                        .collect();
                    let each = || units.iter().map(|(sku, n)| (sku.as_str(), *n));
                    self.inventory.release(&holding.customer_id, each());
                    book.gave_back(each());
                    for (sku, returned) in &units {
                        if let Some((_, held)) = holding.demand.iter_mut().find(|(s, _)| s == sku) {
                            *held = held.saturating_sub(*returned);
                        }
                    }
                    holding.demand.retain(|(_, held)| *held > 0);
                }
            }
        }
        record.life = Some(Box::new(life));
        record.version = record.version.saturating_add(1);
        if let Some(offset) = offset {
            record.offset = offset;
            record.outbox.push(entry.clone());
            let excess = record.outbox.len().saturating_sub(MAX_OUTBOX);
            record.outbox.drain(..excess);
        }
        let record = std::sync::Arc::new(record);
        match cancel_reason {
            Some(reason) => out.push(Output::Status {
                order_id: order_id.to_string(),
                payload: cancelled_status_json(order_id, reason, now),
                record: record.clone(),
            }),
            None => out.push(Output::State {
                order_id: order_id.to_string(),
                record: record.clone(),
            }),
        }
        self.resend(order_id, &record, &entry, out);
        book.insert_shared(order_id.to_string(), record);
        cancel_reason.is_some()
    }

    /// The outputs that follow an order's record for one change.
    fn resend(&self, order_id: &str, record: &OrderRecord, entry: &Outbox, out: &mut Vec<Output>) {
        for event in &entry.events {
            push_event(out, order_id, event, entry.at);
        }
        for command in &entry.commands {
            push_command(out, order_id, command, entry.at);
        }
        if entry.cancelled {
            if let Some(holding) = &record.holding {
                for key in &holding.shipments {
                    push_fulfillment(out, order_id, &events::cancelled(order_id, key));
                }
            }
        }
    }
}

pub(super) fn push_event(
    out: &mut Vec<Output>,
    order_id: &str,
    event: &lifecycle::Event,
    at: Millis,
) {
    out.push(Output::Event {
        order_id: order_id.to_string(),
        kind: event.kind.type_name(),
        payload: event.to_json(order_id, at),
    });
}

pub(super) fn push_command(
    out: &mut Vec<Output>,
    order_id: &str,
    command: &lifecycle::Command,
    at: Millis,
) {
    out.push(Output::Command {
        order_id: order_id.to_string(),
        kind: command.kind,
        payload: command.to_json(order_id, at),
    });
}

/// A `cancelled` status with the cancellation's reason (null for a
/// customer's, as in Part 1): the same fields in the same order as
/// every status.
pub fn cancelled_status_json(order_id: &str, reason: CancelReason, now: OffsetDateTime) -> Vec<u8> {
    match reason.status_reason() {
        None => {
            let mut payload = Vec::new();
            events::status_json(&mut payload, order_id, events::Status::Cancelled, None, now);
            payload
        }
        Some(reason) => {
            let text = |s: &str| serde_json::to_string(s).expect("strings serialize");
            format!(
                "{{\"event_id\":{},\"order_id\":{},\"status\":\"cancelled\",\"reason\":{},\
                 \"detail\":null,\"processed_at\":{}}}",
                text(&format!("{order_id}:cancelled")),
                text(order_id),
                text(reason),
                text(&events::format_time(now)),
            )
            .into_bytes()
        }
    }
}

#[cfg(test)]
mod tests;
