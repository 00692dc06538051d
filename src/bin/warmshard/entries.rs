//! `put`, `get`, `rm`, `clear`: single-entry commands.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use nix::sys::stat::SFlag;

use warmshard::{Error, Shard, WriteOutcome};

use crate::{Outcome, report_write, warn_if_ignored};

/// The largest value one entry can hold: the format stores a value's length in 32 bits.
const MAX_VALUE_BYTES: u64 = u32::MAX as u64;

pub(crate) fn put(shard: &Shard, key: &[u8], file: Option<&Path>, max_size: u64) -> Outcome {
    let outcome = match file {
        Some(file) => {
            let opened = std::fs::File::open(file).map_err(|e| Error::Io {
                op: "opening",
                path: file.to_path_buf(),
                source: e,
            })?;
            put_value(shard, key, opened, file, max_size)?
        }
        None => put_value(
            shard,
            key,
            std::io::stdin().lock(),
            Path::new("standard input"),
            max_size,
        )?,
    };
    report_write(&outcome);
    Ok(ExitCode::SUCCESS)
}

/// Stores a value of at most `min(max_size, 4 GiB - 1)` bytes read from `source`, streamed
/// into the shard as it is read ([`Shard::put_reader`]), so memory does not grow with it. A
/// value known to be larger (a regular file, or one redirected to standard input, whose size
/// `fstat` tells) is refused before anything is read; from a pipe or device, reading stops one
/// byte past the limit.
fn put_value(
    shard: &Shard,
    key: &[u8],
    source: impl Read + AsFd,
    name: &Path,
    max_size: u64,
) -> Result<WriteOutcome, Error> {
    let limit = max_size.min(MAX_VALUE_BYTES);
    let too_big = |size: String| {
        let which = if max_size <= MAX_VALUE_BYTES {
            "the --max-size limit; raise --max-size to store it"
        } else {
            "the largest value a shard entry can hold (4 GiB - 1 bytes)"
        };
        Error::InvalidInput(format!(
            "the value from {} is {size} bytes, over {limit} bytes, {which}",
            name.display()
        ))
    };
    let known = nix::sys::stat::fstat(source.as_fd())
        .ok()
        .filter(|st| SFlag::from_bits_truncate(st.st_mode).contains(SFlag::S_IFREG))
        .map(|st| st.st_size as u64);
    if let Some(size) = known.filter(|&size| size > limit) {
        return Err(too_big(size.to_string()));
    }
    let mut value = Limited {
        inner: source,
        left: limit,
        over: false,
    };
    let stored = shard.put_reader(key, &mut value);
    if let Err(Error::TooLarge { .. }) = &stored {
        // The shard would pass --max-size: say so in the value's terms when the value alone
        // does, which reading at most the few bytes of the record's header more tells.
        let _ = std::io::copy(&mut value, &mut std::io::sink());
    }
    match stored {
        Err(_) if value.over => Err(too_big(format!("more than {limit}"))),
        Err(Error::Os(e)) => Err(Error::Io {
            op: "reading",
            path: name.to_path_buf(),
            source: e,
        }),
        other => other,
    }
}

/// A reader that fails once more than `left` bytes were read from `inner`, noting `over`.
struct Limited<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // At the limit: one more byte says whether the value goes on.
            let mut one = [0u8; 1];
            if self.inner.read(&mut one)? == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(std::io::Error::other("the value is over the size limit"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
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

pub(crate) fn rm(shard: &Shard, keys: &[OsString]) -> Outcome {
    let snapshot = shard.snapshot();
    let missing: Vec<&[u8]> = keys
        .iter()
        .map(|k| k.as_bytes())
        .filter(|k| !snapshot.contains(k))
        .collect();
    report_write(&shard.remove(keys.iter().map(|k| k.as_bytes()))?);
    for key in &missing {
        eprintln!("warmshard: no such key: {}", show_key(key));
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A key for a message: as is when it is printable UTF-8, else with its bytes escaped
/// (`\xe9`, `\n`) so the message stays one line and shows the exact bytes.
pub(crate) fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => key.escape_ascii().to_string(),
    }
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
