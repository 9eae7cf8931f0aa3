//! The crash run's subscribeLabels follower: one client that stays subscribed across every
//! kill and restart, and records every frame it receives.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atmos_labeler::label::VERIFIED_MAIL_OPERATOR;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::rows::{Frame, Row, read_frame};

/// What the subscribeLabels follower has seen.
#[derive(Default)]
pub struct FollowState {
    pub frames: Vec<Row>,
    pub last_seq: i64,
    /// DIDs whose positive label has been received.
    pub labelled: HashSet<String>,
    pub connects: usize,
    pub problems: Vec<String>,
}

/// Follows subscribeLabels from `cursor=0`, reconnecting with its last seq whenever the
/// connection ends (the labeler was killed), until `stop`.
pub async fn follow(addr: SocketAddr, state: Arc<Mutex<FollowState>>, stop: CancellationToken) {
    loop {
        let cursor = state.lock().expect("follower state").last_seq;
        let url = format!("ws://{addr}/xrpc/com.atproto.label.subscribeLabels?cursor={cursor}");
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url),
        );
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            r = attempt => r,
        };
        let Ok(Ok((mut ws, _))) = connected else {
            // Down (being restarted): try again shortly.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => continue,
            }
        };
        state.lock().expect("follower state").connects += 1;
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = ws.next() => m,
            };
            let bytes = match msg {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            // Decoded (signature checks included) without holding the lock the publisher
            // reads; only this task writes `last_seq`.
            let prev = state.lock().expect("follower state").last_seq;
            let frame = read_frame(&bytes, prev);
            let mut s = state.lock().expect("follower state");
            match frame {
                Frame::Labels {
                    seq,
                    labels,
                    problems,
                } => {
                    s.last_seq = s.last_seq.max(seq);
                    for l in &labels {
                        let row = Row::from_wire(seq, l);
                        if !row.neg && row.val == VERIFIED_MAIL_OPERATOR {
                            s.labelled.insert(row.uri.clone());
                        }
                        s.frames.push(row);
                    }
                    s.problems.extend(problems);
                }
                Frame::Bad(problem) => s.problems.push(problem),
                Frame::Closed => {}
            }
        }
    }
}
