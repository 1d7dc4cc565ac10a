//! The SQLite backend: one file, WAL, `synchronous=FULL`, its migrations, and the thread
//! that checkpoints the WAL off the commit path. A commit is on disk before anyone is told
//! it happened.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::engine::Link;
use super::{READERS, Result, Store};

pub(super) mod migrations;

/// Statements each connection keeps prepared: every distinct statement the server runs
/// fits, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

/// Opens (creating if needed) and migrates the database at `path`.
pub(super) fn open(path: &Path) -> Result<Store> {
    let conn = Connection::open(path)?;
    let writer = setup(conn)?;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let reader = Connection::open(path)?;
        reader.busy_timeout(Duration::from_secs(5))?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        reader.pragma_update(None, "query_only", true)?;
        readers.push(Link::Sqlite(reader));
    }
    let mut store = Store::with(writer, readers);
    store.path = Some(path.to_owned());
    Ok(store)
}

/// A private in-memory database, for tests.
pub(super) fn open_in_memory() -> Result<Store> {
    Ok(Store::with(
        setup(Connection::open_in_memory()?)?,
        Vec::new(),
    ))
}

fn setup(mut conn: Connection) -> Result<Link> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each writer's savepoint keeps its undo pages in a sub-journal; in memory, not in
    // a temp file written and thrown away at every batch.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrations::upgrade(&mut conn)?;
    Ok(Link::Sqlite(conn))
}

impl Store {
    /// Moves WAL checkpoints off the commit path: the writer stops checkpointing on its
    /// own, and a thread with its own connection copies committed pages into the database
    /// file every `every`, without the write lock (SQLite's passive checkpoint). Commits
    /// stay durable in the WAL either way; this only takes the copying (and its fsync) out
    /// of the latency of the writers who happen to cross the threshold. Once the WAL holds
    /// `restart_frames` pages, the thread restarts it, holding writers for a
    /// moment; otherwise, under steady load, it would grow without bound. The thread ends
    /// with the store. No-op in memory.
    pub fn checkpoint_in_background(
        self: &Arc<Self>,
        every: Duration,
        restart_frames: i64,
    ) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let conn = Connection::open(path)?;
        // A restart waits this long for readers to leave the WAL, blocking writers
        // meanwhile; if they have not, it is tried again at the next turn.
        conn.busy_timeout(Duration::from_millis(50))?;
        {
            let w = self.lock_writer();
            let Some(conn) = w.conn.sqlite() else {
                return Ok(());
            };
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            // Between checkpoints the WAL grows by what a second of issuance writes; keep
            // the file from staying at its high-water mark after a burst.
            conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        }
        let store = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("moshca-wal".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    if store.strong_count() == 0 {
                        break;
                    }
                    if let Err(e) = checkpoint(&conn, restart_frames) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
            });
        if let Err(e) = spawned {
            // Without the thread, the writer checkpoints on its own again.
            if let Some(conn) = self.lock_writer().conn.sqlite() {
                conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
            }
            tracing::warn!(error = %e, "no WAL checkpoint thread; the writer checkpoints");
        }
        Ok(())
    }
}

/// One checkpoint turn: copy what the WAL holds into the database file without blocking
/// anyone; and once the WAL is long, restart it. Under steady load some reader always
/// holds a snapshot, so SQLite would otherwise keep appending to the WAL without bound.
fn checkpoint(conn: &Connection, restart_frames: i64) -> rusqlite::Result<()> {
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if log >= restart_frames {
        // Copies what the passive pass could not (pages newer than some reader's
        // snapshot), waits briefly for readers, and makes the next write start the WAL
        // over. BUSY (readers stayed) is not an error: next turn.
        match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
