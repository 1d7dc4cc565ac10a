//! End-to-end tests of host certificates: real `moshca-server`, real `moshca`, a real
//! `sshd` presenting `HostKey` + `HostCertificate`, and a real `ssh` with
//! `StrictHostKeyChecking=yes` and a known_hosts file holding only the `@cert-authority`
//! line `moshca known-hosts` writes. Nothing is ever accepted on first use.
//!
//! Each test has its own CA and sshd, so they run in parallel. The expiry test waits
//! about 65 s for a one-minute host certificate to expire.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moshca_e2e::{
    Ca, CertInfo, LOGIN, Run, Sshd, keygen, make_host_key, moshca, program, run, unix_now, wide,
};

/// One auto-approved role, so a user certificate is one call away: these tests are about
/// how the client trusts the host, not about approvals.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"

[[role]]
name = "ops"
approval = "auto"
requesters = ["group:ops"]
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"
"#;

const DOMAIN: &str = "*.example.com";

/// A CA serving, a user certificate for [`LOGIN`], and the client's known_hosts file with
/// only the `@cert-authority` line.
struct Fleet {
    ca: Ca,
    user_key: PathBuf,
    user_cert: PathBuf,
    known_hosts: PathBuf,
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn fleet() -> Option<Fleet> {
    let ca = Ca::serving(POLICY, &[("alice", &["ops"])])?;
    let user_key = keygen(ca.scratch(), "alice");
    let out = run(ca
        .client("alice")
        .args(["request", "--role", "ops", "--reason", "INC-1 host check"])
        .args(["--principal", LOGIN, "--ttl", "30m", "--public-key"])
        .arg(public(&user_key)));
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    let user_cert = ca.scratch().join("alice-cert.pub");
    run(ca
        .client("alice")
        .args(["fetch", &id, "--out", utf8(&user_cert)]))
    .assert_ok();
    let known_hosts = ca.scratch().join("known_hosts");
    // Needs no token: clients anywhere can fetch the host CA keys.
    let out = run(moshca(&ca, None, None).args([
        "known-hosts",
        "--domain",
        DOMAIN,
        "--out",
        utf8(&known_hosts),
    ]));
    out.assert_ok();
    Some(Fleet {
        ca,
        user_key,
        user_cert,
        known_hosts,
    })
}

fn public(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn cert_of(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push("-cert.pub");
    PathBuf::from(p)
}

/// A new host key (private, `.pub`) in the scratch directory.
fn host_key(ca: &Ca, name: &str) -> PathBuf {
    let key = ca.scratch().join(name);
    make_host_key(&key);
    key
}

/// `moshca-server host token create --principal P... EXTRA...`: the token.
fn join_token(ca: &Ca, principals: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["host", "token", "create"];
    for p in principals {
        args.extend(["--principal", p]);
    }
    args.extend(extra);
    let out = ca.admin(&args);
    out.assert_ok();
    let token = out.stdout.trim().to_owned();
    assert!(
        token.starts_with("mch_") && !token.contains(char::is_whitespace),
        "host token create should print one mch_ token alone:\n{out}"
    );
    token
}

/// `moshca host enroll --token T --key KEY.pub [ARGS...]` as the host runs it: no bearer
/// token, only the server and its TLS certificate.
fn enroll(ca: &Ca, token: &str, key: &Path, args: &[&str]) -> Run {
    run(moshca(ca, None, None)
        .args(["host", "enroll", "--token", token, "--key"])
        .arg(public(key))
        .args(args))
}

fn renew(ca: &Ca, key: &Path) -> Run {
    run(moshca(ca, None, None)
        .args(["host", "renew", "--key"])
        .arg(public(key)))
}

/// `ssh` to `sshd` as if its name were `name` (HostKeyAlias), trusting only the fleet's
/// known_hosts and, when given, refusing what `revoked` (a KRL) lists.
fn connect(fleet: &Fleet, sshd: &Sshd, name: &str, revoked: Option<&Path>) -> Run {
    let mut cmd = Command::new(program("ssh"));
    cmd.args(["-F", "/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            fleet.known_hosts.display()
        ))
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "UpdateHostKeys=no"])
        .arg("-o")
        .arg(format!("HostKeyAlias={name}"))
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"])
        .args(["-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&fleet.user_key)
        .arg("-o")
        .arg(format!("CertificateFile={}", fleet.user_cert.display()));
    if let Some(krl) = revoked {
        cmd.arg("-o")
            .arg(format!("RevokedHostKeys={}", krl.display()));
    }
    cmd.arg("-p")
        .arg(sshd.port().to_string())
        .arg(format!("{LOGIN}@127.0.0.1"))
        .arg("id -un")
        .env_remove("SSH_AUTH_SOCK");
    run(&mut cmd)
}

fn assert_logged_in(out: &Run) {
    out.assert_ok();
    assert_eq!(out.stdout.trim(), LOGIN, "{out}");
}

fn assert_host_refused(out: &Run) {
    assert_eq!(
        out.code,
        Some(255),
        "ssh should have refused the host:\n{out}"
    );
    assert!(
        out.stderr.contains("Host key verification failed"),
        "ssh should refuse the host key, not something else:\n{out}"
    );
}

/// `moshca krl --out FILE`: the KRL clients use as `RevokedHostKeys`.
fn fetch_krl(fleet: &Fleet) -> PathBuf {
    let krl = fleet.ca.scratch().join("hosts.krl");
    run(moshca(&fleet.ca, None, None).args(["krl", "--out", utf8(&krl)])).assert_ok();
    krl
}

#[test]
fn finding_15_ssh_trusts_an_enrolled_host_through_one_cert_authority_line() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;

    // The client's known_hosts: one line, the host CA key, not the user CA key.
    let lines = fs::read_to_string(&fleet.known_hosts).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let host_ca = fs::read_to_string(ca.data_dir().join("host_ca_key.pub")).unwrap();
    let host_ca_blob = host_ca.split_whitespace().nth(1).unwrap();
    let user_ca = fs::read_to_string(ca.ca_public_key()).unwrap();
    let user_ca_blob = user_ca.split_whitespace().nth(1).unwrap();
    assert!(
        lines[0].starts_with(&format!(
            "@cert-authority {DOMAIN} ssh-ed25519 {host_ca_blob}"
        )),
        "{lines:?}"
    );
    assert_ne!(host_ca_blob, user_ca_blob);
    assert_eq!(
        fs::metadata(&fleet.known_hosts)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );

    // What sshd trusts for users (host sync, TrustedUserCAKeys) never holds the host key.
    let etc = ca.scratch().join("etc-ssh");
    fs::create_dir(&etc).unwrap();
    run(moshca(ca, None, None).args(["host", "sync", "--dir", utf8(&etc)])).assert_ok();
    let trusted = fs::read_to_string(etc.join("moshca_ca.pub")).unwrap();
    assert!(trusted.contains(user_ca_blob), "{trusted}");
    assert!(!trusted.contains(host_ca_blob), "{trusted}");

    // A host that is not enrolled: its key is unknown, and nothing is asked.
    let key = host_key(ca, "db-1");
    let plain = Sshd::start_with_host_key(&ca.ca_public_key(), &key, None);
    assert_host_refused(&connect(&fleet, &plain, "db-1.example.com", None));
    drop(plain);

    // Enrol it, as a host operator runs it.
    let token = join_token(ca, &["db-1.example.com", "db-1"], &[]);
    let started = Instant::now();
    let out = enroll(ca, &token, &key, &[]);
    let enrol_time = started.elapsed();
    out.assert_ok();
    eprintln!("enrolment took {enrol_time:?}");
    let cert = cert_of(&key);
    assert_eq!(
        fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let info = CertInfo::read(&cert);
    assert!(info.kind.ends_with("host certificate"), "{info:?}");
    assert_eq!(info.principals, ["db-1.example.com", "db-1"]);
    assert_eq!(
        info.signing_ca,
        moshca_e2e::fingerprint(&ca.data_dir().join("host_ca_key.pub"))
    );
    let sshd = Sshd::start_with_host_key(&ca.ca_public_key(), &key, Some(&cert));
    let first = Instant::now();
    assert_logged_in(&connect(&fleet, &sshd, "db-1.example.com", None));
    eprintln!("first login took {:?}", first.elapsed());
    // A name the pattern covers but the certificate does not.
    assert_host_refused(&connect(&fleet, &sshd, "db-9.example.com", None));
    // A name the certificate carries but the known_hosts line does not vouch for.
    assert_host_refused(&connect(&fleet, &sshd, "db-1", None));
}

#[test]
fn finding_15_a_host_certificate_for_another_name_is_refused() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;
    let key = host_key(ca, "impostor");
    let token = join_token(ca, &["db-2.example.com"], &[]);
    enroll(ca, &token, &key, &[]).assert_ok();
    let sshd = Sshd::start_with_host_key(&ca.ca_public_key(), &key, Some(&cert_of(&key)));
    // The attack: a host certified as db-2 answers for db-1.
    assert_host_refused(&connect(&fleet, &sshd, "db-1.example.com", None));
    // It is trusted only as what it is.
    assert_logged_in(&connect(&fleet, &sshd, "db-2.example.com", None));
}

#[test]
fn finding_15_revoked_host_keys_and_certificates_are_refused_through_the_krl() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;
    let a = host_key(ca, "db-3");
    let b = host_key(ca, "db-4");
    enroll(ca, &join_token(ca, &["db-3.example.com"], &[]), &a, &[]).assert_ok();
    enroll(ca, &join_token(ca, &["db-4.example.com"], &[]), &b, &[]).assert_ok();
    let sshd_a = Sshd::start_with_host_key(&ca.ca_public_key(), &a, Some(&cert_of(&a)));
    let sshd_b = Sshd::start_with_host_key(&ca.ca_public_key(), &b, Some(&cert_of(&b)));
    let krl = fetch_krl(&fleet);
    assert_logged_in(&connect(&fleet, &sshd_a, "db-3.example.com", Some(&krl)));
    assert_logged_in(&connect(&fleet, &sshd_b, "db-4.example.com", Some(&krl)));

