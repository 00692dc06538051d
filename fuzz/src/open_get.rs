//! Fuzz target `open_get`: arbitrary bytes as a shard file.
//!
//! Promise under test: whatever bytes sit in a trusted regular file at the shard path, opening it
//! never panics, hangs or reads outside the file; a shard that reads as anything but valid has no
//! entries; a shard that passes `verify` is self-consistent (every iterated entry is found by
//! `get`, keys are unique, `len` counts them); the next write succeeds, and `compact` then
//! rebuilds a shard that passes `verify` and keeps exactly the entries a checked read
//! (`verify_values`) served, plus the new one. (A small write lands in the delta file and
//! leaves a damaged base alone; `compact` is the rewrite that drops what fails.)
//!
//! Every value found is also read as typed entries (`get_typed`/`try_get_typed` as a few rkyv
//! types, the tuple the seeds store among them): validation of arbitrary value bytes never
//! panics, a typed hit lies inside the mapping, and the two calls agree.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use warmshard::{Health, Options, Shard, Snapshot};

thread_local! {
    // One scratch directory per thread (the stable test replays seeds on several threads).
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn scratch_path() -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| {
            tempfile::Builder::new()
                .prefix("warmshard-fuzz-open-")
                .tempdir()
                .expect("creating a scratch directory")
        });
        dir.path().join("fuzz.shard")
    })
}

/// Puts `data` at `path` as a new inode (written aside, renamed over), as a writer would, and
/// removes the delta file an earlier input's write left, so each input is judged alone.
fn place(path: &std::path::Path, data: &[u8]) {
    let mut delta = path.as_os_str().to_owned();
    delta.push(".delta");
    let _ = std::fs::remove_file(delta);
    let aside = path.with_extension("incoming");
    std::fs::write(&aside, data).expect("writing the fuzz input");
    std::fs::rename(&aside, path).expect("renaming the fuzz input into place");
}

fn options(verify_values: bool) -> Options {
    Options::new().durable(false).verify_values(verify_values)
}

/// Asserts that `part` lies inside one of the snapshot's mapped files (shard or delta).
fn inside(snapshot: &Snapshot, part: &[u8]) {
    if !part.is_empty() {
        let start = part.as_ptr() as usize;
        within_maps(snapshot, start, start + part.len());
    }
}

/// Asserts that the addresses `start..stop` lie inside one of the snapshot's mapped files.
fn within_maps(snapshot: &Snapshot, start: usize, stop: usize) {
    let within = |file: &[u8]| {
        let (base, end) = (file.as_ptr() as usize, file.as_ptr() as usize + file.len());
        base <= start && stop <= end
    };
    assert!(
        within(snapshot.file_bytes()) || within(snapshot.delta_file_bytes()),
        "a returned slice lies outside the mapped files"
    );
}

/// The tuple the hand-made seeds store as a typed entry (see `write_seeds`).
type Seeded = (u64, String, Vec<u8>);

/// Reads the value under `key` as several archived types: never a panic, a hit lies inside the
/// mapping, and `get_typed` agrees with `try_get_typed`.
fn check_typed(snapshot: &Snapshot, key: &[u8]) {
    fn agree<'s, T: warmshard::ReadTyped>(
        snapshot: &'s Snapshot,
        key: &[u8],
    ) -> Option<&'s T::Archived> {
        let plain = snapshot
            .get_typed::<T>(key)
            .map(|v| v as *const T::Archived);
        let reasoned = snapshot.try_get_typed::<T>(key);
        if let Err(e) = &reasoned {
            assert!(!e.reason.is_empty(), "a refused value without a reason");
        }
        let reasoned = reasoned.ok().flatten();
        assert_eq!(plain, reasoned.map(|v| v as *const T::Archived));
        reasoned
    }
    if let Some(n) = agree::<u64>(snapshot, key) {
        let at = n as *const _ as usize;
        within_maps(snapshot, at, at + std::mem::size_of_val(n));
    }
    if let Some(s) = agree::<String>(snapshot, key) {
        inside(snapshot, s.as_bytes());
    }
    if let Some(v) = agree::<Vec<u8>>(snapshot, key) {
        inside(snapshot, v.as_slice());
    }
    if let Some(t) = agree::<Seeded>(snapshot, key) {
        inside(snapshot, t.1.as_bytes());
        inside(snapshot, t.2.as_slice());
    }
}

