//! The guard against the labeler's own faults: whether a withdrawal may be signed now.
//!
//! A label is withdrawn when an attestation that stood stops standing: a confirmed failure,
//! or too long without a definitive answer. Both can be the labeler's fault rather than the
//! operator's — a local resolver that answers NXDOMAIN for everything, an outage of its own
//! network, a bad rule shipped in a release — and relays gate real mail on these labels, so
//! the guard holds a withdrawal when:
//!
//! 1. **The labeler cannot resolve names it knows exist.** Before any withdrawal (and before
//!    staleness may count), the configured resolver is asked for the `dnsCanaries`. If none
//!    resolves, the resolver is degraded: withdrawals are held and staleness does not
//!    advance. A healthy probe is reused for [`PROBE_TTL`], a failed one for
//!    [`DEGRADED_PROBE_TTL`].
//! 2. **The breaker is open.** Within the last `breakerWindow`, more than
//!    [`BREAKER_SHARE_PERCENT`]% of the standing attestations re-checked (and at least
//!    [`BREAKER_MIN`]) would have been withdrawn. Every withdrawal is then held, loudly (log,
//!    `/metrics`, `/xrpc/_health`), until the rate falls back under the threshold, the hold
//!    has lasted `breakerMaxHold`, or an operator runs `labeler breaker release`.
//!
//! A held withdrawal keeps the attestation standing and comes back for a re-check soon; the
//! report says why it was held. Withdrawals that are facts about the record, not about DNS (a
//! record the PDS says is deleted, an account that is not active) never pass through here.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::dns::{self, Answer};
use crate::health::{self, Health};
use crate::store::Store;
use crate::telemetry;

/// How long a healthy canary probe is reused.
pub(super) const PROBE_TTL: Duration = Duration::from_secs(30);

/// How long a failed canary probe is reused: short, so withdrawals resume soon after the
/// resolver recovers.
pub(super) const DEGRADED_PROBE_TTL: Duration = Duration::from_secs(1);

/// The breaker opens when more than this share (percent) of the standing attestations
/// re-checked in the window would be withdrawn…
pub(super) const BREAKER_SHARE_PERCENT: u64 = 10;

/// …and at least this many would be.
pub(super) const BREAKER_MIN: u64 = 5;

/// Guard settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names that exist, resolved to tell whether the labeler's own resolver works. Empty:
    /// no probe (the resolver is assumed healthy).
    pub canaries: Vec<String>,
    /// The window the breaker counts re-checks and would-be withdrawals in.
    pub window: Duration,
    /// Longest the breaker holds withdrawals before letting them through.
    pub max_hold: Duration,
}

/// The distinct attestations seen within the window, each with the last time it was seen:
/// the breaker counts attestations, not events, so a fast `reverifyInterval` re-checking the
/// same few many times does not dilute a wave of withdrawals.
#[derive(Debug, Default)]
struct Recent {
    last: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
}

impl Recent {
    fn see(&mut self, key: u64, now: Instant) {
        self.last.insert(key, now);
        self.order.push_back((now, key));
    }

    /// Forgets what was last seen before `since`; returns how many remain.
    fn count_since(&mut self, since: Instant) -> u64 {
        while let Some(&(at, key)) = self.order.front() {
            if at >= since {
                break;
            }
            self.order.pop_front();
            if self.last.get(&key) == Some(&at) {
                self.last.remove(&key);
            }
        }
        self.last.len() as u64
    }
}

#[derive(Debug, Default)]
struct State {
    /// The last canary probe: when, and `Some(why)` if the resolver was degraded.
    probe: Option<(Instant, Option<String>)>,
    /// Standing attestations re-checked within the window.
    rechecked: Recent,
    /// Of those, the ones that would have been withdrawn.
    withdrawals: Recent,
    /// When the breaker opened (monotonic, and wall-clock ms for the release flag).
    open: Option<(Instant, i64)>,
    /// Withdrawals held since it opened.
    held: u64,
}

/// A compact key for one attestation (collisions only merge two in the counts).
fn key(did: &str, rkey: &str) -> u64 {
    static HASHER: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let mut h = HASHER
        .get_or_init(std::hash::RandomState::new)
        .build_hasher();
    (did, rkey).hash(&mut h);
    std::hash::Hasher::finish(&h)
}

/// The guard. One per manager.
#[derive(Debug)]
pub(super) struct Guard {
    options: Options,
    dns: dns::Resolver,
    store: Store,
    health: Health,
    state: Mutex<State>,
}

