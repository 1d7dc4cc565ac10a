//! End-to-end tests: the real `moshca-server` and `moshca` binaries, a real `sshd` trusting
//! the CA, a real `ssh-agent` and real `ssh` logins.
//!
//! One test binary, so the test accounts are created once per process. Each test builds its
//! own CA, sshd and agent, so tests run in parallel; the two expiry tests wait about 70 s
//! and dominate the wall time (`scripts/test.sh` raises the test thread count so the rest
//! run beside them).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use moshca_e2e::{
    Background, Ca, CertInfo, Identity, LOGIN, OTHER_LOGIN, Run, SshAgent, Sshd, fingerprint,
    keygen, moshca, poll, run, ssh, unix_now, wide,
};
use serde_json::Value;

/// Roles: `oncall` (two logins, default extensions) and `tunnel` (one login, its own
/// extensions); both requested by group oncall and approved by group sre-leads.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"
reason_min_len = 10
logins = ["mcae2e", "mcae2e-other"]
default_ttl = "30m"
max_ttl = "1h"

[[role]]
name = "tunnel"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
default_ttl = "10m"
max_ttl = "1h"
extensions = ["permit-port-forwarding", "permit-pty"]
"#;

/// alice requests, bob and carol approve, dave is in both groups, mallory in neither.
const USERS: &[(&str, &[&str])] = &[
    ("alice", &["oncall"]),
    ("bob", &["sre-leads"]),
    ("carol", &["sre-leads"]),
    ("dave", &["oncall", "sre-leads"]),
    ("mallory", &[]),
];

const REASON: &str = "INC-4312 replica lag";

/// How long a background `moshca login` may take once its request is decided.
const LOGIN_FINISH: Duration = Duration::from_secs(30);
/// How long to wait for a background `moshca login` to announce its request.
const LOGIN_ANNOUNCE: Duration = Duration::from_secs(30);

/// A CA with [`POLICY`] and [`USERS`], serving; `None` when the test should be skipped.
fn ca() -> Option<Ca> {
    Ca::serving(POLICY, USERS)
}

/// The request id in login's `moshca: request ID is waiting for approval by ...` line.
fn waiting_request_id(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("moshca: request ")?;
    let (id, tail) = rest.split_once(' ')?;
    tail.starts_with("is waiting").then(|| id.to_owned())
}

/// Starts `moshca login --role oncall --reason REASON EXTRA...` as `user` in the background
/// and returns it with the id of the request it announced.
fn start_login(ca: &Ca, user: &str, agent: &SshAgent, extra: &[&str]) -> (Background, String) {
    let mut cmd = ca.client_with_agent(user, agent);
    cmd.args(["login", "--role", "oncall", "--reason", REASON])
        .args(extra);
    let mut login = Background::spawn(&mut cmd);
    let id = login.wait_for_stderr(LOGIN_ANNOUNCE, waiting_request_id);
    (login, id)
}

/// `moshca request --role ROLE --reason REASON --public-key KEY.pub EXTRA...` as `cmd`.
fn request_as(mut cmd: std::process::Command, role: &str, key: &Path, extra: &[&str]) -> Run {
    cmd.args([
        "request",
        "--role",
        role,
        "--reason",
        REASON,
        "--public-key",
    ])
    .arg(public_key(key))
    .args(extra);
    run(&mut cmd)
}

/// A request that must be accepted; returns its id.
fn request_ok(ca: &Ca, user: &str, role: &str, key: &Path, extra: &[&str]) -> String {
    let out = request_as(ca.client(user), role, key, extra);
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "`moshca request` should print the id alone:\n{out}"
    );
    id
}

