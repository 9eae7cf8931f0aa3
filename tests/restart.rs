//! Faults on the way in: Jetstream dropping connections mid-replay and the labeler crashing
//! mid-stream must end in exactly the labels of an uninterrupted run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::daemon::{TestLabeler, World};
use crate::common::server::{Event, Subscriber};

/// One step of the scenario.
enum Step {
    Good(usize),
    Failing(usize),
    Update(usize),
    Delete(usize),
}

fn did(i: usize) -> String {
    format!("did:plc:op{i:02}")
}

/// Phase one: twelve operators publish a good attestation; some add a failing second one.
fn grants() -> Vec<Step> {
    let mut steps: Vec<Step> = (0..12).map(Step::Good).collect();
    steps.extend((0..12).filter(|i| i % 3 == 0).map(Step::Failing));
    steps
}

/// Phase two, once the labels are out: some update theirs to a failing domain, some delete.
fn withdrawals() -> Vec<Step> {
    let mut steps: Vec<Step> = (0..12).filter(|i| i % 5 == 2).map(Step::Update).collect();
    steps.extend((0..12).filter(|i| i % 4 == 1).map(Step::Delete));
    steps
}

fn setup(world: &World) {
    for i in 0..12 {
        world
            .dns
            .publish_good_operator(&format!("op{i}.test"), &did(i), &["default"]);
        world.account(&did(i));
    }
}

/// Plays `step`; returns the `time_us` of the event it published.
fn play(world: &World, step: &Step) -> i64 {
    match *step {
        Step::Good(i) => world.publish(
            &did(i),
            "good",
            &World::record(&format!("op{i}.test"), &["default"]),
        ),
        Step::Failing(i) => {
            world.publish(&did(i), "bad", &World::record("unknown.test", &["default"]))
        }
        Step::Update(i) => {
            let record = World::record("unknown.test", &["default"]);
            world.pds.put_record(
                &did(i),
                "email.atmos.attestation",
                "good",
                "bafyupd",
                record.clone(),
            );
            world
                .jetstream
                .put(&did(i), "good", &record, "bafyupd", true)
        }
        Step::Delete(i) => world.unpublish(&did(i), "good"),
    }
}

/// Plays every step; returns the `time_us` of the last event.
fn play_all(world: &World, steps: &[Step]) -> i64 {
    steps.iter().map(|s| play(world, s)).max().unwrap()
}

/// Follows the stream, remembering the latest state per (uri, val) and checking seq order.
struct Follower {
    sub: Subscriber,
    last_seq: i64,
    state: BTreeMap<(String, String), bool>,
}

