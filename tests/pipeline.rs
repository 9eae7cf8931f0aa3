//! End to end: Jetstream event → PDS confirmation → DNS checks → signed label → subscribers,
//! with every real part running (issue: "Jetstream consumer and the label lifecycle").

use std::collections::BTreeSet;

use atmos_labeler::label::{RELAY_MEMBER, VERIFIED_MAIL_OPERATOR};
use serde_json::Value;

use crate::common::daemon::{TestLabeler, World};
use crate::common::dns::Fault;
use crate::common::server::{Event, key};

const VMO: &str = VERIFIED_MAIL_OPERATOR;

/// Breaks one thing in a good operator's DNS: `(domain, did)`.
type Breakage<'a> = Box<dyn Fn(&str, &str) + 'a>;

#[tokio::test]
async fn a_good_attestation_yields_a_signed_label_on_the_stream_and_in_query_labels() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;
    world.good_operator("did:plc:alice", "alice.test", "3mvzi5tlpq22f");

    let (seq, label) = sub.next_label().await; // the client verified the signature
    assert_eq!(label.uri, "did:plc:alice");
    assert_eq!(label.val, VMO);
    assert_eq!(label.src, key().did_key());
    assert_eq!(labeler.did, key().did_key());
    assert!(label.neg.is_none() && label.cid.is_none() && label.exp.is_none());

    let body = labeler
        .get("/xrpc/com.atproto.label.queryLabels?uriPatterns=did:plc:alice")
        .await;
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0]["cts"], label.cts.as_str());
    assert_eq!(labels[0]["val"], VMO);

    let status = labeler.verification("did:plc:alice").await;
    let att = &status["attestations"][0];
    assert_eq!(att["verdict"], "pass");
    assert_eq!(att["verified"], true);
    assert_eq!(att["domain"], "alice.test");
    let checks = att["checks"].as_array().unwrap();
    for name in ["domain-control", "mx", "spf", "dkim", "dmarc"] {
        let c = checks.iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(c["outcome"], "pass", "{c}");
    }
    assert_eq!(status["labels"][0]["val"], VMO);
    assert!(seq > 0);
    labeler.stop().await;
}

#[tokio::test]
async fn every_failing_case_yields_no_label() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let dns = &world.dns;
    // One broken piece each, everything else as a good operator publishes it.
    let cases: Vec<(&str, &str, Breakage<'_>)> = vec![
        ("did:plc:nomx", "nomx.test", Box::new(|d, _| dns.remove(d))),
        (
            "did:plc:nullmx",
            "nullmx.test",
            Box::new(|d, _| dns.set_mx(d, &[(0, ".")])),
        ),
        (
            "did:plc:plusall",
            "plusall.test",
            Box::new(|d, _| dns.set_txt(d, &["v=spf1 +all"])),
        ),
        (
            "did:plc:twospf",
            "twospf.test",
            Box::new(|d, _| dns.set_txt(d, &["v=spf1 -all", "v=spf1 ip4:192.0.2.1 -all"])),
        ),
        (
            "did:plc:revoked",
            "revoked.test",
            Box::new(|d, _| {
                dns.set_txt(&format!("default._domainkey.{d}"), &["v=DKIM1; k=rsa; p="])
            }),
        ),
        (
            "did:plc:nodmarc",
            "nodmarc.test",
            Box::new(|d, _| dns.remove(&format!("_dmarc.{d}"))),
        ),
        (
            "did:plc:pnone",
            "pnone.test",
            Box::new(|d, _| dns.set_txt(&format!("_dmarc.{d}"), &["v=DMARC1; p=none"])),
        ),
        (
            "did:plc:pct",
            "pct.test",
            Box::new(|d, _| dns.set_txt(&format!("_dmarc.{d}"), &["v=DMARC1; p=reject; pct=10"])),
        ),
        (
            "did:plc:noproof",
            "noproof.test",
            Box::new(|d, _| dns.remove(&format!("_atproto.{d}"))),
        ),
        (
            "did:plc:otherdid",
            "otherdid.test",
            Box::new(|d, _| dns.set_txt(&format!("_atproto.{d}"), &["did=did:plc:someoneelse"])),
        ),
        (
            "did:plc:twodids",
            "twodids.test",
            Box::new(|d, did| {
                dns.set_txt(
                    &format!("_atproto.{d}"),
                    &[&format!("did={did}"), "did=did:plc:x"],
                )
            }),
        ),
    ];
    for (did, domain, breakage) in &cases {
        dns.publish_good_operator(domain, did, &["default"]);
        breakage(domain, did);
        world.account(did);
        world.publish(did, "r1", &World::record(domain, &["default"]));
    }
    for (did, domain, _) in &cases {
        let att = labeler.await_verdict(did, "r1", &["fail"]).await;
        assert_eq!(att["verified"], false, "{domain}");
        let failed: Vec<&Value> = att["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["outcome"] == "fail")
            .collect();
        assert!(!failed.is_empty(), "{domain}: {att:#}");
        assert!(
            failed
                .iter()
                .all(|c| !c["reason"].as_str().unwrap().is_empty()),
            "{domain}: every failure has a reason"
        );
    }
    assert!(labeler.all_labels().await.is_empty(), "no label for anyone");
    labeler.stop().await;
}

