//! Workload W1 (WORKLOADS.md) on warmshard and every peer, in one run, printed as one markdown
//! table of figures, one of warmshard's ratios to each peer, and one of the targets.
//!
//! ```text
//! cargo bench --bench peers                          full run (a few minutes on 2 cores)
//! WARMSHARD_BENCH_QUICK=1 cargo bench --bench peers  smoke run: small N, few iterations
//! WARMSHARD_BENCH_BIG=1 cargo bench --bench peers    adds the 1 GiB-of-values writer RSS figure
//! WARMSHARD_BENCH_DIR=/some/dir                      where stores go (default: a temp dir)
//! ```
//! Run without `--bench` (as `cargo test --all-targets` does), it only checks that every peer
//! stores and returns the W1 data correctly, on a tiny data set, and times nothing.
//!
//! Every figure is a median. Stores live in one directory per peer; the startup figure spawns
//! `examples/startup_probe.rs`, built here with `cargo build --release --example startup_probe`.

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::data::{self, DataSet};
use common::{
    ENGINES, Lmdb, Peer, PhysicalLimit, PhysicalTrusted, Probe, Reader, Redb, Result, RkyvFull,
    RkyvFullTyped, RkyvInPlace, Sqlite, Warmshard, WarmshardTwoLines, WarmshardTyped, fresh_dir,
};

/// Keys for put_one: far above any store's entry count, so always new.
const PUT_KEY_BASE: u64 = 100_000_000;

struct Config {
    quick: bool,
    big: bool,
    /// The headline N: get, prewarm, put_one, size and RSS figures.
    n: u64,
    /// The Ns of the open + first get figure (includes `n`).
    open_ns: Vec<u64>,
    gets: usize,
    get_rounds: usize,
    open_reps: usize,
    spawns: usize,
    prewarm_reps: usize,
    put_reps: usize,
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Config {
    fn from_env() -> Config {
        let big = flag("WARMSHARD_BENCH_BIG");
        if flag("WARMSHARD_BENCH_QUICK") {
            Config {
                quick: true,
                big,
                n: 4_096,
                open_ns: vec![1_024, 4_096],
                gets: 100_000,
                get_rounds: 1,
                open_reps: 20,
                spawns: 20,
                prewarm_reps: 1,
                put_reps: 5,
            }
        } else {
            Config {
                quick: false,
                big,
                n: 16_384,
                open_ns: vec![1_024, 16_384, 262_144],
                gets: 1_000_000,
                get_rounds: 3,
                open_reps: 200,
                spawns: 200,
                prewarm_reps: 11,
                put_reps: 50,
            }
        }
    }
}

/// One peer's figures; `None` where the peer has no such figure.
#[derive(Clone, Debug, Default)]
struct Row {
    name: &'static str,
    label: &'static str,
    get_hit_ns: Option<f64>,
    get_miss_ns: Option<f64>,
    get_chained_ns: Option<f64>,
    open_us: Vec<Option<f64>>,
    startup_us: Option<f64>,
    startup_cpu_us: Option<f64>,
    startup_inside_us: Option<f64>,
    prewarm_ms: Option<f64>,
    put_ms: Option<f64>,
    put_nosync_ms: Option<f64>,
    file_bytes: Option<u64>,
    rss_kib: Option<u64>,
    big_rss_kib: Option<u64>,
    /// The headline store and its probe, for the startup figure.
    startup_args: Option<(PathBuf, Probe)>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    assert!(!xs.is_empty());
    xs.sort_by(|a, b| a.total_cmp(b));
    let mid = xs.len() / 2;
    if !xs.len().is_multiple_of(2) {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed().as_secs_f64(), out))
}

fn pairs(set: &DataSet) -> impl Iterator<Item = (&[u8], &[u8])> {
    set.entries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
}

/// Every entry of `set` (or a stride of them) reads back equal, and absent keys miss.
fn verify<P: Peer>(dir: &Path, set: &DataSet) -> Result<()> {
    if !P::GETS {
        return Ok(());
    }
    let reader = P::open(dir)?;
    let step = (set.entries.len() / 2_000).max(1);
    for (key, value) in set.entries.iter().step_by(step) {
        if reader.get(key, |v| v == value.as_slice()) != Some(true) {
            let key = String::from_utf8_lossy(key);
            return Err(format!("{}: wrong or missing value for {key}", P::NAME).into());
        }
    }
    for key in set.absent.iter().step_by(step) {
        if reader.get(key, |_| ()).is_some() {
            return Err(format!("{}: absent key found", P::NAME).into());
        }
    }
    Ok(())
}

