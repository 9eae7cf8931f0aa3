//! The real `labeler` binary (`CARGO_BIN_EXE_labeler`, built by cargo for this package's
//! tests) as a child process: started on a config file pointing at a [`World`] of fakes,
//! SIGKILLed and restarted on the same state, observed over HTTP, WebSocket and its SQLite
//! file.
//!
//! A child never outlives its test: [`Child`] kills (SIGKILL) and reaps it when dropped,
//! which also runs while a failing test unwinds.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atmos_labeler::store::Store;
use serde_json::json;
use tokio::sync::mpsc;

use super::daemon::World;
use super::metrics::Metrics;
use super::server::{Subscriber, WAIT};

/// Bound on a start: a debug build on a busy two-core machine can take a while to exec.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// A child process whose stderr is read line by line (kept for failure messages), killed and
/// reaped on drop.
pub struct Child {
    child: Option<std::process::Child>,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Child {
    /// Runs `labeler -config <config> <args…>` in `dir` with info logs and no colour, and
    /// waits for its `started` line, which names the address it serves on (`addr=`).
    pub async fn serve(
        config: &Path,
        dir: &Path,
        args: &[&str],
        started: &str,
    ) -> (Child, SocketAddr) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_labeler"));
        cmd.arg("-config")
            .arg(config)
            .args(args)
            .current_dir(dir)
            .env_remove("LABELER_CONFIG")
            .env_remove("LABELER_LISTEN_ADDR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut child = Child::spawn(cmd);
        let line = child.line_containing(started, START_WAIT).await;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .parse()
            .unwrap();
        (child, addr)
    }

    /// Spawns `cmd` with stdin and stdout closed and stderr captured.
    pub fn spawn(mut cmd: Command) -> Child {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drains stderr until the process closes it (it exits), whether or not anyone is
        // listening, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Child {
            child: Some(child),
            lines,
            log,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The last lines the process wrote to stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(40)..].join("\n")
    }

    /// Waits (at most `limit`) for a stderr line containing `needle` and returns it. Panics,
    /// with the log, if the process exits or stays silent about it.
    pub async fn line_containing(&mut self, needle: &str, limit: Duration) -> String {
        let found = tokio::time::timeout(limit, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None // stderr closed: the process exited
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the process exited before logging {needle:?}:\n{}",
                self.log_tail()
            ),
            Err(_) => panic!(
                "no {needle:?} within {limit:?}; last lines:\n{}",
                self.log_tail()
            ),
        }
    }

    /// SIGKILL (`Child::kill` sends SIGKILL on Unix), then reap. Panics if the process had
    /// already exited by itself: a crash test must kill a running process.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("process already gone");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the process exited by itself ({status}) before the kill:\n{}",
                self.log_tail()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        let pid = self.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
    }

    /// Waits (at most `limit`) for the process to exit and returns its status. The signal is
    /// its stderr closing, which happens when it exits; then the exit status is reaped.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let closed =
            tokio::time::timeout(limit, async { while self.lines.recv().await.is_some() {} }).await;
        assert!(
            closed.is_ok(),
            "the process did not exit within {limit:?}:\n{}",
            self.log_tail()
        );
        let mut child = self.child.take().expect("process already reaped");
        // stderr is closed, so the process has exited or is exiting: `wait` returns at once.
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `labeler` binary serving on its own state directory, wired to a [`World`]'s fakes.
pub struct LabelerProcess {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    config: PathBuf,
    /// The SQLite file.
    pub db: PathBuf,
    /// The labeler's DID (the test-vector key's did:key).
    pub did: String,
    /// Where the current process serves (a new port after every restart).
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl LabelerProcess {
    /// A fresh state directory holding the test-vector signing key (so every label's
    /// signature can be checked against it) and a config file pointing at `world`: listening
    /// on 127.0.0.1:0 (the started line names the port), private addresses allowed (all the
    /// fakes are on 127.0.0.1), `reverifyInterval` as given. Not started yet.
    pub fn create(world: &World, reverify: &str) -> LabelerProcess {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let key_hex = super::label_vectors()["keys"][0]["privateKeyHex"]
            .as_str()
            .unwrap()
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
                .unwrap();
            writeln!(f, "{key_hex}").unwrap();
        }
        let config = dir.join("config.json");
        let text = json!({
            "listenAddr": "127.0.0.1:0",
            "stateDir": state,
            "signingKeyPath": key_path,
            "jetstreamURL": world.jetstream.url(),
            "plcURL": world.plc.url(),
            "dnsServers": [world.dns.addr().to_string()],
            "confirmDnsServers": [world.dns.addr().to_string()],
            "dnsCanaries": [super::dns::CANARY],
            "dnsTimeout": "2s",
            "reverifyInterval": reverify,
            "allowPrivateAddresses": true,
        });
        std::fs::write(&config, text.to_string()).unwrap();
        LabelerProcess {
            db: state.join(atmos_labeler::config::DB_FILE),
            did: super::server::key().did_key().to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            dir,
            _tmp: tmp,
            child: None,
        }
    }

