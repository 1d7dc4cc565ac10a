//! End-to-end tests of the audit trail's anchors outside the database: the checkpoint file
//! the server appends to, `moshca-server audit verify [--checkpoints FILE]`, and CA keys
//! trusted only from key files. Each edits the SQLite file directly, as someone with the
//! disk would. They need only the two binaries, not OpenSSH or root.

use std::path::{Path, PathBuf};
use std::process::Command;

use moshca_e2e::{Ca, Run, moshca, run, wide};
use serde_json::{Value, json};

const POLICY: &str = r#"
[defaults]
max_ttl = "8h"

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"
"#;

const USERS: &[(&str, &[&str])] = &[("alice", &["oncall"]), ("bob", &["sre-leads"])];

/// A key nobody at the CA made (from `ssh-keygen -t ed25519`).
const STRANGER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJLW6NaBRrobRL8YDI9gzdADwA1soETAgUCjWrwcJbA stranger";

/// A CA with a request approved and issued, stopped so its final checkpoint is signed.
fn stopped_ca() -> Ca {
    let mut ca = Ca::start_with(POLICY, USERS);
    let key = ca.scratch().join("subject.pub");
    std::fs::write(&key, format!("{STRANGER}\n")).expect("write key");
    let out = run(ca
        .client("alice")
        .args([
            "request",
            "--role",
            "oncall",
            "--reason",
            "INC-1 disk full",
            "--public-key",
        ])
        .arg(&key));
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    run(ca.client("bob").args(["approve", &id])).assert_ok();
    ca.stop();
    ca
}

fn checkpoint_file(ca: &Ca) -> PathBuf {
    ca.data_dir()
        .join("checkpoints")
        .join("audit-checkpoints.jsonl")
}

fn database(ca: &Ca) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(ca.data_dir().join("moshca.db")).expect("open database");
    db.pragma_update(None, "foreign_keys", false)
        .expect("foreign_keys off");
    db
}

