//! Faults and soak (results in BENCHMARKS.md, "Faults and soak"): the real `labeler` binary,
//! run as a child process against the integration tests' fakes, killed with SIGKILL in the
//! middle of an ingest, then loaded for minutes — with every invariant checked at the end.
//!
//! ```text
//! flock /tmp/atmos-bench.lock cargo bench --bench faults -- crash
//! flock /tmp/atmos-bench.lock cargo bench --bench faults -- soak              # 10 minutes
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
//!
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

#![allow(missing_docs, unreachable_pub)]

#[path = "../tests/common/mod.rs"]
#[allow(clippy::unwrap_used)]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use atmos_labeler::keys::SigningKey;
use atmos_labeler::label::{Label, SignedLabel, VERIFIED_MAIL_OPERATOR};
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use common::daemon::World;
use common::jetstream::{FakeJetstream, NSID};
use common::server::{Event, WireLabel};

/// Log filter for the child: every decision, plus the manager's "already applied" skips.
const LOG_FILTER: &str = "info,atmos_labeler::manager=debug";

/// The attestation's record key (one attestation per DID).
const RKEY: &str = "self";

/// Pace of the soak's preload (`--preload`), attestations per second.
const PRELOAD_RATE: f64 = 100.0;

/// DMARC record that makes an otherwise good operator fail.
const WEAK_DMARC: &str = "v=DMARC1; p=none";

/// Longest wait for the labeler to be ready after a (re)start.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Longest wait for the labeler to exit after SIGTERM (its own grace periods are 5 + 2 + 2 s).
const STOP_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Crash,
    Soak,
}

#[derive(Clone, Debug)]
struct Args {
    mode: Mode,
    seed: u64,
    attestations: usize,
    kills: usize,
    rate: f64,
    minutes: f64,
    subscribers: usize,
    query_clients: usize,
    query_interval: Duration,
    reverify: String,
    preload: usize,
    keep: bool,
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
                "unknown argument {other:?}; usage: faults crash|soak [--seed N] [--attestations N] \
                 [--kills N] [--rate PER_S] [--minutes N] [--subscribers N] [--query-clients N] \
                 [--query-interval-ms MS] [--reverify DURATION] [--preload N] [--keep]"
            ),
        }
    }
    a.mode = mode.context("say which run: `faults crash` or `faults soak`")?;
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
            Mode::Crash => crash(&args).await,
            Mode::Soak => soak(&args).await,
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

// ---------------------------------------------------------------------------------------------
// Checks

/// Named pass/fail results, printed as they are made.
#[derive(Default)]
struct Checks {
    items: Vec<(String, bool)>,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        println!("  [{}] {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.items.push((name.to_owned(), ok));
    }

    /// A check that passes when there are no `violations`; a failure shows how many
    /// (`what`) and the first five.
    fn none<T: std::fmt::Debug>(
        &mut self,
        name: &str,
        violations: &[T],
        what: &str,
        ok_detail: impl FnOnce() -> String,
    ) {
        let detail = if violations.is_empty() {
            ok_detail()
        } else {
            format!(
                "{} {what}, first: {:?}",
                violations.len(),
                &violations[..violations.len().min(5)]
            )
        };
        self.check(name, violations.is_empty(), detail);
    }

    fn summary(&self) -> ExitCode {
        let failed: Vec<&str> = self
            .items
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n.as_str())
            .collect();
        if failed.is_empty() {
            println!("faults: all {} checks passed", self.items.len());
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "faults: FAILED: {} of {} checks: {}",
                failed.len(),
                self.items.len(),
                failed.join("; ")
            );
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The labeler child process

/// Where one labeler's files live.
struct Instance {
    /// Removed on drop unless `--keep` was given.
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    config: PathBuf,
    db: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    did: String,
}

impl Instance {
    /// A fresh state dir holding the test key, and a config pointing at `world`.
    fn create(world: &World, reverify: &str, keep: bool) -> anyhow::Result<Instance> {
        let tmp = tempfile::Builder::new()
            .prefix("atmos-faults-")
            .tempdir()
            .context("temp dir")?;
        let dir = tmp.path().to_owned();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).context("state dir")?;
        let key_hex = common::label_vectors()["keys"][0]["privateKeyHex"]
            .as_str()
            .context("test vectors have no key")?
            .to_owned();
        let did = SigningKey::from_hex(&key_hex)
            .context("test key")?
            .did_key()
            .to_owned();
        let key_path = state.join("signing.key");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .context("key file")?;
            writeln!(f, "{key_hex}").context("key file")?;
        }
        let addr = free_port()?;
        let config = dir.join("config.json");
        let text = json!({
            "listenAddr": addr.to_string(),
            "stateDir": state,
            "signingKeyPath": key_path,
            "jetstreamURL": world.jetstream.url(),
            "plcURL": world.plc.url(),
            "dnsServers": [world.dns.addr().to_string()],
            "dnsTimeout": "2s",
            "reverifyInterval": reverify,
            "allowPrivateAddresses": true,
            "logFormat": "json",
            // The soak's subscribers stand for many hosts but all come from 127.0.0.1.
            "maxSubscribersPerIp": 1000,
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&text)?).context("config file")?;
        Ok(Instance {
            db: state.join(atmos_labeler::config::DB_FILE),
            log: dir.join("labeler.log"),
            config,
            addr,
            did,
            dir,
            _tmp: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }
}

/// A free port on 127.0.0.1 (kept for every restart; tokio binds with SO_REUSEADDR).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("probe a free port")?;
    Ok(l.local_addr()?)
}

