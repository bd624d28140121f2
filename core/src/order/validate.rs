//! The rules of the contract's reasons table that need no inventory:
//! `invalid_order`, `unknown_currency` and `payment_mismatch`.
//!
//! Checks run in the table's order, so an order with several problems is
//! rejected for the first one the table lists.

use super::codes::{self, Currency};
use super::reader::{AddressAt, Doc, Head, LineAt, PaymentAt, Scratch, Text};
use super::{Detail, Reason};
use serde::{Deserialize, Serialize};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Every limit an order is checked against. Each one is a config value
/// (`[limits]`); the defaults are the contract's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest record value accepted, in bytes; larger ones are dead-lettered.
    pub max_record_bytes: usize,
    /// Lines per order (at least one is always required).
    pub max_lines: usize,
    /// Units per line (at least one is always required; never more than
    /// `u32::MAX`, whatever this says).
    pub max_quantity: i64,
    /// Characters (Unicode scalar values, not bytes) in any text field.
    pub max_text_chars: usize,
    /// Distinct addresses per order.
    pub max_addresses: usize,
    /// Payments per order (at least one is always required).
    pub max_payments: usize,
    /// Payment methods accepted.
    pub payment_methods: Vec<String>,
    /// Accepted methods that need no `authorization_id`.
    pub methods_without_authorization: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 65_536,
            max_lines: 100,
            max_quantity: 100,
            max_text_chars: 256,
            max_addresses: 10,
            max_payments: 5,
            payment_methods: [
                "card",
                "wallet",
                "bank_transfer",
                "cash_on_delivery",
                "gift_card",
            ]
            .map(String::from)
            .to_vec(),
            methods_without_authorization: vec!["cash_on_delivery".to_string()],
        }
    }
}

/// An order that passed every check that needs no inventory. Its text
/// borrows from the record it was read from and from the shard's
/// [`Scratch`], which also holds its collections.
#[derive(Debug, Clone, Copy)]
pub struct ValidOrder<'s> {
    doc: Doc<'s>,
    pub order_id: &'s str,
    pub customer_id: &'s str,
    pub placed_at: OffsetDateTime,
    pub currency: Currency,
    lines: &'s [LineAt],
    /// Per line: its address in `addresses` and its SKU in `demand`.
    places: &'s [Place],
    /// Sorted by name: the order shipments come out in.
    addresses: &'s [AddressAt],
    payments: &'s [PaymentAt],
    /// Sum of quantity × unit price, in minor units; cannot overflow.
    pub total_minor: i64,
    /// Units per SKU, summed over lines, sorted by SKU: the order in which
    /// the inventory takes its locks.
    demand: &'s [Demand],
}

/// Where a line of a valid order points: its address and its SKU's
/// entry in the demand.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Place {
    address: u32,
    demand: u32,
}

/// Units of one SKU an order wants, over all its lines.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Demand {
    sku: Text,
    units: u32,
}

/// A line of a valid order.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'s> {
    pub sku: &'s str,
    pub quantity: i64,
    pub unit_price_minor: i64,
    /// Its address, as an index into [`ValidOrder::addresses`].
    pub address: usize,
    /// Its SKU, as an index into [`ValidOrder::demand`].
    pub demand: usize,
}

/// An address of a valid order.
#[derive(Debug, Clone, Copy)]
pub struct AddressRef<'s> {
    pub key: &'s str,
    pub name: &'s str,
    pub line1: &'s str,
    pub line2: Option<&'s str>,
    pub city: &'s str,
    pub region: Option<&'s str>,
    pub postal_code: &'s str,
    pub country: &'s str,
}

fn address_ref<'s>(doc: Doc<'s>, a: &AddressAt) -> AddressRef<'s> {
    AddressRef {
        key: doc.get(a.key),
        name: doc.get(a.name),
        line1: doc.get(a.line1),
        line2: a.line2.map(|t| doc.get(t)),
        city: doc.get(a.city),
        region: a.region.map(|t| doc.get(t)),
        postal_code: doc.get(a.postal_code),
        country: doc.get(a.country),
    }
}

