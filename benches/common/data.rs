//! The W1 data set (WORKLOADS.md): function-name-like keys and skewed random values, generated
//! from a fixed seed so that every run, every peer and every process sees the same bytes.
//!
//! Entry `i` depends only on `(SEED, i)`, so a child process can regenerate any entry without
//! being sent the data, and keys at indices `>= n` are guaranteed absent from a store of `n`.

/// The seed of every W1 run. Changing it changes the data set: don't.
pub const SEED: u64 = 0x5741_524d_5348_5244; // "WARMSHRD"

/// Word pool for keys: the first words of shell functions a completion system autoloads.
const WORDS: &[&str] = &[
    "git",
    "checkout",
    "ls",
    "cd",
    "make",
    "cargo",
    "build",
    "docker",
    "kubectl",
    "npm",
    "ssh",
    "rsync",
    "tar",
    "find",
    "grep",
    "sed",
    "awk",
    "pip",
    "apt",
    "systemctl",
    "journalctl",
    "python",
    "node",
    "go",
    "rustup",
    "complete",
    "prompt",
    "vcs",
    "info",
    "status",
    "branch",
    "commit",
    "push",
    "pull",
    "log",
    "diff",
    "rebase",
    "stash",
    "remote",
    "config",
];

/// SplitMix64: tiny, fast, and good enough to make benchmark data (not for anything else).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the tiny modulo bias does not matter here).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

fn entry_rng(i: u64, stream: u64) -> Rng {
    Rng::new(SEED ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ stream)
}

/// Key `i`: `_word[_word...]_<i>`, 8..=40 bytes, unique per `i` (the index is always kept).
pub fn key(i: u64) -> Vec<u8> {
    let mut rng = entry_rng(i, 1);
    let suffix = format!("_{i:05}");
    let mut key = String::with_capacity(40);
    let words = rng.range(1, 4);
    for _ in 0..words {
        let word = WORDS[rng.range(0, WORDS.len() as u64 - 1) as usize];
        if key.len() + 1 + word.len() + suffix.len() > 40 {
            break;
        }
        key.push('_');
        key.push_str(word);
    }
    if key.is_empty() {
        key.push_str("_fn");
    }
    key.push_str(&suffix);
    key.into_bytes()
}

/// Length of value `i`: 70% in 256..=512, 25% in 513..=2048, 5% in 2049..=4096.
fn value_len(rng: &mut Rng) -> usize {
    let pick = rng.range(0, 99);
    let (lo, hi) = match pick {
        0..=69 => (256, 512),
        70..=94 => (513, 2048),
        _ => (2049, 4096),
    };
    rng.range(lo, hi) as usize
}

/// Value `i`: random bytes of the W1 length mix.
pub fn value(i: u64) -> Vec<u8> {
    let mut rng = entry_rng(i, 2);
    let len = value_len(&mut rng);
    let mut value = Vec::with_capacity(len + 8);
    while value.len() < len {
        value.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    value.truncate(len);
    value
}

/// Entries `0..n`, generated lazily (a writer's peak RSS is then its own, not the data set's).
pub fn entries(n: u64) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    (0..n).map(|i| (key(i), value(i)))
}

/// A materialized W1 data set of `n` entries, plus `n` keys known to be absent from it.
pub struct DataSet {
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    pub absent: Vec<Vec<u8>>,
}

impl DataSet {
    pub fn new(n: u64) -> DataSet {
        DataSet {
            entries: entries(n).collect(),
            absent: (n..2 * n).map(key).collect(),
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn value_bytes(&self) -> u64 {
        self.entries.iter().map(|(_, v)| v.len() as u64).sum()
    }

    pub fn key_bytes(&self) -> u64 {
        self.entries.iter().map(|(k, _)| k.len() as u64).sum()
    }

    /// `count` lookups and how many of them hit: each an existing key with probability
    /// `hit_percent`/100, else an absent one; chosen uniformly from a fixed-seed stream.
    pub fn lookups(&self, count: usize, hit_percent: u64, stream: u64) -> (Vec<&[u8]>, usize) {
        let mut rng = Rng::new(SEED ^ stream);
        let n = self.len();
        let mut hits = 0;
        let keys = (0..count)
            .map(|_| {
                let i = rng.range(0, n - 1) as usize;
                if rng.range(0, 99) < hit_percent {
                    hits += 1;
                    self.entries[i].0.as_slice()
                } else {
                    self.absent[i].as_slice()
                }
            })
            .collect();
        (keys, hits)
    }
}

/// Number of W1 entries whose values add up to at least `bytes` (for the 1 GiB writer figure).
pub fn entries_for_value_bytes(bytes: u64) -> u64 {
    let mut total = 0;
    let mut i = 0;
    while total < bytes {
        total += value_len(&mut entry_rng(i, 2)) as u64;
        i += 1;
    }
    i
}
