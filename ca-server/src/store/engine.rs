//! The group-commit engine under [`Store`], the same on both backends: the writer
//! connection and its batch, per-writer savepoints, and the reader connections. What
//! differs per backend (opening a transaction, reconnecting) is behind [`Link`].

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use rusqlite::Connection;

use super::sql::{Conn, PgConn};
use super::{Error, Result, Store, Tx, postgres};

/// A connection of either backend.
#[derive(Debug)]
pub(super) enum Link {
    Sqlite(Connection),
    Postgres(Box<RefCell<PgConn>>, Arc<postgres::Target>),
}

impl Link {
    /// A transaction handle over this connection (the caller opened the transaction).
    pub(super) fn tx(&self, outbox: bool) -> Tx<'_> {
        Tx {
            conn: match self {
                Link::Sqlite(c) => Conn::Sqlite(c),
                Link::Postgres(c, _) => Conn::Postgres(c),
            },
            outbox,
        }
    }

    /// The SQLite connection, if this is one.
    pub(super) fn sqlite(&self) -> Option<&Connection> {
        match self {
            Link::Sqlite(c) => Some(c),
            Link::Postgres(..) => None,
        }
    }

    /// Runs a transaction-control statement (savepoints, COMMIT, ROLLBACK).
    pub(super) fn run(&self, sql: &str) -> Result<()> {
        match self {
            Link::Sqlite(c) => Ok(run(c, sql)?),
            Link::Postgres(c, _) => Ok(c.borrow_mut().client().batch_execute(sql)?),
        }
    }

    /// Opens the write transaction of a batch. On PostgreSQL this takes the writer lock
    /// and reconnects first if the connection was lost (nothing has run yet, so that is
    /// safe to repeat).
    pub(super) fn begin_write(&mut self) -> Result<()> {
        match self {
            Link::Sqlite(c) => Ok(run(c, "BEGIN IMMEDIATE")?),
            Link::Postgres(c, target) => postgres::begin_write(c.get_mut(), target),
        }
    }

    /// Opens a read-only snapshot.
    pub(super) fn begin_read(&mut self) -> Result<()> {
        match self {
            Link::Sqlite(c) => {
                if !c.is_autocommit() {
                    // A read that panicked left its snapshot open.
                    run(c, "ROLLBACK")?;
                }
                Ok(run(c, "BEGIN")?)
            }
            Link::Postgres(c, target) => postgres::begin_read(c.get_mut(), target),
        }
    }

    /// Ends a read-only snapshot.
    pub(super) fn end_read(&self) -> Result<()> {
        self.run("COMMIT")
    }
}

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) conn: Link,
    /// A batch transaction is open.
    pub(super) open: bool,
    /// Id of the newest batch opened.
    pub(super) batch: u64,
    /// Id of the newest batch finished (committed or failed).
    pub(super) finished: u64,
    /// The newest batch whose COMMIT failed, with the error.
    pub(super) failed: Option<(u64, String)>,
    /// Writers in the open batch so far.
    pub(super) members: usize,
}

