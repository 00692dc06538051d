//! `hash-tree`: a `sha256sum`-compatible manifest of a directory that re-hashes only what changed.
//!
//! The cache shard holds one [`PathCache`](super::PathCache) entry per regular file, keyed by its
//! path relative to the root, with a `sha256` dimension, and one cached listing per directory
//! (keyed by a NUL byte and the directory's path; see `listing.rs`). A run walks the tree in
//! parallel, reuses the listing of every directory whose stamp is unchanged instead of reading
//! it, takes each file's stamp, answers unchanged files from the shard without reading them, and
//! hashes the rest while the walk goes on: each directory queues its stale files as tasks (a few
//! small files or one large one each) for the same worker threads, which open them relative to
//! the directory's handle and stream them through a fixed buffer per thread. The shard is
//! rewritten only if an entry changed or a file or directory disappeared.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::cache::{PathEntry, encode_entry};
use super::listing::{Listed, Listing, listing_key};
use super::stamp::{DEFAULT_RACY_MARGIN, Stamp};
use super::walk::{Excluded, Spawner, VisitedDir, Visitor, join_rel, visit_fn, walk};
use crate::{Error, Health, Options, Result, Shard};

/// Producer string of hash-tree shards.
const PRODUCER: &str = "warmshard hash-tree 1";
/// The dimension holding a file's SHA-256.
const DIMENSION: &str = "sha256";
/// Length of each hashing thread's read buffer.
const READ_BUFFER_LEN: usize = 256 * 1024;

/// Settings for [`hash_tree`].
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
    pub progress: Option<Box<dyn Fn(u64, u64) + Sync>>,
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
        }
    }
}

/// The manifest of a tree: every regular file's path (relative to the root, `/`-separated,
/// sorted by bytes) and SHA-256, stored compactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    paths: Vec<u8>,
    ends: Vec<usize>,
    hashes: Vec<[u8; 32]>,
}

impl Manifest {
    /// Number of files.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when the tree has no regular file.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The lines in order.
    pub fn iter(&self) -> impl Iterator<Item = ManifestLine<'_>> {
        (0..self.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            ManifestLine {
                path: &self.paths[start..self.ends[i]],
                sha256: &self.hashes[i],
            }
        })
    }

    /// Appends the whole manifest as GNU `sha256sum` prints it.
    pub fn write_sha256sum(&self, out: &mut Vec<u8>) {
        out.reserve(self.paths.len() + self.len() * 68);
        for line in self.iter() {
            line.write_sha256sum(out);
        }
    }

    /// Writes the whole manifest as GNU `sha256sum` prints it to `out`, in chunks of about
    /// 64 KiB (no copy of the whole text in memory).
    pub fn write_sha256sum_to(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        const CHUNK: usize = 64 * 1024;
        let mut buffer = Vec::with_capacity(CHUNK + 4096);
        for line in self.iter() {
            line.write_sha256sum(&mut buffer);
            if buffer.len() >= CHUNK {
                out.write_all(&buffer)?;
                buffer.clear();
            }
        }
        out.write_all(&buffer)?;
        out.flush()
    }
}

/// One line of a [`Manifest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestLine<'a> {
    /// Path relative to the root, `/`-separated, as bytes (names need not be UTF-8).
    pub path: &'a [u8],
    /// SHA-256 of the file's content.
    pub sha256: &'a [u8; 32],
}

impl ManifestLine<'_> {
    /// Appends the line as GNU `sha256sum` prints it: `<hex>  <name>\n`, and when the name holds
    /// a backslash, newline or carriage return, a leading `\` with those escaped as `\\`, `\n`,
    /// `\r`.
    pub fn write_sha256sum(&self, out: &mut Vec<u8>) {
        // No early exit, so the scan vectorizes: names are short and almost never escaped.
        let escape = self.path.iter().fold(false, |found, &b| {
            found | (b == b'\\') | (b == b'\n') | (b == b'\r')
        });
        if escape {
            out.push(b'\\');
        }
        push_hex(out, self.sha256);
        out.extend_from_slice(b"  ");
        if escape {
            for &b in self.path {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        } else {
            out.extend_from_slice(self.path);
        }
        out.push(b'\n');
    }

    /// The SHA-256 as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut out = Vec::with_capacity(64);
        push_hex(&mut out, self.sha256);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    /// The two hex digits of every byte value.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [HEX[b >> 4], HEX[b & 15]];
            b += 1;
        }
        pairs
    };
    let mut text = [0u8; 64];
    for (pair, &b) in text.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
    out.extend_from_slice(&text);
}

