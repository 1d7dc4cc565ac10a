//! Transport: TLS, limits, the health and reflection services, background tasks, signals
//! and graceful shutdown.
//!
//! [`run`] takes a bound listener so tests can bind port 0 and drive the real server;
//! [`serve`] builds everything from a data directory for the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use moshca_proto::v1::certificate_authority_server::CertificateAuthorityServer;
use tokio::net::TcpListener;

use crate::authority::Authority;
use crate::clock;
use crate::config::Config;
use crate::notify::Notifier;
use crate::oidc::Verifier;
use crate::policy::Policy;
use crate::secret_file;
use crate::service::Service;
use crate::signer::Signer;
use crate::store::Store;

/// Largest accepted gRPC message. Requests are small; a public key is at most 16 KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub use crate::service::MAX_RESPONSE_BYTES;

/// Serves the API on `listener` until `shutdown` completes, with the expiry sweeper and
/// the notification worker beside it.
pub async fn run(
    listener: TcpListener,
    authority: Arc<Authority>,
    verifier: Arc<Verifier>,
    notifier: Notifier,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CertificateAuthorityServer<Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(moshca_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let jwks = tokio::spawn(refresh_jwks(verifier.clone()));
    let sso_jwks = authority
        .sso()
        .cloned()
        .map(|sso| tokio::spawn(refresh_sso_jwks(sso)));
    let service = Service::new(authority.clone(), verifier, stop_rx)
        .with_break_glass_hooks(notifier.subscribers("request.break_glass"));
    let api = CertificateAuthorityServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);

    // Sign the head found at start: events written while no server ran (operator
    // commands, or the last seconds before a crash) are covered from now on.
    let a = authority.clone();
    match tokio::task::spawn_blocking(move || a.checkpoint_at(clock::now())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint at start failed"),
        Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
    }
    let sweeper = tokio::spawn(expire_pending(authority.clone(), health.clone()));
    // Deliveries are off the request path: handlers only commit outbox rows, and a
    // delivery cut short by shutdown is sent again on the next start.
    let claims = notifier.claims();
    let notifications = tokio::spawn(notifier.run(authority.subscribe()));

    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(256))
        .max_frame_size(Some(16 * 1024))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(crate::metrics::Observed(crate::service::TokenExpiryHeader(
            api,
        )));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let result = match tls {
        Some(tls) => {
            let (incoming, acceptor) = tls.incoming(listener);
            let served = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            acceptor.abort();
            served
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    // TCP_NODELAY: without it Nagle's algorithm and delayed ACKs add
                    // ~40 ms to every small request/response exchange.
                    tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(Duration::from_secs(60))),
                    shutdown,
                )
                .await
        }
    }
    .context("serving gRPC");
    sweeper.abort();
    notifications.abort();
    // A delivery cut short here is due again at once: sent on the next start, or now by
    // another replica.
    match tokio::task::spawn_blocking(move || claims.release_at(clock::now())).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(deliveries = n, "notifications in flight given back"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "giving back notifications in flight failed; they are sent when their claim ends")
        }
        Err(e) => tracing::warn!(error = %e, "giving back notifications in flight failed"),
    }
    jwks.abort();
    if let Some(task) = sso_jwks {
        task.abort();
    }
    // Sign the final head so a tail cut after shutdown is detected.
    let a = authority.clone();
    match tokio::task::spawn_blocking(move || a.checkpoint_at(clock::now())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "final audit checkpoint failed"),
        Err(e) => tracing::error!(error = %e, "final audit checkpoint task failed"),
    }
    result
}

/// Keeps the OIDC issuers' keys fresh: once a second, refetches the key sets near the end
/// of their lifetime, off the request path.
async fn refresh_jwks(verifier: Arc<Verifier>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let v = verifier.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || v.refresh_due_at(clock::now())).await {
            tracing::error!(error = %e, "JWKS refresh task failed");
        }
    }
}

