//! The server's own settings (`DATA_DIR/config.toml`): raw file -> validated [`Config`].
//!
//! Pure apart from [`Config::load`] reading the file. Every problem is reported at once.
//! Relative paths are resolved against the data directory. Roles and RBAC live in the
//! policy file (`policy`), not here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::oidc::{JwksSource, OidcIssuer};
use crate::policy::{fmt_secs, parse_duration};
use crate::store::NOTIFY_ACTIONS;

/// Longest ttl any role may grant unless config.toml says otherwise.
pub const DEFAULT_MAX_TTL: u64 = 24 * 3600;

/// Delivery attempts per notification unless a webhook says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory everything is relative to.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Policy file.
    pub policy: PathBuf,
    /// Where the rows are: a SQLite file, or a PostgreSQL database shared by replicas.
    pub database: crate::store::Database,
    /// CA private key.
    pub ca_key: PathBuf,
    /// File holding the CA key passphrase, when the key is encrypted.
    pub passphrase_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    pub tls_key: PathBuf,
    /// Upper bound for every ttl in the policy.
    pub max_ttl: u64,
    /// OIDC issuers whose ID tokens CI jobs may present.
    pub oidc_issuers: Vec<OidcIssuer>,
    /// Webhooks notified of requests and decisions (`[[notify.webhook]]`).
    pub webhooks: Vec<Webhook>,
    /// Where every signed audit checkpoint is also appended (`[audit] checkpoint_file`),
    /// outside the database; best on another disk or host.
    pub checkpoint_file: PathBuf,
    /// Host CA private key (`host_ca_key`), never the same key as `ca_key`.
    pub host_ca_key: PathBuf,
    /// Validity of host certificates unless a join token says otherwise (`host_cert_ttl`).
    pub host_cert_ttl: u64,
    /// People signing in through an OpenID Connect identity provider (`[sso]`).
    pub sso: Option<Sso>,
    /// Where `GET /metrics` is served over plain HTTP (`metrics_listen`); none when absent.
    pub metrics_listen: Option<SocketAddr>,
}

/// Sign-in of people through an OpenID Connect identity provider (`[sso]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sso {
    /// The provider's issuer URL, exactly as its ID tokens' `iss`.
    pub issuer: String,
    /// The public client id ID tokens must be issued to (`aud`, `azp`).
    pub client_id: String,
    /// The claim holding the CA user name.
    pub username_claim: String,
    /// The claim holding the caller's groups.
    pub groups_claim: String,
    /// Scopes clients ask for.
    pub scopes: Vec<String>,
    /// Claims that must be present with exactly these string values.
    pub required_claims: Vec<(String, String)>,
    /// Longest session, seconds.
    pub session_ttl: u64,
    /// Clock skew tolerated on `exp` and `iat`, seconds.
    pub clock_leeway: u64,
    /// How long the provider's keys are trusted before they are refetched, seconds.
    pub jwks_cache_ttl: u64,
}

/// Session length unless `[sso] session_ttl` says otherwise.
pub const DEFAULT_SESSION_TTL: u64 = 8 * 3600;
/// Longest `[sso] session_ttl`.
pub const MAX_SESSION_TTL: u64 = 24 * 3600;
/// Clock leeway unless `[sso] clock_leeway` says otherwise.
pub const DEFAULT_CLOCK_LEEWAY: u64 = 30;
/// Longest `[sso] clock_leeway`.
pub const MAX_CLOCK_LEEWAY: u64 = 300;

/// Validity of host certificates unless config.toml says otherwise: 30 days.
pub const DEFAULT_HOST_CERT_TTL: u64 = 30 * 24 * 3600;
/// Longest `host_cert_ttl` (and join token `--cert-ttl`): a year.
pub const MAX_HOST_CERT_TTL: u64 = 365 * 24 * 3600;

/// Where checkpoints go unless `[audit] checkpoint_file` says otherwise: outside the
/// database but, by default, inside the data directory (the only place a hardened unit may
/// write); point it at another disk or host.
pub const DEFAULT_CHECKPOINT_FILE: &str = "checkpoints/audit-checkpoints.jsonl";