/// A running `labeler` process. Dropping it kills it.
struct Labeler {
    child: Option<Child>,
    pid: u32,
}

impl Labeler {
    /// Starts the binary on `inst` and waits until it serves and is connected to Jetstream.
    async fn start(inst: &Instance, jetstream: &FakeJetstream) -> anyhow::Result<Labeler> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&inst.log)
            .context("labeler log")?;
        let before = jetstream.connections();
        let child = Command::new(env!("CARGO_BIN_EXE_labeler"))
            .arg("-config")
            .arg(&inst.config)
            .env("RUST_LOG", LOG_FILTER)
            .env_remove("LABELER_LISTEN_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start the labeler binary")?;
        let mut l = Labeler {
            pid: child.id(),
            child: Some(child),
        };
        let http = http_client()?;
        let health = format!("http://{}/xrpc/_health", inst.addr);
        let deadline = Instant::now() + READY_WAIT;
        let mut healthy = false;
        loop {
            if let Some(status) = l.exited()? {
                bail!(
                    "the labeler exited during startup ({status}); its log: {}",
                    inst.log.display()
                );
            }
            if !healthy {
                healthy = matches!(http.get(&health).send().await, Ok(r) if r.status() == 200);
            }
            if healthy && jetstream.connections() > before {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!(
                    "the labeler was not ready within {READY_WAIT:?} (healthy: {healthy}); log: {}",
                    inst.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status if the process has ended (by itself: we only ever kill it knowingly).
    fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait().context("waitpid")?),
            None => bail!("labeler already stopped"),
        }
    }

    /// `kill -9` and reap.
    fn kill9(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("labeler already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!("the labeler had exited by itself before the kill ({status})");
        }
        child.kill().context("SIGKILL")?;
        child.wait().context("reap the killed labeler")?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("labeler already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!("the labeler had exited by itself before SIGTERM ({status})");
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the labeler did not exit within {STOP_WAIT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One `/proc` sample.
    fn sample(&self) -> anyhow::Result<ProcSample> {
        let pid = self.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("/proc/{pid}/status"))?;
        let kb = |field: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .with_context(|| format!("no {field} in /proc/{pid}/status"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{field} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("/proc/{pid}/stat"))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("/proc/{pid}/fd"))?
            .count();
        Ok(ProcSample {
            rss_kb: kb("VmRSS:")?,
            anon_kb: kb("RssAnon:")?,
            file_kb: kb("RssFile:")?,
            shmem_kb: kb("RssShmem:")?,
            hwm_kb: kb("VmHWM:")?,
            threads: kb("Threads:")?,
            fds,
            cpu_s: cpu_seconds(&stat)?,
        })
    }
}

impl Drop for Labeler {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `/proc` says about the labeler.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    rss_kb: u64,
    /// VmRSS split: anonymous (heap, stacks), file-backed and shared memory.
    anon_kb: u64,
    file_kb: u64,
    shmem_kb: u64,
    hwm_kb: u64,
    threads: u64,
    fds: usize,
    cpu_s: f64,
}

/// utime + stime of a `/proc/*/stat` line, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .context("short stat")?
            .parse::<f64>()
            .context("stat field")
    };
    Ok((field(11)? + field(12)?) / 100.0)
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .context("HTTP client")
}

// ---------------------------------------------------------------------------------------------
// The database, read-only

/// One label row (`labels` or `label_history`), or a received frame in the same shape.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    seq: i64,
    src: String,
    uri: String,
    /// `""` when absent, as stored.
    cid: String,
    val: String,
    neg: bool,
    cts: String,
    exp: Option<String>,
    sig: Vec<u8>,
}

type Key = (String, String, String, String);

impl Row {
    fn key(&self) -> Key {
        (
            self.src.clone(),
            self.uri.clone(),
            self.cid.clone(),
            self.val.clone(),
        )
    }

    fn from_wire(seq: i64, l: &WireLabel) -> Row {
        Row {
            seq,
            src: l.src.clone(),
            uri: l.uri.clone(),
            cid: l.cid.clone().unwrap_or_default(),
            val: l.val.clone(),
            neg: l.neg == Some(true),
            cts: l.cts.clone(),
            exp: l.exp.clone(),
            sig: l.sig.to_vec(),
        }
    }
}

/// A read-only connection to the labeler's database (it may be running, or dead).
struct Db(Connection);

