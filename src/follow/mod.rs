//! Mirror mode's follower: subscribes to an upstream labeler's `subscribeLabels` stream,
//! checks every label against the upstream's key, and stores the good ones under the
//! upstream's seqs, so that this process serves the same labels, the same pages and the same
//! cursors as the primary (`docs/protocol.md` §8).
//!
//! The atproto label stream already is a replication protocol: signed, ordered, resumable
//! (<https://atproto.com/specs/label>, <https://atproto.com/specs/event-stream>). A mirror
//! follows it like any consumer, from its saved cursor, so it needs no shared database and no
//! cluster protocol, and it can follow another mirror as well as the primary.
//!
//! - **Resume.** The cursor (the seq of the last frame dealt with, stored or refused) is
//!   committed in the same transaction as the labels of its batch
//!   ([`Store::write_mirrored`]); a restarted or killed mirror resumes exactly there.
//! - **Verify.** A label is stored only if its `src` is the upstream DID and its signature
//!   verifies against that DID's `#atproto_label` key; on a bad signature the DID is
//!   re-resolved once (a rotation) before the label is refused (`key.rs`). A refused label is
//!   logged with its seq and counted (`labeler_mirror_labels_refused_total`), never stored
//!   or served, and following goes on.
//! - **Errors from the upstream.** `FutureCursor` means the upstream has lost history this
//!   mirror holds (a restore from an old backup, or another labeler at the same address):
//!   following stops, loudly, rather than silently starting over, and the mirror keeps
//!   serving what it has. `ConsumerTooSlow` reconnects from the cursor (the backfill path
//!   catches up where the live ring could not). Anything else reconnects with exponential
//!   backoff and jitter.
//! - **Pipeline.** The socket reader decodes frames into batches (up to `batch` frames, or
//!   whatever is ready) and hands them over a two-batch channel to the processor, which
//!   verifies a batch on every core and commits it while the reader goes on reading, so the
//!   upstream's writes do not stall on our verification.
//! - **In sync.** The stream has no "caught up" marker. The mirror counts itself in sync when
//!   it is connected, has committed everything it received, and the upstream has then sent
//!   nothing for `quiet`; `/xrpc/_health` reports the lag as the time since it last was.

mod key;
mod wire;

pub use key::KeyError;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use reqwest::Url;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use self::key::{Refusal, UpstreamKey};
use self::wire::Frame;
use crate::frame;
use crate::health::{self, Health};
use crate::identity;
use crate::label::SignedLabel;
use crate::store::{Store, StoredLabel};
use crate::telemetry::{self, Chain};
use crate::wsclient::Ws;

/// The subscribeLabels path (<https://atproto.com/specs/xrpc>).
const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.label.subscribeLabels";

/// Largest WebSocket message accepted. A one-label frame is about 250 bytes.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// How long a connection attempt (TCP, TLS and upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Batches in flight between the reader and the processor.
const PIPELINE: usize = 2;

/// Follower settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The upstream's base URL (`https://labeler.example`, or `ws(s)://`), a primary or
    /// another mirror.
    pub upstream: String,
    /// The upstream labeler's DID: every label's `src` must be it, and its `#atproto_label`
    /// key must sign them.
    pub did: String,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Reconnect after this long without any frame (we ping every `ping_interval`, and the
    /// upstream answers).
    pub idle_timeout: Duration,
    /// How often to ping the upstream.
    pub ping_interval: Duration,
    /// Silence from the upstream after which, everything received being committed, the
    /// mirror counts itself in sync.
    pub quiet: Duration,
    /// Most frames verified and committed together.
    pub batch: usize,
}

impl Options {
    /// Production settings for following `did` at `upstream`.
    pub fn new(upstream: String, did: String) -> Options {
        Options {
            upstream,
            did,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            ping_interval: Duration::from_secs(30),
            quiet: Duration::from_millis(250),
            batch: 2000,
        }
    }
}

