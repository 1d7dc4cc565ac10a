//! Secret hygiene: with every log turned up to TRACE, no secret reaches a log, a command's
//! output or the audit trail (DESIGN.md rule 11).
//!
//! The test runs its own `moshca-server serve` with `RUST_LOG=trace` (the harness's [`Ca`]
//! passes the test's environment through, and the test cannot change that), a CA key
//! encrypted with a passphrase, and a webhook whose URL and signing secret are secrets too.
//! It drives the flows that handle secrets: bearer tokens (`user add`, `user token`, a
//! token from a file, a wrong token), `moshca login` with an approval into a real
//! ssh-agent, `moshca request` / `approve` / `deny` / `fetch`, a revocation, a SIGHUP reload
//! (which re-reads the encrypted CA key) and the audit trail. Every client runs with
//! `RUST_LOG=trace` and `-vvv`, every admin command with `RUST_LOG=trace`.
//!
//! Then it looks for every secret in everything anyone could read: the server's stderr and
//! stdout, every command's stdout and stderr (except the token that `user add` and
//! `user token` print on stdout by design), `moshca-server audit export`, and the database
//! file itself (which should hold token hashes only).
//!
//! [`Ca`]: moshca_e2e::Ca

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use moshca_e2e::{
    Background, Run, SshAgent, client_bin, find_program, poll, require_openssh, run, server_bin,
    signal,
};
use rand::Rng as _;
use rand::rngs::OsRng;

const POLICY: &str = r#"
[defaults]
max_ttl = "8h"
pending_ttl = "1h"
backdate = "1m"
revokers = ["group:security"]
auditors = ["group:audit"]

[[role]]
name = "oncall"
requesters = ["group:oncall"]
approvers = ["group:sre-leads"]
approval = "manual"
reason_min_len = 10
logins = ["mcae2e"]
default_ttl = "30m"
max_ttl = "1h"
"#;

const REASON: &str = "INC-7001 hygiene check";

