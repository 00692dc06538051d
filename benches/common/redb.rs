//! redb: one table of raw bytes.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadOnlyTable, ReadableDatabase, TableDefinition,
};

use super::{Peer, Reader, Result};

pub struct Redb;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("w1");

fn db_path(dir: &Path) -> PathBuf {
    dir.join("w1.redb")
}

fn durability(durable: bool) -> Durability {
    if durable {
        Durability::Immediate
    } else {
        Durability::None
    }
}

pub struct RedbReader {
    // Field order is drop order: the table before its database.
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
    _db: ReadOnlyDatabase,
}

impl Reader for RedbReader {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let guard = self.table.get(key).ok()??;
        Some(f(guard.value()))
    }
}

impl Peer for Redb {
    const NAME: &'static str = "redb";
    const LABEL: &'static str = "redb";
    type Reader = RedbReader;
    type Writer = (Database, bool);

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let db = Database::create(db_path(dir))?;
        let mut txn = db.begin_write()?;
        txn.set_durability(durability(durable))?;
        {
            let mut table = txn.open_table(TABLE)?;
            for (key, value) in entries {
                table.insert(key.as_ref(), value.as_ref())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn open(dir: &Path) -> Result<RedbReader> {
        let db = ReadOnlyDatabase::open(db_path(dir))?;
        let table = db.begin_read()?.open_table(TABLE)?;
        Ok(RedbReader { table, _db: db })
    }

    fn writer(dir: &Path, durable: bool) -> Result<(Database, bool)> {
        Ok((Database::open(db_path(dir))?, durable))
    }

    fn put_one(writer: &mut (Database, bool), key: &[u8], value: &[u8]) -> Result<()> {
        let mut txn = writer.0.begin_write()?;
        txn.set_durability(durability(writer.1))?;
        txn.open_table(TABLE)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }
}
