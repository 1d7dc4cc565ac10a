//! Use cases: request, review, cancel, read, expire. Orchestrates `policy`, `approvals`,
//! `signer`, `store` and `audit`.
//!
//! Every change and the audit events that record it commit in one store transaction; a
//! certificate is returned only once the transaction that marks its request issued has
//! committed, so none exists without its rows. Requests issued the moment they are made
//! are signed just before that transaction (not under the write lock); approved ones
//! inside it. No proto types and no SQL here; methods block on the store,
//! so async callers run them on a blocking thread. Time comes in as `now`.
//!
//! This file holds the request lifecycle (create, read, review, cancel, expire, issue);
//! `revocation` the KRL and trusted CA keys, `workloads` CI jobs, `audit_trail`
//! audit reading, checkpoints and verification, `hosts` host certificates (join tokens,
//! enrolment, renewal, host revocation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rand::Rng as _;
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};
use tokio::sync::{Notify, broadcast};

use crate::approvals::{self, Approval, Ready, Request, State, Verdict};
use crate::audit::Event;
use crate::auth::{self, Caller, Proof, Token, fmt_time};
use crate::clock::UnixTime;
use crate::metrics;
use crate::oidc::WorkloadIdentity;
use crate::policy::{self, Policy, Refusal, Role};
use crate::signer::{self, Grant, Signer};
use crate::store::{self, CertRecord, RequestFilter, Store, Tx};
use crate::text;

mod audit_trail;
mod hosts;
mod revocation;
mod sessions;
mod workloads;

pub use audit_trail::{
    Verified, append_checkpoint, checkpoint, verify_audit, verify_audit_anchored,
};
pub use hosts::{
    HOST_RENEW_NAMESPACE, HostCa, HostCert, HostRevokeTarget, IssuedJoinToken, JOIN_TOKEN_PREFIX,
    create_join_token_at, host_certificates_at, host_tokens, renew_message, revoke_host_at,
};
pub use revocation::{
    BuiltKrl, KRL_REBUILD_AFTER, MAX_SELF_KEY_REVOCATIONS, RevokeTarget, Revoked,
    SELF_KEY_REVOCATION_WINDOW, SkippedEntry, audit_skipped, build_krl, held_trusted_ca_keys,
    krl_from_store, listable_key, trusted_ca_keys,
};
pub use sessions::NewSession;

/// Most pending requests one requester may have at once.
pub const MAX_PENDING_PER_REQUESTER: u64 = 5;
/// Most pending requests overall.
pub const MAX_PENDING_TOTAL: u64 = 10_000;

/// Why a use case did not happen. Each variant maps to one gRPC code in `convert`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input.
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Policy says no.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No such request (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Signing failed.
    #[error(transparent)]
    Signer(#[from] signer::Error),
    /// The KRL could not be encoded.
    #[error("KRL encoding failed: {0}")]
    Krl(#[from] crate::krl::Error),
}

impl Error {
    /// Whether the caller was refused (bad arguments, policy, state): what the per-caller
    /// refusal limit counts.
    pub fn is_refusal(&self) -> bool {
        !self.is_internal()
    }

    /// Whether this is a fault of the server rather than an answer to the caller.
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Store(_) | Error::Signer(_) | Error::Krl(_))
    }
}

/// Authority result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller asks for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Role name.
    pub role: String,
    /// Principals; empty = all of the role's logins.
    pub principals: Vec<String>,
    /// ttl; None = the role's default.
    pub ttl_secs: Option<u64>,
    /// Reason.
    pub reason: String,
    /// Subject public key, OpenSSH text.
    pub public_key: String,
    /// Issue at once without approval (roles with `break_glass.enabled` only).
    pub break_glass: bool,
}

/// A request as a caller may see it.
#[derive(Debug, Clone)]
pub struct RequestView {
    /// The request.
    pub request: Request,
    /// Who may approve, as selectors.
    pub approvers: Vec<String>,
    /// The certificate, when issued (serial and validity are shown to everyone who may see
    /// the request; the certificate itself only to the requester).
    pub certificate: Option<CertRecord>,
    /// Whether the certificate text may be shown to this caller.
    pub certificate_visible: bool,
}

/// A certificate signed for a request, not yet recorded.
struct Signed {
    grant: Grant,
    record: CertRecord,
}

/// Whether recording an issuance inserts the request row or updates it.
#[derive(Debug, Clone, Copy)]
enum Row {
    Insert,
    Update,
}

/// The certificate authority's use cases.
#[derive(Debug)]
pub struct Authority {
    store: Arc<Store>,
    signer: RwLock<Arc<Signer>>,
    policy: RwLock<Arc<Policy>>,
    changes: broadcast::Sender<String>,
    watchers: Arc<Watchers>,
    krl_cache: Mutex<Option<revocation::CachedKrl>>,
    /// Fingerprints of revoked keys left out of a KRL and already audited by this run.
    krl_skips_audited: Mutex<std::collections::HashSet<String>>,
    /// Public keys of every signer this process loaded from a key file.
    loaded_keys: RwLock<Vec<PublicKey>>,
    /// The data directory's key files, read at every use (`ca rotate` adds one while the
    /// server runs); `None` trusts only the loaded signers.
    key_files: Option<crate::ca_keys::KeyFiles>,
    /// CA keys last reported as ignored, so each is logged once, not per host poll.
    ignored_keys: Mutex<Vec<String>>,
    /// Where checkpoints are appended outside the database.
    checkpoint_file: Option<std::path::PathBuf>,
    /// The host CA, when this server certifies hosts.
    host_ca: Option<HostCa>,
    /// People's sign-in through the `[sso]` identity provider, when configured.
    sso: Option<Arc<crate::sso::SsoVerifier>>,
}

