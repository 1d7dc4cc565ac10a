//! Abuse limits that need memory across calls: failed authentications per peer address,
//! and refused calls per authenticated caller.
//!
//! A key (peer or caller) that fails too often within a window is refused before any
//! further work, with RESOURCE_EXHAUSTED naming the limit: a flood of bad calls then costs
//! neither token lookups nor audit rows. Pure apart from a mutex: the caller passes the
//! (monotonic) time, so tests need no sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications allowed per peer address per window.
pub const MAX_AUTH_FAILURES: u32 = 20;
/// Refused calls (bad arguments, denied by policy, wrong state) allowed per caller per
/// window. Generous for a person fixing a typo; a script hammering the CA with calls it
/// may not make stops writing audit rows after this many.
pub const MAX_REFUSALS: u32 = 60;
/// The window of both limits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most; older entries are dropped first.
const MAX_KEYS: usize = 10_000;

/// Failed authentications per peer address.
pub type AuthFailures = Failures<IpAddr>;
/// Refused calls per caller name.
pub type Refusals = Failures<String>;

/// Counts failures per key within a window.
#[derive(Debug)]
pub struct Failures<K> {
    max: u32,
    keys: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: Hash + Eq> Failures<K> {
    /// At most `max` failures per key per [`WINDOW`].
    pub fn new(max: u32) -> Self {
        Failures {
            max,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The limit.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Whether `key` may try again at `now`.
    pub fn allowed_at<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get(key) {
            Some((count, since)) if now.duration_since(*since) < WINDOW => *count < self.max,
            _ => true,
        }
    }

    /// Records one failure of `key` at `now`.
    pub fn record_at(&self, key: K, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
        }
        let entry = keys.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_refused_after_the_limit_until_the_window_passes() {
        let f = AuthFailures::new(MAX_AUTH_FAILURES);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(f.allowed_at(&a, t0));
            f.record_at(a, t0);
        }
        assert!(!f.allowed_at(&a, t0 + Duration::from_secs(59)));
        assert!(f.allowed_at(&b, t0), "other peers are not affected");
        assert!(f.allowed_at(&a, t0 + WINDOW));
        f.record_at(a, t0 + WINDOW);
        assert!(f.allowed_at(&a, t0 + WINDOW));
    }

    #[test]
    fn callers_are_counted_by_name() {
        let r = Refusals::new(2);
        let t0 = Instant::now();
        r.record_at("mallory".to_owned(), t0);
        r.record_at("mallory".to_owned(), t0);
        assert!(!r.allowed_at("mallory", t0));
        assert!(r.allowed_at("alice", t0));
    }
}
