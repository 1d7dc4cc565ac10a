//! Creating a data directory: CA key, TLS certificate, database, config and policy.
//!
//! Never overwrites a CA key. Makes the host CA key too ([`ensure_host_ca`], which
//! `serve` also runs to upgrade a data directory made before host certificates). Private files are created 0600 in a 0700 directory; an
//! existing directory is made 0700, and the database and its WAL/SHM files 0600.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use crate::audit::Event;
use crate::config::{self, Config};
use crate::policy;
use crate::secret_file::read_passphrase;
use crate::signer::Signer;
use crate::store::Store;

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    /// The data directory.
    pub data_dir: PathBuf,
    /// CA public key, OpenSSH line.
    pub ca_public_key: String,
    /// CA key fingerprint.
    pub ca_fingerprint: String,
    /// The TLS certificate clients must trust.
    pub tls_cert: PathBuf,
    /// Its fingerprint, for `moshca setup --fingerprint`.
    pub tls_fingerprint: String,
    /// Host CA public key, OpenSSH line (for `@cert-authority` in known_hosts).
    pub host_ca_public_key: String,
}

/// Loads the host CA key under the secret-file rule, creating it first when the data
/// directory has none (a new one, or one made before host certificates: `serve` upgrades
/// it at start). A creation is audited as `host_ca.created`. The key is never the user
/// CA key: a config naming the same file for both is refused by `Config::parse`.
pub fn ensure_host_ca(
    config: &Config,
    passphrase: Option<&[u8]>,
    store: &Store,
    now: u64,
) -> anyhow::Result<crate::signer::HostSigner> {
    use crate::signer::HostSigner;
    let path = &config.host_ca_key;
    if !path.exists() {
        let signer = HostSigner::generate(path, passphrase)
            .with_context(|| format!("creating the host CA key {}", path.display()))?;
        store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                "operator",
                "host_ca.created",
                None,
                json!({ "ca_fingerprint": signer.fingerprint() }),
            ))
        })?;
        tracing::info!(fingerprint = %signer.fingerprint(), file = %path.display(), "created the host CA key");
        return Ok(signer);
    }
    let bytes = crate::secret_file::read_secret(path, "host CA key")?;
    Ok(HostSigner::from_bytes(&bytes, path, passphrase)?)
}

/// Names the TLS certificate `init` makes is valid for, beside this host's loopback
/// names and host name: the names clients reach the CA by (`ca.example.com`).
#[derive(Debug, Clone, Default)]
pub struct TlsNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<std::net::IpAddr>,
}

impl TlsNames {
    /// Checks each DNS name: letters, digits, `-` and `.`, an optional leading `*.`, at
    /// most 253 bytes; every error at once.
    pub fn new(dns: Vec<String>, ips: Vec<std::net::IpAddr>) -> anyhow::Result<Self> {
        let bad: Vec<&str> = dns
            .iter()
            .map(String::as_str)
            .filter(|n| !valid_dns_name(n))
            .collect();
        anyhow::ensure!(
            bad.is_empty(),
            "--tls-name {}: not a DNS name (give addresses with --tls-ip)",
            bad.join(", ")
        );
        Ok(TlsNames { dns, ips })
    }
}

fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub use crate::tls::tls_fingerprint;

/// Creates everything the server needs in `data_dir`.
pub fn init(
    data_dir: &Path,
    passphrase_file: Option<&Path>,
    now: u64,
) -> anyhow::Result<Initialized> {
    init_with(
        data_dir,
        &Options {
            passphrase_file: passphrase_file.map(Path::to_path_buf),
            ..Options::default()
        },
        now,
    )
}

/// What `init` is told beyond the data directory.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Encrypt (or, with `ca_key`, decrypt) the CA keys with the passphrase in this file.
    pub passphrase_file: Option<PathBuf>,
    /// Names the TLS certificate is also valid for.
    pub tls: TlsNames,
    /// The `database` setting to write: a PostgreSQL URL (or a SQLite path); `None`
    /// keeps the SQLite default.
    pub database: Option<String>,
    /// Use this CA key instead of making one: a replica joining a database another
    /// replica made takes that replica's key.
    pub ca_key: Option<PathBuf>,
    /// With `ca_key`: the host CA key to use (default: `host_ca_key` beside `ca_key`).
    pub host_ca_key: Option<PathBuf>,
}

