//! The flash-sale generator: a catalog to announce, then a schedule of
//! records, each with the time it is due and what the audit should expect
//! of it.
//!
//! Pure and deterministic: the same scenario, limits, run tag and origin
//! give the same records byte for byte (`rand`'s seeded `StdRng`), so a
//! failing run can be replayed. Nothing here touches Kafka or the clock;
//! the sender decides when "due" is.

use super::audit::{
    address_fingerprint, bytes_fingerprint, Intent, PaymentFate, SentMalformed, SentOrder,
};
use super::catalog::{Catalog, Zipf};
use super::people::{self, ADDRESS_KEYS};
use super::scenario::Scenario;
use super::shape::Shape;
use crate::order::decode::DlqReason;
use crate::order::validate::Limits;
use crate::order::{
    codes, Address, InventoryEvent, Line, OrderCancelled, OrderPlaced, Payment, Reason,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Units per line of an ordinary SKU: shoppers buy one, sometimes a few.
const MAX_ORDINARY_QUANTITY: u32 = 3;
/// Bytes over the record limit of a `too_large` record.
const TOO_LARGE_EXCESS_BYTES: usize = 1024;
/// The order stream of the seeded generator; the catalog has its own
/// (see `catalog`), so it does not shift when the order mix changes.
const ORDER_STREAM: u64 = 0x0D_E125;

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Orders,
    Inventory,
}

/// What a record is, for the sender's ledger and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The first copy of a readable `order_placed`; `seq` numbers them from 0.
    Placed {
        seq: u64,
        order: SentOrder,
    },
    /// The same bytes as an earlier order (a producer retry upstream).
    Duplicate {
        seq: u64,
    },
    Cancel {
        seq: u64,
    },
    Malformed(SentMalformed),
    Restock {
        sku: String,
        delta: i64,
    },
}

/// One record due at `at` after the start of the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub topic: Topic,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub note: Note,
}

/// `{"type": kind, ...event}` as the contract's tagged JSON.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: &'a T,
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("generated events always serialize")
}

fn placed_json(order: &OrderPlaced) -> Vec<u8> {
    to_json(&Tagged {
        kind: "order_placed",
        event: order,
    })
}

const BAD_CURRENCIES: [&str; 5] = ["EURO", "XYZ", "eur", "€", "US$"];
const DECLINED_METHODS: [&str; 3] = ["bitcoin", "iou", "seashells"];
/// Ways to be `invalid_order`; `invalid_order` orders cycle through them.
const INVALID_KINDS: u64 = 10;

#[derive(Debug)]
struct Deferred {
    at: Duration,
    /// Keeps equal times in the order they were planned.
    tie: u64,
    planned: Planned,
}

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.tie) == (other.at, other.tie)
    }
}
impl Eq for Deferred {}
impl PartialOrd for Deferred {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deferred {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.tie).cmp(&(other.at, other.tie))
    }
}

/// What kind of new record an arrival is.
enum Arrival {
    Malformed(DlqReason),
    Invalid(Reason),
    Hot,
    Ordinary,
}

/// The schedule of one sale; an iterator of [`Planned`] records in time order.
pub struct Generator {
    rng: StdRng,
    scenario: Scenario,
    limits: Limits,
    tag: String,
    origin: OffsetDateTime,
    catalog: Catalog,
    popularity: Zipf,
    currency_popularity: Zipf,
    shape: Shape,
    /// When the next new record is due, in seconds from the start.
    clock: f64,
    next_seq: u64,
    next_malformed: u64,
    next_tie: u64,
    invalid_turn: u64,
    deferred: BinaryHeap<Reverse<Deferred>>,
    /// A valid ISO 4217 code no SKU has a price in.
    unpriced_currency: String,
}

