//! The XRPC server: `com.atproto.label.queryLabels` (HTTP), `com.atproto.label.subscribeLabels`
//! (WebSocket), the operator's `email.atmos.getVerification`, `/xrpc/_health`, the did:web
//! document and `/metrics`.
//!
//! Specs implemented: <https://atproto.com/specs/xrpc> (errors, parameters, unknown methods → 501),
//! <https://atproto.com/specs/event-stream> (framing, cursors, errors), <https://atproto.com/specs/label> (label
//! distribution endpoints, labeler identity); the details and the reasoning are in
//! `docs/protocol.md` §3.2, §4, §5 and §7.
//!
//! Layout: `query` (queryLabels), `subscribe` (one task per stream subscriber), `live` (the
//! one task that publishes committed labels to subscribers), `status` (health, DID document,
//! metrics, verification state), `error` (the XRPC error enum that owns every status code),
//! `params` (raw query strings).
//!
//! HTTP routes run under a request timeout and a body limit; the WebSocket upgrade returns at
//! once and its connection lives in its own task outside both. [`Server::run`] owns the live
//! feed and the shutdown sequence: stop intake, close subscribers with 1001, return within a
//! bounded time.

mod error;
mod live;
mod params;
mod query;
mod status;
mod subscribe;

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::error::XrpcError;
use self::live::{LiveFeed, LiveFrame};
use crate::store::{self, Store};
use crate::telemetry;

/// Longest an HTTP request may take before it is answered with a timeout error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request body accepted. Every method here is a GET; this only bounds what a client
/// can make us read.
const MAX_BODY: usize = 16 * 1024;

/// Requests whose database work runs on the blocking pool at the same time (prefix and
/// source queries, getVerification, health). Each holds a pooled read connection: together
/// with the inline lookups (one per runtime worker), [`subscribe::BACKFILL_READERS`] and the
/// live feed this stays within the store's idle pool, so connections are reused rather than
/// opened per request, and with two cores more would only queue in the kernel instead.
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
    /// `src` of our labels; `/.well-known/did.json` is served only when it is a did:web.
    pub labeler_did: String,
    /// The `#atproto_label` public key as a Multikey (`zQ3s…`), for the DID document.
    pub label_key_multikey: String,
    /// Cap on concurrent subscribeLabels connections; more are refused with 503.
    pub max_subscribers: usize,
    /// Live frames a subscriber may fall behind by before it is closed as too slow. This is
    /// the capacity of the shared broadcast ring (tokio rounds it up to a power of two), so
    /// memory does not grow with subscribers.
    pub subscriber_buffer: usize,
    /// A frame write stalled this long means the consumer is too slow.
    pub write_timeout: Duration,
    /// Interval of server pings on idle subscriber connections.
    pub ping_interval: Duration,
    /// How often to check for commits by other processes (`PRAGMA data_version`); clamped to
    /// 10–500 ms.
    pub poll_interval: Duration,
}

impl Default for Options {
    /// Production defaults. Ozone closes consumers 500 events behind; 8,192 frames (about
    /// 2 MB of shared frames) lets a healthy remote consumer ride out a burst such as a mass
    /// recheck. 30 s pings match indigo and rsky; `@atproto/ws-client` pings every 10 s itself.
    fn default() -> Options {
        Options {
            labeler_did: String::new(),
            label_key_multikey: String::new(),
            max_subscribers: 1000,
            subscriber_buffer: 8192,
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
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
    /// Live frames for subscribers. Capacity `subscriber_buffer`: the oldest frame is dropped
    /// for a receiver that falls that far behind, which then closes as too slow.
    pub(crate) live: broadcast::Sender<LiveFrame>,
    /// One permit per allowed subscriber connection.
    pub(crate) subscriber_slots: Arc<Semaphore>,
    /// Permits to read a backfill page ([`subscribe::BACKFILL_READERS`]).
    pub(crate) backfill_slots: Semaphore,
    /// Permits for request work on the blocking pool ([`BLOCKING_QUERIES`]).
    query_slots: Semaphore,
    /// Cancelled when the server stops: subscribers close, new ones are refused.
    pub(crate) stop: CancellationToken,
    /// Subscriber connections, so shutdown can wait for their goodbyes.
    pub(crate) tracker: TaskTracker,
    /// The did:web document, when the labeler is a did:web.
    pub(crate) did_document: Option<String>,
    /// queryLabels latency, registered once (the hot path only records).
    pub(crate) query_latency: metrics::Histogram,
    /// Request counters by route and status, registered on first use.
    http_requests: HttpCounters,
}

impl Shared {
    /// Runs `f` on the blocking pool, at most [`BLOCKING_QUERIES`] at a time.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, XrpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, XrpcError> + Send + 'static,
    {
        let _slot = self
            .query_slots
            .acquire()
            .await
            .map_err(|e| XrpcError::Internal(Box::new(e)))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| XrpcError::Internal(Box::new(e)))?
    }
}

impl Server {
    /// A server over `store`. Does no I/O; the live feed starts in [`Server::run`].
    ///
    /// Metric handles are registered here, so the recorder (see
    /// [`telemetry::metrics_handle`]) must be installed before.
    pub fn new(store: Store, options: Options, metrics: Option<PrometheusHandle>) -> Server {
        let mut options = options;
        options.poll_interval = options.poll_interval.clamp(MIN_POLL, MAX_POLL);
        let (live, _) = broadcast::channel(options.subscriber_buffer.max(1));
        let did_document = status::did_document(&options.labeler_did, &options.label_key_multikey);
        Server {
            shared: Arc::new(Shared {
                store,
                subscriber_slots: Arc::new(Semaphore::new(options.max_subscribers)),
                backfill_slots: Semaphore::new(subscribe::BACKFILL_READERS),
                query_slots: Semaphore::new(BLOCKING_QUERIES),
                options,
                metrics,
                live,
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                did_document,
                query_latency: metrics::histogram!(telemetry::QUERY_LATENCY),
                http_requests: HttpCounters::default(),
            }),
        }
    }

