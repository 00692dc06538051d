//! A parallel directory walker that never follows symlinks and has no depth limit.
//!
//! Jobs go on a shared stack served by a fixed set of worker threads: directories to visit, and
//! any task a visit hands back (hash-tree hashes files this way, so walking and hashing overlap).
//! Each directory is opened relative to its parent's handle, `fstat`ed, then listed into a single
//! name buffer — or, if the caller has a cached listing taken at exactly that stamp, not read at
//! all — and its regular files are `fstatat`ed relative to the open handle (no path resolution
//! beyond one component, no allocation per entry); a cached listing's file hashes are kept only
//! for the files whose fresh stamp is the one they were stored under. Only regular files are reported: symlinks,
//! FIFOs, sockets and devices are never opened.

use std::ffi::{CStr, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use parking_lot::{Condvar, Mutex};

use super::exclude::Exclude;
use super::listing::{Listed, Listing, dir_key};
use super::stamp::Stamp;

/// A directory or file that could not be read during the walk.
pub(crate) use super::error::PathError as WalkError;

/// Names in one directory that must not be reported (the cache's own files).
#[derive(Debug)]
pub(crate) struct Excluded {
    pub dir: PathBuf,
    /// The shard's file name; every file that belongs to it is excluded (see `crate::names`).
    pub shard_name: std::ffi::OsString,
}

impl Excluded {
    fn matches(&self, name: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        crate::names::is_shard_file(&self.shard_name, std::ffi::OsStr::from_bytes(name))
    }
}

/// One visited directory, as handed to the caller's visit function.
pub(crate) struct VisitedDir<'a> {
    /// Its key in the cache (see `listing::dir_key`): its path relative to the root unless that
    /// is long. The visit takes it over (no copy per directory).
    pub key: Vec<u8>,
    /// The open directory, for `openat`/`fstatat` relative to it.
    pub handle: &'a Arc<OwnedFd>,
    /// The directory's own stamp, taken before it was listed.
    pub stamp: Stamp,
    /// Its regular files and subdirectories, in manifest order, without the excluded ones. Files
    /// of a cached listing have a fresh stamp, and `listing.hashes` holds the cached hash of
    /// each whose fresh stamp is the one that hash was stored under; those of a listing read
    /// this run mostly have no stamp yet (see `read_listing`).
    pub listing: Listing,
    /// The whole listing, when exclusions took entries out of `listing` (what the cache keeps,
    /// so that a run with other exclusions can use it).
    pub unfiltered: Option<Listing>,
    /// True if the listing was read from the directory, false if a cached one was used.
    pub read: bool,
    /// False for the directory holding the cache's own files, whose listing must not be cached.
    pub cacheable: bool,
}

/// A task a visit hands back to the walk's workers.
pub(crate) type Task<'env> = Box<dyn FnOnce() + Send + 'env>;

enum Job<'env> {
    Dir(DirJob),
    Task(Task<'env>),
}

/// A directory to visit.
struct DirJob {
    /// Its parent's handle, to open it relative to; none for the root, or to open it from the
    /// root.
    parent: Option<Arc<OwnedFd>>,
    /// Its path relative to the root; its name is the last `name_len` bytes.
    rel: Vec<u8>,
    name_len: usize,
    /// Its cache key if that is not its path.
    long_key: Option<Vec<u8>>,
    /// Its number in this walk (the root is 0), and its parent's with its entry index there.
    id: usize,
    link: Option<(usize, u32)>,
}

/// One directory a walk visited, as [`walk`] returns it.
///
/// It keeps its parent's index and its entry there, not its path: a chain of `n` nested
/// directories then costs memory in proportion to `n`, not `n²` (see [`rel_path`] for the rare
/// caller that needs a path after the walk).
pub(crate) struct WalkedDir<T> {
    /// Its parent's index in the walk's result and its entry index in the listing its parent
    /// was visited with; `None` for the root only.
    pub parent: Option<(u32, u32)>,
    /// Its subdirectories that were visited: (entry index in the listing it was visited with,
    /// index in the walk's result), by entry index. So the tree can be gone through in
    /// manifest order without looking a path up.
    pub subdirs: Vec<(u32, u32)>,
    /// What the visit returned.
    pub result: T,
}

