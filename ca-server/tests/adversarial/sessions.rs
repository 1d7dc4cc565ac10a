//! Attacks on SSO sign-in: ID tokens that must not become CA sessions (wrong audience,
//! issuer, signature, nonce, age, replay, required claims, a token user's name, a disabled
//! user), sessions that must stop working (revoked, expired, disabled user, also for a
//! request already pending), and people's ID tokens kept apart from CI jobs' tokens.

use super::*;

use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex};

use moshca_server::{clock, sessions};

/// An identity provider on 127.0.0.1: a discovery document and a JWKS.
struct Idp {
    base: String,
    key: SigningKey,
    /// Served in place of the real JWKS when set (a key the provider rotated to).
    _jwks: Arc<Mutex<String>>,
}

struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    x: String,
}

fn signing_key() -> SigningKey {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&sk.to_bytes());
    SigningKey {
        encoding: jsonwebtoken::EncodingKey::from_ed_der(&der),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
    }
}

impl Idp {
    fn start() -> Idp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let key = signing_key();
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": key.x, "kid": "k1", "alg": "EdDSA"}]}).to_string();
        let jwks = Arc::new(Mutex::new(jwks));
        let discovery =
            serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string();
        let shared = jwks.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(n) if n > 2 => {}
                        _ => break,
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = match path.as_str() {
                    "/.well-known/openid-configuration" => discovery.clone(),
                    "/jwks" => shared.lock().unwrap().clone(),
                    _ => String::new(),
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let _ = (&stream).write_all(
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Idp {
            base,
            key,
            _jwks: jwks,
        }
    }

    /// Claims of a good sign-in of `user` with `nonce`.
    fn claims(&self, user: &str, nonce: &str) -> serde_json::Value {
        let now = clock::now();
        serde_json::json!({
            "iss": self.base, "aud": "moshca", "sub": format!("id-{user}"),
            "preferred_username": user, "groups": ["oncall"], "hd": "example.com",
            "nonce": nonce, "iat": now, "exp": now + 300,
        })
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        sign_with(&self.key, claims)
    }
}

fn sign_with(key: &SigningKey, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// The adversarial policy and users, a CA whose `[sso]` is `idp`, and CI jobs' tokens from
/// the same issuer accepted with the audience `ci`.
async fn start_sso(idp: &Idp) -> Harness {
    let extra = format!(
        "\n[sso]\nissuer = \"{base}\"\nclient_id = \"moshca\"\nrequired_claims = {{ hd = \"example.com\" }}\n\n[[oidc.issuer]]\nissuer = \"{base}\"\naudience = \"ci\"\njwks_url = \"{base}/jwks\"\n",
        base = idp.base
    );
    let data = common::data_dir(POLICY, &extra, USERS);
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    Harness {
        store: Store::open(&data.config.database).unwrap(),
        data,
        served,
    }
}

async fn sign_in(h: &Harness, id_token: &str, nonce: &str) -> Result<pb::Session, Status> {
    h.client()
        .create_session(Request::new(pb::CreateSessionRequest {
            id_token: id_token.into(),
            nonce: nonce.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn whoami(h: &Harness, credential: &str) -> Result<pb::WhoAmIResponse, Status> {
    h.client()
        .who_am_i(common::bearer(credential, pb::WhoAmIRequest {}))
        .await
        .map(tonic::Response::into_inner)
}

fn session_rows(h: &Harness) -> usize {
    h.store
        .read(|tx| tx.sessions(None, false, 0))
        .unwrap()
        .len()
}

/// The `session.refused` rows' reasons, oldest first.
fn refusals(h: &Harness) -> Vec<serde_json::Value> {
    h.store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action == "session.refused")
        .map(|r| r.event.details)
        .collect()
}

fn nonce() -> String {
    format!("n-{:032x}", rand::random::<u128>())
}

/// Performs a refused sign-in and checks its shape: UNAUTHENTICATED with `want` in a
/// one-line message without the token, no session stored, one `session.refused` row more.
async fn refused_sign_in(h: &Harness, id_token: &str, nonce: &str, want: &str) {
    let sessions_before = session_rows(h);
    let audited_before = refusals(h).len();
    let msg = refused(
        sign_in(h, id_token, nonce).await,
        Code::Unauthenticated,
        want,
    );
    assert!(msg.contains(want), "want {want:?}, got {msg:?}");
    assert!(!msg.contains(&id_token[20..60]), "token in message: {msg}");
    assert_eq!(
        session_rows(h),
        sessions_before,
        "{want}: a session was stored"
    );
    let rows = refusals(h);
    assert_eq!(
        rows.len(),
        audited_before + 1,
        "{want}: no session.refused row"
    );
    let row = rows.last().unwrap();
    assert!(row["reason"].as_str().unwrap().contains(want), "{row}");
    assert!(
        !row.to_string().contains(&id_token[20..60]),
        "token in audit"
    );
    h.audit_verifies();
}

#[tokio::test]
async fn sso_a_good_sign_in_makes_a_session_that_authenticates() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    let s = sign_in(&h, &idp.sign(&idp.claims("sam", &n)), &n)
        .await
        .unwrap();
    assert!(
        s.token.starts_with("mcs_") && s.token.len() == 47,
        "{}",
        s.token.len()
    );
    assert!(s.id.starts_with("ses_"));
    assert_eq!(
        (s.user.as_str(), s.groups.as_slice()),
        ("sam", &["oncall".to_owned()][..])
    );
    let me = whoami(&h, &s.token).await.unwrap();
    assert_eq!(me.name, "sam");
    assert_eq!(me.credential, "session");
    assert_eq!(me.session_id, s.id);
    assert_eq!(me.session_issuer, idp.base);
    assert_eq!(me.requestable_roles, ["db", "glass", "locked", "two"]);
    // The session's credential is stored as a hash only, and appears in no audit row.
    let rows = format!("{:?}", h.store.read(|tx| tx.audit_rows()).unwrap());
    assert!(!rows.contains(&s.token[4..]));
    assert!(rows.contains("session.created"));
    let info = h
        .client()
        .get_sign_in_info(pb::GetSignInInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.enabled);
    assert_eq!(
        (info.issuer.as_str(), info.client_id.as_str()),
        (idp.base.as_str(), "moshca")
    );
    assert_eq!(info.session_ttl_seconds, 8 * 3600);
    // Logout ends it.
    let ended = h
        .client()
        .delete_session(common::bearer(&s.token, pb::DeleteSessionRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.id, s.id);
    let msg = refused(
        whoami(&h, &s.token).await,
        Code::Unauthenticated,
        "after logout",
    );
    assert!(msg.contains("was ended"), "{msg}");
}

#[tokio::test]
async fn sso_id_tokens_breaking_a_rule_make_no_session() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = idp.claims("sam", &n);
        edit(&mut c);
        idp.sign(&c)
    };
    let now = clock::now();
    refused_sign_in(
        &h,
        &with(&|c| c["aud"] = "ci".into()),
        &n,
        "audience is not this CA's client id",
    )
    .await;
    refused_sign_in(
        &h,
        &with(&|c| c["iss"] = "https://evil.example".into()),
        &n,
        "issuer is not the configured identity provider",
    )
    .await;
    refused_sign_in(
        &h,
        &with(&|c| c["exp"] = (now - 120).into()),
        &n,
        "expired at",
    )
    .await;
    refused_sign_in(
        &h,
        &with(&|c| c["iat"] = (now - 3600).into()),
        &n,
        "more than 10 minutes ago",
    )
    .await;
    refused_sign_in(
        &h,
        &sign_with(&signing_key(), &idp.claims("sam", &n)),
        &n,
        "signature does not verify",
    )
    .await;
    refused_sign_in(&h, &with(&|_| {}), &nonce(), "nonce does not match").await;
    refused_sign_in(&h, &with(&|_| {}), "", "nonce does not match").await;
    refused_sign_in(
        &h,
        &with(&|c| c["hd"] = "evil.example".into()),
        &n,
        "claim hd must be example.com",
    )
    .await;
    // None of them created the user either.
    assert!(h.store.read(|tx| tx.user("sam")).unwrap().is_none());
}

#[tokio::test]
async fn sso_a_replayed_id_token_makes_one_session_only() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    let token = idp.sign(&idp.claims("sam", &n));
    sign_in(&h, &token, &n).await.unwrap();
    refused_sign_in(&h, &token, &n, "already traded for a session").await;
    assert_eq!(session_rows(&h), 1);
}

#[tokio::test]
async fn sso_a_token_users_name_is_not_taken_over_until_linked() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    // `sec` is a token user who may revoke; an IdP account named sec must not become them.
    let n = nonce();
    refused_sign_in(
        &h,
        &idp.sign(&idp.claims("sec", &n)),
        &n,
        "user sec is a token user on this CA; an operator allows SSO for it with `moshca-server user link-sso sec`",
    )
    .await;
    let row = refusals(&h).pop().unwrap();
    assert_eq!(row["user"], "sec");
    // Once the operator links it, the same person signs in (with the IdP's groups).
    sessions::link_sso(&h.store, "sec", clock::now()).unwrap();
    let n = nonce();
    let s = sign_in(&h, &idp.sign(&idp.claims("sec", &n)), &n)
        .await
        .unwrap();
    assert_eq!(s.user, "sec");
    let sources = sessions::sources(&h.store).unwrap();
    let sec = sources.iter().find(|u| u.name == "sec").unwrap();
    assert_eq!(sec.label(), "token+sso");
}

#[tokio::test]
async fn sso_a_disabled_user_is_refused_at_sign_in_and_their_sessions_and_pending_requests_stop() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    let s = sign_in(&h, &idp.sign(&idp.claims("sam", &n)), &n)
        .await
        .unwrap();
    // A request made through the session, pending approval.
    let pending = h
        .create_with(&s.token, ask("db", &["postgres"], 600))
        .await
        .unwrap();
    users::set_disabled(&h.store, "sam", true, clock::now()).unwrap();
    // The session stops working at once.
    let msg = refused(
        whoami(&h, &s.token).await,
        Code::Unauthenticated,
        "disabled session",
    );
    assert!(msg.contains("user sam is disabled"), "{msg}");
    // The pending request is not issued by a later approval.
    let e = h.approve("bob", &pending.id).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(h.issuance_of(&pending.id), (0, false), "{e:?}");
    // A new sign-in is refused.
    let n = nonce();
    refused_sign_in(
        &h,
        &idp.sign(&idp.claims("sam", &n)),
        &n,
        "user sam is disabled on this CA",
    )
    .await;
}

