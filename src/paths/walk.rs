//! A parallel directory walker that never follows symlinks and has no depth limit.
//!
//! Directories go on a shared stack; each worker lists one directory at a time into a single
//! name buffer and `fstatat`s its regular files relative to the open directory handle (no path
//! resolution beyond one component, no allocation per entry). Only regular files are reported:
//! symlinks, FIFOs, sockets and devices are never opened.
//!
//! Entries of a listing come sorted in **manifest order**: by name bytes, where a directory sorts
//! as `name/`. Concatenating a depth-first traversal in that order yields every file path sorted
//! by its bytes, so callers never sort the whole tree.

use std::ffi::CStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use parking_lot::{Condvar, Mutex};

use super::stamp::Stamp;

/// A directory or file that could not be read during the walk.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// One entry of a [`Listing`]: a regular file with its stamp, or a subdirectory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listed {
    File(Stamp),
    Dir,
}

/// The regular files and subdirectories of one directory, in manifest order.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    names: Vec<u8>,
    pub entries: Vec<(Range<u32>, Listed)>,
}

impl Listing {
    pub fn name(&self, range: &Range<u32>) -> &[u8] {
        &self.names[range.start as usize..range.end as usize]
    }
}

/// Names in one directory that must not be reported (the cache's own files).
pub(crate) struct Excluded {
    pub dir: PathBuf,
    pub names: Vec<Vec<u8>>,
    pub prefix: Vec<u8>,
}

impl Excluded {
    fn matches(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| n == name) || name.starts_with(&self.prefix)
    }
}

/// A directory to list: its absolute path and its path relative to the root.
type DirJob = (PathBuf, Vec<u8>);

struct Queue {
    /// Directories waiting, and how many are being listed right now.
    state: Mutex<(Vec<DirJob>, usize)>,
    wake: Condvar,
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

/// Walks `root` with `threads` workers; calls `visit(relative dir path, listing)` in the worker
/// for every directory and returns `(relative dir path, result)` pairs in no particular order,
/// with the errors met.
pub(crate) fn walk<T: Send>(
    root: &Path,
    threads: usize,
    excluded: &Excluded,
    visit: &(dyn Fn(&[u8], Listing) -> T + Sync),
) -> (Vec<(Vec<u8>, T)>, Vec<WalkError>) {
    let queue = Queue {
        state: Mutex::new((vec![(root.to_path_buf(), Vec::new())], 0)),
        wake: Condvar::new(),
    };
    let results = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut found = Vec::new();
                let mut failed = Vec::new();
                while let Some((dir, rel)) = next_dir(&queue) {
                    let excluded = (dir == excluded.dir).then_some(excluded);
                    let subdirs = match list(&dir, excluded, &mut failed) {
                        Some(listing) => {
                            let mut subdirs = Vec::new();
                            let mut child = Vec::new();
                            for (range, kind) in &listing.entries {
                                if let Listed::Dir = kind {
                                    let name = listing.name(range);
                                    join_rel(&mut child, &rel, name);
                                    let abs = dir.join(std::ffi::OsStr::from_bytes(name));
                                    subdirs.push((abs, child.clone()));
                                }
                            }
                            let result = visit(&rel, listing);
                            found.push((rel, result));
                            subdirs
                        }
                        None => Vec::new(),
                    };
                    let mut state = queue.state.lock();
                    state.1 -= 1;
                    state.0.extend(subdirs);
                    queue.wake.notify_all();
                }
                results.lock().append(&mut found);
                errors.lock().append(&mut failed);
            });
        }
    });
    (results.into_inner(), errors.into_inner())
}

fn next_dir(queue: &Queue) -> Option<DirJob> {
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

fn list(dir: &Path, excluded: Option<&Excluded>, failed: &mut Vec<WalkError>) -> Option<Listing> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut handle = match Dir::open(dir, flags, Mode::empty()) {
        Ok(handle) => handle,
        Err(errno) => {
            failed.push(WalkError {
                path: dir.to_path_buf(),
                error: errno.into(),
            });
            return None;
        }
    };
    let mut listing = Listing::default();
    let mut to_stat: Vec<(Range<u32>, bool)> = Vec::new();
    for entry in handle.iter() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => {
                failed.push(WalkError {
                    path: dir.to_path_buf(),
                    error: errno.into(),
                });
                break;
            }
        };
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." || excluded.is_some_and(|e| e.matches(name)) {
            continue;
        }
        let (is_dir, needs_stat) = match entry.file_type() {
            Some(Type::Directory) => (true, false),
            Some(Type::File) => (false, true),
            None => (false, true), // DT_UNKNOWN: the stat decides
            Some(_) => continue,   // symlink, FIFO, socket, device: never opened
        };
        let start = listing.names.len() as u32;
        listing.names.extend_from_slice(name);
        listing.names.push(0);
        let range = start..listing.names.len() as u32 - 1;
        if is_dir {
            listing.entries.push((range, Listed::Dir));
        } else {
            to_stat.push((range, needs_stat));
        }
    }
    for (range, _) in to_stat {
        let with_nul = &listing.names[range.start as usize..=range.end as usize];
        let Ok(name) = CStr::from_bytes_with_nul(with_nul) else {
            continue;
        };
        match nix::sys::stat::fstatat(&handle, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                let stamp = Stamp::from_stat(&stat);
                if stamp.is_file() {
                    listing.entries.push((range, Listed::File(stamp)));
                } else if stamp.mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
                    listing.entries.push((range, Listed::Dir));
                }
            }
            Err(nix::errno::Errno::ENOENT) => {} // removed since listed
            Err(errno) => failed.push(WalkError {
                path: dir.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                error: errno.into(),
            }),
        }
    }
    let names = &listing.names;
    listing.entries.sort_unstable_by(|(a, ka), (b, kb)| {
        manifest_order(
            &names[a.start as usize..a.end as usize],
            matches!(ka, Listed::Dir),
            &names[b.start as usize..b.end as usize],
            matches!(kb, Listed::Dir),
        )
    });
    Some(listing)
}

/// Compares two entry names as `name` for files and `name/` for directories: the order in
/// which their full paths sort.
fn manifest_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        std::cmp::Ordering::Equal => {}
        unequal => return unequal,
    }
    // One name is a prefix of the other: compare what follows, a directory's '/' included.
    let a_rest = a[common..].iter().chain(a_dir.then_some(&b'/'));
    let b_rest = b[common..].iter().chain(b_dir.then_some(&b'/'));
    a_rest.cmp(b_rest)
}

#[cfg(test)]
mod tests {
    use super::manifest_order;

    #[test]
    fn manifest_order_matches_sorting_full_paths() {
        let names: [(&[u8], bool); 7] = [
            (b"b", true),
            (b"b.txt", false),
            (b"b0", false),
            (b"a", false),
            (b"ba", true),
            (b"b-", false),
            (b"", false),
        ];
        for (a, a_dir) in names {
            for (b, b_dir) in names {
                let full = |n: &[u8], d: bool| [n, if d { b"/x" } else { b"" }].concat();
                assert_eq!(
                    manifest_order(a, a_dir, b, b_dir),
                    full(a, a_dir).cmp(&full(b, b_dir)),
                    "{a:?}/{a_dir} vs {b:?}/{b_dir}"
                );
            }
        }
    }
}
