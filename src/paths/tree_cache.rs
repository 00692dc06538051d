//! [`TreeCache`]: the two questions a tree walker asks — "what is in this directory?" and "what
//! is this file's hash?" — answered from one shard while the stamps say nothing changed.
//!
//! A build tool walks a tree with its own globs, excludes and rules for when to descend; what it
//! can share across runs (and with other walkers of the same tree) is the answer to those two
//! questions. [`TreeCache::list`] returns a directory's regular files and subdirectories, from
//! the cache while the directory's own stamp is the one it was listed under; [`TreeCache::sha256`]
//! returns a file's SHA-256, from the cache while the file's stamp is the one it was hashed
//! under. Everything else stays with the caller (see `examples/glob_walk.rs`).
//!
//! The cache is `hash-tree`'s: same shard (by default the one [`hash_tree`](super::hash_tree)
//! uses for the same root), same keys, same listing and entry encodings, same racy rule. So a
//! `hash-tree` run makes a later glob walk cheap, and the other way round. New answers are kept
//! in memory until [`commit`](TreeCache::commit) writes them in one merge.
//! [`bypass`](TreeCache::bypass) answers every question from the filesystem and writes nothing:
//! run with it to tell a cache bug from a bug of your own.
//!
//! Paths are relative to the root, are opened one component at a time from the root's handle
//! without following symlinks, and may not contain `..`.

use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::sys::stat::Mode;
use parking_lot::Mutex;

use super::cache::recorded_hours;
use super::error::{PathInputError, invalid_path};
use super::hash_tree::{hash_file_at, shard_path_for_root};
use super::listing::{Listed, Listing, dir_key_of, listing_key};
use super::stamp::{DEFAULT_RACY_MARGIN, Stamp};
use super::tree_store::{
    PRODUCER, cache_files, cached_listing, cached_sha256, encode_sha256_entry, file_key,
    listing_value,
};
use super::walk::{Excluded, dir_flags, open_components, read_listing, stamp_file_at};
use crate::{Error, Options, Result, Shard, Snapshot, WriteOutcome};

/// One entry of a directory as [`TreeCache::list`] gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The entry's name (bytes: names need not be UTF-8).
    pub name: Vec<u8>,
    /// True for a subdirectory, false for a regular file. Nothing else is listed.
    pub is_dir: bool,
}

/// What a [`TreeCache`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeCacheStats {
    /// Directories listed from the cache.
    pub listings_cached: u64,
    /// Directories read from the filesystem.
    pub listings_read: u64,
    /// File hashes answered from the cache.
    pub hashes_cached: u64,
    /// Files read and hashed.
    pub files_hashed: u64,
}

/// Cached directory listings and file hashes under one root (see the module docs).
///
/// ```
/// # fn main() -> warmshard::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// # let root = tmp.path().join("src");
/// # std::fs::create_dir_all(root.join("sub")).unwrap();
/// # std::fs::write(root.join("sub/a.rs"), "fn a() {}").unwrap();
/// use std::path::Path;
/// use warmshard::paths::TreeCache;
/// let shard = tmp.path().join("tree.shard");
/// let cache = TreeCache::open(&root, Some(&shard), warmshard::Options::new())?;
/// let entries = cache.list(Path::new("sub"))?;
/// assert_eq!(entries[0].name, b"a.rs");
/// let hash = cache.sha256(Path::new("sub/a.rs"))?.expect("a regular file");
/// cache.commit()?; // keeps what was learned for the next run
/// # let _ = hash;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TreeCache {
    root: PathBuf,
    root_handle: OwnedFd,
    shard: Shard,
    view: Snapshot,
    /// The cache's own files, excluded from listings when they lie inside the tree.
    excluded: Excluded,
    bypass: bool,
    racy_margin: Duration,
    /// Entries learned and not yet written.
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    listings_cached: AtomicU64,
    listings_read: AtomicU64,
    hashes_cached: AtomicU64,
    files_hashed: AtomicU64,
}

impl TreeCache {
    /// The cache of the tree at `root`, in `shard` (default: the shard `hash-tree` uses for that
    /// root, [`shard_path_for_root`]).
    pub fn open(root: &Path, shard: Option<&Path>, options: Options) -> Result<TreeCache> {
        let root = std::fs::canonicalize(root).map_err(|e| Error::io("resolving", root, e))?;
        // The root is canonical: its last component is no symlink, so `O_NOFOLLOW` costs nothing.
        let root_handle = nix::fcntl::open(&root, dir_flags(), Mode::empty())
            .map_err(|e| Error::io("opening", &root, e.into()))?;
        let shard_path = match shard {
            Some(path) => path.to_path_buf(),
            None => shard_path_for_root(&root)?,
        };
        let shard = Shard::open_with(shard_path, options.producer(PRODUCER))?;
        let view = shard.snapshot();
        let excluded = cache_files(&shard);
        Ok(TreeCache {
            root,
            root_handle,
            shard,
            view,
            excluded,
            bypass: false,
            racy_margin: DEFAULT_RACY_MARGIN,
            pending: Mutex::new(Vec::new()),
            listings_cached: AtomicU64::new(0),
            listings_read: AtomicU64::new(0),
            hashes_cached: AtomicU64::new(0),
            files_hashed: AtomicU64::new(0),
        })
    }

