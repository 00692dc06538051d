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
