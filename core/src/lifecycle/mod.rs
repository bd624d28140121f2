//! An accepted order's life after its decision (contract Part 2): payments
//! captured through a gateway with retries, voids and refunds, shipments,
//! returns and staff actions.
//!
//! Pure, in the sans-I/O shape: [`OrderLife`] is the state of one order,
//! and [`OrderLife::apply`] takes one input (a record about the order, a
//! staff action, or the clock) and returns what to do as data — events for
//! `order-events`, commands for `payment-requests`, the order's
//! cancellation, units to put back in stock — or the reason the input is
//! refused (`input_rejected`). It never touches a broker or a clock:
//! timers are instants in the state ([`OrderLife::next_due`]), so a restore
//! rebuilds them from the state alone.
//!
//! An input either applies whole or changes nothing (the state is only
//! replaced when the input is accepted).
//!
//! - [`op`]: a gateway operation retried with backoff until it settles.
//! - [`events`]: the events and commands, with their JSON.
//! - [`gateway`]: the simulated gateway's rule.

pub mod events;
pub mod gateway;
pub mod op;

use crate::order::events::fulfillment_id;
pub use events::{Command, CommandKind, Event, EventKind, ReturnLine};
pub use gateway::Outcome;
pub use op::{Failed, Op, Policy, Step};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Staff actions remembered per order (their IDs, so a redelivered action
/// is not applied twice); a further action is refused as `invalid`.
pub const MAX_ACTIONS_PER_ORDER: usize = 64;
/// Returns per order; a further one is refused as `invalid`.
pub const MAX_RETURNS_PER_ORDER: usize = 16;
/// The code of a refund that cannot go through a gateway.
pub const CASH_ON_DELIVERY_CODE: &str = "cash_on_delivery";
/// The code of an attempt that got no result in time.
pub const TIMEOUT_CODE: &str = "timeout";

/// An instant as Unix time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub i64);

impl Millis {
    pub fn from_datetime(t: OffsetDateTime) -> Millis {
        let millis = t.unix_timestamp_nanos().div_euclid(1_000_000);
        Millis(i64::try_from(millis).unwrap_or(i64::MAX))
    }

    /// `ms` later, saturating.
    pub fn after(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }

    /// RFC 3339 in UTC with milliseconds, as every other stamp we write.
    pub fn rfc3339(self) -> String {
        self.with_rfc3339(str::to_string)
    }

    /// Runs `f` with [`Millis::rfc3339`]'s text, formatted once per
    /// thread for a run of the same instant (a batch's commands and events
    /// are all stamped with the batch's `now`).
    pub fn with_rfc3339<T>(self, f: impl FnOnce(&str) -> T) -> T {
        thread_local! {
            static LAST: std::cell::RefCell<(i64, String)> =
                const { std::cell::RefCell::new((i64::MIN, String::new())) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != self.0 || last.1.is_empty() {
                let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                *last = (self.0, crate::order::events::format_time(t));
            }
            f(&last.1)
        })
    }
}

/// Why an input about an order is refused: the contract's closed set of
/// `input_rejected` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    UnknownOrder,
    OrderNotActive,
    UnknownFulfillment,
    AlreadyShipped,
    ShipmentCancelled,
    ExceedsDelivered,
    UnknownReturn,
    ExceedsRequested,
    UnknownCommand,
    NotAllowed,
    Invalid,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::UnknownOrder,
        Refusal::OrderNotActive,
        Refusal::UnknownFulfillment,
        Refusal::AlreadyShipped,
        Refusal::ShipmentCancelled,
        Refusal::ExceedsDelivered,
        Refusal::UnknownReturn,
        Refusal::ExceedsRequested,
        Refusal::UnknownCommand,
        Refusal::NotAllowed,
        Refusal::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownOrder => "unknown_order",
            Refusal::OrderNotActive => "order_not_active",
            Refusal::UnknownFulfillment => "unknown_fulfillment",
            Refusal::AlreadyShipped => "already_shipped",
            Refusal::ShipmentCancelled => "shipment_cancelled",
            Refusal::ExceedsDelivered => "exceeds_delivered",
            Refusal::UnknownReturn => "unknown_return",
            Refusal::ExceedsRequested => "exceeds_requested",
            Refusal::UnknownCommand => "unknown_command",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Invalid => "invalid",
        }
    }
}

/// Why an order was cancelled after its acceptance; the status's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// `order_cancelled`: reason null, as in Part 1.
    Customer,
    /// `cancel_order` by staff: `staff`.
    Staff,
    /// A capture was declined: `payment_declined`.
    PaymentDeclined,
}

impl CancelReason {
    /// The status's `reason` field.
    pub fn status_reason(self) -> Option<&'static str> {
        match self {
            CancelReason::Customer => None,
            CancelReason::Staff => Some("staff"),
            CancelReason::PaymentDeclined => Some("payment_declined"),
        }
    }
}

/// What to do after an input, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A fact for `order-events`.
    Event(Event),
    /// An attempt of a command for `payment-requests`.
    Command(Command),
    /// The order is cancelled: status `cancelled` with this reason, its
    /// reservation given back, one `fulfillment_cancelled` per shipment.
    /// At most once per order.
    Cancel(CancelReason),
    /// Returned units back to stock. Once per received return.
    Restock(Vec<ReturnLine>),
}

/// One line of an order, as the lifecycle needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifeLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
    pub ship_to: String,
}

/// A payment of an order as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedPayment {
    pub method: String,
    pub amount_minor: i64,
    pub authorization_id: Option<String>,
    /// Paid when the last shipment is delivered (cash on delivery): no
    /// gateway command.
    pub on_delivery: bool,
}

