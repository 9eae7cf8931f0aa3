//! **hostile**: honest operators' time-to-label beside one hostile DID.
//!
//! Two runs of the release binary, each on a fresh state and fresh fakes:
//! 1. *alone*: `--attestations` honest operators (default 200) are published at once;
//! 2. *beside a hostile DID*: first one DID whose PDS never answers and whose DNS is silent
//!    sends 5,000 attestation events in a burst, then the same honest operators.
//!
//! Time-to-label is from the moment an operator's event is published on the fake Jetstream to
//! the moment its `verified-mail-operator` frame reaches a live subscribeLabels client (whose
//! signature check is the tests' client's). Both runs report p50 / p99 / max; the run passes
//! when every honest operator is labelled within 60 s while the hostile PDS still hangs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::checks::Checks;
use crate::common::daemon::World;
use crate::common::dns::Fault;
use crate::common::server::{Event, Subscriber};
use crate::harness::{Instance, Labeler, percentile};

/// The bound the issue sets on honest operators' time-to-label beside a hostile DID.
const LIMIT: Duration = Duration::from_secs(60);

/// Events the hostile DID sends.
const HOSTILE_EVENTS: usize = 5000;

pub async fn run(args: &Args) -> anyhow::Result<Checks> {
    let mut checks = Checks::default();
    let mut rows = Vec::new();
    for hostile in [false, true] {
        let (latencies, wall) = one_run(args, hostile).await?;
        let mut sorted: Vec<f64> = latencies.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        let name = if hostile {
            "beside a hostile DID"
        } else {
            "alone"
        };
        println!(
            "hostile: {name}: {} honest operators labelled in {:.2} s: time-to-label p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms",
            sorted.len(),
            wall.as_secs_f64(),
            percentile(&sorted, 0.50) * 1e3,
            percentile(&sorted, 0.99) * 1e3,
            sorted.last().copied().unwrap_or_default() * 1e3,
        );
        rows.push((name, sorted));
    }
    let beside = &rows[1].1;
    checks.check(
        "every honest operator beside the hostile DID is labelled within 60 s",
        beside.len() == args.attestations
            && beside.last().is_some_and(|&m| m <= LIMIT.as_secs_f64()),
        format!("{} of {} labelled", beside.len(), args.attestations),
    );
    Ok(checks)
}

/// One run; returns each honest operator's time-to-label and the wall time of the run.
async fn one_run(args: &Args, hostile: bool) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let world = World::start().await;
    let inst = Instance::create(&world, "24h", args.keep)?;
    let labeler = Labeler::start(&inst, &world.jetstream).await?;
    let url = format!("ws://{}/xrpc/com.atproto.label.subscribeLabels", inst.addr);
    let mut sub = Subscriber::connect(&url).await;

    let started = Instant::now();
    if hostile {
        let did = "did:plc:hostile";
        world.account(did);
        world.pds.hang(did);
        for name in [
            "hostile.bench",
            "_dmarc.hostile.bench",
            "_atproto.hostile.bench",
        ] {
            world.dns.fault(name, Fault::Timeout);
        }
        let record = World::record("hostile.bench", &["default"]);
        for i in 0..HOSTILE_EVENTS {
            world.jetstream.put(
                did,
                &format!("h{:04}", i % 500),
                &record,
                "bafyreihostile",
                i >= 500,
            );
        }
    }
    let mut published = HashMap::new();
    for i in 0..args.attestations {
        let did = format!("did:plc:honest{i:05}");
        world.good_operator(&did, &format!("honest{i:05}.bench"), "r1");
        published.insert(did, Instant::now());
    }

    let mut latencies = Vec::with_capacity(args.attestations);
    let deadline = tokio::time::Instant::now() + LIMIT + Duration::from_secs(30);
    while latencies.len() < args.attestations {
        let event = tokio::time::timeout_at(deadline, next_event(&mut sub))
            .await
            .context("honest operators were not all labelled in time")??;
        if let Event::Labels { labels, .. } = event {
            for l in labels {
                match published.remove(&l.uri) {
                    Some(at) if l.neg.is_none() => latencies.push(at.elapsed()),
                    Some(_) => bail!("{} was negated", l.uri),
                    None => bail!("an unexpected label on {}", l.uri),
                }
            }
        }
    }
    let wall = started.elapsed();
    let status = labeler.terminate().await?;
    if !status.success() {
        bail!("the labeler exited with {status} on SIGTERM");
    }
    Ok((latencies, wall))
}

/// The next stream event without the tests' client's own 10 s bound (a burst may keep the
/// stream quiet longer).
async fn next_event(sub: &mut Subscriber) -> anyhow::Result<Event> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match sub.ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(crate::common::server::decode(&b)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("the stream ended: {other:?}"),
        }
    }
}
