//! `warmshard`: the command-line tool over a shard file.
//!
//! Exit status: 0 success; 1 a miss (`get` of an absent key, `rm` of an absent key, `verify` of
//! an unsound shard); 2 an error (bad arguments, I/O, lock timeout).

mod entries;
mod hash_tree;
mod import;
mod inspect;
mod paths_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use warmshard::{Options, Shard};

/// A zero-copy, memory-mapped cache file for programs that start often.
///
/// A shard is one file that a program maps at startup and reads without deserializing. This tool
/// puts, gets, lists, imports and checks entries of a shard. Writes are atomic (a new file is
/// renamed over the old one under an exclusive lock) and never lose a concurrent writer's entry.
#[derive(Parser, Debug)]
#[command(name = "warmshard", version, max_term_width = 100)]
#[command(after_help = "\
Examples:
  warmshard put greeting <<< 'hello'          store stdin under the key 'greeting'
  warmshard get greeting                      print it (exit 1 if absent)
  warmshard import --replace /usr/share/doc   one entry per file, keyed by relative path
  warmshard ls --long | head                  sizes and keys, sorted
  warmshard stats --json                      figures as one JSON object
  warmshard verify                            check every entry's checksum and the index
  warmshard compact                           fold recent writes in, drop entries that fail
  warmshard hash-tree ~/src > MANIFEST        sha256sum-compatible, re-hashes only changes

Environment:
  WARMSHARD_PATH       default for --shard
  WARMSHARD=0          disable the cache: reads miss, writes do nothing and say so")]
struct Cli {
    /// Shard file to use [default: <user cache dir>/warmshard/default.shard]. Missing parent
    /// directories are created with mode 0700.
    #[arg(long, global = true, env = "WARMSHARD_PATH", value_name = "PATH")]
    shard: Option<PathBuf>,

    /// Producer string to require when reading and to record when writing (e.g. "myshell
    /// 1.4.2"). Without it, any producer is read and writes keep the shard's current one.
    #[arg(long, global = true, env = "WARMSHARD_PRODUCER", value_name = "NAME")]
    producer: Option<String>,

    /// Generation of this writer; entries written under an older generation read as misses.
    #[arg(long, global = true, default_value_t = 0, value_name = "N")]
    generation: u64,

    /// Seconds a write waits for another writer's lock before failing.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    lock_timeout: f64,

    /// Skip fsync of the new file and its directory (faster; a power cut may lose the write).
    #[arg(long, global = true)]
    no_fsync: bool,

