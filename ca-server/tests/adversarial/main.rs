//! Adversarial suite: every domain rule of DESIGN.md broken on purpose, through the real
//! server on 127.0.0.1:0 with TLS, driven by the generated gRPC client.
//!
//! One module per threat. After every refusal the suite checks that nothing was stored
//! (the requests an approver can list are unchanged, no certificate appeared) and that the
//! audit chain, read through a second `Store` on the same database, still verifies.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use base64::Engine as _;
use moshca_proto::v1 as pb;
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_server::authority;
use moshca_server::policy::Policy;
use moshca_server::store::Store;
use moshca_server::{server, users};
use ssh_key::public::{KeyData, RsaPublicKey};
use ssh_key::{Algorithm, Certificate, HashAlg, Mpint, PrivateKey, PublicKey};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const POLICY: &str = r#"
[defaults]
revokers = ["group:security"]

[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu"]
max_ttl = "1h"

[[role]]
name = "two"
requesters = ["group:oncall"]
approvers = ["group:leads"]
approvals_required = 2
logins = ["postgres"]
max_ttl = "1h"

[[role]]
name = "locked"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["deploy"]
max_ttl = "30m"
extensions = ["permit-pty", "permit-port-forwarding"]
source_address = ["10.0.0.0/8", "192.0.2.1"]
force_command = "/usr/local/bin/report"

[[role]]
name = "glass"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"
break_glass = { enabled = true, max_ttl = "15m" }
"#;

/// Users and their groups. `alice2` holds exactly alice's groups: approval is by identity.
/// `watcher` approves every role and never acts: it lists what is stored.
const USERS: &[(&str, &[&str])] = &[
    ("alice", &["oncall", "leads"]),
    ("alice2", &["oncall", "leads"]),
    ("bob", &["leads"]),
    ("carol", &["leads"]),
    ("dave", &["leads"]),
    ("mallory", &["oncall"]),
    ("eve", &["other"]),
    ("sec", &["security"]),
    ("watcher", &["leads"]),
];

const REASON: &str = "INC-4312 replica lag";

/// A JWT-shaped bearer value (a workload ID token); the server has no OIDC issuer.
const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJl";

/// (id, state, serial, reviews, break-glass reviewed) of every request an approver of
/// every role can see.
type Snapshot = Vec<(String, i32, u64, usize, bool)>;

struct Harness {
    data: common::DataDir,
    served: common::Served,
    store: Store,
}

async fn start() -> Harness {
    let data = common::data_dir(POLICY, "", USERS);
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    Harness {
        store: Store::open(&data.config.database).unwrap(),
        data,
        served,
    }
}

fn new_key() -> String {
    PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap()
}

fn ask(role: &str, principals: &[&str], ttl: u64) -> pb::CreateAccessRequestRequest {
    pb::CreateAccessRequestRequest {
        role: role.into(),
        principals: principals.iter().map(|p| (*p).to_owned()).collect(),
        ttl_secs: ttl,
        reason: REASON.into(),
        public_key: new_key(),
        break_glass: false,
    }
}

/// The status of a refused call, checked to carry `code` and a one-line message.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> String {
    let status = match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success: {v:?}"),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        code,
        "{what}: wrong code, message {:?}",
        status.message()
    );
    assert!(!status.message().is_empty(), "{what}: empty message");
    assert!(
        !status.message().contains('\n'),
        "{what}: multi-line message {:?}",
        status.message()
    );
    status.message().to_owned()
}