/// Most directory jobs that may wait holding their parent's handle. Past it, a directory is
/// reopened from the root's handle one component at a time (never by a path, which could pass
/// `PATH_MAX` or follow a symlink planted on the way), so a wide and deep tree can exhaust
/// neither the file descriptors nor the path length.
const MAX_WAITING_HANDLES: usize = 256;

struct Queue<'env> {
    /// Jobs waiting, and how many are being worked on right now.
    state: Mutex<(Vec<Job<'env>>, usize)>,
    wake: Condvar,
}

/// Lets a visit queue tasks for the walk's workers; the walk returns once they have all run.
pub(crate) struct Spawner<'q, 'env> {
    queue: &'q Queue<'env>,
}

impl<'env> Spawner<'_, 'env> {
    pub fn spawn(&self, task: Task<'env>) {
        self.queue.state.lock().0.push(Job::Task(task));
        self.queue.wake.notify_one();
    }
}

/// Appends `name` to the relative path `rel` (`/`-separated; the root is empty).
pub(crate) fn join_rel(out: &mut Vec<u8>, rel: &[u8], name: &[u8]) {
    out.clear();
    if !rel.is_empty() {
        out.extend_from_slice(rel);
        out.push(b'/');
    }
    out.extend_from_slice(name);
}

/// The functions a walk calls back, from its worker threads.
pub(crate) struct Visitor<'f, 'env, T> {
    /// A cached listing of the directory with this cache key taken at exactly this stamp, if
    /// there is one.
    pub cached: &'f (dyn Fn(&[u8], &Stamp) -> Option<Listing> + Sync),
    /// Called once per directory; may queue tasks.
    pub visit: &'f (dyn Fn(VisitedDir<'_>, &Spawner<'_, 'env>) -> T + Sync),
}

