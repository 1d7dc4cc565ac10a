//! End-to-end tests of KRL delivery with the real binaries: a KRL larger than one gRPC
//! answer reaches hosts whole through `moshca krl --out` and `moshca host sync`, and a
//! revoked key no KRL can list (left by an older version) neither breaks the server's KRL
//! nor `moshca-server krl`. Every KRL is checked with `ssh-keygen -Q`.
//!
//! The revocations are seeded straight into the CA's database, as years of revocations or
//! an older version would leave them; no `sshd` is needed, only `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use moshca_e2e::{Ca, LOGIN, Run, keygen, program, revoked_in, run};

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

const REASON: &str = "INC-4312 replica lag";

/// A serving CA; needs only `ssh-keygen` from OpenSSH.
fn ca() -> Ca {
    program("ssh-keygen");
    Ca::start_with(POLICY, USERS)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// alice asks for a certificate for a new key `name`, bob approves; the request id and the
/// certificate file.
fn certificate(ca: &Ca, name: &str) -> (String, PathBuf) {
    let key = keygen(ca.scratch(), name);
    let out = client(
        ca,
        "alice",
        &[
            "request",
            "--role",
            "oncall",
            "--reason",
            REASON,
            "--principal",
            LOGIN,
            "--ttl",
            "30m",
            "--public-key",
            &format!("{}.pub", utf8(&key)),
        ],
    );
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    client(ca, "bob", &["approve", &id]).assert_ok();
    let cert = ca.scratch().join(format!("{name}-cert.pub"));
    client(ca, "alice", &["fetch", &id, "--out", utf8(&cert)]).assert_ok();
    (id, cert)
}

fn database(ca: &Ca) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(ca.data_dir().join("moshca.db")).expect("open database");
    db.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    db
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Stores `keys` (fingerprint, OpenSSH text) as revoked and raises the KRL version, in one
/// transaction, as the server would.
fn plant_revoked_keys(ca: &Ca, keys: &[(String, String)]) {
    let mut db = database(ca);
    let tx = db.transaction().expect("transaction");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO revoked_keys (fingerprint, public_key, reason, revoked_by, revoked_at)
                 VALUES (?1, ?2, 'seeded', 'legacy', 0)",
            )
            .expect("prepare");
        for (fingerprint, text) in keys {
            insert.execute([fingerprint, text]).expect("insert");
        }
    }
    tx.execute("UPDATE krl_state SET version = version + 1", [])
        .expect("bump");
    tx.commit().expect("commit");
}

/// `n` distinct ed25519 public keys as (fingerprint-like id, OpenSSH text).
fn ed25519_keys(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let mut raw = [0x5au8; 32];
            raw[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let blob = [string(b"ssh-ed25519"), string(&raw)].concat();
            (
                format!("SHA256:seed{i}"),
                format!("ssh-ed25519 {}", b64(&blob)),
            )
        })
        .collect()
}

/// A well-formed `ssh-dss` public key, built by hand (OpenSSH 10 cannot make one).
fn dsa_key() -> String {
    let mpint = |len: usize| {
        let mut v = vec![0u8; len + 1];
        v[1] = 0xc5;
        v[len] = 0x0b;
        v
    };
    let mut blob = string(b"ssh-dss");
    for len in [128, 20, 128, 128] {
        blob.extend(string(&mpint(len)));
    }
    format!("ssh-dss {} dsa@host", b64(&blob))
}

/// `ssh-keygen -Q -l -f KRL` accepts the file.
fn ssh_keygen_lists(krl: &Path) -> String {
    let out = run(Command::new(program("ssh-keygen"))
        .args(["-Q", "-l", "-f"])
        .arg(krl));
    out.assert_ok();
    out.stdout
}

fn skipped_events(ca: &Ca) -> i64 {
    database(ca)
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE action = 'krl.entry_skipped'",
            [],
            |r| r.get(0),
        )
        .expect("count")
}

