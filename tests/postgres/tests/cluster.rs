//! The harness against a real PostgreSQL: password authentication, databases, TLS,
//! synchronous standby, crash and promotion, and the server's account.
//!
//! Each test prints how long its setup took (`--nocapture` shows it). Measured on a shared
//! 2-core machine, one test at a time: a cluster starts (initdb + pg_ctl start) in 0.65-0.77 s,
//! with TLS the same; a synchronous standby is streaming `sync` 0.67-0.70 s after the call,
//! an async one 0.48-0.62 s; a promotion takes about 0.1 s.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use moshca_test_postgres::{Cluster, ROLE, SERVER_USER, available, psql_with, shared};

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let made = f();
    eprintln!("{what}: {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    made
}

#[test]
fn a_cluster_answers_with_the_password_and_refuses_a_wrong_one() {
    if !available() {
        return;
    }
    let cluster = timed("cluster start", Cluster::start);
    assert_eq!(cluster.psql("postgres", "SELECT 1"), "1");
    assert_eq!(cluster.psql("postgres", "SELECT current_user"), ROLE);
    let wrong = psql_with(
        &cluster.conninfo("postgres"),
        "not-the-password",
        "SELECT 1",
    );
    let why = wrong.expect_err("a wrong password must be refused");
    assert!(why.contains("password authentication failed"), "{why}");
    // Passwords are hashed with SCRAM, not md5.
    let method = cluster.psql(
        "postgres",
        "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'moshca'",
    );
    assert_eq!(method, "SCRAM-SHA-256");
    assert!(
        cluster
            .url("db")
            .starts_with(&format!("postgres://{ROLE}:"))
    );
    assert!(!format!("{cluster:?}").contains(cluster.password()));
}

#[test]
fn fresh_databases_are_distinct() {
    let Some(cluster) = shared() else { return };
    let urls: Vec<String> = std::thread::scope(|s| {
        let made: Vec<_> = (0..4)
            .map(|_| s.spawn(|| cluster.fresh_database()))
            .collect();
        made.into_iter()
            .map(|t| t.join().expect("fresh_database"))
            .collect()
    });
    let names: Vec<&str> = urls
        .iter()
        .map(|u| u.rsplit('/').next().expect("a name"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert!(!names[..i].contains(name), "{name} given twice");
        cluster.psql(
            name,
            &format!("CREATE TABLE t (v text); INSERT INTO t VALUES ('{name}')"),
        );
    }
    for name in &names {
        assert_eq!(
            cluster.psql(name, "SELECT string_agg(v, ',') FROM t"),
            *name
        );
    }
    let url = cluster.create_database("named_db");
    assert_eq!(url, cluster.url("named_db"));
    assert_eq!(
        cluster.psql("named_db", "SELECT current_database()"),
        "named_db"
    );
}

#[test]
fn a_tls_cluster_is_verified_against_its_certificate() {
    if !available() {
        return;
    }
    let cluster = timed("TLS cluster start", Cluster::start_with_tls);
    let ca = cluster
        .ca_cert()
        .expect("a TLS cluster has a CA certificate");
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for host in ["127.0.0.1", "localhost"] {
        let conninfo = format!(
            "{} host={host} sslmode=verify-full sslrootcert={}",
            cluster.conninfo("postgres"),
            ca.display()
        );
        assert_eq!(
            psql_with(&conninfo, cluster.password(), sql),
            Ok("t".to_owned())
        );
    }
    // The check is real: another cluster's certificate does not verify this one.
    let other = Cluster::start_with_tls();
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={}",
        cluster.conninfo("postgres"),
        other.ca_cert().expect("CA").display()
    );
    let why = psql_with(&conninfo, cluster.password(), sql).expect_err("wrong CA must fail");
    assert!(why.contains("certificate verify failed"), "{why}");
    assert_eq!(Cluster::start().ca_cert(), None);
}

#[test]
fn a_row_committed_with_a_sync_standby_is_on_the_standby_at_once() {
    if !available() {
        return;
    }
    let primary = Cluster::start();
    let standby = timed("sync standby setup", || primary.standby(true));
    assert!(standby.is_in_recovery());
    assert!(!primary.is_in_recovery());
    primary.psql("postgres", "CREATE TABLE t (v int)");
    for v in 1..=20 {
        primary.psql("postgres", &format!("INSERT INTO t VALUES ({v})"));
        let seen = standby.psql("postgres", "SELECT max(v) FROM t");
        assert_eq!(seen, v.to_string(), "row {v} not yet on the standby");
    }
    // Why it holds: a commit returns only once the standby has applied it, so while the
    // standby's replay is paused a commit waits, and goes through when replay resumes.
    standby.psql("postgres", "SELECT pg_wal_replay_pause()");
    std::thread::scope(|s| {
        let insert = s.spawn(|| primary.psql("postgres", "INSERT INTO t VALUES (21)"));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            !insert.is_finished(),
            "the commit did not wait for the standby"
        );
        assert_eq!(standby.psql("postgres", "SELECT max(v) FROM t"), "20");
        standby.psql("postgres", "SELECT pg_wal_replay_resume()");
        insert.join().expect("the insert");
    });
    assert_eq!(standby.psql("postgres", "SELECT max(v) FROM t"), "21");

    let async_standby = timed("async standby setup", || primary.standby(false));
    assert!(async_standby.is_in_recovery());
}

