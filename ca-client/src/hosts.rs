//! Host certificates on the host and on clients: `moshca host enroll` (join token + host
//! public key -> certificate beside the key), `moshca host renew` (a nonce signed with the
//! host's private key -> a new certificate), and `moshca known-hosts` (`@cert-authority`
//! lines for the CA's host keys).
//!
//! The host's private key is read only by `renew`, only to sign the CA's nonce, and only
//! from a file private to its owner (the rule for token files). Certificates are checked
//! against the key they are for before they replace the old file, atomically.

use std::path::{Path, PathBuf};

use moshca_proto::v1::{
    CaKeyType, EnrollHostRequest, GetCaPublicKeysRequest, GetHostChallengeRequest, HostCertificate,
    RenewHostRequest,
};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg, LineEnding, PrivateKey, PublicKey};
use tonic::Code;

use crate::cli::{HostEnrollArgs, HostRenewArgs, KnownHostsArgs};
use crate::config;
use crate::error::{Error, Result};
use crate::install;
use crate::keys;
use crate::output::Output;
use crate::rpc::Client;

/// SSH signature namespace of renewal proofs (the server's `HOST_RENEW_NAMESPACE`).
const RENEW_NAMESPACE: &str = "moshca-host-renew@moshca";

/// The message signed to renew (see `RenewHostRequest` in ca.proto).
fn renew_message(nonce: &str, serial: u64) -> Vec<u8> {
    format!("moshca host renew v1\n{nonce}\n{serial}").into_bytes()
}

fn host_error(message: impl Into<String>) -> Error {
    Error::HostCert {
        message: message.into(),
        denied: false,
    }
}

/// A refused host call: the server's message says what to do next.
fn refused(call: &str, status: &tonic::Status) -> Error {
    match status.code() {
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::ResourceExhausted => Error::HostCert {
            message: format!("{call}: {}", status.message()),
            denied: matches!(
                status.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
        },
        _ => Error::rpc("host call", status),
    }
}

/// `/etc/ssh/ssh_host_ed25519_key.pub` -> `/etc/ssh/ssh_host_ed25519_key-cert.pub`, as
/// ssh-keygen names certificates.
pub fn certificate_path(key: &Path) -> Result<PathBuf> {
    let name = key
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".pub"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            host_error(format!(
                "{}: give the host's public key file, ending in .pub (e.g. /etc/ssh/ssh_host_ed25519_key.pub)",
                key.display()
            ))
        })?;
    Ok(key.with_file_name(format!("{name}-cert.pub")))
}

/// The private key beside a `.pub`.
fn private_path(key: &Path) -> Result<PathBuf> {
    let name = key
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".pub"))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| host_error(format!("{}: expected a .pub file", key.display())))?;
    Ok(key.with_file_name(name))
}

/// Checks that the CA's answer is a host certificate for `key` with at least one name.
fn check_answer(answer: &HostCertificate, key: &PublicKey) -> Result<Certificate> {
    let bad = |why: &str| Error::BadResponse(format!("the host certificate {why}"));
    let cert =
        Certificate::from_openssh(answer.openssh.trim()).map_err(|_| bad("does not parse"))?;
    if cert.cert_type() != CertType::Host {
        return Err(bad("is not a host certificate"));
    }
    if cert.public_key() != key.key_data() {
        return Err(bad("is for another key"));
    }
    if cert.valid_principals().is_empty() || cert.serial() != answer.serial {
        return Err(bad("does not match what the CA reported"));
    }
    Ok(cert)
}

/// `moshca host enroll --token T [--key FILE.pub] [--principal NAME]...`.
pub async fn enroll(client: &mut Client, args: &HostEnrollArgs, out: Output) -> Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => zeroize::Zeroizing::new(t.trim().to_owned()),
        (None, Some(path)) => {
            let text = config::read_secret(path, "join token file")?;
            zeroize::Zeroizing::new(text.trim().to_owned())
        }
        (None, None) => {
            return Err(host_error(
                "no join token: give --token T, MOSHCA_JOIN_TOKEN or --token-file FILE (the operator makes one with `moshca-server host token create --principal NAME`)",
            ));
        }
    };
    let key = keys::read_public_key(&args.key)?;
    let cert_path = certificate_path(&args.key)?;
    let answer = client
        .enroll_host(EnrollHostRequest {
            token: token.to_string(),
            public_key: PublicKey::new(key.key_data().clone(), "")
                .to_openssh()
                .map_err(|e| Error::PublicKey {
                    path: args.key.clone(),
                    detail: e.to_string(),
                })?,
            principals: args.principals.clone(),
        })
        .await
        .map_err(|s| refused("enrolment refused", &s))?
        .into_inner();
    drop(token);
    check_answer(&answer, &key)?;
    install::install_host_certificate(&cert_path, &answer.openssh)?;
    out.host_certified("wrote", &answer, &cert_path)
}