/// A random string of `n` URL-safe characters.
fn random_text(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| OsRng.r#gen()).collect();
    URL_SAFE_NO_PAD.encode(bytes)[..n].to_owned()
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

// ---------------------------------------------------------------------------------------
// A webhook receiver: accepts every POST with 204, counts them.

struct Webhook {
    port: u16,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (received.clone(), stop.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if answer(stream).is_ok() {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Webhook {
            port,
            received,
            stop,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one HTTP request (head and Content-Length body) and answers 204.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

// ---------------------------------------------------------------------------------------
// The server at TRACE

/// `moshca-server serve` with `RUST_LOG=trace`, stderr to a file, stdout collected.
struct TraceServer {
    child: Child,
    url: String,
    log: PathBuf,
    stdout: Arc<Mutex<String>>,
}

impl TraceServer {
    fn start(data_dir: &Path, passphrase_file: &Path, log: PathBuf) -> TraceServer {
        let stderr = fs::File::create(&log).unwrap();
        let mut child = Command::new(server_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--passphrase-file")
            .arg(passphrase_file)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let lines = BufReader::new(child.stdout.take().unwrap());
        let collected = stdout.clone();
        thread::spawn(move || {
            for line in lines.lines() {
                let Ok(line) = line else { break };
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let mut server = TraceServer {
            child,
            url: String::new(),
            log,
            stdout,
        };
        server.url = poll(Duration::from_secs(30), "moshca-server to listen", || {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "moshca-server exited:\n{}",
                server.log_text()
            );
            server
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("moshca-server listening on "))
                .map(|u| u.trim().to_owned())
        });
        server
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for the exit (the final audit checkpoint is written on the way).
    fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "moshca-server did not exit within 10 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TraceServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- moshca-server log (last 200 lines) ---\n{}",
                tail(&self.log_text(), 200)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Secrets

/// The base64 body lines of a PEM-style file (`-----BEGIN ...` armor left out).
fn armored_body_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// The next SSH wire-format string of `blob` at `*at`, advancing `*at`.
fn ssh_string(blob: &[u8], at: &mut usize) -> Vec<u8> {
    let len = u32::from_be_bytes(blob[*at..*at + 4].try_into().unwrap()) as usize;
    let s = blob[*at + 4..*at + 4 + len].to_vec();
    *at += 4 + len;
    s
}

/// The 32-byte seed of an unencrypted OpenSSH ed25519 private key file.
fn ed25519_seed(unencrypted: &Path) -> Vec<u8> {
    let blob = STANDARD
        .decode(armored_body_lines(unencrypted).concat())
        .unwrap();
    let magic = b"openssh-key-v1\0";
    assert!(blob.starts_with(magic), "not an OpenSSH private key");
    let mut at = magic.len();
    let cipher = ssh_string(&blob, &mut at);
    assert_eq!(cipher, b"none", "the key copy should be unencrypted");
    let _kdf = ssh_string(&blob, &mut at);
    let _kdf_options = ssh_string(&blob, &mut at);
    at += 4; // number of keys
    let _public = ssh_string(&blob, &mut at);
    let private = ssh_string(&blob, &mut at);
    // checkint, checkint, key type, public key, private key (seed || public), comment.
    let mut at = 8usize;
    assert_eq!(ssh_string(&private, &mut at), b"ssh-ed25519");
    let _public = ssh_string(&private, &mut at);
    let secret = ssh_string(&private, &mut at);
    assert_eq!(secret.len(), 64, "ed25519 private key is seed || public");
    secret[..32].to_vec()
}

/// Strings that betray raw key bytes: hex (both cases), base64 forms, Rust's `Debug`.
fn byte_needles(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{bytes:?}");
    vec![
        hex.to_uppercase(),
        hex,
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        debug[1..debug.len() - 1].to_owned(),
    ]
}

/// A named secret and the strings that would reveal it.
struct Secret {
    what: String,
    needles: Vec<String>,
}

/// A text anyone could read, and where it came from.
struct Readable {
    what: String,
    text: String,
}

/// The bytes of the hex wire dumps in a log (ureq_proto at TRACE prints 16 bytes a line as
/// `TRACE ureq_proto::util: 504f 5354 202f ...  POST./...`), so a secret split across dump
/// lines is still found.
fn decoded_wire_dumps(log: &str) -> String {
    let mut bytes = Vec::new();
    for line in log.lines() {
        let Some((_, dump)) = line.split_once("ureq_proto::util: ") else {
            continue;
        };
        let hex = dump.split("  ").next().unwrap_or_default();
        for group in hex.split_whitespace() {
            for pair in group.as_bytes().chunks(2) {
                if let Ok(b) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("--"), 16) {
                    bytes.push(b);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn readable_run(what: &str, out: &Run, stdout_too: bool) -> Vec<Readable> {
    let mut texts = vec![Readable {
        what: format!("stderr of {what} ({})", out.command),
        text: out.stderr.clone(),
    }];
    if stdout_too {
        texts.push(Readable {
            what: format!("stdout of {what} ({})", out.command),
            text: out.stdout.clone(),
        });
    }
    texts
}

// ---------------------------------------------------------------------------------------
// The test

struct Setup {
    root: tempfile::TempDir,
    data_dir: PathBuf,
    home: PathBuf,
    passphrase_file: PathBuf,
    secrets: Vec<Secret>,
    readable: Vec<Readable>,
    /// Every token a command printed, for the leak check.
    tokens: Vec<(String, String)>,
}

impl Setup {
    /// `moshca-server ARGS --data-dir D` with `RUST_LOG=trace`.
    fn admin(&self, args: &[&str]) -> Run {
        run(Command::new(server_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1"))
    }

    /// `user add` / `user token`: stdout is the token alone, shown once by design; stderr is
    /// checked like everything else.
    fn token_command(&mut self, args: &[&str], user: &str) -> String {
        let out = self.admin(args);
        out.assert_ok();
        let token = out.stdout.trim().to_owned();
        assert!(
            token.starts_with("mca_") && !token.contains(char::is_whitespace),
            "{} should print one mca_ token alone:\n{out}",
            args.join(" ")
        );
        self.readable
            .extend(readable_run(&args.join(" "), &out, false));
        self.tokens
            .push((format!("token of {user} ({})", args[1]), token.clone()));
        token
    }

    /// `moshca -vvv ...` at TRACE, configured through the environment only.
    fn client(&self, url: &str, token: Option<&str>) -> Command {
        let mut cmd = Command::new(client_bin());
        cmd.arg("-vvv")
            .env_remove("MOSHCA_TOKEN")
            .env_remove("MOSHCA_TOKEN_FILE")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_AGENT_PID")
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .env("MOSHCA_SERVER", url)
            .env("MOSHCA_CA_CERT", self.data_dir.join("tls").join("cert.pem"))
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("HOME", &self.home);
        if let Some(token) = token {
            cmd.env("MOSHCA_TOKEN", token);
        }
        cmd
    }

    /// Runs a client command and keeps its output for the leak check.
    fn keep(&mut self, what: &str, out: Run) -> Run {
        self.readable.extend(readable_run(what, &out, true));
        out
    }
}

#[test]
fn no_secret_reaches_any_log_or_output_at_trace_level() {
    if !require_openssh() {
        return;
    }
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("moshca-e2e-hygiene")
        .tempdir()
        .unwrap();
    let data_dir = root.path().join("data");
    let home = root.path().join("home");
    fs::create_dir(&home).unwrap();
    let passphrase_file = root.path().join("ca-passphrase");
    let passphrase = format!("pp-{}", random_text(32));
    write_private(&passphrase_file, &format!("{passphrase}\n"));
    let mut s = Setup {
        data_dir,
        home,
        passphrase_file,
        secrets: vec![Secret {
            what: "the CA key passphrase".into(),
            needles: vec![passphrase.clone()],
        }],
        readable: Vec::new(),
        tokens: Vec::new(),
        root,
    };

    // init with a passphrase, the policy, a webhook whose URL and secret are secrets.
    let out = run(Command::new(server_bin())
        .args(["init", "--data-dir"])
        .arg(&s.data_dir)
        .arg("--passphrase-file")
        .arg(&s.passphrase_file)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1"));
    out.assert_ok();
    s.readable.extend(readable_run("init", &out, true));
    fs::write(s.data_dir.join("policy.toml"), POLICY).unwrap();
    let webhook = Webhook::start();
    let hook_path = random_text(24);
    let hook_secret = random_text(40);
    let hook_secret_file = s.root.path().join("webhook-secret");
    write_private(&hook_secret_file, &format!("{hook_secret}\n"));
    let mut config = fs::OpenOptions::new()
        .append(true)
        .open(s.data_dir.join("config.toml"))
        .unwrap();
    write!(
        config,
        "\n[[notify.webhook]]\nname = \"sink\"\nurl = \"http://127.0.0.1:{}/services/{hook_path}\"\nsecret_file = \"{}\"\n",
        webhook.port,
        hook_secret_file.display()
    )
    .unwrap();
    drop(config);
    s.secrets.push(Secret {
        what: "the webhook signing secret".into(),
        needles: vec![hook_secret],
    });
    s.secrets.push(Secret {
        what: "the webhook URL's path (a Slack-style token)".into(),
        needles: vec![hook_path],
    });

    let alice = s.token_command(&["user", "add", "alice", "--group", "oncall"], "alice");
    let bob = s.token_command(&["user", "add", "bob", "--group", "sre-leads"], "bob");
    let carol = s.token_command(&["user", "add", "carol", "--group", "security"], "carol");
    let erin = s.token_command(&["user", "add", "erin", "--group", "audit"], "erin");

    let log = s.root.path().join("server.log");
    let mut server = TraceServer::start(&s.data_dir, &s.passphrase_file, log);
    let url = server.url.clone();

    // User commands while the server runs: a second token for alice, a new user.
    let alice2 = s.token_command(&["user", "token", "alice"], "alice");
    let dave = s.token_command(&["user", "add", "dave", "--group", "oncall"], "dave");
    let out = s.admin(&["user", "list", "--json"]);
    out.assert_ok();
    s.readable.extend(readable_run("user list", &out, true));

    // Tokens in the environment, in a file, and a wrong one.
    let out = run(s.client(&url, Some(&alice)).arg("whoami"));
    s.keep("whoami (alice)", out).assert_ok();
    let token_file = s.root.path().join("alice-token");
    write_private(&token_file, &format!("{alice2}\n"));
    let out = run(s
        .client(&url, None)
        .env("MOSHCA_TOKEN_FILE", &token_file)
        .arg("whoami"));
    s.keep("whoami (alice, token file)", out).assert_ok();
    let out = run(s.client(&url, Some(&dave)).arg("whoami"));
    s.keep("whoami (dave)", out).assert_ok();
    let wrong = format!("mca_{}", random_text(43));
    s.tokens.push(("a wrong token".into(), wrong.clone()));
    let out = run(s.client(&url, Some(&wrong)).arg("whoami"));
    s.keep("whoami (wrong token)", out)
        .assert_refused()
        .assert_stderr_mentions(&["token", "authenticat"]);
    // Almost right: a real token with its last character changed.
    let mut near = alice.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'A' { 'B' } else { 'A' });
    s.tokens
        .push(("alice's token, one character off".into(), near.clone()));
    let out = run(s.client(&url, Some(&near)).args(["requests", "--pending"]));
    s.keep("requests (near-miss token)", out).assert_refused();

    // moshca login: an ephemeral key, approved by bob, into a real ssh-agent.
    let agent = SshAgent::start();
    let mut cmd = s.client(&url, Some(&alice));
    cmd.env("SSH_AUTH_SOCK", agent.socket())
        .args(["login", "--role", "oncall", "--reason", REASON]);
    let mut login = Background::spawn(&mut cmd);
    let id = login.wait_for_stderr(Duration::from_secs(30), |line| {
        let rest = line.trim().strip_prefix("moshca: request ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("is waiting").then(|| id.to_owned())
    });
    let out = run(s.client(&url, Some(&bob)).args(["approve", &id]));
    s.keep("approve (login)", out).assert_ok();
    let out = login.finish(Duration::from_secs(60));
    s.keep("login", out).assert_ok();
    assert!(
        agent.list().iter().any(|l| l.contains("ED25519-CERT")),
        "login should have loaded the certificate into the agent"
    );

    // moshca request for a key on disk: approve, fetch, status; another one denied.
    let subject = s.root.path().join("subject");
    let out = run(Command::new(find_program("ssh-keygen").unwrap())
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hygiene", "-f"])
        .arg(&subject));
    out.assert_ok();
    let subject_pub = s.root.path().join("subject.pub");
    let request = |s: &mut Setup, what: &str| -> String {
        let out = run(s
            .client(&url, Some(&alice2))
            .args([
                "request",
                "--role",
                "oncall",
                "--reason",
                REASON,
                "--public-key",
            ])
            .arg(&subject_pub));
        let out = s.keep(what, out);
        out.assert_ok();
        out.stdout.trim().to_owned()
    };
    let issued = request(&mut s, "request");
    let out = run(s
        .client(&url, Some(&bob))
        .args(["requests", "--pending", "--json"]));
    s.keep("requests --pending", out).assert_ok();
    let out = run(s
        .client(&url, Some(&bob))
        .args(["approve", &issued, "--comment", "ok"]));
    s.keep("approve (request)", out).assert_ok();
    let cert = s.root.path().join("subject-cert.pub");
    let out = run(s
        .client(&url, Some(&alice2))
        .args(["fetch", &issued, "--out"])
        .arg(&cert));
    s.keep("fetch", out).assert_ok();
    let out = run(s
        .client(&url, Some(&alice))
        .args(["status", &issued, "--json"]));
    s.keep("status", out).assert_ok();
    let denied = request(&mut s, "request (to deny)");
    let out = run(s
        .client(&url, Some(&bob))
        .args(["deny", &denied, "--reason", "not today"]));
    s.keep("deny", out).assert_ok();

    // Revocation and the KRL.
    let out = run(s.client(&url, Some(&carol)).args([
        "revoke",
        "--request",
        &issued,
        "--reason",
        "hygiene test",
    ]));
    s.keep("revoke", out).assert_ok();
    let krl = s.root.path().join("krl");
    let out = run(s
        .client(&url, Some(&carol))
        .arg("krl")
        .arg("--out")
        .arg(&krl));
    s.keep("krl", out).assert_ok();

    // SIGHUP re-reads the policy and the encrypted CA key.
    signal(server.child.id(), "HUP");
    poll(Duration::from_secs(10), "the policy reload", || {
        server.log_text().contains("policy reloaded").then_some(())
    });

    // The audit trail as an auditor sees it.
    let out = run(s.client(&url, Some(&erin)).args(["audit", "--json"]));
    let audit_json = s.keep("audit", out);
    audit_json.assert_ok();

    // Webhook deliveries happen beside issuance; wait for some, so their path ran.
    poll(Duration::from_secs(20), "webhook deliveries", || {
        (webhook.received.load(Ordering::SeqCst) >= 3).then_some(())
    });

    server.stop();
    let server_log = server.log_text();
    s.readable.push(Readable {
        what: "the server's stderr log".into(),
        text: server_log.clone(),
    });
    s.readable.push(Readable {
        what: "the wire dumps in the server's stderr log (hex decoded)".into(),
        text: decoded_wire_dumps(&server_log),
    });
    s.readable.push(Readable {
        what: "the server's stdout".into(),
        text: server.stdout_text(),
    });
    let export = s.admin(&["audit", "export"]);
    export.assert_ok();
    s.readable
        .extend(readable_run("audit export", &export, true));
    let verify = s.admin(&["audit", "verify"]);
    verify.assert_ok();
    s.readable
        .extend(readable_run("audit verify", &verify, true));
    let mut database = String::new();
    for name in ["moshca.db", "moshca.db-wal"] {
        if let Ok(bytes) = fs::read(s.data_dir.join(name)) {
            database.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    s.readable.push(Readable {
        what: "the database file".into(),
        text: database,
    });

    // The logs really were at TRACE, and the refusals really were seen (and audited).
    assert!(
        server_log.contains("TRACE"),
        "the server log has no TRACE line; RUST_LOG=trace had no effect"
    );
    assert!(
        s.readable
            .iter()
            .any(|r| r.what.starts_with("stderr of login") && r.text.contains("TRACE")),
        "the client's stderr has no TRACE line; RUST_LOG=trace had no effect"
    );
    assert!(
        export.stdout.contains("\"auth.failed\""),
        "the wrong tokens should be audited as auth.failed:\n{}",
        export.stdout
    );

    // Every secret: tokens, key material, passphrase, webhook secrets.
    for (what, token) in &s.tokens {
        let body = token.strip_prefix("mca_").unwrap_or(token).to_owned();
        s.secrets.push(Secret {
            what: what.clone(),
            needles: vec![token.clone(), body],
        });
    }
    s.secrets.push(Secret {
        what: "the CA private key file (encrypted)".into(),
        needles: armored_body_lines(&s.data_dir.join("ca_key")),
    });
    // The CA key decrypted, as the server holds it in memory.
    let plain = s.root.path().join("ca_key.plain");
    fs::copy(s.data_dir.join("ca_key"), &plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o600)).unwrap();
    run(Command::new(find_program("ssh-keygen").unwrap())
        .args(["-q", "-p", "-P", &passphrase, "-N", "", "-f"])
        .arg(&plain))
    .assert_ok();
    let ca_seed = ed25519_seed(&plain);
    let mut needles = byte_needles(&ca_seed);
    // The first body line is the same for every unencrypted ed25519 key; the rest is this one.
    needles.extend(armored_body_lines(&plain).into_iter().skip(1));
    s.secrets.push(Secret {
        what: "the CA private key (decrypted)".into(),
        needles,
    });
    let subject_seed = ed25519_seed(&subject);
    let mut needles = byte_needles(&subject_seed);
    needles.extend(armored_body_lines(&subject).into_iter().skip(1));
    s.secrets.push(Secret {
        what: "the private key of the requested public key".into(),
        needles,
    });
    s.secrets.push(Secret {
        what: "the TLS private key".into(),
        needles: armored_body_lines(&s.data_dir.join("tls").join("key.pem"))
            .into_iter()
            .filter(|l| l.len() >= 16)
            .collect(),
    });
    s.secrets.push(Secret {
        what: "any private key in PEM armor (e.g. login's ephemeral key)".into(),
        needles: vec!["PRIVATE KEY-----".into()],
    });

    let mut leaks = Vec::new();
    for secret in &s.secrets {
        assert!(!secret.needles.is_empty(), "no needles for {}", secret.what);
        for place in &s.readable {
            if let Some(needle) = secret
                .needles
                .iter()
                .find(|n| place.text.contains(n.as_str()))
            {
                let at = place.text.find(needle.as_str()).unwrap_or(0);
                let line_start = place.text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = place.text[at..]
                    .find('\n')
                    .map_or(place.text.len(), |i| at + i);
                let line: String = place.text[line_start..line_end].chars().take(400).collect();
                leaks.push(format!("{} is in {}:\n    {line}", secret.what, place.what));
            }
        }
    }
    println!(
        "checked {} secrets ({} strings) against {} outputs ({} bytes, server log {} bytes); {} webhook deliveries; {:?}",
        s.secrets.len(),
        s.secrets.iter().map(|x| x.needles.len()).sum::<usize>(),
        s.readable.len(),
        s.readable.iter().map(|r| r.text.len()).sum::<usize>(),
        server_log.len(),
        webhook.received.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
