//! The storage port and its two backends: SQLite (one server, the default) and PostgreSQL
//! (several replicas). Above it everything speaks in domain terms through one unit of work,
//! [`Store::transact`], and snapshots, [`Store::read`]; [`Tx`]'s methods are the port's
//! operations, and failures come classified ([`ErrorKind`]). Nothing here decides anything:
//! policy and state rules live in `policy`, `approvals` and `authority`.
//!
//! A commit is durable before anyone is told it happened. Writes that belong together (a
//! request's new state, its certificate and their audit events) go through one
//! [`Store::transact`] call, which either commits whole or not at all. This file keeps the
//! entry points ([`Store`], [`Tx`], [`Database`]) and the errors; the rest is split by job:
//!
//! | module | job |
//! |---|---|
//! | `engine` | the group-commit engine both backends share: writer, batch, savepoints, readers |
//! | `sql` | the SQL both backends speak: parameters, rows, the statement calls |
//! | `sqlite` | the SQLite backend: WAL, its migrations, the checkpoint thread |
//! | `postgres` | the PostgreSQL backend: URL, reconnects, the writer lock, migrations, LISTEN |
//! | `users` | users and their bearer tokens |
//! | `requests` | certificate requests, their reviews, the listing queries |
//! | `certificates` | user certificates, revocation, revoked keys, KRL version, serials |
//! | `ca_keys` | the CA public keys trusted, active and retired |
//! | `replay` | workload token ids already used |
//! | `audit` | the audit hash chain, its signed checkpoints, listing and export cursors |
//! | `outbox` | webhook notifications: fan-out and delivery claims |
//! | `hosts` | host join tokens, host certificates, renewal challenges |
//! | `sessions` | SSO sessions, consumed ID tokens, which users sign in through SSO |

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod audit;
mod ca_keys;
mod certificates;
mod engine;
mod hosts;
mod outbox;
mod postgres;
mod replay;
mod requests;
mod sessions;
mod sql;
mod sqlite;
mod users;

pub use audit::AuditFilter;
pub use certificates::{CertRecord, RevokedCert};
pub use hosts::{HostCertRecord, HostTokenRecord};
pub use outbox::{Delivery, NOTIFY_ACTIONS};
pub use postgres::PgUrl;
pub use requests::RequestFilter;
pub use sessions::{SessionRecord, SessionStanding, UserSource};
pub use users::{TokenRecord, TokenStanding, User};

use engine::{Batch, Link, Writer};
use sql::Conn;

/// Where the store keeps its rows: a SQLite file (one server), or a PostgreSQL database
/// (one or more replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(PgUrl),
}

impl Database {
    /// Reads a `database` setting: a `postgres://` or `postgresql://` URL, or else a path
    /// (relative paths are taken from `base`).
    pub fn parse(value: &str, base: &Path) -> std::result::Result<Database, String> {
        if PgUrl::is_url(value) {
            return PgUrl::parse(value).map(Database::Postgres);
        }
        Ok(Database::Sqlite(base.join(value)))
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(u) => write!(f, "{u}"),
        }
    }
}

impl From<&Path> for Database {
    fn from(p: &Path) -> Self {
        Database::Sqlite(p.to_owned())
    }
}

impl From<&PathBuf> for Database {
    fn from(p: &PathBuf) -> Self {
        Database::Sqlite(p.clone())
    }
}

impl From<PathBuf> for Database {
    fn from(p: PathBuf) -> Self {
        Database::Sqlite(p)
    }
}

impl From<&Database> for Database {
    fn from(d: &Database) -> Self {
        d.clone()
    }
}

/// Store failures. Callers log these whole and tell clients "internal error".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no, or could not be reached.
    #[error("database error: {}", self::postgres::describe(.0))]
    Postgres(#[from] ::postgres::Error),
    /// A row holds something this version cannot read.
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
    /// The batch this write belonged to could not be committed; nothing of it is stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The database was made by a newer moshca.
    #[error("database schema version {0} is newer than this moshca-server understands")]
    TooNew(i64),
    /// The row changed since it was read (another writer saved it first); nothing was
    /// written. Names what changed, e.g. "request 01J...".
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// The database cannot be used as configured (a URL it cannot connect with, a key
    /// that does not match the one it already serves); the message says what to fix.
    #[error("{0}")]
    Setup(String),
}

/// What a store failure means to the layers above, decided by the backend so nothing above
/// the store matches a database's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The database cannot take the write now (disk full, read-only, locked, I/O, a failed
    /// commit, a lost connection): nothing was stored and the caller may retry.
    Unavailable,
    /// The database holds something this version cannot read, or said something it should
    /// never say: an operator must look.
    Corrupt,
    /// Another writer changed the row between this call's read and its write: nothing was
    /// stored and the caller may read again and retry.
    Conflict,
}

