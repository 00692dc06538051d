//! Promise: a value whose bytes changed on disk is never served as if it were intact when the
//! reader asks for checking: `Snapshot::verify` (and `warmshard verify`) report it, a handle with
//! `Options::verify_values(true)` reads it as a miss, and the next write drops it.

use std::path::Path;
use std::process::Command;

use warmshard::{Health, Options, Shard};

const ENTRIES: [(&str, &str); 4] = [
    ("alpha", "the first value"),
    ("beta", "0123456789abcdef0123456789abcdef"),
    ("gamma", "g"),
    ("delta", "compiled bytes of some function"),
];

fn options() -> Options {
    Options::new().durable(false)
}

/// A shard holding `ENTRIES`; returns its bytes.
fn make(path: &Path) -> Vec<u8> {
    let shard = Shard::open_with(path, options()).unwrap();
    let _ = shard.replace_all(ENTRIES).unwrap();
    std::fs::read(path).unwrap()
}

/// Replaces the file at `path` with `bytes` (a new inode, as a writer would).
fn place(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("aside");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Byte range of `key`'s value inside the shard file.
fn value_range(path: &Path, key: &str) -> std::ops::Range<usize> {
    let snapshot = Shard::open_with(path, options()).unwrap().snapshot();
    let value = snapshot.get(key.as_bytes()).unwrap();
    let start = value.as_ptr() as usize - snapshot.file_bytes().as_ptr() as usize;
    start..start + value.len()
}

fn cli(path: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warmshard"))
        .arg("--shard")
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_flipped_value_bit_is_reported_by_verify_and_missed_by_checked_gets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.shard");
    let mut bytes = make(&path);
    let range = value_range(&path, "beta");
    bytes[range.start + 5] ^= 0x10;
    place(&path, &bytes);

    let plain = Shard::open_with(&path, options()).unwrap().snapshot();
    assert_eq!(
        plain.health(),
        &Health::Valid,
        "a value flip is not visible at open (O(1))"
    );
    let err = plain.verify().unwrap_err();
    // The error says which file and which key, as values a caller can match.
    assert!(
        matches!(
            &err,
            warmshard::VerifyError::File {
                file: warmshard::ShardFile::Base,
                problem: warmshard::format::VerifyProblem::Entry {
                    key,
                    problem: warmshard::format::EntryProblem::Checksum,
                },
            } if key == b"beta"
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("checksum") && err.contains("beta"), "{err}");
    // Without checking, the lookup serves the changed bytes: that is what verify_values is for.
    assert_ne!(
        plain.get(b"beta"),
        Some(&b"0123456789abcdef0123456789abcdef"[..])
    );

    let checked = Shard::open_with(&path, options().verify_values(true)).unwrap();
    let snapshot = checked.snapshot();
    assert_eq!(snapshot.get(b"beta"), None);
    assert!(!snapshot.contains(b"beta"));
    assert!(checked.get(b"beta").is_none());
    assert!(
        snapshot.keys().all(|k| k != b"beta"),
        "iter lists the bad entry"
    );
    for (key, value) in ENTRIES.iter().filter(|(k, _)| *k != "beta") {
        assert_eq!(snapshot.get(key.as_bytes()), Some(value.as_bytes()));
    }

    let out = cli(&path, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum"), "{stderr}");
}

#[test]
fn verify_and_checked_gets_hold_for_every_bit_of_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bits.shard");
    let original = make(&path);
    // Where each record lies, and its generation field (the one field verify does not cover:
    // a changed generation reads the same value, or a miss under a newer floor).
    let snapshot = Shard::open_with(&path, options()).unwrap().snapshot();
    let records = warmshard::__internals::record_ranges(snapshot.file_bytes()).unwrap();
    drop(snapshot);
    assert_eq!(records.len(), ENTRIES.len());

    let mut flips = 0;
    for record in &records {
        for bit in record.start * 8..record.end * 8 {
            let mut bytes = original.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            place(&path, &bytes);
            let checked = Shard::open_with(&path, options().verify_values(true)).unwrap();
            let snapshot = checked.snapshot();
            for (key, value) in ENTRIES {
                let got = snapshot.get(key.as_bytes());
                assert!(
                    got.is_none() || got == Some(value.as_bytes()),
                    "bit {bit}: {key} served a wrong value"
                );
            }
            let in_generation = bit / 8 < record.start + 8;
            assert_eq!(
                snapshot.verify().is_ok(),
                in_generation,
                "bit {bit} (record at {record:?})"
            );
            flips += 1;
        }
    }
    eprintln!("{flips} single-bit flips checked");
    assert!(flips > 8 * 100);
}

#[test]
fn compact_drops_an_entry_whose_value_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.shard");
    let mut bytes = make(&path);
    let range = value_range(&path, "delta");
    bytes[range.end - 1] ^= 0x01;
    place(&path, &bytes);

    let shard = Shard::open_with(&path, options()).unwrap();
    // A small write goes to the delta file and leaves the damaged base alone...
    let _ = shard.put_one("epsilon", "new").unwrap();
    assert!(shard.snapshot().verify().is_err());
    // ...compact rewrites the shard from the sound entries only.
    let _ = shard.compact().unwrap();
    let snapshot = shard.snapshot();
    assert_eq!(
        snapshot.verify(),
        Ok(ENTRIES.len() as u64),
        "compact carried the corrupt value forward"
    );
    assert_eq!(snapshot.get(b"delta"), None);
    assert_eq!(snapshot.get(b"epsilon"), Some(&b"new"[..]));
    for (key, value) in ENTRIES.iter().filter(|(k, _)| *k != "delta") {
        assert_eq!(snapshot.get(key.as_bytes()), Some(value.as_bytes()));
    }
}

/// The checksum covers the value, not the key: a bit flip that turns the stored key `key06`
/// into `key07` leaves a record whose value still matches its checksum. Reads never serve it
/// (its slot holds the hash of `key06`), and a rewrite must not adopt it as `key07`'s entry.
#[test]
fn a_flipped_key_bit_never_gives_a_value_to_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.shard");
    let shard = Shard::open_with(&path, options()).unwrap();
    let entries: Vec<(String, String)> = (0..10)
        .map(|i| (format!("key{i:02}"), format!("value of key{i:02}")))
        .collect();
    let _ = shard.replace_all(entries.clone()).unwrap();
    drop(shard);
    let mut bytes = std::fs::read(&path).unwrap();
    for (from, to) in [("key06", "key07"), ("key03", "key02")] {
        // The key's bytes sit just before its value in the record, but for the zero bytes that
        // align the value.
        let value = value_range(&path, from);
        let mut last_key_byte = value.start - 1;
        while bytes[last_key_byte] == 0 {
            last_key_byte -= 1;
        }
        assert_eq!(bytes[last_key_byte], from.as_bytes()[4]);
        bytes[last_key_byte] ^= from.as_bytes()[4] ^ to.as_bytes()[4];
        place(&path, &bytes);
    }

    let checked = Shard::open_with(&path, options().verify_values(true)).unwrap();
    for (key, value) in &entries {
        let got = checked.snapshot().get(key.as_bytes()).map(<[u8]>::to_vec);
        assert!(
            got.is_none() || got.as_deref() == Some(value.as_bytes()),
            "{key} before"
        );
    }
    let _ = checked.put_one("fresh", "entry").unwrap();
    let _ = checked.compact().unwrap();
    let snapshot = checked.snapshot();
    assert_eq!(snapshot.verify(), Ok(9), "8 intact entries and the new one");
    for (key, value) in &entries {
        let got = snapshot.get(key.as_bytes());
        match key.as_str() {
            "key06" | "key03" => assert_eq!(got, None, "{key}"),
            _ => assert_eq!(got, Some(value.as_bytes()), "{key} after the write"),
        }
    }
}