/// Pins down the type of a visit function (and the lifetime of the tasks it may queue).
pub(crate) fn visit_fn<'env, T, F>(f: F) -> F
where
    F: Fn(VisitedDir<'_>, &Spawner<'_, 'env>) -> T + Sync,
{
    f
}

/// Walks `root` with `threads` workers, calling `visitor.visit` for every directory, and returns
/// the visited directories, the root first if it could be read, each with its visited
/// subdirectories, and the errors met. Returns once every directory is visited and every queued
/// task has run.
pub(crate) fn walk<'env, T: Send>(
    root: &Path,
    threads: usize,
    excluded: &Excluded,
    exclude: &Exclude,
    visitor: Visitor<'_, 'env, T>,
) -> (Vec<WalkedDir<T>>, Vec<WalkError>) {
    let excluded_rel: Option<Vec<u8>> = excluded
        .dir
        .strip_prefix(root)
        .ok()
        .map(|rel| rel.as_os_str().as_bytes().to_vec());
    // Held for the whole walk: directories past the handle budget are reopened from it.
    let root_handle = nix::fcntl::open(root, dir_flags(), Mode::empty()).ok();
    let queue = Queue {
        state: Mutex::new((
            vec![Job::Dir(DirJob {
                parent: None,
                rel: Vec::new(),
                name_len: 0,
                long_key: None,
                id: 0,
                link: None,
            })],
            0,
        )),
        wake: Condvar::new(),
    };
    let waiting_handles = AtomicUsize::new(0);
    let next_id = AtomicUsize::new(1);
    // What the workers found: the visited directories (in chunks that never grow, so that no
    // directory's result is copied but once, when they are joined), and the same number of
    // (id, link), in the same order.
    let results = Mutex::new((Vec::new(), Vec::new()));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let spawner = Spawner { queue: &queue };
                let mut found: Vec<Vec<WalkedDir<T>>> = Vec::new();
                let mut found_links = Vec::new();
                let mut failed = Vec::new();
                let mut child = Vec::new();
                // Reused for every directory: the jobs of its subdirectories.
                let mut subdirs = Vec::new();
                while let Some(job) = next_job(&queue) {
                    match job {
                        Job::Task(task) => task(),
                        Job::Dir(DirJob {
                            parent,
                            rel,
                            name_len,
                            long_key,
                            id,
                            link,
                        }) => {
                            let key = long_key.as_deref().unwrap_or(&rel);
                            let name = &rel[rel.len() - name_len..];
                            if parent.is_some() {
                                waiting_handles.fetch_sub(1, Ordering::Relaxed);
                            }
                            let is_excluded = excluded_rel.as_deref() == Some(rel.as_slice());
                            let excluded = is_excluded.then_some(excluded);
                            if let Some(dir) = open_and_list(
                                Root {
                                    path: root,
                                    handle: root_handle.as_ref(),
                                },
                                parent.as_deref(),
                                DirName {
                                    name,
                                    rel: &rel,
                                    key,
                                },
                                excluded,
                                visitor.cached,
                                &mut failed,
                            ) {
                                let handle = Arc::new(dir.handle);
                                let (listing, unfiltered) = filtered(dir.listing, &rel, exclude);
                                for (i, (range, kind)) in listing.entries.iter().enumerate() {
                                    if let Listed::Dir = kind {
                                        let name = listing.name(range);
                                        join_rel(&mut child, &rel, name);
                                        let held = waiting_handles.fetch_add(1, Ordering::Relaxed);
                                        let parent = if held < MAX_WAITING_HANDLES {
                                            Some(handle.clone())
                                        } else {
                                            waiting_handles.fetch_sub(1, Ordering::Relaxed);
                                            None
                                        };
                                        let child_key = dir_key(key, name, child.len());
                                        subdirs.push(Job::Dir(DirJob {
                                            parent,
                                            rel: child.clone(),
                                            name_len: name.len(),
                                            long_key: child_key,
                                            id: next_id.fetch_add(1, Ordering::Relaxed),
                                            link: Some((id, i as u32)),
                                        }));
                                    }
                                }
                                // Subdirectories go on the stack before the visit's tasks, so
                                // the tasks run first and release this directory's handle.
                                {
                                    let mut state = queue.state.lock();
                                    state.0.append(&mut subdirs);
                                }
                                queue.wake.notify_all();
                                let visited = VisitedDir {
                                    key: long_key.unwrap_or(rel),
                                    handle: &handle,
                                    stamp: dir.stamp,
                                    listing,
                                    unfiltered,
                                    read: dir.read,
                                    cacheable: !is_excluded,
                                };
                                let result = (visitor.visit)(visited, &spawner);
                                if found.last().is_none_or(|c| c.len() == c.capacity()) {
                                    found.push(Vec::with_capacity(DIRS_PER_CHUNK));
                                }
                                if let Some(chunk) = found.last_mut() {
                                    chunk.push(WalkedDir {
                                        parent: None,
                                        subdirs: Vec::new(),
                                        result,
                                    });
                                }
                                found_links.push((id, link));
                            }
                        }
                    }
                    let mut state = queue.state.lock();
                    state.1 -= 1;
                    if state.1 == 0 && state.0.is_empty() {
                        queue.wake.notify_all();
                    }
                }
                let mut results = results.lock();
                results.0.append(&mut found);
                results.1.append(&mut found_links);
                errors.lock().append(&mut failed);
            });
        }
    });
    (
        linked(joined(results.into_inner()), next_id.into_inner()),
        errors.into_inner(),
    )
}

/// Visited directories a worker keeps per chunk of its results.
const DIRS_PER_CHUNK: usize = 256;

/// The workers' chunks of visited directories as one vector (each moved once), with their links.
fn joined<T>(
    (chunks, links): (Vec<Vec<WalkedDir<T>>>, Vec<Link>),
) -> (Vec<WalkedDir<T>>, Vec<Link>) {
    let mut dirs = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for chunk in chunks {
        dirs.extend(chunk);
    }
    (dirs, links)
}

/// The (id, link to its parent) of a visited directory (see [`DirJob`]).
type Link = (usize, Option<(usize, u32)>);

