//! An interpreter-style compiled-artifact cache keyed by source path: each module's "bytecode"
//! and its list of "symbols" are cached next to the source file's stat stamp, so a warm start
//! skips both the compile and the parse, and any edit to a source invalidates both.
//!
//! ```text
//! cargo run --example path_cache -- [SOURCE_DIR] [SHARD_PATH]
//! ```
//! Run it twice: the second run compiles nothing. This holds for every source last changed more
//! than ~50 ms before the first run; a source changed within that margin is recorded as "racy"
//! (its stamp cannot yet prove its content, see `Stamp`) and is compiled once more by the next
//! run. So when it creates its sample sources, the example waits out that margin first.

use std::path::PathBuf;
use std::time::Instant;

use warmshard::Options;
use warmshard::paths::PathCache;

fn compile(source: &[u8]) -> Vec<u8> {
    // Stands in for a real compiler.
    source.iter().map(|b| b.wrapping_add(1)).collect()
}

fn symbols(source: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(source);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("def "))
        .filter_map(|l| l.split('(').next())
        .collect();
    names.join(",").into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let sources: PathBuf = match args.next() {
        Some(dir) => dir.into(),
        None => {
            let dir = std::env::temp_dir().join("warmshard-example-sources");
            std::fs::create_dir_all(&dir)?;
            let mut created = false;
            for i in 0..20 {
                let file = dir.join(format!("module{i}.py"));
                if !file.exists() {
                    std::fs::write(file, format!("def f{i}(x):\n    return x + {i}\n"))?;
                    created = true;
                }
            }
            if created {
                // Sources written this instant are racy: wait until their stamps can be trusted,
                // as an interpreter's sources (edited long before it starts) would be.
                std::thread::sleep(2 * warmshard::paths::DEFAULT_RACY_MARGIN);
            }
            dir
        }
    };
    let shard = match args.next() {
        Some(path) => path.into(),
        None => warmshard::default_path("example-bytecode")?,
    };
    // Like .pyc files, compiled artifacts can be rebuilt, so each store skips fsync: a crash
    // still never leaves a partial shard, a power cut may only lose the latest stores.
    let options = Options::from_env()
        .producer("example-interpreter 1")
        .durable(false);
    let cache = PathCache::open(&shard, options)?;

    let started = Instant::now();
    let (mut compiled, mut cached) = (0, 0);
    let mut entries: Vec<_> = std::fs::read_dir(&sources)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if !entry.file_type()?.is_file() {
            continue;
        }
        let mut was_compiled = false;
        let bytecode = cache.get_or_compute(&path, "bytecode", |src| {
            was_compiled = true;
            compile(src)
        })?;
        let names = cache.get_or_compute(&path, "symbols", symbols)?;
        if was_compiled {
            compiled += 1;
        } else {
            cached += 1;
        }
        println!(
            "{}: {} bytes of bytecode, symbols [{}]",
            path.display(),
            bytecode.len(),
            String::from_utf8_lossy(&names)
        );
    }
    println!(
        "{compiled} compiled, {cached} from the cache in {:.1} ms ({})",
        started.elapsed().as_secs_f64() * 1e3,
        shard.display()
    );
    Ok(())
}