/// An accepted order, as its life starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub currency: String,
    pub lines: Vec<LifeLine>,
    pub payments: Vec<PlacedPayment>,
    /// Address keys of its shipments.
    pub shipments: Vec<String>,
}

/// Where one payment stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayState {
    /// Cash on delivery: captured without a command at the last delivery.
    OnDelivery,
    /// A capture is being attempted.
    Capturing(Op),
    Captured {
        gateway_ref: Option<String>,
    },
    /// The gateway said no (final).
    Declined {
        code: String,
    },
    /// The order was cancelled before this payment was captured: a void is
    /// being attempted. A capture that succeeds meanwhile wins (the
    /// payment is then refunded): a payment is never captured and voided.
    Voiding(Op),
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentLife {
    pub placed: PlacedPayment,
    pub state: PayState,
    /// Capture attempts sent so far (a result for a later one is unknown).
    pub capture_attempts: u32,
    /// Void attempts sent so far.
    pub void_attempts: u32,
    /// Refunded or being refunded; never above the captured amount.
    pub refunded_minor: i64,
}

impl PaymentLife {
    fn captured(&self) -> bool {
        matches!(self.state, PayState::Captured { .. })
    }

    /// What can still be refunded.
    fn refundable(&self) -> i64 {
        if self.captured() {
            self.placed.amount_minor.saturating_sub(self.refunded_minor)
        } else {
            0
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShipState {
    Requested,
    Shipped,
    Delivered,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentLife {
    /// The address key; the fulfillment ID is `ORDER/KEY`.
    pub key: String,
    pub state: ShipState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLife {
    pub return_id: String,
    pub lines: Vec<ReturnLine>,
    pub received: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundState {
    /// Going through the gateway.
    Running(Op),
    /// No gateway can take it (cash on delivery): staff refund it.
    Manual {
        code: String,
    },
    Succeeded {
        gateway_ref: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLife {
    pub refund_id: String,
    pub payment: u32,
    pub amount_minor: i64,
    pub state: RefundState,
    /// Attempts sent so far (a result for a later one is unknown).
    pub attempts: u32,
}

/// The life of one accepted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLife {
    pub currency: String,
    pub lines: Vec<LifeLine>,
    pub payments: Vec<PaymentLife>,
    pub shipments: Vec<ShipmentLife>,
    pub returns: Vec<ReturnLife>,
    pub refunds: Vec<RefundLife>,
    pub cancelled: bool,
    /// `order_paid` was emitted.
    pub paid: bool,
    /// `order_delivered` was emitted.
    pub delivered: bool,
    /// IDs of the staff actions applied.
    pub actions: Vec<String>,
    /// When the order was accepted (for the capture latency).
    pub accepted_at: Millis,
}

/// A staff action (`staff_action` on `orders`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RetryPayment,
    MarkPaid,
    CancelOrder,
    RetryRefund,
    MarkRefunded,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RetryPayment => "retry_payment",
            Action::MarkPaid => "mark_paid",
            Action::CancelOrder => "cancel_order",
            Action::RetryRefund => "retry_refund",
            Action::MarkRefunded => "mark_refunded",
        }
    }
}

/// A received line of a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedLine {
    pub sku: String,
    pub quantity: u32,
    pub restock: bool,
}

/// One input about an accepted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    PaymentResult {
        command_id: String,
        attempt: u32,
        outcome: Outcome,
        code: String,
        gateway_ref: Option<String>,
    },
    /// `order_cancelled` from the customer.
    Cancel,
    Staff {
        action_id: String,
        actor: String,
        action: Action,
        target: String,
        note: Option<String>,
    },
    Shipped {
        fulfillment_id: String,
        carrier: Option<String>,
        tracking_number: Option<String>,
    },
    Delivered {
        fulfillment_id: String,
    },
    ReturnRequested {
        return_id: String,
        lines: Vec<ReturnLine>,
    },
    ReturnReceived {
        return_id: String,
        lines: Vec<ReceivedLine>,
    },
    /// The clock: every timer due by now fires.
    Due,
}

impl Input {
    /// The input's `type`, for `input_rejected`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Input::PaymentResult { .. } => "payment_result",
            Input::Cancel => "order_cancelled",
            Input::Staff { .. } => "staff_action",
            Input::Shipped { .. } => "shipment_shipped",
            Input::Delivered { .. } => "shipment_delivered",
            Input::ReturnRequested { .. } => "return_requested",
            Input::ReturnReceived { .. } => "return_received",
            Input::Due => "timer",
        }
    }

    /// Its fulfillment, return, action or command ID, for `input_rejected`.
    pub fn input_id(&self) -> Option<&str> {
        match self {
            Input::PaymentResult { command_id, .. } => Some(command_id),
            Input::Staff { action_id, .. } => Some(action_id),
            Input::Shipped { fulfillment_id, .. } | Input::Delivered { fulfillment_id } => {
                Some(fulfillment_id)
            }
            Input::ReturnRequested { return_id, .. } | Input::ReturnReceived { return_id, .. } => {
                Some(return_id)
            }
            Input::Cancel | Input::Due => None,
        }
    }
}

/// The `input_rejected` event for an input of `order_id` refused with
/// `reason`; `position` names the input record (partition and offset) so
/// two refused records never share an event ID.
pub fn rejected(order_id: &str, input: &Input, reason: Refusal, position: &str) -> Event {
    Event {
        event_id: format!("{order_id}@{position}:input_rejected"),
        kind: EventKind::InputRejected {
            input: input.type_name().into(),
            input_id: input.input_id().map(str::to_string),
            reason,
        },
    }
}

/// The stable reference of payment `index` (a staff action's target).
pub fn payment_ref(order_id: &str, index: usize) -> String {
    payment_ref_then(order_id, index, &[])
}

