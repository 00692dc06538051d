//! `warmshard hash-tree`: a sha256sum-compatible manifest that re-hashes only what changed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warmshard::paths::PathCache;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

struct Run {
    manifest: Vec<u8>,
    files: u64,
    hashed: u64,
    bytes_hashed: u64,
}

/// Runs hash-tree on `dir` with its cache at `shard`, parsing the --stats line.
fn hash_tree(dir: &Path, shard: &Path) -> Run {
    let out = Command::new(BIN)
        .args(["--no-fsync", "--shard"])
        .arg(shard)
        .args(["hash-tree", "--stats"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stats = stderr.lines().find(|l| l.starts_with("files=")).unwrap();
    let field = |name: &str| -> u64 {
        let start = stats.find(&format!("{name}=")).unwrap() + name.len() + 1;
        stats[start..].split(' ').next().unwrap().parse().unwrap()
    };
    Run {
        manifest: out.stdout,
        files: field("files"),
        hashed: field("hashed"),
        bytes_hashed: field("bytes_hashed"),
    }
}

/// What GNU sha256sum prints for every regular file under `dir`, sorted by path bytes.
fn sha256sum_manifest(dir: &Path) -> Vec<u8> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                stack.push(rel.join(entry.file_name()));
            } else if t.is_file() {
                files.push(rel.join(entry.file_name()));
            }
        }
    }
    files.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let mut manifest = Vec::new();
    for chunk in files.chunks(500) {
        let out = Command::new("sha256sum")
            .current_dir(dir)
            .arg("--")
            .args(chunk)
            .output()
            .unwrap();
        assert!(out.status.success());
        manifest.extend_from_slice(&out.stdout);
    }
    manifest
}

/// Files must be older than the racy margin before a run can trust their stamps.
fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

fn tree(files: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("content {i}\n").repeat(i % 50),
        )
        .unwrap();
    }
    let shard = tmp.path().join("cache/tree.shard");
    (tmp, root, shard)
}

