//! Typed entries: values that are rkyv archives, written without calling rkyv by hand and read
//! in place as `&T::Archived`.
//!
//! Every value of a shard starts at a multiple of 16 bytes of its file (see
//! [`format`](mod@crate::format)), so a value that is an rkyv archive can be accessed where it
//! lies in the mapping: [`Snapshot::get_typed`] validates that one value with bytecheck (its cost
//! grows with the value, never with the shard) and returns a reference into the mapping. A
//! value that fails validation (written as another type, by another program, or damaged) is a
//! miss; [`Snapshot::try_get_typed`] says why. Nothing here panics on any bytes.
//!
//! Values are archived with the rkyv format features of the user's build (warmshard selects
//! none); the shard's header records them, and a shard written under other features reads as
//! foreign and is rebuilt by the next write.
//!
//! # Speed
//!
//! A typed hit reads two lines of the value (the archived root at its end, the data it points
//! to at its start); the slot's end hint loads both together, so that costs little more than a
//! byte read. What remains is rkyv's validation, whose functions are generic and not marked
//! `#[inline]`: with cargo's default release profile (16 codegen units) rustc places them in
//! other codegen units and the check runs as out-of-line calls. A program that reads typed
//! entries on its hot path gets the check inlined into the lookup by building with one codegen
//! unit (measured 1.36–1.47× a raw hit instead of 1.59–1.76×, BENCHMARKS.md):
//!
//! ```toml
//! [profile.release]
//! codegen-units = 1
//! ```
//!
//! ```
//! # fn main() -> warmshard::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! struct Compiled {
//!     mtime: u64,
//!     chunk: Vec<u8>,
//! }
//!
//! let shard = warmshard::Shard::open(dir.path().join("typed.shard"))?;
//! shard.put_typed("greet", &Compiled { mtime: 7, chunk: vec![1, 2, 3] })?;
//!
//! let snapshot = shard.snapshot();
//! let entry = snapshot.get_typed::<Compiled>(b"greet").expect("a hit");
//! assert_eq!(entry.mtime, 7); // read in place: no copy, no deserialization
//! assert_eq!(entry.chunk.as_slice(), [1, 2, 3]);
//! # Ok(()) }
//! ```

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Portable, Serialize};

use crate::error::{Error, Result};
use crate::shard::{BulkMode, BulkWriter, Shard};
use crate::snapshot::Snapshot;
use crate::write::WriteOutcome;

/// The archived forms a snapshot can validate: checkable with both of rancor's error types
/// ([`Snapshot::get_typed`] validates with the cheaper `Failure`, which carries no message;
/// [`Snapshot::try_get_typed`] with `Error`, which carries the reason).
pub trait CheckedArchive:
    Portable
    + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
    + for<'a> CheckBytes<HighValidator<'a, rancor::Failure>>
{
}

impl<A> CheckedArchive for A where
    A: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + for<'a> CheckBytes<HighValidator<'a, rancor::Failure>>
{
}

/// A type whose archived form a snapshot can validate and read in place: any
/// `#[derive(rkyv::Archive)]` type (rkyv's `bytecheck` derives the check).
pub trait ReadTyped: Archive<Archived: CheckedArchive> {}

impl<T> ReadTyped for T where T: Archive<Archived: CheckedArchive> {}

/// A type a shard can store as a typed entry: any `#[derive(rkyv::Archive, rkyv::Serialize)]`
/// type.
pub trait WriteTyped:
    for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> WriteTyped for T where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Why a stored value is not a valid archived `T`, from [`Snapshot::try_get_typed`]. The
/// entry reads as a miss; storing the key again replaces it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the value stored under {key:?} is not a valid archived {type_name} ({reason}); \
     it reads as a miss, and the next write of that key replaces it"
)]
#[non_exhaustive]
pub struct InvalidValue {
    /// The key, lossily decoded as UTF-8 for display.
    pub key: String,
    /// The Rust type the value was read as.
    pub type_name: &'static str,
    /// What bytecheck found wrong (alignment, bounds, an invalid field...).
    pub reason: String,
}

/// Archives `value` with this build's rkyv format.
fn archive<T: WriteTyped>(value: &T) -> Result<AlignedVec> {
    rkyv::to_bytes::<rancor::Error>(value)
        .map_err(|e| Error::InvalidInput(format!("cannot archive the value with rkyv: {e}")))
}

