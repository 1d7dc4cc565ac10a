//! Two replicas on one PostgreSQL database, in this process: two data directories (the
//! second joined with the first one's CA key), two `server::open`s, two `Authority`s
//! sharing nothing but the database. The races of the adversarial suite, spread over
//! both: one approval yields one certificate, and a disabled user gets nothing after the
//! disable event, whichever replica signs.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use moshca_server::approvals::Verdict;
use moshca_server::auth::{Caller, Token};
use moshca_server::authority::{Authority, NewRequest, RevokeTarget};
use moshca_server::config::Config;
use moshca_server::store::Store;
use moshca_server::{clock, init, server, users};
use ssh_key::{Algorithm, PrivateKey};

const POLICY: &str = r#"
[defaults]
revokers = ["group:security"]

[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"

[[role]]
name = "auto"
requesters = ["group:oncall"]
approval = "auto"
logins = ["postgres"]
max_ttl = "1h"
"#;

const APPROVERS: usize = 20;

struct Replicas {
    _dir: tempfile::TempDir,
    a: Arc<Authority>,
    b: Arc<Authority>,
    store: Store,
    tokens: std::collections::HashMap<String, String>,
}

impl Replicas {
    /// Replica A makes the database, B joins it; both are opened as `serve` would.
    fn start() -> Option<Replicas> {
        let cluster = moshca_test_postgres::shared()?;
        let url = cluster.fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
        let (ad, bd, u) = (a_dir, b_dir, url);
        let (a, b, store, tokens) = {
            let now = clock::now();
            init::init_with(
                &ad,
                &init::Options {
                    database: Some(u.clone()),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
            init::init_with(
                &bd,
                &init::Options {
                    database: Some(u),
                    ca_key: Some(ad.join("ca_key")),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
            let (ca, cb) = (configure(&ad), configure(&bd));
            let store = Store::open(&ca.database).unwrap();
            let mut tokens = std::collections::HashMap::new();
            let mut people: Vec<(String, Vec<String>)> = vec![
                ("alice".into(), vec!["oncall".into()]),
                ("mallory".into(), vec!["oncall".into()]),
                ("sec".into(), vec!["security".into()]),
            ];
            people.extend((0..APPROVERS).map(|i| (format!("lead{i}"), vec!["leads".into()])));
            for (name, groups) in people {
                let token = users::add(&store, &name, &groups, now).unwrap();
                tokens.insert(name, token.expose().to_owned());
            }
            let a = server::open(&ca, None).unwrap().authority;
            let b = server::open(&cb, None).unwrap().authority;
            (a, b, store, tokens)
        };
        Some(Replicas {
            _dir: dir,
            a,
            b,
            store,
            tokens,
        })
    }

    fn replica(&self, i: usize) -> Arc<Authority> {
        if i.is_multiple_of(2) {
            self.a.clone()
        } else {
            self.b.clone()
        }
    }

    /// `who`, authenticated by replica `i`.
    fn caller(&self, who: &str, i: usize) -> Caller {
        self.replica(i)
            .authenticate_at(
                &Token::from_presented(&self.tokens[who]),
                "127.0.0.1",
                clock::now(),
            )
            .unwrap()
    }

    fn audit_verifies(&self) -> usize {
        let rows = self.store.read(|tx| tx.audit_rows()).unwrap();
        let n = rows.len();
        moshca_server::audit::verify(rows).unwrap();
        n
    }
}

fn configure(dir: &Path) -> Config {
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    Config::load(dir).unwrap()
}

fn new_request(role: &str) -> NewRequest {
    NewRequest {
        role: role.into(),
        principals: vec![],
        ttl_secs: Some(600),
        reason: "INC-4312 replica lag".into(),
        public_key: PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap(),
        break_glass: false,
    }
}

#[test]
fn twenty_approvals_over_two_replicas_issue_one_certificate() {
    let Some(r) = Replicas::start() else {
        return;
    };
    let r = Arc::new(r);
    for round in 0..10 {
        let alice = r.caller("alice", round);
        let created = r
            .replica(round)
            .create_request_at(&alice, new_request("db"), clock::now())
            .unwrap();
        let id = created.request.id.clone();
        let start = Arc::new(std::sync::Barrier::new(APPROVERS));
        let approvers: Vec<_> = (0..APPROVERS)
            .map(|i| {
                let (r, id, start) = (r.clone(), id.clone(), start.clone());
                std::thread::spawn(move || {
                    let lead = r.caller(&format!("lead{i}"), i);
                    start.wait();
                    r.replica(i)
                        .review_at(&lead, &id, Verdict::Approve, None, "", clock::now())
                        .is_ok()
                })
            })
            .collect();
        let outcomes: Vec<bool> = approvers.into_iter().map(|t| t.join().unwrap()).collect();
        let won = outcomes.iter().filter(|ok| **ok).count();
        assert_eq!(won, 1, "round {round}: {won} approvals succeeded");
        let certs = r.store.read(|tx| tx.certificate_for_request(&id)).unwrap();
        assert!(certs.is_some(), "round {round}: no certificate");
        let issued = r
            .store
            .read(|tx| tx.audit_rows())
            .unwrap()
            .into_iter()
            .filter(|row| {
                row.event.action == "certificate.issued"
                    && row.event.request_id.as_deref() == Some(id.as_str())
            })
            .count();
        assert_eq!(issued, 1, "round {round}: issuance events");
    }
    assert!(r.audit_verifies() > 10);
}

#[test]
fn a_user_disabled_on_one_replica_gets_no_certificate_from_either() {
    let Some(r) = Replicas::start() else {
        return;
    };
    let r = Arc::new(r);
    const ROUNDS: usize = 6;
    const THREADS: usize = 16;
    let mut before = 0;
    for round in 0..ROUNDS {
        users::set_disabled(&r.store, "mallory", false, clock::now()).unwrap();
        let revoked = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        // Each thread authenticates once on its replica and keeps issuing with that
        // caller: the window between authenticating and signing.
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (r, revoked, issued) = (r.clone(), revoked.clone(), issued.clone());
                let mallory = r.caller("mallory", i);
                std::thread::spawn(move || {
                    let a = r.replica(i);
                    let (mut after, mut tries_after) = (0, 0);
                    while tries_after < 5 {
                        let done = revoked.load(Ordering::SeqCst);
                        tries_after += usize::from(done);
                        match a.create_request_at(&mallory, new_request("auto"), clock::now()) {
                            Ok(_) if done => after += 1,
                            Ok(_) => {
                                issued.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => break,
                        }
                    }
                    after
                })
            })
            .collect();
        let until = Instant::now() + Duration::from_secs(20);
        while issued.load(Ordering::SeqCst) < THREADS && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let sec = r.caller("sec", round);
        r.replica(round)
            .revoke_at(
                &sec,
                RevokeTarget::User("mallory".into()),
                "INC-4400 account compromised",
                clock::now(),
            )
            .unwrap();
        revoked.store(true, Ordering::SeqCst);
        let after: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(
            after, 0,
            "round {round}: issued after the revocation returned"
        );
        let rows = r.store.read(|tx| tx.audit_rows()).unwrap();
        let cutoff = rows
            .iter()
            .rev()
            .find(|row| {
                row.event.action == "certificate.revoked"
                    && row.event.details["target"]["user"] == "mallory"
            })
            .unwrap()
            .seq;
        let mallorys = |row: &&moshca_server::audit::Row| {
            row.event.action == "certificate.issued"
                && row.event.details["key_id"]
                    .as_str()
                    .is_some_and(|k| k.contains(":user=mallory:"))
        };
        let late: Vec<_> = rows
            .iter()
            .filter(mallorys)
            .filter(|row| row.seq > cutoff)
            .map(|row| row.seq)
            .collect();
        assert!(
            late.is_empty(),
            "round {round}: issued after the disable event: {late:?}"
        );
        before = rows.iter().filter(mallorys).count();
        let live = r
            .store
            .read(|tx| tx.live_certificates_of("mallory", clock::now()))
            .unwrap();
        assert!(live.iter().all(|c| c.revoked_at.is_some()), "round {round}");
    }
    assert!(
        before > ROUNDS,
        "the race was exercised: {before} certificates"
    );
    r.audit_verifies();
}

#[test]
fn a_replica_serving_another_policy_is_told() {
    let Some(r) = Replicas::start() else {
        return;
    };
    // Both opened with the same policy.toml: each recorded its digest, and they agree.
    let loaded: Vec<String> = r
        .store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .filter(|row| row.event.action == "policy.loaded")
        .map(|row| row.event.details["sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    assert_eq!(loaded[0], loaded[1]);
    // A replica reloading another policy learns the one the others serve.
    let told = r.b.note_policy_digest("another", clock::now()).unwrap();
    assert_eq!(told.as_deref(), Some(loaded[1].as_str()));
    assert_eq!(
        r.a.note_policy_digest("another", clock::now()).unwrap(),
        None
    );
}

#[test]
fn two_replicas_sign_one_checkpoint_per_interval() {
    let Some(r) = Replicas::start() else {
        return;
    };
    let checkpoints = || r.store.read(|tx| tx.audit_rows()).unwrap().len();
    let count = || {
        let mut n = 0;
        r.store
            .read(|tx| {
                tx.for_each_checkpoint(|_| {
                    n += 1;
                    Ok::<_, moshca_server::store::Error>(())
                })
            })
            .unwrap();
        n
    };
    let t = clock::now() + 100;
    let before = count();
    // New events, then both replicas' periodic ticks within one interval: one signs.
    users::add(&r.store, "newcomer", &["oncall".into()], t).unwrap();
    let a = r.a.periodic_checkpoint_at(t).unwrap();
    let b = r.b.periodic_checkpoint_at(t + 3).unwrap();
    assert!(a.is_some(), "the first tick signs the new head");
    assert_eq!(
        b, None,
        "the other replica's tick in the same interval signs nothing"
    );
    assert_eq!(count(), before + 1);
    // The next interval: whichever replica ticks first signs again.
    users::add(&r.store, "later", &["oncall".into()], t + 11).unwrap();
    let b = r.b.periodic_checkpoint_at(t + 12).unwrap();
    assert_eq!(
        b,
        Some(checkpoints() as u64),
        "B signs the head of the next interval"
    );
    assert_eq!(r.a.periodic_checkpoint_at(t + 13).unwrap(), None);
    assert_eq!(count(), before + 2);
}

#[test]
fn joining_with_another_ca_key_or_none_is_refused_and_writes_nothing() {
    let Some(cluster) = moshca_test_postgres::shared() else {
        return;
    };
    let url = cluster.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let options = |ca_key: Option<std::path::PathBuf>| init::Options {
        database: Some(url.clone()),
        ca_key,
        ..Default::default()
    };
    init::init_with(&first, &options(None), clock::now()).unwrap();
    // A key of another CA.
    let stranger = dir.path().join("stranger");
    init::init(&stranger, None, clock::now()).unwrap();
    let second = dir.path().join("second");
    let err = init::init_with(
        &second,
        &options(Some(stranger.join("ca_key"))),
        clock::now(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("refusing --ca-key"), "{err}");
    assert!(
        !err.contains(cluster.password()),
        "the password leaked: {err}"
    );
    assert!(!second.exists(), "a refused join left {}", second.display());
    // No key at all: the database is in use.
    let err = init::init_with(&second, &options(None), clock::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already serves a CA") && err.contains("--ca-key"),
        "{err}"
    );
    assert!(!second.exists());
    // The first replica's key joins, and its public key is the same.
    init::init_with(&second, &options(Some(first.join("ca_key"))), clock::now()).unwrap();
    assert_eq!(
        std::fs::read_to_string(first.join("ca_key.pub")).unwrap(),
        std::fs::read_to_string(second.join("ca_key.pub")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(first.join("host_ca_key.pub")).unwrap(),
        std::fs::read_to_string(second.join("host_ca_key.pub")).unwrap()
    );
}
