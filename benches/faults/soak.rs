//! **soak** proves the daemon stays correct and flat under steady mixed load for
//! `--minutes` (10). The labeler first takes in `--preload` (2,000) operators at 100/s, as a
//! labeler in service would hold, so that its bounded caches (a SQLite page cache of up to
//! 2 MiB per connection, hickory's 8,192-entry DNS cache, 10,000 DID documents) are warm
//! before the curve starts (`--preload 0` shows the cold fill). Then, measured: 5 new
//! attestations/s (10 % failing); a `reverifyInterval` of one minute, so every attestation is
//! re-verified about once a minute while everything else runs (and every 15 s one passing
//! operator's DMARC is broken, restored 90 s later, so re-checks negate and re-grant labels);
//! 64 queryLabels clients (each its own keep-alive connection, one request every ~50 ms: 80 %
//! a random known DID, 15 % a `did:*` page of 50 from a random cursor, 5 % a narrow prefix);
//! and 200 subscribeLabels subscribers connected before the first label, preload included
//! (100 with `cursor=0`, 100 live without a cursor; both must then see every label). Every
//! 10 s it samples the labeler's VmRSS (and its anonymous part), threads, open fds and CPU
//! from `/proc`, and the database size. It checks: every HTTP response is 200 with a valid
//! body (JSON, labels matching the pattern, signatures verified, a cursor exactly on full
//! pages); no subscriber disconnected, got an error frame or an undecodable frame; all 200
//! saw the same frames, in strictly increasing seq, which are exactly the history rows up to
//! the final cut except rows superseded before the feed read them; the final state equals the
//! `labels` table; re-verification ran and changed labels; RSS is flat (median of the last
//! quarter within 10 % of the second quarter's); SIGTERM exits 0; `integrity_check` is ok. The
//! clients run here on the same two cores, paced to cost little: this is a correctness and
//! stability soak, not a throughput benchmark (see "Read path" for that).

mod load;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::checks::{Checks, check_delivery};
use crate::common::daemon::World;
use crate::harness::{
    Instance, Labeler, LogStats, ProcSample, http_client, median, percentile, poll, ready,
};
use crate::procfs;
use crate::rows::{latest_per_key, with_db};
use load::{query_client, soak_publisher, soak_subscriber};

/// One row of the soak's curve.
struct SoakSample {
    t: Duration,
    proc: ProcSample,
    cpu_pct: f64,
    attestations: i64,
    history: i64,
    db_bytes: u64,
}

