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

fn cache_at(dir: &std::path::Path) -> PathCache {
    PathCache::open(dir.join("c.shard"), Options::new().durable(false)).unwrap()
}

#[test]
fn prune_drops_entries_of_files_gone_or_changed_and_keeps_the_rest() {
    use warmshard::paths::PruneOptions;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..10)
        .map(|i| {
            let path = dir.path().join(format!("m{i}.py"));
            std::fs::write(&path, format!("{i}")).unwrap();
            path
        })
        .collect();
    settle();
    let cache = cache_at(dir.path());
    for file in &files {
        cache
            .get_or_compute(file, "bytecode", |s| s.to_vec())
            .unwrap();
    }
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::write(&files[2], "edited").unwrap();
    // A file replaced by a directory is gone as far as the cache knows.
    std::fs::remove_file(&files[3]).unwrap();
    std::fs::create_dir(&files[3]).unwrap();
    let report = cache.prune(&PruneOptions::stale()).unwrap();
    assert_eq!(
        (report.examined, report.gone, report.changed, report.kept),
        (10, 3, 1, 6)
    );
    assert_eq!(report.dropped(), 4);
    let view = cache.view();
    assert_eq!(view.snapshot().len(), 6);
    for file in &files[4..] {
        assert_eq!(
            view.lookup(file, "bytecode"),
            Some(std::fs::read(file).unwrap().as_slice())
        );
    }
    // Nothing stale left: no rewrite.
    let again = cache.prune(&PruneOptions::stale()).unwrap();
    assert_eq!(
        (again.dropped(), again.outcome),
        (0, warmshard::WriteOutcome::Unchanged)
    );
}

#[test]
fn a_size_bound_drops_the_entries_written_longest_ago_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src.py");
    std::fs::write(&source, "x").unwrap();
    let stamp = Stamp::lstat(&source).unwrap();
    let cache = cache_at(dir.path()).max_bytes(20_000);
    let value = vec![7u8; 100];
    for i in 0..1000 {
        let key = format!("k{i:04}");
        cache
            .record(key.as_bytes(), &stamp, SystemTime::now(), &[("v", &value)])
            .unwrap();
    }
    assert!(cache.evicted() > 500, "{} evicted", cache.evicted());
    let view = cache.view();
    let snapshot = view.snapshot();
    let bytes = snapshot.file_bytes().len() + snapshot.delta_file_bytes().len();
    assert!(bytes <= 20_000 + 4096, "{bytes} bytes");
    assert_eq!(
        snapshot.len() as u64 + cache.evicted(),
        1000,
        "every entry is either kept or counted as evicted"
    );
    // The latest writes are the ones kept.
    assert!(snapshot.contains(b"k0999"));
    assert!(!snapshot.contains(b"k0000"));

    // Without a bound of its own, a cache over the shard's max_size makes room too.
    let small = PathCache::open(
        dir.path().join("small.shard"),
        Options::new().durable(false).max_size(30_000),
    )
    .unwrap();
    for i in 0..1000 {
        let key = format!("k{i:04}");
        small
            .record(key.as_bytes(), &stamp, SystemTime::now(), &[("v", &value)])
            .unwrap();
    }
    assert!(small.evicted() > 0);
    assert!(small.view().snapshot().contains(b"k0999"));
}

#[test]
fn an_age_limit_drops_entries_not_rewritten_for_that_long() {
    use warmshard::paths::PruneOptions;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src.py");
    std::fs::write(&source, "x").unwrap();
    settle();
    let cache = cache_at(dir.path());
    cache
        .get_or_compute(&source, "bytecode", |s| s.to_vec())
        .unwrap();
    // An entry as an older version wrote it: no hour recorded.
    let key = source.as_os_str().as_encoded_bytes();
    let mut old = cache.view().snapshot().get(key).unwrap().to_vec();
    old[45..48].fill(0);
    cache.shard().put_one(b"old-version", &old).unwrap();
    assert!(cache.view().entry(key).unwrap().recorded.is_some());
    assert!(
        cache
            .view()
            .entry(b"old-version")
            .unwrap()
            .recorded
            .is_none()
    );

    let week = Duration::from_secs(7 * 86_400);
    let report = cache.prune(&PruneOptions::default().max_age(week)).unwrap();
    assert_eq!((report.old, report.kept), (1, 1));
    assert!(cache.view().lookup(&source, "bytecode").is_some());
}

#[test]
fn the_path_cache_prune_command_reports_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, gone) = (dir.path().join("kept.py"), dir.path().join("gone.py"));
    std::fs::write(&kept, "k").unwrap();
    std::fs::write(&gone, "g").unwrap();
    settle();
    let cache = cache_at(dir.path());
    cache
        .get_or_compute(&kept, "bytecode", |s| s.to_vec())
        .unwrap();
    cache
        .get_or_compute(&gone, "bytecode", |s| s.to_vec())
        .unwrap();
    std::fs::remove_file(&gone).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .args(["--no-fsync", "--shard"])
        .arg(dir.path().join("c.shard"))
        .args(["path-cache", "prune"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("dropped 1 (gone 1, changed 0"), "{stderr}");
    let view = cache.view();
    assert_eq!(view.snapshot().len(), 1);
    assert!(view.lookup(&kept, "bytecode").is_some());
}
