//! Fuzz target bodies for every parser of outside input in moshca-server.
//!
//! Each function takes raw bytes, feeds them to one parser, and checks what the parser
//! promises about anything it accepts; a broken promise panics, which the fuzzer reports.
//! The `fuzz_targets/*.rs` binaries are one-line wrappers (`cargo +nightly fuzz run NAME`),
//! and `ca-server/tests/fuzz_seeds.rs` includes this file to run every body over a seed
//! corpus on stable Rust, so the bodies always compile and their seeds always pass.
//!
//! No I/O, no clock, no randomness: a crash reproduces from its input alone.

use std::collections::BTreeSet;
use std::path::Path;

use moshca_proto::v1 as pb;
use moshca_server::auth::{self, Credential};
use moshca_server::config::{self, Config};
use moshca_server::krl::{self, CaSection, Krl};
use moshca_server::policy::{self, Approval, MAX_PRINCIPALS, MIN_TTL_SECS, Policy};
use moshca_server::{oidc, signer};
use prost::Message as _;
use ssh_key::PublicKey;
use ssh_key::public::KeyData;

/// A plain ed25519 key standing in for the CA's own key.
pub const CA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN9RA1+cf3TLJZAW9corTceq52chUgTc4m51F3+P+KRk ca";

/// The server-wide ttl bound the policy target parses against (the default, 24 h).
pub const SERVER_MAX_TTL: u64 = 24 * 3600;

/// The policy request messages are checked against.
pub const REQUEST_POLICY: &str = r#"
[defaults]
revokers = ["group:security"]

[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu", "svc.x@db-1"]
max_ttl = "1h"
reason_min_len = 4
break_glass = { enabled = true, max_ttl = "15m" }

[[role]]
name = "deploy"
approval = "auto"
logins = ["deploy"]
max_ttl = "10m"
force_command = "/usr/local/bin/deploy"
workloads = [{ issuer = "https://token.actions.githubusercontent.com", claims = { repository = "acme/app" } }]
"#;

fn ca_keys() -> Vec<PublicKey> {
    match PublicKey::from_openssh(CA_KEY) {
        Ok(k) => vec![k],
        Err(e) => panic!("CA_KEY does not parse: {e}"),
    }
}

/// The principal grammar, checked byte by byte independently of `policy::valid_principal`.
fn principal_ok(p: &str) -> bool {
    let b = p.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphanumeric() || b"._".contains(&b[0]))
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(c))
}

/// `signer::parse_subject_key`: whatever it accepts is a plain key of an accepted type, not
/// the CA's, without comment, that survives a round trip through its OpenSSH encoding.
pub fn subject_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ca = ca_keys();
    let Ok(key) = signer::parse_subject_key(text, &ca) else {
        return;
    };
    assert!(text.len() <= signer::MAX_SUBJECT_KEY_LEN);
    assert!(
        key.comment().is_empty(),
        "comment kept: {:?}",
        key.comment()
    );
    assert!(
        !ca.iter().any(|c| c.key_data() == key.key_data()),
        "the CA's own key accepted"
    );
    match key.key_data() {
        KeyData::Ed25519(_)
        | KeyData::SkEd25519(_)
        | KeyData::Ecdsa(_)
        | KeyData::SkEcdsaSha2NistP256(_) => {}
        KeyData::Rsa(rsa) => {
            let n = rsa.n.as_positive_bytes().unwrap_or_default();
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            assert!(
                bits >= signer::MIN_RSA_BITS,
                "RSA key of {bits} bits accepted"
            );
        }
        other => panic!("key type {:?} accepted", other.algorithm()),
    }
    let line = match key.to_openssh() {
        Ok(line) => line,
        Err(e) => panic!("accepted key does not re-encode: {e}"),
    };
    assert!(!line.contains(['\n', '\r', '\0']));
    match signer::parse_subject_key(&line, &ca) {
        Ok(again) => assert_eq!(
            again.key_data(),
            key.key_data(),
            "round trip changed the key"
        ),
        Err(e) => panic!("re-encoded key refused: {e}"),
    }
}

