//! Attacks from a security review of the running CA (findings 1 and 2): subject keys
//! OpenSSH would refuse, the KRL flood, entries that cannot be listed.

use std::time::Instant;

use moshca_server::authority::MAX_SELF_KEY_REVOCATIONS;
use moshca_server::krl::decode::decode;
use pb::revoke_certificates_request::Target;
use ssh_key::EcdsaCurve;
use ssh_key::public::Ed25519PublicKey;

use super::subject_keys::{b64, dsa_key, put_string, rsa_key};
use super::*;

/// [`POLICY`] plus a role that issues at once, as the reported flood used.
fn policy_with_auto_role() -> String {
    format!(
        "{POLICY}\n[[role]]\nname = \"self\"\nrequesters = [\"group:oncall\"]\napproval = \"auto\"\nlogins = [\"postgres\"]\nmax_ttl = \"1h\"\n"
    )
}

/// ECDSA keys that parse but that OpenSSH refuses: a point off its curve and a
/// compressed point, on each curve.
fn bad_ecdsa_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for curve in [
        EcdsaCurve::NistP256,
        EcdsaCurve::NistP384,
        EcdsaCurve::NistP521,
    ] {
        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ecdsa { curve }).unwrap();
        let blob = key.public_key().to_bytes().unwrap();
        let name = key.public_key().algorithm().to_string();
        let mut off_curve = blob.clone();
        *off_curve.last_mut().unwrap() ^= 1;
        keys.push(format!("{name} {}", b64(&off_curve)));
        // name, curve, then the point: 0x04 || x || y; keep x with an 0x02/0x03 tag.
        let point_len = (blob.len() - 4 - name.len() - 4 - 8 - 4 - 1) / 2;
        let point_at = blob.len() - (2 * point_len + 1);
        let mut compressed = blob[..point_at - 4].to_vec();
        let mut point = vec![0x02 | (blob[blob.len() - 1] & 1)];
        point.extend_from_slice(&blob[point_at + 1..point_at + 1 + point_len]);
        put_string(&mut compressed, &point);
        keys.push(format!("{name} {}", b64(&compressed)));
    }
    keys
}

fn revoked_key_count(h: &Harness) -> usize {
    h.store.read(|tx| tx.revoked_key_entries()).unwrap().len()
}

fn krl_version(h: &Harness) -> u64 {
    h.store.read(|tx| tx.krl_version()).unwrap()
}

/// The KRL through `StreamKrl`, put back together: bytes, version, number of chunks.
async fn stream_krl(h: &Harness) -> (Vec<u8>, u64, usize) {
    let mut stream = h
        .client()
        .stream_krl(pb::GetKrlRequest {})
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut version, mut chunks) = (Vec::new(), 0, 0);
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.offset, bytes.len() as u64, "chunks come in order");
        assert!(chunk.data.len() <= 1024 * 1024, "chunks are at most 1 MiB");
        bytes.extend_from_slice(&chunk.data);
        version = chunk.version;
        assert!(chunk.total_len >= bytes.len() as u64);
        chunks += 1;
    }
    (bytes, version, chunks)
}

/// Serials listed in a KRL, over every CA section.
fn listed_serials(krl: &[u8]) -> Vec<u64> {
    decode(krl)
        .unwrap()
        .certs
        .iter()
        .flat_map(|c| c.serials())
        .collect()
}

fn skipped_events(h: &Harness) -> Vec<serde_json::Value> {
    h.store
        .read(|tx| tx.audit_rows())
        .unwrap()
        .into_iter()
        .filter(|r| r.event.action == "krl.entry_skipped")
        .map(|r| r.event.details)
        .collect()
}

#[tokio::test]
async fn finding_1_keys_openssh_refuses_are_refused_at_request_and_at_revoke() {
    let h = start().await;
    h.reload_policy(&policy_with_auto_role());
    let before = h.snapshot().await;
    let version = krl_version(&h);

    // The attack: keys larger than OpenSSH reads (up to what fits in 16 KiB of text), and
    // ECDSA points OpenSSH refuses.
    let mut bad = vec![
        rsa_key(16_385, 1),
        rsa_key(16_392, 2),
        rsa_key(32_768, 3),
        rsa_key(90_000, 4),
    ];
    bad.extend(bad_ecdsa_keys());
    for key in &bad {
        let what = &key[..key.find(' ').unwrap()];
        let mut msg = ask("self", &["postgres"], 600);
        msg.public_key = key.clone();
        let m = refused(
            h.create("mallory", msg).await,
            Code::InvalidArgument,
            &format!("request with {what}"),
        );
        assert!(m.contains("OpenSSH would refuse"), "{m}");
        for who in ["sec", "mallory"] {
            let m = refused(
                h.revoke(who, Target::PublicKey(key.clone()), "INC-1 flood")
                    .await,
                Code::InvalidArgument,
                &format!("{who} revoking {what}"),
            );
            assert!(m.contains("--serial"), "{m}");
        }
    }
    assert_eq!(revoked_key_count(&h), 0, "nothing was stored");
    assert_eq!(krl_version(&h), version);
    h.unchanged(&before, "keys OpenSSH refuses").await;

    // The largest key OpenSSH reads is still accepted.
    let mut msg = ask("self", &["postgres"], 600);
    msg.public_key = rsa_key(16_384, 5);
    let issued = h.create("mallory", msg).await.unwrap();
    assert_eq!(issued.state, pb::State::Issued as i32);
}

