//! [`Options`]: how a [`Shard`](crate::Shard) reads and writes.

use std::time::Duration;

use crate::map::ReadPolicy;

/// Settings for [`Shard::open_with`](crate::Shard::open_with). Built with chained setters:
///
/// ```
/// use std::time::Duration;
/// let options = warmshard::Options::new()
///     .producer("myshell 1.4.2")
///     .generation(1_700_000_000)
///     .lock_timeout(Duration::from_secs(2))
///     .durable(false);
/// assert_eq!(options.lock_timeout, Duration::from_secs(2));
/// ```
///
/// The fields are public for reading; new ones may be added (the struct is
/// `#[non_exhaustive]`), so build it with [`Options::new`] and the setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Producer string required of shards read, and written into new ones. `None` accepts any
    /// producer and keeps the existing one on write (or writes `"warmshard"`).
    pub producer: Option<String>,
    /// Generation of this writer and floor for readers: entries written under an older
    /// generation read as misses and are dropped by the next write. Default 0.
    pub generation: u64,
    /// Largest shard file that is read (a larger one reads as empty) or written (a larger result
    /// is an error). Default 4 GiB. A shard over the limit is not written over by a write that
    /// keeps entries: that write fails with
    /// [`Error::CurrentUnreadable`](crate::Error::CurrentUnreadable).
    pub max_size: u64,
    /// How long a write waits for another writer's lock before failing with
    /// [`Error::LockTimeout`](crate::Error::LockTimeout). Default 10 s. Zero means one try,
    /// never waiting: a busy lock fails the write at once with
    /// [`Error::LockBusy`](crate::Error::LockBusy) (what
    /// [`Shard::try_put_one`](crate::Shard::try_put_one) does).
    pub lock_timeout: Duration,
    /// Whether writes fsync the new file and the directory before returning. Default true.
    pub durable: bool,
    /// Whether the cache is used at all. When false, reads miss and writes return
    /// [`WriteOutcome::Disabled`](crate::WriteOutcome::Disabled) without touching the disk.
    pub enabled: bool,
    /// Whether every `get` checks the value's stored checksum (a mismatch reads as a miss).
    /// Default false: [`Snapshot::verify`](crate::Snapshot::verify) checks them all on demand.
    pub verify_values: bool,
    /// Whether opening pre-faults the whole mapping (`MAP_POPULATE`). Off by default: the
    /// startup path touches only the pages a lookup needs. Turn it on for scans that read every
    /// entry (as `hash-tree` does), to replace thousands of page faults with one pass.
    pub populate: bool,
}

/// Default for [`Options::max_size`]: 4 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 4 << 30;
/// Default for [`Options::lock_timeout`]: 10 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Options {
    fn default() -> Self {
        Options {
            producer: None,
            generation: 0,
            max_size: DEFAULT_MAX_SIZE,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            durable: true,
            enabled: true,
            verify_values: false,
            populate: false,
        }
    }
}

impl Options {
    /// The defaults: any producer, generation 0, 4 GiB limit, 10 s lock timeout, durable.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults, with [`enabled`](Options::enabled) set from the `WARMSHARD` environment
    /// variable (see [`enabled_by_env`](crate::enabled_by_env)).
    pub fn from_env() -> Self {
        Self::default().enabled(crate::location::enabled_by_env())
    }

    /// Requires and writes this producer string, e.g. `"myshell 1.4.2"`.
    pub fn producer(mut self, producer: impl Into<String>) -> Self {
        self.producer = Some(producer.into());
        self
    }

    /// Sets the generation (e.g. the mtime of the program's own binary).
    pub fn generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Sets the largest shard size read or written, in bytes.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    /// Sets how long a write waits for the lock; [`Duration::ZERO`] never waits (see
    /// [`Options::lock_timeout`](Options#structfield.lock_timeout)).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Turns fsync on (default) or off. Off is for caches you can afford to lose on power loss:
    /// a crash of the process still never leaves a partial file. After a power loss the small
    /// writes kept in the delta file are the first to go (the shard then reads as its last
    /// base, and the next write starts a new delta); see the `write` module for why.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Enables (default) or disables the cache.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Checks each value's checksum on every `get`.
    pub fn verify_values(mut self, verify: bool) -> Self {
        self.verify_values = verify;
        self
    }

    /// Pre-faults the whole mapping at open (for full scans).
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    pub(crate) fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            producer: self.producer.clone(),
            max_size: self.max_size,
            min_generation: self.generation,
            verify_values: self.verify_values,
            populate: self.populate,
        }
    }
}
