//! User accounts and their bearer tokens, for the operator's `moshca-server user` commands.
//!
//! Works on the store directly, so the commands run while the server serves; every change
//! is audited. A token is returned once, to be printed once; only its hash is stored.

use serde_json::json;

use crate::audit::Event;
use crate::auth::Token;
use crate::policy::valid_name;
use crate::store::{self, Store, User};

/// Why a user command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad name or group.
    #[error("{0}")]
    Invalid(String),
    /// No such user.
    #[error("no user named {0:?}; `moshca-server user list` shows them")]
    NotFound(String),
    /// Name taken.
    #[error("user {0:?} already exists; use `moshca-server user token {0}` for a new token")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Adds a user and returns their first token.
pub fn add(store: &Store, name: &str, groups: &[String], now: u64) -> Result<Token, Error> {
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
    let token = Token::generate();
    store.transact(|tx| {
        if !tx.insert_user(name, &groups, now)? {
            return Err(Error::Exists(name.to_owned()));
        }
        tx.insert_token(&token.hash(), name, now)?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.added",
            None,
            json!({ "user": name, "groups": groups }),
        ))?;
        Ok(())
    })?;
    Ok(token)
}

/// Issues an additional token for an existing user.
pub fn new_token(store: &Store, name: &str, now: u64) -> Result<Token, Error> {
    let token = Token::generate();
    store.transact(|tx| {
        if tx.user(name)?.is_none() {
            return Err(Error::NotFound(name.to_owned()));
        }
        tx.insert_token(&token.hash(), name, now)?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.token_issued",
            None,
            json!({ "user": name }),
        ))?;
        Ok(())
    })?;
    Ok(token)
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
