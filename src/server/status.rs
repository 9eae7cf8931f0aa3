//! The operational endpoints: `/xrpc/_health`, `/.well-known/did.json`, `/metrics` and
//! `email.atmos.getVerification` (docs/protocol.md §3.2, §7).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::error::{XrpcError, json_body};
use super::params;
use crate::label::format_datetime;
use crate::store::Attestation;

/// NSID of the attestation records whose verification state is reported.
pub(crate) const ATTESTATION_NSID: &str = "email.atmos.attestation";

/// `GET /xrpc/_health`: `{"version"}`, or 503 with `"error": "Service Unavailable"` when the
/// database does not answer (the shape Ozone and skyware use).
pub(crate) async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    match shared.blocking(|s| Ok(s.ping()?)).await {
        Ok(()) => json_body(json!({ "version": version }).to_string()),
        Err(e) => {
            tracing::warn!(error = ?e, "health check: database unreachable");
            let body = json!({ "version": version, "error": "Service Unavailable" });
            (StatusCode::SERVICE_UNAVAILABLE, json_body(body.to_string())).into_response()
        }
    }
}

/// The did:web document for `labeler_did`, or `None` when the DID is not a did:web of a bare
/// host (a did:web with a path is served under that path, not `/.well-known`).
///
/// <https://atproto.com/specs/label> "Labeler Service Identity", <https://atproto.com/specs/did>: one `#atproto_label`
/// Multikey verification method and one `#atproto_labeler` service at `https://<host>`, no
/// path. The port, if any, is percent-encoded in the DID (`did:web:localhost%3A8080`).
pub(crate) fn did_document(did: &str, multikey: &str) -> Option<String> {
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
    Some(doc.to_string())
}

/// `GET /.well-known/did.json`.
pub(crate) async fn did_json(State(shared): State<Arc<Shared>>) -> Result<Response, XrpcError> {
    match &shared.did_document {
        Some(doc) => Ok(json_body(doc.clone())),
        None => Err(XrpcError::NotFound),
    }
}

/// `GET /metrics`: Prometheus text exposition, or 404 when metrics are off.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, XrpcError> {
    let handle = shared.metrics.as_ref().ok_or(XrpcError::NotFound)?;
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `GET /xrpc/email.atmos.getVerification?did=<did>`: the latest verification state of each
/// of the DID's attestations and the labels this labeler holds on it. An unknown DID is not an
/// error: both arrays are empty.
pub(crate) async fn get_verification(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
) -> Result<Response, XrpcError> {
    let mut did = None;
    for pair in params::pairs(uri.query().unwrap_or("")) {
        let (key, value) = pair?;
        if key == "did" {
            did = Some(value.into_owned());
        }
    }
    let did = did.ok_or_else(|| {
        XrpcError::InvalidRequest("Error: Params must have the property \"did\"".to_owned())
    })?;
    if !crate::syntax::is_did(&did) {
        let shown: String = did.chars().take(100).collect();
        return Err(XrpcError::InvalidRequest(format!(
            "did must be a DID; got {shown:?}"
        )));
    }
    let labeler = shared.options.labeler_did.clone();
    let subject = did.clone();
    let (attestations, labels, refusals) = shared
        .blocking(move |s| {
            Ok((
                s.attestations_for(&subject)?,
                s.current_labels(&labeler, &subject)?,
                s.refusals_for(&subject)?,
            ))
        })
        .await?;
    let refused: Vec<Value> = refusals
        .iter()
        .map(|r| {
            json!({
                "uri": format!("at://{did}/{ATTESTATION_NSID}/{}", r.rkey),
                "reason": r.reason,
                "refusedAt": datetime_ms(r.at_ms),
            })
        })
        .collect();
    let attestations: Vec<Value> = attestations.iter().map(attestation_json).collect();
    let labels: Vec<Value> = labels
        .iter()
        .map(|l| serde_json::to_value(&l.signed))
        .collect::<Result<_, _>>()
        .map_err(|e| XrpcError::Internal(Box::new(e)))?;
    let body = json!({
        "did": did,
        "attestations": attestations,
        "labels": labels,
        "refused": refused,
    });
    Ok(json_body(body.to_string()))
}

/// One attestation's state in the getVerification output.
fn attestation_json(a: &Attestation) -> Value {
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
fn datetime_ms(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    format_datetime(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_did_documents_only_for_bare_did_web_hosts() {
        let doc: Value =
            serde_json::from_str(&did_document("did:web:localhost%3A8080", "zQ3sX").unwrap())
                .unwrap();
        assert_eq!(
            doc["service"][0]["serviceEndpoint"],
            "https://localhost:8080"
        );
        assert_eq!(
            doc["verificationMethod"][0]["id"],
            "did:web:localhost%3A8080#atproto_label"
        );
        assert!(did_document("did:plc:ewvi7nxzyoun6zhxrhs64oiz", "zQ3sX").is_none());
        assert!(did_document("did:web:example.com:user:alice", "zQ3sX").is_none());
        assert!(did_document("", "zQ3sX").is_none());
    }

    #[test]
    fn milliseconds_format_as_utc_datetimes_clamped_at_the_epoch() {
        assert_eq!(datetime_ms(1_790_000_000_123), "2026-09-21T14:13:20.123Z");
        assert_eq!(datetime_ms(-5), "1970-01-01T00:00:00.000Z");
    }
}
