//! End-to-end tests of bearer tokens and secret files with the real binaries: token ids,
//! listing, revoking one token, expiry warnings, and the owner-only rule for the data
//! directory, the server's secret files and the client's token file. They need only the
//! two binaries, not OpenSSH or root.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use moshca_e2e::{Ca, moshca, run, server_bin};

const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"
"#;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn finding_8_user_token_adds_a_token_revoke_token_stops_one_at_once() {
    let mut ca = Ca::init(POLICY);
    let first = ca.add_user("alice", &["oncall"]);
    ca.start();
    // `user token` adds a token; the first keeps working and the output says so.
    let second_run = ca.admin(&["user", "token", "alice", "--expires", "30d"]);
    second_run.assert_ok();
    second_run.assert_stderr_mentions(&["other tokens keep working"]);
    let second = second_run.stdout.trim().to_owned();
    for token in [&first, &second] {
        let who = run(moshca(&ca, Some(token), None).arg("whoami"));
        who.assert_ok();
    }
    // The listing: id, created, expires, last used; never the tokens.
    let listed = ca.admin(&["user", "tokens", "alice", "--json"]);
    listed.assert_ok();
    assert!(!listed.stdout.contains(&first[4..]) && !listed.stdout.contains(&second[4..]));
    let tokens = listed.json();
    let tokens = tokens.as_array().expect("a JSON array");
    assert_eq!(tokens.len(), 2, "{listed}");
    for t in tokens {
        for field in ["id", "created_at", "expires_at", "last_used_at", "state"] {
            assert!(t.get(field).is_some(), "{field} missing: {t}");
        }
        assert!(t["last_used_at"].is_u64(), "whoami used it: {t}");
    }
    let life = |t: &serde_json::Value| {
        t["expires_at"].as_u64().expect("expires_at") - t["created_at"].as_u64().expect("created")
    };
    let mut lives: Vec<u64> = tokens.iter().map(life).collect();
    lives.sort_unstable();
    assert_eq!(
        lives,
        [30 * 86_400, 90 * 86_400],
        "--expires 30d, the default 90d"
    );
    // The first token is the one with the default lifetime.
    let first_entry = tokens
        .iter()
        .find(|t| life(t) == 90 * 86_400)
        .expect("first token");
    let human = ca.admin(&["user", "tokens", "alice"]);
    human.assert_ok();
    assert!(
        human.stdout.contains("LAST USED") && human.stdout.contains("tok_"),
        "{human}"
    );

    // Revoke the first by id: refused on its next call, with no restart.
    let first_id = first_entry["id"].as_str().expect("id").to_owned();
    ca.admin(&["user", "revoke-token", &first_id]).assert_ok();
    let refused = run(moshca(&ca, Some(&first), None).arg("whoami"));
    refused.assert_refused();
    refused.assert_stderr_mentions(&["revoked"]);
    run(moshca(&ca, Some(&second), None).arg("whoami")).assert_ok();
    let again = ca.admin(&["user", "revoke-token", &first_id]);
    again.assert_refused();
    let audit = ca.admin(&["audit", "export"]);
    assert!(audit.stdout.contains("user.token_revoked"), "{audit}");
}

#[test]
fn finding_8_the_client_warns_when_its_token_expires_within_a_week() {
    let mut ca = Ca::init(POLICY);
    let long = ca.add_user("bob", &["oncall"]);
    ca.start();
    let quiet = run(moshca(&ca, Some(&long), None).arg("whoami"));
    quiet.assert_ok();
    assert!(!quiet.stderr.contains("expires"), "{quiet}");
    let soon = ca.admin(&["user", "token", "bob", "--expires", "3d"]);
    soon.assert_ok();
    let warned = run(moshca(&ca, Some(soon.stdout.trim()), None).arg("whoami"));
    warned.assert_ok();
    assert_eq!(
        warned.stderr.matches("your token expires in ").count(),
        1,
        "{warned}"
    );
}

#[test]
fn finding_9_init_into_a_0755_directory_and_serve_refuses_exposed_files() {
    let root = tempfile::tempdir().expect("temp dir");
    let d = root.path().join("ca");
    // `mkdir -m 755 D; moshca-server init --data-dir D`
    fs::create_dir(&d).expect("mkdir");
    chmod(&d, 0o755);
    run(Command::new(server_bin())
        .args(["init", "--data-dir"])
        .arg(&d))
    .assert_ok();
    assert_eq!(mode(&d), 0o700);
    for f in ["moshca.db", "ca_key", "tls/key.pem"] {
        assert_eq!(mode(&d.join(f)), 0o600, "{f}");
    }
    let serve = |extra: &[&str]| {
        run(Command::new(server_bin())
            .args(["serve", "--listen", "127.0.0.1:1", "--data-dir"])
            .arg(&d)
            .args(extra))
    };
    for (file, mode_bad, fix) in [
        (d.join("ca_key"), 0o644, "600"),
        (d.join("tls/key.pem"), 0o640, "600"),
        (d.join("moshca.db"), 0o644, "600"),
        (d.clone(), 0o755, "700"),
    ] {
        chmod(&file, mode_bad);
        let refused = serve(&[]);
        refused.assert_refused();
        let hint = format!("run `chmod {fix} {}`", file.display());
        assert!(refused.stderr.contains(&hint), "{hint}:\n{refused}");
        chmod(&file, if fix == "700" { 0o700 } else { 0o600 });
    }
    let pass = root.path().join("passphrase");
    fs::write(&pass, "hunter2-passphrase\n").expect("write");
    chmod(&pass, 0o644);
    let refused = serve(&["--passphrase-file", pass.to_str().expect("utf-8")]);
    refused.assert_refused();
    assert!(
        refused
            .stderr
            .contains(&format!("run `chmod 600 {}`", pass.display())),
        "{refused}"
    );
    assert!(!refused.stderr.contains("hunter2"), "{refused}");
}

#[test]
fn finding_9_the_client_refuses_a_token_file_others_can_read() {
    let mut ca = Ca::init(POLICY);
    let token = ca.add_user("carol", &["oncall"]);
    ca.start();
    let file = ca.scratch().join("token");
    fs::write(&file, format!("{token}\n")).expect("write token file");
    chmod(&file, 0o644);
    let refused = run(moshca(&ca, None, None)
        .env("MOSHCA_TOKEN_FILE", &file)
        .arg("whoami"));
    refused.assert_refused();
    assert!(
        refused
            .stderr
            .contains(&format!("run `chmod 600 {}`", file.display())),
        "{refused}"
    );
    assert!(!refused.stderr.contains(&token[4..]), "{refused}");
    chmod(&file, 0o600);
    run(moshca(&ca, None, None)
        .env("MOSHCA_TOKEN_FILE", &file)
        .arg("whoami"))
    .assert_ok();
}
