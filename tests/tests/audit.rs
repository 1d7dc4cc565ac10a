//! End-to-end tests of break-glass access and the audit trail: the real `moshca-server` and
//! `moshca` binaries, a real `sshd` trusting the CA, a real `ssh-agent` and real `ssh`.
//!
//! The tamper tests stop the server and edit its SQLite file directly, as someone with the
//! disk would, then expect `moshca-server audit verify` to name exactly the event they
//! touched. They need only the two binaries, not OpenSSH or root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use moshca_e2e::{Ca, CertInfo, Identity, LOGIN, Run, SshAgent, Sshd, poll, run, ssh, wide};
use serde_json::{Value, json};

/// `oncall` allows break-glass for at most 15 minutes; `tunnel` does not allow it. alice is
/// also an approver of `oncall` by name, so her refused review shows the requester rule, not
/// a missing entitlement. group `audit` may read the audit trail.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"
auditors = ["group:audit"]

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads", "user:alice"]
approval = "manual"
reason_min_len = 10
logins = ["mcae2e", "mcae2e-other"]
default_ttl = "30m"
max_ttl = "1h"
break_glass = { enabled = true, max_ttl = "15m" }

[[role]]
name = "tunnel"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
logins = ["mcae2e"]
default_ttl = "10m"
max_ttl = "1h"
"#;

/// alice and dave request, bob approves, erin audits, mallory is nobody.
const USERS: &[(&str, &[&str])] = &[
    ("alice", &["oncall"]),
    ("bob", &["sre-leads"]),
    ("dave", &["oncall"]),
    ("erin", &["audit"]),
    ("mallory", &[]),
];

const REASON: &str = "INC-9001 primary down";

/// A fixed subject key for requests that never reach an sshd (made by `ssh-keygen -t
/// ed25519`), so the tamper tests need no OpenSSH.
const PUBLIC_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOJLW6NaBRrobRL8YDI9gzdADwA1soETAgUCjWrwcJbA moshca-e2e-audit\n";

/// The loud line `--break-glass` prints on stderr.
fn break_glass_line(id: &str) -> String {
    format!(
        "moshca: BREAK-GLASS access granted; no webhook was notified; request {id} stays \
         flagged until reviewed"
    )
}

/// A CA with [`POLICY`] and [`USERS`], serving; `None` when the test should be skipped.
fn ca() -> Option<Ca> {
    Ca::serving(POLICY, USERS)
}

/// `moshca ARGS...` as `user`.
fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// `moshca ARGS... --json` as `user`, which must succeed, as JSON.
fn client_json(ca: &Ca, user: &str, args: &[&str]) -> Value {
    let out = run(ca.client(user).args(args).arg("--json"));
    out.assert_ok();
    out.json()
}

/// A JSON array's items, failing the test on anything else.
#[track_caller]
fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// [`PUBLIC_KEY`] in a file under the CA's scratch directory.
fn public_key_file(ca: &Ca) -> PathBuf {
    let path = ca.scratch().join("subject.pub");
    std::fs::write(&path, PUBLIC_KEY).expect("write the subject key");
    path
}

/// `moshca request --role ROLE --reason REASON --public-key FILE EXTRA...` as `user`.
fn request(ca: &Ca, user: &str, role: &str, extra: &[&str]) -> Run {
    let key = public_key_file(ca);
    run(ca
        .client(user)
        .args([
            "request",
            "--role",
            role,
            "--reason",
            REASON,
            "--public-key",
        ])
        .arg(key)
        .args(extra))
}

/// A request that must be accepted; returns its id.
#[track_caller]
fn request_ok(ca: &Ca, user: &str, role: &str, extra: &[&str]) -> String {
    let out = request(ca, user, role, extra);
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "`moshca request` should print the id alone:\n{out}"
    );
    id
}

/// `moshca-server audit export`: one JSON object per line.
fn export(ca: &Ca) -> Vec<Value> {
    let out = ca.admin(&["audit", "export"]);
    out.assert_ok();
    out.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("export line is not JSON ({e}): {line:?}\n{out}"))
        })
        .collect()
}

/// The exported events with this action (and this request, when given).
fn events<'a>(all: &'a [Value], action: &str, request_id: Option<&str>) -> Vec<&'a Value> {
    all.iter()
        .filter(|e| e["action"] == action)
        .filter(|e| request_id.is_none_or(|id| e["request_id"] == id))
        .collect()
}

