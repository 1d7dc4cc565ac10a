//! Attacks from a security review of the running CA (findings 3, 4, 7 and 10): standing
//! re-checked where certificates are signed, bounded caller strings, invisible characters,
//! and a panicking writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use moshca_server::approvals::Verdict;
use moshca_server::auth::{Caller, Token};
use moshca_server::authority::{Authority, NewRequest, RevokeTarget};
use moshca_server::clock;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;

/// The suite's roles plus `auto`, which issues at once.
fn policy_with_auto() -> String {
    format!(
        r#"{POLICY}
[[role]]
name = "auto"
requesters = ["group:oncall"]
approval = "auto"
logins = ["postgres"]
max_ttl = "1h"
"#
    )
}

async fn start_with_auto() -> Harness {
    let data = common::data_dir(&policy_with_auto(), "", USERS);
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    Harness {
        store: Store::open(&data.config.database).unwrap(),
        data,
        served,
    }
}

fn new_request(role: &str, break_glass: bool) -> NewRequest {
    NewRequest {
        role: role.into(),
        principals: vec![],
        ttl_secs: Some(600),
        reason: REASON.into(),
        public_key: new_key(),
        break_glass,
    }
}

/// `who` as the server resolved them from their token: a snapshot that later calls reuse,
/// as a handler does between authenticating and signing.
fn authenticated(h: &Harness, who: &str) -> Caller {
    let token = Token::from_presented(&h.data.tokens[who]);
    h.served
        .authority
        .authenticate_at(&token, "127.0.0.1", clock::now())
        .unwrap()
}

/// (audit seq, key id) of every `certificate.issued` event.
fn issued_events(h: &Harness) -> Vec<(u64, String)> {
    h.store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action == "certificate.issued")
        .map(|r| {
            let key_id = r.event.details["key_id"].as_str().unwrap().to_owned();
            (r.seq, key_id)
        })
        .collect()
}

/// Seq of the newest `certificate.revoked` event that disabled user `name`.
fn disable_seq(h: &Harness, name: &str) -> u64 {
    h.store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| {
            r.event.action == "certificate.revoked" && r.event.details["target"]["user"] == name
        })
        .map(|r| r.seq)
        .expect("the revocation of the user is audited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finding_3_a_disabled_user_gets_no_certificate_after_the_disable_event() {
    let h = start_with_auto().await;
    let authority: Arc<Authority> = h.served.authority.clone();
    let sec = authenticated(&h, "sec");
    const ROUNDS: usize = 12;
    const THREADS: usize = 24;
    let mut issued_before_disable = 0;
    for round in 0..ROUNDS {
        users::set_disabled(&h.store, "mallory", false, clock::now()).unwrap();
        // Each thread authenticates once, then keeps issuing with that caller: the
        // window the attack used, between the read that authenticates and the write
        // that signs.
        let mallory = authenticated(&h, "mallory");
        let revoked = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (a, m, revoked) = (authority.clone(), mallory.clone(), revoked.clone());
                let issued = issued.clone();
                std::thread::spawn(move || {
                    let mut issued_after = 0;
                    // After the revocation returned, a few more tries each, then stop.
                    let mut tries_after = 0;
                    while tries_after < 5 {
                        let done = revoked.load(Ordering::SeqCst);
                        tries_after += usize::from(done);
                        match a.create_request_at(&m, new_request("auto", false), clock::now()) {
                            Ok(_) if done => issued_after += 1,
                            Ok(_) => {
                                issued.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => break,
                        }
                    }
                    issued_after
                })
            })
            .collect();
        // Revoke once issuance is in full swing.
        let until = Instant::now() + Duration::from_secs(10);
        while issued.load(Ordering::SeqCst) < THREADS && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let a = authority.clone();
        let sec = sec.clone();
        tokio::task::spawn_blocking(move || {
            a.revoke_at(
                &sec,
                RevokeTarget::User("mallory".into()),
                "INC-4400 account compromised",
                clock::now(),
            )
        })
        .await
        .unwrap()
        .unwrap();
        revoked.store(true, Ordering::SeqCst);
        let after: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(
            after, 0,
            "round {round}: issuance succeeded after the revocation returned"
        );

        let cutoff = disable_seq(&h, "mallory");
        let events = issued_events(&h);
        let late: Vec<_> = events
            .iter()
            .filter(|(seq, key_id)| *seq > cutoff && key_id.contains(":user=mallory:"))
            .collect();
        assert!(
            late.is_empty(),
            "round {round}: certificates issued after the disable event: {late:?}"
        );
        issued_before_disable += events
            .iter()
            .filter(|(seq, key_id)| *seq < cutoff && key_id.contains(":user=mallory:"))
            .count();
        let live = h
            .store
            .read(|tx| tx.live_certificates_of("mallory", clock::now()))
            .unwrap();
        assert!(
            live.iter().all(|c| c.revoked_at.is_some()),
            "round {round}: a live certificate of mallory is not revoked"
        );
    }
    assert!(
        issued_before_disable > ROUNDS,
        "the race was exercised: {issued_before_disable} certificates before the disables"
    );

    // The same stale caller on the other issuing paths: break-glass and approval.
    let bob = authenticated(&h, "bob");
    let alice = authenticated(&h, "alice");
    let pending = authority
        .create_request_at(&alice, new_request("db", false), clock::now())
        .unwrap();
    users::set_disabled(&h.store, "bob", true, clock::now()).unwrap();
    let refused = authority.review_at(
        &bob,
        &pending.request.id,
        Verdict::Approve,
        None,
        "",
        clock::now(),
    );
    assert!(
        matches!(
            refused,
            Err(moshca_server::authority::Error::Unauthenticated(_))
        ),
        "a disabled approver's stale session approved: {refused:?}"
    );
    assert_eq!(h.issuance_of(&pending.request.id), (0, false));
    users::set_disabled(&h.store, "alice", true, clock::now()).unwrap();
    let glass = authority.create_request_at(&alice, new_request("glass", true), clock::now());
    assert!(glass.is_err(), "break-glass for a disabled user: {glass:?}");
    h.audit_verifies();
}

