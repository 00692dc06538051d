//! [`Snapshot`]: a validated, immutable read view of one shard file; lookups in place.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::{self, Record};
use crate::health::Health;
use crate::map::ShardFiles;

/// A validated read view of a shard, as it was when the snapshot was taken.
///
/// A snapshot keeps its file mapped: it stays valid and unchanged while held, even after another
/// process replaces the shard (writers rename a new file over the old one; the old inode lives
/// until the last mapping is dropped). Values returned by [`get`](Snapshot::get) point into the
/// mapping: no copy, no deserialization. Cloning is cheap (a reference count).
///
/// ```
/// # fn main() -> warmshard::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let shard = warmshard::Shard::open(dir.path().join("demo.shard"))?;
/// shard.put_one(b"greeting", b"hello")?;
/// let snap = shard.snapshot();
/// assert_eq!(snap.get(b"greeting"), Some(&b"hello"[..]));
/// assert_eq!(snap.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) files: Arc<ShardFiles>,
}

impl Snapshot {
    pub(crate) fn new(files: Arc<ShardFiles>) -> Snapshot {
        Snapshot { files }
    }

    #[inline]
    fn live<'a>(&self, record: Record<'a>) -> Option<Record<'a>> {
        let policy = &self.files.base.policy;
        if !policy.is_live(&record) {
            return None;
        }
        if policy.verify_values && format::value_checksum(record.value) != record.checksum {
            return None;
        }
        Some(record)
    }

    /// The value stored under `key`, in place in the mapping; `None` if absent, written under an
    /// older generation, or (with [`Options::verify_values`](crate::Options::verify_values))
    /// failing its checksum.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.live(self.files.find(key)?).map(|r| r.value)
    }

    /// [`get`](Snapshot::get) of a value about to be read as an rkyv archive whose root takes
    /// its last `root_len` bytes: the lookup loads the root's line early (see the slot's end
    /// hint in [`format`](mod@crate::format)).
    #[inline]
    pub(crate) fn get_archived(&self, key: &[u8], root_len: usize) -> Option<&[u8]> {
        self.live(self.files.find_archived(key, root_len)?)
            .map(|r| r.value)
    }

    /// Looks up many keys at once: `out[i]` becomes what `get(keys[i])` returns. Faster than
    /// `get` in a loop for large batches whose index pages are not in cache (the processor
    /// overlaps the memory accesses of different keys).
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let shard = warmshard::Shard::open(dir.path().join("batch.shard"))?;
    /// shard.merge_in([("a", "1"), ("b", "2")])?;
    /// let snapshot = shard.snapshot();
    /// let mut values = Vec::new();
    /// snapshot.get_many(&[b"a", b"zz", b"b"], &mut values);
    /// assert_eq!(values, [Some(&b"1"[..]), None, Some(&b"2"[..])]);
    /// # Ok(()) }
    /// ```
    pub fn get_many<'s>(&'s self, keys: &[&[u8]], out: &mut Vec<Option<&'s [u8]>>) {
        let mut records = Vec::with_capacity(keys.len());
        self.files.find_many(keys, &mut records);
        out.clear();
        out.extend(
            records
                .into_iter()
                .map(|r| r.and_then(|r| self.live(r)).map(|r| r.value)),
        );
    }

    /// True if [`get`](Snapshot::get) would return a value.
    #[inline]
    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Number of entries that read as hits.
    pub fn len(&self) -> usize {
        self.files.live_count() as usize
    }

    /// True when the snapshot has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live entry as `(key, value)`, in index order (not sorted by key).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.files
            .records()
            .filter_map(|r| self.live(r))
            .map(|r| (r.key, r.value))
    }

    /// Every live key, in index order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Why this snapshot holds what it holds; anything but [`Health::Valid`] reads as empty
    /// (or, for a problem with the delta file alone, as the entries of the base).
    pub fn health(&self) -> &Health {
        self.files.health()
    }

    /// The producer string recorded in the shard ("" when not valid).
    pub fn producer(&self) -> &str {
        self.files.base.producer()
    }

    /// The whole mapped base file. Every value [`get`](Snapshot::get) returns lies inside it or
    /// inside [`delta_file_bytes`](Snapshot::delta_file_bytes).
    pub fn file_bytes(&self) -> &[u8] {
        self.files.base.bytes()
    }

    /// The mapped delta file holding recent writes (empty when there is none).
    pub fn delta_file_bytes(&self) -> &[u8] {
        self.files.delta.as_ref().map_or(&[], |d| d.bytes())
    }

    /// Figures about the shard behind this snapshot.
    pub fn stats(&self) -> Stats {
        let h = &self.files.base.header;
        let policy = &self.files.base.policy;
        let (value_bytes, delta_bytes) = match &self.files.delta {
            None => (h.value_bytes, 0),
            Some(delta) => {
                let live = self.files.records().filter(|r| policy.is_live(r));
                (
                    live.map(|r| r.value.len() as u64).sum(),
                    delta.header.file_len,
                )
            }
        };
        Stats {
            entries: self.len() as u64,
            value_bytes,
            file_bytes: h.file_len + delta_bytes,
            delta_file_bytes: delta_bytes,
            format_version: h.format_version,
            producer: self.producer().to_string(),
            build_time: UNIX_EPOCH + Duration::from_nanos(h.build_time_ns),
            validation_time: self.files.base.validation_time
                + self
                    .files
                    .delta
                    .as_ref()
                    .map_or(Duration::ZERO, |d| d.validation_time),
            health: self.health().clone(),
        }
    }

    /// Full verification of every entry (O(size of the shard)): index structure, key hashes,
    /// slot placement (each slot at or after its home position), unique keys and every value's
    /// checksum, in the base and the delta.
    /// Opening a shard checks only what is needed to read it safely; this is the expensive
    /// check, run when you want it.
    ///
    /// Returns the number of distinct entries stored (whatever their generation), or what is
    /// wrong. A snapshot that is not
    /// [`Health::Valid`] fails, unless it is simply missing or disabled (zero entries).
    pub fn verify(&self) -> Result<u64, VerifyError> {
        match self.health() {
            Health::Valid => {}
            Health::Missing | Health::Disabled => return Ok(0),
            other => return Err(VerifyError::NotValid(other.clone())),
        }
        for (file, loaded) in [
            (ShardFile::Base, Some(&self.files.base)),
            (ShardFile::Delta, self.files.delta.as_ref()),
        ] {
            let Some(loaded) = loaded else { continue };
            loaded
                .layout
                .verify(loaded.bytes())
                .map_err(|problem| VerifyError::File { file, problem })?;
        }
        Ok(self.files.stored_count())
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("health", self.health())
            .field("base_entries", &self.files.base.layout.entry_count())
            .field("delta", &self.files.delta.is_some())
            .finish()
    }
}

