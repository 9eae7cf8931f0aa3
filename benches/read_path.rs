//! Read-path benchmark of the XRPC server (results in BENCHMARKS.md, "Read path").
//!
//! ```text
//! cargo bench --bench read_path                      # 3 runs at 1,000,000 labels
//! cargo bench --bench read_path -- --runs 1 --duration 5 --phases exact,backfill1
//! ```
//!
//! It seeds (once, cached under `target/tmp/read_path/`) a database of N labels on random
//! `did:plc:` DIDs with real signatures, then for every run and phase starts the server as a
//! child process of this binary (`--serve <db>`, the production `Server::run` with metrics
//! installed), drives it over 127.0.0.1, and reads the child's CPU time and peak RSS
//! (`VmHWM`) from `/proc` before stopping it:
//!
//! - `exact`: `wrk -t2 -c64 --latency`, each request a uniformly random DID of the N
//!   (`uriPatterns=<did>`), after a 3 s warm-up;
//! - `all`: 50-label pages of `uriPatterns=*` from a random cursor;
//! - `broad`: 50-label pages of `uriPatterns=did:plc:*` (every label matches) from a random
//!   cursor;
//! - `prefix`: `uriPatterns=did:plc:<2 random base32 chars>*` from the start — about N/1024
//!   matches spread over the whole table, the lowest 50 returned in seq order;
//! - `backfill1`: one client, `cursor=0`, decodes every frame's header and body with
//!   `serde_ipld_dagcbor` (every field; strings borrowed from the frame) and checks that seq
//!   strictly increases, N frames;
//! - `backfill100`: 100 such clients at once, each from `cursor = N - sub_labels`.
//! - `rotate`: the `exact` load on a copy of the database while `labeler key rotate`
//!   (`lifecycle::rotate`, in this process: another process than the server, as the CLI is)
//!   re-signs all N labels one second in; reports how long the rotation took (`rotate s`)
//!   and the load's p99 while it ran. Not in the default set: `--phases rotate`.
//!
//! Options: `--labels N` (1000000), `--runs N` (3), `--duration SECS` (10), `--subscribers
//! N` (100), `--sub-labels N` (200000), `--phases a,b,..` (all six). Needs `wrk` on PATH for
//! the HTTP phases (`apt-get install -y wrk`); they are skipped with a note without it.
//!
//! `--peer` runs every phase twice per run, against this labeler and against
//! `@skyware/labeler` 0.2 (`bench/peer-server.mjs`, Node.js; installed with npm into the
//! git-ignored `bench/peer/` on first use and seeded through its own `createLabel` API with the
//! same DIDs and values), and ends with the ratio per workload:
//!
//! ```text
//! cargo bench --bench read_path -- --peer --labels 100000 --phases exact,broad,backfill1
//! ```

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

#[path = "shared/baseline.rs"]
mod baseline;
#[path = "shared/child.rs"]
mod child;
#[path = "shared/procfs.rs"]
mod procfs;
#[path = "shared/seed.rs"]
mod seed;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atmos_labeler::health::Health;
use atmos_labeler::keys::SigningKey;
use atmos_labeler::server::{Options, Server};
use atmos_labeler::store::Store;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    labels: usize,
    runs: usize,
    duration: u64,
    subscribers: usize,
    sub_labels: usize,
    phases: Vec<String>,
    peer: bool,
    live_subscribers: usize,
}

