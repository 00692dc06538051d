//! Fuzz target `format_bytes`: arbitrary bytes as a shard's content, checked in memory.
//!
//! The layer below the file (`format::parse`, `Layout::find`, `find_many`, `slots`, `verify`
//! and the records they return), without a file, a mapping or a write: tens of thousands of
//! executions a second where `open_get` runs hundreds. `open_get` keeps what only a file
//! reaches (mapping, the delta file, `Health`, the next write).
//!
//! Promises under test, for any bytes:
//! - `parse` never panics (on an aligned copy, and on a misaligned one);
//! - for a file that parses, every record any call returns lies inside the file, its key and
//!   value inside the record, and its length is the header's plus key's plus value's;
//! - `find` never returns a record whose key differs from the query, and the record it returns
//!   is one an occupied slot with the query's tag points to (checked when `slots` lists them
//!   all); for a key listed once by `slots`, that is the listed record;
//! - `find_many` and `find_archived` (whatever the slots' end hints say) return, key by key,
//!   the same record as `find`;
//! - `verify` never panics, and when it passes: `slots` lists `entry_count` records, each key
//!   hashes to its slot's tag, keys are unique, every value matches its checksum, every listed
//!   record is what `find` returns for its key, and keys not listed miss.

use crate::format_api::{self, Aligned, Parsed, RECORD_HEADER_LEN, Rec};

/// How many listed keys the lookups also probe with small variations, to keep a run short.
const MAX_VARIED_KEYS: usize = 16;

/// The offset of `part` in `file`, asserting that it lies inside it.
pub fn offset_in(file: &[u8], part: &[u8], what: &str) -> usize {
    let (base, start) = (file.as_ptr() as usize, part.as_ptr() as usize);
    assert!(
        start >= base && start + part.len() <= base + file.len(),
        "{what} lies outside the file"
    );
    start - base
}

/// Asserts that `record` lies inside `file` and is well formed: the key right after the header,
/// the value after the key (a format may pad between them) and up to the record's end. Returns
/// the record's offset.
fn check_record(file: &[u8], record: &Rec<'_>) -> usize {
    let at = offset_in(file, record.raw, "a record");
    let key_at = offset_in(file, record.key, "a key");
    let value_at = offset_in(file, record.value, "a value");
    assert_eq!(
        key_at,
        at + RECORD_HEADER_LEN,
        "the key does not follow the header"
    );
    assert!(
        value_at >= key_at + record.key.len(),
        "the value overlaps the key"
    );
    assert_eq!(
        value_at + record.value.len(),
        at + record.raw.len(),
        "the value does not end the record"
    );
    at
}

/// Two optional records are the same bytes of the file.
fn same(a: &Option<Rec<'_>>, b: &Option<Rec<'_>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a.raw, b.raw),
        _ => false,
    }
}

/// What [`check`] learnt about a file that parses.
pub struct Checked<'a> {
    /// The parsed layout.
    pub parsed: Parsed,
    /// Whether `verify` passed.
    pub verified: bool,
    /// The records `slots` listed (those that parse), in table order.
    pub listed: Vec<Rec<'a>>,
}

/// Keys to look up, borrowed where they can be (one buffer holds the made-up ones, so a run
/// allocates a handful of times, not once a key: allocation dominates a run under ASan).
struct Probes<'a> {
    borrowed: Vec<&'a [u8]>,
    made: Vec<u8>,
    made_spans: Vec<std::ops::Range<usize>>,
}

impl<'a> Probes<'a> {
    /// `extra`, the empty key, windows of the file, the listed keys, and for the first few of
    /// them small variations (one byte longer, one shorter, last byte changed).
    fn new(file: &'a [u8], listed: &[Rec<'a>], extra: &[&'a [u8]]) -> Self {
        let mut borrowed: Vec<&'a [u8]> = extra.to_vec();
        borrowed.push(&[]);
        let step = (file.len() / 8).max(1);
        for start in (0..file.len()).step_by(step) {
            for len in [1usize, 8, 24] {
                if let Some(window) = file.get(start..start + len) {
                    borrowed.push(window);
                }
            }
        }
        let mut made = Vec::new();
        let mut made_spans = Vec::new();
        for (i, record) in listed.iter().enumerate() {
            let key = record.key;
            borrowed.push(key);
            if i >= MAX_VARIED_KEYS {
                continue;
            }
            if let Some((last, shorter)) = key.split_last() {
                borrowed.push(shorter);
                let at = made.len();
                made.extend_from_slice(shorter);
                made.push(last ^ 1);
                made_spans.push(at..made.len());
            }
            let at = made.len();
            made.extend_from_slice(key);
            made.push(0);
            made_spans.push(at..made.len());
        }
        Probes {
            borrowed,
            made,
            made_spans,
        }
    }

    /// Every probe key.
    fn all(&self) -> Vec<&[u8]> {
        let made = self.made_spans.iter().map(|r| &self.made[r.clone()]);
        self.borrowed.iter().copied().chain(made).collect()
    }
}

