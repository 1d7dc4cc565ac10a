//! `moshca-server`: parse arguments, set up logging, call the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use moshca_server::cli::{
    AuditCommand, CaCommand, Cli, Command, HostCommand, HostTokenCommand, LogFormat, PolicyCommand,
    SessionCommand, UserCommand,
};
use moshca_server::config::Config;
use moshca_server::store::Store;
use moshca_server::{auth, authority, ca_keys, clock, files, init, rotation, server, users};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: files and journald get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
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
        );
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().flatten_event(true).init(),
    }
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

/// Host CA keys clients should trust: the active key file, then retired key files while a
/// host certificate they signed is valid.
fn host_keys(config: &Config) -> anyhow::Result<Vec<ssh_key::PublicKey>> {
    let store = open_store(config)?;
    let files = ca_keys::HostKeyFiles::of(config);
    let mut keys: Vec<ssh_key::PublicKey> = files.active().into_iter().collect();
    let now = clock::now();
    for key in files.retired() {
        let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        if store.read(|tx| tx.host_ca_key_in_use(&fingerprint, now))? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        anyhow::bail!(
            "no host CA key in {}; start `moshca-server serve` once (it creates one)",
            config.data_dir.display()
        );
    }
    Ok(keys)
}

/// `--ttl 1h`, `--cert-ttl 30d`.
fn parse_ttl(flag: &str, s: &str) -> anyhow::Result<u64> {
    moshca_server::policy::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}; give e.g. 1h or 30d"))
}

