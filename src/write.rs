//! The write protocol, which exists once: every write goes through a [`Transaction`].
//!
//! 1. create the shard's directory if needed (0700) and refuse it if others could write it;
//! 2. take an exclusive `flock` on the sidecar `<shard>.lock`, waiting at most the lock timeout;
//! 3. remove temporary files left by crashed writers (temp files exist only under the lock, so
//!    any found now is stale);
//! 4. re-read the current shard under the lock, so no concurrent write is lost;
//! 5. stream the new shard into a uniquely named temp file (0600) in the same directory;
//! 6. fsync it, rename it over the shard, fsync the directory (fsyncs skipped when durability is
//!    off); the temp file is removed on every error path.
//!
//! `put_one`, `merge_in`, `replace_all` and the bulk writer differ only in which entries they
//! add and whether they keep the current ones; `remove` keeps all but some.

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use nix::fcntl::{Flock, FlockArg};
use tempfile::NamedTempFile;

use crate::error::{Error, Result};
use crate::format::{self, Encoder, Record, Slot, Summary};
use crate::map::{self, Loaded};
use crate::shard::Shard;
use crate::trust;

/// The producer recorded when neither the options nor an existing shard name one.
pub const DEFAULT_PRODUCER: &str = "warmshard";

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum WriteOutcome {
    /// A new shard file was committed.
    Committed {
        /// Entries in the new shard.
        entries: u64,
        /// Size of the new shard file.
        file_bytes: u64,
    },
    /// Nothing needed to change (e.g. removing absent keys); the file was not rewritten.
    Unchanged,
    /// The cache is disabled: nothing was written.
    Disabled,
}

/// An exclusive `flock` on a shard's lock file, released on drop.
pub(crate) struct WriteLock {
    _flock: Flock<File>,
}

impl WriteLock {
    /// Takes the lock, polling with capped exponential backoff until `timeout` has passed.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<WriteLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("opening lock file", path, e))?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(WriteLock { _flock: flock }),
                Err((f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => file = f,
                Err((_, errno)) => return Err(Error::io("locking", path, errno.into())),
            }
            let waited = started.elapsed();
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
            self.slots[i as usize].offset = offset;
            return Ok(());
        }
        let i = u32::try_from(self.slots.len())
            .map_err(|_| Error::InvalidInput("a shard holds at most 2^32 - 1 entries".into()))?;
        self.slots.push(Slot { hash, offset });
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
pub(crate) struct Transaction<'s> {
    shard: &'s Shard,
    _lock: WriteLock,
    pub current: Arc<Loaded>,
    temp: NamedTempFile,
    builder: Builder,
}

impl<'s> Transaction<'s> {
    /// Steps 1–5 of the protocol: directory, lock, stale temp cleanup, re-read, temp file.
    pub fn begin(shard: &'s Shard) -> Result<Transaction<'s>> {
        let path = shard.path();
        let dir = map::parent_dir(path);
        ensure_private_dir(dir)?;
        let lock = WriteLock::acquire(&shard.lock_path(), shard.options().lock_timeout)?;
        remove_stale_temps(dir, path)?;
        let current = Arc::new(Loaded::open(path, shard.options().read_policy())?);
        let temp = tempfile::Builder::new()
            .prefix(&temp_prefix(path))
            .suffix(TEMP_SUFFIX)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating temporary file in", dir, e))?;
        let out = temp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io("duplicating descriptor of", temp.path(), e))?;
        let encoder = Encoder::new(BufWriter::with_capacity(1 << 20, out))
            .map_err(|e| Error::io("writing", temp.path(), e))?;
        Ok(Transaction {
            shard,
            _lock: lock,
            current,
            temp,
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

    fn write_error(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            return Error::InvalidInput(e.to_string());
        }
        Error::io("writing", self.temp.path(), e)
    }

    /// Adds or replaces one entry, written under the handle's generation.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let generation = self.shard.options().generation;
        let offset = self
            .builder
            .encoder
            .write_record(generation, key, value)
            .map_err(|e| self.write_error(e))?;
        self.check_size()?;
        self.builder.index(key, value.len(), generation, offset)
    }

    /// Copies every current entry not already added, not of an older generation, not
    /// rejected by `drop_key` and whose value still matches its checksum, verbatim (checksum
    /// included). A value that fails its checksum is dropped rather than carried into every
    /// later shard: a cache entry that went bad reads as a miss from then on. Only records a
    /// lookup of their key would find are kept: the checksum does not cover the key, so a
    /// record whose key bytes changed (and no longer match its slot) must not become the entry
    /// of the key it now spells.
    pub fn keep_current(&mut self, drop_key: impl Fn(&[u8]) -> bool) -> Result<()> {
        let current = Arc::clone(&self.current);
        let floor = self.shard.options().generation;
        let bytes = current.bytes();
        let served = |record: &Record<'_>| {
            current
                .layout
                .find(bytes, record.key)
                .is_some_and(|found| std::ptr::eq(found.raw.as_ptr(), record.raw.as_ptr()))
        };
        for (_, _, record) in current.layout.slots(bytes) {
            let Some(record) = record else { continue };
            if record.generation < floor
                || drop_key(record.key)
                || self.builder.contains(record.key)
                || format::value_checksum(record.value) != record.checksum
                || !served(&record)
            {
                continue;
            }
            self.copy(&record)?;
        }
        Ok(())
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
        let max = self.shard.options().max_size;
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
        Ok(())
    }

