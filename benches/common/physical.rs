//! The physical limit: what any design that maps one file must pay, and nothing more.
//!
//! - read figures: `open(2)` + `fstat` + `mmap` of the very warmshard file the warmshard peer
//!   reads, then one byte read from each of the three pages a lookup needs (the header page, the
//!   key's slot in the index, the value), `munmap`, `close`. It is told where those pages are
//!   (see [`Peer::probe`]): it has no index, so it has no `get` figure.
//! - write figures: prewarm writes the bare keys and values back to back to a temp file, fsyncs
//!   it and renames it into place (the I/O floor of a durable bulk write); `put_one` appends one
//!   key and value to that file and `fdatasync`s it (the floor of a durable insert).
//! - [`PhysicalTrusted`]: the same read, plus the checks warmshard's rules require before any
//!   byte is trusted (README, Guarantees): the directory opened without following a symlink and
//!   `fstat`ed, every ancestor `stat`ed, the file opened relative to the directory's handle and
//!   `fstat`ed, each judged (owned by the user or root, not writable by others). The floor of
//!   any design that maps one file and refuses one another user could have written; warmshard's
//!   open beyond it is its own cost (the delta file's probe, the format's checks, the snapshot).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::MmapOptions;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::Mode;
use warmshard::{Shard, format};

use super::warmshard::shard_path;
use super::{Peer, Probe, Reader, Result, Warmshard};

pub struct PhysicalLimit;

/// The physical limit has no key index; it never reads by key.
pub struct NoReader;

impl Reader for NoReader {
    fn get<R>(&self, _key: &[u8], _f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        None
    }
}

fn raw_path(dir: &Path) -> PathBuf {
    dir.join("w1.raw")
}

impl Peer for PhysicalLimit {
    const NAME: &'static str = "physical";
    const LABEL: &'static str = "physical limit";
    const GETS: bool = false;
    type Reader = NoReader;
    type Writer = (File, bool);

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let path = raw_path(dir);
        let temp = dir.join("w1.raw.tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&temp)?);
        for (key, value) in entries {
            out.write_all(key.as_ref())?;
            out.write_all(value.as_ref())?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        if durable {
            file.sync_data()?;
        }
        drop(file);
        std::fs::rename(&temp, &path)?;
        if durable {
            super::sync_dir(dir)?;
        }
        Ok(())
    }

    /// The read figures map the warmshard file, so that is what gets built.
    fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        Warmshard::prewarm(dir, entries, true)
    }

    fn open(_dir: &Path) -> Result<NoReader> {
        Err("the physical limit has no key index".into())
    }

    /// Finds, through warmshard's documented layout, the file offsets of `key`'s slot and value.
    fn probe(dir: &Path, key: &[u8]) -> Result<Probe> {
        let shard = Shard::open(shard_path(dir))?;
        let snap = shard.snapshot();
        let file = snap.file_bytes();
        let base = file.as_ptr() as usize;
        let value = snap.get(key).ok_or("probe key missing from the shard")?;
        let value_offset = value.as_ptr() as usize - base;
        // Records are back to back from offset 32; the slot table follows the last one. A
        // key's slot is the first at or after its home slot that holds its hash's tag.
        let slots = snap
            .iter()
            .map(|(_, v)| v.as_ptr() as usize - base + v.len())
            .max()
            .unwrap_or(format::PREAMBLE_LEN);
        let hash = format::key_hash(key);
        let capacity = format::slot_capacity_for(snap.len() as u64);
        let home = format::home_slot(hash, capacity) as usize;
        let slot_offset = (home..)
            .map(|i| slots + format::SLOT_LEN * i)
            .take_while(|&at| at + format::SLOT_LEN <= file.len())
            .find(|&at| file[at..at + 4] == format::slot_tag(hash).to_le_bytes())
            .ok_or("key's slot not found: warmshard's layout changed?")?;
        Ok(Probe {
            key: key.to_vec(),
            pages: [slot_offset, value_offset],
        })
    }

    fn open_get(dir: &Path, probe: &Probe) -> Result<Option<u8>> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(shard_path(dir))?;
        let len = file.metadata()?.len() as usize;
        map_and_read(&file, len, probe)
    }

    fn writer(dir: &Path, durable: bool) -> Result<(File, bool)> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(raw_path(dir))?;
        Ok((file, durable))
    }

    fn put_one(writer: &mut (File, bool), key: &[u8], value: &[u8]) -> Result<()> {
        let mut record = Vec::with_capacity(key.len() + value.len());
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        writer.0.write_all(&record)?;
        if writer.1 {
            writer.0.sync_data()?;
        }
        Ok(())
    }
}

/// Maps `len` bytes of `file`, reads one byte of each page a lookup needs, unmaps.
fn map_and_read(file: &File, len: usize, probe: &Probe) -> Result<Option<u8>> {
    // SAFETY: benchmark-only read of a file nobody writes while it is mapped.
    let map = unsafe { MmapOptions::new().len(len).map(file)? };
    let header = std::hint::black_box(map[0]);
    let slot = std::hint::black_box(map[probe.pages[0]]);
    let value = map[probe.pages[1]];
    std::hint::black_box((header, slot));
    Ok(Some(value))
}

pub struct PhysicalTrusted;

/// Refuses `meta` unless it is owned by `euid` or root and no other user can write it (a
/// directory may be world-writable if sticky, as `/tmp` is): warmshard's rule, applied as cheaply.
fn judge(meta: &std::fs::Metadata, euid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    if meta.uid() != euid && meta.uid() != 0 {
        return Err("owned by another user".into());
    }
    if meta.mode() & 0o022 != 0 && !sticky_dir {
        return Err("writable by other users".into());
    }
    Ok(())
}

impl Peer for PhysicalTrusted {
    const NAME: &'static str = "physical-trusted";
    const LABEL: &'static str = "physical limit + trust checks";
    const WRITES: bool = false;
    const GETS: bool = false;
    type Reader = NoReader;
    type Writer = ();

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        PhysicalLimit::prewarm(dir, entries, durable)
    }

    fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        PhysicalLimit::build(dir, entries)
    }

    fn open(_dir: &Path) -> Result<NoReader> {
        Err("the physical limit has no key index".into())
    }

    fn probe(dir: &Path, key: &[u8]) -> Result<Probe> {
        PhysicalLimit::probe(dir, key)
    }

    fn open_get(dir: &Path, probe: &Probe) -> Result<Option<u8>> {
        let euid = nix::unistd::geteuid().as_raw();
        let path = shard_path(dir);
        let (parent, name) = (
            path.parent().ok_or("no parent")?,
            path.file_name().ok_or("no name")?,
        );
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dir_file = File::from(openat(AT_FDCWD, parent, flags, Mode::empty())?);
        judge(&dir_file.metadata()?, euid)?;
        for ancestor in parent.ancestors().skip(1) {
            judge(&std::fs::metadata(ancestor)?, euid)?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = File::from(openat(&dir_file, name, flags, Mode::empty())?);
        let meta = file.metadata()?;
        judge(&meta, euid)?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        map_and_read(&file, meta.len() as usize, probe)
    }

    fn writer(_dir: &Path, _durable: bool) -> Result<()> {
        Err("the trust-checked physical limit has no write figures".into())
    }

    fn put_one(_: &mut (), _: &[u8], _: &[u8]) -> Result<()> {
        Err("the trust-checked physical limit has no write figures".into())
    }
}
