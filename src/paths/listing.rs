//! [`Listing`]: the regular files and subdirectories of one directory, in manifest order, and
//! its cached form.
//!
//! # Manifest order
//!
//! Entries are sorted by name bytes, where a directory sorts as `name/`. Concatenating a
//! depth-first traversal in that order yields every file path sorted by its bytes, so callers
//! never sort the whole tree.
//!
//! # Cached listings
//!
//! `hash-tree` keeps each directory's listing in its cache shard so that a warm run can skip
//! reading unchanged directories (`getdents`), together with the stamp and SHA-256 of each of its
//! files it knows (a per-directory stamp index: an unchanged file then costs one `lstat` and a
//! sequential compare, not a lookup of its own entry). A cached listing is keyed by
//! [`listing_key`]: a NUL byte followed by the directory's key — its path relative to the root,
//! or for a path longer than [`LONG_DIR`] bytes a short hash (see [`dir_key`]). No file key
//! starts with NUL, so it never collides with a file's key. Its value:
//!
//! | bytes | content |
//! |---|---|
//! | 0..2 | `b"L3"`: tag and version of this encoding |
//! | 2..46 | the directory's [`Stamp`] when it was listed (`fstat` of the open directory, taken **before** reading it) |
//! | 46..50 | the number of entries, `u32` little-endian |
//! | 50..54 | `n`, the length of the names block, `u32` little-endian |
//! | 54..54+n | the names block: every entry's name followed by a NUL byte, in manifest order |
//! | 54+n.. | per entry, in the same order: its kind; its name's length, one byte if below 255, else `255` and a `u32` little-endian; for kind `b'h'` the file's [`Stamp`] (44 bytes) and SHA-256 (32 bytes) |
//!
//! Kinds: `b'd'` a directory, `b'f'` a regular file, `b'h'` a regular file with the SHA-256 of
//! its content under that stamp (a stamp that was not racy when hashed: see
//! [`Stamp::is_racy`]). Values of earlier encodings read as misses (and are replaced by the
//! run that reads the directory again): `L1` (listings without hashes) and `L2` (each entry's
//! kind, name and record interleaved). `L3` keeps the names together, as [`Listing::names`]
//! holds them, with their lengths beside the records: a warm run decodes a listing with one
//! copy of its names (not one per name), validates them in one pass eight bytes at a time (not
//! one search per name for its end), and allocates its vectors once, from the counts in the
//! header (see [`Listing::decode`]).
//!
//! A cached listing is used only while the directory's stamp matches exactly: creating,
//! removing or renaming an entry changes the directory's mtime and ctime. It is stored only when
//! that stamp is not racy (see [`Stamp::is_racy`]): an entry added within the same clock tick as
//! the listing could otherwise leave the stamp unchanged. A file's hash is used only while the
//! file's own fresh stamp equals the one stored with it. A decoded listing is validated (known
//! kinds, non-empty names without `/` or NUL, neither `.` nor `..`, strictly increasing in
//! manifest order; each length ending its name at a NUL, as many NULs as entries, names and
//! records filling the value exactly); anything else reads as a miss.

use std::ops::Range;

use super::stamp::{STAMP_LEN, Stamp};

/// One entry of a [`Listing`]: a regular file with its stamp (`None` until one is taken), or a
/// subdirectory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listed {
    File(Option<Stamp>),
    Dir,
}

/// The regular files and subdirectories of one directory, in manifest order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Listing {
    /// Every name followed by a NUL byte (so a name is also a C string).
    pub(crate) names: Vec<u8>,
    /// Each entry's name range in `names` (without the NUL) and kind.
    pub entries: Vec<(Range<u32>, Listed)>,
    /// Per entry, the SHA-256 its cached record holds, valid for the stamp in `entries` (see
    /// [`Listing::decode`]); empty when the listing was read, not decoded.
    pub hashes: Vec<Option<[u8; 32]>>,
    /// Whether any name of `names` needs escaping in a `sha256sum` line, when the decoder
    /// found it out on its way through the names (see [`Listing::names_need_escape`]).
    pub(crate) escape_names: Option<bool>,
}

