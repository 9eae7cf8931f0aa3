//! The verification manager: turns Jetstream events and scheduled re-checks into committed
//! decisions.
//!
//! For every attestation it (1) confirms the record at the author's PDS when
//! `verifyRecordsAtPds` is on — Jetstream is unauthenticated (`docs/jetstream.md` §4) — (2)
//! validates it against the lexicon, (3) runs the checks, (4) decides the attestation's new
//! standing and the DID's labels, and (5) commits the attestation, its report, the labels and
//! the Jetstream cursor in one store transaction. The live feed publishes the labels once the
//! transaction commits.
//!
//! Trust rules:
//! - a label is granted only when every check passes;
//! - a record is gone only on proof: its repo is active and the PDS says the record is not
//!   there (`pds.rs`); anything about an inactive repo is account state — labels withheld,
//!   attestation kept — and a reactivated account gets its labels back at the next re-check;
//! - a definitive failure is looked at again without caches, then confirmed through an
//!   independent path (`confirmDnsServers`, or each zone's authoritative servers) before it
//!   counts; and the guard (`guard.rs`) holds withdrawals while the labeler's own resolver
//!   fails names it knows exist, or when too many would happen at once (the breaker);
//! - "could not decide" (DNS timeout, SERVFAIL, PLC or PDS outage, or the `verifyDeadline`
//!   passing) never withdraws a label; it schedules a retry with backoff, and only an
//!   attestation that has gone without any definitive answer for longer than `staleAfter`
//!   loses its standing (never while the resolver is degraded).
//!
//! Work for one DID is serialized (a per-DID queue), so decisions about a DID never race;
//! different DIDs are verified concurrently, up to `verifyConcurrency`, and a slow DID never
//! holds up another. What one DID can cost is bounded: its queued commands are merged
//! (`command::coalesce`: the latest state of a record supersedes older commands for it, and
//! past [`QUEUE_PER_DID`] they collapse into one re-read of its repo), every record's network
//! work runs under one `verifyDeadline`, and a DID holds at most [`MAX_ATTESTATIONS`]
//! attestations (the newest beyond are refused, visibly).
//! Re-processing an event (after a rewind or a crash) changes nothing: an exact duplicate is
//! recognised by its repo revision, and everything else converges on the PDS's current state.
//!
//! The cursor: events are processed out of order across workers, so the cursor saved with a
//! commit is a *watermark* — the newest `time_us` such that every event up to it has been
//! committed. A crash can only make the labeler replay work, never skip it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::identity;
use crate::keys::SigningKey;
use crate::store::{self, Store};
use crate::telemetry;
use crate::verify;

mod clock;
mod command;
mod decide;
mod guard;
mod handle;
mod pds;
mod tracked;
mod watermark;

pub use clock::Clock;
pub use command::Command;
pub use guard::Options as GuardOptions;
pub use tracked::Tracked;
use watermark::Watermark;

/// Capacity of the command channel into the manager. Jetstream pauses (disconnects and later
/// resumes from its cursor) rather than wait when it is full, so this only bounds memory:
/// ~1,000 small events.
pub const COMMAND_CAPACITY: usize = 1024;

/// Commands accepted but not finished (running, or queued behind their DID) before the
/// manager stops reading its channel. Bounds memory and pushes back on Jetstream (which
/// pauses) and the scheduler (which waits). One DID holds at most `QUEUE_PER_DID + 1` of
/// them, so no DID can fill it for the others.
const MAX_PENDING: usize = 4096;

/// Commands queued behind a DID's running one before they collapse into one re-read of its
/// repo (with PDS confirmation).
pub const QUEUE_PER_DID: usize = 8;

/// Attestations one DID may hold; the newest beyond are refused, with the reason shown by
/// getVerification. Keeps one DID's re-checks (and one identity event's cost) flat.
pub const MAX_ATTESTATIONS: usize = 16;

/// `listRecords` pages read when re-reading a DID's repo (100 records each).
const MAX_LIST_PAGES: usize = 10;

/// How soon a withdrawal the guard held is tried again.
const HOLD_RETRY: Duration = Duration::from_secs(5 * 60);

/// How soon a DID whose account event could not be confirmed is re-checked by default (then
/// with the undecided backoff).
pub const ACCOUNT_RETRY: Duration = Duration::from_secs(60);