/// An open reader of any peer, timed a round of lookups at a time (the dynamic call is per
/// round; the lookups inside are statically dispatched).
trait GetRounds {
    /// ns per get over `keys`; checks the number of hits.
    fn round(&self, keys: &[&[u8]], expected_hits: usize) -> Result<f64>;
    /// ns per get of chained hits: which key comes next depends on the value just read (as a
    /// start reads a function, then the next one it needs), so the processor cannot overlap
    /// one lookup's cache misses with the next one's: the figure is a lookup's latency, where
    /// [`round`](GetRounds::round) measures throughput. Every key of `keys` must be present.
    fn chained_round(&self, keys: &[&[u8]]) -> Result<f64>;
}

struct Opened<R>(R);

impl<R: Reader> GetRounds for Opened<R> {
    fn round(&self, keys: &[&[u8]], expected_hits: usize) -> Result<f64> {
        let start = Instant::now();
        let mut sum = 0usize;
        let mut hits = 0usize;
        for key in keys {
            if let Some(x) = self.0.get(black_box(key), |v| v.len() + usize::from(v[0])) {
                sum = sum.wrapping_add(x);
                hits += 1;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        black_box(sum);
        if hits != expected_hits {
            return Err(format!("{hits} hits, expected {expected_hits}").into());
        }
        Ok(elapsed * 1e9 / keys.len() as f64)
    }

    fn chained_round(&self, keys: &[&[u8]]) -> Result<f64> {
        let start = Instant::now();
        let (mut next, mut gets, mut sum) = (0usize, 0usize, 0usize);
        while let Some(key) = keys.get(next) {
            let x = self
                .0
                .get(black_box(key), |v| v.len() + usize::from(v[0]))
                .ok_or("a chained lookup missed")?;
            sum = sum.wrapping_add(x);
            // The next key's index depends on the value read: one or two keys on.
            next += 1 + (x & 1);
            gets += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        black_box(sum);
        Ok(elapsed * 1e9 / gets.max(1) as f64)
    }
}

/// A writer of any peer, one durable (or not) insert at a time.
trait PutOne {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
}

struct Writing<P: Peer>(P::Writer);

impl<P: Peer> PutOne for Writing<P> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        P::put_one(&mut self.0, key, value)
    }
}

/// One peer, as plain function pointers to its monomorphized operations, so that the phases
/// below can interleave peers round by round: load on this shared machine then drifts over all
/// of them alike instead of favouring whichever peer ran in a quiet minute.
struct Engine {
    name: &'static str,
    label: &'static str,
    gets: bool,
    writes: bool,
    build: fn(&Path, &DataSet) -> Result<()>,
    verify: fn(&Path, &DataSet) -> Result<()>,
    probe: fn(&Path, &[u8]) -> Result<Probe>,
    open_get: fn(&Path, &Probe) -> Result<Option<u8>>,
    reader: fn(&Path) -> Result<Box<dyn GetRounds>>,
    prewarm: fn(&Path, &DataSet) -> Result<()>,
    writer: fn(&Path, bool) -> Result<Box<dyn PutOne>>,
    disk_bytes: fn(&Path) -> Result<u64>,
}

impl Engine {
    fn of<P: Peer + 'static>() -> Engine {
        Engine {
            name: P::NAME,
            label: P::LABEL,
            gets: P::GETS,
            writes: P::WRITES,
            build: |dir, set| P::build(dir, pairs(set)),
            verify: verify::<P>,
            probe: P::probe,
            open_get: P::open_get,
            reader: |dir| Ok(Box::new(Opened(P::open(dir)?))),
            prewarm: |dir, set| P::prewarm(dir, pairs(set), true),
            writer: |dir, durable| Ok(Box::new(Writing::<P>(P::writer(dir, durable)?))),
            disk_bytes: P::disk_bytes,
        }
    }
}

fn engines() -> Vec<Engine> {
    let engines = vec![
        Engine::of::<Warmshard>(),
        Engine::of::<PhysicalLimit>(),
        Engine::of::<PhysicalTrusted>(),
        Engine::of::<RkyvInPlace>(),
        Engine::of::<RkyvFull>(),
        Engine::of::<WarmshardTyped>(),
        Engine::of::<WarmshardTwoLines>(),
        Engine::of::<RkyvFullTyped>(),
        Engine::of::<Lmdb>(),
        Engine::of::<Redb>(),
        Engine::of::<Sqlite>(),
    ];
    debug_assert!(engines.iter().map(|e| e.name).eq(ENGINES.iter().copied()));
    engines
}

