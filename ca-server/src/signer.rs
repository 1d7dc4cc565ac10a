//! Owns the CA private key: grant + subject key -> signed OpenSSH user certificate.
//!
//! The signing key is decoded once and kept ready (a dalek key, zeroized on drop), never
//! rebuilt per signature and never printed. This module also decides which subject keys
//! are acceptable. It does no SQL and does not read the clock: validity comes in the
//! [`Grant`]. It refuses, whatever the caller asks, to sign an empty principal list, a
//! zero serial or an empty validity window.
//!
//! Host certificates are signed by a [`HostSigner`], a key of its own: the user CA
//! ([`Signer`]) has no way to sign a host certificate, nor the host CA a user certificate.

use std::fmt;
use std::path::Path;

use rand::rngs::OsRng;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, Certificate, HashAlg, LineEnding, PrivateKey, PublicKey, Signature};

use crate::policy::{MAX_PRINCIPALS, valid_principal};

/// Largest subject key accepted, in bytes of OpenSSH text.
pub const MAX_SUBJECT_KEY_LEN: usize = crate::text::MAX_PUBLIC_KEY_LEN;
/// Smallest RSA modulus accepted, in bits (sshd's own floor is lower).
pub const MIN_RSA_BITS: usize = 2048;

/// Errors of the signer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key file could not be read or written.
    #[error("CA key {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The key file is not a usable CA key.
    #[error("CA key {path}: {reason}")]
    BadKey {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The grant breaks an invariant the signer holds whatever policy says.
    #[error("refusing to sign: {0}")]
    Refused(String),
    /// ssh-key failed to build or encode the certificate.
    #[error("certificate encoding failed: {0}")]
    Encoding(#[from] ssh_key::Error),
}

/// What to sign: everything in the certificate except the subject key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Random non-zero serial.
    pub serial: u64,
    /// Printable ASCII naming request, requester, role and approvers.
    pub key_id: String,
    /// At least one, at most [`MAX_PRINCIPALS`].
    pub principals: Vec<String>,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds, exclusive.
    pub valid_before: u64,
    /// `force-command` critical option.
    pub force_command: Option<String>,
    /// `source-address` critical option.
    pub source_address: Option<String>,
    /// Extension names (flag extensions, empty data).
    pub extensions: Vec<String>,
}

/// The CA: a ready ed25519 signing key and its public half.
pub struct Signer {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Adapts the dalek key to ssh-key's certificate builder without re-decoding it.
struct CaKey<'a>(&'a ed25519_dalek::SigningKey);

impl signature::Signer<Signature> for CaKey<'_> {
    fn try_sign(&self, msg: &[u8]) -> Result<Signature, signature::Error> {
        let sig = ed25519_dalek::Signer::sign(self.0, msg);
        Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl From<&CaKey<'_>> for KeyData {
    fn from(key: &CaKey<'_>) -> KeyData {
        KeyData::Ed25519(Ed25519PublicKey(key.0.verifying_key().to_bytes()))
    }
}

