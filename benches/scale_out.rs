//! What sharing a sale between instances costs (docs/architecture.md,
//! "Scale-out"), without a broker:
//!
//! 1. Deciding: `Engine::process` over the realistic mix with a book that
//!    sells the whole stock against one that sells a partition's quota
//!    (the quota check and the per-partition count of sold units).
//!    Interleaved rounds, one thread; the figure is the median per-round
//!    ratio quota / whole of orders per second.
//! 2. Taking a partition over: rebuilding its order book and holdings from
//!    its changelog (`Restorer::apply`), in entries per second, with and
//!    without quotas. Reading the status partition from the broker comes on
//!    top of this.
//!
//! Run: `cargo bench --bench scale_out -- --bench`. Without `--bench`
//! (`cargo test --all-targets`) it runs each case once over a few records.

#[path = "support/mod.rs"]
mod support;

use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::{Inventory, Quota};
use orderflow::order::validate::Limits;
use orderflow::state::{ChangelogEntry, Restorer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Lane, Record, Skus};

/// Records cycled through in the deciding case; more than the book holds,
/// so every record is a fresh decision.
const RECORDS: usize = 65_536;
const BOOK_CAPACITY: usize = 50_000;
/// Decisions in the changelog a take-over replays.
const CHANGELOG_ENTRIES: usize = 100_000;
/// Partitions of `orders` the quota is computed for.
const PARTITIONS: u32 = 12;
const ROUNDS: usize = 7;
const ROUND_CASE_TIME: Duration = Duration::from_millis(400);
/// In test mode a few records are enough.
const TEST_RECORDS: usize = 300;

fn quota() -> Quota {
    Quota {
        partition: 3,
        partitions: PARTITIONS,
    }
}

fn book(with_quota: bool, capacity: usize) -> OrderBook {
    if with_quota {
        OrderBook::with_quota(capacity, quota())
    } else {
        OrderBook::new(capacity)
    }
}

/// A lane over `records` with its own inventory and a book that sells the
/// whole stock or partition 3's quota.
fn lane(records: &Arc<Vec<Record>>, with_quota: bool) -> Lane {
    let inventory = Arc::new(support::inventory(support::CATALOG_SKUS));
    let engine = Arc::new(Engine::new(inventory, Limits::default()));
    Lane::new(engine, records.clone(), book(with_quota, BOOK_CAPACITY))
}

/// Orders per second `lane` decides over `time`.
fn rate(lane: &mut Lane, time: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        lane.run(256);
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The changelog of `n` decisions of one partition, as a new owner reads it.
fn changelog(records: &Arc<Vec<Record>>) -> Vec<(String, ChangelogEntry)> {
    let mut lane = lane(records, true);
    let mut entries = Vec::with_capacity(records.len());
    for _ in 0..records.len() {
        lane.one();
        for output in lane.out.drain(..) {
            if let Output::Status {
                order_id, record, ..
            } = output
            {
                let entry = ChangelogEntry {
                    partition: quota().partition as i32,
                    record: std::sync::Arc::unwrap_or_clone(record),
                };
                entries.push((order_id, entry));
            }
        }
    }
    entries
}

/// Entries per second a take-over applies, into a fresh inventory.
fn restore_rate(entries: &[(String, ChangelogEntry)], inventory: &Inventory, quotas: bool) -> f64 {
    let start = Instant::now();
    let mut restorer = Restorer::new(inventory, BOOK_CAPACITY, quotas.then_some(PARTITIONS));
    for (order_id, entry) in entries {
        restorer.apply(order_id, entry.clone());
    }
    let books = restorer.finish(&[quota().partition as i32]);
    std::hint::black_box(books);
    entries.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `SCALE_OUT_PROFILE=whole|quota`: decide 3,000 records with that book
    // and stop, for callgrind (see docs/benchmarks.md, "Profiling").
    // `store`: the whole stock, the book in front of an on-disk store
    // (`engine.store_dir`) with room for every order; `store_full`: the
    // same with room for 100, so nearly every order leaves memory for it.
    if let Ok(case) = std::env::var("SCALE_OUT_PROFILE") {
        let records = support::orders(3_000, "profile", Skus::Uniform, 7);
        let records = Arc::new(records);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let stores =
            orderflow::cold::Stores::new(dir.path().to_str().unwrap(), "profile", BOOK_CAPACITY)
                .expect("a directory turns the store on");
        let mut lane = match case.as_str() {
            "store" | "store_full" => {
                let inventory = Arc::new(support::inventory(support::CATALOG_SKUS));
                let engine = Arc::new(Engine::new(inventory, Limits::default()));
                let capacity = if case == "store" { BOOK_CAPACITY } else { 100 };
                let book = OrderBook::new(capacity).with_cold(stores.cold(0, None));
                Lane::new(engine, records.clone(), book)
            }
            _ => lane(&records, case == "quota"),
        };
        for _ in 0..records.len() {
            lane.one();
        }
        return;
    }
    let bench = support::bench_mode();
    let records = support::orders(
        if bench { RECORDS } else { TEST_RECORDS },
        "scale",
        Skus::Uniform,
        7,
    );
    let records = Arc::new(records);
    let (mut whole, mut quota) = (lane(&records, false), lane(&records, true));
    if !bench {
        for _ in 0..records.len() {
            whole.one();
            quota.one();
        }
        let entries = changelog(&records);
        let inventory = support::inventory(support::CATALOG_SKUS);
        assert!(restore_rate(&entries, &inventory, true) > 0.0);
        return;
    }

    println!("deciding: {ROUNDS} rounds, {ROUND_CASE_TIME:?} per case per round, one thread");
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let w = rate(&mut whole, ROUND_CASE_TIME);
        let q = rate(&mut quota, ROUND_CASE_TIME);
        println!(
            "  round {round}: whole {w:.0}/s, quota {q:.0}/s, quota/whole {:.3}",
            q / w
        );
        ratios.push(q / w);
    }
    println!(
        "deciding with a partition's quota / the whole stock: median {:.3}",
        support::median(&mut ratios)
    );

    let order_records = Arc::new(support::orders(CHANGELOG_ENTRIES, "log", Skus::Uniform, 11));
    let entries = changelog(&order_records);
    println!(
        "take-over: {} changelog entries of one partition",
        entries.len()
    );
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let w = restore_rate(&entries, &support::inventory(support::CATALOG_SKUS), false);
        let q = restore_rate(&entries, &support::inventory(support::CATALOG_SKUS), true);
        println!("  round {round}: whole {w:.0} entries/s, quota {q:.0} entries/s");
        ratios.push(q);
    }
    println!(
        "take-over with quotas: median {:.0} entries/s applied",
        support::median(&mut ratios)
    );
}
