//! The time source behind every scheduling decision.

use std::time::{SystemTime, UNIX_EPOCH};

/// Time source for scheduling. Wall clock in production; tests drive a clock that follows
/// tokio's (pausable) time so re-check timing can be tested without sleeping.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// `SystemTime::now()`.
    System,
    /// `base_ms` plus the tokio time elapsed since `start`.
    Tokio {
        /// Unix ms at `start`.
        base_ms: i64,
        /// The tokio instant that corresponds to `base_ms`.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio time, starting at `base_ms`.
    pub fn tokio(base_ms: i64) -> Clock {
        Clock::Tokio {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }

    /// Current unix time in ms.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            Clock::Tokio { base_ms, start } => base_ms + start.elapsed().as_millis() as i64,
        }
    }
}