/// A fixed-seed shuffle of `0..n`, a new order each round.
fn shuffled(n: usize, rng: &mut data::Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i as u64) as usize);
    }
    order
}

/// Figure 2 (and the stores of figures 1 and 3): builds every peer's store at each N, checks
/// it, then times open + first get, the peers interleaved in a new random order each round.
fn open_figures(
    cfg: &Config,
    engines: &[Engine],
    sets: &[DataSet],
    base: &Path,
    rows: &mut [Row],
) -> Result<()> {
    let mut rng = data::Rng::new(data::SEED ^ 3);
    for (set, &n) in sets.iter().zip(&cfg.open_ns) {
        let (key, value) = &set.entries[set.entries.len() / 2];
        let mut probes = Vec::new();
        for e in engines {
            let dir = base.join(e.name).join(format!("n{n}"));
            eprintln!("  {}: building N={n}", e.name);
            fresh_dir(&dir)?;
            (e.build)(&dir, set)?;
            (e.verify)(&dir, set)?;
            let probe = (e.probe)(&dir, key)?;
            if (e.open_get)(&dir, &probe)? != Some(value[0]) {
                return Err(format!("{}: open_get returned a wrong value", e.name).into());
            }
            probes.push((dir, probe));
        }
        eprintln!("  open + first get, N={n}: {} rounds", cfg.open_reps);
        let mut times = vec![Vec::new(); engines.len()];
        for round in 0..cfg.open_reps + 3 {
            for i in shuffled(engines.len(), &mut rng) {
                let (dir, probe) = &probes[i];
                let (t, _) = timed(|| (engines[i].open_get)(dir, probe))?;
                if round >= 3 {
                    times[i].push(t * 1e6);
                }
            }
        }
        for ((row, t), (dir, probe)) in rows.iter_mut().zip(times).zip(probes) {
            row.open_us.push(Some(median(t)));
            if n == cfg.n {
                row.startup_args = Some((dir, probe));
            } else if n > cfg.n {
                std::fs::remove_dir_all(&dir)?;
            }
        }
    }
    Ok(())
}

/// Lookups per timed chunk of the get figure.
const GET_CHUNKS: usize = 10;

/// Figure 1: gets on the headline stores, already open (plain, 50% miss, and chained). The `cfg.gets` lookups are cut into
/// [`GET_CHUNKS`] chunks, each timed on every peer in a fresh random order, `cfg.get_rounds`
/// times over: the median is over `GET_CHUNKS * get_rounds` timings, so a burst of load from
/// another process on this shared machine spoils a few chunks, not a peer's whole figure.
fn get_figures(cfg: &Config, engines: &[Engine], set: &DataSet, rows: &mut [Row]) -> Result<()> {
    let chunk = cfg.gets / GET_CHUNKS;
    let hits: Vec<_> = (0..GET_CHUNKS as u64)
        .map(|c| set.lookups(chunk, 100, 100 + c))
        .collect();
    let mixes: Vec<_> = (0..GET_CHUNKS as u64)
        .map(|c| set.lookups(chunk, 50, 200 + c))
        .collect();
    let mut readers = Vec::new();
    for (e, row) in engines.iter().zip(rows.iter()) {
        let reader = if e.gets {
            let (dir, _) = row.startup_args.as_ref().expect("headline store built");
            let reader = (e.reader)(dir)?;
            reader.round(&hits[0].0, hits[0].1)?; // warm-up
            Some(reader)
        } else {
            None
        };
        readers.push((reader, Vec::new(), Vec::new(), Vec::new()));
    }
    let mut rng = data::Rng::new(data::SEED ^ 4);
    for round in 0..cfg.get_rounds {
        eprintln!("  gets: round {}/{}", round + 1, cfg.get_rounds);
        for ((hit_keys, hit_count), (mix_keys, mix_count)) in hits.iter().zip(&mixes) {
            for i in shuffled(engines.len(), &mut rng) {
                if let (Some(reader), hit, mix, _) = &mut readers[i] {
                    hit.push(reader.round(hit_keys, *hit_count)?);
                    mix.push(reader.round(mix_keys, *mix_count)?);
                }
            }
            // In a pass of its own, so that other peers' rounds come between a peer's plain
            // rounds and its chained one, as they come before the plain ones.
            for i in shuffled(engines.len(), &mut rng) {
                if let (Some(reader), _, _, chained) = &mut readers[i] {
                    chained.push(reader.chained_round(hit_keys)?);
                }
            }
        }
    }
    for (row, (_, hit, mix, chained)) in rows.iter_mut().zip(readers) {
        if !hit.is_empty() {
            row.get_hit_ns = Some(median(hit));
            row.get_miss_ns = Some(median(mix));
            row.get_chained_ns = Some(median(chained));
        }
    }
    Ok(())
}

