#![allow(dead_code)] // each test file uses a different part of this
//! Helpers shared by several test files (each test file is its own crate; it includes this with
//! `mod common;`).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `command` to its end and returns its output; fails the test, showing the command and
/// what it printed, unless it exited with success.
pub fn output_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert_success(&out, &format!("{command:?}"));
    out
}

/// Fails the test, showing `what` ran and what it printed, unless `out` is a success.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Names of the temporary files a writer leaves next to its shard (`.<name>.<random>.tmp`).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

/// The CLI binary: the one cargo built, or `$WARMSHARD_TEST_BIN` (to run the CLI tests against
/// another build, e.g. the code before a fix, and see them fail).
#[cfg(feature = "cli")]
pub fn warmshard_bin() -> String {
    std::env::var("WARMSHARD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_warmshard").into())
}

/// The name of the second local user the tests create (`useradd`) to play another user.
pub const OTHER_USER: &str = "warmshard-other";

/// The uid and gid of a second local user, created with `useradd` if needed. `None` (after
/// printing `SKIPPED: <reason>` with `what`) when the tests do not run as root or the user
/// cannot be created: a test that needs it then returns without claiming anything.
pub fn second_user(what: &str) -> Option<(u32, u32)> {
    use std::process::Command;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: {what}: creating a second user needs root");
        return None;
    }
    let lookup = || nix::unistd::User::from_name(OTHER_USER).ok().flatten();
    if lookup().is_none() {
        // Another test may create it at the same time: judge by the lookup, not the status.
        let _ = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", OTHER_USER])
            .output();
    }
    match lookup() {
        Some(user) => Some((user.uid.as_raw(), user.gid.as_raw())),
        None => {
            eprintln!("SKIPPED: {what}: useradd {OTHER_USER} failed");
            None
        }
    }
}

/// Runs `sh -c script` (with `$WARMSHARD_BIN` naming the CLI binary), as `user` when given, in a
/// child process: the place for `umask`, `ulimit -v` and other per-process settings.
#[cfg(feature = "cli")]
pub fn sh(user: Option<(u32, u32)>, script: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", script])
        .env("WARMSHARD_BIN", warmshard_bin())
        .env_remove("WARMSHARD")
        .stdin(std::process::Stdio::null());
    if let Some((uid, gid)) = user {
        // std drops the supplementary groups when a root parent sets the uid.
        command.uid(uid).gid(gid);
    }
    command.output().unwrap()
}

/// A fresh directory with mode 1777 (sticky, world-writable, like `/tmp`), for tests in which
/// two users share a directory.
pub fn sticky_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// This test binary run again as a child process that runs only its test
/// `child_process_entry_point`, with `var=role` set: how the test files start writer, reader
/// and lock-holder processes (each file's entry point does nothing unless its variable is set).
pub fn child_process(var: &str, role: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_process_entry_point", "--nocapture"])
        .env(var, role)
        .stdin(std::process::Stdio::null());
    command
}

/// Starts `command` (a [`child_process`]) with its stdout dropped and its stderr written to the
/// file `stderr`, for the test to show if the child fails.
pub fn spawn_logged(command: &mut std::process::Command, stderr: &Path) -> std::process::Child {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// Creates `dir/<name>` (a directory, 0700) relative to an open directory and opens it, so a
/// test can build trees whose paths are longer than `PATH_MAX`.
pub fn mkdir_at(dir: &std::os::fd::OwnedFd, name: &[u8]) -> std::os::fd::OwnedFd {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    nix::sys::stat::mkdirat(
        dir,
        OsStr::from_bytes(name),
        Mode::from_bits_truncate(0o700),
    )
    .unwrap();
    nix::fcntl::openat(
        dir,
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap()
}

/// Creates the file `dir/<name>` (0600) relative to an open directory and writes `content`
/// into it: the last step of building a tree deeper than `PATH_MAX`.
pub fn write_at(dir: &std::os::fd::OwnedFd, name: &str, content: &[u8]) {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let file = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::unistd::write(&file, content).unwrap();
}
