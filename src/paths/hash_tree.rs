//! `hash-tree`: a `sha256sum`-compatible [`Manifest`] of a directory that re-hashes only what
//! changed.
//!
//! The cache shard holds one [`PathCache`](super::PathCache) entry per regular file, keyed by its
//! path relative to the root, with a `sha256` dimension, and one cached listing per directory
//! (keyed by a NUL byte and the directory's path; a directory whose path passes 255 bytes is
//! keyed by a short hash instead, so deep trees do not cost depth squared; see `listing.rs`)
//! holding each of its files' stamp and hash too — a per-directory stamp index. The keys and
//! values are `tree_store.rs`'s, shared with [`TreeCache`](super::TreeCache).
//!
//! A run has four parts, each with one job:
//!
//! 1. **Plan a directory** ([`Run::plan_dir`], called by the parallel walk for each directory,
//!    whose listing it reuses from the cache while the directory's stamp is unchanged): a file
//!    whose fresh stamp (`lstat` relative to its directory's handle, taken by the walk) is the
//!    one its directory's cached listing holds is answered from that listing, by a sequential
//!    compare; the other files are looked up in the cache in one batch, and a file the cache
//!    knows is stamped and, while its entry holds for that stamp, answered without being read.
//!    Each file's state is one [`FileState`].
//! 2. **Hash what is stale** ([`Run::hash_batch`]): the stale files of a directory are queued as
//!    tasks (a few small files or one large one each) for the walk's own workers, so walking and
//!    hashing overlap. A task opens each file relative to the directory's handle, stamps it by
//!    `fstat` once open (a file the cache did not know costs one path lookup, not two), streams
//!    it through a fixed buffer per thread, and encodes its new cache entry once, kept only if
//!    it differs from the cache's.
//! 3. **Persist the changes** ([`index_changes`], [`persist`]): the listing of a directory read
//!    this run, or with a file its cached listing did not answer, is encoded with its files'
//!    stamps and hashes; the shard is rewritten only if an entry changed or a file or directory
//!    disappeared, with the values encoded in step 2 (and the directories' keys worked out
//!    again from their names, [`dir_keys`]).
//! 4. **Print the manifest** (`InOrder` in `walk.rs`): between the walk's jobs it runs itself,
//!    the calling thread takes the directories that are done in manifest order, takes in what
//!    their hashing tasks returned, writes their lines ([`hash_tree_to`]) as soon as every
//!    directory before them is done, each directory's path built in one buffer on the way
//!    down, and once a directory and everything under it are done, keeps its listing for the
//!    [`Manifest`] (which is printed straight from the listings), its changes for step 3, and
//!    drops the rest. So little is left to do once the walk is over.
//!
//! No part keeps a directory's path or key past its visit: the walk hands each directory to
//! the calling thread with its subdirectories' numbers, and its cache key is its path only
//! while that is short. So memory grows with the tree (its names and files), not with the
//! square of its depth.

use std::ffi::{CStr, CString, OsStr};
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

use super::cache::recorded_hours;
use super::error::{PathError, PathInputError, invalid_path};
use super::exclude::Exclude;
use super::listing::{Listed, Listing, dir_key, listing_key};
use super::manifest::{
    FileState, Manifest, ManifestDir, Sha256sumWriter, in_manifest_order, names_need_escape,
    needs_escape, push_hex,
};
use super::stamp::{DEFAULT_RACY_MARGIN, Stamp};
use super::tree_store::{
    PRODUCER, PRODUCER_FAMILY, cache_files, cached_listing, cached_sha256, encode_sha256_entry,
    file_key, push_file_key,
};
use super::walk::{
    InOrder, Spawner, VisitedDir, Visitor, WalkedDir, join_rel, stamp_file_at, visit_fn, walk,
};
use crate::{BulkMode, Error, Health, Options, Result, Shard, Snapshot, WriteOutcome};

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
    /// Most threads for walking and hashing, the calling thread one of them (default: two per
    /// core, and the calling thread: it also prints and keeps the manifest, between its jobs).
    /// The others start one at a time, each when a job waits with no thread idle, so a small
    /// or narrow tree does not pay for threads it cannot use. Two per core because a walk
    /// spends most of its time in system calls: on a machine whose cores are busy with other
    /// work, the scheduler shares them out by thread, and a walk with one thread per core then
    /// got a third less of them than `git update-index --refresh`, which stats with up to 20
    /// (warm `/usr` with a busy loop on one of 2 cores: 1.36× git's wall time with 3 threads,
    /// 1.06× with 5; no change with the cores idle, BENCHMARKS.md).
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
            threads: 2 * std::thread::available_parallelism().map_or(2, |n| n.get()) + 1,
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
    /// Why the manifest could not be written to the writer given to [`hash_tree_to`], if it
    /// could not (always `None` for [`hash_tree`]). The run went on without writing more.
    pub output_error: Option<std::io::Error>,
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

