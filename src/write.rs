//! The write protocol, which exists once: every write goes through a [`Transaction`].
//!
//! 1. create the shard's directory if needed (0700, whatever the umask), open it once as a
//!    handle and refuse it if others could write it or any ancestor (see [`crate::dir`]); every
//!    later open, rename, unlink and fsync of the write is made relative to that handle;
//! 2. take an exclusive `flock` on the sidecar `<shard>.lock`, waiting at most the lock timeout;
//! 3. re-read the current shard under the lock, so no concurrent write is lost;
//! 4. create a new file (0600) at the fixed temp name `.<shard>.tmp`, first unlinking any file a
//!    crashed writer left there (temp files exist only under the lock, so any found now is
//!    stale), and stream the new shard into it;
//! 5. fsync it, rename it over the shard, fsync the directory (fsyncs skipped when durability is
//!    off); the temp file is removed on every error path.
//!
//! A **bulk write** builds its file before taking the lock (under a random temp name, see
//! `TempFile`), and takes it at commit (steps 2–3). A bulk *replace* needs nothing of the
//! current shard: it completes and fsyncs its file first, so its lock covers only the rename,
//! the directory's fsync and the old delta's removal. A bulk *merge* writes back what it
//! streamed first, then copies the current entries under the lock, so no write made meanwhile is
//! lost. Large files are written back before the lock even when durability is off: on ext4 a
//! rename over a file starts the writeback of the new one (`auto_da_alloc`), which would hold
//! the lock as long (280 ms for a 1 GiB prewarm).
//!
//! **Without fsync, a delta replaces the old delta by exchange**: `renameat2(RENAME_EXCHANGE)`
//! swaps the new file at the temp name with the old one at `<shard>.delta`, then the old one is
//! unlinked from the temp name (plain rename where the system cannot exchange or there is no old
//! delta). Readers see the old delta or the new one, as with a rename. A writer killed between
//! the exchange and the unlink leaves the old delta at the temp name, which readers never open
//! and the next write unlinks (step 4).
//!
//! Why: on ext4 a rename over an existing file allocates and starts writing back the new file's
//! blocks (`auto_da_alloc`), which then have to be freed again (and, on a file system mounted
//! with `discard`, discarded) when the next small write replaces it; an exchange leaves them in
//! the page cache, so a delta replaced soon after never reaches the disk. The price is on power
//! loss only: an unsynced delta may then come back empty, zeroed or missing. Validation refuses
//! the first two, reads fall back to the base (losing the small writes made since the base was
//! written, which is what `durable(false)` accepts), and the next write publishes a valid delta
//! again. A base is always renamed, keeping ext4's safeguard for the whole cache, and durable
//! writes always rename after fsync.
//!
//! Writes of a base, and `clear`, also sweep the directory for temp files under other names
//! (`.<shard>.<random>.tmp`: from earlier versions, or from writes that found the fixed name
//! taken by something not theirs to remove); see `TempFile`. No write scans the directory on
//! the small-write path, whose cost must not grow with the number of files beside the shard.
//!
//! `put_one`, `merge_in`, `replace_all` and the bulk writer differ only in which entries they
//! add and whether they keep the current ones; `remove` keeps all but some.
//!
//! A merge whose new entries plus the current delta stay under [`format::delta_limit`] is
//! published as a new **delta file** (`<shard>.delta`, renamed over the old delta) and leaves the
//! base alone, so a small write costs O(delta), not O(shard). Any other write publishes a new
//! **base** (renamed over the shard) and then removes the delta; a crash between the two leaves a
//! delta whose `base_id` no longer matches, which readers ignore.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::dir::ShardDir;
use crate::error::{Error, Result};
use crate::format::{self, Encoder, Record, Slot, Summary};
use crate::map::{self, Loaded, ShardFiles};
use crate::names;
use crate::options::Options;
use crate::shard::ShardPaths;

/// The producer recorded when neither the options nor an existing shard name one.
pub const DEFAULT_PRODUCER: &str = "warmshard";

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// The write was committed: readers see it from now on.
    #[non_exhaustive]
    Committed {
        /// Entries the shard holds after the write.
        entries: u64,
        /// Size in bytes of the file this write published: the delta file when `published` is
        /// [`Published::Delta`] (a small write), the shard file when it is [`Published::Base`],
        /// 0 when the files were removed. (The shard's total size is in
        /// [`Snapshot::stats`](crate::Snapshot::stats).)
        file_bytes: u64,
        /// Which file the write published.
        published: Published,
        /// Entries the write dropped from the current shard without being asked to, and why
        /// (a rebuild over a file of another producer or format, entries of an older
        /// generation, values that fail their checksum). Empty in the usual case.
        dropped: Vec<Dropped>,
        /// Clean-up steps that failed after the write was committed (e.g. an old delta file
        /// that could not be removed). The write happened; these only say what was left over.
        warnings: Vec<String>,
    },
    /// Nothing needed to change (e.g. removing absent keys); the file was not rewritten.
    Unchanged,
    /// The cache is disabled: nothing was written.
    Disabled,
}

impl WriteOutcome {
    /// The entries dropped by a committed write (empty otherwise); see
    /// [`WriteOutcome::Committed`].
    pub fn dropped(&self) -> &[Dropped] {
        match self {
            WriteOutcome::Committed { dropped, .. } => dropped,
            _ => &[],
        }
    }

    /// The clean-up warnings of a committed write (empty otherwise).
    pub fn warnings(&self) -> &[String] {
        match self {
            WriteOutcome::Committed { warnings, .. } => warnings,
            _ => &[],
        }
    }
}

