//! Re-check timing, on tokio's paused clock: no sleeping, no wall-clock dependence.

use atmos_labeler::manager::{Clock, Command};
use atmos_labeler::scheduler::{Options, Scheduler};
use atmos_labeler::store::{Attestation, Changes, Store};
use atmos_labeler::verify::Outcome;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BASE: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

fn attestation(did: &str, next_check_ms: i64) -> Attestation {
    Attestation {
        did: did.into(),
        rkey: "r".into(),
        domain: "example.test".into(),
        selectors: vec!["default".into()],
        record_cid: None,
        rev: None,
        created_at: None,
        first_seen_ms: BASE,
        verdict: Outcome::Pass,
        standing: true,
        relay_member: false,
        report: None,
        checked_ms: Some(BASE),
        last_definitive_ms: Some(BASE),
        consecutive_failures: 0,
        consecutive_undecided: 0,
        next_check_ms,
    }
}

fn seed(store: &Store, did: &str, next: i64) {
    store
        .update_did(did, "did:key:x", |_| {
            Ok::<_, ()>(Changes {
                put: vec![attestation(did, next)],
                ..Changes::default()
            })
        })
        .unwrap()
        .unwrap();
}

fn start(store: &Store, clock: Clock) -> (mpsc::Receiver<Command>, CancellationToken) {
    let (tx, rx) = mpsc::channel(8);
    let token = CancellationToken::new();
    let scheduler = Scheduler::new(
        store.clone(),
        tx,
        Options {
            clock,
            // One process: its own commits wake the scheduler. (Polling for other
            // processes' commits every second of paused time would take days of ticks.)
            external_poll: None,
            ..Options::default()
        },
    );
    let t = token.clone();
    tokio::spawn(async move { scheduler.run(t).await });
    (rx, token)
}

fn did_of(cmd: Command) -> String {
    match cmd {
        Command::Recheck { did, .. } => did,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rechecks_fall_due_at_their_time_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    seed(&store, "did:plc:a", BASE + 24 * HOUR);
    seed(&store, "did:plc:b", BASE + 25 * HOUR);
    let clock = Clock::tokio(BASE);
    let (mut rx, token) = start(&store, clock);

    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:a");
    let now = clock.now_ms();
    assert!(
        (BASE + 24 * HOUR..BASE + 25 * HOUR).contains(&now),
        "a at {now}"
    );
    // The manager's commit sets the next check a day on.
    seed(&store, "did:plc:a", now + 24 * HOUR);

    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:b");
    assert!(clock.now_ms() >= BASE + 25 * HOUR);
    seed(&store, "did:plc:b", clock.now_ms() + 24 * HOUR);
    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:a");
    assert!(clock.now_ms() >= now + 24 * HOUR, "a again a day later");
    token.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_recheck_lost_in_a_crash_comes_back_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    seed(&store, "did:plc:a", BASE);
    let clock = Clock::tokio(BASE);

    // The first scheduler hands the re-check out, then the process "dies" before the manager
    // commits a new next-check time.
    let (mut rx, token) = start(&store, clock);
    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:a");
    token.cancel();
    drop(rx);

    // After a restart the attestation is not handed out again until the lease runs out.
    let (mut rx, token) = start(&store, clock);
    let before = clock.now_ms();
    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:a");
    let lease = Options::default().lease.as_millis() as i64;
    assert!(
        clock.now_ms() >= before + lease - 1,
        "re-issued only after the lease"
    );
    token.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_overdue_backlog_is_handed_out_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    for i in 0..200 {
        seed(&store, &format!("did:plc:{i:03}"), BASE - HOUR);
    }
    let (mut rx, token) = start(&store, Clock::tokio(BASE));
    let mut seen = std::collections::HashSet::new();
    // Bounded in count: 200 distinct DIDs within 1,000 hand-outs (the clock is paused, so
    // time bounds nothing here).
    for _ in 0..1000 {
        if seen.len() == 200 {
            break;
        }
        seen.insert(did_of(rx.recv().await.unwrap()));
        // The channel (capacity 8) bounds how far the scheduler runs ahead of the manager.
        assert!(rx.len() <= 8);
    }
    assert_eq!(seen.len(), 200, "every overdue DID handed out");
    token.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_sooner_recheck_wakes_the_scheduler_before_its_longest_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    seed(&store, "did:plc:far", BASE + 24 * HOUR);
    let clock = Clock::tokio(BASE);
    let (mut rx, token) = start(&store, clock);
    // Let the scheduler make its first sweep and go to sleep (up to max_sleep, 60 s).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    // A new attestation due in 10 s: the commit wakes the scheduler, which sleeps 10 s only.
    let due = clock.now_ms() + 10_000;
    seed(&store, "did:plc:soon", due);
    assert_eq!(did_of(rx.recv().await.unwrap()), "did:plc:soon");
    let at = clock.now_ms();
    assert!(
        (due..due + 1_000).contains(&at),
        "handed out at {at}, due at {due}: the sleep was not cut short"
    );
    token.cancel();
}
