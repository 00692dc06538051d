//! A parallel directory walker that never follows symlinks and has no depth limit.
//!
//! Jobs go on a shared stack served by a fixed set of worker threads: directories to visit, and
//! any task a visit hands back (hash-tree hashes files this way, so walking and hashing overlap).
//! Each directory is opened relative to its parent's handle, `fstat`ed, then listed into a single
//! name buffer — or, if the caller has a cached listing taken at exactly that stamp, not read at
//! all — and its regular files are `fstatat`ed relative to the open handle (no path resolution
//! beyond one component, no allocation per entry); a cached listing's file hashes are kept only
//! for the files whose fresh stamp is the one they were stored under (a listing of thousands of
//! files is stamped in chunks that every thread takes: see [`Worker::stamp_listing`]). Only
//! regular files are reported: symlinks, FIFOs, sockets and devices are never opened.
//!
//! The calling thread is one of the walk's threads: between the jobs it runs, it takes the
//! directories that are done in manifest order ([`InOrder`]), so that `hash-tree` prints a
//! directory's lines as soon as it and every directory before it are done, rather than all of
//! them once the walk is over, with no more threads than asked for.

use std::ffi::{CStr, OsStr};
use std::ops::Range;
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
    /// A task and the id of the directory whose visit queued it (none for a chunk of a
    /// directory's files to stamp: see [`Worker::stamp_listing`]).
    Task(Task<'env>, Option<usize>),
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

/// One directory a walk visited, as [`InOrder`] hands it over.
///
/// It keeps no path: a chain of `n` nested directories costs memory in proportion to `n`, not
/// `n²`.
pub(crate) struct WalkedDir<T> {
    /// Its subdirectories that were visited: (entry index in the listing it was visited with,
    /// number in manifest order), by entry index. So the tree can be gone through in manifest
    /// order again without looking a path up. (Until [`InOrder`] handed it
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

/// Stack of a walk's worker thread. A worker's calls are shallow (no recursion: directories
/// are queued, buffers are on the heap), and a small stack leaves the address space to the
/// heap under `ulimit -v` (the default, 2 MiB a thread, let a few threads exhaust it).
const WORKER_STACK: usize = 256 * 1024;

/// Most threads a walk starts: `asked`, but no more than whose stacks take a quarter of the
/// process's address-space limit (`ulimit -v`), so that the heap keeps the rest.
fn thread_limit(asked: usize) -> usize {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_AS) {
        Ok((soft, _)) if soft != RLIM_INFINITY => {
            let stacks = usize::try_from(soft / 4).unwrap_or(usize::MAX) / WORKER_STACK;
            asked.min(stacks.max(1))
        }
        _ => asked,
    }
}

struct Queue<'env> {
    state: Mutex<QueueState<'env>>,
    wake: Condvar,
}

struct QueueState<'env> {
    /// Jobs waiting.
    jobs: Vec<Job<'env>>,
    /// Jobs being worked on right now.
    working: usize,
    /// Threads waiting for a job.
    idle: usize,
}

/// Lets a visit queue tasks for the walk's workers; the walk returns once they have all run,
/// and the directory is handed to the calling thread (see [`Walked::try_take`]) once its own have.
pub(crate) struct Spawner<'q, 'env> {
    queue: &'q Queue<'env>,
    /// The id of the directory being visited, and how many tasks its visit queued.
    dir: usize,
    spawned: std::cell::Cell<usize>,
}

impl<'env> Spawner<'_, 'env> {
    pub fn spawn(&self, task: Task<'env>) {
        self.spawned.set(self.spawned.get() + 1);
        self.queue
            .state
            .lock()
            .jobs
            .push(Job::Task(task, Some(self.dir)));
        self.queue.wake.notify_one();
    }
}

/// The visited directories, by id, until the calling thread takes them (see [`Walked`]).
struct Board<T> {
    slots: Mutex<Vec<Slot<T>>>,
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
    /// Could not be read, or taken by the calling thread already.
    Gone,
}

impl<T> Board<T> {
    fn slot(slots: &mut Vec<Slot<T>>, id: usize) -> &mut Slot<T> {
        if slots.len() <= id {
            slots.resize_with(id + 1, || Slot::Pending { tasks_run: 0 });
        }
        &mut slots[id]
    }

