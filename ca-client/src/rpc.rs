//! The connection to the CA server: a TLS channel trusting the given certificate, and the
//! bearer token added to every call.
//!
//! This module builds the client and holds the token. It makes no calls itself and knows
//! nothing of commands or output. The token never leaves it in readable form: [`Token`] has
//! a redacted `Debug`, is zeroized on drop, and the `authorization` header is marked
//! sensitive so HTTP/2 never indexes it and its `Debug` hides it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use crate::error::{Error, Result, source_chain};

/// How long to wait for the TCP and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings keep a long `WatchAccessRequest` alive and notice a dead server.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A gRPC client for the CA, with the bearer token (if any) on every call.
pub type Client = CertificateAuthorityClient<InterceptedService<ExpiryWarning, BearerAuth>>;

/// The response header in which the server says when the caller's token expires.
const TOKEN_EXPIRES_HEADER: &str = "moshca-token-expires";
/// How long before its token expires the client starts warning.
const WARN_BEFORE_SECS: i64 = 7 * 24 * 3600;

/// The warning to print for a token expiring at `expires_at`, if it is within a week.
fn expiry_warning(expires_at: i64, now: i64) -> Option<String> {
    let left = expires_at - now;
    if left > WARN_BEFORE_SECS {
        return None;
    }
    let when = match left / 86_400 {
        0 => "within a day".to_owned(),
        1 => "in 1 day".to_owned(),
        days => format!("in {days} days"),
    };
    Some(format!(
        "moshca: warning: your token expires {when}; ask the CA operator for a new one \
         (`moshca-server user token NAME`) and replace it before then"
    ))
}

/// The channel, watching responses for the token expiry the server reports and warning
/// once per run on stderr when it is within a week. No call of its own: it reads a header
/// of the calls the command makes anyway.
#[derive(Debug, Clone)]
pub struct ExpiryWarning {
    channel: Channel,
    /// False for an SSO session: it is meant to expire within hours, and the cure is
    /// `moshca auth login`, not a new token.
    warn: bool,
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for ExpiryWarning {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let inner = self.channel.call(req);
        let warn = self.warn;
        Box::pin(async move {
            let response = inner.await?;
            let expires_at = response
                .headers()
                .get(TOKEN_EXPIRES_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            if warn
                && let Some(warning) =
                    expires_at.and_then(|at| expiry_warning(at, crate::clock::now_unix()))
                && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                eprintln!("{warning}");
            }
            Ok(response)
        })
    }
}