/// Which server a phase runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// This labeler's server (a child of this binary).
    Ours,
    /// `@skyware/labeler` 0.2 under Node.js.
    Peer,
    /// The bare axum + rusqlite handler on the lean copy (`shared/baseline.rs`).
    Baseline,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ours => "atmos-labeler",
            Target::Peer => "skyware",
            Target::Baseline => "baseline",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--serve") {
        return serve(Path::new(
            argv.get(1).context("--serve needs a database path")?,
        ));
    }
    if argv.first().map(String::as_str) == Some("--subscribers") {
        let arg = |i: usize| -> anyhow::Result<&String> {
            argv.get(i).context("--subscribers <port> <count>")
        };
        return subscribers_child(arg(1)?.parse()?, arg(2)?.parse()?);
    }
    if argv.first().map(String::as_str) == Some("--serve-baseline") {
        return baseline::serve(Path::new(
            argv.get(1)
                .context("--serve-baseline needs a database path")?,
        ));
    }
    drive(&parse_args(&argv)?)
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        labels: 1_000_000,
        runs: 3,
        duration: 10,
        subscribers: 100,
        sub_labels: 200_000,
        phases: [
            "exact",
            "batch",
            "all",
            "broad",
            "prefix",
            "backfill1",
            "backfill100",
            "propagation",
        ]
        .map(str::to_owned)
        .to_vec(),
        peer: false,
        live_subscribers: 1000,
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--labels" => a.labels = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--subscribers" => a.subscribers = value()?.parse()?,
            "--sub-labels" => a.sub_labels = value()?.parse()?,
            "--phases" => a.phases = value()?.split(',').map(str::to_owned).collect(),
            "--peer" => a.peer = true,
            "--live-subscribers" => a.live_subscribers = value()?.parse()?,
            // `cargo bench` passes `--bench`; ignore anything else too.
            _ => {}
        }
    }
    a.sub_labels = a.sub_labels.min(a.labels);
    Ok(a)
}

/// Child mode: the production server on 127.0.0.1:0 until stdin closes.
fn serve(db: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let metrics = atmos_labeler::telemetry::metrics_handle();
        let store = Store::open(db)?;
        let key = SigningKey::from_hex(KEY_HEX).context("key")?;
        let options = Options {
            labeler_did: Some(key.did_key().to_owned()),
            // `backfill100` stands for 100 consumers on as many hosts; here they all come
            // from 127.0.0.1.
            max_subscribers_per_ip: 1000,
            ..Options::default()
        };
        let server = Server::new(store, options, Some(metrics), Health::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("PORT {}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            let _ = std::io::stdin().read(&mut buf);
            stop.cancel();
        });
        server.run(listener, shutdown).await?;
        Ok(())
    })
}

/// The server child.
/// The server under test: this labeler or the baseline as a child of this binary, or the
/// peer (Node.js).
struct ServerProcess {
    server: child::Server,
    port: u16,
}

impl ServerProcess {
    fn start(target: Target, db: &Path, dids: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_on(target, db, dids, None)
    }

    /// Starts the server, pinned to the CPUs `cpus` (a `taskset -c` list) when given.
    fn start_on(
        target: Target,
        db: &Path,
        dids: &Path,
        cpus: Option<&str>,
    ) -> anyhow::Result<ServerProcess> {
        let server = match target {
            Target::Ours | Target::Baseline => {
                let mode = if target == Target::Ours {
                    "--serve"
                } else {
                    "--serve-baseline"
                };
                let mut command = match cpus {
                    Some(cpus) => {
                        let mut c = Command::new("taskset");
                        c.args(["-c", cpus]).arg(std::env::current_exe()?);
                        c
                    }
                    None => Command::new(std::env::current_exe()?),
                };
                command.arg(mode).arg(db);
                child::Server::spawn(command)?
            }
            Target::Peer => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let peer_dir = db.with_extension("skyware");
                let mut child = Command::new("node")
                    .arg(bench_dir().join("peer-server.mjs"))
                    .arg(&peer_dir)
                    .arg(port.to_string())
                    .arg(dids)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("starting node (is Node.js installed?)")?;
                let stdout = child.stdout.take().context("stdout")?;
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line)?;
                if line.trim() != format!("LISTENING {port}") {
                    let _ = child.kill();
                    bail!("the peer did not start: {line:?}");
                }
                child::Server::adopt(child, port)
            }
        };
        let port = server.port;
        Ok(ServerProcess { server, port })
    }

    /// (CPU seconds used, peak RSS in MiB) so far.
    fn usage(&self) -> anyhow::Result<(f64, f64)> {
        self.server.usage()
    }

    fn stop(self) -> anyhow::Result<()> {
        self.server.stop(Duration::from_secs(10))
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Requests or labels per second.
    rate: f64,
    /// wrk p50 and p99 in ms (HTTP phases).
    p50: f64,
    p99: f64,
    /// Server CPU µs per request or label.
    cpu_us: f64,
    /// Server peak RSS in MiB.
    hwm: f64,
    /// This process's CPU µs per label (the decoding clients; backfill phases).
    client_us: f64,
    /// Wall seconds.
    secs: f64,
    /// Seconds the work run beside the load took (`rotate`).
    beside: f64,
}

