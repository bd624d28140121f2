//! Raw record → order event.
//!
//! A record either decodes into an [`OrderEvent`], or is a readable
//! `order_placed` whose fields have the wrong shape (rejected as
//! `invalid_order`), or is not an order event at all and goes to the
//! dead-letter topic with a [`DlqReason`]. Nothing panics and nothing is
//! dropped: every input lands in exactly one of the three.

use super::{
    borrow, Addresses, Line, OrderCancelled, OrderEvent, OrderPlaced, Payment, Reason, Rejection,
};
use serde::Deserialize;
use std::borrow::Cow;

/// Why a record went to the dead-letter topic (the `error` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DlqReason {
    TooLarge,
    NotUtf8,
    NotJson,
    NotAnOrderEvent,
    MissingOrderId,
    KeyMismatch,
    InvalidInventoryEvent,
}

impl DlqReason {
    pub const ALL: [DlqReason; 7] = [
        DlqReason::TooLarge,
        DlqReason::NotUtf8,
        DlqReason::NotJson,
        DlqReason::NotAnOrderEvent,
        DlqReason::MissingOrderId,
        DlqReason::KeyMismatch,
        DlqReason::InvalidInventoryEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::TooLarge => "too_large",
            DlqReason::NotUtf8 => "not_utf8",
            DlqReason::NotJson => "not_json",
            DlqReason::NotAnOrderEvent => "not_an_order_event",
            DlqReason::MissingOrderId => "missing_order_id",
            DlqReason::KeyMismatch => "key_mismatch",
            DlqReason::InvalidInventoryEvent => "invalid_inventory_event",
        }
    }
}

/// A record that is not an order event: reason code plus a detail that says
/// where the problem is (byte offset, line/column, field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DlqReason,
    pub detail: String,
}

impl DeadLetter {
    fn new(reason: DlqReason, detail: impl Into<String>) -> Self {
        DeadLetter {
            reason,
            detail: detail.into(),
        }
    }
}

/// What a raw record decodes to; text borrows from the record's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Event(OrderEvent<'a>),
    /// A readable `order_placed` (its `order_id` is known) whose fields do not
    /// have the contract's types: it gets status `rejected`.
    Invalid {
        order_id: String,
        rejection: Rejection,
    },
    DeadLetter(DeadLetter),
}

/// Every field of both order event types, all optional, so that a single
/// parse reads either type without serde's buffering of tagged enums.
///
/// Public, but not part of the API, only so that `benches/decode.rs` can
/// hand this same type to other JSON decoders.
#[doc(hidden)]
#[derive(Debug, PartialEq, Deserialize)]
pub struct Flat<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "borrow::option")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    order_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    customer_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    placed_at: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow)]
    lines: Option<Vec<Line<'a>>>,
    #[serde(default, borrow, deserialize_with = "borrow::addresses")]
    addresses: Option<Addresses<'a>>,
    #[serde(borrow)]
    payments: Option<Vec<Payment<'a>>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    cancelled_at: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrow::option")]
    reason: Option<Cow<'a, str>>,
}

const PLACED: &str = "order_placed";
const CANCELLED: &str = "order_cancelled";

/// Decodes one record of the `orders` topic. `max_record_bytes` is the
/// configured record size limit; `key` must equal the event's `order_id`.
pub fn decode_order<'a>(
    key: Option<&[u8]>,
    value: Option<&'a [u8]>,
    max_record_bytes: usize,
) -> Decoded<'a> {
    let value = value.unwrap_or_default();
    if value.len() > max_record_bytes {
        return dead(
            DlqReason::TooLarge,
            format!(
                "record is {} bytes, limit is {max_record_bytes}",
                value.len()
            ),
        );
    }
    let text = match std::str::from_utf8(value) {
        Ok(text) => text,
        Err(e) => {
            return dead(
                DlqReason::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        }
    };
    match serde_json::from_str::<Flat>(text) {
        Ok(flat) => from_flat(key, flat),
        Err(error) => classify_unparsable(key, text, &error),
    }
}

fn dead<'a>(reason: DlqReason, detail: impl Into<String>) -> Decoded<'a> {
    Decoded::DeadLetter(DeadLetter::new(reason, detail))
}

fn check_key(key: Option<&[u8]>, order_id: &str) -> Result<(), DeadLetter> {
    match key {
        Some(k) if k == order_id.as_bytes() => Ok(()),
        Some(_) => Err(DeadLetter::new(
            DlqReason::KeyMismatch,
            "record key differs from order_id",
        )),
        None => Err(DeadLetter::new(
            DlqReason::KeyMismatch,
            "record has no key; expected the order_id",
        )),
    }
}

