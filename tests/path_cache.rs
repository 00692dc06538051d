//! The path-keyed layer: stamps decide validity; several dimensions live under one path.

use std::time::{Duration, SystemTime};

use warmshard::Options;
use warmshard::paths::{PathCache, Stamp};

fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

#[test]
fn lookup_answers_only_while_the_stamp_matches() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lib.rs");
    std::fs::write(&file, "fn main() {}").unwrap();
    settle();
    let cache = PathCache::open(dir.path().join("c.shard"), Options::new().durable(false)).unwrap();
    let stamp = Stamp::lstat(&file).unwrap();
    let key = file.as_os_str().as_encoded_bytes();
    cache
        .record(
            key,
            &stamp,
            SystemTime::now(),
            &[("sha256", b"H1"), ("symbols", b"main")],
        )
        .unwrap();
    let view = cache.view();
    assert_eq!(view.lookup(&file, "sha256"), Some(&b"H1"[..]));
    assert_eq!(view.lookup(&file, "symbols"), Some(&b"main"[..]));
    assert_eq!(view.lookup(&file, "bytecode"), None);

    std::fs::write(&file, "fn main() { }").unwrap();
    let view = cache.view();
    assert_eq!(
        view.lookup(&file, "sha256"),
        None,
        "a changed file must miss every dimension"
    );
    assert_eq!(view.lookup(&file, "symbols"), None);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(cache.view().lookup(&file, "sha256"), None);
}

#[test]
fn racy_entries_are_never_hits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fresh");
    std::fs::write(&file, "x").unwrap();
    let cache = PathCache::open(dir.path().join("c.shard"), Options::new().durable(false)).unwrap();
    let stamp = Stamp::lstat(&file).unwrap();
    // Recorded at once: the file's timestamps are within the margin of the recording.
    cache
        .record(
            file.as_os_str().as_encoded_bytes(),
            &stamp,
            SystemTime::now(),
            &[("d", b"v")],
        )
        .unwrap();
    let view = cache.view();
    assert!(
        view.entry(file.as_os_str().as_encoded_bytes())
            .unwrap()
            .racy
    );
    assert_eq!(view.lookup(&file, "d"), None);
}

#[test]
fn get_or_compute_caches_each_dimension_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("module.py");
    std::fs::write(&source, "print('hi')").unwrap();
    settle();
    let cache = PathCache::open(dir.path().join("c.shard"), Options::new().durable(false)).unwrap();
    let calls = std::cell::Cell::new(0);
    let compile = |src: &[u8]| {
        calls.set(calls.get() + 1);
        src.to_ascii_uppercase()
    };
    assert_eq!(
        cache.get_or_compute(&source, "bytecode", compile).unwrap(),
        b"PRINT('HI')"
    );
    assert_eq!(
        cache.get_or_compute(&source, "bytecode", compile).unwrap(),
        b"PRINT('HI')"
    );
    assert_eq!(calls.get(), 1, "the second call must be a hit");
    let len = |src: &[u8]| src.len().to_string().into_bytes();
    assert_eq!(cache.get_or_compute(&source, "length", len).unwrap(), b"11");
    // Adding a dimension kept the first one.
    assert_eq!(
        cache.get_or_compute(&source, "bytecode", compile).unwrap(),
        b"PRINT('HI')"
    );
    assert_eq!(calls.get(), 1);

    std::fs::write(&source, "print('bye')").unwrap();
    settle();
    assert_eq!(
        cache.get_or_compute(&source, "bytecode", compile).unwrap(),
        b"PRINT('BYE')"
    );
    assert_eq!(calls.get(), 2);
    let entry_dims: Vec<Vec<u8>> = cache
        .view()
        .entry(source.as_os_str().as_encoded_bytes())
        .unwrap()
        .dimensions()
        .map(|(n, _)| n.to_vec())
        .collect();
    assert_eq!(
        entry_dims,
        vec![b"bytecode".to_vec()],
        "stale dimensions must be dropped"
    );
}

#[test]
fn a_dimension_written_while_racy_does_not_drop_another_still_racy_one() {
    // A file written just now: every entry recorded for it is racy for the next ~50 ms.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("module.py");
    std::fs::write(&source, "def f(x):\n").unwrap();
    let cache = PathCache::open(dir.path().join("c.shard"), Options::new().durable(false))
        .unwrap()
        .racy_margin(Duration::from_secs(3600));
    cache
        .get_or_compute(&source, "bytecode", |s| s.to_vec())
        .unwrap();
    cache
        .get_or_compute(&source, "symbols", |_| b"f".to_vec())
        .unwrap();
    let view = cache.view();
    let entry = view.entry(source.as_os_str().as_encoded_bytes()).unwrap();
    assert!(entry.racy);
    assert_eq!(entry.dimension("symbols"), Some(&b"f"[..]));
    assert_eq!(
        entry.dimension("bytecode"),
        Some(&b"def f(x):\n"[..]),
        "the symbols write dropped bytecode"
    );

    // Once the stamp has settled, a racy dimension is not carried into a trusted entry.
    let settled = PathCache::open(dir.path().join("c.shard"), Options::new().durable(false))
        .unwrap()
        .racy_margin(Duration::ZERO);
    settled
        .get_or_compute(&source, "symbols", |_| b"f".to_vec())
        .unwrap();
    let view = settled.view();
    let entry = view.entry(source.as_os_str().as_encoded_bytes()).unwrap();
    assert!(!entry.racy);
    assert_eq!(entry.dimension("bytecode"), None);
}
