//! Harness for moshca's end-to-end tests: the real `moshca-server` and `moshca` binaries, a
//! real OpenSSH `sshd` on a loopback port that trusts the CA, a real `ssh-agent`, and real
//! `ssh` logins.
//!
//! # Layout
//!
//! - [`prerequisites`], [`require_openssh`], [`require_root`]: decide whether the suite can
//!   run here. Outside CI a missing prerequisite skips a test; under CI (`CI` set) it fails.
//! - [`program`], [`OPENSSH_DIR_VAR`], [`openssh_version`]: which OpenSSH the suite runs,
//!   the system's or the one `MOSHCA_E2E_OPENSSH_DIR` names; every failure names it.
//! - [`ensure_accounts`]: the local accounts [`LOGIN`] and [`OTHER_LOGIN`] that certificates
//!   name as principals, created once per process.
//! - [`Ca`]: a CA data directory and a running `moshca-server serve` on `127.0.0.1:0`;
//!   `replicas.rs` adds replicas over one PostgreSQL database ([`Ca::init_on_database`],
//!   [`Ca::join`]).
//! - [`Sshd`], [`SshAgent`]: private OpenSSH daemons in temporary directories.
//! - [`moshca`], [`ssh`], [`run`], [`Background`]: commands, always with deadlines.
//! - [`CertInfo`]: what `ssh-keygen -L` says about a certificate.
//!
//! Every process the harness starts is killed when its owner drops, and every wait has a
//! deadline, so a broken binary fails a test instead of hanging the suite. Nothing here
//! changes the test process's own environment: child processes get theirs explicitly.
//!
//! What it must not do: touch the real user's configuration (`HOME` of every client is a
//! temporary directory), or depend on anything but OpenSSH, coreutils and `useradd`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod replicas;

/// The account certificates are issued for in the tests.
pub const LOGIN: &str = "mcae2e";
/// A second account, a login of the test role that tests leave out of the principals.
pub const OTHER_LOGIN: &str = "mcae2e-other";

/// How long a client command may run before the harness kills it and fails the test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Prerequisites

/// The directory holding `moshca-server` and `moshca`: `MOSHCA_BIN_DIR` if set, else the
/// cargo target directory of this test binary (`target/debug/deps/e2e-…` -> `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOSHCA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let mut dir = exe
        .parent()
        .expect("the test binary is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set MOSHCA_BIN_DIR)",
        path.display()
    );
    path
}

/// Path of the `moshca-server` binary under test.
pub fn server_bin() -> PathBuf {
    binary("moshca-server")
}

/// Path of the `moshca` client binary under test.
pub fn client_bin() -> PathBuf {
    binary("moshca")
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Fails under CI, otherwise prints why the test is skipped and returns `false`.
fn missing(what: &str) -> bool {
    assert!(
        !in_ci(),
        "{what}: a missing prerequisite is a failure in CI"
    );
    eprintln!("skipping end-to-end test: {what} (set CI=1 to make this a failure)");
    false
}

/// The environment variable naming the OpenSSH under test: an installation prefix or bin
/// directory whose `DIR`, `DIR/bin` or `DIR/sbin` hold `sshd`, `ssh`, `ssh-agent`, `ssh-add`
/// and `ssh-keygen`. Unset or empty: the system's OpenSSH from `PATH` and the sbin
/// directories.
pub const OPENSSH_DIR_VAR: &str = "MOSHCA_E2E_OPENSSH_DIR";

/// The OpenSSH programs the suite runs; [`OPENSSH_DIR_VAR`] decides where they come from.
pub const OPENSSH_PROGRAMS: [&str; 5] = ["sshd", "ssh", "ssh-agent", "ssh-add", "ssh-keygen"];

/// `DIR`, `DIR/bin` and `DIR/sbin` of [`OPENSSH_DIR_VAR`]; `None` when it is unset or empty.
pub fn openssh_dirs() -> Option<Vec<PathBuf>> {
    let dir = std::env::var_os(OPENSSH_DIR_VAR).filter(|d| !d.is_empty())?;
    let dir = PathBuf::from(dir);
    Some(vec![dir.join("bin"), dir.join("sbin"), dir])
}

/// Finds a program in `PATH` or the sbin directories, where Debian puts `sshd`. OpenSSH's
/// programs come only from [`OPENSSH_DIR_VAR`] when it is set: falling back to the system's
/// would test the wrong version without saying so.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if OPENSSH_PROGRAMS.contains(&name) {
        name_openssh_in_failures();
        if let Some(dirs) = openssh_dirs() {
            return dirs
                .into_iter()
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file());
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The installed program `name`; panics when it is missing.
pub fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| match std::env::var_os(OPENSSH_DIR_VAR) {
        Some(dir) if OPENSSH_PROGRAMS.contains(&name) && !dir.is_empty() => panic!(
            "{name} is not in {OPENSSH_DIR_VAR}={} (nor its bin/ or sbin/): build that OpenSSH \
             (scripts/openssh-10.sh) or unset {OPENSSH_DIR_VAR} to test the system's",
            dir.to_string_lossy()
        ),
        _ => panic!("{name} is not installed"),
    })
}

