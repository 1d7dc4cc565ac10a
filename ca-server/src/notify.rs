//! Notifications: delivers the notification outbox to webhooks, beside issuance.
//!
//! The store puts every audit event whose action is in [`store::NOTIFY_ACTIONS`] into the
//! outbox, in the transaction that records it. [`Notifier::run`] fans each outbox event
//! out to the webhooks that want it (one `deliveries` row each) and POSTs it, retrying
//! with exponential backoff; a notification that still fails after the webhook's
//! `max_attempts` is dropped, and the drop is audited (`notification.dropped`). All state
//! lives in the store, so nothing is lost on restart: a delivery in flight when the server
//! stops is simply sent again, and receivers dedupe on `X-Moshca-Delivery`.
//!
//! Must not: sit on an RPC's path, hold the store while waiting on the network, decide
//! anything about requests, or log a signing secret or more of a webhook URL than its
//! scheme and host (Slack URLs carry a token).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;

use crate::approvals::Request;
use crate::audit::{self, Event};
use crate::clock::{self, UnixTime};
use crate::config::{Webhook, WebhookFormat};
use crate::policy::fmt_secs;
use crate::store::{self, Store};

/// The actor of the server's own audit events.
const SERVER: &str = "moshca-server";

/// How the worker paces itself. The defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the outbox and due deliveries are polled; a recorded change also wakes
    /// the worker at once.
    pub tick: Duration,
    /// Delay after the first failed attempt, doubled after each further one.
    pub base_backoff: Duration,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
    /// Timeout of one POST, connecting included.
    pub timeout: Duration,
    /// Outbox events or deliveries handled per store transaction.
    pub batch: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_millis(500),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            batch: 64,
        }
    }
}

/// Delay before the next attempt after `tries` failed ones: `base`, `2 base`, `4 base`,
/// ..., never more than `max`.
pub fn backoff(tries: u32, base: Duration, max: Duration) -> Duration {
    let doublings = tries.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(max)
}

/// A webhook signing secret: redacted `Debug`, zeroized on drop.
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<Vec<u8>>);

impl Secret {
    /// A secret from bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(zeroize::Zeroizing::new(bytes))
    }

    /// Reads a secret file without its trailing newline, refusing one that others may read.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        Ok(Secret(crate::secret_file::read_secret_value(
            path,
            "webhook secret",
        )?))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The `X-Moshca-Signature` value for a body: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(&secret.0) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What the request row adds to an event's own details when the summary is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Who asked.
    pub requester: String,
    /// Role asked for.
    pub role: String,
    /// Principals asked for.
    pub principals: Vec<String>,
    /// Requested ttl.
    pub ttl_secs: u64,
    /// Why.
    pub reason: String,
    /// Issued through break-glass, without prior approval.
    pub break_glass: bool,
    /// Issued without approvers (an `auto` role or a CI workload).
    pub automatic: bool,
}

impl From<&Request> for RequestFacts {
    fn from(r: &Request) -> Self {
        RequestFacts {
            requester: r.requester.clone(),
            role: r.role.clone(),
            principals: r.principals.clone(),
            ttl_secs: r.ttl_secs,
            reason: r.reason.clone(),
            break_glass: r.break_glass,
            automatic: r.approvals_required == 0,
        }
    }
}