/// The visited directories (`dirs`, each with its id and link in `links`; ids below `ids`),
/// the root first, each with its visited subdirectories. Nothing is sorted or moved but the
/// root.
fn linked<T>(
    (mut dirs, mut links): (Vec<WalkedDir<T>>, Vec<Link>),
    ids: usize,
) -> Vec<WalkedDir<T>> {
    if let Some(root) = links.iter().position(|(id, _)| *id == 0) {
        dirs.swap(0, root);
        links.swap(0, root);
    }
    let mut position = vec![usize::MAX; ids];
    for (at, (id, _)) in links.iter().enumerate() {
        position[*id] = at;
    }
    // Each directory's subdirectories, counted first so that each list is allocated once.
    let mut counts = vec![0u32; dirs.len()];
    for (_, link) in &links {
        if let Some(&at) = link.and_then(|(parent, _)| position.get(parent))
            && let Some(count) = counts.get_mut(at)
        {
            *count += 1;
        }
    }
    for (dir, count) in dirs.iter_mut().zip(counts) {
        dir.subdirs.reserve_exact(count as usize);
    }
    for (at, (_, link)) in links.into_iter().enumerate() {
        // A directory is queued only once its parent was listed, so its parent was visited.
        if let Some((parent, entry)) = link
            && let Some(parent_dir) = dirs.get_mut(position[parent])
        {
            parent_dir.subdirs.push((entry, at as u32));
            dirs[at].parent = Some((position[parent] as u32, entry));
        }
    }
    for dir in &mut dirs {
        dir.subdirs.sort_unstable_by_key(|(entry, _)| *entry);
    }
    dirs
}

/// The path relative to the root (`/`-separated; the root is empty) of the directory at index
/// `at` of a walk's result, rebuilt from its ancestors' names (for error messages: a walked
/// directory keeps no path); `name_of(result, entry)` is the name of entry `entry` of the
/// listing a directory was visited with.
pub(crate) fn rel_path<'d, T>(
    dirs: &'d [WalkedDir<T>],
    at: usize,
    name_of: impl Fn(&'d T, u32) -> &'d [u8],
) -> Vec<u8> {
    let mut names = Vec::new();
    let mut at = at;
    while let Some((parent, entry)) = dirs.get(at).and_then(|dir| dir.parent) {
        let Some(parent_dir) = dirs.get(parent as usize) else {
            break;
        };
        names.push(name_of(&parent_dir.result, entry));
        at = parent as usize;
    }
    let mut path = Vec::new();
    for name in names.iter().rev() {
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
    }
    path
}

/// `listing` without the entries `exclude` matches, and the whole listing if any was taken out.
fn filtered(listing: Listing, rel: &[u8], exclude: &Exclude) -> (Listing, Option<Listing>) {
    if exclude.is_empty() {
        return (listing, None);
    }
    let mut path = Vec::new();
    let keep = |range: &std::ops::Range<u32>, path: &mut Vec<u8>| {
        join_rel(path, rel, listing.name(range));
        !exclude.matches(path)
    };
    if listing
        .entries
        .iter()
        .all(|(range, _)| keep(range, &mut path))
    {
        return (listing, None);
    }
    // The kept entries keep their name ranges: `names` is shared as is.
    let mut kept = Listing {
        names: listing.names.clone(),
        ..Listing::default()
    };
    for (i, entry) in listing.entries.iter().enumerate() {
        if keep(&entry.0, &mut path) {
            kept.entries.push(entry.clone());
            if let Some(&hash) = listing.hashes.get(i) {
                kept.hashes.push(hash);
            }
        }
    }
    (kept, Some(listing))
}

fn next_job<'env>(queue: &Queue<'env>) -> Option<Job<'env>> {
    let mut state = queue.state.lock();
    loop {
        if let Some(job) = state.0.pop() {
            state.1 += 1;
            return Some(job);
        }
        if state.1 == 0 {
            return None;
        }
        queue.wake.wait(&mut state);
    }
}

struct OpenDir {
    handle: OwnedFd,
    stamp: Stamp,
    listing: Listing,
    read: bool,
}

/// The walk's root: its path, and its handle if it could be opened.
struct Root<'a> {
    path: &'a Path,
    handle: Option<&'a OwnedFd>,
}

