//! # warmshard
//!
//! A zero-copy, memory-mapped, single-file cache ("shard") for programs that start often: a
//! shell, an interpreter, a build tool. The results of expensive startup work live in one rkyv
//! archive that the next start maps and reads **without deserializing**: opening costs a few
//! system calls and an O(1) validation, and a lookup costs a hash and a few page reads, whatever
//! the shard's size.
//!
//! ```
//! # fn main() -> warmshard::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use warmshard::{Options, Shard};
//!
//! let shard = Shard::open_with(dir.path().join("demo.shard"), Options::new().producer("demo 1.0"))?;
//! shard.put_one("answer", "42")?;
//!
//! // Hot path: one snapshot, many zero-copy lookups.
//! let snapshot = shard.snapshot();
//! assert_eq!(snapshot.get(b"answer"), Some(&b"42"[..]));
//! assert_eq!(snapshot.get(b"question"), None);
//! # Ok(()) }
//! ```
//!
//! - [`Shard`] opens a file and performs writes (`put_one`, `merge_in`, `replace_all`, `remove`,
//!   `clear`, and a [`BulkWriter`] for prewarming), each under an exclusive `flock`, each
//!   producing a complete new file renamed over the old one.
//! - [`Snapshot`] is a validated read view that stays valid while held.
//! - [`Health`] says why a shard reads as empty (missing, corrupt, foreign, untrusted...).
//! - Typed entries: [`Shard::put_typed`] stores an rkyv-archivable value and
//!   [`Snapshot::get_typed`] reads it in place as `&T::Archived`, validating that value only.
//! - The on-disk layout is documented in the [`format`](mod@format) module.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod format;
pub mod paths;

mod dir;
mod error;
mod health;
mod location;
mod map;
mod names;
mod options;
mod shard;
mod snapshot;
mod trust;
mod typed;
mod write;

pub use error::{Error, Result};
pub use health::Health;
pub use location::{ENV_SWITCH, default_dir, default_path, enabled_by_env};
pub use names::is_shard_file;
pub use options::{DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_SIZE, Options};
/// The rkyv this crate archives typed entries with (`#[rkyv(crate = warmshard::rkyv)]` lets a
/// crate derive without its own rkyv dependency).
pub use rkyv;
pub use shard::{BulkMode, BulkWriter, Shard};
pub use snapshot::{ShardFile, Snapshot, Stats, Value, VerifyError};
pub use typed::{CheckedArchive, InvalidValue, ReadTyped, WriteTyped};
pub use write::{DEFAULT_PRODUCER, DropReason, Dropped, Published, WriteOutcome};

/// Not API: a view into shard files for warmshard's own tests and fuzz targets, which check
/// bytes the public API does not expose. It may change in any release.
#[doc(hidden)]
#[path = "internals.rs"]
pub mod __internals;

/// The README's Rust examples, compiled by `cargo test` so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
