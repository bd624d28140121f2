//! The engine alone, no broker: decode JSON, validate, reserve, encode
//! outputs, through `Engine::process`, over pre-built record bytes.
//!
//! - `engine/mix_1core`: one thread, the realistic mix (uniform SKUs).
//! - `engine/uniform_2shards`, `engine/hot_2shards`: two threads, each with
//!   its own `OrderBook`, sharing one `Inventory`, as the real shards do;
//!   the same order shapes, every line on one SKU in the hot case.
//! - `peer/redis_lua_*`: the usual flash-sale stack deciding the same
//!   orders with one Lua check-and-decrement per order (needs
//!   `redis-server`; only with `--bench`).
//!
//! With `--bench`, an interleaved run follows criterion's: rounds of every
//! case back to back, whose per-round ratios (hot/uniform, engine/Redis)
//! are the figures of docs/benchmarks.md, immune to the machine's load
//! drifting between criterion's groups. Run:
//! `cargo bench --bench engine -- --quick`.

#[path = "support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;
use orderflow::engine::{Engine, OrderBook};
use orderflow::inventory::Inventory;
use orderflow::order::validate::Limits;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::{Lane, Record, Skus};

/// Records each lane cycles through. Larger than the book, so a record's
/// order has been forgotten by the time it comes round again: every record
/// is a fresh decision, and the book stays full and evicting, as in a sale.
const RECORDS_PER_LANE: usize = 131_072;
/// Order book capacity in the benchmark (the default window is larger; the
/// cost per insert is that of a full book either way).
const BOOK_CAPACITY: usize = 100_000;
/// In test mode (`cargo test --all-targets`) a few records are enough.
const TEST_RECORDS: usize = 600;
const TEST_BOOK_CAPACITY: usize = 500;
/// Interleaved rounds and how long each case runs per round.
const ROUNDS: usize = 7;
const ROUND_CASE_TIME: Duration = Duration::from_millis(400);
/// Orders per Redis pipeline in the pipelined peer case.
const REDIS_PIPELINE: usize = 64;

/// Runs `n` records on each lane, one thread per lane, started together;
/// returns the slowest lane's time.
fn run_lanes(lanes: &mut [Lane], n: u64) -> Duration {
    let barrier = Barrier::new(lanes.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .map(|lane| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    lane.run(n);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

struct Setup {
    single: Lane,
    uniform: Vec<Lane>,
    hot: Vec<Lane>,
}

fn setup(records: usize, capacity: usize) -> Setup {
    let engine =
        |inventory: &Arc<Inventory>| Arc::new(Engine::new(inventory.clone(), Limits::default()));
    let lane = |engine: &Arc<Engine>, prefix: &str, skus: Skus, seed: u64| {
        let records = Arc::new(support::orders(records, prefix, skus, seed));
        Lane::new(engine.clone(), records, OrderBook::new(capacity))
    };
    let single_inventory = Arc::new(support::inventory(support::CATALOG_SKUS));
    let uniform_inventory = Arc::new(support::inventory(support::CATALOG_SKUS));
    let hot_inventory = Arc::new(support::inventory(support::CATALOG_SKUS));
    let (single, uniform, hot) = (
        engine(&single_inventory),
        engine(&uniform_inventory),
        engine(&hot_inventory),
    );
    Setup {
        single: lane(&single, "m", Skus::Uniform, 1),
        uniform: (0..2)
            .map(|s| lane(&uniform, &format!("u{s}"), Skus::Uniform, 10 + s))
            .collect(),
        hot: (0..2)
            .map(|s| lane(&hot, &format!("h{s}"), Skus::Hot, 10 + s))
            .collect(),
    }
}

/// The Redis peer: a server, a connection with the catalog, the script,
/// and the same mix's records.
struct Peer {
    _server: support::RedisServer,
    conn: redis::Connection,
    script: redis::Script,
    records: Vec<Record>,
    next: usize,
}

impl Peer {
    fn start(records: Vec<Record>) -> Option<Peer> {
        let server = support::RedisServer::start()?;
        let (conn, script) = server.connect_with_catalog(support::CATALOG_SKUS);
        Some(Peer {
            _server: server,
            conn,
            script,
            records,
            next: 0,
        })
    }

    /// Decides `n` orders, `batch` per round trip.
    fn run(&mut self, n: u64, batch: usize) {
        let mut left = n as usize;
        while left > 0 {
            let take = left.min(batch);
            let mut pipe = redis::pipe();
            for _ in 0..take {
                let (_, value) = &self.records[self.next];
                support::peer_reserve(&mut pipe, &self.script, value);
                self.next = (self.next + 1) % self.records.len();
            }
            let results: Vec<redis::Value> = pipe.query(&mut self.conn).unwrap();
            std::hint::black_box(results);
            left -= take;
        }
    }
}

fn criterion_benches(c: &mut Criterion, setup: &mut Setup, peer: Option<&mut Peer>) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mix_1core", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            setup.single.run(iters);
            start.elapsed()
        })
    });
    group.throughput(Throughput::Elements(2));
    group.bench_function("uniform_2shards", |b| {
        b.iter_custom(|iters| run_lanes(&mut setup.uniform, iters))
    });
    group.bench_function("hot_2shards", |b| {
        b.iter_custom(|iters| run_lanes(&mut setup.hot, iters))
    });
    group.finish();
    if let Some(peer) = peer {
        let mut group = c.benchmark_group("peer");
        group.throughput(Throughput::Elements(1));
        group.bench_function("redis_lua_1conn", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                peer.run(iters, 1);
                start.elapsed()
            })
        });
        group.bench_function("redis_lua_pipelined64", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                peer.run(iters, REDIS_PIPELINE);
                start.elapsed()
            })
        });
        group.finish();
    }
}

