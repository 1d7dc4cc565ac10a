//! What differs between the OpenSSH versions hosts run, pinned: each test states what the
//! OpenSSH under test (the system's, or `MOSHCA_E2E_OPENSSH_DIR`'s) must do, by version,
//! so `scripts/test.sh` runs this file once per version of the matrix (Debian 12's 9.2 and
//! 10.0) and a difference that appears, disappears or moves fails here by name.
//! docs/openssh-versions.md lists the differences and why moshca does not trip on them.
//!
//! The KRLs here are built byte by byte (PROTOCOL.krl), not by moshca: they are the files
//! moshca must never write, and the tests show what each version makes of them, with
//! `ssh-keygen -Q` and with a real `sshd` whose `RevokedKeys` names them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use moshca_e2e::{
    Identity, LOGIN, OPENSSH_DIR_VAR, OPENSSH_PROGRAMS, Run, Sshd, keygen, openssh_at_least,
    openssh_dirs, openssh_release, openssh_version, program, require_openssh, require_root, run,
    ssh,
};

// ---------------------------------------------------------------------------------------
// Key and KRL bytes

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 key")
}

/// A well-formed `ssh-dss` public key blob, built by hand (OpenSSH 10 cannot make one).
fn dsa_blob() -> Vec<u8> {
    let mpint = |len: usize| {
        let mut v = vec![0u8; len + 1];
        v[1] = 0xc5;
        v[len] = 0x0b;
        v
    };
    let mut blob = string(b"ssh-dss");
    for len in [128, 20, 128, 128] {
        blob.extend(string(&mpint(len)));
    }
    blob
}

/// The key blob of an OpenSSH public key file.
fn blob_of(public_key: &Path) -> Vec<u8> {
    let text = fs::read_to_string(public_key).expect("read public key");
    unb64(text.split_whitespace().nth(1).expect("key text"))
}

