//! Command-line declarations for `moshca`: arguments, subcommands and their help text.
//!
//! Only clap derive types and the value parsers they use live here. This module does no I/O
//! and reads neither the environment nor the config file (that is `config`); doc comments
//! are the help text.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

/// Short-lived SSH certificates for production access, approved by a colleague.
#[derive(Debug, Parser)]
#[command(
    name = "moshca",
    version,
    after_help = "Settings come from flags, then MOSHCA_SERVER, MOSHCA_CA_CERT, MOSHCA_TOKEN \
                  (or MOSHCA_TOKEN_FILE), then ~/.config/moshca/config.toml (keys server, \
                  ca_cert, token_file).\n\nExit codes: 0 ok, 1 error, 2 usage or invalid \
                  request (e.g. a ttl out of range), 3 denied, 4 expired or timed out, 130 \
                  interrupted (Ctrl-C). With --json, errors are one JSON object on stdout: \
                  {\"error\", \"hint\", \"exit\"}."
)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// CA server URL, e.g. https://ca.example.net:7443 [env: MOSHCA_SERVER]
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,

    /// PEM file with the CA server's TLS certificate [env: MOSHCA_CA_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// File holding your bearer token [env: MOSHCA_TOKEN_FILE; MOSHCA_TOKEN holds the token
    /// itself]
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// More logs on stderr (-v, -vv, -vvv); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Request access, wait for approval, and load the certificate into ssh-agent
    Login(LoginArgs),
    /// Trust a CA server by its TLS certificate's fingerprint and write the config file
    Setup(SetupArgs),
    /// Request a certificate for an existing public key; prints the request id
    Request(RequestArgs),
    /// Show one request; without an id, list your live certificates and which are in
    /// ssh-agent
    Status(StatusArgs),
    /// Write the certificate of an issued request
    Fetch(FetchArgs),
    /// Cancel your own pending request
    Cancel(IdArgs),
    /// List your requests and those you may approve, newest first
    Requests(RequestsArgs),
    /// Approve a pending request
    Approve(ApproveArgs),
    /// Deny a pending request
    Deny(DenyArgs),
    /// Mark a break-glass request reviewed, after the fact (an approver of its role other
    /// than the requester)
    Review(ReviewArgs),
    /// Revoke certificates by serial, request, user or public key; hosts refuse them once
    /// they fetch the new KRL (within a minute with the host timer)
    Revoke(RevokeArgs),
    /// Print the CA public keys hosts should trust (TrustedUserCAKeys), or install them in a
    /// file
    CaKeys(CaKeysArgs),
    /// Install the key revocation list (KRL) for sshd's RevokedKeys in a file; needs no
    /// token
    Krl(KrlArgs),
    /// What a host runs to trust moshca, and to prove who it is (host certificates)
    #[command(subcommand)]
    Host(HostCommand),
    /// Write `@cert-authority PATTERN KEY` lines for the CA's host keys, for ssh's
    /// known_hosts: hosts with a moshca host certificate are then trusted without a
    /// first-use prompt. Needs no token
    KnownHosts(KnownHostsArgs),
    /// Show who the server thinks you are and which roles you may request or approve
    Whoami,
    /// In a CI job: get a short certificate of an auto-approved role with the job's OIDC ID
    /// token (MOSHCA_ID_TOKEN, or GitHub Actions' token endpoint); needs no MOSHCA_TOKEN
    Ci(CiArgs),
    /// Read the audit trail, oldest first (for the policy's auditors, defaults.auditors)
    Audit(AuditArgs),
    /// Sign in to the CA through your identity provider (SSO), show or end the session
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Remove moshca's certificates (and their keys) from ssh-agent; other keys stay
    Logout,
    /// Print a shell completion script, e.g. `moshca completion bash >
    /// /etc/bash_completion.d/moshca`
    Completion(CompletionArgs),
}

