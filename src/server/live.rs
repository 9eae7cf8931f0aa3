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

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::frame;
use crate::store::{self, Store, Watcher};

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

/// The feed task's state.
#[derive(Debug)]
pub(crate) struct LiveFeed {
    store: Store,
    tx: broadcast::Sender<LiveFrame>,
    poll_interval: Duration,
    /// Seq of the last label published (or the head when the feed started).
    last: i64,
}

impl LiveFeed {
    /// A feed that publishes labels with `seq > last`.
    pub(crate) fn new(
        store: Store,
        tx: broadcast::Sender<LiveFrame>,
        poll_interval: Duration,
        last: i64,
    ) -> LiveFeed {
        LiveFeed {
            store,
            tx,
            poll_interval,
            last,
        }
    }

    /// Runs until `stop` is cancelled.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
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
                () = stop.cancelled() => return,
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
                Err(e) => {
                    tracing::error!(error = %crate::telemetry::Chain(&e), "live feed read task failed");
                    return;
                }
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