/// The body POSTed for audit event `row`; `request` describes its request, if it has one.
pub fn body(row: &audit::Row, request: Option<&RequestFacts>, format: WebhookFormat) -> Vec<u8> {
    let event = &row.event;
    let text = summary(event, request);
    let break_glass = event.action == "request.break_glass";
    let value = match format {
        WebhookFormat::Json => json!({
            // A string, as every 64-bit number moshca sends: readers that use doubles
            // round it above 2^53.
            "delivery": row.seq.to_string(),
            "action": event.action,
            "at": event.at,
            "actor": event.actor,
            "request_id": event.request_id,
            "details": event.details,
            "priority": if break_glass { "high" } else { "normal" },
            "text": text,
        }),
        WebhookFormat::Slack => {
            let text = slack_escape(&text);
            json!({
                "text": if break_glass {
                    format!(":rotating_light: BREAK-GLASS {text}")
                } else {
                    text
                }
            })
        }
    };
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A one-line human summary of an event: for approvers what to decide and the command to
/// do it, for requesters the outcome.
pub fn summary(event: &Event, request: Option<&RequestFacts>) -> String {
    let d = &event.details;
    let actor = event.actor.as_str();
    let id = event.request_id.as_deref().unwrap_or("-");
    let r = request.cloned().unwrap_or_default();
    let requester = if r.requester.is_empty() {
        actor
    } else {
        &r.requester
    };
    let role = str_at(d, "role").unwrap_or(&r.role);
    let principals = list_at(d, "principals").unwrap_or(r.principals.clone());
    let principals = principals.join(", ");
    let ttl = fmt_secs(
        d.get("ttl_secs")
            .and_then(Value::as_u64)
            .unwrap_or(r.ttl_secs),
    );
    let reason = str_at(d, "reason").unwrap_or(&r.reason);
    let line = match event.action.as_str() {
        "request.created" => {
            let key = str_at(d, "fingerprint")
                .map(|f| format!(", key {f}"))
                .unwrap_or_default();
            let asks = format!(
                "{actor} asks for role {role} as {principals} for {ttl}: \"{reason}\" (request {id}{key})"
            );
            if r.break_glass {
                format!("{asks}; break-glass: issued at once, review it with `moshca review {id}`")
            } else if r.automatic {
                format!("{asks}; approved automatically by policy")
            } else {
                format!(
                    "{asks}. Approve: `moshca approve {id}` · deny: `moshca deny {id} --reason TEXT`"
                )
            }
        }
        "request.break_glass" => format!(
            "{actor} used break-glass for role {role} as {principals} for {ttl}: \"{reason}\" (request {id}); a certificate was issued without approval, review it with `moshca review {id}`"
        ),
        "request.approved" => {
            let ttl = d
                .get("ttl_secs")
                .and_then(Value::as_u64)
                .map(|t| format!(", ttl shortened to {}", fmt_secs(t)))
                .unwrap_or_default();
            let comment = quoted(str_at(d, "comment"));
            format!("{actor} approved {requester}'s request {id} for role {role}{ttl}{comment}")
        }
        "request.denied" => format!(
            "{requester}: your request {id} for role {role} was denied by {actor}{}; nothing was issued",
            quoted(str_at(d, "reason"))
        ),
        "request.cancelled" => {
            let by = if actor == requester {
                String::new()
            } else {
                format!(" by {actor}")
            };
            format!(
                "{requester}: your request {id} for role {role} was cancelled{by}; nothing was issued"
            )
        }
        "request.expired" => format!(
            "{requester}: your request {id} for role {role} expired before it was approved; nothing was issued. Ask again with `moshca login --role {role}`"
        ),
        "certificate.issued" => {
            let serial = str_at(d, "serial").unwrap_or("?");
            let until = d
                .get("valid_before")
                .and_then(Value::as_u64)
                .map(|t| {
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t))
                        .to_string()
                })
                .unwrap_or_else(|| "?".into());
            format!(
                "{requester}: your request {id} for role {role} is granted: certificate {serial} for {principals}, valid until {until}; `moshca login` loads it, or `moshca fetch {id} --out FILE`"
            )
        }
        "request.reviewed" => format!(
            "{actor} reviewed break-glass request {id} of {requester} (role {role}){}",
            quoted(str_at(d, "comment"))
        ),
        "certificate.revoked" => {
            let serials = list_at(d, "serials").unwrap_or_default();
            let target = d
                .get("target")
                .and_then(Value::as_object)
                .and_then(|t| t.iter().next())
                .map(|(k, v)| format!(" ({k} {})", v.as_str().unwrap_or("?")))
                .unwrap_or_default();
            let krl = d
                .get("krl_version")
                .and_then(Value::as_u64)
                .map(|v| format!("; KRL version {v}"))
                .unwrap_or_default();
            format!(
                "{actor} revoked {} certificate(s){target}{}{krl}",
                serials.len(),
                quoted(str_at(d, "reason"))
            )
        }
        other => match &event.request_id {
            Some(id) => format!("{actor}: {other} (request {id})"),
            None => format!("{actor}: {other}"),
        },
    };
    // Reasons and comments are checked when they arrive, but a summary is one plain line
    // whatever a stored event holds: nothing invisible, nothing that reorders the text.
    line.chars()
        .map(|c| if crate::text::hidden(c) { ' ' } else { c })
        .collect()
}

