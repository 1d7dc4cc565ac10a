//! Adversarial suite: every domain rule of DESIGN.md broken on purpose, through the real
//! server on 127.0.0.1:0 with TLS, driven by the generated gRPC client.
//!
//! One module per threat. After every refusal the suite checks that nothing was stored
//! (the requests an approver can list are unchanged, no certificate appeared) and that the
//! audit chain, read through a second `Store` on the same database, still verifies.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

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

mod principals {
    //! DESIGN rule 3; Vault CVE-2024-7594 and #16622, BLESS #53, CVE-2026-35414.

    use super::*;

    #[tokio::test]
    async fn hostile_principal_strings_are_refused_and_nothing_is_stored() {
        let h = start().await;
        let before = h.snapshot().await;
        let long = "a".repeat(65);
        let cases: &[(&str, Code)] = &[
            ("", Code::InvalidArgument),
            ("*", Code::InvalidArgument),
            ("postgres,root", Code::InvalidArgument),
            ("postgres,ubuntu", Code::InvalidArgument),
            ("postgres ubuntu", Code::InvalidArgument),
            (" postgres", Code::InvalidArgument),
            ("postgres ", Code::InvalidArgument),
            ("postgres\nroot", Code::InvalidArgument),
            ("postgres\r\nroot", Code::InvalidArgument),
            ("postgres\0root", Code::InvalidArgument),
            ("postgres\troot", Code::InvalidArgument),
            ("-oProxyCommand=x", Code::InvalidArgument),
            ("@postgres", Code::InvalidArgument),
            ("force-command=/bin/sh", Code::InvalidArgument),
            ("p\u{043e}stgres", Code::InvalidArgument), // Cyrillic o
            ("postgres\u{200b}", Code::InvalidArgument), // zero-width space
            (&long, Code::InvalidArgument),
            ("root", Code::PermissionDenied),
            ("POSTGRES", Code::PermissionDenied),
            ("postgres@db-prod", Code::PermissionDenied),
            ("permit-pty", Code::PermissionDenied),
        ];
        for (p, code) in cases {
            for list in [vec![*p], vec!["postgres", *p]] {
                let what = format!("principals {list:?}");
                refused(h.create("alice", ask("db", &list, 600)).await, *code, &what);
                h.unchanged(&before, &what).await;
            }
        }
    }

    #[tokio::test]
    async fn a_second_principal_outside_the_role_is_refused() {
        // BLESS #53: only the first principal was checked.
        let h = start().await;
        let before = h.snapshot().await;
        for list in [
            &["postgres", "root"][..],
            &["ubuntu", "postgres", "root"],
            &["root", "postgres"],
            &["postgres", "ubuntu", "deploy"],
        ] {
            let what = format!("principals {list:?}");
            let msg = refused(
                h.create("alice", ask("db", list, 600)).await,
                Code::PermissionDenied,
                &what,
            );
            assert!(msg.contains("not allowed"), "{what}: {msg}");
            h.unchanged(&before, &what).await;
        }
    }

    #[tokio::test]
    async fn thirty_three_principals_are_refused() {
        let h = start().await;
        let before = h.snapshot().await;
        let many: Vec<String> = (0..33).map(|i| format!("u{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let msg = refused(
            h.create("alice", ask("db", &many, 600)).await,
            Code::InvalidArgument,
            "33 principals",
        );
        assert!(msg.contains("at most 32"), "{msg}");
        h.unchanged(&before, "33 principals").await;
        // 33 copies of an allowed login are still 33 principals.
        let same = vec!["postgres"; 33];
        refused(
            h.create("alice", ask("db", &same, 600)).await,
            Code::InvalidArgument,
            "33 x postgres",
        );
        // Thousands of principals: refused, never a panic or a partial write.
        let flood: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
        let flood: Vec<&str> = flood.iter().map(String::as_str).collect();
        let status = h.create("alice", ask("db", &flood, 600)).await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
            ),
            "{status:?}"
        );
        h.unchanged(&before, "5000 principals").await;
    }

    #[tokio::test]
    async fn empty_list_means_the_roles_logins_never_an_empty_certificate() {
        let h = start().await;
        let r = h.issue("alice", "db", &[]).await;
        let cert = parsed(&h, &r).await;
        assert_eq!(cert.valid_principals(), ["postgres", "ubuntu"]);
        // A duplicate is signed once.
        let r = h.issue("alice", "db", &["ubuntu", "ubuntu"]).await;
        assert_eq!(parsed(&h, &r).await.valid_principals(), ["ubuntu"]);
        h.audit_verifies();
    }
}

