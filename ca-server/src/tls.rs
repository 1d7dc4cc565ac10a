//! The server's TLS: the certificate and key named by `[tls]` in config.toml (the
//! self-signed pair `init` makes, or one from the company's own CA), replaced in place on
//! SIGHUP. New connections get the new certificate; open ones keep theirs.
//!
//! Handshakes run beside the accept loop, each bounded in time, so one slow or silent
//! client holds up nobody. Nothing here reads the policy or the store.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's certificate and key, replaceable while serving.
pub struct Tls {
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The pair in force, and its certificate's fingerprint.
#[derive(Debug)]
struct Current(RwLock<(Arc<CertifiedKey>, String)>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

impl Tls {
    /// Loads the certificate chain (PEM) and its private key (PEM, a secret file: owned by
    /// the server's user, no group or other bits).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let (pair, fingerprint) = certified_key(cert, key)?;
        let current = Arc::new(Current(RwLock::new((pair, fingerprint))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The fingerprint of the certificate in force (`SHA256:...`, as `moshca setup` pins).
    pub fn fingerprint(&self) -> String {
        self.current
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Reads the pair again; on any error the one in force stays. Whether it changed.
    pub fn reload(&self, cert: &Path, key: &Path) -> anyhow::Result<bool> {
        let (pair, fingerprint) = certified_key(cert, key)?;
        let mut current = self.current.0.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.1 != fingerprint;
        *current = (pair, fingerprint);
        Ok(changed)
    }

    /// TLS connections accepted on `listener`, for tonic's `serve_with_incoming`; the
    /// task that accepts them ends with the returned handle's abort (or when the stream
    /// is dropped).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> (
        tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                // Nagle's algorithm and delayed ACKs add ~40 ms to every small exchange.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        (tokio_stream::wrappers::ReceiverStream::new(rx), task)
    }
}

/// The pair from the two files, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> anyhow::Result<(Arc<CertifiedKey>, String)> {
    let pem = std::fs::read(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key_pem = crate::secret_file::read_secret(key, "TLS key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("{} is not a key rustls can sign with", key.display()))?;
    let fingerprint = tls_fingerprint(&pem)?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .with_context(|| format!("{} is not the key of {}", key.display(), cert.display()))?;
    Ok((Arc::new(pair), fingerprint))
}

/// The fingerprint clients pin with `moshca setup --fingerprint`: `SHA256:` and the
/// unpadded base64 of the SHA-256 of the certificate's DER, as OpenSSH writes key
/// fingerprints.
pub fn tls_fingerprint(cert_pem: &[u8]) -> anyhow::Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let text = std::str::from_utf8(cert_pem).context("TLS certificate is not PEM text")?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .context("TLS certificate is not PEM")?;
    anyhow::ensure!(
        !der.is_empty(),
        "no certificate in the TLS certificate file"
    );
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&der))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }

    #[test]
    fn reload_swaps_the_pair_and_keeps_it_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "one.example");
        let (c2, k2) = pair(dir.path(), "two.example");
        let tls = Tls::load(&c1, &k1).unwrap();
        let first = tls.fingerprint();
        assert!(!tls.reload(&c1, &k1).unwrap(), "the same pair is no change");
        // A certificate with another's key: refused, the old pair stays.
        assert!(tls.reload(&c2, &k1).is_err());
        assert_eq!(tls.fingerprint(), first);
        assert!(tls.reload(&c2, &k2).unwrap());
        assert_ne!(tls.fingerprint(), first);
    }
}
