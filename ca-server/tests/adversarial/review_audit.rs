//! Attacks from a security review of the running CA (findings 5 and 11): the audit trail
//! checked against what lies outside the database, and bounded audit reads.

use super::*;

use moshca_server::audit::{Checkpoint, Event};
use moshca_server::ca_keys::KeyFiles;
use moshca_server::signer::Signer;

/// A key an attacker controls, as a signer and its OpenSSH public line.
fn attacker_key(dir: &std::path::Path) -> (Signer, String) {
    let signer = Signer::generate(&dir.join("evil"), None, "evil").unwrap();
    let text = signer.public_key().to_openssh().unwrap();
    (signer, text)
}

/// The database, opened as someone with the disk would.
fn raw_db(h: &Harness) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(h.data.config.database.sqlite_path().unwrap()).unwrap();
    db.pragma_update(None, "foreign_keys", false).unwrap();
    db
}

/// Stops the served server (final checkpoint) and serves the data directory again.
async fn restart(h: Harness) -> Harness {
    let Harness {
        data,
        served,
        store,
    } = h;
    served.stop().await;
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    Harness {
        data,
        served,
        store,
    }
}

/// `audit verify` as the binary runs it: the CA key files and, when given, the
/// checkpoint file.
fn verify_anchored(h: &Harness, with_file: bool) -> Result<u64, String> {
    let keys = KeyFiles::of(&h.data.config).load();
    let file = with_file.then(|| {
        std::io::BufReader::new(std::fs::File::open(&h.data.config.checkpoint_file).unwrap())
    });
    match authority::verify_audit_anchored(&h.store, &keys, file).unwrap() {
        Ok(v) => Ok(v.events),
        Err(broken) => Err(broken.to_string()),
    }
}