/// The seq of the first exported event with `action`.
#[track_caller]
fn seq_of(all: &[Value], action: &str) -> i64 {
    events(all, action, None)
        .first()
        .and_then(|e| wide(&e["seq"]))
        .and_then(|s| i64::try_from(s).ok())
        .unwrap_or_else(|| panic!("no {action} event in {all:#?}"))
}

// ---------------------------------------------------------------------------------------
// Break-glass

#[test]
fn break_glass_login_works_at_once_is_flagged_and_clears_after_review() {
    let Some(ca) = ca() else { return };
    let sshd = Sshd::start(&ca.ca_public_key());
    let agent = SshAgent::start();

    // No approver does anything: a login that waited would give up after 20 s with exit 4.
    let login = run(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "oncall",
        "--principal",
        LOGIN,
        "--reason",
        REASON,
        "--break-glass",
        "--timeout",
        "20s",
    ]));
    login.assert_ok();
    let id = login
        .stdout
        .strip_prefix("certificate for request ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("login should report the certificate:\n{login}"))
        .to_owned();
    assert!(
        login.stderr.contains(&break_glass_line(&id)),
        "login should say loudly that this was break-glass:\n{login}"
    );
    assert!(
        !login.stderr.contains("waiting for approval"),
        "a break-glass login has nobody to wait for:\n{login}"
    );

    // The agent holds a certificate capped by break_glass.max_ttl, and sshd takes it.
    let cert_line = agent
        .public_keys()
        .into_iter()
        .find(|line| line.contains("-cert-v01@openssh.com"))
        .unwrap_or_else(|| panic!("the agent should hold the certificate"));
    let cert_path = ca.scratch().join("agent-cert.pub");
    std::fs::write(&cert_path, format!("{cert_line}\n")).expect("write the certificate");
    let info = CertInfo::read(&cert_path);
    assert_eq!(
        info.key_id,
        format!("moshca:req={id}:user=alice:role=oncall:by=break-glass")
    );
    assert_eq!(
        info.valid_before - info.valid_after,
        15 * 60 + 60,
        "ttl min(default 30m, break-glass 15m) plus 1m backdate: {info:?}"
    );
    let out = ssh(&sshd, LOGIN, Identity::Agent(&agent), "id");
    out.assert_ok();
    assert!(out.stdout.contains(&format!("({LOGIN})")), "{out}");
    let key_id = poll(Duration::from_secs(10), "sshd to log the key id", || {
        sshd_key_id(&sshd.log(), &id)
    });
    assert!(
        key_id.ends_with(":by=break-glass"),
        "sshd logged {key_id:?}"
    );

    // Flagged until reviewed, for the requester and for approvers.
    let status = client_json(&ca, "alice", &["status", &id]);
    assert_eq!(status["state"], "issued");
    assert_eq!(status["break_glass"], true);
    assert_eq!(status["break_glass_review"], Value::Null);
    let human = client(&ca, "alice", &["status", &id]);
    human.assert_ok();
    assert!(
        human.stdout.contains("BREAK-GLASS, not reviewed yet"),
        "{human}"
    );
    let unreviewed = items(client_json(&ca, "bob", &["requests", "--unreviewed"]));
    assert_eq!(unreviewed.len(), 1, "{unreviewed:#?}");
    assert_eq!(unreviewed[0]["id"], id.as_str());
    assert_eq!(unreviewed[0]["break_glass"], true);
    assert_eq!(unreviewed[0]["requester"], "alice");

    // Not by the requester, even though she approves the role; not without a comment.
    client(
        &ca,
        "alice",
        &["review", &id, "--comment", "all good, trust me"],
    )
    .assert_code(3)
    .assert_stderr_mentions(&["own"]);
    client(
        &ca,
        "mallory",
        &["review", &id, "--comment", "looks fine to me"],
    )
    .assert_refused();
    client(&ca, "bob", &["review", &id]).assert_code(2);
    client(&ca, "bob", &["review", &id, "--comment", "   "]).assert_refused();
    assert_eq!(
        items(client_json(&ca, "bob", &["requests", "--unreviewed"])).len(),
        1,
        "refused reviews must not clear the flag"
    );

    let comment = "INC-9001 was real; access fit the incident";
    let reviewed = client_json(&ca, "bob", &["review", &id, "--comment", comment]);
    assert_eq!(reviewed["id"], id.as_str());
    assert_eq!(reviewed["break_glass"], true);
    assert_eq!(reviewed["break_glass_review"]["approver"], "bob");
    assert_eq!(reviewed["break_glass_review"]["comment"], comment);
    assert!(
        reviewed["break_glass_review"]["at"]
            .as_i64()
            .is_some_and(|at| at > 0)
    );
    client(&ca, "bob", &["review", &id, "--comment", "again, twice"]).assert_refused();

    assert_eq!(
        items(client_json(&ca, "bob", &["requests", "--unreviewed"])),
        Vec::<Value>::new()
    );
    let listed = client(&ca, "bob", &["requests"]);
    listed.assert_ok();
    assert!(
        listed.stdout.contains("BREAK-GLASS") && listed.stdout.contains("reviewed by bob at"),
        "{listed}"
    );
    let human = client(&ca, "alice", &["status", &id]);
    assert!(
        human.stdout.contains("reviewed by bob at") && human.stdout.contains(comment),
        "{human}"
    );

    let all = export(&ca);
    let glass = events(&all, "request.break_glass", Some(&id));
    assert_eq!(glass.len(), 1, "{all:#?}");
    assert_eq!(glass[0]["actor"], "alice");
    let review = events(&all, "request.reviewed", Some(&id));
    assert_eq!(review.len(), 1, "{all:#?}");
    assert_eq!(review[0]["actor"], "bob");
    assert_eq!(review[0]["details"]["comment"], comment);
    assert_eq!(events(&all, "certificate.issued", Some(&id)).len(), 1);
    let verify = ca.admin(&["audit", "verify"]);
    verify.assert_ok();
    assert!(verify.stdout.contains("audit chain intact"), "{verify}");
}

