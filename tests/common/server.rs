//! Harness for the XRPC server: a real [`Server`] on 127.0.0.1:0 over a temp SQLite file, an
//! HTTP client, and a subscribeLabels client that decodes every frame (header + body) with
//! `serde_ipld_dagcbor` and verifies every label's signature.
//!
//! Every wait is bounded by [`WAIT`]: tests synchronise on frames and closed streams, never
//! on sleeps.

use std::collections::HashSet;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use atmos_labeler::health::Health;
use atmos_labeler::keys::{PublicKey, SigningKey};
use atmos_labeler::label::{Label, SignedLabel};
use atmos_labeler::server::{Options, Server};
use atmos_labeler::store::{Store, StoredLabel};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::label_vectors;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The vectors' first key: labels signed with it reproduce the vector bytes.
pub fn key() -> SigningKey {
    let hex = label_vectors()["keys"][0]["privateKeyHex"]
        .as_str()
        .unwrap()
        .to_owned();
    SigningKey::from_hex(&hex).unwrap()
}

/// Options for tests: the vector key as labeler, quick polling.
pub fn options() -> Options {
    let key = key();
    Options {
        labeler_did: Some(key.did_key().to_owned()),
        poll_interval: Duration::from_millis(20),
        ..Options::default()
    }
}

/// A label from the test key on `uri`.
pub fn label(uri: &str, val: &str, neg: bool) -> SignedLabel {
    let key = key();
    Label {
        src: key.did_key().to_owned(),
        uri: uri.to_owned(),
        cid: None,
        val: val.to_owned(),
        neg,
        cts: atmos_labeler::label::now_cts(),
        exp: None,
    }
    .sign(&key)
}

/// A running server on a temp database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    pub shutdown: CancellationToken,
    /// The component state the server reports at `/xrpc/_health`.
    pub health: Health,
    task: tokio::task::JoinHandle<Result<(), atmos_labeler::server::Error>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with `options` on an empty database.
    pub async fn start(options: Options) -> TestServer {
        TestServer::start_with(options, |_| {}).await
    }

    /// Starts a server after `seed` has written to the database. Its `/metrics` renders the
    /// process-wide recorder, which every test in this process adds to: assert on metrics
    /// only through [`TestServer::start_metered`].
    pub async fn start_with(options: Options, seed: impl FnOnce(&Store)) -> TestServer {
        TestServer::start_full(
            options,
            atmos_labeler::telemetry::metrics_handle(),
            Health::new(),
            seed,
        )
        .await
    }

    /// Like [`TestServer::start_with`], with `/metrics` rendering `metrics` (the handle of a
    /// [`Scoped`](super::metrics::Scoped) recorder installed before this call).
    pub async fn start_metered(
        options: Options,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        seed: impl FnOnce(&Store),
    ) -> TestServer {
        TestServer::start_full(options, metrics, Health::new(), seed).await
    }

    /// Like [`TestServer::start_with`], reporting the component state in `health`.
    pub async fn start_with_health(
        options: Options,
        health: Health,
        seed: impl FnOnce(&Store),
    ) -> TestServer {
        TestServer::start_full(
            options,
            atmos_labeler::telemetry::metrics_handle(),
            health,
            seed,
        )
        .await
    }

    /// A server with `/metrics` rendering `metrics` and health reporting `health`, after
    /// `seed`.
    pub async fn start_full(
        options: Options,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        health: Health,
        seed: impl FnOnce(&Store),
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("labels.db")).unwrap();
        seed(&store);
        let server = Server::new(store.clone(), options, Some(metrics), health.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(listener, shutdown.clone()));
        TestServer {
            addr,
            store,
            shutdown,
            health,
            task,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// `http://addr`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The database file, for opening a second handle "as another process would".
    pub fn db_path(&self) -> std::path::PathBuf {
        self.store.path().to_owned()
    }

    /// `GET path` → status, content type, body text.
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        self.request(reqwest::Method::GET, path).await
    }

    /// Any method on `path` → status, content type, body text.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> (u16, String, String) {
        let r = tokio::time::timeout(
            WAIT,
            self.http
                .request(method, format!("http://{}{path}", self.addr))
                .send(),
        )
        .await
        .expect("request timed out")
        .unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = r.text().await.unwrap();
        (status, ctype, body)
    }

    /// `GET path`, expecting JSON: status and parsed body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, ctype, body) = self.get(path).await;
        assert_eq!(ctype, "application/json", "{path}: {body}");
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Asserts an XRPC error: status, `error` name, and returns the message.
    pub async fn expect_error(&self, path: &str, status: u16, name: &str) -> String {
        let (got, body) = self.get_json(path).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(name)),
            "{path}: {body}"
        );
        body["message"].as_str().unwrap().to_owned()
    }

    /// Opens a subscribeLabels stream with the given query string (`""` or `"cursor=N"`).
    pub async fn subscribe(&self, query: &str) -> Subscriber {
        Subscriber::connect(&self.subscribe_url(query)).await
    }

    /// The WebSocket URL of subscribeLabels.
    pub fn subscribe_url(&self, query: &str) -> String {
        format!(
            "ws://{}/xrpc/com.atproto.label.subscribeLabels?{query}",
            self.addr
        )
    }

    /// Cancels the shutdown token and waits (bounded) for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
            .unwrap();
    }
}