    /// Directory `id` was visited, and its visit queued `tasks` tasks.
    fn visited(&self, id: usize, dir: WalkedDir<T>, tasks: usize) {
        let dir = Box::new(dir);
        let mut slots = self.slots.lock();
        let slot = Self::slot(&mut slots, id);
        let tasks_run = match slot {
            Slot::Pending { tasks_run } => *tasks_run,
            _ => 0,
        };
        let tasks_left = tasks.saturating_sub(tasks_run);
        *slot = Slot::Visited { dir, tasks_left };
    }

    /// Directory `id` could not be read.
    fn failed(&self, id: usize) {
        *Self::slot(&mut self.slots.lock(), id) = Slot::Gone;
    }

    /// A task queued by the visit of directory `id` has run.
    fn task_done(&self, id: usize) {
        match Self::slot(&mut self.slots.lock(), id) {
            Slot::Pending { tasks_run } => *tasks_run += 1,
            Slot::Visited { tasks_left, .. } => *tasks_left = tasks_left.saturating_sub(1),
            Slot::Gone => {}
        }
    }
}

/// What the calling thread sees of a walk under way (between the jobs it runs itself): the
/// directories that are done, each with every task its visit queued.
pub(crate) struct Walked<'b, T> {
    board: &'b Board<T>,
}

/// What [`Walked::try_take`] found of a directory.
pub(crate) enum Taken<T> {
    /// Done: here it is (its `subdirs` hold their ids).
    Done(Box<WalkedDir<T>>),
    /// Not visited yet, or some of its tasks still to run.
    NotYet,
    /// Could not be read, or taken already.
    Gone,
}

impl<T> Walked<'_, T> {
    /// Takes directory `id` if it was visited and every task its visit queued has run.
    pub fn try_take(&self, id: usize) -> Taken<T> {
        let mut slots = self.board.slots.lock();
        let slot = Board::slot(&mut slots, id);
        match slot {
            Slot::Visited { tasks_left: 0, .. } => match std::mem::replace(slot, Slot::Gone) {
                Slot::Visited { dir, .. } => Taken::Done(dir),
                _ => Taken::Gone,
            },
            Slot::Gone => Taken::Gone,
            Slot::Pending { .. } | Slot::Visited { .. } => Taken::NotYet,
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

/// Walks `root` with `threads` threads, the calling thread one of them, calling
/// `visitor.visit` for every directory; between the jobs it runs, and once more at the end, the
/// calling thread calls `follow` to take the directories that are done (see [`Walked`],
/// [`InOrder`]). Returns the errors met once every directory is visited and every queued task
/// has run.
///
/// Subdirectories are visited first to last in manifest order (as far as the threads' shared
/// stack allows), so that the caller can take them in that order soon after they are done.
pub(crate) fn walk<'env, T: Send>(
    root: &Path,
    threads: usize,
    excluded: &Excluded,
    exclude: &Exclude,
    visitor: Visitor<'_, 'env, T>,
    mut follow: impl FnMut(&Walked<'_, T>),
) -> Vec<WalkError> {
    let excluded_rel: Option<Vec<u8>> = excluded
        .dir
        .strip_prefix(root)
        .ok()
        .map(|rel| rel.as_os_str().as_bytes().to_vec());
    // Held for the whole walk: directories past the handle budget are reopened from it.
    let root_handle = nix::fcntl::open(root, dir_flags(), Mode::empty()).ok();
    let queue = Queue {
        state: Mutex::new(QueueState {
            jobs: vec![Job::Dir(DirJob {
                parent: None,
                rel: Vec::new(),
                name_len: 0,
                long_key: None,
                id: 0,
            })],
            working: 0,
            idle: 0,
        }),
        wake: Condvar::new(),
    };
    let board = Board {
        slots: Mutex::new(Vec::new()),
    };
    let shared = Shared {
        root,
        root_handle: root_handle.as_ref(),
        excluded,
        excluded_rel: excluded_rel.as_deref(),
        exclude,
        visitor,
        queue: &queue,
        board: &board,
        waiting_handles: AtomicUsize::new(0),
        next_id: AtomicUsize::new(1),
    };
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let work = || {
            let mut worker = Worker::new(&shared);
            let mut finished = false;
            while let Some((job, _)) = next_job(&queue, finished) {
                worker.run(job);
                finished = true;
            }
            errors.lock().append(&mut worker.failed);
        };
        // The calling thread walks too (no more threads than asked for), and between its jobs
        // takes what is done: nobody waits for it, and it never waits for a directory. It
        // starts the other threads one at a time, each when a job is left waiting with no
        // thread idle: a small or deep and narrow tree is walked by the threads it can keep
        // busy, without paying for the others.
        let walked = Walked { board: &board };
        let mut worker = Worker::new(&shared);
        let threads = thread_limit(threads);
        let (mut finished, mut started) = (false, 1);
        loop {
            follow(&walked);
            let Some((job, backlog)) = next_job(&queue, finished) else {
                break;
            };
            if backlog && started < threads {
                let builder = std::thread::Builder::new().stack_size(WORKER_STACK);
                started = match builder.spawn_scoped(scope, work) {
                    Ok(_) => started + 1,
                    // No thread to be had (`ulimit -v`, a process limit): those running walk on.
                    Err(_) => threads,
                };
            }
            worker.run(job);
            finished = true;
        }
        follow(&walked);
        errors.lock().append(&mut worker.failed);
    });
    errors.into_inner()
}

