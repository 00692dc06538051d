//! Criterion benches of warmshard alone on W1 data, so that regressions show in criterion's
//! reports (`target/criterion/`). The side-by-side figures are `benches/peers.rs`.
//!
//! `cargo bench --bench shard`; `cargo bench --bench shard -- get` runs only the get benches.

#[allow(dead_code)]
#[path = "common/data.rs"]
mod data;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use warmshard::{Options, Shard, WriteOutcome};

use data::DataSet;

const N: u64 = 16_384;
const OPEN_NS: [u64; 3] = [1_024, 16_384, 262_144];

fn build(dir: &Path, set: &DataSet) -> PathBuf {
    let path = dir.join(format!("w1-{}.shard", set.len()));
    let shard = Shard::open_with(&path, Options::new().durable(false)).expect("open");
    let outcome = shard.replace_all(set.entries.iter().map(|(k, v)| (k, v)));
    assert!(
        matches!(outcome, Ok(WriteOutcome::Committed { .. })),
        "prewarm: {outcome:?}"
    );
    path
}

/// Cycles through a fixed list of lookups, one per iteration.
fn bench_lookups(c: &mut Criterion, name: &str, path: &Path, keys: &[&[u8]]) {
    let snap = Shard::open(path).expect("open").snapshot();
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            let key = keys[i % keys.len()];
            i += 1;
            snap.get(black_box(key))
                .map(|v| v.len() + usize::from(v[0]))
        })
    });
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("warmshard-criterion")
        .tempdir()
        .expect("temp dir");
    let sets: Vec<DataSet> = OPEN_NS.iter().map(|&n| DataSet::new(n)).collect();
    let paths: Vec<PathBuf> = sets.iter().map(|set| build(dir.path(), set)).collect();
    let head = OPEN_NS
        .iter()
        .position(|&n| n == N)
        .expect("N is an open N");

    let (hits, _) = sets[head].lookups(100_000, 100, 1);
    bench_lookups(c, "get/hit/16384", &paths[head], &hits);
    let (mix, _) = sets[head].lookups(100_000, 50, 2);
    bench_lookups(c, "get/miss50/16384", &paths[head], &mix);

    let mut group = c.benchmark_group("open_first_get");
    for ((set, path), n) in sets.iter().zip(&paths).zip(OPEN_NS) {
        let key = set.entries[set.entries.len() / 2].0.as_slice();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let shard = Shard::open(black_box(path)).expect("open");
                shard.snapshot().get(key).map(|v| v[0])
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("put_one");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let shard = Shard::open_with(&paths[head], Options::new().durable(false)).expect("open");
    let mut next = 100_000_000;
    group.bench_function("no_fsync/16384", |b| {
        b.iter(|| {
            next += 1;
            shard
                .put_one(data::key(next), data::value(next))
                .expect("put")
        })
    });
    group.finish();
}

criterion_group! {
    name = shard;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(shard);
