//! DESIGN rule 9: decided requests are immutable.

use super::*;

#[tokio::test]
async fn a_denied_request_cannot_be_approved_or_cancelled() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    h.deny("bob", &created.id).await.unwrap();
    let before = h.snapshot().await;
    refused(
        h.approve("carol", &created.id).await,
        Code::FailedPrecondition,
        "approve after deny",
    );
    refused(
        h.deny("carol", &created.id).await,
        Code::FailedPrecondition,
        "deny after deny",
    );
    refused(
        h.cancel("alice", &created.id).await,
        Code::FailedPrecondition,
        "cancel after deny",
    );
    h.unchanged(&before, "denied request").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
}

#[tokio::test]
async fn an_issued_request_cannot_be_denied_cancelled_or_approved_again() {
    let h = start().await;
    let issued = h.issue("alice", "db", &[]).await;
    let before = h.snapshot().await;
    refused(
        h.deny("carol", &issued.id).await,
        Code::FailedPrecondition,
        "deny after issue",
    );
    refused(
        h.cancel("alice", &issued.id).await,
        Code::FailedPrecondition,
        "cancel after issue",
    );
    refused(
        h.approve("carol", &issued.id).await,
        Code::FailedPrecondition,
        "approve after issue",
    );
    h.unchanged(&before, "issued request").await;
    let again = h.get("alice", &issued.id, true).await;
    assert_eq!(again.certificate, issued.certificate, "same certificate");
    assert_eq!(h.issuance_of(&issued.id), (1, true));
}

#[tokio::test]
async fn an_expired_request_cannot_be_approved_or_cancelled() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    // The sweeper runs on the wall clock; run it as if the pending ttl (1h) were over.
    let later = moshca_server::clock::now() + 3600 + 1;
    assert_eq!(h.served.authority.expire_due_at(later).unwrap(), 1);
    let expired = h.get("alice", &created.id, false).await;
    assert_eq!(expired.state, pb::State::Expired as i32);
    let before = h.snapshot().await;
    refused(
        h.approve("bob", &created.id).await,
        Code::FailedPrecondition,
        "approve after expiry",
    );
    refused(
        h.deny("bob", &created.id).await,
        Code::FailedPrecondition,
        "deny after expiry",
    );
    refused(
        h.cancel("alice", &created.id).await,
        Code::FailedPrecondition,
        "cancel after expiry",
    );
    h.unchanged(&before, "expired request").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
}

#[tokio::test]
async fn a_cancelled_request_cannot_be_approved() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    refused(
        h.cancel("bob", &created.id).await,
        Code::PermissionDenied,
        "approver cancels",
    );
    refused(
        h.cancel("eve", &created.id).await,
        Code::NotFound,
        "stranger cancels",
    );
    h.unchanged(&before, "cancel by others").await;
    h.cancel("alice", &created.id).await.unwrap();
    let before = h.snapshot().await;
    refused(
        h.approve("bob", &created.id).await,
        Code::FailedPrecondition,
        "approve after cancel",
    );
    refused(
        h.cancel("alice", &created.id).await,
        Code::FailedPrecondition,
        "cancel twice",
    );
    h.unchanged(&before, "cancelled request").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
}
