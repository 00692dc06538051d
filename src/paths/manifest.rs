//! [`Manifest`]: the files of a tree with their SHA-256, in manifest order, and the text GNU
//! `sha256sum` prints for them.
//!
//! A manifest keeps the listings the walk produced (see `listing.rs` for manifest order) with
//! each file's hash, and no path: it goes through them depth-first when asked, building each
//! directory's path in one buffer (a name pushed on the way down, dropped on the way back), so
//! its memory grows with the tree's names, not with the square of its depth. A line is
//! `<64 lowercase hex>  <path>\n`; a path holding a backslash, newline or carriage return is
//! escaped as GNU `sha256sum` escapes it: a leading `\`, and `\\`, `\n`, `\r` in the path. A file
//! named `-` in the root is written `./-`: `sha256sum -c` would read standard input for `-`.

use std::ops::Range;

use super::listing::Listing;
use super::walk::join_rel;

/// The manifest of a tree: every regular file's path (relative to the root, `/`-separated,
/// sorted by bytes) and SHA-256. It keeps the walk's directory listings, not paths, and goes
/// through them in manifest order when asked ([`for_each`](Manifest::for_each),
/// [`write_sha256sum_to`](Manifest::write_sha256sum_to)).
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// The listed directories, the root first.
    dirs: Vec<ManifestDir>,
    /// Number of lines.
    len: usize,
}

/// One directory of a [`Manifest`]. It keeps no path: its name is its entry in its parent's
/// listing.
#[derive(Clone, Debug, Default)]
pub(super) struct ManifestDir {
    pub listing: Listing,
    /// Per entry of `listing`, what the run knows of it: a file's hash, or nothing (a
    /// subdirectory, an unreadable file).
    pub files: Vec<FileState>,
    /// Its listed subdirectories: (entry index, index in the manifest's directories), by entry
    /// index.
    pub subdirs: Vec<(u32, u32)>,
    /// Whether any of its names needs escaping ([`names_need_escape`], taken on the worker that
    /// planned it rather than on the thread that prints).
    pub escape_names: bool,
}

/// What a `hash-tree` run knows of one entry of a directory's listing: the file's state, one
/// per entry. The manifest keeps the run's states as they are (no copy into another form).
#[derive(Clone, Copy, Debug)]
pub(super) enum FileState {
    /// A subdirectory, or a file left out of the manifest: gone or no longer a regular file
    /// since it was listed, or unreadable (its error is in the report).
    Absent,
    /// Queued for hashing: its task's result replaces this once the walk is over.
    Stale,
    /// Its hash, from the cache, still valid for its stamp.
    Cached([u8; 32]),
    /// Its hash, read this run.
    Hashed([u8; 32]),
}

impl FileState {
    /// Its hash, if it has one (a line of the manifest).
    pub fn sha256(&self) -> Option<&[u8; 32]> {
        match self {
            FileState::Cached(sha256) | FileState::Hashed(sha256) => Some(sha256),
            FileState::Absent | FileState::Stale => None,
        }
    }
}

/// A run of one directory's entries, as the depth-first traversal hands it out: the directory's
/// path (no trailing `/`; empty for the root) and whether GNU `sha256sum` escapes it.
struct Run<'p, 'm> {
    path: &'p [u8],
    escape_path: bool,
    /// Whether any name of the directory needs escaping.
    escape_names: bool,
    dir: &'m ManifestDir,
    entries: Range<usize>,
}