/// A payment of a valid order.
#[derive(Debug, Clone, Copy)]
pub struct PaymentRef<'s> {
    pub method: &'s str,
    pub amount_minor: i64,
    pub authorization_id: Option<&'s str>,
}

impl<'s> ValidOrder<'s> {
    pub fn lines(&self) -> impl ExactSizeIterator<Item = LineRef<'s>> + 's {
        let doc = self.doc;
        self.lines
            .iter()
            .zip(self.places)
            .map(move |(line, place)| LineRef {
                sku: doc.get(line.sku),
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
                address: place.address as usize,
                demand: place.demand as usize,
            })
    }

    /// The addresses, sorted by name.
    pub fn addresses(&self) -> impl ExactSizeIterator<Item = AddressRef<'s>> + 's {
        let doc = self.doc;
        self.addresses.iter().map(move |a| address_ref(doc, a))
    }

    /// Address number `index` in name order.
    pub fn address(&self, index: usize) -> Option<AddressRef<'s>> {
        self.addresses.get(index).map(|a| address_ref(self.doc, a))
    }

    pub fn payments(&self) -> impl ExactSizeIterator<Item = PaymentRef<'s>> + 's {
        let doc = self.doc;
        self.payments.iter().map(move |p| PaymentRef {
            method: doc.get(p.method),
            amount_minor: p.amount_minor,
            authorization_id: p.authorization_id.map(|t| doc.get(t)),
        })
    }

    /// Units per SKU, sorted by SKU.
    pub fn demand(&self) -> impl ExactSizeIterator<Item = (&'s str, u32)> + 's {
        let doc = self.doc;
        self.demand.iter().map(move |d| (doc.get(d.sku), d.units))
    }
}

/// Why a text field is out of its limits.
enum TextError {
    Empty,
    TooLong(usize),
}

/// Checks a text field's length. Byte length bounds the character count
/// from above and below (one to four bytes per character), so most text
/// needs no counting at all.
fn check_text(value: &str, limits: &Limits) -> Result<(), TextError> {
    if value.is_empty() {
        return Err(TextError::Empty);
    }
    if value.len() <= limits.max_text_chars {
        return Ok(());
    }
    let chars = value.chars().count();
    if chars > limits.max_text_chars {
        return Err(TextError::TooLong(chars));
    }
    Ok(())
}

/// [`check_text`], the detail naming `field` on failure. The name is a
/// `format_args!`, formatted only when a check fails: formatting
/// `lines[{i}].sku` for every line of every valid order was a measurable
/// share of the hot path (see docs/benchmarks.md).
fn text(
    value: &str,
    field: std::fmt::Arguments<'_>,
    limits: &Limits,
    detail: &mut Detail,
) -> Result<(), Reason> {
    check_text(value, limits).map_err(|error| match error {
        TextError::Empty => detail.fail(INVALID, format_args!("{field} is empty")),
        TextError::TooLong(chars) => detail.fail(
            INVALID,
            format_args!(
                "{field} has {chars} characters, limit is {}",
                limits.max_text_chars
            ),
        ),
    })
}

const INVALID: Reason = Reason::InvalidOrder;

/// A required field, or `invalid_order` naming it.
fn required(field: Option<Text>, name: &str, detail: &mut Detail) -> Result<Text, Reason> {
    field.ok_or_else(|| detail.fail(INVALID, format_args!("field {name} is missing")))
}

/// The character that joins an order ID and an address name in a
/// `fulfillment_id` (`o-42/home`). Address names may not contain it, so the
/// part after the last one is the address and two shipments never share an
/// ID (order IDs may contain it).
pub const FULFILLMENT_ID_SEPARATOR: char = '/';