fn public_key(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// `moshca ARGS...` as `user`.
fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// `moshca requests --json [FLAGS]` as `user`, as a JSON array.
fn requests(ca: &Ca, user: &str, flags: &[&str]) -> Vec<Value> {
    let mut args = vec!["requests", "--json"];
    args.extend(flags);
    let out = client(ca, user, &args);
    out.assert_ok();
    match out.json() {
        Value::Array(items) => items,
        other => panic!("`moshca requests --json` should print an array, got {other}:\n{out}"),
    }
}

/// `moshca status ID --json` as `user`.
fn status(ca: &Ca, user: &str, id: &str) -> Value {
    let out = client(ca, user, &["status", id, "--json"]);
    out.assert_ok();
    let value = out.json();
    assert_eq!(value["id"], id, "status of another request:\n{out}");
    value
}

fn state_of(ca: &Ca, user: &str, id: &str) -> String {
    status(ca, user, id)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Fails unless the approver sees no pending request and nothing was stored at all.
#[track_caller]
fn assert_nothing_stored(ca: &Ca) {
    assert_eq!(
        requests(ca, "bob", &["--pending"]),
        Vec::<Value>::new(),
        "nothing should be pending"
    );
    assert_eq!(
        requests(ca, "bob", &[]),
        Vec::<Value>::new(),
        "a refused request should not be stored"
    );
}

/// alice requests `oncall` for `extra`, bob approves, alice fetches: (key, certificate, id).
fn issued_certificate(ca: &Ca, extra: &[&str]) -> (PathBuf, PathBuf, String) {
    let key = keygen(ca.scratch(), "subject");
    let id = request_ok(ca, "alice", "oncall", &key, extra);
    client(ca, "bob", &["approve", &id]).assert_ok();
    let cert = ca.scratch().join("subject-cert.pub");
    client(
        ca,
        "alice",
        &["fetch", &id, "--out", cert.to_str().expect("utf-8 path")],
    )
    .assert_ok();
    (key, cert, id)
}

/// Waits until `text()` contains `needle` (logs are written asynchronously).
fn wait_for_log(what: &str, needle: &str, text: impl Fn() -> String) {
    poll(
        Duration::from_secs(10),
        &format!("{what} to contain {needle:?}"),
        || text().contains(needle).then_some(()),
    );
}

/// Sleeps until the wall clock is past `valid_before` (a certificate's end) by a second.
fn sleep_past(valid_before: i64) {
    let left = valid_before + 1 - unix_now();
    assert!(
        left < 120,
        "valid_before {valid_before} is {left} s away; the ttl should be 1m"
    );
    if left > 0 {
        thread::sleep(Duration::from_secs(left.unsigned_abs()));
    }
}

#[track_caller]
fn assert_logged_in_as(out: &Run, login: &str) {
    out.assert_ok();
    assert!(
        out.stdout.contains(&format!("({login})")),
        "`id` should run as {login}:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------
// The happy path

#[test]
fn approved_login_puts_a_certificate_in_the_agent_that_sshd_accepts() {
    let Some(ca) = ca() else { return };
    let sshd = Sshd::start(&ca.ca_public_key());
    let agent = SshAgent::start();

    let (mut login, id) = start_login(
        &ca,
        "alice",
        &agent,
        &["--principal", LOGIN, "--timeout", "60s"],
    );
    login.wait_for_stderr(Duration::from_secs(5), |line| {
        line.contains(&format!("moshca approve {id}")).then_some(())
    });

    let pending = requests(&ca, "bob", &["--pending"]);
    assert_eq!(
        pending.len(),
        1,
        "bob should see alice's request: {pending:?}"
    );
    let request = &pending[0];
    assert_eq!(request["id"], id.as_str());
    assert_eq!(request["requester"], "alice");
    assert_eq!(request["role"], "oncall");
    assert_eq!(request["principals"], serde_json::json!([LOGIN]));
    assert_eq!(request["reason"], REASON);
    assert_eq!(request["state"], "pending");
    assert!(
        request["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "the approver should see the key fingerprint: {request}"
    );

    client(&ca, "bob", &["approve", &id]).assert_ok();
    let out = login.finish(LOGIN_FINISH);
    out.assert_ok();
    assert!(
        out.stdout
            .contains(&format!("certificate for request {id} added to ssh-agent")),
        "login should report the certificate:\n{out}"
    );

    let identities = agent.list();
    assert!(
        identities.iter().any(|line| line.contains("ED25519-CERT")),
        "the agent should hold the certificate: {identities:?}"
    );
    assert_logged_in_as(&ssh(&sshd, LOGIN, Identity::Agent(&agent), "id"), LOGIN);
    let key_id = format!("moshca:req={id}:user=alice:role=oncall:by=bob");
    wait_for_log("sshd's log", &key_id, || sshd.log());
    assert_eq!(state_of(&ca, "alice", &id), "issued");
}

// ---------------------------------------------------------------------------------------
// Refused requests store nothing

#[test]
fn principal_outside_the_role_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    request_as(ca.client("alice"), "oncall", &key, &["--principal", "root"])
        .assert_code(3)
        .assert_stderr_mentions(&["root"]);
    // The second of several principals is checked too (BLESS #53).
    request_as(
        ca.client("alice"),
        "oncall",
        &key,
        &["--principal", LOGIN, "--principal", "root"],
    )
    .assert_code(3)
    .assert_stderr_mentions(&["root"]);
    assert_nothing_stored(&ca);
}

#[test]
fn ttl_above_the_role_max_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    // A bad argument: the usage code, like a ttl below the minimum.
    request_as(ca.client("alice"), "oncall", &key, &["--ttl", "2h"])
        .assert_code(2)
        .assert_stderr_mentions(&["ttl"]);
    assert_nothing_stored(&ca);
}

#[test]
fn comma_in_a_principal_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    request_as(
        ca.client("alice"),
        "oncall",
        &key,
        &["--principal", "mcae2e,mcae2e-other"],
    )
    .assert_code(2)
    .assert_stderr_mentions(&["principal"]);
    assert_nothing_stored(&ca);
}

#[test]
fn non_member_of_the_requesters_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    request_as(ca.client("mallory"), "oncall", &key, &[])
        .assert_code(3)
        .assert_stderr_mentions(&["oncall", "may not", "not allowed", "requester"]);
    // An approver of the role is no requester either.
    request_as(ca.client("bob"), "oncall", &key, &[])
        .assert_code(3)
        .assert_stderr_mentions(&["oncall", "may not", "not allowed", "requester"]);
    assert_nothing_stored(&ca);
}

#[test]
fn missing_token_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    request_as(moshca(&ca, None, None), "oncall", &key, &[])
        .assert_refused()
        .assert_stderr_mentions(&[
            "no bearer token",
            "no token",
            "token is missing",
            "missing token",
        ]);
    assert_nothing_stored(&ca);
}

