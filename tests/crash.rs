//! SIGKILL for real: the `labeler` binary, killed three times in the middle of an ingest and
//! restarted on the same state each time, ends with exactly the labels the events imply, an
//! intact database, a history without duplicates, and a stream that serves every label once.
//!
//! (The in-process "crash" of `restart.rs` drops the daemon's handle, which lets its spawned
//! tasks run on; only a killed process stops mid-instruction. `benches/faults.rs` runs the long
//! version: thousands of operators, twenty kills.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use atmos_labeler::label::VERIFIED_MAIL_OPERATOR;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::common::daemon::World;
use crate::common::process::{LabelerProcess, integrity_check_read_only};
use crate::common::server::{Event, WAIT};

const OPERATORS: usize = 240;
/// A deleted operator's delete follows its create by this many creates.
const DELETE_AFTER: usize = 12;
/// One event every 20 ms: 50 events/s, 300 events in six seconds.
const PACE: Duration = Duration::from_millis(20);
/// The kills come once this many events have been published (and the labeler has made
/// progress since its last start); the events from [`HOLD_FROM`] on wait for the third kill,
/// so the publisher cannot finish before it.
const KILL_AT: [usize; 3] = [40, 110, 180];
const HOLD_FROM: usize = 240;
/// The attestation's record key (one per operator).
const RKEY: &str = "att";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Passing DNS; keeps its attestation.
    Good,
    /// Passing DNS; deletes its attestation a little later.
    Deleted,
    /// A domain with no records at all: fails.
    Bad,
}

fn kind(i: usize) -> Kind {
    match i % 4 {
        2 => Kind::Deleted,
        3 => Kind::Bad,
        _ => Kind::Good,
    }
}

fn did(i: usize) -> String {
    format!("did:plc:crash{i:03}")
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Create(usize),
    Delete(usize),
}

/// Every operator's create, in order, each deleted operator's delete `DELETE_AFTER` creates
/// after its own: 240 creates and 60 deletes.
fn steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for i in 0..OPERATORS {
        steps.push(Step::Create(i));
        if let Some(j) = i.checked_sub(DELETE_AFTER)
            && kind(j) == Kind::Deleted
        {
            steps.push(Step::Delete(j));
        }
    }
    steps.extend(
        (OPERATORS - DELETE_AFTER..OPERATORS)
            .filter(|&j| kind(j) == Kind::Deleted)
            .map(Step::Delete),
    );
    steps
}

/// DNS and DID documents for every operator, before anything is published.
fn prepare(world: &World) {
    for i in 0..OPERATORS {
        world.account(&did(i));
        if kind(i) != Kind::Bad {
            world
                .dns
                .publish_good_operator(&format!("crash{i}.test"), &did(i), &["default"]);
        }
    }
}

/// Publishes `step` (PDS and Jetstream); returns its `time_us`.
fn play(world: &World, step: Step) -> i64 {
    match step {
        Step::Create(i) => world.publish(
            &did(i),
            RKEY,
            &World::record(&format!("crash{i}.test"), &["default"]),
        ),
        Step::Delete(i) => world.unpublish(&did(i), RKEY),
    }
}

/// What the publisher has done so far: events published and the last one's `time_us`.
#[derive(Clone, Copy, Debug, Default)]
struct Published {
    count: usize,
    last_time_us: i64,
}

/// Publishes every step at a steady pace, holding the last ones until `kills` reaches 3.
fn spawn_publisher(
    world: Arc<World>,
    mut kills: watch::Receiver<usize>,
    progress: watch::Sender<Published>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PACE);
        // After a hold, resume at the same pace instead of catching up in a burst.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for (n, step) in steps().into_iter().enumerate() {
            if n == HOLD_FROM && kills.wait_for(|k| *k >= KILL_AT.len()).await.is_err() {
                return; // the test ended
            }
            tick.tick().await;
            let t = play(&world, step);
            progress.send_replace(Published {
                count: n + 1,
                last_time_us: t,
            });
        }
    })
}

/// One kill: where the publisher and the labeler were just before it, and the publisher once
/// the labeler was back.
#[derive(Debug)]
struct Kill {
    published: Published,
    saved_cursor: Option<i64>,
    head_seq: i64,
    published_by_restart: usize,
}

