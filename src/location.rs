//! Where shards live by default, and the `WARMSHARD` kill switch.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The environment variable that disables warmshard when set to `0`, `off`, `false` or `no`.
pub const ENV_SWITCH: &str = "WARMSHARD";

/// The per-user directory for shards: `<cache dir>/warmshard` (e.g. `~/.cache/warmshard` on
/// Linux). It is created 0700 by the first write. There is no fallback to a shared location such
/// as `/tmp`: without a per-user cache directory this is an error.
pub fn default_dir() -> Result<PathBuf> {
    dirs::cache_dir()
        .filter(|d| d.is_absolute())
        .map(|d| d.join("warmshard"))
        .ok_or(Error::NoCacheDir)
}

/// The default path of the shard called `name`: `<cache dir>/warmshard/<name>.shard`.
///
/// `name` must be a plain file name (no `/`, not `.` or `..`, not empty).
///
/// ```
/// # if std::env::var_os("HOME").is_some() {
/// let path = warmshard::default_path("myshell-autoload").unwrap();
/// assert!(path.ends_with("warmshard/myshell-autoload.shard"));
/// # }
/// ```
pub fn default_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "shard name {name:?} must be a plain file name (no '/', not '.' or '..')"
        )));
    }
    Ok(default_dir()?.join(format!("{name}.shard")))
}

/// False when the `WARMSHARD` environment variable is `0`, `off`, `false` or `no` (any case):
/// the documented way for a user to switch the cache off without touching the program.
pub fn enabled_by_env() -> bool {
    match std::env::var(ENV_SWITCH) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => true,
    }
}
