//! SQL of host certificates: join tokens (hash only), host certificates issued, and
//! renewal challenges. Typed reads and writes; decides nothing.

use super::sql::{Row, Value, params};

use super::{Result, Tx, json_list, parse_list, to_i64, to_u64};

/// A join token as stored: never the token, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTokenRecord {
    /// Public id (`htk_...`), to list and name it in the audit trail.
    pub id: String,
    /// The exact principals a host enrolled with it gets.
    pub principals: Vec<String>,
    /// Validity of the certificate it yields; `None`: the server's `host_cert_ttl`.
    pub cert_ttl: Option<u64>,
    /// Who made it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; refused from then on.
    pub expires_at: u64,
    /// When it was used (it works once).
    pub used_at: Option<u64>,
    /// The serial of the certificate it yielded.
    pub used_serial: Option<u64>,
}

/// A host certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCertRecord {
    /// Serial, unique among all certificates.
    pub serial: u64,
    /// SHA-256 fingerprint of the host key.
    pub fingerprint: String,
    /// The host public key, OpenSSH text.
    pub public_key: String,
    /// Key ID.
    pub key_id: String,
    /// Host names.
    pub principals: Vec<String>,
    /// The validity it was issued for; renewals keep it.
    pub ttl_secs: u64,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds, exclusive.
    pub valid_before: u64,
    /// Fingerprint of the host CA key that signed it.
    pub ca_fingerprint: String,
    /// That host CA public key, OpenSSH text (the KRL lists revocations under it).
    pub ca_key: String,
    /// The certificate line.
    pub openssh: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// The join token it descends from.
    pub token_id: String,
    /// The certificate it renewed, if any.
    pub renewed_from: Option<u64>,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
}

const TOKEN_COLUMNS: &str =
    "id, principals, cert_ttl, created_by, created_at, expires_at, used_at, used_serial";
const CERT_COLUMNS: &str = "serial, fingerprint, public_key, key_id, principals, ttl_secs,
    valid_after, valid_before, ca_fingerprint, ca_key, openssh, issued_at, token_id,
    renewed_from, revoked_at";

fn token_row(r: &Row<'_>) -> Result<(HostTokenRecord, String)> {
    Ok((
        HostTokenRecord {
            id: r.get(0)?,
            principals: Vec::new(),
            cert_ttl: r.get::<Option<i64>>(2)?.map(to_u64),
            created_by: r.get(3)?,
            created_at: to_u64(r.get(4)?),
            expires_at: to_u64(r.get(5)?),
            used_at: r.get::<Option<i64>>(6)?.map(to_u64),
            used_serial: r.get::<Option<i64>>(7)?.map(to_u64),
        },
        r.get(1)?,
    ))
}

fn cert_row(r: &Row<'_>) -> Result<(HostCertRecord, String)> {
    Ok((
        HostCertRecord {
            serial: to_u64(r.get(0)?),
            fingerprint: r.get(1)?,
            public_key: r.get(2)?,
            key_id: r.get(3)?,
            principals: Vec::new(),
            ttl_secs: to_u64(r.get(5)?),
            valid_after: to_u64(r.get(6)?),
            valid_before: to_u64(r.get(7)?),
            ca_fingerprint: r.get(8)?,
            ca_key: r.get(9)?,
            openssh: r.get(10)?,
            issued_at: to_u64(r.get(11)?),
            token_id: r.get(12)?,
            renewed_from: r.get::<Option<i64>>(13)?.map(to_u64),
            revoked_at: r.get::<Option<i64>>(14)?.map(to_u64),
        },
        r.get(4)?,
    ))
}

