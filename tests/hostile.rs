//! A labeler that cannot be turned against its members: records gone only on proof, one DID
//! that cannot stall everyone, and the labeler's own faults never withdrawing labels. All over
//! real sockets: the Jetstream fake, the PLC and PDS fakes, and authoritative DNS servers on
//! 127.0.0.0/8 (a resolver that lies is a mode of the test DNS server).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use crate::common::daemon::{TestLabeler, World};
use crate::common::dns::{CANARY, FakeDns, Fault};
use crate::common::eventually;
use crate::common::jetstream::NSID;

const VMO: &str = "verified-mail-operator";

/// Waits until every attestation in the labeler's database has been checked `rounds` more
/// times than when it was called (checked_ms moved on that often), bounded.
async fn await_rechecks(labeler: &TestLabeler, rounds: usize, limit: Duration) {
    let store = labeler.store();
    for round in 0..rounds {
        let before: Vec<(String, Option<i64>)> = store
            .all_attestations()
            .unwrap()
            .into_iter()
            .map(|a| (a.rkey.clone() + &a.did, a.checked_ms))
            .collect();
        let moved = eventually(limit, || async {
            let now = store.all_attestations().unwrap();
            before.iter().all(|(key, was)| {
                now.iter()
                    .find(|a| a.rkey.clone() + &a.did == *key)
                    .is_some_and(|a| a.checked_ms > *was)
            })
        })
        .await;
        assert!(moved, "re-check round {round} did not happen in {limit:?}");
    }
}

#[tokio::test]
async fn deactivation_keeps_the_attestation_and_reactivation_restores_the_label() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "1s").await;
    let mut sub = labeler.subscribe("").await;
    let did = "did:plc:deactivator";
    world.good_operator(did, "deactivator.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);

    // Deactivated at the PDS and announced: the reference PDS now answers RecordNotFound for
    // the record (its AppView knows no such record), which must not read as a delete.
    world.pds.set_status(did, false, Some("deactivated"));
    world.jetstream.account(did, false, Some("deactivated"));
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, Some(true)));
    await_rechecks(&labeler, 2, Duration::from_secs(20)).await;
    let v = labeler.verification(did).await;
    let a = &v["attestations"][0];
    assert_eq!(a["domain"], "deactivator.test", "attestation kept: {v:#}");
    assert!(
        a["checks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("deactivated"),
        "{a:#}"
    );

    // Reactivated, with no record event: the label comes back.
    world.pds.set_status(did, true, None);
    world.jetstream.account(did, true, None);
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, None));
    labeler.stop().await;
}

#[tokio::test]
async fn a_takedown_and_its_reversal_are_found_by_rechecks_alone() {
    let world = World::start().await;
    // No AppView behind this PDS: getRecord for the inactive repo is InvalidRequest.
    world.pds.set_appview(false);
    let labeler = TestLabeler::start(&world, "1s").await;
    let mut sub = labeler.subscribe("").await;
    let did = "did:plc:takendown";
    world.good_operator(did, "takendown.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);

    // No account event at all: the re-check reads the repo status.
    world.pds.set_status(did, false, Some("takendown"));
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, Some(true)));
    await_rechecks(&labeler, 1, Duration::from_secs(20)).await;
    assert_eq!(
        labeler.verification(did).await["attestations"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the attestation is kept"
    );

    world.pds.set_status(did, true, None);
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, None));
    labeler.stop().await;
}

