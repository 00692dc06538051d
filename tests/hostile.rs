//! Promise: whatever sits at the shard path (an empty, truncated, bit-flipped, oversized,
//! foreign-owned or writable-by-others file, a symlink, a directory, a FIFO, a socket), reading
//! gives a clean miss or a clear error, never a panic, a hang or another user's bytes, and the
//! next write rebuilds a valid shard without carrying anything untrusted into it. Directories
//! and files are created private (0700, 0600), and a directory others can write is refused.
//!
//! Runs as root (as CI does): "another user" is uid 65534 through `chown`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warmshard::{Error, Health, Options, Shard, Snapshot};

mod common;

const NOBODY: u32 = 65534;

/// Creates a special file at a path.
type MakeSpecial = fn(&Path);

fn options() -> Options {
    Options::new().durable(false)
}

/// Runs `f` on another thread and fails if it takes longer than `limit` (a hang); a panic in
/// `f` is passed on as it is.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// A valid shard at `path` holding `entries(n)`; returns its bytes.
fn entries(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("key{i:02}"),
                format!("value {i} ").repeat(1 + i % 5).into_bytes(),
            )
        })
        .collect()
}

fn make(path: &Path, n: usize) -> Vec<u8> {
    let shard = Shard::open_with(path, options()).unwrap();
    let _ = shard.replace_all(entries(n)).unwrap();
    std::fs::read(path).unwrap()
}

/// Replaces the file at `path` with `bytes` (a new inode, mode 0600).
fn place(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("aside");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// A snapshot that must read as empty: no entry, every lookup a miss, verify fails.
fn assert_empty(snapshot: &Snapshot, what: &str) {
    assert!(!snapshot.health().is_valid(), "{what}");
    assert_eq!(snapshot.len(), 0, "{what}");
    assert_eq!(snapshot.iter().count(), 0, "{what}");
    for (key, _) in entries(20) {
        assert_eq!(snapshot.get(key.as_bytes()), None, "{what}");
    }
}

/// The next write through `shard` rebuilds a valid shard holding only what it wrote.
fn assert_rebuilds(shard: &Shard, what: &str) {
    let _ = shard
        .put_one("fresh", "entry")
        .unwrap_or_else(|e| panic!("{what}: the next write failed: {e}"));
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.health(), &Health::Valid, "{what}");
    assert_eq!(
        snapshot.verify(),
        Ok(1),
        "{what}: old entries were carried over"
    );
    assert_eq!(snapshot.get(b"fresh"), Some(&b"entry"[..]), "{what}");
    let meta = std::fs::symlink_metadata(shard.path()).unwrap();
    assert!(meta.file_type().is_file(), "{what}");
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw(), "{what}");
    assert_eq!(meta.mode() & 0o777, 0o600, "{what}");
}

/// The shard at `path` is refused as untrusted (its reason mentioning `needle`): it reads empty,
/// the CLI misses, and the next write rebuilds it.
fn assert_untrusted_then_rebuilt(path: &Path, needle: &str, what: &str) {
    let shard = Shard::open_with(path, options()).unwrap();
    assert!(
        matches!(shard.health(), Health::Untrusted { reason } if reason.contains(needle)),
        "{what}: {:?}",
        shard.health()
    );
    assert_empty(&shard.snapshot(), what);
    assert_cli_misses(path, what);
    assert_rebuilds(&shard, what);
}

fn cli(path: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .arg("--shard")
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warmshard {args:?} hung on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// `warmshard get` on `path` is a clean miss: exit 1, nothing on stdout.
fn assert_cli_misses(path: &Path, what: &str) {
    let out = cli(path, &["get", "key01"]);
    assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
    assert!(out.stdout.is_empty(), "{what}");
}

#[test]
fn a_zero_byte_file_reads_empty_and_the_next_write_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.shard");
    place(&path, b"");
    let shard = Shard::open_with(&path, options()).unwrap();
    assert_eq!(shard.health(), Health::EmptyFile);
    assert_empty(&shard.snapshot(), "0 bytes");
    assert!(shard.snapshot().verify().is_err());
    assert_cli_misses(&path, "0 bytes");
    assert_rebuilds(&shard, "0 bytes");
}