/// The key id sshd logged for a certificate of request `id`.
fn sshd_key_id(log: &str, id: &str) -> Option<String> {
    let needle = format!("moshca:req={id}:");
    log.lines().find_map(|line| {
        let start = line.find(&needle)?;
        let rest = &line[start..];
        Some(rest[..rest.find('"').unwrap_or(rest.len())].to_owned())
    })
}

#[test]
fn break_glass_refused_for_a_role_without_it_and_over_its_max_ttl() {
    let Some(ca) = ca() else { return };
    let agent = SshAgent::start();

    request(&ca, "alice", "tunnel", &["--break-glass"])
        .assert_code(3)
        .assert_stderr_mentions(&["break-glass"]);
    run(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "tunnel",
        "--reason",
        REASON,
        "--break-glass",
        "--timeout",
        "20s",
    ]))
    .assert_code(3);
    // A ttl over the cap is a bad argument: the usage code, as every out-of-range ttl.
    request(&ca, "alice", "oncall", &["--break-glass", "--ttl", "16m"])
        .assert_code(2)
        .assert_stderr_mentions(&["max_ttl"]);
    run(ca.client_with_agent("alice", &agent).args([
        "login",
        "--role",
        "oncall",
        "--reason",
        REASON,
        "--break-glass",
        "--ttl",
        "1h",
        "--timeout",
        "20s",
    ]))
    .assert_code(2);

    assert!(agent.list().is_empty(), "nothing may reach the agent");
    assert_eq!(
        items(client_json(&ca, "bob", &["requests"])),
        Vec::<Value>::new()
    );
    assert_eq!(
        items(client_json(&ca, "alice", &["requests", "--mine"])),
        Vec::<Value>::new()
    );
    let all = export(&ca);
    for action in [
        "certificate.issued",
        "request.break_glass",
        "request.created",
    ] {
        assert!(events(&all, action, None).is_empty(), "{action}: {all:#?}");
    }
    // Every refusal is itself audited, with the reason.
    let refused = events(&all, "request.refused", None);
    assert_eq!(refused.len(), 4, "{all:#?}");
    for event in refused {
        assert_eq!(event["actor"], "alice");
        let reason = event["details"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("break-glass") || reason.contains("break_glass"),
            "{event}"
        );
    }

    // The cap itself is allowed, through `moshca request` too.
    let out = request(&ca, "alice", "oncall", &["--break-glass", "--ttl", "15m"]);
    out.assert_ok();
    let id = out.stdout.trim();
    assert!(out.stderr.contains(&break_glass_line(id)), "{out}");
    let status = client_json(&ca, "alice", &["status", id]);
    assert_eq!(status["state"], "issued");
    assert_eq!(status["ttl_secs"], 900);
    assert_eq!(status["break_glass"], true);
}

