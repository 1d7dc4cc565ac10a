//! The client's error type: one line saying what went wrong, a hint saying what to do next,
//! and the process exit code.
//!
//! Every failure a user can see is a variant here, so `main` has exactly one place that turns
//! an error into output and an exit code. Messages never contain the bearer token, an ID
//! token (JWT) or key material; fields hold only ids, paths, server messages, error
//! descriptions and (for `ci`) a summary of the ID token's public claims.

use std::io;
use std::path::PathBuf;

use moshca_proto::v1::{AccessRequest, Decision};
use tonic::Code;

use crate::install::Refusal;

/// Exit codes of `moshca`, as documented in the contract.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// Any failure without a more specific code.
    pub const ERROR: u8 = 1;
    /// Bad command line (clap exits with this itself).
    pub const USAGE: u8 = 2;
    /// An approver denied the request, or the server refused with PERMISSION_DENIED.
    pub const DENIED: u8 = 3;
    /// The request or certificate expired, or `--timeout` ran out.
    pub const EXPIRED: u8 = 4;
    /// Ctrl-C (SIGINT) while waiting: 128 + 2, as shells report a process SIGINT ended.
    pub const INTERRUPTED: u8 = 130;
}

/// The hint for a missing or refused bearer token.
const TOKEN_HINT: &str = "set MOSHCA_TOKEN or MOSHCA_TOKEN_FILE (or pass --token-file); \
                          ask the CA operator for one with `moshca-server user token NAME`";
/// The hint for a server that cannot be reached.
const SERVER_HINT: &str = "check MOSHCA_SERVER (or --server) and that the moshca server runs";

