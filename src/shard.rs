//! [`Shard`]: a handle on one shard file: opening, refreshing snapshots, and the writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::Result;
use crate::health::Health;
use crate::map::{Loaded, ShardFiles};
use crate::options::Options;
use crate::snapshot::{Snapshot, Value};
use crate::write::{Locking, Transaction, WriteOutcome};

/// A handle on one shard file.
///
/// Reads go through [`Snapshot`]s and never lock; writes take an exclusive `flock` on
/// `<path>.lock`, build a complete new file and rename it over the old one, so readers never see
/// a partial file and concurrent writers (threads or processes) never lose an entry.
///
/// ```
/// # fn main() -> warmshard::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use warmshard::{Options, Shard};
/// let shard = Shard::open_with(dir.path().join("autoload.shard"), Options::new().producer("myshell 1.4.2"))?;
/// shard.merge_in([("_git_checkout", "compiled bytes"), ("_ls", "more bytes")])?;
/// assert_eq!(shard.get(b"_ls").as_deref(), Some(&b"more bytes"[..]));
/// shard.remove([b"_ls"])?;
/// assert!(!shard.snapshot().contains(b"_ls"));
/// # Ok(()) }
/// ```
pub struct Shard {
    paths: ShardPaths,
    options: Options,
    /// The files the last snapshot or write saw; `None` until the first one, which opens them.
    current: RwLock<Option<Arc<ShardFiles>>>,
}

/// The paths of a shard's files: what a write needs to know of where it writes.
pub(crate) struct ShardPaths {
    path: PathBuf,
    lock_path: PathBuf,
    delta_path: PathBuf,
}

impl ShardPaths {
    /// The base file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> PathBuf {
        self.lock_path.clone()
    }

    /// The delta file's path.
    pub fn delta_path(&self) -> PathBuf {
        self.delta_path.clone()
    }
}

impl Shard {
    /// Opens the shard at `path` with default [`Options`]. See [`open_with`](Shard::open_with).
    pub fn open(path: impl AsRef<Path>) -> Result<Shard> {
        Self::open_with(path, Options::default())
    }