/// A directory to open: its name, its path relative to the root, its cache key.
struct DirName<'a> {
    name: &'a [u8],
    rel: &'a [u8],
    key: &'a [u8],
}

fn open_and_list(
    Root {
        path: root,
        handle: root_handle,
    }: Root<'_>,
    parent: Option<&OwnedFd>,
    DirName { name, rel, key }: DirName<'_>,
    excluded: Option<&Excluded>,
    cached: &(dyn Fn(&[u8], &Stamp) -> Option<Listing> + Sync),
    failed: &mut Vec<WalkError>,
) -> Option<OpenDir> {
    let path_of = |rel: &[u8]| match rel {
        b"" => root.to_path_buf(),
        rel => root.join(std::ffi::OsStr::from_bytes(rel)),
    };
    let mut fail = |error: nix::errno::Errno| {
        failed.push(WalkError {
            path: path_of(rel),
            source: error.into(),
        })
    };
    let opened = match (parent, root_handle) {
        (Some(parent), _) => nix::fcntl::openat(parent, name, dir_flags(), Mode::empty()),
        // The root itself: its path is the one the caller gave.
        (None, _) if rel.is_empty() => nix::fcntl::open(root, dir_flags(), Mode::empty()),
        // Its parent's handle was not kept: walk down from the root one component at a time.
        (None, Some(root_handle)) => open_components(root_handle, rel),
        // The root could not be opened, so nothing below it was queued.
        (None, None) => Err(nix::errno::Errno::EBADF),
    };
    let handle = match opened {
        Ok(handle) => handle,
        Err(errno) => {
            fail(errno);
            return None;
        }
    };
    // The stamp comes first: an entry added while we list changes it, so a listing is never
    // stored under a stamp older than its content.
    let stamp = match nix::sys::stat::fstat(&handle) {
        Ok(stat) => Stamp::from_stat(&stat),
        Err(errno) => {
            fail(errno);
            return None;
        }
    };
    if excluded.is_none()
        && let Some(mut listing) = cached(key, &stamp)
        && stat_cached_files(&handle, &mut listing)
    {
        return Some(OpenDir {
            handle,
            stamp,
            listing,
            read: false,
        });
    }
    let listing = read_listing(&handle, excluded, &path_of(rel), failed)?;
    Some(OpenDir {
        handle,
        stamp,
        listing,
        read: true,
    })
}

/// How every directory is opened, never through a symlink. On Linux an `O_PATH` handle is
/// enough to stat it and to open or stat its entries, and it is cheaper to open and close;
/// reading the entries takes a second, real open. Elsewhere (no `O_PATH`) the handle is a plain
/// read-only one, which needs read permission on the directory.
pub(crate) fn dir_flags() -> OFlag {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let access = OFlag::O_PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let access = OFlag::O_RDONLY;
    access | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the directory at `rel` (`/`-separated, relative to `root`) one component at a time, so
/// neither the path's length nor a symlink planted on the way matters.
pub(crate) fn open_components(root: &OwnedFd, rel: &[u8]) -> nix::Result<OwnedFd> {
    // One system call where the kernel can promise the same (no symlink anywhere on the way,
    // nothing outside the root): as cheap as opening by path.
    #[cfg(target_os = "linux")]
    if rel.len() < 4000 {
        use nix::fcntl::{OpenHow, ResolveFlag};
        let how = OpenHow::new()
            .flags(dir_flags())
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
        match nix::fcntl::openat2(root, OsStr::from_bytes(rel), how) {
            Ok(handle) => return Ok(handle),
            // Not supported (before Linux 5.6, or filtered), a rename raced it, or too long:
            // go one component at a time.
            Err(
                nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EPERM
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::E2BIG
                | nix::errno::Errno::EAGAIN
                | nix::errno::Errno::ENAMETOOLONG,
            ) => {}
            Err(errno) => return Err(errno),
        }
    }
    let mut handle: Option<OwnedFd> = None;
    for component in rel.split(|&b| b == b'/') {
        let at = handle.as_ref().unwrap_or(root);
        let next =
            nix::fcntl::openat(at, OsStr::from_bytes(component), dir_flags(), Mode::empty())?;
        handle = Some(next);
    }
    handle.ok_or(nix::errno::Errno::EINVAL)
}

/// The stamp of the entry `name` of an open directory (`lstat`, relative to the directory's
/// handle: one path component, no symlink followed); `None` if it is gone. Every stamp the walk,
/// `hash-tree` and `TreeCache` take of a listed entry comes from here.
pub(crate) fn stamp_at(dir: &OwnedFd, name: &CStr) -> nix::Result<Option<Stamp>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(Stamp::from_stat(&stat))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno),
    }
}

