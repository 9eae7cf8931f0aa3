//! Verification throughput: `verify::Checker::check` over many attestations against the
//! in-process authoritative server of the tests (`tests/common/dns.rs`), with a share of
//! names that never answer. A bench binary (`harness = false`), not a test: it prints its
//! figures and exits non-zero if any verdict is wrong or the run exceeds its time budget.
//!
//! ```sh
//! cargo bench --bench verify
//! VERIFY_BENCH_N=10000 VERIFY_BENCH_CONCURRENCY=128 VERIFY_BENCH_TIMEOUT_MS=1000 \
//!     VERIFY_BENCH_FAULTY_PERMILLE=10 cargo bench --bench verify
//! ```
//!
//! Every attestation is a distinct domain with a complete passing setup (MX + A, SPF, one
//! 2048-bit DKIM selector, DMARC, `_atproto`); the fake's TTLs are 0, so nothing is served
//! from the resolver cache. For the faulty share, one of the five checked names (rotating:
//! `_atproto`, the domain itself, the MX host, the DKIM key, `_dmarc`) never answers, and the
//! expected verdict is "could not decide"; every other verdict must be "pass".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use atmos_labeler::verify::{Checker, Options, Outcome};
use atmos_labeler::{dns as resolver, identity};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[path = "../tests/common/dns.rs"]
#[allow(unreachable_pub, missing_docs)]
mod dns;

use dns::{FakeDns, Fault};

/// The run must finish within this, or the bench fails.
const BUDGET: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n: usize = env_or("VERIFY_BENCH_N", 10_000);
    let concurrency: usize = env_or("VERIFY_BENCH_CONCURRENCY", 128);
    let timeout_ms: u64 = env_or("VERIFY_BENCH_TIMEOUT_MS", 1000);
    let faulty_permille: usize = env_or("VERIFY_BENCH_FAULTY_PERMILLE", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run(n, concurrency, timeout_ms, faulty_permille));
    if !ok {
        std::process::exit(1);
    }
}

async fn run(n: usize, concurrency: usize, timeout_ms: u64, faulty_permille: usize) -> bool {
    let fake = FakeDns::start().await;
    let every = 1000usize
        .checked_div(faulty_permille)
        .map_or(usize::MAX, |e| e.max(1));
    let mut expected = Vec::with_capacity(n);
    for i in 0..n {
        let domain = format!("op{i}.bench.test");
        fake.publish_good_operator(&domain, &did(i), &["sel1"]);
        let faulty = i % every == every - 1;
        if faulty {
            let name = match (i / every) % 5 {
                0 => format!("_atproto.{domain}"),
                1 => domain.clone(),
                2 => format!("mx1.{domain}"),
                3 => format!("sel1._domainkey.{domain}"),
                _ => format!("_dmarc.{domain}"),
            };
            fake.fault(&name, Fault::Timeout);
        }
        expected.push(if faulty {
            Outcome::CouldNotDecide
        } else {
            Outcome::Pass
        });
    }
    let faulty_count = expected
        .iter()
        .filter(|o| **o == Outcome::CouldNotDecide)
        .count();

    let dns = resolver::Resolver::new(&[fake.addr()], Duration::from_millis(timeout_ms))
        .expect("resolver");
    // Domain control passes by TXT, so the directory is never asked; point it nowhere.
    let id = identity::Resolver::new(
        identity::Options {
            plc_url: "http://127.0.0.1:9".to_owned(),
            allow_private_addresses: true,
            timeout: Duration::from_secs(2),
        },
        dns.clone(),
    )
    .expect("identity resolver");
    let checker = Checker::new(dns, id, Options::default());

    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let checker = checker.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let report = checker
                .check(
                    &did(i),
                    &format!("op{i}.bench.test"),
                    &["sel1".to_owned()],
                    atmos_labeler::verify::Vantage::Cached,
                )
                .await;
            drop(permit);
            (i, report.verdict, t.elapsed(), report)
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut wrong = 0usize;
    while let Some(joined) = tasks.join_next().await {
        let (i, verdict, took, report) = joined.expect("check task");
        latencies.push(took);
        if verdict != expected[i] {
            wrong += 1;
            if wrong <= 3 {
                eprintln!("unexpected verdict for op{i}:\n{}", report.render_text());
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(idx).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "verify: {n} attestations ({faulty_count} with a silent name), concurrency {concurrency}, DNS timeout {timeout_ms} ms"
    );
    println!(
        "verify: total {:.2} s, {:.0} checks/s; per check p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} DNS queries",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(pct(1.0)),
        fake.total_queries()
    );
    if wrong > 0 {
        eprintln!("verify: {wrong} unexpected verdicts");
    }
    if elapsed > BUDGET {
        eprintln!("verify: over the {} s budget", BUDGET.as_secs());
    }
    wrong == 0 && elapsed <= BUDGET
}

fn did(i: usize) -> String {
    format!("did:plc:bench{i:019}")
}