    /// Opens the shard at `path`.
    ///
    /// A missing, corrupt, foreign, oversized or untrusted file is not an error: the shard reads
    /// as empty and [`health`](Shard::health) says why; the next write rebuilds it. The error
    /// cases are a directory, FIFO, socket or device at `path` (never opened, never waited on).
    ///
    /// This costs one `lstat` of `path`: the files are opened, checked, mapped and validated by
    /// the first [`snapshot`](Shard::snapshot) (or write), which would otherwise have to `stat`
    /// both files again to tell whether they were replaced since.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Shard> {
        let path = path.as_ref().to_path_buf();
        let sidecar = |suffix| PathBuf::from(crate::names::sidecar(path.as_os_str(), suffix));
        let lock_path = sidecar(crate::names::LOCK_SUFFIX);
        let delta_path = sidecar(crate::names::DELTA_SUFFIX);
        let current = if options.enabled {
            refuse_special_file(&path)?;
            None
        } else {
            let disabled = Loaded::empty(Health::Disabled, None, options.read_policy());
            Some(Arc::new(ShardFiles::base_only(
                Arc::new(disabled),
                None,
                None,
            )))
        };
        Ok(Shard {
            paths: ShardPaths {
                path,
                lock_path,
                delta_path,
            },
            options,
            current: RwLock::new(current),
        })
    }

    /// Opens the shard called `name` in the per-user cache directory
    /// ([`default_path`](crate::default_path)), honouring the `WARMSHARD` kill switch
    /// ([`Options::from_env`]) unless `options` already disables the cache.
    pub fn open_default(name: &str, options: Options) -> Result<Shard> {
        let enabled = options.enabled && crate::location::enabled_by_env();
        Self::open_with(
            crate::location::default_path(name)?,
            options.enabled(enabled),
        )
    }

    /// The shard file's path.
    pub fn path(&self) -> &Path {
        self.paths.path()
    }

    /// The sidecar lock file's path (`<path>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.paths.lock_path()
    }

    /// The delta file's path (`<path>.delta`): recent small writes, folded into the shard file
    /// by a later write.
    pub fn delta_path(&self) -> PathBuf {
        self.paths.delta_path()
    }

    /// The options this handle was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// A snapshot of the shard as it is now.
    ///
    /// The first snapshot of a handle opens, checks, maps and validates the files. Each later
    /// one costs a `stat` of the shard file and of its delta file: if either was replaced since
    /// the last snapshot (its device or inode changed), the files are mapped and validated anew;
    /// otherwise the current mappings are shared. Hold the returned snapshot for repeated
    /// lookups.
    pub fn snapshot(&self) -> Snapshot {
        let files = self.current_files().unwrap_or_else(|e| {
            let unreadable = Health::Unreadable {
                error: e.to_string(),
            };
            let policy = self.options.read_policy();
            let empty = Loaded::empty(unreadable, None, policy);
            Arc::new(ShardFiles::base_only(Arc::new(empty), None, None))
        });
        Snapshot::new(files)
    }

    /// The shard's files as they are on disk now: the current view if neither file was
    /// replaced since it was mapped (published files never change in place), else a fresh one,
    /// which becomes current.
    pub(crate) fn current_files(&self) -> Result<Arc<ShardFiles>> {
        let current = self.current.read().clone();
        if !self.options.enabled
            && let Some(current) = current
        {
            return Ok(current);
        }
        let policy = self.options.read_policy();
        let files = ShardFiles::current(current, None, &self.paths, &policy)?;
        self.install(Arc::clone(&files));
        Ok(files)
    }

    /// The view a write starts from (reused if the files are unchanged on disk).
    fn seen(&self) -> Option<Arc<ShardFiles>> {
        self.current.read().clone()
    }

    /// Starts a transaction on this shard's files.
    fn transaction(&self, locking: Locking) -> Result<Transaction<'_>> {
        Transaction::begin(&self.paths, &self.options, self.seen(), locking)
    }

    /// Installs the view a committed write returned, and returns its outcome.
    fn finish(&self, written: Result<(WriteOutcome, Arc<ShardFiles>)>) -> Result<WriteOutcome> {
        let (outcome, files) = written?;
        self.install(files);
        Ok(outcome)
    }

    pub(crate) fn install(&self, files: Arc<ShardFiles>) {
        *self.current.write() = Some(files);
    }

    /// The value stored under `key`, from a fresh [`snapshot`](Shard::snapshot). The returned
    /// [`Value`] keeps its mapping alive and derefs to the bytes in place.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        Value::find(self.snapshot(), key)
    }

    /// The health of the shard as of a fresh snapshot.
    pub fn health(&self) -> Health {
        self.snapshot().health().clone()
    }

    /// Inserts or replaces one entry. Waits up to [`Options::lock_timeout`] (default 10 s) for
    /// another writer's lock; on a path where waiting is worse than skipping the write (a
    /// shell storing one cache miss at startup), use [`try_put_one`](Shard::try_put_one).
    pub fn put_one(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<WriteOutcome> {
        self.merge_in([(key, value)])
    }

    /// [`put_one`](Shard::put_one) that never waits: when another process holds the write lock
    /// (e.g. a prewarm publishing), it returns [`Error::LockBusy`](crate::Error::LockBusy) at
    /// once and writes nothing. For the startup path, where a miss stored later is better than
    /// a stall. (The same as a zero [`Options::lock_timeout`].)
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let shard = warmshard::Shard::open(dir.path().join("s.shard"))?;
    /// match shard.try_put_one("_git_checkout", "compiled bytes") {
    ///     Ok(_) | Err(warmshard::Error::LockBusy { .. }) => {} // stored, or skipped: no wait
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_put_one(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<WriteOutcome> {
        self.merge_with([(key, value)], Locking::Now(std::time::Duration::ZERO))
    }

    /// Inserts or replaces one entry whose value is read from `reader` to its end: the value
    /// is streamed into the new file as it is read, so memory does not grow with its size (a
    /// 200 MB value from standard input costs a 64 KiB buffer, not 200 MB).
    ///
    /// The value is read without holding the write lock, which is taken only to publish (as a
    /// [`bulk_writer`](Shard::bulk_writer) in [`BulkMode::Merge`] does), so a slow reader (a
    /// pipe) keeps no other writer waiting; the write then waits up to
    /// [`Options::lock_timeout`] for the lock. A value that passes a size limit is refused as
    /// soon as it does, the shard left as it was: [`Error::TooLarge`](crate::Error::TooLarge)
    /// for [`Options::max_size`], [`Error::InvalidInput`](crate::Error::InvalidInput) for the
    /// format's limit of 4 GiB - 1 bytes per value. An error of `reader` is returned as
    /// [`Error::Os`](crate::Error::Os), and nothing is written.
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let shard = warmshard::Shard::open(dir.path().join("s.shard"))?;
    /// shard.put_reader("motd", &b"hello from a reader"[..])?;
    /// // e.g. shard.put_reader("log", std::fs::File::open("/var/log/syslog")?)?;
    /// assert_eq!(shard.get(b"motd").as_deref(), Some(&b"hello from a reader"[..]));
    /// # Ok(()) }
    /// ```
    pub fn put_reader(
        &self,
        key: impl AsRef<[u8]>,
        reader: impl std::io::Read,
    ) -> Result<WriteOutcome> {
        let mut writer = self.bulk_writer(BulkMode::Merge)?;
        writer.add_reader(key.as_ref(), reader)?;
        writer.commit()
    }

    /// Inserts or replaces `entries`, keeping every other entry. When a key repeats, the last
    /// occurrence wins.
    pub fn merge_in<K, V>(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<WriteOutcome>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.merge_with(entries, Locking::Now(self.options.lock_timeout))
    }

    fn merge_with<K, V>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        locking: Locking,
    ) -> Result<WriteOutcome>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut writer = self.writer(BulkMode::Merge, locking)?;
        for (key, value) in entries {
            writer.add(key.as_ref(), value.as_ref())?;
        }
        writer.commit()
    }

    /// Replaces the whole content of the shard with `entries`. Values are streamed to disk as
    /// the iterator yields them, so memory does not grow with their size.
    pub fn replace_all<K, V>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<WriteOutcome>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut writer = self.bulk_writer(BulkMode::Replace)?;
        for (key, value) in entries {
            writer.add(key.as_ref(), value.as_ref())?;
        }
        writer.commit()
    }

    /// Removes one key; see [`remove`](Shard::remove).
    pub fn remove_one(&self, key: impl AsRef<[u8]>) -> Result<WriteOutcome> {
        self.remove([key])
    }

    /// Removes `keys` (any iterable of keys, e.g. `["a", "b"]` or a `Vec<Vec<u8>>`; for one key,
    /// [`remove_one`](Shard::remove_one)); returns [`WriteOutcome::Unchanged`] without
    /// rewriting when none exists.
    pub fn remove<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<WriteOutcome> {
        if !self.options.enabled {
            return Ok(WriteOutcome::Disabled);
        }
        let mut tx = self.transaction(self.locking())?;
        let doomed: hashbrown::HashSet<Vec<u8>> = {
            let current = Snapshot::new(Arc::clone(&tx.current));
            keys.into_iter()
                .map(|k| k.as_ref().to_vec())
                .filter(|k| current.contains(k))
                .collect()
        };
        if doomed.is_empty() {
            return Ok(WriteOutcome::Unchanged);
        }
        tx.keep_current(|key| doomed.contains(key))?;
        self.finish(tx.commit())
    }

    /// Rewrites the shard as one file: folds the delta file into it and drops every entry that
    /// fails its checksum or lies in its index (bit rot). Small writes never rewrite the shard
    /// file, so this is how a shard that [`Snapshot::verify`] rejects is repaired.
    pub fn compact(&self) -> Result<WriteOutcome> {
        if !self.options.enabled {
            return Ok(WriteOutcome::Disabled);
        }
        let mut tx = self.transaction(self.locking())?;
        tx.keep_current(|_| false)?;
        self.finish(tx.commit())
    }

    /// Removes the shard file and its delta file (under the lock). Readers holding snapshots
    /// keep them.
    pub fn clear(&self) -> Result<WriteOutcome> {
        if !self.options.enabled {
            return Ok(WriteOutcome::Disabled);
        }
        self.finish(self.transaction(self.locking())?.remove_files())
    }

    /// Starts a bulk write (e.g. a prewarm from an init command): streams each added value to a
    /// new file **without holding the write lock**, so other writers (a shell storing a miss)
    /// are not kept waiting while it builds; [`commit`](BulkWriter::commit) takes the lock,
    /// re-reads the shard (merging its current entries in [`BulkMode::Merge`], so no write
    /// made meanwhile is lost) and publishes everything at once. Dropping the writer without
    /// committing leaves the shard as it was.
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use warmshard::{BulkMode, Shard};
    /// let shard = Shard::open(dir.path().join("prewarm.shard"))?;
    /// let mut writer = shard.bulk_writer(BulkMode::Replace)?;
    /// for i in 0..1000 {
    ///     writer.add(format!("fn_{i}").as_bytes(), &[0u8; 100])?;
    /// }
    /// writer.commit()?;
    /// assert_eq!(shard.snapshot().len(), 1000);
    /// # Ok(()) }
    /// ```
    pub fn bulk_writer(&self, mode: BulkMode) -> Result<BulkWriter<'_>> {
        self.writer(mode, Locking::AtCommit)
    }

    fn writer(&self, mode: BulkMode, locking: Locking) -> Result<BulkWriter<'_>> {
        let tx = if self.options.enabled {
            Some(self.transaction(locking)?)
        } else {
            None
        };
        Ok(BulkWriter {
            shard: self,
            tx,
            mode,
            spent: false,
        })
    }

    /// Writes that must see the current entries from their start take the lock at once.
    fn locking(&self) -> Locking {
        Locking::Now(self.options.lock_timeout)
    }
}

