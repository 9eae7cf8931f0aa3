//! Logs and metrics.
//!
//! Logs go through `tracing`; the level comes from `RUST_LOG` (default `info`), the format from
//! `logFormat` (`text` or one JSON object per line). Metrics go through the `metrics` facade
//! into a Prometheus recorder rendered at `GET /metrics`. Every metric name lives here, named
//! `labeler_<component>_<what>_<unit|total>`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Jetstream events received, by `kind` (commit, identity, account, other).
pub const JETSTREAM_EVENTS: &str = "labeler_jetstream_events_total";
/// Jetstream events skipped, by `reason` (malformed, untracked, other-collection, …).
pub const JETSTREAM_SKIPPED: &str = "labeler_jetstream_skipped_total";
/// Jetstream (re)connections, by `outcome` (connected, failed).
pub const JETSTREAM_CONNECTS: &str = "labeler_jetstream_connects_total";
/// Seconds between now and the `time_us` of the last committed Jetstream event (the saved
/// cursor), computed at scrape time so it keeps rising while intake is stalled.
pub const JETSTREAM_LAG: &str = "labeler_jetstream_lag_seconds";
/// Seconds since the last Jetstream frame of any kind arrived (set at scrape time).
pub const JETSTREAM_FRAME_AGE: &str = "labeler_jetstream_last_frame_age_seconds";
/// 1 while a Jetstream session is open, else 0 (set at scrape time).
pub const JETSTREAM_CONNECTED: &str = "labeler_jetstream_connected";
/// Events or re-checks the manager could not process, by `reason`.
pub const MANAGER_FAILURES: &str = "labeler_manager_failures_total";
/// Verifications, by `outcome` (pass, fail, could-not-decide).
pub const VERIFICATIONS: &str = "labeler_verifications_total";
/// Labels created, by `val`.
pub const LABELS_CREATED: &str = "labeler_labels_created_total";
/// Labels negated, by `val`.
pub const LABELS_NEGATED: &str = "labeler_labels_negated_total";
/// Connected subscribeLabels clients.
pub const SUBSCRIBERS: &str = "labeler_server_subscribers";
/// Subscribers closed for being too slow.
pub const SUBSCRIBERS_TOO_SLOW: &str = "labeler_server_subscribers_too_slow_total";
/// queryLabels latency in seconds.
pub const QUERY_LATENCY: &str = "labeler_server_query_labels_seconds";
/// 1 while the labeler's own resolver cannot resolve its canary names.
pub const GUARD_RESOLVER_DEGRADED: &str = "labeler_guard_resolver_degraded";
/// 1 while the breaker holds withdrawals.
pub const GUARD_BREAKER_OPEN: &str = "labeler_guard_breaker_open";
/// Withdrawals held by the guard (degraded resolver or open breaker).
pub const GUARD_HELD: &str = "labeler_guard_withdrawals_held_total";
/// HTTP requests, by `route` and `status`.
pub const HTTP_REQUESTS: &str = "labeler_server_http_requests_total";
/// Open HTTP connections (not counting upgraded subscriber streams).
pub const CONNECTIONS: &str = "labeler_server_connections";
/// Connections closed on accept, by `reason` (`total`: `maxConnections`; `per_client`:
/// `maxConnectionsPerIp`).
pub const CONNECTIONS_REFUSED: &str = "labeler_server_connections_refused_total";
/// subscribeLabels requests refused by `maxSubscribersPerIp` (`reason="per_client"`).
pub const SUBSCRIBERS_REFUSED: &str = "labeler_server_subscribers_refused_total";
/// Subscribers closed for leaving two pings unanswered.
pub const SUBSCRIBERS_UNRESPONSIVE: &str = "labeler_server_subscribers_unresponsive_total";
/// Times the live label feed died and was restarted.
pub const LIVE_FEED_RESTARTS: &str = "labeler_server_live_feed_restarts_total";
/// Labels a mirror verified and stored.
pub const MIRROR_STORED: &str = "labeler_mirror_labels_stored_total";
/// Labels a mirror refused, by `reason` (`signature`, `src`, `malformed`, `shared-seq`).
pub const MIRROR_REFUSED: &str = "labeler_mirror_labels_refused_total";
/// A mirror's subscriptions to its upstream, by `outcome` (connected, failed).
pub const MIRROR_CONNECTS: &str = "labeler_mirror_connects_total";
/// Fetches of the upstream DID's key, by `outcome` (same, changed, failed).
pub const MIRROR_KEY_FETCHES: &str = "labeler_mirror_key_fetches_total";
/// 1 while a mirror's subscription to its upstream is open, else 0 (set at scrape time).
pub const MIRROR_CONNECTED: &str = "labeler_mirror_connected";
/// The upstream seq a mirror has dealt with (set at scrape time).
pub const MIRROR_CURSOR: &str = "labeler_mirror_cursor";
/// Seconds since a mirror last held everything its upstream sent; 0 while in sync (set at
/// scrape time).
pub const MIRROR_LAG: &str = "labeler_mirror_lag_seconds";
/// 1 once a mirror stopped following for good (`FutureCursor`), else 0.
pub const MIRROR_STOPPED: &str = "labeler_mirror_stopped";

/// An error with its whole `source()` chain on one line, `outer: cause: root cause`, for logs
/// and reasons. Display strings never repeat their source (the chain is printed once, here or
/// by `main`), so logging `%e` alone would lose the cause.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// Installs the tracing subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// The `metrics` facade has one global recorder; several daemons in one process (tests) share
/// it, which only means their counters add up.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(QUERY_LATENCY.to_owned()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is already installed: serve an empty, detached registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
