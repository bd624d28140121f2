//! Records about an order after its decision (contract Part 2): shipments,
//! returns, payment results and staff actions, decoded into the
//! lifecycle's inputs.
//!
//! These are rare next to placements, so they take serde_json's slow path,
//! after the fast decoder saw a `type` it does not decode itself. A record
//! of one of these types whose fields are missing or out of range is not
//! dead-lettered: it is readable and names its order, so it gets an
//! `input_rejected` event with reason `invalid` (and the detail in the
//! processor's counters, never in a log line with its text).

use crate::lifecycle::{Action, Input, Outcome, ReceivedLine, ReturnLine};
use serde::Deserialize;

/// The `type`s decoded here.
pub const TYPES: [&str; 6] = [
    "shipment_shipped",
    "shipment_delivered",
    "return_requested",
    "return_received",
    "payment_result",
    "staff_action",
];

/// Longest text of an ID, carrier, tracking number, code, actor or note
/// (in characters), as the contract's limit on text fields.
pub const MAX_TEXT_CHARS: usize = 256;
/// Most lines in a return.
pub const MAX_RETURN_LINES: usize = 100;
/// Most units of one return line.
pub const MAX_RETURN_QUANTITY: u64 = 1_000_000;

/// A Part 2 record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part2 {
    Input(Input),
    /// Readable, with the order's ID, but not a valid input: the input's
    /// `type`, its ID if it had a readable one, and what is wrong.
    Invalid {
        input: &'static str,
        input_id: Option<String>,
        detail: String,
    },
}

/// Whether `kind` is a Part 2 type.
pub fn is_part2(kind: &str) -> bool {
    TYPES.contains(&kind)
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    fulfillment_id: Option<String>,
    carrier: Option<String>,
    tracking_number: Option<String>,
    return_id: Option<String>,
    lines: Option<Vec<WireLine>>,
    command_id: Option<String>,
    attempt: Option<u64>,
    outcome: Option<String>,
    code: Option<String>,
    gateway_ref: Option<String>,
    action_id: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    note: Option<String>,
}

#[derive(Deserialize)]
struct WireLine {
    sku: Option<String>,
    quantity: Option<u64>,
    restock: Option<bool>,
}

/// Decodes the Part 2 record `text` (already known to be UTF-8 JSON whose
/// `type` is `kind`, one of [`TYPES`], and whose `order_id` is its key).
/// Fields of the wrong JSON types, missing or out of range make it
/// [`Part2::Invalid`].
pub fn decode(text: &str, kind: &'static str) -> Part2 {
    let wire: Wire = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(error) => {
            return Part2::Invalid {
                input: kind,
                input_id: None,
                detail: crate::order::bounded_detail(error.to_string()),
            }
        }
    };
    debug_assert_eq!(wire.kind, kind);
    let input_id = match kind {
        "shipment_shipped" | "shipment_delivered" => wire.fulfillment_id.clone(),
        "return_requested" | "return_received" => wire.return_id.clone(),
        "payment_result" => wire.command_id.clone(),
        _ => wire.action_id.clone(),
    }
    .filter(|id| id.chars().count() <= MAX_TEXT_CHARS);
    match input(wire, kind) {
        Ok(input) => Part2::Input(input),
        Err(detail) => Part2::Invalid {
            input: kind,
            input_id,
            detail,
        },
    }
}

fn text(field: Option<String>, name: &str) -> Result<String, String> {
    let text = field.ok_or_else(|| format!("field {name} is missing"))?;
    if text.is_empty() {
        return Err(format!("field {name} is empty"));
    }
    bounded(text, name)
}

fn bounded(text: String, name: &str) -> Result<String, String> {
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "field {name} has {chars} characters, limit is {MAX_TEXT_CHARS}"
        ));
    }
    Ok(text)
}

fn optional(field: Option<String>, name: &str) -> Result<Option<String>, String> {
    field.map(|t| bounded(t, name)).transpose()
}

