//! The one place the in-memory fuzz targets (`format_bytes`, `format_model`) touch warmshard's
//! format module (`warmshard::format`).
//!
//! The format module's internals are crate-private; what the targets need of them is
//! `warmshard::__internals::format_api` (`src/fuzz_api.rs`), re-exported here, so only these two
//! files change when the format's surface does. What it needs of the format: `parse` (entry count,
//! file length, producer range; a `Layout`), `Layout::{entry_count, find, find_archived,
//! find_many, slots, verify}`, `Record`'s fields (generation, checksum, key, value, raw), `Encoder::{new,
//! write_record, finish}` with `Slot` and `Summary` (or one `encode` doing what [`encode`]
//! does), and `key_hash`, `slot_tag`, `value_checksum`, `PREAMBLE_LEN`, `RECORD_HEADER_LEN`.
//!
//! It also owns the aligned copy: the format validates its rkyv root against the buffer's
//! address (a real shard is page-aligned in its mapping), and libFuzzer's input is not aligned.

pub use warmshard::__internals::format_api::*;

/// Alignment of the copy [`Aligned`] makes (rkyv's archive alignment is at most 16).
const ALIGN: usize = 16;

/// A copy of some bytes that starts at an address aligned to [`ALIGN`] (plus `skew` bytes), in
/// safe code: an over-long `Vec` and a window into it.
pub struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// Copies `bytes` to an address `skew` bytes past a 16-byte boundary (`skew` < 16).
    pub fn new(bytes: &[u8], skew: usize) -> Self {
        let mut buf = vec![0u8; bytes.len() + 2 * ALIGN];
        let misalign = buf.as_ptr() as usize % ALIGN;
        let start = (ALIGN - misalign) % ALIGN + skew % ALIGN;
        buf[start..start + bytes.len()].copy_from_slice(bytes);
        Aligned {
            buf,
            start,
            len: bytes.len(),
        }
    }

    /// The copied bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}