/// What every thread of a walk shares.
struct Shared<'w, 'env, T> {
    root: &'w Path,
    root_handle: Option<&'w OwnedFd>,
    excluded: &'w Excluded,
    /// The path of `excluded.dir` relative to the root, if it is in the tree.
    excluded_rel: Option<&'w [u8]>,
    exclude: &'w Exclude,
    visitor: Visitor<'w, 'env, T>,
    queue: &'w Queue<'env>,
    board: &'w Board<T>,
    /// Directory jobs waiting with their parent's handle (see [`MAX_WAITING_HANDLES`]).
    waiting_handles: AtomicUsize,
    /// The id of the next directory queued.
    next_id: AtomicUsize,
}

/// One thread of a walk: what it shares, and its own buffers.
struct Worker<'s, 'w, 'env, T> {
    shared: &'s Shared<'w, 'env, T>,
    failed: Vec<WalkError>,
    /// A subdirectory's path, built for its job.
    child: Vec<u8>,
    /// Reused for every directory: the jobs of its subdirectories.
    subdirs: Vec<Job<'env>>,
}

impl<'s, 'w, 'env, T> Worker<'s, 'w, 'env, T> {
    fn new(shared: &'s Shared<'w, 'env, T>) -> Self {
        Worker {
            shared,
            failed: Vec::new(),
            child: Vec::new(),
            subdirs: Vec::new(),
        }
    }

    /// Runs one job taken from the queue. The queue is told it is done by the next
    /// [`next_job`] (or [`continue_job`]) of this thread.
    fn run(&mut self, job: Job<'env>) {
        match job {
            Job::Task(task, dir) => {
                task();
                if let Some(dir) = dir {
                    self.shared.board.task_done(dir);
                }
            }
            Job::Dir(dir) => self.visit(dir),
        }
    }

    /// Opens and lists a directory, queues its subdirectories and visits it.
    fn visit(&mut self, job: DirJob) {
        let DirJob {
            parent,
            rel,
            name_len,
            long_key,
            id,
        } = job;
        let shared = self.shared;
        let key = long_key.as_deref().unwrap_or(&rel);
        let name = &rel[rel.len() - name_len..];
        if parent.is_some() {
            shared.waiting_handles.fetch_sub(1, Ordering::Relaxed);
        }
        let is_excluded = shared.excluded_rel == Some(rel.as_slice());
        let excluded = is_excluded.then_some(shared.excluded);
        let mut failed = std::mem::take(&mut self.failed);
        let opened = open_and_list(
            Root {
                path: shared.root,
                handle: shared.root_handle,
            },
            parent.as_deref(),
            DirName {
                name,
                rel: &rel,
                key,
            },
            excluded,
            shared.visitor.cached,
            &mut |handle, listing| self.stamp_listing(handle, listing),
            &mut failed,
        );
        self.failed.append(&mut failed);
        let Some(dir) = opened else {
            shared.board.failed(id);
            return;
        };
        let handle = dir.handle;
        let (listing, unfiltered) = filtered(dir.listing, &rel, shared.exclude);
        // (entry index, id) of each subdirectory, by entry index.
        let mut subdir_ids = Vec::new();
        // The counters every thread shares are touched once per directory, not once per
        // subdirectory: ids for all its subdirectories at once, and as many of the waiting
        // handles as the budget leaves (the first subdirectories in manifest order get them).
        let subdirs = (listing.entries.iter())
            .filter(|(_, kind)| matches!(kind, Listed::Dir))
            .count();
        let (mut next_id, mut with_handle) = (0, 0);
        if subdirs > 0 {
            next_id = shared.next_id.fetch_add(subdirs, Ordering::Relaxed);
            let held = shared.waiting_handles.fetch_add(subdirs, Ordering::Relaxed);
            with_handle = MAX_WAITING_HANDLES.saturating_sub(held).min(subdirs);
            if with_handle < subdirs {
                (shared.waiting_handles).fetch_sub(subdirs - with_handle, Ordering::Relaxed);
            }
        }
        for (i, (range, kind)) in listing.entries.iter().enumerate() {
            if let Listed::Dir = kind {
                let name = listing.name(range);
                join_rel(&mut self.child, &rel, name);
                let parent = (with_handle > 0).then(|| handle.clone());
                with_handle = with_handle.saturating_sub(1);
                let child_key = dir_key(key, name, self.child.len());
                let child_id = next_id;
                next_id += 1;
                subdir_ids.push((i as u32, child_id as u32));
                self.subdirs.push(Job::Dir(DirJob {
                    parent,
                    rel: self.child.clone(),
                    name_len: name.len(),
                    long_key: child_key,
                    id: child_id,
                }));
            }
        }
        // Subdirectories go on the stack before the visit's tasks, so the tasks run first and
        // release this directory's handle; the last pushed is taken first, so the first in
        // manifest order goes last.
        self.subdirs.reverse();
        {
            let mut state = shared.queue.state.lock();
            state.jobs.append(&mut self.subdirs);
        }
        shared.queue.wake.notify_all();
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
            queue: shared.queue,
            dir: id,
            spawned: std::cell::Cell::new(0),
        };
        let result = (shared.visitor.visit)(visited, &spawner);
        let walked = WalkedDir {
            subdirs: subdir_ids,
            result,
        };
        shared.board.visited(id, walked, spawner.spawned.get());
    }
}