/// Follower errors: only a bad configuration stops it; network trouble is retried forever.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream URL cannot be used.
    #[error("invalid upstream URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The upstream DID cannot be used.
    #[error("invalid upstream DID {did:?}: {reason}")]
    Did {
        /// The DID.
        did: String,
        /// Why.
        reason: String,
    },
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Shutdown,
    /// The upstream says our cursor is in its future: it lost history.
    FutureCursor(String),
    /// The upstream closed us as too slow.
    TooSlow,
    /// The connection could not be made.
    Unreachable(String),
    /// An established connection ended.
    Lost(String),
    /// Something on our side (the key could not be had, the database failed).
    Failed(String),
}

/// One frame's worth of work.
#[derive(Debug)]
struct Item {
    seq: i64,
    content: Content,
}

#[derive(Debug)]
enum Content {
    Label(SignedLabel),
    Refused(Refusal, String),
    /// A `#labels` frame with no label: it only moves the cursor.
    Empty,
}

/// What the reader hands the processor.
#[derive(Debug)]
enum Batch {
    Items(Vec<Item>),
    /// The upstream has sent nothing for `quiet` since the items before this.
    Quiet,
}

/// The follower component.
#[derive(Debug)]
pub struct Follower {
    options: Options,
    url: Url,
    processor: Processor,
}

impl Follower {
    /// A follower resuming after `cursor` (the store's [`Store::mirror_cursor`]), resolving
    /// the upstream DID through `resolver`, reporting in `health`.
    pub fn new(
        options: Options,
        store: Store,
        resolver: identity::Resolver,
        cursor: Option<i64>,
        health: Health,
    ) -> Result<Follower, Error> {
        let url = subscribe_url(&options.upstream)?;
        let key = UpstreamKey::new(&options.did, resolver).map_err(|reason| Error::Did {
            did: options.did.clone(),
            reason,
        })?;
        health.update(|s| {
            s.upstream = Some(health::Upstream {
                url: options.upstream.clone(),
                cursor,
                behind_since: Some(Instant::now()),
                ..health::Upstream::default()
            });
        });
        Ok(Follower {
            options,
            url,
            processor: Processor {
                store,
                key,
                cursor,
                health,
            },
        })
    }

    /// The subscription URL for resuming after `cursor`.
    pub fn url(&self, cursor: i64) -> String {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("cursor", &cursor.to_string());
        url.into()
    }

