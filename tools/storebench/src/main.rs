//! storebench: per-partition order-state store candidates (fjall, redb, rocksdb).
//!
//! Each store is compiled in only with its own cargo feature, so that build time
//! and dependency count are separable. One binary per target dir.
//!
//! Usage:
//!   storebench bench  <store> <dir> <n> <durability: sync|periodic> [phases]
//!   storebench crash  <store> <dir> <rounds>
//!   storebench child  <store> <dir>          (internal: writer killed by `crash`)

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

pub const BATCH: usize = 500;
pub const CACHE: usize = 64 << 20;
const PARTITION: u32 = 12;
/// Every `PERIODIC_EVERY` batches a "periodic" run makes one durable sync.
const PERIODIC_EVERY: usize = 20;

// ---------------------------------------------------------------- workload

/// Bijection on [0, 10^12): order index -> 12-digit order number (scattered,
/// like client-generated ids; keys are NOT inserted in key order).
fn order_no(i: u64) -> u64 {
    const M: u64 = 1_000_000_000_000;
    ((i as u128 * 2_654_435_761u128 + 123_456_789) % M as u128) as u64
}

pub fn key(i: u64) -> Vec<u8> {
    format!("o-{}-{:012}", PARTITION, order_no(i)).into_bytes()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Deterministic "random" value of 250..=350 bytes for order i, version ver.
pub fn value(i: u64, ver: u64) -> Vec<u8> {
    let mut s = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (ver.wrapping_mul(0xD1B5_4A32_D192_ED03)) | 1;
    for _ in 0..4 {
        xorshift(&mut s);
    }
    let len = 250 + (xorshift(&mut s) % 101) as usize;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let r = xorshift(&mut s).to_le_bytes();
        let take = (len - v.len()).min(8);
        v.extend_from_slice(&r[..take]);
    }
    v
}

const EXPIRES_BASE: u64 = 1_800_000_000;
/// Secondary retention index key: expires_at (u64 BE) ++ order_id.
pub fn idx_key(i: u64) -> Vec<u8> {
    let mut k = (EXPIRES_BASE + i).to_be_bytes().to_vec();
    k.extend_from_slice(&key(i));
    k
}

// ---------------------------------------------------------------- store API

pub enum Op {
    Put(u8, Vec<u8>, Vec<u8>), // table 0 = orders, 1 = expiry index
    Del(u8, Vec<u8>),
}

pub trait Store {
    fn name(&self) -> &'static str;
    /// Atomically commit a batch; `durable` = durable on return (fsync).
    fn commit(&mut self, ops: Vec<Op>, durable: bool);
    /// Make everything committed so far durable.
    fn sync(&mut self);
    /// Returns the value length (to avoid measuring a copy).
    fn get(&self, k: &[u8]) -> Option<usize>;
    fn get_vec(&self, k: &[u8]) -> Option<Vec<u8>>;
    /// Keys of the expiry index < `upto`, in order.
    fn scan_idx(&self, upto: &[u8]) -> Vec<Vec<u8>>;
    fn close(self: Box<Self>);
}

pub fn open(store: &str, dir: &Path) -> Box<dyn Store> {
    std::fs::create_dir_all(dir).unwrap();
    match store {
        #[cfg(feature = "fjall")]
        "fjall" => Box::new(fj::Fj::open(dir)),
        #[cfg(feature = "redb")]
        "redb" => Box::new(rd::Rd::open(dir)),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rk::Rk::open(dir)),
        s => panic!("store {s} not compiled in (features)"),
    }
}

