//! CA sessions from SSO sign-ins: trading a verified ID token for a session, authenticating
//! a session credential, ending one (logout), and the groups a user stands with when a
//! pending request is re-checked.

use super::*;

use crate::sso::SsoVerifier;
use crate::store::SessionRecord;

/// A session just created: the credential (returned once, never stored) and its record.
#[derive(Debug)]
pub struct NewSession {
    /// The `mcs_...` credential.
    pub token: Token,
    /// The session as stored.
    pub session: SessionRecord,
}

impl Authority {
    /// Accepts sign-ins through this identity provider.
    pub fn with_sso(mut self, sso: Arc<SsoVerifier>) -> Self {
        self.sso = Some(sso);
        self
    }

    /// The identity provider people sign in through, when configured.
    pub fn sso(&self) -> Option<&Arc<SsoVerifier>> {
        self.sso.as_ref()
    }

    /// Trades an ID token for a session. The token is verified first (this may fetch the
    /// provider's keys); then one transaction consumes its hash (so it makes one session
    /// only), creates the user on their first sign-in, and stores the session. Every
    /// refusal is audited as `session.refused` and is UNAUTHENTICATED.
    pub fn create_session_at(
        &self,
        id_token: &Token,
        nonce: &str,
        peer: &str,
        now: UnixTime,
    ) -> Result<NewSession> {
        let Some(sso) = &self.sso else {
            return Err(Error::FailedPrecondition(
                "this CA has no [sso] section; sign in with a token from the operator".into(),
            ));
        };
        let sign_in = match sso.verify_at(id_token.expose(), nonce, now) {
            Ok(s) => s,
            Err(rejected) => return Err(self.refuse_session(peer, &rejected.0, None, now)),
        };
        let token = Token::generate_session();
        let session = SessionRecord {
            id: auth::new_session_id(),
            user: sign_in.user.clone(),
            groups: sign_in.groups.clone(),
            issuer: sign_in.issuer.clone(),
            created_at: now,
            expires_at: sign_in.session_expires_at,
            ended_at: None,
        };
        let hash = token.hash();
        let created = self.store.transact(|tx| {
            if !tx.consume_id_token(&sign_in.token_hash, sign_in.token_expires_at)? {
                return Err(Error::Unauthenticated(
                    "ID token was already traded for a session; sign in again with `moshca auth login`"
                        .into(),
                ));
            }
            let user = &sign_in.user;
            match tx.user_sso(user)? {
                None => {
                    tx.insert_sso_user(user, now)?;
                    tx.append_audit(&Event::new(
                        now,
                        user,
                        "user.added",
                        None,
                        json!({ "user": user, "source": "sso", "issuer": sign_in.issuer }),
                    ))?;
                }
                Some(false) => {
                    return Err(Error::Unauthenticated(format!(
                        "user {user} is a token user on this CA; an operator allows SSO for it with `moshca-server user link-sso {user}`"
                    )));
                }
                Some(true) => {}
            }
            if tx.user(user)?.is_some_and(|u| u.disabled) {
                return Err(Error::Unauthenticated(format!(
                    "user {user} is disabled on this CA; ask the CA operator"
                )));
            }
            tx.insert_session(&hash, &session)?;
            tx.append_audit(&Event::new(
                now,
                user,
                "session.created",
                None,
                json!({
                    "user": user,
                    "session_id": session.id,
                    "issuer": session.issuer,
                    "groups": session.groups,
                    "expires_at": session.expires_at,
                    "peer": peer,
                }),
            ))?;
            Ok(())
        });
        match created {
            Ok(()) => {
                tracing::info!(
                    user = %session.user,
                    session_id = %session.id,
                    groups = session.groups.len(),
                    "session created"
                );
                Ok(NewSession { token, session })
            }
            Err(Error::Unauthenticated(reason)) => {
                let who = Some((sign_in.user.as_str(), sign_in.issuer.as_str()));
                Err(self.refuse_session(peer, &reason, who, now))
            }
            Err(e) => Err(e),
        }
    }

    /// Audits a refused sign-in in its own transaction; the error to return.
    fn refuse_session(
        &self,
        peer: &str,
        reason: &str,
        who: Option<(&str, &str)>,
        now: UnixTime,
    ) -> Error {
        let mut details = json!({ "peer": peer, "reason": reason });
        if let Some((user, issuer)) = who {
            details["user"] = json!(user);
            details["issuer"] = json!(issuer);
        }
        tracing::warn!(peer, reason = %text::one_line(reason), "sign-in refused");
        match self.audit(Event::new(
            now,
            who.map_or("anonymous", |(u, _)| u),
            "session.refused",
            None,
            details,
        )) {
            Ok(()) => Error::Unauthenticated(reason.to_owned()),
            Err(e) => e,
        }
    }

