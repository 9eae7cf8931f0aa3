//! The Jetstream consumer: a WebSocket client for the v1 `/subscribe` protocol
//! (`docs/jetstream.md` §1, §2, §3, §5), filtered to `email.atmos.attestation`, uncompressed JSON.
//!
//! It turns each event into a [`Command`] carrying the event's `time_us` and hands it
//! to the manager; it never writes the cursor itself — the manager commits each event's effect
//! and the cursor together. Identity and account events arrive for every account on the
//! network; only those about DIDs we track are passed on, the rest are dropped with a set
//! lookup. Skipped events still move the cursor, through periodic [`Command::Checkpoint`]s.
//!
//! Resilience:
//! - resumes from `cursor − rewind` (v1 cursors are inclusive `time_us`; rewinding a few
//!   seconds absorbs the replay→live reordering of v1 hosts, and the manager's processing is
//!   idempotent);
//! - reconnects with exponential backoff and jitter, and after `idle_timeout` without any
//!   frame (servers ping every 30 s);
//! - the socket reader never waits on processing: when the manager's queue is full it
//!   disconnects, waits for the queue to drain, and resumes from the last event it handed
//!   over, instead of letting the server's pings go unanswered; the events a rewind sends
//!   again that were already handed over are dropped here (`Handed`), so a burst larger
//!   than the queue still makes progress;
//! - malformed frames, unknown kinds and oversized records are logged with the DID and rkey,
//!   counted, and skipped.
//!
//! It reports its connection in [`Health`] (connected, since when, the last frame, why the
//! last session ended) for `/xrpc/_health` and `/metrics`. The last frame's time is written
//! once per checkpoint tick, not per frame: identity and account events for the whole
//! network arrive on this socket.

mod event;

pub use event::{Event, MAX_EVENT_BYTES, ParseError, parse};

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::health::{self, Health};
use crate::manager::{Command, Tracked};
use crate::telemetry;

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `/subscribe` URL (`ws://` or `wss://`).
    pub url: String,
    /// The collection to subscribe to.
    pub collection: String,
    /// How far to rewind the cursor on (re)connect.
    pub rewind: Duration,
    /// Reconnect after this long without any frame.
    pub idle_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How often skipped events' progress is handed to the manager.
    pub checkpoint_every: Duration,
}

impl Options {
    /// Production defaults for `url`.
    pub fn new(url: String) -> Options {
        Options {
            url,
            collection: crate::attestation::NSID.to_owned(),
            rewind: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            checkpoint_every: Duration::from_secs(1),
        }
    }
}

/// Consumer errors (only configuration can stop it; network trouble is retried forever).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL cannot be used.
    #[error("invalid Jetstream URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Largest WebSocket message accepted (the v2 Go client uses 32 MiB; our events are tiny).
const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// How long a connection attempt (TCP, TLS and upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Why a session ended.
enum End {
    Shutdown,
    /// The manager's queue is full: resume once it drains.
    Backpressure,
    /// The connection could not be made.
    Unreachable(String),
    /// An established connection ended.
    Lost(String),
}

/// The Jetstream consumer component.
#[derive(Debug)]
pub struct Client {
    options: Options,
    tx: mpsc::Sender<Command>,
    tracked: Tracked,
    /// Where to resume: the `time_us` of the last event seen (handed over or skipped).
    last: Option<i64>,
    /// The last progress reported to the manager with a checkpoint.
    reported: Option<i64>,
    /// What this process already handed over, for the length of a rewind.
    handed: Handed,
    /// Where the connection's state is reported.
    health: Health,
}

/// Most events remembered by [`Handed`] (about 2 MiB); past it the oldest are forgotten,
/// which only costs the manager an idempotent skip.
const MAX_HANDED: usize = 65_536;