/// First retry delay for an attestation that could not be decided; doubles each time.
const UNDECIDED_RETRY: Duration = Duration::from_secs(5 * 60);
/// Longest retry delay for an undecided attestation (never more than the re-verify interval).
const UNDECIDED_RETRY_MAX: Duration = Duration::from_secs(4 * 3600);
/// First re-check delay after a definitive failure; doubles each time up to the interval, so
/// an operator who fixes DNS is re-checked soon without hammering a broken domain.
const FAILED_RETRY: Duration = Duration::from_secs(3600);

/// How often the cursor is saved when events are only skipped (no commit carries it).
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Attempts for a store operation before the manager gives up and stops the daemon.
const STORE_ATTEMPTS: u32 = 3;

/// Manager errors. Only storage failures stop the manager; everything about an operator's
/// records or DNS is a verdict, not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed repeatedly.
    #[error("giving up after repeated database failures")]
    Store(#[from] store::Error),
    /// A worker task panicked.
    #[error("a verification worker failed: {0}")]
    Worker(String),
}

/// Manager settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The labeler DID (`src` of every label).
    pub src: String,
    /// Confirm records at the author's PDS (`verifyRecordsAtPds`).
    pub verify_records_at_pds: bool,
    /// Whether relay membership is checked at all (`relaySpfInclude` set).
    pub relay_enabled: bool,
    /// Re-verification period.
    pub reverify_interval: Duration,
    /// How long without a definitive answer before standing is lost.
    pub stale_after: Duration,
    /// Concurrent verifications.
    pub concurrency: usize,
    /// One deadline for all the network work about one record (PDS, PLC, every DNS query).
    pub verify_deadline: Duration,
    /// How soon a DID whose account event could not be confirmed is re-checked
    /// ([`ACCOUNT_RETRY`]).
    pub account_retry: Duration,
    /// Time source.
    pub clock: Clock,
}

/// What a worker needs, shared by all workers.
struct Shared {
    store: Store,
    checker: verify::Checker,
    identity: identity::Resolver,
    key: SigningKey,
    options: Options,
    tracked: Tracked,
    watermark: Mutex<Watermark>,
    guard: guard::Guard,
}

impl Shared {
    /// Marks the event at `t` finished: later commits may carry the cursor past it.
    fn finish(&self, t: i64) {
        self.watermark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .finish(t);
    }

    /// The cursor a commit finishing the event at `t` may save.
    fn watermark_value(&self, t: i64) -> Option<i64> {
        self.watermark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .value(Some(t))
    }
}

