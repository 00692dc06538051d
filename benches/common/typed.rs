//! Typed entries (issue 13): each W1 value stored as the autoload struct
//! {binary mtime, cached-at seconds, compiled chunk = the W1 value}, read as `&ArchivedEntry`.
//!
//! - [`WarmshardTyped`]: warmshard's typed API; a get validates that one archived entry with
//!   bytecheck and reads it in place (`Snapshot::get_typed`), handing the chunk on in place.
//! - [`RkyvFullTyped`]: the full-validate rkyv design with the same struct: a
//!   `HashMap<Vec<u8>, Entry>` archived whole, validated whole on every open, the chunk
//!   copied out on get (as [`RkyvFull`](super::RkyvFull) copies its values).
//!
//! - [`WarmshardTwoLines`]: byte gets of the typed peer's own shard that read the value's first
//!   and last byte: the two lines a typed get must touch (rkyv keeps the root at the value's
//!   end, and the chunk starts at its beginning), without the validation. A typed get can come
//!   no closer to a byte get than this.
//!
//! None has write figures of its own (`WRITES = false`): the typed writes are warmshard's
//! and full rkyv's writes plus one serialization per value.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::rancor;
use rkyv::vec::ArchivedVec;
use warmshard::{BulkMode, Options, Shard, Snapshot};

use super::warmshard::shard_path;
use super::{Peer, Probe, Reader, Result, write_atomically};

/// The autoload cache entry of the reference design.
#[derive(rkyv::Archive, rkyv::Serialize)]
pub struct Entry {
    pub binary_mtime: u64,
    pub cached_at: u64,
    pub chunk: Vec<u8>,
}

fn entry(i: u64, value: &[u8]) -> Entry {
    Entry {
        binary_mtime: 1_700_000_000_000_000_000 + i,
        cached_at: 1_700_000_000 + i,
        chunk: value.to_vec(),
    }
}

/// A typed view of a snapshot (a newtype: `Snapshot` already implements `Reader` for bytes).
pub struct TypedSnapshot(Snapshot);

impl Reader for TypedSnapshot {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.0
            .get_typed::<Entry>(key)
            .map(|e| f(e.chunk.as_slice()))
    }
}

pub struct WarmshardTyped;

impl Peer for WarmshardTyped {
    const NAME: &'static str = "warmshard-typed";
    const LABEL: &'static str = "warmshard typed get";
    const WRITES: bool = false;
    type Reader = TypedSnapshot;
    type Writer = Shard;

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let shard = Shard::open_with(shard_path(dir), Options::new().durable(durable))?;
        let mut writer = shard.bulk_writer(BulkMode::Replace)?;
        for (i, (key, value)) in entries.into_iter().enumerate() {
            writer.add_typed(key.as_ref(), &entry(i as u64, value.as_ref()))?;
        }
        writer.commit()?;
        Ok(())
    }

    fn open(dir: &Path) -> Result<TypedSnapshot> {
        let snapshot = Shard::open(shard_path(dir))?.snapshot();
        if !snapshot.health().is_valid() {
            return Err(format!("shard not valid: {}", snapshot.health()).into());
        }
        Ok(TypedSnapshot(snapshot))
    }

    fn open_get(dir: &Path, probe: &Probe) -> Result<Option<u8>> {
        // A start: open, one typed lookup through a fresh snapshot, drop.
        let shard = Shard::open(shard_path(dir))?;
        let snapshot = shard.snapshot();
        Ok(snapshot
            .get_typed::<Entry>(&probe.key)
            .and_then(|e| e.chunk.first().copied()))
    }

    fn writer(dir: &Path, durable: bool) -> Result<Shard> {
        Ok(Shard::open_with(
            shard_path(dir),
            Options::new().durable(durable),
        )?)
    }

    fn put_one(writer: &mut Shard, key: &[u8], value: &[u8]) -> Result<()> {
        writer.put_typed(key, &entry(0, value))?;
        Ok(())
    }
}

/// A byte view of the typed shard that reads both ends of each value.
pub struct BothEnds(Snapshot);

impl Reader for BothEnds {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let value = self.0.get(key)?;
        // The chunk's length, from the archived root's last four bytes (rkyv's default format:
        // a 32-bit little-endian length ends the root), then the chunk from the value's start:
        // the typed get's two lines and its bounds check, but no validation.
        let len_at = value.len().checked_sub(4)?;
        let len = u32::from_le_bytes(value[len_at..].try_into().ok()?) as usize;
        value.get(..len).map(f)
    }
}

pub struct WarmshardTwoLines;

impl Peer for WarmshardTwoLines {
    const NAME: &'static str = "warmshard-two-lines";
    const LABEL: &'static str = "warmshard byte get, both ends of the typed value";
    const WRITES: bool = false;
    type Reader = BothEnds;
    type Writer = Shard;

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        WarmshardTyped::prewarm(dir, entries, durable)
    }

    fn open(dir: &Path) -> Result<BothEnds> {
        Ok(BothEnds(WarmshardTyped::open(dir)?.0))
    }

    fn open_get(dir: &Path, probe: &Probe) -> Result<Option<u8>> {
        let shard = Shard::open(shard_path(dir))?;
        let snapshot = shard.snapshot();
        Ok(BothEnds(snapshot)
            .get(&probe.key, |chunk| chunk.first().copied())
            .flatten())
    }

    fn writer(dir: &Path, durable: bool) -> Result<Shard> {
        WarmshardTyped::writer(dir, durable)
    }

    fn put_one(_: &mut Shard, _: &[u8], _: &[u8]) -> Result<()> {
        Err("the two-line peer has no write figures".into())
    }
}

type Map = HashMap<Vec<u8>, Entry>;
type ArchivedMap = ArchivedHashMap<ArchivedVec<u8>, ArchivedEntry>;

fn map_path(dir: &Path) -> PathBuf {
    dir.join("w1-typed.rkyv")
}

pub struct ValidatedTypedMap(Mmap);

impl Reader for ValidatedTypedMap {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // SAFETY: validated with `rkyv::access` in `RkyvFullTyped::open`; the map is immutable.
        let map = unsafe { rkyv::access_unchecked::<ArchivedMap>(&self.0) };
        let chunk: Vec<u8> = map.get(key)?.chunk.as_slice().to_vec();
        Some(f(&chunk))
    }
}

pub struct RkyvFullTyped;

impl Peer for RkyvFullTyped {
    const NAME: &'static str = "rkyv-full-typed";
    const LABEL: &'static str = "full-validate rkyv, typed";
    const WRITES: bool = false;
    type Reader = ValidatedTypedMap;
    type Writer = (PathBuf, bool);

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let map: Map = entries
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| (k.as_ref().to_vec(), entry(i as u64, v.as_ref())))
            .collect();
        let bytes = rkyv::to_bytes::<rancor::Error>(&map)?;
        write_atomically(&map_path(dir), &bytes, durable)
    }

    fn open(dir: &Path) -> Result<ValidatedTypedMap> {
        let file = File::open(map_path(dir))?;
        // SAFETY: benchmark-only; the file is only ever replaced by rename, never written in place.
        let map = unsafe { Mmap::map(&file)? };
        rkyv::access::<ArchivedMap, rancor::Error>(&map)?;
        Ok(ValidatedTypedMap(map))
    }

    fn writer(dir: &Path, durable: bool) -> Result<(PathBuf, bool)> {
        Ok((dir.to_path_buf(), durable))
    }

    fn put_one(_: &mut (PathBuf, bool), _: &[u8], _: &[u8]) -> Result<()> {
        Err("the typed full-validate peer has no write figures".into())
    }
}