/// The events handed to the manager, remembered for one rewind window so that a reconnect's
/// rewind does not hand them over twice.
///
/// Why: after a pause for backpressure the client resumes from `cursor − rewind`. Were the
/// events of that window that the manager already holds sent again, a window with more
/// events than the queue takes (a burst of records, or a backfill after downtime) would
/// fill the queue with work the manager only skips as already applied, and intake would
/// stop making progress (found by the `faults` bench with 5,000 attestations in half a
/// second). Keyed by `time_us` and a keyed hash of what the event says (DID, kind, and the
/// commit's rkey, rev and CID or the account's status), so only the same event matches even
/// where `time_us` is not unique (a v1 endpoint on a JS2 host after a timestamp import,
/// `docs/jetstream.md` §2; a false match would need a SipHash collision under this process's
/// random key at the same microsecond). Events the first session never handed over — the
/// ones a v1 host drops at its replay→live cutover (`docs/jetstream.md` §3), which is what the
/// rewind is for — are not in the set, so they still go through.
#[derive(Debug, Default)]
struct Handed {
    hasher: std::hash::RandomState,
    order: VecDeque<(i64, u64)>,
    set: HashSet<(i64, u64)>,
}

impl Handed {
    /// The key of a Jetstream command at `time_us` (`None` for commands Jetstream never
    /// sends).
    fn key(&self, time_us: i64, cmd: &Command) -> Option<(i64, u64)> {
        let h = &self.hasher;
        let hash = match cmd {
            Command::Put {
                did,
                rkey,
                rev,
                cid,
                ..
            } => h.hash_one(("put", did, rkey, rev, cid)),
            Command::Delete { did, rkey, rev, .. } => h.hash_one(("delete", did, rkey, rev)),
            Command::Identity { did, .. } => h.hash_one(("identity", did)),
            Command::Account {
                did,
                active,
                status,
                ..
            } => h.hash_one(("account", did, active, status)),
            Command::Checkpoint { .. } | Command::Recheck { .. } | Command::Resync { .. } => {
                return None;
            }
        };
        Some((time_us, hash))
    }

    fn insert(&mut self, key: (i64, u64)) {
        if self.set.insert(key) {
            self.order.push_back(key);
        }
        if self.order.len() > MAX_HANDED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }

    fn contains(&self, key: &(i64, u64)) -> bool {
        self.set.contains(key)
    }