/// Which file a committed write published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// A new shard file (and the delta file was removed).
    Base,
    /// A new delta file beside the unchanged shard file.
    Delta,
    /// No file: the shard's files were removed (`clear`).
    Removed,
}

/// Entries a write dropped from the current shard without being asked to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// How many entries, when known (a corrupt or foreign file cannot be counted).
    pub entries: Option<u64>,
    /// Why they were dropped.
    pub reason: DropReason,
}

/// Why a write dropped entries; see [`Dropped`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The shard file was rejected for its content (corrupt, another format, another
    /// producer, untrusted owner or mode): the write rebuilt the shard over it.
    ShardFile(crate::Health),
    /// The delta file was rejected for its content and its entries were not carried over.
    DeltaFile(crate::Health),
    /// Entries written under a generation older than this handle's.
    OlderGeneration {
        /// The handle's generation.
        floor: u64,
    },
    /// Values whose bytes no longer match their checksum (bit rot).
    BadChecksum,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.entries {
            Some(n) => write!(f, "dropped {n} entries: ")?,
            None => write!(f, "dropped the entries (if any) of ")?,
        }
        match &self.reason {
            DropReason::ShardFile(health) => write!(f, "the shard file ({health})"),
            DropReason::DeltaFile(health) => write!(f, "the delta file ({health})"),
            DropReason::OlderGeneration { floor } => {
                write!(f, "written under a generation older than {floor}")
            }
            DropReason::BadChecksum => write!(f, "values failing their checksum"),
        }
    }
}

/// An exclusive `flock` on a shard's lock file, released on drop.
pub(crate) struct WriteLock {
    _flock: Flock<File>,
}

impl WriteLock {
    /// Takes the lock, polling with capped exponential backoff until `timeout` has passed. A
    /// zero `timeout` tries once and fails with [`Error::LockBusy`] at once.
    ///
    /// The lock file is opened read-only (`flock` needs no more), so a lock file whose mode an
    /// odd umask left at 0400 still works; its mode is then set to 0600 (`fchmod` on the open
    /// descriptor, only when it is ours and wrong), so what a umask took away is repaired.
    pub fn acquire(dir: &ShardDir, path: &Path, timeout: Duration) -> Result<WriteLock> {
        let name = path.file_name().unwrap_or_default();
        let mut file = dir
            .open_file(name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)
            .or_else(|e| {
                // An existing lock file left 0400 by a umask: open it read-only to lock it.
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(e);
                }
                dir.open_file(name, OFlag::O_RDONLY, 0)
                    // No file to lock that way either: the first error says why.
                    .map_err(|_| e)
            })
            .map_err(|e| Error::io("opening lock file", path, e))?;
        repair_mode(&file, 0o600, path)?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(WriteLock { _flock: flock }),
                Err((f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => file = f,
                Err((_, errno)) => return Err(Error::io("locking", path, errno.into())),
            }
            let waited = started.elapsed();
            if timeout.is_zero() {
                return Err(Error::LockBusy {
                    path: path.to_path_buf(),
                });
            }
            if waited >= timeout {
                return Err(Error::LockTimeout {
                    path: path.to_path_buf(),
                    waited,
                });
            }
            // Jitter spreads contending writers so that none starves behind the others.
            std::thread::sleep((pause + jitter()).min(timeout.saturating_sub(waited)));
            pause = (pause * 2).min(Duration::from_millis(4));
        }
    }
}

/// Sets the mode of a file or directory we just created or own to `mode` when it differs (a
/// umask such as 277 or 777 takes bits away from the mode asked at creation). A file of another
/// user is left alone: the trust checks judge it.
fn repair_mode(file: &File, mode: u32, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("reading metadata of", path, e))?;
    if meta.permissions().mode() & 0o7777 == mode || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting the mode of", path, e))
}

/// A random identity for a new shard file.
fn new_shard_id() -> u64 {
    use std::hash::BuildHasher;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // RandomState is seeded from the OS once per process and differs per instance.
    std::hash::RandomState::new().hash_one((nanos, std::process::id())) | 1
}

/// 0–50 µs, different per process and per call.
fn jitter() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_nanos(u64::from(nanos ^ std::process::id().rotate_left(16)) % 50_000)
}

/// Collects the new shard's slots while its records stream to disk; keeps keys unique (the last
/// write of a key wins) without holding any value in memory.
struct Builder {
    encoder: Encoder<BufWriter<File>>,
    slots: Vec<Slot>,
    /// Per slot: where its key lives in `keys`, and its value length.
    spans: Vec<(usize, u32, u32)>,
    keys: Vec<u8>,
    table: HashTable<u32>,
    value_bytes: u64,
    oldest_generation: u64,
}

impl Builder {
    fn key(&self, slot: u32) -> &[u8] {
        let (start, len, _) = self.spans[slot as usize];
        &self.keys[start..start + len as usize]
    }

    fn position(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.table
            .find(hash, |&i| {
                self.slots[i as usize].hash == hash && self.key(i) == key
            })
            .copied()
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.position(format::key_hash(key), key).is_some()
    }

