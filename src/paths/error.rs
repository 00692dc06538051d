//! [`PathError`]: a file or directory of the path layer that could not be read, with its path.

use std::path::{Path, PathBuf};

/// A file or directory that could not be read, with its full path (as walkdir's errors carry
/// theirs). A [`hash_tree`](super::hash_tree) run leaves such an entry out of the manifest and
/// reports it in [`HashTreeReport::errors`](super::HashTreeReport::errors).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathError {
    /// The path that could not be read.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// The path that could not be read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operating system's error, if it was one (e.g. `EACCES`).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Why the path layer refused a path or a shard it was given. It reaches the caller as the
/// source of an [`Error::Io`](crate::Error::Io) of kind
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput), which names the path; get it back with
/// `io_error.get_ref().and_then(|e| e.downcast_ref::<PathInputError>())`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathInputError {
    /// The tree's root is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// The file is not a regular file (only regular files are read and cached).
    #[error("not a regular file")]
    NotARegularFile,
    /// The shard holds another producer's entries, not a tree cache.
    #[error("holds entries of {producer:?}, not a hash-tree cache; pick another --shard")]
    NotATreeCache {
        /// The producer the shard was written by.
        producer: String,
    },
    /// A path given relative to a tree's root is absolute or holds `..`.
    #[error("a path in the tree is relative to its root and has no '..'")]
    NotRelative,
    /// A path holds a NUL byte.
    #[error("a path holds a NUL byte")]
    Nul,
}

/// An [`Error::Io`](crate::Error::Io) of kind `InvalidInput` about `path`, carrying `error`.
pub(crate) fn invalid_path(op: &'static str, path: &Path, error: PathInputError) -> crate::Error {
    crate::Error::io(
        op,
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
    )
}