impl Run<'_, '_> {
    /// Calls `f` with the line of each file of the run.
    fn for_each_line(&self, mut f: impl FnMut(ManifestLine<'_>)) {
        let listing = &self.dir.listing;
        for i in self.entries.clone() {
            if let (Some(sha256), Some((range, _))) = (
                self.dir.files.get(i).and_then(FileState::sha256),
                listing.entries.get(i),
            ) {
                f(ManifestLine {
                    dir: self.path,
                    name: listing.name(range),
                    sha256,
                });
            }
        }
    }

    /// Appends the `sha256sum` lines of the run's files.
    fn write_lines(&self, out: &mut Vec<u8>) {
        self.for_each_line(|line| {
            let escape = Escape {
                dir: self.escape_path,
                names: self.escape_names,
            };
            push_line(out, line.dir, escape, line.name, line.sha256);
        });
    }
}

impl Manifest {
    /// The manifest of `dirs` (the root first), which hold `len` files with a hash.
    pub(super) fn new(dirs: Vec<ManifestDir>, len: usize) -> Manifest {
        Manifest { dirs, len }
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the tree has no regular file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with each line, in order. A line borrows its directory's path from a buffer
    /// the traversal reuses, so the manifest holds no path: copy what you keep
    /// ([`ManifestLine::path`]).
    ///
    /// ```
    /// # fn main() -> warmshard::Result<()> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # let root = tmp.path().join("src");
    /// # std::fs::create_dir_all(root.join("sub")).unwrap();
    /// # std::fs::write(root.join("sub/a.rs"), "fn a() {}").unwrap();
    /// use warmshard::paths::{HashTreeOptions, hash_tree};
    /// let options = HashTreeOptions::default().shard(tmp.path().join("tree.shard"));
    /// let report = hash_tree(&root, &options)?;
    /// let mut paths = Vec::new();
    /// report.manifest.for_each(|line| paths.push(line.path().into_owned()));
    /// assert_eq!(paths, [b"sub/a.rs".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub fn for_each(&self, mut f: impl FnMut(ManifestLine<'_>)) {
        self.for_each_run(|run| run.for_each_line(&mut f));
    }

    /// Appends the whole manifest as GNU `sha256sum` prints it.
    pub fn write_sha256sum(&self, out: &mut Vec<u8>) {
        self.for_each_run(|run| run.write_lines(out));
    }

    /// Writes the whole manifest as GNU `sha256sum` prints it to `out`, in chunks of about
    /// 64 KiB (no copy of the whole text in memory), and flushes it.
    pub fn write_sha256sum_to(&self, out: impl std::io::Write) -> std::io::Result<()> {
        let mut writer = Sha256sumWriter::new(out);
        self.for_each_run(|run| {
            writer.write_run(
                run.path,
                run.escape_path,
                run.escape_names,
                &run.dir.listing,
                &run.dir.files,
                run.entries.clone(),
            )
        });
        writer.finish()
    }

    /// Calls `f` for each run of a directory's entries that lies between two of its listed
    /// subdirectories, in manifest order, depth first from the root; the subdirectories are
    /// gone through in between. The directory's path is built in one buffer: a name pushed on
    /// the way down, truncated on the way back.
    fn for_each_run(&self, mut f: impl FnMut(&Run<'_, '_>)) {
        /// A directory being gone through: its index, next entry and next subdirectory, the
        /// length of its path in the buffer, and whether that path is escaped.
        struct Frame {
            dir: usize,
            start: usize,
            next: usize,
            path_len: usize,
            escape: bool,
            /// Whether any of its names needs escaping: one scan of its names per directory.
            escape_names: bool,
        }
        if self.dirs.is_empty() {
            return;
        }
        let mut path = Vec::new();
        let mut stack = vec![Frame {
            dir: 0,
            start: 0,
            next: 0,
            path_len: 0,
            escape: false,
            escape_names: self.dirs[0].escape_names,
        }];
        while let Some(frame) = stack.pop() {
            let dir = &self.dirs[frame.dir];
            path.truncate(frame.path_len);
            let subdir = dir.subdirs.get(frame.next).and_then(|&(entry, child)| {
                let (range, _) = dir.listing.entries.get(entry as usize)?;
                let child = child as usize;
                (child < self.dirs.len()).then_some((entry as usize, range, child))
            });
            let end = subdir.map_or(dir.listing.entries.len(), |(entry, _, _)| entry);
            f(&Run {
                path: &path,
                escape_path: frame.escape,
                escape_names: frame.escape_names,
                dir,
                entries: frame.start.min(end)..end,
            });
            let Some((entry, range, child)) = subdir else {
                continue;
            };
            stack.push(Frame {
                start: entry + 1,
                next: frame.next + 1,
                ..frame
            });
            let name = dir.listing.name(range);
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            stack.push(Frame {
                dir: child,
                start: 0,
                next: 0,
                path_len: path.len(),
                escape: frame.escape || needs_escape(name),
                escape_names: self.dirs.get(child).is_some_and(|c| c.escape_names),
            });
        }
    }

