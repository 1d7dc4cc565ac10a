//! The fuzz targets of `ca-server/fuzz`, run on stable Rust over a seed corpus.
//!
//! cargo-fuzz needs nightly; this test keeps every target body compiling and passing on
//! stable. It includes the bodies from `fuzz/src/lib.rs`, feeds each its seeds, a fixed
//! number of deterministic mutations of them (bit flips, cuts, splices, interesting
//! tokens), and any files a local fuzzing run left in `fuzz/corpus/TARGET/` or
//! `fuzz/artifacts/TARGET/` (so a crash found with cargo-fuzz replays here once saved).

#![allow(clippy::unwrap_used)] // a failed setup step should fail the test loudly

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

use moshca_proto::v1 as pb;
use prost::Message as _;

/// Mutations per seed; the whole file stays within a few seconds in a debug build. Set
/// `MOSHCA_FUZZ_MUTATIONS` (and `MOSHCA_FUZZ_SEED`) for a longer run on stable.
const MUTATIONS: usize = 120;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\n",
    b"\r\n",
    b",",
    b"*",
    b" ",
    b"\"",
    b"'",
    b"\\",
    b"=",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"18446744073709551615",
    b"-1",
    b"0",
    b"AAAA",
    b"-cert-v01@openssh.com",
    b"ssh-dss",
    b"ssh-rsa",
    b"Bearer ",
    b"mca_",
    b"eyJ",
    b".",
    b"h",
    b"y",
    b"\x80\xff\xff\xff\xff\xff\xff\xff\xff",
];

fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let j = (i + 1 + rng.below(16)).min(v.len());
                v.drain(i..j);
            }
            4 => v.truncate(rng.below(v.len() + 1)),
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if !v.is_empty() => {
                // Repeat a chunk: long runs, deep nesting, many fields.
                let i = rng.below(v.len());
                let j = (i + 1 + rng.below(32)).min(v.len());
                let chunk = v[i..j].to_vec();
                for _ in 0..=rng.below(8) {
                    v.splice(i..i, chunk.iter().copied());
                }
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// Files a local fuzzing run left for `target`, if any.
fn saved(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push(bytes);
            }
        }
    }
    out
}