/// Cached listings of more files than this are stamped in chunks (see
/// [`Worker::stamp_listing`]), of this many files each.
const BIG_LISTING: usize = 2048;
const STAMP_CHUNK: usize = 1024;

/// A chunk's number, and each of its files' fresh stamp (`None`: gone, no longer a regular
/// file, or not stamped).
type StampedChunk = (usize, Vec<Option<Stamp>>);

/// The files of a large cached listing, stamped a chunk at a time by whichever threads are free.
struct StampChunks {
    handle: Arc<OwnedFd>,
    /// A copy of the listing's names, and each file's entry index and name range.
    names: Vec<u8>,
    files: Vec<(u32, Range<u32>)>,
    /// The chunks stamped so far, and how many they are.
    stamped: Mutex<(Vec<StampedChunk>, usize)>,
    done: Condvar,
}

impl StampChunks {
    /// Stamps chunk `chunk` and hands it in.
    fn stamp(&self, chunk: usize) {
        let start = chunk * STAMP_CHUNK;
        let files = self
            .files
            .get(start..(start + STAMP_CHUNK).min(self.files.len()));
        // A handle of its own for the chunk (the directory itself, `.` of the shared one):
        // threads stamping through one shared handle contend for its reference count on
        // every call. If it cannot be had, the shared one does.
        let own = nix::fcntl::openat(&*self.handle, c".", dir_flags(), Mode::empty()).ok();
        let handle = own.as_ref().unwrap_or(&self.handle);
        let stamps = (files.unwrap_or_default().iter())
            .map(|(_, range)| {
                let name = self.names.get(range.start as usize..=range.end as usize)?;
                let name = CStr::from_bytes_with_nul(name).ok()?;
                stamp_file_at(handle, name).ok().flatten()
            })
            .collect();
        let mut stamped = self.stamped.lock();
        stamped.0.push((chunk, stamps));
        stamped.1 += 1;
        self.done.notify_all();
    }
}