impl Db {
    fn open(path: &Path) -> anyhow::Result<Db> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Db(conn))
    }

    fn integrity_check(&self) -> anyhow::Result<String> {
        let rows: Vec<String> = self
            .0
            .prepare("PRAGMA integrity_check")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows.join("; "))
    }

    fn rows(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        let rows = self
            .0
            .prepare(sql)?
            .query_map([], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    src: r.get(1)?,
                    uri: r.get(2)?,
                    cid: r.get(3)?,
                    val: r.get(4)?,
                    neg: r.get(5)?,
                    cts: r.get(6)?,
                    exp: r.get(7)?,
                    sig: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Every label ever committed, in commit order.
    fn history(&self) -> anyhow::Result<Vec<Row>> {
        self.rows(
            "SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM label_history ORDER BY id",
        )
    }

    /// The current labels, in seq order.
    fn current(&self) -> anyhow::Result<Vec<Row>> {
        self.rows("SELECT seq, src, uri, cid, val, neg, cts, exp, sig FROM labels ORDER BY seq")
    }

    /// (did, domain, verdict) of every attestation.
    fn verdicts(&self) -> anyhow::Result<HashMap<String, (String, String)>> {
        let rows = self
            .0
            .prepare("SELECT did, domain, verdict FROM attestations")?
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(self.0.query_row(sql, [], |r| r.get(0))?)
    }

    fn cursor(&self) -> anyhow::Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .0
            .query_row(
                "SELECT value FROM meta WHERE key = 'jetstream_cursor'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// Runs `f` on a fresh read-only connection, off the runtime's workers.
async fn with_db<T, F>(path: &Path, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Db) -> anyhow::Result<T> + Send + 'static,
{
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || f(&Db::open(&path)?))
        .await
        .context("database task")?
}

/// The latest row per key of a frame or row sequence.
fn latest_per_key<'a>(rows: impl IntoIterator<Item = &'a Row>) -> BTreeMap<Key, Row> {
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.key(), r.clone());
    }
    out
}

/// The invariants of `label_history`: strictly increasing seqs, no (uri, val) with the same
/// polarity twice in a row.
fn check_history(checks: &mut Checks, run: &str, history: &[Row]) {
    let mut prev = 0;
    let mut bad_seq = Vec::new();
    for h in history {
        if h.seq <= prev {
            bad_seq.push(format!("{} after {prev}", h.seq));
        }
        prev = h.seq;
    }
    checks.none(
        &format!("{run}: label_history seqs strictly increase"),
        &bad_seq,
        "violations",
        || format!("{} rows, seq 1..={prev}", history.len()),
    );
    let mut last: HashMap<(&str, &str), bool> = HashMap::new();
    let mut dups = Vec::new();
    for h in history {
        if last.insert((&h.uri, &h.val), h.neg) == Some(h.neg) {
            dups.push(format!("{} {} neg={} seq {}", h.uri, h.val, h.neg, h.seq));
        }
    }
    checks.none(
        &format!("{run}: no duplicate label (same polarity twice in a row)"),
        &dups,
        "duplicates",
        || {
            format!(
                "{} grants, {} negations",
                history.iter().filter(|h| !h.neg).count(),
                history.iter().filter(|h| h.neg).count()
            )
        },
    );
}

/// Delivery of `history` (rows with seq ≤ `cut`) to a subscriber that received `frames`:
/// every frame is the history row of its seq; every row was received or is superseded by a
/// later row of its key (the key's last row always received). Returns the number of
/// superseded rows that were never delivered.
fn check_delivery(
    checks: &mut Checks,
    run: &str,
    history: &[Row],
    frames: &[Row],
    cut: i64,
) -> usize {
    let by_seq: HashMap<i64, &Row> = history.iter().map(|h| (h.seq, h)).collect();
    let mut phantom = Vec::new();
    let mut received = HashSet::new();
    let mut prev = 0;
    let mut order = Vec::new();
    for f in frames.iter().filter(|f| f.seq <= cut) {
        if f.seq <= prev {
            order.push(format!("{} after {prev}", f.seq));
        }
        prev = f.seq;
        if by_seq.get(&f.seq).is_none_or(|h| *h != f) {
            phantom.push(f.seq);
        }
        received.insert(f.seq);
    }
    checks.none(
        &format!("{run}: frames strictly increase in seq (nothing delivered twice)"),
        &order,
        "violations",
        || format!("{} frames", received.len()),
    );
    checks.none(
        &format!("{run}: every frame is a label_history row, field for field"),
        &phantom,
        "frames differ from their row (seqs)",
        || "yes".to_owned(),
    );
    let rows: Vec<&Row> = history.iter().filter(|h| h.seq <= cut).collect();
    let last_of_key: HashMap<Key, i64> = rows.iter().map(|h| (h.key(), h.seq)).collect();
    let mut missing = Vec::new();
    let mut superseded = 0;
    for h in &rows {
        if received.contains(&h.seq) {
            continue;
        }
        if last_of_key.get(&h.key()) == Some(&h.seq) {
            missing.push(format!("seq {} {} {} neg={}", h.seq, h.uri, h.val, h.neg));
        } else {
            superseded += 1;
        }
    }
    checks.none(
        &format!(
            "{run}: every committed label delivered, or superseded by a later delivered row of its key"
        ),
        &missing,
        "rows never delivered and never superseded",
        || {
            format!(
                "{} history rows: {} delivered, {superseded} superseded before delivery",
                rows.len(),
                rows.len() - superseded
            )
        },
    );
    superseded
}

