//! `hash-tree`: a `sha256sum`-compatible manifest of a directory that re-hashes only what changed.
//!
//! The cache shard holds one [`PathCache`](super::PathCache) entry per regular file, keyed by its
//! path relative to the root, with a `sha256` dimension. A run walks the tree in parallel, takes
//! each file's stamp, answers unchanged files from the shard without reading them, hashes the
//! rest in parallel (streaming, a fixed buffer per thread), and rewrites the shard only if an
//! entry changed or a file disappeared.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::cache::{PathEntry, encode_entry};
use super::stamp::{DEFAULT_RACY_MARGIN, Stamp};
use super::walk::{Excluded, Listed, Listing, join_rel, walk};
use crate::{Error, Health, Options, Result, Shard};

/// Producer string of hash-tree shards.
const PRODUCER: &str = "warmshard hash-tree 1";
/// The dimension holding a file's SHA-256.
const DIMENSION: &str = "sha256";
/// Read buffer per hashing thread: memory stays flat whatever the file size.
const READ_BUFFER: usize = 256 * 1024;

/// Settings for [`hash_tree`].
pub struct HashTreeOptions {
    /// Cache shard to use; `None` means one per canonical root under the user cache directory
    /// ([`shard_path_for_root`]).
    pub shard: Option<PathBuf>,
    /// Worker threads for walking and hashing (default: all cores).
    pub threads: usize,
    /// Margin of the racy-timestamp rule.
    pub racy_margin: Duration,
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
    fn push(&mut self, path: &[u8], sha256: [u8; 32]) {
        self.paths.extend_from_slice(path);
        self.ends.push(self.paths.len());
        self.hashes.push(sha256);
    }

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
        let escape = self.path.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 64];
    for (pair, &b) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
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

/// One listed directory with, per entry, the hash known from the cache (files only) and the
/// new cache value of files hashed this run.
struct DirResult {
    listing: Listing,
    known: Vec<Option<[u8; 32]>>,
    fresh: Vec<Option<Vec<u8>>>,
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
    let report_progress = |files: u64, bytes: u64| {
        if let Some(progress) = &options.progress {
            progress(files, bytes);
        }
    };
    let visit = |rel: &[u8], listing: Listing| {
        // All keys of the directory, looked up in one batch.
        let mut key_bytes = Vec::new();
        let mut key_ends = Vec::with_capacity(listing.entries.len());
        let mut key = Vec::new();
        for (name, kind) in &listing.entries {
            if let Listed::File(_) = kind {
                join_rel(&mut key, rel, listing.name(name));
                key_bytes.extend_from_slice(&key);
            }
            key_ends.push(key_bytes.len());
        }
        let mut keys = Vec::with_capacity(listing.entries.len());
        let mut start = 0;
        for (end, (_, kind)) in key_ends.iter().zip(&listing.entries) {
            if let Listed::File(_) = kind {
                keys.push(&key_bytes[start..*end]);
            }
            start = *end;
        }
        let mut values = Vec::new();
        view.get_many(&keys, &mut values);
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
        let n = seen.fetch_add(listing.entries.len() as u64, Ordering::Relaxed);
        report_progress(n + listing.entries.len() as u64, 0);
        DirResult {
            fresh: Vec::new(),
            known,
            listing,
        }
    };
    let excluded = cache_files(&shard);
    let (mut dirs, walk_errors) = walk(&root, options.threads, &excluded, &visit);
    let mut errors: Vec<String> = walk_errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path.display(), e.error))
        .collect();

    // Hash what the cache could not answer.
    let mut stale = Vec::new();
    for (d, (rel, dir)) in dirs.iter().enumerate() {
        for (i, (name, kind)) in dir.listing.entries.iter().enumerate() {
            if matches!(kind, Listed::File(_)) && dir.known[i].is_none() {
                let mut path = Vec::new();
                join_rel(&mut path, rel, dir.listing.name(name));
                stale.push((d, i, path));
            }
        }
    }
    let bytes_hashed = AtomicU64::new(0);
    let hashed = hash_all(
        &root,
        &stale,
        options,
        taken_at,
        &bytes_hashed,
        &report_progress,
    );
    let mut hashed_ok = 0u64;
    let mut changed = false;
    for ((d, i, path), result) in stale.iter().zip(hashed) {
        match result {
            Ok((stamp, racy, sha256)) => {
                let value = encode_entry(&stamp, racy, &[(DIMENSION, &sha256)]);
                changed |= view.get(path) != Some(value.as_slice());
                let dir = &mut dirs[*d].1;
                dir.known[*i] = Some(sha256);
                dir.fresh.resize(dir.listing.entries.len(), None);
                dir.fresh[*i] = Some(value);
                hashed_ok += 1;
            }
            Err(e) => errors.push(e),
        }
    }

    let manifest = assemble(&dirs);
    // Rewrite only if an entry changed or an old entry has no file any more.
    let updates: Vec<(Vec<u8>, &[u8])> = ordered_values(&dirs)
        .filter_map(|(path, fresh)| Some((path, fresh?.as_slice())))
        .collect();
    let new_keys = updates
        .iter()
        .filter(|(k, _)| view.get(k).is_none())
        .count();
    let vanished = view.len() + new_keys != manifest.len();
    let mut shard_written = false;
    if vanished {
        // Files disappeared: the whole cache is rewritten without them. Files hashed this run
        // get their new value; the others keep their old one.
        let entries = ordered_values(&dirs).filter_map(|(path, fresh)| {
            let value: &[u8] = match fresh {
                Some(value) => value,
                None => view.get(&path)?,
            };
            Some((path, value))
        });
        let outcome = shard.replace_all(entries)?;
        shard_written = matches!(outcome, crate::WriteOutcome::Committed { .. });
    } else if changed {
        // Only changes and additions: a merge, which a small change turns into a small write.
        let outcome = shard.merge_in(updates)?;
        shard_written = matches!(outcome, crate::WriteOutcome::Committed { .. });
    }
    Ok(HashTreeReport {
        files: manifest.len() as u64,
        hashed: hashed_ok,
        bytes_hashed: bytes_hashed.into_inner(),
        elapsed: started.elapsed(),
        errors,
        shard_path,
        shard_written,
        manifest,
    })
}