    /// Number of entries the new shard will hold.
    pub fn len(&self) -> usize {
        self.builder.slots.len()
    }

    /// Step 6: finishes the file, makes it durable and renames it over the shard.
    pub fn commit(self) -> Result<WriteOutcome> {
        let Transaction {
            shard,
            _lock,
            current,
            temp,
            builder,
        } = self;
        let Builder {
            encoder,
            mut slots,
            value_bytes,
            oldest_generation,
            ..
        } = builder;
        slots.sort_unstable_by_key(|s| s.hash);
        let producer = match &shard.options().producer {
            Some(p) => p.as_str(),
            None if current.health.is_valid() && !current.producer().is_empty() => {
                current.producer()
            }
            None => DEFAULT_PRODUCER,
        };
        let summary = Summary {
            producer,
            build_time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            value_bytes,
            oldest_generation,
        };
        let io = |e| Error::io("writing", temp.path(), e);
        let (out, len) = encoder.finish(&slots, &summary).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        drop(file);
        let max = shard.options().max_size;
        if len > max {
            return Err(Error::TooLarge { size: len, max });
        }
        format::patch_file_len(temp.as_file(), len).map_err(io)?;
        let durable = shard.options().durable;
        if durable {
            temp.as_file().sync_data().map_err(io)?;
        }
        let path = shard.path();
        let file = temp
            .persist(path)
            .map_err(|e| Error::io("renaming new shard over", path, e.error))?;
        let dir = map::parent_dir(path);
        if durable {
            sync_dir(dir)?;
        }
        let meta = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?;
        let policy = shard.options().read_policy();
        let loaded = Loaded::from_trusted_file(&file, len, (meta.dev(), meta.ino()), policy);
        let entries = slots.len() as u64;
        shard.install(Arc::new(loaded));
        Ok(WriteOutcome::Committed {
            entries,
            file_bytes: len,
        })
    }

    /// Removes the shard file (under the lock); the temp file is dropped unused.
    pub fn remove_file(self) -> Result<WriteOutcome> {
        let path = self.shard.path();
        let outcome = match fs::remove_file(path) {
            Ok(()) => {
                if self.shard.options().durable {
                    sync_dir(map::parent_dir(path))?;
                }
                WriteOutcome::Committed {
                    entries: 0,
                    file_bytes: 0,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => WriteOutcome::Unchanged,
            Err(e) => return Err(Error::io("removing", path, e)),
        };
        let policy = self.shard.options().read_policy();
        self.shard.install(Arc::new(Loaded::empty(
            crate::Health::Missing,
            None,
            policy,
        )));
        Ok(outcome)
    }
}

const TEMP_SUFFIX: &str = ".tmp";

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Creates `dir` and its missing parents with mode 0700 and checks that others cannot write it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("creating directory", dir, e))?;
            fs::metadata(dir).map_err(|e| Error::io("reading metadata of", dir, e))?
        }
        Err(e) => return Err(Error::io("reading metadata of", dir, e)),
    };
    if !meta.is_dir() {
        return Err(Error::NotAFile {
            path: dir.to_path_buf(),
            kind: "non-directory where the shard's directory should be",
        });
    }
    trust::check_dir(&meta).map_err(|reason| Error::Untrusted {
        path: dir.to_path_buf(),
        reason,
    })
}

/// Removes temp files of `path`'s shard left by writers that died mid-write. Only called under
/// the lock, when no live writer can own a temp file.
fn remove_stale_temps(dir: &Path, path: &Path) -> Result<()> {
    let prefix = temp_prefix(path);
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
            let stale = entry.path();
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing stale temporary file", stale, e)),
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}