impl Generator {
    /// `tag` prefixes every order ID, SKU and key of the run; `origin` is
    /// the wall-clock time of the start of the sale, for `placed_at`.
    pub fn new(
        scenario: &Scenario,
        limits: &Limits,
        tag: &str,
        origin: OffsetDateTime,
    ) -> Generator {
        let catalog = Catalog::build(scenario, tag);
        let mut deferred = BinaryHeap::new();
        let shape = Shape::of(scenario);
        let mut next_tie = 0;
        if scenario.catalog.hot_restock > 0 {
            // A restock mid-burst: the processor must apply it live.
            let at =
                Duration::from_secs_f64((shape.burst_at + shape.burst / 2.0).min(shape.duration));
            for sku in &catalog.hot {
                let event = InventoryEvent::StockAdjusted {
                    sku: sku.sku.clone(),
                    delta: scenario.catalog.hot_restock,
                };
                deferred.push(Reverse(Deferred {
                    at,
                    tie: next_tie,
                    planned: Planned {
                        at,
                        topic: Topic::Inventory,
                        key: sku.sku.clone().into_bytes(),
                        value: to_json(&event),
                        note: Note::Restock {
                            sku: sku.sku.clone(),
                            delta: scenario.catalog.hot_restock,
                        },
                    },
                }));
                next_tie += 1;
            }
        }
        let unpriced_currency = ["SEK", "NOK", "DKK", "PLN", "CZK", "MXN", "CAD", "AUD"]
            .iter()
            .chain(codes::CURRENCIES.iter())
            .find(|code| !scenario.catalog.currencies.iter().any(|c| c == *code))
            .expect("ISO 4217 has more codes than any scenario lists")
            .to_string();
        Generator {
            rng: StdRng::seed_from_u64(scenario.load.seed ^ ORDER_STREAM),
            popularity: Zipf::new(scenario.catalog.skus, scenario.catalog.zipf_exponent),
            currency_popularity: Zipf::new(scenario.catalog.currencies.len(), 1.0),
            scenario: scenario.clone(),
            limits: limits.clone(),
            tag: tag.to_string(),
            origin,
            catalog,
            shape,
            clock: 0.0,
            next_seq: 0,
            next_malformed: 0,
            next_tie,
            invalid_turn: 0,
            deferred,
            unpriced_currency,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The order ID of the readable order number `seq` of run `tag`.
    pub fn order_id(tag: &str, seq: u64) -> String {
        format!("{tag}-o{seq:08}")
    }

    /// The inverse of [`Generator::order_id`].
    pub fn order_seq(tag: &str, order_id: &str) -> Option<u64> {
        order_id.strip_prefix(tag)?.strip_prefix("-o")?.parse().ok()
    }

    fn defer(&mut self, planned: Planned) {
        self.deferred.push(Reverse(Deferred {
            at: planned.at,
            tie: self.next_tie,
            planned,
        }));
        self.next_tie += 1;
    }

    fn placed_at(&self, at: Duration) -> String {
        let t = self.origin + at;
        // Microseconds, so the processor's latency is not rounded to 1 ms.
        let t = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
        t.format(&Rfc3339).unwrap_or_default()
    }

    fn arrival(&mut self) -> Arrival {
        let mix = &self.scenario.mix;
        let u = self.rng.gen::<f64>();
        if u < mix.malformed_share {
            let weights = mix.malformed.weights();
            Arrival::Malformed(pick_weighted(&mut self.rng, &weights))
        } else if u < mix.malformed_share + mix.invalid_share {
            let weights = mix.reasons.weights();
            Arrival::Invalid(pick_weighted(&mut self.rng, &weights))
        } else if u < mix.malformed_share + mix.invalid_share + mix.hot_share {
            Arrival::Hot
        } else {
            Arrival::Ordinary
        }
    }

    fn new_record(&mut self, at: Duration) -> Planned {
        match self.arrival() {
            Arrival::Malformed(kind) => self.malformed(at, kind),
            Arrival::Invalid(reason) => self.placed(at, Intent::Reject(reason)),
            Arrival::Hot => self.placed(at, Intent::Contended),
            Arrival::Ordinary => self.placed(at, Intent::Accept),
        }
    }

    /// A readable `order_placed` with `intent`, plus its deferred duplicate
    /// and cancellation, if the dice say so.
    fn placed(&mut self, at: Duration, intent: Intent) -> Planned {
        let seq = self.next_seq;
        self.next_seq += 1;
        let order_id = Self::order_id(&self.tag, seq);
        let mut order = self.valid_order(&order_id, at, intent == Intent::Contended);
        let mut remove_field = None;
        if let Intent::Reject(reason) = intent {
            remove_field = self.spoil(&mut order, reason);
        }
        let value = match remove_field {
            None => placed_json(&order),
            Some(field) => {
                let mut json: serde_json::Value =
                    serde_json::from_slice(&placed_json(&order)).expect("just serialized");
                json.as_object_mut().expect("an object").remove(field);
                to_json(&json)
            }
        };
        let may_take_stock = matches!(intent, Intent::Accept | Intent::Contended);
        let mix = self.scenario.mix.clone();
        let cancelled = may_take_stock && self.rng.gen_bool(mix.cancel_share);
        let duplicated = self.rng.gen_bool(mix.duplicate_share);
        // A customer's cancellation races the capture; its payments are
        // not what the audit checks, so its gateway always says yes.
        let fate = if may_take_stock && !cancelled {
            self.fate()
        } else {
            PaymentFate::Captured
        };
        let fate = self.apply_fate(&mut order, fate);
        let value = if fate == PaymentFate::Captured {
            value
        } else {
            placed_json(&order)
        };
        let captures = order
            .payments
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| p.authorization_id.is_some())
            .map(|(i, _)| i as u32)
            .collect();
        let sent = SentOrder {
            order_id: order_id.clone(),
            intent,
            demand: demand(order.lines.as_deref().unwrap_or_default()),
            shipments: if may_take_stock {
                shipments(&order)
            } else {
                Vec::new()
            },
            cancelled,
            fate,
            captures,
        };
        if duplicated {
            let [min, max] = mix.duplicate_delay_ms;
            let delay = Duration::from_millis(self.rng.gen_range(min..=max));
            self.defer(Planned {
                at: at + delay,
                topic: Topic::Orders,
                key: order_id.clone().into_bytes(),
                value: value.clone(),
                note: Note::Duplicate { seq },
            });
        }
        if cancelled {
            let [min, max] = mix.cancel_delay_ms;
            let cancel_at = at + Duration::from_millis(self.rng.gen_range(min..=max));
            let cancel = OrderCancelled {
                order_id: order_id.clone().into(),
                cancelled_at: Some(self.placed_at(cancel_at).into()),
                reason: Some("customer_request".into()),
            };
            self.defer(Planned {
                at: cancel_at,
                topic: Topic::Orders,
                key: order_id.clone().into_bytes(),
                value: to_json(&Tagged {
                    kind: "order_cancelled",
                    event: &cancel,
                }),
                note: Note::Cancel { seq },
            });
        }
        Planned {
            at,
            topic: Topic::Orders,
            key: order_id.into_bytes(),
            value,
            note: Note::Placed { seq, order: sent },
        }
    }

    /// A valid order: every check of the contract passes; hot orders have
    /// one line for a hot SKU, within its per-customer limit.
    fn valid_order(&mut self, order_id: &str, at: Duration, hot: bool) -> OrderPlaced<'static> {
        let mix = self.scenario.mix.clone();
        let currency = self.scenario.catalog.currencies
            [self.currency_popularity.sample(&mut self.rng)]
        .clone();
        let n_lines = self.rng.gen_range(1..=mix.max_lines);
        let n_addresses = self.rng.gen_range(1..=mix.max_addresses.min(n_lines));
        let mut keys: Vec<&str> = ADDRESS_KEYS.to_vec();
        keys.shuffle(&mut self.rng);
        keys.truncate(n_addresses);
        let addresses: BTreeMap<String, Address> = keys
            .iter()
            .map(|k| (k.to_string(), people::address(&mut self.rng)))
            .collect();
        let lines: Vec<Line> = (0..n_lines)
            .map(|i| {
                let (sku, quantity) = if hot && i == 0 {
                    let sku = self
                        .catalog
                        .hot
                        .choose(&mut self.rng)
                        .expect("hot SKUs exist when hot_share > 0");
                    let limit = sku.max_per_customer.unwrap_or(1);
                    (sku, self.rng.gen_range(1..=limit))
                } else {
                    let rank = self.popularity.sample(&mut self.rng);
                    (
                        &self.catalog.ordinary[rank],
                        self.rng.gen_range(1..=MAX_ORDINARY_QUANTITY),
                    )
                };
                Line {
                    sku: sku.sku.clone().into(),
                    quantity: i64::from(quantity),
                    unit_price_minor: sku.prices[&currency],
                    ship_to: keys[i % n_addresses].to_string().into(),
                }
            })
            .collect();
        let customer = self.rng.gen_range(0..mix.customers);
        let mut order = OrderPlaced {
            order_id: order_id.to_string().into(),
            customer_id: Some(format!("c-{customer}").into()),
            placed_at: Some(self.placed_at(at).into()),
            currency: Some(currency.into()),
            lines: Some(lines),
            addresses: Some(addresses.into_iter().map(|(k, v)| (k.into(), v)).collect()),
            payments: None,
        };
        self.pay(&mut order);
        order
    }

