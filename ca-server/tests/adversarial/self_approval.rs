//! DESIGN rule 2: the requester never approves their own request, by identity.

use super::*;

#[tokio::test]
async fn requester_holding_the_approver_group_cannot_decide_own_request() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    for decision in [pb::Decision::Approve, pb::Decision::Deny] {
        let what = format!("alice {decision:?} own");
        refused(
            h.review("alice", &created.id, decision, 0, "mine").await,
            Code::PermissionDenied,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
    assert_eq!(h.issuance_of(&created.id), (0, false));

    // A second account with the same groups is another identity: it may approve.
    let issued = h.approve("alice2", &created.id).await.unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    let r = h.get("alice", &created.id, true).await;
    let cert = parsed(&h, &r).await;
    assert!(cert.key_id().ends_with(":by=alice2"), "{}", cert.key_id());
    assert!(cert.key_id().contains(":user=alice:"), "{}", cert.key_id());
}

#[tokio::test]
async fn each_approver_counts_once_and_the_requester_not_at_all() {
    let h = start().await;
    let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
    refused(
        h.approve("alice", &created.id).await,
        Code::PermissionDenied,
        "requester approves own two-approval request",
    );
    let first = h.approve("bob", &created.id).await.unwrap();
    assert_eq!(first.state, pb::State::Pending as i32);
    let before = h.snapshot().await;
    refused(
        h.approve("bob", &created.id).await,
        Code::FailedPrecondition,
        "bob approves twice",
    );
    h.unchanged(&before, "bob approves twice").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
    let done = h.approve("carol", &created.id).await.unwrap();
    assert_eq!(done.state, pb::State::Issued as i32);
    let r = h.get("alice", &created.id, true).await;
    assert!(parsed(&h, &r).await.key_id().ends_with(":by=bob,carol"));
    assert_eq!(h.issuance_of(&created.id), (1, true));
}

#[tokio::test]
async fn non_approvers_cannot_approve() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    // mallory may request the role but not approve it; eve cannot even see it.
    refused(
        h.approve("mallory", &created.id).await,
        Code::NotFound,
        "mallory approves",
    );
    refused(
        h.approve("eve", &created.id).await,
        Code::NotFound,
        "eve approves",
    );
    refused(
        h.approve("sec", &created.id).await,
        Code::NotFound,
        "revoker approves",
    );
    h.unchanged(&before, "non-approvers").await;
}
