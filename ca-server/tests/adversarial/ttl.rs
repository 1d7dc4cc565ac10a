//! DESIGN rule 4: 1 min <= ttl <= role max_ttl; approvers may shorten, never lengthen.

use super::*;

#[tokio::test]
async fn zero_means_the_roles_default() {
    let h = start().await;
    let r = h.issue_with_ttl(0).await;
    assert_eq!(r.ttl_secs, 1800);
    let cert = parsed(&h, &r).await;
    assert_eq!(cert.valid_before() - cert.valid_after(), 1800 + 60);
}

#[tokio::test]
async fn out_of_range_ttls_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    let cases = [
        (1, Code::InvalidArgument),
        (59, Code::InvalidArgument),
        (3601, Code::PermissionDenied),
        (10 * 365 * 86_400, Code::PermissionDenied),
        (i64::MAX as u64, Code::PermissionDenied),
        (i64::MAX as u64 + 1, Code::PermissionDenied),
        (u64::MAX - 59, Code::PermissionDenied),
        (u64::MAX, Code::PermissionDenied),
    ];
    for (ttl, code) in cases {
        let what = format!("ttl {ttl}");
        refused(h.create("alice", ask("db", &[], ttl)).await, code, &what);
        h.unchanged(&before, &what).await;
    }
    // The bounds themselves are accepted.
    for ttl in [60, 3600] {
        let r = h.create("alice", ask("db", &[], ttl)).await.unwrap();
        assert_eq!(r.ttl_secs, ttl);
        h.cancel("alice", &r.id).await.unwrap();
    }
}

#[tokio::test]
async fn approvers_shorten_but_never_lengthen() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    for (ttl, code) in [
        (601, Code::InvalidArgument),
        (u64::MAX, Code::InvalidArgument),
        (59, Code::InvalidArgument),
        (1, Code::InvalidArgument),
    ] {
        let what = format!("approve with ttl {ttl}");
        refused(
            h.review("bob", &created.id, pb::Decision::Approve, ttl, "ok")
                .await,
            code,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
    let issued = h
        .review("bob", &created.id, pb::Decision::Approve, 60, "short")
        .await
        .unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    let r = h.get("alice", &created.id, true).await;
    let cert = parsed(&h, &r).await;
    assert_eq!(cert.valid_before() - cert.valid_after(), 60 + 60);
}

#[tokio::test]
async fn break_glass_is_refused_where_the_role_does_not_allow_it() {
    let h = start().await;
    let before = h.snapshot().await;
    let mut m = ask("db", &[], 300);
    m.break_glass = true;
    refused(
        h.create("alice", m).await,
        Code::PermissionDenied,
        "break-glass",
    );
    h.unchanged(&before, "break-glass").await;
}

impl Harness {
    pub(super) async fn issue_with_ttl(&self, ttl: u64) -> pb::AccessRequest {
        let created = self.create("alice", ask("db", &[], ttl)).await.unwrap();
        self.approve("bob", &created.id).await.unwrap();
        self.get("alice", &created.id, true).await
    }
}