#[test]
fn a_directory_fifo_or_socket_at_the_path_is_an_error_and_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("special.shard");
    let make_dir = |p: &Path| std::fs::create_dir(p).unwrap();
    let make_fifo =
        |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let make_socket = |p: &Path| {
        std::mem::forget(std::os::unix::net::UnixListener::bind(p).unwrap());
    };
    let cases: [(&str, MakeSpecial); 3] = [
        ("directory", make_dir),
        ("FIFO", make_fifo),
        ("socket", make_socket),
    ];
    for (kind, create) in cases {
        // A handle opened before the special file appeared.
        let earlier = Shard::open_with(&path, options()).unwrap();
        create(&path);
        let p = path.clone();
        let opened = within(Duration::from_secs(5), kind, move || {
            Shard::open_with(&p, options()).map(|_| ())
        });
        match opened {
            Err(Error::NotAFile { kind: found, .. }) => assert_eq!(found, kind),
            other => panic!("{kind}: {other:?}"),
        }
        let snapshot = within(Duration::from_secs(5), kind, move || {
            let s = earlier.snapshot();
            (earlier, s)
        });
        let (earlier, snapshot) = snapshot;
        assert_empty(&snapshot, kind);
        // A write does not replace what it did not create.
        let p = path.clone();
        let written = within(Duration::from_secs(5), kind, move || {
            earlier.put_one("k", "v").map(|_| ())
        });
        assert!(
            matches!(written, Err(Error::NotAFile { .. })),
            "{kind}: {written:?}"
        );
        let out = cli(&p, &["get", "k"]);
        assert_eq!(out.status.code(), Some(2), "{kind}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(kind),
            "{out:?}"
        );
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(!meta.file_type().is_file(), "{kind} was replaced");
        if meta.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        // Once it is gone, writes work again.
        let shard = Shard::open_with(&path, options()).unwrap();
        let _ = shard.put_one("k", "v").unwrap();
        assert_eq!(shard.snapshot().verify(), Ok(1));
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_symlink_at_the_path_is_not_followed_and_its_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let target = theirs.join("their.shard");
    let their_bytes = make(&target, 5);
    nix::unistd::chown(&target, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    let path = mine.join("link.shard");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    // A symlink to one's own valid shard is refused too: the link itself is the problem.
    let own = mine.join("own.shard");
    make(&own, 5);
    let own_link = mine.join("own-link.shard");
    std::os::unix::fs::symlink(&own, &own_link).unwrap();

    for link in [&path, &own_link] {
        let shard = Shard::open_with(link, options()).unwrap();
        let health = shard.health();
        assert!(
            matches!(&health, Health::Untrusted { reason } if reason.contains("symlink")),
            "{health:?}"
        );
        assert_empty(&shard.snapshot(), "symlink");
        assert_cli_misses(link, "symlink");
        assert_rebuilds(&shard, "symlink");
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        their_bytes,
        "the target was written"
    );
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), NOBODY);
}

#[test]
fn a_file_owned_by_another_user_is_not_read_and_not_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.shard");
    make(&path, 5);
    nix::unistd::chown(&path, Some(NOBODY.into()), None).unwrap();
    assert_untrusted_then_rebuilt(&path, "owned by uid 65534", "foreign owner");
}

#[test]
fn a_group_or_world_writable_file_is_not_read_and_not_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o620, 0o602, 0o666] {
        let path = dir.path().join(format!("writable-{mode:o}.shard"));
        make(&path, 5);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let what = format!("writable file {mode:o}");
        assert_untrusted_then_rebuilt(&path, "lets other users write", &what);
    }
}