    /// Payments that add up to the order's total exactly.
    fn pay(&mut self, order: &mut OrderPlaced) {
        let total: i64 = order
            .lines
            .iter()
            .flatten()
            .map(|l| l.quantity * l.unit_price_minor)
            .sum();
        let n = (self.rng.gen_range(1..=self.scenario.mix.max_payments) as i64).min(total.max(1));
        let mut left = total;
        let payments = (0..n)
            .map(|i| {
                let amount = if i == n - 1 {
                    left
                } else {
                    // Leave at least 1 for each payment still to come.
                    self.rng.gen_range(1..=((left - (n - 1 - i)) / 2).max(1))
                };
                left -= amount;
                // Cash on delivery only at its own share (see `fate`).
                let method = self
                    .gateway_methods()
                    .choose(&mut self.rng)
                    .expect("the processor accepts some payment method")
                    .clone();
                let needs_authorization =
                    !self.limits.methods_without_authorization.contains(&method);
                Payment {
                    method: method.into(),
                    amount_minor: amount,
                    authorization_id: needs_authorization
                        .then(|| format!("auth-{}-{i}", order.order_id).into()),
                }
            })
            .collect();
        order.payments = Some(payments);
    }

    /// The payment methods captured through the gateway (all of them, if
    /// the processor has none but methods without authorization).
    fn gateway_methods(&self) -> Vec<String> {
        let limits = &self.limits;
        let through_gateway: Vec<String> = limits
            .payment_methods
            .iter()
            .filter(|m| !limits.methods_without_authorization.contains(m))
            .cloned()
            .collect();
        if through_gateway.is_empty() {
            limits.payment_methods.clone()
        } else {
            through_gateway
        }
    }

