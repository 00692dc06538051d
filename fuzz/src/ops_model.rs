//! Fuzz target `ops_model`: arbitrary sequences of writes, reopens and held snapshots, checked
//! after every step against a `BTreeMap` model (as redb's `fuzz_redb` does).
//!
//! Promise under test: every write leaves exactly the entries the model predicts, seen alike by
//! the handle that wrote and by a second handle on the same file; every write reports the entry
//! count it committed; a snapshot taken earlier keeps reading the state it was taken at, whatever
//! is written later; entries of an older generation read as misses and are dropped by the next
//! write; a bulk writer dropped without commit changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use warmshard::{BulkMode, Health, Options, Shard, Snapshot, WriteOutcome};

/// A key: mostly from a small set (so operations collide), sometimes arbitrary bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Key {
    /// `k0`..`k23`.
    Small(u8),
    /// Any bytes, at most 48 of them.
    Raw(Vec<u8>),
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Small(n) => format!("k{}", n % 24).into_bytes(),
            Key::Raw(raw) => raw[..raw.len().min(48)].to_vec(),
        }
    }
}

/// A value generated from a few bytes, so that large values need no large input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Val {
    /// First byte.
    pub fill: u8,
    /// Added to each next byte.
    pub step: u8,
    /// Length, modulo 6000.
    pub len: u16,
}

impl Val {
    fn bytes(&self) -> Vec<u8> {
        let len = usize::from(self.len) % 6000;
        (0..len)
            .map(|i| self.fill.wrapping_add((i as u8).wrapping_mul(self.step)))
            .collect()
    }
}

/// One step. `via_b` picks which of the two handles on the shard performs a write.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// `put_one`.
    Put { via_b: bool, key: Key, value: Val },
    /// `merge_in`.
    Merge {
        via_b: bool,
        entries: Vec<(Key, Val)>,
    },
    /// `replace_all`.
    Replace {
        via_b: bool,
        entries: Vec<(Key, Val)>,
    },
    /// `remove`.
    Remove { via_b: bool, keys: Vec<Key> },
    /// `clear`.
    Clear { via_b: bool },
    /// `bulk_writer`, committed or dropped.
    Bulk {
        via_b: bool,
        merge: bool,
        commit: bool,
        entries: Vec<(Key, Val)>,
    },
    /// Drops both handles and opens new ones, optionally with a newer generation.
    Reopen { newer_generation: bool },
    /// Takes a snapshot and holds it across the following steps.
    Hold,
    /// Drops one held snapshot.
    Release(u8),
}

/// Key to value, as a snapshot should read them.
type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

const MAX_OPS: usize = 48;
const MAX_BATCH: usize = 12;
const MAX_HELD: usize = 4;

/// What the shard should hold: every entry physically in the file, with its generation.
#[derive(Clone, Default)]
struct Model {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    file_exists: bool,
    generation: u64,
}

