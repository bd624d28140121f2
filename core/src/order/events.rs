//! Output events of the contract: `StatusEvent` and `FulfillmentEvent`.
//!
//! Every `event_id` is a function of the order alone, so a consumer (or a
//! replay after a crash) can drop copies it has already seen.

use super::validate::{AddressRef, ValidOrder};
use super::{json, Address, Reason, Rejection};
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
/// Unique per shipment: validation refuses address names containing the
/// separator (`validate::FULFILLMENT_ID_SEPARATOR`), so the text after the
/// last `/` is always the address. Status event IDs (`order_id:status`) are
/// unique the same way: no status name contains `:`.
pub fn fulfillment_id(order_id: &str, address_key: &str) -> String {
    format!("{order_id}/{address_key}")
}

/// One `fulfillment_requested` per address that at least one line ships to,
/// in address-name order, with the lines in the order's own order: the
/// events [`requested_json`] writes, as values (tests compare the two).
pub fn requested<'a>(order: &ValidOrder<'a>) -> Vec<FulfillmentEvent<'a>> {
    order
        .addresses()
        .enumerate()
        .filter_map(|(index, address)| {
            let lines: Vec<FulfillmentLine> = order
                .lines()
                .filter(|line| line.address == index)
                .map(|line| FulfillmentLine {
                    sku: line.sku.to_string(),
                    quantity: line.quantity,
                })
                .collect();
            if lines.is_empty() {
                return None;
            }
            let fulfillment_id = fulfillment_id(order.order_id, address.key);
            Some(FulfillmentEvent::FulfillmentRequested {
                event_id: format!("{fulfillment_id}:requested"),
                fulfillment_id,
                order_id: order.order_id.to_string(),
                address: Address {
                    name: address.name.into(),
                    line1: address.line1.into(),
                    line2: address.line2.map(Into::into),
                    city: address.city.into(),
                    region: address.region.map(Into::into),
                    postal_code: address.postal_code.into(),
                    country: address.country.into(),
                },
                lines,
            })
        })
        .collect()
}

/// The shipments of an accepted order named by address key.
pub fn shipment_keys(order: &ValidOrder<'_>) -> Vec<String> {
    order
        .addresses()
        .enumerate()
        .filter(|(index, _)| order.lines().any(|line| line.address == *index))
        .map(|(_, address)| address.key.to_string())
        .collect()
}

/// The JSON of `StatusEvent::new(order_id, status, rejection, now)`, byte
/// for byte, appended to `out`: no event struct, no copies of the order's
/// text (the status is produced for every record). Same fields in the
/// same order as [`StatusEvent`]; a unit test checks every byte.
/// `rejection` is the reason and its detail (already bounded).
pub fn status_json(
    out: &mut Vec<u8>,
    order_id: &str,
    status: Status,
    rejection: Option<(Reason, &str)>,
    now: OffsetDateTime,
) {
    out.extend_from_slice(b"{\"event_id\":");
    json::push_str(out, &[order_id, ":", status.as_str()]);
    out.extend_from_slice(b",\"order_id\":");
    json::push_str(out, &[order_id]);
    out.extend_from_slice(b",\"status\":");
    json::push_str(out, &[status.as_str()]);
    out.extend_from_slice(b",\"reason\":");
    match rejection {
        Some((reason, _)) => json::push_str(out, &[reason.as_str()]),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"detail\":");
    match rejection {
        Some((_, detail)) => json::push_str(out, &[detail]),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"processed_at\":");
    with_time(now, |processed_at| json::push_str(out, &[processed_at]));
    out.push(b'}');
}

/// Appends the JSON of the `fulfillment_requested` event of `order`'s
/// shipment to its address number `index` (in name order), byte for byte
/// that of [`requested`]'s event (the same fields in the same order as
/// `FulfillmentEvent::FulfillmentRequested` and [`Address`]; a unit test
/// checks every byte), and returns whether there is one: an address no
/// line ships to has no shipment and nothing is written.
pub fn requested_json(out: &mut Vec<u8>, order: &ValidOrder<'_>, index: usize) -> bool {
    let mut lines = order.lines().filter(|line| line.address == index);
    let Some(first_line) = lines.next() else {
        return false;
    };
    let Some(address) = order.address(index) else {
        return false;
    };
    let (id, key) = (order.order_id, address.key);
    out.extend_from_slice(b"{\"type\":\"fulfillment_requested\",\"event_id\":");
    json::push_str(out, &[id, "/", key, ":requested"]);
    out.extend_from_slice(b",\"fulfillment_id\":");
    json::push_str(out, &[id, "/", key]);
    out.extend_from_slice(b",\"order_id\":");
    json::push_str(out, &[id]);
    out.extend_from_slice(b",\"address\":");
    push_address(out, &address);
    out.extend_from_slice(b",\"lines\":[");
    for (i, line) in std::iter::once(first_line).chain(lines).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"sku\":");
        json::push_str(out, &[line.sku]);
        out.extend_from_slice(b",\"quantity\":");
        json::push_i64(out, line.quantity);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    true
}

/// Appends the JSON of `cancelled(order_id, address_key)`, byte for byte.
pub fn cancelled_json(out: &mut Vec<u8>, order_id: &str, address_key: &str) {
    out.extend_from_slice(b"{\"type\":\"fulfillment_cancelled\",\"event_id\":");
    json::push_str(out, &[order_id, "/", address_key, ":cancelled"]);
    out.extend_from_slice(b",\"fulfillment_id\":");
    json::push_str(out, &[order_id, "/", address_key]);
    out.extend_from_slice(b",\"order_id\":");
    json::push_str(out, &[order_id]);
    out.push(b'}');
}

