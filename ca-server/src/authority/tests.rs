use super::*;

use ssh_key::{Algorithm, PrivateKey};

const T0: UnixTime = 1_790_000_000;
const DAY: u64 = 86_400;

const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu"]
max_ttl = "1h"
break_glass = { enabled = true, max_ttl = "15m" }

[defaults]
revokers = ["group:security"]
auditors = ["group:audit"]

[[role]]
name = "two"
requesters = ["group:oncall"]
approvers = ["group:leads"]
approvals_required = 2
logins = ["postgres"]

[[role]]
name = "auto"
requesters = ["group:ci"]
approval = "auto"
logins = ["deploy"]
max_ttl = "10m"
force_command = "/bin/deploy"
workloads = [{ issuer = "https://t", claims = { repository = "acme/app", ref = "refs/heads/main" } }]
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authority,
    store: Arc<Store>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate(&dir.path().join("ca"), None, "t").unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    store
        .transact(|tx| {
            tx.insert_user("alice", &["oncall".into(), "leads".into()], 0)?;
            tx.insert_user("bob", &["leads".into()], 0)?;
            tx.insert_user("carol", &["leads".into()], 0)?;
            tx.insert_user("mallory", &["oncall".into()], 0)?;
            tx.insert_user("ci", &["ci".into()], 0)
        })
        .unwrap();
    let policy = Policy::parse(POLICY, "p", DAY).unwrap();
    Fixture {
        auth: Authority::new(store.clone(), signer, policy, 0).unwrap(),
        store,
        _dir: dir,
    }
}

fn who(name: &str, groups: &[&str]) -> Caller {
    Caller {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).into()).collect(),
        proof: crate::auth::Proof::Account,
    }
}

fn alice() -> Caller {
    who("alice", &["oncall", "leads"])
}
fn bob() -> Caller {
    who("bob", &["leads"])
}

fn key() -> String {
    PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap()
}

fn ask(role: &str, principals: &[&str], ttl: Option<u64>) -> NewRequest {
    NewRequest {
        role: role.into(),
        principals: principals.iter().map(|p| (*p).into()).collect(),
        ttl_secs: ttl,
        reason: "INC-4312 replica lag".into(),
        public_key: key(),
        break_glass: false,
    }
}

fn count_requests(f: &Fixture) -> usize {
    f.store
        .read(|tx| {
            tx.requests(&RequestFilter {
                limit: 1000,
                ..Default::default()
            })
        })
        .unwrap()
        .len()
}

fn audit_actions(f: &Fixture) -> Vec<String> {
    f.store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect()
}

#[test]
fn approved_request_issues_exactly_what_was_granted() {
    let f = fixture();
    let v = f
        .auth
        .create_request_at(&alice(), ask("db", &["postgres"], Some(900)), T0)
        .unwrap();
    assert_eq!(v.request.state, State::Pending);
    let v = f
        .auth
        .review_at(&bob(), &v.request.id, Verdict::Approve, None, "ok", T0 + 10)
        .unwrap();
    assert_eq!(v.request.state, State::Issued);
    let cert = v.certificate.unwrap();
    assert_eq!(cert.principals, ["postgres"]);
    assert_eq!(cert.valid_after, T0 + 10 - 60);
    assert_eq!(cert.valid_before, T0 + 10 + 900);
    assert_ne!(cert.serial, 0);
    assert_eq!(
        cert.key_id,
        format!("moshca:req={}:user=alice:role=db:by=bob", v.request.id)
    );
    let parsed = ssh_key::Certificate::from_openssh(&cert.openssh).unwrap();
    assert_eq!(parsed.valid_principals(), ["postgres"]);
    assert_eq!(
        parsed.extensions().keys().collect::<Vec<_>>(),
        ["permit-pty"]
    );
    assert_eq!(
        audit_actions(&f),
        ["request.created", "request.approved", "certificate.issued"]
    );
    assert_eq!(
        crate::audit::verify(f.store.read(|tx| tx.audit_rows()).unwrap()).unwrap(),
        3
    );
}

