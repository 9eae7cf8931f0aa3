//! Mirror benchmark (results in BENCHMARKS.md, "Mirrors").
//!
//! ```text
//! cargo bench --bench mirror                         # 3 runs at 1,000,000 labels
//! cargo bench --bench mirror -- --runs 1 --phases catchup
//! ```
//!
//! Two phases, on the cached data set of `read_path` (N labels on random DIDs, really
//! signed; `target/tmp/read_path/`, seeded on first use), every process a child of this
//! binary running the production code:
//!
//! - `catchup`: a primary (`--serve <db>`: `Store::open`, `Server::run` with default
//!   `Options`) and one mirror on an empty state directory (`--mirror <upstream> <did>
//!   <dir>`: `app::start_mirror` with production `MirrorTuning`). Timed from the mirror's
//!   start until its `/xrpc/_health` reports the cursor at the primary's head (polled every
//!   50 ms); labels/s = N / that time. Every signature is verified: the mirror's `/metrics`
//!   must show N labels stored and none refused, or the run fails. Reports the mirror's CPU
//!   per label and its peak RSS (`VmHWM`), and the primary's CPU per label.
//! - `read`: exact-DID `queryLabels` on the primary (`wrk -t2 -c64`, a random DID of the N
//!   per request, 3 s warm-up, `--duration` s measured) while a writer in this process
//!   commits `--rate` labels/s into the primary's database (as `labeler label` would), once
//!   with no mirror and once with `--mirrors` mirrors following it live (started from a
//!   copy of the caught-up mirror of the `catchup` phase, in sync before wrk starts; after
//!   wrk, each must reach the primary's head). The order of the two alternates per run. The
//!   primary here serves a copy of the data set, since the writer adds labels to it.
//!
//! Options: `--labels N` (1000000), `--runs N` (3), `--duration SECS` (10), `--rate N`
//! (200), `--mirrors N` (2), `--phases catchup,read` (both). `read` needs `wrk` and a
//! caught-up mirror from a `catchup` run (this invocation's or a previous one's).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

#[path = "shared/child.rs"]
mod child;
#[path = "shared/procfs.rs"]
mod procfs;
#[path = "shared/seed.rs"]
mod seed;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atmos_labeler::app::{self, MirrorTuning};
use atmos_labeler::config::Config;
use atmos_labeler::health::Health;
use atmos_labeler::keys::SigningKey;
use atmos_labeler::label::{Label, SignedLabel};
use atmos_labeler::server::{Options, Server};
use atmos_labeler::store::Store;
use serde_json::Value;

struct Args {
    labels: usize,
    runs: usize,
    duration: u64,
    rate: usize,
    mirrors: usize,
    phases: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("--serve") => serve(Path::new(argv.get(1).context("--serve <db>")?)),
        Some("--mirror") => {
            let arg = |i: usize| argv.get(i).context("--mirror <upstream> <did> <dir>");
            mirror(arg(1)?, arg(2)?, Path::new(arg(3)?))
        }
        _ => drive(&parse_args(&argv)?),
    }
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        labels: 1_000_000,
        runs: 3,
        duration: 10,
        rate: 200,
        mirrors: 2,
        phases: vec!["catchup".to_owned(), "read".to_owned()],
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--labels" => a.labels = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--rate" => a.rate = value()?.parse()?,
            "--mirrors" => a.mirrors = value()?.parse()?,
            "--phases" => a.phases = value()?.split(',').map(str::to_owned).collect(),
            // `cargo bench` passes `--bench`; ignore anything else too.
            _ => {}
        }
    }
    Ok(a)
}

/// Runs `f` on a fresh multi-thread runtime until stdin closes, after printing
/// `PORT <port>` of the listener it was given.
fn child<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio::net::TcpListener, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
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
        f(listener, shutdown).await
    })
}

/// Child mode: the production server over `db`.
fn serve(db: &Path) -> anyhow::Result<()> {
    child(|listener, shutdown| async move {
        let metrics = atmos_labeler::telemetry::metrics_handle();
        let store = Store::open(db)?;
        let key = SigningKey::from_hex(seed::KEY_HEX).context("key")?;
        let options = Options {
            labeler_did: Some(key.did_key().to_owned()),
            ..Options::default()
        };
        let server = Server::new(store, options, Some(metrics), Health::new());
        server.run(listener, shutdown).await?;
        Ok(())
    })
}