/// Figures 4, 5 and 6a: durable prewarm into a fresh store (rounds interleaved), the size it
/// leaves, then put_one into that N-entry store, durable and not (interleaved put by put).
fn write_figures(
    cfg: &Config,
    engines: &[Engine],
    set: &DataSet,
    base: &Path,
    rows: &mut [Row],
) -> Result<()> {
    let dirs: Vec<PathBuf> = engines
        .iter()
        .map(|e| base.join(e.name).join("prewarm"))
        .collect();
    let writing: Vec<usize> = (0..engines.len()).filter(|&i| engines[i].writes).collect();
    let mut rng = data::Rng::new(data::SEED ^ 5);
    let mut times = vec![Vec::new(); engines.len()];
    for round in 0..cfg.prewarm_reps {
        eprintln!("  prewarm: round {}/{}", round + 1, cfg.prewarm_reps);
        for k in shuffled(writing.len(), &mut rng) {
            let i = writing[k];
            fresh_dir(&dirs[i])?;
            times[i].push(timed(|| (engines[i].prewarm)(&dirs[i], set))?.0 * 1e3);
        }
    }
    for &i in &writing {
        rows[i].prewarm_ms = Some(median(std::mem::take(&mut times[i])));
        rows[i].file_bytes = Some((engines[i].disk_bytes)(&dirs[i])?);
    }
    let mut next = PUT_KEY_BASE;
    for durable in [true, false] {
        eprintln!("  put_one, durable={durable}: {} rounds", cfg.put_reps);
        let mut writers = Vec::new();
        for &i in &writing {
            writers.push((i, (engines[i].writer)(&dirs[i], durable)?, Vec::new()));
        }
        for _ in 0..cfg.put_reps {
            let (key, value) = (data::key(next), data::value(next));
            next += 1;
            for k in shuffled(writers.len(), &mut rng) {
                let (_, writer, times) = &mut writers[k];
                times.push(timed(|| writer.put(&key, &value))?.0 * 1e3);
            }
        }
        for (i, _, times) in writers {
            let put = Some(median(times));
            if durable {
                rows[i].put_ms = put;
            } else {
                rows[i].put_nosync_ms = put;
            }
        }
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// Figure 6b: each writer's peak RSS, in a child process that streams the entries.
fn rss_figures(
    cfg: &Config,
    engines: &[Engine],
    bin: &Path,
    base: &Path,
    rows: &mut [Row],
) -> Result<()> {
    for (e, row) in engines.iter().zip(rows.iter_mut()) {
        if !e.writes {
            continue;
        }
        eprintln!("  {}: writer RSS", e.name);
        row.rss_kib = Some(child_prewarm_rss(
            bin,
            e.name,
            &base.join(e.name).join("rss"),
            cfg.n,
        )?);
        if cfg.big {
            let n = data::entries_for_value_bytes(1 << 30);
            eprintln!("  {}: writer RSS, 1 GiB of values (N={n})", e.name);
            let dir = base.join(e.name).join("big");
            row.big_rss_kib = Some(child_prewarm_rss(bin, e.name, &dir, n)?);
        }
    }
    Ok(())
}

/// Runs a durable prewarm of N entries in a fresh process; returns its peak RSS (VmHWM) in KiB.
fn child_prewarm_rss(bin: &Path, engine: &str, dir: &Path, n: u64) -> Result<u64> {
    fresh_dir(dir)?;
    let out = Command::new(bin)
        .args(["prewarm", engine])
        .arg(dir)
        .arg(n.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("prewarm probe for {engine} failed: {}", out.status).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let peak = text
        .split_whitespace()
        .next()
        .ok_or("no output from the probe")?;
    std::fs::remove_dir_all(dir)?;
    Ok(peak.parse()?)
}

/// Builds `examples/startup_probe.rs` and returns its path.
fn build_probe() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("WARMSHARD_PROBE_BIN") {
        return Ok(bin.into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--release", "--example", "startup_probe"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("cargo build of startup_probe failed: {}", out.status).into());
    }
    for line in String::from_utf8(out.stdout)?.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["target"]["name"] == "startup_probe"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    Err("cargo did not report the startup_probe executable".into())
}

fn probe_args(engine: &str, dir: &Path, probe: &Probe) -> Vec<String> {
    vec![
        "open".into(),
        engine.into(),
        dir.display().to_string(),
        String::from_utf8(probe.key.clone()).expect("W1 keys are ASCII"),
        probe.pages[0].to_string(),
        probe.pages[1].to_string(),
    ]
}

/// CPU time (user + system) of every waited-for child so far, in µs.
fn children_cpu_us() -> f64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is always valid.
    let usage = unsafe {
        nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let us = |t: nix::libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Spawns the probe and waits: wall µs, CPU µs of the child, and the µs the child itself
/// measured around its open + get.
fn spawn(bin: &Path, args: &[String]) -> Result<[f64; 3]> {
    let cpu = children_cpu_us();
    let start = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let wall = start.elapsed().as_secs_f64() * 1e6;
    if !out.status.success() {
        return Err(format!("probe {args:?} exited with {}", out.status).into());
    }
    let inside: f64 = String::from_utf8(out.stdout)?.trim().parse()?;
    Ok([wall, children_cpu_us() - cpu, inside / 1e3])
}

/// Figure 3: every engine's probe and the do-nothing baseline, interleaved in a new random
/// order each round. Wall time is the figure; the child's CPU time is shown beside it because
/// on a shared machine it is much less noisy (it excludes waiting for a core).
fn startup(cfg: &Config, bin: &Path, rows: &mut [Row]) -> Result<()> {
    let mut jobs: Vec<(Option<usize>, Vec<String>)> = vec![(None, vec!["none".to_string()])];
    for (i, row) in rows.iter().enumerate() {
        if let Some((dir, probe)) = &row.startup_args {
            jobs.push((Some(i), probe_args(row.name, dir, probe)));
        }
    }
    let mut rng = data::Rng::new(data::SEED ^ 6);
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; jobs.len()];
    for round in 0..cfg.spawns + 5 {
        for j in shuffled(jobs.len(), &mut rng) {
            let figures = spawn(bin, &jobs[j].1)?;
            if round >= 5 {
                for (list, x) in times[j].iter_mut().zip(figures) {
                    list.push(x);
                }
            }
        }
    }
    let mut medians = times.into_iter().map(|lists| lists.map(median));
    let [base_wall, base_cpu, _] = medians.next().expect("baseline job");
    eprintln!(
        "  startup baseline (probe doing nothing): {base_wall:.0} µs wall, {base_cpu:.0} µs CPU"
    );
    for ((i, _), [wall, cpu, inside]) in jobs[1..].iter().zip(medians) {
        let row = &mut rows[i.expect("engine job")];
        row.startup_us = Some(wall - base_wall);
        row.startup_cpu_us = Some(cpu - base_cpu);
        row.startup_inside_us = Some(inside);
    }
    Ok(())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{} cores ({}), {}, Linux {}",
        sh("nproc", &[]),
        cpu,
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sh("uname", &["-r"])
    )
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Times this process was preempted (involuntary context switches) so far.
fn preemptions() -> i64 {
    let mut usage = std::mem::MaybeUninit::<nix::libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        nix::libc::getrusage(nix::libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_nivcsw
}

/// How busy the machine was during the run (other builds share its cores).
struct Load {
    start: String,
    end: String,
    preemptions: i64,
    seconds: f64,
}

/// Thousands separators: 16384 -> "16,384".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The columns of both tables: a header and how to read the figure from a row.
type Column = (String, Box<dyn Fn(&Row) -> Option<f64>>);

fn columns(cfg: &Config) -> Vec<Column> {
    let gets = format!(
        "{}×{} in {} timed chunks",
        cfg.get_rounds,
        thousands(cfg.gets as u64),
        cfg.get_rounds * GET_CHUNKS
    );
    let mut cols: Vec<Column> = vec![
        (
            format!("get hit ns ({gets})"),
            Box::new(|r: &Row| r.get_hit_ns),
        ),
        (
            format!("get 50% miss ns ({gets})"),
            Box::new(|r: &Row| r.get_miss_ns),
        ),
        (
            "chained get hit ns (the same hits, each key chosen by the value before)".into(),
            Box::new(|r: &Row| r.get_chained_ns),
        ),
    ];
    for (i, &n) in cfg.open_ns.iter().enumerate() {
        cols.push((
            format!("open+get µs N={} ({}×)", thousands(n), cfg.open_reps),
            Box::new(move |r: &Row| r.open_us.get(i).copied().flatten()),
        ));
    }
    cols.push((
        format!("startup µs wall ({} spawns)", cfg.spawns),
        Box::new(|r: &Row| r.startup_us),
    ));
    cols.push((
        format!("startup µs CPU ({} spawns)", cfg.spawns),
        Box::new(|r: &Row| r.startup_cpu_us),
    ));
    cols.push((
        format!("startup µs in child ({} spawns)", cfg.spawns),
        Box::new(|r: &Row| r.startup_inside_us),
    ));
    cols.push((
        format!("prewarm ms ({}×)", cfg.prewarm_reps),
        Box::new(|r: &Row| r.prewarm_ms),
    ));
    cols.push((
        format!("put_one ms durable ({}×)", cfg.put_reps),
        Box::new(|r: &Row| r.put_ms),
    ));
    cols.push((
        format!("put_one ms no fsync ({}×)", cfg.put_reps),
        Box::new(|r: &Row| r.put_nosync_ms),
    ));
    cols.push(("file MiB".into(), Box::new(|r: &Row| r.file_bytes.map(mib))));
    cols.push((
        "writer peak RSS MiB".into(),
        Box::new(|r: &Row| r.rss_kib.map(|k| k as f64 / 1024.0)),
    ));
    if cfg.big {
        cols.push((
            "writer peak RSS MiB, 1 GiB of values".into(),
            Box::new(|r: &Row| r.big_rss_kib.map(|k| k as f64 / 1024.0)),
        ));
    }
    cols
}

fn print_tables(cfg: &Config, set: &DataSet, rows: &[Row], load: &Load) {
    let cols = columns(cfg);
    println!(
        "## W1, N = {}{}\n",
        thousands(cfg.n),
        if cfg.quick {
            " (QUICK run: small N, few iterations)"
        } else {
            ""
        }
    );
    println!("- machine: {}", machine());
    println!(
        "- data: {} entries, {:.1} MiB of values, {:.2} MiB of keys; seed {:#x}",
        thousands(set.len()),
        mib(set.value_bytes()),
        mib(set.key_bytes()),
        data::SEED
    );
    println!(
        "- every figure is a median; (k×) in a header is the number of repetitions it is the \
         median of; peers are interleaved round by round in a random order. Startup is the \
         median time of a fresh process that opens and gets one key, minus that of the same \
         binary doing nothing: wall time, and the child's CPU time (user + system); \
         \"in child\" is the open + get as the fresh process itself timed it."
    );
    println!(
        "- load: 1-minute load average {} at start, {} at end; this process was preempted {} \
         times in {:.0} s. Other work on the machine moves absolute figures between runs; the \
         interleaved ratios move less.",
        load.start, load.end, load.preemptions, load.seconds
    );
    println!("- `—`: the peer has no such figure (see BENCHMARKS.md).\n");

    let header: Vec<&str> = cols.iter().map(|(h, _)| h.as_str()).collect();
    println!("| peer | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(cols.len()));
    for row in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, get)| get(row).map_or("—".into(), num))
            .collect();
        println!("| {} | {} |", row.label, cells.join(" | "));
    }

    let ws = &rows[0];
    println!("\n### warmshard ÷ peer (below 1: warmshard is faster or smaller)\n");
    println!("| peer | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(cols.len()));
    for row in &rows[1..] {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, get)| match (get(ws), get(row)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "—".into(),
            })
            .collect();
        println!("| {} | {} |", row.label, cells.join(" | "));
    }
    print_targets(cfg, rows);
}

fn find<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.name == name)
        .expect("every peer has a row")
}

