//! `import`: one entry per regular file under a directory.
//!
//! The tree is walked through directory handles: each directory is opened relative to its
//! parent's handle without following a symlink, and each file relative to its directory's handle
//! with `O_NOFOLLOW | O_NONBLOCK`, then `fstat`ed; only a regular file is read. So a file swapped
//! for a symlink after the directory was listed is not followed (another file of the user would
//! be imported under its key), and one swapped for a FIFO does not block the import while it
//! holds the shard's lock. The shard's own files (base, delta, lock, temp files: see
//! [`warmshard::is_shard_file`]) are left out when the shard lies inside the tree.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use warmshard::{BulkMode, Error, Shard};

use crate::{Outcome, report_write};

pub(crate) fn import(shard: &Shard, dir: &Path, replace: bool) -> Outcome {
    let mode = if replace {
        BulkMode::Replace
    } else {
        BulkMode::Merge
    };
    // Hidden unless stderr is a terminal; shows files and bytes imported so far.
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {pos} files, {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut writer = shard.bulk_writer(mode)?;
    let mut bytes = 0u64;
    let mut files = 0u64;
    let mut tree = Tree::open(dir, shard.path())?;
    tree.for_each_file(&mut |key, value| {
        writer.add(key, value)?;
        files += 1;
        bytes += value.len() as u64;
        if files.is_multiple_of(256) {
            progress.set_position(files);
            progress.set_message(indicatif::HumanBytes(bytes).to_string());
        }
        Ok(())
    })?;
    let outcome = writer.commit()?;
    progress.finish_and_clear();
    report_write(&outcome);
    if let warmshard::WriteOutcome::Committed {
        entries,
        file_bytes,
        ..
    } = outcome
    {
        eprintln!(
            "imported {files} files ({}); {} now holds {entries} entries in {}",
            indicatif::HumanBytes(bytes),
            shard.path().display(),
            indicatif::HumanBytes(file_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Directories deeper than this give up their handle while their subdirectories are walked and
/// reopen it from the root afterwards, so a deep tree cannot exhaust the file descriptors.
const KEPT_HANDLES: usize = 64;

/// A directory tree being imported.
struct Tree {
    root: PathBuf,
    root_handle: OwnedFd,
    /// Device and inode of the directory holding the shard, and the shard's file name.
    shard_dir: Option<(nix::libc::dev_t, nix::libc::ino_t)>,
    shard_name: std::ffi::OsString,
    /// Called after a directory is listed, before any of its entries is opened (tests swap
    /// entries here).
    #[cfg(test)]
    after_listing: Option<ListingHook>,
}

/// A test's hook, called with a directory's relative path once it is listed.
#[cfg(test)]
type ListingHook = Box<dyn FnMut(&[u8])>;

/// What the walk hands each regular file to: its key and content.
type Found<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), Error> + 'a;

/// A directory on the walk's stack: its handle (`None` while given up, see [`KEPT_HANDLES`]), its
/// path relative to the root, its entries sorted by name, and the next entry to visit.
struct Frame {
    handle: Option<OwnedFd>,
    rel: Vec<u8>,
    entries: Vec<(Vec<u8>, Option<Type>)>,
    next: usize,
}

impl Tree {
    /// Opens `dir` (following a symlink given as the root itself, as before).
    fn open(dir: &Path, shard_path: &Path) -> Result<Tree, Error> {
        let io = |op, e: Errno| Error::Io {
            op,
            path: dir.to_path_buf(),
            source: e.into(),
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root_handle = match nix::fcntl::open(dir, flags, Mode::empty()) {
            Ok(handle) => handle,
            Err(Errno::ENOTDIR) => {
                return Err(Error::InvalidInput(format!(
                    "{} is not a directory; import takes a directory",
                    dir.display()
                )));
            }
            Err(e) => return Err(io("opening", e)),
        };
        let parent = shard_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let shard_dir = nix::sys::stat::stat(parent)
            .ok()
            .map(|st| (st.st_dev, st.st_ino));
        Ok(Tree {
            root: dir.to_path_buf(),
            root_handle,
            shard_dir,
            shard_name: shard_path.file_name().unwrap_or_default().to_os_string(),
            #[cfg(test)]
            after_listing: None,
        })
    }

    fn path_of(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn error(&self, op: &'static str, rel: &[u8], source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            op,
            path: self.path_of(rel),
            source: source.into(),
        }
    }

    /// Calls `found(key, content)` for every regular file, depth first in name order, with the
    /// key its path relative to the root (`/`-separated, the name's bytes as they are).
    fn for_each_file(&mut self, found: &mut Found<'_>) -> Result<(), Error> {
        let root = nix::fcntl::openat(&self.root_handle, ".", dir_flags(), Mode::empty())
            .map_err(|e| self.error("opening", b"", e))?;
        let mut stack = vec![self.list(root, Vec::new())?];
        let mut value = Vec::new();
        let mut key = Vec::new();
        while let Some(frame) = stack.last_mut() {
            let Some((name, kind)) = frame.entries.get(frame.next) else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            key.clear();
            if !frame.rel.is_empty() {
                key.extend_from_slice(&frame.rel);
                key.push(b'/');
            }
            key.extend_from_slice(name);
            if frame.handle.is_none() {
                frame.handle = Some(
                    self.reopen(&frame.rel)
                        .map_err(|e| self.error("opening", &frame.rel, e))?,
                );
            }
            let Some(handle) = frame.handle.as_ref() else {
                continue;
            };
            let name = OsStr::from_bytes(name);
            let kind = match kind {
                Some(kind) => *kind,
                // DT_UNKNOWN: the stat decides.
                None => match nix::sys::stat::fstatat(handle, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => kind_of(&st),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(self.error("reading", &key, e)),
                },
            };
            match kind {
                Type::Directory => {
                    let opened = match nix::fcntl::openat(handle, name, dir_flags(), Mode::empty())
                    {
                        Ok(opened) => opened,
                        // Removed, or replaced by a symlink or a file, since listed.
                        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                        Err(e) => return Err(self.error("opening", &key, e)),
                    };
                    if stack.len() > KEPT_HANDLES
                        && let Some(parent) = stack.last_mut()
                    {
                        parent.handle = None;
                    }
                    let frame = self.list(opened, key.clone())?;
                    stack.push(frame);
                }
                Type::File
                    if read_regular_file(handle, name, &mut value)
                        .map_err(|e| self.error("reading", &key, e))? =>
                {
                    found(&key, &value)?;
                }
                // Symlinks, FIFOs, sockets and devices are never opened.
                _ => {}
            }
        }
        Ok(())
    }

    /// Lists the open directory at `rel`: its entries sorted by name, without `.`, `..` and the
    /// shard's own files.
    fn list(&mut self, handle: OwnedFd, rel: Vec<u8>) -> Result<Frame, Error> {
        let st = nix::sys::stat::fstat(&handle).map_err(|e| self.error("reading", &rel, e))?;
        let holds_shard = self.shard_dir == Some((st.st_dev, st.st_ino));
        let reader = nix::fcntl::openat(
            &handle,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(Dir::from_fd)
        .map_err(|e| self.error("reading", &rel, e));
        let mut reader = reader?;
        let mut entries = Vec::new();
        for entry in reader.iter() {
            let entry = entry.map_err(|e| self.error("reading", &rel, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if holds_shard && warmshard::is_shard_file(&self.shard_name, OsStr::from_bytes(name)) {
                continue;
            }
            entries.push((name.to_vec(), entry.file_type()));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        #[cfg(test)]
        if let Some(hook) = &mut self.after_listing {
            hook(&rel);
        }
        Ok(Frame {
            handle: Some(handle),
            rel,
            entries,
            next: 0,
        })
    }

    /// Opens the directory at `rel` again from the root, one component at a time (no path
    /// length limit, no symlink followed).
    fn reopen(&self, rel: &[u8]) -> nix::Result<OwnedFd> {
        let mut handle = nix::fcntl::openat(&self.root_handle, ".", dir_flags(), Mode::empty())?;
        for component in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            handle = nix::fcntl::openat(
                &handle,
                OsStr::from_bytes(component),
                dir_flags(),
                Mode::empty(),
            )?;
        }
        Ok(handle)
    }
}

/// How a directory below the root is opened: never through a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn kind_of(st: &FileStat) -> Type {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Type::Directory,
        SFlag::S_IFREG => Type::File,
        SFlag::S_IFLNK => Type::Symlink,
        SFlag::S_IFIFO => Type::Fifo,
        SFlag::S_IFSOCK => Type::Socket,
        SFlag::S_IFCHR => Type::CharacterDevice,
        _ => Type::BlockDevice,
    }
}

/// Reads the file `name` of the directory `dir` into `out` if it is a regular file; false (and
/// nothing read) if it is gone or is anything else — a symlink is not followed, a FIFO is not
/// waited on, a device is not read.
fn read_regular_file(dir: &OwnedFd, name: &OsStr, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
        Ok(file) => file,
        // Removed, or replaced by a symlink, since the directory was listed.
        Err(Errno::ENOENT | Errno::ELOOP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let st = nix::sys::stat::fstat(file.as_fd())?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Ok(false);
    }
    out.clear();
    File::from(file).read_to_end(out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports `root` into a list of (key, value), running `swap` after the root is listed.
    fn import_with_swap(root: &Path, swap: impl FnMut(&[u8]) + 'static) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut tree = Tree::open(root, Path::new("/nonexistent/x.shard")).unwrap();
        tree.after_listing = Some(Box::new(swap));
        let mut found = Vec::new();
        tree.for_each_file(&mut |key, value| {
            found.push((key.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
        found
    }

    #[test]
    fn files_swapped_after_listing_for_a_symlink_or_a_fifo_are_skipped_not_followed_or_waited_on() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("secret"), "another file of the user").unwrap();
        for name in ["a", "link", "fifo", "z"] {
            std::fs::write(root.join(name), name).unwrap();
        }
        let dir = root.clone();
        let secret = tmp.path().join("secret");
        let found = import_with_swap(&root, move |rel| {
            assert!(rel.is_empty());
            std::fs::remove_file(dir.join("link")).unwrap();
            std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
            std::fs::remove_file(dir.join("fifo")).unwrap();
            nix::unistd::mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        });
        let keys: Vec<&[u8]> = found.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"a"[..], b"z"]);
    }
}
