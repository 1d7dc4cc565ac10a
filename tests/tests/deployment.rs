//! From the laptop demo to a real deployment: the CA reached by the name it is deployed
//! under, a client set up with nothing but the URL and the TLS certificate's fingerprint.
//!
//! The name is mapped to 127.0.0.1 in `/etc/hosts` (so these tests need root, like the
//! rest of the end-to-end suite).

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use moshca_e2e::{Ca, Run, client_bin, require_root, run};

const POLICY: &str = r#"
[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
max_ttl = "1h"
"#;

/// The name the CA is deployed under, and one its certificate does not hold.
const NAME: &str = "ca.moshca-e2e.test";
const OTHER_NAME: &str = "other.moshca-e2e.test";

/// Maps `name` to 127.0.0.1 in /etc/hosts, once.
fn map_to_loopback(name: &str) {
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    if hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == name))
    {
        return;
    }
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .expect("open /etc/hosts (root)");
    writeln!(file, "127.0.0.1 {name}").expect("append to /etc/hosts");
}

/// `moshca ARGS` with only a token and an empty HOME: no server or certificate settings,
/// so whatever it needs comes from the config file `moshca setup` writes.
fn bare_client(home: &Path, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(client_bin());
    cmd.env_remove("MOSHCA_SERVER")
        .env_remove("MOSHCA_CA_CERT")
        .env_remove("MOSHCA_TOKEN")
        .env_remove("MOSHCA_TOKEN_FILE")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(args);
    if let Some(token) = token {
        cmd.env("MOSHCA_TOKEN", token);
    }
    run(&mut cmd)
}

/// The `SHA256:...` fingerprint `init` printed for its TLS certificate.
fn printed_fingerprint(init: &Run) -> String {
    init.stdout
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '(' || c == ')'))
        .find(|w| w.starts_with("SHA256:") && w.len() == 50)
        .unwrap_or_else(|| panic!("init printed no TLS fingerprint:\n{init}"))
        .to_owned()
}

#[test]
fn a_client_set_up_by_fingerprint_reaches_the_ca_by_its_tls_name() {
    if !require_root() {
        return;
    }
    map_to_loopback(NAME);
    map_to_loopback(OTHER_NAME);
    let (mut ca, init) = Ca::init_with(POLICY, &["--tls-name", NAME]);
    ca.add_user("alice", &["oncall"]);
    ca.start();
    let port = ca.url().rsplit(':').next().expect("port").to_owned();
    let url = format!("https://{NAME}:{port}");
    let fingerprint = printed_fingerprint(&init);
    assert!(
        init.stdout
            .contains(&format!("--data-dir {}", ca.data_dir().display())),
        "init's next step names the data directory:\n{init}"
    );
    let home = ca.scratch().join("laptop");
    fs::create_dir_all(&home).expect("home");
    let config = home.join(".config/moshca/config.toml");

    // A wrong fingerprint (another certificate's) is refused and writes nothing.
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let out = bare_client(
        &home,
        None,
        &["setup", "--server", &url, "--fingerprint", &wrong],
    );
    assert!(!out.ok(), "a wrong fingerprint was accepted:\n{out}");
    assert!(
        out.stderr
            .contains("presented no certificate with fingerprint")
            && out.stderr.contains(&fingerprint),
        "{out}"
    );
    assert!(
        !config.exists(),
        "a refused setup wrote {}",
        config.display()
    );
    assert!(!home.join(".config/moshca/ca.pem").exists());

    // The right one pins the certificate and writes the config file.
    let out = bare_client(
        &home,
        None,
        &["setup", "--server", &url, "--fingerprint", &fingerprint],
    );
    out.assert_ok();
    let written = fs::read_to_string(&config).expect("config file");
    assert!(written.contains(&url), "{written}");
    assert_eq!(
        fs::read(home.join(".config/moshca/ca.pem")).expect("pinned certificate"),
        fs::read(ca.tls_cert()).expect("the CA's certificate"),
        "the pinned certificate is the CA's own"
    );

    // Everything else now needs only a token.
    let whoami = bare_client(&home, Some(ca.token("alice")), &["whoami", "--json"]);
    whoami.assert_ok();
    assert!(whoami.stdout.contains("\"alice\""), "{whoami}");

    // A name the certificate does not hold: refused, with a hint that names the fix.
    let other = format!("https://{OTHER_NAME}:{port}");
    let out = bare_client(
        &home,
        Some(ca.token("alice")),
        &["--server", &other, "whoami"],
    );
    assert!(
        !out.ok(),
        "a name the certificate lacks was accepted:\n{out}"
    );
    assert!(out.stderr.contains("--tls-name"), "{out}");
}

