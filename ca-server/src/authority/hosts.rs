//! Host certificates: join tokens, enrolment, renewal by proof of possession, revocation
//! of host keys and host certificates, and the host CA keys clients trust.
//!
//! A host proves who it is once with a single-use join token an operator made for exactly
//! its names, and from then on with its private host key: a renewal answers a fresh nonce
//! with an SSH signature by the key of a current, unrevoked certificate this CA issued.
//! The host CA key is a key of its own ([`HostSigner`]); it never signs a user certificate
//! and the user CA key never signs a host certificate. Every token creation, enrolment,
//! renewal, revocation and refusal is an audit event in the transaction that decides it.

use rand::Rng as _;
use ssh_key::{Certificate, SshSig, certificate::CertType};

use super::*;
use crate::ca_keys::HostKeyFiles;
use crate::signer::{HostSigner, valid_host_name};
use crate::store::{HostCertRecord, HostTokenRecord};

/// Prefix of a join token (`mch_` + 43 base64url characters of 32 random bytes).
pub const JOIN_TOKEN_PREFIX: &str = "mch_";
/// Prefix of a join token's public id.
pub const JOIN_TOKEN_ID_PREFIX: &str = "htk_";
/// SSH signature namespace of renewal proofs: a signature made for anything else (a
/// `git` commit, a file signed with `ssh-keygen -Y sign -n file`) is never accepted.
pub const HOST_RENEW_NAMESPACE: &str = "moshca-host-renew@moshca";
/// How long a renewal nonce may be answered, in seconds.
pub const CHALLENGE_TTL: u64 = 60;
/// Shortest and longest join token lifetimes.
pub const JOIN_TOKEN_TTL: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;
/// Seconds a host certificate is valid before it was issued, for clocks a little behind.
pub const HOST_BACKDATE: u64 = 60;

/// The message a host signs to renew: domain-separated from anything else the key might
/// sign by its first line and by [`HOST_RENEW_NAMESPACE`], bound to the nonce and to the
/// certificate being renewed.
pub fn renew_message(nonce: &str, serial: u64) -> Vec<u8> {
    format!("moshca host renew v1\n{nonce}\n{serial}").into_bytes()
}

/// The host CA of a running server: the loaded signer, its key files, the default
/// validity of host certificates.
#[derive(Debug)]
pub struct HostCa {
    signer: RwLock<Arc<HostSigner>>,
    files: Option<HostKeyFiles>,
    default_ttl: u64,
}

impl HostCa {
    /// A host CA signing with `signer`; `files` (the data directory's host key files) add
    /// the keys still published after a rotation.
    pub fn new(signer: HostSigner, files: Option<HostKeyFiles>, default_ttl: u64) -> Self {
        HostCa {
            signer: RwLock::new(Arc::new(signer)),
            files,
            default_ttl,
        }
    }

    fn signer(&self) -> Arc<HostSigner> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A host certificate as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCert {
    /// The stored record (certificate line, serial, principals, validity).
    pub record: HostCertRecord,
}

/// A join token just made: shown once, never stored.
#[derive(Debug)]
pub struct IssuedJoinToken {
    /// The token itself (`mch_...`); only its SHA-256 is kept.
    pub token: Token,
    /// What is stored about it.
    pub record: HostTokenRecord,
}

/// What `moshca-server host revoke` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRevokeTarget {
    /// One host certificate.
    Serial(u64),
    /// A host key: every certificate for it, and the key itself for good.
    PublicKey(String),
}

