//! `put`, `get`, `rm`, `clear`: single-entry commands.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use warmshard::{Error, Shard};

use crate::{Outcome, report_write, warn_if_ignored};

pub(crate) fn put(shard: &Shard, key: &[u8], file: Option<&Path>) -> Outcome {
    let value = match file {
        Some(file) => std::fs::read(file).map_err(|e| Error::Io {
            op: "reading",
            path: file.to_path_buf(),
            source: e,
        })?,
        None => {
            let mut value = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut value)
                .map_err(|e| Error::Io {
                    op: "reading",
                    path: "standard input".into(),
                    source: e,
                })?;
            value
        }
    };
    report_write(&shard.put_one(key, &value)?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn get(shard: &Shard, key: &[u8]) -> Outcome {
    let snapshot = shard.snapshot();
    warn_if_ignored(&snapshot);
    let Some(value) = snapshot.get(key) else {
        return Ok(ExitCode::from(1));
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(value).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A closed pipe (e.g. `| head`) is the reader's choice, not our error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Io {
            op: "writing",
            path: "standard output".into(),
            source: e,
        }),
    }
}

pub(crate) fn rm(shard: &Shard, keys: &[String]) -> Outcome {
    let snapshot = shard.snapshot();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !snapshot.contains(k.as_bytes()))
        .collect();
    report_write(&shard.remove(keys.iter().map(|k| k.as_bytes()))?);
    for key in &missing {
        eprintln!("warmshard: no such key: {key}");
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn clear(shard: &Shard) -> Outcome {
    report_write(&shard.clear()?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn compact(shard: &Shard) -> Outcome {
    let outcome = shard.compact()?;
    report_write(&outcome);
    if let warmshard::WriteOutcome::Committed {
        entries,
        file_bytes,
        ..
    } = outcome
    {
        eprintln!(
            "compacted {}: {entries} entries in {file_bytes} bytes",
            shard.path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