#[test]
fn requester_holding_approver_group_cannot_approve_own() {
    let f = fixture();
    let v = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap();
    let e = f
        .auth
        .review_at(&alice(), &v.request.id, Verdict::Approve, None, "", T0)
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let still = f.auth.get_request(&alice(), &v.request.id, false).unwrap();
    assert_eq!(still.request.state, State::Pending);
    assert!(audit_actions(&f).contains(&"review.refused".to_owned()));
}

#[test]
fn refusals_store_nothing_but_an_audit_row() {
    let f = fixture();
    let cases = [
        ask("db", &["root"], None),
        ask("db", &["postgres", "root"], None),
        ask("db", &["postgres,root"], None),
        ask("db", &[], Some(7200)),
        ask("db", &[], Some(0)),
        ask("nope", &[], None),
        NewRequest {
            public_key: "ssh-dss AAAA".into(),
            ..ask("db", &[], None)
        },
    ];
    for c in cases {
        assert!(f.auth.create_request_at(&alice(), c, T0).is_err());
    }
    // Not a requester of the role.
    assert!(matches!(
        f.auth.create_request_at(&bob(), ask("db", &[], None), T0),
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(count_requests(&f), 0);
    assert_eq!(audit_actions(&f), vec!["request.refused"; 8]);
}

#[test]
fn two_approvals_needed_and_each_counts_once() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("two", &[], None), T0)
        .unwrap()
        .request
        .id;
    let v = f
        .auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    assert_eq!(v.request.state, State::Pending);
    assert!(matches!(
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0),
        Err(Error::FailedPrecondition(_))
    ));
    let v = f
        .auth
        .review_at(
            &who("carol", &["leads"]),
            &id,
            Verdict::Approve,
            None,
            "",
            T0,
        )
        .unwrap();
    assert_eq!(v.request.state, State::Issued);
    assert!(v.certificate.unwrap().key_id.ends_with("by=bob,carol"));
}

#[test]
fn disabled_earlier_approver_no_longer_counts() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("two", &[], None), T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    f.store
        .transact(|tx| tx.set_user_disabled("bob", true))
        .unwrap();
    let v = f
        .auth
        .review_at(
            &who("carol", &["leads"]),
            &id,
            Verdict::Approve,
            None,
            "",
            T0,
        )
        .unwrap();
    assert_eq!(v.request.state, State::Pending, "bob's approval is stale");
}

#[test]
fn decided_requests_cannot_be_reviewed_again() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Deny, None, "not now", T0)
        .unwrap();
    assert!(matches!(
        f.auth.review_at(
            &who("carol", &["leads"]),
            &id,
            Verdict::Approve,
            None,
            "",
            T0
        ),
        Err(Error::FailedPrecondition(_))
    ));
    let v = f.auth.get_request(&alice(), &id, true).unwrap();
    assert_eq!(v.request.state, State::Denied);
    assert!(v.certificate.is_none());
}

#[test]
fn approve_twice_yields_one_certificate() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    let first = f
        .auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    assert!(
        f.auth
            .review_at(
                &who("carol", &["leads"]),
                &id,
                Verdict::Approve,
                None,
                "",
                T0
            )
            .is_err()
    );
    let a = f
        .auth
        .get_request(&alice(), &id, true)
        .unwrap()
        .certificate
        .unwrap();
    let b = f
        .auth
        .get_request(&alice(), &id, true)
        .unwrap()
        .certificate
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.serial, first.certificate.unwrap().serial);
}

