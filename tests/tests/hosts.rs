//! End-to-end tests of what a host does with moshca: revocation, CA key rotation,
//! resource-scoped principals and a failing sync, against a real `sshd` configured the way
//! the deploy kit ships it.
//!
//! Each test builds a [`Host`]: a directory tree standing in for `/`, whose `etc/ssh` holds
//! the shipped drop-in `deploy/sshd/moshca.conf` (its `/etc/ssh` paths moved under the tree,
//! so this sshd reads the tree's files), `Include`d at the top of the host's
//! `sshd_config` as on Debian, plus `auth_principals/ACCOUNT` files. `moshca_ca.pub` and
//! `moshca.krl` come from `moshca host sync --dir ETC_SSH` run with only `MOSHCA_SERVER` and
//! `MOSHCA_CA_CERT`, as `moshca-host-sync.service` runs it, and sshd starts only after the
//! first sync, as the README requires. Nothing else tells sshd about the CA.
//!
//! Every test has its own CA and sshd, so they run in parallel. The rotation test waits
//! about 70 s for a certificate to expire and sets the wall time.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use moshca_e2e::{
    Ca, CertInfo, LOGIN, OTHER_LOGIN, Run, SshAgent, child_path, client_bin, fingerprint,
    free_port, keygen, make_host_key, moshca, poll, program, revoked_in, run, unix_now, wide,
};
use serde_json::Value;
use tempfile::TempDir;

/// One role whose logins are a plain account name and two resource-scoped principals;
/// revokers are group security.
const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"
revokers = ["group:security"]

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"
reason_min_len = 10
logins = ["mcae2e", "mcae2e@db-prod", "mcae2e@web-prod"]
default_ttl = "30m"
max_ttl = "1h"
"#;

/// alice and carol request, bob approves, sam revokes.
const USERS: &[(&str, &[&str])] = &[
    ("alice", &["oncall"]),
    ("carol", &["oncall"]),
    ("bob", &["sre-leads"]),
    ("sam", &["security"]),
];

const REASON: &str = "INC-4312 replica lag";
const DB_PROD: &str = "mcae2e@db-prod";
const WEB_PROD: &str = "mcae2e@web-prod";

/// How long sshd may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for something asynchronous (a log line, a reload).
const SETTLE: Duration = Duration::from_secs(15);