#[tokio::test]
async fn an_account_event_the_pds_cannot_confirm_is_retried_not_dropped() {
    let world = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A day between re-checks: only the retry can notice the deactivation in time.
    let labeler = TestLabeler::start_tuned(
        &world,
        dir.path(),
        "24h",
        |_| {},
        |t| t.account_retry = Duration::from_millis(300),
    )
    .await;
    let mut sub = labeler.subscribe("").await;
    let did = "did:plc:flaky";
    world.good_operator(did, "flaky.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);

    // The PDS errors while the deactivation is announced; the cursor moves past the event.
    world.pds.fail(did, 502);
    let t = world.jetstream.account(did, false, Some("deactivated"));
    labeler.await_cursor(t).await;
    assert_eq!(labeler.labels_on(did).await, [(VMO.to_owned(), false)]);

    // Once the PDS answers, the retry applies what the event announced.
    world.pds.clear_fault(did);
    world.pds.set_status(did, false, Some("deactivated"));
    let (_, l) = sub.next_label().await;
    assert_eq!((l.val.as_str(), l.neg), (VMO, Some(true)));
    labeler.stop().await;
}

#[tokio::test]
async fn an_unconfirmed_copy_never_replaces_a_confirmed_attestation() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let did = "did:plc:steady";
    let mut sub = labeler.subscribe("").await;
    world.good_operator(did, "steady.test", "r1");
    assert_eq!(sub.next_label().await.1.neg, None);

    // The PDS is unreachable while Jetstream claims the record now names another domain.
    world.pds.fail(did, 503);
    let t = world.jetstream.put(
        did,
        "r1",
        &World::record("elsewhere.test", &["other"]),
        "bafyreiforged",
        true,
    );
    labeler.await_cursor(t).await;
    let v = labeler.verification(did).await;
    let a = &v["attestations"][0];
    assert_eq!(a["domain"], "steady.test", "{v:#}");
    assert_eq!(a["dkimSelectors"], json!(["default"]), "{v:#}");
    assert_eq!(a["verified"], true, "{v:#}");
    assert_eq!(a["verdict"], "could-not-decide", "{v:#}");
    assert_eq!(labeler.labels_on(did).await, [(VMO.to_owned(), false)]);
    labeler.stop().await;
}

#[tokio::test]
async fn a_did_holds_at_most_sixteen_attestations_and_is_told_why_not_more() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let did = "did:plc:collector";
    world.account(did);
    let mut last = 0;
    for i in 0..17 {
        let domain = format!("d{i:02}.collector.test");
        world.dns.publish_good_operator(&domain, did, &["default"]);
        last = world.publish(
            did,
            &format!("r{i:02}"),
            &World::record(&domain, &["default"]),
        );
    }
    labeler.await_cursor(last).await;
    let v = labeler.verification(did).await;
    assert_eq!(v["attestations"].as_array().unwrap().len(), 16, "{v:#}");
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{v:#}");
    assert_eq!(refused[0]["uri"], format!("at://{did}/{NSID}/r16"));
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("already has 16 attestations"),
        "{refused:?}"
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_hostile_did_with_a_hung_pds_and_silent_dns_does_not_delay_honest_operators() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "24h").await;
    let mut sub = labeler.subscribe("").await;

    let hostile = "did:plc:hostile";
    world.account(hostile);
    world.pds.hang(hostile);
    for name in [
        "hostile.test",
        "_dmarc.hostile.test",
        "_atproto.hostile.test",
    ] {
        world.dns.fault(name, Fault::Timeout);
    }
    for i in 0..5000 {
        world.jetstream.put(
            hostile,
            &format!("h{:04}", i % 500),
            &World::record("hostile.test", &["default"]),
            "bafyreihostile",
            i >= 500,
        );
    }
    let mut honest = HashSet::new();
    let mut last = 0;
    for i in 0..200 {
        let did = format!("did:plc:honest{i:03}");
        last = world.good_operator(&did, &format!("honest{i:03}.test"), "r1");
        honest.insert(did);
    }

    // Every honest operator is labelled within 60 s, while the hostile PDS still hangs.
    let labelled = tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = HashSet::new();
        while seen.len() < honest.len() {
            let (_, l) = sub.next_label().await;
            assert!(honest.contains(&l.uri), "only honest operators get labels");
            assert_eq!((l.val.as_str(), l.neg), (VMO, None));
            seen.insert(l.uri);
        }
    })
    .await;
    assert!(
        labelled.is_ok(),
        "honest operators were not all labelled in 60 s"
    );
    // The saved cursor gets past the whole burst: the hostile DID holds it back for at most
    // a verification deadline or two, not once per event.
    labeler.await_cursor(last).await;
    let v = labeler.verification(hostile).await;
    assert!(
        v["attestations"].as_array().unwrap().len() <= 16,
        "one DID's cost stays bounded: {}",
        v["attestations"].as_array().unwrap().len()
    );
    labeler.stop().await;
}