/// Makes a single-use join token for exactly `principals`, valid `ttl` seconds; the host
/// certificate it yields is valid `cert_ttl` seconds (default: the server's
/// `host_cert_ttl`). Audited as `host.token_created` (its id, never the token).
pub fn create_join_token_at(
    store: &Store,
    principals: &[String],
    ttl: u64,
    cert_ttl: Option<u64>,
    by: &str,
    now: UnixTime,
) -> Result<IssuedJoinToken> {
    let mut names: Vec<String> = Vec::new();
    for p in principals {
        if !valid_host_name(p) {
            return Err(Error::InvalidArgument(format!(
                "--principal {:?} is not a host name: use letters, digits, '.', '-' and '_' (no wildcards), at most {} bytes",
                text::shown(p),
                signer::MAX_HOST_NAME_LEN
            )));
        }
        if !names.contains(p) {
            names.push(p.clone());
        }
    }
    if names.is_empty() || names.len() > policy::MAX_PRINCIPALS {
        return Err(Error::InvalidArgument(format!(
            "name the host with 1 to {} --principal NAME (e.g. --principal db-1.example.com --principal db-1)",
            policy::MAX_PRINCIPALS
        )));
    }
    if !JOIN_TOKEN_TTL.contains(&ttl) {
        return Err(Error::InvalidArgument(
            "--ttl must be between 1m and 7d (e.g. --ttl 1h)".into(),
        ));
    }
    if let Some(t) = cert_ttl
        && !(60..=crate::config::MAX_HOST_CERT_TTL).contains(&t)
    {
        return Err(Error::InvalidArgument(
            "--cert-ttl must be between 1m and 365d (e.g. --cert-ttl 30d)".into(),
        ));
    }
    let token = new_join_token();
    let record = HostTokenRecord {
        id: format!(
            "{JOIN_TOKEN_ID_PREFIX}{:016x}",
            rand::rngs::OsRng.r#gen::<u64>()
        ),
        principals: names,
        cert_ttl,
        created_by: by.to_owned(),
        created_at: now,
        expires_at: now + ttl,
        used_at: None,
        used_serial: None,
    };
    store.transact(|tx| {
        tx.insert_host_token(&token.hash(), &record)?;
        tx.append_audit(&Event::new(
            now,
            by,
            "host.token_created",
            None,
            json!({
                "token_id": record.id,
                "principals": record.principals,
                "expires_at": record.expires_at,
                "cert_ttl_secs": cert_ttl,
            }),
        ))
    })?;
    Ok(IssuedJoinToken { token, record })
}

fn new_join_token() -> Token {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill(&mut bytes);
    let text = format!(
        "{JOIN_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    bytes.fill(0);
    Token::from_presented(&text)
}

/// Every join token, newest first (never the tokens themselves).
pub fn host_tokens(store: &Store) -> Result<Vec<HostTokenRecord>> {
    Ok(store.read(|tx| tx.host_tokens())?)
}

/// Host certificates still valid at `now` (revoked ones too), newest first.
pub fn host_certificates_at(store: &Store, now: UnixTime) -> Result<Vec<HostCertRecord>> {
    Ok(store.read(|tx| tx.live_host_certificates(now))?)
}

/// Revokes a host certificate, or a host key with every certificate for it; the KRL
/// (for clients' `RevokedHostKeys`) lists them from its next version. Audited as
/// `host.revoked`.
pub fn revoke_host_at(
    store: &Store,
    target: &HostRevokeTarget,
    reason: &str,
    by: &str,
    now: UnixTime,
) -> Result<Revoked> {
    let reason = reason.trim();
    if reason.is_empty() || !free_text_ok(reason) {
        return Err(Error::InvalidArgument(
            "a revocation needs a reason of at most 1024 bytes: --reason TEXT".into(),
        ));
    }
    store.transact(|tx| {
        let mut changed = false;
        let (certs, target_desc) = match target {
            HostRevokeTarget::Serial(serial) => {
                let cert = tx.host_certificate(*serial)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "no host certificate with serial {serial}; `moshca-server host list` shows them"
                    ))
                })?;
                (vec![cert], json!({ "serial": serial.to_string() }))
            }
            HostRevokeTarget::PublicKey(text) => {
                let key = listable_key(text).map_err(|why| {
                    Error::InvalidArgument(format!(
                        "cannot revoke this host key: {why}; revoke its certificate with --serial N"
                    ))
                })?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                let text = key.to_openssh().map_err(signer::Error::from)?;
                changed |= tx.insert_revoked_key(&fingerprint, &text, reason, by, now)?;
                (
                    tx.live_host_certificates_for_key(&fingerprint, now)?,
                    json!({ "fingerprint": fingerprint }),
                )
            }
        };
        let mut serials = Vec::new();
        for cert in certs {
            if cert.valid_before > now && tx.revoke_host_certificate(cert.serial, now)? {
                serials.push(cert.serial);
            }
        }
        changed |= !serials.is_empty();
        let krl_version = if changed {
            tx.bump_krl_version()?
        } else {
            tx.krl_version()?
        };
        tx.append_audit(&Event::new(
            now,
            by,
            "host.revoked",
            None,
            json!({
                "target": target_desc,
                "serials": serials.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "reason": reason,
                "krl_version": krl_version,
            }),
        ))?;
        Ok(Revoked {
            serials,
            krl_version,
        })
    })
}

