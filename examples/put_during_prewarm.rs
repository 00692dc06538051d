//! How long a `put_one` waits while another handle prewarms a large shard (#12.4): the bulk
//! write runs in a thread of its own handle, and the main thread stores one entry every 100 ms
//! through another handle, timing each call, until the prewarm has committed.
//!
//! ```text
//! cargo run --example put_during_prewarm -- [DIR] [PREWARM_MIB]
//! ```
//! Prints one line per `put_one` (its wait, and whether the prewarm had committed by then),
//! then the longest wait. A bulk writer that holds the lock while it builds keeps every
//! `put_one` waiting until it commits (or the 10 s lock timeout fails it); one that takes the
//! lock only to publish keeps them waiting for the publish alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warmshard::{BulkMode, Options, Shard};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = match args.next() {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join("warmshard-put-during-prewarm"),
    };
    let mib: usize = match args.next() {
        Some(n) => n.parse()?,
        None => 1024,
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("prewarm.shard");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(dir.join("prewarm.shard.delta"));

    let done = Arc::new(AtomicBool::new(false));
    let prewarm = {
        let (path, done) = (path.clone(), Arc::clone(&done));
        std::thread::spawn(move || -> warmshard::Result<Duration> {
            let started = Instant::now();
            let shard = Shard::open_with(&path, Options::new().durable(false))?;
            let mut writer = shard.bulk_writer(BulkMode::Replace)?;
            let value = vec![0x5au8; 1 << 20];
            for i in 0..mib {
                writer.add(format!("prewarm_{i:05}").as_bytes(), &value)?;
            }
            let _ = writer.commit()?;
            done.store(true, Ordering::SeqCst);
            Ok(started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let shard = Shard::open_with(&path, Options::new().durable(false))?;
    let mut longest = Duration::ZERO;
    let mut n = 0;
    loop {
        let committed_before = done.load(Ordering::SeqCst);
        let started = Instant::now();
        let result = shard.put_one(format!("miss_{n}"), "compiled bytes");
        let waited = started.elapsed();
        longest = longest.max(waited);
        println!(
            "put_one #{n}: {:>8.1} ms ({}){}",
            waited.as_secs_f64() * 1e3,
            match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            },
            if committed_before {
                ", after the prewarm committed"
            } else {
                ""
            }
        );
        n += 1;
        if committed_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = prewarm.join().expect("prewarm thread")?;
    println!(
        "prewarm of {mib} MiB took {:.2} s; longest put_one wait while it ran: {:.1} ms",
        took.as_secs_f64(),
        longest.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_file(&path);
    Ok(())
}
