//! OIDC ID tokens (JWT) of CI jobs -> verified [`WorkloadIdentity`].
//!
//! Only configured issuers are trusted. Their signing keys (JWKS) are cached for a lifetime
//! (`jwks_cache_ttl`, 5 minutes by default; a shorter `Cache-Control: max-age` from the
//! issuer shortens it, never below a minute) and refetched in the background before it
//! ends ([`Verifier::refresh_due_at`]), so a key the issuer removed stops verifying within
//! one lifetime and no request waits for a fetch. If refreshing fails, the old keys serve
//! for one more lifetime at most; after that the issuer's tokens are refused until a fetch
//! succeeds. JWKS fetches follow no redirects. On an unknown key id the keys are refetched
//! at most once a minute (or once a lifetime, if shorter) per issuer, so a flood of made-up
//! key ids cannot turn the CA into a request amplifier. `alg` is pinned to the key's type
//! (RS256 for RSA, ES256 for P-256, EdDSA for Ed25519): `none` and HMAC are refused, so a
//! public key can never be used as an HMAC secret. `exp`, `nbf` and `iat` are checked with
//! 60 s of leeway. Replay (`jti`) is refused by the store, in the transaction that issues.
//! Never logs or returns the token itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::clock::UnixTime;

/// A trusted OIDC token issuer (GitHub Actions, GitLab CI, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIssuer {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Where its signing keys are.
    pub jwks: JwksSource,
    /// How long fetched keys are trusted before they are refetched, in seconds.
    pub jwks_cache_ttl: u64,
}

/// Where an issuer's JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file, re-read on an unknown key id.
    File(std::path::PathBuf),
    /// An https URL (http only for loopback hosts).
    Url(String),
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 60;
/// Least time between two JWKS fetches of one issuer triggered by unknown key ids.
pub const REFETCH_INTERVAL_SECS: u64 = 60;
/// How long fetched keys are trusted unless config.toml says otherwise.
pub const DEFAULT_JWKS_CACHE_TTL_SECS: u64 = 300;
/// The shortest lifetime an issuer's `Cache-Control: max-age` can impose.
pub const MIN_MAX_AGE_SECS: u64 = 60;
/// Largest token accepted.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS document read.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// A CI job, as its verified token describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadIdentity {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `jti`, for replay protection.
    pub jti: String,
    /// `exp`.
    pub expires_at: u64,
    /// Every claim, for policy matching.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl WorkloadIdentity {
    /// A string claim, if present.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(serde_json::Value::as_str)
    }
}

/// Why a token was refused. Safe to return to the caller: it never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

fn reject(m: impl Into<String>) -> Rejected {
    Rejected(m.into())
}

struct IssuerState {
    config: OidcIssuer,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    keys: Option<JwkSet>,
    /// When `keys` were fetched.
    fetched_at: UnixTime,
    /// Their lifetime: the configured one, or a shorter `max-age`.
    lifetime: u64,
    /// The last fetch tried, successful or not, for rate limiting.
    last_attempt: Option<UnixTime>,
}

impl Cache {
    /// Whether `keys` are past their lifetime.
    fn expired_at(&self, now: UnixTime) -> bool {
        self.keys.is_none() || now >= self.fetched_at + self.lifetime
    }

    /// Whether the background task should refetch: at 80% of the lifetime, so the new set
    /// is in place before the old one expires.
    fn refresh_due_at(&self, now: UnixTime) -> bool {
        self.keys.is_none() || now >= self.fetched_at + self.lifetime - self.lifetime / 5
    }

    /// Whether `keys` are past the hard limit: one more lifetime after expiry, while
    /// refreshing keeps failing.
    fn unusable_at(&self, now: UnixTime) -> bool {
        self.keys.is_none() || now >= self.fetched_at + 2 * self.lifetime
    }

    fn install(&mut self, fetched: Fetched, configured: u64, now: UnixTime) {
        self.lifetime = lifetime(configured, fetched.max_age);
        self.keys = Some(fetched.keys);
        self.fetched_at = now;
    }
}

/// The lifetime of a fetched key set: the configured one, shortened (never lengthened) by
/// the issuer's `max-age`, which counts as at least [`MIN_MAX_AGE_SECS`] so an issuer
/// sending `max-age=0` does not make the CA fetch on every request.
fn lifetime(configured: u64, max_age: Option<u64>) -> u64 {
    let configured = configured.max(1);
    max_age.map_or(configured, |m| configured.min(m.max(MIN_MAX_AGE_SECS)))
}

