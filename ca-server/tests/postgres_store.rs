//! What only the PostgreSQL backend has: TLS to the database, a URL that never shows its
//! password, and a store that rides out a failover to a promoted synchronous standby
//! through a multi-host URL, losing no committed write.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

use std::time::{Duration, Instant};

use moshca_server::audit::{self, Event};
use moshca_server::store::{Database, Error, ErrorKind, PgUrl, Store};
use moshca_test_postgres::Cluster;

fn event(i: u64) -> Event {
    Event::new(
        1_800_000_000 + i,
        "op",
        "user.added",
        None,
        serde_json::json!({ "user": format!("u{i}") }),
    )
}

fn open(url: &str) -> Result<Store, Error> {
    Store::open(Database::Postgres(PgUrl::parse(url).unwrap()))
}

#[test]
fn tls_to_the_database_is_verified_against_the_ca_named_in_the_url() {
    if !moshca_test_postgres::available() {
        return;
    }
    let cluster = Cluster::start_with_tls();
    let plain = cluster.fresh_database();
    let ca = cluster.ca_cert().unwrap().display().to_string();
    let with_tls = format!("{plain}?sslmode=verify-full&sslrootcert={ca}");
    let s = open(&with_tls).unwrap();
    s.transact(|tx| tx.append_audit(&event(1))).unwrap();
    let ssl = cluster.psql(
        plain.rsplit('/').next().unwrap(),
        "SELECT bool_and(ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'moshca-server'",
    );
    assert_eq!(ssl.trim(), "t", "moshca-server's connections are not TLS");

    // Another CA: the server's certificate is refused, and nothing says the password.
    let other = Cluster::start_with_tls();
    let wrong = format!(
        "{plain}?sslmode=verify-full&sslrootcert={}",
        other.ca_cert().unwrap().display()
    );
    let err = open(&wrong).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(cluster.password()),
        "the password leaked: {shown}"
    );
    let url = PgUrl::parse(&with_tls).unwrap();
    assert!(!url.to_string().contains(cluster.password()));
    assert!(!format!("{url:?}").contains(cluster.password()));
}

#[test]
fn a_wrong_password_is_refused_without_repeating_it() {
    if !moshca_test_postgres::available() {
        return;
    }
    let cluster = moshca_test_postgres::shared().unwrap();
    let url = cluster
        .fresh_database()
        .replacen(cluster.password(), "not-the-password", 1);
    let err = open(&url).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(!shown.contains("not-the-password"), "{shown}");
}

#[test]
fn a_store_fails_over_to_the_promoted_synchronous_standby_and_loses_nothing() {
    if !moshca_test_postgres::available() {
        return;
    }
    let mut primary = Cluster::start();
    let url = primary.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let standby = primary.standby(true);
    let both = format!(
        "postgres://moshca:{}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
        primary.password(),
        primary.port(),
        standby.port()
    );
    let s = std::sync::Arc::new(open(&both).unwrap());
    // Writers keep appending; each counts what the store acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut acked, mut failed) = (Vec::new(), 0);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let e = event(w * 1_000_000 + i);
                    match s.transact(|tx| tx.append_audit(&e)) {
                        Ok(()) => acked.push(e.details["user"].as_str().unwrap().to_owned()),
                        Err(e) => {
                            // A call cut off by the crash: refused, never acknowledged.
                            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                            failed += 1;
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let killed_at = Instant::now();
    primary.kill();
    std::thread::sleep(Duration::from_millis(300));
    let promoting = Instant::now();
    standby.promote();
    let promoted_in = promoting.elapsed();
    // Writes go through again, on the promoted standby.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = event(9_999_999);
        if s.transact(|tx| tx.append_audit(&next)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded after the promotion"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_after = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.join().unwrap();
        acked.extend(a);
        failed += f;
    }
    // Every acknowledged event is in the promoted database, and the chain verifies.
    let rows = s.read(|tx| tx.audit_rows()).unwrap();
    let stored: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.event.details["user"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = acked.iter().filter(|u| !stored.contains(*u)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    audit::verify(rows.clone()).unwrap();
    assert!(
        acked.len() > 20,
        "the writers made progress: {}",
        acked.len()
    );
    eprintln!(
        "failover: {} events acknowledged, {} calls refused as unavailable; promote took {} ms; \
         first write after the kill {} ms after it",
        acked.len(),
        failed,
        promoted_in.as_millis(),
        back_after.as_millis()
    );
}
