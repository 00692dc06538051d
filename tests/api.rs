//! The public API's promises: round trips, write semantics, snapshots, generations, producers.

use std::collections::BTreeMap;

use warmshard::{BulkMode, Health, Options, Shard, WriteOutcome};

mod common;
use common::temp_files;

fn temp_shard(options: Options) -> (tempfile::TempDir, Shard) {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open_with(dir.path().join("t.shard"), options.durable(false)).unwrap();
    (dir, shard)
}

fn contents(shard: &Shard) -> BTreeMap<Vec<u8>, Vec<u8>> {
    shard
        .snapshot()
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

#[test]
fn round_trip_of_many_entries_including_empty_and_binary() {
    let (_dir, shard) = temp_shard(Options::new());
    let mut model = BTreeMap::new();
    for i in 0..5000u32 {
        let key = format!("_fn_{i:05}").into_bytes();
        let value: Vec<u8> = (0..(i % 300)).map(|j| (i ^ j) as u8).collect();
        model.insert(key, value);
    }
    model.insert(Vec::new(), b"empty key".to_vec());
    model.insert(vec![0, 255, 10, 92], Vec::new());
    shard.replace_all(model.iter()).unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.health(), &Health::Valid);
    assert_eq!(snapshot.len(), model.len());
    for (k, v) in &model {
        assert_eq!(snapshot.get(k), Some(v.as_slice()), "key {k:?}");
    }
    assert_eq!(snapshot.get(b"_fn_99999"), None);
    assert_eq!(contents(&shard), model);
    assert_eq!(snapshot.verify().unwrap(), model.len() as u64);

    // A fresh handle (as at the next program start) reads the same.
    let reopened = Shard::open(shard.path()).unwrap();
    assert_eq!(contents(&reopened), model);
}

#[test]
fn replace_all_overwrites_everything() {
    let (_dir, shard) = temp_shard(Options::new());
    shard.replace_all([("a", "1"), ("b", "2")]).unwrap();
    shard.replace_all([("c", "3")]).unwrap();
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = [(b"c".to_vec(), b"3".to_vec())].into();
    assert_eq!(contents(&shard), expected);
}

#[test]
fn merge_in_keeps_untouched_entries_and_last_duplicate_wins() {
    let (_dir, shard) = temp_shard(Options::new());
    shard.replace_all([("a", "1"), ("b", "2")]).unwrap();
    shard
        .merge_in([("b", "20"), ("c", "3"), ("c", "30")])
        .unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.get(b"a"), Some(&b"1"[..]));
    assert_eq!(snapshot.get(b"b"), Some(&b"20"[..]));
    assert_eq!(snapshot.get(b"c"), Some(&b"30"[..]));
    assert_eq!(snapshot.len(), 3);
    assert_eq!(snapshot.stats().value_bytes, 1 + 2 + 2);
    snapshot.verify().unwrap();
}

#[test]
fn put_one_adds_and_replaces() {
    let (_dir, shard) = temp_shard(Options::new());
    assert!(matches!(
        shard.put_one("k", "v1").unwrap(),
        WriteOutcome::Committed { entries: 1, .. }
    ));
    shard.put_one("k", "v2").unwrap();
    shard.put_one("other", "x").unwrap();
    assert_eq!(shard.get(b"k").as_deref(), Some(&b"v2"[..]));
    assert_eq!(shard.snapshot().len(), 2);
}

#[test]
fn remove_deletes_only_named_keys_and_skips_rewrite_when_absent() {
    let (_dir, shard) = temp_shard(Options::new());
    shard
        .replace_all([("a", "1"), ("b", "2"), ("c", "3")])
        .unwrap();
    assert!(matches!(
        shard.remove(["a", "zzz"]).unwrap(),
        WriteOutcome::Committed { entries: 2, .. }
    ));
    assert_eq!(shard.snapshot().keys().count(), 2);
    assert!(!shard.snapshot().contains(b"a"));
    let before = std::fs::metadata(shard.path()).unwrap();
    assert_eq!(shard.remove(["zzz"]).unwrap(), WriteOutcome::Unchanged);
    let after = std::fs::metadata(shard.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        before.ino(),
        after.ino(),
        "an unchanged remove must not rewrite the file"
    );
}

