//! `TreeCache`: the walker primitives (a directory's listing, a file's hash) share hash-tree's
//! cache, answer from it only while stamps match, and can be bypassed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warmshard::paths::{HashTreeOptions, TreeCache, hash_tree};

fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    for i in 0..40 {
        let dir = root.join(format!("d{}/e{}", i % 4, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.rs")), format!("fn f{i}() {{}}")).unwrap();
    }
    std::fs::write(root.join("top.txt"), "top").unwrap();
    let shard = tmp.path().join("tree.shard");
    (tmp, root, shard)
}

/// Walks the whole tree through `cache`: every file's (path, hash), in manifest order.
fn walk(cache: &TreeCache, dir: &Path, out: &mut Vec<(PathBuf, [u8; 32])>) {
    for entry in cache.list(dir).unwrap() {
        let path = dir.join(std::ffi::OsStr::new(
            std::str::from_utf8(&entry.name).unwrap(),
        ));
        if entry.is_dir {
            walk(cache, &path, out);
        } else {
            out.push((path.clone(), cache.sha256(&path).unwrap().unwrap()));
        }
    }
}

fn options(shard: &Path) -> HashTreeOptions {
    HashTreeOptions::default()
        .shard(shard)
        .shard_options(warmshard::Options::new().durable(false))
}

/// Opens the tree's cache and walks it whole: the cache (for its stats) and every file found.
fn walk_all(root: &Path, shard: &Path) -> (TreeCache, Vec<(PathBuf, [u8; 32])>) {
    let cache = open(root, shard);
    let mut found = Vec::new();
    walk(&cache, Path::new(""), &mut found);
    (cache, found)
}

fn open(root: &Path, shard: &Path) -> TreeCache {
    TreeCache::open(root, Some(shard), warmshard::Options::new().durable(false)).unwrap()
}

#[test]
fn a_walk_after_hash_tree_reads_nothing_and_agrees_with_its_manifest() {
    let (_tmp, root, shard) = tree();
    settle();
    let report = hash_tree(&root, &options(&shard)).unwrap();
    let (cache, found) = walk_all(&root, &shard);
    let stats = cache.stats();
    assert_eq!(
        (stats.listings_read, stats.files_hashed),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.hashes_cached, 41);
    let mut manifest = Vec::new();
    report
        .manifest
        .for_each(|line| manifest.push((line.path().into_owned(), *line.sha256)));
    let walked: Vec<_> = found
        .iter()
        .map(|(path, hash)| (path.as_os_str().as_encoded_bytes().to_vec(), *hash))
        .collect();
    assert_eq!(walked, manifest);
}

#[test]
fn what_a_walk_learns_makes_the_next_hash_tree_run_warm() {
    let (_tmp, root, shard) = tree();
    settle();
    let (cache, _) = walk_all(&root, &shard);
    assert_eq!(cache.stats().files_hashed, 41);
    assert!(matches!(
        cache.commit().unwrap(),
        warmshard::WriteOutcome::Committed { .. }
    ));
    let report = hash_tree(&root, &options(&shard)).unwrap();
    assert_eq!((report.hashed, report.dirs_read), (0, 0));
}

#[test]
fn stamps_decide_and_bypass_reads_everything_and_writes_nothing() {
    let (_tmp, root, shard) = tree();
    settle();
    hash_tree(&root, &options(&shard)).unwrap();
    std::fs::write(root.join("d1/e1/f1.rs"), "changed").unwrap();
    std::fs::write(root.join("d2/new.rs"), "new").unwrap();
    settle();
    let (cache, found) = walk_all(&root, &shard);
    let stats = cache.stats();
    // d2 gained an entry (its listing is read again); one file changed and one is new.
    assert_eq!(
        (stats.listings_read, stats.files_hashed),
        (1, 2),
        "{stats:?}"
    );

    let bypass = open(&root, &shard).bypass(true);
    let mut again = Vec::new();
    walk(&bypass, Path::new(""), &mut again);
    assert_eq!(again, found);
    let stats = bypass.stats();
    assert_eq!((stats.listings_cached, stats.hashes_cached), (0, 0));
    assert_eq!(stats.files_hashed, 42);
    assert_eq!(bypass.commit().unwrap(), warmshard::WriteOutcome::Unchanged);
    assert!(bypass.list(Path::new("../x")).is_err());
}