    // db-3's host key is stolen: revoke the key for good. db-4's certificate by serial.
    let out = ca.admin(&[
        "host",
        "revoke",
        "--public-key",
        utf8(&public(&a)),
        "--reason",
        "host key leaked",
    ]);
    out.assert_ok();
    let serial = CertInfo::read(&cert_of(&b)).serial.to_string();
    ca.admin(&[
        "host",
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "decommissioned",
    ])
    .assert_ok();
    let list = ca.admin(&["host", "list", "--json"]);
    list.assert_ok();
    let revoked: Vec<u64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["revoked"] == true)
        .filter_map(|c| wide(&c["serial"]))
        .collect();
    assert_eq!(revoked.len(), 2, "{list}");

    let krl = fetch_krl(&fleet);
    assert_host_refused(&connect(&fleet, &sshd_a, "db-3.example.com", Some(&krl)));
    assert_host_refused(&connect(&fleet, &sshd_b, "db-4.example.com", Some(&krl)));
    // The revoked ones cannot renew their way back.
    for key in [&a, &b] {
        let out = renew(ca, key);
        out.assert_code(3);
        out.assert_stderr_mentions(&["revoked"]);
    }
}

#[test]
fn finding_15_expired_host_certificates_and_join_tokens_are_refused() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;
    let key = host_key(ca, "db-5");
    let short = join_token(ca, &["db-5.example.com"], &["--cert-ttl", "1m"]);
    let unused = join_token(ca, &["db-6.example.com"], &["--ttl", "1m"]);
    enroll(ca, &short, &key, &[]).assert_ok();
    let info = CertInfo::read(&cert_of(&key));
    assert_eq!(info.valid_before - info.valid_after, 120, "{info:?}");
    let sshd = Sshd::start_with_host_key(&ca.ca_public_key(), &key, Some(&cert_of(&key)));
    assert_logged_in(&connect(&fleet, &sshd, "db-5.example.com", None));

    // Wait for the certificate (and the unused token) to expire.
    let wait = info.valid_before - unix_now() + 2;
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait.unsigned_abs()));
    }
    assert_host_refused(&connect(&fleet, &sshd, "db-5.example.com", None));
    let out = renew(ca, &key);
    assert!(!out.ok(), "{out}");
    out.assert_stderr_mentions(&["expired", "join token"]);
    let other = host_key(ca, "db-6");
    let out = enroll(ca, &unused, &other, &[]);
    out.assert_code(3);
    out.assert_stderr_mentions(&["expired"]);
    assert!(!cert_of(&other).exists());
}

