//! Issuance benchmark: the real server in process (TLS, SQLite in WAL mode with
//! `synchronous=FULL`), driven over gRPC with the generated client.
//!
//! ```text
//! cargo bench -p moshca-server --bench issuance -- [--quick]   rate, latency, CPU, ceilings, watchers
//! cargo bench -p moshca-server --bench issuance -- --quick --backend sqlite|postgres|all
//! cargo bench -p moshca-server --bench issuance -- --scale     1,000,000 certificates in the store
//! cargo build --release --bins &&
//! cargo bench -p moshca-server --bench issuance -- --cli       `moshca request`, `fetch`, `ci`, `login` as processes
//! ```
//!
//! It measures and prints; it asserts nothing. The server and the load generator share
//! the process and the machine: each has its own two-thread tokio runtime (threads
//! `moshca-srv` and `bench-cli`), so CPU is reported per side from per-thread counters as
//! well as for the whole process. Only public APIs are used (`init`, `users`, `server`,
//! `authority`, `signer`, `store`), so the numbers stay comparable while the store's
//! internals change.
//!
//! `--backend` picks the stores of the default mode: `sqlite` (parts 1-5), `postgres`
//! (part 6 alone) or `all` (parts 1-5, then part 6). Part 6 runs issuance on a real
//! PostgreSQL (`moshca-test-postgres`: initdb in a temp dir, `fsync=on`) with one replica
//! and with two (two in-process servers, each with its own `Store` on one database, the
//! calls alternating between them), and ends with one table: SQLite, PostgreSQL with one
//! replica and with two, at 1 and 64 in flight. The default is `all` when PostgreSQL's
//! server programs are installed, else `sqlite` (the header says why). The PostgreSQL
//! server runs on the same cores as the benchmark; its processes' CPU is read from /proc.
//! `--scale`, `--cli` and `--in-flight` run on SQLite only.

#![allow(clippy::print_stdout)] // the report is the product

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use moshca_proto::v1 as pb;
use moshca_proto::v1::certificate_authority_client::CertificateAuthorityClient;
use moshca_server::approvals::{Request as StoredRequest, State};
use moshca_server::audit::Event;
use moshca_server::auth::{Caller, Token};
use moshca_server::authority::{self, Authority, NewRequest};
use moshca_server::config::Config;
use moshca_server::signer::{Grant, Signer};
use moshca_server::store::{self, CertRecord, Store};
use moshca_server::{clock, init, server, users};
use rand::Rng as _;
use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use tokio::runtime::Runtime;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const POLICY: &str = r#"
[[role]]
name = "deploy"
approval = "auto"
requesters = ["group:bench"]
logins = ["deploy"]
max_ttl = "10m"

[[role]]
name = "db"
approval = "manual"
requesters = ["group:bench"]
approvers = ["group:leads"]
logins = ["postgres"]
max_ttl = "1h"
"#;

/// Requested ttl of every benchmark certificate.
const TTL_SECS: u64 = 300;
/// Distinct subject keys, generated before any timing and reused round-robin.
const KEYS: usize = 4096;
/// Watch streams held open in part 5.
const WATCHERS: usize = 1000;
/// Pending requests one requester may have (`authority::MAX_PENDING_PER_REQUESTER`).
const PENDING_PER_USER: usize = authority::MAX_PENDING_PER_REQUESTER as usize;
/// Connections the watch streams are spread over (the server allows 256 streams each).
const WATCH_CONNECTIONS: usize = 8;

/// The stores the default mode measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    All,
}

impl Backend {
    fn sqlite(self) -> bool {
        self != Backend::Postgres
    }

    fn postgres(self) -> bool {
        self != Backend::Sqlite
    }
}

#[derive(Debug, Clone, Copy)]
struct Opts {
    quick: bool,
    /// `None` until resolved in `main`: `all` when PostgreSQL is installed.
    backend: Option<Backend>,
    scale: bool,
    cli: bool,
    /// Only one issuance run at this many in flight (for profiling under `perf`).
    in_flight: Option<usize>,
    /// Overrides the measured window.
    seconds: Option<u64>,
}

impl Opts {
    fn parse() -> anyhow::Result<Self> {
        let mut o = Opts {
            quick: false,
            backend: None,
            scale: false,
            cli: false,
            in_flight: None,
            seconds: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |flag: &str| -> anyhow::Result<u64> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("{flag} needs a number"))
            };
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--scale" => o.scale = true,
                "--cli" => o.cli = true,
                "--in-flight" => o.in_flight = Some(number("--in-flight")?.max(1) as usize),
                "--seconds" => o.seconds = Some(number("--seconds")?.max(1)),
                "--backend" => {
                    o.backend = Some(match args.next().as_deref() {
                        Some("sqlite") => Backend::Sqlite,
                        Some("postgres") => Backend::Postgres,
                        Some("all") => Backend::All,
                        other => anyhow::bail!(
                            "--backend {:?}: use --backend sqlite, postgres or all",
                            other.unwrap_or("")
                        ),
                    })
                }
                // cargo passes --bench to harness = false targets
                "--bench" => {}
                other => anyhow::bail!(
                    "unknown argument {other:?}; use --quick, --scale, --cli, \
                     --in-flight N, --seconds S and --backend sqlite|postgres|all \
                     (cargo bench -p moshca-server --bench issuance -- --quick)"
                ),
            }
        }
        Ok(o)
    }

    fn warmup(&self) -> Duration {
        if self.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        }
    }

    fn measure(&self) -> Duration {
        if let Some(s) = self.seconds {
            Duration::from_secs(s)
        } else if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut opts = Opts::parse()?;
    // Why PostgreSQL is left out, for the header; `Err` only when it was asked for.
    let postgres = moshca_test_postgres::bin_dir();
    let skipped = match (opts.backend, &postgres) {
        (Some(Backend::Sqlite), _) => None,
        (Some(_), Err(why)) => anyhow::bail!("--backend postgres or all: {why}"),
        (Some(_), Ok(_)) => None,
        (None, Ok(_)) => {
            opts.backend = Some(Backend::All);
            None
        }
        (None, Err(why)) => {
            opts.backend = Some(Backend::Sqlite);
            Some(why.clone())
        }
    };
    // The binary logs every issuance at info level; format those lines as it would, into
    // a sink, so their cost is counted without flooding the report.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let rt = Runtimes::new()?;
    let root = tempfile::Builder::new()
        .prefix("moshca-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let backend = match (&skipped, &postgres) {
        _ if opts.cli || opts.scale || opts.in_flight.is_some() => {
            "SQLite (--scale, --cli and --in-flight run on SQLite only)".to_owned()
        }
        (Some(why), _) => format!("SQLite only; PostgreSQL left out: {why}"),
        (None, Ok(bin)) if opts.backend.is_some_and(Backend::postgres) => format!(
            "{}; PostgreSQL server programs from {}",
            if opts.backend.is_some_and(Backend::sqlite) {
                "SQLite (parts 1-5), then PostgreSQL (part 6)"
            } else {
                "PostgreSQL only (part 6)"
            },
            bin.display()
        ),
        _ => "SQLite only (--backend sqlite)".to_owned(),
    };
    print_header(&opts, root.path(), &backend);
    let keys = Arc::new(Keys::generate(KEYS)?);
    if opts.cli {
        return cli_mode(&opts, &rt, root.path(), &keys);
    }
    if opts.scale {
        return scale_mode(&opts, &rt, root.path(), &keys);
    }
    if let Some(n) = opts.in_flight {
        return single_mode(&opts, &rt, root.path(), &keys, n);
    }
    default_mode(&opts, &rt, root.path(), &keys)
}