fn verify(data: &Path, extra: &[&str]) -> Run {
    run(Command::new(moshca_e2e::server_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .args(extra))
}

#[track_caller]
fn verify_fails(data: &Path, extra: &[&str], words: &[&str]) -> String {
    let out = verify(data, extra);
    assert!(
        !out.ok() && out.code.is_some(),
        "verify should fail:\n{out}"
    );
    for w in words {
        assert!(out.stderr.contains(w), "verify should say {w:?}:\n{out}");
    }
    out.stderr
}

fn events(db: &rusqlite::Connection) -> i64 {
    db.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn the_server_appends_every_checkpoint_to_the_checkpoint_file() {
    let ca = stopped_ca();
    let text = std::fs::read_to_string(checkpoint_file(&ca)).expect("a checkpoint file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // init, start, shutdown at least.
    assert!(lines.len() >= 3, "{text}");
    let last = lines.last().expect("a line");
    assert_eq!(
        wide(&last["seq"]).and_then(|s| i64::try_from(s).ok()),
        Some(events(&database(&ca)))
    );
    assert!(last["signature"].as_str().is_some_and(|s| s.len() == 128));
    let out = verify(&ca.data_dir(), &[]);
    out.assert_ok();
    assert!(out.stdout.contains("audit chain intact"), "{out}");
    assert!(out.stdout.contains("audit-checkpoints.jsonl"), "{out}");
}

#[test]
fn finding_5_deleting_the_tail_and_every_checkpoint_fails_verify() {
    let ca = stopped_ca();
    let db = database(&ca);
    let n = events(&db);
    // The attack: the last two events and every checkpoint row.
    db.execute("DELETE FROM audit WHERE seq >= ?1", [n - 1])
        .expect("cut");
    db.execute("DELETE FROM audit_checkpoints", [])
        .expect("delete checkpoints");
    drop(db);

    // The checkpoint file in its default place catches the cut.
    verify_fails(
        &ca.data_dir(),
        &[],
        &[
            &format!("audit chain broken at event {}", n - 1),
            "tail cut",
        ],
    );
    // Moved elsewhere (as it should be), the database alone still fails: no checkpoint.
    let elsewhere = ca.scratch().join("offsite.jsonl");
    std::fs::rename(checkpoint_file(&ca), &elsewhere).expect("move the file");
    verify_fails(&ca.data_dir(), &[], &["no signed checkpoint"]);
    verify_fails(
        &ca.data_dir(),
        &["--checkpoints", elsewhere.to_str().expect("utf-8")],
        &["tail cut"],
    );
    let missing = verify(&ca.data_dir(), &["--checkpoints", "/nonexistent/cp.jsonl"]);
    assert!(!missing.ok(), "{missing}");
    assert!(missing.stderr.contains("checkpoint_file"), "{missing}");
}

/// The chain hash: SHA-256 of the previous hash, a newline and the event as JSON in a
/// fixed field order.
fn chain_hash(
    prev: &str,
    at: i64,
    actor: &str,
    action: &str,
    rid: Option<&str>,
    d: &str,
) -> String {
    use sha2::{Digest as _, Sha256};
    let details: Value = serde_json::from_str(d).expect("details are JSON");
    let canonical = format!(
        "{{\"at\":{at},\"actor\":{},\"action\":{},\"request_id\":{},\"details\":{details}}}",
        Value::from(actor),
        Value::from(action),
        rid.map_or(Value::Null, Value::from),
    );
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn finding_5_an_edited_rehashed_chain_without_checkpoints_fails_verify() {
    let ca = stopped_ca();
    let db = database(&ca);
    type Row = (i64, i64, String, String, Option<String>, String, String);
    let rows: Vec<Row> = db
        .prepare(
            "SELECT seq, at, actor, action, request_id, details, prev_hash FROM audit ORDER BY seq",
        )
        .expect("prepare")
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let edited = rows
        .iter()
        .position(|r| r.3 == "request.created")
        .expect("a request");
    // The attack: edit, rehash every later event, delete every checkpoint row.
    let mut prev = rows[edited].6.clone();
    for (i, (seq, at, actor, action, rid, details, _)) in rows.iter().enumerate().skip(edited) {
        let mut details = details.clone();
        if i == edited {
            let mut v: Value = serde_json::from_str(&details).expect("JSON");
            v["reason"] = json!("CHG-1 routine, nothing to see");
            details = v.to_string();
        }
        let hash = chain_hash(&prev, *at, actor, action, rid.as_deref(), &details);
        db.execute(
            "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![details, prev, hash, seq],
        )
        .expect("rewrite");
        prev = hash;
    }
    db.execute("DELETE FROM audit_checkpoints", [])
        .expect("delete checkpoints");
    drop(db);

    verify_fails(&ca.data_dir(), &[], &["rewritten", "checkpoint file"]);
    let elsewhere = ca.scratch().join("offsite.jsonl");
    std::fs::rename(checkpoint_file(&ca), &elsewhere).expect("move the file");
    verify_fails(&ca.data_dir(), &[], &["no signed checkpoint"]);
    verify_fails(
        &ca.data_dir(),
        &["--checkpoints", elsewhere.to_str().expect("utf-8")],
        &["rewritten"],
    );
}

#[test]
fn finding_5_a_ca_key_row_inserted_while_running_is_not_published() {
    let mut ca = Ca::start_with(POLICY, USERS);
    let published = |ca: &Ca| -> String {
        let out = ca.scratch().join("ca-keys.pub");
        run(moshca(ca, None, None).args(["ca-keys", "--out"]).arg(&out)).assert_ok();
        std::fs::read_to_string(&out).expect("read ca-keys")
    };
    let before = published(&ca);
    assert_eq!(before.lines().count(), 1, "{before}");

    // The attack: a CA key row, written while the server runs.
    let stranger_body = STRANGER.split(' ').nth(1).expect("key body");
    database(&ca)
        .execute(
            "INSERT INTO ca_keys (fingerprint, public_key, created_at) VALUES ('SHA256:stranger', ?1, 0)",
            [STRANGER],
        )
        .expect("insert a CA key row");
    let now = published(&ca);
    assert!(!now.contains(stranger_body), "published: {now}");
    let offline = ca.admin(&["ca", "public-keys"]);
    offline.assert_ok();
    assert!(!offline.stdout.contains(stranger_body), "{offline}");
    assert!(
        offline.stderr.contains("NOT trusted"),
        "a warning: {offline}"
    );

    // After a restart, with a live certificate row naming it as its CA.
    database(&ca)
        .execute(
            "INSERT INTO certificates (serial, request_id, key_id, principals, valid_after,
                 valid_before, fingerprint, ca_fingerprint, openssh, issued_at)
             VALUES (42, 'R', 'k', '[]', 0, 99999999999, 'SHA256:x', 'SHA256:stranger', '', 0)",
            [],
        )
        .expect("insert a certificate row");
    ca.restart();
    let now = published(&ca);
    assert!(!now.contains(stranger_body), "published: {now}");
    assert_eq!(now, before);
}
