//! What the partition check costs per record: `Routing::check` on order
//! IDs as the loadtest writes them, on the record's own partition (every
//! record of a healthy sale) and on another (a misrouted one, which also
//! tries every known partitioner for the detail).
//!
//! Run: `cargo bench --bench partitioner`; results in docs/benchmarks.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use orderflow::partitioner::{Partitioner, Routing};

const PARTITIONS: u32 = 12;
const KEYS: usize = 1_000;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("lt18c2f3a9b1-o{i:08}").into_bytes())
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("partition_check");
    group.throughput(Throughput::Elements(KEYS as u64));
    for partitioner in [Partitioner::Murmur2, Partitioner::ConsistentRandom] {
        let routing = Routing {
            partitioner,
            partitions: PARTITIONS,
        };
        let home: Vec<i32> = keys
            .iter()
            .map(|k| partitioner.partition(k, PARTITIONS).unwrap() as i32)
            .collect();
        group.bench_function(format!("{partitioner}_on_its_partition"), |b| {
            b.iter(|| {
                for (key, partition) in keys.iter().zip(&home) {
                    black_box(routing.check(*partition, Some(black_box(key))).is_ok());
                }
            })
        });
        group.bench_function(format!("{partitioner}_misrouted"), |b| {
            b.iter(|| {
                for (key, partition) in keys.iter().zip(&home) {
                    let elsewhere = (*partition + 1) % PARTITIONS as i32;
                    black_box(routing.check(elsewhere, Some(black_box(key))).is_err());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
