//! [`PathCache`]: results per file, valid only while the file's [`Stamp`] is unchanged.
//!
//! Each shard entry is keyed by the path's bytes; its value is encoded as:
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 44   | stamp: dev, ino, size, mtime ns, ctime ns (u64/i64 LE), mode (u32 LE) |
//! | 44     | 4    | flags, u32 LE: bit 0 = racy (never trusted as a hit); bits 8..32 = hours since the Unix epoch when the entry was written (0: unknown, an entry of an older version) |
//! | 48     | ..   | dimensions, repeated: name length (u8), name, payload length (u32 LE), payload |

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicU64, Ordering};

use super::prune::PruneOptions;
use super::stamp::{DEFAULT_RACY_MARGIN, STAMP_LEN, Stamp};
use crate::{Error, Options, Result, Shard, Snapshot, WriteOutcome};

const FLAGS_LEN: usize = 4;
const RACY: u32 = 1;
/// The flags' bits above this one hold the hour the entry was written.
const RECORDED_SHIFT: u32 = 8;

/// The hour of `at` as the flags hold it (saturating: 24 bits of hours last until the year 3883).
pub(crate) fn recorded_hours(at: SystemTime) -> u32 {
    let hours = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600);
    hours.min(u64::from(u32::MAX >> RECORDED_SHIFT)) as u32
}

/// Encodes an entry value: stamp, racy flag, the hour it is written and `(name, payload)`
/// dimensions.
pub(crate) fn encode_entry(
    stamp: &Stamp,
    racy: bool,
    recorded: SystemTime,
    dimensions: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_entry_into(&mut out, stamp, racy, recorded_hours(recorded), dimensions);
    out
}

/// [`encode_entry`] into `out`, which it clears first (so a caller can reuse one buffer), with
/// the hour already computed by [`recorded_hours`].
pub(crate) fn encode_entry_into(
    out: &mut Vec<u8>,
    stamp: &Stamp,
    racy: bool,
    recorded_hours: u32,
    dimensions: &[(&str, &[u8])],
) {
    let size: usize = dimensions.iter().map(|(n, p)| 5 + n.len() + p.len()).sum();
    out.clear();
    out.reserve(STAMP_LEN + FLAGS_LEN + size);
    stamp.encode(out);
    let flags = (if racy { RACY } else { 0 }) | (recorded_hours << RECORDED_SHIFT);
    out.extend_from_slice(&flags.to_le_bytes());
    for (name, payload) in dimensions {
        let name = &name.as_bytes()[..name.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
}

/// One decoded entry of a [`PathCache`], borrowed from the shard's mapping.
#[derive(Clone, Copy, Debug)]
pub struct PathEntry<'a> {
    /// The file's stamp when the results were computed.
    pub stamp: Stamp,
    /// True if the stamp was racy when recorded: never trusted as a hit.
    pub racy: bool,
    /// When the entry was written, to the hour (`None` for an entry written by a version that
    /// did not record it). Pruning by age and by size goes by it.
    pub recorded: Option<SystemTime>,
    dimensions: &'a [u8],
}

impl<'a> PathEntry<'a> {
    /// Decodes an entry value; `None` if it is malformed.
    pub fn decode(value: &'a [u8]) -> Option<PathEntry<'a>> {
        let stamp = Stamp::decode(value)?;
        let flags = u32::from_le_bytes(value.get(STAMP_LEN..STAMP_LEN + 4)?.try_into().ok()?);
        let hours = flags >> RECORDED_SHIFT;
        Some(PathEntry {
            stamp,
            racy: flags & RACY != 0,
            recorded: (hours != 0)
                .then(|| std::time::UNIX_EPOCH + Duration::from_secs(u64::from(hours) * 3600)),
            dimensions: &value[STAMP_LEN + FLAGS_LEN..],
        })
    }

    /// Every `(name, payload)` dimension stored in the entry.
    pub fn dimensions(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let mut rest = self.dimensions;
        std::iter::from_fn(move || {
            let (&name_len, tail) = rest.split_first()?;
            let name = tail.get(..name_len as usize)?;
            let tail = &tail[name_len as usize..];
            let len = u32::from_le_bytes(tail.get(..4)?.try_into().ok()?) as usize;
            let payload = tail.get(4..4 + len)?;
            rest = &tail[4 + len..];
            Some((name, payload))
        })
    }

    /// The payload of dimension `name`, if stored.
    pub fn dimension(&self, name: &str) -> Option<&'a [u8]> {
        self.dimensions()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, p)| p)
    }

    /// The payload of `name` if the entry is trusted for `stamp`: not racy and stamps equal.
    pub fn valid_for(&self, stamp: &Stamp, name: &str) -> Option<&'a [u8]> {
        if self.racy || self.stamp != *stamp {
            return None;
        }
        self.dimension(name)
    }
}