#[test]
fn finding_15_join_tokens_work_once_and_only_for_the_names_they_carry() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;
    let key = host_key(ca, "db-7");
    let token = join_token(ca, &["db-7.example.com"], &[]);

    // The attack: the host asks for a name the token does not carry.
    let out = enroll(
        ca,
        &token,
        &key,
        &[
            "--principal",
            "db-7.example.com",
            "--principal",
            "ca.example.com",
        ],
    );
    out.assert_code(3);
    out.assert_stderr_mentions(&["names exactly db-7.example.com"]);
    assert!(!cert_of(&key).exists());

    // The token still works once, for exactly its names.
    enroll(ca, &token, &key, &[]).assert_ok();
    assert_eq!(
        CertInfo::read(&cert_of(&key)).principals,
        ["db-7.example.com"]
    );
    let other = host_key(ca, "db-8");
    let out = enroll(ca, &token, &other, &[]);
    out.assert_code(3);
    out.assert_stderr_mentions(&["already used"]);
    assert!(!cert_of(&other).exists());

    let list = ca.admin(&["host", "token", "list", "--json"]);
    list.assert_ok();
    assert_eq!(list.json()[0]["state"], "used", "{list}");
    assert!(
        !list.stdout.contains(&token),
        "the token itself is never listed"
    );
    // Every step is audited, never with the token.
    let audit = ca.admin(&["audit", "export"]);
    audit.assert_ok();
    for action in ["host.token_created", "host.enroll_refused", "host.enrolled"] {
        assert!(audit.stdout.contains(action), "{action} missing:\n{audit}");
    }
    assert!(!audit.stdout.contains(&token[4..]));
}

