//! Promise: a write that fails part-way (file size limit, full filesystem, unwritable or
//! read-only directory, a rename refused) returns an error, leaves the previous shard
//! byte-for-byte intact and readable, and leaves no temp file behind.
//!
//! These tests run as root (as CI does), where permission bits stop nothing, so they use what
//! stops root: `RLIMIT_FSIZE` (in a child process, with `SIGXFSZ` ignored so the write gets
//! `EFBIG`), a small tmpfs, `chattr +i`, and a read-only bind mount. A test whose tool is not
//! available on the machine says so on stderr and returns.

use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use warmshard::{Error, Health, Options, Shard};

mod common;
use common::temp_files;

const ROLE: &str = "WARMSHARD_FAILURES_ROLE";
const EFBIG: i32 = 27;
const ENOSPC: i32 = 28;

fn options() -> Options {
    Options::new().durable(false)
}

/// A shard at `dir/name` with a few entries; returns its path and bytes.
fn make_shard(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let shard = Shard::open_with(&path, options()).unwrap();
    let _ = shard
        .merge_in((0..50).map(|i| (format!("old{i}"), vec![i as u8; 100 + i])))
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn big_value() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 251) as u8).collect()
}

/// The failed write left the old shard exactly as it was, readable, and no temp file.
fn assert_intact(path: &Path, before: &[u8], what: &str) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{what}: the shard changed"
    );
    let snapshot = Shard::open(path).unwrap().snapshot();
    assert_eq!(snapshot.health(), &Health::Valid, "{what}");
    assert_eq!(snapshot.verify(), Ok(50), "{what}");
    assert_eq!(snapshot.get(b"old7"), Some(&[7u8; 107][..]), "{what}");
    assert_eq!(
        temp_files(path.parent().unwrap()),
        Vec::<String>::new(),
        "{what}"
    );
}

/// The kind of the I/O error a write failed with (the temp-file crate wraps some errors, so the
/// kind, not the raw errno, is what survives).
fn io_kind(result: warmshard::Result<warmshard::WriteOutcome>) -> ErrorKind {
    match result {
        Err(Error::Io { source, .. }) => source.kind(),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

/// Runs `command` with `RLIMIT_FSIZE` set to `limit` bytes and `SIGXFSZ` ignored.
fn with_file_size_limit(command: &mut Command, limit: u64) -> &mut Command {
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal) run.
    unsafe {
        command.pre_exec(move || {
            use nix::libc;
            let rlim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        })
    }
}

/// Runs `put_one(big, big_value())` on `path` in a child process limited to `limit` bytes per
/// file; returns what it printed: `OK` or `ERR <errno> <message>`.
fn put_big_with_limit(path: &Path, limit: u64) -> String {
    let out = with_file_size_limit(
        common::child_process(ROLE, "put-big")
            .env("FAILURES_SHARD", path)
            .stdin(Stdio::null()),
        limit,
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {out:?}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result from the child: {out:?}"))
        .to_string()
}

#[test]
fn a_write_past_the_file_size_limit_fails_cleanly_at_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    // The size the new shard will have, measured on a copy without a limit.
    let (probe, _) = make_shard(dir.path(), "probe.shard");
    let shard = Shard::open_with(&probe, options()).unwrap();
    let warmshard::WriteOutcome::Committed { file_bytes, .. } =
        shard.put_one("big", big_value()).unwrap()
    else {
        panic!("not committed");
    };
    let (path, before) = make_shard(dir.path(), "limited.shard");
    // Limits that stop the write in the preamble, the records, the tables and the root.
    let limits = [
        1,
        31,
        4096,
        100_000,
        file_bytes - 4096,
        file_bytes - 64,
        file_bytes - 1,
    ];
    for limit in limits {
        let result = put_big_with_limit(&path, limit);
        assert!(
            result.starts_with(&format!("ERR {EFBIG} ")),
            "limit {limit}: {result}"
        );
        assert_intact(&path, &before, &format!("limit {limit}"));
    }
    // The limit is exact: a file of exactly the new size may be written.
    assert_eq!(put_big_with_limit(&path, file_bytes), "OK");
    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.get(b"big"), Some(&big_value()[..]));
    assert_eq!(snapshot.verify(), Ok(51));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn the_cli_reports_a_file_size_failure_and_keeps_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = make_shard(dir.path(), "cli.shard");
    let value = dir.path().join("value");
    std::fs::write(&value, big_value()).unwrap();
    let out = with_file_size_limit(
        Command::new(env!("CARGO_BIN_EXE_warmshard"))
            .arg("--shard")
            .arg(&path)
            .args(["put", "big"])
            .arg(&value)
            .stdin(Stdio::null()),
        50_000,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("File too large"), "{stderr}");
    assert_intact(&path, &before, "CLI put");
}

