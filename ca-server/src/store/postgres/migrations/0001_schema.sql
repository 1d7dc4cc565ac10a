-- moshca's PostgreSQL schema, version 1: the same tables, columns and indexes as the
-- SQLite schema after its migrations. Every integer is BIGINT (booleans are 0/1), so the
-- statements the store runs are the same on both backends.

CREATE TABLE users (
    name TEXT PRIMARY KEY,
    groups TEXT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    sso BIGINT NOT NULL DEFAULT 0);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked BIGINT NOT NULL DEFAULT 0,
    id TEXT, last_used_at BIGINT);
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    role TEXT NOT NULL,
    principals TEXT NOT NULL,
    ttl_secs BIGINT NOT NULL,
    reason TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    decided_at BIGINT,
    approvals_required BIGINT NOT NULL,
    break_glass BIGINT NOT NULL DEFAULT 0, glass_reviewer TEXT, glass_comment TEXT, glass_reviewed_at BIGINT, version BIGINT NOT NULL DEFAULT 0);
CREATE TABLE reviews (
    request_id TEXT NOT NULL REFERENCES requests(id),
    position BIGINT NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    ttl_secs BIGINT,
    comment TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (request_id, position)
);
CREATE TABLE certificates (
    serial BIGINT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE REFERENCES requests(id),
    key_id TEXT NOT NULL,
    principals TEXT NOT NULL,
    valid_after BIGINT NOT NULL,
    valid_before BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    openssh TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    revoked_at BIGINT, requester TEXT NOT NULL DEFAULT '', role TEXT NOT NULL DEFAULT '');
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX certificates_revoked ON certificates(valid_before) WHERE revoked_at IS NOT NULL;
CREATE TABLE revoked_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE TABLE krl_state (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO krl_state (id, version) VALUES (1, 0);
CREATE TABLE ca_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
CREATE INDEX certificates_by_ca ON certificates(ca_fingerprint, valid_before);
CREATE TABLE seen_jti (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE TABLE outbox (
    audit_seq BIGINT PRIMARY KEY REFERENCES audit(seq),
    action TEXT NOT NULL,
    request_id TEXT,
    created_at BIGINT NOT NULL,
    fanned_out BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_waiting ON outbox(fanned_out) WHERE fanned_out = 0;
CREATE TABLE deliveries (
    audit_seq BIGINT NOT NULL REFERENCES outbox(audit_seq),
    webhook TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    PRIMARY KEY (audit_seq, webhook)
);
CREATE INDEX deliveries_due ON deliveries(state, next_at);
CREATE INDEX requests_unreviewed ON requests(break_glass) WHERE break_glass = 1 AND glass_reviewed_at IS NULL;
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    signature TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX requests_pending ON requests(expires_at) WHERE state = 'pending';
CREATE INDEX requests_pending_by_requester ON requests(requester) WHERE state = 'pending';
CREATE INDEX requests_by_created ON requests(created_at, id);
CREATE INDEX certificates_live ON certificates(valid_before);
CREATE INDEX revoked_keys_by_revoker ON revoked_keys(revoked_by, revoked_at);
CREATE INDEX audit_by_at ON audit(at);
CREATE INDEX audit_by_request ON audit(request_id);
CREATE INDEX audit_by_actor ON audit(actor, action);
CREATE INDEX audit_by_user ON audit(((details::jsonb ->> 'user')));
CREATE UNIQUE INDEX tokens_by_id ON tokens(id);
CREATE INDEX tokens_by_user ON tokens(user_name);
CREATE TABLE host_join_tokens (
    hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    principals TEXT NOT NULL,
    cert_ttl BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_serial BIGINT
);
CREATE TABLE host_certificates (
    serial BIGINT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_id TEXT NOT NULL,
    principals TEXT NOT NULL,
    ttl_secs BIGINT NOT NULL,
    valid_after BIGINT NOT NULL,
    valid_before BIGINT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    ca_key TEXT NOT NULL,
    openssh TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    token_id TEXT NOT NULL,
    renewed_from BIGINT,
    revoked_at BIGINT
);
CREATE INDEX host_certificates_by_key ON host_certificates(fingerprint);
CREATE INDEX host_certificates_live ON host_certificates(valid_before);
CREATE TABLE host_challenges (
    nonce TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    serial BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX host_challenges_by_key ON host_challenges(fingerprint, expires_at);
CREATE INDEX host_challenges_by_expiry ON host_challenges(expires_at);
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL REFERENCES users(name),
    groups TEXT NOT NULL,
    issuer TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sessions_by_user ON sessions(user_name, created_at);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
CREATE TABLE consumed_id_tokens (
    hash TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX consumed_id_tokens_by_expiry ON consumed_id_tokens(expires_at);