impl Follower {
    /// Reads frames until this follower's state equals `current` (the labeler's current
    /// labels, which no longer change). Every frame is a real notification; the wait for each
    /// is bounded by `common::server::WAIT`, and their number by far more than the scenario writes.
    async fn catch_up(&mut self, current: &[(String, String, bool)]) {
        let current: BTreeMap<(String, String), bool> = current
            .iter()
            .map(|(u, v, n)| ((u.clone(), v.clone()), *n))
            .collect();
        for _ in 0..1000 {
            if self.state == current {
                return;
            }
            let event = self.sub.next_event().await;
            self.apply(event);
        }
        panic!("follower never caught up: {:?} vs {current:?}", self.state);
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Labels { seq, labels, .. } => {
                assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
                self.last_seq = seq;
                for l in labels {
                    self.state.insert((l.uri, l.val), l.neg == Some(true));
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn drops_and_a_crash_end_in_the_labels_of_an_uninterrupted_run() {
    // Reference: an uninterrupted run.
    let world = World::start().await;
    setup(&world);
    let reference = TestLabeler::start(&world, "24h").await;
    play_all(&world, &grants());
    for i in 0..12 {
        reference.await_verdict(&did(i), "good", &["pass"]).await;
    }
    let last = play_all(&world, &withdrawals());
    // Every event applied and committed once the saved cursor has passed the last one.
    reference.await_cursor(last).await;
    let expected = reference.all_labels().await;
    assert_eq!(
        expected.iter().filter(|(_, _, neg)| *neg).count(),
        5,
        "{expected:?}"
    );
    assert_eq!(
        expected.iter().filter(|(_, _, neg)| !*neg).count(),
        7,
        "{expected:?}"
    );
    reference.stop().await;

    // The same scenario with ten dropped connections while the grants stream in, and a crash
    // in the middle of the withdrawals.
    let world = World::start().await;
    setup(&world);
    world.jetstream.drop_connections(10, 2);
    let tmp = tempfile::tempdir().unwrap();
    let tune = |t: &mut atmos_labeler::app::Tuning| {
        // Rewind one event only (the fake spaces them 1 ms): after the crash, nothing but the
        // saved cursor watermark stands between the labeler and a missed event.
        t.jetstream.rewind = Duration::from_micros(1500);
    };
    let labeler = TestLabeler::start_tuned(&world, tmp.path(), "24h", |_| {}, tune).await;
    let mut follower = Follower {
        sub: labeler.subscribe("cursor=0").await,
        last_seq: 0,
        state: BTreeMap::new(),
    };
    play_all(&world, &grants());
    while follower.state.len() < 12 {
        let e = follower.sub.next_event().await;
        follower.apply(e);
    }
    assert_eq!(
        world.jetstream.drops_left(),
        0,
        "all ten drops happened during the grants"
    );
    // The withdrawals, with the crash at the worst moment: one event (op01's delete) is stuck
    // at its PDS while later events for other operators commit. The cursor saved with those
    // commits must not pass the stuck event, or the restart would never see it again.
    world.pds.hang(&did(1));
    play(&world, &Step::Delete(1));
    play(&world, &Step::Update(2));
    play(&world, &Step::Update(7));
    let negated = |f: &Follower, i: usize| {
        f.state.get(&(
            did(i),
            atmos_labeler::label::VERIFIED_MAIL_OPERATOR.to_owned(),
        )) == Some(&true)
    };
    while !(negated(&follower, 2) && negated(&follower, 7)) {
        let e = follower.sub.next_event().await;
        follower.apply(e);
    }
    assert!(!negated(&follower, 1), "op01's delete is still in flight");
    let (dir, _tmp) = labeler.crash();
    world.pds.clear_fault(&did(1));
    let last = play_all(&world, &[Step::Delete(5), Step::Delete(9)]);
    let labeler = TestLabeler::start_tuned(&world, &dir, "24h", |_| {}, tune).await;
    follower.sub = labeler
        .subscribe(&format!("cursor={}", follower.last_seq))
        .await;

    // Once the restarted labeler's saved cursor passes the last event, everything is applied
    // (op01's delete included: the cursor saved before the crash never passed it).
    labeler.await_cursor(last).await;
    let got = labeler.all_labels().await;
    assert_eq!(got, expected);
    // One connection, ten dropped and resumed, one after the restart.
    assert!(
        world.jetstream.connections() >= 12,
        "{}",
        world.jetstream.connections()
    );

    // The follower, resuming with its cursor across the crash, reaches the same state.
    follower.catch_up(&got).await;

    // No duplicate label: in the history a (uri, val) never repeats the same polarity back to
    // back, and seqs only grow.
    let history = labeler.store().label_history().unwrap();
    let mut last: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut prev_seq = 0;
    for h in &history {
        assert!(h.seq > prev_seq, "history seq {} after {prev_seq}", h.seq);
        prev_seq = h.seq;
        let key = (h.signed.label.uri.clone(), h.signed.label.val.clone());
        let neg = h.signed.label.neg;
        assert_ne!(
            last.insert(key.clone(), neg),
            Some(neg),
            "duplicate {key:?} neg={neg}"
        );
    }
    assert_eq!(labeler.store().integrity_check().unwrap(), "ok");
    labeler.stop().await;
}