/// Keeps the `[sso]` identity provider's keys fresh, as [`refresh_jwks`] does for CI
/// issuers; a separate verifier, so people's and CI jobs' tokens never share one.
async fn refresh_sso_jwks(sso: Arc<crate::sso::SsoVerifier>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let v = sso.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || v.refresh_due_at(clock::now())).await {
            tracing::error!(error = %e, "SSO JWKS refresh task failed");
        }
    }
}

/// Expires pending requests once a second (cheap thanks to the (state, expires_at) index)
/// and forgets consumed token ids once a minute. Its write each second doubles as the
/// store's probe: health says NOT_SERVING while the store cannot commit, and SERVING again
/// after its next commit.
async fn expire_pending(authority: Arc<Authority>, health: tonic_health::server::HealthReporter) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    let mut serving = true;
    loop {
        tick.tick().await;
        n += 1;
        let a = authority.clone();
        let purge = n.is_multiple_of(60);
        let checkpoint = n.is_multiple_of(crate::audit::CHECKPOINT_EVERY_SECS);
        match tokio::task::spawn_blocking(move || {
            if purge {
                a.purge_jti_at(clock::now())?;
            }
            if checkpoint {
                a.periodic_checkpoint_at(clock::now())?;
            }
            a.expire_due_at(clock::now())
        })
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "expiring pending requests failed"),
            Err(e) => tracing::error!(error = %e, "expiry task failed"),
        }
        let can_commit = authority.store_can_commit();
        if can_commit != serving {
            serving = can_commit;
            if serving {
                tracing::info!("the store commits again; health: SERVING");
                health
                    .set_serving::<CertificateAuthorityServer<Service>>()
                    .await;
            } else {
                tracing::error!("the store cannot commit; health: NOT_SERVING");
                health
                    .set_not_serving::<CertificateAuthorityServer<Service>>()
                    .await;
            }
        }
    }
}

pub use crate::secret_file::read_passphrase;

/// Everything `run` serves, loaded from a data directory.
#[derive(Debug)]
pub struct Loaded {
    /// The use cases.
    pub authority: Arc<Authority>,
    /// OIDC token verification for CI workloads.
    pub verifier: Arc<Verifier>,
    /// Webhook notifications, for [`run`] to start.
    pub notifier: Notifier,
    /// The TLS certificate and key.
    pub tls: Arc<crate::tls::Tls>,
}

/// Loads policy, store, CA key, OIDC issuers, webhooks and TLS certificate from the data
/// directory.
pub fn open(config: &Config, passphrase_file: Option<&Path>) -> anyhow::Result<Loaded> {
    secret_file::check_data_dir(&config.data_dir, config.database.sqlite_path())?;
    if let crate::store::Database::Postgres(url) = &config.database
        && url.has_password()
    {
        secret_file::check_private(&config.data_dir.join("config.toml"), "config.toml")?;
    }
    let policy = load_policy(config)?;
    let signer = load_signer(config, passphrase_file)?;
    let store = Arc::new(
        Store::open(&config.database)
            .with_context(|| format!("opening database {}", config.database))?,
    );
    // Once a second: pages rewritten within the second (the ends of the tables and
    // indexes) are copied to the database file once, not once per checkpoint. The WAL
    // restarts past 65,536 pages (256 MiB); at full load that is every few seconds, and a
    // restart holds writers for a few milliseconds.
    store
        .checkpoint_in_background(Duration::from_secs(1), 65_536)
        .context("starting the WAL checkpoint thread")?;
    let notifier = Notifier::new(store.clone(), &config.webhooks)?;
    store.set_outbox(!config.webhooks.is_empty());
    let tls = Arc::new(crate::tls::Tls::load(&config.tls_cert, &config.tls_key)?);
    tracing::info!(fingerprint = %tls.fingerprint(), "TLS certificate loaded");
    tracing::info!(ca = %signer.fingerprint(), "CA key loaded");
    let key_files = crate::ca_keys::KeyFiles::of(config);
    key_files.write_missing_public_files();
    let host_signer = load_host_signer(config, passphrase_file, &store)?;
    tracing::info!(host_ca = %host_signer.fingerprint(), "host CA key loaded");
    let host_ca = crate::authority::HostCa::new(
        host_signer,
        Some(crate::ca_keys::HostKeyFiles::of(config)),
        config.host_cert_ttl,
    );
    let mut authority = Authority::new(store, signer, policy, clock::now())?
        .with_key_files(key_files)
        .with_checkpoint_file(config.checkpoint_file.clone())
        .with_host_ca(host_ca);
    if let Some(sso) = &config.sso {
        // Checked before serving: a CA that cannot verify sign-ins says so at start,
        // not at the first person's login.
        let verifier = crate::sso::SsoVerifier::start(sso, clock::now()).map_err(|e| {
            anyhow::anyhow!("[sso] identity provider {} is not usable: {e}", sso.issuer)
        })?;
        tracing::info!(issuer = %sso.issuer, jwks_uri = %verifier.jwks_uri(), "SSO identity provider discovered");
        authority = authority.with_sso(Arc::new(verifier));
    }
    let authority = Arc::new(authority);
    authority
        .listen_for_other_replicas()
        .context("listening for other replicas' decisions")?;
    warn_if_policy_differs(&authority, config);
    Ok(Loaded {
        authority,
        verifier: Arc::new(Verifier::new(&config.oidc_issuers)),
        notifier,
        tls,
    })
}