/// Keys to look up: a few windows of the input, the empty key, and every key the shard lists.
fn probe_keys(data: &[u8], listed: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut keys = vec![Vec::new(), b"fuzz-probe".to_vec()];
    let step = (data.len() / 8).max(1);
    for start in (0..data.len()).step_by(step) {
        for len in [1usize, 4, 8, 24] {
            if let Some(window) = data.get(start..start + len) {
                keys.push(window.to_vec());
            }
        }
    }
    keys.extend(listed.iter().cloned());
    keys
}

/// Every check on one snapshot of the fuzzed file; returns the entries it lists.
fn check(snapshot: &Snapshot, data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let health = snapshot.health().clone();
    if data.is_empty() {
        assert_eq!(health, Health::EmptyFile);
    }
    let stats = snapshot.stats();
    assert_eq!(stats.health, health);
    let mut listed = Vec::new();
    for (key, value) in snapshot.iter() {
        inside(snapshot, key);
        inside(snapshot, value);
        listed.push((key.to_vec(), value.to_vec()));
    }
    let keys: Vec<Vec<u8>> = listed.iter().map(|(k, _)| k.clone()).collect();
    for key in probe_keys(data, &keys) {
        if let Some(value) = snapshot.get(&key) {
            inside(snapshot, value);
            assert!(snapshot.contains(&key));
            check_typed(snapshot, &key);
        }
    }
    if !health.is_valid() {
        assert!(
            listed.is_empty() && snapshot.is_empty(),
            "{health}: not empty"
        );
        assert!(snapshot.verify().is_err(), "{health}: verify passed");
        return listed;
    }
    if let Ok(n) = snapshot.verify() {
        // A verified shard is self-consistent.
        assert_eq!(n as usize, listed.len());
        assert_eq!(snapshot.len(), listed.len());
        let unique: BTreeSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!(
            unique.len(),
            keys.len(),
            "verify passed with a duplicate key"
        );
        for (key, value) in &listed {
            assert_eq!(
                snapshot.get(key),
                Some(&value[..]),
                "verified entry not found"
            );
        }
    }
    listed
}

/// Runs one input: see the module docs.
pub fn run(data: &[u8]) {
    let path = scratch_path();
    place(&path, data);

    let plain = Shard::open_with(&path, options(false)).expect("a regular file never errors");
    check(&plain.snapshot(), data);
    let checked = Shard::open_with(&path, options(true)).expect("a regular file never errors");
    let intact = check(&checked.snapshot(), data);

    // What survives the next write: exactly what a checked read serves.
    let served = checked.snapshot();
    let mut survivors: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (key, _) in intact {
        if let Some(value) = served.get(&key) {
            survivors.insert(key, value.to_vec());
        }
    }
    let probe_value = &data[..data.len().min(64)];
    let _ = plain
        .put_one(b"fuzz-probe", probe_value)
        .expect("the write after any content succeeds");
    assert_eq!(plain.snapshot().get(b"fuzz-probe"), Some(probe_value));
    let _ = plain.compact().expect("compact after any content succeeds");
    let rebuilt = plain.snapshot();
    assert!(rebuilt.health().is_valid(), "{}", rebuilt.health());
    let n = rebuilt
        .verify()
        .unwrap_or_else(|e| panic!("the rebuilt shard fails verify: {e}"));
    survivors.remove(&b"fuzz-probe"[..]);
    assert_eq!(rebuilt.get(b"fuzz-probe"), Some(probe_value));
    let mut kept: BTreeMap<Vec<u8>, Vec<u8>> = rebuilt
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    kept.remove(&b"fuzz-probe"[..]);
    assert_eq!(n as usize, kept.len() + 1);
    assert_eq!(
        kept, survivors,
        "the write kept other entries than reads served"
    );
}
