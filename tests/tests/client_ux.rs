//! End-to-end tests of what a user of `moshca` sees day to day: shell completion, live
//! certificates and `logout`, `login --keep-pending` and `--resume`, Ctrl-C, a mistyped
//! role, errors as JSON, validation exit codes, the break-glass notice, a quiet
//! `host sync` with its node_exporter textfile, and `deploy/host-setup.sh --root`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moshca_e2e::{Background, Ca, SshAgent, client_bin, keygen, program, run, signal};
use serde_json::Value;

/// `db-oncall` needs bob's approval; `glass` allows break-glass.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"

[[role]]
name = "db-oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"

[[role]]
name = "glass"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
default_ttl = "10m"
max_ttl = "1h"
break_glass = { enabled = true, max_ttl = "15m" }
"#;

const USERS: &[(&str, &[&str])] = &[("alice", &["oncall"]), ("bob", &["sre-leads"])];

const REASON: &str = "INC-4312 replica lag";
const WAIT: Duration = Duration::from_secs(30);

fn ca() -> Option<Ca> {
    Ca::serving(POLICY, USERS)
}

/// The request id in `moshca: request ID is waiting for approval by ...`.
fn waiting_request_id(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("moshca: request ")?;
    let (id, tail) = rest.split_once(' ')?;
    tail.starts_with("is waiting").then(|| id.to_owned())
}

/// `moshca` with no server, token or agent configured and an empty HOME.
fn bare_client(home: &Path) -> Command {
    let mut cmd = Command::new(client_bin());
    for var in [
        "MOSHCA_SERVER",
        "MOSHCA_CA_CERT",
        "MOSHCA_TOKEN",
        "MOSHCA_TOKEN_FILE",
        "SSH_AUTH_SOCK",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    cmd
}

fn approve(ca: &Ca, id: &str, comment: &str) {
    run(ca.client("bob").args(["approve", id, "--comment", comment])).assert_ok();
}

fn state_of(ca: &Ca, id: &str) -> String {
    let out = run(ca.client("alice").args(["--json", "status", id]));
    out.assert_ok();
    out.json()["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn completion_for_bash_zsh_and_fish_names_the_subcommands() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(bare_client(home.path()).args(["completion", shell]));
        out.assert_ok();
        for word in [
            "login",
            "logout",
            "status",
            "host",
            "completion",
            "--keep-pending",
        ] {
            assert!(
                out.stdout.contains(word),
                "{shell} completion lacks {word}:\n{out}"
            );
        }
    }
    let bash = run(bare_client(home.path()).args(["completion", "bash"]));
    assert!(bash.stdout.contains("complete -F _moshca"), "{bash}");
    let bad = run(bare_client(home.path()).args(["completion", "tcsh"]));
    bad.assert_code(2);
}

#[test]
fn help_names_every_exit_code_and_the_json_error_shape() {
    let home = tempfile::tempdir().unwrap();
    let out = run(bare_client(home.path()).arg("--help"));
    out.assert_ok();
    let help = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in [
        "Exit codes: 0 ok, 1 error, 2 usage or invalid request (e.g. a ttl out of range), 3 \
         denied, 4 expired or timed out, 130 interrupted (Ctrl-C).",
        "errors are one JSON object on stdout: {\"error\", \"hint\", \"exit\"}",
        "logout Remove moshca's certificates (and their keys) from ssh-agent; other keys stay",
    ] {
        assert!(help.contains(line), "help lacks {line:?}:\n{help}");
    }
    let login = run(bare_client(home.path()).args(["login", "--help"]));
    assert!(login.stdout.contains("--resume <ID>") && login.stdout.contains("--keep-pending"));
}

#[test]
fn errors_under_json_are_one_object_on_stdout_with_the_exit_code() {
    let home = tempfile::tempdir().unwrap();
    let out = run(bare_client(home.path()).args(["--json", "whoami"]));
    out.assert_code(1);
    let error = out.json();
    assert_eq!(error["error"], "no CA server configured", "{out}");
    assert!(
        error["hint"].as_str().unwrap().contains("MOSHCA_SERVER"),
        "{out}"
    );
    assert_eq!(error["exit"], 1);
    assert!(out.stderr.is_empty(), "nothing on stderr:\n{out}");

    // A command line clap refuses: exit 2, same shape.
    let usage = run(bare_client(home.path()).args(["--json", "login", "--reason", "x"]));
    usage.assert_code(2);
    let error = usage.json();
    assert_eq!(error["exit"], 2, "{usage}");
    assert_eq!(
        error["error"], "the following required arguments were not provided: --role <ROLE>",
        "{usage}"
    );
    assert!(
        error["hint"]
            .as_str()
            .unwrap()
            .starts_with("Usage: moshca login"),
        "{usage}"
    );

    // Without --json, the same error is text on stderr.
    let text = run(bare_client(home.path()).arg("whoami"));
    text.assert_code(1);
    assert!(text.stdout.is_empty());
    assert!(
        text.stderr
            .starts_with("moshca: error: no CA server configured"),
        "{text}"
    );
}

#[test]
fn a_ttl_below_the_minimum_and_above_the_maximum_exit_with_the_same_code() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "id_ttl");
    let pubkey = format!("{}.pub", key.display());
    let mut codes = Vec::new();
    for ttl in ["30s", "9h"] {
        let out = run(ca.client("alice").args([
            "request",
            "--role",
            "db-oncall",
            "--reason",
            REASON,
            "--ttl",
            ttl,
            "--public-key",
            &pubkey,
        ]));
        assert!(out.stderr.contains("ttl"), "{out}");
        codes.push(out.code);
    }
    assert_eq!(codes, [Some(2), Some(2)]);
}