/// A webhook that receives notifications (`[[notify.webhook]]`).
///
/// `Debug` shows only the URL's scheme and host: the rest may hold a token (Slack).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Unique name; deliveries are recorded under it.
    pub name: String,
    /// Where to POST: https, or http to a loopback host.
    pub url: String,
    /// Audit actions it receives, a subset of [`NOTIFY_ACTIONS`].
    pub events: Vec<String>,
    /// Body shape.
    pub format: WebhookFormat,
    /// File holding the HMAC-SHA256 signing secret, when bodies are signed.
    pub secret_file: Option<PathBuf>,
    /// Tries before a notification is dropped (and the drop audited).
    pub max_attempts: u32,
}

impl Webhook {
    /// Scheme and host of the URL, safe to log.
    pub fn origin(&self) -> &str {
        url_origin(&self.url)
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &format_args!("{}/...", self.origin()))
            .field("events", &self.events)
            .field("format", &self.format)
            .field("secret_file", &self.secret_file)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// moshca's JSON object (event, request, summary text).
    Json,
    /// A Slack incoming-webhook message: `{"text": ...}`.
    Slack,
}

/// `scheme://host[:port]` of a URL: what may be logged of a URL that can carry a token.
pub fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let origin = &url[..end];
    // Credentials in the authority part (`https://user:pass@host`) are not logged either.
    match origin[after_scheme..].rfind('@') {
        Some(_) => &url[..after_scheme],
        None => origin,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    policy: Option<String>,
    database: Option<String>,
    ca_key: Option<String>,
    passphrase_file: Option<String>,
    max_ttl: Option<String>,
    host_ca_key: Option<String>,
    host_cert_ttl: Option<String>,
    tls: Option<RawTls>,
    oidc: Option<RawOidc>,
    notify: Option<RawNotify>,
    audit: Option<RawAudit>,
    sso: Option<RawSso>,
    metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSso {
    issuer: String,
    client_id: String,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    required_claims: std::collections::BTreeMap<String, String>,
    session_ttl: Option<String>,
    clock_leeway: Option<String>,
    jwks_cache_ttl: Option<String>,
}

/// A duration within `min..=max`, or `default` when absent.
fn bounded_duration(
    value: Option<&str>,
    (min, max, default): (u64, u64, u64),
    at: &str,
    errors: &mut Vec<String>,
) -> u64 {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(v)) if (min..=max).contains(&v) => v,
        Some(Ok(v)) => {
            errors.push(format!(
                "{at}: {} is outside {}..{}",
                fmt_secs(v),
                fmt_secs(min),
                fmt_secs(max)
            ));
            default
        }
        Some(Err(e)) => {
            errors.push(format!("{at}: {e}"));
            default
        }
    }
}

