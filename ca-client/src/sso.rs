//! Signing a person in at the CA's identity provider (OpenID Connect), up to the ID token:
//! discovery, the authorization code flow with PKCE (S256), `state` and `nonce` on a
//! 127.0.0.1 loopback redirect (RFC 8252), and the device grant (RFC 8628).
//!
//! The HTTP exchanges are done by hand over ureq: two or three form posts and a JSON
//! document each. The ID token is not verified here (the CA does that); this module only
//! checks what binds the answer to this client's request: `state` on the callback and the
//! `nonce` inside the ID token. Secrets (the code, the PKCE verifier, the device code, the ID
//! token) live in zeroized memory and never appear in errors or logs. Plain `http://` is
//! accepted only for loopback hosts. This module knows nothing of the CA, the session file
//! or stdout; what people must do (open a URL, enter a code) goes to stderr.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result, one_line};
use crate::output::notice;

/// How long a person has to finish signing in in the browser.
pub const BROWSER_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long one HTTP exchange with the identity provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Discovery documents and token answers are a few KiB; an ID token is bounded by the CA.
const MAX_ANSWER_BYTES: u64 = 256 * 1024;
/// The callback request's head: a browser sends a few KiB at most.
const MAX_CALLBACK_BYTES: usize = 16 * 1024;
/// How often the progress line repeats while waiting for the browser.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// The device grant's polling interval when the provider names none (RFC 8628 3.5).
const DEFAULT_INTERVAL: u64 = 5;

/// What the CA says about signing in (from `GetSignInInfo`).
#[derive(Debug, Clone)]
pub struct Provider {
    /// The issuer URL.
    pub issuer: String,
    /// The public client id.
    pub client_id: String,
    /// The scopes to ask for.
    pub scopes: Vec<String>,
}

/// The endpoints from the provider's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

/// An ID token obtained for this client, and the nonce it was asked with (empty for the
/// device grant, which has none).
pub struct SignedIn {
    /// The ID token (a JWT), for `CreateSession` only.
    pub id_token: Zeroizing<String>,
    /// The nonce sent in the authorization request.
    pub nonce: String,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("id_token", &"<redacted>")
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// How the person signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A browser on this machine, redirected back to a loopback port.
    Browser,
    /// A code entered on any device (RFC 8628).
    Device,
}

fn idp_error(detail: impl Into<String>) -> Error {
    Error::SignIn {
        detail: detail.into(),
    }
}

/// Checks that `url` is `https://`, or `http://` to a loopback host.
pub fn check_url(url: &str, what: &str) -> Result<()> {
    if let Some(rest) = url.strip_prefix("http://") {
        let host = host_of(rest);
        if matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
            return Ok(());
        }
        return Err(idp_error(format!(
            "the {what} {url} is plain http; only https is accepted, except on 127.0.0.1, \
             ::1 or localhost"
        )));
    }
    if url.starts_with("https://") && !host_of(&url["https://".len()..]).is_empty() {
        return Ok(());
    }
    Err(idp_error(format!("the {what} {url:?} is not an https URL")))
}

/// The host of `rest` (a URL after its scheme), without port or path.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// A ureq error on one line.
fn describe(err: &ureq::Error) -> String {
    one_line(&err.to_string())
}

/// Reads an answer's body as text, bounded.
fn body_text(
    response: &mut ureq::http::Response<ureq::Body>,
    url: &str,
) -> Result<Zeroizing<String>> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map(Zeroizing::new)
        .map_err(|err| idp_error(format!("reading the answer of {url}: {}", describe(&err))))
}

/// Reads `{issuer}/.well-known/openid-configuration` and checks it names the same issuer.
pub fn discover(issuer: &str) -> Result<Endpoints> {
    check_url(issuer, "identity provider")?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let mut response = agent()
        .get(&url)
        .header("accept", "application/json")
        .call()
        .map_err(|err| idp_error(format!("cannot reach {url}: {}", describe(&err))))?;
    if !response.status().is_success() {
        return Err(idp_error(format!(
            "{url} answered HTTP {}",
            response.status().as_u16()
        )));
    }
    let text = body_text(&mut response, &url)?;
    let endpoints: Endpoints = serde_json::from_str(&text).map_err(|_| {
        idp_error(format!(
            "{url} is not an OpenID Connect discovery document (no authorization_endpoint \
             and token_endpoint)"
        ))
    })?;
    if endpoints.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(idp_error(format!(
            "{url} names the issuer {:?}, not {issuer:?}",
            endpoints.issuer
        )));
    }
    check_url(&endpoints.authorization_endpoint, "authorization endpoint")?;
    check_url(&endpoints.token_endpoint, "token endpoint")?;
    if let Some(device) = &endpoints.device_authorization_endpoint {
        check_url(device, "device authorization endpoint")?;
    }
    Ok(endpoints)
}

