//! `hash_tree_to` (and so `warmshard hash-tree`) writes the manifest while the tree is walked:
//! the bytes are exactly those of the finished manifest, whatever the tree, the thread count,
//! the directories that cannot be read or a writer that fails.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use warmshard::paths::{HashTreeOptions, HashTreeReport, hash_tree_to};

mod common;

fn options(shard: &Path, threads: usize) -> HashTreeOptions {
    HashTreeOptions::default()
        .shard(shard)
        .threads(threads)
        .shard_options(warmshard::Options::new().durable(false))
}

/// Runs `hash_tree_to` into a buffer; checks the buffer is the report's manifest as
/// `write_sha256sum_to` writes it, and returns both.
fn streamed(root: &Path, options: &HashTreeOptions) -> (Vec<u8>, HashTreeReport) {
    let mut out = Vec::new();
    let report = hash_tree_to(root, options, &mut out).unwrap();
    assert!(report.output_error.is_none(), "{:?}", report.output_error);
    let mut after = Vec::new();
    report.manifest.write_sha256sum_to(&mut after).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&after)
    );
    (out, report)
}

/// A tree whose manifest order differs from a walk's: names that sort around a directory's
/// `/`, files between subdirectories at every level, names `sha256sum` escapes, a root `-`,
/// empty directories, a deep chain and a directory of a few hundred files.
fn mixed_tree(root: &Path) {
    let files: &[&str] = &[
        "-",
        "a.txt",
        "a-",
        "a/x",
        "a/b/c/d/e/f",
        "a/b/c/z",
        "a/b.txt",
        "a/b0",
        "b/back\\slash",
        "b/new\nline/inside",
        "b/cr\r",
        "b0",
        "c",
        "z/y/x",
        "zz",
    ];
    for rel in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rel.as_bytes()).unwrap();
    }
    for dir in ["empty", "a/empty", "z/y/empty"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let mut deep = root.join("deep");
    for level in 0..40 {
        deep.push(format!("l{level}"));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), format!("{level}")).unwrap();
    }
    for i in 0..300 {
        let dir = root.join(format!("wide/w{}", i % 30));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("{i}")).unwrap();
    }
}

#[test]
fn the_manifest_written_during_the_walk_is_the_finished_one_cold_and_warm() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    mixed_tree(&root);
    // Older than the racy margin: the warm runs answer every file from the cache.
    std::thread::sleep(Duration::from_millis(120));
    let mut manifests = Vec::new();
    for threads in [1, 2, 4] {
        let shard = tmp.path().join(format!("cache{threads}.shard"));
        let options = options(&shard, threads);
        let (cold, report) = streamed(&root, &options);
        assert_eq!(report.hashed, report.files, "cold, {threads} threads");
        let (warm, report) = streamed(&root, &options);
        assert_eq!(report.hashed, 0, "warm, {threads} threads");
        assert_eq!(cold, warm);
        manifests.push(cold);
    }
    assert!(manifests.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        String::from_utf8_lossy(&manifests[0]),
        String::from_utf8_lossy(&sha256sum_manifest(&root))
    );
    let text = String::from_utf8_lossy(&manifests[0]);
    assert!(
        text.starts_with(&format!("{}  ./-\n", sha_of(b"-"))),
        "{text}"
    );
    assert!(text.contains("  a/b/c/d/e/f\n"), "{text}");
    assert!(text.contains("\\") && text.contains("  deep/l0/l1/l2/l3/f\n"));
    assert_eq!(text.lines().count(), 15 + 40 + 300);
}

/// What GNU `sha256sum` prints for every regular file under `root`, sorted by path bytes (a
/// file `-` in the root given as `./-`, as hash-tree names it).
fn sha256sum_manifest(root: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(rel.join(entry.file_name()));
            } else if kind.is_file() {
                files.push(rel.join(entry.file_name()));
            }
        }
    }
    files.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let args = files.iter().map(|f| match f.as_os_str().as_bytes() {
        b"-" => Path::new("./-").to_path_buf(),
        _ => f.clone(),
    });
    let out = Command::new("sha256sum")
        .current_dir(root)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Takes `left` bytes, then fails every write.