/// `PATH` for the processes the suite starts (`moshca-server`, `moshca`), with the
/// [`OPENSSH_DIR_VAR`] directories first: the server's and the client's own `ssh-keygen -Q`
/// checks of a KRL must use the OpenSSH under test too.
pub fn child_path() -> std::ffi::OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let dirs = openssh_dirs().unwrap_or_default();
    std::env::join_paths(dirs.into_iter().chain(std::env::split_paths(&inherited)))
        .expect("PATH entries hold no separator")
}

/// What `ssh -V` of the OpenSSH under test prints (e.g. `OpenSSH_9.2p1 Debian-2+deb12u5,
/// OpenSSL 3.0.19 …`), and where it comes from; read once per process.
pub fn openssh_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let origin = match std::env::var_os(OPENSSH_DIR_VAR).filter(|d| !d.is_empty()) {
            Some(dir) => format!("{OPENSSH_DIR_VAR}={}", dir.to_string_lossy()),
            None => "the system's".to_owned(),
        };
        let ssh = match std::env::var_os(OPENSSH_DIR_VAR).filter(|d| !d.is_empty()) {
            Some(_) => openssh_dirs()
                .unwrap_or_default()
                .into_iter()
                .map(|dir| dir.join("ssh"))
                .find(|candidate| candidate.is_file()),
            None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join("ssh"))
                .find(|candidate| candidate.is_file()),
        };
        let said = ssh
            .and_then(|ssh| Command::new(ssh).arg("-V").output().ok())
            .map(|out| {
                // ssh -V prints to stderr; some builds print to stdout.
                let text = [out.stderr, out.stdout].concat();
                String::from_utf8_lossy(&text).trim().to_owned()
            })
            .filter(|text| text.starts_with("OpenSSH_"))
            .unwrap_or_else(|| "unknown version (no ssh -V)".to_owned());
        format!("{said} [{origin}]")
    })
}

/// `(major, minor)` of the OpenSSH under test, from [`openssh_version`] (`OpenSSH_10.0p2`
/// -> `(10, 0)`); `None` when unknown.
pub fn openssh_release() -> Option<(u32, u32)> {
    let rest = openssh_version().strip_prefix("OpenSSH_")?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (major, minor) = number.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether the OpenSSH under test is at least `major.minor`. Panics when its version is
/// unknown: a test that depends on the version must not guess.
pub fn openssh_at_least(major: u32, minor: u32) -> bool {
    let release = openssh_release().unwrap_or_else(|| {
        panic!(
            "cannot tell the OpenSSH version from `ssh -V`: {}",
            openssh_version()
        )
    });
    release >= (major, minor)
}

/// Installs, once per process, a panic hook that follows every failure's message with the
/// OpenSSH version under test, so a failure in the second (or any) pass says which version
/// it was.
fn name_openssh_in_failures() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let version = openssh_version();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            eprintln!("(OpenSSH under test: {version})");
        }));
    });
}

/// Whether OpenSSH's `sshd`, `ssh`, `ssh-agent`, `ssh-add` and `ssh-keygen` are installed
/// (in [`OPENSSH_DIR_VAR`] when it is set). A missing OpenSSH is a failure in CI (env `CI`
/// set) and a skip elsewhere.
pub fn require_openssh() -> bool {
    let absent: Vec<&str> = OPENSSH_PROGRAMS
        .into_iter()
        .filter(|name| find_program(name).is_none())
        .collect();
    if absent.is_empty() {
        true
    } else if let Some(dir) = std::env::var_os(OPENSSH_DIR_VAR).filter(|d| !d.is_empty()) {
        missing(&format!(
            "OpenSSH is missing from {OPENSSH_DIR_VAR}={} ({}); build it with \
             scripts/openssh-10.sh or point {OPENSSH_DIR_VAR} at another installation",
            dir.to_string_lossy(),
            absent.join(", ")
        ))
    } else {
        missing(&format!(
            "OpenSSH is missing ({}); install openssh-server and openssh-client",
            absent.join(", ")
        ))
    }
}

/// Whether the tests run as root, which they need to create accounts and run `sshd` for
/// them. Non-root is a failure in CI and a skip elsewhere.
pub fn require_root() -> bool {
    let uid = Command::new("id").arg("-u").output().ok().and_then(|out| {
        String::from_utf8(out.stdout)
            .ok()
            .map(|s| s.trim().to_owned())
    });
    if uid.as_deref() == Some("0") {
        true
    } else {
        missing("the end-to-end tests need root (they create accounts and run sshd)")
    }
}

/// Everything a test needs before it starts: OpenSSH, root, the binaries under test, and
/// the test accounts. Returns `false` when the test should be skipped.
pub fn prerequisites() -> bool {
    if !require_openssh() || !require_root() {
        return false;
    }
    server_bin();
    client_bin();
    ensure_accounts();
    true
}