/// A refusal decided inside a transaction: the audit event is committed with it.
struct Refused {
    error: Error,
    details: serde_json::Value,
}

fn refused(error: Error, details: serde_json::Value) -> Refused {
    Refused { error, details }
}

impl Authority {
    /// Certifies hosts with `host_ca` from now on.
    pub fn with_host_ca(mut self, host_ca: HostCa) -> Self {
        self.host_ca = Some(host_ca);
        self
    }

    fn host_ca(&self) -> Result<&HostCa> {
        self.host_ca.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this CA has no host CA key; the operator restarts moshca-server serve, which creates one".into(),
            )
        })
    }

    /// Switches host signing to `signer` (after `ca rotate --host` and a reload); audited
    /// when it changes. Returns whether it changed.
    pub fn replace_host_signer(&self, signer: HostSigner, now: UnixTime) -> Result<bool> {
        let ca = self.host_ca()?;
        let old = ca.signer().fingerprint();
        if old == signer.fingerprint() {
            return Ok(false);
        }
        let new = signer.fingerprint();
        self.audit(Event::new(
            now,
            "moshca-server",
            "host_ca.activated",
            None,
            json!({ "ca_fingerprint": new, "previous": old }),
        ))?;
        *ca.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        tracing::info!(fingerprint = %new, "now signing host certificates with the new host CA key");
        Ok(true)
    }

    /// Host CA public keys clients should trust at `now` (`@cert-authority`), the
    /// signing key first: the loaded key, the active key file, and retired key files while
    /// a certificate they signed is valid. Only keys held as files.
    pub fn host_ca_public_keys_at(&self, now: UnixTime) -> Result<Vec<PublicKey>> {
        let Some(ca) = &self.host_ca else {
            return Ok(Vec::new());
        };
        let mut keys = vec![ca.signer().public_key().clone()];
        let add = |k: PublicKey, keys: &mut Vec<PublicKey>| {
            if !keys.iter().any(|h| h.key_data() == k.key_data()) {
                keys.push(k);
            }
        };
        if let Some(files) = &ca.files {
            if let Some(active) = files.active() {
                add(active, &mut keys);
            }
            let retired = files.retired();
            if !retired.is_empty() {
                let in_use: Vec<bool> = self.store.read(|tx| {
                    retired
                        .iter()
                        .map(|k| {
                            tx.host_ca_key_in_use(&k.fingerprint(HashAlg::Sha256).to_string(), now)
                        })
                        .collect::<store::Result<Vec<bool>>>()
                })?;
                for (k, used) in retired.into_iter().zip(in_use) {
                    if used {
                        add(k, &mut keys);
                    }
                }
            }
        }
        Ok(keys)
    }

    /// The loaded host CA public key, if any (no file read): a subject key may never be it.
    pub(super) fn host_signing_key(&self) -> Option<PublicKey> {
        self.host_ca
            .as_ref()
            .map(|ca| ca.signer().public_key().clone())
    }

    /// Enrols a host: trades a single-use join token and the host's public key for a
    /// host certificate with exactly the token's principals. `principals`, when given,
    /// must be exactly the token's. Refusals are audited (`host.enroll_refused`) with the
    /// token's id when it is known, never the token.
    pub fn enroll_host_at(
        &self,
        token: &Token,
        public_key: &str,
        principals: &[String],
        peer: &str,
        now: UnixTime,
    ) -> Result<HostCert> {
        let ca = self.host_ca()?;
        let signer = ca.signer();
        let mut ca_keys = self.held_keys();
        ca_keys.push(signer.public_key().clone());
        let hash = token.hash();
        let outcome = self.store.transact(|tx| {
            let decided = (|| -> std::result::Result<HostCert, Refused> {
                let unknown = || {
                    refused(
                        Error::Unauthenticated(
                            "join token not recognised; ask the CA operator for a new one (`moshca-server host token create --principal NAME`)".into(),
                        ),
                        json!({}),
                    )
                };
                if !(token.expose().len() == JOIN_TOKEN_PREFIX.len() + 43
                    && token.expose().starts_with(JOIN_TOKEN_PREFIX))
                {
                    return Err(unknown());
                }
                let record = tx.host_token_by_hash(&hash).map_err(internal)?.ok_or_else(unknown)?;
                let about = json!({ "token_id": record.id });
                if let Some(used) = record.used_at {
                    return Err(refused(
                        Error::PermissionDenied(format!(
                            "join token {} was already used ({}); a token enrols one host once: ask the CA operator for a new one",
                            record.id,
                            fmt_time(used)
                        )),
                        about,
                    ));
                }
                if record.expires_at <= now {
                    return Err(refused(
                        Error::PermissionDenied(format!(
                            "join token {} expired {}; ask the CA operator for a new one",
                            record.id,
                            fmt_time(record.expires_at)
                        )),
                        about,
                    ));
                }
                if !principals.is_empty() {
                    let mut asked: Vec<&String> = principals.iter().collect();
                    asked.sort();
                    asked.dedup();
                    let mut named: Vec<&String> = record.principals.iter().collect();
                    named.sort();
                    if asked != named {
                        return Err(refused(
                            Error::PermissionDenied(format!(
                                "join token {} names exactly {}; enrol without --principal, or ask the CA operator for a token naming the host",
                                record.id,
                                record.principals.join(", ")
                            )),
                            json!({ "token_id": record.id, "asked": principals.iter().map(|p| text::shown(p)).collect::<Vec<_>>() }),
                        ));
                    }
                }
                let key = signer::parse_subject_key(public_key, &ca_keys).map_err(|e| {
                    refused(Error::InvalidArgument(format!("host key refused: {}", e.0)), about.clone())
                })?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                if tx.key_revoked(&fingerprint).map_err(internal)?
                    || tx.is_ca_key(&fingerprint).map_err(internal)?
                {
                    return Err(refused(
                        Error::PermissionDenied(format!(
                            "host key {fingerprint} is revoked; make a new host key (ssh-keygen -t ed25519 -f /etc/ssh/ssh_host_ed25519_key) and enrol that"
                        )),
                        json!({ "token_id": record.id, "fingerprint": fingerprint }),
                    ));
                }
                let ttl = record.cert_ttl.unwrap_or(ca.default_ttl);
                let serial = fresh_serial(tx).map_err(internal)?;
                // Marked used before anything is written, so no refusal below it exists.
                if !tx.use_host_token(&hash, now, serial).map_err(internal)? {
                    return Err(refused(
                        Error::PermissionDenied(format!(
                            "join token {} was already used; ask the CA operator for a new one",
                            record.id
                        )),
                        about,
                    ));
                }
                let issued = self
                    .issue_host(tx, &signer, &key, &record.principals, ttl, &record.id, None, serial, now)
                    .map_err(|e| refused(e, json!({})))?;
                tx.append_audit(&Event::new(
                    now,
                    &format!("host:{}", record.principals[0]),
                    "host.enrolled",
                    None,
                    json!({
                        "token_id": record.id,
                        "serial": issued.record.serial.to_string(),
                        "fingerprint": issued.record.fingerprint,
                        "principals": issued.record.principals,
                        "valid_before": issued.record.valid_before,
                        "ca_fingerprint": issued.record.ca_fingerprint,
                        "peer": peer,
                    }),
                ))
                .map_err(internal)?;
                Ok(issued)
            })();
            settle(tx, decided, "host.enroll_refused", peer, now)
        });
        finish(outcome, "enrolment").inspect(|_| host_issued())
    }

    /// First step of a renewal: a nonce for the key of `certificate`, which must be a
    /// current, unrevoked host certificate this CA issued.
    pub fn host_challenge_at(
        &self,
        certificate: &str,
        peer: &str,
        now: UnixTime,
    ) -> Result<(String, u64)> {
        self.host_ca()?;
        let outcome = self.store.transact(|tx| {
            let decided = (|| -> std::result::Result<(String, u64), Refused> {
                let record = current_record(tx, certificate, now)?;
                let mut bytes = [0u8; 32];
                rand::rngs::OsRng.fill(&mut bytes);
                let nonce = hex::encode(bytes);
                let expires_at = now + CHALLENGE_TTL;
                tx.put_host_challenge(&record.fingerprint, &nonce, record.serial, now, expires_at)
                    .map_err(internal)?;
                Ok((nonce, expires_at))
            })();
            settle(tx, decided, "host.renew_refused", peer, now)
        });
        finish(outcome, "renewal challenge")
    }

    /// Second step: renews `certificate` when `signature` (an SSH signature, PEM) over
    /// [`renew_message`] of `nonce` verifies with the certificate's own key. The new
    /// certificate has the same principals and validity period length; the old one stays
    /// valid until it expires (sshd may still present it until reloaded).
    pub fn renew_host_at(
        &self,
        certificate: &str,
        nonce: &str,
        signature: &str,
        peer: &str,
        now: UnixTime,
    ) -> Result<HostCert> {
        let ca = self.host_ca()?;
        let signer = ca.signer();
        let outcome = self.store.transact(|tx| {
            let decided = (|| -> std::result::Result<HostCert, Refused> {
                let record = current_record(tx, certificate, now)?;
                let about = json!({ "serial": record.serial.to_string(), "fingerprint": record.fingerprint });
                let challenge = tx.take_host_challenge(&record.fingerprint, nonce).map_err(internal)?;
                match challenge {
                    Some((serial, expires_at)) if serial == record.serial && expires_at > now => {}
                    Some(_) => {
                        return Err(refused(
                            Error::FailedPrecondition(
                                "the renewal challenge expired; run `moshca host renew` again".into(),
                            ),
                            about,
                        ));
                    }
                    None => {
                        return Err(refused(
                            Error::PermissionDenied(
                                "unknown or already answered renewal challenge; run `moshca host renew` again".into(),
                            ),
                            about,
                        ));
                    }
                }
                let bad_proof = |why: &str| {
                    refused(
                        Error::PermissionDenied(format!(
                            "renewal refused: {why}; sign with the private key of the certified host key (`moshca host renew --key FILE.pub` reads FILE beside it)"
                        )),
                        about.clone(),
                    )
                };
                let sig = SshSig::from_pem(signature.trim())
                    .map_err(|_| bad_proof("the signature is not an SSH signature"))?;
                if sig.namespace() != HOST_RENEW_NAMESPACE {
                    return Err(bad_proof("the signature is for another purpose"));
                }
                let host_key = PublicKey::from_openssh(&record.public_key)
                    .map_err(|e| internal(store::Error::Corrupt(format!("host key: {e}"))))?;
                host_key
                    .verify(HOST_RENEW_NAMESPACE, &renew_message(nonce, record.serial), &sig)
                    .map_err(|_| bad_proof("the signature was not made by the certified host key"))?;
                let serial = fresh_serial(tx).map_err(internal)?;
                let issued = self
                    .issue_host(
                        tx,
                        &signer,
                        &host_key,
                        &record.principals,
                        record.ttl_secs,
                        &record.token_id,
                        Some(record.serial),
                        serial,
                        now,
                    )
                    .map_err(|e| refused(e, json!({})))?;
                tx.append_audit(&Event::new(
                    now,
                    &format!("host:{}", record.principals[0]),
                    "host.renewed",
                    None,
                    json!({
                        "serial": issued.record.serial.to_string(),
                        "previous": record.serial.to_string(),
                        "fingerprint": issued.record.fingerprint,
                        "principals": issued.record.principals,
                        "valid_before": issued.record.valid_before,
                        "ca_fingerprint": issued.record.ca_fingerprint,
                        "peer": peer,
                    }),
                ))
                .map_err(internal)?;
                Ok(issued)
            })();
            settle(tx, decided, "host.renew_refused", peer, now)
        });
        finish(outcome, "renewal").inspect(|_| host_issued())
    }

    /// Signs and records one host certificate.
    #[allow(clippy::too_many_arguments)]
    fn issue_host(
        &self,
        tx: &Tx<'_>,
        signer: &HostSigner,
        key: &PublicKey,
        principals: &[String],
        ttl: u64,
        token_id: &str,
        renewed_from: Option<u64>,
        serial: u64,
        now: UnixTime,
    ) -> Result<HostCert> {
        let grant = Grant {
            serial,
            key_id: format!("moshca:host={}:token={token_id}", principals[0]),
            principals: principals.to_vec(),
            valid_after: now.saturating_sub(HOST_BACKDATE),
            valid_before: now + ttl,
            force_command: None,
            source_address: None,
            extensions: Vec::new(),
        };
        let cert = signer.sign_host(&grant, key)?;
        let record = HostCertRecord {
            serial,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            public_key: PublicKey::new(key.key_data().clone(), "")
                .to_openssh()
                .map_err(signer::Error::from)?,
            key_id: grant.key_id.clone(),
            principals: grant.principals.clone(),
            ttl_secs: ttl,
            valid_after: grant.valid_after,
            valid_before: grant.valid_before,
            ca_fingerprint: signer.fingerprint(),
            ca_key: signer
                .public_key()
                .to_openssh()
                .map_err(signer::Error::from)?,
            openssh: cert.to_openssh().map_err(signer::Error::from)?,
            issued_at: now,
            token_id: token_id.to_owned(),
            renewed_from,
            revoked_at: None,
        };
        tx.insert_host_certificate(&record)?;
        Ok(HostCert { record })
    }
}

