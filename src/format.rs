//! The on-disk format of a shard: the only module that knows byte offsets.
//!
//! A shard is one rkyv archive (rkyv 0.8) whose root holds only fixed-size fields, so opening
//! validates it in O(1) in every build profile. warmshard selects no rkyv format feature: the
//! archive's pointer width, endianness and alignment are whatever the build graph gives rkyv
//! (its defaults: 32-bit, little-endian, aligned), and the header records them (see
//! [`ArchiveLayout`]); a shard written under other features reads as foreign. The file is laid
//! out in the order it is written, so that a writer can stream values straight to disk:
//!
//! ```text
//! offset          size        part
//! 0               32          preamble (plain bytes, see below)
//! 32              R           records arena: one record per entry, each starting at a
//!                             multiple of 16 (VALUE_ALIGN), zero bytes in between
//! 32+R            8*L         slot table: N slots sorted by key hash, each at or just after
//!                             its home position, and L - N empty slots
//! ..              P           the producer string's bytes (when not stored inline)
//! ..              size(root)  rkyv root `ArchivedRoot` (arena positions, counts, producer)
//! end-32          32          trailer (plain bytes, see below)
//! ```
//!
//! Opening reads only the last page (trailer and root) before the lookup's own pages (one slot
//! table page, one record page): rkyv wants
//! an object's children before it, so the root comes last, and the trailer after it says where
//! it is. The preamble identifies the file to people and tools (`xxd`, `file`) and tells a
//! truncated shard from a foreign file when the trailer is wrong.
//!
//! **Preamble** (offset 0, 32 bytes; check it with `xxd -l 32 file.shard`) and **trailer** (the
//! last 32 bytes, `tail -c 32 file.shard | xxd`) share one layout; the trailer's magic is
//! [`TRAILER_MAGIC`]:
//!
//! | offset | size | field                                                          |
//! |-------:|-----:|----------------------------------------------------------------|
//! | 0      | 8    | magic `WARMSHRD`                                               |
//! | 8      | 4    | format version, u32 LE (currently [`FORMAT_VERSION`])          |
//! | 12     | 1    | rkyv pointer width of the archive in bits (16, 32 or 64)       |
//! | 13     | 1    | rkyv endianness of the archive (1 = little, 2 = big)           |
//! | 14     | 1    | alignment of an archived u64 (8 = aligned, 1 = `unaligned`)    |
//! | 15     | 1    | reserved, zero                                                 |
//! | 16     | 8    | total file length in bytes, u64 LE (catches truncation)        |
//! | 24     | 8    | position of the rkyv root, u64 LE (trailer only; 0 in the preamble) |
//!
//! **Root** (validated by rkyv's `check_bytes` at the position the trailer gives; its integers
//! are rkyv's archived u64, so in the archive's endianness): the producer string, the records
//! arena's position and length, the slot table's position and length, the build time (ns since
//! the Unix epoch), the entry count, the total value bytes, the slot capacity C and probe limit
//! of the slot table, the oldest entry generation, the file's random `shard_id` and, for a
//! delta file, the `base_id` of the base it extends. Nothing in the root grows with the shard,
//! so validation costs the same for 10 entries as for 10 million, optimised or not. Opening
//! then checks by hand that the arenas lie after the preamble, in order, without overlap and
//! before the root, and that the records arena starts at a multiple of 16. Every lookup slices
//! the arenas with bounds checks, so a lying offset produces a miss, never an out-of-bounds read.
//!
//! **Record** (in the records arena; starts at a multiple of [`VALUE_ALIGN`] = 16 from the start
//! of the file; integers LE):
//!
//! | offset          | size | field                                                   |
//! |----------------:|-----:|---------------------------------------------------------|
//! | 0               | 8    | generation the entry was written under                  |
//! | 8               | 8    | checksum: [`value_checksum`] (XXH3-64) of the value      |
//! | 16              | 4    | key length K                                            |
//! | 20              | 4    | value length V                                          |
//! | 24              | K    | key bytes                                               |
//! | 24+K            | 0-15 | zero bytes up to the next multiple of 16                |
//! | A = ⌈24+K⌉₁₆    | V    | value bytes: start at a multiple of 16 of the file      |
//! | A+V             | 0-15 | zero bytes up to the next record (or the slot table)    |
//!
//! Because records start aligned, a record copied verbatim into another shard keeps its value
//! aligned. An aligned value can be an rkyv archive read in place (see the typed API,
//! `Snapshot::get_typed`): 16 bytes suits every archived type. The padding costs 15 bytes per
//! entry on average (2% of W1's file).
//!
//! **Slot** (8 bytes, integers LE):
//!
//! | offset | size | field                                                                  |
//! |-------:|-----:|------------------------------------------------------------------------|
//! | 0      | 4    | tag: the key hash's high 32 bits                                       |
//! | 4      | 4    | locator: the record's offset in the records arena (a multiple of 16, so the records take less than 4 GiB) plus, in the low 4 bits, the *end hint* |
//!
//! The end hint is how many 64-byte lines of the file past the record's first line the value's
//! last byte lies (0 to 14), or [`NO_END_HINT`] (15) when the value is empty or ends further
//! away ([`end_hint`]). An rkyv archive keeps its root at its end, so a typed lookup
//! (`Snapshot::get_typed`) starts loading that line from the slot, while the record header is
//! still on its way, instead of after it: the root costs no extra dependent cache miss. Byte
//! lookups ignore the hint, and a wrong hint costs one useless load, never a wrong result
//! (`verify` reports it). An empty slot holds `u32::MAX` in both fields ([`EMPTY_SLOT`]). A tag
//! can match another key's: a lookup compares the keys.
//!
//! **Slot table** (no separate index: a key's hash says where its slot is). A key's *home* is
//! `(hash * C) >> 64` (see [`home_slot`]), with C = [`slot_capacity_for`] the entry count (two
//! slots per entry). Homes are monotone in the hash, so the writer places the slots in hash
//! order, each at `max(home, previous slot + 1)`, and leaves the positions in between empty; the
//! table ends after the last slot (it may run a little past C). So every slot sits at or after
//! its home, every position from a key's home to its slot is occupied, and hashes increase along
//! the table. A lookup starts at the key's home and scans forward until it finds the tag, meets
//! a larger tag or an empty slot, or has covered the root's *probe limit* (the largest
//! `slot − home` in the table): one or two slots on average, in one cache line and one page. The root's
//! probe limit bounds the scan whatever the file says.
//!
//! **Base and delta.** A shard is one base file plus, optionally, a small delta file
//! (`<shard>.delta`, same format) holding entries written since the base was built. A delta
//! counts only if its `base_id` equals the base's `shard_id`; lookups read the delta first. Small
//! writes rewrite only the delta; once it passes [`delta_limit`] the next write folds it into a
//! new base.
//!
//! The key hash is [`key_hash`]: XXH3-64 with seed 0, a published, platform-independent function;
//! it is part of the format and never changes without a format version bump.

use std::io::{self, Seek, Write};
use std::ops::Range;

use rkyv::rancor;
use rkyv::ser::writer::IoWriter;
use rkyv::{Archive, Serialize};

use crate::health::Health;

/// Magic bytes at offset 0 of every shard.
pub const MAGIC: [u8; 8] = *b"WARMSHRD";
/// Magic bytes of the trailer, the last 32 bytes of every shard.
pub const TRAILER_MAGIC: [u8; 8] = *b"WSHRDEND";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 4;
/// Endianness code of an archive written with rkyv's little-endian primitives (its default).
pub const ENDIANNESS_LITTLE: u8 = 1;
/// Endianness code of an archive written with rkyv's `big_endian` feature.
pub const ENDIANNESS_BIG: u8 = 2;

/// The archived layout rkyv uses in this build, which depends on the rkyv format features the
/// whole build graph selects (warmshard selects none). Recorded in every shard's preamble and
/// trailer; a shard recorded with another layout reads as
/// [`Health::IncompatibleLayout`] and is rebuilt by the next write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveLayout {
    /// Width of archived `usize`/relative pointers, in bits (16, 32 or 64).
    pub pointer_width_bits: u8,
    /// [`ENDIANNESS_LITTLE`] or [`ENDIANNESS_BIG`].
    pub endianness: u8,
    /// Alignment of an archived `u64`: 8 (rkyv's default, aligned) or 1 (`unaligned`).
    pub alignment: u8,
}

