//! Order domain: the wire types of the contract, decoding of raw records,
//! validation rules and the output events.
//!
//! Nothing here knows about Kafka: a record is a key and a value as bytes.

pub mod codes;
pub mod decode;
pub mod events;
pub(crate) mod json;
pub mod part2;
pub mod reader;
pub mod validate;

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Why an order was rejected: the closed set of the contract's reasons table.
/// Order matters: validation reports the first reason in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidOrder,
    UnknownCurrency,
    UnknownSku,
    PriceMismatch,
    PaymentMismatch,
    CustomerLimitExceeded,
    OutOfStock,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::InvalidOrder,
        Reason::UnknownCurrency,
        Reason::UnknownSku,
        Reason::PriceMismatch,
        Reason::PaymentMismatch,
        Reason::CustomerLimitExceeded,
        Reason::OutOfStock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidOrder => "invalid_order",
            Reason::UnknownCurrency => "unknown_currency",
            Reason::UnknownSku => "unknown_sku",
            Reason::PriceMismatch => "price_mismatch",
            Reason::PaymentMismatch => "payment_mismatch",
            Reason::CustomerLimitExceeded => "customer_limit_exceeded",
            Reason::OutOfStock => "out_of_stock",
        }
    }
}

/// Most bytes of UTF-8 text in a rejection's `detail` or a dead letter's
/// `error_detail` header. Details quote what the producer sent (a parser's
/// message can repeat a whole field), so without a bound a 60,000-character
/// field came back as a 60 KB status. Longer text is cut on a character
/// boundary and ends with [`CUT_MARK`] and its full length. The bound is on
/// the text; JSON escaping in a status payload can add to it.
pub const MAX_DETAIL_BYTES: usize = 512;
/// What a cut detail ends with, before its original length in bytes.
pub const CUT_MARK: &str = "… [cut, bytes in all: ";

/// `detail` as a status or dead letter carries it: at most
/// [`MAX_DETAIL_BYTES`], cut on a character boundary, saying it was cut.
pub fn bounded_detail(mut detail: String) -> String {
    bound_in_place(&mut detail);
    detail
}

/// [`bounded_detail`] without giving up the buffer (a cut only shortens).
fn bound_in_place(detail: &mut String) {
    use std::fmt::Write;
    if detail.len() <= MAX_DETAIL_BYTES {
        return;
    }
    let total = detail.len();
    let digits = total.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut end = MAX_DETAIL_BYTES - (CUT_MARK.len() + digits + 1);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    detail.truncate(end);
    // Writing into a String cannot fail.
    let _ = write!(detail, "{CUT_MARK}{total}]");
}

/// The detail of a rejection being decided, in a buffer a shard reuses
/// from order to order (a rejection then allocates nothing once the buffer
/// has grown). The rules write it with [`Detail::fail`] and return the
/// reason; the text is bounded as [`bounded_detail`] bounds it.
#[derive(Debug, Default)]
pub struct Detail(String);

impl Detail {
    /// Sets the detail to `text` (bounded) and returns `reason`, for
    /// `return Err(detail.fail(reason, format_args!(…)))`.
    pub fn fail(&mut self, reason: Reason, text: std::fmt::Arguments<'_>) -> Reason {
        use std::fmt::Write;
        self.0.clear();
        // Writing into a String cannot fail.
        let _ = self.0.write_fmt(text);
        bound_in_place(&mut self.0);
        reason
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rejection `reason` with this detail, as an owned value.
    pub fn rejection(&self, reason: Reason) -> Rejection {
        Rejection {
            reason,
            detail: self.0.clone(),
        }
    }
}

/// A rejection: the reason code plus a human-readable detail that names the
/// offending field. The detail never contains customer data beyond the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    /// At most [`MAX_DETAIL_BYTES`] (built with [`Rejection::new`]).
    pub detail: String,
}

impl Rejection {
    /// A rejection whose detail is bounded by [`bounded_detail`].
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: bounded_detail(detail.into()),
        }
    }
}

/// One line of an order as it arrives. Numbers are read as `i64` so that a
/// negative or zero quantity is a validation error with a clear detail, not a
/// decoding failure.
///
/// Text is `Cow<str>` borrowed from the record's bytes: it is copied only
/// where a JSON escape forces it, so decoding an order allocates its
/// vectors, not each of its dozens of strings (see docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    pub quantity: i64,
    pub unit_price_minor: i64,
    #[serde(borrow)]
    pub ship_to: Cow<'a, str>,
}

/// A shipping address. Text is carried unchanged into fulfillment events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub line1: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        deserialize_with = "borrow::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub line2: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub city: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        deserialize_with = "borrow::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub region: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub postal_code: Cow<'a, str>,
    #[serde(borrow)]
    pub country: Cow<'a, str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment<'a> {
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    pub amount_minor: i64,
    #[serde(
        default,
        borrow,
        deserialize_with = "borrow::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub authorization_id: Option<Cow<'a, str>>,
}