/// `bench/` in the repository.
fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench")
}

/// Installs `@skyware/labeler` 0.2.0 into the git-ignored `bench/peer/` when it is missing.
fn ensure_peer() -> anyhow::Result<()> {
    let peer = bench_dir().join("peer");
    if peer
        .join("node_modules/@skyware/labeler/package.json")
        .exists()
    {
        return Ok(());
    }
    println!("installing @skyware/labeler@0.2.0 into {}", peer.display());
    std::fs::create_dir_all(&peer)?;
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&peer)
        .arg("@skyware/labeler@0.2.0")
        .status()
        .context("running npm (is Node.js installed?)")?;
    if !status.success() {
        bail!("npm install of @skyware/labeler failed");
    }
    Ok(())
}

use seed::{KEY_HEX, cached};

fn drive(a: &Args) -> anyhow::Result<()> {
    let (db, dids) = cached(a.labels)?;
    let dir = db.parent().context("cache directory")?.to_owned();
    let exact_lua = dir.join("exact.lua");
    let prefix_lua = dir.join("prefix.lua");
    std::fs::write(&exact_lua, wrk_script(EXACT_LUA))?;
    std::fs::write(&prefix_lua, wrk_script(PREFIX_LUA))?;
    let all_lua = dir.join("all.lua");
    let broad_lua = dir.join("broad.lua");
    std::fs::write(&all_lua, wrk_script(&paged_lua("*", a.labels)))?;
    std::fs::write(&broad_lua, wrk_script(&paged_lua("did:plc:*", a.labels)))?;
    let batch_lua = dir.join("batch.lua");
    std::fs::write(&batch_lua, wrk_script(BATCH_LUA))?;
    let have_wrk = Command::new("wrk").arg("-v").output().is_ok();
    if a.peer {
        ensure_peer()?;
    }
    let needs_baseline = a.phases.iter().any(|p| p == "exact" || p == "batch");
    let lean = if needs_baseline {
        baseline::lean_copy(&db, a.labels)?
    } else {
        db.clone()
    };
    // Product and baseline alternate within each run, so the ratio is taken under the same
    // machine load, and swap places from one run to the next (product first in odd runs), so
    // a drift within a run does not always favour the same one.
    let targets_of = |phase: &str, run: usize| -> Vec<Target> {
        let mut t = vec![Target::Ours];
        if phase == "exact" || phase == "batch" {
            t.push(Target::Baseline);
            if run.is_multiple_of(2) {
                t.reverse();
            }
        }
        if a.peer && phase != "batch" && phase != "propagation" {
            t.push(Target::Peer);
        }
        t
    };
    let mut ratios: Vec<(String, Vec<f64>)> = Vec::new();

    println!("{}", machine_notes());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    for run in 1..=a.runs {
        for phase in &a.phases {
            let (mut ours_rate, mut base_rate) = (None, None);
            for target in targets_of(phase, run) {
                let db = if target == Target::Baseline {
                    &lean
                } else {
                    &db
                };
                let sample = match phase.as_str() {
                    "exact" | "batch" | "all" | "broad" | "prefix" if !have_wrk => {
                        println!("skipping {phase}: wrk is not installed (apt-get install -y wrk)");
                        continue;
                    }
                    "exact" => wrk_phase(target, db, &exact_lua, &dids, a.duration)?,
                    "batch" => {
                        let mut s = wrk_phase(target, db, &batch_lua, &dids, a.duration)?;
                        // DIDs answered per second; CPU per DID.
                        s.rate *= BATCH as f64;
                        s.cpu_us /= BATCH as f64;
                        s
                    }
                    "rotate" => rotate_phase(db, &dir, &exact_lua, &dids, a.duration)?,
                    "propagation" => propagation_phase(&dir, &dids, a.live_subscribers)?,
                    "prefix" => wrk_phase(target, db, &prefix_lua, &dids, a.duration)?,
                    "all" => wrk_phase(target, db, &all_lua, &dids, a.duration)?,
                    "broad" => wrk_phase(target, db, &broad_lua, &dids, a.duration)?,
                    "backfill1" => {
                        rt.block_on(backfill_phase(target, db, &dids, 1, a.labels, a.labels))?
                    }
                    "backfill100" => rt.block_on(backfill_phase(
                        target,
                        db,
                        &dids,
                        a.subscribers,
                        a.labels,
                        a.sub_labels,
                    ))?,
                    other => bail!("unknown phase {other}"),
                };
                let name = if target == Target::Ours && targets_of(phase, run).len() == 1 {
                    phase.clone()
                } else {
                    format!("{phase} {}", target.name())
                };
                println!(
                    "run {run} {name:<22} {:>12.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server {:>7.2} µs CPU each  client {:>5.2} µs  VmHWM {:>6.1} MiB  {:>6.2} s{}",
                    sample.rate,
                    sample.p50,
                    sample.p99,
                    sample.cpu_us,
                    sample.client_us,
                    sample.hwm,
                    sample.secs,
                    if sample.beside > 0.0 {
                        format!("  rotate {:.2} s", sample.beside)
                    } else {
                        String::new()
                    }
                );
                match target {
                    Target::Ours => ours_rate = Some(sample.rate),
                    Target::Baseline => base_rate = Some(sample.rate),
                    Target::Peer => {}
                }
                if let (Some(ours), Some(base)) = (ours_rate, base_rate) {
                    let r = ours / base;
                    println!("run {run} {phase}: product / baseline = {r:.2}");
                    match ratios.iter_mut().find(|(p, _)| p == phase) {
                        Some((_, v)) => v.push(r),
                        None => ratios.push((phase.clone(), vec![r])),
                    }
                    (ours_rate, base_rate) = (None, None);
                }
                match results.iter_mut().find(|(p, _)| *p == name) {
                    Some((_, v)) => v.push(sample),
                    None => results.push((name, vec![sample])),
                }
            }
        }
    }
    println!(
        "\nsummary ({} labels, {} run(s)): median (min–max)",
        a.labels, a.runs
    );
    println!(
        "| phase | rate/s | p50 ms | p99 ms | server µs CPU each | client µs CPU each | server VmHWM MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (phase, samples) in &results {
        let col = |f: fn(&Sample) -> f64, prec: usize| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            format!(
                "{:.prec$} ({:.prec$}–{:.prec$})",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1]
            )
        };
        println!(
            "| {phase} | {} | {} | {} | {} | {} | {} |",
            col(|s| s.rate, 0),
            col(|s| s.p50, 2),
            col(|s| s.p99, 2),
            col(|s| s.cpu_us, 2),
            col(|s| s.client_us, 2),
            col(|s| s.hwm, 1),
        );
    }
    for (phase, v) in &mut ratios {
        v.sort_by(f64::total_cmp);
        println!(
            "{phase}: product / baseline per run {:?}: median {:.2} (min {:.2}, max {:.2})",
            v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>(),
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    if a.peer {
        let median = |name: &str, f: fn(&Sample) -> f64| -> Option<f64> {
            let (_, samples) = results.iter().find(|(n, _)| n == name)?;
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            Some(v[v.len() / 2])
        };
        println!("\nratio per workload (medians; higher is better for atmos-labeler)");
        println!("| workload | atmos-labeler | skyware | ratio |");
        println!("|---|---|---|---|");
        let mut peak = (0.0f64, 0.0f64);
        for phase in &a.phases {
            let ours = format!("{phase} {}", Target::Ours.name());
            let theirs = format!("{phase} {}", Target::Peer.name());
            if let (Some(o), Some(t)) = (median(&ours, |s| s.rate), median(&theirs, |s| s.rate)) {
                println!("| {phase} (per s) | {o:.0} | {t:.0} | {:.1}× |", o / t);
            }
            if let (Some(o), Some(t)) = (median(&ours, |s| s.hwm), median(&theirs, |s| s.hwm)) {
                peak = (peak.0.max(o), peak.1.max(t));
            }
        }
        println!(
            "| peak RSS over all phases (MiB) | {:.1} | {:.1} | {:.2} (ours / theirs) |",
            peak.0,
            peak.1,
            peak.0 / peak.1
        );
    }
    Ok(())
}

fn machine_notes() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {} CPUs ({cpu}); load average at start: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load.trim()
    )
}