    /// What the gateway will do with a valid order's first payment, by the
    /// shares of `mix.payments`.
    fn fate(&mut self) -> PaymentFate {
        let shares = &self.scenario.mix.payments;
        let u = self.rng.gen::<f64>();
        let mut bound = 0.0;
        for (share, fate) in [
            (shares.decline_share, PaymentFate::Declined),
            (shares.flaky_1_share, PaymentFate::Flaky(1)),
            (shares.flaky_2_share, PaymentFate::Flaky(2)),
            (shares.down_share, PaymentFate::Down),
            (shares.cash_on_delivery_share, PaymentFate::CashOnDelivery),
        ] {
            bound += share;
            if u < bound {
                return fate;
            }
        }
        PaymentFate::Captured
    }

    /// Gives the order's first payment the authorization (or the method)
    /// of `fate`. Returns the fate it got: cash on delivery needs a method
    /// the processor accepts without authorization, else it is `Captured`.
    fn apply_fate(&self, order: &mut OrderPlaced, fate: PaymentFate) -> PaymentFate {
        let Some(first) = order.payments.as_mut().and_then(|p| p.first_mut()) else {
            return PaymentFate::Captured;
        };
        if fate == PaymentFate::CashOnDelivery {
            let limits = &self.limits;
            let Some(method) = limits
                .methods_without_authorization
                .iter()
                .find(|m| limits.payment_methods.contains(m))
            else {
                return PaymentFate::Captured;
            };
            first.method = method.clone().into();
            first.authorization_id = None;
            return fate;
        }
        let marked = match (fate.marker(), &first.authorization_id) {
            (Some(marker), Some(authorization)) => format!("{authorization}-{marker}"),
            // No authorization to mark (the processor takes this method
            // without one): captured without a command.
            _ => return PaymentFate::Captured,
        };
        first.authorization_id = Some(marked.into());
        fate
    }