#[test]
fn a_mistyped_role_gets_a_did_you_mean() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let out = run(ca
        .client_with_agent("alice", &agent)
        .args(["login", "--role", "db-oncal", "--reason", REASON]));
    out.assert_code(3);
    assert!(
        out.stderr
            .contains("moshca: hint: did you mean --role db-oncall?"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("roles you may request: db-oncall, glass"),
        "{out}"
    );

    let json = run(ca
        .client_with_agent("alice", &agent)
        .args(["--json", "login", "--role", "db-oncal", "--reason", REASON]));
    json.assert_code(3);
    assert!(
        json.json()["hint"]
            .as_str()
            .unwrap()
            .starts_with("did you mean --role db-oncall?")
    );
}

#[test]
fn break_glass_without_a_webhook_warns_that_nobody_was_notified() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let out = run(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "glass",
        "--reason",
        REASON,
        "--break-glass",
    ]));
    out.assert_ok();
    assert!(out.stderr.contains("no webhook was notified"), "{out}");
    assert!(
        out.stderr.contains("moshca: warning: nobody was notified"),
        "{out}"
    );
    assert!(!out.stderr.contains("everyone"), "{out}");
}

#[test]
fn break_glass_names_the_webhooks_subscribed_to_it() {
    if !moshca_e2e::prerequisites() {
        return;
    }
    let mut ca = Ca::init(POLICY);
    // Nothing listens there: deliveries fail and are retried, which the login never waits for.
    let port = moshca_e2e::free_port();
    let config = ca.data_dir().join("config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[notify.webhook]]\nname = \"oncall-slack\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         events = [\"request.break_glass\"]\n\n[[notify.webhook]]\nname = \"approvers\"\n\
         url = \"http://127.0.0.1:{port}/other\"\nevents = [\"request.created\"]\n"
    ));
    fs::write(&config, text).unwrap();
    for (name, groups) in USERS {
        ca.add_user(name, groups);
    }
    ca.start();
    let agent = SshAgent::start();
    let out = run(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "glass",
        "--reason",
        REASON,
        "--break-glass",
    ]));
    out.assert_ok();
    assert!(
        out.stderr
            .contains("BREAK-GLASS access granted; notified: oncall-slack; request"),
        "{out}"
    );
    assert!(!out.stderr.contains("nobody"), "{out}");
}

