//! A deep chain of directories costs `hash-tree` memory in proportion to its depth, not its
//! square. (Its own test binary with one test, so RUSAGE_CHILDREN sees only its own children.)

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

mod common;

/// Builds `root/d/d/.../d` (`depth` levels, a path far past `PATH_MAX`) with a file at the
/// bottom, one directory handle at a time.
fn chain(root: &Path, depth: usize) {
    std::fs::create_dir(root).unwrap();
    let mut dir: OwnedFd =
        nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..depth {
        dir = common::mkdir_at(&dir, b"d");
    }
    common::write_at(&dir, "f", b"bottom");
}

/// Removes a chain built by [`chain`] without a long path or a handle per level: the
/// grandchild is moved up, then the emptied child removed, until the chain is short.
fn remove_chain(root: &Path) {
    let (d, dd, up) = (root.join("d"), root.join("d/d"), root.join("up"));
    while dd.exists() {
        std::fs::rename(&dd, &up).unwrap();
        std::fs::remove_dir(&d).unwrap();
        std::fs::rename(&up, &d).unwrap();
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// Peak memory (KiB) of the children waited for so far, the largest one.
fn children_peak_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
}

/// Runs `hash-tree` on a chain of `depth` levels and returns its peak memory in KiB. Chains
/// must be run shallowest first: the peak of the children is the largest one's.
fn hash_tree_peak_kib(tmp: &Path, depth: usize) -> i64 {
    let root = tmp.join(format!("chain{depth}"));
    chain(&root, depth);
    let out = Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .arg("--no-fsync")
        .arg("--shard")
        .arg(tmp.join(format!("chain{depth}.shard")))
        .args(["hash-tree", "--stats"])
        .arg(&root)
        .output()
        .unwrap();
    let peak = children_peak_kib();
    remove_chain(&root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8(out.stdout).unwrap();
    assert!(manifest.ends_with("/d/f\n"), "{manifest:.200}");
    assert_eq!(manifest.len(), 66 + depth * 2 + 2);
    peak
}

#[test]
fn peak_memory_of_a_deep_chain_grows_with_its_depth_not_its_square() {
    let tmp = tempfile::tempdir().unwrap();
    let small = hash_tree_peak_kib(tmp.path(), 5_000);
    let large = hash_tree_peak_kib(tmp.path(), 20_000);
    // Four times as deep: at most four times the memory plus what any run costs. Keeping each
    // directory's path made it ~12 times (34 MiB then 415 MiB in a release build).
    assert!(
        large < 6 * small,
        "peak {small} KiB for 5,000 levels, {large} KiB for 20,000"
    );
}