// ---------------------------------------------------------------------------------------------
// The crash run

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Passes and keeps its label.
    Good,
    /// Fails from the start (DMARC `p=none`): never labelled.
    Failing,
    /// Passes, then the record is deleted: label negated.
    Deleted,
    /// Passes, then the record is updated to a domain with no DNS: label negated.
    Updated,
}

fn crash_did(i: usize) -> String {
    format!("did:plc:faults{i:018}")
}

fn crash_domain(i: usize) -> String {
    format!("op{i}.faults.test")
}

fn gone_domain(i: usize) -> String {
    format!("gone{i}.faults.test")
}

/// The seeded scenario: what each operator does, and when the labeler is killed.
struct Scenario {
    kinds: Vec<Kind>,
    /// Kill after this many events have been published (sorted).
    kill_points: Vec<usize>,
    rate: f64,
}

impl Scenario {
    fn new(args: &Args) -> anyhow::Result<Scenario> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let kinds: Vec<Kind> = (0..args.attestations)
            .map(|_| match rng.random::<f64>() {
                x if x < 0.10 => Kind::Failing,
                x if x < 0.20 => Kind::Deleted,
                x if x < 0.30 => Kind::Updated,
                _ => Kind::Good,
            })
            .collect();
        let total = kinds.len() + kinds.iter().filter(|k| withdrawn(**k)).count();
        // From half a second into the ingest to its last event.
        let first = ((args.rate / 2.0) as usize).max(1);
        if total <= first || total - first < args.kills {
            bail!("{total} events leave no room for {} kills", args.kills);
        }
        let mut points = BTreeSet::new();
        while points.len() < args.kills {
            points.insert(rng.random_range(first..total));
        }
        Ok(Scenario {
            kinds,
            kill_points: points.into_iter().collect(),
            rate: args.rate,
        })
    }

    fn events(&self) -> usize {
        self.kinds.len() + self.kinds.iter().filter(|k| withdrawn(**k)).count()
    }

    /// DNS, DID documents: everything but the records themselves.
    fn prepare(&self, world: &World) {
        for (i, kind) in self.kinds.iter().enumerate() {
            let (did, domain) = (crash_did(i), crash_domain(i));
            world.dns.publish_good_operator(&domain, &did, &["default"]);
            if *kind == Kind::Failing {
                world
                    .dns
                    .set_txt(&format!("_dmarc.{domain}"), &[WEAK_DMARC]);
            }
            world.account(&did);
        }
    }

    /// The labels an uninterrupted run ends with: (uri, val, neg), sorted.
    fn expected_labels(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<_> = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != Kind::Failing)
            .map(|(i, k)| {
                (
                    crash_did(i),
                    VERIFIED_MAIL_OPERATOR.to_owned(),
                    *k != Kind::Good,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// did → (domain, verdict) once everything is processed; deleted ones have no row.
    fn expected_verdicts(&self) -> HashMap<String, (String, String)> {
        self.kinds
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                let v = match k {
                    Kind::Good => (crash_domain(i), "pass"),
                    Kind::Failing => (crash_domain(i), "fail"),
                    Kind::Updated => (gone_domain(i), "fail"),
                    Kind::Deleted => return None,
                };
                Some((crash_did(i), (v.0, v.1.to_owned())))
            })
            .collect()
    }
}

fn withdrawn(k: Kind) -> bool {
    matches!(k, Kind::Deleted | Kind::Updated)
}

/// What the subscribeLabels follower has seen.
#[derive(Default)]
struct FollowState {
    frames: Vec<Row>,
    last_seq: i64,
    /// DIDs whose positive label has been received.
    labelled: HashSet<String>,
    connects: usize,
    problems: Vec<String>,
}

