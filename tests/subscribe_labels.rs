//! `com.atproto.label.subscribeLabels` over real sockets: docs/protocol.md §5 and §6.
//! Every `#labels` frame received here is decoded with the reference DAG-CBOR codec and its
//! label's signature verified (see `common::server::decode`).

use std::time::Duration;

use atmos_labeler::server::Options;
use atmos_labeler::store::Store;
use atmos_labeler::telemetry::SUBSCRIBERS_TOO_SLOW;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::metrics::{Scoped, scrape};
use crate::common::server::{
    Event, Subscriber, TestServer, WAIT, decode, key, label, options, seed, seed_labels,
};
use crate::common::{label_vectors, unhex, vector_label};

#[tokio::test]
async fn frames_are_byte_identical_to_the_vectors() {
    let v = label_vectors();
    let s = TestServer::start_with(options(), |store| {
        let signed = vector_label(&v["cases"][0]["unsignedLabel"]).sign(&key());
        assert_eq!(store.write_labels(&[signed]).unwrap()[0].seq, 1);
    })
    .await;
    let mut sub = s.subscribe("cursor=0").await;
    match sub.next_event().await {
        Event::Labels { seq, raw, .. } => {
            assert_eq!(seq, 1);
            assert_eq!(
                raw,
                unhex(v["subscribeFrame"]["frameHex"].as_str().unwrap())
            );
        }
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_cursor_past_the_head_gets_future_cursor_then_close() {
    let v = label_vectors();
    let s = TestServer::start_with(options(), |store| {
        seed(store, 3);
    })
    .await;
    let mut sub = s.subscribe("cursor=4").await;
    match sub.next_event().await {
        Event::Error {
            error,
            message,
            raw,
        } => {
            assert_eq!(error, "FutureCursor");
            assert_eq!(message.as_deref(), Some("Cursor in the future."));
            assert_eq!(raw, unhex(v["errorFrame"]["frameHex"].as_str().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(sub.next_event().await, Event::Closed(Some(1008))));

    // The head itself is not in the future: nothing to replay, then live.
    let mut at_head = s.subscribe("cursor=3").await;
    s.store
        .write_labels(&[label("did:plc:fc-live", "spam", false)])
        .unwrap();
    let (seq, l) = at_head.next_label().await;
    assert_eq!((seq, l.uri.as_str()), (4, "did:plc:fc-live"));
    s.stop().await;
}

#[tokio::test]
async fn a_malformed_cursor_gets_invalid_request_then_close() {
    let s = TestServer::start(options()).await;
    for bad in ["cursor=abc", "cursor=-1"] {
        let mut sub = s.subscribe(bad).await;
        match sub.next_event().await {
            Event::Error { error, .. } => assert_eq!(error, "InvalidRequest", "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
        assert!(matches!(sub.next_event().await, Event::Closed(Some(1008))));
    }
    // An empty database has head 0: cursor=0 is valid there.
    let mut sub = s.subscribe("cursor=0").await;
    s.store
        .write_labels(&[label("did:plc:first", "spam", false)])
        .unwrap();
    assert_eq!(sub.next_label().await.0, 1);
    s.stop().await;
}

#[tokio::test]
async fn cursor_zero_replays_everything_then_goes_live_without_gap_or_duplicate() {
    const SEEDED: usize = 1200; // more than one backfill page
    let s = TestServer::start_with(options(), |store| {
        seed(store, SEEDED);
    })
    .await;
    let mut sub = s.subscribe("cursor=0").await;
    let mut seqs = Vec::new();
    let (first, _) = sub.next_label().await;
    seqs.push(first);
    // The backfill has started; this label commits while it runs and must arrive exactly
    // once, whether the backfill reads it from SQLite or the live feed delivers it.
    let during = s
        .store
        .write_labels(&[label("did:plc:during", "spam", false)])
        .unwrap()[0]
        .seq;
    while *seqs.last().unwrap() < during {
        seqs.push(sub.next_label().await.0);
    }
    // Now certainly live.
    let after = s
        .store
        .write_labels(&[label("did:plc:after", "spam", false)])
        .unwrap()[0]
        .seq;
    let (seq, l) = sub.next_label().await;
    assert_eq!((seq, l.uri.as_str()), (after, "did:plc:after"));
    seqs.push(seq);

    let expected: Vec<i64> = (1..=SEEDED as i64 + 2).collect();
    assert_eq!(seqs.len(), expected.len());
    assert_eq!(seqs, expected, "strictly increasing, no gap, no duplicate");
    s.stop().await;
}

#[tokio::test]
async fn no_cursor_means_live_only() {
    let s = TestServer::start_with(options(), |store| {
        seed(store, 5);
    })
    .await;
    let mut sub = s.subscribe("").await;
    s.store
        .write_labels(&[label("did:plc:new", "spam", false)])
        .unwrap();
    let (seq, l) = sub.next_label().await;
    assert_eq!((seq, l.uri.as_str()), (6, "did:plc:new"));
    s.stop().await;
}

#[tokio::test]
async fn a_negation_replaces_the_original_in_the_stream() {
    let s = TestServer::start(options()).await;
    let mut live = s.subscribe("").await;
    s.store
        .write_labels(&[label("did:plc:n", "spam", false)])
        .unwrap();
    let (seq1, l1) = live.next_label().await;
    // (Written before the feed read the original, the negation would simply replace it: only
    // current rows are ever sent.)
    s.store
        .write_labels(&[label("did:plc:n", "spam", true)])
        .unwrap();
    let (seq2, l2) = live.next_label().await;
    assert_eq!((seq1, l1.neg), (1, None));
    assert_eq!((seq2, l2.neg), (2, Some(true)));

    // Re-subscribing from 0 shows the negation, not the original.
    let mut again = s.subscribe("cursor=0").await;
    let (seq, l) = again.next_label().await;
    assert_eq!((seq, l.uri.as_str(), l.neg), (2, "did:plc:n", Some(true)));
    s.store
        .write_labels(&[label("did:plc:marker", "spam", false)])
        .unwrap();
    let (seq, l) = again.next_label().await;
    assert_eq!(
        (seq, l.uri.as_str()),
        (3, "did:plc:marker"),
        "nothing in between"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_label_written_by_another_process_reaches_subscribers() {
    let s = TestServer::start(options()).await;
    let mut sub = s.subscribe("").await;
    // A second handle on the same file, as the `labeler label` CLI would open: its commits do
    // not notify this process, so only the data_version watcher can see them.
    let other = Store::open(&s.db_path()).unwrap();
    other
        .write_labels(&[label("did:plc:from-cli", "spam", false)])
        .unwrap();
    let (seq, l) = sub.next_label().await;
    assert_eq!((seq, l.uri.as_str()), (1, "did:plc:from-cli"));
    s.stop().await;
}

#[tokio::test]
async fn idle_subscribers_answer_pings_and_ignore_client_frames() {
    let s = TestServer::start(Options {
        ping_interval: Duration::from_millis(50),
        ..options()
    })
    .await;
    let mut sub = s.subscribe("").await;
    sub.send(Message::text("hello, ignore me")).await;
    sub.send(Message::binary(vec![0xff, 0x00])).await;
    sub.send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let mut got_pong = false;
    let mut got_ping = false;
    while !(got_pong && got_ping) {
        match sub.next_message().await {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"are you there");
                got_pong = true;
            }
            // The server keeps idle connections alive with its own pings.
            Some(Ok(Message::Ping(_))) => got_ping = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Still subscribed after all that.
    s.store
        .write_labels(&[label("did:plc:still", "spam", false)])
        .unwrap();
    assert_eq!(sub.next_label().await.1.uri, "did:plc:still");
    s.stop().await;
}

#[tokio::test]
async fn the_connection_cap_refuses_with_an_xrpc_error_before_upgrading() {
    let s = TestServer::start(Options {
        max_subscribers: 2,
        ..options()
    })
    .await;
    let mut a = s.subscribe("").await;
    let _b = s.subscribe("").await;
    let refused = tokio_tungstenite::connect_async(s.subscribe_url(""))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "TooManySubscribers");

    // Closing one frees its slot. The server notices asynchronously and tells no client
    // when it has: retry, bounded.
    a.close().await;
    assert!(matches!(a.next_event().await, Event::Closed(_)));
    assert!(
        crate::common::eventually(WAIT, || async {
            tokio_tungstenite::connect_async(s.subscribe_url(""))
                .await
                .is_ok()
        })
        .await,
        "slot never freed"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_cut_off_and_others_keep_receiving() {
    const LABELS: usize = 100;
    // 80 KB subjects make 8 MB of backfill: more than loopback socket buffers hold.
    let big = "x".repeat(80 * 1024);
    // This test's own recorder: another test cutting off a slow consumer in parallel in this
    // process cannot move the counter read below.
    let recorder = Scoped::install();
    let s = TestServer::start_metered(
        Options {
            subscriber_buffer: 8,
            write_timeout: Duration::from_millis(300),
            ..options()
        },
        recorder.handle.clone(),
        |store| {
            let labels: Vec<_> = (0..LABELS)
                .map(|i| label(&format!("did:plc:{big}{i:04}"), "spam", false))
                .collect();
            store.write_labels(&labels).unwrap();
        },
    )
    .await;

    // The stalled client: a tiny receive buffer and no reads at all.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(s.subscribe_url("cursor=0"), stream)
        .await
        .unwrap();

    // A healthy client gets everything, then a live label.
    let mut healthy = s.subscribe("cursor=0").await;
    for i in 1..=LABELS as i64 {
        assert_eq!(healthy.next_label().await.0, i);
    }
    s.store
        .write_labels(&[label("did:plc:live", "spam", false)])
        .unwrap();
    assert_eq!(healthy.next_label().await.1.uri, "did:plc:live");

    // The stalled client was closed: once it reads, its stream ends (after whatever was
    // buffered, possibly a ConsumerTooSlow frame) instead of delivering everything.
    let mut frames = 0;
    let mut too_slow = false;
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = stalled.next().await {
            match msg {
                Message::Binary(b) => match decode(&b) {
                    Event::Labels { .. } => frames += 1,
                    Event::Error { error, .. } => {
                        assert_eq!(error, "ConsumerTooSlow");
                        too_slow = true;
                    }
                    Event::Closed(_) => unreachable!(),
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled subscriber was never closed");
    assert!(
        frames < LABELS + 1,
        "it was cut off ({frames} frames, too_slow={too_slow})"
    );

    // Exactly one consumer was cut off for being too slow: the stalled one, not the healthy.
    let metrics = scrape(&s.base()).await;
    assert_eq!(metrics.get(SUBSCRIBERS_TOO_SLOW, &[]), 1.0);
    s.stop().await;
}

#[tokio::test]
async fn a_subscriber_lagging_the_live_feed_gets_consumer_too_slow() {
    // A ring of 4 frames, and a burst of 1,200 labels in one commit: the feed publishes them in
    // one go, far faster than any connection can write them, so the subscriber falls more than
    // 4 frames behind while its writes never stall.
    let s = TestServer::start(Options {
        subscriber_buffer: 4,
        ..options()
    })
    .await;
    let mut sub = s.subscribe("").await;
    s.store.write_labels(seed_labels()).unwrap();
    let mut received = 0;
    loop {
        match sub.next_event().await {
            Event::Labels { .. } => received += 1,
            Event::Error { error, .. } => {
                assert_eq!(error, "ConsumerTooSlow");
                break;
            }
            Event::Closed(code) => panic!("closed ({code:?}) without an error frame"),
        }
    }
    assert!(
        received < seed_labels().len(),
        "{received} frames before the cut"
    );
    assert!(matches!(sub.next_event().await, Event::Closed(Some(1008))));
    // It can come back with its cursor and catch up from SQLite.
    let mut again = s.subscribe(&format!("cursor={received}")).await;
    assert_eq!(again.next_label().await.0, received as i64 + 1);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_subscribers_with_going_away() {
    let s = TestServer::start_with(options(), |store| {
        seed(store, 3);
    })
    .await;
    let mut subs: Vec<Subscriber> = Vec::new();
    for _ in 0..3 {
        let mut sub = s.subscribe("cursor=0").await;
        for _ in 0..3 {
            sub.next_label().await;
        }
        subs.push(sub);
    }
    let stopping = tokio::spawn(s.stop());
    for mut sub in subs {
        assert!(matches!(sub.next_event().await, Event::Closed(Some(1001))));
    }
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}
