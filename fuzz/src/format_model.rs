//! Fuzz target `format_model`: an arbitrary list of (key, value) pairs, encoded in memory by the
//! real `Encoder`, optionally damaged at fuzzer-chosen bytes, then checked against a model.
//!
//! Promises under test:
//! - undamaged: the shard parses and passes `verify`; every key is found with its last value,
//!   generation and checksum, at the record the encoder wrote for it; keys not written miss;
//!   `slots` lists exactly the model; two records for one key fail `verify`;
//! - damaged: everything `format_bytes` checks (no panic, records inside the file, `find` and
//!   `find_many` agree, a passing `verify` means a self-consistent table), and, when `verify`
//!   passes, a lookup never returns another entry's record: what `find` returns for a key is
//!   the record the encoder wrote for that key (or, for a key the damage created, a damaged
//!   record), and it holds the written value unless the damage touched that record.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};

use crate::format_api::{self, Aligned};
use crate::format_bytes::{self, offset_in};

/// One byte of damage: `xor` applied at `at` modulo the file's length.
#[derive(Arbitrary, Debug, Clone)]
pub struct Flip {
    /// Position, taken modulo the file's length.
    pub at: u32,
    /// Bits to flip (0 leaves the byte alone).
    pub xor: u8,
}

/// One input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Entries in write order; a later value for a key replaces the earlier one.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// More keys to look up (most are absent).
    pub probes: Vec<Vec<u8>>,
    /// Damage applied to the encoded shard.
    pub flips: Vec<Flip>,
    /// Write a second record for the first key (as no writer should).
    pub duplicate: bool,
    /// Generation of every record.
    pub generation: u64,
}

/// Decodes `data` with `arbitrary` and runs it.
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        run_input(&input);
    }
}

/// Runs one decoded input: see the module docs.
pub fn run_input(input: &Input) {
    // The model: last value wins; records are written in order of each key's first appearance.
    let mut model: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    for (key, value) in &input.entries {
        if model.insert(key, value).is_none() {
            order.push(key);
        }
    }
    let twin: Option<Vec<u8>> = order.first().filter(|_| input.duplicate).map(|first| {
        let mut value = model[first].to_vec();
        value.push(0x5a);
        value
    });
    let mut written: Vec<(&[u8], &[u8])> = order.iter().map(|k| (*k, model[k])).collect();
    if let (Some(twin), Some(first)) = (&twin, order.first()) {
        written.push((first, twin));
    }
    let duplicate = twin.is_some();
    let encoded = format_api::encode(&written, input.generation, "fuzz 1.0");
    let clean = Aligned::new(&encoded.bytes, 0);
    // Record offset -> length, from the undamaged file (how a format pads is its own business).
    // Read at the offsets the Encoder reported: `slots` lists only the record each key is
    // served from, not a duplicate key's shadowed one.
    let lengths: BTreeMap<usize, usize> = match format_api::parse(clean.bytes()) {
        Some(parsed) => encoded
            .record_pos
            .iter()
            .filter_map(|&at| {
                let r = parsed.record_at(clean.bytes(), at)?;
                Some((offset_in(clean.bytes(), r.raw, "a record"), r.raw.len()))
            })
            .collect(),
        None => BTreeMap::new(),
    };
    // Key -> (file offset, length) of the record written for it (the first one of a duplicate);
    // `spans`: every record written.
    let mut records: BTreeMap<&[u8], (usize, usize)> = BTreeMap::new();
    let mut spans = Vec::new();
    for ((key, _), at) in written.iter().zip(&encoded.record_pos) {
        let span = (*at, lengths.get(at).copied().unwrap_or(0));
        records.entry(key).or_insert(span);
        spans.push(span);
    }
    assert!(
        spans.iter().all(|&(_, len)| len > 0),
        "the undamaged shard does not list every record where the Encoder wrote it"
    );
    let mut probes: Vec<&[u8]> = order.clone();
    probes.extend(input.probes.iter().map(|k| k.as_slice()));

    check_clean(
        clean.bytes(),
        &model,
        &records,
        &probes,
        duplicate,
        input.generation,
    );

    let mut damaged = encoded.bytes.clone();
    let mut touched = Vec::new();
    for flip in &input.flips {
        let at = flip.at as usize % damaged.len();
        damaged[at] ^= flip.xor;
        touched.push(at);
    }
    if damaged != encoded.bytes {
        let damaged = Aligned::new(&damaged, 0);
        check_damaged(damaged.bytes(), &model, &records, &spans, &probes, &touched);
    }
}

