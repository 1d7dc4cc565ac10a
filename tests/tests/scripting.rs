//! What scripts around moshca rely on: 64-bit numbers in `--json` output survive `jq`.
//! (That the repository's own scripts find the binaries wherever cargo put them is checked
//! by `tests/scripts/built_bins.sh`, run by `scripts/test.sh`: cargo cannot be run from
//! inside `cargo test`, which holds the target directory's lock.)
//!
//! Needs `jq` (installed by `scripts/test.sh`) and `ssh-keygen`; no `sshd`.

use std::path::Path;
use std::process::{Command, Stdio};

use moshca_e2e::{Ca, Run, keygen, program, run};

const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
revokers = ["group:security"]

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
reason_min_len = 10
logins = ["mcae2e"]
max_ttl = "1h"
"#;

/// alice requests, bob approves, sam revokes.
const USERS: &[(&str, &[&str])] = &[
    ("alice", &["oncall"]),
    ("bob", &["sre-leads"]),
    ("sam", &["security"]),
];

/// 2^53: above it a double cannot hold every integer.
const DOUBLE_EXACT: u64 = 1 << 53;

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// `jq -r FILTER` over `json`: what a shell script would get.
fn jq(filter: &str, json: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(program("jq"))
        .args(["-r", filter])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jq runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(json.as_bytes())
        .expect("jq reads");
    let out = child.wait_with_output().expect("jq ends");
    assert!(
        out.status.success(),
        "jq {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// alice's request for a new key, approved by bob: its id and serial (as the CA stored it).
fn issued(ca: &Ca, name: &str) -> String {
    let key = keygen(ca.scratch(), name);
    let out = client(
        ca,
        "alice",
        &[
            "request",
            "--role",
            "oncall",
            "--reason",
            "INC-4312 replica lag",
            "--ttl",
            "30m",
            "--public-key",
            &format!("{}.pub", utf8(&key)),
        ],
    );
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    client(ca, "bob", &["approve", &id]).assert_ok();
    id
}

#[test]
fn finding_13_a_serial_above_2_pow_53_round_trips_through_jq() {
    program("ssh-keygen");
    let ca = Ca::start_with(POLICY, USERS);
    // Serials are random u64s: all but one in 2,048 are above 2^53. Take one that is.
    let (id, serial) = (0..8)
        .map(|i| {
            let id = issued(&ca, &format!("k{i}"));
            let status = client(&ca, "alice", &["status", &id, "--json"]);
            status.assert_ok();
            let serial = jq(".serial", &status.stdout);
            (id, serial)
        })
        .find(|(_, serial)| serial.parse::<u64>().is_ok_and(|s| s > DOUBLE_EXACT))
        .expect("a serial above 2^53 within 8 certificates");

    // What jq printed names the certificate exactly: the certificate says so, and revoking
    // by it works (a rounded serial would name no certificate).
    let cert = ca.scratch().join("cert.pub");
    client(&ca, "alice", &["fetch", &id, "--out", utf8(&cert)]).assert_ok();
    let info = moshca_e2e::CertInfo::read(&cert);
    assert_eq!(info.serial.to_string(), serial, "jq printed another serial");
    let fetched = client(&ca, "alice", &["status", &id, "--json"]);
    assert_eq!(
        jq(".certificate.serial // .serial", &fetched.stdout),
        serial
    );

    let revoked = client(
        &ca,
        "sam",
        &[
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "INC-4400 laptop stolen",
            "--json",
        ],
    );
    revoked.assert_ok();
    assert_eq!(jq(".serials[0]", &revoked.stdout), serial);
    let version = jq(".krl_version", &revoked.stdout);
    assert!(version.parse::<u64>().is_ok_and(|v| v > 0), "{version}");

    // The audit trail's sequence numbers are strings too, and name the same events.
    let audit = client(&ca, "sam", &["audit", "--json"]);
    if audit.ok() {
        let seqs = jq("[.[].seq | type] | unique | join(\",\")", &audit.stdout);
        assert_eq!(seqs, "string", "{}", audit.stdout);
    }
}
