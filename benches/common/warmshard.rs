//! warmshard itself, through its public API only.

use std::path::{Path, PathBuf};

use warmshard::{Options, Shard, Snapshot, WriteOutcome};

use super::{Peer, Reader, Result};

pub struct Warmshard;

/// The shard file inside a peer directory (the physical limit maps the same file).
pub fn shard_path(dir: &Path) -> PathBuf {
    dir.join("w1.shard")
}

fn committed(outcome: WriteOutcome) -> Result<()> {
    match outcome {
        WriteOutcome::Committed { .. } => Ok(()),
        other => Err(format!("write not committed: {other:?}").into()),
    }
}

impl Reader for Snapshot {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        Snapshot::get(self, key).map(f)
    }
}

impl Peer for Warmshard {
    const NAME: &'static str = "warmshard";
    const LABEL: &'static str = "**warmshard**";
    type Reader = Snapshot;
    type Writer = Shard;

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let shard = Shard::open_with(shard_path(dir), Options::new().durable(durable))?;
        committed(shard.replace_all(entries)?)
    }

    fn open(dir: &Path) -> Result<Snapshot> {
        let snapshot = Shard::open(shard_path(dir))?.snapshot();
        if !snapshot.health().is_valid() {
            return Err(format!("shard not valid: {}", snapshot.health()).into());
        }
        Ok(snapshot)
    }

    fn open_get(dir: &Path, probe: &super::Probe) -> Result<Option<u8>> {
        // What a shell does at startup: open, one lookup through a fresh snapshot, drop.
        let shard = Shard::open(shard_path(dir))?;
        Ok(shard.snapshot().get(&probe.key).map(|v| v[0]))
    }

    fn writer(dir: &Path, durable: bool) -> Result<Shard> {
        Ok(Shard::open_with(
            shard_path(dir),
            Options::new().durable(durable),
        )?)
    }

    fn put_one(writer: &mut Shard, key: &[u8], value: &[u8]) -> Result<()> {
        committed(writer.put_one(key, value)?)
    }
}
