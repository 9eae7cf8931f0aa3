//! **crash** proves that SIGKILL loses nothing and duplicates nothing. A seeded scenario
//! (`--seed`, printed) of 5,000 operators, each its own DID and domain: ~70 % pass and keep
//! their label, ~10 % fail (DMARC `p=none`), ~10 % are deleted and ~10 % updated to a domain
//! with no DNS once their label is out (so the run has negations; a withdrawal waits, out of
//! the publishing order, until the follower below has seen the label, which makes the final
//! state independent of timing). Events go out at a steady `--rate` (200/s), stamped with
//! the wall clock as the real Jetstream does, so the labeler's 5 s rewind really replays 5 s
//! of events. The scenario runs twice with the same binary: once uninterrupted (the
//! reference), once with the labeler killed (SIGKILL) at 20 random points of the ingest and
//! restarted on the same state dir each time (the next kill only once it is ready again).
//! After each kill the database is opened read-only and must pass `PRAGMA integrity_check`.
//! A follower on `subscribeLabels` (from `cursor=0`, reconnecting with its last seq after
//! every restart) records every frame, decoded with `serde_ipld_dagcbor` and its signature
//! verified. Once every attestation has its expected verdict and the saved Jetstream cursor
//! has passed the last event (read-only reads of the database), it checks, for both runs:
//! - the current labels (`queryLabels?uriPatterns=*`, paged) equal the scenario's expected
//!   labels, and the killed run's equal the reference run's;
//! - `label_history` seqs strictly increase (none reused), and no (uri, val) repeats the same
//!   polarity back to back (no duplicate label);
//! - delivery: every frame received is a `label_history` row, byte for byte; the follower's
//!   seqs strictly increase across all reconnects (nothing delivered twice); every history
//!   row was received, or is superseded by a later row of the same (src, uri, cid, val) —
//!   the Ozone model drops replaced rows from backfill and the live feed — and the last row
//!   of every key was received; the follower's final state equals the `labels` table row for
//!   row (seq included);
//! - SIGTERM at the end exits 0 and the database passes `integrity_check`.
//!
//! It reports the kills, downtime per restart, total time, attestations/s, and the replays:
//! per restart, the cursor the labeler resumed from, the events Jetstream sent again, how
//! many of those the labeler skipped as already applied, and the verifications it had to
//! redo (verification log lines beyond the reference run's).

mod follower;
mod scenario;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::checks::{Checks, check_delivery, check_history};
use crate::common::daemon::World;
use crate::harness::{Instance, Labeler, LogStats, http_client, percentile, poll, ready};
use crate::rows::{Row, latest_per_key, with_db};
use follower::{FollowState, follow};
use scenario::{Kind, Scenario, publish_scenario};

/// One kill and restart.
struct KillRecord {
    /// Events published when the kill came.
    at_event: usize,
    /// Since the first event.
    at: Duration,
    /// Kill to ready again.
    downtime: Duration,
    integrity: String,
    /// Index of the restarted labeler's first Jetstream connection.
    conn_index: usize,
}

/// Everything one run of the scenario produced.
struct RunOutcome {
    labels: Vec<(String, String, bool)>,
    current: Vec<Row>,
    history: Vec<Row>,
    follower: FollowState,
    kills: Vec<KillRecord>,
    /// First event to every verdict in (caught up).
    elapsed: Duration,
    /// First event to last event.
    publishing: Duration,
    /// `time_us` of every event, in publishing order.
    event_times: Vec<i64>,
    /// The cursor of every Jetstream connection, in order.
    jetstream_cursors: Vec<Option<i64>>,
    log: LogStats,
    exit: ExitStatus,
    integrity: String,
    deferred: usize,
}