#[test]
fn a_shard_over_the_size_limit_reads_empty_and_is_kept_until_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.shard");
    let bytes = make(&path, 20);
    let limit = bytes.len() as u64 - 1;
    let shard = Shard::open_with(&path, options().max_size(limit)).unwrap();
    assert_eq!(
        shard.health(),
        Health::TooLarge {
            size: bytes.len() as u64,
            max: limit
        }
    );
    assert_empty(&shard.snapshot(), "too large");
    let out = cli(&path, &["--max-size", &limit.to_string(), "get", "key01"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // Its entries are unknown, not bad: a write that keeps entries fails and leaves it (see
    // write_failures.rs); one that replaces everything rebuilds it small.
    assert!(shard.put_one("fresh", "entry").is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let _ = shard.replace_all([("fresh", "entry")]).unwrap();
    assert_eq!(shard.snapshot().verify(), Ok(1));
    assert!(std::fs::metadata(&path).unwrap().len() <= limit);
}

#[test]
fn a_shard_truncated_at_every_offset_reads_empty_and_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.shard");
    let bytes = make(&path, 6);
    within(Duration::from_secs(60), "truncations", move || {
        for cut in 0..bytes.len() {
            place(&path, &bytes[..cut]);
            let shard = Shard::open_with(&path, options()).unwrap();
            let health = shard.health();
            let expected = match cut {
                0 => matches!(health, Health::EmptyFile),
                1..32 => matches!(health, Health::NotAShard),
                _ => matches!(health, Health::Truncated { declared, actual }
                        if declared == bytes.len() as u64 && actual == cut as u64),
            };
            assert!(expected, "cut at {cut}: {health:?}");
            assert_empty(&shard.snapshot(), &format!("cut at {cut}"));
            assert_rebuilds(&shard, &format!("cut at {cut}"));
        }
        eprintln!("{} truncations checked", bytes.len());
    });
}

/// xorshift64*: seeded, so a failing flip can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn ten_thousand_random_bit_flips_never_serve_a_wrong_value() {
    const FLIPS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flip.shard");
    let original = make(&path, 20);
    let seed = 0xF11B_5EED;
    let summary = within(Duration::from_secs(150), "bit flips", move || {
        let mut rng = Rng(seed);
        let mut valid_after_flip = 0;
        let mut caught_by_verify = 0;
        for n in 0..FLIPS {
            let bit = (rng.next() % (original.len() as u64 * 8)) as usize;
            let mut bytes = original.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            place(&path, &bytes);
            let what = format!("flip {n} (bit {bit}, seed {seed:#x})");

            let plain = Shard::open_with(&path, options()).unwrap().snapshot();
            let checked = Shard::open_with(&path, options().verify_values(true))
                .unwrap()
                .snapshot();
            valid_after_flip += usize::from(plain.health().is_valid());
            let verified = plain.verify().is_ok();
            caught_by_verify += usize::from(!verified);
            let _ = plain.stats();
            assert!(plain.iter().count() <= plain.len(), "{what}");
            for (key, value) in entries(20) {
                let got = checked.get(key.as_bytes());
                assert!(
                    got.is_none() || got == Some(&value[..]),
                    "{what}: a checked get served a wrong value for {key}"
                );
                // Unchecked gets may serve a changed value; verify must then say so.
                let got = plain.get(key.as_bytes());
                if got.is_some() && got != Some(&value[..]) {
                    assert!(!verified, "{what}: {key} changed and verify passed");
                }
            }
            if n % 4 == 0 {
                // A small write lands in the delta file and leaves the base as it is; compact
                // rebuilds a valid shard from what is still intact.
                let shard = Shard::open_with(&path, options()).unwrap();
                let _ = shard.put_one("fresh", "entry").unwrap();
                let after_put = shard.snapshot();
                for (key, value) in entries(20) {
                    let got = after_put.get(key.as_bytes());
                    if got.is_some() && got != Some(&value[..]) {
                        assert!(
                            after_put.verify().is_err(),
                            "{what}: {key} changed, verify passed"
                        );
                    }
                }
                let _ = shard.compact().unwrap();
                let rebuilt = shard.snapshot();
                assert!(
                    rebuilt.verify().is_ok(),
                    "{what}: rebuilt shard fails verify"
                );
                assert_eq!(rebuilt.get(b"fresh"), Some(&b"entry"[..]));
                for (key, value) in entries(20) {
                    let got = rebuilt.get(key.as_bytes());
                    assert!(got.is_none() || got == Some(&value[..]), "{what}: {key}");
                }
            }
        }
        (valid_after_flip, caught_by_verify)
    });
    eprintln!(
        "{FLIPS} bit flips: {} still opened valid (O(1) checks), {} caught by verify",
        summary.0, summary.1
    );
    assert!(summary.1 > FLIPS / 2, "verify caught only {}", summary.1);
}