fn from_flat<'a>(key: Option<&[u8]>, flat: Flat<'a>) -> Decoded<'a> {
    let order_id = match flat.order_id {
        Some(id) if !id.is_empty() => id,
        Some(_) => return dead(DlqReason::MissingOrderId, "order_id is empty"),
        None => return dead(DlqReason::MissingOrderId, "field order_id is missing"),
    };
    let kind = flat.kind.unwrap_or_default();
    if kind != PLACED && kind != CANCELLED {
        return dead(DlqReason::NotAnOrderEvent, unknown_type_detail(&kind));
    }
    if let Err(dl) = check_key(key, &order_id) {
        return Decoded::DeadLetter(dl);
    }
    let event = if kind == PLACED {
        OrderEvent::Placed(OrderPlaced {
            order_id,
            customer_id: flat.customer_id,
            placed_at: flat.placed_at,
            currency: flat.currency,
            lines: flat.lines,
            addresses: flat.addresses,
            payments: flat.payments,
        })
    } else {
        OrderEvent::Cancelled(OrderCancelled {
            order_id,
            cancelled_at: flat.cancelled_at,
            reason: flat.reason,
        })
    };
    Decoded::Event(event)
}

fn unknown_type_detail(kind: &str) -> String {
    if kind.is_empty() {
        "field type is missing".to_string()
    } else {
        // The type is attacker-controlled text: bound what we repeat of it.
        let shown: String = kind.chars().take(40).collect();
        format!("type {shown:?} is not {PLACED} or {CANCELLED}")
    }
}

/// The slow path, taken only when the typed parse failed: is this JSON at
/// all, and is it a readable `order_placed` with badly typed fields?
fn classify_unparsable<'a>(
    key: Option<&[u8]>,
    text: &str,
    error: &serde_json::Error,
) -> Decoded<'a> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return dead(DlqReason::NotJson, e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return dead(
            DlqReason::NotAnOrderEvent,
            "value is JSON but not an object",
        );
    };
    let kind = object
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if kind != PLACED && kind != CANCELLED {
        return dead(DlqReason::NotAnOrderEvent, unknown_type_detail(kind));
    }
    let order_id = match object.get("order_id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => id.clone(),
        Some(serde_json::Value::String(_)) => {
            return dead(DlqReason::MissingOrderId, "order_id is empty")
        }
        Some(_) => return dead(DlqReason::MissingOrderId, "order_id is not a string"),
        None => return dead(DlqReason::MissingOrderId, "field order_id is missing"),
    };
    if let Err(dl) = check_key(key, &order_id) {
        return Decoded::DeadLetter(dl);
    }
    if kind == CANCELLED {
        return dead(
            DlqReason::NotAnOrderEvent,
            format!("order_cancelled has badly typed fields: {error}"),
        );
    }
    Decoded::Invalid {
        order_id,
        rejection: Rejection::new(Reason::InvalidOrder, error.to_string()),
    }
}

