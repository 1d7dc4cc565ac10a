//! People's sign-in through an OpenID Connect identity provider (`[sso]`): an ID token ->
//! a verified [`SignIn`].
//!
//! Kept apart from CI jobs' tokens (`oidc`) by construction: the provider's keys live in a
//! [`Verifier`] of their own that knows only the `[sso]` issuer and its client id, and
//! workload tokens are verified only by the `[oidc]` one, whose audiences config.toml
//! keeps different from `client_id`. The JWKS cache (lifetime, background refresh, no
//! redirects, alg pinned to the key type) is `oidc`'s. The provider's discovery document
//! is read once, when the server starts; a provider that cannot be reached or whose
//! document names another issuer stops the server from starting.
//!
//! Every refusal is one line that names the rule broken and never quotes the token.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::auth::fmt_time;
use crate::clock::UnixTime;
use crate::config::{JwksSource, OidcIssuer, Sso};
use crate::oidc::{Rejected, Verifier};

/// Oldest `iat` accepted: an ID token is traded for a session at once.
pub const MAX_ID_TOKEN_AGE_SECS: u64 = 600;
/// Most groups one sign-in may carry.
pub const MAX_GROUPS: usize = 256;
/// Largest nonce accepted.
pub const MAX_NONCE_LEN: usize = 128;
/// Largest discovery document read.
const MAX_DISCOVERY_BYTES: u64 = 256 * 1024;

/// A person, as a verified ID token describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The CA user name (the username claim).
    pub user: String,
    /// Groups from the groups claim, invalid names dropped.
    pub groups: Vec<String>,
    /// The issuer that vouched for them.
    pub issuer: String,
    /// When the session ends: `now + session_ttl`, earlier when `auth_time` says the
    /// person authenticated at the provider a while ago.
    pub session_expires_at: UnixTime,
    /// SHA-256 of the ID token (hex): remembered so the token creates one session only.
    pub token_hash: String,
    /// The ID token's `exp`: how long its hash must be remembered.
    pub token_expires_at: UnixTime,
}

/// Verifies people's ID tokens for one identity provider.
pub struct SsoVerifier {
    config: Sso,
    keys: Verifier,
    jwks_uri: String,
}

impl std::fmt::Debug for SsoVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoVerifier")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish()
    }
}

fn reject(m: impl Into<String>) -> Rejected {
    Rejected(m.into())
}

/// The discovery document URL of an issuer.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Reads the provider's discovery document and returns its `jwks_uri`, checking that the
/// document names the configured issuer. Blocking; follows no redirects.
pub fn discover(config: &Sso) -> Result<String, String> {
    let url = discovery_url(&config.issuer);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .max_redirects(0)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| format!("{url}: {e}; check [sso] issuer and that the CA host reaches it"))?;
    if resp.status() != 200 {
        return Err(format!(
            "{url}: status {} (redirects are not followed); check [sso] issuer",
            resp.status()
        ));
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_DISCOVERY_BYTES)
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON: {e}"))?;
    let issuer = doc.get("issuer").and_then(serde_json::Value::as_str);
    if issuer != Some(config.issuer.as_str()) {
        return Err(format!(
            "{url}: the document names issuer {:?}, not the configured {:?}; set [sso] issuer to the provider's exact issuer",
            issuer.unwrap_or(""),
            config.issuer
        ));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("{url}: the document has no jwks_uri"))?;
    if !crate::config::acceptable_url(jwks_uri) {
        return Err(format!(
            "{url}: jwks_uri {jwks_uri} is not https (http only on loopback)"
        ));
    }
    Ok(jwks_uri.to_owned())
}

impl SsoVerifier {
    /// Discovers the provider and fetches its keys once: the check `serve` makes before it
    /// starts. Blocking.
    pub fn start(config: &Sso, now: UnixTime) -> Result<Self, String> {
        let jwks_uri = discover(config)?;
        let verifier = Self::with_jwks(config, JwksSource::Url(jwks_uri.clone()));
        if verifier.refresh_due_at(now) == 0 {
            return Err(format!(
                "{jwks_uri}: the identity provider's signing keys could not be fetched (see the warning above)"
            ));
        }
        Ok(verifier)
    }

    /// A verifier with the provider's keys at `jwks` (tests, and [`SsoVerifier::start`]).
    pub fn with_jwks(config: &Sso, jwks: JwksSource) -> Self {
        let jwks_uri = match &jwks {
            JwksSource::Url(u) => u.clone(),
            JwksSource::File(p) => p.display().to_string(),
        };
        SsoVerifier {
            keys: Verifier::new(&[OidcIssuer {
                issuer: config.issuer.clone(),
                audience: config.client_id.clone(),
                jwks,
                jwks_cache_ttl: config.jwks_cache_ttl,
            }]),
            config: config.clone(),
            jwks_uri,
        }
    }

    /// The settings it verifies with.
    pub fn config(&self) -> &Sso {
        &self.config
    }

    /// Where the provider's keys are fetched from.
    pub fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// Refetches the provider's keys when due (see `oidc`); blocking.
    pub fn refresh_due_at(&self, now: UnixTime) -> usize {
        self.keys.refresh_due_at(now)
    }