/// On replicas: says so loudly when this replica's policy differs from the one the replica
/// before it loaded (every replica must serve the same policy.toml).
fn warn_if_policy_differs(authority: &Authority, config: &Config) {
    let Ok(text) = std::fs::read_to_string(&config.policy) else {
        return;
    };
    let digest = policy_digest(&text);
    match authority.note_policy_digest(&digest, clock::now()) {
        Ok(Some(other)) => tracing::warn!(
            sha256 = %digest, other_replica_sha256 = %other,
            "this replica's policy differs from the one another replica loaded last; every replica must serve the same policy.toml"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "recording the policy digest failed"),
    }
}

/// Loads the active CA key, refusing a key file others can read.
pub fn load_signer(config: &Config, passphrase_file: Option<&Path>) -> anyhow::Result<Signer> {
    secret_file::check_private(&config.ca_key, "CA key")?;
    let passphrase = passphrase_file
        .or(config.passphrase_file.as_deref())
        .map(read_passphrase)
        .transpose()?;
    Ok(Signer::load(
        &config.ca_key,
        passphrase.as_ref().map(|p| p.as_slice()),
    )?)
}

/// Loads the host CA key (secret-file rule), creating it when the data directory has
/// none yet: the upgrade of a data directory made before host certificates.
pub fn load_host_signer(
    config: &Config,
    passphrase_file: Option<&Path>,
    store: &Store,
) -> anyhow::Result<crate::signer::HostSigner> {
    let passphrase = passphrase_file
        .or(config.passphrase_file.as_deref())
        .map(read_passphrase)
        .transpose()?;
    crate::init::ensure_host_ca(
        config,
        passphrase.as_ref().map(|p| p.as_slice()),
        store,
        clock::now(),
    )
}