/// A CA with [`POLICY`] and [`USERS`], serving; `None` when the test should be skipped.
fn ca() -> Option<Ca> {
    Ca::serving(POLICY, USERS)
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn public_key(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

// ---------------------------------------------------------------------------------------
// Requests and certificates

/// `moshca ARGS...` as `user`.
fn client(ca: &Ca, user: &str, args: &[&str]) -> Run {
    run(ca.client(user).args(args))
}

/// `moshca request --role oncall --principal P --ttl T --public-key KEY.pub` as `user`.
fn request(ca: &Ca, user: &str, key: &Path, principal: &str, ttl: &str) -> Run {
    run(ca
        .client(user)
        .args(["request", "--role", "oncall", "--reason", REASON])
        .args(["--principal", principal, "--ttl", ttl, "--public-key"])
        .arg(public_key(key)))
}

/// A request that must be accepted; returns its id.
fn request_ok(ca: &Ca, user: &str, key: &Path, principal: &str, ttl: &str) -> String {
    let out = request(ca, user, key, principal, ttl);
    out.assert_ok();
    let id = out.stdout.trim().to_owned();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "`moshca request` should print the id alone:\n{out}"
    );
    id
}

/// `moshca status ID --json` as `user`: the request's state.
fn state_of(ca: &Ca, user: &str, id: &str) -> String {
    let out = client(ca, user, &["status", id, "--json"]);
    out.assert_ok();
    out.json()["state"].as_str().unwrap_or_default().to_owned()
}

/// A key made by `ssh-keygen` and the certificate moshca issued for it.
#[derive(Debug)]
struct Cert {
    key: PathBuf,
    cert: PathBuf,
    id: String,
    info: CertInfo,
}

/// `requester` asks for `principal` for `ttl` with a new key `NAME`, bob approves, the
/// requester fetches the certificate to `NAME-cert.pub`.
fn certificate(ca: &Ca, requester: &str, name: &str, principal: &str, ttl: &str) -> Cert {
    let key = keygen(ca.scratch(), name);
    certificate_for(ca, requester, &key, principal, ttl)
}

/// Like [`certificate`], for an existing key.
fn certificate_for(ca: &Ca, requester: &str, key: &Path, principal: &str, ttl: &str) -> Cert {
    let id = request_ok(ca, requester, key, principal, ttl);
    client(ca, "bob", &["approve", &id]).assert_ok();
    let cert = ca.scratch().join(format!("{id}-cert.pub"));
    client(ca, requester, &["fetch", &id, "--out", utf8(&cert)]).assert_ok();
    let info = CertInfo::read(&cert);
    assert_eq!(info.principals, [principal], "{info:?}");
    assert!(
        info.key_id
            .starts_with(&format!("moshca:req={id}:user={requester}:")),
        "{info:?}"
    );
    Cert {
        key: key.to_owned(),
        cert,
        id,
        info,
    }
}

/// `moshca revoke ARGS... --reason R --json` as `user`; the serials it reports.
fn revoke(ca: &Ca, user: &str, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["revoke", "--json", "--reason", "INC-4400 laptop stolen"];
    all.extend(args);
    let out = client(ca, user, &all);
    out.assert_ok();
    let value = out.json();
    assert!(
        wide(&value["krl_version"]).is_some_and(|v| v > 0),
        "revoke should report the KRL version:\n{out}"
    );
    match &value["serials"] {
        Value::Array(serials) => serials
            .iter()
            .map(|s| wide(s).unwrap_or_else(|| panic!("serial {s}:\n{out}")))
            .collect(),
        other => panic!("serials should be an array, got {other}:\n{out}"),
    }
}

/// SHA256 fingerprints of the keys in a file, one per line, in order.
fn fingerprints(file: &Path) -> Vec<String> {
    let out = run(Command::new(program("ssh-keygen"))
        .arg("-l")
        .arg("-f")
        .arg(file));
    out.assert_ok();
    out.stdout
        .lines()
        .map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with("SHA256:"))
                .unwrap_or_else(|| panic!("no fingerprint in {line:?}:\n{out}"))
                .to_owned()
        })
        .collect()
}

/// Sleeps until the wall clock is `seconds` past `valid_before`.
fn sleep_past(valid_before: i64, seconds: i64) {
    let left = valid_before + seconds - unix_now();
    assert!(
        left < 150,
        "valid_before {valid_before} is {left} s away; the ttl should be 1m"
    );
    if left > 0 {
        thread::sleep(Duration::from_secs(left.unsigned_abs()));
    }
}

// ---------------------------------------------------------------------------------------
// The host

/// Where host trees go: a root-owned directory no one else may write to, so sshd's
/// `StrictModes` can check `auth_principals/*` as on a real host.
fn host_base() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moshca-hosts");
    fs::create_dir_all(&base).expect("create the host base directory");
    base
}

