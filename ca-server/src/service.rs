//! The `moshca.v1.CertificateAuthority` gRPC service.
//!
//! Each handler authenticates, converts, calls [`Authority`] on a blocking thread, and
//! converts back. No policy, state or SQL here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moshca_proto::v1 as pb;
use moshca_proto::v1::certificate_authority_server::CertificateAuthority;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::auth::{self, Caller, Credential, Token};
use crate::authority::{Authority, RevokeTarget};
use crate::limits::{AuthFailures, MAX_AUTH_FAILURES, MAX_REFUSALS, Refusals};
use crate::oidc::{Verifier, WorkloadIdentity};

/// Largest answer sent. KRLs of any size go out as `StreamKrl` chunks well below it.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
use crate::{clock, convert, text};

/// Response header telling a bearer-token caller when their token expires (Unix
/// seconds), so the client can warn ahead of time without a call of its own.
pub const TOKEN_EXPIRES_HEADER: &str = "moshca-token-expires";

tokio::task_local! {
    /// The expiry of the token that authenticated the call being handled.
    static TOKEN_EXPIRY: std::cell::Cell<Option<u64>>;
}

/// Wraps the gRPC service so every response to a call authenticated by a bearer token
/// carries [`TOKEN_EXPIRES_HEADER`]: one place for every handler, set from
/// `as_caller` through a task-local.
#[derive(Debug, Clone)]
pub struct TokenExpiryHeader<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for TokenExpiryHeader<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>
    for TokenExpiryHeader<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let inner = self.0.call(req);
        Box::pin(TOKEN_EXPIRY.scope(std::cell::Cell::new(None), async move {
            let mut response = inner.await?;
            if let Some(at) = TOKEN_EXPIRY.with(std::cell::Cell::get) {
                response
                    .headers_mut()
                    .insert(TOKEN_EXPIRES_HEADER, at.into());
            }
            Ok(response)
        }))
    }
}

/// The gRPC service over an [`Authority`].
#[derive(Debug, Clone)]
pub struct Service {
    authority: Arc<Authority>,
    verifier: Arc<Verifier>,
    failures: Arc<AuthFailures>,
    refusals: Arc<Refusals>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Names of the webhooks subscribed to `request.break_glass`, told to break-glass
    /// requesters so they know who hears of it.
    break_glass_hooks: Vec<String>,
}

impl Service {
    /// A service over `authority`; watch streams end when `stopping` turns true, so a
    /// graceful shutdown does not wait for requests that may stay pending for an hour.
    pub fn new(
        authority: Arc<Authority>,
        verifier: Arc<Verifier>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Service {
            authority,
            verifier,
            failures: Arc::new(AuthFailures::new(MAX_AUTH_FAILURES)),
            refusals: Arc::new(Refusals::new(MAX_REFUSALS)),
            stopping,
            break_glass_hooks: Vec::new(),
        }
    }

    /// The same service, telling break-glass requesters that the webhooks named in
    /// `hooks` (those subscribed to `request.break_glass`) are notified.
    pub fn with_break_glass_hooks(mut self, hooks: Vec<String>) -> Self {
        self.break_glass_hooks = hooks;
        self
    }

