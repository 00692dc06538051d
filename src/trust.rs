//! Who may have written a path: ownership and permission checks.
//!
//! A shard feeds code into shells and interpreters, so a file that another user owns or could
//! have written is never read, and a directory that another user could write into (and so swap
//! the shard in) is never used. The rules:
//!
//! - **shard file**: a regular file owned by the effective user, not group- or world-writable;
//! - **directory** holding the shard: owned by the effective user or root, and not group- or
//!   world-writable unless the sticky bit is set (as on `/tmp`, where others cannot rename over
//!   our files).

use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Checks a shard file's metadata (from `fstat` on the open descriptor) for the effective uid
/// `euid` (read by the caller, once for several checks).
pub(crate) fn check_file(meta: &Metadata, euid: u32) -> Result<(), String> {
    if meta.uid() != euid {
        return Err(format!(
            "file is owned by uid {}, not by the current user (uid {euid})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "file mode {:o} lets other users write it; run chmod go-w on it",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Checks the metadata of a directory that holds a shard, or of one of its ancestors, for the
/// effective uid `euid`.
pub(crate) fn check_dir_as(meta: &Metadata, euid: u32) -> Result<(), String> {
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!(
            "directory is owned by uid {}, not by the current user (uid {euid}) or root",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "directory mode {:o} lets other users replace files in it; run chmod go-w on it",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// A short name for a non-regular file type.
pub(crate) fn kind_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}