/// Everything that can make a `moshca` command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server URL from flags, environment or config file.
    #[error("no CA server configured")]
    MissingServer,
    /// No PEM file to trust the server's TLS certificate with.
    #[error("no TLS certificate configured to trust the CA server with")]
    MissingCaCert,
    /// The server URL is not an `https://` URL.
    #[error("invalid server URL {url:?}: {reason}")]
    BadServerUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The config file does not parse or has unknown keys.
    #[error("invalid config file {}: {message}", path.display())]
    ConfigFile {
        /// The config file.
        path: PathBuf,
        /// The parser's message, on one line.
        message: String,
    },
    /// No bearer token from `MOSHCA_TOKEN`, a token file or the config file.
    #[error("no bearer token configured")]
    MissingToken,
    /// The token is empty or cannot travel in an HTTP header.
    #[error("invalid bearer token from {origin}: {reason}")]
    BadToken {
        /// Where the token came from (`MOSHCA_TOKEN` or a file path); never the token.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file holding a secret is not the user's alone.
    #[error("{what} {} {problem}", path.display())]
    ExposedSecret {
        /// What the file holds ("token file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and the command that fixes it.
        problem: String,
    },
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file was supposed to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Standard output could not be written.
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
    /// The CA certificate file holds no PEM certificate.
    #[error("{} holds no PEM certificate", path.display())]
    BadCaCert {
        /// The file.
        path: PathBuf,
    },
    /// `moshca setup --fingerprint` got something that is not a SHA-256 fingerprint.
    #[error("{given:?} is not a SHA-256 fingerprint")]
    BadFingerprint {
        /// What was given.
        given: String,
    },
    /// No certificate the server presented has the fingerprint `moshca setup` was given.
    #[error(
        "{server} presented no certificate with fingerprint {expected} (it presented {})",
        presented.join(", ")
    )]
    FingerprintMismatch {
        /// The server URL.
        server: String,
        /// The fingerprint given.
        expected: String,
        /// Fingerprints of what the server presented, its own first.
        presented: Vec<String>,
    },
    /// No home directory to keep the config file in.
    #[error("no home directory for the config file (HOME and XDG_CONFIG_HOME are unset)")]
    NoConfigDir,
    /// The TLS connection to the server could not be set up.
    #[error("cannot connect to {server}: {detail}")]
    Connect {
        /// The server URL.
        server: String,
        /// The transport error chain, on one line.
        detail: String,
    },
    /// The server answered a call with an error status.
    #[error("{call}: {message}")]
    Rpc {
        /// What we asked for, e.g. "create request".
        call: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The server's one-line message (or the transport error chain).
        message: String,
    },
    /// `login` needs an ssh-agent and `SSH_AUTH_SOCK` is not set.
    #[error("SSH_AUTH_SOCK is not set: no ssh-agent to load the certificate into")]
    NoAgent,
    /// Talking to ssh-agent failed.
    #[error("ssh-agent at {}: {detail}", socket.display())]
    Agent {
        /// The agent socket.
        socket: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The `--public-key` file is not a usable OpenSSH public key.
    #[error("{}: {detail}", path.display())]
    PublicKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The ephemeral key could not be made or encoded.
    #[error("cannot make an ephemeral key: {0}")]
    Key(String),
    /// An approver denied the request.
    #[error("request {id} was denied by {by}: {reason}")]
    Denied {
        /// The request id.
        id: String,
        /// Who denied it.
        by: String,
        /// The reason they gave.
        reason: String,
    },
    /// The request expired before enough approvers approved it.
    #[error("request {id} expired before it was approved")]
    Expired {
        /// The request id.
        id: String,
    },
    /// `--timeout` ran out while waiting.
    #[error("gave up waiting for request {id} after {after}; {}", cancel_note(*.cancelled))]
    TimedOut {
        /// The request id.
        id: String,
        /// The timeout, human readable.
        after: String,
        /// Whether the request was cancelled on the server.
        cancelled: bool,
    },
    /// Ctrl-C while waiting.
    #[error("interrupted while waiting for request {id}; {}", cancel_note(*.cancelled))]
    Interrupted {
        /// The request id.
        id: String,
        /// Whether the request was cancelled on the server.
        cancelled: bool,
    },
    /// The request was cancelled (by its requester, elsewhere).
    #[error("request {id} was cancelled")]
    Cancelled {
        /// The request id.
        id: String,
    },
    /// The request has no certificate yet.
    #[error("request {id} is still pending")]
    Pending {
        /// The request id.
        id: String,
    },
    /// The certificate's validity has already ended.
    #[error("the certificate of request {id} expired at {at}")]
    CertificateExpired {
        /// The request id.
        id: String,
        /// When it expired, RFC 3339.
        at: String,
    },
    /// The server sent a certificate that is not the one we asked for.
    #[error("the certificate for request {id} does not match the request: {detail}")]
    CertificateMismatch {
        /// The request id.
        id: String,
        /// What does not match.
        detail: String,
    },
    /// The server's answer makes no sense (missing fields, unparsable certificate).
    #[error("unexpected answer from the server: {0}")]
    BadResponse(String),
    /// New contents for a file sshd reads failed a check; the old file was kept.
    #[error("not replacing {}: {refusal}", path.display())]
    NotReplaced {
        /// The file that was kept.
        path: PathBuf,
        /// What the check found.
        refusal: Refusal,
    },
    /// `ssh-keygen` could not be run to check a KRL; the old file was kept.
    #[error("cannot run {program} to check the KRL: {source}")]
    NoSshKeygen {
        /// The program as named (`ssh-keygen`).
        program: String,
        /// Why it could not run.
        source: io::Error,
    },
    /// Replacing a file sshd reads failed at one step; the old file was kept.
    #[error("cannot replace {} ({step}): {source}", path.display())]
    Install {
        /// The file that was kept.
        path: PathBuf,
        /// The step that failed, e.g. "create a temp file".
        step: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// `ci` found no ID token: no `MOSHCA_ID_TOKEN` and no GitHub Actions token endpoint.
    #[error("no OIDC ID token for this CI job: {detail}")]
    NoIdToken {
        /// Which variables were missing.
        detail: &'static str,
    },
    /// The ID token is not shaped like a JWT.
    #[error("invalid ID token from {origin}: {reason}")]
    BadIdToken {
        /// Where it came from (a variable name or "GitHub Actions"); never the token.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// GitHub Actions' token endpoint did not give us an ID token.
    #[error("cannot get an ID token from GitHub Actions: {detail}")]
    IdTokenRequest {
        /// What went wrong (status, transport error); never a token or the response body.
        detail: String,
    },
    /// The CA did not accept the ID token (UNAUTHENTICATED).
    #[error("{message}")]
    IdTokenRejected {
        /// The server's one-line message, with the call.
        message: String,
        /// The token's public claims, for the hint.
        claims: String,
    },
    /// The CA accepted the ID token but the role is not granted to this job
    /// (PERMISSION_DENIED).
    #[error("{message}")]
    WorkloadDenied {
        /// The server's one-line message, with the call.
        message: String,
        /// The token's public claims, for the hint.
        claims: String,
    },
    /// `ci` has neither `--out DIR` nor an ssh-agent to put key and certificate in.
    #[error("nowhere to put the key and certificate: no --out DIR and SSH_AUTH_SOCK is not set")]
    NoCiDestination,
    /// The server left a CI job's request pending instead of issuing it.
    #[error("request {id} for role {role} waits for approval, which a CI job cannot do; {}", cancel_note(*.cancelled))]
    NotAutoApproved {
        /// The request id.
        id: String,
        /// The role asked for.
        role: String,
        /// Whether the request was cancelled on the server.
        cancelled: bool,
    },
    /// The server refused to show the audit trail: the caller is not an auditor
    /// (PERMISSION_DENIED).
    #[error("{message}")]
    NotAuditor {
        /// The server's one-line message, with the call.
        message: String,
    },
    /// `host sync` could not update some of its files (each error was reported already).
    #[error("not updated: {}", paths_list(failed))]
    HostSync {
        /// The files left as they were.
        failed: Vec<PathBuf>,
    },
    /// Host enrolment, renewal or known-hosts failed; the message says what to do next.
    #[error("{message}")]
    HostCert {
        /// One line, with what to do next.
        message: String,
        /// The CA refused (PERMISSION_DENIED or UNAUTHENTICATED): exit code 3.
        denied: bool,
    },
    /// The server refused the request's arguments (ttl out of range, reason too short,
    /// unknown login): a validation error, with the usage exit code.
    #[error("{message}")]
    Invalid {
        /// The server's one-line message, with the call.
        message: String,
    },
    /// The server refused a role the caller may not request; `suggestion` is the closest
    /// role they may request.
    #[error("{message}")]
    UnknownRole {
        /// The server's one-line message, with the call.
        message: String,
        /// The closest requestable role, if one is close.
        suggestion: Option<String>,
        /// Every role the caller may request.
        requestable: Vec<String>,
    },
    /// `login --keep-pending` stopped waiting; the request stays pending and its key waits
    /// for `login --resume`.
    #[error("stopped waiting for request {id}{}; it stays pending until {expires}", after.as_ref().map(|a| format!(" after {a}")).unwrap_or_default())]
    StillPending {
        /// The request id.
        id: String,
        /// The timeout, human readable; `None` after Ctrl-C.
        after: Option<String>,
        /// When the pending request expires, RFC 3339.
        expires: String,
    },
    /// `--keep-pending` needs a per-user runtime directory to keep the key in.
    #[error(
        "--keep-pending needs XDG_RUNTIME_DIR, a private directory in memory, to keep the key in until --resume"
    )]
    NoRuntimeDir,
    /// `--resume` found no key kept for the request.
    #[error("no key kept for request {id} in {}", dir.display())]
    NothingToResume {
        /// The request id.
        id: String,
        /// Where kept keys live.
        dir: PathBuf,
    },
    /// `moshca auth login` against a CA that has no `[sso]` section.
    #[error("the CA at {server} does not offer sign-in through an identity provider")]
    SsoDisabled {
        /// The server URL.
        server: String,
    },
    /// Talking to the identity provider failed (unreachable, unexpected answer).
    #[error("signing in: {detail}")]
    SignIn {
        /// What went wrong, without any code or token.
        detail: String,
    },
    /// The sign-in was refused: by the person, by the identity provider, or by this
    /// client's checks (`state`, `nonce`).
    #[error("sign-in refused: {detail}")]
    SignInRefused {
        /// Why.
        detail: String,
    },
    /// Nobody finished signing in in time.
    #[error("the sign-in was not finished within {after}")]
    SignInTimedOut {
        /// How long was waited, human readable.
        after: String,
    },
    /// `moshca auth status` without a token or a session file.
    #[error("you are not signed in to the CA (no token configured, no session)")]
    NotSignedIn,
    /// The CA no longer accepts the session (expired, ended or revoked).
    #[error("{message}")]
    SessionEnded {
        /// The CA's one-line reason.
        message: String,
    },
    /// The CA refused the ID token (`CreateSession` answered UNAUTHENTICATED).
    #[error("the CA refused the sign-in: {message}")]
    SessionRefused {
        /// The CA's one-line reason.
        message: String,
    },
}