#[test]
fn directories_are_created_0700_and_files_0600_whatever_the_umask() {
    /// `command`, run under umask 0 (nothing masked: every mode bit is the program's choice).
    fn with_umask_0(command: &mut Command) -> &mut Command {
        // SAFETY: umask is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(|| {
                nix::libc::umask(0);
                Ok(())
            });
        }
        command
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/new.shard");
    let mut command = Command::new(env!("CARGO_BIN_EXE_warmshard"));
    command
        .arg("--shard")
        .arg(&path)
        .args(["put", "k"])
        .stdin(Stdio::null());
    common::output_ok(with_umask_0(&mut command));
    let mode = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    for sub in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(dir.path().join(sub)), 0o700, "{sub}");
    }
    assert_eq!(mode(path.clone()), 0o600, "shard");
    assert_eq!(mode(dir.path().join("a/b/c/new.shard.lock")), 0o600, "lock");

    // The default location: <cache dir>/warmshard/default.shard.
    let cache = dir.path().join("xdg-cache");
    let mut command = Command::new(env!("CARGO_BIN_EXE_warmshard"));
    command
        .env_remove("WARMSHARD_PATH")
        .env("XDG_CACHE_HOME", &cache)
        .args(["put", "k"])
        .stdin(Stdio::null());
    common::output_ok(with_umask_0(&mut command));
    assert_eq!(mode(cache.join("warmshard")), 0o700, "cache directory");
    assert_eq!(
        mode(cache.join("warmshard/default.shard")),
        0o600,
        "default shard"
    );
}

#[test]
fn a_directory_others_can_write_is_refused_unless_sticky() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, trusted) in [
        (0o770, false),
        (0o707, false),
        (0o777, false),
        (0o1777, true),
    ] {
        let shards = dir.path().join(format!("d{mode:o}"));
        let path = shards.join("s.shard");
        make(&path, 3);
        std::fs::remove_file(shards.join("s.shard.lock")).unwrap();
        std::fs::set_permissions(&shards, std::fs::Permissions::from_mode(mode)).unwrap();
        let shard = Shard::open_with(&path, options()).unwrap();
        let written = shard.put_one("new", "value");
        if trusted {
            assert!(shard.snapshot().health().is_valid(), "{mode:o}");
            assert!(written.is_ok(), "{mode:o}: {written:?}");
            assert_eq!(shard.snapshot().verify(), Ok(4));
            continue;
        }
        assert!(
            matches!(shard.health(), Health::Untrusted { reason } if reason.contains("replace files")),
            "{mode:o}: {:?}",
            shard.health()
        );
        assert_empty(&shard.snapshot(), "writable directory");
        assert!(
            matches!(written, Err(Error::Untrusted { .. })),
            "{mode:o}: {written:?}"
        );
        assert!(
            !shards.join("s.shard.lock").exists(),
            "{mode:o}: lock file created"
        );
        let out = cli(&path, &["put", "k"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refusing"),
            "{out:?}"
        );
    }
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("theirs");
    let path = shards.join("s.shard");
    make(&path, 3);
    nix::unistd::chown(&shards, Some(NOBODY.into()), None).unwrap();
    let shard = Shard::open_with(&path, options()).unwrap();
    assert!(matches!(shard.health(), Health::Untrusted { .. }));
    assert!(matches!(
        shard.put_one("k", "v"),
        Err(Error::Untrusted { .. })
    ));
}

