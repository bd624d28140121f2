//! A flash-sale scenario: the load shape, the catalog and the order mix.
//!
//! Scenarios are TOML. `loadtest/flash-sale.toml` is compiled in as the
//! defaults; a scenario file is layered over it key by key, then flags
//! (`--rate`, `--duration`, ...) override both. Every value is checked, and
//! every error names the file and the field, e.g.
//! `loadtest/x.toml: mix.hot_share must be between 0 and 1, got 1.5`.

use crate::order::codes;
use crate::order::validate::Limits;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Table;

/// The defaults, compiled into the binary so `loadtest` runs with no file.
pub const DEFAULT_TOML: &str = include_str!("../../loadtest/flash-sale.toml");
/// The scenario of `orderflow demo`, layered over the defaults.
pub const DEMO_TOML: &str = include_str!("../../loadtest/demo.toml");
/// Largest burst multiplier accepted: beyond it a sale is a spike test.
pub const MAX_BURST_MULTIPLIER: f64 = 1000.0;
/// Largest number of ordinary SKUs: the Zipf sampler keeps a table per SKU.
pub const MAX_SKUS: usize = 1_000_000;
/// Largest `payments.max_attempts`: the processor's own bound.
pub const MAX_ATTEMPTS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub load: Load,
    pub catalog: Catalog,
    pub mix: Mix,
    pub payments: Payments,
    pub topics: TopicPlan,
}

/// What the sale expects of the processor's payments: whether the audit
/// checks their ends, and the retry policy the processor runs with (the
/// demo sets it; `orderflow run` must be given the same `[payments]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payments {
    /// Check that every accepted order's payments reach their end.
    pub audit: bool,
    /// `payments.retry_initial_ms` of the processor.
    pub retry_initial_ms: u64,
    /// `payments.retry_max_ms` of the processor.
    pub retry_max_ms: u64,
    /// `payments.max_attempts` of the processor.
    pub max_attempts: u32,
}

impl Payments {
    /// The longest a payment can take from its first attempt to its last
    /// (every backoff at its most: a tenth of jitter on top), so the drain
    /// waits for a `down` authorization to reach attention.
    pub fn retry_span(&self) -> std::time::Duration {
        let mut total: u64 = 0;
        for failed in 1..self.max_attempts {
            let doublings = (failed - 1).min(63);
            let base = self
                .retry_initial_ms
                .saturating_mul(1u64 << doublings)
                .min(self.retry_max_ms);
            total = total.saturating_add(base.saturating_add(base / 10).min(self.retry_max_ms));
        }
        std::time::Duration::from_millis(total)
    }
}

/// The shape of the sale in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Base rate, orders per second: warm-up, and what the tail decays to.
    pub rate: f64,
    pub duration_secs: f64,
    /// T0, when the sale opens, from the first order.
    pub burst_at_secs: f64,
    pub burst_secs: f64,
    /// The burst runs at this many times the base rate.
    pub burst_multiplier: f64,
    /// Time constant of the decay from the burst rate back to the base.
    pub tail_secs: f64,
    /// How long to wait after the last order for outstanding outcomes.
    pub drain_timeout_secs: f64,
    /// How long to wait for the processor to answer the first probe order.
    pub probe_timeout_secs: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Ordinary SKUs, picked with Zipf-skewed popularity.
    pub skus: usize,
    pub zipf_exponent: f64,
    /// Units of each ordinary SKU.
    pub stock: i64,
    /// Flash-sale SKUs: small stock, a per-customer limit, a restock.
    pub hot_skus: usize,
    pub hot_stock: i64,
    pub hot_max_per_customer: u32,
    /// Units added to each hot SKU in the middle of the burst.
    pub hot_restock: i64,
    /// SKUs announced with no stock.
    pub sold_out_skus: usize,
    /// ISO 4217 codes every SKU has a catalog price in.
    pub currencies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Share of new orders with a line for a hot SKU.
    pub hot_share: f64,
    /// Share of new orders built to be rejected (reasons weighted below).
    pub invalid_share: f64,
    /// Share of new records that are not order events at all.
    pub malformed_share: f64,
    /// Share of readable orders sent a second time (same key, same bytes).
    pub duplicate_share: f64,
    /// Share of valid orders cancelled shortly after they are placed.
    pub cancel_share: f64,
    pub max_lines: usize,
    pub max_addresses: usize,
    pub max_payments: usize,
    /// Size of the customer pool; repeat customers meet per-customer limits.
    pub customers: u64,
    /// [min, max] delay of a cancellation after its order.
    pub cancel_delay_ms: [u64; 2],
    /// [min, max] delay of a duplicate after its order.
    pub duplicate_delay_ms: [u64; 2],
    pub reasons: ReasonWeights,
    pub malformed: MalformedWeights,
    pub payments: PaymentShares,
}

