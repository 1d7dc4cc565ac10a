//! DESIGN rule 1: break-glass is capped by its own max ttl and flagged until another
//! approver reviews it.

use super::*;

fn glass(ttl: u64) -> pb::CreateAccessRequestRequest {
    let mut m = ask("glass", &[], ttl);
    m.break_glass = true;
    m
}

async fn review_glass(h: &Harness, who: &str, id: &str) -> Result<pb::AccessRequest, Status> {
    h.client()
        .review_break_glass(h.req(
            who,
            pb::ReviewBreakGlassRequest {
                id: id.into(),
                comment: "looked at it".into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn break_glass_ttl_is_capped_by_its_own_max() {
    let h = start().await;
    let before = h.snapshot().await;
    for ttl in [901, 3600, u64::MAX] {
        let what = format!("break-glass ttl {ttl}");
        refused(
            h.create("alice", glass(ttl)).await,
            Code::PermissionDenied,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
    let r = h.create("alice", glass(0)).await.unwrap();
    assert_eq!(r.state, pb::State::Issued as i32);
    assert!(r.break_glass);
    let cert = parsed(&h, &r).await;
    assert_eq!(cert.valid_before() - cert.valid_after(), 900 + 60);
    assert!(
        cert.key_id().ends_with(":by=break-glass"),
        "{}",
        cert.key_id()
    );
}

#[tokio::test]
async fn break_glass_review_is_by_another_approver_once() {
    let h = start().await;
    let r = h.create("alice", glass(300)).await.unwrap();
    let normal = h.issue("alice", "glass", &[]).await;
    let before = h.snapshot().await;
    for (who, code) in [
        ("alice", Code::PermissionDenied),
        ("mallory", Code::NotFound),
        ("eve", Code::NotFound),
        ("sec", Code::NotFound),
    ] {
        let what = format!("{who} reviews alice's break-glass");
        refused(review_glass(&h, who, &r.id).await, code, &what);
        h.unchanged(&before, &what).await;
    }
    refused(
        review_glass(&h, "bob", &normal.id).await,
        Code::FailedPrecondition,
        "break-glass review of a normal request",
    );
    h.unchanged(&before, "review of a normal request").await;
    let reviewed = review_glass(&h, "bob", &r.id).await.unwrap();
    assert_eq!(reviewed.break_glass_review.unwrap().approver, "bob");
    let before = h.snapshot().await;
    for who in ["bob", "carol"] {
        let what = format!("{who} reviews again");
        refused(
            review_glass(&h, who, &r.id).await,
            Code::FailedPrecondition,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
}

#[tokio::test]
async fn break_glass_on_a_role_without_it_and_by_a_non_requester() {
    let h = start().await;
    let before = h.snapshot().await;
    let mut m = ask("db", &[], 300);
    m.break_glass = true;
    refused(
        h.create("alice", m).await,
        Code::PermissionDenied,
        "db break-glass",
    );
    refused(
        h.create("eve", glass(300)).await,
        Code::PermissionDenied,
        "eve break-glass",
    );
    refused(
        h.create("bob", glass(300)).await,
        Code::PermissionDenied,
        "approver break-glass",
    );
    h.unchanged(&before, "break-glass refusals").await;
}