#[test]
fn wrong_token_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let forged = "mca_0000000000000000000000000000000000000000000";
    request_as(moshca(&ca, Some(forged), None), "oncall", &key, &[])
        .assert_refused()
        .assert_stderr_mentions(&[
            "invalid token",
            "not accepted",
            "unauthenticated",
            "unknown token",
        ]);
    assert!(
        !ca.log().contains(forged),
        "the server must not log a presented token"
    );
    assert_nothing_stored(&ca);
}

// ---------------------------------------------------------------------------------------
// Reviews

#[test]
fn requester_cannot_approve_their_own_request_even_as_an_approver() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let id = request_ok(&ca, "dave", "oncall", &key, &[]);
    client(&ca, "dave", &["approve", &id])
        .assert_code(3)
        .assert_stderr_mentions(&["own request", "yourself"]);
    assert_eq!(state_of(&ca, "dave", &id), "pending");
    let pending = requests(&ca, "bob", &["--pending"]);
    assert!(
        pending.iter().any(|r| r["id"] == id.as_str()),
        "still pending for bob: {pending:?}"
    );
    // Someone else still can.
    client(&ca, "bob", &["approve", &id]).assert_ok();
    assert_eq!(state_of(&ca, "dave", &id), "issued");
}

#[test]
fn denied_login_exits_3_and_leaves_the_agent_empty() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let (login, id) = start_login(&ca, "alice", &agent, &["--timeout", "60s"]);
    client(
        &ca,
        "bob",
        &["deny", &id, "--reason", "not during the freeze"],
    )
    .assert_ok();
    let out = login.finish(LOGIN_FINISH);
    out.assert_code(3)
        .assert_stderr_mentions(&["not during the freeze"]);
    assert_eq!(
        agent.list(),
        Vec::<String>::new(),
        "a denied login must not load anything"
    );
    assert_eq!(state_of(&ca, "alice", &id), "denied");
}

