//! Abuse limits that need memory across calls: failed authentications per peer address.
//!
//! A peer that fails to authenticate too often within a window is refused before any
//! token lookup, with RESOURCE_EXHAUSTED naming the limit. Pure apart from a mutex: the
//! caller passes the (monotonic) time, so tests need no sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications allowed per peer address per window.
pub const MAX_AUTH_FAILURES: u32 = 20;
/// The window.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered at most; older entries are dropped first.
const MAX_PEERS: usize = 10_000;

/// Counts failed authentications per peer address.
#[derive(Debug, Default)]
pub struct AuthFailures {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthFailures {
    /// Whether `peer` may try to authenticate at `now`.
    pub fn allowed_at(&self, peer: IpAddr, now: Instant) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get(&peer) {
            Some((count, since)) if now.duration_since(*since) < AUTH_FAILURE_WINDOW => {
                *count < MAX_AUTH_FAILURES
            }
            _ => true,
        }
    }

    /// Records one failed authentication of `peer` at `now`.
    pub fn record_at(&self, peer: IpAddr, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, (_, since)| now.duration_since(*since) < AUTH_FAILURE_WINDOW);
        }
        let entry = peers.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= AUTH_FAILURE_WINDOW {
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
        let f = AuthFailures::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_AUTH_FAILURES {
            assert!(f.allowed_at(a, t0));
            f.record_at(a, t0);
        }
        assert!(!f.allowed_at(a, t0 + Duration::from_secs(59)));
        assert!(f.allowed_at(b, t0), "other peers are not affected");
        assert!(f.allowed_at(a, t0 + AUTH_FAILURE_WINDOW));
        f.record_at(a, t0 + AUTH_FAILURE_WINDOW);
        assert!(f.allowed_at(a, t0 + AUTH_FAILURE_WINDOW));
    }
}