#[test]
fn cold_manifest_equals_sha256sum_and_verifies_with_check() {
    let (tmp, root, shard) = tree(200);
    std::fs::write(root.join("empty"), b"").unwrap();
    for name in [
        &b"back\\slash"[..],
        b"new\nline",
        b"carriage\rreturn",
        b"latin1-\xe9",
        b"sp ace",
    ] {
        std::fs::write(root.join(OsStr::from_bytes(name)), name).unwrap();
    }
    settle();
    let run = hash_tree(&root, &shard);
    assert_eq!(run.files, 206);
    assert_eq!(run.hashed, 206);
    let expected = sha256sum_manifest(&root);
    assert_eq!(
        String::from_utf8_lossy(&run.manifest),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(run.manifest, expected);
    let expected_bytes: u64 = walk_sizes(&root);
    assert_eq!(run.bytes_hashed, expected_bytes);

    let manifest_file = tmp.path().join("MANIFEST");
    std::fs::write(&manifest_file, &run.manifest).unwrap();
    common::output_ok(
        Command::new("sha256sum")
            .current_dir(&root)
            .args(["-c", "--quiet"])
            .arg(&manifest_file),
    );
}

fn walk_sizes(root: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += walk_sizes(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

#[test]
fn warm_run_hashes_nothing_and_does_not_rewrite_the_shard() {
    let (_tmp, root, shard) = tree(300);
    settle();
    let cold = hash_tree(&root, &shard);
    assert_eq!(cold.hashed, 300);
    let before = std::fs::metadata(&shard).unwrap();
    let warm = hash_tree(&root, &shard);
    assert_eq!(warm.hashed, 0);
    assert_eq!(warm.bytes_hashed, 0);
    assert_eq!(warm.manifest, cold.manifest);
    let after = std::fs::metadata(&shard).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        before.ino(),
        after.ino(),
        "a warm run must not rewrite the shard"
    );
}

#[test]
fn ten_changed_files_hash_exactly_ten_and_deleted_files_are_pruned() {
    let (_tmp, root, shard) = tree(100);
    settle();
    hash_tree(&root, &shard);
    for i in 0..10 {
        let path = root.join(format!("d{}/f{i}.txt", i % 7));
        std::fs::write(path, format!("changed {i}")).unwrap();
    }
    for i in 90..95 {
        std::fs::remove_file(root.join(format!("d{}/f{i}.txt", i % 7))).unwrap();
    }
    settle();
    let partial = hash_tree(&root, &shard);
    assert_eq!(partial.hashed, 10);
    assert_eq!(partial.files, 95);
    assert_eq!(partial.manifest, sha256sum_manifest(&root));

    let cache = PathCache::open(&shard, warmshard::Options::new()).unwrap();
    let view = cache.view();
    // Keys starting with NUL are cached directory listings, one per directory.
    let file_keys = view.snapshot().keys().filter(|k| k[0] != 0).count();
    assert_eq!(file_keys, 95, "entries of deleted files must be pruned");
    assert_eq!(view.snapshot().len() - file_keys, 8, "root and d0..d6");
    assert!(view.entry(b"d6/f90.txt").is_none());
    assert!(view.entry(b"d0/f0.txt").is_some());
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

#[test]
fn symlinks_fifos_and_sockets_are_excluded_and_never_opened() {
    let (tmp, root, shard) = tree(5);
    std::os::unix::fs::symlink(root.join("d0/f0.txt"), root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("link-to-root")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("outside")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap();
    settle();
    let run = hash_tree(&root, &shard);
    assert_eq!(run.files, 5);
    let text = String::from_utf8_lossy(&run.manifest);
    for excluded in ["link", "outside", "fifo", "socket"] {
        assert!(!text.contains(excluded), "{excluded} listed:\n{text}");
    }
    drop(tmp);
}

#[test]
fn the_cache_files_inside_the_tree_are_excluded() {
    let (_tmp, root, _) = tree(3);
    let shard = root.join("d0/.hash-cache.shard");
    settle();
    let first = hash_tree(&root, &shard);
    assert_eq!(first.files, 3);
    assert!(shard.exists());
    let second = hash_tree(&root, &shard);
    assert_eq!(second.files, 3);
    assert_eq!(second.hashed, 0);
    assert!(!String::from_utf8_lossy(&second.manifest).contains("hash-cache"));
    // A run that changes a few files publishes a delta beside the shard; the next run must not
    // list it (nor any other file of the shard: `warmshard::is_shard_file` is the one rule).
    settle();
    std::fs::write(root.join("d1/f1.txt"), "changed\n").unwrap();
    settle();
    let third = hash_tree(&root, &shard);
    assert_eq!(third.hashed, 1);
    let mut delta = shard.clone().into_os_string();
    delta.push(".delta");
    assert!(
        Path::new(&delta).exists(),
        "a small change publishes a delta"
    );
    let fourth = hash_tree(&root, &shard);
    assert_eq!(fourth.files, 3);
    assert!(!String::from_utf8_lossy(&fourth.manifest).contains("hash-cache"));
}

#[test]
fn hundred_levels_of_nesting_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("deep");
    let mut dir = root.clone();
    for level in 0..120 {
        dir = dir.join(format!("l{level}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), format!("a{level}")).unwrap();
        std::fs::write(dir.join("b"), format!("b{level}")).unwrap();
    }
    settle();
    let shard = tmp.path().join("deep.shard");
    let run = hash_tree(&root, &shard);
    assert_eq!(run.files, 240);
    assert_eq!(run.manifest, sha256sum_manifest(&root));
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

#[test]
fn detects_rewrite_with_mtime_put_back_rename_replace_and_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    std::fs::create_dir(&root).unwrap();
    let a = root.join("a");
    let b = root.join("b");
    let c = root.join("c");
    std::fs::write(&a, "AAAA").unwrap();
    std::fs::write(&b, "BBBB").unwrap();
    std::fs::write(&c, "CCCC").unwrap();
    settle();
    let shard = tmp.path().join("s.shard");
    hash_tree(&root, &shard);

    // 1. Same-size in-place rewrite with the mtime put back: only the ctime changes.
    let old_mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, "aaaa").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(old_mtime)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&a).unwrap().modified().unwrap(),
        old_mtime
    );
    // 2. Atomic replace by rename, same size and same mtime: only the inode changes.
    let b_mtime = std::fs::metadata(&b).unwrap().modified().unwrap();
    let staged = tmp.path().join("staged");
    std::fs::write(&staged, "bbbb").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(b_mtime)
        .unwrap();
    std::fs::rename(&staged, &b).unwrap();
    // 3. touch without a content change.
    let now = std::time::SystemTime::now();
    std::fs::File::options()
        .write(true)
        .open(&c)
        .unwrap()
        .set_modified(now)
        .unwrap();
    settle();
    let run = hash_tree(&root, &shard);
    assert_eq!(run.hashed, 3, "all three changes must be noticed");
    assert_eq!(run.manifest, sha256sum_manifest(&root));
    let text = String::from_utf8(run.manifest).unwrap();
    let c_line = text.lines().find(|l| l.ends_with("  c")).unwrap();
    // The touched file keeps its hash (sha256 of "CCCC").
    assert!(c_line.starts_with(&sha_of(b"CCCC")), "{c_line}");
}

fn sha_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_file_changed_just_before_a_run_is_racy_and_rehashed_until_it_settles() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("fresh"), "just written").unwrap();
    let shard = tmp.path().join("r.shard");
    // Written this instant: its timestamps are within the racy margin.
    assert_eq!(hash_tree(&root, &shard).hashed, 1);
    let cache = PathCache::open(&shard, warmshard::Options::new()).unwrap();
    assert!(cache.view().entry(b"fresh").unwrap().racy);
    settle();
    // Racy entries are never trusted: hashed again, now stored as stable.
    assert_eq!(hash_tree(&root, &shard).hashed, 1);
    assert!(!cache.view().entry(b"fresh").unwrap().racy);
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

#[test]
fn json_output_lists_the_same_files() {
    let (_tmp, root, shard) = tree(20);
    std::fs::write(root.join(OsStr::from_bytes(b"odd\xff")), "x").unwrap();
    settle();
    let out = Command::new(BIN)
        .arg("--shard")
        .arg(&shard)
        .args(["hash-tree", "--json"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = json.as_array().unwrap();
    assert_eq!(lines.len(), 21);
    assert_eq!(lines[0]["path"], "d0/f0.txt");
    assert_eq!(lines[0]["sha256"], sha_of(b""));
    let odd = lines
        .iter()
        .find(|l| l.get("path_bytes").is_some())
        .unwrap();
    assert_eq!(odd["path_bytes"].as_array().unwrap().last().unwrap(), 0xff);
}

/// Runs hash-tree through the library, for the report's directory counts.
fn hash_tree_lib(root: &Path, shard: &Path) -> warmshard::paths::HashTreeReport {
    let options = warmshard::paths::HashTreeOptions::default()
        .shard(shard)
        .shard_options(warmshard::Options::new().durable(false));
    warmshard::paths::hash_tree(root, &options).unwrap()
}

fn sha256sum_text(report: &warmshard::paths::HashTreeReport) -> Vec<u8> {
    let mut text = Vec::new();
    report.manifest.write_sha256sum(&mut text);
    text
}

#[test]
fn unchanged_directories_are_not_read_again_and_changed_ones_are() {
    let (_tmp, root, shard) = tree(100);
    settle();
    let cold = hash_tree_lib(&root, &shard);
    assert_eq!((cold.dirs, cold.dirs_read), (8, 8), "the root and d0..d6");
    let warm = hash_tree_lib(&root, &shard);
    assert_eq!((warm.dirs_read, warm.hashed), (0, 0));
    assert!(!warm.shard_written, "a warm run must not rewrite the cache");
    assert_eq!(warm.manifest, cold.manifest);

    // An added file, a removed file, a new subdirectory: only their directories change.
    std::fs::write(root.join("d3/added.txt"), b"added").unwrap();
    std::fs::remove_file(root.join("d5/f5.txt")).unwrap();
    std::fs::create_dir(root.join("d1/sub")).unwrap();
    std::fs::write(root.join("d1/sub/inner.txt"), b"inner").unwrap();
    let expected = sha256sum_manifest(&root);
    // Changed this instant: their stamps are racy, so their listings are not trusted yet. A
    // loaded machine can take longer than the racy margin between the change and the run, so
    // the directories' mtimes are put in the future (always racy) rather than trusted to be
    // recent, and put back in the past once the test wants them settled.
    let changed_dirs = ["d1", "d1/sub", "d3", "d5"].map(|d| root.join(d));
    let set_mtimes = |offset: Duration, future: bool| {
        let now = std::time::SystemTime::now();
        let at = if future { now + offset } else { now - offset };
        for dir in &changed_dirs {
            std::fs::File::open(dir).unwrap().set_modified(at).unwrap();
        }
    };
    set_mtimes(Duration::from_secs(3600), true);
    let changed = hash_tree_lib(&root, &shard);
    assert_eq!(sha256sum_text(&changed), expected);
    assert_eq!(changed.dirs_read, 4, "d1, d1/sub, d3, d5");
    // The other files of the directories read again are answered by the cache.
    assert_eq!(changed.hashed, 2, "d3/added.txt and d1/sub/inner.txt");
    let again = hash_tree_lib(&root, &shard);
    assert_eq!(again.dirs_read, 4);
    assert_eq!(sha256sum_text(&again), expected);
    set_mtimes(Duration::from_secs(3600), false);
    settle();
    assert_eq!(hash_tree_lib(&root, &shard).dirs_read, 4);
    let settled = hash_tree_lib(&root, &shard);
    assert_eq!((settled.dirs, settled.dirs_read), (9, 0));
    assert_eq!(sha256sum_text(&settled), expected);

    // A file changed in place does not touch its directory: still answered by the stamp.
    std::fs::write(root.join("d2/f2.txt"), b"rewritten, longer than before").unwrap();
    settle();
    let rewritten = hash_tree_lib(&root, &shard);
    assert_eq!((rewritten.dirs_read, rewritten.hashed), (0, 1));
    assert_eq!(sha256sum_text(&rewritten), sha256sum_manifest(&root));

    // With the listing cache off, every directory is read, and nothing else changes.
    let options = warmshard::paths::HashTreeOptions::default()
        .shard(&shard)
        .shard_options(warmshard::Options::new().durable(false))
        .listing_cache(false);
    let uncached = warmshard::paths::hash_tree(&root, &options).unwrap();
    assert_eq!((uncached.dirs_read, uncached.hashed), (9, 0));
    assert_eq!(uncached.manifest, rewritten.manifest);
    assert!(!uncached.shard_written);
    assert_eq!(hash_tree_lib(&root, &shard).dirs_read, 0, "listings kept");
}

#[test]
fn a_tree_wider_than_the_open_handle_budget_is_walked_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("wide");
    for i in 0..300 {
        let dir = root.join(format!("w{i:03}"));
        std::fs::create_dir_all(dir.join("x/y")).unwrap();
        std::fs::write(dir.join("f"), format!("{i}")).unwrap();
        std::fs::write(dir.join("x/y/g"), format!("g{i}")).unwrap();
    }
    settle();
    let shard = tmp.path().join("wide.shard");
    let cold = hash_tree_lib(&root, &shard);
    assert!(cold.errors.is_empty(), "{:?}", cold.errors);
    assert_eq!((cold.files, cold.dirs), (600, 901));
    assert_eq!(sha256sum_text(&cold), sha256sum_manifest(&root));
    let warm = hash_tree_lib(&root, &shard);
    assert_eq!((warm.hashed, warm.dirs_read), (0, 0));
    assert_eq!(warm.manifest, cold.manifest);
}

#[test]
fn deep_paths_under_a_wide_directory_are_all_listed() {
    // 300 branches (more than the walk keeps handles for) each holding a chain of 25 directories
    // with 200-byte names: every file's path is longer than PATH_MAX.
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("wide-deep");
    std::fs::create_dir(&root).unwrap();
    let root_fd =
        nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let long = |c: u8| vec![c; 200];
    for i in 0..300 {
        let mut dir = common::mkdir_at(&root_fd, format!("b{i:03}").as_bytes());
        for level in 0..25u8 {
            dir = common::mkdir_at(&dir, &long(b'a' + level % 26));
        }
        common::write_at(&dir, "f", format!("{i}").as_bytes());
    }
    settle();
    let shard = tmp.path().join("deep.shard");
    for run in ["cold", "warm"] {
        let report = hash_tree_lib(&root, &shard);
        assert!(report.errors.is_empty(), "{run}: {:?}", report.errors);
        assert_eq!(report.files, 300, "{run}");
        let mut i = 0;
        report.manifest.for_each(|line| {
            assert!(line.path().len() > 4096 + 300);
            assert_eq!(line.hex(), sha_of(format!("{i}").as_bytes()), "{run}");
            i += 1;
        });
        assert_eq!(i, 300, "{run}");
    }
}

#[test]
fn a_file_named_dash_is_checked_by_sha256sum_not_read_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("-"), "dash").unwrap();
    std::fs::write(root.join("sub/-"), "sub dash").unwrap();
    let run = hash_tree(&root, &tmp.path().join("r.shard"));
    let text = String::from_utf8(run.manifest.clone()).unwrap();
    assert_eq!(
        text,
        format!("{}  ./-\n{}  sub/-\n", sha_of(b"dash"), sha_of(b"sub dash"))
    );
    let manifest = tmp.path().join("MANIFEST");
    std::fs::write(&manifest, &run.manifest).unwrap();
    // Standard input holds other bytes: a check that read it for `-` would fail.
    common::output_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&manifest)
            .current_dir(&root)
            .stdin(std::fs::File::open("/dev/null").unwrap()),
    );
}

