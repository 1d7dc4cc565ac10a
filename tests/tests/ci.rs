//! End-to-end tests of `moshca ci`: a CI job presents its OIDC ID token to the real
//! `moshca-server`, gets an auto-approved certificate, and uses it on a real `sshd`.
//!
//! The test plays the CI system and its identity provider. It mints JWTs (EdDSA and ES256
//! with keys made per run, RS256 with the fixture key of `tests/fixtures/make.sh`) and
//! publishes the public keys as a JWKS served over real HTTP on 127.0.0.1 by [`Idp`], which
//! also stands in for GitHub Actions' ID token endpoint. Each test has its own Idp, CA and
//! sshd, so tests run in parallel.
//!
//! Every token is a secret: each test ends with [`assert_no_leak`], which looks for every
//! token minted (and GitHub's request token) in the client's output, the server's log and
//! the audit trail.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moshca_e2e::{
    Background, COMMAND_TIMEOUT, Ca, CertInfo, Identity, LOGIN, Run, SshAgent, Sshd, moshca, poll,
    prerequisites, run, ssh, unix_now,
};
use rand::rngs::OsRng;
use serde_json::{Value, json};

/// The role CI jobs of acme/app on main may use; its certificates run only `echo forced`.
/// `release` is for tags (a prefix match), `oncall` needs a human approver.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"

[[role]]
name = "deploy"
approval = "auto"
workloads = [{ issuer = "ISSUER", claims = { repository = "acme/app", ref = "refs/heads/main" } }]
logins = ["mcae2e"]
max_ttl = "10m"
default_ttl = "5m"
force_command = "/bin/echo forced"

[[role]]
name = "release"
approval = "auto"
workloads = [{ issuer = "ISSUER", claims = { repository = "acme/app", ref = "refs/tags/v*" } }]
logins = ["mcae2e"]
max_ttl = "10m"
default_ttl = "5m"
force_command = "/bin/echo released"

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"
"#;

/// The GitHub Actions run id the tokens carry; the key id names it.
const RUN_ID: &str = "4242";
/// GitHub's `ACTIONS_ID_TOKEN_REQUEST_TOKEN` for the stand-in endpoint.
const REQUEST_TOKEN: &str = "ghs_stand1nRequestT0ken";
/// Where the stand-in serves GitHub's ID token endpoint.
const GITHUB_PATH: &str = "/_apis/distributedtask/idtoken";
/// Where the stand-in serves the JWKS.
const JWKS_PATH: &str = "/jwks.json";
/// Audit actions of a refused CI request.
const REFUSALS: &[&str] = &["auth.failed", "request.refused"];

// ---------------------------------------------------------------------------------------
// Signing keys and tokens

/// A signing key of the stand-in issuer, with its public JWK.
#[derive(Clone)]
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    /// The public key as SPKI PEM (what an attacker would try as an HMAC secret).
    public_pem: String,
    /// The public JWK's key parameters (`kty`, `crv`, `x`, ...), without `kid`.
    public_jwk: Value,
}

