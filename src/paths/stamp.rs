//! [`Stamp`]: what `lstat` says about a file, and the racy-timestamp rule.
//!
//! # The racy-timestamp rule
//!
//! A file's timestamps come from the kernel's coarse clock, so two writes within one clock tick
//! (a few milliseconds) can leave the same mtime and ctime. If we took a stamp and read the file
//! inside such a tick, a second write in the same tick with the same size would leave the stamp
//! unchanged while the content changed: the cached result would be wrong forever. So, as git does
//! for "racily clean" index entries, an entry whose mtime or ctime is not older than the moment
//! its stamp was taken minus a margin is stored as **racy** and is never trusted as a hit: the
//! next lookup recomputes it, and once the timestamps are safely in the past the entry is stored
//! as stable.
//!
//! The margin covers the filesystem's timestamp granularity: [`DEFAULT_RACY_MARGIN`] (50 ms, many
//! ticks of the coarse clock) for nanosecond timestamps, and 2 s when the timestamps have whole
//! seconds only (FAT-like filesystems, some network filesystems). The rule assumes the filesystem
//! and this machine share a clock; a network filesystem whose server clock runs ahead can defeat
//! it, as it can defeat git.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Margin for the racy rule on filesystems with sub-second timestamps.
pub const DEFAULT_RACY_MARGIN: Duration = Duration::from_millis(50);
/// Margin for filesystems whose timestamps have whole seconds only.
const COARSE_MARGIN: Duration = Duration::from_secs(2);

/// File type bits of `st_mode`, and the types of a regular file and a directory: the same values
/// on every Unix (Linux, macOS, the BSDs), here as `u32` whatever width `mode_t` has there.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

/// Encoded size of a stamp in an entry.
pub(crate) const STAMP_LEN: usize = 44;

/// The identity and state of a file as `lstat` reports it. Two stamps are equal only if every
/// field is: a same-size rewrite with the mtime put back still changes the ctime; an atomic
/// replace by rename changes the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, ns since the Unix epoch.
    pub ctime_ns: i64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
}

impl Stamp {
    /// The stamp of `meta` (from `lstat`/`symlink_metadata` or `fstat`).
    pub fn from_metadata(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            mode: meta.mode(),
        }
    }

    /// The stamp of a raw `stat` result (from `fstatat` during a walk). `dev_t` and `mode_t`
    /// are `u64` and `u32` on Linux but `i32` and `u16` on macOS (`mode_t` `u16` on FreeBSD):
    /// widened as `std`'s `MetadataExt` widens them, so both constructors agree everywhere.
    #[allow(
        clippy::unnecessary_cast,
        clippy::useless_conversion,
        reason = "a no-op on Linux, a widening on macOS and FreeBSD"
    )]
    pub(crate) fn from_stat(st: &nix::sys::stat::FileStat) -> Stamp {
        Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            mode: u32::from(st.st_mode),
        }
    }

    /// `lstat`s `path` (symlinks are not followed) and returns its stamp.
    pub fn lstat(path: &Path) -> std::io::Result<Stamp> {
        std::fs::symlink_metadata(path).map(|m| Stamp::from_metadata(&m))
    }

    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// True for a directory.
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// True if this stamp, taken at `taken_at`, must not be trusted as a hit later (see the
    /// module docs): its mtime or ctime is within `margin` of `taken_at` (or after it).
    pub fn is_racy(&self, taken_at: SystemTime, margin: Duration) -> bool {
        let margin = if self.mtime_ns % 1_000_000_000 == 0 && self.ctime_ns % 1_000_000_000 == 0 {
            margin.max(COARSE_MARGIN)
        } else {
            margin
        };
        let taken_ns = taken_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let safe_before = taken_ns.saturating_sub(margin.as_nanos() as i64);
        self.mtime_ns >= safe_before || self.ctime_ns >= safe_before
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Stamp> {
        let b = bytes.get(..STAMP_LEN)?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Stamp {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime_ns: u64_at(24) as i64,
            ctime_ns: u64_at(32) as i64,
            mode: u32::from_le_bytes(b[40..44].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(mtime_ns: i64, ctime_ns: i64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns,
            mode: 0o100644,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let s = stamp(-5, 1_700_000_000_123_456_789);
        let mut bytes = Vec::new();
        s.encode(&mut bytes);
        assert_eq!(bytes.len(), STAMP_LEN);
        assert_eq!(Stamp::decode(&bytes), Some(s));
        assert_eq!(Stamp::decode(&bytes[..STAMP_LEN - 1]), None);
        assert!(s.is_file());
    }

    #[test]
    fn file_type_bits_are_the_platform_s() {
        use nix::libc;
        assert_eq!(u64::from(S_IFMT), u64::from(libc::S_IFMT));
        assert_eq!(u64::from(S_IFREG), u64::from(libc::S_IFREG));
        assert_eq!(u64::from(S_IFDIR), u64::from(libc::S_IFDIR));
        let dir = Stamp::lstat(Path::new("/")).unwrap();
        assert!(dir.is_dir() && !dir.is_file());
    }

    #[test]
    fn racy_rule() {
        let now = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_500_000_000);
        let now_ns = 1_700_000_000_500_000_000i64;
        let m = DEFAULT_RACY_MARGIN;
        // Old in both timestamps: stable.
        assert!(!stamp(now_ns - 1_000_000_000 + 7, now_ns - 900_000_001).is_racy(now, m));
        // Modified 10 ms before the stamp was taken: racy.
        assert!(stamp(now_ns - 10_000_000, now_ns - 900_000_001).is_racy(now, m));
        // Old mtime put back, recent ctime: racy.
        assert!(stamp(now_ns - 5_000_000_001, now_ns - 1).is_racy(now, m));
        // In the future (clock skew): racy.
        assert!(stamp(now_ns + 1, now_ns + 1).is_racy(now, m));
        // Whole-second timestamps need 2 s.
        assert!(stamp(1_699_999_999_000_000_000, 1_699_999_999_000_000_000).is_racy(now, m));
        assert!(!stamp(1_699_999_998_000_000_000, 1_699_999_998_000_000_000).is_racy(now, m));
    }
}