#[test]
fn status_lists_live_certificates_and_logout_removes_only_moshca_ones() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    // A key of the user's own, which logout must leave alone.
    let own = keygen(ca.scratch(), "id_own");
    run(Command::new(program("ssh-add"))
        .arg(&own)
        .env("SSH_AUTH_SOCK", agent.socket()))
    .assert_ok();

    let mut login = Background::spawn(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "db-oncall",
        "--reason",
        REASON,
    ]));
    let id = login.wait_for_stderr(WAIT, waiting_request_id);
    approve(&ca, &id, "go ahead, INC-4312");
    let done = login.finish(WAIT);
    done.assert_ok();
    assert!(
        done.stderr
            .contains("moshca: approved by bob: go ahead, INC-4312"),
        "the approver's comment reaches the requester:\n{done}"
    );
    assert_eq!(agent.list().len(), 2);

    let status = run(ca.client_with_agent("alice", &agent).arg("status"));
    status.assert_ok();
    let row = status
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{status}"));
    assert!(
        row.contains("db-oncall") && row.trim_end().ends_with("yes"),
        "{status}"
    );

    let json = run(ca
        .client_with_agent("alice", &agent)
        .args(["--json", "status"]));
    let list = json.json();
    let live = list.as_array().expect("a JSON array");
    assert_eq!(live.len(), 1, "{json}");
    assert_eq!(live[0]["id"], id.as_str());
    assert_eq!(live[0]["in_agent"], true);
    let created = live[0]["created_at"].as_i64().unwrap();
    let created_text = live[0]["created_at_rfc3339"].as_str().unwrap();
    assert_eq!(
        moshca_e2e::parse_utc(created_text.trim_end_matches('Z')).unwrap(),
        created,
        "{json}"
    );
    assert!(
        live[0]["valid_before_rfc3339"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let logout = run(ca.client_with_agent("alice", &agent).arg("logout"));
    logout.assert_ok();
    assert!(logout.stdout.starts_with("removed moshca:"), "{logout}");
    let left = agent.public_keys();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with("ssh-ed25519 ") && !left[0].contains("cert"),
        "{left:?}"
    );

    let after = run(ca
        .client_with_agent("alice", &agent)
        .args(["--json", "status"]));
    assert_eq!(after.json()[0]["in_agent"], false, "{after}");
    let again = run(ca
        .client_with_agent("alice", &agent)
        .args(["--json", "logout"]));
    again.assert_ok();
    assert_eq!(again.json(), serde_json::json!({"removed": []}));
}

#[test]
fn keep_pending_leaves_the_request_and_resume_loads_the_certificate() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let runtime = tempfile::tempdir().unwrap();
    let out = run(ca
        .client_with_agent("alice", &agent)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args([
            "login",
            "--role",
            "db-oncall",
            "--reason",
            REASON,
            "--timeout",
            "2s",
            "--keep-pending",
        ]));
    out.assert_code(4);
    let id = out
        .stderr
        .lines()
        .find_map(waiting_request_id)
        .unwrap_or_else(|| panic!("no request id:\n{out}"));
    assert!(out.stderr.contains("it stays pending until"), "{out}");
    assert!(
        out.stderr.contains(&format!("moshca login --resume {id}")),
        "{out}"
    );
    assert_eq!(state_of(&ca, &id), "pending");
    let kept: PathBuf = runtime.path().join(format!("moshca/pending/{id}.key"));
    assert!(kept.exists(), "the key waits in {}", kept.display());
    assert!(agent.list().is_empty());

    approve(&ca, &id, "ok");
    let resumed = run(ca
        .client_with_agent("alice", &agent)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["login", "--resume", &id]));
    resumed.assert_ok();
    assert!(
        resumed
            .stdout
            .contains(&format!("certificate for request {id} added")),
        "{resumed}"
    );
    assert_eq!(agent.list().len(), 1);
    assert!(!kept.exists(), "the kept key is gone once loaded");

    // Nothing is left to resume, and the hint says why.
    let twice = run(ca
        .client_with_agent("alice", &agent)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .args(["login", "--resume", &id]));
    twice.assert_code(1);
    assert!(twice.stderr.contains("no key kept for request"), "{twice}");
}

#[test]
fn ctrl_c_exits_130_and_cancels_the_request() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();
    let mut login = Background::spawn(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "db-oncall",
        "--reason",
        REASON,
    ]));
    let id = login.wait_for_stderr(WAIT, waiting_request_id);
    signal(login.pid(), "INT");
    let out = login.finish(WAIT);
    out.assert_code(130);
    assert!(out.stderr.contains("the request was cancelled"), "{out}");
    assert_eq!(state_of(&ca, &id), "cancelled");

    // With --keep-pending, Ctrl-C leaves the request pending and keeps the key.
    let runtime = tempfile::tempdir().unwrap();
    let mut kept = Background::spawn(
        ca.client_with_agent("alice", &agent)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .args([
                "login",
                "--role",
                "db-oncall",
                "--reason",
                REASON,
                "--keep-pending",
            ]),
    );
    let id = kept.wait_for_stderr(WAIT, waiting_request_id);
    signal(kept.pid(), "INT");
    let out = kept.finish(WAIT);
    out.assert_code(130);
    assert!(
        out.stderr.contains(&format!("moshca login --resume {id}")),
        "{out}"
    );
    assert_eq!(state_of(&ca, &id), "pending");
    assert!(
        runtime
            .path()
            .join(format!("moshca/pending/{id}.key"))
            .exists()
    );
}