/// Address book of an order, keyed by the name lines refer to in `ship_to`.
/// Sorted, so shipments come out in a deterministic order.
pub type Addresses<'a> = BTreeMap<Cow<'a, str>, Address<'a>>;

/// An `order_placed` event after decoding. Required fields of the contract
/// are `Option` here so that a missing field is an `invalid_order` rejection
/// naming the field rather than a dead-lettered record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrderPlaced<'a> {
    pub order_id: Cow<'a, str>,
    pub customer_id: Option<Cow<'a, str>>,
    pub placed_at: Option<Cow<'a, str>>,
    pub currency: Option<Cow<'a, str>>,
    pub lines: Option<Vec<Line<'a>>>,
    pub addresses: Option<Addresses<'a>>,
    pub payments: Option<Vec<Payment<'a>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderCancelled<'a> {
    pub order_id: Cow<'a, str>,
    pub cancelled_at: Option<Cow<'a, str>>,
    pub reason: Option<Cow<'a, str>>,
}

/// Every event of the `orders` topic, borrowing from the record's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent<'a> {
    Placed(OrderPlaced<'a>),
    Cancelled(OrderCancelled<'a>),
}

impl OrderEvent<'_> {
    pub fn order_id(&self) -> &str {
        match self {
            OrderEvent::Placed(p) => &p.order_id,
            OrderEvent::Cancelled(c) => &c.order_id,
        }
    }
}

/// Deserializers that borrow text from the input where serde's own impls
/// for `Option<Cow<str>>` and map keys would always copy it.
pub(crate) mod borrow {
    use super::{Address, Addresses};
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::Deserialize;
    use std::borrow::Cow;
    use std::fmt;

    /// A `Cow<str>` that borrows when the JSON string has no escapes.
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

    pub fn option<'de: 'a, 'a, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Cow<'a, str>>, D::Error> {
        Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|t| t.0))
    }

    pub fn addresses<'de: 'a, 'a, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Addresses<'a>>, D::Error> {
        struct Map<'a>(Addresses<'a>);
        impl<'de: 'a, 'a> Deserialize<'de> for Map<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct MapVisitor<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> Visitor<'de> for MapVisitor<'a> {
                    type Value = Addresses<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a map of addresses")
                    }
                    fn visit_map<M: MapAccess<'de>>(
                        self,
                        mut map: M,
                    ) -> Result<Self::Value, M::Error> {
                        let mut addresses = Addresses::new();
                        while let Some((key, value)) = map.next_entry::<Text<'a>, Address<'a>>()? {
                            addresses.insert(key.0, value);
                        }
                        Ok(addresses)
                    }
                }
                deserializer
                    .deserialize_map(MapVisitor(std::marker::PhantomData))
                    .map(Map)
            }
        }
        Ok(Option::<Map<'a>>::deserialize(deserializer)?.map(|m| m.0))
    }
}

/// Most units of stock a SKU can have, and most units one `stock_adjusted`
/// may add or remove (10^12: a thousand billion, beyond any catalog). Stock
/// stays within ±this after every adjustment; events outside are
/// dead-lettered `invalid_inventory_event`. The bound keeps every sum of
/// stock, units held and quotas far from `i64`'s limits, so none can wrap.
pub const MAX_STOCK_UNITS: i64 = 1_000_000_000_000;
/// Highest catalog price in minor units (10^15: ten trillion euros).
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000_000;

/// Events of the `inventory` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InventoryEvent {
    StockSet {
        sku: String,
        available: i64,
        #[serde(default)]
        prices: BTreeMap<String, i64>,
        #[serde(default)]
        max_per_customer: Option<u32>,
    },
    StockAdjusted {
        sku: String,
        delta: i64,
    },
}

impl InventoryEvent {
    pub fn sku(&self) -> &str {
        match self {
            InventoryEvent::StockSet { sku, .. } | InventoryEvent::StockAdjusted { sku, .. } => sku,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_details_stay_whole() {
        let exact = "x".repeat(MAX_DETAIL_BYTES);
        assert_eq!(bounded_detail(exact.clone()), exact);
        assert_eq!(
            Rejection::new(Reason::OutOfStock, "A: 3 wanted").detail,
            "A: 3 wanted"
        );
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary_and_say_so() {
        // Every cut position, against characters of one to four bytes.
        for unit in ["a", "é", "李", "🏠"] {
            for pad in 0..4 {
                let text = format!("{}{}", "-".repeat(pad), unit.repeat(MAX_DETAIL_BYTES + 1));
                let cut = bounded_detail(text.clone());
                assert!(cut.len() <= MAX_DETAIL_BYTES, "{} bytes", cut.len());
                assert!(cut.len() > MAX_DETAIL_BYTES - 4 - 40, "cut too short");
                let (head, tail) = cut.split_once(CUT_MARK).expect("marked");
                assert!(text.starts_with(head));
                assert_eq!(tail, format!("{}]", text.len()));
            }
        }
    }
}