/// Waits (bounded) until at least `n` events have been published.
async fn published_at_least(progress: &mut watch::Receiver<Published>, n: usize) {
    tokio::time::timeout(WAIT, progress.wait_for(|p| p.count >= n))
        .await
        .unwrap_or_else(|_| panic!("the publisher never reached event {n}"))
        .unwrap();
}

/// Waits (bounded) until the labeler's database satisfies `cond(saved cursor, head seq)`.
async fn db_reaches(
    labeler: &LabelerProcess,
    what: &str,
    cond: impl Fn(Option<i64>, i64) -> bool + Copy,
) {
    let reached = crate::common::eventually(WAIT, || async move {
        let (cursor, head) = labeler
            .with_store(|s| (s.cursor().unwrap(), s.head_seq().unwrap()))
            .await;
        cond(cursor, head)
    })
    .await;
    assert!(reached, "{what}: never happened\n{}", labeler.log_tail());
}

/// SIGKILL, after noting where the labeler and the publisher were; then checks that the file
/// the dead process left is a sound database before anything opens it for writing.
async fn kill(
    labeler: &mut LabelerProcess,
    progress: &watch::Receiver<Published>,
    kills: &watch::Sender<usize>,
) -> Kill {
    let (saved_cursor, head_seq) = labeler
        .with_store(|s| (s.cursor().unwrap(), s.head_seq().unwrap()))
        .await;
    let published = *progress.borrow();
    labeler.sigkill();
    kills.send_modify(|k| *k += 1);
    let db = labeler.db.clone();
    let integrity = tokio::task::spawn_blocking(move || integrity_check_read_only(&db))
        .await
        .unwrap();
    assert_eq!(integrity, "ok", "after kill {}", *kills.borrow());
    Kill {
        published,
        saved_cursor,
        head_seq,
        published_by_restart: 0,
    }
}

