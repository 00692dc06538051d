//! Helpers shared by several test files (each test file is its own crate; it includes this with
//! `mod common;`).

use std::path::Path;

/// Names of the temporary files a writer leaves next to its shard (`.<name>.<random>.tmp`).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}