/// Follows subscribeLabels from `cursor=0`, reconnecting with its last seq whenever the
/// connection ends (the labeler was killed), until `stop`.
async fn follow(addr: SocketAddr, state: Arc<Mutex<FollowState>>, stop: CancellationToken) {
    loop {
        let cursor = state.lock().expect("follower state").last_seq;
        let url = format!("ws://{addr}/xrpc/com.atproto.label.subscribeLabels?cursor={cursor}");
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(url),
        );
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            r = attempt => r,
        };
        let Ok(Ok((mut ws, _))) = connected else {
            // Down (being restarted): try again shortly.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => continue,
            }
        };
        state.lock().expect("follower state").connects += 1;
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = ws.next() => m,
            };
            let bytes = match msg {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            let event =
                std::panic::catch_unwind(AssertUnwindSafe(|| common::server::decode(&bytes)));
            let mut s = state.lock().expect("follower state");
            match event {
                Ok(Event::Labels { seq, labels, .. }) => {
                    if seq <= s.last_seq {
                        let msg = format!("seq {seq} after {}", s.last_seq);
                        s.problems.push(msg);
                    }
                    s.last_seq = s.last_seq.max(seq);
                    for l in &labels {
                        let row = Row::from_wire(seq, l);
                        if !row.neg && row.val == VERIFIED_MAIL_OPERATOR {
                            s.labelled.insert(row.uri.clone());
                        }
                        s.frames.push(row);
                    }
                    if labels.len() != 1 {
                        s.problems
                            .push(format!("seq {seq}: {} labels in one frame", labels.len()));
                    }
                }
                Ok(Event::Error { error, message, .. }) => {
                    s.problems.push(format!("error frame {error}: {message:?}"));
                }
                Ok(Event::Closed(_)) => {}
                Err(_) => {
                    let msg = format!(
                        "undecodable frame or bad signature after seq {}",
                        s.last_seq
                    );
                    s.problems.push(msg);
                }
            }
        }
    }
}

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