    /// Records a slot for a record already written at `offset`; replaces an earlier slot with
    /// the same key.
    fn index(&mut self, key: &[u8], value_len: usize, generation: u64, offset: u64) -> Result<()> {
        let hash = format::key_hash(key);
        let value_len = u32::try_from(value_len)
            .map_err(|_| Error::InvalidInput("values longer than 4 GiB cannot be stored".into()))?;
        self.value_bytes += u64::from(value_len);
        self.oldest_generation = self.oldest_generation.min(generation);
        if let Some(i) = self.position(hash, key) {
            let span = &mut self.spans[i as usize];
            self.value_bytes -= u64::from(span.2);
            span.2 = value_len;
            self.slots[i as usize] = Slot::new(hash, offset, key.len(), value_len as usize);
            return Ok(());
        }
        let i = u32::try_from(self.slots.len())
            .map_err(|_| Error::InvalidInput("a shard holds at most 2^32 - 1 entries".into()))?;
        self.slots
            .push(Slot::new(hash, offset, key.len(), value_len as usize));
        self.spans
            .push((self.keys.len(), key.len() as u32, value_len));
        self.keys.extend_from_slice(key);
        let slots = &self.slots;
        self.table
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
        Ok(())
    }
}

/// A write in progress: holds the lock, the shard as read under it, and the temp file.
///
/// The lock is the **last field**: fields drop in declaration order, and the lock must be
/// released only after every file operation of the transaction, including the unlink of its
/// temp file on drop. Released earlier, the next writer would create its own temp file at the
/// fixed name and this drop would unlink it, failing that writer's rename (#11.2).
pub(crate) struct Transaction<'s> {
    /// The shard's paths and the handle's options: all a write needs of its `Shard`, which it
    /// never calls back; the new view of the files is returned to the caller to install.
    shard: &'s ShardPaths,
    options: &'s Options,
    /// The shard's directory, opened and checked once: every file operation of the write is
    /// made relative to it.
    dir: Arc<ShardDir>,
    pub current: Arc<ShardFiles>,
    temp: TempFile,
    builder: Builder,
    /// Entries kept out of the new shard by the generation floor or a failed checksum.
    older_generation: u64,
    bad_checksum: u64,
    /// What was dropped wholesale (a rebuild over a file rejected for its content).
    dropped: Vec<Dropped>,
    warnings: Vec<String>,
    /// `None` for a bulk write still building its file (see [`Transaction::begin_unlocked`]).
    lock: Option<WriteLock>,
}

/// When a write takes the lock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locking {
    /// Now, waiting at most this long (zero: one try).
    Now(Duration),
    /// At commit: the new file is built without the lock (a bulk write).
    AtCommit,
}

/// Which file a commit publishes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Base,
    Delta,
}

