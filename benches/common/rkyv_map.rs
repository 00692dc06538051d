//! The reference design W1 compares against: a `HashMap<Vec<u8>, Vec<u8>>` archived whole with
//! rkyv 0.8's high-level API, written temp + fsync + rename, and mapped to read.
//!
//! - [`RkyvFull`] validates the whole archive (`rkyv::access`, i.e. `check_bytes` of every
//!   entry) on every open and copies values out on get; every write loads, validates and
//!   deserializes the map, inserts, re-serializes it and rewrites the file.
//! - [`RkyvInPlace`] maps the same file and trusts it (`access_unchecked`): lookups read the
//!   archived hash map in place. It is the speed reference for `get`, not a safe design.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::rancor;
use rkyv::vec::ArchivedVec;

use super::{Peer, Reader, Result, write_atomically};

type Map = HashMap<Vec<u8>, Vec<u8>>;
type ArchivedMap = ArchivedHashMap<ArchivedVec<u8>, ArchivedVec<u8>>;

fn map_path(dir: &Path) -> PathBuf {
    dir.join("w1.rkyv")
}

fn mmap(dir: &Path) -> Result<Mmap> {
    let file = File::open(map_path(dir))?;
    // SAFETY: benchmark-only; the file is only ever replaced by rename, never written in place.
    Ok(unsafe { Mmap::map(&file)? })
}

fn save(dir: &Path, map: &Map, durable: bool) -> Result<()> {
    let bytes = rkyv::to_bytes::<rancor::Error>(map)?;
    write_atomically(&map_path(dir), &bytes, durable)
}

/// Full validation: O(size of the map) on every open.
pub struct RkyvFull;

pub struct ValidatedMap(Mmap);

impl ValidatedMap {
    #[inline]
    fn archived(&self) -> &ArchivedMap {
        // SAFETY: validated with `rkyv::access` in `RkyvFull::open`; the map is immutable.
        unsafe { rkyv::access_unchecked::<ArchivedMap>(&self.0) }
    }
}

impl Reader for ValidatedMap {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let value: Vec<u8> = self.archived().get(key)?.as_slice().to_vec();
        Some(f(&value))
    }
}

impl Peer for RkyvFull {
    const NAME: &'static str = "rkyv-full";
    const LABEL: &'static str = "full-validate rkyv";
    type Reader = ValidatedMap;
    type Writer = (PathBuf, bool);

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let map: Map = entries
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec()))
            .collect();
        save(dir, &map, durable)
    }

    fn open(dir: &Path) -> Result<ValidatedMap> {
        let map = mmap(dir)?;
        rkyv::access::<ArchivedMap, rancor::Error>(&map)?;
        Ok(ValidatedMap(map))
    }

    fn writer(dir: &Path, durable: bool) -> Result<(PathBuf, bool)> {
        Ok((dir.to_path_buf(), durable))
    }

    fn put_one(writer: &mut (PathBuf, bool), key: &[u8], value: &[u8]) -> Result<()> {
        let (dir, durable) = writer;
        let mut map: Map = {
            let bytes = mmap(dir)?;
            let archived = rkyv::access::<ArchivedMap, rancor::Error>(&bytes)?;
            rkyv::deserialize::<Map, rancor::Error>(archived)?
        };
        map.insert(key.to_vec(), value.to_vec());
        save(dir, &map, *durable)
    }
}

/// No validation: the same file read in place, trusted blindly.
pub struct RkyvInPlace;

pub struct TrustedMap(Mmap);

impl Reader for TrustedMap {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // SAFETY: benchmark-only; the file was written by `RkyvFull::prewarm` just before.
        let map = unsafe { rkyv::access_unchecked::<ArchivedMap>(&self.0) };
        map.get(key).map(|v| f(v.as_slice()))
    }
}

impl Peer for RkyvInPlace {
    const NAME: &'static str = "rkyv-inplace";
    const LABEL: &'static str = "rkyv in place (unvalidated)";
    const WRITES: bool = false;
    type Reader = TrustedMap;
    type Writer = (PathBuf, bool);

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        RkyvFull::prewarm(dir, entries, durable)
    }

    fn open(dir: &Path) -> Result<TrustedMap> {
        Ok(TrustedMap(mmap(dir)?))
    }

    fn writer(dir: &Path, durable: bool) -> Result<(PathBuf, bool)> {
        RkyvFull::writer(dir, durable)
    }

    fn put_one(writer: &mut (PathBuf, bool), key: &[u8], value: &[u8]) -> Result<()> {
        RkyvFull::put_one(writer, key, value)
    }
}