/// `{order_id}/p{index}` followed by `tail`, in one allocation of the
/// right size (`format!` on every accepted order's capture cost ~2,500
/// instructions; docs/benchmarks.md, section 7).
fn payment_ref_then(order_id: &str, index: usize, tail: &[&str]) -> String {
    let mut buf = [0; 20];
    let digits = crate::order::json::decimal(index as u64, &mut buf);
    let tail_len: usize = tail.iter().map(|t| t.len()).sum();
    let mut out = String::with_capacity(order_id.len() + 2 + digits.len() + tail_len);
    out.push_str(order_id);
    out.push_str("/p");
    out.push_str(digits);
    for part in tail {
        out.push_str(part);
    }
    out
}

fn command_id(order_id: &str, index: usize, kind: CommandKind) -> String {
    payment_ref_then(order_id, index, &[":", kind.as_str()])
}

/// What one input is applied with.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub order_id: &'a str,
    pub now: Millis,
    pub policy: &'a Policy,
}

type Fx = Vec<Effect>;

impl OrderLife {
    /// The life of a newly accepted order: one capture per payment that
    /// is not paid on delivery.
    pub fn accept(order: Accepted, ctx: Ctx<'_>) -> (OrderLife, Vec<Effect>) {
        let mut life = OrderLife {
            currency: order.currency,
            lines: order.lines,
            payments: Vec::with_capacity(order.payments.len()),
            shipments: order
                .shipments
                .into_iter()
                .map(|key| ShipmentLife {
                    key,
                    state: ShipState::Requested,
                })
                .collect(),
            returns: Vec::new(),
            refunds: Vec::new(),
            cancelled: false,
            paid: false,
            delivered: false,
            actions: Vec::new(),
            accepted_at: ctx.now,
        };
        let mut fx = Vec::new();
        for (index, placed) in order.payments.into_iter().enumerate() {
            let on_delivery = placed.on_delivery;
            life.payments.push(PaymentLife {
                placed,
                state: PayState::OnDelivery,
                capture_attempts: 0,
                void_attempts: 0,
                refunded_minor: 0,
            });
            if !on_delivery {
                let op = Op::first(ctx.now, ctx.policy);
                life.payments[index].capture_attempts = op.attempt;
                life.payments[index].state = PayState::Capturing(op);
                fx.push(Effect::Command(life.command(
                    ctx,
                    index,
                    CommandKind::Capture,
                    1,
                )));
            }
        }
        (life, fx)
    }

    /// Applies `input`: the effects to carry out, in order, or why it is
    /// refused (the state is then unchanged).
    pub fn apply(&mut self, ctx: Ctx<'_>, input: &Input) -> Result<Vec<Effect>, Refusal> {
        let mut next = self.clone();
        let mut fx = Vec::new();
        next.step(ctx, input, &mut fx)?;
        *self = next;
        Ok(fx)
    }

    /// The earliest instant a timer of this order fires, if any.
    pub fn next_due(&self) -> Option<Millis> {
        self.ops().filter_map(|op| op.due()).min()
    }

    /// The command attempts out awaiting a result. After a restore they are
    /// sent again with the same attempt numbers: they may never have left
    /// before the crash, and gateways deduplicate by `command_id`.
    pub fn in_flight(&self, ctx: Ctx<'_>) -> Vec<Command> {
        let mut commands = Vec::new();
        for (index, payment) in self.payments.iter().enumerate() {
            match &payment.state {
                PayState::Capturing(op) if op.in_flight() => {
                    commands.push(self.command(ctx, index, CommandKind::Capture, op.attempt))
                }
                PayState::Voiding(op) if op.in_flight() => {
                    commands.push(self.command(ctx, index, CommandKind::Void, op.attempt))
                }
                _ => {}
            }
        }
        for refund in &self.refunds {
            if let RefundState::Running(op) = &refund.state {
                if op.in_flight() {
                    commands.push(self.refund_command(refund, op.attempt));
                }
            }
        }
        commands
    }

    /// Payments and refunds waiting for staff.
    pub fn in_attention(&self) -> usize {
        let payments = self.payments.iter().filter(|p| match &p.state {
            PayState::Capturing(op) | PayState::Voiding(op) => op.in_attention(),
            _ => false,
        });
        let refunds = self.refunds.iter().filter(|r| match &r.state {
            RefundState::Running(op) => op.in_attention(),
            RefundState::Manual { .. } => true,
            RefundState::Succeeded { .. } => false,
        });
        payments.count() + refunds.count()
    }

    fn ops(&self) -> impl Iterator<Item = &Op> {
        let payments = self.payments.iter().filter_map(|p| match &p.state {
            PayState::Capturing(op) | PayState::Voiding(op) => Some(op),
            _ => None,
        });
        let refunds = self.refunds.iter().filter_map(|r| match &r.state {
            RefundState::Running(op) => Some(op),
            _ => None,
        });
        payments.chain(refunds)
    }

