//! The server's own settings (`DATA_DIR/config.toml`): raw file -> validated [`Config`].
//!
//! Pure apart from [`Config::load`] reading the file. Every problem is reported at once.
//! Relative paths are resolved against the data directory. Roles and RBAC live in the
//! policy file (`policy`), not here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{fmt_secs, parse_duration};

/// Longest ttl any role may grant unless config.toml says otherwise.
pub const DEFAULT_MAX_TTL: u64 = 24 * 3600;

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory everything is relative to.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Policy file.
    pub policy: PathBuf,
    /// SQLite database.
    pub database: PathBuf,
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
}

/// A trusted OIDC token issuer (GitHub Actions, GitLab CI, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIssuer {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Where its signing keys are.
    pub jwks: JwksSource,
}

/// Where an issuer's JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file, re-read on an unknown key id.
    File(PathBuf),
    /// An https URL (http only for loopback hosts).
    Url(String),
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
    tls: Option<RawTls>,
    oidc: Option<RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
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
}

/// Whether a URL is https, or http to a loopback host (for tests and local stand-ins).
fn acceptable_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
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
        let (cert, key) = raw.tls.map(|t| (t.cert, t.key)).unwrap_or((None, None));
        let mut oidc_issuers = Vec::new();
        for (i, iss) in raw
            .oidc
            .map(|o| o.issuer)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = format!("{origin}: oidc.issuer[{i}]");
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
            });
        }
        let config = Config {
            data_dir: data_dir.to_owned(),
            listen,
            policy: path(raw.policy, "policy.toml"),
            database: path(raw.database, "moshca.db"),
            ca_key: path(raw.ca_key, "ca_key"),
            passphrase_file: raw.passphrase_file.map(|p| path(Some(p), "")),
            tls_cert: path(cert, "tls/cert.pem"),
            tls_key: path(key, "tls/key.pem"),
            max_ttl,
            oidc_issuers,
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
database = "moshca.db"
ca_key = "ca_key"
{pass}max_ttl = "24h"        # no policy may grant more

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

# OIDC issuers whose ID tokens CI jobs may present (`moshca ci`).
# [[oidc.issuer]]
# issuer = "https://token.actions.githubusercontent.com"
# audience = "moshca"
# jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
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
        assert_eq!(c.database, Path::new("/srv/moshca/moshca.db"));
        assert_eq!(c.tls_cert, Path::new("/srv/moshca/tls/cert.pem"));
        assert_eq!(c.max_ttl, DEFAULT_MAX_TTL);
        assert!(c.passphrase_file.is_none());
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
    fn unknown_key_refused() {
        let e = Config::parse("lisen = \"x\"\n", Path::new("/d")).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }
}
