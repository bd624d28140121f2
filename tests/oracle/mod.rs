//! The decision of one record both ways, the engine's (`read_order`: the
//! hand-written reader, serde_json for what it declines) and serde_json's
//! alone (`decode_order`), as text: shared by `tests/reader_oracle.rs` and
//! the fuzz target `fuzz/fuzz_targets/reader.rs`.

use orderflow::order::decode::{decode_order, read_order, Decoded, Read};
use orderflow::order::reader::Scratch;
use orderflow::order::validate::{check_payments, validate, Limits, ValidOrder};
use orderflow::order::{Detail, OrderEvent};
use std::fmt::Write;

/// The values a valid order was read into, and its payment check.
fn describe_valid(valid: &ValidOrder<'_>, limits: &Limits) -> String {
    let mut text = format!(
        "valid {:?} {:?} {} {} total {}\n",
        valid.order_id,
        valid.customer_id,
        valid.placed_at,
        valid.currency.code(),
        valid.total_minor
    );
    for line in valid.lines() {
        let _ = writeln!(text, "{line:?}");
    }
    for address in valid.addresses() {
        let _ = writeln!(text, "{address:?}");
    }
    for payment in valid.payments() {
        let _ = writeln!(text, "{payment:?}");
    }
    let _ = writeln!(text, "{:?}", valid.demand().collect::<Vec<_>>());
    let mut detail = Detail::default();
    match check_payments(valid, limits, &mut detail) {
        Ok(()) => text.push_str("payments ok"),
        Err(reason) => {
            let _ = write!(text, "rejected {reason:?} {:?}", detail.as_str());
        }
    }
    text
}

fn describe_decoded(decoded: Decoded<'_>, limits: &Limits, scratch: &mut Scratch) -> String {
    match decoded {
        Decoded::DeadLetter(dead) => format!("dead {:?} {:?}", dead.reason, dead.detail),
        Decoded::Invalid {
            order_id,
            rejection,
        } => format!(
            "invalid {order_id:?} {:?} {:?}",
            rejection.reason, rejection.detail
        ),
        Decoded::Part2 { order_id, part2 } => format!("part2 {order_id:?} {part2:?}"),
        Decoded::Event(OrderEvent::Cancelled(cancel)) => format!("cancel {:?}", cancel.order_id),
        Decoded::Event(OrderEvent::Placed(order)) => {
            let head = scratch.load(&order);
            let mut detail = Detail::default();
            match validate("", &head, scratch, limits, &mut detail) {
                Ok(valid) => describe_valid(&valid, limits),
                Err(reason) => format!("rejected {reason:?} {:?}", detail.as_str()),
            }
        }
    }
}

/// The engine's path: the reader, serde_json for what it declines.
pub fn fast(key: Option<&[u8]>, value: &[u8], limits: &Limits, scratch: &mut Scratch) -> String {
    match read_order(key, Some(value), limits.max_record_bytes, scratch) {
        Read::Placed { record, head } => {
            let mut detail = Detail::default();
            match validate(record, &head, scratch, limits, &mut detail) {
                Ok(valid) => describe_valid(&valid, limits),
                Err(reason) => format!("rejected {reason:?} {:?}", detail.as_str()),
            }
        }
        Read::Cancelled { order_id } => format!("cancel {order_id:?}"),
        Read::Decoded(decoded) => {
            let mut own = Scratch::default();
            describe_decoded(decoded, limits, &mut own)
        }
    }
}

/// Today's path: serde_json alone.
pub fn slow(key: Option<&[u8]>, value: &[u8], limits: &Limits) -> String {
    let mut scratch = Scratch::default();
    describe_decoded(
        decode_order(key, Some(value), limits.max_record_bytes),
        limits,
        &mut scratch,
    )
}
