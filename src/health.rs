//! Why a snapshot holds what it holds: [`Health`], the reason a shard reads as empty.

use std::fmt;

/// The state of the shard file behind a [`Snapshot`](crate::Snapshot).
///
/// Anything but [`Health::Valid`] means the snapshot reads as empty. A file rejected for its
/// *content* (empty, corrupt, foreign, another producer's, untrusted) is rebuilt from scratch by
/// the next write, which reports what it dropped in its [`WriteOutcome`](crate::WriteOutcome).
/// A file that could not be read for another cause ([`Health::TooLarge`],
/// [`Health::Unreadable`]: see [`Health::blocks_writes`]) is never written over by a write that
/// keeps entries: that write fails and leaves the file as it was. [`Health::Disabled`]: writes
/// do nothing. Obtain it with [`Snapshot::health`](crate::Snapshot::health).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The shard was validated; lookups read it.
    Valid,
    /// No file exists at the shard path yet.
    Missing,
    /// The directory that should hold the shard does not exist (a typo in the path, or nothing
    /// was ever written there); the first write creates it.
    DirectoryMissing {
        /// The missing directory.
        dir: std::path::PathBuf,
    },
    /// The cache is disabled by [`Options::enabled`](crate::Options::enabled) or `WARMSHARD=0`.
    Disabled,
    /// The file is zero bytes long.
    EmptyFile,
    /// The file is larger than [`Options::max_size`](crate::Options::max_size).
    TooLarge {
        /// File size in bytes.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The file or its directory could have been written by someone else; it is not read.
    Untrusted {
        /// What was wrong (owner, mode, symlink).
        reason: String,
    },
    /// The file exists but could not be opened or mapped.
    Unreadable {
        /// The operating system's error.
        error: String,
    },
    /// The file does not start with the warmshard magic.
    NotAShard,
    /// The file was written in another format version.
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The archive was written with another rkyv layout (pointer width, endianness or
    /// alignment: rkyv's format features) than this build's; see
    /// [`ArchiveLayout`](crate::format::ArchiveLayout).
    IncompatibleLayout {
        /// Pointer width (bits) recorded in the file.
        pointer_width_bits: u8,
        /// Endianness code recorded in the file (1 = little, 2 = big).
        endianness: u8,
        /// Alignment of an archived u64 recorded in the file (8 = aligned, 1 = unaligned).
        alignment: u8,
    },
    /// The file is shorter or longer than its preamble declares.
    Truncated {
        /// Length recorded by the writer.
        declared: u64,
        /// Length found on disk.
        actual: u64,
    },
    /// The archive failed validation.
    Corrupt {
        /// What failed.
        reason: String,
    },
    /// The shard was written by another producer than the one this handle requires.
    ProducerMismatch {
        /// Producer recorded in the file.
        found: String,
        /// Producer required by [`Options::producer`](crate::Options::producer).
        expected: String,
    },
}

impl Health {
    /// True when the snapshot reads a validated shard.
    pub fn is_valid(&self) -> bool {
        matches!(self, Health::Valid)
    }

    /// True when the file could not be read for a cause other than its content (permissions,
    /// memory, I/O, a size limit below the file's size): its entries are unknown rather than
    /// bad, so a write that keeps the current entries fails instead of rebuilding over them.
    pub fn blocks_writes(&self) -> bool {
        matches!(self, Health::TooLarge { .. } | Health::Unreadable { .. })
    }

    /// True when a file exists but was ignored (anything but valid, missing or disabled).
    pub fn is_ignored_file(&self) -> bool {
        !matches!(
            self,
            Health::Valid | Health::Missing | Health::DirectoryMissing { .. } | Health::Disabled
        )
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Valid => write!(f, "valid"),
            Health::Missing => write!(f, "no shard file yet"),
            Health::DirectoryMissing { dir } => write!(
                f,
                "the shard's directory {} does not exist (check the path; the first write creates it)",
                dir.display()
            ),
            Health::Disabled => {
                write!(f, "cache disabled (WARMSHARD=0 or Options::enabled(false))")
            }
            Health::EmptyFile => write!(
                f,
                "shard file is empty (0 bytes); the next write rebuilds it"
            ),
            Health::TooLarge { size, max } => write!(
                f,
                "shard file is {size} bytes, over the {max}-byte limit; raise the size limit (Options::max_size, --max-size) to read it (writes that keep entries fail until then; replace or clear it to start over)"
            ),
            Health::Untrusted { reason } => write!(f, "shard refused: {reason}"),
            Health::Unreadable { error } => write!(
                f,
                "shard unreadable: {error} (writes that keep entries fail until it can be read)"
            ),
            Health::NotAShard => write!(
                f,
                "not a warmshard file (bad magic); the next write replaces it"
            ),
            Health::UnsupportedVersion { found, supported } => write!(
                f,
                "shard format version {found}, this build reads version {supported}; the next write rebuilds it"
            ),
            Health::IncompatibleLayout {
                pointer_width_bits,
                endianness,
                alignment,
            } => {
                let found = crate::format::ArchiveLayout {
                    pointer_width_bits: *pointer_width_bits,
                    endianness: *endianness,
                    alignment: *alignment,
                };
                write!(
                    f,
                    "shard written with another rkyv layout ({found}), this build uses {} \
                     (rkyv's format features differ); the next write rebuilds it",
                    crate::format::ArchiveLayout::of_this_build()
                )
            }
            Health::Truncated { declared, actual } => write!(
                f,
                "shard is {actual} bytes but was written as {declared} bytes (truncated or extended); the next write rebuilds it"
            ),
            Health::Corrupt { reason } => {
                write!(f, "shard is corrupt ({reason}); the next write rebuilds it")
            }
            Health::ProducerMismatch { found, expected } => write!(
                f,
                "shard written by producer {found:?}, this handle requires {expected:?}; the next write rebuilds it"
            ),
        }
    }
}
