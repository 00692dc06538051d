//! Keeping a [`PathCache`] bounded: pruning what is stale, forgetting what is old, and making
//! room when it is full.
//!
//! A path cache only grows as files come and go, so three rules keep it in check:
//!
//! - **stale** ([`PruneOptions::stale`]): an entry whose file is gone, or whose file's stamp no
//!   longer matches, can never be a hit again: it is dropped. Its key is `lstat`ed as a path (a
//!   relative key resolves against the current directory, as it did when it was looked up).
//! - **age** ([`PruneOptions::max_age`]): an entry not rewritten for that long is dropped (as
//!   heph's walk cache drops entries after 14 days). Entries carry the hour they were written;
//!   those of an older version, without one, count as oldest.
//! - **size** ([`PruneOptions::max_bytes`]): while the cache's files would pass that many bytes,
//!   the entries written longest ago are dropped (least recently *written*, not used: tracking
//!   use would mean writing on the read path, which stays lock-free and write-free). Entries
//!   written in the same hour go in key order.
//!
//! Values that do not decode as a path entry are left alone. The judgement by `lstat` is made
//! before the write lock is taken; under the lock, an entry is dropped only if its value is still
//! the one judged, so an entry another process rewrote meanwhile is kept, and nothing written
//! concurrently is lost.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::cache::{PathCache, PathEntry};
use super::stamp::Stamp;
use crate::{BulkMode, Error, Health, Result, WriteOutcome};

/// What [`PathCache::prune`] drops.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Drop entries whose file is gone or changed (default: true).
    pub stale: bool,
    /// Drop entries not rewritten for longer than this.
    pub max_age: Option<Duration>,
    /// Drop the entries written longest ago until the cache's files fit in this many bytes.
    pub max_bytes: Option<u64>,
}

impl PruneOptions {
    /// Drops stale entries only.
    pub fn stale() -> PruneOptions {
        PruneOptions {
            stale: true,
            ..PruneOptions::default()
        }
    }

    /// Also drops entries not rewritten for longer than `age`.
    pub fn max_age(mut self, age: Duration) -> PruneOptions {
        self.max_age = Some(age);
        self
    }

    /// Also drops the entries written longest ago until the cache fits in `bytes`.
    pub fn max_bytes(mut self, bytes: u64) -> PruneOptions {
        self.max_bytes = Some(bytes);
        self
    }
}

/// What a prune did.
#[derive(Debug)]
#[non_exhaustive]
pub struct PruneReport {
    /// Entries in the cache before.
    pub examined: usize,
    /// Dropped because their file is gone or is no longer a regular file.
    pub gone: usize,
    /// Dropped because their file's stamp changed.
    pub changed: usize,
    /// Dropped for their age.
    pub old: usize,
    /// Dropped to fit the size bound (the ones written longest ago).
    pub for_size: usize,
    /// Entries kept.
    pub kept: usize,
    /// The write (`Unchanged` when nothing was dropped).
    pub outcome: WriteOutcome,
    /// Wall time.
    pub elapsed: Duration,
}

impl PruneReport {
    /// Entries dropped, all reasons together.
    pub fn dropped(&self) -> usize {
        self.gone + self.changed + self.old + self.for_size
    }
}

/// Why an entry is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Gone,
    Changed,
}

/// Bytes an entry costs in the shard besides its key and value (slot, record header, checksum;
/// an estimate, corrected by the shard's real size, see `drop_for_size`).
const ENTRY_OVERHEAD: u64 = 32;