#[test]
fn after_a_crash_the_promoted_standby_takes_writes_and_has_the_row() {
    if !available() {
        return;
    }
    let mut primary = Cluster::start();
    let standby = primary.standby(true);
    primary.psql("postgres", "CREATE TABLE t (v text)");
    primary.psql("postgres", "INSERT INTO t VALUES ('before the crash')");
    primary.kill();
    let refused = psql_with(
        &primary.conninfo("postgres"),
        primary.password(),
        "SELECT 1",
    );
    assert!(refused.is_err(), "the killed primary still answers");
    assert!(standby.is_in_recovery());
    timed("promote", || standby.promote());
    assert!(!standby.is_in_recovery());
    standby.psql("postgres", "INSERT INTO t VALUES ('after the promotion')");
    assert_eq!(
        standby.psql("postgres", "SELECT string_agg(v, ',' ORDER BY v) FROM t"),
        "after the promotion,before the crash"
    );
}

#[test]
fn the_server_runs_as_the_unprivileged_account_when_root() {
    let Some(cluster) = shared() else { return };
    let pidfile = cluster.data_dir().join("postmaster.pid");
    let owner = std::fs::metadata(&pidfile).expect("postmaster.pid").uid();
    let ps = Command::new("ps")
        .args(["-o", "user=", "-p", &cluster.postmaster_pid().to_string()])
        .output()
        .expect("running ps");
    let user = String::from_utf8_lossy(&ps.stdout).trim().to_owned();
    let me = rustix::process::geteuid();
    if me.is_root() {
        assert_ne!(owner, 0, "postmaster.pid is root's");
        assert_eq!(user, SERVER_USER);
    } else {
        assert_eq!(owner, me.as_raw());
    }
    let mode = std::fs::metadata(cluster.data_dir())
        .expect("data dir")
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Run as a child of the test below: start the shared cluster, report it, exit without
/// dropping anything (as a killed or exiting test process would).
const ABANDON: &str = "MOSHCA_TEST_PG_ABANDON";

#[test]
fn the_watchdog_cleans_up_after_a_process_that_exits() {
    if std::env::var_os(ABANDON).is_some() {
        let cluster = shared().expect("a cluster");
        let dir = cluster.data_dir();
        eprintln!("abandoned {} {}", cluster.postmaster_pid(), dir.display());
        std::process::exit(0);
    }
    if !available() {
        return;
    }
    let name = "the_watchdog_cleans_up_after_a_process_that_exits";
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ABANDON, "1")
        .output()
        .expect("running the child");
    let stderr = String::from_utf8_lossy(&child.stderr);
    let line = stderr.lines().find_map(|l| l.strip_prefix("abandoned "));
    let (pid, data) = line
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("{stderr}"));
    let data = std::path::PathBuf::from(data);
    assert!(child.status.success(), "{stderr}");
    let running =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while running() || data.parent().expect("dir").exists() {
        assert!(
            Instant::now() < deadline,
            "postgres {pid} or {} left behind",
            data.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Run as a child of the test below, with its environment: report what `available()` says.
const PROBE: &str = "MOSHCA_TEST_PG_PROBE";

#[test]
fn without_the_server_programs_ci_fails_and_elsewhere_skips() {
    if std::env::var_os(PROBE).is_some() {
        eprintln!("available: {}", available());
        return;
    }
    let probe = |ci: &str| {
        let name = "without_the_server_programs_ci_fails_and_elsewhere_skips";
        Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(PROBE, "1")
            .env("MOSHCA_TEST_PG_BIN", "/nonexistent")
            .env("CI", ci)
            .output()
            .expect("running the child")
    };
    let local = probe("0");
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("skipping a PostgreSQL test: MOSHCA_TEST_PG_BIN=/nonexistent has no initdb"),
        "{stderr}"
    );
    assert!(stderr.contains("available: false"), "{stderr}");
    let ci = probe("true");
    let stderr = String::from_utf8_lossy(&ci.stderr);
    assert!(!ci.status.success(), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL tests cannot run in CI"),
        "{stderr}"
    );
}
