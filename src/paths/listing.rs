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
//! | 0..2 | `b"L2"`: tag and version of this encoding |
//! | 2..46 | the directory's [`Stamp`] when it was listed (`fstat` of the open directory, taken **before** reading it) |
//! | 46.. | the entries in manifest order, each `kind`, the name's bytes, `0`, then for kind `b'h'` the file's [`Stamp`] (44 bytes) and SHA-256 (32 bytes) |
//!
//! Kinds: `b'd'` a directory, `b'f'` a regular file, `b'h'` a regular file with the SHA-256 of
//! its content under that stamp (a stamp that was not racy when hashed: see
//! [`Stamp::is_racy`]). `L1` values (listings without hashes) read as misses.
//!
//! A cached listing is used only while the directory's stamp matches exactly: creating,
//! removing or renaming an entry changes the directory's mtime and ctime. It is stored only when
//! that stamp is not racy (see [`Stamp::is_racy`]): an entry added within the same clock tick as
//! the listing could otherwise leave the stamp unchanged. A file's hash is used only while the
//! file's own fresh stamp equals the one stored with it. A decoded listing is validated (known
//! kinds, non-empty names without `/`, neither `.` nor `..`, strictly increasing in manifest
//! order, whole records); anything else reads as a miss.

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
}

/// Tag and version at the start of a cached listing.
const TAG: &[u8; 2] = b"L2";
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

    /// Appends a name (which must not contain NUL) and returns its range.
    pub fn push_name(&mut self, name: &[u8]) -> Range<u32> {
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
        let mut out =
            Vec::with_capacity(TAG.len() + STAMP_LEN + self.names.len() + self.entries.len());
        out.extend_from_slice(TAG);
        dir_stamp.encode(&mut out);
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
            out.extend_from_slice(self.name_with_nul(range));
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
    pub fn decode(value: &[u8], dir_stamp: &Stamp) -> Option<Listing> {
        if u32::try_from(value.len()).is_err() {
            return None; // name ranges are u32
        }
        let rest = value.strip_prefix(TAG)?;
        if Stamp::decode(rest)? != *dir_stamp {
            return None;
        }
        let mut body = &rest[STAMP_LEN..];
        let (names_len, count) = sizes(body)?;
        let mut listing = Listing {
            names: Vec::with_capacity(names_len),
            entries: Vec::with_capacity(count),
            hashes: Vec::with_capacity(count),
        };
        let mut previous: Option<(Range<u32>, bool)> = None;
        while let Some((&kind, after)) = body.split_first() {
            let (kind, has_record) = match kind {
                b'f' => (Listed::File(None), false),
                b'h' => (Listed::File(None), true),
                b'd' => (Listed::Dir, false),
                _ => return None,
            };
            // The name ends at its NUL; a `/` before it makes the listing a miss.
            let (end, b'\0') = find_nul_or_slash(after)? else {
                return None;
            };
            let name = &after[..end];
            if name.is_empty() || name == b"." || name == b".." {
                return None;
            }
            let is_dir = matches!(kind, Listed::Dir);
            if let Some((prev, prev_dir)) = &previous
                && manifest_order(listing.name(prev), *prev_dir, name, is_dir).is_ge()
            {
                return None;
            }
            body = &after[end + 1..];
            let (kind, hash) = if has_record {
                let record = body.get(..RECORD_LEN)?;
                body = &body[RECORD_LEN..];
                let (stamp, sha256) = record.split_at(STAMP_LEN);
                let stamp = Stamp::decode(stamp)?;
                (
                    Listed::File(Some(stamp)),
                    Some(<[u8; 32]>::try_from(sha256).ok()?),
                )
            } else {
                (kind, None)
            };
            let range = listing.push_name(name);
            previous = Some((range.clone(), is_dir));
            listing.entries.push((range, kind));
            listing.hashes.push(hash);
        }
        Some(listing)
    }
}

/// The position of the first NUL byte of `bytes`, eight bytes at a time (a cached listing is
/// mostly names to scan for their ends).
fn find_nul(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        // Exact for the lowest zero byte: no borrow reaches it from below.
        let zeros = x.wrapping_sub(ONES) & !x & (ONES * 0x80);
        if zeros != 0 {
            return Some(at + zeros.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = chunks.remainder().iter().position(|&b| b == 0)?;
    Some(at + rest)
}

/// The position and value of the first byte of `bytes` that is NUL or `/`, eight bytes at a
/// time: one pass finds a cached name's end and whether it holds a `/`.
fn find_nul_or_slash(bytes: &[u8]) -> Option<(usize, u8)> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const SLASHES: u64 = ONES * b'/' as u64;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let y = x ^ SLASHES;
        // Each term is exact for its lowest zero byte (see `find_nul`), so their union is
        // exact for the lowest byte that is either.
        let zeros = (x.wrapping_sub(ONES) & !x) | (y.wrapping_sub(ONES) & !y);
        let zeros = zeros & (ONES * 0x80);
        if zeros != 0 {
            let i = at + zeros.trailing_zeros() as usize / 8;
            return Some((i, bytes[i]));
        }
        at += 8;
    }
    let rest = chunks
        .remainder()
        .iter()
        .position(|&b| b == 0 || b == b'/')?;
    Some((at + rest, bytes[at + rest]))
}