/// Runs the hash-tree command with extra global options; returns (exit code, stdout, stderr).
fn hash_tree_cli(dir: &Path, shard: &Path, global: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .args(["--no-fsync", "--shard"])
        .arg(shard)
        .args(global)
        .args(["hash-tree", "--stats"])
        .arg(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), out.stdout, stderr)
}

#[test]
fn a_cache_that_cannot_be_written_still_prints_the_manifest_and_exits_3() {
    let (tmp, root, shard) = tree(20);
    settle();
    let expected = sha256sum_manifest(&root);

    // Another writer holds the lock past --lock-timeout.
    std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(tmp.path().join("cache/tree.shard.lock"))
        .unwrap();
    let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let (code, stdout, stderr) = hash_tree_cli(&root, &shard, &["--lock-timeout", "0.2"]);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(stdout, expected);
    assert!(
        stderr.contains("cache") && stderr.contains("not"),
        "{stderr}"
    );
    drop(lock);

    // The cache would pass --max-size.
    let (code, stdout, stderr) = hash_tree_cli(&root, &shard, &["--max-size", "300"]);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(stdout, expected);

    // Nothing was cached, so the next run hashes everything, and caches it.
    let run = hash_tree(&root, &shard);
    assert_eq!((run.hashed, run.manifest), (20, expected.clone()));
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

/// `warmshard hash-tree ROOT` run as `user`, its cache in a directory of that user's made in
/// `scratch`.
/// The suite's second user and a scratch directory it can search (mode 0711) but not list;
/// `None` (the test prints SKIPPED) where no second user can be had.
fn scratch_for_second_user() -> Option<((u32, u32), tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    let user = common::second_user("running hash-tree as another user")?;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    Some((user, tmp))
}

fn hash_tree_as(user: (u32, u32), scratch: &Path, root: &Path) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let cache = scratch.join("cache");
    std::fs::create_dir(&cache).unwrap();
    nix::unistd::chown(&cache, Some(user.0.into()), Some(user.1.into())).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    Command::new(BIN)
        .args(["--no-fsync", "--shard"])
        .arg(cache.join("c.shard"))
        .arg("hash-tree")
        .arg(root)
        .uid(user.0)
        .gid(user.1)
        .output()
        .unwrap()
}

