//! User accounts and their bearer tokens, for the operator's `moshca-server user` commands.
//!
//! Works on the store directly, so the commands run while the server serves; every change
//! is audited. A token is returned once, to be printed once; only its hash is stored.
//! Each token has a public id and an expiry, and can be revoked alone by its id.

use serde_json::json;

use crate::audit::Event;
use crate::auth::{self, Token};
use crate::policy::{fmt_secs, valid_name};
use crate::store::{self, Store, TokenRecord, User};

/// Shortest lifetime `--expires` accepts.
pub const MIN_TOKEN_LIFETIME_SECS: u64 = 60;
/// Longest lifetime `--expires` accepts (two years).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 2 * 365 * 24 * 3600;

/// A token just made: the value (shown once), its public id and expiry.
#[derive(Debug)]
pub struct Issued {
    /// The token itself.
    pub token: Token,
    /// Its public id.
    pub id: String,
    /// When it stops working.
    pub expires_at: u64,
}

/// Why a user command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad name or group.
    #[error("{0}")]
    Invalid(String),
    /// No such user.
    #[error("no user named {0:?}; `moshca-server user list` shows them")]
    NotFound(String),
    /// No such token, or it was already revoked.
    #[error("no token {0:?} that still works; `moshca-server user tokens NAME` lists them")]
    TokenNotFound(String),
    /// Name taken.
    #[error("user {0:?} already exists; use `moshca-server user token {0}` for a new token")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Adds a user and returns their first token, valid for the default 90 days.
pub fn add(store: &Store, name: &str, groups: &[String], now: u64) -> Result<Token, Error> {
    Ok(add_expiring(store, name, groups, auth::DEFAULT_TOKEN_LIFETIME_SECS, now)?.token)
}

/// Refuses a token lifetime outside [`MIN_TOKEN_LIFETIME_SECS`]..=[`MAX_TOKEN_LIFETIME_SECS`].
fn check_lifetime(lifetime: u64) -> Result<(), Error> {
    if (MIN_TOKEN_LIFETIME_SECS..=MAX_TOKEN_LIFETIME_SECS).contains(&lifetime) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--expires {} is outside {}..{}; give e.g. 30d or 90d",
        fmt_secs(lifetime),
        fmt_secs(MIN_TOKEN_LIFETIME_SECS),
        fmt_secs(MAX_TOKEN_LIFETIME_SECS)
    )))
}

/// Adds a user and returns their first token, which expires `lifetime` seconds from `now`.
pub fn add_expiring(
    store: &Store,
    name: &str,
    groups: &[String],
    lifetime: u64,
    now: u64,
) -> Result<Issued, Error> {
    check_lifetime(lifetime)?;
    if !valid_name(name) {
        return Err(Error::Invalid(format!(
            "user name {name:?} must match [A-Za-z0-9._-]{{1,64}}"
        )));
    }
    if let Some(g) = groups.iter().find(|g| !valid_name(g)) {
        return Err(Error::Invalid(format!(
            "group name {g:?} must match [A-Za-z0-9._-]{{1,64}}"
        )));
    }
    let mut groups = groups.to_vec();
    groups.sort();
    groups.dedup();
    let issued = fresh(lifetime, now);
    store.transact(|tx| {
        if !tx.insert_user(name, &groups, now)? {
            return Err(Error::Exists(name.to_owned()));
        }
        tx.insert_token_with_id(
            &issued.id,
            &issued.token.hash(),
            name,
            now,
            issued.expires_at,
        )?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.added",
            None,
            json!({ "user": name, "groups": groups, "token_id": issued.id,
                    "expires_at": issued.expires_at }),
        ))?;
        Ok(())
    })?;
    Ok(issued)
}

fn fresh(lifetime: u64, now: u64) -> Issued {
    Issued {
        token: Token::generate(),
        id: auth::new_token_id(),
        expires_at: now + lifetime,
    }
}

/// Issues an additional token for an existing user, valid for the default 90 days.
pub fn new_token(store: &Store, name: &str, now: u64) -> Result<Token, Error> {
    Ok(issue_token(store, name, auth::DEFAULT_TOKEN_LIFETIME_SECS, now)?.token)
}