#[cfg(feature = "fjall")]
mod fj {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
    pub struct Fj {
        db: Database,
        t: [Keyspace; 2],
    }
    impl Fj {
        pub fn open(dir: &Path) -> Self {
            // FJALL_MEMTABLE_MB=m: memtable m MiB per keyspace (default 64) and journal cap 64 MiB
            // (default 512) -- a per-partition memory-bounded configuration.
            let mt: Option<u64> = std::env::var("FJALL_MEMTABLE_MB").ok().map(|v| v.parse().unwrap());
            let mut bld = Database::builder(dir).cache_size(CACHE as u64);
            if mt.is_some() {
                bld = bld.max_journaling_size(64 << 20);
            }
            let db = bld.open().unwrap();
            let opts = move || {
                let o = KeyspaceCreateOptions::default();
                match mt {
                    Some(m) => o.max_memtable_size(m << 20),
                    None => o,
                }
            };
            let a = db.keyspace("orders", opts).unwrap();
            let b = db.keyspace("expiry", opts).unwrap();
            Fj { db, t: [a, b] }
        }
    }
    impl Store for Fj {
        fn name(&self) -> &'static str {
            "fjall"
        }
        fn commit(&mut self, ops: Vec<Op>, durable: bool) {
            let mut b = self.db.batch();
            if durable {
                b = b.durability(Some(PersistMode::SyncData));
            }
            for op in ops {
                match op {
                    Op::Put(t, k, v) => b.insert(&self.t[t as usize], k.as_slice(), v.as_slice()),
                    Op::Del(t, k) => b.remove(&self.t[t as usize], k.as_slice()),
                }
            }
            b.commit().unwrap();
        }
        fn sync(&mut self) {
            self.db.persist(PersistMode::SyncData).unwrap();
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            self.t[0].get(k).unwrap().map(|v| v.len())
        }
        fn get_vec(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.t[0].get(k).unwrap().map(|v| v.to_vec())
        }
        fn scan_idx(&self, upto: &[u8]) -> Vec<Vec<u8>> {
            self.t[1].range(..upto).map(|g| g.key().unwrap().to_vec()).collect()
        }
        fn close(self: Box<Self>) {
            if std::env::var_os("FJALL_FLUSH_ON_CLOSE").is_some() {
                // flush memtables to tables so the journals can be dropped: faster reopen
                for t in &self.t {
                    t.rotate_memtable_and_wait().unwrap();
                }
            }
            self.db.persist(PersistMode::SyncAll).unwrap();
            drop(self);
        }
    }
}

