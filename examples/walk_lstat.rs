//! The "walk + lstat" limit of workload W2: a minimal walker that lstat()s every regular file
//! and prints only the count. `hash-tree` on a warm cache does this much work and more, so this
//! is the floor its warm run is compared with (`benches/hash_tree.rs`).
//!
//! ```text
//! cargo run --release --example walk_lstat -- DIR [THREADS]
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let root: PathBuf = args.next().expect("usage: walk_lstat DIR [THREADS]").into();
    let threads: usize = args
        .next()
        .and_then(|t| t.to_str()?.parse().ok())
        .unwrap_or(1);
    let queue = Mutex::new((vec![root], 0usize));
    let wake = Condvar::new();
    let files = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let dir = {
                        let mut q = queue.lock();
                        loop {
                            if let Some(dir) = q.0.pop() {
                                q.1 += 1;
                                break Some(dir);
                            }
                            if q.1 == 0 {
                                break None;
                            }
                            wake.wait(&mut q);
                        }
                    };
                    let Some(dir) = dir else { break };
                    let mut subdirs = Vec::new();
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        match entry.file_type() {
                            Ok(t) if t.is_dir() => subdirs.push(entry.path()),
                            Ok(t) if t.is_file() && entry.metadata().is_ok() => {
                                files.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    let mut q = queue.lock();
                    q.0.extend(subdirs);
                    q.1 -= 1;
                    wake.notify_all();
                }
            });
        }
    });
    println!("{}", files.into_inner());
}