/// Creates [`LOGIN`] and [`OTHER_LOGIN`] once per process.
///
/// The accounts are unlocked with `usermod -p '*'`: with `UsePAM no`, sshd refuses a locked
/// account even with a valid certificate. An account that already exists is reused.
pub fn ensure_accounts() {
    static ACCOUNTS: OnceLock<()> = OnceLock::new();
    ACCOUNTS.get_or_init(|| {
        for name in [LOGIN, OTHER_LOGIN] {
            let out = Command::new(program("useradd"))
                .args(["-m", "-s", "/bin/sh", name])
                .output()
                .expect("useradd runs");
            // Exit 9: the account exists already, from an earlier run.
            assert!(
                out.status.success() || out.status.code() == Some(9),
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = Command::new(program("usermod"))
                .args(["-p", "*", name])
                .output()
                .expect("usermod runs");
            assert!(
                out.status.success(),
                "usermod -p '*' {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Running commands

/// A finished command: what it was, how it ended and what it printed.
#[derive(Debug, Clone)]
pub struct Run {
    /// The command line, without its environment (which holds tokens).
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Run {
    /// Whether the command exited 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Parses standard output as JSON, failing the test with the whole run if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// Fails the test unless the command exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.ok(), "expected success:\n{self}");
        self
    }

    /// Fails the test unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "expected exit code {code}:\n{self}");
        self
    }

    /// Fails the test unless the command failed, with an exit code other than 2 (usage).
    #[track_caller]
    pub fn assert_refused(&self) -> &Self {
        assert!(
            !self.ok() && self.code.is_some() && self.code != Some(2),
            "expected a refusal (exit 1, 3 or 4):\n{self}"
        );
        self
    }

    /// Fails the test unless standard error mentions one of `words` (case-insensitive).
    #[track_caller]
    pub fn assert_stderr_mentions(&self, words: &[&str]) -> &Self {
        let stderr = self.stderr.to_lowercase();
        assert!(
            words.iter().any(|w| stderr.contains(&w.to_lowercase())),
            "expected stderr to mention one of {words:?}:\n{self}"
        );
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(f, "exit: {:?}", self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

/// The command line of `cmd`, quoted for reading; the environment is left out on purpose.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            if part.is_empty() || part.contains(char::is_whitespace) {
                format!("'{part}'")
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A child process whose output is collected by threads while it runs.
#[derive(Debug)]
pub struct Background {
    command: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .expect("output buffer lock")
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Background {
    /// Starts `cmd` with stdin closed and stdout/stderr collected.
    pub fn spawn(cmd: &mut Command) -> Background {
        let command = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Background {
            command,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Standard error printed so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Standard output printed so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("stdout lock")).into_owned()
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until standard error contains a line for which `find` returns a value, or fails
    /// the test after `timeout` (or as soon as the process exits without printing it).
    pub fn wait_for_stderr<T>(&mut self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.has_exited();
            if let Some(found) = self.stderr_so_far().lines().find_map(&find) {
                return found;
            }
            assert!(
                !exited && Instant::now() < deadline,
                "{} {} without printing what the test waits for:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.command,
                if exited { "exited" } else { "timed out" },
                self.stdout_so_far(),
                self.stderr_so_far()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit, killing it and failing the test after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("try_wait on a child") {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} still running after {timeout:?}; killed it:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.command,
                        self.stdout_so_far(),
                        self.stderr_so_far()
                    );
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Run {
            command: self.command.clone(),
            status,
            code: status.code(),
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Background {
    /// The process id, e.g. to send it a signal with [`signal`].
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Run {
    Background::spawn(cmd).finish(COMMAND_TIMEOUT)
}

/// Polls `check` until it returns a value, failing the test with `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Seconds since the Unix epoch, as the CA and sshd see them.
#[allow(clippy::disallowed_methods)] // the harness compares against the real clock on purpose
pub fn unix_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit in i64")
}

/// Sends `signal` (e.g. `"HUP"`) to `pid` with the `kill` command.
pub fn signal(pid: u32, signal: &str) {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .expect("kill runs");
    assert!(
        out.status.success(),
        "kill -{signal} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn wait_for_port(port: u16, child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------
// The CA server

/// A CA data directory and, once [`Ca::start`]ed, a `moshca-server serve` on a free
/// loopback port. The server is killed on drop; if the test is failing its log is printed.
#[derive(Debug)]
pub struct Ca {
    root: TempDir,
    tokens: HashMap<String, String>,
    server: Option<Child>,
    url: Option<String>,
    port: Option<u16>,
    stdout_lines: Option<mpsc::Receiver<String>>,
    server_env: Vec<(String, String)>,
}

impl Ca {
    /// `moshca-server init` in a fresh temporary directory, then `policy` as policy.toml.
    pub fn init(policy: &str) -> Ca {
        Ca::init_with(policy, &[]).0
    }

    /// [`Ca::init`] with more arguments to `init` (e.g. `--tls-name`); also what `init`
    /// printed.
    pub fn init_with(policy: &str, init_args: &[&str]) -> (Ca, Run) {
        let root = tempfile::Builder::new()
            .prefix("moshca-e2e-ca")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(root.path().join("home")).expect("create client HOME");
        let ca = Ca {
            root,
            tokens: HashMap::new(),
            server: None,
            url: None,
            port: None,
            stdout_lines: None,
            server_env: Vec::new(),
        };
        let mut args = vec!["init"];
        args.extend(init_args);
        let out = ca.admin(&args);
        out.assert_ok();
        ca.write_policy(policy);
        (ca, out)
    }

    /// `init`, `policy`, the given users (name, groups), then `serve`.
    /// [`Ca::start_with`] once [`prerequisites`] hold; `None` when the test should be
    /// skipped (never in CI, where a missing prerequisite fails).
    pub fn serving(policy: &str, users: &[(&str, &[&str])]) -> Option<Ca> {
        prerequisites().then(|| Ca::start_with(policy, users))
    }

    pub fn start_with(policy: &str, users: &[(&str, &[&str])]) -> Ca {
        let mut ca = Ca::init(policy);
        for (name, groups) in users {
            ca.add_user(name, groups);
        }
        ca.start();
        ca
    }

    /// Runs `moshca-server ARGS --data-dir DIR` to completion.
    pub fn admin(&self, args: &[&str]) -> Run {
        run(Command::new(server_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("PATH", child_path()))
    }

    /// Replaces policy.toml (the server reads it at start and on [`Ca::reload`]).
    pub fn write_policy(&self, policy: &str) {
        fs::write(self.data_dir().join("policy.toml"), policy).expect("write policy.toml");
    }

    /// `moshca-server user add NAME --group G...`; remembers and returns the token.
    pub fn add_user(&mut self, name: &str, groups: &[&str]) -> String {
        let mut args = vec!["user", "add", name];
        for group in groups {
            args.extend(["--group", group]);
        }
        let out = self.admin(&args);
        out.assert_ok();
        let token = out.stdout.trim().to_owned();
        assert!(
            token.starts_with("mca_") && !token.contains(char::is_whitespace),
            "user add should print one mca_ token alone:\n{out}"
        );
        self.tokens.insert(name.to_owned(), token.clone());
        token
    }

    /// The token [`Ca::add_user`] printed for `name`.
    pub fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no user {name} was added"))
    }

    /// Starts `moshca-server serve` (on a free port the first time, on the same port after a
    /// restart) and waits for its `listening on` line.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let listen = format!("127.0.0.1:{}", self.port.unwrap_or(0));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        let mut cmd = Command::new(server_bin());
        cmd.args(["serve", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen", &listen])
            // Plain text logs: they are read by people and by tests, not a terminal.
            .env("NO_COLOR", "1")
            .env("PATH", child_path())
            .envs(
                self.server_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("moshca-server listening on ") {
                        break url.trim().to_owned();
                    }
                }
                Err(e) => {
                    kill_child(&mut child);
                    // Drop prints the server's log.
                    panic!(
                        "moshca-server did not print `moshca-server listening on https://…` ({e})"
                    );
                }
            }
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no port in the listening URL {url:?}"));
        assert!(
            url.starts_with("https://127.0.0.1:") && port != 0,
            "unexpected listening URL {url:?}"
        );
        self.url = Some(url);
        self.port = Some(port);
        self.stdout_lines = Some(rx);
        self.server = Some(child);
    }

    /// Sets `name=value` in the environment of every later [`Ca::start`].
    pub fn server_env(&mut self, name: &str, value: &str) {
        self.server_env.push((name.to_owned(), value.to_owned()));
    }

    /// Stops the server with SIGTERM (graceful shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            kill_child(&mut child);
            panic!("moshca-server did not exit within 10 s of SIGTERM");
        }
    }

    /// Stops and starts the server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Sends SIGHUP: the server re-reads policy.toml.
    pub fn reload(&self) {
        signal(self.pid(), "HUP");
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("the server is running").id()
    }

    /// `https://127.0.0.1:PORT` of the running server.
    pub fn url(&self) -> &str {
        self.url.as_deref().expect("the server has been started")
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The server's TLS certificate, which clients pin (`MOSHCA_CA_CERT`).
    pub fn tls_cert(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    /// The CA public key hosts trust (`TrustedUserCAKeys`).
    pub fn ca_public_key(&self) -> PathBuf {
        self.data_dir().join("ca_key.pub")
    }

    /// A scratch directory that lives as long as the CA.
    pub fn scratch(&self) -> &Path {
        self.root.path()
    }

    /// The `HOME` given to clients: empty, so no real configuration is read.
    pub fn client_home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// What the server has written to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `moshca` as `user` (their token in `MOSHCA_TOKEN`), without an agent.
    pub fn client(&self, user: &str) -> Command {
        moshca(self, Some(self.token(user)), None)
    }

    /// `moshca` as `user` with `SSH_AUTH_SOCK` pointing at `agent`.
    pub fn client_with_agent(&self, user: &str, agent: &SshAgent) -> Command {
        moshca(self, Some(self.token(user)), Some(agent))
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            kill_child(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "--- moshca-server log ---\n{}\n--- end of moshca-server log ---",
                self.log()
            );
        }
    }
}

/// The `moshca` client configured for `ca` through its environment only: `MOSHCA_SERVER`,
/// `MOSHCA_CA_CERT`, `MOSHCA_TOKEN` (when given), `SSH_AUTH_SOCK` (when given), and an
/// empty temporary `HOME`. Inherited moshca and agent variables are removed.
pub fn moshca(ca: &Ca, token: Option<&str>, agent: Option<&SshAgent>) -> Command {
    let home = ca.client_home();
    let mut cmd = Command::new(client_bin());
    cmd.env_remove("MOSHCA_TOKEN")
        .env_remove("MOSHCA_TOKEN_FILE")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_AGENT_PID")
        .env("MOSHCA_SERVER", ca.url())
        .env("MOSHCA_CA_CERT", ca.tls_cert())
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("PATH", child_path())
        .env("HOME", home);
    if let Some(token) = token {
        cmd.env("MOSHCA_TOKEN", token);
    }
    if let Some(agent) = agent {
        cmd.env("SSH_AUTH_SOCK", agent.socket());
    }
    cmd
}

// ---------------------------------------------------------------------------------------
// OpenSSH

/// A private `sshd -D -e` on a free loopback port that trusts one CA key. Killed on drop;
/// its log is printed if the test is failing.
#[derive(Debug)]
pub struct Sshd {
    dir: TempDir,
    port: u16,
    child: Child,
}

/// Writes a new ed25519 sshd host key (and its `.pub`) at `path`.
pub fn make_host_key(path: &Path) {
    run(Command::new(program("ssh-keygen"))
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "moshca-e2e-host",
            "-f",
        ])
        .arg(path))
    .assert_ok();
}

/// The temporary directory of one private sshd.
fn sshd_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("moshca-e2e-sshd")
        .tempdir()
        .expect("temp dir")
}

impl Sshd {
    /// Starts sshd trusting the user CA public key at `ca_public_key`, with a host key of
    /// its own.
    pub fn start(ca_public_key: &Path) -> Sshd {
        let dir = sshd_dir();
        let host_key = dir.path().join("host_ed25519");
        make_host_key(&host_key);
        Sshd::launch(dir, ca_public_key, &host_key, None)
    }

    /// Writes sshd_config into `dir` and starts sshd on a free port (retrying a port
    /// another process took meanwhile).
    fn launch(
        dir: TempDir,
        ca_public_key: &Path,
        host_key: &Path,
        host_certificate: Option<&Path>,
    ) -> Sshd {
        // A missing RevokedKeys file refuses every key; an empty one revokes nothing.
        let revoked = dir.path().join("revoked_keys");
        fs::write(&revoked, b"").expect("write revoked_keys");
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (privilege separation)");
        let config = dir.path().join("sshd_config");
        let log = dir.path().join("sshd.log");
        let certificate = host_certificate
            .map(|c| format!("HostCertificate {}\n", c.display()))
            .unwrap_or_default();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {}\n\
                     {certificate}\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     AuthorizedKeysFile none\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     TrustedUserCAKeys {}\n\
                     RevokedKeys {}\n\
                     LogLevel VERBOSE\n",
                    host_key.display(),
                    ca_public_key.display(),
                    revoked.display()
                ),
            )
            .expect("write sshd_config");
            let stderr = fs::File::create(&log).expect("create sshd log");
            let mut child = Command::new(program("sshd"))
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start sshd");
            if wait_for_port(port, &mut child, START_TIMEOUT) {
                return Sshd { dir, port, child };
            }
            kill_child(&mut child);
            last_log = fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd did not start listening; its last log:\n{last_log}");
    }

    /// The loopback port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file `RevokedKeys` names (initially empty).
    pub fn revoked_keys(&self) -> PathBuf {
        self.dir.path().join("revoked_keys")
    }

    /// Everything sshd has logged so far (LogLevel VERBOSE: accepted certificate IDs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "--- sshd log ({}) ---\n{}\n--- end of sshd log ---",
                openssh_version(),
                self.log()
            );
        }
    }
}

/// A private `ssh-agent -D -a SOCK`, killed on drop.
#[derive(Debug)]
pub struct SshAgent {
    dir: TempDir,
    child: Child,
}

impl SshAgent {
    /// Starts the agent and waits for its socket.
    pub fn start() -> SshAgent {
        let dir = tempfile::Builder::new()
            .prefix("moshca-e2e-agent")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(program("ssh-agent"))
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if Instant::now() >= deadline || matches!(child.try_wait(), Ok(Some(_))) {
                kill_child(&mut child);
                panic!("ssh-agent did not create {}", socket.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        SshAgent { dir, child }
    }

    /// The agent's socket, for `SSH_AUTH_SOCK` and `IdentityAgent`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn ssh_add(&self, flag: &str) -> Vec<String> {
        let out = run(Command::new(program("ssh-add"))
            .arg(flag)
            .env("SSH_AUTH_SOCK", self.socket()));
        match out.code {
            Some(0) => out.stdout.lines().map(str::to_owned).collect(),
            // Exit 1 with "The agent has no identities."
            Some(1)
                if out.stdout.contains("no identities") || out.stderr.contains("no identities") =>
            {
                Vec::new()
            }
            _ => panic!("ssh-add {flag} failed:\n{out}"),
        }
    }

    /// `ssh-add -l`: one fingerprint line per identity; empty when the agent holds none.
    pub fn list(&self) -> Vec<String> {
        self.ssh_add("-l")
    }

    /// `ssh-add -L`: the public key (or certificate) lines the agent holds.
    pub fn public_keys(&self) -> Vec<String> {
        self.ssh_add("-L")
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// The credential an [`ssh`] login offers.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// Whatever the agent holds (`IdentityAgent=SOCK`).
    Agent(&'a SshAgent),
    /// A private key file and its certificate, with no agent.
    Certificate {
        /// The private key (`-i`).
        key: &'a Path,
        /// The certificate (`CertificateFile`).
        certificate: &'a Path,
    },
}

/// `ssh -p PORT LOGIN@127.0.0.1 COMMAND` against `sshd`, with no configuration file, no
/// known-hosts state and no prompts. Returns when ssh exits (killed after
/// [`COMMAND_TIMEOUT`]).
pub fn ssh(sshd: &Sshd, login: &str, identity: Identity<'_>, command: &str) -> Run {
    let mut cmd = Command::new(program("ssh"));
    cmd.args(["-F", "/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=20"])
        .args(["-o", "PasswordAuthentication=no"])
        .args(["-o", "KbdInteractiveAuthentication=no"]);
    match identity {
        Identity::Agent(agent) => {
            cmd.arg("-o")
                .arg(format!("IdentityAgent={}", agent.socket().display()))
                .args(["-o", "IdentitiesOnly=no"]);
        }
        Identity::Certificate { key, certificate } => {
            cmd.args(["-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes", "-i"])
                .arg(key)
                .arg("-o")
                .arg(format!("CertificateFile={}", certificate.display()));
        }
    }
    cmd.arg("-p")
        .arg(sshd.port().to_string())
        .arg(format!("{login}@127.0.0.1"))
        .arg(command)
        .env_remove("SSH_AUTH_SOCK");
    run(&mut cmd)
}

/// Makes an ed25519 key pair `DIR/NAME` + `DIR/NAME.pub` with `ssh-keygen`; returns the
/// private key path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run(Command::new(program("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "moshca-e2e", "-f"])
        .arg(&key))
    .assert_ok();
    key
}

/// The SHA256 fingerprint (`SHA256:…`) of a public key or certificate file.
pub fn fingerprint(public_key: &Path) -> String {
    let out = run(Command::new(program("ssh-keygen"))
        .arg("-l")
        .arg("-f")
        .arg(public_key));
    out.assert_ok();
    out.stdout
        .split_whitespace()
        .find(|word| word.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in:\n{out}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// Certificates

/// A 64-bit number from moshca's JSON output, which carries them as decimal strings (a
/// JSON number would be rounded above 2^53 by readers that use doubles). `None` for
/// anything else, a JSON number included.
pub fn wide(v: &serde_json::Value) -> Option<u64> {
    v.as_str()?.parse().ok()
}

/// What `ssh-keygen -L -f CERT` reports about an OpenSSH certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertInfo {
    /// e.g. `ssh-ed25519-cert-v01@openssh.com user certificate`.
    pub kind: String,
    /// Fingerprint of the certified (subject) key.
    pub public_key: String,
    /// Fingerprint of the signing CA key.
    pub signing_ca: String,
    /// The key id, unquoted.
    pub key_id: String,
    /// The serial number.
    pub serial: u64,
    /// `valid_after` as Unix seconds.
    pub valid_after: i64,
    /// `valid_before` as Unix seconds.
    pub valid_before: i64,
    /// Principals, in order.
    pub principals: Vec<String>,
    /// Critical options, one `name [value]` string each.
    pub critical_options: Vec<String>,
    /// Extensions, by name.
    pub extensions: Vec<String>,
}

impl CertInfo {
    /// Runs `ssh-keygen -L -f path` (with `TZ=UTC`, so times are exact) and parses it.
    pub fn read(path: &Path) -> CertInfo {
        let out = run(Command::new(program("ssh-keygen"))
            .arg("-L")
            .arg("-f")
            .arg(path)
            .env("TZ", "UTC"));
        out.assert_ok();
        CertInfo::parse(&out.stdout)
            .unwrap_or_else(|e| panic!("cannot parse ssh-keygen -L ({e}):\n{out}"))
    }

    /// Parses the text `ssh-keygen -L` prints, with times in UTC.
    pub fn parse(text: &str) -> Result<CertInfo, String> {
        let mut info = CertInfo::default();
        let mut list: Option<&str> = None;
        for line in text.lines().skip(1) {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            // Continuation lines of a list are indented deeper than the field names.
            let indent = line.len() - line.trim_start().len();
            if let (true, Some(field)) = (indent > 8, list) {
                match field {
                    "Principals" => info.principals.push(trimmed.to_owned()),
                    "Critical Options" => info.critical_options.push(trimmed.to_owned()),
                    _ => info.extensions.push(trimmed.to_owned()),
                }
                continue;
            }
            let (name, value) = trimmed
                .split_once(':')
                .ok_or_else(|| format!("unexpected line {line:?}"))?;
            let value = value.trim();
            list = None;
            match name {
                "Type" => info.kind = value.to_owned(),
                "Public key" => info.public_key = last_word(value),
                "Signing CA" => {
                    info.signing_ca = value
                        .split_whitespace()
                        .find(|w| w.starts_with("SHA256:"))
                        .unwrap_or_default()
                        .to_owned()
                }
                "Key ID" => info.key_id = value.trim_matches('"').to_owned(),
                "Serial" => {
                    info.serial = value
                        .parse()
                        .map_err(|e| format!("serial {value:?}: {e}"))?
                }
                "Valid" => {
                    let rest = value
                        .strip_prefix("from ")
                        .ok_or_else(|| format!("validity {value:?}"))?;
                    let (from, to) = rest
                        .split_once(" to ")
                        .ok_or_else(|| format!("validity {value:?}"))?;
                    info.valid_after = parse_utc(from)?;
                    info.valid_before = parse_utc(to)?;
                }
                "Principals" | "Critical Options" | "Extensions" if value != "(none)" => {
                    list = Some(name);
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// Whether `ssh-keygen -Q -f KRL FILE` calls the key or certificate in `file` revoked;
/// panics when it gives no verdict.
pub fn revoked_in(krl: &Path, file: &Path) -> bool {
    let out = run(Command::new(program("ssh-keygen"))
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(file));
    let verdict = out.stdout.trim_end();
    if verdict.ends_with(": REVOKED") && out.code == Some(1) {
        true
    } else if verdict.ends_with(": ok") && out.ok() {
        false
    } else {
        panic!("ssh-keygen -Q gave no verdict:\n{out}")
    }
}

fn last_word(value: &str) -> String {
    value
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Parses `YYYY-MM-DDTHH:MM:SS` (as `ssh-keygen -L` prints it under `TZ=UTC`) to Unix
/// seconds.
pub fn parse_utc(text: &str) -> Result<i64, String> {
    let bad = || format!("not a YYYY-MM-DDTHH:MM:SS time: {text:?}");
    let (date, time) = text.trim().split_once('T').ok_or_else(bad)?;
    let numbers = |s: &str, sep: char| -> Result<Vec<i64>, String> {
        s.split(sep)
            .map(|n| n.parse::<i64>().map_err(|_| bad()))
            .collect()
    };
    let (d, t) = (numbers(date, '-')?, numbers(time, ':')?);
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    // Days from 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

// ---------------------------------------------------------------------------------------
// Host certificates

impl Sshd {
    /// Starts sshd trusting the user CA key at `ca_public_key` and presenting `host_key`
    /// (a private key file), with `host_certificate` as sshd's `HostCertificate` when
    /// given: a host enrolled with moshca, or one that is not.
    pub fn start_with_host_key(
        ca_public_key: &Path,
        host_key: &Path,
        host_certificate: Option<&Path>,
    ) -> Sshd {
        Sshd::launch(sshd_dir(), ca_public_key, host_key, host_certificate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ssh_keygen_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_utc("2000-03-01T00:00:01"), Ok(951_868_801));
        assert_eq!(parse_utc("2024-02-29T23:59:59"), Ok(1_709_251_199));
        assert!(parse_utc("forever").is_err());
    }

    #[test]
    fn parses_ssh_keygen_listing() {
        let text = "/tmp/x-cert.pub:\n        Type: ssh-ed25519-cert-v01@openssh.com user certificate\n        Public key: ED25519-CERT SHA256:abc\n        Signing CA: ED25519 SHA256:def (using ssh-ed25519)\n        Key ID: \"moshca:req=1:user=alice:role=r:by=bob\"\n        Serial: 42\n        Valid: from 2024-02-29T23:58:59 to 2024-02-29T23:59:59\n        Principals: \n                mcae2e\n                other\n        Critical Options: (none)\n        Extensions: \n                permit-pty\n";
        let info = CertInfo::parse(text).expect("parses");
        assert_eq!(
            info.kind,
            "ssh-ed25519-cert-v01@openssh.com user certificate"
        );
        assert_eq!(info.public_key, "SHA256:abc");
        assert_eq!(info.signing_ca, "SHA256:def");
        assert_eq!(info.key_id, "moshca:req=1:user=alice:role=r:by=bob");
        assert_eq!(info.serial, 42);
        assert_eq!(info.valid_before - info.valid_after, 60);
        assert_eq!(info.principals, ["mcae2e", "other"]);
        assert!(info.critical_options.is_empty());
        assert_eq!(info.extensions, ["permit-pty"]);
    }
}

// ---------------------------------------------------------------------------------------
// The test identity provider

/// The directory of the test identity provider, `tests/idp` (Node.js, oidc-provider).
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// `node tests/idp/SCRIPT`, after checking that node and the IdP's packages are there: a
/// missing one fails the test with what to do, never skips it.
pub fn idp_script(script: &str) -> Command {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let node = CHECKED.get_or_init(|| {
        let node = find_program("node").ok_or_else(|| {
            "node is not installed: the SSO tests run a local OpenID Connect provider \
             (tests/idp) on Node.js 20 or later"
                .to_owned()
        })?;
        let version = Command::new(&node)
            .args(["-p", "process.versions.node"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", node.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 20 {
            return Err(format!(
                "node {version} is too old: the test identity provider needs Node.js 20 or later"
            ));
        }
        if !idp_dir()
            .join("node_modules")
            .join("oidc-provider")
            .is_dir()
        {
            return Err(format!(
                "the test identity provider's packages are missing: run `npm ci` in {} \
                 (scripts/test.sh does it)",
                idp_dir().display()
            ));
        }
        Ok(node)
    });
    let node = node.as_ref().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(node);
    cmd.arg(idp_dir().join(script)).current_dir(idp_dir());
    cmd
}

/// A local OpenID Connect provider, `node tests/idp/server.mjs`, on a free loopback port,
/// with accounts from a JSON file the test can rewrite between sign-ins. Killed on drop;
/// its log is printed if the test is failing.
#[derive(Debug)]
pub struct Idp {
    child: Child,
    issuer: String,
    dir: TempDir,
    log: Arc<Mutex<String>>,
}

impl Idp {
    /// Starts a provider with `accounts` (`{"alice": {"password": ..., "groups": [...]}}`)
    /// and more `server.mjs` arguments (e.g. `--id-token-ttl 1`).
    pub fn start(accounts: &serde_json::Value, args: &[&str]) -> Idp {
        let dir = tempfile::Builder::new()
            .prefix("moshca-e2e-idp")
            .tempdir()
            .expect("temp dir");
        let accounts_path = dir.path().join("accounts.json");
        fs::write(&accounts_path, accounts.to_string()).expect("write accounts.json");
        let mut cmd = idp_script("server.mjs");
        cmd.args(["--port", "0", "--accounts"])
            .arg(&accounts_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let issuer = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.starts_with("ready http://127.0.0.1:") => {
                line["ready ".len()..].trim().to_owned()
            }
            other => {
                kill_child(&mut child);
                panic!(
                    "tests/idp/server.mjs did not print `ready http://127.0.0.1:PORT` ({other:?}); \
                     its log:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Idp {
            child,
            issuer,
            dir,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Replaces the accounts; the provider reads them at each sign-in.
    pub fn set_accounts(&self, accounts: &serde_json::Value) {
        fs::write(self.dir.path().join("accounts.json"), accounts.to_string())
            .expect("write accounts.json");
    }

    /// What the provider has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A raw ID token for `user` issued to `client`, with `nonce` when given
    /// (`tests/idp/token.mjs`).
    pub fn id_token(
        &self,
        user: &str,
        password: &str,
        client: &str,
        nonce: Option<&str>,
    ) -> String {
        let mut cmd = idp_script("token.mjs");
        cmd.args([
            "--issuer",
            &self.issuer,
            "--user",
            user,
            "--password",
            password,
        ])
        .args(["--client", client]);
        if let Some(nonce) = nonce {
            cmd.args(["--nonce", nonce]);
        }
        let out = run(&mut cmd);
        out.assert_ok();
        let token = out.stdout.trim().to_owned();
        assert_eq!(
            token.split('.').count(),
            3,
            "token.mjs should print a JWT:\n{out}"
        );
        token
    }

    /// Completes a device sign-in as `user` at `uri` (verification_uri_complete), as a
    /// person would on another device (`tests/idp/device.mjs`).
    pub fn complete_device(&self, user: &str, password: &str, uri: &str) -> Run {
        run(idp_script("device.mjs").args(["--user", user, "--password", password, "--uri", uri]))
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "--- test identity provider log ---\n{}\n--- end of identity provider log ---",
                self.log()
            );
        }
    }
}
