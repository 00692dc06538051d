//! `warmshard`: the command-line tool over a shard file.
//!
//! Exit status: 0 success; 1 a miss (`get` of an absent key, `rm` of an absent key, `verify` of
//! an unsound shard); 2 an error (bad arguments, I/O, lock timeout, a value over the size limit,
//! a read command given a shard path whose directory does not exist).
//!
//! Keys are bytes end to end: they are taken as `OsString` arguments and stored as their Unix
//! bytes, so any key the shell can pass (or `import` stored from a file name) can be read and
//! removed. Messages name this tool's flags, not the library's methods ([`cli_error`],
//! [`cli_health`]).

mod entries;
mod hash_tree;
mod import;
mod inspect;
mod paths_cmd;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use warmshard::{Error, Health, Options, Shard};

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
  warmshard get greeting                      print it (exit 1 if absent, 2 on an error)
  warmshard import --replace /usr/share/doc   one entry per file, keyed by relative path
  warmshard ls --long | head                  sizes and keys, sorted
  warmshard ls -0 | xargs -0 -n1 echo         keys NUL-terminated (keys may hold newlines)
  warmshard stats --json                      figures as one JSON object
  warmshard verify                            check every entry's checksum and the index
  warmshard compact                           fold recent writes in, drop entries that fail
  warmshard hash-tree ~/src > MANIFEST        sha256sum-compatible, re-hashes only changes

Environment:
  WARMSHARD_PATH       default for --shard
  WARMSHARD=0          disable the cache: reads miss, writes do nothing and say so

Exit status: 0 success; 1 a miss (get/rm of an absent key, verify of an unsound shard);
2 an error, including get/ls/stats/verify given a --shard path whose directory does not exist.")]
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
    ///
    /// The value is streamed into the new shard file as it is read, so memory does not grow
    /// with its size. One larger than --max-size (or than 4 GiB, the format's limit for one
    /// value) is refused as soon as that many bytes have been read, or at once when its size is
    /// known beforehand (a file, or a file redirected to standard input); the shard is then
    /// left as it was. The write lock is taken only once the value has been read.
    #[command(after_help = "\
Examples:
  warmshard put greeting <<< 'hello'          the value is 'hello' and a newline
  warmshard put logo ./logo.png               the value is the file's bytes
  warmshard put \"$(printf 'caf\\351')\" < v     keys are bytes: non-UTF-8 keys work")]
    Put {
        /// The key: any bytes your shell can pass (taken as bytes, not decoded).
        key: OsString,
        /// File whose contents become the value; reads standard input when absent.
        file: Option<PathBuf>,
    },
    /// Print the value stored under KEY to standard output; exit 1 (no output) if absent.
    ///
    /// Exit status: 0 found; 1 absent (including an empty or ignored shard, with the reason on
    /// stderr); 2 an error, e.g. a --shard path whose directory does not exist.
    #[command(after_help = "\
Examples:
  warmshard get greeting                      prints the value, exit 0
  warmshard get greeting || echo miss         exit 1 when the key is absent")]
    Get {
        /// The key to look up (bytes, as passed).
        key: OsString,
    },
    /// Remove keys; exit 1 if any of them was absent.
    #[command(after_help = "\
Example:
  warmshard rm greeting logo                  removes both in one write")]
    Rm {
        /// Keys to remove (bytes, as passed).
        #[arg(required = true)]
        keys: Vec<OsString>,
    },
    /// Remove the shard file.
    #[command(after_help = "\
Example:
  warmshard --shard ./demo.shard clear        deletes ./demo.shard and its delta file")]
    Clear,
    /// Store every regular file under DIR, keyed by its path relative to DIR with '/' separators.
    ///
    /// Symlinks, FIFOs, sockets and devices are skipped. Non-UTF-8 file names are kept as bytes.
    /// Existing entries are kept unless --replace is given.
    #[command(after_help = "\
Examples:
  warmshard import ~/.zfunc                   merge every file in, keyed e.g. 'git/_git'
  warmshard import --replace ~/.zfunc         the shard holds exactly those files")]
    Import {
        /// Replace the whole shard with the imported files instead of merging them in.
        #[arg(long)]
        replace: bool,
        /// Directory to import.
        dir: PathBuf,
    },
    /// List keys sorted by their bytes: one per line, NUL-terminated (-0) or as JSON (--json).
    ///
    /// Plain output writes each key's raw bytes and a newline, so a key that contains a newline
    /// reads as two lines: use -0 or --json when keys may hold any byte.
    ///
    /// --json prints one JSON array of objects {"key": K, "value_bytes": N}. K is the key as a
    /// string; a key that is not valid UTF-8 has K with U+FFFD for the invalid bytes and an extra
    /// "key_bytes": [..] with its exact bytes as numbers (as hash-tree --json does for paths).
    #[command(after_help = "\