#[test]
fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.shard");
    make(&path, 3);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"not a lock").unwrap();
    let lock = dir.path().join("s.shard.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    let shard = Shard::open_with(&path, options()).unwrap();
    assert!(matches!(shard.put_one("k", "v"), Err(Error::Io { .. })));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not a lock");
    assert_eq!(shard.snapshot().verify(), Ok(3));
}

/// A handle whose last view was a file it could not map (here an empty file) must notice when
/// that file is replaced, even if the new file reuses the old inode number: ext4 hands a freed
/// inode number straight to the next new file, so identity by (device, inode) alone goes stale.
#[test]
fn a_handle_that_saw_a_broken_file_sees_the_rebuilt_shard() {
    let dir = tempfile::tempdir().unwrap();
    let mut stale = 0;
    for round in 0..40 {
        let path = dir.path().join(format!("reuse-{round}.shard"));
        place(&path, b"");
        let writer = Shard::open_with(&path, options()).unwrap();
        let reader = Shard::open_with(&path, options()).unwrap();
        assert_eq!(reader.health(), Health::EmptyFile);
        let _ = writer.clear().unwrap();
        let _ = writer.put_one("k", "v").unwrap();
        if reader.get(b"k").is_none() {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "the reader kept a stale view in {stale} of 40 rounds"
    );
}

/// #11.1: a rebuild over a shard of another producer, or over entries of an older generation,
/// is by design, but it says what it dropped: the library in its outcome, the CLI on stderr.
#[test]
fn a_rebuild_over_another_producers_or_generations_entries_reports_what_it_dropped() {
    use warmshard::{DropReason, Dropped};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.shard");
    let old = Shard::open_with(&path, options().producer("old 1.0")).unwrap();
    let _ = old.replace_all(entries(5)).unwrap();
    let new = Shard::open_with(&path, options().producer("new 2.0")).unwrap();
    let outcome = new.put_one("k", "v").unwrap();
    let [
        Dropped {
            entries: count,
            reason,
            ..
        },
    ] = outcome.dropped()
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(*count, Some(5));
    assert_eq!(
        *reason,
        DropReason::ShardFile(Health::ProducerMismatch {
            found: "old 1.0".into(),
            expected: "new 2.0".into()
        })
    );
    assert!(matches!(
        outcome,
        warmshard::WriteOutcome::Committed { entries: 1, .. }
    ));

    let path = dir.path().join("generations.shard");
    let _ = Shard::open_with(&path, options().generation(1))
        .unwrap()
        .replace_all(entries(3))
        .unwrap();
    let outcome = Shard::open_with(&path, options().generation(2))
        .unwrap()
        .put_one("k", "v")
        .unwrap();
    assert_eq!(outcome.dropped().len(), 1, "{outcome:?}");
    assert_eq!(outcome.dropped()[0].entries, Some(3));
    assert_eq!(
        outcome.dropped()[0].reason,
        DropReason::OlderGeneration { floor: 2 }
    );

    // The CLI says it on stderr, with the count and the reason.
    let path = dir.path().join("cli.shard");
    let _ = Shard::open_with(&path, options().producer("old 1.0"))
        .unwrap()
        .replace_all(entries(4))
        .unwrap();
    let out = Command::new(common::warmshard_bin())
        .arg("--shard")
        .arg(&path)
        .args(["--producer", "new 2.0", "put", "k"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dropped 4 entries"), "{stderr}");
    assert!(stderr.contains("old 1.0"), "{stderr}");
}

/// #11.4: in a shared sticky directory another user plants files at the shard's temp names
/// (`.<name>.tmp`, `.<name>.XXXXXX.tmp`): every write still succeeds, the planted files are left
/// alone (not ours to remove), and no temp file of ours stays behind. Before the fix every write
/// failed with "removing stale temporary file … Operation not permitted".
#[test]
fn temp_names_planted_by_another_user_never_block_a_write() {
    let Some(user) = common::second_user("planted temp names") else {
        return;
    };
    let dir = common::sticky_dir();
    let path = dir.path().join("s.shard");
    let p = path.display();
    let run = |script: &str| {
        let out = common::sh(Some(user), script);
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    run(&format!("echo 1 | \"$WARMSHARD_BIN\" --shard '{p}' put a"));
    // Root plays the other user: its files in a sticky directory are not the writer's to remove.
    let planted = [".s.shard.tmp", ".s.shard.AbC123.tmp"];
    for name in planted {
        std::fs::write(dir.path().join(name), b"planted").unwrap();
    }
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("f"), vec![b'f'; 100_000]).unwrap();
    nix::unistd::chown(&files, Some(user.0.into()), None).unwrap();
    nix::unistd::chown(&files.join("f"), Some(user.0.into()), None).unwrap();
    for write in [
        "echo 2 | \"$WARMSHARD_BIN\" --shard '{p}' put b",
        "head -c 200000 /dev/zero | \"$WARMSHARD_BIN\" --shard '{p}' put big",
        "\"$WARMSHARD_BIN\" --shard '{p}' import '{files}'",
        "\"$WARMSHARD_BIN\" --shard '{p}' compact",
        "\"$WARMSHARD_BIN\" --shard '{p}' clear",
        "echo 3 | \"$WARMSHARD_BIN\" --shard '{p}' put c",
    ] {
        let script = write
            .replace("{p}", &p.to_string())
            .replace("{files}", &files.display().to_string());
        run(&script);
    }
    let got = common::sh(
        Some(user),
        &format!("\"$WARMSHARD_BIN\" --shard '{p}' get c"),
    );
    assert_eq!(got.stdout, b"3\n", "{got:?}");
    for name in planted {
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"planted");
    }
    let ours: Vec<String> = common::temp_files(dir.path())
        .into_iter()
        .filter(|n| {
            let meta = std::fs::symlink_metadata(dir.path().join(n)).unwrap();
            meta.uid() == user.0
        })
        .collect();
    assert_eq!(
        ours,
        Vec::<String>::new(),
        "temp files of the writer left behind"
    );
}

/// #11.7: umasks that take owner bits away (177, 277, 777) still give directories 0700 and
/// files 0600, and every later write works, under any umask; a lock file an earlier umask left
/// 0400 is repaired. Run as a second user, for whom the modes matter (root ignores them); as
/// root when there is none (the modes are still checked). Before the fix, umask 277 made new
/// directories 0500 and the lock file 0400, and writes failed from then on.
#[test]
fn umasks_that_take_owner_bits_still_give_0700_directories_and_0600_files() {
    let user = common::second_user("umasks as a non-root user (checking modes as root)");
    let dir = common::sticky_dir();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    for umask in ["177", "277", "777"] {
        let home = dir.path().join(format!("home{umask}"));
        std::fs::create_dir(&home).unwrap();
        if let Some((uid, gid)) = user {
            nix::unistd::chown(&home, Some(uid.into()), Some(gid.into())).unwrap();
        }
        let path = home.join("a/b/new.shard");
        let p = path.display();
        for (mask, key) in [(umask, "k1"), (umask, "k2"), ("022", "k3")] {
            let script =
                format!("umask {mask} && echo {key} | \"$WARMSHARD_BIN\" --shard '{p}' put {key}");
            let out = common::sh(user, &script);
            assert!(out.status.success(), "umask {umask}, {script}: {out:?}");
        }
        for sub in ["a", "a/b"] {
            assert_eq!(mode(&home.join(sub)), 0o700, "umask {umask}: {sub}");
        }
        for file in ["new.shard", "new.shard.lock"] {
            assert_eq!(
                mode(&home.join("a/b").join(file)),
                0o600,
                "umask {umask}: {file}"
            );
        }
        let delta = home.join("a/b/new.shard.delta");
        if delta.exists() {
            assert_eq!(mode(&delta), 0o600, "umask {umask}: delta");
        }
        let got = common::sh(user, &format!("\"$WARMSHARD_BIN\" --shard '{p}' get k1"));
        assert_eq!(got.stdout, b"k1\n", "umask {umask}: {got:?}");
    }
    // A lock file left 0400 (by an older version under umask 277) is repaired by the next write.
    let lock = dir.path().join("home277/a/b/new.shard.lock");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o400)).unwrap();
    let p = dir.path().join("home277/a/b/new.shard");
    let out = common::sh(
        user,
        &format!(
            "echo x | \"$WARMSHARD_BIN\" --shard '{}' put k4",
            p.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&lock), 0o600, "lock file repaired");
}

