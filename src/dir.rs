//! The directory that holds a shard, as an open handle ([`ShardDir`]): resolved and checked once
//! per read or write, then every open, rename, unlink and fsync of the shard's files is made
//! relative to it (`openat`, `renameat`, `unlinkat`), so nobody can redirect a read or a write
//! to another directory by swapping a path component in between.
//!
//! What is checked (as OpenSSH's `StrictModes` does for key files):
//!
//! - the last component is opened with `O_NOFOLLOW`: a symlink there is followed only when the
//!   current user or root owns it (a user may point their cache at another disk; another user
//!   planting one in a shared directory must not redirect the shard);
//! - the directory behind the handle (`fstat`) is owned by the current user or root and is not
//!   writable by others unless sticky ([`trust::check_dir_as`]);
//! - so is **every ancestor** up to `/` (one `stat` each): in a world-writable, non-sticky
//!   ancestor another user could rename the shard's directory away and put another in its place.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::trust;

/// An open, checked handle on the directory holding a shard.
pub(crate) struct ShardDir {
    fd: OwnedFd,
    /// The path it was opened by, for messages.
    pub path: PathBuf,
}

/// Why a directory was refused: which directory, and what is wrong with it.
pub(crate) struct Refused {
    pub path: PathBuf,
    pub reason: String,
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        Error::Untrusted {
            path: r.path,
            reason: r.reason,
        }
    }
}

/// What opening a shard's directory found.
pub(crate) enum Opened {
    /// The directory, checked.
    Dir(ShardDir),
    /// No directory at that path.
    Missing,
}

impl ShardDir {
    /// Opens and checks the directory `dir` for the effective uid `euid`. `Err(Ok(refused))`
    /// for a directory that fails the checks, `Err(Err(io))` when it cannot be opened.
    pub fn open(dir: &Path, euid: u32) -> Result<Opened, std::result::Result<Refused, io::Error>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = match openat(
            nix::fcntl::AT_FDCWD,
            dir,
            flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(Opened::Missing),
            // A symlink (ELOOP), or not a directory (ENOTDIR: also a symlink to a file).
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                let link = std::fs::symlink_metadata(dir).map_err(Err)?;
                if !link.file_type().is_symlink() {
                    return Err(Ok(Refused {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "a {} sits where the shard's directory should be",
                            trust::kind_name(&link)
                        ),
                    }));
                }
                if link.uid() != euid && link.uid() != 0 {
                    return Err(Ok(Refused {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "it is a symlink owned by uid {}, not by the current user (uid \
                             {euid}) or root, so it could point the shard anywhere; remove it",
                            link.uid()
                        ),
                    }));
                }
                match openat(nix::fcntl::AT_FDCWD, dir, flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(nix::errno::Errno::ENOENT) => return Ok(Opened::Missing),
                    Err(e) => return Err(Err(e.into())),
                }
            }
            Err(e) => return Err(Err(e.into())),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(Err)?;
        trust::check_dir_as(&meta, euid).map_err(|reason| {
            Ok(Refused {
                path: dir.to_path_buf(),
                reason,
            })
        })?;
        check_ancestors(dir, euid).map_err(Ok)?;
        Ok(Opened::Dir(ShardDir {
            fd: file.into(),
            path: dir.to_path_buf(),
        }))
    }

    /// Opens `dir` for a write: creates it and its missing parents first (0700 whatever the
    /// umask), then opens and checks it as [`open`](ShardDir::open) does.
    pub fn create(dir: &Path) -> Result<ShardDir> {
        let euid = nix::unistd::geteuid().as_raw();
        for _ in 0..2 {
            match ShardDir::open(dir, euid) {
                Ok(Opened::Dir(d)) => return Ok(d),
                Ok(Opened::Missing) => create_private_dirs(dir)?,
                Err(Ok(refused)) => return Err(refused.into()),
                Err(Err(e)) => return Err(Error::io("opening directory", dir, e)),
            }
        }
        Err(Error::io(
            "opening directory",
            dir,
            io::Error::from(io::ErrorKind::NotFound),
        ))
    }

    /// Opens `name` in this directory with `flags` (`O_CLOEXEC | O_NOFOLLOW` always added) and
    /// `mode` for a created file (`mode_t`: `u32` on Linux, `u16` on macOS and FreeBSD).
    pub fn open_file(
        &self,
        name: &OsStr,
        flags: OFlag,
        mode: nix::libc::mode_t,
    ) -> io::Result<File> {
        let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    /// `lstat` of `name` in this directory.
    pub fn stat(&self, name: &OsStr) -> io::Result<nix::sys::stat::FileStat> {
        Ok(nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Renames `from` over `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(nix::fcntl::renameat(
            self.fd.as_fd(),
            from,
            self.fd.as_fd(),
            to,
        )?)
    }

    /// Swaps `a` and `b` atomically; `Ok(false)` (nothing done) when `b` does not exist or the
    /// system cannot exchange.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> io::Result<bool> {
        use nix::errno::Errno;
        use nix::fcntl::{RenameFlags, renameat2};
        let fd = self.fd.as_fd();
        match renameat2(fd, a, fd, b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Swaps `a` and `b` atomically; this system cannot, so nothing is done.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn exchange(&self, _: &OsStr, _: &OsStr) -> io::Result<bool> {
        Ok(false)
    }

    /// Unlinks the file `name` in this directory.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// fsyncs the directory (makes renames and unlinks in it durable).
    pub fn sync(&self) -> io::Result<()> {
        Ok(nix::unistd::fsync(self.fd.as_fd())?)
    }

    /// The names in this directory.
    pub fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let mut dir = nix::dir::Dir::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }
}

/// Checks every ancestor of `dir` (one `stat` each, following symlinks: a symlinked ancestor is
/// judged by the directory it leads to, and the symlink by its own parent, checked too).
fn check_ancestors(dir: &Path, euid: u32) -> std::result::Result<(), Refused> {
    let absolute;
    let dir = if dir.is_absolute() {
        dir
    } else {
        absolute = std::env::current_dir()
            .map_err(|e| Refused {
                path: dir.to_path_buf(),
                reason: format!("cannot resolve the current directory: {e}"),
            })?
            .join(dir);
        &absolute
    };
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor).map_err(|e| Refused {
            path: ancestor.to_path_buf(),
            reason: format!("cannot stat it: {e}"),
        })?;
        trust::check_dir_as(&meta, euid).map_err(|reason| Refused {
            path: ancestor.to_path_buf(),
            reason: format!(
                "an ancestor of the shard's directory: {reason} (another user could replace \
                 the shard's directory)"
            ),
        })?;
    }
    Ok(())
}

/// `mkdir -p` with mode 0700 for every directory it creates, whatever the umask.
fn create_private_dirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_private_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // The umask may have taken bits away (277 gives 0500: nothing could be created in it).
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("setting the mode of", dir, e)),
        // Another writer created it meanwhile: judged by the caller's checks.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating directory", dir, e)),
    }
}
