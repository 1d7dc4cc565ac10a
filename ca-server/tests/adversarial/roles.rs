//! Requesting a role one is not entitled to, or one that does not exist.

use super::*;

#[tokio::test]
async fn unknown_unentitled_and_hostile_role_names_are_refused() {
    let h = start().await;
    let before = h.snapshot().await;
    let long = "r".repeat(10_000);
    let cases: &[(&str, &str)] = &[
        ("eve", "db"),
        ("bob", "db"),
        ("sec", "db"),
        ("alice", "nope"),
        ("alice", ""),
        ("alice", "db\n"),
        ("alice", " db"),
        ("alice", "DB"),
        ("alice", "db\0"),
        ("alice", "../db"),
        ("alice", "*"),
    ];
    for (who, role) in cases {
        let what = format!("{who} asks role {:?}", role.get(..20).unwrap_or(role));
        refused(
            h.create(who, ask(role, &[], 600)).await,
            Code::PermissionDenied,
            &what,
        );
        h.unchanged(&before, &what).await;
    }
    // A name over the bound is not even looked up: refused at the edge as malformed.
    let message = refused(
        h.create("alice", ask(&long, &[], 600)).await,
        Code::InvalidArgument,
        "a 10,000-byte role",
    );
    assert!(message.contains("the limit is 64 bytes"), "{message}");
    h.unchanged(&before, "a 10,000-byte role").await;
}

#[tokio::test]
async fn reasons_are_bounded() {
    let h = start().await;
    let before = h.snapshot().await;
    for reason in [String::new(), "   ".into(), "x".repeat(1025)] {
        let mut m = ask("db", &[], 600);
        m.reason = reason.clone();
        let what = format!("reason of {} bytes", reason.len());
        refused(h.create("alice", m).await, Code::InvalidArgument, &what);
        h.unchanged(&before, &what).await;
    }
}

#[tokio::test]
async fn requests_of_others_are_invisible_and_ids_are_checked() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let before = h.snapshot().await;
    for who in ["eve", "mallory", "sec"] {
        let status = h
            .client()
            .get_access_request(h.req(
                who,
                pb::GetAccessRequestRequest {
                    id: created.id.clone(),
                    include_certificate: false,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{who}");
    }
    for id in [
        "",
        "../../etc/passwd",
        "01J' OR '1'='1",
        &"A".repeat(65),
        "01J\n",
    ] {
        let status = h
            .client()
            .get_access_request(h.req(
                "alice",
                pb::GetAccessRequestRequest {
                    id: id.into(),
                    include_certificate: true,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id:?}");
    }
    refused(
        h.review("bob", &created.id, pb::Decision::Unspecified, 0, "x")
            .await,
        Code::InvalidArgument,
        "decision unspecified",
    );
    let status = h
        .client()
        .review_access_request(h.req(
            "bob",
            pb::ReviewAccessRequestRequest {
                id: created.id.clone(),
                decision: 99,
                ttl_secs: 0,
                comment: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    h.unchanged(&before, "ids and decisions").await;
}