#[test]
fn approving_twice_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let id = request_ok(&ca, "alice", "oncall", &key, &[]);
    client(&ca, "bob", &["approve", &id]).assert_ok();
    let before = status(&ca, "alice", &id);
    assert_eq!(before["state"], "issued");

    for review in [
        &["approve", &id][..],
        &["deny", &id, "--reason", "too late to deny"],
    ] {
        for approver in ["carol", "bob"] {
            client(&ca, approver, review)
                .assert_refused()
                .assert_stderr_mentions(&["issued", "decided", "not pending", "already"]);
        }
    }

    let after = status(&ca, "alice", &id);
    assert_eq!(after["state"], "issued");
    assert_eq!(
        after["serial"], before["serial"],
        "a second approval must not re-sign"
    );
    assert_eq!(
        after["reviews"], before["reviews"],
        "decided requests are immutable"
    );
}

#[test]
fn approving_after_a_denial_is_refused() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let id = request_ok(&ca, "alice", "oncall", &key, &[]);
    client(
        &ca,
        "bob",
        &["deny", &id, "--reason", "use the replica instead"],
    )
    .assert_ok();
    let before = status(&ca, "alice", &id);

    for approver in ["carol", "bob"] {
        client(&ca, approver, &["approve", &id])
            .assert_refused()
            .assert_stderr_mentions(&["denied", "decided", "not pending"]);
    }

    let after = status(&ca, "alice", &id);
    assert_eq!(after["state"], "denied");
    assert_eq!(after["reviews"], before["reviews"]);
    assert!(
        after["serial"].is_null() || after["serial"] == 0,
        "nothing was signed: {after}"
    );
    let out = ca.scratch().join("cert.pub");
    client(
        &ca,
        "alice",
        &["fetch", &id, "--out", out.to_str().expect("utf-8 path")],
    )
    .assert_code(3);
    assert!(
        !out.exists(),
        "fetch of a denied request must not write a file"
    );
}

// ---------------------------------------------------------------------------------------
// Certificates

#[test]
fn fetch_returns_the_same_certificate_again_and_only_to_the_requester() {
    let Some(ca) = ca() else { return };
    let (_key, first, id) = issued_certificate(&ca, &["--principal", LOGIN]);
    let second = ca.scratch().join("again-cert.pub");
    client(
        &ca,
        "alice",
        &["fetch", &id, "--out", second.to_str().expect("utf-8 path")],
    )
    .assert_ok();
    let (a, b) = (fs::read(&first).unwrap(), fs::read(&second).unwrap());
    assert!(
        a.starts_with(b"ssh-ed25519-cert-v01@openssh.com "),
        "not a certificate: {a:?}"
    );
    assert_eq!(a, b, "fetching again must return the same certificate");

    let stolen = ca.scratch().join("stolen-cert.pub");
    client(
        &ca,
        "bob",
        &["fetch", &id, "--out", stolen.to_str().expect("utf-8 path")],
    )
    .assert_refused();
    client(
        &ca,
        "mallory",
        &["fetch", &id, "--out", stolen.to_str().expect("utf-8 path")],
    )
    .assert_refused();
    assert!(
        !stolen.exists(),
        "another user's fetch must not write a certificate"
    );
}