impl<'env, T> Worker<'_, '_, 'env, T> {
    /// Stamps the files of a cached listing, as [`stat_cached_files`] does. A listing of more
    /// than [`BIG_LISTING`] files is stamped in chunks queued for every thread, this one
    /// stamping the first and running other jobs until the rest are in: a directory of
    /// thousands of files then does not leave one thread stamping alone at the end of a walk.
    fn stamp_listing(&mut self, handle: &Arc<OwnedFd>, listing: &mut Listing) -> bool {
        // Most listings are small: stamped here, without gathering their files first.
        if listing.entries.len() <= BIG_LISTING {
            return stat_cached_files(handle, listing);
        }
        let files: Vec<(u32, Range<u32>)> = (listing.entries.iter().enumerate())
            .filter(|(_, (_, kind))| matches!(kind, Listed::File(_)))
            .map(|(i, (range, _))| (i as u32, range.clone()))
            .collect();
        if files.len() <= BIG_LISTING {
            return stat_cached_files(handle, listing);
        }
        let chunks = files.len().div_ceil(STAMP_CHUNK);
        let shared = Arc::new(StampChunks {
            handle: handle.clone(),
            names: listing.names.clone(),
            files,
            stamped: Mutex::new((Vec::with_capacity(chunks), 0)),
            done: Condvar::new(),
        });
        {
            let mut state = self.shared.queue.state.lock();
            for chunk in (1..chunks).rev() {
                let shared = shared.clone();
                let task: Task<'env> = Box::new(move || shared.stamp(chunk));
                state.jobs.push(Job::Task(task, None));
            }
        }
        self.shared.queue.wake.notify_all();
        shared.stamp(0);
        // Run other jobs (the chunks first: they are on top) until every chunk is in.
        loop {
            if shared.stamped.lock().1 == chunks {
                break;
            }
            if let Some(job) = try_job(self.shared.queue) {
                self.run(job);
                continue_job(self.shared.queue);
                continue;
            }
            let mut stamped = shared.stamped.lock();
            if stamped.1 < chunks {
                // The rest are being stamped by other threads.
                shared.done.wait(&mut stamped);
            }
        }
        let stamped = std::mem::take(&mut shared.stamped.lock().0);
        for (chunk, stamps) in stamped {
            let files = &shared.files[chunk * STAMP_CHUNK..];
            for (&(i, _), fresh) in files.iter().zip(stamps) {
                let i = i as usize;
                let Some(fresh) = fresh else {
                    return false;
                };
                if !matches!(listing.entries.get(i), Some((_, Listed::File(_)))) {
                    return false;
                }
                take_fresh_stamp(listing, i, fresh);
            }
        }
        true
    }
}

/// A job from the queue if there is one now (counted as being worked on, like [`next_job`]).
fn try_job<'env>(queue: &Queue<'env>) -> Option<Job<'env>> {
    let mut state = queue.state.lock();
    let job = state.jobs.pop()?;
    state.working += 1;
    Some(job)
}

/// A worker is done with the job it took.
fn continue_job(queue: &Queue<'_>) {
    let mut state = queue.state.lock();
    state.working -= 1;
    if state.working == 0 && state.jobs.is_empty() {
        queue.wake.notify_all();
    }
}

/// Takes the directories of a walk under way in manifest order (depth first from the root,
/// each directory's entries in order, a subdirectory gone through where its entry is), each
/// as soon as it and every one before it are done, and numbers them in that order (the root
/// 0). [`advance`](InOrder::advance) goes as far as the directories done allow, and is called
/// again later to go on; once the walk is over, it goes through the rest.
///
/// The path is built in one buffer (a name pushed on the way down, truncated on the way back),
/// and only the directory being gone through and its ancestors are kept here, so memory grows
/// with the tree, not with the square of its depth.
pub(crate) struct InOrder<T> {
    /// The directory being gone through, on top, and its ancestors.
    stack: Vec<Frame<T>>,
    path: Vec<u8>,
    /// Directories taken so far.
    taken: usize,
    /// Whether the root was looked at and found gone.
    root_gone: bool,
}

/// A directory being gone through: its number, next entry and next subdirectory, the length of
/// its path in the buffer, and whether its entries up to that subdirectory were handed out.
struct Frame<T> {
    dir: Box<WalkedDir<T>>,
    at: usize,
    start: usize,
    next: usize,
    path_len: usize,
    ran: bool,
}

impl<T> InOrder<T> {
    pub fn new() -> Self {
        InOrder {
            stack: Vec::new(),
            path: Vec::new(),
            taken: 0,
            root_gone: false,
        }
    }