impl Model {
    /// The entries that read as hits.
    fn visible(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.entries
            .iter()
            .filter(|(_, (_, g))| *g >= self.generation)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// A committed write that kept (`keep`) or dropped the current entries, then added `adds`.
    fn write(&mut self, keep: bool, adds: &[(Vec<u8>, Vec<u8>)]) -> Modelled {
        let floor = self.generation;
        if keep {
            self.entries.retain(|_, (_, g)| *g >= floor);
        } else {
            self.entries.clear();
        }
        for (k, v) in adds {
            self.entries.insert(k.clone(), (v.clone(), floor));
        }
        self.file_exists = true;
        self.committed()
    }

    fn committed(&self) -> Modelled {
        // Only the entry count is modelled; the file size is compared separately.
        Modelled::Committed(self.entries.len() as u64)
    }
}

fn batch(entries: &[(Key, Val)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries
        .iter()
        .take(MAX_BATCH)
        .map(|(k, v)| (k.bytes(), v.bytes()))
        .collect()
}

/// What the model predicts of a write's outcome: committed with this many entries, or not.
#[derive(Debug, PartialEq, Eq)]
enum Modelled {
    Committed(u64),
    Unchanged,
    Other,
}

/// Compares a write's outcome with the model's, ignoring the file size.
fn same_outcome(got: WriteOutcome, want: Modelled, step: usize, op: &Op) {
    let got = match got {
        WriteOutcome::Committed { entries, .. } => Modelled::Committed(entries),
        WriteOutcome::Unchanged => Modelled::Unchanged,
        _ => Modelled::Other,
    };
    assert_eq!(got, want, "step {step}: {op:?}");
}

/// Asserts that `snapshot` reads exactly `visible`.
fn check_reads(snapshot: &Snapshot, visible: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    let listed: BTreeMap<Vec<u8>, Vec<u8>> = snapshot
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(&listed, visible, "{what}: iter differs from the model");
    assert_eq!(snapshot.len(), visible.len(), "{what}: len");
    for (key, value) in visible {
        assert_eq!(snapshot.get(key), Some(&value[..]), "{what}: get {key:?}");
    }
    for n in 0..24u8 {
        let key = Key::Small(n).bytes();
        assert_eq!(
            snapshot.contains(&key),
            visible.contains_key(&key),
            "{what}: contains {key:?}"
        );
    }
}

/// Checks a fresh snapshot of `shard` against the model, including the full `verify`.
fn check_handle(shard: &Shard, model: &Model, what: &str) {
    let snapshot = shard.snapshot();
    let want = if model.file_exists {
        Health::Valid
    } else {
        Health::Missing
    };
    assert_eq!(snapshot.health(), &want, "{what}: health");
    let physical = if model.file_exists {
        model.entries.len() as u64
    } else {
        0
    };
    assert_eq!(snapshot.verify(), Ok(physical), "{what}: verify");
    check_reads(&snapshot, &model.visible(), what);
    for (key, value) in model.visible() {
        assert_eq!(
            shard.get(&key).as_deref(),
            Some(&value[..]),
            "{what}: Shard::get"
        );
    }
}

fn open(path: &Path, generation: u64) -> Shard {
    let options = Options::new()
        .durable(false)
        .generation(generation)
        .lock_timeout(std::time::Duration::from_secs(5));
    Shard::open_with(path, options).expect("opening the shard")
}

/// Runs one input: see the module docs.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    run_ops(&ops);
}

/// Runs a sequence of operations against a fresh shard and the model.
pub fn run_ops(ops: &[Op]) {
    let dir = tempfile::Builder::new()
        .prefix("warmshard-fuzz-ops-")
        .tempdir()
        .expect("creating a scratch directory");
    let path = dir.path().join("model.shard");
    let mut model = Model::default();
    let mut a = open(&path, 0);
    let mut b = open(&path, 0);
    let mut held: Vec<(Snapshot, Entries)> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        let writer = |via_b: bool| if via_b { &b } else { &a };
        match op {
            Op::Put { via_b, key, value } => {
                let (k, v) = (key.bytes(), value.bytes());
                let got = writer(*via_b).put_one(&k, &v).expect("put_one");
                same_outcome(got, model.write(true, &[(k, v)]), step, op);
            }
            Op::Merge { via_b, entries } => {
                let adds = batch(entries);
                let got = writer(*via_b).merge_in(adds.clone()).expect("merge_in");
                same_outcome(got, model.write(true, &adds), step, op);
            }
            Op::Replace { via_b, entries } => {
                let adds = batch(entries);
                let got = writer(*via_b)
                    .replace_all(adds.clone())
                    .expect("replace_all");
                same_outcome(got, model.write(false, &adds), step, op);
            }
            Op::Remove { via_b, keys } => {
                let keys: Vec<Vec<u8>> = keys.iter().take(MAX_BATCH).map(Key::bytes).collect();
                let got = writer(*via_b).remove(&keys).expect("remove");
                let visible = model.visible();
                let want = if keys.iter().any(|k| visible.contains_key(k)) {
                    let floor = model.generation;
                    model
                        .entries
                        .retain(|k, (_, g)| *g >= floor && !keys.contains(k));
                    model.committed()
                } else {
                    Modelled::Unchanged
                };
                same_outcome(got, want, step, op);
            }
            Op::Clear { via_b } => {
                let got = writer(*via_b).clear().expect("clear");
                let want = if model.file_exists {
                    Modelled::Committed(0)
                } else {
                    Modelled::Unchanged
                };
                model.entries.clear();
                model.file_exists = false;
                same_outcome(got, want, step, op);
            }
            Op::Bulk {
                via_b,
                merge,
                commit,
                entries,
            } => {
                let mode = if *merge {
                    BulkMode::Merge
                } else {
                    BulkMode::Replace
                };
                let adds = batch(entries);
                let mut bulk = writer(*via_b).bulk_writer(mode).expect("bulk_writer");
                for (k, v) in &adds {
                    bulk.add(k, v).expect("BulkWriter::add");
                }
                let distinct: std::collections::BTreeSet<&Vec<u8>> =
                    adds.iter().map(|(k, _)| k).collect();
                assert_eq!(bulk.len(), distinct.len(), "step {step}: BulkWriter::len");
                if *commit {
                    let got = bulk.commit().expect("BulkWriter::commit");
                    same_outcome(got, model.write(*merge, &adds), step, op);
                } else {
                    drop(bulk);
                }
            }
            Op::Reopen { newer_generation } => {
                model.generation += u64::from(*newer_generation);
                a = open(&path, model.generation);
                b = open(&path, model.generation);
            }
            Op::Hold => {
                if held.len() == MAX_HELD {
                    held.remove(0);
                }
                held.push((a.snapshot(), model.visible()));
            }
            Op::Release(i) => {
                if !held.is_empty() {
                    held.remove(usize::from(*i) % held.len());
                }
            }
        }
        check_handle(&a, &model, &format!("step {step} ({op:?}), handle A"));
        check_handle(&b, &model, &format!("step {step} ({op:?}), handle B"));
        for (i, (snapshot, visible)) in held.iter().enumerate() {
            check_reads(
                snapshot,
                visible,
                &format!("step {step}, held snapshot {i}"),
            );
        }
    }
}
