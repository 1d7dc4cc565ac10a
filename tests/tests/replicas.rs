//! Two `moshca-server` replicas over one real PostgreSQL database: a request made through
//! one replica and approved through the other, a replica SIGKILLed under load, a
//! failover of the database to a promoted synchronous standby under load, twenty approvals
//! racing over both replicas, and a user disabled while issuing through both.
//!
//! Load goes over gRPC straight from the test (the `moshca` CLI would measure process
//! start-up, not the CA); every acknowledged certificate is then looked up in the database
//! with psql. The figures (watch wake-up latency, time without service, promote time, load
//! rates) are printed to stderr: run with `--nocapture` to see them.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use moshca_e2e::{Ca, Identity, LOGIN, SshAgent, Sshd, keygen, prerequisites, ssh};
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_proto::v1::{
    AccessRequest, CreateAccessRequestRequest, Decision, ReviewAccessRequestRequest, State,
    WatchAccessRequestRequest, WhoAmIRequest,
};
use moshca_test_postgres::Cluster;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `oncall` needs bob's approval; `burst` is issued at once, for load.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"

[[role]]
name = "burst"
requesters = ["group:load"]
approval = "auto"
logins = ["mcae2e"]
default_ttl = "5m"
max_ttl = "10m"
"#;

const REASON: &str = "INC-7001 replica test";

/// Load clients per replica.
const CLIENTS_PER_REPLICA: usize = 3;

/// Whether the test can run here (OpenSSH, root, the binaries, PostgreSQL); in CI a
/// missing part fails.
fn can_run() -> bool {
    prerequisites() && moshca_test_postgres::available()
}

/// Replica A initialised on `url` with alice, bob and the load users, and replica B joined
/// to it at `url_b`; both serving.
fn replicas(url: &str, url_b: &str) -> (Ca, Ca) {
    let mut a = Ca::init_on_database(POLICY, url);
    a.add_user("alice", &["oncall"]);
    a.add_user("bob", &["sre-leads"]);
    for n in 0..2 * CLIENTS_PER_REPLICA {
        a.add_user(&format!("load{n}"), &["load"]);
    }
    let mut b = Ca::join(&a, POLICY, url_b);
    a.start();
    b.start();
    assert_eq!(
        fs::read_to_string(a.ca_public_key()).expect("A's ca_key.pub"),
        fs::read_to_string(b.ca_public_key()).expect("B's ca_key.pub"),
        "both replicas must sign with one CA key"
    );
    (a, b)
}

/// The database name at the end of a PostgreSQL URL.
fn database_of(url: &str) -> &str {
    let tail = url.rsplit('/').next().expect("a URL has a path");
    tail.split('?').next().unwrap_or(tail)
}

// ---------------------------------------------------------------------------------------
// gRPC

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A lazily connecting client of `ca`, pinning its TLS certificate: a replica that is
/// down fails each call instead of the constructor. Call it inside a tokio runtime.
fn client(ca: &Ca) -> CertificateAuthorityClient<Channel> {
    let pem = fs::read(ca.tls_cert()).expect("read the replica's TLS certificate");
    let channel = Endpoint::from_shared(ca.url().to_owned())
        .expect("replica url")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .expect("tls config")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    CertificateAuthorityClient::new(channel)
}

/// `message` with `token` as bearer credential.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let header = format!("Bearer {token}").parse().expect("token header");
    request.metadata_mut().insert("authorization", header);
    request
}

fn create(role: &str, public_key: &str) -> CreateAccessRequestRequest {
    CreateAccessRequestRequest {
        role: role.to_owned(),
        principals: vec![LOGIN.to_owned()],
        ttl_secs: 0,
        reason: REASON.to_owned(),
        public_key: public_key.to_owned(),
        break_glass: false,
    }
}

