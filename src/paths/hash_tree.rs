//! `hash-tree`: a `sha256sum`-compatible [`Manifest`] of a directory that re-hashes only what
//! changed.
//!
//! The cache shard holds one [`PathCache`](super::PathCache) entry per regular file, keyed by its
//! path relative to the root, with a `sha256` dimension, and one cached listing per directory
//! (keyed by a NUL byte and the directory's path; a directory whose path passes 255 bytes is
//! keyed by a short hash instead, so deep trees do not cost depth squared; see `listing.rs`). A run walks the tree in
//! parallel and reuses the listing of every directory whose stamp is unchanged instead of reading
//! it. A file the cache knows is stamped (`lstat` relative to its directory's handle) and, while
//! its entry holds for that stamp, answered without being read. The rest is hashed while the walk
//! goes on: each directory queues its stale files as tasks (a few small files or one large one
//! each) for the same worker threads, which open them relative to the directory's handle and
//! stream them through a fixed buffer per thread; a file the cache does not know is stamped by
//! `fstat` once open, before any byte is read, so it costs one path lookup, not two. The shard is
//! rewritten only if an entry changed or a file or directory disappeared. The [`Manifest`] keeps
//! the walk's listings and is printed straight from them, in order, with no path copied.

use std::ffi::{CStr, OsStr};
use std::io::Read;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::cache::{PathEntry, encode_entry_into, recorded_hours};
use super::error::PathError;
use super::exclude::Exclude;
use super::listing::{Listed, Listing, listing_key};
use super::manifest::{Manifest, ManifestDir, in_manifest_order, push_hex};
use super::stamp::{DEFAULT_RACY_MARGIN, Stamp};
use super::walk::{
    Excluded, Spawner, VisitedDir, Visitor, join_rel, stamp_file_at, visit_fn, walk,
};
use crate::{BulkMode, Error, Health, Options, Result, Shard, Snapshot, WriteOutcome};

/// Producer string of hash-tree shards.
pub(super) const PRODUCER: &str = "warmshard hash-tree 1";
/// The dimension holding a file's SHA-256.
pub(super) const DIMENSION: &str = "sha256";
/// Length of each hashing thread's read buffer.
const READ_BUFFER_LEN: usize = 256 * 1024;

/// Settings for [`hash_tree`]: start from [`Default`] and set what differs, with the builder
/// methods or the public fields.
///
/// ```
/// use warmshard::paths::{Exclude, HashTreeOptions};
/// let options = HashTreeOptions::default()
///     .shard("/tmp/tree.shard")
///     .exclude(Exclude::new([".git", "target"]))
///     .threads(2);
/// assert_eq!(options.threads, 2);
/// ```
#[non_exhaustive]
pub struct HashTreeOptions {
    /// Cache shard to use; `None` means one per canonical root under the user cache directory
    /// ([`shard_path_for_root`]).
    pub shard: Option<PathBuf>,
    /// Worker threads for walking and hashing (default: all cores).
    pub threads: usize,
    /// Margin of the racy-timestamp rule.
    pub racy_margin: Duration,
    /// Reuse the cached listing of a directory whose stamp is unchanged instead of reading it
    /// (default: true). Turn it off on a filesystem whose directory timestamps do not change
    /// when entries are added or removed; files are stamped either way.
    pub listing_cache: bool,
    /// Options of the cache shard (durability, lock timeout, kill switch...). The producer is
    /// set by `hash_tree`.
    pub shard_options: Options,
    /// Called now and then from worker threads with (files seen, bytes hashed).
    pub progress: Option<Box<dyn Fn(u64, u64) + Send + Sync>>,
    /// Paths left out of the manifest (see [`Exclude`]); an excluded directory is never read.
    /// The cache keeps whole listings, so a run with other exclusions reuses them; the hashes
    /// of excluded files are dropped from the cache.
    pub exclude: Exclude,
}

impl Default for HashTreeOptions {
    fn default() -> Self {
        HashTreeOptions {
            shard: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            racy_margin: DEFAULT_RACY_MARGIN,
            listing_cache: true,
            shard_options: Options::from_env(),
            progress: None,
            exclude: Exclude::default(),
        }
    }
}

