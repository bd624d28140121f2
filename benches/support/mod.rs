//! Shared by the benchmarks: a deterministic flash-sale workload shaped like
//! the contract's examples (several lines, addresses and payments, Unicode
//! text, an unknown field, a share of every rejection reason), the catalog
//! it is priced against, and a Redis peer that decides the same orders the
//! way the usual flash-sale stack does (one Lua check-and-decrement per
//! order).

#![allow(dead_code)]

use orderflow::engine::{Engine, OrderBook, Output};
use orderflow::inventory::Inventory;
use orderflow::order::InventoryEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// SKUs of the uniform catalog.
pub const CATALOG_SKUS: usize = 10_000;
/// The SKU every order of the hot workload buys.
pub const HOT_SKU: &str = "HOT";
/// A SKU with no stock: lines on it are rejected `out_of_stock`.
pub const EMPTY_SKU: &str = "EMPTY";
/// Stock large enough that benchmarks never sell out by accident: rejections
/// come only from the deliberate share below. The most the `inventory`
/// topic accepts: more is dead-lettered `invalid_inventory_event` there
/// (while `Inventory::apply`, which the in-process benchmarks use, takes it).
pub const ENDLESS_STOCK: i64 = orderflow::order::MAX_STOCK_UNITS;
/// Currencies orders are placed in; every catalog SKU has a price in each.
pub const CURRENCIES: [&str; 3] = ["EUR", "USD", "JPY"];
/// Percent of orders built to be rejected, one reason after another.
pub const REJECTED_PERCENT: u64 = 10;

const NAMES: [&str; 6] = [
    "Zoë Ørsted 🏠",
    "李小龍",
    "Jürgen Groß",
    "Анна Каренина",
    "محمد 🚀",
    "O'Brien \"Bob\"",
];
const STREETS: [&str; 4] = [
    "Hauptstraße",
    "Kurfürstendamm",
    "Rue de l'Église",
    "Calle Mayor",
];
const COUNTRIES: [&str; 5] = ["DE", "FR", "ES", "JP", "US"];

/// Catalog price of SKU `i` in `currency`, in minor units.
pub fn price(i: usize, currency: &str) -> i64 {
    let base = 199 + (i as i64 % 500) * 10;
    match currency {
        "JPY" => base * 150,
        "USD" => base + 20,
        _ => base,
    }
}

pub fn sku_name(i: usize) -> String {
    format!("SKU-{i:07}")
}

fn prices(i: usize) -> BTreeMap<String, i64> {
    CURRENCIES
        .iter()
        .map(|c| (c.to_string(), price(i, c)))
        .collect()
}

/// `stock_set` events of the whole catalog: `skus` uniform SKUs, the hot
/// SKU (priced as SKU 0) and the empty SKU.
pub fn catalog(skus: usize) -> Vec<InventoryEvent> {
    let mut events: Vec<InventoryEvent> = (0..skus)
        .map(|i| InventoryEvent::StockSet {
            sku: sku_name(i),
            available: ENDLESS_STOCK,
            prices: prices(i),
            max_per_customer: None,
        })
        .collect();
    events.push(InventoryEvent::StockSet {
        sku: HOT_SKU.into(),
        available: ENDLESS_STOCK,
        prices: prices(0),
        max_per_customer: None,
    });
    events.push(InventoryEvent::StockSet {
        sku: EMPTY_SKU.into(),
        available: 0,
        prices: prices(0),
        max_per_customer: None,
    });
    events
}

pub fn inventory(skus: usize) -> Inventory {
    let inventory = Inventory::new();
    for event in catalog(skus) {
        inventory
            .apply(&event)
            .expect("the catalog is within range");
    }
    inventory
}

/// Which SKUs the lines of a workload buy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skus {
    /// Uniformly over the catalog.
    Uniform,
    /// Every line buys the hot SKU.
    Hot,
}

/// One record of the `orders` topic: key and value bytes.
pub type Record = (Vec<u8>, Vec<u8>);