/// `moshca auth ...`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in at the CA's identity provider (browser, else a code for another device) and
    /// keep the CA session in ~/.config/moshca/session.json
    Login(AuthLoginArgs),
    /// Show who the CA thinks you are, your groups, the provider and when the session ends
    Status,
    /// End the CA session and delete the session file
    Logout,
}

/// Arguments of `moshca auth login`.
#[derive(Debug, Args)]
pub struct AuthLoginArgs {
    /// Sign in on another device with a code (the device grant) instead of a browser here
    #[arg(long)]
    pub device: bool,
}

/// Arguments of `moshca status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Request id (default: list your issued, unexpired, unrevoked certificates)
    pub id: Option<String>,
}

/// Arguments of `moshca completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for
    pub shell: clap_complete::Shell,
}

/// Arguments of `moshca login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Role to request, e.g. db-oncall
    #[arg(long, required_unless_present = "resume")]
    pub role: Option<String>,

    /// Login to request; repeat for several (default: all of the role's logins)
    #[arg(long = "principal", value_name = "LOGIN")]
    pub principals: Vec<String>,

    /// Certificate lifetime, e.g. 30m (default: the role's default)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Why you need access, e.g. "INC-4312 replica lag"
    #[arg(long, required_unless_present = "resume")]
    pub reason: Option<String>,

    /// Stop waiting (and cancel the request) after this long, e.g. 10m (default: until the
    /// request is decided or expires)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// In an incident: get a short certificate at once, without approval, where the role
    /// allows break-glass; the webhooks subscribed to break-glass are notified and the
    /// request stays flagged until an approver reviews it
    #[arg(long, conflicts_with = "keep_pending")]
    pub break_glass: bool,

    /// On --timeout or Ctrl-C, leave the request pending instead of cancelling it; its key
    /// waits in $XDG_RUNTIME_DIR/moshca/pending (memory, 0600) for `--resume`
    #[arg(long)]
    pub keep_pending: bool,

    /// Wait again for a request a `login --keep-pending` on this machine left pending, and
    /// load its certificate once approved
    #[arg(long, value_name = "ID", conflicts_with_all = ["role", "reason", "principals", "ttl", "break_glass"])]
    pub resume: Option<String>,
}

/// Arguments of `moshca ci`.
#[derive(Debug, Args)]
#[command(
    after_help = "The ID token comes from MOSHCA_ID_TOKEN (GitLab CI: `id_tokens: \
                  MOSHCA_ID_TOKEN: aud: moshca`), else from GitHub Actions' token endpoint \
                  (the job needs `permissions: id-token: write`). The key and certificate go \
                  to --out DIR when given, else to the ssh-agent at SSH_AUTH_SOCK."
)]
pub struct CiArgs {
    /// Role to request, e.g. deploy; the policy must bind it to this job's claims
    #[arg(long)]
    pub role: String,

    /// Login to request; repeat for several (default: all of the role's logins)
    #[arg(long = "principal", value_name = "LOGIN")]
    pub principals: Vec<String>,

    /// Certificate lifetime, e.g. 5m (default: the role's default)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Write DIR/id_ed25519 (0600) and DIR/id_ed25519-cert.pub instead of using ssh-agent;
    /// DIR is created (0700) if missing
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Audience to ask GitHub Actions for [env: MOSHCA_OIDC_AUDIENCE; default: moshca]
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
}

/// Arguments of `moshca request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Role to request, e.g. db-oncall
    #[arg(long)]
    pub role: String,

    /// Login to request; repeat for several (default: all of the role's logins)
    #[arg(long = "principal", value_name = "LOGIN")]
    pub principals: Vec<String>,

    /// Certificate lifetime, e.g. 30m (default: the role's default)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Why you need access
    #[arg(long)]
    pub reason: String,

    /// OpenSSH public key file to certify, e.g. ~/.ssh/id_ed25519.pub
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,

    /// Issue at once without approval, where the role allows break-glass; everyone is
    /// notified and the request stays flagged until an approver reviews it
    #[arg(long)]
    pub break_glass: bool,
}

