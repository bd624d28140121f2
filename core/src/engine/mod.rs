//! The decision engine: one record in, an outcome and its output events out.
//!
//! `Engine` is shared by every shard; per-partition state (which orders were
//! seen, what accepted orders hold) lives in an [`OrderBook`] that only the
//! shard owning the partition touches. Records of one order share a
//! partition, so an order's placement, duplicates and cancellation are seen
//! in order by one owner.

pub mod book;
pub mod life;
pub mod retention;

use crate::inventory::Inventory;
use crate::lifecycle::{Input, OrderLife, Policy};
use crate::order::decode::{read_order, DeadLetter, Decoded, DlqReason, Read};
use crate::order::events::{self, Status};
use crate::order::part2::Part2;
use crate::order::reader::{Doc, Head, Scratch};
use crate::order::validate::{check_payments, validate, Limits, ValidOrder};
use crate::order::{Detail, OrderEvent, Reason};
pub use book::{ColdOrders, Holding, OrderBook, OrderRecord, OrderState};
pub use life::LifeOutcome;
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
    /// A record about an order after its decision (contract Part 2), or
    /// the clock, applied to the order's life.
    Life(LifeOutcome),
}

/// An event to produce. Payloads are contract JSON; keys are order IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A status, with the order's new record: the changelog entry that
    /// travels with it, so a restart can rebuild state from the status topic.
    Status {
        order_id: String,
        payload: Vec<u8>,
        /// Shared with the order book: no copy per decision.
        record: std::sync::Arc<OrderRecord>,
    },
    Fulfillment {
        order_id: String,
        kind: &'static str,
        payload: Vec<u8>,
    },
    /// The input record goes to the dead-letter topic unchanged.
    DeadLetter(DeadLetter),
    /// A fact after the decision, for `order-events`.
    Event {
        order_id: String,
        kind: &'static str,
        payload: Vec<u8>,
    },
    /// A command attempt for `payment-requests`.
    Command {
        order_id: String,
        kind: crate::lifecycle::CommandKind,
        payload: Vec<u8>,
    },
    /// The order's new record after a change that has no status (the
    /// state topic): written first, the change's events and commands
    /// follow it.
    State {
        order_id: String,
        record: std::sync::Arc<OrderRecord>,
    },
}

/// Longest placed → decision time reported as a latency: a `placed_at`
/// further back is the producer's clock or a replayed old order, not time
/// spent deciding, and one such order would skew the histogram's sum and
/// upper buckets for the rest of the process's life. The loadtest's own
/// latency histogram stops at the same hour.
pub const MAX_ORDER_LATENCY: Duration = Duration::from_secs(3_600);

/// placed → decision of one record, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Not a decided placement with a readable `placed_at`: nothing to report.
    Absent,
    /// From `placed_at` to the decision, at most [`MAX_ORDER_LATENCY`].
    Measured(Duration),
    /// `placed_at` is after the decision (clock skew, a wrong clock) or more
    /// than [`MAX_ORDER_LATENCY`] before it: counted apart, never put in the
    /// histogram.
    OutOfRange,
}

impl Latency {
    /// The latency of an order placed at `placed_at` and decided at `now`.
    pub fn between(placed_at: OffsetDateTime, now: OffsetDateTime) -> Latency {
        // Both are RFC 3339 times (years 0 to 9999): the difference fits.
        match Duration::try_from(now - placed_at) {
            Ok(latency) if latency <= MAX_ORDER_LATENCY => Latency::Measured(latency),
            _ => Latency::OutOfRange,
        }
    }
}

/// The result of processing one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub outcome: Outcome,
    /// placed → decision, for decided orders with a readable `placed_at`.
    pub latency: Latency,
}

impl Processed {
    fn new(outcome: Outcome) -> Self {
        Processed {
            outcome,
            latency: Latency::Absent,
        }
    }
}

pub struct Engine {
    inventory: Arc<Inventory>,
    limits: Limits,
    /// How payment operations are retried.
    policy: Policy,
}

impl Engine {
    pub fn new(inventory: Arc<Inventory>, limits: Limits) -> Self {
        Engine {
            inventory,
            limits,
            policy: Policy::DEFAULT,
        }
    }

