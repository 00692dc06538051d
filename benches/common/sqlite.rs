//! SQLite through `rusqlite` (bundled): WAL, one `WITHOUT ROWID` table of blobs.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Peer, Reader, Result};

pub struct Sqlite;

const SELECT: &str = "SELECT v FROM kv WHERE k = ?1";
const UPSERT: &str = "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)";

fn db_path(dir: &Path) -> PathBuf {
    dir.join("w1.sqlite")
}

/// WAL; `synchronous=FULL` fsyncs the WAL at every commit, `OFF` never syncs.
fn open_writer(dir: &Path, durable: bool) -> Result<Connection> {
    let conn = Connection::open(db_path(dir))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "OFF" })?;
    Ok(conn)
}

pub struct SqliteReader(Connection);

impl Reader for SqliteReader {
    #[inline]
    fn get<R>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut stmt = self.0.prepare_cached(SELECT).ok()?;
        stmt.query_row([key], |row| Ok(f(row.get_ref(0)?.as_blob()?)))
            .optional()
            .ok()?
    }
}

impl Peer for Sqlite {
    const NAME: &'static str = "sqlite";
    const LABEL: &'static str = "SQLite (WAL)";
    type Reader = SqliteReader;
    type Writer = Connection;

    fn prewarm<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        dir: &Path,
        entries: impl IntoIterator<Item = (K, V)>,
        durable: bool,
    ) -> Result<()> {
        let mut conn = open_writer(dir, durable)?;
        conn.execute(
            "CREATE TABLE kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID",
            [],
        )?;
        let txn = conn.transaction()?;
        {
            let mut insert = txn.prepare(UPSERT)?;
            for (key, value) in entries {
                insert.execute((key.as_ref(), value.as_ref()))?;
            }
        }
        txn.commit()?;
        // Closing checkpoints the WAL into the database file (and syncs it when durable).
        conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }

    /// A reader as a careful user would open one: read-write (WAL readers need the -shm file),
    /// no mutex, and `mmap_size` so pages are read in place rather than through `pread`.
    fn open(dir: &Path) -> Result<SqliteReader> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(db_path(dir), flags)?;
        conn.pragma_update_and_check(None, "mmap_size", 1i64 << 30, |_| Ok(()))?;
        Ok(SqliteReader(conn))
    }

    fn writer(dir: &Path, durable: bool) -> Result<Connection> {
        open_writer(dir, durable)
    }

    fn put_one(writer: &mut Connection, key: &[u8], value: &[u8]) -> Result<()> {
        writer.prepare_cached(UPSERT)?.execute((key, value))?;
        Ok(())
    }
}