#[tokio::test]
async fn sso_a_revoked_session_stops_at_once_and_the_others_keep_working() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let (n1, n2) = (nonce(), nonce());
    let a = sign_in(&h, &idp.sign(&idp.claims("sam", &n1)), &n1)
        .await
        .unwrap();
    let b = sign_in(&h, &idp.sign(&idp.claims("sam", &n2)), &n2)
        .await
        .unwrap();
    let revoked = sessions::revoke(
        &h.store,
        &sessions::RevokeTarget::Id(a.id.clone()),
        clock::now(),
    )
    .unwrap();
    assert_eq!(revoked, 1);
    let msg = refused(
        whoami(&h, &a.token).await,
        Code::Unauthenticated,
        "revoked session",
    );
    assert_eq!(msg, "your CA session was ended; run `moshca auth login`");
    assert_eq!(whoami(&h, &b.token).await.unwrap().session_id, b.id);
    // By user: every session of theirs ends, and a request through one is refused.
    sessions::revoke(
        &h.store,
        &sessions::RevokeTarget::User("sam".into()),
        clock::now(),
    )
    .unwrap();
    let e = h.create_with(&b.token, ask("db", &["postgres"], 600)).await;
    refused(
        e,
        Code::Unauthenticated,
        "request through a revoked session",
    );
    let audited = h.store.read(|tx| tx.audit_rows()).unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|r| r.event.action == "session.revoked")
            .count(),
        2
    );
}