#[tokio::test]
async fn finding_4_oversized_strings_are_refused_at_the_edge_and_a_refusal_writes_little() {
    let h = start().await;
    let before = h.snapshot().await;
    let huge = "r".repeat(60_000);
    let mut cases: Vec<(&str, pb::CreateAccessRequestRequest)> = Vec::new();
    cases.push(("role", ask(&huge, &[], 600)));
    let mut m = ask("db", &[], 600);
    m.principals = vec![huge.clone()];
    cases.push(("a principal", m));
    let mut m = ask("db", &[], 600);
    m.reason = huge.clone();
    cases.push(("reason", m));
    let mut m = ask("db", &[], 600);
    m.public_key = format!("ssh-ed25519 {}", "A".repeat(20_000));
    cases.push(("public key", m));
    for (field, msg) in cases {
        let message = refused(h.create("mallory", msg).await, Code::InvalidArgument, field);
        assert!(
            message.starts_with(field) && message.contains("limit"),
            "{field}: {message}"
        );
        assert!(
            message.len() < 200,
            "{field}: the value is echoed: {message}"
        );
    }
    let too_many: Vec<String> = (0..33).map(|i| format!("p{i}")).collect();
    let mut m = ask("db", &[], 600);
    m.principals = too_many;
    refused(
        h.create("mallory", m).await,
        Code::InvalidArgument,
        "33 principals",
    );
    let audit = pb::ListAuditEventsRequest {
        user: huge.clone(),
        ..Default::default()
    };
    refused(
        h.client().list_audit_events(h.req("sec", audit)).await,
        Code::InvalidArgument,
        "audit user filter",
    );
    h.unchanged(&before, "oversized fields").await;

    // What a refusal that does reach the audit trail writes: at most 2 KB per call.
    let db = rusqlite::Connection::open(h.data.config.database.sqlite_path().unwrap()).unwrap();
    let pages = || -> i64 { db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    let page_size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let start_pages = pages();
    let calls = 50;
    for i in 0..calls {
        let role = format!("{}{i:02}", "\u{202E}x".repeat(20));
        let mut m = ask(&role[..role.len().min(64)], &[], 600);
        m.reason = format!("{} {}", REASON, "y".repeat(1000));
        refused(
            h.create("mallory", m).await,
            Code::PermissionDenied,
            "unknown role",
        );
    }
    let grown = (pages() - start_pages) * page_size;
    let largest: i64 = db
        .query_row(
            "SELECT max(length(CAST(actor AS BLOB)) + length(CAST(action AS BLOB))
                 + length(CAST(details AS BLOB)) + length(prev_hash) + length(hash) + 16)
             FROM audit WHERE action = 'request.refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "refused calls: {calls}, database grew {grown} B ({} B per call), largest audit row {largest} B",
        grown / calls
    );
    assert!(largest <= 2048, "an audit row of {largest} B");
    assert!(
        grown / calls <= 2048,
        "{} B per refused call",
        grown / calls
    );
    let details: String = db
        .query_row(
            "SELECT details FROM audit WHERE action = 'request.refused' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        !details.contains('\u{202E}'),
        "the role is stored escaped, not raw: {details}"
    );

    // Refusals per caller are limited: past the limit, nothing more is audited.
    let audited = |h: &Harness| h.store.read(|tx| tx.audit_rows()).unwrap().len();
    for _ in 0..moshca_server::limits::MAX_REFUSALS {
        let _ = h.create("mallory", ask("nope", &[], 600)).await;
    }
    let rows = audited(&h);
    let message = refused(
        h.create("mallory", ask("nope", &[], 600)).await,
        Code::ResourceExhausted,
        "past the refusal limit",
    );
    assert!(message.contains("refused calls"), "{message}");
    assert_eq!(audited(&h), rows, "a limited call writes no audit row");
    h.create("alice", ask("db", &[], 600))
        .await
        .expect("other callers are not limited");
}