/// Tag and version at the start of a cached listing.
const TAG: &[u8; 2] = b"L3";
/// Bytes before the names block: tag, stamp, number of entries, length of the names block.
const HEADER_LEN: usize = TAG.len() + STAMP_LEN + 8;
/// Bytes after the name of a `b'h'` record: the file's stamp and SHA-256.
const RECORD_LEN: usize = STAMP_LEN + 32;

impl Listing {
    /// The name of an entry.
    pub fn name(&self, range: &Range<u32>) -> &[u8] {
        &self.names[range.start as usize..range.end as usize]
    }

    /// The name of an entry with its terminating NUL.
    pub fn name_with_nul(&self, range: &Range<u32>) -> &[u8] {
        &self.names[range.start as usize..=range.end as usize]
    }

    /// The name of an entry as a C string (to open or stat it relative to its directory);
    /// `None` only if `names` was corrupted (every name is NUL-terminated and holds no other NUL).
    pub fn c_name(&self, range: &Range<u32>) -> Option<&std::ffi::CStr> {
        std::ffi::CStr::from_bytes_with_nul(self.name_with_nul(range)).ok()
    }

    /// Whether any name of `names` needs escaping in a `sha256sum` line (see `manifest.rs`):
    /// known from decoding, or found by a scan of the names.
    pub fn names_need_escape(&self) -> bool {
        (self.escape_names).unwrap_or_else(|| super::manifest::needs_escape(&self.names))
    }

    /// Appends a name (which must not contain NUL) and returns its range.
    pub fn push_name(&mut self, name: &[u8]) -> Range<u32> {
        // What the decoder found out no longer covers every name.
        self.escape_names = None;
        let start = self.names.len() as u32;
        self.names.extend_from_slice(name);
        self.names.push(0);
        start..self.names.len() as u32 - 1
    }

    /// Sorts the entries in manifest order.
    pub fn sort(&mut self) {
        let names = &self.names;
        self.entries.sort_unstable_by(|(a, ka), (b, kb)| {
            manifest_order(
                &names[a.start as usize..a.end as usize],
                matches!(ka, Listed::Dir),
                &names[b.start as usize..b.end as usize],
                matches!(kb, Listed::Dir),
            )
        });
    }

    /// The cached form of this listing, taken when the directory's stamp was `dir_stamp`,
    /// without file hashes.
    pub fn encode(&self, dir_stamp: &Stamp) -> Vec<u8> {
        self.encode_with_hashes(dir_stamp, |_| None)
    }

