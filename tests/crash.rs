//! Promise: killing a writer at any instant (SIGKILL) never leaves a shard that reads wrong.
//! After every kill the shard opens valid (or missing, if the last committed state was a
//! `clear`) and holds exactly the last state the writer committed, or the state it was
//! committing when it died; the temp file it left is removed by the next writer; and the lock it
//! held is released by its death, so the next writer is never blocked.
//!
//! The writer is this test binary run again with `WARMSHARD_CRASH_ROLE` set (see
//! [`child_process_entry_point`]); it loops over every write path and appends to a log, before
//! each write, the digest of the state it is about to commit (`I`) and, after the write
//! returns, the same digest again (`D`). The log is an `O_APPEND` file: a line written before a
//! kill survives the kill (it sits in the page cache), so no fsync is needed for this promise.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warmshard::{BulkMode, Health, Options, Shard, WriteOutcome};

mod common;
use common::temp_files;

const ROLE: &str = "WARMSHARD_CRASH_ROLE";
const LIBRARY_KILLS: u64 = 300;
const CLI_KILLS: u64 = 60;

/// xorshift64*: a small, seeded generator so that every round can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// A digest of a whole state (sorted, length-prefixed keys and values).
fn digest(entries: &Entries) -> u64 {
    let mut bytes = Vec::new();
    for (k, v) in entries {
        bytes.extend_from_slice(&(k.len() as u64).to_le_bytes());
        bytes.extend_from_slice(k);
        bytes.extend_from_slice(&(v.len() as u64).to_le_bytes());
        bytes.extend_from_slice(v);
    }
    warmshard::format::value_checksum(&bytes)
}

/// The state a fresh handle reads at `path`, after checking it is sound.
fn read_state(path: &Path) -> (Health, Entries) {
    let snapshot = Shard::open(path).unwrap().snapshot();
    let health = snapshot.health().clone();
    assert!(
        matches!(health, Health::Valid | Health::Missing),
        "after a kill the shard reads as {health}"
    );
    snapshot
        .verify()
        .unwrap_or_else(|e| panic!("after a kill: {e}"));
    let entries = snapshot
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    (health, entries)
}

/// True if some process holds the shard's write lock right now.
fn lock_is_held(lock: &Path) -> bool {
    let Ok(file) = File::open(lock) else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

fn spawn_role(role: &str, envs: &[(&str, String)], stderr: &Path) -> Child {
    let mut command = common::child_process(ROLE, role);
    common::spawn_logged(command.envs(envs.iter().map(|(k, v)| (*k, v))), stderr)
}

/// Kills `child` with SIGKILL after checking it is still running (a writer that stopped by
/// itself failed, and its stderr says why).
fn kill(child: &mut Child, stderr: &Path) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "the writer exited by itself ({status}): {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
}

/// The digests the shard may hold after the writer died: the last committed, or the in-flight.
fn candidates(log: &Path, committed: u64) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut current = committed;
    let mut in_flight = None;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let (tag, value) = line.trim_end().split_once(' ').unwrap();
        let value: u64 = value.parse().unwrap();
        match tag {
            "S" => assert_eq!(value, committed, "the writer started from another state"),
            "I" => in_flight = Some(value),
            "D" => {
                assert_eq!(Some(value), in_flight);
                current = value;
                in_flight = None;
            }
            other => panic!("bad log line {other}"),
        }
    }
    std::iter::once(current).chain(in_flight).collect()
}

/// Runs `rounds` kills of library writers; returns (kills with the lock held, kills that left
/// a temp file).
fn library_rounds(dir: &Path, seed: u64, rounds: u64) -> (u64, u64) {
    let path = dir.join("crash.shard");
    let lock = dir.join("crash.shard.lock");
    let mut rng = Rng::new(seed);
    let mut committed = digest(&Entries::new());
    let (mut locked_kills, mut temp_kills) = (0, 0);
    for round in 0..rounds {
        let log = dir.join(format!("log-{round}"));
        let stderr = dir.join("stderr");
        let durable = round % 8 == 7;
        let envs = [
            ("CRASH_SHARD", path.display().to_string()),
            ("CRASH_LOG", log.display().to_string()),
            ("CRASH_SEED", (seed ^ round).to_string()),
            ("CRASH_DURABLE", u8::from(durable).to_string()),
        ];
        let mut child = spawn_role("writer", &envs, &stderr);
        // Child start-up takes a few ms; most kills land between 5 and 60 ms, inside the loop.
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        locked_kills += u64::from(lock_is_held(&lock));
        kill(&mut child, &stderr);

        let allowed = candidates(&log, committed);
        let (health, state) = read_state(&path);
        let d = digest(&state);
        assert!(
            allowed.contains(&d),
            "round {round} (seed {seed}): the shard ({health}, {} entries) is neither the \
             committed nor the in-flight state",
            state.len()
        );
        if health == Health::Missing {
            assert!(state.is_empty());
        }
        committed = d;

        // The next writer is not blocked by the dead one's lock and removes its temp file.
        temp_kills += u64::from(!temp_files(dir).is_empty());
        let next =
            Shard::open_with(&path, Options::new().lock_timeout(Duration::from_secs(3))).unwrap();
        let started = Instant::now();
        assert_eq!(
            next.remove([b"no such key"]).unwrap(),
            WriteOutcome::Unchanged
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the lock was slow to free"
        );
        // A killed bulk writer's file (built without the lock, under a random name) is removed
        // by the next write that publishes a base: compact is one, and keeps the state.
        let _ = next.compact().unwrap();
        assert_eq!(
            temp_files(dir),
            Vec::<String>::new(),
            "a stale temp file survived"
        );
    }
    (locked_kills, temp_kills)
}

