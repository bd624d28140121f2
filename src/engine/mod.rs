//! The decision engine: one record in, an outcome and its output events out.
//!
//! `Engine` is shared by every shard; per-partition state (which orders were
//! seen, what accepted orders hold) lives in an [`OrderBook`] that only the
//! shard owning the partition touches. Records of one order share a
//! partition, so an order's placement, duplicates and cancellation are seen
//! in order by one owner.

pub mod book;

use crate::inventory::Inventory;
use crate::order::decode::{decode_order, DeadLetter, Decoded, DlqReason};
use crate::order::events::{self, Status};
use crate::order::validate::{check_payments, validate, Limits};
use crate::order::{OrderEvent, OrderPlaced, Reason, Rejection};
pub use book::{Holding, OrderBook, OrderRecord, OrderState};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// What happened to one record, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected(Reason),
    Cancelled,
    /// An `order_placed` for an order that already has a status.
    Duplicate,
    /// An `order_cancelled` for an order that is unknown, rejected or
    /// already cancelled: nothing changes.
    CancelIgnored,
    /// The very record that decided an order, read again after a crash or
    /// rebalance: its follow-up events are sent again (same event IDs), its
    /// status and stock are not touched.
    Replayed,
    DeadLetter(DlqReason),
}

/// An event to produce. Payloads are contract JSON; keys are order IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A status, with the order's new record: the changelog entry that
    /// travels with it, so a restart can rebuild state from the status topic.
    Status {
        order_id: String,
        payload: Vec<u8>,
        record: OrderRecord,
    },
    Fulfillment {
        order_id: String,
        kind: &'static str,
        payload: Vec<u8>,
    },
    /// The input record goes to the dead-letter topic unchanged.
    DeadLetter(DeadLetter),
}

/// The result of processing one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    /// placed → decision, for decided orders with a readable `placed_at`.
    pub latency: Option<Duration>,
}

impl Processed {
    fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            latency: None,
        }
    }
}

pub struct Engine {
    inventory: Arc<Inventory>,
    limits: Limits,
}

impl Engine {
    pub fn new(inventory: Arc<Inventory>, limits: Limits) -> Self {
        Engine { inventory, limits }
    }

    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Processes the record at `offset` of the partition `book` belongs to:
    /// appends its output events to `out` and returns what happened.
    pub fn process(
        &self,
        book: &mut OrderBook,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        match decode_order(key, value, self.limits.max_record_bytes) {
            Decoded::DeadLetter(dead) => {
                let reason = dead.reason;
                out.push(Output::DeadLetter(dead));
                Processed::new(Outcome::DeadLetter(reason))
            }
            Decoded::Invalid {
                order_id,
                rejection,
            } => {
                if let Some(seen) = book.get(&order_id) {
                    return Processed::new(seen_again(seen, offset));
                }
                self.reject(book, offset, &order_id, &rejection, now, out);
                Processed::new(Outcome::Rejected(rejection.reason))
            }
            Decoded::Event(OrderEvent::Placed(order)) => self.place(book, offset, order, now, out),
            Decoded::Event(OrderEvent::Cancelled(cancel)) => {
                self.cancel(book, offset, &cancel.order_id, now, out)
            }
        }
    }