impl ArchiveLayout {
    /// The layout of this build's rkyv, read from its archived primitive types.
    pub fn of_this_build() -> ArchiveLayout {
        use rkyv::primitive::{ArchivedU32, ArchivedU64, ArchivedUsize};
        use std::any::TypeId;
        let archived_u32 = TypeId::of::<ArchivedU32>();
        let big = archived_u32 == TypeId::of::<rkyv::rend::u32_be>()
            || archived_u32 == TypeId::of::<rkyv::rend::unaligned::u32_ube>();
        ArchiveLayout {
            pointer_width_bits: (8 * std::mem::size_of::<ArchivedUsize>()) as u8,
            endianness: if big {
                ENDIANNESS_BIG
            } else {
                ENDIANNESS_LITTLE
            },
            alignment: std::mem::align_of::<ArchivedU64>() as u8,
        }
    }
}

impl std::fmt::Display for ArchiveLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endianness = match self.endianness {
            ENDIANNESS_LITTLE => "little-endian",
            ENDIANNESS_BIG => "big-endian",
            _ => "unknown endianness",
        };
        let alignment = match self.alignment {
            1 => "unaligned".to_string(),
            a => format!("aligned ({a})"),
        };
        write!(
            f,
            "{}-bit pointers, {endianness}, {alignment}",
            self.pointer_width_bits
        )
    }
}

/// Every record, and so every value, starts at a multiple of this many bytes from the start of
/// the file: enough for any archived rkyv type, so a typed value is read in place.
pub const VALUE_ALIGN: usize = 16;
/// Size of the preamble at offset 0.
pub const PREAMBLE_LEN: usize = 32;
/// Size of a record header in the records arena.
pub const RECORD_HEADER_LEN: usize = 24;
/// Size of one slot in the slot table.
pub const SLOT_LEN: usize = 8;
/// The bytes of an empty slot in the slot table: `u32::MAX` as tag and as record offset.
pub const EMPTY_SLOT: [u8; SLOT_LEN] = [0xff; SLOT_LEN];
/// The locator of an empty slot (no record's: a record's offset is below it, see [`Encoder`]).
const EMPTY_OFFSET: u32 = u32::MAX;
/// The bits of a slot's locator that hold the end hint (a record offset's are zero there).
const END_HINT_MASK: u32 = VALUE_ALIGN as u32 - 1;
/// The end hint of a value that is empty or ends 15 or more 64-byte lines past its record's
/// first line: no line to load early.
pub const NO_END_HINT: u32 = END_HINT_MASK;
/// The cache line size the end hint counts in.
const LINE: u64 = 64;

/// The end hint of a slot (see the module docs) for a record at `offset` of a records arena
/// that starts at `records_pos` in the file, with a key of `key_len` and a value of `value_len`
/// bytes.
pub fn end_hint(records_pos: u64, offset: u64, key_len: usize, value_len: usize) -> u32 {
    let start = records_pos.saturating_add(offset);
    let last = value_offset(key_len)
        .and_then(|at| u64::try_from(at.checked_add(value_len)?).ok())
        .and_then(|end| start.checked_add(end.checked_sub(1)?));
    match last {
        Some(last) if value_len > 0 => {
            let lines = last / LINE - start / LINE;
            u32::try_from(lines)
                .ok()
                .filter(|&l| l < NO_END_HINT)
                .unwrap_or(NO_END_HINT)
        }
        _ => NO_END_HINT,
    }
}

/// The record offset a slot's locator holds (its low bits, the end hint, masked off).
#[inline(always)]
fn locator_offset(locator: u32) -> u64 {
    u64::from(locator & !END_HINT_MASK)
}

/// The tag a slot stores for `hash`: its high 32 bits (ordered as the hashes are).
#[inline(always)]
pub fn slot_tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

const FILE_LEN_OFFSET: usize = 16;
const ROOT_POS_OFFSET: usize = 24;

/// The stable key hash of the index: XXH3-64, seed 0. Part of the format.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The value checksum stored in each record: XXH3-64, seed 0. Part of the format.
#[inline]
pub fn value_checksum(value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value)
}

/// The home position of `hash` in a slot table of capacity `capacity`:
/// `(hash * capacity) >> 64`, below `capacity` and monotone in the hash.
#[inline]
pub fn home_slot(hash: u64, capacity: u64) -> u64 {
    ((u128::from(hash) * u128::from(capacity)) >> 64) as u64
}

/// The largest delta file a small write keeps before folding it into a new base:
/// `max(32 KiB, 16 * sqrt(base length))`, so the median write costs O(sqrt n) and the occasional
/// full rewrite is amortized over O(sqrt n) writes.
pub fn delta_limit(base_len: u64) -> u64 {
    (32 * 1024).max(16 * (base_len as f64).sqrt() as u64)
}

/// The slot capacity C (the range of home positions) for `entries` entries: two slots per
/// entry. Half the positions are empty, so a slot sits half a position past its home on
/// average and a miss stops within a slot or two. (At 1.25 slots per entry a lookup of an
/// absent key scans about three slots; with 16-byte slots that measured 1.2x slower than the
/// bucket table this table replaced.)
pub fn slot_capacity_for(entries: u64) -> u64 {
    entries.saturating_mul(2).max(1)
}

/// The archive root, written last before the trailer. Only fixed-size fields and the short
/// producer string: validating it with rkyv's `check_bytes` costs the same in every build
/// profile, whatever the shard's size. The arenas are plain byte ranges checked by [`parse`].
#[derive(Archive, Serialize)]
#[rkyv(archived = ArchivedRoot)]
struct Root {
    producer: String,
    records_pos: u64,
    records_len: u64,
    slots_pos: u64,
    slots_len: u64,
    build_time_ns: u64,
    entry_count: u64,
    value_bytes: u64,
    slot_capacity: u64,
    probe_limit: u64,
    oldest_generation: u64,
    shard_id: u64,
    base_id: u64,
}

/// Header fields of a validated shard (everything except the arenas).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// Format version read from the preamble.
    pub format_version: u32,
    /// Byte range of the producer string inside the file.
    pub producer: Range<usize>,
    /// Build time in nanoseconds since the Unix epoch.
    pub build_time_ns: u64,
    /// Number of entries (slots).
    pub entry_count: u64,
    /// Sum of all value lengths.
    pub value_bytes: u64,
    /// The lowest generation of any entry (`u64::MAX` when empty).
    pub oldest_generation: u64,
    /// Random identity of this file, chosen by its writer.
    pub shard_id: u64,
    /// For a delta file, the `shard_id` of the base it belongs to; 0 for a base.
    pub base_id: u64,
    /// Total file length.
    pub file_len: u64,
}

/// Byte ranges of a validated shard's arenas: all a lookup needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    records: Range<usize>,
    slots: Range<usize>,
    slot_capacity: u64,
    /// Slots a lookup scans past the first, at most.
    probe_limit: usize,
    entry_count: u64,
}

/// One record read from the records arena, bounds-checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record<'a> {
    /// Generation the entry was written under.
    pub generation: u64,
    /// Stored checksum of the value.
    pub checksum: u64,
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
    /// The whole record, header included, for verbatim copies.
    pub raw: &'a [u8],
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

#[inline]
fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn range_in(file: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - file.as_ptr() as usize;
    start..start + part.len()
}

/// `at` rounded up to the next multiple of [`VALUE_ALIGN`].
#[inline(always)]
fn align_up(at: usize) -> Option<usize> {
    Some(at.checked_add(VALUE_ALIGN - 1)? & !(VALUE_ALIGN - 1))
}

/// Where a record's value starts, relative to the record's own start, for a key of `key_len`
/// bytes: after the header and the key, rounded up to [`VALUE_ALIGN`].
#[inline(always)]
fn value_offset(key_len: usize) -> Option<usize> {
    align_up(RECORD_HEADER_LEN.checked_add(key_len)?)
}

