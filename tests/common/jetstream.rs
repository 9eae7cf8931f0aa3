//! `FakeJetstream`: a real WebSocket server speaking Jetstream's v1 `/subscribe` wire format
//! (`docs/jetstream.md` §1–§3): JSON text frames, `wantedCollections` filtering of
//! commit events (identity and account events always pass), and an inclusive `time_us`
//! `cursor` that replays the stored log before going live. Faults on demand: drop every
//! connection after N events (no close frame), or send raw frames.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// The attestation collection.
pub const NSID: &str = "email.atmos.attestation";

#[derive(Default)]
struct State {
    /// Every event ever published, in `time_us` order (a frame is stored as text).
    log: Vec<(i64, String, Option<String>)>,
    next_time: i64,
    /// Remaining sessions to cut, and after how many frames each.
    drops: VecDeque<usize>,
    connections: usize,
    cursors: Vec<Option<i64>>,
    /// `time_us` follows the wall clock (at least 1 µs apart) instead of 1 ms steps.
    wall_clock: bool,
}

/// A running fake Jetstream.
#[derive(Clone)]
pub struct FakeJetstream {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl FakeJetstream {
    /// Starts on 127.0.0.1 with an empty log.
    pub async fn start() -> FakeJetstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeJetstream {
            addr,
            state: Arc::new(Mutex::new(State {
                next_time: now_us(),
                ..State::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        fake
    }

    /// `ws://127.0.0.1:port/subscribe`
    pub fn url(&self) -> String {
        format!("ws://{}/subscribe", self.addr)
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// The `cursor` each connection asked for, in order.
    pub fn cursors(&self) -> Vec<Option<i64>> {
        self.state.lock().unwrap().cursors.clone()
    }

    /// Drops requested with [`FakeJetstream::drop_connections`] that have not happened yet.
    pub fn drops_left(&self) -> usize {
        self.state.lock().unwrap().drops.len()
    }

    /// Cut the next `times` connections after `after` frames each, without a close frame.
    pub fn drop_connections(&self, times: usize, after: usize) {
        let mut s = self.state.lock().unwrap();
        s.drops.extend(std::iter::repeat_n(after, times));
    }

    /// From now on, stamp events with the wall clock (as the real Jetstream does), so a
    /// consumer's time-based rewind covers the events of that much real time. By default
    /// events are spaced 1 ms apart whatever the pace, which suits tests that publish in
    /// bursts; a long run at a steady pace (the `faults` bench) needs real time.
    pub fn follow_wall_clock(&self) {
        self.state.lock().unwrap().wall_clock = true;
    }

    /// Publishes an event (the `time_us` is assigned here, strictly increasing) and returns
    /// its `time_us`. `collection` is `Some` for commit events.
    fn publish(&self, build: impl FnOnce(i64) -> Value, collection: Option<&str>) -> i64 {
        let mut s = self.state.lock().unwrap();
        s.next_time = if s.wall_clock {
            (s.next_time + 1).max(now_us())
        } else {
            s.next_time + 1000
        };
        let t = s.next_time;
        let text = build(t).to_string();
        s.log.push((t, text, collection.map(str::to_owned)));
        drop(s);
        self.changed.notify_waiters();
        t
    }

    /// Publishes a raw text frame (malformed input) that is still delivered to everyone.
    pub fn raw(&self, text: &str) -> i64 {
        self.publish(|_| Value::String(text.to_owned()), None)
    }

    /// A create (or update) of an attestation record. Returns the `time_us`.
    pub fn put(&self, did: &str, rkey: &str, record: &Value, cid: &str, update: bool) -> i64 {
        let (did, rkey, record, cid) = (
            did.to_owned(),
            rkey.to_owned(),
            record.clone(),
            cid.to_owned(),
        );
        self.publish(
            |t| {
                json!({"did": did, "time_us": t, "kind": "commit", "commit": {
                    "rev": tid(t), "operation": if update { "update" } else { "create" },
                    "collection": NSID, "rkey": rkey, "record": record, "cid": cid}})
            },
            Some(NSID),
        )
    }

    /// A delete of an attestation record.
    pub fn delete(&self, did: &str, rkey: &str) -> i64 {
        let (did, rkey) = (did.to_owned(), rkey.to_owned());
        self.publish(
            |t| {
                json!({"did": did, "time_us": t, "kind": "commit", "commit": {
                    "rev": tid(t), "operation": "delete", "collection": NSID, "rkey": rkey}})
            },
            Some(NSID),
        )
    }

    /// A commit in another collection (filtered out by `wantedCollections`).
    pub fn other_commit(&self, did: &str, collection: &str) -> i64 {
        let (did, c) = (did.to_owned(), collection.to_owned());
        self.publish(
            |t| {
                json!({"did": did, "time_us": t, "kind": "commit", "commit": {
                    "rev": tid(t), "operation": "create", "collection": c, "rkey": "x",
                    "record": {"text": "hello"}, "cid": "bafyother"}})
            },
            Some(collection),
        )
    }

    /// An identity event.
    pub fn identity(&self, did: &str, handle: &str) -> i64 {
        let (did, handle) = (did.to_owned(), handle.to_owned());
        self.publish(
            |t| {
                json!({"did": did, "time_us": t, "kind": "identity", "identity": {
                    "did": did, "handle": handle, "seq": t, "time": "2026-11-23T00:00:00.000Z"}})
            },
            None,
        )
    }

    /// An account event.
    pub fn account(&self, did: &str, active: bool, status: Option<&str>) -> i64 {
        let (did, status) = (did.to_owned(), status.map(str::to_owned));
        self.publish(
            |t| {
                let mut a = json!({"active": active, "did": did, "seq": t,
                    "time": "2026-11-23T00:00:00.000Z"});
                if let Some(s) = status {
                    a["status"] = s.into();
                }
                json!({"did": did, "time_us": t, "kind": "account", "account": a})
            },
            None,
        )
    }

    async fn serve(self, stream: tokio::net::TcpStream) {
        let query = Arc::new(Mutex::new(String::new()));
        let q = query.clone();
        #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
        let callback = move |req: &Request, resp: Response| {
            *q.lock().unwrap() = req.uri().query().unwrap_or("").to_owned();
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        let query = query.lock().unwrap().clone();
        let mut wanted = Vec::new();
        let mut cursor = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("wantedCollections", v)) => wanted.push(v.to_owned()),
                Some(("cursor", v)) => cursor = v.parse::<i64>().ok(),
                _ => {}
            }
        }
        let drop_after = {
            let mut s = self.state.lock().unwrap();
            s.connections += 1;
            s.cursors.push(cursor);
            s.drops.pop_front()
        };
        // No cursor: live only, from the current head. With a cursor: inclusive replay.
        let mut next = {
            let s = self.state.lock().unwrap();
            match cursor {
                None => s.log.len(),
                Some(c) => s.log.partition_point(|(t, _, _)| *t < c),
            }
        };
        let mut sent = 0usize;
        loop {
            let notified = self.changed.notified();
            let batch: Vec<(String, Option<String>)> = {
                let s = self.state.lock().unwrap();
                let b = s.log[next..]
                    .iter()
                    .map(|(_, text, coll)| (text.clone(), coll.clone()))
                    .collect();
                next = s.log.len();
                b
            };
            for (text, collection) in batch {
                let wanted_here = collection
                    .as_ref()
                    .is_none_or(|c| wanted.is_empty() || wanted.contains(c));
                if !wanted_here {
                    continue;
                }
                if drop_after.is_some_and(|n| sent >= n) {
                    return; // dropping `ws` closes the TCP stream without a close frame
                }
                // Raw frames were stored as JSON strings; send their content verbatim.
                let frame = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::String(raw)) => raw,
                    _ => text,
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if drop_after.is_some_and(|n| sent >= n) {
                return;
            }
            tokio::select! {
                _ = notified => {}
                msg = ws.next() => match msg {
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A TID (<https://atproto.com/specs/tid>) for a microsecond timestamp: 13 characters of base32-sortable,
/// so later timestamps give later revisions.
pub fn tid(time_us: i64) -> String {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let v = ((time_us as u64) << 10) & 0x7fff_ffff_ffff_ffff;
    (0..13)
        .rev()
        .map(|i| ALPHABET[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}
