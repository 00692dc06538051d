//! Files are created 0600 and directories 0700; shards others could write are refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use warmshard::{Error, Health, Options, Shard};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn new_files_are_0600_and_new_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/cache.shard");
    let shard = Shard::open(&path).unwrap();
    assert_eq!(
        shard.health(),
        Health::DirectoryMissing {
            dir: dir.path().join("a/b/c")
        }
    );
    assert!(
        !dir.path().join("a").exists(),
        "opening for reads must not create directories"
    );
    shard.put_one("k", "v").unwrap();
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&shard.lock_path()), 0o600);
}

#[test]
fn group_or_world_writable_shard_is_refused_then_replaced_by_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.shard");
    let shard = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    shard.put_one("planted", "rm -rf ~").unwrap();
    for bad_mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad_mode)).unwrap();
        let reader = Shard::open(&path).unwrap();
        assert!(
            matches!(reader.health(), Health::Untrusted { ref reason } if reason.contains("other users write")),
            "mode {bad_mode:o}: {:?}",
            reader.health()
        );
        assert_eq!(reader.get(b"planted"), None);
    }
    // The next write does not carry the untrusted entries over, and fixes the mode.
    shard.put_one("mine", "ok").unwrap();
    let reader = Shard::open(&path).unwrap();
    assert_eq!(reader.health(), Health::Valid);
    assert_eq!(reader.get(b"planted"), None);
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn shard_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.shard");
    Shard::open(&path).unwrap().put_one("k", "v").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let reader = Shard::open(&path).unwrap();
    assert!(
        matches!(reader.health(), Health::Untrusted { ref reason } if reason.contains("owned by uid 65534")),
        "{:?}",
        reader.health()
    );
    assert_eq!(reader.get(b"k"), None);
}

#[test]
fn directory_writable_by_others_without_sticky_bit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let path = shared.join("s.shard");
    Shard::open(&path).unwrap().put_one("k", "v").unwrap();

    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(
        matches!(shard.health(), Health::Untrusted { .. }),
        "{:?}",
        shard.health()
    );
    assert_eq!(shard.get(b"k"), None);
    let err = shard.put_one("k2", "v2").unwrap_err();
    assert!(matches!(err, Error::Untrusted { .. }), "{err}");

    // With the sticky bit (as on /tmp) others cannot replace our file: accepted.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.health(), Health::Valid);
    assert_eq!(
        std::fs::metadata(&path).unwrap().uid(),
        nix::unistd::geteuid().as_raw()
    );
}

#[test]
fn symlink_at_the_shard_path_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.shard");
    Shard::open(&real).unwrap().put_one("k", "v").unwrap();
    let link = dir.path().join("link.shard");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let shard = Shard::open(&link).unwrap();
    assert!(
        matches!(shard.health(), Health::Untrusted { ref reason } if reason.contains("symlink")),
        "{:?}",
        shard.health()
    );
    assert_eq!(shard.get(b"k"), None);
}

#[test]
fn a_shard_made_writable_by_others_after_it_was_mapped_is_refused_by_the_next_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.shard");
    let shard = Shard::open_with(&path, Options::new().durable(false)).unwrap();
    shard.put_one("k", "v").unwrap();
    assert_eq!(shard.snapshot().get(b"k"), Some(&b"v"[..]));
    // Same inode, new mode: others could now change the bytes this handle has mapped.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let snapshot = shard.snapshot();
    assert!(
        matches!(snapshot.health(), Health::Untrusted { .. }),
        "{:?}",
        snapshot.health()
    );
    assert_eq!(snapshot.get(b"k"), None);
}
