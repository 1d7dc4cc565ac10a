//! Crash safety: the real `moshca-server` is killed with SIGKILL while many clients ask it
//! for certificates at once, over and over, and every certificate a client was given must
//! be in the database afterwards, whole.
//!
//! The CA acknowledges an issuance only after the commit that holds the request row, the
//! certificate row and the `certificate.issued` audit event (DESIGN.md rule 7; the store
//! batches concurrent writers into one group commit). A server that answered before its
//! batch was durable, or that committed part of an issuance, loses or splits certificates
//! here. Each round checks the data directory exactly as the kill left it (read-only, with
//! the server down), then restarts the server on it, which must recover and keep a verifiable
//! audit chain.
//!
//! The subject keys are made in-process (ed25519-dalek), so the test needs only the two
//! binaries, not OpenSSH or root.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use moshca_e2e::{Background, Ca, client_bin, server_bin, signal, wide};
use rand::Rng as _;
use rand::rngs::OsRng;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use serde_json::Value;

/// One auto-approved role: every request is issued at once, in the request's own call.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"

[[role]]
name = "burst"
approval = "auto"
requesters = ["group:ci"]
logins = ["deploy"]
max_ttl = "10m"
"#;

const ROLE: &str = "burst";
/// Client loops running at once.
const CLIENTS: usize = 16;
/// Kill/check/restart cycles.
const ROUNDS: usize = 20;
/// How long the clients hammer the server before it is killed (picked per round).
const LOAD_MS: std::ops::Range<u64> = 700..1700;
/// One client command, even against a dead server, must end within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate a client was given (exit 0, state issued, certificate in the answer).
#[derive(Debug, Clone)]
struct Acked {
    round: usize,
    id: String,
    serial: u64,
    openssh: String,
}

/// What the client loops of one round saw.
#[derive(Debug, Default)]
struct Tally {
    attempts: usize,
    acked: Vec<Acked>,
    /// Failures that ended before the kill: the server refused or broke under load alone.
    failed_before_kill: Vec<String>,
    /// Failures that ended after the kill (expected: the server is gone).
    failed_after_kill: usize,
}

/// What `moshca` needs to reach the server; plain data, so client threads can share it.
#[derive(Debug, Clone)]
struct ClientEnv {
    url: String,
    tls_cert: PathBuf,
    token: String,
    home: PathBuf,
}

impl ClientEnv {
    fn command(&self) -> Command {
        let mut cmd = Command::new(client_bin());
        cmd.env_remove("MOSHCA_TOKEN_FILE")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("RUST_LOG")
            .env("MOSHCA_SERVER", &self.url)
            .env("MOSHCA_CA_CERT", &self.tls_cert)
            .env("MOSHCA_TOKEN", &self.token)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("HOME", &self.home);
        cmd
    }
}

/// A fresh ed25519 public key in OpenSSH format (`ssh-ed25519 BASE64 COMMENT`).
fn fresh_public_key(comment: &str) -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let mut blob = Vec::with_capacity(51);
    for part in [b"ssh-ed25519".as_slice(), key.verifying_key().as_bytes()] {
        blob.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!("ssh-ed25519 {} {comment}\n", STANDARD.encode(blob))
}

/// The serial inside an OpenSSH ed25519 certificate line (type, nonce, key, then serial).
fn certificate_serial(openssh: &str) -> Option<u64> {
    let blob = STANDARD.decode(openssh.split_whitespace().nth(1)?).ok()?;
    let mut at = 0usize;
    for _ in 0..3 {
        let len = u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4 + len;
    }
    Some(u64::from_be_bytes(blob.get(at..at + 8)?.try_into().ok()?))
}

/// One client loop: request, record, repeat until `stop`. Returns its tally.
fn client_loop(
    env: &ClientEnv,
    round: usize,
    n: usize,
    keys: &Path,
    stop: &AtomicBool,
    killed_at: &Mutex<Option<Instant>>,
) -> Tally {
    let mut tally = Tally::default();
    let key_file = keys.join(format!("r{round}-c{n}.pub"));
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        fs::write(
            &key_file,
            fresh_public_key(&format!("crash-r{round}-c{n}-{i}")),
        )
        .unwrap();
        let mut cmd = env.command();
        cmd.args(["request", "--role", ROLE, "--json", "--reason"])
            .arg(format!("crash round {round} client {n} try {i}"))
            .arg("--public-key")
            .arg(&key_file);
        tally.attempts += 1;
        let out = Background::spawn(&mut cmd).finish(CLIENT_TIMEOUT);
        let ended = Instant::now();
        if out.ok() {
            let v: Value = out.json();
            let cert = &v["certificate"];
            let (Some(id), Some(serial), Some(openssh)) = (
                v["id"].as_str(),
                wide(&cert["serial"]),
                cert["openssh"].as_str(),
            ) else {
                panic!("an auto role answered exit 0 without a certificate:\n{out}");
            };
            assert_eq!(v["state"], "issued", "exit 0 but not issued:\n{out}");
            assert_eq!(
                wide(&v["serial"]),
                Some(serial),
                "the request's serial is not its certificate's:\n{out}"
            );
            assert_eq!(
                certificate_serial(openssh),
                Some(serial),
                "the JSON serial is not the one inside the certificate:\n{out}"
            );
            tally.acked.push(Acked {
                round,
                id: id.to_owned(),
                serial,
                openssh: openssh.to_owned(),
            });
        } else {
            let before_kill = killed_at.lock().unwrap().is_none_or(|k| ended < k);
            if before_kill && !stop.load(Ordering::SeqCst) {
                tally.failed_before_kill.push(out.to_string());
            } else {
                tally.failed_after_kill += 1;
            }
        }
    }
    tally
}