/// Publishes the scenario at its pace. Withdrawals are due 3 s after their create and wait
/// (out of order) until the follower has seen the label they withdraw.
async fn publish_scenario(
    world: Arc<World>,
    scenario: Arc<Scenario>,
    follower: Arc<Mutex<FollowState>>,
    progress: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<i64>>>,
) -> anyhow::Result<usize> {
    let delay = Duration::from_secs(3);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / scenario.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: VecDeque<(Instant, usize)> = VecDeque::new();
    let mut next = 0usize;
    let mut published = 0usize;
    let mut deferred = 0usize;
    let deadline = Instant::now()
        + Duration::from_secs_f64(scenario.events() as f64 / scenario.rate)
        + Duration::from_secs(300);
    loop {
        tick.tick().await;
        if Instant::now() > deadline {
            bail!(
                "publishing did not finish in time: {} withdrawals still wait for their label",
                waiting.len()
            );
        }
        let ready = {
            let f = follower.lock().expect("follower state");
            waiting
                .iter()
                .take_while(|(due, _)| *due <= Instant::now())
                .position(|(_, i)| f.labelled.contains(&crash_did(*i)))
        };
        // A withdrawal overtaking an older one that still waits for its label.
        if ready.is_some_and(|p| p > 0) {
            deferred += 1;
        }
        let t = if let Some((_, i)) = ready.and_then(|p| waiting.remove(p)) {
            let did = crash_did(i);
            match scenario.kinds[i] {
                Kind::Deleted => world.unpublish(&did, RKEY),
                _ => {
                    let record = World::record(&gone_domain(i), &["default"]);
                    let cid = "bafyreiupdated";
                    world.pds.put_record(&did, NSID, RKEY, cid, record.clone());
                    world.jetstream.put(&did, RKEY, &record, cid, true)
                }
            }
        } else if next < scenario.kinds.len() {
            let i = next;
            next += 1;
            if withdrawn(scenario.kinds[i]) {
                waiting.push_back((Instant::now() + delay, i));
            }
            world.publish(
                &crash_did(i),
                RKEY,
                &World::record(&crash_domain(i), &["default"]),
            )
        } else if waiting.is_empty() {
            return Ok(deferred);
        } else {
            continue;
        };
        times.lock().expect("event times").push(t);
        published += 1;
        progress.store(published, Ordering::SeqCst);
        if published.is_multiple_of((scenario.rate as usize * 10).max(1)) {
            let f = follower.lock().expect("follower state");
            println!(
                "  {published} events published; follower: {} frames, {} labelled DIDs; {} withdrawals waiting",
                f.frames.len(),
                f.labelled.len(),
                waiting.len()
            );
        }
    }
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
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = labeler.exited()? {
            bail!(
                "{name}: the labeler exited by itself ({status}); log {}",
                inst.log.display()
            );
        }
        let (verdicts, cursor) = with_db(&inst.db, |db| Ok((db.verdicts()?, db.cursor()?))).await?;
        if verdicts == expected && cursor.is_some_and(|c| c >= last_time) {
            break;
        }
        let wrong = expected
            .iter()
            .filter(|(did, v)| verdicts.get(*did) != Some(v))
            .count();
        let diff = format!(
            "{} attestations stored, {} of {} expected verdicts missing or different, {} unexpected, cursor {:?} vs last event {last_time}",
            verdicts.len(),
            wrong,
            expected.len(),
            verdicts
                .keys()
                .filter(|d| !expected.contains_key(*d))
                .count(),
            cursor
        );
        if Instant::now() > deadline {
            bail!("{name}: the labeler never caught up: {diff}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();

    let labels = all_labels(inst.addr).await?;

    // The follower reaches the labels table.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = with_db(&inst.db, |db| db.current()).await?;
        let want = latest_per_key(&current);
        let got = latest_per_key(&follower.lock().expect("follower state").frames);
        if want == got {
            break;
        }
        if Instant::now() > deadline {
            // Reported by the checks below.
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// What the labeler's JSON log says.
#[derive(Default)]
struct LogStats {
    /// Verification decisions per DID.
    verifications: HashMap<String, usize>,
    /// `cursor` of each "labeler started" line (the saved Jetstream cursor at start).
    start_cursors: Vec<Option<i64>>,
    /// Replayed events recognised as already applied.
    already_applied: usize,
    /// (level, message) → count, for WARN and ERROR lines.
    problems: BTreeMap<(String, String), usize>,
    /// Lines that are not JSON (a panic would print one).
    not_json: Vec<String>,
    lines: usize,
}

impl LogStats {
    fn read(path: &Path) -> anyhow::Result<LogStats> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut s = LogStats::default();
        for line in text.lines() {
            s.lines += 1;
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                if s.not_json.len() < 10 {
                    s.not_json.push(line.chars().take(300).collect());
                }
                continue;
            };
            let message = v["message"].as_str().unwrap_or("");
            match message {
                "verification" => {
                    let did = v["did"].as_str().unwrap_or("").to_owned();
                    *s.verifications.entry(did).or_default() += 1;
                }
                "labeler started" => s.start_cursors.push(v["cursor"].as_i64()),
                "event already applied; skipping" => s.already_applied += 1,
                _ => {}
            }
            let level = v["level"].as_str().unwrap_or("");
            if level == "WARN" || level == "ERROR" {
                *s.problems
                    .entry((level.to_owned(), message.to_owned()))
                    .or_default() += 1;
            }
        }
        Ok(s)
    }

    fn total_verifications(&self) -> usize {
        self.verifications.values().sum()
    }
}

async fn crash(args: &Args) -> anyhow::Result<Checks> {
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
        checks.check(
            &format!("{run}: SIGTERM at the end exits 0, then integrity_check"),
            r.exit.success() && r.integrity == "ok",
            format!("exit {}, integrity_check {}", r.exit, r.integrity),
        );
        checks.check(
            &format!("{run}: no panic or other non-JSON output in the log"),
            r.log.not_json.is_empty(),
            if r.log.not_json.is_empty() {
                format!("{} log lines", r.log.lines)
            } else {
                format!("{:?}", r.log.not_json)
            },
        );
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
    for ((level, message), n) in &r.log.problems {
        println!("{name}: log {level} x{n}: {message}");
    }
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

// ---------------------------------------------------------------------------------------------
// The soak

fn soak_did(i: usize) -> String {
    format!("did:plc:soak{i:020}")
}

fn soak_domain(i: usize) -> String {
    format!("op{i}.soak.test")
}

/// A subscriber's record: every seq, and the rows for one of them.
#[derive(Default)]
struct SubRecord {
    seqs: Vec<i64>,
    rows: Vec<Row>,
    problems: Vec<String>,
}

/// One soak subscriber: reads until the stream ends; an end before `stopping` is an error.
async fn soak_subscriber(
    url: String,
    keep_rows: bool,
    last: Arc<AtomicI64>,
    stopping: CancellationToken,
) -> SubRecord {
    let mut rec = SubRecord::default();
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            rec.problems.push(format!("connect: {e}"));
            return rec;
        }
        Err(_) => {
            rec.problems.push("connect timed out".to_owned());
            return rec;
        }
    };
    let mut prev = 0;
    loop {
        let msg = ws.next().await;
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(c))) => {
                if !stopping.is_cancelled() {
                    rec.problems.push(format!("closed by the server: {c:?}"));
                }
                return rec;
            }
            Some(Err(e)) => {
                if !stopping.is_cancelled() {
                    rec.problems.push(format!("read failed: {e}"));
                }
                return rec;
            }
            None => {
                if !stopping.is_cancelled() {
                    rec.problems.push("stream ended".to_owned());
                }
                return rec;
            }
            Some(Ok(_)) => continue,
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| common::server::decode(&bytes))) {
            Ok(Event::Labels { seq, labels, .. }) => {
                if seq <= prev {
                    rec.problems.push(format!("seq {seq} after {prev}"));
                }
                if labels.len() != 1 {
                    rec.problems
                        .push(format!("seq {seq}: {} labels in one frame", labels.len()));
                }
                prev = seq;
                rec.seqs.push(seq);
                if keep_rows {
                    rec.rows
                        .extend(labels.iter().map(|l| Row::from_wire(seq, l)));
                }
                last.store(seq, Ordering::SeqCst);
            }
            Ok(Event::Error { error, message, .. }) => {
                rec.problems
                    .push(format!("error frame {error}: {message:?}"));
            }
            Ok(Event::Closed(_)) => {}
            Err(_) => rec.problems.push(format!(
                "undecodable frame or bad signature after seq {prev}"
            )),
        }
    }
}

/// queryLabels outcomes of one client.
#[derive(Default)]
struct QueryStats {
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    latencies_us: Vec<u32>,
    /// Requests per kind: exact DID, `did:*` page, narrow prefix.
    kinds: [u64; 3],
    labels: u64,
}