// ---------------------------------------------------------------------------------------
// Setup

struct Runtimes {
    srv: Runtime,
    cli: Runtime,
}

impl Runtimes {
    fn new() -> anyhow::Result<Self> {
        let runtime = |threads: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(threads)
                // Keep blocking-pool threads so their CPU time stays readable per thread.
                .thread_keep_alive(Duration::from_secs(3600))
                .enable_all()
                .build()
        };
        Ok(Runtimes {
            srv: runtime("moshca-srv")?,
            cli: runtime("bench-cli")?,
        })
    }
}

/// Subject keys as the wire carries them, with their fingerprints.
struct Keys {
    openssh: Vec<String>,
    fingerprints: Vec<String>,
}

impl Keys {
    fn generate(n: usize) -> anyhow::Result<Self> {
        let mut openssh = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);
        for _ in 0..n {
            let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)?;
            openssh.push(key.public_key().to_openssh()?);
            fingerprints.push(key.public_key().fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(Keys {
            openssh,
            fingerprints,
        })
    }
}

/// A data directory made by `init`, with the benchmark policy.
fn data_dir(root: &Path, name: &str) -> anyhow::Result<Config> {
    let data = root.join(name);
    init::init(&data, None, clock::now())?;
    std::fs::write(data.join("policy.toml"), POLICY)?;
    Ok(Config::load(&data)?)
}

/// Adds users (all in group `bench`) and returns their tokens, in order.
fn add_users(config: &Config, names: &[String]) -> anyhow::Result<Vec<String>> {
    let store = Store::open(&config.database)?;
    let groups = vec!["bench".to_owned()];
    names
        .iter()
        .map(|n| {
            Ok(users::add(&store, n, &groups, clock::now())?
                .expose()
                .to_owned())
        })
        .collect()
}

struct Server {
    url: String,
    pem: Vec<u8>,
    authority: Arc<Authority>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start(rt: &Runtimes, config: &Config) -> anyhow::Result<Self> {
        let loaded = server::open(config, None)?;
        let listener = rt
            .srv
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let authority = Arc::clone(&loaded.authority);
        let task = rt.srv.spawn(server::run(
            listener,
            loaded.authority,
            loaded.verifier,
            loaded.notifier,
            Some(loaded.tls),
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Server {
            url: format!("https://{addr}"),
            pem: std::fs::read(&config.tls_cert)?,
            authority,
            stop: Some(stop),
            task: Some(task),
        })
    }

    fn connect(&self, rt: &Runtimes) -> anyhow::Result<Channel> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.pem));
        let endpoint = Channel::from_shared(self.url.clone())?.tls_config(tls)?;
        Ok(rt.cli.block_on(endpoint.connect())?)
    }

    fn stop(mut self, rt: &Runtimes) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            rt.srv.block_on(t)??;
        }
        Ok(())
    }
}

fn bearer(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    Ok(format!("Bearer {token}").parse()?)
}

// ---------------------------------------------------------------------------------------
// Process and thread accounting

/// CPU time and memory read from /proc.
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// utime + stime of the whole process (10 ms resolution).
    process: Duration,
    /// Per-thread run time (ns resolution) summed by side.
    server: Duration,
    client: Duration,
    other: Duration,
    /// The PostgreSQL server's processes (postmaster and backends), when one runs.
    postgres: Duration,
}

/// The PostgreSQL postmaster of part 6, whose processes' CPU time `Cpu` reads.
static POSTMASTER: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

impl Cpu {
    fn now() -> Self {
        let mut cpu = Cpu {
            process: process_cpu().unwrap_or_default(),
            ..Cpu::default()
        };
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let p = task.path();
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                let ns = std::fs::read_to_string(p.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                let t = Duration::from_nanos(ns);
                match comm.trim() {
                    c if c.starts_with("moshca-srv") => cpu.server += t,
                    c if c.starts_with("bench-cli") => cpu.client += t,
                    _ => cpu.other += t,
                }
            }
        }
        if let Some(&pid) = POSTMASTER.get() {
            cpu.postgres = postgres_cpu(pid);
        }
        cpu
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(before.process),
            server: self.server.saturating_sub(before.server),
            client: self.client.saturating_sub(before.client),
            other: self.other.saturating_sub(before.other),
            postgres: self.postgres.saturating_sub(before.postgres),
        }
    }
}

/// utime + stime of the process from /proc/self/stat (USER_HZ is 100 on Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// utime + stime of the postmaster `pid` and of its children (the backends, the
/// checkpointer, the WAL writer...), those running and those it has reaped (its cutime +
/// cstime), so a connection closed inside the window still counts.
fn postgres_cpu(pid: i32) -> Duration {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let own: Option<i32> = stat[..stat.find(' ').unwrap_or(0)].parse().ok();
        // Fields 4 (ppid) and 14-17 (utime, stime, cutime, cstime) of stat(5); the text
        // after ')' starts at field 3.
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let parent: Option<i32> = f.get(1).and_then(|v| v.parse().ok());
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if own == Some(pid) {
            ticks += t(11) + t(12) + t(13) + t(14);
        } else if parent == Some(pid) {
            ticks += t(11) + t(12);
        }
    }
    Duration::from_millis(ticks * 10)
}

/// A `Name: value` line of /proc/self/status.
fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .map(|l| l[name.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn print_load_at_end() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "load average at the end (1/5/15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn print_header(opts: &Opts, root: &Path, backend: &str) {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    println!("moshca issuance benchmark");
    println!(
        "  machine   {} CPUs ({}), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'"),
        sh("uname -sr")
    );
    println!(
        "  source    {} (git describe --always --dirty, taken at run time)",
        sh(&format!(
            "git -C {} describe --always --dirty 2>/dev/null",
            env!("CARGO_MANIFEST_DIR")
        ))
    );
    println!("  load      {}", sh("uptime"));
    println!(
        "  store     SQLite WAL, synchronous=FULL, in {} ({})",
        root.display(),
        sh(&format!(
            "df -T {} | tail -1 | awk '{{print $2}}'",
            root.display()
        ))
    );
    println!(
        "  runs      warm-up {:?}, measured {:?}{}",
        opts.warmup(),
        opts.measure(),
        if opts.quick { " (--quick)" } else { "" }
    );
    println!(
        "  runtimes  server and load generator in one process, 2 tokio workers each; logs at info into a sink"
    );
    println!("  backend   {backend}");
    println!();
}

// ---------------------------------------------------------------------------------------
// Load

/// One measured window of issuance.
struct Outcome {
    in_flight: usize,
    conns: usize,
    window: Duration,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    cpu: Cpu,
    threads: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    fn per_cert(&self, d: Duration) -> String {
        if self.latencies.is_empty() {
            return "-".into();
        }
        format!("{:.0}", d.as_secs_f64() * 1e6 / self.latencies.len() as f64)
    }

