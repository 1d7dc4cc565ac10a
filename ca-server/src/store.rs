//! All SQL: the SQLite schema, its migrations, and typed reads and writes.
//!
//! One writer connection with group commit and a few reader connections, WAL,
//! `synchronous=FULL`: a commit is on disk before anyone is told it happened. Writes that belong together (a request's new state, its
//! certificate and their audit events) go through one [`Store::transact`] call, an
//! immediate transaction that either commits whole or not at all. Nothing here decides
//! anything: policy and state rules live in `policy`, `approvals` and `authority`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use crate::approvals::{Request, Review, State, Verdict};
use crate::audit::{self, Event};
use crate::auth::Caller;

mod hosts;
mod sessions;

pub use hosts::{HostCertRecord, HostTokenRecord};
pub use sessions::{SessionRecord, SessionStanding, UserSource};

/// Store failures. Callers log these whole and tell clients "internal error".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds something this version cannot read.
    #[error("database holds an unreadable value: {0}")]
    Corrupt(String),
    /// The batch this write belonged to could not be committed; nothing of it is stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The database was made by a newer moshca.
    #[error("database schema version {0} is newer than this moshca-server understands")]
    TooNew(i64),
}

/// Store result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Disabled users cannot authenticate or be counted as approvers.
    pub disabled: bool,
    /// Creation time.
    pub created_at: u64,
}

/// A bearer token as the operator sees it: its public id, never its value or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (`tok_...`).
    pub id: String,
    /// The user it authenticates.
    pub user: String,
    /// When it was made.
    pub created_at: u64,
    /// When it stops working.
    pub expires_at: Option<u64>,
    /// When it last authenticated a call (to within a minute).
    pub last_used_at: Option<u64>,
    /// Whether the operator revoked it.
    pub revoked: bool,
}

/// What authentication learns from the hash of a presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStanding {
    /// The token, as listed.
    pub token: TokenRecord,
    /// Its user, with their groups.
    pub caller: Caller,
    /// Whether the user is disabled.
    pub user_disabled: bool,
}

/// An issued certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial, unique.
    pub serial: u64,
    /// The request it answers; one certificate per request.
    pub request_id: String,
    /// Key id.
    pub key_id: String,
    /// Principals.
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
    /// Subject key fingerprint.
    pub fingerprint: String,
    /// Signing CA key fingerprint.
    pub ca_fingerprint: String,
    /// The certificate line.
    pub openssh: String,
    /// When it was signed.
    pub issued_at: u64,
    /// Who asked for it.
    pub requester: String,
    /// Its role.
    pub role: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// A revoked certificate still inside its validity window, for the KRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Serial.
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// Fingerprint of the CA key that signed it.
    pub ca_fingerprint: String,
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only pending ones.
    pub pending_only: bool,
    /// Only break-glass requests not reviewed yet.
    pub unreviewed_only: bool,
    /// Only this requester's.
    pub requester: Option<String>,
    /// Only requests this caller may see: their own, or of these roles (None = all).
    pub visible_to: Option<(String, Vec<String>)>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// The database: one writer connection with group commit, a few reader connections.
///
/// Writers run their closure inside a savepoint of a shared transaction; the first of a
/// batch (the leader) lets the writers queued behind it join, then commits once and wakes
/// them all. Each caller returns only after the commit that holds its rows, so one fsync
/// covers many issuances and nothing is acknowledged before it is durable. A closure that
/// fails rolls back to its savepoint and leaves the others untouched. Reads use their own
/// connection and see only committed data (WAL snapshots).
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
    readers: Vec<Mutex<Connection>>,
    /// Which reader a read waits for when all are busy.
    next_reader: AtomicUsize,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// A batch transaction is open.
    open: bool,
    /// Id of the newest batch opened.
    batch: u64,
    /// Id of the newest batch finished (committed or failed).
    finished: u64,
    /// The newest batch whose COMMIT failed, with the error.
    failed: Option<(u64, String)>,
    /// Writers in the open batch so far.
    members: usize,
}

/// Statements each connection keeps prepared: every distinct statement the server runs
/// fits, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

/// Reader connections: a long read (a KRL over 100,000 revocations, an audit export)
/// holds one, and authentication and the rest read through the others.
const READERS: usize = 3;

/// Most writers one batch takes before it commits.
const MAX_BATCH: usize = 512;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    groups TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    role TEXT NOT NULL,
    principals TEXT NOT NULL,
    ttl_secs INTEGER NOT NULL,
    reason TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    decided_at INTEGER,
    approvals_required INTEGER NOT NULL
) STRICT;
CREATE INDEX requests_by_state ON requests(state, expires_at);
CREATE INDEX requests_by_requester ON requests(requester, state);
CREATE TABLE reviews (
    request_id TEXT NOT NULL REFERENCES requests(id),
    position INTEGER NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    ttl_secs INTEGER,
    comment TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (request_id, position)
) STRICT;
CREATE TABLE certificates (
    serial INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE REFERENCES requests(id),
    key_id TEXT NOT NULL,
    principals TEXT NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    openssh TEXT NOT NULL,
    issued_at INTEGER NOT NULL
) STRICT;
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;
"#,
    r#"
ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
ALTER TABLE certificates ADD COLUMN requester TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN role TEXT NOT NULL DEFAULT '';
UPDATE certificates SET
    requester = (SELECT requester FROM requests WHERE requests.id = certificates.request_id),
    role = (SELECT role FROM requests WHERE requests.id = certificates.request_id);
CREATE INDEX certificates_by_requester ON certificates(requester, valid_before);
CREATE INDEX certificates_by_fingerprint ON certificates(fingerprint);
CREATE INDEX certificates_revoked ON certificates(valid_before) WHERE revoked_at IS NOT NULL;
CREATE TABLE revoked_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
) STRICT;
CREATE TABLE krl_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO krl_state (id, version) VALUES (1, 0);
"#,
    r#"
CREATE TABLE ca_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
) STRICT;
CREATE INDEX certificates_by_ca ON certificates(ca_fingerprint, valid_before);
"#,
    r#"
CREATE TABLE seen_jti (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
) STRICT;
"#,
    r#"
CREATE TABLE outbox (
    audit_seq INTEGER PRIMARY KEY REFERENCES audit(seq),
    action TEXT NOT NULL,
    request_id TEXT,
    created_at INTEGER NOT NULL,
    fanned_out INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX outbox_waiting ON outbox(fanned_out) WHERE fanned_out = 0;
CREATE TABLE deliveries (
    audit_seq INTEGER NOT NULL REFERENCES outbox(audit_seq),
    webhook TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    PRIMARY KEY (audit_seq, webhook)
) STRICT;
CREATE INDEX deliveries_due ON deliveries(state, next_at);
"#,
    r#"
ALTER TABLE requests ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN glass_reviewer TEXT;
ALTER TABLE requests ADD COLUMN glass_comment TEXT;
ALTER TABLE requests ADD COLUMN glass_reviewed_at INTEGER;
CREATE INDEX requests_unreviewed ON requests(break_glass) WHERE break_glass = 1 AND glass_reviewed_at IS NULL;
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    signature TEXT NOT NULL,
    at INTEGER NOT NULL
) STRICT;
"#,
    // Pending requests are the only ones looked up by state or requester: index just
    // those (a request issued at once never enters these indexes), and list newest first
    // from an index instead of sorting the whole table.
    r#"
DROP INDEX requests_by_state;
DROP INDEX requests_by_requester;
CREATE INDEX requests_pending ON requests(expires_at) WHERE state = 'pending';
CREATE INDEX requests_pending_by_requester ON requests(requester) WHERE state = 'pending';
CREATE INDEX requests_by_created ON requests(created_at, id);
"#,
    // Live certificates are found by expiry: an index on `valid_before` grows at its end
    // (certificates are short-lived), while one on the subject key's fingerprint took a
    // random page per issuance, written in full to the WAL at every commit. Revoking by
    // user or by key reads the live certificates, a bounded set.
    r#"
