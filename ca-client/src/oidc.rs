//! A CI job's OIDC ID token: where it comes from (`MOSHCA_ID_TOKEN`, else GitHub Actions'
//! token endpoint), fetching it, and a one-line summary of its public claims for messages.
//!
//! The token is a secret while it is valid: it lives in zeroized memory and leaves this
//! module only as an [`rpc::Token`] (redacted `Debug`). No error, log line or output made
//! here contains it or GitHub's request token; a malformed answer is described, never
//! quoted. This module does not verify the token (the CA does), reads no environment
//! variable itself ([`config::Env`] does) and knows nothing of certificates.
//!
//! [`config::Env`]: crate::config::Env

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::Env;
use crate::error::{Error, Result, one_line};
use crate::rpc::Token;

/// The audience asked for when neither `--audience` nor `MOSHCA_OIDC_AUDIENCE` says.
pub const DEFAULT_AUDIENCE: &str = "moshca";
/// How long the whole request to GitHub's token endpoint may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// GitHub answers with a few KiB; anything much larger is not an ID token answer.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Claim values longer than this are cut in messages.
const MAX_CLAIM_CHARS: usize = 80;
/// The claims named in messages, in this order: enough to see why a policy did not match.
const SUMMARY_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "sub",
    "repository",
    "project_path",
    "ref",
    "environment",
];

/// A secret string (an ID token, GitHub's request token): redacted `Debug`, zeroized on
/// drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the job's ID token comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `MOSHCA_ID_TOKEN` (GitLab CI's `id_tokens:`, or any CI that hands out a JWT).
    Env(Secret),
    /// GitHub Actions: `GET ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD` with
    /// `Authorization: bearer ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    GitHubActions {
        /// `ACTIONS_ID_TOKEN_REQUEST_URL`.
        request_url: String,
        /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        request_token: Secret,
    },
}

/// Picks the token source: `MOSHCA_ID_TOKEN` wins; else GitHub Actions when both of its
/// variables are set (GitHub sets them only for jobs with `permissions: id-token: write`).
pub fn source(env: &Env) -> Result<Source> {
    if let Some(token) = &env.id_token {
        return Ok(Source::Env(Secret(token.clone())));
    }
    match (
        &env.actions_id_token_request_url,
        &env.actions_id_token_request_token,
    ) {
        (Some(url), Some(token)) => Ok(Source::GitHubActions {
            request_url: url.clone(),
            request_token: Secret(token.clone()),
        }),
        (Some(_), None) | (None, Some(_)) => Err(Error::NoIdToken {
            detail: "only one of ACTIONS_ID_TOKEN_REQUEST_URL and \
                     ACTIONS_ID_TOKEN_REQUEST_TOKEN is set",
        }),
        (None, None) => Err(Error::NoIdToken {
            detail: "MOSHCA_ID_TOKEN is not set, and this is not a GitHub Actions job that may \
                     request one",
        }),
    }
}

/// The audience to ask GitHub for: `--audience`, else `MOSHCA_OIDC_AUDIENCE`, else
/// [`DEFAULT_AUDIENCE`].
pub fn audience(flag: Option<&str>, env: &Env) -> String {
    flag.filter(|a| !a.is_empty())
        .or(env.oidc_audience.as_deref())
        .unwrap_or(DEFAULT_AUDIENCE)
        .to_owned()
}

/// Everything but RFC 3986 unreserved characters is percent-encoded in a query value.
const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// GitHub's token endpoint URL with `audience` appended as a query parameter (`&`, or `?`
/// when the URL has no query yet), percent-encoded.
pub fn request_url(url: &str, audience: &str) -> String {
    let separator = if url.ends_with('?') || url.ends_with('&') {
        ""
    } else if url.contains('?') {
        "&"
    } else {
        "?"
    };
    format!(
        "{url}{separator}audience={}",
        percent_encoding::utf8_percent_encode(audience, UNRESERVED_KEPT)
    )
}