    /// Follows until `shutdown` is cancelled. After a `FutureCursor` it stops following and
    /// only waits for the shutdown, so the rest of the mirror keeps serving.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut backoff = self.options.backoff_min;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // The saved cursor is the truth: what this process holds could only lag it.
            if let Ok(saved) = self.processor.store.call(|s| s.mirror_cursor()).await {
                self.processor.cursor = saved;
            }
            let cursor = self.processor.cursor.unwrap_or(0);
            let url = self.url(cursor);
            let started = Instant::now();
            let end = match connect(&url, &shutdown).await {
                Ok(Some(ws)) => {
                    metrics::counter!(telemetry::MIRROR_CONNECTS, "outcome" => "connected")
                        .increment(1);
                    tracing::info!(upstream = %self.options.upstream, cursor, "following the upstream's labels");
                    self.report(|u| {
                        u.connected = true;
                        u.since = Some(SystemTime::now());
                        u.received = u.cursor;
                    });
                    let end = self.session(ws, &shutdown).await;
                    self.report(|u| {
                        u.connected = false;
                        u.since = Some(SystemTime::now());
                        if u.in_sync {
                            u.in_sync = false;
                            u.behind_since = Some(Instant::now());
                        }
                    });
                    end
                }
                Ok(None) => End::Shutdown,
                Err(reason) => {
                    metrics::counter!(telemetry::MIRROR_CONNECTS, "outcome" => "failed")
                        .increment(1);
                    End::Unreachable(reason)
                }
            };
            let why = match &end {
                End::Shutdown => return Ok(()),
                End::FutureCursor(message) => {
                    let cursor = self.processor.cursor.unwrap_or(0);
                    tracing::error!(
                        upstream = %self.options.upstream,
                        cursor,
                        %message,
                        "the upstream has no label up to this mirror's cursor: it lost history \
                         (restored from an old backup?) or is another labeler. Following \
                         STOPPED; this mirror keeps serving what it holds. To follow this \
                         upstream, start a mirror on an empty stateDir"
                    );
                    self.report(|u| {
                        u.stopped = Some(format!(
                            "the upstream answered FutureCursor to cursor {cursor}: it lost history"
                        ));
                    });
                    shutdown.cancelled().await;
                    return Ok(());
                }
                End::TooSlow => {
                    "the upstream closed the stream: ConsumerTooSlow; resuming from the cursor"
                        .to_owned()
                }
                End::Unreachable(r) | End::Lost(r) | End::Failed(r) => r.clone(),
            };
            self.report(|u| u.last_error = Some(why.clone()));
            let progressed = self.processor.cursor.unwrap_or(0) != cursor;
            if started.elapsed() >= HEALTHY_SESSION || progressed || matches!(end, End::TooSlow) {
                backoff = self.options.backoff_min;
            }
            let delay = jittered(backoff);
            match end {
                End::Unreachable(_) => {
                    tracing::warn!(upstream = %self.options.upstream, reason = %why, retry_in = ?delay, "cannot reach the upstream");
                }
                End::Failed(_) => {
                    tracing::error!(reason = %why, retry_in = ?delay, "cannot go on following the upstream");
                }
                _ => tracing::warn!(reason = %why, retry_in = ?delay, "upstream stream ended"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    fn report(&self, f: impl FnOnce(&mut health::Upstream)) {
        self.processor.report(f);
    }

    /// One subscription: the reader and the processor run side by side until the stream
    /// ends; what was received before the end is still committed.
    async fn session(&mut self, ws: Ws, shutdown: &CancellationToken) -> End {
        let (tx, rx) = mpsc::channel(PIPELINE);
        let stop = shutdown.child_token();
        let reader = read(ws, tx, &self.options, self.processor.health.clone(), &stop);
        let processor = self.processor.run(rx, &stop);
        let (read_end, processed) = tokio::join!(reader, processor);
        match processed {
            Err(end) => end,
            Ok(()) => read_end,
        }
    }
}

/// The upstream's subscribeLabels URL from its base URL: `http(s)` becomes `ws(s)`, and an
/// origin gets the XRPC path.
fn subscribe_url(base: &str) -> Result<Url, Error> {
    let bad = |reason: &str| Error::Url {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base).map_err(|e| bad(&e.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(bad("the scheme must be https://, http://, wss:// or ws://")),
    };
    url.set_scheme(scheme)
        .map_err(|()| bad("cannot use this scheme"))?;
    if url.host_str().is_none() {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(bad("credentials and fragments are not allowed"));
    }
    if url.query().is_some() {
        return Err(bad(
            "give the URL without a query; the cursor is added here",
        ));
    }
    match url.path() {
        "" | "/" => url.set_path(SUBSCRIBE_PATH),
        SUBSCRIBE_PATH => {}
        _ => return Err(bad("give the upstream's base URL (scheme, host and port)")),
    }
    Ok(url)
}

/// Opens the WebSocket. `Ok(None)` on shutdown.
async fn connect(url: &str, shutdown: &CancellationToken) -> Result<Option<Ws>, String> {
    crate::wsclient::connect(
        url,
        MAX_MESSAGE_BYTES,
        CONNECT_TIMEOUT,
        "the upstream",
        shutdown,
    )
    .await
}

/// What one turn of the reader's loop woke up for.
enum Wake {
    Stop,
    Ping,
    Idle,
    Quiet,
    Message(Option<Result<Message, tungstenite::Error>>),
}

/// Reads frames into batches and hands them to the processor until the stream ends.
async fn read(
    mut ws: Ws,
    tx: mpsc::Sender<Batch>,
    options: &Options,
    health: Health,
    stop: &CancellationToken,
) -> End {
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + options.ping_interval,
        options.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle = tokio::time::sleep(options.idle_timeout);
    tokio::pin!(idle);
    // Armed from the start: an upstream with nothing to send is one we are in sync with.
    let quiet = tokio::time::sleep(options.quiet);
    tokio::pin!(quiet);
    let mut quiet_armed = true;
    let mut batch = Vec::new();
    loop {
        let wake = tokio::select! {
            biased;
            () = stop.cancelled() => Wake::Stop,
            _ = ping.tick() => Wake::Ping,
            () = &mut idle => Wake::Idle,
            () = &mut quiet, if quiet_armed => Wake::Quiet,
            m = ws.next() => Wake::Message(m),
        };
        let first = match wake {
            Wake::Stop => return End::Shutdown,
            Wake::Idle => {
                return End::Lost(format!("no frame for {:?}", options.idle_timeout));
            }
            Wake::Ping => {
                if let Err(e) = ws.send(Message::Ping(Bytes::new())).await {
                    return End::Lost(format!("cannot ping the upstream: {e}"));
                }
                continue;
            }
            Wake::Quiet => {
                quiet_armed = false;
                if tx.send(Batch::Quiet).await.is_err() {
                    return End::Shutdown;
                }
                continue;
            }
            Wake::Message(m) => m,
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + options.idle_timeout);
        let mut end = take(first, &mut batch);
        // Whatever else is ready joins the batch, without waiting.
        while end.is_none() && batch.len() < options.batch {
            match ws.next().now_or_never() {
                Some(m) => end = take(m, &mut batch),
                None => break,
            }
        }
        if let Some(last) = batch.last().map(|i: &Item| i.seq) {
            let now = Instant::now();
            health.update(|s| {
                if let Some(u) = s.upstream.as_mut() {
                    u.last_frame = Some(now);
                    u.received = Some(u.received.map_or(last, |r| r.max(last)));
                    if u.in_sync {
                        u.in_sync = false;
                        u.behind_since = Some(now);
                    }
                }
            });
            if tx
                .send(Batch::Items(std::mem::take(&mut batch)))
                .await
                .is_err()
            {
                return End::Shutdown;
            }
            quiet_armed = true;
            quiet
                .as_mut()
                .reset(tokio::time::Instant::now() + options.quiet);
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Adds what one WebSocket message carries to `batch`; `Some` when the stream ends with it.
fn take(msg: Option<Result<Message, tungstenite::Error>>, batch: &mut Vec<Item>) -> Option<End> {
    let bytes = match msg {
        Some(Ok(Message::Binary(b))) => b,
        Some(Ok(Message::Close(c))) => {
            let why = c.map_or_else(
                || "no close code".to_owned(),
                |c| format!("{} {}", u16::from(c.code), c.reason),
            );
            return Some(End::Lost(format!("the upstream closed the stream ({why})")));
        }
        Some(Ok(_)) => return None,
        Some(Err(e)) => return Some(End::Lost(format!("the stream broke: {e}"))),
        None => return Some(End::Lost("the upstream closed the connection".to_owned())),
    };
    match wire::decode(&bytes) {
        Ok(Frame::Labels { seq, mut labels }) => {
            let content = match labels.len() {
                0 => Content::Empty,
                1 => match labels.remove(0) {
                    Ok(l) => Content::Label(l),
                    Err(why) => Content::Refused(Refusal::Malformed, why),
                },
                n => Content::Refused(
                    Refusal::SharedSeq,
                    format!("{n} labels share one seq; a mirror stores one per seq"),
                ),
            };
            batch.push(Item { seq, content });
            None
        }
        Ok(Frame::Unreadable { seq, reason }) => {
            batch.push(Item {
                seq,
                content: Content::Refused(Refusal::Malformed, reason),
            });
            None
        }
        Ok(Frame::Info { name, message }) => {
            if name == frame::OUTDATED_CURSOR {
                tracing::warn!(
                    ?message,
                    "the upstream says this mirror's cursor is older than its history: labels between them may be missing here"
                );
            } else {
                tracing::info!(%name, ?message, "info from the upstream");
            }
            None
        }
        Ok(Frame::Error { error, message }) => {
            let message = message.unwrap_or_default();
            Some(match error.as_str() {
                frame::FUTURE_CURSOR => End::FutureCursor(message),
                frame::CONSUMER_TOO_SLOW => End::TooSlow,
                _ => End::Lost(format!("the upstream sent error {error}: {message}")),
            })
        }
        Ok(Frame::Unknown { t }) => {
            tracing::debug!(%t, "ignoring an unknown message type from the upstream");
            None
        }
        Err(reason) => {
            metrics::counter!(telemetry::MIRROR_REFUSED, "reason" => Refusal::Malformed.as_str())
                .increment(1);
            tracing::warn!(%reason, "refused an undecodable frame from the upstream");
            None
        }
    }
}

/// Verifies and commits batches; owns the cursor and the key.
#[derive(Debug)]
struct Processor {
    store: Store,
    key: UpstreamKey,
    /// The upstream seq of the last frame committed (stored or refused).
    cursor: Option<i64>,
    health: Health,
}

impl Processor {
    fn report(&self, f: impl FnOnce(&mut health::Upstream)) {
        self.health.update(|s| {
            if let Some(u) = s.upstream.as_mut() {
                f(u);
            }
        });
    }

    /// Handles batches until the reader is done (then `Ok`) or something on our side fails,
    /// which stops the session (`stop` is cancelled so the reader ends too).
    ///
    /// Two stages in a pipeline: one checks a batch's signatures (on every core) while the
    /// other commits the batch before it, so SQLite's writes do not leave a core idle.
    async fn run(
        &mut self,
        rx: mpsc::Receiver<Batch>,
        stop: &CancellationToken,
    ) -> Result<(), End> {
        let (tx, checked) = mpsc::channel(1);
        let Processor {
            store,
            key,
            cursor,
            health,
        } = self;
        let checking = check_batches(key, cursor.unwrap_or(0), rx, tx, stop);
        let committing = commit_batches(store, cursor, health, checked, stop);
        let (checked, committed) = tokio::join!(checking, committing);
        match (checked, committed) {
            (_, Err(e)) if !matches!(e, End::Shutdown) => Err(e),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }
}

/// A batch checked and ready to commit.
#[derive(Debug)]
enum Checked {
    Batch {
        /// The seq of its last frame: the cursor once it is committed.
        last: i64,
        /// The labels that passed.
        stored: Vec<StoredLabel>,
        /// How many were refused.
        refused: u64,
    },
    /// The upstream was quiet after the batches before this.
    Quiet,
}

/// The checking stage: verifies each batch and hands it on, in order.
async fn check_batches(
    key: &mut UpstreamKey,
    mut last: i64,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Checked>,
    stop: &CancellationToken,
) -> Result<(), End> {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => return Err(End::Shutdown),
            b = rx.recv() => match b {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        let checked = match batch {
            Batch::Quiet => Checked::Quiet,
            Batch::Items(items) => {
                let checking = check(key, &mut last, items);
                let checked = tokio::select! {
                    biased;
                    () = stop.cancelled() => return Err(End::Shutdown),
                    c = checking => c,
                };
                match checked {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(end) => {
                        stop.cancel();
                        return Err(end);
                    }
                }
            }
        };
        // A closed channel means the committing stage failed; its error is the one to report.
        if tx.send(checked).await.is_err() {
            return Ok(());
        }
    }
}

/// Verifies one batch: the labels that pass, the refusals logged and counted. `None` when
/// every frame was at or below the cursor.
async fn check(
    key: &mut UpstreamKey,
    last: &mut i64,
    items: Vec<Item>,
) -> Result<Option<Checked>, End> {
    // A frame at or below the cursor was dealt with already (the upstream resent it).
    let mut fresh = Vec::with_capacity(items.len());
    for item in items {
        if item.seq <= *last {
            tracing::warn!(
                seq = item.seq,
                after = *last,
                "ignoring a frame that does not come after the cursor"
            );
            continue;
        }
        *last = item.seq;
        fresh.push(item);
    }
    if fresh.is_empty() {
        return Ok(None);
    }
    let failed = |e: &(dyn std::error::Error + 'static)| End::Failed(Chain(e).to_string());
    let current = key.current().await.map_err(|e| failed(&e))?;
    let did = key.did().to_owned();
    let (mut fresh, mut verdicts) = verify(fresh, did.clone(), current).await?;
    if verdicts.contains(&Some(Refusal::Signature)) {
        // Perhaps the upstream rotated its key: re-resolve once and check those again. A
        // failed re-resolution ends the session and the batch is received again later:
        // labels are refused for what they are, never because a DID document was away.
        if let Some(new) = key.refresh().await.map_err(|e| failed(&e))? {
            (fresh, verdicts) = verify_again(fresh, verdicts, did.clone(), new).await?;
        }
    }
    let mut stored = Vec::with_capacity(fresh.len());
    let mut refused = 0u64;
    for (item, verdict) in fresh.into_iter().zip(verdicts) {
        let seq = item.seq;
        let why = match (item.content, verdict) {
            (Content::Label(signed), None) => {
                stored.push(StoredLabel { seq, signed });
                continue;
            }
            (Content::Label(l), Some(r)) => {
                let detail = match r {
                    Refusal::Src => format!("src {} is not {did}", l.label.src),
                    _ => format!("the signature does not verify against the key of {did}"),
                };
                tracing::warn!(seq, reason = r.as_str(), uri = %l.label.uri, val = %l.label.val, %detail, "refused a label from the upstream");
                r
            }
            (Content::Refused(r, detail), _) => {
                tracing::warn!(seq, reason = r.as_str(), %detail, "refused a label from the upstream");
                r
            }
            (Content::Empty, _) => continue,
        };
        metrics::counter!(telemetry::MIRROR_REFUSED, "reason" => why.as_str()).increment(1);
        refused += 1;
    }
    Ok(Some(Checked::Batch {
        last: *last,
        stored,
        refused,
    }))
}

/// The committing stage: writes each checked batch with its cursor, in order.
///
/// A write is never abandoned half-way (not even at shutdown): a transaction that commits
/// after its caller stopped waiting would move the saved cursor past the one this process
/// holds.
async fn commit_batches(
    store: &Store,
    cursor: &mut Option<i64>,
    health: &Health,
    mut rx: mpsc::Receiver<Checked>,
    stop: &CancellationToken,
) -> Result<(), End> {
    let report = |f: &dyn Fn(&mut health::Upstream)| {
        health.update(|s| {
            if let Some(u) = s.upstream.as_mut() {
                f(u);
            }
        });
    };
    loop {
        let checked = tokio::select! {
            biased;
            () = stop.cancelled() => return Err(End::Shutdown),
            c = rx.recv() => match c {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        match checked {
            Checked::Quiet => report(&|u| {
                if u.connected && u.received == u.cursor {
                    u.in_sync = true;
                }
            }),
            Checked::Batch {
                last,
                stored,
                refused,
            } => {
                let n = stored.len() as u64;
                let written = store.call(move |s| s.write_mirrored(&stored, last)).await;
                if let Err(e) = written {
                    stop.cancel();
                    return Err(End::Failed(Chain(&e).to_string()));
                }
                metrics::counter!(telemetry::MIRROR_STORED).increment(n);
                *cursor = Some(last);
                report(&|u| {
                    u.cursor = Some(last);
                    u.refused += refused;
                });
            }
        }
    }
}

/// Checks every label of `items` on the blocking pool; one verdict per item (`None` also for
/// items that carry no label).
async fn verify(
    items: Vec<Item>,
    did: String,
    key: crate::keys::PublicKey,
) -> Result<(Vec<Item>, Vec<Option<Refusal>>), End> {
    let all = vec![None; items.len()];
    let wanted: Vec<bool> = items
        .iter()
        .map(|i| matches!(i.content, Content::Label(_)))
        .collect();
    check_where(items, all, wanted, did, key).await
}

/// Checks again, against a new key, the items whose signature was refused.
async fn verify_again(
    items: Vec<Item>,
    verdicts: Vec<Option<Refusal>>,
    did: String,
    key: crate::keys::PublicKey,
) -> Result<(Vec<Item>, Vec<Option<Refusal>>), End> {
    let wanted: Vec<bool> = verdicts
        .iter()
        .map(|v| *v == Some(Refusal::Signature))
        .collect();
    check_where(items, verdicts, wanted, did, key).await
}

/// Replaces `verdicts[i]` with a fresh check of item `i` wherever `wanted[i]`.
async fn check_where(
    items: Vec<Item>,
    mut verdicts: Vec<Option<Refusal>>,
    wanted: Vec<bool>,
    did: String,
    key: crate::keys::PublicKey,
) -> Result<(Vec<Item>, Vec<Option<Refusal>>), End> {
    tokio::task::spawn_blocking(move || {
        let picked: Vec<(usize, &SignedLabel)> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| wanted[*i])
            .filter_map(|(i, item)| match &item.content {
                Content::Label(l) => Some((i, l)),
                _ => None,
            })
            .collect();
        let labels: Vec<&SignedLabel> = picked.iter().map(|(_, l)| *l).collect();
        let checked = key::check_all(&labels, &did, &key);
        for ((i, _), v) in picked.iter().zip(checked) {
            verdicts[*i] = v;
        }
        (items, verdicts)
    })
    .await
    .map_err(|e| End::Failed(format!("the verification task failed: {e}")))
}

/// `d` ± 25 %, so mirrors that lost the same upstream do not all come back at once.
fn jittered(d: Duration) -> Duration {
    let f: f64 = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_url_becomes_its_subscribe_labels_url() {
        for (base, want) in [
            (
                "https://labeler.example",
                "wss://labeler.example/xrpc/com.atproto.label.subscribeLabels",
            ),
            (
                "http://127.0.0.1:8080/",
                "ws://127.0.0.1:8080/xrpc/com.atproto.label.subscribeLabels",
            ),
            (
                "wss://m.example/xrpc/com.atproto.label.subscribeLabels",
                "wss://m.example/xrpc/com.atproto.label.subscribeLabels",
            ),
        ] {
            assert_eq!(subscribe_url(base).unwrap().as_str(), want, "{base}");
        }
        for bad in [
            "ftp://x.example",
            "https://x.example/some/path",
            "https://x.example/?cursor=5",
            "https://user:pw@x.example",
            "labeler.example",
        ] {
            assert!(subscribe_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_frames_end_the_stream_each_in_its_own_way() {
        let mut batch = Vec::new();
        let frame = |e: &str| Some(Ok(Message::Binary(frame::error_frame(e, Some("m")).into())));
        assert!(
            matches!(take(frame("FutureCursor"), &mut batch), Some(End::FutureCursor(m)) if m == "m")
        );
        assert!(matches!(
            take(frame("ConsumerTooSlow"), &mut batch),
            Some(End::TooSlow)
        ));
        assert!(matches!(
            take(frame("InternalServerError"), &mut batch),
            Some(End::Lost(_))
        ));
        assert!(matches!(take(None, &mut batch), Some(End::Lost(_))));
        let info = Some(Ok(Message::Binary(
            frame::info_frame("OutdatedCursor", None).into(),
        )));
        assert!(
            take(info, &mut batch).is_none(),
            "info frames are logged, not fatal"
        );
        assert!(
            take(
                Some(Ok(Message::Binary(Bytes::from_static(b"\xff")))),
                &mut batch
            )
            .is_none()
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_frame_of_several_labels_is_refused_whole_with_its_seq() {
        let key = crate::keys::SigningKey::generate().unwrap();
        let l = crate::label::Label {
            src: key.did_key().to_owned(),
            uri: "did:plc:x".to_owned(),
            cid: None,
            val: "v".to_owned(),
            neg: false,
            cts: "2026-11-23T10:00:00.000Z".to_owned(),
            exp: None,
        }
        .sign(&key);
        let mut batch = Vec::new();
        let two = frame::labels_frame(5, &[l.clone(), l]);
        assert!(take(Some(Ok(Message::Binary(two.into()))), &mut batch).is_none());
        assert!(matches!(
            &batch[..],
            [Item {
                seq: 5,
                content: Content::Refused(Refusal::SharedSeq, _)
            }]
        ));
    }
}