#[tokio::test]
async fn finding_7_invisible_and_bidirectional_characters_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    for reason in [
        "INC-4312 \u{202E}gnp.exe",
        "INC-4312\u{200B}",
        "INC-4312 \u{2066}moshca approve X\u{2069}",
        "\u{FEFF}INC-4312",
        "INC-4312 \u{E0041}",
    ] {
        let mut m = ask("db", &[], 600);
        m.reason = reason.into();
        let message = refused(h.create("alice", m).await, Code::InvalidArgument, reason);
        assert!(message.contains("U+"), "{message}");
    }
    h.unchanged(&before, "hidden characters in reasons").await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let review = h
        .review(
            "bob",
            &created.id,
            pb::Decision::Approve,
            0,
            "looks fine \u{202E}",
        )
        .await;
    refused(
        review,
        Code::InvalidArgument,
        "hidden character in a comment",
    );
    assert_eq!(h.issuance_of(&created.id), (0, false));
    let denied = h
        .review(
            "bob",
            &created.id,
            pb::Decision::Deny,
            0,
            "no\u{2067} thanks",
        )
        .await;
    refused(
        denied,
        Code::InvalidArgument,
        "hidden character in a denial",
    );
    let revoke = h
        .revoke(
            "sec",
            pb::revoke_certificates_request::Target::User("mallory".into()),
            "INC-1 \u{202E}",
        )
        .await;
    refused(
        revoke,
        Code::InvalidArgument,
        "hidden character in a revocation",
    );
    h.audit_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_a_panicking_writer_does_not_stop_every_write() {
    // The server's authority over a store this test also holds, to inject the panic.
    let data = common::data_dir(&policy_with_auto(), "", USERS);
    let mut loaded = server::open(&data.config, None).unwrap();
    let store = Arc::new(Store::open(&data.config.database).unwrap());
    loaded.authority = Arc::new(
        Authority::new(
            store.clone(),
            server::load_signer(&data.config, None).unwrap(),
            server::load_policy(&data.config).unwrap(),
            clock::now(),
        )
        .unwrap(),
    );
    let served = common::serve(&data.config, loaded).await;
    let h = Harness {
        store: Store::open(&data.config.database).unwrap(),
        data,
        served,
    };

    let s = store.clone();
    let panicked = tokio::task::spawn_blocking(move || {
        let _: Result<(), moshca_server::store::Error> = s.transact(|tx| {
            tx.insert_user("ghost", &[], 1)?;
            panic!("injected fault inside a write");
        });
    })
    .await;
    assert!(panicked.is_err(), "the injected panic happened");

    let issued = tokio::time::timeout(
        Duration::from_secs(10),
        h.create("mallory", ask("auto", &[], 600)),
    )
    .await
    .expect("issuance hangs after a panicking writer")
    .unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    assert!(store.read(|tx| tx.user("ghost")).unwrap().is_none());

    // Health follows the store: another process holding the write lock keeps every
    // commit from happening, and health says so until it is released.
    let mut health = HealthClient::new(h.served.channel());
    let status = |mut health: HealthClient<Channel>| async move {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "moshca.v1.CertificateAuthority".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    // The panicked batch may have been reported as a failed commit; health follows the
    // next successful commit within one tick of the health task.
    let until = Instant::now() + Duration::from_secs(5);
    while status(health.clone()).await != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < until,
            "health stayed NOT_SERVING although issuance commits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocker =
        rusqlite::Connection::open(h.data.config.database.sqlite_path().unwrap()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while status(health.clone()).await != ServingStatus::NotServing as i32 {
        assert!(
            Instant::now() < until,
            "health stayed SERVING while no commit could happen"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while status(health.clone()).await != ServingStatus::Serving as i32 {
        assert!(
            Instant::now() < until,
            "health did not recover after the store did"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    health = HealthClient::new(h.served.channel());
    drop(health);
    h.create("mallory", ask("auto", &[], 600))
        .await
        .expect("issuance works again");
}