    fn step(&mut self, ctx: Ctx<'_>, input: &Input, fx: &mut Fx) -> Result<(), Refusal> {
        match input {
            Input::PaymentResult {
                command_id,
                attempt,
                outcome,
                code,
                gateway_ref,
            } => {
                let result = GatewayResult {
                    attempt: *attempt,
                    outcome: *outcome,
                    code,
                    gateway_ref: gateway_ref.as_deref(),
                };
                self.result(ctx, command_id, &result, fx)
            }
            Input::Cancel => self.cancel(ctx, CancelReason::Customer, fx),
            Input::Staff {
                action_id,
                actor,
                action,
                target,
                note,
            } => {
                if self.actions.iter().any(|a| a == action_id) {
                    return Ok(()); // applied before: a redelivery
                }
                if action_id.is_empty() || actor.is_empty() {
                    return Err(Refusal::Invalid);
                }
                if self.actions.len() >= MAX_ACTIONS_PER_ORDER {
                    return Err(Refusal::Invalid);
                }
                self.staff(ctx, *action, target, note.as_deref(), fx)?;
                self.actions.push(action_id.clone());
                fx.push(Effect::Event(Event {
                    event_id: format!("{}/{action_id}:applied", ctx.order_id),
                    kind: EventKind::StaffActionApplied {
                        action_id: action_id.clone(),
                        actor: actor.clone(),
                        action: action.as_str().into(),
                        target: target.clone(),
                    },
                }));
                Ok(())
            }
            Input::Shipped {
                fulfillment_id,
                carrier,
                tracking_number,
            } => {
                let index = self.shipment(ctx, fulfillment_id)?;
                if self.shipments[index].state == ShipState::Requested {
                    self.shipments[index].state = ShipState::Shipped;
                    fx.push(Effect::Event(Event {
                        event_id: format!("{fulfillment_id}:shipped"),
                        kind: EventKind::ShipmentShipped {
                            fulfillment_id: fulfillment_id.clone(),
                            carrier: carrier.clone(),
                            tracking_number: tracking_number.clone(),
                        },
                    }));
                }
                Ok(())
            }
            Input::Delivered { fulfillment_id } => {
                let index = self.shipment(ctx, fulfillment_id)?;
                if self.shipments[index].state != ShipState::Delivered {
                    self.shipments[index].state = ShipState::Delivered;
                    fx.push(Effect::Event(Event {
                        event_id: format!("{fulfillment_id}:delivered"),
                        kind: EventKind::ShipmentDelivered {
                            fulfillment_id: fulfillment_id.clone(),
                        },
                    }));
                    self.after_delivery(ctx, fx);
                }
                Ok(())
            }
            Input::ReturnRequested { return_id, lines } => {
                self.return_requested(ctx, return_id, lines, fx)
            }
            Input::ReturnReceived { return_id, lines } => {
                self.return_received(ctx, return_id, lines, fx)
            }
            Input::Due => {
                self.due(ctx, fx);
                Ok(())
            }
        }
    }

    // --- payments -------------------------------------------------------

    fn command(&self, ctx: Ctx<'_>, index: usize, kind: CommandKind, attempt: u32) -> Command {
        let placed = &self.payments[index].placed;
        Command {
            kind,
            command_id: command_id(ctx.order_id, index, kind),
            attempt,
            payment: index as u32,
            method: placed.method.clone(),
            authorization_id: placed.authorization_id.clone(),
            amount_minor: placed.amount_minor,
            currency: self.currency.clone(),
            refund_id: None,
        }
    }

    fn refund_command(&self, refund: &RefundLife, attempt: u32) -> Command {
        let placed = &self.payments[refund.payment as usize].placed;
        Command {
            kind: CommandKind::Refund,
            command_id: format!("{}:refund", refund.refund_id),
            attempt,
            payment: refund.payment,
            method: placed.method.clone(),
            authorization_id: placed.authorization_id.clone(),
            amount_minor: refund.amount_minor,
            currency: self.currency.clone(),
            refund_id: Some(refund.refund_id.clone()),
        }
    }

    fn result(
        &mut self,
        ctx: Ctx<'_>,
        command_id_: &str,
        result: &GatewayResult<'_>,
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        for index in 0..self.payments.len() {
            if command_id_ == command_id(ctx.order_id, index, CommandKind::Capture) {
                return self.capture_result(ctx, index, result, fx);
            }
            if command_id_ == command_id(ctx.order_id, index, CommandKind::Void) {
                return self.void_result(ctx, index, result, fx);
            }
        }
        if let Some(index) = self
            .refunds
            .iter()
            .position(|r| command_id_.strip_suffix(":refund") == Some(r.refund_id.as_str()))
        {
            return self.refund_result(ctx, index, result, fx);
        }
        Err(Refusal::UnknownCommand)
    }

    fn capture_result(
        &mut self,
        ctx: Ctx<'_>,
        index: usize,
        result: &GatewayResult<'_>,
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        let payment = &mut self.payments[index];
        if result.attempt == 0 || result.attempt > payment.capture_attempts {
            return Err(Refusal::UnknownCommand);
        }
        let command = command_id(ctx.order_id, index, CommandKind::Capture);
        let voiding = match &mut payment.state {
            PayState::Capturing(op) => {
                if !op.answer_matters(result.attempt, result.outcome)? {
                    return Ok(());
                }
                if result.outcome == Outcome::Failed {
                    let failed = op.fail(result.code, &command, ctx.now, ctx.policy);
                    fx.push(payment_failed_event(ctx, index, "", failed, result.code));
                    return Ok(());
                }
                false
            }
            PayState::Voiding(_) if result.outcome == Outcome::Succeeded => true,
            // Anything else is settled already: a repeat or a late answer.
            _ => return Ok(()),
        };
        match result.outcome {
            Outcome::Declined => self.declined(ctx, index, result.code, fx),
            _ => {
                self.captured(ctx, index, result.gateway_ref, fx);
                // The order was cancelled while the capture was out, and
                // the capture went through: it wins over the void, and is
                // refunded.
                if voiding {
                    self.refund_for_cancellation(ctx, index, fx);
                }
            }
        }
        Ok(())
    }