/// A bearer token (`mca_...`). Its `Debug` is redacted and its memory zeroized on drop.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Checks a token read from `origin` (a variable name or a file path, used in errors).
    ///
    /// Surrounding whitespace (the newline of a token file) is dropped. The token must be
    /// non-empty visible ASCII so it can travel in an HTTP header.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        let reason = if text.is_empty() {
            Some("it is empty")
        } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
            Some("it contains spaces or characters that are not printable ASCII")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::BadToken {
                origin: origin.to_owned(),
                reason,
            }),
            None => Ok(Token(Zeroizing::new(text.to_owned()))),
        }
    }

    /// The token itself, for tests only.
    #[cfg(test)]
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is a CA session credential (`mcs_...`) rather than a token.
    pub fn is_session(&self) -> bool {
        self.0.starts_with("mcs_")
    }

    /// The `authorization` header value, marked sensitive.
    fn header(&self) -> MetadataValue<Ascii> {
        let value = Zeroizing::new(format!("Bearer {}", self.0.as_str()));
        // `parse` admits only visible ASCII, which is always a valid header value.
        let mut header = MetadataValue::try_from(value.as_str())
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid"));
        header.set_sensitive(true);
        header
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.header.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        f.debug_struct("BearerAuth").field("token", &state).finish()
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Checks that `server` is an `https://` URL with a host.
pub fn check_server_url(server: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::BadServerUrl {
            url: server.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let Some(rest) = server.strip_prefix("https://") else {
        return if server.starts_with("http://") {
            bad("the server only speaks TLS; use https://")
        } else {
            bad("it must start with https://")
        };
    };
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') {
        return bad("it has no host");
    }
    match server.parse::<tonic::transport::Uri>() {
        Ok(_) => Ok(()),
        Err(err) => bad(&err.to_string()),
    }
}

/// Connects to `server` over TLS, trusting the PEM certificate(s) in `ca_cert`.
///
/// With a token every call carries it; without one only `GetCaPublicKeys` will succeed.
pub async fn connect(server: &str, ca_cert: &Path, token: Option<&Token>) -> Result<Client> {
    check_server_url(server)?;
    let pem = std::fs::read(ca_cert).map_err(|source| Error::Read {
        what: "CA certificate",
        path: ca_cert.to_owned(),
        source,
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(Error::BadCaCert {
            path: ca_cert.to_owned(),
        });
    }
    let connect_error = |err: tonic::transport::Error| {
        let chain = source_chain(&err);
        Error::Connect {
            server: server.to_owned(),
            detail: if chain.is_empty() {
                err.to_string()
            } else {
                chain
            },
        }
    };
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    let channel = Endpoint::from_shared(server.to_owned())
        .map_err(|err| Error::BadServerUrl {
            url: server.to_owned(),
            reason: err.to_string(),
        })?
        .tls_config(tls)
        .map_err(connect_error)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(connect_error)?;
    tracing::debug!(server, "connected");
    let auth = BearerAuth {
        header: token.map(Token::header),
    };
    let warn = token.is_some_and(|t| !t.is_session());
    Ok(CertificateAuthorityClient::with_interceptor(
        ExpiryWarning { channel, warn },
        auth,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "mca_s3cr3t-t0ken";

    #[test]
    fn finding_8_a_token_expiring_within_a_week_is_warned_about() {
        let now = 1_800_000_000;
        assert_eq!(expiry_warning(now + 8 * 86_400, now), None);
        let soon = expiry_warning(now + 3 * 86_400 + 5, now).unwrap();
        assert!(
            soon.contains("in 3 days") && soon.contains("moshca-server user token"),
            "{soon}"
        );
        assert!(
            expiry_warning(now + 60, now)
                .unwrap()
                .contains("within a day")
        );
    }

    #[test]
    fn token_debug_is_redacted() {
        let token = Token::parse(SECRET, "MOSHCA_TOKEN").unwrap();
        let debug = format!("{token:?} {:?}", Some(&token));
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");

        let auth = BearerAuth {
            header: Some(token.header()),
        };
        let debug = format!("{auth:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn header_is_sensitive_and_carries_the_token() {
        let token = Token::parse(&format!("  {SECRET}\n"), "file").unwrap();
        let mut auth = BearerAuth {
            header: Some(token.header()),
        };
        let request = auth.call(tonic::Request::new(())).unwrap();
        let header = request.metadata().get("authorization").unwrap();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), format!("Bearer {SECRET}"));
        assert!(!format!("{header:?}").contains("s3cr3t"));
    }

    #[test]
    fn no_token_no_header() {
        let mut auth = BearerAuth { header: None };
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        for text in ["", "  \n", "mca_a b", "mca_\u{e9}t\u{e9}"] {
            let err = Token::parse(text, "/run/token").unwrap_err();
            assert!(matches!(err, Error::BadToken { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("/run/token"), "{message}");
            assert!(
                text.trim().is_empty() || !message.contains(text.trim()),
                "{message}"
            );
        }
    }

    #[test]
    fn server_urls_must_be_https_with_a_host() {
        assert!(check_server_url("https://127.0.0.1:7443").is_ok());
        assert!(check_server_url("https://ca.example.net").is_ok());
        for url in [
            "http://127.0.0.1:7443",
            "127.0.0.1:7443",
            "https://",
            "https://:7443",
        ] {
            assert!(
                matches!(check_server_url(url), Err(Error::BadServerUrl { .. })),
                "{url}"
            );
        }
    }
}