/// Validates `[sso]`.
fn sso(raw: RawSso, oidc: &[OidcIssuer], origin: &str, errors: &mut Vec<String>) -> Sso {
    let at = format!("{origin}: sso");
    if !acceptable_url(&raw.issuer) || raw.issuer.chars().any(char::is_whitespace) {
        errors.push(format!(
            "{at}.issuer: must be an https URL (http only for 127.0.0.1, ::1 or localhost)"
        ));
    }
    let client_ok = (1..=256).contains(&raw.client_id.len())
        && raw.client_id.bytes().all(|b| b.is_ascii_graphic());
    if !client_ok {
        errors.push(format!(
            "{at}.client_id: use 1 to 256 printable characters without spaces"
        ));
    }
    // People's ID tokens and CI jobs' ID tokens must never be interchangeable: the same
    // issuer may serve both only with different audiences.
    if oidc
        .iter()
        .any(|o| o.issuer == raw.issuer && o.audience == raw.client_id)
    {
        errors.push(format!(
            "{at}.client_id: the [[oidc.issuer]] for {} uses the same audience; give CI jobs' tokens another audience so a person's ID token can never pass as a workload's",
            raw.issuer
        ));
    }
    let claim = |v: Option<String>, default: &str, name: &str, errors: &mut Vec<String>| {
        let v = v.unwrap_or_else(|| default.to_owned());
        if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
            errors.push(format!("{at}.{name}: use 1 to 128 characters"));
        }
        v
    };
    let username_claim = claim(
        raw.username_claim,
        "preferred_username",
        "username_claim",
        errors,
    );
    let groups_claim = claim(raw.groups_claim, "groups", "groups_claim", errors);
    let mut scopes = raw
        .scopes
        .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "groups".into()]);
    if scopes.iter().any(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        errors.push(format!(
            "{at}.scopes: scopes are non-empty words without spaces"
        ));
    }
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let required_claims: Vec<(String, String)> = raw.required_claims.into_iter().collect();
    let session_ttl = bounded_duration(
        raw.session_ttl.as_deref(),
        (60, MAX_SESSION_TTL, DEFAULT_SESSION_TTL),
        &format!("{at}.session_ttl"),
        errors,
    );
    let clock_leeway = bounded_duration(
        raw.clock_leeway.as_deref(),
        (0, MAX_CLOCK_LEEWAY, DEFAULT_CLOCK_LEEWAY),
        &format!("{at}.clock_leeway"),
        errors,
    );
    let jwks_cache_ttl = jwks_cache_ttl(
        raw.jwks_cache_ttl.as_deref(),
        crate::oidc::DEFAULT_JWKS_CACHE_TTL_SECS,
        &format!("{at}.jwks_cache_ttl"),
        errors,
    );
    Sso {
        issuer: raw.issuer,
        client_id: raw.client_id,
        username_claim,
        groups_claim,
        scopes,
        required_claims,
        session_ttl,
        clock_leeway,
        jwks_cache_ttl,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    events: Option<Vec<String>>,
    format: Option<String>,
    secret_file: Option<String>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    jwks_cache_ttl: Option<String>,
    #[serde(default)]
    issuer: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audience: String,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    jwks_cache_ttl: Option<String>,
}

/// Longest `jwks_cache_ttl`: a removed key must not stay trusted for days.
pub const MAX_JWKS_CACHE_TTL: u64 = 24 * 3600;

/// A `jwks_cache_ttl` value (1s..24h), or `default` when absent.
fn jwks_cache_ttl(value: Option<&str>, default: u64, at: &str, errors: &mut Vec<String>) -> u64 {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(v)) if (1..=MAX_JWKS_CACHE_TTL).contains(&v) => v,
        Some(Ok(v)) => {
            errors.push(format!("{at}: {} is outside 1s..24h", fmt_secs(v)));
            default
        }
        Some(Err(e)) => {
            errors.push(format!("{at}: {e}"));
            default
        }
    }
}