impl Store {
    pub(super) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A poisoned lock means a panic inside a closure; its savepoint guard rolled it
        // back while unwinding, so the connection is still consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` as a member of the open batch and waits for its leader's commit.
    pub(super) fn join<T, E>(
        &self,
        mut w: MutexGuard<'_, Writer>,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<Error>,
    {
        let my_batch = w.batch;
        w.members += 1;
        let out = in_savepoint(&w.conn, self.outbox.load(Ordering::Relaxed), f);
        // Only the leader waits for joiners; waking the whole batch per joiner would cost
        // a futex storm.
        self.joined.notify_one();
        // A failed writer changed nothing; it need not wait for the commit.
        let out = out?;
        while w.finished < my_batch {
            w = self.batch_done.wait(w).unwrap_or_else(|p| p.into_inner());
        }
        if let Some((batch, e)) = &w.failed
            && *batch == my_batch
        {
            return Err(Error::CommitFailed(e.clone()).into());
        }
        Ok(out)
    }

    /// A free reader connection, or (all busy) the next one in turn.
    pub(super) fn lock_reader(&self) -> MutexGuard<'_, Link> {
        for r in &self.readers {
            match r.try_lock() {
                Ok(conn) => return conn,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a transaction-control statement through the statement cache.
pub(super) fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `f` in a savepoint of the open transaction: released on `Ok`, rolled back on
/// `Err` or panic.
fn in_savepoint<T, E>(
    conn: &Link,
    outbox: bool,
    f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error>,
{
    let sp = Savepoint::begin(conn).map_err(E::from)?;
    let v = f(&conn.tx(outbox))?;
    sp.release().map_err(E::from)?;
    Ok(v)
}

/// The leader's hold on an open batch: it owns the writer lock, and whatever way the
/// leader leaves (commit, error, panic) the batch ends: committed by [`Batch::commit`],
/// or rolled back by `drop`, with every member told.
pub(super) struct Batch<'s> {
    pub(super) store: &'s Store,
    pub(super) id: u64,
    /// `None` only while waiting for joiners (the condvar holds the lock then).
    pub(super) writer: Option<MutexGuard<'s, Writer>>,
    /// Committed or rolled back.
    pub(super) done: bool,
}

impl<'s> Batch<'s> {
    pub(super) fn writer(&mut self) -> &mut Writer {
        if self.writer.is_none() {
            self.writer = Some(self.store.lock_writer());
        }
        match self.writer.as_mut() {
            Some(w) => w,
            None => unreachable!("the writer lock was just taken"),
        }
    }

    /// Runs the leader's own closure.
    pub(super) fn run<T, E>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        let outbox = self.store.outbox.load(Ordering::Relaxed);
        in_savepoint(&self.writer().conn, outbox, f)
    }

    /// Commits the batch (rolling back if COMMIT fails) and wakes its members.
    pub(super) fn commit(mut self) -> Result<()> {
        let committed = self.writer().conn.run("COMMIT");
        self.finish(committed.as_ref().err().map(ToString::to_string));
        committed
    }

    /// Ends the batch: rolled back unless it committed, members woken, health updated.
    fn finish(&mut self, failure: Option<String>) {
        let id = self.id;
        let w = self.writer();
        if failure.is_some() {
            let _ = w.conn.run("ROLLBACK");
        }
        let failed = failure.is_some();
        crate::metrics::store_batch(w.members, !failed);
        if let Some(e) = failure {
            w.failed = Some((id, e));
        }
        w.open = false;
        w.finished = id;
        self.done = true;
        self.writer = None;
        self.store.commit_failed.store(failed, Ordering::Relaxed);
        self.store.batch_done.notify_all();
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::error!("a writer failed with its batch open; the batch is rolled back");
            self.finish(Some(
                "a writer of this batch failed; nothing of it is stored".into(),
            ));
        }
    }
}

/// Rolls back to the savepoint unless released (also while unwinding from a panic).
struct Savepoint<'c> {
    conn: &'c Link,
    done: bool,
}

impl<'c> Savepoint<'c> {
    fn begin(conn: &'c Link) -> Result<Self> {
        conn.run("SAVEPOINT op")?;
        Ok(Savepoint { conn, done: false })
    }