impl<'s> Transaction<'s> {
    /// Steps 1–4 of the protocol: directory, lock, re-read, stale temp cleanup and temp file.
    ///
    /// With [`Locking::AtCommit`] (a bulk write) the lock is not taken here: the new file is
    /// built under a fresh random name (`O_EXCL`, `flock`ed so no sweep removes it), and the lock
    /// is taken, and the current shard re-read, only by [`lock`](Transaction::lock) at commit.
    /// Other writers go on meanwhile; a merge-mode bulk write merges the current entries at
    /// commit, under the lock, so none of their writes is lost.
    pub fn begin(
        shard: &'s ShardPaths,
        options: &'s Options,
        previous: Option<Arc<ShardFiles>>,
        locking: Locking,
    ) -> Result<Transaction<'s>> {
        let path = shard.path();
        let dir = Arc::new(ShardDir::create(map::parent_dir(path))?);
        let lock = match locking {
            Locking::Now(timeout) => Some(WriteLock::acquire(&dir, &shard.lock_path(), timeout)?),
            Locking::AtCommit => None,
        };
        // Re-read under the lock: a concurrent writer may have published since this handle
        // last looked; unchanged files are reused, not mapped again. (Without the lock, this
        // view only names the producer; `lock` reads the shard again.)
        let policy = options.read_policy();
        let current = ShardFiles::current(previous, Some(&dir), shard, &policy)?;
        let mut warnings = Vec::new();
        let temp = match locking {
            Locking::Now(_) => TempFile::create(&dir, path, &mut warnings)?,
            Locking::AtCommit => TempFile::create_random(&dir, path)?,
        };
        let out = temp
            .file
            .try_clone()
            .map_err(|e| Error::io("duplicating descriptor of", &temp.path, e))?;
        let producer = match &options.producer {
            Some(p) => p.as_str(),
            None if current.base.health.is_valid() && !current.base.producer().is_empty() => {
                current.base.producer()
            }
            None => DEFAULT_PRODUCER,
        };
        let encoder = Encoder::new(BufWriter::with_capacity(64 * 1024, out), producer)
            .map_err(|e| Error::io("writing", &temp.path, e))?;
        Ok(Transaction {
            shard,
            options,
            dir,
            lock,
            current,
            temp,
            older_generation: 0,
            bad_checksum: 0,
            dropped: Vec::new(),
            warnings,
            builder: Builder {
                encoder,
                slots: Vec::new(),
                spans: Vec::new(),
                keys: Vec::new(),
                table: HashTable::new(),
                value_bytes: 0,
                oldest_generation: u64::MAX,
            },
        })
    }

    /// Takes the lock if this transaction does not hold it yet (a bulk write at commit), and
    /// re-reads the current shard under it.
    pub fn lock(&mut self) -> Result<()> {
        if self.lock.is_none() {
            let timeout = self.options.lock_timeout;
            self.lock = Some(WriteLock::acquire(
                &self.dir,
                &self.shard.lock_path(),
                timeout,
            )?);
            let policy = self.options.read_policy();
            let seen = Some(Arc::clone(&self.current));
            self.current = ShardFiles::current(seen, Some(&self.dir), self.shard, &policy)?;
        }
        Ok(())
    }

    fn write_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            return Error::InvalidInput(e.to_string());
        }
        Error::io("writing", &self.temp.path, e)
    }

    /// Adds or replaces one entry, written under the handle's generation.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let generation = self.options.generation;
        let offset = self
            .builder
            .encoder
            .write_record(generation, key, value)
            .map_err(|e| self.write_error(e))?;
        self.check_size()?;
        self.builder.index(key, value.len(), generation, offset)
    }

    /// Adds or replaces one entry whose value is read from `reader` to its end, streaming it
    /// into the new file (memory does not grow with its size) while its checksum is computed;
    /// the record's header is completed in place once the value has ended. Returns the value's
    /// length.
    ///
    /// Reads at most one byte past the size limits, so a value over them is refused as soon as
    /// it passes one, with the error an equal value passed whole gets: [`Error::TooLarge`] when
    /// the new file passes [`Options::max_size`], [`Error::InvalidInput`] when the value
    /// reaches 4 GiB. An error of `reader` is [`Error::Os`]. After an error the transaction
    /// must be dropped (the file holds a partial record).
    pub fn add_reader(&mut self, key: &[u8], reader: &mut dyn Read) -> Result<u64> {
        const PIECE: usize = 64 * 1024;
        let generation = self.options.generation;
        let mut record = self
            .builder
            .encoder
            .begin_record(generation, key)
            .map_err(|e| self.write_error(e))?;
        self.check_size()?;
        let mut piece = vec![0u8; PIECE];
        loop {
            // One byte past whichever limit is nearer, so that passing it is seen at once.
            let to_max_size =
                (self.options.max_size).saturating_sub(self.builder.encoder.records_len());
            let to_max_value = u64::from(u32::MAX - record.value_len());
            let want = to_max_size
                .min(to_max_value)
                .saturating_add(1)
                .min(PIECE as u64) as usize;
            let n = match reader.read(&mut piece[..want]) {
                Ok(0) => break,
                Ok(n) if n <= want => n,
                Ok(n) => {
                    return Err(Error::Os(std::io::Error::other(format!(
                        "the value's reader claimed {n} bytes read into a buffer of {want}"
                    ))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Os(e)),
            };
            self.builder
                .encoder
                .write_value(&mut record, &piece[..n])
                .map_err(|e| self.write_error(e))?;
            self.check_size()?;
        }
        let (offset, value_len) = self
            .builder
            .encoder
            .end_record(record)
            .map_err(|e| self.write_error(e))?;
        self.builder
            .index(key, value_len as usize, generation, offset)?;
        Ok(u64::from(value_len))
    }

    /// Copies every current entry (the delta's, then the base's it does not shadow) that was
    /// not already added, verbatim (checksum included); see [`keep`](Transaction::keep) for what
    /// is left behind.
    pub fn keep_current(&mut self, drop_key: impl Fn(&[u8]) -> bool) -> Result<()> {
        self.lock()?;
        self.require_readable()?;
        self.note_rebuild();
        let current = Arc::clone(&self.current);
        for record in current.records() {
            self.keep(&record, &drop_key)?;
        }
        Ok(())
    }

    /// Fails when the current entries could not be read for a cause other than their content
    /// (see [`Health::blocks_writes`](crate::Health::blocks_writes)): keeping "the current
    /// entries" would then silently keep none. Called before anything reads them.
    fn require_readable(&self) -> Result<()> {
        let current = &self.current;
        if current.base.health.blocks_writes() {
            return Err(Error::CurrentUnreadable {
                path: self.shard.path().to_path_buf(),
                health: current.base.health.clone(),
            });
        }
        if let Some(health) = &current.delta_unreadable {
            return Err(Error::CurrentUnreadable {
                path: self.shard.delta_path(),
                health: health.clone(),
            });
        }
        Ok(())
    }

    /// Records what a rebuild over files rejected for their content drops (reported in the
    /// outcome; the rebuild itself is by design). Called once, where the current entries are
    /// first read.
    fn note_rebuild(&mut self) {
        if !self.dropped.is_empty() {
            return;
        }
        let base = &self.current.base.health;
        if base.is_ignored_file() {
            self.dropped.push(Dropped {
                entries: self.current.base.ignored_entries,
                reason: DropReason::ShardFile(base.clone()),
            });
        }
        if let Some(problem) = &self.current.delta_problem
            && !self.current.delta_squatted
        {
            self.dropped.push(Dropped {
                entries: None,
                reason: DropReason::DeltaFile(problem.clone()),
            });
        }
    }

    /// Copies one current record unless it was already added, is of an older generation, is
    /// rejected by `drop_key`, or is not sound:
    ///
    /// - a value that fails its checksum is dropped rather than carried into every later shard:
    ///   a cache entry that went bad reads as a miss from then on;
    /// - only a record that a lookup of its key finds is kept: the checksum does not cover the
    ///   key, so a record whose key bytes changed (and no longer match its slot) must not become
    ///   the entry of the key it now spells.
    fn keep(&mut self, record: &Record<'_>, drop_key: &impl Fn(&[u8]) -> bool) -> Result<()> {
        let policy = &self.current.base.policy;
        let served = |record: &Record<'_>| {
            self.current
                .find(record.key)
                .is_some_and(|found| std::ptr::eq(found.raw.as_ptr(), record.raw.as_ptr()))
        };
        if drop_key(record.key) || self.builder.contains(record.key) || !served(record) {
            return Ok(());
        }
        if !policy.is_live(record) {
            self.older_generation += 1;
            return Ok(());
        }
        if format::value_checksum(record.value) != record.checksum {
            self.bad_checksum += 1;
            return Ok(());
        }
        self.copy(record)
    }

    fn copy(&mut self, record: &Record<'_>) -> Result<()> {
        let offset = self
            .builder
            .encoder
            .copy_record(record)
            .map_err(|e| self.write_error(e))?;
        self.check_size()?;
        self.builder
            .index(record.key, record.value.len(), record.generation, offset)
    }

    fn check_size(&self) -> Result<()> {
        let size = self.builder.encoder.records_len();
        let max = self.options.max_size;
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
        Ok(())
    }

    /// Number of entries the new shard will hold.
    pub fn len(&self) -> usize {
        self.builder.slots.len()
    }

    /// Commits what was added as a merge into the current entries: as a new delta file when
    /// the result stays small, else as a new base.
    pub fn commit_merge(mut self) -> Result<(WriteOutcome, Arc<ShardFiles>)> {
        if self.lock.is_none() && self.builder.encoder.records_len() >= SYNC_BEFORE_LOCK {
            // A large bulk merge: write back what it streamed before taking the lock, so that
            // the commit writes back only the current entries and the tables under it.
            self.builder
                .encoder
                .flush()
                .and_then(|()| self.temp.file.sync_data())
                .map_err(|e| Error::io("writing", &self.temp.path, e))?;
        }
        self.lock()?;
        self.require_readable()?;
        let current = Arc::clone(&self.current);
        if !current.base.health.is_valid()
            || !current.base.policy.all_live(&current.base.header)
            || current.delta_squatted
        {
            // No base to extend, or one holding entries of an older generation that this write
            // must drop: the merge result becomes the whole shard.
            self.keep_current(|_| false)?;
            return self.commit_as(Target::Base);
        }
        let no_drop = |_: &[u8]| false;
        if let Some(delta) = &current.delta {
            for (_, _, record) in delta.layout.slots(delta.bytes()) {
                if let Some(record) = record {
                    self.keep(&record, &no_drop)?;
                }
            }
        }
        if self.builder.encoder.records_len() <= format::delta_limit(current.base.header.file_len) {
            return self.commit_as(Target::Delta);
        }
        self.keep_current(no_drop)?;
        self.commit_as(Target::Base)
    }

    /// Commits what was added (and kept) as the whole new shard.
    ///
    /// A transaction that does not hold the lock yet (a bulk replace) needs nothing of the
    /// current shard but the producer it read at its start: its file is completed (tables,
    /// root, header) and made durable before the lock is taken, which then covers only the
    /// rename, the directory's fsync and the old delta's removal (see [`publish`]).
    pub fn commit(self) -> Result<(WriteOutcome, Arc<ShardFiles>)> {
        self.commit_as(Target::Base)
    }

    /// Step 5: finishes the file, makes it durable and renames it into place. The lock is
    /// released only after everything else the transaction holds, the temp file included, is
    /// dropped (see the struct's doc).
    fn commit_as(self, target: Target) -> Result<(WriteOutcome, Arc<ShardFiles>)> {
        let Transaction {
            lock,
            shard,
            options,
            dir,
            current,
            mut temp,
            builder,
            older_generation,
            bad_checksum,
            mut dropped,
            mut warnings,
        } = self;
        let floor = options.generation;
        for (entries, reason) in [
            (older_generation, DropReason::OlderGeneration { floor }),
            (bad_checksum, DropReason::BadChecksum),
        ] {
            if entries > 0 {
                dropped.push(Dropped {
                    entries: Some(entries),
                    reason,
                });
            }
        }
        let mut lock = lock;
        let result = finish(options, &current, &temp, builder, target).and_then(|len| {
            if lock.is_none() {
                // A replace built without the lock (only a base is committed so): the file is
                // complete, and written back if it is large (on ext4 a rename over a file starts
                // the writeback of the new one's data, which would hold the lock for that long;
                // 280 ms for 1 GiB), so the lock covers the publishing alone.
                if options.durable || len >= SYNC_BEFORE_LOCK {
                    temp.sync()?;
                }
                lock = Some(WriteLock::acquire(
                    &dir,
                    &shard.lock_path(),
                    options.lock_timeout,
                )?);
            }
            publish(
                shard,
                options,
                &dir,
                &current,
                temp,
                len,
                target,
                &mut warnings,
            )
        });
        drop(dir);
        drop(lock);
        let (published, file_bytes, files) = result?;
        let outcome = WriteOutcome::Committed {
            entries: files.live_count(),
            file_bytes,
            published,
            dropped,
            warnings,
        };
        Ok((outcome, files))
    }

    /// Removes the shard's files (under the lock); the temp file is dropped unused.
    ///
    /// The shard file goes first: without it the shard reads as empty whatever delta remains
    /// (the state being committed), and the next write removes that delta. The other order
    /// would let a crash between the two unlinks expose the base without its delta, an older
    /// state that was never committed. Once the shard file is gone the write has happened: a
    /// delta that cannot be removed (a directory at its name, a file not ours to remove) is a
    /// warning in the outcome, and readers ignore it (a delta whose base is gone is unused).
    pub fn remove_files(self) -> Result<(WriteOutcome, Arc<ShardFiles>)> {
        let Transaction {
            lock,
            shard,
            options,
            dir,
            temp,
            mut warnings,
            ..
        } = self;
        let result = (|| {
            sweep_stale_temps(&dir, shard.path(), &temp.path, &mut warnings);
            let path = shard.path();
            let removed = match dir.unlink(file_name(path)) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io("removing", path, e)),
            };
            remove_old_delta(&dir, &shard.delta_path(), &mut warnings);
            if removed && options.durable {
                sync_dir_after_commit(&dir, &mut warnings);
            }
            let policy = options.read_policy();
            let missing = Loaded::empty(crate::Health::Missing, None, policy);
            let files = Arc::new(ShardFiles::base_only(Arc::new(missing), None, None));
            Ok((removed, files))
        })();
        drop(temp);
        drop(lock);
        let (removed, files) = result?;
        let outcome = if removed {
            WriteOutcome::Committed {
                entries: 0,
                file_bytes: 0,
                published: Published::Removed,
                dropped: Vec::new(),
                warnings,
            }
        } else {
            WriteOutcome::Unchanged
        };
        Ok((outcome, files))
    }
}