/// A label as received on the wire (lexicon `#label`).
#[derive(Debug, Deserialize)]
pub struct WireLabel {
    pub ver: i64,
    pub src: String,
    pub uri: String,
    pub cid: Option<String>,
    pub val: String,
    pub neg: Option<bool>,
    pub cts: String,
    pub exp: Option<String>,
    pub sig: serde_bytes::ByteBuf,
}

impl WireLabel {
    /// The signed label, after checking that `neg: false` was not sent (it must be omitted).
    pub fn signed(&self) -> SignedLabel {
        assert_eq!(self.ver, 1);
        assert_ne!(self.neg, Some(false), "neg:false must be omitted");
        SignedLabel {
            label: Label {
                src: self.src.clone(),
                uri: self.uri.clone(),
                cid: self.cid.clone(),
                val: self.val.clone(),
                neg: self.neg == Some(true),
                cts: self.cts.clone(),
                exp: self.exp.clone(),
            },
            sig: self.sig.as_slice().try_into().unwrap(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    op: i64,
    t: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LabelsBody {
    seq: i64,
    labels: Vec<WireLabel>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    message: Option<String>,
}

/// One decoded stream event.
#[derive(Debug)]
pub enum Event {
    /// A `#labels` frame, its raw bytes and its labels (signatures already verified).
    Labels {
        seq: i64,
        labels: Vec<WireLabel>,
        raw: Vec<u8>,
    },
    /// An error frame (`op: -1`).
    Error {
        error: String,
        message: Option<String>,
        raw: Vec<u8>,
    },
    /// A close frame (code), or `None` when the stream ended without one.
    Closed(Option<u16>),
}

/// A subscribeLabels client.
pub struct Subscriber {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether each label's signature is checked against the test key (tests of key rotation
    /// check against other keys themselves).
    pub verify: bool,
}

impl Subscriber {
    /// Connects to a subscribeLabels URL (bounded wait).
    pub async fn connect(url: &str) -> Subscriber {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap();
        Subscriber { ws, verify: true }
    }

    /// Connects without checking signatures against the test key.
    pub async fn connect_unverified(url: &str) -> Subscriber {
        Subscriber {
            verify: false,
            ..Subscriber::connect(url).await
        }
    }

    /// The next raw WebSocket message, control frames included (bounded wait).
    pub async fn next_message(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("no message in time")
    }

    /// The next stream event, skipping pings/pongs. Decodes header and body with the reference
    /// DAG-CBOR codec, requires that the two objects use the whole message, and verifies the
    /// signature of every label against the test key.
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next_message().await {
                Some(Ok(Message::Binary(b))) => return decode_with(&b, self.verify),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(c))) => return Event::Closed(c.map(|c| c.code.into())),
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// The next `#labels` frame: `(seq, label)`; panics on anything else.
    pub async fn next_label(&mut self) -> (i64, WireLabel) {
        match self.next_event().await {
            Event::Labels {
                seq, mut labels, ..
            } => {
                assert_eq!(labels.len(), 1, "one label per frame");
                (seq, labels.remove(0))
            }
            other => panic!("expected a #labels frame, got {other:?}"),
        }
    }

    /// Sends a close frame.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }
}

/// Decodes one binary message as header + body, checking every label's signature against
/// the test key.
pub fn decode(bytes: &[u8]) -> Event {
    decode_with(bytes, true)
}

/// Decodes one binary message as header + body; `verify` checks signatures against the test
/// key.
pub fn decode_with(bytes: &[u8], verify_sigs: bool) -> Event {
    let mut r = Cursor::new(bytes);
    let header: Header = serde_ipld_dagcbor::de::from_reader_once(&mut r).unwrap();
    let event = match (header.op, header.t.as_deref()) {
        (1, Some("#labels")) => {
            let body: LabelsBody = serde_ipld_dagcbor::de::from_reader_once(&mut r).unwrap();
            if verify_sigs {
                for l in &body.labels {
                    verify(&l.signed());
                }
            }
            Event::Labels {
                seq: body.seq,
                labels: body.labels,
                raw: bytes.to_vec(),
            }
        }
        (-1, None) => {
            let body: ErrorBody = serde_ipld_dagcbor::de::from_reader_once(&mut r).unwrap();
            Event::Error {
                error: body.error,
                message: body.message,
                raw: bytes.to_vec(),
            }
        }
        other => panic!("unexpected header {other:?}"),
    };
    assert_eq!(
        r.position() as usize,
        bytes.len(),
        "header + body use the whole frame"
    );
    event
}

/// Labels for seeding stores: `did:plc:seed000000`, `did:plc:seed000001`, … signed once per
/// test process (signing is slow in debug builds) and shared by every test.
pub fn seed_labels() -> &'static [SignedLabel] {
    const N: usize = 1200;
    static LABELS: OnceLock<Vec<SignedLabel>> = OnceLock::new();
    LABELS.get_or_init(|| {
        let key = key();
        let cts = atmos_labeler::label::now_cts();
        let sign = |range: std::ops::Range<usize>| -> Vec<SignedLabel> {
            range
                .map(|i| {
                    let signed = Label {
                        src: key.did_key().to_owned(),
                        uri: format!("did:plc:seed{i:06}"),
                        cid: None,
                        val: "verified-mail-operator".to_owned(),
                        neg: false,
                        cts: cts.clone(),
                        exp: None,
                    }
                    .sign(&key);
                    remember_verified(&signed);
                    signed
                })
                .collect()
        };
        // Two halves on two threads: the machine has two cores.
        std::thread::scope(|scope| {
            let first = scope.spawn(|| sign(0..N / 2));
            let mut all = sign(N / 2..N);
            let mut labels = first.join().unwrap();
            labels.append(&mut all);
            labels
        })
    })
}

/// Writes the first `n` of [`seed_labels`] (seqs 1..=n on a fresh store).
pub fn seed(store: &Store, n: usize) -> Vec<StoredLabel> {
    seed_labels()[..n]
        .chunks(500)
        .flat_map(|c| store.write_labels(c).unwrap())
        .collect()
}

/// (signing bytes ‖ sig) of labels known to verify: signed here with the test key, or already
/// verified once. Verification is slow in debug builds and tests see the same labels often.
fn verified() -> &'static Mutex<HashSet<Vec<u8>>> {
    static VERIFIED: OnceLock<Mutex<HashSet<Vec<u8>>>> = OnceLock::new();
    VERIFIED.get_or_init(Mutex::default)
}

fn verified_key(l: &SignedLabel) -> Vec<u8> {
    let mut k = l.label.signing_bytes();
    k.extend_from_slice(&l.sig);
    k
}

fn remember_verified(l: &SignedLabel) {
    verified().lock().unwrap().insert(verified_key(l));
}

/// A label as queryLabels serves it (JSON, `sig` as `{"$bytes": <unpadded base64>}`).
pub fn signed_from_json(l: &serde_json::Value) -> SignedLabel {
    let s = |k: &str| {
        l.get(k)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let sig = data_encoding::BASE64_NOPAD
        .decode(l["sig"]["$bytes"].as_str().unwrap().as_bytes())
        .unwrap();
    SignedLabel {
        label: atmos_labeler::label::Label {
            src: s("src").unwrap(),
            uri: s("uri").unwrap(),
            cid: s("cid"),
            val: s("val").unwrap(),
            neg: l.get("neg") == Some(&serde_json::json!(true)),
            cts: s("cts").unwrap(),
            exp: s("exp"),
        },
        sig: sig.as_slice().try_into().unwrap(),
    }
}

/// Verifies `l` against the test key (once per distinct label and signature).
pub fn verify(l: &SignedLabel) {
    let k = verified_key(l);
    if verified().lock().unwrap().contains(&k) {
        return;
    }
    let public = PublicKey::parse(key().did_key()).unwrap();
    l.verify(&public).expect("every label's signature verifies");
    verified().lock().unwrap().insert(k);
}