/// Depth-first traversal of the listed directories in manifest order: calls `f(path, dir,
/// entry index)` for every file with a known hash.
fn for_each_file<'d>(
    dirs: &'d [(Vec<u8>, DirResult)],
    mut f: impl FnMut(&[u8], &'d DirResult, usize),
) {
    let by_rel: HashMap<&[u8], usize> = dirs
        .iter()
        .enumerate()
        .map(|(d, (rel, _))| (rel.as_slice(), d))
        .collect();
    let Some(&root) = by_rel.get(&b""[..]) else {
        return;
    };
    let mut stack = vec![(root, 0usize)];
    let mut path = Vec::new();
    while let Some((d, i)) = stack.pop() {
        let (rel, dir) = &dirs[d];
        let Some((name, kind)) = dir.listing.entries.get(i) else {
            continue;
        };
        stack.push((d, i + 1));
        join_rel(&mut path, rel, dir.listing.name(name));
        match kind {
            Listed::File(_) if dir.known[i].is_some() => f(&path, dir, i),
            Listed::File(_) => {}
            Listed::Dir => {
                if let Some(&child) = by_rel.get(path.as_slice()) {
                    stack.push((child, 0));
                }
            }
        }
    }
}

fn assemble(dirs: &[(Vec<u8>, DirResult)]) -> Manifest {
    let mut manifest = Manifest::default();
    for_each_file(dirs, |path, dir, i| {
        if let Some(sha256) = dir.known[i] {
            manifest.push(path, sha256);
        }
    });
    manifest
}

/// Every manifest path with its value hashed this run (if any), in manifest order.
fn ordered_values(
    dirs: &[(Vec<u8>, DirResult)],
) -> impl Iterator<Item = (Vec<u8>, Option<&Vec<u8>>)> {
    let mut out = Vec::new();
    for_each_file(dirs, |path, dir, i| {
        out.push((path.to_vec(), dir.fresh.get(i).and_then(Option::as_ref)));
    });
    out.into_iter()
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

type HashResult = std::result::Result<(Stamp, bool, [u8; 32]), String>;

fn hash_all(
    root: &Path,
    stale: &[(usize, usize, Vec<u8>)],
    options: &HashTreeOptions,
    taken_at: SystemTime,
    bytes_hashed: &AtomicU64,
    report_progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<HashResult> {
    let next = AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(Vec::with_capacity(stale.len()));
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1).min(stale.len()) {
            scope.spawn(|| {
                let mut buffer = vec![0u8; READ_BUFFER];
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, _, path)) = stale.get(i) else {
                        break;
                    };
                    let file = root.join(OsStr::from_bytes(path));
                    let result = hash_file(&file, &mut buffer, bytes_hashed)
                        .map(|(stamp, sha)| {
                            (stamp, stamp.is_racy(taken_at, options.racy_margin), sha)
                        })
                        .map_err(|e| format!("{}: {e}", file.display()));
                    if i % 256 == 255 {
                        report_progress(0, bytes_hashed.load(Ordering::Relaxed));
                    }
                    done.push((i, result));
                }
                results.lock().append(&mut done);
            });
        }
    });
    let mut results = results.into_inner();
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Hashes one file, streaming. Returns the stamp the content belongs to: the descriptor's stamp
/// taken before reading (the caller applies the racy rule), or one that can never match again if
/// the file changed while it was read.
fn hash_file(
    path: &Path,
    buffer: &mut [u8],
    bytes_hashed: &AtomicU64,
) -> std::io::Result<(Stamp, [u8; 32])> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    let before = Stamp::from_metadata(&file.metadata()?);
    if !before.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    let mut hasher = Sha256::new();
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        bytes_hashed.fetch_add(n as u64, Ordering::Relaxed);
    }
    let after = Stamp::from_metadata(&file.metadata()?);
    let mut stamp = before;
    if after != before {
        // Changed while being read: store an entry that can never match.
        stamp.mtime_ns = i64::MAX;
    }
    Ok((stamp, hasher.finalize().into()))
}