    /// Every line as (path, SHA-256), in order.
    fn owned_lines(&self) -> Vec<(Vec<u8>, [u8; 32])> {
        let mut lines = Vec::with_capacity(self.len);
        self.for_each(|line| lines.push((line.path().into_owned(), *line.sha256)));
        lines
    }
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.owned_lines() == other.owned_lines()
    }
}

impl Eq for Manifest {}

/// Writes `sha256sum` lines to a writer in chunks of about 64 KiB, run by run of a directory's
/// entries (see [`Manifest::write_sha256sum_to`], and `hash_tree`, which prints each directory
/// while the walk goes on).
///
/// Lines are written into one buffer set up once, each part copied into place: a line costs
/// its copies, not a fill of its bytes first (as growing a `Vec` by a line would). After a
/// write fails, nothing more is written and [`finish`](Sha256sumWriter::finish) returns the
/// error.
pub(super) struct Sha256sumWriter<W: std::io::Write> {
    out: W,
    buffer: Vec<u8>,
    at: usize,
    /// An escaped line (rare) is built here first.
    escaped: Vec<u8>,
    written: std::io::Result<()>,
}

/// Bytes a [`Sha256sumWriter`] writes at a time.
const CHUNK: usize = 64 * 1024;

impl<W: std::io::Write> Sha256sumWriter<W> {
    pub fn new(out: W) -> Self {
        Sha256sumWriter {
            out,
            buffer: vec![0u8; CHUNK],
            at: 0,
            escaped: Vec::new(),
            written: Ok(()),
        }
    }

    /// Writes the lines of the files among `entries` of a directory's `listing` with their
    /// states `files`: its path is `path` (empty for the root), which needs escaping if
    /// `escape_path`; `escape_names` if any of its names does ([`names_need_escape`]).
    pub fn write_run(
        &mut self,
        path: &[u8],
        escape_path: bool,
        escape_names: bool,
        listing: &Listing,
        files: &[FileState],
        entries: Range<usize>,
    ) {
        let escape = Escape {
            dir: escape_path,
            names: escape_names,
        };
        for i in entries {
            if self.written.is_err() {
                return;
            }
            let (Some(sha256), Some((range, _))) = (
                files.get(i).and_then(FileState::sha256),
                listing.entries.get(i),
            ) else {
                continue;
            };
            let name = listing.name(range);
            let len = plain_line_len(path, name);
            let plain = is_plain(path, escape, name);
            if plain && self.at + len <= CHUNK {
                write_plain_line(&mut self.buffer[self.at..self.at + len], path, name, sha256);
                self.at += len;
                continue;
            }
            self.written = self.out.write_all(&self.buffer[..self.at]);
            self.at = 0;
            if plain && len <= CHUNK {
                write_plain_line(&mut self.buffer[..len], path, name, sha256);
                self.at = len;
                continue;
            }
            // Escaped, or longer than the buffer: written on its own.
            self.escaped.clear();
            push_line(&mut self.escaped, path, escape, name, sha256);
            if self.written.is_ok() {
                self.written = self.out.write_all(&self.escaped);
            }
        }
    }

    /// Writes what is left and flushes; the first error met, if any.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.written?;
        self.out.write_all(&self.buffer[..self.at])?;
        self.out.flush()
    }
}

/// One line of a [`Manifest`]: a file's directory, name and SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestLine<'a> {
    /// Path of the file's directory relative to the root, `/`-separated, as bytes (names need
    /// not be UTF-8); empty for the root itself.
    pub dir: &'a [u8],
    /// The file's name.
    pub name: &'a [u8],
    /// SHA-256 of the file's content.
    pub sha256: &'a [u8; 32],
}

impl<'a> ManifestLine<'a> {
    /// The file's path relative to the root: `dir/name`, or `name` in the root.
    pub fn path(&self) -> std::borrow::Cow<'a, [u8]> {
        if self.dir.is_empty() {
            return std::borrow::Cow::Borrowed(self.name);
        }
        let mut path = Vec::with_capacity(self.dir.len() + 1 + self.name.len());
        join_rel(&mut path, self.dir, self.name);
        std::borrow::Cow::Owned(path)
    }

    /// Appends the line as GNU `sha256sum` prints it: `<hex>  <path>\n`, and when the path holds
    /// a backslash, newline or carriage return, a leading `\` with those escaped as `\\`, `\n`,
    /// `\r`.
    pub fn write_sha256sum(&self, out: &mut Vec<u8>) {
        let escape = Escape {
            dir: needs_escape(self.dir),
            names: true,
        };
        push_line(out, self.dir, escape, self.name, self.sha256);
    }

    /// The SHA-256 as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut out = Vec::with_capacity(64);
        push_hex(&mut out, self.sha256);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Whether GNU `sha256sum` escapes a path holding these bytes.
