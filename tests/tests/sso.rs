//! End-to-end tests of people signing in through SSO: the real `moshca-server` and `moshca`
//! binaries, a real OpenID Connect provider (`tests/idp`, oidc-provider on Node.js) whose
//! pages a scripted browser (`browser.mjs`, `device.mjs`) fills in, a real sshd and
//! ssh-agent.
//!
//! The refusal tests hand the CA ID tokens from `token.mjs` through gRPC directly, so that
//! each refusal is the CA's and not the client's. A missing node or missing IdP packages
//! fail these tests (the harness says what to run); they are never skipped for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moshca_e2e::{
    Background, Ca, Identity, Idp, LOGIN, Run, SshAgent, Sshd, idp_dir, keygen, moshca,
    prerequisites, run, ssh, unix_now,
};
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_proto::v1::{CreateSessionRequest, Session, WhoAmIRequest, WhoAmIResponse};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `oncall` is requested by IdP group `eng` and approved by IdP group `approvers`.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"

[[role]]
name = "oncall"
requesters = ["group:eng"]
approvers = ["group:approvers"]
approval = "manual"
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"
"#;

const REASON: &str = "INC-7 sign-in through SSO";
const ALICE_PW: &str = "alice-pw-1";
const BOB_PW: &str = "bob-pw-1";
/// How long a sign-in through the scripted browser may take.
const SIGN_IN: Duration = Duration::from_secs(45);

/// alice is an engineer of example.com; bob approves (at the IdP only: the CA has no
/// groups for either).
fn accounts(bob_groups: &[&str]) -> Value {
    json!({
        "alice": {"password": ALICE_PW, "groups": ["eng"], "hd": "example.com"},
        "bob": {"password": BOB_PW, "groups": bob_groups, "hd": "example.com"},
        "eve": {"password": "eve-pw", "groups": ["eng"], "hd": "evil.example"},
    })
}

/// A CA whose `[sso]` trusts `idp`, with `extra` lines in that section; not started.
fn sso_ca(idp: &Idp, extra: &str) -> Ca {
    let ca = Ca::init(POLICY);
    let path = ca.data_dir().join("config.toml");
    let mut config = fs::read_to_string(&path).expect("read config.toml");
    config.push_str(&format!(
        "\n[sso]\nissuer = \"{}\"\nclient_id = \"moshca\"\n{extra}\n",
        idp.issuer()
    ));
    fs::write(&path, config).expect("write config.toml");
    ca
}

/// The IdP and a serving CA trusting it; `None` when the suite should be skipped here.
fn setup(extra: &str, idp_args: &[&str]) -> Option<(Idp, Ca)> {
    if !prerequisites() {
        return None;
    }
    let idp = Idp::start(&accounts(&["approvers"]), idp_args);
    let mut ca = sso_ca(&idp, extra);
    ca.start();
    Some((idp, ca))
}

/// Where `person`'s client keeps its config and session file.
fn config_home(ca: &Ca, person: &str) -> PathBuf {
    ca.scratch().join(format!("{person}-config"))
}

fn session_file(ca: &Ca, person: &str) -> PathBuf {
    config_home(ca, person).join("moshca").join("session.json")
}

/// `moshca` for `person` without a token: their own config home, and the scripted browser
/// signing in as them with `password`.
fn person(ca: &Ca, name: &str, password: &str, agent: Option<&SshAgent>) -> Command {
    let mut cmd = moshca(ca, None, agent);
    cmd.env("XDG_CONFIG_HOME", config_home(ca, name))
        .env("BROWSER", idp_dir().join("browser.mjs"))
        .env("MOSHCA_IDP_USER", name)
        .env("MOSHCA_IDP_PASSWORD", password)
        .env_remove("MOSHCA_IDP_TAMPER_STATE");
    cmd
}

fn alice(ca: &Ca) -> Command {
    person(ca, "alice", ALICE_PW, None)
}

fn bob(ca: &Ca) -> Command {
    person(ca, "bob", BOB_PW, None)
}

/// `moshca auth login` through the scripted browser; must succeed.
fn browser_login(mut cmd: Command) -> Run {
    let out = Background::spawn(cmd.args(["auth", "login", "--json"])).finish(SIGN_IN);
    out.assert_ok();
    out
}

/// `moshca-server audit export`, one JSON object per line.
fn audit(ca: &Ca) -> Vec<Value> {
    let out = ca.admin(&["audit", "export"]);
    out.assert_ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn events<'a>(rows: &'a [Value], kind: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["action"] == kind).collect()
}

