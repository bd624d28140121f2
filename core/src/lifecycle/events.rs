//! What the lifecycle emits, as data: facts for `order-events` and commands
//! for `payment-requests`, each with the contract's JSON.
//!
//! Every event and command has a deterministic ID built from the order, the
//! entity and the step, so a reader (or a gateway) can drop any copy it has
//! seen, and a replay after a crash produces the same IDs.

use super::Millis;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// One fact about an order after its decision (topic `order-events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub kind: EventKind,
}

/// A line of a return: SKU and units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: u32,
}

/// The types of the contract's `LifecycleEvent`, with their own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    PaymentCaptured {
        payment: u32,
        amount_minor: i64,
        currency: String,
        gateway_ref: Option<String>,
    },
    PaymentRetryScheduled {
        payment: u32,
        /// The attempt that will be sent.
        attempt: u32,
        next_attempt_at: Millis,
        code: String,
    },
    PaymentAttention {
        payment: u32,
        attempts: u32,
        code: String,
    },
    PaymentDeclined {
        payment: u32,
        code: String,
    },
    PaymentVoided {
        payment: u32,
    },
    OrderPaid {
        amount_minor: i64,
        currency: String,
    },
    ShipmentShipped {
        fulfillment_id: String,
        carrier: Option<String>,
        tracking_number: Option<String>,
    },
    ShipmentDelivered {
        fulfillment_id: String,
    },
    OrderDelivered,
    ReturnAccepted {
        return_id: String,
        lines: Vec<ReturnLine>,
    },
    ReturnReceived {
        return_id: String,
        restocked: Vec<ReturnLine>,
        refund_minor: i64,
    },
    RefundSucceeded {
        refund_id: String,
        payment: u32,
        amount_minor: i64,
        gateway_ref: Option<String>,
    },
    RefundAttention {
        refund_id: String,
        payment: u32,
        amount_minor: i64,
        code: String,
    },
    StaffActionApplied {
        action_id: String,
        actor: String,
        action: String,
        target: String,
    },
    InputRejected {
        /// The input's `type`.
        input: String,
        /// Its fulfillment, return, action or command ID, if it had one.
        input_id: Option<String>,
        reason: super::Refusal,
    },
}

impl EventKind {
    /// The contract's `type` of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::PaymentCaptured { .. } => "payment_captured",
            EventKind::PaymentRetryScheduled { .. } => "payment_retry_scheduled",
            EventKind::PaymentAttention { .. } => "payment_attention",
            EventKind::PaymentDeclined { .. } => "payment_declined",
            EventKind::PaymentVoided { .. } => "payment_voided",
            EventKind::OrderPaid { .. } => "order_paid",
            EventKind::ShipmentShipped { .. } => "shipment_shipped",
            EventKind::ShipmentDelivered { .. } => "shipment_delivered",
            EventKind::OrderDelivered => "order_delivered",
            EventKind::ReturnAccepted { .. } => "return_accepted",
            EventKind::ReturnReceived { .. } => "return_received",
            EventKind::RefundSucceeded { .. } => "refund_succeeded",
            EventKind::RefundAttention { .. } => "refund_attention",
            EventKind::StaffActionApplied { .. } => "staff_action_applied",
            EventKind::InputRejected { .. } => "input_rejected",
        }
    }

    /// Every event type, for metrics labels and docs.
    pub const TYPES: [&'static str; 15] = [
        "payment_captured",
        "payment_retry_scheduled",
        "payment_attention",
        "payment_declined",
        "payment_voided",
        "order_paid",
        "shipment_shipped",
        "shipment_delivered",
        "order_delivered",
        "return_accepted",
        "return_received",
        "refund_succeeded",
        "refund_attention",
        "staff_action_applied",
        "input_rejected",
    ];
}

impl Event {
    /// The contract's JSON for this event of `order_id`, stamped `at`.
    pub fn to_json(&self, order_id: &str, at: Millis) -> Vec<u8> {
        serde_json::to_vec(&EventJson {
            event: self,
            order_id,
            at,
        })
        .expect("lifecycle events always serialize")
    }
}