/// The stored record of `certificate` when it is a current, unrevoked host certificate
/// this CA issued, exactly as issued.
fn current_record(
    tx: &Tx<'_>,
    certificate: &str,
    now: UnixTime,
) -> std::result::Result<HostCertRecord, Refused> {
    let not_ours = || {
        refused(
            Error::PermissionDenied(
                "this is not a host certificate this CA issued; enrol the host with a join token (`moshca host enroll --token T`)".into(),
            ),
            json!({}),
        )
    };
    let cert = Certificate::from_openssh(certificate.trim()).map_err(|_| {
        refused(
            Error::InvalidArgument(
                "the certificate does not parse as an OpenSSH certificate (the ..._key-cert.pub file)".into(),
            ),
            json!({}),
        )
    })?;
    if cert.cert_type() != CertType::Host {
        return Err(not_ours());
    }
    let record = tx
        .host_certificate(cert.serial())
        .map_err(internal)?
        .ok_or_else(not_ours)?;
    // The very certificate issued, not one made elsewhere with the same serial.
    let issued = Certificate::from_openssh(&record.openssh)
        .map_err(|e| internal(store::Error::Corrupt(format!("host certificate: {e}"))))?;
    if issued.signature() != cert.signature() || issued.public_key() != cert.public_key() {
        return Err(not_ours());
    }
    let about = json!({ "serial": record.serial.to_string(), "fingerprint": record.fingerprint });
    if record.revoked_at.is_some() || tx.key_revoked(&record.fingerprint).map_err(internal)? {
        return Err(refused(
            Error::PermissionDenied(format!(
                "host certificate {} (key {}) is revoked; make a new host key and enrol it with a new join token",
                record.serial, record.fingerprint
            )),
            about,
        ));
    }
    if record.valid_before <= now {
        return Err(refused(
            Error::FailedPrecondition(format!(
                "host certificate {} expired {}; renewal needs a current certificate: enrol again with a new join token",
                record.serial,
                fmt_time(record.valid_before)
            )),
            about,
        ));
    }
    Ok(record)
}

