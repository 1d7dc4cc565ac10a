//! DESIGN rule 10: a revoked user or key cannot obtain new certificates.

use super::*;
use pb::revoke_certificates_request::Target;

#[tokio::test]
async fn a_revoked_user_cannot_come_back() {
    let h = start().await;
    let issued = h.issue("mallory", "db", &[]).await;
    let pending = h.create("mallory", ask("db", &[], 600)).await.unwrap();
    let r = h
        .revoke("sec", Target::User("mallory".into()), "left the company")
        .await
        .unwrap();
    assert_eq!(r.serials, [issued.serial]);
    let before = h.snapshot().await;
    refused(
        h.create("mallory", ask("db", &[], 600)).await,
        Code::Unauthenticated,
        "revoked user requests",
    );
    refused(
        h.approve("bob", &pending.id).await,
        Code::FailedPrecondition,
        "approve a revoked user's pending request",
    );
    h.unchanged(&before, "revoked user").await;
    assert_eq!(h.issuance_of(&pending.id), (0, false));
}

#[tokio::test]
async fn a_revoked_key_cannot_be_certified_again() {
    let h = start().await;
    let key = new_key();
    let mut m = ask("db", &[], 600);
    m.public_key = key.clone();
    let created = h.create("alice", m.clone()).await.unwrap();
    h.approve("bob", &created.id).await.unwrap();
    let pending = h.create("alice", m.clone()).await.unwrap();
    h.revoke("alice", Target::PublicKey(key.clone()), "key leaked")
        .await
        .unwrap();
    let before = h.snapshot().await;
    // The same key, with another comment or in another account's request.
    let relabelled = format!(
        "{} other comment",
        key.split(' ').take(2).collect::<Vec<_>>().join(" ")
    );
    for (who, text) in [
        ("alice", key.clone()),
        ("alice", relabelled.clone()),
        ("alice2", key.clone()),
    ] {
        let mut m = ask("db", &[], 600);
        m.public_key = text;
        let what = format!("{who} reuses a revoked key");
        refused(h.create(who, m).await, Code::PermissionDenied, &what);
        h.unchanged(&before, &what).await;
    }
    refused(
        h.approve("bob", &pending.id).await,
        Code::FailedPrecondition,
        "approve a request whose key was revoked",
    );
    h.unchanged(&before, "revoked key").await;
    assert_eq!(h.issuance_of(&pending.id), (0, false));
}