/// `policy::Policy::parse`: a policy it accepts has only roles that can be used safely.
pub fn policy_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Policy::parse(text, "fuzz.toml", SERVER_MAX_TTL);
    let policy = match parsed {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.errors.is_empty(), "refused without a reason");
            for line in &e.errors {
                // `fuzz.toml: ...` or, where the key's line is known, `fuzz.toml:N: ...`.
                let located = line.strip_prefix("fuzz.toml:").is_some_and(|rest| {
                    rest.starts_with(' ')
                        || rest
                            .split_once(": ")
                            .is_some_and(|(n, _)| n.parse::<usize>().is_ok())
                });
                assert!(located, "error without origin: {line}");
            }
            return;
        }
    };
    let d = &policy.defaults;
    assert!((MIN_TTL_SECS..=SERVER_MAX_TTL).contains(&d.max_ttl));
    assert!(d.backdate <= 3600);
    assert!(d.pending_ttl >= MIN_TTL_SECS);
    for role in policy.roles() {
        assert!(policy::valid_name(&role.name));
        assert!(!role.logins.is_empty() && role.logins.len() <= MAX_PRINCIPALS);
        assert!(
            role.logins.iter().all(|l| principal_ok(l)),
            "{:?}",
            role.logins
        );
        let unique: BTreeSet<&String> = role.logins.iter().collect();
        assert_eq!(unique.len(), role.logins.len(), "duplicate logins");
        assert!((MIN_TTL_SECS..=d.max_ttl).contains(&role.max_ttl));
        assert!((MIN_TTL_SECS..=role.max_ttl).contains(&role.default_ttl));
        for e in &role.extensions {
            assert!(policy::KNOWN_EXTENSIONS.contains(&e.as_str()), "{e}");
        }
        if let Some(sa) = &role.source_address {
            for entry in sa.split(',') {
                assert!(policy::valid_source_address(entry).is_ok(), "{sa:?}");
            }
        }
        if let Some(cmd) = &role.force_command {
            assert!(!cmd.trim().is_empty() && !cmd.chars().any(char::is_control));
        }
        if let Some(bg) = role.break_glass {
            assert!((MIN_TTL_SECS..=role.max_ttl).contains(&bg.max_ttl));
        }
        match role.approval {
            Approval::Manual { required } => {
                assert!((1..=10).contains(&required));
                assert!(!role.approvers.is_empty(), "manual role without approvers");
                assert!(role.workloads.is_empty(), "workloads on a manual role");
            }
            Approval::Auto => {}
        }
        assert!(
            !role.requesters.is_empty() || !role.workloads.is_empty(),
            "a role nobody can request"
        );
        for w in &role.workloads {
            assert!(!w.claims.is_empty(), "workload bound to no claim");
        }
        // The role's own defaults make a request that fits it.
        if let Ok(c) = role.check_request(&[], None, &"r".repeat(role.reason_min_len.max(1))) {
            check_checked(role, &[], None, &c);
        }
    }
}

fn check_checked(role: &policy::Role, requested: &[String], ttl: Option<u64>, c: &policy::Checked) {
    assert!(!c.principals.is_empty(), "empty principal list");
    assert!(c.principals.len() <= MAX_PRINCIPALS);
    for p in &c.principals {
        assert!(
            role.logins.contains(p),
            "{p:?} is not a login of {}",
            role.name
        );
        assert!(principal_ok(p), "{p:?} breaks the grammar");
    }
    let got: BTreeSet<&String> = c.principals.iter().collect();
    assert_eq!(got.len(), c.principals.len(), "duplicate principals");
    if !requested.is_empty() {
        let asked: BTreeSet<&String> = requested.iter().collect();
        assert_eq!(got, asked, "not the principals asked for");
    }
    assert!((MIN_TTL_SECS..=role.max_ttl).contains(&c.ttl_secs));
    if let Some(t) = ttl {
        assert_eq!(c.ttl_secs, t);
    }
}

