//! SQL of the CA public keys: registered, retired, and which ones hosts must still trust.
//! Typed reads and writes; decides nothing.

use super::sql::params;

use super::{Result, Tx, to_i64};

impl Tx<'_> {
    /// Registers a CA public key as trusted; `false` if it already was registered.
    pub fn insert_ca_key(&self, fingerprint: &str, public_key: &str, now: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO ca_keys (fingerprint, public_key, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![fingerprint, public_key, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Whether a key with this fingerprint is, or was, one of the CA's keys.
    pub fn is_ca_key(&self, fingerprint: &str) -> Result<bool> {
        Ok(self
            .opt(
                "SELECT 1 FROM ca_keys WHERE fingerprint = ?1",
                params![fingerprint],
                |_| Ok(()),
            )?
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
        let rows = self.all(
            "SELECT public_key FROM ca_keys k
             WHERE k.retired_at IS NULL OR k.fingerprint = ?1
                OR EXISTS (SELECT 1 FROM certificates c
                           WHERE c.ca_fingerprint = k.fingerprint AND c.valid_before > ?2)
             ORDER BY (k.fingerprint = ?1) DESC, k.created_at DESC, k.fingerprint",
            params![active, to_i64(now)],
            |r| r.get(0),
        )?;
        Ok(rows)
    }

    /// Fingerprints of the CA keys not retired: the key the replicas sign with.
    pub fn active_ca_keys(&self) -> Result<Vec<String>> {
        self.all(
            "SELECT fingerprint FROM ca_keys WHERE retired_at IS NULL ORDER BY created_at DESC",
            params![],
            |r| r.get(0),
        )
    }
}
