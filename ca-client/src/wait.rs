//! Waiting for a request to be decided: follows `WatchAccessRequest` until a terminal
//! state, a timeout or an interrupt, with a spinner on stderr when stderr is a terminal.
//!
//! The result is an [`Outcome`] value; this module does not cancel requests, touch the
//! agent or write stdout. Those are the caller's decisions.

use std::future::Future;
use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use moshca_proto::v1::{
    AccessRequest, Decision, GetAccessRequestRequest, State, WatchAccessRequestRequest,
};
use tokio::time::{Instant, sleep, sleep_until};

use crate::clock;
use crate::error::{Error, Result};
use crate::output;
use crate::rpc::Client;

/// How many times in a row a broken watch is re-established before giving up.
const MAX_RETRIES: u32 = 5;
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long after `expires_at` to ask the server whether the request expired, in case the
/// watch missed it; then how often to ask again.
const EXPIRY_GRACE_SECS: i64 = 2;
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// How waiting ended.
#[derive(Debug)]
pub enum Outcome {
    /// Approved and signed; the request as last seen (with its certificate when the server
    /// sent it).
    Issued(AccessRequest),
    /// An approver denied it.
    Denied(AccessRequest),
    /// Nobody approved it before `expires_at`.
    Expired(AccessRequest),
    /// Cancelled, from somewhere else.
    Cancelled(AccessRequest),
    /// `--timeout` ran out; the request is still pending.
    TimedOut,
    /// The interrupt future (Ctrl-C) fired; the request is still pending.
    Interrupted,
}

impl Outcome {
    /// The outcome a request in a terminal state stands for; `None` while it is pending.
    pub fn of(request: AccessRequest) -> Option<Self> {
        match State::try_from(request.state).unwrap_or(State::Unspecified) {
            State::Issued => Some(Outcome::Issued(request)),
            State::Denied => Some(Outcome::Denied(request)),
            State::Expired => Some(Outcome::Expired(request)),
            State::Cancelled => Some(Outcome::Cancelled(request)),
            State::Pending | State::Unspecified => None,
        }
    }
}

/// What woke the watch loop.
enum Event {
    Message(Box<Result<Option<AccessRequest>, tonic::Status>>),
    Recheck,
}