/// `config::Config::parse`: an accepted config has bounded ttls, absolute paths, and
/// webhooks whose `Debug` never shows more of the URL than its origin.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/nonexistent/moshca-fuzz");
    let c = match Config::parse(text, dir) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.errors.is_empty(), "refused without a reason");
            return;
        }
    };
    assert!((60..=30 * 24 * 3600).contains(&c.max_ttl));
    if let Some(db) = c.database.sqlite_path() {
        assert!(db.is_absolute(), "{}", db.display());
    }
    for p in [&c.policy, &c.ca_key, &c.tls_cert, &c.tls_key] {
        assert!(p.is_absolute(), "{}", p.display());
    }
    for w in &c.webhooks {
        assert!(!w.events.is_empty());
        assert!(
            w.events
                .iter()
                .all(|e| moshca_server::store::NOTIFY_ACTIONS.contains(&e.as_str()))
        );
        let shown = format!("{w:?}");
        let secret_path = w
            .secret_file
            .as_ref()
            .is_some_and(|p| p.display().to_string().contains(&w.url));
        // What follows the origin may hold a token; "/..." is what Debug shows instead.
        let rest = &w.url[config::url_origin(&w.url).len()..];
        let hidden = rest.chars().any(|c| c != '/' && c != '.');
        if hidden && !secret_path {
            assert!(
                !shown.contains(&w.url),
                "webhook Debug shows its URL: {shown}"
            );
        }
    }
}

/// `policy::parse_duration`: never panics; what it accepts prints and parses back the same.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(secs) = policy::parse_duration(text) else {
        return;
    };
    assert_eq!(policy::parse_duration(&format!("{secs}s")), Ok(secs));
    let shown = policy::fmt_secs(secs);
    assert_eq!(policy::parse_duration(&shown), Ok(secs), "{shown:?}");
}

/// A `CreateAccessRequestRequest` off the wire, through the checks `authority` runs before
/// anything is stored: role entitlement aside, principals, ttl, reason and subject key.
pub fn request_message(data: &[u8]) {
    let Ok(m) = pb::CreateAccessRequestRequest::decode(data) else {
        return;
    };
    let Ok(policy) = Policy::parse(REQUEST_POLICY, "fuzz.toml", SERVER_MAX_TTL) else {
        panic!("the fuzz policy must parse");
    };
    // Unknown roles are refused by name; check the request against a real role anyway.
    let role = policy
        .role(&m.role)
        .or_else(|| policy.role("db"))
        .unwrap_or_else(|| panic!("role db"));
    let ttl = (m.ttl_secs != 0).then_some(m.ttl_secs);
    // Break-glass: the role must allow it and its own cap applies first (as in authority).
    let ttl = match (m.break_glass, role.break_glass) {
        (false, _) => Some(ttl),
        (true, Some(bg)) => Some(Some(ttl.unwrap_or(role.default_ttl.min(bg.max_ttl))))
            .filter(|t| t.is_some_and(|t| t <= bg.max_ttl)),
        (true, None) => None,
    };
    if let Some(ttl) = ttl
        && let Ok(c) = role.check_request(&m.principals, ttl, &m.reason)
    {
        check_checked(role, &m.principals, ttl, &c);
        let reason = m.reason.trim();
        assert!(reason.chars().count() >= role.reason_min_len);
        assert!(reason.len() <= policy::MAX_REASON_LEN);
        assert!(
            !reason.chars().any(char::is_control),
            "control character in reason"
        );
    }
    subject_key(m.public_key.as_bytes());
}