    /// With `true`, answers every question from the filesystem and writes nothing (to tell a
    /// cache bug from a bug of your own).
    pub fn bypass(mut self, bypass: bool) -> Self {
        self.bypass = bypass;
        self
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What was answered from the cache and what was read, so far.
    pub fn stats(&self) -> TreeCacheStats {
        TreeCacheStats {
            listings_cached: self.listings_cached.load(Ordering::Relaxed),
            listings_read: self.listings_read.load(Ordering::Relaxed),
            hashes_cached: self.hashes_cached.load(Ordering::Relaxed),
            files_hashed: self.files_hashed.load(Ordering::Relaxed),
        }
    }

    /// The regular files and subdirectories of the directory at `dir` (relative to the root;
    /// empty for the root), sorted as their paths sort (a directory as `name/`). Symlinks,
    /// FIFOs, sockets and devices are not listed.
    pub fn list(&self, dir: &Path) -> Result<Vec<TreeEntry>> {
        let rel = relative(dir)?;
        let handle = self.open_dir(&rel)?;
        let taken_at = SystemTime::now();
        let stamp = nix::sys::stat::fstat(&handle)
            .map(|st| Stamp::from_stat(&st))
            .map_err(|e| Error::io("reading", self.path_of(&rel), e.into()))?;
        let mut key = Vec::new();
        if !self.bypass
            && let Some(listing) = cached_listing(&self.view, &mut key, &dir_key_of(&rel), &stamp)
        {
            self.listings_cached.fetch_add(1, Ordering::Relaxed);
            return Ok(entries(&listing));
        }
        let path = self.path_of(&rel);
        let excluded = (path == self.excluded.dir).then_some(&self.excluded);
        let mut failed = Vec::new();
        let listing = read_listing(&handle, excluded, &path, &mut failed);
        if let Some(error) = failed.into_iter().next() {
            return Err(Error::io("reading", error.path, error.source));
        }
        let listing = listing.unwrap_or_default();
        self.listings_read.fetch_add(1, Ordering::Relaxed);
        if !self.bypass
            && excluded.is_none()
            && let Some(value) = listing_value(&listing, &stamp, taken_at, self.racy_margin)
        {
            listing_key(&mut key, &dir_key_of(&rel));
            self.pending.lock().push((key, value));
        }
        Ok(entries(&listing))
    }

    /// The SHA-256 of the file at `file` (relative to the root); `None` if it is not a regular
    /// file (or is gone).
    pub fn sha256(&self, file: &Path) -> Result<Option<[u8; 32]>> {
        let rel = relative(file)?;
        let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&rel[..slash], &rel[slash + 1..]),
            None => (&b""[..], &rel[..]),
        };
        if name.is_empty() {
            return Ok(None);
        }
        let handle = self.open_dir(dir)?;
        let c_name =
            CString::new(name).map_err(|_| invalid_path("reading", file, PathInputError::Nul))?;
        let taken_at = SystemTime::now();
        let stamp = match stamp_file_at(&handle, &c_name) {
            Ok(Some(stamp)) => stamp,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::io("reading", self.path_of(&rel), e.into())),
        };
        let mut key = Vec::new();
        file_key(&mut key, &dir_key_of(dir), name);
        if !self.bypass
            && let Some(hit) = self
                .view
                .get(&key)
                .and_then(|value| cached_sha256(value, &stamp))
        {
            self.hashes_cached.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit));
        }
        let mut buffer = vec![0; 256 * 1024];
        let hashed = hash_file_at(
            &handle,
            &c_name,
            Some(stamp),
            &mut buffer,
            &AtomicU64::new(0),
        )
        .map_err(|e| Error::io("reading", self.path_of(&rel), e))?;
        let Some((stamp, sha256)) = hashed else {
            return Ok(None);
        };
        self.files_hashed.fetch_add(1, Ordering::Relaxed);
        if !self.bypass {
            let mut value = Vec::new();
            let hours = recorded_hours(taken_at);
            encode_sha256_entry(
                &mut value,
                &stamp,
                &sha256,
                taken_at,
                self.racy_margin,
                hours,
            );
            self.pending.lock().push((key, value));
        }
        Ok(Some(sha256))
    }

    /// Writes what was learned since the last commit (new listings and hashes) in one merge;
    /// `Unchanged` when there is nothing new.
    pub fn commit(&self) -> Result<WriteOutcome> {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() {
            return Ok(WriteOutcome::Unchanged);
        }
        self.shard.merge_in(pending)
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn open_dir(&self, rel: &[u8]) -> Result<OwnedFd> {
        let opened = if rel.is_empty() {
            nix::fcntl::openat(&self.root_handle, c".", dir_flags(), Mode::empty())
        } else {
            open_components(&self.root_handle, rel)
        };
        opened.map_err(|e| Error::io("opening", self.path_of(rel), e.into()))
    }
}

/// `path` as `/`-separated bytes relative to the root; `..` and absolute paths are refused.
fn relative(path: &Path) -> Result<Vec<u8>> {
    let mut rel = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name.as_bytes());
            }
            Component::CurDir => {}
            _ => return Err(invalid_path("using", path, PathInputError::NotRelative)),
        }
    }
    Ok(rel)
}

fn entries(listing: &Listing) -> Vec<TreeEntry> {
    listing
        .entries
        .iter()
        .map(|(range, kind)| TreeEntry {
            name: listing.name(range).to_vec(),
            is_dir: matches!(kind, Listed::Dir),
        })
        .collect()
}