    fn place(
        &self,
        book: &mut OrderBook,
        offset: i64,
        order: OrderPlaced<'_>,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        if let Some(seen) = book.get(&order.order_id) {
            let outcome = seen_again(seen, offset);
            if outcome == Outcome::Replayed && seen.state != OrderState::Rejected {
                // Its fulfillments may not have reached the broker before the
                // crash: send them again, rebuilt from the same record. (Also
                // when cancelled since: the cancellation's replay follows and
                // sends the shipment cancellations again after them.)
                if let Ok(valid) = validate(order, &self.limits) {
                    push_requested(out, &valid);
                }
            }
            return Processed::new(outcome);
        }
        let order_id = order.order_id.clone();
        let valid = match validate(order, &self.limits) {
            Ok(valid) => valid,
            Err(rejection) => {
                self.reject(book, offset, &order_id, &rejection, now, out);
                return Processed::new(Outcome::Rejected(rejection.reason));
            }
        };
        let order_id = &*valid.order_id;
        let latency = (now - valid.placed_at).try_into().ok();
        let payments = || check_payments(&valid, &self.limits);
        if let Err(rejection) = self.inventory.reserve(&valid, book.share(), payments) {
            self.reject(book, offset, order_id, &rejection, now, out);
            return Processed {
                outcome: Outcome::Rejected(rejection.reason),
                latency,
            };
        }
        let record = OrderRecord {
            state: OrderState::Accepted,
            offset,
            placed_offset: offset,
            holding: Some(Holding {
                customer_id: valid.customer_id.to_string(),
                shipments: events::shipment_keys(&valid),
                demand: valid.demand.clone(),
            }),
        };
        book.took(&valid.demand);
        push_status(out, order_id, Status::Accepted, None, now, record.clone());
        push_requested(out, &valid);
        book.insert(order_id.to_string(), record);
        Processed {
            outcome: Outcome::Accepted,
            latency,
        }
    }

    fn reject(
        &self,
        book: &mut OrderBook,
        offset: i64,
        order_id: &str,
        rejection: &Rejection,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) {
        let record = OrderRecord {
            state: OrderState::Rejected,
            offset,
            placed_offset: offset,
            holding: None,
        };
        push_status(
            out,
            order_id,
            Status::Rejected,
            Some(rejection),
            now,
            record.clone(),
        );
        book.insert(order_id.to_string(), record);
    }

    fn cancel(
        &self,
        book: &mut OrderBook,
        offset: i64,
        order_id: &str,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        let Some(seen) = book.get(order_id) else {
            return Processed::new(Outcome::CancelIgnored);
        };
        let Some(holding) = seen.holding.clone() else {
            return Processed::new(Outcome::CancelIgnored); // rejected
        };
        let outcome = match seen.state {
            OrderState::Accepted => {
                self.inventory
                    .release(&holding.customer_id, &holding.demand);
                let record = OrderRecord {
                    state: OrderState::Cancelled,
                    offset,
                    placed_offset: seen.placed_offset,
                    holding: Some(holding.clone()),
                };
                book.gave_back(&holding.demand);
                push_status(out, order_id, Status::Cancelled, None, now, record.clone());
                book.insert(order_id.to_string(), record);
                Outcome::Cancelled
            }
            // The cancellation itself, replayed: its shipment cancellations
            // may not have reached the broker, so they go out again.
            OrderState::Cancelled if seen.offset == offset => Outcome::Replayed,
            _ => return Processed::new(Outcome::CancelIgnored),
        };
        for key in &holding.shipments {
            push_fulfillment(out, order_id, &events::cancelled(order_id, key));
        }
        Processed::new(outcome)
    }
}

/// Gives back to the inventory what a partition's orders hold, when the
/// partition moves to another instance: its new owner restores them
/// from the changelog. With a quota the units come from the book's
/// totals, exact even for orders the window forgot; per-customer
/// holdings only for orders the window remembers (a forgotten order's
/// holding stays counted here: stricter, never looser).
pub fn forget(inventory: &Inventory, book: &OrderBook) {
    let mut rest = book.sold().clone();
    for holding in book.accepted() {
        inventory.release(&holding.customer_id, &holding.demand);
        for (sku, units) in &holding.demand {
            if let Some(left) = rest.get_mut(sku) {
                *left -= i64::from(*units);
            }
        }
    }
    for (sku, units) in rest {
        if units > 0 {
            inventory.release_units(&sku, units);
        }
    }
}

/// An order placement the book already knows: a replay of the record that
/// placed it (same offset), or an upstream duplicate.
fn seen_again(seen: &OrderRecord, offset: i64) -> Outcome {
    if seen.placed_offset == offset {
        Outcome::Replayed
    } else {
        Outcome::Duplicate
    }
}

fn push_status(
    out: &mut Vec<Output>,
    order_id: &str,
    status: Status,
    rejection: Option<&Rejection>,
    now: OffsetDateTime,
    record: OrderRecord,
) {
    out.push(Output::Status {
        order_id: order_id.to_string(),
        payload: events::status_json(order_id, status, rejection, now),
        record,
    });
}

/// The `fulfillment_requested` events of an accepted order.
fn push_requested(out: &mut Vec<Output>, order: &crate::order::validate::ValidOrder<'_>) {
    events::requested_json(order, |kind, payload| {
        out.push(Output::Fulfillment {
            order_id: order.order_id.to_string(),
            kind,
            payload,
        })
    });
}

fn push_fulfillment(out: &mut Vec<Output>, order_id: &str, event: &events::FulfillmentEvent<'_>) {
    let payload = serde_json::to_vec(event).expect("fulfillment events always serialize");
    out.push(Output::Fulfillment {
        order_id: order_id.to_string(),
        kind: event.kind(),
        payload,
    });
}

#[cfg(test)]
mod tests;