#[test]
fn only_requester_fetches_certificate() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    assert!(matches!(
        f.auth.get_request(&bob(), &id, true),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        f.auth.get_request(&who("mallory", &["oncall"]), &id, false),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn approver_can_shorten_not_lengthen() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], Some(1800)), T0)
        .unwrap()
        .request
        .id;
    assert!(matches!(
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, Some(3600), "", T0),
        Err(Error::InvalidArgument(_))
    ));
    let v = f
        .auth
        .review_at(&bob(), &id, Verdict::Approve, Some(600), "", T0)
        .unwrap();
    let c = v.certificate.unwrap();
    assert_eq!(c.valid_before - T0, 600);
}

#[test]
fn auto_role_issues_at_once_with_force_command() {
    let f = fixture();
    let v = f
        .auth
        .create_request_at(&who("ci", &["ci"]), ask("auto", &[], Some(300)), T0)
        .unwrap();
    assert_eq!(v.request.state, State::Issued);
    let c = v.certificate.unwrap();
    assert!(c.key_id.ends_with(":by=auto"));
    let parsed = ssh_key::Certificate::from_openssh(&c.openssh).unwrap();
    assert_eq!(
        parsed.critical_options().get("force-command").unwrap(),
        "/bin/deploy"
    );
}

#[test]
fn pending_requests_expire_and_cannot_be_approved() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    assert!(matches!(
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0 + 3600),
        Err(Error::FailedPrecondition(_))
    ));
    assert_eq!(f.auth.expire_due_at(T0 + 3599).unwrap(), 0);
    assert_eq!(f.auth.expire_due_at(T0 + 3600).unwrap(), 1);
    let v = f.auth.get_request(&alice(), &id, false).unwrap();
    assert_eq!(v.request.state, State::Expired);
}

#[test]
fn cancel_only_own() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    assert!(matches!(
        f.auth.cancel_at(&bob(), &id, T0),
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(
        f.auth.cancel_at(&alice(), &id, T0).unwrap().request.state,
        State::Cancelled
    );
    assert!(f.auth.cancel_at(&alice(), &id, T0).is_err());
}

#[test]
fn pending_cap_per_requester() {
    let f = fixture();
    for _ in 0..MAX_PENDING_PER_REQUESTER {
        f.auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap();
    }
    assert!(matches!(
        f.auth.create_request_at(&alice(), ask("db", &[], None), T0),
        Err(Error::ResourceExhausted(_))
    ));
    assert_eq!(count_requests(&f), MAX_PENDING_PER_REQUESTER as usize);
}

#[test]
fn policy_change_before_issuance_is_rechecked() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &["ubuntu"], None), T0)
        .unwrap()
        .request
        .id;
    let narrowed = POLICY.replace(
        r#"logins = ["postgres", "ubuntu"]"#,
        r#"logins = ["postgres"]"#,
    );
    f.auth
        .replace_policy(Policy::parse(&narrowed, "p", DAY).unwrap(), T0)
        .unwrap();
    assert!(matches!(
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0),
        Err(Error::FailedPrecondition(_))
    ));
    let v = f.auth.get_request(&alice(), &id, true).unwrap();
    assert_eq!(v.request.state, State::Pending);
    assert!(v.certificate.is_none());
}

