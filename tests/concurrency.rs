//! Concurrent writers lose nothing; a held lock makes a writer fail after its timeout.

use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use warmshard::{Error, Options, Shard};

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

#[test]
fn processes_putting_distinct_keys_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.shard");
    let processes = 6;
    let per_process = 15;
    let children: Vec<_> = (0..processes)
        .map(|p| {
            let script = (0..per_process)
                .map(|i| {
                    format!(
                        "printf 'value-{p}-{i}' | {BIN} --shard {} --no-fsync --lock-timeout 60 put key-{p}-{i} || exit 1",
                        path.display()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.len(), processes * per_process);
    for p in 0..processes {
        for i in 0..per_process {
            let key = format!("key-{p}-{i}");
            let expected = format!("value-{p}-{i}");
            assert_eq!(snapshot.get(key.as_bytes()), Some(expected.as_bytes()));
        }
    }
    snapshot.verify().unwrap();
}

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
