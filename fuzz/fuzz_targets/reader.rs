//! The hand-written order reader against serde_json, its oracle: any bytes
//! as key and value of an `orders` record get the same decision both ways
//! (the same values read, or the same reason and detail, or the same dead
//! letter). Seed it with the bench mix (`tests/reader_oracle.rs` does the
//! same with proptest's mutations).

#![no_main]

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;
use orderflow::order::reader::Scratch;
use orderflow::order::validate::Limits;

fuzz_target!(|data: &[u8]| {
    // First byte splits the input into key and value.
    let (split, rest) = data.split_first().map_or((0, data), |(s, r)| (*s as usize, r));
    let (key, value) = rest.split_at(split.min(rest.len()));
    let limits = Limits::default();
    let mut scratch = Scratch::default();
    assert_eq!(
        oracle::fast(Some(key), value, &limits, &mut scratch),
        oracle::slow(Some(key), value, &limits)
    );
});