fn public_key(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// A KRL section.
enum Section {
    /// Certificates of `ca` (a plain key blob) with these serials (a 0x20 list).
    Serials { ca: Vec<u8>, serials: Vec<u64> },
    /// Explicit key blobs.
    Keys(Vec<Vec<u8>>),
    /// An extension section (type 255, OpenSSH 9.4+): name, critical flag, data.
    Extension { name: String, critical: bool },
}

/// The bytes of a KRL (format 1, version 1) holding `sections`.
fn krl(sections: &[Section]) -> Vec<u8> {
    let mut out = b"SSHKRL\n\0".to_vec();
    out.extend(1u32.to_be_bytes());
    out.extend(1u64.to_be_bytes()); // krl_version
    out.extend(1_700_000_000u64.to_be_bytes()); // generated_date
    out.extend(0u64.to_be_bytes()); // flags
    out.extend(string(b"")); // reserved
    out.extend(string(b"moshca interop"));
    for section in sections {
        let (kind, data) = match section {
            Section::Serials { ca, serials } => {
                let list: Vec<u8> = serials.iter().flat_map(|s| s.to_be_bytes()).collect();
                let mut data = string(ca);
                data.extend(string(b""));
                data.push(0x20);
                data.extend(string(&list));
                (1u8, data)
            }
            Section::Keys(blobs) => (2u8, blobs.iter().flat_map(|b| string(b)).collect()),
            Section::Extension { name, critical } => {
                let mut data = string(name.as_bytes());
                data.push(u8::from(*critical));
                data.extend(string(b""));
                (255u8, data)
            }
        };
        out.push(kind);
        out.extend(string(&data));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Running ssh-keygen and sshd on them

/// Whether OpenSSH and root are there (a failure in CI, a skip elsewhere).
fn ready() -> bool {
    require_openssh() && require_root()
}

/// `ssh-keygen -Q -l -f KRL`.
fn listing(dir: &Path, bytes: &[u8]) -> Run {
    let path = dir.join("test.krl");
    fs::write(&path, bytes).expect("write KRL");
    run(Command::new(program("ssh-keygen"))
        .args(["-Q", "-l", "-f"])
        .arg(&path))
}

/// `ssh-keygen -Q -f KRL KEY`.
fn query(dir: &Path, bytes: &[u8], key: &Path) -> Run {
    let path = dir.join("test.krl");
    fs::write(&path, bytes).expect("write KRL");
    run(Command::new(program("ssh-keygen"))
        .arg("-Q")
        .arg("-f")
        .arg(&path)
        .arg(key))
}

/// A CA key, a user key and a certificate for [`LOGIN`] with serial 8 signed by
/// `ssh-keygen -s`: everything a login needs, made by the OpenSSH under test.
struct Login {
    dir: tempfile::TempDir,
    ca: PathBuf,
    user: PathBuf,
    cert: PathBuf,
}

impl Login {
    fn new() -> Login {
        moshca_e2e::ensure_accounts();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = keygen(dir.path(), "ca");
        let user = keygen(dir.path(), "user");
        run(Command::new(program("ssh-keygen"))
            .args(["-q", "-s"])
            .arg(&ca)
            .args(["-I", "interop", "-n", LOGIN, "-V", "-1m:+10m", "-z", "8"])
            .arg(public_key(&user)))
        .assert_ok();
        let cert = dir.path().join("user-cert.pub");
        Login {
            dir,
            ca,
            user,
            cert,
        }
    }

    /// Whether a private sshd whose `RevokedKeys` holds `krl` lets the certificate in.
    fn with_krl(&self, krl: &[u8]) -> (bool, Run, String) {
        let sshd = Sshd::start(&public_key(&self.ca));
        fs::write(sshd.revoked_keys(), krl).expect("write RevokedKeys");
        let out = ssh(
            &sshd,
            LOGIN,
            Identity::Certificate {
                key: &self.user,
                certificate: &self.cert,
            },
            "id",
        );
        let logged_in = out.ok() && out.stdout.contains(&format!("({LOGIN})"));
        (logged_in, out, sshd.log())
    }
}

// ---------------------------------------------------------------------------------------
// The version under test

#[test]
fn openssh_under_test_is_the_one_named() {
    if !ready() {
        return;
    }
    let release = openssh_release()
        .unwrap_or_else(|| panic!("no OpenSSH release in `ssh -V`: {}", openssh_version()));
    if let Some(dirs) = openssh_dirs() {
        for name in OPENSSH_PROGRAMS {
            let path = program(name);
            assert!(
                dirs.iter().any(|dir| path.parent() == Some(dir.as_path())),
                "{name} resolved to {} outside {OPENSSH_DIR_VAR}",
                path.display()
            );
        }
    }
    // sshd must be the same release as ssh, or the matrix tests a mixture.
    let out = run(Command::new(program("sshd")).arg("-V"));
    let said = format!("{}{}", out.stderr, out.stdout);
    let expected = format!("OpenSSH_{}.{}", release.0, release.1);
    assert!(
        said.trim_start().starts_with(&expected),
        "sshd -V should say {expected}, as ssh -V does:\n{out}"
    );
    eprintln!("OpenSSH under test: {}", openssh_version());
}

// ---------------------------------------------------------------------------------------
// DSA, removed in 10.0

#[test]
fn difference_ssh_keygen_makes_dsa_keys_only_before_10_0() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(Command::new(program("ssh-keygen"))
        .args(["-q", "-t", "dsa", "-N", "", "-f"])
        .arg(dir.path().join("dsa")));
    if openssh_at_least(10, 0) {
        assert!(
            !out.ok() && out.stderr.contains("unknown key type dsa"),
            "OpenSSH 10.0 removed DSA:\n{out}"
        );
    } else {
        out.assert_ok();
    }
}

/// Why moshca's key check refuses DSA although 9.2 reads it: 10.0 does not.
#[test]
fn difference_ssh_keygen_reads_a_dsa_public_key_only_before_10_0() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dsa.pub");
    fs::write(&path, format!("ssh-dss {} dsa@host\n", b64(&dsa_blob()))).expect("write key");
    let out = run(Command::new(program("ssh-keygen"))
        .arg("-l")
        .arg("-f")
        .arg(&path));
    if openssh_at_least(10, 0) {
        assert!(!out.ok(), "OpenSSH 10.0 cannot read a DSA key:\n{out}");
    } else {
        out.assert_ok();
        assert!(out.stdout.contains("(DSA)"), "{out}");
    }
}

/// A revoked DSA key in a KRL: 9.2 lists it; 10.0 warns, leaves it out of the listing and
/// still exits 0, and both still match the other keys, so such a KRL keeps working.
#[test]
fn difference_a_revoked_dsa_key_is_listed_before_10_0_and_only_warned_about_from_10_0() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let user = keygen(dir.path(), "user");
    let bytes = krl(&[Section::Keys(vec![dsa_blob(), blob_of(&public_key(&user))])]);
    let out = listing(dir.path(), &bytes);
    out.assert_ok();
    let hashes = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("hash: "))
        .count();
    if openssh_at_least(10, 0) {
        assert_eq!(hashes, 1, "10.0 lists the ed25519 key alone:\n{out}");
        assert!(
            out.stderr
                .contains("parse KRL key: unknown or unsupported key type"),
            "10.0 warns about the DSA key:\n{out}"
        );
    } else {
        assert_eq!(hashes, 2, "9.2 lists both keys:\n{out}");
        assert!(out.stdout.contains("# ssh-dss"), "{out}");
        assert!(out.stderr.trim().is_empty(), "{out}");
    }
    let verdict = query(dir.path(), &bytes, &public_key(&user));
    verdict.assert_code(1);
    assert!(verdict.stdout.contains("REVOKED"), "{verdict}");
}

