//! The only reader of the wall clock.
//!
//! Everything else takes `now` (Unix seconds) as a parameter, so every time rule can be
//! tested with fixed timestamps. Nothing here may be called from `policy`, `approvals` or
//! `signer`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

/// The current wall-clock time in Unix seconds.
#[allow(clippy::disallowed_methods)]
pub fn now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