    /// Changes a valid order so the processor must reject it for `reason`
    /// and for no earlier reason of the contract's table. Returns a field to
    /// drop from the JSON, for orders that must lack one.
    fn spoil(&mut self, order: &mut OrderPlaced, reason: Reason) -> Option<&'static str> {
        let limits = self.limits.clone();
        let lines = order.lines.as_mut().expect("valid orders have lines");
        match reason {
            Reason::InvalidOrder => {
                let kind = self.invalid_turn % INVALID_KINDS;
                self.invalid_turn += 1;
                let first_address = order
                    .addresses
                    .as_mut()
                    .and_then(|a| a.values_mut().next())
                    .expect("valid orders have an address");
                match kind {
                    0 => lines.clear(),
                    1 => lines[0].quantity = 0,
                    2 => lines[0].quantity = limits.max_quantity + 1,
                    3 => first_address.country = "XX".into(),
                    4 => first_address.name = "é".repeat(limits.max_text_chars + 1).into(),
                    5 => first_address.city = String::new().into(),
                    6 => lines[0].ship_to = "nowhere".into(),
                    7 => order.placed_at = Some("yesterday".into()),
                    8 => {
                        let payment = order.payments.as_ref().expect("paid")[0].clone();
                        order.payments = Some(vec![payment; limits.max_payments + 1]);
                    }
                    _ => return Some("customer_id"),
                }
            }
            Reason::UnknownCurrency => {
                order.currency = Some(
                    BAD_CURRENCIES
                        .choose(&mut self.rng)
                        .expect("not empty")
                        .to_string()
                        .into(),
                );
            }
            Reason::UnknownSku => {
                let i = self.rng.gen_range(0..lines.len());
                lines[i].sku = format!("{}-GHOST-{}", self.tag, self.rng.gen_range(0..1000)).into();
            }
            Reason::PriceMismatch => {
                if self.rng.gen_bool(0.5) {
                    let i = self.rng.gen_range(0..lines.len());
                    lines[i].unit_price_minor += 1;
                } else {
                    // A real currency, but not one the catalog has prices in.
                    order.currency = Some(self.unpriced_currency.clone().into());
                }
                self.pay(order);
            }
            Reason::PaymentMismatch => {
                let payments = order.payments.as_mut().expect("paid");
                match self.rng.gen_range(0..4) {
                    0 => payments[0].amount_minor += 1,
                    1 => {
                        payments[0].method = DECLINED_METHODS
                            .choose(&mut self.rng)
                            .expect("not empty")
                            .to_string()
                            .into()
                    }
                    2 => {
                        payments[0].method = "card".into();
                        payments[0].authorization_id = None;
                    }
                    _ => payments.clear(),
                }
            }
            Reason::CustomerLimitExceeded => {
                let sku = self
                    .catalog
                    .hot
                    .choose(&mut self.rng)
                    .expect("validated: hot SKUs exist");
                let limit = sku.max_per_customer.expect("hot SKUs have a limit");
                let currency = order
                    .currency
                    .clone()
                    .expect("valid orders have a currency");
                lines[0].sku = sku.sku.clone().into();
                lines[0].quantity = i64::from(limit) + 1;
                lines[0].unit_price_minor = sku.prices[currency.as_ref()];
                self.pay(order);
            }
            Reason::OutOfStock => {
                let sku = self
                    .catalog
                    .sold_out
                    .choose(&mut self.rng)
                    .expect("validated: sold-out SKUs exist");
                let currency = order
                    .currency
                    .clone()
                    .expect("valid orders have a currency");
                let i = self.rng.gen_range(0..lines.len());
                lines[i].sku = sku.sku.clone().into();
                lines[i].unit_price_minor = sku.prices[currency.as_ref()];
                self.pay(order);
            }
        }
        None
    }

    /// A record that is not an order event, with a key unique to it.
    fn malformed(&mut self, at: Duration, kind: DlqReason) -> Planned {
        let key = format!("{}-m{:08}", self.tag, self.next_malformed);
        self.next_malformed += 1;
        let sample = self.valid_order(&key, at, false);
        let valid = placed_json(&sample);
        // The scenario weighs these five kinds; anything else is keyed wrong.
        let kind = match kind {
            DlqReason::NotJson
            | DlqReason::NotUtf8
            | DlqReason::TooLarge
            | DlqReason::MissingOrderId => kind,
            _ => DlqReason::KeyMismatch,
        };
        let value = match kind {
            DlqReason::NotJson => {
                let text = String::from_utf8(valid).expect("serde_json writes UTF-8");
                let mut cut = text.len() / 2;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.as_bytes()[..cut].to_vec()
            }
            DlqReason::NotUtf8 => {
                let mut bytes = valid;
                let at = bytes.len() / 2;
                bytes.splice(at..at, [0xff, 0xfe]);
                bytes
            }
            DlqReason::TooLarge => {
                let mut json: serde_json::Value =
                    serde_json::from_slice(&valid).expect("just serialized");
                json["padding"] = "x"
                    .repeat(self.limits.max_record_bytes + TOO_LARGE_EXCESS_BYTES)
                    .into();
                to_json(&json)
            }
            DlqReason::MissingOrderId => {
                let mut json: serde_json::Value =
                    serde_json::from_slice(&valid).expect("just serialized");
                json.as_object_mut().expect("an object").remove("order_id");
                to_json(&json)
            }
            // The record is keyed by `key`; the order inside names another.
            _ => {
                let mut other = sample;
                other.order_id = format!("{key}-x").into();
                placed_json(&other)
            }
        };
        Planned {
            at,
            topic: Topic::Orders,
            note: Note::Malformed(SentMalformed {
                key: key.clone(),
                expect: kind,
                payload_fingerprint: bytes_fingerprint(&value),
            }),
            key: key.into_bytes(),
            value,
        }
    }
}

