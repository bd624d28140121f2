//! The hand-written order reader against serde_json, its oracle (issue 14).
//!
//! Every record, arbitrary or a mutation of a contract order, goes both
//! ways: `decode::read_order` (the engine's path: the reader, falling back
//! to serde_json for whatever it declines) and `decode::decode_order`
//! (serde_json alone, today's path). Both must reach the same decision:
//! accepted with the same values read, or the same rejection reason and
//! detail, or the same dead letter. The details are compared whole, since
//! one validator serves both paths.

#[path = "../benches/support/mod.rs"]
mod support;

mod oracle;

use oracle::{fast, slow};
use orderflow::order::reader::{self, Scratch};
use orderflow::order::validate::Limits;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Values that stress a reader: wrong types, edges of i64, escapes.
fn odd_value(pick: u8) -> Value {
    match pick % 20 {
        0 => Value::Null,
        1 => json!(""),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(i64::MAX),
        5 => json!(i64::MIN),
        6 => json!(u64::MAX),
        7 => json!(1.5),
        8 => json!([]),
        9 => json!({}),
        10 => json!("é\"\\\u{0}\u{7f}\u{1F680}"),
        11 => json!(true),
        12 => json!("EUR"),
        13 => json!([{"a": [[{"b": 1}]]}]),
        14 => json!("a/b"),
        15 => json!(2),
        16 => json!("\n\t"),
        17 => json!("x".repeat(300)),
        18 => json!(["SKU-00001"]),
        _ => json!({"sku": "SKU-00001", "quantity": 1}),
    }
}

/// Every object and array in `value`, as JSON pointers.
fn containers(value: &Value, at: String, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            into.push(at.clone());
            for (k, v) in map {
                containers(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    into,
                );
            }
        }
        Value::Array(items) => {
            into.push(at.clone());
            for (i, v) in items.iter().enumerate() {
                containers(v, format!("{at}/{i}"), into);
            }
        }
        _ => {}
    }
}

/// One structural change: a field of some object set to an odd value or
/// removed, or an unknown field added.
fn mutate_value(order: &mut Value, (place, field, pick): (u32, u32, u8)) {
    let mut all = Vec::new();
    containers(order, String::new(), &mut all);
    let at = &all[place as usize % all.len()];
    let Some(target) = order.pointer_mut(at) else {
        return;
    };
    match target {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            if keys.is_empty() || pick % 7 == 0 {
                map.insert(format!("extra_{field}"), odd_value(pick / 7));
            } else {
                let key = &keys[field as usize % keys.len()];
                if pick % 7 == 1 {
                    map.remove(key);
                } else {
                    map.insert(key.clone(), odd_value(pick));
                }
            }
        }
        Value::Array(items) => {
            if items.is_empty() || pick % 3 == 0 {
                items.push(odd_value(pick / 3));
            } else {
                let i = field as usize % items.len();
                if pick % 3 == 1 {
                    items.remove(i);
                } else {
                    let copy = items[i].clone();
                    items.push(copy);
                }
            }
        }
        _ => {}
    }
}

const SPECIAL: &[u8] = b"\"\\{}[],:0-e. u\x80\xff\x01nt/";

/// One change to the bytes: a special byte put in or taken out, a span
/// copied (duplicate keys, repeated values), or an escape.
fn mutate_bytes(text: &mut Vec<u8>, (place, len, pick): (u32, u8, u8)) {
    if text.is_empty() {
        text.push(SPECIAL[pick as usize % SPECIAL.len()]);
        return;
    }
    let at = place as usize % text.len();
    let special = SPECIAL[pick as usize % SPECIAL.len()];
    match pick % 5 {
        0 => text.insert(at, special),
        1 => {
            text.remove(at);
        }
        2 => text[at] = special,
        3 => {
            let end = (at + usize::from(len)).min(text.len());
            let span = text[at..end].to_vec();
            text.splice(end..end, span);
        }
        _ => {
            // An ASCII letter inside a string as a \u escape.
            if text[at].is_ascii_alphanumeric() {
                let escaped = format!("\\u{:04x}", text[at]);
                text.splice(at..at + 1, escaped.into_bytes());
            }
        }
    }
}

/// Duplicates a top-level field by text: `{"a":1,` becomes
/// `{"a":1,"a":1,`, which serde_json refuses for known fields.
fn duplicate_field(text: &mut Vec<u8>, field: &str) {
    let needle = format!("\"{field}\":");
    let Some(start) = text
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
    else {
        return;
    };
    let Some(len) = text[start..].iter().position(|b| *b == b',') else {
        return;
    };
    let span = text[start..start + len + 1].to_vec();
    text.splice(start..start, span);
}

fn check(key: Option<&[u8]>, value: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let mut scratch = Scratch::default();
    let fast = fast(key, value, &limits, &mut scratch);
    let slow = slow(key, value, &limits);
    prop_assert_eq!(
        &fast,
        &slow,
        "record {:?} key {:?}",
        String::from_utf8_lossy(value),
        key
    );
    Ok(())
}

