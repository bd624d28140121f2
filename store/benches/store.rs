//! What the order store costs per order, on this machine: durable commits
//! in batches, "never seen" answers from the Bloom filter, lookups of held
//! orders, disk per order, reopen time (journal replay and the filter's
//! rebuild) and resident memory.
//!
//! ```sh
//! cargo bench -p orderflow-store --bench store            # 1,000,000 orders
//! STORE_BENCH_ORDERS=200000 cargo bench -p orderflow-store --bench store
//! # fjall's memory as the processor sets it per partition (src/cold.rs):
//! STORE_BENCH_CACHE_MIB=8 STORE_BENCH_MEMTABLE_MIB=4 cargo bench -p orderflow-store --bench store
//! ```
//!
//! CPU time is the process's (getrusage), so fjall's background flushes
//! and compactions count; figures in docs/benchmarks.md.

use orderflow_store::{Checkpoint, Memory, PartitionStore, Put};
use std::time::{Duration, Instant};

/// Orders per durable commit: about one poll's worth of a shard.
const BATCH: usize = 500;
/// A record's encoded size, about an accepted order's state-codec record
/// with two lines and a payment.
const VALUE_BYTES: usize = 200;
const DAY_MS: i64 = 86_400_000;

fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Order `i`'s ID, scattered over the key space as checkout services'
/// IDs are (in key order, flushed tables would never overlap and
/// compaction would only move them: small tables, cheap lookups).
fn key(i: usize) -> Vec<u8> {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("o-3-{:016x}", z ^ (z >> 31)).into_bytes()
}

/// Pseudo-random bytes, the same for the same order.
fn value(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn per(what: Duration, count: usize) -> f64 {
    what.as_secs_f64() * 1e9 / count as f64
}

/// Index entries one retention walk looks at (the processor's
/// `worker::RETIRE_BATCH`).
const RETIRE_BATCH: usize = 500;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches without it: nothing to do.
    }
    let orders: usize = std::env::var("STORE_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mib = |name: &str, default: u64| {
        std::env::var(name).ok().map_or(default, |v| {
            v.parse::<u64>().expect("a number of MiB") << 20
        })
    };
    let defaults = Memory::default();
    let memory = Memory {
        cache_bytes: mib("STORE_BENCH_CACHE_MIB", defaults.cache_bytes),
        memtable_bytes: mib("STORE_BENCH_MEMTABLE_MIB", defaults.memtable_bytes),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store = PartitionStore::open_with(dir.path(), orders, memory).unwrap();
    println!(
        "{orders} orders, {VALUE_BYTES}-byte records, batches of {BATCH}, block cache {} MiB, \
         memtables {} MiB, rss at open {:.1} MiB",
        memory.cache_bytes >> 20,
        memory.memtable_bytes >> 20,
        resident_mib()
    );

    let (wall, cpu) = (Instant::now(), cpu_time());
    for (n, start) in (0..orders).step_by(BATCH).enumerate() {
        let puts: Vec<Put> = (start..orders.min(start + BATCH))
            .map(|i| Put {
                key: key(i),
                value: value(i),
                expires_at_ms: 90 * DAY_MS + i as i64,
            })
            .collect();
        let checkpoint = Checkpoint {
            changelog_next: (start + puts.len()) as i64,
            input_next: n as i64 + 1,
        };
        store.commit(&puts, checkpoint).unwrap();
    }
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    println!(
        "commit: {:.0} ns per order wall, {:.0} ns CPU; {:.0} µs per batch",
        per(wall, orders),
        per(cpu, orders),
        wall.as_secs_f64() * 1e6 / orders.div_ceil(BATCH) as f64
    );
    println!(
        "rss after load {:.1} MiB, Bloom filter {:.1} MiB",
        resident_mib(),
        store.filter_bytes() as f64 / (1 << 20) as f64
    );

    let lookups = orders.min(500_000);
    let started = Instant::now();
    let mut maybe = 0;
    for i in 0..lookups {
        maybe += usize::from(store.may_contain(&key(orders + i)));
    }
    println!(
        "never-seen ID: {:.0} ns (filter only; {:.2} % would read the disk)",
        per(started.elapsed(), lookups),
        maybe as f64 * 100.0 / lookups as f64
    );
    let started = Instant::now();
    for i in 0..lookups {
        let i = i.wrapping_mul(7919) % orders;
        assert!(store.get(&key(i)).unwrap().is_some());
    }
    println!(
        "held order, random: {:.0} ns",
        per(started.elapsed(), lookups)
    );
    println!(
        "disk: {:.0} bytes per order",
        store.disk_bytes().unwrap() as f64 / orders as f64
    );
    drop(store);
    let started = Instant::now();
    let store = PartitionStore::open_with(dir.path(), orders, memory).unwrap();
    println!(
        "reopen (journal replay, filter rebuilt from {} keys): {:.2} s; rss {:.1} MiB",
        orders,
        started.elapsed().as_secs_f64(),
        resident_mib()
    );
    assert_eq!(store.checkpoint().unwrap().changelog_next, orders as i64);
    let mut store = store;

    // Retention of the oldest tenth, as the processor does it: walks of
    // 500 index entries (`due`), then the tombstones committed in batches
    // (the changelog's copies), then one more walk that finds only the
    // index entries the tombstones left (pruned).
    let expired = orders / 10;
    let now = 90 * DAY_MS + expired as i64;
    let walk = |store: &mut PartitionStore| {
        let (mut found, mut after) = (Vec::new(), None);
        loop {
            let due = store.due(now, after.as_deref(), RETIRE_BATCH).unwrap();
            store.prune(&due.stale).unwrap();
            found.extend(due.records.into_iter().map(|(key, _)| key));
            if due.walked < RETIRE_BATCH {
                return found;
            }
            after = due.last;
        }
    };
    let started = Instant::now();
    let due = walk(&mut store);
    let walked = started.elapsed();
    assert_eq!(due.len(), expired);
    let started = Instant::now();
    for (n, keys) in due.chunks(BATCH).enumerate() {
        let tombstones: Vec<Put> = keys
            .iter()
            .map(|key| Put {
                key: key.clone(),
                value: Vec::new(),
                expires_at_ms: 0,
            })
            .collect();
        let checkpoint = Checkpoint {
            changelog_next: (orders + (n + 1) * BATCH) as i64,
            input_next: 0,
        };
        store.commit(&tombstones, checkpoint).unwrap();
    }
    let removed = started.elapsed();
    let started = Instant::now();
    assert!(walk(&mut store).is_empty(), "nothing due once removed");
    let pruned = started.elapsed();
    println!(
        "retention of {expired} orders: walk {:.0} ns per order due, tombstone commit {:.0} ns, \
         the walk after (stale entries pruned) {:.0} ns; {} records left",
        per(walked, expired),
        per(removed, expired),
        per(pruned, expired),
        store.len().unwrap()
    );
}