/// One directory of a run: its plan (what the cache already knew), then what hashing it added.
struct DirRun {
    listing: Listing,
    /// Per entry of `listing` (the manifest takes them over as they are).
    files: Vec<FileState>,
    /// How many of `files` have a hash: the directory's lines in the manifest.
    lines: usize,
    /// Whether any of its names needs escaping in the manifest (see `manifest.rs`).
    escape_names: bool,
    /// Whether its path needs escaping in the manifest: found once the calling thread takes
    /// it (its path is known then), not for each run of its entries.
    escape_path: bool,
    /// Whether its entries were read this run (rather than taken from the cache).
    read: bool,
    /// How many of its entries the cache holds (its files' and its listing, valid or not): the
    /// run tells from their sum whether something vanished. A file whose hash the cached
    /// listing answered counts without a lookup: `hash_tree` writes its entry with that record
    /// (and `persist` writes it again should it be missing).
    cached_entries: usize,
    /// What its listing is stored from: its stamp, whether it may be stored at all (cacheable,
    /// listing cache on, stamp not racy), and the whole listing when exclusions took entries
    /// out of `listing`.
    stamp: Stamp,
    storable: bool,
    unfiltered: Option<Listing>,
    /// How many of its files its cached listing did not answer although it could next time
    /// (answered by their own entry, or hashed, under a stamp that is not racy): see
    /// [`index_changes`].
    uncovered_keepable: usize,
    /// What its hashing tasks return, while the walk goes on; none if it queued no task.
    hashing: Option<Arc<Mutex<Vec<HashedBatch>>>>,
    /// What the cache is to be told of it.
    changes: DirChanges,
}

/// What the cache is to be told of a directory that changed: its listing to store, and the new
/// values of its files hashed this run whose entry changed.
#[derive(Default)]
struct DirChanges {
    /// Its listing to store in the cache, with its files' stamps and hashes (see
    /// [`index_changes`]).
    new_listing: Option<Vec<u8>>,
    /// The new cache values of its files hashed this run whose entry changed, each encoded once:
    /// (entry index, range in `values`), by entry index.
    new_values: Vec<(u32, Range<u32>)>,
    values: Vec<u8>,
}

impl DirChanges {
    /// Whether there is anything to tell the cache.
    fn any(&self) -> bool {
        self.new_listing.is_some() || !self.new_values.is_empty()
    }

    /// The new cache value of entry `i`, if it was hashed this run and its entry changed.
    fn new_value(&self, i: usize) -> Option<&[u8]> {
        let at = self
            .new_values
            .binary_search_by_key(&i, |(j, _)| *j as usize)
            .ok()?;
        let range = &self.new_values[at].1;
        Some(&self.values[range.start as usize..range.end as usize])
    }
}

/// A file a hashing task reads: its entry index, name, stamp if the walk took one, and the value
/// the cache holds for it (to tell whether the new one differs; rarely any: a cold run finds
/// none, a partial one only for the files that changed).
struct ToHash {
    index: u32,
    name: CString,
    stamp: Option<Stamp>,
    old_value: Option<Box<[u8]>>,
}

/// What one hashing task gives back: per file, its hash and, if its cache entry changed, the
/// range of its new value in `values`.
#[derive(Default)]
struct HashedBatch {
    values: Vec<u8>,
    results: Vec<(u32, HashResult)>,
}

/// `Ok(None)`: the file turned out not to be a regular file, or was gone, when opened.
type HashResult = std::io::Result<Option<(Stamp, [u8; 32], Option<Range<u32>>)>>;

/// Files of one directory hashed by one task: few small files, or one large one.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;
/// Files of unknown size (not stamped yet) one task takes at most.
const UNSTAMPED_PER_BATCH: u64 = 16;

