//! The Jetstream consumer against a fake server speaking the real v1 wire format.

use std::collections::HashSet;
use std::time::Duration;

use atmos_labeler::health::Health;
use atmos_labeler::jetstream::{Client, Options};
use atmos_labeler::manager::{Command, Tracked};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::jetstream::FakeJetstream;

const WAIT: Duration = Duration::from_secs(10);

fn options(url: String) -> Options {
    Options {
        rewind: Duration::from_micros(1500), // one event back (the fake spaces them 1 ms)
        idle_timeout: Duration::from_secs(30),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        checkpoint_every: Duration::from_millis(20),
        ..Options::new(url)
    }
}

fn record(domain: &str) -> serde_json::Value {
    json!({"$type": "email.atmos.attestation", "domain": domain,
           "dkimSelectors": ["default"], "createdAt": "2026-11-23T00:00:00.000Z"})
}

async fn next(rx: &mut mpsc::Receiver<Command>) -> Command {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a command within the time limit")
        .expect("the channel is open")
}

/// Receives until a non-checkpoint command arrives.
async fn next_event(rx: &mut mpsc::Receiver<Command>) -> Command {
    loop {
        let c = next(rx).await;
        if !matches!(c, Command::Checkpoint { .. }) {
            return c;
        }
    }
}

fn spawn(client: Client) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { client.run(t).await });
    token
}

#[tokio::test]
async fn events_arrive_in_order_and_untracked_accounts_are_dropped() {
    let fake = FakeJetstream::start().await;
    let (tx, mut rx) = mpsc::channel(64);
    let tracked = Tracked::from_dids(["did:plc:tracked".to_owned()]);
    let t1 = fake.put("did:plc:new", "r1", &record("a.test"), "bafy1", false);
    fake.identity("did:plc:stranger", "x.test");
    fake.account("did:plc:stranger", false, Some("takendown"));
    let t_other = fake.other_commit("did:plc:new", "app.bsky.feed.post");
    let t_id = fake.identity("did:plc:tracked", "alice.test");
    let t_acct = fake.account("did:plc:tracked", false, Some("deactivated"));
    let t_del = fake.delete("did:plc:new", "r1");
    let token = spawn(Client::new(
        options(fake.url()),
        tx,
        tracked,
        Some(t1),
        Health::new(),
    ));

    match next_event(&mut rx).await {
        Command::Put {
            did,
            rkey,
            cursor,
            cid,
            record,
            ..
        } => {
            assert_eq!(
                (did.as_str(), rkey.as_str(), cursor),
                ("did:plc:new", "r1", t1)
            );
            assert_eq!(cid.as_deref(), Some("bafy1"));
            assert_eq!(record["domain"], "a.test");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        next_event(&mut rx).await,
        Command::Identity {
            did: "did:plc:tracked".into(),
            cursor: t_id
        }
    );
    assert_eq!(
        next_event(&mut rx).await,
        Command::Account {
            did: "did:plc:tracked".into(),
            active: false,
            status: Some("deactivated".into()),
            cursor: t_acct
        }
    );
    assert!(matches!(next_event(&mut rx).await, Command::Delete { cursor, .. } if cursor == t_del));
    // The filtered commit never arrived, and the stranger's events were dropped; checkpoints
    // still carry the cursor past all of them.
    assert!(t_other < t_id);
    // Checkpoints keep coming every 20 ms: bound the wait for the one that passes `t_del`.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Command::Checkpoint { cursor } = next(&mut rx).await
                && cursor >= t_del
            {
                break;
            }
        }
    })
    .await
    .expect("a checkpoint past the last event");
    assert_eq!(fake.connections(), 1);
    assert_eq!(
        fake.cursors(),
        vec![Some(t1 - 1500)],
        "resumed from the rewound cursor"
    );
    token.cancel();
}

#[tokio::test]
async fn ten_dropped_connections_mid_replay_lose_nothing() {
    let fake = FakeJetstream::start().await;
    let mut times = Vec::new();
    for i in 0..30 {
        times.push(fake.put(
            "did:plc:a",
            &format!("r{i:02}"),
            &record("a.test"),
            "bafy",
            false,
        ));
    }
    fake.drop_connections(10, 3);
    let (tx, mut rx) = mpsc::channel(64);
    let token = spawn(Client::new(
        options(fake.url()),
        tx,
        Tracked::default(),
        Some(times[0]),
        Health::new(),
    ));
    let mut seen = HashSet::new();
    let mut last = 0;
    // Replays repeat events: bound the whole wait, not only each receive.
    tokio::time::timeout(WAIT, async {
        while seen.len() < 30 {
            if let Command::Put { rkey, cursor, .. } = next_event(&mut rx).await {
                // Replays may repeat an event, but never go back further than the rewind.
                assert!(cursor >= last - 1500, "went back from {last} to {cursor}");
                last = last.max(cursor);
                seen.insert(rkey);
            }
        }
    })
    .await
    .expect("all 30 events within the time limit");
    assert_eq!(fake.connections(), 11);
    let cursors = fake.cursors();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "every reconnect resumed further on: {cursors:?}"
    );
    token.cancel();
}