/// A mount that is undone when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `mount ARGS TARGET`; says why on stderr when it fails.
fn run_mount(args: &[&str], target: &Path) -> bool {
    match Command::new("mount").args(args).arg(target).output() {
        Ok(out) if out.status.success() => true,
        other => {
            eprintln!(
                "SKIPPED: mount {args:?} failed here ({other:?}); this check needs CAP_SYS_ADMIN"
            );
            false
        }
    }
}

fn mount(args: &[&str], target: &Path) -> Option<Mount> {
    run_mount(args, target).then(|| Mount(target.to_path_buf()))
}

/// Fills the filesystem holding `dir` until `free` bytes are left (to a page).
fn fill(dir: &Path, free: u64) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xAAu8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    f.set_len(written.saturating_sub(free)).unwrap();
    f.sync_all().unwrap();
    filler
}

/// The full-filesystem check counts free space to the page, so it runs in a child process of its
/// own (see [`fill_and_write`]): in this multi-threaded test process, a child that another test
/// forks gets a copy of every open descriptor (the filler's, a failed write's temp file's) and
/// holds it until it execs, so a file unlinked in that window frees its blocks only later. The
/// next `fill` then measured space that was about to come free, and a write expected to fail
/// for lack of space succeeded (3 times in about 45 runs on a loaded machine, which is why this
/// file's tests used to run one at a time). The child has one thread and forks nothing, so its
/// files free their space when it unlinks them.
#[test]
fn a_write_to_a_full_filesystem_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = mount(&["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"], &mnt) else {
        return;
    };
    let out = common::child_process(ROLE, "full-fs")
        .env("FAILURES_MNT", &mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RESULT OK"),
        "the full-filesystem child failed: {out:?}"
    );
}

/// The body of [`a_write_to_a_full_filesystem_fails_cleanly`], in its own process.
fn fill_and_write(mnt: &Path) {
    let shards = mnt.join("cache");
    let (path, before) = make_shard(&shards, "full.shard");
    let shard = Shard::open_with(&path, options()).unwrap();
    // Free space from none at all to most of what the new shard needs.
    for free in [0, 4096, 65_536, 200_000, 290_000] {
        let filler = fill(mnt, free);
        let result = shard.put_one("big", big_value());
        assert_eq!(io_kind(result), ErrorKind::StorageFull, "{free} bytes free");
        assert_intact(&path, &before, &format!("{free} bytes free"));
        std::fs::remove_file(filler).unwrap();
    }
    // With room again, the same write succeeds.
    let _ = shard.put_one("big", big_value()).unwrap();
    assert_eq!(shard.snapshot().verify(), Ok(51));
}

/// A `chattr +i` that is undone when dropped.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn immutable(path: &Path) -> Option<Immutable> {
    match Command::new("chattr").arg("+i").arg(path).output() {
        Ok(out) if out.status.success() => Some(Immutable(path.to_path_buf())),
        other => {
            eprintln!(
                "SKIPPED: chattr +i {} failed here: {other:?}",
                path.display()
            );
            None
        }
    }
}