    fn void_result(
        &mut self,
        ctx: Ctx<'_>,
        index: usize,
        result: &GatewayResult<'_>,
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        let payment = &mut self.payments[index];
        if result.attempt == 0 || result.attempt > payment.void_attempts {
            return Err(Refusal::UnknownCommand);
        }
        let command = command_id(ctx.order_id, index, CommandKind::Void);
        let PayState::Voiding(op) = &mut payment.state else {
            return Ok(()); // voided already, or the capture won
        };
        // A final no to an operation staff have already changes nothing.
        let news = !(result.outcome == Outcome::Declined && op.in_attention());
        if !(op.answer_matters(result.attempt, result.outcome)? && news) {
            return Ok(());
        }
        match result.outcome {
            Outcome::Succeeded => {
                payment.state = PayState::Voided;
                fx.push(Effect::Event(Event {
                    event_id: payment_ref_then(ctx.order_id, index, &[":voided"]),
                    kind: EventKind::PaymentVoided {
                        payment: index as u32,
                    },
                }));
            }
            // A void the gateway refuses is for staff to settle.
            Outcome::Declined => {
                op.step = Step::Attention {
                    code: result.code.into(),
                };
                let failed = Failed::Attention {
                    attempts: op.attempt,
                };
                fx.push(payment_failed_event(
                    ctx,
                    index,
                    "void-",
                    failed,
                    result.code,
                ));
            }
            Outcome::Failed => {
                let failed = op.fail(result.code, &command, ctx.now, ctx.policy);
                fx.push(payment_failed_event(
                    ctx,
                    index,
                    "void-",
                    failed,
                    result.code,
                ));
            }
        }
        Ok(())
    }

    fn captured(&mut self, ctx: Ctx<'_>, index: usize, gateway_ref: Option<&str>, fx: &mut Fx) {
        let payment = &mut self.payments[index];
        payment.state = PayState::Captured {
            gateway_ref: gateway_ref.map(str::to_string),
        };
        fx.push(Effect::Event(Event {
            event_id: payment_ref_then(ctx.order_id, index, &[":captured"]),
            kind: EventKind::PaymentCaptured {
                payment: index as u32,
                amount_minor: payment.placed.amount_minor,
                currency: self.currency.clone(),
                gateway_ref: gateway_ref.map(str::to_string),
            },
        }));
        if !self.paid && !self.cancelled && self.payments.iter().all(PaymentLife::captured) {
            self.paid = true;
            let total = self
                .payments
                .iter()
                .fold(0i64, |sum, p| sum.saturating_add(p.placed.amount_minor));
            fx.push(Effect::Event(Event {
                event_id: format!("{}:paid", ctx.order_id),
                kind: EventKind::OrderPaid {
                    amount_minor: total,
                    currency: self.currency.clone(),
                },
            }));
        }
    }

    /// A final no to a capture: the order is cancelled (stock back, other
    /// payments voided or refunded) unless a shipment left already; then
    /// the order cannot be undone here and staff settle it.
    fn declined(&mut self, ctx: Ctx<'_>, index: usize, code: &str, fx: &mut Fx) {
        let attempts = self.payments[index].capture_attempts;
        self.payments[index].state = PayState::Declined { code: code.into() };
        fx.push(Effect::Event(Event {
            event_id: payment_ref_then(ctx.order_id, index, &[":declined"]),
            kind: EventKind::PaymentDeclined {
                payment: index as u32,
                code: code.into(),
            },
        }));
        if self.cancelled {
            return;
        }
        if self.any_shipped() {
            // Its own ID: the same attempt may have reached attention by
            // timing out before this late "declined" for it came.
            fx.push(Effect::Event(Event {
                event_id: format!(
                    "{}:declined-attention-{attempts}",
                    payment_ref(ctx.order_id, index)
                ),
                kind: EventKind::PaymentAttention {
                    payment: index as u32,
                    attempts,
                    code: code.into(),
                },
            }));
            return;
        }
        self.cancel_now(ctx, CancelReason::PaymentDeclined, fx);
    }

    fn any_shipped(&self) -> bool {
        self.shipments
            .iter()
            .any(|s| matches!(s.state, ShipState::Shipped | ShipState::Delivered))
    }

    fn cancel(&mut self, ctx: Ctx<'_>, reason: CancelReason, fx: &mut Fx) -> Result<(), Refusal> {
        if self.cancelled {
            return Err(Refusal::OrderNotActive);
        }
        if self.any_shipped() {
            return Err(Refusal::AlreadyShipped);
        }
        self.cancel_now(ctx, reason, fx);
        Ok(())
    }

    /// Cancels the order: shipments cancelled, every payment not captured
    /// voided, every captured one refunded.
    fn cancel_now(&mut self, ctx: Ctx<'_>, reason: CancelReason, fx: &mut Fx) {
        self.cancelled = true;
        for shipment in &mut self.shipments {
            shipment.state = ShipState::Cancelled;
        }
        fx.push(Effect::Cancel(reason));
        for index in 0..self.payments.len() {
            match self.payments[index].state {
                PayState::OnDelivery => {
                    self.payments[index].state = PayState::Voided;
                    fx.push(Effect::Event(Event {
                        event_id: payment_ref_then(ctx.order_id, index, &[":voided"]),
                        kind: EventKind::PaymentVoided {
                            payment: index as u32,
                        },
                    }));
                }
                PayState::Capturing(_) => {
                    let op = Op::first(ctx.now, ctx.policy);
                    let payment = &mut self.payments[index];
                    payment.void_attempts = op.attempt;
                    payment.state = PayState::Voiding(op);
                    fx.push(Effect::Command(self.command(
                        ctx,
                        index,
                        CommandKind::Void,
                        1,
                    )));
                }
                PayState::Captured { .. } => self.refund_for_cancellation(ctx, index, fx),
                PayState::Declined { .. } | PayState::Voiding(_) | PayState::Voided => {}
            }
        }
    }

