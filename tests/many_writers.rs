//! Promise: concurrent writers (processes, or threads of one handle) never lose each other's
//! entries and never fail because of each other (a busy lock fails a write only after its
//! timeout, or at once for `try_put_one`), every racing mix of
//! `put_one`, `merge_in` and `replace_all` leaves a state that some serial order of the same
//! writes would produce, and readers running throughout never see an error, a torn state or a
//! wrong value.
//!
//! Writers and one reader are this test binary run again with `WARMSHARD_MANY_ROLE` set (see
//! [`child_process_entry_point`]); two more readers are threads of the test. Values check
//! themselves: each carries its key and an XXH3 of its body. Writes use `durable(false)`: fsync
//! decides what survives a power cut, not what concurrent processes see (tests/crash.rs covers
//! durable writes).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use warmshard::{Error, Health, Options, Shard, Snapshot};

mod common;

const ROLE: &str = "WARMSHARD_MANY_ROLE";

/// Key to value, as read from a snapshot.
type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

fn options() -> Options {
    Options::new()
        .durable(false)
        .lock_timeout(Duration::from_secs(120))
}

/// A value that proves it belongs to `key`: `key|body|xxh3(key|body)`.
fn value_for(key: &[u8], n: u64) -> Vec<u8> {
    let mut v = key.to_vec();
    v.push(b'|');
    let body_len = 8 + (n * 37 % 200) as usize;
    v.extend((0..body_len).map(|i| b'a' + ((i as u64 + n) % 26) as u8));
    let sum = warmshard::format::value_checksum(&v);
    v.extend_from_slice(format!("|{sum:016x}").as_bytes());
    v
}

/// Checks a value read back under `key`.
fn check_value(key: &[u8], value: &[u8]) {
    let ok = value.len() > 17 && value.starts_with(key) && value.get(key.len()) == Some(&b'|') && {
        let (head, tail) = value.split_at(value.len() - 17);
        tail[0] == b'|'
            && std::str::from_utf8(&tail[1..])
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                == Some(warmshard::format::value_checksum(head))
    };
    assert!(
        ok,
        "wrong value under {:?}: {:?}",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(value)
    );
}

/// Every entry of a snapshot, after checking its health and each value.
fn read_checked(snapshot: &Snapshot) -> Entries {
    let health = snapshot.health();
    assert!(
        matches!(health, Health::Valid | Health::Missing),
        "a reader saw {health}"
    );
    let mut entries = BTreeMap::new();
    for (k, v) in snapshot.iter() {
        check_value(k, v);
        assert!(
            entries.insert(k.to_vec(), v.to_vec()).is_none(),
            "duplicate key"
        );
    }
    assert_eq!(entries.len(), snapshot.len());
    entries
}

fn spawn_role(role: &str, shard: &Path, envs: &[(&str, String)], stderr: PathBuf) -> Child {
    let mut command = common::child_process(ROLE, role);
    command.env("MANY_SHARD", shard);
    common::spawn_logged(command.envs(envs.iter().map(|(k, v)| (*k, v))), &stderr)
}

fn wait_ok(mut child: Child, stderr: &Path, what: &str) {
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{what} failed ({status}): {}",
        std::fs::read_to_string(stderr).unwrap_or_default()
    );
}

