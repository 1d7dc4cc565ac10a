//! SQL of user certificates: issuance records, serials, revocation, revoked subject keys
//! and the KRL version. Typed reads and writes; decides nothing.

use super::sql::{Value, params};

use super::{Result, Tx, json_list, parse_list, to_i64, to_u64};

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

impl Tx<'_> {
    /// Whether a serial is already used.
    pub fn serial_exists(&self, serial: u64) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM certificates WHERE serial = ?1",
                params![to_i64(serial)],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Stores an issued certificate.
    pub fn insert_certificate(&self, c: &CertRecord) -> Result<()> {
        self.exec(
            "INSERT INTO certificates (serial, request_id, key_id, principals, valid_after,
                 valid_before, fingerprint, ca_fingerprint, openssh, issued_at, requester, role,
                 revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
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
            ],
        )?;
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
        let rows = self.all(
            // No ORDER BY: it would turn the partial-index lookup into a full table scan;
            // the KRL encoder sorts.
            "SELECT serial, key_id, ca_fingerprint FROM certificates
             WHERE revoked_at IS NOT NULL AND valid_before > ?1",
            params![to_i64(now)],
            |r| {
                Ok(RevokedCert {
                    serial: to_u64(r.get(0)?),
                    key_id: r.get(1)?,
                    ca_fingerprint: r.get(2)?,
                })
            },
        )?;
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
            "INSERT INTO revoked_keys (fingerprint, public_key, reason, revoked_by, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![fingerprint, public_key, reason, by, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Whether a subject key is revoked.
    pub fn key_revoked(&self, fingerprint: &str) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM revoked_keys WHERE fingerprint = ?1",
                params![fingerprint],
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Every revoked subject key, OpenSSH text.
    pub fn revoked_keys(&self) -> Result<Vec<String>> {
        let rows = self.all(
            "SELECT public_key FROM revoked_keys ORDER BY fingerprint",
            params![],
            |r| r.get(0),
        )?;
        Ok(rows)
    }

    /// How many keys `by` revoked at or after `since` (and are still listed).
    pub fn keys_revoked_by_since(&self, by: &str, since: u64) -> Result<u64> {
        let n: i64 = self.one(
            "SELECT COUNT(*) FROM revoked_keys WHERE revoked_by = ?1 AND revoked_at >= ?2",
            params![by, to_i64(since)],
            |r| r.get(0),
        )?;
        Ok(to_u64(n))
    }

    /// Every revoked subject key as (fingerprint, OpenSSH text), by fingerprint.
    pub fn revoked_key_entries(&self) -> Result<Vec<(String, String)>> {
        let rows = self.all(
            "SELECT fingerprint, public_key FROM revoked_keys ORDER BY fingerprint",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows)
    }

    /// The KRL version now.
    pub fn krl_version(&self) -> Result<u64> {
        let v: i64 = self.one(
            "SELECT version FROM krl_state WHERE id = 1",
            params![],
            |r| r.get(0),
        )?;
        Ok(to_u64(v))
    }

    /// Increments the KRL version and returns the new one.
    pub fn bump_krl_version(&self) -> Result<u64> {
        self.exec(
            "UPDATE krl_state SET version = version + 1 WHERE id = 1",
            params![],
        )?;
        self.krl_version()
    }

    fn query_certificates(&self, clause: &str, args: &[Value<'_>]) -> Result<Vec<CertRecord>> {
        let sql = format!(
            "SELECT serial, request_id, key_id, principals, valid_after, valid_before,
                    fingerprint, ca_fingerprint, openssh, issued_at, requester, role, revoked_at
             FROM certificates {clause}"
        );
        let rows = self.all(&sql, args, |r| {
            Ok((
                (
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<String>(3)?,
                    r.get::<i64>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<String>(6)?,
                ),
                (
                    r.get::<String>(7)?,
                    r.get::<String>(8)?,
                    r.get::<i64>(9)?,
                    r.get::<String>(10)?,
                    r.get::<String>(11)?,
                    r.get::<Option<i64>>(12)?,
                ),
            ))
        })?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::req;

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
}