impl Signer {
    /// A fresh Ed25519 key (EdDSA).
    fn ed25519(kid: &str) -> Signer {
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        use p256::pkcs8::LineEnding;
        let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
        Signer {
            alg: Algorithm::EdDSA,
            kid: kid.to_owned(),
            key: EncodingKey::from_ed_pem(private.as_bytes()).expect("Ed25519 PEM"),
            public_pem: key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("SPKI PEM"),
            public_jwk: json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            }),
        }
    }

    /// A fresh P-256 key (ES256).
    fn p256(kid: &str) -> Signer {
        use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
        let key = p256::SecretKey::random(&mut OsRng);
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
        Signer {
            alg: Algorithm::ES256,
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_pem(private.as_bytes()).expect("P-256 PEM"),
            public_pem: key
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("SPKI PEM"),
            public_jwk: {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let point = key.public_key().to_encoded_point(false);
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(point.x().expect("x")),
                    "y": URL_SAFE_NO_PAD.encode(point.y().expect("y")),
                })
            },
        }
    }

    /// The fixture RSA key (RS256); see `tests/fixtures/make.sh`.
    fn rsa(kid: &str) -> Signer {
        let key = EncodingKey::from_rsa_pem(include_bytes!("../fixtures/oidc-rs256.pem"))
            .expect("RSA PEM");
        let jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("RSA JWK");
        Signer {
            alg: Algorithm::RS256,
            kid: kid.to_owned(),
            key,
            public_pem: include_str!("../fixtures/oidc-rs256.pub.pem").to_owned(),
            public_jwk: serde_json::to_value(jwk).expect("JWK serializes"),
        }
    }

    /// The public JWK: the key's parameters, `alg`, `kid`, `use: sig`.
    fn jwk(&self) -> Value {
        let mut value = self.public_jwk.clone();
        value["alg"] = json!(match self.alg {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            _ => "RS256",
        });
        value["kid"] = json!(self.kid);
        value["use"] = json!("sig");
        value
    }

    /// `claims` signed with this key, `kid` in the header.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, &self.key, claims)
    }

    /// `claims` signed with `key` as `alg`, under this signer's `kid`.
    fn sign_as(&self, alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, key).expect("JWT encodes")
    }
}

/// A JWKS document with the public keys of `signers`.
fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() }).to_string()
}

/// A random hex id, for `jti` and made-up key ids.
fn random_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The claims of a GitHub Actions job of acme/app on main, valid for 5 minutes.
fn claims(issuer: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": issuer,
        "aud": "moshca",
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "repository_owner": "acme",
        "ref": "refs/heads/main",
        "run_id": RUN_ID,
        "workflow": "deploy",
        "actor": "octocat",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": random_id(),
    })
}

/// `base` with `changes` applied; a `null` value removes the claim.
fn with(mut base: Value, changes: &[(&str, Value)]) -> Value {
    let map = base.as_object_mut().expect("claims are an object");
    for (name, value) in changes {
        if value.is_null() {
            map.remove(*name);
        } else {
            map.insert((*name).to_owned(), value.clone());
        }
    }
    base
}

/// An unsigned token (`alg: none`) naming `kid`.
fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT", "kid": kid });
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

// ---------------------------------------------------------------------------------------
// The identity provider stand-in

/// What the GitHub Actions stand-in hands out: a token minted for the asked audience.
type Mint = Box<dyn Fn(&str) -> String + Send>;

#[derive(Default)]
struct IdpState {
    jwks: String,
    hits: HashMap<String, usize>,
    /// The GitHub endpoint's minting function; `None` until [`Idp::serve_github`].
    mint: Option<Mint>,
    /// Every `audience` GitHub was asked for, in order.
    audiences: Vec<String>,
    /// Every token GitHub handed out.
    minted: Vec<String>,
}

