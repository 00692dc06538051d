//! How a tree's cache is laid out in its shard: the one home of the keys and values that
//! [`hash_tree`](super::hash_tree) and [`TreeCache`](super::TreeCache) both read and write, so
//! the two stay interchangeable (a `hash-tree` run warms a `TreeCache` and the other way round).
//!
//! - A file's entry is keyed by its directory's key and its name ([`file_key`]) and holds a
//!   [`PathEntry`] with one `sha256` dimension, trusted only for the stamp it was hashed under
//!   ([`cached_sha256`], [`encode_sha256_entry`]).
//! - A directory's listing is keyed by [`listing_key`] and trusted only for the directory stamp
//!   it was read under ([`cached_listing`]); it is stored only when that stamp is not racy
//!   ([`listing_value`]). `hash_tree` stores with it each file's stamp and hash (see
//!   `listing.rs`): an unchanged file is then answered from its directory's listing, without a
//!   lookup of its own entry. Every file hash a listing holds is also in that file's entry, so
//!   [`TreeCache::sha256`](super::TreeCache::sha256) and other readers of file entries see it.

use std::time::{Duration, SystemTime};

use super::cache::{PathEntry, encode_entry_into};
use super::listing::{Listing, listing_key};
use super::stamp::Stamp;
use super::walk::Excluded;
use crate::{Shard, Snapshot};

/// Producer string of tree cache shards. Its number changes with the layout (2: listings hold
/// their files' stamps and hashes), so that a cache of another layout reads as empty and is
/// rebuilt.
pub(super) const PRODUCER: &str = "warmshard hash-tree 2";
/// What every layout's producer string starts with: a cache of another layout of ours is
/// rebuilt, not refused as another program's shard.
pub(super) const PRODUCER_FAMILY: &str = "warmshard hash-tree ";
/// The dimension holding a file's SHA-256.
pub(super) const DIMENSION: &str = "sha256";

/// The key of the file `name` in the directory whose key is `dir_key`, into `out`.
pub(super) fn file_key(out: &mut Vec<u8>, dir_key: &[u8], name: &[u8]) {
    out.clear();
    push_file_key(out, dir_key, name);
}

/// [`file_key`], appended to `out` (to look many keys up in one batch).
pub(super) fn push_file_key(out: &mut Vec<u8>, dir_key: &[u8], name: &[u8]) {
    if !dir_key.is_empty() {
        out.extend_from_slice(dir_key);
        out.push(b'/');
    }
    out.extend_from_slice(name);
}

/// The SHA-256 a cached file entry holds, if the entry is trusted for `stamp`.
pub(super) fn cached_sha256(value: &[u8], stamp: &Stamp) -> Option<[u8; 32]> {
    PathEntry::decode(value)?
        .valid_for(stamp, DIMENSION)
        .and_then(|hash| <[u8; 32]>::try_from(hash).ok())
}

/// Encodes into `out` (cleared first) the entry of a file hashed under `stamp`, taken at
/// `taken_at`: racy if the stamp is within `racy_margin` of it; `recorded_hours` is
/// [`recorded_hours`](super::cache::recorded_hours) of the run.
pub(super) fn encode_sha256_entry(
    out: &mut Vec<u8>,
    stamp: &Stamp,
    sha256: &[u8; 32],
    taken_at: SystemTime,
    racy_margin: Duration,
    recorded_hours: u32,
) {
    let racy = stamp.is_racy(taken_at, racy_margin);
    encode_entry_into(out, stamp, racy, recorded_hours, &[(DIMENSION, sha256)]);
}

/// The cached listing of the directory whose key is `dir_key`, if it was read under exactly
/// `stamp` (`key` is a buffer for its cache key).
pub(super) fn cached_listing(
    view: &Snapshot,
    key: &mut Vec<u8>,
    dir_key: &[u8],
    stamp: &Stamp,
) -> Option<Listing> {
    listing_key(key, dir_key);
    Listing::decode(view.get(key)?, stamp)
}

/// The value to cache for a listing read under `stamp` at `taken_at`; `None` if that stamp is
/// racy (an entry added within the same clock tick could leave it unchanged).
pub(super) fn listing_value(
    listing: &Listing,
    stamp: &Stamp,
    taken_at: SystemTime,
    racy_margin: Duration,
) -> Option<Vec<u8>> {
    (!stamp.is_racy(taken_at, racy_margin)).then(|| listing.encode(stamp))
}

/// The cache's own files (see `crate::names`), excluded when they sit inside the tree.
pub(super) fn cache_files(shard: &Shard) -> Excluded {
    let path = shard.path();
    let dir = crate::map::parent_dir(path);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Excluded {
        dir,
        shard_name: path.file_name().unwrap_or_default().to_os_string(),
    }
}