/// A read view of a [`PathCache`]: a [`Snapshot`] that understands path entries.
#[derive(Clone, Debug)]
pub struct PathView {
    snapshot: Snapshot,
}

impl PathView {
    /// The decoded entry stored under `key` (the path's bytes), whatever its stamp.
    pub fn entry(&self, key: &[u8]) -> Option<PathEntry<'_>> {
        PathEntry::decode(self.snapshot.get(key)?)
    }

    /// The payload of `dimension` for `path`, only if the file's current `lstat` matches the
    /// stored stamp exactly and the entry is not racy. Zero-copy.
    pub fn lookup(&self, path: &Path, dimension: &str) -> Option<&[u8]> {
        let stamp = Stamp::lstat(path).ok()?;
        self.lookup_stamp(path.as_os_str().as_bytes(), &stamp, dimension)
    }

    /// Like [`lookup`](PathView::lookup) with a stamp the caller already took (e.g. during a
    /// directory walk) and an explicit key.
    pub fn lookup_stamp(&self, key: &[u8], stamp: &Stamp, dimension: &str) -> Option<&[u8]> {
        self.entry(key)?.valid_for(stamp, dimension)
    }

    /// The underlying shard snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// Per-file results kept in a shard, keyed by path, valid while the file is unchanged.
///
/// ```
/// # fn main() -> warmshard::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use warmshard::paths::PathCache;
/// let source = dir.path().join("module.py");
/// std::fs::write(&source, "print('hi')").unwrap();
/// let cache = PathCache::open(dir.path().join("bytecode.shard"), Default::default())?;
/// let compile = |src: &[u8]| src.iter().rev().copied().collect::<Vec<u8>>();
/// let first = cache.get_or_compute(&source, "bytecode", compile)?; // computes and stores
/// assert_eq!(first, b")'ih'(tnirp");
/// // Later calls answer from the shard while the file is unchanged. (A file written in the
/// // last few milliseconds is "racy" and recomputed until its timestamps settle: see `Stamp`.)
/// let again = cache.get_or_compute(&source, "bytecode", compile)?;
/// assert_eq!(again, first);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PathCache {
    shard: Shard,
    racy_margin: Duration,
    /// The size bound of [`PathCache::max_bytes`].
    max_bytes: Option<u64>,
    /// Entries dropped by writes to make room, since the cache was opened.
    evicted: AtomicU64,
}