#[tokio::test]
async fn finding_1_a_flood_of_self_revocations_is_bounded_and_a_later_revocation_reaches_the_krl() {
    let h = start().await;
    h.reload_policy(&policy_with_auto_role());
    let issue = |key: String| {
        let mut msg = ask("self", &["postgres"], 600);
        msg.public_key = key;
        msg
    };

    // The attack: create a key OpenSSH cannot read, get it certified, revoke it; repeat.
    refused(
        h.create("mallory", issue(rsa_key(90_000, 0))).await,
        Code::InvalidArgument,
        "oversized RSA key",
    );
    // With the largest keys still accepted, the flood stops at the bound.
    let started = Instant::now();
    let mut exhausted = None;
    for i in 0..=MAX_SELF_KEY_REVOCATIONS {
        let key = rsa_key(16_384, u16::try_from(i + 1).unwrap());
        let issued = h.create("mallory", issue(key.clone())).await.unwrap();
        assert_eq!(issued.state, pb::State::Issued as i32);
        match h
            .revoke("mallory", Target::PublicKey(key), "INC-1 flood")
            .await
        {
            Ok(r) => assert_eq!(r.serials, [issued.serial]),
            Err(status) => {
                exhausted = Some((i, status));
                break;
            }
        }
    }
    let flood_time = started.elapsed();
    let (at, status) = exhausted.expect("the flood must hit the bound");
    assert_eq!(
        at, MAX_SELF_KEY_REVOCATIONS,
        "refused at the bound, not before"
    );
    let m = refused(Err::<(), _>(status), Code::ResourceExhausted, "flood");
    assert!(
        m.contains(&format!("at most {MAX_SELF_KEY_REVOCATIONS} keys")) && m.contains("24 hours"),
        "{m}"
    );
    assert_eq!(revoked_key_count(&h), MAX_SELF_KEY_REVOCATIONS as usize);
    assert!(
        h.store
            .read(|tx| tx.audit_rows())
            .unwrap()
            .iter()
            .any(|r| r.event.action == "revocation.refused"
                && r.event.details.to_string().contains("limit reached")),
        "the refusal is audited"
    );

    // A revoker is not bounded: sec revokes the key mallory could not.
    let last = rsa_key(16_384, 0xffff);
    let issued = h.create("mallory", issue(last.clone())).await.unwrap();
    h.revoke("sec", Target::PublicKey(last), "INC-1 flood")
        .await
        .unwrap();
    assert_eq!(revoked_key_count(&h), MAX_SELF_KEY_REVOCATIONS as usize + 1);

    // The KRL stays small and servable, and a later revocation of someone else's
    // certificate reaches it.
    let alice = h.issue("alice", "db", &["postgres"]).await;
    let revoked = h
        .revoke("sec", Target::Serial(alice.serial), "INC-2 laptop")
        .await
        .unwrap();
    let started = Instant::now();
    let (krl, version, _) = stream_krl(&h).await;
    let fetch_time = started.elapsed();
    assert_eq!(version, revoked.krl_version);
    let decoded = decode(&krl).unwrap();
    assert_eq!(
        decoded.explicit_keys.len(),
        MAX_SELF_KEY_REVOCATIONS as usize + 1
    );
    let serials = listed_serials(&krl);
    assert!(serials.contains(&alice.serial) && serials.contains(&issued.serial));
    eprintln!(
        "flood of {} self-revocations with 16384-bit RSA keys: {flood_time:?}; KRL {} bytes, fetched in {fetch_time:?}",
        MAX_SELF_KEY_REVOCATIONS + 1,
        krl.len()
    );
    h.audit_verifies();
}