/// Shares of valid orders (not cancelled by their customer) whose first
/// payment the simulated gateway declines, fails once or twice before
/// capturing, always fails, or that is paid cash on delivery. The rest are
/// captured at once. Each in 0..1, at most 1 together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentShares {
    pub decline_share: f64,
    pub flaky_1_share: f64,
    pub flaky_2_share: f64,
    pub down_share: f64,
    pub cash_on_delivery_share: f64,
}

/// Relative weights of each rejection reason among invalid orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonWeights {
    pub invalid_order: f64,
    pub unknown_currency: f64,
    pub unknown_sku: f64,
    pub price_mismatch: f64,
    pub payment_mismatch: f64,
    pub customer_limit_exceeded: f64,
    pub out_of_stock: f64,
}

/// Relative weights of each kind of malformed record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MalformedWeights {
    pub not_json: f64,
    pub not_utf8: f64,
    pub too_large: f64,
    pub missing_order_id: f64,
    pub key_mismatch: f64,
}

/// Partition counts of the topics loadtest creates when they are missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPlan {
    pub create: bool,
    pub replication: i32,
    pub orders_partitions: i32,
    pub inventory_partitions: i32,
    pub status_partitions: i32,
    pub fulfillments_partitions: i32,
    pub dlq_partitions: i32,
}

/// Flag values that override the scenario file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub rate: Option<f64>,
    /// A new duration scales the whole shape (T0, burst, tail) with it.
    pub duration_secs: Option<f64>,
    pub skus: Option<usize>,
    pub seed: Option<u64>,
    pub drain_timeout_secs: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

/// One bad value: in which file, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.file, self.field, self.message)
    }
}

const BUILT_IN: &str = "built-in loadtest/flash-sale.toml";

impl Scenario {
    /// The built-in defaults.
    pub fn defaults() -> Scenario {
        Self::layered(&[], &Overrides::default()).expect("loadtest/flash-sale.toml is valid")
    }

    /// The scenario of `orderflow demo`.
    pub fn demo() -> Scenario {
        Self::layered(
            &[("built-in loadtest/demo.toml", DEMO_TOML)],
            &Overrides::default(),
        )
        .expect("loadtest/demo.toml is valid")
    }

