//! The catalog of a run: ordinary SKUs with Zipf-skewed popularity, a few
//! hot flash-sale SKUs with little stock and a per-customer limit, and
//! sold-out SKUs; prices in every currency of the scenario. Pure and
//! reproducible from the scenario's seed.

use super::generator::to_json;
use super::scenario::Scenario;
use crate::order::InventoryEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// Catalog prices in EUR cents; other currencies are converted from it.
const EUR_PRICE_RANGE_MINOR: std::ops::RangeInclusive<i64> = 199..=49_999;
/// Stock of the SKUs used only by probe orders: never the constraint.
pub const PROBE_STOCK: i64 = 1_000_000_000;
/// The catalog's stream of the seeded generator, apart from the orders'.
const CATALOG_STREAM: u64 = 0x00CA_7A10;

/// Zipf's law over ranks `0..n`: rank k is picked with weight 1/(k+1)^s.
/// Sampling inverts the cumulative table with a binary search.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, exponent: f64) -> Zipf {
        assert!(n > 0, "Zipf needs at least one rank");
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().expect("at least one rank");
        let u = rng.gen::<f64>() * total;
        self.cumulative
            .partition_point(|c| *c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// How a SKU takes part in the sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkuKind {
    Ordinary,
    Hot,
    SoldOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku {
    pub sku: String,
    pub kind: SkuKind,
    pub stock: i64,
    pub prices: BTreeMap<String, i64>,
    pub max_per_customer: Option<u32>,
}

impl Sku {
    pub fn stock_set(&self) -> InventoryEvent {
        InventoryEvent::StockSet {
            sku: self.sku.clone(),
            available: self.stock,
            prices: self.prices.clone(),
            max_per_customer: self.max_per_customer,
        }
    }
}

/// The SKUs of one run, all named after the run tag so runs against a
/// long-lived processor never share stock or per-customer counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// By popularity: index 0 is the most popular.
    pub ordinary: Vec<Sku>,
    pub hot: Vec<Sku>,
    pub sold_out: Vec<Sku>,
}

impl Catalog {
    pub fn build(scenario: &Scenario, tag: &str) -> Catalog {
        let mut rng = StdRng::seed_from_u64(scenario.load.seed ^ CATALOG_STREAM);
        let c = &scenario.catalog;
        let mut sku = |name: String, kind, stock, max_per_customer| {
            let eur = rng.gen_range(EUR_PRICE_RANGE_MINOR);
            Sku {
                sku: name,
                kind,
                stock,
                prices: c
                    .currencies
                    .iter()
                    .map(|code| (code.clone(), convert(eur, code)))
                    .collect(),
                max_per_customer,
            }
        };
        let hot = (0..c.hot_skus)
            .map(|i| {
                sku(
                    format!("{tag}-HOT-{i}"),
                    SkuKind::Hot,
                    c.hot_stock,
                    Some(c.hot_max_per_customer),
                )
            })
            .collect();
        let sold_out = (0..c.sold_out_skus)
            .map(|i| sku(format!("{tag}-SOLDOUT-{i}"), SkuKind::SoldOut, 0, None))
            .collect();
        let ordinary = (0..c.skus)
            .map(|i| {
                sku(
                    format!("{tag}-SKU-{i:06}"),
                    SkuKind::Ordinary,
                    c.stock,
                    None,
                )
            })
            .collect();
        Catalog {
            ordinary,
            hot,
            sold_out,
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Sku> {
        self.hot.iter().chain(&self.sold_out).chain(&self.ordinary)
    }

    /// `(key, value)` of every `stock_set`, hot SKUs first.
    pub fn stock_set_records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.all()
            .map(|sku| (sku.sku.clone().into_bytes(), to_json(&sku.stock_set())))
            .collect()
    }
}

/// Converts a price in EUR cents to minor units of `currency`, with
/// rounded rates; integer arithmetic only (the contract has no floats).
fn convert(eur_minor: i64, currency: &str) -> i64 {
    // (code, numerator, denominator): minor units of the currency per EUR cent.
    const RATES: [(&str, i64, i64); 9] = [
        ("EUR", 1, 1),
        ("USD", 108, 100),
        ("GBP", 85, 100),
        ("CHF", 95, 100),
        ("JPY", 16, 10),  // no minor unit: 1 EUR = 160 JPY
        ("KRW", 145, 10), // no minor unit: 1 EUR = 1450 KRW
        ("INR", 90, 1),
        ("BRL", 55, 10),
        ("SEK", 115, 10),
    ];
    let (num, den) = RATES
        .iter()
        .find(|(code, _, _)| *code == currency)
        .map_or((1, 1), |(_, n, d)| (*n, *d));
    (eur_minor * num / den).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks() {
        let zipf = Zipf::new(100, 1.1);
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        // P(rank 1) / P(rank 2) = 2^1.1 ≈ 2.14
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((ratio - 2.14).abs() < 0.15, "{ratio}");
        assert_eq!(Zipf::new(1, 1.0).sample(&mut rng), 0);
    }

    #[test]
    fn prices_are_whole_minor_units_in_every_currency() {
        let scenario = Scenario::defaults();
        let catalog = Catalog::build(&scenario, "t");
        for sku in catalog.all() {
            assert_eq!(sku.prices.len(), scenario.catalog.currencies.len());
            assert!(sku.prices.values().all(|p| *p >= 1));
        }
        assert_eq!(
            convert(1000, "JPY"),
            1600,
            "no minor unit: 10 EUR is 1600 yen"
        );
        assert_eq!(catalog.hot.len(), scenario.catalog.hot_skus);
        assert!(catalog.hot.iter().all(|s| s.max_per_customer.is_some()));
        assert!(catalog.sold_out.iter().all(|s| s.stock == 0));
    }
}