#[test]
fn a_write_into_an_immutable_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("cache");
    let (path, before) = make_shard(&shards, "frozen.shard");
    let shard = Shard::open_with(&path, options()).unwrap();
    for lock_file_exists in [true, false] {
        if !lock_file_exists {
            std::fs::remove_file(shard.lock_path()).unwrap();
        }
        let Some(_frozen) = immutable(&shards) else {
            return;
        };
        assert_eq!(
            io_kind(shard.put_one("new", "value")),
            ErrorKind::PermissionDenied
        );
        assert_eq!(io_kind(shard.clear()), ErrorKind::PermissionDenied);
        assert_intact(&path, &before, "immutable directory");
    }
}

#[test]
fn a_refused_rename_removes_the_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = make_shard(dir.path(), "pinned.shard");
    let shard = Shard::open_with(&path, options()).unwrap();
    // An immutable shard file cannot be renamed over: the write fails at its last step.
    let Some(_pinned) = immutable(&path) else {
        return;
    };
    assert_eq!(
        io_kind(shard.put_one("big", big_value())),
        ErrorKind::PermissionDenied
    );
    assert_intact(&path, &before, "rename refused");
    assert_eq!(io_kind(shard.clear()), ErrorKind::PermissionDenied);
    assert_intact(&path, &before, "unlink refused");
}

#[test]
fn a_read_only_filesystem_refuses_writes_and_still_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("cache");
    let (path, before) = make_shard(&shards, "ro.shard");
    let Some(_bind) = mount(&["--bind", shards.to_str().unwrap()], &shards) else {
        return;
    };
    if !run_mount(&["-o", "remount,bind,ro"], &shards) {
        return;
    }
    let shard = Shard::open_with(&path, options()).unwrap();
    assert_eq!(
        io_kind(shard.put_one("new", "value")),
        ErrorKind::ReadOnlyFilesystem
    );
    assert_eq!(io_kind(shard.clear()), ErrorKind::ReadOnlyFilesystem);
    assert_intact(&path, &before, "read-only filesystem");
    let out = Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .arg("--shard")
        .arg(&path)
        .args(["get", "old3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, vec![3u8; 103]);
    drop(shard);
}

/// The entry point of the child processes; does nothing unless `WARMSHARD_FAILURES_ROLE` is set.
#[test]
fn child_process_entry_point() {
    match std::env::var(ROLE).as_deref() {
        Ok("put-big") => {}
        Ok("full-fs") => {
            fill_and_write(Path::new(&std::env::var_os("FAILURES_MNT").unwrap()));
            println!("RESULT OK");
            return;
        }
        _ => return,
    }
    let path = PathBuf::from(std::env::var("FAILURES_SHARD").unwrap());
    let shard = Shard::open_with(&path, options()).unwrap();
    match shard.put_one("big", big_value()) {
        Ok(_) => println!("RESULT OK"),
        Err(Error::Io { source, .. }) => {
            println!("RESULT ERR {} {source}", source.raw_os_error().unwrap_or(0))
        }
        Err(other) => println!("RESULT ERR 0 {other}"),
    }
}

/// What identifies the shard file on disk: writers always rename a new file into place, so an
/// unchanged (device, inode, size, mtime) means the file was not replaced.
fn identity(path: &Path) -> (u64, u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())
}

/// A shard of `n` entries of `size` bytes each, written by `replace_all`.
fn make_big_shard(path: &Path, n: usize, size: usize) {
    let shard = Shard::open_with(path, options()).unwrap();
    let _ = shard
        .replace_all((0..n).map(|i| (format!("file{i:03}"), vec![i as u8; size])))
        .unwrap();
}

