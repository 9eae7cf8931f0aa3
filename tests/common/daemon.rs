//! The whole labeler, in-process, wired to fakes of everything outside it: Jetstream (v1
//! wire), an authoritative DNS server, the PLC directory and a PDS — all real servers on
//! 127.0.0.1. Observed the way relays observe it: over queryLabels, subscribeLabels and
//! getVerification.

use std::path::{Path, PathBuf};
use std::time::Duration;

use atmos_labeler::app::{self, Running, Tuning};
use atmos_labeler::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::dns::FakeDns;
use super::jetstream::{FakeJetstream, NSID};
use super::plc::{FakePds, FakePlc, did_doc};
use super::server::{Subscriber, WAIT};

/// Everything outside the labeler.
pub struct World {
    pub dns: FakeDns,
    pub plc: FakePlc,
    pub pds: FakePds,
    pub jetstream: FakeJetstream,
}

impl World {
    pub async fn start() -> World {
        World {
            dns: FakeDns::start().await,
            plc: FakePlc::start().await,
            pds: FakePds::start().await,
            jetstream: FakeJetstream::start().await,
        }
    }

    /// An attestation record.
    pub fn record(domain: &str, selectors: &[&str]) -> Value {
        json!({"$type": NSID, "domain": domain, "dkimSelectors": selectors,
               "createdAt": "2026-11-23T10:00:00.000Z"})
    }

    /// A DID whose document points at the fake PDS (no handle).
    pub fn account(&self, did: &str) {
        self.plc.set_doc(did, did_doc(did, None, &self.pds.url()));
    }

    /// An operator with passing DNS whose PDS holds the attestation, announced on Jetstream.
    /// Returns the event's `time_us`.
    pub fn good_operator(&self, did: &str, domain: &str, rkey: &str) -> i64 {
        self.dns.publish_good_operator(domain, did, &["default"]);
        self.account(did);
        self.publish(did, rkey, &World::record(domain, &["default"]))
    }

    /// Writes `record` to the PDS and announces it on Jetstream (create).
    pub fn publish(&self, did: &str, rkey: &str, record: &Value) -> i64 {
        let cid = format!("bafyrei{}", rkey.to_ascii_lowercase());
        self.pds.put_record(did, NSID, rkey, &cid, record.clone());
        self.jetstream.put(did, rkey, record, &cid, false)
    }

    /// Deletes the record at the PDS and announces the delete.
    pub fn unpublish(&self, did: &str, rkey: &str) -> i64 {
        self.pds.delete_record(did, NSID, rkey);
        self.jetstream.delete(did, rkey)
    }
}

/// A running labeler with its own state directory.
pub struct TestLabeler {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config: Config,
    running: Option<Running>,
    pub addr: std::net::SocketAddr,
    pub did: String,
}

/// The labeler's config for `world`, state in `dir`. Re-checks every `reverify`.
pub fn config(world: &World, dir: &Path, reverify: &str) -> Config {
    let text = json!({
        "listenAddr": "127.0.0.1:0",
        "stateDir": dir.join("state"),
        "signingKeyPath": dir.join("state/signing.key"),
        "jetstreamURL": world.jetstream.url(),
        "plcURL": world.plc.url(),
        "dnsServers": [world.dns.addr().to_string()],
        "confirmDnsServers": [world.dns.addr().to_string()],
        "verifyDeadline": "5s",
        "dnsCanaries": [super::dns::CANARY],
        "dnsTimeout": "500ms",
        "reverifyInterval": reverify,
        "allowPrivateAddresses": true,
        "verifyConcurrency": 4,
    })
    .to_string();
    Config::from_str(&text, "test config").unwrap()
}

/// Short reconnect backoffs and sweep sleeps, so tests spend no time waiting on them.
pub fn tuning(config: &Config) -> Tuning {
    let mut t = Tuning::new(config);
    t.jetstream.backoff_min = Duration::from_millis(10);
    t.jetstream.backoff_max = Duration::from_millis(100);
    t.jetstream.checkpoint_every = Duration::from_millis(50);
    t.scheduler.max_sleep = Duration::from_millis(100);
    t.scheduler.external_poll = Some(Duration::from_millis(50));
    t.server.poll_interval = Duration::from_millis(20);
    t
}

