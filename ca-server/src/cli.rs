//! Command-line arguments of `moshca-server` (clap declarations only; doc comments are the
//! help text).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// moshca-server: a short-lived SSH certificate authority.
#[derive(Debug, Parser)]
#[command(name = "moshca-server", version, about, propagate_version = true)]
pub struct Cli {
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object
    /// per line, for journald and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MOSHCA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Where the server keeps its state.
#[derive(Debug, Args, Clone)]
pub struct DataDir {
    /// Data directory (config.toml, policy.toml, CA key, TLS files, database).
    #[arg(long, env = "MOSHCA_DATA_DIR", default_value = "/var/lib/moshca")]
    pub data_dir: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: CA key, TLS certificate, database, config and an example policy.
    Init {
        #[command(flatten)]
        dir: DataDir,
        /// Encrypt the CA key with the passphrase in this file.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// A DNS name clients reach the CA by (repeatable), e.g. ca.example.com; the TLS
        /// certificate init makes is valid for it, beside localhost and this host's name.
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// An IP address clients reach the CA by (repeatable).
        #[arg(long = "tls-ip", value_name = "IP")]
        tls_ips: Vec<std::net::IpAddr>,
        /// Keep the rows in this PostgreSQL database
        /// (postgres://USER:PASSWORD@HOST:PORT[,HOST2:PORT2]/DB?target_session_attrs=read-write)
        /// instead of a SQLite file in the data directory. The first replica creates the
        /// schema; the next ones join it with --ca-key.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Use this CA key instead of making one: to add a replica, the first replica's
        /// ca_key (a different key than the database serves is refused).
        #[arg(long, value_name = "FILE")]
        ca_key: Option<PathBuf>,
        /// With --ca-key: the host CA key to use (default: host_ca_key beside --ca-key).
        #[arg(long, value_name = "FILE", requires = "ca_key")]
        host_ca_key: Option<PathBuf>,
    },
    /// Serve the gRPC API over TLS. SIGHUP reloads the policy; SIGTERM stops gracefully.
    Serve {
        #[command(flatten)]
        dir: DataDir,
        /// Listen address, overriding config.toml (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// File holding the CA key passphrase, overriding config.toml.
        #[arg(long, env = "MOSHCA_CA_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Manage users and their bearer tokens (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// CA keys.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Host certificates: join tokens, issued certificates, revocation.
    #[command(subcommand)]
    Host(HostCommand),
    /// CA sessions from SSO sign-ins: list and revoke (works while the server runs).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Write the key revocation list (for sshd's RevokedKeys) to a file, atomically.
    Krl {
        #[command(flatten)]
        dir: DataDir,
        /// Output file; replaced only once the new KRL is written and checked.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `moshca-server user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and print their first token (shown once).
    Add {
        /// User name.
        name: String,
        /// Group memberships (repeatable).
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
        /// How long the token works (1m to 730d).
        #[arg(long, default_value = "90d")]
        expires: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Print an additional token for an existing user (shown once). Their other tokens
    /// keep working until they expire or `user revoke-token` stops them.
    Token {
        /// User name.
        name: String,
        /// How long the token works (1m to 730d).
        #[arg(long, default_value = "90d")]
        expires: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List a user's tokens: id, created, expires, last used, state (never the tokens).
    Tokens {
        /// User name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token by its id (`tok_...`): it stops working at once.
    RevokeToken {
        /// Token id, as `user tokens` lists it.
        id: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Disable a user: their tokens stop working at once.
    Disable {
        /// User name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Re-enable a disabled user.
    Enable {
        /// User name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List users.
    List {
        #[command(flatten)]
        dir: DataDir,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Let a token user also sign in through SSO (`moshca auth login`) under the same name.
    LinkSso {
        /// User name.
        name: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `moshca-server session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List live sessions: id, user, groups, issuer, created, expires (never credentials).
    List {
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// Ended and expired sessions too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        dir: DataDir,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// End a session by its id (`ses_...`), or every session of a user: they stop working
    /// at once.
    Revoke {
        /// Session id, as `session list` shows it.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<String>,
        /// Every session of this user.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `moshca-server ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA public keys hosts should trust (TrustedUserCAKeys), active key first.
    PublicKeys {
        #[command(flatten)]
        dir: DataDir,
        /// Print the host CA public keys instead, as `@cert-authority * KEY` lines for
        /// clients' known_hosts.
        #[arg(long)]
        host: bool,
    },
    /// Make a new CA key. It is published at once; the server signs with it after a reload
    /// (SIGHUP). The old key stays trusted until its last certificate expires.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
        /// File holding the CA key passphrase, overriding config.toml.
        #[arg(long, env = "MOSHCA_CA_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
        /// Rotate the host CA key (host certificates) instead of the user CA key. Clients
        /// trust both keys (`moshca known-hosts`) until the old key's certificates expire.
        #[arg(long)]
        host: bool,
    },
}

/// `moshca-server host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Join tokens: a host trades one, once, for a host certificate.
    #[command(subcommand)]
    Token(HostTokenCommand),
    /// List host certificates still valid (revoked ones marked).
    List {
        #[command(flatten)]
        dir: DataDir,
        /// Machine-readable output (serials as strings).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a host certificate by serial, or a host key (and all its certificates) for
    /// good; clients using the KRL as RevokedHostKeys refuse them from its next version.
    Revoke {
        /// Serial of one host certificate (`host list` shows them).
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        serial: Option<u64>,
        /// The host's public key file (e.g. a copy of /etc/ssh/ssh_host_ed25519_key.pub).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `moshca-server host token ...`
#[derive(Debug, Subcommand)]
pub enum HostTokenCommand {
    /// Make a single-use join token for a host and print it once (only its hash is kept).
    /// On the host: `moshca host enroll --token TOKEN`.
    Create {
        /// A name the host certificate will carry (repeatable): exactly these.
        #[arg(long = "principal", required = true)]
        principals: Vec<String>,
        /// How long the token may be used (1m to 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Validity of the host certificate (1m to 365d); default: config.toml's
        /// host_cert_ttl (30d).
        #[arg(long)]
        cert_ttl: Option<String>,
        /// Machine-readable output (the token is in it).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDir,
    },
    /// List join tokens: id, principals, expiry, use (never the tokens).
    List {
        #[command(flatten)]
        dir: DataDir,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `moshca-server audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and its signed checkpoints (in the database and in the
    /// checkpoint file) against the CA key files; exits non-zero and names the first bad
    /// event.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Checkpoint file to check the chain against (JSON lines the server appends);
        /// default: config.toml's `[audit] checkpoint_file`.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
    },
    /// Write the audit trail as JSON lines (for a SIEM).
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// Only events at or after this time (Unix seconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

/// `moshca-server policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file as `serve` and SIGHUP would: every error at once, each with its
    /// line and key; exits non-zero if there is any.
    Check {
        /// The file to check (default: the data directory's policy.toml).
        file: Option<PathBuf>,
        #[command(flatten)]
        dir: DataDir,
    },
}