impl Snapshot {
    /// The value stored under `key` as an archived `T`, validated (that value only) and read in
    /// place in the mapping; `None` if absent or if the value is not a valid archived `T` (see
    /// [`try_get_typed`](Snapshot::try_get_typed) for the reason).
    ///
    /// Values are 16-byte aligned in the file, so any archived type is read where it lies;
    /// the value was stored with [`Shard::put_typed`] (or `merge_in_typed`,
    /// `replace_all_typed`, [`BulkWriter::add_typed`]) by a build with the same rkyv format
    /// features (a shard from another reads as
    /// [`Health::IncompatibleLayout`](crate::Health::IncompatibleLayout)).
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct Compiled {
    ///     binary_mtime: u64,
    ///     chunk: Vec<u8>,
    /// }
    ///
    /// let shard = warmshard::Shard::open(dir.path().join("typed.shard"))?;
    /// shard.put_typed("greet", &Compiled { binary_mtime: 7, chunk: vec![1, 2, 3] })?;
    ///
    /// let snapshot = shard.snapshot();
    /// let entry = snapshot.get_typed::<Compiled>(b"greet").expect("a hit");
    /// assert_eq!(entry.binary_mtime, 7); // in place: no copy, no deserialization
    /// assert_eq!(entry.chunk.as_slice(), [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn get_typed<T: ReadTyped>(&self, key: &[u8]) -> Option<&T::Archived> {
        let value = self.get_archived(key, size_of::<T::Archived>())?;
        // `Failure` carries no message: a refused value costs no allocation here.
        rkyv::access::<T::Archived, rancor::Failure>(value).ok()
    }

    /// Like [`get_typed`](Snapshot::get_typed), but says why a stored value was refused:
    /// `Ok(None)` when the key is absent, `Err` when its value is not a valid archived `T`.
    pub fn try_get_typed<T: ReadTyped>(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<&T::Archived>, InvalidValue> {
        let Some(value) = self.get_archived(key, size_of::<T::Archived>()) else {
            return Ok(None);
        };
        rkyv::access::<T::Archived, rancor::Error>(value)
            .map(Some)
            .map_err(|e| InvalidValue {
                key: String::from_utf8_lossy(key).into_owned(),
                type_name: std::any::type_name::<T>(),
                reason: e.to_string(),
            })
    }
}

impl Shard {
    /// Inserts or replaces one typed entry (archived with rkyv), as
    /// [`put_one`](Shard::put_one) does with bytes.
    pub fn put_typed<T: WriteTyped>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<WriteOutcome> {
        let bytes = archive(value)?;
        self.put_one(key, bytes.as_slice())
    }

    /// Inserts or replaces typed entries, keeping every other entry, as
    /// [`merge_in`](Shard::merge_in) does with bytes. The archived values are held in memory
    /// until the write (a merge is meant to be small; use
    /// [`replace_all_typed`](Shard::replace_all_typed) or a bulk writer for large sets).
    pub fn merge_in_typed<'v, K, T>(
        &self,
        entries: impl IntoIterator<Item = (K, &'v T)>,
    ) -> Result<WriteOutcome>
    where
        K: AsRef<[u8]>,
        T: WriteTyped + 'v,
    {
        let archived = entries
            .into_iter()
            .map(|(key, value)| Ok((key, archive(value)?)))
            .collect::<Result<Vec<_>>>()?;
        self.merge_in(archived.iter().map(|(k, v)| (k.as_ref(), v.as_slice())))
    }

    /// Replaces the whole content of the shard with typed entries, as
    /// [`replace_all`](Shard::replace_all) does with bytes; each value is archived and streamed
    /// to disk in turn.
    pub fn replace_all_typed<'v, K, T>(
        &self,
        entries: impl IntoIterator<Item = (K, &'v T)>,
    ) -> Result<WriteOutcome>
    where
        K: AsRef<[u8]>,
        T: WriteTyped + 'v,
    {
        let mut writer = self.bulk_writer(BulkMode::Replace)?;
        for (key, value) in entries {
            writer.add_typed(key.as_ref(), value)?;
        }
        writer.commit()
    }
}

impl BulkWriter<'_> {
    /// Adds a typed entry (archived with rkyv); a later add of the same key wins.
    pub fn add_typed<T: WriteTyped>(&mut self, key: &[u8], value: &T) -> Result<()> {
        let bytes = archive(value)?;
        self.add(key, &bytes)
    }
}