/// `a, b` for the files `host sync` could not update.
fn paths_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the ID token says about the job, for `ci` hints.
fn claims_note(claims: &str) -> String {
    if claims.is_empty() {
        "the token's claims could not be read".to_owned()
    } else {
        format!("the token says {claims}")
    }
}

/// The tail of the timeout and interrupt messages.
fn cancel_note(cancelled: bool) -> &'static str {
    if cancelled {
        "the request was cancelled"
    } else {
        "the request could not be cancelled and will expire on its own"
    }
}

/// The result type of the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for a denied request, naming who denied it and why.
    pub fn denied(request: &AccessRequest) -> Self {
        let review = request
            .reviews
            .iter()
            .rev()
            .find(|r| r.decision == Decision::Deny as i32);
        Error::Denied {
            id: request.id.clone(),
            by: review.map_or_else(|| "an approver".to_owned(), |r| r.approver.clone()),
            reason: review
                .map(|r| one_line(&r.comment))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "no reason given".to_owned()),
        }
    }

    /// An error for a failed call, keeping the status code and a one-line message.
    ///
    /// Transport failures arrive with a generic message; their cause chain is appended so
    /// "connection refused" or a certificate error is visible.
    pub fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        let mut message = one_line(status.message());
        if message.is_empty() {
            message = status.code().description().to_owned();
        }
        let chain = source_chain(status);
        if !chain.is_empty() && !message.contains(&chain) {
            message = format!("{message}: {chain}");
        }
        Error::Rpc {
            call,
            code: status.code(),
            message,
        }
    }

    /// An error for a failed `ListAuditEvents` call: a refusal names who may read the trail.
    pub fn audit(status: &tonic::Status) -> Self {
        match Error::rpc("list audit events", status) {
            Error::Rpc {
                code: Code::PermissionDenied,
                message,
                call,
            } => Error::NotAuditor {
                message: format!("{call}: {message}"),
            },
            other => other,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Denied { .. } => exit::DENIED,
            Error::Rpc {
                code: Code::PermissionDenied,
                ..
            }
            | Error::WorkloadDenied { .. }
            | Error::NotAuditor { .. }
            | Error::HostCert { denied: true, .. } => exit::DENIED,
            Error::Expired { .. } | Error::TimedOut { .. } | Error::CertificateExpired { .. } => {
                exit::EXPIRED
            }
            Error::Interrupted { .. } | Error::StillPending { after: None, .. } => {
                exit::INTERRUPTED
            }
            Error::StillPending { after: Some(_), .. } => exit::EXPIRED,
            Error::Invalid { .. } => exit::USAGE,
            Error::UnknownRole { .. } => exit::DENIED,
            Error::SignInRefused { .. } | Error::SessionRefused { .. } => exit::DENIED,
            Error::SignInTimedOut { .. } => exit::EXPIRED,
            _ => exit::ERROR,
        }
    }

    /// What the user should do next, when there is something useful to say.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::MissingServer => {
                "set MOSHCA_SERVER or pass --server (e.g. https://ca.example.net:7443), \
                 or put `server = \"https://...\"` in ~/.config/moshca/config.toml"
            }
            Error::MissingCaCert => {
                "set MOSHCA_CA_CERT or pass --ca-cert with the server's TLS certificate \
                 (DIR/tls/cert.pem on the CA host), or put `ca_cert = \"...\"` in \
                 ~/.config/moshca/config.toml"
            }
            Error::BadServerUrl { .. } => "use https://HOST:PORT, e.g. https://127.0.0.1:7443",
            Error::ConfigFile { .. } => "fix the file; its keys are server, ca_cert and token_file",
            Error::MissingToken => TOKEN_HINT,
            Error::BadToken { .. } => {
                "the token is the `mca_...` line printed by `moshca-server user add` or \
                 `moshca-server user token NAME`"
            }
            Error::BadCaCert { .. } => {
                "point MOSHCA_CA_CERT (or --ca-cert) at the server's DIR/tls/cert.pem"
            }
            Error::Connect { detail, .. } if detail.contains("not valid for name") => {
                "the CA's TLS certificate does not name the host in MOSHCA_SERVER: use a name \
                 it holds, or give the CA a certificate for this one (`moshca-server init \
                 --tls-name NAME` for a new data directory, or [tls] cert and key in its \
                 config.toml for a certificate from your own CA; SIGHUP reloads them)"
            }
            Error::Connect { .. } => {
                "check MOSHCA_SERVER (or --server) and that the moshca server runs; a \
                 certificate error means MOSHCA_CA_CERT does not match the server's TLS \
                 certificate (`moshca setup --server URL --fingerprint SHA256:...` pins it)"
            }
            Error::BadFingerprint { .. } => {
                "give the fingerprint `moshca-server init` printed (SHA256:...), or the 64 hex \
                 digits of `openssl x509 -noout -fingerprint -sha256 -in CERT`"
            }
            Error::FingerprintMismatch { .. } => {
                "nothing was written. Check the URL and the fingerprint with the CA operator; \
                 a different certificate can mean you are not talking to your CA"
            }
            Error::NoConfigDir => "set HOME (or XDG_CONFIG_HOME), then run `moshca setup` again",
            // A refused session's message already says to sign in again; the token hint
            // would send a person after a token they do not need.
            Error::Rpc { message, .. } if message.contains("moshca auth login") => return None,
            Error::Rpc { code, .. } => return rpc_hint(*code).map(str::to_owned),
            Error::NoAgent => {
                "start an agent with `eval \"$(ssh-agent)\"`, then run `moshca login` again"
            }
            Error::Agent { .. } => {
                "check that ssh-agent runs and SSH_AUTH_SOCK points at it (`ssh-add -l`)"
            }
            Error::PublicKey { .. } => {
                "pass an OpenSSH public key file, e.g. --public-key ~/.ssh/id_ed25519.pub"
            }
            Error::Denied { .. } => "ask the approver, or make a new request with a clearer reason",
            Error::Expired { .. } => {
                "nobody approved it in time; make a new request and ask an approver to run \
                 `moshca approve ID`"
            }
            Error::TimedOut { .. } => {
                "ask an approver first, or wait longer with --timeout (e.g. --timeout 30m)"
            }
            Error::Cancelled { .. } => "make a new request",
            Error::Pending { id } => {
                return Some(format!(
                    "wait for an approver; `moshca status {id}` shows who may approve"
                ));
            }
            Error::CertificateExpired { .. } => "make a new request",
            Error::CertificateMismatch { .. } => {
                "nothing was added to ssh-agent; report this to the CA operator"
            }
            Error::BadResponse(_) => {
                "check that MOSHCA_SERVER points at a moshca server of a matching version"
            }
            Error::NotReplaced {
                refusal: Refusal::Rollback { .. },
                path,
            } => {
                return Some(format!(
                    "the installed file was kept; an older KRL could un-revoke certificates. \
                     If the CA was restored from a backup on purpose, delete {} and run again",
                    path.display()
                ));
            }
            Error::NotReplaced { .. } => {
                "the installed file was kept and sshd keeps using it; check that MOSHCA_SERVER \
                 points at a moshca server of a matching version, or tell the CA operator"
            }
            Error::NoSshKeygen { .. } => {
                "install OpenSSH's ssh-keygen (Debian/Ubuntu: apt-get install openssh-client), \
                 or pass --no-check to install the KRL after checking only its header"
            }
            Error::Install { .. } => {
                "the old file, if any, was kept; check that the directory exists and that you \
                 may write to it (files under /etc/ssh need root)"
            }
            Error::NoIdToken { .. } => {
                "GitLab CI: give the job `id_tokens: { MOSHCA_ID_TOKEN: { aud: moshca } }`; \
                 GitHub Actions: give the job `permissions: id-token: write`; elsewhere put the \
                 job's OIDC ID token in MOSHCA_ID_TOKEN"
            }
            Error::BadIdToken { .. } => {
                "MOSHCA_ID_TOKEN must hold the job's OIDC ID token (a JWT: three base64url parts \
                 joined by dots), not a moshca `mca_...` token"
            }
            Error::IdTokenRequest { .. } => {
                "check that the job has `permissions: id-token: write`, then run the job again; \
                 or put an ID token in MOSHCA_ID_TOKEN"
            }
            Error::IdTokenRejected { claims, .. } => {
                return Some(format!(
                    "the CA accepts an ID token once, while it is fresh, from an issuer in its \
                     config.toml ([[oidc.issuer]]) and with that issuer's audience (GitHub \
                     Actions: --audience or MOSHCA_OIDC_AUDIENCE, default moshca); {}",
                    claims_note(claims)
                ));
            }
            Error::WorkloadDenied { claims, .. } => {
                return Some(format!(
                    "the role needs approval = \"auto\" and a `workloads` entry in the CA's \
                     policy.toml matching this job's issuer and claims; {}",
                    claims_note(claims)
                ));
            }
            Error::NoCiDestination => {
                "pass --out DIR (e.g. --out \"$RUNNER_TEMP/moshca\") to get key and \
                 certificate files, or start an agent with `eval \"$(ssh-agent)\"`"
            }
            Error::NotAutoApproved { .. } => {
                "CI jobs need a role with approval = \"auto\" and `workloads` in the CA's \
                 policy.toml; ask the CA operator"
            }
            Error::NotAuditor { .. } => {
                "the audit trail is for the policy's auditors: ask the CA operator to add you or \
                 your group to `auditors` under [defaults] in policy.toml (defaults.auditors, \
                 e.g. auditors = [\"group:audit\"])"
            }
            Error::HostSync { .. } => {
                "the files named were kept as they were and sshd keeps using them; fix the \
                 errors above (the host timer retries every minute)"
            }
            Error::Invalid { .. } => {
                "change the flag the message names (`moshca whoami` lists your roles; the CA \
                 operator can tell you a role's limits)"
            }
            Error::UnknownRole {
                suggestion,
                requestable,
                ..
            } => {
                let roles = if requestable.is_empty() {
                    "you may request no role; ask the CA operator to add you to one".to_owned()
                } else {
                    format!("roles you may request: {}", requestable.join(", "))
                };
                return Some(match suggestion {
                    Some(role) => format!("did you mean --role {role}? {roles}"),
                    None => roles,
                });
            }
            Error::StillPending { id, .. } => {
                return Some(format!(
                    "once it is approved, run `moshca login --resume {id}` on this machine to \
                     load the certificate; `moshca cancel {id}` withdraws it"
                ));
            }
            Error::NoRuntimeDir => {
                "run under a login session (systemd sets XDG_RUNTIME_DIR), or wait without \
                 --keep-pending (a longer --timeout)"
            }
            Error::NothingToResume { .. } => {
                "only a `moshca login --keep-pending` that stopped on this machine, as this user, \
                 can be resumed, and only until you log out; start a new `moshca login`"
            }
            Error::SsoDisabled { .. } => {
                "people sign in to this CA with a token: set MOSHCA_TOKEN or MOSHCA_TOKEN_FILE \
                 (ask the CA operator for one with `moshca-server user token NAME`); the \
                 operator enables SSO with an [sso] section in the CA's config.toml"
            }
            Error::SignIn { .. } => {
                "check that the identity provider is reachable from here, then run `moshca \
                 auth login` again (`moshca auth login --device` signs in from another device)"
            }
            Error::SignInRefused { .. } => {
                "nothing was saved; run `moshca auth login` again, and sign in only from the \
                 page moshca opened or printed"
            }
            Error::SignInTimedOut { .. } => {
                "run `moshca auth login` again and finish signing in within the time shown \
                 (`--device` prints a code to enter on any device)"
            }
            Error::NotSignedIn | Error::SessionEnded { .. } => {
                "sign in with `moshca auth login` (`--device` to sign in from another device); \
                 service accounts use a token (MOSHCA_TOKEN or MOSHCA_TOKEN_FILE)"
            }
            Error::SessionRefused { .. } => {
                "nothing was saved; run `moshca auth login` again, and if the CA still refuses, \
                 show this message to the CA operator"
            }
            Error::ExposedSecret { .. } => {
                "a file holding a token must belong to you and grant no access to group or \
                 others, as ssh requires of private keys"
            }
            Error::Read { .. }
            | Error::Write { .. }
            | Error::Stdout(_)
            | Error::Key(_)
            | Error::HostCert { .. }
            | Error::Interrupted { .. } => return None,
        };
        Some(hint.to_owned())
    }
}

