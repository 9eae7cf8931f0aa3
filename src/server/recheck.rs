//! `POST /xrpc/email.atmos.requestVerification` with `{"did": "<DID>"}`: "check again now".
//!
//! It makes the DID's attestations due now in the store ([`crate::store::Store::request_recheck`]);
//! the scheduler, woken by the commit, hands them to the manager like any scheduled re-check, so
//! the same rules apply (the record confirmed at the PDS, a failure confirmed from a second
//! vantage point, the guard). `labeler recheck DID` does the same from another process.
//!
//! Budgets (429 `RateLimitExceeded` with `Retry-After`): the client's first, before anything is
//! parsed, so malformed floods are counted too; then once per DID per minute, whoever asks.
//! A DID of which the labeler holds no attestation is a 400 `UnknownDid` saying so (and spends
//! no DID budget: its limiter only ever holds DIDs the labeler knows).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::console::{client_of, limited};
use super::error::{XrpcError, json_body};
use super::listen::Peer;

/// The handler.
pub(crate) async fn request_verification(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, XrpcError> {
    shared.labeler_only()?;
    let client = client_of(&shared, peer, &headers);
    shared
        .console
        .recheck_per_client
        .check(&client)
        .map_err(|wait| limited("Too many re-check requests from this address", wait))?;
    let did = parse(&headers, body)?;
    let subject = did.clone();
    let state = Arc::clone(&shared);
    let count = shared
        .blocking(move |s| {
            // A DID never seen is refused before it can spend (or be limited by) a DID budget.
            if s.attestations_for(&subject)?.is_empty() {
                return Ok(0);
            }
            state
                .console
                .recheck_per_did
                .check(&subject)
                .map_err(|wait| {
                    limited(
                        &format!("{subject} was re-checked less than a minute ago"),
                        wait,
                    )
                })?;
            Ok(s.request_recheck(&subject, now_ms())?)
        })
        .await?;
    if count == 0 {
        return Err(XrpcError::UnknownDid(format!(
            "the labeler holds no attestation for {did}: publish an email.atmos.attestation record in its repo first (it is seen within seconds)"
        )));
    }
    tracing::info!(%did, attestations = count, "re-check requested");
    let body = json!({ "queued": true, "did": did, "attestations": count });
    Ok(json_body(body.to_string()))
}

/// The DID from a JSON body (`Content-Type: application/json`).
fn parse(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<String, XrpcError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(XrpcError::InvalidRequest(
            "Wrong request encoding (Content-Type): expected application/json".to_owned(),
        ));
    }
    let body = body.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            XrpcError::PayloadTooLarge
        } else {
            XrpcError::InvalidRequest("the request body could not be read".to_owned())
        }
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| XrpcError::InvalidRequest(format!("the body is not JSON: {e}")))?;
    let did = value.get("did").and_then(Value::as_str).ok_or_else(|| {
        XrpcError::InvalidRequest("Input must have the property \"did\"".to_owned())
    })?;
    if !crate::syntax::is_did(did) {
        let shown: String = did.chars().take(100).collect();
        return Err(XrpcError::InvalidRequest(format!(
            "did must be a DID; got {shown:?}"
        )));
    }
    Ok(did.to_owned())
}

/// Wall-clock unix milliseconds (the daemon's scheduling clock in production).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
