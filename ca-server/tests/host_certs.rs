//! Host certificates through the real server on 127.0.0.1:0: join tokens that work once,
//! only until they expire and only for the names they carry; renewals that need a fresh
//! signature by the certified host key; revoked and expired certificates that cannot be
//! renewed; and a host CA key that never meets the user CA key. Each refusal is attempted
//! first, then what must hold is asserted.

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

mod common;

use moshca_proto::v1 as pb;
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_server::authority::{self, HOST_RENEW_NAMESPACE, HostRevokeTarget, renew_message};
use moshca_server::store::Store;
use moshca_server::{clock, server};
use rand::rngs::OsRng;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey};
use tonic::Code;
use tonic::transport::Channel;

const POLICY: &str = r#"
[[role]]
name = "ops"
approval = "auto"
requesters = ["group:ops"]
logins = ["ubuntu"]
max_ttl = "1h"
"#;

struct Harness {
    data: common::DataDir,
    served: common::Served,
    store: Store,
}

async fn start() -> Harness {
    let data = common::data_dir(POLICY, "", &[("alice", &["ops"])]);
    let served = common::serve(&data.config, server::open(&data.config, None).unwrap()).await;
    let store = Store::open(&data.config.database).unwrap();
    Harness {
        data,
        served,
        store,
    }
}

fn host_key() -> PrivateKey {
    PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
}