/// Runs the scenario once; kills the labeler at the scenario's points when `kill`.
async fn run_scenario(
    args: &Args,
    scenario: &Arc<Scenario>,
    kill: bool,
) -> anyhow::Result<RunOutcome> {
    let name = if kill { "killed run" } else { "reference run" };
    let world = Arc::new(World::start().await);
    world.jetstream.follow_wall_clock();
    scenario.prepare(&world);
    let inst = Instance::create(&world, "24h", args.keep)?;
    println!(
        "{name}: {} operators, {} events at {}/s; state in {}",
        scenario.kinds.len(),
        scenario.events(),
        args.rate,
        inst.dir.display()
    );
    let mut labeler = Labeler::start(&inst, &world.jetstream).await?;

    let follower = Arc::new(Mutex::new(FollowState::default()));
    let stop_follower = CancellationToken::new();
    let follow_task = tokio::spawn(follow(inst.addr, follower.clone(), stop_follower.clone()));

    let progress = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut publisher = tokio::spawn(publish_scenario(
        world.clone(),
        scenario.clone(),
        follower.clone(),
        progress.clone(),
        times.clone(),
    ));

    let mut kills = Vec::new();
    if kill {
        for (n, &point) in scenario.kill_points.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(600);
            while progress.load(Ordering::SeqCst) < point {
                if publisher.is_finished() || Instant::now() > deadline {
                    bail!("publishing stopped before kill point {point}");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at_event = progress.load(Ordering::SeqCst);
            let at = started.elapsed();
            labeler.kill9().with_context(|| format!("kill {}", n + 1))?;
            let killed = Instant::now();
            let integrity = with_db(&inst.db, |db| db.integrity_check())
                .await
                .with_context(|| format!("integrity check after kill {}", n + 1))?;
            let conn_index = world.jetstream.connections();
            labeler = Labeler::start(&inst, &world.jetstream)
                .await
                .with_context(|| format!("restart after kill {}", n + 1))?;
            let downtime = killed.elapsed();
            println!(
                "  kill {:>2}: after event {at_event:>5} ({:>5.1} s), integrity {integrity}, ready again in {:.0} ms",
                n + 1,
                at.as_secs_f64(),
                downtime.as_secs_f64() * 1000.0
            );
            kills.push(KillRecord {
                at_event,
                at,
                downtime,
                integrity,
                conn_index,
            });
        }
    }
    let deferred = tokio::time::timeout(Duration::from_secs(900), &mut publisher)
        .await
        .context("publishing took too long")?
        .context("publisher task")??;
    let publishing = started.elapsed();
    let event_times = times.lock().expect("event times").clone();
    let last_time = *event_times.last().context("no events published")?;

    // Caught up: every attestation has its expected verdict, and the saved cursor has passed
    // the last event.
    let expected = scenario.expected_verdicts();
    poll(Duration::from_secs(300), Duration::from_millis(100), async || {
        if let Some(status) = labeler.exited()? {
            bail!(
                "{name}: the labeler exited by itself ({status}); log {}",
                inst.log.display()
            );
        }
        let (verdicts, cursor) = with_db(&inst.db, |db| Ok((db.verdicts()?, db.cursor()?))).await?;
        if verdicts == expected && cursor.is_some_and(|c| c >= last_time) {
            return Ok(ControlFlow::Break(()));
        }
        let wrong = expected
            .iter()
            .filter(|(did, v)| verdicts.get(*did) != Some(v))
            .count();
        Ok(ControlFlow::Continue(format!(
            "{name}: the labeler never caught up: {} attestations stored, {} of {} expected verdicts missing or different, {} unexpected, cursor {:?} vs last event {last_time}",
            verdicts.len(),
            wrong,
            expected.len(),
            verdicts
                .keys()
                .filter(|d| !expected.contains_key(*d))
                .count(),
            cursor
        )))
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    let elapsed = started.elapsed();

    let labels = all_labels(inst.addr).await?;

    // The follower reaches the labels table (one that never does is reported by the checks
    // below).
    let _ = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            let current = with_db(&inst.db, |db| db.current()).await?;
            let want = latest_per_key(&current);
            let got = latest_per_key(&follower.lock().expect("follower state").frames);
            Ok(ready(want == got, String::new))
        },
    )
    .await?;
    stop_follower.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), follow_task).await;

    let exit = labeler.terminate().await?;
    let (integrity, history, current) = with_db(&inst.db, |db| {
        Ok((db.integrity_check()?, db.history()?, db.current()?))
    })
    .await?;
    let log = LogStats::read(&inst.log)?;
    let follower = std::mem::take(&mut *follower.lock().expect("follower state"));
    Ok(RunOutcome {
        labels,
        current,
        history,
        follower,
        kills,
        elapsed,
        publishing,
        event_times,
        jetstream_cursors: world.jetstream.cursors(),
        log,
        exit,
        integrity,
        deferred,
    })
}