#[test]
fn host_sync_is_quiet_when_nothing_changed_and_writes_the_textfile() {
    let Some(ca) = ca() else { return };
    let dir = ca.scratch().join("etc-ssh");
    fs::create_dir_all(&dir).unwrap();
    let prom = ca.scratch().join("textfile/moshca.prom");
    fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let sync = || {
        run(moshca_e2e::moshca(&ca, None, None)
            .args(["host", "sync", "--dir"])
            .arg(&dir)
            .arg("--textfile")
            .arg(&prom))
    };
    let first = sync();
    first.assert_ok();
    assert_eq!(first.stdout.lines().count(), 2, "{first}");
    let metric = |text: &str, name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let text = fs::read_to_string(&prom).unwrap();
    let first_at = metric(&text, "moshca_host_sync_last_success_timestamp_seconds");
    assert!(first_at > 1_700_000_000);
    assert!(metric(&text, "moshca_host_sync_krl_version") >= 0);

    std::thread::sleep(Duration::from_millis(1100));
    let second = sync();
    second.assert_ok();
    assert_eq!(
        second.stdout, "",
        "nothing changed, nothing printed:\n{second}"
    );
    assert_eq!(second.stderr, "", "{second}");
    let later = metric(
        &fs::read_to_string(&prom).unwrap(),
        "moshca_host_sync_last_success_timestamp_seconds",
    );
    assert!(later > first_at, "the timestamp moves on every success");

    let json = run(moshca_e2e::moshca(&ca, None, None)
        .args(["--json", "host", "sync", "--dir"])
        .arg(&dir));
    let report: Value = json.json();
    assert_eq!(report["krl"]["changed"], false, "{json}");
    assert_eq!(report["ca_keys"]["changed"], false, "{json}");
}

#[test]
fn host_setup_with_root_writes_the_real_paths_into_its_files() {
    let Some(ca) = ca() else { return };
    let root = ca.scratch().join("image");
    fs::create_dir_all(&root).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/host-setup.sh");
    let out = run(Command::new("bash")
        .arg(&script)
        .args(["--server", ca.url(), "--ca-cert"])
        .arg(ca.tls_cert())
        .arg("--binary")
        .arg(client_bin())
        .args(["--principal", "mcae2e=mcae2e"])
        .args([
            "--textfile",
            "/var/lib/node_exporter/textfile_collector/moshca.prom",
        ])
        .arg("--root")
        .arg(&root));
    out.assert_ok();
    let root_text = root.to_str().unwrap();
    let files = [
        "etc/moshca/host.env",
        "etc/ssh/sshd_config.d/moshca.conf",
        "etc/systemd/system/moshca-host-sync.service",
        "etc/systemd/system/moshca-host-sync.service.d/textfile.conf",
    ];
    for file in files {
        let text = fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            !text.contains(root_text),
            "{file} names the build root:\n{text}"
        );
    }
    let env = fs::read_to_string(root.join("etc/moshca/host.env")).unwrap();
    assert!(
        env.contains("\nMOSHCA_CA_CERT=/etc/moshca/ca-tls.pem\n"),
        "{env}"
    );
    let dropin = fs::read_to_string(root.join("etc/ssh/sshd_config.d/moshca.conf")).unwrap();
    assert!(dropin.contains("/etc/ssh/moshca_ca.pub") && dropin.contains("/etc/ssh/moshca.krl"));
    let textfile = fs::read_to_string(
        root.join("etc/systemd/system/moshca-host-sync.service.d/textfile.conf"),
    )
    .unwrap();
    assert!(textfile.contains(
        "--dir /etc/ssh --textfile /var/lib/node_exporter/textfile_collector/moshca.prom"
    ));
    // The files sshd reads were fetched into the tree all the same.
    for file in [
        "etc/ssh/moshca_ca.pub",
        "etc/ssh/moshca.krl",
        "usr/local/bin/moshca",
    ] {
        assert!(root.join(file).exists(), "{file}");
    }
}
