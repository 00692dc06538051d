//! [`Snapshot`]: a validated, immutable read view of one shard file; lookups in place.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::{self, Record};
use crate::health::Health;
use crate::map::Loaded;

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
    pub(crate) loaded: Arc<Loaded>,
}

impl Snapshot {
    pub(crate) fn new(loaded: Arc<Loaded>) -> Snapshot {
        Snapshot { loaded }
    }

    #[inline]
    fn live<'a>(&self, record: Record<'a>) -> Option<Record<'a>> {
        let policy = &self.loaded.policy;
        if record.generation < policy.min_generation {
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
        let bytes = self.loaded.bytes();
        let record = self.loaded.layout.find(bytes, key)?;
        self.live(record).map(|r| r.value)
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
        self.loaded
            .layout
            .find_many(self.loaded.bytes(), keys, &mut records);
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
        self.loaded.live_count() as usize
    }

    /// True when the snapshot has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live entry as `(key, value)`, in index order (by key hash, not sorted by key).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let bytes = self.loaded.bytes();
        self.loaded
            .layout
            .slots(bytes)
            .filter_map(|(_, _, record)| self.live(record?))
            .map(|r| (r.key, r.value))
    }

    /// Every live key, in index order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Why this snapshot holds what it holds; anything but [`Health::Valid`] reads as empty.
    pub fn health(&self) -> &Health {
        &self.loaded.health
    }

    /// The producer string recorded in the shard ("" when not valid).
    pub fn producer(&self) -> &str {
        self.loaded.producer()
    }

    /// The whole mapped file; every slice returned by [`get`](Snapshot::get) lies inside it.
    pub fn file_bytes(&self) -> &[u8] {
        self.loaded.bytes()
    }

    /// Figures about the shard behind this snapshot.
    pub fn stats(&self) -> Stats {
        let h = &self.loaded.header;
        Stats {
            entries: self.len() as u64,
            value_bytes: h.value_bytes,
            file_bytes: h.file_len,
            format_version: h.format_version,
            producer: self.producer().to_string(),
            build_time: UNIX_EPOCH + Duration::from_nanos(h.build_time_ns),
            validation_time: self.loaded.validation_time,
            health: self.loaded.health.clone(),
        }
    }

    /// Full verification of every entry (O(size of the shard)): index structure, key hashes,
    /// bucket placement, unique keys and every value's checksum. Opening a shard checks only
    /// what is needed to read it safely; this is the expensive check, run when you want it.
    ///
    /// Returns the number of entries checked, or what is wrong. A snapshot that is not
    /// [`Health::Valid`] fails, unless it is simply missing or disabled (zero entries).
    pub fn verify(&self) -> Result<u64, VerifyError> {
        match &self.loaded.health {
            Health::Valid => {}
            Health::Missing | Health::Disabled => return Ok(0),
            other => return Err(VerifyError(other.to_string())),
        }
        self.loaded
            .layout
            .verify(self.loaded.bytes())
            .map_err(VerifyError)?;
        Ok(self.loaded.layout.entry_count())
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("health", &self.loaded.health)
            .field("entries", &self.loaded.layout.entry_count())
            .field("file_bytes", &self.loaded.header.file_len)
            .finish()
    }
}

/// What [`Snapshot::verify`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard failed verification: {0}")]
pub struct VerifyError(pub String);

/// Figures about one shard, from [`Snapshot::stats`].
#[derive(Clone, Debug)]
pub struct Stats {
    /// Entries that read as hits.
    pub entries: u64,
    /// Sum of all value lengths.
    pub value_bytes: u64,
    /// Size of the shard file.
    pub file_bytes: u64,
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
    range: std::ops::Range<usize>,
}

impl Value {
    pub(crate) fn find(snapshot: Snapshot, key: &[u8]) -> Option<Value> {
        let value = snapshot.get(key)?;
        let base = snapshot.file_bytes().as_ptr() as usize;
        let start = value.as_ptr() as usize - base;
        let range = start..start + value.len();
        Some(Value { snapshot, range })
    }
}

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.snapshot.file_bytes()[self.range.clone()]
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