impl Harness {
    fn client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(self.served.channel())
            .max_encoding_message_size(4 * 1024 * 1024)
    }

    fn req<T>(&self, who: &str, msg: T) -> Request<T> {
        common::bearer(&self.data.tokens[who], msg)
    }

    async fn create(
        &self,
        who: &str,
        msg: pb::CreateAccessRequestRequest,
    ) -> Result<pb::AccessRequest, Status> {
        self.client()
            .create_access_request(self.req(who, msg))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn review(
        &self,
        who: &str,
        id: &str,
        decision: pb::Decision,
        ttl_secs: u64,
        comment: &str,
    ) -> Result<pb::AccessRequest, Status> {
        self.client()
            .review_access_request(self.req(
                who,
                pb::ReviewAccessRequestRequest {
                    id: id.into(),
                    decision: decision as i32,
                    ttl_secs,
                    comment: comment.into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn approve(&self, who: &str, id: &str) -> Result<pb::AccessRequest, Status> {
        self.review(who, id, pb::Decision::Approve, 0, "ok").await
    }

    async fn deny(&self, who: &str, id: &str) -> Result<pb::AccessRequest, Status> {
        self.review(who, id, pb::Decision::Deny, 0, "not now").await
    }

    async fn cancel(&self, who: &str, id: &str) -> Result<pb::AccessRequest, Status> {
        self.client()
            .cancel_access_request(self.req(who, pb::CancelAccessRequestRequest { id: id.into() }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, who: &str, id: &str, include_certificate: bool) -> pb::AccessRequest {
        self.client()
            .get_access_request(self.req(
                who,
                pb::GetAccessRequestRequest {
                    id: id.into(),
                    include_certificate,
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn revoke(
        &self,
        who: &str,
        target: pb::revoke_certificates_request::Target,
        reason: &str,
    ) -> Result<pb::RevokeCertificatesResponse, Status> {
        self.client()
            .revoke_certificates(self.req(
                who,
                pb::RevokeCertificatesRequest {
                    target: Some(target),
                    reason: reason.into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Creates a `db` request for `who` and has `bob` approve it; the issued request as
    /// its requester sees it, certificate included.
    async fn issue(&self, who: &str, role: &str, principals: &[&str]) -> pb::AccessRequest {
        let created = self.create(who, ask(role, principals, 600)).await.unwrap();
        let approved = self.approve("bob", &created.id).await.unwrap();
        assert_eq!(approved.state, pb::State::Issued as i32);
        self.get(who, &created.id, true).await
    }

    /// Every request the watcher (an approver of every role) can list.
    async fn snapshot(&self) -> Snapshot {
        let mut all: Snapshot = self
            .client()
            .list_access_requests(self.req(
                "watcher",
                pb::ListAccessRequestsRequest {
                    pending_only: false,
                    mine_only: false,
                    limit: 1000,
                    unreviewed_only: false,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .requests
            .into_iter()
            .map(|r| {
                let reviewed = r.break_glass_review.is_some();
                (r.id, r.state, r.serial, r.reviews.len(), reviewed)
            })
            .collect();
        all.sort();
        all
    }

    /// Asserts the audit chain verifies, read through a second store on the database.
    /// Also checks that no bearer token reached the audit log (DESIGN rule 11).
    fn audit_verifies(&self) {
        match authority::verify_audit(&self.store) {
            Ok(Ok(_)) => {}
            Ok(Err(broken)) => panic!("audit chain broken: {broken}"),
            Err(e) => panic!("audit chain unreadable: {e}"),
        }
        let rows = self.store.read(|tx| tx.audit_rows()).unwrap();
        for row in rows {
            let text = format!("{} {}", row.event.actor, row.event.details);
            for token in self.data.tokens.values() {
                assert!(
                    !text.contains(&token[4..]),
                    "token in audit row {}",
                    row.seq
                );
            }
        }
    }

    /// After a refusal: nothing new stored, no state changed, audit chain intact.
    async fn unchanged(&self, before: &Snapshot, what: &str) {
        assert_eq!(
            &self.snapshot().await,
            before,
            "{what}: stored state changed"
        );
        self.audit_verifies();
    }

    /// How many `certificate.issued` events name `id`, and whether a certificate row exists.
    fn issuance_of(&self, id: &str) -> (usize, bool) {
        self.store
            .read(|tx| {
                let events = tx
                    .audit_rows()?
                    .into_iter()
                    .filter(|r| {
                        r.event.action == "certificate.issued"
                            && r.event.request_id.as_deref() == Some(id)
                    })
                    .count();
                let row = tx.certificate_for_request(id)?.is_some();
                Ok::<_, moshca_server::store::Error>((events, row))
            })
            .unwrap()
    }

    /// Replaces the policy in force (as a SIGHUP reload would).
    fn reload_policy(&self, text: &str) {
        std::fs::write(&self.data.config.policy, text).unwrap();
        let policy = Policy::parse(text, "policy.toml", self.data.config.max_ttl).unwrap();
        self.served
            .authority
            .replace_policy(policy, moshca_server::clock::now())
            .unwrap();
    }

    async fn ca_keys(&self) -> Vec<String> {
        self.client()
            .get_ca_public_keys(pb::GetCaPublicKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .public_keys
    }
}

/// Parses an issued certificate and checks its CA signature.
async fn parsed(h: &Harness, r: &pb::AccessRequest) -> Certificate {
    let text = &r.certificate.as_ref().expect("certificate visible").openssh;
    let cert = Certificate::from_openssh(text).unwrap();
    let ca = PublicKey::from_openssh(&h.ca_keys().await[0]).unwrap();
    cert.validate_at(cert.valid_after() + 61, [&ca.fingerprint(HashAlg::Sha256)])
        .unwrap();
    cert
}

mod break_glass;
mod decided_requests;
mod limits;
mod principals;
mod races;
mod revocation;
mod revoked;
mod roles;
mod self_approval;
mod smuggling;
mod stale_approvals;
mod subject_keys;
mod ttl;
mod workload_tokens;

// Attacks from a security review of the running CA: one module per area, one test per
// finding, named after it; each performs the original attack first.
mod review_audit;
mod review_credentials;
mod review_issuance;
mod review_keys;
mod sessions;

#[tokio::test]
async fn database_path_is_the_one_the_server_uses() {
    // Guards the harness itself: the second store sees the server's writes.
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    assert!(h.data.config.database.sqlite_path().unwrap().exists());
    let stored = h.store.read(|tx| tx.request(&created.id)).unwrap();
    assert!(stored.is_some());
}
