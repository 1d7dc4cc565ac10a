//! Teleport #9501: an approval is re-checked against users and policy at issuance.

use super::*;

#[tokio::test]
async fn a_disabled_approver_is_refused() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    users::set_disabled(&h.store, "bob", true, 0).unwrap();
    let before = h.snapshot().await;
    refused(
        h.approve("bob", &created.id).await,
        Code::Unauthenticated,
        "disabled approver",
    );
    h.unchanged(&before, "disabled approver").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
}

#[tokio::test]
async fn an_approval_by_a_since_disabled_approver_stops_counting() {
    let h = start().await;
    let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
    h.approve("bob", &created.id).await.unwrap();
    users::set_disabled(&h.store, "bob", true, 0).unwrap();
    let second = h.approve("carol", &created.id).await.unwrap();
    assert_eq!(
        second.state,
        pb::State::Pending as i32,
        "bob's approval must not count once bob is disabled"
    );
    assert_eq!(h.issuance_of(&created.id), (0, false));
    h.audit_verifies();
    let third = h.approve("dave", &created.id).await.unwrap();
    assert_eq!(third.state, pb::State::Issued as i32);
    h.audit_verifies();
}

#[tokio::test]
async fn the_key_id_names_only_the_approvals_that_counted() {
    // DESIGN rule 6: the key id names the approvers, so sshd's log links to the audit.
    // bob approved, was disabled, and his approval no longer counts; carol and dave's
    // approvals issued the certificate. Naming bob tells an investigator the wrong story.
    let h = start().await;
    let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
    h.approve("bob", &created.id).await.unwrap();
    users::set_disabled(&h.store, "bob", true, 0).unwrap();
    h.approve("carol", &created.id).await.unwrap();
    h.approve("dave", &created.id).await.unwrap();
    let r = h.get("alice", &created.id, true).await;
    let cert = parsed(&h, &r).await;
    assert!(
        cert.key_id().ends_with(":by=carol,dave"),
        "{}",
        cert.key_id()
    );
}

#[tokio::test]
async fn a_disabled_requester_gets_no_certificate() {
    let h = start().await;
    let created = h.create("mallory", ask("db", &[], 600)).await.unwrap();
    users::set_disabled(&h.store, "mallory", true, 0).unwrap();
    let before = h.snapshot().await;
    refused(
        h.approve("bob", &created.id).await,
        Code::FailedPrecondition,
        "approve for disabled requester",
    );
    h.unchanged(&before, "disabled requester").await;
    assert_eq!(h.issuance_of(&created.id), (0, false));
}

#[tokio::test]
async fn a_policy_change_before_issuance_is_enforced() {
    let h = start().await;
    let both = h
        .create("alice", ask("db", &["postgres", "ubuntu"], 3600))
        .await
        .unwrap();
    // ubuntu leaves the role; then max_ttl shrinks; then bob stops being an approver.
    h.reload_policy(&POLICY.replacen(
        "logins = [\"postgres\", \"ubuntu\"]",
        "logins = [\"postgres\"]",
        1,
    ));
    let before = h.snapshot().await;
    refused(
        h.approve("carol", &both.id).await,
        Code::FailedPrecondition,
        "approve principals the policy no longer allows",
    );
    h.unchanged(&before, "policy changed").await;
    assert_eq!(h.issuance_of(&both.id), (0, false));

    let long = h
        .create("alice", ask("db", &["postgres"], 3600))
        .await
        .unwrap();
    h.reload_policy(&POLICY.replacen("max_ttl = \"1h\"", "max_ttl = \"30m\"", 1));
    let before = h.snapshot().await;
    refused(
        h.approve("carol", &long.id).await,
        Code::FailedPrecondition,
        "approve a ttl the policy no longer allows",
    );
    h.unchanged(&before, "max_ttl shrank").await;

    h.reload_policy(&POLICY.replace(
        "approvers = [\"group:leads\"]",
        "approvers = [\"user:carol\", \"user:watcher\"]",
    ));
    let before = h.snapshot().await;
    // bob can no longer see or approve db requests.
    let msg = h.approve("bob", &long.id).await.unwrap_err();
    assert!(
        matches!(msg.code(), Code::PermissionDenied | Code::NotFound),
        "{msg:?}"
    );
    h.unchanged(&before, "approver removed").await;
    assert_eq!(h.issuance_of(&long.id), (0, false));
}