#[test]
fn concurrent_approvals_issue_once() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = ["bob", "carol", "bob", "carol"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let auth = &f.auth;
                let id = id.clone();
                s.spawn(move || {
                    let verdict = if i == 3 {
                        Verdict::Deny
                    } else {
                        Verdict::Approve
                    };
                    auth.review_at(&who(name, &["leads"]), &id, verdict, None, "r", T0)
                        .is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    let certs = f.store.read(|tx| tx.certificate_for_request(&id)).unwrap();
    let state = f
        .auth
        .get_request(&alice(), &id, false)
        .unwrap()
        .request
        .state;
    assert_eq!(certs.is_some(), state == State::Issued);
}

fn issued(f: &Fixture, who: Caller) -> CertRecord {
    let id = f
        .auth
        .create_request_at(&who, ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap()
        .certificate
        .unwrap()
}

fn krl_serials(f: &Fixture, now: UnixTime) -> (Vec<u8>, u64) {
    f.auth.krl_at(now).unwrap()
}

#[test]
fn revocation_permissions() {
    let f = fixture();
    let alices = issued(&f, alice());
    let mallorys = issued(&f, who("mallory", &["oncall"]));
    // Another requester may not revoke alice's certificate.
    assert!(matches!(
        f.auth.revoke_at(
            &who("mallory", &["oncall"]),
            RevokeTarget::Serial(alices.serial),
            "x",
            T0
        ),
        Err(Error::PermissionDenied(_))
    ));
    // Nor anyone's by user, nor a key.
    assert!(matches!(
        f.auth.revoke_at(
            &who("mallory", &["oncall"]),
            RevokeTarget::User("alice".into()),
            "x",
            T0
        ),
        Err(Error::PermissionDenied(_))
    ));
    // A requester may revoke their own.
    let r = f
        .auth
        .revoke_at(
            &alice(),
            RevokeTarget::Request(alices.request_id.clone()),
            "lost laptop",
            T0 + 1,
        )
        .unwrap();
    assert_eq!(r.serials, [alices.serial]);
    assert_eq!(r.krl_version, 1);
    // Revoking again changes nothing and keeps the version.
    let again = f
        .auth
        .revoke_at(
            &alice(),
            RevokeTarget::Serial(alices.serial),
            "again",
            T0 + 2,
        )
        .unwrap();
    assert!(again.serials.is_empty());
    assert_eq!(again.krl_version, 1);
    // A global revoker may revoke anyone, and the user is then blocked.
    let sec = who("sam", &["security"]);
    let r = f
        .auth
        .revoke_at(
            &sec,
            RevokeTarget::User("mallory".into()),
            "offboarded",
            T0 + 3,
        )
        .unwrap();
    assert_eq!(r.serials, [mallorys.serial]);
    assert!(
        f.store
            .read(|tx| tx.user("mallory"))
            .unwrap()
            .unwrap()
            .disabled
    );
    assert!(matches!(
        f.auth
            .revoke_at(&sec, RevokeTarget::Serial(alices.serial), "", T0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        f.auth.revoke_at(&sec, RevokeTarget::Serial(12345), "x", T0),
        Err(Error::NotFound(_))
    ));
    let actions = audit_actions(&f);
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "certificate.revoked")
            .count(),
        3
    );
    // Two policy refusals and the unknown serial; a missing reason is malformed input.
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "revocation.refused")
            .count(),
        3
    );
}