/// The soak: preload, then minutes of measured load, then the checks.
pub async fn run(args: &Args) -> anyhow::Result<Checks> {
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "faults soak: {:.1} min, seed {}, {} queryLabels clients (one request each ~{} ms), {} subscribers ({} from cursor=0, {} live), 5 attestations/s, reverifyInterval {}",
        args.minutes,
        args.seed,
        args.query_clients,
        args.query_interval.as_millis(),
        args.subscribers,
        args.subscribers.div_ceil(2),
        args.subscribers / 2,
        args.reverify
    );
    println!("labeler binary: {}", env!("CARGO_BIN_EXE_labeler"));
    let world = Arc::new(World::start().await);
    world.jetstream.follow_wall_clock();
    let inst = Instance::create(&world, &args.reverify, args.keep)?;
    println!("state in {}", inst.dir.display());
    let mut labeler = Labeler::start(&inst, &world.jetstream).await?;

    // Subscribers first, before any label exists: then both kinds must see every label.
    let stopping = CancellationToken::new();
    let mut subs = Vec::new();
    let mut lasts = Vec::new();
    for n in 0..args.subscribers {
        let query = if n % 2 == 0 { "?cursor=0" } else { "" };
        let url = format!(
            "ws://{}/xrpc/com.atproto.label.subscribeLabels{query}",
            inst.addr
        );
        let last = Arc::new(AtomicI64::new(0));
        lasts.push(last.clone());
        subs.push(tokio::spawn(soak_subscriber(
            url,
            n == 0,
            last,
            stopping.clone(),
        )));
    }
    // Let every subscriber connect (the server counts them in its gauge).
    let http = http_client()?;
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let metrics = http
                .get(format!("http://{}/metrics", inst.addr))
                .send()
                .await
                .context("/metrics")?
                .text()
                .await
                .context("/metrics body")?;
            let connected = metrics
                .lines()
                .find_map(|l| l.strip_prefix("labeler_server_subscribers "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok(ready(connected as usize >= args.subscribers, || {
                format!(
                    "only {connected} of {} subscribers connected",
                    args.subscribers
                )
            }))
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;

    let stop = CancellationToken::new();
    let published = Arc::new(AtomicUsize::new(0));
    let flips = Arc::new(AtomicUsize::new(0));
    let preload_started = Instant::now();
    let publisher = tokio::spawn(soak_publisher(
        world.clone(),
        args.seed,
        args.preload,
        5.0,
        published.clone(),
        flips.clone(),
        stop.clone(),
    ));
    if args.preload > 0 {
        // Fill the labeler's bounded caches before measuring (see the module docs).
        let within = Duration::from_secs(60 + args.preload as u64 / 10);
        poll(within, Duration::from_millis(200), async || {
            let n = with_db(&inst.db, |db| db.count("SELECT count(*) FROM attestations")).await?;
            Ok(ready(n >= args.preload as i64, || {
                format!(
                    "only {n} of {} preloaded attestations verified",
                    args.preload
                )
            }))
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        println!(
            "preloaded {} attestations in {:.1} s; the measured soak starts now",
            args.preload,
            preload_started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    for id in 0..args.query_clients {
        clients.push(tokio::spawn(query_client(
            id as u64,
            args.seed,
            inst.addr,
            inst.did.clone(),
            published.clone(),
            args.query_interval,
            stop.clone(),
        )));
    }

    // Sample every 10 s until the end.
    let mut samples: Vec<SoakSample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let own_start = procfs::cpu_seconds("self")?;
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>4} {:>6} {:>12} {:>10} {:>7}",
        "t s",
        "RSS MiB",
        "anon",
        "file",
        "HWM MiB",
        "threads",
        "fds",
        "CPU %",
        "attestations",
        "label rows",
        "DB MiB"
    );
    loop {
        tick.tick().await;
        let t = started.elapsed();
        if let Some(status) = labeler.exited()? {
            bail!(
                "the labeler exited by itself ({status}); log {}",
                inst.log.display()
            );
        }
        let proc = labeler.sample()?;
        let (attestations, history) = with_db(&inst.db, |db| {
            Ok((
                db.count("SELECT count(*) FROM attestations")?,
                db.count("SELECT count(*) FROM label_history")?,
            ))
        })
        .await?;
        let db_bytes: u64 = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut p = inst.db.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        let cpu_pct = samples.last().map_or(0.0, |p| {
            100.0 * (proc.cpu_s - p.proc.cpu_s) / (t - p.t).as_secs_f64()
        });
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "{:>6.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>4} {:>6.1} {:>12} {:>10} {:>7.1}",
            t.as_secs_f64(),
            mib(proc.rss_kb),
            mib(proc.anon_kb),
            mib(proc.file_kb + proc.shmem_kb),
            mib(proc.hwm_kb),
            proc.threads,
            proc.fds,
            cpu_pct,
            attestations,
            history,
            db_bytes as f64 / (1024.0 * 1024.0)
        );
        samples.push(SoakSample {
            t,
            proc,
            cpu_pct,
            attestations,
            history,
            db_bytes,
        });
        if t >= duration {
            break;
        }
    }
    let load_time = started.elapsed();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
    let stats = join_within(clients, Duration::from_secs(15), "a queryLabels client")
        .await?
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let own_cpu = procfs::cpu_seconds("self")? - own_start;
    let final_sample = labeler.sample()?;
    let labeler_cpu = final_sample.cpu_s - samples.first().map_or(0.0, |s| s.proc.cpu_s);

    // The cut: the labels table's newest seq, once every subscriber has received it.
    let (cut, snapshot) = poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || {
            let snapshot = with_db(&inst.db, |db| db.current()).await?;
            let m = snapshot.iter().map(|r| r.seq).max().unwrap_or(0);
            // A subscriber that ended early is reported by the checks; do not wait for it.
            let behind = lasts
                .iter()
                .zip(&subs)
                .filter(|(l, task)| !task.is_finished() && l.load(Ordering::SeqCst) < m)
                .count();
            Ok(if behind == 0 {
                ControlFlow::Break((m, snapshot))
            } else {
                ControlFlow::Continue(format!("{behind} subscribers never received seq {m}"))
            })
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    stopping.cancel();
    let exit = labeler.terminate().await?;
    let records = join_within(subs, Duration::from_secs(10), "a subscriber").await?;
    let (integrity, history) =
        with_db(&inst.db, |db| Ok((db.integrity_check()?, db.history()?))).await?;
    let log = LogStats::read(&inst.log)?;

    // Figures.
    let n_published = published.load(Ordering::SeqCst);
    let mut lat: Vec<f64> = stats
        .iter()
        .flat_map(|s| s.latencies_us.iter().map(|u| f64::from(*u) / 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    let ok: u64 = stats.iter().map(|s| s.ok).sum();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let kinds: Vec<u64> = (0..3)
        .map(|k| stats.iter().map(|s| s.kinds[k]).sum())
        .collect();
    let labels_returned: u64 = stats.iter().map(|s| s.labels).sum();
    println!(
        "soak: {:.0} s of load; {n_published} attestations published ({} preloaded), {} DMARC flips; labeler CPU {:.1} s ({:.1} % of one core), this process {:.1} s ({:.1} %)",
        load_time.as_secs_f64(),
        args.preload,
        flips.load(Ordering::SeqCst),
        labeler_cpu,
        100.0 * labeler_cpu / load_time.as_secs_f64(),
        own_cpu,
        100.0 * own_cpu / load_time.as_secs_f64(),
    );
    println!(
        "soak: queryLabels {} requests ({:.0}/s): {} exact DID, {} `did:*` pages, {} narrow prefixes; {labels_returned} labels returned; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ok + errors,
        (ok + errors) as f64 / load_time.as_secs_f64(),
        kinds[0],
        kinds[1],
        kinds[2],
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(0.0)
    );
    let verifications = log.total_verifications();
    println!(
        "soak: {verifications} verifications logged ({} first checks, {} re-verifications); label_history {} rows ({} negations); cut at seq {cut}",
        n_published.min(verifications),
        verifications.saturating_sub(n_published),
        history.len(),
        history.iter().filter(|h| h.neg).count()
    );
    log.print_problems("soak");
    println!(
        "soak: the curve, one sample a minute (t s, VmRSS MiB, of which anonymous, threads, fds, CPU % over the last 10 s, attestations, label rows, DB + WAL MiB):"
    );
    for s in samples.iter().filter(|s| (s.t.as_secs() + 5) % 60 < 10) {
        println!(
            "  {:>5.0} {:>7.1} {:>7.1} {:>4} {:>4} {:>6.1} {:>6} {:>6} {:>6.1}",
            s.t.as_secs_f64(),
            s.proc.rss_kb as f64 / 1024.0,
            s.proc.anon_kb as f64 / 1024.0,
            s.proc.threads,
            s.proc.fds,
            s.cpu_pct,
            s.attestations,
            s.history,
            s.db_bytes as f64 / (1024.0 * 1024.0)
        );
    }

    println!("checks:");
    let mut checks = Checks::default();
    checks.check(
        "queryLabels: every response 200 with a valid, signed body",
        errors == 0 && ok > 0,
        if errors == 0 {
            format!("{ok} responses")
        } else {
            format!(
                "{errors} bad of {}; first: {:?}",
                ok + errors,
                stats
                    .iter()
                    .flat_map(|s| s.first_errors.iter())
                    .take(5)
                    .collect::<Vec<_>>()
            )
        },
    );
    let troubled: Vec<String> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.problems.is_empty())
        .map(|(n, r)| format!("#{n}: {:?}", &r.problems[..r.problems.len().min(3)]))
        .collect();
    checks.none(
        "subscribers: none disconnected, got an error frame, a bad frame or disorder",
        &troubled,
        "subscribers in trouble",
        || format!("{} subscribers", records.len()),
    );
    let reference: Vec<i64> = records
        .first()
        .map(|r| r.seqs.iter().copied().filter(|s| *s <= cut).collect())
        .unwrap_or_default();
    let differ: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.seqs
                .iter()
                .copied()
                .filter(|s| *s <= cut)
                .ne(reference.iter().copied())
        })
        .map(|(n, _)| n)
        .collect();
    let frames_total: usize = records.iter().map(|r| r.seqs.len()).sum();
    checks.check(
        "subscribers: all saw the same frames up to the cut (cursor=0 and live alike)",
        differ.is_empty() && !reference.is_empty(),
        if differ.is_empty() {
            format!(
                "{} frames each, {frames_total} frames delivered in all",
                reference.len()
            )
        } else {
            format!(
                "{} subscribers differ from #0: {:?}",
                differ.len(),
                &differ[..differ.len().min(10)]
            )
        },
    );
    let rows = records
        .first()
        .map(|r| r.rows.as_slice())
        .unwrap_or_default();
    check_delivery(&mut checks, "subscriber #0", &history, rows, cut);
    let want = latest_per_key(&snapshot);
    let got = latest_per_key(rows.iter().filter(|r| r.seq <= cut));
    checks.check(
        "subscriber #0: its final state equals the labels table at the cut, row for row",
        want == got,
        format!(
            "{} keys in the table, {} in the subscriber's state",
            want.len(),
            got.len()
        ),
    );
    // A broken DMARC is negated at the first re-check after the break (up to one
    // `reverifyInterval`, a minute, plus the confirmation), so a shorter run cannot show it.
    let expect_negations = args.minutes >= 2.0;
    checks.check(
        "re-verification ran during the soak and changed labels",
        verifications > n_published && (history.iter().any(|h| h.neg) || !expect_negations),
        format!(
            "{} re-verifications, {} negations{}",
            verifications.saturating_sub(n_published),
            history.iter().filter(|h| h.neg).count(),
            if expect_negations {
                ""
            } else {
                " (not required in a run under 2 minutes)"
            }
        ),
    );
    // Flatness: the last quarter's median RSS against the second quarter's.
    let quarter = |q: u32| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| {
                let f = s.t.as_secs_f64() / load_time.as_secs_f64();
                f > f64::from(q - 1) / 4.0 && f <= f64::from(q) / 4.0
            })
            .map(|s| s.proc.rss_kb as f64 / 1024.0)
            .collect()
    };
    let (q2, q4) = (median(&quarter(2)), median(&quarter(4)));
    let drift = if q2 > 0.0 { q4 / q2 - 1.0 } else { f64::NAN };
    checks.check(
        "RSS flat: median of the last quarter within 10 % of the second quarter's",
        drift.abs() <= 0.10,
        format!(
            "Q2 median {q2:.1} MiB, Q4 median {q4:.1} MiB ({:+.1} %), VmHWM {:.1} MiB; fds {} → {}, threads {} → {}",
            drift * 100.0,
            final_sample.hwm_kb as f64 / 1024.0,
            samples.first().map_or(0, |s| s.proc.fds),
            final_sample.fds,
            samples.first().map_or(0, |s| s.proc.threads),
            final_sample.threads
        ),
    );
    checks.clean_end("", exit, &integrity, &log);
    Ok(checks)
}

/// Waits for each task in turn, for at most `within` each, once it has been told to stop.
async fn join_within<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    within: Duration,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let done = tokio::time::timeout(within, task)
            .await
            .with_context(|| format!("{what} did not stop within {within:?}"))?
            .with_context(|| format!("{what} failed"))?;
        out.push(done);
    }
    Ok(out)
}