/// An ID token ready to send, with the summary of its public claims.
#[derive(Debug, Clone)]
pub struct IdToken {
    token: Token,
    claims: String,
}

impl IdToken {
    /// Checks that `text` (from `origin`, for messages) is shaped like a JWT and reads its
    /// public claims. The signature and the claims are the CA's to judge.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        let bad = |reason| {
            Err(Error::BadIdToken {
                origin: origin.to_owned(),
                reason,
            })
        };
        if text.is_empty() {
            return bad("it is empty");
        }
        if text.starts_with("mca_") {
            return bad("it is a moshca bearer token, not an ID token");
        }
        let parts: Vec<&str> = text.split('.').collect();
        let base64url = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // An empty signature (an unsigned token) is let through: the CA refuses and audits it.
        if parts.len() != 3
            || parts[0].is_empty()
            || parts[1].is_empty()
            || !parts.iter().all(|p| base64url(p))
        {
            return bad("it is not a JWT (three base64url parts joined by dots)");
        }
        Ok(IdToken {
            token: Token::parse(text, origin)?,
            claims: summarize(parts[1]),
        })
    }

    /// The token, to send as `authorization: Bearer`.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// `iss=... aud=... sub=... repository=... ref=...`: the claims a policy matches on,
    /// empty when the payload cannot be read.
    pub fn claims(&self) -> &str {
        &self.claims
    }
}