/// #11.1: a size limit below the shard's size is not a reason to rebuild over it. Seen before
/// the fix: `put` exited 0 leaving 1 entry, `compact` left 0.
#[test]
fn a_write_that_cannot_read_the_shard_under_its_size_limit_fails_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limited.shard");
    make_big_shard(&path, 50, 20_000); // ~1 MB, as `import --replace` of 50 files
    let before = std::fs::read(&path).unwrap();
    let value = dir.path().join("value");
    std::fs::write(&value, b"v").unwrap();
    let shard_arg = path.to_str().unwrap();
    for args in [vec!["put", "k", value.to_str().unwrap()], vec!["compact"]] {
        let out = Command::new(common::warmshard_bin())
            .args(["--shard", shard_arg, "--max-size", "500000"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(stderr.contains(shard_arg), "names the path: {stderr}");
        assert!(
            stderr.contains("500000-byte limit"),
            "names the cause: {stderr}"
        );
        assert!(
            stderr.contains("Nothing was written"),
            "says what happened: {stderr}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{args:?} changed the shard"
        );
    }
    // The library: every write that keeps entries fails the same way.
    let limited = Shard::open_with(&path, options().max_size(500_000)).unwrap();
    for (what, result) in [
        ("put_one", limited.put_one("k", "v")),
        ("merge_in", limited.merge_in([("k", "v")])),
        ("compact", limited.compact()),
    ] {
        match result {
            Err(Error::CurrentUnreadable { path: p, health }) => {
                assert_eq!(p, path, "{what}");
                assert!(
                    matches!(health, Health::TooLarge { .. }),
                    "{what}: {health:?}"
                );
            }
            other => panic!("{what}: expected CurrentUnreadable, got {other:?}"),
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(Shard::open(&path).unwrap().snapshot().verify(), Ok(50));
    // Replacing everything needs nothing from the current shard: allowed, and small.
    let _ = limited.replace_all([("k", "v")]).unwrap();
    assert_eq!(limited.snapshot().verify(), Ok(1));
}

/// #11.1: a memory limit that makes mapping the shard fail is not a reason to rebuild over it.
/// Seen before the fix: `ulimit -v 100000; warmshard put k v` on a 120 MB shard went from 3
/// entries to 1, exit 0.
#[test]
fn a_write_that_cannot_map_the_shard_under_ulimit_v_fails_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapped.shard");
    make_big_shard(&path, 3, 40 << 20); // 120 MB
    let before = identity(&path);
    let script = format!(
        "ulimit -v 100000 && echo v | \"$WARMSHARD_BIN\" --shard '{}' put k",
        path.display()
    );
    let out = common::sh(None, &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr.contains("mmap failed"), "names the cause: {stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "names the path: {stderr}"
    );
    assert_eq!(identity(&path), before, "the shard was replaced");
    let snapshot = Shard::open(&path).unwrap().snapshot();
    assert_eq!(snapshot.len(), 3);
    assert_eq!(snapshot.get(b"k"), None);
}

/// #11.1: a shard its owner cannot open (mode 000; root ignores modes, so a second user runs
/// the write) is not a reason to rebuild over it.
#[test]
fn a_write_that_cannot_open_the_shard_fails_and_keeps_it() {
    let Some(user) = common::second_user("an unreadable shard") else {
        return;
    };
    let dir = common::sticky_dir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(user.0.into()), Some(user.1.into())).unwrap();
    let path = home.join("locked.shard");
    let p = path.display();
    let setup = common::sh(
        Some(user),
        &format!(
            "umask 077 && echo 1 | \"$WARMSHARD_BIN\" --shard '{p}' put a && \
             echo 2 | \"$WARMSHARD_BIN\" --shard '{p}' put b && chmod 000 '{p}'"
        ),
    );
    assert!(setup.status.success(), "{setup:?}");
    let before = std::fs::read(&path).unwrap();
    let out = common::sh(
        Some(user),
        &format!("echo 3 | \"$WARMSHARD_BIN\" --shard '{p}' put c"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr.contains("Permission denied"),
        "names the cause: {stderr}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the shard was replaced"
    );
}
