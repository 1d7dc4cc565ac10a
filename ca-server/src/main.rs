//! `moshca-server`: parse arguments, set up logging, call the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use moshca_server::cli::{AuditCommand, CaCommand, Cli, Command, UserCommand};
use moshca_server::config::Config;
use moshca_server::store::Store;
use moshca_server::{auth, authority, ca_keys, clock, files, init, rotation, server, users};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
                // The HTTP client logs whole URLs (webhook tokens) at debug and raw
                // requests at trace: never let it below info, whatever RUST_LOG says.
                .add_directive("ureq=info".parse().unwrap_or_else(|_| {
                    tracing_subscriber::filter::Directive::from(tracing::Level::INFO)
                }))
                .add_directive("ureq_proto=info".parse().unwrap_or_else(|_| {
                    tracing_subscriber::filter::Directive::from(tracing::Level::INFO)
                })),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moshca-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The passphrase passed as a systemd credential (`LoadCredential=ca-passphrase:...`),
/// when the unit provides one.
fn systemd_credential() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = std::path::Path::new(&dir).join("ca-passphrase");
    path.exists().then_some(path)
}

/// `--since`: Unix seconds or an RFC 3339 time (`2026-11-24T01:00:00Z`).
fn parse_since(s: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("--since {s:?}: give Unix seconds or a time like 2026-11-24T01:00:00Z")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// `--expires 30d`: a token lifetime.
fn parse_expires(s: &str) -> anyhow::Result<u64> {
    moshca_server::policy::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("--expires {s:?}: {e}; give e.g. 30d or 90d"))
}

