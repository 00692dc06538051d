//! Opening, mapping and validating a shard file: the one place with `unsafe`.
//!
//! [`Loaded`] is an immutable, validated view of one shard file (or of its absence). It is
//! built in O(1): one `open`, one `fstat`, one `stat` of the directory, one `mmap`, and rkyv's
//! `check_bytes` on the archive root (see [`crate::format`]). Nothing here trusts a byte before
//! the preamble checks and rkyv validation pass. [`ShardFiles`] pairs a base with the delta file
//! that extends it, if any.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapOptions};
use once_cell::sync::OnceCell;

use crate::dir::{Opened, ShardDir};
use crate::error::{Error, Result};
use crate::format::{self, Header, Layout, Record};
use crate::health::Health;
use crate::trust;

/// A base file and the delta file that extends it (only if the delta's `base_id` names this
/// base). Immutable once built; shared by snapshots through an `Arc`.
pub(crate) struct ShardFiles {
    pub base: Arc<Loaded>,
    pub delta: Option<Arc<Loaded>>,
    /// Why a delta file on disk was not used, when that is worth reporting (corrupt, untrusted).
    pub delta_problem: Option<Health>,
    /// Identity of the delta file on disk, used or not (so a replaced delta is noticed).
    pub delta_identity: Option<Identity>,
    /// Why the delta file could not be read for a cause other than its content (permissions,
    /// memory, the size limit): its entries are unknown, so a write that keeps the current
    /// entries must not go on (see [`Health::blocks_writes`]).
    pub delta_unreadable: Option<Health>,
    /// Something that is not a file (a directory, a FIFO) sits at the delta path: it is not
    /// ours, reads ignore it, and writes publish a base instead of renaming a delta over it.
    pub delta_squatted: bool,
    live_count: OnceCell<u64>,
}

impl ShardFiles {
    /// Opens the base at `path` and the delta at `delta_path` as one consistent pair: a state
    /// the shard was in at some instant during this call.
    ///
    /// The two opens are not atomic together, so they go in the order that makes any pair
    /// consistent without re-checking: **the delta first, then the base**. Writers keep three
    /// rules: a delta names the base that was current when it was published, a base is never
    /// published twice (each has a fresh `shard_id`), and a new base is renamed into place
    /// before the old delta is removed (a new base holds the old delta's entries). So, with the
    /// delta opened at t1 and the base at t2 > t1:
    ///
    /// - the delta names this base: that base was current from before the delta's publication
    ///   until t2, so at t1 the pair was the state;
    /// - the delta is absent, or names another (older) base: this base alone was the state
    ///   at t1 if it was already current then, or the moment it was renamed into place if that
    ///   came later (every delta on disk then named an older base).
    ///
    /// (The other order needs a `stat` of the base after a missing delta, to tell "no delta"
    /// from "a writer replaced the base and removed its delta in between".)
    pub fn open(path: &Path, delta_path: &Path, policy: &ReadPolicy) -> Result<ShardFiles> {
        let dir_path = parent_dir(path);
        let euid = nix::unistd::geteuid().as_raw();
        let empty = |health| {
            Ok(Self::base_only(
                Arc::new(Loaded::empty(health, None, policy.clone())),
                None,
                None,
            ))
        };
        match ShardDir::open(dir_path, euid) {
            Ok(Opened::Dir(dir)) => Self::open_in_as(&dir, path, delta_path, policy, euid),
            Ok(Opened::Missing) => empty(Health::DirectoryMissing {
                dir: dir_path.to_path_buf(),
            }),
            Err(Ok(refused)) => empty(Health::Untrusted {
                reason: format!("{}: {}", refused.path.display(), refused.reason),
            }),
            Err(Err(e)) => empty(Health::Unreadable {
                error: format!("opening directory {}: {e}", dir_path.display()),
            }),
        }
    }