impl Guard {
    pub(super) fn new(options: Options, dns: dns::Resolver, store: Store, health: Health) -> Guard {
        health.update(|h| h.guard = Some(health::Guard::default()));
        Guard {
            options,
            dns,
            store,
            health,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(why)` when the labeler's own resolver fails every canary name.
    pub(super) async fn resolver_degraded(&self) -> Option<String> {
        if self.options.canaries.is_empty() {
            return None;
        }
        if let Some((at, verdict)) = &self.lock().probe
            && at.elapsed()
                < if verdict.is_some() {
                    DEGRADED_PROBE_TTL
                } else {
                    PROBE_TTL
                }
        {
            return verdict.clone();
        }
        let mut failures = Vec::new();
        for name in &self.options.canaries {
            match self.dns.ip(name, true).await {
                Ok(Answer::Found(_)) => {
                    failures.clear();
                    break;
                }
                Ok(Answer::NxDomain) => failures.push(format!("{name} does not exist")),
                Ok(Answer::NoData) => failures.push(format!("{name} has no address")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let verdict = (!failures.is_empty()).then(|| {
            format!(
                "the labeler's resolver ({}) cannot resolve names that exist: {}",
                self.dns.describe(),
                failures.join("; ")
            )
        });
        let changed = {
            let mut s = self.lock();
            let was = s.probe.as_ref().and_then(|(_, v)| v.clone());
            s.probe = Some((Instant::now(), verdict.clone()));
            was.is_some() != verdict.is_some()
        };
        if changed {
            match &verdict {
                Some(why) => tracing::error!(reason = %why,
                    "DNS resolver degraded: withdrawals are held and staleness is paused"),
                None => tracing::warn!("DNS resolver healthy again: withdrawals resume"),
            }
            metrics::gauge!(telemetry::GUARD_RESOLVER_DEGRADED).set(if verdict.is_some() {
                1.0
            } else {
                0.0
            });
            self.health.update(|h| {
                if let Some(g) = h.guard.as_mut() {
                    g.resolver_degraded = verdict.clone();
                }
            });
        }
        verdict
    }

    /// A standing attestation was re-checked (the breaker's denominator).
    pub(super) fn observe_recheck(&self, did: &str, rkey: &str) {
        let mut s = self.lock();
        s.rechecked.see(key(did, rkey), Instant::now());
        self.evaluate(&mut s);
    }

    /// A standing attestation would be withdrawn: `Ok` to sign it, `Err(why)` to hold it.
    pub(super) async fn allow_withdrawal(
        &self,
        did: &str,
        rkey: &str,
        domain: &str,
    ) -> Result<(), String> {
        if let Some(why) = self.resolver_degraded().await {
            self.count_held();
            return Err(why);
        }
        let open_since_ms = {
            let mut s = self.lock();
            let now = Instant::now();
            s.rechecked.see(key(did, rkey), now);
            s.withdrawals.see(key(did, rkey), now);
            self.evaluate(&mut s);
            match s.open {
                None => return Ok(()),
                Some((since, _)) if since.elapsed() >= self.options.max_hold => {
                    tracing::error!(did, domain, held_for = ?since.elapsed(),
                        "breaker open longer than breakerMaxHold: letting this withdrawal through");
                    return Ok(());
                }
                Some((_, wall_ms)) => wall_ms,
            }
        };
        let released = self
            .store
            .call(|s| s.breaker_released_ms())
            .await
            .ok()
            .flatten();
        if released.is_some_and(|r| r >= open_since_ms) {
            tracing::warn!(
                did,
                domain,
                "breaker released by an operator: withdrawal signed"
            );
            return Ok(());
        }
        self.count_held();
        let (rechecked, withdrawals) = self.totals(&mut self.lock());
        Err(format!(
            "withdrawal held by the breaker: {withdrawals} of {rechecked} standing attestations \
             re-checked in the last {} would be withdrawn (more than {BREAKER_SHARE_PERCENT}%), \
             which looks like the labeler's fault rather than the operators'",
            humantime::format_duration(self.options.window)
        ))
    }

    fn count_held(&self) {
        metrics::counter!(telemetry::GUARD_HELD).increment(1);
        let held = {
            let mut s = self.lock();
            s.held += 1;
            s.held
        };
        self.health.update(|h| {
            if let Some(g) = h.guard.as_mut() {
                g.held = held;
            }
        });
    }

    /// (standing attestations re-checked, would-be withdrawals) within the window.
    fn totals(&self, s: &mut State) -> (u64, u64) {
        let since = Instant::now()
            .checked_sub(self.options.window)
            .unwrap_or_else(Instant::now);
        (
            s.rechecked.count_since(since),
            s.withdrawals.count_since(since),
        )
    }

    /// Opens or closes the breaker from the window's counts.
    fn evaluate(&self, s: &mut State) {
        let (rechecked, withdrawals) = self.totals(s);
        let trip = withdrawals >= BREAKER_MIN
            && withdrawals * 100 > BREAKER_SHARE_PERCENT * rechecked.max(1);
        match (trip, s.open) {
            (true, None) => {
                let wall_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                s.open = Some((Instant::now(), wall_ms));
                s.held = 0;
                tracing::error!(
                    withdrawals,
                    rechecked,
                    window = %humantime::format_duration(self.options.window),
                    "BREAKER OPEN: too many standing attestations would lose their labels at \
                     once; holding every withdrawal (release with `labeler breaker release`)"
                );
                metrics::gauge!(telemetry::GUARD_BREAKER_OPEN).set(1.0);
                self.health.update(|h| {
                    if let Some(g) = h.guard.as_mut() {
                        g.breaker_open_since = Some(SystemTime::now());
                        g.breaker_reason = Some(format!(
                            "{withdrawals} of {rechecked} standing attestations re-checked would be withdrawn"
                        ));
                        g.held = 0;
                    }
                });
            }
            (false, Some(_)) => {
                s.open = None;
                tracing::warn!(
                    withdrawals,
                    rechecked,
                    held = s.held,
                    "breaker closed: the withdrawal rate is back under the threshold"
                );
                metrics::gauge!(telemetry::GUARD_BREAKER_OPEN).set(0.0);
                self.health.update(|h| {
                    if let Some(g) = h.guard.as_mut() {
                        g.breaker_open_since = None;
                        g.breaker_reason = None;
                    }
                });
            }
            _ => {}
        }
    }
}