DROP INDEX certificates_by_requester;
DROP INDEX certificates_by_fingerprint;
CREATE INDEX certificates_live ON certificates(valid_before);
"#,
    // Keys revoked per user: the self-service bound on revocations by key counts a
    // user's recent rows.
    r#"
CREATE INDEX revoked_keys_by_revoker ON revoked_keys(revoked_by, revoked_at);
"#,
    // Audit reads filtered and bounded in SQL: the first event at or after a time, the
    // events of one request, of one actor, and about one user (`details.user`), so listing
    // never reads the whole trail. The user expression skips details that are not JSON (a
    // tampered row must stay readable for `audit verify` to name it).
    r#"
CREATE INDEX audit_by_at ON audit(at);
CREATE INDEX audit_by_request ON audit(request_id);
CREATE INDEX audit_by_actor ON audit(actor, action);
CREATE INDEX audit_by_user ON audit((CASE WHEN json_valid(details) THEN details ->> '$.user' END));
"#,
    // Bearer tokens get a public id (to list and revoke one), the time they were last used,
    // and an expiry: tokens made before this expire 90 days after the upgrade.
    r#"
ALTER TABLE tokens ADD COLUMN id TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
UPDATE tokens SET id = 'tok_' || lower(hex(randomblob(8))) WHERE id IS NULL;
UPDATE tokens SET expires_at = unixepoch() + 7776000 WHERE expires_at IS NULL;
CREATE UNIQUE INDEX tokens_by_id ON tokens(id);
CREATE INDEX tokens_by_user ON tokens(user);
"#,
    // Host certificates: single-use join tokens (only their SHA-256 kept), the host
    // certificates issued (with the host CA key that signed each, for the KRL), and the
    // outstanding renewal challenges (a few per host key, a minute each).
    r#"
CREATE TABLE host_join_tokens (
    hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    principals TEXT NOT NULL,
    cert_ttl INTEGER,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_serial INTEGER
) STRICT;
CREATE TABLE host_certificates (
    serial INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_id TEXT NOT NULL,
    principals TEXT NOT NULL,
    ttl_secs INTEGER NOT NULL,
    valid_after INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    ca_key TEXT NOT NULL,
    openssh TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    token_id TEXT NOT NULL,
    renewed_from INTEGER,
    revoked_at INTEGER
) STRICT;
CREATE INDEX host_certificates_by_key ON host_certificates(fingerprint);
CREATE INDEX host_certificates_live ON host_certificates(valid_before);
CREATE TABLE host_challenges (
    nonce TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    serial INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX host_challenges_by_key ON host_challenges(fingerprint, expires_at);
CREATE INDEX host_challenges_by_expiry ON host_challenges(expires_at);
"#,
    // SSO sign-ins: CA sessions (only the credential's SHA-256 kept, with the IdP's groups
    // as of the sign-in), the ID tokens already traded for one (until their exp), and
    // which users may sign in through SSO.
    r#"
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL REFERENCES users(name),
    groups TEXT NOT NULL,
    issuer TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
) STRICT;
CREATE INDEX sessions_by_user ON sessions(user, created_at);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
CREATE TABLE consumed_id_tokens (
    hash TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX consumed_id_tokens_by_expiry ON consumed_id_tokens(expires_at);
ALTER TABLE users ADD COLUMN sso INTEGER NOT NULL DEFAULT 0;
"#,
];

/// Audit actions that also go to the notification outbox, in the same transaction.
pub const NOTIFY_ACTIONS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.cancelled",
    "request.expired",
    "request.break_glass",
    "request.reviewed",
    "certificate.issued",
    "certificate.revoked",
];

/// Which audit events to list ([`Tx::audit_page`]).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Events at or after this time (Unix seconds).
    pub since: u64,
    /// Events by this user, about their requests, or naming them in `details.user`.
    pub user: Option<String>,
    /// Events of this request.
    pub request_id: Option<String>,
    /// The newest this many.
    pub limit: u32,
}

/// The user expression `audit_by_user` indexes; queries must spell it exactly so.
const AUDIT_USER: &str = "(CASE WHEN json_valid(details) THEN details ->> '$.user' END)";

/// The columns of an audit row, in the order [`audit_row_from`] reads them.
const AUDIT_COLUMNS: &str = "seq, at, actor, action, request_id, details, prev_hash, hash";

/// The seq of the first event at or after time `?1`, from `audit_by_at`; past the end when
/// there is none. Reads start there instead of filtering the whole trail by time: event
/// times grow with seq (each is stamped from the clock as it commits), so only events
/// written right after the clock was stepped back could be missed.
const AUDIT_START: &str = "COALESCE((SELECT seq FROM audit WHERE at >= ?1 ORDER BY at, seq LIMIT 1), 9223372036854775807)";

/// A notification waiting to be delivered to one webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The audit event it announces.
    pub event: audit::Row,
    /// Webhook name.
    pub webhook: String,
    /// Tries so far.
    pub attempts: u32,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        let mut store = Self::setup(conn)?;
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.busy_timeout(Duration::from_secs(5))?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            reader.pragma_update(None, "query_only", true)?;
            store.readers.push(Mutex::new(reader));
        }
        store.path = Some(path.to_owned());
        Ok(store)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each writer's savepoint keeps its undo pages in a sub-journal; in memory, not in
        // a temp file written and thrown away at every batch.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::TooNew(version));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.commit()?;
        Ok(Store {
            writer: Mutex::new(Writer {
                conn,
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
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            path: None,
        })
    }

    /// Whether notifying audit events are also written to the webhook outbox (on by
    /// default). A server with no webhook turns it off: events nobody will deliver are
    /// not queued, and the audit trail is unchanged.
    pub fn set_outbox(&self, on: bool) {
        self.outbox.store(on, Ordering::Relaxed);
    }

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
            w.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            // Between checkpoints the WAL grows by what a second of issuance writes; keep
            // the file from staying at its high-water mark after a burst.
            w.conn
                .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
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
            self.lock_writer()
                .conn
                .pragma_update(None, "wal_autocheckpoint", 1000)?;
            tracing::warn!(error = %e, "no WAL checkpoint thread; the writer checkpoints");
        }
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // A poisoned lock means a panic inside a closure; its savepoint guard rolled it
        // back while unwinding, so the connection is still consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
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
        run(&w.conn, "BEGIN IMMEDIATE").map_err(|e| {
            self.commit_failed.store(true, Ordering::Relaxed);
            Error::from(e)
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
        batch.commit().map_err(Error::from)?;
        out
    }

    /// Runs `f` as a member of the open batch and waits for its leader's commit.
    fn join<T, E>(
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

    /// Whether the last batch committed (or nothing failed yet). Turns false when a commit
    /// fails or a writer panics with the batch open, and true again at the next commit;
    /// the server's health service reports it.
    pub fn can_commit(&self) -> bool {
        !self.commit_failed.load(Ordering::Relaxed)
    }

    /// A free reader connection, or (all busy) the next one in turn.
    fn lock_reader(&self) -> MutexGuard<'_, Connection> {
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
            let tx = w.conn.unchecked_transaction().map_err(Error::from)?;
            return f(&Tx {
                tx: &tx,
                outbox: false,
            });
        };
        let conn = self.lock_reader();
        if !conn.is_autocommit() {
            // A read that panicked left its snapshot open.
            run(&conn, "ROLLBACK").map_err(Error::from)?;
        }
        run(&conn, "BEGIN").map_err(Error::from)?;
        let out = f(&Tx {
            tx: &conn,
            outbox: false,
        });
        // Read-only: ending the snapshot commits nothing.
        run(&conn, "COMMIT").map_err(Error::from)?;
        out
    }

    /// Runs raw SQL on the writer outside any batch (tests that tamper with rows).
    #[cfg(test)]
    fn raw_execute(&self, sql: &str) -> Result<usize> {
        Ok(self.lock_writer().conn.execute(sql, [])?)
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

/// Runs a transaction-control statement through the statement cache.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `f` in a savepoint of the open transaction: released on `Ok`, rolled back on
/// `Err` or panic.
fn in_savepoint<T, E>(
    conn: &Connection,
    outbox: bool,
    f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<Error>,
{
    let sp = Savepoint::begin(conn).map_err(|e| E::from(Error::from(e)))?;
    let v = f(&Tx { tx: conn, outbox })?;
    sp.release().map_err(|e| E::from(Error::from(e)))?;
    Ok(v)
}

/// The leader's hold on an open batch: it owns the writer lock, and whatever way the
/// leader leaves (commit, error, panic) the batch ends: committed by [`Batch::commit`],
/// or rolled back by `drop`, with every member told.
struct Batch<'s> {
    store: &'s Store,
    id: u64,
    /// `None` only while waiting for joiners (the condvar holds the lock then).
    writer: Option<MutexGuard<'s, Writer>>,
    /// Committed or rolled back.
    done: bool,
}

impl<'s> Batch<'s> {
    fn writer(&mut self) -> &mut Writer {
        if self.writer.is_none() {
            self.writer = Some(self.store.lock_writer());
        }
        match self.writer.as_mut() {
            Some(w) => w,
            None => unreachable!("the writer lock was just taken"),
        }
    }

    /// Runs the leader's own closure.
    fn run<T, E>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<Error>,
    {
        let outbox = self.store.outbox.load(Ordering::Relaxed);
        in_savepoint(&self.writer().conn, outbox, f)
    }

    /// Commits the batch (rolling back if COMMIT fails) and wakes its members.
    fn commit(mut self) -> rusqlite::Result<()> {
        let committed = run(&self.writer().conn, "COMMIT");
        self.finish(committed.as_ref().err().map(ToString::to_string));
        committed
    }

    /// Ends the batch: rolled back unless it committed, members woken, health updated.
    fn finish(&mut self, failure: Option<String>) {
        let id = self.id;
        let w = self.writer();
        if failure.is_some() {
            let _ = run(&w.conn, "ROLLBACK");
        }
        let failed = failure.is_some();
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
    conn: &'c Connection,
    done: bool,
}

impl<'c> Savepoint<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        run(conn, "SAVEPOINT op")?;
        Ok(Savepoint { conn, done: false })
    }

    fn release(mut self) -> rusqlite::Result<()> {
        run(self.conn, "RELEASE op")?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = run(self.conn, "ROLLBACK TO op").and_then(|()| run(self.conn, "RELEASE op"));
        }
    }
}