    /// Verifies an ID token presented with `nonce` (empty when the flow had none) at
    /// `now`. Blocking: may fetch the provider's keys. Replay is refused by the store, in
    /// the transaction that creates the session.
    pub fn verify_at(
        &self,
        id_token: &str,
        nonce: &str,
        now: UnixTime,
    ) -> Result<SignIn, Rejected> {
        let c = &self.config;
        let issuer = crate::oidc::unverified_issuer(id_token)
            .map_err(|_| reject("ID token does not parse; sign in again"))?;
        if issuer != c.issuer {
            return Err(reject(
                "ID token issuer is not the configured identity provider",
            ));
        }
        let claims = self.keys.signed_claims_at(id_token, now).map_err(|e| {
            if e.0.contains("signature") {
                reject("ID token signature does not verify")
            } else {
                reject(format!("ID token refused: {e}"))
            }
        })?;
        let str_claim = |name: &str| claims.get(name).and_then(serde_json::Value::as_str);
        let num = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        if str_claim("iss") != Some(c.issuer.as_str()) {
            return Err(reject(
                "ID token issuer is not the configured identity provider",
            ));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        };
        if !audiences.contains(&c.client_id.as_str()) {
            return Err(reject("ID token audience is not this CA's client id"));
        }
        match str_claim("azp") {
            Some(azp) if azp != c.client_id => {
                return Err(reject(
                    "ID token authorized party (azp) is not this CA's client id",
                ));
            }
            None if audiences.len() > 1 => {
                return Err(reject(
                    "ID token has several audiences and no azp naming this CA's client id",
                ));
            }
            _ => {}
        }
        let leeway = c.clock_leeway;
        let exp = num("exp").ok_or_else(|| reject("ID token has no exp"))?;
        if exp + leeway <= now {
            return Err(reject(format!(
                "ID token expired at {}; sign in again",
                fmt_time(exp)
            )));
        }
        let iat = num("iat").ok_or_else(|| reject("ID token has no iat"))?;
        if iat > now + leeway {
            return Err(reject(
                "ID token is issued in the future (iat); check the clocks of the CA and the identity provider",
            ));
        }
        if iat + MAX_ID_TOKEN_AGE_SECS + leeway < now {
            return Err(reject(format!(
                "ID token was issued at {}, more than 10 minutes ago; sign in again",
                fmt_time(iat)
            )));
        }
        let nonce_ok = match (nonce.is_empty(), claims.get("nonce")) {
            (true, None) => true,
            (false, Some(serde_json::Value::String(n))) => n == nonce,
            _ => false,
        };
        if !nonce_ok {
            return Err(reject("ID token nonce does not match the sign-in request"));
        }
        for (name, value) in &c.required_claims {
            if str_claim(name) != Some(value.as_str()) {
                return Err(reject(format!("claim {name} must be {value}")));
            }
        }
        let user = str_claim(&c.username_claim)
            .filter(|u| crate::policy::valid_name(u))
            .ok_or_else(|| {
                reject(format!(
                    "ID token claim {} is missing or not a valid user name (1 to 64 of A-Z a-z 0-9 . _ -); ask the CA operator",
                    c.username_claim
                ))
            })?
            .to_owned();
        let groups = match claims.get(&c.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(list)) => {
                if list.len() > MAX_GROUPS {
                    return Err(reject(format!(
                        "ID token claim {} holds more than {MAX_GROUPS} groups; ask the identity provider's administrator to send fewer",
                        c.groups_claim
                    )));
                }
                let mut groups: Vec<String> = Vec::new();
                let mut dropped = 0usize;
                for g in list {
                    match g.as_str() {
                        Some(g) if crate::policy::valid_name(g) => {
                            if !groups.iter().any(|have| have == g) {
                                groups.push(g.to_owned());
                            }
                        }
                        _ => dropped += 1,
                    }
                }
                if dropped > 0 {
                    tracing::warn!(
                        user = %user,
                        dropped,
                        "sign-in: groups that are not valid group names were dropped"
                    );
                }
                groups
            }
            Some(_) => {
                return Err(reject(format!(
                    "ID token claim {} is not a list of strings",
                    c.groups_claim
                )));
            }
        };
        let mut session_expires_at = now + c.session_ttl;
        if let Some(auth_time) = num("auth_time") {
            session_expires_at = session_expires_at.min(auth_time + c.session_ttl);
        }
        if session_expires_at <= now {
            return Err(reject(format!(
                "you authenticated at the identity provider more than {} ago (auth_time); sign in there again",
                crate::policy::fmt_secs(c.session_ttl)
            )));
        }
        Ok(SignIn {
            user,
            groups,
            issuer,
            session_expires_at,
            token_hash: hex::encode(Sha256::digest(id_token.as_bytes())),
            token_expires_at: exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_790_000_000;
    const ISS: &str = "https://login.example.com";

    use crate::oidc::test_keys::{Key, jwks, key};

    fn config() -> Sso {
        Sso {
            issuer: ISS.into(),
            client_id: "moshca".into(),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            scopes: vec!["openid".into()],
            required_claims: vec![("hd".into(), "example.com".into())],
            session_ttl: 8 * 3600,
            clock_leeway: 30,
            jwks_cache_ttl: 300,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        v: SsoVerifier,
        key: Key,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let key = key();
        std::fs::write(&path, jwks(&[("k1", &key)])).unwrap();
        Fixture {
            v: SsoVerifier::with_jwks(&config(), JwksSource::File(path)),
            _dir: dir,
            key,
        }
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": ISS, "aud": "moshca", "sub": "u-1", "preferred_username": "alice",
            "groups": ["oncall", "leads"], "hd": "example.com", "nonce": "n-1",
            "iat": NOW - 5, "exp": NOW + 300,
        })
    }

    fn sign(key: &Key, claims: &serde_json::Value) -> String {
        crate::oidc::test_keys::sign("k1", key, claims)
    }

    fn refused_with(f: &Fixture, c: &serde_json::Value, nonce: &str) -> String {
        f.v.verify_at(&sign(&f.key, c), nonce, NOW).unwrap_err().0
    }

    #[test]
    fn a_valid_id_token_signs_in() {
        let f = fixture();
        let s = f.v.verify_at(&sign(&f.key, &claims()), "n-1", NOW).unwrap();
        assert_eq!(s.user, "alice");
        assert_eq!(s.groups, ["oncall", "leads"]);
        assert_eq!(s.issuer, ISS);
        assert_eq!(s.session_expires_at, NOW + 8 * 3600);
        assert_eq!(s.token_expires_at, NOW + 300);
        assert_eq!(s.token_hash.len(), 64);
    }

    #[test]
    fn each_rule_refuses_with_its_own_reason() {
        let f = fixture();
        let mut cases: Vec<(serde_json::Value, &str, &str)> = Vec::new();
        let mut c = claims();
        c["aud"] = json!("ci-audience");
        cases.push((c, "n-1", "audience is not this CA's client id"));
        let mut c = claims();
        c["aud"] = json!(["moshca", "other"]);
        cases.push((c, "n-1", "no azp"));
        let mut c = claims();
        c["azp"] = json!("other");
        cases.push((c, "n-1", "azp"));
        let mut c = claims();
        c["exp"] = json!(NOW - 31);
        cases.push((c, "n-1", "expired at"));
        let mut c = claims();
        c["iat"] = json!(NOW + 31);
        cases.push((c, "n-1", "future"));
        let mut c = claims();
        c["iat"] = json!(NOW - 631);
        cases.push((c, "n-1", "more than 10 minutes ago"));
        cases.push((claims(), "n-2", "nonce does not match"));
        cases.push((claims(), "", "nonce does not match"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        cases.push((c, "n-1", "nonce does not match"));
        let mut c = claims();
        c["hd"] = json!("evil.example");
        cases.push((c, "n-1", "claim hd must be example.com"));
        let mut c = claims();
        c["preferred_username"] = json!("alice bob");
        cases.push((c, "n-1", "not a valid user name"));
        let mut c = claims();
        c["groups"] = json!("oncall");
        cases.push((c, "n-1", "not a list"));
        let mut c = claims();
        c["groups"] = json!((0..257).map(|i| format!("g{i}")).collect::<Vec<_>>());
        cases.push((c, "n-1", "more than 256"));
        let mut c = claims();
        c["auth_time"] = json!(NOW - 9 * 3600);
        cases.push((c, "n-1", "auth_time"));
        for (c, nonce, want) in cases {
            let got = refused_with(&f, &c, nonce);
            assert!(got.contains(want), "want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn issuer_and_signature_are_checked_before_any_claim() {
        let f = fixture();
        let mut c = claims();
        c["iss"] = json!("https://ci.example");
        assert_eq!(
            refused_with(&f, &c, "n-1"),
            "ID token issuer is not the configured identity provider"
        );
        let other = key();
        let e =
            f.v.verify_at(&sign(&other, &claims()), "n-1", NOW)
                .unwrap_err()
                .0;
        assert_eq!(e, "ID token signature does not verify");
    }

    #[test]
    fn leeway_auth_time_groups_and_empty_nonce() {
        let f = fixture();
        let mut c = claims();
        c["exp"] = json!(NOW - 29);
        c["auth_time"] = json!(NOW - 3600);
        c["groups"] = json!(["ok", "not ok", 7, "ok"]);
        c.as_object_mut().unwrap().remove("nonce");
        let s = f.v.verify_at(&sign(&f.key, &c), "", NOW).unwrap();
        assert_eq!(s.session_expires_at, NOW - 3600 + 8 * 3600);
        assert_eq!(s.groups, ["ok"]);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("groups");
        assert!(
            f.v.verify_at(&sign(&f.key, &c), "n-1", NOW)
                .unwrap()
                .groups
                .is_empty()
        );
    }

    #[test]
    fn refusals_never_quote_the_token() {
        let f = fixture();
        let token = sign(&f.key, &claims());
        for nonce in ["x", ""] {
            let e = f.v.verify_at(&token, nonce, NOW + 10_000).unwrap_err().0;
            assert!(!e.contains(&token[10..40]), "{e}");
        }
    }
}