    fn errors(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

const ROW_HEAD: &str = "in flight  conns   certs/s   p50 ms   p95 ms   p99 ms   CPU us/cert: all  server  client   threads  errors";

fn print_row(o: &Outcome) {
    println!(
        "{:>9}  {:>5}  {:>8.0}  {:>7}  {:>7}  {:>7}  {:>16}  {:>6}  {:>6}  {:>8}  {}",
        o.in_flight,
        o.conns,
        o.rate(),
        ms(o.pct(0.50)),
        ms(o.pct(0.95)),
        ms(o.pct(0.99)),
        o.per_cert(o.cpu.process),
        o.per_cert(o.cpu.server),
        o.per_cert(o.cpu.client),
        o.threads,
        o.errors()
    );
}

/// Keeps `in_flight` CreateAccessRequest calls outstanding on an auto-approved role for
/// warm-up + the measured window; counts the calls that complete inside the window.
fn issue(
    rt: &Runtimes,
    channels: &[Channel],
    auth: &MetadataValue<Ascii>,
    keys: &Arc<Keys>,
    in_flight: usize,
    opts: &Opts,
) -> Outcome {
    drive(
        rt,
        channels,
        auth,
        keys,
        in_flight,
        opts,
        Call::Issue,
        Spread::PerTask,
    )
}

/// How load tasks use the channels they are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// Task `i` sends every call on channel `i % channels`.
    PerTask,
    /// Each task sends its calls on the channels in turn, so even one task in flight
    /// splits its calls evenly between servers.
    PerCall,
}

/// What each load task calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// CreateAccessRequest on the auto-approved role; success = a certificate came back.
    Issue,
    /// WhoAmI: bearer authentication and the gRPC/TLS path, no write.
    WhoAmI,
}

#[allow(clippy::too_many_arguments)]
fn drive(
    rt: &Runtimes,
    channels: &[Channel],
    auth: &MetadataValue<Ascii>,
    keys: &Arc<Keys>,
    in_flight: usize,
    opts: &Opts,
    call: Call,
    spread: Spread,
) -> Outcome {
    let (warmup, measure) = (opts.warmup(), opts.measure());
    let conns = channels.len();
    let (latencies, errors, cpu) = rt.cli.block_on(async {
        let start = Instant::now() + warmup;
        let end = start + measure;
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..in_flight {
            let mut clients: Vec<_> = match spread {
                Spread::PerTask => {
                    vec![CertificateAuthorityClient::new(channels[i % conns].clone())]
                }
                Spread::PerCall => channels
                    .iter()
                    .map(|c| CertificateAuthorityClient::new(c.clone()))
                    .collect(),
            };
            let (auth, keys, next) = (auth.clone(), keys.clone(), next.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut turn = i;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let at = turn % clients.len();
                    let client = &mut clients[at];
                    turn += 1;
                    let got = match call {
                        Call::Issue => {
                            let k = next.fetch_add(1, Ordering::Relaxed) % keys.openssh.len();
                            let mut req = tonic::Request::new(pb::CreateAccessRequestRequest {
                                role: "deploy".into(),
                                principals: vec!["deploy".into()],
                                ttl_secs: TTL_SECS,
                                reason: "bench issuance".into(),
                                public_key: keys.openssh[k].clone(),
                                break_glass: false,
                            });
                            req.metadata_mut().insert("authorization", auth.clone());
                            client
                                .create_access_request(req)
                                .await
                                .map(|r| r.get_ref().certificate.is_some())
                        }
                        Call::WhoAmI => {
                            let mut req = tonic::Request::new(pb::WhoAmIRequest {});
                            req.metadata_mut().insert("authorization", auth.clone());
                            client.who_am_i(req).await.map(|_| true)
                        }
                    };
                    let done = Instant::now();
                    if done < start || done > end {
                        continue;
                    }
                    match got {
                        Ok(true) => lat.push(done - sent),
                        Ok(false) => *errors.entry("no-certificate".into()).or_default() += 1,
                        Err(s) => *errors.entry(format!("{:?}", s.code())).or_default() += 1,
                    }
                }
                (lat, errors)
            });
        }
        tokio::time::sleep_until(start.into()).await;
        let before = Cpu::now();
        tokio::time::sleep_until(end.into()).await;
        let cpu = Cpu::now().since(&before);
        let mut latencies = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((l, e)) => {
                    latencies.extend(l);
                    for (k, v) in e {
                        *errors.entry(k).or_default() += v;
                    }
                }
                Err(e) => *errors.entry(format!("task:{e}")).or_default() += 1,
            }
        }
        (latencies, errors, cpu)
    });
    let mut latencies = latencies;
    latencies.sort_unstable();
    Outcome {
        in_flight,
        conns,
        window: measure,
        latencies,
        errors,
        cpu,
        threads: status_field("Threads:"),
    }
}

// ---------------------------------------------------------------------------------------
// Ceilings: the parts of issuance alone, in this process, while the server is idle

fn grant(serial: u64, now: u64) -> Grant {
    Grant {
        serial,
        key_id: format!(
            "moshca:req={}:user=bench:role=deploy:by=auto",
            ulid::Ulid::new()
        ),
        principals: vec!["deploy".into()],
        valid_after: now - 60,
        valid_before: now + TTL_SECS,
        force_command: None,
        source_address: None,
        extensions: vec!["permit-pty".into()],
    }
}

/// Runs one ceiling, prints its rate, wall time and process CPU per operation.
fn ceiling(name: &str, f: impl FnOnce() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let cpu0 = process_cpu().unwrap_or_default();
    let t = Instant::now();
    let rate = f()?;
    let ops = rate * t.elapsed().as_secs_f64();
    let cpu = process_cpu().unwrap_or_default().saturating_sub(cpu0);
    println!(
        "   {name:<52} {rate:>9.0}  {:>12.1}  {:>11.1}",
        1e6 / rate,
        cpu.as_secs_f64() * 1e6 / ops
    );
    Ok(rate)
}