#[tokio::test]
async fn breaking_dmarc_negates_at_the_next_recheck_but_servfail_does_not() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "1s").await;
    let mut sub = labeler.subscribe("").await;
    world.good_operator("did:plc:bob", "bob.test", "r1");
    let (first_seq, first) = sub.next_label().await;
    assert_eq!((first.val.as_str(), first.neg), (VMO, None));

    // A SERVFAIL on _dmarc is a transient failure: the re-check is undecided and the label stays.
    world.dns.fault("_dmarc.bob.test", Fault::ServFail);
    let att = labeler
        .await_verdict("did:plc:bob", "r1", &["could-not-decide"])
        .await;
    assert_eq!(att["verified"], true, "{att:#}");
    let dmarc = att["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dmarc")
        .unwrap();
    assert_eq!(dmarc["outcome"], "could-not-decide", "{dmarc}");
    assert_eq!(
        labeler.labels_on("did:plc:bob").await,
        [(VMO.to_owned(), false)]
    );

    // p=none is a definitive failure: negated at the next re-check.
    world.dns.clear_fault("_dmarc.bob.test");
    world.dns.set_txt("_dmarc.bob.test", &["v=DMARC1; p=none"]);
    let (seq, negation) = sub.next_label().await;
    assert!(seq > first_seq);
    assert_eq!(negation.val, VMO);
    assert_eq!(negation.neg, Some(true));
    assert!(negation.cts > first.cts);
    assert_eq!(
        labeler.labels_on("did:plc:bob").await,
        [(VMO.to_owned(), true)]
    );

    // Fixing DMARC grants it again at a later re-check.
    world
        .dns
        .set_txt("_dmarc.bob.test", &["v=DMARC1; p=quarantine"]);
    let (_, again) = sub.next_label().await;
    assert_eq!((again.val.as_str(), again.neg), (VMO, None));
    labeler.stop().await;
}