#[test]
fn clear_removes_the_file() {
    let (_dir, shard) = temp_shard(Options::new());
    shard.put_one("a", "1").unwrap();
    assert!(shard.path().exists());
    assert!(matches!(
        shard.clear().unwrap(),
        WriteOutcome::Committed { .. }
    ));
    assert!(!shard.path().exists());
    assert_eq!(shard.snapshot().health(), &Health::Missing);
    assert!(shard.snapshot().is_empty());
    assert_eq!(shard.clear().unwrap(), WriteOutcome::Unchanged);
    shard.put_one("b", "2").unwrap();
    assert_eq!(shard.get(b"b").as_deref(), Some(&b"2"[..]));
}

#[test]
fn bulk_writer_commits_once_and_drop_aborts() {
    let (dir, shard) = temp_shard(Options::new());
    shard.put_one("old", "x").unwrap();
    {
        let mut writer = shard.bulk_writer(BulkMode::Replace).unwrap();
        writer.add(b"never", b"published").unwrap();
        // Dropped without commit.
    }
    assert_eq!(shard.snapshot().get(b"old"), Some(&b"x"[..]));
    assert!(!shard.snapshot().contains(b"never"));
    let mut writer = shard.bulk_writer(BulkMode::Merge).unwrap();
    for i in 0..2000 {
        writer
            .add(format!("k{i}").as_bytes(), &[i as u8; 64])
            .unwrap();
    }
    assert_eq!(writer.len(), 2000);
    writer.commit().unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.len(), 2001);
    assert_eq!(snapshot.get(b"k1999"), Some(&[1999u16 as u8; 64][..]));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn generation_floor_turns_older_entries_into_misses_and_drops_them_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.shard");
    let old = Shard::open_with(&path, Options::new().generation(5).durable(false)).unwrap();
    old.replace_all([("a", "1"), ("b", "2")]).unwrap();
    assert_eq!(old.snapshot().len(), 2);

    let new = Shard::open_with(&path, Options::new().generation(6).durable(false)).unwrap();
    assert_eq!(new.snapshot().get(b"a"), None);
    assert_eq!(new.snapshot().len(), 0);
    new.put_one("c", "3").unwrap();
    assert_eq!(new.snapshot().len(), 1);
    assert_eq!(new.snapshot().get(b"c"), Some(&b"3"[..]));
    // The write under generation 6 dropped the stale entries for every reader.
    assert_eq!(old.snapshot().len(), 1);
    assert_eq!(old.snapshot().get(b"a"), None);
}

#[test]
fn producer_mismatch_reads_as_empty_and_next_write_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.shard");
    let v1 = Shard::open_with(
        &path,
        Options::new().producer("myshell 1.4.2").durable(false),
    )
    .unwrap();
    v1.put_one("f", "bytecode-1").unwrap();
    assert_eq!(v1.snapshot().producer(), "myshell 1.4.2");

    let v2 = Shard::open_with(
        &path,
        Options::new().producer("myshell 1.5.0").durable(false),
    )
    .unwrap();
    assert!(
        matches!(v2.health(), Health::ProducerMismatch { found, .. } if found == "myshell 1.4.2")
    );
    assert_eq!(v2.get(b"f"), None);
    v2.put_one("g", "bytecode-2").unwrap();
    let snapshot = v2.snapshot();
    assert_eq!(snapshot.producer(), "myshell 1.5.0");
    assert_eq!(
        snapshot.len(),
        1,
        "entries of the old producer must not be carried over"
    );

    // A handle that names no producer reads any, and keeps the file's producer on write.
    let any = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    assert_eq!(any.get(b"g").as_deref(), Some(&b"bytecode-2"[..]));
    any.put_one("h", "x").unwrap();
    assert_eq!(any.snapshot().producer(), "myshell 1.5.0");
}

