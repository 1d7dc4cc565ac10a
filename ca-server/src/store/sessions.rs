//! SQL of CA sessions from SSO sign-ins (hash only), the ID tokens already traded for
//! one, and which users may sign in through SSO. Typed reads and writes; decides nothing.

use super::sql::{Row, params};

use super::{Result, Tx, json_list, parse_list, to_i64, to_u64};

/// A session as stored: never the credential, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public id (`ses_...`).
    pub id: String,
    /// The user it authenticates.
    pub user: String,
    /// The identity provider's groups as of the sign-in.
    pub groups: Vec<String>,
    /// The issuer that vouched for the user.
    pub issuer: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; refused from then on.
    pub expires_at: u64,
    /// When it was revoked or logged out.
    pub ended_at: Option<u64>,
}

impl SessionRecord {
    /// Whether it still authenticates at `now` (its user aside).
    pub fn live_at(&self, now: u64) -> bool {
        self.ended_at.is_none() && now < self.expires_at
    }
}

/// What authentication learns from the hash of a presented session credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStanding {
    /// The session.
    pub session: SessionRecord,
    /// Whether its user is disabled.
    pub user_disabled: bool,
}

/// How a user may sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSource {
    /// User name.
    pub name: String,
    /// Whether the operator minted tokens for them.
    pub token: bool,
    /// Whether they may sign in through SSO.
    pub sso: bool,
}

const SESSION_COLUMNS: &str = "id, user_name, groups, issuer, created_at, expires_at, ended_at";

fn session_record(r: &Row<'_>) -> Result<(SessionRecord, String)> {
    Ok((
        SessionRecord {
            id: r.get(0)?,
            user: r.get(1)?,
            groups: Vec::new(),
            issuer: r.get(3)?,
            created_at: to_u64(r.get(4)?),
            expires_at: to_u64(r.get(5)?),
            ended_at: r.get::<Option<i64>>(6)?.map(to_u64),
        },
        r.get(2)?,
    ))
}

fn with_groups((mut s, groups): (SessionRecord, String)) -> Result<SessionRecord> {
    s.groups = parse_list(&groups)?;
    Ok(s)
}