#[test]
fn an_unreadable_root_is_an_error_not_an_empty_manifest() {
    use std::os::unix::fs::PermissionsExt;
    let Some((user, tmp)) = scratch_for_second_user() else {
        return;
    };
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), "x").unwrap();
    // Searchable (it resolves) but not readable by the other user.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = hash_tree_as(user, tmp.path(), &root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn hash_tree_help_does_not_offer_what_hash_tree_ignores() {
    let out = Command::new(BIN)
        .args(["hash-tree", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(!help.contains("default.shard"), "{help}");
    assert!(!help.contains("env: WARMSHARD_PATH"), "{help}");
    assert!(!help.contains("--producer"), "{help}");
    assert!(help.contains("trees/<sha256 of the root>.shard"), "{help}");
    assert!(
        help.contains("Exit status") && help.contains("3 the manifest"),
        "{help}"
    );
}

/// The cache's size after a cold run over a chain of `depth` nested directories.
fn chain_cache_bytes(depth: usize) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("chain");
    let mut bottom = root.clone();
    for _ in 0..depth {
        bottom.push("d");
    }
    std::fs::create_dir_all(&bottom).unwrap();
    std::fs::write(bottom.join("f"), "bottom").unwrap();
    settle();
    let shard = tmp.path().join("chain.shard");
    let report = hash_tree_lib(&root, &shard);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!((report.files, report.dirs), (1, depth as u64 + 1));
    let warm = hash_tree_lib(&root, &shard);
    assert_eq!((warm.hashed, warm.dirs_read), (0, 0));
    std::fs::metadata(&shard).unwrap().len()
}

