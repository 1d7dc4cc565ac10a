//! A real PostgreSQL server for moshca's tests, started by the test itself.
//!
//! [`Cluster::start`] runs `initdb` and `pg_ctl start` in a temporary directory: password
//! authentication (scram-sha-256) for the superuser role `moshca`, TCP on 127.0.0.1 on a
//! free port, the Unix socket inside the temporary directory, `fsync=on`, and replication
//! enabled so [`Cluster::standby`] can make a streaming standby with `pg_basebackup`.
//! [`shared`] gives one cluster per test process for tests that only need a database.
//!
//! PostgreSQL refuses to run as root, and the end-to-end tests run as root in CI: then the
//! server programs run as the system account [`SERVER_USER`] (created on first use), which
//! owns the temporary directories. Otherwise they run as the current user.
//!
//! Nothing is left behind: dropping a [`Cluster`] stops its server (`-m immediate`) and
//! removes its directory, and every cluster has a small watchdog process that does the same
//! if the test process dies without unwinding (`cargo test` killed, a timeout, `exit`).
//!
//! What this crate must not do: mock anything, need docker or a preinstalled server, print a
//! password, or wait without a deadline. Failures panic with the server's log.
//!
//! Figures on a 2-core machine are in `tests/cluster.rs`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The system account the server programs run as when the tests run as root.
pub const SERVER_USER: &str = "moshca-pg";

/// The superuser role every cluster is initialised with.
pub const ROLE: &str = "moshca";

/// How long any single wait (start, replication, promotion, a killed process) may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Where the PostgreSQL server programs are: `MOSHCA_TEST_PG_BIN` if set, else the highest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb` (Debian's layout). `Err` says what
/// to install.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("MOSHCA_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "MOSHCA_TEST_PG_BIN={} has no initdb; point it at PostgreSQL's bin directory",
                dir.display()
            ))
        };
    }
    let versions = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten();
    versions
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            "the PostgreSQL server programs (initdb, pg_ctl) are not installed: install \
             Debian's `postgresql` package (scripts/test.sh does), or set MOSHCA_TEST_PG_BIN \
             to the directory that has them"
                .to_owned()
        })
}

/// Whether tests that need PostgreSQL can run. Under CI (`CI` set and not `0`/`false`) a
/// missing server is a failure, so this panics with the reason; elsewhere it prints a skip
/// line to stderr and returns false.
pub fn available() -> bool {
    match bin_dir() {
        Ok(_) => true,
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
            assert!(!ci, "PostgreSQL tests cannot run in CI: {why}");
            eprintln!("skipping a PostgreSQL test: {why}");
            false
        }
    }
}

/// One cluster per test process, started on first use and never dropped: its watchdog stops
/// it and removes its directory once the process has exited. `None` when `!available()`.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    SHARED
        .get_or_init(|| available().then(Cluster::start))
        .as_ref()
}

/// A running PostgreSQL server in its own temporary directory (`data/` for the data
/// directory, `log` for the server log, the Unix socket, and for TLS `ca.crt`).
///
/// Drop stops it with `pg_ctl stop -m immediate` (no clean shutdown: tests do not need one,
/// and it is fast) and removes the directory.
pub struct Cluster {
    dir: TempDir,
    port: u16,
    password: String,
    ca_cert: Option<PathBuf>,
    watchdog: Option<Child>,
    killed: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("password", &"<redacted>")
            .field("killed", &self.killed)
            .finish()
    }
}

impl Cluster {
    /// Initialises and starts a new primary server; panics (with the log) if it cannot.
    pub fn start() -> Cluster {
        Self::init(false)
    }

    /// Like [`Cluster::start`], plus `ssl=on` with a self-signed certificate for 127.0.0.1
    /// and localhost; [`Cluster::ca_cert`] is the PEM to verify it with.
    pub fn start_with_tls() -> Cluster {
        Self::init(true)
    }

