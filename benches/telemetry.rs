//! What turning metrics on costs the hot path.
//!
//! Both cases run the engine over the same realistic batch of records (a
//! flash-sale mix: multi-line, multi-address orders, a sold-out hot SKU,
//! invalid orders, cancellations, unreadable records), each on a fresh
//! order book. `metrics_on` also makes every per-record telemetry call the
//! shard makes (`ShardTelemetry::order_processed` with its two histogram
//! samples, `outputs_emitted`: each fulfillment by type and an accepted
//! order's units for the hot-SKU tally, the flushes into the
//! exporter, the clock reads for the processing time), with the real
//! Prometheus recorder installed as the global recorder, as `orderflow run`
//! does. `metrics_off` makes none of
//! them, so the difference is an upper bound of the cost.
//!
//! Run: `cargo bench --bench telemetry`; results in docs/benchmarks.md.

#[path = "support/mod.rs"]
mod support;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use metrics_exporter_prometheus::PrometheusHandle;
use orderflow::engine::{Engine, OrderBook};
use orderflow::inventory::Inventory;
use orderflow::order::validate::Limits;
use orderflow::order::InventoryEvent;
use orderflow::telemetry;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

const BATCH: usize = 1_000;
const SKUS: usize = 200;

fn price(sku: usize) -> i64 {
    100 + sku as i64 * 7
}

fn engine() -> Engine {
    let inventory = Arc::new(Inventory::new());
    for sku in 0..SKUS {
        inventory
            .apply(&InventoryEvent::StockSet {
                sku: format!("SKU-{sku}"),
                // Enough for every iteration criterion runs: outcomes stay the same.
                available: 1_000_000_000_000,
                prices: BTreeMap::from([("EUR".to_string(), price(sku))]),
                max_per_customer: None,
            })
            .unwrap();
    }
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: "HOT".into(),
            available: 0,
            prices: BTreeMap::from([("EUR".to_string(), 999)]),
            max_per_customer: None,
        })
        .unwrap();
    Engine::new(inventory, Limits::default())
}

fn address(i: usize) -> serde_json::Value {
    json!({"name": format!("Zoë Ørsted {i} 🏠"), "line1": format!("Hauptstraße {i}"), "city": "Berlin",
           "postal_code": format!("{:05}", 10000 + i), "country": "DE"})
}

/// (key, value) records: 87% valid orders of 1–3 lines over 1–2 addresses
/// paid by 1–2 payments, 5% for the sold-out hot SKU, 3% invalid, 4%
/// cancellations of earlier accepted orders, 1% unreadable.
fn batch() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        let id = format!("o-{i:06}");
        let value = match i % 100 {
            0 => b"{not json".to_vec(),
            1..=4 if i >= 100 => serde_json::to_vec(&json!({"type": "order_cancelled",
                "order_id": format!("o-{:06}", i - 87), "cancelled_at": "2026-11-23T12:00:01Z"}))
            .unwrap(),
            5..=9 => placed(&id, i, &[("HOT".into(), 1, 999)]),
            10..=12 => placed(&id, i, &[(format!("SKU-{}", i % SKUS), 0, price(i % SKUS))]),
            _ => {
                let lines: Vec<(String, i64, i64)> = (0..i % 3 + 1)
                    .map(|l| {
                        let sku = (i * 7 + l * 13) % SKUS;
                        (format!("SKU-{sku}"), (l + 1) as i64, price(sku))
                    })
                    .collect();
                placed(&id, i, &lines)
            }
        };
        records.push((id.into_bytes(), value));
    }
    // Cancellations are keyed by the order they cancel.
    for (key, value) in records.iter_mut() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(value) {
            if v["type"] == "order_cancelled" {
                *key = v["order_id"].as_str().unwrap().as_bytes().to_vec();
            }
        }
    }
    records
}

fn placed(id: &str, i: usize, lines: &[(String, i64, i64)]) -> Vec<u8> {
    let addresses = i % 2 + 1;
    let total: i64 = lines.iter().map(|(_, q, p)| q * p).sum();
    let line_values: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(l, (sku, q, p))| json!({"sku": sku, "quantity": q, "unit_price_minor": p, "ship_to": format!("a{}", l % addresses)}))
        .collect();
    let addr: serde_json::Map<String, serde_json::Value> = (0..addresses)
        .map(|a| (format!("a{a}"), address(i + a)))
        .collect();
    let payments = if i.is_multiple_of(4) && total > 1 {
        json!([{"method": "card", "amount_minor": total - 1, "authorization_id": "auth-1"},
               {"method": "gift_card", "amount_minor": 1, "authorization_id": "auth-2"}])
    } else {
        json!([{"method": "card", "amount_minor": total, "authorization_id": "auth-1"}])
    };
    serde_json::to_vec(
        &json!({"type": "order_placed", "order_id": id, "customer_id": format!("c-{i}"),
        "placed_at": "2026-11-23T12:00:00.123Z", "currency": "EUR", "lines": line_values,
        "addresses": addr, "payments": payments}),
    )
    .unwrap()
}

/// The shard's work for one batch, without telemetry.
#[inline(never)]
fn process_off(
    engine: &Engine,
    book: &mut OrderBook,
    records: &[(Vec<u8>, Vec<u8>)],
    now: OffsetDateTime,
) {
    let mut out = Vec::new();
    for (offset, (key, value)) in records.iter().enumerate() {
        out.clear();
        let processed = engine.process(book, offset as i64, Some(key), Some(value), now, &mut out);
        black_box(&processed);
        black_box(&out);
    }
}