/// Parses a record at `offset` of the records arena; `None` if it does not fit or does not
/// start at a multiple of [`VALUE_ALIGN`].
#[inline]
pub(crate) fn record_at(records: &[u8], offset: u64) -> Option<Record<'_>> {
    let start = usize::try_from(offset).ok()?;
    if start % VALUE_ALIGN != 0 {
        return None;
    }
    let head = records.get(start..start.checked_add(RECORD_HEADER_LEN)?)?;
    let generation = read_u64(head, 0)?;
    let checksum = read_u64(head, 8)?;
    let key_len = read_u32(head, 16)? as usize;
    let value_len = read_u32(head, 20)? as usize;
    let value_at = value_offset(key_len)?;
    let end = start.checked_add(value_at)?.checked_add(value_len)?;
    let raw = records.get(start..end)?;
    Some(Record {
        generation,
        checksum,
        key: &raw[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len],
        value: &raw[value_at..],
        raw,
    })
}

/// The record at `offset` if it holds `key`. The value's position is computed from the length
/// of `key` (equal to the stored one when the keys match) rather than from the record header,
/// so the processor can start loading the value while the header is still on its way.
#[inline(always)]
fn record_with_key<'a>(records: &'a [u8], offset: u64, key: &[u8]) -> Option<Record<'a>> {
    let start = usize::try_from(offset).ok()?;
    if start % VALUE_ALIGN != 0 {
        return None;
    }
    let key_end = RECORD_HEADER_LEN.checked_add(key.len())?;
    let value_at = value_offset(key.len())?;
    let head = records.get(start..start.checked_add(RECORD_HEADER_LEN)?)?;
    let value_len = read_u32(head, 20)? as usize;
    let end = start.checked_add(value_at)?.checked_add(value_len)?;
    let raw = records.get(start..end)?;
    if read_u32(head, 16)? as usize != key.len() || &raw[RECORD_HEADER_LEN..key_end] != key {
        return None;
    }
    Some(Record {
        generation: read_u64(head, 0)?,
        checksum: read_u64(head, 8)?,
        key: &raw[RECORD_HEADER_LEN..key_end],
        value: &raw[value_at..],
        raw,
    })
}

/// Reads and checks the preamble, then validates the rkyv root with `check_bytes`.
///
/// This is O(1): it never looks at individual records.
pub(crate) fn parse(file: &[u8]) -> Result<(Header, Layout), Health> {
    if file.is_empty() {
        return Err(Health::EmptyFile);
    }
    let Some(trailer) = file.len().checked_sub(PREAMBLE_LEN).map(|at| &file[at..]) else {
        return Err(Health::NotAShard);
    };
    if trailer[..8] != TRAILER_MAGIC {
        // Not the end of a shard: a truncated (or extended) one, or something else entirely.
        // Only this error path reads the first page.
        if file[..8] == MAGIC {
            return Err(Health::Truncated {
                declared: read_u64(file, FILE_LEN_OFFSET).unwrap_or(0),
                actual: file.len() as u64,
            });
        }
        return Err(Health::NotAShard);
    }
    let version = read_u32(trailer, 8).unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(Health::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let found = ArchiveLayout {
        pointer_width_bits: trailer[12],
        endianness: trailer[13],
        alignment: trailer[14],
    };
    if found != ArchiveLayout::of_this_build() {
        return Err(Health::IncompatibleLayout {
            pointer_width_bits: found.pointer_width_bits,
            endianness: found.endianness,
            alignment: found.alignment,
        });
    }
    let declared = read_u64(trailer, FILE_LEN_OFFSET).unwrap_or(0);
    if declared != file.len() as u64 {
        return Err(Health::Truncated {
            declared,
            actual: file.len() as u64,
        });
    }
    let root_pos = usize::try_from(read_u64(trailer, ROOT_POS_OFFSET).unwrap_or(0)).unwrap_or(0);
    let body = &file[..file.len() - PREAMBLE_LEN];
    // The root holds only fixed-size fields and the producer string, so this is O(1) in every
    // build profile (no per-byte or per-entry loop for the optimiser to remove).
    let root =
        rkyv::api::low::access_pos::<ArchivedRoot, rancor::Error>(body, root_pos).map_err(|e| {
            Health::Corrupt {
                reason: format!("archive validation failed: {e}"),
            }
        })?;
    let corrupt = |reason: &str| Health::Corrupt {
        reason: reason.to_string(),
    };
    let arena = |pos: u64, len: u64| -> Option<Range<usize>> {
        let start = usize::try_from(pos).ok()?;
        Some(start..start.checked_add(usize::try_from(len).ok()?)?)
    };
    // The arenas lie after the preamble, in order, without overlap, before the root; records
    // start aligned, so every value does (see the record table).
    let records = arena(root.records_pos.to_native(), root.records_len.to_native())
        .filter(|r| r.start >= PREAMBLE_LEN && r.start % VALUE_ALIGN == 0)
        .ok_or_else(|| corrupt("records arena out of place"))?;
    let slots = arena(root.slots_pos.to_native(), root.slots_len.to_native())
        .filter(|s| records.end <= s.start && s.end <= root_pos)
        .ok_or_else(|| corrupt("slot table out of place"))?;
    let entry_count = root.entry_count.to_native();
    let slot_capacity = root.slot_capacity.to_native();
    // Lookups slice the table with bounds checks, so these only reject nonsense early.
    if slots.len() % SLOT_LEN != 0 || ((slots.len() / SLOT_LEN) as u64) < entry_count {
        return Err(corrupt("slot table length does not fit the entry count"));
    }
    if slot_capacity == 0 {
        return Err(corrupt("slot capacity is zero"));
    }
    let header = Header {
        format_version: version,
        producer: range_in(file, root.producer.as_bytes()),
        build_time_ns: root.build_time_ns.to_native(),
        entry_count,
        value_bytes: root.value_bytes.to_native(),
        oldest_generation: root.oldest_generation.to_native(),
        shard_id: root.shard_id.to_native(),
        base_id: root.base_id.to_native(),
        file_len: file.len() as u64,
    };
    let layout = Layout {
        records,
        slots,
        slot_capacity,
        probe_limit: usize::try_from(root.probe_limit.to_native()).unwrap_or(usize::MAX),
        entry_count,
    };
    Ok((header, layout))
}

/// What [`Snapshot::verify`](crate::Snapshot::verify) found wrong in one shard file: which part,
/// which slot or which key, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyProblem {
    /// The preamble (the first 32 bytes) does not match the trailer.
    Preamble,
    /// An arena ("slot table" or "records") lies outside the file.
    OutOfBounds(&'static str),
    /// A slot of the slot table is wrong.
    Slot {
        /// The slot's index in the table.
        index: usize,
        /// What is wrong with it.
        problem: SlotProblem,
    },
    /// An entry is wrong.
    Entry {
        /// The entry's key.
        key: Vec<u8>,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// Two slots point at records that overlap (or at one record).
    OverlappingRecords {
        /// Offset of the first record in the records arena.
        first: usize,
        /// Offset of the record that starts inside it.
        second: usize,
    },
    /// The slot table holds another number of entries than the root declares.
    EntryCount {
        /// Entries found in the slot table.
        found: u64,
        /// Entries the root declares.
        declared: u64,
    },
}

/// What is wrong with one slot ([`VerifyProblem::Slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotProblem {
    /// An empty slot that holds a tag.
    TaggedEmpty,
    /// Its record lies outside the records arena or does not start at a multiple of 16.
    RecordOutOfBounds,
    /// Nonzero bytes between the record's key and its value.
    NonzeroPadding,
    /// The record's key does not hash to the slot's tag.
    TagMismatch,
    /// The slot's end hint does not name the line where its record's value ends (harmless to
    /// lookups, which only load that line early, but not what a writer writes).
    WrongEndHint,
    /// The slot's hash is smaller than the previous slot's.
    Unsorted,
    /// The slot lies beyond the probe limit of its home, or after an empty slot past its home.
    OutOfReach {
        /// The home slot of its key.
        home: usize,
    },
}

/// What is wrong with one entry ([`VerifyProblem::Entry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The value does not match its stored checksum (bit rot or tampering).
    Checksum,
    /// Another record holds the same key.
    Duplicate,
}