    fn init(tls: bool) -> Cluster {
        let dir = server_dir();
        let password = random_hex(16);
        let pwfile = dir.path().join("pwfile");
        write_server_file(&pwfile, &password, 0o600);
        let data = dir.path().join("data");
        let mut initdb = server_command("initdb");
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", ROLE, "--pwfile"])
            .arg(&pwfile)
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"])
            // Syncing initdb's files guards against an OS crash, which tests do not have;
            // the server itself runs with fsync=on.
            .arg("--no-sync");
        let initialised = run(&mut initdb);
        let _ = fs::remove_file(&pwfile);
        if let Err(why) = initialised {
            panic!("initdb failed: {why}");
        }
        let mut settings = "listen_addresses = '127.0.0.1'\nfsync = on\nwal_level = replica\n\
             max_wal_senders = 4\nhot_standby = on\n"
            .to_owned();
        let mut ca_cert = None;
        if tls {
            let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
            let made = rcgen::generate_simple_self_signed(names).expect("making a TLS cert");
            write_server_file(&data.join("server.crt"), &made.cert.pem(), 0o600);
            let key = made.signing_key.serialize_pem();
            write_server_file(&data.join("server.key"), &key, 0o600);
            let ca = dir.path().join("ca.crt");
            fs::write(&ca, made.cert.pem()).expect("writing ca.crt");
            ca_cert = Some(ca);
            settings.push_str("ssl = on\n");
        }
        append(&data.join("postgresql.conf"), &settings);
        Self::launch(dir, password, ca_cert)
    }

    /// Picks a free port, writes it (and the socket directory) into `postgresql.auto.conf`,
    /// starts the server and its watchdog. Another process can take the port between the
    /// pick and the bind, so a bind failure is retried on a new port.
    fn launch(dir: TempDir, password: String, ca_cert: Option<PathBuf>) -> Cluster {
        let data = dir.path().join("data");
        let log = dir.path().join("log");
        for attempt in 1.. {
            let port = free_port();
            let settings = format!(
                "port = {port}\nunix_socket_directories = '{}'\ncluster_name = 'moshca_{port}'\n",
                dir.path().display()
            );
            append(&data.join("postgresql.auto.conf"), &settings);
            let mut start = server_command("pg_ctl");
            start
                .arg("start")
                .arg("--pgdata")
                .arg(&data)
                .arg("--log")
                .arg(&log);
            start.args(["--wait", "--timeout", &DEADLINE.as_secs().to_string()]);
            let started = run(&mut start);
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            match started {
                Ok(_) => {
                    let watchdog = Some(watchdog(dir.path()));
                    let killed = false;
                    return Cluster {
                        dir,
                        port,
                        password,
                        ca_cert,
                        watchdog,
                        killed,
                    };
                }
                Err(_) if attempt < 3 && log_text.contains("could not bind") => continue,
                Err(why) => {
                    // It may still be starting: stop it before the directory goes.
                    let _ = run(&mut stop_command(&data));
                    panic!("pg_ctl start failed: {why}\n--- server log:\n{log_text}")
                }
            }
        }
        unreachable!()
    }

