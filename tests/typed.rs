//! Typed entries: rkyv-archived values written through every write path and read in place,
//! with the autoload cache's promises (the reference design's own tests) and hostile bytes.

use std::path::Path;

use warmshard::{BulkMode, Health, Options, Shard};

/// An autoload cache entry, as the reference design stored it (plus the function's id, so a
/// test can tell whose value it got).
#[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
#[rkyv(derive(Debug, PartialEq))]
struct Compiled {
    id: u64,
    binary_mtime: u64,
    cached_at: u64,
    chunk: Vec<u8>,
}

fn compiled(id: u64) -> Compiled {
    Compiled {
        id,
        binary_mtime: 1_700_000_000_000_000_000 + id,
        cached_at: 1_700_000_000 + id,
        chunk: (0..(id as usize * 7) % 300)
            .map(|i| (i as u64 ^ id) as u8)
            .collect(),
    }
}

fn name(id: u64) -> String {
    format!("fn_{id}")
}

fn open(path: &Path) -> Shard {
    Shard::open_with(path, Options::new().producer("typed-test").durable(false)).unwrap()
}

fn assert_entry(archived: &ArchivedCompiled, id: u64) {
    let want = compiled(id);
    assert_eq!(archived.id, want.id);
    assert_eq!(archived.binary_mtime, want.binary_mtime);
    assert_eq!(archived.cached_at, want.cached_at);
    assert_eq!(archived.chunk.as_slice(), want.chunk.as_slice());
}

#[test]
fn one_round_trip_reads_in_place_from_a_fresh_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("autoload.shard");
    open(&path).put_typed(name(3), &compiled(3)).unwrap();

    let snapshot = open(&path).snapshot();
    let entry = snapshot.get_typed::<Compiled>(name(3).as_bytes()).unwrap();
    assert_entry(entry, 3);
    // In place: the archived value lies in the mapping, at an aligned address.
    let at = entry as *const ArchivedCompiled as usize;
    let file = snapshot.file_bytes().as_ptr_range();
    let delta = snapshot.delta_file_bytes().as_ptr_range();
    assert!(
        (file.start as usize..file.end as usize).contains(&at)
            || (delta.start as usize..delta.end as usize).contains(&at)
    );
    let value = snapshot.get(name(3).as_bytes()).unwrap();
    assert_eq!(value.as_ptr() as usize % 16, 0, "value not 16-aligned");
    assert_eq!(snapshot.get_typed::<Compiled>(b"absent"), None);
    assert_eq!(snapshot.try_get_typed::<Compiled>(b"absent"), Ok(None));
}

#[test]
fn every_write_path_stores_typed_entries_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(&dir.path().join("paths.shard"));
    let mut writer = shard.bulk_writer(BulkMode::Replace).unwrap();
    for id in 0..500 {
        writer
            .add_typed(name(id).as_bytes(), &compiled(id))
            .unwrap();
    }
    writer.commit().unwrap();
    // Small writes land in the delta file; values there are aligned too.
    shard.put_typed(name(1000), &compiled(1000)).unwrap();
    let more: Vec<(String, Compiled)> = (1001..1010).map(|id| (name(id), compiled(id))).collect();
    shard
        .merge_in_typed(more.iter().map(|(k, v)| (k, v)))
        .unwrap();
    let snapshot = shard.snapshot();
    assert!(!snapshot.delta_file_bytes().is_empty(), "expected a delta");
    for id in (0..500).chain(1000..1010) {
        let entry = snapshot.get_typed::<Compiled>(name(id).as_bytes());
        assert_entry(entry.unwrap_or_else(|| panic!("{id} missing")), id);
    }
    // Folding the delta into a new base copies records verbatim: still aligned and readable.
    shard.compact().unwrap();
    let snapshot = shard.snapshot();
    assert!(snapshot.delta_file_bytes().is_empty());
    for id in (0..500).chain(1000..1010) {
        assert_entry(
            snapshot.get_typed::<Compiled>(name(id).as_bytes()).unwrap(),
            id,
        );
    }
}

#[test]
fn replace_all_drops_names_not_in_the_new_set_and_lists_the_cached_names() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(&dir.path().join("replace.shard"));
    let first: Vec<(String, Compiled)> = (0..20).map(|id| (name(id), compiled(id))).collect();
    shard
        .replace_all_typed(first.iter().map(|(k, v)| (k, v)))
        .unwrap();
    let second: Vec<(String, Compiled)> = (10..30).map(|id| (name(id), compiled(id))).collect();
    shard
        .replace_all_typed(second.iter().map(|(k, v)| (k, v)))
        .unwrap();

    let snapshot = shard.snapshot();
    for id in 0..10 {
        assert!(
            snapshot
                .get_typed::<Compiled>(name(id).as_bytes())
                .is_none()
        );
    }
    let mut names: Vec<String> = snapshot
        .keys()
        .map(|k| String::from_utf8(k.to_vec()).unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = (10..30).map(name).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn a_corrupt_shard_reads_as_a_miss_and_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.shard");
    let shard = open(&path);
    shard.put_typed(name(1), &compiled(1)).unwrap();
    shard.compact().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let half = bytes.len() / 2;
    bytes.truncate(half);
    let aside = dir.path().join("incoming");
    std::fs::write(&aside, &bytes).unwrap();
    std::fs::rename(&aside, &path).unwrap();

    let shard = open(&path);
    let snapshot = shard.snapshot();
    assert!(matches!(snapshot.health(), Health::Truncated { .. }));
    assert_eq!(snapshot.get_typed::<Compiled>(name(1).as_bytes()), None);
    shard.put_typed(name(2), &compiled(2)).unwrap();
    let snapshot = shard.snapshot();
    assert!(snapshot.health().is_valid(), "{}", snapshot.health());
    assert_entry(
        snapshot.get_typed::<Compiled>(name(2).as_bytes()).unwrap(),
        2,
    );
}