/// A command that takes only a request id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Request id
    pub id: String,
}

/// Arguments of `moshca fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Request id
    pub id: String,

    /// Write the certificate line to this file (default: stdout)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Arguments of `moshca requests`.
#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Only requests still waiting for approval
    #[arg(long)]
    pub pending: bool,

    /// Only your own requests
    #[arg(long)]
    pub mine: bool,

    /// Only break-glass requests nobody has reviewed yet
    #[arg(long)]
    pub unreviewed: bool,
}

/// Arguments of `moshca approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Request id
    pub id: String,

    /// Shorten the certificate lifetime to this, e.g. 15m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// A note for the audit log
    #[arg(long)]
    pub comment: Option<String>,
}

/// Arguments of `moshca deny`.
#[derive(Debug, Args)]
pub struct DenyArgs {
    /// Request id
    pub id: String,

    /// Why, shown to the requester
    #[arg(long)]
    pub reason: String,
}

/// Arguments of `moshca review`.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Request id of a break-glass request
    pub id: String,

    /// What you checked, for the audit log, e.g. "INC-4312 was real, access fit"
    #[arg(long)]
    pub comment: String,
}

/// Arguments of `moshca audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events by this user, or about their requests
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Only events of this request
    #[arg(long, value_name = "ID")]
    pub request: Option<String>,

    /// Only events since this time: RFC 3339 (2025-01-02T03:04:05Z) or a duration meaning
    /// that long ago (2h, 1d)
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Since>,

    /// At most this many events, the newest (default: 100)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: Option<u32>,
}

/// The start of a time window: a moment, or a span before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This Unix time.
    At(i64),
    /// This long before now.
    Ago(Duration),
}

impl Since {
    /// The Unix time this stands for at `now`; never before 1970.
    pub fn unix_at(self, now: i64) -> i64 {
        match self {
            Since::At(at) => at,
            Since::Ago(ago) => now.saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX)),
        }
        .max(0)
    }
}

/// Arguments of `moshca revoke`: exactly one target and a reason.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["serial", "request", "user", "public_key"])
))]
pub struct RevokeArgs {
    /// The certificate with this serial
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub serial: Option<u64>,

    /// The certificate of this request
    #[arg(long, value_name = "ID")]
    pub request: Option<String>,

    /// Every unexpired certificate of this user; the user is also disabled
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Every certificate for this OpenSSH public key, and the key itself for good
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,

    /// Why, for the audit log
    #[arg(long)]
    pub reason: String,
}

/// Arguments of `moshca ca-keys`.
#[derive(Debug, Args)]
pub struct CaKeysArgs {
    /// Install the keys in this file (atomically; kept as it was on any failure) instead of
    /// printing them
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Arguments of `moshca krl`.
#[derive(Debug, Args)]
pub struct KrlArgs {
    /// File to install the KRL in, e.g. /etc/ssh/moshca.krl; replaced atomically, and only
    /// by a KRL that ssh-keygen accepts and whose version is not older
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Do not run `ssh-keygen -Q -l` on the new KRL (its header is still checked)
    #[arg(long)]
    pub no_check: bool,
}

/// `moshca host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Install the CA public keys and the KRL in DIR; what the host timer runs every minute.
    /// Needs only MOSHCA_SERVER and MOSHCA_CA_CERT
    Sync(HostSyncArgs),
    /// Enrol this host with a single-use join token (`moshca-server host token create`):
    /// sends the host's public key and writes its host certificate beside it
    /// (KEY-cert.pub), for sshd's HostCertificate
    Enroll(HostEnrollArgs),
    /// Renew this host's certificate, proving possession of the host's private key (read
    /// beside the .pub, which must be private to its owner); what the daily timer runs
    Renew(HostRenewArgs),
}