fn check_address(
    address: &AddressRef<'_>,
    limits: &Limits,
    detail: &mut Detail,
) -> Result<(), Reason> {
    let key = address.key;
    text(key, format_args!("address name"), limits, detail)?;
    if key.contains(FULFILLMENT_ID_SEPARATOR) {
        return Err(detail.fail(
            INVALID,
            format_args!(
                "address name {key:?} contains '{FULFILLMENT_ID_SEPARATOR}', which fulfillment \
                 IDs (order_id{FULFILLMENT_ID_SEPARATOR}address) reserve"
            ),
        ));
    }
    let required = [
        ("name", address.name),
        ("line1", address.line1),
        ("city", address.city),
        ("postal_code", address.postal_code),
    ];
    let optional = [("line2", address.line2), ("region", address.region)];
    let present = optional
        .iter()
        .filter_map(|(name, value)| value.map(|value| (*name, value)));
    for (name, value) in required.into_iter().chain(present) {
        text(
            value,
            format_args!("addresses.{key}.{name}"),
            limits,
            detail,
        )?;
    }
    if !codes::is_country(address.country) {
        return Err(detail.fail(
            INVALID,
            format_args!("addresses.{key}.country is not an ISO 3166-1 alpha-2 code"),
        ));
    }
    Ok(())
}