/// Decodes one record of the `inventory` topic; the key must be the SKU.
pub fn decode_inventory(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    max_record_bytes: usize,
) -> Result<super::InventoryEvent, DeadLetter> {
    let value = value.unwrap_or_default();
    let invalid = |detail: String| DeadLetter::new(DlqReason::InvalidInventoryEvent, detail);
    if value.len() > max_record_bytes {
        return Err(DeadLetter::new(
            DlqReason::TooLarge,
            format!(
                "record is {} bytes, limit is {max_record_bytes}",
                value.len()
            ),
        ));
    }
    let text = std::str::from_utf8(value).map_err(|e| {
        DeadLetter::new(
            DlqReason::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let event: super::InventoryEvent =
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if event.sku().is_empty() {
        return Err(invalid("sku is empty".into()));
    }
    if key.is_some_and(|k| k != event.sku().as_bytes()) {
        return Err(DeadLetter::new(
            DlqReason::KeyMismatch,
            "record key differs from sku",
        ));
    }
    if let super::InventoryEvent::StockSet {
        available, prices, ..
    } = &event
    {
        if *available < 0 {
            return Err(invalid(format!(
                "available is {available}, must be at least 0"
            )));
        }
        if let Some((currency, price)) = prices.iter().find(|(_, p)| **p < 0) {
            return Err(invalid(format!(
                "price in {currency} is {price}, must be at least 0"
            )));
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65_536;

    fn placed(id: &str) -> String {
        format!(
            r#"{{"type":"order_placed","order_id":"{id}","customer_id":"c-1","placed_at":"2026-11-23T12:00:00Z",
            "currency":"EUR","lines":[{{"sku":"S","quantity":1,"unit_price_minor":5,"ship_to":"h"}}],
            "addresses":{{"h":{{"name":"Zoë 🏠","line1":"x","city":"y","postal_code":"1","country":"DE"}}}},
            "payments":[{{"method":"card","amount_minor":5,"authorization_id":"a"}}],"extra_field":[1,2]}}"#
        )
    }

    fn dlq_reason(d: Decoded) -> DlqReason {
        match d {
            Decoded::DeadLetter(dl) => dl.reason,
            other => panic!("expected dead letter, got {other:?}"),
        }
    }

    #[test]
    fn decodes_placed_and_ignores_unknown_fields() {
        let value = placed("o-1");
        let d = decode_order(Some(b"o-1"), Some(value.as_bytes()), MAX);
        let Decoded::Event(OrderEvent::Placed(p)) = d else {
            panic!("{d:?}")
        };
        assert_eq!(p.addresses.unwrap()["h"].name, "Zoë 🏠");
    }

    #[test]
    fn decodes_cancelled() {
        let v = br#"{"type":"order_cancelled","order_id":"o-1","reason":"customer_request"}"#;
        assert!(matches!(
            decode_order(Some(b"o-1"), Some(v), MAX),
            Decoded::Event(OrderEvent::Cancelled(_))
        ));
    }

    #[test]
    fn dead_letters_each_unreadable_kind() {
        assert_eq!(
            dlq_reason(decode_order(
                Some(b"o-1"),
                Some(placed("o-1").as_bytes()),
                10
            )),
            DlqReason::TooLarge
        );
        assert_eq!(
            dlq_reason(decode_order(Some(b"k"), Some(b"\xff\xfe{}"), MAX)),
            DlqReason::NotUtf8
        );
        assert_eq!(
            dlq_reason(decode_order(Some(b"k"), Some(b"{not json"), MAX)),
            DlqReason::NotJson
        );
        assert_eq!(
            dlq_reason(decode_order(Some(b"k"), None, MAX)),
            DlqReason::NotJson
        );
        assert_eq!(
            dlq_reason(decode_order(Some(b"k"), Some(b"[1,2]"), MAX)),
            DlqReason::NotAnOrderEvent
        );
        assert_eq!(
            dlq_reason(decode_order(
                Some(b"k"),
                Some(br#"{"type":"order_shipped","order_id":"k"}"#),
                MAX
            )),
            DlqReason::NotAnOrderEvent
        );
        assert_eq!(
            dlq_reason(decode_order(
                Some(b"k"),
                Some(br#"{"type":"order_placed"}"#),
                MAX
            )),
            DlqReason::MissingOrderId
        );
        assert_eq!(
            dlq_reason(decode_order(
                Some(b"k"),
                Some(br#"{"type":"order_placed","order_id":7}"#),
                MAX
            )),
            DlqReason::MissingOrderId
        );
        assert_eq!(
            dlq_reason(decode_order(
                Some(b"o-2"),
                Some(placed("o-1").as_bytes()),
                MAX
            )),
            DlqReason::KeyMismatch
        );
        assert_eq!(
            dlq_reason(decode_order(None, Some(placed("o-1").as_bytes()), MAX)),
            DlqReason::KeyMismatch
        );
    }

    #[test]
    fn deep_nesting_is_not_json_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            dlq_reason(decode_order(Some(b"k"), Some(deep.as_bytes()), 1 << 20)),
            DlqReason::NotJson
        );
    }

    #[test]
    fn badly_typed_placed_is_invalid_order() {
        let v = br#"{"type":"order_placed","order_id":"o-9","lines":[{"sku":"S","quantity":99999999999999999999}]}"#;
        match decode_order(Some(b"o-9"), Some(v), MAX) {
            Decoded::Invalid {
                order_id,
                rejection,
            } => {
                assert_eq!(order_id, "o-9");
                assert_eq!(rejection.reason, Reason::InvalidOrder);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inventory_events() {
        let ok = decode_inventory(
            Some(b"S"),
            Some(br#"{"type":"stock_set","sku":"S","available":3}"#),
            MAX,
        );
        assert!(ok.is_ok());
        let neg = decode_inventory(
            Some(b"S"),
            Some(br#"{"type":"stock_set","sku":"S","available":-3}"#),
            MAX,
        );
        assert_eq!(neg.unwrap_err().reason, DlqReason::InvalidInventoryEvent);
        let adj = decode_inventory(
            None,
            Some(br#"{"type":"stock_adjusted","sku":"S","delta":-2}"#),
            MAX,
        );
        assert!(adj.is_ok());
    }
}
