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
