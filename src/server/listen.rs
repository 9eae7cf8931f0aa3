//! Accepting and serving connections: hyper's HTTP/1.1 server with a timer, under a cap on
//! open connections and a cap per client.
//!
//! What a connection may hold, and for how long:
//!
//! - **Header read timeout** (`header_read_timeout`, 10 s): a request head must arrive whole
//!   within it, however slowly its bytes trickle in (a slowloris sending one byte a second is
//!   cut off at the deadline, not kept alive by each byte). hyper starts the same timer
//!   whenever a connection waits for its next request head, so it is also the **idle
//!   keep-alive timeout**: a connection that sends nothing, or nothing more after its last
//!   response, is closed after it. Bodies are bounded separately (`MAX_BODY`), and a request
//!   in progress by the request timeout.
//! - **Open connections** (`max_connections`) and **connections per client**
//!   (`max_connections_per_ip`, by TCP peer address: an IPv4 address or an IPv6 /64). A
//!   connection over either cap is accepted and closed at once, so the kernel's backlog never
//!   fills with connections nobody will serve and the client learns at once.
//!
//! Why a per-client cap rather than evicting idle connections: a flood of idle connections
//! from one host then costs that host its own excess connections and nobody else anything,
//! and the check is one map update per *connection*, none per request. Eviction would need
//! to know, per request, whether each connection is idle, and a fast enough flood would evict
//! the fresh connections of legitimate clients before their first request arrives. A flood
//! spread over many hosts is bounded instead by `max_connections` together with the header
//! timeout: each connection it holds is gone within `header_read_timeout`.
//!
//! Trusted proxies (`trusted_proxies`) are exempt from the per-client connection cap: one
//! proxy carries many clients, and the cap would lock them all out together. (Subscribers
//! behind a proxy are still counted per client, by `X-Forwarded-For`; see `subscribe`.)
//!
//! A WebSocket upgrade ends the HTTP connection: its slots are given back when the upgraded
//! socket is handed to its subscriber task, which is counted by the subscriber caps instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{self, ClientSlot};
use super::{SHUTDOWN_GRACE, Shared};
use crate::telemetry;

/// Pause after an accept error that is not about one connection (out of file descriptors):
/// retrying at once would spin while nothing has been freed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The path of subscribeLabels, the one route that needs the client's address.
pub(super) const SUBSCRIBE_PATH: &str = "/xrpc/com.atproto.label.subscribeLabels";

/// The TCP peer of a request that counts per client (the subscriber cap, the console's budgets).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// What an accepted connection holds until it closes.
struct Admission {
    _total: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
    _gauge: ConnectionGauge,
}

/// Accepts on `listener` until `shutdown` is cancelled, then stops accepting, asks every open
/// connection to finish (`stop`, which also closes subscribers), and returns once they have,
/// or after [`SHUTDOWN_GRACE`], dropping the ones still open.
pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout);
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = shared.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept connections; pausing");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        let Some(admission) = admit(&shared, peer) else {
            // Dropping the stream closes it: the client sees the connection end at once.
            continue;
        };
        // Frames and small responses should leave at once, not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = PeerService {
            router: router.clone(),
            shared: Arc::clone(&shared),
            peer,
        };
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = shared.stop.clone();
        let force = force.clone();
        connections.spawn(async move {
            let _admission = admission;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, "HTTP connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    // Finish the request in flight, if any, then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = force.cancelled() => {}
                    }
                }
            }
        });
    }
    drop(listener);
    shared.stop.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after the shutdown grace; dropping them");
        force.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
    }
}

/// Takes the connection's slots, or refuses it (counted, logged at debug).
fn admit(shared: &Shared, peer: SocketAddr) -> Option<Admission> {
    let options = &shared.options;
    let client = if limits::is_trusted(&options.trusted_proxies, peer.ip()) {
        None
    } else {
        match shared.connections_per_client.try_acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                shared.refused_per_client.increment(1);
                tracing::debug!(%peer, "connection refused: too many from this client");
                return None;
            }
        }
    };
    let Ok(total) = Arc::clone(&shared.connection_slots).try_acquire_owned() else {
        shared.refused_total.increment(1);
        tracing::debug!(%peer, "connection refused: too many open connections");
        return None;
    };
    Some(Admission {
        _total: total,
        _client: client,
        _gauge: ConnectionGauge::new(shared.open_connections.clone()),
    })
}

/// Errors that concern one connection only (the peer gave up before we accepted it).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The router, serving one connection, each request through [`super::guard`] with the
/// connection's peer address.
#[derive(Clone)]
struct PeerService {
    router: Router,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = super::Guarded;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        // A `Router` is always ready (its `poll_ready` returns `Ready` unconditionally), so
        // calling it directly skips the readiness dance of a generic tower adapter.
        let mut router = self.router.clone();
        super::guard(&self.shared, &mut router, req, self.peer)
    }
}

/// Counts an open HTTP connection in `labeler_server_connections` for its lifetime.
struct ConnectionGauge(metrics::Gauge);

impl ConnectionGauge {
    fn new(gauge: metrics::Gauge) -> ConnectionGauge {
        gauge.increment(1.0);
        ConnectionGauge(gauge)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Metric handles of the listener, registered once.
pub(super) fn gauges() -> (metrics::Gauge, metrics::Counter, metrics::Counter) {
    (
        metrics::gauge!(telemetry::CONNECTIONS),
        metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => "total"),
        metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => "per_client"),
    )
}
