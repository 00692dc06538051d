//! The peers of workload W1 behind one trait, [`Peer`], shared by `benches/peers.rs` (which runs
//! every figure on every peer and prints one table) and `examples/startup_probe.rs` (the fresh
//! process of the startup figure, and the child whose peak RSS the writer figure reads).
//!
//! Every peer stores its data in its own directory; the trait never sees a peer's file names.

#![allow(dead_code)]

pub mod data;
mod lmdb;
mod physical;
mod redb;
mod rkyv_map;
mod sqlite;
mod typed;
mod warmshard;

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

pub use self::lmdb::Lmdb;
pub use self::physical::{PhysicalLimit, PhysicalTrusted};
pub use self::redb::Redb;
pub use self::rkyv_map::{RkyvFull, RkyvInPlace};
pub use self::sqlite::Sqlite;
pub use self::typed::{RkyvFullTyped, WarmshardTwoLines, WarmshardTyped};
pub use self::warmshard::Warmshard;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A read view of a store that is already open.
pub trait Reader {
    /// Looks `key` up and hands the value to `f`: in place where the engine allows it, else a
    /// copy (the engine's normal read path either way).
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R>;
}

/// What the open + first get figure looks up. `pages` is only used by the physical limit, which
/// has no index of its own: it is told where the three pages of the lookup are.
#[derive(Clone, Debug)]
pub struct Probe {
    pub key: Vec<u8>,
    pub pages: [usize; 2],
}

impl Probe {
    pub fn key(key: &[u8]) -> Probe {
        Probe {
            key: key.to_vec(),
            pages: [0, 0],
        }
    }
}

/// One engine, driven through the operations the W1 figures need.
pub trait Peer {
    /// Engine id on the probe's command line.
    const NAME: &'static str;
    /// Row label in the table.
    const LABEL: &'static str;
    /// False when the peer shares another peer's writer (its write figures would repeat it).
    const WRITES: bool = true;
    /// False when the peer has no key index of its own (the physical limit).
    const GETS: bool = true;

    type Reader: Reader;
    type Writer;

    /// Creates a fresh store in the empty directory `dir` holding exactly `entries`; with
    /// `durable`, everything is on stable storage when this returns.
    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()>;

    /// Builds the store the read figures use (untimed). Usually a durable prewarm.
    fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        Self::prewarm(dir, entries, true)
    }

    /// Opens the store in `dir` for reading, from scratch.
    fn open(dir: &Path) -> Result<Self::Reader>;

    /// Prepares the open + first get figure for `key` (untimed).
    fn probe(_dir: &Path, key: &[u8]) -> Result<Probe> {
        Ok(Probe::key(key))
    }

    /// Opens the store from scratch, looks the probe up, drops everything: the value's first
    /// byte, or `None` for a miss.
    fn open_get(dir: &Path, probe: &Probe) -> Result<Option<u8>> {
        let reader = Self::open(dir)?;
        Ok(reader.get(&probe.key, |v| v[0]))
    }

    /// Opens a handle for single durable (or not) inserts into the store in `dir`.
    fn writer(dir: &Path, durable: bool) -> Result<Self::Writer>;

    /// Inserts one entry and commits it (durably if the writer is durable).
    fn put_one(writer: &mut Self::Writer, key: &[u8], value: &[u8]) -> Result<()>;

    /// Bytes the store occupies: the apparent size of every file in its directory.
    fn disk_bytes(dir: &Path) -> Result<u64> {
        dir_bytes(dir)
    }
}

/// Engine ids the probe accepts, in table order.
pub const ENGINES: &[&str] = &[
    Warmshard::NAME,
    PhysicalLimit::NAME,
    PhysicalTrusted::NAME,
    RkyvInPlace::NAME,
    RkyvFull::NAME,
    WarmshardTyped::NAME,
    WarmshardTwoLines::NAME,
    RkyvFullTyped::NAME,
    Lmdb::NAME,
    Redb::NAME,
    Sqlite::NAME,
];

/// [`Peer::open_get`] of the engine called `engine`.
pub fn open_get_by_name(engine: &str, dir: &Path, probe: &Probe) -> Result<Option<u8>> {
    match engine {
        Warmshard::NAME => Warmshard::open_get(dir, probe),
        PhysicalLimit::NAME => PhysicalLimit::open_get(dir, probe),
        PhysicalTrusted::NAME => PhysicalTrusted::open_get(dir, probe),
        RkyvInPlace::NAME => RkyvInPlace::open_get(dir, probe),
        RkyvFull::NAME => RkyvFull::open_get(dir, probe),
        WarmshardTyped::NAME => WarmshardTyped::open_get(dir, probe),
        WarmshardTwoLines::NAME => WarmshardTwoLines::open_get(dir, probe),
        RkyvFullTyped::NAME => RkyvFullTyped::open_get(dir, probe),
        Lmdb::NAME => Lmdb::open_get(dir, probe),
        Redb::NAME => Redb::open_get(dir, probe),
        Sqlite::NAME => Sqlite::open_get(dir, probe),
        other => Err(format!("unknown engine {other:?}").into()),
    }
}

/// A durable [`Peer::prewarm`] of W1 entries `0..n` (generated lazily) by the engine `engine`.
pub fn prewarm_by_name(engine: &str, dir: &Path, n: u64) -> Result<()> {
    let entries = data::entries(n);
    match engine {
        Warmshard::NAME => Warmshard::prewarm(dir, entries, true),
        PhysicalLimit::NAME => PhysicalLimit::prewarm(dir, entries, true),
        PhysicalTrusted::NAME => PhysicalTrusted::prewarm(dir, entries, true),
        RkyvInPlace::NAME => RkyvInPlace::prewarm(dir, entries, true),
        RkyvFull::NAME => RkyvFull::prewarm(dir, entries, true),
        WarmshardTyped::NAME => WarmshardTyped::prewarm(dir, entries, true),
        WarmshardTwoLines::NAME => WarmshardTwoLines::prewarm(dir, entries, true),
        RkyvFullTyped::NAME => RkyvFullTyped::prewarm(dir, entries, true),
        Lmdb::NAME => Lmdb::prewarm(dir, entries, true),
        Redb::NAME => Redb::prewarm(dir, entries, true),
        Sqlite::NAME => Sqlite::prewarm(dir, entries, true),
        other => Err(format!("unknown engine {other:?}").into()),
    }
}

/// Removes `dir` if present and creates it empty, mode 0700 (warmshard refuses directories
/// that other users can write).
pub fn fresh_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

/// Sum of the apparent sizes of the files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Writes `bytes` to `path` the careful way: a temp file, fsync (if `durable`), rename, fsync
/// of the directory (if `durable`).
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_data()?;
    }
    drop(file);
    fs::rename(&temp, path)?;
    if durable {
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// A field of `/proc/self/status` in KiB (`VmHWM` is the peak resident set).
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