    /// How many directories were taken: none if the root could not be read.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// Goes on in manifest order as far as the directories done allow. Calls `took(dir, path)`
    /// when it takes a directory (`path` is its path relative to the root), `run(dir, path,
    /// entries)` for each run of a directory's entries that lies between two of its
    /// subdirectories, and `done(at, dir)` once directory number `at` and everything under it
    /// have been gone through, handing it over: its subdirectories are then (entry index,
    /// number), by entry index, like [`in_manifest_order`] goes through them (a subdirectory
    /// that could not be read is not one of them).
    ///
    /// [`in_manifest_order`]: super::manifest::in_manifest_order
    pub fn advance(
        &mut self,
        walked: &Walked<'_, T>,
        listing_of: impl Fn(&T) -> &Listing,
        mut took: impl FnMut(&mut T, &[u8]),
        mut run: impl FnMut(&T, &[u8], std::ops::Range<usize>),
        mut done: impl FnMut(usize, Box<WalkedDir<T>>),
    ) {
        if self.taken == 0 {
            if self.root_gone {
                return;
            }
            match walked.try_take(0) {
                Taken::Done(mut root) => {
                    self.path.clear();
                    took(&mut root.result, &self.path);
                    self.taken = 1;
                    self.stack.push(Frame {
                        dir: root,
                        at: 0,
                        start: 0,
                        next: 0,
                        path_len: 0,
                        ran: false,
                    });
                }
                Taken::Gone => {
                    self.root_gone = true;
                    return;
                }
                Taken::NotYet => return,
            }
        }
        while let Some(frame) = self.stack.last_mut() {
            self.path.truncate(frame.path_len);
            let listing = listing_of(&frame.dir.result);
            let len = listing.entries.len();
            let subdir = frame.dir.subdirs.get(frame.next).copied();
            let end = subdir.map_or(len, |(entry, _)| (entry as usize).min(len));
            if !frame.ran {
                run(&frame.dir.result, &self.path, frame.start.min(end)..end);
                frame.ran = true;
            }
            let Some((entry, id)) = subdir else {
                if let Some(frame) = self.stack.pop() {
                    done(frame.at, frame.dir);
                }
                continue;
            };
            let child = match walked.try_take(id as usize) {
                Taken::NotYet => return,
                Taken::Gone => {
                    // Could not be read: not one of its subdirectories.
                    frame.dir.subdirs.remove(frame.next);
                    frame.start = entry as usize + 1;
                    frame.ran = false;
                    continue;
                }
                Taken::Done(child) => child,
            };
            if let Some((range, _)) = listing.entries.get(entry as usize) {
                if !self.path.is_empty() {
                    self.path.push(b'/');
                }
                self.path.extend_from_slice(listing.name(range));
            }
            let at = self.taken;
            self.taken += 1;
            frame.dir.subdirs[frame.next].1 = at as u32;
            frame.start = entry as usize + 1;
            frame.next += 1;
            frame.ran = false;
            let mut child = child;
            took(&mut child.result, &self.path);
            self.stack.push(Frame {
                dir: child,
                at,
                start: 0,
                next: 0,
                path_len: self.path.len(),
                ran: false,
            });
        }
    }
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
        escape_names: listing.escape_names,
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

/// The next job from the queue, waiting for one while others are being worked on; `None` once
/// there is none left and none being worked on. `finished`: this thread is done with the job it
/// took before (told under the same lock: one lock a job, not two). With the job comes whether
/// other jobs are left waiting with no thread idle to take them (see [`walk`]).
fn next_job<'env>(queue: &Queue<'env>, finished: bool) -> Option<(Job<'env>, bool)> {
    let mut state = queue.state.lock();
    if finished {
        state.working -= 1;
        if state.working == 0 && state.jobs.is_empty() {
            queue.wake.notify_all();
            return None;
        }
    }
    loop {
        if let Some(job) = state.jobs.pop() {
            state.working += 1;
            let backlog = !state.jobs.is_empty() && state.idle == 0;
            return Some((job, backlog));
        }
        if state.working == 0 {
            return None;
        }
        state.idle += 1;
        queue.wake.wait(&mut state);
        state.idle -= 1;
    }
}

struct OpenDir {
    handle: Arc<OwnedFd>,
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
    stamp_files: &mut dyn FnMut(&Arc<OwnedFd>, &mut Listing) -> bool,
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
        Ok(handle) => Arc::new(handle),
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
        && stamp_files(&handle, &mut listing)
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
        let (range, Listed::File(_)) = &listing.entries[i] else {
            continue;
        };
        let Some(name) = listing.c_name(range) else {
            return false;
        };
        let fresh = match stamp_file_at(handle, name) {
            Ok(Some(fresh)) => fresh,
            _ => return false,
        };
        take_fresh_stamp(listing, i, fresh);
    }
    true
}

/// Records `fresh` as the stamp of file entry `i` of a cached listing, dropping its cached
/// hash unless that was stored under exactly this stamp.
fn take_fresh_stamp(listing: &mut Listing, i: usize, fresh: Stamp) {
    if !matches!(listing.entries[i].1, Listed::File(Some(stored)) if stored == fresh)
        && let Some(hash) = listing.hashes.get_mut(i)
    {
        *hash = None;
    }
    listing.entries[i].1 = Listed::File(Some(fresh));
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