#[tokio::test]
async fn sso_an_expired_session_is_refused_with_how_to_sign_in_again() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    // The person authenticated at the IdP almost a session length ago: the session ends
    // when that would.
    let mut c = idp.claims("sam", &n);
    c["auth_time"] = (clock::now() - 8 * 3600 + 2).into();
    let s = sign_in(&h, &idp.sign(&c), &n).await.unwrap();
    assert!(s.expires_at <= i64::try_from(clock::now()).unwrap() + 2);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let msg = refused(
        whoami(&h, &s.token).await,
        Code::Unauthenticated,
        "expired session",
    );
    assert!(
        msg.starts_with("your CA session expired at") && msg.ends_with("run `moshca auth login`"),
        "{msg}"
    );
}

#[tokio::test]
async fn sso_people_and_ci_jobs_tokens_are_not_interchangeable() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let n = nonce();
    // A person's ID token presented as a CI workload credential: refused by verification
    // (UNAUTHENTICATED), not merely by a role rule.
    let person = idp.sign(&idp.claims("sam", &n));
    let e = h
        .client()
        .create_access_request(common::bearer(&person, ask("db", &[], 600)))
        .await;
    let msg = refused(e, Code::Unauthenticated, "person's token as workload");
    assert!(msg.contains("audience"), "{msg}");
    // A CI job's token (same issuer, audience `ci`) presented to sign in: refused.
    let now = clock::now();
    let ci = idp.sign(&serde_json::json!({
        "iss": idp.base, "aud": "ci", "sub": "repo:acme/app", "preferred_username": "sam",
        "hd": "example.com", "iat": now, "exp": now + 300, "jti": "j-1",
    }));
    refused_sign_in(&h, &ci, "", "audience is not this CA's client id").await;
    // The CI token itself verifies as a workload's (the refusal is the role's, not auth).
    let e = h
        .client()
        .create_access_request(common::bearer(&ci, ask("db", &[], 600)))
        .await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
    // A session credential is never a workload's either: it authenticates a person.
    let s = sign_in(&h, &person, &n).await.unwrap();
    assert_eq!(whoami(&h, &s.token).await.unwrap().credential, "session");
}

#[tokio::test]
async fn sso_refused_sign_ins_count_against_the_peer() {
    let idp = Idp::start();
    let h = start_sso(&idp).await;
    let bad = sign_with(&signing_key(), &idp.claims("sam", "x"));
    let mut limited = false;
    for _ in 0..100 {
        match sign_in(&h, &bad, "x").await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                limited = true;
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::Unauthenticated),
            Ok(_) => panic!("a badly signed token made a session"),
        }
    }
    assert!(limited, "the per-peer limiter never refused");
    // Bounded at the edge.
    let huge = "a".repeat(MAX_ID_TOKEN + 1);
    assert!(sign_in(&h, &huge, "").await.is_err());
}

const MAX_ID_TOKEN: usize = 16 * 1024;

impl Harness {
    async fn create_with(
        &self,
        credential: &str,
        msg: pb::CreateAccessRequestRequest,
    ) -> Result<pb::AccessRequest, Status> {
        self.client()
            .create_access_request(common::bearer(credential, msg))
            .await
            .map(tonic::Response::into_inner)
    }
}