/// SIGHUP: re-read the policy and the CA key; anything invalid is refused and the old one
/// stays in force.
fn reload(authority: &Authority, config: &Config, passphrase_file: Option<&Path>) {
    let digest = std::fs::read_to_string(&config.policy)
        .map(|t| policy_digest(&t))
        .unwrap_or_default();
    match load_policy(config) {
        Ok(policy) => {
            let roles = policy.roles().count();
            match authority.replace_policy(policy, clock::now()) {
                Ok(()) => {
                    tracing::info!(roles, sha256 = %digest, "policy reloaded");
                    warn_if_policy_differs(authority, config);
                }
                Err(e) => tracing::error!(error = %e, "recording policy reload failed"),
            }
        }
        Err(e) => tracing::error!(
            "policy reload refused, keeping the old policy: {}",
            crate::text::one_line(&format!("{e:#}"))
        ),
    }
    match load_signer(config, passphrase_file) {
        Ok(signer) => {
            if let Err(e) = authority.replace_signer(signer, clock::now()) {
                tracing::error!(error = %e, "switching CA key failed; still signing with the old key");
            }
        }
        Err(e) => tracing::error!(
            "CA key reload refused, still signing with the old key: {}",
            crate::text::one_line(&format!("{e:#}"))
        ),
    }
    let host = crate::store::Store::open(&config.database)
        .map_err(anyhow::Error::from)
        .and_then(|store| load_host_signer(config, passphrase_file, &store));
    match host {
        Ok(signer) => {
            if let Err(e) = authority.replace_host_signer(signer, clock::now()) {
                tracing::error!(error = %e, "switching host CA key failed; still signing with the old key");
            }
        }
        Err(e) => {
            tracing::error!("host CA key reload refused, still signing with the old key: {e:#}")
        }
    }
}

/// SIGHUP: re-read the TLS certificate and key (renewed by the company's CA, say); an
/// invalid pair is refused and the old one stays.
fn reload_tls_files(tls: &crate::tls::Tls, config: &Config) {
    match tls.reload(&config.tls_cert, &config.tls_key) {
        Ok(true) => tracing::info!(fingerprint = %tls.fingerprint(), "TLS certificate reloaded"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            "TLS certificate reload refused, keeping the old one: {}",
            crate::text::one_line(&format!("{e:#}"))
        ),
    }
}

/// The first 16 hex digits of the SHA-256 of a policy file's text: which file is in force.
pub fn policy_digest(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_owned()
}

/// Reads and validates the policy file named by the config.
pub fn load_policy(config: &Config) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(&config.policy)
        .with_context(|| format!("reading policy {}", config.policy.display()))?;
    Ok(Policy::parse(
        &text,
        &config.policy.display().to_string(),
        config.max_ttl,
    )?)
}

/// Runs the server for the binary: bind, announce, serve until SIGTERM or Ctrl-C, reload
/// the policy on SIGHUP.
pub async fn serve(
    config: Config,
    listen: Option<SocketAddr>,
    passphrase_file: Option<&Path>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    secret_file::restrict_umask();
    let Loaded {
        authority,
        verifier,
        notifier,
        tls,
    } = {
        // Opening reads and writes the store, which on PostgreSQL must not run on the
        // async threads.
        let (c, p) = (config.clone(), passphrase_file.map(Path::to_path_buf));
        tokio::task::spawn_blocking(move || open(&c, p.as_deref()))
            .await
            .context("opening the CA")??
    };
    let addr = listen.unwrap_or(config.listen);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("binding metrics_listen {addr}; pick a free port in config.toml")
        })?),
        None => None,
    };
    if let Some(metrics) = metrics {
        tracing::info!(addr = %metrics.local_addr()?, "serving metrics at GET /metrics");
        let a = authority.clone();
        let gauges: crate::metrics::Gauges = Arc::new(move || Ok(a.metrics_gauges()?));
        tokio::spawn(crate::metrics::serve(metrics, gauges));
    }

    let mut hup = signal(SignalKind::hangup())?;
    let reload_authority = authority.clone();
    let reload_config = config.clone();
    let reload_pass = passphrase_file.map(Path::to_path_buf);
    let reload_tls = tls.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (a, c, p, t) = (
                reload_authority.clone(),
                reload_config.clone(),
                reload_pass.clone(),
                reload_tls.clone(),
            );
            let _ = tokio::task::spawn_blocking(move || {
                reload(&a, &c, p.as_deref());
                reload_tls_files(&t, &c);
            })
            .await;
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    // One line: `announce` prints it on stdout, which scripts read and journald keeps.
    announce(local);
    run(listener, authority, verifier, notifier, Some(tls), shutdown).await
}

#[allow(clippy::print_stdout)]
fn announce(addr: SocketAddr) {
    use std::io::Write as _;
    println!("moshca-server listening on https://{addr}");
    let _ = std::io::stdout().flush();
}