#[tokio::test]
async fn a_deleted_record_is_negated_and_a_forged_event_is_not_labelled() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;

    world.good_operator("did:plc:carol", "carol.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);
    world.unpublish("did:plc:carol", "r1");
    let (_, neg) = sub.next_label().await;
    assert_eq!((neg.uri.as_str(), neg.neg), ("did:plc:carol", Some(true)));
    assert!(
        labeler.verification("did:plc:carol").await["attestations"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Forged: Jetstream claims a record the author's PDS does not have (DNS is perfect).
    world
        .dns
        .publish_good_operator("mallory.test", "did:plc:mallory", &["default"]);
    world.account("did:plc:mallory");
    world.jetstream.put(
        "did:plc:mallory",
        "forged",
        &World::record("mallory.test", &["default"]),
        "bafyforged",
        false,
    );
    // Then a genuine record of the same DID (same worker, so processed after the forgery)
    // whose DNS fails: once its verdict is in, the forgery has been dealt with.
    world.account("did:plc:mallory");
    world.publish(
        "did:plc:mallory",
        "real",
        &World::record("nothing.test", &["default"]),
    );
    labeler
        .await_verdict("did:plc:mallory", "real", &["fail"])
        .await;
    let v = labeler.verification("did:plc:mallory").await;
    let uris: Vec<&str> = v["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["at://did:plc:mallory/email.atmos.attestation/real"]);
    assert!(labeler.labels_on("did:plc:mallory").await.is_empty());
    labeler.stop().await;
}

#[tokio::test]
async fn relay_membership_follows_the_spf_include() {
    let world = World::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let labeler = TestLabeler::start_in(&world, tmp.path(), "24h", |c| {
        c.relay_spf_include = Some("_spf.relay.test".to_owned());
    })
    .await;
    world
        .dns
        .set_txt("_spf.relay.test", &["v=spf1 ip4:198.51.100.0/24 -all"]);
    let mut sub = labeler.subscribe("").await;

    world
        .dns
        .publish_good_operator("member.test", "did:plc:member", &["default"]);
    world
        .dns
        .set_txt("member.test", &["v=spf1 include:_spf.relay.test -all"]);
    world.account("did:plc:member");
    world.publish(
        "did:plc:member",
        "r1",
        &World::record("member.test", &["default"]),
    );
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let (_, l) = sub.next_label().await;
        assert_eq!(l.uri, "did:plc:member");
        got.insert(l.val);
    }
    assert_eq!(
        got,
        BTreeSet::from([VMO.to_owned(), RELAY_MEMBER.to_owned()])
    );

    // A verified operator outside the relay gets only the operator label.
    world.good_operator("did:plc:solo", "solo.test", "r1");
    let (_, l) = sub.next_label().await;
    assert_eq!((l.uri.as_str(), l.val.as_str()), ("did:plc:solo", VMO));
    labeler.await_verdict("did:plc:solo", "r1", &["pass"]).await;
    assert_eq!(
        labeler.labels_on("did:plc:solo").await,
        [(VMO.to_owned(), false)]
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_deactivated_account_loses_its_labels() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;
    world.good_operator("did:plc:dave", "dave.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);

    // The PDS confirms the deactivation the Jetstream event claims.
    world
        .pds
        .set_status("did:plc:dave", false, Some("deactivated"));
    world
        .jetstream
        .account("did:plc:dave", false, Some("deactivated"));
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, Some(true)));

    // Reactivated: the standing attestation earns the label back.
    world.pds.set_status("did:plc:dave", true, None);
    world.jetstream.account("did:plc:dave", true, None);
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, None));
    labeler.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_account_event_changes_nothing() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;
    world.good_operator("did:plc:erin", "erin.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);
    // Jetstream claims a takedown; the PDS says the account is active.
    world
        .jetstream
        .account("did:plc:erin", false, Some("takendown"));
    // Sentinel through the same DID's worker: a second, failing attestation.
    world.publish(
        "did:plc:erin",
        "r2",
        &World::record("broken.test", &["default"]),
    );
    labeler.await_verdict("did:plc:erin", "r2", &["fail"]).await;
    assert_eq!(
        labeler.labels_on("did:plc:erin").await,
        [(VMO.to_owned(), false)]
    );
    labeler.stop().await;
}

#[tokio::test]
async fn the_stream_shows_events_in_seq_order_after_a_backfill() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut live = labeler.subscribe("").await;
    for i in 0..5 {
        world.good_operator(&format!("did:plc:op{i}"), &format!("op{i}.test"), "r1");
    }
    let mut live_seqs = Vec::new();
    for _ in 0..5 {
        live_seqs.push(live.next_label().await.0);
    }
    let mut replay = labeler.subscribe("cursor=0").await;
    for want in &live_seqs {
        match replay.next_event().await {
            Event::Labels { seq, .. } => assert_eq!(seq, *want),
            other => panic!("{other:?}"),
        }
    }
    assert!(live_seqs.windows(2).all(|w| w[0] < w[1]));
    labeler.stop().await;
}

#[tokio::test]
async fn a_dns_and_plc_outage_over_a_whole_recheck_cycle_withdraws_nothing() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "1s").await;
    let mut sub = labeler.subscribe("").await;
    let dids: Vec<String> = (0..3).map(|i| format!("did:plc:steady{i}")).collect();
    for (i, did) in dids.iter().enumerate() {
        world.good_operator(did, &format!("steady{i}.test"), "r1");
    }
    for _ in &dids {
        assert_eq!(sub.next_label().await.1.neg, None);
    }

    // The DNS server goes silent and the PLC directory answers 500, for everyone.
    world.dns.fault_all(Some(Fault::Timeout));
    world.plc.fail_all(Some(500));
    // Two full re-check cycles: every attestation re-checked (undecided) at least twice.
    for round in 0..2 {
        for did in &dids {
            // An undecided verdict grants and withdraws nothing: no frame to wait on.
            let a = labeler
                .await_verdict(did, "r1", &["could-not-decide"])
                .await;
            assert_eq!(a["verified"], true, "round {round}: {a:#}");
        }
        // Then wait for every attestation to be re-checked once more, still in the outage.
        let store = labeler.store();
        let before: Vec<i64> = store
            .all_attestations()
            .unwrap()
            .iter()
            .map(|a| a.checked_ms.unwrap())
            .collect();
        assert!(
            crate::common::eventually(crate::common::server::WAIT, || {
                let store = store.clone();
                let before = before.clone();
                async move {
                    let now: Vec<i64> = store
                        .all_attestations()
                        .unwrap()
                        .iter()
                        .map(|a| a.checked_ms.unwrap())
                        .collect();
                    now.iter().zip(&before).all(|(n, b)| n > b)
                }
            })
            .await,
            "every attestation was re-checked again during the outage"
        );
    }
    for did in &dids {
        assert_eq!(
            labeler.labels_on(did).await,
            [(VMO.to_owned(), false)],
            "{did}"
        );
    }
    let history = labeler.store().label_history().unwrap();
    assert!(
        history.iter().all(|h| !h.signed.label.neg),
        "nothing was negated"
    );

    world.dns.fault_all(None);
    world.plc.fail_all(None);
    labeler.stop().await;
}