/// What [`Snapshot::verify`] found wrong: the shard as a whole, or which file and which slot or
/// key in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The shard does not read as valid at all; its health says why.
    #[error("shard failed verification: {0}")]
    NotValid(Health),
    /// One of the shard's files failed the structural check.
    #[error("shard failed verification: {file} file: {problem}")]
    File {
        /// Which file: the base or the delta.
        file: ShardFile,
        /// What is wrong, and where.
        problem: crate::format::VerifyProblem,
    },
}

/// One of the two files of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardFile {
    /// The shard file itself (`<shard>`).
    Base,
    /// The delta file of recent small writes (`<shard>.delta`).
    Delta,
}

impl fmt::Display for ShardFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShardFile::Base => "base",
            ShardFile::Delta => "delta",
        })
    }
}

/// Figures about one shard, from [`Snapshot::stats`]. More fields may be added in later
/// releases (`#[non_exhaustive]`), so it is read, not built, outside this crate.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Stats {
    /// Entries that read as hits.
    pub entries: u64,
    /// Sum of all value lengths.
    pub value_bytes: u64,
    /// Size of the shard's files (base and delta).
    pub file_bytes: u64,
    /// Size of the delta file of recent writes (0 when there is none).
    pub delta_file_bytes: u64,
    /// Format version of the file (0 when not valid).
    pub format_version: u32,
    /// Producer string recorded by the writer.
    pub producer: String,
    /// When the shard was built.
    pub build_time: SystemTime,
    /// Time spent validating the archive when it was opened.
    pub validation_time: Duration,
    /// The snapshot's health.
    pub health: Health,
}

/// A value owned by a [`Value`] guard: returned by [`Shard::get`](crate::Shard::get), it keeps
/// the mapping alive and derefs to the bytes in place (no copy).
#[derive(Clone)]
pub struct Value {
    snapshot: Snapshot,
    in_delta: bool,
    range: std::ops::Range<usize>,
}

impl Value {
    pub(crate) fn find(snapshot: Snapshot, key: &[u8]) -> Option<Value> {
        let value = snapshot.get(key)?;
        let in_delta = snapshot
            .delta_file_bytes()
            .as_ptr_range()
            .contains(&value.as_ptr());
        let file = if in_delta {
            snapshot.delta_file_bytes()
        } else {
            snapshot.file_bytes()
        };
        let start = value.as_ptr() as usize - file.as_ptr() as usize;
        let range = start..start + value.len();
        Some(Value {
            snapshot,
            in_delta,
            range,
        })
    }
}

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let file = if self.in_delta {
            self.snapshot.delta_file_bytes()
        } else {
            self.snapshot.file_bytes()
        };
        &file[self.range.clone()]
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        **self == **other
    }
}

impl Eq for Value {}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&&**self).finish()
    }
}