    fn release(mut self) -> Result<()> {
        self.conn.run("RELEASE op")?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .conn
                .run("ROLLBACK TO op")
                .and_then(|()| self.conn.run("RELEASE op"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use std::time::Duration;

    use super::*;
    use crate::audit::{self, Event};

    #[test]
    fn the_background_thread_checkpoints_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Arc::new(Store::open(&path).unwrap());
        s.checkpoint_in_background(Duration::from_millis(20), i64::MAX)
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let wide = "x".repeat(2000);
        for i in 0..300 {
            s.transact(|tx| tx.insert_user(&format!("u{i}-{wide}"), &[], 1).map(|_| ()))
                .unwrap();
        }
        // The writer no longer checkpoints: only the thread can grow the main file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + 300 * 2000 {
            assert!(
                std::time::Instant::now() < deadline,
                "main file still {} bytes after 300 commits of 2 kB",
                std::fs::metadata(&path).unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let autocheckpoint: i64 = s
            .lock_writer()
            .conn
            .sqlite()
            .unwrap()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 0);
        assert_eq!(s.read(|tx| tx.users()).unwrap().len(), 300);
    }

    /// The most pages the WAL held, sampled every 50 of 1,000 commits, while a reader keeps
    /// a snapshot open most of the time, with restarts past `restart_frames`.
    fn longest_wal_under_steady_reads(restart_frames: i64) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Arc::new(Store::open(&path).unwrap());
        s.checkpoint_in_background(Duration::from_millis(5), restart_frames)
            .unwrap();
        let probe = Connection::open(&path).unwrap();
        let frames = || -> i64 {
            probe
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap()
        };
        let stop = AtomicBool::new(false);
        let mut longest = 0;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    s.read(|tx| {
                        std::thread::sleep(Duration::from_micros(500));
                        tx.users().map(|u| u.len())
                    })
                    .unwrap();
                }
            });
            let wide = "x".repeat(3000);
            for i in 0..1000 {
                s.transact(|tx| tx.insert_user(&format!("u{i}-{wide}"), &[], 1).map(|_| ()))
                    .unwrap();
                if i % 50 == 49 {
                    longest = longest.max(frames());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        longest
    }

    #[test]
    fn a_long_wal_is_restarted_even_while_readers_keep_it_busy() {
        let unbounded = longest_wal_under_steady_reads(i64::MAX);
        let restarted = longest_wal_under_steady_reads(64);
        // 1,000 commits of a 3 kB row append at least 1,000 pages when nothing restarts.
        assert!(unbounded >= 1000, "without restarts: {unbounded} pages");
        assert!(
            restarted < unbounded / 2,
            "with restarts {restarted} pages at most, without {unbounded}"
        );
    }

    #[test]
    fn concurrent_writers_share_commits_and_failures_stay_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db")).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..50 {
                        let name = format!("u{t}-{i}");
                        let r: Result<(), Error> = s.transact(|tx| {
                            tx.insert_user(&name, &[], 1)?;
                            tx.append_audit(&Event::new(
                                1,
                                "op",
                                "user.added",
                                None,
                                serde_json::json!({"u": name}),
                            ))?;
                            if i % 10 == 3 {
                                // This writer fails after writing: its rows must vanish.
                                return Err(Error::Corrupt("refused".into()));
                            }
                            Ok(())
                        });
                        assert_eq!(r.is_ok(), i % 10 != 3);
                        // Once transact returned Ok, the row is visible to readers.
                        let seen = s.read(|tx| tx.user(&name)).unwrap();
                        assert_eq!(seen.is_some(), i % 10 != 3, "{name}");
                    }
                });
            }
        });
        let users = s.read(|tx| tx.users()).unwrap();
        assert_eq!(users.len(), 8 * 45);
        let rows = s.read(|tx| tx.audit_rows()).unwrap();
        assert_eq!(audit::verify(rows).unwrap(), 8 * 45);
    }

    /// Runs `f` on a thread and fails the test if it has not finished within 10 s (a
    /// wedged batch would otherwise hang the suite instead of failing it).
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the store is wedged: a write did not finish within 10 s")
    }

    #[test]
    fn a_panicking_leader_closes_its_batch_and_later_writes_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(dir.path().join("db")).unwrap());
        let s2 = s.clone();
        let panicked = std::thread::spawn(move || {
            let _: Result<(), Error> = s2.transact(|tx| {
                tx.insert_user("ghost", &[], 1)?;
                panic!("injected");
            });
        })
        .join();
        assert!(panicked.is_err(), "the panic reaches the caller");
        assert!(
            !s.can_commit(),
            "a batch ended by a panic counts as a failed commit"
        );
        let s3 = s.clone();
        within_10s(move || {
            s3.transact(|tx| tx.insert_user("after", &[], 2)).unwrap();
        });
        assert!(s.can_commit(), "the next commit clears the failure");
        assert!(s.read(|tx| tx.user("ghost")).unwrap().is_none());
        assert!(s.read(|tx| tx.user("after")).unwrap().is_some());
    }

    #[test]
    fn panicking_writers_under_load_never_wedge_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(dir.path().join("db")).unwrap());
        let s2 = s.clone();
        let committed = within_10s(move || {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|t| {
                        let s = &s2;
                        scope.spawn(move || {
                            let mut ok = 0;
                            for i in 0..40 {
                                let name = format!("u{t}-{i}");
                                let r =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        s.transact(|tx| {
                                            tx.insert_user(&name, &[], 1)?;
                                            if i % 7 == 2 {
                                                panic!("injected");
                                            }
                                            Ok::<_, Error>(())
                                        })
                                    }));
                                if matches!(r, Ok(Ok(()))) {
                                    ok += 1;
                                }
                            }
                            ok
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .sum::<usize>()
            })
        });
        // A leader runs its closure before anyone joins, and a joiner's panic rolls back
        // only its savepoint: every write that did not panic commits, and no other.
        let users = s.read(|tx| tx.users()).unwrap();
        assert_eq!(users.len(), committed);
        assert!(users.iter().all(|u| {
            let i: usize = u.name.rsplit('-').next().unwrap().parse().unwrap();
            i % 7 != 2
        }));
        assert_eq!(committed, 8 * 34);
    }
}