#[test]
fn the_cache_of_a_deep_chain_grows_with_its_depth_not_its_square() {
    let (small, large) = (chain_cache_bytes(1000), chain_cache_bytes(2000));
    // Keys holding the whole path: ~1 MB then ~4 MB.
    assert!(large < 1 << 20, "{large} bytes for 2,000 levels");
    assert!(
        large < 3 * small,
        "{small} bytes for 1,000 levels, {large} for 2,000"
    );
}

#[test]
fn excluded_paths_are_left_out_and_excluded_directories_never_read() {
    let (tmp, root, shard) = tree(30);
    std::fs::create_dir_all(root.join(".git/objects")).unwrap();
    std::fs::write(root.join(".git/objects/x"), "object").unwrap();
    std::fs::write(root.join("d1/main.o"), "object file").unwrap();
    std::fs::create_dir_all(root.join("d2/target")).unwrap();
    std::fs::write(root.join("d2/target/out"), "nested target: kept by /target").unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target/out"), "root target").unwrap();
    settle();
    let run = |exclude: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args(["--no-fsync", "--shard"])
            .arg(&shard)
            .args(["hash-tree", "--stats"]);
        for pattern in exclude {
            command.args(["--exclude", pattern]);
        }
        let out = common::output_ok(command.arg(&root));
        String::from_utf8(out.stdout).unwrap()
    };
    let all = run(&[]);
    assert!(all.contains("  .git/objects/x\n") && all.contains("  target/out\n"));
    let some = run(&[".git", "*.o", "/target"]);
    assert!(
        !some.contains(".git/") && !some.contains("main.o"),
        "{some}"
    );
    assert!(!some.contains("  target/out\n"), "{some}");
    assert!(some.contains("  d2/target/out\n"), "{some}");
    assert_eq!(some.lines().count(), 31);
    // Excluded directories are not visited at all: 12 directories, 3 of them excluded.
    let options = |exclude: &[&str]| {
        warmshard::paths::HashTreeOptions::default()
            .shard(&shard)
            .shard_options(warmshard::Options::new().durable(false))
            .exclude(warmshard::paths::Exclude::new(exclude))
    };
    let report = warmshard::paths::hash_tree(&root, &options(&[])).unwrap();
    assert_eq!(report.dirs, 12);
    let report = warmshard::paths::hash_tree(&root, &options(&[".git", "*.o", "/target"])).unwrap();
    assert_eq!((report.dirs, report.files), (9, 31));
    // The cache kept whole listings: a run without exclusions lists everything again.
    let again = run(&[]);
    assert!(again.contains("  target/out\n") && again.contains("  d1/main.o\n"));
    drop(tmp);
}

