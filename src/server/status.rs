//! The operational endpoints: `/xrpc/_health`, `/.well-known/did.json`, `/metrics`, and the
//! attestation view of `email.atmos.getVerification` (served by `lookup`; docs/protocol.md
//! §3.2, §7).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::error::{XrpcError, json_body};
use super::{ProbeError, Shared};
use crate::health;
use crate::label::format_datetime;
use crate::store::Attestation;
use crate::telemetry;

/// NSID of the attestation records whose verification state is reported.
pub(crate) const ATTESTATION_NSID: &str = "email.atmos.attestation";

/// `GET /xrpc/_health`: the state of each component, and the overall verdict.
///
/// 200 while the read path works (the database answers a read within `health_timeout`), with
/// `"status": "degraded"` when some component is unhappy (Jetstream disconnected, the live
/// feed restarting, the guard's breaker open or its resolver failing) and `"ok"` otherwise;
/// 503 with `"status": "unavailable"` and `"error": "Service Unavailable"` (the shape Ozone
/// and skyware use) only when the database does not answer. `version` is always there.
///
/// The database probe has its own permit ([`Shared::probe`]), so health checks never queue
/// behind queries, and it is bounded in time, so a hung disk reads as unavailable rather
/// than as a health check that never answers.
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let probe = shared.probe().await;
    match &probe {
        Ok(_) => {}
        Err(ProbeError::Timeout(limit)) => {
            tracing::warn!(timeout = ?limit, "health check: the database did not answer in time");
        }
        Err(ProbeError::Failed(e)) => {
            tracing::warn!(error = %telemetry::Chain(e), "health check: the database cannot be read");
        }
    }
    let state = shared.health.snapshot();
    let (status, body) = report(&probe, &state, SystemTime::now(), Instant::now());
    (status, json_body(body.to_string())).into_response()
}