/// Whether a URL is https, or http to a loopback host (for tests and local stand-ins).
pub(crate) fn acceptable_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Userinfo would let `http://127.0.0.1:x@example.com/` pass as loopback.
    if authority.contains('@') {
        return false;
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

/// Every problem found in config.toml.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", errors.join("\n"))]
pub struct ConfigError {
    /// One line per problem.
    pub errors: Vec<String>,
}

impl Config {
    /// Reads and validates `DATA_DIR/config.toml`.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            errors: vec![format!(
                "{}: {e}; run `moshca-server init --data-dir {}` first",
                path.display(),
                data_dir.display()
            )],
        })?;
        Self::parse(&text, data_dir)
    }

    /// Validates config text for `data_dir`.
    pub fn parse(text: &str, data_dir: &Path) -> Result<Self, ConfigError> {
        let origin = data_dir.join("config.toml").display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            errors: vec![format!("{origin}: {}", e.message().trim())],
        })?;
        let mut errors = Vec::new();
        let path = |v: Option<String>, default: &str| {
            let p = PathBuf::from(v.unwrap_or_else(|| default.to_owned()));
            if p.is_absolute() { p } else { data_dir.join(p) }
        };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:7443")
            .parse()
            .unwrap_or_else(|_| {
                errors.push(format!("{origin}: listen: expected ADDRESS:PORT"));
                SocketAddr::from(([127, 0, 0, 1], 7443))
            });
        let metrics_listen = raw.metrics_listen.as_deref().and_then(|v| {
            v.parse()
                .map_err(|_| {
                    errors.push(format!(
                        "{origin}: metrics_listen: expected ADDRESS:PORT, e.g. \"127.0.0.1:9464\""
                    ))
                })
                .ok()
        });
        let max_ttl = match raw.max_ttl.as_deref().map(parse_duration) {
            None => DEFAULT_MAX_TTL,
            Some(Ok(v)) if (60..=30 * 24 * 3600).contains(&v) => v,
            Some(Ok(v)) => {
                errors.push(format!(
                    "{origin}: max_ttl: {} is outside 1m..30d",
                    fmt_secs(v)
                ));
                DEFAULT_MAX_TTL
            }
            Some(Err(e)) => {
                errors.push(format!("{origin}: max_ttl: {e}"));
                DEFAULT_MAX_TTL
            }
        };
        let host_cert_ttl = match raw.host_cert_ttl.as_deref().map(parse_duration) {
            None => DEFAULT_HOST_CERT_TTL,
            Some(Ok(v)) if (60..=MAX_HOST_CERT_TTL).contains(&v) => v,
            Some(Ok(v)) => {
                errors.push(format!(
                    "{origin}: host_cert_ttl: {} is outside 1m..365d",
                    fmt_secs(v)
                ));
                DEFAULT_HOST_CERT_TTL
            }
            Some(Err(e)) => {
                errors.push(format!("{origin}: host_cert_ttl: {e}"));
                DEFAULT_HOST_CERT_TTL
            }
        };
        let (cert, key) = raw.tls.map(|t| (t.cert, t.key)).unwrap_or((None, None));
        let mut oidc_issuers = Vec::new();
        let (global_ttl, raw_issuers) = raw
            .oidc
            .map(|o| (o.jwks_cache_ttl, o.issuer))
            .unwrap_or_default();
        let global_ttl = jwks_cache_ttl(
            global_ttl.as_deref(),
            crate::oidc::DEFAULT_JWKS_CACHE_TTL_SECS,
            &format!("{origin}: oidc.jwks_cache_ttl"),
            &mut errors,
        );
        for (i, iss) in raw_issuers.into_iter().enumerate() {
            let at = format!("{origin}: oidc.issuer[{i}]");
            let ttl = jwks_cache_ttl(
                iss.jwks_cache_ttl.as_deref(),
                global_ttl,
                &format!("{at}.jwks_cache_ttl"),
                &mut errors,
            );
            if !acceptable_url(&iss.issuer) {
                errors.push(format!(
                    "{at}.issuer: must be an https URL (http only on loopback)"
                ));
            }
            if iss.audience.trim().is_empty() {
                errors.push(format!("{at}.audience: must not be empty"));
            }
            if oidc_issuers
                .iter()
                .any(|o: &OidcIssuer| o.issuer == iss.issuer)
            {
                errors.push(format!("{at}.issuer: listed twice"));
            }
            let jwks = match (iss.jwks_file, iss.jwks_url) {
                (Some(f), None) => JwksSource::File(path(Some(f), "")),
                (None, Some(u)) if acceptable_url(&u) => JwksSource::Url(u),
                (None, Some(_)) => {
                    errors.push(format!(
                        "{at}.jwks_url: must be https (http only on loopback)"
                    ));
                    continue;
                }
                _ => {
                    errors.push(format!("{at}: give exactly one of jwks_file and jwks_url"));
                    continue;
                }
            };
            oidc_issuers.push(OidcIssuer {
                issuer: iss.issuer,
                audience: iss.audience,
                jwks,
                jwks_cache_ttl: ttl,
            });
        }
        let mut webhooks: Vec<Webhook> = Vec::new();
        for (i, hook) in raw
            .notify
            .map(|n| n.webhook)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = format!("{origin}: notify.webhook[{i}]");
            let name_ok = (1..=64).contains(&hook.name.len())
                && hook
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !name_ok {
                errors.push(format!(
                    "{at}.name: use 1 to 64 letters, digits, '.', '_' or '-'"
                ));
            } else if webhooks.iter().any(|w| w.name == hook.name) {
                errors.push(format!("{at}.name: {:?} is used twice", hook.name));
            }
            // The URL itself is not repeated: it may carry a token.
            if !acceptable_url(&hook.url) || hook.url.chars().any(char::is_whitespace) {
                errors.push(format!(
                    "{at}.url: must be an https URL (http only on loopback)"
                ));
            }
            let events = match hook.events {
                None => NOTIFY_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
                Some(list) if list.is_empty() => {
                    errors.push(format!(
                        "{at}.events: must not be empty; leave it out to receive every event"
                    ));
                    Vec::new()
                }
                Some(list) => {
                    let mut events: Vec<String> = Vec::new();
                    for e in list {
                        if !NOTIFY_ACTIONS.contains(&e.as_str()) {
                            errors.push(format!(
                                "{at}.events: unknown event {e:?}; known: {}",
                                NOTIFY_ACTIONS.join(", ")
                            ));
                        } else if !events.contains(&e) {
                            events.push(e);
                        }
                    }
                    events
                }
            };
            let format = match hook.format.as_deref() {
                None | Some("json") => WebhookFormat::Json,
                Some("slack") => WebhookFormat::Slack,
                Some(other) => {
                    errors.push(format!(
                        "{at}.format: {other:?} is not \"json\" or \"slack\""
                    ));
                    WebhookFormat::Json
                }
            };
            let max_attempts = match hook.max_attempts {
                None => DEFAULT_MAX_ATTEMPTS,
                Some(n) if (1..=100).contains(&n) => n,
                Some(n) => {
                    errors.push(format!("{at}.max_attempts: {n} is outside 1..100"));
                    DEFAULT_MAX_ATTEMPTS
                }
            };
            webhooks.push(Webhook {
                name: hook.name,
                url: hook.url,
                events,
                format,
                secret_file: hook.secret_file.map(|p| path(Some(p), "")),
                max_attempts,
            });
        }
        let sso = raw.sso.map(|r| sso(r, &oidc_issuers, &origin, &mut errors));
        if path(raw.ca_key.clone(), "ca_key") == path(raw.host_ca_key.clone(), "host_ca_key") {
            errors.push(format!(
                "{origin}: host_ca_key: must be another file than ca_key; hosts and users are certified by separate keys"
            ));
        }
        let database = match crate::store::Database::parse(
            raw.database.as_deref().unwrap_or("moshca.db"),
            data_dir,
        ) {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{origin}: database: {e}"));
                crate::store::Database::Sqlite(data_dir.join("moshca.db"))
            }
        };
        let config = Config {
            data_dir: data_dir.to_owned(),
            listen,
            policy: path(raw.policy, "policy.toml"),
            database,
            ca_key: path(raw.ca_key, "ca_key"),
            host_ca_key: path(raw.host_ca_key, "host_ca_key"),
            host_cert_ttl,
            metrics_listen,
            passphrase_file: raw.passphrase_file.map(|p| path(Some(p), "")),
            tls_cert: path(cert, "tls/cert.pem"),
            tls_key: path(key, "tls/key.pem"),
            max_ttl,
            oidc_issuers,
            webhooks,
            checkpoint_file: path(
                raw.audit.and_then(|a| a.checkpoint_file),
                DEFAULT_CHECKPOINT_FILE,
            ),
            sso,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { errors })
        }
    }
}

