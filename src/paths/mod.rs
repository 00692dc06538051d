//! The path-key layer: per-file results that stay valid only while the file is unchanged.
//!
//! Build tools, version control and interpreters keep a result per file (a content hash, a parse,
//! compiled bytecode) that is valid only while the file is unchanged. [`PathCache`] stores such
//! results in a shard, keyed by path, next to the file's [`Stamp`] (device, inode, size, mtime,
//! ctime, mode). A lookup `lstat`s the path and answers only if the stamp matches exactly, as
//! git's index does. Several named results ("dimensions", e.g. `sha256`, `bytecode`) can live
//! under one path; all of them are dropped together when the file changes.
//!
//! [`hash_tree`] builds a `sha256sum`-compatible manifest of a directory on top of it, re-hashing
//! only what the stamps say changed.

mod cache;
mod error;
mod exclude;
mod hash_tree;
mod listing;
mod manifest;
mod prune;
mod stamp;
mod tree_cache;
mod tree_store;
mod walk;

pub use cache::{PathCache, PathEntry, PathView};
pub use error::{PathError, PathInputError};
pub use exclude::Exclude;
pub use hash_tree::{
    HashTreeOptions, HashTreeReport, hash_tree, hash_tree_to, shard_path_for_root,
};
pub use manifest::{Manifest, ManifestLine};
pub use prune::{PruneOptions, PruneReport};
pub use stamp::{DEFAULT_RACY_MARGIN, Stamp};
pub use tree_cache::{TreeCache, TreeCacheStats, TreeEntry};