/// Verifies ID tokens against the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, IssuerState>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether a bearer value looks like a JWT (three base64url parts) rather than a token.
pub fn looks_like_jwt(value: &str) -> bool {
    value.len() <= MAX_TOKEN_LEN
        && value.split('.').count() == 3
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Verifier {
    /// A verifier for these issuers; keys are fetched on first use.
    pub fn new(issuers: &[OidcIssuer]) -> Self {
        Verifier {
            issuers: issuers
                .iter()
                .map(|c| {
                    (
                        c.issuer.clone(),
                        IssuerState {
                            config: c.clone(),
                            cache: Mutex::new(Cache::default()),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Refetches, without holding up verification, the key sets that are missing or near
    /// the end of their lifetime. The server calls this every second from a background
    /// task; returns how many sets were replaced. Blocking.
    pub fn refresh_due_at(&self, now: UnixTime) -> usize {
        let mut replaced = 0;
        for state in self.issuers.values() {
            {
                let mut cache = state.lock();
                if !cache.refresh_due_at(now) || !state.may_fetch(&cache, now) {
                    continue;
                }
                cache.last_attempt = Some(now);
                if cache.keys.is_none() {
                    // The first fetch holds the lock: a request arriving meanwhile waits
                    // for it rather than finding no keys and no fetch allowed.
                    match fetch(&state.config.jwks) {
                        Ok(fetched) => {
                            cache.install(fetched, state.config.jwks_cache_ttl, now);
                            replaced += 1;
                        }
                        Err(e) => {
                            tracing::warn!(issuer = %state.config.issuer, "fetching JWKS failed: {e}");
                        }
                    }
                    continue;
                }
            }
            // Fetched without the lock: requests keep verifying with the current keys.
            match fetch(&state.config.jwks) {
                Ok(fetched) => {
                    state
                        .lock()
                        .install(fetched, state.config.jwks_cache_ttl, now);
                    replaced += 1;
                }
                Err(e) => {
                    let cache = state.lock();
                    tracing::warn!(
                        issuer = %state.config.issuer,
                        "refreshing JWKS failed: {e}; the keys fetched at {} are used until {} at most",
                        crate::text::fmt_time(cache.fetched_at),
                        crate::text::fmt_time(cache.fetched_at + 2 * cache.lifetime)
                    );
                }
            }
        }
        replaced
    }

    /// The issuer's state, the pinned algorithm and the key a token names, all chosen
    /// before any claim is trusted. Blocking: may fetch the issuer's JWKS.
    fn key_of(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<(&IssuerState, Algorithm, DecodingKey, String), Rejected> {
        if !looks_like_jwt(token) {
            return Err(reject("not a JWT"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| reject("token header does not parse (or names an unknown alg)"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(reject(format!(
                "alg {:?} is not accepted; use RS256, ES256 or EdDSA",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| reject("token header has no kid"))?;
        let issuer = unverified_issuer(token)?;
        let state = self
            .issuers
            .get(&issuer)
            .ok_or_else(|| reject("token issuer is not configured on this CA"))?;
        let key = state.key_for(kid, now)?;
        let expected_alg = match &key.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => {
                return Err(reject(
                    "the issuer's key for this kid has an unsupported type",
                ));
            }
        };
        if header.alg != expected_alg {
            return Err(reject(format!(
                "alg {:?} does not match the key's type ({expected_alg:?})",
                header.alg
            )));
        }
        let decoding =
            DecodingKey::from_jwk(&key).map_err(|_| reject("the issuer's key does not parse"))?;
        Ok((state, expected_alg, decoding, issuer))
    }

    /// The claims of a token whose signature verifies with its issuer's key (alg pinned to
    /// the key type), with no claim checked: for callers with rules of their own (people's
    /// sign-ins, `sso`). Blocking: may fetch the issuer's JWKS.
    pub fn signed_claims_at(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Rejected> {
        let (_, alg, decoding, _) = self.key_of(token, now)?;
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = std::collections::HashSet::new();
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &decoding,
            &validation,
        )
        .map(|d| d.claims)
        .map_err(|e| reject(describe(&e)))
    }

    /// Verifies a token at `now`. Blocking: may fetch the issuer's JWKS.
    pub fn verify_at(&self, token: &str, now: UnixTime) -> Result<WorkloadIdentity, Rejected> {
        let (state, expected_alg, decoding, issuer) = self.key_of(token, now)?;
        let mut validation = Validation::new(expected_alg);
        // Times are checked below against `now`, not jsonwebtoken's own clock reading, so
        // the wall clock stays in one place (`clock`) and tests can fix the time.
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = false;
        validation.validate_exp = false;
        validation.set_issuer(&[&state.config.issuer]);
        validation.set_audience(&[&state.config.audience]);
        validation.required_spec_claims = ["exp", "iat", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect();
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &decoding,
            &validation,
        )
        .map_err(|e| reject(describe(&e)))?;
        let claims = data.claims;
        let num = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        let exp = num("exp").ok_or_else(|| reject("exp is missing"))?;
        let iat = num("iat").ok_or_else(|| reject("iat is missing"))?;
        if exp + LEEWAY_SECS <= now {
            return Err(reject("token expired"));
        }
        if iat > now + LEEWAY_SECS {
            return Err(reject("token issued in the future (iat)"));
        }
        if let Some(nbf) = num("nbf")
            && nbf > now + LEEWAY_SECS
        {
            return Err(reject("token not yet valid (nbf)"));
        }
        let jti = claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| reject("token has no jti; replay protection needs one"))?
            .to_owned();
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| reject("token has no sub"))?
            .to_owned();
        let audiences = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok(WorkloadIdentity {
            issuer,
            subject,
            audiences,
            jti,
            expires_at: exp,
            claims,
        })
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".into(),
        K::ImmatureSignature => "token not yet valid (nbf)".into(),
        K::InvalidAudience => "token audience does not match this CA".into(),
        K::InvalidIssuer => "token issuer does not match".into(),
        K::InvalidSignature => "token signature does not verify".into(),
        K::MissingRequiredClaim(c) => format!("token lacks the {c} claim"),
        K::InvalidAlgorithm => "token alg does not match the key".into(),
        _ => "token does not verify".into(),
    }
}

/// Reads `iss` before verification, only to choose which issuer's keys to verify with.
pub(crate) fn unverified_issuer(token: &str) -> Result<String, Rejected> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| reject("token payload is not base64url"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| reject("token payload is not JSON"))?;
    value
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| reject("token has no iss"))
}

impl IssuerState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a fetch may start now: at most one a minute, or one a lifetime if shorter.
    fn may_fetch(&self, cache: &Cache, now: UnixTime) -> bool {
        let interval = REFETCH_INTERVAL_SECS.min(self.config.jwks_cache_ttl.max(1));
        cache.last_attempt.is_none_or(|t| now >= t + interval)
    }

    fn key_for(&self, kid: &str, now: UnixTime) -> Result<jsonwebtoken::jwk::Jwk, Rejected> {
        // The lock is held across a fetch on purpose: concurrent unknown kids wait for one
        // fetch instead of each starting their own. With the background refresh running,
        // a fetch here happens only for an unknown kid or when refreshing has failed.
        let mut cache = self.lock();
        let known = cache.keys.as_ref().is_some_and(|k| k.find(kid).is_some());
        if (!known || cache.expired_at(now)) && self.may_fetch(&cache, now) {
            cache.last_attempt = Some(now);
            match fetch(&self.config.jwks) {
                Ok(fetched) => cache.install(fetched, self.config.jwks_cache_ttl, now),
                Err(e) => {
                    tracing::warn!(issuer = %self.config.issuer, "fetching JWKS failed: {e}");
                }
            }
        }
        if cache.keys.is_some() && cache.unusable_at(now) {
            tracing::warn!(
                issuer = %self.config.issuer,
                "refusing tokens: the issuer's keys were fetched at {} and could not be refreshed since",
                crate::text::fmt_time(cache.fetched_at)
            );
            return Err(reject(
                "the issuer's signing keys could not be refreshed; try again later, and tell the CA operator if this persists",
            ));
        }
        cache
            .keys
            .as_ref()
            .and_then(|k| k.find(kid))
            .cloned()
            .ok_or_else(|| reject("token kid is not among the issuer's keys"))
    }
}

/// A fetched key set and the issuer's `Cache-Control: max-age`, if any.
struct Fetched {
    keys: JwkSet,
    max_age: Option<u64>,
}

/// `max-age` from a `Cache-Control` value; `no-store` and `no-cache` count as 0.
fn max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-store" || d == "no-cache" {
            return Some(0);
        }
        d.strip_prefix("max-age=")?.trim_matches('"').parse().ok()
    })
}

fn fetch(source: &JwksSource) -> Result<Fetched, String> {
    let (text, max_age) = match source {
        JwksSource::File(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
            None,
        ),
        JwksSource::Url(url) => {
            // A redirect could hand key selection to another host: none are followed, and
            // a 3xx is an error like any status but 200.
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .max_redirects(0)
                .build()
                .into();
            let mut resp = agent
                .get(url)
                .call()
                .map_err(|e| format!("GET {url}: {e}"))?;
            if resp.status() != 200 {
                return Err(format!(
                    "GET {url}: status {} (redirects are not followed; configure the final URL)",
                    resp.status()
                ));
            }
            let max_age = resp
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok())
                .and_then(max_age);
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_JWKS_BYTES)
                .read_to_string()
                .map_err(|e| format!("reading {url}: {e}"))?;
            (text, max_age)
        }
    };
    let keys = serde_json::from_str(&text).map_err(|e| format!("JWKS does not parse: {e}"))?;
    Ok(Fetched { keys, max_age })
}

/// Ed25519 signing keys and their JWKS for tests that sign ID tokens (`oidc`, `sso`).
#[cfg(test)]
pub(crate) mod test_keys {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    /// A signing key: its PKCS#8 DER and its public `x` for a JWK.
    pub(crate) struct Key {
        pub(crate) der: Vec<u8>,
        pub(crate) x: String,
    }

    pub(crate) fn key() -> Key {
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
        let mut der = hex::decode("302e020100300506032b657004220420").expect("constant hex");
        der.extend_from_slice(&sk.to_bytes());
        Key {
            der,
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sk.verifying_key().to_bytes()),
        }
    }

    /// A JWKS document holding `keys` by kid.
    pub(crate) fn jwks(keys: &[(&str, &Key)]) -> String {
        let keys: Vec<_> = keys
            .iter()
            .map(|(kid, k)| json!({"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": kid, "alg": "EdDSA", "use": "sig"}))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// `claims` signed by `key` under `kid` (EdDSA).
    pub(crate) fn sign(kid: &str, key: &Key, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(&key.der)).expect("signs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_790_000_000;
    const ISS: &str = "https://token.example";

    use super::test_keys::{Key, jwks, key, sign};

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        verifier: Verifier,
        key: Key,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let key = key();
        std::fs::write(&path, jwks(&[("k1", &key)])).unwrap();
        let verifier = Verifier::new(&[OidcIssuer {
            issuer: ISS.into(),
            audience: "moshca".into(),
            jwks: JwksSource::File(path.clone()),
            jwks_cache_ttl: DEFAULT_JWKS_CACHE_TTL_SECS,
        }]);
        Fixture {
            _dir: dir,
            path,
            verifier,
            key,
        }
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": ISS, "aud": "moshca", "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app", "ref": "refs/heads/main", "run_id": "42",
            "iat": NOW - 5, "nbf": NOW - 5, "exp": NOW + 300, "jti": "j-1",
        })
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn valid_token_verifies() {
        let f = fixture();
        let wl = f
            .verifier
            .verify_at(&sign("k1", &f.key, &claims()), NOW)
            .unwrap();
        assert_eq!(wl.issuer, ISS);
        assert_eq!(wl.claim("repository"), Some("acme/app"));
        assert_eq!(wl.jti, "j-1");
        assert_eq!(wl.audiences, ["moshca"]);
    }

    fn refused(f: &Fixture, token: &str) -> String {
        f.verifier.verify_at(token, NOW).unwrap_err().0
    }

    #[test]
    fn alg_none_is_refused() {
        let f = fixture();
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "k1"})),
            b64(&claims())
        );
        refused(&f, &token);
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "None", "kid": "k1"})),
            b64(&claims())
        );
        refused(&f, &token);
    }

    #[test]
    fn hmac_with_the_public_key_as_secret_is_refused() {
        let f = fixture();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        for secret in [
            f.key.x.as_bytes().to_vec(),
            jwks(&[("k1", &f.key)]).into_bytes(),
        ] {
            let token =
                jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
            assert!(refused(&f, &token).contains("not accepted"));
        }
    }

    #[test]
    fn wrong_key_issuer_audience_and_times_are_refused() {
        let f = fixture();
        let other = key();
        assert!(refused(&f, &sign("k1", &other, &claims())).contains("signature"));
        assert!(refused(&f, &sign("nope", &f.key, &claims())).contains("kid"));
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("issuer"));
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("audience"));
        let mut c = claims();
        c["exp"] = json!(NOW - 61);
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("expired"));
        let mut c = claims();
        c["nbf"] = json!(NOW + 120);
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("not yet valid"));
        let mut c = claims();
        c["iat"] = json!(NOW + 120);
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("future"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("jti");
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("jti"));
        // Within the leeway is fine.
        let mut c = claims();
        c["exp"] = json!(NOW - 30);
        assert!(f.verifier.verify_at(&sign("k1", &f.key, &c), NOW).is_ok());
    }

    #[test]
    fn alg_must_match_the_key_type() {
        let f = fixture();
        // An ES256 header with an Ed25519 key id: refused before any signature check.
        let token = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})),
            b64(&claims())
        );
        assert!(refused(&f, &token).contains("does not match"));
    }

    #[test]
    fn unknown_kids_refetch_at_most_once_a_minute() {
        let f = fixture();
        f.verifier
            .verify_at(&sign("k1", &f.key, &claims()), NOW)
            .unwrap();
        let k2 = key();
        std::fs::write(&f.path, jwks(&[("k1", &f.key), ("k2", &k2)])).unwrap();
        // The first unknown kid within the interval is not refetched.
        let t2 = sign("k2", &k2, &claims());
        assert!(f.verifier.verify_at(&t2, NOW + 10).is_err());
        assert!(f.verifier.verify_at(&t2, NOW + 59).is_err());
        // After the interval one refetch happens and the new key works.
        assert!(f.verifier.verify_at(&t2, NOW + 60).is_ok());
        // A flood of made-up kids right after does not refetch again.
        std::fs::write(&f.path, "{\"keys\": []}").unwrap();
        for i in 0..50 {
            assert!(
                f.verifier
                    .verify_at(&sign(&format!("x{i}"), &k2, &claims()), NOW + 61)
                    .is_err()
            );
        }
        assert!(
            f.verifier.verify_at(&t2, NOW + 62).is_ok(),
            "cache kept, not wiped by the flood"
        );
    }

    fn with_ttl(f: &Fixture, ttl: u64, jwks: JwksSource) -> Verifier {
        let _ = f;
        Verifier::new(&[OidcIssuer {
            issuer: ISS.into(),
            audience: "moshca".into(),
            jwks,
            jwks_cache_ttl: ttl,
        }])
    }

    #[test]
    fn finding_6_a_removed_key_is_refused_once_the_lifetime_passes() {
        let f = fixture();
        let v = with_ttl(&f, 120, JwksSource::File(f.path.clone()));
        let token = sign("k1", &f.key, &claims());
        v.verify_at(&token, NOW).unwrap();
        // The issuer drops k1 (say, it leaked) and publishes k2 only.
        let k2 = key();
        std::fs::write(&f.path, jwks(&[("k2", &k2)])).unwrap();
        // Within the lifetime the cached set still holds k1.
        assert!(v.verify_at(&token, NOW + 90).is_ok());
        // Once it passes, k1 is gone, even with no background refresh and a known kid.
        let e = v.verify_at(&token, NOW + 120).unwrap_err().0;
        assert!(e.contains("kid is not among"), "{e}");
        assert!(v.verify_at(&sign("k2", &k2, &claims()), NOW + 121).is_ok());
    }

    #[test]
    fn the_background_refresh_replaces_keys_before_they_expire() {
        let f = fixture();
        let v = with_ttl(&f, 100, JwksSource::File(f.path.clone()));
        // The first refresh fetches; no request waits for it.
        assert_eq!(v.refresh_due_at(NOW), 1);
        assert_eq!(v.refresh_due_at(NOW + 1), 0);
        let token = sign("k1", &f.key, &claims());
        v.verify_at(&token, NOW + 2).unwrap();
        std::fs::write(&f.path, "{\"keys\": []}").unwrap();
        assert_eq!(
            v.refresh_due_at(NOW + 79),
            0,
            "not yet at 80% of the lifetime"
        );
        assert_eq!(v.refresh_due_at(NOW + 80), 1);
        assert!(v.verify_at(&token, NOW + 81).is_err());
    }

    #[test]
    fn failed_refreshes_keep_the_old_keys_one_more_lifetime_at_most() {
        let f = fixture();
        let v = with_ttl(&f, 100, JwksSource::File(f.path.clone()));
        let token = sign("k1", &f.key, &claims());
        v.verify_at(&token, NOW).unwrap();
        std::fs::remove_file(&f.path).unwrap();
        assert_eq!(v.refresh_due_at(NOW + 80), 0, "the fetch failed");
        assert!(
            v.verify_at(&token, NOW + 150).is_ok(),
            "stale but within the limit"
        );
        let e = v.verify_at(&token, NOW + 200).unwrap_err().0;
        assert!(e.contains("could not be refreshed"), "{e}");
        // A later successful fetch restores service.
        std::fs::write(&f.path, jwks(&[("k1", &f.key)])).unwrap();
        assert!(v.verify_at(&token, NOW + 300).is_ok());
    }

    #[test]
    fn max_age_shortens_the_lifetime_within_bounds() {
        assert_eq!(max_age("public, max-age=120"), Some(120));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
        assert_eq!(lifetime(300, None), 300);
        assert_eq!(lifetime(300, Some(120)), 120);
        assert_eq!(lifetime(300, Some(86_400)), 300, "never lengthened");
        assert_eq!(
            lifetime(300, Some(0)),
            MIN_MAX_AGE_SECS,
            "never below a minute"
        );
        assert_eq!(
            lifetime(2, Some(0)),
            2,
            "the configured lifetime still bounds it"
        );
    }

    /// An HTTP server on 127.0.0.1 answering every request with `response`; counts hits
    /// per path.
    fn http(
        response: impl Fn(&str) -> String + Send + 'static,
    ) -> (String, std::sync::Arc<Mutex<HashMap<String, usize>>>) {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(Mutex::new(HashMap::new()));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(n) if n > 2 => {}
                        _ => break,
                    }
                }
                *counted.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let _ = (&stream).write_all(response(&path).as_bytes());
            }
        });
        (base, hits)
    }

    fn ok(body: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn finding_6_a_redirecting_jwks_url_is_refused() {
        let f = fixture();
        let set = jwks(&[("k1", &f.key)]);
        let (base, hits) = http(move |path| {
            if path == "/real" {
                ok(&set, "")
            } else {
                "HTTP/1.1 302 Found\r\nlocation: /real\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()
            }
        });
        let v = with_ttl(&f, 300, JwksSource::Url(format!("{base}/jwks")));
        let e = v
            .verify_at(&sign("k1", &f.key, &claims()), NOW)
            .unwrap_err()
            .0;
        assert!(e.contains("kid is not among"), "{e}");
        let hits = hits.lock().unwrap().clone();
        assert_eq!(hits.get("/jwks"), Some(&1));
        assert_eq!(hits.get("/real"), None, "the redirect was not followed");
        // The same keys at the final URL verify.
        let v = with_ttl(&f, 300, JwksSource::Url(format!("{base}/real")));
        assert!(v.verify_at(&sign("k1", &f.key, &claims()), NOW).is_ok());
    }

    #[test]
    fn cache_control_max_age_is_honoured() {
        let f = fixture();
        let set = jwks(&[("k1", &f.key)]);
        let (base, hits) = http(move |_| ok(&set, "cache-control: public, max-age=60\r\n"));
        let v = with_ttl(&f, 300, JwksSource::Url(format!("{base}/jwks")));
        let token = sign("k1", &f.key, &claims());
        v.verify_at(&token, NOW).unwrap();
        v.verify_at(&token, NOW + 59).unwrap();
        assert_eq!(hits.lock().unwrap().get("/jwks"), Some(&1));
        v.verify_at(&token, NOW + 60).unwrap();
        assert_eq!(
            hits.lock().unwrap().get("/jwks"),
            Some(&2),
            "refetched after max-age, not after the configured 300 s"
        );
    }

    #[test]
    fn unconfigured_issuer_is_refused_without_fetching() {
        let f = fixture();
        std::fs::remove_file(&f.path).unwrap();
        let mut c = claims();
        c["iss"] = json!("https://unknown.example");
        assert!(refused(&f, &sign("k1", &f.key, &c)).contains("not configured"));
    }
}