fn quantity(line: &WireLine, i: usize) -> Result<u32, String> {
    match line.quantity {
        None => Err(format!("field lines[{i}].quantity is missing")),
        Some(q) if q == 0 || q > MAX_RETURN_QUANTITY => Err(format!(
            "lines[{i}].quantity is {q}, must be 1 to {MAX_RETURN_QUANTITY}"
        )),
        // Within MAX_RETURN_QUANTITY, so it fits.
        Some(q) => Ok(q as u32),
    }
}

fn lines(lines: Option<Vec<WireLine>>) -> Result<Vec<WireLine>, String> {
    let lines = lines.ok_or("field lines is missing")?;
    if lines.is_empty() || lines.len() > MAX_RETURN_LINES {
        return Err(format!(
            "lines has {} entries, must be 1 to {MAX_RETURN_LINES}",
            lines.len()
        ));
    }
    Ok(lines)
}

fn input(wire: Wire, kind: &str) -> Result<Input, String> {
    Ok(match kind {
        "shipment_shipped" => Input::Shipped {
            fulfillment_id: text(wire.fulfillment_id, "fulfillment_id")?,
            carrier: optional(wire.carrier, "carrier")?,
            tracking_number: optional(wire.tracking_number, "tracking_number")?,
        },
        "shipment_delivered" => Input::Delivered {
            fulfillment_id: text(wire.fulfillment_id, "fulfillment_id")?,
        },
        "return_requested" => {
            let return_id = text(wire.return_id, "return_id")?;
            let lines = lines(wire.lines)?
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    Ok(ReturnLine {
                        sku: text(line.sku.clone(), &format!("lines[{i}].sku"))?,
                        quantity: quantity(line, i)?,
                    })
                })
                .collect::<Result<_, String>>()?;
            Input::ReturnRequested { return_id, lines }
        }
        "return_received" => {
            let return_id = text(wire.return_id, "return_id")?;
            let lines = lines(wire.lines)?
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    Ok(ReceivedLine {
                        sku: text(line.sku.clone(), &format!("lines[{i}].sku"))?,
                        quantity: quantity(line, i)?,
                        restock: line.restock.unwrap_or(false),
                    })
                })
                .collect::<Result<_, String>>()?;
            Input::ReturnReceived { return_id, lines }
        }
        "payment_result" => {
            let attempt = match wire.attempt {
                Some(a) if a >= 1 && a <= u64::from(u32::MAX) => a as u32,
                Some(a) => return Err(format!("attempt is {a}, must be at least 1")),
                None => return Err("field attempt is missing".into()),
            };
            let outcome = match text(wire.outcome, "outcome")?.as_str() {
                "succeeded" => Outcome::Succeeded,
                "declined" => Outcome::Declined,
                "failed" => Outcome::Failed,
                other => {
                    return Err(format!(
                        "outcome {other:?} is not succeeded, declined or failed"
                    ))
                }
            };
            Input::PaymentResult {
                command_id: text(wire.command_id, "command_id")?,
                attempt,
                outcome,
                code: optional(wire.code, "code")?.unwrap_or_else(|| outcome.as_str().into()),
                gateway_ref: optional(wire.gateway_ref, "gateway_ref")?,
            }
        }
        _ => {
            let action = match text(wire.action, "action")?.as_str() {
                "retry_payment" => Action::RetryPayment,
                "mark_paid" => Action::MarkPaid,
                "cancel_order" => Action::CancelOrder,
                "retry_refund" => Action::RetryRefund,
                "mark_refunded" => Action::MarkRefunded,
                other => return Err(format!("action {other:?} is not a staff action")),
            };
            Input::Staff {
                action_id: text(wire.action_id, "action_id")?,
                actor: text(wire.actor, "actor")?,
                action,
                target: text(wire.target, "target")?,
                note: optional(wire.note, "note")?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(json: &str) -> Part2 {
        let kind: serde_json::Value = serde_json::from_str(json).unwrap();
        let kind = TYPES
            .iter()
            .find(|t| **t == kind["type"].as_str().unwrap())
            .unwrap();
        decode(json, kind)
    }

    #[test]
    fn the_contracts_examples_decode() {
        let cases = [
            r#"{"type": "shipment_shipped", "order_id": "o-42", "fulfillment_id": "o-42/home",
                "carrier": "DHL", "tracking_number": "JD014600006281", "shipped_at": "2026-11-24T09:00:00Z"}"#,
            r#"{"type": "shipment_delivered", "order_id": "o-42", "fulfillment_id": "o-42/home",
                "delivered_at": "2026-11-25T14:10:00Z"}"#,
            r#"{"type": "return_requested", "order_id": "o-42", "return_id": "r-1", "reason": "damaged",
                "requested_at": "2026-11-27T08:00:00Z", "lines": [{"sku": "SKU-1", "quantity": 1}]}"#,
            r#"{"type": "return_received", "order_id": "o-42", "return_id": "r-1",
                "received_at": "2026-11-29T10:00:00Z", "lines": [{"sku": "SKU-1", "quantity": 1, "restock": true}]}"#,
            r#"{"type": "payment_result", "order_id": "o-42", "command_id": "o-42/p0:capture", "attempt": 2,
                "outcome": "succeeded", "code": "ok", "gateway_ref": "ch_3Nx"}"#,
            r#"{"type": "staff_action", "order_id": "o-42", "action_id": "act-7", "actor": "maria",
                "action": "retry_payment", "target": "o-42/p0", "note": "customer updated card"}"#,
        ];
        let inputs: Vec<Input> = cases
            .iter()
            .map(|c| match decoded(c) {
                Part2::Input(input) => input,
                other => panic!("{c}: {other:?}"),
            })
            .collect();
        assert_eq!(
            inputs[3],
            Input::ReturnReceived {
                return_id: "r-1".into(),
                lines: vec![ReceivedLine {
                    sku: "SKU-1".into(),
                    quantity: 1,
                    restock: true
                }]
            }
        );
        assert_eq!(
            inputs[4],
            Input::PaymentResult {
                command_id: "o-42/p0:capture".into(),
                attempt: 2,
                outcome: Outcome::Succeeded,
                code: "ok".into(),
                gateway_ref: Some("ch_3Nx".into())
            }
        );
    }

    #[test]
    fn bad_fields_are_invalid_with_the_input_and_its_id() {
        let cases = [
            (
                r#"{"type": "payment_result", "order_id": "o", "command_id": "c", "attempt": 0, "outcome": "succeeded"}"#,
                "attempt is 0",
            ),
            (
                r#"{"type": "payment_result", "order_id": "o", "command_id": "c", "attempt": 1, "outcome": "maybe"}"#,
                "outcome \"maybe\"",
            ),
            (
                r#"{"type": "staff_action", "order_id": "o", "action_id": "c", "actor": "a", "action": "refund_all", "target": "t"}"#,
                "not a staff action",
            ),
            (
                r#"{"type": "return_requested", "order_id": "o", "return_id": "c", "lines": []}"#,
                "lines has 0 entries",
            ),
            (
                r#"{"type": "return_requested", "order_id": "o", "return_id": "c", "lines": [{"sku": "A", "quantity": 0}]}"#,
                "lines[0].quantity is 0",
            ),
            (
                r#"{"type": "shipment_shipped", "order_id": "o", "fulfillment_id": "c", "carrier": 7}"#,
                "invalid type",
            ),
        ];
        for (json, wanted) in cases {
            match decoded(json) {
                Part2::Invalid {
                    detail, input_id, ..
                } => {
                    assert!(detail.contains(wanted), "{json}: {detail}");
                    if !wanted.contains("invalid type") {
                        assert_eq!(input_id.as_deref(), Some("c"));
                    }
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        let long = format!(
            r#"{{"type": "shipment_delivered", "order_id": "o", "fulfillment_id": "{}"}}"#,
            "x".repeat(MAX_TEXT_CHARS + 1)
        );
        let Part2::Invalid {
            input_id, detail, ..
        } = decoded(&long)
        else {
            panic!("an over-long ID is invalid")
        };
        assert_eq!(input_id, None, "an over-long ID is not echoed");
        assert!(detail.len() < 200, "{detail}");
    }
}
