//! What the in-process server tests share: a data directory made by `init` with users,
//! the real server on 127.0.0.1:0 with TLS, and bearer-authenticated requests.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moshca_server::authority::Authority;
use moshca_server::config::Config;
use moshca_server::store::Store;
use moshca_server::{init, server, users};
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A data directory with a policy and users, and each user's token.
pub struct DataDir {
    _dir: tempfile::TempDir,
    pub config: Config,
    pub tokens: HashMap<&'static str, String>,
}

/// `init`, then `policy`, `config_extra` appended to config.toml, and `users` (name,
/// groups) added.
pub fn data_dir(policy: &str, config_extra: &str, users: &[(&'static str, &[&str])]) -> DataDir {
    data_dir_with(policy, config_extra, users, |_| {})
}

/// [`data_dir`], with `prepare` run on the directory before the configuration is loaded
/// (for files the configuration names).
pub fn data_dir_with(
    policy: &str,
    config_extra: &str,
    users: &[(&'static str, &[&str])],
    prepare: impl FnOnce(&std::path::Path),
) -> DataDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    init::init(&data, None, 0).unwrap();
    prepare(&data);
    std::fs::write(data.join("policy.toml"), policy).unwrap();
    let config_file = data.join("config.toml");
    let mut text = std::fs::read_to_string(&config_file).unwrap();
    text.push_str(config_extra);
    std::fs::write(&config_file, text).unwrap();
    let config = Config::load(&data).unwrap();
    let store = Store::open(&config.database).unwrap();
    let tokens = users
        .iter()
        .map(|(name, groups)| {
            let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
            let token = users::add(&store, name, &groups, moshca_server::clock::now()).unwrap();
            (*name, token.expose().to_owned())
        })
        .collect();
    DataDir {
        _dir: dir,
        config,
        tokens,
    }
}

/// A server running in this process; stopped when dropped.
pub struct Served {
    channel: Option<Channel>,
    pub authority: Arc<Authority>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Serves what `server::open` loaded for `config`, and connects to it over TLS.
pub async fn serve(config: &Config, loaded: server::Loaded) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let authority = Arc::clone(&loaded.authority);
    let task = tokio::spawn(server::run(
        listener,
        loaded.authority,
        loaded.verifier,
        loaded.notifier,
        Some(loaded.tls),
        async {
            let _ = stopped.await;
        },
    ));
    let pem = std::fs::read(&config.tls_cert).unwrap();
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Served {
        channel: Some(channel),
        authority,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Served {
    /// The connection to the server.
    pub fn channel(&self) -> Channel {
        self.channel.clone().unwrap()
    }

    /// Shuts the server down gracefully and waits for `run` to return.
    pub async fn stop(mut self) {
        self.channel = None;
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// `msg` with `token` as its bearer credential.
pub fn bearer<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}