fn print_targets(cfg: &Config, rows: &[Row]) {
    let ws = find(rows, Warmshard::NAME);
    let phys = find(rows, PhysicalLimit::NAME);
    let trusted = find(rows, PhysicalTrusted::NAME);
    let inplace = find(rows, RkyvInPlace::NAME);
    let full = find(rows, RkyvFull::NAME);
    let lmdb = find(rows, Lmdb::NAME);
    println!("\n### Targets (N = {})\n", thousands(cfg.n));
    println!("| target | measured | verdict |");
    println!("|---|---|---|");
    // `ratio` is what the target bounds; `ok` says whether it holds.
    let line = |target: &str, ratio: Option<f64>, what: String, ok: fn(f64) -> bool| {
        let verdict = match ratio {
            None => "not measured".to_string(),
            Some(r) if ok(r) => "holds".to_string(),
            Some(_) => "**MISSES**".to_string(),
        };
        println!("| {target} | {what} | {verdict} |");
    };
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let r = div(ws.get_hit_ns, inplace.get_hit_ns);
    line("get hit ≤ 1.1× rkyv in place", r, fmt_ratio(r), |r| {
        r <= 1.1
    });
    let r = div(ws.get_miss_ns, inplace.get_miss_ns);
    line(
        "get 50% miss ≤ 1.0× rkyv in place",
        r,
        fmt_ratio(r),
        |r| r <= 1.0,
    );
    for (i, &n) in cfg.open_ns.iter().enumerate() {
        let r = div(ws.open_us[i], phys.open_us[i]);
        let target = format!("open+first get ≤ 1.5× physical limit, N={}", thousands(n));
        line(&target, r, fmt_ratio(r), |r| r <= 1.5);
    }
    for (i, &n) in cfg.open_ns.iter().enumerate() {
        let r = div(ws.open_us[i], trusted.open_us[i]);
        let d = div(trusted.open_us[i], phys.open_us[i]);
        let target = format!(
            "open+first get vs physical limit + trust checks, N={} (info: the checks alone \
             cost {} the physical limit)",
            thousands(n),
            fmt_ratio(d)
        );
        line(&target, r, fmt_ratio(r), |_| true);
    }
    // Typed entries (issue 13): validate + access one archived entry in place.
    let typed = find(rows, WarmshardTyped::NAME);
    let full_typed = find(rows, RkyvFullTyped::NAME);
    let r = div(typed.get_hit_ns, ws.get_hit_ns);
    line(
        "typed get hit ≤ 1.5× raw get hit",
        r,
        fmt_ratio(r),
        |r| r <= 1.5,
    );
    let two_lines = find(rows, WarmshardTwoLines::NAME);
    let r = div(two_lines.get_hit_ns, ws.get_hit_ns);
    line(
        "byte get reading both ends of the typed value vs raw get hit (info: the second line)",
        r,
        fmt_ratio(r),
        |_| true,
    );
    let r = div(typed.get_hit_ns, two_lines.get_hit_ns);
    line(
        "typed get hit vs byte get reading the same two lines (info: validation + hint)",
        r,
        fmt_ratio(r),
        |_| true,
    );
    let r = div(typed.get_chained_ns, ws.get_chained_ns);
    line(
        "typed chained get hit vs raw chained get hit (info: latency)",
        r,
        fmt_ratio(r),
        |_| true,
    );
    let r = div(typed.get_hit_ns, full_typed.get_hit_ns);
    line(
        "typed get hit vs full-validate rkyv's get of the same struct (info)",
        r,
        fmt_ratio(r),
        |_| true,
    );
    for (i, &n) in cfg.open_ns.iter().enumerate() {
        let r = div(typed.open_us[i], phys.open_us[i]);
        let target = format!(
            "open+first typed get ≤ 1.5× physical limit, N={}",
            thousands(n)
        );
        line(&target, r, fmt_ratio(r), |r| r <= 1.5);
    }
    // Startup: the verdict is on wall time, as the target is stated; CPU time and the child's
    // own timing are less noisy on a shared machine and are shown beside it.
    let startup = |a: &Row, b: &Row| {
        let wall = div(a.startup_us, b.startup_us);
        let cpu = div(a.startup_cpu_us, b.startup_cpu_us);
        let inside = div(a.startup_inside_us, b.startup_inside_us);
        let what = format!(
            "{} (CPU time: {}; in child: {})",
            fmt_ratio(wall),
            fmt_ratio(cpu),
            fmt_ratio(inside)
        );
        (wall, what)
    };
    let (r, what) = startup(ws, phys);
    line("startup increment ≤ 2× physical limit's", r, what, |r| {
        r <= 2.0
    });
    let (r, what) = startup(lmdb, ws);
    let what = format!("LMDB's is {what}");
    line(
        "startup increment ≥ 3× smaller than LMDB's",
        r,
        what,
        |r| r >= 3.0,
    );
    for row in rows {
        if row.name == Warmshard::NAME
            || row.name == PhysicalLimit::NAME
            || row.prewarm_ms.is_none()
        {
            continue;
        }
        let r = div(ws.prewarm_ms, row.prewarm_ms);
        line(
            &format!("prewarm faster than {}", row.label),
            r,
            fmt_ratio(r),
            |r| r < 1.0,
        );
    }
    let r = div(ws.put_ms, lmdb.put_ms);
    line("put_one durable ≤ 1.5× LMDB's", r, fmt_ratio(r), |r| {
        r <= 1.5
    });
    let r = div(full.put_ms, ws.put_ms);
    line(
        "put_one durable ≥ 10× faster than full-validate rkyv",
        r,
        format!("rkyv's is {}", fmt_ratio(r)),
        |r| r >= 10.0,
    );
    let r = ws.put_nosync_ms;
    line(
        "put_one with fsync off < 0.1 ms",
        r,
        r.map_or("—".into(), |ms| format!("{} ms", num(ms))),
        |ms| ms < 0.1,
    );
    let r = div(
        ws.file_bytes.map(|b| b as f64),
        full.file_bytes.map(|b| b as f64),
    );
    line(
        "file size ≤ 1.05× full-validate rkyv",
        r,
        fmt_ratio(r),
        |r| r <= 1.05,
    );
    let r = ws.big_rss_kib.map(|k| k as f64 / 1024.0);
    let what = r.map_or("run with WARMSHARD_BENCH_BIG=1".into(), |m| {
        format!("{} MiB", num(m))
    });
    line(
        "writer peak RSS, 1 GiB-of-values prewarm ≤ 256 MiB",
        r,
        what,
        |m| m <= 256.0,
    );
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{r:.2}×"))
}

