//! The access request state machine. Pure: takes `now`, does no I/O.
//!
//! A [`Request`] is `Pending` until it is issued, denied, cancelled or expired; decided
//! requests are immutable. Transitions are methods of [`Pending`], which consume it, so a
//! decided request cannot be decided again. Entitlement (may this caller approve the role?)
//! is policy's job; the rules here hold whatever policy says: the requester never reviews
//! their own request and each approver counts once.

use std::fmt;

use crate::clock::UnixTime;
use crate::policy::{MIN_TTL_SECS, fmt_secs};

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Approved and signed; terminal.
    Issued,
    /// Denied by an approver; terminal.
    Denied,
    /// Cancelled by the requester; terminal.
    Cancelled,
    /// Not approved within `pending_ttl`; terminal.
    Expired,
}

impl State {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Issued => "issued",
            State::Denied => "denied",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => State::Pending,
            "issued" => State::Issued,
            "denied" => State::Denied,
            "cancelled" => State::Cancelled,
            "expired" => State::Expired,
            _ => return None,
        })
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        self != State::Pending
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approver's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Approve, optionally with a shorter ttl.
    Approve,
    /// Deny; the request is over.
    Deny,
}

impl Verdict {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Verdict::Approve),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }
}

/// One review of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// Who reviewed.
    pub approver: String,
    /// What they decided.
    pub verdict: Verdict,
    /// The ttl they allowed, when they shortened it.
    pub ttl_secs: Option<u64>,
    /// Their comment or deny reason.
    pub comment: String,
    /// When.
    pub at: UnixTime,
}

/// An access request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// ULID.
    pub id: String,
    /// Who asked.
    pub requester: String,
    /// Role asked for.
    pub role: String,
    /// Principals, already checked against the role.
    pub principals: Vec<String>,
    /// Requested ttl; approvers may shorten it.
    pub ttl_secs: u64,
    /// Why.
    pub reason: String,
    /// Subject public key, OpenSSH format without comment.
    pub public_key: String,
    /// SHA-256 fingerprint of the subject key.
    pub fingerprint: String,
    /// Current state.
    pub state: State,
    /// When it was made.
    pub created_at: UnixTime,
    /// When a pending request expires.
    pub expires_at: UnixTime,
    /// When it reached a terminal state.
    pub decided_at: Option<UnixTime>,
    /// Approvals needed, fixed when the request was made.
    pub approvals_required: u32,
    /// Reviews so far, oldest first.
    pub reviews: Vec<Review>,
    /// Issued through break-glass, without prior approval.
    pub break_glass: bool,
    /// The after-the-fact review of a break-glass request.
    pub break_glass_review: Option<Review>,
    /// The stored row's version when this was read (0 for a new request): a save names it
    /// so that a request changed meanwhile by another writer is refused, not overwritten.
    pub version: u64,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is already decided.
    #[error("request {id} is {state}; decided requests cannot change")]
    NotPending {
        /// Request id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The request waited too long.
    #[error("request {0} expired before it was approved; ask again")]
    Expired(String),
    /// The requester tried to review their own request.
    #[error("you cannot review your own request {0}; another approver must")]
    SelfReview(String),
    /// This approver already reviewed it.
    #[error("{approver} has already approved request {id}; another approver must")]
    AlreadyReviewed {
        /// Request id.
        id: String,
        /// Approver.
        approver: String,
    },
    /// Someone other than the requester tried to cancel.
    #[error("only the requester can cancel request {0}")]
    NotRequester(String),
    /// An approver tried to lengthen the ttl, or shorten it below the minimum.
    #[error("{0}")]
    BadTtl(String),
}

/// A request known to be pending and not expired at the time of the check.
#[derive(Debug)]
pub struct Pending(Request);

/// The result of an approval.
#[derive(Debug)]
pub enum Approval {
    /// More approvals are needed.
    Waiting(Request),
    /// The rule is met: sign with these parameters, then mark issued.
    Satisfied(Ready),
}

