//! `moshca`, the command-line client of the moshca SSH certificate authority.
//!
//! An engineer runs `moshca login --role R --reason TEXT`; the client makes an in-memory
//! ed25519 key, asks the CA for a certificate, waits while a colleague approves, and loads
//! key and certificate into ssh-agent for exactly the certificate's lifetime. The other
//! commands request, inspect, approve, deny, cancel, revoke, review break-glass access and
//! read the audit trail; `moshca login --break-glass` skips the wait where the role allows
//! it, and the request stays flagged until reviewed. `moshca host sync` keeps a
//! host's CA keys and KRL current. A CI job runs `moshca ci --role R` with its OIDC ID token
//! instead of a moshca token, and gets an auto-approved certificate at once.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`cli`] | clap declarations: arguments, subcommands, help text |
//! | [`config`] | settings: flags, then environment, then `~/.config/moshca/config.toml` |
//! | [`rpc`] | TLS channel to the server, bearer token on every call |
//! | [`keys`] | the ephemeral key of `login` and `ci`; reading public key files for `request` |
//! | [`login`] | the login flow: request, wait, check, load into the agent |
//! | [`ci`] | the CI flow: ID token, request, check, into the agent or `--out DIR` |
//! | [`oidc`] | the CI job's ID token: `MOSHCA_ID_TOKEN` or GitHub Actions' endpoint |
//! | [`wait`] | following a request until it is decided, times out or is interrupted |
//! | [`agent`] | adding key + certificate to ssh-agent with a lifetime |
//! | [`commands`] | every command but `login`: a call or two and a result |
//! | [`setup`] | `moshca setup`: pin the CA's TLS certificate by fingerprint, write the config |
//! | [`hosts`] | host certificates: enrol, renew, `known-hosts` lines |
//! | [`install`] | replacing the files sshd trusts (CA keys, KRL) atomically, with checks |
//! | [`output`] | the only writer of stdout: human text or `--json` |
//! | [`error`] | the error type, its hints and exit codes |
//! | [`clock`] | the one reader of the wall clock |
//! | [`live`] | `status` without an id and `logout`: live certificates, moshca's in the agent |
//! | [`metrics`] | the node_exporter textfile of `host sync --textfile` |
//! | [`pending`] | keys `login --keep-pending` keeps in memory for `login --resume` |
//! | [`progress`] | the stderr writer that keeps notices and logs off the spinner line |
//! | [`auth`] | `auth login/status/logout`, and which credential commands send |
//! | [`sso`] | signing in at the identity provider: browser with PKCE, or device grant |
//! | [`session`] | the CA session file, 0600 |
//!
//! `main.rs` only parses arguments, sets up logging and calls [`run`].

pub mod agent;
pub mod auth;
pub mod ci;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod hosts;
pub mod install;
pub mod keys;
pub mod live;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod output;
pub mod pending;
pub mod progress;
pub mod rpc;
pub mod session;
pub mod setup;
pub mod sso;
pub mod wait;

use crate::cli::{Cli, Command, HostCommand};
use crate::error::{Error, Result};
use crate::output::Output;

/// Runs one `moshca` command.
pub async fn run(cli: Cli) -> Result<()> {
    // Neither needs a server, a token or the config file.
    match &cli.command {
        Command::Completion(args) => {
            return Output::new(false).completion(&completion_script(args.shell));
        }
        Command::Logout => {
            let socket = config::Env::from_process()
                .ssh_auth_sock
                .ok_or(Error::NoAgent)?;
            return live::logout(&socket, Output::new(cli.global.json)).await;
        }
        _ => {}
    }
    let env = config::Env::from_process();
    let flags = config::Flags {
        server: cli.global.server.clone(),
        ca_cert: cli.global.ca_cert.clone(),
        token_file: cli.global.token_file.clone(),
    };
    let out = Output::new(cli.global.json);
    // Setup writes the settings everything else reads.
    if let Command::Setup(args) = &cli.command {
        let path = env.config_path().ok_or(Error::NoConfigDir)?;
        let server = flags
            .server
            .as_deref()
            .or(env.server.as_deref())
            .ok_or(Error::MissingServer)?;
        let written = setup::setup(server, &args.fingerprint, &path).await?;
        return out.set_up(&written);
    }
    let settings = config::load(&flags, &env)?;
    if let Command::Auth(command) = &cli.command {
        return auth::run(command, &settings, &env, out).await;
    }

    // A CI job authenticates with its OIDC ID token; a moshca token is neither needed nor
    // sent.
    if let Command::Ci(args) = &cli.command {
        return ci::run(&settings, &env, args, out).await;
    }

    let agent_socket = match &cli.command {
        Command::Login(_) => Some(env.ssh_auth_sock.as_deref().ok_or(Error::NoAgent)?),
        _ => None,
    };
    // The CA public keys and the KRL are public: hosts have no token, and the token is not
    // sent where it is not needed.
    let mut client = match &cli.command {
        Command::CaKeys(_) | Command::Krl(_) | Command::Host(_) | Command::KnownHosts(_) => {
            rpc::connect(&settings.server, &settings.ca_cert, None).await?
        }
        // A configured token, else the SSO session (signing in first when needed).
        _ => auth::connect(&settings, &env).await?,
    };

    match (&cli.command, agent_socket) {
        (Command::Login(args), Some(socket)) => {
            let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from);
            login::run(&mut client, args, socket, runtime_dir.as_deref(), out).await
        }
        (Command::Login(_), None) => Err(Error::NoAgent),
        (Command::Request(args), _) => commands::request(&mut client, args, out).await,
        (Command::Status(args), _) => match &args.id {
            Some(id) => commands::status(&mut client, id, out).await,
            None => live::status(&mut client, env.ssh_auth_sock.as_deref(), out).await,
        },
        (Command::Fetch(args), _) => commands::fetch(&mut client, args, out).await,
        (Command::Cancel(args), _) => commands::cancel(&mut client, &args.id, out).await,
        (Command::Requests(args), _) => commands::requests(&mut client, args, out).await,
        (Command::Approve(args), _) => commands::approve(&mut client, args, out).await,
        (Command::Deny(args), _) => commands::deny(&mut client, args, out).await,
        (Command::Review(args), _) => commands::review(&mut client, args, out).await,
        (Command::Audit(args), _) => commands::audit(&mut client, args, out).await,
        (Command::Revoke(args), _) => commands::revoke(&mut client, args, out).await,
        (Command::CaKeys(args), _) => commands::ca_keys(&mut client, args, out).await,
        (Command::Krl(args), _) => commands::krl(&mut client, args, out).await,
        (Command::Host(HostCommand::Sync(args)), _) => {
            commands::host_sync(&mut client, args, out).await
        }
        (Command::Host(HostCommand::Enroll(args)), _) => {
            hosts::enroll(&mut client, args, out).await
        }
        (Command::Host(HostCommand::Renew(args)), _) => hosts::renew(&mut client, args, out).await,
        (Command::KnownHosts(args), _) => hosts::known_hosts(&mut client, args, out).await,
        (Command::Whoami, _) => commands::whoami(&mut client, out).await,
        (Command::Ci(args), _) => ci::run(&settings, &env, args, out).await,
        (Command::Setup(_), _) => unreachable!("setup returned above"),
        (Command::Auth(_), _) => unreachable!("auth returned above"),
        (Command::Logout | Command::Completion(_), _) => Ok(()),
    }
}

/// The completion script for `shell`, generated from the clap declarations.
pub fn completion_script(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "moshca", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}