/// Files at least this large are written back before the lock is taken (durable or not): on
/// ext4, renaming a file over another starts the writeback of its data (`auto_da_alloc`), which
/// under the lock would keep other writers waiting for it (280 ms for 1 GiB).
const SYNC_BEFORE_LOCK: u64 = 8 << 20;

/// Completes the new file: sorts the slots, writes the tables, the root and the trailer, checks
/// the size limit and patches the preamble. Returns the file's length. Needs no lock: for a
/// delta, `current` only names the base it extends.
fn finish(
    options: &Options,
    current: &ShardFiles,
    temp: &TempFile,
    builder: Builder,
    target: Target,
) -> Result<u64> {
    let Builder {
        encoder,
        mut slots,
        value_bytes,
        oldest_generation,
        ..
    } = builder;
    slots.sort_unstable_by_key(|s| s.hash);
    let summary = Summary {
        build_time_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        value_bytes,
        oldest_generation,
        shard_id: new_shard_id(),
        base_id: match target {
            Target::Delta => current.base.header.shard_id,
            Target::Base => 0,
        },
    };
    let io = |e| Error::io("writing", &temp.path, e);
    let (out, len, header) = encoder.finish(&slots, &summary).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    drop(file);
    let max = options.max_size;
    if len > max {
        return Err(Error::TooLarge { size: len, max });
    }
    format::patch_header(&temp.file, &header).map_err(io)?;
    Ok(len)
}

