//! A CI job's ID token may only create requests, never act as a person.

use super::*;

fn jwt<T>(msg: T) -> Request<T> {
    common::bearer(JWT, msg)
}

#[tokio::test]
async fn a_workload_jwt_is_refused_on_every_other_rpc() {
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    let id = created.id.clone();
    let before = h.snapshot().await;
    let mut c = h.client();
    let checks: Vec<(&str, Result<(), Status>)> = vec![
        (
            "WhoAmI",
            c.who_am_i(jwt(pb::WhoAmIRequest {})).await.map(drop),
        ),
        (
            "ListAccessRequests",
            c.list_access_requests(jwt(pb::ListAccessRequestsRequest::default()))
                .await
                .map(drop),
        ),
        (
            "GetAccessRequest",
            c.get_access_request(jwt(pb::GetAccessRequestRequest {
                id: id.clone(),
                include_certificate: true,
            }))
            .await
            .map(drop),
        ),
        (
            "WatchAccessRequest",
            c.watch_access_request(jwt(pb::WatchAccessRequestRequest {
                id: id.clone(),
                include_certificate: true,
            }))
            .await
            .map(drop),
        ),
        (
            "ReviewAccessRequest",
            c.review_access_request(jwt(pb::ReviewAccessRequestRequest {
                id: id.clone(),
                decision: pb::Decision::Approve as i32,
                ttl_secs: 0,
                comment: "ci".into(),
            }))
            .await
            .map(drop),
        ),
        (
            "CancelAccessRequest",
            c.cancel_access_request(jwt(pb::CancelAccessRequestRequest { id: id.clone() }))
                .await
                .map(drop),
        ),
        (
            "RevokeCertificates",
            c.revoke_certificates(jwt(pb::RevokeCertificatesRequest {
                target: Some(pb::revoke_certificates_request::Target::User(
                    "alice".into(),
                )),
                reason: "ci".into(),
            }))
            .await
            .map(drop),
        ),
        (
            "ReviewBreakGlass",
            c.review_break_glass(jwt(pb::ReviewBreakGlassRequest {
                id: id.clone(),
                comment: "ci".into(),
            }))
            .await
            .map(drop),
        ),
        (
            "ListAuditEvents",
            c.list_audit_events(jwt(pb::ListAuditEventsRequest::default()))
                .await
                .map(drop),
        ),
    ];
    for (rpc, result) in checks {
        let msg = refused(result, Code::PermissionDenied, rpc);
        assert!(msg.contains("workload"), "{rpc}: {msg}");
        assert!(!msg.contains(JWT), "{rpc}: token echoed");
        h.unchanged(&before, rpc).await;
    }
    // Creating with a token from an issuer the server does not know: refused.
    let msg = refused(
        c.create_access_request(jwt(ask("db", &[], 600))).await,
        Code::Unauthenticated,
        "unknown issuer",
    );
    assert!(!msg.contains(JWT), "token echoed: {msg}");
    h.unchanged(&before, "unknown issuer").await;
    // The token never reaches the audit log.
    let rows = h.store.read(|tx| tx.audit_rows()).unwrap();
    for row in rows {
        assert!(
            !row.event.details.to_string().contains("c2lnbmF0dXJl"),
            "JWT in audit row {}",
            row.seq
        );
    }
}