/// The health body for a database probe result and the components' state.
pub(crate) fn report(
    probe: &Result<Option<i64>, ProbeError>,
    state: &health::State,
    now: SystemTime,
    now_mono: Instant,
) -> (StatusCode, Value) {
    let mut components = Map::new();
    let mut degraded = false;

    let database = match probe {
        Ok(_) => json!({ "status": "ok" }),
        Err(ProbeError::Timeout(limit)) => json!({
            "status": "unavailable",
            "error": format!("the database did not answer within {limit:?}"),
        }),
        // The cause is logged; it may name files, which a public endpoint should not.
        Err(ProbeError::Failed(_)) => json!({
            "status": "unavailable",
            "error": "the database cannot be read",
        }),
    };
    components.insert("database".to_owned(), database);

    if let Some(j) = &state.jetstream {
        degraded |= !j.connected;
        let mut v = json!({
            "status": if j.connected { "ok" } else { "disconnected" },
            "connected": j.connected,
            "since": j.since.map(format_datetime),
            "lastFrameSecondsAgo": j.last_frame.map(|t| seconds(now_mono.saturating_duration_since(t))),
            "lastError": j.last_error,
        });
        if let Ok(Some(cursor)) = probe {
            v["lagSeconds"] = json!(lag_seconds(*cursor, now));
        }
        components.insert("jetstream".to_owned(), v);
    }

    let feed = &state.live_feed;
    degraded |= !feed.running;
    components.insert(
        "liveFeed".to_owned(),
        json!({
            "status": if feed.running { "ok" } else { "restarting" },
            "running": feed.running,
            "restarts": feed.restarts,
            "lastError": feed.last_error,
        }),
    );

    if let Some(g) = &state.guard {
        let status = if g.breaker_open_since.is_some() {
            "breaker-open"
        } else if g.resolver_degraded.is_some() {
            "resolver-degraded"
        } else {
            "ok"
        };
        degraded |= status != "ok";
        components.insert(
            "guard".to_owned(),
            json!({
                "status": status,
                "resolverDegraded": g.resolver_degraded,
                "breakerOpenSince": g.breaker_open_since.map(format_datetime),
                "breakerReason": g.breaker_reason,
                "held": g.held,
            }),
        );
    }

    if let Some(u) = &state.upstream {
        let status = if u.stopped.is_some() {
            "stopped"
        } else if !u.connected {
            "disconnected"
        } else if !u.in_sync {
            "catching-up"
        } else {
            "ok"
        };
        degraded |= status != "ok";
        components.insert(
            "upstream".to_owned(),
            json!({
                "status": status,
                "url": u.url,
                "connected": u.connected,
                "since": u.since.map(format_datetime),
                "lastFrameSecondsAgo": u.last_frame.map(|t| seconds(now_mono.saturating_duration_since(t))),
                "cursor": u.cursor,
                "lagSeconds": u.lag(now_mono).map(seconds),
                "refused": u.refused,
                "lastError": u.last_error,
                "stopped": u.stopped,
            }),
        );
    }

    let version = env!("CARGO_PKG_VERSION");
    if probe.is_err() {
        let body = json!({
            "version": version,
            "status": "unavailable",
            "error": "Service Unavailable",
            "components": components,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    let status = if degraded { "degraded" } else { "ok" };
    let body = json!({ "version": version, "status": status, "components": components });
    (StatusCode::OK, body)
}

/// Seconds from a Jetstream `time_us` to `now` (0 for a cursor in the future).
fn lag_seconds(cursor_us: i64, now: SystemTime) -> f64 {
    let now_us = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    (now_us.saturating_sub(cursor_us).max(0)) as f64 / 1e6
}

/// A duration in seconds, to the millisecond.
fn seconds(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// The did:web document for `labeler_did`, or `None` when the DID is not a did:web of a bare
/// host (a did:web with a path is served under that path, not `/.well-known`).
///
/// <https://atproto.com/specs/label> "Labeler Service Identity", <https://atproto.com/specs/did>: one `#atproto_label`
/// Multikey verification method and one `#atproto_labeler` service at `https://<host>`, no
/// path. The port, if any, is percent-encoded in the DID (`did:web:localhost%3A8080`).
pub(crate) fn did_document(did: &str, multikey: &str, pds: Option<&str>) -> Option<String> {
    let host = did.strip_prefix("did:web:")?;
    if host.is_empty() || host.contains(':') || !crate::syntax::is_did(did) {
        return None;
    }
    let host = host.replace("%3A", ":").replace("%3a", ":");
    let doc = json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1"
        ],
        "id": did,
        "verificationMethod": [{
            "id": format!("{did}#atproto_label"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": multikey,
        }],
        "service": [{
            "id": "#atproto_labeler",
            "type": "AtprotoLabeler",
            "serviceEndpoint": format!("https://{host}"),
        }],
    });
    // The labeler account's repo (its app.bsky.labeler.service record) lives on a PDS that
    // clients find through `#atproto_pds` (https://atproto.com/specs/did).
    let mut doc = doc;
    if let (Some(pds), Some(services)) = (pds, doc["service"].as_array_mut()) {
        services.push(json!({
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": pds,
        }));
    }
    Some(doc.to_string())
}

/// `GET /.well-known/did.json`: the did:web document with the active key, read from the
/// database per request so a key rotation is served at once.
pub(crate) async fn did_json(State(shared): State<Arc<Shared>>) -> Result<Response, XrpcError> {
    let Some(did) = shared.options.labeler_did.clone() else {
        return Err(XrpcError::NotFound);
    };
    let active = shared.blocking(|s| Ok(s.active_key()?)).await?;
    let multikey = active
        .as_deref()
        .and_then(|k| k.strip_prefix(crate::keys::DID_KEY_PREFIX))
        .ok_or(XrpcError::NotFound)?;
    did_document(&did, multikey, shared.options.labeler_pds.as_deref())
        .map(json_body)
        .ok_or(XrpcError::NotFound)
}

/// `GET /metrics`: Prometheus text exposition, or 404 when metrics are off.
///
/// The Jetstream gauges are set here, at scrape time, from the saved cursor and the consumer's
/// state: set per event, the lag would freeze at its last value exactly when events stop
/// arriving, which is when it matters.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, XrpcError> {
    let handle = shared.metrics.as_ref().ok_or(XrpcError::NotFound)?;
    let state = shared.health.snapshot();
    if let Some(j) = &state.jetstream {
        metrics::gauge!(telemetry::JETSTREAM_CONNECTED).set(if j.connected { 1.0 } else { 0.0 });
        if let Some(t) = j.last_frame {
            metrics::gauge!(telemetry::JETSTREAM_FRAME_AGE).set(t.elapsed().as_secs_f64());
        }
        if let Ok(Some(cursor)) = shared.probe().await {
            metrics::gauge!(telemetry::JETSTREAM_LAG).set(lag_seconds(cursor, SystemTime::now()));
        }
    }
    if let Some(u) = &state.upstream {
        metrics::gauge!(telemetry::MIRROR_CONNECTED).set(if u.connected { 1.0 } else { 0.0 });
        metrics::gauge!(telemetry::MIRROR_STOPPED).set(if u.stopped.is_some() { 1.0 } else { 0.0 });
        if let Some(c) = u.cursor {
            metrics::gauge!(telemetry::MIRROR_CURSOR).set(c as f64);
        }
        if let Some(lag) = u.lag(Instant::now()) {
            metrics::gauge!(telemetry::MIRROR_LAG).set(lag.as_secs_f64());
        }
    }
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// One attestation's state in the getVerification output.
pub(super) fn attestation_json(a: &Attestation) -> Value {
    let mut v = json!({
        "uri": format!("at://{}/{ATTESTATION_NSID}/{}", a.did, a.rkey),
        "domain": a.domain,
        "dkimSelectors": a.selectors,
        "verdict": a.verdict.as_str(),
        "verified": a.standing,
        "relayMember": a.relay_member,
        "nextCheckAt": datetime_ms(a.next_check_ms),
    });
    let mut report = stored_report(a);
    v["checks"] = report.remove("checks").unwrap_or_else(|| json!([]));
    if let Some(by) = report.remove("confirmedBy") {
        v["confirmedBy"] = by;
    }
    if let Some(notes) = report.remove("notes") {
        v["notes"] = notes;
    }
    if let Some(cid) = &a.record_cid {
        v["cid"] = json!(cid);
    }
    if let Some(ms) = a.checked_ms {
        v["checkedAt"] = json!(datetime_ms(ms));
    }
    v
}

/// The stored report's fields, passed through; empty when there is no report or it cannot be
/// read (logged: it means a bug or a hand-edited row, not a client error).
fn stored_report(a: &Attestation) -> serde_json::Map<String, Value> {
    let Some(report) = &a.report else {
        return serde_json::Map::new();
    };
    match serde_json::from_str::<Value>(report) {
        Ok(Value::Object(report)) => report,
        Ok(_) | Err(_) => {
            tracing::warn!(did = %a.did, rkey = %a.rkey, "stored verification report is not a JSON object");
            serde_json::Map::new()
        }
    }
}

/// Unix milliseconds as an atproto datetime (`2026-11-20T10:00:00.000Z`); times before 1970
/// are clamped to the epoch.
pub(super) fn datetime_ms(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    format_datetime(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_did_documents_only_for_bare_did_web_hosts() {
        let doc: Value =
            serde_json::from_str(&did_document("did:web:localhost%3A8080", "zQ3sX", None).unwrap())
                .unwrap();
        assert_eq!(
            doc["service"][0]["serviceEndpoint"],
            "https://localhost:8080"
        );
        assert_eq!(
            doc["verificationMethod"][0]["id"],
            "did:web:localhost%3A8080#atproto_label"
        );
        assert!(did_document("did:plc:ewvi7nxzyoun6zhxrhs64oiz", "zQ3sX", None).is_none());
        assert!(did_document("did:web:example.com:user:alice", "zQ3sX", None).is_none());
        assert!(did_document("", "zQ3sX", None).is_none());
    }

    #[test]
    fn health_is_degraded_by_any_unhappy_component_and_503_only_without_the_database() {
        let now = SystemTime::now();
        let mono = Instant::now();
        let mut state = health::State {
            live_feed: health::LiveFeed {
                running: true,
                restarts: 3,
                last_error: Some("its read task failed".to_owned()),
            },
            ..health::State::default()
        };
        let (status, body) = report(&Ok(None), &state, now, mono);
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        assert_eq!(
            body["components"]["liveFeed"]["restarts"], 3,
            "restarted, running: ok"
        );
        assert!(
            body["components"].get("jetstream").is_none(),
            "absent component, absent key"
        );

        state.live_feed.running = false;
        let (status, body) = report(&Ok(None), &state, now, mono);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["components"]["liveFeed"]["status"], "restarting");

        state.live_feed.running = true;
        state.jetstream = Some(health::Jetstream {
            connected: true,
            since: Some(now),
            last_frame: Some(mono),
            last_error: None,
        });
        let cursor = now - Duration::from_secs(30);
        let cursor_us = cursor
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let (status, body) = report(&Ok(Some(cursor_us)), &state, now, mono);
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        let j = &body["components"]["jetstream"];
        assert_eq!(j["lagSeconds"], 30.0);
        assert_eq!(j["lastFrameSecondsAgo"], 0.0);
        assert_eq!(j["since"], format_datetime(now));

        let failed = Err(ProbeError::Failed(XrpcError::Internal("disk gone".into())));
        let (status, body) = report(&failed, &state, now, mono);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["error"], "Service Unavailable");
        assert!(
            !body.to_string().contains("disk gone"),
            "causes stay in the log"
        );
        assert!(body["components"]["jetstream"].get("lagSeconds").is_none());
    }

    #[test]
    fn milliseconds_format_as_utc_datetimes_clamped_at_the_epoch() {
        assert_eq!(datetime_ms(1_790_000_000_123), "2026-09-21T14:13:20.123Z");
        assert_eq!(datetime_ms(-5), "1970-01-01T00:00:00.000Z");
    }
}
