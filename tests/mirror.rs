//! Mirrors (`labeler mirror`): a primary and mirrors over real sockets, observed the way
//! relays observe them — queryLabels pages, subscribeLabels frames, `/xrpc/_health`,
//! `/metrics` — and their SQLite files.

use std::time::Duration;

use atmos_labeler::app;
use atmos_labeler::keys::{PublicKey, SigningKey};
use atmos_labeler::label::{Label, SignedLabel};
use atmos_labeler::store::{Store, StoredLabel};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::daemon::{TestLabeler, World, pages};
use crate::common::mirror::{
    self, MirrorProcess, TestMirror, await_cursor, frames_until, upstream_health,
};
use crate::common::server::{self, Event, Subscriber, TestServer, WAIT};

/// Labels from the test key on `did:plc:{tag}0000`, `…0001`, …
fn labels(tag: &str, n: usize, src: &str, key: &SigningKey) -> Vec<SignedLabel> {
    let cts = atmos_labeler::label::now_cts();
    (0..n)
        .map(|i| {
            Label {
                src: src.to_owned(),
                uri: format!("did:plc:{tag}{i:04}"),
                cid: None,
                val: "verified-mail-operator".to_owned(),
                neg: false,
                cts: cts.clone(),
                exp: None,
            }
            .sign(key)
        })
        .collect()
}

/// A negation of `l`, signed with `key`.
fn negation(l: &SignedLabel, key: &SigningKey) -> SignedLabel {
    Label {
        neg: true,
        cts: atmos_labeler::label::now_cts(),
        ..l.label.clone()
    }
    .sign(key)
}

/// Writes labels into a running labeler's database as `labeler label create` does (another
/// process on the same file; the daemon's live feed notices the commit).
async fn issue(store: Store, signed_by: &str, labels: Vec<SignedLabel>) -> Vec<StoredLabel> {
    let by = signed_by.to_owned();
    tokio::task::spawn_blocking(move || store.write_labels_signed_by(&by, &labels).unwrap())
        .await
        .unwrap()
}

/// Every current label of `store`, with its seq.
async fn current(store: Store) -> Vec<StoredLabel> {
    tokio::task::spawn_blocking(move || store.labels_after(0, 1 << 30).unwrap())
        .await
        .unwrap()
}

/// Waits (bounded) until the mirror's upstream connection is `connected`.
async fn await_connected(base: &str, connected: bool) {
    let ok = crate::common::eventually(WAIT, || async {
        upstream_health(base).await["connected"] == connected
    })
    .await;
    assert!(
        ok,
        "mirror {base} connected != {connected}: {:#}",
        upstream_health(base).await
    );
}