#[test]
fn an_unreadable_file_is_left_out_and_named_with_its_full_path() {
    use std::os::unix::fs::PermissionsExt;
    let Some((user, tmp)) = scratch_for_second_user() else {
        return;
    };
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/open"), "x").unwrap();
    std::fs::write(root.join("sub/secret"), "y").unwrap();
    std::fs::set_permissions(
        root.join("sub/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = hash_tree_as(user, tmp.path(), &root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  sub/open\n", sha_of(b"x"))
    );
    let secret = std::fs::canonicalize(&root).unwrap().join("sub/secret");
    assert!(
        stderr.contains(&format!("{}: Permission denied", secret.display())),
        "{stderr}"
    );
    // The library's errors are typed: the path, and the OS error.
    let _typed: fn(&warmshard::paths::PathError) -> (&Path, Option<i32>) =
        |e| (e.path(), e.raw_os_error());
}

/// Producer string of this version's tree caches (part of the layout: see `tree_store.rs`).
const TREE_CACHE_PRODUCER: &str = "warmshard hash-tree 2";

#[test]
fn unchanged_files_are_answered_by_their_directory_s_listing_without_their_own_entries() {
    let (_tmp, root, shard) = tree(100);
    settle();
    assert_eq!(hash_tree(&root, &shard).hashed, 100);
    // Keep only the directories' listings (keys starting with NUL): every file's own entry goes.
    let options = warmshard::Options::new()
        .producer(TREE_CACHE_PRODUCER)
        .durable(false);
    let cache = warmshard::Shard::open_with(&shard, options).unwrap();
    let listings: Vec<(Vec<u8>, Vec<u8>)> = cache
        .snapshot()
        .iter()
        .filter(|(key, _)| key.first() == Some(&0))
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect();
    assert_eq!(listings.len(), 8, "root and d0..d6");
    cache.replace_all(listings).unwrap();
    // Each listing holds its files' stamps and hashes: nothing is read again...
    let warm = hash_tree(&root, &shard);
    assert_eq!(warm.hashed, 0);
    assert_eq!(warm.manifest, sha256sum_manifest(&root));
    // ...and the files' own entries are written back, for the readers of file entries.
    let view = PathCache::open(&shard, warmshard::Options::new()).unwrap();
    let file_keys = view.view().snapshot().keys().filter(|k| k[0] != 0).count();
    assert_eq!(file_keys, 100);
    assert!(view.view().entry(b"d3/f3.txt").is_some());
    // A file changed without its directory changing is not answered by the stale record.
    std::fs::write(root.join("d3/f3.txt"), "changed in place").unwrap();
    settle();
    let partial = hash_tree(&root, &shard);
    assert_eq!(partial.hashed, 1);
    assert_eq!(partial.manifest, sha256sum_manifest(&root));
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

#[test]
fn a_cache_of_an_earlier_layout_is_rebuilt_not_refused() {
    for producer in ["warmshard hash-tree 1", "warmshard hash-tree 0"] {
        let (_tmp, root, shard) = tree(20);
        settle();
        std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
        let options = warmshard::Options::new().producer(producer).durable(false);
        let old = warmshard::Shard::open_with(&shard, options).unwrap();
        old.put_one(b"\0", b"L1 a listing of another layout")
            .unwrap();
        old.put_one(b"d0/f0.txt", b"an entry of another layout")
            .unwrap();
        drop(old);
        let cold = hash_tree(&root, &shard);
        assert_eq!((cold.files, cold.hashed), (20, 20), "{producer}");
        assert_eq!(cold.manifest, sha256sum_manifest(&root), "{producer}");
        assert_eq!(hash_tree(&root, &shard).hashed, 0, "{producer}");
    }
}

#[test]
fn a_few_files_changed_in_a_large_directory_do_not_rewrite_its_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("big");
    std::fs::create_dir(&root).unwrap();
    for i in 0..100 {
        std::fs::write(root.join(format!("f{i:03}")), format!("{i}")).unwrap();
    }
    let shard = tmp.path().join("big.shard");
    settle();
    assert_eq!(hash_tree(&root, &shard).hashed, 100);
    let listing = || {
        let options = warmshard::Options::new().producer(TREE_CACHE_PRODUCER);
        let cache = warmshard::Shard::open_with(&shard, options).unwrap();
        cache.snapshot().get(b"\0").unwrap().to_vec()
    };
    let before = listing();
    // Changed in place (the directory's stamp stays): answered by their own entries, and the
    // listing, large, is left as it is.
    for i in 0..3 {
        std::fs::write(root.join(format!("f{i:03}")), "changed").unwrap();
    }
    settle();
    let partial = hash_tree(&root, &shard);
    assert_eq!(partial.hashed, 3);
    assert_eq!(partial.manifest, sha256sum_manifest(&root));
    assert!(listing() == before, "the listing was stored again");
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
    // Once a quarter of its files are not answered by it, the listing is stored again.
    for i in 0..25 {
        std::fs::write(root.join(format!("f{i:03}")), "changed again").unwrap();
    }
    settle();
    assert_eq!(hash_tree(&root, &shard).hashed, 25);
    assert!(listing() != before, "the listing was not stored again");
    assert_eq!(hash_tree(&root, &shard).hashed, 0);
}