    fn refund_for_cancellation(&mut self, ctx: Ctx<'_>, index: usize, fx: &mut Fx) {
        let amount = self.payments[index].refundable();
        if amount > 0 {
            let refund_id = payment_ref_then(ctx.order_id, index, &["/cancel"]);
            self.start_refund(ctx, refund_id, index, amount, fx);
        }
    }

    fn start_refund(
        &mut self,
        ctx: Ctx<'_>,
        refund_id: String,
        index: usize,
        amount: i64,
        fx: &mut Fx,
    ) {
        let payment = &mut self.payments[index];
        debug_assert!(amount <= payment.refundable(), "refund above captured");
        payment.refunded_minor = payment.refunded_minor.saturating_add(amount);
        let (state, attempts) = if payment.placed.on_delivery {
            let code = CASH_ON_DELIVERY_CODE.into();
            (RefundState::Manual { code }, 0)
        } else {
            (RefundState::Running(Op::first(ctx.now, ctx.policy)), 1)
        };
        let refund = RefundLife {
            refund_id,
            payment: index as u32,
            amount_minor: amount,
            state,
            attempts,
        };
        match &refund.state {
            RefundState::Manual { code } => fx.push(Effect::Event(Event {
                event_id: format!("{}:attention-0", refund.refund_id),
                kind: EventKind::RefundAttention {
                    refund_id: refund.refund_id.clone(),
                    payment: refund.payment,
                    amount_minor: amount,
                    code: code.clone(),
                },
            })),
            _ => fx.push(Effect::Command(self.refund_command(&refund, 1))),
        }
        self.refunds.push(refund);
    }

    fn refund_result(
        &mut self,
        ctx: Ctx<'_>,
        index: usize,
        result: &GatewayResult<'_>,
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        let refund = &mut self.refunds[index];
        if result.attempt == 0 || result.attempt > refund.attempts {
            return Err(Refusal::UnknownCommand);
        }
        let op = match &mut refund.state {
            RefundState::Running(op) => op,
            _ => return Ok(()), // settled already: a repeat or a late answer
        };
        // A final no to an operation staff have already changes nothing.
        let news = !(result.outcome == Outcome::Declined && op.in_attention());
        if !(op.answer_matters(result.attempt, result.outcome)? && news) {
            return Ok(());
        }
        let attention = |refund: &RefundLife, attempts: u32, code: &str| {
            Effect::Event(Event {
                event_id: format!("{}:attention-{attempts}", refund.refund_id),
                kind: EventKind::RefundAttention {
                    refund_id: refund.refund_id.clone(),
                    payment: refund.payment,
                    amount_minor: refund.amount_minor,
                    code: code.into(),
                },
            })
        };
        match result.outcome {
            Outcome::Succeeded => {
                refund.state = RefundState::Succeeded {
                    gateway_ref: result.gateway_ref.map(str::to_string),
                };
                fx.push(refund_succeeded(refund, result.gateway_ref));
            }
            Outcome::Declined => {
                let attempts = op.attempt;
                op.step = Step::Attention {
                    code: result.code.into(),
                };
                fx.push(attention(refund, attempts, result.code));
            }
            Outcome::Failed => {
                let command = format!("{}:refund", refund.refund_id);
                if let Failed::Attention { attempts } =
                    op.fail(result.code, &command, ctx.now, ctx.policy)
                {
                    fx.push(attention(refund, attempts, result.code));
                }
            }
        }
        Ok(())
    }

    /// Every timer due by now: an attempt without a result in time counts
    /// as failed; a retry whose time came is sent.
    fn due(&mut self, ctx: Ctx<'_>, fx: &mut Fx) {
        for index in 0..self.payments.len() {
            let (kind, prefix) = match &self.payments[index].state {
                PayState::Capturing(_) => (CommandKind::Capture, ""),
                PayState::Voiding(_) => (CommandKind::Void, "void-"),
                _ => continue,
            };
            let command = command_id(ctx.order_id, index, kind);
            let payment = &mut self.payments[index];
            let op = match &mut payment.state {
                PayState::Capturing(op) | PayState::Voiding(op) => op,
                _ => continue,
            };
            match op.step {
                Step::Sent { timeout_at } if timeout_at <= ctx.now => {
                    let failed = op.fail(TIMEOUT_CODE, &command, ctx.now, ctx.policy);
                    fx.push(payment_failed_event(
                        ctx,
                        index,
                        prefix,
                        failed,
                        TIMEOUT_CODE,
                    ));
                }
                Step::Waiting { next_at, .. } if next_at <= ctx.now => {
                    let attempt = op.next_attempt(ctx.now, ctx.policy);
                    match kind {
                        CommandKind::Capture => payment.capture_attempts = attempt,
                        _ => payment.void_attempts = attempt,
                    }
                    fx.push(Effect::Command(self.command(ctx, index, kind, attempt)));
                }
                _ => {}
            }
        }
        for index in 0..self.refunds.len() {
            let refund = &mut self.refunds[index];
            let RefundState::Running(op) = &mut refund.state else {
                continue;
            };
            match op.step {
                Step::Sent { timeout_at } if timeout_at <= ctx.now => {
                    let command = format!("{}:refund", refund.refund_id);
                    if let Failed::Attention { attempts } =
                        op.fail(TIMEOUT_CODE, &command, ctx.now, ctx.policy)
                    {
                        fx.push(Effect::Event(Event {
                            event_id: format!("{}:attention-{attempts}", refund.refund_id),
                            kind: EventKind::RefundAttention {
                                refund_id: refund.refund_id.clone(),
                                payment: refund.payment,
                                amount_minor: refund.amount_minor,
                                code: TIMEOUT_CODE.into(),
                            },
                        }));
                    }
                }
                Step::Waiting { next_at, .. } if next_at <= ctx.now => {
                    let attempt = op.next_attempt(ctx.now, ctx.policy);
                    refund.attempts = attempt;
                    let refund = &self.refunds[index];
                    fx.push(Effect::Command(self.refund_command(refund, attempt)));
                }
                _ => {}
            }
        }
    }

