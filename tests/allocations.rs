//! Allocations per order on the engine's hot path (issue 14), counted by
//! a global allocator of this test binary only (so no other test pays for
//! the counting).
//!
//! Reading, validating, the payment check and the reservation of an order
//! allocate nothing once a shard's buffers have grown: the reader's
//! `Scratch`, the `Detail` buffer and the reservation's lock guards are
//! reused from order to order. What `Engine::process` still allocates per
//! order (the book's owned entry, the order's life, output payloads and
//! keys, the Kafka layer's owned records) is counted and bounded, so that
//! a regression shows.

#[path = "../benches/support/mod.rs"]
mod support;

use orderflow::engine::{Engine, OrderBook};
use orderflow::inventory::Share;
use orderflow::order::decode::{read_order, Read};
use orderflow::order::reader::Scratch;
use orderflow::order::validate::{check_payments, validate, Limits};
use orderflow::order::Detail;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use time::OffsetDateTime;

struct Counting;

thread_local! {
    /// Allocations by this thread while counting is on (`None`: off).
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

// SAFETY: every call is passed on to `System` unchanged; the counter is a
// thread-local `Cell` with a const initializer, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    // `try_with`: the thread-local may be gone while a thread exits.
    let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` made on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or_default()
}

/// Orders counted, after as many to warm the buffers up.
const ORDERS: usize = 10_000;
/// Most allocations `Engine::process` may make per order of the mix
/// (71.1 measured 2026-12-02 on the merge of main with the lifecycle;
/// 42.0 after that day's steps: commands and IDs written in one buffer,
/// the book's keys and records shared; docs/benchmarks.md, issue 14: one
/// more per order fails).
const MAX_PROCESS_ALLOCATIONS_PER_ORDER: f64 = 43.0;

#[test]
fn reading_validating_and_reserving_allocate_nothing_per_order() {
    let inventory = support::inventory(support::CATALOG_SKUS);
    let records = support::orders(2 * ORDERS, "a", support::Skus::Uniform, 7);
    let limits = Limits::default();
    let mut scratch = Scratch::default();
    let mut detail = Detail::default();
    let decide = |key: &[u8], value: &[u8], scratch: &mut Scratch, detail: &mut Detail| {
        let max = limits.max_record_bytes;
        let Read::Placed { record, head } = read_order(Some(key), Some(value), max, scratch) else {
            panic!("the mix is read by the hand-written reader");
        };
        if let Ok(valid) = validate(record, &head, scratch, &limits, detail) {
            let payments = |detail: &mut Detail| check_payments(&valid, &limits, detail);
            let _ = inventory.reserve(&valid, Share::Whole, detail, payments);
        }
    };
    let (warm, counted) = records.split_at(ORDERS);
    for (key, value) in warm {
        decide(key, value, &mut scratch, &mut detail);
    }
    let made = allocations(|| {
        for (key, value) in counted {
            decide(key, value, &mut scratch, &mut detail);
        }
    });
    assert_eq!(made, 0, "allocations over {ORDERS} orders");
}

#[test]
fn engine_process_allocations_per_order_are_bounded() {
    let engine = Engine::new(
        Arc::new(support::inventory(support::CATALOG_SKUS)),
        Limits::default(),
    );
    let mut book = OrderBook::new(ORDERS);
    let records = support::orders(2 * ORDERS, "e", support::Skus::Uniform, 7);
    let now = OffsetDateTime::from_unix_timestamp_nanos(1_795_435_200_133_000_000).unwrap();
    let mut out = Vec::new();
    let mut run = |records: &[(Vec<u8>, Vec<u8>)], first: usize| {
        for (i, (key, value)) in records.iter().enumerate() {
            out.clear();
            let offset = i64::try_from(first + i).unwrap();
            engine.process(&mut book, offset, Some(key), Some(value), now, &mut out);
        }
    };
    let (warm, counted) = records.split_at(ORDERS);
    run(warm, 0);
    let made = allocations(|| run(counted, ORDERS));
    let per_order = made as f64 / ORDERS as f64;
    println!("Engine::process: {made} allocations over {ORDERS} orders ({per_order:.2} per order)");
    assert!(
        per_order <= MAX_PROCESS_ALLOCATIONS_PER_ORDER,
        "{per_order:.2} allocations per order, bound {MAX_PROCESS_ALLOCATIONS_PER_ORDER}"
    );
}
