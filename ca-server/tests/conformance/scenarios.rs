//! The scenarios, each a function of a [`Backend`]. Each asserts the rule itself, so a
//! backend that breaks it fails here whatever the other does.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use moshca_server::approvals::{Request, Review, State, Verdict};
use moshca_server::audit::{self, Event};
use moshca_server::store::{
    AuditFilter, CertRecord, Error, ErrorKind, HostTokenRecord, RequestFilter, Store,
};

use super::Backend;

const T0: u64 = 1_800_000_000;

fn request(id: &str, requester: &str, role: &str, created: u64) -> Request {
    Request {
        id: id.into(),
        requester: requester.into(),
        role: role.into(),
        principals: vec!["postgres".into()],
        ttl_secs: 1800,
        reason: "INC-4312".into(),
        public_key: "ssh-ed25519 AAAA".into(),
        fingerprint: format!("SHA256:{id}"),
        state: State::Pending,
        created_at: created,
        expires_at: created + 3600,
        decided_at: None,
        approvals_required: 1,
        reviews: vec![],
        break_glass: false,
        break_glass_review: None,
        version: 0,
    }
}

fn review(approver: &str, at: u64) -> Review {
    Review {
        approver: approver.into(),
        verdict: Verdict::Approve,
        ttl_secs: None,
        comment: String::new(),
        at,
    }
}

fn event(actor: &str, action: &str, request_id: Option<&str>, details: serde_json::Value) -> Event {
    Event::new(T0, actor, action, request_id, details)
}

fn certificate(serial: u64, request_id: &str) -> CertRecord {
    CertRecord {
        serial,
        request_id: request_id.into(),
        key_id: format!("moshca:{request_id}"),
        principals: vec!["postgres".into()],
        valid_after: T0,
        valid_before: T0 + 600,
        fingerprint: format!("SHA256:{request_id}"),
        ca_fingerprint: "SHA256:ca".into(),
        openssh: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
        issued_at: T0,
        requester: "alice".into(),
        role: "db".into(),
        revoked_at: None,
    }
}

fn chain_length(s: &Store) -> u64 {
    let mut chain = audit::Chain::new();
    s.read(|tx| {
        tx.for_each_audit_row(0, |row| {
            chain.push(&row).map_err(|b| {
                Error::Corrupt(format!("audit chain broken at {}: {}", b.seq, b.reason))
            })
        })
    })
    .unwrap();
    chain.len()
}

/// Runs `f(replica, thread)` on `threads` threads of each of two replicas at once.
fn on_two_replicas(b: &Backend, threads: usize, f: impl Fn(&Store, usize) + Sync) {
    let replicas = [b.open(), b.open()];
    std::thread::scope(|scope| {
        for (r, store) in replicas.iter().enumerate() {
            for t in 0..threads {
                let f = &f;
                scope.spawn(move || f(store, r * threads + t));
            }
        }
    });
}

pub fn a_failed_transaction_leaves_nothing(b: &Backend) {
    let s = b.open();
    let r: Result<(), Error> = s.transact(|tx| {
        tx.insert_user("alice", &["oncall".into()], T0)?;
        tx.insert_request(&request("A", "alice", "db", T0))?;
        tx.append_audit(&event(
            "alice",
            "request.created",
            Some("A"),
            serde_json::json!({}),
        ))?;
        Err(Error::Corrupt("refused by the caller".into()))
    });
    assert!(r.is_err());
    let other = b.open();
    assert!(other.read(|tx| tx.user("alice")).unwrap().is_none());
    assert!(other.read(|tx| tx.request("A")).unwrap().is_none());
    assert!(other.read(|tx| tx.audit_head()).unwrap().is_none());
}