impl VerifyProblem {
    fn slot(index: usize, problem: SlotProblem) -> Self {
        VerifyProblem::Slot { index, problem }
    }

    fn entry(key: &[u8], problem: EntryProblem) -> Self {
        VerifyProblem::Entry {
            key: key.to_vec(),
            problem,
        }
    }
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::Preamble => write!(f, "the preamble does not match the trailer"),
            VerifyProblem::OutOfBounds(arena) => write!(f, "{arena} out of bounds"),
            VerifyProblem::Slot { index, problem } => {
                let what = match problem {
                    SlotProblem::TaggedEmpty => "an empty slot with a tag".to_string(),
                    SlotProblem::RecordOutOfBounds => {
                        "record out of bounds or misaligned".to_string()
                    }
                    SlotProblem::NonzeroPadding => "nonzero padding before the value".to_string(),
                    SlotProblem::TagMismatch => {
                        "key hash does not match the slot's tag".to_string()
                    }
                    SlotProblem::WrongEndHint => {
                        "the end hint does not name the line where the value ends".to_string()
                    }
                    SlotProblem::Unsorted => "slots are not sorted by hash".to_string(),
                    SlotProblem::OutOfReach { home } => {
                        format!("entry out of reach of its home slot {home}")
                    }
                };
                write!(f, "slot {index}: {what}")
            }
            VerifyProblem::Entry { key, problem } => {
                let what = match problem {
                    EntryProblem::Checksum => "value checksum mismatch (bit rot or tampering)",
                    EntryProblem::Duplicate => "duplicate key",
                };
                write!(f, "entry {:?}: {what}", String::from_utf8_lossy(key))
            }
            VerifyProblem::OverlappingRecords { first, second } => write!(
                f,
                "the records at offsets {first} and {second} overlap (two slots share or cut into one record)"
            ),
            VerifyProblem::EntryCount { found, declared } => write!(
                f,
                "the slot table holds {found} entries, the root says {declared}"
            ),
        }
    }
}

impl Layout {
    /// The record that starts at `file_offset` of `file`, if one parses there (for the fuzz
    /// checks, which know where the writer put each record, shadowed ones included).
    pub(crate) fn record_at_file_offset<'a>(
        &self,
        file: &'a [u8],
        file_offset: usize,
    ) -> Option<Record<'a>> {
        let records = file.get(self.records.clone())?;
        record_at(records, file_offset.checked_sub(self.records.start)? as u64)
    }

    /// Number of entries in the slot table.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The slots a lookup of `hash` scans: from its home through the probe limit, clipped to the
    /// table (empty when the home lies past the table's end), with the index of the first.
    #[inline(always)]
    fn candidates<'a>(&self, slots: &'a [u8], hash: u64) -> (usize, &'a [u8]) {
        let home = home_slot(hash, self.slot_capacity) as usize;
        let start = home.saturating_mul(SLOT_LEN).min(slots.len());
        let span = self.probe_limit.saturating_add(1).saturating_mul(SLOT_LEN);
        let end = start.saturating_add(span).min(slots.len());
        (start / SLOT_LEN, &slots[start..end])
    }

    /// The record offset of the first slot holding `hash`'s tag among `candidates`, scanning
    /// until a larger tag (an empty slot's is `u32::MAX`). Used by [`find_many`](Layout::find_many).
    #[inline(always)]
    fn first_offset(candidates: &[u8], hash: u64) -> Option<u64> {
        let tag = slot_tag(hash);
        for slot in candidates.chunks_exact(SLOT_LEN) {
            let stored = read_u32(slot, 0)?;
            if stored == tag {
                return read_u32(slot, 4).map(locator_offset);
            }
            if stored > tag {
                return None;
            }
        }
        None
    }

    /// Finds `key`; returns its record, or `None`. `file` is the same bytes given to [`parse`].
    #[inline(always)]
    pub fn find<'a>(&self, file: &'a [u8], key: &[u8]) -> Option<Record<'a>> {
        self.find_slot(file, key, 0).map(|(_, record)| record)
    }

    /// [`find`](Layout::find) for a value about to be read as an rkyv archive whose root takes
    /// its last `root_len` bytes (0: a byte lookup, which ignores the hint): the lookup starts
    /// loading the line the slot's end hint names as soon as it has read the slot, so that the
    /// root is on its way together with the record header (see the module docs on the slot).
    #[inline(always)]
    pub fn find_archived<'a>(
        &self,
        file: &'a [u8],
        key: &[u8],
        root_len: usize,
    ) -> Option<Record<'a>> {
        self.find_slot(file, key, root_len)
            .map(|(_, record)| record)
    }

    /// Starts loading the line where the value of the record at `offset` ends, from its slot's
    /// end `hint` (lines count from the start of the file, which a mapping places at a page
    /// boundary): a plain read whose result is dropped, so the processor overlaps its cache miss
    /// with the record header's, with no `unsafe` prefetch instruction. Bounds-checked like
    /// every read: a lying hint reads one byte of the file, nothing else.
    ///
    /// Only that line: a root that straddles it and the line before gets the rest after the
    /// header, as without a hint (loading both lines measured slower in throughput, and no
    /// faster in latency, than the one).
    #[inline(always)]
    fn load_value_end(&self, file: &[u8], offset: u64, hint: u32) {
        if hint == NO_END_HINT {
            return;
        }
        // Wrapping arithmetic, a few instructions on the hot path: the records arena starts
        // inside the file and `offset` < 2^32, so nothing wraps on a 64-bit target; where it
        // could (a 32-bit one), a wrapped position is just one more bounds-checked read.
        let line = LINE as usize;
        let first_line = self.records.start.wrapping_add(offset as usize) & !(line - 1);
        let at = first_line.wrapping_add(hint as usize * line);
        std::hint::black_box(file.get(at).copied());
    }

    /// Finds `key`; returns the index of the slot that serves it and its record. With
    /// `root_len > 0`, loads the value's end early (see [`find_archived`](Layout::find_archived)).
    #[inline(always)]
    fn find_slot<'a>(
        &self,
        file: &'a [u8],
        key: &[u8],
        root_len: usize,
    ) -> Option<(usize, Record<'a>)> {
        let hash = key_hash(key);
        let tag = slot_tag(hash);
        let slots = file.get(self.slots.clone())?;
        let records = file.get(self.records.clone())?;
        let (first, candidates) = self.candidates(slots, hash);
        for (j, slot) in candidates.chunks_exact(SLOT_LEN).enumerate() {
            let stored = read_u32(slot, 0)?;
            if stored > tag {
                // Slots are in hash order and contiguous from the home on: the key is absent.
                return None;
            }
            if stored != tag {
                continue;
            }
            // Another key with the same tag, or an empty slot (tag u32::MAX, no record there):
            // the key comparison rejects it and the scan goes on.
            let locator = read_u32(slot, 4)?;
            let offset = locator_offset(locator);
            if root_len > 0 {
                self.load_value_end(file, offset, locator & END_HINT_MASK);
            }
            if let Some(record) = record_with_key(records, offset, key) {
                return Some((first + j, record));
            }
        }
        None
    }

    /// Finds many keys at once; `out[i]` is the record of `keys[i]`, as [`find`](Layout::find)
    /// would return it.
    ///
    /// The work runs in two passes (hash to slot, slot to record) whose iterations do not depend
    /// on each other, so the processor overlaps their cache misses instead of paying one after
    /// another: several times faster than `find` in a loop when the index is not in cache.
    pub fn find_many<'a>(&self, file: &'a [u8], keys: &[&[u8]], out: &mut Vec<Option<Record<'a>>>) {
        out.clear();
        let (Some(slots), Some(records)) =
            (file.get(self.slots.clone()), file.get(self.records.clone()))
        else {
            out.resize(keys.len(), None);
            return;
        };
        let offsets: Vec<Option<u64>> = keys
            .iter()
            .map(|key| {
                let hash = key_hash(key);
                Self::first_offset(self.candidates(slots, hash).1, hash)
            })
            .collect();
        out.extend(keys.iter().zip(offsets).map(|(key, offset)| {
            let offset = offset?;
            // A hash collision with another key (or a damaged record): the full probe decides.
            record_with_key(records, offset, key).or_else(|| self.find(file, key))
        }));
    }

    /// Every entry in table order: `(slot index, stored tag, record)` for each slot that a
    /// lookup of its record's key is served from, at most the root's entry count of them (so
    /// `Snapshot::iter` never yields more than `Snapshot::len`, even when a damaged root
    /// undercounts; `verify` reports that). The record is always `Some`.
    ///
    /// Slots a lookup never reads — a damaged or forged slot whose record does not parse, or
    /// whose record's key is served from another slot — are skipped and do not count: so
    /// iteration lists exactly what `get` serves, and a rewrite that copies what iteration
    /// lists keeps what reads served (a forged slot cannot push a served entry past the count).
    pub fn slots<'a>(
        &'a self,
        file: &'a [u8],
    ) -> impl Iterator<Item = (usize, u32, Option<Record<'a>>)> + 'a {
        let slots = file.get(self.slots.clone()).unwrap_or(&[]);
        let records = file.get(self.records.clone()).unwrap_or(&[]);
        slots
            .chunks_exact(SLOT_LEN)
            .enumerate()
            .filter(|(_, slot)| read_u32(slot, 4) != Some(EMPTY_OFFSET))
            .filter_map(move |(i, slot)| {
                let tag = read_u32(slot, 0)?;
                let record = record_at(records, locator_offset(read_u32(slot, 4)?))?;
                match self.find_slot(file, record.key, 0) {
                    Some((served, _)) if served == i => Some((i, tag, Some(record))),
                    _ => None,
                }
            })
            .take(usize::try_from(self.entry_count).unwrap_or(usize::MAX))
    }

    /// Full structural check of every entry, in O(entries + bytes): each slot's record parses
    /// (aligned, with zero padding before its value),
    /// its key hashes to the slot's hash, slots are sorted and each sits within the probe limit
    /// of its home with no empty slot in between, empty slots are exactly [`EMPTY_SLOT`], the
    /// entry count matches, keys are unique and every value matches its checksum. Returns the
    /// first problem found.
    pub fn verify(&self, file: &[u8]) -> Result<(), VerifyProblem> {
        let len = file.len() as u64;
        if file.len() < 2 * PREAMBLE_LEN || file[..PREAMBLE_LEN] != frame(&MAGIC, len, 0) {
            return Err(VerifyProblem::Preamble);
        }
        let table = file
            .get(self.slots.clone())
            .ok_or(VerifyProblem::OutOfBounds("slot table"))?;
        let records = file
            .get(self.records.clone())
            .ok_or(VerifyProblem::OutOfBounds("records"))?;
        let mut last_empty: Option<usize> = None;
        let mut occupied = 0u64;
        let mut previous_hash = 0u64;
        // Every record's span in the arena: no two slots may share a record or overlap one
        // (a slot pointing into another record's value could otherwise pass every check below).
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (i, slot) in table.chunks_exact(SLOT_LEN).enumerate() {
            let locator = read_u32(slot, 4).ok_or(VerifyProblem::OutOfBounds("slot table"))?;
            if locator == EMPTY_OFFSET {
                if slot != EMPTY_SLOT {
                    return Err(VerifyProblem::slot(i, SlotProblem::TaggedEmpty));
                }
                last_empty = Some(i);
                continue;
            }
            let offset = locator_offset(locator);
            let record = record_at(records, offset)
                .ok_or(VerifyProblem::slot(i, SlotProblem::RecordOutOfBounds))?;
            let hint = end_hint(
                self.records.start as u64,
                offset,
                record.key.len(),
                record.value.len(),
            );
            if locator & END_HINT_MASK != hint {
                return Err(VerifyProblem::slot(i, SlotProblem::WrongEndHint));
            }
            let key_end = RECORD_HEADER_LEN + record.key.len();
            if record.raw[key_end..record.raw.len() - record.value.len()]
                .iter()
                .any(|&b| b != 0)
            {
                return Err(VerifyProblem::slot(i, SlotProblem::NonzeroPadding));
            }
            let hash = key_hash(record.key);
            if read_u32(slot, 0) != Some(slot_tag(hash)) {
                return Err(VerifyProblem::slot(i, SlotProblem::TagMismatch));
            }
            if occupied > 0 && hash < previous_hash {
                return Err(VerifyProblem::slot(i, SlotProblem::Unsorted));
            }
            let home = home_slot(hash, self.slot_capacity) as usize;
            if home > i || i - home > self.probe_limit || last_empty.is_some_and(|e| e >= home) {
                return Err(VerifyProblem::slot(i, SlotProblem::OutOfReach { home }));
            }
            if value_checksum(record.value) != record.checksum {
                return Err(VerifyProblem::entry(record.key, EntryProblem::Checksum));
            }
            match self.find(file, record.key) {
                Some(found) if std::ptr::eq(found.raw.as_ptr(), record.raw.as_ptr()) => {}
                _ => {
                    return Err(VerifyProblem::entry(record.key, EntryProblem::Duplicate));
                }
            }
            spans.push((offset as usize, record.raw.len()));
            previous_hash = hash;
            occupied += 1;
        }
        spans.sort_unstable();
        if let Some(pair) = spans.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(VerifyProblem::OverlappingRecords {
                first: pair[0].0,
                second: pair[1].0,
            });
        }
        if occupied != self.entry_count {
            return Err(VerifyProblem::EntryCount {
                found: occupied,
                declared: self.entry_count,
            });
        }
        Ok(())
    }
}

