//! The one reader of the wall clock.
//!
//! Everything else takes `now` (Unix seconds) as a parameter so time rules are testable.
//! Nothing here sleeps or measures elapsed time; `tokio::time` does that.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in Unix seconds; 0 if the clock is before 1970.
#[allow(clippy::disallowed_methods)]
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
