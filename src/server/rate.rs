//! Request budgets for the console's endpoints that make the labeler work for strangers
//! (`email.atmos.requestVerification`, `email.atmos.checkDomain`), on `governor`'s GCRA
//! (generic cell rate algorithm: a token bucket without a timer per key).
//!
//! A budget is a burst and a refill interval: `burst` requests at once, then one more every
//! `every`. A refusal says how long until the next request would pass, which becomes the
//! `Retry-After` of the 429.
//!
//! Keys (client addresses, DIDs) stay in memory only while their bucket is not full again:
//! every [`PRUNE_EVERY`] checks the map drops the keys that are indistinguishable from fresh,
//! so its size is bounded by the keys seen within one refill of a burst, not by all keys ever.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Checks between two prunes of forgotten keys.
const PRUNE_EVERY: u64 = 1024;

/// A request budget: `burst` at once, then one more every `every`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed at once (at least 1).
    pub burst: u32,
    /// Time for one request's allowance to come back (at least 1 ms).
    pub every: Duration,
}

impl Rate {
    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        let every = self.every.max(Duration::from_millis(1));
        Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// A budget per key.
#[derive(Debug)]
pub(crate) struct Limiter<K: Hash + Eq + Clone> {
    inner: RateLimiter<K, HashMapStateStore<K>, DefaultClock>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter giving every key `rate`.
    pub(crate) fn new(rate: Rate) -> Limiter<K> {
        Limiter {
            inner: RateLimiter::new(
                rate.quota(),
                HashMapStateStore::default(),
                DefaultClock::default(),
            ),
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one request of `key`'s budget, or says how long until one is available.
    pub(crate) fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.inner.retain_recent();
            self.inner.shrink_to_fit();
        }
        self.inner
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock().now()))
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_request_waits_about_one_interval() {
        let l = Limiter::new(Rate {
            burst: 2,
            every: Duration::from_secs(60),
        });
        assert!(l.check(&"a").is_ok());
        assert!(l.check(&"a").is_ok());
        let wait = l.check(&"a").unwrap_err();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(l.check(&"b").is_ok(), "keys have their own budgets");
    }

    #[test]
    fn keys_whose_budget_is_whole_again_are_forgotten() {
        let l = Limiter::new(Rate {
            burst: 1,
            every: Duration::from_millis(1),
        });
        for i in 0..PRUNE_EVERY - 1 {
            l.check(&i).unwrap();
        }
        assert_eq!(l.len(), (PRUNE_EVERY - 1) as usize);
        std::thread::sleep(Duration::from_millis(5));
        // The next check prunes every key that refilled.
        l.check(&u64::MAX).unwrap();
        assert!(l.len() <= 1, "{} keys kept", l.len());
    }
}
