//! `/xrpc/_health` per component, and the Jetstream gauges computed at scrape time: the real
//! daemon with Jetstream up or refusing, and the server alone over a database that stops
//! answering or with a guard state set.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use atmos_labeler::app;
use atmos_labeler::health::{self, Health};
use atmos_labeler::keys::SigningKey;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::daemon::{self, TestLabeler, World};
use crate::common::metrics::{Scoped, scrape};
use crate::common::server::{TestServer, WAIT, options};

/// `GET /xrpc/_health` → status and body.
async fn get_health(addr: SocketAddr) -> (u16, Value) {
    let r = tokio::time::timeout(WAIT, reqwest::get(format!("http://{addr}/xrpc/_health")))
        .await
        .expect("health answers in time")
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls health until `want` holds (component state changes have no notification a client
/// can wait on); panics with the last body after [`WAIT`].
async fn health_until(addr: SocketAddr, want: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get_health(addr).await;
        if want(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never got there: {status} {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_running_daemon_reports_every_component_ok() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    // A frame on the wire (an identity event for an untracked DID: skipped, but it moves the
    // cursor the manager commits).
    world
        .jetstream
        .identity("did:plc:someone", "someone.example.com");
    let (status, body) = health_until(labeler.addr, |_, b| {
        let j = &b["components"]["jetstream"];
        j["lastFrameSecondsAgo"].is_number() && j["lagSeconds"].is_number()
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["status"], "ok", "{body:#}");
    let c = &body["components"];
    assert_eq!(c["database"]["status"], "ok");
    let j = &c["jetstream"];
    assert_eq!(
        (j["status"].as_str(), j["connected"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert!(j["since"].as_str().unwrap().ends_with('Z'), "{j}");
    assert!(j["lagSeconds"].as_f64().unwrap() >= 0.0);
    let f = &c["liveFeed"];
    assert_eq!(
        (f["status"].as_str(), f["running"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(f["restarts"], 0);
    if let Some(g) = c.get("guard") {
        assert_eq!(g["status"], "ok", "{g}");
    }
    labeler.stop().await;
}

#[tokio::test]
async fn health_is_degraded_but_200_while_jetstream_refuses_the_labeler() {
    let world = World::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = daemon::config(&world, tmp.path(), "24h");
    // An HTTP server with no /subscribe: every connection attempt is refused with a 404.
    config.jetstream_url = format!(
        "{}/subscribe",
        world.plc.url().replacen("http://", "ws://", 1)
    );
    std::fs::create_dir_all(&config.state_dir).unwrap();
    SigningKey::load_or_create(&config.signing_key_path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = app::start(
        &config,
        daemon::tuning(&config),
        listener,
        CancellationToken::new(),
    )
    .await
    .unwrap();

    let (status, body) = health_until(running.addr, |_, b| {
        b["components"]["jetstream"]["lastError"].is_string()
    })
    .await;
    assert_eq!(status, 200, "reads still work");
    assert_eq!(body["status"], "degraded", "{body:#}");
    let c = &body["components"];
    assert_eq!(c["database"]["status"], "ok");
    let j = &c["jetstream"];
    assert_eq!(j["status"], "disconnected");
    assert_eq!(j["connected"], false);
    assert!(j["since"].is_string(), "since when: {j}");
    assert!(j["lastError"].as_str().unwrap().contains("HTTP 404"), "{j}");
    // The daemon's handle shows the same state (the manager gets it from here).
    let snapshot = running.health.snapshot().jetstream.unwrap();
    assert!(!snapshot.connected && snapshot.last_error.is_some());

    // queryLabels is served all along.
    let r = reqwest::get(format!(
        "http://{}/xrpc/com.atproto.label.queryLabels?uriPatterns=*",
        running.addr
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    running.shutdown.cancel();
    running.wait().await.unwrap();
}

/// Another connection damages the schema (as a corrupted `sqlite_schema` page would), so every
/// connection fails to read; health turns 503 and comes back once it is repaired.
#[tokio::test]
async fn health_is_503_only_while_the_database_cannot_be_read() {
    let s = TestServer::start(options()).await;
    let (status, body) = get_health(s.addr).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let surgeon = rusqlite::Connection::open(s.db_path()).unwrap();
    let original: String = surgeon
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'labels'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let set_schema = |sql: &str| {
        let version: i64 = surgeon
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        surgeon
            .execute_batch("PRAGMA writable_schema = ON;")
            .unwrap();
        surgeon
            .execute(
                "UPDATE sqlite_schema SET sql = ?1 WHERE name = 'labels'",
                [sql],
            )
            .unwrap();
        // Other connections reload the schema when its version changes.
        surgeon
            .execute_batch(&format!(
                "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF;",
                version + 1
            ))
            .unwrap();
    };
    set_schema("CREATE TABLE labels (");

    let (status, body) = get_health(s.addr).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["error"], "Service Unavailable",
        "the shape Ozone and skyware use"
    );
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let db = &body["components"]["database"];
    assert_eq!(db["status"], "unavailable");
    assert_eq!(
        db["error"], "the database cannot be read",
        "no file names leak"
    );

    set_schema(&original);
    let (status, body) = get_health(s.addr).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    s.stop().await;
}

#[tokio::test]
async fn the_guard_state_is_rendered_and_degrades_health() {
    let health = Health::new();
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    health.update(|s| {
        s.guard = Some(health::Guard {
            resolver_degraded: None,
            breaker_open_since: Some(since),
            breaker_reason: Some("9 of 20 operators would lose their labels".to_owned()),
            held: 9,
        });
    });
    let s = TestServer::start_with_health(options(), health.clone(), |_| {}).await;
    let (status, body) = health_until(s.addr, |_, _| true).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded");
    let g = &body["components"]["guard"];
    assert_eq!(g["status"], "breaker-open");
    assert_eq!(g["breakerOpenSince"], "2026-11-18T11:06:40.000Z");
    assert_eq!(
        g["breakerReason"],
        "9 of 20 operators would lose their labels"
    );
    assert_eq!(g["held"], 9);

    health.update(|s| {
        s.guard = Some(health::Guard {
            resolver_degraded: Some("SERVFAIL for 5 names known to exist".to_owned()),
            ..health::Guard::default()
        });
    });
    let (_, body) = get_health(s.addr).await;
    assert_eq!(body["components"]["guard"]["status"], "resolver-degraded");
    assert_eq!(body["status"], "degraded");

    health.update(|s| s.guard = Some(health::Guard::default()));
    let (status, body) = get_health(s.addr).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(body["components"]["liveFeed"]["running"], true);
    s.stop().await;
}

/// The lag comes from the committed cursor when `/metrics` is scraped, so it keeps growing
/// while no event arrives (set per event, it froze exactly then).
#[tokio::test]
async fn jetstream_lag_is_computed_at_scrape_time_from_the_saved_cursor() {
    let hour_ago_us = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        - Duration::from_secs(3600))
    .as_micros() as i64;
    let health = Health::new();
    health.update(|s| {
        s.jetstream = Some(health::Jetstream {
            connected: false,
            since: Some(SystemTime::now()),
            last_frame: Some(Instant::now() - Duration::from_secs(90)),
            last_error: Some("read failed: connection reset".to_owned()),
        });
    });
    let recorder = Scoped::install();
    let s = TestServer::start_full(options(), recorder.handle.clone(), health, |store| {
        store.save_cursor(hour_ago_us).unwrap();
    })
    .await;
    let metrics = scrape(&s.base()).await;
    let gauge = |name: &str| -> f64 {
        assert!(metrics.has(name), "{name} is exposed");
        metrics.get(name, &[])
    };
    let lag = gauge("labeler_jetstream_lag_seconds");
    assert!(
        (3600.0..3600.0 + WAIT.as_secs_f64()).contains(&lag),
        "{lag}"
    );
    assert!(gauge("labeler_jetstream_last_frame_age_seconds") >= 90.0);
    assert_eq!(gauge("labeler_jetstream_connected"), 0.0);

    let (_, body) = get_health(s.addr).await;
    let j = &body["components"]["jetstream"];
    assert!(j["lagSeconds"].as_f64().unwrap() >= 3600.0, "{j}");
    assert!(j["lastFrameSecondsAgo"].as_f64().unwrap() >= 90.0, "{j}");
    assert_eq!(body["status"], "degraded");
    s.stop().await;
}