#[test]
fn revoked_key_cannot_get_new_certificates() {
    let f = fixture();
    let req = ask("db", &[], None);
    let key = req.public_key.clone();
    let id = f
        .auth
        .create_request_at(&alice(), req, T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    let r = f
        .auth
        .revoke_at(
            &who("sam", &["security"]),
            RevokeTarget::PublicKey(key.clone()),
            "stolen",
            T0,
        )
        .unwrap();
    assert_eq!(r.serials.len(), 1);
    let again = NewRequest {
        public_key: key,
        ..ask("db", &[], None)
    };
    assert!(matches!(
        f.auth.create_request_at(&alice(), again, T0),
        Err(Error::PermissionDenied(m)) if m.contains("revoked")
    ));
}

#[test]
fn krl_lists_only_revoked_unexpired_certificates() {
    let f = fixture();
    let a = issued(&f, alice());
    let b = issued(&f, who("mallory", &["oncall"]));
    let (empty, v0) = krl_serials(&f, T0);
    assert_eq!(v0, 0);
    f.auth
        .revoke_at(&alice(), RevokeTarget::Serial(a.serial), "x", T0)
        .unwrap();
    let (one, v1) = krl_serials(&f, T0);
    assert_eq!(v1, 1);
    assert!(one.len() > empty.len());
    assert!(one.windows(8).any(|w| w == a.serial.to_be_bytes()));
    assert!(!one.windows(8).any(|w| w == b.serial.to_be_bytes()));
    // Once the certificate expired it drops out of the KRL.
    let (later, _) = krl_serials(&f, a.valid_before);
    assert_eq!(later.len(), empty.len());
}

#[test]
fn key_revoked_while_pending_is_not_certified() {
    let f = fixture();
    let req = ask("db", &[], None);
    let key = req.public_key.clone();
    let id = f
        .auth
        .create_request_at(&alice(), req, T0)
        .unwrap()
        .request
        .id;
    f.auth
        .revoke_at(
            &who("sam", &["security"]),
            RevokeTarget::PublicKey(key),
            "leaked",
            T0,
        )
        .unwrap();
    assert!(matches!(
        f.auth.review_at(&bob(), &id, Verdict::Approve, None, "", T0),
        Err(Error::FailedPrecondition(m)) if m.contains("revoked")
    ));
    assert!(
        f.store
            .read(|tx| tx.certificate_for_request(&id))
            .unwrap()
            .is_none()
    );
}

fn workload(repo: &str, r: &str, jti: &str) -> WorkloadIdentity {
    WorkloadIdentity {
        issuer: "https://t".into(),
        subject: format!("repo:{repo}:ref:{r}"),
        audiences: vec!["moshca".into()],
        jti: jti.into(),
        expires_at: T0 + 300,
        claims: serde_json::json!({"repository": repo, "ref": r, "run_id": "77"})
            .as_object()
            .unwrap()
            .clone(),
    }
}

#[test]
fn workload_gets_an_auto_certificate_bound_to_its_claims() {
    let f = fixture();
    let wl = workload("acme/app", "refs/heads/main", "j1");
    let v = f
        .auth
        .create_workload_request_at(
            &wl,
            NewRequest {
                reason: String::new(),
                ..ask("auto", &[], Some(300))
            },
            T0,
        )
        .unwrap();
    let c = v.certificate.unwrap();
    assert!(
        c.key_id
            .contains(":iss=https://t:repo=acme/app:run=77:role=auto:by=auto"),
        "{}",
        c.key_id
    );
    assert_eq!(c.principals, ["deploy"]);
    assert_eq!(c.valid_before - T0, 300);
    // The same token again is a replay.
    assert!(matches!(
        f.auth.create_workload_request_at(&wl, ask("auto", &[], None), T0),
        Err(Error::Unauthenticated(m)) if m.contains("jti")
    ));
}

#[test]
fn workload_refusals() {
    let f = fixture();
    for (wl, role) in [
        (workload("acme/other", "refs/heads/main", "a"), "auto"),
        (workload("acme/app", "refs/heads/dev", "b"), "auto"),
        (workload("acme/app", "refs/heads/main", "c"), "db"),
        (workload("acme/app", "refs/heads/main", "d"), "missing"),
    ] {
        assert!(
            matches!(
                f.auth
                    .create_workload_request_at(&wl, ask(role, &[], None), T0),
                Err(Error::PermissionDenied(_))
            ),
            "{role} {:?}",
            wl.claims
        );
    }
    assert!(matches!(
        f.auth.create_workload_request_at(&workload("acme/app", "refs/heads/main", "e"), ask("auto", &[], Some(3600)), T0),
        Err(Error::PermissionDenied(m)) if m.contains("max_ttl")
    ));
    assert_eq!(count_requests(&f), 0);
    assert_eq!(audit_actions(&f), vec!["request.refused"; 5]);
}

#[test]
fn concurrent_replays_issue_once() {
    let f = fixture();
    let wl = workload("acme/app", "refs/heads/main", "same");
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    f.auth
                        .create_workload_request_at(&wl, ask("auto", &[], None), T0)
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(ok, 1);
    assert_eq!(count_requests(&f), 1);
}

fn glass(ttl: Option<u64>) -> NewRequest {
    NewRequest {
        break_glass: true,
        ..ask("db", &["postgres"], ttl)
    }
}

#[test]
fn break_glass_issues_at_once_capped_flagged_and_reviewable() {
    let f = fixture();
    let v = f.auth.create_request_at(&alice(), glass(None), T0).unwrap();
    assert_eq!(v.request.state, State::Issued);
    assert!(v.request.break_glass);
    let c = v.certificate.unwrap();
    assert_eq!(
        c.valid_before - T0,
        15 * 60,
        "capped by break_glass.max_ttl"
    );
    assert!(c.key_id.ends_with(":by=break-glass"), "{}", c.key_id);
    assert!(audit_actions(&f).contains(&"request.break_glass".to_owned()));
    let unreviewed = f.auth.list_requests(&bob(), false, false, true, 0).unwrap();
    assert_eq!(unreviewed.len(), 1);
    // The requester cannot review their own, not even holding the approver group.
    assert!(matches!(
        f.auth
            .review_break_glass_at(&alice(), &v.request.id, "fine", T0),
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        f.auth.review_break_glass_at(&bob(), &v.request.id, "", T0),
        Err(Error::InvalidArgument(_))
    ));
    let r = f
        .auth
        .review_break_glass_at(&bob(), &v.request.id, "INC-1 was real", T0 + 5)
        .unwrap();
    assert_eq!(r.request.break_glass_review.unwrap().approver, "bob");
    assert!(
        f.auth
            .list_requests(&bob(), false, false, true, 0)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        f.auth
            .review_break_glass_at(&who("carol", &["leads"]), &v.request.id, "again", T0),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn break_glass_limits() {
    let f = fixture();
    assert!(matches!(
        f.auth.create_request_at(&alice(), glass(Some(16 * 60)), T0),
        Err(Error::PermissionDenied(m)) if m.contains("break_glass.max_ttl")
    ));
    let two = NewRequest {
        break_glass: true,
        ..ask("two", &[], None)
    };
    assert!(matches!(
        f.auth.create_request_at(&alice(), two, T0),
        Err(Error::PermissionDenied(m)) if m.contains("does not allow break-glass")
    ));
    assert_eq!(count_requests(&f), 0);
}

#[test]
fn only_auditors_read_the_audit_trail() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    assert!(matches!(
        f.auth.audit_events(&alice(), None, None, 0, 0),
        Err(Error::PermissionDenied(_))
    ));
    let auditor = who("ann", &["audit"]);
    let all = f
        .auth
        .audit_events(&auditor, None, Some(&id), 0, 0)
        .unwrap();
    assert_eq!(all.len(), 3);
    let by_alice = f
        .auth
        .audit_events(&auditor, Some("alice"), None, 0, 0)
        .unwrap();
    assert_eq!(
        by_alice.len(),
        3,
        "events about alice's requests count as hers"
    );
    let last = f.auth.audit_events(&auditor, None, None, 0, 1).unwrap();
    assert_eq!(last[0].event.action, "certificate.issued");
}

#[test]
fn checkpoints_catch_a_cut_tail() {
    let f = fixture();
    let id = f
        .auth
        .create_request_at(&alice(), ask("db", &[], None), T0)
        .unwrap()
        .request
        .id;
    assert_eq!(f.auth.checkpoint_at(T0).unwrap(), Some(1));
    assert_eq!(f.auth.checkpoint_at(T0).unwrap(), None, "nothing new");
    f.auth
        .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
        .unwrap();
    assert_eq!(f.auth.checkpoint_at(T0).unwrap(), Some(3));
    assert_eq!(verify_audit(&f.store).unwrap().unwrap(), (3, 2));
    f.store
        .transact(|tx| tx.append_audit(&Event::new(T0, "x", "y.z", None, json!({}))))
        .unwrap();
    // Unsigned tail events are fine until cut below a checkpoint.
    assert_eq!(verify_audit(&f.store).unwrap().unwrap().0, 4);
}

#[test]
fn a_presigned_certificate_whose_serial_was_taken_is_signed_again_with_a_free_one() {
    let f = fixture();
    let ci = who("ci", &["ci"]);
    // An issued certificate owns serial `taken`.
    let first = f
        .auth
        .create_request_at(&ci, ask("auto", &["deploy"], None), T0)
        .unwrap();
    let taken = first.certificate.unwrap().serial;
    // A second auto request, signed before its transaction with that same serial.
    let policy = f.auth.policy();
    let role = policy.role("auto").unwrap();
    let new = ask("auto", &["deploy"], None);
    let subject = PublicKey::from_openssh(&new.public_key).unwrap();
    let request = Request {
        id: "01SECOND".into(),
        requester: "ci".into(),
        role: "auto".into(),
        principals: vec!["deploy".into()],
        ttl_secs: 600,
        reason: new.reason.clone(),
        public_key: new.public_key.clone(),
        fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
        state: State::Pending,
        created_at: T0,
        expires_at: T0 + 3600,
        decided_at: None,
        approvals_required: 0,
        reviews: Vec::new(),
        break_glass: false,
        break_glass_review: None,
        version: 0,
    };
    let ready = Ready::without_approval(request);
    let signed = f.auth.sign(&ready, role, &policy, T0, "", taken).unwrap();
    assert_eq!(signed.record.serial, taken);
    let (_, cert) = f
        .store
        .transact(|tx| f.auth.issue_presigned(tx, ready, signed))
        .unwrap();
    assert_ne!(cert.serial, taken, "a taken serial was issued twice");
    // The stored text is a certificate signed over the new serial, not the old one.
    let parsed = ssh_key::Certificate::from_openssh(&cert.openssh).unwrap();
    assert_eq!(parsed.serial(), cert.serial);
    let ca = f.auth.signer().public_key().clone();
    parsed
        .validate_at(T0 + 1, [&ca.fingerprint(HashAlg::Sha256)])
        .unwrap();
    let stored = f
        .store
        .read(|tx| tx.certificate_by_serial(cert.serial))
        .unwrap()
        .unwrap();
    assert_eq!(stored.request_id, "01SECOND");
}

#[test]
fn a_retired_ca_key_is_refused_as_a_subject_key_and_the_refusal_is_audited() {
    let f = fixture();
    let old = f.auth.signer().public_key().to_openssh().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let next = Signer::generate(&dir.path().join("ca2"), None, "t").unwrap();
    assert!(f.auth.replace_signer(next, T0).unwrap());
    let ci = who("ci", &["ci"]);
    for role in ["auto", "db"] {
        let caller = if role == "auto" { ci.clone() } else { alice() };
        let logins: &[&str] = if role == "auto" {
            &["deploy"]
        } else {
            &["postgres"]
        };
        let mut new = ask(role, logins, None);
        new.public_key = old.clone();
        let before = count_requests(&f);
        let err = f.auth.create_request_at(&caller, new, T0).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("CA's own key")),
            "{role}: {err:?}"
        );
        assert_eq!(count_requests(&f), before, "{role}: a request was stored");
    }
    let refused = audit_actions(&f)
        .iter()
        .filter(|a| *a == "request.refused")
        .count();
    assert_eq!(refused, 2);
}

