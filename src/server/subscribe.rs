//! `com.atproto.label.subscribeLabels`: the WebSocket label stream (docs/protocol.md §5;
//! <https://atproto.com/specs/event-stream>; lexicon `com/atproto/label/subscribeLabels.json`).
//!
//! - Every message is one binary frame of DAG-CBOR header + body, one label per `#labels`
//!   frame whose `seq` is the label's seq.
//! - No `cursor`: live labels only. `cursor=N`: the current labels with `seq > N` from SQLite
//!   (exclusive, as every implementation does), then live, with no gap and no duplicate:
//!   the connection subscribes to the live feed *before* reading the backfill and skips live
//!   frames with `seq ≤` the last one sent. A cursor past the head gets a `FutureCursor` error
//!   frame and a close; a malformed one `InvalidRequest`. History is never pruned, so
//!   `#info OutdatedCursor` is never sent.
//! - Backfill pages are read and encoded on the blocking pool (at most [`BACKFILL_READERS`]
//!   at once, which bounds memory with many subscribers), fed frame by frame and flushed once
//!   per page (a flush per frame caps throughput, `docs/performance.md` §3).
//! - The read half is polled all the time, including while writing, so pings are answered
//!   and closes noticed (tungstenite writes queued pongs only on the next read or write);
//!   client data frames are ignored, as the spec says.
//! - The server pings every `ping_interval` while streaming live, busy or idle, and a client
//!   that leaves two pings unanswered (no pong by the time a third would go out) is closed:
//!   a dead peer or a squatter that reads nothing useful would otherwise hold its slot until
//!   TCP gives up, which can take hours. A pong to any ping counts (RFC 6455 §5.5.3 lets a
//!   client answer only the latest).
//! - Before the upgrade, a client (by address, or by `X-Forwarded-For` from a trusted proxy;
//!   see `limits`) may hold at most `max_subscribers_per_ip` streams; more are refused with
//!   429, so one host cannot take every slot of `max_subscribers`.
//! - A consumer that lags the live feed by more than `subscriber_buffer` frames, or whose
//!   write stalls for `write_timeout`, gets `ConsumerTooSlow` (best effort) and is closed;
//!   nobody else is affected.
//! - On shutdown each connection gets a close frame 1001; every step on the way out is bounded
//!   by a timeout, so a misbehaving client cannot hold the server open.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::error::XrpcError;
use super::limits;
use super::listen::Peer;
use super::live::{FRAME_GUESS, LiveFrame, PAGE, Page};
use super::params;
use crate::frame;
use crate::telemetry;

/// Backfill pages read from SQLite at the same time, across all subscribers. Two cores gain
/// nothing from more; each reader holds a pooled connection and a page buffer, so this also
/// caps the memory of many simultaneous backfills.
pub(crate) const BACKFILL_READERS: usize = 2;

/// Live frames written per flush when several are queued.
const LIVE_BATCH: usize = 256;

/// Largest message a client may send. Client frames are ignored; this only bounds buffering.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Read buffer per connection: clients send nothing but control frames.
const READ_BUFFER: usize = 8 * 1024;

/// How long the goodbye (error frame, close frame, close handshake) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pings a client may leave unanswered; at the next ping tick it is closed.
const MISSED_PINGS: u8 = 2;

/// `message` of the `FutureCursor` error frame, as Ozone words it.
const FUTURE_CURSOR_MESSAGE: &str = "Cursor in the future.";

/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;

/// `GET /xrpc/com.atproto.label.subscribeLabels`.
///
/// Everything that can be refused over HTTP (no upgrade, the per-client and total subscriber
/// caps, shutdown) is refused before upgrading, with an XRPC error body; parameter errors go
/// out as error frames after the upgrade, as the event-stream spec prescribes.
///
/// The per-client cap needs the TCP peer, which the accept loop attaches ([`Peer`]); a router
/// served some other way has none and skips that cap.
pub(crate) async fn subscribe_labels(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, XrpcError> {
    let upgrade = upgrade.map_err(|_| XrpcError::UpgradeRequired)?;
    if shared.stop.is_cancelled() {
        return Err(XrpcError::ShuttingDown);
    }
    let client_slot = match peer {
        Some(Extension(Peer(addr))) => Some(client_slot(&shared, addr, &headers)?),
        None => None,
    };
    let permit = Arc::clone(&shared.subscriber_slots)
        .try_acquire_owned()
        .map_err(|_| XrpcError::TooManySubscribers)?;
    let cursor = parse_cursor(uri.query().unwrap_or(""));
    // Subscribe before answering: every label published after the client sees the 101 reaches
    // it, and everything published before is already in SQLite for the backfill to read.
    let rx = shared.live.subscribe();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Held for the connection's life: the cap slot, and the tracker entry that run()
            // waits on at shutdown.
            let _permit = permit;
            let _client_slot = client_slot;
            let _tracked = shared.tracker.token();
            let _gauge = GaugeGuard::new();
            let (sink, stream) = socket.split();
            let mut conn = Connection {
                stop: shared.stop.clone(),
                write_timeout: shared.options.write_timeout,
                unanswered: 0,
                sink,
                stream,
            };
            let end = conn.stream_labels(&shared, rx, cursor).await;
            conn.goodbye(end).await;
        }))
}