impl Error {
    /// Classifies this failure; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        use rusqlite::ErrorCode as C;
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    C::DiskFull
                        | C::ReadOnly
                        | C::DatabaseBusy
                        | C::DatabaseLocked
                        | C::CannotOpen
                        | C::SystemIoFailure
                ) =>
            {
                ErrorKind::Unavailable
            }
            Error::Postgres(e) => postgres::kind(e),
            Error::CommitFailed(_) => ErrorKind::Unavailable,
            Error::Conflict(_) => ErrorKind::Conflict,
            _ => ErrorKind::Corrupt,
        }
    }
}

/// Store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The database: one writer connection with group commit, a few reader connections.
///
/// Writers run their closure inside a savepoint of a shared transaction; the first of a
/// batch (the leader) lets the writers queued behind it join, then commits once and wakes
/// them all. Each caller returns only after the commit that holds its rows, so one commit
/// covers many issuances and nothing is acknowledged before it is durable. A closure that
/// fails rolls back to its savepoint and leaves the others untouched. Reads use their own
/// connection and see only committed data.
///
/// On PostgreSQL every batch first takes the database's writer lock (the audit chain's
/// head), so batches of all replicas commit one after another, each seeing every row the
/// ones before it wrote: the rules that read and then write (one approval, one
/// certificate; the pending cap; a disabled user gets nothing) hold across replicas as
/// they do on one SQLite writer.
#[derive(Debug)]
pub struct Store {
    writer: Mutex<Writer>,
    /// Signalled when a writer joined the open batch (the leader waits on it).
    joined: Condvar,
    /// Signalled when a batch committed or failed (its members wait on it).
    batch_done: Condvar,
    queued: AtomicUsize,
    /// The last batch failed to commit (see [`Store::can_commit`]).
    commit_failed: AtomicBool,
    /// Whether notifying audit events are queued for webhooks (see [`Store::set_outbox`]).
    outbox: AtomicBool,
    /// `None` for in-memory stores (a second connection would see another database).
    readers: Vec<Mutex<Link>>,
    /// Which reader a read waits for when all are busy.
    next_reader: AtomicUsize,
    /// The SQLite file; `None` in memory and on PostgreSQL.
    path: Option<PathBuf>,
    /// The PostgreSQL database; `None` on SQLite.
    pg: Option<Arc<postgres::Target>>,
}

/// Reader connections: a long read (a KRL over 100,000 revocations, an audit export)
/// holds one, and authentication and the rest read through the others.
const READERS: usize = 3;

/// Most writers one batch takes before it commits.
const MAX_BATCH: usize = 512;

impl Store {
    /// Opens (creating if needed) and migrates the database `db`: a SQLite file path, or a
    /// [`Database`].
    pub fn open(db: impl Into<Database>) -> Result<Self> {
        match db.into() {
            Database::Sqlite(path) => sqlite::open(&path),
            Database::Postgres(url) => postgres::open(&url),
        }
    }

    /// A private in-memory SQLite database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        sqlite::open_in_memory()
    }

    fn with(writer: Link, readers: Vec<Link>) -> Self {
        Store {
            writer: Mutex::new(Writer {
                conn: writer,
                open: false,
                batch: 0,
                finished: 0,
                failed: None,
                members: 0,
            }),
            joined: Condvar::new(),
            batch_done: Condvar::new(),
            queued: AtomicUsize::new(0),
            commit_failed: AtomicBool::new(false),
            outbox: AtomicBool::new(true),
            readers: readers.into_iter().map(Mutex::new).collect(),
            next_reader: AtomicUsize::new(0),
            path: None,
            pg: None,
        }
    }

    /// Whether this store is on PostgreSQL (shared with other replicas).
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// Whether notifying audit events are also written to the webhook outbox (on by
    /// default). A server with no webhook turns it off: events nobody will deliver are
    /// not queued, and the audit trail is unchanged.
    pub fn set_outbox(&self, on: bool) {
        self.outbox.store(on, Ordering::Relaxed);
    }

    /// Runs `f` atomically and durably: its writes commit (with those of the writers
    /// batched with it) before this returns `Ok`; on `Err` none of them happen.
    ///
    /// A panic in `f` rolls back `f`'s own writes; if `f` was the leader's, the batch is
    /// still closed (by [`Batch`]'s drop) so no later writer waits for it, and the panic
    /// then continues to the caller.
    pub fn transact<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut w = self.lock_writer();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if w.open {
            return self.join(w, f);
        }
        w.conn.begin_write().inspect_err(|_| {
            self.commit_failed.store(true, Ordering::Relaxed);
            crate::metrics::store_begin_failed();
        })?;
        w.open = true;
        w.batch += 1;
        w.members = 1;
        let mut batch = Batch {
            store: self,
            id: w.batch,
            writer: Some(w),
            done: false,
        };
        let out = batch.run(f);
        // Let the writers queued behind this one join the batch, up to a bound.
        while self.queued.load(Ordering::SeqCst) > 0 && batch.writer().members < MAX_BATCH {
            let Some(w) = batch.writer.take() else { break };
            let (w, timeout) = self
                .joined
                .wait_timeout(w, Duration::from_millis(5))
                .unwrap_or_else(|p| p.into_inner());
            batch.writer = Some(w);
            if timeout.timed_out() {
                break;
            }
        }
        batch.commit()?;
        out
    }

    /// Whether the last batch committed (or nothing failed yet). Turns false when a commit
    /// fails or a writer panics with the batch open, and true again at the next commit;
    /// the server's health service reports it.
    pub fn can_commit(&self) -> bool {
        !self.commit_failed.load(Ordering::Relaxed)
    }

    /// Runs read-only `f` on a consistent snapshot of committed data.
    pub fn read<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        if self.readers.is_empty() {
            // In memory: one connection; wait for any open batch so no uncommitted row
            // is ever seen.
            let mut w = self.lock_writer();
            while w.open {
                w = self.batch_done.wait(w).unwrap_or_else(|p| p.into_inner());
            }
            let Link::Sqlite(conn) = &w.conn else {
                return Err(Error::Corrupt("an in-memory store is SQLite".into()).into());
            };
            let tx = conn.unchecked_transaction().map_err(Error::from)?;
            return f(&Tx {
                conn: Conn::Sqlite(&tx),
                outbox: false,
            });
        };
        let mut conn = self.lock_reader();
        crate::metrics::store_reader(true);
        let out = conn
            .begin_read()
            .map_err(E::from)
            .and_then(|()| f(&conn.tx(false)));
        // Read-only: ending the snapshot commits nothing.
        let ended = conn.end_read();
        crate::metrics::store_reader(false);
        let out = out?;
        ended?;
        Ok(out)
    }

    /// Runs raw SQL on the writer outside any batch (tests that tamper with rows).
    #[cfg(test)]
    fn raw_execute(&self, sql: &str) -> Result<usize> {
        let w = self.lock_writer();
        w.conn.tx(false).exec(sql, &[])
    }
}