/// Makes the finished file (of `len` bytes) durable unless it already is, and renames it into
/// place; returns which file was published, its size and the new view of the shard's files
/// (for the `Shard` to install). Runs under the lock. The temp file is dropped (unlinked if it
/// was not renamed) before this returns, so before the caller releases the lock.
///
/// Everything before the rename can fail the write (the old shard is then untouched); nothing
/// after it does: the write is committed, and a clean-up that fails is a warning.
#[allow(clippy::too_many_arguments)] // the write's parts, each used once
fn publish(
    shard: &ShardPaths,
    options: &Options,
    dir: &ShardDir,
    current: &ShardFiles,
    mut temp: TempFile,
    len: u64,
    target: Target,
    warnings: &mut Vec<String>,
) -> Result<(Published, u64, Arc<ShardFiles>)> {
    let durable = options.durable;
    if durable && !temp.synced {
        temp.sync()?;
    }
    let delta_path = shard.delta_path();
    let destination = match target {
        Target::Base => shard.path().to_path_buf(),
        Target::Delta => delta_path.clone(),
    };
    if target == Target::Base {
        // Writing a base costs O(shard) anyway: the moment to sweep the directory for temp
        // files under names this version does not use (see `TempFile`).
        sweep_stale_temps(dir, shard.path(), &temp.path, warnings);
    }
    // A delta written without fsync replaces a regular file by exchange (see
    // `TempFile::publish`); losing it to a power failure loses only the recent small writes.
    // A base keeps the rename, and with it ext4's safeguard for the whole cache.
    let exchange = !durable && target == Target::Delta && current.delta_identity.is_some();
    temp.publish(&destination, exchange)?;
    // Committed: from here on nothing fails the write.
    if target == Target::Base {
        // The new base holds the delta's entries; the old delta no longer matches it (readers
        // ignore a delta whose base_id is not the base's), so failing to remove it only leaves
        // a file behind.
        remove_old_delta(dir, &delta_path, warnings);
    }
    if durable {
        sync_dir_after_commit(dir, warnings);
    }
    let policy = options.read_policy();
    // (0, 0) if fstat fails: no file on disk has it, so the next snapshot maps the files anew.
    let identity = temp
        .file
        .metadata()
        .map_or((0, 0), |meta| (meta.dev(), meta.ino()));
    let loaded = Loaded::from_trusted_file(&temp.file, len, identity, policy);
    let files = match target {
        Target::Base => ShardFiles::base_only(Arc::new(loaded), None, None),
        Target::Delta => ShardFiles::pair(Arc::clone(&current.base), loaded),
    };
    drop(temp);
    let published = match target {
        Target::Base => Published::Base,
        Target::Delta => Published::Delta,
    };
    Ok((published, len, Arc::new(files)))
}

/// Removes the delta file a new base replaced (or `clear` removed the base of). The write is
/// committed already: a failure is a warning.
fn remove_old_delta(dir: &ShardDir, delta_path: &Path, warnings: &mut Vec<String>) {
    match dir.unlink(file_name(delta_path)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warnings.push(format!(
            "the write was committed, but the old delta file {} could not be removed ({e}); \
             readers ignore it (it does not belong to the new shard file); remove it by hand",
            delta_path.display()
        )),
    }
}

/// Syncs the directory after a committed rename; a failure means the write may not survive a
/// power loss, which is a warning (the write is visible and will not be undone).
fn sync_dir_after_commit(dir: &ShardDir, warnings: &mut Vec<String>) {
    if let Err(e) = dir.sync() {
        warnings.push(format!(
            "the write was committed, but it may not survive a power loss: syncing directory \
             {}: {e}",
            dir.path.display()
        ));
    }
}

