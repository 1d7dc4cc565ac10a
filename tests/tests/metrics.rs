//! The `/metrics` page of a real `moshca-server` with `metrics_listen` set: counters move
//! by exactly what the real `moshca` client did, and the page never carries a token, a
//! reason text or a request id.
//!
//! Needs `ssh-keygen`; no `sshd`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use moshca_e2e::{Ca, Run, free_port, keygen, run};

const POLICY: &str = r#"
[defaults]
max_ttl = "8h"

[[role]]
name = "deploy"
approval = "auto"
requesters = ["group:oncall"]
logins = ["mcae2e"]
max_ttl = "10m"

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
reason_min_len = 10
logins = ["mcae2e"]
max_ttl = "1h"
"#;

/// alice requests, bob approves.
const USERS: &[(&str, &[&str])] = &[("alice", &["oncall"]), ("bob", &["sre-leads"])];

const REASON: &str = "INC-7781 disk filling on db-3";

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// A CA serving, with `metrics_listen` on a free loopback port; the port.
fn ca_with_metrics() -> (Ca, u16) {
    let mut ca = Ca::init(POLICY);
    let port = free_port();
    let config = ca.data_dir().join("config.toml");
    let mut text = fs::read_to_string(&config).expect("read config.toml");
    // Top-level keys must come before the first table.
    text.insert_str(0, &format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    fs::write(&config, text).expect("write config.toml");
    for (name, groups) in USERS {
        ca.add_user(name, groups);
    }
    ca.start();
    (ca, port)
}

/// `GET path` over plain HTTP/1.1: the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics_listen");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Every sample of the page: `name{labels}` -> value.
fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let (status, page) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{page}");
    let samples = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("`name value`");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    (page, samples)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    let at = |m: &BTreeMap<String, f64>| m.get(key).copied().unwrap_or(0.0);
    at(after) - at(before)
}

#[test]
fn metrics_count_exactly_what_the_client_did_and_leak_nothing() {
    moshca_e2e::program("ssh-keygen");
    let (ca, port) = ca_with_metrics();

    let (status, body) = http_get(port, "/");
    assert_eq!(status, 404, "{body}");
    let (_, before) = scrape(port);

    // An auto-approved certificate, issued at once.
    let key = keygen(ca.scratch(), "auto");
    let auto = client(
        &ca,
        "alice",
        &[
            "request",
            "--role",
            "deploy",
            "--reason",
            REASON,
            "--public-key",
            &format!("{}.pub", utf8(&key)),
        ],
    );
    auto.assert_ok();

    // A request that waits, then bob's approval.
    let key = keygen(ca.scratch(), "approved");
    let pending = client(
        &ca,
        "alice",
        &[
            "request",
            "--role",
            "oncall",
            "--reason",
            REASON,
            "--ttl",
            "30m",
            "--public-key",
            &format!("{}.pub", utf8(&key)),
        ],
    );
    pending.assert_ok();
    let id = pending.stdout.trim().to_owned();
    let (_, waiting) = scrape(port);
    assert_eq!(waiting.get("moshca_requests_pending"), Some(&1.0));
    client(&ca, "bob", &["approve", &id]).assert_ok();

    // A refusal: bob may not request oncall.
    let key = keygen(ca.scratch(), "refused");
    client(
        &ca,
        "bob",
        &[
            "request",
            "--role",
            "oncall",
            "--reason",
            REASON,
            "--public-key",
            &format!("{}.pub", utf8(&key)),
        ],
    )
    .assert_refused();

    let (page, after) = scrape(port);
    for (key, moved) in [
        (
            "moshca_certificates_issued_total{role=\"deploy\",path=\"auto\"}",
            1.0,
        ),
        (
            "moshca_certificates_issued_total{role=\"oncall\",path=\"approval\"}",
            1.0,
        ),
        ("moshca_issuance_duration_seconds_count{path=\"auto\"}", 1.0),
        (
            "moshca_issuance_duration_seconds_count{path=\"approval\"}",
            1.0,
        ),
        ("moshca_reviews_total{decision=\"approve\"}", 1.0),
        ("moshca_reviews_total{decision=\"deny\"}", 0.0),
        ("moshca_refusals_total{reason=\"permission_denied\"}", 1.0),
        ("moshca_auth_failures_total{reason=\"unknown_token\"}", 0.0),
    ] {
        assert_eq!(delta(&before, &after, key), moved, "{key} in:\n{page}");
    }
    // No other refusal of any kind.
    let refusals: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("moshca_refusals_total"))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum();
    assert_eq!(refusals, 1.0, "{page}");
    assert_eq!(after.get("moshca_requests_pending"), Some(&0.0), "{page}");
    assert!(
        delta(&before, &after, "moshca_store_write_batch_size_count") >= 3.0,
        "{page}"
    );

    // Nothing that names a person, a credential or a request.
    for secret in [
        ca.token("alice"),
        ca.token("bob"),
        REASON,
        "INC-7781",
        &id,
        "alice",
        "bob",
    ] {
        assert!(
            !page.contains(secret),
            "the page carries {secret:?}:\n{page}"
        );
    }
}

#[test]
fn a_taken_metrics_port_stops_the_server_at_start() {
    let ca = Ca::init(POLICY);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let config = ca.data_dir().join("config.toml");
    let mut text = fs::read_to_string(&config).expect("read config.toml");
    text.insert_str(0, &format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    fs::write(&config, text).expect("write config.toml");
    let out = ca.admin(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.ok(), "serve should fail:\n{out}");
    out.assert_stderr_mentions(&["metrics_listen"]);
    out.assert_stderr_mentions(&[&port.to_string()]);
}