impl Signer {
    /// Generates a new ed25519 CA key and writes it (0600, encrypted when a passphrase is
    /// given) and its `.pub`. Refuses to overwrite an existing key.
    pub fn generate(path: &Path, passphrase: Option<&[u8]>, comment: &str) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            return Err(Error::BadKey {
                path: path.display().to_string(),
                reason: "already exists; refusing to overwrite a CA key".into(),
            });
        }
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
        key.set_comment(comment);
        let stored = match passphrase {
            Some(p) => key.encrypt(&mut OsRng, p)?,
            None => key.clone(),
        };
        let text = stored.to_openssh(LineEnding::LF)?;
        write_private(path, text.as_bytes()).map_err(io)?;
        let pub_path = path.with_extension("pub");
        std::fs::write(&pub_path, format!("{}\n", key.public_key().to_openssh()?)).map_err(
            |source| Error::Io {
                path: pub_path.display().to_string(),
                source,
            },
        )?;
        Self::from_private(&key, path)
    }

    /// Loads the CA key, decrypting it with the passphrase when it is encrypted.
    pub fn load(path: &Path, passphrase: Option<&[u8]>) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadKey {
            path: path.display().to_string(),
            reason,
        };
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?);
        let key = PrivateKey::from_openssh(text.as_bytes())
            .map_err(|e| bad(format!("not an OpenSSH private key ({e})")))?;
        let key = if key.is_encrypted() {
            let p = passphrase.ok_or_else(|| {
                bad(
                    "is encrypted; set passphrase_file in config.toml or MOSHCA_CA_PASSPHRASE_FILE"
                        .into(),
                )
            })?;
            key.decrypt(p).map_err(|_| bad("wrong passphrase".into()))?
        } else {
            key
        };
        Self::from_private(&key, path)
    }

    fn from_private(key: &PrivateKey, path: &Path) -> Result<Self, Error> {
        let pair = key.key_data().ed25519().ok_or_else(|| Error::BadKey {
            path: path.display().to_string(),
            reason: format!("is {}; moshca signs with ed25519 CA keys", key.algorithm()),
        })?;
        let secret = zeroize::Zeroizing::new(pair.private.to_bytes());
        let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
        let public = PublicKey::new(
            KeyData::Ed25519(Ed25519PublicKey(signing.verifying_key().to_bytes())),
            "moshca-ca",
        );
        Ok(Signer {
            key: signing,
            public,
        })
    }

    /// The CA public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The CA key's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Signs a user certificate for `subject` as the grant says.
    pub fn sign(&self, grant: &Grant, subject: &PublicKey) -> Result<Certificate, Error> {
        if let Some(p) = grant.principals.iter().find(|p| !valid_principal(p)) {
            return Err(Error::Refused(format!("malformed principal {p:?}")));
        }
        self.sign_as(grant, subject, CertType::User)
    }

    /// The one signing path; [`Signer::sign`] (user) and [`HostSigner::sign_host`] (host)
    /// are its only callers, so neither kind of key can sign the other kind of certificate.
    fn sign_as(
        &self,
        grant: &Grant,
        subject: &PublicKey,
        cert_type: CertType,
    ) -> Result<Certificate, Error> {
        if grant.principals.is_empty() {
            return Err(Error::Refused("empty principal list".into()));
        }
        if grant.principals.len() > MAX_PRINCIPALS {
            return Err(Error::Refused("too many principals".into()));
        }
        if grant.serial == 0 {
            return Err(Error::Refused("serial 0".into()));
        }
        if grant.valid_after >= grant.valid_before {
            return Err(Error::Refused("empty validity window".into()));
        }
        if !grant.key_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Refused("key id is not printable ASCII".into()));
        }
        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            subject.key_data().clone(),
            grant.valid_after,
            grant.valid_before,
        )?;
        builder.serial(grant.serial)?;
        builder.cert_type(cert_type)?;
        builder.key_id(grant.key_id.clone())?;
        for p in &grant.principals {
            builder.valid_principal(p.clone())?;
        }
        // Critical options and extensions are encoded sorted by name, as sshd requires.
        if let Some(cmd) = &grant.force_command {
            builder.critical_option("force-command", cmd.clone())?;
        }
        if let Some(addr) = &grant.source_address {
            builder.critical_option("source-address", addr.clone())?;
        }
        for ext in &grant.extensions {
            builder.extension(ext.clone(), "")?;
        }
        builder.comment(grant.key_id.clone())?;
        Ok(builder.sign(&CaKey(&self.key))?)
    }
}

/// The host CA: signs OpenSSH host certificates only, with a key of its own that is never
/// the user CA key (a user certificate signed by it, or a host certificate signed by the
/// user CA, cannot be made through this API).
pub struct HostSigner(Signer);

impl fmt::Debug for HostSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSigner")
            .field("public", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl HostSigner {
    /// Generates a new ed25519 host CA key at `path` (0600, encrypted when a passphrase is
    /// given) and its `.pub`. Refuses to overwrite an existing key.
    pub fn generate(path: &Path, passphrase: Option<&[u8]>) -> Result<Self, Error> {
        Signer::generate(path, passphrase, "moshca-host-ca").map(HostSigner)
    }

    /// Decodes a host CA key from the bytes of its file (read by the caller under the
    /// secret-file rule), decrypting it with the passphrase when it is encrypted.
    pub fn from_bytes(bytes: &[u8], path: &Path, passphrase: Option<&[u8]>) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadKey {
            path: path.display().to_string(),
            reason,
        };
        let key = PrivateKey::from_openssh(bytes)
            .map_err(|e| bad(format!("not an OpenSSH private key ({e})")))?;
        let key = if key.is_encrypted() {
            let p = passphrase.ok_or_else(|| {
                bad(
                    "is encrypted; set passphrase_file in config.toml or MOSHCA_CA_PASSPHRASE_FILE"
                        .into(),
                )
            })?;
            key.decrypt(p).map_err(|_| bad("wrong passphrase".into()))?
        } else {
            key
        };
        let mut signer = Signer::from_private(&key, path)?;
        signer.public.set_comment("moshca-host-ca");
        Ok(HostSigner(signer))
    }

    /// The host CA public key.
    pub fn public_key(&self) -> &PublicKey {
        self.0.public_key()
    }

    /// The host CA key's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }

    /// Signs a host certificate: principals are host names ([`valid_host_name`]), and no
    /// critical option or extension is allowed (OpenSSH defines none for host
    /// certificates).
    pub fn sign_host(&self, grant: &Grant, subject: &PublicKey) -> Result<Certificate, Error> {
        if let Some(p) = grant.principals.iter().find(|p| !valid_host_name(p)) {
            return Err(Error::Refused(format!("malformed host name {p:?}")));
        }
        if grant.force_command.is_some()
            || grant.source_address.is_some()
            || !grant.extensions.is_empty()
        {
            return Err(Error::Refused(
                "host certificates carry no options or extensions".into(),
            ));
        }
        self.0.sign_as(grant, subject, CertType::Host)
    }
}

