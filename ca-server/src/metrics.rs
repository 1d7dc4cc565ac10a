//! Prometheus metrics: the one registry, every metric's name and labels, and the optional
//! `/metrics` listener (`metrics_listen` in config.toml).
//!
//! The few places that already see an event call one function here (`issued`,
//! `reviewed`, `refused` ...); nothing else knows a metric's name. Label values come from
//! small fixed sets, or from the policy's role names (anything else is `other`), so the
//! number of series stays bounded whatever callers send. Never a token, a user name, a
//! request id or a reason text: none of them is a label value anywhere.
//!
//! The registry is process-wide: one server per process, and counters are cheap atomics
//! that need no threading through the layers. This module must not decide anything: a
//! failed scrape or a full registry never refuses a call.

use std::borrow::Cow;
use std::cell::Cell;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::policy::Policy;

/// The path that produced a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// An auto-approved role, issued at once.
    Auto,
    /// Issued when the last required approval came in.
    Approval,
    /// Break-glass: issued at once, reviewed afterwards.
    BreakGlass,
    /// A CI workload with an OIDC ID token.
    Workload,
    /// A host certificate (enrolment or renewal).
    Host,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Auto => "auto",
            Path::Approval => "approval",
            Path::BreakGlass => "break_glass",
            Path::Workload => "workload",
            Path::Host => "host",
        }
    }
}

/// Label value of a role outside the policy. Host certificates, which have no role,
/// carry an empty role.
pub const OTHER_ROLE: &str = "other";

type OneLabel = [(&'static str, &'static str); 1];
type RoleAndPath = [(&'static str, Cow<'static, str>); 2];
type HistogramFamily = Family<OneLabel, Histogram, fn() -> Histogram>;

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    issued: Family<RoleAndPath, Counter>,
    issuance_seconds: HistogramFamily,
    pending: Gauge,
    reviews: Family<OneLabel, Counter>,
    refusals: Family<OneLabel, Counter>,
    auth_failures: Family<OneLabel, Counter>,
    krl_version: Gauge,
    krl_build_seconds: Histogram,
    webhook_deliveries: Family<OneLabel, Counter>,
    webhook_drops: Counter,
    store_commit_errors: Counter,
    store_batch_size: Histogram,
    store_retries: Counter,
    store_connects: Family<OneLabel, Counter>,
    store_readers_busy: Gauge,
}

