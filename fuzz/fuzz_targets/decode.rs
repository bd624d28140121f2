//! Any bytes, as key and value of an `orders` or `inventory` record, must
//! decode to exactly one of: an event, an `invalid_order` rejection, or a
//! dead letter, without panicking; and the engine must process them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use orderflow::engine::{Engine, OrderBook};
use orderflow::inventory::Inventory;
use orderflow::order::decode::{decode_inventory, decode_order, Decoded};
use orderflow::order::validate::Limits;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    // First byte splits the input into key and value.
    let (split, rest) = data.split_first().map_or((0, data), |(s, r)| (*s as usize, r));
    let (key, value) = rest.split_at(split.min(rest.len()));
    let limits = Limits::default();
    if let Decoded::Invalid { order_id, .. } = decode_order(Some(key), Some(value), limits.max_record_bytes) {
        assert!(!order_id.is_empty());
    }
    let _ = decode_inventory(Some(key), Some(value), limits.max_record_bytes);
    let inventory = Arc::new(Inventory::new());
    if let Ok(event) = decode_inventory(None, Some(value), limits.max_record_bytes) {
        let _ = inventory.apply(&event);
    }
    let engine = Engine::new(inventory, limits);
    let mut book = OrderBook::new(16);
    let mut out = Vec::new();
    let now = time::OffsetDateTime::UNIX_EPOCH;
    engine.process(&mut book, 0, Some(key), Some(value), now, &mut out);
    engine.process(&mut book, 1, Some(key), Some(value), now, &mut out);
    assert!(engine.inventory().oversold_units() == 0);
});