    /// The cached form of this listing, taken when the directory's stamp was `dir_stamp`, with
    /// `hash(i)` for entry `i`: a file's stamp and the SHA-256 of its content under it, if
    /// known and fit to keep (not racy).
    pub fn encode_with_hashes<'h>(
        &self,
        dir_stamp: &Stamp,
        hash: impl Fn(usize) -> Option<(&'h Stamp, &'h [u8; 32])>,
    ) -> Vec<u8> {
        // The names block holds the entries' names in entry order (`names` may hold them in
        // another order, or hold names of entries left out).
        let names_len: usize = (self.entries.iter())
            .map(|(range, _)| (range.end - range.start) as usize + 1)
            .sum();
        let mut out = Vec::with_capacity(HEADER_LEN + names_len + 2 * self.entries.len());
        out.extend_from_slice(TAG);
        dir_stamp.encode(&mut out);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&(names_len as u32).to_le_bytes());
        for (range, _) in &self.entries {
            out.extend_from_slice(self.name_with_nul(range));
        }
        for (i, (range, kind)) in self.entries.iter().enumerate() {
            let record = match kind {
                Listed::File(_) => hash(i),
                Listed::Dir => None,
            };
            out.push(match (kind, record) {
                (Listed::Dir, _) => b'd',
                (Listed::File(_), None) => b'f',
                (Listed::File(_), Some(_)) => b'h',
            });
            let len = range.end - range.start;
            match u8::try_from(len) {
                Ok(len) if len < LONG_NAME => out.push(len),
                _ => {
                    out.push(LONG_NAME);
                    out.extend_from_slice(&len.to_le_bytes());
                }
            }
            if let Some((stamp, sha256)) = record {
                stamp.encode(&mut out);
                out.extend_from_slice(sha256);
            }
        }
        out
    }

    /// Decodes a cached listing if it was taken at exactly `dir_stamp` and is well formed. A
    /// file with a record comes with the stamp it was hashed under (in `entries`) and that hash
    /// (in `hashes`): the caller must compare that stamp with a fresh `lstat` before trusting
    /// either. Other files come without a stamp.
    ///
    /// The names block is copied as a whole (it is `names` as is), and checked in one pass,
    /// eight bytes at a time: it holds exactly as many NULs as entries and no `/` (and whether
    /// a name needs escaping in the manifest is noted on the way). Each entry's name is then
    /// found from its length, and is valid if a NUL follows it: the `count` NULs that end the
    /// names being all there are, no name holds one. The entries and hashes are allocated once,
    /// for the count the header gives, which must equal the number of NULs in the names block
    /// (and fit in the records, two bytes an entry at least) before anything is allocated for
    /// it, so a hostile count cannot make it allocate more than in proportion to the value.
    pub fn decode(value: &[u8], dir_stamp: &Stamp) -> Option<Listing> {
        if u32::try_from(value.len()).is_err() {
            return None; // name ranges are u32
        }
        let rest = value.strip_prefix(TAG)?;
        if Stamp::decode(rest)? != *dir_stamp {
            return None;
        }
        let u32_at = |bytes: &[u8], at: usize| -> Option<usize> {
            let bytes = bytes.get(at..at + 4)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
        };
        let count = u32_at(rest, STAMP_LEN)?;
        let names_len = u32_at(rest, STAMP_LEN + 4)?;
        let body = rest.get(STAMP_LEN + 8..)?;
        let names = body.get(..names_len)?;
        let mut records = &body[names_len..];
        if count > records.len() / 2 {
            return None;
        }
        let scan = scan_names(names);
        if scan.nuls != count || scan.slash {
            return None;
        }
        let mut listing = Listing {
            names: names.to_vec(),
            entries: Vec::with_capacity(count),
            hashes: Vec::with_capacity(count),
            escape_names: Some(scan.escape),
        };
        // The start of the next name in `names`, and the previous name and kind.
        let mut at: usize = 0;
        let mut previous: (&[u8], bool) = (&[], false);
        for _ in 0..count {
            let (&kind, &len) = (records.first()?, records.get(1)?);
            let len = if len < LONG_NAME {
                records = &records[2..];
                usize::from(len)
            } else {
                let len = u32_at(records, 2)?;
                records = &records[6..];
                len
            };
            let end = at.checked_add(len)?;
            if names.get(end) != Some(&0) {
                return None;
            }
            let name = &names[at..end];
            if len <= 2 && (name.is_empty() || name == b"." || name == b"..") {
                return None;
            }
            let is_dir = kind == b'd';
            // (The first name is compared with an empty one, which sorts before any name.)
            if manifest_order(previous.0, previous.1, name, is_dir).is_ge() {
                return None;
            }
            previous = (name, is_dir);
            let range = at as u32..end as u32;
            at = end + 1;
            match kind {
                b'f' => listing.entries.push((range, Listed::File(None))),
                b'd' => listing.entries.push((range, Listed::Dir)),
                b'h' => {
                    let (stamp, sha256) = records.get(..RECORD_LEN)?.split_at(STAMP_LEN);
                    let stamp = Stamp::decode(stamp)?;
                    let sha256 = <[u8; 32]>::try_from(sha256).ok()?;
                    records = &records[RECORD_LEN..];
                    listing.entries.push((range, Listed::File(Some(stamp))));
                    listing.hashes.push(Some(sha256));
                    continue;
                }
                _ => return None,
            }
            listing.hashes.push(None);
        }
        // The names fill the block (each followed by its NUL), and every record has an entry.
        if at != names.len() || !records.is_empty() {
            return None;
        }
        Some(listing)
    }
}