#[test]
fn a_watch_wakes_only_for_its_own_request_and_never_misses_a_change() {
    let f = fixture();
    let a = f
        .auth
        .create_request_at(&alice(), ask("db", &["postgres"], None), T0)
        .unwrap();
    let b = f
        .auth
        .create_request_at(&alice(), ask("db", &["postgres"], None), T0)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let woke = |w: &Watch| {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), w.changed())
                .await
                .is_ok()
        })
    };
    let watch_a = f.auth.watch(&a.request.id);
    // A change of another request does not wake it.
    f.auth
        .review_at(&bob(), &b.request.id, Verdict::Deny, None, "no", T0 + 1)
        .unwrap();
    assert!(!woke(&watch_a), "woken by another request's change");
    // Its own change, made before anyone waits, is still seen.
    f.auth
        .review_at(&bob(), &a.request.id, Verdict::Approve, None, "", T0 + 2)
        .unwrap();
    assert!(woke(&watch_a), "a change made before the wait was missed");
    assert!(!woke(&watch_a), "one change woke it twice");
    // A dropped watch leaves nothing registered.
    drop(watch_a);
    assert!(f.auth.watchers.lock().unwrap().is_empty());
}

#[test]
fn the_pending_cap_holds_back_waiting_requests_but_not_one_issued_at_once() {
    let f = fixture();
    let both = who("ci", &["ci", "oncall"]);
    for _ in 0..MAX_PENDING_PER_REQUESTER {
        f.auth
            .create_request_at(&both, ask("db", &["postgres"], None), T0)
            .unwrap();
    }
    let err = f
        .auth
        .create_request_at(&both, ask("db", &["postgres"], None), T0)
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err:?}");
    // An auto-approved request adds no pending row, so the cap does not apply to it.
    let view = f
        .auth
        .create_request_at(&both, ask("auto", &["deploy"], None), T0)
        .unwrap();
    assert_eq!(view.request.state, State::Issued);
    assert!(view.certificate.is_some());
}