/// An address as [`Address`]'s `Serialize` writes it: absent options skipped.
fn push_address(out: &mut Vec<u8>, address: &AddressRef<'_>) {
    out.extend_from_slice(b"{\"name\":");
    json::push_str(out, &[address.name]);
    out.extend_from_slice(b",\"line1\":");
    json::push_str(out, &[address.line1]);
    if let Some(line2) = address.line2 {
        out.extend_from_slice(b",\"line2\":");
        json::push_str(out, &[line2]);
    }
    out.extend_from_slice(b",\"city\":");
    json::push_str(out, &[address.city]);
    if let Some(region) = address.region {
        out.extend_from_slice(b",\"region\":");
        json::push_str(out, &[region]);
    }
    out.extend_from_slice(b",\"postal_code\":");
    json::push_str(out, &[address.postal_code]);
    out.extend_from_slice(b",\"country\":");
    json::push_str(out, &[address.country]);
    out.push(b'}');
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
    use crate::order::json::tests::TEXT;
    use crate::order::validate::tests::{sample_order, unchecked, validate_order as validate};
    use crate::order::validate::Limits;
    use crate::order::{Line, OrderPlaced, Rejection};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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

    type Payloads = Vec<(&'static str, Vec<u8>)>;

    /// The payloads of `requested_json`, then serde_json's of `requested`.
    fn requested_both_ways(order: &ValidOrder<'_>) -> (Payloads, Payloads) {
        let mut fast = Vec::new();
        for index in 0..order.addresses().len() {
            let mut payload = Vec::new();
            if requested_json(&mut payload, order, index) {
                fast.push(("fulfillment_requested", payload));
            }
        }
        let slow = requested(order)
            .iter()
            .map(|e| (e.kind(), serde_json::to_vec(e).unwrap()))
            .collect();
        (fast, slow)
    }

    /// `status_json`, then serde_json's JSON of the same `StatusEvent`.
    fn status_both_ways(
        order_id: &str,
        status: Status,
        rejection: Option<&Rejection>,
        t: OffsetDateTime,
    ) -> (Vec<u8>, Vec<u8>) {
        let event = StatusEvent::new(order_id, status, rejection, t);
        let mut fast = Vec::new();
        let rejection = rejection.map(|r| (r.reason, r.detail.as_str()));
        status_json(&mut fast, order_id, status, rejection, t);
        (fast, serde_json::to_vec(&event).unwrap())
    }

    #[test]
    fn fast_payloads_are_byte_identical_to_the_event_types() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let mut order = sample_order("o-\"42\"\u{1F680}");
        let home = order.addresses.as_mut().unwrap().get_mut("home").unwrap();
        home.name = "Zoë \"Bob\" \\ \u{7}\n🏠".into();
        home.region = Some("Bayern".into());
        let order = validate(order, &Limits::default()).unwrap();
        let (fast, slow) = requested_both_ways(&order);
        assert_eq!(fast, slow);
        let rejection = Rejection::new(Reason::PriceMismatch, "lines[0] \"x\" costs 1");
        for (status, rejection) in [
            (Status::Accepted, None),
            (Status::Rejected, Some(&rejection)),
            (Status::Cancelled, None),
        ] {
            let (fast, slow) = status_both_ways(order.order_id, status, rejection, t);
            assert_eq!(fast, slow);
        }
        // The cached time follows the clock across milliseconds.
        let later = t + time::Duration::milliseconds(1);
        let mut json = Vec::new();
        status_json(&mut json, "o-1", Status::Accepted, None, later);
        assert!(String::from_utf8(json).unwrap().contains(".124Z"));
    }

    proptest! {
        /// Any text in any field, absent or present options, any quantity:
        /// the fast payloads stay byte for byte those of the event types.
        #[test]
        fn fast_payloads_match_for_any_text(
            order_id in TEXT,
            key in TEXT,
            name in TEXT,
            line2 in proptest::option::of(TEXT),
            region in proptest::option::of(TEXT),
            city in TEXT,
            sku in TEXT,
            quantity in any::<i64>(),
            detail in TEXT,
        ) {
            let address = |name: &str| Address {
                name: name.to_string().into(),
                line1: "Rue de l'Église \"3\"".into(),
                line2: line2.clone().map(Into::into),
                city: city.clone().into(),
                region: region.clone().map(Into::into),
                postal_code: "75001".into(),
                country: "FR".into(),
            };
            let line = |sku: &str, ship_to: &str| Line {
                sku: sku.to_string().into(),
                quantity,
                unit_price_minor: 1,
                ship_to: ship_to.to_string().into(),
            };
            // `key` ships two lines; "~other" one; "~unused" none.
            let order = unchecked(OrderPlaced {
                order_id: order_id.clone().into(),
                customer_id: Some("c-1".into()),
                placed_at: None,
                currency: Some("EUR".into()),
                lines: Some(vec![line(&sku, &key), line("S-2", "~other"), line(&sku, &key)]),
                addresses: Some(BTreeMap::from([
                    (key.clone().into(), address(&name)),
                    ("~other".into(), address("O'Brien")),
                    ("~unused".into(), address("nobody")),
                ])),
                payments: Some(Vec::new()),
            });
            let (fast, slow) = requested_both_ways(&order);
            prop_assert_eq!(fast, slow);
            let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
            let rejection = Rejection::new(Reason::InvalidOrder, detail);
            for (status, rejection) in [
                (Status::Accepted, None),
                (Status::Rejected, Some(&rejection)),
            ] {
                let (fast, slow) = status_both_ways(&order_id, status, rejection, t);
                prop_assert_eq!(fast, slow);
            }
        }
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