/// Reader threads that check every snapshot with `check` until `stop`; returns the number of
/// snapshots read. The first thread takes its snapshots from one handle; the second opens a
/// fresh handle for each (as a program that starts often does), so its first snapshot races
/// the writers' renames between its opens of the delta and the base. Both carry what they saw
/// from one snapshot to the next: neither may go back in time.
fn readers(
    path: &Path,
    stop: &Arc<AtomicBool>,
    check: fn(&Entries, &mut Entries),
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..2)
        .map(|thread| {
            let (path, stop) = (path.to_path_buf(), Arc::clone(stop));
            std::thread::spawn(move || {
                let fresh_handles = thread == 1;
                let mut shard = Shard::open_with(&path, options()).unwrap();
                let mut seen = BTreeMap::new();
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if fresh_handles {
                        shard = Shard::open_with(&path, options()).unwrap();
                    }
                    let snapshot = shard.snapshot();
                    let entries = read_checked(&snapshot);
                    check(&entries, &mut seen);
                    reads += 1;
                    if !fresh_handles {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                reads
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 8 × 500 put_one.

const PUT_WRITERS: u64 = 8;
const PUTS_EACH: u64 = 500;

fn put_key(writer: u64, n: u64) -> Vec<u8> {
    format!("w{writer}-{n:04}").into_bytes()
}

/// While only `put_one` runs, what a reader sees only grows, and each writer's keys form a
/// prefix of its sequence (its puts are serialized, so none can be missing before the last).
fn check_growing(entries: &Entries, seen: &mut Entries) {
    for (k, v) in seen.iter() {
        assert_eq!(entries.get(k), Some(v), "an entry disappeared or changed");
    }
    for w in 0..PUT_WRITERS {
        let count = (0..PUTS_EACH)
            .take_while(|&n| entries.contains_key(&put_key(w, n)))
            .count();
        let total = entries
            .keys()
            .filter(|k| k.starts_with(format!("w{w}-").as_bytes()))
            .count();
        assert_eq!(
            count, total,
            "writer {w}: a put was lost before a later one"
        );
    }
    *seen = entries.clone();
}

#[test]
fn eight_processes_of_500_puts_leave_exactly_4000_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.shard");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = readers(&path, &stop, check_growing);
    let reader_stderr = dir.path().join("reader.err");
    let reader = spawn_role("read", &path, &[], reader_stderr.clone());
    let writers: Vec<(Child, PathBuf)> = (0..PUT_WRITERS)
        .map(|w| {
            let stderr = dir.path().join(format!("w{w}.err"));
            let envs = [("MANY_WRITER", w.to_string())];
            (spawn_role("put", &path, &envs, stderr.clone()), stderr)
        })
        .collect();
    for (child, stderr) in writers {
        wait_ok(child, &stderr, "a writer");
    }
    File::create(path.with_extension("stop")).unwrap();
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    wait_ok(reader, &reader_stderr, "the reader process");

    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.verify(), Ok(PUT_WRITERS * PUTS_EACH));
    let entries = read_checked(&snapshot);
    assert_eq!(entries.len() as u64, PUT_WRITERS * PUTS_EACH);
    for w in 0..PUT_WRITERS {
        for n in 0..PUTS_EACH {
            let key = put_key(w, n);
            assert_eq!(entries.get(&key), Some(&value_for(&key, n)));
        }
    }
    eprintln!("4000 entries checked; reader threads took {reads} snapshots");
    assert!(reads > 10, "the readers did not run alongside the writers");
}

// ---------------------------------------------------------------------------------------------
// put_one, merge_in and replace_all racing.

const RACE_PUTTERS: u64 = 4;
const RACE_PUTS: u64 = 150;
const MERGES: u64 = 40;
const MERGE_SIZE: u64 = 5;
const REPLACES: u64 = 5;
const REPLACE_SIZE: u64 = 10;

fn race_put_key(writer: u64, n: u64) -> Vec<u8> {
    format!("p{writer}-{n:04}").into_bytes()
}
fn merge_key(batch: u64, i: u64) -> Vec<u8> {
    format!("m{batch:03}-{i}").into_bytes()
}
fn replace_key(epoch: u64, i: u64) -> Vec<u8> {
    format!("r{epoch}-{i:02}").into_bytes()
}

/// Indices `0..n` whose `key(i)` is present must form one contiguous run: the writes of one
/// process after the last `replace_all` (all earlier ones were wiped by it). With `to_end`,
/// the run must reach the last index (every write has finished).
fn contiguous(present: &[bool], to_end: bool, what: &str) {
    let first = present.iter().position(|&p| p);
    let last = present.iter().rposition(|&p| p);
    if let (Some(a), Some(b)) = (first, last) {
        assert!(
            present[a..=b].iter().all(|&p| p),
            "{what}: a gap {present:?}"
        );
        assert!(!to_end || b == present.len() - 1, "{what}: last write lost");
    }
}

/// The conditions for `entries` to be the result of a serial order of the racing writes.
fn check_serial(entries: &Entries, finished: bool) {
    let epochs: Vec<u64> = (0..REPLACES)
        .filter(|&e| (0..REPLACE_SIZE).any(|i| entries.contains_key(&replace_key(e, i))))
        .collect();
    assert!(
        epochs.len() <= 1,
        "keys of several replace_all calls: {epochs:?}"
    );
    let epoch = epochs.first().copied();
    let mut explained: BTreeSet<Vec<u8>> = BTreeSet::new();
    if let Some(e) = epoch {
        // The last replace_all put exactly its own keys; nothing of an earlier one survives.
        for i in 0..REPLACE_SIZE {
            assert!(
                entries.contains_key(&replace_key(e, i)),
                "replace {e} is partial"
            );
            explained.insert(replace_key(e, i));
        }
    }
    if finished {
        assert_eq!(epoch, Some(REPLACES - 1), "the last replace_all was lost");
    }
    for w in 0..RACE_PUTTERS {
        let present: Vec<bool> = (0..RACE_PUTS)
            .map(|n| entries.contains_key(&race_put_key(w, n)))
            .collect();
        if epoch.is_none() {
            // No replace yet: puts so far form a prefix.
            assert!(
                present.iter().skip_while(|&&p| p).all(|&p| !p),
                "putter {w}"
            );
        }
        contiguous(&present, finished, &format!("putter {w}"));
        explained.extend((0..RACE_PUTS).map(|n| race_put_key(w, n)));
    }
    let mut batches = Vec::new();
    for b in 0..MERGES {
        let got: Vec<bool> = (0..MERGE_SIZE)
            .map(|i| entries.contains_key(&merge_key(b, i)))
            .collect();
        assert!(
            got.iter().all(|&p| p == got[0]),
            "merge {b} is partial: {got:?}"
        );
        batches.push(got[0]);
        explained.extend((0..MERGE_SIZE).map(|i| merge_key(b, i)));
    }
    if epoch.is_none() {
        assert!(batches.iter().skip_while(|&&p| p).all(|&p| !p), "merges");
    }
    contiguous(&batches, finished, "merges");
    let unexplained: Vec<_> = entries.keys().filter(|k| !explained.contains(*k)).collect();
    assert!(
        unexplained.is_empty(),
        "entries nobody wrote: {unexplained:?}"
    );
}

fn check_serial_snapshot(entries: &Entries, _: &mut Entries) {
    check_serial(entries, false);
}

#[test]
fn racing_merges_and_replaces_leave_a_serial_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.shard");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = readers(&path, &stop, check_serial_snapshot);
    let mut children = Vec::new();
    for w in 0..RACE_PUTTERS {
        let stderr = dir.path().join(format!("p{w}.err"));
        let envs = [("MANY_WRITER", w.to_string())];
        children.push((spawn_role("race-put", &path, &envs, stderr.clone()), stderr));
    }
    for role in ["merge", "replace"] {
        let stderr = dir.path().join(format!("{role}.err"));
        children.push((spawn_role(role, &path, &[], stderr.clone()), stderr));
    }
    for (child, stderr) in children {
        wait_ok(child, &stderr, "a writer");
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();

    let snapshot = Shard::open(&path).unwrap().snapshot();
    let entries = read_checked(&snapshot);
    assert_eq!(snapshot.verify(), Ok(entries.len() as u64));
    check_serial(&entries, true);
    eprintln!(
        "final state of {} entries explained by a serial order; readers checked {reads} snapshots",
        entries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Every kind of write at once (#11.2).

/// One step of a mixing writer: which write its `n`-th step makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Put,
    RemoveAbsent,
    Merge,
    Replace,
    Clear,
}

const MIX_WRITERS: u64 = 4;
const MIX_CYCLE: [Step; 10] = [
    Step::Put,
    Step::RemoveAbsent,
    Step::Merge,
    Step::Put,
    Step::Merge,
    Step::Replace,
    Step::Put,
    Step::RemoveAbsent,
    Step::Clear,
    Step::Put,
];
const MIX_MERGE: u64 = 3;
const MIX_REPLACE: u64 = 4;

fn mix_step(n: u64) -> Step {
    MIX_CYCLE[(n % MIX_CYCLE.len() as u64) as usize]
}

/// The keys step `n` of writer `w` writes (none for a removal or a clear).
fn mix_keys(w: u64, n: u64) -> Vec<Vec<u8>> {
    let key = |i: u64| format!("x{w}-{n:06}-{i}").into_bytes();
    match mix_step(n) {
        Step::Put => vec![key(0)],
        Step::Merge => (0..MIX_MERGE).map(key).collect(),
        Step::Replace => (0..MIX_REPLACE).map(key).collect(),
        Step::RemoveAbsent | Step::Clear => Vec::new(),
    }
}

/// Checks that `entries`, after every mixing writer made `steps[w]` steps, is a state some
/// serial order of those writes produces: each writer's surviving writes are complete and form
/// an unbroken run up to its last write, after its own last reset (replace_all or clear), and
/// the keys of at most one replace_all survive, which was its writer's last reset.
fn check_mix(entries: &Entries, steps: &[u64]) {
    let mut explained = BTreeSet::new();
    let mut replaces = Vec::new();
    for (w, &count) in steps.iter().enumerate() {
        let w = w as u64;
        let last_reset = (0..count)
            .rev()
            .find(|&n| matches!(mix_step(n), Step::Replace | Step::Clear));
        let mut present = Vec::new();
        for n in 0..count {
            let keys = mix_keys(w, n);
            let here: Vec<bool> = keys.iter().map(|k| entries.contains_key(k)).collect();
            assert!(
                here.iter().all(|&p| p == here[0]) || keys.is_empty(),
                "writer {w} step {n} ({:?}) is partial",
                mix_step(n)
            );
            explained.extend(keys.iter().cloned());
            let is_there = here.first().copied().unwrap_or(false);
            if mix_step(n) == Step::Replace {
                if is_there {
                    assert_eq!(
                        Some(n),
                        last_reset,
                        "writer {w}: replace {n} outlived a reset"
                    );
                    replaces.push((w, n));
                }
                continue;
            }
            if !keys.is_empty() {
                if is_there {
                    assert!(
                        last_reset.is_none_or(|r| n > r),
                        "writer {w}: step {n} survived its own later reset"
                    );
                }
                present.push((n, is_there));
            }
        }
        // The writes that survive are the last ones (an unbroken run to the end).
        let first = present.iter().position(|&(_, p)| p);
        if let Some(first) = first {
            assert!(
                present[first..].iter().all(|&(_, p)| p),
                "writer {w}: a write lost after {:?}",
                present[first]
            );
        }
    }
    assert!(
        replaces.len() <= 1,
        "keys of several replace_all calls: {replaces:?}"
    );
    let unexplained: Vec<_> = entries.keys().filter(|k| !explained.contains(*k)).collect();
    assert!(
        unexplained.is_empty(),
        "entries nobody wrote: {unexplained:?}"
    );
}

/// #11.2: processes mixing every kind of write (put, removal of an absent key, merge,
/// replace_all, clear) on one shard for seconds: not one write fails, and the final state is
/// one some serial order produces. Before the fix a transaction released its lock before
/// unlinking its temp file, and the next writer's temp file could be unlinked under it ("renaming
/// new shard over …: No such file or directory", 9 of 1,411 writes in the issue's loops).
#[test]
fn every_kind_of_write_racing_for_seconds_never_fails_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mix.shard");
    let seconds = std::env::var("MIX_SECONDS").unwrap_or_else(|_| "10".into());
    let mut children = Vec::new();
    for w in 0..MIX_WRITERS {
        let stderr = dir.path().join(format!("x{w}.err"));
        let envs = [
            ("MANY_WRITER", w.to_string()),
            ("MIX_SECONDS", seconds.clone()),
        ];
        children.push((spawn_role("mix", &path, &envs, stderr.clone()), stderr));
    }
    let mut steps = Vec::new();
    for (child, stderr) in children {
        wait_ok(child, &stderr, "a mixing writer");
        let text = std::fs::read_to_string(&stderr).unwrap();
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("STEPS "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no step count: {text}"));
        steps.push(count);
    }
    let snapshot = Shard::open(&path).unwrap().snapshot();
    let entries = read_checked(&snapshot);
    check_mix(&entries, &steps);
    eprintln!(
        "{} writes by {MIX_WRITERS} processes, none failed; final state of {} entries explained \
         by a serial order",
        steps.iter().sum::<u64>(),
        entries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Threads of one handle, and the lock (moved from concurrency.rs).

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

#[test]
fn threads_sharing_one_handle_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shard =
        Shard::open_with(dir.path().join("t.shard"), Options::new().durable(false)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let shard = &shard;
            s.spawn(move || {
                for i in 0..25 {
                    shard
                        .put_one(format!("t{t}-{i}"), format!("{t}:{i}"))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(shard.snapshot().len(), 100);
}

#[test]
fn a_held_lock_makes_a_writer_time_out_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.shard");
    let shard = Shard::open_with(
        &path,
        Options::new()
            .lock_timeout(Duration::from_millis(300))
            .durable(false),
    )
    .unwrap();
    shard.put_one("before", "1").unwrap();

    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(shard.lock_path())
        .unwrap();
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).unwrap();

    let started = Instant::now();
    let err = shard.put_one("during", "2").unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );
    assert!(err.to_string().contains("another process is writing"));

    // The CLI reports the same as exit status 2 with the reason.
    let out = Command::new(BIN)
        .args([
            "--shard",
            path.to_str().unwrap(),
            "--lock-timeout",
            "0.2",
            "rm",
            "before",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not lock"));

    drop(held);
    shard.put_one("after", "3").unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.get(b"before"), Some(&b"1"[..]));
    assert_eq!(snapshot.get(b"during"), None);
    assert_eq!(snapshot.get(b"after"), Some(&b"3"[..]));
}

/// #12.4: the startup path can fail fast. With the lock held elsewhere, `try_put_one` (and any
/// write under a zero lock timeout) returns `Error::LockBusy` at once and writes nothing.
#[test]
fn try_put_one_never_waits_for_a_held_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.shard");
    let shard = Shard::open(&path).unwrap();
    let _ = shard.put_one("a", "1").unwrap();
    let lock = std::fs::File::open(shard.lock_path()).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        shard.try_put_one("b", "2"),
        Err(warmshard::Error::LockBusy { .. })
    ));
    let zero = Shard::open_with(&path, Options::new().lock_timeout(Duration::ZERO)).unwrap();
    assert!(matches!(
        zero.put_one("b", "2"),
        Err(warmshard::Error::LockBusy { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(1), "it waited");
    assert_eq!(shard.get(b"b"), None);
    drop(held);
    let _ = shard.try_put_one("b", "2").unwrap();
    assert_eq!(shard.get(b"b").as_deref(), Some(&b"2"[..]));
}

/// #12.4: a bulk write builds its file without the lock, so a `put_one` made meanwhile does not
/// wait for it; and a merge-mode bulk write merges the shard as it is at commit, so that put is
/// not lost.
#[test]
fn a_bulk_write_in_progress_blocks_no_writer_and_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.shard");
    let shard = Shard::open(&path).unwrap();
    let _ = shard.put_one("before", "1").unwrap();
    let mut bulk = shard.bulk_writer(warmshard::BulkMode::Merge).unwrap();
    for i in 0..1000 {
        bulk.add(format!("bulk{i}").as_bytes(), &[3u8; 100])
            .unwrap();
    }
    let other = Shard::open_with(&path, Options::new().lock_timeout(Duration::ZERO)).unwrap();
    let _ = other.put_one("meanwhile", "2").unwrap();
    let _ = bulk.commit().unwrap();
    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.get(b"before"), Some(&b"1"[..]));
    assert_eq!(
        snapshot.get(b"meanwhile"),
        Some(&b"2"[..]),
        "lost the write made meanwhile"
    );
    assert_eq!(snapshot.get(b"bulk999"), Some(&[3u8; 100][..]));
    assert_eq!(snapshot.len(), 1002);
}

/// #12.4: a bulk replace completes and syncs its new file before it takes the lock, so that the
/// lock covers only the publishing (rename, directory fsync, old delta removal): while another
/// process holds the lock, the waiting commit's temp file is already a whole shard (its trailer
/// written). A large merge-mode bulk write, which writes back what it streamed before the lock,
/// still merges the shard as it is at commit.
#[test]
fn a_bulk_replace_completes_its_file_before_waiting_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("publish.shard");
    let options = || Options::new().lock_timeout(Duration::from_secs(60));
    let shard = Shard::open_with(&path, options()).unwrap();
    let _ = shard.put_one("old", "1").unwrap();
    let lock_file = File::open(shard.lock_path()).unwrap();
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).unwrap();
    let committer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let shard = Shard::open_with(&path, options()).unwrap();
            let mut writer = shard.bulk_writer(warmshard::BulkMode::Replace).unwrap();
            for i in 0..100 {
                writer
                    .add(format!("new{i}").as_bytes(), &[5u8; 1000])
                    .unwrap();
            }
            writer.commit()
        })
    };
    let whole_shard_waiting = |dir: &Path| {
        common::temp_files(dir).iter().any(|name| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            bytes.len() > 64 && bytes[bytes.len() - 32..].starts_with(b"WSHRDEND")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = loop {
        if whole_shard_waiting(dir.path()) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let waited = !committer.is_finished();
    drop(held);
    let outcome = committer.join().unwrap().unwrap();
    assert!(
        complete,
        "the new file was not complete while its commit waited for the lock"
    );
    assert!(waited, "the commit did not wait for the held lock");
    assert!(matches!(outcome, warmshard::WriteOutcome::Committed { .. }));
    let snapshot = shard.snapshot();
    assert_eq!((snapshot.len(), snapshot.get(b"old")), (100, None));
    assert_eq!(snapshot.verify(), Ok(100));

    // A merge large enough to be written back before the lock keeps a write made meanwhile.
    let mut bulk = shard.bulk_writer(warmshard::BulkMode::Merge).unwrap();
    let value = vec![9u8; 1 << 20];
    for i in 0..9 {
        bulk.add(format!("big{i}").as_bytes(), &value).unwrap();
    }
    let _ = Shard::open(&path)
        .unwrap()
        .put_one("meanwhile", "2")
        .unwrap();
    let _ = bulk.commit().unwrap();
    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.get(b"meanwhile"), Some(&b"2"[..]), "lost a write");
    assert_eq!(snapshot.get(b"big8"), Some(&value[..]));
    assert_eq!(snapshot.len(), 110);
    assert_eq!(snapshot.verify(), Ok(110));
}

// ---------------------------------------------------------------------------------------------
// Child roles.

/// The entry point of the child processes; does nothing unless `WARMSHARD_MANY_ROLE` is set.
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var("MANY_SHARD").unwrap());
    let writer: u64 = std::env::var("MANY_WRITER")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let shard = Shard::open_with(&path, options()).unwrap();
    match role.as_str() {
        "put" => {
            for n in 0..PUTS_EACH {
                let key = put_key(writer, n);
                let _ = shard.put_one(&key, value_for(&key, n)).unwrap();
            }
        }
        "race-put" => {
            for n in 0..RACE_PUTS {
                let key = race_put_key(writer, n);
                let _ = shard.put_one(&key, value_for(&key, n)).unwrap();
            }
        }
        "merge" => {
            for b in 0..MERGES {
                let batch = (0..MERGE_SIZE).map(|i| {
                    let key = merge_key(b, i);
                    let value = value_for(&key, b);
                    (key, value)
                });
                let _ = shard.merge_in(batch).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "replace" => {
            for e in 0..REPLACES {
                std::thread::sleep(Duration::from_millis(40));
                let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..REPLACE_SIZE)
                    .map(|i| {
                        let key = replace_key(e, i);
                        let value = value_for(&key, e);
                        (key, value)
                    })
                    .collect();
                let _ = shard.replace_all(batch).unwrap();
            }
        }
        "mix" => {
            let seconds: u64 = std::env::var("MIX_SECONDS").unwrap().parse().unwrap();
            let until = std::time::Instant::now() + Duration::from_secs(seconds);
            let mut n = 0;
            // Ends on a put, so the final state holds something of every writer.
            while std::time::Instant::now() < until || mix_step(n.max(1) - 1) != Step::Put {
                let keys = mix_keys(writer, n);
                let pairs = || keys.iter().map(|k| (k.clone(), value_for(k, n)));
                let result = match mix_step(n) {
                    Step::Put => shard.put_one(&keys[0], value_for(&keys[0], n)),
                    Step::RemoveAbsent => shard.remove([b"absent".to_vec()]),
                    Step::Merge => shard.merge_in(pairs()),
                    Step::Replace => shard.replace_all(pairs()),
                    Step::Clear => shard.clear(),
                };
                if let Err(e) = result {
                    panic!("writer {writer} step {n} ({:?}) failed: {e}", mix_step(n));
                }
                n += 1;
            }
            eprintln!("STEPS {n}");
        }
        "read" => {
            let stop = path.with_extension("stop");
            let mut seen = BTreeMap::new();
            while !stop.exists() {
                check_growing(&read_checked(&shard.snapshot()), &mut seen);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        other => panic!("unknown role {other}"),
    }
}