/// Child mode: a mirror (what `labeler mirror` starts) with its state under `dir`.
fn mirror(upstream: &str, did: &str, dir: &Path) -> anyhow::Result<()> {
    let text = serde_json::json!({
        "listenAddr": "127.0.0.1:0",
        "stateDir": dir,
    })
    .to_string();
    let config = Config::from_str(&text, "bench")?;
    child(|listener, shutdown| async move {
        let tuning = MirrorTuning::new(&config, upstream.to_owned(), did.to_owned());
        let running = app::start_mirror(&config, tuning, listener, shutdown).await?;
        running.wait().await?;
        Ok(())
    })
}

/// A child process of this binary, stopped by closing its stdin.
/// A primary (`--serve`) or a mirror (`--mirror`) running as a child of this binary.
type Proc = child::Server;

/// A primary serving `db`.
fn primary(db: &Path) -> anyhow::Result<Proc> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--serve").arg(db);
    Proc::spawn(c)
}

/// A mirror of the seed key's labels following `upstream`, on the state directory `dir`.
fn mirror_of(upstream: &Proc, dir: &Path) -> anyhow::Result<Proc> {
    let did = SigningKey::from_hex(seed::KEY_HEX)
        .context("key")?
        .did_key()
        .to_owned();
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--mirror").arg(upstream.base()).arg(did).arg(dir);
    Proc::spawn(c)
}

/// How long a child gets to stop once its stdin closes.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// `GET url` → body (status 200 required), with a 5 s timeout. One client for the whole
/// run: building one loads the TLS roots, which costs more than the request.
fn get_text(url: &str) -> anyhow::Result<String> {
    static HTTP: std::sync::OnceLock<(tokio::runtime::Runtime, reqwest::Client)> =
        std::sync::OnceLock::new();
    let (rt, client) = HTTP.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // No idle pool: mirrors come and go on ports the OS hands out again, and a pooled
        // connection to a stopped process would be reused for its successor.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        (rt, client)
    });
    rt.block_on(async {
        let resp = client.get(url).send().await?;
        if resp.status() != 200 {
            bail!("GET {url}: HTTP {}", resp.status());
        }
        Ok(resp.text().await?)
    })
}

fn get_json(url: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&get_text(url)?)?)
}

/// The mirror's `upstream` health component.
fn upstream(mirror: &Proc) -> anyhow::Result<Value> {
    Ok(get_json(&format!("{}/xrpc/_health", mirror.base()))?["components"]["upstream"].clone())
}

/// Polls the mirror every `every` until its cursor reaches `head` (and, with `in_sync`, it
/// says it is in sync), for at most `limit`.
fn await_cursor(
    mirror: &Proc,
    head: i64,
    in_sync: bool,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let u = upstream(mirror)?;
        let at = u["cursor"].as_i64().unwrap_or(0);
        if at >= head && (!in_sync || u["status"] == "ok") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the mirror did not reach seq {head} within {limit:?}: {u}");
        }
        std::thread::sleep(every);
    }
}

/// A Prometheus sample value from a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn scrape(p: &Proc) -> anyhow::Result<String> {
    get_text(&format!("{}/metrics", p.base()))
}

fn bench_tmp() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mirror");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes a SQLite database and its WAL files.
fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

fn head_of(db: &Path) -> anyhow::Result<i64> {
    Ok(Store::open(db)?.head_seq()?)
}

struct CatchUp {
    rate: f64,
    mirror_us: f64,
    mirror_hwm: f64,
    primary_us: f64,
    secs: f64,
}