impl Tx<'_> {
    // --- join tokens ---

    /// Stores a join token by its hash.
    pub fn insert_host_token(&self, hash: &str, t: &HostTokenRecord) -> Result<()> {
        self.exec(
            "INSERT INTO host_join_tokens (hash, id, principals, cert_ttl, created_by, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                hash,
                t.id,
                json_list(&t.principals),
                t.cert_ttl.map(to_i64),
                t.created_by,
                to_i64(t.created_at),
                to_i64(t.expires_at)
            ],
        )?;
        Ok(())
    }

    /// The join token with this hash.
    pub fn host_token_by_hash(&self, hash: &str) -> Result<Option<HostTokenRecord>> {
        self.query_host_tokens("WHERE hash = ?1", params![hash])
            .map(|mut v| v.pop())
    }

    /// Every join token, newest first.
    pub fn host_tokens(&self) -> Result<Vec<HostTokenRecord>> {
        self.query_host_tokens("ORDER BY created_at DESC, id", params![])
    }

    /// Marks a join token used by the certificate `serial`; `false` if it already was.
    pub fn use_host_token(&self, hash: &str, now: u64, serial: u64) -> Result<bool> {
        let n = self.exec(
            "UPDATE host_join_tokens SET used_at = ?2, used_serial = ?3
             WHERE hash = ?1 AND used_at IS NULL",
            params![hash, to_i64(now), to_i64(serial)],
        )?;
        Ok(n == 1)
    }

    fn query_host_tokens(&self, clause: &str, args: &[Value<'_>]) -> Result<Vec<HostTokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM host_join_tokens {clause}");
        let rows = self.all(&sql, args, token_row)?;
        rows.into_iter()
            .map(|(mut t, principals)| {
                t.principals = parse_list(&principals)?;
                Ok(t)
            })
            .collect()
    }

    // --- host certificates ---

    /// Whether a serial is used by a host certificate.
    pub fn host_serial_exists(&self, serial: u64) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM host_certificates WHERE serial = ?1",
                params![to_i64(serial)],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Stores an issued host certificate.
    pub fn insert_host_certificate(&self, c: &HostCertRecord) -> Result<()> {
        self.exec(
            "INSERT INTO host_certificates (serial, fingerprint, public_key, key_id, principals,
                 ttl_secs, valid_after, valid_before, ca_fingerprint, ca_key, openssh, issued_at,
                 token_id, renewed_from, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                to_i64(c.serial),
                c.fingerprint,
                c.public_key,
                c.key_id,
                json_list(&c.principals),
                to_i64(c.ttl_secs),
                to_i64(c.valid_after),
                to_i64(c.valid_before),
                c.ca_fingerprint,
                c.ca_key,
                c.openssh,
                to_i64(c.issued_at),
                c.token_id,
                c.renewed_from.map(to_i64),
                c.revoked_at.map(to_i64)
            ],
        )?;
        Ok(())
    }

    /// The host certificate with this serial.
    pub fn host_certificate(&self, serial: u64) -> Result<Option<HostCertRecord>> {
        self.query_host_certificates("WHERE serial = ?1", params![to_i64(serial)])
            .map(|mut v| v.pop())
    }

    /// Unrevoked host certificates for a host key still valid at `now`.
    pub fn live_host_certificates_for_key(
        &self,
        fingerprint: &str,
        now: u64,
    ) -> Result<Vec<HostCertRecord>> {
        self.query_host_certificates(
            "WHERE fingerprint = ?1 AND valid_before > ?2 AND revoked_at IS NULL",
            params![fingerprint, to_i64(now)],
        )
    }

    /// Host certificates still valid at `now` (revoked ones too), newest first.
    pub fn live_host_certificates(&self, now: u64) -> Result<Vec<HostCertRecord>> {
        self.query_host_certificates(
            "WHERE valid_before > ?1 ORDER BY issued_at DESC, serial",
            params![to_i64(now)],
        )
    }

    /// Marks a host certificate revoked; `false` if it already was.
    pub fn revoke_host_certificate(&self, serial: u64, now: u64) -> Result<bool> {
        let n = self.exec(
            "UPDATE host_certificates SET revoked_at = ?2 WHERE serial = ?1 AND revoked_at IS NULL",
            params![to_i64(serial), to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Revoked host certificates not expired at `now`, as (serial, host CA public key).
    pub fn revoked_live_host_certificates(&self, now: u64) -> Result<Vec<(u64, String)>> {
        let rows = self.all(
            "SELECT serial, ca_key FROM host_certificates
             WHERE revoked_at IS NOT NULL AND valid_before > ?1",
            params![to_i64(now)],
            |r| Ok((to_u64(r.get(0)?), r.get(1)?)),
        )?;
        Ok(rows)
    }

    /// Whether a host CA key signed a certificate still valid at `now`.
    pub fn host_ca_key_in_use(&self, ca_fingerprint: &str, now: u64) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM host_certificates WHERE ca_fingerprint = ?1 AND valid_before > ?2 LIMIT 1",
                params![ca_fingerprint, to_i64(now)],
                |_| Ok(()),
                )?
            .is_some())
    }

    fn query_host_certificates(
        &self,
        clause: &str,
        args: &[Value<'_>],
    ) -> Result<Vec<HostCertRecord>> {
        let sql = format!("SELECT {CERT_COLUMNS} FROM host_certificates {clause}");
        let rows = self.all(&sql, args, cert_row)?;
        rows.into_iter()
            .map(|(mut c, principals)| {
                c.principals = parse_list(&principals)?;
                Ok(c)
            })
            .collect()
    }

    // --- renewal challenges ---

    /// Records a challenge for a host key. Expired challenges go, and a key keeps at most
    /// [`MAX_CHALLENGES_PER_KEY`] (the newest): the table stays as small as the fleet.
    pub fn put_host_challenge(
        &self,
        fingerprint: &str,
        nonce: &str,
        serial: u64,
        now: u64,
        expires_at: u64,
    ) -> Result<()> {
        self.exec(
            "DELETE FROM host_challenges WHERE expires_at <= ?1",
            params![to_i64(now)],
        )?;
        self.exec(
            "DELETE FROM host_challenges WHERE fingerprint = ?1 AND nonce NOT IN
               (SELECT nonce FROM host_challenges WHERE fingerprint = ?1
                ORDER BY expires_at DESC LIMIT ?2)",
            params![fingerprint, MAX_CHALLENGES_PER_KEY - 1],
        )?;
        self.exec(
            "INSERT INTO host_challenges (nonce, fingerprint, serial, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![nonce, fingerprint, to_i64(serial), to_i64(expires_at)],
        )?;
        Ok(())
    }

    /// Removes and returns the challenge `nonce` of a host key as (serial, expires_at):
    /// each nonce is answered at most once.
    pub fn take_host_challenge(
        &self,
        fingerprint: &str,
        nonce: &str,
    ) -> Result<Option<(u64, u64)>> {
        let found = self.opt(
            "SELECT serial, expires_at FROM host_challenges WHERE nonce = ?1 AND fingerprint = ?2",
            params![nonce, fingerprint],
            |r| Ok((to_u64(r.get(0)?), to_u64(r.get(1)?))),
        )?;
        if found.is_some() {
            self.exec(
                "DELETE FROM host_challenges WHERE nonce = ?1",
                params![nonce],
            )?;
        }
        Ok(found)
    }
}

/// Most outstanding renewal challenges one host key may have.
pub const MAX_CHALLENGES_PER_KEY: i64 = 8;