/// `auth::parse_bearer` and `oidc::looks_like_jwt`: the credential kind matches its shape,
/// and a credential's `Debug` never shows it.
pub fn bearer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let jwt = oidc::looks_like_jwt(text);
    if jwt {
        assert!(text.len() <= oidc::MAX_TOKEN_LEN);
        assert_eq!(text.split('.').count(), 3);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        );
    }
    for header in [None, Some(text.to_owned()), Some(format!("Bearer {text}"))] {
        let Ok(cred) = auth::parse_bearer(header.as_deref()) else {
            continue;
        };
        let Some(header) = header else {
            panic!("a missing header was accepted");
        };
        let value = match &cred {
            Credential::Token(t) => {
                assert!(t.well_formed());
                assert!(t.expose().starts_with(auth::TOKEN_PREFIX));
                t.expose().to_owned()
            }
            Credential::IdToken(t) => {
                assert!(oidc::looks_like_jwt(t.expose()));
                t.expose().to_owned()
            }
        };
        assert!(
            header.starts_with("Bearer ") || header.starts_with("bearer "),
            "{header:?}"
        );
        assert!(header.contains(&value));
        if value.len() >= 12 {
            assert!(
                !format!("{cred:?}").contains(&value),
                "credential Debug leaks it"
            );
        }
    }
}

/// Serials from fuzz bytes: an absolute start, then small steps (runs and bitmaps) or new
/// absolute values, so every encoding and the edges of u64 are reached.
pub fn serials_from(data: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut cur = 0u64;
    let mut rest = data;
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        if tag & 0x80 != 0 {
            let Some((bytes, tail)) = rest.split_first_chunk::<8>() else {
                break;
            };
            rest = tail;
            cur = u64::from_be_bytes(*bytes);
        } else {
            cur = cur.wrapping_add(u64::from(tag & 0x3f));
            if tag & 0x40 != 0 {
                cur = u64::MAX - cur;
            }
        }
        out.push(cur);
    }
    out
}

/// `krl::Krl::encode` with arbitrary serials: the output is a KRL OpenSSH parses, revoking
/// exactly the serials given (never serial 0), independent of their order.
pub fn krl(data: &[u8]) {
    let (head, body) = data.split_at(data.len().min(1));
    let serials = serials_from(body);
    let ca = ca_keys();
    let Some(ca_blob) = ca.first().and_then(|k| k.to_bytes().ok()) else {
        panic!("CA key blob");
    };
    let key_ids: Vec<String> = if head.first().is_some_and(|b| b & 1 != 0) {
        serials
            .iter()
            .take(3)
            .map(|s| format!("moshca:serial={s}"))
            .collect()
    } else {
        Vec::new()
    };
    let krl = Krl {
        version: serials.first().copied().unwrap_or(1),
        generated_at: 1_790_000_000,
        comment: "fuzz".into(),
        ca_sections: vec![CaSection {
            ca_key: ca_blob.clone(),
            serials: serials.clone(),
            key_ids: key_ids.clone(),
        }],
        explicit_keys: Vec::new(),
        sha256_keys: Vec::new(),
    };
    let bytes = match krl.encode() {
        Ok(b) => b,
        Err(e) => panic!("valid input refused: {e}"),
    };
    let decoded = match krl::decode::decode(&bytes) {
        Ok(d) => d,
        Err(e) => panic!("KRL OpenSSH would refuse ({e}): {serials:?}"),
    };
    let revoked: BTreeSet<u64> = decoded.certs.iter().flat_map(|c| c.serials()).collect();
    let want: BTreeSet<u64> = serials.iter().copied().filter(|s| *s != 0).collect();
    assert_eq!(revoked, want, "revoked serials differ");
    assert!(!revoked.contains(&0));
    let revoked_ids: BTreeSet<String> = decoded
        .certs
        .iter()
        .flat_map(|c| c.key_ids().map(str::to_owned))
        .collect();
    let ids: BTreeSet<String> = key_ids.into_iter().collect();
    assert_eq!(revoked_ids, ids);
    let ca_keys: Vec<&[u8]> = decoded.certs.iter().map(|c| c.ca_key.as_slice()).collect();
    if want.is_empty() && ids.is_empty() {
        assert!(ca_keys.is_empty(), "empty certificate section written");
    } else {
        assert_eq!(ca_keys, vec![ca_blob.as_slice()]);
    }
    let mut reversed = krl.clone();
    reversed.ca_sections[0].serials.reverse();
    assert_eq!(
        reversed.encode().ok(),
        Some(bytes),
        "output depends on input order"
    );
}