impl PathCache {
    /// Opens (or prepares to create) the path cache stored in the shard at `path`.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<PathCache> {
        Ok(PathCache {
            shard: Shard::open_with(path, options)?,
            racy_margin: DEFAULT_RACY_MARGIN,
            max_bytes: None,
            evicted: AtomicU64::new(0),
        })
    }

    /// The path cache stored in an already open shard.
    pub fn from_shard(shard: Shard) -> PathCache {
        PathCache {
            shard,
            racy_margin: DEFAULT_RACY_MARGIN,
            max_bytes: None,
            evicted: AtomicU64::new(0),
        }
    }

    /// Bounds the cache to about `bytes` (keys, values and a per-entry estimate of the shard's
    /// own bytes). A write that would pass the bound first drops the entries written longest ago
    /// until the cache holds three quarters of it — a write never fails for lack of room — and
    /// [`evicted`](PathCache::evicted) counts them.
    ///
    /// Without it (the default), the bound is the shard's
    /// [`Options::max_size`](crate::Options::max_size) (4 GiB unless set), and a write that
    /// would pass *that* makes room the same way rather than fail: a startup cache is expected to
    /// forget, not to stop working, when full. Entries of files gone or changed never become
    /// hits again: [`prune`](PathCache::prune) drops them.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Entries dropped by this handle's writes to stay within the size bound.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Sets the margin of the racy-timestamp rule (see [`Stamp::is_racy`]).
    pub fn racy_margin(mut self, margin: Duration) -> Self {
        self.racy_margin = margin;
        self
    }

    /// The shard behind the cache.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// A read view of the cache as it is now.
    pub fn view(&self) -> PathView {
        PathView {
            snapshot: self.shard.snapshot(),
        }
    }

    /// Stores `dimensions` for `key`, computed from the file as it was when `stamp` was taken at
    /// `taken_at`. The entry is marked racy if the stamp is too recent to be trusted. Replaces
    /// every dimension previously stored under `key`.
    pub fn record(
        &self,
        key: &[u8],
        stamp: &Stamp,
        taken_at: SystemTime,
        dimensions: &[(&str, &[u8])],
    ) -> Result<WriteOutcome> {
        let racy = stamp.is_racy(taken_at, self.racy_margin);
        let value = encode_entry(stamp, racy, SystemTime::now(), dimensions);
        let bound = self.max_bytes.unwrap_or(self.shard.options().max_size);
        if let Some(max_bytes) = self.max_bytes {
            let view = self.shard.snapshot();
            let size = view.file_bytes().len() + view.delta_file_bytes().len();
            if (size + key.len() + value.len()) as u64 > max_bytes {
                return self.make_room(key, &value, bound);
            }
        }
        match self.shard.put_one(key, &value) {
            Err(Error::TooLarge { .. }) => self.make_room(key, &value, bound),
            written => written,
        }
    }

    /// Writes `key` after dropping the entries written longest ago until the cache holds three
    /// quarters of `bound`.
    fn make_room(&self, key: &[u8], value: &[u8], bound: u64) -> Result<WriteOutcome> {
        let options = PruneOptions {
            stale: false,
            max_age: None,
            max_bytes: Some(bound / 4 * 3),
        };
        let report = self.rewrite(
            &options,
            &Default::default(),
            Some((key, value)),
            std::time::Instant::now(),
        )?;
        self.evicted
            .fetch_add(report.for_size as u64, Ordering::Relaxed);
        Ok(report.outcome)
    }

    /// Returns the cached `dimension` of the file at `path`, or computes it from the file's
    /// content with `compute`, stores it (keeping the entry's other dimensions when the file is
    /// unchanged, racy ones included as long as the new entry is racy too) and returns it. The stamp is taken before the content is read, and a file that
    /// changes while being read is not cached.
    pub fn get_or_compute(
        &self,
        path: &Path,
        dimension: &str,
        compute: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        let key = path.as_os_str().as_bytes();
        let taken_at = SystemTime::now();
        let stamp = Stamp::lstat(path).map_err(|e| Error::io("reading metadata of", path, e))?;
        let view = self.view();
        if let Some(hit) = view.lookup_stamp(key, &stamp, dimension) {
            return Ok(hit.to_vec());
        }
        if !stamp.is_file() {
            let error = super::error::PathInputError::NotARegularFile;
            return Err(super::error::invalid_path("reading", path, error));
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        let mut content = Vec::with_capacity(stamp.size as usize);
        file.read_to_end(&mut content)
            .map_err(|e| Error::io("reading", path, e))?;
        let after = file
            .metadata()
            .map(|m| Stamp::from_metadata(&m))
            .map_err(|e| Error::io("reading metadata of", path, e))?;
        let result = compute(&content);
        if after != stamp {
            return Ok(result); // changed while read: the result is not cached
        }
        let mut dimensions: Vec<(&str, &[u8])> = Vec::new();
        // The other dimensions stay while they were computed from this same stamp. A racy one
        // stays only under a racy entry: it may predate a write within the stamp's clock tick,
        // so it must not become trusted along with a dimension computed once the stamp settled.
        let racy = stamp.is_racy(taken_at, self.racy_margin);
        let kept = view
            .entry(key)
            .filter(|e| e.stamp == stamp && (!e.racy || racy));
        if let Some(entry) = kept {
            for (name, payload) in entry.dimensions() {
                if name != dimension.as_bytes()
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    dimensions.push((name, payload));
                }
            }
        }
        dimensions.push((dimension, &result));
        self.record(key, &stamp, taken_at, &dimensions)?;
        Ok(result)
    }
}