    /// The shard's files as they are on disk now: `previous` (the view a handle saw last) if
    /// neither file was replaced since it was mapped (published files never change in place),
    /// else a fresh view, opened in `dir` when the caller holds the directory's handle.
    pub fn current(
        previous: Option<Arc<ShardFiles>>,
        dir: Option<&ShardDir>,
        paths: &crate::shard::ShardPaths,
        policy: &ReadPolicy,
    ) -> Result<Arc<ShardFiles>> {
        if let Some(previous) = previous
            && identity_on_disk(paths) == Some(previous.identity())
        {
            return Ok(previous);
        }
        let (path, delta) = (paths.path(), paths.delta_path());
        let files = match dir {
            Some(dir) => Self::open_in(dir, path, &delta, policy)?,
            None => Self::open(path, &delta, policy)?,
        };
        Ok(Arc::new(files))
    }

    /// [`open`](ShardFiles::open) in the directory `dir`, already opened and checked: both
    /// files are opened relative to that one handle.
    pub fn open_in(
        dir: &ShardDir,
        path: &Path,
        delta_path: &Path,
        policy: &ReadPolicy,
    ) -> Result<ShardFiles> {
        let euid = nix::unistd::geteuid().as_raw();
        Self::open_in_as(dir, path, delta_path, policy, euid)
    }

    /// [`open_in`](ShardFiles::open_in) for the effective uid `euid`, already known.
    fn open_in_as(
        dir: &ShardDir,
        path: &Path,
        delta_path: &Path,
        policy: &ReadPolicy,
        euid: u32,
    ) -> Result<ShardFiles> {
        let delta = Loaded::open(dir, delta_path, policy.clone(), euid);
        let base = Arc::new(Loaded::open(dir, path, policy.clone(), euid)?);
        let delta = match delta {
            Ok(delta) => delta,
            Err(Error::NotAFile { kind, .. }) => {
                let problem = Health::Corrupt {
                    reason: format!("a {kind} sits at the delta path; it is ignored"),
                };
                let mut files = Self::base_only(base, Some(problem), None);
                files.delta_squatted = true;
                return Ok(files);
            }
            Err(e) => {
                let problem = Health::Unreadable {
                    error: format!("delta file: {e}"),
                };
                let mut files = Self::base_only(base, Some(problem.clone()), None);
                files.delta_unreadable = Some(problem);
                return Ok(files);
            }
        };
        if delta.health.blocks_writes() {
            let identity = delta.identity;
            let problem = delta.health.clone();
            let mut files = Self::base_only(base, Some(problem.clone()), identity);
            files.delta_unreadable = Some(problem);
            return Ok(files);
        }
        if !base.health.is_valid() {
            return Ok(Self::base_only(base, None, delta.identity));
        }
        Ok(Self::pair(base, delta))
    }

    /// Combines `base` with `delta`, keeping the delta only if it extends this base.
    pub fn pair(base: Arc<Loaded>, delta: Loaded) -> ShardFiles {
        let identity = delta.identity;
        match &delta.health {
            Health::Missing => Self::base_only(base, None, identity),
            Health::Valid if delta.header.base_id == base.header.shard_id => ShardFiles {
                base,
                delta: Some(Arc::new(delta)),
                delta_problem: None,
                delta_identity: identity,
                delta_unreadable: None,
                delta_squatted: false,
                live_count: OnceCell::new(),
            },
            // A delta of an older base: left by a writer that folded it into a new base and died
            // before removing it. Its entries are in the base already; the next write removes it.
            Health::Valid => Self::base_only(base, None, identity),
            problem => {
                let problem = Health::Corrupt {
                    reason: format!("delta file ignored: {problem}"),
                };
                Self::base_only(base, Some(problem), identity)
            }
        }
    }

    pub fn base_only(
        base: Arc<Loaded>,
        delta_problem: Option<Health>,
        delta_identity: Option<Identity>,
    ) -> ShardFiles {
        ShardFiles {
            base,
            delta: None,
            delta_problem,
            delta_identity,
            delta_unreadable: None,
            delta_squatted: false,
            live_count: OnceCell::new(),
        }
    }

    /// The health a reader sees: the base's, unless an unusable delta file lost entries.
    pub fn health(&self) -> &Health {
        match &self.delta_problem {
            Some(problem) if self.base.health.is_valid() => problem,
            _ => &self.base.health,
        }
    }

    /// Identities of both files, to notice when either was replaced.
    pub fn identity(&self) -> FilesIdentity {
        (self.base.identity, self.delta_identity)
    }

