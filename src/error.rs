//! The one error type of warmshard: each variant says what happened and what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias for warmshard operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a warmshard call fail.
///
/// Reads never fail because of a file's *content* (a corrupt or foreign shard reads as empty, see
/// [`Health`](crate::Health)); errors are for conditions the caller must fix or retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "creating directory".
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Something other than a regular file sits at the shard path.
    #[error("{path} is a {kind}, not a shard file; remove it or choose another shard path")]
    NotAFile {
        /// The shard path.
        path: PathBuf,
        /// What was found there ("directory", "FIFO", ...).
        kind: &'static str,
    },
    /// Another writer held the lock for longer than the lock timeout.
    #[error(
        "could not lock {path} within {waited:?}: another process is writing; retry, or raise the lock timeout"
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long the write waited.
        waited: Duration,
    },
    /// The shard's directory could be written by another user, so nothing in it is trusted.
    #[error("refusing to use {path}: {reason}")]
    Untrusted {
        /// The directory or file.
        path: PathBuf,
        /// Why it is not trusted, and how to fix it.
        reason: String,
    },
    /// There is no per-user cache directory (e.g. `$HOME` unset); warmshard never falls back to a
    /// shared location.
    #[error(
        "no per-user cache directory (set $XDG_CACHE_HOME or $HOME, or pass an explicit shard path)"
    )]
    NoCacheDir,
    /// A write would produce a shard larger than [`Options::max_size`](crate::Options::max_size).
    #[error(
        "the new shard would be {size} bytes, over the {max}-byte limit; raise Options::max_size (--max-size)"
    )]
    TooLarge {
        /// Size the shard would have.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A key or value cannot be stored (longer than 4 GiB).
    #[error("{0}")]
    InvalidInput(String),
    /// A write that keeps the current entries could not read them for a cause other than their
    /// content (permissions, memory limits, I/O, a size limit below the file's size). Writing
    /// anyway would drop them, so nothing was written: the shard is as it was.
    #[error(
        "cannot read the current shard {path}: {health}. Nothing was written, since the write \
         would drop its entries: fix the cause (permissions, memory limit such as `ulimit -v`, \
         size limit) and retry, or replace or clear the shard to start over"
    )]
    CurrentUnreadable {
        /// The file that could not be read (the shard file or its delta file).
        path: PathBuf,
        /// Why it could not be read.
        health: crate::Health,
    },
    /// The write lock was busy and the write was asked not to wait
    /// ([`Shard::try_put_one`](crate::Shard::try_put_one), or a zero
    /// [`Options::lock_timeout`](crate::Options::lock_timeout)).
    #[error("{path} is locked by another writer; the write was skipped (nothing was written)")]
    LockBusy {
        /// The lock file.
        path: PathBuf,
    },
    /// An I/O error from the caller's own code, converted by `?` (warmshard's own I/O errors
    /// are [`Error::Io`], which names the operation and the path).
    #[error(transparent)]
    Os(#[from] io::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