    /// Forgets events older than `cursor`: a subscription from `cursor` never sends them.
    /// Insertion order is nearly time order, so trimming the front is enough to stay bounded.
    fn forget_before(&mut self, cursor: i64) {
        while let Some((t, _)) = self.order.front() {
            if *t >= cursor {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

impl Client {
    /// A consumer that resumes after `cursor` (the manager's saved cursor), sends to `tx` and
    /// reports its connection in `health` (from now on: disconnected until it connects).
    pub fn new(
        options: Options,
        tx: mpsc::Sender<Command>,
        tracked: Tracked,
        cursor: Option<i64>,
        health: Health,
    ) -> Client {
        health.update(|s| s.jetstream = Some(health::Jetstream::default()));
        Client {
            options,
            tx,
            tracked,
            last: cursor,
            reported: cursor,
            handed: Handed::default(),
            health,
        }
    }

    /// Records the session's state in `health`.
    fn report(&self, f: impl FnOnce(&mut health::Jetstream)) {
        self.health
            .update(|s| f(s.jetstream.get_or_insert_with(Default::default)));
    }

    /// The subscription URL for resuming at `cursor`.
    pub fn url(&self, cursor: Option<i64>) -> Result<String, Error> {
        let mut url = reqwest::Url::parse(&self.options.url).map_err(|e| Error::Url {
            url: self.options.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(Error::Url {
                url: self.options.url.clone(),
                reason: "the scheme must be ws:// or wss://".to_owned(),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("wantedCollections", &self.options.collection);
            if let Some(c) = cursor {
                q.append_pair("cursor", &c.to_string());
            }
        }
        Ok(url.into())
    }

    /// Consumes until `shutdown` is cancelled or the manager goes away.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        self.url(None)?;
        if let Some(c) = self.last {
            let age = now_us().saturating_sub(c) / 1_000_000;
            if age > 24 * 3600 {
                tracing::warn!(
                    cursor = c,
                    age_hours = age / 3600,
                    "saved Jetstream cursor is older than a day; Jetstream may no longer hold \
                     the events since then (attestations created meanwhile are only seen when \
                     their authors update them; known ones are still re-verified)"
                );
            }
        }
        let mut backoff = self.options.backoff_min;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let rewind = self.options.rewind.as_micros() as i64;
            let cursor = self.last.map(|t| (t - rewind).max(1));
            if let Some(c) = cursor {
                self.handed.forget_before(c);
            }
            let url = self.url(cursor)?;
            let started = Instant::now();
            let seen_before = self.last;
            let end = match self.connect(&url, &shutdown).await {
                Ok(Some(ws)) => {
                    metrics::counter!(telemetry::JETSTREAM_CONNECTS, "outcome" => "connected")
                        .increment(1);
                    tracing::info!(url = %self.options.url, cursor, "connected to Jetstream");
                    self.report(|j| {
                        j.connected = true;
                        j.since = Some(SystemTime::now());
                    });
                    let end = self.session(ws, &shutdown).await;
                    self.report(|j| {
                        j.connected = false;
                        j.since = Some(SystemTime::now());
                    });
                    end
                }
                Ok(None) => End::Shutdown,
                Err(reason) => {
                    metrics::counter!(telemetry::JETSTREAM_CONNECTS, "outcome" => "failed")
                        .increment(1);
                    End::Unreachable(reason)
                }
            };
            // Report progress even when the session ends.
            self.checkpoint();
            let why = match &end {
                End::Shutdown => None,
                End::Backpressure => Some("paused: the verification queue is full".to_owned()),
                End::Unreachable(r) | End::Lost(r) => Some(r.clone()),
            };
            if let Some(why) = why {
                self.report(|j| {
                    // `since` stays when the connection was already down: it says since when.
                    j.since.get_or_insert_with(SystemTime::now);
                    j.last_error = Some(why);
                });
            }
            match end {
                End::Shutdown => return Ok(()),
                End::Backpressure => {
                    tracing::warn!("verification queue is full; pausing Jetstream intake");
                    if !self.wait_for_room(&shutdown).await {
                        return Ok(());
                    }
                    backoff = self.options.backoff_min;
                    continue;
                }
                End::Lost(ref reason) | End::Unreachable(ref reason) => {
                    if started.elapsed() >= HEALTHY_SESSION || self.last != seen_before {
                        backoff = self.options.backoff_min;
                    }
                    let delay = jittered(backoff);
                    if matches!(end, End::Lost(_)) {
                        tracing::warn!(%reason, retry_in = ?delay, "Jetstream connection lost");
                    } else {
                        tracing::warn!(url = %self.options.url, %reason, retry_in = ?delay,
                            "cannot connect to Jetstream");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(self.options.backoff_max);
                }
            }
        }
    }

    async fn connect(
        &self,
        url: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<crate::wsclient::Ws>, String> {
        crate::wsclient::connect(
            url,
            MAX_MESSAGE_BYTES,
            CONNECT_TIMEOUT,
            "Jetstream",
            shutdown,
        )
        .await
    }

    async fn session<S>(&mut self, mut ws: S, shutdown: &CancellationToken) -> End
    where
        S: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
            + futures_util::Sink<Message, Error = tungstenite::Error>
            + Unpin,
    {
        let mut tick = tokio::time::interval(self.options.checkpoint_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Only frames (pings included) move the idle deadline; the checkpoint tick must not.
        let idle = tokio::time::sleep(self.options.idle_timeout);
        tokio::pin!(idle);
        // When the last frame arrived, and whether `health` has heard of it yet.
        let mut last_frame = None;
        let mut frame_reported = true;
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break End::Shutdown,
                _ = tick.tick() => {
                    self.checkpoint();
                    if !frame_reported {
                        self.report(|j| j.last_frame = last_frame);
                        frame_reported = true;
                    }
                }
                _ = &mut idle => break End::Lost(format!(
                    "no frame for {:?}", self.options.idle_timeout)),
                msg = ws.next() => {
                    let now = tokio::time::Instant::now();
                    idle.as_mut().reset(now + self.options.idle_timeout);
                    last_frame = Some(now.into_std());
                    frame_reported = false;
                    let msg = match msg {
                        None => break End::Lost("the server closed the stream".to_owned()),
                        Some(Err(e)) => break End::Lost(format!("read failed: {e}")),
                        Some(Ok(m)) => m,
                    };
                    match msg {
                        Message::Text(text) => {
                            if let Some(end) = self.on_text(text.as_str()) {
                                break end;
                            }
                        }
                        // tungstenite queued the pong; flush so it goes out now.
                        Message::Ping(_) => {
                            if let Err(e) = ws.flush().await {
                                break End::Lost(format!("write failed: {e}"));
                            }
                        }
                        Message::Close(frame) => break End::Lost(format!(
                            "the server closed the connection: {}",
                            frame.map_or_else(String::new, |f| format!("{} {}", f.code, f.reason))
                        )),
                        Message::Binary(b) => {
                            metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "binary")
                                .increment(1);
                            tracing::warn!(bytes = b.len(), "unexpected binary frame (compressed?); skipped");
                        }
                        Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        };
        if !frame_reported {
            self.report(|j| j.last_frame = last_frame);
        }
        // Best effort: say goodbye so the server frees the subscription at once.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
        end
    }

    /// Handles one text frame; `Some` ends the session.
    fn on_text(&mut self, text: &str) -> Option<End> {
        let (time_us, command) = match parse(text, &self.options.collection) {
            Ok(Event::Command(cmd)) => {
                metrics::counter!(telemetry::JETSTREAM_EVENTS, "kind" => "commit").increment(1);
                if let Command::Put { did, .. } = &cmd {
                    // Before reading on: an account event right behind a DID's first
                    // attestation must not be dropped as untracked (see `Tracked`).
                    self.tracked.insert(did);
                }
                (cmd.cursor(), Some(cmd))
            }
            Ok(Event::Account { did, command }) => {
                let kind = if matches!(command, Command::Identity { .. }) {
                    "identity"
                } else {
                    "account"
                };
                metrics::counter!(telemetry::JETSTREAM_EVENTS, "kind" => kind).increment(1);
                let t = command.cursor();
                if self.tracked.contains(&did) {
                    (t, Some(command))
                } else {
                    metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "untracked")
                        .increment(1);
                    (t, None)
                }
            }
            Ok(Event::Skip { time_us, reason }) => {
                metrics::counter!(telemetry::JETSTREAM_EVENTS, "kind" => "other").increment(1);
                metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => reason).increment(1);
                (Some(time_us), None)
            }
            Err(e) => {
                metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "malformed")
                    .increment(1);
                tracing::warn!(error = %e, "skipping malformed Jetstream event");
                (e.time_us, None)
            }
        };
        if let Some(cmd) = command {
            let key = time_us.and_then(|t| self.handed.key(t, &cmd));
            if key.as_ref().is_some_and(|k| self.handed.contains(k)) {
                metrics::counter!(telemetry::JETSTREAM_SKIPPED, "reason" => "replayed")
                    .increment(1);
            } else {
                match self.tx.try_send(cmd) {
                    Ok(()) => {
                        if let Some(k) = key {
                            self.handed.insert(k);
                        }
                    }
                    // Not handed over: resume from this event (cursors are inclusive).
                    Err(TrySendError::Full(_)) => return Some(End::Backpressure),
                    Err(TrySendError::Closed(_)) => return Some(End::Shutdown),
                }
            }
        }
        if let Some(t) = time_us {
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
        None
    }

    /// Tells the manager how far the stream has been read (skipped events included).
    fn checkpoint(&mut self) {
        if self.last == self.reported {
            return;
        }
        if let Some(cursor) = self.last
            && self.tx.try_send(Command::Checkpoint { cursor }).is_ok()
        {
            self.reported = self.last;
        }
    }

    /// Waits until the manager's queue is at most half full. False on shutdown.
    async fn wait_for_room(&self, shutdown: &CancellationToken) -> bool {
        let max = self.tx.max_capacity();
        loop {
            if self.tx.capacity() * 2 >= max {
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                permit = self.tx.reserve() => match permit {
                    Ok(p) => drop(p),
                    Err(_) => return false,
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// `d` ± 25%, so many labelers do not reconnect in lockstep.
fn jittered(d: Duration) -> Duration {
    let f: f64 = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_url_carries_the_filter_and_cursor() {
        let (tx, _rx) = mpsc::channel(1);
        let c = Client::new(
            Options::new("wss://jetstream1.us-east.bsky.network/subscribe".into()),
            tx,
            Tracked::default(),
            None,
            Health::new(),
        );
        assert_eq!(
            c.url(Some(1_789_985_725_412_775)).unwrap(),
            "wss://jetstream1.us-east.bsky.network/subscribe?wantedCollections=email.atmos.attestation&cursor=1789985725412775"
        );
        assert_eq!(
            c.url(None).unwrap(),
            "wss://jetstream1.us-east.bsky.network/subscribe?wantedCollections=email.atmos.attestation"
        );
        let (tx, _rx) = mpsc::channel(1);
        let bad = Client::new(
            Options::new("https://x/subscribe".into()),
            tx,
            Tracked::default(),
            None,
            Health::new(),
        );
        assert!(bad.url(None).is_err());
    }

    #[test]
    fn handed_over_events_are_remembered_for_one_window_and_bounded() {
        let mut h = Handed::default();
        let put = |did: &str, rev: &str| Command::Put {
            did: did.to_owned(),
            rkey: "self".to_owned(),
            rev: rev.to_owned(),
            record: serde_json::Value::Null,
            cid: None,
            cursor: 0,
        };
        let a = h.key(10, &put("did:plc:a", "3m1")).unwrap();
        h.insert(a);
        h.insert(a);
        assert_eq!(h.order.len(), 1, "a repeat is stored once");
        assert!(h.contains(&h.key(10, &put("did:plc:a", "3m1")).unwrap()));
        assert!(
            !h.contains(&h.key(10, &put("did:plc:b", "3m1")).unwrap()),
            "other DID"
        );
        assert!(
            !h.contains(&h.key(10, &put("did:plc:a", "3m2")).unwrap()),
            "other commit"
        );
        assert!(
            !h.contains(&h.key(11, &put("did:plc:a", "3m1")).unwrap()),
            "other time"
        );
        let account = |active: bool| Command::Account {
            did: "did:plc:a".to_owned(),
            active,
            status: None,
            cursor: 0,
        };
        h.insert(h.key(20, &account(false)).unwrap());
        assert!(
            !h.contains(&h.key(20, &account(true)).unwrap()),
            "other status"
        );
        assert!(h.key(20, &Command::Checkpoint { cursor: 20 }).is_none());
        h.forget_before(15);
        assert!(!h.contains(&a));
        assert!(h.contains(&h.key(20, &account(false)).unwrap()));
        for t in 0..(MAX_HANDED as i64 + 10) {
            h.insert((100 + t, 0));
        }
        assert_eq!(h.order.len(), MAX_HANDED);
        assert_eq!(h.set.len(), MAX_HANDED);
        assert!(
            !h.contains(&h.key(20, &account(false)).unwrap()),
            "the oldest are forgotten first"
        );
    }
}