/// What a [`hash_tree`] run produced and did.
#[derive(Debug)]
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
    pub errors: Vec<String>,
    /// The cache shard used.
    pub shard_path: PathBuf,
    /// Whether the cache shard was rewritten.
    pub shard_written: bool,
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
    fresh: Vec<Option<Vec<u8>>>,
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
}

type HashResult = std::result::Result<(Stamp, bool, [u8; 32]), String>;

/// Files of one directory hashed by one task: few small files, or one large one.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

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
    let cached = |rel: &[u8], stamp: &Stamp| {
        if !listing_cache {
            return None;
        }
        let mut key = Vec::with_capacity(rel.len() + 1);
        listing_key(&mut key, rel);
        Listing::decode(view.get(&key)?, stamp)
    };
    let racy_margin = options.racy_margin;
    let visit = visit_fn(|dir: VisitedDir<'_>, spawner: &Spawner<'_, '_>| {
        let listing = dir.listing;
        // All keys of the directory, looked up in one batch.
        let mut key_bytes =
            Vec::with_capacity(listing.names.len() + listing.entries.len() * (dir.rel.len() + 1));
        let mut key_ends = Vec::with_capacity(listing.entries.len());
        for (name, kind) in &listing.entries {
            if let Listed::File(_) = kind {
                if !dir.rel.is_empty() {
                    key_bytes.extend_from_slice(dir.rel);
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
        let mut values = values.into_iter();
        let known: Vec<Option<[u8; 32]>> = listing
            .entries
            .iter()
            .map(|(_, kind)| {
                let Listed::File(stamp) = kind else {
                    return None;
                };
                values
                    .next()
                    .flatten()
                    .and_then(PathEntry::decode)
                    .and_then(|e| e.valid_for(stamp, DIMENSION))
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
            })
            .collect();

        // A listing that was not read came from the cache: no need to look it up again.
        listing_key(&mut key, dir.rel);
        let cached_listing = !dir.read || view.get(&key).is_some();
        let fresh_listing = (listing_cache
            && dir.read
            && dir.cacheable
            && !dir.stamp.is_racy(taken_at, racy_margin))
        .then(|| listing.encode(&dir.stamp));

        // Hash what the cache could not answer, in tasks the walk's workers share.
        let hashed = Arc::new(Mutex::new(Vec::new()));
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let queue_batch = |batch: Vec<(usize, std::ffi::CString, Stamp)>| {
            let handle = dir.handle.clone();
            let hashed = hashed.clone();
            let (bytes_hashed, seen, report_progress) = (&bytes_hashed, &seen, &report_progress);
            spawner.spawn(Box::new(move || {
                let mut results = Vec::with_capacity(batch.len());
                READ_BUFFER.with_borrow_mut(|buffer| {
                    buffer.resize(READ_BUFFER_LEN, 0);
                    for (i, name, stamp) in batch {
                        let result = hash_file_at(&handle, &name, &stamp, buffer, bytes_hashed)
                            .map(|(stamp, sha)| (stamp, stamp.is_racy(taken_at, racy_margin), sha))
                            .map_err(|e| format!("{}: {e}", name.to_string_lossy()));
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
        for (i, (name, kind)) in listing.entries.iter().enumerate() {
            let Listed::File(stamp) = kind else { continue };
            if known[i].is_some() {
                continue;
            }
            let Ok(c_name) = std::ffi::CStr::from_bytes_with_nul(listing.name_with_nul(name))
            else {
                continue;
            };
            batch.push((i, c_name.to_owned(), *stamp));
            batch_bytes += stamp.size;
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
            known,
            fresh: Vec::new(),
            hashed,
            cached_files,
            cached_listing,
            fresh_listing,
            read: dir.read,
            listing,
        }
    });
    let excluded = cache_files(&shard);
    let visitor = Visitor {
        cached: &cached,
        visit: &visit,
    };
    let (mut dirs, walk_errors) = walk(&root, options.threads, &excluded, visitor);
    let mut errors: Vec<String> = walk_errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path.display(), e.error))
        .collect();

    // Take in what was hashed.
    let mut hashed_ok = 0u64;
    let mut changed = false;
    let mut path = Vec::new();
    for (rel, dir) in &mut dirs {
        let results = std::mem::take(&mut *dir.hashed.lock());
        if results.is_empty() {
            continue;
        }
        dir.fresh.resize(dir.listing.entries.len(), None);
        for (i, result) in results {
            match result {
                Ok((stamp, racy, sha256)) => {
                    let value = encode_entry(&stamp, racy, &[(DIMENSION, &sha256)]);
                    join_rel(&mut path, rel, dir.listing.name(&dir.listing.entries[i].0));
                    changed |= view.get(&path) != Some(value.as_slice());
                    dir.known[i] = Some(sha256);
                    dir.fresh[i] = Some(value);
                    hashed_ok += 1;
                }
                Err(e) => {
                    let dir_path = root.join(OsStr::from_bytes(rel));
                    errors.push(format!("{}/{e}", dir_path.display()));
                }
            }
        }
    }
    errors.sort();
    changed |= dirs.iter().any(|(_, dir)| dir.fresh_listing.is_some());

    let manifest = assemble(&dirs);
    // Rewrite only if an entry changed, or the cache holds an entry of a file or directory that
    // is gone.
    let still_there: usize = dirs
        .iter()
        .map(|(_, dir)| dir.cached_files + usize::from(dir.cached_listing))
        .sum();
    let vanished = still_there != view.len();
    let mut shard_written = false;
    if vanished {
        // The whole cache is rewritten without what is gone. Files hashed and directories read
        // this run get their new value; the others keep their old one.
        let entries = cache_entries(&dirs, |key, fresh| match fresh {
            Some(value) => Some(value),
            None => view.get(key),
        });
        let outcome = shard.replace_all(entries)?;
        shard_written = matches!(outcome, crate::WriteOutcome::Committed { .. });
    } else if changed {
        // Only changes and additions: a merge, which a small change turns into a small write.
        let outcome = shard.merge_in(cache_entries(&dirs, |_, fresh| fresh))?;
        shard_written = matches!(outcome, crate::WriteOutcome::Committed { .. });
    }
    Ok(HashTreeReport {
        files: manifest.len() as u64,
        hashed: hashed_ok,
        dirs: dirs.len() as u64,
        dirs_read: dirs.iter().filter(|(_, dir)| dir.read).count() as u64,
        bytes_hashed: bytes_hashed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        errors,
        shard_path,
        shard_written,
        manifest,
    })
}

/// Depth-first traversal of the listed directories in manifest order: calls `f(dir path, file
/// name, dir, entry index)` for every file with a known hash.
fn for_each_file<'d>(
    dirs: &'d [(Vec<u8>, DirResult)],
    mut f: impl FnMut(&'d [u8], &'d [u8], &'d DirResult, usize),
) {
    let by_rel: hashbrown::HashMap<&[u8], usize> = dirs
        .iter()
        .enumerate()
        .map(|(d, (rel, _))| (rel.as_slice(), d))
        .collect();
    let Some(&root) = by_rel.get(&b""[..]) else {
        return;
    };
    // (directory, next entry): the path from the root down to the directory being listed.
    let mut stack = vec![(root, 0usize)];
    let mut child_path = Vec::new();
    while let Some((d, start)) = stack.pop() {
        let (rel, dir) = &dirs[d];
        for (i, (range, kind)) in dir.listing.entries.iter().enumerate().skip(start) {
            let name = dir.listing.name(range);
            match kind {
                Listed::File(_) => {
                    if dir.known[i].is_some() {
                        f(rel, name, dir, i);
                    }
                }
                Listed::Dir => {
                    join_rel(&mut child_path, rel, name);
                    if let Some(&child) = by_rel.get(child_path.as_slice()) {
                        stack.push((d, i + 1));
                        stack.push((child, 0));
                        break;
                    }
                }
            }
        }
    }
}

fn assemble(dirs: &[(Vec<u8>, DirResult)]) -> Manifest {
    // Sized up front: growing these by doubling costs more than filling them.
    let (mut files, mut path_bytes) = (0, 0);
    for (rel, dir) in dirs {
        for ((name, _), known) in dir.listing.entries.iter().zip(&dir.known) {
            if known.is_some() {
                files += 1;
                path_bytes += rel.len() + 1 + name.len();
            }
        }
    }
    let mut manifest = Manifest {
        paths: Vec::with_capacity(path_bytes),
        ends: Vec::with_capacity(files),
        hashes: Vec::with_capacity(files),
    };
    for_each_file(dirs, |rel, name, dir, i| {
        if let Some(sha256) = dir.known[i] {
            if !rel.is_empty() {
                manifest.paths.extend_from_slice(rel);
                manifest.paths.push(b'/');
            }
            manifest.paths.extend_from_slice(name);
            manifest.ends.push(manifest.paths.len());
            manifest.hashes.push(sha256);
        }
    });
    manifest
}

/// The cache entries to write: every file and directory listing of the tree, with
/// `value(key, value computed this run)` deciding what to store (`None` leaves it out).
fn cache_entries<'v>(
    dirs: &'v [(Vec<u8>, DirResult)],
    value: impl Fn(&[u8], Option<&'v [u8]>) -> Option<&'v [u8]>,
) -> Vec<(Vec<u8>, &'v [u8])> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    for_each_file(dirs, |rel, name, dir, i| {
        let fresh = dir.fresh.get(i).and_then(Option::as_deref);
        join_rel(&mut path, rel, name);
        if let Some(v) = value(&path, fresh) {
            out.push((path.clone(), v));
        }
    });
    let mut key = Vec::new();
    for (rel, dir) in dirs {
        listing_key(&mut key, rel);
        if let Some(v) = value(&key, dir.fresh_listing.as_deref()) {
            out.push((key.clone(), v));
        }
    }
    out
}

/// The cache's own files (shard, lock, temp files), excluded when they sit inside the tree.
fn cache_files(shard: &Shard) -> Excluded {
    let path = shard.path();
    let dir = crate::map::parent_dir(path);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let mut lock = name.clone();
    lock.extend_from_slice(b".lock");
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(&name);
    prefix.push(b'.');
    Excluded {
        dir,
        names: vec![name, lock],
        prefix,
    }
}

/// Hashes one file of an open directory, streaming. `listed` is the stamp the walk took before
/// opening it, and the stamp the content is stored under: if the file changes during the read,
/// its next stamp differs from `listed`, or — within one clock tick — `listed` is racy and is
/// not trusted anyway (the caller applies the racy rule). So no stamp is taken after the read.
fn hash_file_at(
    dir: &OwnedFd,
    name: &std::ffi::CStr,
    listed: &Stamp,
    buffer: &mut [u8],
    bytes_hashed: &AtomicU64,
) -> std::io::Result<(Stamp, [u8; 32])> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = nix::fcntl::openat(dir, name, flags, Mode::empty())?;
    let mut file = std::fs::File::from(file);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut checked = false;
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
        if total == listed.size && n < buffer.len() {
            break;
        }
        if total > listed.size && !checked {
            // More than the walk saw: make sure this is still a regular file before reading on
            // (it could have been replaced by a device that never ends).
            if !Stamp::from_metadata(&file.metadata()?).is_file() {
                return Err(std::io::Error::other("no longer a regular file"));
            }
            checked = true;
        }
    }
    Ok((*listed, hasher.finalize().into()))
}