/// The config.toml `moshca-server init` writes.
pub fn example(passphrase_file: Option<&Path>) -> String {
    let pass = match passphrase_file {
        Some(p) => format!("passphrase_file = {:?}\n", p.display().to_string()),
        None => "# passphrase_file = \"/run/credentials/moshca-server.service/ca-passphrase\"\n"
            .to_owned(),
    };
    format!(
        r#"# moshca-server settings. Relative paths are relative to this directory.
listen = "127.0.0.1:7443"
policy = "policy.toml"
# A SQLite file, or for several replicas a PostgreSQL URL:
# "postgres://USER:PASSWORD@HOST:PORT[,HOST2:PORT2]/DB?target_session_attrs=read-write"
# (add &sslmode=verify-full&sslrootcert=FILE for TLS). A URL's password makes this file secret.
database = "moshca.db"
ca_key = "ca_key"
{pass}max_ttl = "24h"        # no policy may grant more
host_ca_key = "host_ca_key"   # signs host certificates only (`moshca host enroll`)
host_cert_ttl = "30d"         # validity of host certificates (1m..365d)
# metrics_listen = "127.0.0.1:9464"   # Prometheus GET /metrics, plain HTTP; absent = off

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

# OIDC issuers whose ID tokens CI jobs may present (`moshca ci`).
# [oidc]
# jwks_cache_ttl = "5m"       # how long fetched keys are trusted (1s..24h; per issuer too)
# [[oidc.issuer]]
# issuer = "https://token.actions.githubusercontent.com"
# audience = "moshca"
# jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"

# People sign in through an OpenID Connect identity provider (`moshca auth login`).
# [sso]
# issuer = "https://login.example.com"     # its discovery document is checked at start
# client_id = "moshca"                     # public client: PKCE and device grant
# username_claim = "preferred_username"
# groups_claim = "groups"
# scopes = ["openid", "profile", "groups"]
# required_claims = {{ hd = "example.com" }}
# session_ttl = "8h"                       # at most 24h
# clock_leeway = "30s"                     # at most 5m

# Webhooks told about requests and decisions (approvers, requesters, chat channels).
# [[notify.webhook]]
# name = "approvers-slack"
# url = "https://hooks.slack.com/services/..."
# events = ["request.created", "request.break_glass", "certificate.issued"]   # default: all
# format = "slack"                                   # or "json" (the default)
# secret_file = "/etc/moshca/webhook-secret"         # signs bodies: X-Moshca-Signature
# max_attempts = 8

# Every signed audit checkpoint is also appended here (JSON lines), outside the database,
# so `moshca-server audit verify --checkpoints FILE` catches a chain cut or rewritten
# below any of them. Put it on another disk or a host-mounted, append-only path (and in
# the unit's ReadWritePaths=).
# [audit]
# checkpoint_file = "/var/lib/moshca-checkpoints/audit-checkpoints.jsonl"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_with_defaults() {
        let c = Config::parse(&example(None), Path::new("/srv/moshca")).unwrap();
        assert_eq!(c.listen.port(), 7443);
        assert_eq!(
            c.database,
            crate::store::Database::Sqlite("/srv/moshca/moshca.db".into())
        );
        assert_eq!(c.tls_cert, Path::new("/srv/moshca/tls/cert.pem"));
        assert_eq!(c.max_ttl, DEFAULT_MAX_TTL);
        assert!(c.passphrase_file.is_none());
    }

    #[test]
    fn host_ca_settings() {
        let c = Config::parse(&example(None), Path::new("/srv/moshca")).unwrap();
        assert_eq!(c.host_ca_key, Path::new("/srv/moshca/host_ca_key"));
        assert_eq!(c.host_cert_ttl, DEFAULT_HOST_CERT_TTL);
        let c = Config::parse("host_cert_ttl = \"1m\"\n", Path::new("/d")).unwrap();
        assert_eq!(c.host_cert_ttl, 60);
        for bad in ["host_cert_ttl = \"59s\"", "host_cert_ttl = \"400d\""] {
            let e = Config::parse(bad, Path::new("/d")).unwrap_err();
            assert!(e.errors[0].contains("host_cert_ttl"), "{e}");
        }
        // One key for users and hosts would let either kind of certificate pass as the other.
        let e = Config::parse("host_ca_key = \"ca_key\"\n", Path::new("/d")).unwrap_err();
        assert!(e.errors[0].contains("another file than ca_key"), "{e}");
    }

    #[test]
    fn every_error_reported() {
        let e = Config::parse("listen = \"nowhere\"\nmax_ttl = \"90d\"\n", Path::new("/d"))
            .unwrap_err();
        assert_eq!(e.errors.len(), 2, "{e}");
        assert!(e.errors[0].contains("listen"));
        assert!(e.errors[1].contains("max_ttl"));
    }

    #[test]
    fn oidc_issuers() {
        let c = Config::parse(
            "[[oidc.issuer]]\nissuer = \"https://token.actions.githubusercontent.com\"\naudience = \"moshca\"\njwks_url = \"https://token.actions.githubusercontent.com/.well-known/jwks\"\n[[oidc.issuer]]\nissuer = \"http://127.0.0.1:9999\"\naudience = \"moshca\"\njwks_file = \"jwks.json\"\n",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(c.oidc_issuers.len(), 2);
        assert_eq!(
            c.oidc_issuers[1].jwks,
            JwksSource::File("/d/jwks.json".into())
        );
        let e = Config::parse(
            "[[oidc.issuer]]\nissuer = \"http://example.com\"\naudience = \"\"\njwks_url = \"http://example.com/jwks\"\njwks_file = \"x\"\n",
            Path::new("/d"),
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 3, "{e}");
    }

    #[test]
    fn sso_defaults_bounds_and_separation_from_ci_tokens() {
        let c = Config::parse(
            "[sso]\nissuer = \"https://login.example.com\"\nclient_id = \"moshca\"\nrequired_claims = { hd = \"example.com\" }\n",
            Path::new("/d"),
        )
        .unwrap();
        let sso = c.sso.unwrap();
        assert_eq!(sso.username_claim, "preferred_username");
        assert_eq!(sso.groups_claim, "groups");
        assert_eq!(sso.scopes, ["openid", "profile", "groups"]);
        assert_eq!(sso.required_claims, [("hd".into(), "example.com".into())]);
        assert_eq!((sso.session_ttl, sso.clock_leeway), (8 * 3600, 30));
        assert!(Config::parse("", Path::new("/d")).unwrap().sso.is_none());
        let e = Config::parse(
            "[sso]\nissuer = \"http://login.example.com\"\nclient_id = \"\"\nsession_ttl = \"25h\"\nclock_leeway = \"6m\"\n",
            Path::new("/d"),
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 4, "{e}");
        assert!(
            e.errors
                .iter()
                .all(|l| l.starts_with("/d/config.toml: sso.")),
            "{e}"
        );
        // The same issuer and audience for CI jobs would let a person's ID token pass as
        // a workload's.
        let e = Config::parse(
            "[sso]\nissuer = \"https://login.example.com\"\nclient_id = \"moshca\"\n[[oidc.issuer]]\nissuer = \"https://login.example.com\"\naudience = \"moshca\"\njwks_file = \"j\"\n",
            Path::new("/d"),
        )
        .unwrap_err();
        assert!(e.errors[0].contains("same audience"), "{e}");
        let scoped = Config::parse(
            "[sso]\nissuer = \"http://127.0.0.1:8080\"\nclient_id = \"moshca\"\nscopes = [\"profile\"]\n",
            Path::new("/d"),
        )
        .unwrap();
        assert_eq!(scoped.sso.unwrap().scopes, ["openid", "profile"]);
    }

    #[test]
    fn jwks_cache_ttl_globally_and_per_issuer() {
        let issuers = "[[oidc.issuer]]\nissuer = \"https://a.example\"\naudience = \"m\"\njwks_file = \"a\"\n[[oidc.issuer]]\nissuer = \"https://b.example\"\naudience = \"m\"\njwks_file = \"b\"\njwks_cache_ttl = \"30s\"\n";
        let c = Config::parse(issuers, Path::new("/d")).unwrap();
        let ttls: Vec<u64> = c.oidc_issuers.iter().map(|i| i.jwks_cache_ttl).collect();
        assert_eq!(ttls, [crate::oidc::DEFAULT_JWKS_CACHE_TTL_SECS, 30]);
        let c = Config::parse(
            &format!("[oidc]\njwks_cache_ttl = \"2m\"\n{issuers}"),
            Path::new("/d"),
        )
        .unwrap();
        let ttls: Vec<u64> = c.oidc_issuers.iter().map(|i| i.jwks_cache_ttl).collect();
        assert_eq!(ttls, [120, 30]);
        let e = Config::parse(
            &format!("[oidc]\njwks_cache_ttl = \"2d\"\n{issuers}"),
            Path::new("/d"),
        )
        .unwrap_err();
        assert!(e.errors[0].contains("oidc.jwks_cache_ttl"), "{e}");
    }

    #[test]
    fn webhooks() {
        let c = Config::parse(
            "[[notify.webhook]]\nname = \"approvers-slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/s3cr3t\"\nevents = [\"request.created\", \"request.break_glass\"]\nformat = \"slack\"\nsecret_file = \"hook-secret\"\nmax_attempts = 3\n[[notify.webhook]]\nname = \"audit-sink\"\nurl = \"http://127.0.0.1:8080/hook\"\n",
            Path::new("/d"),
        )
        .unwrap();
        let [slack, sink] = &c.webhooks[..] else {
            panic!("{:?}", c.webhooks)
        };
        assert_eq!(slack.events, ["request.created", "request.break_glass"]);
        assert_eq!(slack.format, WebhookFormat::Slack);
        assert_eq!(
            slack.secret_file.as_deref(),
            Some(Path::new("/d/hook-secret"))
        );
        assert_eq!(slack.max_attempts, 3);
        let shown = format!("{slack:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("https://hooks.slack.com/..."), "{shown}");
        assert_eq!(sink.events.len(), NOTIFY_ACTIONS.len());
        assert_eq!(sink.format, WebhookFormat::Json);
        assert_eq!(sink.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(sink.secret_file.is_none());

        let e = Config::parse(
            "[[notify.webhook]]\nname = \"a b\"\nurl = \"http://example.com/T0/s3cr3t\"\nevents = [\"request.creatd\"]\nformat = \"xml\"\nmax_attempts = 0\n[[notify.webhook]]\nname = \"x\"\nurl = \"https://x\"\nevents = []\n[[notify.webhook]]\nname = \"x\"\nurl = \"https://x\"\n",
            Path::new("/d"),
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 7, "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = Config::parse(
            "[[notify.webhook]]\nname = \"x\"\nurl = \"https://x\"\nsecret = \"inline\"\n",
            Path::new("/d"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn url_origin_hides_path_query_and_credentials() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T0/B0/x"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:9/h?token=x"),
            "http://127.0.0.1:9"
        );
        assert_eq!(url_origin("https://user:pw@example.com/x"), "https://");
        assert_eq!(url_origin("https://example.com"), "https://example.com");
    }

    #[test]
    fn loopback_http_only_for_real_loopback_hosts() {
        assert!(acceptable_url(
            "https://token.actions.githubusercontent.com"
        ));
        assert!(acceptable_url("http://127.0.0.1:8080/jwks"));
        assert!(acceptable_url("http://[::1]:8080/jwks"));
        assert!(!acceptable_url("http://example.com/jwks"));
        assert!(!acceptable_url("http://127.0.0.1:x@example.com/hook"));
        assert!(!acceptable_url("http://127.0.0.1.example.com/hook"));
        assert!(!acceptable_url("ftp://127.0.0.1/"));
    }

    #[test]
    fn unknown_key_refused() {
        let e = Config::parse("lisen = \"x\"\n", Path::new("/d")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }
}