#[test]
fn writers_killed_at_random_instants_leave_a_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001);
    let started = Instant::now();
    let (locked, temps) = library_rounds(dir.path(), seed, LIBRARY_KILLS);
    eprintln!(
        "{LIBRARY_KILLS} writers killed in {:?}: {locked} while holding the lock, {temps} \
         leaving a temp file",
        started.elapsed()
    );
    // The kills must land inside writes, or the test proves nothing.
    assert!(
        locked >= LIBRARY_KILLS / 10,
        "only {locked} kills hit a held lock"
    );
    assert!(
        temps >= LIBRARY_KILLS / 10,
        "only {temps} kills left a temp file"
    );
}

/// A writer killed while it holds the lock, with its temp file open: the lock is provably held
/// before the kill (another writer times out) and provably free after it.
#[test]
fn a_killed_lock_holder_frees_the_lock_and_its_temp_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.shard");
    let shard = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    let _ = shard.put_one("kept", "value").unwrap();
    let ready = dir.path().join("ready");
    let stderr = dir.path().join("stderr");
    let mut child = spawn_role(
        "hold",
        &[
            ("CRASH_SHARD", path.display().to_string()),
            ("CRASH_READY", ready.display().to_string()),
        ],
        &stderr,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(temp_files(dir.path()).len(), 1, "the holder's temp file");
    let impatient = Shard::open_with(
        &path,
        Options::new().lock_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    assert!(matches!(
        impatient.put_one("blocked", "x"),
        Err(warmshard::Error::LockTimeout { .. })
    ));

    kill(&mut child, &stderr);
    assert_eq!(
        temp_files(dir.path()).len(),
        1,
        "the dead writer's temp file"
    );
    let started = Instant::now();
    let _ = impatient.put_one("after", "kill").unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    let snapshot = impatient.snapshot();
    assert_eq!(snapshot.get(b"kept"), Some(&b"value"[..]));
    assert_eq!(snapshot.get(b"after"), Some(&b"kill"[..]));
    assert_eq!(snapshot.get(b"uncommitted"), None);
    assert_eq!(snapshot.verify(), Ok(2));
}

/// `warmshard import --replace` processes killed at random instants: the shard is the previous
/// import or the new one, never a mix, and the next CLI write is never blocked.
#[test]
fn cli_imports_killed_at_random_instants_leave_a_committed_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.shard");
    let mut rng = Rng::new(0xC11);
    // Two source trees with different content, imported in turn.
    let mut trees = Vec::new();
    for t in 0..2u8 {
        let src = dir.path().join(format!("src{t}"));
        let mut entries = Entries::new();
        for f in 0..150u32 {
            let sub = src.join(format!("d{}", f % 7));
            std::fs::create_dir_all(&sub).unwrap();
            let len = 1000 + rng.below(30_000) as usize;
            let value: Vec<u8> = (0..len).map(|i| (i as u8) ^ t ^ (f as u8)).collect();
            std::fs::write(sub.join(format!("f{f}")), &value).unwrap();
            entries.insert(format!("d{}/f{f}", f % 7).into_bytes(), value);
        }
        trees.push((src, digest(&entries)));
    }
    let import = |src: &PathBuf| {
        Command::new(env!("CARGO_BIN_EXE_warmshard"))
            .arg("--shard")
            .arg(&path)
            .args(["--no-fsync", "--lock-timeout", "3", "import", "--replace"])
            .arg(src)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long a whole import takes here (the fastest of three), to spread the kills over it.
    let mut window = u64::MAX;
    for src in [&trees[1].0, &trees[0].0, &trees[1].0, &trees[0].0] {
        let started = Instant::now();
        let out = import(src).wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        window = window.min(started.elapsed().as_micros() as u64);
    }
    let mut committed = trees[0].1;
    let mut completed = 0;
    for round in 0..CLI_KILLS {
        let (src, target) = &trees[(round % 2) as usize];
        let mut child = import(src);
        std::thread::sleep(Duration::from_micros(rng.below(window)));
        if child.try_wait().unwrap().is_some() {
            // Finished before the kill: aim earlier from now on.
            completed += 1;
            window = window * 4 / 5;
        } else {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let (_, state) = read_state(&path);
        let d = digest(&state);
        assert!(
            d == committed || d == *target,
            "round {round}: the shard is neither the previous nor the new import"
        );
        committed = d;
    }
    // Kills must be the common case, or the test proves nothing.
    assert!(
        completed < CLI_KILLS / 2,
        "{completed} imports finished before the kill"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .arg("--shard")
        .arg(&path)
        .args(["--lock-timeout", "1", "compact"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    eprintln!(
        "{} CLI imports killed ({completed} finished first)",
        CLI_KILLS - completed
    );
}

// ---------------------------------------------------------------------------------------------
// Child roles.

/// The entry point of the child processes; does nothing unless `WARMSHARD_CRASH_ROLE` is set.
#[test]
fn child_process_entry_point() {
    match std::env::var(ROLE).as_deref() {
        Ok("writer") => writer_loop(),
        Ok("hold") => hold_lock(),
        _ => {}
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap())
}

/// Holds the write lock with a temp file half written, then waits to be killed.
fn hold_lock() {
    let shard = Shard::open_with(env_path("CRASH_SHARD"), Options::new().durable(false)).unwrap();
    // merge_in holds the lock from its start; the iterator stalls after one entry has been
    // written to the temp file. (A bulk writer would not do: it builds without the lock.)
    let entries = (0..2).map(|i| {
        if i == 1 {
            File::create(env_path("CRASH_READY")).unwrap();
            std::thread::sleep(Duration::from_secs(600));
            unreachable!("the parent kills this process");
        }
        (b"uncommitted".to_vec(), vec![7u8; 100_000])
    });
    let _ = shard.merge_in(entries);
}

/// Loops over every write path forever, logging each state before and after committing it.
fn writer_loop() {
    let durable = std::env::var("CRASH_DURABLE").unwrap() == "1";
    let mut rng = Rng::new(std::env::var("CRASH_SEED").unwrap().parse().unwrap());
    let options = Options::new()
        .durable(durable)
        .lock_timeout(Duration::from_secs(10));
    let shard = Shard::open_with(env_path("CRASH_SHARD"), options).unwrap();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(env_path("CRASH_LOG"))
        .unwrap();
    let mut note = |tag: &str, d: u64| log.write_all(format!("{tag} {d}\n").as_bytes()).unwrap();
    let snapshot = shard.snapshot();
    assert!(matches!(snapshot.health(), Health::Valid | Health::Missing));
    let mut model: Entries = snapshot
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    drop(snapshot);
    note("S", digest(&model));
    let mut counter = 0u32;
    loop {
        counter += 1;
        let key = |rng: &mut Rng| format!("key{}", rng.below(48)).into_bytes();
        let mut value = |rng: &mut Rng| {
            // Mostly small values; one in eight large enough that a write takes a while.
            let len = if rng.below(8) == 0 {
                rng.below(400_000)
            } else {
                rng.below(300)
            } as usize;
            let mut v = format!("{counter}:").into_bytes();
            v.resize(len.max(v.len()), counter as u8);
            v
        };
        let batch = |rng: &mut Rng, value: &mut dyn FnMut(&mut Rng) -> Vec<u8>| {
            (0..rng.below(12))
                .map(|_| (key(rng), value(rng)))
                .collect::<Vec<_>>()
        };
        let mut next = model.clone();
        let op = rng.below(100);
        let apply: Box<dyn FnOnce(&Shard)> = match op {
            0..=34 => {
                let (k, v) = (key(&mut rng), value(&mut rng));
                next.insert(k.clone(), v.clone());
                Box::new(move |s| {
                    let _ = s.put_one(k, v).unwrap();
                })
            }
            35..=54 => {
                let entries = batch(&mut rng, &mut value);
                next.extend(entries.iter().cloned());
                Box::new(move |s| {
                    let _ = s.merge_in(entries).unwrap();
                })
            }
            55..=64 => {
                let entries = batch(&mut rng, &mut value);
                next = entries.iter().cloned().collect();
                Box::new(move |s| {
                    let _ = s.replace_all(entries).unwrap();
                })
            }
            65..=79 => {
                let keys: Vec<Vec<u8>> = (0..1 + rng.below(4)).map(|_| key(&mut rng)).collect();
                for k in &keys {
                    next.remove(k);
                }
                Box::new(move |s| {
                    let _ = s.remove(keys).unwrap();
                })
            }
            80..=83 => {
                next.clear();
                Box::new(|s| {
                    let _ = s.clear().unwrap();
                })
            }
            _ => {
                let merge = rng.below(2) == 0;
                let commit = rng.below(4) != 0;
                let entries = batch(&mut rng, &mut value);
                if commit {
                    if !merge {
                        next.clear();
                    }
                    next.extend(entries.iter().cloned());
                }
                let mode = if merge {
                    BulkMode::Merge
                } else {
                    BulkMode::Replace
                };
                Box::new(move |s| {
                    let mut writer = s.bulk_writer(mode).unwrap();
                    for (k, v) in &entries {
                        writer.add(k, v).unwrap();
                    }
                    if commit {
                        let _ = writer.commit().unwrap();
                    }
                })
            }
        };
        let d = digest(&next);
        note("I", d);
        apply(&shard);
        note("D", d);
        model = next;
    }
}
