//! The verification manager: turns Jetstream events and scheduled re-checks into committed
//! decisions.
//!
//! For every attestation it (1) confirms the record at the author's PDS when
//! `verifyRecordsAtPds` is on — Jetstream is unauthenticated (`jetstream.md` §7) — (2)
//! validates it against the lexicon, (3) runs the checks, (4) decides the attestation's new
//! standing and the DID's labels, and (5) commits the attestation, its report, the labels and
//! the Jetstream cursor in one store transaction. The live feed publishes the labels once the
//! transaction commits.
//!
//! Trust rules:
//! - a label is granted only when every check passes;
//! - a definitive failure is confirmed by an immediate cache-bypassing re-check before a label
//!   is withdrawn;
//! - "could not decide" (DNS timeout, SERVFAIL, PLC or PDS outage) never withdraws a label; it
//!   schedules a retry with backoff, and only an attestation that has gone without any
//!   definitive answer for longer than `staleAfter` loses its standing.
//!
//! Work for one DID is serialized (a per-DID queue), so decisions about a DID never race;
//! different DIDs are verified concurrently, up to `verifyConcurrency`, and a slow DID never
//! holds up another.
//! Re-processing an event (after a rewind or a crash) changes nothing: an exact duplicate is
//! recognised by its repo revision, and everything else converges on the PDS's current state.
//!
//! The cursor: events are processed out of order across workers, so the cursor saved with a
//! commit is a *watermark* — the newest `time_us` such that every event up to it has been
//! committed. A crash can only make the labeler replay work, never skip it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::attestation::{self, Record};
use crate::identity;
use crate::keys::SigningKey;
use crate::label;
use crate::store::{self, Account, Attestation, Changes, DidState, RecordRev, Store};
use crate::telemetry;
use crate::verify::{self, Outcome, Report};

mod decide;
mod watermark;

use decide::{advance, decide_labels, failing_reasons, note_report};
use watermark::Watermark;

/// Capacity of the command channel into the manager. Jetstream pauses (disconnects and later
/// resumes from its cursor) rather than wait when it is full, so this only bounds memory:
/// ~1,000 small events.
pub const COMMAND_CAPACITY: usize = 1024;

/// Commands accepted but not finished (running, or queued behind their DID) before the
/// manager stops reading its channel. Bounds memory and pushes back on Jetstream (which
/// pauses) and the scheduler (which waits).
const MAX_PENDING: usize = 1024;

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

