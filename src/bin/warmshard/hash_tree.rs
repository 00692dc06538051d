//! `hash-tree`: a sha256sum-compatible manifest of a directory, re-hashing only what changed.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use warmshard::Error;
use warmshard::paths::{HashTreeOptions, hash_tree, hash_tree_to};

use crate::Outcome;

/// Exit status when the manifest was printed in full but the cache could not be written.
pub(crate) const CACHE_NOT_WRITTEN: u8 = 3;

pub(crate) struct HashTreeArgs {
    pub dir: PathBuf,
    pub shard: Option<PathBuf>,
    pub json: bool,
    pub stats: bool,
    pub threads: Option<usize>,
    pub listing_cache: bool,
    pub exclude: Vec<std::ffi::OsString>,
    pub options: warmshard::Options,
}

pub(crate) fn run(args: HashTreeArgs) -> Outcome {
    let mut options = HashTreeOptions::default()
        .shard_options(args.options)
        .listing_cache(args.listing_cache)
        .exclude(warmshard::paths::Exclude::new(
            args.exclude.iter().map(|p| p.as_bytes()),
        ));
    options.shard = args.shard;
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    let progress = delayed_progress();
    let bar = progress.clone();
    let (files, hashed) = (AtomicU64::new(0), AtomicU64::new(0));
    options.progress = Some(Box::new(move |seen, bytes| {
        // Reports come from several threads: show the highest counts yet.
        let seen = files.fetch_max(seen, Ordering::Relaxed).max(seen);
        let bytes = hashed.fetch_max(bytes, Ordering::Relaxed).max(bytes);
        bar.tick_with(seen, bytes);
    }));
    // The manifest is printed while the tree is walked, unless the progress bar may share a
    // terminal with it (then it is printed once the bar is gone).
    let bar_may_share_terminal = progress.terminal && std::io::stdout().is_terminal();
    let stream = !args.json && !bar_may_share_terminal;
    let mut report = if stream {
        let mut stdout = std::io::stdout().lock();
        hash_tree_to(&args.dir, &options, &mut stdout)?
    } else {
        hash_tree(&args.dir, &options)?
    };
    progress.finish();

    let mut stdout = std::io::stdout().lock();
    let written = if stream {
        report.output_error.take().map_or(Ok(()), Err)
    } else if args.json {
        let mut out = Vec::new();
        let mut lines: Vec<serde_json::Value> = Vec::with_capacity(report.manifest.len());
        report.manifest.for_each(|line| {
            let path = line.path();
            let mut object = serde_json::json!({
                "path": String::from_utf8_lossy(&path),
                "sha256": line.hex(),
            });
            if std::str::from_utf8(&path).is_err() {
                object["path_bytes"] = serde_json::json!(path);
            }
            lines.push(object);
        });
        serde_json::to_writer(&mut out, &lines).map_err(|e| Error::InvalidInput(e.to_string()))?;
        out.push(b'\n');
        stdout.write_all(&out).and_then(|()| stdout.flush())
    } else {
        report.manifest.write_sha256sum_to(&mut stdout)
    };
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(Error::Io {
                op: "writing",
                path: "standard output".into(),
                source: e,
            });
        }
        _ => {}
    }
    for error in &report.errors {
        eprintln!("warmshard: hash-tree: {error}");
    }
    if args.stats {
        eprintln!(
            "files={} hashed={} bytes_hashed={} seconds={:.3}",
            report.files,
            report.hashed,
            report.bytes_hashed,
            report.elapsed.as_secs_f64()
        );
    }
    if let Some(error) = &report.cache_error {
        eprintln!(
            "warmshard: hash-tree: the manifest is complete, but its cache {} was not \
             updated (the next run will hash more): {error}",
            report.shard_path.display()
        );
    }
    // 1 (a file left out) says more about the output than 3 (only the cache missed a write).
    let code = if !report.errors.is_empty() {
        ExitCode::from(1)
    } else if report.cache_error.is_some() {
        ExitCode::from(CACHE_NOT_WRITTEN)
    } else {
        ExitCode::SUCCESS
    };
    // The process ends here: handing tens of thousands of listings back to the allocator one by
    // one would only delay the exit.
    std::mem::forget(report);
    Ok(code)
}

/// A progress bar on stderr that appears only on a terminal and only after a second.
#[derive(Clone)]
struct DelayedProgress {
    bar: ProgressBar,
    started: Instant,
    /// Whether stderr is a terminal (asked once).
    terminal: bool,
    /// Whether the bar has been given its terminal.
    shown: Arc<AtomicBool>,
}

fn delayed_progress() -> DelayedProgress {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    DelayedProgress {
        bar,
        started: Instant::now(),
        terminal: std::io::stderr().is_terminal(),
        shown: Arc::new(AtomicBool::new(false)),
    }
}

impl DelayedProgress {
    fn tick_with(&self, files: u64, bytes: u64) {
        // Called once per directory: stay out of the terminal code until the bar is due.
        if !self.terminal || self.started.elapsed() < Duration::from_secs(1) {
            return;
        }
        if !self.shown.swap(true, Ordering::Relaxed) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        if bytes > 0 {
            self.bar.set_message(format!(
                "{files} files, {} hashed",
                indicatif::HumanBytes(bytes)
            ));
        } else {
            self.bar.set_message(format!("{files} files"));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `cmd` with the help of `hash-tree`'s `--shard` said as it applies there: its cache is not
/// the default shard, and WARMSHARD_PATH is not read; `--producer` is hidden (hash-tree records
/// its own).
pub(crate) fn with_hash_tree_help(mut cmd: clap::Command) -> clap::Command {
    // Global options reach the subcommands when the command is built; `mut_args` then keeps
    // every argument in place (the built key map indexes them by position).
    cmd.build();
    cmd.mut_subcommand("hash-tree", |sub| {
        sub.mut_args(|arg| {
            // hash-tree records its own producer.
            if arg.get_id() == "producer" {
                return arg.hide(true);
            }
            if arg.get_id() != "shard" {
                return arg;
            }
            arg.help(
                "Cache shard to use [default: <user cache dir>/warmshard/trees/<sha256 of the \
                 root>.shard]. Only a path given on the command line is used: WARMSHARD_PATH \
                 is ignored here",
            )
            .long_help(None)
            .hide_env(true)
        })
    })
}
