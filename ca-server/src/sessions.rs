//! CA sessions for the operator's `moshca-server session` commands and `user link-sso`.
//!
//! Works on the store directly, so the commands run while the server serves; every change
//! is audited. Sessions are made by sign-ins (`authority`), never here; only their public
//! ids are shown.

use serde_json::json;

use crate::audit::Event;
use crate::auth;
use crate::store::{self, SessionRecord, Store, UserSource};

/// Why a session command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Nothing matched.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What `session revoke` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One session by its public id.
    Id(String),
    /// Every session of a user.
    User(String),
}

/// Sessions, newest first: live ones unless `all`, of one user or everyone.
pub fn list(
    store: &Store,
    user: Option<&str>,
    all: bool,
    now: u64,
) -> Result<Vec<SessionRecord>, Error> {
    Ok(store.read(|tx| tx.sessions(user, !all, now))?)
}

/// Ends sessions at once; returns how many ended. Audited as `session.revoked`.
pub fn revoke(store: &Store, target: &RevokeTarget, now: u64) -> Result<u64, Error> {
    store.transact(|tx| {
        let (count, details) = match target {
            RevokeTarget::Id(id) => {
                if !auth::valid_session_id(id) {
                    return Err(Error::Invalid(format!(
                        "{id:?} is not a session id (ses_ and 16 hex digits); `moshca-server session list` shows them"
                    )));
                }
                let Some(s) = tx.session_by_id(id)? else {
                    return Err(Error::NotFound(format!(
                        "no session {id}; `moshca-server session list --all` shows them"
                    )));
                };
                if !tx.end_session(id, now)? {
                    return Err(Error::NotFound(format!(
                        "session {id} already ended; nothing to do"
                    )));
                }
                (1, json!({ "session_id": id, "user": s.user, "count": 1 }))
            }
            RevokeTarget::User(user) => {
                if tx.user(user)?.is_none() {
                    return Err(Error::NotFound(format!(
                        "no user named {user:?}; `moshca-server user list` shows them"
                    )));
                }
                let n = tx.end_sessions_of(user, now)?;
                (n, json!({ "user": user, "count": n }))
            }
        };
        tx.append_audit(&Event::new(
            now,
            "operator",
            "session.revoked",
            None,
            details,
        ))?;
        Ok(count)
    })
}

/// Lets a token user also sign in through SSO under the same name. Audited as
/// `user.sso_linked`.
pub fn link_sso(store: &Store, name: &str, now: u64) -> Result<(), Error> {
    store.transact(|tx| {
        match tx.user_sso(name)? {
            None => {
                return Err(Error::NotFound(format!(
                    "no user named {name:?}; `moshca-server user list` shows them"
                )));
            }
            Some(true) => return Ok(()),
            Some(false) => {}
        }
        tx.set_user_sso(name)?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            "user.sso_linked",
            None,
            json!({ "user": name }),
        ))?;
        Ok(())
    })
}

/// How each user signs in, by name.
pub fn sources(store: &Store) -> Result<Vec<UserSource>, Error> {
    Ok(store.read(|tx| tx.user_sources())?)
}

impl UserSource {
    /// `token`, `sso` or `token+sso`, as `user list` shows it.
    pub fn label(&self) -> &'static str {
        match (self.token, self.sso) {
            (true, true) => "token+sso",
            (false, true) => "sso",
            _ => "token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, user: &str, at: u64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            user: user.into(),
            groups: vec!["oncall".into()],
            issuer: "https://login.example.com".into(),
            created_at: at,
            expires_at: at + 100,
            ended_at: None,
        }
    }

    #[test]
    fn list_revoke_and_link() {
        let s = Store::open_in_memory().unwrap();
        crate::users::add(&s, "bob", &[], 1).unwrap();
        let (a, b) = ("ses_00000000000000aa", "ses_00000000000000bb");
        s.transact(|tx| {
            assert!(tx.insert_sso_user("alice", 1)?);
            tx.insert_session("h1", &session(a, "alice", 10))?;
            tx.insert_session("h2", &session(b, "alice", 20))
        })
        .unwrap();
        assert_eq!(list(&s, None, false, 30).unwrap().len(), 2);
        assert_eq!(list(&s, None, false, 115).unwrap()[0].id, b);
        assert_eq!(revoke(&s, &RevokeTarget::Id(a.into()), 31).unwrap(), 1);
        assert!(matches!(
            revoke(&s, &RevokeTarget::Id(a.into()), 32),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            revoke(&s, &RevokeTarget::Id("ses_x".into()), 32),
            Err(Error::Invalid(_))
        ));
        assert_eq!(list(&s, Some("alice"), false, 33).unwrap().len(), 1);
        assert_eq!(
            revoke(&s, &RevokeTarget::User("alice".into()), 34).unwrap(),
            1
        );
        assert!(list(&s, None, false, 35).unwrap().is_empty());
        assert_eq!(list(&s, None, true, 35).unwrap().len(), 2);
        let labels: Vec<_> = sources(&s).unwrap().iter().map(|u| u.label()).collect();
        assert_eq!(labels, ["sso", "token"]);
        link_sso(&s, "bob", 36).unwrap();
        assert!(matches!(
            link_sso(&s, "nobody", 36),
            Err(Error::NotFound(_))
        ));
        let labels: Vec<_> = sources(&s).unwrap().iter().map(|u| u.label()).collect();
        assert_eq!(labels, ["sso", "token+sso"]);
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
                "session.revoked",
                "session.revoked",
                "user.sso_linked"
            ]
        );
    }
}
