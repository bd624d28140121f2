//! Output events of the contract: `StatusEvent` and `FulfillmentEvent`.
//!
//! Every `event_id` is a function of the order alone, so a consumer (or a
//! replay after a crash) can drop copies it has already seen.

use super::{validate::ValidOrder, Address, Reason, Rejection};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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
pub enum FulfillmentEvent<'a> {
    FulfillmentRequested {
        event_id: String,
        fulfillment_id: String,
        order_id: String,
        #[serde(borrow)]
        address: Address<'a>,
        lines: Vec<FulfillmentLine>,
    },
    FulfillmentCancelled {
        event_id: String,
        fulfillment_id: String,
        order_id: String,
    },
}

impl FulfillmentEvent<'_> {
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
pub fn requested<'a>(order: &ValidOrder<'a>) -> Vec<FulfillmentEvent<'a>> {
    order
        .addresses
        .iter()
        .filter_map(|(key, address)| {
            let lines: Vec<FulfillmentLine> = order
                .lines
                .iter()
                .filter(|line| &line.ship_to == key)
                .map(|line| FulfillmentLine {
                    sku: line.sku.to_string(),
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
                order_id: order.order_id.to_string(),
                address: address.clone(),
                lines,
            })
        })
        .collect()
}

/// The shipments of an accepted order named by address key.
pub fn shipment_keys(order: &ValidOrder<'_>) -> Vec<String> {
    order
        .addresses
        .keys()
        .filter(|key| order.lines.iter().any(|line| &line.ship_to == *key))
        .map(|key| key.to_string())
        .collect()
}

/// The JSON of `StatusEvent::new(order_id, status, rejection, now)`, byte
/// for byte, written straight into a buffer: no event struct, no copies of
/// the order's text (the status is produced for every record).
pub fn status_json(
    order_id: &str,
    status: Status,
    rejection: Option<&Rejection>,
    now: OffsetDateTime,
) -> Vec<u8> {
    /// Same fields in the same order as [`StatusEvent`], borrowed.
    #[derive(Serialize)]
    struct StatusRef<'a> {
        event_id: EventId<'a>,
        order_id: &'a str,
        status: Status,
        reason: Option<Reason>,
        detail: Option<&'a str>,
        processed_at: &'a str,
    }
    with_time(now, |processed_at| {
        let event = StatusRef {
            event_id: EventId(&[order_id, ":", status.as_str()]),
            order_id,
            status,
            reason: rejection.map(|r| r.reason),
            detail: rejection.map(|r| r.detail.as_str()),
            processed_at,
        };
        to_json(&event)
    })
}

/// An ID made of parts, serialized as one JSON string without building it.
struct EventId<'a>(&'a [&'a str]);

impl Serialize for EventId<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for EventId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|part| f.write_str(part))
    }
}

/// Starting size of an output payload: a status is about 150 bytes, a
/// fulfillment with its address about 300; one allocation covers most.
const PAYLOAD_CAPACITY: usize = 384;

fn to_json(value: &impl Serialize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(PAYLOAD_CAPACITY);
    serde_json::to_writer(&mut buffer, value).expect("output events always serialize");
    buffer
}

/// Calls `each(kind, payload)` with the JSON of every event of
/// `requested(order)`, byte for byte, without cloning the order's text.
pub fn requested_json(order: &ValidOrder<'_>, mut each: impl FnMut(&'static str, Vec<u8>)) {
    /// Same fields in the same order as `FulfillmentEvent::FulfillmentRequested`.
    #[derive(Serialize)]
    struct RequestedRef<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        event_id: EventId<'a>,
        fulfillment_id: EventId<'a>,
        order_id: &'a str,
        address: &'a Address<'a>,
        lines: LinesTo<'a>,
    }
    /// The lines of `order` shipping to `key`, as `FulfillmentLine`s.
    struct LinesTo<'a> {
        order: &'a ValidOrder<'a>,
        key: &'a str,
    }
    impl Serialize for LinesTo<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            #[derive(Serialize)]
            struct LineRef<'a> {
                sku: &'a str,
                quantity: i64,
            }
            serializer.collect_seq(
                self.order
                    .lines
                    .iter()
                    .filter(|line| line.ship_to == self.key)
                    .map(|line| LineRef {
                        sku: &line.sku,
                        quantity: line.quantity,
                    }),
            )
        }
    }
    const KIND: &str = "fulfillment_requested";
    for (key, address) in &order.addresses {
        if !order.lines.iter().any(|line| line.ship_to == *key) {
            continue;
        }
        let event = RequestedRef {
            kind: KIND,
            event_id: EventId(&[&order.order_id, "/", key, ":requested"]),
            fulfillment_id: EventId(&[&order.order_id, "/", key]),
            order_id: &order.order_id,
            address,
            lines: LinesTo { order, key },
        };
        each(KIND, to_json(&event));
    }
}

thread_local! {
    /// The last `processed_at` text and the millisecond it stands for:
    /// every record of the same millisecond gets the same text, so it is
    /// formatted once per millisecond per thread, not once per record.
    static LAST_TIME: RefCell<(i128, String)> = const { RefCell::new((i128::MIN, String::new())) };
}

/// Runs `f` with `format_time(now)`, formatted at most once per millisecond.
fn with_time<T>(now: OffsetDateTime, f: impl FnOnce(&str) -> T) -> T {
    let millis = now.unix_timestamp_nanos().div_euclid(1_000_000);
    LAST_TIME.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != millis {
            *last = (millis, format_time(now));
        }
        f(&last.1)
    })
}

pub fn cancelled(order_id: &str, address_key: &str) -> FulfillmentEvent<'static> {
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
    fn fast_payloads_are_byte_identical_to_the_event_types() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let mut order = sample_order("o-\"42\"\u{1F680}");
        let home = order.addresses.as_mut().unwrap().get_mut("home").unwrap();
        home.name = "Zoë \"Bob\" \\ \u{7}\n🏠".into();
        home.region = Some("Bayern".into());
        let order = validate(order, &Limits::default()).unwrap();
        let mut fast = Vec::new();
        requested_json(&order, |kind, payload| fast.push((kind, payload)));
        let slow: Vec<_> = requested(&order)
            .iter()
            .map(|e| (e.kind(), serde_json::to_vec(e).unwrap()))
            .collect();
        assert_eq!(fast, slow);
        let rejection = Rejection::new(Reason::PriceMismatch, "lines[0] \"x\" costs 1");
        for (status, rejection) in [
            (Status::Accepted, None),
            (Status::Rejected, Some(&rejection)),
            (Status::Cancelled, None),
        ] {
            let event = StatusEvent::new(&order.order_id, status, rejection, t);
            assert_eq!(
                status_json(&order.order_id, status, rejection, t),
                serde_json::to_vec(&event).unwrap()
            );
        }
        // The cached time follows the clock across milliseconds.
        let later = t + time::Duration::milliseconds(1);
        let json = status_json("o-1", Status::Accepted, None, later);
        assert!(String::from_utf8(json).unwrap().contains(".124Z"));
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
