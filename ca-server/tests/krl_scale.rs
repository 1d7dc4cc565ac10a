//! KRL generation at scale: 100,000 revoked, unexpired certificates in the store.
//!
//! A measurement, not an assertion on speed: run with
//! `cargo test --release -p moshca-server --test krl_scale -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

use std::time::Instant;

use moshca_server::authority::krl_from_store;
use moshca_server::store::{CertRecord, Store};
use rand::Rng as _;
use ssh_key::{Algorithm, PrivateKey};

#[test]
#[ignore = "measurement; prints KRL generation time and size"]
fn krl_for_100k_revoked_serials() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let ca = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .clone();
    let ca_fp = ca.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    let mut rng = rand::thread_rng();
    let n = 100_000u64;
    let t = Instant::now();
    store
        .transact(|tx| {
            for i in 0..n {
                let id = format!("R{i}");
                tx.insert_request(&moshca_server::approvals::Request {
                    id: id.clone(),
                    requester: "alice".into(),
                    role: "db".into(),
                    principals: vec!["postgres".into()],
                    ttl_secs: 3600,
                    reason: "x".into(),
                    public_key: "k".into(),
                    fingerprint: "f".into(),
                    state: moshca_server::approvals::State::Issued,
                    created_at: 1,
                    expires_at: 2,
                    decided_at: Some(1),
                    approvals_required: 1,
                    reviews: vec![],
                    break_glass: false,
                    break_glass_review: None,
                    version: 0,
                })?;
                let serial = rng.r#gen::<u64>() | 1;
                tx.insert_certificate(&CertRecord {
                    serial,
                    request_id: id,
                    key_id: format!("moshca:req=R{i}"),
                    principals: vec!["postgres".into()],
                    valid_after: 0,
                    valid_before: u64::from(u32::MAX),
                    fingerprint: "f".into(),
                    ca_fingerprint: ca_fp.clone(),
                    openssh: String::new(),
                    issued_at: 0,
                    requester: "alice".into(),
                    role: "db".into(),
                    revoked_at: Some(1),
                })?;
            }
            Ok::<_, moshca_server::store::Error>(())
        })
        .unwrap();
    eprintln!(
        "setup: {n} revoked certificates stored in {:?}",
        t.elapsed()
    );
    for round in 0..3 {
        let t = Instant::now();
        let (krl, _) = krl_from_store(&store, std::slice::from_ref(&ca), 1000).unwrap();
        let elapsed = t.elapsed();
        eprintln!(
            "round {round}: KRL for {n} random revoked serials: {} bytes ({:.2} B/serial) in {:?}",
            krl.len(),
            krl.len() as f64 / n as f64,
            elapsed
        );
        assert!(krl.len() > n as usize * 8, "every serial must be listed");
    }
}
