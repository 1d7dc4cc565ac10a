//! What hash-chaining the audit trail costs on issuance: the store work of one issuance
//! (request + certificate rows) with and without its chained audit events, durable
//! (WAL, synchronous=FULL), one writer and eight concurrent writers (group commit).
//!
//! A measurement: `cargo test --release -p moshca-server --test audit_overhead -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the measurement loudly

use std::time::Instant;

use moshca_server::approvals::{Request, State};
use moshca_server::audit::Event;
use moshca_server::store::{CertRecord, Store};

fn request(id: &str) -> Request {
    Request {
        id: id.into(),
        requester: "ci".into(),
        role: "deploy".into(),
        principals: vec!["deploy".into()],
        ttl_secs: 300,
        reason: "deploy".into(),
        public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOhH".into(),
        fingerprint: "SHA256:x".into(),
        state: State::Issued,
        created_at: 1,
        expires_at: 2,
        decided_at: Some(1),
        approvals_required: 0,
        reviews: vec![],
        break_glass: false,
        break_glass_review: None,
        version: 0,
    }
}

fn issue(store: &Store, n: u64, audited: bool) {
    let id = format!("R{n}");
    store
        .transact(|tx| {
            tx.insert_request(&request(&id))?;
            if audited {
                tx.append_audit(&Event::new(1, "ci", "request.created", Some(&id), serde_json::json!({"role": "deploy", "principals": ["deploy"], "ttl_secs": 300})))?;
            }
            tx.insert_certificate(&CertRecord {
                serial: n + 1,
                request_id: id.clone(),
                key_id: format!("moshca:req={id}:user=ci:role=deploy:by=auto"),
                principals: vec!["deploy".into()],
                valid_after: 0,
                valid_before: 300,
                fingerprint: "SHA256:x".into(),
                ca_fingerprint: "SHA256:ca".into(),
                openssh: "ssh-ed25519-cert-v01@openssh.com AAAA".repeat(8),
                issued_at: 1,
                requester: "ci".into(),
                role: "deploy".into(),
                revoked_at: None,
            })?;
            if audited {
                tx.append_audit(&Event::new(1, "moshca-server", "certificate.issued", Some(&id), serde_json::json!({"serial": (n + 1).to_string(), "principals": ["deploy"]})))?;
            }
            Ok::<_, moshca_server::store::Error>(())
        })
        .unwrap();
}

fn run(threads: u64, per_thread: u64, audited: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let store = &store;
            s.spawn(move || {
                for i in 0..per_thread {
                    issue(store, th * 1_000_000 + i, audited);
                }
            });
        }
    });
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement; prints issuance store throughput with and without audit chaining"]
fn audit_chaining_overhead() {
    for (threads, per) in [(1u64, 2000u64), (8, 1000)] {
        let plain = run(threads, per, false);
        let chained = run(threads, per, true);
        eprintln!(
            "{threads} writer(s): {plain:>8.0} issuances/s without audit, {chained:>8.0} with 2 chained events each ({:+.1}%)",
            (chained / plain - 1.0) * 100.0
        );
    }
}