/// The OpenSSH public key line of a fresh ed25519 key in `ca`'s scratch directory.
fn public_key(ca: &Ca, name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let key = keygen(ca.scratch(), &format!("{name}{n}"));
    let mut public = key.into_os_string();
    public.push(".pub");
    fs::read_to_string(public)
        .expect("read the public key")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Load

/// One answer a load client got: which replica, when, and the request id and serial of
/// the certificate, or the error.
#[derive(Debug, Clone)]
struct Outcome {
    replica: &'static str,
    at: Instant,
    result: Result<(String, u64), String>,
}

/// Load clients issuing `burst` certificates in loops against both replicas until
/// [`Load::stop`]: [`CLIENTS_PER_REPLICA`] per replica, each with its own user.
struct Load {
    runtime: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(a: &Ca, b: &Ca) -> Load {
        let runtime = runtime();
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let key = public_key(a, "load");
        let mut tasks = Vec::new();
        for (replica, ca, first) in [("A", a, 0), ("B", b, CLIENTS_PER_REPLICA)] {
            for n in first..first + CLIENTS_PER_REPLICA {
                let _entered = runtime.enter();
                let mut client = client(ca);
                let token = ca.token(&format!("load{n}")).to_owned();
                let (stop, outcomes, key) = (stop.clone(), outcomes.clone(), key.clone());
                tasks.push(runtime.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = client
                            .create_access_request(authed(&token, create("burst", &key)))
                            .await;
                        let result = match answer {
                            Ok(r) => {
                                let r = r.into_inner();
                                if r.state == State::Issued as i32 && r.serial != 0 {
                                    Ok((r.id, r.serial))
                                } else {
                                    Err(format!(
                                        "not issued: state {} serial {}",
                                        r.state, r.serial
                                    ))
                                }
                            }
                            Err(status) => {
                                Err(format!("{:?}: {}", status.code(), status.message()))
                            }
                        };
                        let failed = result.is_err();
                        outcomes.lock().expect("outcomes lock").push(Outcome {
                            replica,
                            at: Instant::now(),
                            result,
                        });
                        if failed {
                            // A replica or database that is down: retry, but do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }));
            }
        }
        Load {
            runtime,
            stop,
            outcomes,
            tasks,
        }
    }

    /// Everything answered so far.
    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes lock").clone()
    }

    /// Waits until `ok` holds for the outcomes, failing after `timeout`.
    fn wait_until(&self, timeout: Duration, what: &str, ok: impl Fn(&[Outcome]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(&self.outcomes()) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; errors so far: {:?}",
                errors(&self.outcomes())
                    .into_iter()
                    .take(10)
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients (each finishes the call it is in, at most 30 s) and returns every
    /// answer.
    fn stop(self) -> Vec<Outcome> {
        let Load {
            runtime,
            stop,
            outcomes,
            tasks,
        } = self;
        stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            for task in tasks {
                tokio::time::timeout(Duration::from_secs(40), task)
                    .await
                    .expect("a load client finishes its call within 40 s")
                    .expect("a load client does not panic");
            }
        });
        outcomes.lock().expect("outcomes lock").clone()
    }
}

fn successes<'a>(outcomes: &'a [Outcome], replica: &str) -> Vec<&'a Outcome> {
    outcomes
        .iter()
        .filter(|o| o.replica == replica && o.result.is_ok())
        .collect()
}

fn errors(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", o.replica))
        })
        .collect()
}

/// Certificates per second of `replica` between `from` and `to`.
fn rate(outcomes: &[Outcome], replica: &str, from: Instant, to: Instant) -> f64 {
    let n = successes(outcomes, replica)
        .iter()
        .filter(|o| o.at >= from && o.at <= to)
        .count();
    n as f64 / to.duration_since(from).as_secs_f64().max(1e-3)
}

/// The longest time in milliseconds between two successes of `replica` (`None`: of
/// either) that span a moment of `from..to`.
fn longest_pause(outcomes: &[Outcome], replica: Option<&str>, from: Instant, to: Instant) -> f64 {
    let mut at: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.result.is_ok() && replica.is_none_or(|r| o.replica == r))
        .map(|o| o.at)
        .collect();
    at.sort();
    at.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| millis_between(w[0], w[1]))
        .fold(0.0, f64::max)
}

