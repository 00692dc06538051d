//! Bulk prewarm from an init command: tens of thousands of entries written once, streamed to
//! disk by a bulk writer so memory does not grow with the values.
//!
//! ```text
//! cargo run --release --example prewarm -- [SHARD_PATH] [ENTRIES]
//! ```

use std::time::Instant;

use warmshard::{BulkMode, Options, Shard};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let path = match args.next() {
        Some(path) => path.into(),
        None => warmshard::default_path("example-prewarm")?,
    };
    let entries: usize = match args.next() {
        Some(n) => n.to_string_lossy().parse()?,
        None => 20_000,
    };
    let shard = Shard::open_with(&path, Options::from_env().producer("example-init 1"))?;

    let started = Instant::now();
    let mut writer = shard.bulk_writer(BulkMode::Replace)?;
    let mut value = Vec::new();
    for i in 0..entries {
        // An init command would compile each function here.
        value.clear();
        value.extend((0..256 + i % 512).map(|j| (i * 31 + j) as u8));
        writer.add(format!("_autoload_fn_{i:06}").as_bytes(), &value)?;
    }
    let outcome = writer.commit()?;
    let elapsed = started.elapsed();

    let snapshot = shard.snapshot();
    assert_eq!(snapshot.len(), entries);
    let stats = snapshot.stats();
    println!(
        "{outcome:?}: {} entries, {} value bytes, {} file bytes in {:.1} ms -> {}",
        stats.entries,
        stats.value_bytes,
        stats.file_bytes,
        elapsed.as_secs_f64() * 1e3,
        path.display()
    );
    Ok(())
}