fn latency_histogram() -> Histogram {
    // An issuance takes milliseconds; seconds mean trouble.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            issued: Family::default(),
            issuance_seconds: Family::new_with_constructor(latency_histogram),
            pending: Gauge::default(),
            reviews: Family::default(),
            refusals: Family::default(),
            auth_failures: Family::default(),
            krl_version: Gauge::default(),
            krl_build_seconds: latency_histogram(),
            webhook_deliveries: Family::default(),
            webhook_drops: Counter::default(),
            store_commit_errors: Counter::default(),
            // 1 .. 512 writers: the group commit's bound (`MAX_BATCH` in the store).
            store_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_retries: Counter::default(),
            store_connects: Family::default(),
            store_readers_busy: Gauge::default(),
        };
        let mut r = m.registry;
        // Counters are registered without `_total`; the encoder appends it.
        r.register(
            "moshca_certificates_issued",
            "Certificates issued, by role (policy roles, else other; empty for hosts) and path (auto, approval, break_glass, workload, host)",
            m.issued.clone(),
        );
        r.register(
            "moshca_issuance_duration_seconds",
            "Time from the call arriving to its certificate committed, by path",
            m.issuance_seconds.clone(),
        );
        r.register(
            "moshca_requests_pending",
            "Access requests waiting for approval (read at scrape time)",
            m.pending.clone(),
        );
        r.register(
            "moshca_reviews",
            "Reviews recorded, by decision (approve, deny, break_glass_review)",
            m.reviews.clone(),
        );
        r.register(
            "moshca_refusals",
            "Calls answered with an error, by reason (the gRPC status)",
            m.refusals.clone(),
        );
        r.register(
            "moshca_auth_failures",
            "Failed authentications, by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "moshca_krl_version",
            "Current KRL version (read at scrape time)",
            m.krl_version.clone(),
        );
        r.register(
            "moshca_krl_build_duration_seconds",
            "Time to build the KRL from the store",
            m.krl_build_seconds.clone(),
        );
        r.register(
            "moshca_webhook_deliveries",
            "Webhook delivery attempts, by outcome (ok, failed)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "moshca_webhook_drops",
            "Notifications dropped after their last delivery attempt",
            m.webhook_drops.clone(),
        );
        r.register(
            "moshca_store_commit_errors",
            "Store batches that could not begin or commit (nothing of them is stored)",
            m.store_commit_errors.clone(),
        );
        r.register(
            "moshca_store_write_batch_size",
            "Writers per store commit (group commit); stands in for pool use",
            m.store_batch_size.clone(),
        );
        r.register(
            "moshca_store_retries",
            "Store transactions begun again after the database was unavailable (a lost connection, a failover)",
            m.store_retries.clone(),
        );
        r.register(
            "moshca_store_connects",
            "Connections opened to PostgreSQL, by outcome (ok, failed)",
            m.store_connects.clone(),
        );
        r.register(
            "moshca_store_readers_busy",
            "Store reader connections in use now (of 3; the writer is one more)",
            m.store_readers_busy.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    fn issued(&self, role: Cow<'static, str>, path: Path, started: Option<Instant>) {
        self.issued
            .get_or_create(&[("role", role), ("path", Cow::Borrowed(path.label()))])
            .inc();
        if let Some(started) = started {
            self.issuance_seconds
                .get_or_create(&[("path", path.label())])
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// The label value for `role`: its name when the policy has it, else [`OTHER_ROLE`].
pub(crate) fn role_label(policy: &Policy, role: &str) -> Cow<'static, str> {
    match policy.role(role) {
        Some(r) => Cow::Owned(r.name.clone()),
        None => Cow::Borrowed(OTHER_ROLE),
    }
}

tokio::task_local! {
    /// When the gRPC call being handled arrived (set by [`Observed`]).
    static CALL_STARTED: Instant;
}

thread_local! {
    /// The arrival of the call a blocking thread is working for (set by [`in_call`]).
    static BLOCKING_CALL_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When the current gRPC call arrived, if this runs inside one.
pub(crate) fn call_started() -> Option<Instant> {
    CALL_STARTED.try_with(|s| *s).ok()
}

/// Runs `f` (on a blocking thread) as part of the call that arrived at `started`, so an
/// issuance inside it is timed from the call's arrival.
pub(crate) fn in_call<T>(started: Option<Instant>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCKING_CALL_STARTED.set(self.0);
        }
    }
    let _restore = Restore(BLOCKING_CALL_STARTED.replace(started));
    f()
}

/// A certificate was issued and committed: counted, and timed from the call's arrival.
pub(crate) fn issued(role: Cow<'static, str>, path: Path) {
    let started = BLOCKING_CALL_STARTED.get();
    global().issued(role, path, started);
}

/// Review decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// An approval (whether or not it was the last one needed).
    Approve,
    /// A denial.
    Deny,
    /// A break-glass certificate reviewed after the fact.
    BreakGlassReview,
}

/// A review was recorded.
pub(crate) fn reviewed(decision: Decision) {
    let label = match decision {
        Decision::Approve => "approve",
        Decision::Deny => "deny",
        Decision::BreakGlassReview => "break_glass_review",
    };
    global().reviews.get_or_create(&[("decision", label)]).inc();
}

/// The refusal reason of a gRPC status code: one of a fixed set.
pub(crate) fn refusal_reason(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::InvalidArgument | C::OutOfRange => "invalid_argument",
        C::Unauthenticated => "unauthenticated",
        C::PermissionDenied => "permission_denied",
        C::FailedPrecondition | C::Aborted => "failed_precondition",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::ResourceExhausted => "limit_reached",
        C::Unavailable => "unavailable",
        C::DeadlineExceeded | C::Cancelled => "cancelled",
        C::Unimplemented => "unimplemented",
        C::Internal | C::DataLoss | C::Unknown => "internal",
        C::Ok => "ok",
    }
}

