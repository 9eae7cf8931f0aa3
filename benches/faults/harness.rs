//! The labeler under test as a child process: its state dir and config, start and readiness,
//! SIGKILL, SIGTERM, `/proc` samples and what its JSON log says; plus the bounded waits and
//! the small statistics both runs use.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use atmos_labeler::keys::SigningKey;
use serde_json::{Value, json};

use crate::common;
use crate::common::daemon::World;
use crate::common::jetstream::FakeJetstream;
use crate::procfs;

/// Log filter for the child: every decision, plus the manager's "already applied" skips.
const LOG_FILTER: &str = "info,atmos_labeler::manager=debug";

/// The attestation's record key (one attestation per DID).
pub const RKEY: &str = "self";

/// DMARC record that makes an otherwise good operator fail.
pub const WEAK_DMARC: &str = "v=DMARC1; p=none";

/// Longest wait for the labeler to be ready after a (re)start.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Longest wait for the labeler to exit after SIGTERM (its own grace periods are 5 + 2 + 2 s).
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Where one labeler's files live.
pub struct Instance {
    /// Removed on drop unless `--keep` was given.
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
    pub did: String,
}

impl Instance {
    /// A fresh state dir holding the test key, and a config pointing at `world`.
    pub fn create(world: &World, reverify: &str, keep: bool) -> anyhow::Result<Instance> {
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
            "confirmDnsServers": [world.dns.addr().to_string()],
            "dnsCanaries": [crate::common::dns::CANARY],
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
pub struct Labeler {
    child: Option<Child>,
    pid: u32,
}

impl Labeler {
    /// Starts the binary on `inst` and waits until it serves and is connected to Jetstream.
    pub async fn start(inst: &Instance, jetstream: &FakeJetstream) -> anyhow::Result<Labeler> {
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
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait().context("waitpid")?),
            None => bail!("labeler already stopped"),
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("labeler already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!("the labeler had exited by itself before the kill ({status})");
        }
        child.kill().context("SIGKILL")?;
        child.wait().context("reap the killed labeler")?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
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
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let pid = self.pid;
        let status = procfs::Status::read(pid)?;
        let cpu_s = procfs::cpu_seconds(pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("/proc/{pid}/fd"))?
            .count();
        Ok(ProcSample {
            rss_kb: status.kb("VmRSS:")?,
            anon_kb: status.kb("RssAnon:")?,
            file_kb: status.kb("RssFile:")?,
            shmem_kb: status.kb("RssShmem:")?,
            hwm_kb: status.kb("VmHWM:")?,
            threads: status.kb("Threads:")?,
            fds,
            cpu_s,
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
pub struct ProcSample {
    pub rss_kb: u64,
    /// VmRSS split: anonymous (heap, stacks), file-backed and shared memory.
    pub anon_kb: u64,
    pub file_kb: u64,
    pub shmem_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    pub fds: usize,
    pub cpu_s: f64,
}

/// A client for the labeler's HTTP endpoints: bounded, keep-alive, no Nagle.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .context("HTTP client")
}

/// What the labeler's JSON log says.
#[derive(Default)]
pub struct LogStats {
    /// Verification decisions per DID.
    pub verifications: HashMap<String, usize>,
    /// `cursor` of each "labeler started" line (the saved Jetstream cursor at start).
    pub start_cursors: Vec<Option<i64>>,
    /// Replayed events recognised as already applied.
    pub already_applied: usize,
    /// (level, message) → count, for WARN and ERROR lines.
    pub problems: BTreeMap<(String, String), usize>,
    /// Lines that are not JSON (a panic would print one).
    pub not_json: Vec<String>,
    pub lines: usize,
}

impl LogStats {
    pub fn read(path: &Path) -> anyhow::Result<LogStats> {
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

    pub fn total_verifications(&self) -> usize {
        self.verifications.values().sum()
    }

    /// Prints the WARN and ERROR lines, counted by message.
    pub fn print_problems(&self, name: &str) {
        for ((level, message), n) in &self.problems {
            println!("{name}: log {level} x{n}: {message}");
        }
    }
}

/// The `p` quantile (0..=1) of sorted values, nearest rank; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// A [`poll`] answer: done, or not yet because of what `why` says.
pub fn ready(done: bool, why: impl FnOnce() -> String) -> ControlFlow<(), String> {
    if done {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(why())
    }
}

/// Polls `probe` every `every` for at most `within`: for state in another process that sends
/// no notification (its database, its metrics). The probe answers `Break(value)` once the state
/// is reached, else `Continue(why not)`; when time runs out the last reason is returned as
/// `Err`. A failing probe ends the wait at once.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> anyhow::Result<ControlFlow<T, String>>,
) -> anyhow::Result<Result<T, String>> {
    let deadline = Instant::now() + within;
    loop {
        let why = match probe().await? {
            ControlFlow::Break(value) => return Ok(Ok(value)),
            ControlFlow::Continue(why) => why,
        };
        if Instant::now() > deadline {
            return Ok(Err(why));
        }
        tokio::time::sleep(every).await;
    }
}
