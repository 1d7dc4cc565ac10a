//! Revocation and what hosts pull: revoke by serial, request, user or key; the KRL; the
//! CA keys to trust (active and retired-but-needed).

use super::*;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One certificate.
    Serial(u64),
    /// The certificate of one request.
    Request(String),
    /// Every live certificate of a user, who is also disabled.
    User(String),
    /// Every certificate for a subject key, and the key itself for good.
    PublicKey(String),
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serials newly revoked.
    pub serials: Vec<u64>,
    /// The KRL version that includes them.
    pub krl_version: u64,
}

impl Authority {
    /// Revokes certificates (and, for a key, the key itself). Who may: `defaults.revokers`
    /// for anything, a role's `revokers` for that role's certificates, and a requester for
    /// their own.
    pub fn revoke_at(
        &self,
        caller: &Caller,
        target: RevokeTarget,
        reason: &str,
        now: UnixTime,
    ) -> Result<Revoked> {
        let reason = reason.trim();
        if reason.is_empty() || !free_text_ok(reason) {
            return Err(Error::InvalidArgument(
                "a revocation needs a reason of at most 1024 bytes: --reason TEXT".into(),
            ));
        }
        let policy = self.policy();
        let global = policy::selects(&policy.defaults.revokers, caller);
        let may_revoke = |cert: &CertRecord| {
            global
                || cert.requester == caller.name
                || policy
                    .role(&cert.role)
                    .is_some_and(|r| r.may_revoke(caller, &policy.defaults))
        };
        let denied = |what: &str| {
            Error::PermissionDenied(format!(
                "you may not revoke {what}; revokers are listed in the policy (defaults.revokers, role revokers)"
            ))
        };
        let result = self.store.transact(|tx| {
            let mut changed = false;
            let (certs, target_desc) = match &target {
                RevokeTarget::Serial(serial) => {
                    let cert = tx.certificate_by_serial(*serial)?.ok_or_else(|| {
                        Error::NotFound(format!("no certificate with serial {serial}"))
                    })?;
                    if !may_revoke(&cert) {
                        return Err(denied(&format!("certificate {serial}")));
                    }
                    (vec![cert], json!({ "serial": serial.to_string() }))
                }
                RevokeTarget::Request(id) => {
                    let cert = tx.certificate_for_request(id)?.ok_or_else(|| {
                        Error::NotFound(format!("request {id} has no certificate"))
                    })?;
                    if !may_revoke(&cert) {
                        return Err(denied(&format!("the certificate of request {id}")));
                    }
                    (vec![cert], json!({ "request_id": id }))
                }
                RevokeTarget::User(name) => {
                    if !global && *name != caller.name {
                        return Err(denied(&format!("user {name}'s certificates")));
                    }
                    let user = tx
                        .user(name)?
                        .ok_or_else(|| Error::NotFound(format!("no user named {name}")))?;
                    if !user.disabled {
                        tx.set_user_disabled(name, true)?;
                        changed = true;
                    }
                    (tx.live_certificates_of(name, now)?, json!({ "user": name }))
                }
                RevokeTarget::PublicKey(text) => {
                    let key = listable_key(text).map_err(|why| {
                        Error::InvalidArgument(format!(
                            "cannot revoke this key by key: {why}; revoke its certificates with --serial N or --request ID"
                        ))
                    })?;
                    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                    let certs = tx.live_certificates_for_key(&fingerprint, now)?;
                    let own = !certs.is_empty() && certs.iter().all(|c| c.requester == caller.name);
                    if !global && !own {
                        return Err(denied(&format!("key {fingerprint}")));
                    }
                    // Every revoked key stays in the KRL for good: bound what one user can
                    // add to what every host downloads. Revokers are not bounded.
                    if !global
                        && !tx.key_revoked(&fingerprint)?
                        && tx.keys_revoked_by_since(
                            &caller.name,
                            now.saturating_sub(SELF_KEY_REVOCATION_WINDOW),
                        )? >= MAX_SELF_KEY_REVOCATIONS
                    {
                        return Err(Error::ResourceExhausted(format!(
                            "limit reached: at most {MAX_SELF_KEY_REVOCATIONS} keys revoked by one user in 24 hours; ask a revoker (defaults.revokers) to revoke this key, or revoke its certificates with --serial N"
                        )));
                    }
                    let text = key.to_openssh().map_err(signer::Error::from)?;
                    changed |=
                        tx.insert_revoked_key(&fingerprint, &text, reason, &caller.name, now)?;
                    (certs, json!({ "fingerprint": fingerprint }))
                }
            };
            let mut serials = Vec::new();
            for cert in certs {
                if cert.valid_before > now && tx.revoke_certificate(cert.serial, now)? {
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
                &caller.name,
                "certificate.revoked",
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
        });
        match &result {
            Ok(r) => {
                tracing::info!(caller = %caller.name, serials = ?r.serials, krl_version = r.krl_version, "certificates revoked")
            }
            Err(e) if !e.is_internal() => {
                tracing::warn!(caller = %caller.name, "revocation refused: {e}");
                let _ = self.audit(Event::new(
                    now,
                    &caller.name,
                    "revocation.refused",
                    None,
                    json!({ "reason": e.to_string() }),
                ));
            }
            Err(_) => {}
        }
        result
    }

    /// The KRL for `now`: every revoked certificate not yet expired, by serial under its
    /// CA key, and every revoked subject key.
    ///
    /// Built once per KRL version and set of CA keys, and again at most every
    /// [`KRL_REBUILD_AFTER`] seconds to drop expired certificates. Every revocation bumps
    /// the version in its own transaction, so a cached KRL never misses a revocation;
    /// it may only still list certificates that have expired since. Hosts polling every
    /// minute cost one cheap read each instead of a scan of every revocation.
    pub fn krl_at(&self, now: UnixTime) -> Result<(Vec<u8>, u64)> {
        let active = self.signer().fingerprint();
        let (version, ca_keys) = self
            .store
            .read(|tx| Ok::<_, Error>((tx.krl_version()?, tx.trusted_ca_keys(&active, now)?)))?;
        let held = self.held_keys();
        let ca_keys: Vec<String> = ca_keys
            .into_iter()
            .filter(|text| {
                PublicKey::from_openssh(text)
                    .is_ok_and(|k| held.iter().any(|h| h.key_data() == k.key_data()))
            })
            .collect();
        // Held while building, so concurrent misses build once.
        let mut cache = self.krl_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref()
            && c.version == version
            && c.ca_keys == ca_keys
            && now.saturating_sub(c.built_at) < KRL_REBUILD_AFTER
        {
            return Ok((c.krl.clone(), c.version));
        }
        let BuiltKrl {
            krl,
            version: built,
            skipped,
        } = crate::metrics::time_krl_build(|| {
            build_krl(&self.store, &parse_ca_keys(&ca_keys)?, now)
        })?;
        // Audited once per entry while this server runs, not at every rebuild.
        let fresh: Vec<SkippedEntry> = {
            let mut seen = self
                .krl_skips_audited
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            skipped
                .into_iter()
                .filter(|s| seen.insert(s.fingerprint.clone()))
                .collect()
        };
        if !fresh.is_empty()
            && let Err(e) = audit_skipped(&self.store, &fresh, built, now)
        {
            // The KRL is still served: hosts must get revocations even when the audit
            // write fails. Forget the entries so the next build tries again.
            tracing::error!(error = %e, "could not audit revoked keys left out of the KRL");
            let mut seen = self
                .krl_skips_audited
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for s in &fresh {
                seen.remove(&s.fingerprint);
            }
        }
        *cache = Some(CachedKrl {
            version: built,
            ca_keys,
            built_at: now,
            krl: krl.clone(),
        });
        Ok((krl, built))
    }
}

/// Most keys a user may revoke by key in [`SELF_KEY_REVOCATION_WINDOW`] without being a
/// revoker (`defaults.revokers`). A revoked key is listed in every KRL for good, so this
/// bounds how much one user can grow what every host downloads: at most 10 keys of at most
/// about 2 KiB each (RSA of 16,384 bits) a day.
pub const MAX_SELF_KEY_REVOCATIONS: u64 = 10;
/// The window of [`MAX_SELF_KEY_REVOCATIONS`], in seconds (24 hours, rolling).
pub const SELF_KEY_REVOCATION_WINDOW: u64 = 24 * 60 * 60;

/// Parses a public key given for revocation, or stored as revoked, and checks that a KRL
/// can list it: the one rule for both, so nothing is stored that the KRL writer would
/// refuse. The key comes back without its comment.
///
/// # Errors
///
/// Why the key cannot be listed, safe to show the caller.
pub fn listable_key(text: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(text.trim())
        .map_err(|_| "it does not parse as an OpenSSH public key".to_owned())?;
    let key = PublicKey::new(key.key_data().clone(), "");
    let blob = key
        .to_bytes()
        .map_err(|_| "it cannot be encoded as an OpenSSH public key".to_owned())?;
    crate::krl::check_plain_key(&blob)
        .map_err(|why| format!("OpenSSH would refuse it (it {why}), so no KRL can list it"))?;
    Ok(key)
}

/// A stored revocation left out of a KRL because the KRL cannot list it (a key OpenSSH
/// cannot read, written by an older version or by hand). Leaving it out costs nothing:
/// sshd cannot accept such a key either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// The SHA-256 fingerprint the entry is stored under.
    pub fingerprint: String,
    /// Why it cannot be listed.
    pub reason: String,
}

/// A KRL built from the store.
#[derive(Debug, Clone)]
pub struct BuiltKrl {
    /// The encoded KRL.
    pub krl: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// Stored entries left out.
    pub skipped: Vec<SkippedEntry>,
}

/// Records skipped entries in the audit log, one `krl.entry_skipped` event each.
pub fn audit_skipped(
    store: &Store,
    skipped: &[SkippedEntry],
    version: u64,
    now: UnixTime,
) -> Result<()> {
    store.transact(|tx| {
        for entry in skipped {
            tx.append_audit(&Event::new(
                now,
                "moshca-server",
                "krl.entry_skipped",
                None,
                json!({
                    "fingerprint": entry.fingerprint,
                    "reason": entry.reason,
                    "krl_version": version,
                }),
            ))?;
        }
        Ok::<_, Error>(())
    })
}

/// Longest a cached KRL is served before it is rebuilt (only to drop expired
/// certificates; revocations rebuild it at once).
pub const KRL_REBUILD_AFTER: u64 = 60;

/// The last KRL built, with what it was built from.
#[derive(Debug)]
pub(super) struct CachedKrl {
    version: u64,
    ca_keys: Vec<String>,
    built_at: UnixTime,
    krl: Vec<u8>,
}

/// CA public keys to trust at `now` given the active key's fingerprint, active first, as
/// the database lists them. Only [`held_trusted_ca_keys`] may be published.
pub fn trusted_ca_keys(store: &Store, active: &str, now: UnixTime) -> Result<Vec<PublicKey>> {
    parse_ca_keys(&store.read(|tx| tx.trusted_ca_keys(active, now))?)
}

/// [`trusted_ca_keys`] less those no key file holds (`held`, see `ca_keys`): a database
/// row alone never makes a key trusted. The ignored ones are returned as fingerprints.
pub fn held_trusted_ca_keys(
    store: &Store,
    held: &[PublicKey],
    active: &str,
    now: UnixTime,
) -> Result<(Vec<PublicKey>, Vec<String>)> {
    Ok(crate::ca_keys::only_held(
        trusted_ca_keys(store, active, now)?,
        held,
    ))
}

/// CA public keys as the store holds them (OpenSSH text), parsed.
fn parse_ca_keys(texts: &[String]) -> Result<Vec<PublicKey>> {
    texts
        .iter()
        .map(|k| {
            PublicKey::from_openssh(k)
                .map_err(|e| store::Error::Corrupt(format!("CA key: {e}")).into())
        })
        .collect()
}

/// Builds the KRL from the store for the given CA public keys (offline use needs no private
/// key): every revoked, unexpired certificate by serial under its CA, every revoked key.
pub fn krl_from_store(
    store: &Store,
    ca_keys: &[PublicKey],
    now: UnixTime,
) -> Result<(Vec<u8>, u64)> {
    let built = build_krl(store, ca_keys, now)?;
    Ok((built.krl, built.version))
}

/// As [`krl_from_store`], and says which stored entries it left out. An entry the KRL
/// cannot list is skipped (with one warning per build) rather than failing the whole KRL:
/// one bad row must not stop every later revocation from reaching hosts.
pub fn build_krl(store: &Store, ca_keys: &[PublicKey], now: UnixTime) -> Result<BuiltKrl> {
    let (revoked, keys, version, revoked_hosts) = store.read(|tx| {
        Ok::<_, Error>((
            tx.revoked_live_certificates(now)?,
            tx.revoked_key_entries()?,
            tx.krl_version()?,
            tx.revoked_live_host_certificates(now)?,
        ))
    })?;
    let mut sections: Vec<crate::krl::CaSection> = Vec::new();
    for ca in ca_keys {
        let fingerprint = ca.fingerprint(HashAlg::Sha256).to_string();
        let serials: Vec<u64> = revoked
            .iter()
            .filter(|r| r.ca_fingerprint == fingerprint)
            .map(|r| r.serial)
            .collect();
        if !serials.is_empty() {
            sections.push(crate::krl::CaSection {
                ca_key: ca.to_bytes().map_err(signer::Error::from)?,
                serials,
                key_ids: Vec::new(),
            });
        }
    }
    // Host certificates, each under the host CA key that signed it (recorded with the
    // certificate): what ssh clients check with `RevokedHostKeys`.
    let mut host_sections: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (serial, ca_key) in revoked_hosts {
        host_sections.entry(ca_key).or_default().push(serial);
    }
    for (ca_key, serials) in host_sections {
        let ca = PublicKey::from_openssh(&ca_key)
            .map_err(|e| store::Error::Corrupt(format!("host CA key: {e}")))?;
        sections.push(crate::krl::CaSection {
            ca_key: ca.to_bytes().map_err(signer::Error::from)?,
            serials,
            key_ids: Vec::new(),
        });
    }
    let mut explicit_keys = Vec::with_capacity(keys.len());
    let mut skipped = Vec::new();
    for (fingerprint, text) in &keys {
        match listable_key(text).and_then(|k| k.to_bytes().map_err(|e| e.to_string())) {
            Ok(blob) => explicit_keys.push(blob),
            Err(reason) => skipped.push(SkippedEntry {
                fingerprint: fingerprint.clone(),
                reason,
            }),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(
            krl_version = version,
            skipped = skipped.len(),
            fingerprints = ?skipped.iter().map(|s| s.fingerprint.as_str()).collect::<Vec<_>>(),
            "revoked keys left out of the KRL: OpenSSH cannot read them"
        );
    }
    let krl = crate::krl::Krl {
        version,
        generated_at: now,
        comment: format!("moshca KRL version {version}"),
        ca_sections: sections,
        explicit_keys,
        sha256_keys: Vec::new(),
    };
    Ok(BuiltKrl {
        krl: krl.encode()?,
        version,
        skipped,
    })
}