/// A name's length in a cached listing is one byte below this; otherwise this byte and the
/// length as a `u32`, little-endian.
const LONG_NAME: u8 = 255;

/// What one pass over a cached listing's names block found.
struct NamesScan {
    /// How many NUL bytes it holds.
    nuls: usize,
    /// Whether it holds a `/`.
    slash: bool,
    /// Whether it holds a byte GNU `sha256sum` escapes: a backslash, newline or carriage
    /// return.
    escape: bool,
}

/// Goes through `bytes` eight at a time, counting NULs and looking for `/` and the bytes
/// `sha256sum` escapes.
fn scan_names(bytes: &[u8]) -> NamesScan {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOW7: u64 = ONES * 0x7f;
    const HIGHS: u64 = ONES * 0x80;
    // The high bit of every byte of `x` that is zero, and of no other: exact for each byte, as
    // `(x & 0x7f) + 0x7f` cannot carry into the next byte.
    let zero_bytes = |x: u64| !((x & LOW7).wrapping_add(LOW7) | x | LOW7);
    // Non-zero exactly when `x` holds a zero byte (as a whole, not byte for byte).
    let holds_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let (mut nuls, mut slashes, mut escapes) = (0, 0, 0);
    let mut word = |x: u64| {
        // One bit per NUL byte, at the bottom of its byte; the multiply sums the bytes into
        // the top one (at most 8: no carry). No `popcnt` needed.
        nuls += ((zero_bytes(x) >> 7).wrapping_mul(ONES) >> 56) as usize;
        slashes |= holds_zero(x ^ (ONES * u64::from(b'/')));
        escapes |= holds_zero(x ^ (ONES * u64::from(b'\\')))
            | holds_zero(x ^ (ONES * u64::from(b'\n')))
            | holds_zero(x ^ (ONES * u64::from(b'\r')));
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        word(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Padded with 0xff: neither NUL, `/`, nor a byte that is escaped.
        let mut last = [0xff; 8];
        last[..rest.len()].copy_from_slice(rest);
        word(u64::from_le_bytes(last));
    }
    NamesScan {
        nuls,
        slash: slashes != 0,
        escape: escapes != 0,
    }
}

/// The cache key of the listing of the directory whose key is `dir_key` (see [`dir_key`]).
pub(crate) fn listing_key(out: &mut Vec<u8>, dir_key: &[u8]) {
    out.clear();
    out.push(0);
    out.extend_from_slice(dir_key);
}

/// The key of the directory at `rel` (relative to the root), computed down from the root.
pub(crate) fn dir_key_of(rel: &[u8]) -> Vec<u8> {
    let mut key = Vec::new();
    let mut len = 0;
    for component in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        len += component.len() + usize::from(len > 0);
        key = dir_key(&key, component, len).unwrap_or_else(|| rel[..len].to_vec());
    }
    key
}

/// Directories whose path relative to the root is longer than this are keyed by a hash.
pub(crate) const LONG_DIR: usize = 255;
/// Bytes of SHA-256 kept in the key of a directory with a long path.
const DIR_HASH_LEN: usize = 16;

