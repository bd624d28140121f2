//! The rules of the contract's reasons table that need no inventory:
//! `invalid_order`, `unknown_currency` and `payment_mismatch`.
//!
//! Checks run in the table's order, so an order with several problems is
//! rejected for the first one the table lists.

use super::{codes, Address, Addresses, Line, OrderPlaced, Payment, Reason, Rejection};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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
    /// Units per line (at least one is always required).
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
/// still borrows from the record it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder<'a> {
    pub order_id: Cow<'a, str>,
    pub customer_id: Cow<'a, str>,
    pub placed_at: OffsetDateTime,
    pub currency: Cow<'a, str>,
    pub lines: Vec<Line<'a>>,
    pub addresses: Addresses<'a>,
    pub payments: Vec<Payment<'a>>,
    /// Sum of quantity × unit price, in minor units; cannot overflow.
    pub total_minor: i64,
    /// Units per SKU, summed over lines, sorted by SKU: the order in which
    /// the inventory takes its locks.
    pub demand: Vec<(String, u32)>,
}

fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::InvalidOrder, detail)
}

fn required<T>(field: Option<T>, name: &str) -> Result<T, Rejection> {
    field.ok_or_else(|| invalid(format!("field {name} is missing")))
}

/// A field's name for a rejection's detail. Built only when a check fails:
/// formatting `lines[{i}].sku` for every line of every valid order was a
/// measurable share of the hot path (see docs/benchmarks.md).
trait FieldName {
    fn name(&self) -> String;
}

impl FieldName for &str {
    fn name(&self) -> String {
        self.to_string()
    }
}

impl<F: Fn() -> String> FieldName for F {
    fn name(&self) -> String {
        self()
    }
}

fn check_text(value: &str, field: impl FieldName, limits: &Limits) -> Result<(), Rejection> {
    // Byte length bounds the character count from above and below (one to
    // four bytes per character), so most text needs no counting at all.
    if value.is_empty() {
        return Err(invalid(format!("{} is empty", field.name())));
    }
    if value.len() <= limits.max_text_chars {
        return Ok(());
    }
    let chars = value.chars().count();
    if chars > limits.max_text_chars {
        return Err(invalid(format!(
            "{} has {chars} characters, limit is {}",
            field.name(),
            limits.max_text_chars
        )));
    }
    Ok(())
}

fn check_address(key: &str, address: &Address<'_>, limits: &Limits) -> Result<(), Rejection> {
    let field = |name: &'static str| move || format!("addresses.{key}.{name}");
    check_text(key, "address name", limits)?;
    check_text(&address.name, field("name"), limits)?;
    check_text(&address.line1, field("line1"), limits)?;
    check_text(&address.city, field("city"), limits)?;
    check_text(&address.postal_code, field("postal_code"), limits)?;
    for (name, value) in [("line2", &address.line2), ("region", &address.region)] {
        if let Some(value) = value {
            check_text(value, field(name), limits)?;
        }
    }
    if !codes::is_country(&address.country) {
        return Err(invalid(format!(
            "{} is not an ISO 3166-1 alpha-2 code",
            field("country")()
        )));
    }
    Ok(())
}

