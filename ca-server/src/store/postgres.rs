//! The PostgreSQL backend, for several replicas over one database: the URL (multi-host,
//! TLS), connecting and reconnecting, the writer lock every batch takes, its migrations
//! (`postgres/migrations/`), and the listener that wakes watchers when another replica
//! decides a request.
//!
//! Batches run at READ COMMITTED after `pg_advisory_xact_lock(WRITER_LOCK)`: the lock is
//! the audit chain's head, so every batch of every replica appends to one chain in one
//! order, and each statement after it sees every batch committed before. A lost connection
//! (a killed primary, a failover) is retried only where that is safe: before a batch or
//! read has run anything. A COMMIT whose answer was lost is reported as failed, never as
//! done, so nothing is acknowledged that a standby might not have.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use rustls::pki_types::pem::PemObject as _;

use super::engine::Link;
use super::sql::PgConn;
use super::{Error, ErrorKind, READERS, Result, Store};

/// The advisory lock key every write batch holds until it commits ("moshca" in ASCII).
const WRITER_LOCK: i64 = 0x6d6f_7368_6361;
/// The advisory lock key migrations hold, so replicas starting at once migrate once.
const MIGRATION_LOCK: i64 = 0x006d_6f73_6863_6101;

/// How long a batch or read waits for the database to come back (a restart, a standby
/// being promoted) before it fails with "unavailable".
const RECONNECT_WAIT: Duration = Duration::from_secs(15);

/// The channel decisions are announced on, with the request id as payload.
pub(crate) const DECISIONS: &str = "moshca_decisions";

const MIGRATIONS: &[&str] = &[include_str!("postgres/migrations/0001_schema.sql")];

/// A PostgreSQL URL as configured: `postgres://user:password@host[:port][,host2...]/db`
/// with libpq-style parameters (`target_session_attrs`, `connect_timeout`, `sslmode`),
/// plus `sslrootcert=FILE` for TLS. Shown and logged without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    raw: String,
}