    /// Starts the binary and returns once it serves (its "labeler started" line, logged after
    /// the listener is bound, names the address) and has connected to the fake Jetstream, so
    /// events published from here on reach it.
    pub async fn start(&mut self, world: &World) {
        assert!(self.child.is_none(), "already running");
        let before = world.jetstream.connections();
        let (child, addr) = Child::serve(&self.config, &self.dir, &[], "labeler started").await;
        self.addr = addr;
        self.child = Some(child);
        assert!(
            super::eventually(START_WAIT, || async {
                world.jetstream.connections() > before
            })
            .await,
            "the labeler never connected to Jetstream:\n{}",
            self.log_tail()
        );
    }

    /// SIGKILL and reap: nothing is flushed, closed or checkpointed.
    pub fn sigkill(&mut self) {
        self.child.as_mut().expect("not running").sigkill();
        self.child = None;
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("not running");
        child.sigterm();
        child.exit_status(WAIT).await
    }

    /// The running process's last stderr lines.
    pub fn log_tail(&self) -> String {
        self.child.as_ref().map(Child::log_tail).unwrap_or_default()
    }

    /// `http://addr`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A subscribeLabels client; `query` e.g. `"cursor=0"` or `""`.
    pub async fn subscribe(&self, query: &str) -> Subscriber {
        Subscriber::connect(&format!(
            "ws://{}/xrpc/com.atproto.label.subscribeLabels?{query}",
            self.addr
        ))
        .await
    }

    /// A scrape of its `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        super::metrics::scrape(&self.base()).await
    }

    /// All current labels from queryLabels, `(uri, val, neg)`, sorted.
    pub async fn all_labels(&self) -> Vec<(String, String, bool)> {
        super::daemon::all_labels(&self.base()).await
    }

    /// Runs `f` on the state database, opened through the library's [`Store`] as a second
    /// process would, off the runtime's threads. Only while the labeler runs: a handle left
    /// as the last one on a killed labeler's file would checkpoint its WAL on close, doing
    /// the recovery the restarted labeler is meant to do itself.
    pub async fn with_store<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> T + Send + 'static,
    {
        assert!(self.child.is_some(), "the labeler is not running");
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&Store::open(&db).unwrap()))
            .await
            .unwrap()
    }

    /// The saved Jetstream cursor.
    pub async fn cursor(&self) -> Option<i64> {
        self.with_store(|s| s.cursor().unwrap()).await
    }

    /// The last label seq committed.
    pub async fn head_seq(&self) -> i64 {
        self.with_store(|s| s.head_seq().unwrap()).await
    }

    /// Waits (bounded) until the saved Jetstream cursor is at or past `time_us`: every event
    /// up to it has been applied and committed (the cursor never passes an unfinished event).
    pub async fn await_cursor(&self, time_us: i64) {
        let reached = super::eventually(WAIT, || async {
            self.cursor().await.is_some_and(|c| c >= time_us)
        })
        .await;
        assert!(
            reached,
            "saved cursor {:?} never reached {time_us}:\n{}",
            self.cursor().await,
            self.log_tail()
        );
    }
}

/// `PRAGMA integrity_check` on a database nobody has open, through a read-only connection
/// (it never writes, so it neither recovers nor checkpoints the WAL a killed process left:
/// the next process to open the file does that, as it would in production).
pub fn integrity_check_read_only(db: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("; ")
}