/// `n` `order_placed` records with IDs `o-{prefix}-{i}`, `placed_at` in
/// the record at `placed_at`. Deterministic for a given seed. About one in
/// ten is built to be rejected, cycling through price, payment, stock,
/// SKU, currency and field errors.
pub fn orders(n: usize, prefix: &str, skus: Skus, seed: u64) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let id = format!("o-{prefix}-{i}");
            let value = order_value(&mut rng, &id, i, skus, "2026-11-23T12:00:00.123Z");
            (id.into_bytes(), serde_json::to_vec(&value).unwrap())
        })
        .collect()
}

/// The JSON of one order; `placed_at` as given (the latency benchmark
/// stamps the send time).
pub fn order_value(rng: &mut StdRng, id: &str, i: usize, skus: Skus, placed_at: &str) -> Value {
    let currency = CURRENCIES[rng.gen_range(0..CURRENCIES.len())];
    let n_addresses = rng.gen_range(1..=3);
    let n_lines = rng.gen_range(1..=5);
    let labels: Vec<String> = ["home", "office", "gift"][..n_addresses]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut lines: Vec<Value> = Vec::with_capacity(n_lines);
    let mut total = 0i64;
    for l in 0..n_lines {
        let (sku, k) = match skus {
            Skus::Uniform => {
                let k = rng.gen_range(0..CATALOG_SKUS);
                (sku_name(k), k)
            }
            Skus::Hot => (HOT_SKU.to_string(), 0),
        };
        let quantity = rng.gen_range(1..=3i64);
        let unit = price(k, currency);
        total += quantity * unit;
        lines.push(
            json!({"sku": sku, "quantity": quantity, "unit_price_minor": unit,
                          "ship_to": labels[l % n_addresses]}),
        );
    }
    let addresses: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(a, label)| {
            let name = format!("{} {label}", NAMES[(i + a) % NAMES.len()]);
            let street = format!("{} {}", STREETS[(i + a) % STREETS.len()], i % 200 + 1);
            (
                label.clone(),
                json!({"name": name, "line1": street, "city": "Berlin",
                       "postal_code": format!("{:05}", i % 99_999), "country": COUNTRIES[(i + a) % COUNTRIES.len()]}),
            )
        })
        .collect();
    let n_payments = rng.gen_range(1..=3usize).min(total as usize);
    let mut payments: Vec<Value> = Vec::with_capacity(n_payments);
    let mut left = total;
    for p in 0..n_payments {
        let amount = if p + 1 == n_payments {
            left
        } else {
            1.max(left / 3)
        };
        left -= amount;
        payments.push(match p {
            0 => json!({"method": "card", "amount_minor": amount, "authorization_id": format!("auth-{i}-{p}")}),
            1 => json!({"method": "gift_card", "amount_minor": amount, "authorization_id": format!("gc-{i}")}),
            _ => json!({"method": "cash_on_delivery", "amount_minor": amount}),
        });
    }
    let mut order = json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{}", i * 7 % 100_003),
        "placed_at": placed_at, "currency": currency, "lines": lines, "addresses": addresses,
        "payments": payments, "channel": "app"});
    // Every tenth order is built to be rejected, one reason after another.
    if (i as u64) % 100 < REJECTED_PERCENT {
        match i % 6 {
            0 => order["lines"][0]["unit_price_minor"] = json!(1), // price_mismatch
            1 => order["payments"][0]["amount_minor"] = json!(total + 1), // payment_mismatch
            2 => {
                // out_of_stock
                order["lines"][0]["sku"] = json!(EMPTY_SKU);
                let unit = order["lines"][0]["unit_price_minor"].as_i64().unwrap();
                let quantity = order["lines"][0]["quantity"].as_i64().unwrap();
                let fixed = price(0, currency);
                order["lines"][0]["unit_price_minor"] = json!(fixed);
                let amount = order["payments"][0]["amount_minor"].as_i64().unwrap();
                order["payments"][0]["amount_minor"] = json!(amount + quantity * (fixed - unit));
            }
            3 => order["lines"][0]["sku"] = json!("NO-SUCH-SKU"), // unknown_sku
            4 => order["currency"] = json!("EURO"),               // unknown_currency
            _ => order["lines"][0]["quantity"] = json!(0),        // invalid_order
        }
    }
    order
}

