//! Resident memory of a flash sale's state: 10 million SKUs in the
//! inventory cache (prices in three currencies, like the engine
//! benchmark's catalog) and 1 million decided orders in the dedup window
//! (order books of four partitions, nine in ten accepted with holdings
//! shaped like the mix's orders: about three SKUs and two shipments).
//! Reports VmRSS from /proc/self/status after each step.
//!
//! Only with `--bench`; `cargo test --all-targets` returns at once. Run:
//! `cargo bench --bench memory` (MEMORY_SKUS, MEMORY_ORDERS override).

#[path = "support/mod.rs"]
mod support;

use orderflow::engine::{Holding, OrderBook, OrderRecord, OrderState};
use orderflow::inventory::Inventory;
use orderflow::order::InventoryEvent;
use std::collections::BTreeMap;
use std::time::Instant;

const DEFAULT_SKUS: usize = 10_000_000;
const DEFAULT_ORDERS: usize = 1_000_000;
/// Partitions the dedup window is spread over.
const PARTITIONS: usize = 4;
/// The target: everything above in at most 2 GiB resident.
const TARGET_BYTES: u64 = 2 << 30;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    if !support::bench_mode() {
        println!("memory: skipped in test mode (run `cargo bench --bench memory`)");
        return;
    }
    let skus = env_or("MEMORY_SKUS", DEFAULT_SKUS);
    let orders = env_or("MEMORY_ORDERS", DEFAULT_ORDERS);
    let start = support::rss_bytes().unwrap();
    let built = Instant::now();
    let inventory = Inventory::new();
    for i in 0..skus {
        inventory
            .apply(&InventoryEvent::StockSet {
                sku: support::sku_name(i),
                available: 1_000,
                prices: support::CURRENCIES
                    .iter()
                    .map(|c| (c.to_string(), support::price(i, c)))
                    .collect::<BTreeMap<_, _>>(),
                max_per_customer: None,
            })
            .unwrap();
    }
    let after_skus = support::rss_bytes().unwrap();
    println!(
        "{skus} SKUs in {:.1} s: +{:.0} MiB ({:.0} bytes per SKU)",
        built.elapsed().as_secs_f64(),
        mib(after_skus - start),
        (after_skus - start) as f64 / skus as f64
    );

    let built = Instant::now();
    let per_partition = orders.div_ceil(PARTITIONS);
    let mut books: Vec<OrderBook> = (0..PARTITIONS)
        .map(|_| OrderBook::new(per_partition))
        .collect();
    for i in 0..orders {
        let accepted = i % 10 != 0;
        let holding = accepted.then(|| Holding {
            customer_id: format!("c-{}", i * 7 % 100_003),
            demand: (0..3)
                .map(|l| {
                    (
                        support::sku_name((i * 31 + l * 977) % skus.max(1)),
                        1 + l as u32,
                    )
                })
                .collect(),
            shipments: ["home", "office"][..1 + i % 2]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
        let record = OrderRecord::decided(
            if accepted {
                OrderState::Accepted
            } else {
                OrderState::Rejected
            },
            (i / PARTITIONS) as i64,
            holding,
        );
        books[i % PARTITIONS].insert(format!("o-e2e-{i}"), record);
    }
    let after_orders = support::rss_bytes().unwrap();
    println!(
        "{orders} orders in the dedup window in {:.1} s: +{:.0} MiB ({:.0} bytes per order)",
        built.elapsed().as_secs_f64(),
        mib(after_orders - after_skus),
        (after_orders - after_skus) as f64 / orders as f64
    );
    println!(
        "VmRSS {:.0} MiB for {skus} SKUs and {orders} orders; target ≤ {:.0} MiB; ratio to target {:.2}",
        mib(after_orders),
        mib(TARGET_BYTES),
        after_orders as f64 / TARGET_BYTES as f64
    );
    std::hint::black_box((&inventory, &books));
}