    /// The engine with `policy` for payment retries (`[payments]`).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
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
        WORK.with(|work| {
            let work = &mut *work.borrow_mut();
            self.decide(work, book, offset, key, value, now, out)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        work: &mut Work,
        book: &mut OrderBook,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        let max = self.limits.max_record_bytes;
        let (record, head) = match read_order(key, value, max, &mut work.scratch) {
            Read::Placed { record, head } => (record, head),
            Read::Cancelled { order_id } => return self.cancel(book, offset, order_id, now, out),
            Read::Decoded(Decoded::DeadLetter(dead)) => {
                let reason = dead.reason;
                out.push(Output::DeadLetter(dead));
                return Processed::new(Outcome::DeadLetter(reason));
            }
            Read::Decoded(Decoded::Invalid {
                order_id,
                rejection,
            }) => {
                if let Some(seen) = book.find(&order_id) {
                    return Processed::new(seen_again(seen, offset));
                }
                let detail = rejection.detail.as_str();
                self.reject(
                    book,
                    offset,
                    &order_id,
                    (rejection.reason, detail),
                    now,
                    out,
                );
                return Processed::new(Outcome::Rejected(rejection.reason));
            }
            Read::Decoded(Decoded::Event(OrderEvent::Placed(order))) => {
                let head = work.scratch.load(&order);
                return self.place(work, book, offset, "", head, now, out);
            }
            Read::Decoded(Decoded::Event(OrderEvent::Cancelled(cancel))) => {
                return self.cancel(book, offset, &cancel.order_id, now, out)
            }
            Read::Decoded(Decoded::Part2 { order_id, part2 }) => {
                return Processed::new(match part2 {
                    Part2::Input(input) => {
                        self.life_input(book, offset, &order_id, &input, now, out)
                    }
                    Part2::Invalid {
                        input, input_id, ..
                    } => self.invalid_input(&order_id, input, input_id, offset, now, out),
                })
            }
        };
        self.place(work, book, offset, record, head, now, out)
    }

    /// Decides the `order_placed` read into `work.scratch` from `record`.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        work: &mut Work,
        book: &mut OrderBook,
        offset: i64,
        record: &str,
        head: Head,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        let Work { scratch, detail } = work;
        let id = head.order_id.unwrap_or_default();
        if let Some(seen) = book.find(Doc::new(record, &scratch.text).get(id)) {
            let outcome = seen_again(seen, offset);
            if outcome == Outcome::Replayed && seen.state != OrderState::Rejected {
                // Its fulfillments may not have reached the broker before the
                // crash: send them again, rebuilt from the same record. (Also
                // when cancelled since: the cancellation's replay follows and
                // sends the shipment cancellations again after them.)
                let order_id = Doc::new(record, &scratch.text).get(id).to_string();
                if let Ok(valid) = validate(record, &head, scratch, &self.limits, detail) {
                    push_requested(out, &valid);
                }
                // And its capture commands still out.
                self.replay_commands(&order_id, seen, now, out);
            }
            return Processed::new(outcome);
        }
        let valid = match validate(record, &head, scratch, &self.limits, detail) {
            Ok(valid) => valid,
            Err(reason) => {
                let order_id = Doc::new(record, &scratch.text).get(id);
                self.reject(book, offset, order_id, (reason, detail.as_str()), now, out);
                return Processed::new(Outcome::Rejected(reason));
            }
        };
        let order_id = valid.order_id;
        let latency = Latency::between(valid.placed_at, now);
        let payments = |detail: &mut Detail| check_payments(&valid, &self.limits, detail);
        if let Err(reason) = self
            .inventory
            .reserve(&valid, book.share(), detail, payments)
        {
            self.reject(book, offset, order_id, (reason, detail.as_str()), now, out);
            return Processed {
                outcome: Outcome::Rejected(reason),
                latency,
            };
        }
        let holding = Holding {
            customer_id: valid.customer_id.to_string(),
            shipments: events::shipment_keys(&valid),
            demand: valid
                .demand()
                .map(|(sku, units)| (sku.to_string(), units))
                .collect(),
        };
        let mut record = OrderRecord::decided(OrderState::Accepted, offset, Some(holding));
        let (life, effects) = OrderLife::accept(life::accepted(&valid), self.ctx(order_id, now));
        record.life = Some(Box::new(life));
        book.took(valid.demand());
        let record = std::sync::Arc::new(record);
        push_status(out, order_id, Status::Accepted, None, now, record.clone());
        push_requested(out, &valid);
        let at = crate::lifecycle::Millis::from_datetime(now);
        for effect in &effects {
            if let crate::lifecycle::Effect::Command(command) = effect {
                life::push_command(out, order_id, command, at);
            }
        }
        book.insert_shared(order_id.to_string(), record);
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
        rejection: (Reason, &str),
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) {
        let record = std::sync::Arc::new(OrderRecord::decided(OrderState::Rejected, offset, None));
        push_status(
            out,
            order_id,
            Status::Rejected,
            Some(rejection),
            now,
            record.clone(),
        );
        book.insert_shared(order_id.to_string(), record);
    }