#[tokio::test]
async fn malformed_frames_are_skipped_and_the_stream_goes_on() {
    let fake = FakeJetstream::start().await;
    let t0 = fake.put("did:plc:a", "r1", &record("a.test"), "bafy", false);
    fake.raw("this is not json");
    fake.raw(r#"{"did":"did:plc:a","time_us":"soon","kind":"commit"}"#);
    fake.raw(r#"{"did":"did:plc:a","time_us":5,"kind":"commit","commit":{"rev":"3m","operation":"create","collection":"email.atmos.attestation","rkey":"../../etc","record":{}}}"#);
    fake.raw(r#"{"did":"did:plc:a","time_us":6,"kind":"brand-new-kind"}"#);
    let t1 = fake.put("did:plc:a", "r2", &record("b.test"), "bafy", false);
    let (tx, mut rx) = mpsc::channel(64);
    let token = spawn(Client::new(
        options(fake.url()),
        tx,
        Tracked::default(),
        Some(t0),
        Health::new(),
    ));
    assert!(matches!(next_event(&mut rx).await, Command::Put { cursor, .. } if cursor == t0));
    assert!(matches!(next_event(&mut rx).await, Command::Put { cursor, .. } if cursor == t1));
    assert_eq!(
        fake.connections(),
        1,
        "bad frames never cost the connection"
    );
    token.cancel();
}

#[tokio::test]
async fn a_full_queue_pauses_intake_and_resumes_without_loss_or_repeats() {
    let fake = FakeJetstream::start().await;
    let mut first = None;
    for i in 0..40 {
        let t = fake.put(
            "did:plc:a",
            &format!("r{i:02}"),
            &record("a.test"),
            "bafy",
            false,
        );
        first.get_or_insert(t);
    }
    let (tx, mut rx) = mpsc::channel(4);
    // A rewind longer than the whole burst: every reconnect asks for all 40 events again.
    // Re-sending those already handed over would refill the queue with work the manager only
    // skips, and a burst larger than the queue would never get through.
    let opts = Options {
        rewind: Duration::from_secs(5),
        ..options(fake.url())
    };
    let token = spawn(Client::new(
        opts,
        tx,
        Tracked::default(),
        first,
        Health::new(),
    ));
    // Let the queue fill before reading anything: the client must disconnect, not block.
    // (A channel tells its receiver nothing about being full: poll, bounded.)
    assert!(
        crate::common::eventually(WAIT, || async { rx.len() == 4 }).await,
        "the queue filled"
    );
    let mut seen = Vec::new();
    while seen.len() < 40 {
        if let Command::Put { rkey, .. } = next_event(&mut rx).await {
            seen.push(rkey);
        }
    }
    let expected: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    assert_eq!(seen, expected, "every event once, in order");
    assert!(fake.connections() >= 2, "intake paused by disconnecting");
    assert!(
        fake.cursors()[1..].iter().all(|c| *c <= first),
        "each resume rewound to the start of the burst: {:?}",
        fake.cursors()
    );
    token.cancel();
}

#[tokio::test]
async fn a_silent_server_is_left_after_the_idle_timeout() {
    let fake = FakeJetstream::start().await;
    let (tx, _rx) = mpsc::channel(4);
    let opts = Options {
        idle_timeout: Duration::from_millis(200),
        ..options(fake.url())
    };
    let token = spawn(Client::new(
        opts,
        tx,
        Tracked::default(),
        None,
        Health::new(),
    ));
    assert!(
        crate::common::eventually(WAIT, || async { fake.connections() >= 3 }).await,
        "reconnected after idling"
    );
    assert_eq!(fake.cursors()[0], None, "no saved cursor: live tail");
    token.cancel();
}

/// Regression: an account event right behind a DID's first attestation used to be dropped,
/// because the DID only became "tracked" once the manager had committed that attestation.
#[tokio::test]
async fn an_account_event_right_after_a_first_attestation_is_passed_on() {
    let fake = FakeJetstream::start().await;
    let t0 = fake.put("did:plc:newcomer", "r1", &record("n.test"), "bafy", false);
    let t1 = fake.account("did:plc:newcomer", false, Some("takendown"));
    let (tx, mut rx) = mpsc::channel(64);
    let token = spawn(Client::new(
        options(fake.url()),
        tx,
        Tracked::default(),
        Some(t0),
        Health::new(),
    ));
    assert!(matches!(next_event(&mut rx).await, Command::Put { cursor, .. } if cursor == t0));
    assert!(
        matches!(next_event(&mut rx).await, Command::Account { cursor, .. } if cursor == t1),
        "the account event was dropped"
    );
    token.cancel();
}
