//! The `warmshard` command as a new user would try it.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_warmshard");

fn run(shard: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_env(shard, args, stdin, &[])
}

fn run_env<A: AsRef<std::ffi::OsStr>>(
    shard: &Path,
    args: &[A],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Output {
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
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        // A command that does not read standard input (a disabled `put`, an error) may exit
        // and close the pipe before the bytes are written: that is its answer, not a failure.
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
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
    common::assert_success(&out, "warmshard import");

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
    common::output_ok(
        Command::new(BIN)
            .args(["put", "k", "/dev/null"])
            .env("WARMSHARD_PATH", &shard),
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

/// #12.7: the global --shard advertises its default and WARMSHARD_PATH where they apply, and
/// not in `hash-tree`, which ignores both (its cache is per tree unless --shard is given).
#[test]
fn shard_option_help_names_its_default_and_env_only_where_they_apply() {
    let help = |command: &str| {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .env_remove("WARMSHARD_PATH")
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}");
        String::from_utf8(out.stdout).unwrap()
    };
    for command in ["put", "get", "ls"] {
        let text = help(command);
        assert!(text.contains("[env: WARMSHARD_PATH="), "{command}: {text}");
        assert!(text.contains("default.shard"), "{command}: {text}");
    }
    let text = help("hash-tree");
    assert!(!text.contains("[env: WARMSHARD_PATH"), "{text}");
    assert!(!text.contains("default.shard"), "{text}");
    assert!(
        text.contains("--shard <PATH>") && text.contains("trees/"),
        "{text}"
    );
}

/// Runs the tool with arguments given as raw bytes (keys need not be UTF-8).
fn run_bytes(shard: &Path, args: &[&[u8]], stdin: &[u8]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args
        .iter()
        .map(|a| std::ffi::OsStr::from_bytes(a))
        .collect();
    run_env(shard, &args, stdin, &[])
}

#[test]
fn keys_are_bytes_end_to_end_and_ls_0_and_json_keep_every_key_whole() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("bytes.shard");
    let latin1: &[u8] = b"caf\xe9";
    let two_lines: &[u8] = b"first\nsecond";
    for (key, value) in [
        (latin1, &b"one"[..]),
        (two_lines, b"two"),
        (b"plain", b"three"),
    ] {
        let out = run_bytes(&shard, &[b"put", key], value);
        assert!(
            out.status.success(),
            "put of {key:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_bytes(&shard, &[b"get", latin1], b"");
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(0), &b"one"[..]));
    let out = run_bytes(&shard, &[b"get", two_lines], b"");
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(0), &b"two"[..]));

    // Plain ls cannot tell a key with a newline from two keys; -0 and --json can.
    let out = run(&shard, &["ls", "-0"], b"");
    assert_eq!(out.stdout, b"caf\xe9\0first\nsecond\0plain\0");
    let out = run(&shard, &["ls", "--long", "--null"], b"");
    assert_eq!(out.stdout, b"3\tcaf\xe9\x003\tfirst\nsecond\x005\tplain\0");
    let out = run(&shard, &["ls", "--json"], b"");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = json.as_array().unwrap();
    assert_eq!(keys.len(), 3, "{json}");
    assert_eq!(keys[0]["key_bytes"], serde_json::json!([99, 97, 102, 233]));
    assert_eq!(keys[0]["key"], "caf\u{fffd}");
    assert_eq!(keys[1]["key"], "first\nsecond");
    assert!(
        keys[1].get("key_bytes").is_none(),
        "UTF-8 keys are strings only"
    );
    assert_eq!(keys[2]["value_bytes"], 5);
    let empty = dir.path().join("empty.shard");
    let out = run(&empty, &["ls", "--json"], b"");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!([]));

    // A key `import` stored from a non-UTF-8 file name can be read and removed.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"n\xe4me")),
        "imported",
    )
    .unwrap();
    assert!(
        run(&shard, &["import", src.to_str().unwrap()], b"")
            .status
            .success()
    );
    let out = run_bytes(&shard, &[b"get", b"n\xe4me"], b"");
    assert_eq!(
        (out.status.code(), &out.stdout[..]),
        (Some(0), &b"imported"[..])
    );
    let out = run_bytes(&shard, &[b"rm", b"n\xe4me", latin1, b"gone\xff"], b"");
    assert_eq!(out.status.code(), Some(1), "one key was absent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r"no such key: gone\xff"), "{stderr}");
    assert_eq!(
        run_bytes(&shard, &[b"get", b"n\xe4me"], b"").status.code(),
        Some(1)
    );
    assert_eq!(
        run_bytes(&shard, &[b"get", latin1], b"").status.code(),
        Some(1)
    );
    assert_eq!(
        run(&shard, &["ls", "-0"], b"").stdout,
        b"first\nsecond\0plain\0"
    );
}