#[tokio::test]
async fn finding_5_a_ca_key_row_inserted_while_running_is_not_published() {
    let h = start().await;
    let dir = tempfile::tempdir().unwrap();
    let (evil, evil_text) = attacker_key(dir.path());
    let before = h.ca_keys().await;
    assert_eq!(before.len(), 1);

    // The attack: a row in the CA keys table, while the server runs.
    h.store
        .transact(|tx| tx.insert_ca_key(&evil.fingerprint(), &evil_text, 0))
        .unwrap();
    let active = PublicKey::from_openssh(&before[0]).unwrap();
    let active_fp = active.fingerprint(HashAlg::Sha256).to_string();
    let listed = authority::trusted_ca_keys(&h.store, &active_fp, clock_now()).unwrap();
    assert_eq!(listed.len(), 2, "the database alone would publish it");

    assert_eq!(h.ca_keys().await, before, "a row alone is never published");

    // After a restart, with a live certificate row naming it as its CA.
    let issued = h.issue("alice", "db", &["postgres"]).await;
    let changed = raw_db(&h)
        .execute(
            "UPDATE certificates SET ca_fingerprint = ?1 WHERE serial = ?2",
            rusqlite::params![evil.fingerprint(), issued.serial as i64],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let h = restart(h).await;
    let after = h.ca_keys().await;
    assert_eq!(after, before, "still not published after a restart");
    assert!(!after.iter().any(|k| k.contains(&evil_text[12..40])));
}

#[tokio::test]
async fn finding_5_a_checkpoint_signed_by_a_key_only_the_database_names_does_not_verify() {
    let h = start().await;
    h.issue("alice", "db", &["postgres"]).await;
    let h = restart(h).await;
    let n = verify_anchored(&h, true).unwrap();

    // The attack: cut the tail, replace every checkpoint by one signed with a key of the
    // attacker's, registered as a CA key row.
    let dir = tempfile::tempdir().unwrap();
    let (evil, evil_text) = attacker_key(dir.path());
    let db = raw_db(&h);
    db.execute(
        "DELETE FROM audit WHERE seq >= ?1",
        [i64::try_from(n - 1).unwrap()],
    )
    .unwrap();
    db.execute("DELETE FROM audit_checkpoints", []).unwrap();
    drop(db);
    let (seq, hash) = h.store.read(|tx| tx.audit_head()).unwrap().unwrap();
    h.store
        .transact(|tx| {
            tx.insert_ca_key(&evil.fingerprint(), &evil_text, 0)?;
            tx.insert_checkpoint(&Checkpoint {
                seq,
                hash: hash.clone(),
                ca_fingerprint: evil.fingerprint(),
                signature: evil.sign_checkpoint(&Checkpoint::message(seq, &hash)),
                at: 0,
            })
        })
        .unwrap();

    let err = verify_anchored(&h, false).unwrap_err();
    assert!(err.contains("signature does not verify"), "{err}");
    let err = verify_anchored(&h, true).unwrap_err();
    assert!(
        err.contains("signature does not verify") || err.contains("tail cut"),
        "{err}"
    );
}

#[tokio::test]
async fn finding_5_deleting_the_tail_and_every_checkpoint_fails_verify() {
    let h = start().await;
    h.issue("alice", "db", &["postgres"]).await;
    let h = restart(h).await;
    let n = verify_anchored(&h, true).unwrap();

    // The attack: the last two events and every checkpoint row.
    let db = raw_db(&h);
    db.execute(
        "DELETE FROM audit WHERE seq >= ?1",
        [i64::try_from(n - 1).unwrap()],
    )
    .unwrap();
    db.execute("DELETE FROM audit_checkpoints", []).unwrap();
    drop(db);
    // The old check, the chain alone, calls this intact.
    assert!(authority::verify_audit(&h.store).unwrap().is_ok());

    let err = verify_anchored(&h, false).unwrap_err();
    assert!(err.contains("no signed checkpoint"), "{err}");
    let err = verify_anchored(&h, true).unwrap_err();
    assert!(err.contains("tail cut"), "{err}");
    assert!(
        err.starts_with(&format!("audit chain broken at event {}", n - 1)),
        "{err}"
    );
}

#[tokio::test]
async fn finding_5_an_edited_rehashed_chain_without_its_checkpoints_fails_verify() {
    let h = start().await;
    let issued = h.issue("alice", "db", &["postgres"]).await;
    let h = restart(h).await;
    verify_anchored(&h, true).unwrap();

    // The attack: edit the request's event, rehash everything after it, delete the
    // checkpoints that signed the old hashes.
    let rows = h.store.read(|tx| tx.audit_rows()).unwrap();
    let edited = rows
        .iter()
        .position(|r| {
            r.event.action == "request.created"
                && r.event.request_id.as_deref() == Some(issued.id.as_str())
        })
        .unwrap();
    let db = raw_db(&h);
    let mut prev = rows[edited].prev_hash.clone();
    for (i, row) in rows.iter().enumerate().skip(edited) {
        let mut event: Event = row.event.clone();
        if i == edited {
            event.details["reason"] = serde_json::json!("CHG-1 routine");
        }
        let hash = event.chain_hash(&prev);
        db.execute(
            "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![event.details.to_string(), prev, hash, row.seq as i64],
        )
        .unwrap();
        prev = hash;
    }
    db.execute(
        "DELETE FROM audit_checkpoints WHERE seq >= ?1",
        [rows[edited].seq as i64],
    )
    .unwrap();
    drop(db);
    assert!(authority::verify_audit(&h.store).unwrap().is_ok());

    // Every checkpoint signed after the edit is gone; the file still has them.
    let err = verify_anchored(&h, true).unwrap_err();
    assert!(err.contains("rewritten"), "{err}");
    // With every checkpoint row deleted, the database alone shows it too.
    raw_db(&h)
        .execute("DELETE FROM audit_checkpoints", [])
        .unwrap();
    let err = verify_anchored(&h, false).unwrap_err();
    assert!(err.contains("no signed checkpoint"), "{err}");
}

#[tokio::test]
async fn finding_11_audit_listing_is_filtered_and_limited_before_it_is_read() {
    let h = start().await;
    h.reload_policy(&POLICY.replace(
        "[defaults]\n",
        "[defaults]\nauditors = [\"user:watcher\"]\n",
    ));
    let issued = h.issue("alice", "db", &["postgres"]).await;
    // 20,000 events by a noisy actor after alice's.
    h.store
        .transact(|tx| {
            for i in 0..20_000u64 {
                tx.append_audit(&Event::new(
                    clock_now(),
                    "bot",
                    "noise.made",
                    None,
                    serde_json::json!({ "i": i }),
                ))?;
            }
            Ok::<_, moshca_server::store::Error>(())
        })
        .unwrap();
    let list = |user: &str, request_id: &str, limit: u32| {
        let mut c = h.client();
        let req = h.req(
            "watcher",
            pb::ListAuditEventsRequest {
                user: user.into(),
                request_id: request_id.into(),
                since: 0,
                limit,
            },
        );
        async move { c.list_audit_events(req).await.unwrap().into_inner().events }
    };
    let newest = list("", "", 5).await;
    assert_eq!(newest.len(), 5);
    assert!(newest.iter().all(|e| e.actor == "bot"));
    assert!(newest.windows(2).all(|w| w[0].seq < w[1].seq));
    let unbounded = list("", "", u32::MAX).await;
    assert_eq!(unbounded.len(), 10_000, "at most 10,000 per call");
    let alice = list("alice", "", 0).await;
    assert!(!alice.is_empty());
    assert!(
        alice.iter().all(|e| e.actor == "alice"
            || e.request_id == issued.id
            || e.details_json.contains("\"user\":\"alice\"")),
        "{alice:?}"
    );
    let of_request = list("", &issued.id, 0).await;
    assert!(of_request.iter().all(|e| e.request_id == issued.id));
    assert!(
        of_request.iter().any(|e| e.action == "certificate.issued"),
        "{of_request:?}"
    );
}

fn clock_now() -> u64 {
    moshca_server::clock::now()
}
