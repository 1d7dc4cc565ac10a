//! SQL of the CA public keys: registered, retired, and which ones hosts must still trust.
//! Typed reads and writes; decides nothing.

use rusqlite::{OptionalExtension as _, params};

use super::{Result, Tx, to_i64};

impl Tx<'_> {
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
}
