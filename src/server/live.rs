//! The live label feed: one task that turns committed labels into `#labels` frames once and
//! broadcasts them to every live subscriber (<https://atproto.com/specs/event-stream>, docs/protocol.md
//! §5.1–5.2).
//!
//! It wakes on two signals: [`Store::commits`] right after a commit of this process, and a
//! [`Watcher`] on `PRAGMA data_version` polled every `poll_interval` for commits by other
//! processes on the same file (the `labeler label` CLI). Either way it reads the current rows
//! with `seq > last published` in seq order, encodes each frame once straight from SQLite's
//! buffers, and sends `(seq, Bytes)` over a `tokio::sync::broadcast` channel, so every
//! subscriber shares the same bytes.
//!
//! The channel is the per-subscriber bound: it holds the newest `subscriber_buffer` frames, and
//! a receiver that falls further behind gets `Lagged` (then [`super::subscribe`] closes it with
//! `ConsumerTooSlow`). Sending never waits, so a slow subscriber cannot slow the feed or anyone
//! else.
//!
//! Ordering: SQLite has one writer at a time and `AUTOINCREMENT` assigns seqs inside the write
//! transaction, so seqs become visible in increasing order and reading `seq > last` never skips
//! a committed label. A label replaced before the feed read it (a negation right after its
//! original) is not sent: only current rows exist, as in the backfill.
//!
//! Supervision: the task runs under [`supervise`], which restarts it with backoff if it ever
//! ends or panics (a read task that panicked, a bug), and records that in [`Health`]. A
//! restarted feed resumes after the last seq the previous one published, so subscribers see a
//! pause, never a gap.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::frame;
use crate::health::Health;
use crate::store::{self, Store, Watcher};
use crate::telemetry;

/// First and longest wait before restarting a feed that died. Reads are cheap and a dying
/// feed means no live labels for anyone, so the first retry is quick.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// A run this long resets the restart backoff: the feed was working, and its death is news.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Labels read per SQLite round trip (the backfill's page size, `docs/performance.md` §3).
pub(crate) const PAGE: usize = 1000;

/// Bytes reserved per frame when sizing a page buffer (a typical frame is ~230 bytes).
pub(crate) const FRAME_GUESS: usize = 240;

/// Pages read per wake-up before publishing them, so a bulk write (say a million labels from
/// the CLI) streams through in bounded memory instead of being read whole.
const PAGES_PER_ROUND: usize = 4;

/// One encoded `#labels` frame.
#[derive(Clone, Debug)]
pub(crate) struct LiveFrame {
    /// The label's seq.
    pub(crate) seq: i64,
    /// The whole binary WebSocket message (header + body).
    pub(crate) bytes: Bytes,
}

/// A page of encoded frames read from SQLite.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// All frames of the page back to back; each frame is a zero-copy slice of it.
    pub(crate) buf: Bytes,
    /// `(seq, end offset)` of each frame in `buf`.
    pub(crate) ends: Vec<(i64, usize)>,
}

impl Page {
    /// Reads up to [`PAGE`] current labels with `seq > after` as frames. Blocking: call it on
    /// the blocking pool.
    pub(crate) fn read(
        store: &Store,
        after: i64,
        capacity_hint: usize,
    ) -> Result<Page, store::Error> {
        let mut buf = Vec::with_capacity(capacity_hint);
        let mut ends = Vec::new();
        store.visit_after(after, PAGE, |seq, label, sig| {
            frame::write_label_frame(&mut buf, seq, label, sig);
            ends.push((seq, buf.len()));
        })?;
        Ok(Page {
            buf: Bytes::from(buf),
            ends,
        })
    }

    /// Number of frames.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Seq of the last frame.
    pub(crate) fn last_seq(&self) -> Option<i64> {
        self.ends.last().map(|&(seq, _)| seq)
    }

    /// The frames in order.
    pub(crate) fn frames(&self) -> impl Iterator<Item = LiveFrame> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(seq, end)| {
            let bytes = self.buf.slice(start..end);
            start = end;
            LiveFrame { seq, bytes }
        })
    }
}