/// A label from a queryLabels JSON body, signature checked against the test key.
fn json_label(l: &Value) -> Result<SignedLabel, String> {
    let text = |k: &str| -> Result<String, String> {
        l[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("label without {k}: {l}"))
    };
    if l["ver"] != 1 {
        return Err(format!("label ver is not 1: {l}"));
    }
    let sig = l["sig"]["$bytes"]
        .as_str()
        .ok_or_else(|| format!("label without sig: {l}"))?;
    let sig = data_encoding::BASE64_NOPAD
        .decode(sig.as_bytes())
        .map_err(|e| format!("sig is not base64: {e}"))?;
    let sig: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| format!("sig is {} bytes", sig.len()))?;
    let signed = SignedLabel {
        label: Label {
            src: text("src")?,
            uri: text("uri")?,
            cid: l["cid"].as_str().map(str::to_owned),
            val: text("val")?,
            neg: l["neg"].as_bool().unwrap_or(false),
            cts: text("cts")?,
            exp: l["exp"].as_str().map(str::to_owned),
        },
        sig,
    };
    std::panic::catch_unwind(AssertUnwindSafe(|| common::server::verify(&signed)))
        .map_err(|_| format!("bad signature: {l}"))?;
    Ok(signed)
}

/// Checks one queryLabels answer: 200, JSON, every label matching `pattern`, from `src`,
/// valid and signed; at most `limit` labels, a cursor exactly when the page is full.
fn validate_query(
    status: u16,
    body: &[u8],
    pattern: &str,
    limit: usize,
    src: &str,
) -> Result<usize, String> {
    if status != 200 {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(body)));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let labels = v["labels"].as_array().ok_or("no labels array")?;
    if labels.len() > limit {
        return Err(format!("{} labels for limit {limit}", labels.len()));
    }
    if (labels.len() == limit) != v["cursor"].is_string() {
        return Err(format!(
            "{} labels with limit {limit} but cursor {}",
            labels.len(),
            v["cursor"]
        ));
    }
    for l in labels {
        let s = json_label(l)?;
        let matches = match pattern.strip_suffix('*') {
            Some(prefix) => s.label.uri.starts_with(prefix),
            None => s.label.uri == pattern,
        };
        if !matches || s.label.src != src || s.label.val != VERIFIED_MAIL_OPERATOR {
            return Err(format!(
                "label does not belong in the answer to {pattern}: {l}"
            ));
        }
    }
    Ok(labels.len())
}