mod ttl {
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
}

mod subject_keys {
    //! DESIGN rule 8; Teleport CVE-2025-49825 (a certificate where a plain key belongs).

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// A well-formed `ssh-dss` public key (1024-bit p, 160-bit q), built by hand.
    fn dsa_key() -> String {
        let mpint = |len: usize| {
            let mut v = vec![0u8; len + 1];
            v[1] = 0xc5;
            v[len] = 0x0b;
            v
        };
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-dss");
        for len in [128, 20, 128, 128] {
            put_string(&mut blob, &mpint(len));
        }
        format!("ssh-dss {} dsa@host", b64(&blob))
    }

    /// An RSA public key with a modulus of exactly `bits` bits; no key generation.
    fn rsa_key(bits: usize) -> String {
        let mut n = vec![0u8; bits.div_ceil(8)];
        let top = bits - (n.len() - 1) * 8;
        n[0] = 1 << (top - 1);
        *n.last_mut().unwrap() |= 1;
        let key = RsaPublicKey {
            e: Mpint::from_positive_bytes(&[1, 0, 1]).unwrap(),
            n: Mpint::from_positive_bytes(&n).unwrap(),
        };
        PublicKey::new(KeyData::Rsa(key), "").to_openssh().unwrap()
    }

    #[tokio::test]
    async fn unacceptable_subject_keys_are_refused() {
        let h = start().await;
        // A certificate this CA issued, fed back as a subject key.
        let issued = h.issue("alice", "db", &["postgres"]).await;
        let cert_text = issued.certificate.unwrap().openssh;
        let before = h.snapshot().await;

        let ok = new_key();
        let blob_b64 = ok.split(' ').nth(1).unwrap().to_owned();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&blob_b64)
            .unwrap();
        let mut trailing = blob.clone();
        trailing.extend_from_slice(&[0, 0, 0, 1, b'x']);
        let ca = h.ca_keys().await[0].clone();
        let ca_plain = ca.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let private = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .unwrap()
            .to_openssh(ssh_key::LineEnding::LF)
            .unwrap()
            .to_string();

