//! A glob walk on top of `TreeCache`: print `sha256sum` lines for the files under a root whose
//! names match a pattern, skipping some directories — with the walk's own rules, and the
//! listings and hashes shared with every other walker of the tree (and with `hash-tree`).
//!
//! ```text
//! cargo run --example glob_walk -- ROOT [PATTERN] [SKIP...]
//! cargo run --example glob_walk -- . '*.rs' target .git     # twice: the second run reads nothing
//! WARMSHARD_BYPASS=1 cargo run --example glob_walk -- . '*.rs' target .git   # no cache at all
//! ```

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use warmshard::paths::{Exclude, TreeCache};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let root = PathBuf::from(
        args.next()
            .ok_or("usage: glob_walk ROOT [PATTERN] [SKIP...]")?,
    );
    let pattern = args.next().unwrap_or_else(|| "*".into());
    // `Exclude` is only a matcher here: one for the files wanted, one for the directories not.
    let wanted = Exclude::new([pattern.as_encoded_bytes()]);
    let skipped: Vec<_> = args.collect();
    let skipped = Exclude::new(skipped.iter().map(|s| s.as_encoded_bytes()));
    let bypass = std::env::var_os("WARMSHARD_BYPASS").is_some_and(|v| v == "1");

    let cache = TreeCache::open(&root, None, warmshard::Options::from_env())?.bypass(bypass);
    let mut out = std::io::stdout().lock();
    walk(&cache, Path::new(""), &wanted, &skipped, &mut out)?;
    cache.commit()?;
    eprintln!("{:?}", cache.stats());
    Ok(())
}

fn walk(
    cache: &TreeCache,
    dir: &Path,
    wanted: &Exclude,
    skipped: &Exclude,
    out: &mut impl std::io::Write,
) -> Result<(), Box<dyn std::error::Error>> {
    for entry in cache.list(dir)? {
        let path = dir.join(std::ffi::OsStr::from_bytes(&entry.name));
        let rel = path.as_os_str().as_encoded_bytes();
        if entry.is_dir {
            // The caller decides where to descend: a skipped directory is never listed.
            if !skipped.matches(rel) {
                walk(cache, &path, wanted, skipped, out)?;
            }
        } else if wanted.matches(rel)
            && let Some(sha256) = cache.sha256(&path)?
        {
            let hex: String = sha256.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{hex}  {}", path.display())?;
        }
    }
    Ok(())
}
