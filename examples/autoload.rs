//! The reference autoload cache rebuilt on warmshard's typed entries: an interpreter caches each
//! function it compiles under the function's name, as {the interpreter binary's mtime when
//! cached, when it was cached, the compiled chunk}, and a start looks its functions up in place.
//!
//! ```text
//! cargo run --example autoload -- SHARD init [N]         # prewarm N (16,384) functions, one bulk write
//! cargo run --example autoload -- SHARD start NAME...    # a start: look up NAMEs in place
//! cargo run --example autoload -- SHARD compile NAME     # cache one freshly compiled function
//! cargo run --example autoload -- SHARD names            # list the cached names
//! ```
//!
//! `--binary PATH` (before SHARD) names the interpreter binary whose mtime stamps the cache
//! (default: this program). When it changes, every cached chunk is stale: the first start after
//! it clears the whole cache, and misses recompile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use warmshard::{BulkMode, Options, Shard};

/// One cached function: what the reference design stored per name.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Compiled {
    /// Modification time (ns since the epoch) of the interpreter binary that compiled it.
    binary_mtime: u64,
    /// When it was cached, seconds since the epoch.
    cached_at: u64,
    /// The compiled chunk.
    chunk: Vec<u8>,
}

/// The key under which the cache records the binary mtime it was built for.
const STAMP_KEY: &[u8] = b"\0binary-mtime";

struct AutoloadCache {
    shard: Shard,
    binary_mtime: u64,
}

fn mtime_ns(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stand-in for the compiler: 200 to 2,000 bytes that depend only on the name.
fn compile(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = 200 + (seed % 1801) as usize;
    (0..len).map(|i| (seed >> (i % 57)) as u8).collect()
}

impl AutoloadCache {
    fn open(path: &Path, binary: &Path) -> warmshard::Result<AutoloadCache> {
        let shard = Shard::open_with(path, Options::new().producer("autoload-example 1"))?;
        Ok(AutoloadCache {
            shard,
            binary_mtime: mtime_ns(binary),
        })
    }

    /// Clears the whole cache if it was built for another binary; returns true if it did.
    fn invalidate_if_binary_changed(&self) -> warmshard::Result<bool> {
        let snapshot = self.shard.snapshot();
        match snapshot.get_typed::<u64>(STAMP_KEY) {
            Some(stamp) if *stamp == self.binary_mtime => Ok(false),
            None if snapshot.is_empty() => Ok(false),
            _ => self.shard.clear().map(|_| true),
        }
    }

    fn entry(&self, name: &str) -> Compiled {
        Compiled {
            binary_mtime: self.binary_mtime,
            cached_at: now_secs(),
            chunk: compile(name),
        }
    }

    /// The init command: every function compiled and stored in one bulk write.
    fn prewarm(&self, names: &[String]) -> warmshard::Result<()> {
        let mut writer = self.shard.bulk_writer(BulkMode::Replace)?;
        writer.add_typed(STAMP_KEY, &self.binary_mtime)?;
        for name in names {
            writer.add_typed(name.as_bytes(), &self.entry(name))?;
        }
        writer.commit()?;
        Ok(())
    }

    /// One freshly compiled function, stored on its own (the startup path's write).
    fn store(&self, name: &str) -> warmshard::Result<()> {
        if self.shard.snapshot().get_typed::<u64>(STAMP_KEY).is_none() {
            self.shard
                .merge_in_typed([(STAMP_KEY, &self.binary_mtime)])?;
        }
        self.shard.put_typed(name, &self.entry(name))?;
        Ok(())
    }
}

fn function_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("_autoload_fn_{i:05}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut binary = std::env::current_exe()?;
    if args.first().map(String::as_str) == Some("--binary") && args.len() > 1 {
        binary = PathBuf::from(args.remove(1));
        args.remove(0);
    }
    let (Some(path), Some(command)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: autoload [--binary PATH] SHARD init [N] | start NAME... | compile NAME | names"
        );
        std::process::exit(2);
    };
    let cache = AutoloadCache::open(Path::new(path), &binary)?;
    match command.as_str() {
        "init" => {
            let n = args.get(2).map_or(Ok(16_384), |n| n.parse())?;
            let started = Instant::now();
            cache.prewarm(&function_names(n))?;
            println!(
                "init: {n} functions compiled and cached in one bulk write in {:.1} ms ({} bytes)",
                started.elapsed().as_secs_f64() * 1e3,
                cache.shard.snapshot().stats().file_bytes
            );
        }
        "start" => {
            let started = Instant::now();
            if cache.invalidate_if_binary_changed()? {
                println!("start: the binary changed since the cache was built; cache cleared");
            }
            let snapshot = cache.shard.snapshot();
            let mut chunks = Vec::new();
            let mut misses = Vec::new();
            for name in &args[2..] {
                // In place: only the chunk is copied out, as the interpreter would load it.
                match snapshot.get_typed::<Compiled>(name.as_bytes()) {
                    Some(entry) if entry.binary_mtime == cache.binary_mtime => {
                        chunks.push(entry.chunk.as_slice().to_vec());
                    }
                    _ => misses.push(name),
                }
            }
            let lookup = started.elapsed();
            for name in &misses {
                cache.store(name)?;
            }
            println!(
                "start: {} hit(s), {} miss(es) compiled and cached; lookups took {} µs ({} chunk bytes loaded)",
                chunks.len(),
                misses.len(),
                lookup.as_micros(),
                chunks.iter().map(Vec::len).sum::<usize>()
            );
        }
        "compile" => {
            let name = args.get(2).ok_or("compile needs a NAME")?;
            cache.store(name)?;
            println!("compile: {name} cached");
        }
        "names" => {
            let snapshot = cache.shard.snapshot();
            let mut names: Vec<String> = snapshot
                .keys()
                .filter(|k| *k != STAMP_KEY)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            names.sort();
            // Written, not `println!`: a closed pipe (`| head`) is an error to report, not a panic.
            let mut out = std::io::stdout().lock();
            writeln!(out, "{} cached function(s)", names.len())?;
            for name in names.iter().take(5) {
                writeln!(out, "  {name}")?;
            }
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