#[test]
fn certificate_carries_only_what_policy_grants() {
    let Some(ca) = ca() else { return };
    let started = unix_now();
    let (key, cert, id) = issued_certificate(&ca, &["--principal", LOGIN, "--ttl", "5m"]);
    let info = CertInfo::read(&cert);
    let request = status(&ca, "alice", &id);

    assert_eq!(
        info.kind,
        "ssh-ed25519-cert-v01@openssh.com user certificate"
    );
    assert_eq!(
        info.public_key,
        fingerprint(&public_key(&key)),
        "the certificate is for alice's key"
    );
    assert_eq!(
        info.signing_ca,
        fingerprint(&ca.ca_public_key()),
        "signed by the CA key"
    );
    assert_eq!(info.principals, [LOGIN], "only the requested principal");
    assert!(
        info.critical_options.is_empty(),
        "no options the role does not set: {info:?}"
    );
    assert_eq!(
        info.extensions,
        ["permit-pty"],
        "the default extensions are permit-pty alone"
    );
    assert_ne!(info.serial, 0);
    assert_eq!(
        wide(&request["serial"]),
        Some(info.serial),
        "the request names the certificate's serial"
    );
    assert_eq!(
        info.key_id,
        format!("moshca:req={id}:user=alice:role=oncall:by=bob")
    );
    assert_eq!(
        info.valid_before - info.valid_after,
        300 + 60,
        "ttl + backdate"
    );
    assert_eq!(request["valid_before"], info.valid_before);
    let now = unix_now();
    assert!(
        (started - 60 - 2..=now - 60 + 2).contains(&info.valid_after),
        "valid_after should be the issue time less 60 s: {info:?}, test ran {started}..{now}"
    );

    // No principal asked for: every login of the role. The role's own extensions.
    let key2 = keygen(ca.scratch(), "subject2");
    let all = request_ok(&ca, "alice", "oncall", &key2, &[]);
    let tunnel = request_ok(&ca, "alice", "tunnel", &key2, &[]);
    for (id, principals, extensions, default_ttl) in [
        (&all, vec![LOGIN, OTHER_LOGIN], vec!["permit-pty"], 30 * 60),
        (
            &tunnel,
            vec![LOGIN],
            vec!["permit-port-forwarding", "permit-pty"],
            10 * 60,
        ),
    ] {
        client(&ca, "carol", &["approve", id]).assert_ok();
        let path = ca.scratch().join(format!("{id}-cert.pub"));
        client(
            &ca,
            "alice",
            &["fetch", id, "--out", path.to_str().expect("utf-8 path")],
        )
        .assert_ok();
        let info = CertInfo::read(&path);
        let mut got = info.principals.clone();
        got.sort();
        assert_eq!(got, principals, "{info:?}");
        let mut got = info.extensions.clone();
        got.sort();
        assert_eq!(got, extensions, "{info:?}");
        assert_eq!(
            info.valid_before - info.valid_after,
            default_ttl + 60,
            "{info:?}"
        );
        assert!(info.key_id.ends_with(":by=carol"), "{info:?}");
    }
}

#[test]
fn sshd_refuses_a_login_that_is_not_a_principal() {
    let Some(ca) = ca() else { return };
    let sshd = Sshd::start(&ca.ca_public_key());
    let (key, cert, _id) = issued_certificate(&ca, &["--principal", LOGIN]);
    let identity = Identity::Certificate {
        key: &key,
        certificate: &cert,
    };

    assert_logged_in_as(&ssh(&sshd, LOGIN, identity, "id"), LOGIN);
    let out = ssh(&sshd, OTHER_LOGIN, identity, "id");
    assert!(
        !out.ok() && !out.stdout.contains("uid="),
        "login as {OTHER_LOGIN} must fail:\n{out}"
    );
    wait_for_log("sshd's log", "not a listed principal", || sshd.log());
}

// ---------------------------------------------------------------------------------------
// Time