/// What the Redis peer needs of an order: its lines' SKUs and quantities.
#[derive(serde::Deserialize)]
pub struct PeerOrder<'a> {
    #[serde(borrow)]
    pub order_id: &'a str,
    #[serde(borrow)]
    pub lines: Vec<PeerLine<'a>>,
}

#[derive(serde::Deserialize)]
pub struct PeerLine<'a> {
    #[serde(borrow)]
    pub sku: &'a str,
    pub quantity: i64,
}

/// The usual flash-sale decision in Redis: check every line's stock, then
/// decrement them all, atomically (a Lua script runs alone). Returns 1 when
/// reserved, 0 when out of stock, -1 for an unknown SKU.
pub const RESERVE_LUA: &str = r#"
for i, key in ipairs(KEYS) do
  local stock = redis.call('GET', key)
  if not stock then return -1 end
  if tonumber(stock) < tonumber(ARGV[i]) then return 0 end
end
for i, key in ipairs(KEYS) do
  redis.call('DECRBY', key, ARGV[i])
end
return 1
"#;

/// A `redis-server` on a free loopback port, without persistence, killed
/// on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

/// How long redis-server may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisServer {
    /// `None` if `redis-server` is not installed (`apt-get install redis-server`).
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection with the catalog loaded (every SKU's stock as a key)
    /// and the reservation script cached; returns it and the script.
    pub fn connect_with_catalog(&self, skus: usize) -> (redis::Connection, redis::Script) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let mut pipe = redis::pipe();
        for event in catalog(skus) {
            if let InventoryEvent::StockSet { sku, available, .. } = event {
                pipe.set(sku, available).ignore();
            }
        }
        let _: () = pipe.query(&mut conn).unwrap();
        let script = redis::Script::new(RESERVE_LUA);
        let _: String = script.prepare_invoke().load(&mut conn).unwrap();
        (conn, script)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds one order's reservation to `pipe`: EVALSHA with its lines' SKUs as
/// keys and quantities as arguments. Returns false for a record the peer
/// cannot read (it would reject or dead-letter it without asking Redis).
pub fn peer_reserve(pipe: &mut redis::Pipeline, script: &redis::Script, value: &[u8]) -> bool {
    let Ok(order) = serde_json::from_slice::<PeerOrder<'_>>(value) else {
        return false;
    };
    let _ = order.order_id;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(order.lines.len());
    for line in &order.lines {
        cmd.arg(line.sku);
    }
    for line in &order.lines {
        cmd.arg(line.quantity);
    }
    pipe.add_command(cmd);
    true
}

/// Resident memory of this process, from /proc/self/status, in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Is `--bench` among the arguments? Without it (`cargo test --all-targets`
/// runs bench targets in test mode) the slow benchmarks return at once.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// CPU time this thread has used: unlike wall time, it does not count the
/// time other processes on a shared machine hold the core.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One shard's worth of work: its own book, cycling over its own records.
pub struct Lane {
    pub engine: Arc<Engine>,
    pub book: OrderBook,
    pub records: Arc<Vec<Record>>,
    next: usize,
    offset: i64,
    pub out: Vec<Output>,
    now: OffsetDateTime,
}

impl Lane {
    pub fn new(engine: Arc<Engine>, records: Arc<Vec<Record>>, book: OrderBook) -> Lane {
        Lane {
            engine,
            book,
            records,
            next: 0,
            offset: 0,
            out: Vec::new(),
            // Ten milliseconds after the orders' placed_at.
            now: OffsetDateTime::from_unix_timestamp_nanos(1_795_435_200_133_000_000).unwrap(),
        }
    }

    pub fn run(&mut self, n: u64) {
        for _ in 0..n {
            self.one();
        }
    }

    #[inline]
    pub fn one(&mut self) {
        let (key, value) = &self.records[self.next];
        self.out.clear();
        let processed = self.engine.process(
            &mut self.book,
            self.offset,
            Some(key),
            Some(value),
            self.now,
            &mut self.out,
        );
        std::hint::black_box((processed, &self.out));
        self.offset += 1;
        self.next = (self.next + 1) % self.records.len();
    }
}