/// The lockout the matrix exists for: a KRL revoking certificates of a DSA CA is read by
/// 9.2, and rejected whole by 10.0, whose sshd then refuses every certificate. moshca's KRL
/// writer refuses DSA CA keys for this reason.
#[test]
fn difference_a_krl_section_for_a_dsa_ca_locks_everyone_out_from_10_0() {
    if !ready() {
        return;
    }
    let login = Login::new();
    let bytes = krl(&[
        Section::Serials {
            ca: dsa_blob(),
            serials: vec![5],
        },
        Section::Serials {
            ca: blob_of(&public_key(&login.ca)),
            serials: vec![7],
        },
    ]);
    let out = listing(login.dir.path(), &bytes);
    let (logged_in, ssh_out, log) = login.with_krl(&bytes);
    if openssh_at_least(10, 0) {
        assert!(
            !out.ok() && out.stderr.contains("unknown or unsupported key type"),
            "10.0 cannot read a KRL naming a DSA CA:\n{out}"
        );
        assert!(
            !logged_in,
            "10.0's sshd must refuse everyone with an unreadable KRL:\n{ssh_out}\n{log}"
        );
    } else {
        out.assert_ok();
        assert!(out.stdout.contains("# CA key ssh-dss"), "{out}");
        assert!(
            logged_in,
            "9.2's sshd reads the KRL and serial 8 is not revoked:\n{ssh_out}\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// KRL extension sections, added in 9.4

/// A non-critical extension section (type 255) is skipped from 9.4 on and makes 9.2 reject
/// the whole KRL: moshca writes none.
#[test]
fn difference_a_krl_extension_section_locks_everyone_out_before_9_4() {
    if !ready() {
        return;
    }
    let login = Login::new();
    let bytes = krl(&[
        Section::Serials {
            ca: blob_of(&public_key(&login.ca)),
            serials: vec![7],
        },
        Section::Extension {
            name: "interop@moshca.example".into(),
            critical: false,
        },
    ]);
    let out = listing(login.dir.path(), &bytes);
    let (logged_in, ssh_out, log) = login.with_krl(&bytes);
    if openssh_at_least(9, 4) {
        out.assert_ok();
        assert!(
            logged_in,
            "sshd {} skips a non-critical extension:\n{ssh_out}\n{log}",
            openssh_version()
        );
    } else {
        assert!(!out.ok(), "9.2 rejects a KRL with an extension:\n{out}");
        assert!(
            !logged_in,
            "9.2's sshd must refuse everyone with an unreadable KRL:\n{ssh_out}\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The same on both

/// A revoked key that no version can parse only warns in the listing and exits 0 on both,
/// so "ssh-keygen -Q -l accepted the KRL" is no proof a KRL is whole on any version.
#[test]
fn same_on_both_an_unparseable_revoked_key_only_warns_in_the_listing() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = [string(b"ssh-ed25519"), string(&[1, 2, 3])].concat();
    let out = listing(dir.path(), &krl(&[Section::Keys(vec![broken])]));
    out.assert_ok();
    assert!(
        out.stderr.contains("parse KRL key: invalid format"),
        "expected the parse warning:\n{out}"
    );
}

/// A KRL cut short (a half-written file) refuses every login on both versions: sshd fails
/// closed, which is why moshca writes KRLs to a temp file and renames them into place. An
/// empty file is the exception: it revokes nothing.
#[test]
fn same_on_both_a_truncated_krl_refuses_every_login() {
    if !ready() {
        return;
    }
    let login = Login::new();
    let whole = krl(&[Section::Serials {
        ca: blob_of(&public_key(&login.ca)),
        serials: vec![7],
    }]);
    let (logged_in, out, log) = login.with_krl(&whole);
    assert!(logged_in, "serial 8 is not revoked:\n{out}\n{log}");
    // A 0-byte file is no KRL cut short: it revokes nothing.
    let (logged_in, out, log) = login.with_krl(b"");
    assert!(
        logged_in,
        "an empty RevokedKeys file revokes nothing:\n{out}\n{log}"
    );
    for cut in [4, 8, whole.len() - 1] {
        let (logged_in, out, log) = login.with_krl(&whole[..cut]);
        assert!(
            !logged_in && log.contains("revoked keys file"),
            "a KRL cut to {cut} bytes must refuse the login:\n{out}\n{log}"
        );
    }
}

/// A critical extension section is refused by every version: sshd must not guess.
#[test]
fn same_on_both_a_critical_krl_extension_is_refused() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = listing(
        dir.path(),
        &krl(&[Section::Extension {
            name: "interop@moshca.example".into(),
            critical: true,
        }]),
    );
    assert!(
        !out.ok(),
        "a critical unknown extension must be refused:\n{out}"
    );
}