/// Whether `krl` lists `serial` (a one-serial section is a serial list: its 8 bytes).
fn lists(krl: &[u8], serial: u64) -> bool {
    krl.windows(8).any(|w| w == serial.to_be_bytes())
}

#[test]
fn the_cached_krl_is_rebuilt_by_every_revocation_and_rotation_and_once_a_minute() {
    let f = fixture();
    let sec = who("sam", &["security"]);
    let first = issued(&f, alice());
    let second = issued(&f, who("mallory", &["oncall"]));
    f.auth
        .revoke_at(&sec, RevokeTarget::Serial(first.serial), "x", T0 + 1)
        .unwrap();
    let (a, v1) = f.auth.krl_at(T0 + 2).unwrap();
    assert!(lists(&a, first.serial) && !lists(&a, second.serial));
    // Nothing changed: the same bytes (its generated_at still T0 + 2), not a rebuild.
    let (b, _) = f.auth.krl_at(T0 + 30).unwrap();
    assert_eq!(a, b);
    // A revocation is in the very next KRL, however fresh the cached one is.
    f.auth
        .revoke_at(&sec, RevokeTarget::Serial(second.serial), "x", T0 + 31)
        .unwrap();
    let (c, v2) = f.auth.krl_at(T0 + 32).unwrap();
    assert!(v2 > v1);
    assert!(lists(&c, first.serial) && lists(&c, second.serial));
    // A minute on, it is rebuilt (a new generated_at) though nothing was revoked.
    let (d, _) = f.auth.krl_at(T0 + 32 + KRL_REBUILD_AFTER).unwrap();
    assert_ne!(c, d);
    assert!(lists(&d, first.serial) && lists(&d, second.serial));
    // A new CA key changes the sections: rebuilt at once.
    let dir = tempfile::tempdir().unwrap();
    let next = Signer::generate(&dir.path().join("ca2"), None, "t").unwrap();
    let (e, _) = f.auth.krl_at(T0 + 33 + KRL_REBUILD_AFTER).unwrap();
    assert_eq!(d, e);
    assert!(
        f.auth
            .replace_signer(next, T0 + 34 + KRL_REBUILD_AFTER)
            .unwrap()
    );
    let (g, _) = f.auth.krl_at(T0 + 35 + KRL_REBUILD_AFTER).unwrap();
    assert_ne!(e, g);
    assert!(lists(&g, first.serial) && lists(&g, second.serial));
}