/// Runs `hash-tree --threads <threads>` on `root` twice (cold, then warm) under `ulimit -v
/// 30000` (30 MB of address space); each run must succeed and print `sha256sum`'s manifest.
fn cold_then_warm_under_30_mb(root: &Path, shard: &Path, threads: usize) {
    for run in ["cold", "warm"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v 30000 && exec "$0" "$@""#)
            .arg(BIN)
            .args(["--no-fsync", "--shard"])
            .arg(shard)
            .args(["hash-tree", "--threads", &threads.to_string()])
            .arg(root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{run}: {:?} {stderr}", out.status);
        assert_eq!(out.stdout, sha256sum_manifest(root), "{run}");
    }
}

#[test]
fn a_thread_that_cannot_be_started_leaves_the_walk_to_those_running() {
    // 64 threads asked for under `ulimit -v 30000`: their stacks cannot all be mapped. The
    // walk starts no more threads than whose stacks fit in a quarter of the limit, and the
    // first that cannot start stops the others from being tried. Seen before the fixes: a
    // failed start panicked the walk (exit 101, "failed to spawn thread"), and threads that
    // did start (2 MiB stacks) left the heap no room (abort, "memory allocation of 262144
    // bytes failed", 7 of 15 runs).
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("wide");
    for d in 0..48 {
        let sub = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..4 {
            std::fs::write(sub.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    settle();
    let shard = tmp.path().join("wide.shard");
    cold_then_warm_under_30_mb(&root, &shard, 64);
}

#[test]
fn a_run_under_a_tight_address_space_limit_completes() {
    // `ulimit -v 30000` (30 MB of address space): the walk's workers must not need more than
    // the tree does. Seen before the fix: each worker reserved a 24 MiB block up front, and the
    // failed allocation aborted the process (exit 134, "memory allocation ... failed").
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("small");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a"), "a").unwrap();
    std::fs::write(root.join("sub/b"), "b").unwrap();
    settle();
    let shard = tmp.path().join("small.shard");
    cold_then_warm_under_30_mb(&root, &shard, 2);
}