/// A request whose approval rule is met, ready to be signed once.
#[derive(Debug)]
pub struct Ready {
    /// The request, still `Pending` until [`Ready::issued`].
    pub request: Request,
    /// Approvers who approved, in order.
    pub approvers: Vec<String>,
    /// The ttl to sign: the shortest any approver allowed.
    pub ttl_secs: u64,
}

impl Ready {
    /// A request issued the moment it is made (auto-approved, break-glass, workload): its
    /// own ttl, no approvers.
    pub fn without_approval(request: Request) -> Ready {
        Ready {
            ttl_secs: request.ttl_secs,
            approvers: Vec::new(),
            request,
        }
    }

    /// The request once its certificate is signed.
    pub fn issued(mut self, now: UnixTime) -> Request {
        self.request.state = State::Issued;
        self.request.decided_at = Some(now);
        self.request.ttl_secs = self.ttl_secs;
        self.request
    }
}

impl Request {
    /// Checks that the request can still be decided at `now`.
    pub fn pending_at(self, now: UnixTime) -> Result<Pending, Error> {
        match self.state {
            State::Pending if now >= self.expires_at => Err(Error::Expired(self.id)),
            State::Pending => Ok(Pending(self)),
            state => Err(Error::NotPending { id: self.id, state }),
        }
    }

    /// Approvers who approved, in order.
    pub fn approvers(&self) -> Vec<String> {
        self.reviews
            .iter()
            .filter(|r| r.verdict == Verdict::Approve)
            .map(|r| r.approver.clone())
            .collect()
    }
}

impl Pending {
    /// The request being decided.
    pub fn request(&self) -> &Request {
        &self.0
    }

    /// Records `approver`'s approval. `ttl_secs` may only shorten the request's ttl.
    pub fn approve_at(
        self,
        approver: &str,
        ttl_secs: Option<u64>,
        comment: &str,
        now: UnixTime,
    ) -> Result<Approval, Error> {
        let mut req = self.0;
        if approver == req.requester {
            return Err(Error::SelfReview(req.id));
        }
        if req.reviews.iter().any(|r| r.approver == approver) {
            return Err(Error::AlreadyReviewed {
                id: req.id,
                approver: approver.to_owned(),
            });
        }
        if let Some(ttl) = ttl_secs {
            if ttl > req.ttl_secs {
                return Err(Error::BadTtl(format!(
                    "approvers may shorten the ttl, not lengthen it: {} requested, {} given",
                    fmt_secs(req.ttl_secs),
                    fmt_secs(ttl)
                )));
            }
            if ttl < MIN_TTL_SECS {
                return Err(Error::BadTtl("ttl must be at least 1m".into()));
            }
        }
        req.reviews.push(Review {
            approver: approver.to_owned(),
            verdict: Verdict::Approve,
            ttl_secs,
            comment: comment.to_owned(),
            at: now,
        });
        let approvers = req.approvers();
        if approvers.len() < req.approvals_required as usize {
            return Ok(Approval::Waiting(req));
        }
        let ttl_secs = req
            .reviews
            .iter()
            .filter_map(|r| r.ttl_secs)
            .fold(req.ttl_secs, u64::min);
        Ok(Approval::Satisfied(Ready {
            request: req,
            approvers,
            ttl_secs,
        }))
    }

    /// Denies the request; one denial ends it.
    pub fn deny_at(self, approver: &str, reason: &str, now: UnixTime) -> Result<Request, Error> {
        let mut req = self.0;
        if approver == req.requester {
            return Err(Error::SelfReview(req.id));
        }
        req.reviews.push(Review {
            approver: approver.to_owned(),
            verdict: Verdict::Deny,
            ttl_secs: None,
            comment: reason.to_owned(),
            at: now,
        });
        req.state = State::Denied;
        req.decided_at = Some(now);
        Ok(req)
    }

    /// Cancels the request; only its requester may.
    pub fn cancel_at(self, by: &str, now: UnixTime) -> Result<Request, Error> {
        let mut req = self.0;
        if by != req.requester {
            return Err(Error::NotRequester(req.id));
        }
        req.state = State::Cancelled;
        req.decided_at = Some(now);
        Ok(req)
    }
}