/// The reason label of a failed authentication, from the audited reason: one of a fixed
/// set (an ID token's own refusal text is never a label).
fn auth_failure_reason(reason: &str) -> &'static str {
    match reason {
        "unknown token" => "unknown_token",
        "revoked token" => "revoked_token",
        "disabled user" => "disabled_user",
        "expired token" => "expired_token",
        "malformed credential" => "malformed_credential",
        "unknown session" => "unknown_session",
        "ended session" => "ended_session",
        "expired session" => "expired_session",
        _ => "id_token_refused",
    }
}

/// An authentication failed; `reason` is the audited reason.
pub(crate) fn auth_failed(reason: &str) {
    global()
        .auth_failures
        .get_or_create(&[("reason", auth_failure_reason(reason))])
        .inc();
}

/// Builds the KRL with `f`, timing it.
pub(crate) fn time_krl_build<T>(f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    global()
        .krl_build_seconds
        .observe(started.elapsed().as_secs_f64());
    out
}

/// One webhook delivery attempt ended.
pub(crate) fn webhook_delivery(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    global()
        .webhook_deliveries
        .get_or_create(&[("outcome", outcome)])
        .inc();
}

/// A notification was dropped after its last attempt.
pub(crate) fn webhook_dropped() {
    global().webhook_drops.inc();
}

/// A store batch of `writers` ended; `committed` is false when it could not commit.
pub(crate) fn store_batch(writers: usize, committed: bool) {
    let m = global();
    m.store_batch_size.observe(writers as f64);
    if !committed {
        m.store_commit_errors.inc();
    }
}

/// A store transaction is begun again after the database was unavailable.
pub(crate) fn store_retry() {
    global().store_retries.inc();
}

/// A connection to PostgreSQL was opened, or failed to open.
pub(crate) fn store_connect(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    global()
        .store_connects
        .get_or_create(&[("outcome", outcome)])
        .inc();
}

/// A store reader connection was taken (`true`) or given back.
pub(crate) fn store_reader(taken: bool) {
    let g = &global().store_readers_busy;
    if taken {
        g.inc();
    } else {
        g.dec();
    }
}

/// A store batch could not even begin.
pub(crate) fn store_begin_failed() {
    global().store_commit_errors.inc();
}

/// Wraps the gRPC service: notes when each call arrived (for the issuance latency) and
/// counts every error answer by its status code. One place for every handler.
#[derive(Debug, Clone)]
pub(crate) struct Observed<S>(pub(crate) S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for Observed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Observed<S>
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
        let started = Instant::now();
        let inner = self.0.call(req);
        Box::pin(CALL_STARTED.scope(started, async move {
            let response = inner.await?;
            // An error answered at once travels in the headers ("trailers-only"); errors
            // in the middle of a stream are not counted.
            if let Some(code) = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(tonic::Code::from)
                && code != tonic::Code::Ok
            {
                global()
                    .refusals
                    .get_or_create(&[("reason", refusal_reason(code))])
                    .inc();
            }
            Ok(response)
        }))
    }
}

/// Most scrapes served at once; more connections wait in the kernel's backlog.
const MAX_SCRAPES: usize = 8;

/// What the gauges read at each scrape: (pending requests, KRL version), from a blocking
/// thread.
pub type Gauges = Arc<dyn Fn() -> anyhow::Result<(u64, u64)> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the task is dropped. Plain HTTP/1.1: bind it
/// to loopback or a monitoring network. The pending count and KRL version are read with
/// `gauges` (the store, in the server) at each scrape.
pub async fn serve(listener: TcpListener, gauges: Gauges) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let gauges = gauges.clone();
                async move { Ok::<_, Infallible>(respond(&req, gauges).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            drop(slot);
        });
    }
}