/// `moshca host renew [--key FILE.pub]`.
pub async fn renew(client: &mut Client, args: &HostRenewArgs, out: Output) -> Result<()> {
    let cert_path = certificate_path(&args.key)?;
    let private = private_path(&args.key)?;
    let current = std::fs::read_to_string(&cert_path).map_err(|source| Error::Read {
        what: "host certificate",
        path: cert_path.clone(),
        source,
    })?;
    let cert = Certificate::from_openssh(current.trim()).map_err(|_| {
        host_error(format!(
            "{} is not an OpenSSH certificate; enrol the host first (`moshca host enroll --token T`)",
            cert_path.display()
        ))
    })?;
    let text = config::read_secret(&private, "host private key")?;
    let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|_| {
        host_error(format!(
            "{} is not an OpenSSH private key; give the .pub of a host key whose private key sits beside it",
            private.display()
        ))
    })?;
    drop(text);
    if key.is_encrypted() {
        return Err(host_error(format!(
            "{} is encrypted; sshd's host keys are not, and renewal cannot prompt",
            private.display()
        )));
    }
    if key.public_key().key_data() != cert.public_key() {
        return Err(host_error(format!(
            "{} is not the certificate of the key in {}; enrol this key with a new join token",
            cert_path.display(),
            private.display()
        )));
    }
    let challenge = client
        .get_host_challenge(GetHostChallengeRequest {
            certificate: current.trim().to_owned(),
        })
        .await
        .map_err(|s| refused("renewal refused", &s))?
        .into_inner();
    if challenge.namespace != RENEW_NAMESPACE || challenge.nonce.len() > 128 {
        return Err(Error::BadResponse(
            "the renewal challenge is not one this client signs".to_owned(),
        ));
    }
    let signature = key
        .sign(
            RENEW_NAMESPACE,
            HashAlg::Sha512,
            &renew_message(&challenge.nonce, cert.serial()),
        )
        .and_then(|sig| sig.to_pem(LineEnding::LF))
        .map_err(|e| host_error(format!("cannot sign the renewal challenge: {e}")))?;
    drop(key);
    let answer = client
        .renew_host(RenewHostRequest {
            certificate: current.trim().to_owned(),
            nonce: challenge.nonce,
            signature,
        })
        .await
        .map_err(|s| refused("renewal refused", &s))?
        .into_inner();
    let public = keys::read_public_key(&args.key)?;
    check_answer(&answer, &public)?;
    install::install_host_certificate(&cert_path, &answer.openssh)?;
    out.host_certified("renewed", &answer, &cert_path)
}

/// `moshca known-hosts [--domain PATTERN] [--out FILE]`.
pub async fn known_hosts(client: &mut Client, args: &KnownHostsArgs, out: Output) -> Result<()> {
    let keys = client
        .get_ca_public_keys(GetCaPublicKeysRequest {})
        .await
        .map_err(|status| Error::rpc("get CA public keys", &status))?
        .into_inner()
        .keys;
    let mut lines = Vec::new();
    for k in keys.iter().filter(|k| k.r#type == CaKeyType::Host as i32) {
        let key = PublicKey::from_openssh(k.openssh.trim())
            .map_err(|_| Error::BadResponse("a host CA key does not parse".to_owned()))?;
        let text = PublicKey::new(key.key_data().clone(), "moshca-host-ca")
            .to_openssh()
            .map_err(|_| Error::BadResponse("a host CA key does not encode".to_owned()))?;
        lines.push(format!("@cert-authority {} {text}", args.domain));
    }
    if lines.is_empty() {
        return Err(host_error(
            "the CA publishes no host CA key; upgrade and restart moshca-server (it creates one at start)",
        ));
    }
    if let Some(path) = &args.out {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        install::install_known_hosts(path, &text)?;
    }
    out.known_hosts(&lines, args.out.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_and_private_key_paths_sit_beside_the_public_key() {
        let key = Path::new("/etc/ssh/ssh_host_ed25519_key.pub");
        assert_eq!(
            certificate_path(key).unwrap(),
            Path::new("/etc/ssh/ssh_host_ed25519_key-cert.pub")
        );
        assert_eq!(
            private_path(key).unwrap(),
            Path::new("/etc/ssh/ssh_host_ed25519_key")
        );
        assert!(certificate_path(Path::new("/etc/ssh/ssh_host_ed25519_key")).is_err());
        assert!(certificate_path(Path::new("/etc/ssh/.pub")).is_err());
    }
}
