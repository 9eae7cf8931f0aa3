//! Faults and soak (results in BENCHMARKS.md, "Faults and soak"): the real `labeler` binary,
//! run as a child process against the integration tests' fakes, killed with SIGKILL in the
//! middle of an ingest, then loaded for minutes — with every invariant checked at the end.
//!
//! ```text
//! flock /tmp/atmos-bench.lock cargo bench --bench faults -- crash
//! flock /tmp/atmos-bench.lock cargo bench --bench faults -- soak              # 10 minutes
//! flock /tmp/atmos-bench.lock cargo bench --bench faults -- hostile           # time-to-label
//! cargo bench --bench faults -- soak --minutes 2                              # developing
//! cargo bench --bench faults -- crash --seed 42 --attestations 1000 --kills 5 --rate 100
//! ```
//!
//! This process hosts the fakes of `tests/common/` (authoritative DNS, PLC directory, PDS,
//! Jetstream with the v1 wire format and an inclusive `time_us` cursor; all on 127.0.0.1) and
//! runs `target/release/labeler` (`CARGO_BIN_EXE_labeler`) with a config file pointing at
//! them, its state in a temp dir, the test-vector key as its signing key (so every label's
//! signature is checked by the clients here) and JSON logs (`RUST_LOG=info`, the manager at
//! `debug`) appended to `labeler.log` there. Readiness is `/xrpc/_health` answering 200 and the
//! labeler connected to the fake Jetstream, polled for at most 30 s. Every wait is bounded, and
//! any failed check makes the process exit non-zero after printing every result.
//!
//! **crash** proves that SIGKILL in the middle of an ingest loses nothing and duplicates
//! nothing; **soak** proves the daemon stays correct and flat under minutes of steady mixed
//! load. Each module's header says exactly what its run does and checks.
//!
//! The code, one concern a file:
//! - `main.rs`: the command line and the dispatch to a run;
//! - `harness.rs`: the labeler child process (its state dir and config, start, SIGKILL,
//!   SIGTERM, `/proc` samples, its JSON log) and the bounded waits;
//! - `rows.rs`: label rows as the database holds them (read-only) and as subscribeLabels
//!   frames carry them;
//! - `checks.rs`: the named pass/fail results and the invariants both runs check;
//! - `crash.rs` (with `crash/scenario.rs`): the SIGKILL run;
//! - `soak.rs` (with `soak/load.rs`): the soak.

#![allow(missing_docs, unreachable_pub)]

#[path = "../../tests/common/mod.rs"]
#[allow(clippy::unwrap_used)]
mod common;

#[path = "../shared/procfs.rs"]
mod procfs;

mod checks;
mod crash;
mod harness;
mod hostile;
mod rows;
mod soak;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Crash,
    Soak,
    Hostile,
}

#[derive(Clone, Debug)]
pub struct Args {
    pub mode: Mode,
    pub seed: u64,
    pub attestations: usize,
    pub kills: usize,
    pub rate: f64,
    pub minutes: f64,
    pub subscribers: usize,
    pub query_clients: usize,
    pub query_interval: Duration,
    pub reverify: String,
    pub preload: usize,
    pub keep: bool,
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut a = Args {
        mode: Mode::Crash,
        seed,
        attestations: 5000,
        kills: 20,
        rate: 200.0,
        minutes: 10.0,
        subscribers: 200,
        query_clients: 64,
        query_interval: Duration::from_millis(50),
        reverify: "1m".to_owned(),
        preload: 2000,
        keep: false,
    };
    let mut mode = None;
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "crash" => mode = Some(Mode::Crash),
            "soak" => mode = Some(Mode::Soak),
            "hostile" => {
                mode = Some(Mode::Hostile);
                a.attestations = 200;
            }
            "--seed" => a.seed = value("--seed")?.parse().context("--seed")?,
            "--attestations" => {
                a.attestations = value("--attestations")?.parse().context("--attestations")?;
            }
            "--kills" => a.kills = value("--kills")?.parse().context("--kills")?,
            "--rate" => a.rate = value("--rate")?.parse().context("--rate")?,
            "--minutes" => a.minutes = value("--minutes")?.parse().context("--minutes")?,
            "--subscribers" => {
                a.subscribers = value("--subscribers")?.parse().context("--subscribers")?;
            }
            "--query-clients" => {
                a.query_clients = value("--query-clients")?
                    .parse()
                    .context("--query-clients")?;
            }
            "--query-interval-ms" => {
                a.query_interval = Duration::from_millis(
                    value("--query-interval-ms")?
                        .parse()
                        .context("--query-interval-ms")?,
                );
            }
            "--reverify" => a.reverify = value("--reverify")?,
            "--keep" => a.keep = true,
            "--preload" => a.preload = value("--preload")?.parse().context("--preload")?,
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?}; usage: faults crash|soak|hostile [--seed N] [--attestations N] \
                 [--kills N] [--rate PER_S] [--minutes N] [--subscribers N] [--query-clients N] \
                 [--query-interval-ms MS] [--reverify DURATION] [--preload N] [--keep]"
            ),
        }
    }
    a.mode = mode.context("say which run: `faults crash`, `faults soak` or `faults hostile`")?;
    if a.rate <= 0.0 || a.minutes <= 0.0 || a.attestations == 0 {
        bail!("--rate, --minutes and --attestations must be positive");
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faults: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.mode {
            Mode::Crash => crash::run(&args).await,
            Mode::Soak => soak::run(&args).await,
            Mode::Hostile => hostile::run(&args).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(checks) => checks.summary(),
        Err(e) => {
            eprintln!("faults: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