/// Gives each wrk thread its own random sequence; every script starts with it.
const SEED_PER_THREAD_LUA: &str = r#"
local t = 0
function setup(thread)
  t = t + 1
  thread:set("tid", t)
end
function init(args)
  math.randomseed(os.time() * 7 + (tid or 0))
end
"#;

/// A wrk script: the per-thread seeding, then `body` (its `request()`).
fn wrk_script(body: &str) -> String {
    format!("{SEED_PER_THREAD_LUA}{body}")
}

const EXACT_LUA: &str = r#"
local f = assert(io.open(os.getenv("DIDS_FILE"), "rb"))
local blob = f:read("*a")
f:close()
local n = #blob / 32
function request()
  local i = math.random(0, n - 1)
  return wrk.format("GET", "/xrpc/com.atproto.label.queryLabels?uriPatterns=" .. blob:sub(i * 32 + 1, i * 32 + 32))
end
"#;

/// Exact subjects per `batch` request.
const BATCH: usize = 50;

/// One request carrying 50 random DIDs as `uriPatterns` (a relay checking a queue of
/// senders); `limit=250` so a page never cuts the answer short.
const BATCH_LUA: &str = r#"
local f = assert(io.open(os.getenv("DIDS_FILE"), "rb"))
local blob = f:read("*a")
f:close()
local n = #blob / 32
local parts = {}
function request()
  for k = 1, 50 do
    local i = math.random(0, n - 1)
    parts[k] = "uriPatterns=" .. blob:sub(i * 32 + 1, i * 32 + 32)
  end
  return wrk.format("GET", "/xrpc/com.atproto.label.queryLabels?limit=250&" .. table.concat(parts, "&"))