fn run(target: &str, f: fn(&[u8]), seeds: Vec<Vec<u8>>) {
    let start = knob("MOSHCA_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng((start ^ target.len() as u64).max(1));
    let mutations = knob("MOSHCA_FUZZ_MUTATIONS", MUTATIONS as u64);
    let mut all = seeds;
    all.extend(saved(target));
    for seed in &all {
        f(seed);
        for _ in 0..mutations {
            f(&mutate(&mut rng, seed, &all));
        }
    }
}

fn text(seeds: &[&str]) -> Vec<Vec<u8>> {
    seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
}

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdID7khYb0SRNCuf89OXljXwdhKiNaVL24n5MrupRKH seed@ed25519";
const ECDSA_256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIIpiaVGpX7/3smqsNZqszS8vrQvTxOocJ1VdKh7YVgVH5yF1LjZm2ZBwxnBu0spHC6W3tGNN/mIQFFUXT6P7S0= seed@ecdsab256";
const ECDSA_384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBDBamm2tzzpLqayeTXOJ81+3VwLmQZfGFMqJrHny5Gn2GnnZuL0KkQHprWIYZbN0f/tyn1qqaRe62hC+bKxclQQH3lGs5xOJ2db8BZgBuonfgYeyDW52pnQZcb7GTJQBiw== seed@ecdsab384";
const ECDSA_521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAFavPxOE/TcmZO4Vls8fqKrvnwm6o5totbVKSo9Je5DpiY/X99xEcxrxfIxZa+OgIgaSgBIKAGyWG7RCzJtt/zG/gEKWC5JquNbwMmcEj9cZwN1oa0+SaqzOIdWAKr+TRRyYGLkDxZzmR0czIXGmTdvSC6kzL+0ZCVkwh/Qlrmvu4En5w== seed@ecdsab521";
const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCafo0DwGVUSGrr6hbG32lyZp5zvm609/n/PolHRdtbMVFxdIVzK8GDhDjEiBYxS8tP1/NSVO/zwIQ1G3C5K0SsStKeKRjnhY/qvfbRbVyQOrFBDFMGGjSDg3nba/H9qn7h0r1NdFS9Jrdr2sXSGW7JFdXdvLmDMhAICrmLIVw+Qn9kiBOYmFddzV+0FuqxvfuDARvP5p9jdpgmzyJz7Zws+YgCoykC93arDsq6dRikWo4BzlehvDKUDO8COKkvhWwxDViWjdr5HO4FrF8dxkAQ4ODlT9+5PYqxp2b0bscEjHMk2feiqvElLReQS3Ymlv9r+fOKGc47R5OJaDE9x04V seed@rsab2048";
const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDleOoAwE65us1y9KMLYoo3gzQxhuFwx9/EKpn19OZUuBaHomEQoHBBfc9+cEFP+viTdioWkjE3gPHx2RiqhbZDdYbmA50G+vt5gg4rxm1FxK5zRkyrEWYa50C7ZopuK7SQPRlrOFXiNRzucNAnLwBAAUW0nGa1VHdZ31b9ehY6UQ== seed@rsab1024";
const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBANZb3aJ3e2nBapsTwe2jc1olbKnHFIb0fEvxVtw9UBQjGcc9gQt2bob02gXl/Ekl0Q7tBet+MNYh+hbGdSFvIrrWLPZoV0Zl2ymco58qWfjGBt//oz76bmZgfp6g/WkzrSqUyDlgQbpwpzxvYvRmxBBpLKRtB8ZYrRjICz9KXmKDAAAAFQDVLvV0b37Q32d30NmdzJU/EBRb8wAAAIAknI0D2HQLB328qrQ7L85lBmpKn0Ru4+N37jII3511jho5wkF4y8bb+O3j2OrUNcGRlAk8h8rjNM07F6ru2JmEqLD4MdJ2/GpZ6GrwZZiHauoyVZX7PkDZinoR2jWf3lhDt5PjJTzhjQ69SV+bP3C9jsGy9pBEl6RJZTYahn7OpgAAAIAamPswcUVfe/+Rse0VLB/5N2Zytta7QPan6Qban2twhjkogXgaN9kWDWjU/OqbK/oNGR9DIbitZYDF7/h24VitZG76rsEUwtfckOnKYOQJc3+8BO+HXpLp3O5Q+UGgcobfQa1vAl2pVbOudZKG7GDJ0OnIOit+v1q64uupUx5NBA== seed@dsa";
/// `k_ed25519.pub` signed by the `CA_KEY` stand-in with `ssh-keygen -s`.
const CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIFTpdFjfM4V3bRKj0B6xg9CPjo6SK30P+X+Zp1BQ/tT/AAAAIEdID7khYb0SRNCuf89OXljXwdhKiNaVL24n5MrupRKHAAAAAAAAAAAAAAABAAAABHNlZWQAAAAMAAAACHBvc3RncmVzAAAAAGsE9QQAAAAAawUDVAAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIN9RA1+cf3TLJZAW9corTceq52chUgTc4m51F3+P+KRkAAAAUwAAAAtzc2gtZWQyNTUxOQAAAEAR8n/ujLfdWEg2pzWWoBCgCH5HrQsHRYEQMBmZeqZG8BSBuUGe/HCw8T1rUgWVrTv6LPMx2rLe0nQl7kAYxwwA seed@ed25519";

fn key_seeds() -> Vec<&'static str> {
    vec![
        ED25519,
        ECDSA_256,
        ECDSA_384,
        ECDSA_521,
        RSA_2048,
        RSA_1024,
        DSA,
        CERT,
        targets::CA_KEY,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdID7khYb0SRNCuf89OXljXwdhKiNaVL24n5MrupRKH",
        "  ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdID7khYb0SRNCuf89OXljXwdhKiNaVL24n5MrupRKH  \n",
        "ssh-ed25519",
        "",
        "command=\"/bin/sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdID7khYb0SRNCuf89OXljXwdhKiNaVL24n5MrupRKH",
    ]
}