/// Waits until `request` is decided, `timeout` runs out, or `interrupt` completes.
///
/// A watch broken by the network is re-established (the server sends the current state
/// first, so nothing is missed); other errors end the wait.
pub async fn until_decided(
    client: &mut Client,
    request: &AccessRequest,
    timeout: Option<Duration>,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome> {
    follow(client, request, timeout, interrupt, CTRL_C_CANCELS).await
}

/// [`until_decided`] for a caller that keeps the request pending when interrupted
/// (`login --keep-pending`, `--resume`); only the spinner's note differs.
pub async fn until_decided_keeping(
    client: &mut Client,
    request: &AccessRequest,
    timeout: Option<Duration>,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome> {
    follow(client, request, timeout, interrupt, CTRL_C_KEEPS).await
}

/// What the spinner says Ctrl-C does.
const CTRL_C_CANCELS: &str = "Ctrl-C cancels";
const CTRL_C_KEEPS: &str = "Ctrl-C stops waiting; the request stays pending";

async fn follow(
    client: &mut Client,
    request: &AccessRequest,
    timeout: Option<Duration>,
    interrupt: impl Future<Output = ()>,
    ctrl_c: &'static str,
) -> Result<Outcome> {
    if let Some(outcome) = Outcome::of(request.clone()) {
        return Ok(outcome);
    }
    let id = request.id.clone();
    let spinner = Spinner::start(request, ctrl_c);
    let deadline = async move {
        match timeout {
            Some(timeout) => sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let recheck = sleep(recheck_delay_at(request, clock::now_unix()));
    tokio::pin!(interrupt, deadline, recheck);

    let mut failures = 0u32;
    loop {
        let watched = tokio::select! {
            biased;
            () = &mut interrupt => return Ok(Outcome::Interrupted),
            () = &mut deadline => return Ok(Outcome::TimedOut),
            watched = client.watch_access_request(WatchAccessRequestRequest {
                id: id.clone(),
                include_certificate: true,
            }) => watched,
        };
        let broken = match watched {
            Err(status) if is_transient(&status) => status,
            Err(status) => return Err(Error::rpc("watch request", &status)),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let event = tokio::select! {
                        biased;
                        () = &mut interrupt => return Ok(Outcome::Interrupted),
                        () = &mut deadline => return Ok(Outcome::TimedOut),
                        () = &mut recheck => Event::Recheck,
                        message = stream.message() => Event::Message(Box::new(message)),
                    };
                    let message = match event {
                        Event::Recheck => {
                            recheck.as_mut().reset(Instant::now() + RECHECK_EVERY);
                            if let Some(outcome) = recheck_request(client, &id).await {
                                return Ok(outcome);
                            }
                            continue;
                        }
                        Event::Message(message) => *message,
                    };
                    match message {
                        Ok(Some(current)) => {
                            failures = 0;
                            tracing::debug!(request_id = %id, state = current.state, "request changed");
                            spinner.update(&current);
                            if let Some(outcome) = Outcome::of(current) {
                                return Ok(outcome);
                            }
                        }
                        Ok(None) => {
                            break tonic::Status::unavailable("the server ended the watch early");
                        }
                        Err(status) if is_transient(&status) => break status,
                        Err(status) => {
                            return Err(Error::rpc("watch request", &status));
                        }
                    }
                }
            }
        };

        failures += 1;
        if failures > MAX_RETRIES {
            return Err(Error::rpc("watch request", &broken));
        }
        let pause = backoff(failures);
        // Printed above the spinner (see `progress`), which says the same on its line.
        tracing::warn!(request_id = %id, error = %broken.message(), "watch broken; retrying in {pause:?}");
        spinner.reconnecting(request, pause);
        tokio::select! {
            biased;
            () = &mut interrupt => return Ok(Outcome::Interrupted),
            () = &mut deadline => return Ok(Outcome::TimedOut),
            () = sleep_until(Instant::now() + pause) => {}
        }
    }
}

/// Asks the server for the request's state directly; a terminal state ends the wait.
async fn recheck_request(client: &mut Client, id: &str) -> Option<Outcome> {
    let request = GetAccessRequestRequest {
        id: id.to_owned(),
        include_certificate: true,
    };
    match client.get_access_request(request).await {
        Ok(response) => Outcome::of(response.into_inner()),
        Err(status) => {
            tracing::debug!(request_id = %id, error = %status.message(), "recheck failed");
            None
        }
    }
}

/// Codes worth re-establishing the watch for: the network or the server went away.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// The pause before attempt number `failures` (1, 2, 4, 8, 8... seconds).
fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(10);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// When to first ask whether a pending request expired: shortly after its `expires_at`.
fn recheck_delay_at(request: &AccessRequest, now: i64) -> Duration {
    if request.expires_at <= 0 {
        return RECHECK_EVERY;
    }
    let secs = request
        .expires_at
        .saturating_sub(now)
        .saturating_add(EXPIRY_GRACE_SECS)
        .max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(1))
}

/// The spinner line while waiting, e.g.
/// `waiting for approval of 01J... by group:sre-leads (Ctrl-C cancels)`.
#[cfg(test)]
fn waiting_message(request: &AccessRequest) -> String {
    waiting_message_with(request, CTRL_C_CANCELS)
}

/// [`waiting_message`] with `ctrl_c` saying what Ctrl-C does.
fn waiting_message_with(request: &AccessRequest, ctrl_c: &str) -> String {
    let approvers = approvers_text(request);
    let approved = request
        .reviews
        .iter()
        .filter(|r| r.decision == Decision::Approve as i32)
        .count();
    if request.approvals_required > 1 {
        format!(
            "waiting for approval of {} by {approvers}, {approved} of {} approvals \
             ({ctrl_c})",
            request.id, request.approvals_required
        )
    } else {
        format!(
            "waiting for approval of {} by {approvers} ({ctrl_c})",
            request.id
        )
    }
}

/// Who may approve, as the server lists them.
pub fn approvers_text(request: &AccessRequest) -> String {
    if request.approvers.is_empty() {
        "an approver of the role".to_owned()
    } else {
        request.approvers.join(", ")
    }
}

/// A spinner on stderr while waiting; hidden when stderr is not a terminal. Cleared on drop.
struct Spinner(ProgressBar, &'static str);

impl Spinner {
    fn start(request: &AccessRequest, ctrl_c: &'static str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Spinner(ProgressBar::hidden(), ctrl_c);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        bar.set_message(waiting_message_with(request, ctrl_c));
        bar.enable_steady_tick(Duration::from_millis(120));
        // Log lines and notices now go above the spinner, not into its line.
        crate::progress::set_active(Some(bar.clone()));
        Spinner(bar, ctrl_c)
    }

    fn update(&self, request: &AccessRequest) {
        self.0.set_message(waiting_message_with(request, self.1));
    }

    fn reconnecting(&self, request: &AccessRequest, pause: Duration) {
        self.0.set_message(format!(
            "lost the connection; retrying in {}s ({})",
            pause.as_secs(),
            waiting_message_with(request, self.1)
        ));
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        crate::progress::set_active(None);
        self.0.finish_and_clear();
    }
}

/// Prints the two lines scripts read the request id from.
pub fn announce(request: &AccessRequest) {
    output::notice(&format!(
        "request {} is waiting for approval by {}",
        request.id,
        approvers_text(request)
    ));
    output::notice(&format!("approve with: moshca approve {}", request.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: State) -> AccessRequest {
        AccessRequest {
            id: "01JREQ".into(),
            state: state as i32,
            approvers: vec!["group:sre-leads".into(), "user:bob".into()],
            approvals_required: 1,
            expires_at: 10_003_600,
            ..AccessRequest::default()
        }
    }

    #[test]
    fn terminal_states_end_the_wait() {
        assert!(matches!(
            Outcome::of(request(State::Issued)),
            Some(Outcome::Issued(_))
        ));
        assert!(matches!(
            Outcome::of(request(State::Denied)),
            Some(Outcome::Denied(_))
        ));
        assert!(matches!(
            Outcome::of(request(State::Expired)),
            Some(Outcome::Expired(_))
        ));
        assert!(matches!(
            Outcome::of(request(State::Cancelled)),
            Some(Outcome::Cancelled(_))
        ));
        assert!(Outcome::of(request(State::Pending)).is_none());
        let unknown = AccessRequest {
            state: 99,
            ..request(State::Pending)
        };
        assert!(Outcome::of(unknown).is_none());
    }

    #[test]
    fn spinner_names_the_request_and_approvers() {
        let r = request(State::Pending);
        assert_eq!(
            waiting_message(&r),
            "waiting for approval of 01JREQ by group:sre-leads, user:bob (Ctrl-C cancels)"
        );
        let two = AccessRequest {
            approvals_required: 2,
            ..r
        };
        assert!(waiting_message(&two).contains("0 of 2 approvals"));
        assert!(
            waiting_message_with(&two, CTRL_C_KEEPS)
                .ends_with("(Ctrl-C stops waiting; the request stays pending)")
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let pauses: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn recheck_comes_just_after_expiry() {
        let r = request(State::Pending);
        assert_eq!(recheck_delay_at(&r, 10_000_000), Duration::from_secs(3602));
        assert_eq!(recheck_delay_at(&r, 20_000_000), Duration::from_secs(1));
        let unset = AccessRequest { expires_at: 0, ..r };
        assert_eq!(recheck_delay_at(&unset, 5), RECHECK_EVERY);
    }
}