#[test]
fn finding_15_renewal_needs_the_private_key_the_ca_certified() {
    let Some(fleet) = fleet() else { return };
    let ca = &fleet.ca;
    let key = host_key(ca, "web-1");
    enroll(ca, &join_token(ca, &["web-1.example.com"], &[]), &key, &[]).assert_ok();
    let before = CertInfo::read(&cert_of(&key));

    // A key the CA never certified, with a host certificate from some other CA.
    let stranger = host_key(ca, "web-1-stranger");
    let other_ca = keygen(ca.scratch(), "other-ca");
    run(Command::new(program("ssh-keygen"))
        .args([
            "-q",
            "-s",
            utf8(&other_ca),
            "-h",
            "-I",
            "forged",
            "-V",
            "-5m:+1h",
        ])
        .args(["-n", "web-1.example.com", "-z", &before.serial.to_string()])
        .arg(public(&stranger)))
    .assert_ok();
    let out = renew(ca, &stranger);
    out.assert_code(3);
    out.assert_stderr_mentions(&["not a host certificate this CA issued"]);

    // The real certificate beside a key it was not made for: refused before any call.
    fs::copy(cert_of(&key), cert_of(&stranger)).unwrap();
    let out = renew(ca, &stranger);
    assert!(!out.ok(), "{out}");
    out.assert_stderr_mentions(&["not the certificate of the key"]);

    // A private key others can read is refused, as ssh refuses it.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = renew(ca, &key);
    assert!(!out.ok(), "{out}");
    out.assert_stderr_mentions(&["chmod 600"]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // What must hold: the certified key renews; same names, a new serial, and sshd
    // presenting the new certificate is trusted.
    let started = Instant::now();
    renew(ca, &key).assert_ok();
    eprintln!("renewal took {:?}", started.elapsed());
    let after = CertInfo::read(&cert_of(&key));
    assert_ne!(after.serial, before.serial);
    assert_eq!(after.principals, before.principals);
    assert_eq!(after.signing_ca, before.signing_ca);
    let sshd = Sshd::start_with_host_key(&ca.ca_public_key(), &key, Some(&cert_of(&key)));
    assert_logged_in(&connect(&fleet, &sshd, "web-1.example.com", None));
}