/// Fails with [`Error::NotAFile`](crate::Error::NotAFile) when a directory, FIFO, socket or
/// device sits at `path`, judged by `lstat` (so it is never opened). Anything else, including a
/// missing path, a symlink or an `lstat` error, is left to the first snapshot to report as its
/// health.
fn refuse_special_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() && !meta.file_type().is_symlink() => {
            Err(crate::Error::NotAFile {
                path: path.to_path_buf(),
                kind: crate::trust::kind_name(&meta),
            })
        }
        _ => Ok(()),
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path())
            .field("options", &self.options)
            .finish()
    }
}

/// Whether a [`BulkWriter`] keeps the shard's current entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMode {
    /// The new shard holds only what was added (like [`Shard::replace_all`]).
    Replace,
    /// Added entries replace or join the current ones (like [`Shard::merge_in`]).
    Merge,
}

/// A write of many entries committed at once; see [`Shard::bulk_writer`]. Takes the shard's
/// write lock only to commit.
pub struct BulkWriter<'s> {
    shard: &'s Shard,
    tx: Option<Transaction<'s>>,
    mode: BulkMode,
    /// An `add_reader` failed: the write was abandoned (see [`BulkWriter::add_reader`]).
    spent: bool,
}

impl BulkWriter<'_> {
    /// Adds an entry; a later `add` of the same key wins. The value goes to disk now.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.refuse_if_spent()?;
        match &mut self.tx {
            Some(tx) => tx.add(key, value),
            None => Ok(()),
        }
    }

    /// Adds an entry whose value is read from `reader` to its end, streamed to disk as it is
    /// read (memory does not grow with its size); returns the value's length. A later `add`
    /// of the same key wins. When the cache is disabled nothing is read and 0 is returned.
    ///
    /// A value that passes a size limit is refused as soon as it does (reading at most one
    /// byte past it): [`Error::TooLarge`](crate::Error::TooLarge) when the new file passes
    /// [`Options::max_size`](crate::Options::max_size),
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when the value reaches 4 GiB (the
    /// format's limit). An error of `reader` is [`Error::Os`](crate::Error::Os). After any
    /// error the writer is spent: every later call fails and commit writes nothing, so the
    /// shard is left as it was.
    pub fn add_reader(&mut self, key: &[u8], mut reader: impl std::io::Read) -> Result<u64> {
        self.refuse_if_spent()?;
        let Some(tx) = &mut self.tx else {
            return Ok(0);
        };
        let added = tx.add_reader(key, &mut reader);
        if added.is_err() {
            // The new file holds a partial record: remove it now, and commit nothing.
            self.tx = None;
            self.spent = true;
        }
        added
    }

    /// Fails once an [`add_reader`](BulkWriter::add_reader) has failed.
    fn refuse_if_spent(&self) -> Result<()> {
        if self.spent {
            return Err(crate::Error::InvalidInput(
                "this bulk writer stopped at an earlier error (of add_reader) and wrote \
                 nothing; start a new one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Number of distinct keys added so far.
    pub fn len(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.len())
    }

    /// True when nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes the new shard atomically.
    pub fn commit(self) -> Result<WriteOutcome> {
        self.refuse_if_spent()?;
        let Some(tx) = self.tx else {
            return Ok(WriteOutcome::Disabled);
        };
        self.shard.finish(match self.mode {
            BulkMode::Merge => tx.commit_merge(),
            BulkMode::Replace => tx.commit(),
        })
    }
}