    /// Resolves a session credential to a caller with the session's groups, and the time
    /// the session ends; failures are audited. One indexed read.
    pub fn authenticate_session_at(
        &self,
        token: &Token,
        peer: &str,
        now: UnixTime,
    ) -> Result<(Caller, UnixTime)> {
        let hash = token.hash();
        let standing = self.store.read(|tx| tx.session_standing(&hash))?;
        let (reason, message) = match standing {
            None => (
                "unknown session",
                "your CA session is not known to this CA; run `moshca auth login`".to_owned(),
            ),
            Some(s) if s.session.ended_at.is_some() => (
                "ended session",
                "your CA session was ended; run `moshca auth login`".to_owned(),
            ),
            Some(s) if s.user_disabled => (
                "disabled user",
                format!(
                    "user {} is disabled on this CA; ask the CA operator",
                    s.session.user
                ),
            ),
            Some(s) if s.session.expires_at <= now => (
                "expired session",
                format!(
                    "your CA session expired at {}; run `moshca auth login`",
                    fmt_time(s.session.expires_at)
                ),
            ),
            // Removing `[sso]`, or pointing it at another provider, ends the sessions the old
            // provider vouched for: the operator's change must not wait for `session_ttl`.
            Some(s)
                if self
                    .sso
                    .as_ref()
                    .is_none_or(|sso| sso.config().issuer != s.session.issuer) =>
            {
                (
                    "ended session",
                    "your CA session came from an identity provider this CA no longer trusts; run `moshca auth login`, or ask the CA operator".to_owned(),
                )
            }
            Some(s) => {
                return Ok((
                    Caller {
                        name: s.session.user,
                        groups: s.session.groups,
                        proof: Proof::Session { hash },
                    },
                    s.session.expires_at,
                ));
            }
        };
        self.record_auth_failure_at(peer, reason, now)?;
        Err(Error::Unauthenticated(message))
    }

    /// The session behind a caller authenticated by one (for WhoAmI).
    pub fn session_of(&self, caller: &Caller) -> Result<Option<SessionRecord>> {
        let Proof::Session { hash } = &caller.proof else {
            return Ok(None);
        };
        Ok(self
            .store
            .read(|tx| tx.session_standing(hash))?
            .map(|s| s.session))
    }

    /// Ends the session that authenticated this call (logout); returns its id. Audited.
    pub fn end_session_at(&self, caller: &Caller, now: UnixTime) -> Result<String> {
        let Proof::Session { hash } = &caller.proof else {
            return Err(Error::FailedPrecondition(
                "this call is authenticated by a token, not a CA session; there is no session to end".into(),
            ));
        };
        self.store.transact(|tx| {
            let s = tx
                .session_standing(hash)?
                .ok_or_else(|| {
                    Error::Unauthenticated(
                        "your CA session was ended; run `moshca auth login`".into(),
                    )
                })?
                .session;
            if !tx.end_session(&s.id, now)? {
                return Err(Error::Unauthenticated(
                    "your CA session was ended; run `moshca auth login`".into(),
                ));
            }
            tx.append_audit(&Event::new(
                now,
                &s.user,
                "session.ended",
                None,
                json!({ "user": s.user, "session_id": s.id }),
            ))?;
            Ok(s.id)
        })
    }
}