/// Writes a shard to `out` in one forward pass: preamble, records as they arrive, then the
/// tables and the root. The caller supplies the live records' slots ([`Slot::new`]).
pub(crate) struct Encoder<W: Write> {
    out: W,
    pos: u64,
    producer: String,
}

/// One index slot: a key hash, the offset of its record in the records arena, and its end hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Key hash ([`key_hash`]).
    pub hash: u64,
    /// Offset of the record from the start of the records arena.
    pub offset: u64,
    /// Its [`end_hint`].
    pub end_hint: u32,
}

impl Slot {
    /// The slot of a record written at `offset` (by an [`Encoder`], whose records arena starts
    /// at [`PREAMBLE_LEN`]) for a key hashing to `hash`, of `key_len` bytes, and a value of
    /// `value_len` bytes.
    pub fn new(hash: u64, offset: u64, key_len: usize, value_len: usize) -> Slot {
        Slot {
            hash,
            offset,
            end_hint: end_hint(PREAMBLE_LEN as u64, offset, key_len, value_len),
        }
    }
}

/// Summary values for the root.
pub(crate) struct Summary {
    /// Build time, ns since the Unix epoch.
    pub build_time_ns: u64,
    /// Sum of the live values' lengths.
    pub value_bytes: u64,
    /// The lowest generation among the entries (`u64::MAX` when there are none).
    pub oldest_generation: u64,
    /// Random identity of the new file.
    pub shard_id: u64,
    /// The base's `shard_id` when writing a delta file; 0 when writing a base.
    pub base_id: u64,
}

