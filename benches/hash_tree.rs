//! Workload W2 (`WORKLOADS.md`): `warmshard hash-tree` against its peers, same trees,
//! same run, printed as one markdown table.
//!
//! ```text
//! cargo bench --bench hash_tree                 # T1, T2 and T3
//! WARMSHARD_W2_TREES=t1,t3 cargo bench --bench hash_tree
//! ```
//! Trees are built once under `target/w2-trees/` and reused. Peers: a minimal walk + lstat
//! (this binary re-executed, 1 and 2 threads), `git status --porcelain` and
//! `git update-index --refresh` on a committed copy, and for the cold case
//! `find | xargs -0 -P2 sha256sum` and a minimal walk + read + SHA-256 on every core (this binary
//! re-executed: the floor of any design that reads files with read(2)). Every figure is the
//! median of several runs; the page cache is warm throughout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;

const WARMSHARD: &str = env!("CARGO_BIN_EXE_warmshard");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--walk-lstat") {
        let threads = args[3].parse().unwrap();
        println!("{}", walk_lstat(Path::new(&args[2]), threads));
        return;
    }
    if args.get(1).map(String::as_str) == Some("--read-sha256") {
        let threads = args[3].parse().unwrap();
        println!("{}", walk_read_sha256(Path::new(&args[2]), threads));
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `--list` probes: nothing to list.
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/w2-trees");
    std::fs::create_dir_all(&root).unwrap();
    let wanted = std::env::var("WARMSHARD_W2_TREES").unwrap_or_else(|_| "t1,t2,t3".into());
    let sha_core = sha256_core_throughput();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "## W2: hash-tree (warmshard {})\n",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "Machine: {cores} cores; SHA-256 (sha2) on one core: {:.2} GB/s. Medians; page cache warm.\n",
        sha_core / 1e9
    );
    println!(
        "| tree | files | bytes | cold s (MB/s) | xargs -P2 sha256sum s | cold vs sha256sum | walk+read+sha256 limit s (% of cores x sha2) | cold / limit | warm ms | hashed | warm, every directory read ms | walk+lstat 1t ms | walk+lstat 2t ms | warm / walk 2t | git status ms | git update-index --refresh ms | warm / update-index | partial ms (hashed) | partial / warm |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for name in wanted.split(',') {
        let tree = match name.trim() {
            "t1" => build_t1(&root),
            "t2" => build_t2(&root),
            "t3" => build_t3(&root),
            other => panic!("unknown tree {other}"),
        };
        measure(name, &tree, &root, sha_core, cores);
    }
}

struct Run {
    seconds: f64,
    files: u64,
    hashed: u64,
    bytes_hashed: u64,
}

fn hash_tree(tree: &Path, shard: &Path) -> Run {
    hash_tree_with(tree, shard, &[])
}

fn hash_tree_with(tree: &Path, shard: &Path, flags: &[&str]) -> Run {
    let started = Instant::now();
    let out = Command::new(WARMSHARD)
        .arg("--shard")
        .arg(shard)
        .args(["hash-tree", "--stats"])
        .args(flags)
        .arg(tree)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("files=")).unwrap();
    let field = |name: &str| -> u64 {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..].split(' ').next().unwrap().parse().unwrap()
    };
    Run {
        seconds,
        files: field("files"),
        hashed: field("hashed"),
        bytes_hashed: field("bytes_hashed"),
    }
}