/// Every check on `file` (already aligned as a mapping would be); `extra` keys are probed too.
/// Returns `None` when the file does not parse.
pub fn check<'a>(file: &'a [u8], extra: &[&'a [u8]]) -> Option<Checked<'a>> {
    let parsed = format_api::parse(file)?;
    let head = parsed.head().clone();
    assert_eq!(
        head.file_len,
        file.len() as u64,
        "parsed with another length"
    );
    assert!(
        head.producer.start <= head.producer.end && head.producer.end <= file.len(),
        "the producer string lies outside the file"
    );
    assert_eq!(parsed.entry_count(), head.entry_count);

    let slots = parsed.slots(file);
    assert!(
        slots.len() as u64 <= parsed.entry_count(),
        "slots listed more than the entry count"
    );
    assert!(
        slots.windows(2).all(|w| w[0].0 < w[1].0),
        "slot indices not increasing"
    );
    // `slots` stops at the entry count: below it, the listing is the whole table.
    let complete = (slots.len() as u64) < parsed.entry_count();
    let mut listed = Vec::with_capacity(slots.len());
    // (record offset, tag of a slot pointing there) and (key, record offset), sorted.
    let mut tag_at: Vec<(usize, u32)> = Vec::with_capacity(slots.len());
    let mut key_at: Vec<(&[u8], usize)> = Vec::with_capacity(slots.len());
    for (_, tag, record) in &slots {
        if let Some(record) = record {
            let at = check_record(file, record);
            tag_at.push((at, *tag));
            key_at.push((record.key, at));
            listed.push(*record);
        }
    }
    tag_at.sort_unstable();
    key_at.sort_unstable();
    key_at.dedup();
    // The distinct records that hold `key`.
    let holders = |key: &[u8]| {
        let from = key_at.partition_point(|(k, _)| *k < key);
        let to = key_at.partition_point(|(k, _)| *k <= key);
        &key_at[from..to]
    };

    let probes = Probes::new(file, &listed, extra);
    let probes = probes.all();
    let mut found = Vec::with_capacity(probes.len());
    for key in &probes {
        let record = parsed.find(file, key);
        // The end hint only loads a byte early: whatever the slot's low bits say, a typed
        // lookup finds exactly what a byte lookup finds.
        for root_len in [1, 24, 4096] {
            assert!(
                same(&parsed.find_archived(file, key, root_len), &record),
                "find_archived and find disagree (root_len {root_len})"
            );
        }
        if let Some(record) = &record {
            assert_eq!(record.key, *key, "find returned another key's record");
            let at = check_record(file, record);
            if complete {
                let tag = format_api::slot_tag(format_api::key_hash(key));
                assert!(
                    tag_at.binary_search(&(at, tag)).is_ok(),
                    "find returned a record no slot with the key's tag points to"
                );
                if let [(_, only)] = holders(key) {
                    assert_eq!(*only, at, "find and slots disagree on a key's record");
                }
            }
        }
        found.push(record);
    }
    let many = parsed.find_many(file, &probes);
    assert_eq!(many.len(), probes.len(), "find_many's output length");
    for (i, (one, batch)) in found.iter().zip(&many).enumerate() {
        assert!(
            same(one, batch),
            "find_many and find disagree on probe {i} ({:?})",
            probes[i]
        );
    }

    let verified = parsed.verify(file).is_ok();
    if verified {
        assert_eq!(
            listed.len(),
            slots.len(),
            "verify passed with a slot whose record does not parse"
        );
        assert_eq!(
            listed.len() as u64,
            parsed.entry_count(),
            "verify passed with another number of entries than the root's"
        );
        assert!(
            key_at.len() == listed.len() && key_at.windows(2).all(|w| w[0].0 != w[1].0),
            "verify passed with a key listed twice"
        );
        for ((_, tag, _), record) in slots.iter().zip(&listed) {
            assert_eq!(
                *tag,
                format_api::slot_tag(format_api::key_hash(record.key)),
                "verify passed with a slot whose tag is not its key's"
            );
            assert_eq!(
                format_api::value_checksum(record.value),
                record.checksum,
                "verify passed with a value that does not match its checksum"
            );
            assert!(
                same(&parsed.find(file, record.key), &Some(*record)),
                "verify passed but a listed record is not found by its own key"
            );
        }
        for (key, record) in probes.iter().zip(&found) {
            if holders(key).is_empty() {
                assert!(
                    record.is_none(),
                    "verify passed but a key no slot lists was found"
                );
            }
        }
    }
    Some(Checked {
        parsed,
        verified,
        listed,
    })
}

/// Runs one input: see the module docs.
pub fn run(data: &[u8]) {
    // As a mapping holds it (page-aligned), and one byte off: parse must not panic there either.
    let aligned = Aligned::new(data, 0);
    check(aligned.bytes(), &[]);
    let skewed = Aligned::new(data, 1);
    check(skewed.bytes(), &[]);
}
