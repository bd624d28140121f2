//! JSON decoders against serde_json on the order mix (issue #6).
//!
//! Every case turns the value of a `support::orders` record into the wire
//! type `decode_order` reads (`order::decode::Flat`, text borrowed as
//! `Cow<str>`), UTF-8 checked first as `decode_order` does:
//!
//! - `serde_json`: `serde_json::from_str`, what `decode_order` uses;
//! - `sonic_rs`: `sonic_rs::from_str` (SIMD; which instructions it uses is
//!   fixed at compile time by `-C target-cpu`);
//! - `simd_json`: `simd_json::serde::from_slice_with_buffers`, which parses
//!   in place: the record is copied into a reused buffer first, and the
//!   copy is counted (text borrows from the copy, not from the record).
//!
//! With `--bench`: criterion's runs, then an interleaved run of rounds of
//! every case back to back timed in thread CPU time, whose median per-round
//! ratios are the figures of docs/benchmarks.md. Without it (`cargo test
//! --all-targets`) it checks that every decoder reads every record of the
//! mix into the same value. `DECODE_PROFILE=<case>
//! DECODE_PROFILE_RECORDS=N` decodes only N records with one case, for
//! `valgrind --tool=callgrind --toggle-collect='*decode_records*'`.
//!
//! Run: `cargo bench --bench decode -- --quick`.

#[path = "support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput};
use orderflow::order::decode::Flat;
use std::time::Duration;
use support::{Record, Skus};

/// Records of the mix each case decodes per pass.
const RECORDS: usize = 4_096;
/// In test mode, enough to meet every shape of the mix.
const TEST_RECORDS: usize = 600;
/// Interleaved rounds; each decodes every record once per case.
const ROUNDS: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Decoder {
    SerdeJson,
    SonicRs,
    SimdJson,
}

impl Decoder {
    const ALL: [Decoder; 3] = [Decoder::SerdeJson, Decoder::SonicRs, Decoder::SimdJson];

    fn name(self) -> &'static str {
        match self {
            Decoder::SerdeJson => "serde_json",
            Decoder::SonicRs => "sonic_rs",
            Decoder::SimdJson => "simd_json",
        }
    }
}

/// What a decoder may reuse from one record to the next.
#[derive(Default)]
struct Scratch {
    /// simd-json's in-place copy of the record.
    copy: Vec<u8>,
    buffers: simd_json::Buffers,
}

/// Decodes `value` with `decoder` and hands the result to `f` (the value
/// may borrow from `scratch`, so it cannot be returned).
fn decode<T>(
    decoder: Decoder,
    value: &[u8],
    scratch: &mut Scratch,
    f: impl FnOnce(Result<Flat<'_>, String>) -> T,
) -> T {
    let Ok(text) = std::str::from_utf8(value) else {
        return f(Err("invalid UTF-8".into()));
    };
    match decoder {
        Decoder::SerdeJson => f(serde_json::from_str(text).map_err(|e| e.to_string())),
        Decoder::SonicRs => f(sonic_rs::from_str(text).map_err(|e| e.to_string())),
        Decoder::SimdJson => {
            scratch.copy.clear();
            scratch.copy.extend_from_slice(value);
            f(
                simd_json::serde::from_slice_with_buffers(&mut scratch.copy, &mut scratch.buffers)
                    .map_err(|e| e.to_string()),
            )
        }
    }
}

/// Decodes every record once; returns how many decoded. Not inlined, so
/// callgrind can count exactly this (`--toggle-collect='*decode_records*'`).
#[inline(never)]
fn decode_records(decoder: Decoder, records: &[Record], scratch: &mut Scratch) -> usize {
    records
        .iter()
        .filter(|(_, value)| {
            decode(decoder, value, scratch, |flat| {
                std::hint::black_box(&flat);
                flat.is_ok()
            })
        })
        .count()
}

/// Every decoder reads every record into the value serde_json reads.
fn check_agreement(records: &[Record]) {
    let mut scratch = Scratch::default();
    let mut other = Scratch::default();
    for (key, value) in records {
        decode(Decoder::SerdeJson, value, &mut scratch, |expected| {
            let expected = expected.expect("the mix is valid JSON");
            for decoder in &Decoder::ALL[1..] {
                decode(*decoder, value, &mut other, |got| {
                    assert_eq!(
                        got.as_ref(),
                        Ok(&expected),
                        "{} on record {}",
                        decoder.name(),
                        String::from_utf8_lossy(key)
                    )
                });
            }
        });
    }
}

/// Inputs where decoders are known to differ: what each accepts. Not a
/// figure; it tells what a switch away from serde_json would change.
fn print_edge_cases() {
    let deep = format!(
        r#"{{"type":"order_placed","order_id":"o","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let cases: [(&str, &[u8]); 5] = [
        (
            "duplicate key",
            br#"{"type":"order_placed","order_id":"a","order_id":"b"}"#,
        ),
        (
            "quantity past i64",
            br#"{"type":"order_placed","order_id":"o","lines":[{"sku":"S","quantity":99999999999999999999,"unit_price_minor":1,"ship_to":"h"}]}"#,
        ),
        ("unknown field nested 200 deep", deep.as_bytes()),
        (
            "lone surrogate escape",
            br#"{"type":"order_placed","order_id":"\ud800"}"#,
        ),
        (
            "trailing characters",
            br#"{"type":"order_placed","order_id":"o"} x"#,
        ),
    ];
    println!("\nedge cases (ok = decoded into the wire type):");
    let mut scratch = Scratch::default();
    for (name, value) in cases {
        let row: Vec<String> = Decoder::ALL
            .iter()
            .map(|d| {
                let outcome = decode(*d, value, &mut scratch, |r| match r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => {
                        let words: Vec<&str> = e.split_whitespace().collect();
                        let shown: String = words.join(" ").chars().take(60).collect();
                        format!("error ({shown})")
                    }
                });
                format!("{}: {outcome}", d.name())
            })
            .collect();
        println!("  {name}: {}", row.join("; "));
    }
}