/// Fails unless every certificate a client got back is in `certificates` (same request
/// id and serial) and has its `certificate.issued` audit event; returns how many.
fn assert_all_stored(outcomes: &[Outcome], psql: impl Fn(&str) -> String) -> usize {
    let stored: HashMap<String, String> =
        psql("SELECT request_id || ' ' || serial FROM certificates")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(id, serial)| (id.to_owned(), serial.to_owned()))
            .collect();
    let audited: HashMap<String, String> = psql(
        "SELECT request_id || ' ' || (details::json->>'serial') FROM audit \
         WHERE action = 'certificate.issued'",
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(id, serial)| (id.to_owned(), serial.to_owned()))
    .collect();
    let mut acknowledged = 0;
    let mut lost = Vec::new();
    for outcome in outcomes {
        let Ok((id, serial)) = &outcome.result else {
            continue;
        };
        acknowledged += 1;
        // The BIGINT column holds the serial's 64 bits as a signed number.
        let as_stored = i64::from_ne_bytes(serial.to_ne_bytes()).to_string();
        if stored.get(id) != Some(&as_stored) || audited.get(id) != Some(&serial.to_string()) {
            lost.push(format!(
                "{} request {id} serial {serial}: certificates has {:?}, audit has {:?}",
                outcome.replica,
                stored.get(id),
                audited.get(id)
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {acknowledged} acknowledged certificates are missing or differ:\n{}",
        lost.len(),
        lost.join("\n")
    );
    acknowledged
}

// ---------------------------------------------------------------------------------------
// A request made on A, approved on B

/// What a background watch ends with: when the decided answer arrived, and that answer.
type Watcher = thread::JoinHandle<Result<(Instant, AccessRequest), String>>;

/// Watches request `id` on `ca` as `token` in a thread; sends `()` once the stream is
/// open (its first, pending answer arrived), then the instant a decided answer arrived.
fn watch_in_background(ca: &Ca, token: &str, id: &str) -> (mpsc::Receiver<()>, Watcher) {
    let (opened, open_rx) = mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut client = rt.block_on(async { client(ca) });
    let (token, id) = (token.to_owned(), id.to_owned());
    let watcher = thread::spawn(move || {
        rt.block_on(async move {
            let request = WatchAccessRequestRequest {
                id,
                include_certificate: false,
            };
            let mut stream = client
                .watch_access_request(authed(&token, request))
                .await
                .map_err(|s| format!("watch: {s:?}"))?
                .into_inner();
            let deadline = Duration::from_secs(30);
            loop {
                let next = tokio::time::timeout(deadline, stream.message())
                    .await
                    .map_err(|_| "the watch sent nothing for 30 s".to_owned())?;
                let message = next
                    .map_err(|s| format!("watch stream: {s:?}"))?
                    .ok_or("the watch ended before a decision")?;
                let at = Instant::now();
                if message.state == State::Pending as i32 {
                    let _ = opened.send(());
                } else {
                    return Ok((at, message));
                }
            }
        })
    });
    (open_rx, watcher)
}

/// Milliseconds of a signed interval `to - from`.
fn millis_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

/// alice requests `oncall` over gRPC on A and watches it there; bob approves over gRPC on
/// B. Returns the milliseconds from B's answer to the wake-up of A's watch (negative: A
/// woke before B's answer reached the test).
fn approval_on_b_wakes_a(a: &Ca, b: &Ca) -> f64 {
    let rt = runtime();
    let key = public_key(a, "fine");
    let request = rt
        .block_on(async {
            client(a)
                .create_access_request(authed(a.token("alice"), create("oncall", &key)))
                .await
        })
        .expect("alice's request on A")
        .into_inner();
    let (opened, watcher) = watch_in_background(a, a.token("alice"), &request.id);
    opened
        .recv_timeout(Duration::from_secs(10))
        .expect("the watch on A opens within 10 s");
    let review = ReviewAccessRequestRequest {
        id: request.id.clone(),
        decision: Decision::Approve as i32,
        ttl_secs: 0,
        comment: String::new(),
    };
    rt.block_on(async {
        client(b)
            .review_access_request(authed(b.token("bob"), review))
            .await
    })
    .expect("bob approves on B");
    let answered = Instant::now();
    let (woke, decided) = watcher
        .join()
        .expect("the watcher does not panic")
        .expect("the watch on A sees the decision");
    assert_eq!(decided.state, State::Issued as i32, "{decided:?}");
    millis_between(answered, woke)
}

#[test]
fn a_request_made_on_a_and_approved_on_b_logs_in() {
    if !can_run() {
        return;
    }
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let (mut a, mut b) = replicas(&url, &url);

    // A user added through B's data directory exists for A too: one database.
    b.add_user("carol", &["sre-leads"]);
    a.share_tokens_from(&b);
    let rt = runtime();
    let me = rt
        .block_on(async {
            client(&a)
                .who_am_i(authed(a.token("carol"), WhoAmIRequest {}))
                .await
        })
        .expect("carol, added through B, is known to A")
        .into_inner();
    assert_eq!(me.name, "carol");

    let sshd = Sshd::start(&a.ca_public_key());
    let agent = SshAgent::start();
    let mut cmd = a.client_with_agent("alice", &agent);
    cmd.args(["login", "--role", "oncall", "--reason", REASON])
        .args(["--principal", LOGIN, "--timeout", "60s"]);
    let mut login = moshca_e2e::Background::spawn(&mut cmd);
    let id = login.wait_for_stderr(Duration::from_secs(30), |line| {
        let rest = line.trim().strip_prefix("moshca: request ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("is waiting").then(|| id.to_owned())
    });

    // A watch of our own on A, to time its wake-up more finely than the login's exit.
    let (opened, watcher) = watch_in_background(&a, a.token("alice"), &id);
    opened
        .recv_timeout(Duration::from_secs(10))
        .expect("the watch on A opens within 10 s");

    // bob approves through B.
    let mut approve = b.client("bob");
    approve.args(["approve", &id]);
    moshca_e2e::run(&mut approve).assert_ok();
    let approved = Instant::now();

    let deadline = approved + Duration::from_secs(30);
    while !login.has_exited() {
        assert!(Instant::now() < deadline, "login on A did not finish");
        thread::sleep(Duration::from_millis(1));
    }
    let login_done = Instant::now();
    let out = login.finish(Duration::from_secs(5));
    out.assert_ok();
    assert!(
        out.stdout
            .contains(&format!("certificate for request {id} added to ssh-agent")),
        "login should report the certificate:\n{out}"
    );
    let (woke, decided) = watcher
        .join()
        .expect("the watcher does not panic")
        .expect("the watch on A sees the decision");
    assert_eq!(decided.state, State::Issued as i32, "{decided:?}");
    let watch_ms = millis_between(approved, woke);
    let login_ms = millis_between(approved, login_done);
    eprintln!(
        "approve on B -> A: watch woke {watch_ms:.1} ms after `moshca approve` returned \
         (negative: before it exited), login finished {login_ms:.1} ms after"
    );
    // The watch also re-reads every 5 s without a notification: a wake-up within 1 s is
    // the NOTIFY from B's commit.
    assert!(
        watch_ms < 1000.0,
        "A's watch woke {watch_ms:.1} ms after the approval on B: no notification?"
    );

    // Finer: approvals over gRPC on B, each timed from B's answer to A's watch.
    let mut samples: Vec<f64> = (0..5).map(|_| approval_on_b_wakes_a(&a, &b)).collect();
    samples.sort_by(f64::total_cmp);
    eprintln!(
        "approve on B (gRPC answer) -> A's watch wake-up, 5 samples: {:?} ms (median {:.1} ms; \
         target 100 ms after B's commit)",
        samples
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        samples[2]
    );
    assert!(
        samples[4] < 1000.0,
        "a watch on A woke more than 1 s after B's answer: {samples:?}"
    );

    // The certificate opens a real sshd through the agent.
    let session = ssh(&sshd, LOGIN, Identity::Agent(&agent), "id");
    session.assert_ok();
    assert!(
        session.stdout.contains(&format!("({LOGIN})")),
        "`id` should run as {LOGIN}:\n{session}"
    );

    // One trail, intact from both data directories, with what was done through each.
    for ca in [&a, &b] {
        let verified = ca.audit_verifies();
        assert!(verified.contains("audit chain intact"), "{verified}");
    }
    let events: Vec<Value> = a
        .admin(&["audit", "export"])
        .assert_ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit export writes JSON lines"))
        .collect();
    let has = |actor: &str, action: &str| {
        events
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["request_id"] == id.as_str())
    };
    assert!(
        has("alice", "request.created") && has("bob", "request.approved"),
        "the trail should hold alice's request (through A) and bob's approval (through B): \
         {events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A replica crashes under load

#[test]
fn sigkill_of_one_replica_under_load_loses_no_acknowledged_certificate() {
    if !can_run() {
        return;
    }
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let database = database_of(&url).to_owned();
    let (mut a, b) = replicas(&url, &url);

    let started = Instant::now();
    let load = Load::start(&a, &b);
    load.wait_until(Duration::from_secs(20), "issuance on both replicas", |o| {
        successes(o, "A").len() >= 20 && successes(o, "B").len() >= 20
    });
    thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    a.kill();
    let gone = Instant::now();
    load.wait_until(
        Duration::from_secs(20),
        "issuance on B after A's crash",
        |o| successes(o, "B").iter().filter(|s| s.at > killed).count() >= 20,
    );
    thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    let stopped = Instant::now();

    // An answer A sent just before it died may still be read a moment after; nothing
    // later than that.
    let late = successes(&outcomes, "A")
        .iter()
        .filter(|s| s.at > gone + Duration::from_millis(500))
        .count();
    assert_eq!(late, 0, "A answered after its SIGKILL");
    let acknowledged = assert_all_stored(&outcomes, |sql| pg.psql(&database, sql));
    eprintln!(
        "SIGKILL of A under load: {acknowledged} acknowledged certificates, all stored; \
         before the kill A {:.1}/s, B {:.1}/s; after it B {:.1}/s; B's longest pause \
         between answers around the kill {:.0} ms; {} errors (A down)",
        rate(&outcomes, "A", started, killed),
        rate(&outcomes, "B", started, killed),
        rate(&outcomes, "B", killed, stopped),
        longest_pause(&outcomes, Some("B"), killed, gone + Duration::from_secs(2)),
        errors(&outcomes).len()
    );
    let b_errors: Vec<String> = errors(&outcomes)
        .into_iter()
        .filter(|e| e.starts_with("B:"))
        .collect();
    assert!(b_errors.is_empty(), "B refused calls: {b_errors:?}");
    for ca in [&a, &b] {
        let verified = ca.audit_verifies();
        assert!(verified.contains("audit chain intact"), "{verified}");
    }
    // Every token used is recorded as used, without a failed write per call (PostgreSQL
    // once refused the statement, so each call wrote, failed and logged a warning).
    let unrecorded = pg.psql(
        &database,
        "SELECT count(*) FROM tokens t JOIN users u ON u.name = t.user_name \
         WHERE u.name LIKE 'load%' AND t.last_used_at IS NULL",
    );
    assert_eq!(unrecorded, "0", "load tokens without last_used_at");
    for (name, ca) in [("A", &a), ("B", &b)] {
        assert!(
            !ca.log()
                .contains("recording when a token was last used failed"),
            "{name} failed to record a token's use:\n{}",
            ca.log()
        );
    }
}

// ---------------------------------------------------------------------------------------
// The database fails over

#[test]
fn failover_to_a_promoted_synchronous_standby_loses_nothing() {
    if !can_run() {
        return;
    }
    let mut primary = Cluster::start();
    let database = "moshca_failover";
    primary.create_database(database);
    let standby = primary.standby(true);
    let url = format!(
        "postgres://moshca:{}@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        primary.password(),
        primary.port(),
        standby.port()
    );
    let (a, b) = replicas(&url, &url);

    let started = Instant::now();
    let load = Load::start(&a, &b);
    load.wait_until(Duration::from_secs(20), "issuance on both replicas", |o| {
        successes(o, "A").len() >= 20 && successes(o, "B").len() >= 20
    });
    thread::sleep(Duration::from_secs(2));

    let killed = Instant::now();
    primary.kill();
    let promoting = Instant::now();
    standby.promote();
    let promoted = Instant::now();
    assert!(!standby.is_in_recovery(), "the standby should be promoted");
    load.wait_until(
        Duration::from_secs(30),
        "issuance on both replicas after the failover",
        |o| {
            ["A", "B"]
                .iter()
                .all(|r| successes(o, r).iter().filter(|s| s.at > promoted).count() >= 5)
        },
    );
    let recovered = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    let stopped = Instant::now();

    // Nothing can commit between the kill and the promotion: answers read then were sent
    // before the kill. The time without service is the longest stretch without any answer
    // across the failover.
    let first_after = |replica: &str| {
        successes(&outcomes, replica)
            .iter()
            .map(|o| o.at)
            .filter(|at| *at > promoted)
            .min()
            .expect("successes after the promotion")
    };
    let acknowledged = assert_all_stored(&outcomes, |sql| standby.psql(database, sql));
    // Calls that could not be served were refused as retryable, nothing else.
    let other: Vec<String> = errors(&outcomes)
        .into_iter()
        .filter(|e| !e.contains(": Unavailable: "))
        .collect();
    assert!(
        other.is_empty(),
        "failures other than UNAVAILABLE: {other:?}"
    );
    eprintln!(
        "failover: promote took {:.0} ms; without service {:.0} ms (longest stretch without an \
         answer from either replica; A {:.0} ms, B {:.0} ms); first answer after the promotion: \
         A {:.0} ms, B {:.0} ms; {acknowledged} acknowledged certificates, all in the promoted \
         database; before: A {:.1}/s, B {:.1}/s; 2 s after recovery: A {:.1}/s, B {:.1}/s; {} \
         errors during the failover (first: {:?})",
        millis_between(promoting, promoted),
        longest_pause(&outcomes, None, killed, promoted),
        longest_pause(&outcomes, Some("A"), killed, promoted),
        longest_pause(&outcomes, Some("B"), killed, promoted),
        millis_between(promoted, first_after("A")),
        millis_between(promoted, first_after("B")),
        rate(&outcomes, "A", started, killed),
        rate(&outcomes, "B", started, killed),
        rate(&outcomes, "A", recovered, stopped),
        rate(&outcomes, "B", recovered, stopped),
        errors(&outcomes).len(),
        errors(&outcomes).first()
    );
    for ca in [&a, &b] {
        let verified = ca.audit_verifies();
        assert!(verified.contains("audit chain intact"), "{verified}");
    }

    // The decision listeners reconnected too: an approval on B still wakes a watch on A.
    let wake = approval_on_b_wakes_a(&a, &b);
    eprintln!("after the failover, approve on B (gRPC answer) -> A's watch: {wake:.1} ms");
    assert!(
        wake < 1000.0,
        "after the failover A's watch woke {wake:.1} ms after B's approval: no notification?"
    );
}

// ---------------------------------------------------------------------------------------
// Races across the two replicas

/// `gate` needs one approval from any of the twenty `approvers`; `self` is issued at once
/// to mallory, whom the second race disables.
const RACE_POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"

[[role]]
name = "gate"
requesters = ["group:requesters"]
approvers = ["group:approvers"]
approval = "manual"
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"

[[role]]
name = "self"
requesters = ["group:self-service"]
approval = "auto"
logins = ["mcae2e"]
default_ttl = "5m"
max_ttl = "10m"
"#;

/// Approvers racing on each request.
const APPROVERS: usize = 20;

/// Requests the twenty approvers race on.
const APPROVAL_ROUNDS: usize = 6;

/// Replica A on `url` with `users` (name, groups) added, and replica B joined to it; both
/// serving.
fn race_replicas(url: &str, users: &[(String, &[&str])]) -> (Ca, Ca) {
    let mut a = Ca::init_on_database(RACE_POLICY, url);
    for (name, groups) in users {
        a.add_user(name, groups);
    }
    let mut b = Ca::join(&a, RACE_POLICY, url);
    a.start();
    b.start();
    (a, b)
}

/// The single value `psql` printed, as a number.
fn count(psql: &str) -> usize {
    psql.trim()
        .parse()
        .unwrap_or_else(|_| panic!("psql should print one number, printed {psql:?}"))
}

#[test]
fn twenty_approvals_spread_over_two_real_replicas_issue_one_certificate() {
    if !can_run() {
        return;
    }
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let database = database_of(&url).to_owned();
    let mut users: Vec<(String, &[&str])> = vec![("alice".to_owned(), &["requesters"])];
    users.extend((0..APPROVERS).map(|n| (format!("approver{n}"), &["approvers"][..])));
    let (a, b) = race_replicas(&url, &users);

    let rt = runtime();
    let (to_a, to_b) = rt.block_on(async { (client(&a), client(&b)) });
    // Open both connections first, so that the approvals race each other and not the TLS
    // handshakes.
    rt.block_on(async {
        for mut c in [to_a.clone(), to_b.clone()] {
            c.who_am_i(authed(a.token("alice"), WhoAmIRequest {}))
                .await
                .expect("who_am_i opens the connection");
        }
    });

    let started = Instant::now();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    let mut winners: HashMap<&str, usize> = HashMap::new();
    for round in 0..APPROVAL_ROUNDS {
        let key = public_key(&a, "gate");
        let request = rt
            .block_on(async {
                to_a.clone()
                    .create_access_request(authed(a.token("alice"), create("gate", &key)))
                    .await
            })
            .expect("alice's request on A")
            .into_inner();
        assert_eq!(request.state, State::Pending as i32, "{request:?}");

        // All twenty wait at one barrier, then send: even approvers through A, odd through B.
        let barrier = Arc::new(tokio::sync::Barrier::new(APPROVERS));
        let answers = rt.block_on(async {
            let tasks: Vec<_> = (0..APPROVERS)
                .map(|n| {
                    let (replica, mut c) = if n % 2 == 0 {
                        ("A", to_a.clone())
                    } else {
                        ("B", to_b.clone())
                    };
                    let token = a.token(&format!("approver{n}")).to_owned();
                    let review = ReviewAccessRequestRequest {
                        id: request.id.clone(),
                        decision: Decision::Approve as i32,
                        ttl_secs: 0,
                        comment: String::new(),
                    };
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let answer = c.review_access_request(authed(&token, review)).await;
                        (replica, answer.map(|r| r.into_inner()))
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(
                    tokio::time::timeout(Duration::from_secs(30), task)
                        .await
                        .expect("every approval is answered within 30 s")
                        .expect("an approval task does not panic"),
                );
            }
            answers
        });

        let won: Vec<_> = answers.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: {} approvals succeeded: {answers:?}",
            won.len()
        );
        let (winner, answer) = won[0];
        let answer = answer.as_ref().expect("the winner");
        assert_eq!(
            answer.state,
            State::Issued as i32,
            "round {round}: {answer:?}"
        );
        assert_ne!(answer.serial, 0, "round {round}: issued without a serial");
        *winners.entry(winner).or_default() += 1;
        for (replica, result) in &answers {
            let Err(status) = result else { continue };
            // What a client must handle when it loses: the request is no longer pending
            // (FAILED_PRECONDITION), or it changed under the call (ABORTED, try again).
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Aborted
                ),
                "round {round}: {replica} refused an approval with {:?}: {}",
                status.code(),
                status.message()
            );
            *refusals
                .entry(format!("{replica} {:?}", status.code()))
                .or_default() += 1;
        }

        let psql = |sql: &str| pg.psql(&database, sql);
        let id = &request.id;
        assert_eq!(
            count(&psql(&format!(
                "SELECT count(*) FROM certificates WHERE request_id = '{id}'"
            ))),
            1,
            "round {round}: certificates for request {id}"
        );
        assert_eq!(
            count(&psql(&format!(
                "SELECT count(*) FROM audit WHERE request_id = '{id}' \
                 AND action = 'certificate.issued'"
            ))),
            1,
            "round {round}: certificate.issued events for request {id}"
        );
        assert_eq!(
            count(&psql(&format!(
                "SELECT count(*) FROM audit WHERE request_id = '{id}' \
                 AND action = 'request.approved'"
            ))),
            1,
            "round {round}: request.approved events for request {id} (a refused approval \
             must store nothing)"
        );
        let serial = i64::from_ne_bytes(answer.serial.to_ne_bytes());
        assert_eq!(
            psql(&format!(
                "SELECT serial FROM certificates WHERE request_id = '{id}'"
            )),
            serial.to_string(),
            "round {round}: the stored serial is the one the winner got"
        );
    }
    let elapsed = started.elapsed();
    let mut refusals: Vec<_> = refusals.into_iter().collect();
    refusals.sort();
    eprintln!(
        "{APPROVAL_ROUNDS} rounds of {APPROVERS} approvals over A and B in {:.1} s: one \
         certificate each; winners {winners:?}; refusals {refusals:?}",
        elapsed.as_secs_f64()
    );
    for ca in [&a, &b] {
        let verified = ca.audit_verifies();
        assert!(verified.contains("audit chain intact"), "{verified}");
    }
}

/// One call of mallory's: through which replica, when it was sent and answered, and the
/// serial or the refusal.
#[derive(Debug, Clone)]
struct Attempt {
    replica: &'static str,
    sent: Instant,
    answered: Instant,
    result: Result<u64, (tonic::Code, String)>,
}

/// mallory's clients per replica.
const MALLORY_CLIENTS: usize = 3;

#[test]
fn a_user_disabled_through_one_replica_gets_nothing_from_either() {
    if !can_run() {
        return;
    }
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let database = database_of(&url).to_owned();
    let users: Vec<(String, &[&str])> = vec![("mallory".to_owned(), &["self-service"])];
    let (a, b) = race_replicas(&url, &users);

    // mallory issues `self` certificates in loops through both replicas, with one token
    // (authenticated afresh on each call), until told to stop.
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::new(Mutex::new(Vec::new()));
    let key = public_key(&a, "mallory");
    let token = a.token("mallory").to_owned();
    let mut tasks = Vec::new();
    for (replica, ca) in [("A", &a), ("B", &b)] {
        for _ in 0..MALLORY_CLIENTS {
            let _entered = rt.enter();
            let mut c = client(ca);
            let (stop, attempts) = (stop.clone(), attempts.clone());
            let (token, key) = (token.clone(), key.clone());
            tasks.push(rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = c
                        .create_access_request(authed(&token, create("self", &key)))
                        .await;
                    let answered = Instant::now();
                    let result = match answer {
                        Ok(r) => {
                            let r = r.into_inner();
                            if r.state == State::Issued as i32 && r.serial != 0 {
                                Ok(r.serial)
                            } else {
                                Err((tonic::Code::Ok, format!("not issued: {r:?}")))
                            }
                        }
                        Err(s) => Err((s.code(), s.message().to_owned())),
                    };
                    let refused = result.is_err();
                    attempts.lock().expect("attempts lock").push(Attempt {
                        replica,
                        sent,
                        answered,
                        result,
                    });
                    if refused {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
    }
    let issued_on = |replica: &str| {
        attempts
            .lock()
            .expect("attempts lock")
            .iter()
            .filter(|t| t.replica == replica && t.result.is_ok())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while issued_on("A") < 10 || issued_on("B") < 10 {
        assert!(
            Instant::now() < deadline,
            "mallory's issuance did not get going on both replicas within 20 s: {:?}",
            attempts
                .lock()
                .expect("attempts lock")
                .iter()
                .filter(|t| t.result.is_err())
                .take(5)
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(5));
    }

    // The operator disables her through A's data directory, mid-issuance: the admin
    // command writes to the database from a third process, outside either server, so
    // neither replica learns of it except through the database. Its `user.disabled` event
    // is what the trail is checked against.
    let disabling = Instant::now();
    a.admin(&["user", "disable", "mallory"]).assert_ok();
    let disabled = Instant::now();
    // Keep trying on both for a while: every call sent from now on must be refused.
    let deadline = disabled + Duration::from_secs(20);
    let refused_on = |replica: &str| {
        attempts
            .lock()
            .expect("attempts lock")
            .iter()
            .filter(|t| t.replica == replica && t.sent > disabled && t.result.is_err())
            .count()
    };
    while refused_on("A") < 20 || refused_on("B") < 20 {
        assert!(
            Instant::now() < deadline,
            "too few calls after the disable within 20 s"
        );
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("a client of mallory's finishes its call within 40 s")
                .expect("a client of mallory's does not panic");
        }
    });
    let attempts = attempts.lock().expect("attempts lock").clone();

    // No call sent after the command returned was answered with a certificate, on either.
    let after: Vec<&Attempt> = attempts.iter().filter(|t| t.sent > disabled).collect();
    let issued_after: Vec<_> = after.iter().filter(|t| t.result.is_ok()).collect();
    assert!(
        issued_after.is_empty(),
        "{} certificates issued to mallory for calls sent after `user disable` returned: \
         {issued_after:?}",
        issued_after.len()
    );
    // Refused as a client must read it: not authenticated any more, or, once 20 calls
    // from one address failed to authenticate within a minute, the failed-authentication
    // limit of that replica.
    let code_of = |t: &&Attempt| t.result.as_ref().err().map(|(code, _)| *code);
    let odd: Vec<_> = after
        .iter()
        .filter(|t| {
            !matches!(
                code_of(t),
                Some(tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted)
            )
        })
        .collect();
    assert!(
        odd.is_empty(),
        "refusals other than UNAUTHENTICATED or RESOURCE_EXHAUSTED: {odd:?}"
    );
    let unauthenticated = |replica: &str| {
        after
            .iter()
            .filter(|t| t.replica == replica && code_of(t) == Some(tonic::Code::Unauthenticated))
            .count()
    };
    assert!(
        unauthenticated("A") > 0 && unauthenticated("B") > 0,
        "each replica should refuse mallory as unauthenticated before its failure limit"
    );

    // The trail orders them: nothing issued to mallory after the event that disabled her.
    let psql = |sql: &str| pg.psql(&database, sql);
    let disabled_at = psql(
        "SELECT seq FROM audit WHERE action = 'user.disabled' \
         AND details::json->>'user' = 'mallory'",
    );
    let disabled_at: i64 = disabled_at
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("one user.disabled event for mallory, got {disabled_at:?}"));
    let issued_to_mallory = "FROM audit a JOIN requests r ON r.id = a.request_id \
         WHERE a.action = 'certificate.issued' AND r.requester = 'mallory'";
    let issued_after_event = count(&psql(&format!(
        "SELECT count(*) {issued_to_mallory} AND a.seq > {disabled_at}"
    )));
    let issued_before_event = count(&psql(&format!(
        "SELECT count(*) {issued_to_mallory} AND a.seq < {disabled_at}"
    )));
    assert_eq!(
        issued_after_event, 0,
        "certificate.issued events for mallory after user.disabled (seq {disabled_at})"
    );
    // Every certificate she was told about is in the trail before the event.
    let acknowledged = attempts.iter().filter(|t| t.result.is_ok()).count();
    assert_eq!(
        issued_before_event, acknowledged,
        "certificate.issued events for mallory before user.disabled, against the \
         certificates her clients got"
    );
    assert!(
        acknowledged >= 20,
        "the race needs issuance before the disable"
    );

    let signed = |from: Option<Instant>, to: Instant, replica: &str| {
        attempts
            .iter()
            .filter(|t| t.replica == replica && t.result.is_ok())
            .filter(|t| from.is_none_or(|from| t.answered >= from) && t.answered <= to)
            .count()
    };
    let last_issued = attempts
        .iter()
        .filter(|t| t.result.is_ok())
        .map(|t| t.answered)
        .max()
        .expect("certificates before the disable");
    let first_refused = |replica: &str| {
        attempts
            .iter()
            .filter(|t| t.replica == replica && t.result.is_err())
            .map(|t| t.answered)
            .min()
            .expect("refusals")
    };
    let last_refused = attempts
        .iter()
        .filter(|t| t.result.is_err())
        .map(|t| t.answered)
        .max()
        .expect("refusals");
    eprintln!(
        "disable under load: {acknowledged} certificates to mallory before it (A {}, B {}; \
         {} of them answered while `user disable` ran, which took {:.0} ms); last certificate \
         answered {:.1} ms after the command returned (negative: before); first refusal \
         answered {:.1} ms (A) / {:.1} ms (B) after it; {} calls refused after it (UNAUTHENTICATED \
         A {} B {}, the rest RESOURCE_EXHAUSTED by the failed-authentication limit), over \
         {:.0} ms to the last refusal seen",
        signed(None, disabled, "A"),
        signed(None, disabled, "B"),
        signed(Some(disabling), disabled, "A") + signed(Some(disabling), disabled, "B"),
        millis_between(disabling, disabled),
        millis_between(disabled, last_issued),
        millis_between(disabled, first_refused("A")),
        millis_between(disabled, first_refused("B")),
        after.len(),
        unauthenticated("A"),
        unauthenticated("B"),
        millis_between(disabled, last_refused)
    );
    for ca in [&a, &b] {
        let verified = ca.audit_verifies();
        assert!(verified.contains("audit chain intact"), "{verified}");
    }
}