/// The default host key of `moshca host enroll|renew`.
pub const DEFAULT_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

/// Arguments of `moshca host enroll`.
#[derive(Debug, Args)]
pub struct HostEnrollArgs {
    /// The join token (mch_...); prefer MOSHCA_JOIN_TOKEN or --token-file, which `ps`
    /// does not show
    #[arg(
        long,
        env = "MOSHCA_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// A file holding the join token (private to you, like a token file)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// The host's public key; the certificate is written beside it as KEY-cert.pub
    #[arg(long, value_name = "FILE.pub", default_value = DEFAULT_HOST_KEY)]
    pub key: PathBuf,

    /// Names to certify; must be exactly the token's (default: the token's)
    #[arg(long = "principal", value_name = "NAME")]
    pub principals: Vec<String>,
}

/// Arguments of `moshca host renew`.
#[derive(Debug, Args)]
pub struct HostRenewArgs {
    /// The host's public key; its certificate (KEY-cert.pub) and private key (KEY without
    /// .pub) sit beside it
    #[arg(long, value_name = "FILE.pub", default_value = DEFAULT_HOST_KEY)]
    pub key: PathBuf,
}

/// Arguments of `moshca known-hosts`.
#[derive(Debug, Args)]
pub struct KnownHostsArgs {
    /// Host name pattern the CA vouches for, as known_hosts writes it (e.g.
    /// '*.example.com'; comma-separated patterns, `!` negations)
    #[arg(long, value_name = "PATTERN", default_value = "*", value_parser = parse_host_pattern)]
    pub domain: String,

    /// Install the lines in this file (atomically, mode 0644) instead of printing them,
    /// e.g. /etc/ssh/ssh_known_hosts.d/moshca or ~/.ssh/known_hosts_moshca
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Accepts a known_hosts host pattern: printable ASCII without spaces.
pub fn parse_host_pattern(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) || text.starts_with('@') {
        return Err(
            "must be a host pattern without spaces, e.g. '*.example.com' or 'db-*.example.com,10.0.0.*'"
                .to_owned(),
        );
    }
    Ok(text.to_owned())
}

/// Arguments of `moshca host sync`.
#[derive(Debug, Args)]
pub struct HostSyncArgs {
    /// Directory of the files, e.g. /etc/ssh
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// File name of the CA public keys in DIR (sshd's TrustedUserCAKeys)
    #[arg(long, value_name = "NAME", default_value = "moshca_ca.pub", value_parser = parse_file_name)]
    pub ca_keys_name: String,

    /// File name of the KRL in DIR (sshd's RevokedKeys)
    #[arg(long, value_name = "NAME", default_value = "moshca.krl", value_parser = parse_file_name)]
    pub krl_name: String,

    /// Do not run `ssh-keygen -Q -l` on the new KRL (its header is still checked)
    #[arg(long)]
    pub no_check: bool,

    /// After a sync that installed both files, write a node_exporter textfile here
    /// (atomically) with moshca_host_sync_last_success_timestamp_seconds and the KRL
    /// version, e.g. /var/lib/node_exporter/textfile_collector/moshca.prom
    #[arg(long, value_name = "FILE")]
    pub textfile: Option<PathBuf>,
}

/// Accepts a plain file name: no directory part, not `.` or `..`.
pub fn parse_file_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text == "." || text == ".." || text.contains('/') || text.contains('\0') {
        return Err("must be a file name without a directory, e.g. moshca.krl".to_owned());
    }
    Ok(text.to_owned())
}

/// Parses a whole, positive number of seconds written like "90s", "30m" or "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err}; write a number and a unit, e.g. 90s, 30m, 1h"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    if duration.subsec_nanos() != 0 {
        return Err("must be whole seconds".to_owned());
    }
    Ok(duration)
}