#[cfg(feature = "redb")]
mod rd {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    const T: [TableDefinition<&[u8], &[u8]>; 2] =
        [TableDefinition::new("orders"), TableDefinition::new("expiry")];
    pub struct Rd {
        db: Database,
        pending_nondurable: bool,
    }
    impl Rd {
        pub fn open(dir: &Path) -> Self {
            let db = Database::builder().set_cache_size(CACHE).create(dir.join("orders.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(T[0]).unwrap();
            w.open_table(T[1]).unwrap();
            w.commit().unwrap();
            Rd { db, pending_nondurable: false }
        }
    }
    impl Store for Rd {
        fn name(&self) -> &'static str {
            "redb"
        }
        fn commit(&mut self, ops: Vec<Op>, durable: bool) {
            let mut w = self.db.begin_write().unwrap();
            if !durable {
                w.set_durability(Durability::None).unwrap();
            }
            {
                let mut t0 = w.open_table(T[0]).unwrap();
                let mut t1 = w.open_table(T[1]).unwrap();
                for op in ops {
                    match op {
                        Op::Put(0, k, v) => {
                            t0.insert(k.as_slice(), v.as_slice()).unwrap();
                        }
                        Op::Put(_, k, v) => {
                            t1.insert(k.as_slice(), v.as_slice()).unwrap();
                        }
                        Op::Del(0, k) => {
                            t0.remove(k.as_slice()).unwrap();
                        }
                        Op::Del(_, k) => {
                            t1.remove(k.as_slice()).unwrap();
                        }
                    }
                }
            }
            w.commit().unwrap();
            self.pending_nondurable = !durable;
        }
        fn sync(&mut self) {
            if self.pending_nondurable {
                // an empty Immediate commit makes the earlier Durability::None commits durable
                let w = self.db.begin_write().unwrap();
                w.commit().unwrap();
                self.pending_nondurable = false;
            }
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            let r = self.db.begin_read().unwrap();
            let t = r.open_table(T[0]).unwrap();
            t.get(k).unwrap().map(|v| v.value().len())
        }
        fn get_vec(&self, k: &[u8]) -> Option<Vec<u8>> {
            let r = self.db.begin_read().unwrap();
            let t = r.open_table(T[0]).unwrap();
            t.get(k).unwrap().map(|v| v.value().to_vec())
        }
        fn scan_idx(&self, upto: &[u8]) -> Vec<Vec<u8>> {
            let r = self.db.begin_read().unwrap();
            let t = r.open_table(T[1]).unwrap();
            t.range::<&[u8]>(..upto).unwrap().map(|e| e.unwrap().0.value().to_vec()).collect()
        }
        fn close(mut self: Box<Self>) {
            self.sync();
            drop(self);
        }
    }
}

#[cfg(feature = "rocksdb")]
mod rk {
    use super::*;
    use rocksdb::{BlockBasedOptions, Cache, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
    pub struct Rk {
        db: DB,
        _cache: Cache,
    }
    impl Rk {
        pub fn open(dir: &Path) -> Self {
            let cache = Cache::new_lru_cache(CACHE);
            let mut bbo = BlockBasedOptions::default();
            bbo.set_block_cache(&cache);
            bbo.set_bloom_filter(10.0, false);
            let mut o = Options::default();
            o.create_if_missing(true);
            o.create_missing_column_families(true);
            o.set_block_based_table_factory(&bbo);
            o.increase_parallelism(2);
            let db = DB::open_cf(&o, dir, ["orders", "expiry"]).unwrap();
            Rk { db, _cache: cache }
        }
    }
    impl Store for Rk {
        fn name(&self) -> &'static str {
            "rocksdb"
        }
        fn commit(&mut self, ops: Vec<Op>, durable: bool) {
            let c = [self.db.cf_handle("orders").unwrap(), self.db.cf_handle("expiry").unwrap()];
            let mut b = WriteBatch::default();
            for op in ops {
                match op {
                    Op::Put(t, k, v) => b.put_cf(c[t as usize], k, v),
                    Op::Del(t, k) => b.delete_cf(c[t as usize], k),
                }
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(durable);
            self.db.write_opt(b, &wo).unwrap();
        }
        fn sync(&mut self) {
            self.db.flush_wal(true).unwrap();
        }
        fn get(&self, k: &[u8]) -> Option<usize> {
            let c = self.db.cf_handle("orders").unwrap();
            self.db.get_pinned_cf(c, k).unwrap().map(|v| v.len())
        }
        fn get_vec(&self, k: &[u8]) -> Option<Vec<u8>> {
            let c = self.db.cf_handle("orders").unwrap();
            self.db.get_cf(c, k).unwrap()
        }
        fn scan_idx(&self, upto: &[u8]) -> Vec<Vec<u8>> {
            let c = self.db.cf_handle("expiry").unwrap();
            let mut out = Vec::new();
            for kv in self.db.iterator_cf(c, IteratorMode::From(&[], Direction::Forward)) {
                let (k, _) = kv.unwrap();
                if &*k >= upto {
                    break;
                }
                out.push(k.to_vec());
            }
            out
        }
        fn close(self: Box<Self>) {
            self.db.flush_wal(true).unwrap();
            drop(self);
        }
    }
}

// ---------------------------------------------------------------- measuring

fn cpu_secs() -> f64 {
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    }
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: f64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn du_sb(dir: &Path) -> u64 {
    let o = std::process::Command::new("du").arg("-sb").arg(dir).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

struct Meter {
    t: Instant,
    c: f64,
}
impl Meter {
    fn start() -> Self {
        Meter { t: Instant::now(), c: cpu_secs() }
    }
    /// (wall s, cpu s)
    fn stop(&self) -> (f64, f64) {
        (self.t.elapsed().as_secs_f64(), cpu_secs() - self.c)
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Write batches of (op-producing) indices; returns per-batch latencies in µs.
fn write_phase(
    s: &mut Box<dyn Store>,
    idxs: &[u64],
    periodic: bool,
    mk: &dyn Fn(u64) -> Vec<Op>,
) -> Vec<f64> {
    let mut lat = Vec::with_capacity(idxs.len() / BATCH + 1);
    for (bn, chunk) in idxs.chunks(BATCH).enumerate() {
        let ops: Vec<Op> = chunk.iter().flat_map(|&i| mk(i)).collect();
        let t = Instant::now();
        if periodic {
            s.commit(ops, false);
            if (bn + 1) % PERIODIC_EVERY == 0 {
                s.sync();
            }
        } else {
            s.commit(ops, true);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    if periodic {
        s.sync();
    }
    lat
}

fn report_write(label: &str, n: usize, wall: f64, cpu: f64, lat: &mut [f64]) {
    let p50 = pct(lat, 0.5);
    let p99 = pct(lat, 0.99);
    let max = pct(lat, 1.0);
    println!(
        "RESULT {label}: n={n} wall={wall:.2}s cpu={cpu:.2}s cpu/wall={:.2} ns/order={:.0} cpu_ns/order={:.0} us/batch_mean={:.0} p50={p50:.0} p99={p99:.0} max={max:.0}",
        cpu / wall,
        wall * 1e9 / n as f64,
        cpu * 1e9 / n as f64,
        wall * 1e6 / lat.len() as f64
    );
}

fn bench(store: &str, dir: &Path, n: u64, periodic: bool) {
    let _ = std::fs::remove_dir_all(dir);
    println!("# store={store} n={n} durability={} batch={BATCH} cache={}MiB", if periodic { "periodic" } else { "sync-per-batch" }, CACHE >> 20);
    println!("RESULT rss_start: {:.1} MiB", rss_mib());

    // 1. insert N in batches of 500, each order + its expiry-index entry in the same atomic batch
    let mut s = open(store, dir);
    let all: Vec<u64> = (0..n).collect();
    let m = Meter::start();
    let mut lat = write_phase(&mut s, &all, periodic, &|i| {
        vec![Op::Put(0, key(i), value(i, 0)), Op::Put(1, idx_key(i), Vec::new())]
    });
    let (w, c) = m.stop();
    report_write("insert", n as usize, w, c, &mut lat);
    println!("RESULT rss_after_load: {:.1} MiB", rss_mib());
    let t = Instant::now();
    s.close();
    println!("RESULT close_after_load: {:.3}s", t.elapsed().as_secs_f64());
    // let background threads die / files settle
    std::thread::sleep(Duration::from_millis(500));
    let d = du_sb(dir);
    println!("RESULT disk_after_insert: {d} bytes = {:.1} B/order", d as f64 / n as f64);

    // clean reopen
    let t = Instant::now();
    let mut s = open(store, dir);
    println!("RESULT reopen_clean: {:.3}s", t.elapsed().as_secs_f64());

    // 3b. positive lookups, random existing keys, store cache cold after reopen
    let mut rng = 0x1234_5678_9abc_def1u64;
    let pos: Vec<Vec<u8>> = (0..1_000_000).map(|_| key(xorshift(&mut rng) % n)).collect();
    let m = Meter::start();
    let mut hits = 0usize;
    for k in &pos {
        hits += s.get(k).is_some() as usize;
    }
    let (w, c) = m.stop();
    assert_eq!(hits, pos.len());
    println!("RESULT get_positive: 1000000 random existing keys ns/lookup={:.0} cpu_ns/lookup={:.0}", w * 1e3, c * 1e3);
    drop(pos);

    // 3a. negative lookups: 1M keys never written (same key space, interleaved)
    let neg: Vec<Vec<u8>> = (n..n + 1_000_000).map(key).collect();
    let m = Meter::start();
    let mut hits = 0usize;
    for k in &neg {
        hits += s.get(k).is_some() as usize;
    }
    let (w, c) = m.stop();
    assert_eq!(hits, 0);
    println!("RESULT get_negative: 1000000 absent keys ns/lookup={:.0} cpu_ns/lookup={:.0}", w * 1e3, c * 1e3);
    drop(neg);
    println!("RESULT rss_after_1M_gets: {:.1} MiB (after 1M positive + 1M negative gets)", rss_mib());

    // 2. update 20% of keys (random subset, random order) once
    let mut upd: Vec<u64> = (0..n).filter(|i| order_no(*i) % 5 == 0).collect();
    // shuffle
    let mut r = 0xfeed_beefu64;
    for j in (1..upd.len()).rev() {
        let k = (xorshift(&mut r) % (j as u64 + 1)) as usize;
        upd.swap(j, k);
    }
    let m = Meter::start();
    let mut lat = write_phase(&mut s, &upd, periodic, &|i| vec![Op::Put(0, key(i), value(i, 1))]);
    let (w, c) = m.stop();
    report_write("update_20pct", upd.len(), w, c, &mut lat);

    // 4. retention: scan expiry index for the oldest 10%, delete order + index entry
    let cut = n / 10;
    let m = Meter::start();
    let expired = s.scan_idx(&(EXPIRES_BASE + cut).to_be_bytes());
    let (w, c) = m.stop();
    assert_eq!(expired.len() as u64, cut);
    println!("RESULT retention_scan: {} index keys wall={:.3}s ns/key={:.0} cpu={:.3}s", expired.len(), w, w * 1e9 / cut as f64, c);
    let m = Meter::start();
    let mut lat = Vec::new();
    for chunk in expired.chunks(BATCH) {
        let ops: Vec<Op> = chunk
            .iter()
            .flat_map(|ik| vec![Op::Del(0, ik[8..].to_vec()), Op::Del(1, ik.clone())])
            .collect();
        let t = Instant::now();
        s.commit(ops, !periodic);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    s.sync();
    let (w, c) = m.stop();
    report_write("retention_delete_10pct", cut as usize, w, c, &mut lat);
    assert!(s.get(&key(0)).is_none() && s.get(&key(cut)).is_some());
    // a second scan after the delete (tombstones in LSMs)
    let m = Meter::start();
    let left = s.scan_idx(&(EXPIRES_BASE + cut).to_be_bytes());
    let (w, _) = m.stop();
    println!("RESULT retention_rescan_after_delete: {} keys left, wall={:.3}s", left.len(), w);

    let t = Instant::now();
    s.close();
    println!("RESULT close_final: {:.3}s", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    let d = du_sb(dir);
    println!("RESULT disk_final: {d} bytes ({} live orders) = {:.1} B/live order", n - cut, d as f64 / (n - cut) as f64);
    let t = Instant::now();
    let s = open(store, dir);
    println!("RESULT reopen_final: {:.3}s", t.elapsed().as_secs_f64());
    s.close();
}

// ---------------------------------------------------------------- crash test

/// Child: write batches forever (sync per batch); after each commit returns,
/// print "ok <batch>". Batch b holds orders b*500 .. b*500+499.
fn child(store: &str, dir: &Path, start: u64) {
    let mut s = open(store, dir);
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for b in start.. {
        let ops: Vec<Op> = (b * BATCH as u64..(b + 1) * BATCH as u64)
            .flat_map(|i| vec![Op::Put(0, key(i), value(i, 0)), Op::Put(1, idx_key(i), Vec::new())])
            .collect();
        s.commit(ops, true);
        writeln!(out, "ok {b}").unwrap();
        out.flush().unwrap();
    }
}

/// `base`: optional pre-populated store copied in before each round; the child then
/// appends from batch `start` (orders start*500..).
fn crash(store: &str, dir: &Path, rounds: u32, base: Option<&Path>, start: u64) {
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0xc0ffee_u64 ^ std::process::id() as u64;
    let mut all_ok = true;
    for round in 0..rounds {
        let _ = std::fs::remove_dir_all(dir);
        let mut idx_before = 0u64;
        if let Some(b) = base {
            assert!(std::process::Command::new("cp").arg("-a").arg(b).arg(dir).status().unwrap().success());
            let s = open(store, dir);
            idx_before = s.scan_idx(&(EXPIRES_BASE + start * BATCH as u64).to_be_bytes()).len() as u64;
            s.close();
        }
        let mut ch = std::process::Command::new(&exe)
            .args(["child", store, dir.to_str().unwrap(), &start.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut rd = BufReader::new(ch.stdout.take().unwrap());
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let delay_ms = 300 + xorshift(&mut rng) % 2700;
        let reader = std::thread::spawn(move || {
            let mut last: Option<u64> = None;
            for l in rd.lines() {
                let l = l.unwrap();
                last = Some(l[3..].parse().unwrap());
            }
            last
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        ch.kill().unwrap(); // SIGKILL
        ch.wait().unwrap();
        let acked = reader.join().unwrap();
        let acked_n = acked.map(|b| b + 1).unwrap_or(start); // first batch not acknowledged
        let d = du_sb(dir);

        let t = Instant::now();
        let s = open(store, dir);
        let reopen = t.elapsed().as_secs_f64();

        // verify: every acked batch complete and correct; then batches after must be
        // all-or-nothing; at most one batch beyond the last ack may be present.
        let mut ok = true;
        let mut present_batches = 0u64;
        let mut b = start;
        loop {
            let mut present = 0usize;
            for i in b * BATCH as u64..(b + 1) * BATCH as u64 {
                match s.get_vec(&key(i)) {
                    Some(v) => {
                        if v != value(i, 0) {
                            println!("  round {round}: batch {b} order {i}: WRONG VALUE");
                            ok = false;
                        }
                        present += 1
                    }
                    None => {}
                }
            }
            if present == BATCH {
                present_batches += 1;
            } else if present != 0 {
                println!("  round {round}: batch {b}: PARTIAL ({present}/{BATCH} visible)");
                ok = false;
            }
            if present == 0 && b >= acked_n {
                // check two more beyond for stray later batches
                let stray = (b + 1..b + 3).any(|bb| s.get(&key(bb * BATCH as u64)).is_some());
                if stray {
                    println!("  round {round}: batch after gap visible");
                    ok = false;
                }
                break;
            }
            if present == 0 && b < acked_n {
                println!("  round {round}: ACKED batch {b} MISSING");
                ok = false;
            }
            b += 1;
        }
        // index must agree with primary
        let idx = s.scan_idx(&(EXPIRES_BASE + (start + present_batches) * BATCH as u64 + 10_000_000).to_be_bytes());
        if idx.len() as u64 != idx_before + present_batches * BATCH as u64 {
            println!("  round {round}: index has {} entries, expected {}", idx.len(), idx_before + present_batches * BATCH as u64);
            ok = false;
        }
        s.close();
        all_ok &= ok;
        println!(
            "RESULT crash round {round}: base={:?} killed after {delay_ms} ms, acked_batches={}, present_batches={present_batches}, dir={d} B, reopen_after_kill={reopen:.3}s, verify={}",
            base.map(|_| idx_before),
            acked_n - start,
            if ok { "PASS" } else { "FAIL" }
        );
    }
    println!("RESULT crash_test {store}: {}", if all_ok { "PASS" } else { "FAIL" });
}

/// Fresh process: open an existing store, then 1M random positive gets; VmRSS at each step.
fn rss(store: &str, dir: &Path, n: u64) {
    println!("RESULT rss_fresh_process_start: {:.1} MiB", rss_mib());
    let t = Instant::now();
    let s = open(store, dir);
    println!("RESULT rss_after_open: {:.1} MiB (open {:.3}s)", rss_mib(), t.elapsed().as_secs_f64());
    let mut rng = 0x5555_1234_9876_0001u64;
    let m = Meter::start();
    let mut hits = 0usize;
    for _ in 0..1_000_000 {
        hits += s.get(&key(xorshift(&mut rng) % n)).is_some() as usize;
    }
    let (w, c) = m.stop();
    println!("RESULT rss_after_1M_random_gets: {:.1} MiB (hits={hits}, ns/get={:.0}, cpu_ns/get={:.0})", rss_mib(), w * 1e3, c * 1e3);
    let m = Meter::start();
    let mut hits = 0usize;
    for i in 0..1_000_000u64 {
        hits += s.get(&key(10_000_000_000 + i)).is_some() as usize;
    }
    let (w, c) = m.stop();
    assert_eq!(hits, 0);
    println!("RESULT fresh_get_negative: 1M absent keys ns/get={:.0} cpu_ns/get={:.0} (incl. ~60 ns key formatting); rss={:.1} MiB", w * 1e3, c * 1e3, rss_mib());
    s.close();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(|s| s.as_str()) {
        Some("bench") => bench(&a[2], Path::new(&a[3]), a[4].parse().unwrap(), a.get(5).map(|s| s == "periodic").unwrap_or(false)),
        Some("crash") => crash(
            &a[2],
            Path::new(&a[3]),
            a[4].parse().unwrap(),
            a.get(5).map(Path::new),
            a.get(6).map(|x| x.parse().unwrap()).unwrap_or(0),
        ),
        Some("rss") => rss(&a[2], Path::new(&a[3]), a[4].parse().unwrap()),
        Some("child") => child(&a[2], Path::new(&a[3]), a[4].parse().unwrap()),
        _ => eprintln!("usage: storebench bench|crash|child <store> <dir> ..."),
    }
}