    /// A streaming standby of this server: `pg_basebackup -R` into a new directory, started
    /// on its own port, returned once the primary shows it streaming.
    ///
    /// With `synchronous`, this server is set (ALTER SYSTEM, reload) to
    /// `synchronous_standby_names` = this standby's name (its `cluster_name`, `moshca_PORT`)
    /// and `synchronous_commit = remote_apply`, and the call returns once the standby is
    /// `sync`: a commit on the primary then returns only after the standby has applied it,
    /// so a read on the standby right after sees it. The name rather than `'*'` keeps later
    /// standbys `async`; the last synchronous one made is the synchronous standby.
    pub fn standby(&self, synchronous: bool) -> Cluster {
        let dir = server_dir();
        let data = dir.path().join("data");
        let mut backup = server_command("pg_basebackup");
        backup
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
            ])
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--username", ROLE, "--no-password"])
            // Written into primary_conninfo by --write-recovery-conf, so the standby can
            // reconnect; the file is the server account's, mode 0600.
            .env("PGPASSWORD", &self.password);
        if let Err(why) = run(&mut backup) {
            panic!(
                "pg_basebackup failed: {why}\n--- primary log:\n{}",
                self.log()
            );
        }
        // The copied auto.conf may carry the primary's synchronous_standby_names; a standby
        // promoted with it would wait forever for a standby of its own.
        append(
            &data.join("postgresql.auto.conf"),
            "synchronous_standby_names = ''\n",
        );
        let ca_cert = self.ca_cert.as_ref().map(|ca| {
            let copy = dir.path().join("ca.crt");
            fs::copy(ca, &copy).expect("copying ca.crt");
            copy
        });
        let standby = Self::launch(dir, self.password.clone(), ca_cert);
        if synchronous {
            let names = format!(
                "ALTER SYSTEM SET synchronous_standby_names = 'moshca_{}'",
                standby.port
            );
            self.psql("postgres", &names);
            self.psql(
                "postgres",
                "ALTER SYSTEM SET synchronous_commit = 'remote_apply'",
            );
            self.psql("postgres", "SELECT pg_reload_conf()");
        }
        let wanted = if synchronous { "sync" } else { "async" };
        let query = format!(
            "SELECT state || ' ' || sync_state FROM pg_stat_replication \
             WHERE application_name = 'moshca_{}'",
            standby.port
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen = self.psql("postgres", &query);
            if seen == format!("streaming {wanted}") {
                return standby;
            }
            assert!(
                Instant::now() < deadline,
                "the standby on port {} is not streaming {wanted} after {DEADLINE:?} (seen: \
                 {seen:?})\n--- primary log:\n{}\n--- standby log:\n{}",
                standby.port,
                self.log(),
                standby.log()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the role [`ROLE`] (random per cluster; a standby shares its
    /// primary's).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The data directory (owned by the server's account).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The PEM certificate to verify a TLS cluster's server certificate with (it is
    /// self-signed); `None` unless started with [`Cluster::start_with_tls`].
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// `postgres://moshca:PASSWORD@127.0.0.1:PORT/DATABASE`. It holds the password: pass it
    /// to the code under test, do not print it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{ROLE}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// A libpq connection string without the password (give that in `PGPASSWORD`, as
    /// [`psql_with`] does); append `sslmode=...` and the like to it.
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={ROLE} dbname={database}",
            self.port
        )
    }

    /// Creates a database and returns its [`Cluster::url`]. The name is lowercase ASCII
    /// letters, digits and `_`, so it needs no quoting in SQL or in the url.
    pub fn create_database(&self, name: &str) -> String {
        let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        assert!(
            !name.is_empty() && name.chars().all(plain),
            "database name {name:?}: use lowercase letters, digits and _"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Creates a database with a name unique in this cluster (process id and a counter),
    /// so tests sharing a cluster do not see each other's tables. Returns its url.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("test_{}_{n}", std::process::id()))
    }

    /// Runs `sql` with `psql -At` in `database` and returns its output, trimmed; panics with
    /// psql's stderr and the server log on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        psql_with(&self.conninfo(database), &self.password, sql).unwrap_or_else(|why| {
            panic!(
                "psql on port {} failed: {why}\n--- server log:\n{}",
                self.port,
                self.log()
            )
        })
    }

    /// Crashes the server: SIGKILL to the postmaster, returning once it is gone. Drop still
    /// removes the directory.
    pub fn kill(&mut self) {
        let pid = self.postmaster_pid();
        let pid = rustix::process::Pid::from_raw(pid).expect("postmaster pid is positive");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .unwrap_or_else(|e| panic!("SIGKILL to the postmaster failed: {e}"));
        self.killed = true;
        let deadline = Instant::now() + DEADLINE;
        // The postmaster is not our child: whoever reaps it, it is gone once it is no
        // longer running (a zombie counts as gone).
        let stat = format!("/proc/{}/stat", pid.as_raw_nonzero());
        while fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(
                Instant::now() < deadline,
                "the killed postmaster still runs"
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Promotes a standby (`pg_ctl promote --wait`); it accepts writes when this returns.
    pub fn promote(&self) {
        let mut promote = server_command("pg_ctl");
        promote.arg("promote").arg("--pgdata").arg(self.data_dir());
        promote.args(["--wait", "--timeout", &DEADLINE.as_secs().to_string()]);
        if let Err(why) = run(&mut promote) {
            panic!(
                "pg_ctl promote failed: {why}\n--- server log:\n{}",
                self.log()
            );
        }
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self) -> bool {
        self.psql("postgres", "SELECT pg_is_in_recovery()") == "t"
    }

    /// The process id of the postmaster (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> i32 {
        let pidfile = self.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&pidfile).unwrap_or_default();
        let pid = text.lines().next().and_then(|l| l.trim().parse().ok());
        pid.unwrap_or_else(|| panic!("no pid in {}:\n{}", pidfile.display(), self.log()))
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        let log = self.dir.path().join("log");
        fs::read_to_string(&log).unwrap_or_else(|e| format!("(no log at {}: {e})", log.display()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // After kill() there is nothing to stop, and pg_ctl would wait on the stale pid file.
        if !self.killed {
            let _ = run(&mut stop_command(&self.data_dir()));
        }
        // The TempDir removes the directory.
    }
}

/// Runs `psql -X -At -v ON_ERROR_STOP=1` with `conninfo` and `PGPASSWORD=password`; the
/// output trimmed, or `Err` with psql's stderr. For connections `Cluster::psql` does not
/// make (TLS settings, a wrong password).
pub fn psql_with(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let mut psql = Command::new("psql");
    psql.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
        "-c",
        sql,
    ])
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", DEADLINE.as_secs().to_string());
    run(&mut psql).map(|out| out.trim().to_owned())
}

