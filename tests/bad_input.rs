//! Bad files read as empty with a reason, never a panic; the next write rebuilds them.

use std::path::Path;

use warmshard::{Health, Options, Shard};

fn valid_shard_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("source.shard");
    let shard = Shard::open_with(&path, Options::new().producer("test 1").durable(false)).unwrap();
    shard
        .replace_all((0..40).map(|i| (format!("key-{i}"), vec![i as u8; 10 + i])))
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// Writes `bytes` as a shard, opens it, reads it every way, and returns its health.
fn health_of(dir: &Path, bytes: &[u8]) -> Health {
    let path = dir.join("bad.shard");
    std::fs::write(&path, bytes).unwrap();
    let shard = Shard::open_with(&path, Options::new().producer("test 1")).unwrap();
    let snapshot = shard.snapshot();
    for i in 0..40 {
        let _ = snapshot.get(format!("key-{i}").as_bytes());
    }
    let _ = snapshot.iter().count();
    let _ = snapshot.verify();
    if !snapshot.health().is_valid() {
        assert!(snapshot.is_empty());
        assert_eq!(snapshot.get(b"key-1"), None);
    }
    snapshot.health().clone()
}

#[test]
fn empty_and_garbage_files_read_as_empty_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(health_of(dir.path(), b""), Health::EmptyFile);
    assert_eq!(
        health_of(dir.path(), b"#!/bin/sh\necho hi\n"),
        Health::NotAShard
    );
    assert_eq!(health_of(dir.path(), &[0u8; 4096]), Health::NotAShard);
    let mut garbage = b"WARMSHRD".to_vec();
    garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    assert!(!health_of(dir.path(), &garbage).is_valid());
}

#[test]
fn truncation_at_every_offset_reads_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_shard_bytes(dir.path());
    assert!(health_of(dir.path(), &good).is_valid());
    for len in 0..good.len() {
        let health = health_of(dir.path(), &good[..len]);
        assert!(!health.is_valid(), "truncated to {len} bytes read as valid");
    }
    let mut longer = good.clone();
    longer.extend_from_slice(b"trailing");
    assert!(matches!(
        health_of(dir.path(), &longer),
        Health::Truncated { .. }
    ));
}

#[test]
fn wrong_magic_version_width_endianness_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_shard_bytes(dir.path());
    // Open reads the trailer (the last 32 bytes); the preamble mirrors it for people and tools.
    let t = good.len() - 32;
    let patched = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    let mut foreign = patched(0, b'w');
    foreign[t] = b'w';
    assert_eq!(health_of(dir.path(), &foreign), Health::NotAShard);
    assert!(matches!(
        health_of(dir.path(), &patched(t, b'w')),
        Health::Truncated { .. }
    ));
    assert_eq!(
        health_of(dir.path(), &patched(t + 8, 1)),
        Health::UnsupportedVersion {
            found: 1,
            supported: warmshard::format::FORMAT_VERSION
        }
    );
    // Another pointer width or endianness than this build's rkyv uses: foreign.
    let width = if good[t + 12] == 32 { 64 } else { 32 };
    assert!(matches!(
        health_of(dir.path(), &patched(t + 12, width)),
        Health::IncompatibleLayout {
            pointer_width_bits,
            ..
        } if pointer_width_bits == width
    ));
    let endianness = 3 - good[t + 13];
    assert!(matches!(
        health_of(dir.path(), &patched(t + 13, endianness)),
        Health::IncompatibleLayout { endianness: e, .. } if e == endianness
    ));
}

#[test]
fn corrupting_any_single_byte_of_the_index_or_root_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_shard_bytes(dir.path());
    // The tail holds the slot table and the rkyv root.
    let tail_start = good.len().saturating_sub(1200);
    for at in tail_start..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            let _ = health_of(dir.path(), &bad);
        }
    }
}

#[test]
fn oversized_shard_reads_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_shard_bytes(dir.path());
    let path = dir.path().join("big.shard");
    std::fs::write(&path, &good).unwrap();
    let shard = Shard::open_with(&path, Options::new().max_size(good.len() as u64 - 1)).unwrap();
    assert!(matches!(shard.health(), Health::TooLarge { size, .. } if size == good.len() as u64));
    assert_eq!(shard.get(b"key-1"), None);
}

#[test]
fn next_write_rebuilds_a_bad_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rebuild.shard");
    for bad in [
        &b""[..],
        b"not a shard at all",
        b"WARMSHRD\x01\0\0\0garbage",
    ] {
        std::fs::write(&path, bad).unwrap();
        let shard = Shard::open_with(&path, Options::new().durable(false)).unwrap();
        assert!(!shard.health().is_valid());
        shard.put_one("fresh", "entry").unwrap();
        let reopened = Shard::open(&path).unwrap();
        assert_eq!(reopened.health(), Health::Valid);
        assert_eq!(reopened.snapshot().len(), 1);
        assert_eq!(reopened.get(b"fresh").as_deref(), Some(&b"entry"[..]));
    }
}

#[test]
fn directory_fifo_and_device_at_the_path_are_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let err = Shard::open(&sub).unwrap_err();
    assert!(
        matches!(
            err,
            warmshard::Error::NotAFile {
                kind: "directory",
                ..
            }
        ),
        "{err}"
    );

    let fifo = dir.path().join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Opening a FIFO without a writer would block forever without O_NONBLOCK.
    let (tx, rx) = std::sync::mpsc::channel();
    let fifo_path = fifo.clone();
    std::thread::spawn(move || tx.send(Shard::open(&fifo_path).map(|_| ())).unwrap());
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("opening a FIFO hung");
    assert!(matches!(
        result,
        Err(warmshard::Error::NotAFile { kind: "FIFO", .. })
    ));

    let err = Shard::open("/dev/null").unwrap_err();
    assert!(
        matches!(err, warmshard::Error::NotAFile { kind: "device", .. }),
        "{err}"
    );
}