end
"#;

const PREFIX_LUA: &str = r#"
local alphabet = "abcdefghijklmnopqrstuvwxyz234567"
function request()
  local a = math.random(1, 32)
  local b = math.random(1, 32)
  return wrk.format("GET", "/xrpc/com.atproto.label.queryLabels?limit=50&uriPatterns=did:plc:" .. alphabet:sub(a, a) .. alphabet:sub(b, b) .. "*")
end
"#;

/// 50-label pages of `pattern` from a random cursor.
fn paged_lua(pattern: &str, labels: usize) -> String {
    format!(
        r#"
function request()
  return wrk.format("GET", "/xrpc/com.atproto.label.queryLabels?limit=50&uriPatterns={pattern}&cursor=" .. math.random(0, {last}))
end
"#,
        last = labels.saturating_sub(50)
    )
}

/// Runs wrk against a fresh server: 3 s warm-up, then `duration` seconds measured.
/// `rotate`: the exact load while every label of a copy of `db` is re-signed.
fn rotate_phase(
    db: &Path,
    dir: &Path,
    script: &Path,
    dids: &Path,
    duration: u64,
) -> anyhow::Result<Sample> {
    let copy = dir.join("rotate.db");
    let key_path = dir.join("rotate.key");
    let old = SigningKey::from_hex(KEY_HEX).context("key")?;
    for stale in [
        copy.clone(),
        key_path.clone(),
        atmos_labeler::keys::staged_path(&key_path),
        atmos_labeler::keys::retired_path(&key_path, old.did_key()),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
    }
    rusqlite::Connection::open(db)?.execute("VACUUM INTO ?1", [copy.to_str().context("path")?])?;
    std::fs::write(&key_path, format!("{KEY_HEX}\n"))?;
    let (store_path, key) = (copy.clone(), key_path);
    let rotate = move || -> anyhow::Result<f64> {
        let store = Store::open(&store_path)?;
        let started = Instant::now();
        let r =
            atmos_labeler::lifecycle::rotate(&store, &key, Some("did:web:bench.example"), false)?;
        let secs = started.elapsed().as_secs_f64();
        println!("rotated {} labels in {secs:.2} s", r.written);
        Ok(secs)
    };
    run_wrk(
        Target::Ours,
        &copy,
        script,
        dids,
        duration,
        Some(Box::new(rotate)),
    )
}

/// Work run beside a wrk load, one second into it; returns how long it took.
type Beside = Box<dyn FnOnce() -> anyhow::Result<f64> + Send>;

fn wrk_phase(
    target: Target,
    db: &Path,
    script: &Path,
    dids: &Path,
    duration: u64,
) -> anyhow::Result<Sample> {
    run_wrk(target, db, script, dids, duration, None)
}