/// The bytes of the names (with their NULs) and the number of entries of an encoded listing's
/// body, so that decoding it allocates once; `None` if a record is cut short.
fn sizes(mut body: &[u8]) -> Option<(usize, usize)> {
    let (mut names_len, mut count) = (0, 0);
    while let Some((&kind, after)) = body.split_first() {
        let end = find_nul(after)?;
        let record = if kind == b'h' { RECORD_LEN } else { 0 };
        body = after.get(end + 1 + record..)?;
        names_len += end + 1;
        count += 1;
    }
    Some((names_len, count))
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
fn manifest_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        std::cmp::Ordering::Equal => {}
        unequal => return unequal,
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
    fn the_first_nul_is_found_wherever_it_is() {
        for len in 0..20 {
            let plain: Vec<u8> = (0..len).map(|i| [1, 0x80, 0xff, b'a'][i % 4]).collect();
            assert_eq!(find_nul(&plain), None);
            for at in 0..len {
                let mut bytes = plain.clone();
                bytes[at] = 0;
                // A second NUL after the first, and a 0x01 byte after it, change nothing.
                if at + 2 < len {
                    bytes[at + 1] = 1;
                    bytes[at + 2] = 0;
                }
                assert_eq!(find_nul(&bytes), Some(at), "{bytes:?}");
            }
        }
    }

    #[test]
    fn the_first_nul_or_slash_is_found_wherever_it_is() {
        for len in 0..20 {
            // Neighbours of `/` (0x2e, 0x30) and of NUL, and bytes whose high bit is set.
            let plain: Vec<u8> = (0..len)
                .map(|i| [1, 0x2e, 0x30, 0xaf, 0x80, 0xff][i % 6])
                .collect();
            assert_eq!(find_nul_or_slash(&plain), None);
            for at in 0..len {
                for first in [0, b'/'] {
                    let mut bytes = plain.clone();
                    bytes[at] = first;
                    // Either byte after the first changes nothing.
                    if at + 2 < len {
                        bytes[at + 1] = if first == 0 { b'/' } else { 0 };
                        bytes[at + 2] = 0;
                    }
                    assert_eq!(find_nul_or_slash(&bytes), Some((at, first)), "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn manifest_order_matches_sorting_full_paths() {
        let names: [(&[u8], bool); 7] = [
            (b"b", true),
            (b"b.txt", false),
            (b"b0", false),
            (b"a", false),
            (b"ba", true),
            (b"b-", false),
            (b"", false),
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
        // A record cut short, or a listing of the previous encoding, reads as a miss.
        assert!(Listing::decode(&value[..value.len() - 1], &dir_stamp()).is_none());
        // Ten bytes into the record of "b.txt": the entries after it read as part of it.
        let cut = value.len() - b"db\0fc\0".len() - 10;
        assert!(Listing::decode(&value[..cut], &dir_stamp()).is_none());
        let mut old = value.clone();
        old[..2].copy_from_slice(b"L1");
        assert!(Listing::decode(&old, &dir_stamp()).is_none());
    }

    #[test]
    fn malformed_cached_listings_read_as_misses() {
        let good = sample().encode(&dir_stamp());
        let header = &good[..TAG.len() + STAMP_LEN];
        let with_body = |body: &[u8]| [header, body].concat();
        assert!(Listing::decode(&with_body(b""), &dir_stamp()).is_some());
        for body in [
            &b"xname\0"[..], // unknown kind
            b"fname",        // no terminator
            b"hname\0",      // no record
            b"hname\0short", // record cut short
            b"f\0",          // empty name
            b"f.\0",         // dot
            b"d..\0",        // dot-dot
            b"fa/b\0",       // slash
            b"fb\0fa\0",     // out of order
            b"fa\0fa\0",     // duplicate
            b"db\0fb.txt\0", // "b/" sorts after "b.txt"
        ] {
            assert!(
                Listing::decode(&with_body(body), &dir_stamp()).is_none(),
                "{body:?}"
            );
        }
        assert!(Listing::decode(&good[..5], &dir_stamp()).is_none());
        assert!(Listing::decode(b"L2", &dir_stamp()).is_none());
        assert!(Listing::decode(b"L3", &dir_stamp()).is_none());
        let mut key = Vec::new();
        listing_key(&mut key, b"a/b");
        assert_eq!(key, b"\0a/b");
    }
}
