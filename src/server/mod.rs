//! The XRPC server: `com.atproto.label.queryLabels` (HTTP), `com.atproto.label.subscribeLabels`
//! (WebSocket), the operator's `email.atmos.getVerification`, `requestVerification`,
//! `checkDomain` and `describeLabeler` with the console page at `/`, `/xrpc/_health`, the
//! did:web document and `/metrics`.
//!
//! Specs implemented: <https://atproto.com/specs/xrpc> (errors, parameters, unknown methods → 501),
//! <https://atproto.com/specs/event-stream> (framing, cursors, errors), <https://atproto.com/specs/label> (label
//! distribution endpoints, labeler identity); the details and the reasoning are in
//! `docs/protocol.md` §3.2, §4, §5 and §7.
//!
//! Layout: `listen` (the accept loop: hyper with a header and idle timeout, the connection
//! caps), `limits` (who a client is, per-client counts, `X-Forwarded-For` from trusted
//! proxies), `query` (queryLabels), `subscribe` (one task per stream subscriber), `live` (the
//! one task that publishes committed labels to subscribers, and its supervisor), `status`
//! (health, DID document, metrics, the attestation view), `error` (the XRPC error enum that
//! owns every status code), `params` (raw query strings); the operator's console: `console`
//! (the page, describeLabeler, the console's budgets), `lookup` (getVerification by DID,
//! handle or domain), `recheck` (requestVerification), `preflight` (checkDomain), `rate`
//! (per-key request budgets).
//!
//! HTTP routes run under a request timeout and a body limit; the WebSocket upgrade returns at
//! once and its connection lives in its own task outside both. Database work that can take
//! long runs on the blocking pool under a permit held until the work really ends
//! (`run_limited`); the health probe has its own. [`Server::run`] owns the live feed and the
//! shutdown sequence: stop intake, close subscribers with 1001, return within a bounded time.

mod console;
mod error;
mod limits;
mod listen;
mod live;
mod lookup;
mod params;
mod preflight;
mod query;
mod rate;
mod recheck;
mod status;
mod subscribe;

pub use console::ConsoleLimits;
pub use rate::Rate;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::error::XrpcError;
use self::limits::PerClient;
use self::live::LiveFrame;
use crate::health::Health;
use crate::store::{self, Store};
use crate::telemetry;

/// Longest an HTTP request may take before it is answered with a timeout error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request body accepted. The one procedure (requestVerification) takes a DID; this
/// bounds what a client can make us read.
const MAX_BODY: usize = 16 * 1024;

/// Requests whose database work runs on the blocking pool at the same time (prefix and
/// source queries, getVerification). Each holds a pooled read connection: together with
/// [`subscribe::BACKFILL_READERS`], the health probe, the live feed and the inline scans this
/// stays within the store's idle pool, so connections are reused rather than opened per
/// request, and with two cores more would only queue in the kernel instead. (Inline exact
/// lookups have their own pool.)
const BLOCKING_QUERIES: usize = 2;

/// How long shutdown waits for in-flight HTTP requests, and then again for subscribers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often the metrics recorder's buffers are drained (see [`metrics_upkeep`]).
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Bounds on `poll_interval`: short enough that another process's label reaches subscribers
/// within a second, long enough not to spin.
const MIN_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(500);