#[test]
fn expired_certificate_stops_working_at_sshd() {
    let Some(ca) = ca() else { return };
    let sshd = Sshd::start(&ca.ca_public_key());
    let (key, cert, id) = issued_certificate(&ca, &["--principal", LOGIN, "--ttl", "1m"]);
    let info = CertInfo::read(&cert);
    assert_eq!(info.valid_before - info.valid_after, 60 + 60);
    assert_eq!(status(&ca, "alice", &id)["valid_before"], info.valid_before);
    let identity = Identity::Certificate {
        key: &key,
        certificate: &cert,
    };

    assert_logged_in_as(&ssh(&sshd, LOGIN, identity, "id"), LOGIN);
    sleep_past(info.valid_before);
    let out = ssh(&sshd, LOGIN, identity, "id");
    assert!(
        !out.ok() && !out.stdout.contains("uid="),
        "an expired certificate must not log in:\n{out}"
    );
}

#[test]
fn agent_drops_the_certificate_when_it_expires() {
    let Some(ca) = ca() else { return };
    let sshd = Sshd::start(&ca.ca_public_key());
    let agent = SshAgent::start();
    let (login, id) = start_login(&ca, "alice", &agent, &["--principal", LOGIN, "--ttl", "1m"]);
    client(&ca, "bob", &["approve", &id]).assert_ok();
    login.finish(LOGIN_FINISH).assert_ok();
    assert!(!agent.list().is_empty(), "the certificate should be loaded");
    assert_logged_in_as(&ssh(&sshd, LOGIN, Identity::Agent(&agent), "id"), LOGIN);

    let valid_before = status(&ca, "alice", &id)["valid_before"]
        .as_i64()
        .expect("an issued request has valid_before");
    sleep_past(valid_before);
    poll(
        Duration::from_secs(10),
        "the agent to drop the expired certificate",
        || agent.list().is_empty().then_some(()),
    );
    let out = ssh(&sshd, LOGIN, Identity::Agent(&agent), "id");
    assert!(
        !out.ok() && !out.stdout.contains("uid="),
        "nothing should log in after expiry:\n{out}"
    );
}

#[test]
fn login_timeout_exits_4_and_cancels_the_request() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let (login, id) = start_login(&ca, "alice", &agent, &["--timeout", "2s"]);
    let out = login.finish(LOGIN_FINISH);
    out.assert_code(4);
    poll(
        Duration::from_secs(10),
        "the timed-out request to be cancelled",
        || (state_of(&ca, "alice", &id) == "cancelled").then_some(()),
    );
    assert_eq!(requests(&ca, "bob", &["--pending"]), Vec::<Value>::new());
    assert_eq!(agent.list(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// Operators

#[test]
fn disabled_approver_can_no_longer_approve() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let id = request_ok(&ca, "alice", "oncall", &key, &[]);
    ca.admin(&["user", "disable", "bob"]).assert_ok();

    client(&ca, "bob", &["approve", &id])
        .assert_code(1)
        .assert_stderr_mentions(&[
            "not accepted",
            "disabled",
            "unauthenticated",
            "invalid token",
        ]);
    assert_eq!(state_of(&ca, "alice", &id), "pending");
    client(&ca, "carol", &["approve", &id]).assert_ok();
    let request = status(&ca, "alice", &id);
    assert_eq!(request["state"], "issued");
    let reviews = request["reviews"].as_array().expect("reviews array");
    assert!(
        reviews.iter().all(|r| r["approver"] != "bob"),
        "bob's attempt must not count: {request}"
    );
}

#[test]
fn pending_request_survives_a_server_restart() {
    let Some(mut ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    let id = request_ok(&ca, "alice", "oncall", &key, &[]);
    ca.restart();
    let pending = requests(&ca, "bob", &["--pending"]);
    assert!(
        pending.iter().any(|r| r["id"] == id.as_str()),
        "{pending:?}"
    );
    client(&ca, "bob", &["approve", &id]).assert_ok();
    let cert = ca.scratch().join("cert.pub");
    client(
        &ca,
        "alice",
        &["fetch", &id, "--out", cert.to_str().expect("utf-8 path")],
    )
    .assert_ok();
    assert_ne!(CertInfo::read(&cert).serial, 0);
}

#[test]
fn sighup_reloads_the_policy_and_keeps_the_old_one_when_invalid() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "k");
    request_as(ca.client("alice"), "late", &key, &[]).assert_refused();

    let with_late = format!(
        "{POLICY}\n[[role]]\nname = \"late\"\nrequesters = [\"group:oncall\"]\napprovers = [\"group:sre-leads\"]\nlogins = [\"mcae2e\"]\n"
    );
    ca.write_policy(&with_late);
    ca.reload();
    let id = poll(
        Duration::from_secs(10),
        "the reloaded policy to allow role late",
        || {
            let out = request_as(ca.client("alice"), "late", &key, &[]);
            out.ok().then(|| out.stdout.trim().to_owned())
        },
    );
    assert_eq!(status(&ca, "alice", &id)["role"], "late");

    let logged = ca.log().len();
    ca.write_policy("[[role]]\nname = \"late\"\nno_such_key = true\n");
    ca.reload();
    poll(
        Duration::from_secs(10),
        "the server to log the rejected policy",
        || (ca.log().len() > logged).then_some(()),
    );
    request_ok(&ca, "alice", "late", &key, &[]);
    request_ok(&ca, "alice", "oncall", &key, &[]);
}