    /// The defaults, the file (if any), then the flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Scenario, ScenarioError> {
        let Some(path) = file else {
            return Self::layered(&[], overrides);
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: name.clone(),
            source,
        })?;
        Self::layered(&[(name.as_str(), text.as_str())], overrides)
    }

    /// Layers `(file name, TOML text)` over the defaults, applies the flags
    /// and checks every value.
    pub fn layered(
        files: &[(&str, &str)],
        overrides: &Overrides,
    ) -> Result<Scenario, ScenarioError> {
        let mut table: Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ScenarioError::Parse {
                    file: BUILT_IN.into(),
                    message: e.to_string(),
                })?;
        let mut last_file = BUILT_IN.to_string();
        for (name, text) in files {
            let layer: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ScenarioError::Parse {
                    file: name.to_string(),
                    message: e.to_string(),
                })?;
            merge(&mut table, layer);
            last_file = name.to_string();
        }
        // Type errors (a string for a number, an unknown key) name the field
        // in toml's message; they can only come from the last file layered,
        // since the defaults are checked by a unit test.
        let mut scenario: Scenario =
            Scenario::deserialize(table).map_err(|e| ScenarioError::Parse {
                file: last_file.clone(),
                message: e.to_string(),
            })?;
        scenario.apply(overrides);
        let errors = scenario.check(&last_file);
        if errors.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid(errors))
        }
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(rate) = overrides.rate {
            self.load.rate = rate;
        }
        if let Some(duration) = overrides.duration_secs {
            if self.load.duration_secs > 0.0 && duration > 0.0 {
                let scale = duration / self.load.duration_secs;
                self.load.burst_at_secs *= scale;
                self.load.burst_secs *= scale;
                self.load.tail_secs *= scale;
            }
            self.load.duration_secs = duration;
        }
        if let Some(skus) = overrides.skus {
            self.catalog.skus = skus;
        }
        if let Some(seed) = overrides.seed {
            self.load.seed = seed;
        }
        if let Some(drain) = overrides.drain_timeout_secs {
            self.load.drain_timeout_secs = drain;
        }
    }

    /// Every value out of range, each naming `file` and the field.
    pub fn check(&self, file: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                file: file.to_string(),
                field: field.to_string(),
                message,
            })
        };
        let load = &self.load;
        for (field, value, min) in [
            ("load.rate", load.rate, f64::MIN_POSITIVE),
            ("load.duration_secs", load.duration_secs, f64::MIN_POSITIVE),
            ("load.burst_at_secs", load.burst_at_secs, 0.0),
            ("load.burst_secs", load.burst_secs, 0.0),
            ("load.burst_multiplier", load.burst_multiplier, 1.0),
            ("load.tail_secs", load.tail_secs, 0.0),
            ("load.drain_timeout_secs", load.drain_timeout_secs, 0.0),
            (
                "load.probe_timeout_secs",
                load.probe_timeout_secs,
                f64::MIN_POSITIVE,
            ),
        ] {
            if !value.is_finite() || value < min {
                let bound = if min == f64::MIN_POSITIVE {
                    "greater than 0".to_string()
                } else {
                    format!("at least {min}")
                };
                fail(field, format!("must be a number {bound}, got {value}"));
            }
        }
        if load.burst_multiplier > MAX_BURST_MULTIPLIER {
            fail(
                "load.burst_multiplier",
                format!(
                    "must be at most {MAX_BURST_MULTIPLIER}, got {}",
                    load.burst_multiplier
                ),
            );
        }
        let catalog = &self.catalog;
        if catalog.skus == 0 || catalog.skus > MAX_SKUS {
            fail(
                "catalog.skus",
                format!("must be 1 to {MAX_SKUS}, got {}", catalog.skus),
            );
        }
        if !catalog.zipf_exponent.is_finite() || catalog.zipf_exponent < 0.0 {
            fail(
                "catalog.zipf_exponent",
                format!("must be at least 0, got {}", catalog.zipf_exponent),
            );
        }
        for (field, value) in [
            ("catalog.stock", catalog.stock),
            ("catalog.hot_stock", catalog.hot_stock),
            ("catalog.hot_restock", catalog.hot_restock),
        ] {
            if value < 0 {
                fail(field, format!("must be at least 0, got {value}"));
            }
        }
        if catalog.hot_max_per_customer == 0 {
            fail(
                "catalog.hot_max_per_customer",
                "must be at least 1, got 0".into(),
            );
        }
        if catalog.currencies.is_empty() {
            fail(
                "catalog.currencies",
                "must name at least one currency".into(),
            );
        }
        for (i, code) in catalog.currencies.iter().enumerate() {
            if !codes::is_currency(code) {
                fail(
                    &format!("catalog.currencies[{i}]"),
                    format!("{code:?} is not an ISO 4217 code"),
                );
            } else if catalog.currencies[..i].contains(code) {
                fail(
                    &format!("catalog.currencies[{i}]"),
                    format!("{code} is listed twice"),
                );
            }
        }
        let mix = &self.mix;
        for (field, value) in [
            ("mix.hot_share", mix.hot_share),
            ("mix.invalid_share", mix.invalid_share),
            ("mix.malformed_share", mix.malformed_share),
            ("mix.duplicate_share", mix.duplicate_share),
            ("mix.cancel_share", mix.cancel_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                fail(field, format!("must be between 0 and 1, got {value}"));
            }
        }
        let pay = &mix.payments;
        let payment_shares = [
            ("mix.payments.decline_share", pay.decline_share),
            ("mix.payments.flaky_1_share", pay.flaky_1_share),
            ("mix.payments.flaky_2_share", pay.flaky_2_share),
            ("mix.payments.down_share", pay.down_share),
            (
                "mix.payments.cash_on_delivery_share",
                pay.cash_on_delivery_share,
            ),
        ];
        for (field, value) in payment_shares {
            if !(0.0..=1.0).contains(&value) {
                fail(field, format!("must be between 0 and 1, got {value}"));
            }
        }
        let sum: f64 = payment_shares.iter().map(|(_, v)| v).sum();
        if sum > 1.0 {
            fail(
                "mix.payments",
                format!("shares must add up to at most 1, got {sum:.3}"),
            );
        }
        let payments = &self.payments;
        if payments.retry_initial_ms == 0 {
            fail(
                "payments.retry_initial_ms",
                "must be at least 1, got 0".into(),
            );
        }
        if payments.retry_max_ms < payments.retry_initial_ms {
            fail(
                "payments.retry_max_ms",
                format!(
                    "must be at least payments.retry_initial_ms ({}), got {}",
                    payments.retry_initial_ms, payments.retry_max_ms
                ),
            );
        }
        if !(1..=MAX_ATTEMPTS).contains(&payments.max_attempts) {
            fail(
                "payments.max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS}, got {}", payments.max_attempts),
            );
        }
        let new_order_shares = mix.hot_share + mix.invalid_share + mix.malformed_share;
        if new_order_shares > 1.0 {
            fail(
                "mix.hot_share",
                format!(
                    "+ invalid_share + malformed_share must be at most 1, got {new_order_shares:.3}"
                ),
            );
        }
        if mix.hot_share > 0.0 && catalog.hot_skus == 0 {
            fail(
                "mix.hot_share",
                "is above 0 but catalog.hot_skus is 0".into(),
            );
        }
        for (field, value) in [
            ("mix.max_lines", mix.max_lines),
            ("mix.max_addresses", mix.max_addresses),
            ("mix.max_payments", mix.max_payments),
        ] {
            if value == 0 {
                fail(field, "must be at least 1, got 0".into());
            }
        }
        if mix.customers == 0 {
            fail("mix.customers", "must be at least 1, got 0".into());
        }
        for (field, [min, max]) in [
            ("mix.cancel_delay_ms", mix.cancel_delay_ms),
            ("mix.duplicate_delay_ms", mix.duplicate_delay_ms),
        ] {
            if min > max {
                fail(
                    field,
                    format!("must be [min, max] with min <= max, got [{min}, {max}]"),
                );
            }
        }
        let reasons = mix.reasons.weights();
        for (reason, weight) in &reasons {
            if !weight.is_finite() || *weight < 0.0 {
                fail(
                    &format!("mix.reasons.{}", reason.as_str()),
                    format!("must be at least 0, got {weight}"),
                );
            }
        }
        if mix.invalid_share > 0.0 && reasons.iter().all(|(_, w)| *w <= 0.0) {
            fail(
                "mix.reasons",
                "needs a weight above 0 when mix.invalid_share is above 0".into(),
            );
        }
        let weight_of = |wanted| {
            reasons
                .iter()
                .find(|(r, _)| *r == wanted)
                .map_or(0.0, |(_, w)| *w)
        };
        if weight_of(crate::order::Reason::CustomerLimitExceeded) > 0.0 && catalog.hot_skus == 0 {
            fail(
                "mix.reasons.customer_limit_exceeded",
                "needs catalog.hot_skus of at least 1 (the limited SKUs)".into(),
            );
        }
        if weight_of(crate::order::Reason::OutOfStock) > 0.0 && catalog.sold_out_skus == 0 {
            fail(
                "mix.reasons.out_of_stock",
                "needs catalog.sold_out_skus of at least 1".into(),
            );
        }
        let malformed = mix.malformed.weights();
        for (kind, weight) in &malformed {
            if !weight.is_finite() || *weight < 0.0 {
                fail(
                    &format!("mix.malformed.{}", kind.as_str()),
                    format!("must be at least 0, got {weight}"),
                );
            }
        }
        if mix.malformed_share > 0.0 && malformed.iter().all(|(_, w)| *w <= 0.0) {
            fail(
                "mix.malformed",
                "needs a weight above 0 when mix.malformed_share is above 0".into(),
            );
        }
        let topics = &self.topics;
        for (field, value) in [
            ("topics.replication", topics.replication),
            ("topics.orders_partitions", topics.orders_partitions),
            ("topics.inventory_partitions", topics.inventory_partitions),
            ("topics.status_partitions", topics.status_partitions),
            (
                "topics.fulfillments_partitions",
                topics.fulfillments_partitions,
            ),
            ("topics.dlq_partitions", topics.dlq_partitions),
        ] {
            if value < 1 {
                fail(field, format!("must be at least 1, got {value}"));
            }
        }
        if topics.status_partitions < topics.orders_partitions {
            fail(
                "topics.status_partitions",
                format!(
                    "must be at least topics.orders_partitions ({}), got {}: each orders \
                     partition writes its statuses to the status partition of the same number",
                    topics.orders_partitions, topics.status_partitions
                ),
            );
        }
        errors
    }

    /// Checks the scenario against the processor's limits, which the
    /// generator's valid orders must stay within.
    pub fn check_limits(&self, limits: &Limits, file: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                file: file.to_string(),
                field: field.to_string(),
                message,
            })
        };
        for (field, ours, limit) in [
            ("max_lines", self.mix.max_lines, limits.max_lines),
            (
                "max_addresses",
                self.mix.max_addresses,
                limits.max_addresses,
            ),
            ("max_payments", self.mix.max_payments, limits.max_payments),
        ] {
            if ours > limit {
                let message = format!("is {ours} but the processor's limits.{field} is {limit}");
                fail(&format!("mix.{field}"), message);
            }
        }
        if i64::from(self.catalog.hot_max_per_customer) >= limits.max_quantity {
            fail(
                "catalog.hot_max_per_customer",
                format!(
                    "must be below the processor's limits.max_quantity ({}), so an order can exceed it",
                    limits.max_quantity
                ),
            );
        }
        errors
    }

    /// The highest rate of the sale, orders per second.
    pub fn peak_rate(&self) -> f64 {
        self.load.rate * self.load.burst_multiplier
    }
}