/// Why a break-glass review was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlassError {
    /// Not a break-glass request.
    #[error("request {0} is not a break-glass request")]
    NotBreakGlass(String),
    /// Already reviewed.
    #[error("break-glass request {0} was already reviewed by {1}")]
    AlreadyReviewed(String, String),
    /// The requester tried to review their own.
    #[error("you cannot review your own break-glass request {0}; another approver must")]
    SelfReview(String),
}

impl Request {
    /// Records the after-the-fact review of an issued break-glass request.
    pub fn review_break_glass_at(
        mut self,
        reviewer: &str,
        comment: &str,
        now: UnixTime,
    ) -> Result<Request, GlassError> {
        if !self.break_glass {
            return Err(GlassError::NotBreakGlass(self.id));
        }
        if let Some(r) = &self.break_glass_review {
            return Err(GlassError::AlreadyReviewed(self.id, r.approver.clone()));
        }
        if reviewer == self.requester {
            return Err(GlassError::SelfReview(self.id));
        }
        self.break_glass_review = Some(Review {
            approver: reviewer.to_owned(),
            verdict: Verdict::Approve,
            ttl_secs: None,
            comment: comment.to_owned(),
            at: now,
        });
        Ok(self)
    }

    /// Expires a pending request whose time is up; anything else is returned unchanged.
    pub fn expire_at(mut self, now: UnixTime) -> (Request, bool) {
        if self.state == State::Pending && now >= self.expires_at {
            self.state = State::Expired;
            self.decided_at = Some(now);
            (self, true)
        } else {
            (self, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = 1_790_000_000;

    fn request(required: u32) -> Request {
        Request {
            id: "01JREQ".into(),
            requester: "alice".into(),
            role: "db".into(),
            principals: vec!["postgres".into()],
            ttl_secs: 1800,
            reason: "INC-1".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: "SHA256:x".into(),
            state: State::Pending,
            created_at: T0,
            expires_at: T0 + 3600,
            decided_at: None,
            approvals_required: required,
            reviews: vec![],
            break_glass: false,
            break_glass_review: None,
            version: 0,
        }
    }

    fn satisfied(a: Approval) -> Ready {
        match a {
            Approval::Satisfied(r) => r,
            Approval::Waiting(_) => panic!("expected satisfied"),
        }
    }

    fn waiting(a: Approval) -> Request {
        match a {
            Approval::Waiting(r) => r,
            Approval::Satisfied(_) => panic!("expected waiting"),
        }
    }

    #[test]
    fn one_approval_satisfies_default_rule() {
        let ready = satisfied(
            request(1)
                .pending_at(T0)
                .unwrap()
                .approve_at("bob", None, "", T0 + 5)
                .unwrap(),
        );
        assert_eq!(ready.approvers, ["bob"]);
        assert_eq!(ready.ttl_secs, 1800);
        let issued = ready.issued(T0 + 5);
        assert_eq!(issued.state, State::Issued);
        assert_eq!(issued.decided_at, Some(T0 + 5));
    }

    #[test]
    fn requester_never_approves_or_denies_own_request() {
        let p = request(1).pending_at(T0).unwrap();
        assert_eq!(
            p.approve_at("alice", None, "", T0).unwrap_err(),
            Error::SelfReview("01JREQ".into())
        );
        let p = request(1).pending_at(T0).unwrap();
        assert!(matches!(
            p.deny_at("alice", "no", T0),
            Err(Error::SelfReview(_))
        ));
    }

    #[test]
    fn each_approver_counts_once() {
        let req = waiting(
            request(2)
                .pending_at(T0)
                .unwrap()
                .approve_at("bob", None, "", T0)
                .unwrap(),
        );
        let again = req
            .clone()
            .pending_at(T0)
            .unwrap()
            .approve_at("bob", None, "", T0);
        assert!(matches!(again, Err(Error::AlreadyReviewed { .. })));
        let ready = satisfied(
            req.pending_at(T0)
                .unwrap()
                .approve_at("carol", None, "", T0)
                .unwrap(),
        );
        assert_eq!(ready.approvers, ["bob", "carol"]);
    }

    #[test]
    fn approvers_may_shorten_never_lengthen() {
        let p = request(1).pending_at(T0).unwrap();
        assert!(matches!(
            p.approve_at("bob", Some(1801), "", T0),
            Err(Error::BadTtl(_))
        ));
        let p = request(1).pending_at(T0).unwrap();
        assert!(matches!(
            p.approve_at("bob", Some(30), "", T0),
            Err(Error::BadTtl(_))
        ));
        let ready = satisfied(
            request(1)
                .pending_at(T0)
                .unwrap()
                .approve_at("bob", Some(900), "", T0)
                .unwrap(),
        );
        assert_eq!(ready.ttl_secs, 900);
    }

    #[test]
    fn shortest_ttl_of_several_approvers_wins() {
        let req = waiting(
            request(2)
                .pending_at(T0)
                .unwrap()
                .approve_at("bob", Some(600), "", T0)
                .unwrap(),
        );
        let ready = satisfied(
            req.pending_at(T0)
                .unwrap()
                .approve_at("carol", Some(1200), "", T0)
                .unwrap(),
        );
        assert_eq!(ready.ttl_secs, 600);
    }

    #[test]
    fn decided_requests_are_immutable() {
        let denied = request(1)
            .pending_at(T0)
            .unwrap()
            .deny_at("bob", "not now", T0)
            .unwrap();
        assert_eq!(denied.state, State::Denied);
        assert!(matches!(
            denied.clone().pending_at(T0),
            Err(Error::NotPending {
                state: State::Denied,
                ..
            })
        ));
        let issued = satisfied(
            request(1)
                .pending_at(T0)
                .unwrap()
                .approve_at("bob", None, "", T0)
                .unwrap(),
        )
        .issued(T0);
        assert!(matches!(
            issued.pending_at(T0),
            Err(Error::NotPending {
                state: State::Issued,
                ..
            })
        ));
    }

    #[test]
    fn pending_requests_expire() {
        assert!(matches!(
            request(1).pending_at(T0 + 3600),
            Err(Error::Expired(_))
        ));
        assert!(request(1).pending_at(T0 + 3599).is_ok());
        let (r, changed) = request(1).expire_at(T0 + 3599);
        assert!(!changed && r.state == State::Pending);
        let (r, changed) = request(1).expire_at(T0 + 3600);
        assert!(changed && r.state == State::Expired);
        let (r, changed) = r.expire_at(T0 + 9999);
        assert!(!changed && r.state == State::Expired);
    }

    #[test]
    fn only_requester_cancels() {
        let p = request(1).pending_at(T0).unwrap();
        assert!(matches!(
            p.cancel_at("bob", T0),
            Err(Error::NotRequester(_))
        ));
        let c = request(1)
            .pending_at(T0)
            .unwrap()
            .cancel_at("alice", T0)
            .unwrap();
        assert_eq!(c.state, State::Cancelled);
    }

    #[test]
    fn break_glass_review_rules() {
        let mut r = request(1);
        assert!(matches!(
            r.clone().review_break_glass_at("bob", "ok", T0),
            Err(GlassError::NotBreakGlass(_))
        ));
        r.break_glass = true;
        assert!(matches!(
            r.clone().review_break_glass_at("alice", "ok", T0),
            Err(GlassError::SelfReview(_))
        ));
        let reviewed = r.review_break_glass_at("bob", "justified", T0 + 1).unwrap();
        assert_eq!(
            reviewed.break_glass_review.as_ref().unwrap().approver,
            "bob"
        );
        assert!(matches!(
            reviewed.review_break_glass_at("carol", "again", T0 + 2),
            Err(GlassError::AlreadyReviewed(_, who)) if who == "bob"
        ));
    }
}