/// One of the client's subscriber slots, or 429 when it holds them all.
fn client_slot(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<limits::ClientSlot, XrpcError> {
    let ip = limits::client_ip(peer.ip(), headers, &shared.options.trusted_proxies);
    shared
        .subscribers_per_client
        .try_acquire(ip)
        .ok_or_else(|| {
            metrics::counter!(telemetry::SUBSCRIBERS_REFUSED, "reason" => "per_client")
                .increment(1);
            tracing::debug!(%ip, "subscriber refused: too many from this client");
            XrpcError::TooManySubscribersFromClient(shared.options.max_subscribers_per_ip)
        })
}

/// The `cursor` parameter: absent, or a non-negative integer; otherwise the error message.
fn parse_cursor(query: &str) -> Result<Option<i64>, String> {
    let mut cursor = None;
    for pair in params::pairs(query) {
        let (key, value) = pair.map_err(|e| e.to_string())?;
        if key == "cursor" {
            let n = params::int_in("cursor", &value, 0, i64::MAX).map_err(|e| e.to_string())?;
            cursor = Some(n);
        }
    }
    Ok(cursor)
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed or the connection broke.
    PeerGone,
    /// The server is shutting down.
    Shutdown,
    /// The client lagged the live feed or a write stalled.
    TooSlow,
    /// The client left [`MISSED_PINGS`] pings unanswered.
    Unresponsive,
    /// A request error sent as an error frame (`FutureCursor`, `InvalidRequest`).
    Refused(&'static str, String),
    /// A failure on our side; logged.
    Internal(String),
}

/// Increments the subscriber gauge for its lifetime.
struct GaugeGuard;

impl GaugeGuard {
    fn new() -> GaugeGuard {
        metrics::gauge!(telemetry::SUBSCRIBERS).increment(1.0);
        GaugeGuard
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::SUBSCRIBERS).decrement(1.0);
    }
}

/// One subscriber's connection.
struct Connection {
    stop: CancellationToken,
    write_timeout: Duration,
    /// Pings sent since the client last answered one.
    unanswered: u8,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
}

impl Connection {
    /// Backfill (when a cursor was given), then live, until something ends the connection.
    async fn stream_labels(
        &mut self,
        shared: &Shared,
        mut rx: broadcast::Receiver<LiveFrame>,
        cursor: Result<Option<i64>, String>,
    ) -> End {
        let cursor = match cursor {
            Ok(c) => c,
            Err(message) => return End::Refused(frame::INVALID_REQUEST, message),
        };
        let mut last_sent = 0;
        if let Some(cursor) = cursor {
            let head = match self.drive(shared.store.call(|s| s.head_seq())).await {
                Ok(Ok(head)) => head,
                Ok(Err(e)) => return End::Internal(crate::telemetry::Chain(&e).to_string()),
                Err(end) => return end,
            };
            if cursor > head {
                return End::Refused(frame::FUTURE_CURSOR, FUTURE_CURSOR_MESSAGE.to_owned());
            }
            last_sent = cursor;
            if let Err(end) = self.catch_up(shared, &mut rx, &mut last_sent).await {
                return end;
            }
        }
        self.live(&mut rx, last_sent, shared.options.ping_interval)
            .await
            .err()
            .unwrap_or(End::Shutdown)
    }

    /// Sends the backfill from SQLite until it meets the live feed, then the live frames that
    /// queued up meanwhile. A lag while backfilling is harmless: whatever the channel dropped
    /// was committed before it was published, so the next SQLite pass reads it.
    async fn catch_up(
        &mut self,
        shared: &Shared,
        rx: &mut broadcast::Receiver<LiveFrame>,
        last_sent: &mut i64,
    ) -> Result<(), End> {
        let mut queued = Vec::new();
        'backfill: loop {
            loop {
                let page = self.read_page(shared, *last_sent).await?;
                self.write_frames(page.frames().map(|f| f.bytes)).await?;
                if let Some(seq) = page.last_seq() {
                    *last_sent = seq;
                }
                if page.len() < PAGE {
                    break;
                }
            }
            // Take what the live feed queued while we read; a lag means back to SQLite.
            queued.clear();
            loop {
                match rx.try_recv() {
                    Ok(f) => {
                        if f.seq > *last_sent {
                            queued.push(f);
                        }
                    }
                    Err(TryRecvError::Empty) => break 'backfill,
                    Err(TryRecvError::Lagged(_)) => continue 'backfill,
                    Err(TryRecvError::Closed) => return Err(End::Shutdown),
                }
            }
        }
        if let Some(last) = queued.last() {
            *last_sent = last.seq;
            self.write_frames(queued.drain(..).map(|f| f.bytes)).await?;
        }
        Ok(())
    }

    /// Reads one backfill page on the blocking pool, waiting for a reader slot.
    async fn read_page(&mut self, shared: &Shared, after: i64) -> Result<Page, End> {
        let store = shared.store.clone();
        let slots = &shared.backfill_slots;
        let read = async move {
            let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || Page::read(&store, after, PAGE * FRAME_GUESS))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| crate::telemetry::Chain(&e).to_string())
        };
        self.drive(read).await?.map_err(End::Internal)
    }

    /// Streams live frames until the connection ends (always returns `Err`).
    async fn live(
        &mut self,
        rx: &mut broadcast::Receiver<LiveFrame>,
        mut last_sent: i64,
        ping_interval: Duration,
    ) -> Result<(), End> {
        let start = tokio::time::Instant::now() + ping_interval;
        let mut ping = tokio::time::interval_at(start, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(LIVE_BATCH);
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(End::Shutdown),
                msg = self.stream.next() => {
                    if is_gone(&msg, &mut self.unanswered) {
                        return Err(End::PeerGone);
                    }
                    continue;
                }
                // Before the feed: a stream that always has a frame ready must still ping.
                _ = ping.tick() => {
                    if self.unanswered >= MISSED_PINGS {
                        return Err(End::Unresponsive);
                    }
                    self.write_message(Message::Ping(Bytes::new())).await?;
                    self.unanswered += 1;
                    continue;
                }
                r = rx.recv() => match r {
                    Ok(f) => f,
                    Err(RecvError::Lagged(_)) => return Err(End::TooSlow),
                    Err(RecvError::Closed) => return Err(End::Shutdown),
                },
            };
            batch.clear();
            batch.push(first);
            while batch.len() < LIVE_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(TryRecvError::Lagged(_)) => return Err(End::TooSlow),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            let floor = last_sent;
            if let Some(f) = batch.last() {
                last_sent = last_sent.max(f.seq);
            }
            self.write_frames(batch.drain(..).filter(|f| f.seq > floor).map(|f| f.bytes))
                .await?;
        }
    }

    /// Feeds `frames` and flushes once. Each write may stall (no room in the socket for the
    /// next frame) for at most `write_timeout`; a slow but moving consumer is fine.
    async fn write_frames(&mut self, frames: impl Iterator<Item = Bytes>) -> Result<(), End> {
        let Connection {
            sink,
            stream,
            stop,
            write_timeout,
            unanswered,
        } = self;
        let limit = *write_timeout;
        let write = async {
            for f in frames {
                stall_limited(sink.feed(Message::Binary(f)), limit).await??;
            }
            stall_limited(sink.flush(), limit).await??;
            Ok::<(), WriteError>(())
        };
        match drive_on(stream, unanswered, stop, write).await? {
            Ok(()) => Ok(()),
            Err(WriteError::Stalled) => Err(End::TooSlow),
            Err(WriteError::Closed) => Err(End::PeerGone),
        }
    }

    /// Sends one message; it may stall for at most `write_timeout`.
    async fn write_message(&mut self, msg: Message) -> Result<(), End> {
        let Connection {
            sink,
            stream,
            stop,
            write_timeout,
            unanswered,
        } = self;
        let send = stall_limited(sink.send(msg), *write_timeout);
        match drive_on(stream, unanswered, stop, send).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::PeerGone),
            Err(_) => Err(End::TooSlow),
        }
    }

    /// Runs `fut` while answering the client and watching for shutdown.
    async fn drive<F: Future>(&mut self, fut: F) -> Result<F::Output, End> {
        drive_on(&mut self.stream, &mut self.unanswered, &self.stop, fut).await
    }

    /// Says goodbye according to why the connection ends. Every step is bounded.
    async fn goodbye(mut self, end: End) {
        let (error, close) = match end {
            End::PeerGone => {
                // Flush the close reply tungstenite queued, if the peer sent a close.
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.sink.close()).await;
                return;
            }
            End::Shutdown => (None, (CLOSE_GOING_AWAY, "server shutting down")),
            End::TooSlow => {
                metrics::counter!(telemetry::SUBSCRIBERS_TOO_SLOW).increment(1);
                tracing::info!("closing a subscribeLabels consumer that is too slow");
                let frame =
                    frame::error_frame(frame::CONSUMER_TOO_SLOW, Some("Stream consumer too slow"));
                (Some(frame), (CLOSE_POLICY, frame::CONSUMER_TOO_SLOW))
            }
            End::Unresponsive => {
                metrics::counter!(telemetry::SUBSCRIBERS_UNRESPONSIVE).increment(1);
                tracing::info!("closing a subscribeLabels consumer that does not answer pings");
                (None, (CLOSE_POLICY, "ping timeout"))
            }
            End::Refused(name, message) => (
                Some(frame::error_frame(name, Some(&message))),
                (CLOSE_POLICY, name),
            ),
            End::Internal(cause) => {
                tracing::error!(error = %cause, "subscribeLabels connection failed");
                let frame =
                    frame::error_frame("InternalServerError", Some("Internal Server Error"));
                (Some(frame), (CLOSE_INTERNAL, "internal error"))
            }
        };
        let sink = &mut self.sink;
        let stream = &mut self.stream;
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if let Some(frame) = error {
                sink.feed(Message::Binary(Bytes::from(frame))).await?;
            }
            sink.send(Message::Close(Some(CloseFrame {
                code: close.0,
                reason: close.1.into(),
            })))
            .await?;
            // Wait for the client's close reply so the TCP close is clean and the client reads
            // everything we sent.
            while let Some(Ok(_)) = stream.next().await {}
            Ok::<(), axum::Error>(())
        })
        .await;
    }
}