/// A random serial used by no certificate, user or host.
fn fresh_serial(tx: &Tx<'_>) -> store::Result<u64> {
    loop {
        let s = random_serial();
        if !tx.serial_exists(s)? && !tx.host_serial_exists(s)? {
            return Ok(s);
        }
    }
}

fn internal(e: store::Error) -> Refused {
    Refused {
        error: Error::Store(e),
        details: json!({}),
    }
}

/// Commits a decision: an outcome as it is, a refusal with its audit event (internal
/// failures roll back and are not audited as refusals).
fn settle<T>(
    tx: &Tx<'_>,
    decided: std::result::Result<T, Refused>,
    action: &str,
    peer: &str,
    now: UnixTime,
) -> Result<std::result::Result<T, Error>> {
    match decided {
        Ok(v) => Ok(Ok(v)),
        Err(r) if r.error.is_internal() => Err(r.error),
        Err(r) => {
            let mut details = r.details;
            if let Some(map) = details.as_object_mut() {
                map.insert("reason".into(), json!(r.error.to_string()));
                map.insert("peer".into(), json!(peer));
            }
            tx.append_audit(&Event::new(now, "anonymous", action, None, details))?;
            Ok(Err(r.error))
        }
    }
}

/// Counts a committed host certificate; hosts have no role.
fn host_issued() {
    crate::metrics::issued(std::borrow::Cow::Borrowed(""), crate::metrics::Path::Host);
}

fn finish<T>(outcome: Result<std::result::Result<T, Error>>, what: &str) -> Result<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("host {what} refused: {e}");
            Err(e)
        }
        Err(e) => Err(e),
    }
}