    // --- staff ----------------------------------------------------------

    fn staff(
        &mut self,
        ctx: Ctx<'_>,
        action: Action,
        target: &str,
        note: Option<&str>,
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        let note = note.filter(|n| !n.trim().is_empty());
        match action {
            Action::CancelOrder => {
                if target != ctx.order_id {
                    return Err(Refusal::Invalid);
                }
                self.cancel(ctx, CancelReason::Staff, fx)
            }
            Action::RetryPayment => {
                let index = self.payment_target(ctx, target)?;
                let payment = &mut self.payments[index];
                let (kind, op) = match &mut payment.state {
                    PayState::Capturing(op) => (CommandKind::Capture, op),
                    PayState::Voiding(op) => (CommandKind::Void, op),
                    _ => return Err(Refusal::NotAllowed),
                };
                if op.in_flight() {
                    return Err(Refusal::NotAllowed); // an attempt is out
                }
                let attempt = op.next_attempt(ctx.now, ctx.policy);
                match kind {
                    CommandKind::Capture => payment.capture_attempts = attempt,
                    _ => payment.void_attempts = attempt,
                }
                fx.push(Effect::Command(self.command(ctx, index, kind, attempt)));
                Ok(())
            }
            Action::MarkPaid => {
                let note = note.ok_or(Refusal::Invalid)?;
                let index = self.payment_target(ctx, target)?;
                if self.cancelled {
                    return Err(Refusal::NotAllowed);
                }
                match self.payments[index].state {
                    PayState::OnDelivery | PayState::Capturing(_) | PayState::Declined { .. } => {
                        self.captured(ctx, index, Some(note), fx);
                        Ok(())
                    }
                    _ => Err(Refusal::NotAllowed),
                }
            }
            Action::RetryRefund => {
                let index = self.refund_target(target)?;
                let refund = &mut self.refunds[index];
                let RefundState::Running(op) = &mut refund.state else {
                    return Err(Refusal::NotAllowed);
                };
                if op.in_flight() {
                    return Err(Refusal::NotAllowed);
                }
                let attempt = op.next_attempt(ctx.now, ctx.policy);
                refund.attempts = attempt;
                let refund = &self.refunds[index];
                fx.push(Effect::Command(self.refund_command(refund, attempt)));
                Ok(())
            }
            Action::MarkRefunded => {
                let note = note.ok_or(Refusal::Invalid)?;
                let index = self.refund_target(target)?;
                let refund = &mut self.refunds[index];
                if matches!(refund.state, RefundState::Succeeded { .. }) {
                    return Err(Refusal::NotAllowed);
                }
                refund.state = RefundState::Succeeded {
                    gateway_ref: Some(note.into()),
                };
                fx.push(refund_succeeded(refund, Some(note)));
                Ok(())
            }
        }
    }

    fn payment_target(&self, ctx: Ctx<'_>, target: &str) -> Result<usize, Refusal> {
        (0..self.payments.len())
            .find(|index| payment_ref(ctx.order_id, *index) == target)
            .ok_or(Refusal::Invalid)
    }

    fn refund_target(&self, target: &str) -> Result<usize, Refusal> {
        self.refunds
            .iter()
            .position(|r| r.refund_id == target)
            .ok_or(Refusal::Invalid)
    }

    // --- shipments and returns -----------------------------------------

    fn shipment(&self, ctx: Ctx<'_>, fulfillment: &str) -> Result<usize, Refusal> {
        if self.cancelled {
            return Err(Refusal::OrderNotActive);
        }
        let index = self
            .shipments
            .iter()
            .position(|s| fulfillment_id(ctx.order_id, &s.key) == fulfillment)
            .ok_or(Refusal::UnknownFulfillment)?;
        if self.shipments[index].state == ShipState::Cancelled {
            return Err(Refusal::ShipmentCancelled);
        }
        Ok(index)
    }

    /// After a delivery: once every shipment is delivered, the order is,
    /// and what is paid on delivery is captured.
    fn after_delivery(&mut self, ctx: Ctx<'_>, fx: &mut Fx) {
        if self.delivered
            || self
                .shipments
                .iter()
                .any(|s| s.state != ShipState::Delivered)
        {
            return;
        }
        self.delivered = true;
        fx.push(Effect::Event(Event {
            event_id: format!("{}:delivered", ctx.order_id),
            kind: EventKind::OrderDelivered,
        }));
        for index in 0..self.payments.len() {
            if self.payments[index].state == PayState::OnDelivery {
                self.captured(ctx, index, None, fx);
            }
        }
    }

    /// Units delivered per SKU.
    fn delivered_units(&self) -> BTreeMap<&str, u64> {
        let mut units = BTreeMap::new();
        for line in &self.lines {
            let delivered = self
                .shipments
                .iter()
                .any(|s| s.key == line.ship_to && s.state == ShipState::Delivered);
            if delivered {
                *units.entry(line.sku.as_str()).or_insert(0) += u64::from(line.quantity);
            }
        }
        units
    }

