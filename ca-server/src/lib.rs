//! moshca-server: a short-lived SSH certificate authority.
//!
//! An engineer asks for access to a role, another person approves, and the CA signs an
//! OpenSSH user certificate valid only for the approved principals and time window.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`config`] | `config.toml` -> validated [`config::Config`] (pure) |
//! | [`policy`] | roles, selectors, request checks (pure) |
//! | [`approvals`] | the request state machine (pure, takes `now`) |
//! | [`signer`] | owns the CA keys (user and host, kept apart); grant + subject key -> certificate |
//! | [`auth`] | bearer tokens -> [`auth::Caller`] |
//! | [`limits`] | per-peer limits on failed authentication, per-caller limits on refusals |
//! | [`tls`] | the server's TLS certificate and key, replaced on SIGHUP |
//! | [`text`] | bounds of caller-supplied strings, the free-text rule, escaping for logs |
//! | [`oidc`] | CI jobs' OIDC ID tokens -> verified workload identity |
//! | [`sso`] | people's ID tokens from the `[sso]` identity provider -> verified sign-in |
//! | [`sessions`] | CA sessions from SSO sign-ins, for the operator's `session` commands |
//! | [`authority`] | use cases; orchestrates the above with the store and audit |
//! | [`store`] | the storage port: all SQL and migrations, SQLite and PostgreSQL |
//! | [`audit`] | audit events, hash chain, verification |
//! | [`krl`] | OpenSSH key revocation list encoder (pure) |
//! | [`notify`] | webhook notifications from the outbox, beside issuance, retried |
//! | [`metrics`] | the Prometheus registry, every metric's name, the `/metrics` listener |
//! | [`users`] | user accounts and tokens, for the operator's commands |
//! | [`init`] | creating a data directory |
//! | [`files`] | atomic, checked writes of files hosts depend on |
//! | [`secret_file`] | the one rule for secret files and the data directory: owner only |
//! | [`rotation`] | CA key rotation: publish a new key, keep the old one while needed |
//! | [`ca_keys`] | CA public keys held as files: the only keys hosts, clients and checkpoints trust |
//! | [`convert`] | proto <-> domain, and the one error -> `tonic::Status` mapping |
//! | [`service`] | the gRPC service: authenticate, convert, call `authority` |
//! | [`server`] | transport: TLS, health, reflection, background tasks, shutdown |
//! | [`clock`] | the only reader of the wall clock |

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod ca_keys;
pub mod cli;
pub mod clock;
pub mod config;
pub mod convert;
pub mod files;
pub mod init;
pub mod krl;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod policy;
pub mod rotation;
pub mod secret_file;
pub mod server;
pub mod service;
pub mod sessions;
pub mod signer;
pub mod sso;
pub mod store;
pub mod text;
pub mod tls;
pub mod users;