struct EventJson<'a> {
    event: &'a Event,
    order_id: &'a str,
    at: Millis,
}

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event_id", &self.event.event_id)?;
        map.serialize_entry("order_id", self.order_id)?;
        map.serialize_entry("type", self.event.kind.type_name())?;
        map.serialize_entry("at", &self.at.rfc3339())?;
        match &self.event.kind {
            EventKind::PaymentCaptured {
                payment,
                amount_minor,
                currency,
                gateway_ref,
            } => {
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("amount_minor", amount_minor)?;
                map.serialize_entry("currency", currency)?;
                map.serialize_entry("gateway_ref", gateway_ref)?;
            }
            EventKind::PaymentRetryScheduled {
                payment,
                attempt,
                next_attempt_at,
                code,
            } => {
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("next_attempt_at", &next_attempt_at.rfc3339())?;
                map.serialize_entry("code", code)?;
            }
            EventKind::PaymentAttention {
                payment,
                attempts,
                code,
            } => {
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("attempts", attempts)?;
                map.serialize_entry("code", code)?;
            }
            EventKind::PaymentDeclined { payment, code } => {
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("code", code)?;
            }
            EventKind::PaymentVoided { payment } => map.serialize_entry("payment", payment)?,
            EventKind::OrderPaid {
                amount_minor,
                currency,
            } => {
                map.serialize_entry("amount_minor", amount_minor)?;
                map.serialize_entry("currency", currency)?;
            }
            EventKind::ShipmentShipped {
                fulfillment_id,
                carrier,
                tracking_number,
            } => {
                map.serialize_entry("fulfillment_id", fulfillment_id)?;
                map.serialize_entry("carrier", carrier)?;
                map.serialize_entry("tracking_number", tracking_number)?;
            }
            EventKind::ShipmentDelivered { fulfillment_id } => {
                map.serialize_entry("fulfillment_id", fulfillment_id)?
            }
            EventKind::OrderDelivered => {}
            EventKind::ReturnAccepted { return_id, lines } => {
                map.serialize_entry("return_id", return_id)?;
                map.serialize_entry("lines", lines)?;
            }
            EventKind::ReturnReceived {
                return_id,
                restocked,
                refund_minor,
            } => {
                map.serialize_entry("return_id", return_id)?;
                map.serialize_entry("restocked", restocked)?;
                map.serialize_entry("refund_minor", refund_minor)?;
            }
            EventKind::RefundSucceeded {
                refund_id,
                payment,
                amount_minor,
                gateway_ref,
            } => {
                map.serialize_entry("refund_id", refund_id)?;
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("amount_minor", amount_minor)?;
                map.serialize_entry("gateway_ref", gateway_ref)?;
            }
            EventKind::RefundAttention {
                refund_id,
                payment,
                amount_minor,
                code,
            } => {
                map.serialize_entry("refund_id", refund_id)?;
                map.serialize_entry("payment", payment)?;
                map.serialize_entry("amount_minor", amount_minor)?;
                map.serialize_entry("code", code)?;
            }
            EventKind::StaffActionApplied {
                action_id,
                actor,
                action,
                target,
            } => {
                map.serialize_entry("action_id", action_id)?;
                map.serialize_entry("actor", actor)?;
                map.serialize_entry("action", action)?;
                map.serialize_entry("target", target)?;
            }
            EventKind::InputRejected {
                input,
                input_id,
                reason,
            } => {
                map.serialize_entry("input", input)?;
                map.serialize_entry("input_id", input_id)?;
                map.serialize_entry("reason", reason.as_str())?;
            }
        }
        map.end()
    }
}

/// The kind of a gateway command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Capture,
    Void,
    Refund,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Capture => "capture",
            CommandKind::Void => "void",
            CommandKind::Refund => "refund",
        }
    }
}

/// One attempt of a command for the payment adapter (`payment-requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub kind: CommandKind,
    /// The same for every attempt of one operation: gateways deduplicate
    /// by it.
    pub command_id: String,
    pub attempt: u32,
    pub payment: u32,
    pub method: String,
    pub authorization_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    /// Refunds only.
    pub refund_id: Option<String>,
}