/// The groups a user stands with at `now`: those the operator gave them, and those of
/// their newest live session (the identity provider's, as of that sign-in). A user whose
/// sessions all ended keeps only the operator's.
pub(super) fn standing_groups(
    tx: &Tx<'_>,
    user: &store::User,
    now: UnixTime,
) -> Result<Vec<String>> {
    let mut groups = user.groups.clone();
    for g in tx.live_session_groups(&user.name, now)?.unwrap_or_default() {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = 1_790_000_000;
    const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"

[[role]]
name = "auto"
requesters = ["group:oncall"]
approval = "auto"
logins = ["deploy"]
max_ttl = "10m"
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        auth: Authority,
        store: Arc<Store>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::generate(&dir.path().join("ca"), None, "t").unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        store
            .transact(|tx| tx.insert_user("bob", &["leads".into()], 0).map(|_| ()))
            .unwrap();
        let policy = Policy::parse(POLICY, "p", 86_400).unwrap();
        let sso = crate::sso::SsoVerifier::with_jwks(
            &sso_config(ISSUER),
            crate::config::JwksSource::File(dir.path().join("jwks.json")),
        );
        Fixture {
            auth: Authority::new(store.clone(), signer, policy, 0)
                .unwrap()
                .with_sso(Arc::new(sso)),
            store,
            _dir: dir,
        }
    }

    const ISSUER: &str = "https://login.example.com";

    fn sso_config(issuer: &str) -> crate::config::Sso {
        crate::config::Sso {
            issuer: issuer.into(),
            client_id: "moshca".into(),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            scopes: vec!["openid".into()],
            required_claims: Vec::new(),
            session_ttl: 8 * 3600,
            clock_leeway: 30,
            jwks_cache_ttl: 300,
        }
    }

    /// A session of the SSO user `sam` in group oncall, authenticated: its caller.
    fn signed_in(f: &Fixture) -> (Caller, String) {
        let token = Token::generate_session();
        let id = auth::new_session_id();
        f.store
            .transact(|tx| {
                tx.insert_sso_user("sam", T0)?;
                tx.insert_session(
                    &token.hash(),
                    &SessionRecord {
                        id: id.clone(),
                        user: "sam".into(),
                        groups: vec!["oncall".into()],
                        issuer: ISSUER.into(),
                        created_at: T0,
                        expires_at: T0 + 3600,
                        ended_at: None,
                    },
                )
            })
            .unwrap();
        let (caller, expires_at) = f.auth.authenticate_token_at(&token, "p", T0).unwrap();
        assert_eq!(expires_at, Some(T0 + 3600));
        assert_eq!(caller.groups, ["oncall"]);
        (caller, id)
    }

    fn new_request(role: &str, login: &str) -> NewRequest {
        NewRequest {
            role: role.into(),
            principals: vec![login.into()],
            ttl_secs: Some(300),
            reason: "INC-1 disk full".into(),
            public_key: ssh_key::PrivateKey::random(
                &mut rand::rngs::OsRng,
                ssh_key::Algorithm::Ed25519,
            )
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap(),
            break_glass: false,
        }
    }

    fn bob() -> Caller {
        Caller {
            name: "bob".into(),
            groups: vec!["leads".into()],
            proof: Proof::Account,
        }
    }

    #[test]
    fn sessions_end_when_the_ca_stops_trusting_their_identity_provider() {
        let f = fixture();
        let token = Token::generate_session();
        f.store
            .transact(|tx| {
                tx.insert_sso_user("sam", T0)?;
                tx.insert_session(
                    &token.hash(),
                    &SessionRecord {
                        id: auth::new_session_id(),
                        user: "sam".into(),
                        groups: vec!["oncall".into()],
                        issuer: ISSUER.into(),
                        created_at: T0,
                        expires_at: T0 + 3600,
                        ended_at: None,
                    },
                )
            })
            .unwrap();
        assert!(f.auth.authenticate_token_at(&token, "p", T0).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::parse(POLICY, "p", 86_400).unwrap();
        let signer = Signer::generate(&dir.path().join("ca"), None, "t").unwrap();
        let without = Authority::new(f.store.clone(), signer, policy.clone(), 0).unwrap();
        let signer = Signer::generate(&dir.path().join("ca2"), None, "t").unwrap();
        let elsewhere = Authority::new(f.store.clone(), signer, policy, 0)
            .unwrap()
            .with_sso(Arc::new(crate::sso::SsoVerifier::with_jwks(
                &sso_config("https://other.example.com"),
                crate::config::JwksSource::File(dir.path().join("jwks.json")),
            )));
        for a in [&without, &elsewhere] {
            let e = a.authenticate_token_at(&token, "p", T0 + 1).unwrap_err();
            assert!(
                matches!(e, Error::Unauthenticated(ref m) if m.contains("no longer trusts")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_session_ended_after_authentication_issues_nothing() {
        let f = fixture();
        let (caller, id) = signed_in(&f);
        // Authenticated; then the operator revokes the session before the call issues.
        f.store.transact(|tx| tx.end_session(&id, T0 + 1)).unwrap();
        let e = f
            .auth
            .create_request_at(&caller, new_request("auto", "deploy"), T0 + 2)
            .unwrap_err();
        assert!(
            matches!(e, Error::Unauthenticated(ref m) if m.contains("CA session")),
            "{e}"
        );
        let issued = f
            .store
            .read(|tx| tx.live_certificates_of("sam", T0 + 2))
            .unwrap();
        assert!(issued.is_empty());
    }

    #[test]
    fn a_pending_request_is_approved_on_the_session_groups_and_not_once_they_are_gone() {
        let f = fixture();
        let (caller, id) = signed_in(&f);
        let req = f
            .auth
            .create_request_at(&caller, new_request("db", "postgres"), T0 + 1)
            .unwrap();
        // Approved while the session (and its groups) stand: issued.
        let view = f
            .auth
            .review_at(
                &bob(),
                &req.request.id,
                Verdict::Approve,
                None,
                "ok",
                T0 + 2,
            )
            .unwrap();
        assert_eq!(view.request.state, State::Issued);
        // A second request, then the session ends: sam no longer stands in group oncall.
        let req = f
            .auth
            .create_request_at(&caller, new_request("db", "postgres"), T0 + 3)
            .unwrap();
        f.store.transact(|tx| tx.end_session(&id, T0 + 4)).unwrap();
        let e = f
            .auth
            .review_at(
                &bob(),
                &req.request.id,
                Verdict::Approve,
                None,
                "ok",
                T0 + 5,
            )
            .unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        let stored = f
            .store
            .read(|tx| tx.request(&req.request.id))
            .unwrap()
            .unwrap();
        assert_ne!(stored.state, State::Issued);
    }
}
