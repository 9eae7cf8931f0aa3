//! Connection floods and squatters, over real sockets: slowloris and idle connections, the
//! connection caps, the per-client subscriber cap (with `X-Forwarded-For` from trusted proxies
//! only) and subscribers that never answer pings. Clients bind 127.0.0.2, 127.0.0.3, … before
//! connecting so the server sees distinct addresses.

use std::time::Duration;

use atmos_labeler::server::Options;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::daemon::{TestLabeler, World};
use crate::common::eventually;
use crate::common::metrics::{Scoped, scrape};
use crate::common::net::{
    RawFrame, RawWebSocket, closed_now, connect_from, get, http_from, next_data, subscribe_from,
    until_closed,
};
use crate::common::server::{TestServer, WAIT, label, options, seed};

const FLOODER: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.3";

/// A header timeout no test reaches by accident.
const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_slowloris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let s = TestServer::start(Options {
        header_read_timeout: Duration::from_millis(500),
        ..options()
    })
    .await;
    // A request head that never ends: one more header byte every 20 ms, each well inside the
    // timeout, so a deadline pushed back by every byte would never pass. Left alone it would
    // trickle for far longer than WAIT.
    let mut slow = connect_from(FLOODER, s.addr).await;
    slow.write_all(b"GET /xrpc/_health HTTP/1.1\r\nHost: labeler\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let trickle = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..(2 * WAIT.as_millis() / 20) {
            tick.tick().await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
        panic!("the server let a header trickle on for {:?}", 2 * WAIT);
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        if let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            panic!(
                "the server answered a request it never got whole: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    };
    let others = async {
        // Meanwhile another client is served, again and again.
        let http = http_from(OTHER);
        for _ in 0..5 {
            let r = http
                .get(format!("http://{}/xrpc/_health", s.addr))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let cut = async {
        tokio::select! {
            () = trickle => {}
            () = closed => {}
        }
    };
    tokio::join!(cut, others);

    // A client that sends half a head and then nothing is closed the same way.
    let mut stalled = connect_from(FLOODER, s.addr).await;
    stalled.write_all(b"GET /xrpc/_he").await.unwrap();
    until_closed(&mut stalled).await;
    s.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let s = TestServer::start(Options {
        header_read_timeout: Duration::from_millis(300),
        ..options()
    })
    .await;
    // Kept alive after a response, then idle: closed.
    let mut kept = connect_from(OTHER, s.addr).await;
    assert_eq!(get(&mut kept, "/xrpc/_health").await.status, 200);
    assert_eq!(
        get(&mut kept, "/xrpc/_health").await.status,
        200,
        "keep-alive"
    );
    until_closed(&mut kept).await;
    // Never a byte: closed.
    let mut silent = connect_from(OTHER, s.addr).await;
    until_closed(&mut silent).await;
    s.stop().await;
}

/// The flood holds its `max_connections_per_ip` connections (idle until the header timeout)
/// and loses the rest at once; other hosts are served throughout.
#[tokio::test]
async fn two_thousand_idle_connections_from_one_host_do_not_stop_query_labels() {
    const FLOOD: usize = 2000;
    let per_ip = Options::default().max_connections_per_ip;
    assert!(per_ip < FLOOD);
    let recorder = Scoped::install();
    let s = TestServer::start_metered(
        Options {
            header_read_timeout: LONG,
            ..options()
        },
        recorder.handle.clone(),
        |store| {
            seed(store, 1);
        },
    )
    .await;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(connect_from(FLOODER, s.addr).await);
    }

    let r = http_from(OTHER)
        .get(format!(
            "http://{}/xrpc/com.atproto.label.queryLabels?uriPatterns=did:plc:seed000000",
            s.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["labels"][0]["uri"], "did:plc:seed000000");

    let refused = FLOOD - per_ip;
    let count_closed = || flood.iter().filter(|c| closed_now(c) == Some(true)).count();
    assert!(
        eventually(WAIT, || async { count_closed() == refused }).await,
        "{} of {FLOOD} idle connections closed, expected {refused}",
        count_closed()
    );
    let open = flood
        .iter()
        .filter(|c| closed_now(c) == Some(false))
        .count();
    assert_eq!(open, per_ip, "the flooder keeps its share, idle");

    // The flooder cannot open more; everyone else can.
    let mut more = connect_from(FLOODER, s.addr).await;
    until_closed(&mut more).await;
    let mut other = connect_from(OTHER, s.addr).await;
    assert_eq!(get(&mut other, "/xrpc/_health").await.status, 200);
    let metrics = scrape(&s.base()).await;
    let refusals = |reason| {
        metrics.get(
            "labeler_server_connections_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refusals("per_client"), (refused + 1) as f64);
    assert_eq!(refusals("total"), 0.0);
    s.stop().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once_until_a_slot_frees() {
    let s = TestServer::start(Options {
        max_connections: 4,
        header_read_timeout: LONG,
        ..options()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(FLOODER, s.addr).await);
    }
    // The held ones are served: the cap counts connections, not requests.
    assert_eq!(get(&mut held[0], "/xrpc/_health").await.status, 200);
    let mut fifth = connect_from(OTHER, s.addr).await;
    until_closed(&mut fifth).await;

    // One closes; its slot comes back (the server notices asynchronously: retry, bounded).
    drop(held.pop());
    let served = eventually(WAIT, || async {
        let mut c = connect_from(OTHER, s.addr).await;
        c.write_all(b"GET /xrpc/_health HTTP/1.1\r\nHost: labeler\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        matches!(
            tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_exact(&mut c, &mut buf)).await,
            Ok(Ok(_)) if &buf == b"HTTP/1.1 200"
        )
    })
    .await;
    assert!(served, "a freed slot is given to the next connection");
    s.stop().await;
}

/// The real daemon, with the default `maxSubscribersPerIp` (32) from its config.
#[tokio::test]
async fn subscribers_beyond_the_per_ip_cap_are_refused_before_the_upgrade() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    assert_eq!(labeler.config.max_subscribers_per_ip, 32);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..40 {
        match subscribe_from(FLOODER, labeler.addr, None).await {
            Ok(ws) => accepted.push(ws),
            Err(r) => refused.push(r),
        }
    }
    assert_eq!((accepted.len(), refused.len()), (32, 8));
    for (status, body) in &refused {
        assert_eq!(*status, 429);
        assert_eq!(body["error"], "TooManySubscribers", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("at most 32"),
            "{body}"
        );
    }
    // Another host is not affected.
    let mut other = subscribe_from(OTHER, labeler.addr, None)
        .await
        .expect("another host subscribes");

    // A slot given back is usable again (closing is noticed asynchronously: retry, bounded).
    let mut first = accepted.swap_remove(0);
    first.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        if let Ok(ws) = subscribe_from(FLOODER, labeler.addr, None).await {
            break ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooder never got its slot back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Everyone still subscribed gets the next label.
    labeler
        .store()
        .write_labels(&[label("did:plc:after-the-flood", "spam", false)])
        .unwrap();
    assert!(next_data(&mut other).await.is_some());
    assert!(next_data(&mut again).await.is_some());
    assert!(next_data(&mut accepted[0]).await.is_some());
    labeler.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    const PROXY: &str = "127.0.0.2";
    let s = TestServer::start(Options {
        max_subscribers_per_ip: 2,
        max_connections_per_ip: 2,
        trusted_proxies: vec!["127.0.0.2/32".parse().unwrap()],
        header_read_timeout: LONG,
        ..options()
    })
    .await;
    // The proxy is exempt from the per-client connection cap: it carries many clients.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect_from(PROXY, s.addr).await);
    }
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(
            subscribe_from(PROXY, s.addr, Some("198.51.100.1"))
                .await
                .unwrap(),
        );
    }
    let (status, body) = subscribe_from(PROXY, s.addr, Some("198.51.100.1"))
        .await
        .unwrap_err();
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("TooManySubscribers"))
    );
    // Another client behind the same proxy has its own share; a client-written hop left of
    // the proxy's does not change who it is.
    kept.push(
        subscribe_from(PROXY, s.addr, Some("198.51.100.1, 198.51.100.2"))
            .await
            .unwrap(),
    );
    kept.push(
        subscribe_from(PROXY, s.addr, Some("203.0.113.50, 198.51.100.2"))
            .await
            .unwrap(),
    );
    assert_eq!(
        subscribe_from(PROXY, s.addr, Some("198.51.100.2"))
            .await
            .unwrap_err()
            .0,
        429
    );

    // An untrusted peer's header is ignored: it counts as itself whatever it claims.
    for claim in ["198.51.100.3", "198.51.100.4"] {
        kept.push(subscribe_from(OTHER, s.addr, Some(claim)).await.unwrap());
    }
    assert_eq!(
        subscribe_from(OTHER, s.addr, Some("198.51.100.5"))
            .await
            .unwrap_err()
            .0,
        429
    );
    for c in &idle {
        assert_eq!(
            closed_now(c),
            Some(false),
            "the proxy's connections stay open"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    let recorder = Scoped::install();
    let s = TestServer::start_metered(
        Options {
            ping_interval: Duration::from_millis(250),
            ..options()
        },
        recorder.handle.clone(),
        |_| {},
    )
    .await;
    let mut squatter =
        RawWebSocket::connect(FLOODER, s.addr, "/xrpc/com.atproto.label.subscribeLabels").await;
    let mut healthy = subscribe_from(OTHER, s.addr, None).await.unwrap();
    // Keep the healthy one reading (tungstenite answers pings while it reads), reporting
    // pings (`None`) and data frames.
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = healthy.next().await {
            match m {
                Message::Ping(_) => frames_tx.send(None).unwrap(),
                Message::Binary(b) => frames_tx.send(Some(b)).unwrap(),
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let mut next_healthy = async || {
        tokio::time::timeout(WAIT, frames_rx.recv())
            .await
            .expect("the healthy subscriber hears something in time")
            .expect("the healthy subscriber is open")
    };

    s.store
        .write_labels(&[label("did:plc:first", "spam", false)])
        .unwrap();
    // The squatter reads frames, label and pings alike, and answers none of the pings.
    let mut data = 0;
    let mut pings = 0;
    let close = loop {
        match squatter.next_frame().await {
            RawFrame::Data(_) => data += 1,
            RawFrame::Ping => pings += 1,
            RawFrame::Close(code) => break code,
            RawFrame::Eof => break None,
        }
    };
    assert_eq!(data, 1, "it read the label");
    assert_eq!(pings, 2, "closed after two unanswered pings");
    assert_eq!(close, Some(1008));

    // The one that answers gets its label, then more pings than the squatter survived, and is
    // still subscribed after them.
    let mut healthy_pings = 0;
    let mut healthy_data = 0;
    while healthy_data < 1 || healthy_pings < 4 {
        match next_healthy().await {
            Some(_) => healthy_data += 1,
            None => healthy_pings += 1,
        }
    }
    s.store
        .write_labels(&[label("did:plc:second", "spam", false)])
        .unwrap();
    while next_healthy().await.is_none() {}
    let metrics = scrape(&s.base()).await;
    assert_eq!(
        metrics.get("labeler_server_subscribers_unresponsive_total", &[]),
        1.0
    );
    s.stop().await;
    let _ = tokio::time::timeout(WAIT, reader).await;
}
