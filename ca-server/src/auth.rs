//! Who is calling: bearer tokens -> [`Caller`].
//!
//! Tokens are `mca_` + 43 base64url characters (32 random bytes). Only their SHA-256 hash
//! is stored. Token values live in [`Token`], whose `Debug` is redacted and whose memory is
//! zeroized on drop. This module never logs a token and never touches SQL itself.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Prefix of every bearer token, so scanners can spot leaked ones.
pub const TOKEN_PREFIX: &str = "mca_";

/// Prefix of a CA session credential (from `CreateSession`), sent like a token.
pub const SESSION_PREFIX: &str = "mcs_";

/// Prefix of a session's public id (`ses_` + 16 hex digits).
pub const SESSION_ID_PREFIX: &str = "ses_";

/// Prefix of a token's public id (`tok_` + 16 hex digits), which names a token in listings
/// and `user revoke-token` without revealing it.
pub const TOKEN_ID_PREFIX: &str = "tok_";

/// How long a bearer token works unless `--expires` says otherwise.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 90 * 24 * 3600;

/// A token's `last used` time is written at most this often: authentication is on the
/// issuance path and must not become a write per request.
pub const LAST_USED_GRANULARITY_SECS: u64 = 60;

pub use crate::text::fmt_time;

/// A fresh public token id. Random, never derived from the token, so listing ids leaks
/// nothing about the secret.
pub fn new_token_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_ID_PREFIX}{}", hex::encode(bytes))
}

/// A fresh public session id, random like token ids.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SESSION_ID_PREFIX}{}", hex::encode(bytes))
}

/// Whether `id` has the shape of a session id.
pub fn valid_session_id(id: &str) -> bool {
    id.strip_prefix(SESSION_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `id` has the shape of a token id (checked before it reaches a query or a log).
pub fn valid_token_id(id: &str) -> bool {
    id.strip_prefix(TOKEN_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User name.
    pub name: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// How the caller proved who they are: checked again inside every transaction that
    /// signs, since a token can be revoked or its user disabled after authentication.
    pub proof: Proof,
}

/// How a [`Caller`] proved who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// A bearer token, by the hash stored for it.
    Token {
        /// SHA-256 of the token, hex.
        hash: String,
    },
    /// A CI job's ID token, verified for this one call; the job has no user row.
    Workload,
    /// A CA session from an SSO sign-in, by the hash stored for it.
    Session {
        /// SHA-256 of the session credential, hex.
        hash: String,
    },
    /// Named by code on the CA host (operator commands, tests): stands while the user
    /// exists and is enabled.
    Account,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the hash either: it is what the token table is keyed by.
        f.write_str(match self {
            Proof::Token { .. } => "Token",
            Proof::Session { .. } => "Session",
            Proof::Workload => "Workload",
            Proof::Account => "Account",
        })
    }
}

/// A bearer token. Never printed except once, by `user add` / `user token`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    pub fn generate() -> Self {
        Self::generate_with(TOKEN_PREFIX)
    }

    /// A fresh random session credential (`mcs_...`).
    pub fn generate_session() -> Self {
        Self::generate_with(SESSION_PREFIX)
    }

    fn generate_with(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = format!(
            "{prefix}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        bytes.zeroize();
        Token(token)
    }

    /// Wraps a token presented by a caller.
    pub fn from_presented(value: &str) -> Self {
        Token(value.to_owned())
    }

    /// The token text, for the one place that shows it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash stored and looked up in place of the token.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// Whether it is a CA session credential rather than an operator-minted token.
    pub fn is_session(&self) -> bool {
        self.0.starts_with(SESSION_PREFIX)
    }

    /// Whether it has the shape of a moshca token or session credential (cheap check
    /// before any lookup).
    pub fn well_formed(&self) -> bool {
        self.0.len() == TOKEN_PREFIX.len() + 43
            && (self.0.starts_with(TOKEN_PREFIX) || self.0.starts_with(SESSION_PREFIX))
            && self.0[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a caller presented.
#[derive(Debug)]
pub enum Credential {
    /// A moshca bearer token (`mca_...`) or CA session (`mcs_...`).
    Token(Token),
    /// An OIDC ID token of a CI job (a JWT), kept in the same redacting type.
    IdToken(Token),
}

/// Extracts the credential from an `authorization` header value.
pub fn parse_bearer(header: Option<&str>) -> Result<Credential, &'static str> {
    let header = header.ok_or("missing bearer token: set MOSHCA_TOKEN or MOSHCA_TOKEN_FILE")?;
    let value = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or("authorization must be \"Bearer <token>\"")?
        .trim();
    if !value.starts_with(TOKEN_PREFIX)
        && !value.starts_with(SESSION_PREFIX)
        && crate::oidc::looks_like_jwt(value)
    {
        return Ok(Credential::IdToken(Token::from_presented(value)));
    }
    let token = Token::from_presented(value);
    if !token.well_formed() {
        return Err("invalid token: check MOSHCA_TOKEN or ask the CA operator for a new one");
    }
    Ok(Credential::Token(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = Token::generate();
        let b = Token::generate();
        assert!(a.well_formed(), "{}", a.expose().len());
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn token_ids_are_random_and_checked() {
        let a = new_token_id();
        assert!(valid_token_id(&a), "{a}");
        assert_ne!(a, new_token_id());
        for bad in [
            "tok_",
            "tok_0123456789ABCDEF",
            "mca_0123456789abcdef",
            "tok_0123'",
        ] {
            assert!(!valid_token_id(bad), "{bad}");
        }
    }

    #[test]
    fn session_credentials_and_ids() {
        let s = Token::generate_session();
        assert!(s.well_formed() && s.is_session(), "{}", s.expose().len());
        assert!(!Token::generate().is_session());
        let header = format!("Bearer {}", s.expose());
        assert!(matches!(parse_bearer(Some(&header)), Ok(Credential::Token(t)) if t.is_session()));
        let id = new_session_id();
        assert!(valid_session_id(&id) && !valid_token_id(&id), "{id}");
        assert!(!valid_session_id("ses_0123"));
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::generate();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&t.expose()[4..]), "{dbg}");
    }

    #[test]
    fn bearer_parsing() {
        let t = Token::generate();
        let header = format!("Bearer {}", t.expose());
        let Credential::Token(parsed) = parse_bearer(Some(&header)).unwrap() else {
            panic!("expected a token")
        };
        assert_eq!(parsed.hash(), t.hash());
        assert!(matches!(
            parse_bearer(Some("Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln")),
            Ok(Credential::IdToken(_))
        ));
        assert!(parse_bearer(None).is_err());
        assert!(parse_bearer(Some(t.expose())).is_err());
        assert!(parse_bearer(Some("Bearer mca_short")).is_err());
        assert!(
            parse_bearer(Some(
                "Bearer mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!"
            ))
            .is_err()
        );
    }
}