/// Server settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The configured `labelerDid`: the `src` of our labels, and a did:web's document is
    /// served at `/.well-known/did.json`. `None`: the active signing key's did:key is the
    /// `src` (it changes when the key is rotated).
    pub labeler_did: Option<String>,
    /// The labeler account's PDS, served as the did:web document's `#atproto_pds` service.
    pub labeler_pds: Option<String>,
    /// Cap on concurrent subscribeLabels connections; more are refused with 503.
    pub max_subscribers: usize,
    /// Live frames a subscriber may fall behind by before it is closed as too slow. This is
    /// the capacity of the shared broadcast ring (tokio rounds it up to a power of two), so
    /// memory does not grow with subscribers.
    pub subscriber_buffer: usize,
    /// A frame write stalled this long means the consumer is too slow.
    pub write_timeout: Duration,
    /// Interval of server pings on subscriber connections. A subscriber that leaves two of
    /// them unanswered is closed.
    pub ping_interval: Duration,
    /// How often to check for commits by other processes (`PRAGMA data_version`); clamped to
    /// 10–500 ms. The default, 50 ms, keeps a negation written by the `label` CLI well within
    /// 100 ms of its subscribers for 20 cheap reads a second.
    pub poll_interval: Duration,
    /// Cap on open HTTP connections (WebSocket subscribers are counted by
    /// `max_subscribers` once upgraded); more are closed at once.
    pub max_connections: usize,
    /// Cap on open HTTP connections per client (an IPv4 address or an IPv6 /64, by TCP peer);
    /// trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    /// Cap on subscribeLabels connections per client (by `X-Forwarded-For` from trusted
    /// proxies, else the TCP peer); more are refused with 429 before the upgrade.
    pub max_subscribers_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Time a client has to send a whole request head; also how long a connection may sit
    /// idle between requests (see `listen`).
    pub header_read_timeout: Duration,
    /// How long `/xrpc/_health` waits for the database before reporting it unavailable.
    pub health_timeout: Duration,
    /// A mirror (`labeler mirror`): it serves the labels of `labeler_did` and nothing of the
    /// labeler's own state, so `getVerification` answers 501 naming that labeler.
    pub mirror: bool,
    /// Budgets of the console's methods (requestVerification, checkDomain).
    pub console: ConsoleLimits,
}

impl Default for Options {
    /// Production defaults. Ozone closes consumers 500 events behind; 8,192 frames (about
    /// 2 MB of shared frames) lets a healthy remote consumer ride out a burst such as a mass
    /// recheck. 30 s pings match indigo and rsky; `@atproto/ws-client` pings every 10 s itself.
    /// A 10 s header timeout is what a client on a poor link needs for a few hundred bytes
    /// (nginx allows 60 s, but it also buffers; we serve the request head directly). 2 s for
    /// the health probe answers within the usual probe deadlines (Docker 30 s, Kubernetes
    /// 1 s by default, so Kubernetes users raise `timeoutSeconds`).
    fn default() -> Options {
        Options {
            labeler_did: None,
            labeler_pds: None,
            max_subscribers: 1000,
            subscriber_buffer: 8192,
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_subscribers_per_ip: 32,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
            mirror: false,
            console: ConsoleLimits::default(),
        }
    }
}

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be read at startup.
    #[error("cannot start the XRPC server")]
    Store(#[from] store::Error),
    /// The listener failed.
    #[error("XRPC server failed")]
    Serve(#[from] std::io::Error),
}

/// The XRPC server. Construct with [`Server::new`], serve with [`Server::run`].
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
}

/// State shared by every handler and connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) options: Options,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// What the components say about themselves (read by `/xrpc/_health` and `/metrics`).
    pub(crate) health: Health,
    /// Live frames for subscribers. Capacity `subscriber_buffer`: the oldest frame is dropped
    /// for a receiver that falls that far behind, which then closes as too slow.
    pub(crate) live: broadcast::Sender<LiveFrame>,
    /// One permit per allowed subscriber connection.
    pub(crate) subscriber_slots: Arc<Semaphore>,
    /// Subscriber connections per client.
    pub(crate) subscribers_per_client: Arc<PerClient>,
    /// One permit per allowed HTTP connection.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// HTTP connections per client.
    pub(crate) connections_per_client: Arc<PerClient>,
    /// Permits to read a backfill page ([`subscribe::BACKFILL_READERS`]).
    pub(crate) backfill_slots: Semaphore,
    /// Permits for request work on the blocking pool ([`BLOCKING_QUERIES`]).
    query_slots: Arc<Semaphore>,
    /// The health probe's own permit: it never waits behind queries, and health checks
    /// arriving together do not pile up on the blocking pool.
    probe_slot: Arc<Semaphore>,
    /// Cancelled when the server stops: subscribers close, new ones are refused.
    pub(crate) stop: CancellationToken,
    /// Subscriber connections, so shutdown can wait for their goodbyes.
    pub(crate) tracker: TaskTracker,
    /// queryLabels latency, registered once (the hot path only records).
    pub(crate) query_latency: metrics::Histogram,
    /// Request counters by route and status, registered on first use.
    http_requests: HttpCounters,
    /// Open HTTP connections, and connections refused by each cap.
    pub(crate) open_connections: metrics::Gauge,
    pub(crate) refused_total: metrics::Counter,
    pub(crate) refused_per_client: metrics::Counter,
    /// The operator's console: its checker, budgets and preflight slots.
    pub(crate) console: console::Console,
}

