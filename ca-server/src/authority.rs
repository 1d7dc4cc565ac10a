//! Use cases: request, review, cancel, read, expire. Orchestrates `policy`, `approvals`,
//! `signer`, `store` and `audit`.
//!
//! Every change and the audit events that record it commit in one store transaction; a
//! certificate is signed inside the transaction that marks its request issued, so it
//! exists only if its rows do. No proto types and no SQL here; methods block on the store,
//! so async callers run them on a blocking thread. Time comes in as `now`.

use std::sync::{Arc, RwLock};

use rand::Rng as _;
use serde_json::json;
use ssh_key::{HashAlg, PublicKey};
use tokio::sync::broadcast;

use crate::approvals::{self, Approval, Ready, Request, State, Verdict};
use crate::audit::Event;
use crate::auth::{Caller, Token};
use crate::clock::UnixTime;
use crate::oidc::WorkloadIdentity;
use crate::policy::{self, Policy, Refusal, Role};
use crate::signer::{self, Grant, Signer};
use crate::store::{self, CertRecord, RequestFilter, Store, Tx};

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
    /// Whether this is a fault of the server rather than an answer to the caller.
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Store(_) | Error::Signer(_) | Error::Krl(_))
    }
}

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

/// The certificate authority's use cases.
#[derive(Debug)]
pub struct Authority {
    store: Arc<Store>,
    signer: RwLock<Arc<Signer>>,
    policy: RwLock<Arc<Policy>>,
    changes: broadcast::Sender<String>,
}