/// What to do after the server refused a call with `code`.
///
/// The server's own messages already say what to do next for refusals it decides
/// (PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT), so only codes
/// where the fix is on the client's side get a hint.
fn rpc_hint(code: Code) -> Option<&'static str> {
    match code {
        Code::Unauthenticated => Some(TOKEN_HINT),
        Code::Unavailable => Some(SERVER_HINT),
        Code::DeadlineExceeded => Some("the server did not answer in time; try again"),
        Code::ResourceExhausted => Some("wait a little and try again"),
        _ => None,
    }
}

/// Prints `err` to stderr as `moshca: error: ...` and, if there is one, `moshca: hint: ...`.
pub fn report(err: &Error) {
    crate::progress::eprint(&format!("moshca: error: {err}\n"));
    if let Some(hint) = err.hint() {
        crate::progress::eprint(&format!("moshca: hint: {hint}\n"));
    }
}

/// The error for a refused `CreateAccessRequest`: the server's validation refusals (an
/// INVALID_ARGUMENT, or a ttl above the role's max_ttl, which it refuses as
/// PERMISSION_DENIED) become [`Error::Invalid`], so every bad argument exits alike.
pub fn create_refused(status: &tonic::Status) -> Error {
    let err = Error::rpc("create request", status);
    let ttl_over_max =
        status.code() == Code::PermissionDenied && status.message().contains("max_ttl");
    if status.code() == Code::InvalidArgument || ttl_over_max {
        return Error::Invalid {
            message: err.to_string(),
        };
    }
    err
}