impl PgUrl {
    /// Whether `s` is meant as a PostgreSQL URL rather than a SQLite path.
    pub fn is_url(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// Checks `s` parses; the error says what is wrong without repeating the URL.
    pub fn parse(s: &str) -> std::result::Result<PgUrl, String> {
        let url = PgUrl { raw: s.to_owned() };
        url.config()?;
        Ok(url)
    }

    /// Whether the URL carries a password (the file holding it is then a secret file).
    pub fn has_password(&self) -> bool {
        password_of(&self.raw).is_some_and(|p| !p.is_empty())
    }

    /// The driver's configuration and the CA file to verify the server with, if TLS.
    fn config(&self) -> std::result::Result<(postgres::Config, Option<String>), String> {
        let (base, query) = self.raw.split_once('?').unwrap_or((&self.raw, ""));
        let mut kept = form_urlencoded::Serializer::new(String::new());
        let mut root = None;
        let mut tls = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match (&*k, &*v) {
                ("sslrootcert", file) => root = Some(file.to_owned()),
                ("sslmode", "require" | "verify-ca" | "verify-full") => {
                    tls = true;
                    kept.append_pair("sslmode", "require");
                }
                _ => {
                    kept.append_pair(&k, &v);
                }
            }
        }
        let kept = kept.finish();
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{kept}")
        };
        let mut config = postgres::Config::from_str(&url).map_err(|e| {
            format!(
                "the database URL is not a PostgreSQL URL moshca can use ({}); write it as \
                 postgres://USER:PASSWORD@HOST:PORT[,HOST2:PORT2]/DATABASE",
                redact(&e.to_string(), &self.raw)
            )
        })?;
        if tls && root.is_none() {
            return Err(
                "the database URL asks for TLS (sslmode) but names no CA: add \
                        sslrootcert=FILE, the PEM of the CA that signed the server's certificate"
                    .into(),
            );
        }
        if root.is_some() && !tls {
            return Err(
                "the database URL names sslrootcert but not sslmode=verify-full: \
                        add it, or TLS would not be required"
                    .into(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_options().is_none() {
            // A replica that hangs holding the writer lock (a stopped process, a cut
            // network) must not stop the others for hours: its session ends after 30 s idle
            // in a transaction, and a batch waits at most 20 s for the lock before it fails
            // as unavailable.
            config.options("-c lock_timeout=20s -c idle_in_transaction_session_timeout=30s");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("moshca-server");
        Ok((config, root))
    }
}

/// `s` with every occurrence of the URL's password replaced.
fn redact(s: &str, url: &str) -> String {
    match password_of(url) {
        Some(p) if !p.is_empty() => s.replace(p, "***"),
        _ => s.to_owned(),
    }
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split_once(':')?.1)
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match password_of(&self.raw) {
            Some(p) if !p.is_empty() => {
                f.write_str(&self.raw.replacen(&format!(":{p}@"), ":***@", 1))
            }
            _ => f.write_str(&self.raw),
        }
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// What a replica connects to, and how.
pub(crate) struct Target {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target").field("url", &self.shown).finish()
    }
}

impl Target {
    fn new(url: &PgUrl) -> Result<Target> {
        let (config, root) = url.config().map_err(Error::Setup)?;
        let tls = root.map(|file| tls_connector(&file)).transpose()?;
        Ok(Target {
            config,
            tls,
            shown: url.to_string(),
        })
    }

    /// A new connection to a host that accepts writes.
    fn connect(&self) -> Result<postgres::Client> {
        let client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        };
        crate::metrics::store_connect(client.is_ok());
        Ok(client?)
    }
}

fn tls_connector(file: &str) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let pem = std::fs::read(file).map_err(|e| {
        Error::Setup(format!(
            "cannot read the database CA file {file} (sslrootcert): {e}"
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| Error::Setup(format!("the database CA file {file} is not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Setup(format!("the database CA file {file}: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::Setup(format!(
            "the database CA file {file} holds no certificate"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS to the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Opens the database at `url`: connects, migrates, and opens the readers.
pub(super) fn open(url: &PgUrl) -> Result<Store> {
    let target = Arc::new(Target::new(url)?);
    let mut client = target.connect()?;
    migrate(&mut client)?;
    let writer = Link::Postgres(Box::new(PgConn::new(client).into()), target.clone());
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(Link::Postgres(
            Box::new(PgConn::new(target.connect()?).into()),
            target.clone(),
        ));
    }
    let mut store = Store::with(writer, readers);
    store.pg = Some(target);
    Ok(store)
}

/// Applies the migrations this database lacks, under a lock so replicas starting together
/// apply each once.
fn migrate(client: &mut postgres::Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('moshca_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        tx.batch_execute("CREATE TABLE moshca_schema (version BIGINT NOT NULL)")?;
    }
    let version: i64 = tx
        .query_opt("SELECT version FROM moshca_schema", &[])?
        .map_or(0, |r| r.get(0));
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(Error::TooNew(version));
    }
    if version == known {
        return Ok(());
    }
    for m in &MIGRATIONS[usize::try_from(version).unwrap_or(0)..] {
        tx.batch_execute(m)?;
    }
    tx.execute("DELETE FROM moshca_schema", &[])?;
    tx.execute("INSERT INTO moshca_schema (version) VALUES ($1)", &[&known])?;
    tx.commit()?;
    Ok(())
}

/// Opens a batch's transaction and takes the writer lock, reconnecting (to whichever host
/// now accepts writes) while the database is unavailable, for up to [`RECONNECT_WAIT`].
pub(super) fn begin_write(conn: &mut PgConn, target: &Target) -> Result<()> {
    with_retries(conn, target, |c| {
        c.client()
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
            ))
            .map_err(Error::from)
    })
}

/// Opens a read-only snapshot, reconnecting as [`begin_write`] does.
pub(super) fn begin_read(conn: &mut PgConn, target: &Target) -> Result<()> {
    with_retries(conn, target, |c| {
        c.client()
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(Error::from)
    })
}

fn with_retries(
    conn: &mut PgConn,
    target: &Target,
    begin: impl Fn(&mut PgConn) -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + RECONNECT_WAIT;
    let mut pause = Duration::from_millis(50);
    let mut fresh = false;
    loop {
        let tried = if conn.client().is_closed() || fresh {
            target.connect().and_then(|client| {
                *conn = PgConn::new(client);
                begin(conn)
            })
        } else {
            begin(conn)
        };
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() != ErrorKind::Corrupt && Instant::now() < deadline => {
                // Whatever was half open on this connection goes with it.
                let _ = conn.client().batch_execute("ROLLBACK");
                crate::metrics::store_retry();
                tracing::warn!(error = %e, database = %target.shown, "database unavailable; reconnecting");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
                fresh = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A failure as logs should show it. The driver's own text is only its kind ("db error",
/// "error connecting to server"); what went wrong is in its source: the server's message
/// and SQLSTATE (not its DETAIL, which can quote row values), or the I/O error.
pub(super) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{e}: {} ({}): {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a PostgreSQL failure means; see [`ErrorKind`].
pub(super) fn kind(e: &postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or was lost.
        return ErrorKind::Unavailable;
    };
    let class = &code.code()[..2];
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        ErrorKind::Conflict
    } else if matches!(class, "08" | "53" | "57" | "58")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Corrupt
    }
}

impl Store {
    /// Calls `wake` with the request id each time a replica (this one included) commits
    /// a decision on it, from a thread holding its own connection with `LISTEN`. After a
    /// lost connection it reconnects and calls `wake` with `None`: decisions may have
    /// been missed meanwhile, so watchers should read again. No-op on SQLite, where one
    /// server makes every decision itself. The thread ends with the store.
    pub fn listen_for_decisions(
        self: &Arc<Self>,
        wake: impl Fn(Option<&str>) + Send + 'static,
    ) -> Result<()> {
        let Some(target) = self.pg.clone() else {
            return Ok(());
        };
        let store = Arc::downgrade(self);
        let mut client = target.connect()?;
        client.batch_execute(&format!("LISTEN {DECISIONS}"))?;
        std::thread::Builder::new()
            .name("moshca-listen".into())
            .spawn(move || {
                loop {
                    if store.strong_count() == 0 {
                        return;
                    }
                    let mut lost = false;
                    {
                        let mut n = client.notifications();
                        let mut it = n.timeout_iter(Duration::from_millis(500));
                        loop {
                            use postgres::fallible_iterator::FallibleIterator as _;
                            match it.next() {
                                Ok(Some(note)) => wake(Some(note.payload())),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(error = %describe(&e), "decision listener lost its connection");
                                    lost = true;
                                    break;
                                }
                            }
                        }
                    }
                    if lost || client.is_closed() {
                        client = loop {
                            if store.strong_count() == 0 {
                                return;
                            }
                            match target.connect().and_then(|mut c| {
                                c.batch_execute(&format!("LISTEN {DECISIONS}"))?;
                                Ok(c)
                            }) {
                                Ok(c) => break c,
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        };
                        wake(None);
                    }
                }
            })
            .map_err(|e| Error::Setup(format!("cannot start the decision listener: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_what_went_wrong() {
        // A connection refused (nothing listens on port 1): the I/O error, not just the
        // driver's kind.
        let e = postgres::Config::new()
            .host("127.0.0.1")
            .port(1)
            .user("moshca")
            .connect(postgres::NoTls)
            .err()
            .unwrap();
        let shown = describe(&e);
        assert!(shown.to_lowercase().contains("refused"), "{shown}");
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        let u = PgUrl::parse("postgres://moshca:s3cret@127.0.0.1:5432,127.0.0.1:5433/ca?target_session_attrs=read-write").unwrap();
        assert_eq!(
            u.to_string(),
            "postgres://moshca:***@127.0.0.1:5432,127.0.0.1:5433/ca?target_session_attrs=read-write"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        let e = PgUrl::parse("postgres://moshca:s3cret@127.0.0.1:notaport/ca").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("postgres://USER:PASSWORD@HOST"), "{e}");
        let e = PgUrl::parse("postgres://moshca:s3cret@h/ca?sslmode=verify-full").unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = PgUrl::parse("postgres://moshca:s3cret@h/ca?sslrootcert=/x").unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
    }
}
