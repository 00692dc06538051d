//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! logic on stable Rust, so every `cargo test` re-runs what the fuzzer found interesting.
//!
//! The targets' logic lives in `fuzz/src/` and is compiled here unchanged; see `fuzz/README.md`.
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` regenerates the hand-made seeds.

#[path = "../fuzz/src/format_api.rs"]
mod format_api;
#[path = "../fuzz/src/format_bytes.rs"]
mod format_bytes;
#[path = "../fuzz/src/format_model.rs"]
mod format_model;
#[path = "../fuzz/src/open_get.rs"]
mod open_get;
#[path = "../fuzz/src/ops_model.rs"]
mod ops_model;

use std::path::{Path, PathBuf};

use ops_model::{Key, Op};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every corpus file, naming the file that fails.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = corpus(target);
    assert!(
        files.len() >= 10,
        "{target}: the committed corpus has only {} files",
        files.len()
    );
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(panic) = outcome {
            eprintln!("corpus file failed: {}", file.display());
            std::panic::resume_unwind(panic);
        }
    }
    files.len()
}

#[test]
fn open_get_corpus_replays_clean() {
    let n = replay("open_get", open_get::run);
    eprintln!("open_get: {n} corpus files replayed");
}

#[test]
fn format_bytes_corpus_replays_clean() {
    let n = replay("format_bytes", format_bytes::run);
    eprintln!("format_bytes: {n} corpus files replayed");
}

#[test]
fn format_model_corpus_replays_clean() {
    let n = replay("format_model", format_model::run);
    eprintln!("format_model: {n} corpus files replayed");
}

#[test]
fn ops_model_corpus_replays_clean() {
    let n = replay("ops_model", ops_model::run);
    eprintln!("ops_model: {n} corpus files replayed");
}

fn put(key: u8, fill: u8, len: u16) -> Op {
    Op::Put {
        via_b: false,
        key: Key::Small(key),
        value: val(fill, len),
    }
}

fn val(fill: u8, len: u16) -> ops_model::Val {
    ops_model::Val { fill, step: 1, len }
}

/// Hand-written sequences for the cases a model test must cover even if the corpus is thin:
/// a snapshot held across clear and rewrite, a second handle seeing writes of the first,
/// a generation bump hiding old entries, a dropped bulk writer, removes of absent keys.
#[test]
fn ops_model_named_sequences() {
    use Op::*;
    ops_model::run_ops(&[
        put(1, 10, 100),
        Hold,
        Clear { via_b: true },
        Hold,
        put(2, 20, 5000),
        Replace {
            via_b: true,
            entries: vec![(Key::Small(3), val(3, 3)), (Key::Small(3), val(4, 4))],
        },
        Hold,
        Remove {
            via_b: false,
            keys: vec![Key::Small(9)],
        },
        Reopen {
            newer_generation: true,
        },
        Remove {
            via_b: false,
            keys: vec![Key::Small(3)],
        },
        put(5, 1, 1),
        Bulk {
            via_b: true,
            merge: true,
            commit: false,
            entries: vec![(Key::Small(6), val(6, 6))],
        },
        Bulk {
            via_b: false,
            merge: false,
            commit: true,
            entries: vec![(Key::Raw(vec![]), val(0, 0))],
        },
        Release(1),
        Merge {
            via_b: true,
            entries: vec![
                (Key::Raw(vec![0xff; 60]), val(7, 7)),
                (Key::Small(1), val(1, 0)),
            ],
        },
    ]);
}

/// Regenerates the hand-made seeds: valid shards written by the library, and truncated and
/// bit-flipped variants of them, for `open_get`; byte strings for `ops_model`. Run by hand.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand to regenerate the seeds"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.shard");
    let shard = warmshard::Shard::open_with(
        &path,
        warmshard::Options::new()
            .durable(false)
            .producer("seed 1.0"),
    )
    .unwrap();
    let mut shards = Vec::new();
    let _ = shard.replace_all(Vec::<(&[u8], &[u8])>::new()).unwrap();
    shards.push(std::fs::read(&path).unwrap());
    let _ = shard.put_one("k", "v").unwrap();
    shards.push(std::fs::read(&path).unwrap());
    let _ = shard
        .merge_in((0..12).map(|i| (format!("key{i}"), vec![i as u8; i * 3])))
        .unwrap();
    shards.push(std::fs::read(&path).unwrap());
    let typed: (u64, String, Vec<u8>) = (7, "typed".into(), vec![1, 2, 3]);
    let _ = shard.put_typed("typed", &typed).unwrap();
    let _ = shard.compact().unwrap();
    shards.push(std::fs::read(&path).unwrap());
    let out = root.join("open_get");
    std::fs::create_dir_all(&out).unwrap();
    for (i, bytes) in shards.iter().enumerate() {
        std::fs::write(out.join(format!("seed-valid-{i}")), bytes).unwrap();
        for cut in [0, 8, 31, 32, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(out.join(format!("seed-cut-{i}-{cut}")), &bytes[..cut]).unwrap();
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
        for n in 0..6 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut flipped = bytes.clone();
            let bit = (state % (bytes.len() as u64 * 8)) as usize;
            flipped[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(out.join(format!("seed-flip-{i}-{n}")), &flipped).unwrap();
        }
    }
    let out = root.join("ops_model");
    std::fs::create_dir_all(&out).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for n in 0..12 {
        let len = 16 + n * 24;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(out.join(format!("seed-random-{n}")), bytes).unwrap();
    }
}

/// A deterministic byte stream for seeds (xorshift64).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The entry sets of the `format_bytes` seeds: empty, one entry, an empty key and an empty
/// value, a dozen, a hundred small ones, and a few larger values.
fn seed_entry_sets() -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let kv = |k: &str, v: Vec<u8>| (k.as_bytes().to_vec(), v);
    vec![
        vec![],
        vec![kv("k", b"v".to_vec())],
        vec![kv("", b"empty key".to_vec()), kv("empty value", vec![])],
        (0..12)
            .map(|i| kv(&format!("key{i}"), vec![i as u8; i * 3]))
            .collect(),
        (0..100)
            .map(|i| kv(&format!("{i}"), vec![i as u8; i % 5]))
            .collect(),
        (0..3)
            .map(|i| kv(&format!("big{i}"), vec![0xa5 ^ i as u8; 600 * (i + 1)]))
            .collect(),
    ]
}

/// The undamaged seeds of `format_bytes`: shards encoded by the real `Encoder`.
fn format_seed_shards() -> Vec<Vec<u8>> {
    seed_entry_sets()
        .iter()
        .map(|set| {
            let refs: Vec<(&[u8], &[u8])> = set
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            format_api::encode(&refs, 3, "seed 1.0").bytes
        })
        .collect()
}

/// A shard with two records for one key fails `verify`, and the checks `format_model` makes on
/// an undamaged shard hold on every seed's entry set (the fuzzer cannot fail on an empty
/// corpus: this runs the model on stable even before any corpus exists).
#[test]
fn format_model_on_seed_sets() {
    for set in seed_entry_sets() {
        for duplicate in [false, true] {
            format_model::run_input(&format_model::Input {
                entries: set.clone(),
                probes: vec![b"absent".to_vec(), Vec::new()],
                flips: vec![],
                duplicate,
                generation: 9,
            });
        }
    }
}

/// Damage the model target must judge correctly: a value byte (fails `verify`, the key still
/// reads), a slot's tag, the root, the trailer; no flip may make a lookup return another
/// entry's record.
#[test]
fn format_model_on_damaged_seeds() {
    let set = &seed_entry_sets()[3];
    let len = format_seed_shards()[3].len() as u32;
    for at in (0..len).step_by(7) {
        for xor in [1u8, 0x80, 0xff] {
            format_model::run_input(&format_model::Input {
                entries: set.clone(),
                probes: vec![b"key1".to_vec(), b"absent".to_vec()],
                flips: vec![format_model::Flip { at, xor }],
                duplicate: false,
                generation: 9,
            });
        }
    }
}

/// Regenerates the hand-made seeds of the in-memory targets: for `format_bytes`, shards
/// encoded by the real `Encoder`, cut and bit-flipped variants, and one with a duplicate key;
/// for `format_model`, byte strings (decoded with `arbitrary`). Run by hand.
#[test]
#[ignore = "writes into fuzz/corpus; run by hand to regenerate the seeds"]
fn write_format_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let out = root.join("format_bytes");
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    for (i, bytes) in format_seed_shards().iter().enumerate() {
        std::fs::write(out.join(format!("seed-valid-{i}")), bytes).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(out.join(format!("seed-cut-{i}-{cut}")), &bytes[..cut]).unwrap();
        }
        // Flips spread over the file: records, slot table, root, trailer.
        for n in 0..4u64 {
            let mut flipped = bytes.clone();
            let quarter = bytes.len() as u64 / 4;
            let at = (n * quarter + rng.next() % quarter.max(1)) as usize % bytes.len();
            flipped[at] ^= 1 << (rng.next() % 8);
            std::fs::write(out.join(format!("seed-flip-{i}-{n}")), &flipped).unwrap();
        }
    }
    let twice: Vec<(&[u8], &[u8])> = vec![(b"same", b"one"), (b"other", b"x"), (b"same", b"two")];
    let dup = format_api::encode(&twice, 1, "seed 1.0").bytes;
    std::fs::write(out.join("seed-duplicate-key"), dup).unwrap();

    let out = root.join("format_model");
    std::fs::create_dir_all(&out).unwrap();
    for n in 0..12 {
        let len = 24 + n * 40;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(out.join(format!("seed-random-{n}")), bytes).unwrap();
    }
}