// ---------------------------------------------------------------------------------------
// The audit trail for auditors

#[test]
fn audit_for_auditors_filters_by_user_and_request_and_refuses_others() {
    let Some(ca) = ca() else { return };
    let alices = request_ok(&ca, "alice", "oncall", &[]);
    client(&ca, "bob", &["approve", &alices, "--comment", "go ahead"]).assert_ok();
    let daves = request_ok(&ca, "dave", "tunnel", &[]);

    let audit = |args: &[&str]| {
        let mut all = vec!["audit"];
        all.extend(args);
        items(client_json(&ca, "erin", &all))
    };

    let everything = audit(&[]);
    for event in &everything {
        assert!(wide(&event["seq"]).is_some_and(|s| s > 0), "{event}");
        assert!(event["at"].as_i64().is_some_and(|at| at > 0), "{event}");
        assert!(
            event["actor"].is_string() && event["action"].is_string(),
            "{event}"
        );
        assert!(
            event["details"].is_object(),
            "details should be parsed: {event}"
        );
        let hash = event["hash"].as_str().unwrap_or_default();
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{event}"
        );
        assert!(event["request_id"].is_null() || event["request_id"].is_string());
    }
    let seqs: Vec<u64> = everything.iter().filter_map(|e| wide(&e["seq"])).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );
    let about = |list: &[Value], id: &str| list.iter().any(|e| e["request_id"] == id);
    assert!(about(&everything, &alices) && about(&everything, &daves));

    let alice = audit(&["--user", "alice"]);
    assert!(!alice.is_empty());
    assert!(
        !about(&alice, &daves),
        "dave's request is not alice's: {alice:#?}"
    );
    for event in &alice {
        assert!(
            event["actor"] == "alice"
                || event["request_id"] == alices.as_str()
                || event["details"]["user"] == "alice",
            "not about alice: {event}"
        );
    }
    assert!(
        alice
            .iter()
            .any(|e| e["actor"] == "bob" && e["action"] == "request.approved"),
        "bob's approval of alice's request is about alice: {alice:#?}"
    );

    let one = audit(&["--request", &alices]);
    assert!(
        one.iter().all(|e| e["request_id"] == alices.as_str()),
        "{one:#?}"
    );
    let actions: Vec<&str> = one.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["request.created", "request.approved", "certificate.issued"] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let approved = one
        .iter()
        .find(|e| e["action"] == "request.approved")
        .expect("approval event");
    assert_eq!(approved["actor"], "bob");

    let last = audit(&["--limit", "1"]);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["seq"], everything.last().expect("events")["seq"]);
    assert_eq!(
        audit(&["--since", "2100-01-01T00:00:00Z"]),
        Vec::<Value>::new()
    );
    assert_eq!(audit(&["--since", "1h"]).len(), everything.len());

    let human = client(&ca, "erin", &["audit", "--request", &alices]);
    human.assert_ok();
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len(), one.len(), "one line per event:\n{human}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(alices.as_str()) && l.ends_with('}')),
        "{human}"
    );
    assert!(lines[0].contains("request.created"), "{human}");

    for user in ["alice", "bob", "mallory"] {
        client(&ca, user, &["audit"])
            .assert_code(3)
            .assert_stderr_mentions(&["defaults.auditors"]);
    }
}

// ---------------------------------------------------------------------------------------
// Tampering with the stored chain

/// A fresh CA with a few events (users added, a request approved and issued, another
/// cancelled), stopped so its final checkpoint is signed; and its export.
fn stopped_ca_with_events() -> (Ca, Vec<Value>) {
    let mut ca = Ca::start_with(POLICY, &USERS[..2]);
    let first = request_ok(&ca, "alice", "oncall", &[]);
    client(&ca, "bob", &["approve", &first]).assert_ok();
    let second = request_ok(&ca, "alice", "oncall", &[]);
    client(&ca, "alice", &["cancel", &second]).assert_ok();
    ca.stop();
    let all = export(&ca);
    assert!(all.len() >= 7, "a few events: {all:#?}");
    let seqs: Vec<i64> = all
        .iter()
        .filter_map(|e| wide(&e["seq"]).and_then(|s| i64::try_from(s).ok()))
        .collect();
    let expected: Vec<i64> = (1..=i64::try_from(all.len()).expect("few events")).collect();
    assert_eq!(seqs, expected, "seqs from 1 without gaps");
    (ca, all)
}