pub fn a_stale_save_is_a_conflict_and_writes_nothing(b: &Backend) {
    let (one, two) = (b.open(), b.open());
    one.transact(|tx| tx.insert_request(&request("A", "alice", "db", T0)))
        .unwrap();
    // Both replicas read version 0.
    let mut on_one = one.read(|tx| tx.request("A")).unwrap().unwrap();
    let mut on_two = two.read(|tx| tx.request("A")).unwrap().unwrap();
    on_one.state = State::Issued;
    on_one.decided_at = Some(T0 + 1);
    one.transact(|tx| tx.save_request(&mut on_one)).unwrap();
    assert_eq!(on_one.version, 1);
    on_two.state = State::Denied;
    on_two.decided_at = Some(T0 + 2);
    let err = two.transact(|tx| tx.save_request(&mut on_two)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let stored = two.read(|tx| tx.request("A")).unwrap().unwrap();
    assert_eq!(stored.state, State::Issued);
    assert_eq!(stored.decided_at, Some(T0 + 1));
    assert_eq!(stored.version, 1);
}

pub fn a_review_position_taken_is_a_conflict(b: &Backend) {
    let (one, two) = (b.open(), b.open());
    one.transact(|tx| {
        tx.insert_request(&request("A", "alice", "two", T0))?;
        tx.append_review("A", 0, &review("bob", T0 + 1))
    })
    .unwrap();
    let err = two
        .transact(|tx| tx.append_review("A", 0, &review("carol", T0 + 2)))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    two.transact(|tx| tx.append_review("A", 1, &review("carol", T0 + 3)))
        .unwrap();
    let stored = one.read(|tx| tx.request("A")).unwrap().unwrap();
    let approvers: Vec<_> = stored.reviews.iter().map(|r| r.approver.as_str()).collect();
    assert_eq!(approvers, ["bob", "carol"]);
}

pub fn a_disabled_users_token_authenticates_nobody(b: &Backend) {
    let (one, two) = (b.open(), b.open());
    one.transact(|tx| {
        tx.insert_user("bob", &["leads".into()], T0)?;
        tx.insert_token("hash-of-bobs-token", "bob", T0)
    })
    .unwrap();
    let caller = two
        .read(|tx| tx.caller_by_token("hash-of-bobs-token", T0 + 5))
        .unwrap()
        .unwrap();
    assert_eq!(caller.name, "bob");
    assert_eq!(caller.groups, ["leads"]);
    assert!(
        one.transact(|tx| tx.set_user_disabled("bob", true))
            .unwrap()
    );
    assert!(
        two.read(|tx| tx.caller_by_token("hash-of-bobs-token", T0 + 6))
            .unwrap()
            .is_none()
    );
    let standing = two
        .read(|tx| tx.token_standing("hash-of-bobs-token"))
        .unwrap()
        .unwrap();
    assert!(standing.user_disabled);
}

pub fn audit_events_from_two_replicas_form_one_chain(b: &Backend) {
    const EACH: usize = 40;
    on_two_replicas(b, 4, |s, t| {
        for i in 0..EACH {
            s.transact(|tx| {
                tx.append_audit(&event(
                    &format!("writer{t}"),
                    "user.added",
                    None,
                    serde_json::json!({ "user": format!("u{t}-{i}") }),
                ))
            })
            .unwrap();
        }
    });
    let s = b.open();
    assert_eq!(chain_length(&s), (8 * EACH) as u64);
    let (seq, _) = s.read(|tx| tx.audit_head()).unwrap().unwrap();
    assert_eq!(seq, (8 * EACH) as u64, "sequence numbers have no gap");
}

pub fn a_serial_is_stored_once(b: &Backend) {
    let (one, two) = (b.open(), b.open());
    one.transact(|tx| {
        tx.insert_request(&request("A", "alice", "db", T0))?;
        tx.insert_request(&request("B", "alice", "db", T0))?;
        tx.insert_certificate(&certificate(42, "A"))
    })
    .unwrap();
    assert!(two.read(|tx| tx.serial_exists(42)).unwrap());
    let again = two.transact(|tx| tx.insert_certificate(&certificate(42, "B")));
    assert!(
        again.is_err(),
        "a second certificate with serial 42 was stored"
    );
    assert!(
        one.read(|tx| tx.certificate_for_request("B"))
            .unwrap()
            .is_none()
    );
    let a = one
        .read(|tx| tx.certificate_by_serial(42))
        .unwrap()
        .unwrap();
    assert_eq!(a.request_id, "A");
    // One certificate per request, too.
    let second = two.transact(|tx| tx.insert_certificate(&certificate(43, "A")));
    assert!(
        second.is_err(),
        "a second certificate for request A was stored"
    );
}

pub fn the_krl_version_only_grows_across_replicas(b: &Backend) {
    let seen = std::sync::Mutex::new(Vec::new());
    let start = b.open().read(|tx| tx.krl_version()).unwrap();
    on_two_replicas(b, 4, |s, _| {
        let mut last = 0;
        for _ in 0..25 {
            let v = s.transact(|tx| tx.bump_krl_version()).unwrap();
            assert!(v > last, "the KRL version went from {last} to {v}");
            last = v;
            seen.lock().unwrap().push(v);
        }
    });
    let seen = seen.into_inner().unwrap();
    let distinct: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "every bump got its own version");
    assert_eq!(*distinct.iter().next().unwrap(), start + 1);
    assert_eq!(b.open().read(|tx| tx.krl_version()).unwrap(), start + 200);
}