/// Parses `--since`: an RFC 3339 time (`2025-01-02T03:04:05Z`, `...+02:00`) or a duration
/// (`2h`) meaning that long ago.
pub fn parse_since(text: &str) -> Result<Since, String> {
    const EXAMPLE: &str = "write a time like 2025-01-02T03:04:05Z or a duration like 2h \
                           (meaning 2 hours ago)";
    let text = text.trim();
    let looks_like_a_date = text.len() > 4
        && text.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && text.as_bytes()[4] == b'-';
    if looks_like_a_date {
        return parse_rfc3339(text)
            .map(Since::At)
            .map_err(|err| format!("{err}; {EXAMPLE}"));
    }
    match humantime::parse_duration(text) {
        Ok(duration) => Ok(Since::Ago(Duration::from_secs(duration.as_secs()))),
        Err(err) => Err(format!("{err}; {EXAMPLE}")),
    }
}

/// RFC 3339 to Unix seconds, with `Z` or a numeric offset (humantime knows only `Z`).
fn parse_rfc3339(text: &str) -> Result<i64, String> {
    // A numeric offset is the last six characters: `+HH:MM` or `-HH:MM`.
    let split = text
        .len()
        .checked_sub(6)
        .filter(|&i| text.is_char_boundary(i))
        .map(|i| text.split_at(i))
        .filter(|(_, offset)| {
            let b = offset.as_bytes();
            matches!(b[0], b'+' | b'-') && b[3] == b':'
        });
    let (utc, offset_secs) = match split {
        Some((base, offset)) => {
            let b = offset.as_bytes();
            let digits = [b[1], b[2], b[4], b[5]];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(format!("bad time zone offset {offset:?}"));
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let secs = (h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60;
            let secs = if b[0] == b'-' { -secs } else { secs };
            (format!("{base}Z"), secs)
        }
        None => (text.to_owned(), 0),
    };
    let at = humantime::parse_rfc3339(&utc).map_err(|err| err.to_string())?;
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?
        .as_secs();
    Ok(i64::try_from(secs).unwrap_or(i64::MAX) - offset_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn resume_stands_alone_and_keep_pending_excludes_break_glass() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("moshca").chain(args.iter().copied()))
        };
        let cli = parse(&["login", "--resume", "01JREQ"]).unwrap();
        let Command::Login(login) = cli.command else {
            panic!("not login")
        };
        assert_eq!(login.resume.as_deref(), Some("01JREQ"));
        assert!(login.role.is_none() && login.reason.is_none());
        let conflict = parse(&["login", "--resume", "01JREQ", "--role", "db"]).unwrap_err();
        assert_eq!(conflict.kind(), clap::error::ErrorKind::ArgumentConflict);
        let missing = parse(&["login", "--reason", "x"]).unwrap_err();
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let glass = parse(&[
            "login",
            "--role",
            "r",
            "--reason",
            "x",
            "--keep-pending",
            "--break-glass",
        ]);
        assert_eq!(
            glass.unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn status_takes_an_optional_id_and_completion_a_shell() {
        let cli = Cli::try_parse_from(["moshca", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs { id: None })
        ));
        let cli = Cli::try_parse_from(["moshca", "completion", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completion(CompletionArgs {
                shell: clap_complete::Shell::Zsh
            })
        ));
        assert!(Cli::try_parse_from(["moshca", "completion", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["moshca", "logout"]).is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn bad_durations_are_refused_with_an_example() {
        for text in ["", "abc", "30", "-5m", "10 parsecs"] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("e.g. 90s, 30m, 1h"), "{text:?}: {err}");
        }
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            "must be longer than zero"
        );
        assert_eq!(
            parse_duration("1500ms").unwrap_err(),
            "must be whole seconds"
        );
    }

    #[test]
    fn declarations_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_after_the_subcommand_too() {
        let cli = Cli::try_parse_from([
            "moshca",
            "login",
            "--role",
            "db",
            "--reason",
            "INC-1 lag",
            "--principal",
            "postgres",
            "--principal",
            "ubuntu",
            "--server",
            "https://ca:7443",
            "--json",
            "-vv",
            "--ttl",
            "30m",
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("https://ca:7443"));
        assert!(cli.global.json);
        assert_eq!(cli.global.verbose, 2);
        let Command::Login(login) = cli.command else {
            panic!("not login: {:?}", cli.command);
        };
        assert_eq!(login.principals, ["postgres", "ubuntu"]);
        assert_eq!(login.ttl, Some(Duration::from_secs(1800)));
        assert_eq!(login.timeout, None);
    }

    #[test]
    fn revoke_takes_exactly_one_target() {
        let cli = Cli::try_parse_from([
            "moshca",
            "revoke",
            "--serial",
            "42",
            "--reason",
            "lost laptop",
        ])
        .unwrap();
        let Command::Revoke(args) = cli.command else {
            panic!("not revoke: {:?}", cli.command);
        };
        assert_eq!(args.serial, Some(42));
        assert_eq!(args.reason, "lost laptop");

        for argv in [
            &["moshca", "revoke", "--reason", "r"][..],
            &[
                "moshca", "revoke", "--serial", "1", "--user", "bob", "--reason", "r",
            ],
            &["moshca", "revoke", "--serial", "0", "--reason", "r"],
            &["moshca", "revoke", "--user", "bob"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn host_sync_has_defaults_and_refuses_paths_as_names() {
        let cli = Cli::try_parse_from(["moshca", "host", "sync", "--dir", "/etc/ssh"]).unwrap();
        let Command::Host(HostCommand::Sync(args)) = cli.command else {
            panic!("not host sync: {:?}", cli.command);
        };
        assert_eq!(args.dir, PathBuf::from("/etc/ssh"));
        assert_eq!(args.ca_keys_name, "moshca_ca.pub");
        assert_eq!(args.krl_name, "moshca.krl");
        assert!(!args.no_check);

        for name in ["../krl", "a/b", "..", ""] {
            let err =
                Cli::try_parse_from(["moshca", "host", "sync", "--dir", "/d", "--krl-name", name])
                    .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{name:?}");
        }
        assert!(Cli::try_parse_from(["moshca", "krl"]).is_err());
    }

    #[test]
    fn ci_takes_a_role_and_optional_destination() {
        let cli = Cli::try_parse_from([
            "moshca", "ci", "--role", "deploy", "--out", "/tmp/m", "--ttl", "5m", "--json",
        ])
        .unwrap();
        let Command::Ci(args) = cli.command else {
            panic!("not ci: {:?}", cli.command);
        };
        assert_eq!(args.role, "deploy");
        assert_eq!(args.out, Some(PathBuf::from("/tmp/m")));
        assert_eq!(args.ttl, Some(Duration::from_secs(300)));
        assert_eq!(args.audience, None);
        assert!(args.principals.is_empty());
        assert!(cli.global.json);
        assert_eq!(
            Cli::try_parse_from(["moshca", "ci"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn a_bad_ttl_is_a_usage_error() {
        let err = Cli::try_parse_from(["moshca", "approve", "ID", "--ttl", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--ttl"), "{err}");
    }

    #[test]
    fn break_glass_is_a_flag_of_login_and_request() {
        let cli = Cli::try_parse_from([
            "moshca",
            "login",
            "--role",
            "db",
            "--reason",
            "INC-1 down",
            "--break-glass",
        ])
        .unwrap();
        let Command::Login(login) = cli.command else {
            panic!("not login: {:?}", cli.command);
        };
        assert!(login.break_glass);
        let cli = Cli::try_parse_from([
            "moshca",
            "request",
            "--role",
            "db",
            "--reason",
            "INC-1 down",
            "--public-key",
            "k.pub",
        ])
        .unwrap();
        let Command::Request(request) = cli.command else {
            panic!("not request: {:?}", cli.command);
        };
        assert!(!request.break_glass);
        let cli = Cli::try_parse_from(["moshca", "requests", "--unreviewed", "--json"]).unwrap();
        let Command::Requests(requests) = cli.command else {
            panic!("not requests: {:?}", cli.command);
        };
        assert!(requests.unreviewed && !requests.pending && !requests.mine);
    }

    #[test]
    fn review_needs_an_id_and_a_comment() {
        let cli =
            Cli::try_parse_from(["moshca", "review", "01JREQ", "--comment", "was real"]).unwrap();
        let Command::Review(args) = cli.command else {
            panic!("not review: {:?}", cli.command);
        };
        assert_eq!(
            (args.id.as_str(), args.comment.as_str()),
            ("01JREQ", "was real")
        );
        for argv in [
            &["moshca", "review", "01JREQ"][..],
            &["moshca", "review", "--comment", "c"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn audit_takes_filters() {
        let cli = Cli::try_parse_from([
            "moshca",
            "audit",
            "--user",
            "alice",
            "--request",
            "01JREQ",
            "--since",
            "2h",
            "--limit",
            "5",
            "--json",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("not audit: {:?}", cli.command);
        };
        assert_eq!(args.user.as_deref(), Some("alice"));
        assert_eq!(args.request.as_deref(), Some("01JREQ"));
        assert_eq!(args.since, Some(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(args.limit, Some(5));
        assert!(cli.global.json);

        let cli = Cli::try_parse_from(["moshca", "audit"]).unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("not audit: {:?}", cli.command);
        };
        assert_eq!(
            (args.user, args.request, args.since, args.limit),
            (None, None, None, None)
        );

        for argv in [
            &["moshca", "audit", "--limit", "0"][..],
            &["moshca", "audit", "--limit", "10001"],
            &["moshca", "audit", "--since", "yesterday"],
            &["moshca", "audit", "--since", "2025-13-01T00:00:00Z"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn since_takes_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_since("2025-06-15T15:06:40Z"),
            Ok(Since::At(1_750_000_000))
        );
        assert_eq!(
            parse_since("2025-06-15T15:06:40.5Z"),
            Ok(Since::At(1_750_000_000))
        );
        assert_eq!(
            parse_since("2025-06-15T17:06:40+02:00"),
            Ok(Since::At(1_750_000_000))
        );
        assert_eq!(
            parse_since("2025-06-15T14:36:40-00:30"),
            Ok(Since::At(1_750_000_000))
        );
        assert_eq!(parse_since("2h"), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(
            parse_since("1day 30m"),
            Ok(Since::Ago(Duration::from_secs(88_200)))
        );
        for text in [
            "",
            "soon",
            "2025-06-15",
            "2025-06-15T15:06:40+2:00",
            "2025-06-15T15:06:40+ab:00",
            "1750000000",
            "2025-06-15T15:06:40\u{e9}0:00",
        ] {
            let err = parse_since(text).unwrap_err();
            assert!(
                err.contains("2025-01-02T03:04:05Z") && err.contains("2h"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn since_resolves_against_now() {
        const NOW: i64 = 1_750_000_000;
        assert_eq!(Since::At(5).unix_at(NOW), 5);
        assert_eq!(
            Since::Ago(Duration::from_secs(7200)).unix_at(NOW),
            NOW - 7200
        );
        assert_eq!(Since::Ago(Duration::from_secs(u64::MAX)).unix_at(NOW), 0);
    }
}

/// `moshca setup --server URL --fingerprint SHA256:...` (the server comes from the
/// global `--server` or MOSHCA_SERVER).
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// SHA-256 fingerprint of the CA's TLS certificate (or of a CA certificate in its
    /// chain), as `moshca-server init` prints it (SHA256:...) or as 64 hex digits
    #[arg(long)]
    pub fingerprint: String,
}
