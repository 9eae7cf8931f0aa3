//! The re-verification scheduler: every attestation is checked again `reverifyInterval` after
//! its last check (sooner after failures or undecided checks; the manager sets the time).
//!
//! Next-check times live in SQLite, so the schedule survives restarts. Each sweep *claims* due
//! attestations (pushing their next check out by a lease) and hands them to the manager; the
//! manager's commit sets the real next time. A crash mid-check therefore only delays that
//! attestation by the lease. Spreading: the manager jitters each next-check time by ±10%, and
//! after downtime the overdue backlog drains at the manager's pace (bounded queues), not all
//! at once.
//!
//! Between sweeps it sleeps until the next attestation is due (at most `max_sleep`), and
//! wakes early whenever a commit may have brought a re-check closer
//! ([`Store::schedule_changes`]): a new attestation with a 10 s `reverifyInterval` is
//! re-checked after 10 s, not after the next minute-long sleep.
//!
//! Commits by other processes (`labeler recheck DID`, which makes a DID's attestations due
//! now) notify nothing in this process, so the scheduler also polls SQLite's
//! `PRAGMA data_version` (a [`Watcher`]) every `external_poll` and sweeps when another
//! connection has committed: an operator's re-check starts within about a second.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::manager::{Clock, Command};
use crate::store::{Store, Watcher};

/// Scheduler settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Attestations claimed per sweep.
    pub batch: usize,
    /// How long a claimed attestation is held before it may be claimed again.
    pub lease: Duration,
    /// Longest sleep between sweeps (bounds how late a newly due attestation can be noticed).
    pub max_sleep: Duration,
    /// Time source (the same one the manager uses for next-check times).
    pub clock: Clock,
    /// How often to look for commits by other processes (`PRAGMA data_version`); `None`
    /// watches this process's commits only.
    pub external_poll: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch: 64,
            lease: Duration::from_secs(15 * 60),
            max_sleep: Duration::from_secs(60),
            clock: Clock::System,
            external_poll: Some(Duration::from_secs(1)),
        }
    }
}

/// The scheduler component.
#[derive(Debug)]
pub struct Scheduler {
    store: Store,
    tx: mpsc::Sender<Command>,
    options: Options,
}

impl Scheduler {
    /// A scheduler that sends re-checks to `tx`.
    pub fn new(store: Store, tx: mpsc::Sender<Command>, options: Options) -> Scheduler {
        Scheduler { store, tx, options }
    }

    /// Runs until `shutdown` is cancelled or the manager goes away. Database errors are logged
    /// and retried; they never stop the daemon from serving.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut schedule = self.store.schedule_changes();
        let watcher = match self.options.external_poll {
            Some(_) => match self.store.call(Watcher::new).await {
                Ok(w) => Some(Arc::new(Mutex::new(w))),
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::Chain(&e), "cannot watch the database for re-checks requested by other processes");
                    None
                }
            },
            None => None,
        };
        let poll = self.options.external_poll.unwrap_or(self.options.max_sleep);
        let mut failures = 0u32;
        loop {
            let wait = match self.sweep(&shutdown).await {
                Ok(Some(wait)) => {
                    failures = 0;
                    wait
                }
                Ok(None) => return,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_secs(1 << failures.min(6));
                    tracing::error!(error = %crate::telemetry::Chain(&e), retry_in = ?wait, "re-check sweep failed");
                    wait
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                // The store outlives the scheduler, so the sender never closes under us; if
                // it did, fall back to sleeping.
                changed = schedule.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(wait).await;
                    }
                }
                () = external_commit(watcher.as_ref(), poll) => {}
            }
        }
    }

    /// Claims and dispatches due attestations; returns how long to wait before the next sweep,
    /// or `None` when it should stop.
    async fn sweep(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Duration>, crate::store::Error> {
        let now = self.options.clock.now_ms();
        let (batch, lease) = (self.options.batch, self.options.lease.as_millis() as i64);
        let due = self
            .store
            .call(move |s| s.claim_due(now, lease, batch))
            .await?;
        let full = due.len() == batch;
        if !due.is_empty() {
            tracing::debug!(count = due.len(), "re-checking due attestations");
        }
        for (did, rkey) in due {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                sent = self.tx.send(Command::Recheck { did, rkey }) => {
                    if sent.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
        if full {
            return Ok(Some(Duration::ZERO));
        }
        let next = self.store.call(|s| s.next_due_ms()).await?;
        let now = self.options.clock.now_ms();
        let wait = next.map_or(self.options.max_sleep, |t| {
            Duration::from_millis(t.saturating_sub(now).max(0) as u64)
        });
        Ok(Some(wait.min(self.options.max_sleep)))
    }
}

/// Resolves once another connection (another process) has committed, polling `watcher`
/// every `poll`; never without a watcher. Cancel-safe: the watcher stays behind its lock,
/// so a poll abandoned mid-read loses nothing.
async fn external_commit(watcher: Option<&Arc<Mutex<Watcher>>>, poll: Duration) {
    let Some(watcher) = watcher else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(poll).await;
        let w = Arc::clone(watcher);
        let changed = tokio::task::spawn_blocking(move || {
            w.lock().unwrap_or_else(PoisonError::into_inner).changed()
        })
        .await;
        match changed {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) => {}
            // The sweep's own reads report a broken database; here, just keep polling.
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::telemetry::Chain(&e), "cannot read the database version");
            }
            Err(e) => tracing::debug!(error = %e, "database version poll failed"),
        }
    }
}
