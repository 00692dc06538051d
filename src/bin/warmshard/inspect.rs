//! `ls`, `stats`, `verify`: read-only views of a shard.

use std::io::Write;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use warmshard::{Error, Shard};

use crate::{Outcome, cli_health, warn_if_ignored};

fn stdout_error(e: std::io::Error) -> Error {
    Error::Io {
        op: "writing",
        path: "standard output".into(),
        source: e,
    }
}

/// How `ls` prints keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LsFormat {
    /// Each key's raw bytes and a newline, after its value's size and a tab when `long`.
    Lines { long: bool },
    /// Each key's raw bytes and a NUL byte, after its value's size and a tab when `long`.
    Nul { long: bool },
    /// One JSON array of `{"key", "value_bytes"}` objects, `"key_bytes"` added for non-UTF-8 keys.
    Json,
}

impl LsFormat {
    /// The format the flags ask for (clap refuses --json with --long or -0).
    pub(crate) fn new(long: bool, null: bool, json: bool) -> LsFormat {
        match (json, null) {
            (true, _) => LsFormat::Json,
            (false, true) => LsFormat::Nul { long },
            (false, false) => LsFormat::Lines { long },
        }
    }
}

pub(crate) fn ls(shard: &Shard, format: LsFormat) -> Outcome {
    let snapshot = shard.snapshot();
    warn_if_ignored(&snapshot);
    let mut entries: Vec<(&[u8], &[u8])> = snapshot.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match format {
        LsFormat::Lines { long } | LsFormat::Nul { long } => {
            let end = if format == (LsFormat::Nul { long }) {
                b"\0"
            } else {
                b"\n"
            };
            entries.iter().try_for_each(|(key, value)| {
                if long {
                    write!(out, "{}\t", value.len())?;
                }
                out.write_all(key)?;
                out.write_all(end)
            })
        }
        LsFormat::Json => write_json_keys(&mut out, &entries),
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(stdout_error(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Writes `[{"key": "...", "value_bytes": N}, ...]` and a newline, one object per line; a key
/// that is not UTF-8 gets its lossy text as "key" and its exact bytes as "key_bytes".
fn write_json_keys(out: &mut impl Write, entries: &[(&[u8], &[u8])]) -> std::io::Result<()> {
    out.write_all(b"[")?;
    for (i, (key, value)) in entries.iter().enumerate() {
        let mut object = serde_json::json!({
            "key": String::from_utf8_lossy(key),
            "value_bytes": value.len(),
        });
        if std::str::from_utf8(key).is_err() {
            object["key_bytes"] = serde_json::json!(key);
        }
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut *out, &object)?;
    }
    out.write_all(b"\n]\n")
}

pub(crate) fn stats(shard: &Shard, json: bool) -> Outcome {
    let snapshot = shard.snapshot();
    let s = snapshot.stats();
    let built_ns = s
        .build_time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let built = if s.health.is_valid() {
        humantime::format_rfc3339_seconds(s.build_time).to_string()
    } else {
        String::new()
    };
    let validation_us = s.validation_time.as_secs_f64() * 1e6;
    if json {
        let object = serde_json::json!({
            "path": shard.path().to_string_lossy(),
            "entries": s.entries,
            "value_bytes": s.value_bytes,
            "file_bytes": s.file_bytes,
            "delta_file_bytes": s.delta_file_bytes,
            "format_version": s.format_version,
            "producer": s.producer,
            "build_time": built,
            "build_time_unix_ns": built_ns,
            "validation_us": validation_us,
            "health": cli_health(&s.health),
            "valid": s.health.is_valid(),
        });
        println!("{object}");
    } else {
        println!("path            {}", shard.path().display());
        println!("health          {}", cli_health(&s.health));
        println!("entries         {}", s.entries);
        println!("value bytes     {}", s.value_bytes);
        println!(
            "file bytes      {} ({} in the delta file)",
            s.file_bytes, s.delta_file_bytes
        );
        println!("format version  {}", s.format_version);
        println!("producer        {}", s.producer);
        println!("build time      {built}");
        println!("validation      {validation_us:.1} µs");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn verify(shard: &Shard) -> Outcome {
    let snapshot = shard.snapshot();
    let health = snapshot.health();
    if health.is_ignored_file() {
        // The library's message for an ignored file names `Options` methods: say it in flags.
        eprintln!(
            "warmshard: {}: shard failed verification: {}",
            shard.path().display(),
            cli_health(health)
        );
        return Ok(ExitCode::from(1));
    }
    match snapshot.verify() {
        Ok(n) if snapshot.health().is_valid() => {
            println!("ok: {n} entries verified in {}", shard.path().display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            let health = cli_health(snapshot.health());
            println!("ok: {} ({health})", shard.path().display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("warmshard: {}: {e}", shard.path().display());
            Ok(ExitCode::from(1))
        }
    }
}