pub(super) fn needs_escape(bytes: &[u8]) -> bool {
    // Eight bytes at a time: a byte equal to `b` makes `x ^ b` hold a zero byte, which
    // `(y - 0x01..) & !y & 0x80..` finds (exactly, as a whole: no false positive or negative).
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    let holds = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        y.wrapping_sub(ONES) & !y & (ONES * 0x80) != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
        if holds(x, b'\\') | holds(x, b'\n') | holds(x, b'\r') {
            return true;
        }
    }
    (chunks.remainder().iter()).any(|&b| matches!(b, b'\\' | b'\n' | b'\r'))
}

/// Whether any name of `listing` needs escaping in a `sha256sum` line.
pub(super) fn names_need_escape(listing: &Listing) -> bool {
    listing.names_need_escape()
}

/// Whether a line's path may need escaping: its directory's path does, or some names may (then
/// the file's own name decides).
#[derive(Clone, Copy)]
struct Escape {
    dir: bool,
    names: bool,
}

/// Whether the line of `name` in `dir` is written as is: not escaped, and not the root's `-`.
fn is_plain(dir: &[u8], escape: Escape, name: &[u8]) -> bool {
    let root_dash = dir.is_empty() && name == b"-";
    !(root_dash || escape.dir || (escape.names && needs_escape(name)))
}

/// Length of the plain line `<64 hex>  <dir>/<name>\n` (`<name>` alone in the root).
fn plain_line_len(dir: &[u8], name: &[u8]) -> usize {
    let dir_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
    66 + dir_len + name.len() + 1
}

/// Writes the plain line of `name` in `dir` into `line`, which is exactly
/// [`plain_line_len`] long: one bounds check per part, not per byte.
#[inline(always)]
fn write_plain_line(line: &mut [u8], dir: &[u8], name: &[u8], sha256: &[u8; 32]) {
    let (hex, rest) = line.split_at_mut(64);
    write_hex(hex, sha256);
    let (spaces, path) = rest.split_at_mut(2);
    spaces.copy_from_slice(b"  ");
    let dir_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
    if dir_len > 0 {
        path[..dir.len()].copy_from_slice(dir);
        path[dir.len()] = b'/';
    }
    let (name_out, newline) = path[dir_len..].split_at_mut(name.len());
    name_out.copy_from_slice(name);
    newline[0] = b'\n';
}

/// Appends the `sha256sum` line of the file `name` in directory `dir` (`""` for the root);
/// `escape` is computed once per directory by the caller.
fn push_line(out: &mut Vec<u8>, dir: &[u8], escape: Escape, name: &[u8], sha256: &[u8; 32]) {
    if dir.is_empty() && name == b"-" {
        // `sha256sum -c` reads standard input for a line naming `-`: name the file `./-`.
        let escape = Escape {
            dir: false,
            names: false,
        };
        return push_line(out, b".", escape, name, sha256);
    }
    if !is_plain(dir, escape, name) {
        push_escaped_line(out, dir, name, sha256);
        return;
    }
    let start = out.len();
    out.resize(start + plain_line_len(dir, name), 0);
    write_plain_line(&mut out[start..], dir, name, sha256);
}

/// [`push_line`] for a path GNU `sha256sum` escapes: a leading `\`, and backslash, newline and
/// carriage return written as `\\`, `\n`, `\r`.
#[cold]
fn push_escaped_line(out: &mut Vec<u8>, dir: &[u8], name: &[u8], sha256: &[u8; 32]) {
    out.push(b'\\');
    push_hex(out, sha256);
    out.extend_from_slice(b"  ");
    let parts: &[&[u8]] = if dir.is_empty() {
        &[name]
    } else {
        &[dir, b"/", name]
    };
    for &b in parts.iter().copied().flatten() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
}

