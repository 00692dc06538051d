//! `ls`, `stats`, `verify`: read-only views of a shard.

use std::io::Write;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use warmshard::{Error, Shard};

use crate::{Outcome, warn_if_ignored};

fn stdout_error(e: std::io::Error) -> Error {
    Error::Io {
        op: "writing",
        path: "standard output".into(),
        source: e,
    }
}

pub(crate) fn ls(shard: &Shard, long: bool) -> Outcome {
    let snapshot = shard.snapshot();
    warn_if_ignored(&snapshot);
    let mut entries: Vec<(&[u8], &[u8])> = snapshot.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = entries.iter().try_for_each(|(key, value)| {
        if long {
            write!(out, "{}\t", value.len())?;
        }
        out.write_all(key)?;
        out.write_all(b"\n")
    });
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(stdout_error(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
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
            "health": s.health.to_string(),
            "valid": s.health.is_valid(),
        });
        println!("{object}");
    } else {
        println!("path            {}", shard.path().display());
        println!("health          {}", s.health);
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
    match snapshot.verify() {
        Ok(n) if snapshot.health().is_valid() => {
            println!("ok: {n} entries verified in {}", shard.path().display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            println!("ok: {} ({})", shard.path().display(), snapshot.health());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("warmshard: {}: {e}", shard.path().display());
            Ok(ExitCode::from(1))
        }
    }
}
