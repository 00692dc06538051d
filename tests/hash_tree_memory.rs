//! Hashing streams: the peak memory of `hash-tree` stays flat for a file of 1 GiB.
//! (Its own test binary, so RUSAGE_CHILDREN sees only this one child.)

use std::process::Command;

mod common;

#[test]
fn peak_memory_is_flat_when_hashing_a_large_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("big");
    std::fs::create_dir(&root).unwrap();
    // A sparse file: 1 GiB of zeros to read, no disk space used.
    let file = std::fs::File::create(root.join("one-gib")).unwrap();
    file.set_len(1 << 30).unwrap();
    drop(file);
    let out = common::output_ok(
        Command::new(env!("CARGO_BIN_EXE_warmshard"))
            .arg("--shard")
            .arg(tmp.path().join("big.shard"))
            .args(["hash-tree", "--stats"])
            .arg(&root),
    );
    // sha256 of 1 GiB of zero bytes, computed independently here.
    let expected = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            h.update(&zeros);
        }
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{expected}  one-gib\n")
    );
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_kib = usage.max_rss();
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB while hashing 1 GiB: reading is not streaming"
    );
}