impl Command {
    /// The contract's `PaymentCommand` JSON, requested `at`: written
    /// straight into the buffer (`order::json`), byte for byte what serde
    /// writes for [`Command::to_json_serde`] (a property test checks), at a
    /// fraction of its cost on every accepted order's capture.
    pub fn to_json(&self, order_id: &str, at: Millis) -> Vec<u8> {
        use crate::order::json::{push_i64, push_str};
        let mut out =
            Vec::with_capacity(200 + self.command_id.len() + order_id.len() + self.method.len());
        out.extend_from_slice(b"{\"type\":");
        push_str(&mut out, &[self.kind.as_str()]);
        out.extend_from_slice(b",\"command_id\":");
        push_str(&mut out, &[&self.command_id]);
        out.extend_from_slice(b",\"attempt\":");
        push_i64(&mut out, i64::from(self.attempt));
        out.extend_from_slice(b",\"order_id\":");
        push_str(&mut out, &[order_id]);
        out.extend_from_slice(b",\"payment\":");
        push_i64(&mut out, i64::from(self.payment));
        out.extend_from_slice(b",\"method\":");
        push_str(&mut out, &[&self.method]);
        out.extend_from_slice(b",\"authorization_id\":");
        match &self.authorization_id {
            Some(id) => push_str(&mut out, &[id]),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"amount_minor\":");
        push_i64(&mut out, self.amount_minor);
        out.extend_from_slice(b",\"currency\":");
        push_str(&mut out, &[&self.currency]);
        if let Some(refund_id) = &self.refund_id {
            out.extend_from_slice(b",\"refund_id\":");
            push_str(&mut out, &[refund_id]);
        }
        out.extend_from_slice(b",\"requested_at\":");
        at.with_rfc3339(|text| push_str(&mut out, &[text]));
        out.push(b'}');
        out
    }

    /// The same JSON through serde: the oracle of [`Command::to_json`].
    #[cfg(test)]
    pub(crate) fn to_json_serde(&self, order_id: &str, at: Millis) -> Vec<u8> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            command_id: &'a str,
            attempt: u32,
            order_id: &'a str,
            payment: u32,
            method: &'a str,
            authorization_id: Option<&'a str>,
            amount_minor: i64,
            currency: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            refund_id: Option<&'a str>,
            requested_at: String,
        }
        serde_json::to_vec(&Json {
            kind: self.kind.as_str(),
            command_id: &self.command_id,
            attempt: self.attempt,
            order_id,
            payment: self.payment,
            method: &self.method,
            authorization_id: self.authorization_id.as_deref(),
            amount_minor: self.amount_minor,
            currency: &self.currency,
            refund_id: self.refund_id.as_deref(),
            requested_at: at.rfc3339(),
        })
        .expect("commands always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::json::tests::TEXT;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = CommandKind> {
        prop_oneof![
            Just(CommandKind::Capture),
            Just(CommandKind::Void),
            Just(CommandKind::Refund)
        ]
    }

    #[test]
    fn a_stamp_is_the_instant_it_is_asked_for_even_right_after_another() {
        // Repeated, alternating, and across the epoch and a leap day.
        let instants = [
            0,
            0,
            1,
            0,
            951_782_400_123,
            951_782_400_124,
            951_782_400_123,
            -1,
            -1,
        ];
        for ms in instants {
            let direct = crate::order::events::format_time(
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap(),
            );
            assert_eq!(Millis(ms).rfc3339(), direct, "{ms}");
        }
        assert_eq!(
            Millis(951_782_400_123).rfc3339(),
            "2000-02-29T00:00:00.123Z"
        );
    }

    proptest! {
        #[test]
        fn a_command_is_written_byte_for_byte_as_serde_writes_it(
            kind in kind(),
            command_id in TEXT,
            attempt in any::<u32>(),
            payment in any::<u32>(),
            method in TEXT,
            authorization_id in proptest::option::of(TEXT),
            amount_minor in any::<i64>(),
            currency in TEXT,
            refund_id in proptest::option::of(TEXT),
            order_id in TEXT,
            at in -62_135_596_800_000i64..253_402_300_799_000,
        ) {
            let command = Command {
                kind, command_id, attempt, payment, method, authorization_id,
                amount_minor, currency, refund_id,
            };
            let at = Millis(at);
            let ours = String::from_utf8(command.to_json(&order_id, at)).unwrap();
            let serde = String::from_utf8(command.to_json_serde(&order_id, at)).unwrap();
            prop_assert_eq!(ours, serde);
        }
    }
}