impl PathCache {
    /// Drops what `options` says (see the module docs) in one rewrite of the cache, and reports
    /// how many entries went and why.
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use warmshard::paths::{PathCache, PruneOptions};
    /// let cache = PathCache::open(dir.path().join("c.shard"), Default::default())?;
    /// let file = dir.path().join("gone.py");
    /// std::fs::write(&file, "x").unwrap();
    /// cache.get_or_compute(&file, "bytecode", |src| src.to_vec())?;
    /// std::fs::remove_file(&file).unwrap();
    /// let report = cache.prune(&PruneOptions::stale())?;
    /// assert_eq!((report.gone, report.kept), (1, 0));
    /// # Ok(()) }
    /// ```
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let started = Instant::now();
        let view = self.view();
        let snapshot = view.snapshot();
        let examined = snapshot.len();
        // Judged without the lock: one `lstat` per entry.
        let mut judged: HashMap<Vec<u8>, (Vec<u8>, Verdict)> = HashMap::new();
        if options.stale {
            for (key, value) in snapshot.iter() {
                let Some(entry) = PathEntry::decode(value) else {
                    continue;
                };
                let path = std::path::Path::new(std::ffi::OsStr::from_bytes(key));
                let verdict = match Stamp::lstat(path) {
                    Ok(stamp) if stamp == entry.stamp => continue,
                    Ok(stamp) if stamp.is_file() => Verdict::Changed,
                    Ok(_) => Verdict::Gone,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
                    {
                        Verdict::Gone
                    }
                    // Unreadable (permissions, I/O): no proof it is stale; keep it.
                    Err(_) => continue,
                };
                judged.insert(key.to_vec(), (value.to_vec(), verdict));
            }
        }
        if judged.is_empty() && options.max_age.is_none() && options.max_bytes.is_none() {
            return Ok(PruneReport {
                examined,
                gone: 0,
                changed: 0,
                old: 0,
                for_size: 0,
                kept: examined,
                outcome: WriteOutcome::Unchanged,
                elapsed: started.elapsed(),
            });
        }
        drop(view);
        self.rewrite(options, &judged, None, started)
    }

    /// Rewrites the cache under its lock without the entries `judged` stale (if their value is
    /// unchanged), too old or over the size bound, plus `extra` (an entry to add, which is
    /// never dropped).
    pub(super) fn rewrite(
        &self,
        options: &PruneOptions,
        judged: &HashMap<Vec<u8>, (Vec<u8>, Verdict)>,
        extra: Option<(&[u8], &[u8])>,
        started: Instant,
    ) -> Result<PruneReport> {
        let shard = self.shard();
        // The writer holds the lock from here: the snapshot below is what the write replaces.
        let mut writer = shard.bulk_writer(BulkMode::Replace)?;
        let snapshot = shard.snapshot();
        match snapshot.health() {
            Health::Valid | Health::Missing | Health::EmptyFile => {}
            // WARMSHARD=0: nothing is read or written.
            Health::Disabled => {
                return Ok(PruneReport {
                    examined: 0,
                    gone: 0,
                    changed: 0,
                    old: 0,
                    for_size: 0,
                    kept: 0,
                    outcome: WriteOutcome::Disabled,
                    elapsed: started.elapsed(),
                });
            }
            // Never rewrite over a file whose entries we could not see.
            health => {
                return Err(Error::CurrentUnreadable {
                    path: shard.path().to_path_buf(),
                    health: health.clone(),
                });
            }
        }
        let examined = snapshot.len();
        let cutoff = options
            .max_age
            .and_then(|age| SystemTime::now().checked_sub(age));
        let mut report = PruneReport {
            examined,
            gone: 0,
            changed: 0,
            old: 0,
            for_size: 0,
            kept: 0,
            outcome: WriteOutcome::Unchanged,
            elapsed: Duration::ZERO,
        };
        // (recorded, key, value) of every entry that stays so far.
        let mut kept = Vec::with_capacity(examined);
        for (key, value) in snapshot.iter() {
            if extra.is_some_and(|(k, _)| k == key) {
                continue;
            }
            if let Some((judged_value, verdict)) = judged.get(key)
                && judged_value.as_slice() == value
            {
                match verdict {
                    Verdict::Gone => report.gone += 1,
                    Verdict::Changed => report.changed += 1,
                }
                continue;
            }
            let recorded = PathEntry::decode(value).map(|e| e.recorded);
            if let (Some(cutoff), Some(recorded)) = (cutoff, recorded)
                && recorded.is_none_or(|at| at < cutoff)
            {
                report.old += 1;
                continue;
            }
            // Undecodable values are not ours to judge: they sort as newest and stay.
            let order = match recorded {
                Some(at) => at.unwrap_or(SystemTime::UNIX_EPOCH),
                None => SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX >> 2),
            };
            kept.push((order, key, value));
        }
        if let Some(max_bytes) = options.max_bytes {
            let cost =
                |key: &[u8], value: &[u8]| key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD;
            let extra_cost = extra.map_or(0, |(k, v)| cost(k, v));
            let mut total: u64 = kept.iter().map(|(_, k, v)| cost(k, v)).sum::<u64>() + extra_cost;
            if total > max_bytes {
                // Oldest first; same hour in key order.
                kept.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
                let mut first_kept = 0;
                while total > max_bytes && first_kept < kept.len() {
                    let (_, key, value) = kept[first_kept];
                    total -= cost(key, value);
                    first_kept += 1;
                }
                report.for_size = first_kept;
                kept.drain(..first_kept);
            }
        }
        report.kept = kept.len() + usize::from(extra.is_some());
        if report.dropped() == 0 && extra.is_none() {
            report.elapsed = started.elapsed();
            return Ok(report); // nothing to do: the writer is dropped, nothing is written
        }
        for (_, key, value) in kept {
            writer.add(key, value)?;
        }
        if let Some((key, value)) = extra {
            writer.add(key, value)?;
        }
        report.outcome = writer.commit()?;
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

use std::os::unix::ffi::OsStrExt;