/// Writes the 64 lowercase hex digits of `bytes` into `out`.
fn write_hex(out: &mut [u8], bytes: &[u8; 32]) {
    /// The two hex digits of every byte value.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [HEX[b >> 4], HEX[b & 15]];
            b += 1;
        }
        pairs
    };
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

pub(super) fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    let mut text = [0u8; 64];
    write_hex(&mut text, bytes);
    out.extend_from_slice(&text);
}

/// Depth-first traversal of the listed directories in manifest order, from the root (the
/// first): calls `f(directory, entries)` for each run of a directory's entries that lies between
/// two of its listed subdirectories, which are visited in between. `parts` gives a directory's
/// listing and its subdirectories: (entry index, index in `dirs`), by entry index.
pub(super) fn in_manifest_order<D>(
    dirs: &[D],
    parts: impl Fn(&D) -> (&Listing, &[(u32, u32)]),
    mut f: impl FnMut(usize, Range<usize>),
) {
    if dirs.is_empty() {
        return;
    }
    // (directory, next entry, next subdirectory): the path from the root down to the directory
    // being listed.
    let mut stack = vec![(0usize, 0usize, 0usize)];
    while let Some((d, start, next)) = stack.pop() {
        let (listing, subdirs) = parts(&dirs[d]);
        match subdirs.get(next) {
            Some(&(entry, child)) if (child as usize) < dirs.len() => {
                let entry = entry as usize;
                f(d, start..entry);
                stack.push((d, entry + 1, next + 1));
                stack.push((child as usize, 0, 0));
            }
            _ => f(d, start..listing.entries.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU `sha256sum`'s line, written the plain way.
    fn reference_line(path: &[u8], sha256: &[u8; 32]) -> Vec<u8> {
        let escape = path.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
        let mut out = Vec::new();
        if escape {
            out.push(b'\\');
        }
        for b in sha256 {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.extend_from_slice(b"  ");
        for &b in path {
            match b {
                b'\\' if escape => out.extend_from_slice(b"\\\\"),
                b'\n' if escape => out.extend_from_slice(b"\\n"),
                b'\r' if escape => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
        out.push(b'\n');
        out
    }

    #[test]
    fn an_escaped_byte_is_found_at_any_position_and_nothing_else_is() {
        for len in 0..20 {
            // Neighbours of the escaped bytes, and bytes whose high bit is set.
            let plain: Vec<u8> = (0..len)
                .map(|i| [b'[', b']', 0x0c, 0x0e, 0x0b, 0xdc, 0x8a, b'a'][i % 8])
                .collect();
            assert!(!needs_escape(&plain), "{plain:?}");
            for at in 0..len {
                for special in [b'\\', b'\n', b'\r'] {
                    let mut bytes = plain.clone();
                    bytes[at] = special;
                    assert!(needs_escape(&bytes), "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn every_byte_value_is_written_as_two_lowercase_hex_digits() {
        for first in (0..=255u8).step_by(32) {
            let bytes: [u8; 32] = std::array::from_fn(|i| first + i as u8);
            let mut out = Vec::new();
            push_hex(&mut out, &bytes);
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn lines_are_written_as_gnu_sha256sum_writes_them() {
        let dirs: [&[u8]; 5] = [b"", b"a", b"a/b c", b"back\\slash", b"new\nline"];
        let names: [&[u8]; 6] = [b"f", b"x.txt", b"\xff\xfe", b"cr\r", b"tab\t", b"\\"];
        let mut sha256 = [0u8; 32];
        for (i, byte) in sha256.iter_mut().enumerate() {
            *byte = (i * 37 + 5) as u8;
        }
        for dir in dirs {
            for name in names {
                let line = ManifestLine {
                    dir,
                    name,
                    sha256: &sha256,
                };
                let mut written = b"previous".to_vec();
                line.write_sha256sum(&mut written);
                let mut expected = b"previous".to_vec();
                expected.extend(reference_line(&line.path(), &sha256));
                assert_eq!(
                    String::from_utf8_lossy(&written),
                    String::from_utf8_lossy(&expected)
                );
                assert_eq!(line.hex().as_bytes(), &reference_line(b"", &sha256)[..64]);
            }
        }
    }
}