/// The undamaged shard against the model.
fn check_clean(
    file: &[u8],
    model: &BTreeMap<&[u8], &[u8]>,
    records: &BTreeMap<&[u8], (usize, usize)>,
    probes: &[&[u8]],
    duplicate: bool,
    generation: u64,
) {
    let checked =
        format_bytes::check(file, probes).expect("a shard the Encoder wrote does not parse");
    let verify = checked.parsed.verify(file);
    if duplicate {
        assert!(
            verify.is_err(),
            "verify passed on a shard with two records for one key"
        );
    } else if let Err(e) = verify {
        panic!("a shard the Encoder wrote fails verify: {e}");
    }
    let parsed = &checked.parsed;
    let extra = usize::from(duplicate);
    assert_eq!(parsed.entry_count(), (model.len() + extra) as u64);
    // `slots` lists the record each key is served from, once: a duplicate's twin is not listed.
    assert_eq!(
        checked.listed.len(),
        model.len(),
        "slots lists each key once"
    );
    for (key, value) in model {
        let record = parsed
            .find(file, key)
            .unwrap_or_else(|| panic!("written key {key:?} not found"));
        let at = offset_in(file, record.raw, "a record");
        if duplicate && at != records[key].0 {
            // The first written key has a twin; either record may come first in the table.
            continue;
        }
        assert_eq!(
            at, records[key].0,
            "found another record than the one written"
        );
        assert_eq!(
            record.value, *value,
            "found another value than the one written"
        );
        assert_eq!(record.checksum, format_api::value_checksum(value));
        assert_eq!(record.generation, generation, "found another generation");
    }
    if !duplicate {
        let listed: BTreeMap<&[u8], &[u8]> =
            checked.listed.iter().map(|r| (r.key, r.value)).collect();
        assert_eq!(
            &listed, model,
            "slots lists other entries than were written"
        );
    }
    for key in probes {
        if !model.contains_key(key) {
            assert!(
                parsed.find(file, key).is_none(),
                "a key never written was found"
            );
        }
    }
}

/// The damaged shard: the generic checks, and no other entry's record when `verify` passes.
fn check_damaged(
    file: &[u8],
    model: &BTreeMap<&[u8], &[u8]>,
    records: &BTreeMap<&[u8], (usize, usize)>,
    spans: &[(usize, usize)],
    probes: &[&[u8]],
    touched: &[usize],
) {
    let Some(checked) = format_bytes::check(file, probes) else {
        return;
    };
    if !checked.verified {
        return;
    }
    let hit = |at: usize, len: usize| touched.iter().any(|&t| (at..at + len).contains(&t));
    for key in probes {
        let Some(record) = checked.parsed.find(file, key) else {
            continue;
        };
        let at = offset_in(file, record.raw, "a record");
        let own = records
            .get(key)
            .is_some_and(|&(written_at, _)| written_at == at);
        // Damage may turn a written record into one for another key: it stays where it was.
        let damaged_record = spans
            .iter()
            .any(|&(written_at, len)| written_at == at && hit(written_at, len));
        assert!(
            own || damaged_record,
            "verify passed, but {key:?} was found in bytes not written as its record"
        );
        if own && !damaged_record {
            assert_eq!(
                record.value, model[key],
                "verify passed, but an undamaged record read another value"
            );
        }
    }
}