    /// Runs blocking authority work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Authority) -> Result<T, crate::authority::Error> + Send + 'static,
    ) -> Result<T, Status> {
        let authority = self.authority.clone();
        let span = tracing::Span::current();
        let started = crate::metrics::call_started();
        tokio::task::spawn_blocking(move || {
            crate::metrics::in_call(started, || span.in_scope(|| f(&authority)))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "blocking task failed");
            Status::internal("internal error")
        })?
        .map_err(Status::from)
    }

    fn credential<T>(&self, req: &Request<T>) -> Result<(Credential, String), Status> {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default());
        let ip = req.remote_addr().map(|a| a.ip());
        let peer = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if let Some(ip) = ip
            && !self.failures.allowed_at(&ip, Instant::now())
        {
            tracing::warn!(peer = %peer, "refused: too many failed authentications");
            return Err(Status::resource_exhausted(format!(
                "limit reached: more than {MAX_AUTH_FAILURES} failed authentications from {peer} within a minute; wait and check your token"
            )));
        }
        match auth::parse_bearer(header) {
            Ok(c) => Ok((c, peer)),
            Err(msg) => {
                tracing::warn!(peer = %peer, "authentication failed: {msg}");
                crate::metrics::auth_failed("malformed credential");
                self.failed(&peer);
                Err(Status::unauthenticated(msg))
            }
        }
    }

    fn failed(&self, peer: &str) {
        if let Ok(ip) = peer.parse() {
            self.failures.record_at(ip, Instant::now());
        }
    }

    /// A verified CI workload, or UNAUTHENTICATED (audited).
    async fn workload(&self, token: Token, peer: String) -> Result<WorkloadIdentity, Status> {
        let verifier = self.verifier.clone();
        let verified =
            tokio::task::spawn_blocking(move || verifier.verify_at(token.expose(), clock::now()))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "token verification task failed");
                    Status::internal("internal error")
                })?;
        match verified {
            Ok(wl) => Ok(wl),
            Err(rejected) => {
                tracing::warn!(peer = %peer, "ID token refused: {rejected}");
                self.failed(&peer);
                let reason = rejected.0.clone();
                self.blocking(move |a| a.record_auth_failure_at(&peer, &reason, clock::now()))
                    .await?;
                Err(Status::unauthenticated(format!(
                    "ID token refused: {rejected}"
                )))
            }
        }
    }

    /// The bearer token of a user (not a workload) and the peer address.
    fn user_token<T>(&self, req: &Request<T>) -> Result<(Token, String), Status> {
        match self.credential(req)? {
            (Credential::Token(t), peer) => Ok((t, peer)),
            (Credential::IdToken(_), _) => Err(Status::permission_denied(
                "workload ID tokens may only request certificates (moshca ci)",
            )),
        }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let credential = self.user_token(req)?;
        self.as_caller(credential, |_, caller| Ok(caller.clone()))
            .await
    }

    /// Authenticates and runs `f` as the caller, both in one blocking task (one thread
    /// hop per call instead of two). A caller refused too often within a minute is
    /// refused before `f` runs, so a flood of bad calls writes no audit rows.
    async fn as_caller<T: Send + 'static>(
        &self,
        (token, peer): (Token, String),
        f: impl FnOnce(&Authority, &Caller) -> Result<T, crate::authority::Error> + Send + 'static,
    ) -> Result<T, Status> {
        let p = peer.clone();
        let refusals = self.refusals.clone();
        let out = self
            .blocking(move |a| {
                let (caller, expires_at) = a.authenticate_token_at(&token, &p, clock::now())?;
                tracing::Span::current().record("caller", caller.name.as_str());
                if !refusals.allowed_at(caller.name.as_str(), Instant::now()) {
                    return Err(crate::authority::Error::ResourceExhausted(format!(
                        "limit reached: more than {} refused calls within a minute; wait a minute, then fix the call as the earlier errors said",
                        refusals.max()
                    )));
                }
                let out = f(a, &caller);
                if out.as_ref().is_err_and(crate::authority::Error::is_refusal) {
                    refusals.record_at(caller.name.clone(), Instant::now());
                }
                out.map(|out| (out, expires_at))
            })
            .await
            .map(|(out, expires_at)| {
                // Outside a `TokenExpiryHeader` (tests driving `Service` directly) there
                // is no header to set.
                let _ = TOKEN_EXPIRY.try_with(|c| c.set(expires_at));
                out
            });
        if let Err(s) = &out
            && s.code() == tonic::Code::Unauthenticated
        {
            tracing::warn!(reason = %log_reason(s), "authentication failed");
            self.failed(&peer);
        }
        out
    }
}

/// What the server log keeps of a refusal sent to a client: the reason, without the hint
/// for the user that follows it (after `; `), on one line.
fn log_reason(status: &Status) -> String {
    let message = status.message();
    text::one_line(message.split("; ").next().unwrap_or(message))
}