/// Waits until `pid` is dead (a zombie of the test process, or gone).
fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `PID (comm) STATE ...`; comm may hold spaces, so read after the last ')'.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if stat.is_empty() || state.is_some_and(|s| s.starts_with(['Z', 'X'])) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "moshca-server {pid} still alive 10 s after SIGKILL"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Row counts the checks found, for the round's line.
#[derive(Debug)]
struct Found {
    requests: i64,
    certificates: i64,
    issued_events: i64,
    audit_events: i64,
}

/// Checks the database at `db` as it is now (read-only): integrity, every acknowledged
/// certificate whole, no half-issued request, unique serials.
fn check_database(db: &Path, acked: &[Acked]) -> Found {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();

    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(integrity, ["ok"], "PRAGMA integrity_check");

    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };

    // Every acknowledged certificate: its request issued, its certificate row with the same
    // serial and text, exactly one certificate.issued event naming the request and serial.
    let mut request_state = conn
        .prepare("SELECT state FROM requests WHERE id = ?1")
        .unwrap();
    let mut certificate = conn
        .prepare("SELECT request_id, openssh FROM certificates WHERE serial = ?1")
        .unwrap();
    let mut issued_events = conn
        .prepare(
            "SELECT details FROM audit WHERE action = 'certificate.issued' AND request_id = ?1",
        )
        .unwrap();
    for a in acked {
        let state: Option<String> = request_state
            .query_row([&a.id], |r| r.get(0))
            .optional()
            .unwrap();
        assert_eq!(
            state.as_deref(),
            Some("issued"),
            "request {} (acknowledged in round {}) is not stored as issued",
            a.id,
            a.round
        );
        // SQLite integers are signed; the store keeps the u64's bits.
        let row: Option<(String, String)> = certificate
            .query_row([a.serial as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .unwrap();
        let Some((request_id, openssh)) = row else {
            panic!(
                "certificate serial {} of request {} (acknowledged in round {}) is not stored",
                a.serial, a.id, a.round
            );
        };
        assert_eq!(
            request_id, a.id,
            "serial {} is stored for another request",
            a.serial
        );
        assert_eq!(
            openssh, a.openssh,
            "the stored certificate of request {} differs from the one the client got",
            a.id
        );
        let events: Vec<String> = issued_events
            .query_map([&a.id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            events.len(),
            1,
            "request {} (round {}) should have exactly one certificate.issued event",
            a.id,
            a.round
        );
        let details: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(
            details["serial"],
            a.serial.to_string(),
            "the certificate.issued event of request {} names another serial",
            a.id
        );
    }

    // No half state, acknowledged or not: issued <=> certificate row <=> issued event.
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM requests r WHERE r.state = 'issued'
             AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.request_id = r.id)"
        ),
        0,
        "issued requests without a certificate row"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM certificates c LEFT JOIN requests r ON r.id = c.request_id
             WHERE r.state IS NOT 'issued'"
        ),
        0,
        "certificate rows whose request is missing or not issued"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM certificates c WHERE (SELECT COUNT(*) FROM audit a
             WHERE a.action = 'certificate.issued' AND a.request_id = c.request_id) != 1"
        ),
        0,
        "certificate rows without exactly one certificate.issued event"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM audit a WHERE a.action = 'certificate.issued'
             AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.request_id = a.request_id)"
        ),
        0,
        "certificate.issued events without a certificate row"
    );
    // The role is auto-approved: a request is created and issued in one transaction, so a
    // stored request in any other state is half an issuance.
    let other: Vec<(String, String)> = conn
        .prepare("SELECT id, state FROM requests WHERE state != 'issued' LIMIT 10")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        other.is_empty(),
        "auto-approved requests stored in a state other than issued: {other:?}"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM requests r WHERE NOT EXISTS (SELECT 1 FROM audit a
             WHERE a.action = 'request.created' AND a.request_id = r.id)"
        ),
        0,
        "requests without their request.created event"
    );
    assert_eq!(
        count("SELECT COUNT(*) - COUNT(DISTINCT serial) FROM certificates"),
        0,
        "duplicate serials"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM certificates WHERE serial = 0"),
        0,
        "serial 0 is never issued"
    );

    Found {
        requests: count("SELECT COUNT(*) FROM requests"),
        certificates: count("SELECT COUNT(*) FROM certificates"),
        issued_events: count("SELECT COUNT(*) FROM audit WHERE action = 'certificate.issued'"),
        audit_events: count("SELECT COUNT(*) FROM audit"),
    }
}