fn run_wrk(
    target: Target,
    db: &Path,
    script: &Path,
    dids: &Path,
    duration: u64,
    beside: Option<Beside>,
) -> anyhow::Result<Sample> {
    let server = ServerProcess::start(target, db, dids)?;
    let url = format!("http://127.0.0.1:{}", server.port);
    let wrk = |secs: u64| -> anyhow::Result<String> {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s"])
            .arg(script)
            .arg(&url)
            .env("DIDS_FILE", dids)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wrk(3)?;
    let (cpu0, _) = server.usage()?;
    let started = Instant::now();
    let side = beside.map(|work| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            work()
        })
    });
    let out = wrk(duration)?;
    let secs = started.elapsed().as_secs_f64();
    let beside = match side {
        Some(t) => t
            .join()
            .map_err(|_| anyhow::anyhow!("the work beside the load panicked"))??,
        None => 0.0,
    };
    let (cpu1, hwm) = server.usage()?;
    server.stop()?;
    let requests: f64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .context("wrk request count")?
        .parse()?;
    let non_2xx = out
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if non_2xx {
        println!("wrk reported errors:\n{out}");
    }
    let rate: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("wrk Requests/sec")?
        .trim()
        .parse()?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(p))
            .context("wrk latency distribution")?;
        child::parse_ms(line.split_whitespace().nth(1).context("latency")?)
    };
    Ok(Sample {
        rate,
        p50: pct("50%")?,
        p99: pct("99%")?,
        cpu_us: (cpu1 - cpu0) * 1e6 / requests,
        hwm,
        secs,
        client_us: 0.0,
        beside,
    })
}

#[derive(Deserialize)]
struct Header {
    op: i64,
    t: Option<String>,
}

#[derive(Deserialize)]
struct Body<'a> {
    seq: i64,
    #[serde(borrow)]
    labels: Vec<WireLabel<'a>>,
}

/// Every field decoded (strings borrowed from the frame, as a careful consumer would).
#[derive(Deserialize)]
#[allow(dead_code)]
struct WireLabel<'a> {
    ver: i64,
    src: &'a str,
    uri: &'a str,
    cid: Option<&'a str>,
    val: &'a str,
    neg: Option<bool>,
    cts: &'a str,
    exp: Option<&'a str>,
    #[serde(borrow)]
    sig: &'a serde_bytes::Bytes,
}

/// `clients` decoding subscribers at once, each from `cursor = total - each` expecting `each`
/// frames, against a fresh server.
async fn backfill_phase(
    target: Target,
    db: &Path,
    dids: &Path,
    clients: usize,
    total: usize,
    each: usize,
) -> anyhow::Result<Sample> {
    let server = ServerProcess::start(target, db, dids)?;
    let url = format!(
        "ws://127.0.0.1:{}/xrpc/com.atproto.label.subscribeLabels?cursor={}",
        server.port,
        total - each
    );
    let (cpu0, _) = server.usage()?;
    let own0 = own_cpu()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(subscribe(url.clone(), each)))
        .collect();
    let mut frames = 0;
    for t in tasks {
        frames += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let own1 = own_cpu()?;
    let (cpu1, hwm) = server.usage()?;
    server.stop()?;
    Ok(Sample {
        rate: frames as f64 / secs,
        cpu_us: (cpu1 - cpu0) * 1e6 / frames as f64,
        client_us: (own1 - own0) * 1e6 / frames as f64,
        hwm,
        secs,
        ..Sample::default()
    })
}

/// CPU seconds used by this process so far.
fn own_cpu() -> anyhow::Result<f64> {
    procfs::cpu_seconds("self")
}

/// One subscriber: decodes `expect` frames, checking order, then closes.
async fn subscribe(url: String, expect: usize) -> anyhow::Result<usize> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut n = 0;
    let mut last = 0;
    while n < expect {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                let mut r = std::io::Cursor::new(&b[..]);
                let h: Header = serde_ipld_dagcbor::de::from_reader_once(&mut r)?;
                if h.op != 1 || h.t.as_deref() != Some("#labels") {
                    bail!("unexpected frame after {n} labels");
                }
                let body: Body<'_> = serde_ipld_dagcbor::from_slice(&b[r.position() as usize..])?;
                if body.seq <= last || body.labels.len() != 1 {
                    bail!("seq {} after {last}", body.seq);
                }
                last = body.seq;
                n += 1;
            }
            Some(Ok(_)) => {}
            other => bail!("stream ended after {n} labels: {other:?}"),
        }
    }
    let _ = ws.close(None).await;
    Ok(n)
}