impl ReasonWeights {
    pub fn weights(&self) -> [(crate::order::Reason, f64); 7] {
        use crate::order::Reason::*;
        [
            (InvalidOrder, self.invalid_order),
            (UnknownCurrency, self.unknown_currency),
            (UnknownSku, self.unknown_sku),
            (PriceMismatch, self.price_mismatch),
            (PaymentMismatch, self.payment_mismatch),
            (CustomerLimitExceeded, self.customer_limit_exceeded),
            (OutOfStock, self.out_of_stock),
        ]
    }
}

impl MalformedWeights {
    pub fn weights(&self) -> [(crate::order::decode::DlqReason, f64); 5] {
        use crate::order::decode::DlqReason::*;
        [
            (NotJson, self.not_json),
            (NotUtf8, self.not_utf8),
            (TooLarge, self.too_large),
            (MissingOrderId, self.missing_order_id),
            (KeyMismatch, self.key_mismatch),
        ]
    }
}

/// Merges `layer` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut Table, layer: Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(new)) => merge(existing, new),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The scenario files shipped in `loadtest/`, for docs and tests.
pub fn shipped_files() -> Vec<PathBuf> {
    ["flash-sale.toml", "smoke.toml", "demo.toml"]
        .iter()
        .map(|f| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("loadtest")
                .join(f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_shipped_files_are_valid() {
        let defaults = Scenario::defaults();
        assert_eq!(defaults.name, "flash-sale");
        assert!(defaults.check_limits(&Limits::default(), "x").is_empty());
        for file in shipped_files() {
            let scenario = Scenario::load(Some(&file), &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(scenario.check_limits(&Limits::default(), "x").is_empty());
        }
        assert_eq!(Scenario::demo().name, "demo");
    }

    #[test]
    fn a_file_changes_only_its_keys() {
        let s = Scenario::layered(&[("s.toml", "[load]\nrate = 7.0\n")], &Overrides::default())
            .unwrap();
        assert_eq!(s.load.rate, 7.0);
        assert_eq!(s.catalog, Scenario::defaults().catalog);
    }

    #[test]
    fn flags_override_and_duration_scales_the_shape() {
        let d = Scenario::defaults();
        let s = Scenario::layered(
            &[],
            &Overrides {
                rate: Some(9.0),
                duration_secs: Some(d.load.duration_secs / 2.0),
                skus: Some(10),
                seed: Some(7),
                drain_timeout_secs: Some(1.0),
            },
        )
        .unwrap();
        assert_eq!((s.load.rate, s.catalog.skus, s.load.seed), (9.0, 10, 7));
        assert_eq!(s.load.burst_at_secs, d.load.burst_at_secs / 2.0);
        assert_eq!(s.load.drain_timeout_secs, 1.0);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let bad_type = Scenario::layered(
            &[("bad.toml", "[load]\nrate = \"fast\"\n")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad_type.contains("bad.toml") && bad_type.contains("rate"),
            "{bad_type}"
        );
        let unknown = Scenario::layered(
            &[("bad.toml", "[mix]\nhot_shar = 0.1\n")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("bad.toml") && unknown.contains("hot_shar"),
            "{unknown}"
        );
        let ranges = Scenario::layered(
            &[(
                "bad.toml",
                "[mix]\nhot_share = 1.5\n[catalog]\ncurrencies = [\"EURO\"]\n[topics]\norders_partitions = 0\n",
            )],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        for want in [
            "bad.toml: mix.hot_share must be between 0 and 1, got 1.5",
            "bad.toml: catalog.currencies[0] \"EURO\" is not an ISO 4217 code",
            "bad.toml: topics.orders_partitions must be at least 1, got 0",
        ] {
            assert!(ranges.contains(want), "{ranges}");
        }
        let missing = Scenario::load(
            Some(Path::new("/nonexistent/s.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("/nonexistent/s.toml"), "{missing}");
    }

    #[test]
    fn limits_are_checked() {
        let mut s = Scenario::defaults();
        s.mix.max_lines = 500;
        let errors = s.check_limits(&Limits::default(), "f.toml");
        assert_eq!(errors.len(), 1);
        assert!(errors[0]
            .to_string()
            .starts_with("f.toml: mix.max_lines is 500"));
    }
}