/// `moshca-server audit verify` must pass.
fn verify_audit(ca: &Ca, when: &str) {
    let out = ca.admin(&["audit", "verify"]);
    assert!(out.ok(), "audit verify failed {when}:\n{out}");
}

#[test]
fn sigkill_under_concurrent_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let _ = (server_bin(), client_bin());
    let mut ca = Ca::init(POLICY);
    let token = ca.add_user("robot", &["ci"]);
    ca.start();
    let env = ClientEnv {
        url: ca.url().to_owned(),
        tls_cert: ca.tls_cert(),
        token,
        home: ca.client_home(),
    };
    let keys = ca.scratch().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let db = ca.data_dir().join("moshca.db");

    let mut all_acked: Vec<Acked> = Vec::new();
    let mut total_attempts = 0usize;
    for round in 1..=ROUNDS {
        let round_start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let killed_at = Arc::new(Mutex::new(None::<Instant>));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                let (env, keys, stop, killed_at) =
                    (env.clone(), keys.clone(), stop.clone(), killed_at.clone());
                thread::spawn(move || client_loop(&env, round, n, &keys, &stop, &killed_at))
            })
            .collect();

        let load_ms = OsRng.gen_range(LOAD_MS);
        thread::sleep(Duration::from_millis(load_ms));
        let pid = ca.pid();
        *killed_at.lock().unwrap() = Some(Instant::now());
        signal(pid, "KILL");
        stop.store(true, Ordering::SeqCst);
        wait_dead(pid);

        let mut tally = Tally::default();
        for client in clients {
            let t = client.join().expect("a client loop panicked");
            tally.attempts += t.attempts;
            tally.acked.extend(t.acked);
            tally.failed_before_kill.extend(t.failed_before_kill);
            tally.failed_after_kill += t.failed_after_kill;
        }
        assert!(
            tally.failed_before_kill.is_empty(),
            "round {round}: {} requests failed before the server was killed; the first:\n{}",
            tally.failed_before_kill.len(),
            tally.failed_before_kill[0]
        );
        total_attempts += tally.attempts;
        all_acked.extend(tally.acked.iter().cloned());

        // The data directory exactly as the kill left it: every certificate acknowledged so
        // far (this round and all earlier ones) must be there.
        let found = check_database(&db, &all_acked);
        let serials: HashSet<u64> = all_acked.iter().map(|a| a.serial).collect();
        assert_eq!(
            serials.len(),
            all_acked.len(),
            "two acknowledged certificates share a serial"
        );
        assert!(
            found.certificates >= i64::try_from(all_acked.len()).unwrap(),
            "fewer certificate rows than acknowledged certificates"
        );

        // Restart on the same data directory: recovery, then an intact audit chain.
        ca.restart();
        assert_eq!(ca.url(), env.url, "the restarted server moved");
        verify_audit(&ca, &format!("after the restart of round {round}"));

        println!(
            "round {round:2}: load {:4} ms, {:3} attempts, {:3} acknowledged, {:3} failed after kill; \
             db: {} requests, {} certificates, {} certificate.issued, {} audit events; round took {:?}",
            load_ms,
            tally.attempts,
            tally.acked.len(),
            tally.failed_after_kill,
            found.requests,
            found.certificates,
            found.issued_events,
            found.audit_events,
            round_start.elapsed(),
        );
    }

    // The last restart must have kept everything too, and a graceful stop after it as well.
    ca.stop();
    let found = check_database(&db, &all_acked);
    verify_audit(&ca, "after the final graceful stop");
    println!(
        "total: {total_attempts} attempts, {} acknowledged, {} certificates stored, {:?}",
        all_acked.len(),
        found.certificates,
        started.elapsed()
    );
    assert!(
        all_acked.len() >= ROUNDS,
        "too few certificates were acknowledged ({}) for the test to mean anything",
        all_acked.len()
    );
}