/// The next `#labels` frame: `(seq, raw)`.
async fn next_frame(sub: &mut Subscriber) -> (i64, Vec<u8>) {
    match sub.next_event().await {
        Event::Labels { seq, raw, .. } => (seq, raw),
        other => panic!("expected a #labels frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_two_mirrors_serve_the_same_bytes_and_a_consumer_fails_over_with_its_cursor()
{
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let primary = TestLabeler::start_in(&world, dir.path(), "1h", |_| {}).await;
    let key = server::key();
    let did = primary.did.clone();
    assert_eq!(did, key.did_key(), "no labelerDid: the key is the identity");

    // Labels through the pipeline (Jetstream → verification), then by hand: 30 more, two of
    // them negated and one re-issued, so the current seqs have gaps.
    let mut last_event = 0;
    for i in 0..3 {
        last_event = world.good_operator(&format!("did:plc:op{i}"), &format!("op{i}.test"), "self");
    }
    primary.await_cursor(last_event).await;
    let manual = labels("hand", 30, &did, &key);
    issue(primary.store(), &did, manual.clone()).await;
    let changes = vec![
        negation(&manual[3], &key),
        negation(&manual[17], &key),
        labels("hand", 6, &did, &key).remove(5),
    ];
    issue(primary.store(), &did, changes).await;
    let head = primary.store().head_seq().unwrap();

    let a = TestMirror::start(&format!("http://{}", primary.addr), &did).await;
    let b = TestMirror::start(&a.base(), &did).await;
    a.await_cursor(head).await;
    b.await_cursor(head).await;
    assert_eq!(
        b.store().head_seq().unwrap(),
        head,
        "a mirror's head is the primary's, so any cursor from the primary is valid on it"
    );

    // queryLabels pages (small, so there are several): the same bytes on all three.
    let primary_base = format!("http://{}", primary.addr);
    let want_pages = pages(&primary_base, 7).await;
    assert!(want_pages.len() > 3, "{} pages", want_pages.len());
    assert_eq!(pages(&a.base(), 7).await, want_pages, "mirror A's pages");
    assert_eq!(pages(&b.base(), 7).await, want_pages, "mirror B's pages");

    // cursor-0 backfills: the same frames, byte for byte.
    let want_frames = frames_until(&mut primary.subscribe("cursor=0").await, head).await;
    let current_count = current(primary.store()).await.len();
    assert_eq!(want_frames.len(), current_count);
    for m in [&a, &b] {
        let got = frames_until(&mut m.subscribe("cursor=0").await, head).await;
        assert_eq!(got, want_frames, "cursor-0 frames of {}", m.base());
    }

    // A consumer reads the first ten labels from the primary, then the primary goes away.
    let mut consumer = primary.subscribe("cursor=0").await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(next_frame(&mut consumer).await);
    }
    assert_eq!(seen, want_frames[..10]);
    let cursor = seen[9].0;
    consumer.close().await;
    let addr = primary.addr;
    primary.stop().await;

    // The mirrors keep serving.
    await_connected(&a.base(), false).await;
    assert_eq!(pages(&a.base(), 7).await, want_pages);
    assert_eq!(pages(&b.base(), 7).await, want_pages);
    assert_eq!(
        b.upstream().await["connected"],
        true,
        "B follows A, which is up"
    );

    // The consumer moves to mirror B with its cursor: exactly the remaining labels.
    let mut moved = b.subscribe(&format!("cursor={cursor}")).await;
    let rest = frames_until(&mut moved, head).await;
    assert_eq!(rest, want_frames[10..]);

    // The primary comes back on its address; once mirror A has reconnected, a label issued
    // on the primary reaches both mirrors within 2 s.
    let listener = TcpListener::bind(addr).await.unwrap();
    let primary = TestLabeler::start_on(&world, dir.path(), "1h", listener, |_| {}, |_| {}).await;
    await_connected(&a.base(), true).await;
    assert_eq!(b.upstream().await["connected"], true);
    let mut live_a = a.subscribe("").await;
    let mut live_b = b.subscribe("").await;
    let fresh = labels("late", 1, &did, &key);
    let issued = tokio::time::Instant::now();
    let stored = issue(primary.store(), &did, fresh).await;
    let seq = stored[0].seq;
    let deadline = issued + Duration::from_secs(2);
    for (name, live) in [("A", &mut live_a), ("B", &mut live_b)] {
        let (got, _) = tokio::time::timeout_at(deadline, next_frame(live))
            .await
            .unwrap_or_else(|_| panic!("the label did not reach mirror {name} within 2 s"));
        assert_eq!(got, seq, "mirror {name}");
    }
    // The moved consumer's next frame is that label: nothing extra came before it.
    assert_eq!(next_frame(&mut moved).await.0, seq);

    let head = primary.store().head_seq().unwrap();
    b.await_cursor(head).await;
    let want_pages = pages(&format!("http://{}", primary.addr), 7).await;
    assert_eq!(pages(&a.base(), 7).await, want_pages);
    assert_eq!(pages(&b.base(), 7).await, want_pages);
    for m in [&a, &b] {
        assert_eq!(m.upstream().await["refused"], 0);
    }
    b.stop().await;
    a.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_refuses_a_flipped_signature_and_a_foreign_src_and_stores_the_rest() {
    let key = server::key();
    let foreign = SigningKey::generate().unwrap();
    let mut flipped = server::label("did:plc:flipped", "verified-mail-operator", false);
    flipped.sig[20] ^= 0x01;
    let alien = labels("alien", 1, foreign.did_key(), &foreign).remove(0);
    let upstream = TestServer::start_with(server::options(), |s| {
        server::seed(s, 10);
        s.write_labels(&[flipped.clone(), alien.clone()]).unwrap();
        s.write_labels(&server::seed_labels()[10..20]).unwrap();
    })
    .await;
    let head = upstream.store.head_seq().unwrap();
    assert_eq!(head, 22, "ten good, the two bad at 11 and 12, ten good");

    let mut m = MirrorProcess::create(&upstream.base(), key.did_key());
    m.start().await;
    await_cursor(&m.base(), head).await;

    // Refused: logged with their seqs, counted by reason; the rest stored and served.
    let line = m.line_containing("refused a label").await;
    assert!(
        line.contains("seq=11") && line.contains("signature"),
        "{line}"
    );
    let line = m.line_containing("refused a label").await;
    assert!(line.contains("seq=12") && line.contains("src"), "{line}");
    let metrics = m.metrics().await;
    let refused = "labeler_mirror_labels_refused_total";
    assert_eq!(metrics.get(refused, &[("reason", "signature")]), 1.0);
    assert_eq!(metrics.get(refused, &[("reason", "src")]), 1.0);
    assert_eq!(metrics.get("labeler_mirror_labels_stored_total", &[]), 20.0);
    assert_eq!(metrics.get("labeler_mirror_cursor", &[]), 22.0);
    let health = upstream_health(&m.base()).await;
    assert_eq!(health["refused"], 2);

    let all = |base: String| async move {
        let [page] = &pages(&base, 250).await[..] else {
            panic!("one page holds them all");
        };
        let body: Value = serde_json::from_str(page).unwrap();
        body["labels"].as_array().unwrap().clone()
    };
    let mut want = all(upstream.base()).await;
    assert_eq!(want.len(), 22);
    want.retain(|l| l["uri"] != "did:plc:flipped" && l["src"] != foreign.did_key());
    assert_eq!(
        all(m.base()).await,
        want,
        "the mirror serves exactly the good labels"
    );
    let frames = frames_until(&mut m.subscribe("cursor=0").await, head).await;
    let seqs: Vec<i64> = frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=10).chain(13..=22).collect::<Vec<_>>());

    // A mirror holds labels only: getVerification answers 501 and names the labeler.
    let resp = reqwest::get(format!(
        "{}/xrpc/email.atmos.getVerification?did=did:plc:seed000001",
        m.base()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 501);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "MethodNotImplemented");
    assert!(
        body["message"].as_str().unwrap().contains(key.did_key()),
        "{body}"
    );
    // Nor does it re-check or preflight: no manager, no DNS work for strangers.
    let http = reqwest::Client::new();
    let recheck = http
        .post(format!("{}/xrpc/email.atmos.requestVerification", m.base()))
        .json(&serde_json::json!({"did": "did:plc:seed000001"}))
        .send()
        .await
        .unwrap();
    let preflight = http
        .get(format!(
            "{}/xrpc/email.atmos.checkDomain?domain=op.test&did=did:plc:seed000001&selector=s1",
            m.base()
        ))
        .send()
        .await
        .unwrap();
    for resp in [recheck, preflight] {
        assert_eq!(resp.status(), 501, "{}", resp.url());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "MethodNotImplemented", "{body}");
    }
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_killed_mid_catch_up_resumes_from_its_cursor_missing_and_doubling_nothing() {
    let key = server::key();
    let upstream = TestServer::start_with(server::options(), |s| {
        server::seed(s, 1200);
    })
    .await;
    let mut m = MirrorProcess::create(&upstream.base(), key.did_key());
    m.start().await;
    // Killed as soon as it has committed something.
    let started = crate::common::eventually(WAIT, || async {
        m.with_store(|s| s.mirror_cursor().unwrap()).await.is_some()
    })
    .await;
    assert!(started, "the mirror committed nothing");
    m.sigkill();

    // While it is down the upstream negates three labels and issues five.
    let seeded = server::seed_labels();
    let mut changes: Vec<SignedLabel> = [5, 600, 1199]
        .iter()
        .map(|&i| negation(&seeded[i], &key))
        .collect();
    changes.extend(labels("late", 5, key.did_key(), &key));
    upstream.store.write_labels(&changes).unwrap();
    let head = upstream.store.head_seq().unwrap();

    m.start().await;
    await_cursor(&m.base(), head).await;
    let want = current(upstream.store.clone()).await;
    let (got, history) = m
        .with_store(|s| {
            (
                s.labels_after(0, 1 << 30).unwrap(),
                s.label_history().unwrap(),
            )
        })
        .await;
    assert_eq!(
        got, want,
        "the mirror holds exactly the upstream's current labels"
    );
    let seqs: Vec<i64> = history.iter().map(|l| l.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "every seq was stored once, in order"
    );
    for l in &want {
        assert!(
            seqs.binary_search(&l.seq).is_ok(),
            "seq {} never stored",
            l.seq
        );
    }
    let frames = frames_until(&mut m.subscribe("cursor=0").await, head).await;
    let upstream_frames = frames_until(&mut upstream.subscribe("cursor=0").await, head).await;
    assert_eq!(frames, upstream_frames);
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_an_upstream_key_rotation_through_the_did_document() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let did = format!("did:web:localhost%3A{port}");
    let labeler_did = did.clone();
    let primary = TestLabeler::start_on(
        &world,
        dir.path(),
        "1h",
        listener,
        |c| c.labeler_did = Some(labeler_did),
        |_| {},
    )
    .await;
    assert_eq!(primary.did, did);
    let key = server::key();
    issue(
        primary.store(),
        key.did_key(),
        labels("rot", 20, &did, &key),
    )
    .await;
    let head = primary.store().head_seq().unwrap();

    let m = TestMirror::start(&format!("http://{}", primary.addr), &did).await;
    m.await_cursor(head).await;

    // Rotate while both run: every current label is re-signed with a new key under new seqs,
    // and the primary's did.json names the new key at once.
    let store = primary.store();
    let key_path = primary.config.signing_key_path.clone();
    let rotated_did = did.clone();
    let rotation = tokio::task::spawn_blocking(move || {
        atmos_labeler::lifecycle::rotate(&store, &key_path, Some(&rotated_did), false).unwrap()
    })
    .await
    .unwrap();
    let new_key = SigningKey::load(&primary.config.signing_key_path).unwrap();
    assert_eq!(rotation.new.as_deref(), Some(new_key.did_key()));
    let head = primary.store().head_seq().unwrap();
    m.await_cursor(head).await;

    // And a label signed afterwards.
    issue(
        primary.store(),
        new_key.did_key(),
        labels("after", 1, &did, &new_key),
    )
    .await;
    let head = primary.store().head_seq().unwrap();
    m.await_cursor(head).await;

    assert_eq!(m.upstream().await["refused"], 0, "nothing was refused");
    let want = current(primary.store()).await;
    let got = current(m.store()).await;
    assert_eq!(got, want);
    let public = PublicKey::parse(new_key.did_key()).unwrap();
    for l in &got {
        l.signed.verify(&public).unwrap();
    }
    let base = format!("http://{}", primary.addr);
    assert_eq!(pages(&m.base(), 9).await, pages(&base, 9).await);
    m.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_lost_history_stops_the_mirror_following_but_not_serving() {
    let key = server::key();
    let first = TestServer::start_with(server::options(), |s| {
        server::seed(s, 30);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let m = TestMirror::start_in(dir.path(), &first.base(), key.did_key()).await;
    m.await_cursor(30).await;
    let held = pages(&m.base(), 50).await;
    m.stop().await;

    // The same address now serves a labeler restored from an older backup (5 labels).
    let older = TestServer::start_with(server::options(), |s| {
        server::seed(s, 5);
    })
    .await;
    let m = TestMirror::start_in(dir.path(), &older.base(), key.did_key()).await;
    let stopped =
        crate::common::eventually(WAIT, || async { m.upstream().await["status"] == "stopped" })
            .await;
    assert!(stopped, "{:#}", m.upstream().await);
    let u = m.upstream().await;
    assert!(
        u["stopped"].as_str().unwrap().contains("FutureCursor"),
        "{u}"
    );
    assert_eq!(u["cursor"], 30, "nothing was reset");
    assert_eq!(
        pages(&m.base(), 50).await,
        held,
        "and it still serves what it holds"
    );
    let health: Value = reqwest::get(format!("{}/xrpc/_health", m.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded");
    m.stop().await;

    // A labeler pointed at a mirror's state directory refuses to start on it.
    let config = mirror::config(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = app::start(
        &config,
        app::Tuning::new(&config),
        listener,
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(refused, Err(app::Error::MirrorDatabase(_))),
        "{refused:?}"
    );
    first.stop().await;
    older.stop().await;
}