/// Negations written per `propagation` run, and the pause before each.
const NEGATIONS: usize = 20;
const NEGATION_GAP: Duration = Duration::from_millis(150);

/// Wall-clock time in ns since the Unix epoch: commit and receive times are taken in two
/// processes on the same machine clock.
fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `propagation`: from the commit of a negation to its delivery to `subscribers` live
/// subscribers. The server runs pinned to CPU 0, the subscribers in another child process
/// pinned to CPU 1 (their CPU apart), and the negations are written by this process through
/// its own `Store`, as `labeler label negate` does from another process: the server sees them
/// through its `PRAGMA data_version` poll. Latency per (negation, subscriber) = receive time
/// − the time `write_labels_signed_by` returned (its commit).
fn propagation_phase(dir: &Path, dids: &Path, subscribers: usize) -> anyhow::Result<Sample> {
    use atmos_labeler::label::{Label, VERIFIED_MAIL_OPERATOR};

    let db = dir.join("propagation.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let key = SigningKey::from_hex(KEY_HEX).context("key")?;
    let make = |uri: String, neg: bool| {
        Label {
            src: key.did_key().to_owned(),
            uri,
            cid: None,
            val: VERIFIED_MAIL_OPERATOR.to_owned(),
            neg,
            cts: atmos_labeler::label::now_cts(),
            exp: None,
        }
        .sign(&key)
    };
    let store = Store::open(&db)?;
    let positives: Vec<_> = (0..NEGATIONS)
        .map(|i| make(format!("did:plc:propagation{i:04}"), false))
        .collect();
    store.write_labels_signed_by(key.did_key(), &positives)?;

    let server = ServerProcess::start_on(Target::Ours, &db, dids, Some("0"))?;
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe()?)
        .args([
            "--subscribers",
            &server.port.to_string(),
            &subscribers.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the subscribers (is taskset installed?)")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "CONNECTED" {
        bail!("the subscribers did not connect: {line:?}");
    }
    // Warm-up labels until every subscriber has one: each is then live.
    let warm = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let warm_ups: Vec<_> = (0..600)
        .map(|i| make(format!("did:plc:warm{i}"), false))
        .collect();
    let warmer = {
        let (warm, store) = (warm.clone(), store.clone());
        let signer = key.did_key().to_owned();
        std::thread::spawn(move || -> anyhow::Result<()> {
            for l in warm_ups {
                if warm.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                store.write_labels_signed_by(&signer, &[l])?;
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!("the subscribers did not all receive a warm-up label within 60 s")
        })
    };
    line.clear();
    out.read_line(&mut line)?;
    warm.store(true, std::sync::atomic::Ordering::SeqCst);
    warmer
        .join()
        .map_err(|_| anyhow::anyhow!("the warm-up writer panicked"))??;
    if line.trim() != "WARM" {
        bail!("the subscribers did not warm up: {line:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, _) = server.usage()?;
    let started = Instant::now();
    let mut commits = std::collections::HashMap::new();
    for l in &positives {
        std::thread::sleep(NEGATION_GAP);
        let mut neg = l.label.clone();
        neg.neg = true;
        neg.cts = atmos_labeler::label::now_cts();
        let neg = neg.sign(&key);
        let written = store.write_labels_signed_by(key.did_key(), &[neg])?;
        let at = unix_ns();
        commits.insert(written[0].seq, at);
    }
    let last = commits.keys().max().copied().unwrap_or(0);
    writeln!(stdin, "END {last}")?;
    let mut latencies = Vec::with_capacity(NEGATIONS * subscribers);
    let mut client_cpu = 0.0;
    for line in out.lines() {
        let line = line?;
        let mut f = line.split_whitespace();
        match f.next() {
            Some("R") => {
                let seq: i64 = f.next().context("seq")?.parse()?;
                let at: i64 = f.next().context("time")?.parse()?;
                if let Some(commit) = commits.get(&seq) {
                    latencies.push((at - commit) as f64 / 1e6);
                }
            }
            Some("CPU") => client_cpu = f.next().context("cpu")?.parse()?,
            Some("ERROR") => bail!("subscribers: {line}"),
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, hwm) = server.usage()?;
    let _ = child.wait();
    server.stop()?;
    drop(store);
    let expected = NEGATIONS * subscribers;
    if latencies.len() != expected {
        println!(
            "propagation: {} of {expected} (negation, subscriber) deliveries seen",
            latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "propagation: {} deliveries, latency ms min {:.2} p50 {:.2} p99 {:.2} max {:.2}; subscriber process {:.2} CPU-s",
        latencies.len(),
        latencies[0],
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1],
        client_cpu
    );
    Ok(Sample {
        rate: latencies.len() as f64 / secs,
        p50: pct(0.5),
        p99: pct(0.99),
        cpu_us: (cpu1 - cpu0) * 1e6 / latencies.len().max(1) as f64,
        hwm,
        secs,
        client_us: client_cpu * 1e6 / latencies.len().max(1) as f64,
        beside: 0.0,
    })
}

/// Child mode: `count` live subscribers (no cursor) of the server on `port`, from
/// 127.0.0.2–127.0.0.9 in turn (the server's per-client caps count addresses). Prints
/// `CONNECTED` once all are connected and `WARM` once each has received a frame; reads
/// `END <seq>` from stdin; each subscriber then stops after a frame with that seq, and every
/// frame received is printed as `R <seq> <unix ns>`, then `CPU <seconds of this process>`.
fn subscribers_child(port: u16, count: usize) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let url = format!("ws://127.0.0.1:{port}/xrpc/com.atproto.label.subscribeLabels");
        let server: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut conns = Vec::with_capacity(count);
        for i in 0..count {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(([127, 0, 0, 2 + (i % 8) as u8], 0).into())?;
            let tcp = socket.connect(server).await?;
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await?;
            conns.push(ws);
        }
        println!("CONNECTED");
        std::io::stdout().flush()?;
        let end = Arc::new(AtomicI64::new(i64::MAX));
        let warm = Arc::new(AtomicUsize::new(0));
        let warm_all = Arc::new(tokio::sync::Notify::new());
        let received = Arc::new(Mutex::new(Vec::<(i64, i64)>::new()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut ws| {
                let (end, warm, warm_all, received) = (
                    end.clone(),
                    warm.clone(),
                    warm_all.clone(),
                    received.clone(),
                );
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut last = 0;
                    loop {
                        if last >= end.load(Ordering::SeqCst) {
                            break;
                        }
                        let next = tokio::time::timeout_at(
                            deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                            ws.next(),
                        )
                        .await;
                        if tokio::time::Instant::now() >= deadline {
                            bail!("no frame with the last seq within 120 s");
                        }
                        let b = match next {
                            Ok(Some(Ok(Message::Binary(b)))) => b,
                            // A timeout (to look at `end` again) or a ping.
                            Err(_) | Ok(Some(Ok(_))) => continue,
                            Ok(other) => bail!("stream ended: {other:?}"),
                        };
                        let at = unix_ns();
                        let mut r = std::io::Cursor::new(&b[..]);
                        let _: Header = serde_ipld_dagcbor::de::from_reader_once(&mut r)?;
                        let body: Body<'_> =
                            serde_ipld_dagcbor::from_slice(&b[r.position() as usize..])?;
                        if seen.is_empty() && warm.fetch_add(1, Ordering::SeqCst) + 1 == count {
                            warm_all.notify_one();
                        }
                        last = body.seq;
                        seen.push((body.seq, at));
                    }
                    let _ = ws.close(None).await;
                    received
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .extend(seen);
                    Ok(())
                })
            })
            .collect();
        if count > 0 {
            tokio::time::timeout(Duration::from_secs(60), warm_all.notified())
                .await
                .context("warm-up")?;
        }
        println!("WARM");
        std::io::stdout().flush()?;
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await??;
        let seq: i64 = line
            .trim()
            .strip_prefix("END ")
            .context("expected END <seq>")?
            .parse()?;
        end.store(seq, Ordering::SeqCst);
        for t in tasks {
            if let Err(e) = t.await? {
                println!("ERROR {e:#}");
            }
        }
        let mut stdout = std::io::stdout().lock();
        for (seq, at) in received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
        {
            writeln!(stdout, "R {seq} {at}")?;
        }
        writeln!(stdout, "CPU {}", own_cpu()?)?;
        Ok(())
    })
}