#[test]
fn held_snapshot_stays_valid_while_another_handle_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.shard");
    let reader = Shard::open_with(&path, Options::new()).unwrap();
    let writer = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    writer
        .replace_all((0..1000).map(|i| (format!("k{i}"), format!("old-{i}"))))
        .unwrap();
    let held = reader.snapshot();
    let held_value = held.get(b"k7").unwrap();
    for round in 0..5 {
        writer
            .replace_all((0..1000).map(|i| (format!("k{i}"), format!("new{round}-{i}"))))
            .unwrap();
    }
    writer.clear().unwrap();
    writer.put_one("k7", "after clear").unwrap();
    assert_eq!(held_value, b"old-7");
    assert_eq!(held.len(), 1000);
    assert!(
        held.iter()
            .all(|(k, v)| v.ends_with(&k[1..]) && v.starts_with(b"old-"))
    );
    // A new snapshot notices the replaced file.
    assert_eq!(reader.snapshot().get(b"k7"), Some(&b"after clear"[..]));
    assert_eq!(reader.get(b"k8"), None);
}

#[test]
fn returned_values_lie_inside_the_mapping() {
    let (_dir, shard) = temp_shard(Options::new());
    shard
        .replace_all((0..100).map(|i| (format!("k{i}"), vec![i as u8; 1000])))
        .unwrap();
    let snapshot = shard.snapshot();
    let file = snapshot.file_bytes().as_ptr_range();
    assert_eq!(
        snapshot.file_bytes().len() as u64,
        snapshot.stats().file_bytes
    );
    for i in 0..100 {
        let value = snapshot.get(format!("k{i}").as_bytes()).unwrap();
        let range = value.as_ptr_range();
        assert!(
            file.start <= range.start && range.end <= file.end,
            "value {i} was copied"
        );
    }
    // Shard::get shares the same mapping while the file is unchanged: same bytes, same address.
    let guard = shard.get(b"k5").unwrap();
    assert_eq!(guard.as_ptr(), snapshot.get(b"k5").unwrap().as_ptr());
}

#[test]
fn disabled_cache_reads_miss_and_writes_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off.shard");
    Shard::open(&path).unwrap().put_one("a", "1").unwrap();
    let off = Shard::open_with(&path, Options::new().enabled(false)).unwrap();
    assert_eq!(off.health(), Health::Disabled);
    assert_eq!(off.get(b"a"), None);
    assert_eq!(off.put_one("b", "2").unwrap(), WriteOutcome::Disabled);
    assert_eq!(off.clear().unwrap(), WriteOutcome::Disabled);
    assert_eq!(off.remove(["a"]).unwrap(), WriteOutcome::Disabled);
    let mut bulk = off.bulk_writer(BulkMode::Replace).unwrap();
    bulk.add(b"c", b"3").unwrap();
    assert_eq!(bulk.commit().unwrap(), WriteOutcome::Disabled);
    // Nothing on disk changed.
    let on = Shard::open(&path).unwrap();
    assert_eq!(on.snapshot().len(), 1);
    assert_eq!(on.get(b"a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn values_larger_than_the_size_limit_fail_and_keep_the_old_shard() {
    let (dir, shard) = temp_shard(Options::new().max_size(64 * 1024));
    shard.put_one("small", "ok").unwrap();
    let err = shard.put_one("big", vec![0u8; 100 * 1024]).unwrap_err();
    assert!(matches!(err, warmshard::Error::TooLarge { .. }), "{err}");
    assert_eq!(shard.get(b"small").as_deref(), Some(&b"ok"[..]));
    let temps = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(temps, 0);
}

/// A reader that hands out `data` in pieces of uneven sizes (as a pipe does), counting what it
/// gave, then fails with `fail` if set, else ends.
struct Trickle<'a> {
    data: &'a [u8],
    given: usize,
    fail: Option<std::io::ErrorKind>,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8]) -> Self {
        Trickle {
            data,
            given: 0,
            fail: None,
        }
    }
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.data[self.given..];
        if rest.is_empty()
            && let Some(kind) = self.fail
        {
            return Err(kind.into());
        }
        let n = rest.len().min(buf.len()).min(1 + self.given % 40_000);
        buf[..n].copy_from_slice(&rest[..n]);
        self.given += n;
        Ok(n)
    }
}