    /// The delta's record of `key`, if the delta has one. **The delta wins over the base**: this
    /// is the one place that rule is applied; [`find`](ShardFiles::find),
    /// [`find_many`](ShardFiles::find_many) and [`records`](ShardFiles::records) all go
    /// through it. `root_len` as in [`find_archived`](ShardFiles::find_archived).
    ///
    /// The lookups are `inline(always)` down to the slot scan: a byte lookup (`root_len` 0)
    /// then compiles without the end hint's load, and `Snapshot::get` stays one function
    /// (left to the inliner, the two scans, delta's and base's, were split into calls, which
    /// cost a byte get about a quarter in the W1 bench).
    #[inline(always)]
    fn delta_record(&self, key: &[u8], root_len: usize) -> Option<Record<'_>> {
        let delta = self.delta.as_ref()?;
        delta.layout.find_archived(delta.bytes(), key, root_len)
    }

    /// Finds the newest record of `key`: the delta's if it has one, else the base's.
    #[inline(always)]
    pub fn find(&self, key: &[u8]) -> Option<Record<'_>> {
        self.find_archived(key, 0)
    }

    /// [`find`](ShardFiles::find) for a value about to be read as an rkyv archive whose root
    /// takes its last `root_len` bytes (0: a byte lookup): see
    /// [`Layout::find_archived`](crate::format::Layout::find_archived).
    #[inline(always)]
    pub fn find_archived(&self, key: &[u8], root_len: usize) -> Option<Record<'_>> {
        if let Some(newer) = self.delta_record(key, root_len) {
            return Some(newer);
        }
        self.base
            .layout
            .find_archived(self.base.bytes(), key, root_len)
    }

    /// [`find`](ShardFiles::find) for many keys: `out[i]` becomes the newest record of
    /// `keys[i]`. The base is searched as a batch (overlapping its memory accesses); the
    /// delta, small and recent, key by key.
    pub fn find_many<'a>(&'a self, keys: &[&[u8]], out: &mut Vec<Option<Record<'a>>>) {
        self.base.layout.find_many(self.base.bytes(), keys, out);
        if self.delta.is_some() {
            for (key, record) in keys.iter().zip(out.iter_mut()) {
                if let Some(newer) = self.delta_record(key, 0) {
                    *record = Some(newer);
                }
            }
        }
    }

    /// Every newest record: the delta's, then the base's not shadowed by the delta.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        let delta = self
            .delta
            .iter()
            .flat_map(|d| d.layout.slots(d.bytes()).filter_map(|(_, _, r)| r));
        let base = self
            .base
            .layout
            .slots(self.base.bytes())
            .filter_map(|(_, _, r)| r)
            .filter(move |r| self.delta_record(r.key, 0).is_none());
        delta.chain(base)
    }

    /// Distinct keys stored across both files, whatever their generation: the base's entries
    /// plus the delta's keys the base lacks.
    pub fn stored_count(&self) -> u64 {
        let base = &self.base;
        let added = self.delta.as_ref().map_or(0, |delta| {
            delta
                .layout
                .slots(delta.bytes())
                .filter_map(|(_, _, r)| r)
                .filter(|r| base.layout.find(base.bytes(), r.key).is_none())
                .count() as u64
        });
        base.layout.entry_count() + added
    }

    /// Entries that read as hits. O(1) for a lone base whose entries all pass the generation
    /// floor; otherwise counted once, lazily.
    pub fn live_count(&self) -> u64 {
        let Some(delta) = &self.delta else {
            return self.base.live_count();
        };
        let policy = &self.base.policy;
        *self.live_count.get_or_init(|| {
            if policy.all_live(&self.base.header) && policy.all_live(&delta.header) {
                return self.stored_count(); // every entry is live
            }
            self.records().filter(|r| policy.is_live(r)).count() as u64
        })
    }
}

/// What a reader requires of a shard; derived from [`Options`](crate::Options).
#[derive(Clone, Debug)]
pub(crate) struct ReadPolicy {
    pub producer: Option<String>,
    pub max_size: u64,
    pub min_generation: u64,
    pub verify_values: bool,
    pub populate: bool,
}