#[test]
fn put_of_an_endless_stdin_stops_at_the_size_limit_instead_of_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("endless.shard");
    // /dev/zero never ends: the value must be refused once it passes --max-size. The address
    // space is capped at 2 GiB so that reading it all fails fast instead of filling memory.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 2097152 && exec "$0" "$@""#)
        .arg(BIN)
        .arg("--shard")
        .arg(&shard)
        .args(["--max-size", "1000000", "put", "zeros"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .env_remove("WARMSHARD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("more than 1000000 bytes") && stderr.contains("--max-size"),
        "{stderr}"
    );
    assert!(!shard.exists(), "nothing was written");
}

#[test]
fn put_streams_a_value_larger_than_the_address_space_it_may_use() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of varied bytes, stored by a process capped at 40 MB of address space: it fits
    // only if the value is streamed, never held whole (from a pipe, a file on standard input,
    // or a FILE argument).
    let value: Vec<u8> = (0..64u32 << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &value).unwrap();
    let capped = |shard: &Path, pipe: bool, args: &[&str]| {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v 40000 && exec "$0" "$@""#)
            .arg(BIN)
            .arg("--shard")
            .arg(shard)
            .args(["--no-fsync", "put", "big"])
            .args(args)
            .stdin(if pipe {
                Stdio::piped()
            } else {
                std::fs::File::open(&file).unwrap().into()
            })
            .stderr(Stdio::piped())
            .env_remove("WARMSHARD")
            .spawn()
            .unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            // The child may die early (that is the failure being tested): ignore a broken pipe.
            let _ = stdin.write_all(&value);
        }
        child.wait_with_output().unwrap()
    };
    let file_arg = file.to_str().unwrap();
    for (name, pipe, args) in [
        ("pipe", true, &[][..]),
        ("stdin-file", false, &[]),
        ("file-arg", false, &[file_arg]),
    ] {
        let shard = dir.path().join(format!("{name}.shard"));
        let out = capped(&shard, pipe, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {:?} {stderr}", out.status);
        let got = run(&shard, &["get", "big"], b"");
        assert!(got.stdout == value, "{name}: the value read back differs");
        assert_eq!(
            run(&shard, &["verify"], b"").status.code(),
            Some(0),
            "{name}"
        );
    }
}

#[test]
fn put_of_a_value_over_4_gib_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("huge.shard");
    // 4.1 GiB, sparse: no disk space, and the process may not even map half of it.
    let huge = dir.path().join("huge.bin");
    let size = 4_402_341_478u64;
    std::fs::File::create(&huge).unwrap().set_len(size).unwrap();
    let capped = |stdin: Stdio, args: &[&str]| {
        Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v 2097152 && exec "$0" "$@""#)
            .arg(BIN)
            .arg("--shard")
            .arg(&shard)
            .args(args)
            .stdin(stdin)
            .env_remove("WARMSHARD")
            .output()
            .unwrap()
    };
    let from_stdin = capped(std::fs::File::open(&huge).unwrap().into(), &["put", "k"]);
    let from_file = capped(Stdio::null(), &["put", "k", huge.to_str().unwrap()]);
    for out in [from_stdin, from_file] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("is {size} bytes")), "{stderr}");
        assert!(stderr.contains("4 GiB"), "{stderr}");
    }
    assert!(!shard.exists(), "nothing was written");
}

#[test]
fn size_limits_are_reported_in_cli_flags_not_library_methods() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("limits.shard");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 5000]).unwrap();
    let big = big.to_str().unwrap();
    // A file (or a file on stdin) larger than the limit is refused before it is read.
    let out = run(&shard, &["--max-size", "1000", "put", "k", big], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is 5000 bytes") && stderr.contains("--max-size"),
        "{stderr}"
    );
    // A value under --max-size whose shard would be over it: the library's error, in CLI words.
    let out = run(&shard, &["--max-size", "5100", "put", "k", big], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("raise --max-size"), "{stderr}");
    assert!(!stderr.contains("Options::"), "{stderr}");

    assert!(run(&shard, &["put", "k", big], b"").status.success());
    for args in [
        &["stats"][..],
        &["stats", "--json"],
        &["get", "k"],
        &["verify"],
    ] {
        let mut all = vec!["--max-size", "100"];
        all.extend_from_slice(args);
        let out = run(&shard, &all, b"");
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("raise --max-size"), "{args:?}: {text}");
        assert!(!text.contains("Options::"), "{args:?}: {text}");
    }
    let out = run(&shard, &["--producer", "other", "get", "k"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--producer requires \"other\""), "{stderr}");
}

#[test]
fn a_read_of_a_shard_whose_directory_does_not_exist_is_an_error_not_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("typo/cache.shard");
    for args in [&["get", "k"][..], &["ls"], &["stats"], &["verify"]] {
        let out = run(&shard, args, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("typo") && stderr.contains("does not exist"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("typo").exists(), "a read creates nothing");
    // The same path, once a write created it: an absent key is a plain miss again.
    assert!(run(&shard, &["put", "other"], b"v").status.success());
    assert_eq!(run(&shard, &["get", "k"], b"").status.code(), Some(1));
}

#[test]
fn every_subcommand_help_shows_an_example() {
    for command in [
        "put",
        "get",
        "rm",
        "clear",
        "import",
        "ls",
        "stats",
        "verify",
        "compact",
        "hash-tree",
    ] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{command} --help failed");
        assert!(
            help.contains("Example") && help.contains(&format!("warmshard {command}")),
            "{command} --help has no example:\n{help}"
        );
    }
}