    /// Largest shard file read or written, in bytes.
    #[arg(long, global = true, default_value_t = warmshard::DEFAULT_MAX_SIZE, value_name = "BYTES")]
    max_size: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a value: the contents of FILE, or standard input when FILE is absent.
    Put {
        /// The key (any bytes your shell can pass).
        key: String,
        /// File whose contents become the value; reads standard input when absent.
        file: Option<PathBuf>,
    },
    /// Print the value stored under KEY to standard output; exit 1 (no output) if absent.
    Get {
        /// The key to look up.
        key: String,
    },
    /// Remove keys; exit 1 if any of them was absent.
    Rm {
        /// Keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove the shard file.
    Clear,
    /// Store every regular file under DIR, keyed by its path relative to DIR with '/' separators.
    ///
    /// Symlinks, FIFOs, sockets and devices are skipped. Non-UTF-8 file names are kept as bytes.
    /// Existing entries are kept unless --replace is given.
    Import {
        /// Replace the whole shard with the imported files instead of merging them in.
        #[arg(long)]
        replace: bool,
        /// Directory to import.
        dir: PathBuf,
    },
    /// List keys, one per line, sorted by their bytes.
    Ls {
        /// Print each value's size in bytes before its key, separated by a tab.
        #[arg(long, short)]
        long: bool,
    },
    /// Show figures about the shard: entries, bytes, format, producer, build time.
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fully verify every entry (index structure and value checksums); exit 1 if unsound.
    Verify,
    /// Rewrite the shard as one file: fold in recent writes and drop entries that fail their
    /// checksum. Repairs a shard that `verify` rejects.
    Compact,
    /// Print a sha256sum-compatible manifest of DIR, re-hashing only files that changed.
    ///
    /// Each regular file's SHA-256 is cached with its stat stamp (device, inode, size, mtime,
    /// ctime, mode); a later run re-reads only files whose stamp differs, so a warm run on an
    /// unchanged tree reads no file content. Each directory's listing is cached too, with the
    /// directory's own stamp: an unchanged directory is not even read. Symlinks, FIFOs, sockets
    /// and devices are skipped and never opened. Verify with: cd DIR && sha256sum -c MANIFEST.
    ///
    /// The cache lives in <cache dir>/warmshard/trees/<sha256 of the root>.shard unless --shard is
    /// given on the command line (WARMSHARD_PATH is not used here).
    ///
    /// Exit status: 0 the manifest is complete and cached; 1 a file or directory below DIR could
    /// not be read (left out of the manifest, named on stderr); 2 an error, nothing printed (DIR
    /// itself unreadable, bad arguments); 3 the manifest is complete but its cache could not be
    /// written (lock timeout, --max-size too small...; the reason on stderr).
    #[command(name = "hash-tree")]
    HashTree {
        /// Directory to hash.
        dir: PathBuf,
        /// Print a JSON array of {"path", "sha256"} objects instead of sha256sum lines.
        #[arg(long)]
        json: bool,
        /// Print `files=N hashed=H bytes_hashed=B seconds=S` to stderr.
        #[arg(long)]
        stats: bool,
        /// Threads for walking and hashing [default: all cores].
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Read every directory, even one whose stamp is unchanged since the last run (for
        /// filesystems whose directory timestamps do not change when entries come and go).
        #[arg(long)]
        no_listing_cache: bool,
        /// Leave out paths matching PATTERN (repeatable): a name at any depth (.git, *.o), a
        /// relative path if it holds a '/' (build/out), or a root entry with a leading '/'
        /// (/target). '*' and '?' do not cross '/'. Excluded directories are never read.
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<std::ffi::OsString>,
    },
    /// Maintain a path cache (a shard written by warmshard::paths::PathCache).
    #[command(name = "path-cache", subcommand)]
    PathCache(paths_cmd::PathCacheCommand),
}

/// A command's result: the exit status to return.
pub(crate) type Outcome = Result<ExitCode, warmshard::Error>;

fn main() -> ExitCode {
    let matches = hash_tree::with_hash_tree_help(Cli::command()).get_matches();
    let shard_on_command_line = matches.value_source("shard") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, shard_on_command_line) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warmshard: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli, shard_on_command_line: bool) -> Outcome {
    let lock_timeout = Duration::try_from_secs_f64(cli.lock_timeout).map_err(|_| {
        warmshard::Error::InvalidInput("--lock-timeout must be a positive number of seconds".into())
    })?;
    let mut options = Options::from_env()
        .generation(cli.generation)
        .lock_timeout(lock_timeout)
        .durable(!cli.no_fsync)
        .max_size(cli.max_size);
    if let Some(producer) = &cli.producer {
        options = options.producer(producer.clone());
    }
    if let Command::HashTree {
        dir,
        json,
        stats,
        threads,
        no_listing_cache,
        exclude,
    } = cli.command
    {
        let shard = cli.shard.filter(|_| shard_on_command_line);
        return hash_tree::run(hash_tree::HashTreeArgs {
            dir,
            shard,
            json,
            stats,
            threads,
            listing_cache: !no_listing_cache,
            exclude,
            options,
        });
    }
    let path = match &cli.shard {
        Some(path) => path.clone(),
        None => warmshard::default_path("default")?,
    };
    let shard = Shard::open_with(&path, options)?;
    match cli.command {
        Command::Put { key, file } => entries::put(&shard, key.as_bytes(), file.as_deref()),
        Command::Get { key } => entries::get(&shard, key.as_bytes()),
        Command::Rm { keys } => entries::rm(&shard, &keys),
        Command::Clear => entries::clear(&shard),
        Command::Import { replace, dir } => import::import(&shard, &dir, replace),
        Command::Ls { long } => inspect::ls(&shard, long),
        Command::Stats { json } => inspect::stats(&shard, json),
        Command::Verify => inspect::verify(&shard),
        Command::Compact => entries::compact(&shard),
        Command::PathCache(command) => paths_cmd::run(shard, command),
        Command::HashTree { .. } => unreachable!("handled above"),
    }
}

/// Says on stderr that a write did nothing because the cache is disabled, what a committed
/// write dropped without being asked to (a rebuild over a foreign or damaged shard, older
/// generations, bad checksums), and the clean-ups that failed after it committed.
pub(crate) fn report_write(outcome: &warmshard::WriteOutcome) {
    if *outcome == warmshard::WriteOutcome::Disabled {
        eprintln!("warmshard: cache disabled by WARMSHARD=0; nothing was written");
    }
    for dropped in outcome.dropped() {
        eprintln!("warmshard: {dropped}");
    }
    for warning in outcome.warnings() {
        eprintln!("warmshard: warning: {warning}");
    }
}

/// Says on stderr why a shard file that exists was ignored (it reads as empty).
pub(crate) fn warn_if_ignored(snapshot: &warmshard::Snapshot) {
    let health = snapshot.health();
    if health.is_ignored_file() {
        eprintln!("warmshard: ignoring shard file: {health}");
    }
}
