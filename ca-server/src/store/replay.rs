//! SQL of workload token ids already used (until their token expires), so a token is
//! accepted once. Typed reads and writes; decides nothing.

use super::sql::params;

use super::{Result, Tx, to_i64};

impl Tx<'_> {
    /// Records a token id as used; `false` if it was used before.
    pub fn insert_jti(&self, issuer: &str, jti: &str, expires_at: u64) -> Result<bool> {
        let n = self.exec("INSERT INTO seen_jti (issuer, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING", params![issuer, jti, to_i64(expires_at)])?;
        Ok(n == 1)
    }

    /// Forgets token ids whose tokens have expired (with leeway) by `now`.
    pub fn purge_jti(&self, now: u64, leeway: u64) -> Result<usize> {
        self.exec(
            "DELETE FROM seen_jti WHERE expires_at + ?2 < ?1",
            params![to_i64(now), to_i64(leeway)],
        )
    }
}