impl Iterator for Generator {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        let new_due = (self.clock < self.shape.duration).then_some(self.clock);
        let deferred_due = self.deferred.peek().map(|d| d.0.at.as_secs_f64());
        let take_deferred = match (new_due, deferred_due) {
            (None, None) => return None,
            (Some(new), Some(deferred)) => deferred <= new,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if take_deferred {
            return self.deferred.pop().map(|d| d.0.planned);
        }
        let at = Duration::from_secs_f64(self.clock);
        let planned = self.new_record(at);
        // Poisson arrivals: exponential gaps at the rate due now.
        let u: f64 = self.rng.gen();
        self.clock += -(1.0 - u).ln() / self.shape.rate_at(self.clock);
        Some(planned)
    }
}

fn pick_weighted<T: Copy>(rng: &mut StdRng, weights: &[(T, f64)]) -> T {
    let total: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    let mut u = rng.gen::<f64>() * total;
    for (item, weight) in weights {
        if u < weight.max(0.0) {
            return *item;
        }
        u -= weight.max(0.0);
    }
    weights
        .iter()
        .rev()
        .find(|(_, w)| *w > 0.0)
        .map_or(weights[0].0, |(item, _)| *item)
}

/// Units per SKU of `lines`, sorted by SKU.
fn demand(lines: &[Line]) -> Vec<(String, u32)> {
    let mut units: BTreeMap<&str, u32> = BTreeMap::new();
    for line in lines {
        *units.entry(&line.sku).or_default() += line.quantity.clamp(0, i64::from(u32::MAX)) as u32;
    }
    units
        .into_iter()
        .map(|(sku, n)| (sku.to_string(), n))
        .collect()
}

