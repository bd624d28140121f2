//! The dedup window bounds memory: the engine and one partition's order
//! book, with a window of 1,000 orders, are sent 100 times more orders than
//! the window holds, each of them twice (the copy half a window later, as
//! an upstream retry). Resident memory stays flat, every order is decided
//! exactly once, every copy is counted a duplicate, and the book never
//! holds more than its limit (nor timers of orders it forgot: every
//! accepted order waits for its capture's result).
//!
//! (In its own test binary, so no other test shares the process's memory.
//! The Kafka client's own queues are bounded by librdkafka settings; a
//! broker-level version of this test is future work, see issue 5's note.)

use orderflow::engine::{Engine, OrderBook, Outcome, Output};
use orderflow::inventory::Inventory;
use orderflow::order::validate::Limits;
use orderflow::order::InventoryEvent;
use std::sync::Arc;

const DEDUP_WINDOW_ORDERS: usize = 1_000;
const PHASE_ORDERS: usize = 25_000;
const PHASES: usize = 4;
const SKUS: usize = 50;
/// Orders between an order and its copy: well inside the window.
const COPY_LAG_ORDERS: usize = DEDUP_WINDOW_ORDERS / 2;
/// Allowed growth from the end of the first phase to the end of the last.
/// A book that kept every order would grow by tens of MiB (75,000 more
/// orders at several hundred bytes each).
const MAX_GROWTH_KIB: u64 = 2_048;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn order(i: usize) -> (String, Vec<u8>) {
    let id = format!("o-{i}");
    let value = serde_json::json!({"type": "order_placed", "order_id": id, "customer_id": format!("customer-{i}"),
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR",
        "lines": [{"sku": format!("SKU-{}", i % SKUS), "quantity": 1, "unit_price_minor": 100, "ship_to": "home"}],
        "addresses": {"home": {"name": "Zoë 🏠", "line1": "Hauptstraße 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": 100, "authorization_id": "a"}]});
    (id, serde_json::to_vec(&value).unwrap())
}

#[test]
fn memory_stays_flat_past_the_dedup_window_and_nothing_is_lost() {
    let inventory = Arc::new(Inventory::new());
    for i in 0..SKUS {
        inventory
            .apply(&InventoryEvent::StockSet {
                sku: format!("SKU-{i}"),
                available: 1_000_000,
                prices: [("EUR".to_string(), 100)].into(),
                max_per_customer: None,
            })
            .unwrap();
    }
    let engine = Engine::new(inventory, Limits::default());
    let mut book = OrderBook::new(DEDUP_WINDOW_ORDERS);
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    let mut statuses = 0;
    let mut duplicates = 0;
    let mut offset = 0;
    // Sends order `i` at the next offset; counts its statuses and outcome.
    let mut send = |i: usize, book: &mut OrderBook| {
        let (id, value) = order(i);
        out.clear();
        let processed = engine.process(
            book,
            offset,
            Some(id.as_bytes()),
            Some(&value),
            now,
            &mut out,
        );
        offset += 1;
        statuses += out
            .iter()
            .filter(|o| matches!(o, Output::Status { .. }))
            .count();
        duplicates += usize::from(processed.outcome == Outcome::Duplicate);
        assert!(
            book.len() <= DEDUP_WINDOW_ORDERS,
            "the book outgrew its window"
        );
        assert!(
            book.timers_set() <= book.len(),
            "timers of forgotten orders are kept"
        );
    };
    let mut after_phase = Vec::new();
    for phase in 0..PHASES {
        for i in phase * PHASE_ORDERS..(phase + 1) * PHASE_ORDERS {
            send(i, &mut book);
            if let Some(copy) = i.checked_sub(COPY_LAG_ORDERS) {
                send(copy, &mut book);
            }
        }
        after_phase.push(resident_kib());
        println!(
            "after {} orders: resident {} KiB, book {} orders",
            (phase + 1) * PHASE_ORDERS,
            after_phase[phase],
            book.len()
        );
    }
    let orders = PHASES * PHASE_ORDERS;
    for copy in orders - COPY_LAG_ORDERS..orders {
        send(copy, &mut book);
    }
    assert_eq!(statuses, orders, "every order decided exactly once");
    assert_eq!(duplicates, orders, "every copy counted a duplicate");
    let total_units: i64 = (0..SKUS)
        .map(|i| {
            engine
                .inventory()
                .get(&format!("SKU-{i}"))
                .unwrap()
                .reserved
        })
        .sum();
    assert_eq!(
        total_units as usize,
        PHASES * PHASE_ORDERS,
        "every acceptance still holds its unit"
    );
    let growth = after_phase[PHASES - 1].saturating_sub(after_phase[0]);
    println!(
        "growth over {} more orders: {growth} KiB (limit {MAX_GROWTH_KIB} KiB)",
        (PHASES - 1) * PHASE_ORDERS
    );
    assert!(
        growth <= MAX_GROWTH_KIB,
        "resident memory grew by {growth} KiB"
    );
}