        let cases: Vec<(&str, String)> = vec![
            ("DSA", dsa_key()),
            ("RSA 1024", rsa_key(1024)),
            ("RSA 2047", rsa_key(2047)),
            ("empty", String::new()),
            ("label only", "ssh-ed25519".into()),
            (
                "truncated blob",
                format!("ssh-ed25519 {}", b64(&blob[..blob.len() - 4])),
            ),
            (
                "truncated base64",
                format!("ssh-ed25519 {}", &blob_b64[..blob_b64.len() - 8]),
            ),
            ("trailing bytes", format!("ssh-ed25519 {}", b64(&trailing))),
            (
                "wrong type label",
                format!("ecdsa-sha2-nistp256 {blob_b64}"),
            ),
            ("rsa label on ed25519", format!("ssh-rsa {blob_b64}")),
            ("certificate", cert_text.clone()),
            (
                "certificate relabelled",
                cert_text.replacen("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519", 1),
            ),
            ("CA's own key", ca.clone()),
            ("CA's own key, no comment", ca_plain.clone()),
            ("CA's own key, other comment", format!("{ca_plain} laptop")),
            ("multi-line", format!("{ok}\n{}", new_key())),
            ("embedded CR", format!("{ok}\r{}", new_key())),
            ("NUL inside", format!("ssh-ed25519 {blob_b64}\0trailer")),
            (
                "authorized_keys options",
                format!("command=\"/bin/sh\",no-pty {ok}"),
            ),
            ("private key", private),
            ("17 KiB", format!("ssh-ed25519 {}", "A".repeat(17 * 1024))),
        ];
        for (what, key) in cases {
            let mut m = ask("db", &["postgres"], 600);
            m.public_key = key;
            refused(h.create("alice", m).await, Code::InvalidArgument, what);
            h.unchanged(&before, what).await;
        }
    }

    #[tokio::test]
    async fn a_one_mebibyte_key_hits_the_message_limit() {
        let h = start().await;
        let before = h.snapshot().await;
        let mut m = ask("db", &["postgres"], 600);
        m.public_key = format!("ssh-ed25519 {}", "A".repeat(1024 * 1024));
        let status = h.create("alice", m).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{status:?}"
        );
        h.unchanged(&before, "1 MiB key").await;
    }

    #[tokio::test]
    async fn acceptable_keys_are_signed_as_plain_keys() {
        let h = start().await;
        for key in [rsa_key(2048), new_key()] {
            let mut m = ask("db", &["postgres"], 600);
            m.public_key = format!("{key} comment with spaces force-command=/bin/sh");
            let created = h.create("alice", m).await.unwrap();
            h.approve("bob", &created.id).await.unwrap();
            let r = h.get("alice", &created.id, true).await;
            let cert = parsed(&h, &r).await;
            assert_eq!(
                cert.public_key(),
                PublicKey::from_openssh(&key).unwrap().key_data()
            );
            assert!(cert.critical_options().is_empty());
        }
    }
}

mod self_approval {
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
}

mod races {
    //! DESIGN rule 7: one approval, one certificate, whatever the interleaving.

    use super::*;

    const ROUNDS: usize = 20;