/// A transaction: the only way to read or write rows.
#[allow(missing_debug_implementations)]
pub struct Tx<'c> {
    tx: &'c Connection,
    /// Whether notifying events also go to the outbox.
    outbox: bool,
}

/// A [`TokenRecord`] from the first six columns of a row.
fn token_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        created_at: to_u64(r.get(2)?),
        expires_at: r.get::<_, Option<i64>>(3)?.map(to_u64),
        last_used_at: r.get::<_, Option<i64>>(4)?.map(to_u64),
        revoked: r.get::<_, i64>(5)? != 0,
    })
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("list {s:?}: {e}")))
}

fn to_i64(v: u64) -> i64 {
    // SQLite integers are signed; u64 values round-trip through the same bits.
    v as i64
}

fn to_u64(v: i64) -> u64 {
    v as u64
}

/// The listing filter on all requests: newest first, read backwards from
/// `requests_by_created` until the page is full.
const LIST_ALL: &str = "WHERE (?1 = 0 OR state = 'pending') AND (?2 IS NULL OR requester = ?2)
       AND (?3 = 0 OR (break_glass = 1 AND glass_reviewed_at IS NULL))
       AND (?4 IS NULL OR requester = ?4 OR role IN (SELECT value FROM json_each(?5)))
     ORDER BY created_at DESC, id DESC
     LIMIT ?6";

/// The same for pending requests only: read just those from their partial index (left
/// to itself, SQLite would rather walk every request newest first than sort a few).
const LIST_PENDING: &str = "INDEXED BY requests_pending WHERE state = 'pending' AND ?1 = 1 AND (?2 IS NULL OR requester = ?2)
       AND (?3 = 0 OR (break_glass = 1 AND glass_reviewed_at IS NULL))
       AND (?4 IS NULL OR requester = ?4 OR role IN (SELECT value FROM json_each(?5)))
     ORDER BY created_at DESC, id DESC
     LIMIT ?6";