fn openssh(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Harness {
    fn client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(self.served.channel())
    }

    /// A join token for `principals`, made `at`, valid `ttl` seconds.
    fn token_at(&self, principals: &[&str], ttl: u64, at: u64) -> String {
        authority::create_join_token_at(&self.store, &names(principals), ttl, None, "operator", at)
            .unwrap()
            .token
            .expose()
            .to_owned()
    }

    fn token(&self, principals: &[&str]) -> String {
        self.token_at(principals, 3600, clock::now())
    }

    async fn enroll(
        &self,
        token: &str,
        key: &PrivateKey,
        principals: &[&str],
    ) -> Result<pb::HostCertificate, tonic::Status> {
        self.client()
            .enroll_host(pb::EnrollHostRequest {
                token: token.to_owned(),
                public_key: openssh(key),
                principals: names(principals),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn challenge(&self, cert: &str) -> Result<String, tonic::Status> {
        self.client()
            .get_host_challenge(pb::GetHostChallengeRequest {
                certificate: cert.to_owned(),
            })
            .await
            .map(|r| r.into_inner().nonce)
    }

    async fn renew_with(
        &self,
        cert: &str,
        nonce: &str,
        signature: String,
    ) -> Result<pb::HostCertificate, tonic::Status> {
        self.client()
            .renew_host(pb::RenewHostRequest {
                certificate: cert.to_owned(),
                nonce: nonce.to_owned(),
                signature,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Renews `cert` the way `moshca host renew` does, signing with `key`.
    async fn renew(
        &self,
        cert: &str,
        key: &PrivateKey,
    ) -> Result<pb::HostCertificate, tonic::Status> {
        let nonce = self.challenge(cert).await?;
        let serial = Certificate::from_openssh(cert).unwrap().serial();
        self.renew_with(
            cert,
            &nonce,
            sign(key, HOST_RENEW_NAMESPACE, &nonce, serial),
        )
        .await
    }

    async fn ca_keys(&self) -> pb::GetCaPublicKeysResponse {
        self.client()
            .get_ca_public_keys(pb::GetCaPublicKeysRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    async fn host_ca(&self) -> PublicKey {
        let keys = self.ca_keys().await;
        let host: Vec<_> = keys
            .keys
            .iter()
            .filter(|k| k.r#type == pb::CaKeyType::Host as i32)
            .collect();
        assert_eq!(host.len(), 1, "{keys:?}");
        PublicKey::from_openssh(&host[0].openssh).unwrap()
    }

    fn audit_actions(&self) -> Vec<(String, String)> {
        self.store
            .read(|tx| tx.audit_rows())
            .unwrap()
            .into_iter()
            .map(|r| (r.event.action, r.event.details.to_string()))
            .collect()
    }
}

fn sign(key: &PrivateKey, namespace: &str, nonce: &str, serial: u64) -> String {
    key.sign(namespace, HashAlg::Sha512, &renew_message(nonce, serial))
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

#[tokio::test]
async fn finding_15_a_join_token_works_once_and_only_for_the_names_it_carries() {
    let h = start().await;
    let key = host_key();
    let token = h.token(&["db-1.example.com", "db-1"]);

    // The attack: a tampered request asks for a name the token does not carry.
    let added = h
        .enroll(
            &token,
            &key,
            &["db-1.example.com", "db-1", "ca.example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(added.code(), Code::PermissionDenied, "{added:?}");
    assert!(
        added
            .message()
            .contains("names exactly db-1.example.com, db-1")
    );
    // Nor a subset: a token names its host exactly.
    let fewer = h.enroll(&token, &key, &["db-1"]).await.unwrap_err();
    assert_eq!(fewer.code(), Code::PermissionDenied);

    // The refusals did not use the token up; the enrolment gets exactly its names.
    let cert = h.enroll(&token, &key, &[]).await.unwrap();
    assert_eq!(cert.principals, ["db-1.example.com", "db-1"]);
    let parsed = Certificate::from_openssh(&cert.openssh).unwrap();
    assert_eq!(parsed.cert_type(), CertType::Host);
    assert_eq!(parsed.valid_principals(), ["db-1.example.com", "db-1"]);
    assert_eq!(parsed.public_key(), key.public_key().key_data());
    assert!(parsed.critical_options().is_empty() && parsed.extensions().is_empty());
    // 30 days by default (host_cert_ttl), backdated a minute.
    assert_eq!(
        parsed.valid_before() - parsed.valid_after(),
        30 * 24 * 3600 + 60
    );
    let host_ca = h.host_ca().await;
    parsed
        .validate_at(
            parsed.valid_after() + 120,
            [&host_ca.fingerprint(HashAlg::Sha256)],
        )
        .unwrap();

    // The same token a second time, even for another key.
    let again = h.enroll(&token, &host_key(), &[]).await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(again.message().contains("already used"), "{again:?}");

    // A token the CA never made.
    let forged = "mch_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let unknown = h.enroll(forged, &key, &[]).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // Every step is in the audit trail, and the token never is.
    let audit = h.audit_actions();
    let count = |a: &str| audit.iter().filter(|(x, _)| x == a).count();
    assert_eq!(count("host.token_created"), 1);
    assert_eq!(count("host.enrolled"), 1);
    assert_eq!(count("host.enroll_refused"), 4, "{audit:?}");
    assert!(audit.iter().all(|(_, d)| !d.contains(&token[4..])));
}

#[tokio::test]
async fn finding_15_an_expired_join_token_is_refused() {
    let h = start().await;
    // Made two hours ago, valid one hour.
    let token = h.token_at(&["db-2.example.com"], 3600, clock::now() - 7200);
    let e = h.enroll(&token, &host_key(), &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("expired"), "{e:?}");
    // Token lifetimes are bounded both ways.
    for ttl in [59, 8 * 24 * 3600] {
        assert!(
            authority::create_join_token_at(
                &h.store,
                &names(&["db-2"]),
                ttl,
                None,
                "operator",
                clock::now()
            )
            .is_err()
        );
    }
    // Host names only: no wildcard, no empty list.
    for bad in [&["*.example.com"][..], &[], &["db 1"], &["-x"]] {
        assert!(
            authority::create_join_token_at(
                &h.store,
                &names(bad),
                3600,
                None,
                "operator",
                clock::now()
            )
            .is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn finding_15_renewal_needs_a_fresh_signature_by_the_certified_key() {
    let h = start().await;
    let key = host_key();
    let cert = h
        .enroll(&h.token(&["web-1.example.com"]), &key, &[])
        .await
        .unwrap();

    // Signed by a key the CA never certified.
    let stranger = host_key();
    let nonce = h.challenge(&cert.openssh).await.unwrap();
    let e = h
        .renew_with(
            &cert.openssh,
            &nonce,
            sign(&stranger, HOST_RENEW_NAMESPACE, &nonce, cert.serial),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // That nonce is spent: the right signature over it is refused too.
    let e = h
        .renew_with(
            &cert.openssh,
            &nonce,
            sign(&key, HOST_RENEW_NAMESPACE, &nonce, cert.serial),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The right key, but a signature made for another purpose (namespace).
    let nonce = h.challenge(&cert.openssh).await.unwrap();
    let e = h
        .renew_with(
            &cert.openssh,
            &nonce,
            sign(&key, "file", &nonce, cert.serial),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The right key over a nonce the CA did not hand out.
    let e = h
        .renew_with(
            &cert.openssh,
            "00",
            sign(&key, HOST_RENEW_NAMESPACE, "00", cert.serial),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Not a signature at all.
    let nonce = h.challenge(&cert.openssh).await.unwrap();
    let e = h
        .renew_with(&cert.openssh, &nonce, "garbage".into())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A host certificate made by some other CA for the stranger's key, reusing the
    // serial of the real one: not what this CA issued.
    let other_ca = host_key();
    let mut b = Builder::new_with_random_nonce(
        &mut OsRng,
        stranger.public_key().key_data().clone(),
        0,
        4_000_000_000,
    )
    .unwrap();
    b.serial(cert.serial).unwrap();
    b.cert_type(CertType::Host).unwrap();
    b.key_id("x").unwrap();
    b.valid_principal("web-1.example.com").unwrap();
    let forged = b.sign(&other_ca).unwrap().to_openssh().unwrap();
    let e = h.renew(&forged, &stranger).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("not a host certificate this CA issued")
    );

    // What must hold: the certified key renews, same names, a new serial, and the new
    // certificate renews in turn.
    let renewed = h.renew(&cert.openssh, &key).await.unwrap();
    assert_ne!(renewed.serial, cert.serial);
    assert_eq!(renewed.principals, cert.principals);
    let parsed = Certificate::from_openssh(&renewed.openssh).unwrap();
    assert_eq!(parsed.public_key(), key.public_key().key_data());
    h.renew(&renewed.openssh, &key).await.unwrap();

    let audit = h.audit_actions();
    let count = |a: &str| audit.iter().filter(|(x, _)| x == a).count();
    assert_eq!(count("host.renewed"), 2);
    assert!(count("host.renew_refused") >= 6, "{audit:?}");
}

#[tokio::test]
async fn finding_15_revoked_or_expired_host_certificates_are_not_renewed_and_reach_the_krl() {
    let h = start().await;
    let key = host_key();
    let cert = h
        .enroll(&h.token(&["db-3.example.com"]), &key, &[])
        .await
        .unwrap();
    let other = host_key();
    let by_serial = h
        .enroll(&h.token(&["db-4.example.com"]), &other, &[])
        .await
        .unwrap();

    // Revoke the first host's key for good, the second's certificate by serial.
    let now = clock::now();
    let r = authority::revoke_host_at(
        &h.store,
        &HostRevokeTarget::PublicKey(openssh(&key)),
        "host rebuilt",
        "operator",
        now,
    )
    .unwrap();
    assert_eq!(r.serials, [cert.serial]);
    authority::revoke_host_at(
        &h.store,
        &HostRevokeTarget::Serial(by_serial.serial),
        "host decommissioned",
        "operator",
        now,
    )
    .unwrap();

    for (c, k) in [(&cert, &key), (&by_serial, &other)] {
        let e = h.renew(&c.openssh, k).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("revoked"), "{e:?}");
    }
    // A revoked host key cannot enrol again, even with a fresh token.
    let e = h
        .enroll(&h.token(&["db-3.example.com"]), &key, &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The KRL lists the certificate under the host CA key and the host key itself.
    let krl = h
        .client()
        .get_krl(pb::GetKrlRequest {})
        .await
        .unwrap()
        .into_inner();
    let decoded = moshca_server::krl::decode::decode(&krl.krl).unwrap();
    let host_ca = h.host_ca().await.to_bytes().unwrap();
    let section = decoded
        .certs
        .iter()
        .find(|s| s.ca_key == host_ca)
        .expect("a section for the host CA key");
    let mut serials = section.serials();
    serials.sort_unstable();
    let mut want = vec![cert.serial, by_serial.serial];
    want.sort_unstable();
    assert_eq!(serials, want);
    assert!(
        decoded
            .explicit_keys
            .contains(&key.public_key().to_bytes().unwrap())
    );

    // An expired certificate: enrolled 31 days ago with the default 30-day validity.
    let then = clock::now() - 31 * 24 * 3600;
    let old_key = host_key();
    let old = h
        .served
        .authority
        .enroll_host_at(
            &moshca_server::auth::Token::from_presented(&h.token_at(
                &["db-5.example.com"],
                3600,
                then,
            )),
            &openssh(&old_key),
            &[],
            "test",
            then,
        )
        .unwrap();
    let e = h.renew(&old.record.openssh, &old_key).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");
}

#[tokio::test]
async fn finding_15_the_host_ca_key_and_the_user_ca_key_never_cross() {
    let h = start().await;
    let host_ca = h.host_ca().await;
    let user_ca =
        PublicKey::read_openssh_file(&h.data.config.ca_key.with_extension("pub")).unwrap();
    assert_ne!(host_ca.key_data(), user_ca.key_data());

    // The published user keys (what `host sync` writes for TrustedUserCAKeys) never
    // include the host CA key; the typed list has each key once with its type.
    let keys = h.ca_keys().await;
    assert_eq!(keys.public_keys.len(), 1);
    assert_eq!(
        PublicKey::from_openssh(&keys.public_keys[0])
            .unwrap()
            .key_data(),
        user_ca.key_data()
    );
    assert!(
        keys.public_keys
            .iter()
            .all(|k| PublicKey::from_openssh(k).unwrap().key_data() != host_ca.key_data())
    );
    let types: Vec<i32> = keys.keys.iter().map(|k| k.r#type).collect();
    assert_eq!(
        types,
        [pb::CaKeyType::User as i32, pb::CaKeyType::Host as i32]
    );

    // A user certificate is signed by the user CA key, never the host CA key.
    let user_key = host_key();
    let req = h
        .client()
        .create_access_request(common::bearer(
            &h.data.tokens["alice"],
            pb::CreateAccessRequestRequest {
                role: "ops".into(),
                principals: vec![],
                ttl_secs: 600,
                reason: "INC-1 check".into(),
                public_key: openssh(&user_key),
                break_glass: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let user_cert = Certificate::from_openssh(&req.certificate.unwrap().openssh).unwrap();
    assert_eq!(user_cert.cert_type(), CertType::User);
    assert_eq!(user_cert.signature_key(), user_ca.key_data());

    // A host certificate is signed by the host CA key, never the user CA key.
    let hk = host_key();
    let cert = h
        .enroll(&h.token(&["h.example.com"]), &hk, &[])
        .await
        .unwrap();
    let host_cert = Certificate::from_openssh(&cert.openssh).unwrap();
    assert_eq!(host_cert.cert_type(), CertType::Host);
    assert_eq!(host_cert.signature_key(), host_ca.key_data());
    assert_ne!(host_cert.signature_key(), user_ca.key_data());

    // Neither CA key can be certified as a subject of the other kind.
    let e = h
        .client()
        .enroll_host(pb::EnrollHostRequest {
            token: h.token(&["h2.example.com"]),
            public_key: user_ca.to_openssh().unwrap(),
            principals: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = h
        .client()
        .create_access_request(common::bearer(
            &h.data.tokens["alice"],
            pb::CreateAccessRequestRequest {
                role: "ops".into(),
                principals: vec![],
                ttl_secs: 600,
                reason: "INC-1 check".into(),
                public_key: host_ca.to_openssh().unwrap(),
                break_glass: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn finding_15_an_older_data_directory_gets_a_host_ca_key_at_start_and_rotation_keeps_both() {
    let data = common::data_dir(POLICY, "", &[]);
    let config = &data.config;
    // A data directory from before host certificates.
    std::fs::remove_file(&config.host_ca_key).unwrap();
    std::fs::remove_file(config.host_ca_key.with_extension("pub")).unwrap();
    let loaded = server::open(config, None).unwrap();
    assert!(config.host_ca_key.exists());
    let first = PublicKey::read_openssh_file(&config.host_ca_key.with_extension("pub")).unwrap();
    let store = Store::open(&config.database).unwrap();
    let rows = store.read(|tx| tx.audit_rows()).unwrap();
    assert!(rows.iter().any(|r| r.event.action == "host_ca.created"));
    let authority = loaded.authority.clone();
    let now = clock::now();
    assert_eq!(
        authority.host_ca_public_keys_at(now).unwrap()[0].key_data(),
        first.key_data()
    );
    // A host certified by the first key.
    let token =
        authority::create_join_token_at(&store, &names(&["a.example.com"]), 3600, None, "op", now)
            .unwrap()
            .token;
    authority
        .enroll_host_at(&token, &openssh(&host_key()), &[], "test", now)
        .unwrap();

    // Rotation publishes the new key at once beside the old one, which stays while its
    // certificate is valid; the retired key never lands where user CA keys are read.
    let r = moshca_server::rotation::rotate_host(config, None, now).unwrap();
    assert_eq!(
        r.old_fingerprint,
        first.fingerprint(HashAlg::Sha256).to_string()
    );
    let published = authority.host_ca_public_keys_at(now).unwrap();
    assert_eq!(published.len(), 2, "{published:?}");
    let user_files = moshca_server::ca_keys::KeyFiles::of(config).load();
    assert!(user_files.iter().all(|k| k.key_data() != first.key_data()));
    // After the reload the server signs with the new key.
    let new = server::load_host_signer(config, None, &store).unwrap();
    assert!(authority.replace_host_signer(new, now).unwrap());
    let token =
        authority::create_join_token_at(&store, &names(&["b.example.com"]), 3600, None, "op", now)
            .unwrap()
            .token;
    let cert = authority
        .enroll_host_at(&token, &openssh(&host_key()), &[], "test", now)
        .unwrap();
    assert_eq!(cert.record.ca_fingerprint, r.new_fingerprint);
}
