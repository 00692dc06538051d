//! `path-cache`: maintenance of a shard written by `warmshard::paths::PathCache`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use warmshard::paths::{PathCache, PruneOptions};
use warmshard::{Error, Shard};

use crate::{Outcome, report_write};

#[derive(Subcommand, Debug)]
pub(crate) enum PathCacheCommand {
    /// Drop the entries of files that are gone or changed (they can never be hits again), and
    /// optionally those older than --max-age-days or beyond --max-bytes (written longest ago
    /// first). Keys are lstat'ed as paths: run it from the directory the cache's users run in if
    /// their keys are relative. Prints what it dropped on stderr.
    Prune {
        /// Also drop entries not rewritten for this many days.
        #[arg(long, value_name = "DAYS")]
        max_age_days: Option<f64>,
        /// Also drop the entries written longest ago until the cache fits in this many bytes.
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// Keep entries of files gone or changed (prune by age or size only).
        #[arg(long)]
        keep_stale: bool,
    },
}

pub(crate) fn run(shard: Shard, command: PathCacheCommand) -> Outcome {
    let PathCacheCommand::Prune {
        max_age_days,
        max_bytes,
        keep_stale,
    } = command;
    if shard
        .snapshot()
        .producer()
        .starts_with("warmshard hash-tree")
    {
        return Err(Error::InvalidInput(format!(
            "{} is a hash-tree cache, whose keys are relative to its tree; hash-tree prunes it on \
             every run",
            shard.path().display()
        )));
    }
    let mut options = PruneOptions::default();
    options.stale = !keep_stale;
    if let Some(days) = max_age_days {
        let age = Duration::try_from_secs_f64(days * 86_400.0)
            .map_err(|_| Error::InvalidInput("--max-age-days must be a positive number".into()))?;
        options = options.max_age(age);
    }
    if let Some(bytes) = max_bytes {
        options = options.max_bytes(bytes);
    }
    let cache = PathCache::from_shard(shard);
    let report = cache.prune(&options)?;
    report_write(&report.outcome);
    eprintln!(
        "examined {} entries: dropped {} (gone {}, changed {}, old {}, for size {}), kept {} in {:.1} ms",
        report.examined,
        report.dropped(),
        report.gone,
        report.changed,
        report.old,
        report.for_size,
        report.kept,
        report.elapsed.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