fn str_at<'v>(details: &'v Value, key: &str) -> Option<&'v str> {
    details.get(key).and_then(Value::as_str)
}

fn list_at(details: &Value, key: &str) -> Option<Vec<String>> {
    details.get(key).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

fn quoted(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => format!(": \"{t}\""),
        _ => String::new(),
    }
}

/// Slack reads `<...>` as links and mentions (`<!channel>`); requesters write reasons.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A configured webhook with its secret loaded.
#[derive(Debug)]
struct Hook {
    webhook: Webhook,
    secret: Option<Secret>,
    /// Wakes its delivery task when new deliveries were fanned out.
    kick: Notify,
}

/// One notification on its way to one webhook.
#[derive(Debug, Clone)]
struct Outgoing {
    seq: u64,
    action: String,
    request_id: Option<String>,
    attempts: u32,
    body: Vec<u8>,
}

/// What became of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retry { at: UnixTime },
    Dropped,
}

/// Deliveries (audit seq, webhook) this process claimed and has not recorded yet.
#[derive(Debug, Clone)]
pub struct Claims {
    held: Arc<std::sync::Mutex<std::collections::BTreeSet<(u64, String)>>>,
    store: Arc<Store>,
}

impl Claims {
    fn hold(&self, seq: u64, webhook: &str) {
        self.lock().insert((seq, webhook.to_owned()));
    }