/// Runs the CLI on `path` with `args` (as root, the victim in these tests); returns exit code,
/// stdout and stderr.
fn cli_as_victim(path: &Path, args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = Command::new(common::warmshard_bin())
        .arg("--shard")
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), out.stdout, stderr)
}

/// A symlink at `link` to `target`, owned by `uid` (another user planted it). Made under
/// another name, given to `uid`, then renamed into place: a symlink at `link` is never root's,
/// even for an instant (root's symlinks are trusted).
fn plant_symlink(target: &Path, link: &Path, uid: u32) {
    let staging = link.with_extension("planting");
    std::os::unix::fs::symlink(target, &staging).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &staging,
        Some(uid.into()),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    std::fs::rename(&staging, link).unwrap();
}

/// Creates `parent/name` holding a shard `s.shard` whose key `k` is `OLD`: the directory a
/// planted symlink points a victim at.
fn directory_with_old_shard(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    let _ = Shard::open_with(dir.join("s.shard"), options())
        .unwrap()
        .put_one("k", "OLD")
        .unwrap();
    dir
}

/// #11.6: another user plants a symlink in a shared sticky directory where the user's shard
/// directory should be, pointing at another directory of the user's: writes are refused with an
/// error naming it (before the fix the shard landed in the symlink's target), reads are
/// untrusted (before: they served the target's shard).
#[test]
fn a_symlink_planted_where_the_shard_directory_should_be_is_refused() {
    let Some((other, _)) = common::second_user("a planted directory symlink") else {
        return;
    };
    let shared = common::sticky_dir();
    let private = tempfile::tempdir().unwrap();
    let elsewhere = directory_with_old_shard(private.path(), "elsewhere");
    let before = std::fs::read(elsewhere.join("s.shard")).unwrap();
    let link = shared.path().join("cache");
    plant_symlink(&elsewhere, &link, other);
    let path = link.join("s.shard");

    let (code, stdout, stderr) = cli_as_victim(&path, &["get", "k"]);
    assert_ne!(stdout, b"OLD", "a read served the symlink target's shard");
    assert_eq!(code, Some(1), "{stderr}");
    let (code, _, stderr) = cli_as_victim(&path, &["put", "k2"]);
    assert_eq!(
        code,
        Some(2),
        "the write went through the symlink: {stderr}"
    );
    assert!(stderr.contains(&link.display().to_string()), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(std::fs::read(elsewhere.join("s.shard")).unwrap(), before);
    let lib = Shard::open_with(&path, options()).unwrap();
    assert!(
        matches!(lib.health(), Health::Untrusted { .. }),
        "{:?}",
        lib.health()
    );
    assert!(matches!(
        lib.put_one("k", "v"),
        Err(Error::Untrusted { .. })
    ));
    // A symlink the user made is theirs to follow.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    assert_eq!(cli_as_victim(&path, &["get", "k"]).1, b"OLD");
}

/// #11.6: a world-writable, non-sticky ancestor lets another user rename the shard's directory
/// away and put another in its place, so such a shard is refused, reads and writes, with the
/// ancestor named (as OpenSSH's StrictModes refuses key files). Before the fix only the shard's
/// own directory was checked.
#[test]
fn a_world_writable_non_sticky_ancestor_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mine = open.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = mine.join("deep/s.shard");
    let (code, _, stderr) = cli_as_victim(&path, &["put", "k"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:", open.display())),
        "names it: {stderr}"
    );
    assert!(!path.exists());
    let shard = Shard::open_with(&path, options()).unwrap();
    match shard.put_one("k", "v") {
        Err(Error::Untrusted { path: refused, .. }) => assert_eq!(refused, open),
        other => panic!("expected Untrusted, got {other:?}"),
    }
    // With the sticky bit (as /tmp), others cannot rename what is ours: accepted.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _ = shard.put_one("k", "v").unwrap();
    // A reader refuses it too once the bit is gone.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let health = Shard::open(&path).unwrap().health();
    let Health::Untrusted { reason } = health else {
        panic!("{health:?}");
    };
    assert!(reason.contains(&open.display().to_string()), "{reason}");
}

/// #11.6: a symlink that another user flips, at the shard directory's name, between the user's
/// real directory (shard NEW) and another directory (shard OLD): a read never serves OLD.
/// Before the fix the directory was checked by path and the files opened by path again, so
/// reads served OLD whenever the symlink was in place.
#[test]
fn a_flipping_directory_symlink_never_makes_reads_serve_another_directory() {
    let Some((other, _)) = common::second_user("a flipping directory symlink") else {
        return;
    };
    let shared = common::sticky_dir();
    let private = tempfile::tempdir().unwrap();
    let stale = directory_with_old_shard(private.path(), "stale");
    let real = shared.path().join("cache");
    let aside = shared.path().join("cache.aside");
    let _ = Shard::open_with(real.join("s.shard"), options())
        .unwrap()
        .put_one("k", "NEW")
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, real, aside, stale) = (stop.clone(), real.clone(), aside.clone(), stale.clone());
        std::thread::spawn(move || {
            let mut flips = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(&real, &aside).unwrap();
                plant_symlink(&stale, &real, other);
                std::thread::sleep(Duration::from_micros(200));
                std::fs::remove_file(&real).unwrap();
                std::fs::rename(&aside, &real).unwrap();
                std::thread::sleep(Duration::from_micros(200));
                flips += 1;
            }
            flips
        })
    };
    let (mut new, mut refused) = (0, 0);
    for _ in 0..100 {
        let (code, stdout, _) = cli_as_victim(&real.join("s.shard"), &["get", "k"]);
        assert_ne!(stdout, b"OLD", "a read served the other directory's shard");
        match code {
            Some(0) => new += 1,
            _ => refused += 1,
        }
    }
    for _ in 0..2000 {
        let value = Shard::open(real.join("s.shard")).unwrap().get(b"k");
        assert_ne!(
            value.as_deref(),
            Some(&b"OLD"[..]),
            "the library served OLD"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    eprintln!("{flips} flips; CLI reads: {new} served NEW, {refused} refused or missed");
}

// ---------------------------------------------------------------------------------------------
// Moved from bad_input.rs (the cases hostile.rs did not already cover).

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

// ---------------------------------------------------------------------------------------------
// Moved from security.rs (the cases hostile.rs did not already cover).

#[test]
fn new_files_are_0600_and_new_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/cache.shard");
    let shard = Shard::open(&path).unwrap();
    assert_eq!(
        shard.health(),
        Health::DirectoryMissing {
            dir: dir.path().join("a/b/c")
        }
    );
    assert!(
        !dir.path().join("a").exists(),
        "opening for reads must not create directories"
    );
    shard.put_one("k", "v").unwrap();
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&shard.lock_path()), 0o600);
}

#[test]
fn a_shard_made_writable_by_others_after_it_was_mapped_is_refused_by_the_next_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.shard");
    let shard = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    shard.put_one("k", "v").unwrap();
    assert_eq!(shard.snapshot().get(b"k"), Some(&b"v"[..]));
    // Same inode, new mode: others could now change the bytes this handle has mapped.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let snapshot = shard.snapshot();
    assert!(
        matches!(snapshot.health(), Health::Untrusted { .. }),
        "{:?}",
        snapshot.health()
    );
    assert_eq!(snapshot.get(b"k"), None);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}
