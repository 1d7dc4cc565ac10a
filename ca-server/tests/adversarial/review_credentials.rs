//! Attacks from a security review of the running CA (findings 6, 8 and 9): the JWKS cache
//! lifetime, tokens with ids and expiry, and one rule for secret files.

use super::*;

use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moshca_server::clock;

// ---------------------------------------------------------------------------------------
// Finding 6: a key the issuer removed from its JWKS stays trusted

/// A JWKS served over HTTP on 127.0.0.1; the body (or a redirect) can change at any time.
struct JwksServer {
    base: String,
    /// The whole HTTP response for every request.
    response: Arc<Mutex<String>>,
}

impl JwksServer {
    fn start(body: &str) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let response = Arc::new(Mutex::new(String::new()));
        let shared = response.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(n) if n > 2 => {}
                        _ => break,
                    }
                }
                let answer = shared.lock().unwrap().clone();
                let _ = (&stream).write_all(answer.as_bytes());
            }
        });
        let server = JwksServer { base, response };
        server.serve(body);
        server
    }

    fn serve(&self, body: &str) {
        *self.response.lock().unwrap() = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn redirect(&self, to: &str) {
        *self.response.lock().unwrap() = format!(
            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}

struct IdKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    x: String,
}

fn id_key(kid: &str) -> IdKey {
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&sk.to_bytes());
    IdKey {
        kid: kid.into(),
        encoding: jsonwebtoken::EncodingKey::from_ed_der(&der),
        x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().to_bytes()),
    }
}