/// Work for the manager. Jetstream events carry their `time_us` as `cursor`.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// An attestation record was created or updated (Jetstream's copy, not yet trusted).
    Put {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
        /// Repo revision of the commit.
        rev: String,
        /// The record as Jetstream delivered it.
        record: Value,
        /// Its CID, as Jetstream delivered it.
        cid: Option<String>,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// An attestation record was deleted.
    Delete {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
        /// Repo revision of the commit.
        rev: String,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// A tracked DID's identity (handle, keys, PDS) changed: re-verify it now.
    Identity {
        /// The DID.
        did: String,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// A tracked DID's account status changed.
    Account {
        /// The DID.
        did: String,
        /// Whether the account is active.
        active: bool,
        /// Why not, if inactive.
        status: Option<String>,
        /// The event's `time_us`.
        cursor: i64,
    },
    /// Every Jetstream event up to `cursor` has been handed over (skipped ones included).
    Checkpoint {
        /// A `time_us`.
        cursor: i64,
    },
    /// Re-verify one attestation (from the scheduler).
    Recheck {
        /// Author DID.
        did: String,
        /// Record key.
        rkey: String,
    },
}

impl Command {
    fn did(&self) -> Option<&str> {
        match self {
            Command::Put { did, .. }
            | Command::Delete { did, .. }
            | Command::Identity { did, .. }
            | Command::Account { did, .. }
            | Command::Recheck { did, .. } => Some(did),
            Command::Checkpoint { .. } => None,
        }
    }

    /// The Jetstream `time_us` the command carries (`None` for scheduler re-checks).
    pub fn cursor(&self) -> Option<i64> {
        match self {
            Command::Put { cursor, .. }
            | Command::Delete { cursor, .. }
            | Command::Identity { cursor, .. }
            | Command::Account { cursor, .. }
            | Command::Checkpoint { cursor } => Some(*cursor),
            Command::Recheck { .. } => None,
        }
    }
}

/// Manager errors. Only storage failures stop the manager; everything about an operator's
/// records or DNS is a verdict, not an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed repeatedly.
    #[error("giving up after repeated database failures: {0}")]
    Store(#[from] store::Error),
    /// A worker task panicked.
    #[error("a verification worker failed: {0}")]
    Worker(String),
}

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
    /// Time source.
    pub clock: Clock,
}

/// DIDs whose identity and account events matter, shared with the Jetstream client so it
/// can drop everyone else's (the stream carries them for every account on the network)
/// without a database lookup.
///
/// It holds every DID with attestations (loaded at startup) and every DID the Jetstream
/// client has handed an attestation record for. The client adds a DID *before* it reads the
/// next event, so an account event right behind a DID's first attestation is never dropped
/// while that attestation is still being verified. It only grows while the daemon runs (a
/// DID whose attestations are all deleted stays until the next start, and the manager then
/// ignores its events with one indexed lookup); it is rebuilt from the database on restart.
#[derive(Clone, Debug, Default)]
pub struct Tracked(Arc<RwLock<HashSet<String>>>);

impl Tracked {
    /// A set holding `dids` (for tools and tests; the manager fills its own from the store).
    pub fn from_dids<I: IntoIterator<Item = String>>(dids: I) -> Tracked {
        Tracked(Arc::new(RwLock::new(dids.into_iter().collect())))
    }

    /// Whether `did`'s identity and account events should be passed on.
    pub fn contains(&self, did: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(did)
    }

    /// Starts passing on `did`'s identity and account events.
    pub fn insert(&self, did: &str) {
        if !self.contains(did) {
            self.0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(did.to_owned());
        }
    }
}

/// Where the content to verify comes from.
#[derive(Debug)]
enum Source {
    /// A record copy to validate and verify (the PDS's, or Jetstream's when not confirming).
    Record { value: Value, cid: Option<String> },
    /// Re-verify the stored domain and selectors (re-checks without PDS confirmation).
    Stored,
    /// The record does not exist (confirmed delete, or the PDS denies it).
    Gone,
    /// The PDS could not be asked; `fallback` is Jetstream's unconfirmed copy, if any.
    Unreachable {
        reason: String,
        fallback: Option<(Value, Option<String>)>,
    },
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
    /// Builds the manager and loads the tracked DIDs. Does no background work.
    pub fn new(
        store: Store,
        checker: verify::Checker,
        identity: identity::Resolver,
        key: SigningKey,
        options: Options,
    ) -> Result<Manager, store::Error> {
        let tracked = Tracked::default();
        for did in store.tracked_dids()? {
            tracked.insert(&did);
        }
        Ok(Manager {
            shared: Arc::new(Shared {
                store,
                checker,
                identity,
                key,
                options,
                tracked,
                watermark: Mutex::new(Watermark::default()),
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
                    pending += 1;
                    if let Some(queue) = busy.get_mut(did) {
                        queue.push_back(cmd);
                    } else {
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
                    tracing::error!(did, error = %e, "verification failed during shutdown");
                }
                Err(e) => tracing::error!(error = %e, "verification task failed"),
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
                tracing::warn!(error = %e, attempt, "database operation failed; retrying");
                metrics::counter!(telemetry::MANAGER_FAILURES, "reason" => "store").increment(1);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

impl Shared {
    /// The DID's stored attestations (retrying transient database errors).
    async fn attestations(&self, did: &str) -> Result<Vec<Attestation>, Error> {
        let did = did.to_owned();
        with_retries(|| {
            let (store, did) = (self.store.clone(), did.clone());
            async move { store.call(move |s| s.attestations_for(&did)).await }
        })
        .await
    }

    /// One stored attestation.
    async fn attestation(&self, did: &str, rkey: &str) -> Result<Option<Attestation>, Error> {
        Ok(self
            .attestations(did)
            .await?
            .into_iter()
            .find(|a| a.rkey == rkey))
    }

    async fn handle(&self, cmd: Command) -> Result<(), Error> {
        let cursor = cmd.cursor();
        let result = match cmd {
            Command::Put {
                did,
                rkey,
                rev,
                record,
                cid,
                cursor,
            } => {
                self.on_record(&did, &rkey, rev, Some((record, cid)), cursor)
                    .await
            }
            Command::Delete {
                did,
                rkey,
                rev,
                cursor,
            } => self.on_record(&did, &rkey, rev, None, cursor).await,
            Command::Identity { did, .. } => self.on_identity(&did).await,
            Command::Account {
                did,
                active,
                status,
                cursor,
            } => self.on_account(&did, active, status, cursor).await,
            Command::Recheck { did, rkey } => {
                let source = if self.options.verify_records_at_pds {
                    self.fetch(&did, &rkey, None).await
                } else {
                    Source::Stored
                };
                self.reconcile(&did, &rkey, None, source, None).await
            }
            Command::Checkpoint { .. } => Ok(()),
        };
        if let Some(t) = cursor {
            // Finished (committed or skipped): later commits may carry the cursor past it.
            // On error the daemon stops and the event is replayed after restart.
            if result.is_ok() {
                self.watermark
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .finish(t);
            }
        }
        result
    }

    /// A create/update (`copy` is Jetstream's record and CID) or a delete (`copy` is `None`).
    /// With PDS confirmation, both only trigger a fetch of the record's current state at the
    /// author's PDS, which decides; without it, Jetstream's word is taken.
    async fn on_record(
        &self,
        did: &str,
        rkey: &str,
        rev: String,
        copy: Option<(Value, Option<String>)>,
        cursor: i64,
    ) -> Result<(), Error> {
        if self.duplicate(did, rkey, &rev).await? {
            return Ok(());
        }
        let source = match copy {
            _ if self.options.verify_records_at_pds => self.fetch(did, rkey, copy).await,
            Some((value, cid)) => Source::Record { value, cid },
            None => Source::Gone,
        };
        self.reconcile(did, rkey, Some(rev), source, Some(cursor))
            .await
    }

    /// True when this exact commit was already applied. With PDS confirmation only an equal
    /// revision counts: the PDS copy is the truth, so older or forged revisions just converge
    /// on it. Without confirmation Jetstream is trusted, and an older revision is stale.
    async fn duplicate(&self, did: &str, rkey: &str, rev: &str) -> Result<bool, Error> {
        let (d, r) = (did.to_owned(), rkey.to_owned());
        let stored = with_retries(|| {
            let (store, d, r) = (self.store.clone(), d.clone(), r.clone());
            async move { store.call(move |s| s.record_rev(&d, &r)).await }
        })
        .await?;
        let dup = stored.is_some_and(|s| {
            if self.options.verify_records_at_pds {
                s.rev == rev
            } else {
                s.rev.as_str() >= rev
            }
        });
        if dup {
            metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "already-applied")
                .increment(1);
            tracing::debug!(did, rkey, rev, "event already applied; skipping");
        }
        Ok(dup)
    }

    /// Asks the author's PDS for the current record.
    async fn fetch(
        &self,
        did: &str,
        rkey: &str,
        fallback: Option<(Value, Option<String>)>,
    ) -> Source {
        match self.identity.get_record(did, attestation::NSID, rkey).await {
            Ok(Some(copy)) => Source::Record {
                value: copy.value,
                cid: copy.cid,
            },
            Ok(None) => Source::Gone,
            Err(e) if e.is_definitive() => {
                tracing::info!(did, rkey, error = %e, "DID does not resolve; treating the record as gone");
                Source::Gone
            }
            Err(e) => Source::Unreachable {
                reason: format!("could not fetch the record from the author's PDS: {e}"),
                fallback,
            },
        }
    }

    async fn on_identity(&self, did: &str) -> Result<(), Error> {
        self.identity.forget(did);
        let rkeys: Vec<String> = self
            .attestations(did)
            .await?
            .into_iter()
            .map(|a| a.rkey)
            .collect();
        if rkeys.is_empty() {
            return Ok(());
        }
        tracing::info!(
            did,
            attestations = rkeys.len(),
            "identity changed; re-verifying"
        );
        for rkey in rkeys {
            let source = if self.options.verify_records_at_pds {
                self.fetch(did, &rkey, None).await
            } else {
                Source::Stored
            };
            self.reconcile(did, &rkey, None, source, None).await?;
        }
        Ok(())
    }

    async fn on_account(
        &self,
        did: &str,
        active: bool,
        status: Option<String>,
        cursor: i64,
    ) -> Result<(), Error> {
        if self.attestations(did).await?.is_empty() {
            // A DID whose attestations were all deleted (or never confirmed): nothing to do.
            return Ok(());
        }
        let (active, status) = if self.options.verify_records_at_pds {
            // Account events are unauthenticated claims too: ask the PDS.
            match self.identity.repo_status(did).await {
                Ok(s) => (s.active, s.status),
                Err(e) if e.is_definitive() => (false, Some("deleted".to_owned())),
                Err(e) => {
                    tracing::warn!(did, claimed_active = active, error = %e,
                        "account event could not be confirmed at the PDS; ignoring it for now");
                    metrics::counter!(telemetry::MANAGER_FAILURES, "reason" => "account-unconfirmed")
                        .increment(1);
                    return Ok(());
                }
            }
        } else {
            (active, status)
        };
        tracing::info!(
            did,
            active,
            status = status.as_deref().unwrap_or(""),
            "account status"
        );
        let account = Account { active, status };
        self.commit(did.to_owned(), Some(cursor), move |_, changes| {
            changes.account = Some(account.clone());
        })
        .await
    }

    /// Brings one attestation in line with `source` and commits the outcome.
    async fn reconcile(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<String>,
        source: Source,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let rev_entry = |deleted: bool| {
            rev.clone().map(|rev| RecordRev {
                rkey: rkey.to_owned(),
                rev,
                deleted,
            })
        };
        let now = self.options.clock.now_ms();
        let (value, cid, confirmed) = match source {
            Source::Gone => {
                let rkey_owned = rkey.to_owned();
                let tomb = rev_entry(true);
                tracing::info!(did, rkey, "attestation deleted");
                return self
                    .commit(did.to_owned(), cursor, move |state, changes| {
                        if state.attestation(&rkey_owned).is_some() {
                            changes.delete.push(rkey_owned.clone());
                        }
                        changes.revs.extend(tomb.clone());
                    })
                    .await;
            }
            Source::Unreachable { reason, fallback } => {
                let Some((value, cid)) = fallback else {
                    return self
                        .undecided_without_record(did, rkey, reason, cursor)
                        .await;
                };
                // Only Jetstream's copy: never labelled; verified once the PDS answers.
                tracing::warn!(did, rkey, %reason, "record not confirmed; will retry");
                (value, cid, Some(reason))
            }
            Source::Record { value, cid } => (value, cid, None),
            Source::Stored => {
                let Some(a) = self.attestation(did, rkey).await? else {
                    return Ok(());
                };
                let value = serde_json::json!({
                    "$type": attestation::NSID,
                    "domain": a.domain,
                    "dkimSelectors": a.selectors,
                    "createdAt": a.created_at.clone().unwrap_or_else(label::now_cts),
                });
                (value, a.record_cid, None)
            }
        };

        let record = match Record::from_json(&value) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(did, rkey, reason = %e, "attestation record is invalid; not verifying it");
                let domain = value
                    .get("domain")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(253)
                    .collect::<String>();
                let report = note_report(did, &domain, Outcome::Fail, e.to_string());
                let selectors = Vec::new();
                return self
                    .store_verdict(
                        did,
                        rkey,
                        rev_entry(false),
                        domain,
                        selectors,
                        None,
                        cid,
                        report,
                        cursor,
                        now,
                    )
                    .await;
            }
        };

        if let Some(reason) = confirmed {
            let report = note_report(did, &record.domain, Outcome::CouldNotDecide, reason);
            // Not confirmed: no revision recorded, so a replay retries it.
            return self
                .store_verdict(
                    did,
                    rkey,
                    None,
                    record.domain,
                    record.dkim_selectors,
                    Some(record.created_at),
                    cid,
                    report,
                    cursor,
                    now,
                )
                .await;
        }

        let mut report = self
            .checker
            .check(did, &record.domain, &record.dkim_selectors, false)
            .await;
        if report.verdict == Outcome::Fail {
            // Confirm a definitive failure with fresh queries before acting on it
            // (mail-dns.md §6: a resolver can fake absence).
            let fresh = self
                .checker
                .check(did, &record.domain, &record.dkim_selectors, true)
                .await;
            if fresh.verdict != Outcome::Fail {
                tracing::info!(did, domain = %record.domain, verdict = ?fresh.verdict,
                    "failure not confirmed by a fresh re-check");
            }
            report = fresh;
        }
        self.store_verdict(
            did,
            rkey,
            rev_entry(false),
            record.domain,
            record.dkim_selectors,
            Some(record.created_at),
            cid,
            report,
            cursor,
            now,
        )
        .await
    }

    /// A re-check whose record could not be fetched: counts as an undecided round for the
    /// stored attestation (nothing to do if there is none).
    async fn undecided_without_record(
        &self,
        did: &str,
        rkey: &str,
        reason: String,
        cursor: Option<i64>,
    ) -> Result<(), Error> {
        let Some(a) = self.attestation(did, rkey).await? else {
            tracing::warn!(did, rkey, %reason, "record could not be fetched and is unknown; skipping");
            return self.commit(did.to_owned(), cursor, |_, _| {}).await;
        };
        let report = note_report(did, &a.domain, Outcome::CouldNotDecide, reason);
        let now = self.options.clock.now_ms();
        self.store_verdict(
            did,
            rkey,
            None,
            a.domain,
            a.selectors,
            a.created_at,
            a.record_cid,
            report,
            cursor,
            now,
        )
        .await
    }

    /// Commits a verification outcome for one attestation and the DID's resulting labels.
    #[allow(clippy::too_many_arguments)]
    async fn store_verdict(
        &self,
        did: &str,
        rkey: &str,
        rev: Option<RecordRev>,
        domain: String,
        selectors: Vec<String>,
        created_at: Option<String>,
        cid: Option<String>,
        report: Report,
        cursor: Option<i64>,
        now: i64,
    ) -> Result<(), Error> {
        let outcome = report.verdict;
        let relay = report.relay_member();
        let report_json = serde_json::to_string(&report).unwrap_or_else(|_| "{}".to_owned());
        let opts = self.options.clone();
        let (did_s, rkey_s) = (did.to_owned(), rkey.to_owned());
        let jitter: f64 = rand::random();
        tracing::info!(
            did,
            rkey,
            domain = %domain,
            verdict = outcome.as_str(),
            reasons = %failing_reasons(&report),
            "verification"
        );
        metrics::counter!(telemetry::VERIFICATIONS, "outcome" => outcome.as_str()).increment(1);
        self.commit(did.to_owned(), cursor, move |state, changes| {
            let prev = state.attestation(&rkey_s).filter(|p| {
                // A record that now names another domain or other selectors starts afresh.
                p.domain == domain && p.selectors == selectors
            });
            let first_seen_ms = state.attestation(&rkey_s).map_or(now, |p| p.first_seen_ms);
            let next = advance(prev, outcome, relay, now, jitter, &opts);
            changes.put.push(Attestation {
                did: did_s.clone(),
                rkey: rkey_s.clone(),
                domain: domain.clone(),
                selectors: selectors.clone(),
                record_cid: cid.clone(),
                rev: rev
                    .as_ref()
                    .map(|r| r.rev.clone())
                    .or_else(|| prev.and_then(|p| p.rev.clone())),
                created_at: created_at.clone(),
                first_seen_ms,
                verdict: next.verdict,
                standing: next.standing,
                relay_member: next.relay_member,
                report: Some(report_json.clone()),
                checked_ms: Some(now),
                last_definitive_ms: next.last_definitive_ms,
                consecutive_failures: next.consecutive_failures,
                consecutive_undecided: next.consecutive_undecided,
                next_check_ms: next.next_check_ms,
            });
            changes.revs.extend(rev.clone());
        })
        .await
    }

    /// Runs `mutate` and the label decision in one store transaction, with the cursor
    /// watermark.
    ///
    /// The watermark is computed just before the transaction: events still unfinished stay in
    /// `inflight`, and an event is only finished after its commit, so the value can only be
    /// conservative.
    ///
    /// `mutate` is `Fn`, not `FnOnce`: a transaction that fails (even at COMMIT, after the
    /// changes were computed) is rolled back and retried, and the retry must compute the same
    /// changes again from the state it reads.
    async fn commit(
        &self,
        did: String,
        cursor: Option<i64>,
        mutate: impl Fn(&DidState, &mut Changes) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let mutate = Arc::new(mutate);
        let relay_enabled = self.options.relay_enabled;
        let committed = with_retries(|| {
            let store = self.store.clone();
            let (did, src, key) = (did.clone(), self.options.src.clone(), self.key.clone());
            let mutate = mutate.clone();
            let cursor = cursor.and_then(|t| {
                self.watermark
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .value(Some(t))
            });
            async move {
                store
                    .call(move |s| {
                        s.update_did(&did, &src, |state| {
                            let mut changes = Changes::default();
                            mutate(state, &mut changes);
                            changes.labels =
                                decide_labels(&did, &src, state, &changes, relay_enabled)
                                    .into_iter()
                                    .map(|l| l.sign(&key))
                                    .collect();
                            changes.cursor = cursor;
                            Ok::<_, std::convert::Infallible>(changes)
                        })
                    })
                    .await
            }
        })
        .await?;
        let Ok(committed) = committed;
        for l in &committed.labels {
            let x = &l.signed.label;
            if x.neg {
                metrics::counter!(telemetry::LABELS_NEGATED, "val" => x.val.clone()).increment(1);
                tracing::info!(did = %did, val = %x.val, seq = l.seq, "label negated");
            } else {
                metrics::counter!(telemetry::LABELS_CREATED, "val" => x.val.clone()).increment(1);
                tracing::info!(did = %did, val = %x.val, seq = l.seq, "label created");
            }
        }
        Ok(())
    }
}