/// An OIDC provider on 127.0.0.1: the JWKS at [`JWKS_PATH`] and GitHub Actions' ID token
/// endpoint at [`GITHUB_PATH`]. Counts requests per path; stops on drop.
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Idp {
    fn start(jwks: String) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(IdpState {
            jwks,
            ..IdpState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &state);
                    }
                }
            })
        };
        Idp {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the issuer (`iss`).
    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// Starts answering GitHub's endpoint with `mint(audience)`.
    fn serve_github(&self, mint: Mint) {
        self.lock().mint = Some(mint);
    }

    /// How many requests `path` got.
    fn hits(&self, path: &str) -> usize {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    fn audiences(&self) -> Vec<String> {
        self.lock().audiences.clone()
    }

    fn minted(&self) -> Vec<String> {
        self.lock().minted.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdpState> {
        self.state.lock().expect("idp state lock")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one HTTP/1.1 request and closes the connection.
fn serve(stream: TcpStream, state: &Mutex<IdpState>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':')
                    && name.trim().eq_ignore_ascii_case("authorization")
                {
                    authorization = Some(value.trim().to_owned());
                }
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = {
        let mut state = state.lock().expect("idp state lock");
        *state.hits.entry(path.to_owned()).or_default() += 1;
        match path {
            JWKS_PATH => ("200 OK", state.jwks.clone()),
            GITHUB_PATH => github(&mut state, query, authorization.as_deref()),
            _ => ("404 Not Found", "{}".to_owned()),
        }
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// GitHub's endpoint: `Authorization: bearer REQUEST_TOKEN` and `audience=` are required.
fn github(
    state: &mut IdpState,
    query: &str,
    authorization: Option<&str>,
) -> (&'static str, String) {
    let authorized = authorization
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && token == REQUEST_TOKEN
        });
    if !authorized {
        return (
            "401 Unauthorized",
            r#"{"message":"bad request token"}"#.to_owned(),
        );
    }
    let Some(audience) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("audience="))
    else {
        return ("400 Bad Request", r#"{"message":"no audience"}"#.to_owned());
    };
    let Some(mint) = &state.mint else {
        return ("404 Not Found", "{}".to_owned());
    };
    let token = mint(audience);
    state.audiences.push(audience.to_owned());
    state.minted.push(token.clone());
    ("200 OK", json!({ "count": 1, "value": token }).to_string())
}

// ---------------------------------------------------------------------------------------
// The CA and the CI job

/// An identity provider with three keys in its JWKS, and a CA trusting it with [`POLICY`].
struct Setup {
    idp: Idp,
    ca: Ca,
    ed: Signer,
    ec: Signer,
    rsa: Signer,
    /// Every token the test handed to a job (the Idp remembers the ones it minted).
    secrets: Vec<String>,
    /// Every client run, for [`assert_no_leak`].
    runs: Vec<Run>,
}

impl Setup {
    /// `None` when the test should be skipped (see `prerequisites`).
    fn start() -> Option<Setup> {
        if !prerequisites() {
            return None;
        }
        let (ed, ec, rsa) = (
            Signer::ed25519("ed-1"),
            Signer::p256("ec-1"),
            Signer::rsa("rsa-1"),
        );
        let idp = Idp::start(jwks(&[&ed, &ec, &rsa]));
        let mut ca = Ca::init(&POLICY.replace("ISSUER", &idp.issuer()));
        let config = ca.data_dir().join("config.toml");
        let mut text = fs::read_to_string(&config).expect("read config.toml");
        text.push_str(&format!(
            "\n[[oidc.issuer]]\nissuer = \"{}\"\naudience = \"moshca\"\njwks_url = \"{}\"\n",
            idp.issuer(),
            idp.url(JWKS_PATH)
        ));
        fs::write(&config, text).expect("write config.toml");
        ca.add_user("alice", &["oncall"]);
        ca.add_user("bob", &["sre-leads"]);
        ca.start();
        Some(Setup {
            idp,
            ca,
            ed,
            ec,
            rsa,
            secrets: Vec::new(),
            runs: Vec::new(),
        })
    }

    /// The claims of a job of acme/app on main, from this issuer.
    fn claims(&self) -> Value {
        claims(&self.idp.issuer())
    }

    /// `moshca ci ARGS` as a job whose ID token is `MOSHCA_ID_TOKEN=token`.
    fn job(&mut self, token: &str, agent: Option<&SshAgent>, args: &[&str]) -> Run {
        self.secrets.push(token.to_owned());
        let mut cmd = self.command(agent);
        cmd.env("MOSHCA_ID_TOKEN", token).args(args);
        self.record(run(&mut cmd))
    }

    /// `moshca ci ARGS` as a GitHub Actions job presenting `request_token` to the stand-in.
    fn github_job(
        &mut self,
        request_token: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Run {
        let mut cmd = self.command(None);
        cmd.env(
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            self.idp.url(&format!("{GITHUB_PATH}?api-version=2.0")),
        )
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", request_token)
        .envs(extra_env.iter().copied())
        .args(args);
        self.record(run(&mut cmd))
    }

    /// `moshca ci` with no token source and no moshca token, and `agent` if given.
    fn command(&self, agent: Option<&SshAgent>) -> Command {
        let mut cmd = moshca(&self.ca, None, agent);
        for var in [
            "MOSHCA_ID_TOKEN",
            "MOSHCA_OIDC_AUDIENCE",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.arg("ci");
        cmd
    }

    fn record(&mut self, run: Run) -> Run {
        self.runs.push(run.clone());
        run
    }

    /// A fresh output directory under the CA's scratch directory (not created).
    fn out_dir(&self, name: &str) -> PathBuf {
        self.ca.scratch().join("jobs").join(name)
    }
}

/// The audit trail as JSON values, oldest first.
fn audit(ca: &Ca) -> Vec<Value> {
    let out = ca.admin(&["audit", "export"]);
    out.assert_ok();
    out.stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line {line:?}: {e}"))
        })
        .collect()
}

/// How many audit rows have one of `actions`.
fn count(rows: &[Value], actions: &[&str]) -> usize {
    rows.iter()
        .filter(|row| {
            row["action"]
                .as_str()
                .is_some_and(|action| actions.contains(&action))
        })
        .count()
}

/// Fails if any token handed out (or GitHub's request token, or a token's signature)
/// appears in a client's stdout or stderr, the server's log or the audit trail.
#[track_caller]
fn assert_no_leak(setup: &Setup) {
    let mut secrets: Vec<String> = setup.secrets.clone();
    secrets.extend(setup.idp.minted());
    let mut needles = vec![REQUEST_TOKEN.to_owned()];
    for token in &secrets {
        needles.push(token.clone());
        // The signature alone is what makes a token usable (an unsigned one has none).
        if let Some((_, signature)) = token.rsplit_once('.')
            && signature.len() >= 16
        {
            needles.push(signature.to_owned());
        }
    }
    let server_log = setup.ca.log();
    let audit_text = setup.ca.admin(&["audit", "export"]).stdout;
    for needle in &needles {
        for run in &setup.runs {
            assert!(
                !run.stdout.contains(needle.as_str()) && !run.stderr.contains(needle.as_str()),
                "a token leaked into the client's output:\n{run}"
            );
        }
        assert!(
            !server_log.contains(needle.as_str()),
            "a token leaked into the server log"
        );
        assert!(
            !audit_text.contains(needle.as_str()),
            "a token leaked into the audit trail"
        );
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The files in `dir`, by name; empty when it does not exist.
fn files_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Waits until sshd has logged a certificate key id containing every one of `parts`.
fn wait_for_key_id(sshd: &Sshd, parts: &[&str]) -> String {
    poll(
        Duration::from_secs(10),
        &format!("sshd to log a certificate ID with {parts:?}"),
        || {
            sshd.log()
                .lines()
                .find(|line| {
                    line.contains("Accepted certificate ID")
                        && parts.iter().all(|p| line.contains(p))
                })
                .map(str::to_owned)
        },
    )
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn github_actions_job_writes_key_files_that_sshd_accepts_with_the_forced_command() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let sshd = Sshd::start(&setup.ca.ca_public_key());
    let (signer, issuer) = (setup.ed.clone(), setup.idp.issuer());
    setup.idp.serve_github(Box::new(move |audience| {
        signer.sign(&with(claims(&issuer), &[("aud", json!(audience))]))
    }));
    let out = setup.out_dir("github");
    let out_arg = out.to_str().expect("utf-8 path").to_owned();

    // Neither --out nor an agent: refused before anything is asked of GitHub or the CA.
    let nowhere = setup.github_job(REQUEST_TOKEN, &[], &["--role", "deploy"]);
    nowhere.assert_code(1).assert_stderr_mentions(&["--out"]);
    assert_eq!(setup.idp.hits(GITHUB_PATH), 0, "GitHub was asked anyway");

    // A job without `id-token: write` has a request token GitHub refuses.
    let refused = setup.github_job("ghs_wrong", &[], &["--role", "deploy", "--out", &out_arg]);
    refused
        .assert_code(1)
        .assert_stderr_mentions(&["HTTP 401"])
        .assert_stderr_mentions(&["id-token: write"]);

    // A token for another audience is refused by the CA.
    let other = setup.github_job(
        REQUEST_TOKEN,
        &[("MOSHCA_OIDC_AUDIENCE", "not-moshca")],
        &["--role", "deploy", "--out", &out_arg],
    );
    other.assert_code(1).assert_stderr_mentions(&["hint:"]);
    assert_eq!(setup.idp.audiences(), ["not-moshca"]);
    assert!(
        files_in(&out).is_empty(),
        "files after a refusal: {:?}",
        files_in(&out)
    );

    // The real thing, with every log on: the token must not show up anywhere.
    let ok = setup.github_job(
        REQUEST_TOKEN,
        &[("RUST_LOG", "trace")],
        &["-vvv", "--role", "deploy", "--out", &out_arg],
    );
    ok.assert_ok();
    assert_eq!(setup.idp.audiences(), ["not-moshca", "moshca"]);
    let key = out.join("id_ed25519");
    let cert = out.join("id_ed25519-cert.pub");
    let lines: Vec<&str> = ok.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "two lines on stdout:\n{ok}");
    assert!(
        lines[0].starts_with("certificate for request ")
            && lines[0].contains(": principals mcae2e; valid until "),
        "{ok}"
    );
    assert_eq!(
        lines[1],
        format!(
            "ssh -i {} -o CertificateFile={} USER@HOST",
            key.display(),
            cert.display()
        )
    );
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(files_in(&out), ["id_ed25519", "id_ed25519-cert.pub"]);

    let info = CertInfo::read(&cert);
    assert_eq!(info.principals, [LOGIN]);
    assert!(
        info.critical_options
            .iter()
            .any(|o| o.contains("force-command") && o.contains("/bin/echo forced")),
        "{info:?}"
    );
    // The server marks workload subjects (`user=wl:SUB`) apart from people's names.
    assert!(
        info.key_id.contains(":user=")
            && info.key_id.contains("repo:acme/app:ref:refs/heads/main:"),
        "{:?}",
        info.key_id
    );
    for part in [
        &format!("iss={}", setup.idp.issuer()),
        "repo=acme/app",
        &format!("run={RUN_ID}"),
        "role=deploy",
        "by=auto",
    ] {
        assert!(
            info.key_id.contains(part),
            "{part} not in {:?}",
            info.key_id
        );
    }
    let ttl = info.valid_before - unix_now();
    assert!(
        (240..=300).contains(&ttl),
        "default_ttl is 5m, {ttl} s left"
    );

    // Whatever the job asks, the certificate runs the role's command.
    for command in ["whoami", "cat /etc/shadow"] {
        let login = ssh(
            &sshd,
            LOGIN,
            Identity::Certificate {
                key: &key,
                certificate: &cert,
            },
            command,
        );
        login.assert_ok();
        assert_eq!(login.stdout.trim(), "forced", "{login}");
    }
    let line = wait_for_key_id(&sshd, &["repo=acme/app", &format!("run={RUN_ID}")]);
    assert!(line.contains("role=deploy"), "{line}");

    assert_no_leak(&setup);
}

#[test]
fn agent_job_loads_key_and_certificate_into_the_agent() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let sshd = Sshd::start(&setup.ca.ca_public_key());
    let agent = SshAgent::start();
    let token = setup.ec.sign(&setup.claims());
    let out = setup.job(&token, Some(&agent), &["--role", "deploy", "--ttl", "2m"]);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("certificate for request ")
            && out
                .stdout
                .contains(" added to ssh-agent: principals mcae2e; ")
            && ["(2m)", "(1m 59s)"]
                .iter()
                .any(|left| out.stdout.trim_end().ends_with(left)),
        "{out}"
    );
    assert_eq!(agent.list().len(), 1, "one identity in the agent");
    let keys = agent.public_keys();
    assert!(
        keys[0].starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{keys:?}"
    );
    let login = ssh(&sshd, LOGIN, Identity::Agent(&agent), "whoami");
    login.assert_ok();
    assert_eq!(login.stdout.trim(), "forced", "{login}");
    wait_for_key_id(&sshd, &["repo=acme/app", "by=auto"]);
    assert_no_leak(&setup);
}

#[test]
fn every_accepted_algorithm_and_a_prefix_claim_get_a_certificate() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let tag = with(setup.claims(), &[("ref", json!("refs/tags/v1.2.3"))]);
    let cases = [
        ("eddsa", setup.ed.sign(&setup.claims()), "deploy"),
        ("es256", setup.ec.sign(&setup.claims()), "deploy"),
        ("rs256", setup.rsa.sign(&setup.claims()), "deploy"),
        ("tag", setup.rsa.sign(&tag), "release"),
    ];
    for (name, token, role) in cases {
        let dir = setup.out_dir(name);
        let dir_arg = dir.to_str().expect("utf-8 path");
        let out = setup.job(
            &token,
            None,
            &[
                "--role",
                role,
                "--principal",
                LOGIN,
                "--out",
                dir_arg,
                "--json",
            ],
        );
        out.assert_ok();
        let value = out.json();
        assert_eq!(value["state"], "issued", "{name}: {out}");
        assert_eq!(value["role"], role, "{name}");
        assert_eq!(value["principals"], json!([LOGIN]), "{name}");
        assert_eq!(
            value["identity_file"],
            json!(dir.join("id_ed25519").to_str()),
            "{name}"
        );
        assert_eq!(
            value["certificate_file"],
            json!(dir.join("id_ed25519-cert.pub").to_str()),
            "{name}"
        );
        let key_id = value["certificate"]["key_id"].as_str().unwrap_or_default();
        assert!(
            key_id.contains(&format!(":role={role}:by=auto")),
            "{name}: {key_id}"
        );
        let line = fs::read_to_string(dir.join("id_ed25519-cert.pub")).expect("certificate");
        assert_eq!(
            line.trim(),
            value["certificate"]["openssh"]
                .as_str()
                .unwrap_or_default()
                .trim()
        );
    }
    assert_eq!(count(&audit(&setup.ca), &["certificate.issued"]), 4);
    assert_no_leak(&setup);
}

/// One refused job: what it presents and how it must fail.
struct Refusal {
    what: &'static str,
    token: String,
    role: &'static str,
    /// 1 for UNAUTHENTICATED, 3 for PERMISSION_DENIED.
    code: i32,
}

#[test]
fn bad_tokens_and_foreign_jobs_are_refused_audited_and_get_nothing() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let now = unix_now();
    let issuer = setup.idp.issuer();
    let ed = setup.ed.clone();
    let good = || claims(&issuer);
    let hmac = |secret: &[u8], claims: &Value, signer: &Signer| {
        signer.sign_as(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
    };
    let stranger = Signer::ed25519("nobody");
    // A P-256 key published under the Ed25519 key's id: `alg` must match the JWK's type.
    let ec_as_ed = Signer {
        kid: ed.kid.clone(),
        ..Signer::p256("x")
    };
    let valid_payload =
        URL_SAFE_NO_PAD.encode(with(good(), &[("repository", json!("acme/evil"))]).to_string());
    let tampered = {
        let token = ed.sign(&good());
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &valid_payload;
        parts.join(".")
    };
    let replayed = ed.sign(&good());

    let refusals = vec![
        Refusal {
            what: "alg none",
            token: unsigned(&ed.kid, &good()),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "HS256 with the Ed25519 public key PEM as secret",
            token: hmac(ed.public_pem.as_bytes(), &good(), &ed),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "HS256 with the Ed25519 JWK as secret",
            token: hmac(ed.jwk().to_string().as_bytes(), &good(), &ed),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "HS256 with the RSA public key PEM as secret",
            token: hmac(setup.rsa.public_pem.as_bytes(), &good(), &setup.rsa),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "ES256 under an Ed25519 key id",
            token: ec_as_ed.sign(&good()),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "unknown kid",
            token: stranger.sign(&good()),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "signature of another payload",
            token: tampered,
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "wrong issuer",
            token: ed.sign(&with(
                good(),
                &[("iss", json!("https://token.example.net"))],
            )),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "wrong audience",
            token: ed.sign(&with(good(), &[("aud", json!("someone-else"))])),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "expired",
            token: ed.sign(&with(
                good(),
                &[
                    ("iat", json!(now - 900)),
                    ("nbf", json!(now - 900)),
                    ("exp", json!(now - 600)),
                ],
            )),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "not yet valid",
            token: ed.sign(&with(
                good(),
                &[("nbf", json!(now + 600)), ("exp", json!(now + 900))],
            )),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "no jti",
            token: ed.sign(&with(good(), &[("jti", Value::Null)])),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "replayed jti",
            token: replayed.clone(),
            role: "deploy",
            code: 1,
        },
        Refusal {
            what: "another repository",
            token: ed.sign(&with(
                good(),
                &[
                    ("repository", json!("acme/other")),
                    ("sub", json!("repo:acme/other:ref:refs/heads/main")),
                ],
            )),
            role: "deploy",
            code: 3,
        },
        Refusal {
            what: "another branch",
            token: ed.sign(&with(
                good(),
                &[
                    ("ref", json!("refs/heads/dev")),
                    ("sub", json!("repo:acme/app:ref:refs/heads/dev")),
                ],
            )),
            role: "deploy",
            code: 3,
        },
        Refusal {
            what: "a `*` in the token is not a wildcard",
            token: ed.sign(&with(good(), &[("repository", json!("*"))])),
            role: "deploy",
            code: 3,
        },
        Refusal {
            what: "a branch named like the release tags",
            token: ed.sign(&with(good(), &[("ref", json!("refs/heads/v1"))])),
            role: "release",
            code: 3,
        },
        Refusal {
            what: "a role with manual approval",
            token: ed.sign(&good()),
            role: "oncall",
            code: 3,
        },
    ];

    // The replayed token is good the first time.
    let first = setup.out_dir("first");
    setup
        .job(
            &replayed,
            None,
            &[
                "--role",
                "deploy",
                "--out",
                first.to_str().expect("utf-8 path"),
            ],
        )
        .assert_ok();
    let mut rows = audit(&setup.ca);
    let issued = count(&rows, &["certificate.issued"]);
    assert_eq!(issued, 1);

    for (i, refusal) in refusals.into_iter().enumerate() {
        let dir = setup.out_dir(&format!("refused-{i}"));
        let out = setup.job(
            &refusal.token,
            None,
            &[
                "--role",
                refusal.role,
                "--out",
                dir.to_str().expect("utf-8 path"),
            ],
        );
        assert_eq!(
            out.code,
            Some(refusal.code),
            "{}: expected exit {}:\n{out}",
            refusal.what,
            refusal.code
        );
        assert!(
            out.stderr.contains("moshca: error: create request: ")
                && out.stderr.contains("moshca: hint: "),
            "{}: the CA's refusal with a hint:\n{out}",
            refusal.what
        );
        assert!(out.stdout.is_empty(), "{}:\n{out}", refusal.what);
        assert!(
            files_in(&dir).is_empty(),
            "{}: files written: {:?}",
            refusal.what,
            files_in(&dir)
        );
        let after = audit(&setup.ca);
        assert_eq!(
            count(&after, &["certificate.issued"]),
            issued,
            "{}: a certificate was issued",
            refusal.what
        );
        let new = &after[rows.len()..];
        assert!(
            count(new, REFUSALS) >= 1,
            "{}: no auth.failed or request.refused row; new rows: {new:#?}",
            refusal.what
        );
        rows = after;
    }
    assert_no_leak(&setup);
}

#[test]
fn a_flood_of_unknown_key_ids_fetches_the_jwks_at_most_twice() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let first = setup.ed.sign(&setup.claims());
    setup
        .job(
            &first,
            None,
            &[
                "--role",
                "deploy",
                "--out",
                setup.out_dir("first").to_str().expect("utf-8"),
            ],
        )
        .assert_ok();
    let before = setup.idp.hits(JWKS_PATH);
    assert!((1..=2).contains(&before), "JWKS fetched {before} times");
    let refusals_before = count(&audit(&setup.ca), REFUSALS);

    // 20 tokens with made-up key ids, five jobs at a time; halfway, a real job. (The CA
    // also refuses a peer with more than 20 failed authentications a minute, so the real
    // job comes before the 21st failure.)
    let strangers: Vec<String> = (0..20)
        .map(|i| {
            let kid = random_id();
            let signer = if i % 2 == 0 {
                Signer::ed25519(&kid)
            } else {
                Signer::p256(&kid)
            };
            signer.sign(&setup.claims())
        })
        .collect();
    for (i, batch) in strangers.chunks(5).enumerate() {
        let jobs: Vec<Background> = batch
            .iter()
            .map(|token| {
                setup.secrets.push(token.clone());
                let mut cmd = setup.command(None);
                cmd.env("MOSHCA_ID_TOKEN", token)
                    .args(["--role", "deploy", "--out"])
                    .arg(setup.out_dir("flood"));
                Background::spawn(&mut cmd)
            })
            .collect();
        for job in jobs {
            let out = job.finish(COMMAND_TIMEOUT);
            out.assert_code(1)
                .assert_stderr_mentions(&["kid", "key id", "unknown key"]);
            setup.runs.push(out);
        }
        if i == 1 {
            // The flood did not evict the real keys from the cache.
            let again = setup.ec.sign(&setup.claims());
            let dir = setup.out_dir("again");
            setup
                .job(
                    &again,
                    None,
                    &["--role", "deploy", "--out", dir.to_str().expect("utf-8")],
                )
                .assert_ok();
        }
    }
    let fetched = setup.idp.hits(JWKS_PATH);
    assert!(
        fetched <= 2,
        "20 unknown key ids made the CA fetch the JWKS {fetched} times (initial + at most one \
         refetch a minute)"
    );
    assert!(files_in(&setup.out_dir("flood")).is_empty());
    let rows = audit(&setup.ca);
    assert!(count(&rows, REFUSALS) >= refusals_before + 20);
    assert_eq!(count(&rows, &["certificate.issued"]), 2);
    assert_no_leak(&setup);
}

#[test]
fn no_id_token_and_a_moshca_token_as_id_token_are_refused_with_hints() {
    let Some(mut setup) = Setup::start() else {
        return;
    };
    let dir = setup.out_dir("none");
    let mut cmd = setup.command(None);
    cmd.args(["--role", "deploy", "--out"]).arg(&dir);
    let out = setup.record(run(&mut cmd));
    out.assert_code(1)
        .assert_stderr_mentions(&["MOSHCA_ID_TOKEN"])
        .assert_stderr_mentions(&["id_tokens"])
        .assert_stderr_mentions(&["id-token: write"]);

    let token = setup.ca.token("alice").to_owned();
    let out = setup.job(
        &token,
        None,
        &["--role", "deploy", "--out", dir.to_str().expect("utf-8")],
    );
    out.assert_code(1)
        .assert_stderr_mentions(&["not an ID token"]);
    assert!(!out.stderr.contains(&token), "{out}");
    assert!(files_in(&dir).is_empty());
    assert_eq!(count(&audit(&setup.ca), &["certificate.issued"]), 0);
    assert_no_leak(&setup);
}