impl ReadPolicy {
    /// **The generation floor**, the one place it is applied: a record written under a
    /// generation older than this handle's reads as a miss (and the next write drops it).
    #[inline]
    pub fn is_live(&self, record: &Record<'_>) -> bool {
        record.generation >= self.min_generation
    }

    /// True when every record of the file with this header passes the floor (its oldest
    /// generation does), so counts need no scan.
    #[inline]
    pub fn all_live(&self, header: &Header) -> bool {
        header.oldest_generation >= self.min_generation
    }
}

/// Identity of a shard file: (device, inode). Writers always rename a new file into place, so a
/// new identity at the path means a new shard.
pub(crate) type Identity = (u64, u64);

/// Identities of a shard's base and delta files (`None` where a file is absent).
pub(crate) type FilesIdentity = (Option<Identity>, Option<Identity>);

/// A validated shard file (or an empty stand-in with the reason in `health`).
pub(crate) struct Loaded {
    map: Option<Mmap>,
    /// The open file of a view that maps nothing (an empty, oversized, corrupt or untrusted
    /// file): it keeps the inode, and so `identity`, from being reused by a new file while this
    /// view is current, as a mapping does for a valid view. Without it a file system that hands
    /// a freed inode number to the next new file (ext4 does) makes a replaced file look
    /// unchanged, and the handle reads as empty until the file changes again.
    _pin: Option<File>,
    pub identity: Option<Identity>,
    pub header: Header,
    pub layout: Layout,
    pub health: Health,
    pub validation_time: Duration,
    pub policy: ReadPolicy,
    /// Entries of a valid file this view ignores as a whole (another producer's): what a
    /// write over it drops.
    pub ignored_entries: Option<u64>,
    live_count: OnceCell<u64>,
}

impl Loaded {
    /// A view with no entries, for a missing, disabled or rejected shard.
    pub fn empty(health: Health, identity: Option<Identity>, policy: ReadPolicy) -> Loaded {
        Loaded {
            map: None,
            _pin: None,
            identity,
            header: Header::default(),
            layout: Layout::default(),
            health,
            validation_time: Duration::ZERO,
            policy,
            ignored_entries: None,
            live_count: OnceCell::new(),
        }
    }

    /// The mapped file bytes (empty when nothing is mapped).
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Entries that read as hits (generation filter applied). O(1) unless the policy's
    /// generation floor is above the shard's oldest entry, then O(n) once.
    pub fn live_count(&self) -> u64 {
        if self.policy.all_live(&self.header) {
            return self.layout.entry_count();
        }
        *self.live_count.get_or_init(|| {
            let bytes = self.bytes();
            self.layout
                .slots(bytes)
                .filter(|(_, _, r)| r.as_ref().is_some_and(|r| self.policy.is_live(r)))
                .count() as u64
        })
    }

    /// Opens the shard at `path`. Fails only when something other than a regular file sits
    /// there; every other problem yields an empty view whose `health` says why.
    pub fn open(dir: &ShardDir, path: &Path, policy: ReadPolicy, euid: u32) -> Result<Loaded> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW (always added by
        // `open_file`): a symlink at the shard path could point anywhere, so it is refused
        // rather than followed.
        let name = path.file_name().unwrap_or_default();
        let file = dir.open_file(
            name,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
            0,
        );
        let file = match file {
            Ok(file) => file,
            Err(e) => return Self::open_failed(path, e, policy),
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::io("reading metadata of", path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::NotAFile {
                path: path.to_path_buf(),
                kind: trust::kind_name(&meta),
            });
        }
        let identity = (meta.dev(), meta.ino());
        let mut loaded = if let Err(reason) = trust::check_file(&meta, euid) {
            Self::empty(Health::Untrusted { reason }, Some(identity), policy)
        } else {
            Self::from_trusted_file(&file, meta.len(), identity, policy)
        };
        if loaded.map.is_none() {
            loaded._pin = Some(file);
        }
        Ok(loaded)
    }

