//! `moshca setup`: trust a CA server by the fingerprint of its TLS certificate, and write
//! the client's config file.
//!
//! The operator reads the fingerprint off `moshca-server init` (or computes it for the
//! company's own certificate) and hands it out with the URL; nobody copies PEM files by
//! hand. The client opens one TLS connection without trusting anything yet, keeps the
//! presented certificate whose SHA-256 fingerprint matches, and from then on trusts only
//! that certificate: it writes it beside the config file and checks it with a normal,
//! verified connection before writing the config. A fingerprint that matches nothing
//! writes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// What `setup` wrote.
#[derive(Debug)]
pub struct Written {
    /// The config file.
    pub config: PathBuf,
    /// The pinned certificate (PEM).
    pub ca_cert: PathBuf,
    /// Its fingerprint, `SHA256:...`.
    pub fingerprint: String,
    /// Which certificate of the chain matched: 0 is the server's own.
    pub chain_position: usize,
}

/// A fingerprint as given on the command line: `SHA256:` + base64 (as `moshca-server init`
/// prints it) or 64 hex digits, with or without colons (as `openssl x509 -fingerprint
/// -sha256` prints it). The SHA-256 digest, or `None` if it is neither.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if let Some(b64) = text.strip_prefix("SHA256:") {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()?
    } else {
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        hex::decode(hex).ok()?
    };
    bytes.try_into().ok()
}

/// `SHA256:` + unpadded base64 of the SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(der))
    )
}

/// Pins the certificate of `server` whose fingerprint is `expected`, writes it and the
/// config file (keeping the file's other settings), after a verified connection with it
/// worked.
pub async fn setup(server: &str, expected: &str, config_path: &Path) -> Result<Written> {
    let digest = parse_fingerprint(expected).ok_or_else(|| Error::BadFingerprint {
        given: expected.to_owned(),
    })?;
    let (host, port) = host_port(server)?;
    let chain = danger::presented_chain(&host, port)
        .await
        .map_err(|detail| Error::Connect {
            server: server.to_owned(),
            detail,
        })?;
    let (position, cert) = chain
        .iter()
        .enumerate()
        .find(|(_, der)| Sha256::digest(der).as_slice() == digest)
        .ok_or_else(|| Error::FingerprintMismatch {
            server: server.to_owned(),
            expected: expected.trim().to_owned(),
            presented: chain.iter().map(|der| fingerprint(der)).collect(),
        })?;
    let dir = config_path
        .parent()
        .ok_or_else(|| Error::Write {
            path: config_path.to_owned(),
            source: std::io::Error::other("no parent directory"),
        })?
        .to_owned();
    let ca_path = dir.join("ca.pem");
    let pem = pem(cert);
    // Verified the normal way before anything is written: the name in the URL must be one
    // the certificate is valid for.
    let staged = tempfile_in(&dir, &pem)?;
    crate::rpc::connect(server, staged.path(), None)
        .await?
        .get_ca_public_keys(moshca_proto::v1::GetCaPublicKeysRequest {})
        .await
        .map_err(|status| Error::Connect {
            server: server.to_owned(),
            detail: status.message().to_owned(),
        })?;
    staged.persist(&ca_path).map_err(|e| Error::Write {
        path: ca_path.clone(),
        source: e.error,
    })?;
    write_config(config_path, server, &ca_path)?;
    Ok(Written {
        config: config_path.to_owned(),
        ca_cert: ca_path,
        fingerprint: fingerprint(cert),
        chain_position: position,
    })
}

/// `https://HOST:PORT` -> (HOST, PORT); the port defaults to 443.
fn host_port(server: &str) -> Result<(String, u16)> {
    let bad = |reason: &str| Error::BadServerUrl {
        url: server.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| bad("it must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse().map_err(|_| bad("the port is not a number"))?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host name"));
    }
    Ok((host.to_owned(), port))
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn tempfile_in(dir: &Path, text: &str) -> Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let write_error = |source| Error::Write {
        path: dir.join("ca.pem"),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let mut file = tempfile::Builder::new()
        .prefix(".ca.pem.")
        .tempfile_in(dir)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    Ok(file)
}

/// Sets `server` and `ca_cert` in the config file, keeping whatever else it holds.
fn write_config(path: &Path, server: &str, ca_cert: &Path) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse()
            .map_err(|e: toml::de::Error| Error::ConfigFile {
                path: path.to_owned(),
                message: crate::error::one_line(e.message()),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(write_error(e)),
    };
    table.insert("server".into(), server.into());
    table.insert(
        "ca_cert".into(),
        ca_cert.to_string_lossy().into_owned().into(),
    );
    let text = toml::to_string(&table).map_err(|e| write_error(std::io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(dir)
        .map_err(write_error)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    file.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

/// The one TLS connection made before anything is trusted.
mod danger {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts whatever chain the server presents, but still checks the handshake
    /// signatures against it (the server proves it holds the key of the certificate it
    /// shows). The caller trusts nothing of it until a fingerprint matches.
    #[derive(Debug)]
    struct AnyChain(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyChain {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// The certificates `host:port` presents in a TLS handshake, its own first.
    pub async fn presented_chain(
        host: &str,
        port: u16,
    ) -> std::result::Result<Vec<Vec<u8>>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyChain(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| "timed out connecting".to_owned())?
        .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
            .unwrap_or_default();
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_in_both_spellings() {
        let der = b"not really a certificate";
        let printed = fingerprint(der);
        let digest: [u8; 32] = Sha256::digest(der).into();
        assert_eq!(parse_fingerprint(&printed), Some(digest));
        let hex_colons = digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&hex_colons), Some(digest));
        assert_eq!(parse_fingerprint(&hex::encode(digest)), Some(digest));
        assert_eq!(parse_fingerprint("SHA256:tooshort"), None);
        assert_eq!(parse_fingerprint("MD5:aa"), None);
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_port("https://ca.example.com:7443").unwrap(),
            ("ca.example.com".into(), 7443)
        );
        assert_eq!(
            host_port("https://ca.example.com").unwrap(),
            ("ca.example.com".into(), 443)
        );
        assert_eq!(
            host_port("https://[::1]:7443/").unwrap(),
            ("::1".into(), 7443)
        );
        assert!(host_port("http://ca.example.com").is_err());
    }

    #[test]
    fn config_keeps_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "token_file = \"/t\"\nserver = \"https://old:1\"\n").unwrap();
        write_config(&path, "https://new:7443", Path::new("/x/ca.pem")).unwrap();
        let table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        assert_eq!(table["server"].as_str(), Some("https://new:7443"));
        assert_eq!(table["ca_cert"].as_str(), Some("/x/ca.pem"));
        assert_eq!(table["token_file"].as_str(), Some("/t"));
    }
}