/// CA keys to trust: those the store says are needed and a key file holds; the key in the
/// data directory counts as active. Keys the database alone names are ignored, with a
/// warning.
fn trusted_keys(config: &Config) -> anyhow::Result<Vec<ssh_key::PublicKey>> {
    let store = open_store(config)?;
    let files = ca_keys::KeyFiles::of(config);
    files.write_missing_public_files();
    let pub_path = config.ca_key.with_extension("pub");
    let active = ssh_key::PublicKey::read_openssh_file(&pub_path)
        .with_context(|| format!("reading {}", pub_path.display()))?;
    let fingerprint = active.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    store.transact(|tx| {
        tx.insert_ca_key(&fingerprint, &active.to_openssh()?, clock::now())
            .map_err(anyhow::Error::from)
    })?;
    let (keys, ignored) =
        authority::held_trusted_ca_keys(&store, &files.load(), &fingerprint, clock::now())?;
    let hint = ca_keys::retired_dir(config).join("NAME.pub");
    ca_keys::log_ignored(&ignored, &hint.display().to_string());
    Ok(keys)
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.database)
        .with_context(|| format!("opening database {}", config.database.display()))
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            passphrase_file,
        } => {
            let out = init::init(&dir.data_dir, passphrase_file.as_deref(), clock::now())?;
            println!("initialized {}", out.data_dir.display());
            println!("CA public key ({}):", out.ca_fingerprint);
            println!("  {}", out.ca_public_key);
            println!(
                "clients trust the server with MOSHCA_CA_CERT={}",
                out.tls_cert.display()
            );
            println!(
                "next: edit {}/policy.toml, add users with `moshca-server user add NAME --group G`, then `moshca-server serve`",
                out.data_dir.display()
            );
        }
        Command::Serve {
            dir,
            listen,
            passphrase_file,
        } => {
            let config = Config::load(&dir.data_dir)?;
            let passphrase_file = passphrase_file.or_else(systemd_credential);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(server::serve(config, listen, passphrase_file.as_deref()))?;
        }
        Command::User(cmd) => match cmd {
            UserCommand::Add {
                name,
                groups,
                expires,
                dir,
            } => {
                let lifetime = parse_expires(&expires)?;
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                let issued = users::add_expiring(&store, &name, &groups, lifetime, clock::now())?;
                println!("{}", issued.token.expose());
                eprintln!(
                    "moshca-server: user {name} added; token {} expires {}; the token above is shown only once",
                    issued.id,
                    auth::fmt_time(issued.expires_at)
                );
            }
            UserCommand::Token { name, expires, dir } => {
                let lifetime = parse_expires(&expires)?;
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                let issued = users::issue_token(&store, &name, lifetime, clock::now())?;
                println!("{}", issued.token.expose());
                eprintln!(
                    "moshca-server: new token {} for {name}, expires {}; shown only once. {name}'s other tokens keep working until they expire or `moshca-server user revoke-token ID` stops them",
                    issued.id,
                    auth::fmt_time(issued.expires_at)
                );
            }
            UserCommand::Tokens { name, dir, json } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                let list = users::tokens(&store, &name)?;
                let now = clock::now();
                let state = |t: &moshca_server::store::TokenRecord| {
                    if t.revoked {
                        "revoked"
                    } else if t.expires_at.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "active"
                    }
                };
                if json {
                    let v: Vec<_> = list
                        .iter()
                        .map(|t| serde_json::json!({"id": t.id, "user": t.user, "created_at": t.created_at, "expires_at": t.expires_at, "last_used_at": t.last_used_at, "state": state(t)}))
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    let time =
                        |t: Option<u64>| t.map_or_else(|| "never".to_owned(), auth::fmt_time);
                    println!("ID\tCREATED\tEXPIRES\tLAST USED\tSTATE");
                    for t in &list {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            t.id,
                            auth::fmt_time(t.created_at),
                            time(t.expires_at),
                            time(t.last_used_at),
                            state(t)
                        );
                    }
                }
            }
            UserCommand::RevokeToken { id, dir } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                let record = users::revoke_token(&store, &id, clock::now())?;
                eprintln!(
                    "moshca-server: token {id} of {} revoked; it no longer works",
                    record.user
                );
            }
            UserCommand::Disable { name, dir } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                users::set_disabled(&store, &name, true, clock::now())?;
                eprintln!("moshca-server: user {name} disabled; their tokens no longer work");
            }
            UserCommand::Enable { name, dir } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                users::set_disabled(&store, &name, false, clock::now())?;
                eprintln!("moshca-server: user {name} enabled");
            }
            UserCommand::List { dir, json } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                let list = users::list(&store)?;
                if json {
                    let v: Vec<_> = list
                        .iter()
                        .map(|u| serde_json::json!({"name": u.name, "groups": u.groups, "disabled": u.disabled, "created_at": u.created_at}))
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    for u in list {
                        let state = if u.disabled { "disabled" } else { "enabled" };
                        println!("{}\t{}\t{}", u.name, state, u.groups.join(","));
                    }
                }
            }
        },
        Command::Ca(CaCommand::PublicKeys { dir }) => {
            let config = Config::load(&dir.data_dir)?;
            for key in trusted_keys(&config)? {
                println!("{}", key.to_openssh()?);
            }
        }
        Command::Ca(CaCommand::Rotate {
            dir,
            passphrase_file,
        }) => {
            let config = Config::load(&dir.data_dir)?;
            let r = rotation::rotate(&config, passphrase_file.as_deref(), clock::now())?;
            println!("new CA key {} is published now", r.new_fingerprint);
            println!(
                "the old key {} stays trusted until its last certificate expires",
                r.old_fingerprint
            );
            println!(
                "once hosts have synced (about a minute), reload the server (SIGHUP, `systemctl reload moshca-server`) to sign with the new key"
            );
            eprintln!(
                "moshca-server: the old private key was moved to {}; it is no longer needed",
                r.retired_key.display()
            );
        }
        Command::Krl { dir, out } => {
            let config = Config::load(&dir.data_dir)?;
            let store = open_store(&config)?;
            let keys = trusted_keys(&config)?;
            let now = clock::now();
            let authority::BuiltKrl {
                krl,
                version,
                skipped,
            } = authority::build_krl(&store, &keys, now)?;
            for entry in &skipped {
                eprintln!(
                    "moshca-server: left out revoked key {}: {}",
                    entry.fingerprint, entry.reason
                );
            }
            authority::audit_skipped(&store, &skipped, version, now)?;
            files::write_checked(&out, &krl, files::Check::Krl)?;
            println!(
                "wrote KRL version {version} ({} bytes) to {}",
                krl.len(),
                out.display()
            );
        }
        Command::Audit(AuditCommand::Verify { dir, checkpoints }) => {
            let config = Config::load(&dir.data_dir)?;
            let store = open_store(&config)?;
            let files = ca_keys::KeyFiles::of(&config);
            files.write_missing_public_files();
            let keys = files.load();
            // The configured checkpoint file unless another is named; a named file must
            // exist, the default one may not yet.
            let (path, named) = match checkpoints {
                Some(p) => (p, true),
                None => (config.checkpoint_file.clone(), false),
            };
            let file = match std::fs::File::open(&path) {
                Ok(f) => Some(std::io::BufReader::new(f)),
                Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!(
                        "moshca-server: no checkpoint file at {}; checking the database's checkpoints only",
                        path.display()
                    );
                    None
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "opening the checkpoint file {} (give the file the server appends to: [audit] checkpoint_file)",
                        path.display()
                    )));
                }
            };
            let read = file.is_some();
            match authority::verify_audit_anchored(&store, &keys, file)? {
                Ok(v) => {
                    let also = if read {
                        format!(", {} in {}", v.file_checkpoints, path.display())
                    } else {
                        String::new()
                    };
                    println!(
                        "audit chain intact: {} events, {} signed checkpoints{also}",
                        v.events, v.checkpoints
                    );
                }
                Err(broken) => {
                    eprintln!("moshca-server: {broken}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Audit(AuditCommand::Export { dir, since }) => {
            use std::io::Write as _;
            let since = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            // Row by row from a cursor: memory stays flat however long the trail.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            store.read(|tx| {
                tx.for_each_audit_row(since, |row| {
                    let line = serde_json::json!({
                        // 64-bit numbers are JSON strings in every output (jq rounds
                        // numbers above 2^53).
                        "seq": row.seq.to_string(),
                        "at": row.event.at,
                        "actor": row.event.actor,
                        "action": row.event.action,
                        "request_id": row.event.request_id,
                        "details": row.event.details,
                        "prev_hash": row.prev_hash,
                        "hash": row.hash,
                    });
                    serde_json::to_writer(&mut out, &line)?;
                    out.write_all(b"\n")?;
                    Ok::<_, anyhow::Error>(())
                })
            })?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