/// [`init`], with the [`Options`] `moshca-server init` takes.
pub fn init_with(data_dir: &Path, options: &Options, now: u64) -> anyhow::Result<Initialized> {
    let passphrase_file = options.passphrase_file.as_deref();
    let tls = &options.tls;
    if let Some(db) = &options.database {
        // Checked before anything is written: a refused join leaves no data directory.
        let db = crate::store::Database::parse(db, data_dir)
            .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
        if db.sqlite_path().is_none() {
            precheck_join(&db, options)?;
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config_path = data_dir.join("config.toml");
    if !config_path.exists() {
        let mut text = config::example(passphrase_file);
        if let Some(db) = &options.database {
            text = text.replacen(
                "database = \"moshca.db\"",
                &format!("database = {}", toml_string(db)),
                1,
            );
        }
        // A database URL carries its password: the file is then the server's alone.
        let mode = if options.database.is_some() {
            0o600
        } else {
            0o644
        };
        write_new(&config_path, text.as_bytes(), mode)?;
    }
    let config = Config::load(data_dir)?;
    if config.ca_key.exists() {
        anyhow::bail!(
            "{} already exists; refusing to overwrite a CA key (use a new --data-dir, or `moshca-server ca rotate` later)",
            config.ca_key.display()
        );
    }
    if !config.policy.exists() {
        write_new(&config.policy, policy::EXAMPLE.as_bytes(), 0o644)?;
    }
    let passphrase = passphrase_file.map(read_passphrase).transpose()?;
    let pass = passphrase.as_ref().map(|p| p.as_slice());
    let store = Store::open(&config.database)
        .with_context(|| format!("opening database {}", config.database))?;
    let in_use = store.read(|tx| tx.audit_head())?.is_some();
    if in_use && options.ca_key.is_none() {
        anyhow::bail!(
            "the database {} already serves a CA; to add a replica, give --ca-key FILE (the \
             first replica's ca_key; its host_ca_key is taken from beside it)",
            config.database
        );
    }
    let signer = match &options.ca_key {
        Some(from) => {
            let signer = Signer::load(from, pass)
                .with_context(|| format!("reading --ca-key {}", from.display()))?;
            if in_use {
                check_served_key(&store, &signer, &config.database)?;
            }
            copy_key(from, &config.ca_key)?;
            Signer::load(&config.ca_key, pass)?
        }
        None => Signer::generate(&config.ca_key, pass, "moshca-ca")?,
    };
    if let Some(from) = &options.ca_key {
        let host_from = options
            .host_ca_key
            .clone()
            .unwrap_or_else(|| from.with_file_name("host_ca_key"));
        if host_from.exists() {
            let host = crate::signer::HostSigner::from_bytes(
                &std::fs::read(&host_from)
                    .with_context(|| format!("reading {}", host_from.display()))?,
                &host_from,
                pass,
            )?;
            if in_use {
                check_served_host_key(&store, &host, &config.database)?;
            }
            copy_key(&host_from, &config.host_ca_key)?;
        } else if in_use {
            anyhow::bail!(
                "no host CA key at {}: give --host-ca-key FILE, the first replica's host_ca_key",
                host_from.display()
            );
        }
    }
    if !config.tls_cert.exists() {
        write_tls(&config.tls_cert, &config.tls_key, tls)?;
    }
    let tls_fingerprint = tls_fingerprint(
        &std::fs::read(&config.tls_cert)
            .with_context(|| format!("reading {}", config.tls_cert.display()))?,
    )?;
    let public = signer.public_key().to_openssh()?;
    store.transact(|tx| {
        tx.insert_ca_key(&signer.fingerprint(), &public, now)?;
        tx.append_audit(&Event::new(
            now,
            "operator",
            if in_use {
                "replica.joined"
            } else {
                "ca.initialized"
            },
            None,
            json!({ "ca_fingerprint": signer.fingerprint() }),
        ))
    })?;
    // `mkdir -m 755 D` before init, or a umask of 022, must not leave the database (token
    // hashes, the audit trail) readable by everyone; `serve` refuses to start if it is.
    crate::secret_file::make_private(data_dir, config.database.sqlite_path())
        .with_context(|| format!("making {} private", data_dir.display()))?;
    let host_ca = ensure_host_ca(
        &config,
        passphrase.as_ref().map(|p| p.as_slice()),
        &store,
        now,
    )?;
    crate::authority::checkpoint(&store, &signer, Some(&config.checkpoint_file), now)?;
    Ok(Initialized {
        data_dir: data_dir.to_owned(),
        ca_public_key: signer.public_key().to_openssh()?,
        ca_fingerprint: signer.fingerprint(),
        tls_cert: config.tls_cert,
        tls_fingerprint,
        host_ca_public_key: host_ca.public_key().to_openssh()?,
    })
}

/// Whether `init` can go ahead on the shared database `db`: a fresh one, or one whose CA
/// key (and host CA key) `options` names.
fn precheck_join(db: &crate::store::Database, options: &Options) -> anyhow::Result<()> {
    let store = Store::open(db).with_context(|| format!("opening database {db}"))?;
    if store.read(|tx| tx.audit_head())?.is_none() {
        return Ok(());
    }
    let Some(from) = &options.ca_key else {
        anyhow::bail!(
            "the database {db} already serves a CA; to add a replica, give --ca-key FILE (the \
             first replica's ca_key; its host_ca_key is taken from beside it)"
        );
    };
    let pass = options
        .passphrase_file
        .as_deref()
        .map(read_passphrase)
        .transpose()?;
    let pass = pass.as_ref().map(|p| p.as_slice());
    let signer =
        Signer::load(from, pass).with_context(|| format!("reading --ca-key {}", from.display()))?;
    check_served_key(&store, &signer, db)?;
    let host_from = options
        .host_ca_key
        .clone()
        .unwrap_or_else(|| from.with_file_name("host_ca_key"));
    anyhow::ensure!(
        host_from.exists(),
        "no host CA key at {}: give --host-ca-key FILE, the first replica's host_ca_key",
        host_from.display()
    );
    let host = crate::signer::HostSigner::from_bytes(
        &std::fs::read(&host_from).with_context(|| format!("reading {}", host_from.display()))?,
        &host_from,
        pass,
    )?;
    check_served_host_key(&store, &host, db)
}

/// Refuses a key that is not the CA key the shared database serves.
fn check_served_key(
    store: &Store,
    signer: &Signer,
    db: &crate::store::Database,
) -> anyhow::Result<()> {
    let fingerprint = signer.fingerprint();
    let served = store.read(|tx| tx.active_ca_keys())?;
    if served.contains(&fingerprint) {
        return Ok(());
    }
    anyhow::bail!(
        "refusing --ca-key: it is {fingerprint}, but the database {} serves {}; give the \
         first replica's ca_key",
        db,
        if served.is_empty() {
            "no CA key yet".to_owned()
        } else {
            served.join(", ")
        }
    )
}

/// Refuses a host key that is not the host CA key the shared database's replicas use.
fn check_served_host_key(
    store: &Store,
    host: &crate::signer::HostSigner,
    db: &crate::store::Database,
) -> anyhow::Result<()> {
    let served = store.read(|tx| tx.latest_audit_details("host_ca.created"))?;
    let served = served
        .as_ref()
        .and_then(|d| d.get("ca_fingerprint"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    match served {
        Some(f) if f != host.fingerprint() => anyhow::bail!(
            "refusing the host CA key: it is {}, but the replicas of {} use {f}; give the \
             first replica's host_ca_key with --host-ca-key",
            host.fingerprint(),
            db
        ),
        _ => Ok(()),
    }
}

/// Copies a private key file into the data directory, private (0600), never over a file.
fn copy_key(from: &Path, to: &Path) -> anyhow::Result<()> {
    crate::secret_file::check_private(from, "CA key")?;
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_new(to, &bytes, 0o600)?;
    let public = from.with_extension("pub");
    if public.exists() && !to.with_extension("pub").exists() {
        let text =
            std::fs::read(&public).with_context(|| format!("reading {}", public.display()))?;
        write_new(&to.with_extension("pub"), &text, 0o644)?;
    }
    Ok(())
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A self-signed end-entity certificate for this host's loopback names and host name,
/// and for `extra`.
fn write_tls(cert_path: &Path, key_path: &Path, extra: &TlsNames) -> anyhow::Result<()> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra.dns.iter().cloned());
    names.extend(extra.ips.iter().map(ToString::to_string));
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    names.dedup();
    let certified = rcgen::generate_simple_self_signed(names).context("making TLS certificate")?;
    write_new(
        key_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn creates_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ca");
        let out = init(&d, None, 1).unwrap();
        assert!(out.ca_public_key.starts_with("ssh-ed25519 "));
        for f in [
            "config.toml",
            "policy.toml",
            "ca_key",
            "ca_key.pub",
            "host_ca_key",
            "host_ca_key.pub",
            "tls/cert.pem",
            "tls/key.pem",
            "moshca.db",
            "checkpoints/audit-checkpoints.jsonl",
        ] {
            assert!(d.join(f).exists(), "{f}");
        }
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca_key"), 0o600);
        assert_eq!(mode("host_ca_key"), 0o600);
        assert_ne!(
            std::fs::read(d.join("ca_key.pub")).unwrap(),
            std::fs::read(d.join("host_ca_key.pub")).unwrap()
        );
        assert_eq!(mode("tls/key.pem"), 0o600);
        assert_eq!(mode("moshca.db"), 0o600);
        assert_eq!(mode("."), 0o700);
        let config = Config::load(&d).unwrap();
        crate::server::load_policy(&config).unwrap();
        let before = std::fs::read(d.join("ca_key")).unwrap();
        let again = init(&d, None, 2).unwrap_err().to_string();
        assert!(again.contains("refusing to overwrite"), "{again}");
        assert_eq!(std::fs::read(d.join("ca_key")).unwrap(), before);
    }

    #[test]
    fn passphrase_encrypts_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cret\n").unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let d = dir.path().join("ca");
        let refused = init(&d, Some(&pass), 1).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("`chmod 600 {}`", pass.display())),
            "{refused}"
        );
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        init(&d, Some(&pass), 1).unwrap();
        assert!(Signer::load(&d.join("ca_key"), None).is_err());
        assert!(Signer::load(&d.join("ca_key"), Some(b"s3cret")).is_ok());
        let config = Config::load(&d).unwrap();
        assert_eq!(config.passphrase_file.as_deref(), Some(pass.as_path()));
    }
}