/// Checks `invalid_order` and `unknown_currency` for the order read into
/// `scratch` from `record` (its `head`), and computes the total and the
/// demand. The rejection's detail goes into `detail`.
pub fn validate<'s>(
    record: &'s str,
    head: &Head,
    scratch: &'s mut Scratch,
    limits: &Limits,
    detail: &mut Detail,
) -> Result<ValidOrder<'s>, Reason> {
    let Scratch {
        text: scratch_text,
        lines,
        addresses,
        payments,
        places,
        demand,
        ..
    } = scratch;
    let doc = Doc::new(record, scratch_text);
    let order_id = doc.get(required(head.order_id, "order_id", detail)?);
    text(order_id, format_args!("order_id"), limits, detail)?;
    let customer_id = doc.get(required(head.customer_id, "customer_id", detail)?);
    text(customer_id, format_args!("customer_id"), limits, detail)?;
    let placed_at = doc.get(required(head.placed_at, "placed_at", detail)?);
    let placed_at = OffsetDateTime::parse(placed_at, &Rfc3339).map_err(|e| {
        detail.fail(
            INVALID,
            format_args!("placed_at is not an RFC 3339 time: {e}"),
        )
    })?;
    let currency = doc.get(required(head.currency, "currency", detail)?);
    for (present, name) in [
        (head.lines, "lines"),
        (head.addresses, "addresses"),
        (head.payments, "payments"),
    ] {
        if !present {
            return Err(detail.fail(INVALID, format_args!("field {name} is missing")));
        }
    }
    if lines.is_empty() || lines.len() > limits.max_lines {
        return Err(detail.fail(
            INVALID,
            format_args!(
                "order has {} lines, must have 1 to {}",
                lines.len(),
                limits.max_lines
            ),
        ));
    }
    if addresses.is_empty() || addresses.len() > limits.max_addresses {
        return Err(detail.fail(
            INVALID,
            format_args!(
                "order has {} addresses, must have 1 to {}",
                addresses.len(),
                limits.max_addresses
            ),
        ));
    }
    if payments.len() > limits.max_payments {
        return Err(detail.fail(
            INVALID,
            format_args!(
                "order has {} payments, limit is {}",
                payments.len(),
                limits.max_payments
            ),
        ));
    }
    // Names are distinct (the reader declines duplicates; serde's map
    // keeps one), so this is the order of the map serde would build.
    addresses.sort_unstable_by(|a, b| doc.get(a.key).cmp(doc.get(b.key)));
    let addresses: &'s [AddressAt] = addresses;
    for address in addresses {
        check_address(&address_ref(doc, address), limits, detail)?;
    }
    let mut total_minor: i64 = 0;
    places.clear();
    demand.clear();
    for (i, line) in lines.iter().enumerate() {
        let sku = doc.get(line.sku);
        text(sku, format_args!("lines[{i}].sku"), limits, detail)?;
        // Units are counted in u32 from here on: a quantity past it is out
        // of range whatever the configured maximum, never truncated.
        let units = u32::try_from(line.quantity)
            .ok()
            .filter(|units| *units >= 1 && i64::from(*units) <= limits.max_quantity)
            .ok_or_else(|| {
                detail.fail(
                    INVALID,
                    format_args!(
                        "lines[{i}].quantity is {}, must be 1 to {}",
                        line.quantity,
                        limits.max_quantity.min(i64::from(u32::MAX))
                    ),
                )
            })?;
        if line.unit_price_minor < 0 {
            return Err(detail.fail(
                INVALID,
                format_args!("lines[{i}].unit_price_minor is negative"),
            ));
        }
        let ship_to = doc.get(line.ship_to);
        let address = addresses
            .binary_search_by(|a| doc.get(a.key).cmp(ship_to))
            .map_err(|_| {
                detail.fail(
                    INVALID,
                    format_args!("lines[{i}].ship_to names no address of the order"),
                )
            })?;
        total_minor = line
            .quantity
            .checked_mul(line.unit_price_minor)
            .and_then(|amount| total_minor.checked_add(amount))
            .ok_or_else(|| {
                detail.fail(INVALID, format_args!("order total overflows at lines[{i}]"))
            })?;
        // Few lines per order: a linear scan beats a map.
        match demand.iter_mut().find(|d| doc.get(d.sku) == sku) {
            // Bounded by max_lines × max_quantity, which the config's ranges
            // keep below u32::MAX; checked so limits built in code cannot wrap.
            Some(held) => {
                held.units = held.units.checked_add(units).ok_or_else(|| {
                    detail.fail(
                        INVALID,
                        format_args!("units of {sku} add up past {}", u32::MAX),
                    )
                })?
            }
            None => demand.push(Demand {
                sku: line.sku,
                units,
            }),
        }
        places.push(Place {
            address: address as u32,
            demand: 0,
        });
    }
    for (i, payment) in payments.iter().enumerate() {
        let method = doc.get(payment.method);
        text(method, format_args!("payments[{i}].method"), limits, detail)?;
        if payment.amount_minor < 1 {
            return Err(detail.fail(
                INVALID,
                format_args!("payments[{i}].amount_minor must be at least 1"),
            ));
        }
        if let Some(auth) = payment.authorization_id {
            let auth = doc.get(auth);
            text(
                auth,
                format_args!("payments[{i}].authorization_id"),
                limits,
                detail,
            )?;
        }
    }
    let Some(currency) = codes::currency(currency) else {
        // Its first 8 characters, borrowed (no allocation on this path).
        let end = currency
            .char_indices()
            .nth(8)
            .map_or(currency.len(), |(i, _)| i);
        let shown = &currency[..end];
        return Err(detail.fail(
            Reason::UnknownCurrency,
            format_args!("currency {shown:?} is not an ISO 4217 code"),
        ));
    };
    demand.sort_unstable_by(|a, b| doc.get(a.sku).cmp(doc.get(b.sku)));
    for (line, place) in lines.iter().zip(places.iter_mut()) {
        let sku = doc.get(line.sku);
        place.demand = demand
            .binary_search_by(|d| doc.get(d.sku).cmp(sku))
            .expect("every line's SKU is in the demand") as u32;
    }
    Ok(ValidOrder {
        doc,
        order_id,
        customer_id,
        placed_at,
        currency,
        lines,
        places,
        addresses,
        payments,
        total_minor,
        demand,
    })
}