#[tokio::test]
async fn finding_1_a_krl_over_4_mib_is_delivered_whole_and_later_revocations_reach_it() {
    let h = start().await;
    // Seeded cheaply, as years of revocations (or an older version without the bound)
    // would leave it: 90,000 revoked keys make a KRL of about 4.6 MB.
    const KEYS: usize = 90_000;
    let now = moshca_server::clock::now();
    let seeded = Instant::now();
    h.store
        .transact(|tx| {
            for i in 0..KEYS {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
                bytes[8] = 0x5a;
                let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(bytes)), "");
                let fp = key.fingerprint(HashAlg::Sha256).to_string();
                tx.insert_revoked_key(&fp, &key.to_openssh().unwrap(), "seed", "sec", now)?;
            }
            tx.bump_krl_version()
        })
        .unwrap();
    let seed_time = seeded.elapsed();

    // StreamKrl delivers it whole.
    let started = Instant::now();
    let (krl, version, chunks) = stream_krl(&h).await;
    let first = started.elapsed();
    assert!(krl.len() > 4 * 1024 * 1024, "{} bytes", krl.len());
    assert!(chunks >= 5, "{chunks} chunks");
    assert_eq!(decode(&krl).unwrap().explicit_keys.len(), KEYS);
    assert_eq!(version, krl_version(&h));

    // What failed before: one answer cannot carry it. GetKrl now says so and what to do.
    let m = refused(
        h.client()
            .get_krl(pb::GetKrlRequest {})
            .await
            .map(|r| r.into_inner().version),
        Code::ResourceExhausted,
        "GetKrl of a KRL over 4 MiB",
    );
    assert!(m.contains("StreamKrl"), "{m}");

    // A revoker's later revocation still reaches it.
    let alice = h.issue("alice", "db", &["postgres"]).await;
    let revoked = h
        .revoke("sec", Target::Serial(alice.serial), "INC-2 laptop")
        .await
        .unwrap();
    let started = Instant::now();
    let (krl, version, _) = stream_krl(&h).await;
    let second = started.elapsed();
    assert_eq!(version, revoked.krl_version);
    assert!(listed_serials(&krl).contains(&alice.serial));
    assert_eq!(decode(&krl).unwrap().explicit_keys.len(), KEYS);
    // Cached: a second fetch of the same version costs no rebuild.
    let started = Instant::now();
    let (again, _, _) = stream_krl(&h).await;
    let cached = started.elapsed();
    assert_eq!(again.len(), krl.len());
    eprintln!(
        "KRL of {} bytes in {chunks} chunks: seeded {KEYS} keys in {seed_time:?}; StreamKrl {first:?} (build + send), {second:?} after a revocation, {cached:?} cached",
        krl.len()
    );
}

#[tokio::test]
async fn finding_2_a_revoked_dsa_key_is_refused_and_a_stored_one_cannot_break_the_krl() {
    let h = start().await;
    let version = krl_version(&h);

    // The attack: revoke a DSA key by key.
    for who in ["sec", "mallory"] {
        let m = refused(
            h.revoke(who, Target::PublicKey(dsa_key()), "INC-3 old key")
                .await,
            Code::InvalidArgument,
            &format!("{who} revoking a DSA key"),
        );
        assert!(m.contains("DSA") && m.contains("no KRL can list it"), "{m}");
    }
    assert_eq!(revoked_key_count(&h), 0, "nothing stored");
    assert_eq!(krl_version(&h), version);

    // Entries an older version (or someone with the database) left behind: a DSA key, an
    // RSA key too large for OpenSSH, text that is no key at all; beside a good one.
    let dsa = PublicKey::from_openssh(&dsa_key()).unwrap();
    let big = PublicKey::from_openssh(&rsa_key(20_000, 1)).unwrap();
    let good = PublicKey::from_openssh(&new_key()).unwrap();
    let planted = [
        (
            dsa.fingerprint(HashAlg::Sha256).to_string(),
            dsa.to_openssh().unwrap(),
        ),
        (
            big.fingerprint(HashAlg::Sha256).to_string(),
            big.to_openssh().unwrap(),
        ),
        ("SHA256:not-a-key".to_owned(), "ssh-ed25519 AAAA".to_owned()),
        (
            good.fingerprint(HashAlg::Sha256).to_string(),
            good.to_openssh().unwrap(),
        ),
    ];
    let now = moshca_server::clock::now();
    h.store
        .transact(|tx| {
            for (fp, text) in &planted {
                tx.insert_revoked_key(fp, text, "planted", "legacy", now)?;
            }
            tx.bump_krl_version()
        })
        .unwrap();

    // Every later KRL still builds and lists everything else.
    let alice = h.issue("alice", "db", &["postgres"]).await;
    h.revoke("sec", Target::Serial(alice.serial), "INC-2 laptop")
        .await
        .unwrap();
    let whole = h
        .client()
        .get_krl(pb::GetKrlRequest {})
        .await
        .unwrap()
        .into_inner();
    let (streamed, _, _) = stream_krl(&h).await;
    assert_eq!(whole.krl, streamed);
    let decoded = decode(&streamed).unwrap();
    assert_eq!(decoded.explicit_keys, [good.to_bytes().unwrap()]);
    assert!(listed_serials(&streamed).contains(&alice.serial));

    // Audited once per entry, not at every build.
    let skipped = skipped_events(&h);
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    for (fp, _) in &planted[..3] {
        assert!(
            skipped.iter().any(|d| d["fingerprint"] == fp.as_str()),
            "{fp} audited: {skipped:?}"
        );
    }
    let bob = h.issue("alice", "db", &["postgres"]).await;
    h.revoke("sec", Target::Serial(bob.serial), "INC-2 laptop")
        .await
        .unwrap();
    let (krl, _, _) = stream_krl(&h).await;
    assert!(listed_serials(&krl).contains(&bob.serial));
    assert_eq!(skipped_events(&h).len(), 3, "no new event per rebuild");
    h.audit_verifies();
}