/// A transaction: the only way to read or write rows.
#[allow(missing_debug_implementations)]
pub struct Tx<'c> {
    conn: Conn<'c>,
    /// Whether notifying events also go to the outbox.
    outbox: bool,
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("list {s:?}: {e}")))
}

fn to_i64(v: u64) -> i64 {
    // Both databases' integers are signed; u64 values round-trip through the same bits.
    v as i64
}

fn to_u64(v: i64) -> u64 {
    v as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::{Request, State};
    use crate::audit::Event;

    pub(super) fn req(id: &str, created: u64) -> Request {
        Request {
            id: id.into(),
            requester: "alice".into(),
            role: "db".into(),
            principals: vec!["postgres".into()],
            ttl_secs: 1800,
            reason: "INC-1".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: "SHA256:x".into(),
            state: State::Pending,
            created_at: created,
            expires_at: created + 3600,
            decided_at: None,
            approvals_required: 1,
            reviews: vec![],
            break_glass: false,
            break_glass_review: None,
            version: 0,
        }
    }

    /// SQLite's plan for `sql`, its steps joined with "; ".
    pub(super) fn plan(s: &Store, sql: &str) -> String {
        let w = s.lock_writer();
        let mut stmt = w
            .conn
            .sqlite()
            .unwrap()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let n = stmt.parameter_count();
        let nulls = std::iter::repeat_n(rusqlite::types::Null, n);
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    }

    #[test]
    fn read_only_database_refuses_writes_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db")).unwrap();
        s.raw_execute("PRAGMA query_only = 1").unwrap();
        let r: Result<(), Error> = s.transact(|tx| {
            tx.insert_request(&req("A", 1))?;
            tx.append_audit(&Event::new(
                1,
                "a",
                "request.created",
                Some("A"),
                serde_json::json!({}),
            ))
        });
        match r {
            Err(Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))) => {
                assert_eq!(f.code, rusqlite::ErrorCode::ReadOnly);
            }
            other => panic!("expected a read-only error, got {other:?}"),
        }
        s.raw_execute("PRAGMA query_only = 0").unwrap();
        assert!(s.read(|tx| tx.request("A")).unwrap().is_none());
        assert!(s.read(|tx| tx.audit_rows()).unwrap().is_empty());
    }

    #[test]
    fn failed_transaction_leaves_nothing() {
        let s = Store::open_in_memory().unwrap();
        let r: Result<(), Error> = s.transact(|tx| {
            tx.insert_request(&req("A", 10))?;
            tx.append_audit(&Event::new(
                10,
                "alice",
                "request.created",
                Some("A"),
                serde_json::json!({}),
            ))?;
            Err(Error::Corrupt("boom".into()))
        });
        assert!(r.is_err());
        assert!(s.read(|tx| tx.request("A")).unwrap().is_none());
        assert!(s.read(|tx| tx.audit_rows()).unwrap().is_empty());
    }
}