    fn return_requested(
        &mut self,
        ctx: Ctx<'_>,
        return_id: &str,
        lines: &[ReturnLine],
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        if self.cancelled {
            return Err(Refusal::OrderNotActive);
        }
        if return_id.is_empty() || lines.is_empty() || lines.iter().any(|l| l.quantity == 0) {
            return Err(Refusal::Invalid);
        }
        if let Some(known) = self.returns.iter().find(|r| r.return_id == return_id) {
            return if known.lines == lines {
                Ok(()) // a repeat
            } else {
                Err(Refusal::Invalid)
            };
        }
        if self.returns.len() >= MAX_RETURNS_PER_ORDER {
            return Err(Refusal::Invalid);
        }
        let mut left = self.delivered_units();
        for known in &self.returns {
            for line in &known.lines {
                if let Some(units) = left.get_mut(line.sku.as_str()) {
                    *units = units.saturating_sub(u64::from(line.quantity));
                }
            }
        }
        for line in lines {
            let units = left
                .get_mut(line.sku.as_str())
                .ok_or(Refusal::ExceedsDelivered)?;
            *units = units
                .checked_sub(u64::from(line.quantity))
                .ok_or(Refusal::ExceedsDelivered)?;
        }
        self.returns.push(ReturnLife {
            return_id: return_id.into(),
            lines: lines.to_vec(),
            received: false,
        });
        fx.push(Effect::Event(Event {
            event_id: format!("{}/{return_id}:accepted", ctx.order_id),
            kind: EventKind::ReturnAccepted {
                return_id: return_id.into(),
                lines: lines.to_vec(),
            },
        }));
        Ok(())
    }

    fn return_received(
        &mut self,
        ctx: Ctx<'_>,
        return_id: &str,
        lines: &[ReceivedLine],
        fx: &mut Fx,
    ) -> Result<(), Refusal> {
        let index = self
            .returns
            .iter()
            .position(|r| r.return_id == return_id)
            .ok_or(Refusal::UnknownReturn)?;
        if self.returns[index].received {
            return Ok(()); // a repeat: restocked and refunded once
        }
        if lines.is_empty() || lines.iter().any(|l| l.quantity == 0) {
            return Err(Refusal::Invalid);
        }
        let mut left: BTreeMap<&str, u64> = BTreeMap::new();
        for line in &self.returns[index].lines {
            *left.entry(line.sku.as_str()).or_insert(0) += u64::from(line.quantity);
        }
        let mut refund: i64 = 0;
        let mut restocked: BTreeMap<String, u32> = BTreeMap::new();
        for line in lines {
            let units = left
                .get_mut(line.sku.as_str())
                .ok_or(Refusal::ExceedsRequested)?;
            *units = units
                .checked_sub(u64::from(line.quantity))
                .ok_or(Refusal::ExceedsRequested)?;
            let price = self
                .lines
                .iter()
                .find(|l| l.sku == line.sku)
                .map(|l| l.unit_price_minor)
                .ok_or(Refusal::ExceedsRequested)?;
            refund = price
                .checked_mul(i64::from(line.quantity))
                .and_then(|amount| refund.checked_add(amount))
                .ok_or(Refusal::Invalid)?;
            if line.restock {
                let units = restocked.entry(line.sku.clone()).or_insert(0);
                *units = units.checked_add(line.quantity).ok_or(Refusal::Invalid)?;
            }
        }
        self.returns[index].received = true;
        let restocked: Vec<ReturnLine> = restocked
            .into_iter()
            .map(|(sku, quantity)| ReturnLine { sku, quantity })
            .collect();
        if !restocked.is_empty() {
            fx.push(Effect::Restock(restocked.clone()));
        }
        // From the payments in reverse order of listing, each at most what
        // it captured minus what it refunded.
        let mut left_to_refund = refund;
        let mut refunded = 0i64;
        let mut refunds = Vec::new();
        for payment in (0..self.payments.len()).rev() {
            let take = self.payments[payment].refundable().min(left_to_refund);
            if take > 0 {
                refunds.push((payment, take));
                left_to_refund -= take;
                refunded += take;
            }
        }
        fx.push(Effect::Event(Event {
            event_id: format!("{}/{return_id}:received", ctx.order_id),
            kind: EventKind::ReturnReceived {
                return_id: return_id.into(),
                restocked,
                refund_minor: refunded,
            },
        }));
        for (payment, amount) in refunds {
            let refund_id = format!("{}/{return_id}/p{payment}", ctx.order_id);
            self.start_refund(ctx, refund_id, payment, amount, fx);
        }
        Ok(())
    }
}

/// A gateway's answer, borrowed from the input.
struct GatewayResult<'a> {
    attempt: u32,
    outcome: Outcome,
    code: &'a str,
    gateway_ref: Option<&'a str>,
}

/// The event after a payment operation's attempt failed: a retry
/// scheduled, or attention. `prefix` tells a void's events from a
/// capture's (`void-`).
fn payment_failed_event(
    ctx: Ctx<'_>,
    index: usize,
    prefix: &str,
    failed: Failed,
    code: &str,
) -> Effect {
    let payment = payment_ref(ctx.order_id, index);
    let (event_id, kind) = match failed {
        Failed::Retry { attempt, at } => (
            format!("{payment}:{prefix}retry-{attempt}"),
            EventKind::PaymentRetryScheduled {
                payment: index as u32,
                attempt,
                next_attempt_at: at,
                code: code.into(),
            },
        ),
        Failed::Attention { attempts } => (
            format!("{payment}:{prefix}attention-{attempts}"),
            EventKind::PaymentAttention {
                payment: index as u32,
                attempts,
                code: code.into(),
            },
        ),
    };
    Effect::Event(Event { event_id, kind })
}

fn refund_succeeded(refund: &RefundLife, gateway_ref: Option<&str>) -> Effect {
    Effect::Event(Event {
        event_id: format!("{}:succeeded", refund.refund_id),
        kind: EventKind::RefundSucceeded {
            refund_id: refund.refund_id.clone(),
            payment: refund.payment,
            amount_minor: refund.amount_minor,
            gateway_ref: gateway_ref.map(str::to_string),
        },
    })
}

#[cfg(test)]
mod tests;
