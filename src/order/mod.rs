//! Order domain: the wire types of the contract, decoding of raw records,
//! validation rules and the output events.
//!
//! Nothing here knows about Kafka: a record is a key and a value as bytes.

pub mod codes;
pub mod decode;
pub mod events;
pub mod validate;

use serde::{Deserialize, Serialize};
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

/// A rejection: the reason code plus a human-readable detail that names the
/// offending field. The detail never contains customer data beyond the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// One line of an order as it arrives. Numbers are read as `i64` so that a
/// negative or zero quantity is a validation error with a clear detail, not a
/// decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub ship_to: String,
}

/// A shipping address. Text is carried unchanged into fulfillment events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub name: String,
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub method: String,
    pub amount_minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
}

/// An `order_placed` event after decoding. Required fields of the contract
/// are `Option` here so that a missing field is an `invalid_order` rejection
/// naming the field rather than a dead-lettered record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub customer_id: Option<String>,
    pub placed_at: Option<String>,
    pub currency: Option<String>,
    pub lines: Option<Vec<Line>>,
    /// Keyed by the name lines refer to in `ship_to`. Sorted, so shipments
    /// come out in a deterministic order.
    pub addresses: Option<BTreeMap<String, Address>>,
    pub payments: Option<Vec<Payment>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: String,
    #[serde(default)]
    pub cancelled_at: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Every event of the `orders` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Placed(OrderPlaced),
    Cancelled(OrderCancelled),
}

impl OrderEvent {
    pub fn order_id(&self) -> &str {
        match self {
            OrderEvent::Placed(p) => &p.order_id,
            OrderEvent::Cancelled(c) => &c.order_id,
        }
    }
}

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