fn criterion_benches(c: &mut Criterion, records: &[Record]) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(records.len() as u64));
    let mut scratch = Scratch::default();
    for decoder in Decoder::ALL {
        group.bench_function(decoder.name(), |b| {
            b.iter(|| decode_records(decoder, records, &mut scratch))
        });
    }
    group.finish();
}

/// Rounds of every case back to back (the order rotating), each timed in
/// thread CPU time; prints per-round rates and the medians of the
/// per-round ratios to serde_json.
fn interleaved(records: &[Record]) {
    let mut scratch = Scratch::default();
    let n = Decoder::ALL.len();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
    println!(
        "\ninterleaved: {ROUNDS} rounds of {} records per case, thread CPU time",
        records.len()
    );
    for round in 0..ROUNDS {
        let mut spent = [Duration::ZERO; 3];
        for i in 0..n {
            let case = (round + i) % n;
            let start = support::thread_cpu_time();
            decode_records(Decoder::ALL[case], records, &mut scratch);
            spent[case] = support::thread_cpu_time() - start;
        }
        let mut line = format!("round {round:>2}:");
        for (case, decoder) in Decoder::ALL.iter().enumerate() {
            let rate = records.len() as f64 / spent[case].as_secs_f64();
            let speedup = spent[0].as_secs_f64() / spent[case].as_secs_f64();
            rates[case].push(rate);
            ratios[case].push(speedup);
            line += &format!("  {} {rate:>9.0}/s ({speedup:.2}x)", decoder.name());
        }
        println!("{line}");
    }
    println!("medians over rounds (ratio = serde_json time / case time, same round):");
    for (case, decoder) in Decoder::ALL.iter().enumerate() {
        println!(
            "  {:<10} {:>9.0} records/s  {:.2}x serde_json (rounds {:.2}-{:.2})",
            decoder.name(),
            support::median(&mut rates[case]),
            support::median(&mut ratios[case]),
            ratios[case].first().unwrap(),
            ratios[case].last().unwrap(),
        );
    }
}

fn main() {
    let profile_records = std::env::var("DECODE_PROFILE_RECORDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if let (Ok(name), Some(n)) = (std::env::var("DECODE_PROFILE"), profile_records) {
        let decoder = *Decoder::ALL
            .iter()
            .find(|d| d.name() == name)
            .expect("DECODE_PROFILE is serde_json, sonic_rs or simd_json");
        let records = support::orders(n, "d", Skus::Uniform, 1);
        let decoded = decode_records(decoder, &records, &mut Scratch::default());
        println!("{}: {decoded} of {n} records decoded", decoder.name());
        return;
    }
    let bench = support::bench_mode();
    let records = support::orders(
        if bench { RECORDS } else { TEST_RECORDS },
        "d",
        Skus::Uniform,
        1,
    );
    check_agreement(&records);
    if !bench {
        return;
    }
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    println!(
        "{} records of the mix, {} bytes on average; sonic-rs built with AVX2: {}",
        records.len(),
        bytes / records.len(),
        cfg!(target_feature = "avx2")
    );
    print_edge_cases();
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &records);
    criterion.final_summary();
    interleaved(&records);
}