/// `Signer::sign` plus the OpenSSH encoding issuance stores, on one thread.
fn sign_only(config: &Config, keys: &Keys, measure: Duration) -> anyhow::Result<f64> {
    let signer = Signer::load(&config.ca_key, None)?;
    let subjects = keys
        .openssh
        .iter()
        .take(256)
        .map(|k| PublicKey::from_openssh(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = rand::thread_rng();
    let now = clock::now();
    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed() < measure {
        let cert = signer.sign(&grant(rng.r#gen::<u64>() | 1, now), &subjects[n % 256])?;
        black_box(cert.to_openssh()?);
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// A real certificate line, so stored rows have their real size.
fn sample_certificate(config: &Config, keys: &Keys) -> anyhow::Result<String> {
    let signer = Signer::load(&config.ca_key, None)?;
    let subject = PublicKey::from_openssh(&keys.openssh[0])?;
    Ok(signer
        .sign(
            &grant(rand::thread_rng().r#gen::<u64>() | 1, clock::now()),
            &subject,
        )?
        .to_openssh()?)
}

fn request_row(id: &str, requester: &str, keys: &Keys, k: usize, now: u64) -> StoredRequest {
    StoredRequest {
        id: id.to_owned(),
        requester: requester.to_owned(),
        role: "deploy".into(),
        principals: vec!["deploy".into()],
        ttl_secs: TTL_SECS,
        reason: "bench issuance".into(),
        public_key: keys.openssh[k].clone(),
        fingerprint: keys.fingerprints[k].clone(),
        state: State::Pending,
        created_at: now,
        expires_at: now + 3600,
        decided_at: None,
        approvals_required: 0,
        reviews: Vec::new(),
        break_glass: false,
        break_glass_review: None,
        version: 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn cert_row(
    serial: u64,
    request: &StoredRequest,
    ca_fingerprint: &str,
    openssh: &str,
    issued_at: u64,
    valid_before: u64,
    revoked_at: Option<u64>,
) -> CertRecord {
    CertRecord {
        serial,
        request_id: request.id.clone(),
        key_id: format!(
            "moshca:req={}:user={}:role=deploy:by=auto",
            request.id, request.requester
        ),
        principals: request.principals.clone(),
        valid_after: issued_at.saturating_sub(60),
        valid_before,
        fingerprint: request.fingerprint.clone(),
        ca_fingerprint: ca_fingerprint.to_owned(),
        openssh: openssh.to_owned(),
        issued_at,
        requester: request.requester.clone(),
        role: request.role.clone(),
        revoked_at,
    }
}

/// The writes and reads of one auto-approved issuance, in one `Store::transact`: the
/// request (inserted pending, then marked issued), the certificate, two audit events and
/// the checks made on the way. `threads` writers share one `Store`.
fn store_only(
    db: impl Into<store::Database>,
    keys: &Arc<Keys>,
    cert_line: &Arc<String>,
    threads: usize,
    measure: Duration,
) -> anyhow::Result<f64> {
    let store = Store::open(db)?;
    per_second(threads, measure, keys.openssh.len(), |k| {
        store.transact(|tx| issuance_writes(tx, keys, k, cert_line))?;
        Ok(())
    })
}

/// Runs `op` on `threads` threads for `measure`, each walking the subject keys from its
/// own offset (`op` gets the key index); operations per second, all threads together.
fn per_second(
    threads: usize,
    measure: Duration,
    keys: usize,
    op: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let (op, done) = (&op, &done);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut k = th;
                    while t.elapsed() < measure {
                        op(k)?;
                        done.fetch_add(1, Ordering::Relaxed);
                        k = (k + threads) % keys;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

fn issuance_writes(
    tx: &store::Tx<'_>,
    keys: &Keys,
    k: usize,
    cert_line: &str,
) -> Result<(), store::Error> {
    // What an auto-approved issuance does under the write lock (the certificate is signed
    // before it): checks, the request row (already issued), the certificate row, and the
    // two chained audit events.
    let now = clock::now();
    let id = ulid::Ulid::new().to_string();
    let mut request = request_row(&id, "bench", keys, k, now);
    black_box(tx.is_ca_key(&request.fingerprint)?);
    black_box(tx.key_revoked(&request.fingerprint)?);
    tx.append_audit(&Event::new(
        now,
        "bench",
        "request.created",
        Some(&id),
        serde_json::json!({
            "role": request.role, "principals": request.principals,
            "ttl_secs": request.ttl_secs, "reason": request.reason,
            "fingerprint": request.fingerprint,
        }),
    ))?;
    let serial = rand::thread_rng().r#gen::<u64>() | 1;
    black_box(tx.serial_exists(serial)?);
    request.state = State::Issued;
    request.decided_at = Some(now);
    tx.insert_request(&request)?;
    let cert = cert_row(
        serial,
        &request,
        "SHA256:bench",
        cert_line,
        now,
        now + TTL_SECS,
        None,
    );
    tx.insert_certificate(&cert)?;
    tx.append_audit(&Event::new(
        now,
        "moshca-server",
        "certificate.issued",
        Some(&id),
        serde_json::json!({
            "serial": serial.to_string(), "key_id": cert.key_id,
            "principals": cert.principals, "valid_after": cert.valid_after,
            "valid_before": cert.valid_before, "fingerprint": cert.fingerprint,
            "ca_fingerprint": cert.ca_fingerprint, "extensions": ["permit-pty"],
            "force_command": null, "source_address": null,
        }),
    ))?;
    Ok(())
}

/// `Authority::create_request_at` called directly: the whole use case (policy, key
/// parsing, signing, the write transaction) without gRPC, TLS, bearer authentication or
/// `spawn_blocking`.
fn authority_only(
    authority: &Arc<Authority>,
    keys: &Arc<Keys>,
    threads: usize,
    measure: Duration,
) -> anyhow::Result<f64> {
    let caller = Caller {
        name: "bench".into(),
        groups: vec!["bench".into()],
        proof: moshca_server::auth::Proof::Account,
    };
    per_second(threads, measure, keys.openssh.len(), |k| {
        let new = NewRequest {
            role: "deploy".into(),
            principals: vec!["deploy".into()],
            ttl_secs: Some(TTL_SECS),
            reason: "bench issuance".into(),
            public_key: keys.openssh[k].clone(),
            break_glass: false,
        };
        black_box(authority.create_request_at(&caller, new, clock::now())?);
        Ok(())
    })
}

/// Bearer-token authentication as every RPC does it (hash + one read under the store lock).
fn auth_only(authority: &Authority, token: &str, measure: Duration) -> anyhow::Result<f64> {
    let token = Token::from_presented(token);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < measure {
        black_box(authority.authenticate_at(&token, "127.0.0.1", clock::now())?);
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// One 4 KiB write + fdatasync, as a WAL commit with synchronous=FULL ends, in the
/// directory holding the database.
fn fsync_latency(dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = std::fs::File::create(dir.join("fsync-probe"))?;
    let page = [7u8; 4096];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        f.seek(SeekFrom::Start((i as u64 % 64) * 4096))?;
        let t = Instant::now();
        f.write_all(&page)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    out.sort_unstable();
    Ok(out)
}

/// Round trip of an empty `spawn_blocking` from an async worker, one at a time.
fn spawn_blocking_round_trip(rt: &Runtimes, n: u32) -> Duration {
    rt.srv.block_on(async {
        tokio::spawn(async move {
            let t = Instant::now();
            for _ in 0..n {
                let _ = tokio::task::spawn_blocking(|| black_box(1)).await;
            }
            t.elapsed() / n
        })
        .await
        .unwrap_or_default()
    })
}

// ---------------------------------------------------------------------------------------
// Default mode: parts 1, 2, 3 and 5 (SQLite), then part 6 (PostgreSQL)

fn default_mode(opts: &Opts, rt: &Runtimes, root: &Path, keys: &Arc<Keys>) -> anyhow::Result<()> {
    let backend = opts.backend.unwrap_or(Backend::Sqlite);
    let mut table = Vec::new();
    if backend.sqlite() {
        table.push(sqlite_parts(opts, rt, root, keys)?);
    }
    if backend.postgres() {
        postgres_part(opts, rt, root, keys, &mut table)?;
    }
    print_load_at_end();
    Ok(())
}

/// Parts 1, 2, 3 and 5 on SQLite; the 1 and 64 in flight figures of part 1-2 for the
/// table of part 6.
fn sqlite_parts(
    opts: &Opts,
    rt: &Runtimes,
    root: &Path,
    keys: &Arc<Keys>,
) -> anyhow::Result<Summary> {
    let config = data_dir(root, "ca")?;
    let mut names = vec!["bench".to_owned()];
    names.extend((0..WATCHERS / PENDING_PER_USER).map(|i| format!("w{i:03}")));
    let tokens = add_users(&config, &names)?;
    let server = Server::start(rt, &config)?;
    let channel = server.connect(rt)?;
    let auth = bearer(&tokens[0])?;
    let measure = opts.measure();

    println!("1-2. CreateAccessRequest on an auto-approved role over TLS, one shared connection");
    println!(
        "     (CPU: all = process utime+stime, client's share included; server/client = per-thread run time)"
    );
    println!("{ROW_HEAD}");
    let mut outcomes = Vec::new();
    for in_flight in [1, 16, 64, 256] {
        let o = issue(
            rt,
            std::slice::from_ref(&channel),
            &auth,
            keys,
            in_flight,
            opts,
        );
        print_row(&o);
        outcomes.push(o);
    }
    let four: Vec<Channel> = (0..4)
        .map(|_| server.connect(rt))
        .collect::<anyhow::Result<_>>()?;
    let o = issue(rt, &four, &auth, keys, 256, opts);
    print_row(&o);
    outcomes.push(o);
    println!("     peak RSS (VmHWM) {}", status_field("VmHWM:"));
    println!(
        "     transport floor: WhoAmI (bearer lookup + spawn_blocking + TLS/HTTP2, no write), same connection"
    );
    for in_flight in [1, 64] {
        let o = drive(
            rt,
            std::slice::from_ref(&channel),
            &auth,
            keys,
            in_flight,
            opts,
            Call::WhoAmI,
            Spread::PerTask,
        );
        print_row(&o);
    }
    let best = outcomes.iter().map(Outcome::rate).fold(0.0, f64::max);
    let at64 = outcomes[2].rate();
    println!();

    println!("3. in-process ceilings (server idle; one thread unless said)");
    println!(
        "   {:<52} {:>9}  {:>12}  {:>11}",
        "", "ops/s", "wall us/op", "CPU us/op"
    );
    let sign = ceiling("sign only (Signer::sign + to_openssh)", || {
        sign_only(&config, keys, measure)
    })?;
    let cert_line = Arc::new(sample_certificate(&config, keys)?);
    let store1 = ceiling("store only (one issuance's rows per transaction)", || {
        store_only(root.join("store-only-1.db"), keys, &cert_line, 1, measure)
    })?;
    let store4 = ceiling("store only, 4 writer threads sharing one Store", || {
        store_only(root.join("store-only-4.db"), keys, &cert_line, 4, measure)
    })?;
    ceiling("bearer authentication (Authority::authenticate_at)", || {
        auth_only(&server.authority, &tokens[0], measure)
    })?;
    let direct1 = ceiling("Authority::create_request_at (no gRPC, TLS, auth)", || {
        authority_only(&server.authority, keys, 1, measure)
    })?;
    let direct4 = ceiling("Authority::create_request_at, 4 threads", || {
        authority_only(&server.authority, keys, 4, measure)
    })?;
    let rtt = spawn_blocking_round_trip(rt, 20_000);
    println!(
        "   {:<52} {:>9}  {:>12.1}",
        "spawn_blocking round trip (empty closure)",
        "",
        rtt.as_secs_f64() * 1e6
    );
    let fsyncs = fsync_latency(root, if opts.quick { 50 } else { 300 })?;
    println!(
        "   4 KiB overwrite + fdatasync in the data dir: p50 {} ms, p99 {} ms (one commit at a time => <= {:.0}/s)",
        ms(percentile(&fsyncs, 0.5)),
        ms(percentile(&fsyncs, 0.99)),
        1.0 / percentile(&fsyncs, 0.5).as_secs_f64()
    );
    println!(
        "   end-to-end peak {best:.0}/s = {:.1}% of sign-only, {:.0}% of store-only, {:.0}% of Authority-direct (each the best of 1/4 threads)",
        100.0 * best / sign,
        100.0 * best / store1.max(store4),
        100.0 * best / direct1.max(direct4)
    );
    println!();

    println!(
        "5. {WATCHERS} WatchAccessRequest streams open on pending requests of a manual role, over {WATCH_CONNECTIONS} more connections"
    );
    let watch = Watchers::open(rt, &server, &tokens[1..])?;
    println!(
        "   opened in {:.2} s ({} of {WATCHERS} streams delivered their first message)",
        watch.opened_in.as_secs_f64(),
        watch.live.load(Ordering::Relaxed)
    );
    let before = watch.messages.load(Ordering::Relaxed);
    println!("{ROW_HEAD}");
    let o = issue(rt, std::slice::from_ref(&channel), &auth, keys, 64, opts);
    print_row(&o);
    let during = watch.messages.load(Ordering::Relaxed) - before;
    println!(
        "   with watchers: {:.0}% of the 64-in-flight rate without them; {during} watch messages sent during the run; peak RSS {}",
        100.0 * o.rate() / at64,
        status_field("VmHWM:")
    );
    watch.close(rt);
    drop(four);
    drop(channel);
    server.stop(rt)?;
    Ok(Summary::new("SQLite", &outcomes[0], &outcomes[2]))
}

/// One issuance run at `in_flight`, e.g. under `perf record`.
fn single_mode(
    opts: &Opts,
    rt: &Runtimes,
    root: &Path,
    keys: &Arc<Keys>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let config = data_dir(root, "ca")?;
    let tokens = add_users(&config, &["bench".to_owned()])?;
    let server = Server::start(rt, &config)?;
    let channel = server.connect(rt)?;
    println!("{ROW_HEAD}");
    let o = issue(
        rt,
        std::slice::from_ref(&channel),
        &bearer(&tokens[0])?,
        keys,
        in_flight,
        opts,
    );
    print_row(&o);
    drop(channel);
    server.stop(rt)?;
    print_load_at_end();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part 6: PostgreSQL, one replica and two, and the table of all backends

/// One backend's line of the part 6 table: issuance at 1 and at 64 in flight.
struct Summary {
    name: String,
    at: [(f64, Duration, Duration); 2],
    errors: String,
}

impl Summary {
    fn new(name: &str, one: &Outcome, at64: &Outcome) -> Self {
        let cell = |o: &Outcome| (o.rate(), o.pct(0.50), o.pct(0.99));
        let errors = match (one.errors(), at64.errors()) {
            (a, b) if a == "0" && b == "0" => "0".to_owned(),
            (a, b) => format!("1: {a}; 64: {b}"),
        };
        Summary {
            name: name.to_owned(),
            at: [cell(one), cell(at64)],
            errors,
        }
    }
}

/// A data directory on the PostgreSQL database `url`, made by `init` as
/// `moshca-server init --database URL [--ca-key FILE]` makes it, with the benchmark policy.
fn pg_data_dir(
    root: &Path,
    name: &str,
    url: &str,
    ca_key: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let data = root.join(name);
    let options = init::Options {
        database: Some(url.to_owned()),
        ca_key,
        ..init::Options::default()
    };
    init::init_with(&data, &options, clock::now())?;
    std::fs::write(data.join("policy.toml"), POLICY)?;
    Ok(Config::load(&data)?)
}

/// Prints an issuance row of part 6 and the PostgreSQL server's CPU under it.
fn print_pg_row(o: &Outcome) {
    print_row(o);
    println!(
        "   ^ PostgreSQL server processes: {} us/cert CPU",
        o.per_cert(o.cpu.postgres)
    );
}

/// Part 6: a PostgreSQL cluster in a temp dir; issuance with one replica and with two at
/// 1 and 64 in flight; the store-only ceiling; then the table of every backend measured.
fn postgres_part(
    opts: &Opts,
    rt: &Runtimes,
    root: &Path,
    keys: &Arc<Keys>,
    table: &mut Vec<Summary>,
) -> anyhow::Result<()> {
    if !table.is_empty() {
        println!();
    }
    println!("6. PostgreSQL: CreateAccessRequest on an auto-approved role over TLS");
    let t = Instant::now();
    // The postgres driver runs its own runtime: every store call here (init, users,
    // server::open, the store-only threads) is on a plain thread, never a tokio worker.
    let cluster = moshca_test_postgres::Cluster::start();
    let started = t.elapsed();
    let setting = |name: &str| cluster.psql("postgres", &format!("SHOW {name}"));
    let dir = cluster.data_dir();
    let fs_type = Command::new("df")
        .arg("--output=fstype")
        .arg(&dir)
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.lines().last().unwrap_or("?").trim().to_owned()
        })
        .unwrap_or_else(|_| "?".into());
    println!(
        "   PostgreSQL {} (initdb + pg_ctl start in {:.2} s), data in {} ({fs_type}): fsync={}, \
         synchronous_commit={}, wal_sync_method={}, shared_buffers={}",
        setting("server_version"),
        started.as_secs_f64(),
        dir.display(),
        setting("fsync"),
        setting("synchronous_commit"),
        setting("wal_sync_method"),
        setting("shared_buffers"),
    );
    println!(
        "   the server is local (TCP 127.0.0.1, password auth, no TLS) on the same 2 cores; \
         each moshca server has its own Store (its own connections) on the database"
    );
    let _ = POSTMASTER.set(cluster.postmaster_pid());

    // One replica.
    let config = pg_data_dir(root, "pg-one", &cluster.fresh_database(), None)?;
    let tokens = add_users(&config, &["bench".to_owned()])?;
    let auth = bearer(&tokens[0])?;
    println!("   one replica, one connection");
    println!("{ROW_HEAD}");
    let server = Server::start(rt, &config)?;
    let channel = server.connect(rt)?;
    let mut runs = Vec::new();
    for in_flight in [1, 64] {
        let o = issue(
            rt,
            std::slice::from_ref(&channel),
            &auth,
            keys,
            in_flight,
            opts,
        );
        print_pg_row(&o);
        runs.push(o);
    }
    table.push(Summary::new("PostgreSQL, 1 replica", &runs[0], &runs[1]));
    drop(channel);
    server.stop(rt)?;

    // Two replicas: the second joins with the first one's CA key, as an operator would.
    let url = cluster.fresh_database();
    let a = pg_data_dir(root, "pg-a", &url, None)?;
    let b = pg_data_dir(root, "pg-b", &url, Some(root.join("pg-a").join("ca_key")))?;
    let tokens = add_users(&a, &["bench".to_owned()])?;
    let auth = bearer(&tokens[0])?;
    println!(
        "   two replicas (two servers in this process, one connection each, calls alternating between them)"
    );
    println!("{ROW_HEAD}");
    let servers = [Server::start(rt, &a)?, Server::start(rt, &b)?];
    let channels: Vec<Channel> = servers
        .iter()
        .map(|s| s.connect(rt))
        .collect::<anyhow::Result<_>>()?;
    let mut runs = Vec::new();
    for in_flight in [1, 64] {
        let o = drive(
            rt,
            &channels,
            &auth,
            keys,
            in_flight,
            opts,
            Call::Issue,
            Spread::PerCall,
        );
        print_pg_row(&o);
        runs.push(o);
    }
    table.push(Summary::new("PostgreSQL, 2 replicas", &runs[0], &runs[1]));
    drop(channels);
    for server in servers {
        server.stop(rt)?;
    }

    println!("   in-process ceiling (no server running)");
    println!(
        "   {:<52} {:>9}  {:>12}  {:>11}",
        "", "ops/s", "wall us/op", "CPU us/op"
    );
    let cert_line = Arc::new(sample_certificate(&a, keys)?);
    let measure = opts.measure();
    for threads in [1, 4] {
        let db = store::Database::Postgres(
            store::PgUrl::parse(&cluster.fresh_database()).map_err(anyhow::Error::msg)?,
        );
        let name = if threads == 1 {
            "store only (one issuance's rows per transaction)".to_owned()
        } else {
            format!("store only, {threads} writer threads sharing one Store")
        };
        // Migrated before the clock starts, so the figures are the transactions' alone.
        drop(Store::open(&db)?);
        let (pg_before, t) = (Cpu::now().postgres, Instant::now());
        let rate = ceiling(&name, || store_only(db, keys, &cert_line, threads, measure))?;
        let ops = rate * t.elapsed().as_secs_f64();
        println!(
            "   ^ PostgreSQL server processes: {:.0} us/op CPU",
            Cpu::now().postgres.saturating_sub(pg_before).as_secs_f64() * 1e6 / ops
        );
    }
    println!("   (CPU us/op: this process only; the PostgreSQL server's share is on the ^ lines)");
    println!();

    println!(
        "issuance, CreateAccessRequest over TLS on an auto-approved role ({} s measured per cell)",
        measure.as_secs()
    );
    println!(
        "{:<24}  {:^26}  {:^26}  errors",
        "", "1 in flight", "64 in flight"
    );
    println!(
        "{:<24}  {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}",
        "backend", "certs/s", "p50 ms", "p99 ms", "certs/s", "p50 ms", "p99 ms"
    );
    for row in table.iter() {
        let [one, many] = &row.at;
        println!(
            "{:<24}  {:>8.0} {:>8} {:>8}  {:>8.0} {:>8} {:>8}  {}",
            row.name,
            one.0,
            ms(one.1),
            ms(one.2),
            many.0,
            ms(many.1),
            ms(many.2),
            row.errors
        );
    }
    drop(cluster);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part 5: watch streams

struct Watchers {
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    messages: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
    _channels: Vec<Channel>,
    opened_in: Duration,
}

impl Watchers {
    /// Makes `PENDING_PER_USER` pending requests per token on the manual role and opens
    /// one watch stream per request; each stream is then read until closed.
    fn open(rt: &Runtimes, server: &Server, tokens: &[String]) -> anyhow::Result<Self> {
        let channels: Vec<Channel> = (0..WATCH_CONNECTIONS)
            .map(|_| server.connect(rt))
            .collect::<anyhow::Result<_>>()?;
        let auths: Vec<MetadataValue<Ascii>> = tokens
            .iter()
            .map(|t| bearer(t))
            .collect::<anyhow::Result<_>>()?;
        let ids = rt.cli.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (u, auth) in auths.iter().enumerate() {
                let mut client =
                    CertificateAuthorityClient::new(channels[u % WATCH_CONNECTIONS].clone());
                let auth = auth.clone();
                set.spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..PENDING_PER_USER {
                        let key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)?;
                        let mut req = tonic::Request::new(pb::CreateAccessRequestRequest {
                            role: "db".into(),
                            principals: vec!["postgres".into()],
                            ttl_secs: 600,
                            reason: "bench watch stream".into(),
                            public_key: key.public_key().to_openssh()?,
                            break_glass: false,
                        });
                        req.metadata_mut().insert("authorization", auth.clone());
                        let id = client.create_access_request(req).await?.into_inner().id;
                        ids.push((u, id));
                    }
                    Ok::<_, anyhow::Error>(ids)
                });
            }
            let mut ids = Vec::new();
            while let Some(r) = set.join_next().await {
                ids.extend(r??);
            }
            Ok::<_, anyhow::Error>(ids)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (u, id)) in ids.into_iter().enumerate() {
            let mut client =
                CertificateAuthorityClient::new(channels[i % WATCH_CONNECTIONS].clone());
            let (auth, stop, live, messages) = (
                auths[u].clone(),
                stop.clone(),
                live.clone(),
                messages.clone(),
            );
            tasks.spawn_on(
                async move {
                    let mut req = tonic::Request::new(pb::WatchAccessRequestRequest {
                        id,
                        include_certificate: false,
                    });
                    req.metadata_mut().insert("authorization", auth);
                    let Ok(resp) = client.watch_access_request(req).await else {
                        return;
                    };
                    let mut stream = resp.into_inner();
                    let mut first = true;
                    while let Ok(Some(_)) = stream.message().await {
                        if first {
                            live.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        } else {
                            messages.fetch_add(1, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                },
                rt.cli.handle(),
            );
        }
        // Wait until every stream has delivered its first message (or 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        while live.load(Ordering::Relaxed) < WATCHERS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Watchers {
            stop,
            live,
            messages,
            tasks,
            _channels: channels,
            opened_in: t.elapsed(),
        })
    }

    fn close(mut self, rt: &Runtimes) {
        self.stop.store(true, Ordering::Relaxed);
        let _guard = rt.cli.enter();
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------
// Part 4: a store with 1,000,000 certificates

fn db_size(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Fills the store with `total` issued requests and their certificates, `revoked` of
/// them revoked and still valid (so in the KRL), the rest expired; `batch` rows per
/// transaction.
fn prefill(
    db: &Path,
    keys: &Arc<Keys>,
    cert_line: &Arc<String>,
    ca_fingerprint: &str,
    total: usize,
    revoked: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let store = Store::open(db)?;
    let now = clock::now();
    let ca = Arc::new(ca_fingerprint.to_owned());
    let mut first = 0;
    while first < total {
        let last = (first + batch).min(total);
        let (keys, cert_line, ca) = (keys.clone(), cert_line.clone(), ca.clone());
        store.transact(move |tx| {
            let mut rng = rand::thread_rng();
            for i in first..last {
                let k = i % keys.openssh.len();
                let id = ulid::Ulid::new().to_string();
                let requester = format!("u{:04}", i % 1000);
                let is_revoked = i < revoked;
                // Revoked ones are still valid (the KRL must list them); the rest expired.
                let issued = if is_revoked {
                    now - 600
                } else {
                    now - 86_400 - (i as u64 % 86_400)
                };
                let mut r = request_row(&id, &requester, &keys, k, issued);
                r.state = State::Issued;
                r.decided_at = Some(issued);
                tx.insert_request(&r)?;
                let valid_before = if is_revoked {
                    now + 30 * 86_400
                } else {
                    issued + TTL_SECS
                };
                let serial = rng.r#gen::<u64>() | 1;
                tx.insert_certificate(&cert_row(
                    serial,
                    &r,
                    &ca,
                    &cert_line,
                    issued,
                    valid_before,
                    is_revoked.then_some(now - 60),
                ))?;
            }
            Ok::<_, store::Error>(())
        })?;
        first = last;
    }
    Ok(())
}

fn scale_mode(opts: &Opts, rt: &Runtimes, root: &Path, keys: &Arc<Keys>) -> anyhow::Result<()> {
    let (total, revoked) = if opts.quick {
        (100_000, 10_000)
    } else {
        (1_000_000, 100_000)
    };
    let batch = 50_000;
    let config = data_dir(root, "ca")?;
    let tokens = add_users(&config, &["bench".to_owned()])?;
    let auth = bearer(&tokens[0])?;
    let ca_fingerprint = Signer::load(&config.ca_key, None)?.fingerprint();
    let cert_line = Arc::new(sample_certificate(&config, keys)?);

    println!(
        "4. issuance and KRL with {total} certificates ({revoked} revoked and unexpired) in the store"
    );
    println!("{ROW_HEAD}");
    let server = Server::start(rt, &config)?;
    let channel = server.connect(rt)?;
    let fresh = issue(rt, std::slice::from_ref(&channel), &auth, keys, 64, opts);
    print_row(&fresh);
    println!(
        "   ^ fresh store ({})",
        mib(db_size(&sqlite_file(&config)?))
    );
    drop(channel);
    server.stop(rt)?;

    let t = Instant::now();
    prefill(
        &sqlite_file(&config)?,
        keys,
        &cert_line,
        &ca_fingerprint,
        total,
        revoked,
        batch,
    )?;
    let took = t.elapsed();
    println!(
        "   prefill: {total} requests + certificates in {:.1} s ({:.0} rows/s, {batch} per transaction); store now {}",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        mib(db_size(&sqlite_file(&config)?))
    );

    let server = Server::start(rt, &config)?;
    let channel = server.connect(rt)?;
    let full = issue(rt, std::slice::from_ref(&channel), &auth, keys, 64, opts);
    print_row(&full);
    println!(
        "   ^ prefilled store: {:.0}% of the fresh-store rate",
        100.0 * full.rate() / fresh.rate()
    );

    let ca_keys = server.authority.ca_public_keys_at(clock::now())?;
    let reader = Store::open(&config.database)?;
    for round in 0..3 {
        let t = Instant::now();
        let (krl, version) = authority::krl_from_store(&reader, &ca_keys, clock::now())?;
        println!(
            "   krl_from_store round {round}: {} bytes (version {version}) in {} ms",
            krl.len(),
            ms(t.elapsed())
        );
    }
    let t = Instant::now();
    let rows = reader.read(|tx| tx.revoked_live_certificates(clock::now()))?;
    println!(
        "   of which the SQL read (Tx::revoked_live_certificates): {} rows in {} ms",
        rows.len(),
        ms(t.elapsed())
    );
    drop(reader);
    // What an approver and a user see first: a page of requests, pending or all.
    let caller = Caller {
        name: "bench".into(),
        groups: vec!["bench".into()],
        proof: moshca_server::auth::Proof::Account,
    };
    for (what, pending_only) in [("all", false), ("pending only", true)] {
        let t = Instant::now();
        let page = server
            .authority
            .list_requests(&caller, pending_only, false, false, 50)?;
        println!(
            "   list_requests ({what}, newest 50): {} rows in {} ms",
            page.len(),
            ms(t.elapsed())
        );
    }
    let mut client = CertificateAuthorityClient::new(channel.clone());
    for round in 0..3 {
        let t = Instant::now();
        let got = rt.cli.block_on(client.get_krl(pb::GetKrlRequest {}))?;
        println!(
            "   GetKrl RPC round {round}: {} bytes in {} ms",
            got.get_ref().krl.len(),
            ms(t.elapsed())
        );
    }

    // A host fleet polling the KRL while issuance runs: one GetKrl after another.
    let stop = Arc::new(AtomicBool::new(false));
    let fetched = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, fetched, mut client) = (stop.clone(), fetched.clone(), client.clone());
        rt.cli.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if client.get_krl(pb::GetKrlRequest {}).await.is_ok() {
                    fetched.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let polled = issue(rt, std::slice::from_ref(&channel), &auth, keys, 64, opts);
    stop.store(true, Ordering::Relaxed);
    let _ = rt.cli.block_on(poller);
    print_row(&polled);
    println!(
        "   ^ prefilled store while one client fetches the KRL back to back ({} fetches, {:.1}/s)",
        fetched.load(Ordering::Relaxed),
        fetched.load(Ordering::Relaxed) as f64 / (opts.warmup() + opts.measure()).as_secs_f64()
    );
    println!(
        "   store on disk after the runs: {} (database + WAL + shm); peak RSS {}",
        mib(db_size(&sqlite_file(&config)?)),
        status_field("VmHWM:")
    );
    drop(channel);
    server.stop(rt)?;
    print_load_at_end();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// --cli: the client binary as a whole process

fn moshca_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOSHCA_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/release/deps/issuance-HASH -> target/release/moshca
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("moshca"))
        .context("locating target/release")?;
    anyhow::ensure!(
        bin.exists(),
        "{} not found; run `cargo build --release --bins` first (or set MOSHCA_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// The OIDC issuer whose tokens the `--cli` mode's CI jobs present.
const CI_ISSUER: &str = "https://ci.bench.invalid";

/// The role those jobs get: auto-approved, bound to one repository and branch.
const CI_ROLE: &str = r#"
[[role]]
name = "ci-deploy"
approval = "auto"
workloads = [{ issuer = "https://ci.bench.invalid", claims = { repository = "acme/app", ref = "refs/heads/main" } }]
logins = ["deploy"]
max_ttl = "10m"
"#;

/// An identity provider for the CI runs: an Ed25519 key whose JWKS the CA reads from a
/// file, minting one fresh token (its own `jti`) per job.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl Idp {
    fn new() -> Self {
        use base64::Engine as _;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed prefix, then the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(key.as_bytes());
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        Idp {
            key: jsonwebtoken::EncodingKey::from_ed_der(&der),
            jwks: serde_json::json!({ "keys": [{
                "kty": "OKP", "crv": "Ed25519", "x": x,
                "alg": "EdDSA", "kid": "bench", "use": "sig",
            }]})
            .to_string(),
        }
    }

    /// A GitHub-Actions-shaped token for acme/app on main, valid 5 minutes.
    fn token(&self, run: usize) -> anyhow::Result<String> {
        let now = clock::now();
        let claims = serde_json::json!({
            "iss": CI_ISSUER, "aud": "moshca",
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app", "ref": "refs/heads/main",
            "run_id": run.to_string(),
            "iat": now, "nbf": now, "exp": now + 300,
            "jti": format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("bench".into());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// A real `ssh-agent` on a socket in `dir`, killed on drop.
struct SshAgent {
    child: std::process::Child,
    socket: PathBuf,
}

impl SshAgent {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting ssh-agent (install openssh-client)")?;
        let agent = SshAgent { child, socket };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.socket.exists() {
            anyhow::ensure!(Instant::now() < deadline, "ssh-agent made no socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(agent)
    }

    /// How many certificates the agent holds (`ssh-add -l`).
    fn certificates(&self) -> anyhow::Result<usize> {
        let out = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("CERT"))
            .count())
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client command as a whole process, timed from spawn to exit.
struct Step {
    name: &'static str,
    times: Vec<Duration>,
}

fn cli_mode(opts: &Opts, rt: &Runtimes, root: &Path, keys: &Arc<Keys>) -> anyhow::Result<()> {
    let bin = moshca_binary()?;
    let config = data_dir(root, "ca")?;
    let tokens = add_users(&config, &["bench".to_owned()])?;
    // A CI issuer (JWKS from a file) and a role for its jobs.
    let idp = Idp::new();
    let data = root.join("ca");
    let jwks = data.join("jwks.json");
    std::fs::write(&jwks, &idp.jwks)?;
    let append = |file: &str, text: &str| -> anyhow::Result<()> {
        let path = data.join(file);
        let mut all = std::fs::read_to_string(&path)?;
        all.push_str(text);
        Ok(std::fs::write(&path, all)?)
    };
    append(
        "config.toml",
        &format!(
            "\n[[oidc.issuer]]\nissuer = \"{CI_ISSUER}\"\naudience = \"moshca\"\njwks_file = \"{}\"\n",
            jwks.display()
        ),
    )?;
    append("policy.toml", CI_ROLE)?;
    let config = Config::load(&data)?;
    let server = Server::start(rt, &config)?;
    let home = root.join("home");
    std::fs::create_dir_all(&home)?;
    let agent = match SshAgent::start(root) {
        Ok(a) => Some(a),
        Err(e) => {
            println!("   (no ssh-agent: {e:#}; the agent rows are skipped)");
            None
        }
    };
    let key_file = root.join("id.pub");
    std::fs::write(&key_file, format!("{}\n", keys.openssh[0]))?;
    let cert_file = root.join("id-cert.pub");
    let ci_out = root.join("ci-out");
    let runs = if opts.quick { 10 } else { 50 };
    let moshca = |args: &[&str], env: &[(&str, &std::ffi::OsStr)]| -> anyhow::Result<String> {
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MOSHCA_SERVER", &server.url)
            .env("MOSHCA_CA_CERT", &config.tls_cert);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "moshca {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let token = std::ffi::OsString::from(&tokens[0]);
    let user = [("MOSHCA_TOKEN", token.as_os_str())];
    let key = key_file.display().to_string();
    let out = cert_file.display().to_string();
    let mut steps: Vec<Step> = [
        "moshca request --public-key",
        "moshca fetch ID --out",
        "request + fetch",
        "moshca ci --out DIR",
        "moshca ci (ssh-agent)",
        "moshca login (ssh-agent)",
    ]
    .into_iter()
    .map(|name| Step {
        name,
        times: Vec::new(),
    })
    .collect();
    for run in 0..runs {
        let t0 = Instant::now();
        let id = moshca(
            &[
                "request",
                "--role",
                "deploy",
                "--principal",
                "deploy",
                "--ttl",
                "5m",
                "--reason",
                "bench cli",
                "--public-key",
                &key,
            ],
            &user,
        )?;
        let t1 = Instant::now();
        moshca(&["fetch", &id, "--out", &out], &user)?;
        let t2 = Instant::now();
        steps[0].times.push(t1 - t0);
        steps[1].times.push(t2 - t1);
        steps[2].times.push(t2 - t0);

        // A CI job: token in the environment, key and certificate written to --out.
        let _ = std::fs::remove_dir_all(&ci_out);
        let id_token = std::ffi::OsString::from(idp.token(run)?);
        let ci = [("MOSHCA_ID_TOKEN", id_token.as_os_str())];
        let t = Instant::now();
        let dir = ci_out.display().to_string();
        moshca(
            &["ci", "--role", "ci-deploy", "--ttl", "5m", "--out", &dir],
            &ci,
        )?;
        steps[3].times.push(t.elapsed());
        anyhow::ensure!(
            ci_out.join("id_ed25519-cert.pub").exists(),
            "moshca ci wrote no certificate"
        );

        if let Some(agent) = &agent {
            let sock = agent.socket.as_os_str();
            let id_token = std::ffi::OsString::from(idp.token(run)?);
            let t = Instant::now();
            moshca(
                &["ci", "--role", "ci-deploy", "--ttl", "5m"],
                &[
                    ("MOSHCA_ID_TOKEN", id_token.as_os_str()),
                    ("SSH_AUTH_SOCK", sock),
                ],
            )?;
            steps[4].times.push(t.elapsed());
            let t = Instant::now();
            moshca(
                &[
                    "login",
                    "--role",
                    "deploy",
                    "--ttl",
                    "5m",
                    "--reason",
                    "bench login",
                ],
                &[user[0], ("SSH_AUTH_SOCK", sock)],
            )?;
            steps[5].times.push(t.elapsed());
        }
    }
    let in_agent = agent.as_ref().map(SshAgent::certificates).transpose()?;
    println!("--cli: the client binary as whole processes, {runs} runs of each, one after another");
    println!("   binary {}", bin.display());
    println!("   step                           p50 ms   p99 ms   max ms");
    for step in &mut steps {
        if step.times.is_empty() {
            continue;
        }
        step.times.sort_unstable();
        println!(
            "   {:<30} {:>8} {:>8} {:>8}",
            step.name,
            ms(percentile(&step.times, 0.5)),
            ms(percentile(&step.times, 0.99)),
            ms(percentile(&step.times, 1.0))
        );
    }
    if let Some(n) = in_agent {
        println!(
            "   certificates in the agent at the end: {n} (expected {})",
            2 * runs
        );
    }
    drop(agent);
    server.stop(rt)?;
    print_load_at_end();
    Ok(())
}

/// The SQLite file of `config`: the scale run measures its size on disk.
fn sqlite_file(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    config
        .database
        .sqlite_path()
        .map(ToOwned::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the scale run is for SQLite stores"))
}
