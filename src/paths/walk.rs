//! A parallel directory walker that never follows symlinks and has no depth limit.
//!
//! Directories go on a shared stack; each worker lists one directory at a time and `lstat`s its
//! entries relative to the open directory (std's `DirEntry::metadata` uses `statx` on the
//! directory's descriptor). Only regular files are visited: symlinks, FIFOs, sockets and devices
//! are never opened.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};

use super::stamp::Stamp;

/// A directory or file that could not be read during the walk.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

struct Queue {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    dirs: Vec<(PathBuf, Vec<u8>)>,
    busy: usize,
}

/// Walks `root` with `threads` workers; calls `visit(relative path bytes, stamp)` for every
/// regular file not rejected by `exclude(directory, name)`, and returns what the visits returned
/// (in no particular order) and the errors met.
pub(crate) fn walk<T: Send>(
    root: &Path,
    threads: usize,
    exclude: &(dyn Fn(&Path, &OsStr) -> bool + Sync),
    visit: &(dyn Fn(Vec<u8>, Stamp) -> T + Sync),
) -> (Vec<T>, Vec<WalkError>) {
    let queue = Queue {
        state: Mutex::new(State {
            dirs: vec![(root.to_path_buf(), Vec::new())],
            busy: 0,
        }),
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
                    let subdirs = list(&dir, &rel, exclude, visit, &mut found, &mut failed);
                    let mut state = queue.state.lock();
                    state.busy -= 1;
                    state.dirs.extend(subdirs);
                    queue.wake.notify_all();
                }
                results.lock().append(&mut found);
                errors.lock().append(&mut failed);
            });
        }
    });
    (results.into_inner(), errors.into_inner())
}

fn next_dir(queue: &Queue) -> Option<(PathBuf, Vec<u8>)> {
    let mut state = queue.state.lock();
    loop {
        if let Some(job) = state.dirs.pop() {
            state.busy += 1;
            return Some(job);
        }
        if state.busy == 0 {
            return None;
        }
        queue.wake.wait(&mut state);
    }
}

fn join_rel(rel: &[u8], name: &OsStr) -> Vec<u8> {
    let name = name.as_bytes();
    let mut key = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        key.extend_from_slice(rel);
        key.push(b'/');
    }
    key.extend_from_slice(name);
    key
}

fn list<T>(
    dir: &Path,
    rel: &[u8],
    exclude: &(dyn Fn(&Path, &OsStr) -> bool + Sync),
    visit: &(dyn Fn(Vec<u8>, Stamp) -> T + Sync),
    found: &mut Vec<T>,
    failed: &mut Vec<WalkError>,
) -> Vec<(PathBuf, Vec<u8>)> {
    let mut subdirs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            failed.push(WalkError {
                path: dir.to_path_buf(),
                error,
            });
            return subdirs;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                failed.push(WalkError {
                    path: dir.to_path_buf(),
                    error,
                });
                continue;
            }
        };
        let name = entry.file_name();
        let Ok(file_type) = entry.file_type() else {
            continue; // vanished since listed
        };
        if file_type.is_dir() {
            subdirs.push((entry.path(), join_rel(rel, &name)));
        } else if file_type.is_file() && !exclude(dir, &name) {
            match entry.metadata() {
                Ok(meta) => {
                    let stamp = Stamp::from_metadata(&meta);
                    // Re-checked: the name may have been replaced by something else.
                    if stamp.is_file() {
                        found.push(visit(join_rel(rel, &name), stamp));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => failed.push(WalkError {
                    path: entry.path(),
                    error,
                }),
            }
        }
    }
    subdirs
}