#[test]
fn subject_key_seeds() {
    let mut seeds = text(&key_seeds());
    let big = format!("ssh-rsa {}", "A".repeat(16 * 1024));
    seeds.push(big.into_bytes());
    run("subject_key", targets::subject_key, seeds);
    // The valid seeds really are accepted, so the invariants above were exercised.
    let ca = [ssh_key::PublicKey::from_openssh(targets::CA_KEY).unwrap()];
    for ok in [ED25519, ECDSA_256, ECDSA_384, ECDSA_521, RSA_2048] {
        assert!(
            moshca_server::signer::parse_subject_key(ok, &ca).is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn policy_file_seeds() {
    let design = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"
revokers = ["group:security"]
auditors = ["group:audit"]

[[role]]
name = "db-oncall"
requesters = ["group:oncall", "user:alice"]
approvers = ["group:sre-leads"]
approval = "manual"
approvals_required = 1
reason_min_len = 10
reason_pattern = "^(INC|CHG)-[0-9]+"
logins = ["postgres", "ubuntu"]
default_ttl = "30m"
max_ttl = "1h"
extensions = ["permit-pty", "permit-port-forwarding"]
source_address = ["10.0.0.0/8"]
break_glass = { enabled = true, max_ttl = "15m" }

[[role]]
name = "deploy"
approval = "auto"
workloads = [{ issuer = "https://token.actions.githubusercontent.com", audience = "moshca",
               claims = { repository = "acme/app", ref = "refs/heads/main" } }]
logins = ["deploy"]
max_ttl = "10m"
force_command = "/usr/local/bin/deploy"
"#;
    let seeds = text(&[
        moshca_server::policy::EXAMPLE,
        targets::REQUEST_POLICY,
        design,
        "",
        "[defaults]\nmax_ttl = \"48h\"\n",
        "[[role]]\nname = \"x\"\nrequesters=[\"user:a\"]\napprovers=[]\nlogins=[\"a,b\",\"*\"]\n",
        "[[role]]\nname = \"x\"\napproval=\"auto\"\nlogins=[\"a\"]\nworkloads=[{issuer=\"https://x\", claims={repository=\"*\"}}]\n",
        "[[role]]\nname=\"x\"\nrequesters=[\"user:a\"]\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nsource_address=[\"127.0.0.1/8\",\"2001:db8::/31\",\"\"]\nreason_pattern=\"(\"\n",
        "[[role]]\nname=\"x\"\nrequesters=[\"user:a\"]\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nmax_ttl=\"1m\"\nbreak_glass={enabled=true}\napprovals_required=10\n",
    ]);
    run("policy_file", targets::policy_file, seeds);
}

#[test]
fn an_ipv6_slash_zero_source_address_does_not_panic() {
    // `host_bits = 128 - 0`, then `1u128 << 128`: a panic in debug builds, and in release
    // the shift wraps to a zero mask, so "8000::/0" (host bits set) would be accepted and
    // every certificate of the role refused by sshd.
    for entry in ["::/0", "8000::/0"] {
        let r = std::panic::catch_unwind(|| moshca_server::policy::valid_source_address(entry));
        match (entry, r) {
            (_, Err(_)) => panic!("valid_source_address({entry:?}) panicked"),
            ("::/0", Ok(r)) => assert!(r.is_ok(), "::/0 is a valid any-address entry: {r:?}"),
            (_, Ok(r)) => assert!(r.is_err(), "{entry:?} has host bits set"),
        }
    }
    let policy = "[[role]]\nname=\"x\"\nrequesters=[\"user:a\"]\napprovers=[\"user:b\"]\nlogins=[\"a\"]\nsource_address=[\"::/0\"]\n";
    targets::policy_file(policy.as_bytes());
}

#[test]
fn config_file_seeds() {
    let webhooks = r#"
listen = "127.0.0.1:7443"
max_ttl = "24h"
[tls]
cert = "tls/cert.pem"
key = "/etc/moshca/key.pem"
[[oidc.issuer]]
issuer = "https://token.actions.githubusercontent.com"
audience = "moshca"
jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
[[notify.webhook]]
name = "slack"
url = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
format = "slack"
events = ["request.created", "request.break_glass"]
"#;
    let seeds = text(&[
        &moshca_server::config::example(None),
        &moshca_server::config::example(Some(Path::new("/etc/moshca/pass"))),
        webhooks,
        "",
        "listen = \"nowhere\"\nmax_ttl = \"59s\"\n",
        "[[notify.webhook]]\nname = \"a b\"\nurl = \"http://example.com/x\"\nevents = []\n",
        "[[oidc.issuer]]\nissuer = \"http://evil\"\naudience = \"\"\n",
    ]);
    run("config_file", targets::config_file, seeds);
}

#[test]
fn duration_seeds() {
    let seeds = text(&[
        "90s",
        "30m",
        "1h",
        "1h 30m",
        "8h",
        "7d",
        "0s",
        "-5m",
        "",
        " 1m ",
        "1.5h",
        "5 m",
        "18446744073709551615s",
        "18446744073709551616s",
        "584942417355y",
        "99999999999999999999999h",
        "1y 1M 1w",
        "1ns",
        "999ms",
    ]);
    run("duration", targets::duration, seeds);
}

#[test]
fn request_message_seeds() {
    let msg = |role: &str, principals: &[&str], ttl: u64, reason: &str, key: &str, bg: bool| {
        pb::CreateAccessRequestRequest {
            role: role.into(),
            principals: principals.iter().map(|p| (*p).to_owned()).collect(),
            ttl_secs: ttl,
            reason: reason.into(),
            public_key: key.into(),
            break_glass: bg,
        }
        .encode_to_vec()
    };
    let many: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let seeds = vec![
        msg("db", &[], 0, "INC-4312 replica lag", ED25519, false),
        msg("db", &["postgres"], 600, "INC-1 x", RSA_2048, false),
        msg("db", &["postgres", "root"], 3600, "INC-1 x", ED25519, false),
        msg("db", &["postgres,root", "*", ""], 59, "why\n", DSA, false),
        msg("db", &many, u64::MAX, "INC-1 x", CERT, false),
        msg(
            "db",
            &["svc.x@db-1"],
            900,
            "  INC-1 \u{7} ",
            ECDSA_521,
            true,
        ),
        msg("db", &[], 901, "INC-1 break glass", ED25519, true),
        msg("deploy", &["deploy"], 300, "", targets::CA_KEY, false),
        msg("nope", &["ubuntu", "ubuntu"], 60, "INC-9", ECDSA_256, false),
        Vec::new(),
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ];
    run("request_message", targets::request_message, seeds);
}

#[test]
fn bearer_seeds() {
    let token = moshca_server::auth::Token::generate();
    let seeds = text(&[
        token.expose(),
        "mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
        "mca_short",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJl",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "a.b.c",
        "..",
        "mca_a.b.c",
        "Bearer mca_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "bearer  eyJ.eyJ.sig ",
        "Basic dXNlcjpwYXNz",
        "",
    ]);
    run("bearer", targets::bearer, seeds);
}

#[test]
fn krl_seeds() {
    let mut seeds: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![1, 0, 0, 0],
        // Absolute 1, then a run of 1s: a range.
        [&[0u8, 0x80][..], &1u64.to_be_bytes(), &[1; 200]].concat(),
        // Near u64::MAX: runs and bitmaps that must not wrap.
        [
            &[0u8, 0x80][..],
            &(u64::MAX - 40).to_be_bytes(),
            &[1; 40],
            &[2; 40],
        ]
        .concat(),
        // Sparse and dense mixes, mirrored to the top of u64.
        (0..300u32).map(|i| (i % 7 + 1) as u8).collect(),
        (0..300u32)
            .map(|i| if i % 5 == 0 { 0x41 } else { 3 })
            .collect(),
        // Serial 0 given explicitly, among others.
        [
            &[1u8, 0x80][..],
            &0u64.to_be_bytes(),
            &[1, 1, 0, 0x80],
            &0u64.to_be_bytes(),
        ]
        .concat(),
    ];
    // A long bitmap-shaped run: every third serial over 20,000.
    seeds.push([&[0u8, 0x80][..], &9u64.to_be_bytes(), &vec![3u8; 7000]].concat());
    run("krl", targets::krl, seeds);
}