impl TestLabeler {
    /// Initialises a fresh state directory (with the vector test key, so the stream client's
    /// signature checks apply) and starts the labeler.
    pub async fn start(world: &World, reverify: &str) -> TestLabeler {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut l = TestLabeler::start_in(world, &dir, reverify, |_| {}).await;
        l._tmp = Some(tmp);
        l
    }

    /// Starts a labeler on `dir` (initialising it if needed); `tweak` may adjust the config.
    pub async fn start_in(
        world: &World,
        dir: &Path,
        reverify: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> TestLabeler {
        TestLabeler::start_tuned(world, dir, reverify, tweak, |_| {}).await
    }

    /// Like [`TestLabeler::start_in`], with internal settings adjusted by `tune`.
    pub async fn start_tuned(
        world: &World,
        dir: &Path,
        reverify: &str,
        tweak: impl FnOnce(&mut Config),
        tune: impl FnOnce(&mut Tuning),
    ) -> TestLabeler {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestLabeler::start_on(world, dir, reverify, listener, tweak, tune).await
    }

    /// Like [`TestLabeler::start_tuned`], serving on `listener` (bound by the caller: to know
    /// the port before the config is written, or to come back on the same port).
    pub async fn start_on(
        world: &World,
        dir: &Path,
        reverify: &str,
        listener: TcpListener,
        tweak: impl FnOnce(&mut Config),
        tune: impl FnOnce(&mut Tuning),
    ) -> TestLabeler {
        let mut config = config(world, dir, reverify);
        tweak(&mut config);
        let mut tuned = tuning(&config);
        tune(&mut tuned);
        let state = dir.join("state");
        if !state.exists() {
            std::fs::create_dir_all(&state).unwrap();
            let hex = data_encoding::HEXLOWER.encode(&key_bytes());
            std::fs::write(&config.signing_key_path, hex).unwrap();
        }
        let connections_before = world.jetstream.connections();
        let running = app::start(&config, tuned, listener, CancellationToken::new())
            .await
            .unwrap();
        let l = TestLabeler {
            dir: dir.to_owned(),
            _tmp: None,
            addr: running.addr,
            did: running.did.clone(),
            config,
            running: Some(running),
        };
        // Events published from here on reach this labeler (a fresh one tails live).
        assert!(
            super::eventually(WAIT, || async {
                world.jetstream.connections() > connections_before
            })
            .await,
            "the labeler connected to Jetstream"
        );
        l
    }

    /// Graceful stop (SIGTERM path).
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.wait().await.unwrap();
        }
    }

    /// A crash: every task is dropped where it stands, nothing is flushed or closed.
    pub fn crash(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        drop(self.running.take());
        (self.dir.clone(), self._tmp.take())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET → JSON body (panics on a non-200).
    pub async fn get(&self, path: &str) -> Value {
        let resp = reqwest::get(self.url(path)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        resp.json().await.unwrap()
    }

    /// Current labels on `did` from queryLabels: `(val, neg)` pairs.
    pub async fn labels_on(&self, did: &str) -> Vec<(String, bool)> {
        let body = self
            .get(&format!(
                "/xrpc/com.atproto.label.queryLabels?uriPatterns={did}"
            ))
            .await;
        body["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["val"].as_str().unwrap().to_owned(),
                    l["neg"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// All current labels, `(uri, val, neg)`, sorted.
    pub async fn all_labels(&self) -> Vec<(String, String, bool)> {
        all_labels(&self.url("")).await
    }

    /// getVerification for `did`.
    pub async fn verification(&self, did: &str) -> Value {
        self.get(&format!("/xrpc/email.atmos.getVerification?did={did}"))
            .await
    }

    /// Waits until `did`'s attestation `rkey` has a verdict satisfying `want` (polling the
    /// status endpoint: verdicts that grant nothing have no other signal).
    pub async fn await_verdict(&self, did: &str, rkey: &str, want: &[&str]) -> Value {
        let uri = format!("at://{did}/{NSID}/{rkey}");
        let found = std::cell::RefCell::new(None);
        let last = std::cell::RefCell::new(Value::Null);
        let reached = super::eventually(WAIT, || async {
            let v = self.verification(did).await;
            let hit = v["attestations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| {
                    a["uri"] == uri.as_str() && want.contains(&a["verdict"].as_str().unwrap())
                })
                .cloned();
            *last.borrow_mut() = v;
            let done = hit.is_some();
            *found.borrow_mut() = hit;
            done
        })
        .await;
        assert!(
            reached,
            "no verdict {want:?} for {uri}: {:#}",
            last.borrow()
        );
        found.into_inner().unwrap()
    }

    /// Waits (bounded) until the saved Jetstream cursor is at or past `time_us`: every event
    /// up to it has been applied and committed (the manager never saves a cursor past an
    /// event it has not finished).
    pub async fn await_cursor(&self, time_us: i64) {
        let reached = super::eventually(WAIT, || async {
            self.store().cursor().unwrap().is_some_and(|c| c >= time_us)
        })
        .await;
        assert!(
            reached,
            "saved cursor {:?} never reached {time_us}",
            self.store().cursor().unwrap()
        );
    }

    /// A subscribeLabels client; `query` e.g. `"cursor=0"` or `""`.
    pub async fn subscribe(&self, query: &str) -> Subscriber {
        Subscriber::connect(&format!(
            "ws://{}/xrpc/com.atproto.label.subscribeLabels?{query}",
            self.addr
        ))
        .await
    }

    /// A subscribeLabels client that does not check signatures against the test key.
    pub async fn subscribe_unverified(&self, query: &str) -> Subscriber {
        Subscriber::connect_unverified(&format!(
            "ws://{}/xrpc/com.atproto.label.subscribeLabels?{query}",
            self.addr
        ))
        .await
    }

    /// A config file for the `labeler` CLI on this labeler's state (state directory, key and
    /// labelerDid; the daemon itself runs in-process with [`Config`]).
    pub fn cli_config(&self) -> PathBuf {
        let c = &self.config;
        let path = self.dir.join("cli-config.json");
        let mut text = json!({
            "stateDir": c.state_dir,
            "signingKeyPath": c.signing_key_path,
        });
        if let Some(did) = &c.labeler_did {
            text["labelerDid"] = json!(did);
        }
        std::fs::write(&path, text.to_string()).unwrap();
        path
    }

    /// The labeler's database, for invariant checks.
    pub fn store(&self) -> atmos_labeler::store::Store {
        atmos_labeler::store::Store::open(&self.config.db_path()).unwrap()
    }
}

fn key_bytes() -> Vec<u8> {
    let hex = super::label_vectors()["keys"][0]["privateKeyHex"]
        .as_str()
        .unwrap()
        .to_owned();
    data_encoding::HEXLOWER.decode(hex.as_bytes()).unwrap()
}

/// Every `queryLabels?uriPatterns=*` page of `limit` labels, as raw bodies, following the
/// cursor to the end (bounded).
pub async fn pages(base: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = None::<String>;
    for _ in 0..1000 {
        let mut url =
            format!("{base}/xrpc/com.atproto.label.queryLabels?uriPatterns=*&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = tokio::time::timeout(WAIT, reqwest::get(&url))
            .await
            .expect("queryLabels answered in time")
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        cursor = v["cursor"].as_str().map(str::to_owned);
        out.push(body);
        if cursor.is_none() {
            return out;
        }
    }
    panic!("queryLabels paging never ended");
}

/// All current labels of the labeler at `base` (`http://addr`) from queryLabels, paged,
/// `(uri, val, neg)`, sorted.
pub async fn all_labels(base: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for page in pages(base, 250).await {
        let body: Value = serde_json::from_str(&page).unwrap();
        for l in body["labels"].as_array().unwrap() {
            out.push((
                l["uri"].as_str().unwrap().to_owned(),
                l["val"].as_str().unwrap().to_owned(),
                l["neg"].as_bool().unwrap_or(false),
            ));
        }
    }
    out.sort();
    out
}
