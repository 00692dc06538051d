//! LMDB through `heed`: one unnamed database of raw bytes.

use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, WithTls};

use super::{Peer, Reader, Result};

pub struct Lmdb;

/// Room for the largest store a figure writes (the opt-in 1 GiB one); LMDB maps it lazily.
const MAP_SIZE: usize = 8 << 30;

type Db = Database<'static, Bytes, Bytes>;

fn open_env(dir: &Path, flags: EnvFlags) -> Result<Env> {
    let mut options = EnvOpenOptions::new();
    options.map_size(MAP_SIZE);
    // SAFETY: `flags` are only NO_SYNC or READ_ONLY, whose loss on power failure is the point
    // of the non-durable figure; nothing else in the process maps these files.
    unsafe { options.flags(flags) };
    // SAFETY: the benchmark owns the directory; no other process writes it meanwhile.
    Ok(unsafe { options.open(dir)? })
}

fn open_db(env: &Env) -> Result<Db> {
    let rtxn = env.read_txn()?;
    let db: Option<Db> = env
        .open_databases_and_commit(rtxn, |opener, rtxn| {
            opener
                .open_database(rtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })?
        .unwrap_commit();
    Ok(db.ok_or("LMDB: no unnamed database")?)
}

fn create_db(env: &Env) -> Result<Db> {
    let wtxn = env.write_txn()?;
    let db: Db = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database(wtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })?
        .unwrap_commit();
    Ok(db)
}

pub struct LmdbReader {
    // Field order is drop order: the transaction before the environment it reads.
    txn: RoTxn<'static, WithTls>,
    db: Db,
}

impl Reader for LmdbReader {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.db.get(&self.txn, key).ok().flatten().map(f)
    }
}

pub struct LmdbWriter {
    env: Env,
    db: Db,
}

fn sync_flags(durable: bool) -> EnvFlags {
    if durable {
        EnvFlags::empty()
    } else {
        EnvFlags::NO_SYNC
    }
}

impl Peer for Lmdb {
    const NAME: &'static str = "lmdb";
    const LABEL: &'static str = "LMDB (heed)";
    type Reader = LmdbReader;
    type Writer = LmdbWriter;

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let env = open_env(dir, sync_flags(durable))?;
        let db = create_db(&env)?;
        let mut wtxn = env.write_txn()?;
        for (key, value) in entries {
            db.put(&mut wtxn, key.as_ref(), value.as_ref())?;
        }
        wtxn.commit()?;
        env.prepare_for_closing().wait();
        Ok(())
    }

    fn open(dir: &Path) -> Result<LmdbReader> {
        let env = open_env(dir, EnvFlags::READ_ONLY)?;
        let db = open_db(&env)?;
        let txn = env.static_read_txn()?;
        Ok(LmdbReader { txn, db })
    }

    fn open_get(dir: &Path, probe: &super::Probe) -> Result<Option<u8>> {
        let env = open_env(dir, EnvFlags::READ_ONLY)?;
        let db = open_db(&env)?;
        let found = {
            let txn = env.read_txn()?;
            db.get(&txn, &probe.key)?.map(|v| v[0])
        };
        env.prepare_for_closing().wait();
        Ok(found)
    }

    fn writer(dir: &Path, durable: bool) -> Result<LmdbWriter> {
        let env = open_env(dir, sync_flags(durable))?;
        let db = open_db(&env)?;
        Ok(LmdbWriter { env, db })
    }

    fn put_one(writer: &mut LmdbWriter, key: &[u8], value: &[u8]) -> Result<()> {
        let mut wtxn = writer.env.write_txn()?;
        writer.db.put(&mut wtxn, key, value)?;
        wtxn.commit()?;
        Ok(())
    }
}