    fn cancel(
        &self,
        book: &mut OrderBook,
        offset: i64,
        order_id: &str,
        now: OffsetDateTime,
        out: &mut Vec<Output>,
    ) -> Processed {
        let Some(seen) = book.find(order_id) else {
            return Processed::new(Outcome::CancelIgnored);
        };
        if seen.life.is_some() {
            // Part 2: refused once a shipment shipped; payments voided or
            // refunded.
            return Processed::new(self.life_input(
                book,
                offset,
                order_id,
                &Input::Cancel,
                now,
                out,
            ));
        }
        // An order decided before lifecycles existed (restored from an
        // older changelog): Part 1's cancellation.
        let Some(holding) = seen.holding.clone() else {
            return Processed::new(Outcome::CancelIgnored); // rejected
        };
        let outcome = match seen.state {
            OrderState::Accepted => {
                self.inventory
                    .release(&holding.customer_id, holding.units());
                let record = OrderRecord {
                    state: OrderState::Cancelled,
                    offset,
                    holding: Some(holding.clone()),
                    version: seen.version.saturating_add(1),
                    ..seen.clone()
                };
                book.gave_back(holding.units());
                let record = std::sync::Arc::new(record);
                push_status(out, order_id, Status::Cancelled, None, now, record.clone());
                book.insert_shared(order_id.to_string(), record);
                Outcome::Cancelled
            }
            // The cancellation itself, replayed: its shipment cancellations
            // may not have reached the broker, so they go out again.
            OrderState::Cancelled if seen.offset == offset => Outcome::Replayed,
            _ => return Processed::new(Outcome::CancelIgnored),
        };
        for key in &holding.shipments {
            let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
            events::cancelled_json(&mut payload, order_id, key);
            out.push(Output::Fulfillment {
                order_id: order_id.to_string(),
                kind: "fulfillment_cancelled",
                payload,
            });
        }
        Processed::new(outcome)
    }
}

/// What a shard reuses from record to record to decide one.
#[derive(Debug, Default)]
struct Work {
    scratch: Scratch,
    detail: Detail,
}

thread_local! {
    static WORK: std::cell::RefCell<Work> = std::cell::RefCell::default();
}

/// Gives back to the inventory what a partition's orders hold, when the
/// partition moves to another instance: its new owner restores them
/// from the changelog. The units come from the book's totals, exact even
/// for orders the window forgot; per-customer holdings only for orders
/// the window remembers (a forgotten order's holding stays counted here:
/// stricter, never looser).
pub fn forget(inventory: &Inventory, book: &OrderBook) {
    let mut rest = book.sold().clone();
    for holding in book.accepted() {
        inventory.release(&holding.customer_id, holding.units());
        for (sku, units) in &holding.demand {
            if let Some(left) = rest.get_mut(sku) {
                *left = left.saturating_sub(i64::from(*units));
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

/// Starting size of an output payload: a status is about 150 bytes, a
/// fulfillment with its address about 300; one allocation covers most.
const PAYLOAD_CAPACITY: usize = 384;

fn push_status(
    out: &mut Vec<Output>,
    order_id: &str,
    status: Status,
    rejection: Option<(Reason, &str)>,
    now: OffsetDateTime,
    record: std::sync::Arc<OrderRecord>,
) {
    let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
    events::status_json(&mut payload, order_id, status, rejection, now);
    out.push(Output::Status {
        order_id: order_id.to_string(),
        payload,
        record,
    });
}

/// The `fulfillment_requested` events of an accepted order.
fn push_requested(out: &mut Vec<Output>, order: &ValidOrder<'_>) {
    for index in 0..order.addresses().len() {
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
        if events::requested_json(&mut payload, order, index) {
            out.push(Output::Fulfillment {
                order_id: order.order_id.to_string(),
                kind: "fulfillment_requested",
                payload,
            });
        }
    }
}

pub(crate) fn push_fulfillment(
    out: &mut Vec<Output>,
    order_id: &str,
    event: &events::FulfillmentEvent<'_>,
) {
    let payload = serde_json::to_vec(event).expect("fulfillment events always serialize");
    out.push(Output::Fulfillment {
        order_id: order_id.to_string(),
        kind: event.kind(),
        payload,
    });
}

#[cfg(test)]
mod tests;