/// The new file of a write, under a temp name in the shard's directory; unlinked on drop unless
/// it was renamed into place.
///
/// The name is fixed, `.<name>.tmp`: temp files exist only under the lock, so at most one write
/// owns it, and a file of ours found there when the lock is taken was left by a writer that
/// died. It is unlinked (never truncated: it may be a published file a reader still maps) and
/// created anew, so every write removes what a killed writer left, in one `unlink` instead of a
/// directory scan.
///
/// A writer never depends on a name another user can take: when the fixed name holds anything
/// that is not a regular file of ours (another user's file planted in a shared sticky
/// directory, a directory), it is left alone and the write creates a fresh random name
/// `.<name>.<random>.tmp` with `O_EXCL`. Random names are swept whenever a base is written,
/// skipping files that are not ours, so ours go away eventually and others' never block a write.
///
/// The file's mode is set to 0600 after creation (`fchmod`), whatever the umask.
struct TempFile {
    dir: Arc<ShardDir>,
    path: PathBuf,
    file: File,
    /// False once the name no longer holds a file of ours to remove.
    linked: bool,
    /// True once its data was synced (`fdatasync`) complete.
    synced: bool,
    /// For a random name: a `flock` on the file, held while it is being written, which tells a
    /// sweep that a live writer owns it (a bulk write builds it without the shard's lock).
    _owned: Option<Flock<File>>,
}

/// The file name of one of the shard's paths (all of which have one).
fn file_name(path: &Path) -> &OsStr {
    path.file_name().unwrap_or_default()
}

impl TempFile {
    fn create(dir: &Arc<ShardDir>, shard: &Path, warnings: &mut Vec<String>) -> Result<TempFile> {
        let name = file_name(shard);
        let fixed = names::fixed_temp(name);
        let create =
            |n: &OsStr| dir.open_file(n, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, 0o600);
        // Usually nothing is there: try first, unlink what a dead writer left only if needed,
        // and only if it is a file of ours.
        let mut opened = create(&fixed);
        if matches!(&opened, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists)
            && is_own_file(dir, &fixed)
            && dir.unlink(&fixed).is_ok()
        {
            opened = create(&fixed);
        }
        let (file, chosen) = match opened {
            Ok(file) => (file, fixed),
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(
                    "creating temporary file",
                    dir.path.join(&fixed),
                    e,
                ));
            }
            // Not ours to remove: a fresh name, O_EXCL.
            Err(_) => {
                sweep_stale_temps(dir, shard, Path::new(&fixed), warnings);
                return Self::create_random(dir, shard);
            }
        };
        let temp = TempFile {
            dir: Arc::clone(dir),
            path: dir.path.join(&chosen),
            file,
            linked: true,
            synced: false,
            _owned: None,
        };
        repair_mode(&temp.file, 0o600, &temp.path)?;
        Ok(temp)
    }

    /// A temp file under a fresh random name `.<name>.XXXXXX.tmp` (`O_EXCL`), `flock`ed for as
    /// long as it lives, so that a sweep by a writer holding the shard's lock skips it. Needs
    /// no lock: a bulk write builds its file this way while other writers go on.
    fn create_random(dir: &Arc<ShardDir>, shard: &Path) -> Result<TempFile> {
        let name = file_name(shard);
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL;
        for _ in 0..100 {
            let candidate = random_temp_name(name);
            let file = match dir.open_file(&candidate, flags, 0o600) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("creating temporary file in", &dir.path, e)),
            };
            let path = dir.path.join(&candidate);
            let mut temp = TempFile {
                dir: Arc::clone(dir),
                path,
                file,
                linked: true,
                synced: false,
                _owned: None,
            };
            let dup = temp
                .file
                .try_clone()
                .map_err(|e| Error::io("duplicating descriptor of", &temp.path, e))?;
            // A sweep may have locked and unlinked the new file between its creation and this
            // flock: then the name no longer holds it, and another name is tried.
            let Ok(owned) = Flock::lock(dup, FlockArg::LockExclusiveNonblock) else {
                temp.linked = false;
                continue;
            };
            let ino = temp.file.metadata().map(|m| m.ino()).ok();
            if dir.stat(&candidate).ok().map(|st| st.st_ino) != ino {
                temp.linked = false;
                continue;
            }
            temp._owned = Some(owned);
            repair_mode(&temp.file, 0o600, &temp.path)?;
            return Ok(temp);
        }
        Err(Error::io(
            "creating temporary file in",
            &dir.path,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ))
    }

    /// Syncs the file's data (`fdatasync`); called once it is complete.
    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing", &self.path, e))?;
        self.synced = true;
        Ok(())
    }

    /// Renames the file over `destination` (a name in the same directory).
    ///
    /// With `exchange`, swaps it with the file at `destination` instead (`RENAME_EXCHANGE`),
    /// where the system supports that and `destination` exists: the old file then sits under
    /// the temp name, and dropping `self` unlinks it. Readers see the old file or the new one
    /// at `destination`, exactly as with a rename. The difference is ext4's: a rename over an
    /// existing file makes it allocate the new file's blocks and start writing them back
    /// (`auto_da_alloc`, so that an unsynced replacement survives a power loss more often); an
    /// exchange does not, so a small file replaced again soon after never reaches the disk.
    /// Only for files whose loss on power failure is acceptable.
    fn publish(&mut self, destination: &Path, exchange: bool) -> Result<()> {
        let (from, to) = (file_name(&self.path), file_name(destination));
        if exchange
            && self
                .dir
                .exchange(from, to)
                .map_err(|e| Error::io("exchanging new shard with", destination, e))?
        {
            return Ok(());
        }
        self.dir
            .rename(from, to)
            .map_err(|e| Error::io("renaming new shard over", destination, e))?;
        self.linked = false;
        Ok(())
    }
}