/// `n` random bytes, base64url.
fn random_b64(n: usize) -> String {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(&*bytes)
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `a=b&c=d`, form-encoded (`application/x-www-form-urlencoded`, also a valid query).
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The value of `name` in the query string `query`.
fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `nonce` claim of an ID token, read without verifying it (the CA verifies).
fn nonce_of(id_token: &str) -> Result<Option<String>> {
    let bad = || idp_error("the identity provider's ID token is not a JWT");
    let payload = id_token.split('.').nth(1).ok_or_else(bad)?;
    let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?);
    let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok(claims
        .get("nonce")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned))
}

/// The token endpoint's answer, success or error (RFC 6749 5.1, 5.2).
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Posts `form` to the token endpoint; the ID token, or the provider's `error` code and
/// description.
fn token_request(
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<std::result::Result<Zeroizing<String>, (String, String)>> {
    let body = Zeroizing::new(query(form));
    let mut response = agent()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .send(body.as_bytes())
        .map_err(|err| idp_error(format!("cannot reach {endpoint}: {}", describe(&err))))?;
    let status = response.status().as_u16();
    let text = body_text(&mut response, endpoint)?;
    let answer: TokenAnswer = serde_json::from_str(&text).map_err(|_| {
        idp_error(format!(
            "{endpoint} answered HTTP {status} without an OAuth JSON answer"
        ))
    })?;
    let answer = Zeroizing::new(answer);
    if let Some(id_token) = &answer.id_token
        && (200..300).contains(&status)
    {
        return Ok(Ok(Zeroizing::new(id_token.clone())));
    }
    let error = answer
        .error
        .clone()
        .unwrap_or_else(|| format!("HTTP {status}"));
    let description = answer
        .error_description
        .as_deref()
        .map(one_line)
        .unwrap_or_default();
    if (200..300).contains(&status) {
        return Err(idp_error(format!(
            "{endpoint} answered without an ID token; the CA's scopes must include openid"
        )));
    }
    Ok(Err((error, description)))
}

impl zeroize::Zeroize for TokenAnswer {
    fn zeroize(&mut self) {
        if let Some(token) = &mut self.id_token {
            token.zeroize();
        }
    }
}

/// Signs in with a browser: opens the authorization URL in `browser` (the `$BROWSER`
/// command, else `xdg-open`) and waits for the redirect to a loopback port.
///
/// Returns `Ok(None)` when no browser could be started, so the caller can fall back to the
/// device grant.
pub fn browser_sign_in(
    provider: &Provider,
    endpoints: &Endpoints,
    browser: Option<&str>,
) -> Result<Option<SignedIn>> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| {
        idp_error(format!(
            "cannot listen on 127.0.0.1 for the redirect: {err}"
        ))
    })?;
    let port = listener
        .local_addr()
        .map_err(|err| idp_error(err.to_string()))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let state = random_b64(16);
    let nonce = random_b64(16);
    let verifier = Zeroizing::new(random_b64(32));
    let challenge = pkce_challenge(&verifier);
    let scope = provider.scopes.join(" ");
    let separator = if endpoints.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}{}",
        endpoints.authorization_endpoint,
        query(&[
            ("response_type", "code"),
            ("client_id", &provider.client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", &scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
    );
    notice(&format!(
        "sign in at {} in your browser; if none opens, open this URL yourself:\n{url}",
        provider.issuer
    ));
    let Some(exited) = open_browser(browser, &url) else {
        return Ok(None);
    };
    let code = match wait_for_callback(&listener, &state, &exited)? {
        Callback::Code(code) => code,
        Callback::BrowserFailed => return Ok(None),
    };
    let id_token = match token_request(
        &endpoints.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("client_id", &provider.client_id),
            ("code_verifier", &verifier),
        ],
    )? {
        Ok(token) => token,
        Err((error, description)) => {
            return Err(idp_error(format!(
                "the identity provider refused the code: {error} {description}"
            )));
        }
    };
    match nonce_of(&id_token)? {
        Some(found) if found == nonce => {}
        _ => {
            return Err(Error::SignInRefused {
                detail: "the ID token does not carry the nonce of this sign-in".to_owned(),
            });
        }
    }
    Ok(Some(SignedIn { id_token, nonce }))
}