pub fn the_pending_cap_holds_across_replicas(b: &Backend) {
    const CAP: u64 = 5;
    let created = AtomicUsize::new(0);
    on_two_replicas(b, 6, |s, t| {
        for i in 0..4 {
            let id = format!("R{t}-{i}");
            let made = s
                .transact(|tx| {
                    if tx.pending_count("mallory")? >= CAP {
                        return Ok::<_, Error>(false);
                    }
                    tx.insert_request(&request(&id, "mallory", "db", T0))?;
                    Ok(true)
                })
                .unwrap();
            if made {
                created.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let s = b.open();
    assert_eq!(created.load(Ordering::SeqCst) as u64, CAP);
    assert_eq!(s.read(|tx| tx.pending_count("mallory")).unwrap(), CAP);
    assert_eq!(s.read(|tx| tx.pending_total()).unwrap(), CAP);
}

pub fn a_delivery_is_claimed_by_one_replica(b: &Backend) {
    const EVENTS: u64 = 60;
    let s = b.open();
    s.transact(|tx| {
        for i in 0..EVENTS {
            tx.append_audit(&event(
                "alice",
                "request.created",
                Some(&format!("Q{i}")),
                serde_json::json!({}),
            ))?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    s.transact(|tx| {
        for row in tx.outbox_waiting(1000)? {
            tx.fan_out(row.seq, &["chat".into()], T0)?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    let claimed = std::sync::Mutex::new(Vec::new());
    on_two_replicas(b, 3, |s, _| {
        loop {
            let got = s
                .transact(|tx| tx.claim_deliveries_to("chat", T0, 4, T0 + 600))
                .unwrap();
            if got.is_empty() {
                break;
            }
            for d in got {
                claimed.lock().unwrap().push(d.event.seq);
                s.transact(|tx| tx.delivery_attempted(d.event.seq, "chat", "delivered", T0, None))
                    .unwrap();
            }
        }
    });
    let mut claimed = claimed.into_inner().unwrap();
    claimed.sort_unstable();
    let distinct: BTreeSet<_> = claimed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a delivery was claimed twice"
    );
    assert_eq!(claimed.len() as u64, EVENTS);
    let counts = s.read(|tx| tx.delivery_counts()).unwrap();
    assert_eq!(counts, [("delivered".to_owned(), EVENTS)]);
    // A claim not attempted is given back and can be claimed again; an unexpired claim
    // cannot.
    s.transact(|tx| {
        tx.append_audit(&event(
            "alice",
            "request.created",
            Some("late"),
            serde_json::json!({}),
        ))?;
        for row in tx.outbox_waiting(10)? {
            tx.fan_out(row.seq, &["chat".into()], T0)?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    let first = s
        .transact(|tx| tx.claim_deliveries_to("chat", T0, 4, T0 + 600))
        .unwrap();
    assert_eq!(first.len(), 1);
    let during = b
        .open()
        .transact(|tx| tx.claim_deliveries_to("chat", T0 + 10, 4, T0 + 610))
        .unwrap();
    assert!(during.is_empty(), "claimed while another replica holds it");
    s.transact(|tx| tx.release_delivery(first[0].event.seq, "chat", T0 + 11))
        .unwrap();
    let again = b
        .open()
        .transact(|tx| tx.claim_deliveries_to("chat", T0 + 11, 4, T0 + 611))
        .unwrap();
    assert_eq!(again.len(), 1);
}

pub fn one_time_values_are_consumed_once_across_replicas(b: &Backend) {
    let s = b.open();
    s.transact(|tx| {
        tx.insert_host_token(
            "host-token-hash",
            &HostTokenRecord {
                id: "htk_1".into(),
                principals: vec!["web1.example.com".into()],
                cert_ttl: None,
                created_by: "sec".into(),
                created_at: T0,
                expires_at: T0 + 3600,
                used_at: None,
                used_serial: None,
            },
        )
    })
    .unwrap();
    let (jti, id_token, host) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    on_two_replicas(b, 4, |s, t| {
        let won = s
            .transact(|tx| {
                Ok::<_, Error>((
                    tx.insert_jti("https://ci.example.com", "jti-1", T0 + 600)?,
                    tx.consume_id_token("id-token-hash", T0 + 600)?,
                    tx.use_host_token("host-token-hash", T0, 1000 + t as u64)?,
                ))
            })
            .unwrap();
        jti.fetch_add(usize::from(won.0), Ordering::SeqCst);
        id_token.fetch_add(usize::from(won.1), Ordering::SeqCst);
        host.fetch_add(usize::from(won.2), Ordering::SeqCst);
    });
    assert_eq!(
        jti.into_inner(),
        1,
        "a workload token id was accepted twice"
    );
    assert_eq!(id_token.into_inner(), 1, "an ID token was consumed twice");
    assert_eq!(host.into_inner(), 1, "a host join token was used twice");
}

pub fn listings_filter_the_same_way(b: &Backend) {
    let s = b.open();
    s.transact(|tx| {
        tx.insert_user("alice", &[], T0)?;
        for (i, (who, role)) in [
            ("alice", "db"),
            ("alice", "web"),
            ("carol", "db"),
            ("carol", "ops"),
        ]
        .iter()
        .enumerate()
        {
            let id = format!("L{i}");
            tx.insert_request(&request(&id, who, role, T0 + i as u64))?;
            tx.append_audit(&event(
                who,
                "request.created",
                Some(&id),
                serde_json::json!({}),
            ))?;
        }
        tx.append_audit(&event(
            "op",
            "user.token_issued",
            None,
            serde_json::json!({ "user": "alice" }),
        ))?;
        tx.append_audit(&event(
            "op",
            "user.token_issued",
            None,
            serde_json::json!({ "user": "dave" }),
        ))
    })
    .unwrap();
    let ids = |f: RequestFilter| -> Vec<String> {
        s.read(|tx| tx.requests(&f))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    // Newest first; a viewer sees their own and the roles they approve.
    let visible = RequestFilter {
        visible_to: Some(("alice".into(), vec!["ops".into()])),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(visible.clone()), ["L3", "L1", "L0"]);
    assert_eq!(
        ids(RequestFilter {
            pending_only: true,
            ..visible
        }),
        ["L3", "L1", "L0"]
    );
    assert_eq!(
        ids(RequestFilter {
            requester: Some("carol".into()),
            limit: 1,
            ..Default::default()
        }),
        ["L3"]
    );
    let page = |f: AuditFilter| -> Vec<(String, String)> {
        s.read(|tx| tx.audit_page(&f))
            .unwrap()
            .into_iter()
            .map(|r| (r.event.actor, r.event.action))
            .collect()
    };
    let alices = page(AuditFilter {
        user: Some("alice".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(
        alices,
        [
            ("alice".to_owned(), "request.created".to_owned()),
            ("alice".to_owned(), "request.created".to_owned()),
            ("op".to_owned(), "user.token_issued".to_owned()),
        ]
    );
    let of_request = page(AuditFilter {
        request_id: Some("L2".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(
        of_request,
        [("carol".to_owned(), "request.created".to_owned())]
    );
    assert_eq!(
        page(AuditFilter {
            limit: 2,
            ..Default::default()
        })
        .len(),
        2
    );
}

/// A million audit events: appended in transactions of 10,000 (statements of 1,000
/// rows), then read back whole
/// through the streaming cursor (the chain verifies) and paged by user and by request
/// through the indexes. Prints how long each step took.
pub fn scale(b: &Backend) {
    const EVENTS: u64 = 1_000_000;
    const PER_TX: u64 = 10_000;
    let s = b.open();
    // Nothing delivers webhooks here: no outbox rows.
    s.set_outbox(false);
    let t = Instant::now();
    for chunk in 0..EVENTS / PER_TX {
        let events: Vec<Event> = (chunk * PER_TX..(chunk + 1) * PER_TX)
            .map(|i| {
                Event::new(
                    T0 + i / 1000,
                    &format!("user{}", i % 5000),
                    if i % 4 == 0 {
                        "request.created"
                    } else {
                        "request.approved"
                    },
                    Some(&format!("S{}", i / 4)),
                    serde_json::json!({ "n": i }),
                )
            })
            .collect();
        s.transact(|tx| tx.append_audits(&events)).unwrap();
    }
    let appended = t.elapsed();
    let t = Instant::now();
    assert_eq!(chain_length(&s), EVENTS);
    let verified = t.elapsed();
    let t = Instant::now();
    let page = s
        .read(|tx| {
            tx.audit_page(&AuditFilter {
                user: Some("user42".into()),
                limit: 50,
                ..Default::default()
            })
        })
        .unwrap();
    let by_user = t.elapsed();
    assert_eq!(page.len(), 50);
    assert!(page.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    // user42 is the actor of events 42, 5042, ...: approvals only, so the page is theirs.
    assert!(page.iter().all(|r| r.event.actor == "user42"));
    assert_eq!(
        page.last().unwrap().event.details["n"],
        EVENTS - 5000 + 42,
        "the newest of them"
    );
    let t = Instant::now();
    let of_request = s
        .read(|tx| {
            tx.audit_page(&AuditFilter {
                request_id: Some("S123456".into()),
                limit: 10,
                ..Default::default()
            })
        })
        .unwrap();
    let by_request = t.elapsed();
    assert_eq!(of_request.len(), 4);
    assert!(
        of_request
            .iter()
            .all(|r| r.event.request_id.as_deref() == Some("S123456"))
    );
    eprintln!(
        "scale ({}): {EVENTS} events appended in {:.1} s ({:.0}/s); chain verified in {:.1} s; \
         newest 50 of a user in {:.1} ms; a request's events in {:.1} ms",
        if b.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        appended.as_secs_f64(),
        EVENTS as f64 / appended.as_secs_f64(),
        verified.as_secs_f64(),
        by_user.as_secs_f64() * 1000.0,
        by_request.as_secs_f64() * 1000.0,
    );
}

/// A token's use is recorded at most once per granularity, on every backend (PostgreSQL
/// once refused the statement: it cannot type a difference of two parameters).
pub fn a_tokens_last_use_is_recorded(b: &Backend) {
    let (one, two) = (b.open(), b.open());
    one.transact(|tx| {
        tx.insert_user("erin", &[], T0)?;
        tx.insert_token_with_id("tok-erin", "hash-of-erins-token", "erin", T0, T0 + 3600)
    })
    .unwrap();
    let last_used = |s: &moshca_server::store::Store| {
        s.read(|tx| tx.token_by_id("tok-erin"))
            .unwrap()
            .unwrap()
            .last_used_at
    };
    assert_eq!(last_used(&two), None);
    two.transact(|tx| tx.touch_token("tok-erin", T0 + 10, 60))
        .unwrap();
    assert_eq!(last_used(&one), Some(T0 + 10));
    // Within the granularity: kept as it was.
    one.transact(|tx| tx.touch_token("tok-erin", T0 + 30, 60))
        .unwrap();
    assert_eq!(last_used(&two), Some(T0 + 10));
    // Past it: moved on.
    one.transact(|tx| tx.touch_token("tok-erin", T0 + 70, 60))
        .unwrap();
    assert_eq!(last_used(&two), Some(T0 + 70));
}