impl HashTreeOptions {
    /// Sets [`shard`](HashTreeOptions::shard).
    pub fn shard(mut self, path: impl Into<PathBuf>) -> Self {
        self.shard = Some(path.into());
        self
    }

    /// Sets [`threads`](HashTreeOptions::threads) (at least 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Sets [`racy_margin`](HashTreeOptions::racy_margin).
    pub fn racy_margin(mut self, margin: Duration) -> Self {
        self.racy_margin = margin;
        self
    }

    /// Sets [`listing_cache`](HashTreeOptions::listing_cache).
    pub fn listing_cache(mut self, on: bool) -> Self {
        self.listing_cache = on;
        self
    }

    /// Sets [`shard_options`](HashTreeOptions::shard_options).
    pub fn shard_options(mut self, options: Options) -> Self {
        self.shard_options = options;
        self
    }

    /// Sets [`progress`](HashTreeOptions::progress).
    pub fn progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Sets [`exclude`](HashTreeOptions::exclude).
    pub fn exclude(mut self, exclude: Exclude) -> Self {
        self.exclude = exclude;
        self
    }
}

/// What a [`hash_tree`] run produced and did.
#[derive(Debug)]
#[non_exhaustive]
pub struct HashTreeReport {
    /// The manifest, sorted by path bytes.
    pub manifest: Manifest,
    /// Regular files found.
    pub files: u64,
    /// Files whose content was read this run.
    pub hashed: u64,
    /// Directories found.
    pub dirs: u64,
    /// Directories whose entries were read this run; the others were unchanged, and their
    /// listing came from the cache.
    pub dirs_read: u64,
    /// Bytes read and hashed this run.
    pub bytes_hashed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Files or directories that could not be read (left out of the manifest).
    pub errors: Vec<PathError>,
    /// The cache shard used.
    pub shard_path: PathBuf,
    /// Whether the cache shard was rewritten.
    pub shard_written: bool,
    /// Why the cache shard could not be written (lock timeout, size limit, I/O...), if it could
    /// not. The manifest is complete and correct either way: the next run only re-hashes more.
    pub cache_error: Option<Error>,
}

/// The default cache shard of a canonical root: `<cache dir>/warmshard/trees/<sha256 of the
/// root path>.shard`.
pub fn shard_path_for_root(canonical_root: &Path) -> Result<PathBuf> {
    let digest: [u8; 32] = Sha256::digest(canonical_root.as_os_str().as_bytes()).into();
    let mut name = Vec::with_capacity(70);
    push_hex(&mut name, &digest);
    name.extend_from_slice(b".shard");
    Ok(crate::default_dir()?
        .join("trees")
        .join(OsStr::from_bytes(&name)))
}

/// What a run learned about one directory: per entry, the hash known from the cache or computed
/// this run (files only) and the new cache value of files hashed this run.
struct DirResult {
    listing: Listing,
    known: Vec<Option<[u8; 32]>>,
    /// How many entries of `known` are set.
    files_known: usize,
    /// Per entry, the stamp (and whether it is racy) of a file hashed this run.
    fresh: Vec<Option<(Stamp, bool)>>,
    /// Results of the hashing tasks this directory queued: (entry index, result).
    hashed: Arc<Mutex<Vec<(usize, HashResult)>>>,
    /// How many of its files have an entry in the cache (valid or not).
    cached_files: usize,
    /// Whether the cache holds a listing of it (valid or not).
    cached_listing: bool,
    /// Its listing, to store in the cache: read this run and not racy.
    fresh_listing: Option<Vec<u8>>,
    /// Whether its entries were read this run (rather than taken from the cache).
    read: bool,
    /// Its cache key when that is not its path (see `listing::dir_key`).
    long_key: Option<Vec<u8>>,
}

impl DirResult {
    /// Its cache key, given its path.
    fn key<'a>(&'a self, rel: &'a [u8]) -> &'a [u8] {
        self.long_key.as_deref().unwrap_or(rel)
    }
}