/// All current labels through queryLabels `*`, paged: (uri, val, neg), sorted.
async fn all_labels(addr: SocketAddr) -> anyhow::Result<Vec<(String, String, bool)>> {
    let http = http_client()?;
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut url =
            format!("http://{addr}/xrpc/com.atproto.label.queryLabels?uriPatterns=*&limit=250");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = http.get(&url).send().await.context("queryLabels")?;
        if resp.status() != 200 {
            bail!("queryLabels answered {}", resp.status());
        }
        let body: Value = resp.json().await.context("queryLabels body")?;
        for l in body["labels"].as_array().context("no labels array")? {
            out.push((
                l["uri"].as_str().context("uri")?.to_owned(),
                l["val"].as_str().context("val")?.to_owned(),
                l["neg"].as_bool().unwrap_or(false),
            ));
        }
        match body["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                out.sort();
                return Ok(out);
            }
        }
    }
    bail!("queryLabels paging did not end")
}

/// The crash run: the scenario once uninterrupted, once with kills, and the checks on both.
pub async fn run(args: &Args) -> anyhow::Result<Checks> {
    let scenario = Arc::new(Scenario::new(args)?);
    let count = |k: Kind| scenario.kinds.iter().filter(|x| **x == k).count();
    println!(
        "faults crash: seed {} (replay with --seed {}), {} operators: {} good, {} failing, {} deleted, {} updated; {} events at {}/s; {} kills after events {:?}",
        args.seed,
        args.seed,
        scenario.kinds.len(),
        count(Kind::Good),
        count(Kind::Failing),
        count(Kind::Deleted),
        count(Kind::Updated),
        scenario.events(),
        args.rate,
        scenario.kill_points.len(),
        scenario.kill_points
    );
    println!("labeler binary: {}", env!("CARGO_BIN_EXE_labeler"));
    let reference = run_scenario(args, &scenario, false).await?;
    print_run("reference run", &reference, None, scenario.kinds.len());
    let killed = run_scenario(args, &scenario, true).await?;
    print_run(
        "killed run",
        &killed,
        Some(&reference),
        scenario.kinds.len(),
    );

    println!("checks:");
    let mut checks = Checks::default();
    let expected = scenario.expected_labels();
    let summary = |l: &[(String, String, bool)]| {
        format!(
            "{} labels ({} positive, {} negations)",
            l.len(),
            l.iter().filter(|x| !x.2).count(),
            l.iter().filter(|x| x.2).count()
        )
    };
    checks.check(
        "reference run: current labels are the scenario's",
        reference.labels == expected,
        summary(&reference.labels),
    );
    checks.check(
        "killed run: current labels equal the reference run's",
        killed.labels == reference.labels,
        if killed.labels == reference.labels {
            summary(&killed.labels)
        } else {
            let a: BTreeSet<_> = killed.labels.iter().collect();
            let b: BTreeSet<_> = reference.labels.iter().collect();
            format!(
                "{} vs {}; only in the killed run: {:?}; only in the reference: {:?}",
                summary(&killed.labels),
                summary(&reference.labels),
                a.difference(&b).take(5).collect::<Vec<_>>(),
                b.difference(&a).take(5).collect::<Vec<_>>()
            )
        },
    );
    let bad: Vec<String> = killed
        .kills
        .iter()
        .enumerate()
        .filter(|(_, k)| k.integrity != "ok")
        .map(|(n, k)| format!("kill {}: {}", n + 1, k.integrity))
        .collect();
    checks.check(
        "killed run: integrity_check after every kill (read-only, before the restart)",
        bad.is_empty() && killed.kills.len() == scenario.kill_points.len(),
        if bad.is_empty() {
            format!("ok after all {} kills", killed.kills.len())
        } else {
            bad.join("; ")
        },
    );
    for (run, r) in [("reference run", &reference), ("killed run", &killed)] {
        check_history(&mut checks, run, &r.history);
        check_delivery(&mut checks, run, &r.history, &r.follower.frames, i64::MAX);
        let want = latest_per_key(&r.current);
        let got = latest_per_key(&r.follower.frames);
        checks.check(
            &format!("{run}: the follower's final state equals the labels table, row for row"),
            want == got,
            format!(
                "{} keys in the table, {} in the follower's state",
                want.len(),
                got.len()
            ),
        );
        checks.none(
            &format!("{run}: follower saw no error frame, bad signature or disorder"),
            &r.follower.problems,
            "problems",
            || {
                format!(
                    "{} frames over {} connections",
                    r.follower.frames.len(),
                    r.follower.connects
                )
            },
        );
        checks.clean_end(&format!("{run}: "), r.exit, &r.integrity, &r.log);
    }
    Ok(checks)
}