/// An operator whose DNS passes in both `world.dns` and `second`, announced on Jetstream.
fn good_operator_in_both(world: &World, second: &FakeDns, did: &str, domain: &str) {
    second.publish_good_operator(domain, did, &["default"]);
    world.good_operator(did, domain, "r1");
}

#[tokio::test]
async fn a_resolver_that_lies_withdraws_nothing_and_a_real_failure_is_still_withdrawn() {
    let world = World::start().await;
    let second = FakeDns::start_on(Ipv4Addr::new(127, 0, 0, 53)).await;
    let dir = tempfile::tempdir().unwrap();
    let confirm = second.addr().to_string();
    let labeler = TestLabeler::start_in(&world, dir.path(), "1s", |c| {
        c.confirm_dns_servers = vec![confirm.parse().unwrap()];
    })
    .await;
    let mut sub = labeler.subscribe("").await;
    let mut dids = Vec::new();
    for i in 0..20 {
        let did = format!("did:plc:op{i:02}");
        good_operator_in_both(&world, &second, &did, &format!("op{i:02}.test"));
        dids.push(did);
    }
    let mut granted = HashSet::new();
    while granted.len() < 20 {
        let (_, l) = sub.next_label().await;
        assert_eq!(l.neg, None);
        granted.insert(l.uri);
    }
    let head = labeler.store().head_seq().unwrap();

    // The labeler's resolver answers NXDOMAIN for every name, for three re-check cycles.
    world.dns.fault_all(Some(Fault::NxDomain));
    await_rechecks(&labeler, 3, Duration::from_secs(30)).await;
    assert_eq!(
        labeler.store().head_seq().unwrap(),
        head,
        "nothing was signed"
    );
    let v = labeler.verification(&dids[0]).await;
    assert_eq!(v["attestations"][0]["verified"], true, "{v:#}");
    let metrics = reqwest::get(format!("http://{}/metrics", labeler.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("labeler_guard_resolver_degraded 1"),
        "the guard saw its resolver fail the canary {CANARY}"
    );

    // Restored: nothing changed.
    world.dns.fault_all(None);
    await_rechecks(&labeler, 2, Duration::from_secs(30)).await;
    assert_eq!(
        labeler.store().head_seq().unwrap(),
        head,
        "nothing was signed"
    );

    // A real failure, seen from both vantage points, is withdrawn.
    for dns in [&world.dns, &second] {
        dns.set_txt("_dmarc.op07.test", &["v=DMARC1; p=none"]);
    }
    let (_, l) = sub.next_label().await;
    assert_eq!((l.uri.as_str(), l.neg), (dids[7].as_str(), Some(true)));
    let v = labeler.verification(&dids[7]).await;
    assert_eq!(
        v["attestations"][0]["confirmedBy"],
        format!("the resolvers {confirm}"),
        "{v:#}"
    );
    labeler.stop().await;
}

#[tokio::test]
async fn a_failure_only_the_labelers_resolver_sees_is_not_withdrawn() {
    let world = World::start().await;
    let second = FakeDns::start_on(Ipv4Addr::new(127, 0, 0, 54)).await;
    let dir = tempfile::tempdir().unwrap();
    let confirm = second.addr().to_string();
    let labeler = TestLabeler::start_in(&world, dir.path(), "1s", |c| {
        c.confirm_dns_servers = vec![confirm.parse().unwrap()];
    })
    .await;
    let mut sub = labeler.subscribe("").await;
    let did = "did:plc:seenonce";
    good_operator_in_both(&world, &second, did, "seenonce.test");
    assert_eq!(sub.next_label().await.1.neg, None);

    // Only the labeler's own resolver loses the DMARC record.
    world.dns.fault("_dmarc.seenonce.test", Fault::NxDomain);
    let a = labeler
        .await_verdict(did, "r1", &["could-not-decide"])
        .await;
    assert_eq!(a["verified"], true, "{a:#}");
    let dmarc = a["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dmarc")
        .unwrap()
        .clone();
    assert!(
        dmarc["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("not confirmed through the resolvers {confirm}")),
        "{dmarc}"
    );
    assert_eq!(labeler.labels_on(did).await, [(VMO.to_owned(), false)]);
    labeler.stop().await;
}

#[tokio::test]
async fn the_breaker_holds_a_wave_of_withdrawals_until_an_operator_releases_it() {
    let world = World::start().await;
    let labeler = TestLabeler::start(&world, "1s").await;
    let mut sub = labeler.subscribe("").await;
    let mut dids = Vec::new();
    for i in 0..20 {
        let did = format!("did:plc:wave{i:02}");
        world.good_operator(&did, &format!("wave{i:02}.test"), "r1");
        dids.push(did);
    }
    let mut granted = HashSet::new();
    while granted.len() < 20 {
        granted.insert(sub.next_label().await.1.uri);
    }

    // Ten operators break at once, seen the same from both vantage points: a wave that looks
    // like the labeler's fault. Four withdrawals pass before the breaker can tell; the rest
    // are held.
    for i in 0..10 {
        world
            .dns
            .set_txt(&format!("_dmarc.wave{i:02}.test"), &["v=DMARC1; p=none"]);
    }
    let mut negated = HashSet::new();
    while negated.len() < 4 {
        let (_, l) = sub.next_label().await;
        assert_eq!(l.neg, Some(true));
        negated.insert(l.uri);
    }
    await_rechecks(&labeler, 2, Duration::from_secs(30)).await;
    let held: Vec<&String> = dids[..10]
        .iter()
        .filter(|d| !negated.contains(*d))
        .collect();
    assert_eq!(held.len(), 6);
    let v = labeler.verification(held[0]).await;
    let notes = v["attestations"][0]["notes"].to_string();
    assert!(notes.contains("held by the breaker"), "{v:#}");
    assert_eq!(v["attestations"][0]["verified"], true, "{v:#}");

    // `labeler breaker release`, through the database the daemon reads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_labeler"))
        .arg("breaker")
        .arg("release")
        .arg("--config")
        .arg(labeler.cli_config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    while negated.len() < 10 {
        let (_, l) = sub.next_label().await;
        assert_eq!(l.neg, Some(true));
        negated.insert(l.uri);
    }
    labeler.stop().await;
}

#[tokio::test]
async fn the_zones_authoritative_servers_confirm_when_no_second_resolver_is_configured() {
    let world = World::start().await;
    // The authoritative server of auth.test, on its own address; the labeler's resolver
    // (world.dns) knows where it is (NS + glue) and otherwise holds the same records.
    let auth = FakeDns::start_on(Ipv4Addr::new(127, 0, 0, 55)).await;
    for dns in [&world.dns, &auth] {
        dns.set_ns("auth.test", &["ns1.auth.test"]);
        dns.set_a("ns1.auth.test", &[Ipv4Addr::new(127, 0, 0, 55)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = auth.addr().port();
    let labeler = TestLabeler::start_tuned(
        &world,
        dir.path(),
        "1s",
        |c| c.confirm_dns_servers.clear(),
        |t| t.authoritative_dns_port = port,
    )
    .await;
    let mut sub = labeler.subscribe("").await;
    let did = "did:plc:authoritative";
    good_operator_in_both(&world, &auth, did, "auth.test");
    assert_eq!(sub.next_label().await.1.neg, None);

    // The resolver alone says DMARC is gone: the zone's server disagrees, nothing happens.
    world.dns.fault("_dmarc.auth.test", Fault::NxDomain);
    let a = labeler
        .await_verdict(did, "r1", &["could-not-decide"])
        .await;
    assert_eq!(a["verified"], true, "{a:#}");
    world.dns.clear_fault("_dmarc.auth.test");

    // The zone itself drops it: confirmed by the authoritative server, withdrawn.
    for dns in [&world.dns, &auth] {
        dns.remove("_dmarc.auth.test");
    }
    let (_, l) = sub.next_label().await;
    assert_eq!(l.neg, Some(true));
    let v = labeler.verification(did).await;
    assert_eq!(
        v["attestations"][0]["confirmedBy"], "each zone's authoritative servers",
        "{v:#}"
    );
    labeler.stop().await;
}
