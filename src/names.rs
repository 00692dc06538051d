//! Which files belong to a shard: the one definition of the names beside `<shard>`.
//!
//! A shard called `<name>` owns, in its directory:
//!
//! | name                    | what                                                        |
//! |-------------------------|-------------------------------------------------------------|
//! | `<name>`                | the base file                                               |
//! | `<name>.delta`          | the delta file (recent small writes)                        |
//! | `<name>.lock`           | the writers' `flock` file                                   |
//! | `.<name>.tmp`           | a write's new file, at the fixed temp name                  |
//! | `.<name>.XXXXXX.tmp`    | a write's new file, at a random name (6 alphanumerics)      |
//!
//! The write protocol creates and sweeps exactly these names; `import` and `hash-tree` skip
//! exactly these names when the shard lies inside the tree they read. Nothing looser: shard `a`
//! must not claim `.a.b.tmp`, the temp file of shard `a.b`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Suffix of the delta file's name.
pub(crate) const DELTA_SUFFIX: &str = ".delta";
/// Suffix of the lock file's name.
pub(crate) const LOCK_SUFFIX: &str = ".lock";
/// Suffix of every temp file's name.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
/// Length of the random part of a random temp name.
pub(crate) const RANDOM_LEN: usize = 6;

/// `<name><suffix>`.
pub(crate) fn sidecar(name: &OsStr, suffix: &str) -> OsString {
    let mut s = name.to_os_string();
    s.push(suffix);
    s
}

/// `.<name>.`: the start of every temp file name of the shard `<name>`.
pub(crate) fn temp_prefix(name: &OsStr) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(".");
    s
}

/// The fixed temp name `.<name>.tmp`.
pub(crate) fn fixed_temp(name: &OsStr) -> OsString {
    let mut s = temp_prefix(name);
    s.push("tmp");
    s
}

/// True for the names a shard's temp files get: `.<name>.tmp` and `.<name>.XXXXXX.tmp`.
pub(crate) fn is_temp_name(shard: &OsStr, candidate: &OsStr) -> bool {
    let prefix = temp_prefix(shard);
    let Some(rest) = candidate.as_bytes().strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    rest == b"tmp"
        || rest
            .strip_suffix(TEMP_SUFFIX.as_bytes())
            .is_some_and(|random| {
                random.len() == RANDOM_LEN && random.iter().all(|b| b.is_ascii_alphanumeric())
            })
}

/// True when `candidate` (a file name in the shard's directory) is one of the files of the shard
/// whose file name is `shard`: the base, the delta, the lock or a temp file.
pub fn is_shard_file(shard: &OsStr, candidate: &OsStr) -> bool {
    candidate == shard
        || candidate == sidecar(shard, DELTA_SUFFIX)
        || candidate == sidecar(shard, LOCK_SUFFIX)
        || is_temp_name(shard, candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_owns_exactly_its_five_kinds_of_name() {
        let shard = OsStr::new("a");
        for (name, owned) in [
            ("a", true),
            ("a.delta", true),
            ("a.lock", true),
            (".a.tmp", true),
            (".a.Xy12Zq.tmp", true),
            (".a.b.tmp", false),
            (".a.b.Xy12Zq.tmp", false),
            (".a.Xy1.tmp", false),
            (".a.Xy12-q.tmp", false),
            ("a.Xy12Zq.tmp", false),
            ("a.b", false),
            ("a.delta.x", false),
        ] {
            assert_eq!(is_shard_file(shard, OsStr::new(name)), owned, "{name}");
        }
    }
}