struct FailingWriter {
    taken: Vec<u8>,
    left: usize,
    writes_after_failure: usize,
    failed: bool,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            self.writes_after_failure += 1;
        }
        if self.left == 0 {
            self.failed = true;
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.taken.extend_from_slice(&buf[..n]);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failed_write_is_reported_and_the_run_still_updates_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    // More than one 64 KiB chunk of lines.
    for i in 0..2000 {
        let dir = root.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("file-{i:05}")), format!("{i}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(120));
    let shard = tmp.path().join("cache.shard");
    let options = options(&shard, 2);
    let mut out = FailingWriter {
        taken: Vec::new(),
        left: 1000,
        writes_after_failure: 0,
        failed: false,
    };
    let report = hash_tree_to(&root, &options, &mut out).unwrap();
    let error = report.output_error.expect("the write error is reported");
    assert_eq!(error.to_string(), "disk full");
    assert_eq!(out.writes_after_failure, 0, "nothing is written after it");
    let mut whole = Vec::new();
    report.manifest.write_sha256sum_to(&mut whole).unwrap();
    assert_eq!(out.taken, whole[..1000]);
    // The cache was written all the same: the next run reads nothing.
    assert!(report.shard_written && report.cache_error.is_none());
    let (again, warm) = streamed(&root, &options);
    assert_eq!((warm.hashed, warm.dirs_read), (0, 0));
    assert_eq!(again, whole);
}

#[test]
fn an_unreadable_directory_between_others_is_left_out_and_the_rest_printed_in_order() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some((uid, gid)) = common::second_user("running hash-tree as another user") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let root = tmp.path().join("root");
    for rel in ["a/f", "b/f", "c/f", "c/secret/f", "c/z", "d"] {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rel).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for dir in ["", "a", "b", "c"] {
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Neither listable nor searchable by the other user; so is `b` while another `b` sorts
    // between `a` and `c`.
    std::fs::set_permissions(root.join("b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        root.join("c/secret"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    nix::unistd::chown(&cache, Some(uid.into()), Some(gid.into())).unwrap();
    for threads in ["1", "2", "3"] {
        let out = Command::new(env!("CARGO_BIN_EXE_warmshard"))
            .args(["--no-fsync", "--shard"])
            .arg(cache.join(format!("c{threads}.shard")))
            .args(["hash-tree", "--threads", threads])
            .arg(&root)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected: String = ["a/f", "c/f", "c/z", "d"]
            .iter()
            .map(|rel| format!("{}  {rel}\n", sha_of(rel.as_bytes())))
            .collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
        assert_eq!(stderr.matches("Permission denied").count(), 2, "{stderr}");
    }
}

#[test]
fn the_cache_keys_worked_out_after_the_walk_are_the_walk_s_own_past_255_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    // 30 levels of 20-byte names: paths pass 255 bytes at the 13th, and their directories are
    // keyed by a hash of their parent's key and their name from there on.
    let mut dir = root.clone();
    for level in 0..30 {
        dir.push(format!("level-{level:02}-xxxxxxxxxx"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), format!("{level}")).unwrap();
        std::fs::write(dir.join("g"), format!("g{level}")).unwrap();
    }
    std::fs::write(root.join("top"), "top").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let shard = tmp.path().join("cache.shard");
    let options = options(&shard, 2);
    let (_, cold) = streamed(&root, &options);
    assert_eq!((cold.files, cold.hashed), (61, 61));
    // A file gone: the cache is rewritten whole, every entry under the key worked out again.
    std::fs::remove_file(root.join("top")).unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let (_, pruned) = streamed(&root, &options);
    assert!(pruned.shard_written);
    assert_eq!((pruned.files, pruned.hashed), (60, 0));
    // Every listing and file entry was found again under its key: nothing read, nothing hashed.
    let (manifest, warm) = streamed(&root, &options);
    assert_eq!(
        (warm.hashed, warm.dirs_read, warm.shard_written),
        (0, 0, false)
    );
    assert_eq!(
        String::from_utf8_lossy(&manifest),
        String::from_utf8_lossy(&sha256sum_manifest(&root))
    );
    // And a change deep down is written under the same keys too.
    std::fs::write(dir.join("f"), "changed").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let (_, partial) = streamed(&root, &options);
    assert_eq!(partial.hashed, 1);
    let (_, warm) = streamed(&root, &options);
    assert_eq!((warm.hashed, warm.shard_written), (0, false));
}

#[test]
fn a_directory_of_thousands_of_files_is_stamped_in_chunks_and_every_change_is_seen() {
    // More than 2,048 files: their cached listing is stamped in chunks by every thread.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let big = root.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..5000 {
        std::fs::write(big.join(format!("f{i:05}")), format!("{i}")).unwrap();
    }
    std::fs::create_dir_all(root.join("small")).unwrap();
    std::fs::write(root.join("small/s"), "s").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    for threads in [1, 2, 3] {
        let shard = tmp.path().join(format!("cache{threads}.shard"));
        let options = options(&shard, threads);
        let (cold, report) = streamed(&root, &options);
        assert_eq!((report.files, report.hashed), (5001, 5001));
        let (warm, report) = streamed(&root, &options);
        assert_eq!(
            (report.hashed, report.dirs_read),
            (0, 0),
            "{threads} threads"
        );
        assert_eq!(cold, warm);
    }
    // Files changed in the first, a middle and the last chunk, with the directory's own
    // stamp unchanged (contents rewritten in place): each is hashed again, and only those.
    for i in [0, 2500, 4999] {
        std::fs::write(big.join(format!("f{i:05}")), format!("changed {i}")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(120));
    for threads in [1, 2, 3] {
        let shard = tmp.path().join(format!("cache{threads}.shard"));
        let (manifest, report) = streamed(&root, &options(&shard, threads));
        assert_eq!(
            (report.hashed, report.dirs_read),
            (3, 0),
            "{threads} threads"
        );
        assert_eq!(
            String::from_utf8_lossy(&manifest),
            String::from_utf8_lossy(&sha256sum_manifest(&root))
        );
    }
    // A file of a late chunk replaced by a directory: the directory is read again, and the
    // file under the new one is in the manifest.
    std::fs::remove_file(big.join("f04000")).unwrap();
    std::fs::create_dir(big.join("f04000")).unwrap();
    std::fs::write(big.join("f04000/inside"), "inside").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    for threads in [1, 2, 3] {
        let shard = tmp.path().join(format!("cache{threads}.shard"));
        let (manifest, report) = streamed(&root, &options(&shard, threads));
        assert_eq!(
            (report.files, report.dirs_read),
            (5001, 2),
            "{threads} threads"
        );
        assert_eq!(
            String::from_utf8_lossy(&manifest),
            String::from_utf8_lossy(&sha256sum_manifest(&root))
        );
    }
}

/// The threads a run's directories were planned on (its progress callback is called from the
/// thread that visits each directory).
fn planning_threads(root: &Path, shard: &Path, threads: usize) -> (usize, bool) {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let record = seen.clone();
    let options = options(shard, threads).progress(move |_, _| {
        record.lock().unwrap().insert(std::thread::current().id());
    });
    let (out, report) = streamed(root, &options);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!out.is_empty());
    let seen = seen.lock().unwrap();
    (seen.len(), seen.contains(&std::thread::current().id()))
}

#[test]
fn a_deep_narrow_tree_is_walked_by_the_calling_thread_alone() {
    // One job at a time: the other threads would only wait, so none starts (they used to
    // start with the walk and take turns at the chain). Cold, a directory's file to hash is a
    // job beside its subdirectory's, so files are in the warm run only.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let mut path = root.clone();
    for level in 0..150 {
        path.push(format!("d{level}"));
    }
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("bottom"), b"1").unwrap();
    let shard = dir.path().join("chain.shard");
    for run in ["cold", "warm"] {
        assert_eq!(planning_threads(&root, &shard, 8), (1, true), "{run} run");
    }
    // Warm, each directory's cached files are stamped inline: still one job at a time.
    let mut path = root.clone();
    for level in 0..150 {
        path.push(format!("d{level}"));
        std::fs::write(path.join("f"), level.to_string()).unwrap();
    }
    // Older than the racy margin, so the next run caches the files' hashes and listings.
    std::thread::sleep(Duration::from_millis(300));
    planning_threads(&root, &shard, 8); // cold for the new files
    assert_eq!(
        planning_threads(&root, &shard, 8),
        (1, true),
        "warm run with files"
    );
}

#[test]
fn a_wide_tree_starts_more_threads_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    for d in 0..64 {
        let sub = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..40 {
            std::fs::write(sub.join(format!("f{f}")), vec![d as u8; 20_000]).unwrap();
        }
    }
    let shard = dir.path().join("wide.shard");
    let (threads, caller) = planning_threads(&root, &shard, 4);
    assert!(caller);
    assert!(
        (2..=4).contains(&threads),
        "{threads} threads planned directories"
    );
    let (one, _) = planning_threads(&root, &dir.path().join("one.shard"), 1);
    assert_eq!(one, 1);
}