thread_local! {
    /// Read buffer of a hashing thread: memory stays flat whatever the file size.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A walking thread's buffer for the cache key of the listing it looks up.
    static LISTING_KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Builds the manifest of `root` (see the module docs): plan each directory from the cache and
/// hash what is stale (both during the walk), persist what changed, then assemble the manifest.
pub fn hash_tree(root: &Path, options: &HashTreeOptions) -> Result<HashTreeReport> {
    run_hash_tree(root, options, None)
}

/// [`hash_tree`], writing the manifest to `out` as GNU `sha256sum` prints it
/// ([`Manifest::write_sha256sum_to`]) while the tree is walked: each directory's lines as soon
/// as it and every directory before it in the manifest are done. `out` is flushed once the
/// manifest is complete, before the cache is written.
///
/// A failed write does not end the run (the cache is still brought up to date); it is in
/// [`HashTreeReport::output_error`], and nothing more is written after it. If the root cannot
/// be read, the error is returned and nothing is written.
///
/// ```
/// # fn main() -> warmshard::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// # let root = tmp.path().join("src");
/// # std::fs::create_dir_all(root.join("sub")).unwrap();
/// # std::fs::write(root.join("sub/a.rs"), "fn a() {}").unwrap();
/// use warmshard::paths::{HashTreeOptions, hash_tree_to};
/// let options = HashTreeOptions::default().shard(tmp.path().join("tree.shard"));
/// let mut out = Vec::new();
/// let report = hash_tree_to(&root, &options, &mut out)?;
/// assert!(report.output_error.is_none());
/// let mut again = Vec::new();
/// report.manifest.write_sha256sum_to(&mut again).unwrap();
/// assert_eq!(out, again);
/// assert!(out.ends_with(b"  sub/a.rs\n"));
/// # Ok(()) }
/// ```
pub fn hash_tree_to(
    root: &Path,
    options: &HashTreeOptions,
    out: &mut dyn std::io::Write,
) -> Result<HashTreeReport> {
    run_hash_tree(root, options, Some(out))
}

/// [`hash_tree`], and [`hash_tree_to`] when `out` is given.
fn run_hash_tree(
    root: &Path,
    options: &HashTreeOptions,
    out: Option<&mut dyn std::io::Write>,
) -> Result<HashTreeReport> {
    let started = Instant::now();
    let root = std::fs::canonicalize(root).map_err(|e| Error::io("resolving", root, e))?;
    if !root.is_dir() {
        return Err(invalid_path(
            "hashing",
            &root,
            PathInputError::NotADirectory,
        ));
    }
    let shard_path = match &options.shard {
        Some(path) => path.clone(),
        None => shard_path_for_root(&root)?,
    };
    // The mapping is not populated (unless the caller's options ask): a warm run reads the
    // cached listings, not the files' own entries (more than half of the shard).
    let shard_options = options.shard_options.clone().producer(PRODUCER);
    let shard = Shard::open_with(&shard_path, shard_options)?;
    let view = shard.snapshot();
    // A cache of an earlier layout of ours reads as empty and is rebuilt by this run's write.
    if options.shard.is_some()
        && let Health::ProducerMismatch { found, .. } = view.health()
        && !found.starts_with(PRODUCER_FAMILY)
    {
        let error = PathInputError::NotATreeCache {
            producer: found.clone(),
        };
        return Err(invalid_path("using", &shard_path, error));
    }

    let run = Run {
        view: &view,
        options,
        taken_at: SystemTime::now(),
        hours: recorded_hours(SystemTime::now()),
        seen: AtomicU64::new(0),
        bytes_hashed: AtomicU64::new(0),
    };
    let cached = |dir_key: &[u8], stamp: &Stamp| {
        if !options.listing_cache {
            return None;
        }
        LISTING_KEY.with_borrow_mut(|key| cached_listing(&view, key, dir_key, stamp))
    };
    let visit =
        visit_fn(|dir: VisitedDir<'_>, spawner: &Spawner<'_, '_>| run.plan_dir(dir, spawner));
    let visitor = Visitor {
        cached: &cached,
        visit: &visit,
    };
    let mut hashed = 0;
    let mut unreadable = Vec::new();
    let mut printer = out.map(Sha256sumWriter::new);
    let printing = printer.is_some();
    // What the manifest keeps of each directory, by its number in manifest order, and what
    // the cache is to be told of the directories that changed: taken from each directory once
    // it and everything under it were gone through, during the walk (the rest of the
    // directory is dropped then, not after the walk).
    let mut manifest_dirs: Vec<ManifestDir> = Vec::new();
    let mut changes: Vec<(usize, DirChanges)> = Vec::new();
    let (mut lines, mut dirs_read, mut still_there) = (0, 0, 0);
    let mut in_order = InOrder::new();
    let mut errors = walk(
        &root,
        options.threads,
        &cache_files(&shard),
        &options.exclude,
        visitor,
        |walked| {
            // Each directory is printed as soon as it and every one before it are done.
            in_order.advance(
                walked,
                |dir| &dir.listing,
                |dir, path| {
                    dir.escape_path = printing && needs_escape(path);
                    hashed += take_in_hashed(&run, &root, dir, path, &mut unreadable);
                },
                |dir, path, entries| {
                    if let Some(printer) = &mut printer {
                        let (listing, files) = (&dir.listing, &dir.files);
                        printer.write_run(
                            path,
                            dir.escape_path,
                            dir.escape_names,
                            listing,
                            files,
                            entries,
                        );
                    }
                },
                |at, walked| {
                    let WalkedDir {
                        subdirs,
                        result: mut dir,
                    } = *walked;
                    index_changes(&mut dir, run.taken_at, options.racy_margin);
                    lines += dir.lines;
                    dirs_read += u64::from(dir.read);
                    still_there += dir.cached_entries;
                    if manifest_dirs.len() <= at {
                        manifest_dirs.resize_with(at + 1, ManifestDir::default);
                    }
                    manifest_dirs[at] = ManifestDir {
                        escape_names: dir.escape_names,
                        listing: dir.listing,
                        files: dir.files,
                        subdirs,
                    };
                    if dir.changes.any() {
                        changes.push((at, dir.changes));
                    }
                },
            );
        },
    );
    // The manifest is out before the cache is written.
    let printed = printer.map(Sha256sumWriter::finish);
    let dirs_found = in_order.taken();
    errors.append(&mut unreadable);
    if dirs_found == 0 {
        // The root itself could not be read: there is no manifest to give.
        let error = errors.into_iter().find(|e| e.path == root).map_or_else(
            || std::io::Error::other("the directory could not be read"),
            |e| e.source,
        );
        return Err(Error::io("reading", &root, error));
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    changes.sort_unstable_by_key(|(at, _)| *at);
    let persisted = persist(&run, &shard, &manifest_dirs, &changes, still_there);
    let (shard_written, cache_error) = match persisted {
        Ok(outcome) => (matches!(outcome, WriteOutcome::Committed { .. }), None),
        Err(error) => (false, Some(error)),
    };
    let dirs_found = dirs_found as u64;
    let manifest = Manifest::new(manifest_dirs, lines);
    Ok(HashTreeReport {
        files: manifest.len() as u64,
        hashed,
        dirs: dirs_found,
        dirs_read,
        bytes_hashed: run.bytes_hashed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        errors,
        shard_path,
        shard_written,
        cache_error,
        output_error: printed.and_then(std::io::Result::err),
        manifest,
    })
}

/// What a run shares with its walk's worker threads.
struct Run<'a> {
    view: &'a Snapshot,
    options: &'a HashTreeOptions,
    /// When the run started: the racy rule compares stamps with it.
    taken_at: SystemTime,
    /// [`recorded_hours`] of the run, stored in every entry it writes.
    hours: u32,
    /// Files planned so far, and bytes hashed so far (for progress).
    seen: AtomicU64,
    bytes_hashed: AtomicU64,
}

impl<'env> Run<'env> {
    /// Plans one directory from what the cache knows: each file's hash if its entry holds for
    /// its stamp, its listing to store if it was read this run; the stale files are queued as
    /// hashing tasks for the walk's workers.
    fn plan_dir(&'env self, dir: VisitedDir<'_>, spawner: &Spawner<'_, 'env>) -> DirRun {
        let mut listing = dir.listing;
        // Files the cached listing answered (their stamps matched its records) need no lookup.
        let covered = listing.hashes.iter().filter(|h| h.is_some()).count();
        // `None`: the cached listing answered every file (the usual warm directory), and
        // there is nothing more to plan.
        let looked_up = cached_values(self.view, &dir.key, &listing);
        let all_answered = looked_up.is_none();
        let values = looked_up.unwrap_or_default();
        // A listing that was not read came from the cache: no need to look it up again.
        let cached_listing = !dir.read || {
            let mut key = Vec::new();
            listing_key(&mut key, &dir.key);
            self.view.get(&key).is_some()
        };
        let cached_entries =
            covered + values.iter().filter(|v| v.is_some()).count() + usize::from(cached_listing);
        let storable = self.options.listing_cache
            && dir.cacheable
            && !dir.stamp.is_racy(self.taken_at, self.options.racy_margin);

        let mut queue = Batcher::new(dir.handle, self, spawner);
        // The files the cached listing answered start as cached, the others as absent; the
        // listing's hashes become the states in place (same layout), so a warm directory
        // allocates nothing more for them.
        let hashes = std::mem::take(&mut listing.hashes);
        let mut files: Vec<FileState> = if hashes.len() == listing.entries.len() {
            (hashes.into_iter())
                .map(|hash| hash.map_or(FileState::Absent, FileState::Cached))
                .collect()
        } else {
            vec![FileState::Absent; listing.entries.len()]
        };
        let mut file_values = values.iter();
        let mut uncovered_keepable = 0;
        let Listing { names, entries, .. } = &mut listing;
        // Only files stamped or hashed here need their name as a C string.
        let c_name = |range: &Range<u32>| {
            let name = names.get(range.start as usize..=range.end as usize)?;
            CStr::from_bytes_with_nul(name).ok()
        };
        let to_plan = if all_answered {
            &mut [][..]
        } else {
            &mut entries[..]
        };
        for (i, (range, kind)) in to_plan.iter_mut().enumerate() {
            let Listed::File(stamp) = kind else {
                continue;
            };
            if let Some(FileState::Cached(_)) = files.get(i) {
                continue; // answered by the cached listing
            }
            let old_value = file_values.next().copied().flatten();
            if old_value.is_some() && stamp.is_none() {
                let Some(name) = c_name(range) else {
                    continue;
                };
                // Known to the cache but not stamped by the walk: stamp it now. (A file the
                // cache does not know is stamped by `fstat` once open for hashing.)
                match stamp_file_at(dir.handle, name) {
                    Ok(Some(fresh)) => *stamp = Some(fresh),
                    // Gone, or no longer a regular file, since the directory was read.
                    Ok(None) => {
                        continue;
                    }
                    Err(e) => {
                        let result = (i as u32, Err(e.into()));
                        queue.results().lock().push(HashedBatch {
                            values: Vec::new(),
                            results: vec![result],
                        });
                        continue;
                    }
                }
            }
            if let Some((sha256, stamp)) = old_value
                .zip(stamp.as_ref())
                .and_then(|(value, stamp)| Some((cached_sha256(value, stamp)?, stamp)))
            {
                // Its directory's listing could answer it next time.
                if !stamp.is_racy(self.taken_at, self.options.racy_margin) {
                    uncovered_keepable += 1;
                }
                files[i] = FileState::Cached(sha256);
                continue;
            }
            let Some(name) = c_name(range) else {
                continue;
            };
            files[i] = FileState::Stale;
            queue.push(ToHash {
                index: i as u32,
                name: name.to_owned(),
                stamp: *stamp,
                old_value: old_value.map(Box::from),
            });
        }
        queue.flush();
        let hashing = queue.hashing;
        let lines = if all_answered {
            covered
        } else {
            (files.iter())
                .filter(|f| matches!(f, FileState::Cached(_)))
                .count()
        };

        // Counted only for a progress callback: a counter every thread adds to costs a
        // cache-line transfer between cores per directory.
        if self.options.progress.is_some() {
            let planned = (covered + values.len()) as u64;
            let seen = self.seen.fetch_add(planned, Ordering::Relaxed) + planned;
            self.report_progress(seen);
        }
        DirRun {
            escape_names: names_need_escape(&listing),
            escape_path: false,
            listing,
            files,
            lines,
            read: dir.read,
            cached_entries,
            stamp: dir.stamp,
            storable,
            unfiltered: dir.unfiltered,
            uncovered_keepable,
            hashing,
            changes: DirChanges::default(),
        }
    }

    /// Hashes a batch of one directory's files (a hashing task), each streamed through the
    /// thread's buffer, and encodes the new cache entry of each once, kept only if it differs
    /// from the cache's.
    fn hash_batch(&self, dir: &OwnedFd, batch: Vec<ToHash>) -> HashedBatch {
        let mut out = HashedBatch {
            values: Vec::new(),
            results: Vec::with_capacity(batch.len()),
        };
        let mut value = Vec::new();
        READ_BUFFER.with_borrow_mut(|buffer| {
            buffer.resize(READ_BUFFER_LEN, 0);
            for file in batch {
                let hashed = hash_file_at(dir, &file.name, file.stamp, buffer, &self.bytes_hashed);
                let result = hashed.map(|hashed| {
                    let (stamp, sha256) = hashed?;
                    encode_sha256_entry(
                        &mut value,
                        &stamp,
                        &sha256,
                        self.taken_at,
                        self.options.racy_margin,
                        self.hours,
                    );
                    let changed = file.old_value.as_deref() != Some(value.as_slice());
                    let range = changed.then(|| {
                        let start = out.values.len() as u32;
                        out.values.extend_from_slice(&value);
                        start..out.values.len() as u32
                    });
                    Some((stamp, sha256, range))
                });
                out.results.push((file.index, result));
            }
        });
        self.report_progress(self.seen.load(Ordering::Relaxed));
        out
    }

    fn report_progress(&self, seen: u64) {
        if let Some(progress) = &self.options.progress {
            progress(seen, self.bytes_hashed.load(Ordering::Relaxed));
        }
    }
}

/// The cache's value for each file of `listing` (in order) whose hash the cached listing did not
/// answer, looked up in one batch; `None` if it answered every file.
fn cached_values<'v>(
    view: &'v Snapshot,
    dir_key: &[u8],
    listing: &Listing,
) -> Option<Vec<Option<&'v [u8]>>> {
    let uncovered = |i: usize| listing.hashes.get(i).is_none_or(Option::is_none);
    let is_file = |kind: &Listed| matches!(kind, Listed::File(_));
    if !(listing.entries.iter().enumerate()).any(|(i, (_, kind))| is_file(kind) && uncovered(i)) {
        // The usual warm directory: its cached listing answered every file.
        return None;
    }
    let mut key_bytes =
        Vec::with_capacity(listing.names.len() + listing.entries.len() * (dir_key.len() + 1));
    let mut key_ends = Vec::with_capacity(listing.entries.len());
    for (i, (range, kind)) in listing.entries.iter().enumerate() {
        if is_file(kind) && uncovered(i) {
            push_file_key(&mut key_bytes, dir_key, listing.name(range));
            key_ends.push(key_bytes.len());
        }
    }
    let mut keys = Vec::with_capacity(key_ends.len());
    let mut start = 0;
    for end in key_ends {
        keys.push(&key_bytes[start..end]);
        start = end;
    }
    let mut values = Vec::new();
    view.get_many(&keys, &mut values);
    Some(values)
}