    /// The state a request ended in, checked for "a certificate exists iff issued".
    async fn settled(h: &Harness, id: &str) -> i32 {
        let r = h.get("alice", id, true).await;
        let (events, row) = h.issuance_of(id);
        let issued = r.state == pb::State::Issued as i32;
        assert_eq!(
            r.certificate.is_some(),
            issued,
            "{id}: certificate iff issued"
        );
        assert_eq!(row, issued, "{id}: certificate row iff issued");
        assert_eq!(events, usize::from(issued), "{id}: issuance events");
        assert_eq!(r.serial != 0, issued, "{id}: serial iff issued");
        r.state
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_double_approval_issues_once() {
        let h = start().await;
        for round in 0..ROUNDS {
            let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
            let (a, b) = tokio::join!(
                h.approve("bob", &created.id),
                h.approve("carol", &created.id)
            );
            let ok: Vec<_> = [&a, &b].into_iter().filter(|r| r.is_ok()).collect();
            assert_eq!(ok.len(), 1, "round {round}: {a:?} {b:?}");
            let loser = if a.is_ok() { b } else { a };
            assert_eq!(loser.unwrap_err().code(), Code::FailedPrecondition);
            assert_eq!(settled(&h, &created.id).await, pb::State::Issued as i32);
        }
        h.audit_verifies();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn approve_versus_deny_has_exactly_one_outcome() {
        let h = start().await;
        let mut outcomes = BTreeMap::new();
        for round in 0..ROUNDS {
            let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
            let (a, d) = tokio::join!(h.approve("bob", &created.id), h.deny("carol", &created.id));
            assert!(a.is_ok() != d.is_ok(), "round {round}: {a:?} {d:?}");
            let state = settled(&h, &created.id).await;
            let winner = a.as_ref().or(d.as_ref()).unwrap();
            assert_eq!(winner.state, state, "round {round}");
            let expected = if a.is_ok() {
                pb::State::Issued
            } else {
                pb::State::Denied
            };
            assert_eq!(state, expected as i32, "round {round}");
            *outcomes.entry(state).or_insert(0) += 1;
        }
        assert_eq!(outcomes.values().sum::<i32>(), ROUNDS as i32);
        h.audit_verifies();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn approve_versus_cancel_has_exactly_one_outcome() {
        let h = start().await;
        for round in 0..ROUNDS {
            let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
            let (a, c) = tokio::join!(
                h.approve("bob", &created.id),
                h.cancel("alice", &created.id)
            );
            assert!(a.is_ok() != c.is_ok(), "round {round}: {a:?} {c:?}");
            let state = settled(&h, &created.id).await;
            let expected = if a.is_ok() {
                pb::State::Issued
            } else {
                pb::State::Cancelled
            };
            assert_eq!(state, expected as i32, "round {round}");
        }
        h.audit_verifies();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_approver_racing_with_itself_counts_once() {
        let h = start().await;
        for round in 0..ROUNDS {
            let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
            let (a, b) = tokio::join!(h.approve("bob", &created.id), h.approve("bob", &created.id));
            assert!(a.is_ok() != b.is_ok(), "round {round}: {a:?} {b:?}");
            assert_eq!(settled(&h, &created.id).await, pb::State::Pending as i32);
            let r = h.get("alice", &created.id, false).await;
            assert_eq!(r.reviews.len(), 1, "round {round}");
            h.cancel("alice", &created.id).await.unwrap();
        }
        h.audit_verifies();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_approvals_racing_on_a_two_approval_role_issue_once() {
        let h = start().await;
        for round in 0..ROUNDS {
            let created = h.create("alice", ask("two", &[], 600)).await.unwrap();
            h.approve("bob", &created.id).await.unwrap();
            let (c, d) = tokio::join!(
                h.approve("carol", &created.id),
                h.approve("dave", &created.id)
            );
            assert!(c.is_ok() != d.is_ok(), "round {round}: {c:?} {d:?}");
            assert_eq!(settled(&h, &created.id).await, pb::State::Issued as i32);
        }
        h.audit_verifies();
    }
}

mod decided_requests {
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
}

mod stale_approvals {
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
}

mod smuggling {
    //! DESIGN rule 5: critical options and extensions come from policy only.

    use super::*;

    fn role_options() -> BTreeMap<String, String> {
        [
            ("force-command", "/usr/local/bin/report"),
            ("source-address", "10.0.0.0/8,192.0.2.1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn role_extensions() -> BTreeMap<String, String> {
        ["permit-port-forwarding", "permit-pty"]
            .into_iter()
            .map(|k| (k.to_owned(), String::new()))
            .collect()
    }

    fn options(cert: &Certificate) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let c = cert
            .critical_options()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let e = cert
            .extensions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (c, e)
    }

    #[tokio::test]
    async fn request_fields_cannot_add_options_or_extensions() {
        let h = start().await;
        let smuggled_reasons = [
            "INC-1 force-command=/bin/sh",
            "INC-1 source-address=0.0.0.0/0 permit-X11-forwarding permit-agent-forwarding",
            "INC-1 \"permit-user-rc\" no-touch-required verify-required",
            "INC-1 ,force-command=\"/bin/sh\",permit-pty",
        ];
        for reason in smuggled_reasons {
            let mut m = ask("locked", &["deploy"], 600);
            m.reason = reason.into();
            m.public_key = format!(
                "{} force-command=/bin/sh permit-agent-forwarding",
                new_key()
            );
            let created = h.create("alice", m).await.unwrap();
            h.review(
                "bob",
                &created.id,
                pb::Decision::Approve,
                0,
                "force-command=/bin/sh permit-X11-forwarding",
            )
            .await
            .unwrap();
            let r = h.get("alice", &created.id, true).await;
            let cert = parsed(&h, &r).await;
            let (crit, ext) = options(&cert);
            assert_eq!(crit, role_options(), "{reason}");
            assert_eq!(ext, role_extensions(), "{reason}");
            assert_eq!(cert.valid_principals(), ["deploy"]);
            assert!(cert.key_id().bytes().all(|b| b.is_ascii_graphic()));
        }
        // A role without options gets none, and exactly the default extension.
        let r = h.issue("alice", "db", &[]).await;
        let (crit, ext) = options(&parsed(&h, &r).await);
        assert!(crit.is_empty(), "{crit:?}");
        assert_eq!(ext.keys().collect::<Vec<_>>(), ["permit-pty"]);
        h.audit_verifies();
    }

    #[tokio::test]
    async fn control_characters_in_reasons_and_comments_are_refused() {
        let h = start().await;
        let before = h.snapshot().await;
        for reason in [
            "INC-1 lag\nforce-command=/bin/sh",
            "INC-1 lag\r\npermit-X11-forwarding",
            "INC-1 lag\0force-command",
            "INC-1 lag\u{1b}[2J",
        ] {
            let mut m = ask("locked", &["deploy"], 600);
            m.reason = reason.into();
            let what = format!("reason {reason:?}");
            refused(h.create("alice", m).await, Code::InvalidArgument, &what);
            h.unchanged(&before, &what).await;
        }
        let created = h.create("alice", ask("locked", &[], 600)).await.unwrap();
        let before = h.snapshot().await;
        for comment in ["ok\nforce-command=/bin/sh", "ok\0", &"x".repeat(2000)] {
            let what = format!("comment of {} bytes", comment.len());
            refused(
                h.review("bob", &created.id, pb::Decision::Approve, 0, comment)
                    .await,
                Code::InvalidArgument,
                &what,
            );
            h.unchanged(&before, &what).await;
        }
        refused(
            h.review("bob", &created.id, pb::Decision::Deny, 0, "  ")
                .await,
            Code::InvalidArgument,
            "deny without reason",
        );
        h.unchanged(&before, "deny without reason").await;
    }

    #[tokio::test]
    async fn option_names_as_principals_are_refused() {
        let h = start().await;
        let before = h.snapshot().await;
        for p in [
            "permit-pty",
            "permit-X11-forwarding",
            "force-command",
            "source-address",
        ] {
            refused(
                h.create("alice", ask("locked", &["deploy", p], 600)).await,
                Code::PermissionDenied,
                p,
            );
            h.unchanged(&before, p).await;
        }
    }
}

mod revocation {
    //! DESIGN rule 10; step-ca PR #2491: a caller may revoke only what policy allows.

    use super::*;
    use pb::revoke_certificates_request::Target;

    #[tokio::test]
    async fn non_revokers_cannot_revoke_someone_elses_certificates() {
        let h = start().await;
        let issued = h.issue("alice", "db", &["postgres"]).await;
        let cert = issued.certificate.clone().unwrap();
        let subject = Certificate::from_openssh(&cert.openssh).unwrap();
        let key = PublicKey::new(subject.public_key().clone(), "")
            .to_openssh()
            .unwrap();
        let krl_before = h
            .client()
            .get_krl(pb::GetKrlRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        let before = h.snapshot().await;
        for who in ["eve", "bob", "mallory", "alice2"] {
            for target in [
                Target::Serial(cert.serial),
                Target::RequestId(issued.id.clone()),
                Target::User("alice".into()),
                Target::PublicKey(key.clone()),
            ] {
                let what = format!("{who} revokes {target:?}");
                refused(
                    h.revoke(who, target, "I say so").await,
                    Code::PermissionDenied,
                    &what,
                );
                h.unchanged(&before, &what).await;
            }
        }
        let krl = h
            .client()
            .get_krl(pb::GetKrlRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(krl.version, krl_before, "KRL must not change");
        // alice is still enabled: a refused "revoke user" must not disable her.
        h.client()
            .who_am_i(h.req("alice", pb::WhoAmIRequest {}))
            .await
            .unwrap();
        h.store
            .read(|tx| {
                let c = tx.certificate_by_serial(cert.serial)?.unwrap();
                assert!(c.revoked_at.is_none(), "certificate revoked by a refusal");
                assert!(!tx.key_revoked(&issued.fingerprint)?);
                Ok::<_, moshca_server::store::Error>(())
            })
            .unwrap();

        // Malformed revocations.
        refused(
            h.revoke("sec", Target::Serial(0), "x").await,
            Code::InvalidArgument,
            "serial 0",
        );
        refused(
            h.revoke("sec", Target::Serial(cert.serial), "  ").await,
            Code::InvalidArgument,
            "empty reason",
        );
        refused(
            h.revoke("sec", Target::Serial(cert.serial), "a\nb").await,
            Code::InvalidArgument,
            "multi-line reason",
        );
        refused(
            h.revoke("sec", Target::User("alice,bob".into()), "x").await,
            Code::InvalidArgument,
            "malformed user",
        );
        h.unchanged(&before, "malformed revocations").await;

        // The security group may.
        let r = h
            .revoke("sec", Target::Serial(cert.serial), "laptop lost")
            .await
            .unwrap();
        assert_eq!(r.serials, [cert.serial]);
        assert!(r.krl_version > krl_before);
        h.audit_verifies();
    }
}

mod workload_tokens {
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
}

mod break_glass {
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
}

mod roles {
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
            ("alice", &long),
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
}

mod revoked {
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
}

mod limits {
    //! A requester cannot flood approvers: at most 5 pending requests each.

    use super::*;

    /// Polls the futures together (a `join_all` without the futures crate); their results
    /// in order.
    async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
        let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
                if let Some(f) = slot
                    && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
                {
                    *result = Some(v);
                    *slot = None;
                }
            }
            if pending.iter().all(Option::is_none) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        results.into_iter().flatten().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pending_cap_per_requester_holds() {
        let h = start().await;
        let cap = authority::MAX_PENDING_PER_REQUESTER;
        let mut ids = Vec::new();
        for _ in 0..cap {
            ids.push(h.create("alice", ask("db", &[], 600)).await.unwrap().id);
        }
        let before = h.snapshot().await;
        for role in ["db", "two", "locked", "glass"] {
            let what = format!("request {} on {role}", cap + 1);
            let msg = refused(
                h.create("alice", ask(role, &[], 600)).await,
                Code::ResourceExhausted,
                &what,
            );
            assert!(
                msg.contains(&format!("at most {cap} pending")),
                "{what}: {msg}"
            );
            h.unchanged(&before, &what).await;
        }
        let pending_alice = before
            .iter()
            .filter(|(_, s, ..)| *s == pb::State::Pending as i32)
            .count();
        assert_eq!(pending_alice as u64, cap);
        // A concurrent flood from another requester stops at the cap too.
        let flood = (0..3 * cap).map(|_| h.create("mallory", ask("db", &[], 600)));
        let results = join_all(flood).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok as u64, cap, "concurrent creates past the cap");
        for r in results.into_iter().filter_map(Result::err) {
            assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
        }
        for r in h.snapshot().await {
            if r.1 == pb::State::Pending as i32 && !before.contains(&r) {
                h.cancel("mallory", &r.0).await.unwrap();
            }
        }
        // Others are not affected, and a decided request frees a slot.
        h.create("mallory", ask("db", &[], 600)).await.unwrap();
        h.cancel("alice", &ids[0]).await.unwrap();
        h.create("alice", ask("db", &[], 600)).await.unwrap();
        h.audit_verifies();
    }
}

#[tokio::test]
async fn database_path_is_the_one_the_server_uses() {
    // Guards the harness itself: the second store sees the server's writes.
    let h = start().await;
    let created = h.create("alice", ask("db", &[], 600)).await.unwrap();
    assert!(h.data.config.database.exists());
    let stored = h.store.read(|tx| tx.request(&created.id)).unwrap();
    assert!(stored.is_some());
}