fn jwks(keys: &[&IdKey]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|k| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid, "alg": "EdDSA", "use": "sig"}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn id_token(key: &IdKey, issuer: &str) -> String {
    let now = clock::now();
    let claims = serde_json::json!({
        "iss": issuer, "aud": "moshca", "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "ref": "refs/heads/main",
        "iat": now, "nbf": now, "exp": now + 300,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

const ISSUER: &str = "https://ci.example";

const CI_POLICY: &str = r#"
[[role]]
name = "deploy"
approval = "auto"
workloads = [{ issuer = "https://ci.example", claims = { repository = "acme/app" } }]
logins = ["deploy"]
max_ttl = "10m"
"#;

/// A server trusting [`ISSUER`] with its keys at `jwks_url`, cached for `ttl`.
async fn ci_server(jwks_url: &str, ttl: &str) -> (common::DataDir, common::Served) {
    let extra = format!(
        "\n[oidc]\njwks_cache_ttl = \"{ttl}\"\n[[oidc.issuer]]\nissuer = \"{ISSUER}\"\naudience = \"moshca\"\njwks_url = \"{jwks_url}\"\n"
    );
    let data = common::data_dir(CI_POLICY, &extra, &[]);
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    (data, served)
}

async fn ci_request(served: &common::Served, token: &str) -> Result<pb::AccessRequest, Status> {
    CertificateAuthorityClient::new(served.channel())
        .create_access_request(common::bearer(token, ask("deploy", &[], 300)))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn finding_6_a_key_removed_from_the_jwks_is_refused_once_the_cache_lifetime_passes() {
    let (k1, k2) = (id_key("k1"), id_key("k2"));
    let idp = JwksServer::start(&jwks(&[&k1, &k2]));
    let (_data, served) = ci_server(&format!("{}/jwks", idp.base), "2s").await;
    // The attack: k1 leaked; the issuer removes it from its JWKS. Before, the CA kept
    // trusting it until a token with an unknown kid forced a refetch, which a holder of
    // the leaked key never sends.
    let issued = ci_request(&served, &id_token(&k1, ISSUER)).await.unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    idp.serve(&jwks(&[&k2]));
    let removed = Instant::now();
    let refused_after = loop {
        match ci_request(&served, &id_token(&k1, ISSUER)).await {
            Err(s) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
                assert!(s.message().contains("kid"), "{}", s.message());
                break removed.elapsed();
            }
            Ok(_) => assert!(
                removed.elapsed() < Duration::from_secs(5),
                "the removed key was still trusted 5 s after removal with a 2 s lifetime"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("removed JWKS key refused {refused_after:?} after removal (lifetime 2 s)");
    assert!(
        refused_after <= Duration::from_millis(3500),
        "{refused_after:?}"
    );
    // The key the issuer kept still works.
    assert!(ci_request(&served, &id_token(&k2, ISSUER)).await.is_ok());
}

#[tokio::test]
async fn finding_6_a_redirecting_jwks_url_is_refused() {
    let key = id_key("k1");
    // The real keys sit at /keys of a second server; the configured URL redirects there.
    let target = JwksServer::start(&jwks(&[&key]));
    let idp = JwksServer::start("{}");
    idp.redirect(&format!("{}/keys", target.base));
    let (_data, served) = ci_server(&format!("{}/jwks", idp.base), "5m").await;
    let s = ci_request(&served, &id_token(&key, ISSUER))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
    assert!(s.message().contains("kid"), "{}", s.message());
}

// ---------------------------------------------------------------------------------------
// Finding 8: tokens can neither be revoked one by one nor expire

async fn who(h: &Harness, token: &str) -> Result<pb::WhoAmIResponse, Status> {
    h.client()
        .who_am_i(common::bearer(token, pb::WhoAmIRequest {}))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn finding_8_a_revoked_token_is_refused_at_once_and_the_others_keep_working() {
    let h = start().await;
    let old = h.data.tokens["alice"].clone();
    // `user token alice`: adds a token; the old one keeps working until revoked.
    let new = users::issue_token(&h.store, "alice", 30 * 86_400, clock::now()).unwrap();
    assert!(who(&h, &old).await.is_ok());
    assert!(who(&h, new.token.expose()).await.is_ok());
    let listed = users::tokens(&h.store, "alice").unwrap();
    assert_eq!(listed.len(), 2);
    let old_id = listed.iter().find(|t| t.id != new.id).unwrap().id.clone();
    let revoked = users::revoke_token(&h.store, &old_id, clock::now()).unwrap();
    assert_eq!(revoked.user, "alice");
    // At once: the next call is refused, no cache in between.
    let message = refused(who(&h, &old).await, Code::Unauthenticated, "revoked token");
    assert!(
        message.contains("revoked") && message.contains(&old_id),
        "{message}"
    );
    assert!(who(&h, new.token.expose()).await.is_ok());
    // Revoking is audited, with the id and never the token.
    let rows = h.store.read(|tx| tx.audit_rows()).unwrap();
    let event = rows
        .iter()
        .find(|r| r.event.action == "user.token_revoked")
        .unwrap();
    assert_eq!(event.event.details["token_id"], old_id.as_str());
    assert!(!format!("{rows:?}").contains(&old[4..]));
    h.audit_verifies();
}

#[tokio::test]
async fn finding_8_an_expired_token_is_refused_with_how_to_get_a_new_one() {
    let h = start().await;
    let now = clock::now();
    let stale = users::issue_token(&h.store, "bob", 86_400, now - 2 * 86_400).unwrap();
    let message = refused(
        who(&h, stale.token.expose()).await,
        Code::Unauthenticated,
        "expired token",
    );
    assert!(
        message.contains("expired") && message.contains("moshca-server user token bob"),
        "{message}"
    );
    // The default lifetime is 90 days and `--expires` bounds are enforced.
    let fresh = users::issue_token(&h.store, "bob", 90 * 86_400, now).unwrap();
    assert_eq!(fresh.expires_at, now + 90 * 86_400);
    assert!(users::issue_token(&h.store, "bob", 10 * 365 * 86_400, now).is_err());
    let refusals = h
        .store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .filter(|r| r.event.details.to_string().contains("expired token"))
        .count();
    assert_eq!(refusals, 1, "the refusal is audited");
}

#[tokio::test]
async fn finding_8_listing_shows_id_created_expires_and_last_used() {
    let h = start().await;
    let listed = users::tokens(&h.store, "carol").unwrap();
    assert_eq!(listed.len(), 1);
    let t = &listed[0];
    assert!(moshca_server::auth::valid_token_id(&t.id), "{}", t.id);
    assert!(!h.data.tokens["carol"].contains(&t.id[4..]));
    assert_eq!(
        t.expires_at,
        Some(t.created_at + moshca_server::auth::DEFAULT_TOKEN_LIFETIME_SECS)
    );
    assert_eq!(t.last_used_at, None);
    let before = clock::now();
    who(&h, &h.data.tokens["carol"]).await.unwrap();
    let used = users::tokens(&h.store, "carol").unwrap()[0].last_used_at;
    assert!(used.is_some_and(|u| u >= before), "{used:?}");
    // Every response to a token-authenticated call says when the token expires, for the
    // client's warning.
    let response = h
        .client()
        .who_am_i(common::bearer(
            &h.data.tokens["carol"],
            pb::WhoAmIRequest {},
        ))
        .await
        .unwrap();
    let header = response
        .metadata()
        .get("moshca-token-expires")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(header, t.expires_at);
    // A second call within the minute does not write again.
    who(&h, &h.data.tokens["carol"]).await.unwrap();
    assert_eq!(
        users::tokens(&h.store, "carol").unwrap()[0].last_used_at,
        used
    );
}

// ---------------------------------------------------------------------------------------
// Finding 9: the data directory and secret files readable by everyone

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn finding_9_init_into_a_0755_directory_leaves_it_and_the_database_private() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("ca");
    // `mkdir -m 755 D; moshca-server init --data-dir D`
    std::fs::create_dir(&d).unwrap();
    chmod(&d, 0o755);
    moshca_server::init::init(&d, None, clock::now()).unwrap();
    assert_eq!(mode(&d), 0o700);
    for f in ["moshca.db", "ca_key", "tls/key.pem"] {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
    // The WAL and SHM SQLite creates beside the database are private too.
    let store = Store::open(d.join("moshca.db")).unwrap();
    users::add(&store, "al", &[], clock::now()).unwrap();
    for f in ["moshca.db-wal", "moshca.db-shm"] {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
}

#[test]
fn finding_9_serve_refuses_exposed_secret_files_with_the_chmod_that_fixes_them() {
    let data = common::data_dir(POLICY, "", &[]);
    let config = &data.config;
    let refusal = |pass: Option<&Path>| {
        server::open(config, pass)
            .map(drop)
            .unwrap_err()
            .to_string()
    };
    let hint = |p: &Path, m: &str| format!("run `chmod {m} {}`", p.display());
    assert!(server::open(config, None).is_ok(), "init's modes pass");

    for (file, what) in [(&config.ca_key, "CA key"), (&config.tls_key, "TLS key")] {
        chmod(file, 0o644);
        let e = refusal(None);
        assert!(e.contains(what) && e.contains(&hint(file, "600")), "{e}");
        chmod(file, 0o600);
    }
    let pass = config.data_dir.join("passphrase");
    std::fs::write(&pass, "not-a-secret-anymore\n").unwrap();
    chmod(&pass, 0o644);
    let e = refusal(Some(&pass));
    assert!(
        e.contains("passphrase file") && e.contains(&hint(&pass, "600")),
        "{e}"
    );
    assert!(!e.contains("not-a-secret-anymore"), "{e}");

    chmod(config.database.sqlite_path().unwrap(), 0o644);
    let e = refusal(None);
    assert!(
        e.contains(&hint(config.database.sqlite_path().unwrap(), "600")),
        "{e}"
    );
    chmod(config.database.sqlite_path().unwrap(), 0o600);

    chmod(&config.data_dir, 0o755);
    let e = refusal(None);
    assert!(
        e.contains("data directory") && e.contains(&hint(&config.data_dir, "700")),
        "{e}"
    );
    chmod(&config.data_dir, 0o700);

    let secret = config.data_dir.join("webhook-secret");
    std::fs::write(&secret, "hook\n").unwrap();
    chmod(&secret, 0o640);
    let e = moshca_server::notify::Secret::read(&secret)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&hint(&secret, "600")), "{e}");
    assert!(server::open(config, None).is_ok());
}
