//! Raw record → order event.
//!
//! A record either decodes into an [`OrderEvent`], or is a readable
//! `order_placed` whose fields have the wrong shape (rejected as
//! `invalid_order`), or is not an order event at all and goes to the
//! dead-letter topic with a [`DlqReason`]. Nothing panics and nothing is
//! dropped: every input lands in exactly one of the three.

use super::reader::{self, Doc, Head, Scratch};
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
    /// The record's partition is not the one `kafka.orders_partitioner`
    /// gives its key (see `crate::partitioner`).
    WrongPartition,
}

impl DlqReason {
    pub const ALL: [DlqReason; 8] = [
        DlqReason::TooLarge,
        DlqReason::NotUtf8,
        DlqReason::NotJson,
        DlqReason::NotAnOrderEvent,
        DlqReason::MissingOrderId,
        DlqReason::KeyMismatch,
        DlqReason::InvalidInventoryEvent,
        DlqReason::WrongPartition,
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
            DlqReason::WrongPartition => "wrong_partition",
        }
    }
}

/// A record that is not an order event: reason code plus a detail that says
/// where the problem is (byte offset, line/column, field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DlqReason,
    /// At most [`super::MAX_DETAIL_BYTES`] (built with [`DeadLetter::new`]).
    pub detail: String,
}

impl DeadLetter {
    /// A dead letter whose detail is bounded by [`super::bounded_detail`].
    pub fn new(reason: DlqReason, detail: impl Into<String>) -> Self {
        DeadLetter {
            reason,
            detail: super::bounded_detail(detail.into()),
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
    /// A record about an order after its decision (contract Part 2), its
    /// key checked: an input for the order's lifecycle, or an invalid one.
    Part2 {
        order_id: String,
        part2: super::part2::Part2,
    },
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

/// What [`read_order`] made of a record.
#[derive(Debug)]
pub enum Read<'a> {
    /// An `order_placed` with its `order_id` equal to the key, read into
    /// the scratch: `record` is its text, `head` its top-level fields.
    Placed { record: &'a str, head: Head },
    /// An `order_cancelled` with its `order_id` equal to the key.
    Cancelled { order_id: &'a str },
    /// Anything else, decoded by [`decode_order`]: today's outcome for every
    /// record the fast reader declines or does not decide.
    Decoded(Decoded<'a>),
}

/// Reads one record of the `orders` topic as [`decode_order`] decodes it,
/// the common records by the hand-written reader (`reader`) into
/// `scratch`, reused from record to record, the rest by serde_json.
pub fn read_order<'a>(
    key: Option<&[u8]>,
    value: Option<&'a [u8]>,
    max_record_bytes: usize,
    scratch: &mut Scratch,
) -> Read<'a> {
    let bytes = value.unwrap_or_default();
    if bytes.len() <= max_record_bytes {
        if let Some((record, head)) = reader::read(bytes, scratch) {
            let doc = Doc::new(record, &scratch.text);
            let order_id = head.order_id.map(|id| doc.get(id)).unwrap_or_default();
            let keyed = !order_id.is_empty() && key == Some(order_id.as_bytes());
            // The type decides the reader's answer; every other type, and
            // the error cases, are decoded (and described) by serde_json.
            // Types of contract Part 2 are read on that slow path too.
            match head.kind.map(|kind| doc.get(kind)) {
                Some(PLACED) if keyed => return Read::Placed { record, head },
                Some(CANCELLED) if keyed => {
                    // The ID is in the record unless it carried an escape.
                    if let Some(order_id) = record_text(record, &head) {
                        return Read::Cancelled { order_id };
                    }
                }
                _ => {}
            }
        }
    }
    Read::Decoded(decode_order(key, value, max_record_bytes))
}

/// The order ID as text of the record itself, if it is there (not
/// unescaped into the scratch).
fn record_text<'a>(record: &'a str, head: &Head) -> Option<&'a str> {
    head.order_id.and_then(|id| id.in_record_of(record))
}

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
        Ok(flat) => from_flat(key, flat, text),
        Err(error) => classify_unparsable(key, text, &error),
    }
}

