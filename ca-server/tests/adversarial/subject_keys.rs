//! DESIGN rule 8; Teleport CVE-2025-49825 (a certificate where a plain key belongs).

use super::*;

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A well-formed `ssh-dss` public key (1024-bit p, 160-bit q), built by hand.
pub(super) fn dsa_key() -> String {
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

/// An RSA public key with a modulus of exactly `bits` bits, told apart by `tag`.
pub(super) fn rsa_key(bits: usize, tag: u16) -> String {
    let mut n = vec![0u8; bits.div_ceil(8)];
    let top = bits - (n.len() - 1) * 8;
    n[0] = 1 << (top - 1);
    let len = n.len();
    n[len - 3..len - 1].copy_from_slice(&tag.to_be_bytes());
    n[len - 1] |= 1;
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
        ("RSA 1024", rsa_key(1024, 0)),
        ("RSA 2047", rsa_key(2047, 0)),
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
    for key in [rsa_key(2048, 0), new_key()] {
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
