//! Memory is bounded: the processor binary runs with a small dedup window
//! and small queues, is sent many times more orders than they hold, and its
//! resident memory stays flat while every order still gets its status.

mod common;

use common::{wait_for, Broker};
use rdkafka::message::Message;
use serde_json::json;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PARTITIONS: i32 = 2;
const DEDUP_WINDOW_ORDERS: usize = 1_000;
const SHARD_QUEUE_RECORDS: usize = 64;
/// Orders per phase; the window holds a small fraction of one phase.
const PHASE_ORDERS: usize = 15_000;
const PHASES: usize = 4;
/// Allowed growth of resident memory from the end of the first phase to the
/// end of the last. Unbounded books alone would grow by more than this
/// (45,000 more orders × a few hundred bytes each).
const MAX_GROWTH_BYTES: u64 = 12 << 20;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn order(i: usize) -> (Option<Vec<u8>>, Vec<u8>) {
    let id = format!("o-{i}");
    let value = json!({"type": "order_placed", "order_id": id, "customer_id": format!("customer-{i}"),
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR",
        "lines": [{"sku": format!("SKU-{}", i % 50), "quantity": 1, "unit_price_minor": 100, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë 🏠", "line1": "Hauptstraße 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": 100, "authorization_id": "a"}]});
    (Some(id.into_bytes()), serde_json::to_vec(&value).unwrap())
}

#[test]
fn memory_stays_flat_past_every_limit_and_nothing_is_lost() {
    let broker = Broker::start();
    broker.create_contract_topics(PARTITIONS);
    let inventory: Vec<_> = (0..50)
        .map(|i| {
            let v = json!({"type": "stock_set", "sku": format!("SKU-{i}"), "available": 1_000_000, "prices": {"EUR": 100}});
            (Some(format!("SKU-{i}").into_bytes()), serde_json::to_vec(&v).unwrap())
        })
        .collect();
    broker.produce("inventory", &inventory);
    let processor = Running(
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["run", "--brokers", &broker.addr(), "--set", "metrics.enabled=false"])
            .args(["--set", &format!("engine.dedup_window_orders={DEDUP_WINDOW_ORDERS}")])
            .args(["--set", &format!("engine.shard_queue_records={SHARD_QUEUE_RECORDS}")])
            // librdkafka's prefetch queue is bounded too; keep it small so
            // the measurement sees the processor's own memory.
            .args(["--set", "kafka.consumer.queued.max.messages.kbytes=4096"])
            .args(["--set", "log.level=warn"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = processor.0.id();
    let mut after_phase = Vec::new();
    for phase in 0..PHASES {
        let orders: Vec<_> = (phase * PHASE_ORDERS..(phase + 1) * PHASE_ORDERS).map(order).collect();
        broker.produce("orders", &orders);
        let want = (phase + 1) * PHASE_ORDERS;
        let statuses = broker.read_until("order-status", Duration::from_secs(180), |m| m.len() >= want);
        let distinct: HashSet<&[u8]> = statuses.iter().filter_map(|m| m.key()).collect();
        assert_eq!(distinct.len(), want, "every order so far has exactly one status");
        after_phase.push(resident_bytes(pid));
        println!("after {want} orders: resident {} MiB", after_phase[phase] >> 20);
    }
    let growth = after_phase[PHASES - 1].saturating_sub(after_phase[0]);
    println!(
        "growth from {} to {} orders: {} KiB (limit {} KiB; window {DEDUP_WINDOW_ORDERS} orders per partition)",
        PHASE_ORDERS,
        PHASES * PHASE_ORDERS,
        growth >> 10,
        MAX_GROWTH_BYTES >> 10
    );
    assert!(growth <= MAX_GROWTH_BYTES, "resident memory grew by {growth} bytes");
    wait_for("the processor to still be running", Duration::from_secs(1), || {
        std::fs::metadata(format!("/proc/{pid}")).ok()
    });
}