    fn open_failed(path: &Path, e: io::Error, policy: ReadPolicy) -> Result<Loaded> {
        let health = match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => Health::Missing,
            Some(code) if code == nix::libc::ELOOP => Health::Untrusted {
                reason: "the shard path is a symlink; warmshard does not follow symlinks".into(),
            },
            Some(code) if code == nix::libc::ENXIO || code == nix::libc::EISDIR => {
                let kind = std::fs::symlink_metadata(path)
                    .map(|m| trust::kind_name(&m))
                    .unwrap_or("special file");
                return Err(Error::NotAFile {
                    path: path.to_path_buf(),
                    kind,
                });
            }
            _ => Health::Unreadable {
                error: e.to_string(),
            },
        };
        Ok(Self::empty(health, None, policy))
    }

    /// Maps and validates a file already known to be a trusted regular file of `len` bytes.
    pub fn from_trusted_file(
        file: &File,
        len: u64,
        identity: Identity,
        policy: ReadPolicy,
    ) -> Loaded {
        if len == 0 {
            return Self::empty(Health::EmptyFile, Some(identity), policy);
        }
        if len > policy.max_size {
            let health = Health::TooLarge {
                size: len,
                max: policy.max_size,
            };
            return Self::empty(health, Some(identity), policy);
        }
        let Ok(map_len) = usize::try_from(len) else {
            let health = Health::TooLarge {
                size: len,
                max: usize::MAX as u64,
            };
            return Self::empty(health, Some(identity), policy);
        };
        // SAFETY: `Mmap` hands out `&[u8]` over the file's pages, which is sound only while
        // nobody modifies or truncates the file during the mapping's life. warmshard never writes
        // a published shard in place: every writer builds a new file under a unique temporary
        // name, fsyncs it and renames it over the old one, so the inode mapped here keeps its
        // bytes until the last mapping is dropped (the rename unlinks the name, not the inode).
        // The file is owned by this user and not writable by others (checked by the caller), so
        // only this user's non-warmshard programs could truncate it; that is documented as
        // outside the contract in the README ("Limits"). We map exactly `len` bytes, the size
        // `fstat` reported, and the length is re-checked against the preamble before any use.
        let mut map_options = MmapOptions::new();
        map_options.len(map_len);
        if policy.populate {
            map_options.populate();
        }
        let mapped = unsafe { map_options.map(file) };
        let map = match mapped {
            Ok(map) => map,
            Err(e) => {
                let health = Health::Unreadable {
                    error: format!("mmap failed: {e}"),
                };
                return Self::empty(health, Some(identity), policy);
            }
        };
        let started = Instant::now();
        let parsed = format::parse(&map);
        let validation_time = started.elapsed();
        let (header, layout) = match parsed {
            Ok(parsed) => parsed,
            Err(health) => return Self::empty(health, Some(identity), policy),
        };
        if let Some(expected) = &policy.producer {
            let found = &map[header.producer.clone()];
            if found != expected.as_bytes() {
                let health = Health::ProducerMismatch {
                    found: String::from_utf8_lossy(found).into_owned(),
                    expected: expected.clone(),
                };
                let mut ignored = Self::empty(health, Some(identity), policy);
                ignored.ignored_entries = Some(layout.entry_count());
                return ignored;
            }
        }
        Loaded {
            map: Some(map),
            _pin: None,
            identity: Some(identity),
            header,
            layout,
            health: Health::Valid,
            validation_time,
            policy,
            ignored_entries: None,
            live_count: OnceCell::new(),
        }
    }

    /// The producer string of a valid shard ("" otherwise).
    pub fn producer(&self) -> &str {
        // The range was validated as an rkyv `ArchivedString`, which checks UTF-8.
        std::str::from_utf8(
            self.bytes()
                .get(self.header.producer.clone())
                .unwrap_or(&[]),
        )
        .unwrap_or("")
    }
}

/// Identities of both files on disk, or `None` when a file there no longer passes the trust
/// checks (its owner or mode changed in place): then the view must be rebuilt, which refuses
/// it.
fn identity_on_disk(paths: &crate::shard::ShardPaths) -> Option<FilesIdentity> {
    let euid = nix::unistd::geteuid().as_raw();
    let identity = |path: &Path| -> Result<Option<(u64, u64)>, ()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                trust::check_file(&meta, euid).map_err(|_| ())?;
                Ok(Some((meta.dev(), meta.ino())))
            }
            Err(_) => Ok(None),
        }
    };
    Some((
        identity(paths.path()).ok()?,
        identity(&paths.delta_path()).ok()?,
    ))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