/// The manager component.
pub struct Manager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("src", &self.shared.options.src)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Builds the manager and loads the tracked DIDs. Does no background work. The guard
    /// reports its state (breaker, resolver) into `health`.
    pub fn new(
        store: Store,
        checker: verify::Checker,
        identity: identity::Resolver,
        key: SigningKey,
        options: Options,
        guard: GuardOptions,
        health: Health,
    ) -> Result<Manager, store::Error> {
        let tracked = Tracked::default();
        for did in store.tracked_dids()? {
            tracked.insert(&did);
        }
        let guard = guard::Guard::new(guard, checker.resolver().clone(), store.clone(), health);
        Ok(Manager {
            shared: Arc::new(Shared {
                store,
                checker,
                identity,
                key,
                options,
                tracked,
                watermark: Mutex::new(Watermark::default()),
                guard,
            }),
        })
    }

    /// The tracked-DID set (for the Jetstream client's cheap filtering).
    pub fn tracked(&self) -> Tracked {
        self.shared.tracked.clone()
    }

    /// Processes commands until `rx` closes or `shutdown` is cancelled.
    ///
    /// Commands about one DID run one at a time, in arrival order; different DIDs run
    /// concurrently, up to `concurrency`. A DID whose PDS or DNS is slow (or hostile) only
    /// delays its own commands, never another DID's. Work in progress when shutdown comes is
    /// abandoned before its commit (it is replayed from the cursor); a commit already started
    /// always completes.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let permits = Arc::new(Semaphore::new(self.shared.options.concurrency.max(1)));
        let mut tasks: JoinSet<(String, Result<(), Error>)> = JoinSet::new();
        // DIDs with a command running, and the commands queued behind it.
        let mut busy: HashMap<String, VecDeque<Command>> = HashMap::new();
        let mut pending = 0usize;
        let mut save_tick = tokio::time::interval(CURSOR_SAVE_EVERY);
        save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(joined) = tasks.join_next() => {
                    let (did, r) = match joined {
                        Ok(done) => done,
                        Err(e) => break Err(Error::Worker(e.to_string())),
                    };
                    pending -= 1;
                    if let Err(e) = r {
                        break Err(e);
                    }
                    match busy.get_mut(&did).and_then(VecDeque::pop_front) {
                        Some(next) => self.spawn(&mut tasks, &permits, &shutdown, next),
                        None => {
                            busy.remove(&did);
                        }
                    }
                }
                _ = save_tick.tick() => {
                    if let Err(e) = self.save_idle_cursor().await {
                        break Err(e);
                    }
                }
                cmd = rx.recv(), if pending < MAX_PENDING => {
                    let Some(cmd) = cmd else { break Ok(()) };
                    if let Command::Checkpoint { cursor } = cmd {
                        self.lock_watermark().observe(cursor);
                        continue;
                    }
                    let Some(did) = cmd.did() else { continue };
                    if let Some(t) = cmd.cursor() {
                        self.lock_watermark().begin(t);
                    }
                    if let Some(queue) = busy.get_mut(did) {
                        let before = queue.len();
                        let merged = command::coalesce(
                            queue,
                            cmd,
                            QUEUE_PER_DID,
                            self.shared.options.verify_records_at_pds,
                        );
                        pending = pending + queue.len() - before;
                        for t in merged {
                            self.shared.finish(t);
                        }
                    } else {
                        pending += 1;
                        busy.insert(did.to_owned(), VecDeque::new());
                        self.spawn(&mut tasks, &permits, &shutdown, cmd);
                    }
                }
            }
        };
        // Running commands see the token and stop before their commit (or finish it).
        shutdown.cancel();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((did, Err(e))) => {
                    tracing::error!(did, error = %crate::telemetry::Chain(&e), "verification failed during shutdown");
                }
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::Chain(&e), "verification task failed")
                }
                Ok(_) => {}
            }
        }
        if result.is_ok() {
            // Best effort: keep what was committed.
            let _ = self.save_idle_cursor().await;
        }
        result
    }

    /// Runs one command on its own task once a concurrency permit is free.
    fn spawn(
        &self,
        tasks: &mut JoinSet<(String, Result<(), Error>)>,
        permits: &Arc<Semaphore>,
        shutdown: &CancellationToken,
        cmd: Command,
    ) {
        let (shared, permits, shutdown) = (self.shared.clone(), permits.clone(), shutdown.clone());
        let did = cmd.did().unwrap_or_default().to_owned();
        tasks.spawn(async move {
            let result = tokio::select! {
                // Abandoning here is safe: nothing was committed, so neither was the cursor,
                // and the event will be replayed.
                _ = shutdown.cancelled() => Ok(()),
                r = async {
                    let _permit = permits.acquire_owned().await;
                    shared.handle(cmd).await
                } => r,
            };
            (did, result)
        });
    }

    fn lock_watermark(&self) -> std::sync::MutexGuard<'_, Watermark> {
        self.shared
            .watermark
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Saves the watermark when it moved without a commit carrying it (skipped events).
    async fn save_idle_cursor(&self) -> Result<(), Error> {
        let value = {
            let wm = self.lock_watermark();
            match wm.value(None) {
                Some(v) if wm.saved.is_none_or(|s| v > s) => v,
                _ => return Ok(()),
            }
        };
        with_retries(|| {
            let store = self.shared.store.clone();
            async move { store.call(move |s| s.save_cursor(value)).await }
        })
        .await?;
        let mut wm = self.lock_watermark();
        wm.saved = Some(wm.saved.map_or(value, |s| s.max(value)));
        Ok(())
    }

    /// Processes one command to completion, bypassing the queues (tests, one-shot tools).
    pub async fn process(&self, cmd: Command) -> Result<(), Error> {
        if let Some(t) = cmd.cursor() {
            self.lock_watermark().begin(t);
        }
        self.shared.handle(cmd).await
    }
}

/// Retries a store operation a few times before giving up.
async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, store::Error>>,
{
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=STORE_ATTEMPTS {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt == STORE_ATTEMPTS => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::Chain(&e), attempt, "database operation failed; retrying");
                metrics::counter!(telemetry::MANAGER_FAILURES, "reason" => "store").increment(1);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}