#[test]
fn clear_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clear.shard");
    let shard = open(&path);
    shard.put_typed(name(1), &compiled(1)).unwrap();
    shard.compact().unwrap();
    assert!(path.exists());
    shard.clear().unwrap();
    assert!(!path.exists());
    assert_eq!(shard.health(), Health::Missing);
    assert_eq!(
        shard.snapshot().get_typed::<Compiled>(name(1).as_bytes()),
        None
    );
}

#[test]
fn a_value_that_fails_validation_is_a_miss_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(&dir.path().join("invalid.shard"));
    // An archived u8 of 2 is no valid bool; raw bytes are no valid `Compiled`.
    shard.put_typed("two", &2u8).unwrap();
    shard.put_one("raw", b"definitely not an archive").unwrap();
    shard.put_one("empty", b"").unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(snapshot.get_typed::<u8>(b"two").copied(), Some(2));
    assert_eq!(snapshot.get_typed::<bool>(b"two"), None);
    let err = snapshot.try_get_typed::<bool>(b"two").unwrap_err();
    assert_eq!(err.key, "two");
    assert!(!err.reason.is_empty());
    assert!(err.to_string().contains("bool"), "{err}");
    for key in [&b"raw"[..], b"empty"] {
        assert_eq!(snapshot.get_typed::<Compiled>(key), None);
        let err = snapshot.try_get_typed::<Compiled>(key).unwrap_err();
        assert!(err.to_string().contains("reads as a miss"), "{err}");
    }
}

/// Positions of the slots of `keys` in a shard file: each slot starts with its key hash's tag.
fn slot_positions(file: &[u8], keys: &[String]) -> Vec<usize> {
    let mut positions = Vec::new();
    for key in keys {
        let tag = warmshard::format::slot_tag(warmshard::format::key_hash(key.as_bytes()));
        let tag = tag.to_le_bytes();
        // The slot table follows the records; search from the end (tags are random, so a match
        // in the records region is unlikely and harmless: it is forged too, and must not panic).
        if let Some(at) = file.windows(4).rposition(|w| w == tag) {
            positions.push(at);
        }
    }
    positions
}

#[test]
fn forged_and_misaligned_offsets_or_values_never_panic_nor_read_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.shard");
    let keys: Vec<String> = (0..16).map(name).collect();
    let entries: Vec<(String, Compiled)> = (0..16).map(|id| (name(id), compiled(id))).collect();
    open(&source)
        .replace_all_typed(entries.iter().map(|(k, v)| (k, v)))
        .unwrap();
    let good = std::fs::read(&source).unwrap();
    let slots = slot_positions(&good, &keys);
    assert_eq!(slots.len(), keys.len());
    let path = dir.path().join("forged.shard");
    // `checked`: values are read with their checksum verified, so a damaged value is a miss.
    // `damaged_values`: value bytes were changed, so an unchecked read may see other field
    // values (never a panic); forged offsets alone must never yield another key's record.
    let check = |bytes: &[u8], checked: bool, damaged_values: bool| {
        let aside = dir.path().join("incoming");
        std::fs::write(&aside, bytes).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        let options = Options::new().verify_values(checked);
        let snapshot = Shard::open_with(&path, options).unwrap().snapshot();
        for (id, key) in keys.iter().enumerate() {
            if let Ok(Some(entry)) = snapshot.try_get_typed::<Compiled>(key.as_bytes()) {
                if !damaged_values || checked {
                    assert_eq!(entry.id, id as u64, "{key} read another key's value");
                }
                if checked {
                    assert_entry(entry, id as u64);
                }
            }
            let _ = snapshot.get_typed::<bool>(key.as_bytes());
            let _ = snapshot.get_typed::<String>(key.as_bytes());
        }
        let _ = snapshot.verify();
    };
    for &slot in &slots {
        let offset = u32::from_le_bytes(good[slot + 4..slot + 8].try_into().unwrap());
        for forged in [
            offset.wrapping_add(1),
            offset.wrapping_add(8),
            offset.wrapping_add(16),
            offset.wrapping_sub(16),
            offset ^ 0x8000,
            1,
            0,
            u32::MAX - 1,
        ] {
            let mut bad = good.clone();
            bad[slot + 4..slot + 8].copy_from_slice(&forged.to_le_bytes());
            check(&bad, false, false);
        }
    }
    // Damaged values: bytes flipped all over the first records (relative pointers, lengths).
    for at in (32..good.len().min(32 + 2048)).step_by(3) {
        let mut bad = good.clone();
        bad[at] ^= 0xa5;
        check(&bad, false, true);
        check(&bad, true, true);
    }
}