/// (address key, fingerprint) of every address a line ships to.
fn shipments(order: &OrderPlaced) -> Vec<(String, u64)> {
    let lines = order.lines.as_deref().unwrap_or_default();
    order
        .addresses
        .iter()
        .flatten()
        .filter(|(key, _)| lines.iter().any(|l| &l.ship_to == *key))
        .map(|(key, address)| (key.to_string(), address_fingerprint(address)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, OrderBook, Outcome, Output};
    use crate::inventory::Inventory;
    use crate::loadtest::shape::Phase;
    use crate::order::decode::{decode_order, Decoded};
    use std::collections::HashMap;
    use std::sync::Arc;

    const ORIGIN: OffsetDateTime = time::macros::datetime!(2026-11-23 12:00 UTC);

    fn scenario(seed: u64) -> Scenario {
        let mut s = Scenario::defaults();
        s.load.seed = seed;
        s.load.rate = 200.0;
        s.load.duration_secs = 10.0;
        s.load.burst_at_secs = 3.0;
        s.load.burst_secs = 2.0;
        s.load.tail_secs = 2.0;
        s.catalog.skus = 300;
        s.mix.invalid_share = 0.15;
        s.mix.malformed_share = 0.05;
        s.mix.duplicate_share = 0.1;
        s.mix.cancel_share = 0.1;
        s
    }

    fn run(seed: u64) -> Vec<Planned> {
        Generator::new(&scenario(seed), &Limits::default(), "t1", ORIGIN).collect()
    }

    #[test]
    fn reproducible_from_the_seed() {
        let a = run(7);
        assert_eq!(a, run(7));
        let b = run(8);
        assert_ne!(a.len(), 0);
        assert_ne!(
            a.iter().map(|p| &p.value).collect::<Vec<_>>(),
            b.iter().map(|p| &p.value).collect::<Vec<_>>()
        );
        assert_eq!(
            Catalog::build(&scenario(7), "t1"),
            Catalog::build(&scenario(7), "t1"),
            "the catalog too"
        );
    }

    #[test]
    fn schedule_is_in_time_order_and_follows_the_shape() {
        let planned = run(1);
        assert!(planned.windows(2).all(|w| w[0].at <= w[1].at));
        let shape = Shape::of(&scenario(1));
        let count_in = |from: f64, to: f64| {
            planned
                .iter()
                .filter(|p| matches!(p.note, Note::Placed { .. } | Note::Malformed(_)))
                .filter(|p| (from..to).contains(&p.at.as_secs_f64()))
                .count() as f64
        };
        let warm = count_in(0.0, 3.0) / 3.0;
        let burst = count_in(3.0, 5.0) / 2.0;
        assert!((warm - 200.0).abs() < 40.0, "warm-up rate {warm}");
        assert!((burst - 2000.0).abs() < 250.0, "burst rate {burst}");
        let expected = shape.expected_orders();
        let total = count_in(0.0, 10.0);
        assert!(
            (total - expected).abs() < expected * 0.05,
            "{total} orders, expected {expected}"
        );
        assert_eq!(shape.phase_at(4.0), Phase::Burst);
        assert!(
            shape.rate_at(5.5) < 2000.0 && shape.rate_at(5.5) > 200.0,
            "tail decays"
        );
    }

    #[test]
    fn shares_are_roughly_honoured() {
        let s = scenario(3);
        let planned = run(3);
        let mut intents: HashMap<&'static str, f64> = HashMap::new();
        let (mut new, mut duplicates, mut cancels, mut placed) = (0.0, 0.0, 0.0, 0.0);
        for p in &planned {
            match &p.note {
                Note::Placed { order, .. } => {
                    new += 1.0;
                    placed += 1.0;
                    let key = match order.intent {
                        Intent::Accept => "accept",
                        Intent::Contended => "hot",
                        Intent::Reject(_) => "invalid",
                    };
                    *intents.entry(key).or_default() += 1.0;
                }
                Note::Malformed(_) => {
                    new += 1.0;
                    *intents.entry("malformed").or_default() += 1.0;
                }
                Note::Duplicate { .. } => duplicates += 1.0,
                Note::Cancel { .. } => cancels += 1.0,
                Note::Restock { .. } => {}
            }
        }
        let near = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() < want * 0.25 + 0.005,
                "{what}: {got:.4} vs {want}"
            )
        };
        near(
            intents["malformed"] / new,
            s.mix.malformed_share,
            "malformed",
        );
        near(intents["invalid"] / new, s.mix.invalid_share, "invalid");
        near(intents["hot"] / new, s.mix.hot_share, "hot");
        near(duplicates / placed, s.mix.duplicate_share, "duplicates");
        let valid = intents["accept"] + intents["hot"];
        near(cancels / valid, s.mix.cancel_share, "cancellations");
    }

    /// Runs every planned record through the real engine (no Kafka) and
    /// checks each outcome is the one the generator intended.
    #[test]
    fn the_engine_gives_every_intended_outcome() {
        let limits = Limits::default();
        let generator = Generator::new(&scenario(11), &limits, "t1", ORIGIN);
        let inventory = Arc::new(Inventory::new());
        for sku in generator.catalog().all() {
            inventory.apply(&sku.stock_set()).unwrap();
        }
        let engine = Engine::new(inventory, limits.clone());
        let mut book = OrderBook::new(1_000_000);
        let mut offset: i64 = 0;
        let mut reasons_seen: HashMap<Reason, u64> = HashMap::new();
        let mut dlq_seen: HashMap<DlqReason, u64> = HashMap::new();
        let mut texts_checked = 0;
        for planned in generator {
            if planned.topic == Topic::Inventory {
                let event: InventoryEvent = serde_json::from_slice(&planned.value).unwrap();
                engine.inventory().apply(&event).unwrap();
                continue;
            }
            let mut out = Vec::new();
            let processed = engine.process(
                &mut book,
                {
                    offset += 1;
                    offset
                },
                Some(&planned.key),
                Some(&planned.value),
                ORIGIN,
                &mut out,
            );
            match (&planned.note, processed.outcome) {
                (Note::Placed { order, .. }, outcome) => match (order.intent, outcome) {
                    (Intent::Accept, Outcome::Accepted) => {
                        // Text comes back byte for byte in the fulfillments.
                        for output in &out {
                            if let Output::Fulfillment { payload, .. } = output {
                                let text = std::str::from_utf8(payload).unwrap();
                                assert!(text.contains("address"), "{text}");
                                texts_checked += 1;
                            }
                        }
                    }
                    (Intent::Contended, Outcome::Accepted) => {}
                    (
                        Intent::Contended,
                        Outcome::Rejected(Reason::OutOfStock | Reason::CustomerLimitExceeded),
                    ) => {}
                    (Intent::Reject(want), Outcome::Rejected(got)) if want == got => {
                        *reasons_seen.entry(got).or_default() += 1;
                    }
                    (intent, outcome) => panic!(
                        "{}: intended {intent:?}, engine says {outcome:?}: {}",
                        order.order_id,
                        String::from_utf8_lossy(&planned.value)
                    ),
                },
                (Note::Duplicate { .. }, outcome) => assert_eq!(outcome, Outcome::Duplicate),
                (Note::Cancel { .. }, outcome) => {
                    assert!(
                        matches!(outcome, Outcome::Cancelled | Outcome::CancelIgnored),
                        "{outcome:?}"
                    )
                }
                (Note::Malformed(m), outcome) => {
                    assert_eq!(outcome, Outcome::DeadLetter(m.expect), "{}", m.key);
                    *dlq_seen.entry(m.expect).or_default() += 1;
                }
                (Note::Restock { .. }, _) => unreachable!("inventory records are applied above"),
            }
        }
        assert!(texts_checked > 0);
        for reason in Reason::ALL {
            assert!(
                reasons_seen.get(&reason).is_some_and(|n| *n > 0),
                "no {reason:?} produced: {reasons_seen:?}"
            );
        }
        for kind in [
            DlqReason::NotJson,
            DlqReason::NotUtf8,
            DlqReason::TooLarge,
            DlqReason::MissingOrderId,
            DlqReason::KeyMismatch,
        ] {
            assert!(
                dlq_seen.get(&kind).is_some_and(|n| *n > 0),
                "no {kind:?} produced: {dlq_seen:?}"
            );
        }
    }

    #[test]
    fn malformed_records_decode_as_dead_letters() {
        for planned in run(5) {
            if let Note::Malformed(m) = &planned.note {
                match decode_order(
                    Some(&planned.key),
                    Some(&planned.value),
                    Limits::default().max_record_bytes,
                ) {
                    Decoded::DeadLetter(dead) => assert_eq!(dead.reason, m.expect),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn order_ids_round_trip() {
        let id = Generator::order_id("lt-abc", 42);
        assert_eq!(Generator::order_seq("lt-abc", &id), Some(42));
        assert_eq!(Generator::order_seq("lt-abd", &id), None);
        assert_eq!(Generator::order_seq("lt-abc", "lt-abc-m00000001"), None);
    }
}