/// Longest host name a host certificate may name (DNS's limit).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A host certificate principal: a DNS name or an IPv4 address, letters, digits, `.`, `-`
/// and `_`, not starting with `.` or `-`, at most [`MAX_HOST_NAME_LEN`] bytes. No `*` or
/// `?`: ssh treats them as wildcards in host certificates, and a join token names hosts
/// exactly.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_NAME_LEN
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

impl Signer {
    /// Signs an audit checkpoint (see `audit::Checkpoint::message`); hex signature.
    pub fn sign_checkpoint(&self, message: &[u8]) -> String {
        hex::encode(ed25519_dalek::Signer::sign(&self.key, message).to_bytes())
    }
}

/// Whether `signature` (hex) over `message` verifies with an ed25519 CA public key.
pub fn checkpoint_signature_ok(ca: &PublicKey, message: &[u8], signature: &str) -> bool {
    let KeyData::Ed25519(pk) = ca.key_data() else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk.0) else {
        return false;
    };
    let Ok(sig) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .ok_or(())
    else {
        return false;
    };
    vk.verify_strict(message, &sig).is_ok()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Why a subject key was rejected. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyRejection(pub String);

/// Parses and checks a subject public key: ed25519, sk-ed25519, ECDSA P-256/384/521,
/// sk-ECDSA, or RSA of 2048 to 16,384 bits; never a certificate, DSA, a CA key, or any key
/// OpenSSH would refuse to read ([`crate::krl::check_plain_key`]).
pub fn parse_subject_key(text: &str, ca_keys: &[PublicKey]) -> Result<PublicKey, KeyRejection> {
    let reject = |m: &str| KeyRejection(m.to_owned());
    if text.len() > MAX_SUBJECT_KEY_LEN {
        return Err(reject("public key is larger than 16 KiB"));
    }
    let text = text.trim();
    let label = text.split_ascii_whitespace().next().unwrap_or_default();
    if label.ends_with("-cert-v01@openssh.com") {
        return Err(reject(
            "a certificate was given where a plain public key is expected",
        ));
    }
    if label == "ssh-dss" {
        return Err(reject("DSA keys are not accepted; use ed25519"));
    }
    if text.contains(['\n', '\r', '\0']) {
        return Err(reject("public key must be a single line"));
    }
    let key = PublicKey::from_openssh(text).map_err(|_| {
        reject(
            "public key does not parse as an OpenSSH public key (\"ssh-ed25519 AAAA... comment\")",
        )
    })?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => {}
        KeyData::Ecdsa(_) => {}
        KeyData::Rsa(rsa) => {
            let bits = rsa
                .n
                .as_positive_bytes()
                .map(|n| n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize))
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(KeyRejection(format!(
                    "RSA key of {bits} bits is too small; use ed25519 or RSA of at least {MIN_RSA_BITS} bits"
                )));
            }
        }
        _ => return Err(reject("key type not accepted; use ed25519")),
    }
    // The same rule the KRL writer holds: a key OpenSSH cannot read would make a
    // certificate no sshd accepts, and a revocation of it that no KRL could list.
    let blob = key
        .to_bytes()
        .map_err(|_| reject("public key could not be re-encoded; use ed25519"))?;
    if let Err(why) = crate::krl::check_plain_key(&blob) {
        return Err(KeyRejection(format!(
            "OpenSSH would refuse this public key: it {why}; use ed25519"
        )));
    }
    if ca_keys.iter().any(|ca| ca.key_data() == key.key_data()) {
        return Err(reject("the CA's own key cannot be a subject key"));
    }
    Ok(PublicKey::new(key.key_data().clone(), ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::generate(&dir.path().join("ca_key"), None, "test").unwrap();
        (dir, s)
    }

    fn subject() -> PublicKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn grant() -> Grant {
        Grant {
            serial: 42,
            key_id: "moshca:req=01J:user=alice:role=db:by=bob".into(),
            principals: vec!["postgres".into()],
            valid_after: 1_790_000_000 - 60,
            valid_before: 1_790_000_000 + 1800,
            force_command: None,
            source_address: None,
            extensions: vec!["permit-pty".into()],
        }
    }

    #[test]
    fn signs_exactly_the_grant() {
        let (_d, s) = signer();
        let key = subject();
        let cert = s.sign(&grant(), &key).unwrap();
        assert_eq!(cert.serial(), 42);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.valid_principals(), ["postgres"]);
        assert_eq!(cert.valid_after(), 1_790_000_000 - 60);
        assert_eq!(cert.valid_before(), 1_790_000_000 + 1800);
        assert_eq!(cert.key_id(), "moshca:req=01J:user=alice:role=db:by=bob");
        assert_eq!(cert.extensions().keys().collect::<Vec<_>>(), ["permit-pty"]);
        assert!(cert.critical_options().is_empty());
        assert_eq!(cert.public_key(), key.key_data());
        assert_eq!(cert.signature_key(), s.public_key().key_data());
        // The signature verifies against the CA key at a time inside the window.
        cert.validate_at(
            1_790_000_000,
            [&s.public_key().fingerprint(HashAlg::Sha256)],
        )
        .unwrap();
    }

    #[test]
    fn the_host_signer_signs_host_certificates_with_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostSigner::generate(&dir.path().join("host_ca_key"), None).unwrap();
        let (_d, user) = signer();
        let mut g = grant();
        g.principals = vec!["db-1.example.com".into()];
        g.extensions.clear();
        let cert = host.sign_host(&g, &subject()).unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.signature_key(), host.public_key().key_data());
        assert_ne!(cert.signature_key(), user.public_key().key_data());
        let user_cert = user.sign(&grant(), &subject()).unwrap();
        assert_eq!(user_cert.cert_type(), CertType::User);
        // Host certificates carry no extensions or options.
        assert!(host.sign_host(&grant(), &subject()).is_err());
        // Reloaded from the bytes of its file, under the secret-file rule's reader.
        let bytes = std::fs::read(dir.path().join("host_ca_key")).unwrap();
        let again = HostSigner::from_bytes(&bytes, &dir.path().join("host_ca_key"), None).unwrap();
        assert_eq!(again.fingerprint(), host.fingerprint());
    }

    #[test]
    fn host_names() {
        for ok in ["db-1.example.com", "db_1", "10.0.0.1", "a"] {
            assert!(valid_host_name(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "*.example.com",
            "db?",
            "-x",
            ".x",
            "a..b",
            "a b",
            "a,b",
            long.as_str(),
        ] {
            assert!(!valid_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn critical_options_go_in_the_critical_block() {
        let (_d, s) = signer();
        let mut g = grant();
        g.force_command = Some("/usr/local/bin/deploy".into());
        g.source_address = Some("10.0.0.0/8".into());
        let cert = s.sign(&g, &subject()).unwrap();
        let opts = cert.critical_options();
        assert_eq!(opts.get("force-command").unwrap(), "/usr/local/bin/deploy");
        assert_eq!(opts.get("source-address").unwrap(), "10.0.0.0/8");
        assert!(!cert.extensions().contains_key("force-command"));
    }

    #[test]
    fn refuses_dangerous_grants() {
        let (_d, s) = signer();
        let key = subject();
        let mut g = grant();
        g.principals.clear();
        assert!(matches!(s.sign(&g, &key), Err(Error::Refused(_))));
        let mut g = grant();
        g.principals = vec!["a,b".into()];
        assert!(matches!(s.sign(&g, &key), Err(Error::Refused(_))));
        let mut g = grant();
        g.serial = 0;
        assert!(matches!(s.sign(&g, &key), Err(Error::Refused(_))));
        let mut g = grant();
        g.valid_before = g.valid_after;
        assert!(matches!(s.sign(&g, &key), Err(Error::Refused(_))));
        let mut g = grant();
        g.key_id = "id with space".into();
        assert!(matches!(s.sign(&g, &key), Err(Error::Refused(_))));
    }

    #[test]
    fn key_file_roundtrip_plain_and_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        let a = Signer::generate(&plain, None, "x").unwrap();
        let b = Signer::load(&plain, None).unwrap();
        assert_eq!(a.public_key().key_data(), b.public_key().key_data());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&plain).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            Signer::generate(&plain, None, "x").is_err(),
            "must not overwrite"
        );

        let enc = dir.path().join("enc");
        let c = Signer::generate(&enc, Some(b"correct horse"), "x").unwrap();
        let text = std::fs::read_to_string(&enc).unwrap();
        assert!(PrivateKey::from_openssh(&text).unwrap().is_encrypted());
        assert!(Signer::load(&enc, None).is_err());
        let wrong = Signer::load(&enc, Some(b"wrong")).unwrap_err().to_string();
        assert!(wrong.contains("wrong passphrase"), "{wrong}");
        let d = Signer::load(&enc, Some(b"correct horse")).unwrap();
        assert_eq!(c.public_key().key_data(), d.public_key().key_data());
    }

    #[test]
    fn debug_does_not_show_key_material() {
        let (_d, s) = signer();
        let dbg = format!("{s:?}");
        assert!(dbg.contains("SHA256:"));
        assert!(!dbg.contains(&hex::encode(s.key.to_bytes())));
    }

    #[test]
    fn subject_key_rules() {
        let (_d, s) = signer();
        let ca = [s.public_key().clone()];
        let ok = subject().to_openssh().unwrap();
        assert!(parse_subject_key(&ok, &ca).is_ok());
        // The CA's own key.
        let own = s.public_key().to_openssh().unwrap();
        assert!(
            parse_subject_key(&own, &ca)
                .unwrap_err()
                .0
                .contains("CA's own key")
        );
        // Too big, truncated, trailing bytes, wrong label, garbage.
        assert!(parse_subject_key(&"A".repeat(17 * 1024), &ca).is_err());
        let b64 = ok.split(' ').nth(1).unwrap();
        let truncated = format!("ssh-ed25519 {}", &b64[..b64.len() - 8]);
        assert!(parse_subject_key(&truncated, &ca).is_err());
        let mut blob =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
        blob.extend_from_slice(&[0, 0, 0, 0]);
        let trailing = format!(
            "ssh-ed25519 {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &blob)
        );
        assert!(parse_subject_key(&trailing, &ca).is_err());
        let relabelled = format!("ecdsa-sha2-nistp256 {b64}");
        assert!(parse_subject_key(&relabelled, &ca).is_err());
        assert!(parse_subject_key("hello", &ca).is_err());
        assert!(parse_subject_key("", &ca).is_err());
        // A certificate in place of a key.
        let cert = s.sign(&grant(), &subject()).unwrap().to_openssh().unwrap();
        assert!(
            parse_subject_key(&cert, &ca)
                .unwrap_err()
                .0
                .contains("certificate")
        );
        assert!(
            parse_subject_key("ssh-dss AAAAB3NzaC1kc3MAAACBAP", &ca)
                .unwrap_err()
                .0
                .contains("DSA")
        );
    }

    #[test]
    fn rsa_size_floor() {
        // Build RSA public keys of chosen modulus sizes directly; no key generation needed.
        let rsa = |bits: usize| {
            let mut n = vec![0u8; bits / 8];
            n[0] = 0x80;
            n[bits / 8 - 1] = 1;
            let key = ssh_key::public::RsaPublicKey {
                e: ssh_key::Mpint::from_positive_bytes(&[1, 0, 1]).unwrap(),
                n: ssh_key::Mpint::from_positive_bytes(&n).unwrap(),
            };
            PublicKey::new(KeyData::Rsa(key), "").to_openssh().unwrap()
        };
        assert!(
            parse_subject_key(&rsa(1024), &[])
                .unwrap_err()
                .0
                .contains("1024 bits")
        );
        assert!(parse_subject_key(&rsa(2040), &[]).is_err());
        assert!(parse_subject_key(&rsa(2048), &[]).is_ok());
        assert!(parse_subject_key(&rsa(4096), &[]).is_ok());
        assert!(parse_subject_key(&rsa(16_384), &[]).is_ok());
        let too_big = parse_subject_key(&rsa(16_392), &[]).unwrap_err().0;
        assert!(too_big.contains("over 16384 bits"), "{too_big}");
    }
}
