//! `import`: one entry per regular file under a directory.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use warmshard::{BulkMode, Error, Shard};

use crate::{Outcome, report_write};

pub(crate) fn import(shard: &Shard, dir: &Path, replace: bool) -> Outcome {
    let meta = std::fs::metadata(dir).map_err(|e| Error::Io {
        op: "reading",
        path: dir.to_path_buf(),
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a directory; import takes a directory",
            dir.display()
        )));
    }
    let mode = if replace {
        BulkMode::Replace
    } else {
        BulkMode::Merge
    };
    // Hidden unless stderr is a terminal; shows files and bytes imported so far.
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {pos} files, {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut writer = shard.bulk_writer(mode)?;
    let mut bytes = 0u64;
    let mut files = 0u64;
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            Error::Io {
                op: "walking",
                path,
                source: e.into(),
            }
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let value = std::fs::read(entry.path()).map_err(|e| Error::Io {
            op: "reading",
            path: entry.path().to_path_buf(),
            source: e,
        })?;
        writer.add(relative.as_os_str().as_bytes(), &value)?;
        files += 1;
        bytes += value.len() as u64;
        if files.is_multiple_of(256) {
            progress.set_position(files);
            progress.set_message(indicatif::HumanBytes(bytes).to_string());
        }
    }
    let outcome = writer.commit()?;
    progress.finish_and_clear();
    report_write(&outcome);
    if let warmshard::WriteOutcome::Committed {
        entries,
        file_bytes,
        ..
    } = outcome
    {
        eprintln!(
            "imported {files} files ({}); {} now holds {entries} entries in {}",
            indicatif::HumanBytes(bytes),
            shard.path().display(),
            indicatif::HumanBytes(file_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
