//! Not API: the format's parsing, lookups, `verify` and encoder, as warmshard's fuzz targets
//! (`fuzz/src/format_api.rs`) and their stable replay need them. The format's own types stay
//! crate-private; this module hands out plain copies of what the checks look at. It may change
//! in any release.

use crate::format;

/// A record as the format returns it, by the fields the checks need.
#[derive(Clone, Copy, Debug)]
pub struct Rec<'a> {
    /// Generation stored in the record header.
    pub generation: u64,
    /// Checksum stored in the record header.
    pub checksum: u64,
    /// Key bytes (inside the file).
    pub key: &'a [u8],
    /// Value bytes (inside the file).
    pub value: &'a [u8],
    /// The whole record, header included (inside the file).
    pub raw: &'a [u8],
}

impl<'a> From<format::Record<'a>> for Rec<'a> {
    fn from(r: format::Record<'a>) -> Self {
        Rec {
            generation: r.generation,
            checksum: r.checksum,
            key: r.key,
            value: r.value,
            raw: r.raw,
        }
    }
}

/// The same record, borrowed from `file` alone (the record's slices lie inside it).
fn rebase<'a>(file: &'a [u8], r: format::Record<'_>) -> Rec<'a> {
    let base = file.as_ptr() as usize;
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        &file[start..start + part.len()]
    };
    Rec {
        generation: r.generation,
        checksum: r.checksum,
        key: slice(r.key),
        value: slice(r.value),
        raw: slice(r.raw),
    }
}

/// What the fuzz checks need of a parsed header.
#[derive(Clone, Debug)]
pub struct Head {
    /// Entry count the root declares.
    pub entry_count: u64,
    /// File length the trailer declares (equal to the input's length once parsed).
    pub file_len: u64,
    /// Byte range of the producer string in the file.
    pub producer: std::ops::Range<usize>,
}

/// A parsed file: the layout the lookups use.
pub struct Parsed {
    head: Head,
    layout: format::Layout,
}

/// Size of the preamble (the records arena starts right after it).
pub const PREAMBLE_LEN: usize = format::PREAMBLE_LEN;

/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = format::RECORD_HEADER_LEN;

/// `format::parse`: `None` when the file does not parse (the reason is not checked here).
pub fn parse(file: &[u8]) -> Option<Parsed> {
    let (header, layout) = format::parse(file).ok()?;
    Some(Parsed {
        head: Head {
            entry_count: header.entry_count,
            file_len: header.file_len,
            producer: header.producer,
        },
        layout,
    })
}

/// The key hash of the format.
pub fn key_hash(key: &[u8]) -> u64 {
    format::key_hash(key)
}

/// The tag a slot stores for a key with `hash`.
pub fn slot_tag(hash: u64) -> u32 {
    format::slot_tag(hash)
}

/// The value checksum of the format.
pub fn value_checksum(value: &[u8]) -> u64 {
    format::value_checksum(value)
}

impl Parsed {
    /// The header fields the checks need.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The layout's entry count (the bound on what `slots` yields).
    pub fn entry_count(&self) -> u64 {
        self.layout.entry_count()
    }

    /// `Layout::find`.
    pub fn find<'a>(&self, file: &'a [u8], key: &[u8]) -> Option<Rec<'a>> {
        self.layout.find(file, key).map(Rec::from)
    }

    /// `Layout::find_archived`: `find` that also loads the value's end from the slot's end hint.
    pub fn find_archived<'a>(
        &self,
        file: &'a [u8],
        key: &[u8],
        root_len: usize,
    ) -> Option<Rec<'a>> {
        self.layout
            .find_archived(file, key, root_len)
            .map(Rec::from)
    }

    /// `Layout::find_many`.
    pub fn find_many<'a>(&self, file: &'a [u8], keys: &[&[u8]]) -> Vec<Option<Rec<'a>>> {
        let mut out = Vec::new();
        self.layout.find_many(file, keys, &mut out);
        out.into_iter().map(|r| r.map(Rec::from)).collect()
    }

    /// `Layout::slots`: `(slot index, stored tag, record if it parses)`.
    pub fn slots<'a>(&self, file: &'a [u8]) -> Vec<(usize, u32, Option<Rec<'a>>)> {
        self.layout
            .slots(file)
            .map(|(i, tag, r)| (i, tag, r.map(|r| rebase(file, r))))
            .collect()
    }

    /// The record that starts at `file_offset`, if one parses there (a duplicate key's shadowed
    /// record too, which `slots` does not list).
    pub fn record_at<'a>(&self, file: &'a [u8], file_offset: usize) -> Option<Rec<'a>> {
        self.layout
            .record_at_file_offset(file, file_offset)
            .map(|r| rebase(file, r))
    }

    /// `Layout::verify`.
    pub fn verify(&self, file: &[u8]) -> Result<(), String> {
        self.layout
            .verify(file)
            .map_err(|problem| problem.to_string())
    }
}

/// A shard encoded by the real `Encoder`, with where each record went.
pub struct Encoded {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// For each input entry, in input order: the file offset of its record.
    pub record_pos: Vec<usize>,
}

/// Encodes `entries` (in this order, duplicates kept) with `format::Encoder` as the writer does:
/// records streamed in order, slots sorted by key hash, the final preamble patched in.
pub fn encode(entries: &[(&[u8], &[u8])], generation: u64, producer: &str) -> Encoded {
    let mut encoder = format::Encoder::new(Vec::new(), producer).expect("encoding into a Vec");
    let mut slots = Vec::with_capacity(entries.len());
    let mut record_pos = Vec::with_capacity(entries.len());
    let mut value_bytes = 0u64;
    for (key, value) in entries {
        let offset = encoder
            .write_record(generation, key, value)
            .expect("encoding into a Vec");
        record_pos.push(PREAMBLE_LEN + offset as usize);
        slots.push(format::Slot::new(
            format::key_hash(key),
            offset,
            key.len(),
            value.len(),
        ));
        value_bytes += value.len() as u64;
    }
    // Stable sort: among equal hashes (duplicate keys) the earlier entry's slot comes first.
    slots.sort_by_key(|s| s.hash);
    let summary = format::Summary {
        build_time_ns: 1,
        value_bytes,
        oldest_generation: if entries.is_empty() {
            u64::MAX
        } else {
            generation
        },
        shard_id: 0x5eed,
        base_id: 0,
    };
    let (mut bytes, len, preamble) = encoder
        .finish(&slots, &summary)
        .expect("encoding into a Vec");
    assert_eq!(
        bytes.len() as u64,
        len,
        "Encoder::finish reports the length"
    );
    bytes[..preamble.len()].copy_from_slice(&preamble);
    Encoded { bytes, record_pos }
}