/// A Part 2 record (its `type` is one of `part2::TYPES`), decoded on
/// serde_json's slow path; `None` for any other type.
fn part2<'a>(key: Option<&[u8]>, order_id: &str, kind: &str, text: &str) -> Option<Decoded<'a>> {
    let kind = *super::part2::TYPES.iter().find(|t| **t == kind)?;
    Some(match check_key(key, order_id) {
        Err(dl) => Decoded::DeadLetter(dl),
        Ok(()) => Decoded::Part2 {
            order_id: order_id.to_string(),
            part2: super::part2::decode(text, kind),
        },
    })
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

fn from_flat<'a>(key: Option<&[u8]>, flat: Flat<'a>, text: &str) -> Decoded<'a> {
    let order_id = match flat.order_id {
        Some(id) if !id.is_empty() => id,
        Some(_) => return dead(DlqReason::MissingOrderId, "order_id is empty"),
        None => return dead(DlqReason::MissingOrderId, "field order_id is missing"),
    };
    let kind = flat.kind.unwrap_or_default();
    if let Some(part2) = part2(key, &order_id, &kind, text) {
        return part2;
    }
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
    if kind != PLACED && kind != CANCELLED && !super::part2::is_part2(kind) {
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
    if let Some(part2) = part2(key, &order_id, kind, text) {
        return part2;
    }
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
    use super::{InventoryEvent, MAX_PRICE_MINOR, MAX_STOCK_UNITS};
    match &event {
        InventoryEvent::StockSet {
            available, prices, ..
        } => {
            if !(0..=MAX_STOCK_UNITS).contains(available) {
                return Err(invalid(format!(
                    "available is {available}, must be 0 to {MAX_STOCK_UNITS}"
                )));
            }
            let out_of_range = |price: &i64| !(0..=MAX_PRICE_MINOR).contains(price);
            if let Some((currency, price)) = prices.iter().find(|(_, p)| out_of_range(p)) {
                return Err(invalid(format!(
                    "price in {currency} is {price}, must be 0 to {MAX_PRICE_MINOR}"
                )));
            }
        }
        InventoryEvent::StockAdjusted { delta, .. } => {
            if !(-MAX_STOCK_UNITS..=MAX_STOCK_UNITS).contains(delta) {
                return Err(invalid(format!(
                    "delta is {delta}, must be -{MAX_STOCK_UNITS} to {MAX_STOCK_UNITS}"
                )));
            }
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

    /// A field of 60,000 characters, which the parser's message repeats.
    fn huge() -> String {
        "9".repeat(60_000)
    }

    fn assert_bounded(detail: &str) {
        assert!(
            detail.len() <= crate::order::MAX_DETAIL_BYTES,
            "detail is {} bytes",
            detail.len()
        );
        assert!(detail.contains(crate::order::CUT_MARK), "{detail}");
    }

    #[test]
    fn details_of_huge_fields_are_bounded() {
        let placed = format!(
            r#"{{"type":"order_placed","order_id":"o-1","lines":[{{"sku":"S","quantity":"{}"}}]}}"#,
            huge()
        );
        match decode_order(Some(b"o-1"), Some(placed.as_bytes()), MAX * 2) {
            Decoded::Invalid { rejection, .. } => {
                assert!(rejection.detail.starts_with("invalid type: string"));
                assert_bounded(&rejection.detail)
            }
            other => panic!("{other:?}"),
        }
        let cancelled = format!(
            r#"{{"type":"order_cancelled","order_id":"o-1","lines":"{}"}}"#,
            huge()
        );
        match decode_order(Some(b"o-1"), Some(cancelled.as_bytes()), MAX * 2) {
            Decoded::DeadLetter(dead) => assert_bounded(&dead.detail),
            other => panic!("{other:?}"),
        }
        let stock = format!(
            r#"{{"type":"stock_set","sku":"S","available":"{}"}}"#,
            huge()
        );
        let dead = decode_inventory(Some(b"S"), Some(stock.as_bytes()), MAX * 2).unwrap_err();
        assert_eq!(dead.reason, DlqReason::InvalidInventoryEvent);
        assert_bounded(&dead.detail);
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

    #[test]
    fn inventory_values_out_of_range_are_dead_lettered() {
        use crate::order::{MAX_PRICE_MINOR, MAX_STOCK_UNITS};
        let decode = |json: String| decode_inventory(Some(b"S"), Some(json.as_bytes()), MAX);
        let set = |available: i64, price: i64| {
            decode(format!(
                r#"{{"type":"stock_set","sku":"S","available":{available},"prices":{{"EUR":{price}}}}}"#
            ))
        };
        let adjust = |delta: i64| {
            decode(format!(
                r#"{{"type":"stock_adjusted","sku":"S","delta":{delta}}}"#
            ))
        };
        assert!(set(MAX_STOCK_UNITS, MAX_PRICE_MINOR).is_ok());
        assert!(adjust(-MAX_STOCK_UNITS).is_ok() && adjust(MAX_STOCK_UNITS).is_ok());
        for refused in [
            set(MAX_STOCK_UNITS + 1, 1),
            set(-1, 1),
            set(1, MAX_PRICE_MINOR + 1),
            set(1, -1),
            adjust(i64::MIN),
            adjust(i64::MAX),
            adjust(-MAX_STOCK_UNITS - 1),
            adjust(MAX_STOCK_UNITS + 1),
        ] {
            let dead = refused.unwrap_err();
            assert_eq!(dead.reason, DlqReason::InvalidInventoryEvent, "{dead:?}");
            assert!(dead.detail.contains("must be"), "{dead:?}");
        }
        assert_eq!(
            adjust(i64::MIN).unwrap_err().detail,
            "delta is -9223372036854775808, must be -1000000000000 to 1000000000000"
        );
    }
}