/// Prints one run's figures; for the killed run, the replays against `reference`.
fn print_run(name: &str, r: &RunOutcome, reference: Option<&RunOutcome>, operators: usize) {
    println!(
        "{name}: {} events published in {:.1} s; every verdict in after {:.1} s ({:.0} attestations/s, {:.1} s after the last event); {} withdrawals overtook one still waiting for its label",
        r.event_times.len(),
        r.publishing.as_secs_f64(),
        r.elapsed.as_secs_f64(),
        operators as f64 / r.elapsed.as_secs_f64(),
        (r.elapsed - r.publishing.min(r.elapsed)).as_secs_f64(),
        r.deferred
    );
    println!(
        "{name}: {} verifications logged, {} replayed events skipped as already applied, {} label_history rows, follower: {} frames over {} connections",
        r.log.total_verifications(),
        r.log.already_applied,
        r.history.len(),
        r.follower.frames.len(),
        r.follower.connects
    );
    r.log.print_problems(name);
    let Some(reference) = reference else {
        return;
    };
    let mut downs: Vec<f64> = r
        .kills
        .iter()
        .map(|k| k.downtime.as_secs_f64() * 1000.0)
        .collect();
    downs.sort_by(f64::total_cmp);
    println!(
        "{name}: {} kills, {} restarts; kill to ready: median {:.0} ms, max {:.0} ms",
        r.kills.len(),
        r.kills.len(),
        percentile(&downs, 0.5),
        downs.last().copied().unwrap_or(0.0)
    );
    println!(
        "{name}: replays per restart (Jetstream cursor asked for; events sent again; saved cursor behind the last event sent):"
    );
    let mut resent_total = 0;
    for (n, k) in r.kills.iter().enumerate() {
        let asked = r.jetstream_cursors.get(k.conn_index).copied().flatten();
        let saved = r.log.start_cursors.get(n + 1).copied().flatten();
        let before = &r.event_times[..k.at_event.min(r.event_times.len())];
        let resent = asked.map_or(0, |c| before.iter().filter(|t| **t >= c).count());
        resent_total += resent;
        let last_sent = before.last().copied().unwrap_or(0);
        println!(
            "  restart {:>2} (kill at {:>5.1} s, event {:>5}): resumed at {}; {resent} events sent again; saved cursor {} ms behind",
            n + 1,
            k.at.as_secs_f64(),
            k.at_event,
            asked.map_or("live (no cursor)".to_owned(), |c| c.to_string()),
            saved.map_or("-".to_owned(), |s| format!(
                "{:.0}",
                (last_sent - s) as f64 / 1000.0
            )),
        );
    }
    let extra: usize = r
        .log
        .verifications
        .iter()
        .map(|(did, n)| {
            n.saturating_sub(reference.log.verifications.get(did).copied().unwrap_or(0))
        })
        .sum();
    let dids = r
        .log
        .verifications
        .iter()
        .filter(|(did, n)| **n > reference.log.verifications.get(*did).copied().unwrap_or(0))
        .count();
    println!(
        "{name}: Jetstream sent {resent_total} events again in all; the labeler skipped {} replayed events as already applied and re-verified {extra} (on {dids} DIDs) beyond the reference run's {} verifications",
        r.log.already_applied,
        reference.log.total_verifications()
    );
}