/// Every session the CA holds, live or not.
fn all_sessions(ca: &Ca) -> Vec<Value> {
    let out = ca.admin(&["session", "list", "--all", "--json"]);
    out.assert_ok();
    match out.json() {
        Value::Array(items) => items,
        other => panic!("session list --json should be an array: {other}"),
    }
}

/// A gRPC client for `ca`, sending `bearer` when given.
fn grpc<T>(ca: &Ca, call: impl AsyncFnOnce(CertificateAuthorityClient<Channel>) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let pem = fs::read(ca.tls_cert()).expect("read the CA's TLS certificate");
        let channel = Endpoint::from_shared(ca.url().to_owned())
            .expect("CA url")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .expect("tls config")
            .connect()
            .await
            .expect("connect to the CA");
        call(CertificateAuthorityClient::new(channel)).await
    })
}

/// `CreateSession` with `id_token` and `nonce`, straight to the CA.
fn create_session(ca: &Ca, id_token: &str, nonce: &str) -> Result<Session, tonic::Status> {
    grpc(ca, async |mut client| {
        client
            .create_session(CreateSessionRequest {
                id_token: id_token.to_owned(),
                nonce: nonce.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    })
}

/// `WhoAmI` with the bearer `credential`.
fn whoami_with(ca: &Ca, credential: &str) -> Result<WhoAmIResponse, tonic::Status> {
    let header: tonic::metadata::MetadataValue<_> =
        format!("Bearer {credential}").parse().expect("header");
    grpc(ca, async move |mut client| {
        let mut request = tonic::Request::new(WhoAmIRequest {});
        request.metadata_mut().insert("authorization", header);
        client
            .who_am_i(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

/// The session credential in `person`'s session file.
fn stored_token(ca: &Ca, person: &str) -> String {
    let file: Value = serde_json::from_str(
        &fs::read_to_string(session_file(ca, person)).expect("read session.json"),
    )
    .expect("session.json is JSON");
    file["token"].as_str().expect("token").to_owned()
}

/// Fails unless `status` is UNAUTHENTICATED with a message containing `needle` and without
/// the ID token.
#[track_caller]
fn assert_refused(result: Result<Session, tonic::Status>, needle: &str, id_token: &str) {
    let status = match result {
        Ok(session) => panic!("the CA created session {} for {}", session.id, session.user),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains(needle),
        "the refusal should say {needle:?}: {:?}",
        status.message()
    );
    let signature = id_token.rsplit('.').next().unwrap_or_default();
    assert!(
        !status.message().contains(signature),
        "the refusal quotes the ID token"
    );
}

/// The number of `session.refused` audit rows so far.
fn refusals(ca: &Ca) -> Vec<Value> {
    events(&audit(ca), "session.refused")
        .into_iter()
        .cloned()
        .collect()
}

#[track_caller]
fn assert_no_panic(out: &Run) {
    for word in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(
            !out.stderr.contains(word),
            "the client crashed instead of explaining:\n{out}"
        );
    }
}

/// Fails unless stderr mentions every one of `words` (case-insensitive).
#[track_caller]
fn assert_mentions_all(out: &Run, words: &[&str]) {
    let stderr = out.stderr.to_lowercase();
    for word in words {
        assert!(
            stderr.contains(&word.to_lowercase()),
            "stderr should mention {word:?}:\n{out}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------
// Signing in

#[test]
fn device_grant_sign_in_then_an_sso_approver_approves_and_alice_logs_in_to_sshd() {
    let Some((idp, ca)) = setup("", &[]) else {
        return;
    };
    let sshd = Sshd::start(&ca.ca_public_key());
    let agent = SshAgent::start();

    // alice signs in with the device grant; device.mjs plays her phone.
    let started = Instant::now();
    let mut cmd = person(&ca, "alice", ALICE_PW, Some(&agent));
    let mut login = Background::spawn(cmd.args(["auth", "login", "--device"]));
    let uri = login.wait_for_stderr(Duration::from_secs(30), |line| {
        line.trim()
            .strip_prefix("moshca: to sign in, open ")
            .map(str::to_owned)
    });
    assert!(uri.contains("user_code="), "{uri}");
    idp.complete_device("alice", ALICE_PW, &uri).assert_ok();
    let out = login.finish(Duration::from_secs(60));
    out.assert_ok();
    let took = started.elapsed();
    eprintln!(
        "device grant: `moshca auth login --device` to a CA session took {:.2} s",
        took.as_secs_f64()
    );
    assert!(
        out.stdout.contains("signed in as alice") && out.stdout.contains("eng"),
        "{out}"
    );
    assert_eq!(mode(&session_file(&ca, "alice")), 0o600);

    // bob approves through SSO: the CA knows him only from the IdP.
    browser_login(bob(&ca));

    let mut cmd = person(&ca, "alice", ALICE_PW, Some(&agent));
    cmd.args([
        "login",
        "--role",
        "oncall",
        "--reason",
        REASON,
        "--timeout",
        "60s",
    ]);
    let mut waiting = Background::spawn(&mut cmd);
    let id = waiting.wait_for_stderr(Duration::from_secs(30), |line| {
        let rest = line.trim().strip_prefix("moshca: request ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("is waiting").then(|| id.to_owned())
    });
    run(bob(&ca).args(["approve", &id])).assert_ok();
    waiting.finish(Duration::from_secs(30)).assert_ok();

    let out = ssh(&sshd, LOGIN, Identity::Agent(&agent), "id -un");
    out.assert_ok();
    assert_eq!(out.stdout.trim(), LOGIN, "{out}");

    let rows = audit(&ca);
    let created = events(&rows, "session.created");
    assert_eq!(created.len(), 2, "alice's and bob's sign-ins: {rows:?}");
}

#[test]
fn browser_sign_in_with_pkce_keeps_a_private_session_that_status_shows_and_logout_ends() {
    let Some((idp, ca)) = setup("", &[]) else {
        return;
    };
    let started = Instant::now();
    let out = browser_login(alice(&ca));
    eprintln!(
        "browser flow: `moshca auth login` through browser.mjs to a CA session took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let signed_in = out.json();
    assert_eq!(signed_in["user"], "alice", "{out}");
    assert_eq!(signed_in["groups"], json!(["eng"]), "{out}");
    assert_eq!(signed_in["provider"], idp.issuer(), "{out}");
    let file = session_file(&ca, "alice");
    assert_eq!(mode(&file), 0o600, "the session file must be private");
    assert_eq!(mode(file.parent().expect("dir")), 0o700);
    let text = fs::read_to_string(&file).expect("read session.json");
    assert!(text.contains("\"token\": \"mcs_"), "{text}");

    let status = run(alice(&ca).args(["auth", "status", "--json"]));
    status.assert_ok();
    let status = status.json();
    assert_eq!(status["user"], "alice");
    assert_eq!(status["credential"], "session");
    assert_eq!(status["provider"], idp.issuer());
    assert_eq!(status["session_id"], signed_in["session_id"]);

    // Every other command uses the session: alice may request oncall.
    let who = run(alice(&ca).args(["whoami", "--json"]));
    who.assert_ok();
    assert_eq!(who.json()["requestable_roles"], json!(["oncall"]), "{who}");
    assert!(
        !who.stderr.contains("token expires"),
        "a session of hours is not a token about to expire:\n{who}"
    );

    // A configured token still wins over the session.
    let mut with_token = alice(&ca);
    with_token.env("MOSHCA_TOKEN", "mca_not-a-real-token");
    let out = run(with_token.args(["whoami"]));
    assert!(
        !out.ok(),
        "a bad configured token should be what is sent:\n{out}"
    );

    let out = run(alice(&ca).args(["auth", "logout"]));
    out.assert_ok();
    assert!(out.stdout.contains("signed out"), "{out}");
    assert!(!file.exists(), "logout should delete the session file");
    let sessions = all_sessions(&ca);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_ne!(sessions[0]["state"], "live", "{sessions:?}");
    assert_eq!(events(&audit(&ca), "session.ended").len(), 1);
}

#[test]
fn a_callback_with_a_wrong_state_is_refused_and_no_session_exists() {
    let Some((_idp, ca)) = setup("", &[]) else {
        return;
    };
    let mut cmd = alice(&ca);
    cmd.env("MOSHCA_IDP_TAMPER_STATE", "1")
        .args(["auth", "login"]);
    let out = Background::spawn(&mut cmd).finish(SIGN_IN);
    assert_no_panic(&out);
    assert_eq!(out.code, Some(3), "a forged callback is a refusal:\n{out}");
    assert_mentions_all(&out, &["state", "moshca auth login"]);
    assert!(!session_file(&ca, "alice").exists());
    assert_eq!(all_sessions(&ca), Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------
// The CA refuses ID tokens it must not trust

#[test]
fn id_tokens_for_another_audience_issuer_signature_or_nonce_are_refused_and_audited() {
    let Some((idp, ca)) = setup("required_claims = { hd = \"example.com\" }", &[]) else {
        return;
    };
    let other_idp = Idp::start(&accounts(&[]), &[]);

    let other_audience = idp.id_token("alice", ALICE_PW, "other", Some("n-aud"));
    assert_refused(
        create_session(&ca, &other_audience, "n-aud"),
        "audience",
        &other_audience,
    );

    let other_issuer = other_idp.id_token("alice", ALICE_PW, "moshca", Some("n-iss"));
    assert_refused(
        create_session(&ca, &other_issuer, "n-iss"),
        "issuer",
        &other_issuer,
    );

    // alice's real token with the signature of another one.
    let good = idp.id_token("alice", ALICE_PW, "moshca", Some("n-sig"));
    let donor = idp.id_token("bob", BOB_PW, "moshca", Some("n-sig"));
    let (head, _) = good.rsplit_once('.').expect("jwt");
    let (_, signature) = donor.rsplit_once('.').expect("jwt");
    let forged = format!("{head}.{signature}");
    assert_refused(create_session(&ca, &forged, "n-sig"), "signature", &forged);

    let wrong_nonce = idp.id_token("alice", ALICE_PW, "moshca", Some("n-1"));
    assert_refused(
        create_session(&ca, &wrong_nonce, "n-2"),
        "nonce",
        &wrong_nonce,
    );

    // eve's domain is not the one required_claims names.
    let eve = idp.id_token("eve", "eve-pw", "moshca", Some("n-hd"));
    assert_refused(create_session(&ca, &eve, "n-hd"), "hd", &eve);

    assert_eq!(
        all_sessions(&ca),
        Vec::<Value>::new(),
        "no refused token made a session"
    );
    let refused = refusals(&ca);
    assert_eq!(
        refused.len(),
        5,
        "one session.refused row per refusal: {refused:?}"
    );

    // The untouched token with its own nonce works: the refusals were about what changed.
    let session = create_session(&ca, &good, "n-sig").expect("the genuine token is accepted");
    assert_eq!(session.user, "alice");
}

#[test]
fn an_expired_id_token_is_refused_with_no_leeway() {
    if !prerequisites() {
        return;
    }
    let idp = Idp::start(&accounts(&[]), &["--id-token-ttl", "1"]);
    let mut ca = sso_ca(&idp, "clock_leeway = \"0s\"");
    ca.start();
    let token = idp.id_token("alice", ALICE_PW, "moshca", Some("n-exp"));
    std::thread::sleep(Duration::from_secs(2));
    assert_refused(create_session(&ca, &token, "n-exp"), "expired", &token);
    assert_eq!(all_sessions(&ca), Vec::<Value>::new());
    assert_eq!(refusals(&ca).len(), 1);
}

#[test]
fn a_user_disabled_on_the_ca_cannot_sign_in() {
    let Some((_idp, ca)) = setup("", &[]) else {
        return;
    };
    browser_login(alice(&ca));
    let before = stored_token(&ca, "alice");
    ca.admin(&["user", "disable", "alice"]).assert_ok();
    let mut cmd = alice(&ca);
    let out = Background::spawn(cmd.args(["auth", "login"])).finish(SIGN_IN);
    assert_no_panic(&out);
    assert!(!out.ok(), "a disabled user signed in:\n{out}");
    out.assert_stderr_mentions(&["disabled"]);
    let sessions = all_sessions(&ca);
    assert_eq!(
        sessions.len(),
        1,
        "only the session from before alice was disabled exists"
    );
    assert_eq!(
        sessions[0]["state"], "user disabled",
        "the listing says the CA refuses it: {sessions:?}"
    );
    let live = ca.admin(&["session", "list", "--json"]);
    live.assert_ok();
    assert_eq!(
        live.json(),
        json!([]),
        "a disabled user's session is not live"
    );
    assert_eq!(
        stored_token(&ca, "alice"),
        before,
        "nothing new was stored for alice"
    );
    let err = whoami_with(&ca, &before).expect_err("a disabled user's session still works");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let refused = refusals(&ca);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["details"]["user"], "alice", "{refused:?}");
}

// ---------------------------------------------------------------------------------------
// Sessions that end

#[test]
fn a_revoked_session_used_again_is_refused_and_the_client_signs_in_again() {
    let Some((_idp, ca)) = setup("", &[]) else {
        return;
    };
    browser_login(alice(&ca));
    let revoked = stored_token(&ca, "alice");
    ca.admin(&["session", "revoke", "--user", "alice"])
        .assert_ok();

    let err = whoami_with(&ca, &revoked).expect_err("a revoked session still works");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("ended"), "{err:?}");

    // `auth status` reports it without signing in on its own.
    let status = run(alice(&ca).args(["auth", "status"]));
    assert_no_panic(&status);
    assert!(!status.ok(), "{status}");
    assert_mentions_all(&status, &["ended", "moshca auth login"]);

    // Any other command says why and signs in again on its own.
    let mut cmd = alice(&ca);
    let out = Background::spawn(cmd.args(["whoami"])).finish(SIGN_IN);
    out.assert_ok();
    assert_mentions_all(&out, &["ended", "signing in"]);
    assert_ne!(
        stored_token(&ca, "alice"),
        revoked,
        "a new session was stored"
    );
}

#[test]
fn an_expired_session_makes_the_client_ask_to_sign_in_again() {
    let Some((_idp, ca)) = setup("session_ttl = \"1m\"", &[]) else {
        return;
    };
    browser_login(alice(&ca));
    let file = session_file(&ca, "alice");
    let stored: Value =
        serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("json");
    let expires_at = stored["expires_at"].as_i64().expect("expires_at");
    assert!(expires_at <= unix_now() + 60, "session_ttl is 1m: {stored}");
    std::thread::sleep(Duration::from_secs(
        u64::try_from(expires_at + 1 - unix_now()).unwrap_or(0),
    ));

    // The CA says so even when the file claims otherwise.
    let mut lying = stored.clone();
    lying["expires_at"] = json!(unix_now() + 3600);
    fs::write(&file, lying.to_string()).expect("write");
    let status = run(alice(&ca).args(["auth", "status"]));
    assert_no_panic(&status);
    assert!(!status.ok(), "{status}");
    assert_mentions_all(&status, &["expired", "moshca auth login"]);

    // Commands notice it, say so and sign in again.
    fs::write(&file, stored.to_string()).expect("write");
    let mut cmd = alice(&ca);
    let out = Background::spawn(cmd.args(["whoami"])).finish(SIGN_IN);
    assert_no_panic(&out);
    out.assert_ok();
    assert_mentions_all(&out, &["expired", "signing in"]);
}

#[test]
fn bob_removed_from_the_approver_group_at_the_idp_cannot_approve_after_signing_in_again() {
    let Some((idp, ca)) = setup("", &[]) else {
        return;
    };
    browser_login(alice(&ca));
    browser_login(bob(&ca));
    let who = run(bob(&ca).args(["whoami", "--json"]));
    who.assert_ok();
    assert_eq!(who.json()["approvable_roles"], json!(["oncall"]), "{who}");

    let key = keygen(ca.scratch(), "alice-key");
    let out = run(alice(&ca)
        .args([
            "request",
            "--role",
            "oncall",
            "--reason",
            REASON,
            "--public-key",
        ])
        .arg(key.with_extension("pub")));
    out.assert_ok();
    let id = out.stdout.trim().to_owned();

    // The IdP takes bob out of the approvers; his next sign-in carries that.
    idp.set_accounts(&accounts(&[]));
    run(bob(&ca).args(["auth", "logout"])).assert_ok();
    browser_login(bob(&ca));
    let out = run(bob(&ca).args(["approve", &id]));
    assert_no_panic(&out);
    // The CA does not even show him the request any more.
    out.assert_refused();
    let state = run(alice(&ca).args(["status", &id, "--json"]));
    state.assert_ok();
    assert_eq!(state.json()["state"], "pending", "{state}");
}

#[test]
fn without_a_browser_the_client_falls_back_to_the_device_grant() {
    let Some((idp, ca)) = setup("", &[]) else {
        return;
    };
    let mut cmd = alice(&ca);
    cmd.env("BROWSER", ca.scratch().join("no-such-browser"));
    let mut login = Background::spawn(cmd.args(["auth", "login"]));
    let uri = login.wait_for_stderr(Duration::from_secs(30), |line| {
        line.trim()
            .strip_prefix("moshca: to sign in, open ")
            .map(str::to_owned)
    });
    idp.complete_device("alice", ALICE_PW, &uri).assert_ok();
    let out = login.finish(Duration::from_secs(60));
    out.assert_ok();
    assert_mentions_all(&out, &["no browser could be started"]);
    assert!(session_file(&ca, "alice").exists());
}

#[test]
fn logout_without_the_ca_deletes_the_session_file_and_warns() {
    let Some((_idp, mut ca)) = setup("", &[]) else {
        return;
    };
    browser_login(alice(&ca));
    let file = session_file(&ca, "alice");
    // The client must still find its settings: the URL stays, nothing listens on it.
    let mut cmd = alice(&ca);
    ca.stop();
    let out = run(cmd.args(["auth", "logout"]));
    assert_no_panic(&out);
    out.assert_ok();
    assert!(!file.exists(), "the session file should be gone:\n{out}");
    assert_mentions_all(&out, &["warning", "session revoke"]);
}