/// [`stamp_at`] for a file: `None` if it is gone or is not a regular file.
pub(crate) fn stamp_file_at(dir: &OwnedFd, name: &CStr) -> nix::Result<Option<Stamp>> {
    Ok(stamp_at(dir, name)?.filter(Stamp::is_file))
}

/// Takes a fresh stamp of every file of a cached listing, and keeps a file's cached hash only
/// if that stamp is exactly the one the hash was stored under. False if a file is no longer a
/// regular file (the directory changed after all: it must be read again).
fn stat_cached_files(handle: &OwnedFd, listing: &mut Listing) -> bool {
    for i in 0..listing.entries.len() {
        let (range, Listed::File(stored)) = &listing.entries[i] else {
            continue;
        };
        let stored = *stored;
        let Some(name) = listing.c_name(range) else {
            return false;
        };
        let fresh = match stamp_file_at(handle, name) {
            Ok(Some(fresh)) => fresh,
            _ => return false,
        };
        if stored != Some(fresh)
            && let Some(hash) = listing.hashes.get_mut(i)
        {
            *hash = None;
        }
        listing.entries[i].1 = Listed::File(Some(fresh));
    }
    true
}

/// Reads the directory: its regular files and subdirectories, in manifest order. Files are
/// stamped only where the directory entry does not give their type.
pub(crate) fn read_listing(
    handle: &OwnedFd,
    excluded: Option<&Excluded>,
    dir_path: &Path,
    failed: &mut Vec<WalkError>,
) -> Option<Listing> {
    // On Linux the handle is O_PATH, which cannot list: open the same directory again through
    // it (elsewhere this is a second handle of the same directory, as cheap).
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let reader = nix::fcntl::openat(handle, c".", flags, Mode::empty());
    let mut reader = match reader.and_then(Dir::from_fd) {
        Ok(reader) => reader,
        Err(errno) => {
            failed.push(WalkError {
                path: dir_path.to_path_buf(),
                source: errno.into(),
            });
            return None;
        }
    };
    let mut listing = Listing::default();
    let mut to_stat = Vec::new();
    for entry in reader.iter() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => {
                failed.push(WalkError {
                    path: dir_path.to_path_buf(),
                    source: errno.into(),
                });
                break;
            }
        };
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || excluded.is_some_and(|e| e.matches(name)) {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::Directory) => Some(Listed::Dir),
            // Stamped later, and only if the cache knows the file: one that must be hashed
            // anyway is stamped by `fstat` once open.
            Some(Type::File) => Some(Listed::File(None)),
            None => None,        // DT_UNKNOWN: the stat decides
            Some(_) => continue, // symlink, FIFO, socket, device: never opened
        };
        let range = listing.push_name(name);
        match kind {
            Some(kind) => listing.entries.push((range, kind)),
            None => to_stat.push(range),
        }
    }
    drop(reader);
    for range in to_stat {
        let Some(name) = listing.c_name(&range) else {
            continue;
        };
        match stamp_at(handle, name) {
            Ok(Some(stamp)) if stamp.is_file() => {
                listing.entries.push((range, Listed::File(Some(stamp))));
            }
            Ok(Some(stamp)) if stamp.is_dir() => listing.entries.push((range, Listed::Dir)),
            Ok(_) => {} // not a file or directory, or removed since listed
            Err(errno) => failed.push(WalkError {
                path: dir_path.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                source: errno.into(),
            }),
        }
    }
    listing.sort();
    Some(listing)
}