/// Checks `invalid_order` and `unknown_currency`, and computes the total.
pub fn validate<'a>(order: OrderPlaced<'a>, limits: &Limits) -> Result<ValidOrder<'a>, Rejection> {
    check_text(&order.order_id, "order_id", limits)?;
    let customer_id = required(order.customer_id, "customer_id")?;
    check_text(&customer_id, "customer_id", limits)?;
    let placed_at_text = required(order.placed_at, "placed_at")?;
    let placed_at = OffsetDateTime::parse(&placed_at_text, &Rfc3339)
        .map_err(|e| invalid(format!("placed_at is not an RFC 3339 time: {e}")))?;
    let currency = required(order.currency, "currency")?;
    let lines = required(order.lines, "lines")?;
    let addresses = required(order.addresses, "addresses")?;
    let payments = required(order.payments, "payments")?;

    if lines.is_empty() || lines.len() > limits.max_lines {
        return Err(invalid(format!(
            "order has {} lines, must have 1 to {}",
            lines.len(),
            limits.max_lines
        )));
    }
    if addresses.is_empty() || addresses.len() > limits.max_addresses {
        return Err(invalid(format!(
            "order has {} addresses, must have 1 to {}",
            addresses.len(),
            limits.max_addresses
        )));
    }
    if payments.len() > limits.max_payments {
        return Err(invalid(format!(
            "order has {} payments, limit is {}",
            payments.len(),
            limits.max_payments
        )));
    }
    for (key, address) in &addresses {
        check_address(key, address, limits)?;
    }
    let mut total_minor: i64 = 0;
    // Few lines per order: a linear scan beats a map's allocations.
    let mut demand: Vec<(&str, u32)> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        check_text(&line.sku, || format!("lines[{i}].sku"), limits)?;
        if line.quantity < 1 || line.quantity > limits.max_quantity {
            return Err(invalid(format!(
                "lines[{i}].quantity is {}, must be 1 to {}",
                line.quantity, limits.max_quantity
            )));
        }
        if line.unit_price_minor < 0 {
            return Err(invalid(format!("lines[{i}].unit_price_minor is negative")));
        }
        if !addresses.contains_key(line.ship_to.as_ref()) {
            return Err(invalid(format!(
                "lines[{i}].ship_to names no address of the order"
            )));
        }
        total_minor = line
            .quantity
            .checked_mul(line.unit_price_minor)
            .and_then(|amount| total_minor.checked_add(amount))
            .ok_or_else(|| invalid(format!("order total overflows at lines[{i}]")))?;
        match demand.iter_mut().find(|(sku, _)| *sku == line.sku) {
            // Bounded by max_lines × max_quantity; checked so a huge config cannot wrap.
            Some((_, units)) => {
                *units = units
                    .checked_add(line.quantity as u32)
                    .ok_or_else(|| invalid(format!("units of {} overflow", line.sku)))?
            }
            None => demand.push((&line.sku, line.quantity as u32)),
        }
    }
    for (i, payment) in payments.iter().enumerate() {
        check_text(&payment.method, || format!("payments[{i}].method"), limits)?;
        if payment.amount_minor < 1 {
            return Err(invalid(format!(
                "payments[{i}].amount_minor must be at least 1"
            )));
        }
        if let Some(auth) = &payment.authorization_id {
            check_text(auth, || format!("payments[{i}].authorization_id"), limits)?;
        }
    }
    if !codes::is_currency(&currency) {
        let shown: String = currency.chars().take(8).collect();
        return Err(Rejection::new(
            Reason::UnknownCurrency,
            format!("currency {shown:?} is not an ISO 4217 code"),
        ));
    }
    demand.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let demand = demand
        .into_iter()
        .map(|(sku, units)| (sku.to_string(), units))
        .collect();
    Ok(ValidOrder {
        order_id: order.order_id,
        customer_id,
        placed_at,
        currency,
        lines,
        addresses,
        payments,
        total_minor,
        demand,
    })
}

/// Checks `payment_mismatch`: at least one payment, every method accepted
/// and authorized where it must be, amounts adding up to the total exactly.
pub fn check_payments(order: &ValidOrder<'_>, limits: &Limits) -> Result<(), Rejection> {
    let mismatch = |detail: String| Rejection::new(Reason::PaymentMismatch, detail);
    if order.payments.is_empty() {
        return Err(mismatch("order has no payment".into()));
    }
    let mut paid: i64 = 0;
    for (i, payment) in order.payments.iter().enumerate() {
        if !limits.payment_methods.iter().any(|m| *m == payment.method) {
            return Err(mismatch(format!(
                "payments[{i}].method {:?} is not accepted",
                payment.method
            )));
        }
        let needs_authorization = !limits
            .methods_without_authorization
            .iter()
            .any(|m| *m == payment.method);
        if needs_authorization && payment.authorization_id.is_none() {
            return Err(mismatch(format!(
                "payments[{i}] ({}) has no authorization_id",
                payment.method
            )));
        }
        paid = paid
            .checked_add(payment.amount_minor)
            .ok_or_else(|| Rejection::new(Reason::InvalidOrder, "payment amounts overflow"))?;
    }
    if paid != order.total_minor {
        return Err(mismatch(format!(
            "payments add up to {paid}, order total is {}",
            order.total_minor
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
        match validate(order, &limits) {
            Err(r) => r,
            Ok(valid) => check_payments(&valid, &limits).expect_err("expected a rejection"),
        }
    }

    #[test]
    fn valid_order_totals_and_demand() {
        let valid = validate(sample_order("o-1"), &Limits::default()).unwrap();
        assert_eq!(valid.total_minor, 3 * 1999 + 500);
        assert_eq!(
            valid.demand,
            vec![("SKU-1".to_string(), 3), ("SKU-9".to_string(), 1)]
        );
        check_payments(&valid, &Limits::default()).unwrap();
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
    fn text_limit_counts_characters_not_bytes() {
        let mut order = sample_order("o-1");
        order
            .addresses
            .as_mut()
            .unwrap()
            .get_mut("home")
            .unwrap()
            .name = "🏠".repeat(256).into();
        assert!(validate(order, &Limits::default()).is_ok());
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