impl Tx<'_> {
    /// Stores a new session under the hash of its credential.
    pub fn insert_session(&self, hash: &str, s: &SessionRecord) -> Result<()> {
        self.exec(
            "INSERT INTO sessions (hash, id, user_name, groups, issuer, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                hash,
                s.id,
                s.user,
                json_list(&s.groups),
                s.issuer,
                to_i64(s.created_at),
                to_i64(s.expires_at)
            ],
        )?;
        Ok(())
    }

    /// A session and its user's state by the credential's hash, whatever its state, so
    /// authentication can say why it refuses one. One indexed read.
    pub fn session_standing(&self, hash: &str) -> Result<Option<SessionStanding>> {
        let row = self.opt(
            "SELECT s.id, s.user_name, s.groups, s.issuer, s.created_at, s.expires_at, s.ended_at,
                        u.disabled
                 FROM sessions s JOIN users u ON u.name = s.user_name WHERE s.hash = ?1",
            params![hash],
            |r| Ok((session_record(r)?, r.get::<i64>(7)?)),
        )?;
        row.map(|(s, disabled)| {
            Ok(SessionStanding {
                session: with_groups(s)?,
                user_disabled: disabled != 0,
            })
        })
        .transpose()
    }

    /// A session by its public id.
    pub fn session_by_id(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.opt(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
            params![id],
            session_record,
        )?
        .map(with_groups)
        .transpose()
    }

    /// Sessions, newest first: of one user or all, live at `now` only or every one. A
    /// session of a disabled user is not live: the CA refuses it.
    pub fn sessions(
        &self,
        user: Option<&str>,
        live_only: bool,
        now: u64,
    ) -> Result<Vec<SessionRecord>> {
        let rows = self.all(
            &format!(
            "SELECT {SESSION_COLUMNS} FROM sessions
             WHERE (CAST(?1 AS TEXT) IS NULL OR user_name = ?1)
               AND (?2 = 0 OR (ended_at IS NULL AND expires_at > ?3
                    AND NOT EXISTS (SELECT 1 FROM users WHERE users.name = sessions.user_name AND users.disabled = 1)))
             ORDER BY created_at DESC, id"
            ),
            params![user, i64::from(live_only), to_i64(now)],
            session_record,
        )?;
        rows.into_iter().map(with_groups).collect()
    }

    /// Ends one session; `false` if there is none or it already ended.
    pub fn end_session(&self, id: &str, now: u64) -> Result<bool> {
        let n = self.exec(
            "UPDATE sessions SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
            params![id, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Ends every session of a user that has not ended; returns how many.
    pub fn end_sessions_of(&self, user: &str, now: u64) -> Result<u64> {
        let n = self.exec(
            "UPDATE sessions SET ended_at = ?2 WHERE user_name = ?1 AND ended_at IS NULL",
            params![user, to_i64(now)],
        )?;
        Ok(n as u64)
    }

    /// The groups of the user's newest session live at `now`, if any.
    pub fn live_session_groups(&self, user: &str, now: u64) -> Result<Option<Vec<String>>> {
        self.opt(
            "SELECT groups FROM sessions INDEXED BY sessions_by_user
             WHERE user_name = ?1 AND ended_at IS NULL AND expires_at > ?2
             ORDER BY created_at DESC LIMIT 1",
            params![user, to_i64(now)],
            |r| r.get::<String>(0),
        )?
        .map(|g| parse_list(&g))
        .transpose()
    }

    /// Remembers that an ID token was traded for a session, until `expires_at`; `false`
    /// if it already was.
    pub fn consume_id_token(&self, hash: &str, expires_at: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO consumed_id_tokens (hash, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![hash, to_i64(expires_at)],
        )?;
        Ok(n == 1)
    }

    /// Forgets consumed ID tokens expired before `before` (they cannot verify any more);
    /// returns how many.
    pub fn forget_consumed_id_tokens(&self, before: u64) -> Result<usize> {
        self.exec(
            "DELETE FROM consumed_id_tokens WHERE expires_at < ?1",
            params![to_i64(before)],
        )
    }

    /// Adds a user who signs in through SSO (no groups of their own, no token); `false`
    /// if the name is taken.
    pub fn insert_sso_user(&self, name: &str, now: u64) -> Result<bool> {
        let n = self.exec(
            "INSERT INTO users (name, groups, created_at, sso) VALUES (?1, '[]', ?2, 1) ON CONFLICT DO NOTHING",
            params![name, to_i64(now)],
        )?;
        Ok(n == 1)
    }

    /// Whether a user may sign in through SSO; `None` if there is no such user.
    pub fn user_sso(&self, name: &str) -> Result<Option<bool>> {
        Ok(self
            .opt(
                "SELECT sso FROM users WHERE name = ?1",
                params![name],
                |r| r.get::<i64>(0),
            )?
            .map(|v| v != 0))
    }

    /// Lets a user sign in through SSO; `false` if there is no such user.
    pub fn set_user_sso(&self, name: &str) -> Result<bool> {
        Ok(self.exec("UPDATE users SET sso = 1 WHERE name = ?1", params![name])? == 1)
    }

    /// How each user may sign in, by name.
    pub fn user_sources(&self) -> Result<Vec<UserSource>> {
        let rows = self.all(
            "SELECT u.name, EXISTS (SELECT 1 FROM tokens t WHERE t.user_name = u.name), u.sso
             FROM users u ORDER BY u.name",
            params![],
            |r| {
                Ok(UserSource {
                    name: r.get(0)?,
                    token: r.get::<i64>(1)? != 0,
                    sso: r.get::<i64>(2)? != 0,
                })
            },
        )?;
        Ok(rows)
    }
}
