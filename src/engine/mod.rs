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
use crate::order::events::{self, Status, StatusEvent};
use crate::order::validate::{check_payments, validate, Limits};
use crate::order::{OrderEvent, OrderPlaced, Reason, Rejection};
pub use book::{OrderBook, OrderRecord};
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
    DeadLetter(DlqReason),
}

/// An event to produce. Payloads are contract JSON; keys are order IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Status {
        order_id: String,
        payload: Vec<u8>,
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

    /// Processes one record of the `orders` topic: appends its output events
    /// to `out` and returns what happened.
    pub fn process(
        &self,
        book: &mut OrderBook,
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
                if book.get(&order_id).is_some() {
                    return Processed::new(Outcome::Duplicate);
                }
                self.reject(book, &order_id, &rejection, now, out);
                Processed::new(Outcome::Rejected(rejection.reason))
            }
            Decoded::Event(OrderEvent::Placed(order)) => self.place(book, order, now, out),
            Decoded::Event(OrderEvent::Cancelled(cancel)) => {
                self.cancel(book, &cancel.order_id, now, out)
            }
        }
    }

    fn place(
        &self,
        book: &mut OrderBook,
        order: OrderPlaced,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        if book.get(&order.order_id).is_some() {
            return Processed::new(Outcome::Duplicate);
        }
        let order_id = order.order_id.clone();
        let valid = match validate(order, &self.limits) {
            Ok(valid) => valid,
            Err(rejection) => {
                self.reject(book, &order_id, &rejection, now, out);
                return Processed::new(Outcome::Rejected(rejection.reason));
            }
        };
        let latency = (now - valid.placed_at).try_into().ok();
        if let Err(rejection) = self
            .inventory
            .reserve(&valid, || check_payments(&valid, &self.limits))
        {
            self.reject(book, &order_id, &rejection, now, out);
            return Processed {
                outcome: Outcome::Rejected(rejection.reason),
                latency,
            };
        }
        push_status(
            out,
            &StatusEvent::new(&order_id, Status::Accepted, None, now),
        );
        for fulfillment in events::requested(&valid) {
            push_fulfillment(out, &order_id, &fulfillment);
        }
        book.insert(
            order_id,
            OrderRecord::Accepted {
                customer_id: valid.customer_id.clone(),
                shipments: events::shipment_keys(&valid),
                demand: valid.demand,
            },
        );
        Processed {
            outcome: Outcome::Accepted,
            latency,
        }
    }

    fn reject(
        &self,
        book: &mut OrderBook,
        order_id: &str,
        rejection: &Rejection,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) {
        push_status(
            out,
            &StatusEvent::new(order_id, Status::Rejected, Some(rejection), now),
        );
        book.insert(order_id.to_string(), OrderRecord::Rejected);
    }

    fn cancel(
        &self,
        book: &mut OrderBook,
        order_id: &str,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        let Some(OrderRecord::Accepted {
            customer_id,
            demand,
            shipments,
        }) = book.get(order_id)
        else {
            return Processed::new(Outcome::CancelIgnored);
        };
        self.inventory.release(customer_id, demand);
        push_status(
            out,
            &StatusEvent::new(order_id, Status::Cancelled, None, now),
        );
        for key in shipments {
            push_fulfillment(out, order_id, &events::cancelled(order_id, key));
        }
        book.replace(order_id, OrderRecord::Cancelled);
        Processed::new(Outcome::Cancelled)
    }
}

fn push_status(out: &mut Vec<Output>, status: &StatusEvent) {
    let payload = serde_json::to_vec(status).expect("status events always serialize");
    out.push(Output::Status {
        order_id: status.order_id.clone(),
        payload,
    });
}

fn push_fulfillment(out: &mut Vec<Output>, order_id: &str, event: &events::FulfillmentEvent) {
    let payload = serde_json::to_vec(event).expect("fulfillment events always serialize");
    out.push(Output::Fulfillment {
        order_id: order_id.to_string(),
        kind: event.kind(),
        payload,
    });
}

#[cfg(test)]
mod tests;
