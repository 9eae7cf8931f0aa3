//! Mirrors for the tests: in-process (`app::start_mirror` on 127.0.0.1:0 with short
//! backoffs) or as the real binary (`labeler mirror`), and the observations the mirror tests
//! compare across nodes: queryLabels pages as raw bodies and subscribeLabels frames as raw
//! bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atmos_labeler::app::{self, MirrorTuning, Running};
use atmos_labeler::config::Config;
use atmos_labeler::store::Store;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::process::Child;
use super::server::{Event, Subscriber, WAIT};

/// A mirror's config: its own state directory, listening on 127.0.0.1:0, private addresses
/// allowed (a did:web upstream on localhost).
pub fn config(dir: &Path) -> Config {
    let text = json!({
        "listenAddr": "127.0.0.1:0",
        "stateDir": dir.join("state"),
        "allowPrivateAddresses": true,
    })
    .to_string();
    Config::from_str(&text, "mirror test config").unwrap()
}

/// A mirror running in this process.
pub struct TestMirror {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: Config,
    _tmp: Option<tempfile::TempDir>,
    running: Option<Running>,
}

impl TestMirror {
    /// A mirror of `did` following `upstream` (`http://addr`) on a fresh state directory.
    pub async fn start(upstream: &str, did: &str) -> TestMirror {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = TestMirror::start_in(tmp.path(), upstream, did).await;
        m._tmp = Some(tmp);
        m
    }

    /// A mirror on the state directory under `dir` (kept across restarts).
    pub async fn start_in(dir: &Path, upstream: &str, did: &str) -> TestMirror {
        let config = config(dir);
        let mut tuning = MirrorTuning::new(&config, upstream.to_owned(), did.to_owned());
        tuning.follow.backoff_min = Duration::from_millis(10);
        tuning.follow.backoff_max = Duration::from_millis(200);
        tuning.follow.quiet = Duration::from_millis(50);
        tuning.server.poll_interval = Duration::from_millis(20);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start_mirror(&config, tuning, listener, CancellationToken::new())
            .await
            .unwrap();
        TestMirror {
            addr: running.addr,
            dir: dir.to_owned(),
            config,
            _tmp: None,
            running: Some(running),
        }
    }

    /// `http://addr`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            tokio::time::timeout(WAIT, r.wait())
                .await
                .expect("the mirror stopped in time")
                .unwrap();
        }
    }

    /// The `upstream` component of `/xrpc/_health`.
    pub async fn upstream(&self) -> Value {
        upstream_health(&self.base()).await
    }

    /// Waits (bounded) until the mirror has dealt with every upstream seq up to `seq`.
    pub async fn await_cursor(&self, seq: i64) {
        await_cursor(&self.base(), seq).await;
    }

    /// A subscribeLabels client.
    pub async fn subscribe(&self, query: &str) -> Subscriber {
        Subscriber::connect(&subscribe_url(self.addr, query)).await
    }

    /// Its database, opened as another process would.
    pub fn store(&self) -> Store {
        Store::open(&self.config.db_path()).unwrap()
    }
}

/// `ws://addr/xrpc/com.atproto.label.subscribeLabels?query`
pub fn subscribe_url(addr: SocketAddr, query: &str) -> String {
    format!("ws://{addr}/xrpc/com.atproto.label.subscribeLabels?{query}")
}

/// `GET base/xrpc/_health` → its `upstream` component (a mirror answers 200 even when
/// degraded).
pub async fn upstream_health(base: &str) -> Value {
    let resp = tokio::time::timeout(WAIT, reqwest::get(format!("{base}/xrpc/_health")))
        .await
        .expect("health answered in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["components"]["upstream"].clone()
}

/// Waits (bounded) until the mirror at `base` reports a cursor at or past `seq`. The cursor
/// is state inside the mirror with no notification to subscribe to, so it is polled.
pub async fn await_cursor(base: &str, seq: i64) {
    let last = std::cell::RefCell::new(Value::Null);
    let reached = super::eventually(WAIT, || async {
        let u = upstream_health(base).await;
        let done = u["cursor"].as_i64().is_some_and(|c| c >= seq);
        *last.borrow_mut() = u;
        done
    })
    .await;
    assert!(
        reached,
        "mirror {base} never reached seq {seq}: {:#}",
        last.borrow()
    );
}

/// Raw `#labels` frames from `sub` until the one with seq `last` (inclusive).
pub async fn frames_until(sub: &mut Subscriber, last: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match sub.next_event().await {
            Event::Labels { seq, raw, .. } => {
                out.push((seq, raw));
                if seq >= last {
                    assert_eq!(seq, last, "the stream skipped past seq {last}");
                    return out;
                }
            }
            other => panic!("expected #labels frames up to seq {last}, got {other:?}"),
        }
    }
    panic!("no frame with seq {last}");
}

/// `labeler mirror` as a child process, on its own state directory.
pub struct MirrorProcess {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    config: PathBuf,
    pub db: PathBuf,
    pub addr: SocketAddr,
    upstream: String,
    did: String,
    child: Option<Child>,
}

impl MirrorProcess {
    /// A state directory and config file for a mirror of `did` at `upstream`; not started.
    pub fn create(upstream: &str, did: &str) -> MirrorProcess {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let config = dir.join("config.json");
        let text = json!({
            "listenAddr": "127.0.0.1:0",
            "stateDir": dir.join("state"),
            "allowPrivateAddresses": true,
        });
        std::fs::write(&config, text.to_string()).unwrap();
        MirrorProcess {
            db: dir.join("state").join(atmos_labeler::config::DB_FILE),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: upstream.to_owned(),
            did: did.to_owned(),
            config,
            dir,
            _tmp: tmp,
            child: None,
        }
    }

    /// Starts `labeler -config … mirror --upstream … --did …` and returns once it serves
    /// (its "mirror started" line names the address).
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let args = ["mirror", "--upstream", &self.upstream, "--did", &self.did];
        let (child, addr) = Child::serve(&self.config, &self.dir, &args, "mirror started").await;
        self.addr = addr;
        self.child = Some(child);
    }

    /// `http://addr`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) {
        self.child.as_mut().expect("not running").sigkill();
        self.child = None;
    }

    /// Waits (at most [`WAIT`]) for a stderr line containing `needle`.
    pub async fn line_containing(&mut self, needle: &str) -> String {
        self.child
            .as_mut()
            .expect("not running")
            .line_containing(needle, WAIT)
            .await
    }

    /// A scrape of its `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        super::metrics::scrape(&self.base()).await
    }

    /// A subscribeLabels client.
    pub async fn subscribe(&self, query: &str) -> Subscriber {
        Subscriber::connect(&subscribe_url(self.addr, query)).await
    }

    /// Runs `f` on its database, opened as a second process would, while it runs (see
    /// `LabelerProcess::with_store` for why only then).
    pub async fn with_store<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> T + Send + 'static,
    {
        assert!(self.child.is_some(), "the mirror is not running");
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&Store::open(&db).unwrap()))
            .await
            .unwrap()
    }
}