impl Service {
    /// The peer of a host call (no bearer token: a join token or a proof of possession),
    /// refused while it has failed too often within a minute.
    fn host_peer<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let ip = req.remote_addr().map(|a| a.ip());
        let peer = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if let Some(ip) = ip
            && !self.failures.allowed_at(&ip, Instant::now())
        {
            tracing::warn!(peer = %peer, "host call refused: too many failures");
            return Err(Status::resource_exhausted(format!(
                "limit reached: more than {MAX_AUTH_FAILURES} refused host calls from {peer} within a minute; wait a minute, then fix the call as the earlier errors said"
            )));
        }
        Ok(peer)
    }

    /// The peer of a sign-in (no bearer token yet), refused while it has failed to
    /// authenticate too often within a minute.
    fn sign_in_peer<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let ip = req.remote_addr().map(|a| a.ip());
        let peer = ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if let Some(ip) = ip
            && !self.failures.allowed_at(&ip, Instant::now())
        {
            tracing::warn!(peer = %peer, "sign-in refused: too many failures");
            return Err(Status::resource_exhausted(format!(
                "limit reached: more than {MAX_AUTH_FAILURES} failed authentications from {peer} within a minute; wait a minute, then sign in again"
            )));
        }
        Ok(peer)
    }

    /// Every refused host call counts against its peer: each one writes an audit row, and
    /// nobody is authenticated before it.
    fn host_outcome<T>(&self, outcome: Result<T, Status>, peer: &str) -> Result<T, Status> {
        if let Err(s) = &outcome
            && !matches!(s.code(), tonic::Code::Internal | tonic::Code::Unavailable)
        {
            self.failed(peer);
        }
        outcome
    }
}

fn check_id(id: &str) -> Result<String, Status> {
    if id.is_empty()
        || id.len() > text::MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Status::invalid_argument(
            "request id must be the id printed by `moshca login` or `moshca request`",
        ));
    }
    Ok(id.to_owned())
}