/// The role in `roles` closest to the mistyped `role`, if one is close enough to be a typo.
pub fn closest_role(role: &str, roles: &[String]) -> Option<String> {
    let limit = (role.chars().count() / 3).max(1);
    roles
        .iter()
        .map(|r| (strsim::damerau_levenshtein(role, r), r))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, r)| r.clone())
}

/// `text` with line breaks folded into spaces, so every error stays one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `source()` chain of `err` (not `err` itself), joined with ": ".
pub(crate) fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = one_line(&cause.to_string());
        // hyper and tonic repeat their cause in their own message; keep each text once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<(Error, u8)> {
        let io = || io::Error::new(io::ErrorKind::NotFound, "gone");
        let rpc = |code| Error::rpc("create request", &tonic::Status::new(code, "no"));
        vec![
            (Error::MissingServer, 1),
            (Error::MissingCaCert, 1),
            (
                Error::BadServerUrl {
                    url: "x".into(),
                    reason: "y".into(),
                },
                1,
            ),
            (
                Error::ConfigFile {
                    path: "c".into(),
                    message: "m".into(),
                },
                1,
            ),
            (Error::MissingToken, 1),
            (
                Error::BadToken {
                    origin: "MOSHCA_TOKEN".into(),
                    reason: "empty",
                },
                1,
            ),
            (
                Error::Read {
                    what: "token file",
                    path: "t".into(),
                    source: io(),
                },
                1,
            ),
            (
                Error::Write {
                    path: "o".into(),
                    source: io(),
                },
                1,
            ),
            (Error::Stdout(io()), 1),
            (Error::BadCaCert { path: "c".into() }, 1),
            (
                Error::Connect {
                    server: "s".into(),
                    detail: "d".into(),
                },
                1,
            ),
            (rpc(Code::Unauthenticated), 1),
            (rpc(Code::Unavailable), 1),
            (rpc(Code::InvalidArgument), 1),
            (rpc(Code::NotFound), 1),
            (rpc(Code::FailedPrecondition), 1),
            (rpc(Code::Internal), 1),
            (rpc(Code::PermissionDenied), 3),
            (Error::NoAgent, 1),
            (
                Error::Agent {
                    socket: "a".into(),
                    detail: "d".into(),
                },
                1,
            ),
            (
                Error::PublicKey {
                    path: "k".into(),
                    detail: "d".into(),
                },
                1,
            ),
            (Error::Key("k".into()), 1),
            (
                Error::Denied {
                    id: "r".into(),
                    by: "bob".into(),
                    reason: "no".into(),
                },
                3,
            ),
            (Error::Expired { id: "r".into() }, 4),
            (
                Error::TimedOut {
                    id: "r".into(),
                    after: "10m".into(),
                    cancelled: true,
                },
                4,
            ),
            (
                Error::Interrupted {
                    id: "r".into(),
                    cancelled: true,
                },
                130,
            ),
            (
                Error::StillPending {
                    id: "r".into(),
                    after: None,
                    expires: "t".into(),
                },
                130,
            ),
            (
                Error::StillPending {
                    id: "r".into(),
                    after: Some("10m".into()),
                    expires: "t".into(),
                },
                4,
            ),
            (
                Error::Invalid {
                    message: "m".into(),
                },
                2,
            ),
            (
                Error::UnknownRole {
                    message: "m".into(),
                    suggestion: None,
                    requestable: vec![],
                },
                3,
            ),
            (Error::NoRuntimeDir, 1),
            (
                Error::NothingToResume {
                    id: "r".into(),
                    dir: "d".into(),
                },
                1,
            ),
            (Error::Cancelled { id: "r".into() }, 1),
            (Error::Pending { id: "r".into() }, 1),
            (
                Error::CertificateExpired {
                    id: "r".into(),
                    at: "t".into(),
                },
                4,
            ),
            (
                Error::CertificateMismatch {
                    id: "r".into(),
                    detail: "d".into(),
                },
                1,
            ),
            (Error::BadResponse("b".into()), 1),
            (
                Error::NotReplaced {
                    path: "k".into(),
                    refusal: Refusal::Rollback {
                        installed: 5,
                        offered: 4,
                    },
                },
                1,
            ),
            (
                Error::NotReplaced {
                    path: "k".into(),
                    refusal: Refusal::NoKeys,
                },
                1,
            ),
            (
                Error::NoSshKeygen {
                    program: "ssh-keygen".into(),
                    source: io(),
                },
                1,
            ),
            (
                Error::Install {
                    path: "k".into(),
                    step: "write",
                    source: io(),
                },
                1,
            ),
            (
                Error::HostSync {
                    failed: vec!["a".into(), "b".into()],
                },
                1,
            ),
            (Error::NoIdToken { detail: "d" }, 1),
            (
                Error::BadIdToken {
                    origin: "MOSHCA_ID_TOKEN".into(),
                    reason: "r",
                },
                1,
            ),
            (Error::IdTokenRequest { detail: "d".into() }, 1),
            (
                Error::IdTokenRejected {
                    message: "create request: expired".into(),
                    claims: "iss=x".into(),
                },
                1,
            ),
            (
                Error::WorkloadDenied {
                    message: "create request: no".into(),
                    claims: String::new(),
                },
                3,
            ),
            (Error::NoCiDestination, 1),
            (
                Error::NotAuditor {
                    message: "list audit events: no".into(),
                },
                3,
            ),
            (
                Error::NotAutoApproved {
                    id: "r".into(),
                    role: "deploy".into(),
                    cancelled: true,
                },
                1,
            ),
        ]
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        for (err, code) in every_kind() {
            assert_eq!(err.exit_code(), code, "{err:?}");
        }
        assert_eq!(exit::OK, 0);
        assert_eq!(exit::USAGE, 2);
    }

    #[test]
    fn messages_are_one_line() {
        for (err, _) in every_kind() {
            let text = err.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
            if let Some(hint) = err.hint() {
                assert!(!hint.contains('\n'), "{hint:?}");
            }
        }
        let multi = Error::rpc(
            "approve",
            &tonic::Status::permission_denied("you may not\napprove this"),
        );
        assert_eq!(multi.to_string(), "approve: you may not approve this");
    }

    #[test]
    fn hints_say_what_to_do() {
        let unauth = Error::rpc("whoami", &tonic::Status::unauthenticated("bad token"));
        let hint = unauth.hint().unwrap();
        assert!(hint.contains("MOSHCA_TOKEN") && hint.contains("MOSHCA_TOKEN_FILE"));
        assert!(hint.contains("moshca-server user token NAME"));

        let down = Error::rpc("whoami", &tonic::Status::unavailable("down"));
        assert!(down.hint().unwrap().contains("MOSHCA_SERVER"));

        assert!(Error::MissingServer.hint().unwrap().contains("--server"));
        assert!(
            Error::NoAgent
                .hint()
                .unwrap()
                .contains("eval \"$(ssh-agent)\"")
        );
    }

    #[test]
    fn ci_hints_name_both_ci_systems_and_the_claims() {
        let hint = Error::NoIdToken { detail: "d" }.hint().unwrap();
        assert!(
            hint.contains("id_tokens") && hint.contains("MOSHCA_ID_TOKEN"),
            "{hint}"
        );
        assert!(hint.contains("id-token: write"), "{hint}");
        let denied = Error::WorkloadDenied {
            message: "create request: no workload matches".into(),
            claims: "iss=https://gh repository=acme/app ref=refs/heads/dev".into(),
        };
        assert!(denied.hint().unwrap().contains("ref=refs/heads/dev"));
        assert_eq!(denied.to_string(), "create request: no workload matches");
        let rejected = Error::IdTokenRejected {
            message: "m".into(),
            claims: String::new(),
        };
        assert!(rejected.hint().unwrap().contains("could not be read"));
    }

    #[test]
    fn refused_installs_say_the_old_file_was_kept() {
        let rollback = Error::NotReplaced {
            path: "/etc/ssh/moshca.krl".into(),
            refusal: Refusal::Rollback {
                installed: 5,
                offered: 4,
            },
        };
        assert_eq!(
            rollback.to_string(),
            "not replacing /etc/ssh/moshca.krl: the server's KRL has version 4, older than the \
             installed version 5"
        );
        let hint = rollback.hint().unwrap();
        assert!(hint.contains("kept") && hint.contains("delete /etc/ssh/moshca.krl"));

        let sync = Error::HostSync {
            failed: vec![
                "/etc/ssh/moshca_ca.pub".into(),
                "/etc/ssh/moshca.krl".into(),
            ],
        };
        assert_eq!(
            sync.to_string(),
            "not updated: /etc/ssh/moshca_ca.pub, /etc/ssh/moshca.krl"
        );
    }

    #[test]
    fn a_ttl_below_the_minimum_and_above_the_maximum_exit_alike() {
        let low = create_refused(&tonic::Status::invalid_argument(
            "ttl 30s is below the minimum of 1m",
        ));
        let high = create_refused(&tonic::Status::permission_denied(
            "ttl 2h exceeds role db's max_ttl 1h",
        ));
        assert_eq!(low.exit_code(), exit::USAGE);
        assert_eq!(high.exit_code(), exit::USAGE);
        assert_eq!(
            high.to_string(),
            "create request: ttl 2h exceeds role db's max_ttl 1h"
        );
        let other = create_refused(&tonic::Status::permission_denied("not a requester"));
        assert_eq!(other.exit_code(), exit::DENIED);
    }

    #[test]
    fn a_mistyped_role_gets_the_closest_one() {
        let roles = vec![
            "db-oncall".to_owned(),
            "deploy".to_owned(),
            "web".to_owned(),
        ];
        assert_eq!(
            closest_role("db-oncal", &roles).as_deref(),
            Some("db-oncall")
        );
        assert_eq!(
            closest_role("dbo-ncall", &roles).as_deref(),
            Some("db-oncall")
        );
        assert_eq!(closest_role("wbe", &roles).as_deref(), Some("web"));
        assert_eq!(closest_role("payments", &roles), None);
        let err = Error::UnknownRole {
            message: "create request: no".into(),
            suggestion: Some("db-oncall".into()),
            requestable: roles,
        };
        assert_eq!(
            err.hint().unwrap(),
            "did you mean --role db-oncall? roles you may request: db-oncall, deploy, web"
        );
    }

    #[test]
    fn a_kept_request_says_how_to_resume() {
        let err = Error::StillPending {
            id: "01JREQ".into(),
            after: Some("10s".into()),
            expires: "2025-01-01T01:00:00Z".into(),
        };
        assert_eq!(
            err.to_string(),
            "stopped waiting for request 01JREQ after 10s; it stays pending until \
             2025-01-01T01:00:00Z"
        );
        assert!(err.hint().unwrap().contains("moshca login --resume 01JREQ"));
    }

    #[test]
    fn empty_status_message_falls_back_to_the_code() {
        let err = Error::rpc("whoami", &tonic::Status::new(Code::Internal, ""));
        assert_eq!(err.to_string(), "whoami: Internal error");
    }

    #[test]
    fn denial_names_the_approver_and_reason() {
        let mut req = AccessRequest {
            id: "01JREQ".into(),
            ..AccessRequest::default()
        };
        req.reviews = vec![moshca_proto::v1::Review {
            approver: "bob".into(),
            decision: Decision::Deny as i32,
            comment: "use the replica".into(),
            at: 1,
        }];
        let err = Error::denied(&req);
        assert_eq!(
            err.to_string(),
            "request 01JREQ was denied by bob: use the replica"
        );
        assert_eq!(err.exit_code(), 3);
        req.reviews[0].comment.clear();
        assert!(Error::denied(&req).to_string().ends_with("no reason given"));
    }

    #[test]
    fn a_refused_audit_read_names_defaults_auditors() {
        let err = Error::audit(&tonic::Status::permission_denied(
            "only the policy's auditors (defaults.auditors) may read the audit trail",
        ));
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "list audit events: only the policy's auditors (defaults.auditors) may read the \
             audit trail"
        );
        let hint = err.hint().unwrap();
        assert!(
            hint.contains("[defaults]") && hint.contains("auditors"),
            "{hint}"
        );

        let other = Error::audit(&tonic::Status::invalid_argument("bad request id"));
        assert!(matches!(other, Error::Rpc { .. }), "{other:?}");
        assert_eq!(other.exit_code(), 1);
    }
}