/// Whether every directory from `path` up to `/` is owned by root and not writable by
/// group or others, which `StrictModes yes` demands of the principals files' directories.
fn strict_modes_hold(path: &Path) -> bool {
    path.ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

/// A stand-in for one SSH host: `ROOT/etc/ssh` with the shipped drop-in, an sshd_config
/// that Includes it, principals files, and (after [`Host::start`]) a private sshd.
#[derive(Debug)]
struct Host {
    root: TempDir,
    port: u16,
    sshd: Option<Child>,
}

impl Host {
    /// Builds the tree: host key, `sshd_config.d/moshca.conf` rendered from
    /// `deploy/sshd/moshca.conf`, an empty `auth_principals/`. sshd does not run yet.
    fn new() -> Host {
        let root = tempfile::Builder::new()
            .prefix("host-")
            .tempdir_in(host_base())
            .expect("temp dir");
        let host = Host {
            root,
            port: 0,
            sshd: None,
        };
        let ssh_dir = host.ssh_dir();
        for dir in ["auth_principals", "sshd_config.d"] {
            fs::create_dir_all(ssh_dir.join(dir)).expect("create etc/ssh");
        }
        make_host_key(&ssh_dir.join("ssh_host_ed25519_key"));
        // Every /etc/ssh moves under the host root, so this sshd reads the tree's files
        // (host-setup.sh --root keeps the real paths: its tree is for an image).
        let shipped =
            fs::read_to_string(deploy_dir().join("sshd/moshca.conf")).expect("read the drop-in");
        let rendered = shipped.replace("/etc/ssh", utf8(&ssh_dir));
        fs::write(ssh_dir.join("sshd_config.d/moshca.conf"), rendered).expect("write drop-in");
        host
    }

    /// `ROOT/etc/ssh`, what the host timer syncs (`moshca host sync --dir /etc/ssh`).
    fn ssh_dir(&self) -> PathBuf {
        self.root.path().join("etc/ssh")
    }

    /// `TrustedUserCAKeys`.
    fn ca_keys(&self) -> PathBuf {
        self.ssh_dir().join("moshca_ca.pub")
    }

    /// `RevokedKeys`.
    fn krl(&self) -> PathBuf {
        self.ssh_dir().join("moshca.krl")
    }

    fn config(&self) -> PathBuf {
        self.ssh_dir().join("sshd_config")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("sshd.log")
    }

    /// Everything sshd has logged so far.
    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Writes `auth_principals/ACCOUNT` with one principal per line.
    fn allow(&self, account: &str, principals: &[&str]) {
        let text: String = principals.iter().map(|p| format!("{p}\n")).collect();
        fs::write(self.ssh_dir().join("auth_principals").join(account), text)
            .expect("write the principals file");
    }

    /// `moshca host sync --dir ETC_SSH` as the timer runs it: a clean environment with
    /// `PATH`, `MOSHCA_SERVER` and `MOSHCA_CA_CERT` alone (no HOME, no token).
    fn sync(&self, ca: &Ca) -> Run {
        self.sync_with(ca, &[])
    }

    /// [`Host::sync`] with `flags` before the subcommand (e.g. `--json`).
    fn sync_with(&self, ca: &Ca, flags: &[&str]) -> Run {
        let mut cmd = Command::new(client_bin());
        cmd.env_clear()
            .env("PATH", child_path())
            .env("MOSHCA_SERVER", ca.url())
            .env("MOSHCA_CA_CERT", ca.tls_cert())
            .args(flags)
            .args(["host", "sync", "--dir"])
            .arg(self.ssh_dir());
        run(&mut cmd)
    }

    /// A sync that must succeed: checks its report against the files; returns the KRL
    /// version installed.
    #[track_caller]
    fn sync_ok(&self, ca: &Ca) -> u64 {
        // The text form prints only files that changed; the JSON report has both always.
        let out = self.sync_with(ca, &["--json"]);
        out.assert_ok();
        let report = out.json();
        let keys = fingerprints(&self.ca_keys()).len();
        assert_eq!(
            report["ca_keys"]["keys"].as_u64(),
            Some(keys as u64),
            "host sync should report the {keys} key(s) it installed:\n{out}"
        );
        let version = moshca_e2e::wide(&report["krl"]["krl_version"])
            .unwrap_or_else(|| panic!("host sync should report the KRL version:\n{out}"));
        let check = run(Command::new(program("ssh-keygen"))
            .args(["-Q", "-l", "-f"])
            .arg(self.krl()));
        check.assert_ok();
        assert!(
            check.stdout.contains(&format!("# KRL version {version}")),
            "the installed KRL should be version {version}:\n{check}"
        );
        version
    }

    /// Starts sshd on the configuration the drop-in completes, once the first sync has
    /// produced the files it names. Checks with `sshd -t` and `sshd -T` that the drop-in's
    /// paths are the ones in force, as the README's "Verify" step does.
    fn start(&mut self) {
        assert!(self.sshd.is_none(), "sshd is already running");
        assert!(
            self.ca_keys().is_file() && self.krl().is_file(),
            "sshd must start only after the first host sync"
        );
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (privilege separation)");
        let ssh_dir = self.ssh_dir();
        let strict = strict_modes_hold(&ssh_dir.join("auth_principals"));
        if !strict {
            eprintln!(
                "note: {} is not root-only all the way up; sshd runs with StrictModes no",
                ssh_dir.display()
            );
        }
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = free_port();
            // Include at the top, as Debian's sshd_config does: the drop-in's first values win.
            fs::write(
                self.config(),
                format!(
                    "Include {dir}/sshd_config.d/*.conf\n\
                     Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {dir}/ssh_host_ed25519_key\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes {strict}\n\
                     AuthorizedKeysFile none\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     LogLevel VERBOSE\n",
                    dir = ssh_dir.display(),
                    strict = if strict { "yes" } else { "no" },
                ),
            )
            .expect("write sshd_config");
            if attempt == 0 {
                self.check_config();
            }
            let log = fs::File::create(self.log_path()).expect("create sshd log");
            let mut child = Command::new(program("sshd"))
                .args(["-D", "-e", "-f"])
                .arg(self.config())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            if wait_for_port(port, &mut child) {
                self.port = port;
                self.sshd = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = self.log();
        }
        panic!("sshd did not start listening; its last log:\n{last_log}");
    }

    /// `sshd -t` accepts the configuration, and `sshd -T` shows the drop-in's three paths.
    fn check_config(&self) {
        let sshd = program("sshd");
        run(Command::new(&sshd).arg("-t").arg("-f").arg(self.config())).assert_ok();
        let out = run(Command::new(&sshd)
            .arg("-T")
            .arg("-f")
            .arg(self.config())
            .args(["-C", "user=mcae2e,host=localhost,addr=127.0.0.1"]));
        out.assert_ok();
        let dir = self.ssh_dir();
        for expected in [
            format!("trustedusercakeys {}", self.ca_keys().display()),
            format!("revokedkeys {}", self.krl().display()),
            format!(
                "authorizedprincipalsfile {}/auth_principals/%u",
                dir.display()
            ),
        ] {
            assert!(
                out.stdout.lines().any(|line| line == expected),
                "sshd -T should show `{expected}` from the drop-in:\n{out}"
            );
        }
    }

    /// `ssh -p PORT ACCOUNT@127.0.0.1 id` with `cert` and its key alone.
    fn ssh(&self, account: &str, cert: &Cert) -> Run {
        assert!(self.sshd.is_some(), "sshd is not running");
        run(Command::new(program("ssh"))
            .args(["-F", "/dev/null"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=20"])
            .args(["-o", "PasswordAuthentication=no"])
            .args(["-o", "KbdInteractiveAuthentication=no"])
            .args(["-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&cert.key)
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.cert.display()))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{account}@127.0.0.1"))
            .arg("id")
            .env_remove("SSH_AUTH_SOCK"))
    }

    /// Fails unless `cert` logs in as `account` and runs `id` there.
    #[track_caller]
    fn assert_login(&self, account: &str, cert: &Cert) {
        let out = self.ssh(account, cert);
        assert!(
            out.ok() && out.stdout.contains(&format!("({account})")),
            "{} should log in as {account}:\n{out}",
            cert.info.key_id
        );
    }

    /// Fails unless sshd refuses `cert` for `account`.
    #[track_caller]
    fn assert_refused(&self, account: &str, cert: &Cert) {
        let out = self.ssh(account, cert);
        assert!(
            !out.ok() && !out.stdout.contains("uid=") && out.stderr.contains("Permission denied"),
            "{} must not log in as {account}:\n{out}",
            cert.info.key_id
        );
    }

    /// Waits until sshd's log contains `needle`.
    #[track_caller]
    fn wait_for_log(&self, needle: &str) {
        poll(SETTLE, &format!("sshd's log to contain {needle:?}"), || {
            self.log().contains(needle).then_some(())
        });
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- sshd log ({}) ---\n{}\n--- end of sshd log ---",
                self.root.path().display(),
                self.log()
            );
        }
    }
}

fn wait_for_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A host that trusts `ca`: principals files as given, the first sync, then sshd.
fn host(ca: &Ca, principals: &[(&str, &[&str])]) -> Host {
    let mut host = Host::new();
    for (account, lines) in principals {
        host.allow(account, lines);
    }
    host.sync_ok(ca);
    host.start();
    host
}

// ---------------------------------------------------------------------------------------
// Revocation

#[test]
fn revoke_then_one_host_sync_locks_out_that_certificate_only() {
    let Some(ca) = ca() else { return };
    let host = host(&ca, &[(LOGIN, &[LOGIN])]);
    let alice = certificate(&ca, "alice", "alice", LOGIN, "30m");
    let carol = certificate(&ca, "carol", "carol", LOGIN, "30m");
    host.assert_login(LOGIN, &alice);
    host.assert_login(LOGIN, &carol);
    let before = host.sync_ok(&ca);

    let serials = revoke(&ca, "sam", &["--request", &alice.id]);
    assert_eq!(serials, [alice.info.serial], "only alice's certificate");

    // The CA has revoked it, but this host has not synced: it decides from its own KRL.
    host.assert_login(LOGIN, &alice);
    assert!(!revoked_in(&host.krl(), &alice.cert));

    let after = host.sync_ok(&ca);
    assert!(
        after > before,
        "the KRL version should grow: {before} -> {after}"
    );
    assert!(revoked_in(&host.krl(), &alice.cert));
    assert!(!revoked_in(&host.krl(), &carol.cert));
    host.assert_refused(LOGIN, &alice);
    host.wait_for_log(&format!("revoked by file {}", host.krl().display()));
    host.assert_login(LOGIN, &carol);
    host.wait_for_log(&format!(
        "Accepted certificate ID \"{}\"",
        carol.info.key_id
    ));
    // Revoking again changes nothing.
    assert_eq!(
        revoke(&ca, "sam", &["--request", &alice.id]),
        Vec::<u64>::new()
    );
}

#[test]
fn revoked_user_cannot_obtain_a_new_certificate() {
    let Some(ca) = ca() else { return };
    let old = certificate(&ca, "alice", "alice", LOGIN, "30m");
    let pending_key = keygen(ca.scratch(), "pending");
    let pending = request_ok(&ca, "alice", &pending_key, LOGIN, "30m");

    // carol is no revoker: refused, and alice keeps working.
    client(
        &ca,
        "carol",
        &["revoke", "--user", "alice", "--reason", "INC-4400 not mine"],
    )
    .assert_code(3);
    request_ok(&ca, "alice", &pending_key, LOGIN, "30m");

    let serials = revoke(&ca, "sam", &["--user", "alice"]);
    assert_eq!(serials, [old.info.serial]);

    // Her token no longer works, for a request with a key or for a login.
    let fresh = keygen(ca.scratch(), "fresh");
    request(&ca, "alice", &fresh, LOGIN, "30m")
        .assert_code(1)
        .assert_stderr_mentions(&["token not accepted", "disabled"]);
    let agent = SshAgent::start();
    run(ca
        .client_with_agent("alice", &agent)
        .args(["login", "--role", "oncall", "--reason", REASON])
        .args(["--principal", LOGIN, "--timeout", "20s"]))
    .assert_code(1)
    .assert_stderr_mentions(&["token not accepted", "disabled"]);
    assert_eq!(agent.list(), Vec::<String>::new());
    // A request she made before cannot be approved into a certificate either.
    client(&ca, "bob", &["approve", &pending]).assert_refused();
    assert_ne!(state_of(&ca, "bob", &pending), "issued");

    let krl = ca.scratch().join("server.krl");
    ca.admin(&["krl", "--out", utf8(&krl)]).assert_ok();
    assert!(revoked_in(&krl, &old.cert));

    ca.admin(&["user", "enable", "alice"]).assert_ok();
    let new = certificate_for(&ca, "alice", &fresh, LOGIN, "30m");
    ca.admin(&["krl", "--out", utf8(&krl)]).assert_ok();
    assert!(!revoked_in(&krl, &new.cert), "a new certificate is good");
    assert!(
        revoked_in(&krl, &old.cert),
        "enabling the user must not un-revoke her old certificate"
    );
}

#[test]
fn revoked_public_key_is_in_the_krl_and_cannot_be_certified_again() {
    let Some(ca) = ca() else { return };
    let host = host(&ca, &[(LOGIN, &[LOGIN])]);
    let cert = certificate(&ca, "alice", "alice", LOGIN, "30m");
    let other = certificate(&ca, "alice", "other", LOGIN, "30m");
    host.assert_login(LOGIN, &cert);

    let serials = revoke(&ca, "sam", &["--public-key", utf8(&public_key(&cert.key))]);
    assert_eq!(serials, [cert.info.serial]);

    let krl = ca.scratch().join("client.krl");
    client(&ca, "alice", &["krl", "--out", utf8(&krl)]).assert_ok();
    assert!(revoked_in(&krl, &cert.cert), "the certificate is revoked");
    assert!(
        revoked_in(&krl, &public_key(&cert.key)),
        "the key itself is in the KRL"
    );
    assert!(!revoked_in(&krl, &other.cert));
    assert!(!revoked_in(&krl, &public_key(&other.key)));

    for user in ["alice", "carol"] {
        request(&ca, user, &cert.key, LOGIN, "30m")
            .assert_code(3)
            .assert_stderr_mentions(&["revoked"]);
    }

    host.sync_ok(&ca);
    host.assert_refused(LOGIN, &cert);
    host.wait_for_log("revoked by file");
    host.assert_login(LOGIN, &other);
}

#[test]
fn key_revoked_while_its_request_is_pending_is_not_certified() {
    let Some(ca) = ca() else { return };
    let key = keygen(ca.scratch(), "alice");
    // A certificate for the key, so the revocation has something to revoke, and a second
    // request for the same key that is still pending when the key is revoked.
    let first = certificate_for(&ca, "alice", &key, LOGIN, "30m");
    let pending = request_ok(&ca, "alice", &key, LOGIN, "30m");
    let serials = revoke(&ca, "sam", &["--public-key", utf8(&public_key(&key))]);
    assert_eq!(serials, [first.info.serial]);

    let approve = client(&ca, "bob", &["approve", &pending]);
    let state = state_of(&ca, "alice", &pending);
    assert!(
        !approve.ok() && state != "issued",
        "a revoked key must never be certified again (README: \"by public key (which can \
         never be certified again)\"), but approving request {pending}, made before the \
         revocation, left it {state:?}:\n{approve}"
    );
}

// ---------------------------------------------------------------------------------------
// Rotation

#[test]
fn rotation_keeps_old_and_new_certificates_working_and_drops_the_old_key_after_expiry() {
    let Some(ca) = ca() else { return };
    let host = host(&ca, &[(LOGIN, &[LOGIN])]);
    let old_fp = fingerprint(&ca.ca_public_key());
    assert_eq!(fingerprints(&host.ca_keys()), [old_fp.as_str()]);
    let a = certificate(&ca, "alice", "a", LOGIN, "1m");
    assert_eq!(a.info.signing_ca, old_fp);

    ca.admin(&["ca", "rotate"]).assert_ok();
    let new_fp = fingerprint(&ca.ca_public_key());
    assert_ne!(new_fp, old_fp, "rotate should make a new key");
    let published = ca.admin(&["ca", "public-keys"]);
    published.assert_ok();
    let published_file = ca.scratch().join("published.pub");
    fs::write(&published_file, &published.stdout).expect("write published keys");
    let mut got = fingerprints(&published_file);
    got.sort();
    let mut both = vec![old_fp.clone(), new_fp.clone()];
    both.sort();
    assert_eq!(got, both, "both keys are published at once:\n{published}");

    host.sync_ok(&ca);
    let mut got = fingerprints(&host.ca_keys());
    got.sort();
    assert_eq!(got, both, "the host trusts both keys after one sync");
    // Until the reload, the running server still signs with the old key.
    let a2 = certificate(&ca, "carol", "a2", LOGIN, "1m");
    assert_eq!(
        a2.info.signing_ca, old_fp,
        "signing switches on reload only"
    );

    ca.reload();
    let listed = ca.scratch().join("ca-keys.pub");
    poll(
        SETTLE,
        "the reloaded server to list the new key first",
        || {
            run(moshca(&ca, None, None).args(["ca-keys", "--out", utf8(&listed)])).assert_ok();
            (fingerprints(&listed).first() == Some(&new_fp)).then_some(())
        },
    );
    let b = certificate(&ca, "alice", "b", LOGIN, "10m");
    assert_eq!(
        b.info.signing_ca, new_fp,
        "signed by the new key after reload"
    );
    assert_ne!(b.info.signing_ca, a.info.signing_ca);

    host.assert_login(LOGIN, &a);
    host.assert_login(LOGIN, &a2);
    host.assert_login(LOGIN, &b);

    sleep_past(a.info.valid_before.max(a2.info.valid_before), 2);
    host.sync_ok(&ca);
    assert_eq!(
        fingerprints(&host.ca_keys()),
        [new_fp.as_str()],
        "the old key leaves once its last certificate has expired"
    );
    host.assert_login(LOGIN, &b);
    host.assert_refused(LOGIN, &a);
}

// ---------------------------------------------------------------------------------------
// Resource-scoped principals

#[test]
fn host_for_db_prod_refuses_a_web_prod_only_certificate() {
    let Some(ca) = ca() else { return };
    let db_prod = host(&ca, &[(LOGIN, &[DB_PROD])]);
    let web = certificate(&ca, "alice", "web", WEB_PROD, "30m");
    let db = certificate(&ca, "alice", "db", DB_PROD, "30m");
    let plain = certificate(&ca, "alice", "plain", LOGIN, "30m");

    db_prod.assert_refused(LOGIN, &web);
    db_prod.wait_for_log("Certificate does not contain an authorized principal");
    db_prod.assert_login(LOGIN, &db);
    db_prod.wait_for_log(&format!("Accepted certificate ID \"{}\"", db.info.key_id));
    // With AuthorizedPrincipalsFile the login name is not compared with the principals,
    // and an account without a principals file accepts no certificate.
    db_prod.assert_refused(LOGIN, &plain);
    db_prod.assert_refused(OTHER_LOGIN, &db);

    // The same web-prod certificate opens a host whose file lists it.
    let web_prod = host(&ca, &[(LOGIN, &[WEB_PROD])]);
    web_prod.assert_login(LOGIN, &web);
    web_prod.assert_refused(LOGIN, &db);
}

// ---------------------------------------------------------------------------------------
// A failing sync

#[test]
fn host_sync_keeps_the_old_files_when_the_server_is_down() {
    let Some(mut ca) = ca() else { return };
    let host = host(&ca, &[(LOGIN, &[LOGIN])]);
    let cert = certificate(&ca, "alice", "alice", LOGIN, "30m");
    host.assert_login(LOGIN, &cert);
    let listing = |dir: &Path| {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read etc/ssh")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let names = listing(&host.ssh_dir());
    let keys = fs::read(host.ca_keys()).expect("read moshca_ca.pub");
    let krl = fs::read(host.krl()).expect("read moshca.krl");

    ca.stop();
    let out = host.sync(&ca);
    assert!(
        !out.ok() && out.code.is_some() && out.code != Some(2),
        "host sync must fail while the server is down:\n{out}"
    );
    // One error naming the server it could not reach.
    out.assert_stderr_mentions(&[ca.url()]);
    assert_eq!(
        fs::read(host.ca_keys()).expect("read moshca_ca.pub"),
        keys,
        "moshca_ca.pub must stay as it was"
    );
    assert_eq!(
        fs::read(host.krl()).expect("read moshca.krl"),
        krl,
        "moshca.krl must stay as it was"
    );
    assert_eq!(listing(&host.ssh_dir()), names, "no temp file is left");
    host.assert_login(LOGIN, &cert);

    ca.start();
    host.sync_ok(&ca);
    host.assert_login(LOGIN, &cert);
}