/// Open watches by request id.
type Watchers = Mutex<HashMap<String, Vec<Arc<Notify>>>>;

/// A watch on one request (see [`Authority::watch`]); unregisters itself when dropped.
#[derive(Debug)]
pub struct Watch {
    watchers: Arc<Watchers>,
    id: String,
    notify: Arc<Notify>,
}

impl Watch {
    /// Resolves once the request changed since the last call (or since the watch began).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = watchers.get_mut(&self.id) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if list.is_empty() {
                watchers.remove(&self.id);
            }
        }
    }
}

impl Authority {
    /// An authority over a store, a signer and a policy. Registers the signer's public key
    /// as trusted if the store does not know it yet.
    pub fn new(store: Arc<Store>, signer: Signer, policy: Policy, now: UnixTime) -> Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        register_ca_key(&store, &signer, now)?;
        Ok(Authority {
            store,
            loaded_keys: RwLock::new(vec![signer.public_key().clone()]),
            signer: RwLock::new(Arc::new(signer)),
            policy: RwLock::new(Arc::new(policy)),
            changes,
            watchers: Arc::default(),
            krl_cache: Mutex::new(None),
            krl_skips_audited: Mutex::default(),
            key_files: None,
            ignored_keys: Mutex::new(Vec::new()),
            checkpoint_file: None,
            host_ca: None,
            sso: None,
        })
    }

    /// Trusts, besides the loaded signers, the CA keys held in these files (read at every
    /// use), and no key the database alone names.
    pub fn with_key_files(mut self, files: crate::ca_keys::KeyFiles) -> Self {
        self.key_files = Some(files);
        self
    }

    /// Appends every checkpoint to this file too (JSON lines, fsynced), outside the
    /// database.
    pub fn with_checkpoint_file(mut self, path: std::path::PathBuf) -> Self {
        self.checkpoint_file = Some(path);
        self
    }

    /// CA public keys held as files: the signers loaded and the data directory's key files.
    fn held_keys(&self) -> Vec<PublicKey> {
        let mut keys = self
            .loaded_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(files) = &self.key_files {
            keys.extend(files.load());
        }
        keys
    }

    /// Logs the keys ignored for want of a file, once per change of that set.
    fn report_ignored(&self, ignored: Vec<String>) {
        let mut last = self.ignored_keys.lock().unwrap_or_else(|p| p.into_inner());
        if *last != ignored {
            crate::ca_keys::log_ignored(&ignored, "the data directory's retired/ as NAME.pub");
            *last = ignored;
        }
    }

    fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Switches signing to `signer` (after `moshca-server ca rotate`); audited when it
    /// changes. Returns whether it changed.
    pub fn replace_signer(&self, signer: Signer, now: UnixTime) -> Result<bool> {
        let old = self.signer().fingerprint();
        let new = signer.fingerprint();
        if old == new {
            return Ok(false);
        }
        register_ca_key(&self.store, &signer, now)?;
        self.loaded_keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(signer.public_key().clone());
        self.audit(Event::new(
            now,
            "moshca-server",
            "ca.activated",
            None,
            json!({ "ca_fingerprint": new, "previous": old }),
        ))?;
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        tracing::info!(ca = %new, previous = %old, "signing with a new CA key");
        Ok(true)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy (already validated) and audits it.
    pub fn replace_policy(&self, policy: Policy, now: UnixTime) -> Result<()> {
        let roles: Vec<String> = policy.roles().map(|r| r.name.clone()).collect();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.audit(Event::new(
            now,
            "moshca-server",
            "policy.reloaded",
            None,
            json!({ "roles": roles }),
        ))
    }

    /// On a store shared by replicas, records the digest of the policy this replica now
    /// serves (`policy.loaded`) and returns the digest the replica before it recorded when
    /// the two differ: replicas must serve one policy, or a request's outcome would depend
    /// on which replica it reached. Nothing to do on SQLite.
    pub fn note_policy_digest(&self, sha256: &str, now: UnixTime) -> Result<Option<String>> {
        if !self.store.is_shared() {
            return Ok(None);
        }
        let previous = self.store.transact(|tx| {
            let previous = tx
                .latest_audit_details("policy.loaded")?
                .and_then(|d| d.get("sha256").and_then(|v| v.as_str()).map(str::to_owned));
            tx.append_audit(&Event::new(
                now,
                "moshca-server",
                "policy.loaded",
                None,
                json!({ "sha256": sha256 }),
            ))?;
            Ok::<_, Error>(previous)
        })?;
        Ok(previous.filter(|p| p != sha256))
    }

    /// Records one event on its own, for what changes no other row.
    fn audit(&self, event: Event) -> Result<()> {
        Ok(self.store.transact(|tx| tx.append_audit(&event))?)
    }

    /// Whether the store's last batch committed (health reports it).
    pub fn store_can_commit(&self) -> bool {
        self.store.can_commit()
    }

    /// Notified with a request id whenever any request changes (the webhook notifier).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// A handle woken when request `id` changes. Only the watchers of that request are
    /// woken, so a thousand open watch streams cost nothing per unrelated issuance.
    pub fn watch(&self, id: &str) -> Watch {
        let notify = Arc::new(Notify::new());
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .push(notify.clone());
        Watch {
            watchers: self.watchers.clone(),
            id: id.to_owned(),
            notify,
        }
    }

    /// Wakes this replica's watchers when another replica changes a request (on
    /// PostgreSQL; nothing to do on SQLite). After the listener lost its connection every
    /// watcher is woken, as a change may have been missed.
    pub fn listen_for_other_replicas(self: &Arc<Self>) -> Result<()> {
        let me = Arc::downgrade(self);
        self.store.listen_for_decisions(move |id| {
            let Some(a) = me.upgrade() else { return };
            let watchers = a.watchers.lock().unwrap_or_else(|p| p.into_inner());
            match id {
                Some(id) => watchers
                    .get(id)
                    .into_iter()
                    .flatten()
                    .for_each(|n| n.notify_one()),
                None => watchers.values().flatten().for_each(|n| n.notify_one()),
            }
        })?;
        Ok(())
    }

    /// Tells the notifier and the watchers of `id` that it changed.
    fn changed(&self, id: &str) {
        let _ = self.changes.send(id.to_owned());
        let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for n in watchers.get(id).into_iter().flatten() {
            // Stores a permit if the watcher is not waiting yet: no change is missed.
            n.notify_one();
        }
    }

    /// CA public keys hosts should trust at `now`, the signing key first.
    /// Only keys held as files: a database row alone is ignored (and logged).
    pub fn ca_public_keys_at(&self, now: UnixTime) -> Result<Vec<PublicKey>> {
        let (keys, ignored) = held_trusted_ca_keys(
            &self.store,
            &self.held_keys(),
            &self.signer().fingerprint(),
            now,
        )?;
        self.report_ignored(ignored);
        Ok(keys)
    }

    /// Parses a subject key, refusing the signing CA key. Older CA keys are refused by
    /// [`refuse_ca_subject`] inside the issuing transaction, where the registered keys are
    /// read fresh without a query of their own on every request.
    fn subject_key(&self, text: &str) -> Result<PublicKey> {
        let mut active = vec![self.signer().public_key().clone()];
        active.extend(self.host_signing_key());
        signer::parse_subject_key(text, &active).map_err(|e| Error::InvalidArgument(e.0))
    }

    /// Resolves a bearer token to a caller; failures are audited.
    pub fn authenticate_at(&self, token: &Token, peer: &str, now: UnixTime) -> Result<Caller> {
        Ok(self.authenticate_token_at(token, peer, now)?.0)
    }

    /// Resolves a bearer token to a caller and the time the token expires; failures are
    /// audited. One indexed read per call; `last used` is written at most once a minute
    /// per token, so authentication stays off the writer.
    pub fn authenticate_token_at(
        &self,
        token: &Token,
        peer: &str,
        now: UnixTime,
    ) -> Result<(Caller, Option<UnixTime>)> {
        if token.is_session() {
            return self
                .authenticate_session_at(token, peer, now)
                .map(|(caller, expires_at)| (caller, Some(expires_at)));
        }
        let hash = token.hash();
        let standing = self.store.read(|tx| tx.token_standing(&hash))?;
        let (reason, message) = match standing {
            None => (
                "unknown token",
                "token not accepted (unknown); ask the CA operator for a new one".to_owned(),
            ),
            Some(s) if s.token.revoked => (
                "revoked token",
                format!(
                    "token {} was revoked; ask the CA operator for a new one (`moshca-server user token {}`)",
                    s.token.id, s.caller.name
                ),
            ),
            Some(s) if s.user_disabled => (
                "disabled user",
                "token not accepted: its user is disabled; ask the CA operator".to_owned(),
            ),
            Some(s) if s.token.expires_at.is_some_and(|e| e <= now) => (
                "expired token",
                format!(
                    "token {} expired at {}; ask the CA operator for a new one (`moshca-server user token {}`)",
                    s.token.id,
                    fmt_time(s.token.expires_at.unwrap_or(now)),
                    s.caller.name
                ),
            ),
            Some(s) => {
                let stale = s
                    .token
                    .last_used_at
                    .is_none_or(|t| now >= t + auth::LAST_USED_GRANULARITY_SECS);
                if stale {
                    let id = s.token.id.clone();
                    let recorded = self
                        .store
                        .transact(|tx| tx.touch_token(&id, now, auth::LAST_USED_GRANULARITY_SECS));
                    // Bookkeeping only: a failed write must not refuse a valid caller.
                    if let Err(e) = recorded {
                        tracing::warn!(error = %e, "recording when a token was last used failed");
                    }
                }
                return Ok((s.caller, s.token.expires_at));
            }
        };
        self.record_auth_failure_at(peer, reason, now)?;
        Err(Error::Unauthenticated(message))
    }

    /// Audits a refused attempt in its own transaction and returns the error.
    fn refuse(&self, caller: &Caller, role: &str, err: Error, now: UnixTime) -> Error {
        let recorded = self.audit(Event::new(
            now,
            &caller.name,
            "request.refused",
            None,
            // The role as the caller sent it: bounded at the edge, escaped here.
            json!({ "role": text::shown(role), "reason": err.to_string() }),
        ));
        match recorded {
            Ok(()) => err,
            Err(store_err) => store_err,
        }
    }

    /// Creates an access request; an auto-approved role issues at once.
    ///
    /// The pending caps (per requester, and on the whole CA) are counted and the request
    /// inserted in one transaction, so concurrent creations never leave more than the cap
    /// pending. A backend with several writers must keep that count-then-insert atomic
    /// (for PostgreSQL: count the requester's pending requests under a row lock on the
    /// requester's user row, and the CA-wide total under a lock of its own, or serializable
    /// isolation).
    pub fn create_request_at(
        &self,
        caller: &Caller,
        new: NewRequest,
        now: UnixTime,
    ) -> Result<RequestView> {
        let policy = self.policy();
        let checked = match self.check_new(caller, &policy, &new) {
            Ok(v) => v,
            Err(e) => return Err(self.refuse(caller, &new.role, e, now)),
        };
        let (role, checked, subject) = checked;
        let request = Request {
            id: ulid::Ulid::new().to_string(),
            requester: caller.name.clone(),
            role: role.name.clone(),
            principals: checked.principals,
            ttl_secs: checked.ttl_secs,
            reason: new.reason.trim().to_owned(),
            public_key: subject.to_openssh().map_err(signer::Error::from)?,
            fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
            state: State::Pending,
            created_at: now,
            expires_at: now + policy.defaults.pending_ttl,
            decided_at: None,
            approvals_required: match role.approval {
                policy::Approval::Manual { required } => required,
                policy::Approval::Auto => 0,
            },
            reviews: Vec::new(),
            break_glass: new.break_glass,
            break_glass_review: None,
            version: 0,
        };
        let issue_now = request.break_glass || role.approval == policy::Approval::Auto;
        let ready = Ready::without_approval(request.clone());
        // Signed before the transaction, with a serial checked inside it.
        let presigned = if issue_now {
            let serial = random_serial();
            Some(self.sign(&ready, role, &policy, now, "", serial)?)
        } else {
            None
        };
        let view = self.store.transact(|tx| {
            still_standing(tx, caller, now)?;
            // The caps bound pending rows: a request issued at once (auto-approved or
            // break-glass) never waits, so it is not held back by them.
            let waits = presigned.is_none();
            if waits && tx.pending_count(&caller.name)? >= MAX_PENDING_PER_REQUESTER {
                return Err(Error::ResourceExhausted(format!(
                    "limit reached: at most {MAX_PENDING_PER_REQUESTER} pending requests per requester; cancel one with `moshca cancel ID`"
                )));
            }
            if waits && tx.pending_total()? >= MAX_PENDING_TOTAL {
                return Err(Error::ResourceExhausted(format!(
                    "limit reached: {MAX_PENDING_TOTAL} requests are pending on this CA; try again later"
                )));
            }
            refuse_ca_subject(tx, &request.fingerprint)?;
            if tx.key_revoked(&request.fingerprint)? {
                return Err(Error::PermissionDenied(format!(
                    "public key {} is revoked; generate a new key",
                    request.fingerprint
                )));
            }
            tx.append_audit(&Event::new(
                now,
                &caller.name,
                "request.created",
                Some(&request.id),
                request_details(&request),
            ))?;
            if request.break_glass {
                let mut details = request_details(&request);
                details["priority"] = json!("high");
                tx.append_audit(&Event::new(
                    now,
                    &caller.name,
                    "request.break_glass",
                    Some(&request.id),
                    details,
                ))?;
            }
            if let Some(signed) = presigned {
                let (request, cert) = self.issue_presigned(tx, ready, signed)?;
                return Ok(self.view(&policy, request, Some(cert), true));
            }
            tx.insert_request(&request)?;
            Ok(self.view(&policy, request.clone(), None, true))
        });
        let view = match view {
            Ok(v) => v,
            Err(
                e @ (Error::ResourceExhausted(_)
                | Error::InvalidArgument(_)
                | Error::Unauthenticated(_)),
            ) => {
                return Err(self.refuse(caller, &new.role, e, now));
            }
            Err(e) => return Err(e),
        };
        // Logged after the commit, outside the write lock; one line per request.
        match &view.certificate {
            Some(cert) => {
                log_issued(cert, &caller.name);
                let path = if view.request.break_glass {
                    metrics::Path::BreakGlass
                } else {
                    metrics::Path::Auto
                };
                metrics::issued(metrics::role_label(&policy, &view.request.role), path);
            }
            None => tracing::info!(
                request_id = %view.request.id,
                caller = %caller.name,
                role = %view.request.role,
                principals = ?view.request.principals,
                ttl_secs = view.request.ttl_secs,
                fingerprint = %view.request.fingerprint,
                "access request created"
            ),
        }
        self.changed(&view.request.id);
        Ok(view)
    }

    fn check_new<'p>(
        &self,
        caller: &Caller,
        policy: &'p Policy,
        new: &NewRequest,
    ) -> Result<(&'p Role, policy::Checked, PublicKey)> {
        let role = policy
            .role(&new.role)
            .filter(|r| r.may_request(caller))
            .ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "you may not request role {:?}; `moshca whoami` lists the roles you may request",
                    new.role
                ))
            })?;
        let ttl = if new.break_glass {
            let bg = role.break_glass.ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "role {} does not allow break-glass; ask for a normal approval",
                    role.name
                ))
            })?;
            let ttl = new.ttl_secs.unwrap_or(role.default_ttl.min(bg.max_ttl));
            if ttl > bg.max_ttl {
                return Err(Error::PermissionDenied(format!(
                    "break-glass ttl {} exceeds role {}'s break_glass.max_ttl {}",
                    policy::fmt_secs(ttl),
                    role.name,
                    policy::fmt_secs(bg.max_ttl)
                )));
            }
            Some(ttl)
        } else {
            new.ttl_secs
        };
        let checked = role
            .check_request(&new.principals, ttl, &new.reason)
            .map_err(|r| match r {
                Refusal::Invalid(m) => Error::InvalidArgument(m),
                Refusal::Denied(m) => Error::PermissionDenied(m),
            })?;
        let subject = self.subject_key(&new.public_key)?;
        Ok((role, checked, subject))
    }

    /// Signs and records the certificate for a request whose approval is complete, inside
    /// the transaction that marks it issued (the approval path: the request row exists).
    fn issue(
        &self,
        tx: &Tx<'_>,
        ready: Ready,
        role: &Role,
        policy: &Policy,
        now: UnixTime,
        key_id_extra: &str,
    ) -> Result<(Request, CertRecord)> {
        let req = &ready.request;
        // A key revoked after the request was made must not be certified on approval.
        if tx.key_revoked(&req.fingerprint)? {
            return Err(Error::FailedPrecondition(format!(
                "public key {} was revoked after request {} was made; the requester must ask again with a new key",
                req.fingerprint, req.id
            )));
        }
        let serial = loop_serial(tx)?;
        let signed = self.sign(&ready, role, policy, now, key_id_extra, serial)?;
        self.record_issued(tx, ready, signed, Row::Update)
    }

    /// Records a request that is issued the moment it is made (auto-approved, break-glass
    /// or workload), with a certificate signed before the transaction so the signature is
    /// not made under the store's write lock. Signs again inside only if the serial was
    /// taken meanwhile. Writes the request row once, already issued. The caller has
    /// checked, in this transaction, that the key is not revoked.
    fn issue_presigned(
        &self,
        tx: &Tx<'_>,
        ready: Ready,
        mut signed: Signed,
    ) -> Result<(Request, CertRecord)> {
        if tx.serial_exists(signed.record.serial)? {
            let grant = Grant {
                serial: loop_serial(tx)?,
                ..signed.grant
            };
            signed = self.sign_grant(&ready, grant, signed.record.issued_at)?;
        }
        self.record_issued(tx, ready, signed, Row::Insert)
    }

    /// Signs the certificate a ready request gets; touches no store.
    fn sign(
        &self,
        ready: &Ready,
        role: &Role,
        policy: &Policy,
        now: UnixTime,
        key_id_extra: &str,
        serial: u64,
    ) -> Result<Signed> {
        let by = if ready.request.break_glass {
            "break-glass".to_owned()
        } else if ready.approvers.is_empty() {
            "auto".to_owned()
        } else {
            ready.approvers.join(",")
        };
        let req = &ready.request;
        let key_id = format!(
            "moshca:req={}:user={}{key_id_extra}:role={}:by={}",
            req.id, req.requester, req.role, by
        );
        let grant = Grant {
            serial,
            key_id,
            principals: req.principals.clone(),
            valid_after: now.saturating_sub(policy.defaults.backdate),
            valid_before: now + ready.ttl_secs,
            force_command: role.force_command.clone(),
            source_address: role.source_address.clone(),
            extensions: role.extensions.clone(),
        };
        self.sign_grant(ready, grant, now)
    }

    /// Signs `grant` for a ready request's key, issued at `now`.
    fn sign_grant(&self, ready: &Ready, grant: Grant, now: UnixTime) -> Result<Signed> {
        let req = &ready.request;
        let subject = PublicKey::from_openssh(&req.public_key)
            .map_err(|e| store::Error::Corrupt(format!("stored public key: {e}")))?;
        let signer = self.signer();
        let cert = signer.sign(&grant, &subject)?;
        let record = CertRecord {
            serial: grant.serial,
            request_id: req.id.clone(),
            key_id: grant.key_id.clone(),
            principals: grant.principals.clone(),
            valid_after: grant.valid_after,
            valid_before: grant.valid_before,
            fingerprint: req.fingerprint.clone(),
            ca_fingerprint: signer.fingerprint(),
            openssh: cert.to_openssh().map_err(signer::Error::from)?,
            issued_at: now,
            requester: req.requester.clone(),
            role: req.role.clone(),
            revoked_at: None,
        };
        Ok(Signed { grant, record })
    }

    /// Writes an issuance: the request as issued, the certificate and its audit event.
    fn record_issued(
        &self,
        tx: &Tx<'_>,
        ready: Ready,
        signed: Signed,
        row: Row,
    ) -> Result<(Request, CertRecord)> {
        let Signed { grant, record } = signed;
        let mut request = ready.issued(record.issued_at);
        match row {
            Row::Insert => tx.insert_request(&request)?,
            Row::Update => tx.save_request(&mut request)?,
        }
        tx.insert_certificate(&record)?;
        tx.append_audit(&Event::new(
            record.issued_at,
            "moshca-server",
            "certificate.issued",
            Some(&request.id),
            json!({
                "serial": record.serial.to_string(),
                "key_id": record.key_id,
                "principals": record.principals,
                "valid_after": record.valid_after,
                "valid_before": record.valid_before,
                "fingerprint": record.fingerprint,
                "ca_fingerprint": record.ca_fingerprint,
                "extensions": grant.extensions,
                "force_command": grant.force_command,
                "source_address": grant.source_address,
            }),
        ))?;
        Ok((request, record))
    }

    fn view(
        &self,
        policy: &Policy,
        request: Request,
        certificate: Option<CertRecord>,
        certificate_visible: bool,
    ) -> RequestView {
        let approvers = policy
            .role(&request.role)
            .map(|r| r.approvers.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        RequestView {
            request,
            approvers,
            certificate,
            certificate_visible,
        }
    }

    /// A request the caller may see, or NOT_FOUND (never telling whether it exists).
    fn visible_request(tx: &Tx<'_>, policy: &Policy, caller: &Caller, id: &str) -> Result<Request> {
        tx.request(id)?
            .filter(|r| Self::may_see(policy, caller, r))
            .ok_or_else(|| not_found(id))
    }

    /// Whether the caller may see the request at all.
    fn may_see(policy: &Policy, caller: &Caller, req: &Request) -> bool {
        req.requester == caller.name
            || policy
                .role(&req.role)
                .is_some_and(|role| role.may_approve(caller))
    }

    /// One request; the certificate only for its requester.
    pub fn get_request(
        &self,
        caller: &Caller,
        id: &str,
        include_certificate: bool,
    ) -> Result<RequestView> {
        let policy = self.policy();
        let (req, cert) = self.store.read(|tx| {
            let req = tx.request(id)?;
            let cert = match &req {
                Some(r) if r.state == State::Issued => tx.certificate_for_request(id)?,
                _ => None,
            };
            Ok::<_, Error>((req, cert))
        })?;
        let req = req
            .filter(|r| Self::may_see(&policy, caller, r))
            .ok_or_else(|| not_found(id))?;
        let is_requester = req.requester == caller.name;
        if include_certificate && !is_requester {
            return Err(Error::PermissionDenied(format!(
                "only the requester of {id} can fetch its certificate"
            )));
        }
        Ok(self.view(&policy, req, cert, is_requester && include_certificate))
    }

    /// Requests the caller may see: their own, and those of roles they may approve.
    pub fn list_requests(
        &self,
        caller: &Caller,
        pending_only: bool,
        mine_only: bool,
        unreviewed_only: bool,
        limit: u32,
    ) -> Result<Vec<RequestView>> {
        let policy = self.policy();
        let approvable: Vec<String> = policy
            .roles()
            .filter(|r| r.may_approve(caller))
            .map(|r| r.name.clone())
            .collect();
        let limit = if limit == 0 { 100 } else { limit.min(1000) };
        let filter = RequestFilter {
            pending_only,
            unreviewed_only,
            requester: mine_only.then(|| caller.name.clone()),
            visible_to: Some((caller.name.clone(), approvable)),
            limit,
        };
        // Serial, validity and revocation of issued requests are public to whoever may see
        // the request (as in `get_request`); `moshca status` lists live certificates by them.
        let found = self.store.read(|tx| {
            tx.requests(&filter)?
                .into_iter()
                .map(|r| {
                    let cert = match r.state {
                        State::Issued => tx.certificate_for_request(&r.id)?,
                        _ => None,
                    };
                    Ok::<_, Error>((r, cert))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(found
            .into_iter()
            .map(|(r, cert)| self.view(&policy, r, cert, false))
            .collect())
    }

    /// Approves or denies a pending request.
    pub fn review_at(
        &self,
        caller: &Caller,
        id: &str,
        verdict: Verdict,
        ttl_secs: Option<u64>,
        comment: &str,
        now: UnixTime,
    ) -> Result<RequestView> {
        text::free_text("comment", comment).map_err(Error::InvalidArgument)?;
        if verdict == Verdict::Deny && comment.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a denial needs a reason: moshca deny ID --reason TEXT".into(),
            ));
        }
        let policy = self.policy();
        let result = self.store.transact(|tx| {
            still_standing(tx, caller, now)?;
            let req = Self::visible_request(tx, &policy, caller, id)?;
            let role = policy.role(&req.role).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "role {} no longer exists in the policy; request {id} cannot be approved",
                    req.role
                ))
            })?;
            if req.requester == caller.name {
                return Err(Error::PermissionDenied(format!(
                    "you cannot review your own request {id}; another approver must"
                )));
            }
            if !role.may_approve(caller) {
                return Err(Error::PermissionDenied(format!(
                    "you may not approve role {}; its approvers are {}",
                    role.name,
                    role.approvers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let pending = req.pending_at(now).map_err(transition_error)?;
            match verdict {
                Verdict::Deny => {
                    let mut req = pending
                        .deny_at(&caller.name, comment.trim(), now)
                        .map_err(transition_error)?;
                    append_new_review(tx, &req)?;
                    tx.save_request(&mut req)?;
                    tx.append_audit(&Event::new(
                        now,
                        &caller.name,
                        "request.denied",
                        Some(id),
                        json!({ "reason": comment.trim() }),
                    ))?;
                    Ok(self.view(&policy, req, None, false))
                }
                Verdict::Approve => {
                    let outcome = pending
                        .approve_at(&caller.name, ttl_secs, comment.trim(), now)
                        .map_err(transition_error)?;
                    append_new_review(
                        tx,
                        match &outcome {
                            Approval::Waiting(req) => req,
                            Approval::Satisfied(ready) => &ready.request,
                        },
                    )?;
                    tx.append_audit(&Event::new(
                        now,
                        &caller.name,
                        "request.approved",
                        Some(id),
                        json!({ "ttl_secs": ttl_secs, "comment": comment.trim() }),
                    ))?;
                    match self.recheck(tx, outcome, role, &policy, now)? {
                        Approval::Waiting(mut req) => {
                            tx.save_request(&mut req)?;
                            Ok(self.view(&policy, req, None, false))
                        }
                        Approval::Satisfied(ready) => {
                            let (req, cert) = self.issue(tx, ready, role, &policy, now, "")?;
                            Ok(self.view(&policy, req, Some(cert), false))
                        }
                    }
                }
            }
        });
        match &result {
            Ok(view) => {
                tracing::info!(request_id = %id, approver = %caller.name, state = %view.request.state, "request reviewed");
                metrics::reviewed(match verdict {
                    Verdict::Approve => metrics::Decision::Approve,
                    Verdict::Deny => metrics::Decision::Deny,
                });
                if let Some(cert) = &view.certificate {
                    log_issued(cert, &caller.name);
                    metrics::issued(
                        metrics::role_label(&policy, &view.request.role),
                        metrics::Path::Approval,
                    );
                }
                self.changed(id);
            }
            Err(Error::PermissionDenied(m)) => {
                tracing::warn!(request_id = %id, caller = %caller.name, "review refused: {m}");
                let _ = self.audit(Event::new(
                    now,
                    &caller.name,
                    "review.refused",
                    Some(id),
                    json!({ "reason": m }),
                ));
            }
            Err(_) => {}
        }
        result
    }

    /// Re-checks a satisfied approval against the policy and users as they are now: every
    /// counted approver must still be enabled and entitled, and the request must still fit
    /// its role. Stale approvals stop counting; a request that no longer fits is refused.
    fn recheck(
        &self,
        tx: &Tx<'_>,
        outcome: Approval,
        role: &Role,
        policy: &Policy,
        now: UnixTime,
    ) -> Result<Approval> {
        let Approval::Satisfied(ready) = outcome else {
            return Ok(outcome);
        };
        let req = &ready.request;
        let requester_ok = match tx.user(&req.requester)? {
            Some(u) if !u.disabled => {
                let groups = sessions::standing_groups(tx, &u, now)?;
                role.may_request(&Caller {
                    name: u.name,
                    groups,
                    proof: Proof::Account,
                })
            }
            _ => false,
        };
        if !requester_ok {
            return Err(Error::FailedPrecondition(format!(
                "requester {} is disabled or may no longer request role {}",
                req.requester, role.name
            )));
        }
        if let Some(p) = req.principals.iter().find(|p| !role.logins.contains(p)) {
            return Err(Error::FailedPrecondition(format!(
                "policy changed: principal {p:?} is no longer allowed for role {}; the requester must ask again",
                role.name
            )));
        }
        if ready.ttl_secs > role.max_ttl || ready.ttl_secs > policy.defaults.max_ttl {
            return Err(Error::FailedPrecondition(format!(
                "policy changed: ttl exceeds role {}'s max_ttl now; approve with a shorter --ttl",
                role.name
            )));
        }
        let mut counted = Vec::new();
        for approver in &ready.approvers {
            let ok = match tx.user(approver)? {
                Some(u) if !u.disabled && u.name != req.requester => {
                    let groups = sessions::standing_groups(tx, &u, now)?;
                    role.may_approve(&Caller {
                        name: u.name.clone(),
                        groups,
                        proof: Proof::Account,
                    })
                }
                _ => false,
            };
            if ok {
                counted.push(approver.clone());
            }
        }
        let required = match role.approval {
            policy::Approval::Manual { required } => required.max(req.approvals_required),
            policy::Approval::Auto => req.approvals_required,
        };
        if counted.len() < required.max(1) as usize {
            return Ok(Approval::Waiting(ready.request));
        }
        // The key id names only the approvals that counted.
        Ok(Approval::Satisfied(Ready {
            approvers: counted,
            ..ready
        }))
    }

    /// Cancels the caller's own pending request.
    pub fn cancel_at(&self, caller: &Caller, id: &str, now: UnixTime) -> Result<RequestView> {
        let policy = self.policy();
        let view = self.store.transact(|tx| {
            let req = Self::visible_request(tx, &policy, caller, id)?;
            let mut req = req
                .pending_at(now)
                .map_err(transition_error)?
                .cancel_at(&caller.name, now)
                .map_err(transition_error)?;
            tx.save_request(&mut req)?;
            tx.append_audit(&Event::new(
                now,
                &caller.name,
                "request.cancelled",
                Some(id),
                json!({}),
            ))?;
            Ok::<_, Error>(self.view(&policy, req, None, false))
        })?;
        tracing::info!(request_id = %id, caller = %caller.name, "request cancelled");
        self.changed(id);
        Ok(view)
    }

    /// Expires pending requests whose time is up; returns how many.
    pub fn expire_due_at(&self, now: UnixTime) -> Result<usize> {
        let expired = self.store.transact(|tx| {
            let due = tx.expired_pending(now)?;
            let mut ids = Vec::new();
            for req in due {
                let (mut req, changed) = req.expire_at(now);
                if changed {
                    tx.save_request(&mut req)?;
                    tx.append_audit(&Event::new(
                        now,
                        "moshca-server",
                        "request.expired",
                        Some(&req.id),
                        json!({ "requester": req.requester }),
                    ))?;
                    ids.push(req.id);
                }
            }
            Ok::<_, Error>(ids)
        })?;
        for id in &expired {
            tracing::info!(request_id = %id, "pending request expired");
            self.changed(id);
        }
        Ok(expired.len())
    }

    /// Marks an issued break-glass request reviewed: by an approver of its role, never the
    /// requester, with a comment.
    pub fn review_break_glass_at(
        &self,
        caller: &Caller,
        id: &str,
        comment: &str,
        now: UnixTime,
    ) -> Result<RequestView> {
        let comment = comment.trim();
        if comment.is_empty() {
            return Err(Error::InvalidArgument(
                "a break-glass review needs a comment: moshca review ID --comment TEXT".into(),
            ));
        }
        text::free_text("comment", comment).map_err(Error::InvalidArgument)?;
        let policy = self.policy();
        let view = self.store.transact(|tx| {
            let req = Self::visible_request(tx, &policy, caller, id)?;
            let may = policy
                .role(&req.role)
                .is_some_and(|r| r.may_approve(caller));
            if !may {
                return Err(Error::PermissionDenied(format!(
                    "only approvers of role {} may review its break-glass requests",
                    req.role
                )));
            }
            let mut req = req
                .review_break_glass_at(&caller.name, comment, now)
                .map_err(|e| match e {
                    approvals::GlassError::SelfReview(_) => Error::PermissionDenied(e.to_string()),
                    _ => Error::FailedPrecondition(e.to_string()),
                })?;
            tx.save_request(&mut req)?;
            tx.append_audit(&Event::new(
                now,
                &caller.name,
                "request.reviewed",
                Some(id),
                json!({ "comment": comment }),
            ))?;
            let cert = tx.certificate_for_request(id)?;
            Ok::<_, Error>(self.view(&policy, req, cert, false))
        })?;
        tracing::info!(request_id = %id, approver = %caller.name, "break-glass request reviewed");
        metrics::reviewed(metrics::Decision::BreakGlassReview);
        self.changed(id);
        Ok(view)
    }

    /// Records a failed authentication (bad token or JWT); never the credential itself.
    pub fn record_auth_failure_at(&self, peer: &str, reason: &str, now: UnixTime) -> Result<()> {
        metrics::auth_failed(reason);
        self.audit(Event::new(
            now,
            "anonymous",
            "auth.failed",
            None,
            json!({ "peer": peer, "reason": reason }),
        ))
    }

    /// The pending request count and the KRL version, for the metrics page.
    pub fn metrics_gauges(&self) -> Result<(u64, u64)> {
        self.store
            .read(|tx| Ok::<_, Error>((tx.pending_total()?, tx.krl_version()?)))
    }

    /// Roles the caller may request and approve.
    pub fn roles_of(&self, caller: &Caller) -> (Vec<String>, Vec<String>) {
        let policy = self.policy();
        let request = policy
            .roles()
            .filter(|r| r.may_request(caller))
            .map(|r| r.name.clone())
            .collect();
        let approve = policy
            .roles()
            .filter(|r| r.may_approve(caller))
            .map(|r| r.name.clone())
            .collect();
        (request, approve)
    }
}

/// Records `signer` as the active CA key and retires every other.
fn register_ca_key(store: &Store, signer: &Signer, now: UnixTime) -> Result<()> {
    let text = signer
        .public_key()
        .to_openssh()
        .map_err(signer::Error::from)?;
    store.transact(|tx| {
        tx.insert_ca_key(&signer.fingerprint(), &text, now)?;
        // Any other key is an earlier one: trusted from now on only while its
        // certificates are valid.
        tx.retire_ca_keys_except(&signer.fingerprint(), now)
            .map_err(Error::from)
    })
}

/// The log line of an issuance.
/// The log line of an issuance: INFO, or WARN with `break_glass=true` for a break-glass
/// certificate (issued without approval; someone must review it).
fn log_issued(cert: &CertRecord, caller: &str) {
    let ttl_secs = cert.valid_before.saturating_sub(cert.issued_at);
    if cert.key_id.ends_with(":by=break-glass") {
        tracing::warn!(
            request_id = %cert.request_id,
            caller,
            serial = cert.serial,
            key_id = %cert.key_id,
            principals = ?cert.principals,
            ttl_secs,
            fingerprint = %cert.fingerprint,
            break_glass = true,
            "break-glass certificate issued without approval; review it with `moshca review`"
        );
        return;
    }
    tracing::info!(
        request_id = %cert.request_id,
        caller,
        serial = cert.serial,
        key_id = %cert.key_id,
        principals = ?cert.principals,
        ttl_secs,
        fingerprint = %cert.fingerprint,
        "certificate issued"
    );
}

/// Refuses a caller whose standing ended after it authenticated (its token revoked or
/// expired, its user disabled), inside the transaction that would sign for it: revoking a
/// user and issuing to them are then ordered by the store, so no certificate is issued to
/// a user after the event that disabled them.
fn still_standing(tx: &Tx<'_>, caller: &Caller, now: UnixTime) -> Result<()> {
    let stands = match &caller.proof {
        Proof::Token { hash } => tx
            .caller_by_token(hash, now)?
            .is_some_and(|c| c.name == caller.name),
        Proof::Session { hash } => tx.session_standing(hash)?.is_some_and(|s| {
            !s.user_disabled && s.session.live_at(now) && s.session.user == caller.name
        }),
        Proof::Account => tx.user(&caller.name)?.is_some_and(|u| !u.disabled),
        // Verified for this call; its token id is consumed in this same transaction.
        Proof::Workload => true,
    };
    if stands {
        return Ok(());
    }
    Err(Error::Unauthenticated(
        match caller.proof {
            Proof::Session { .. } => "your CA session was ended or has expired, or your user was disabled; nothing was issued. Run `moshca auth login`, or ask the CA operator",
            _ => "your token was revoked or has expired, or your user was disabled; nothing was issued. Ask the CA operator",
        }
        .into(),
    ))
}

/// Refuses a subject key that is, or ever was, one of this CA's keys.
fn refuse_ca_subject(tx: &Tx<'_>, fingerprint: &str) -> Result<()> {
    if tx.is_ca_key(fingerprint)? {
        return Err(Error::InvalidArgument(
            "the CA's own key cannot be a subject key".into(),
        ));
    }
    Ok(())
}

/// Comments and reasons: the free-text rule of [`text::free_text`].
fn free_text_ok(value: &str) -> bool {
    text::free_text("text", value).is_ok()
}

/// The facts every event about a new request records.
fn request_details(r: &Request) -> serde_json::Value {
    json!({
        "role": r.role,
        "principals": r.principals,
        "ttl_secs": r.ttl_secs,
        "reason": r.reason,
        "fingerprint": r.fingerprint,
    })
}

/// A random non-zero serial, from the OS generator.
fn random_serial() -> u64 {
    let mut rng = rand::rngs::OsRng;
    loop {
        let serial: u64 = rng.r#gen();
        if serial != 0 {
            return serial;
        }
    }
}

/// A random serial no certificate has.
fn loop_serial(tx: &Tx<'_>) -> Result<u64> {
    for _ in 0..16 {
        let serial = random_serial();
        if !tx.serial_exists(serial)? {
            return Ok(serial);
        }
    }
    Err(store::Error::Corrupt("could not find a free serial".into()).into())
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "no request {id} that you can see; `moshca requests` lists yours"
    ))
}

/// Stores the review a transition just added to `req` (its last), leaving the earlier ones
/// as they are.
fn append_new_review(tx: &Tx<'_>, req: &Request) -> Result<()> {
    if let Some(review) = req.reviews.last() {
        tx.append_review(&req.id, req.reviews.len() - 1, review)?;
    }
    Ok(())
}

fn transition_error(e: approvals::Error) -> Error {
    match e {
        approvals::Error::SelfReview(_) | approvals::Error::NotRequester(_) => {
            Error::PermissionDenied(e.to_string())
        }
        approvals::Error::BadTtl(_) => Error::InvalidArgument(e.to_string()),
        approvals::Error::NotPending { .. }
        | approvals::Error::Expired(_)
        | approvals::Error::AlreadyReviewed { .. } => Error::FailedPrecondition(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
