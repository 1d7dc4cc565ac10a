//! The real server on 127.0.0.1:0 with TLS, driven through the generated gRPC client.
//!
//! Checks the wire behaviour: authentication, status codes, watch streams, certificate
//! visibility, health. Domain rules are unit-tested next to their modules; these tests
//! show they hold through the API.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

mod common;

use moshca_proto::v1 as pb;
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_server::server;
use ssh_key::{Algorithm, PrivateKey};
use tonic::transport::Channel;
use tonic::{Code, Request};

const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu"]
max_ttl = "1h"
"#;

struct Harness {
    _data: common::DataDir,
    served: common::Served,
    tokens: std::collections::HashMap<&'static str, String>,
}

async fn start() -> Harness {
    let data = common::data_dir(
        POLICY,
        "",
        &[
            ("alice", &["oncall", "leads"]),
            ("bob", &["leads"]),
            ("eve", &["other"]),
        ],
    );
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    Harness {
        tokens: data.tokens.clone(),
        _data: data,
        served,
    }
}

impl Harness {
    fn client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(self.served.channel())
    }

    fn req<T>(&self, who: &str, msg: T) -> Request<T> {
        common::bearer(&self.tokens[who], msg)
    }

    async fn create(
        &self,
        who: &str,
        principals: &[&str],
        ttl: u64,
    ) -> Result<pb::AccessRequest, tonic::Status> {
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        self.client()
            .create_access_request(self.req(
                who,
                pb::CreateAccessRequestRequest {
                    role: "db".into(),
                    principals: principals.iter().map(|p| (*p).into()).collect(),
                    ttl_secs: ttl,
                    reason: "INC-1 replica lag".into(),
                    public_key: key.public_key().to_openssh().unwrap(),
                    break_glass: false,
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn review(
        &self,
        who: &str,
        id: &str,
        d: pb::Decision,
    ) -> Result<pb::AccessRequest, tonic::Status> {
        self.client()
            .review_access_request(self.req(
                who,
                pb::ReviewAccessRequestRequest {
                    id: id.into(),
                    decision: d as i32,
                    ttl_secs: 0,
                    comment: "reviewed".into(),
                },
            ))
            .await
            .map(|r| r.into_inner())
    }

    async fn pending(&self, who: &str) -> Vec<pb::AccessRequest> {
        self.client()
            .list_access_requests(self.req(
                who,
                pb::ListAccessRequestsRequest {
                    pending_only: true,
                    mine_only: false,
                    limit: 0,
                    unreviewed_only: false,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .requests
    }
}

#[tokio::test]
async fn ca_keys_need_no_token_everything_else_does() {
    let h = start().await;
    let keys = h
        .client()
        .get_ca_public_keys(pb::GetCaPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.public_keys.len(), 1);
    assert!(keys.public_keys[0].starts_with("ssh-ed25519 "));

    let err = h.client().who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut bad = Request::new(pb::WhoAmIRequest {});
    bad.metadata_mut().insert(
        "authorization",
        "Bearer mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse()
            .unwrap(),
    );
    let err = h.client().who_am_i(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains("mca_"), "{}", err.message());

    let me = h
        .client()
        .who_am_i(h.req("alice", pb::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "alice");
    assert_eq!(me.requestable_roles, ["db"]);
    assert_eq!(me.approvable_roles, ["db"]);
}

#[tokio::test]
async fn refusals_have_the_right_codes_and_leave_nothing_pending() {
    let h = start().await;
    let cases: [(&str, &[&str], u64, Code); 5] = [
        ("alice", &["root"], 0, Code::PermissionDenied),
        ("alice", &["postgres", "root"], 0, Code::PermissionDenied),
        ("alice", &["postgres,root"], 0, Code::InvalidArgument),
        ("alice", &[], 7200, Code::PermissionDenied),
        ("eve", &[], 0, Code::PermissionDenied),
    ];
    for (who, principals, ttl, code) in cases {
        let err = h.create(who, principals, ttl).await.unwrap_err();
        assert_eq!(
            err.code(),
            code,
            "{who} {principals:?} {ttl}: {}",
            err.message()
        );
        assert!(!err.message().contains('\n'));
    }
    assert!(h.pending("bob").await.is_empty());
}

#[tokio::test]
async fn approve_flow_watch_and_certificate_visibility() {
    let h = start().await;
    let created = h.create("alice", &["postgres"], 600).await.unwrap();
    assert_eq!(created.state, pb::State::Pending as i32);
    assert_eq!(created.approvers, ["group:leads"]);
    assert_eq!(h.pending("bob").await.len(), 1);

    let mut stream = h
        .client()
        .watch_access_request(h.req(
            "alice",
            pb::WatchAccessRequestRequest {
                id: created.id.clone(),
                include_certificate: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.state, pb::State::Pending as i32);

    // The requester holds the approver group, and still cannot approve.
    let own = h
        .review("alice", &created.id, pb::Decision::Approve)
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);

    let approved = h
        .review("bob", &created.id, pb::Decision::Approve)
        .await
        .unwrap();
    assert_eq!(approved.state, pb::State::Issued as i32);
    assert!(
        approved.certificate.is_none(),
        "approver must not receive the certificate"
    );
    assert_ne!(approved.serial, 0);

    let issued = stream.message().await.unwrap().unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
    let cert = issued.certificate.unwrap();
    assert_eq!(cert.principals, ["postgres"]);
    assert_eq!(cert.valid_before - cert.valid_after, 600 + 60);
    assert!(
        stream.message().await.unwrap().is_none(),
        "stream ends at a terminal state"
    );

    let again = h
        .review("bob", &created.id, pb::Decision::Approve)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let bob_fetch = h
        .client()
        .get_access_request(h.req(
            "bob",
            pb::GetAccessRequestRequest {
                id: created.id.clone(),
                include_certificate: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bob_fetch.code(), Code::PermissionDenied);
    let eve_read = h
        .client()
        .get_access_request(h.req(
            "eve",
            pb::GetAccessRequestRequest {
                id: created.id.clone(),
                include_certificate: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(eve_read.code(), Code::NotFound);
    let twice: Vec<String> = futures_twice(&h, &created.id).await;
    assert_eq!(twice[0], twice[1]);
    assert_eq!(twice[0], cert.openssh);
}

async fn futures_twice(h: &Harness, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..2 {
        let r = h
            .client()
            .get_access_request(h.req(
                "alice",
                pb::GetAccessRequestRequest {
                    id: id.into(),
                    include_certificate: true,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        out.push(r.certificate.unwrap().openssh);
    }
    out
}

#[tokio::test]
async fn oversized_and_malformed_messages_are_refused() {
    let h = start().await;
    let key = "A".repeat(100 * 1024);
    let err = h
        .client()
        .create_access_request(h.req(
            "alice",
            pb::CreateAccessRequestRequest {
                role: "db".into(),
                principals: vec![],
                ttl_secs: 0,
                reason: "INC-1 replica lag".into(),
                public_key: key,
                break_glass: false,
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    let err = h
        .client()
        .get_access_request(h.req(
            "alice",
            pb::GetAccessRequestRequest {
                id: "../../etc".into(),
                include_certificate: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h
        .review("bob", "01J", pb::Decision::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(h.pending("bob").await.is_empty());
}

#[tokio::test]
async fn health_service_reports_serving() {
    let h = start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.served.channel());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "moshca.v1.CertificateAuthority".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

fn ssh_keygen_query(krl: &[u8], cert: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("krl"), krl).unwrap();
    std::fs::write(dir.path().join("c-cert.pub"), format!("{cert}\n")).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(dir.path().join("krl"))
        .arg(dir.path().join("c-cert.pub"))
        .output()
        .expect("ssh-keygen must be installed (OpenSSH is required for these tests)");
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => {
            assert!(text.contains(": ok"), "{text}");
            false
        }
        Some(1) => {
            assert!(text.contains("REVOKED"), "{text}");
            true
        }
        other => panic!(
            "ssh-keygen -Q failed ({other:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn issue(h: &Harness, who: &str) -> pb::AccessRequest {
    let created = h.create(who, &["postgres"], 600).await.unwrap();
    h.review("bob", &created.id, pb::Decision::Approve)
        .await
        .unwrap();
    h.client()
        .get_access_request(h.req(
            who,
            pb::GetAccessRequestRequest {
                id: created.id,
                include_certificate: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn krl(h: &Harness) -> (Vec<u8>, u64) {
    let r = h
        .client()
        .get_krl(pb::GetKrlRequest {})
        .await
        .unwrap()
        .into_inner();
    (r.krl, r.version)
}

#[tokio::test]
async fn revocation_reaches_the_krl_that_ssh_keygen_reads() {
    let h = start().await;
    let a = issue(&h, "alice").await;
    let b = issue(&h, "alice").await;
    let (before, v0) = krl(&h).await;
    let a_cert = a.certificate.unwrap().openssh;
    let b_cert = b.certificate.unwrap().openssh;
    assert!(!ssh_keygen_query(&before, &a_cert));

    // eve may not revoke alice's certificate; nothing changes.
    let err = h
        .client()
        .revoke_certificates(h.req(
            "eve",
            pb::RevokeCertificatesRequest {
                target: Some(pb::revoke_certificates_request::Target::RequestId(
                    a.id.clone(),
                )),
                reason: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied), "{err:?}");
    assert_eq!(krl(&h).await.1, v0);

    let r = h
        .client()
        .revoke_certificates(h.req(
            "alice",
            pb::RevokeCertificatesRequest {
                target: Some(pb::revoke_certificates_request::Target::RequestId(
                    a.id.clone(),
                )),
                reason: "laptop lost".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.serials, [a.serial]);
    let (after, v1) = krl(&h).await;
    assert!(v1 > v0);
    assert!(
        ssh_keygen_query(&after, &a_cert),
        "revoked certificate must be in the KRL"
    );
    assert!(
        !ssh_keygen_query(&after, &b_cert),
        "other certificate must not be"
    );
}

#[tokio::test]
async fn krl_comes_without_a_token_and_parses_when_empty() {
    let h = start().await;
    let (bytes, version) = krl(&h).await;
    assert_eq!(version, 0);
    assert!(bytes.starts_with(b"SSHKRL\n\0"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("krl"), &bytes).unwrap();
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-Q", "-l", "-f"])
        .arg(dir.path().join("krl"))
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn failed_authentications_are_rate_limited_per_peer() {
    let h = start().await;
    let bad = || {
        let mut r = Request::new(pb::WhoAmIRequest {});
        r.metadata_mut().insert(
            "authorization",
            "Bearer mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .parse()
                .unwrap(),
        );
        r
    };
    for _ in 0..moshca_server::limits::MAX_AUTH_FAILURES {
        let e = h.client().who_am_i(bad()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = h.client().who_am_i(bad()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("failed authentications"),
        "{}",
        e.message()
    );
    // The CA keys stay public.
    assert!(
        h.client()
            .get_ca_public_keys(pb::GetCaPublicKeysRequest {})
            .await
            .is_ok()
    );
}