/// Runs a command to completion within [`DEADLINE`]: its stdout, or `Err` with its exit
/// status and stderr (killed at the deadline, so a hung statement fails the test).
fn run(command: &mut Command) -> Result<String, String> {
    let program = command.get_program().to_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    // Read both pipes while waiting, or a chatty child blocks on a full pipe.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.map(|mut p| p.read_to_string(&mut text));
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after {DEADLINE:?}");
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status == "exit status: 0" {
        Ok(stdout)
    } else {
        Err(format!("{program:?} {status}: {}", stderr.trim()))
    }
}

/// `pg_ctl stop -m immediate` (no clean shutdown: tests do not need one, and it is fast).
fn stop_command(data: &Path) -> Command {
    let mut stop = server_command("pg_ctl");
    stop.arg("stop").arg("--pgdata").arg(data);
    stop.args(["--mode=immediate", "--wait", "--timeout", "30"]);
    stop
}

/// A command for one of the server programs, run as [`SERVER_USER`] when we are root.
fn server_command(program: &str) -> Command {
    let path = bin_dir()
        .unwrap_or_else(|why| panic!("{why}"))
        .join(program);
    match server_account() {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(path);
            command
        }
        None => Command::new(path),
    }
}

/// The uid and gid of [`SERVER_USER`] when we are root (creating the account the first
/// time), `None` when we are not root and the server runs as ourselves.
fn server_account() -> Option<(u32, u32)> {
    static ACCOUNT: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *ACCOUNT.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        // Test processes may start at once (several cargo runs, nextest); concurrent useradds are
        // not safe here: both can succeed, the second rewriting the first's uid. So they
        // take turns under a lock, and only the first one creates the account.
        let lock = std::env::temp_dir().join("moshca-test-postgres-account.lock");
        let lock =
            fs::File::create(&lock).unwrap_or_else(|e| panic!("creating {}: {e}", lock.display()));
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking moshca-test-postgres-account.lock: {e}"));
        if lookup_account().is_none() {
            let mut useradd = Command::new("useradd");
            useradd.args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ]);
            if let Err(why) = run(useradd.arg(SERVER_USER)) {
                panic!(
                    "cannot create the system account {SERVER_USER} to run PostgreSQL as: {why}"
                );
            }
        }
        let ids = lookup_account();
        assert!(
            ids.is_some(),
            "useradd made no {SERVER_USER} in /etc/passwd"
        );
        ids
    })
}

fn lookup_account() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(SERVER_USER))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A new temporary directory (mode 0700) owned by the server's account.
fn server_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("moshca-pg-")
        .tempdir()
        .expect("creating a temporary directory for PostgreSQL");
    give_to_server(dir.path());
    dir
}

/// Writes a file the server reads, owned by its account, with `mode`.
fn write_server_file(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    give_to_server(path);
}

fn give_to_server(path: &Path) {
    if let Some((uid, gid)) = server_account() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to {SERVER_USER}: {e}", path.display()));
    }
}

/// Appends settings to a config file of the server (later lines win).
fn append(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut urandom = fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut buf).expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the process that cleans up after a test process that dies without dropping the
/// cluster: a shell polling our pid with `kill -0`, then `pg_ctl stop -m immediate` and
/// `rm -rf` of the directory. Its own process group, so a Ctrl-C of `cargo test` does not
/// take it along. Drop kills it before stopping the server itself.
fn watchdog(dir: &Path) -> Child {
    const SCRIPT: &str = r#"parent=$1 dir=$2; shift 2
while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done
"$@"
rm -rf "$dir""#;
    let stop = stop_command(&dir.join("data"));
    let mut command = Command::new("sh");
    command
        .args(["-c", SCRIPT, "sh", &std::process::id().to_string()])
        .arg(dir)
        .arg(stop.get_program())
        .args(stop.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    command.spawn().expect("starting the PostgreSQL watchdog")
}
