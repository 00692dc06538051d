//! A parallel directory walker that never follows symlinks and has no depth limit.
//!
//! Jobs go on a shared stack served by a fixed set of worker threads: directories to visit, and
//! any task a visit hands back (hash-tree hashes files this way, so walking and hashing overlap).
//! Each directory is opened relative to its parent's handle, `fstat`ed, then listed into a single
//! name buffer — or, if the caller has a cached listing taken at exactly that stamp, not read at
//! all — and its regular files are `fstatat`ed relative to the open handle (no path resolution
//! beyond one component, no allocation per entry); a cached listing's file hashes are kept only
//! for the files whose fresh stamp is the one they were stored under. Only regular files are
//! reported: symlinks, FIFOs, sockets and devices are never opened.
//!
//! While the workers walk, the calling thread takes the directories they finished in manifest
//! order ([`take_in_manifest_order`]): `hash-tree` prints a directory's lines as soon as it and
//! every directory before it are done, rather than all of them once the walk is over.

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
    /// A task and the id of the directory whose visit queued it.
    Task(Task<'env>, usize),
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
    /// Its number in this walk (the root is 0).
    id: usize,
}

/// One directory a walk visited, as [`take_in_manifest_order`] hands it over.
///
/// It keeps no path: a chain of `n` nested directories costs memory in proportion to `n`, not
/// `n²`.
pub(crate) struct WalkedDir<T> {
    /// Its subdirectories that were visited: (entry index in the listing it was visited with,
    /// number in manifest order), by entry index. So the tree can be gone through in manifest
    /// order again without looking a path up. (Until [`take_in_manifest_order`] handed it
    /// over, the second of each is the subdirectory's id in the walk, and the list also holds
    /// those that could not be read.)
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

/// Lets a visit queue tasks for the walk's workers; the walk returns once they have all run,
/// and the directory is handed to the caller's thread (see [`Walked::take`]) once its own have.
pub(crate) struct Spawner<'q, 'env> {
    queue: &'q Queue<'env>,
    /// The id of the directory being visited, and how many tasks its visit queued.
    dir: usize,
    spawned: std::cell::Cell<usize>,
}

impl<'env> Spawner<'_, 'env> {
    pub fn spawn(&self, task: Task<'env>) {
        self.spawned.set(self.spawned.get() + 1);
        self.queue.state.lock().0.push(Job::Task(task, self.dir));
        self.queue.wake.notify_one();
    }
}

/// The visited directories, by id, until the caller's thread takes them (see [`Walked`]).
struct Board<T> {
    state: Mutex<BoardState<T>>,
    /// Wakes the caller's thread when `finished` reaches `wake_at`, or when the walk is over.
    ready: Condvar,
}

struct BoardState<T> {
    /// Indexed by directory id.
    slots: Vec<Slot<T>>,
    /// Directories finished so far (visited with all their tasks run, or failed).
    finished: usize,
    /// The caller's thread waits until `finished` reaches this (`usize::MAX`: it does not wait):
    /// woken once per batch of directories rather than once per directory, it costs few
    /// context switches.
    wake_at: usize,
    /// Workers still running: none left means nothing more will finish.
    workers: usize,
}

enum Slot<T> {
    /// Not visited yet; `tasks_run` of its tasks have run already (a task may end before the
    /// visit that queued it returns).
    Pending { tasks_run: usize },
    /// Visited; waits for `tasks_left` of its tasks. Its `subdirs` hold their ids.
    Visited {
        dir: Box<WalkedDir<T>>,
        tasks_left: usize,
    },
    /// Could not be read, or taken by the caller already.
    Gone,
}

/// Directories the caller's thread lets finish before it is woken, when it waits for one.
const WAKE_BATCH: usize = 256;

impl<T> Board<T> {
    fn new(workers: usize) -> Self {
        Board {
            state: Mutex::new(BoardState {
                slots: Vec::new(),
                finished: 0,
                wake_at: usize::MAX,
                workers,
            }),
            ready: Condvar::new(),
        }
    }

    fn slot(state: &mut BoardState<T>, id: usize) -> &mut Slot<T> {
        if state.slots.len() <= id {
            state
                .slots
                .resize_with(id + 1, || Slot::Pending { tasks_run: 0 });
        }
        &mut state.slots[id]
    }

    fn finish(&self, state: &mut BoardState<T>) {
        state.finished += 1;
        if state.finished >= state.wake_at {
            state.wake_at = usize::MAX;
            self.ready.notify_one();
        }
    }