/// The CA's SQLite database, opened for tampering.
fn database(ca: &Ca) -> rusqlite::Connection {
    let path = ca.data_dir().join("moshca.db");
    assert!(path.is_file(), "no database at {}", path.display());
    let db = rusqlite::Connection::open(&path).expect("open the CA database");
    // The notification outbox references audit rows; someone deleting events turns the
    // check off first (the sqlite3 shell has it off anyway).
    db.pragma_update(None, "foreign_keys", false)
        .expect("foreign_keys off");
    db
}

/// `moshca-server audit verify`, which must fail; the event number it names and its stderr.
#[track_caller]
fn verify_fails(data: &Path) -> (i64, String) {
    let out = run(Command::new(moshca_e2e::server_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(data));
    assert!(
        !out.ok() && out.code.is_some(),
        "verify should fail:\n{out}"
    );
    let message = out
        .stderr
        .lines()
        .find(|l| l.contains("audit chain broken at event "))
        .unwrap_or_else(|| panic!("verify should name the first bad event:\n{out}"));
    let seq = message
        .split("audit chain broken at event ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event number in {message:?}"));
    (seq, message.to_owned())
}

#[test]
fn untouched_audit_chain_verifies() {
    let (ca, all) = stopped_ca_with_events();
    let out = ca.admin(&["audit", "verify"]);
    out.assert_ok();
    assert!(
        out.stdout
            .contains(&format!("audit chain intact: {} events", all.len())),
        "{out}"
    );
}

#[test]
fn edited_details_are_caught_at_that_event() {
    let (ca, all) = stopped_ca_with_events();
    let seq = seq_of(&all, "request.created");
    let mut details = all[usize::try_from(seq - 1).expect("seq")]["details"].clone();
    details["reason"] = json!("CHG-1 routine, nothing to see");
    let changed = database(&ca)
        .execute(
            "UPDATE audit SET details = ?1 WHERE seq = ?2",
            rusqlite::params![details.to_string(), seq],
        )
        .expect("edit details");
    assert_eq!(changed, 1);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, seq, "{message}");
}

#[test]
fn edited_actor_is_caught_at_that_event() {
    let (ca, all) = stopped_ca_with_events();
    let seq = seq_of(&all, "request.approved");
    let changed = database(&ca)
        .execute(
            "UPDATE audit SET actor = 'mallory' WHERE seq = ?1",
            rusqlite::params![seq],
        )
        .expect("edit actor");
    assert_eq!(changed, 1);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, seq, "{message}");
}

#[test]
fn deleted_event_is_caught_at_its_seq() {
    let (ca, all) = stopped_ca_with_events();
    let seq = seq_of(&all, "certificate.issued");
    assert!(
        seq < i64::try_from(all.len()).expect("few events"),
        "a middle event"
    );
    let changed = database(&ca)
        .execute("DELETE FROM audit WHERE seq = ?1", rusqlite::params![seq])
        .expect("delete an event");
    assert_eq!(changed, 1);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, seq, "{message}");
}

#[test]
fn swapped_events_are_caught_at_the_first() {
    let (ca, all) = stopped_ca_with_events();
    let first = seq_of(&all, "request.approved");
    let second = first + 2;
    assert!(second < i64::try_from(all.len()).expect("few events"));
    let mut db = database(&ca);
    // Every column but seq trades places, hashes included: the rows are simply reordered.
    const COLUMNS: &str = "at, actor, action, request_id, details, prev_hash, hash";
    let tx = db.transaction().expect("begin");
    let read = |seq: i64| -> Vec<rusqlite::types::Value> {
        tx.query_row(
            &format!("SELECT {COLUMNS} FROM audit WHERE seq = ?1"),
            [seq],
            |r| (0..7).map(|i| r.get(i)).collect(),
        )
        .expect("read an event")
    };
    let (a, b) = (read(first), read(second));
    for (seq, values) in [(first, b), (second, a)] {
        let changed = tx
            .execute(
                "UPDATE audit SET at = ?1, actor = ?2, action = ?3, request_id = ?4,
                     details = ?5, prev_hash = ?6, hash = ?7
                 WHERE seq = ?8",
                rusqlite::params_from_iter(values.into_iter().chain([seq.into()])),
            )
            .expect("rewrite an event");
        assert_eq!(changed, 1);
    }
    tx.commit().expect("commit the swap");
    let action = |seq: i64| -> String {
        db.query_row("SELECT action FROM audit WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .expect("read an action")
    };
    let before = |seq: i64| all[usize::try_from(seq - 1).expect("seq")]["action"].clone();
    assert_eq!(action(first), before(second));
    assert_eq!(action(second), before(first));
    drop(db);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, first, "{message}");
}