/// A file a hashing task reads: its entry index, name, stamp if the walk took one, and the value
/// the cache holds for it (if any).
type ToHash = (usize, std::ffi::CString, Option<Stamp>, Option<Box<[u8]>>);

/// What hashing one file gave.
struct Hashed {
    /// The stamp its content is stored under.
    stamp: Stamp,
    /// Whether that stamp is racy.
    racy: bool,
    sha256: [u8; 32],
    /// Whether its cache entry differs from the one the cache holds.
    changed: bool,
}

/// `Ok(None)`: the file turned out not to be a regular file, or was gone, when opened.
type HashResult = std::io::Result<Option<Hashed>>;

/// Files of one directory hashed by one task: few small files, or one large one.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;
/// Files of unknown size (not stamped yet) one task takes at most.
const UNSTAMPED_PER_BATCH: u64 = 16;

thread_local! {
    /// Read buffer of a hashing thread: memory stays flat whatever the file size.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Builds the manifest of `root` (see the module docs).
pub fn hash_tree(root: &Path, options: &HashTreeOptions) -> Result<HashTreeReport> {
    let started = Instant::now();
    let taken_at = SystemTime::now();
    let root = std::fs::canonicalize(root).map_err(|e| Error::io("resolving", root, e))?;
    if !root.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let shard_path = match &options.shard {
        Some(path) => path.clone(),
        None => shard_path_for_root(&root)?,
    };
    let shard_options = options
        .shard_options
        .clone()
        .producer(PRODUCER)
        .populate(true);
    let shard = Shard::open_with(&shard_path, shard_options)?;
    let view = shard.snapshot();
    if options.shard.is_some()
        && let Health::ProducerMismatch { found, .. } = view.health()
    {
        return Err(Error::InvalidInput(format!(
            "{} holds entries of {found:?}, not a hash-tree cache; pick another --shard",
            shard_path.display()
        )));
    }

    let seen = AtomicU64::new(0);
    let bytes_hashed = AtomicU64::new(0);
    let report_progress = |files: u64, bytes: u64| {
        if let Some(progress) = &options.progress {
            progress(files, bytes);
        }
    };
    let listing_cache = options.listing_cache;
    let cached = |dir_key: &[u8], stamp: &Stamp| {
        if !listing_cache {
            return None;
        }
        let mut key = Vec::with_capacity(dir_key.len() + 1);
        listing_key(&mut key, dir_key);
        Listing::decode(view.get(&key)?, stamp)
    };
    let racy_margin = options.racy_margin;
    let visit = visit_fn(|dir: VisitedDir<'_>, spawner: &Spawner<'_, '_>| {
        let mut listing = dir.listing;
        // All keys of the directory, looked up in one batch.
        let mut key_bytes =
            Vec::with_capacity(listing.names.len() + listing.entries.len() * (dir.key.len() + 1));
        let mut key_ends = Vec::with_capacity(listing.entries.len());
        for (name, kind) in &listing.entries {
            if let Listed::File(_) = kind {
                if !dir.key.is_empty() {
                    key_bytes.extend_from_slice(dir.key);
                    key_bytes.push(b'/');
                }
                key_bytes.extend_from_slice(listing.name(name));
                key_ends.push(key_bytes.len());
            }
        }
        let mut key = Vec::new();
        let mut keys = Vec::with_capacity(key_ends.len());
        let mut start = 0;
        for end in key_ends {
            keys.push(&key_bytes[start..end]);
            start = end;
        }
        let mut values = Vec::new();
        view.get_many(&keys, &mut values);
        let cached_files = values.iter().filter(|v| v.is_some()).count();

        // A listing that was not read came from the cache: no need to look it up again.
        listing_key(&mut key, dir.key);
        let cached_listing = !dir.read || view.get(&key).is_some();
        let fresh_listing = (listing_cache
            && dir.read
            && dir.cacheable
            && !dir.stamp.is_racy(taken_at, racy_margin))
        .then(|| {
            dir.unfiltered
                .as_ref()
                .unwrap_or(&listing)
                .encode(&dir.stamp)
        });

        // Hash what the cache could not answer, in tasks the walk's workers share.
        let hashed = Arc::new(Mutex::new(Vec::new()));
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let queue_batch = |batch: Vec<ToHash>| {
            let handle = dir.handle.clone();
            let hashed = hashed.clone();
            let (bytes_hashed, seen, report_progress) = (&bytes_hashed, &seen, &report_progress);
            spawner.spawn(Box::new(move || {
                let mut results = Vec::with_capacity(batch.len());
                let mut value = Vec::new();
                READ_BUFFER.with_borrow_mut(|buffer| {
                    buffer.resize(READ_BUFFER_LEN, 0);
                    for (i, name, stamp, old_value) in batch {
                        let result = hash_file_at(&handle, &name, stamp, buffer, bytes_hashed).map(
                            |hashed| {
                                let (stamp, sha256) = hashed?;
                                let racy = stamp.is_racy(taken_at, racy_margin);
                                encode_entry_into(
                                    &mut value,
                                    &stamp,
                                    racy,
                                    recorded_hours(taken_at),
                                    &[(DIMENSION, &sha256)],
                                );
                                Some(Hashed {
                                    stamp,
                                    racy,
                                    sha256,
                                    changed: old_value.as_deref() != Some(value.as_slice()),
                                })
                            },
                        );
                        results.push((i, result));
                    }
                });
                report_progress(
                    seen.load(Ordering::Relaxed),
                    bytes_hashed.load(Ordering::Relaxed),
                );
                hashed.lock().append(&mut results);
            }));
        };
        // Each file's hash from the cache if its entry holds for its stamp; the rest is queued.
        let mut known = Vec::with_capacity(listing.entries.len());
        let mut file_values = values.iter();
        let Listing { names, entries } = &mut listing;
        // Names are NUL-terminated in `names` and hold no other NUL (see `Listing`); only files
        // stamped or hashed here need theirs as a C string.
        let c_name = |range: &Range<u32>| {
            CStr::from_bytes_with_nul(&names[range.start as usize..=range.end as usize]).ok()
        };
        for (i, (range, kind)) in entries.iter_mut().enumerate() {
            let Listed::File(stamp) = kind else {
                known.push(None);
                continue;
            };
            let old_value = file_values.next().copied().flatten();
            if old_value.is_some() && stamp.is_none() {
                // Known to the cache but not stamped by the walk: stamp it now.
                let Some(name) = c_name(range) else {
                    known.push(None);
                    continue;
                };
                match stamp_file_at(dir.handle, name) {
                    Ok(Some(fresh)) => *stamp = Some(fresh),
                    Ok(None) => {
                        // Gone, or no longer a regular file, since the directory was read.
                        known.push(None);
                        continue;
                    }
                    Err(e) => {
                        hashed.lock().push((i, Err(e.into())));
                        known.push(None);
                        continue;
                    }
                }
            }
            let hit = old_value.zip(*stamp).and_then(|(value, stamp)| {
                PathEntry::decode(value)?
                    .valid_for(&stamp, DIMENSION)
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
            });
            known.push(hit);
            let (None, Some(name)) = (hit, c_name(range)) else {
                continue;
            };
            // The cache's current value goes along, to tell whether the new one differs (rarely
            // any: a cold run finds none, a partial one only for the files that changed).
            batch.push((i, name.to_owned(), *stamp, old_value.map(Box::from)));
            // A file without a stamp has an unknown size: count it as a large one.
            batch_bytes += stamp.map_or(BATCH_BYTES / UNSTAMPED_PER_BATCH, |s| s.size);
            if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                queue_batch(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            queue_batch(batch);
        }

        let files = keys.len() as u64;
        let n = seen.fetch_add(files, Ordering::Relaxed);
        report_progress(n + files, bytes_hashed.load(Ordering::Relaxed));
        DirResult {
            files_known: known.iter().filter(|k| k.is_some()).count(),
            known,
            fresh: Vec::new(),
            hashed,
            cached_files,
            cached_listing,
            fresh_listing,
            read: dir.read,
            long_key: (dir.key != dir.rel).then(|| dir.key.to_vec()),
            listing,
        }
    });
    let excluded = cache_files(&shard);
    let visitor = Visitor {
        cached: &cached,
        visit: &visit,
    };
    let (mut dirs, walk_errors) =
        walk(&root, options.threads, &excluded, &options.exclude, visitor);
    if !dirs.iter().any(|(rel, _)| rel.is_empty()) {
        // The root itself could not be read: there is no manifest to give.
        let error = walk_errors
            .into_iter()
            .find(|e| e.path == root)
            .map_or_else(
                || std::io::Error::other("the directory could not be read"),
                |e| e.source,
            );
        return Err(Error::io("reading", &root, error));
    }
    let mut errors = walk_errors;

    // Take in what was hashed.
    let mut hashed_ok = 0u64;
    let mut changed = false;
    for (rel, dir) in &mut dirs {
        let results = std::mem::take(&mut *dir.hashed.lock());
        if results.is_empty() {
            continue;
        }
        dir.fresh.resize(dir.listing.entries.len(), None);
        for (i, result) in results {
            match result {
                Ok(None) => {}
                Ok(Some(hashed)) => {
                    changed |= hashed.changed;
                    dir.known[i] = Some(hashed.sha256);
                    dir.files_known += 1;
                    dir.fresh[i] = Some((hashed.stamp, hashed.racy));
                    hashed_ok += 1;
                }
                Err(source) => {
                    let name = dir.listing.name(&dir.listing.entries[i].0);
                    let path = root
                        .join(OsStr::from_bytes(rel))
                        .join(OsStr::from_bytes(name));
                    errors.push(PathError { path, source });
                }
            }
        }
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    changed |= dirs.iter().any(|(_, dir)| dir.fresh_listing.is_some());

    // Rewrite only if an entry changed, or the cache holds an entry of a file or directory that
    // is gone.
    let still_there: usize = dirs
        .iter()
        .map(|(_, dir)| dir.cached_files + usize::from(dir.cached_listing))
        .sum();
    let vanished = still_there != view.len();
    let mut shard_written = false;
    let mut cache_error = None;
    if vanished || changed {
        // Gone entries: the whole cache is rewritten without them (files hashed and directories
        // read this run get their new value, the others keep theirs). Otherwise only changes and
        // additions: a merge, which a small change turns into a small write.
        let mode = if vanished {
            BulkMode::Replace
        } else {
            BulkMode::Merge
        };
        match write_cache(&shard, &view, &dirs, mode) {
            Ok(outcome) => shard_written = matches!(outcome, WriteOutcome::Committed { .. }),
            Err(error) => cache_error = Some(error),
        }
    }
    let dirs_read = dirs.iter().filter(|(_, dir)| dir.read).count() as u64;
    let dirs_found = dirs.len() as u64;
    let manifest = assemble(dirs);
    Ok(HashTreeReport {
        files: manifest.len() as u64,
        hashed: hashed_ok,
        dirs: dirs_found,
        dirs_read,
        bytes_hashed: bytes_hashed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        errors,
        shard_path,
        shard_written,
        cache_error,
        manifest,
    })
}

/// Calls `f(directory key, file name, directory, entry index)` for every file with a known
/// hash, in manifest order.
fn for_each_file<'d>(
    dirs: &'d [(Vec<u8>, DirResult)],
    mut f: impl FnMut(&'d [u8], &'d [u8], &'d DirResult, usize),
) {
    in_manifest_order(
        dirs,
        |(rel, dir)| (rel, &dir.listing),
        |d, entries| {
            let (rel, dir) = &dirs[d];
            for i in entries {
                if dir.known[i].is_some() {
                    f(
                        dir.key(rel),
                        dir.listing.name(&dir.listing.entries[i].0),
                        dir,
                        i,
                    );
                }
            }
        },
    );
}

/// The manifest of the walked directories, which it takes over.
fn assemble(dirs: Vec<(Vec<u8>, DirResult)>) -> Manifest {
    let len = dirs.iter().map(|(_, dir)| dir.files_known).sum();
    let dirs = dirs
        .into_iter()
        .map(|(rel, dir)| ManifestDir {
            rel,
            listing: dir.listing,
            known: dir.known,
        })
        .collect();
    Manifest::new(dirs, len)
}

/// Writes the tree's cache entries: the files hashed and directories read this run and, with
/// [`BulkMode::Replace`], every other file and listing still there with its current value.
/// Entries stream to the writer through two reused buffers.
fn write_cache(
    shard: &Shard,
    view: &Snapshot,
    dirs: &[(Vec<u8>, DirResult)],
    mode: BulkMode,
) -> Result<WriteOutcome> {
    let keep_others = matches!(mode, BulkMode::Replace);
    let hours = recorded_hours(SystemTime::now());
    let mut writer = shard.bulk_writer(mode)?;
    let mut added = Ok(());
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for_each_file(dirs, |dir_key, name, dir, i| {
        if added.is_err() {
            return;
        }
        join_rel(&mut key, dir_key, name);
        let new_value = match (dir.fresh.get(i).copied().flatten(), dir.known[i]) {
            (Some((stamp, racy)), Some(sha256)) => {
                encode_entry_into(&mut value, &stamp, racy, hours, &[(DIMENSION, &sha256)]);
                Some(value.as_slice())
            }
            _ if keep_others => view.get(&key),
            _ => None,
        };
        if let Some(new_value) = new_value {
            added = writer.add(&key, new_value);
        }
    });
    added?;
    for (rel, dir) in dirs {
        listing_key(&mut key, dir.key(rel));
        let new_value = match &dir.fresh_listing {
            Some(listing) => Some(listing.as_slice()),
            None if keep_others => view.get(&key),
            None => None,
        };
        if let Some(new_value) = new_value {
            writer.add(&key, new_value)?;
        }
    }
    writer.commit()
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

/// Hashes one file of an open directory, streaming; `Ok(None)` if it is no longer a regular file.
///
/// The file is opened without following a symlink and without blocking (a FIFO swapped in would
/// otherwise wait for a writer), then `fstat`ed: only a regular file is read, so a FIFO or a
/// device put in its place since the walk saw it is never read. That `fstat` stamp, taken before
/// any byte is read, is the one the content is stored under: if the file changes during the
/// read, its next stamp differs, or — within one clock tick — the stamp is racy and is not
/// trusted anyway (the caller applies the racy rule). So no stamp is taken after the read.
/// `listed` is the stamp the walk took, if it took one: when the file opened is another one
/// (another device or inode: replaced since), it is hashed under its own stamp all the same.
pub(super) fn hash_file_at(
    dir: &OwnedFd,
    name: &CStr,
    listed: Option<Stamp>,
    buffer: &mut [u8],
    bytes_hashed: &AtomicU64,
) -> std::io::Result<Option<(Stamp, [u8; 32])>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(file) => file,
        // Listed as a regular file but never stamped: removed, or replaced by a symlink, since.
        Err(Errno::ENOENT | Errno::ELOOP) if listed.is_none() => return Ok(None),
        Err(errno) => return Err(errno.into()),
    };
    let stamp = Stamp::from_stat(&nix::sys::stat::fstat(&file)?);
    if !stamp.is_file() {
        return Ok(None);
    }
    let mut file = std::fs::File::from(file);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        bytes_hashed.fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
        // A read of a regular file stops short only at its end: no need to read a 0 to know.
        if total == stamp.size && n < buffer.len() {
            break;
        }
    }
    Ok(Some((stamp, hasher.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::walk::dir_flags;

    fn hash_unstamped(
        dir: &std::path::Path,
        name: &CStr,
    ) -> std::io::Result<Option<(Stamp, [u8; 32])>> {
        let handle = nix::fcntl::open(dir, dir_flags(), Mode::empty())?;
        let mut buffer = vec![0; 16];
        hash_file_at(&handle, name, None, &mut buffer, &AtomicU64::new(0))
    }

    #[test]
    fn an_unstamped_file_is_stamped_once_open_and_anything_else_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let content = b"more than one buffer of sixteen bytes";
        std::fs::write(dir.join("file"), content).unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        nix::unistd::mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();

        let (stamp, sha256) = hash_unstamped(dir, c"file").unwrap().unwrap();
        let lstat = Stamp::from_metadata(&std::fs::symlink_metadata(dir.join("file")).unwrap());
        assert_eq!(stamp, lstat);
        assert_eq!(sha256, <[u8; 32]>::from(Sha256::digest(content)));
        // Never followed, never read (a FIFO would block a read), never an error.
        for name in [c"link", c"fifo", c"subdir", c"gone"] {
            assert_eq!(hash_unstamped(dir, name).unwrap(), None, "{name:?}");
        }
        // A stamped file that is gone is an error: the walk saw it a moment ago.
        let handle = nix::fcntl::open(dir, dir_flags(), Mode::empty()).unwrap();
        let mut buffer = vec![0; 16];
        let gone = hash_file_at(
            &handle,
            c"gone",
            Some(lstat),
            &mut buffer,
            &AtomicU64::new(0),
        );
        assert!(gone.is_err());
    }

    #[test]
    fn a_file_replaced_by_a_fifo_or_a_device_after_the_walk_stamped_it_is_never_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let handle = nix::fcntl::open(dir, dir_flags(), Mode::empty()).unwrap();
        let mut buffer = vec![0; 16];
        for (name, make) in [
            (c"fifo", (nix::sys::stat::SFlag::S_IFIFO, 0)),
            // /dev/zero: a read of it never ends.
            (
                c"zero",
                (
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::makedev(1, 5),
                ),
            ),
        ] {
            let path = dir.join(name.to_str().unwrap());
            std::fs::write(&path, b"regular").unwrap();
            // What the walk stamped: a regular file.
            let walked = Stamp::from_metadata(&std::fs::symlink_metadata(&path).unwrap());
            std::fs::remove_file(&path).unwrap();
            let (kind, dev) = make;
            if let Err(e) = nix::sys::stat::mknod(&path, kind, Mode::from_bits_truncate(0o600), dev)
            {
                println!("SKIPPED: {name:?}: mknod: {e}");
                continue;
            }
            let hashed = hash_file_at(&handle, name, Some(walked), &mut buffer, &AtomicU64::new(0));
            assert_eq!(hashed.unwrap(), None, "{name:?}");
        }
        // A regular file replaced by another is hashed under the stamp of the one read.
        let path = dir.join("file");
        std::fs::write(&path, b"old").unwrap();
        let walked = Stamp::from_metadata(&std::fs::symlink_metadata(&path).unwrap());
        std::fs::write(dir.join("new"), b"new content").unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        let (stamp, sha256) = hash_file_at(
            &handle,
            c"file",
            Some(walked),
            &mut buffer,
            &AtomicU64::new(0),
        )
        .unwrap()
        .unwrap();
        assert_eq!(stamp, Stamp::lstat(&path).unwrap());
        assert_ne!(stamp.ino, walked.ino);
        assert_eq!(sha256, <[u8; 32]>::from(Sha256::digest(b"new content")));
    }

    #[test]
    fn options_can_move_to_another_thread() {
        fn is_send<T: Send>(_: &T) {}
        let options = HashTreeOptions::default().progress(|_, _| {});
        is_send(&options);
        std::thread::spawn(move || drop(options)).join().unwrap();
    }

    #[test]
    fn stamping_by_name_skips_what_is_not_a_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();
        let handle = nix::fcntl::open(dir, dir_flags(), Mode::empty()).unwrap();
        let lstat = Stamp::from_metadata(&std::fs::symlink_metadata(dir.join("file")).unwrap());
        assert_eq!(stamp_file_at(&handle, c"file").unwrap(), Some(lstat));
        for name in [c"link", c"subdir", c"gone"] {
            assert_eq!(stamp_file_at(&handle, name).unwrap(), None, "{name:?}");
        }
    }
}