    /// The axum router: every route, the fallbacks and the HTTP layers. Without
    /// [`Server::run`] nothing publishes live labels, so subscribers get backfill only.
    pub fn router(&self) -> Router {
        let shared = Arc::clone(&self.shared);
        Router::new()
            .route(
                "/xrpc/com.atproto.label.queryLabels",
                get(query::query_labels).fallback(wrong_method),
            )
            .route(
                "/xrpc/com.atproto.label.subscribeLabels",
                get(subscribe::subscribe_labels).fallback(wrong_method),
            )
            .route(
                "/xrpc/email.atmos.getVerification",
                get(status::get_verification).fallback(wrong_method),
            )
            .route("/xrpc/_health", get(status::health).fallback(wrong_method))
            .route(
                "/.well-known/did.json",
                get(status::did_json).fallback(wrong_method),
            )
            .route("/metrics", get(status::metrics).fallback(wrong_method))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                http_layer,
            ))
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
        let feed = LiveFeed::new(
            shared.store.clone(),
            shared.live.clone(),
            shared.options.poll_interval,
            head,
        );
        let feed = tokio::spawn(feed.run(shared.stop.clone()));
        if let Some(handle) = shared.metrics.clone() {
            tokio::spawn(metrics_upkeep(handle, shared.stop.clone()));
        }

        let listener = listener.tap_io(|tcp| {
            // Frames and small responses should leave at once, not wait for Nagle.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let stop = shared.stop.clone();
        let signal = async move {
            shutdown.cancelled().await;
            stop.cancel();
        };
        let serve = axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .into_future();
        let mut serve = tokio::spawn(serve);

        let result = tokio::select! {
            r = &mut serve => r,
            () = async {
                shared.stop.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("HTTP requests still running after the shutdown grace; dropping them");
                serve.abort();
                Ok(Ok(()))
            }
        };
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
        match result {
            Ok(r) => r.map_err(Error::Serve),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(Error::Serve(std::io::Error::other(e))),
        }
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

/// Request timeout, body limit and request counting for every HTTP route.
async fn http_layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = Route::of(req.uri().path());
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64);
    let response = if too_large {
        XrpcError::PayloadTooLarge.into_response()
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
            Ok(r) => r,
            Err(_) => XrpcError::Timeout.into_response(),
        }
    };
    shared
        .http_requests
        .get(route, response.status())
        .increment(1);
    response
}

/// A known method called with the wrong verb.
async fn wrong_method(method: Method) -> XrpcError {
    XrpcError::WrongMethod(method)
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
    Health,
    DidDocument,
    Metrics,
    Other,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::QueryLabels,
        Route::SubscribeLabels,
        Route::GetVerification,
        Route::Health,
        Route::DidDocument,
        Route::Metrics,
        Route::Other,
    ];

    fn of(path: &str) -> Route {
        match path {
            "/xrpc/com.atproto.label.queryLabels" => Route::QueryLabels,
            "/xrpc/com.atproto.label.subscribeLabels" => Route::SubscribeLabels,
            "/xrpc/email.atmos.getVerification" => Route::GetVerification,
            "/xrpc/_health" => Route::Health,
            "/.well-known/did.json" => Route::DidDocument,
            "/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Route::QueryLabels => "com.atproto.label.queryLabels",
            Route::SubscribeLabels => "com.atproto.label.subscribeLabels",
            Route::GetVerification => "email.atmos.getVerification",
            Route::Health => "_health",
            Route::DidDocument => "did.json",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// Status label values; statuses outside the list count as "other".
const STATUSES: [(u16, &str); 12] = [
    (101, "101"),
    (200, "200"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (426, "426"),
    (500, "500"),
    (501, "501"),
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

    #[test]
    fn routes_map_to_their_counter_cells() {
        for r in Route::ALL {
            assert_eq!(Route::ALL[r as usize] as usize, r as usize);
        }
        assert!(matches!(Route::of("/xrpc/nope"), Route::Other));
    }
}