#[test]
fn finding_1_a_krl_over_4_mib_reaches_hosts_and_later_revocations_with_it() {
    let ca = ca();
    let (id, cert) = certificate(&ca, "alice-key");

    // What made the KRL unservable: more revocations than one 4 MiB answer holds. 90,000
    // revoked keys make a KRL of about 4.6 MB.
    plant_revoked_keys(&ca, &ed25519_keys(90_000));
    let krl = ca.scratch().join("moshca.krl");
    let started = Instant::now();
    client(&ca, "alice", &["krl", "--out", utf8(&krl)]).assert_ok();
    let delivery = started.elapsed();
    let size = std::fs::metadata(&krl).expect("KRL installed").len();
    assert!(size > 4 * 1024 * 1024, "{size} bytes");
    ssh_keygen_lists(&krl);
    assert!(!revoked_in(&krl, &cert));

    // A revoker's later revocation reaches `moshca krl --out` and `moshca host sync`.
    client(
        &ca,
        "sam",
        &["revoke", "--request", &id, "--reason", "INC-4400 laptop"],
    )
    .assert_ok();
    let started = Instant::now();
    client(&ca, "alice", &["krl", "--out", utf8(&krl)]).assert_ok();
    let after_revocation = started.elapsed();
    ssh_keygen_lists(&krl);
    assert!(revoked_in(&krl, &cert));
    let host = ca.scratch().join("etc-ssh");
    std::fs::create_dir(&host).expect("host dir");
    let mut sync = Command::new(moshca_e2e::client_bin());
    sync.env_remove("MOSHCA_TOKEN")
        .env("MOSHCA_SERVER", ca.url())
        .env("MOSHCA_CA_CERT", ca.tls_cert())
        .env("HOME", ca.client_home())
        .args(["host", "sync", "--dir", utf8(&host)]);
    run(&mut sync).assert_ok();
    assert!(revoked_in(&host.join("moshca.krl"), &cert));
    eprintln!(
        "moshca krl --out of a {size}-byte KRL: {delivery:?}; after a revocation (rebuild): {after_revocation:?}"
    );
}

#[test]
fn finding_2_a_revoked_dsa_key_cannot_break_the_krl() {
    let ca = ca();
    let (id, cert) = certificate(&ca, "alice-key");

    // The attack: `moshca revoke --public-key dsa.pub` by a revoker.
    let dsa = ca.scratch().join("dsa.pub");
    std::fs::write(&dsa, format!("{}\n", dsa_key())).expect("write");
    let out = client(
        &ca,
        "sam",
        &[
            "revoke",
            "--public-key",
            utf8(&dsa),
            "--reason",
            "INC-4401 old key",
        ],
    );
    out.assert_refused();
    out.assert_stderr_mentions(&["DSA"]);

    // One stored anyway, as an older version would have: every KRL still builds.
    plant_revoked_keys(&ca, &[("SHA256:legacy-dsa".to_owned(), dsa_key())]);
    client(
        &ca,
        "sam",
        &["revoke", "--request", &id, "--reason", "INC-4400 laptop"],
    )
    .assert_ok();
    let krl = ca.scratch().join("moshca.krl");
    client(&ca, "alice", &["krl", "--out", utf8(&krl)]).assert_ok();
    assert!(revoked_in(&krl, &cert));
    assert_eq!(skipped_events(&ca), 1, "the server audits the skip once");
    client(&ca, "alice", &["krl", "--out", utf8(&krl)]).assert_ok();
    assert_eq!(skipped_events(&ca), 1, "not again for the same entry");
    assert!(
        ca.log().contains("left out of the KRL"),
        "the server logs the skip:\n{}",
        ca.log()
    );

    // The operator's offline build skips it too, says so, and audits it.
    let offline = ca.scratch().join("offline.krl");
    let out = ca.admin(&["krl", "--out", utf8(&offline)]);
    out.assert_ok();
    out.assert_stderr_mentions(&["SHA256:legacy-dsa"])
        .assert_stderr_mentions(&["DSA"]);
    assert!(revoked_in(&offline, &cert));
    assert_eq!(skipped_events(&ca), 2);
}