/// Gathers one directory's stale files into hashing tasks: a few small files, or one large one.
struct Batcher<'d, 'env, 's, 'q> {
    handle: &'d Arc<OwnedFd>,
    /// Where the tasks put their results, made when the first is queued.
    hashing: Option<Arc<Mutex<Vec<HashedBatch>>>>,
    run: &'env Run<'env>,
    spawner: &'s Spawner<'q, 'env>,
    batch: Vec<ToHash>,
    bytes: u64,
}

impl<'d, 'env, 's, 'q> Batcher<'d, 'env, 's, 'q> {
    fn new(handle: &'d Arc<OwnedFd>, run: &'env Run<'env>, spawner: &'s Spawner<'q, 'env>) -> Self {
        Batcher {
            handle,
            hashing: None,
            run,
            spawner,
            batch: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, file: ToHash) {
        // A file without a stamp has an unknown size: count it as a large one.
        self.bytes += file
            .stamp
            .map_or(BATCH_BYTES / UNSTAMPED_PER_BATCH, |s| s.size);
        self.batch.push(file);
        if self.batch.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// Where the directory's hashing results go.
    fn results(&mut self) -> &Arc<Mutex<Vec<HashedBatch>>> {
        self.hashing.get_or_insert_with(Default::default)
    }

    /// Queues the files gathered so far as one task.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        let hashing = self.results().clone();
        let (handle, run) = (self.handle.clone(), self.run);
        self.spawner.spawn(Box::new(move || {
            let hashed = run.hash_batch(&handle, batch);
            hashing.lock().push(hashed);
        }));
    }
}

/// Takes what the hashing tasks of one directory (at `dir_path` relative to `root`) returned
/// into its file states and new values; a file that could not be read goes to `errors`.
/// Returns how many files were hashed.
fn take_in_hashed(
    run: &Run<'_>,
    root: &Path,
    dir: &mut DirRun,
    dir_path: &[u8],
    errors: &mut Vec<PathError>,
) -> u64 {
    let mut hashed = 0;
    let Some(hashing) = dir.hashing.take() else {
        return 0;
    };
    let batches = std::mem::take(&mut *hashing.lock());
    let mut failed = Vec::new();
    for batch in batches {
        let offset = dir.changes.values.len() as u32;
        dir.changes.values.extend_from_slice(&batch.values);
        for (i, result) in batch.results {
            let state = &mut dir.files[i as usize];
            *state = FileState::Absent;
            match result {
                Ok(None) => {}
                Ok(Some((stamp, sha256, range))) => {
                    *state = FileState::Hashed(sha256);
                    dir.lines += 1;
                    if !stamp.is_racy(run.taken_at, run.options.racy_margin) {
                        dir.uncovered_keepable += 1;
                    }
                    if let Some((_, kind)) = dir.listing.entries.get_mut(i as usize) {
                        *kind = Listed::File(Some(stamp));
                    }
                    hashed += 1;
                    if let Some(range) = range {
                        let range = range.start + offset..range.end + offset;
                        dir.changes.new_values.push((i, range));
                    }
                }
                Err(source) => failed.push((i, source)),
            }
        }
    }
    dir.changes.new_values.sort_unstable_by_key(|(i, _)| *i);
    if failed.is_empty() {
        return hashed;
    }
    let dir_path = root.join(OsStr::from_bytes(dir_path));
    let listing = &dir.listing;
    for (i, source) in failed {
        let name = listing.name(&listing.entries[i as usize].0);
        let path = dir_path.join(OsStr::from_bytes(name));
        errors.push(PathError { path, source });
    }
    hashed
}

/// Encodes the listing to store of a directory if it needs one, with its files' stamps and
/// hashes (the per-directory stamp index that lets the next run answer an unchanged file by a
/// sequential compare): a directory read this run, or one where at least a quarter of the files
/// have a hash its cached listing did not hold although it could (hashed this run, or answered
/// by its own entry, under a stamp that is not racy); the other files it no longer answers are
/// answered by their own entries. So a warm run stores nothing, and a run after a change stores
/// the listings of the directories it changed much only.
fn index_changes(dir: &mut DirRun, taken_at: SystemTime, racy_margin: Duration) {
    {
        let files = || {
            (dir.listing.entries.iter())
                .filter(|(_, kind)| matches!(kind, Listed::File(_)))
                .count()
        };
        // An unread directory's listing is stored again only once a quarter of its files are
        // answered by their own entries: a few files changed in a large directory would
        // otherwise rewrite its whole listing on every partial run (and a write past the delta
        // limit rewrites the whole shard).
        let stale = dir.uncovered_keepable;
        if !dir.storable || (!dir.read && (stale == 0 || stale * 4 < files())) {
            return;
        }
        let value = {
            let dir = &*dir;
            let keepable = |i: usize| -> Option<(&Stamp, &[u8; 32])> {
                let (_, Listed::File(Some(stamp))) = dir.listing.entries.get(i)? else {
                    return None;
                };
                let sha256 = match dir.files.get(i)? {
                    FileState::Cached(sha256) | FileState::Hashed(sha256) => sha256,
                    FileState::Absent | FileState::Stale => return None,
                };
                (!stamp.is_racy(taken_at, racy_margin)).then_some((stamp, sha256))
            };
            match &dir.unfiltered {
                None => dir.listing.encode_with_hashes(&dir.stamp, keepable),
                Some(whole) => {
                    // The kept entries are a subsequence of the whole listing, with the same
                    // name ranges: map each entry of the whole to its kept one.
                    let mut kept = dir
                        .listing
                        .entries
                        .iter()
                        .map(|(range, _)| range)
                        .peekable();
                    let mut index = 0;
                    let to_kept: Vec<Option<usize>> = whole
                        .entries
                        .iter()
                        .map(|(range, _)| {
                            kept.next_if(|k| *k == range).map(|_| {
                                index += 1;
                                index - 1
                            })
                        })
                        .collect();
                    whole.encode_with_hashes(&dir.stamp, |j| keepable(to_kept.get(j).copied()??))
                }
            }
        };
        dir.changes.new_listing = Some(value);
    }
}

/// Writes the tree's changes to the cache, if any: nothing when no entry changed and nothing
/// vanished; a merge of the changes (which a small change turns into a small write) when only
/// entries changed or were added; the whole cache rewritten without the entries of files and
/// directories that are gone otherwise (the others keep their value).
///
/// `manifest` holds every directory in manifest order, `changes` what changed in some of them
/// (by number), and `still_there` how many of the cache's entries the run found again.
fn persist(
    run: &Run<'_>,
    shard: &Shard,
    manifest: &[ManifestDir],
    changes: &[(usize, DirChanges)],
    still_there: usize,
) -> Result<WriteOutcome> {
    let view = run.view;
    let vanished = still_there != view.len();
    if !vanished && changes.is_empty() {
        return Ok(WriteOutcome::Unchanged);
    }
    let mode = if vanished {
        BulkMode::Replace
    } else {
        BulkMode::Merge
    };
    let keep_others = vanished;
    let changes_of = |d: usize| {
        let at = changes.binary_search_by_key(&d, |(at, _)| *at).ok()?;
        Some(&changes[at].1)
    };
    let dir_keys = dir_keys(manifest);
    let mut writer = shard.bulk_writer(mode)?;
    let mut added = Ok(());
    let mut key = Vec::new();
    let mut rebuilt = Vec::new();
    in_manifest_order(
        manifest,
        |dir| (&dir.listing, &dir.subdirs),
        |d, entries| {
            let (Some(listed), Some(dir_key)) = (manifest.get(d), dir_keys.get(d)) else {
                return;
            };
            let changed = changes_of(d);
            for i in entries {
                if added.is_err() {
                    return;
                }
                if listed.files[i].sha256().is_none() {
                    continue;
                }
                let name = listed.listing.name(&listed.listing.entries[i].0);
                file_key(&mut key, dir_key, name);
                let value = match changed.and_then(|changed| changed.new_value(i)) {
                    Some(value) => Some(value),
                    None if keep_others => view.get(&key).or_else(|| {
                        // Answered by its directory's cached listing, whose record holds all
                        // the entry would: write the entry again, so that the count of entries
                        // still holds next run.
                        let sha256 = listed.files.get(i)?.sha256()?;
                        let (_, Listed::File(Some(stamp))) = listed.listing.entries.get(i)? else {
                            return None;
                        };
                        encode_sha256_entry(
                            &mut rebuilt,
                            stamp,
                            sha256,
                            run.taken_at,
                            run.options.racy_margin,
                            run.hours,
                        );
                        Some(rebuilt.as_slice())
                    }),
                    None => None,
                };
                if let Some(value) = value {
                    added = writer.add(&key, value);
                }
            }
        },
    );
    added?;
    for (d, dir_key) in dir_keys.iter().enumerate() {
        listing_key(&mut key, dir_key);
        let new_listing = changes_of(d).and_then(|changed| changed.new_listing.as_deref());
        let value = match new_listing {
            Some(listing) => Some(listing),
            None if keep_others => view.get(&key),
            None => None,
        };
        if let Some(value) = value {
            writer.add(&key, value)?;
        }
    }
    writer.commit()
}

/// The cache key of each directory of `manifest` (see `listing::dir_key`): its path relative
/// to the root while that is at most 255 bytes long, a short hash otherwise. Worked out again
/// from the names, only when the cache is written (no directory keeps its key meanwhile).
fn dir_keys(manifest: &[ManifestDir]) -> Vec<Vec<u8>> {
    // Each directory's key and the length of its path; a directory comes after its parent.
    let mut keys: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); manifest.len()];
    for (d, dir) in manifest.iter().enumerate() {
        for &(entry, child) in &dir.subdirs {
            let Some((range, _)) = dir.listing.entries.get(entry as usize) else {
                continue;
            };
            let name = dir.listing.name(range);
            let (parent_key, parent_len) = &keys[d];
            let len = parent_len + usize::from(*parent_len > 0) + name.len();
            let key = dir_key(parent_key, name, len).unwrap_or_else(|| {
                // A path of at most 255 bytes: so is its parent's, which is its key.
                let mut path = Vec::with_capacity(len);
                join_rel(&mut path, parent_key, name);
                path
            });
            if let Some(slot) = keys.get_mut(child as usize) {
                *slot = (key, len);
            }
        }
    }
    keys.into_iter().map(|(key, _)| key).collect()
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

    /// The `PathInputError` an error carries, and the path it names.
    fn input_error(error: &Error) -> (&PathInputError, &Path) {
        let Error::Io { path, source, .. } = error else {
            panic!("not an Error::Io: {error:?}");
        };
        let typed = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<PathInputError>());
        (typed.expect("a PathInputError"), path)
    }

    #[test]
    fn refused_inputs_are_typed_errors_that_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let file = std::fs::canonicalize(file).unwrap();
        let options = HashTreeOptions::default().shard(tmp.path().join("tree.shard"));
        let error = hash_tree(&file, &options).unwrap_err();
        let (typed, path) = input_error(&error);
        assert!(matches!(typed, PathInputError::NotADirectory), "{typed:?}");
        assert_eq!(path, file);
        assert!(error.to_string().contains("not a directory"), "{error}");

        // A shard of another producer is not taken for a tree cache.
        let foreign = tmp.path().join("foreign.shard");
        let shard = Shard::open_with(&foreign, Options::new().producer("other")).unwrap();
        shard.put_one(b"k", b"v").unwrap();
        let error = hash_tree(tmp.path(), &HashTreeOptions::default().shard(&foreign)).unwrap_err();
        let (typed, path) = input_error(&error);
        assert!(
            matches!(typed, PathInputError::NotATreeCache { producer } if producer == "other"),
            "{typed:?}"
        );
        assert_eq!(path, foreign);

        let cache = super::super::TreeCache::open(
            tmp.path(),
            Some(&tmp.path().join("t.shard")),
            Options::new(),
        )
        .unwrap();
        let error = cache.list(Path::new("../etc")).unwrap_err();
        let (typed, path) = input_error(&error);
        assert!(matches!(typed, PathInputError::NotRelative), "{typed:?}");
        assert_eq!(path, Path::new("../etc"));
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
