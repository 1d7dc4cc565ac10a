//! The schema: migrations appended in order (the database's `user_version` counts those
//! applied), and the upgrade that applies the missing ones when the store opens.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::{Error, Result};

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
    // Request versions: a request is saved only over the version it was read at, so two
    // writers cannot both decide it (reviews are appended under their PRIMARY KEY
    // (request_id, position), never rewritten).
    r#"
ALTER TABLE requests ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
"#,
    // The users' column of tokens and sessions, renamed from `user`, which PostgreSQL
    // reserves, so both backends run the same statements.
    r#"
ALTER TABLE tokens RENAME COLUMN user TO user_name;
ALTER TABLE sessions RENAME COLUMN user TO user_name;
"#,
];

/// Applies the migrations `conn`'s database lacks, in one immediate transaction; refuses a
/// database made by a newer moshca.
pub(super) fn upgrade(conn: &mut Connection) -> Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::plan;
    use crate::store::{Error, RequestFilter, Store};

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
            .sqlite()
            .unwrap()
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
            // Requests stored before versions existed start at version 0.
            assert!(listed.iter().all(|r| r.version == 0));
            Ok::<_, Error>(())
        })
        .unwrap();
        let p = plan(
            &s,
            "SELECT id FROM requests WHERE state = 'pending' AND expires_at <= 5",
        );
        assert!(p.contains("requests_pending"), "{p}");
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
            .sqlite()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
