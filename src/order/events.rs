//! Output events of the contract: `StatusEvent` and `FulfillmentEvent`.
//!
//! Every `event_id` is a function of the order alone, so a consumer (or a
//! replay after a crash) can drop copies it has already seen.

use super::{validate::ValidOrder, Address, Reason, Rejection};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub event_id: String,
    pub order_id: String,
    pub status: Status,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    pub processed_at: String,
}

impl StatusEvent {
    pub fn new(
        order_id: &str,
        status: Status,
        rejection: Option<&Rejection>,
        now: OffsetDateTime,
    ) -> Self {
        StatusEvent {
            event_id: format!("{order_id}:{}", status.as_str()),
            order_id: order_id.to_string(),
            status,
            reason: rejection.map(|r| r.reason),
            detail: rejection.map(|r| r.detail.clone()),
            processed_at: format_time(now),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentLine {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FulfillmentEvent {
    FulfillmentRequested {
        event_id: String,
        fulfillment_id: String,
        order_id: String,
        address: Address,
        lines: Vec<FulfillmentLine>,
    },
    FulfillmentCancelled {
        event_id: String,
        fulfillment_id: String,
        order_id: String,
    },
}

impl FulfillmentEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            FulfillmentEvent::FulfillmentRequested { .. } => "fulfillment_requested",
            FulfillmentEvent::FulfillmentCancelled { .. } => "fulfillment_cancelled",
        }
    }
}

/// The id of the shipment of `order_id` to the address named `address_key`.
pub fn fulfillment_id(order_id: &str, address_key: &str) -> String {
    format!("{order_id}/{address_key}")
}

/// One `fulfillment_requested` per address that at least one line ships to,
/// in address-name order, with the lines in the order's own order.
pub fn requested(order: &ValidOrder) -> Vec<FulfillmentEvent> {
    order
        .addresses
        .iter()
        .filter_map(|(key, address)| {
            let lines: Vec<FulfillmentLine> = order
                .lines
                .iter()
                .filter(|line| &line.ship_to == key)
                .map(|line| FulfillmentLine {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                })
                .collect();
            if lines.is_empty() {
                return None;
            }
            let fulfillment_id = fulfillment_id(&order.order_id, key);
            Some(FulfillmentEvent::FulfillmentRequested {
                event_id: format!("{fulfillment_id}:requested"),
                fulfillment_id,
                order_id: order.order_id.clone(),
                address: address.clone(),
                lines,
            })
        })
        .collect()
}

/// The shipments of an accepted order named by address key.
pub fn shipment_keys(order: &ValidOrder) -> Vec<String> {
    order
        .addresses
        .keys()
        .filter(|key| order.lines.iter().any(|line| &line.ship_to == *key))
        .cloned()
        .collect()
}

pub fn cancelled(order_id: &str, address_key: &str) -> FulfillmentEvent {
    let fulfillment_id = fulfillment_id(order_id, address_key);
    FulfillmentEvent::FulfillmentCancelled {
        event_id: format!("{fulfillment_id}:cancelled"),
        fulfillment_id,
        order_id: order_id.to_string(),
    }
}

/// RFC 3339 in UTC with milliseconds, as the contract's examples.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::validate::{tests::sample_order, validate, Limits};

    #[test]
    fn one_fulfillment_per_address_with_text_unchanged() {
        let order = validate(sample_order("o-42"), &Limits::default()).unwrap();
        let events = requested(&order);
        assert_eq!(events.len(), 2);
        let json = serde_json::to_string(&events[0]).unwrap();
        assert!(json.contains("Zoë Ørsted 🏠"), "{json}");
        assert!(
            json.contains(r#""event_id":"o-42/home:requested""#),
            "{json}"
        );
        let FulfillmentEvent::FulfillmentRequested { lines, .. } = &events[1] else {
            panic!()
        };
        assert_eq!(
            lines.len(),
            2,
            "office gets SKU-9 and the second SKU-1 line"
        );
    }

    #[test]
    fn status_json_shape() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let s = StatusEvent::new("o-1", Status::Accepted, None, t);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""event_id":"o-1:accepted""#), "{json}");
        assert!(json.contains(r#""reason":null"#), "{json}");
        assert!(s.processed_at.ends_with(".123Z"), "{}", s.processed_at);
    }
}
