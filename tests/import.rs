//! `warmshard import DIR`: one entry per regular file, read through directory handles, never
//! storing the shard's own files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

/// `warmshard import DIR` into `shard`, which must succeed.
fn import(shard: &Path, dir: &Path) {
    common::output_ok(
        Command::new(BIN)
            .args(["--no-fsync", "--shard"])
            .arg(shard)
            .arg("import")
            .arg(dir),
    );
}

fn keys(shard: &Path) -> Vec<Vec<u8>> {
    let shard = warmshard::Shard::open(shard).unwrap();
    let snapshot = shard.snapshot();
    let mut keys: Vec<Vec<u8>> = snapshot.keys().map(<[u8]>::to_vec).collect();
    keys.sort();
    keys
}

#[test]
fn a_shard_inside_the_imported_directory_does_not_store_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for name in ["a", "b", "c"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    let shard = dir.join("s.shard");
    for run in 0..3 {
        import(&shard, dir);
        assert_eq!(
            keys(&shard),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            "run {run}"
        );
        // A small write leaves a delta next to the base: it is not imported either.
        let put = Command::new(BIN)
            .args(["--no-fsync", "--shard"])
            .arg(&shard)
            .args(["put", "a", "/dev/null"])
            .output()
            .unwrap();
        assert!(put.status.success());
    }
}

#[test]
fn paths_longer_than_path_max_and_non_utf8_names_are_imported_as_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"odd\xff")), "odd").unwrap();
    let mut dir =
        nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let mut key = Vec::new();
    for level in 0..25u8 {
        let name = vec![b'a' + level; 200];
        dir = common::mkdir_at(&dir, &name);
        key.extend_from_slice(&name);
        key.push(b'/');
    }
    key.push(b'f');
    common::write_at(&dir, "f", b"deep");
    let shard = tmp.path().join("s.shard");
    import(&shard, &root);
    assert!(key.len() > 4096);
    let opened = warmshard::Shard::open(&shard).unwrap();
    let snapshot = opened.snapshot();
    assert_eq!(snapshot.get(&key), Some(&b"deep"[..]));
    assert_eq!(snapshot.get(b"odd\xff"), Some(&b"odd"[..]));
    assert_eq!(snapshot.len(), 2);
}

#[test]
fn symlinks_and_fifos_are_skipped_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(tmp.path().join("outside"), "outside").unwrap();
    std::fs::write(root.join("f"), "f").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("dirlink")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let shard = tmp.path().join("s.shard");
    import(&shard, &root);
    assert_eq!(keys(&shard), [b"f".to_vec()]);
}

#[test]
fn a_tree_deeper_than_the_kept_handles_is_imported_whole() {
    // 150 levels, a file at each level and a sibling directory at each level: the walk gives up
    // the handles of the upper levels and reopens them on the way back.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let mut dir = root.clone();
    let mut expected = Vec::new();
    let mut rel = String::new();
    for level in 0..150 {
        std::fs::create_dir_all(dir.join("z")).unwrap();
        std::fs::write(dir.join("z/after"), format!("{level}")).unwrap();
        expected.push(format!("{rel}z/after").into_bytes());
        std::fs::write(dir.join("f"), format!("{level}")).unwrap();
        expected.push(format!("{rel}f").into_bytes());
        dir.push("d");
        rel.push_str("d/");
    }
    expected.sort();
    let shard = tmp.path().join("s.shard");
    import(&shard, &root);
    assert_eq!(keys(&shard), expected);
}