fn ttl(secs: u64) -> Option<u64> {
    (secs != 0).then_some(secs)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::AccessRequest, Status>> + Send>>;

type KrlStream = Pin<Box<dyn Stream<Item = Result<pb::KrlChunk, Status>> + Send>>;

/// Most KRL bytes in one `StreamKrl` message.
pub const KRL_CHUNK_BYTES: usize = 1024 * 1024;

/// One built KRL as a stream of chunks, each cut from the same bytes as it is sent.
fn krl_chunks(krl: Vec<u8>, version: u64) -> KrlStream {
    let krl = Arc::new(krl);
    let total_len = krl.len() as u64;
    let offsets = (0..krl.len()).step_by(KRL_CHUNK_BYTES);
    Box::pin(tokio_stream::iter(offsets.map(move |offset| {
        let end = (offset + KRL_CHUNK_BYTES).min(krl.len());
        Ok(pb::KrlChunk {
            version,
            total_len,
            offset: offset as u64,
            data: krl[offset..end].to_vec(),
        })
    })))
}

#[tonic::async_trait]
impl CertificateAuthority for Service {
    async fn get_ca_public_keys(
        &self,
        _req: Request<pb::GetCaPublicKeysRequest>,
    ) -> Result<Response<pb::GetCaPublicKeysResponse>, Status> {
        let (keys, host_keys) = self
            .blocking(|a| {
                let now = clock::now();
                Ok((a.ca_public_keys_at(now)?, a.host_ca_public_keys_at(now)?))
            })
            .await?;
        let public_keys: Vec<String> = keys.iter().filter_map(|k| k.to_openssh().ok()).collect();
        Ok(Response::new(pb::GetCaPublicKeysResponse {
            keys: convert::typed_ca_keys(&public_keys, &host_keys),
            public_keys,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn enroll_host(
        &self,
        req: Request<pb::EnrollHostRequest>,
    ) -> Result<Response<pb::HostCertificate>, Status> {
        let peer = self.host_peer(&req)?;
        let m = req.into_inner();
        let (token, public_key, principals) = convert::enroll_host(m)?;
        let p = peer.clone();
        let issued = self
            .blocking(move |a| a.enroll_host_at(&token, &public_key, &principals, &p, clock::now()))
            .await;
        self.host_outcome(issued, &peer)
            .map(|c| Response::new(convert::host_certificate(c)))
    }

    async fn get_host_challenge(
        &self,
        req: Request<pb::GetHostChallengeRequest>,
    ) -> Result<Response<pb::HostChallenge>, Status> {
        let peer = self.host_peer(&req)?;
        let m = req.into_inner();
        text::bounded("certificate", &m.certificate, 2 * text::MAX_PUBLIC_KEY_LEN)
            .map_err(Status::invalid_argument)?;
        let p = peer.clone();
        let answer = self
            .blocking(move |a| a.host_challenge_at(&m.certificate, &p, clock::now()))
            .await;
        self.host_outcome(answer, &peer).map(|(nonce, expires_at)| {
            Response::new(pb::HostChallenge {
                nonce,
                expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
                namespace: crate::authority::HOST_RENEW_NAMESPACE.to_owned(),
            })
        })
    }

    async fn renew_host(
        &self,
        req: Request<pb::RenewHostRequest>,
    ) -> Result<Response<pb::HostCertificate>, Status> {
        let peer = self.host_peer(&req)?;
        let m = req.into_inner();
        for (field, value, max) in [
            ("certificate", &m.certificate, 2 * text::MAX_PUBLIC_KEY_LEN),
            ("nonce", &m.nonce, 128),
            ("signature", &m.signature, 2 * text::MAX_PUBLIC_KEY_LEN),
        ] {
            text::bounded(field, value, max).map_err(Status::invalid_argument)?;
        }
        let p = peer.clone();
        let issued = self
            .blocking(move |a| {
                a.renew_host_at(&m.certificate, &m.nonce, &m.signature, &p, clock::now())
            })
            .await;
        self.host_outcome(issued, &peer)
            .map(|c| Response::new(convert::host_certificate(c)))
    }

    async fn get_sign_in_info(
        &self,
        _req: Request<pb::GetSignInInfoRequest>,
    ) -> Result<Response<pb::SignInInfo>, Status> {
        let Some(sso) = self.authority.sso() else {
            return Ok(Response::new(pb::SignInInfo::default()));
        };
        let c = sso.config();
        Ok(Response::new(pb::SignInInfo {
            enabled: true,
            issuer: c.issuer.clone(),
            client_id: c.client_id.clone(),
            scopes: c.scopes.clone(),
            session_ttl_seconds: c.session_ttl,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        // Refused sign-ins count against the peer like failed authentications.
        let peer = self.sign_in_peer(&req)?;
        let m = req.into_inner();
        let id_token = Token::from_presented(&m.id_token);
        if m.id_token.is_empty() || m.id_token.len() > crate::oidc::MAX_TOKEN_LEN {
            self.failed(&peer);
            return Err(Status::invalid_argument(format!(
                "id_token must be 1 to {} bytes: the ID token from the identity provider",
                crate::oidc::MAX_TOKEN_LEN
            )));
        }
        text::bounded("nonce", &m.nonce, crate::sso::MAX_NONCE_LEN)
            .map_err(Status::invalid_argument)?;
        let p = peer.clone();
        let created = self
            .blocking(move |a| a.create_session_at(&id_token, &m.nonce, &p, clock::now()))
            .await;
        if let Err(s) = &created
            && s.code() == tonic::Code::Unauthenticated
        {
            self.failed(&peer);
        }
        let created = created?;
        tracing::Span::current().record("caller", created.session.user.as_str());
        let s = created.session;
        Ok(Response::new(pb::Session {
            token: created.token.expose().to_owned(),
            id: s.id,
            user: s.user,
            groups: s.groups,
            expires_at: i64::try_from(s.expires_at).unwrap_or(i64::MAX),
            issuer: s.issuer,
        }))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn delete_session(
        &self,
        req: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let credential = self.user_token(&req)?;
        let id = self
            .as_caller(credential, |a, caller| {
                a.end_session_at(caller, clock::now())
            })
            .await?;
        Ok(Response::new(pb::DeleteSessionResponse { id }))
    }

    #[tracing::instrument(skip_all, fields(caller, role, request_id))]
    async fn create_access_request(
        &self,
        req: Request<pb::CreateAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        if let (Credential::IdToken(jwt), peer) = self.credential(&req)? {
            let wl = self.workload(jwt, peer).await?;
            tracing::Span::current().record("caller", wl.subject.as_str());
            let m = req.into_inner();
            tracing::Span::current().record("role", text::shown(&m.role).as_str());
            if m.break_glass {
                return Err(Status::permission_denied(
                    "workloads cannot use break-glass",
                ));
            }
            let new = convert::new_request(m)?;
            let view = self
                .blocking(move |a| a.create_workload_request_at(&wl, new, clock::now()))
                .await
                .inspect_err(|s| tracing::warn!(code = ?s.code(), reason = %log_reason(s), "workload request refused"))?;
            tracing::Span::current().record("request_id", view.request.id.as_str());
            return Ok(Response::new(convert::request(view)));
        }
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        tracing::Span::current().record("role", text::shown(&m.role).as_str());
        let view = self
            .as_caller(credential, move |a, caller| {
                let new = convert::new_request(m)?;
                a.create_request_at(caller, new, clock::now())
            })
            .await
            .inspect_err(
                |s| tracing::warn!(code = ?s.code(), reason = %log_reason(s), "request refused"),
            )?;
        tracing::Span::current().record("request_id", view.request.id.as_str());
        let break_glass = view.request.break_glass;
        let mut answer = convert::request(view);
        if break_glass {
            answer.notified = self.break_glass_hooks.clone();
        }
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, fields(caller, request_id))]
    async fn get_access_request(
        &self,
        req: Request<pb::GetAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        let id = check_id(&m.id)?;
        tracing::Span::current().record("request_id", id.as_str());
        let view = self
            .as_caller(credential, move |a, caller| {
                a.get_request(caller, &id, m.include_certificate)
            })
            .await?;
        Ok(Response::new(convert::request(view)))
    }

    type WatchAccessRequestStream = WatchStream;

    #[tracing::instrument(skip_all, fields(caller, request_id))]
    async fn watch_access_request(
        &self,
        req: Request<pb::WatchAccessRequestRequest>,
    ) -> Result<Response<Self::WatchAccessRequestStream>, Status> {
        let caller = self.caller(&req).await?;
        let m = req.into_inner();
        let id = check_id(&m.id)?;
        tracing::Span::current().record("request_id", id.as_str());
        // Watch before the first read so no change between the two is missed.
        let watch = self.authority.watch(&id);
        let (c, i, inc) = (caller.clone(), id.clone(), m.include_certificate);
        let first = self.blocking(move |a| a.get_request(&c, &i, inc)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(
            async move {
                let mut current = first;
                loop {
                    let terminal = current.request.state.is_terminal();
                    if tx.send(Ok(convert::request(current))).await.is_err() || terminal {
                        return;
                    }
                    // Wake on a change of this request, or re-read every few seconds anyway.
                    tokio::select! {
                        () = watch.changed() => {}
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = tx.closed() => return,
                        _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                            let _ = tx
                                .send(Err(Status::unavailable(
                                    "server is shutting down; watch again when it is back",
                                )))
                                .await;
                            return;
                        }
                    }
                    let (c, i) = (caller.clone(), id.clone());
                    current = match service.blocking(move |a| a.get_request(&c, &i, inc)).await {
                        Ok(v) => v,
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    };
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn list_access_requests(
        &self,
        req: Request<pb::ListAccessRequestsRequest>,
    ) -> Result<Response<pb::ListAccessRequestsResponse>, Status> {
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        let views = self
            .as_caller(credential, move |a, caller| {
                a.list_requests(
                    caller,
                    m.pending_only,
                    m.mine_only,
                    m.unreviewed_only,
                    m.limit,
                )
            })
            .await?;
        Ok(Response::new(pb::ListAccessRequestsResponse {
            requests: views.into_iter().map(convert::request).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(caller, request_id))]
    async fn review_access_request(
        &self,
        req: Request<pb::ReviewAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        let id = check_id(&m.id)?;
        tracing::Span::current().record("request_id", id.as_str());
        let verdict = convert::verdict(m.decision)?;
        let view = self
            .as_caller(credential, move |a, caller| {
                a.review_at(
                    caller,
                    &id,
                    verdict,
                    ttl(m.ttl_secs),
                    &m.comment,
                    clock::now(),
                )
            })
            .await?;
        Ok(Response::new(convert::request(view)))
    }

    #[tracing::instrument(skip_all, fields(caller, request_id))]
    async fn cancel_access_request(
        &self,
        req: Request<pb::CancelAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let credential = self.user_token(&req)?;
        let id = check_id(&req.into_inner().id)?;
        tracing::Span::current().record("request_id", id.as_str());
        let view = self
            .as_caller(credential, move |a, caller| {
                a.cancel_at(caller, &id, clock::now())
            })
            .await?;
        Ok(Response::new(convert::request(view)))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let credential = self.user_token(&req)?;
        let (caller, session) = self
            .as_caller(credential, |a, caller| {
                Ok((caller.clone(), a.session_of(caller)?))
            })
            .await?;
        let (requestable_roles, approvable_roles) = self.authority.roles_of(&caller);
        let mut answer = pb::WhoAmIResponse {
            name: caller.name,
            groups: caller.groups,
            requestable_roles,
            approvable_roles,
            credential: "token".into(),
            ..Default::default()
        };
        if let Some(s) = session {
            answer.credential = "session".into();
            answer.session_id = s.id;
            answer.session_expires_at = i64::try_from(s.expires_at).unwrap_or(i64::MAX);
            answer.session_issuer = s.issuer;
        }
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn revoke_certificates(
        &self,
        req: Request<pb::RevokeCertificatesRequest>,
    ) -> Result<Response<pb::RevokeCertificatesResponse>, Status> {
        use pb::revoke_certificates_request::Target;
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        let target = match m.target {
            Some(Target::Serial(s)) if s != 0 => RevokeTarget::Serial(s),
            Some(Target::RequestId(id)) => RevokeTarget::Request(check_id(&id)?),
            Some(Target::User(u)) if crate::policy::valid_name(&u) => RevokeTarget::User(u),
            Some(Target::PublicKey(k)) if k.len() <= crate::signer::MAX_SUBJECT_KEY_LEN => {
                RevokeTarget::PublicKey(k)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name what to revoke: --serial N, --request ID, --user NAME or --public-key FILE",
                ));
            }
        };
        let revoked = self
            .as_caller(credential, move |a, caller| {
                a.revoke_at(caller, target, &m.reason, clock::now())
            })
            .await?;
        Ok(Response::new(pb::RevokeCertificatesResponse {
            serials: revoked.serials,
            krl_version: revoked.krl_version,
        }))
    }

    async fn get_krl(
        &self,
        _req: Request<pb::GetKrlRequest>,
    ) -> Result<Response<pb::GetKrlResponse>, Status> {
        let (krl, version) = self.blocking(|a| a.krl_at(clock::now())).await?;
        // Room for the message's own framing; past that the answer would be cut off by
        // the transport with a message that does not say what to do.
        if krl.len() > MAX_RESPONSE_BYTES - 1024 {
            tracing::warn!(
                bytes = krl.len(),
                krl_version = version,
                "KRL too large for GetKrl"
            );
            return Err(Status::resource_exhausted(format!(
                "the KRL (version {version}) is {} bytes, more than one GetKrl answer carries; \
                 upgrade moshca, which fetches it in chunks with StreamKrl",
                krl.len()
            )));
        }
        Ok(Response::new(pb::GetKrlResponse { krl, version }))
    }

    type StreamKrlStream = KrlStream;

    async fn stream_krl(
        &self,
        _req: Request<pb::GetKrlRequest>,
    ) -> Result<Response<Self::StreamKrlStream>, Status> {
        let (krl, version) = self.blocking(|a| a.krl_at(clock::now())).await?;
        Ok(Response::new(krl_chunks(krl, version)))
    }

    #[tracing::instrument(skip_all, fields(caller, request_id))]
    async fn review_break_glass(
        &self,
        req: Request<pb::ReviewBreakGlassRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        let id = check_id(&m.id)?;
        tracing::Span::current().record("request_id", id.as_str());
        let view = self
            .as_caller(credential, move |a, caller| {
                a.review_break_glass_at(caller, &id, &m.comment, clock::now())
            })
            .await?;
        Ok(Response::new(convert::request(view)))
    }

    #[tracing::instrument(skip_all, fields(caller))]
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let credential = self.user_token(&req)?;
        let m = req.into_inner();
        text::bounded("user", &m.user, text::MAX_NAME_LEN).map_err(Status::invalid_argument)?;
        let request_id = if m.request_id.is_empty() {
            None
        } else {
            Some(check_id(&m.request_id)?)
        };
        let user = (!m.user.is_empty()).then_some(m.user);
        let since = u64::try_from(m.since).unwrap_or(0);
        let rows = self
            .as_caller(credential, move |a, caller| {
                a.audit_events(
                    caller,
                    user.as_deref(),
                    request_id.as_deref(),
                    since,
                    m.limit,
                )
            })
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows.into_iter().map(convert::audit_event).collect(),
        }))
    }
}