    fn done(&self, seq: u64, webhook: &str) {
        self.lock().remove(&(seq, webhook.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<(u64, String)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back every claim not recorded (a delivery cut short by shutdown): due again at
    /// `now`. Blocks on the store; run it once the delivery tasks have stopped.
    pub fn release_at(&self, now: UnixTime) -> store::Result<usize> {
        let held: Vec<_> = std::mem::take(&mut *self.lock()).into_iter().collect();
        self.give_back(&held, now)?;
        Ok(held.len())
    }

    /// Gives back these claims (not attempted): due again at `now`. Blocks on the store.
    fn give_back(&self, claims: &[(u64, String)], now: UnixTime) -> store::Result<()> {
        if claims.is_empty() {
            return Ok(());
        }
        self.store.transact(|tx| {
            for (seq, webhook) in claims {
                tx.release_delivery(*seq, webhook, now)?;
            }
            Ok::<_, store::Error>(())
        })?;
        let mut held = self.lock();
        for claim in claims {
            held.remove(claim);
        }
        Ok(())
    }
}

/// Delivers notifications to the configured webhooks. `server::open` builds it and
/// `server::run` runs it beside the API.
#[derive(Debug)]
pub struct Notifier {
    store: Arc<Store>,
    hooks: Vec<Arc<Hook>>,
    /// Deliveries this process claimed and has not recorded yet: given back at shutdown
    /// so the next start (or another replica) sends them at once.
    claims: Claims,
    /// Pacing; tests shorten it.
    pub settings: Settings,
}

impl Notifier {
    /// A notifier for `webhooks` over `store`; reads their secret files.
    pub fn new(store: Arc<Store>, webhooks: &[Webhook]) -> anyhow::Result<Self> {
        let hooks = webhooks
            .iter()
            .map(|w| {
                let secret = w
                    .secret_file
                    .as_deref()
                    .map(Secret::read)
                    .transpose()
                    .with_context(|| format!("webhook {}", w.name))?;
                Ok(Arc::new(Hook {
                    webhook: w.clone(),
                    secret,
                    kick: Notify::new(),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Notifier {
            claims: Claims {
                held: Arc::default(),
                store: store.clone(),
            },
            store,
            hooks,
            settings: Settings::default(),
        })
    }

    /// A handle on this notifier's unfinished claims, to give them back at shutdown.
    pub fn claims(&self) -> Claims {
        self.claims.clone()
    }

    /// Names of the webhooks that receive events with `action`, in config order.
    pub fn subscribers(&self, action: &str) -> Vec<String> {
        self.hooks
            .iter()
            .filter(|h| h.webhook.events.iter().any(|e| e == action))
            .map(|h| h.webhook.name.clone())
            .collect()
    }

    /// Creates a delivery per interested webhook for every waiting outbox event, and marks
    /// the events fanned out (those no webhook wants, to nobody). Blocks on the store.
    /// Returns how many deliveries were created.
    pub fn fan_out_at(&self, now: UnixTime) -> store::Result<usize> {
        // A read first: the common case, nothing waiting, takes no write lock.
        if self.store.read(|tx| tx.outbox_waiting(1))?.is_empty() {
            return Ok(0);
        }
        let mut created = 0;
        loop {
            let (n, full) = self.store.transact(|tx| {
                let waiting = tx.outbox_waiting(self.settings.batch)?;
                let mut n = 0;
                for row in &waiting {
                    let names: Vec<String> = self
                        .hooks
                        .iter()
                        .filter(|h| h.webhook.events.contains(&row.event.action))
                        .map(|h| h.webhook.name.clone())
                        .collect();
                    n += names.len();
                    tx.fan_out(row.seq, &names, now)?;
                }
                Ok::<_, store::Error>((n, waiting.len() >= self.settings.batch as usize))
            })?;
            created += n;
            if !full {
                return Ok(created);
            }
        }
    }

    /// Claims the due deliveries of one webhook and makes their bodies. Blocks on the
    /// store. Claimed deliveries are this replica's to send until [`Self::lease`] has
    /// passed; any not attempted are given back with [`Self::release_at`].
    fn due_at(&self, hook: &Hook, now: UnixTime) -> store::Result<Vec<Outgoing>> {
        let lease_until = now + self.lease().as_secs();
        self.store.transact(|tx| {
            let due =
                tx.claim_deliveries_to(&hook.webhook.name, now, self.settings.batch, lease_until)?;
            for d in &due {
                self.claims.hold(d.event.seq, &hook.webhook.name);
            }
            due.into_iter()
                .map(|d| {
                    let request = match &d.event.event.request_id {
                        Some(id) => tx.request(id)?.as_ref().map(RequestFacts::from),
                        None => None,
                    };
                    Ok(Outgoing {
                        body: body(&d.event, request.as_ref(), hook.webhook.format),
                        seq: d.event.seq,
                        action: d.event.event.action,
                        request_id: d.event.event.request_id,
                        attempts: d.attempts,
                    })
                })
                .collect()
        })
    }

    /// How long claimed deliveries stay this replica's: long enough to send a whole batch
    /// at the POST timeout, so a slow webhook is never sent twice.
    fn lease(&self) -> Duration {
        (self.settings.timeout * (self.settings.batch + 1)).max(Duration::from_secs(60))
    }

    /// Gives back claimed deliveries that were not attempted: due again at `now`.
    fn release_at(&self, hook: &Hook, outs: &[Outgoing], now: UnixTime) -> store::Result<()> {
        let claims: Vec<_> = outs
            .iter()
            .map(|out| (out.seq, hook.webhook.name.clone()))
            .collect();
        self.claims.give_back(&claims, now)
    }

    /// Records an attempt: delivered, retry later, or dropped with an audit event. Blocks
    /// on the store.
    fn record_at(
        &self,
        hook: &Hook,
        out: &Outgoing,
        result: Result<(), String>,
        now: UnixTime,
    ) -> store::Result<Outcome> {
        let name = &hook.webhook.name;
        let outcome = self.store.transact(|tx| -> store::Result<Outcome> {
            let error = match result {
                Ok(()) => {
                    tx.delivery_attempted(out.seq, name, "delivered", now, None)?;
                    return Ok(Outcome::Delivered);
                }
                Err(e) => e,
            };
            let tries = out.attempts + 1;
            if tries < hook.webhook.max_attempts {
                let delay = backoff(tries, self.settings.base_backoff, self.settings.max_backoff);
                // next_at has whole seconds; round up so no retry comes early.
                let at = now + delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
                tx.delivery_attempted(out.seq, name, "pending", at, Some(&error))?;
                return Ok(Outcome::Retry { at });
            }
            tx.delivery_attempted(out.seq, name, "dropped", now, Some(&error))?;
            tx.append_audit(&Event::new(
                now,
                SERVER,
                "notification.dropped",
                out.request_id.as_deref(),
                json!({
                    "webhook": name,
                    "event_seq": out.seq,
                    "action": out.action,
                    "attempts": tries,
                    "error": error,
                }),
            ))?;
            Ok(Outcome::Dropped)
        })?;
        self.claims.done(out.seq, name);
        Ok(outcome)
    }

    /// Runs until aborted: one task fans the outbox out, one task per webhook delivers, so
    /// a slow or unreachable webhook holds up nobody else. `changes` (the authority's
    /// change feed) wakes it early; the tick catches everything else.
    pub async fn run(self, mut changes: broadcast::Receiver<String>) {
        let this = Arc::new(self);
        for hook in &this.hooks {
            let w = &hook.webhook;
            tracing::info!(
                webhook = %w.name,
                host = %w.origin(),
                events = w.events.len(),
                signed = hook.secret.is_some(),
                "notifying webhook"
            );
        }
        // Dropping the set (when this task is aborted) aborts the delivery tasks.
        let mut tasks = JoinSet::new();
        for hook in &this.hooks {
            tasks.spawn(deliver_loop(this.clone(), hook.clone()));
        }
        let mut tick = tokio::time::interval(this.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut feed_open = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // With no webhook, changes queue nothing here; only the tick clears the
                // outbox rows other processes (the admin commands) may have left.
                got = changes.recv(), if feed_open && !this.hooks.is_empty() => {
                    feed_open = !matches!(got, Err(broadcast::error::RecvError::Closed));
                    // One fan-out covers every change that arrived meanwhile.
                    while changes.try_recv().is_ok() {}
                }
            }
            let n = this.clone();
            match blocking(move || n.fan_out_at(clock::now())).await {
                Ok(0) => {}
                Ok(_) => this.hooks.iter().for_each(|h| h.kick.notify_one()),
                Err(e) => tracing::error!(error = %e, "fanning out notifications failed"),
            }
        }
    }
}

/// One webhook's delivery task: on each tick or kick, sends what is due, oldest first.
async fn deliver_loop(this: Arc<Notifier>, hook: Arc<Hook>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(this.settings.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("moshca-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(this.settings.tick) => {}
            _ = hook.kick.notified() => {}
        }
        deliver_due(&this, &hook, &agent).await;
    }
}

/// Sends due deliveries until none is left or one fails; after a failure the rest wait
/// for the next tick, so an unreachable webhook costs one attempt per tick, not a burst.
async fn deliver_due(this: &Arc<Notifier>, hook: &Arc<Hook>, agent: &ureq::Agent) {
    let name = &hook.webhook.name;
    loop {
        let (n, h) = (this.clone(), hook.clone());
        let due = match blocking(move || n.due_at(&h, clock::now())).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(webhook = %name, error = %e, "reading due notifications failed");
                return;
            }
        };
        let full = due.len() >= this.settings.batch as usize;
        let mut due = std::collections::VecDeque::from(due);
        while let Some(out) = due.pop_front() {
            let (a, h) = (agent.clone(), hook.clone());
            let (out, result) = match tokio::task::spawn_blocking(move || {
                let result = post(&a, &h, &out);
                (out, result)
            })
            .await
            {
                Ok(sent) => sent,
                Err(e) => {
                    tracing::error!(webhook = %name, error = %e, "notification task failed");
                    return;
                }
            };
            let failed = result.is_err();
            crate::metrics::webhook_delivery(!failed);
            let error = result.as_ref().err().cloned().unwrap_or_default();
            let (n, h, o) = (this.clone(), hook.clone(), out.clone());
            let outcome = blocking(move || n.record_at(&h, &o, result, clock::now())).await;
            let request_id = out.request_id.as_deref().unwrap_or("");
            match outcome {
                Ok(Outcome::Delivered) => tracing::info!(
                    webhook = %name, request_id, seq = out.seq, action = %out.action,
                    "notification delivered"
                ),
                Ok(Outcome::Retry { at }) => tracing::warn!(
                    webhook = %name, host = %hook.webhook.origin(), request_id, seq = out.seq,
                    attempts = out.attempts + 1, retry_at = at, %error,
                    "notification not delivered; will retry"
                ),
                Ok(Outcome::Dropped) => {
                    crate::metrics::webhook_dropped();
                    tracing::warn!(
                        webhook = %name, host = %hook.webhook.origin(), request_id, seq = out.seq,
                        attempts = out.attempts + 1, %error,
                        "notification dropped after its last attempt"
                    )
                }
                Err(e) => {
                    tracing::error!(webhook = %name, error = %e, "recording a notification attempt failed");
                    return;
                }
            }
            if failed {
                // The rest wait for the next tick, here or on another replica.
                let (n, h, rest) = (this.clone(), hook.clone(), Vec::from(due));
                if let Err(e) = blocking(move || n.release_at(&h, &rest, clock::now())).await {
                    tracing::warn!(webhook = %name, error = %e, "giving back claimed notifications failed; they are sent when their claim ends");
                }
                return;
            }
        }
        if !full {
            return;
        }
    }
}

/// POSTs one notification. Blocking. The error names no more of the URL than its origin.
fn post(agent: &ureq::Agent, hook: &Hook, out: &Outgoing) -> Result<(), String> {
    let url = &hook.webhook.url;
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Moshca-Event", &out.action)
        .header("X-Moshca-Delivery", out.seq.to_string());
    if let Some(secret) = &hook.secret {
        req = req.header("X-Moshca-Signature", signature(secret, &out.body));
    }
    match req.send(&out.body[..]) {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string().replace(url.as_str(), hook.webhook.origin())),
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NOTIFY_ACTIONS;

    const AT: u64 = 1_790_000_000;

    fn row(seq: u64, actor: &str, action: &str, details: Value) -> audit::Row {
        audit::Row {
            seq,
            event: Event::new(AT, actor, action, Some("01JREQ"), details),
            prev_hash: audit::GENESIS.into(),
            hash: audit::GENESIS.into(),
        }
    }

    fn facts() -> RequestFacts {
        RequestFacts {
            requester: "alice".into(),
            role: "db-oncall".into(),
            principals: vec!["postgres".into(), "ubuntu".into()],
            ttl_secs: 1800,
            reason: "INC-4312 replica lag".into(),
            break_glass: false,
            automatic: false,
        }
    }

    fn created() -> audit::Row {
        row(
            7,
            "alice",
            "request.created",
            json!({
                "role": "db-oncall",
                "principals": ["postgres", "ubuntu"],
                "ttl_secs": 1800,
                "reason": "INC-4312 replica lag <!channel>",
                "fingerprint": "SHA256:abc",
            }),
        )
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let s = signature(
            &Secret::new(b"Jefe".to_vec()),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{:?}", Secret::new(b"Jefe".to_vec())), "Secret(..)");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let got: Vec<u64> = (1..=11).map(|t| backoff(t, base, max).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(0, base, max), base);
        assert_eq!(backoff(u32::MAX, base, max), max);
        assert_eq!(
            backoff(3, Duration::from_millis(100), max),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn created_body_names_everything_an_approver_needs() {
        let v = parse(&body(&created(), Some(&facts()), WebhookFormat::Json));
        assert_eq!(v["delivery"], "7");
        assert_eq!(v["action"], "request.created");
        assert_eq!(v["at"], AT);
        assert_eq!(v["actor"], "alice");
        assert_eq!(v["request_id"], "01JREQ");
        assert_eq!(v["details"]["fingerprint"], "SHA256:abc");
        assert_eq!(v["priority"], "normal");
        assert_eq!(
            v["text"],
            "alice asks for role db-oncall as postgres, ubuntu for 30m: \"INC-4312 replica lag <!channel>\" (request 01JREQ, key SHA256:abc). Approve: `moshca approve 01JREQ` · deny: `moshca deny 01JREQ --reason TEXT`"
        );
        let auto = RequestFacts {
            automatic: true,
            ..facts()
        };
        let text = summary(&created().event, Some(&auto));
        assert!(!text.contains("moshca approve"), "{text}");
    }

    #[test]
    fn slack_body_is_text_only_and_escaped() {
        let v = parse(&body(&created(), Some(&facts()), WebhookFormat::Slack));
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1);
        let text = obj["text"].as_str().unwrap();
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("`moshca approve 01JREQ`"), "{text}");
    }

    #[test]
    fn break_glass_is_high_priority_and_flagged() {
        let bg = row(
            8,
            "alice",
            "request.break_glass",
            json!({"role": "db-oncall", "principals": ["postgres"], "ttl_secs": 900, "reason": "INC-1 outage", "priority": "high"}),
        );
        let bgf = RequestFacts {
            break_glass: true,
            ..facts()
        };
        let v = parse(&body(&bg, Some(&bgf), WebhookFormat::Json));
        assert_eq!(v["priority"], "high");
        assert!(v["text"].as_str().unwrap().contains("moshca review 01JREQ"));
        let s = parse(&body(&bg, Some(&bgf), WebhookFormat::Slack));
        assert!(
            s["text"]
                .as_str()
                .unwrap()
                .starts_with(":rotating_light: BREAK-GLASS alice used break-glass"),
            "{s}"
        );
        let text = summary(&created().event, Some(&bgf));
        assert!(!text.contains("moshca approve"), "{text}");
    }

    #[test]
    fn decisions_tell_the_requester_the_outcome() {
        let f = Some(facts());
        let text = |actor: &str, action: &str, details: Value| {
            summary(&row(9, actor, action, details).event, f.as_ref())
        };
        assert_eq!(
            text(
                "moshca-server",
                "certificate.issued",
                json!({"serial": "42", "principals": ["postgres"], "valid_before": AT + 1800})
            ),
            "alice: your request 01JREQ for role db-oncall is granted: certificate 42 for postgres, valid until 2026-09-21T14:43:20Z; `moshca login` loads it, or `moshca fetch 01JREQ --out FILE`"
        );
        assert_eq!(
            text(
                "bob",
                "request.denied",
                json!({"reason": "use the replica"})
            ),
            "alice: your request 01JREQ for role db-oncall was denied by bob: \"use the replica\"; nothing was issued"
        );
        assert!(
            text(
                "moshca-server",
                "request.expired",
                json!({"requester": "alice"})
            )
            .starts_with("alice: your request 01JREQ for role db-oncall expired")
        );
        assert_eq!(
            text("alice", "request.cancelled", json!({})),
            "alice: your request 01JREQ for role db-oncall was cancelled; nothing was issued"
        );
        assert_eq!(
            text(
                "bob",
                "request.approved",
                json!({"ttl_secs": 600, "comment": "ok\nfine"})
            ),
            "bob approved alice's request 01JREQ for role db-oncall, ttl shortened to 10m: \"ok fine\""
        );
    }

    fn hook(name: &str, events: &[&str], max_attempts: u32) -> Webhook {
        Webhook {
            name: name.into(),
            url: "https://hooks.example/T0/secret".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            format: WebhookFormat::Json,
            secret_file: None,
            max_attempts,
        }
    }

    fn counts(n: &Notifier) -> Vec<(String, u64)> {
        n.store.read(|tx| tx.delivery_counts()).unwrap()
    }

    #[test]
    fn break_glass_subscribers_are_the_hooks_that_want_it() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let n = Notifier::new(
            store.clone(),
            &[
                hook("approvers", &["request.created"], 2),
                hook("oncall", &["request.break_glass"], 2),
                hook("all", NOTIFY_ACTIONS, 8),
            ],
        )
        .unwrap();
        assert_eq!(n.subscribers("request.break_glass"), ["oncall", "all"]);
        let none = Notifier::new(store, &[hook("approvers", &["request.created"], 2)]).unwrap();
        assert!(none.subscribers("request.break_glass").is_empty());
    }

    #[test]
    fn fan_out_follows_events_and_drops_are_audited() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let n = Notifier::new(
            store.clone(),
            &[
                hook("approvers", &["request.created"], 2),
                hook("all", NOTIFY_ACTIONS, 8),
            ],
        )
        .unwrap();
        for action in ["request.created", "certificate.issued", "auth.failed"] {
            store
                .transact(|tx| {
                    tx.append_audit(&Event::new(AT, "alice", action, Some("R"), json!({})))
                })
                .unwrap();
        }
        assert_eq!(n.fan_out_at(AT).unwrap(), 3);
        assert_eq!(n.fan_out_at(AT).unwrap(), 0, "fanned out once");
        assert_eq!(counts(&n), [("pending".to_owned(), 3)]);

        let approvers = n.hooks[0].clone();
        let due = n.due_at(&approvers, AT).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].action, "request.created");
        let first = n
            .record_at(&approvers, &due[0], Err("HTTP 500".into()), AT)
            .unwrap();
        assert_eq!(first, Outcome::Retry { at: AT + 1 });
        assert!(n.due_at(&approvers, AT).unwrap().is_empty(), "backing off");
        let due = n.due_at(&approvers, AT + 1).unwrap();
        assert_eq!(due[0].attempts, 1);
        assert_eq!(
            n.record_at(&approvers, &due[0], Err("HTTP 500".into()), AT + 1)
                .unwrap(),
            Outcome::Dropped
        );

        let all = n.hooks[1].clone();
        for out in n.due_at(&all, AT).unwrap() {
            assert_eq!(
                n.record_at(&all, &out, Ok(()), AT).unwrap(),
                Outcome::Delivered
            );
        }
        assert_eq!(
            counts(&n),
            [("delivered".to_owned(), 2), ("dropped".to_owned(), 1)]
        );
        let rows = store.read(|tx| tx.audit_rows()).unwrap();
        let dropped = rows.last().unwrap();
        assert_eq!(dropped.event.action, "notification.dropped");
        assert_eq!(dropped.event.actor, "moshca-server");
        assert_eq!(
            dropped.event.details,
            json!({"webhook": "approvers", "event_seq": 1, "action": "request.created", "attempts": 2, "error": "HTTP 500"})
        );
        assert_eq!(audit::verify(rows).unwrap(), 4);
        assert_eq!(n.fan_out_at(AT).unwrap(), 0, "drops are not notified");
    }
}