/// The summary of a JWT payload (base64url JSON); empty if it does not decode.
fn summarize(payload: &str) -> String {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload).map(Zeroizing::new) else {
        return String::new();
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(&bytes) else {
        return String::new();
    };
    SUMMARY_CLAIMS
        .iter()
        .filter_map(|name| {
            let value = match claims.get(*name)? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            Some(format!("{name}={}", printable(&value)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` with spaces and control characters as `_`, cut to [`MAX_CLAIM_CHARS`].
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_CLAIM_CHARS)
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if text.chars().count() > MAX_CLAIM_CHARS {
        out.push_str("...");
    }
    out
}

/// Gets the ID token from `source`, asking GitHub for `audience` when that is the source.
pub async fn obtain(source: Source, audience: &str) -> Result<IdToken> {
    match source {
        Source::Env(token) => IdToken::parse(&token.0, "MOSHCA_ID_TOKEN"),
        Source::GitHubActions {
            request_url: url,
            request_token,
        } => {
            let url = request_url(&url, audience);
            // ureq blocks; the runtime's blocking pool keeps the reactor free.
            tokio::task::spawn_blocking(move || fetch_github(&url, &request_token))
                .await
                .map_err(|err| Error::IdTokenRequest {
                    detail: err.to_string(),
                })?
        }
    }
}

/// GitHub's answer: `{"value": "<jwt>", ...}`.
#[derive(Deserialize)]
struct Answer {
    value: String,
}

/// `GET url` with GitHub's request token; returns the ID token in the answer.
fn fetch_github(url: &str, request_token: &Secret) -> Result<IdToken> {
    let fail = |detail: String| Error::IdTokenRequest { detail };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let header = Zeroizing::new(format!("bearer {}", request_token.0.as_str()));
    let mut authorization = ureq::http::HeaderValue::from_str(&header).map_err(|_| {
        fail("ACTIONS_ID_TOKEN_REQUEST_TOKEN is not a valid HTTP header value".to_owned())
    })?;
    authorization.set_sensitive(true);
    tracing::debug!(url, "asking GitHub Actions for an ID token");
    let mut response = agent
        .get(url)
        .header("authorization", authorization)
        .header("accept", "application/json")
        .call()
        .map_err(|err| fail(describe(&err)))?;
    let body = Zeroizing::new(
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|err| fail(format!("reading the answer: {}", describe(&err))))?,
    );
    // serde's messages can quote the input, so the parse error is described, not shown.
    let answer: Answer = serde_json::from_str(&body)
        .map_err(|_| fail("the answer is not JSON with a string `value`".to_owned()))?;
    let value = Zeroizing::new(answer.value);
    IdToken::parse(&value, "GitHub Actions")
}

/// A ureq error on one line; an HTTP status is named as such.
fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::StatusCode(code) => format!("the token endpoint answered HTTP {code}"),
        other => one_line(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"alg":"EdDSA","kid":"k1"}`.`{"iss":"https://gh","aud":["moshca"],"sub":"repo:acme/app",
    /// "repository":"acme/app","ref":"refs/heads/main","jti":"j"}`.`s3cr3tsig`
    fn jwt() -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","kid":"k1"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"https://gh","aud":["moshca"],"sub":"repo:acme/app:ref:refs/heads/main","repository":"acme/app","ref":"refs/heads/main","jti":"j","run_id":"7"}"#,
        );
        format!("{header}.{payload}.s3cr3tsig")
    }

    fn env() -> Env {
        Env {
            actions_id_token_request_url: Some("https://gh.example/idtoken?api-version=2.0".into()),
            actions_id_token_request_token: Some(Zeroizing::new("ghs_r3quest".into())),
            ..Env::default()
        }
    }

    #[test]
    fn moshca_id_token_beats_github_actions() {
        let env = Env {
            id_token: Some(Zeroizing::new(jwt())),
            ..env()
        };
        assert!(matches!(source(&env), Ok(Source::Env(_))));
    }

    #[test]
    fn github_actions_needs_both_variables() {
        let Ok(Source::GitHubActions { request_url, .. }) = source(&env()) else {
            panic!("not GitHub Actions");
        };
        assert_eq!(request_url, "https://gh.example/idtoken?api-version=2.0");

        for env in [
            Env {
                actions_id_token_request_token: None,
                ..env()
            },
            Env {
                actions_id_token_request_url: None,
                ..env()
            },
        ] {
            let err = source(&env).unwrap_err();
            assert!(matches!(err, Error::NoIdToken { .. }), "{err:?}");
            assert!(err.to_string().contains("only one of"), "{err}");
        }
    }

    #[test]
    fn no_source_is_an_error_with_a_hint_for_both_ci_systems() {
        let err = source(&Env::default()).unwrap_err();
        assert!(err.to_string().contains("MOSHCA_ID_TOKEN"), "{err}");
        let hint = err.hint().unwrap();
        assert!(hint.contains("id_tokens") && hint.contains("id-token: write"));
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn audience_flag_beats_env_beats_default() {
        let mut env = Env::default();
        assert_eq!(audience(None, &env), "moshca");
        env.oidc_audience = Some("ca.example".into());
        assert_eq!(audience(None, &env), "ca.example");
        assert_eq!(audience(Some("flag"), &env), "flag");
        assert_eq!(audience(Some(""), &env), "ca.example");
    }

    #[test]
    fn audience_is_appended_to_the_query() {
        assert_eq!(
            request_url("https://gh/idtoken?api-version=2.0", "moshca"),
            "https://gh/idtoken?api-version=2.0&audience=moshca"
        );
        assert_eq!(
            request_url("http://127.0.0.1:9/token", "moshca"),
            "http://127.0.0.1:9/token?audience=moshca"
        );
        assert_eq!(
            request_url("https://gh/t?", "https://ca.example/a b"),
            "https://gh/t?audience=https%3A%2F%2Fca.example%2Fa%20b"
        );
        assert_eq!(
            request_url("https://gh/t?x=1&", "a&b=c"),
            "https://gh/t?x=1&audience=a%26b%3Dc"
        );
    }

    #[test]
    fn id_tokens_are_checked_for_shape_and_summarized() {
        let token = IdToken::parse(&format!("{}\n", jwt()), "MOSHCA_ID_TOKEN").unwrap();
        assert_eq!(
            token.claims(),
            "iss=https://gh aud=moshca sub=repo:acme/app:ref:refs/heads/main \
             repository=acme/app ref=refs/heads/main"
        );
        // Unsigned tokens pass the shape check: refusing them is the CA's job (and audited).
        let unsigned = jwt().rsplit_once('.').unwrap().0.to_owned() + ".";
        assert!(IdToken::parse(&unsigned, "x").is_ok());

        for bad in [
            "", "mca_abc", "a.b", "a.b.c.d", ".b.c", "a b.c.d", "a.b+/.c",
        ] {
            let err = IdToken::parse(bad, "MOSHCA_ID_TOKEN").unwrap_err();
            assert!(matches!(err, Error::BadIdToken { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("MOSHCA_ID_TOKEN"));
        }
    }

    #[test]
    fn unreadable_claims_give_an_empty_summary() {
        assert_eq!(summarize("!!"), "");
        assert_eq!(summarize(&URL_SAFE_NO_PAD.encode(b"[1]")), "");
        let odd = URL_SAFE_NO_PAD.encode(
            format!(r#"{{"iss":"a b\nc","aud":7,"ref":"{}"}}"#, "x".repeat(100)).as_bytes(),
        );
        let summary = summarize(&odd);
        assert!(summary.starts_with("iss=a_b_c aud=7 ref=xxx"), "{summary}");
        assert!(summary.ends_with("x..."), "{summary}");
    }

    #[test]
    fn the_jwt_is_never_in_debug_or_errors() {
        let secret = jwt();
        let token = IdToken::parse(&secret, "MOSHCA_ID_TOKEN").unwrap();
        let github = source(&env());
        let both = Env {
            id_token: Some(Zeroizing::new(secret.clone())),
            ..env()
        };
        let debug = format!("{token:?} {:?} {github:?} {both:?}", source(&both).unwrap());
        for needle in ["s3cr3tsig", "ghs_r3quest", secret.as_str()] {
            assert!(!debug.contains(needle), "{needle} in {debug}");
        }
        // A token that is refused is not echoed, not even in part.
        let err = IdToken::parse(&format!("{secret}.extra"), "MOSHCA_ID_TOKEN").unwrap_err();
        let text = format!("{err} {err:?} {}", err.hint().unwrap_or_default());
        assert!(!text.contains("s3cr3tsig"), "{text}");
    }

    /// Serves one HTTP answer on 127.0.0.1 and returns the URL and the request it got.
    fn serve_once(status: &'static str, body: String) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                request.push_str(&line);
            }
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            request
        });
        (url, handle)
    }

    #[tokio::test]
    async fn github_answer_gives_the_token() {
        let (url, server) = serve_once("200 OK", format!(r#"{{"count":1,"value":"{}"}}"#, jwt()));
        let source = Source::GitHubActions {
            request_url: url,
            request_token: Secret(Zeroizing::new("ghs_r3quest".into())),
        };
        let token = obtain(source, "moshca").await.unwrap();
        assert!(token.claims().contains("repository=acme/app"));
        let request = server.join().unwrap().to_lowercase();
        assert!(
            request.starts_with("get /token?audience=moshca "),
            "{request}"
        );
        assert!(
            request.contains("authorization: bearer ghs_r3quest"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn github_failures_do_not_quote_the_answer() {
        for (status, body, expect) in [
            ("403 Forbidden", "{}".to_owned(), "HTTP 403"),
            (
                "200 OK",
                format!("\"{}\"", jwt()),
                "not JSON with a string `value`",
            ),
            (
                "200 OK",
                format!(r#"{{"value":"{}.x"}}"#, jwt()),
                "not a JWT",
            ),
        ] {
            let (url, server) = serve_once(status, body);
            let source = Source::GitHubActions {
                request_url: url,
                request_token: Secret(Zeroizing::new("ghs_r3quest".into())),
            };
            let err = obtain(source, "moshca").await.unwrap_err();
            server.join().unwrap();
            let text = format!("{err} {err:?}");
            assert!(text.contains(expect), "{text}");
            assert!(
                !text.contains("s3cr3tsig") && !text.contains("ghs_r3quest"),
                "{text}"
            );
        }
    }
}