/// Restarts the killed labeler on the same state and notes how far the publisher got
/// meanwhile.
async fn restart(
    labeler: &mut LabelerProcess,
    world: &World,
    progress: &watch::Receiver<Published>,
    kill: &mut Kill,
) {
    labeler.start(world).await;
    kill.published_by_restart = progress.borrow().count;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_ingest_loses_and_duplicates_nothing() {
    let world = Arc::new(World::start().await);
    // Stamp events with the wall clock, as the real Jetstream does, so the labeler's 5 s
    // rewind on restart covers 5 s of real publishing.
    world.jetstream.follow_wall_clock();
    prepare(&world);
    let mut labeler = LabelerProcess::create(&world, "24h");
    labeler.start(&world).await;

    let (kills_tx, kills_rx) = watch::channel(0usize);
    let (progress_tx, mut progress) = watch::channel(Published::default());
    let publisher = spawn_publisher(world.clone(), kills_rx, progress_tx);
    let mut kills = Vec::new();

    // Kill 1: once a cursor is saved (a labeler without one starts at the live tail, so a
    // restart would skip what was published while it was down: by design, not a loss) and
    // labels are being written.
    published_at_least(&mut progress, KILL_AT[0]).await;
    db_reaches(&labeler, "a saved cursor and 10 labels", |c, head| {
        c.is_some() && head >= 10
    })
    .await;
    let mut k = kill(&mut labeler, &progress, &kills_tx).await;
    restart(&mut labeler, &world, &progress, &mut k).await;
    kills.push(k);

    // Kill 2: right after a commit, on a live label frame from the restarted labeler.
    published_at_least(&mut progress, KILL_AT[1]).await;
    let mut live = labeler.subscribe("").await;
    match live.next_event().await {
        Event::Labels { .. } => {}
        other => panic!(
            "expected a label frame, got {other:?}\n{}",
            labeler.log_tail()
        ),
    }
    let mut k = kill(&mut labeler, &progress, &kills_tx).await;
    restart(&mut labeler, &world, &progress, &mut k).await;
    kills.push(k);

    // Kill 3: right after the restarted labeler first saves a cursor past the one it resumed
    // from (the cursor is saved in the transaction of an event's changes, or on its own when
    // events change nothing): it has replayed what it had already applied and moved on.
    let resumed_from = labeler.cursor().await.unwrap();
    published_at_least(&mut progress, KILL_AT[2]).await;
    db_reaches(&labeler, "a cursor saved past the resume point", |c, _| {
        c.is_some_and(|c| c > resumed_from)
    })
    .await;
    let mut k = kill(&mut labeler, &progress, &kills_tx).await;
    restart(&mut labeler, &world, &progress, &mut k).await;
    kills.push(k);

    // Every kill came while events were flowing: the publisher had not finished (the last
    // events are held until the third kill), it published more while the labeler was down,
    // and the labeler had saved a cursor to resume from.
    for (n, k) in kills.iter().enumerate() {
        assert!(
            k.published.count < steps().len()
                && k.published_by_restart > k.published.count
                && k.saved_cursor.is_some(),
            "kill {}: {k:?}",
            n + 1
        );
    }

    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher finished")
        .unwrap();
    let last = progress.borrow().last_time_us;
    assert_eq!(progress.borrow().count, steps().len());
    // Caught up: every event applied and committed.
    labeler.await_cursor(last).await;

    // The current labels are exactly what the scenario implies: the good operators keep
    // their label; a deleted one has a negation (or nothing, if its delete came before its
    // label); a failing one has nothing.
    let labels = labeler.all_labels().await;
    let mut positive = BTreeSet::new();
    for (uri, val, neg) in &labels {
        assert_eq!(val, VERIFIED_MAIL_OPERATOR, "{uri}");
        let i: usize = uri
            .strip_prefix("did:plc:crash")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("label on a stranger: {uri}"));
        match (kind(i), neg) {
            (Kind::Good, false) => {
                positive.insert(i);
            }
            (Kind::Deleted, true) => {}
            (k, neg) => panic!("{uri} ({k:?}) has a label with neg={neg}"),
        }
    }
    let good: BTreeSet<usize> = (0..OPERATORS).filter(|&i| kind(i) == Kind::Good).collect();
    assert_eq!(positive, good, "every good operator is labelled");
    let negated = labels.len() - positive.len();
    assert!(negated > 0, "the deletes withdrew labels: {labels:?}");

    // History: seqs strictly increase, and no (uri, val) is written twice in a row with the
    // same polarity (a replayed event re-labelling is exactly that).
    let (history, head_seq) = labeler
        .with_store(|s| (s.label_history().unwrap(), s.head_seq().unwrap()))
        .await;
    let mut prev_seq = 0;
    let mut last_neg: BTreeMap<(String, String), bool> = BTreeMap::new();
    for h in &history {
        assert!(h.seq > prev_seq, "history seq {} after {prev_seq}", h.seq);
        prev_seq = h.seq;
        assert_eq!(h.signed.label.src, labeler.did);
        let key = (h.signed.label.uri.clone(), h.signed.label.val.clone());
        let neg = h.signed.label.neg;
        assert_ne!(
            last_neg.insert(key.clone(), neg),
            Some(neg),
            "duplicate label event {key:?} neg={neg}"
        );
    }
    assert_eq!(
        history.len(),
        good.len() + 2 * negated,
        "one grant per label, one negation per withdrawal"
    );
    for k in &kills {
        assert!(k.head_seq < head_seq, "labels were still to come: {k:?}");
    }

    // A relay replaying from the start sees every current label exactly once, signed by the
    // labeler's key (each frame's signature is verified as it is decoded).
    let mut replay = labeler.subscribe("cursor=0").await;
    let mut seen: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut last_seq = 0;
    while last_seq < head_seq {
        match replay.next_event().await {
            Event::Labels { seq, labels, .. } => {
                assert!(seq > last_seq, "seq {seq} after {last_seq}");
                last_seq = seq;
                for l in labels {
                    assert_eq!(l.src, labeler.did);
                    let neg = l.neg == Some(true);
                    let key = (l.uri, l.val);
                    assert!(
                        seen.insert(key.clone(), neg).is_none(),
                        "{key:?} sent twice"
                    );
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let current: BTreeMap<(String, String), bool> = labels
        .into_iter()
        .map(|(uri, val, neg)| ((uri, val), neg))
        .collect();
    assert_eq!(seen, current);

    assert_eq!(labeler.terminate().await.code(), Some(0), "SIGTERM exits 0");
    let db = labeler.db.clone();
    let integrity = tokio::task::spawn_blocking(move || {
        atmos_labeler::store::Store::open(&db)
            .unwrap()
            .integrity_check()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(integrity, "ok");
}