Examples:
  warmshard ls --long                         size<TAB>key per line
  warmshard ls -0 | xargs -0 -n1 printf '%s\\n'  safe for keys with newlines
  warmshard ls --json | jq -r '.[].key'       one JSON array")]
    Ls {
        /// Print each value's size in bytes before its key, separated by a tab.
        #[arg(long, short, conflicts_with = "json")]
        long: bool,
        /// End each key with a NUL byte instead of a newline.
        #[arg(short = '0', long = "null", conflicts_with = "json")]
        null: bool,
        /// Print one JSON array of {"key", "value_bytes"} objects (see above).
        #[arg(long)]
        json: bool,
    },
    /// Show figures about the shard: entries, bytes, format, producer, build time.
    #[command(after_help = "\
Examples:
  warmshard stats                             aligned text
  warmshard stats --json | jq .entries        one JSON object")]
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fully verify every entry (index structure and value checksums); exit 1 if unsound.
    #[command(after_help = "\
Example:
  warmshard verify || warmshard compact       repair a shard that fails")]
    Verify,
    /// Rewrite the shard as one file: fold in recent writes and drop entries that fail their
    /// checksum. Repairs a shard that `verify` rejects.
    #[command(after_help = "\
Example:
  warmshard compact                           prints the entries kept and the new size")]
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
    #[command(after_help = "\
Examples:
  warmshard hash-tree ~/src > MANIFEST        then: (cd ~/src && sha256sum -c ../MANIFEST)
  warmshard hash-tree --stats ~/src           files=N hashed=H ... on stderr")]
    HashTree {
        /// Directory to hash.
        dir: PathBuf,
        /// Print a JSON array of {"path", "sha256"} objects instead of sha256sum lines.
        #[arg(long)]
        json: bool,
        /// Print `files=N hashed=H bytes_hashed=B seconds=S` to stderr.
        #[arg(long)]
        stats: bool,
        /// Most threads for walking and hashing, this one included; more start only while
        /// directories or files wait for them [default: two per core, and this one].
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
            eprintln!("warmshard: {}", cli_error(&e));
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
    let reads_only = matches!(
        cli.command,
        Command::Get { .. } | Command::Ls { .. } | Command::Stats { .. } | Command::Verify
    );
    if reads_only && cli.shard.is_some() {
        refuse_missing_directory(&path)?;
    }
    let shard = Shard::open_with(&path, options)?;
    match cli.command {
        Command::Put { key, file } => {
            entries::put(&shard, key.as_bytes(), file.as_deref(), cli.max_size)
        }
        Command::Get { key } => entries::get(&shard, key.as_bytes()),
        Command::Rm { keys } => entries::rm(&shard, &keys),
        Command::Clear => entries::clear(&shard),
        Command::Import { replace, dir } => import::import(&shard, &dir, replace),
        Command::Ls { long, null, json } => {
            inspect::ls(&shard, inspect::LsFormat::new(long, null, json))
        }
        Command::Stats { json } => inspect::stats(&shard, json),
        Command::Verify => inspect::verify(&shard),
        Command::Compact => entries::compact(&shard),
        Command::PathCache(command) => paths_cmd::run(shard, command),
        Command::HashTree { .. } => unreachable!("handled above"),
    }
}

/// A read command given a shard path (by --shard or WARMSHARD_PATH) whose directory does not
/// exist is almost certainly a mistyped path: say so (exit 2) instead of answering "absent" (1).
/// The default path's directory is created by the first write, so there it is a plain miss.
fn refuse_missing_directory(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::InvalidInput(format!(
            "no shard at {}: the directory {} does not exist (check --shard or WARMSHARD_PATH; \
             the first put creates it)",
            path.display(),
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The message for a library error, in this tool's words: flags instead of `Options` methods.
pub(crate) fn cli_error(e: &Error) -> String {
    match e {
        Error::TooLarge { size, max } => format!(
            "the new shard would be {size} bytes, over the {max}-byte limit; raise --max-size"
        ),
        Error::LockTimeout { path, waited } => format!(
            "could not lock {} within {:.1} s: another process is writing; retry, or raise \
             --lock-timeout",
            path.display(),
            waited.as_secs_f64()
        ),
        Error::NoCacheDir => {
            "no per-user cache directory (set $XDG_CACHE_HOME or $HOME, or pass --shard PATH)"
                .to_string()
        }
        other => other.to_string(),
    }
}

/// A shard's health, in this tool's words: flags instead of `Options` methods.
pub(crate) fn cli_health(health: &Health) -> String {
    match health {
        Health::Disabled => "cache disabled by WARMSHARD=0".to_string(),
        Health::TooLarge { size, max } => format!(
            "shard file is {size} bytes, over the {max}-byte limit; raise --max-size to read it \
             (writes that keep entries fail until then; `import --replace` or `clear` \
             start over)"
        ),
        Health::ProducerMismatch { found, expected } => format!(
            "shard written by producer {found:?}, --producer requires {expected:?}; the next \
             write rebuilds it"
        ),
        other => other.to_string(),
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
        eprintln!("warmshard: ignoring shard file: {}", cli_health(health));
    }
}
