//! SQL of users and their bearer tokens (hash only, with a public id). Typed reads and
//! writes; decides nothing.

use super::sql::{Row, params};

use super::{Result, Tx, json_list, parse_list, to_i64, to_u64};
use crate::auth::Caller;

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

/// A [`TokenRecord`] from the first six columns of a row.
fn token_record(r: &Row<'_>) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        created_at: to_u64(r.get(2)?),
        expires_at: r.get::<Option<i64>>(3)?.map(to_u64),
        last_used_at: r.get::<Option<i64>>(4)?.map(to_u64),
        revoked: r.get::<i64>(5)? != 0,
    })
}

impl Tx<'_> {
    /// Adds a user; `false` if the name is taken.
    pub fn insert_user(&self, name: &str, groups: &[String], now: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO users (name, groups, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![name, json_list(groups), to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.opt(
            "SELECT name, groups, disabled, created_at FROM users WHERE name = ?1",
            params![name],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<i64>(2)?,
                    r.get::<i64>(3)?,
                ))
            },
        )?
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
        let names: Vec<String> =
            self.all("SELECT name FROM users ORDER BY name", params![], |r| {
                r.get(0)
            })?;
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
        self.exec(
            "INSERT INTO tokens (hash, user_name, created_at, id, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, user, to_i64(now), id, to_i64(expires_at)],
        )?;
        Ok(())
    }

    /// A token and its user by the token's hash, whatever its state, so authentication
    /// can say why it refuses one. One indexed read.
    pub fn token_standing(&self, hash: &str) -> Result<Option<TokenStanding>> {
        let row = self.opt(
            "SELECT t.id, t.user_name, t.created_at, t.expires_at, t.last_used_at, t.revoked,
                        u.groups, u.disabled
                 FROM tokens t JOIN users u ON u.name = t.user_name WHERE t.hash = ?1",
            params![hash],
            |r| Ok((token_record(r)?, r.get::<String>(6)?, r.get::<i64>(7)?)),
        )?;
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
        let rows = self.all(
            "SELECT id, user_name, created_at, expires_at, last_used_at, revoked FROM tokens
             WHERE user_name = ?1 ORDER BY created_at, id",
            params![user],
            token_record,
        )?;
        Ok(rows)
    }

    /// A token by its public id.
    pub fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.opt(
            "SELECT id, user_name, created_at, expires_at, last_used_at, revoked FROM tokens
                 WHERE id = ?1",
            params![id],
            token_record,
        )
    }

    /// Revokes a token by id; `false` if there is none or it was already revoked.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = self.exec(
            "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
            params![id],
        )?;
        Ok(n == 1)
    }

    /// Records that a token was used at `now`, unless a use within `granularity` seconds
    /// is already recorded.
    pub fn touch_token(&self, id: &str, now: u64, granularity: u64) -> Result<()> {
        // The threshold is computed here: PostgreSQL cannot type `?2 - ?3` (both
        // parameters unknown where the WHERE clause is read) and refuses the statement.
        self.exec(
            "UPDATE tokens SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at <= ?3)",
            params![id, to_i64(now), to_i64(now.saturating_sub(granularity))],
        )?;
        Ok(())
    }

    /// The enabled user a valid, unrevoked, unexpired token belongs to.
    pub fn caller_by_token(&self, hash: &str, now: u64) -> Result<Option<Caller>> {
        let row: Option<(String, String)> = self.opt(
            "SELECT u.name, u.groups FROM tokens t JOIN users u ON u.name = t.user_name
                 WHERE t.hash = ?1 AND t.revoked = 0 AND u.disabled = 0
                   AND (t.expires_at IS NULL OR t.expires_at > ?2)",
            params![hash, to_i64(now)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
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
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

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
}