/// Starts the browser on `url`; `None` when it cannot be started. The receiver hears
/// once if the browser exits unsuccessfully (it could not show the page).
fn open_browser(browser: Option<&str>, url: &str) -> Option<mpsc::Receiver<()>> {
    // $BROWSER may list several commands separated by `:`; the first is used. `%s` stands
    // for the URL, as in the convention Python's webbrowser and others follow.
    let command = browser
        .and_then(|b| b.split(':').find(|c| !c.trim().is_empty()))
        .map_or_else(|| "xdg-open".to_owned(), str::to_owned);
    let mut words = command.split_whitespace();
    let program = words.next()?;
    let mut args: Vec<String> = words.map(str::to_owned).collect();
    if args.iter().any(|a| a.contains("%s")) {
        for arg in &mut args {
            *arg = arg.replace("%s", url);
        }
    } else {
        args.push(url.to_owned());
    }
    let child = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        // stdout is the command's result (maybe --json); the browser must not write there.
        .stdout(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            notice(&format!("cannot start the browser {program}: {err}"));
            return None;
        }
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait()
            && !status.success()
        {
            let _ = tx.send(());
        }
    });
    Some(rx)
}

enum Callback {
    Code(Zeroizing<String>),
    BrowserFailed,
}

/// Accepts connections on the loopback listener until the callback arrives, the browser
/// fails, or [`BROWSER_WAIT`] runs out.
fn wait_for_callback(
    listener: &TcpListener,
    state: &str,
    browser_failed: &mpsc::Receiver<()>,
) -> Result<Callback> {
    listener
        .set_nonblocking(true)
        .map_err(|err| idp_error(err.to_string()))?;
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(code) = handle_callback(stream, state)? {
                    return Ok(Callback::Code(code));
                }
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(idp_error(format!("the loopback listener failed: {err}"))),
        }
        if browser_failed.try_recv().is_ok() {
            notice("the browser could not open the sign-in page; using a code instead");
            return Ok(Callback::BrowserFailed);
        }
        let now = Instant::now();
        let waited = now.duration_since(started);
        if waited >= BROWSER_WAIT {
            return Err(Error::SignInTimedOut {
                after: humantime::format_duration(BROWSER_WAIT).to_string(),
            });
        }
        if now >= next_progress {
            let left = (BROWSER_WAIT - waited).as_secs().div_ceil(60);
            notice(&format!(
                "still waiting for the sign-in in your browser ({left} min left)"
            ));
            next_progress += PROGRESS_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads one request on the loopback port. `Some(code)` for the callback of this sign-in;
/// `None` for another path (a favicon), which is answered 404; an error for a callback
/// with another `state` or an error from the provider.
fn handle_callback(mut stream: TcpStream, state: &str) -> Result<Option<Zeroizing<String>>> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Zeroizing::new(Vec::new());
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_CALLBACK_BYTES {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = Zeroizing::new(String::from_utf8_lossy(&head).into_owned());
    let target = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let respond = |mut stream: &TcpStream, status: &str, message: &str| {
        let body = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>moshca</title></head>\
             <body><p>{message}</p></body></html>"
        );
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if path != "/callback" {
        respond(&stream, "404 Not Found", "Not found.");
        return Ok(None);
    }
    if param(query, "state").as_deref() != Some(state) {
        respond(
            &stream,
            "400 Bad Request",
            "moshca refused this sign-in: its state does not match the one moshca started. \
             Run `moshca auth login` again.",
        );
        return Err(Error::SignInRefused {
            detail: "the browser's callback carries another state than this sign-in's (a \
                     forged or stale callback)"
                .to_owned(),
        });
    }
    if let Some(error) = param(query, "error") {
        let description = param(query, "error_description").unwrap_or_default();
        respond(
            &stream,
            "400 Bad Request",
            "The identity provider refused the sign-in. You can close this page.",
        );
        return Err(idp_error(format!(
            "the identity provider refused the sign-in: {} {}",
            one_line(&error),
            one_line(&description)
        )));
    }
    let Some(code) = param(query, "code").filter(|c| !c.is_empty()) else {
        respond(&stream, "400 Bad Request", "No code in the callback.");
        return Err(idp_error("the browser's callback carries no code"));
    };
    respond(
        &stream,
        "200 OK",
        "Signed in to moshca. You can close this page and go back to the terminal.",
    );
    Ok(Some(Zeroizing::new(code)))
}

/// The device authorization answer (RFC 8628 3.2).
#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// Signs in with the device grant: prints where to go and the code, then polls the token
/// endpoint per `interval`, `slow_down`, `expired_token` and `access_denied`.
pub fn device_sign_in(provider: &Provider, endpoints: &Endpoints) -> Result<SignedIn> {
    let Some(endpoint) = &endpoints.device_authorization_endpoint else {
        return Err(idp_error(format!(
            "{} offers no device sign-in (its discovery document has no \
             device_authorization_endpoint)",
            provider.issuer
        )));
    };
    let scope = provider.scopes.join(" ");
    let body = query(&[("client_id", &provider.client_id), ("scope", &scope)]);
    let mut response = agent()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .send(body.as_bytes())
        .map_err(|err| idp_error(format!("cannot reach {endpoint}: {}", describe(&err))))?;
    let status = response.status().as_u16();
    let text = body_text(&mut response, endpoint)?;
    let answer: DeviceAnswer = serde_json::from_str(&text).map_err(|_| {
        idp_error(format!(
            "{endpoint} answered HTTP {status} without a device code (is the device grant \
             enabled for client {}?)",
            provider.client_id
        ))
    })?;
    let device_code = Zeroizing::new(answer.device_code);
    let mut interval = answer.interval.unwrap_or(DEFAULT_INTERVAL).max(1);
    let deadline = Instant::now() + Duration::from_secs(answer.expires_in);
    match &answer.verification_uri_complete {
        Some(complete) => notice(&format!(
            "to sign in, open {complete}\nmoshca: (or open {} and enter the code {})",
            answer.verification_uri, answer.user_code
        )),
        None => notice(&format!(
            "to sign in, open {} and enter the code {}",
            answer.verification_uri, answer.user_code
        )),
    }
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    loop {
        std::thread::sleep(Duration::from_secs(interval));
        if Instant::now() >= deadline {
            return Err(Error::SignInTimedOut {
                after: humantime::format_duration(Duration::from_secs(answer.expires_in))
                    .to_string(),
            });
        }
        match token_request(
            &endpoints.token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
                ("client_id", &provider.client_id),
            ],
        )? {
            Ok(id_token) => {
                // The device grant has no nonce; a token carrying one was not made for it.
                if nonce_of(&id_token)?.is_some() {
                    return Err(Error::SignInRefused {
                        detail: "the device sign-in's ID token carries a nonce it never asked \
                                 for"
                        .to_owned(),
                    });
                }
                return Ok(SignedIn {
                    id_token,
                    nonce: String::new(),
                });
            }
            Err((error, description)) => match error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += 5,
                "expired_token" => {
                    return Err(Error::SignInTimedOut {
                        after: humantime::format_duration(Duration::from_secs(answer.expires_in))
                            .to_string(),
                    });
                }
                "access_denied" => {
                    return Err(Error::SignInRefused {
                        detail: "the sign-in was declined at the identity provider".to_owned(),
                    });
                }
                _ => {
                    return Err(idp_error(format!(
                        "the identity provider refused the device sign-in: {error} {description}"
                    )));
                }
            },
        }
        if Instant::now() >= next_progress {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .div_ceil(60);
            notice(&format!(
                "still waiting for the sign-in with code {} ({left} min left)",
                answer.user_code
            ));
            next_progress += PROGRESS_EVERY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_may_use_plain_http() {
        for ok in [
            "https://login.example.com",
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:9/",
        ] {
            assert!(check_url(ok, "issuer").is_ok(), "{ok}");
        }
        for bad in [
            "http://login.example.com",
            "http://127.0.0.1.evil.com/",
            "http://user@evil.com",
            "ftp://x",
            "https://",
        ] {
            assert!(check_url(bad, "issuer").is_err(), "{bad}");
        }
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn query_strings_round_trip() {
        let q = query(&[
            ("redirect_uri", "http://127.0.0.1:5/callback"),
            ("s", "a b+c"),
        ]);
        assert_eq!(
            param(&q, "redirect_uri").as_deref(),
            Some("http://127.0.0.1:5/callback")
        );
        assert_eq!(param(&q, "s").as_deref(), Some("a b+c"));
        assert_eq!(param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(param("x=1", "a"), None);
    }

    #[test]
    fn the_nonce_is_read_from_the_id_token() {
        let token = |claims: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        assert_eq!(
            nonce_of(&token(r#"{"nonce":"n1"}"#)).unwrap().as_deref(),
            Some("n1")
        );
        assert_eq!(nonce_of(&token("{}")).unwrap(), None);
        assert!(nonce_of("not-a-jwt").is_err());
    }

    #[test]
    fn a_callback_with_another_state_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /callback?code=c1&state=evil HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        });
        let (stream, _) = listener.accept().unwrap();
        let err = handle_callback(stream, "good").unwrap_err();
        assert!(matches!(err, Error::SignInRefused { .. }), "{err:?}");
        assert!(client.join().unwrap().starts_with("HTTP/1.1 400"));
    }
}