    /// Directory `id` was visited, and its visit queued `tasks` tasks.
    fn visited(&self, id: usize, dir: WalkedDir<T>, tasks: usize) {
        let dir = Box::new(dir);
        let mut state = self.state.lock();
        let slot = Self::slot(&mut state, id);
        let tasks_run = match slot {
            Slot::Pending { tasks_run } => *tasks_run,
            _ => 0,
        };
        let tasks_left = tasks.saturating_sub(tasks_run);
        *slot = Slot::Visited { dir, tasks_left };
        if tasks_left == 0 {
            self.finish(&mut state);
        }
    }

    /// Directory `id` could not be read.
    fn failed(&self, id: usize) {
        let mut state = self.state.lock();
        *Self::slot(&mut state, id) = Slot::Gone;
        self.finish(&mut state);
    }

    /// A task queued by the visit of directory `id` has run.
    fn task_done(&self, id: usize) {
        let mut state = self.state.lock();
        match Self::slot(&mut state, id) {
            Slot::Pending { tasks_run } => *tasks_run += 1,
            Slot::Visited { tasks_left, .. } => {
                *tasks_left = tasks_left.saturating_sub(1);
                if *tasks_left == 0 {
                    self.finish(&mut state);
                }
            }
            Slot::Gone => {}
        }
    }

    /// A worker is done (or unwinding): once none is left, nothing more will finish.
    fn worker_done(&self) {
        let mut state = self.state.lock();
        state.workers = state.workers.saturating_sub(1);
        if state.workers == 0 {
            self.ready.notify_all();
        }
    }
}

/// Tells the board a worker is done, also when it unwinds: the caller's thread would otherwise
/// wait for it forever.
struct WorkerDone<'b, T>(&'b Board<T>);

impl<T> Drop for WorkerDone<'_, T> {
    fn drop(&mut self) {
        self.0.worker_done();
    }
}

/// What the caller's thread sees of a walk under way: it takes each directory once the
/// directory and every task its visit queued are done.
pub(crate) struct Walked<'b, T> {
    board: &'b Board<T>,
}

impl<T> Walked<'_, T> {
    /// Waits until directory `id` was visited and every task its visit queued has run, and
    /// takes it (its `subdirs` hold their ids; its `parent` is not set); `None` if it could not
    /// be read, was taken already or the walk ended without it.
    pub fn take(&self, id: usize) -> Option<Box<WalkedDir<T>>> {
        let mut state = self.board.state.lock();
        loop {
            let workers = state.workers;
            let slot = Board::slot(&mut state, id);
            match slot {
                Slot::Visited { tasks_left: 0, .. } => {
                    let Slot::Visited { dir, .. } = std::mem::replace(slot, Slot::Gone) else {
                        return None;
                    };
                    return Some(dir);
                }
                Slot::Gone => return None,
                _ if workers == 0 => return None,
                _ => {}
            }
            state.wake_at = state.finished.saturating_add(WAKE_BATCH);
            self.board.ready.wait(&mut state);
        }
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

/// Walks `root` with `threads` workers, calling `visitor.visit` for every directory, while
/// `follow` runs on the calling thread and takes the visited directories as they finish (see
/// [`Walked::take`], [`take_in_manifest_order`]). Returns what `follow` returned, and the
/// errors met, once every directory is visited and every queued task has run.
///
/// Subdirectories are visited first to last in manifest order (as far as the workers' shared
/// stack allows), so that the caller can take them in that order soon after they finish.
pub(crate) fn walk<'env, T: Send, R>(
    root: &Path,
    threads: usize,
    excluded: &Excluded,
    exclude: &Exclude,
    visitor: Visitor<'_, 'env, T>,
    follow: impl FnOnce(&Walked<'_, T>) -> R,
) -> (R, Vec<WalkError>) {
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
            })],
            0,
        )),
        wake: Condvar::new(),
    };
    let waiting_handles = AtomicUsize::new(0);
    let next_id = AtomicUsize::new(1);
    let threads = threads.max(1);
    let board = Board::new(threads);
    let errors = Mutex::new(Vec::new());
    let followed = std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let _done = WorkerDone(&board);
                let mut failed = Vec::new();
                let mut child = Vec::new();
                // Reused for every directory: the jobs of its subdirectories.
                let mut subdirs = Vec::new();
                while let Some(job) = next_job(&queue) {
                    match job {
                        Job::Task(task, dir) => {
                            task();
                            board.task_done(dir);
                        }
                        Job::Dir(DirJob {
                            parent,
                            rel,
                            name_len,
                            long_key,
                            id,
                        }) => {
                            let key = long_key.as_deref().unwrap_or(&rel);
                            let name = &rel[rel.len() - name_len..];
                            if parent.is_some() {
                                waiting_handles.fetch_sub(1, Ordering::Relaxed);
                            }
                            let is_excluded = excluded_rel.as_deref() == Some(rel.as_slice());
                            let excluded = is_excluded.then_some(excluded);
                            let Some(dir) = open_and_list(
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
                            ) else {
                                board.failed(id);
                                continue_job(&queue);
                                continue;
                            };
                            let handle = Arc::new(dir.handle);
                            let (listing, unfiltered) = filtered(dir.listing, &rel, exclude);
                            // (entry index, id) of each subdirectory, by entry index.
                            let mut subdir_ids = Vec::new();
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
                                    let child_id = next_id.fetch_add(1, Ordering::Relaxed);
                                    subdir_ids.push((i as u32, child_id as u32));
                                    subdirs.push(Job::Dir(DirJob {
                                        parent,
                                        rel: child.clone(),
                                        name_len: name.len(),
                                        long_key: child_key,
                                        id: child_id,
                                    }));
                                }
                            }
                            // Subdirectories go on the stack before the visit's tasks, so the
                            // tasks run first and release this directory's handle; the last
                            // pushed is taken first, so the first in manifest order goes last.
                            subdirs.reverse();
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
                            let spawner = Spawner {
                                queue: &queue,
                                dir: id,
                                spawned: std::cell::Cell::new(0),
                            };
                            let result = (visitor.visit)(visited, &spawner);
                            let walked = WalkedDir {
                                subdirs: subdir_ids,
                                result,
                            };
                            board.visited(id, walked, spawner.spawned.get());
                        }
                    }
                    continue_job(&queue);
                }
                errors.lock().append(&mut failed);
            });
        }
        follow(&Walked { board: &board })
    });
    (followed, errors.into_inner())
}

