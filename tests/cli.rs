//! The `warmshard` command as a new user would try it.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

fn run(shard: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_env(shard, args, stdin, &[])
}

fn run_env(shard: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--shard")
        .arg(shard)
        .args(args)
        .env_remove("WARMSHARD")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn put_get_rm_clear() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("new/dirs/cli.shard");
    assert!(
        run(&shard, &["put", "greeting"], b"hello\n")
            .status
            .success()
    );
    let value_file = dir.path().join("value.bin");
    std::fs::write(&value_file, [0u8, 1, 2, 255]).unwrap();
    assert!(
        run(
            &shard,
            &["put", "binary", value_file.to_str().unwrap()],
            b""
        )
        .status
        .success()
    );

    let out = run(&shard, &["get", "greeting"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(
        run(&shard, &["get", "binary"], b"").stdout,
        [0u8, 1, 2, 255]
    );

    let out = run(&shard, &["get", "absent"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    let out = run(&shard, &["rm", "greeting", "absent"], b"");
    assert_eq!(out.status.code(), Some(1), "an absent key makes rm exit 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such key: absent"));
    assert_eq!(
        run(&shard, &["get", "greeting"], b"").status.code(),
        Some(1)
    );
    assert_eq!(run(&shard, &["get", "binary"], b"").status.code(), Some(0));

    assert!(run(&shard, &["clear"], b"").status.success());
    assert!(!shard.exists());
    assert_eq!(run(&shard, &["get", "binary"], b"").status.code(), Some(1));
}

#[test]
fn import_merge_and_replace_with_nested_and_non_utf8_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("top.txt"), "top").unwrap();
    std::fs::write(src.join("a/b/deep.txt"), "deep").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.bin");
    std::fs::write(src.join(odd), "latin1 name").unwrap();
    std::os::unix::fs::symlink(src.join("top.txt"), src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let shard = dir.path().join("import.shard");
    assert!(run(&shard, &["put", "kept"], b"1").status.success());
    let out = run(&shard, &["import", src.to_str().unwrap()], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&shard, &["ls"], b"");
    let mut expected = b"a/b/deep.txt\ncaf\xe9.bin\nkept\ntop.txt\n".to_vec();
    assert_eq!(
        out.stdout,
        expected,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(run(&shard, &["get", "a/b/deep.txt"], b"").stdout, b"deep");

    let out = run(&shard, &["ls", "--long"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4\ta/b/deep.txt\n"));

    let out = run(
        &shard,
        &["import", "--replace", src.join("a").to_str().unwrap()],
        b"",
    );
    assert!(out.status.success());
    expected = b"b/deep.txt\n".to_vec();
    assert_eq!(run(&shard, &["ls"], b"").stdout, expected);

    let out = run(
        &shard,
        &["import", src.join("top.txt").to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn stats_json_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("stats.shard");
    for i in 0..7 {
        let args = ["--producer", "tool 2.0", "put", &format!("k{i}")];
        assert!(run(&shard, &args, b"0123456789").status.success());
    }
    let out = run(&shard, &["stats", "--json"], b"");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["entries"], 7);
    assert_eq!(json["value_bytes"], 70);
    assert_eq!(json["format_version"], warmshard::format::FORMAT_VERSION);
    assert_eq!(json["producer"], "tool 2.0");
    // Small puts land in the delta file of recent writes; stats count both files.
    let delta = dir.path().join("stats.shard.delta");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    assert!(
        size(&delta) > 0,
        "small puts should have gone to the delta file"
    );
    assert_eq!(json["file_bytes"], size(&shard) + size(&delta));
    assert_eq!(json["delta_file_bytes"], size(&delta));
    assert!(json["build_time"].as_str().unwrap().ends_with('Z'));
    assert!(json["validation_us"].as_f64().unwrap() >= 0.0);

    let text = String::from_utf8(run(&shard, &["stats"], b"").stdout).unwrap();
    assert!(text.contains("entries         7"), "{text}");

    let out = run(&shard, &["verify"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("7 entries verified"));

    // Flip one byte of a value: verify must notice, get still answers (checksums are opt-in).
    let mut bytes = std::fs::read(&delta).unwrap();
    let at = bytes.windows(10).position(|w| w == b"0123456789").unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&delta, &bytes).unwrap();
    let out = run(&shard, &["verify"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    // compact drops the damaged entry and the shard verifies again.
    assert!(run(&shard, &["compact"], b"").status.success());
    let out = run(&shard, &["verify"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 entries verified"));
    assert!(!delta.exists(), "compact folds the delta file in");

    // A producer mismatch reads as empty and says why on stderr.
    let out = run(&shard, &["--producer", "other 1.0", "get", "k0"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("producer"));
}

#[test]
fn corrupt_shard_gets_are_misses_with_a_reason_and_verify_fails() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("junk.shard");
    std::fs::write(&shard, b"this is not a shard").unwrap();
    let out = run(&shard, &["get", "k"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a warmshard file"));
    assert_eq!(run(&shard, &["verify"], b"").status.code(), Some(1));
    assert!(run(&shard, &["put", "k"], b"v").status.success());
    assert_eq!(run(&shard, &["get", "k"], b"").stdout, b"v");
}

#[test]
fn kill_switch_env_disables_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("switch.shard");
    assert!(run(&shard, &["put", "k"], b"v").status.success());
    let off = [("WARMSHARD", "0")];
    let out = run_env(&shard, &["get", "k"], b"", &off);
    assert_eq!(out.status.code(), Some(1));
    let out = run_env(&shard, &["put", "k2"], b"v2", &off);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was written"));
    assert_eq!(run(&shard, &["get", "k2"], b"").status.code(), Some(1));
    assert_eq!(run(&shard, &["get", "k"], b"").stdout, b"v");
}

#[test]
fn shard_path_from_environment_and_errors_for_directories() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("env.shard");
    let out = Command::new(BIN)
        .args(["put", "k", "/dev/null"])
        .env("WARMSHARD_PATH", &shard)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shard.exists());

    let out = run(dir.path(), &["get", "k"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

#[test]
fn help_teaches_commands_and_environment() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "put",
        "get",
        "import",
        "verify",
        "WARMSHARD_PATH",
        "WARMSHARD=0",
        "Examples",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}
