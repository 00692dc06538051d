//! `hash-tree`: a `sha256sum`-compatible manifest of a directory that re-hashes only what changed.
//!
//! The cache shard holds one [`PathCache`](super::PathCache) entry per regular file, keyed by its
//! path relative to the root, with a `sha256` dimension. A run walks the tree in parallel, takes
//! each file's stamp, answers unchanged files from the shard without reading them, hashes the
//! rest in parallel (streaming, a fixed buffer per thread), and rewrites the shard only if an
//! entry changed or a file disappeared.

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
use super::walk::walk;
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

/// One line of the manifest: a file's path relative to the root and its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLine {
    /// Path relative to the root, `/`-separated, as bytes (names need not be UTF-8).
    pub path: Vec<u8>,
    /// SHA-256 of the file's content.
    pub sha256: [u8; 32],
}

impl ManifestLine {
    /// Appends the line as GNU `sha256sum` prints it: `<hex>  <name>\n`, and when the name holds
    /// a backslash, newline or carriage return, a leading `\` with those escaped as `\\`, `\n`,
    /// `\r`.
    pub fn write_sha256sum(&self, out: &mut Vec<u8>) {
        let escape = self.path.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
        if escape {
            out.push(b'\\');
        }
        push_hex(out, &self.sha256);
        out.extend_from_slice(b"  ");
        if escape {
            for &b in &self.path {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        } else {
            out.extend_from_slice(&self.path);
        }
        out.push(b'\n');
    }

    /// The SHA-256 as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut out = Vec::with_capacity(64);
        push_hex(&mut out, &self.sha256);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// What a [`hash_tree`] run produced and did.
#[derive(Debug)]
pub struct HashTreeReport {
    /// The manifest, sorted by path bytes.
    pub lines: Vec<ManifestLine>,
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
    let digest = Sha256::digest(canonical_root.as_os_str().as_bytes());
    let mut name = Vec::with_capacity(70);
    push_hex(&mut name, &digest);
    name.extend_from_slice(b".shard");
    Ok(crate::default_dir()?
        .join("trees")
        .join(OsStr::from_bytes(&name)))
}

enum Walked {
    Known { path: Vec<u8>, sha256: [u8; 32] },
    Stale { path: Vec<u8> },
}

struct Hashed {
    path: Vec<u8>,
    result: std::result::Result<(Stamp, bool, [u8; 32]), String>,
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
    let shard = Shard::open_with(
        &shard_path,
        options.shard_options.clone().producer(PRODUCER),
    )?;
    let view = shard.snapshot();
    if options.shard.is_some()
        && let Health::ProducerMismatch { found, .. } = view.health()
    {
        return Err(Error::InvalidInput(format!(
            "{} holds entries of {found:?}, not a hash-tree cache; pick another --shard",
            shard_path.display()
        )));
    }

    let exclude = cache_files_filter(&shard);
    let seen = AtomicU64::new(0);
    let report_progress = |files: u64, bytes: u64| {
        if let Some(progress) = &options.progress {
            progress(files, bytes);
        }
    };
    let visit = |path: Vec<u8>, stamp: Stamp| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        if n % 4096 == 4095 {
            report_progress(n + 1, 0);
        }
        let known = view
            .get(&path)
            .and_then(PathEntry::decode)
            .and_then(|e| e.valid_for(&stamp, DIMENSION))
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        match known {
            Some(sha256) => Walked::Known { path, sha256 },
            None => Walked::Stale { path },
        }
    };
    let (walked, walk_errors) = walk(&root, options.threads, &exclude, &visit);
    let mut errors: Vec<String> = walk_errors
        .into_iter()
        .map(|e| format!("{}: {}", e.path.display(), e.error))
        .collect();

    let mut lines = Vec::with_capacity(walked.len());
    let mut stale = Vec::new();
    for item in walked {
        match item {
            Walked::Known { path, sha256 } => lines.push(ManifestLine { path, sha256 }),
            Walked::Stale { path } => stale.push(path),
        }
    }
    let known = lines.len();
    let bytes_hashed = AtomicU64::new(0);
    let hashed = hash_all(
        &root,
        &stale,
        options,
        taken_at,
        &bytes_hashed,
        &report_progress,
    );

    let mut updates = Vec::with_capacity(hashed.len());
    for item in hashed {
        match item.result {
            Ok((stamp, racy, sha256)) => {
                let value = encode_entry(&stamp, racy, &[(DIMENSION, &sha256)]);
                lines.push(ManifestLine {
                    path: item.path.clone(),
                    sha256,
                });
                updates.push((item.path, value));
            }
            Err(e) => errors.push(e),
        }
    }
    let hashed_ok = updates.len() as u64;

    // Rewrite only if an entry changed or an old entry has no file any more.
    let changed = updates
        .iter()
        .any(|(k, v)| view.get(k) != Some(v.as_slice()))
        || view.len() != known + updates.len();
    let mut shard_written = false;
    if changed {
        // Unchanged entries are copied from the old shard, then the re-hashed ones are added.
        let unchanged = lines[..known]
            .iter()
            .filter_map(|line| Some((line.path.as_slice(), view.get(&line.path)?)));
        let updated = updates.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        let outcome = shard.replace_all(unchanged.chain(updated))?;
        shard_written = matches!(outcome, crate::WriteOutcome::Committed { .. });
    }
    lines.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(HashTreeReport {
        files: lines.len() as u64,
        hashed: hashed_ok,
        bytes_hashed: bytes_hashed.into_inner(),
        elapsed: started.elapsed(),
        errors,
        shard_path,
        shard_written,
        lines,
    })
}

/// Rejects the cache's own files (shard, lock, temp files) when they sit inside the tree.
fn cache_files_filter(shard: &Shard) -> impl Fn(&Path, &OsStr) -> bool + Sync + use<> {
    let path = shard.path();
    let dir = crate::map::parent_dir(path);
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let mut lock = name.clone();
    lock.extend_from_slice(b".lock");
    let mut temp = b".".to_vec();
    temp.extend_from_slice(&name);
    temp.push(b'.');
    move |candidate_dir: &Path, candidate: &OsStr| {
        let c = candidate.as_bytes();
        (c == name.as_slice() || c == lock.as_slice() || c.starts_with(&temp))
            && candidate_dir == dir
    }
}

fn hash_all(
    root: &Path,
    stale: &[Vec<u8>],
    options: &HashTreeOptions,
    taken_at: SystemTime,
    bytes_hashed: &AtomicU64,
    report_progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<Hashed> {
    let next = AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(Vec::with_capacity(stale.len()));
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1).min(stale.len().max(1)) {
            scope.spawn(|| {
                let mut buffer = vec![0u8; READ_BUFFER];
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = stale.get(i) else { break };
                    let file = root.join(OsStr::from_bytes(path));
                    let result = hash_file(&file, &mut buffer, bytes_hashed)
                        .map(|(stamp, sha)| {
                            (stamp, stamp.is_racy(taken_at, options.racy_margin), sha)
                        })
                        .map_err(|e| format!("{}: {e}", file.display()));
                    if i % 256 == 255 {
                        report_progress(0, bytes_hashed.load(Ordering::Relaxed));
                    }
                    done.push(Hashed {
                        path: path.clone(),
                        result,
                    });
                }
                results.lock().append(&mut done);
            });
        }
    });
    results.into_inner()
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