/// One queryLabels client on its own keep-alive connection, one request every ~`interval`.
async fn query_client(
    id: u64,
    seed: u64,
    addr: SocketAddr,
    src: String,
    published: Arc<AtomicUsize>,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<QueryStats> {
    let http = http_client()?;
    let mut rng = StdRng::seed_from_u64(seed ^ (id.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut stats = QueryStats::default();
    loop {
        let pause = interval.mul_f64(0.5 + rng.random::<f64>());
        tokio::select! {
            () = stop.cancelled() => return Ok(stats),
            () = tokio::time::sleep(pause) => {}
        }
        let n = published.load(Ordering::SeqCst);
        if n == 0 {
            continue;
        }
        let r: f64 = rng.random();
        let (kind, pattern, query, limit) = if r < 0.80 {
            let did = soak_did(rng.random_range(0..n));
            (0, did.clone(), format!("uriPatterns={did}"), 50)
        } else if r < 0.95 {
            let cursor = rng.random_range(0..=n as i64);
            (
                1,
                "did:*".to_owned(),
                format!("uriPatterns=did:*&limit=50&cursor={cursor}"),
                50,
            )
        } else {
            // 10 DIDs share every prefix that drops the last digit.
            let did = soak_did(rng.random_range(0..n));
            let prefix = format!("{}*", &did[..did.len() - 1]);
            (2, prefix.clone(), format!("uriPatterns={prefix}"), 50)
        };
        stats.kinds[kind] += 1;
        let url = format!("http://{addr}/xrpc/com.atproto.label.queryLabels?{query}");
        let t = Instant::now();
        let outcome = match http.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(body) => {
                        let took = t.elapsed();
                        stats
                            .latencies_us
                            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        validate_query(status, &body, &pattern, limit, &src)
                    }
                    Err(e) => Err(format!("reading the body: {e}")),
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        match outcome {
            Ok(n) => {
                stats.ok += 1;
                stats.labels += n as u64;
            }
            Err(e) => {
                stats.errors += 1;
                if stats.first_errors.len() < 3 {
                    stats.first_errors.push(format!("{query}: {e}"));
                }
            }
        }
    }
}

/// Publishes soak attestations until `stop`: the first `preload` at [`PRELOAD_RATE`], then
/// `rate` per second. Every 15 s it breaks the DMARC of one passing operator at least a minute
/// old, and restores the oldest one broken more than 90 s ago, so that re-checks negate and
/// re-grant labels.
async fn soak_publisher(
    world: Arc<World>,
    seed: u64,
    preload: usize,
    rate: f64,
    published: Arc<AtomicUsize>,
    flips: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut failing = HashSet::new();
    let mut broken: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut born: Vec<Instant> = Vec::new();
    let every = Duration::from_secs(15);
    let mut flip = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut next = tokio::time::Instant::now();
    let mut i = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {
                let (did, domain) = (soak_did(i), soak_domain(i));
                world.dns.publish_good_operator(&domain, &did, &["default"]);
                if rng.random::<f64>() < 0.10 {
                    world.dns.set_txt(&format!("_dmarc.{domain}"), &[WEAK_DMARC]);
                    failing.insert(i);
                }
                world.account(&did);
                world.publish(&did, RKEY, &World::record(&domain, &["default"]));
                born.push(Instant::now());
                i += 1;
                published.store(i, Ordering::SeqCst);
                let pace = if i < preload { PRELOAD_RATE } else { rate };
                // Steady: after a stall, carry on at the pace instead of bursting.
                next = (next + Duration::from_secs_f64(1.0 / pace))
                    .max(tokio::time::Instant::now() - Duration::from_secs(1));
            }
            _ = flip.tick() => {
                if broken
                    .front()
                    .is_some_and(|(_, at)| at.elapsed() > Duration::from_secs(90))
                    && let Some((j, _)) = broken.pop_front()
                {
                    world.dns.set_txt(
                        &format!("_dmarc.{}", soak_domain(j)),
                        &[common::dns::GOOD_DMARC],
                    );
                    flips.fetch_add(1, Ordering::SeqCst);
                }
                let old = born.partition_point(|b| b.elapsed() > Duration::from_secs(60));
                for _ in 0..20 {
                    if old == 0 {
                        break;
                    }
                    let j = rng.random_range(0..old);
                    if !failing.contains(&j) && !broken.iter().any(|(b, _)| *b == j) {
                        world
                            .dns
                            .set_txt(&format!("_dmarc.{}", soak_domain(j)), &[WEAK_DMARC]);
                        broken.push_back((j, Instant::now()));
                        flips.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }
    }
}

/// One row of the soak's curve.
struct SoakSample {
    t: Duration,
    proc: ProcSample,
    cpu_pct: f64,
    attestations: i64,
    history: i64,
    db_bytes: u64,
}

async fn soak(args: &Args) -> anyhow::Result<Checks> {
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = http_client()?;
    loop {
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
        if connected as usize >= args.subscribers {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {connected} of {} subscribers connected",
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
        let deadline = Instant::now() + Duration::from_secs(60 + args.preload as u64 / 10);
        loop {
            let n = with_db(&inst.db, |db| db.count("SELECT count(*) FROM attestations")).await?;
            if n >= args.preload as i64 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {n} of {} preloaded attestations verified",
                    args.preload
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
    let own_start = cpu_seconds(&std::fs::read_to_string("/proc/self/stat")?)?;
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
    let mut stats = Vec::new();
    for c in clients {
        stats.push(
            tokio::time::timeout(Duration::from_secs(15), c)
                .await
                .context("a queryLabels client did not stop")?
                .context("queryLabels client task")??,
        );
    }
    let own_cpu = cpu_seconds(&std::fs::read_to_string("/proc/self/stat")?)? - own_start;
    let final_sample = labeler.sample()?;
    let labeler_cpu = final_sample.cpu_s - samples.first().map_or(0.0, |s| s.proc.cpu_s);

    // The cut: the labels table's newest seq, once every subscriber has received it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (cut, snapshot) = loop {
        let snapshot = with_db(&inst.db, |db| db.current()).await?;
        let m = snapshot.iter().map(|r| r.seq).max().unwrap_or(0);
        // A subscriber that ended early is reported by the checks; do not wait for it.
        let behind = lasts
            .iter()
            .zip(&subs)
            .filter(|(l, task)| !task.is_finished() && l.load(Ordering::SeqCst) < m)
            .count();
        if behind == 0 {
            break (m, snapshot);
        }
        if Instant::now() > deadline {
            bail!("{behind} subscribers never received seq {m}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stopping.cancel();
    let exit = labeler.terminate().await?;
    let mut records = Vec::new();
    for s in subs {
        records.push(
            tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .context("a subscriber did not end after the labeler stopped")?
                .context("subscriber task")?,
        );
    }
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
    for ((level, message), n) in &log.problems {
        println!("soak: log {level} x{n}: {message}");
    }
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
    checks.check(
        "SIGTERM at the end exits 0, then integrity_check",
        exit.success() && integrity == "ok",
        format!("exit {exit}, integrity_check {integrity}"),
    );
    checks.check(
        "no panic or other non-JSON output in the log",
        log.not_json.is_empty(),
        if log.not_json.is_empty() {
            format!("{} log lines", log.lines)
        } else {
            format!("{:?}", log.not_json)
        },
    );
    Ok(checks)
}