/// Why the health probe could not read the database.
#[derive(Debug)]
pub(crate) enum ProbeError {
    /// It did not answer within `health_timeout`.
    Timeout(Duration),
    /// It answered with an error.
    Failed(XrpcError),
}

impl Shared {
    /// Refuses a method that needs the labeler's own state (attestations, a manager, a DNS
    /// checker) on a mirror, which holds only the labels: 501 naming the labeler to ask.
    pub(crate) fn labeler_only(&self) -> Result<(), XrpcError> {
        if self.options.mirror {
            let labeler = self.options.labeler_did.clone().unwrap_or_default();
            return Err(XrpcError::NotOnMirror(labeler));
        }
        Ok(())
    }

    /// The `src` of the labeler's labels: the configured `labelerDid`, or the did:key of the
    /// active signing key (read from the database, so a rotation shows at once). Blocking.
    pub(crate) fn src(&self, store: &Store) -> Result<Option<String>, store::Error> {
        match &self.options.labeler_did {
            Some(did) => Ok(Some(did.clone())),
            None => store.active_key(),
        }
    }

    /// Runs `f` on the blocking pool, at most [`BLOCKING_QUERIES`] at a time.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, XrpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, XrpcError> + Send + 'static,
    {
        run_limited(&self.query_slots, &self.store, f).await
    }

    /// Reads the database the way the read path does and returns the saved Jetstream cursor,
    /// within `health_timeout`, on the probe's own permit.
    pub(crate) async fn probe(&self) -> Result<Option<i64>, ProbeError> {
        let limit = self.options.health_timeout;
        let read = run_limited(&self.probe_slot, &self.store, |s| {
            s.ping()?;
            Ok(s.cursor()?)
        });
        match tokio::time::timeout(limit, read).await {
            Ok(r) => r.map_err(ProbeError::Failed),
            Err(_) => Err(ProbeError::Timeout(limit)),
        }
    }
}

/// Runs `f` on the blocking pool once a permit of `slots` is free.
///
/// The permit moves into the closure and is released only when `f` has returned (or
/// unwound), never when the caller stops waiting: a request timeout drops this future, but
/// `spawn_blocking` work cannot be cancelled and runs on, so a permit released with the future
/// would let timed-out scans pile up on the blocking pool beyond the cap.
async fn run_limited<T, F>(slots: &Arc<Semaphore>, store: &Store, f: F) -> Result<T, XrpcError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, XrpcError> + Send + 'static,
{
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(|e| XrpcError::Internal(Box::new(e)))?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f(&store)
    })
    .await
    .map_err(|e| XrpcError::Internal(Box::new(e)))?
}

impl Server {
    /// A server over `store`, reporting on the components in `health`. Does no I/O; the live
    /// feed starts in [`Server::run`].
    ///
    /// Metric handles are registered here, so the recorder (see
    /// [`telemetry::metrics_handle`]) must be installed before.
    pub fn new(
        store: Store,
        options: Options,
        metrics: Option<PrometheusHandle>,
        health: Health,
    ) -> Server {
        let mut options = options;
        options.poll_interval = options.poll_interval.clamp(MIN_POLL, MAX_POLL);
        let (live, _) = broadcast::channel(options.subscriber_buffer.max(1));
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let (open_connections, refused_total, refused_per_client) = listen::gauges();
        Server {
            shared: Arc::new(Shared {
                store,
                subscriber_slots: permits(options.max_subscribers),
                subscribers_per_client: PerClient::new(options.max_subscribers_per_ip),
                connection_slots: permits(options.max_connections),
                connections_per_client: PerClient::new(options.max_connections_per_ip),
                console: console::Console::new(&options.console),
                backfill_slots: Semaphore::new(subscribe::BACKFILL_READERS),
                query_slots: permits(BLOCKING_QUERIES),
                probe_slot: permits(1),
                options,
                metrics,
                health,
                live,
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                query_latency: metrics::histogram!(telemetry::QUERY_LATENCY),
                http_requests: HttpCounters::default(),
                open_connections,
                refused_total,
                refused_per_client,
            }),
        }
    }

    /// This server with `checker` for the console's preflights (`checkDomain`) and handle
    /// lookups (`getVerification?handle=`); without one those answer 501. The first checker
    /// set stays.
    pub fn with_checker(self, checker: crate::verify::Checker) -> Server {
        let _ = self.shared.console.checker.set(checker);
        self
    }