/// The 32 bytes of a preamble (`magic` = [`MAGIC`]) or trailer (`magic` = [`TRAILER_MAGIC`]).
fn frame(magic: &[u8; 8], file_len: u64, root_pos: u64) -> [u8; PREAMBLE_LEN] {
    let mut frame = [0u8; PREAMBLE_LEN];
    frame[..8].copy_from_slice(magic);
    frame[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let layout = ArchiveLayout::of_this_build();
    frame[12] = layout.pointer_width_bits;
    frame[13] = layout.endianness;
    frame[14] = layout.alignment;
    frame[FILE_LEN_OFFSET..FILE_LEN_OFFSET + 8].copy_from_slice(&file_len.to_le_bytes());
    frame[ROOT_POS_OFFSET..ROOT_POS_OFFSET + 8].copy_from_slice(&root_pos.to_le_bytes());
    frame
}

impl<W: Write> Encoder<W> {
    /// Starts a shard written by `producer`: writes the preamble (its file length is filled in
    /// by the caller with [`patch_header`] once [`finish`](Encoder::finish) returns it).
    pub fn new(mut out: W, producer: &str) -> io::Result<Self> {
        out.write_all(&frame(&MAGIC, 0, 0))?;
        Ok(Encoder {
            out,
            pos: PREAMBLE_LEN as u64,
            producer: producer.to_string(),
        })
    }

    /// Bytes of records written so far; the offset the next record will get.
    pub fn records_len(&self) -> u64 {
        self.pos - PREAMBLE_LEN as u64
    }

    /// Flushes what was written so far to the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Zero bytes up to the next multiple of [`VALUE_ALIGN`], where the next record starts.
    fn pad(&mut self) -> io::Result<()> {
        const ZEROS: [u8; VALUE_ALIGN] = [0; VALUE_ALIGN];
        let gap = (self.pos as usize).wrapping_neg() % VALUE_ALIGN;
        self.out.write_all(&ZEROS[..gap])?;
        self.pos += gap as u64;
        Ok(())
    }

    /// Appends a new record; returns its offset in the records arena.
    pub fn write_record(&mut self, generation: u64, key: &[u8], value: &[u8]) -> io::Result<u64> {
        let value_len = u32::try_from(value.len()).map_err(|_| too_long("value"))?;
        let offset = self.write_head_and_key(generation, value_checksum(value), key, value_len)?;
        self.out.write_all(value)?;
        self.pos += value.len() as u64;
        Ok(offset)
    }

    /// Pads to the next record, writes a record's header and key and the zeros up to its
    /// value; returns the record's offset in the records arena.
    fn write_head_and_key(
        &mut self,
        generation: u64,
        checksum: u64,
        key: &[u8],
        value_len: u32,
    ) -> io::Result<u64> {
        let key_len = u32::try_from(key.len()).map_err(|_| too_long("key"))?;
        let head = record_head(generation, checksum, key_len, value_len);
        self.pad()?;
        let offset = self.records_len();
        let value_at = value_offset(key.len()).ok_or_else(|| too_long("key"))?;
        let key_pad = value_at - RECORD_HEADER_LEN - key.len();
        self.out.write_all(&head)?;
        self.out.write_all(key)?;
        self.out.write_all(&[0u8; VALUE_ALIGN][..key_pad])?;
        self.pos += value_at as u64;
        Ok(offset)
    }

    /// Starts a record whose value is not known yet (streamed from a reader): writes its
    /// header with a zero checksum and value length, and its key. Its value follows with
    /// [`write_value`](Encoder::write_value); [`end_record`](Encoder::end_record) then patches
    /// the header. Nothing else may be written to the encoder in between.
    pub fn begin_record(&mut self, generation: u64, key: &[u8]) -> io::Result<OpenRecord> {
        let offset = self.write_head_and_key(generation, 0, key, 0)?;
        Ok(OpenRecord {
            offset,
            generation,
            key_len: key.len() as u32, // checked by write_head_and_key
            value_len: 0,
            checksum: xxhash_rust::xxh3::Xxh3::new(),
        })
    }

    /// Appends the next bytes of an open record's value. Fails, writing nothing, when the
    /// value would reach 4 GiB.
    pub fn write_value(&mut self, record: &mut OpenRecord, bytes: &[u8]) -> io::Result<()> {
        let value_len = u32::try_from(bytes.len())
            .ok()
            .and_then(|n| record.value_len.checked_add(n))
            .ok_or_else(|| too_long("value"))?;
        self.out.write_all(bytes)?;
        record.checksum.update(bytes);
        record.value_len = value_len;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends a record copied from another shard ([`Record::raw`]): header, key and value
    /// verbatim (checksum and generation included), the padding before the value rewritten as
    /// zeros (so damage there is not carried forward). It starts at a multiple of
    /// [`VALUE_ALIGN`] as it did there, so its value stays aligned.
    pub fn copy_record(&mut self, record: &Record<'_>) -> io::Result<u64> {
        self.pad()?;
        let offset = self.records_len();
        let key_end = RECORD_HEADER_LEN + record.key.len();
        let value_at = record.raw.len() - record.value.len();
        self.out.write_all(&record.raw[..key_end])?;
        self.out
            .write_all(&[0u8; VALUE_ALIGN][..value_at - key_end])?;
        self.out.write_all(record.value)?;
        self.pos += record.raw.len() as u64;
        Ok(offset)
    }

    /// Writes the slot table, the root and the trailer; returns the writer, the file
    /// length, and the final preamble that the caller writes at offset 0 ([`patch_header`]).
    /// `slots` must be sorted by hash.
    pub fn finish(mut self, slots: &[Slot], summary: &Summary) -> io::Result<(W, u64, Vec<u8>)> {
        debug_assert!(slots.windows(2).all(|w| w[0].hash <= w[1].hash));
        let entry_count = slots.len() as u64;
        if entry_count > u64::from(u32::MAX) {
            return Err(io::Error::other(
                "a shard holds at most 4,294,967,295 entries",
            ));
        }
        let records_len = self.records_len();
        let slot_capacity = slot_capacity_for(entry_count);
        let slots_pos = self.pos;
        // Each slot at max(home, previous + 1); empty slots fill the gaps.
        let mut next = 0u64;
        let mut probe_limit = 0u64;
        for slot in slots {
            let home = home_slot(slot.hash, slot_capacity);
            let at = home.max(next);
            for _ in next..at {
                self.out.write_all(&EMPTY_SLOT)?;
            }
            // Record offsets are multiples of 16, below the empty slot's locator's.
            let offset = u32::try_from(slot.offset)
                .ok()
                .filter(|&offset| offset < EMPTY_OFFSET & !END_HINT_MASK)
                .ok_or_else(|| io::Error::other("a shard's records must take less than 4 GiB"))?;
            debug_assert!(offset & END_HINT_MASK == 0 && slot.end_hint <= NO_END_HINT);
            let locator = offset | (slot.end_hint & END_HINT_MASK);
            self.out.write_all(&slot_tag(slot.hash).to_le_bytes())?;
            self.out.write_all(&locator.to_le_bytes())?;
            probe_limit = probe_limit.max(at - home);
            next = at + 1;
        }
        let table_len = next * SLOT_LEN as u64;
        self.pos += table_len;
        let root = Root {
            producer: std::mem::take(&mut self.producer),
            records_pos: PREAMBLE_LEN as u64,
            records_len,
            slots_pos,
            slots_len: table_len,
            build_time_ns: summary.build_time_ns,
            entry_count,
            value_bytes: summary.value_bytes,
            slot_capacity,
            probe_limit,
            oldest_generation: summary.oldest_generation,
            shard_id: summary.shard_id,
            base_id: summary.base_id,
        };
        let writer = IoWriter::with_pos(&mut self.out, self.pos as usize);
        let writer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&root, writer)
            .map_err(io::Error::other)?;
        let root_end = rkyv::ser::Positional::pos(&writer) as u64;
        let root_pos = root_end - std::mem::size_of::<ArchivedRoot>() as u64;
        let len = root_end + PREAMBLE_LEN as u64;
        self.out.write_all(&frame(&TRAILER_MAGIC, len, root_pos))?;
        Ok((self.out, len, frame(&MAGIC, len, 0).to_vec()))
    }
}

impl<W: Write + Seek> Encoder<W> {
    /// Completes a record started by [`begin_record`](Encoder::begin_record): writes its
    /// value's checksum and length into its header, in place. Returns the record's offset in the
    /// records arena and its value length.
    pub fn end_record(&mut self, record: OpenRecord) -> io::Result<(u64, u32)> {
        let OpenRecord {
            offset,
            generation,
            key_len,
            value_len,
            checksum,
        } = record;
        let head = record_head(generation, checksum.digest(), key_len, value_len);
        self.out
            .seek(io::SeekFrom::Start(PREAMBLE_LEN as u64 + offset))?;
        self.out.write_all(&head)?;
        self.out.seek(io::SeekFrom::Start(self.pos))?;
        Ok((offset, value_len))
    }
}

/// A record being written by [`Encoder::begin_record`], its value streamed in pieces. Its
/// checksum is computed as the pieces arrive ([`value_checksum`] of the whole value: XXH3-64,
/// seed 0, streamed).
pub(crate) struct OpenRecord {
    offset: u64,
    generation: u64,
    key_len: u32,
    value_len: u32,
    checksum: xxhash_rust::xxh3::Xxh3,
}

impl OpenRecord {
    /// Bytes of value written so far.
    pub fn value_len(&self) -> u32 {
        self.value_len
    }
}

/// A record's header (see the record table in the module docs).
fn record_head(
    generation: u64,
    checksum: u64,
    key_len: u32,
    value_len: u32,
) -> [u8; RECORD_HEADER_LEN] {
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[0..8].copy_from_slice(&generation.to_le_bytes());
    head[8..16].copy_from_slice(&checksum.to_le_bytes());
    head[16..20].copy_from_slice(&key_len.to_le_bytes());
    head[20..24].copy_from_slice(&value_len.to_le_bytes());
    head
}

/// Writes the preamble returned by [`Encoder::finish`] at the start of a finished shard.
pub(crate) fn patch_header(file: &std::fs::File, header: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(header, 0)
}

fn too_long(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} longer than 4 GiB cannot be stored"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`build`] of owned entries, aligned as a mapping is.
    fn build_owned(entries: &[(Vec<u8>, Vec<u8>)]) -> rkyv::util::AlignedVec {
        let refs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        aligned(&build(&refs))
    }

    fn build(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut enc = Encoder::new(Vec::new(), "test 1.0").unwrap();
        let mut slots = Vec::new();
        let mut value_bytes = 0;
        for (k, v) in entries {
            let offset = enc.write_record(7, k, v).unwrap();
            slots.push(Slot::new(key_hash(k), offset, k.len(), v.len()));
            value_bytes += v.len() as u64;
        }
        slots.sort_by_key(|s| s.hash);
        let summary = Summary {
            build_time_ns: 42,
            value_bytes,
            oldest_generation: 7,
            shard_id: 99,
            base_id: 0,
        };
        let (mut bytes, len, header) = enc.finish(&slots, &summary).unwrap();
        assert_eq!(bytes.len() as u64, len);
        bytes[..header.len()].copy_from_slice(&header);
        bytes
    }

    /// rkyv checks alignment against the buffer's address, so tests parse from an aligned copy
    /// (a real shard is page-aligned in its mapping).
    fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec {
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn round_trip_and_verify() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..1000)
            .map(|i| (format!("key{i}").into_bytes(), vec![i as u8; i % 37]))
            .collect();
        let bytes = build_owned(&entries);
        let (header, layout) = parse(&bytes).unwrap();
        assert_eq!(header.entry_count, 1000);
        assert_eq!(&bytes[header.producer.clone()], b"test 1.0");
        assert_eq!(header.build_time_ns, 42);
        for (k, v) in &entries {
            let r = layout.find(&bytes, k).unwrap();
            assert_eq!(r.value, v.as_slice());
            assert_eq!(
                r.value.as_ptr() as usize % VALUE_ALIGN,
                0,
                "value not aligned"
            );
            assert_eq!(r.generation, 7);
        }
        assert!(layout.find(&bytes, b"absent").is_none());
        layout.verify(&bytes).unwrap();

        let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
        keys.push(b"absent");
        let mut found = Vec::new();
        layout.find_many(&bytes, &keys, &mut found);
        assert_eq!(found.len(), keys.len());
        for (i, (_, v)) in entries.iter().enumerate() {
            assert_eq!(found[i].unwrap().value, v.as_slice());
        }
        assert!(found[keys.len() - 1].is_none());
    }

    #[test]
    fn a_streamed_record_is_the_record_written_whole() {
        let value: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = Encoder::new(Vec::new(), "p").unwrap();
        let mut streamed = Encoder::new(io::Cursor::new(Vec::new()), "p").unwrap();
        for (key, value) in [
            (&b"first"[..], &value[..]),
            (b"k", &value[..333]),
            (b"", b""),
        ] {
            let expected = whole.write_record(5, key, value).unwrap();
            let mut record = streamed.begin_record(5, key).unwrap();
            for piece in value.chunks(4093) {
                streamed.write_value(&mut record, piece).unwrap();
            }
            assert_eq!(record.value_len() as usize, value.len());
            let (offset, len) = streamed.end_record(record).unwrap();
            assert_eq!((offset, len as usize), (expected, value.len()));
        }
        assert_eq!(
            streamed.out.into_inner(),
            whole.out,
            "same bytes, checksums included"
        );
    }

    #[test]
    fn a_streamed_value_stops_before_4_gib_writing_nothing_more() {
        let mut enc = Encoder::new(Vec::new(), "p").unwrap();
        let mut record = enc.begin_record(0, b"k").unwrap();
        // As if 4 GiB - 3 bytes had been streamed already.
        record.value_len = u32::MAX - 2;
        let len = enc.out.len();
        enc.write_value(&mut record, b"ab").unwrap();
        let err = enc.write_value(&mut record, b"cd").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("4 GiB"), "{err}");
        assert_eq!(enc.out.len(), len + 2, "the refused piece was not written");
        assert_eq!(record.value_len(), u32::MAX);
    }

    #[test]
    fn empty_shard_parses() {
        let bytes = aligned(&build(&[]));
        let (header, layout) = parse(&bytes).unwrap();
        assert_eq!(header.entry_count, 0);
        assert!(layout.find(&bytes, b"x").is_none());
        layout.verify(&bytes).unwrap();
    }

    #[test]
    fn trailer_and_preamble_checks() {
        let good = build(&[(b"a", b"1")]);
        let t = good.len() - PREAMBLE_LEN;
        // A damaged trailer with an intact preamble: a truncated or extended shard.
        let mut bad = good.clone();
        bad[t] = b'X';
        assert!(matches!(
            parse(&aligned(&bad)).unwrap_err(),
            Health::Truncated { .. }
        ));
        // Neither magic: not a shard.
        bad[0] = b'X';
        assert_eq!(parse(&aligned(&bad)).unwrap_err(), Health::NotAShard);
        let mut bad = good.clone();
        bad[t + 8] = 9;
        assert!(matches!(
            parse(&aligned(&bad)).unwrap_err(),
            Health::UnsupportedVersion { found: 9, .. }
        ));
        // Another rkyv layout than this build's: each of the three bytes makes the file foreign.
        let this = ArchiveLayout::of_this_build();
        for (at, other) in [
            (
                12,
                if this.pointer_width_bits == 32 {
                    64
                } else {
                    32
                },
            ),
            (13, ENDIANNESS_BIG + ENDIANNESS_LITTLE - this.endianness),
            (14, if this.alignment == 1 { 8 } else { 1 }),
        ] {
            let mut bad = good.clone();
            bad[t + at] = other;
            let err = parse(&aligned(&bad)).unwrap_err();
            assert!(matches!(err, Health::IncompatibleLayout { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&format!("this build uses {this}")),
                "{err}"
            );
        }
        let cut = &good[..good.len() - 1];
        assert!(matches!(
            parse(&aligned(cut)).unwrap_err(),
            Health::Truncated { .. }
        ));
        // Open never reads the preamble; verify checks that it agrees with the trailer.
        let mut bad = good.clone();
        bad[9] ^= 1;
        let bad = aligned(&bad);
        let (_, layout) = parse(&bad).unwrap();
        assert!(
            layout
                .verify(&bad)
                .unwrap_err()
                .to_string()
                .contains("preamble")
        );
    }

    #[test]
    fn flipped_value_bit_fails_verify_only() {
        let mut bytes = build(&[(b"key", b"value")]);
        // "key" ends at 27; the value starts at the next multiple of 16.
        let at = PREAMBLE_LEN + 32 + 3;
        bytes[at] ^= 1;
        let bytes = aligned(&bytes);
        let (_, layout) = parse(&bytes).unwrap();
        assert!(layout.find(&bytes, b"key").is_some());
        assert!(
            layout
                .verify(&bytes)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }

    #[test]
    fn a_lying_end_hint_never_changes_a_lookup_and_fails_verify() {
        // A value of 300 bytes ends 5 lines past its record's first line.
        let value = [7u8; 300];
        let bytes = build(&[(b"key", &value)]);
        let (_, layout) = parse(&aligned(&bytes)).unwrap();
        let (i, ..) = layout.slots(&bytes).next().unwrap();
        let at = layout.slots.start + i * SLOT_LEN + 4;
        let locator = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let true_hint = locator & END_HINT_MASK;
        assert_eq!(true_hint, end_hint(PREAMBLE_LEN as u64, 0, 3, 300));
        assert!(true_hint > 0 && true_hint < NO_END_HINT, "{true_hint}");
        for hint in (0..=NO_END_HINT).filter(|&h| h != true_hint) {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&((locator & !END_HINT_MASK) | hint).to_le_bytes());
            let bad = aligned(&bad);
            for root_len in [0, 1, 24, 4096] {
                let found = layout.find_archived(&bad, b"key", root_len);
                assert_eq!(found.map(|r| r.value), Some(&value[..]), "hint {hint}");
            }
            assert_eq!(
                layout.verify(&bad),
                Err(VerifyProblem::slot(i, SlotProblem::WrongEndHint)),
                "hint {hint}"
            );
        }
    }

    #[test]
    fn a_locator_into_the_middle_of_a_record_is_a_miss_and_fails_verify() {
        let bytes = build(&[(b"key", b"value")]);
        let (_, layout) = parse(&aligned(&bytes)).unwrap();
        let (i, ..) = layout.slots(&bytes).next().unwrap();
        let at = layout.slots.start + i * SLOT_LEN + 4;
        for forged in [16u32, 17, 31] {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&forged.to_le_bytes());
            let bad = aligned(&bad);
            assert!(layout.find(&bad, b"key").is_none(), "locator {forged}");
            assert!(layout.find_archived(&bad, b"key", 24).is_none(), "{forged}");
            assert!(layout.verify(&bad).is_err());
        }
    }

    #[test]
    fn end_hints_name_the_line_of_the_value_s_last_byte() {
        // Record at file offset 32 (line 0), header 24 + key 3 -> value at 64 (line 1).
        let hint = |offset, value_len| end_hint(PREAMBLE_LEN as u64, offset, 3, value_len);
        assert_eq!(hint(0, 0), NO_END_HINT, "an empty value has no end");
        assert_eq!(hint(0, 1), 1);
        assert_eq!(hint(0, 64), 1);
        assert_eq!(hint(0, 65), 2);
        assert_eq!(hint(0, 14 * 64), 14);
        assert_eq!(hint(0, 14 * 64 + 1), NO_END_HINT, "15 lines away: too far");
        // A record at file offset 48 (line 0) with its value at 80 (line 1).
        assert_eq!(hint(16, 48), 1);
        assert_eq!(hint(16, 49), 2);
        // Never overflows, whatever the inputs.
        assert_eq!(
            end_hint(u64::MAX, u64::MAX, usize::MAX, usize::MAX),
            NO_END_HINT
        );
        // Every slot the encoder writes carries its record's hint (verify checks each).
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
            .map(|i| (format!("k{i}").into_bytes(), vec![1u8; i * 7]))
            .collect();
        let bytes = build_owned(&entries);
        let (_, layout) = parse(&bytes).unwrap();
        assert_eq!(layout.verify(&bytes), Ok(()));
    }

    #[test]
    fn verify_refuses_two_slots_that_share_one_record() {
        // A duplicate key (two records, two slots), then the second slot pointed at the first
        // record: every per-slot check passes (tag, order, reach, checksum, and a lookup finds
        // that very record for both), so only the records' spans can tell. Found by the
        // `format_model` fuzz target.
        let bytes = build(&[(b"k", b"one"), (b"k", b"two")]);
        let (_, layout) = parse(&aligned(&bytes)).unwrap();
        let table = layout.slots.clone();
        let occupied: Vec<usize> = (0..table.len() / SLOT_LEN)
            .filter(|i| bytes[table.start + i * SLOT_LEN..][..SLOT_LEN] != EMPTY_SLOT)
            .collect();
        assert_eq!(occupied.len(), 2);
        let first = table.start + occupied[0] * SLOT_LEN;
        let second = table.start + occupied[1] * SLOT_LEN;
        let mut forged = bytes.clone();
        let offset = forged[first + 4..first + 8].to_vec();
        forged[second + 4..second + 8].copy_from_slice(&offset);
        let forged = aligned(&forged);
        let (_, layout) = parse(&forged).unwrap();
        let err = layout.verify(&forged).unwrap_err();
        assert!(
            matches!(err, VerifyProblem::OverlappingRecords { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_forged_duplicate_slot_neither_lists_twice_nor_hides_an_entry() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..8)
            .map(|i| (format!("key{i}").into_bytes(), vec![i as u8; 3]))
            .collect();
        let good = build_owned(&entries).to_vec();
        let (_, layout) = parse(&aligned(&good)).unwrap();
        let table = layout.slots.clone();
        let slot =
            |bytes: &[u8], i: usize| bytes[table.start + i * SLOT_LEN..][..SLOT_LEN].to_vec();
        let n_slots = table.len() / SLOT_LEN;
        let first = (0..n_slots)
            .find(|&i| slot(&good, i) != EMPTY_SLOT)
            .unwrap();
        let empty = (0..n_slots)
            .find(|&i| slot(&good, i) == EMPTY_SLOT)
            .unwrap();
        // The first entry's slot copied into an empty position: a slot no lookup reads.
        let mut forged = good.clone();
        let copy = slot(&good, first);
        forged[table.start + empty * SLOT_LEN..][..SLOT_LEN].copy_from_slice(&copy);
        let forged = aligned(&forged);
        let mut listed: Vec<&[u8]> = layout
            .slots(&forged)
            .map(|(_, _, record)| record.unwrap().key)
            .collect();
        listed.sort();
        let mut want: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
        want.sort();
        assert_eq!(listed, want);
    }

    #[test]
    fn home_slot_is_monotone_and_in_range() {
        let n = 1000;
        let mut last = 0;
        for h in (0..u64::MAX - u64::MAX / 97).step_by((u64::MAX / 97) as usize) {
            let b = home_slot(h, n);
            assert!(b < n && b >= last);
            last = b;
        }
        assert_eq!(home_slot(u64::MAX, n), n - 1);
    }

    #[test]
    fn slots_sit_near_their_home_and_verify_catches_misplaced_ones() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..5000)
            .map(|i| (format!("k{i}").into_bytes(), vec![1]))
            .collect();
        let bytes = build_owned(&entries).to_vec();
        let (_, layout) = parse(&aligned(&bytes)).unwrap();
        let capacity = slot_capacity_for(5000);
        assert_eq!(layout.slot_capacity, capacity);
        // The table runs at most a little past the capacity, and scans stay short.
        let table_slots = (layout.slots.len() / SLOT_LEN) as u64;
        assert!(
            (capacity - 2..capacity + 64).contains(&table_slots),
            "{table_slots}"
        );
        assert!(
            layout.probe_limit < 64,
            "probe limit {}",
            layout.probe_limit
        );
        let home = |record: Option<Record<'_>>| home_slot(key_hash(record.unwrap().key), capacity);
        let displacement: usize = layout
            .slots(&bytes)
            .map(|(i, _, record)| i - home(record) as usize)
            .sum();
        assert!(
            displacement < 5000 * 3,
            "mean displacement {}",
            displacement / 5000
        );
        // Emptying an occupied slot between a key's home and its slot, or moving a slot, is
        // caught by verify (and the key then reads as a miss, never as another key's value).
        let (i, ..) = layout
            .slots(&bytes)
            .find(|&(i, _, record)| i > home(record) as usize)
            .unwrap();
        let at = layout.slots.start + (i - 1) * SLOT_LEN;
        let mut broken = bytes.clone();
        broken[at..at + SLOT_LEN].copy_from_slice(&EMPTY_SLOT);
        let broken = aligned(&broken);
        let err = layout.verify(&broken).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyProblem::Slot {
                    problem: SlotProblem::OutOfReach { .. },
                    ..
                } | VerifyProblem::EntryCount { .. }
            ),
            "{err}"
        );
        let mut broken = bytes.clone();
        let at = layout.slots.start + i * SLOT_LEN;
        broken[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let broken = aligned(&broken);
        assert!(layout.verify(&broken).is_err());
    }
}