/// One catch-up run; leaves the caught-up mirror's database at `template`.
fn catch_up(db: &Path, n: usize, template: &Path) -> anyhow::Result<CatchUp> {
    let head = head_of(db)?;
    let dir = bench_tmp()?.join("catchup");
    let _ = std::fs::remove_dir_all(&dir);
    let primary = primary(db)?;
    let (p0, _) = primary.usage()?;
    let started = Instant::now();
    let mirror = mirror_of(&primary, &dir)?;
    await_cursor(
        &mirror,
        head,
        false,
        Duration::from_millis(50),
        Duration::from_secs(600),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let (mcpu, hwm) = mirror.usage()?;
    let (p1, _) = primary.usage()?;
    let text = scrape(&mirror)?;
    let stored = metric(&text, "labeler_mirror_labels_stored_total");
    let refused: f64 = ["signature", "src", "malformed", "shared-seq"]
        .iter()
        .map(|r| {
            metric(
                &text,
                &format!("labeler_mirror_labels_refused_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    if stored != n as f64 || refused != 0.0 {
        bail!("the mirror stored {stored} and refused {refused} of {n} labels");
    }
    mirror.stop(STOP_GRACE)?;
    primary.stop(STOP_GRACE)?;
    let mirror_db = dir.join(atmos_labeler::config::DB_FILE);
    remove_db(template);
    std::fs::copy(&mirror_db, template)?;
    Ok(CatchUp {
        rate: n as f64 / secs,
        mirror_us: mcpu * 1e6 / n as f64,
        mirror_hwm: hwm,
        primary_us: (p1 - p0) * 1e6 / n as f64,
        secs,
    })
}

struct ReadSample {
    rate: f64,
    p99: f64,
    server_us: f64,
}

const EXACT_LUA: &str = r#"
local t = 0
function setup(thread)
  t = t + 1
  thread:set("tid", t)
end
function init(args)
  math.randomseed(os.time() * 7 + (tid or 0))
end
local f = assert(io.open(os.getenv("DIDS_FILE"), "rb"))
local blob = f:read("*a")
f:close()
local n = #blob / 32
function request()
  local i = math.random(0, n - 1)
  return wrk.format("GET", "/xrpc/com.atproto.label.queryLabels?uriPatterns=" .. blob:sub(i * 32 + 1, i * 32 + 32))
end
"#;

/// Signs `n` labels on fresh DIDs (`tag` keeps runs apart) with the data set's key.
fn fresh_labels(tag: &str, n: usize) -> anyhow::Result<Vec<SignedLabel>> {
    let key = SigningKey::from_hex(seed::KEY_HEX).context("key")?;
    let cts = atmos_labeler::label::now_cts();
    let sign = |range: std::ops::Range<usize>| -> Vec<SignedLabel> {
        range
            .map(|i| {
                Label {
                    src: key.did_key().to_owned(),
                    uri: format!("did:plc:{tag}{i:010}"),
                    cid: None,
                    val: "verified-mail-operator".to_owned(),
                    neg: false,
                    cts: cts.clone(),
                    exp: None,
                }
                .sign(&key)
            })
            .collect()
    };
    Ok(std::thread::scope(|s| {
        let half = s.spawn(|| sign(0..n / 2));
        let mut second = sign(n / 2..n);
        let mut all = half.join().unwrap();
        all.append(&mut second);
        all
    }))
}

/// Commits `labels` into `db` at `rate` per second (ten batches a second) until `stop`.
fn writer(
    db: PathBuf,
    labels: Vec<SignedLabel>,
    rate: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<usize>> {
    std::thread::spawn(move || {
        let store = Store::open(&db)?;
        let per_tick = (rate / 10).max(1);
        let mut written = 0;
        let mut next = Instant::now();
        for chunk in labels.chunks(per_tick) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            store.write_labels(chunk)?;
            written += chunk.len();
            next += Duration::from_millis(100);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(written)
    })
}

/// Exact-DID wrk against the primary on `db`, with `mirrors` mirrors following it (from
/// copies of `template`) and the writer committing `rate` labels/s.
fn read_phase(
    a: &Args,
    db: &Path,
    dids: &Path,
    template: &Path,
    mirrors: usize,
    tag: &str,
) -> anyhow::Result<ReadSample> {
    let tmp = bench_tmp()?;
    let script = tmp.join("exact.lua");
    std::fs::write(&script, EXACT_LUA)?;
    let pool = fresh_labels(tag, a.rate * (a.duration as usize + 8))?;
    let primary = primary(db)?;
    let mut followers = Vec::new();
    let head = head_of(db)?;
    for i in 0..mirrors {
        let dir = tmp.join(format!("follower-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(template, dir.join(atmos_labeler::config::DB_FILE))?;
        followers.push(mirror_of(&primary, &dir)?);
    }
    for m in &followers {
        await_cursor(
            m,
            head,
            true,
            Duration::from_millis(100),
            Duration::from_secs(300),
        )?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(db.to_owned(), pool, a.rate, Arc::clone(&stop));
    let wrk = |secs: u64| -> anyhow::Result<String> {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s"])
            .arg(&script)
            .arg(primary.base())
            .env("DIDS_FILE", dids)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wrk(3)?;
    let (cpu0, _) = primary.usage()?;
    let out = wrk(a.duration)?;
    let (cpu1, _) = primary.usage()?;
    stop.store(true, Ordering::Relaxed);
    let written = writing
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    // The mirrors kept up: each reaches the primary's head.
    let head = head_of(db)?;
    for m in &followers {
        await_cursor(
            m,
            head,
            false,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
    }
    for m in followers {
        m.stop(STOP_GRACE)?;
    }
    primary.stop(STOP_GRACE)?;
    if out
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        println!("wrk reported errors:\n{out}");
    }
    let requests: f64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .context("wrk request count")?
        .parse()?;
    let rate: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("wrk Requests/sec")?
        .trim()
        .parse()?;
    let p99 = out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("wrk p99")?;
    println!(
        "  {mirrors} mirror(s): {rate:.0} req/s, p99 {p99}, {written} labels written meanwhile"
    );
    Ok(ReadSample {
        rate,
        p99: child::parse_ms(p99)?,
        server_us: (cpu1 - cpu0) * 1e6 / requests,
    })
}

/// min / median / max.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn drive(a: &Args) -> anyhow::Result<()> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mirror bench: {} labels, {} runs; {} CPUs; load average at start: {}",
        a.labels,
        a.runs,
        std::thread::available_parallelism().map_or(0, usize::from),
        load.trim()
    );
    let (db, dids) = seed::cached(a.labels)?;
    let template = bench_tmp()?.join(format!("caught-up-{}.db", a.labels));
    let mut catchups = Vec::new();
    let mut reads: Vec<(ReadSample, ReadSample)> = Vec::new();
    let primary_copy = bench_tmp()?.join("primary.db");
    if a.phases.iter().any(|p| p == "read") {
        remove_db(&primary_copy);
        std::fs::copy(&db, &primary_copy)?;
    }
    for run in 0..a.runs {
        if a.phases.iter().any(|p| p == "catchup") {
            let c = catch_up(&db, a.labels, &template)?;
            println!(
                "run {}: caught up {} labels in {:.1} s: {:.0} labels/s, mirror {:.1} µs CPU/label, VmHWM {:.1} MiB; primary {:.2} µs CPU/label",
                run + 1,
                a.labels,
                c.secs,
                c.rate,
                c.mirror_us,
                c.mirror_hwm,
                c.primary_us
            );
            catchups.push(c);
        }
        if a.phases.iter().any(|p| p == "read") {
            if !template.exists() {
                bail!("the read phase needs a caught-up mirror: run the catchup phase first");
            }
            println!("run {}: exact-DID queryLabels on the primary", run + 1);
            let tag = |m: &str| format!("bench{run}{m}");
            let (without, with) = if run % 2 == 0 {
                let w0 = read_phase(a, &primary_copy, &dids, &template, 0, &tag("a"))?;
                let w1 = read_phase(a, &primary_copy, &dids, &template, a.mirrors, &tag("b"))?;
                (w0, w1)
            } else {
                let w1 = read_phase(a, &primary_copy, &dids, &template, a.mirrors, &tag("b"))?;
                let w0 = read_phase(a, &primary_copy, &dids, &template, 0, &tag("a"))?;
                (w0, w1)
            };
            reads.push((without, with));
        }
    }
    if !catchups.is_empty() {
        let f = |g: fn(&CatchUp) -> f64| spread(catchups.iter().map(g).collect());
        let (r0, r1, r2) = f(|c| c.rate);
        let (u0, u1, u2) = f(|c| c.mirror_us);
        let (h0, h1, h2) = f(|c| c.mirror_hwm);
        let (p0, p1, p2) = f(|c| c.primary_us);
        println!("\ncatch-up of {} labels, min / median / max:", a.labels);
        println!("  labels/s            {r0:.0} / {r1:.0} / {r2:.0}");
        println!("  mirror µs CPU/label {u0:.1} / {u1:.1} / {u2:.1}");
        println!("  mirror VmHWM MiB    {h0:.1} / {h1:.1} / {h2:.1}");
        println!("  primary µs CPU/label {p0:.2} / {p1:.2} / {p2:.2}");
    }
    if !reads.is_empty() {
        let g = |f: fn(&(ReadSample, ReadSample)) -> f64| spread(reads.iter().map(f).collect());
        let row = |name: &str, v: (f64, f64, f64)| {
            println!("  {name:<34} {:.1} / {:.1} / {:.1}", v.0, v.1, v.2);
        };
        println!(
            "\nexact-DID queryLabels on the primary, writer at {} labels/s, min / median / max:",
            a.rate
        );
        row("req/s, no mirror", g(|r| r.0.rate));
        row(
            &format!("req/s, {} mirrors following", a.mirrors),
            g(|r| r.1.rate),
        );
        row("ratio with / without", g(|r| r.1.rate / r.0.rate));
        row("p99 ms, no mirror", g(|r| r.0.p99));
        row("p99 ms, mirrors following", g(|r| r.1.p99));
        row("server µs CPU/req, no mirror", g(|r| r.0.server_us));
        row("server µs CPU/req, mirrors", g(|r| r.1.server_us));
    }
    Ok(())
}