    /// The axum router: every route and the fallbacks. What every request gets besides (the
    /// request timeout, the body-size check, counting) is `guard`, applied by the accept
    /// loop with the connection limits.
    pub fn router(&self) -> Router {
        let shared = Arc::clone(&self.shared);
        Router::new()
            .route(
                "/xrpc/com.atproto.label.queryLabels",
                get(query::query_labels).fallback(wrong_method),
            )
            .route(
                listen::SUBSCRIBE_PATH,
                get(subscribe::subscribe_labels).fallback(wrong_method),
            )
            .route(
                "/xrpc/email.atmos.getVerification",
                get(lookup::get_verification).fallback(wrong_method),
            )
            .route(
                console::REQUEST_VERIFICATION_PATH,
                // The one route that reads a body (a DID).
                post(recheck::request_verification)
                    .fallback(wrong_method_post)
                    .layer(DefaultBodyLimit::max(MAX_BODY)),
            )
            .route(
                console::CHECK_DOMAIN_PATH,
                get(preflight::check_domain).fallback(wrong_method),
            )
            .route(
                "/xrpc/email.atmos.describeLabeler",
                get(console::describe_labeler).fallback(wrong_method),
            )
            .route("/", get(console::index).fallback(wrong_method))
            .route("/console.css", get(console::css).fallback(wrong_method))
            .route("/console.js", get(console::js).fallback(wrong_method))
            .route("/xrpc/_health", get(status::health).fallback(wrong_method))
            .route(
                "/.well-known/did.json",
                get(status::did_json).fallback(wrong_method),
            )
            .route("/metrics", get(status::metrics).fallback(wrong_method))
            .fallback(not_found)
            .with_state(shared)
    }

    /// Serves on `listener` and runs the live feed until `shutdown` is cancelled; then stops
    /// accepting, closes every subscriber with 1001 and returns. Bounded: in-flight requests
    /// get 2 s (`SHUTDOWN_GRACE`), subscribers another 2 s, so a misbehaving client cannot
    /// hold it.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let head = shared.store.call(|s| s.head_seq()).await?;
        // Running from here on: the supervisor's task exists before the first request.
        shared.health.update(|s| s.live_feed.running = true);
        let feed = tokio::spawn(live::run_supervised(
            shared.store.clone(),
            shared.live.clone(),
            shared.options.poll_interval,
            head,
            shared.health.clone(),
            shared.stop.clone(),
        ));
        if let Some(handle) = shared.metrics.clone() {
            tokio::spawn(metrics_upkeep(handle, shared.stop.clone()));
        }

        listen::serve(Arc::clone(&shared), listener, self.router(), shutdown).await;

        // Whatever ended serving, subscribers and the feed stop now.
        shared.stop.cancel();
        shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("subscribeLabels connections still closing after the shutdown grace");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, feed).await.is_err() {
            tracing::warn!("live feed still running after the shutdown grace");
        }
        Ok(())
    }
}

/// Drains the Prometheus recorder's histogram buffers now and then. `install_recorder` spawns
/// no upkeep task, and without one (or a scrape) every recorded queryLabels latency would be
/// kept until the next `/metrics` request.
///
/// It runs on the blocking pool: draining a few seconds of samples takes long enough to show
/// in the latency of requests queued behind it on a worker.
async fn metrics_upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                let handle = handle.clone();
                let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
            }
        }
    }
}

/// What a request's future resolves to, for hyper.
pub(super) type Guarded = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Runs one request through `router` with what every route gets: a `Content-Length` over
/// [`MAX_BODY`] is answered 413 unread, the request timeout ([`REQUEST_TIMEOUT`]) and the count
/// in `labeler_server_http_requests_total`. Only the routes that count per client
/// (subscribeLabels, the console's rate-limited methods) get `peer` (as a [`listen::Peer`]
/// extension): inserting it into every request would cost an allocation on the queryLabels
/// hot path that nothing there reads.
///
/// This is the connection's service rather than an axum middleware layer: a layer wraps
/// every route, clones the inner service and boxes two futures per request, and `queryLabels`
/// for one DID costs about 30 µs in all, so those allocations showed in its profile
/// (BENCHMARKS.md, "Read path"). Here it is one box.
pub(super) fn guard(
    shared: &Arc<Shared>,
    router: &mut Router,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Guarded {
    let route = Route::of(req.uri().path());
    if route.needs_peer() {
        req.extensions_mut().insert(listen::Peer(peer));
    }
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64);
    let shared = Arc::clone(shared);
    let call = (!too_large).then(|| tower_service::Service::call(router, req));
    Box::pin(async move {
        let response = match call {
            None => XrpcError::PayloadTooLarge.into_response(),
            Some(call) => match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => XrpcError::Timeout.into_response(),
            },
        };
        shared
            .http_requests
            .get(route, response.status())
            .increment(1);
        Ok(response)
    })
}