impl Authority {
    /// An authority over a store, a signer and a policy. Registers the signer's public key
    /// as trusted if the store does not know it yet.
    pub fn new(store: Arc<Store>, signer: Signer, policy: Policy, now: UnixTime) -> Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        register_ca_key(&store, &signer, now)?;
        Ok(Authority {
            store,
            signer: RwLock::new(Arc::new(signer)),
            policy: RwLock::new(Arc::new(policy)),
            changes,
        })
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
        self.store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                "moshca-server",
                "ca.activated",
                None,
                json!({ "ca_fingerprint": new, "previous": old }),
            ))
            .map_err(Error::from)
        })?;
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
        self.store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                "moshca-server",
                "policy.reloaded",
                None,
                json!({ "roles": roles }),
            ))
            .map_err(Error::from)
        })
    }

    /// Notified with a request id whenever that request changes.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// CA public keys hosts should trust at `now`, the signing key first.
    pub fn ca_public_keys_at(&self, now: UnixTime) -> Result<Vec<PublicKey>> {
        trusted_ca_keys(&self.store, &self.signer().fingerprint(), now)
    }

    /// Resolves a bearer token to a caller; failures are audited.
    pub fn authenticate_at(&self, token: &Token, peer: &str, now: UnixTime) -> Result<Caller> {
        let hash = token.hash();
        if let Some(caller) = self.store.read(|tx| tx.caller_by_token(&hash, now))? {
            return Ok(caller);
        }
        self.store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                "anonymous",
                "auth.failed",
                None,
                json!({ "peer": peer, "reason": "unknown, revoked or disabled token" }),
            ))
            .map_err(Error::from)
        })?;
        Err(Error::Unauthenticated(
            "token not accepted (unknown, revoked, or its user is disabled); ask the CA operator for a new one".into(),
        ))
    }

    /// Audits a refused attempt in its own transaction and returns the error.
    fn refuse(&self, caller: &Caller, role: &str, err: Error, now: UnixTime) -> Error {
        let recorded = self.store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                &caller.name,
                "request.refused",
                None,
                json!({ "role": role, "reason": err.to_string() }),
            ))
            .map_err(Error::from)
        });
        match recorded {
            Ok(()) => err,
            Err(store_err) => store_err,
        }
    }

    /// Creates an access request; an auto-approved role issues at once.
    pub fn create_request_at(
        &self,
        caller: &Caller,
        new: NewRequest,
        now: UnixTime,
    ) -> Result<RequestView> {
        let policy = self.policy();
        let checked = match self.check_new(caller, &policy, &new, now) {
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
        };
        let view = self.store.transact(|tx| {
            if tx.pending_count(&caller.name)? >= MAX_PENDING_PER_REQUESTER {
                return Err(Error::ResourceExhausted(format!(
                    "limit reached: at most {MAX_PENDING_PER_REQUESTER} pending requests per requester; cancel one with `moshca cancel ID`"
                )));
            }
            if !new.break_glass && tx.pending_total()? >= MAX_PENDING_TOTAL {
                return Err(Error::ResourceExhausted(format!(
                    "limit reached: {MAX_PENDING_TOTAL} requests are pending on this CA; try again later"
                )));
            }
            if tx.key_revoked(&request.fingerprint)? {
                return Err(Error::PermissionDenied(format!(
                    "public key {} is revoked; generate a new key",
                    request.fingerprint
                )));
            }
            tx.insert_request(&request)?;
            tx.append_audit(&Event::new(
                now,
                &caller.name,
                "request.created",
                Some(&request.id),
                json!({
                    "role": request.role,
                    "principals": request.principals,
                    "ttl_secs": request.ttl_secs,
                    "reason": request.reason,
                    "fingerprint": request.fingerprint,
                }),
            ))?;
            if request.break_glass {
                tx.append_audit(&Event::new(
                    now,
                    &caller.name,
                    "request.break_glass",
                    Some(&request.id),
                    json!({
                        "role": request.role,
                        "principals": request.principals,
                        "ttl_secs": request.ttl_secs,
                        "reason": request.reason,
                        "priority": "high",
                    }),
                ))?;
            }
            if request.break_glass || role.approval == policy::Approval::Auto {
                let ready = Ready {
                    ttl_secs: request.ttl_secs,
                    approvers: Vec::new(),
                    request: request.clone(),
                };
                let (request, cert) = self.issue(tx, ready, role, &policy, now, "")?;
                return Ok(self.view(&policy, request, Some(cert), true));
            }
            Ok(self.view(&policy, request.clone(), None, true))
        });
        let view = match view {
            Ok(v) => v,
            Err(e @ Error::ResourceExhausted(_)) => {
                return Err(self.refuse(caller, &new.role, e, now));
            }
            Err(e) => return Err(e),
        };
        tracing::info!(
            request_id = %view.request.id,
            caller = %caller.name,
            role = %view.request.role,
            principals = ?view.request.principals,
            ttl_secs = view.request.ttl_secs,
            fingerprint = %view.request.fingerprint,
            "access request created"
        );
        let _ = self.changes.send(view.request.id.clone());
        Ok(view)
    }

    fn check_new<'p>(
        &self,
        caller: &Caller,
        policy: &'p Policy,
        new: &NewRequest,
        now: UnixTime,
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
        let subject = signer::parse_subject_key(&new.public_key, &self.ca_public_keys_at(now)?)
            .map_err(|e| Error::InvalidArgument(e.0))?;
        Ok((role, checked, subject))
    }

    /// Signs the certificate for a satisfied request and records it, inside `tx`.
    fn issue(
        &self,
        tx: &Tx<'_>,
        ready: Ready,
        role: &Role,
        policy: &Policy,
        now: UnixTime,
        key_id_extra: &str,
    ) -> Result<(Request, CertRecord)> {
        let serial = loop_serial(tx)?;
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
            key_id: key_id.clone(),
            principals: req.principals.clone(),
            valid_after: now.saturating_sub(policy.defaults.backdate),
            valid_before: now + ready.ttl_secs,
            force_command: role.force_command.clone(),
            source_address: role.source_address.clone(),
            extensions: role.extensions.clone(),
        };
        // A key revoked after the request was made must not be certified on approval.
        if tx.key_revoked(&req.fingerprint)? {
            return Err(Error::FailedPrecondition(format!(
                "public key {} was revoked after request {} was made; the requester must ask again with a new key",
                req.fingerprint, req.id
            )));
        }
        let subject = PublicKey::from_openssh(&req.public_key)
            .map_err(|e| store::Error::Corrupt(format!("stored public key: {e}")))?;
        let signer = self.signer();
        let cert = signer.sign(&grant, &subject)?;
        let record = CertRecord {
            serial,
            request_id: req.id.clone(),
            key_id,
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
        let ttl_secs = ready.ttl_secs;
        let request = ready.issued(now);
        tx.update_request(&request)?;
        tx.insert_certificate(&record)?;
        tx.append_audit(&Event::new(
            now,
            "moshca-server",
            "certificate.issued",
            Some(&request.id),
            json!({
                "serial": serial.to_string(),
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
        tracing::info!(
            request_id = %request.id,
            serial,
            key_id = %record.key_id,
            principals = ?record.principals,
            ttl_secs,
            "certificate issued"
        );
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
            roles: None,
            limit: u32::MAX,
        };
        let mut found = self.store.read(|tx| tx.requests(&filter))?;
        found.retain(|r| r.requester == caller.name || approvable.contains(&r.role));
        found.truncate(limit as usize);
        Ok(found
            .into_iter()
            .map(|r| self.view(&policy, r, None, false))
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
        if comment.len() > policy::MAX_REASON_LEN || comment.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "comment must be at most 1024 bytes without control characters".into(),
            ));
        }
        if verdict == Verdict::Deny && comment.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a denial needs a reason: moshca deny ID --reason TEXT".into(),
            ));
        }
        let policy = self.policy();
        let result = self.store.transact(|tx| {
            let req = tx
                .request(id)?
                .filter(|r| Self::may_see(&policy, caller, r))
                .ok_or_else(|| not_found(id))?;
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
                    let req = pending
                        .deny_at(&caller.name, comment.trim(), now)
                        .map_err(transition_error)?;
                    tx.update_request(&req)?;
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
                    tx.append_audit(&Event::new(
                        now,
                        &caller.name,
                        "request.approved",
                        Some(id),
                        json!({ "ttl_secs": ttl_secs, "comment": comment.trim() }),
                    ))?;
                    match self.recheck(tx, outcome, role, &policy)? {
                        Approval::Waiting(req) => {
                            tx.update_request(&req)?;
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
                let _ = self.changes.send(id.to_owned());
            }
            Err(Error::PermissionDenied(m)) => {
                tracing::warn!(request_id = %id, caller = %caller.name, "review refused: {m}");
                let _ = self.store.transact(|tx| {
                    tx.append_audit(&Event::new(
                        now,
                        &caller.name,
                        "review.refused",
                        Some(id),
                        json!({ "reason": m }),
                    ))
                });
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
    ) -> Result<Approval> {
        let Approval::Satisfied(ready) = outcome else {
            return Ok(outcome);
        };
        let req = &ready.request;
        let requester_ok = tx.user(&req.requester)?.is_some_and(|u| {
            !u.disabled
                && role.may_request(&Caller {
                    name: u.name,
                    groups: u.groups,
                })
        });
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
        let mut valid = 0u32;
        for approver in &ready.approvers {
            let ok = tx.user(approver)?.is_some_and(|u| {
                !u.disabled
                    && u.name != req.requester
                    && role.may_approve(&Caller {
                        name: u.name.clone(),
                        groups: u.groups.clone(),
                    })
            });
            valid += u32::from(ok);
        }
        let required = match role.approval {
            policy::Approval::Manual { required } => required.max(req.approvals_required),
            policy::Approval::Auto => req.approvals_required,
        };
        if valid < required.max(1) {
            return Ok(Approval::Waiting(ready.request));
        }
        Ok(Approval::Satisfied(ready))
    }

    /// Cancels the caller's own pending request.
    pub fn cancel_at(&self, caller: &Caller, id: &str, now: UnixTime) -> Result<RequestView> {
        let policy = self.policy();
        let view = self.store.transact(|tx| {
            let req = tx
                .request(id)?
                .filter(|r| Self::may_see(&policy, caller, r))
                .ok_or_else(|| not_found(id))?;
            let req = req
                .pending_at(now)
                .map_err(transition_error)?
                .cancel_at(&caller.name, now)
                .map_err(transition_error)?;
            tx.update_request(&req)?;
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
        let _ = self.changes.send(id.to_owned());
        Ok(view)
    }

    /// Expires pending requests whose time is up; returns how many.
    pub fn expire_due_at(&self, now: UnixTime) -> Result<usize> {
        let expired = self.store.transact(|tx| {
            let due = tx.expired_pending(now)?;
            let mut ids = Vec::new();
            for req in due {
                let (req, changed) = req.expire_at(now);
                if changed {
                    tx.update_request(&req)?;
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
            let _ = self.changes.send(id.clone());
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
        if comment.is_empty()
            || comment.len() > policy::MAX_REASON_LEN
            || comment.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument(
                "a break-glass review needs a comment: moshca review ID --comment TEXT".into(),
            ));
        }
        let policy = self.policy();
        let view = self.store.transact(|tx| {
            let req = tx
                .request(id)?
                .filter(|r| Self::may_see(&policy, caller, r))
                .ok_or_else(|| not_found(id))?;
            let may = policy
                .role(&req.role)
                .is_some_and(|r| r.may_approve(caller));
            if !may {
                return Err(Error::PermissionDenied(format!(
                    "only approvers of role {} may review its break-glass requests",
                    req.role
                )));
            }
            let req = req
                .review_break_glass_at(&caller.name, comment, now)
                .map_err(|e| match e {
                    approvals::GlassError::SelfReview(_) => Error::PermissionDenied(e.to_string()),
                    _ => Error::FailedPrecondition(e.to_string()),
                })?;
            tx.update_request(&req)?;
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
        let _ = self.changes.send(id.to_owned());
        Ok(view)
    }

    /// Audit events for the policy's auditors, oldest first (the newest `limit`).
    pub fn audit_events(
        &self,
        caller: &Caller,
        user: Option<&str>,
        request_id: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<crate::audit::Row>> {
        let policy = self.policy();
        if !policy::selects(&policy.defaults.auditors, caller) {
            return Err(Error::PermissionDenied(
                "only the policy's auditors (defaults.auditors) may read the audit trail".into(),
            ));
        }
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as usize;
        let (rows, requests_of_user) = self.store.read(|tx| {
            let rows = tx.audit_rows_since(since)?;
            let mine: Vec<String> = match user {
                Some(u) => tx
                    .requests(&RequestFilter {
                        requester: Some(u.to_owned()),
                        limit: u32::MAX,
                        ..Default::default()
                    })?
                    .into_iter()
                    .map(|r| r.id)
                    .collect(),
                None => Vec::new(),
            };
            Ok::<_, Error>((rows, mine))
        })?;
        let mut rows: Vec<_> = rows
            .into_iter()
            .filter(|r| {
                user.is_none_or(|u| {
                    r.event.actor == u
                        || r.event
                            .request_id
                            .as_ref()
                            .is_some_and(|id| requests_of_user.contains(id))
                        || r.event.details.get("user").and_then(|v| v.as_str()) == Some(u)
                })
            })
            .filter(|r| request_id.is_none_or(|id| r.event.request_id.as_deref() == Some(id)))
            .collect();
        if rows.len() > limit {
            rows.drain(..rows.len() - limit);
        }
        Ok(rows)
    }

    /// Records a failed authentication (bad token or JWT); never the credential itself.
    pub fn record_auth_failure_at(&self, peer: &str, reason: &str, now: UnixTime) -> Result<()> {
        self.store.transact(|tx| {
            tx.append_audit(&Event::new(
                now,
                "anonymous",
                "auth.failed",
                None,
                json!({ "peer": peer, "reason": reason }),
            ))
            .map_err(Error::from)
        })
    }

    /// Issues a certificate to a CI workload whose token was verified: only for roles with
    /// `approval = "auto"` whose `workloads` match the token's claims. The token's `jti`
    /// is consumed in the issuing transaction, so a replay is refused even when concurrent.
    pub fn create_workload_request_at(
        &self,
        wl: &WorkloadIdentity,
        new: NewRequest,
        now: UnixTime,
    ) -> Result<RequestView> {
        let policy = self.policy();
        let name = workload_name(&wl.subject);
        let pseudo = Caller {
            name: name.clone(),
            groups: Vec::new(),
        };
        let checked = (|| {
            let role = policy
                .role(&new.role)
                .ok_or_else(|| Error::PermissionDenied(format!("no role named {:?}", new.role)))?;
            if role.approval != policy::Approval::Auto {
                return Err(Error::PermissionDenied(format!(
                    "role {} needs manual approval; workload tokens may only use roles with approval = \"auto\"",
                    role.name
                )));
            }
            if !role
                .workloads
                .iter()
                .any(|w| w.matches(&wl.issuer, &wl.audiences, &wl.claims))
            {
                return Err(Error::PermissionDenied(format!(
                    "token claims ({}) do not match any workload of role {}",
                    claim_summary(wl),
                    role.name
                )));
            }
            let reason = if new.reason.trim().is_empty() {
                format!("workload {}", claim_summary(wl))
            } else {
                new.reason.clone()
            };
            let checked = role
                .check_request(&new.principals, new.ttl_secs, &reason)
                .map_err(|r| match r {
                    Refusal::Invalid(m) => Error::InvalidArgument(m),
                    Refusal::Denied(m) => Error::PermissionDenied(m),
                })?;
            let subject = signer::parse_subject_key(&new.public_key, &self.ca_public_keys_at(now)?)
                .map_err(|e| Error::InvalidArgument(e.0))?;
            Ok((role, checked, subject, reason))
        })();
        let (role, checked, subject, reason) = match checked {
            Ok(v) => v,
            Err(e) if !e.is_internal() => return Err(self.refuse(&pseudo, &new.role, e, now)),
            Err(e) => return Err(e),
        };
        let request = Request {
            id: ulid::Ulid::new().to_string(),
            requester: name.clone(),
            role: role.name.clone(),
            principals: checked.principals,
            ttl_secs: checked.ttl_secs,
            reason: reason.chars().take(policy::MAX_REASON_LEN).collect(),
            public_key: subject.to_openssh().map_err(signer::Error::from)?,
            fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
            state: State::Pending,
            created_at: now,
            expires_at: now + policy.defaults.pending_ttl,
            decided_at: None,
            approvals_required: 0,
            reviews: Vec::new(),
            break_glass: false,
            break_glass_review: None,
        };
        let extra = format!(
            ":iss={}:repo={}:run={}",
            key_id_part(&wl.issuer),
            key_id_part(
                wl.claim("repository")
                    .or(wl.claim("project_path"))
                    .unwrap_or("-")
            ),
            key_id_part(
                wl.claim("run_id")
                    .or(wl.claim("pipeline_id"))
                    .unwrap_or("-")
            ),
        );
        let result = self.store.transact(|tx| {
            if !tx.insert_jti(&wl.issuer, &wl.jti, wl.expires_at)? {
                return Err(Error::Unauthenticated(
                    "token already used (jti replay); request a fresh ID token".into(),
                ));
            }
            if tx.key_revoked(&request.fingerprint)? {
                return Err(Error::PermissionDenied("public key is revoked".into()));
            }
            tx.insert_request(&request)?;
            tx.append_audit(&Event::new(
                now,
                &name,
                "request.created",
                Some(&request.id),
                json!({
                    "role": request.role,
                    "principals": request.principals,
                    "ttl_secs": request.ttl_secs,
                    "reason": request.reason,
                    "fingerprint": request.fingerprint,
                    "workload": {
                        "issuer": wl.issuer,
                        "subject": wl.subject,
                        "repository": wl.claim("repository"),
                        "ref": wl.claim("ref"),
                        "environment": wl.claim("environment"),
                        "run_id": wl.claim("run_id"),
                        "jti": wl.jti,
                    },
                }),
            ))?;
            let ready = Ready {
                ttl_secs: request.ttl_secs,
                approvers: Vec::new(),
                request: request.clone(),
            };
            let (request, cert) = self.issue(tx, ready, role, &policy, now, &extra)?;
            Ok(self.view(&policy, request, Some(cert), true))
        });
        match result {
            Ok(view) => {
                tracing::info!(request_id = %view.request.id, caller = %name, role = %view.request.role, "workload certificate issued");
                let _ = self.changes.send(view.request.id.clone());
                Ok(view)
            }
            Err(e) if !e.is_internal() => Err(self.refuse(&pseudo, &new.role, e, now)),
            Err(e) => Err(e),
        }
    }

    /// Signs the audit chain's head if events were added since the last checkpoint; returns
    /// the checkpointed sequence number.
    pub fn checkpoint_at(&self, now: UnixTime) -> Result<Option<u64>> {
        let signer = self.signer();
        self.store.transact(|tx| {
            let Some((seq, hash)) = tx.audit_head()? else {
                return Ok(None);
            };
            if tx.checkpoints()?.last().is_some_and(|c| c.seq >= seq) {
                return Ok(None);
            }
            let signature = signer.sign_checkpoint(&crate::audit::Checkpoint::message(seq, &hash));
            // Also to the log, which lives outside the database: deleting both the tail
            // and its checkpoint rows is then still visible there.
            tracing::info!(seq, hash = %hash, signature = %signature, "audit checkpoint");
            tx.insert_checkpoint(&crate::audit::Checkpoint {
                seq,
                hash,
                ca_fingerprint: signer.fingerprint(),
                signature,
                at: now,
            })?;
            Ok(Some(seq))
        })
    }

    /// Forgets consumed token ids whose tokens expired.
    pub fn purge_jti_at(&self, now: UnixTime) -> Result<usize> {
        self.store.transact(|tx| {
            tx.purge_jti(now, crate::oidc::LEEWAY_SECS)
                .map_err(Error::from)
        })
    }

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
        if reason.is_empty()
            || reason.len() > policy::MAX_REASON_LEN
            || reason.chars().any(char::is_control)
        {
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
                    let key = PublicKey::from_openssh(text.trim()).map_err(|_| {
                        Error::InvalidArgument(
                            "public key does not parse as an OpenSSH public key".into(),
                        )
                    })?;
                    let key = PublicKey::new(key.key_data().clone(), "");
                    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                    let certs = tx.live_certificates_for_key(&fingerprint, now)?;
                    let own = !certs.is_empty() && certs.iter().all(|c| c.requester == caller.name);
                    if !global && !own {
                        return Err(denied(&format!("key {fingerprint}")));
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
                let _ = self.store.transact(|tx| {
                    tx.append_audit(&Event::new(
                        now,
                        &caller.name,
                        "revocation.refused",
                        None,
                        json!({ "reason": e.to_string() }),
                    ))
                });
            }
            Err(_) => {}
        }
        result
    }

    /// The KRL for `now`: every revoked certificate not yet expired, by serial under its
    /// CA key, and every revoked subject key.
    pub fn krl_at(&self, now: UnixTime) -> Result<(Vec<u8>, u64)> {
        krl_from_store(&self.store, &self.ca_public_keys_at(now)?, now)
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

/// Verifies the audit chain and its signed checkpoints; the number of events and
/// checkpoints, or the first bad event.
pub fn verify_audit(store: &Store) -> Result<Result<(u64, usize), crate::audit::Broken>> {
    let (rows, checkpoints, keys) = store
        .read(|tx| Ok::<_, Error>((tx.audit_rows()?, tx.checkpoints()?, tx.all_ca_keys()?)))?;
    let keys: Vec<PublicKey> = keys
        .iter()
        .filter_map(|k| PublicKey::from_openssh(k).ok())
        .collect();
    Ok(crate::audit::verify_with_checkpoints(
        rows,
        &checkpoints,
        |cp| {
            let msg = crate::audit::Checkpoint::message(cp.seq, &cp.hash);
            keys.iter()
                .any(|k| signer::checkpoint_signature_ok(k, &msg, &cp.signature))
        },
    ))
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

/// CA public keys to trust at `now` given the active key's fingerprint, active first.
pub fn trusted_ca_keys(store: &Store, active: &str, now: UnixTime) -> Result<Vec<PublicKey>> {
    let keys = store.read(|tx| tx.trusted_ca_keys(active, now))?;
    keys.iter()
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
    let (revoked, keys, version) = store.read(|tx| {
        Ok::<_, Error>((
            tx.revoked_live_certificates(now)?,
            tx.revoked_keys()?,
            tx.krl_version()?,
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
    let explicit_keys = keys
        .iter()
        .map(|k| {
            PublicKey::from_openssh(k)
                .and_then(|k| k.to_bytes())
                .map_err(|e| store::Error::Corrupt(format!("revoked key: {e}")).into())
        })
        .collect::<Result<Vec<_>>>()?;
    let krl = crate::krl::Krl {
        version,
        generated_at: now,
        comment: format!("moshca KRL version {version}"),
        ca_sections: sections,
        explicit_keys,
        sha256_keys: Vec::new(),
    };
    Ok((krl.encode()?, version))
}

/// A workload's name in requests and key ids: its `sub`, printable, at most 128 bytes.
fn workload_name(subject: &str) -> String {
    let mut name = String::from("wl:");
    name.push_str(&key_id_part(subject));
    name.chars().take(128).collect()
}

/// Makes a value safe inside a key id: printable ASCII without spaces.
fn key_id_part(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

fn claim_summary(wl: &WorkloadIdentity) -> String {
    ["repository", "ref", "environment", "sub"]
        .iter()
        .filter_map(|k| wl.claim(k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn loop_serial(tx: &Tx<'_>) -> Result<u64> {
    let mut rng = rand::rngs::OsRng;
    for _ in 0..16 {
        let serial: u64 = rng.r#gen();
        if serial != 0 && !tx.serial_exists(serial)? {
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
mod tests {
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};

    const T0: UnixTime = 1_790_000_000;
    const DAY: u64 = 86_400;

    const POLICY: &str = r#"
[[role]]
name = "db"
requesters = ["group:oncall"]
approvers = ["group:leads"]
logins = ["postgres", "ubuntu"]
max_ttl = "1h"
break_glass = { enabled = true, max_ttl = "15m" }

[defaults]
revokers = ["group:security"]
auditors = ["group:audit"]

[[role]]
name = "two"
requesters = ["group:oncall"]
approvers = ["group:leads"]
approvals_required = 2
logins = ["postgres"]

[[role]]
name = "auto"
requesters = ["group:ci"]
approval = "auto"
logins = ["deploy"]
max_ttl = "10m"
force_command = "/bin/deploy"
workloads = [{ issuer = "https://t", claims = { repository = "acme/app", ref = "refs/heads/main" } }]
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        auth: Authority,
        store: Arc<Store>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::generate(&dir.path().join("ca"), None, "t").unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        store
            .transact(|tx| {
                tx.insert_user("alice", &["oncall".into(), "leads".into()], 0)?;
                tx.insert_user("bob", &["leads".into()], 0)?;
                tx.insert_user("carol", &["leads".into()], 0)?;
                tx.insert_user("mallory", &["oncall".into()], 0)?;
                tx.insert_user("ci", &["ci".into()], 0)
            })
            .unwrap();
        let policy = Policy::parse(POLICY, "p", DAY).unwrap();
        Fixture {
            auth: Authority::new(store.clone(), signer, policy, 0).unwrap(),
            store,
            _dir: dir,
        }
    }

    fn who(name: &str, groups: &[&str]) -> Caller {
        Caller {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
        }
    }

    fn alice() -> Caller {
        who("alice", &["oncall", "leads"])
    }
    fn bob() -> Caller {
        who("bob", &["leads"])
    }

    fn key() -> String {
        PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap()
    }

    fn ask(role: &str, principals: &[&str], ttl: Option<u64>) -> NewRequest {
        NewRequest {
            role: role.into(),
            principals: principals.iter().map(|p| (*p).into()).collect(),
            ttl_secs: ttl,
            reason: "INC-4312 replica lag".into(),
            public_key: key(),
            break_glass: false,
        }
    }

    fn count_requests(f: &Fixture) -> usize {
        f.store
            .read(|tx| {
                tx.requests(&RequestFilter {
                    limit: 1000,
                    ..Default::default()
                })
            })
            .unwrap()
            .len()
    }

    fn audit_actions(f: &Fixture) -> Vec<String> {
        f.store
            .read(|tx| tx.audit_rows())
            .unwrap()
            .into_iter()
            .map(|r| r.event.action)
            .collect()
    }

    #[test]
    fn approved_request_issues_exactly_what_was_granted() {
        let f = fixture();
        let v = f
            .auth
            .create_request_at(&alice(), ask("db", &["postgres"], Some(900)), T0)
            .unwrap();
        assert_eq!(v.request.state, State::Pending);
        let v = f
            .auth
            .review_at(&bob(), &v.request.id, Verdict::Approve, None, "ok", T0 + 10)
            .unwrap();
        assert_eq!(v.request.state, State::Issued);
        let cert = v.certificate.unwrap();
        assert_eq!(cert.principals, ["postgres"]);
        assert_eq!(cert.valid_after, T0 + 10 - 60);
        assert_eq!(cert.valid_before, T0 + 10 + 900);
        assert_ne!(cert.serial, 0);
        assert_eq!(
            cert.key_id,
            format!("moshca:req={}:user=alice:role=db:by=bob", v.request.id)
        );
        let parsed = ssh_key::Certificate::from_openssh(&cert.openssh).unwrap();
        assert_eq!(parsed.valid_principals(), ["postgres"]);
        assert_eq!(
            parsed.extensions().keys().collect::<Vec<_>>(),
            ["permit-pty"]
        );
        assert_eq!(
            audit_actions(&f),
            ["request.created", "request.approved", "certificate.issued"]
        );
        assert_eq!(
            crate::audit::verify(f.store.read(|tx| tx.audit_rows()).unwrap()).unwrap(),
            3
        );
    }

    #[test]
    fn requester_holding_approver_group_cannot_approve_own() {
        let f = fixture();
        let v = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap();
        let e = f
            .auth
            .review_at(&alice(), &v.request.id, Verdict::Approve, None, "", T0)
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
        let still = f.auth.get_request(&alice(), &v.request.id, false).unwrap();
        assert_eq!(still.request.state, State::Pending);
        assert!(audit_actions(&f).contains(&"review.refused".to_owned()));
    }

    #[test]
    fn refusals_store_nothing_but_an_audit_row() {
        let f = fixture();
        let cases = [
            ask("db", &["root"], None),
            ask("db", &["postgres", "root"], None),
            ask("db", &["postgres,root"], None),
            ask("db", &[], Some(7200)),
            ask("db", &[], Some(0)),
            ask("nope", &[], None),
            NewRequest {
                public_key: "ssh-dss AAAA".into(),
                ..ask("db", &[], None)
            },
        ];
        for c in cases {
            assert!(f.auth.create_request_at(&alice(), c, T0).is_err());
        }
        // Not a requester of the role.
        assert!(matches!(
            f.auth.create_request_at(&bob(), ask("db", &[], None), T0),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(count_requests(&f), 0);
        assert_eq!(audit_actions(&f), vec!["request.refused"; 8]);
    }

    #[test]
    fn two_approvals_needed_and_each_counts_once() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("two", &[], None), T0)
            .unwrap()
            .request
            .id;
        let v = f
            .auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        assert_eq!(v.request.state, State::Pending);
        assert!(matches!(
            f.auth
                .review_at(&bob(), &id, Verdict::Approve, None, "", T0),
            Err(Error::FailedPrecondition(_))
        ));
        let v = f
            .auth
            .review_at(
                &who("carol", &["leads"]),
                &id,
                Verdict::Approve,
                None,
                "",
                T0,
            )
            .unwrap();
        assert_eq!(v.request.state, State::Issued);
        assert!(v.certificate.unwrap().key_id.ends_with("by=bob,carol"));
    }

    #[test]
    fn disabled_earlier_approver_no_longer_counts() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("two", &[], None), T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        f.store
            .transact(|tx| tx.set_user_disabled("bob", true))
            .unwrap();
        let v = f
            .auth
            .review_at(
                &who("carol", &["leads"]),
                &id,
                Verdict::Approve,
                None,
                "",
                T0,
            )
            .unwrap();
        assert_eq!(v.request.state, State::Pending, "bob's approval is stale");
    }

    #[test]
    fn decided_requests_cannot_be_reviewed_again() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Deny, None, "not now", T0)
            .unwrap();
        assert!(matches!(
            f.auth.review_at(
                &who("carol", &["leads"]),
                &id,
                Verdict::Approve,
                None,
                "",
                T0
            ),
            Err(Error::FailedPrecondition(_))
        ));
        let v = f.auth.get_request(&alice(), &id, true).unwrap();
        assert_eq!(v.request.state, State::Denied);
        assert!(v.certificate.is_none());
    }

    #[test]
    fn approve_twice_yields_one_certificate() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        let first = f
            .auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        assert!(
            f.auth
                .review_at(
                    &who("carol", &["leads"]),
                    &id,
                    Verdict::Approve,
                    None,
                    "",
                    T0
                )
                .is_err()
        );
        let a = f
            .auth
            .get_request(&alice(), &id, true)
            .unwrap()
            .certificate
            .unwrap();
        let b = f
            .auth
            .get_request(&alice(), &id, true)
            .unwrap()
            .certificate
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.serial, first.certificate.unwrap().serial);
    }

    #[test]
    fn only_requester_fetches_certificate() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        assert!(matches!(
            f.auth.get_request(&bob(), &id, true),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            f.auth.get_request(&who("mallory", &["oncall"]), &id, false),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn approver_can_shorten_not_lengthen() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], Some(1800)), T0)
            .unwrap()
            .request
            .id;
        assert!(matches!(
            f.auth
                .review_at(&bob(), &id, Verdict::Approve, Some(3600), "", T0),
            Err(Error::InvalidArgument(_))
        ));
        let v = f
            .auth
            .review_at(&bob(), &id, Verdict::Approve, Some(600), "", T0)
            .unwrap();
        let c = v.certificate.unwrap();
        assert_eq!(c.valid_before - T0, 600);
    }

    #[test]
    fn auto_role_issues_at_once_with_force_command() {
        let f = fixture();
        let v = f
            .auth
            .create_request_at(&who("ci", &["ci"]), ask("auto", &[], Some(300)), T0)
            .unwrap();
        assert_eq!(v.request.state, State::Issued);
        let c = v.certificate.unwrap();
        assert!(c.key_id.ends_with(":by=auto"));
        let parsed = ssh_key::Certificate::from_openssh(&c.openssh).unwrap();
        assert_eq!(
            parsed.critical_options().get("force-command").unwrap(),
            "/bin/deploy"
        );
    }

    #[test]
    fn pending_requests_expire_and_cannot_be_approved() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        assert!(matches!(
            f.auth
                .review_at(&bob(), &id, Verdict::Approve, None, "", T0 + 3600),
            Err(Error::FailedPrecondition(_))
        ));
        assert_eq!(f.auth.expire_due_at(T0 + 3599).unwrap(), 0);
        assert_eq!(f.auth.expire_due_at(T0 + 3600).unwrap(), 1);
        let v = f.auth.get_request(&alice(), &id, false).unwrap();
        assert_eq!(v.request.state, State::Expired);
    }

    #[test]
    fn cancel_only_own() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        assert!(matches!(
            f.auth.cancel_at(&bob(), &id, T0),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(
            f.auth.cancel_at(&alice(), &id, T0).unwrap().request.state,
            State::Cancelled
        );
        assert!(f.auth.cancel_at(&alice(), &id, T0).is_err());
    }

    #[test]
    fn pending_cap_per_requester() {
        let f = fixture();
        for _ in 0..MAX_PENDING_PER_REQUESTER {
            f.auth
                .create_request_at(&alice(), ask("db", &[], None), T0)
                .unwrap();
        }
        assert!(matches!(
            f.auth.create_request_at(&alice(), ask("db", &[], None), T0),
            Err(Error::ResourceExhausted(_))
        ));
        assert_eq!(count_requests(&f), MAX_PENDING_PER_REQUESTER as usize);
    }

    #[test]
    fn policy_change_before_issuance_is_rechecked() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &["ubuntu"], None), T0)
            .unwrap()
            .request
            .id;
        let narrowed = POLICY.replace(
            r#"logins = ["postgres", "ubuntu"]"#,
            r#"logins = ["postgres"]"#,
        );
        f.auth
            .replace_policy(Policy::parse(&narrowed, "p", DAY).unwrap(), T0)
            .unwrap();
        assert!(matches!(
            f.auth
                .review_at(&bob(), &id, Verdict::Approve, None, "", T0),
            Err(Error::FailedPrecondition(_))
        ));
        let v = f.auth.get_request(&alice(), &id, true).unwrap();
        assert_eq!(v.request.state, State::Pending);
        assert!(v.certificate.is_none());
    }

    #[test]
    fn concurrent_approvals_issue_once() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = ["bob", "carol", "bob", "carol"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let auth = &f.auth;
                    let id = id.clone();
                    s.spawn(move || {
                        let verdict = if i == 3 {
                            Verdict::Deny
                        } else {
                            Verdict::Approve
                        };
                        auth.review_at(&who(name, &["leads"]), &id, verdict, None, "r", T0)
                            .is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
        let certs = f.store.read(|tx| tx.certificate_for_request(&id)).unwrap();
        let state = f
            .auth
            .get_request(&alice(), &id, false)
            .unwrap()
            .request
            .state;
        assert_eq!(certs.is_some(), state == State::Issued);
    }

    fn issued(f: &Fixture, who: Caller) -> CertRecord {
        let id = f
            .auth
            .create_request_at(&who, ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap()
            .certificate
            .unwrap()
    }

    fn krl_serials(f: &Fixture, now: UnixTime) -> (Vec<u8>, u64) {
        f.auth.krl_at(now).unwrap()
    }

    #[test]
    fn revocation_permissions() {
        let f = fixture();
        let alices = issued(&f, alice());
        let mallorys = issued(&f, who("mallory", &["oncall"]));
        // Another requester may not revoke alice's certificate.
        assert!(matches!(
            f.auth.revoke_at(
                &who("mallory", &["oncall"]),
                RevokeTarget::Serial(alices.serial),
                "x",
                T0
            ),
            Err(Error::PermissionDenied(_))
        ));
        // Nor anyone's by user, nor a key.
        assert!(matches!(
            f.auth.revoke_at(
                &who("mallory", &["oncall"]),
                RevokeTarget::User("alice".into()),
                "x",
                T0
            ),
            Err(Error::PermissionDenied(_))
        ));
        // A requester may revoke their own.
        let r = f
            .auth
            .revoke_at(
                &alice(),
                RevokeTarget::Request(alices.request_id.clone()),
                "lost laptop",
                T0 + 1,
            )
            .unwrap();
        assert_eq!(r.serials, [alices.serial]);
        assert_eq!(r.krl_version, 1);
        // Revoking again changes nothing and keeps the version.
        let again = f
            .auth
            .revoke_at(
                &alice(),
                RevokeTarget::Serial(alices.serial),
                "again",
                T0 + 2,
            )
            .unwrap();
        assert!(again.serials.is_empty());
        assert_eq!(again.krl_version, 1);
        // A global revoker may revoke anyone, and the user is then blocked.
        let sec = who("sam", &["security"]);
        let r = f
            .auth
            .revoke_at(
                &sec,
                RevokeTarget::User("mallory".into()),
                "offboarded",
                T0 + 3,
            )
            .unwrap();
        assert_eq!(r.serials, [mallorys.serial]);
        assert!(
            f.store
                .read(|tx| tx.user("mallory"))
                .unwrap()
                .unwrap()
                .disabled
        );
        assert!(matches!(
            f.auth
                .revoke_at(&sec, RevokeTarget::Serial(alices.serial), "", T0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            f.auth.revoke_at(&sec, RevokeTarget::Serial(12345), "x", T0),
            Err(Error::NotFound(_))
        ));
        let actions = audit_actions(&f);
        assert_eq!(
            actions
                .iter()
                .filter(|a| *a == "certificate.revoked")
                .count(),
            3
        );
        // Two policy refusals and the unknown serial; a missing reason is malformed input.
        assert_eq!(
            actions
                .iter()
                .filter(|a| *a == "revocation.refused")
                .count(),
            3
        );
    }

    #[test]
    fn revoked_key_cannot_get_new_certificates() {
        let f = fixture();
        let req = ask("db", &[], None);
        let key = req.public_key.clone();
        let id = f
            .auth
            .create_request_at(&alice(), req, T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        let r = f
            .auth
            .revoke_at(
                &who("sam", &["security"]),
                RevokeTarget::PublicKey(key.clone()),
                "stolen",
                T0,
            )
            .unwrap();
        assert_eq!(r.serials.len(), 1);
        let again = NewRequest {
            public_key: key,
            ..ask("db", &[], None)
        };
        assert!(matches!(
            f.auth.create_request_at(&alice(), again, T0),
            Err(Error::PermissionDenied(m)) if m.contains("revoked")
        ));
    }

    #[test]
    fn krl_lists_only_revoked_unexpired_certificates() {
        let f = fixture();
        let a = issued(&f, alice());
        let b = issued(&f, who("mallory", &["oncall"]));
        let (empty, v0) = krl_serials(&f, T0);
        assert_eq!(v0, 0);
        f.auth
            .revoke_at(&alice(), RevokeTarget::Serial(a.serial), "x", T0)
            .unwrap();
        let (one, v1) = krl_serials(&f, T0);
        assert_eq!(v1, 1);
        assert!(one.len() > empty.len());
        assert!(one.windows(8).any(|w| w == a.serial.to_be_bytes()));
        assert!(!one.windows(8).any(|w| w == b.serial.to_be_bytes()));
        // Once the certificate expired it drops out of the KRL.
        let (later, _) = krl_serials(&f, a.valid_before);
        assert_eq!(later.len(), empty.len());
    }

    #[test]
    fn key_revoked_while_pending_is_not_certified() {
        let f = fixture();
        let req = ask("db", &[], None);
        let key = req.public_key.clone();
        let id = f
            .auth
            .create_request_at(&alice(), req, T0)
            .unwrap()
            .request
            .id;
        f.auth
            .revoke_at(
                &who("sam", &["security"]),
                RevokeTarget::PublicKey(key),
                "leaked",
                T0,
            )
            .unwrap();
        assert!(matches!(
            f.auth.review_at(&bob(), &id, Verdict::Approve, None, "", T0),
            Err(Error::FailedPrecondition(m)) if m.contains("revoked")
        ));
        assert!(
            f.store
                .read(|tx| tx.certificate_for_request(&id))
                .unwrap()
                .is_none()
        );
    }

    fn workload(repo: &str, r: &str, jti: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: "https://t".into(),
            subject: format!("repo:{repo}:ref:{r}"),
            audiences: vec!["moshca".into()],
            jti: jti.into(),
            expires_at: T0 + 300,
            claims: serde_json::json!({"repository": repo, "ref": r, "run_id": "77"})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn workload_gets_an_auto_certificate_bound_to_its_claims() {
        let f = fixture();
        let wl = workload("acme/app", "refs/heads/main", "j1");
        let v = f
            .auth
            .create_workload_request_at(
                &wl,
                NewRequest {
                    reason: String::new(),
                    ..ask("auto", &[], Some(300))
                },
                T0,
            )
            .unwrap();
        let c = v.certificate.unwrap();
        assert!(
            c.key_id
                .contains(":iss=https://t:repo=acme/app:run=77:role=auto:by=auto"),
            "{}",
            c.key_id
        );
        assert_eq!(c.principals, ["deploy"]);
        assert_eq!(c.valid_before - T0, 300);
        // The same token again is a replay.
        assert!(matches!(
            f.auth.create_workload_request_at(&wl, ask("auto", &[], None), T0),
            Err(Error::Unauthenticated(m)) if m.contains("jti")
        ));
    }

    #[test]
    fn workload_refusals() {
        let f = fixture();
        for (wl, role) in [
            (workload("acme/other", "refs/heads/main", "a"), "auto"),
            (workload("acme/app", "refs/heads/dev", "b"), "auto"),
            (workload("acme/app", "refs/heads/main", "c"), "db"),
            (workload("acme/app", "refs/heads/main", "d"), "missing"),
        ] {
            assert!(
                matches!(
                    f.auth
                        .create_workload_request_at(&wl, ask(role, &[], None), T0),
                    Err(Error::PermissionDenied(_))
                ),
                "{role} {:?}",
                wl.claims
            );
        }
        assert!(matches!(
            f.auth.create_workload_request_at(&workload("acme/app", "refs/heads/main", "e"), ask("auto", &[], Some(3600)), T0),
            Err(Error::PermissionDenied(m)) if m.contains("max_ttl")
        ));
        assert_eq!(count_requests(&f), 0);
        assert_eq!(audit_actions(&f), vec!["request.refused"; 5]);
    }

    #[test]
    fn concurrent_replays_issue_once() {
        let f = fixture();
        let wl = workload("acme/app", "refs/heads/main", "same");
        let ok = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        f.auth
                            .create_workload_request_at(&wl, ask("auto", &[], None), T0)
                            .is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|ok| *ok)
                .count()
        });
        assert_eq!(ok, 1);
        assert_eq!(count_requests(&f), 1);
    }

    fn glass(ttl: Option<u64>) -> NewRequest {
        NewRequest {
            break_glass: true,
            ..ask("db", &["postgres"], ttl)
        }
    }

    #[test]
    fn break_glass_issues_at_once_capped_flagged_and_reviewable() {
        let f = fixture();
        let v = f.auth.create_request_at(&alice(), glass(None), T0).unwrap();
        assert_eq!(v.request.state, State::Issued);
        assert!(v.request.break_glass);
        let c = v.certificate.unwrap();
        assert_eq!(
            c.valid_before - T0,
            15 * 60,
            "capped by break_glass.max_ttl"
        );
        assert!(c.key_id.ends_with(":by=break-glass"), "{}", c.key_id);
        assert!(audit_actions(&f).contains(&"request.break_glass".to_owned()));
        let unreviewed = f.auth.list_requests(&bob(), false, false, true, 0).unwrap();
        assert_eq!(unreviewed.len(), 1);
        // The requester cannot review their own, not even holding the approver group.
        assert!(matches!(
            f.auth
                .review_break_glass_at(&alice(), &v.request.id, "fine", T0),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            f.auth.review_break_glass_at(&bob(), &v.request.id, "", T0),
            Err(Error::InvalidArgument(_))
        ));
        let r = f
            .auth
            .review_break_glass_at(&bob(), &v.request.id, "INC-1 was real", T0 + 5)
            .unwrap();
        assert_eq!(r.request.break_glass_review.unwrap().approver, "bob");
        assert!(
            f.auth
                .list_requests(&bob(), false, false, true, 0)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            f.auth
                .review_break_glass_at(&who("carol", &["leads"]), &v.request.id, "again", T0),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn break_glass_limits() {
        let f = fixture();
        assert!(matches!(
            f.auth.create_request_at(&alice(), glass(Some(16 * 60)), T0),
            Err(Error::PermissionDenied(m)) if m.contains("break_glass.max_ttl")
        ));
        let two = NewRequest {
            break_glass: true,
            ..ask("two", &[], None)
        };
        assert!(matches!(
            f.auth.create_request_at(&alice(), two, T0),
            Err(Error::PermissionDenied(m)) if m.contains("does not allow break-glass")
        ));
        assert_eq!(count_requests(&f), 0);
    }

    #[test]
    fn only_auditors_read_the_audit_trail() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        assert!(matches!(
            f.auth.audit_events(&alice(), None, None, 0, 0),
            Err(Error::PermissionDenied(_))
        ));
        let auditor = who("ann", &["audit"]);
        let all = f
            .auth
            .audit_events(&auditor, None, Some(&id), 0, 0)
            .unwrap();
        assert_eq!(all.len(), 3);
        let by_alice = f
            .auth
            .audit_events(&auditor, Some("alice"), None, 0, 0)
            .unwrap();
        assert_eq!(
            by_alice.len(),
            3,
            "events about alice's requests count as hers"
        );
        let last = f.auth.audit_events(&auditor, None, None, 0, 1).unwrap();
        assert_eq!(last[0].event.action, "certificate.issued");
    }

    #[test]
    fn checkpoints_catch_a_cut_tail() {
        let f = fixture();
        let id = f
            .auth
            .create_request_at(&alice(), ask("db", &[], None), T0)
            .unwrap()
            .request
            .id;
        assert_eq!(f.auth.checkpoint_at(T0).unwrap(), Some(1));
        assert_eq!(f.auth.checkpoint_at(T0).unwrap(), None, "nothing new");
        f.auth
            .review_at(&bob(), &id, Verdict::Approve, None, "", T0)
            .unwrap();
        assert_eq!(f.auth.checkpoint_at(T0).unwrap(), Some(3));
        assert_eq!(verify_audit(&f.store).unwrap().unwrap(), (3, 2));
        f.store
            .transact(|tx| tx.append_audit(&Event::new(T0, "x", "y.z", None, json!({}))))
            .unwrap();
        // Unsigned tail events are fine until cut below a checkpoint.
        assert_eq!(verify_audit(&f.store).unwrap().unwrap().0, 4);
    }
}