/// A worker is done with the job it took.
fn continue_job(queue: &Queue<'_>) {
    let mut state = queue.state.lock();
    state.1 -= 1;
    if state.1 == 0 && state.0.is_empty() {
        queue.wake.notify_all();
    }
}

/// Takes every directory of a walk under way in manifest order (depth first from the root,
/// each directory's entries in order, a subdirectory gone through where its entry is), each
/// as soon as it and every one before it finished, and numbers them in that order (the root
/// 0). Calls `took(dir, path)` when it took a directory (`path` is its path relative to the
/// root), `run(dir, path, entries)` for each run of a directory's entries that lies between two
/// of its subdirectories, and `done(at, dir)` once directory number `at` and everything under
/// it have been gone through, handing it over: its subdirectories are then (entry index,
/// number), by entry index, like [`in_manifest_order`] goes through them (a subdirectory that
/// could not be read is not one of them). Returns how many directories it took: none if the
/// root could not be read.
///
/// The path is built in one buffer (a name pushed on the way down, truncated on the way back),
/// so memory grows with the tree, not with the square of its depth.
///
/// [`in_manifest_order`]: super::manifest::in_manifest_order
pub(crate) fn take_in_manifest_order<T>(
    walked: &Walked<'_, T>,
    listing_of: impl Fn(&T) -> &Listing,
    mut took: impl FnMut(&mut T, &[u8]),
    mut run: impl FnMut(&T, &[u8], std::ops::Range<usize>),
    mut done: impl FnMut(usize, Box<WalkedDir<T>>),
) -> usize {
    /// A directory being gone through, its index, next entry and next subdirectory, and the
    /// length of its path in the buffer. The frames on the stack are the directory being gone
    /// through and its ancestors: the only directories kept here.
    struct Frame<T> {
        dir: Box<WalkedDir<T>>,
        at: usize,
        start: usize,
        next: usize,
        path_len: usize,
    }
    let mut path = Vec::new();
    let Some(mut root) = walked.take(0) else {
        return 0;
    };
    took(&mut root.result, &path);
    let mut taken = 1;
    let mut stack = vec![Frame {
        dir: root,
        at: 0,
        start: 0,
        next: 0,
        path_len: 0,
    }];
    while let Some(mut frame) = stack.pop() {
        path.truncate(frame.path_len);
        let listing = listing_of(&frame.dir.result);
        let len = listing.entries.len();
        let subdir = frame.dir.subdirs.get(frame.next).copied();
        let end = subdir.map_or(len, |(entry, _)| (entry as usize).min(len));
        run(&frame.dir.result, &path, frame.start.min(end)..end);
        let Some((entry, id)) = subdir else {
            done(frame.at, frame.dir);
            continue;
        };
        if let Some((range, _)) = listing.entries.get(entry as usize) {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(listing.name(range));
        }
        frame.start = entry as usize + 1;
        let Some(mut child) = walked.take(id as usize) else {
            // Could not be read: not one of its subdirectories.
            frame.dir.subdirs.remove(frame.next);
            stack.push(frame);
            continue;
        };
        let at = taken;
        taken += 1;
        frame.dir.subdirs[frame.next].1 = at as u32;
        frame.next += 1;
        took(&mut child.result, &path);
        stack.push(frame);
        stack.push(Frame {
            dir: child,
            at,
            start: 0,
            next: 0,
            path_len: path.len(),
        });
    }
    taken
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