#[test]
fn a_value_from_a_reader_is_stored_exactly_as_the_same_value_from_a_slice() {
    let value: Vec<u8> = (0..300_001u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let key = b"streamed key";
    let (dir, whole) = temp_shard(Options::new());
    let streamed =
        Shard::open_with(dir.path().join("s.shard"), Options::new().durable(false)).unwrap();
    let mut writer = whole.bulk_writer(BulkMode::Replace).unwrap();
    writer.add(key, &value).unwrap();
    writer.commit().unwrap();
    let mut writer = streamed.bulk_writer(BulkMode::Replace).unwrap();
    assert_eq!(
        writer.add_reader(key, Trickle::new(&value)).unwrap(),
        value.len() as u64
    );
    assert_eq!(writer.len(), 1);
    writer.commit().unwrap();
    assert_eq!(streamed.get(key).as_deref(), Some(&value[..]));
    assert_eq!(streamed.snapshot().verify(), Ok(1), "the checksum matches");
    // The record (header with checksum and lengths, key, padding, value) is the same bytes;
    // only the files' identities and build times differ.
    let record = 32 + (24 + key.len()).next_multiple_of(16) + value.len();
    let (a, b) = (
        std::fs::read(whole.path()).unwrap(),
        std::fs::read(streamed.path()).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    assert!(a[32..record] == b[32..record], "the records differ");

    // put_reader merges, like put_one: other entries stay, a later write of the key wins.
    streamed.put_one("other", "kept").unwrap();
    let outcome = streamed.put_reader("small", &b"abc"[..]).unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Committed { .. }),
        "{outcome:?}"
    );
    streamed
        .put_reader(key, Trickle::new(&value[..70_000]))
        .unwrap();
    assert_eq!(streamed.get(key).as_deref(), Some(&value[..70_000]));
    assert_eq!(streamed.get(b"other").as_deref(), Some(&b"kept"[..]));
    assert_eq!(streamed.get(b"small").as_deref(), Some(&b"abc"[..]));
    assert_eq!(streamed.snapshot().verify(), Ok(3));
    streamed.put_reader("empty", std::io::empty()).unwrap();
    assert_eq!(streamed.get(b"empty").as_deref(), Some(&b""[..]));
}

#[test]
fn a_value_from_a_reader_over_the_size_limit_is_refused_once_past_it() {
    let max = 64 * 1024;
    let (dir, shard) = temp_shard(Options::new().max_size(max));
    shard.put_one("small", "ok").unwrap();
    let endless = vec![7u8; 10 << 20];
    let mut reader = Trickle::new(&endless);
    let err = shard.put_reader("big", &mut reader).unwrap_err();
    assert!(
        matches!(err, warmshard::Error::TooLarge { size, .. } if size == max + 1),
        "{err}"
    );
    assert!(
        reader.given < max as usize,
        "read {} bytes, past the limit",
        reader.given
    );
    // A reader that fails: its error, nothing written, and the bulk writer is spent.
    let mut failing = Trickle::new(&endless[..1000]);
    failing.fail = Some(std::io::ErrorKind::ConnectionReset);
    let mut writer = shard.bulk_writer(BulkMode::Merge).unwrap();
    writer.add(b"before", b"x").unwrap();
    let err = writer.add_reader(b"k", failing).unwrap_err();
    assert!(
        matches!(&err, warmshard::Error::Os(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{err}"
    );
    assert!(writer.add(b"after", b"y").is_err());
    assert!(writer.commit().is_err(), "a spent writer commits nothing");
    assert_eq!(contents(&shard).len(), 1);
    assert_eq!(shard.get(b"small").as_deref(), Some(&b"ok"[..]));
    let temps = temp_files(dir.path());
    assert!(temps.is_empty(), "{temps:?}");
}

#[test]
fn default_path_is_under_the_user_cache_dir() {
    let path = warmshard::default_path("myshell").unwrap();
    let cache = dirs::cache_dir().unwrap();
    assert_eq!(path, cache.join("warmshard").join("myshell.shard"));
    assert!(warmshard::default_path("../escape").is_err());
    assert!(warmshard::default_path("").is_err());
}

#[test]
fn a_directory_named_like_a_temp_file_does_not_block_writes() {
    let (dir, shard) = temp_shard(Options::new());
    // One at the fixed temp name writers use, one at a random-looking one.
    let squatters = [".t.shard.tmp", ".t.shard.squat.tmp"].map(|n| dir.path().join(n));
    for squatter in &squatters {
        std::fs::create_dir(squatter).unwrap();
    }
    let stale = dir.path().join(".t.shard.stale1.tmp"); // tempfile: 6 random characters
    std::fs::write(&stale, b"left by a crash").unwrap();
    shard.put_one("k", "v").unwrap();
    shard.put_one("k2", "v2").unwrap();
    for squatter in &squatters {
        assert!(squatter.is_dir(), "not ours: left alone");
    }
    assert!(!stale.exists(), "stale temp file removed");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".t.shard.squat.tmp",
            ".t.shard.tmp",
            "t.shard",
            "t.shard.delta",
            "t.shard.lock"
        ],
        "no temp file of ours left"
    );
    assert_eq!(shard.get(b"k").as_deref(), Some(&b"v"[..]));
    assert_eq!(shard.get(b"k2").as_deref(), Some(&b"v2"[..]));
}