#[allow(clippy::print_stdout)]
fn host_command(cmd: HostCommand) -> anyhow::Result<ExitCode> {
    let now = clock::now();
    match cmd {
        HostCommand::Token(HostTokenCommand::Create {
            principals,
            ttl,
            cert_ttl,
            json,
            dir,
        }) => {
            let ttl = parse_ttl("--ttl", &ttl)?;
            let cert_ttl = cert_ttl
                .as_deref()
                .map(|t| parse_ttl("--cert-ttl", t))
                .transpose()?;
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let issued = authority::create_join_token_at(
                &store,
                &principals,
                ttl,
                cert_ttl,
                "operator",
                now,
            )?;
            let r = &issued.record;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "token": issued.token.expose(),
                        "id": r.id,
                        "principals": r.principals,
                        "expires_at": r.expires_at,
                        "cert_ttl_secs": r.cert_ttl,
                    })
                );
            } else {
                println!("{}", issued.token.expose());
                eprintln!(
                    "moshca-server: join token {} for {} expires {}; it works once and is shown only once. On the host: moshca host enroll --token TOKEN",
                    r.id,
                    r.principals.join(", "),
                    auth::fmt_time(r.expires_at)
                );
            }
        }
        HostCommand::Token(HostTokenCommand::List { dir, json }) => {
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let list = authority::host_tokens(&store)?;
            let state = |t: &moshca_server::store::HostTokenRecord| {
                if t.used_at.is_some() {
                    "used"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "unused"
                }
            };
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "principals": t.principals, "created_at": t.created_at, "expires_at": t.expires_at, "used_at": t.used_at, "serial": t.used_serial.map(|s| s.to_string()), "state": state(t)}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("ID\tPRINCIPALS\tEXPIRES\tSTATE");
                for t in &list {
                    println!(
                        "{}\t{}\t{}\t{}",
                        t.id,
                        t.principals.join(","),
                        auth::fmt_time(t.expires_at),
                        state(t)
                    );
                }
            }
        }
        HostCommand::List { dir, json } => {
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let list = authority::host_certificates_at(&store, now)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| serde_json::json!({"serial": c.serial.to_string(), "principals": c.principals, "fingerprint": c.fingerprint, "valid_before": c.valid_before, "token_id": c.token_id, "renewed_from": c.renewed_from.map(|s| s.to_string()), "revoked": c.revoked_at.is_some()}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("SERIAL\tPRINCIPALS\tKEY\tVALID BEFORE\tSTATE");
                for c in &list {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        c.serial,
                        c.principals.join(","),
                        c.fingerprint,
                        auth::fmt_time(c.valid_before),
                        if c.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "valid"
                        }
                    );
                }
            }
        }
        HostCommand::Revoke {
            serial,
            public_key,
            reason,
            dir,
        } => {
            let target = match (serial, public_key) {
                (Some(s), _) => authority::HostRevokeTarget::Serial(s),
                (None, Some(path)) => authority::HostRevokeTarget::PublicKey(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                (None, None) => anyhow::bail!("give --serial N or --public-key FILE"),
            };
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let r = authority::revoke_host_at(&store, &target, &reason, "operator", now)?;
            println!(
                "revoked {} host certificate(s){}; KRL version {}",
                r.serials.len(),
                if matches!(target, authority::HostRevokeTarget::PublicKey(_)) {
                    " and the host key for good"
                } else {
                    ""
                },
                r.krl_version
            );
            eprintln!(
                "moshca-server: clients refuse it once they use the new KRL as RevokedHostKeys (`moshca krl --out FILE`)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.database).with_context(|| format!("opening database {}", config.database))
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            passphrase_file,
            tls_names,
            tls_ips,
            database,
            ca_key,
            host_ca_key,
        } => {
            let tls = init::TlsNames::new(tls_names, tls_ips)?;
            let out = init::init_with(
                &dir.data_dir,
                &init::Options {
                    passphrase_file,
                    tls: tls.clone(),
                    database,
                    ca_key,
                    host_ca_key,
                },
                clock::now(),
            )?;
            let data = out.data_dir.display();
            println!("initialized {data}");
            println!("CA public key ({}):", out.ca_fingerprint);
            println!("  {}", out.ca_public_key);
            println!("host CA public key (clients: `moshca known-hosts`):");
            println!("  {}", out.host_ca_public_key);
            println!(
                "TLS certificate {} ({})",
                out.tls_cert.display(),
                out.tls_fingerprint
            );
            println!(
                "clients set up with: moshca setup --server https://{}:7443 --fingerprint {}",
                tls.dns.first().map_or("localhost", String::as_str),
                out.tls_fingerprint
            );
            println!(
                "next: edit {data}/policy.toml, add users with `moshca-server user add NAME --group G --data-dir {data}`, then `moshca-server serve --data-dir {data}`"
            );
        }
        Command::Policy(PolicyCommand::Check { file, dir }) => {
            // The server's max_ttl bounds the policy; without a data directory, the default.
            let config = Config::load(&dir.data_dir).ok();
            let path = file
                .or_else(|| config.as_ref().map(|c| c.policy.clone()))
                .context("no policy file: give one, or --data-dir with a config.toml")?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let max_ttl = config.as_ref().map_or(24 * 3600, |c| c.max_ttl);
            match moshca_server::policy::Policy::parse(&text, &path.display().to_string(), max_ttl)
            {
                Ok(policy) => println!(
                    "{}: ok, {} roles, sha256 {}",
                    path.display(),
                    policy.roles().count(),
                    server::policy_digest(&text)
                ),
                Err(e) => {
                    for line in &e.errors {
                        eprintln!("{line}");
                    }
                    eprintln!(
                        "moshca-server: {} error(s) in {}; the server keeps its current policy until they are fixed",
                        e.errors.len(),
                        path.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
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
                let sources = moshca_server::sessions::sources(&store)?;
                let source = |name: &str| {
                    sources
                        .iter()
                        .find(|s| s.name == name)
                        .map_or("token", |s| s.label())
                };
                if json {
                    let v: Vec<_> = list
                        .iter()
                        .map(|u| serde_json::json!({"name": u.name, "groups": u.groups, "disabled": u.disabled, "created_at": u.created_at, "source": source(&u.name)}))
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    for u in list {
                        let state = if u.disabled { "disabled" } else { "enabled" };
                        println!(
                            "{}\t{}\t{}\t{}",
                            u.name,
                            state,
                            u.groups.join(","),
                            source(&u.name)
                        );
                    }
                }
            }
            UserCommand::LinkSso { name, dir } => {
                let store = open_store(&Config::load(&dir.data_dir)?)?;
                moshca_server::sessions::link_sso(&store, &name, clock::now())?;
                eprintln!(
                    "moshca-server: user {name} may now also sign in through SSO (`moshca auth login`); their tokens keep working"
                );
            }
        },
        Command::Session(cmd) => session_command(cmd)?,
        Command::Ca(CaCommand::PublicKeys { dir, host: true }) => {
            let config = Config::load(&dir.data_dir)?;
            for key in host_keys(&config)? {
                println!("@cert-authority * {}", key.to_openssh()?);
            }
        }
        Command::Ca(CaCommand::PublicKeys { dir, host: false }) => {
            let config = Config::load(&dir.data_dir)?;
            for key in trusted_keys(&config)? {
                println!("{}", key.to_openssh()?);
            }
        }
        Command::Ca(CaCommand::Rotate {
            dir,
            passphrase_file,
            host: true,
        }) => {
            let config = Config::load(&dir.data_dir)?;
            let passphrase_file = passphrase_file.or_else(systemd_credential);
            let r = rotation::rotate_host(&config, passphrase_file.as_deref(), clock::now())?;
            println!("new host CA key {} is published now", r.new_fingerprint);
            println!(
                "the old host CA key {} stays published until its last host certificate expires",
                r.old_fingerprint
            );
            println!(
                "clients refresh known_hosts (`moshca known-hosts --out FILE`); then reload the server (SIGHUP) to sign host certificates with the new key"
            );
            eprintln!(
                "moshca-server: the old private host key was moved to {}; it is no longer needed",
                r.retired_key.display()
            );
        }
        Command::Ca(CaCommand::Rotate {
            dir,
            passphrase_file,
            host: false,
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
        Command::Host(cmd) => return host_command(cmd),
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

/// `moshca-server session ...`
#[allow(clippy::print_stdout)] // listings are the command's output
fn session_command(cmd: SessionCommand) -> anyhow::Result<()> {
    use moshca_server::sessions;
    match cmd {
        SessionCommand::List {
            user,
            all,
            dir,
            json,
        } => {
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let now = clock::now();
            let list = sessions::list(&store, user.as_deref(), all, now)?;
            let disabled: std::collections::HashSet<String> = store
                .read(|tx| tx.users())?
                .into_iter()
                .filter(|u| u.disabled)
                .map(|u| u.name)
                .collect();
            let state = |s: &moshca_server::store::SessionRecord| {
                if s.ended_at.is_some() {
                    "ended"
                } else if s.expires_at <= now {
                    "expired"
                } else if disabled.contains(&s.user) {
                    "user disabled"
                } else {
                    "live"
                }
            };
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id, "user": s.user, "groups": s.groups, "issuer": s.issuer, "created_at": s.created_at, "expires_at": s.expires_at, "ended_at": s.ended_at, "state": state(s)}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("ID\tUSER\tGROUPS\tISSUER\tCREATED\tEXPIRES\tSTATE");
                for s in &list {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        s.id,
                        s.user,
                        s.groups.join(","),
                        s.issuer,
                        auth::fmt_time(s.created_at),
                        auth::fmt_time(s.expires_at),
                        state(s)
                    );
                }
            }
        }
        SessionCommand::Revoke { id, user, dir } => {
            let store = open_store(&Config::load(&dir.data_dir)?)?;
            let target = match (id, user) {
                (Some(id), None) => sessions::RevokeTarget::Id(id),
                (None, Some(user)) => sessions::RevokeTarget::User(user),
                _ => anyhow::bail!("name what to revoke: a session id, or --user NAME"),
            };
            let n = sessions::revoke(&store, &target, clock::now())?;
            match target {
                sessions::RevokeTarget::Id(id) => {
                    eprintln!("moshca-server: session {id} revoked; it no longer works");
                }
                sessions::RevokeTarget::User(user) => eprintln!(
                    "moshca-server: {n} session(s) of {user} revoked; they sign in again with `moshca auth login`"
                ),
            }
        }
    }
    Ok(())
}