const FIELDS: [&str; 8] = [
    "type",
    "order_id",
    "customer_id",
    "currency",
    "lines",
    "sku",
    "quantity",
    "name",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Contract orders of the bench mix, changed in their structure and
    /// their bytes: the same decision both ways.
    #[test]
    fn mutated_orders_get_the_same_decision(
        seed in any::<u64>(),
        values in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u8>()), 0..3),
        bytes in proptest::collection::vec((any::<u32>(), 0u8..40, any::<u8>()), 0..3),
        duplicate in proptest::option::of(0..FIELDS.len()),
        pretty in any::<bool>(),
        cancel in any::<bool>(),
        keyed in 0u8..10,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = format!("o-{seed}");
        let mut order = support::order_value(
            &mut rng,
            &id,
            (seed % 1000) as usize,
            support::Skus::Uniform,
            "2026-11-23T12:00:00.123Z",
        );
        if cancel {
            order = json!({"type": "order_cancelled", "order_id": id, "reason": "r"});
        }
        for change in values {
            mutate_value(&mut order, change);
        }
        let mut text = if pretty {
            serde_json::to_vec_pretty(&order).unwrap()
        } else {
            serde_json::to_vec(&order).unwrap()
        };
        if let Some(field) = duplicate {
            duplicate_field(&mut text, FIELDS[field]);
        }
        for change in bytes {
            mutate_bytes(&mut text, change);
        }
        let key = match keyed {
            0 => None,
            1 => Some(b"someone-else".to_vec()),
            _ => Some(id.into_bytes()),
        };
        check(key.as_deref(), &text)?;
    }

    /// Any bytes at all, and short JSON-ish texts.
    #[test]
    fn arbitrary_records_get_the_same_decision(
        value in proptest::collection::vec(any::<u8>(), 0..200),
        texty in "[{}\\[\\]\":,a-z0-9 \\\\]{0,80}",
    ) {
        check(Some(b"o-1"), &value)?;
        check(Some(b"o-1"), texty.as_bytes())?;
        let wrapped = format!("{{\"type\":\"order_placed\",\"order_id\":\"o-1\",{texty}}}");
        check(Some(b"o-1"), wrapped.as_bytes())?;
    }
}

/// Nesting of an unknown field at the reader's depth limit and past it:
/// the reader skips it or declines, and serde_json decides the same.
#[test]
fn unknown_fields_at_and_past_the_depth_limit() {
    let mut rng = StdRng::seed_from_u64(7);
    for depth in [
        1,
        reader::MAX_SKIP_DEPTH - 1,
        reader::MAX_SKIP_DEPTH,
        reader::MAX_SKIP_DEPTH + 1,
        200,
    ] {
        let order = support::order_value(
            &mut rng,
            "o-1",
            1,
            support::Skus::Uniform,
            "2026-11-23T12:00:00.123Z",
        );
        let mut text = serde_json::to_string(&order).unwrap();
        text.pop();
        text.push_str(&format!(
            ",\"deep\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
        let limits = Limits::default();
        let mut scratch = Scratch::default();
        assert_eq!(
            fast(Some(b"o-1"), text.as_bytes(), &limits, &mut scratch),
            slow(Some(b"o-1"), text.as_bytes(), &limits),
            "depth {depth}"
        );
        // Within the limit the reader reads the record itself.
        let read = reader::read(text.as_bytes(), &mut scratch).is_some();
        assert_eq!(read, depth <= reader::MAX_SKIP_DEPTH, "depth {depth}");
    }
}

/// `value` as JSON with every character of every string value written as
/// a `\u` escape (surrogate pairs past the BMP); keys as they are.
fn escaped_json(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => {
            out.push('"');
            for unit in text.encode_utf16() {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escaped_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).unwrap());
                out.push(':');
                escaped_json(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Orders of the mix with every string value escaped: the reader unescapes
/// them itself, into the same text serde_json reads.
#[test]
fn escaped_strings_read_the_same() {
    let limits = Limits::default();
    let mut scratch = Scratch::default();
    let mut rng = StdRng::seed_from_u64(3);
    for i in 0..200 {
        let id = format!("o-{i}");
        let order = support::order_value(
            &mut rng,
            &id,
            i,
            support::Skus::Uniform,
            "2026-11-23T12:00:00.123Z",
        );
        let mut text = String::new();
        escaped_json(&order, &mut text);
        assert!(
            reader::read(text.as_bytes(), &mut scratch).is_some(),
            "the reader reads it itself: {text}"
        );
        assert_eq!(
            fast(Some(id.as_bytes()), text.as_bytes(), &limits, &mut scratch),
            slow(Some(id.as_bytes()), text.as_bytes(), &limits),
            "{text}"
        );
    }
}
