//! End-to-end tests of the server side of SSO through the real `moshca-server` binary:
//! `serve` refuses to start when the identity provider cannot be discovered, naming the
//! URL it tried; the operator's `user link-sso`, `user list` source column and `session`
//! commands. Sign-ins themselves are driven by the client's end-to-end tests.

use std::fs;
use std::process::Command;

use moshca_e2e::{Ca, child_path, free_port, run, server_bin};

const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"
"#;

fn append_config(ca: &Ca, text: &str) {
    let path = ca.data_dir().join("config.toml");
    let mut config = fs::read_to_string(&path).expect("read config.toml");
    config.push_str(text);
    fs::write(&path, config).expect("write config.toml");
}

#[test]
fn serve_refuses_to_start_when_the_identity_provider_cannot_be_discovered() {
    let ca = Ca::init(POLICY);
    // Nothing listens on this port.
    let port = free_port();
    append_config(
        &ca,
        &format!("\n[sso]\nissuer = \"http://127.0.0.1:{port}\"\nclient_id = \"moshca\"\n"),
    );
    let out = run(Command::new(server_bin())
        .args(["serve", "--data-dir"])
        .arg(ca.data_dir())
        .args(["--listen", "127.0.0.1:0"])
        .env("PATH", child_path()));
    assert!(
        !out.ok(),
        "serve started without its identity provider:\n{out}"
    );
    let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    assert!(
        out.stderr.contains(&url),
        "the error should name {url}:\n{out}"
    );
}

#[test]
fn operators_link_token_users_and_list_and_revoke_sessions() {
    let mut ca = Ca::init(POLICY);
    ca.add_user("alice", &["oncall"]);
    let users = ca.admin(&["user", "list", "--json"]);
    users.assert_ok();
    assert_eq!(users.json()[0]["source"], "token", "{users}");
    ca.admin(&["user", "link-sso", "alice"])
        .assert_ok()
        .assert_stderr_mentions(&["alice", "SSO"]);
    let users = ca.admin(&["user", "list", "--json"]);
    assert_eq!(users.json()[0]["source"], "token+sso", "{users}");
    let plain = ca.admin(&["user", "list"]);
    assert!(plain.stdout.trim_end().ends_with("token+sso"), "{plain}");
    let nobody = ca.admin(&["user", "link-sso", "nobody"]);
    assert!(!nobody.ok(), "{nobody}");
    nobody.assert_stderr_mentions(&["user list"]);
    let sessions = ca.admin(&["session", "list", "--json"]);
    sessions.assert_ok();
    assert_eq!(sessions.json(), serde_json::json!([]), "{sessions}");
    ca.admin(&["session", "revoke", "--user", "alice"])
        .assert_ok()
        .assert_stderr_mentions(&["0 session(s) of alice"]);
    let bad = ca.admin(&["session", "revoke", "ses_x"]);
    assert!(!bad.ok(), "{bad}");
    bad.assert_stderr_mentions(&["not a session id"]);
}