// ---------------------------------------------------------------------------------------
// The harness itself

/// The fixture is sound without moshca: sshd trusts a CA made by `ssh-keygen`, accepts its
/// certificate for a listed principal only, and logs the key id. When this passes and a
/// moshca test fails, look at moshca.
#[test]
fn harness_sshd_trusts_a_certificate_made_by_ssh_keygen() {
    if !moshca_e2e::require_openssh() || !moshca_e2e::require_root() {
        return;
    }
    moshca_e2e::ensure_accounts();
    let dir = tempfile::tempdir().unwrap();
    let ca_key = keygen(dir.path(), "ca");
    let key = keygen(dir.path(), "user");
    run(
        std::process::Command::new(moshca_e2e::program("ssh-keygen"))
            .args(["-q", "-s"])
            .arg(&ca_key)
            .args([
                "-I",
                "harness:key-id",
                "-n",
                LOGIN,
                "-V",
                "-1m:+5m",
                "-z",
                "77",
            ])
            .arg(public_key(&key)),
    )
    .assert_ok();
    let cert = dir.path().join("user-cert.pub");
    let info = CertInfo::read(&cert);
    assert_eq!(
        (info.serial, info.valid_before - info.valid_after),
        (77, 360)
    );
    assert_eq!(info.public_key, fingerprint(&public_key(&key)));

    let sshd = Sshd::start(&public_key(&ca_key));
    let identity = Identity::Certificate {
        key: &key,
        certificate: &cert,
    };
    assert_logged_in_as(&ssh(&sshd, LOGIN, identity, "id"), LOGIN);
    assert!(!ssh(&sshd, OTHER_LOGIN, identity, "id").ok());
    wait_for_log(
        "sshd's log",
        "Accepted certificate ID \"harness:key-id\"",
        || sshd.log(),
    );
    wait_for_log("sshd's log", "not a listed principal", || sshd.log());

    let agent = SshAgent::start();
    assert_eq!(agent.list(), Vec::<String>::new());
    run(std::process::Command::new(moshca_e2e::program("ssh-add"))
        .arg(&key)
        .env("SSH_AUTH_SOCK", agent.socket()))
    .assert_ok();
    assert!(agent.list().iter().any(|l| l.contains("ED25519-CERT")));
    assert_logged_in_as(&ssh(&sshd, LOGIN, Identity::Agent(&agent), "id"), LOGIN);
}