#[test]
fn cut_tail_is_caught_by_the_shutdown_checkpoint() {
    let (ca, all) = stopped_ca_with_events();
    let last = i64::try_from(all.len()).expect("few events");
    let db = database(&ca);
    let checkpointed: i64 = db
        .query_row("SELECT max(seq) FROM audit_checkpoints", [], |r| r.get(0))
        .expect("a signed checkpoint");
    assert_eq!(checkpointed, last, "shutdown should checkpoint the head");
    let cut_from = last - 1;
    let changed = db
        .execute(
            "DELETE FROM audit WHERE seq >= ?1",
            rusqlite::params![cut_from],
        )
        .expect("cut the tail");
    assert_eq!(changed, 2);
    drop(db);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, cut_from, "{message}");
    assert!(
        message.contains("tail"),
        "should say the tail was cut: {message}"
    );
}

/// The stored rows `(seq, at, actor, action, request_id, details, prev_hash, hash)`.
type StoredRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

fn stored_rows(db: &rusqlite::Connection) -> Vec<StoredRow> {
    let mut stmt = db
        .prepare(
            "SELECT seq, at, actor, action, request_id, details, prev_hash, hash
             FROM audit ORDER BY seq",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("read the audit rows")
}

/// The chain hash as DESIGN.md describes it: SHA-256 of the previous hash, a newline and
/// the event as JSON with fields in a fixed order (details with sorted keys).
fn chain_hash(prev: &str, row: &StoredRow) -> String {
    use sha2::{Digest as _, Sha256};
    let (_, at, actor, action, request_id, details, _, _) = row;
    let details: Value = serde_json::from_str(details).expect("details are JSON");
    let canonical = format!(
        "{{\"at\":{at},\"actor\":{},\"action\":{},\"request_id\":{},\"details\":{details}}}",
        Value::from(actor.as_str()),
        Value::from(action.as_str()),
        request_id.as_deref().map_or(Value::Null, Value::from),
    );
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Someone who knows the hash recipe edits an event and recomputes every later hash, so
/// each link holds; the checkpoint the server signed at shutdown still catches it.
#[test]
fn rehashed_chain_is_caught_by_the_signed_checkpoint() {
    let (ca, all) = stopped_ca_with_events();
    let seq = seq_of(&all, "request.created");
    let db = database(&ca);
    let mut rows = stored_rows(&db);
    let mut prev = "0".repeat(64);
    for row in &rows {
        assert_eq!(row.6, prev, "prev_hash of event {}", row.0);
        prev = chain_hash(&prev, row);
        assert_eq!(
            row.7, prev,
            "this test's hash recipe should match event {}",
            row.0
        );
    }

    let index = usize::try_from(seq - 1).expect("seq");
    let mut details: Value = serde_json::from_str(&rows[index].5).expect("details are JSON");
    details["reason"] = json!("CHG-1 routine, nothing to see");
    rows[index].5 = details.to_string();
    let mut prev = rows[index].6.clone();
    for row in &mut rows[index..] {
        row.6 = prev.clone();
        row.7 = chain_hash(&prev, row);
        prev = row.7.clone();
        db.execute(
            "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![row.5, row.6, row.7, row.0],
        )
        .expect("rewrite an event");
    }
    let checkpoint: i64 = db
        .query_row(
            "SELECT min(seq) FROM audit_checkpoints WHERE seq >= ?1",
            [seq],
            |r| r.get(0),
        )
        .expect("a signed checkpoint after the edit");
    drop(db);

    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, checkpoint, "{message}");
    assert!(message.contains("rewritten"), "{message}");
}

/// Details that are not JSON at all are an edit too, and verify should name the event.
#[test]
fn unparsable_details_are_caught_at_that_event() {
    let (ca, all) = stopped_ca_with_events();
    let seq = seq_of(&all, "request.approved");
    let changed = database(&ca)
        .execute(
            "UPDATE audit SET details = '{not json' WHERE seq = ?1",
            rusqlite::params![seq],
        )
        .expect("edit details");
    assert_eq!(changed, 1);
    let (at, message) = verify_fails(&ca.data_dir());
    assert_eq!(at, seq, "{message}");
}