/// `.<name>.XXXXXX.tmp` with six random alphanumerics.
fn random_temp_name(name: &OsStr) -> OsString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bits = new_shard_id();
    let mut s = names::temp_prefix(name);
    let random: String = (0..names::RANDOM_LEN)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
            bits /= ALPHABET.len() as u64;
            c
        })
        .collect();
    s.push(random);
    s.push(names::TEMP_SUFFIX);
    s
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.linked {
            let _ = self.dir.unlink(file_name(&self.path));
        }
    }
}

/// True when `name` in `dir` is a regular file owned by the effective user (`lstat`): the only
/// kind of file a writer ever removes from the shard's directory.
fn is_own_file(dir: &ShardDir, name: &OsStr) -> bool {
    dir.stat(name).is_ok_and(|st| {
        (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG
            && st.st_uid == nix::unistd::geteuid().as_raw()
    })
}

/// Removes every temp file of the shard at `path` but `keep` (the caller's own): left by writers
/// that died mid-write. Only called under the lock; a bulk write that builds its file without
/// the lock holds a `flock` on it, and such a file is skipped.
///
/// Only regular files owned by the effective user are removed: a file another user planted
/// under such a name in a shared directory is not ours to remove and is skipped, as is a
/// directory. A removal that fails anyway is a warning, never a failed write: a stale temp file
/// costs only its space.
fn sweep_stale_temps(dir: &ShardDir, path: &Path, keep: &Path, warnings: &mut Vec<String>) {
    let shard = file_name(path);
    let keep = keep.file_name();
    let names = match dir.names() {
        Ok(names) => names,
        Err(e) => {
            warnings.push(format!(
                "could not list {} for stale temporary files: {e}",
                dir.path.display()
            ));
            return;
        }
    };
    for name in names {
        if Some(name.as_os_str()) == keep
            || !names::is_temp_name(shard, &name)
            || !is_own_file(dir, &name)
        {
            continue;
        }
        // A bulk write building its file without the shard's lock holds a flock on it: live,
        // not stale. The flock taken here is held across the unlink, so the writer's own check
        // (its name still holds its file) sees the removal if it raced this.
        let Ok(file) = dir.open_file(&name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) else {
            continue;
        };
        let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        match dir.unlink(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!(
                "could not remove stale temporary file {}: {e}",
                dir.path.join(&name).display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &Path) -> Arc<ShardDir> {
        Arc::new(ShardDir::create(path).unwrap())
    }

    #[test]
    fn a_shard_sweeps_only_its_own_temp_names() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("a");
        let names = [
            (".a.tmp", true),
            (".a.Xy12Zq.tmp", true),
            (".a.b.tmp", false),        // shard a.b's fixed temp
            (".a.b.Xy12Zq.tmp", false), // shard a.b's random temp
            (".a.Xy1.tmp", false),
            (".a.Xy12-q.tmp", false),
            ("a.Xy12Zq.tmp", false),
        ];
        for (name, _) in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let keep = dir.path().join(".a.keepme.tmp");
        let mut warnings = Vec::new();
        sweep_stale_temps(&open_dir(dir.path()), &shard, &keep, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        for (name, swept) in names {
            assert_eq!(!dir.path().join(name).exists(), swept, "{name}");
        }
    }

    #[test]
    fn exchange_swaps_two_files_and_declines_a_missing_target() {
        let dir = tempfile::tempdir().unwrap();
        let handle = open_dir(dir.path());
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"new").unwrap();
        let missing = dir.path().join("missing");
        assert!(
            !handle.exchange("a".as_ref(), "missing".as_ref()).unwrap(),
            "nothing to swap with"
        );
        assert_eq!(fs::read(&a).unwrap(), b"new", "left as it was");
        assert!(!missing.exists());

        fs::write(&b, b"old").unwrap();
        if handle.exchange("a".as_ref(), "b".as_ref()).unwrap() {
            assert_eq!(fs::read(&b).unwrap(), b"new");
            assert_eq!(fs::read(&a).unwrap(), b"old");
        } else {
            // A system that cannot exchange: nothing moved, the caller renames instead.
            assert_eq!(fs::read(&b).unwrap(), b"old");
        }
    }

    #[test]
    fn publish_by_exchange_leaves_the_old_file_at_the_temp_name_until_drop() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.shard");
        let delta = dir.path().join("s.shard.delta");
        fs::write(&delta, b"old delta").unwrap();
        let mut temp = TempFile::create(&open_dir(dir.path()), &shard, &mut Vec::new()).unwrap();
        assert_eq!(temp.path, dir.path().join(".s.shard.tmp"));
        std::io::Write::write_all(&mut temp.file, b"new delta").unwrap();
        temp.publish(&delta, true).unwrap();
        assert_eq!(fs::read(&delta).unwrap(), b"new delta");
        let path = temp.path.clone();
        drop(temp);
        assert!(!path.exists(), "the old file is unlinked");
        // Without an old file to swap with, publishing renames.
        fs::remove_file(&delta).unwrap();
        let mut temp = TempFile::create(&open_dir(dir.path()), &shard, &mut Vec::new()).unwrap();
        std::io::Write::write_all(&mut temp.file, b"first").unwrap();
        temp.publish(&delta, true).unwrap();
        drop(temp);
        assert_eq!(fs::read(&delta).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.shard.delta"]);
    }
}