/// Records per second of `run` over about `ROUND_CASE_TIME`, running it in
/// chunks of `chunk` records (`per_call` records counted per unit of n).
fn rate(chunk: u64, per_call: u64, mut run: impl FnMut(u64) -> Duration) -> f64 {
    let (mut done, mut spent) = (0u64, Duration::ZERO);
    while spent < ROUND_CASE_TIME {
        spent += run(chunk);
        done += chunk * per_call;
    }
    done as f64 / spent.as_secs_f64()
}

fn interleaved(setup: &mut Setup, mut peer: Option<&mut Peer>) {
    println!(
        "\ninterleaved: {ROUNDS} rounds, every case {ROUND_CASE_TIME:?} per round, back to back"
    );
    let (mut mix, mut uniform, mut hot, mut hot_ratio) = (vec![], vec![], vec![], vec![]);
    let (mut redis_1, mut redis_p, mut vs_1, mut vs_p) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let m = rate(10_000, 1, |n| {
            let start = Instant::now();
            setup.single.run(n);
            start.elapsed()
        });
        let u = rate(10_000, 2, |n| run_lanes(&mut setup.uniform, n));
        let h = rate(10_000, 2, |n| run_lanes(&mut setup.hot, n));
        mix.push(m);
        uniform.push(u);
        hot.push(h);
        hot_ratio.push(h / u);
        let mut line = format!(
            "round {round}: mix_1core {m:>9.0}/s  uniform_2shards {u:>9.0}/s  hot_2shards {h:>9.0}/s  hot/uniform {:.3}",
            h / u
        );
        if let Some(peer) = peer.as_deref_mut() {
            let r1 = rate(500, 1, |n| timed_peer(peer, n, 1));
            let rp = rate(REDIS_PIPELINE as u64 * 20, 1, |n| {
                timed_peer(peer, n, REDIS_PIPELINE)
            });
            redis_1.push(r1);
            redis_p.push(rp);
            vs_1.push(m / r1);
            vs_p.push(m / rp);
            line += &format!(
                "  redis_1conn {r1:>8.0}/s  redis_pipelined {rp:>8.0}/s  engine/redis {:.1}x / {:.1}x",
                m / r1,
                m / rp
            );
        }
        println!("{line}");
    }
    println!("medians over rounds (each ratio from one round, cases back to back):");
    println!(
        "  mix_1core        {:>10.0} orders/s",
        support::median(&mut mix)
    );
    println!(
        "  uniform_2shards  {:>10.0} orders/s",
        support::median(&mut uniform)
    );
    println!(
        "  hot_2shards      {:>10.0} orders/s",
        support::median(&mut hot)
    );
    println!(
        "  hot/uniform      {:>10.3}",
        support::median(&mut hot_ratio)
    );
    if !redis_1.is_empty() {
        println!(
            "  redis_lua_1conn        {:>10.0} orders/s",
            support::median(&mut redis_1)
        );
        println!(
            "  redis_lua_pipelined64  {:>10.0} orders/s",
            support::median(&mut redis_p)
        );
        println!(
            "  engine/redis_1conn     {:>10.1}x",
            support::median(&mut vs_1)
        );
        println!(
            "  engine/redis_pipelined {:>10.1}x",
            support::median(&mut vs_p)
        );
    }
}

fn timed_peer(peer: &mut Peer, n: u64, batch: usize) -> Duration {
    let start = Instant::now();
    peer.run(n, batch);
    start.elapsed()
}

/// Time inside `Engine::process` per record, one thread, the mix: the
/// engine's share of `orderflow_processing_seconds`.
fn process_time_histogram(lane: &mut Lane) {
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for _ in 0..lane.records.len() {
        let start = Instant::now();
        lane.one();
        histogram.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "\nEngine::process time per record, mix, one thread ({} records): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        histogram.len(),
        histogram.value_at_quantile(0.5) as f64 / 1e3,
        histogram.value_at_quantile(0.99) as f64 / 1e3,
        histogram.value_at_quantile(0.999) as f64 / 1e3,
        histogram.max() as f64 / 1e3,
    );
}

/// `ENGINE_PROFILE_RECORDS=N` runs only N records of the mix on one thread
/// and exits: a fixed workload for `valgrind --tool=callgrind`.
const PROFILE_ENV: &str = "ENGINE_PROFILE_RECORDS";

fn main() {
    if let Some(n) = std::env::var(PROFILE_ENV).ok().and_then(|v| v.parse().ok()) {
        let mut setup = setup(TEST_RECORDS, TEST_BOOK_CAPACITY);
        setup.single.run(n);
        return;
    }
    let bench = support::bench_mode();
    let (records, capacity) = if bench {
        (RECORDS_PER_LANE, BOOK_CAPACITY)
    } else {
        (TEST_RECORDS, TEST_BOOK_CAPACITY)
    };
    let built = Instant::now();
    let mut setup = setup(records, capacity);
    // The peer decides the same mix (its own copy: it keeps its own cursor).
    let mut peer = bench
        .then(|| {
            let peer = Peer::start(support::orders(records, "m", Skus::Uniform, 1));
            if peer.is_none() {
                eprintln!("redis-server not found: skipping the Redis peer (apt-get install redis-server)");
            }
            peer
        })
        .flatten();
    if bench {
        println!("workload built in {:?}", built.elapsed());
    }
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &mut setup, peer.as_mut());
    criterion.final_summary();
    if bench {
        process_time_histogram(&mut setup.single);
        interleaved(&mut setup, peer.as_mut());
    }
}