/// The key of a directory in the cache, given its parent's key, its name and the length of its
/// path relative to the root; `None` when the key is that path itself.
///
/// Its files are keyed `<dir key>/<name>` (the root's are keyed by their name) and its listing
/// [`listing_key`]`(dir key)`. A directory's key is its path while that is at most [`LONG_DIR`]
/// bytes long, so the keys of a usual tree are the files' relative paths. A longer one is `/`
/// and 16 bytes of the SHA-256 of `<parent key>/<name>`: no path starts with `/`, so it never
/// meets a path key, and a key's length stays bounded whatever the depth — a chain of `n`
/// nested directories costs O(n) in the cache, not O(n²).
pub(crate) fn dir_key(parent_key: &[u8], name: &[u8], rel_len: usize) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    if rel_len <= LONG_DIR {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(parent_key)
        .chain_update(b"/")
        .chain_update(name)
        .finalize();
    let mut key = Vec::with_capacity(1 + DIR_HASH_LEN);
    key.push(b'/');
    key.extend_from_slice(&digest[..DIR_HASH_LEN]);
    Some(key)
}

/// Compares two entry names as `name` for files and `name/` for directories: the order in
/// which their full paths sort.
#[inline(always)]
fn manifest_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    let (a_head, b_head) = (&a[..common], &b[..common]);
    // Eight bytes at a time, as big-endian words (whose order is their bytes' order): names
    // of one directory often share a long prefix, and a call to `memcmp` costs more than the
    // compare of a short name.
    let word = |bytes: &[u8], at: usize| {
        let chunk = bytes
            .get(at..at + 8)
            .and_then(|chunk| chunk.try_into().ok());
        u64::from_be_bytes(chunk.unwrap_or_default())
    };
    let mut at = 0;
    while at + 8 <= common {
        let (x, y) = (word(a_head, at), word(b_head, at));
        if x != y {
            return x.cmp(&y);
        }
        at += 8;
    }
    while let (Some(x), Some(y)) = (a_head.get(at), b_head.get(at)) {
        if x != y {
            return x.cmp(y);
        }
        at += 1;
    }
    // One name is a prefix of the other: compare what follows, a directory's '/' included.
    let a_rest = a[common..].iter().chain(a_dir.then_some(&b'/'));
    let b_rest = b[common..].iter().chain(b_dir.then_some(&b'/'));
    a_rest.cmp(b_rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_scan_counts_every_nul_and_sees_every_slash_and_escaped_byte() {
        for len in 0..20 {
            // Neighbours of NUL, `/` (0x2e, 0x30), the escaped bytes (0x09, 0x0b, 0x0c, 0x0e,
            // 0x5b, 0x5d), and bytes whose high bit is set.
            let plain: Vec<u8> = (0..len)
                .map(|i| {
                    [
                        1, 0x2e, 0x30, 0x09, 0x0b, 0x0c, 0x0e, 0x5b, 0x5d, 0x80, 0xff,
                    ][i % 11]
                })
                .collect();
            let scan = |bytes: &[u8]| {
                let found = scan_names(bytes);
                let escape = super::super::manifest::needs_escape(bytes);
                assert_eq!(found.escape, escape, "{bytes:?}");
                (found.nuls, found.slash, found.escape)
            };
            assert_eq!(scan(&plain), (0, false, false));
            for at in 0..len {
                let mut bytes = plain.clone();
                bytes[at] = 0;
                assert_eq!(scan(&bytes), (1, false, false), "{bytes:?}");
                // A second NUL anywhere after it (a 0x01 right after a NUL included).
                for second in at + 1..len {
                    let mut two = bytes.clone();
                    two[second] = 0;
                    assert_eq!(scan(&two).0, 2, "{two:?}");
                }
                for (byte, found) in [
                    (b'/', (0, true, false)),
                    (b'\\', (0, false, true)),
                    (b'\n', (0, false, true)),
                    (b'\r', (0, false, true)),
                ] {
                    let mut bytes = plain.clone();
                    bytes[at] = byte;
                    assert_eq!(scan(&bytes), found, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn a_decoded_listing_knows_whether_its_names_need_escaping() {
        for (names, escape) in [(&[&b"a"[..], b"b"][..], false), (&[b"a", b"b\\c"], true)] {
            let mut listing = Listing::default();
            for name in names {
                let range = listing.push_name(name);
                listing.entries.push((range, Listed::File(None)));
            }
            assert_eq!(listing.names_need_escape(), escape);
            let mut back = Listing::decode(&listing.encode(&dir_stamp()), &dir_stamp()).unwrap();
            assert_eq!(back.escape_names, Some(escape));
            assert_eq!(back.names_need_escape(), escape);
            // A name added later is looked at too.
            back.push_name(b"new\nline");
            assert!(back.names_need_escape());
        }
    }

    #[test]
    fn a_long_name_round_trips() {
        // Lengths below 255 take one byte, others five.
        for len in [1, 254, 255, 256, 70_000] {
            let mut listing = Listing::default();
            for name in [vec![b'a'; len], b"b".to_vec()] {
                let range = listing.push_name(&name);
                listing.entries.push((range, Listed::Dir));
            }
            let back = Listing::decode(&listing.encode(&dir_stamp()), &dir_stamp()).unwrap();
            assert_eq!(names(&back), names(&listing), "{len}");
        }
    }

    #[test]
    fn manifest_order_matches_sorting_full_paths() {
        let names: [(&[u8], bool); 15] = [
            (b"b", true),
            (b"b.txt", false),
            (b"b0", false),
            (b"a", false),
            (b"ba", true),
            (b"b-", false),
            (b"", false),
            // Past eight bytes: compared a word at a time, then byte by byte.
            (b"libfoo.so", false),
            (b"libfoo.so", true),
            (b"libfoo.so.1", false),
            (b"libfoo.so.1.2.3", false),
            (b"libfoo.so-", false),
            (b"libfoo.sp", false),
            (b"libfop", false),
            (b"libfoo.so.1.2.4\xff", true),
        ];
        for (a, a_dir) in names {
            for (b, b_dir) in names {
                let full = |n: &[u8], d: bool| [n, if d { b"/x" } else { b"" }].concat();
                assert_eq!(
                    manifest_order(a, a_dir, b, b_dir),
                    full(a, a_dir).cmp(&full(b, b_dir)),
                    "{a:?}/{a_dir} vs {b:?}/{b_dir}"
                );
            }
        }
    }

    fn dir_stamp() -> Stamp {
        Stamp {
            dev: 7,
            ino: 42,
            size: 4096,
            mtime_ns: 1_700_000_000_000_000_001,
            ctime_ns: 1_700_000_000_000_000_002,
            mode: 0o40755,
        }
    }

    fn sample() -> Listing {
        let mut listing = Listing::default();
        for (name, dir) in [
            (&b"b"[..], true),
            (b"b.txt", false),
            (b"a\n\xff", false),
            (b"c", false),
        ] {
            let range = listing.push_name(name);
            let kind = if dir { Listed::Dir } else { Listed::File(None) };
            listing.entries.push((range, kind));
        }
        listing.sort();
        listing
    }

    fn names(listing: &Listing) -> Vec<(Vec<u8>, bool)> {
        listing
            .entries
            .iter()
            .map(|(r, k)| (listing.name(r).to_vec(), matches!(k, Listed::Dir)))
            .collect()
    }

    #[test]
    fn a_listing_round_trips_only_for_its_own_stamp() {
        let listing = sample();
        assert_eq!(
            names(&listing),
            [
                (b"a\n\xff".to_vec(), false),
                (b"b.txt".to_vec(), false),
                (b"b".to_vec(), true),
                (b"c".to_vec(), false),
            ]
        );
        let value = listing.encode(&dir_stamp());
        let back = Listing::decode(&value, &dir_stamp()).expect("decodes");
        assert_eq!(names(&back), names(&listing));

        let mut touched = dir_stamp();
        touched.mtime_ns += 1;
        assert!(Listing::decode(&value, &touched).is_none());
        let mut other_inode = dir_stamp();
        other_inode.ino += 1;
        assert!(Listing::decode(&value, &other_inode).is_none());
    }

    #[test]
    fn file_records_round_trip_with_their_stamp_and_hash() {
        let listing = sample();
        let mut file_stamp = dir_stamp();
        file_stamp.mode = 0o100644;
        let sha256 = [7u8; 32];
        // "b.txt" (entry 1) with a record; the others without.
        let value = listing
            .encode_with_hashes(&dir_stamp(), |i| (i == 1).then_some((&file_stamp, &sha256)));
        let back = Listing::decode(&value, &dir_stamp()).expect("decodes");
        assert_eq!(names(&back), names(&listing));
        assert_eq!(back.hashes, [None, Some(sha256), None, None]);
        assert!(matches!(back.entries[1].1, Listed::File(Some(s)) if s == file_stamp));
        assert!(matches!(back.entries[0].1, Listed::File(None)));
        // A record cut short, or a listing of an earlier encoding, reads as a miss.
        assert!(Listing::decode(&value[..value.len() - 1], &dir_stamp()).is_none());
        // Ten bytes into the record of "b.txt": the entries after it are missing.
        let cut = value.len() - b"d\x01f\x01".len() - 10;
        assert!(Listing::decode(&value[..cut], &dir_stamp()).is_none());
        for tag in [b"L1", b"L2"] {
            let mut old = value.clone();
            old[..2].copy_from_slice(tag);
            assert!(Listing::decode(&old, &dir_stamp()).is_none());
        }
    }

    #[test]
    fn only_the_entries_names_are_encoded_in_entry_order() {
        // Names pushed out of manifest order, and one left out of the entries (as an
        // exclusion leaves it in `names`): the names block holds the entries' names, sorted.
        let mut listing = Listing::default();
        for name in [&b"c"[..], b"left out", b"a"] {
            let range = listing.push_name(name);
            if name != b"left out" {
                listing.entries.push((range, Listed::File(None)));
            }
        }
        listing.sort();
        let value = listing.encode(&dir_stamp());
        assert_eq!(&value[HEADER_LEN - 8..HEADER_LEN], [2, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(&value[HEADER_LEN..], b"a\0c\0f\x01f\x01");
        let back = Listing::decode(&value, &dir_stamp()).expect("decodes");
        assert_eq!(back.names, b"a\0c\0");
        assert_eq!(names(&back), names(&listing));
    }

    /// An entry of a raw cached listing: kind, name, record.
    type Raw<'a> = (u8, &'a [u8], &'a [u8]);

    /// An `L3` value for `dir_stamp()` with these entries (kind, name of fewer than 255 bytes,
    /// record), and the count and names length the header gives (`None`: the true ones).
    fn raw(entries: &[Raw<'_>], count: Option<u32>, names_len: Option<u32>) -> Vec<u8> {
        let names: Vec<u8> = (entries.iter())
            .flat_map(|(_, name, _)| name.iter().copied().chain([0]))
            .collect();
        let mut out = TAG.to_vec();
        dir_stamp().encode(&mut out);
        out.extend_from_slice(&count.unwrap_or(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&names_len.unwrap_or(names.len() as u32).to_le_bytes());
        out.extend_from_slice(&names);
        for (kind, name, record) in entries {
            out.extend_from_slice(&[*kind, name.len() as u8]);
            out.extend_from_slice(record);
        }
        out
    }

    #[test]
    fn malformed_cached_listings_read_as_misses() {
        let record = [1u8; RECORD_LEN];
        assert!(Listing::decode(&raw(&[], None, None), &dir_stamp()).is_some());
        let good: &[Raw<'_>] = &[(b'f', b"a", b""), (b'h', b"b", &record)];
        assert!(Listing::decode(&raw(good, None, None), &dir_stamp()).is_some());
        let cases: [(&str, &[Raw<'_>]); 11] = [
            ("unknown kind", &[(b'x', b"name", b"")]),
            ("no record", &[(b'h', b"name", b"")]),
            ("record cut short", &[(b'h', b"name", b"short")]),
            ("empty name", &[(b'f', b"", b"")]),
            ("dot", &[(b'f', b".", b"")]),
            ("dot-dot", &[(b'd', b"..", b"")]),
            ("slash", &[(b'f', b"a/b", b"")]),
            ("NUL in a name", &[(b'f', b"a\0b", b"")]),
            ("out of order", &[(b'f', b"b", b""), (b'f', b"a", b"")]),
            ("duplicate", &[(b'f', b"a", b""), (b'f', b"a", b"")]),
            (
                "\"b/\" sorts after \"b.txt\"",
                &[(b'd', b"b", b""), (b'f', b"b.txt", b"")],
            ),
        ];
        for (what, entries) in cases {
            let value = raw(entries, None, None);
            assert!(Listing::decode(&value, &dir_stamp()).is_none(), "{what}");
        }
        // The header's counts must match the names and records exactly; a count past what
        // the value could hold reads as a miss before anything is allocated for it.
        for (what, count, names_len) in [
            ("one entry too many", Some(3), None),
            ("one entry too few", Some(1), None),
            ("a hostile count", Some(u32::MAX), None),
            ("names block past the end", None, Some(1000)),
            ("a name left without its NUL", None, Some(3)),
            ("a byte of the names block short", None, Some(5)),
        ] {
            let value = raw(good, count, names_len);
            assert!(Listing::decode(&value, &dir_stamp()).is_none(), "{what}");
        }
        // A name's length must end it exactly at its NUL: one byte short or long, past the
        // block, or a long length cut short, reads as a miss.
        let names_end = HEADER_LEN + b"a\0b\0".len();
        for (what, len) in [
            ("short", &[0][..]),
            ("long", &[2]),
            ("past the block", &[200]),
            ("long form, past the block", &[LONG_NAME, 0, 1, 0, 0]),
            ("long form, cut short", &[LONG_NAME, 1, 0]),
        ] {
            let value = raw(good, None, None);
            // The length of "a", right after its kind.
            let at = names_end + 1;
            let value = [&value[..at], len, &value[at + 1..]].concat();
            assert!(Listing::decode(&value, &dir_stamp()).is_none(), "{what}");
        }
        // Lengths that place a NUL inside a name (and none after it) though the NULs are as
        // many as the entries, in order ("a\0b" < "d"), and fill the block: a miss.
        let mut value = TAG.to_vec();
        dir_stamp().encode(&mut value);
        value.extend_from_slice(&2u32.to_le_bytes());
        value.extend_from_slice(&6u32.to_le_bytes());
        value.extend_from_slice(b"a\0bcd\0f\x03f\x01");
        assert!(
            Listing::decode(&value, &dir_stamp()).is_none(),
            "NUL inside"
        );
        // The long form of a short name's length is accepted.
        let value = raw(good, None, None);
        let at = names_end + 1;
        let long = [&value[..at], &[LONG_NAME, 1, 0, 0, 0], &value[at + 1..]].concat();
        assert!(Listing::decode(&long, &dir_stamp()).is_some());
        let mut trailing = raw(good, None, None);
        trailing.push(b'f');
        assert!(
            Listing::decode(&trailing, &dir_stamp()).is_none(),
            "trailing"
        );
        // Cut anywhere, or with any byte changed, a value never panics.
        let value = raw(good, None, None);
        for len in 0..value.len() {
            assert!(
                Listing::decode(&value[..len], &dir_stamp()).is_none(),
                "{len}"
            );
        }
        for at in 0..value.len() {
            for byte in [0, 1, b'/', b'.', b'd', b'h', 0xff] {
                let mut changed = value.clone();
                changed[at] = byte;
                let _ = Listing::decode(&changed, &dir_stamp());
            }
        }
        assert!(Listing::decode(b"L2", &dir_stamp()).is_none());
        assert!(Listing::decode(b"L3", &dir_stamp()).is_none());
        let mut key = Vec::new();
        listing_key(&mut key, b"a/b");
        assert_eq!(key, b"\0a/b");
    }
}
