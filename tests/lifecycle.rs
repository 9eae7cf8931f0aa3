//! The trust lifecycle: a signing key rotated under a running daemon, labels that lapse unless
//! renewed, and a new labeler DID — observed the way consumers observe them, over queryLabels
//! and subscribeLabels, with every signature checked against the key it should verify with.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use atmos_labeler::keys::PublicKey;
use atmos_labeler::label::{SignedLabel, datetime_ms};
use serde_json::Value;

use crate::common::daemon::{TestLabeler, World};
use crate::common::eventually;
use crate::common::server::{Event, WAIT, key};

const VMO: &str = "verified-mail-operator";

/// Runs the real `labeler` binary with `args`; returns (stdout, stderr), requiring success.
async fn labeler_cli(args: Vec<String>) -> (String, String) {
    let cmd_args = args.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_labeler"))
            .args(&cmd_args)
            .env_remove("LABELER_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

/// Every current label from queryLabels `*`, with its signature, paged.
async fn all_signed(base: &str) -> Vec<SignedLabel> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let url =
            format!("{base}/xrpc/com.atproto.label.queryLabels?uriPatterns=*&limit=250{cursor}");
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        for l in body["labels"].as_array().unwrap() {
            out.push(crate::common::server::signed_from_json(l));
        }
        match body["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

/// Every label of a cursor-0 backfill (the stream goes live after it: stop at `head`).
async fn backfill(labeler: &TestLabeler, head: i64) -> Vec<SignedLabel> {
    let mut sub = labeler.subscribe_unverified("cursor=0").await;
    let mut out = Vec::new();
    loop {
        match sub.next_event().await {
            Event::Labels { seq, labels, .. } => {
                out.extend(labels.iter().map(|l| l.signed()));
                if seq >= head {
                    return out;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_key_rotated_under_a_running_daemon_re_signs_every_label_for_a_live_subscriber() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let labeler = TestLabeler::start_in(&world, dir.path(), "24h", |c| {
        c.labeler_did = Some("did:web:labeler.test".into());
    })
    .await;
    let base = format!("http://{}", labeler.addr);
    let old = PublicKey::parse(key().did_key()).unwrap();
    let mut sub = labeler.subscribe_unverified("").await;
    let mut granted = HashSet::new();
    for i in 0..3 {
        world.good_operator(&format!("did:plc:rot{i}"), &format!("rot{i}.test"), "r1");
    }
    while granted.len() < 3 {
        let (_, l) = sub.next_label().await;
        l.signed().verify(&old).unwrap();
        granted.insert(l.uri);
    }
    // A manual label rotates too.
    let config = labeler.cli_config().display().to_string();
    labeler_cli(
        [
            "label",
            "create",
            "--uri",
            "did:plc:manual",
            "--val",
            "spam",
            "--config",
            &config,
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    let (_, manual) = sub.next_label().await;
    assert_eq!(manual.val, "spam");
    let current = all_signed(&base).await.len();
    assert_eq!(current, 4);

    // Rotate with the real binary while the daemon runs.
    let (stdout, stderr) = labeler_cli(
        ["key", "rotate", "--config", &config]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    let new_did_key = stdout.trim().to_owned();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the did:key on stdout: {stdout}"
    );
    assert!(new_did_key.starts_with("did:key:zQ3s"), "{stdout}");
    assert!(
        stderr.contains("did:web:labeler.test") && stderr.contains("serves /.well-known/did.json"),
        "{stderr}"
    );
    let new = PublicKey::parse(&new_did_key).unwrap();
    let key_path = &labeler.config.signing_key_path;
    assert_eq!(
        std::fs::metadata(key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        atmos_labeler::keys::SigningKey::load(key_path)
            .unwrap()
            .did_key(),
        new_did_key
    );
    let retired = atmos_labeler::keys::retired_path(key_path, key().did_key());
    assert_eq!(
        atmos_labeler::keys::SigningKey::load(&retired)
            .unwrap()
            .did_key(),
        key().did_key(),
        "the old key is kept where stderr says"
    );
    assert!(stderr.contains(&retired.display().to_string()), "{stderr}");

    // The live subscriber receives every label again, each verifying with the new key only.
    let mut resigned = HashSet::new();
    while resigned.len() < current {
        let (_, l) = sub.next_label().await;
        let signed = l.signed();
        signed.verify(&new).unwrap();
        assert!(signed.verify(&old).is_err());
        assert_eq!(signed.label.src, "did:web:labeler.test");
        resigned.insert((l.uri, l.val));
    }
    // queryLabels and a cursor-0 backfill hold only new-key signatures.
    let now = all_signed(&base).await;
    assert_eq!(now.len(), current);
    for l in &now {
        l.verify(&new).unwrap();
    }
    let head = labeler.store().head_seq().unwrap();
    for l in backfill(&labeler, head).await {
        l.verify(&new).unwrap();
    }
    // The next verification is signed with the new key, without a restart.
    world.good_operator("did:plc:after", "after.test", "r1");
    let (_, l) = sub.next_label().await;
    assert_eq!(l.uri, "did:plc:after");
    l.signed().verify(&new).unwrap();
    labeler.stop().await;
}

#[tokio::test]
async fn a_passing_operators_label_is_renewed_before_it_lapses_and_not_at_every_recheck() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let labeler = TestLabeler::start_in(&world, dir.path(), "10s", |c| {
        c.stale_after = Duration::from_secs(20);
        c.label_ttl = Some(Duration::from_secs(40));
    })
    .await;
    let mut sub = labeler.subscribe("").await;
    world.good_operator("did:plc:renewed", "renewed.test", "r1");
    let (first_seq, first) = sub.next_label().await;
    let exp =
        |l: &crate::common::server::WireLabel| datetime_ms(l.exp.as_deref().unwrap()).unwrap();
    assert_eq!(exp(&first) - datetime_ms(&first.cts).unwrap(), 40_000);

    // The first re-check (about 10 s later) passes with 30 s left: nothing is re-signed.
    let store = labeler.store();
    let checked = || {
        store.all_attestations().unwrap()[0]
            .checked_ms
            .unwrap_or_default()
    };
    let granted_at = checked();
    assert!(
        eventually(Duration::from_secs(20), || async { checked() > granted_at }).await,
        "no re-check"
    );
    assert_eq!(
        store.head_seq().unwrap(),
        first_seq,
        "not renewed at every re-check"
    );

    // A later re-check, with less than half of the 40 s left, re-signs it: exp moves forward.
    assert!(
        eventually(Duration::from_secs(40), || async {
            store.head_seq().unwrap() > first_seq
        })
        .await,
        "not renewed before it lapsed"
    );
    let (seq, renewed) = sub.next_label().await;
    assert!(seq > first_seq);
    assert_eq!((renewed.val.as_str(), renewed.neg), (VMO, None));
    assert!(exp(&renewed) > exp(&first));
    assert!(renewed.cts > first.cts);
    labeler.stop().await;
}

#[tokio::test]
async fn a_manual_label_stops_being_served_when_it_expires_and_nothing_is_negated() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let base = format!("http://{}", labeler.addr);
    let config = labeler.cli_config().display().to_string();
    let args = [
        "label",
        "create",
        "--uri",
        "did:plc:brief",
        "--val",
        "spam",
        "--exp",
        "3s",
        "--config",
        &config,
    ];
    labeler_cli(args.map(str::to_owned).to_vec()).await;
    assert_eq!(labeler.labels_on("did:plc:brief").await.len(), 1);
    let gone = eventually(Duration::from_secs(10), || async {
        labeler.labels_on("did:plc:brief").await.is_empty()
    })
    .await;
    assert!(gone, "still served after its exp");
    assert!(all_signed(&base).await.is_empty());
    let history = labeler.store().label_history().unwrap();
    assert_eq!(history.len(), 1, "no negation was signed: {history:?}");
    // A backfill from cursor 0 does not carry it either: the stream goes straight to live.
    let mut sub = labeler.subscribe("cursor=0").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next_event())
            .await
            .is_err(),
        "the backfill is empty"
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_new_labeler_did_re_issues_every_label_under_it_and_negates_the_old_ones() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Granted under the key's did:key (no labelerDid).
    let labeler = TestLabeler::start_in(&world, dir.path(), "24h", |_| {}).await;
    let old_src = key().did_key().to_owned();
    assert_eq!(labeler.did, old_src);
    let mut sub = labeler.subscribe("").await;
    for i in 0..3 {
        world.good_operator(&format!("did:plc:mv{i}"), &format!("mv{i}.test"), "r1");
        sub.next_label().await;
    }
    labeler.stop().await;

    // Restarted with a did:web.
    let new_src = "did:web:labeler.example";
    let labeler = TestLabeler::start_in(&world, dir.path(), "24h", |c| {
        c.labeler_did = Some(new_src.into());
    })
    .await;
    let base = format!("http://{}", labeler.addr);
    let get = |q: String| {
        let base = base.clone();
        async move {
            let body: Value =
                reqwest::get(format!("{base}/xrpc/com.atproto.label.queryLabels?{q}"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            body["labels"].as_array().unwrap().clone()
        }
    };
    let all = get("uriPatterns=*&limit=250".into()).await;
    let positives: Vec<&Value> = all.iter().filter(|l| l["neg"] != true).collect();
    assert_eq!(positives.len(), 3);
    assert!(positives.iter().all(|l| l["src"] == new_src), "{all:#?}");
    let old = get(format!("uriPatterns=*&sources={old_src}")).await;
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|l| l["neg"] == true), "{old:#?}");
    // Every label still verifies with the one key.
    for l in &all {
        crate::common::server::verify(&crate::common::server::signed_from_json(l));
    }
    let _ = WAIT;
    labeler.stop().await;
}