/// Checks `payment_mismatch`: at least one payment, every method accepted
/// and authorized where it must be, amounts adding up to the total exactly.
pub fn check_payments(
    order: &ValidOrder<'_>,
    limits: &Limits,
    detail: &mut Detail,
) -> Result<(), Reason> {
    const MISMATCH: Reason = Reason::PaymentMismatch;
    if order.payments.is_empty() {
        return Err(detail.fail(MISMATCH, format_args!("order has no payment")));
    }
    let mut paid: i64 = 0;
    for (i, payment) in order.payments().enumerate() {
        let method = payment.method;
        if !limits.payment_methods.iter().any(|m| m == method) {
            return Err(detail.fail(
                MISMATCH,
                format_args!("payments[{i}].method {method:?} is not accepted"),
            ));
        }
        let needs_authorization = !limits
            .methods_without_authorization
            .iter()
            .any(|m| m == method);
        if needs_authorization && payment.authorization_id.is_none() {
            return Err(detail.fail(
                MISMATCH,
                format_args!("payments[{i}] ({method}) has no authorization_id"),
            ));
        }
        paid = paid
            .checked_add(payment.amount_minor)
            .ok_or_else(|| detail.fail(INVALID, format_args!("payment amounts overflow")))?;
    }
    if paid != order.total_minor {
        return Err(detail.fail(
            MISMATCH,
            format_args!(
                "payments add up to {paid}, order total is {}",
                order.total_minor
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::order::{Address, Line, OrderPlaced, Payment, Rejection};
    use std::collections::BTreeMap;

    /// Validates `order` as the engine's slow path does: loaded into a
    /// scratch of its own (leaked, tests only, so the order can outlive
    /// the call), the rejection with its detail.
    pub fn validate_order(
        order: OrderPlaced<'_>,
        limits: &Limits,
    ) -> Result<ValidOrder<'static>, Rejection> {
        let scratch: &'static mut Scratch = Box::leak(Box::default());
        let head = scratch.load(&order);
        let mut detail = Detail::default();
        validate("", &head, scratch, limits, &mut detail).map_err(|reason| detail.rejection(reason))
    }

    /// A view of `order` as if it were valid, without any check (any
    /// text, any quantity), for tests of what is written from a valid
    /// order: lines point at the address they name (or none).
    pub fn unchecked(order: OrderPlaced<'_>) -> ValidOrder<'static> {
        let scratch: &'static mut Scratch = Box::leak(Box::default());
        let head = scratch.load(&order);
        let Scratch {
            text,
            lines,
            addresses,
            payments,
            places,
            demand,
            ..
        } = scratch;
        let text: &'static String = text;
        let doc = Doc::new("", text);
        addresses.sort_by(|a, b| doc.get(a.key).cmp(doc.get(b.key)));
        let addresses: &'static [AddressAt] = addresses;
        places.clear();
        for line in lines.iter() {
            let address = addresses
                .iter()
                .position(|a| doc.get(a.key) == doc.get(line.ship_to))
                .unwrap_or(usize::MAX);
            places.push(Place {
                address: address as u32,
                demand: 0,
            });
        }
        ValidOrder {
            doc,
            order_id: head.order_id.map(|t| doc.get(t)).unwrap_or_default(),
            customer_id: head.customer_id.map(|t| doc.get(t)).unwrap_or_default(),
            placed_at: OffsetDateTime::UNIX_EPOCH,
            currency: codes::currency("EUR").expect("EUR is ISO 4217"),
            lines,
            places,
            addresses,
            payments,
            total_minor: 0,
            demand,
        }
    }

    /// [`check_payments`] with its detail.
    pub fn payments_of(valid: &ValidOrder<'_>, limits: &Limits) -> Result<(), Rejection> {
        let mut detail = Detail::default();
        check_payments(valid, limits, &mut detail).map_err(|reason| detail.rejection(reason))
    }

    pub fn sample_order(order_id: &str) -> OrderPlaced<'static> {
        let address = |name: &str| Address {
            name: name.to_string().into(),
            line1: "Hauptstraße 1".into(),
            line2: None,
            city: "Berlin".into(),
            region: None,
            postal_code: "10115".into(),
            country: "DE".into(),
        };
        OrderPlaced {
            order_id: order_id.to_string().into(),
            customer_id: Some("c-1".into()),
            placed_at: Some("2026-11-23T12:00:00.123Z".into()),
            currency: Some("EUR".into()),
            lines: Some(vec![
                Line {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_minor: 1999,
                    ship_to: "home".into(),
                },
                Line {
                    sku: "SKU-9".into(),
                    quantity: 1,
                    unit_price_minor: 500,
                    ship_to: "office".into(),
                },
                Line {
                    sku: "SKU-1".into(),
                    quantity: 1,
                    unit_price_minor: 1999,
                    ship_to: "office".into(),
                },
            ]),
            addresses: Some(BTreeMap::from([
                ("home".into(), address("Zoë Ørsted 🏠")),
                ("office".into(), address("Zoë Ørsted 🏢")),
            ])),
            payments: Some(vec![
                Payment {
                    method: "card".into(),
                    amount_minor: 6000,
                    authorization_id: Some("a1".into()),
                },
                Payment {
                    method: "cash_on_delivery".into(),
                    amount_minor: 497,
                    authorization_id: None,
                },
            ]),
        }
    }

    fn reject(order: OrderPlaced) -> Rejection {
        let limits = Limits::default();
        match validate_order(order, &limits) {
            Err(r) => r,
            Ok(valid) => payments_of(&valid, &limits).expect_err("expected a rejection"),
        }
    }

    #[test]
    fn valid_order_totals_and_demand() {
        let valid = validate_order(sample_order("o-1"), &Limits::default()).unwrap();
        assert_eq!(valid.total_minor, 3 * 1999 + 500);
        assert_eq!(
            valid.demand().collect::<Vec<_>>(),
            vec![("SKU-1", 3), ("SKU-9", 1)]
        );
        payments_of(&valid, &Limits::default()).unwrap();
    }

    #[test]
    fn invalid_orders() {
        type Mutation = Box<dyn Fn(&mut OrderPlaced)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("no lines", Box::new(|o| o.lines = Some(vec![]))),
            ("missing customer", Box::new(|o| o.customer_id = None)),
            (
                "zero quantity",
                Box::new(|o| o.lines.as_mut().unwrap()[0].quantity = 0),
            ),
            (
                "quantity over max",
                Box::new(|o| o.lines.as_mut().unwrap()[0].quantity = 101),
            ),
            (
                "unknown ship_to",
                Box::new(|o| o.lines.as_mut().unwrap()[0].ship_to = "moon".into()),
            ),
            (
                "bad country",
                Box::new(|o| {
                    o.addresses
                        .as_mut()
                        .unwrap()
                        .get_mut("home")
                        .unwrap()
                        .country = "XX".into()
                }),
            ),
            (
                "long name",
                Box::new(|o| {
                    o.addresses.as_mut().unwrap().get_mut("home").unwrap().name =
                        "é".repeat(257).into()
                }),
            ),
            (
                "empty city",
                Box::new(|o| {
                    o.addresses.as_mut().unwrap().get_mut("home").unwrap().city = "".into()
                }),
            ),
            (
                "bad time",
                Box::new(|o| o.placed_at = Some("yesterday".into())),
            ),
            (
                "overflow",
                Box::new(|o| o.lines.as_mut().unwrap()[0].unit_price_minor = i64::MAX / 2),
            ),
            (
                "too many lines",
                Box::new(|o| {
                    let line = o.lines.as_ref().unwrap()[0].clone();
                    o.lines = Some(vec![line; 101]);
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut order = sample_order("o-1");
            mutate(&mut order);
            assert_eq!(reject(order).reason, Reason::InvalidOrder, "{name}");
        }
    }

    #[test]
    fn quantities_past_u32_are_invalid_not_truncated() {
        // A config (or code) may allow more than u32 units; the reservation
        // counts units in u32, so a quantity of 2^32 + 1 must not become 1.
        let limits = Limits {
            max_quantity: i64::MAX,
            ..Limits::default()
        };
        let mut order = sample_order("o-1");
        let lines = order.lines.as_mut().unwrap();
        lines.truncate(1);
        lines[0].quantity = (1 << 32) + 1;
        lines[0].unit_price_minor = 0;
        let rejection = validate_order(order, &limits).unwrap_err();
        assert_eq!(rejection.reason, Reason::InvalidOrder);
        assert!(
            rejection
                .detail
                .starts_with("lines[0].quantity is 4294967297"),
            "{}",
            rejection.detail
        );
        // Lines of one SKU whose units add up past u32.
        let mut order = sample_order("o-2");
        let lines = order.lines.as_mut().unwrap();
        for line in lines.iter_mut() {
            line.sku = "SKU-1".into();
            line.quantity = i64::from(u32::MAX / 2);
            line.unit_price_minor = 0;
        }
        let rejection = validate_order(order, &limits).unwrap_err();
        assert_eq!(rejection.detail, "units of SKU-1 add up past 4294967295");
    }

    #[test]
    fn address_keys_with_a_slash_are_invalid_so_fulfillment_ids_are_unique() {
        // fulfillment_id is ORDER/ADDRESS: order "a" shipping to "b/c" and
        // order "a/b" shipping to "c" would share "a/b/c".
        let mut order = sample_order("a");
        let addresses = order.addresses.as_mut().unwrap();
        let home = addresses.remove("home").unwrap();
        addresses.insert("b/c".into(), home);
        for line in order.lines.as_mut().unwrap() {
            if line.ship_to == "home" {
                line.ship_to = "b/c".into();
            }
        }
        let rejection = validate_order(order, &Limits::default()).unwrap_err();
        assert_eq!(rejection.reason, Reason::InvalidOrder);
        assert_eq!(
            rejection.detail,
            "address name \"b/c\" contains '/', which fulfillment IDs (order_id/address) reserve"
        );
        // Order IDs may contain '/': the address part after the last one is unique.
        assert!(validate_order(sample_order("a/b"), &Limits::default()).is_ok());
    }

    #[test]
    fn text_limit_counts_characters_not_bytes() {
        let mut order = sample_order("o-1");
        order
            .addresses
            .as_mut()
            .unwrap()
            .get_mut("home")
            .unwrap()
            .name = "🏠".repeat(256).into();
        assert!(validate_order(order, &Limits::default()).is_ok());
    }

    #[test]
    fn unknown_currency_after_structure() {
        let mut order = sample_order("o-1");
        order.currency = Some("EURO".into());
        assert_eq!(reject(order.clone()).reason, Reason::UnknownCurrency);
        order.lines = Some(vec![]);
        assert_eq!(
            reject(order).reason,
            Reason::InvalidOrder,
            "first reason in table order wins"
        );
    }

    #[test]
    fn payment_mismatches() {
        let mut wrong_sum = sample_order("o-1");
        wrong_sum.payments.as_mut().unwrap()[0].amount_minor += 1;
        assert_eq!(reject(wrong_sum).reason, Reason::PaymentMismatch);
        let mut no_auth = sample_order("o-1");
        no_auth.payments.as_mut().unwrap()[0].authorization_id = None;
        assert_eq!(reject(no_auth).reason, Reason::PaymentMismatch);
        let mut bitcoin = sample_order("o-1");
        bitcoin.payments.as_mut().unwrap()[0].method = "bitcoin".into();
        assert_eq!(reject(bitcoin).reason, Reason::PaymentMismatch);
        let mut none = sample_order("o-1");
        none.payments = Some(vec![]);
        assert_eq!(reject(none).reason, Reason::PaymentMismatch);
    }
}
