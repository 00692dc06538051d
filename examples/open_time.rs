//! How long opening a large shard takes in this build profile: run it unoptimised (as a user's
//! `cargo run`/`cargo test` builds warmshard) and with `--release`, and compare.
//!
//! ```text
//! cargo run --example open_time -- [SHARD] [MB]             # debug (the default dev profile)
//! cargo run --release --example open_time -- [SHARD] [MB]   # release
//! ```
//!
//! Writes a shard of about MB megabytes (default 100) at SHARD (default: a temporary
//! directory) if it does not hold one of that size yet, then opens it 50 times with a fresh
//! handle and prints the median time of `Shard::open_with` + `snapshot()` + one `get`, and the
//! median of the validation step alone (`Stats::validation_time`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use warmshard::{BulkMode, Options, Shard};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scratch = tempfile::tempdir()?;
    let path = args
        .next()
        .map_or_else(|| scratch.path().join("open_time.shard"), PathBuf::from);
    let megabytes: u64 = args.next().map_or(Ok(100), |m| m.parse())?;
    let options = || Options::new().producer("open-time 1").durable(false);

    let value = vec![0x5a_u8; 1000];
    let entries = megabytes * 1_000_000 / 1040;
    let shard = Shard::open_with(&path, options())?;
    if shard.snapshot().len() as u64 != entries {
        let mut writer = shard.bulk_writer(BulkMode::Replace)?;
        for i in 0..entries {
            writer.add(format!("function_{i:08}").as_bytes(), &value)?;
        }
        writer.commit()?;
    }
    let file_bytes = shard.snapshot().stats().file_bytes;
    let key = format!("function_{:08}", entries / 2);

    let (mut open, mut validation) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let started = Instant::now();
        let shard = Shard::open_with(&path, options())?;
        let snapshot = shard.snapshot();
        let hit = snapshot.get(key.as_bytes()).map(|v| v.len());
        open.push(started.elapsed());
        assert_eq!(hit, Some(value.len()));
        validation.push(snapshot.stats().validation_time);
    }
    let profile = if cfg!(debug_assertions) {
        "unoptimised (dev profile)"
    } else {
        "release"
    };
    println!(
        "{profile}: {entries} entries, {:.1} MB file: open + snapshot + get median {:.1} µs, \
         validation median {:.1} µs (50 opens)",
        file_bytes as f64 / 1e6,
        median(open).as_secs_f64() * 1e6,
        median(validation).as_secs_f64() * 1e6,
    );
    Ok(())
}