#[test]
fn stale_temp_files_are_removed_by_later_writes() {
    let (dir, shard) = temp_shard(Options::new());
    shard.put_one("a", "1").unwrap();
    shard.put_one("b", "2").unwrap();
    assert!(shard.delta_path().exists());
    // What a writer killed mid-write leaves at the fixed temp name: any next write removes it,
    // even one that changes nothing.
    let fixed = dir.path().join(".t.shard.tmp");
    std::fs::write(&fixed, b"partial").unwrap();
    assert_eq!(shard.remove(["absent"]).unwrap(), WriteOutcome::Unchanged);
    assert!(!fixed.exists());
    // A temp file under another name (an earlier version's): the next write of a base removes
    // it; small writes do not scan the directory.
    let other = dir.path().join(".t.shard.a1B2c3.tmp");
    std::fs::write(&other, b"partial").unwrap();
    shard.put_one("c", "3").unwrap();
    shard.compact().unwrap();
    assert!(!other.exists());
    std::fs::write(&other, b"partial").unwrap();
    shard.clear().unwrap();
    assert!(!other.exists(), "clear sweeps too");
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

/// #12.7: the frictions a new user hit. One key removes with `remove_one`; `?` converts an
/// `std::io::Error`; a write's `file_bytes` is the size of the file it published, and says
/// which; a shard whose directory does not exist says so instead of reading as a plain miss.
#[test]
fn small_api_frictions_are_gone() {
    use warmshard::Published;
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path().join("f.shard")).unwrap();
    let _ = shard
        .replace_all((0..2000).map(|i| (format!("k{i}"), vec![1u8; 100])))
        .unwrap();
    // The outcome names the file published and reports that file's size.
    let assert_published = |outcome: WriteOutcome, expected: Published, file: &std::path::Path| {
        let WriteOutcome::Committed {
            file_bytes,
            published,
            ..
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(published, expected);
        assert_eq!(file_bytes, std::fs::metadata(file).unwrap().len());
    };
    let delta = shard.delta_path();
    assert_published(
        shard.put_one("small", "v").unwrap(),
        Published::Delta,
        &delta,
    );
    assert_published(shard.compact().unwrap(), Published::Base, shard.path());

    assert!(matches!(
        shard.remove_one("small").unwrap(),
        WriteOutcome::Committed { .. }
    ));
    assert_eq!(shard.remove_one("small").unwrap(), WriteOutcome::Unchanged);

    fn read_config(path: &std::path::Path) -> warmshard::Result<Vec<u8>> {
        Ok(std::fs::read(path)?)
    }
    assert!(matches!(
        read_config(&dir.path().join("absent")),
        Err(warmshard::Error::Os(_))
    ));

    let typo = Shard::open(dir.path().join("no-such-dir/f.shard")).unwrap();
    assert_eq!(typo.get(b"k1"), None);
    assert_eq!(
        typo.health(),
        Health::DirectoryMissing {
            dir: dir.path().join("no-such-dir")
        }
    );
}