fn time(mut command: Command) -> f64 {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{command:?}");
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn measure(name: &str, tree: &Path, root: &Path, sha_core: f64, cores: usize) {
    let shard = root.join(format!("{name}.shard"));
    let git_dir = root.join(format!("{name}.git"));
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("--git-dir")
            .arg(&git_dir)
            .arg("--work-tree")
            .arg(tree);
        c.args(args);
        c
    };
    if !git_dir.exists() {
        assert!(
            Command::new("git")
                .args(["init", "-q", "--bare"])
                .arg(&git_dir)
                .status()
                .unwrap()
                .success()
        );
        time(git(&["config", "core.bare", "false"]));
        time(git(&["add", "-A"]));
        time(git(&[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            "tree",
        ]));
    }
    // Files must be older than the racy margin for a warm run to trust them.
    std::thread::sleep(Duration::from_millis(200));

    let rounds = if name == "t2" { 3 } else { 5 };
    let mut cold = Vec::new();
    let mut sha256sum = Vec::new();
    let mut limit = Vec::new();
    let me = std::env::current_exe().unwrap();
    let mut info = None;
    // One untimed pass first: "cold" means an empty cache shard, not files missing from the
    // page cache (which other work on the machine may have evicted since the tree was built).
    let _ = std::fs::remove_file(&shard);
    let _ = std::fs::remove_file(root.join(format!("{name}.shard.delta")));
    hash_tree(tree, &shard);
    for _ in 0..rounds.min(3) {
        let _ = std::fs::remove_file(&shard);
        let _ = std::fs::remove_file(root.join(format!("{name}.shard.delta")));
        let run = hash_tree(tree, &shard);
        cold.push(run.seconds);
        info = Some((run.files, run.bytes_hashed));
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("find . -type f -print0 | xargs -0 -P2 sha256sum > /dev/null");
        c.current_dir(tree);
        sha256sum.push(time(c));
        let mut c = Command::new(&me);
        c.arg("--read-sha256").arg(tree).arg(cores.to_string());
        limit.push(time(c));
    }
    let (files, bytes) = info.unwrap();
    let cold = median(cold);
    let sha256sum = median(sha256sum);
    let limit = median(limit);

    let warm_runs = 11;
    let mut warm = Vec::new();
    let mut warm_listing = Vec::new();
    let mut walk1 = Vec::new();
    let mut walk2 = Vec::new();
    let mut status = Vec::new();
    let mut refresh = Vec::new();
    let mut warm_hashed = 0;
    for _ in 0..warm_runs {
        let run = hash_tree(tree, &shard);
        warm_hashed = warm_hashed.max(run.hashed);
        warm.push(run.seconds);
        let run = hash_tree_with(tree, &shard, &["--no-listing-cache"]);
        warm_hashed = warm_hashed.max(run.hashed);
        warm_listing.push(run.seconds);
        for (threads, out) in [(1, &mut walk1), (2, &mut walk2)] {
            let mut c = Command::new(&me);
            c.arg("--walk-lstat").arg(tree).arg(threads.to_string());
            out.push(time(c));
        }
        status.push(time(git(&["status", "--porcelain"])));
        refresh.push(time(git(&["update-index", "-q", "--refresh"])));
    }
    let warm = median(warm);
    let warm_listing = median(warm_listing);

    let mut partial = Vec::new();
    let mut partial_hashed = 0;
    let victims = pick_files(tree, 10);
    for round in 0..rounds {
        for (i, file) in victims.iter().enumerate() {
            let mut bytes = std::fs::read(file).unwrap();
            bytes.extend_from_slice(format!("change {round} {i}\n").as_bytes());
            std::fs::write(file, bytes).unwrap();
        }
        std::thread::sleep(Duration::from_millis(120));
        let run = hash_tree(tree, &shard);
        partial_hashed = partial_hashed.max(run.hashed);
        partial.push(run.seconds);
    }
    let partial = median(partial);
    let walk1 = median(walk1);
    let walk2 = median(walk2);
    let status = median(status);
    let refresh = median(refresh);
    let share_of_cores = bytes as f64 / cold / (cores as f64 * sha_core);
    let limit_share = bytes as f64 / limit / (cores as f64 * sha_core);
    println!(
        "| {name} | {files} | {bytes} | {cold:.3} ({:.0}, {:.0}% of cores x sha2) | {sha256sum:.3} | {:.2}x faster | {limit:.3} ({:.0}%) | {:.2} | {:.1} | {warm_hashed} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} ({partial_hashed}) | {:.2} |",
        bytes as f64 / cold / 1e6,
        share_of_cores * 100.0,
        sha256sum / cold,
        limit_share * 100.0,
        cold / limit,
        warm * 1e3,
        warm_listing * 1e3,
        walk1 * 1e3,
        walk2 * 1e3,
        warm / walk2,
        status * 1e3,
        refresh * 1e3,
        warm / refresh,
        partial * 1e3,
        partial / warm,
    );
}

/// Ten regular files spread over the tree, in a fixed order.
fn pick_files(tree: &Path, n: usize) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                all.push(e.path());
            }
        }
    }
    let step = (all.len() / n).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

