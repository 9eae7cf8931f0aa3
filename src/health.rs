//! What each component says about its own state, for `/xrpc/_health` and `/metrics`.
//!
//! Components write here as things happen (Jetstream connects and receives frames, the live
//! feed starts or dies, the guard trips its breaker or finds the resolver failing); the server
//! only reads. Writes are a short lock on a small struct, never on a hot path that runs per
//! label or per request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// Shared component state. Cheap to clone; all clones see the same state.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<State>>);

/// A snapshot of every component's state.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The Jetstream consumer (absent in modes that do not follow Jetstream).
    pub jetstream: Option<Jetstream>,
    /// The live label feed that publishes committed labels to subscribers.
    pub live_feed: LiveFeed,
    /// The guard against the labeler's own faults (absent in modes that sign nothing).
    pub guard: Option<Guard>,
    /// The upstream a mirror follows (absent on a primary).
    pub upstream: Option<Upstream>,
}

/// A mirror's subscription to its upstream's label stream (see `crate::follow`).
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    /// The upstream's base URL.
    pub url: String,
    /// Whether a subscription is open now.
    pub connected: bool,
    /// When the current subscription opened, or the last one closed.
    pub since: Option<SystemTime>,
    /// When the last frame (of any kind) arrived.
    pub last_frame: Option<Instant>,
    /// The upstream seq up to which every label was stored or refused.
    pub cursor: Option<i64>,
    /// The highest upstream seq received (committed or not yet).
    pub received: Option<i64>,
    /// Whether the mirror holds everything the upstream has sent: connected, nothing left
    /// unread on the socket and nothing received left uncommitted.
    pub in_sync: bool,
    /// When the mirror last stopped being in sync (it started behind), for the lag.
    pub behind_since: Option<Instant>,
    /// Labels refused (bad signature, foreign `src`, undecodable) since the mirror started.
    pub refused: u64,
    /// Why the last subscription ended or could not be made.
    pub last_error: Option<String>,
    /// Set when following stopped for good (the upstream lost history: `FutureCursor`); the
    /// mirror keeps serving what it holds.
    pub stopped: Option<String>,
}

impl Upstream {
    /// How far behind the upstream the mirror may be: zero while in sync, else the time since
    /// it last was (a disconnected mirror does not know what it misses).
    pub fn lag(&self, now: Instant) -> Option<std::time::Duration> {
        if self.in_sync && self.connected {
            return Some(std::time::Duration::ZERO);
        }
        self.behind_since.map(|t| now.saturating_duration_since(t))
    }
}

/// The Jetstream consumer's connection.
#[derive(Clone, Debug, Default)]
pub struct Jetstream {
    /// Whether a session is open now.
    pub connected: bool,
    /// When the current session opened, or the last one closed.
    pub since: Option<SystemTime>,
    /// When the last frame (of any kind) arrived.
    pub last_frame: Option<Instant>,
    /// Why the last session ended, when it did not end cleanly.
    pub last_error: Option<String>,
}

/// The live feed task.
#[derive(Clone, Debug, Default)]
pub struct LiveFeed {
    /// Whether it is running.
    pub running: bool,
    /// Times it was restarted after dying.
    pub restarts: u64,
    /// Why it last died.
    pub last_error: Option<String>,
}

/// The guard that holds withdrawals the labeler cannot trust (see `manager::guard`).
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// `Some(why)` while the labeler's own resolver is failing names it knows exist.
    pub resolver_degraded: Option<String>,
    /// `Some(since)` while the breaker holds withdrawals.
    pub breaker_open_since: Option<SystemTime>,
    /// Why the breaker is open.
    pub breaker_reason: Option<String>,
    /// Withdrawals held since the breaker opened.
    pub held: u64,
}

impl Health {
    /// A fresh state: nothing running yet.
    pub fn new() -> Health {
        Health::default()
    }

    /// Changes the state under the lock.
    pub fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked mid-update of plain data.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