/// A policy with two type errors and an unknown key, on known lines.
const BAD_POLICY: &str = r#"[defaults]
max_ttl = 8

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
approvals_required = "one"
colour = "blue"
"#;

#[test]
fn policy_errors_come_all_at_once_and_reloads_say_what_happened() {
    let mut ca = Ca::init(POLICY);
    ca.add_user("alice", &["oncall"]);
    ca.server_env("MOSHCA_LOG_FORMAT", "json");
    let bad = ca.scratch().join("bad-policy.toml");
    fs::write(&bad, BAD_POLICY).expect("write");
    let check = ca.admin(&["policy", "check", bad.to_str().expect("utf-8")]);
    assert!(!check.ok(), "a bad policy passed the check:\n{check}");
    for expected in [
        ":2: defaults.max_ttl:",
        ":9: role[0] (oncall).approvals_required:",
        ":10: role[0] (oncall).colour:",
        "3 error(s)",
    ] {
        assert!(check.stderr.contains(expected), "{expected}:\n{check}");
    }
    let good = ca.admin(&["policy", "check"]);
    good.assert_ok();
    assert!(good.stdout.contains("ok, 1 roles, sha256 "), "{good}");

    // SIGHUP with the bad file: one log line naming every error; the old policy stays.
    ca.start();
    fs::copy(&bad, ca.data_dir().join("policy.toml")).expect("copy");
    ca.reload();
    let refused = moshca_e2e::poll(
        std::time::Duration::from_secs(10),
        "the refused reload in the log",
        || {
            ca.log()
                .lines()
                .find(|l| l.contains("policy reload refused"))
                .map(str::to_owned)
        },
    );
    let entry: serde_json::Value = serde_json::from_str(&refused)
        .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {refused}"));
    let message = entry["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("approvals_required") && message.contains("colour"),
        "{refused}"
    );
    let whoami = run(ca.client("alice").args(["whoami"]));
    whoami.assert_ok();
    assert!(
        whoami.stdout.contains("oncall"),
        "the old policy stays:\n{whoami}"
    );

    // And a good one: one line with the outcome.
    ca.write_policy(&POLICY.replace("max_ttl = \"1h\"", "max_ttl = \"30m\""));
    ca.reload();
    let reloaded = moshca_e2e::poll(
        std::time::Duration::from_secs(10),
        "the reload in the log",
        || {
            ca.log()
                .lines()
                .find(|l| l.contains("policy reloaded"))
                .map(str::to_owned)
        },
    );
    let entry: serde_json::Value = serde_json::from_str(&reloaded).expect("JSON line");
    assert_eq!(entry["roles"], 1, "{reloaded}");
    assert_eq!(
        entry["sha256"].as_str().map(str::len),
        Some(16),
        "{reloaded}"
    );
    let log = ca.log();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    for line in log.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

#[test]
fn a_renewed_tls_certificate_is_served_after_sighup() {
    if !require_root() {
        return;
    }
    map_to_loopback(NAME);
    let (mut ca, init) = Ca::init_with(POLICY, &["--tls-name", NAME]);
    ca.add_user("alice", &["oncall"]);
    ca.start();
    let port = ca.url().rsplit(':').next().expect("port").to_owned();
    let url = format!("https://{NAME}:{port}");
    let old = printed_fingerprint(&init);

    // The company's CA renewed the certificate: a new pair for the same name.
    let other = ca.scratch().join("renewed");
    let out = run(Command::new(moshca_e2e::server_bin())
        .args(["init", "--tls-name", NAME, "--data-dir"])
        .arg(&other));
    out.assert_ok();
    let new = printed_fingerprint(&out);
    assert_ne!(new, old);
    for file in ["cert.pem", "key.pem"] {
        fs::copy(
            other.join("tls").join(file),
            ca.data_dir().join("tls").join(file),
        )
        .expect("install the renewed pair");
    }
    ca.reload();
    moshca_e2e::poll(
        std::time::Duration::from_secs(10),
        "the TLS reload in the log",
        || ca.log().contains("TLS certificate reloaded").then_some(()),
    );
    let home = ca.scratch().join("laptop");
    fs::create_dir_all(&home).expect("home");
    // The old fingerprint no longer matches; the new one does.
    let out = bare_client(
        &home,
        None,
        &["setup", "--server", &url, "--fingerprint", &old],
    );
    assert!(!out.ok(), "the old certificate is still served:\n{out}");
    let out = bare_client(
        &home,
        None,
        &["setup", "--server", &url, "--fingerprint", &new],
    );
    out.assert_ok();
    bare_client(&home, Some(ca.token("alice")), &["whoami"]).assert_ok();
}