/// Runs `work` on `first` and on every job it adds, with `threads` workers sharing one stack of
/// jobs; returns once all are done.
fn share_jobs<J: Send>(threads: usize, first: J, work: impl Fn(J, &mut Vec<J>) + Sync) {
    let queue = parking_lot::Mutex::new((vec![first], 0usize));
    let wake = parking_lot::Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let job = {
                        let mut q = queue.lock();
                        loop {
                            if let Some(job) = q.0.pop() {
                                q.1 += 1;
                                break Some(job);
                            }
                            if q.1 == 0 {
                                break None;
                            }
                            wake.wait(&mut q);
                        }
                    };
                    let Some(job) = job else { break };
                    let mut found = Vec::new();
                    work(job, &mut found);
                    let mut q = queue.lock();
                    q.0.extend(found);
                    q.1 -= 1;
                    wake.notify_all();
                }
            });
        }
    });
}

/// The walk + lstat limit: every directory listed, every regular file lstat()ed, nothing else.
fn walk_lstat(root: &Path, threads: usize) -> u64 {
    let files = AtomicU64::new(0);
    share_jobs(threads, root.to_path_buf(), |dir, subdirs| {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => subdirs.push(entry.path()),
                Ok(t) if t.is_file() && entry.metadata().is_ok() => {
                    files.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    files.into_inner()
}

/// The floor of a cold run that reads files with read(2): every directory listed, every regular
/// file opened by path, read through a 256 KiB buffer (a short read ends it) and hashed,
/// directories and files shared by `threads` workers; no stamps, no cache, no output. Returns
/// the bytes hashed.
fn walk_read_sha256(root: &Path, threads: usize) -> u64 {
    use std::io::Read;
    enum Job {
        Dir(PathBuf),
        File(PathBuf),
    }
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
    }
    let bytes = AtomicU64::new(0);
    share_jobs(
        threads,
        Job::Dir(root.to_path_buf()),
        |job, found| match job {
            Job::Dir(dir) => {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    match entry.file_type() {
                        Ok(t) if t.is_dir() => found.push(Job::Dir(entry.path())),
                        Ok(t) if t.is_file() => found.push(Job::File(entry.path())),
                        _ => {}
                    }
                }
            }
            Job::File(path) => {
                let Ok(mut file) = std::fs::File::open(&path) else {
                    return;
                };
                BUFFER.with_borrow_mut(|buffer| {
                    let mut h = sha2::Sha256::new();
                    // A short read of a regular file is its end.
                    while let Ok(n @ 1..) = file.read(buffer) {
                        h.update(&buffer[..n]);
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        if n < buffer.len() {
                            break;
                        }
                    }
                    std::hint::black_box(h.finalize());
                });
            }
        },
    );
    bytes.into_inner()
}

fn sha256_core_throughput() -> f64 {
    let buffer = vec![0x5au8; 64 << 20];
    let started = Instant::now();
    let mut h = sha2::Sha256::new();
    for _ in 0..4 {
        h.update(&buffer);
    }
    std::hint::black_box(h.finalize());
    (4 * buffer.len()) as f64 / started.elapsed().as_secs_f64()
}

struct Lcg(u64);
impl Lcg {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

/// T1: 75,000 files of 1 KiB in 75 directories of 1,000.
fn build_t1(root: &Path) -> PathBuf {
    let tree = root.join("t1");
    if !tree.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        let mut rng = Lcg(1);
        let mut buf = vec![0u8; 1024];
        for d in 0..75 {
            let dir = tree.join(format!("dir{d:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                rng.fill(&mut buf);
                std::fs::write(dir.join(format!("file{f:04}.dat")), &buf).unwrap();
            }
        }
        std::fs::write(tree.join(".complete"), b"").unwrap();
    }
    tree
}

/// T2: a copy of real system files (/usr/share, /usr/include, /usr/lib/python3*).
fn build_t2(root: &Path) -> PathBuf {
    let tree = root.join("t2");
    if !tree.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree).unwrap();
        let script = "for d in /usr/share /usr/include /usr/lib/python3*; do \
            [ -d \"$d\" ] && mkdir -p \"$1$(dirname \"$d\")\" && cp -r --no-preserve=ownership \"$d\" \"$1$(dirname \"$d\")/\" 2>/dev/null; done; true";
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&tree)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(tree.join(".complete"), b"").unwrap();
    }
    tree
}

/// T3: 100 nested directory levels, 2 files each.
fn build_t3(root: &Path) -> PathBuf {
    let tree = root.join("t3");
    if !tree.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        let mut dir = tree.clone();
        for level in 0..100 {
            dir = dir.join(format!("level{level:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.txt"), format!("a {level}\n")).unwrap();
            std::fs::write(dir.join("b.txt"), format!("b {level}\n")).unwrap();
        }
        std::fs::write(tree.join(".complete"), b"").unwrap();
    }
    tree
}