/// A known method called with the wrong verb.
async fn wrong_method(method: Method) -> XrpcError {
    XrpcError::WrongMethod(method)
}

/// A procedure called with the wrong verb.
async fn wrong_method_post(method: Method) -> XrpcError {
    XrpcError::ExpectedPost(method)
}

/// Anything unrouted: 501 for XRPC methods we do not implement, 404 elsewhere.
async fn not_found(req: Request) -> XrpcError {
    if req.uri().path().starts_with("/xrpc/") {
        XrpcError::MethodNotImplemented
    } else {
        XrpcError::NotFound
    }
}

/// Route label of `labeler_server_http_requests_total`.
#[derive(Clone, Copy, Debug)]
enum Route {
    QueryLabels,
    SubscribeLabels,
    GetVerification,
    RequestVerification,
    CheckDomain,
    DescribeLabeler,
    Console,
    Health,
    DidDocument,
    Metrics,
    Other,
}

impl Route {
    const ALL: [Route; 11] = [
        Route::QueryLabels,
        Route::SubscribeLabels,
        Route::GetVerification,
        Route::RequestVerification,
        Route::CheckDomain,
        Route::DescribeLabeler,
        Route::Console,
        Route::Health,
        Route::DidDocument,
        Route::Metrics,
        Route::Other,
    ];