/// Issues an additional token for an existing user, expiring `lifetime` seconds from
/// `now`. The user's other tokens keep working until they expire or are revoked.
pub fn issue_token(store: &Store, name: &str, lifetime: u64, now: u64) -> Result<Issued, Error> {
    check_lifetime(lifetime)?;
    let issued = fresh(lifetime, now);
    store.transact(|tx| {
        if tx.user(name)?.is_none() {
            return Err(Error::NotFound(name.to_owned()));
        }
        tx.insert_token_with_id(
            &issued.id,
            &issued.token.hash(),
            name,
            now,
            issued.expires_at,
        )?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.token_issued",
            None,
            json!({ "user": name, "token_id": issued.id, "expires_at": issued.expires_at }),
        ))?;
        Ok(())
    })?;
    Ok(issued)
}

/// A user's tokens (ids, times, state; never the tokens themselves).
pub fn tokens(store: &Store, name: &str) -> Result<Vec<TokenRecord>, Error> {
    store.read(|tx| {
        if tx.user(name)?.is_none() {
            return Err(Error::NotFound(name.to_owned()));
        }
        Ok(tx.tokens_of(name)?)
    })
}

/// Revokes one token by its public id; it stops working at once. Audited.
pub fn revoke_token(store: &Store, id: &str, now: u64) -> Result<TokenRecord, Error> {
    if !auth::valid_token_id(id) {
        return Err(Error::Invalid(format!(
            "{id:?} is not a token id (tok_ and 16 hex digits); `moshca-server user tokens NAME` lists them"
        )));
    }
    store.transact(|tx| {
        if !tx.revoke_token(id)? {
            return Err(Error::TokenNotFound(id.to_owned()));
        }
        let record = tx
            .token_by_id(id)?
            .ok_or_else(|| Error::TokenNotFound(id.to_owned()))?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.token_revoked",
            None,
            json!({ "user": record.user, "token_id": id }),
        ))?;
        Ok(record)
    })
}

/// Disables or re-enables a user; a disabled user's tokens stop working at once.
pub fn set_disabled(store: &Store, name: &str, disabled: bool, now: u64) -> Result<(), Error> {
    store.transact(|tx| {
        if !tx.set_user_disabled(name, disabled)? {
            return Err(Error::NotFound(name.to_owned()));
        }
        let action = if disabled {
            "user.disabled"
        } else {
            "user.enabled"
        };
        tx.append_audit(&Event::new(
            now,
            "operator",
            action,
            None,
            json!({ "user": name }),
        ))?;
        Ok(())
    })
}

/// All users.
pub fn list(store: &Store) -> Result<Vec<User>, Error> {
    Ok(store.read(|tx| tx.users())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_token_disable_enable() {
        let s = Store::open_in_memory().unwrap();
        let t = add(&s, "bob", &["leads".into(), "leads".into()], 1).unwrap();
        assert!(matches!(add(&s, "bob", &[], 1), Err(Error::Exists(_))));
        assert!(matches!(add(&s, "bo b", &[], 1), Err(Error::Invalid(_))));
        assert!(matches!(
            add(&s, "x", &["a:b".into()], 1),
            Err(Error::Invalid(_))
        ));
        let caller = s
            .read(|tx| tx.caller_by_token(&t.hash(), 2))
            .unwrap()
            .unwrap();
        assert_eq!(caller.groups, ["leads"]);
        let t2 = new_token(&s, "bob", 2).unwrap();
        set_disabled(&s, "bob", true, 3).unwrap();
        assert!(
            s.read(|tx| tx.caller_by_token(&t.hash(), 4))
                .unwrap()
                .is_none()
        );
        assert!(
            s.read(|tx| tx.caller_by_token(&t2.hash(), 4))
                .unwrap()
                .is_none()
        );
        set_disabled(&s, "bob", false, 5).unwrap();
        assert!(
            s.read(|tx| tx.caller_by_token(&t2.hash(), 6))
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            set_disabled(&s, "nobody", true, 1),
            Err(Error::NotFound(_))
        ));
        let actions: Vec<String> = s
            .read(|tx| tx.audit_rows())
            .unwrap()
            .into_iter()
            .map(|r| r.event.action)
            .collect();
        assert_eq!(
            actions,
            [
                "user.added",
                "user.token_issued",
                "user.disabled",
                "user.enabled"
            ]
        );
        // The token itself is never in the audit trail.
        let rows = format!("{:?}", s.read(|tx| tx.audit_rows()).unwrap());
        assert!(!rows.contains(t.expose()) && !rows.contains(&t.hash()));
    }
}