impl Tx<'_> {
    /// Runs a statement through the connection's statement cache: hot statements are
    /// parsed once per connection, not once per call.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.tx.prepare_cached(sql)?.execute(params)
    }

    /// The one row a cached query returns.
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.tx.prepare_cached(sql)?.query_row(params, f)
    }

    // --- users and tokens ---

    /// Adds a user; `false` if the name is taken.
    pub fn insert_user(&self, name: &str, groups: &[String], now: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT OR IGNORE INTO users (name, groups, created_at) VALUES (?1, ?2, ?3)",
            params![name, json_list(groups), to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.row(
            "SELECT name, groups, disabled, created_at FROM users WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?
        .map(|(name, groups, disabled, created)| {
            Ok(User {
                name,
                groups: parse_list(&groups)?,
                disabled: disabled != 0,
                created_at: to_u64(created),
            })
        })
        .transpose()
    }

    /// All users, by name.
    pub fn users(&self) -> Result<Vec<User>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT name FROM users ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names
            .iter()
            .filter_map(|n| self.user(n).transpose())
            .collect()
    }

    /// Enables or disables a user; `false` if there is no such user.
    pub fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<bool> {
        let n = self.exec(
            "UPDATE users SET disabled = ?2 WHERE name = ?1",
            params![name, i64::from(disabled)],
        )?;
        Ok(n == 1)
    }

    /// Stores a token hash for a user, with a fresh id and the default lifetime.
    pub fn insert_token(&self, hash: &str, user: &str, now: u64) -> Result<()> {
        self.insert_token_with_id(
            &crate::auth::new_token_id(),
            hash,
            user,
            now,
            now + crate::auth::DEFAULT_TOKEN_LIFETIME_SECS,
        )
    }

    /// Stores a token with its public id and expiry.
    pub fn insert_token_with_id(
        &self,
        id: &str,
        hash: &str,
        user: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO tokens (hash, user, created_at, id, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![hash, user, to_i64(now), id, to_i64(expires_at)])?;
        Ok(())
    }

    /// A token and its user by the token's hash, whatever its state, so authentication
    /// can say why it refuses one. One indexed read.
    pub fn token_standing(&self, hash: &str) -> Result<Option<TokenStanding>> {
        let row = self
            .row(
                "SELECT t.id, t.user, t.created_at, t.expires_at, t.last_used_at, t.revoked,
                        u.groups, u.disabled
                 FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?1",
                [hash],
                |r| {
                    Ok((
                        token_record(r)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, i64>(7)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(token, groups, disabled)| {
            Ok(TokenStanding {
                caller: Caller {
                    name: token.user.clone(),
                    groups: parse_list(&groups)?,
                    proof: crate::auth::Proof::Token {
                        hash: hash.to_owned(),
                    },
                },
                token,
                user_disabled: disabled != 0,
            })
        })
        .transpose()
    }

    /// A user's tokens, oldest first.
    pub fn tokens_of(&self, user: &str) -> Result<Vec<TokenRecord>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, user, created_at, expires_at, last_used_at, revoked FROM tokens
             WHERE user = ?1 ORDER BY created_at, id",
        )?;
        let rows = stmt
            .query_map([user], token_record)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A token by its public id.
    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        Ok(self
            .row(
                "SELECT id, user, created_at, expires_at, last_used_at, revoked FROM tokens
                 WHERE id = ?1",
                [id],
                token_record,
            )
            .optional()?)
    }

    /// Revokes a token by id; `false` if there is none or it was already revoked.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = self.exec(
            "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
            [id],
        )?;
        Ok(n == 1)
    }

    /// Records that a token was used at `now`, unless a use within `granularity` seconds
    /// is already recorded.
    pub fn touch_token(&self, id: &str, now: u64, granularity: u64) -> Result<()> {
        self.exec(
            "UPDATE tokens SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?2 - ?3)",
            params![id, to_i64(now), to_i64(granularity)],
        )?;
        Ok(())
    }

    /// The enabled user a valid, unrevoked, unexpired token belongs to.
    pub fn caller_by_token(&self, hash: &str, now: u64) -> Result<Option<Caller>> {
        let row: Option<(String, String)> = self
            .row(
                "SELECT u.name, u.groups FROM tokens t JOIN users u ON u.name = t.user
                 WHERE t.hash = ?1 AND t.revoked = 0 AND u.disabled = 0
                   AND (t.expires_at IS NULL OR t.expires_at > ?2)",
                params![hash, to_i64(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(name, groups)| {
            Ok(Caller {
                name,
                groups: parse_list(&groups)?,
                proof: crate::auth::Proof::Token {
                    hash: hash.to_owned(),
                },
            })
        })
        .transpose()
    }

    // --- requests ---

    /// Stores a new request.
    pub fn insert_request(&self, r: &Request) -> Result<()> {
        self.tx.prepare_cached(
            "INSERT INTO requests (id, requester, role, principals, ttl_secs, reason, public_key,
                 fingerprint, state, created_at, expires_at, decided_at, approvals_required,
                 break_glass)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(
            params![
                r.id,
                r.requester,
                r.role,
                json_list(&r.principals),
                to_i64(r.ttl_secs),
                r.reason,
                r.public_key,
                r.fingerprint,
                r.state.as_str(),
                to_i64(r.created_at),
                to_i64(r.expires_at),
                r.decided_at.map(to_i64),
                r.approvals_required,
                i64::from(r.break_glass),
            ],
        )?;
        self.write_reviews(r)
    }

    /// Writes a request's state, ttl and reviews.
    pub fn update_request(&self, r: &Request) -> Result<()> {
        self.tx.prepare_cached(
            "UPDATE requests SET state = ?2, ttl_secs = ?3, decided_at = ?4, glass_reviewer = ?5,
                 glass_comment = ?6, glass_reviewed_at = ?7 WHERE id = ?1",
        )?
        .execute(
            params![
                r.id,
                r.state.as_str(),
                to_i64(r.ttl_secs),
                r.decided_at.map(to_i64),
                r.break_glass_review.as_ref().map(|g| g.approver.clone()),
                r.break_glass_review.as_ref().map(|g| g.comment.clone()),
                r.break_glass_review.as_ref().map(|g| to_i64(g.at)),
            ],
        )?;
        self.write_reviews(r)
    }

    fn write_reviews(&self, r: &Request) -> Result<()> {
        self.exec("DELETE FROM reviews WHERE request_id = ?1", [&r.id])?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO reviews (request_id, position, approver, verdict, ttl_secs, comment, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (i, rev) in r.reviews.iter().enumerate() {
            stmt.execute(params![
                r.id,
                i as i64,
                rev.approver,
                rev.verdict.as_str(),
                rev.ttl_secs.map(to_i64),
                rev.comment,
                to_i64(rev.at)
            ])?;
        }
        Ok(())
    }

    /// A request with its reviews.
    pub fn request(&self, id: &str) -> Result<Option<Request>> {
        let mut found = self.query_requests("WHERE id = ?1", params![id])?;
        Ok(found.pop())
    }

    /// Requests matching the filter, newest first.
    pub fn requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        let (viewer, roles) = match &f.visible_to {
            Some((user, roles)) => (Some(user.as_str()), Some(json_list(roles))),
            None => (None, None),
        };
        // Filtered and limited in SQL, so a long history is never loaded to list a page.
        let clause = if f.pending_only {
            LIST_PENDING
        } else {
            LIST_ALL
        };
        self.query_requests(
            clause,
            params![
                i64::from(f.pending_only),
                f.requester,
                i64::from(f.unreviewed_only),
                viewer,
                roles,
                i64::from(f.limit),
            ],
        )
    }

    /// Pending requests whose time is up at `now`.
    pub fn expired_pending(&self, now: u64) -> Result<Vec<Request>> {
        self.query_requests(
            "WHERE state = 'pending' AND expires_at <= ?1",
            params![to_i64(now)],
        )
    }

    /// How many requests are pending overall.
    pub fn pending_total(&self) -> Result<u64> {
        let n: i64 = self.row(
            "SELECT COUNT(*) FROM requests WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    /// How many requests of `requester` are pending.
    pub fn pending_count(&self, requester: &str) -> Result<u64> {
        let n: i64 = self.row(
            "SELECT COUNT(*) FROM requests WHERE requester = ?1 AND state = 'pending'",
            [requester],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    fn query_requests(&self, clause: &str, args: impl rusqlite::Params) -> Result<Vec<Request>> {
        let sql = format!(
            "SELECT id, requester, role, principals, ttl_secs, reason, public_key, fingerprint,
                    state, created_at, expires_at, decided_at, approvals_required,
                    break_glass, glass_reviewer, glass_comment, glass_reviewed_at
             FROM requests {clause}"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, u32>(12)?,
                    (
                        r.get::<_, i64>(13)?,
                        r.get::<_, Option<String>>(14)?,
                        r.get::<_, Option<String>>(15)?,
                        r.get::<_, Option<i64>>(16)?,
                    ),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|row| {
                let state = State::parse(&row.8)
                    .ok_or_else(|| Error::Corrupt(format!("request state {:?}", row.8)))?;
                Ok(Request {
                    reviews: self.reviews(&row.0)?,
                    id: row.0,
                    requester: row.1,
                    role: row.2,
                    principals: parse_list(&row.3)?,
                    ttl_secs: to_u64(row.4),
                    reason: row.5,
                    public_key: row.6,
                    fingerprint: row.7,
                    state,
                    created_at: to_u64(row.9),
                    expires_at: to_u64(row.10),
                    decided_at: row.11.map(to_u64),
                    approvals_required: row.12,
                    break_glass: row.13.0 != 0,
                    break_glass_review: match (row.13.1, row.13.3) {
                        (Some(approver), Some(at)) => Some(Review {
                            approver,
                            verdict: Verdict::Approve,
                            ttl_secs: None,
                            comment: row.13.2.unwrap_or_default(),
                            at: to_u64(at),
                        }),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    fn reviews(&self, request_id: &str) -> Result<Vec<Review>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT approver, verdict, ttl_secs, comment, at FROM reviews
             WHERE request_id = ?1 ORDER BY position",
        )?;
        let rows = stmt
            .query_map([request_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(approver, verdict, ttl, comment, at)| {
                Ok(Review {
                    verdict: Verdict::parse(&verdict)
                        .ok_or_else(|| Error::Corrupt(format!("verdict {verdict:?}")))?,
                    approver,
                    ttl_secs: ttl.map(to_u64),
                    comment,
                    at: to_u64(at),
                })
            })
            .collect()
    }

    // --- certificates ---

    /// Whether a serial is already used.
    pub fn serial_exists(&self, serial: u64) -> Result<bool> {
        Ok(self
            .row(
                "SELECT 1 FROM certificates WHERE serial = ?1",
                [to_i64(serial)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Stores an issued certificate.
    pub fn insert_certificate(&self, c: &CertRecord) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO certificates (serial, request_id, key_id, principals, valid_after,
                 valid_before, fingerprint, ca_fingerprint, openssh, issued_at, requester, role,
                 revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![
                to_i64(c.serial),
                c.request_id,
                c.key_id,
                json_list(&c.principals),
                to_i64(c.valid_after),
                to_i64(c.valid_before),
                c.fingerprint,
                c.ca_fingerprint,
                c.openssh,
                to_i64(c.issued_at),
                c.requester,
                c.role,
                c.revoked_at.map(to_i64)
            ])?;
        Ok(())
    }

    /// The certificate issued for a request.
    pub fn certificate_for_request(&self, request_id: &str) -> Result<Option<CertRecord>> {
        Ok(self
            .query_certificates("WHERE request_id = ?1", params![request_id])?
            .pop())
    }

    /// The certificate with this serial.
    pub fn certificate_by_serial(&self, serial: u64) -> Result<Option<CertRecord>> {
        Ok(self
            .query_certificates("WHERE serial = ?1", params![to_i64(serial)])?
            .pop())
    }

    /// Unrevoked certificates of a requester still valid at `now`.
    pub fn live_certificates_of(&self, requester: &str, now: u64) -> Result<Vec<CertRecord>> {
        self.query_certificates(
            "WHERE requester = ?1 AND valid_before > ?2 AND revoked_at IS NULL",
            params![requester, to_i64(now)],
        )
    }

    /// Unrevoked certificates for a subject key still valid at `now`.
    pub fn live_certificates_for_key(
        &self,
        fingerprint: &str,
        now: u64,
    ) -> Result<Vec<CertRecord>> {
        self.query_certificates(
            "WHERE fingerprint = ?1 AND valid_before > ?2 AND revoked_at IS NULL",
            params![fingerprint, to_i64(now)],
        )
    }

    /// Marks a certificate revoked; `false` if it was already.
    pub fn revoke_certificate(&self, serial: u64, now: u64) -> Result<bool> {
        let n = self.exec(
            "UPDATE certificates SET revoked_at = ?2 WHERE serial = ?1 AND revoked_at IS NULL",
            params![to_i64(serial), to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Revoked certificates that have not expired at `now`, by serial.
    pub fn revoked_live_certificates(&self, now: u64) -> Result<Vec<RevokedCert>> {
        let mut stmt = self.tx.prepare_cached(
            // No ORDER BY: it would turn the partial-index lookup into a full table scan;
            // the KRL encoder sorts.
            "SELECT serial, key_id, ca_fingerprint FROM certificates
             WHERE revoked_at IS NOT NULL AND valid_before > ?1",
        )?;
        let rows = stmt
            .query_map([to_i64(now)], |r| {
                Ok(RevokedCert {
                    serial: to_u64(r.get(0)?),
                    key_id: r.get(1)?,
                    ca_fingerprint: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records a revoked subject key; `false` if it already was.
    pub fn insert_revoked_key(
        &self,
        fingerprint: &str,
        public_key: &str,
        reason: &str,
        by: &str,
        now: u64,
    ) -> Result<bool> {
        let n = self.exec(
            "INSERT OR IGNORE INTO revoked_keys (fingerprint, public_key, reason, revoked_by, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![fingerprint, public_key, reason, by, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Whether a subject key is revoked.
    pub fn key_revoked(&self, fingerprint: &str) -> Result<bool> {
        Ok(self
            .row(
                "SELECT 1 FROM revoked_keys WHERE fingerprint = ?1",
                [fingerprint],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Every revoked subject key, OpenSSH text.
    pub fn revoked_keys(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT public_key FROM revoked_keys ORDER BY fingerprint")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// How many keys `by` revoked at or after `since` (and are still listed).
    pub fn keys_revoked_by_since(&self, by: &str, since: u64) -> Result<u64> {
        let n: i64 = self.row(
            "SELECT COUNT(*) FROM revoked_keys WHERE revoked_by = ?1 AND revoked_at >= ?2",
            params![by, to_i64(since)],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    /// Every revoked subject key as (fingerprint, OpenSSH text), by fingerprint.
    pub fn revoked_key_entries(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT fingerprint, public_key FROM revoked_keys ORDER BY fingerprint",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<(String, String)>, _>>()?;
        Ok(rows)
    }

    /// The KRL version now.
    pub fn krl_version(&self) -> Result<u64> {
        let v: i64 = self.row("SELECT version FROM krl_state WHERE id = 1", [], |r| {
            r.get(0)
        })?;
        Ok(to_u64(v))
    }

    /// Increments the KRL version and returns the new one.
    pub fn bump_krl_version(&self) -> Result<u64> {
        self.exec(
            "UPDATE krl_state SET version = version + 1 WHERE id = 1",
            [],
        )?;
        self.krl_version()
    }

    fn query_certificates(
        &self,
        clause: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<CertRecord>> {
        let sql = format!(
            "SELECT serial, request_id, key_id, principals, valid_after, valid_before,
                    fingerprint, ca_fingerprint, openssh, issued_at, requester, role, revoked_at
             FROM certificates {clause}"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    (
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                    ),
                    (
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, String>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, Option<i64>>(12)?,
                    ),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(a, b)| {
                Ok(CertRecord {
                    serial: to_u64(a.0),
                    request_id: a.1,
                    key_id: a.2,
                    principals: parse_list(&a.3)?,
                    valid_after: to_u64(a.4),
                    valid_before: to_u64(a.5),
                    fingerprint: a.6,
                    ca_fingerprint: b.0,
                    openssh: b.1,
                    issued_at: to_u64(b.2),
                    requester: b.3,
                    role: b.4,
                    revoked_at: b.5.map(to_u64),
                })
            })
            .collect()
    }

    // --- workload token replay ---

    /// Records a token id as used; `false` if it was used before.
    pub fn insert_jti(&self, issuer: &str, jti: &str, expires_at: u64) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO seen_jti (issuer, jti, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![issuer, jti, to_i64(expires_at)])?;
        Ok(n == 1)
    }

    /// Forgets token ids whose tokens have expired (with leeway) by `now`.
    pub fn purge_jti(&self, now: u64, leeway: u64) -> Result<usize> {
        Ok(self.exec(
            "DELETE FROM seen_jti WHERE expires_at + ?2 < ?1",
            params![to_i64(now), to_i64(leeway)],
        )?)
    }

    // --- CA keys ---

    /// Registers a CA public key as trusted; `false` if it already was registered.
    pub fn insert_ca_key(&self, fingerprint: &str, public_key: &str, now: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT OR IGNORE INTO ca_keys (fingerprint, public_key, created_at) VALUES (?1, ?2, ?3)",
            params![fingerprint, public_key, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Whether a key with this fingerprint is, or was, one of the CA's keys.
    pub fn is_ca_key(&self, fingerprint: &str) -> Result<bool> {
        Ok(self
            .row(
                "SELECT 1 FROM ca_keys WHERE fingerprint = ?1",
                [fingerprint],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Marks every CA key except `keep` retired: it stays trusted only while certificates it
    /// signed are unexpired.
    pub fn retire_ca_keys_except(&self, keep: &str, now: u64) -> Result<()> {
        self.exec(
            "UPDATE ca_keys SET retired_at = ?2 WHERE fingerprint != ?1 AND retired_at IS NULL",
            params![keep, to_i64(now)],
        )?;
        Ok(())
    }

    /// CA public keys hosts must trust at `now`: keys not retired, `active`, and retired
    /// keys with certificates still valid. Newest first.
    pub fn trusted_ca_keys(&self, active: &str, now: u64) -> Result<Vec<String>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT public_key FROM ca_keys k
             WHERE k.retired_at IS NULL OR k.fingerprint = ?1
                OR EXISTS (SELECT 1 FROM certificates c
                           WHERE c.ca_fingerprint = k.fingerprint AND c.valid_before > ?2)
             ORDER BY (k.fingerprint = ?1) DESC, k.created_at DESC, k.fingerprint",
        )?;
        let rows = stmt
            .query_map(params![active, to_i64(now)], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    // --- audit ---

    /// Appends an event to the hash chain.
    pub fn append_audit(&self, event: &Event) -> Result<()> {
        let (seq, prev): (i64, String) = self
            .tx
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, audit::GENESIS.to_owned()));
        let hash = event.chain_hash(&prev);
        self.tx
            .prepare_cached(
                "INSERT INTO audit (seq, at, actor, action, request_id, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                seq + 1,
                to_i64(event.at),
                event.actor,
                event.action,
                event.request_id,
                event.details.to_string(),
                prev,
                hash
            ])?;
        if self.outbox && NOTIFY_ACTIONS.contains(&event.action.as_str()) {
            self.tx.prepare_cached(
                "INSERT INTO outbox (audit_seq, action, request_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(
                params![seq + 1, event.action, event.request_id, to_i64(event.at)],
            )?;
        }
        Ok(())
    }

    // --- notification outbox ---

    /// Outbox events not yet fanned out to webhooks, oldest first.
    pub fn outbox_waiting(&self, limit: u32) -> Result<Vec<audit::Row>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT audit_seq FROM outbox WHERE fanned_out = 0 ORDER BY audit_seq LIMIT ?1",
        )?;
        let seqs = stmt
            .query_map([limit], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        seqs.into_iter()
            .filter_map(|seq| self.audit_row(to_u64(seq)).transpose())
            .collect()
    }

    /// Creates one delivery per webhook for an outbox event and marks it fanned out.
    pub fn fan_out(&self, audit_seq: u64, webhooks: &[String], now: u64) -> Result<()> {
        for w in webhooks {
            self.exec(
                "INSERT OR IGNORE INTO deliveries (audit_seq, webhook, next_at) VALUES (?1, ?2, ?3)",
                params![to_i64(audit_seq), w, to_i64(now)],
            )?;
        }
        self.exec(
            "UPDATE outbox SET fanned_out = 1 WHERE audit_seq = ?1",
            [to_i64(audit_seq)],
        )?;
        Ok(())
    }

    /// Deliveries due at `now`, oldest first.
    pub fn deliveries_due(&self, now: u64, limit: u32) -> Result<Vec<Delivery>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT audit_seq, webhook, attempts FROM deliveries
             WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, audit_seq LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![to_i64(now), limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .filter_map(|(seq, webhook, attempts)| {
                self.audit_row(to_u64(seq))
                    .map(|row| {
                        row.map(|event| Delivery {
                            event,
                            webhook,
                            attempts,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Deliveries to one webhook due at `now`, oldest first. Each webhook is served on its
    /// own, so a slow or unreachable one never holds up the others.
    pub fn deliveries_due_to(&self, webhook: &str, now: u64, limit: u32) -> Result<Vec<Delivery>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT audit_seq, attempts FROM deliveries
             WHERE state = 'pending' AND webhook = ?1 AND next_at <= ?2
             ORDER BY next_at, audit_seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![webhook, to_i64(now), limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, attempts) in rows {
            let event = self
                .audit_row(to_u64(seq))?
                .ok_or_else(|| Error::Corrupt(format!("delivery of missing audit event {seq}")))?;
            out.push(Delivery {
                event,
                webhook: webhook.to_owned(),
                attempts,
            });
        }
        Ok(out)
    }

    /// Records the outcome of one delivery attempt: `delivered`, or retry at `next_at`, or
    /// `dropped` after the last try.
    pub fn delivery_attempted(
        &self,
        audit_seq: u64,
        webhook: &str,
        state: &str,
        next_at: u64,
        error: Option<&str>,
    ) -> Result<()> {
        self.exec(
            "UPDATE deliveries SET attempts = attempts + 1, state = ?3, next_at = ?4, last_error = ?5
             WHERE audit_seq = ?1 AND webhook = ?2",
            params![to_i64(audit_seq), webhook, state, to_i64(next_at), error],
        )?;
        Ok(())
    }

    /// Counts deliveries by state (`pending`, `delivered`, `dropped`).
    pub fn delivery_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, to_u64(r.get::<_, i64>(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The last audit event's sequence number and hash.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        Ok(self
            .row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
            )
            .optional()?)
    }

    /// Stores a signed checkpoint of the audit chain's head.
    pub fn insert_checkpoint(&self, c: &audit::Checkpoint) -> Result<()> {
        self.exec(
            "INSERT OR REPLACE INTO audit_checkpoints (seq, hash, ca_fingerprint, signature, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                to_i64(c.seq),
                c.hash,
                c.ca_fingerprint,
                c.signature,
                to_i64(c.at)
            ],
        )?;
        Ok(())
    }

    /// One audit row by sequence number.
    pub fn audit_row(&self, seq: u64) -> Result<Option<audit::Row>> {
        Ok(self
            .query_audit("WHERE seq = ?1", params![to_i64(seq)])?
            .pop())
    }

    /// Every audit row, in order.
    pub fn audit_rows(&self) -> Result<Vec<audit::Row>> {
        self.query_audit("ORDER BY seq", [])
    }

    /// Audit rows at or after `since`, in order.
    pub fn audit_rows_since(&self, since: u64) -> Result<Vec<audit::Row>> {
        self.query_audit("WHERE at >= ?1 ORDER BY seq", params![to_i64(since)])
    }

    /// Calls `f` with every audit row at or after `since`, in order, one at a time from a
    /// cursor: memory stays flat however long the trail. Stops at `f`'s first error.
    pub fn for_each_audit_row<E: From<Error>>(
        &self,
        since: u64,
        mut f: impl FnMut(audit::Row) -> Result<(), E>,
    ) -> Result<(), E> {
        // Everything: by seq alone, so an event whose time is out of order is still read.
        let sql = if since == 0 {
            format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE ?1 = 0 ORDER BY seq")
        } else {
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit
                 WHERE seq >= {AUDIT_START} AND at >= ?1 ORDER BY seq"
            )
        };
        let mut stmt = self.tx.prepare(&sql).map_err(Error::from)?;
        let mut rows = stmt.query(params![to_i64(since)]).map_err(Error::from)?;
        while let Some(r) = rows.next().map_err(Error::from)? {
            f(audit_row_from(r).map_err(Error::from)?)?;
        }
        Ok(())
    }

    /// Calls `f` with every stored checkpoint, by sequence number, from a cursor.
    pub fn for_each_checkpoint<E: From<Error>>(
        &self,
        mut f: impl FnMut(audit::Checkpoint) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .tx
            .prepare(
                "SELECT seq, hash, ca_fingerprint, signature, at FROM audit_checkpoints ORDER BY seq",
            )
            .map_err(Error::from)?;
        let mut rows = stmt.query([]).map_err(Error::from)?;
        while let Some(r) = rows.next().map_err(Error::from)? {
            f(audit::Checkpoint {
                seq: to_u64(r.get(0).map_err(Error::from)?),
                hash: r.get(1).map_err(Error::from)?,
                ca_fingerprint: r.get(2).map_err(Error::from)?,
                signature: r.get(3).map_err(Error::from)?,
                at: to_u64(r.get(4).map_err(Error::from)?),
            })?;
        }
        Ok(())
    }

    /// The newest checkpoint's sequence number.
    pub fn last_checkpoint_seq(&self) -> Result<Option<u64>> {
        Ok(self
            .row("SELECT max(seq) FROM audit_checkpoints", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .map(to_u64))
    }

    /// The newest `limit` events matching `f`, oldest first. Filtered and limited in SQL on
    /// the audit indexes: the work is bounded by the matching events, not the trail.
    pub fn audit_page(&self, f: &AuditFilter) -> Result<Vec<audit::Row>> {
        let sql = audit_page_sql(f);
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let mut rows = stmt
            .query_map(
                params![to_i64(f.since), f.user, f.request_id, f.limit],
                audit_row_from,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn query_audit(&self, clause: &str, args: impl rusqlite::Params) -> Result<Vec<audit::Row>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT seq, at, actor, action, request_id, details, prev_hash, hash
             FROM audit {clause}"
        ))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|r| {
                Ok(audit::Row {
                    seq: to_u64(r.0),
                    event: Event {
                        at: to_u64(r.1),
                        actor: r.2,
                        action: r.3,
                        request_id: r.4,
                        // A row whose details are not JSON was tampered with: keep the raw
                        // text so `audit::verify` reports that very event as edited.
                        details: serde_json::from_str(&r.5)
                            .unwrap_or(serde_json::Value::String(r.5)),
                    },
                    prev_hash: r.6,
                    hash: r.7,
                })
            })
            .collect()
    }
}

/// The query of [`Tx::audit_page`]: `?1` since, `?2` user, `?3` request, `?4` limit.
fn audit_page_sql(f: &AuditFilter) -> String {
    let mut clauses = vec![format!("seq >= {AUDIT_START}"), "at >= ?1".to_owned()];
    if f.request_id.is_some() {
        clauses.push("request_id = ?3".into());
    }
    if f.user.is_some() {
        // A user's requests are those whose `request.created` event they are the actor
        // of: found on `audit_by_actor`, without reading the requests table.
        clauses.push(format!(
            "(actor = ?2
              OR request_id IN (SELECT request_id FROM audit
                                WHERE actor = ?2 AND action = 'request.created')
              OR {AUDIT_USER} = ?2)"
        ));
    }
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit WHERE {} ORDER BY seq DESC LIMIT ?4",
        clauses.join(" AND ")
    )
}

/// An audit row from a cursor over [`AUDIT_COLUMNS`].
fn audit_row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<audit::Row> {
    let details: String = r.get(5)?;
    Ok(audit::Row {
        seq: to_u64(r.get(0)?),
        event: Event {
            at: to_u64(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            request_id: r.get(4)?,
            // Not JSON: tampered with; kept raw so `audit::verify` names this event.
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        },
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, created: u64) -> Request {
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
        }
    }

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
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 0);
        assert_eq!(s.read(|tx| tx.users()).unwrap().len(), 300);
    }

    /// SQLite's plan for `sql`, its steps joined with "; ".
    fn plan(s: &Store, sql: &str) -> String {
        let w = s.lock_writer();
        let mut stmt = w
            .conn
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
    fn lookups_read_indexes_never_the_whole_table() {
        let s = Store::open_in_memory().unwrap();
        let select = "SELECT id FROM requests ";
        for (what, sql, index) in [
            (
                "pending total",
                "SELECT COUNT(*) FROM requests WHERE state = 'pending'".to_owned(),
                "requests_pending",
            ),
            (
                "pending per requester",
                "SELECT COUNT(*) FROM requests WHERE requester = ?1 AND state = 'pending'"
                    .to_owned(),
                "requests_pending_by_requester",
            ),
            (
                "expired pending",
                format!("{select} WHERE state = 'pending' AND expires_at <= ?1"),
                "requests_pending",
            ),
            (
                "listing",
                format!("{select} {LIST_ALL}"),
                "requests_by_created",
            ),
            (
                "listing pending",
                format!("{select} {LIST_PENDING}"),
                "requests_pending",
            ),
        ] {
            let p = plan(&s, &sql);
            assert!(p.contains(index), "{what}: {p}");
            assert!(
                !p.split("; ").any(|step| step == "SCAN requests"),
                "{what} scans the table: {p}"
            );
        }
        // Revoking by user or by key reads only the live certificates.
        let certs = "SELECT serial FROM certificates WHERE";
        for (what, sql) in [
            (
                "live certificates of a user",
                format!("{certs} requester = ?1 AND valid_before > ?2 AND revoked_at IS NULL"),
            ),
            (
                "live certificates of a key",
                format!("{certs} fingerprint = ?1 AND valid_before > ?2 AND revoked_at IS NULL"),
            ),
        ] {
            let p = plan(&s, &sql);
            assert!(p.contains("certificates_live"), "{what}: {p}");
        }
        // Newest first straight from the index: no sort of the whole table.
        let p = plan(&s, &format!("{select} {LIST_ALL}"));
        assert!(!p.contains("TEMP B-TREE"), "listing sorts: {p}");
    }

    #[test]
    fn a_database_of_the_previous_schema_upgrades_with_its_rows_and_new_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // A database as the release before the index changes left it (schema 6).
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            conn.execute_batch(
                "INSERT INTO requests (id, requester, role, principals, ttl_secs, reason,
                     public_key, fingerprint, state, created_at, expires_at, approvals_required)
                 VALUES ('01OLD', 'alice', 'db', '[\"postgres\"]', 600, 'INC-1', 'k', 'SHA256:x',
                     'pending', 1, 3601, 1);
                 INSERT INTO requests (id, requester, role, principals, ttl_secs, reason,
                     public_key, fingerprint, state, created_at, expires_at, approvals_required)
                 VALUES ('02OLD', 'alice', 'db', '[\"postgres\"]', 600, 'INC-2', 'k', 'SHA256:x',
                     'issued', 2, 3602, 1);
                 INSERT INTO certificates (serial, request_id, key_id, principals, valid_after,
                     valid_before, fingerprint, ca_fingerprint, openssh, issued_at, requester, role)
                 VALUES (7, '02OLD', 'kid', '[\"postgres\"]', 2, 9999, 'SHA256:x', 'SHA256:ca',
                     'cert', 2, 'alice', 'db');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let version: i64 = s
            .lock_writer()
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        s.read(|tx| {
            assert_eq!(tx.pending_count("alice")?, 1);
            assert_eq!(tx.pending_total()?, 1);
            let live = tx.live_certificates_for_key("SHA256:x", 100)?;
            assert_eq!(live.iter().map(|c| c.serial).collect::<Vec<_>>(), [7]);
            assert_eq!(tx.live_certificates_of("alice", 100)?.len(), 1);
            let listed = tx.requests(&RequestFilter {
                limit: 10,
                ..Default::default()
            })?;
            assert_eq!(
                listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                ["02OLD", "01OLD"]
            );
            Ok::<_, Error>(())
        })
        .unwrap();
        let p = plan(
            &s,
            "SELECT id FROM requests WHERE state = 'pending' AND expires_at <= 5",
        );
        assert!(p.contains("requests_pending"), "{p}");
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
    fn migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.transact(|tx| tx.insert_user("alice", &["oncall".into()], 1).map(|_| ()))
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let u = s.read(|tx| tx.user("alice")).unwrap().unwrap();
        assert_eq!(u.groups, ["oncall"]);
        let mode: String = s
            .lock_writer()
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn listing_filters_visibility_and_limit_in_sql() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| {
            for (i, (who, role)) in [
                ("alice", "db"),
                ("bob", "web"),
                ("carol", "db"),
                ("dave", "ops"),
            ]
            .iter()
            .enumerate()
            {
                let mut r = req(&format!("R{i}"), i as u64);
                r.requester = (*who).into();
                r.role = (*role).into();
                tx.insert_request(&r)?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let ids = |f: RequestFilter| -> Vec<String> {
            s.read(|tx| tx.requests(&f))
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        // bob sees his own and the db role's, newest first.
        let visible = RequestFilter {
            visible_to: Some(("bob".into(), vec!["db".into()])),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(ids(visible.clone()), ["R2", "R1", "R0"]);
        assert_eq!(
            ids(RequestFilter {
                limit: 2,
                ..visible
            }),
            ["R2", "R1"]
        );
        let nobody = RequestFilter {
            visible_to: Some(("eve".into(), vec![])),
            limit: 10,
            ..Default::default()
        };
        assert!(ids(nobody).is_empty());
    }

    #[test]
    fn read_only_database_refuses_writes_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
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
    fn concurrent_writers_share_commits_and_failures_stay_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
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
        let s = Arc::new(Store::open(&dir.path().join("db")).unwrap());
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
        let s = Arc::new(Store::open(&dir.path().join("db")).unwrap());
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

    #[test]
    fn request_roundtrip_with_reviews() {
        let s = Store::open_in_memory().unwrap();
        let mut r = req("A", 10);
        s.transact(|tx| tx.insert_request(&r)).unwrap();
        r.reviews.push(Review {
            approver: "bob".into(),
            verdict: Verdict::Deny,
            ttl_secs: None,
            comment: "no".into(),
            at: 11,
        });
        r.state = State::Denied;
        r.decided_at = Some(11);
        s.transact(|tx| tx.update_request(&r)).unwrap();
        assert_eq!(s.read(|tx| tx.request("A")).unwrap().unwrap(), r);
    }

    #[test]
    fn one_certificate_per_request_and_unique_serials() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| {
            tx.insert_request(&req("A", 1))?;
            tx.insert_request(&req("B", 2))
        })
        .unwrap();
        let cert = |serial, req: &str| CertRecord {
            serial,
            request_id: req.into(),
            key_id: "k".into(),
            principals: vec!["p".into()],
            valid_after: 1,
            valid_before: 2,
            fingerprint: "f".into(),
            ca_fingerprint: "c".into(),
            openssh: "o".into(),
            issued_at: 1,
            requester: "alice".into(),
            role: "db".into(),
            revoked_at: None,
        };
        s.transact(|tx| tx.insert_certificate(&cert(u64::MAX, "A")))
            .unwrap();
        assert!(s.read(|tx| tx.serial_exists(u64::MAX)).unwrap());
        assert!(
            s.transact(|tx| tx.insert_certificate(&cert(7, "A")))
                .is_err()
        );
        assert!(
            s.transact(|tx| tx.insert_certificate(&cert(u64::MAX, "B")))
                .is_err()
        );
        let got = s
            .read(|tx| tx.certificate_for_request("A"))
            .unwrap()
            .unwrap();
        assert_eq!(got.serial, u64::MAX);
    }

    #[test]
    fn tokens_stop_working_when_user_disabled() {
        let s = Store::open_in_memory().unwrap();
        s.transact(|tx| {
            tx.insert_user("bob", &["leads".into()], 1)?;
            tx.insert_token("h", "bob", 1)
        })
        .unwrap();
        assert_eq!(
            s.read(|tx| tx.caller_by_token("h", 5))
                .unwrap()
                .unwrap()
                .name,
            "bob"
        );
        assert!(
            s.read(|tx| tx.caller_by_token("other", 5))
                .unwrap()
                .is_none()
        );
        s.transact(|tx| tx.set_user_disabled("bob", true)).unwrap();
        assert!(s.read(|tx| tx.caller_by_token("h", 5)).unwrap().is_none());
    }

    #[test]
    fn audit_chain_in_store_verifies_and_detects_edits() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..4 {
            s.transact(|tx| {
                tx.append_audit(&Event::new(
                    i,
                    "a",
                    "x.y",
                    None,
                    serde_json::json!({"i": i}),
                ))
            })
            .unwrap();
        }
        assert_eq!(
            audit::verify(s.read(|tx| tx.audit_rows()).unwrap()).unwrap(),
            4
        );
        s.raw_execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
            .unwrap();
        let err = audit::verify(s.read(|tx| tx.audit_rows()).unwrap()).unwrap_err();
        assert_eq!(err.seq, 2);
    }

    /// SQLite's plan for the query [`Tx::audit_page`] runs for `f`.
    fn audit_page_plan(s: &Store, f: &AuditFilter) -> String {
        plan(s, &audit_page_sql(f))
    }

    #[test]
    fn finding_11_audit_listing_filters_and_limits_in_sql_on_indexes() {
        let s = Store::open_in_memory().unwrap();
        // 3,000 events: alice's requests (created by her, approved by bob), user events
        // naming carol, and noise by a bot.
        s.transact(|tx| {
            for i in 0..1000u64 {
                let id = format!("R{i:04}");
                let (who, action) = if i % 10 == 0 {
                    ("alice", "request.created")
                } else {
                    ("bot", "request.created")
                };
                tx.append_audit(&Event::new(
                    i,
                    who,
                    action,
                    Some(&id),
                    serde_json::json!({}),
                ))?;
                tx.append_audit(&Event::new(
                    i,
                    "bob",
                    "request.approved",
                    Some(&id),
                    serde_json::json!({}),
                ))?;
                let user = if i % 100 == 0 { "carol" } else { "dan" };
                tx.append_audit(&Event::new(
                    i,
                    "operator",
                    "user.token_issued",
                    None,
                    serde_json::json!({ "user": user }),
                ))?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        let page = |f: AuditFilter| s.read(|tx| tx.audit_page(&f)).unwrap();

        // The attack: "the newest 5 events" used to load all 3,000 and keep 5.
        let newest = page(AuditFilter {
            limit: 5,
            ..Default::default()
        });
        assert_eq!(
            newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [2996, 2997, 2998, 2999, 3000]
        );
        let since = page(AuditFilter {
            since: 998,
            limit: 100,
            ..Default::default()
        });
        assert_eq!(since.len(), 6);
        assert!(since.iter().all(|r| r.event.at >= 998));
        let alice = page(AuditFilter {
            user: Some("alice".into()),
            limit: 1000,
            ..Default::default()
        });
        // Her 100 requests and their 100 approvals.
        assert_eq!(alice.len(), 200);
        assert!(alice.windows(2).all(|w| w[0].seq < w[1].seq));
        let alice_recent = page(AuditFilter {
            user: Some("alice".into()),
            since: 900,
            limit: 3,
            ..Default::default()
        });
        assert_eq!(alice_recent.len(), 3);
        assert_eq!(alice_recent[2].event.request_id.as_deref(), Some("R0990"));
        let carol = page(AuditFilter {
            user: Some("carol".into()),
            limit: 1000,
            ..Default::default()
        });
        assert_eq!(carol.len(), 10);
        let one = page(AuditFilter {
            request_id: Some("R0500".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(one.len(), 2);
        assert!(
            page(AuditFilter {
                since: 5000,
                limit: 10,
                ..Default::default()
            })
            .is_empty()
        );

        // Each shape reads an index, never the whole table, and needs no sort of it.
        for (what, f, index) in [
            ("newest", AuditFilter::default(), "INTEGER PRIMARY KEY"),
            (
                "request",
                AuditFilter {
                    request_id: Some("R".into()),
                    ..Default::default()
                },
                "audit_by_request",
            ),
            (
                "user",
                AuditFilter {
                    user: Some("u".into()),
                    ..Default::default()
                },
                "audit_by_actor",
            ),
        ] {
            let p = audit_page_plan(&s, &f);
            assert!(p.contains(index), "{what}: {p}");
            assert!(
                p.contains("audit_by_at"),
                "{what}: since is not a seek: {p}"
            );
            assert!(
                !p.split("; ").any(|step| step == "SCAN audit"),
                "{what} scans the table: {p}"
            );
        }
        let p = audit_page_plan(
            &s,
            &AuditFilter {
                user: Some("u".into()),
                ..Default::default()
            },
        );
        assert!(p.contains("audit_by_user"), "user: {p}");
        assert!(
            !audit_page_plan(&s, &AuditFilter::default()).contains("TEMP B-TREE"),
            "the newest events come straight from the key, unsorted"
        );
    }
}