async fn respond<B>(req: &hyper::Request<B>, gauges: Gauges) -> hyper::Response<Full<Bytes>> {
    let answer = |status: u16, body: String| {
        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::NOT_FOUND);
        response
    };
    if req.uri().path() != "/metrics" {
        return answer(404, "not found; metrics are at GET /metrics\n".into());
    }
    if req.method() != hyper::Method::GET {
        return answer(405, "use GET /metrics\n".into());
    }
    let read = tokio::task::spawn_blocking(move || gauges()).await;
    let m = global();
    match read {
        Ok(Ok((pending, krl_version))) => {
            m.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
            m.krl_version
                .set(i64::try_from(krl_version).unwrap_or(i64::MAX));
        }
        // The counters are still worth serving; the gauges keep their last value.
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: reading the store failed"),
        Err(e) => tracing::warn!(error = %e, "metrics: store read task failed"),
    }
    let mut response = answer(200, m.render());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_metric_with_bounded_labels() {
        let m = Metrics::new();
        m.issued(Cow::Borrowed("deploy"), Path::Auto, Some(Instant::now()));
        m.issued(Cow::Borrowed(OTHER_ROLE), Path::Approval, None);
        m.reviews.get_or_create(&[("decision", "approve")]).inc();
        m.refusals
            .get_or_create(&[("reason", refusal_reason(tonic::Code::PermissionDenied))])
            .inc();
        m.auth_failures
            .get_or_create(&[("reason", auth_failure_reason("ID token expired at 12"))])
            .inc();
        m.webhook_deliveries
            .get_or_create(&[("outcome", "ok")])
            .inc();
        m.store_batch_size.observe(3.0);
        m.pending.set(2);
        m.krl_version.set(7);
        let text = m.render();
        for line in [
            "# TYPE moshca_certificates_issued_total counter",
            "moshca_certificates_issued_total{role=\"deploy\",path=\"auto\"} 1",
            "moshca_certificates_issued_total{role=\"other\",path=\"approval\"} 1",
            "# TYPE moshca_issuance_duration_seconds histogram",
            "moshca_issuance_duration_seconds_count{path=\"auto\"} 1",
            "moshca_issuance_duration_seconds_bucket{path=\"auto\",le=\"+Inf\"} 1",
            "moshca_requests_pending 2",
            "moshca_reviews_total{decision=\"approve\"} 1",
            "moshca_refusals_total{reason=\"permission_denied\"} 1",
            "moshca_auth_failures_total{reason=\"id_token_refused\"} 1",
            "moshca_krl_version 7",
            "# TYPE moshca_krl_build_duration_seconds histogram",
            "moshca_webhook_deliveries_total{outcome=\"ok\"} 1",
            "moshca_webhook_drops_total 0",
            "moshca_store_commit_errors_total 0",
            "moshca_store_write_batch_size_count 1",
            "moshca_store_write_batch_size_sum 3.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // The approval path was not timed (no call), so it has no histogram series.
        assert!(!text.contains("path=\"approval\"} 0"), "{text}");
    }

    #[test]
    fn refusal_and_auth_reasons_are_a_fixed_set() {
        let reasons: std::collections::BTreeSet<_> = (0..=20)
            .map(|c| refusal_reason(tonic::Code::from(c)))
            .collect();
        assert!(reasons.len() <= 12, "{reasons:?}");
        // Free text never becomes a label value.
        assert_eq!(
            auth_failure_reason("token abc123 was revoked"),
            "id_token_refused"
        );
        assert_eq!(auth_failure_reason("revoked token"), "revoked_token");
        assert_eq!(auth_failure_reason("ended session"), "ended_session");
        assert_eq!(auth_failure_reason("expired session"), "expired_session");
        assert_eq!(auth_failure_reason("unknown session"), "unknown_session");
    }

    #[test]
    fn metrics_listen_is_optional_and_checked() {
        use crate::config::Config;
        let dir = std::path::Path::new("/srv/moshca");
        let off = Config::parse("", dir).expect("an empty config is valid");
        assert_eq!(off.metrics_listen, None);
        let on = Config::parse("metrics_listen = \"127.0.0.1:9464\"\n", dir).expect("valid");
        assert_eq!(on.metrics_listen, Some(([127, 0, 0, 1], 9464).into()));
        let bad = Config::parse("metrics_listen = \"localhost\"\n", dir).unwrap_err();
        assert!(
            bad.errors
                .iter()
                .any(|e| e.contains("metrics_listen: expected ADDRESS:PORT")),
            "{bad}"
        );
    }

    #[test]
    fn in_call_restores_the_previous_start_even_on_panic() {
        let t = Instant::now();
        let caught = std::panic::catch_unwind(|| in_call(Some(t), || panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(BLOCKING_CALL_STARTED.get(), None);
        assert_eq!(in_call(Some(t), || BLOCKING_CALL_STARTED.get()), Some(t));
    }
}