/// The same, with every telemetry call the shard makes per record, as
/// `kafka::worker` makes them: the receive time (taken by the consumer
/// thread in production; here on the same thread, so counted against the
/// shard), one clock read when the outputs are enqueued, the buffered
/// per-shard recorder, and its flushes.
fn process_on(
    engine: &Engine,
    book: &mut OrderBook,
    records: &[(Vec<u8>, Vec<u8>)],
    now: OffsetDateTime,
    metrics: &mut telemetry::ShardTelemetry,
) {
    let mut out = Vec::new();
    let mut last_report = quanta::Instant::now();
    for (offset, (key, value)) in records.iter().enumerate() {
        let received = quanta::Instant::now();
        out.clear();
        let processed = engine.process(book, offset as i64, Some(key), Some(value), now, &mut out);
        metrics.outputs_emitted(&out);
        let done = quanta::Instant::now();
        metrics.order_processed(
            processed.outcome,
            processed.latency,
            done.duration_since(received),
        );
        if done.duration_since(last_report) >= DEPTH_REPORT_INTERVAL {
            metrics.flush();
            last_report = done;
        }
        black_box(&out);
    }
}

/// As in `kafka::worker`.
const DEPTH_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Rounds of the paired comparison, unless `TELEMETRY_PAIRED_ROUNDS` says
/// otherwise (a few rounds under callgrind, see docs/benchmarks.md).
const PAIRED_ROUNDS: usize = 300;

/// One batch with telemetry, its last flush included: what callgrind's
/// `--toggle-collect='*batch_on*'` counts, against `process_off`. A shard
/// keeps one recorder for its whole life (its hot-SKU tally warm), so the
/// rounds share one too.
#[inline(never)]
fn batch_on(
    engine: &Engine,
    book: &mut OrderBook,
    records: &[(Vec<u8>, Vec<u8>)],
    now: OffsetDateTime,
    metrics: &mut telemetry::ShardTelemetry,
) {
    process_on(engine, book, records, now, metrics);
    metrics.flush(); // the last flush belongs to the batch
}

/// Off and on alternate batch by batch (which goes first alternates too),
/// timed in thread CPU time, so load from other processes and frequency
/// changes hit both alike; the medians' ratio is the overhead. Criterion's
/// separate wall-clock runs above are seconds apart and, on a shared
/// machine, noisier than the effect.
fn paired(
    engine: &Engine,
    records: &[(Vec<u8>, Vec<u8>)],
    now: OffsetDateTime,
    handle: &PrometheusHandle,
) {
    let rounds = std::env::var("TELEMETRY_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|rounds| *rounds > 0)
        .unwrap_or(PAIRED_ROUNDS);
    let mut off = Vec::with_capacity(rounds);
    let mut on = Vec::with_capacity(rounds);
    let mut metrics = telemetry::ShardTelemetry::new();
    for round in 0..rounds {
        for first in [round % 2 == 0, round % 2 != 0] {
            let mut book = OrderBook::new(2 * BATCH);
            handle.run_upkeep();
            let start = support::thread_cpu_time();
            if first {
                process_off(engine, &mut book, records, now);
                off.push(support::thread_cpu_time() - start);
            } else {
                batch_on(engine, &mut book, records, now, &mut metrics);
                on.push(support::thread_cpu_time() - start);
            }
        }
    }
    off.sort();
    on.sort();
    let (off, on) = (off[rounds / 2], on[rounds / 2]);
    let overhead = on.as_secs_f64() / off.as_secs_f64() - 1.0;
    println!(
        "paired, {rounds} rounds of {BATCH} records, thread CPU time: median metrics_off {:.3} ms, metrics_on {:.3} ms, \
         overhead {:+.2}% ({:.0} ns per record)",
        off.as_secs_f64() * 1e3,
        on.as_secs_f64() * 1e3,
        overhead * 100.0,
        (on.as_secs_f64() - off.as_secs_f64()) * 1e9 / BATCH as f64,
    );
}

fn bench(c: &mut Criterion) {
    // The real recorder, installed before the first telemetry call resolves
    // its handles, exactly as `orderflow run` does.
    let recorder = telemetry::recorder().expect("building the recorder");
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("installing the recorder");
    telemetry::describe();
    telemetry::init_series();

    let engine = engine();
    let records = batch();
    let now = OffsetDateTime::parse(
        "2026-11-23T12:00:00.130Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let mut group = c.benchmark_group("engine_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("metrics_off", |b| {
        b.iter_batched_ref(
            || OrderBook::new(2 * BATCH),
            |book| process_off(&engine, book, &records, now),
            BatchSize::LargeInput,
        )
    });
    let mut metrics = telemetry::ShardTelemetry::new();
    group.bench_function("metrics_on", |b| {
        b.iter_batched_ref(
            || {
                // The exporter's upkeep folds histogram samples into buckets
                // every few seconds in production; here, between batches.
                handle.run_upkeep();
                OrderBook::new(2 * BATCH)
            },
            |book| batch_on(&engine, book, &records, now, &mut metrics),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    paired(&engine, &records, now, &handle);

    // The metrics really were recorded (a broken recorder would be free).
    let scrape = handle.render();
    assert!(
        scrape.contains("orderflow_orders_total{outcome=\"accepted\"}"),
        "{scrape}"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