/// Without `--bench`: a correctness pass over every peer on a tiny data set; times nothing.
fn smoke() -> Result<()> {
    let base = tempfile::Builder::new()
        .prefix("warmshard-peers-smoke")
        .tempdir()?;
    let set = DataSet::new(300);
    let (key, value) = &set.entries[7];
    let engines = engines();
    for e in &engines {
        let dir = base.path().join(e.name);
        fresh_dir(&dir)?;
        (e.build)(&dir, &set)?;
        (e.verify)(&dir, &set)?;
        if (e.open_get)(&dir, &(e.probe)(&dir, key)?)? != Some(value[0]) {
            return Err(format!("{}: open_get returned a wrong value", e.name).into());
        }
        if e.writes {
            let mut writer = (e.writer)(&dir, false)?;
            writer.put(&data::key(PUT_KEY_BASE), &data::value(PUT_KEY_BASE))?;
        }
    }
    println!(
        "peers: {} engines store and return W1 data correctly \
         (run `cargo bench --bench peers` for figures)",
        engines.len()
    );
    Ok(())
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return smoke();
    }
    let cfg = Config::from_env();
    let started = Instant::now();
    let load_start = load_average();
    let probe_bin = match build_probe() {
        Ok(bin) => Some(bin),
        Err(e) => {
            eprintln!("warning: no startup probe ({e}); startup and RSS figures are skipped");
            None
        }
    };
    let temp;
    let base = match std::env::var_os("WARMSHARD_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            temp = tempfile::Builder::new()
                .prefix("warmshard-peers")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    eprintln!("generating W1 data sets: N = {:?}", cfg.open_ns);
    let sets: Vec<DataSet> = cfg.open_ns.iter().map(|&n| DataSet::new(n)).collect();
    let engines = engines();
    let mut rows: Vec<Row> = engines
        .iter()
        .map(|e| Row {
            name: e.name,
            label: e.label,
            ..Row::default()
        })
        .collect();
    let headline = cfg
        .open_ns
        .iter()
        .position(|&n| n == cfg.n)
        .expect("the headline N is among the open Ns");
    eprintln!("open + first get (and the stores):");
    open_figures(&cfg, &engines, &sets, &base, &mut rows)?;
    eprintln!("get:");
    get_figures(&cfg, &engines, &sets[headline], &mut rows)?;
    eprintln!("prewarm, size, put_one:");
    write_figures(&cfg, &engines, &sets[headline], &base, &mut rows)?;
    if let Some(bin) = &probe_bin {
        eprintln!("writer peak RSS:");
        rss_figures(&cfg, &engines, bin, &base, &mut rows)?;
        eprintln!("startup: {} spawns per engine", cfg.spawns);
        startup(&cfg, bin, &mut rows)?;
    }
    let load = Load {
        start: load_start,
        end: load_average(),
        preemptions: preemptions(),
        seconds: started.elapsed().as_secs_f64(),
    };
    print_tables(&cfg, &sets[headline], &rows, &load);
    Ok(())
}