/// Runs the live feed from `head` until `stop` is cancelled, restarting it whenever it dies.
pub(crate) async fn run_supervised(
    store: Store,
    tx: broadcast::Sender<LiveFrame>,
    poll_interval: Duration,
    head: i64,
    health: Health,
    stop: CancellationToken,
) {
    let published = Arc::new(AtomicI64::new(head));
    let backoff = Backoff {
        min: RESTART_MIN,
        max: RESTART_MAX,
    };
    supervise(&health, backoff, &stop, || {
        LiveFeed::new(
            store.clone(),
            tx.clone(),
            poll_interval,
            Arc::clone(&published),
        )
        .run(stop.clone())
    })
    .await;
}

/// Restart delays: doubling from `min` to `max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

/// Runs the task `start` makes, in its own tokio task, until `stop` is cancelled; whenever it
/// ends otherwise (an error, or a panic) it is logged, counted in `health.live_feed` and
/// started again after a backoff. `health.live_feed.running` is true exactly while a task runs.
pub(crate) async fn supervise<F, Fut>(
    health: &Health,
    backoff: Backoff,
    stop: &CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let restarts = metrics::counter!(telemetry::LIVE_FEED_RESTARTS);
    let mut delay = backoff.min;
    loop {
        let started = tokio::time::Instant::now();
        health.update(|s| s.live_feed.running = true);
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            health.update(|s| s.live_feed.running = false);
            return;
        }
        let why = match ended {
            Ok(Ok(())) => "it stopped on its own".to_owned(),
            Ok(Err(e)) => e,
            Err(e) => match e.try_into_panic() {
                Ok(payload) => format!("it panicked: {}", panic_message(payload.as_ref())),
                Err(e) => e.to_string(),
            },
        };
        if started.elapsed() >= HEALTHY_RUN {
            delay = backoff.min;
        }
        tracing::error!(error = %why, retry_in = ?delay, "the live label feed died; restarting it");
        restarts.increment(1);
        health.update(|s| {
            s.live_feed.running = false;
            s.live_feed.restarts += 1;
            s.live_feed.last_error = Some(why);
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(backoff.max);
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// The feed task's state.
#[derive(Debug)]
pub(crate) struct LiveFeed {
    store: Store,
    tx: broadcast::Sender<LiveFrame>,
    poll_interval: Duration,
    /// Seq of the last label published (or the head when the feed started).
    last: i64,
    /// `last`, shared with the supervisor so a restarted feed resumes after it.
    published: Arc<AtomicI64>,
}

impl LiveFeed {
    /// A feed that publishes labels with `seq > published`.
    pub(crate) fn new(
        store: Store,
        tx: broadcast::Sender<LiveFrame>,
        poll_interval: Duration,
        published: Arc<AtomicI64>,
    ) -> LiveFeed {
        LiveFeed {
            store,
            tx,
            poll_interval,
            last: published.load(Ordering::Acquire),
            published,
        }
    }

    /// Runs until `stop` is cancelled (then `Ok`); `Err` says why it could not go on.
    pub(crate) async fn run(mut self, stop: CancellationToken) -> Result<(), String> {
        let mut commits = self.store.commits();
        let mut commits_open = true;
        let mut watcher = match self.store.call(Watcher::new).await {
            Ok(w) => Some(w),
            Err(e) => {
                // Without a watcher every tick reads instead, which is a cheap rowid probe.
                tracing::warn!(error = %crate::telemetry::Chain(&e), "cannot watch the database for other writers");
                None
            }
        };
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Read once before waiting: a commit between the head read in `Server::run` and the
        // watcher's first `data_version` would otherwise go unnoticed.
        let mut more = true;
        loop {
            let ours = if more && !stop.is_cancelled() {
                // The previous round stopped at its page budget: read on without waiting.
                true
            } else {
                tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                r = commits.changed(), if commits_open => {
                    // The sender lives as long as the store; stop listening if it is gone.
                    commits_open = r.is_ok();
                    true
                }
                _ = tick.tick() => false,
                }
            };
            let store = self.store.clone();
            let after = self.last;
            let job = tokio::task::spawn_blocking(move || {
                // An in-process commit needs no check; otherwise ask SQLite whether another
                // connection committed since the last tick.
                let changed = match (&mut watcher, ours) {
                    (_, true) | (None, _) => Ok(true),
                    (Some(w), false) => w.changed(),
                };
                let published = match changed {
                    Ok(true) => read_new(&store, after),
                    Ok(false) => Ok((Vec::new(), false)),
                    Err(e) => Err(e),
                };
                (watcher, published)
            });
            let pages = match job.await {
                Ok((w, pages)) => {
                    watcher = w;
                    pages
                }
                Err(e) => return Err(format!("its read task failed: {e}")),
            };
            match pages {
                Ok((pages, full)) => {
                    self.publish(&pages);
                    more = full;
                }
                // Keep `last`: the next signal or tick retries from the same point.
                Err(e) => {
                    more = false;
                    tracing::error!(error = %crate::telemetry::Chain(&e), "live feed cannot read new labels");
                }
            }
        }
    }

    fn publish(&mut self, pages: &[Page]) {
        for page in pages {
            for frame in page.frames() {
                self.last = frame.seq;
                // An error only means nobody is subscribed right now.
                let _ = self.tx.send(frame);
            }
        }
        self.published.store(self.last, Ordering::Release);
    }
}

/// Reads current labels with `seq > after`, page by page, up to [`PAGES_PER_ROUND`] pages.
/// The flag is true when the budget ran out with more rows possibly waiting.
fn read_new(store: &Store, mut after: i64) -> Result<(Vec<Page>, bool), store::Error> {
    let mut pages = Vec::new();
    while pages.len() < PAGES_PER_ROUND {
        let page = Page::read(store, after, 4 * 1024)?;
        let full = page.len() == PAGE;
        match page.last_seq() {
            Some(seq) => after = seq,
            None => break,
        }
        pages.push(page);
        if !full {
            return Ok((pages, false));
        }
    }
    let more = pages.len() == PAGES_PER_ROUND;
    Ok((pages, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_task_that_dies_is_restarted_and_recorded_in_health() {
        let health = Health::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let backoff = Backoff {
            min: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let supervisor = {
            let (health, stop) = (health.clone(), stop.clone());
            tokio::spawn(async move {
                supervise(&health, backoff, &stop, || {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    let (health, stop, seen) = (health.clone(), stop.clone(), seen_tx.clone());
                    async move {
                        // What each run sees of its predecessors.
                        seen.send(health.snapshot().live_feed).unwrap();
                        match n {
                            0 => panic!("boom"),
                            1 => Err("cannot read".to_owned()),
                            _ => {
                                stop.cancelled().await;
                                Ok(())
                            }
                        }
                    }
                })
                .await;
            })
        };
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await
                .unwrap()
                .unwrap()
        };
        let first = next().await;
        assert!(first.running && first.restarts == 0 && first.last_error.is_none());
        let second = next().await;
        assert!(second.running, "restarted after the panic");
        assert_eq!(second.restarts, 1);
        assert_eq!(second.last_error.as_deref(), Some("it panicked: boom"));
        let third = next().await;
        assert_eq!(third.restarts, 2);
        assert_eq!(third.last_error.as_deref(), Some("cannot read"));

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), supervisor)
            .await
            .unwrap()
            .unwrap();
        let last = health.snapshot().live_feed;
        assert!(!last.running);
        assert_eq!(last.restarts, 2, "a clean stop is not a death");
    }

    #[test]
    fn a_restarted_feed_resumes_after_the_last_published_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("l.db")).unwrap();
        let (tx, _rx) = broadcast::channel(4);
        let published = Arc::new(AtomicI64::new(7));
        let mut feed = LiveFeed::new(
            store.clone(),
            tx.clone(),
            Duration::from_millis(10),
            Arc::clone(&published),
        );
        assert_eq!(feed.last, 7);
        let mut buf = Vec::new();
        let label = crate::label::LabelRef {
            src: "did:plc:a",
            uri: "did:plc:b",
            cid: None,
            val: "v",
            neg: false,
            cts: "2026-11-23T00:00:00.000Z",
            exp: None,
        };
        frame::write_label_frame(&mut buf, 9, &label, &[0; 64]);
        let page = Page {
            ends: vec![(9, buf.len())],
            buf: Bytes::from(buf),
        };
        feed.publish(&[page]);
        assert_eq!(published.load(Ordering::SeqCst), 9);
        let again = LiveFeed::new(store, tx, Duration::from_millis(10), published);
        assert_eq!(again.last, 9);
    }
}