/// Why a write failed.
#[derive(Debug)]
enum WriteError {
    /// No progress within `write_timeout`.
    Stalled,
    /// The connection is gone.
    Closed,
}

impl From<axum::Error> for WriteError {
    fn from(_: axum::Error) -> WriteError {
        WriteError::Closed
    }
}

/// Runs a write, failing with [`WriteError::Stalled`] if it waits longer than `limit`. Most
/// writes only append to tungstenite's buffer and finish on the first poll; only one that has
/// to wait for the socket arms a timer, which keeps the backfill path free of per-frame timers.
async fn stall_limited<F>(mut fut: F, limit: Duration) -> Result<F::Output, WriteError>
where
    F: Future + Unpin,
{
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
    match first {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| WriteError::Stalled),
    }
}

/// Runs `fut` while polling the read half (answering pings, noting pongs, noticing a close)
/// and watching `stop`. Client data messages are ignored.
async fn drive_on<F: Future>(
    stream: &mut SplitStream<WebSocket>,
    unanswered: &mut u8,
    stop: &CancellationToken,
    fut: F,
) -> Result<F::Output, End> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Err(End::Shutdown),
            out = &mut fut => return Ok(out),
            msg = stream.next() => {
                if is_gone(&msg, unanswered) {
                    return Err(End::PeerGone);
                }
            }
        }
    }
}

/// True when a read result means the client is gone (close, error or end of stream). A pong
/// clears `unanswered`.
fn is_gone(msg: &Option<Result<Message, axum::Error>>, unanswered: &mut u8) -> bool {
    match msg {
        Some(Ok(Message::Pong(_))) => {
            *unanswered = 0;
            false
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => true,
        Some(Ok(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_absent_or_a_non_negative_integer() {
        assert_eq!(parse_cursor(""), Ok(None));
        assert_eq!(parse_cursor("cursor=0"), Ok(Some(0)));
        assert_eq!(parse_cursor("x=1&cursor=42"), Ok(Some(42)));
        for bad in ["cursor=", "cursor=-1", "cursor=abc", "cursor=1.0"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }
}