    fn of(path: &str) -> Route {
        match path {
            "/xrpc/com.atproto.label.queryLabels" => Route::QueryLabels,
            listen::SUBSCRIBE_PATH => Route::SubscribeLabels,
            "/xrpc/email.atmos.getVerification" => Route::GetVerification,
            console::REQUEST_VERIFICATION_PATH => Route::RequestVerification,
            console::CHECK_DOMAIN_PATH => Route::CheckDomain,
            "/xrpc/email.atmos.describeLabeler" => Route::DescribeLabeler,
            "/" | "/console.css" | "/console.js" => Route::Console,
            "/xrpc/_health" => Route::Health,
            "/.well-known/did.json" => Route::DidDocument,
            "/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    /// Routes whose handlers count per client and so need the TCP peer.
    fn needs_peer(self) -> bool {
        matches!(
            self,
            Route::SubscribeLabels | Route::RequestVerification | Route::CheckDomain
        )
    }

    fn name(self) -> &'static str {
        match self {
            Route::QueryLabels => "com.atproto.label.queryLabels",
            Route::SubscribeLabels => "com.atproto.label.subscribeLabels",
            Route::GetVerification => "email.atmos.getVerification",
            Route::RequestVerification => "email.atmos.requestVerification",
            Route::CheckDomain => "email.atmos.checkDomain",
            Route::DescribeLabeler => "email.atmos.describeLabeler",
            Route::Console => "console",
            Route::Health => "_health",
            Route::DidDocument => "did.json",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// Status label values; statuses outside the list count as "other".
const STATUSES: [(u16, &str); 14] = [
    (101, "101"),
    (200, "200"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (426, "426"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (0, "other"),
];

/// `labeler_server_http_requests_total` handles per (route, status), created on first use so
/// the hot path is one atomic add with no key building or registry lookup.
#[derive(Debug, Default)]
struct HttpCounters {
    cells: [[OnceLock<metrics::Counter>; STATUSES.len()]; Route::ALL.len()],
}

impl HttpCounters {
    fn get(&self, route: Route, status: StatusCode) -> &metrics::Counter {
        let code = status.as_u16();
        let s = STATUSES
            .iter()
            .position(|&(c, _)| c == code)
            .unwrap_or(STATUSES.len() - 1);
        self.cells[route as usize][s].get_or_init(|| {
            metrics::counter!(
                telemetry::HTTP_REQUESTS,
                "route" => route.name(),
                "status" => STATUSES[s].1
            )
        })
    }
}

/// Entry point for `cargo fuzz` (`fuzz/`), compiled only into fuzz builds (`--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::unwrap_used)]
pub mod fuzzing {
    use crate::store::{Store, UriPattern};

    /// Parses a raw queryLabels query string; when it is valid, runs it through the server's
    /// query path against `store` and checks the page against a brute-force filter of every
    /// current label: same labels, same order, `cursor` exactly when the page is full.
    pub fn query_labels(store: &Store, raw: &str) {
        let Ok(q) = super::query::parse(raw) else {
            return;
        };
        let body = match super::query::page_json(store, &q, true).unwrap() {
            Some(b) => b,
            None => super::query::page_json(store, &q, false).unwrap().unwrap(),
        };
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let got: Vec<(String, String)> = page["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["uri"].as_str().unwrap().to_owned(),
                    l["val"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let matches = |uri: &str| {
            q.patterns.iter().any(|p| match p {
                UriPattern::Exact(e) => uri == e,
                UriPattern::Prefix(pre) => uri.starts_with(pre.as_str()),
            })
        };
        let want: Vec<(String, String)> = store
            .labels_after(q.after, usize::MAX >> 1)
            .unwrap()
            .into_iter()
            .filter(|l| matches(&l.signed.label.uri))
            .filter(|l| q.sources.is_empty() || q.sources.contains(&l.signed.label.src))
            .take(q.limit)
            .map(|l| (l.signed.label.uri, l.signed.label.val))
            .collect();
        assert_eq!(got, want, "query {raw:?}");
        assert_eq!(
            page.get("cursor").is_some(),
            got.len() == q.limit,
            "query {raw:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use std::sync::atomic::{AtomicBool, Ordering};

    const WAIT: Duration = Duration::from_secs(10);

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("labels.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_blocking_permit_is_held_until_the_closure_returns_though_the_caller_gave_up() {
        let (_dir, store) = temp_store();
        let slots = Arc::new(Semaphore::new(2));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let returned = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&returned);
        let mut call = Box::pin(run_limited(&slots, &store, move |_| {
            entered_tx.send(()).unwrap();
            // A long scan: it runs until the test lets it finish.
            release_rx.recv_timeout(WAIT).unwrap();
            done.store(true, Ordering::SeqCst);
            Ok(())
        }));
        let entered = tokio::task::spawn_blocking(move || entered_rx.recv_timeout(WAIT).is_ok());
        tokio::select! {
            _ = &mut call => panic!("the closure finished before it was released"),
            e = entered => assert!(e.unwrap(), "the closure started"),
        }
        // The caller stops waiting, as the request timeout does.
        drop(call);
        assert_eq!(
            slots.available_permits(),
            1,
            "the closure still running holds its permit"
        );
        release_tx.send(()).unwrap();
        let all = tokio::time::timeout(WAIT, slots.acquire_many(2))
            .await
            .expect("the permit comes back when the closure returns")
            .unwrap();
        assert!(returned.load(Ordering::SeqCst), "and not before");
        drop(all);
    }

    #[tokio::test]
    async fn health_reports_a_database_that_does_not_answer_in_time_as_unavailable() {
        let (_dir, store) = temp_store();
        let options = Options {
            health_timeout: Duration::from_millis(50),
            ..Options::default()
        };
        let server = Server::new(store, options, None, Health::new());
        let shared = Arc::clone(&server.shared);
        // A previous probe still stuck in the database holds the probe's permit.
        let _stuck = Arc::clone(&shared.probe_slot)
            .acquire_owned()
            .await
            .unwrap();
        let response = tokio::time::timeout(WAIT, status::health(State(shared)))
            .await
            .expect("health answers within its own deadline");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "unavailable");
        let error = body["components"]["database"]["error"].as_str().unwrap();
        assert!(error.contains("did not answer within 50ms"), "{error}");
    }

    #[tokio::test]
    async fn health_answers_while_every_query_permit_is_taken() {
        let (_dir, store) = temp_store();
        let server = Server::new(store, Options::default(), None, Health::new());
        let shared = Arc::clone(&server.shared);
        let _all = Arc::clone(&shared.query_slots)
            .acquire_many_owned(BLOCKING_QUERIES as u32)
            .await
            .unwrap();
        let response = tokio::time::timeout(WAIT, status::health(State(shared)))
            .await
            .expect("health does not wait for a query permit");
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn routes_map_to_their_counter_cells() {
        for r in Route::ALL {
            assert_eq!(Route::ALL[r as usize] as usize, r as usize);
        }
        assert!(matches!(Route::of("/xrpc/nope"), Route::Other));
    }
}
