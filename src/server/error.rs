//! XRPC errors: the one place that maps a failure to an HTTP status and a client-safe body.
//!
//! <https://atproto.com/specs/xrpc> "Error Responses": every error is a JSON object `{"error": <Name>,
//! "message": <text>}` served as `application/json`. Client errors name what was wrong; server
//! errors are logged here with their cause and answered with the generic "Internal Server
//! Error" (docs/protocol.md §7), so no internal detail ever reaches a client.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a client turned away by a subscriber cap is asked to wait (`Retry-After`).
const RETRY_AFTER_SECS: &str = "5";

/// An XRPC error response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum XrpcError {
    /// Malformed parameters (400 `InvalidRequest`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A known method called with the wrong HTTP verb (400 `InvalidRequest`, the wording of
    /// the reference `xrpc-server`).
    #[error("Incorrect HTTP method ({0}) expected GET")]
    WrongMethod(Method),
    /// A path under `/xrpc/` that names no method we serve (501).
    #[error("Method Not Implemented")]
    MethodNotImplemented,
    /// A method a mirror does not serve (501): it holds the labels of the labeler named,
    /// nothing else.
    #[error("This server mirrors the labels of {0}; ask that labeler for this method")]
    NotOnMirror(String),
    /// A path outside `/xrpc/` that we do not serve (404).
    #[error("Not Found")]
    NotFound,
    /// A plain GET on the WebSocket endpoint (426, <https://atproto.com/specs/event-stream>).
    #[error("com.atproto.label.subscribeLabels is a WebSocket endpoint: send Upgrade: websocket")]
    UpgradeRequired,
    /// The subscriber cap is reached (503 with `Retry-After`).
    #[error("Too many subscribers; retry later")]
    TooManySubscribers,
    /// This client holds its share of subscriber slots already (429 with `Retry-After`).
    #[error("Too many subscribers from this address (at most {0}); retry later")]
    TooManySubscribersFromClient(usize),
    /// The server is shutting down (503).
    #[error("The server is shutting down")]
    ShuttingDown,
    /// The request did not finish within the request timeout (503).
    #[error("The request timed out")]
    Timeout,
    /// The request body is larger than any method here accepts (413).
    #[error("Request body too large")]
    PayloadTooLarge,
    /// A procedure called with another verb (400 `InvalidRequest`).
    #[error("Incorrect HTTP method ({0}) expected POST")]
    ExpectedPost(Method),
    /// A client spent its budget for this method, or a DID was asked about too recently (429
    /// `RateLimitExceeded` with `Retry-After`).
    #[error("{message}")]
    RateLimitExceeded {
        /// What was limited, in words.
        message: String,
        /// When the next request would pass.
        retry_after: std::time::Duration,
    },
    /// requestVerification for a DID of which the labeler holds no attestation (400
    /// `UnknownDid`).
    #[error("{0}")]
    UnknownDid(String),
    /// A handle that does not resolve to a DID by DNS (400 `HandleNotFound`).
    #[error("{0}")]
    HandleNotFound(String),
    /// The DNS lookup for a handle failed (502 `UpstreamFailure`).
    #[error("{0}")]
    UpstreamFailure(String),
    /// Every preflight slot is busy (503 `TooManyPreflights` with `Retry-After`).
    #[error("Too many domain checks are running; retry in a few seconds")]
    TooManyPreflights,
    /// A failure on our side (500). The cause is logged, never sent.
    #[error("Internal Server Error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl XrpcError {
    /// The HTTP status and the XRPC error name.
    fn status_and_name(&self) -> (StatusCode, &'static str) {
        match self {
            XrpcError::InvalidRequest(_)
            | XrpcError::WrongMethod(_)
            | XrpcError::ExpectedPost(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            XrpcError::RateLimitExceeded { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "RateLimitExceeded")
            }
            XrpcError::UnknownDid(_) => (StatusCode::BAD_REQUEST, "UnknownDid"),
            XrpcError::HandleNotFound(_) => (StatusCode::BAD_REQUEST, "HandleNotFound"),
            XrpcError::UpstreamFailure(_) => (StatusCode::BAD_GATEWAY, "UpstreamFailure"),
            XrpcError::TooManyPreflights => (StatusCode::SERVICE_UNAVAILABLE, "TooManyPreflights"),
            XrpcError::MethodNotImplemented | XrpcError::NotOnMirror(_) => {
                (StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented")
            }
            XrpcError::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            XrpcError::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, "InvalidRequest"),
            XrpcError::TooManySubscribers => {
                (StatusCode::SERVICE_UNAVAILABLE, "TooManySubscribers")
            }
            XrpcError::TooManySubscribersFromClient(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "TooManySubscribers")
            }
            XrpcError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            XrpcError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "RequestTimeout"),
            XrpcError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            XrpcError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"),
        }
    }
}

impl From<crate::store::Error> for XrpcError {
    fn from(e: crate::store::Error) -> XrpcError {
        XrpcError::Internal(Box::new(e))
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        let (status, name) = self.status_and_name();
        if let XrpcError::Internal(cause) = &self {
            tracing::error!(error = %crate::telemetry::Chain(cause.as_ref()), "internal error answering an XRPC request");
        }
        let body = serde_json::json!({ "error": name, "message": self.to_string() });
        let mut response = (status, json_body(body.to_string())).into_response();
        if matches!(
            self,
            XrpcError::TooManySubscribers
                | XrpcError::TooManySubscribersFromClient(_)
                | XrpcError::ShuttingDown
                | XrpcError::TooManyPreflights
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let XrpcError::RateLimitExceeded { retry_after, .. } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_secs(*retry_after)),
            );
        }
        response
    }
}

/// Whole seconds to wait (RFC 9110 §10.2.3 `Retry-After` is delay-seconds), rounded up so a
/// client that waits that long is let through, and at least 1.
pub(crate) fn retry_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A response body with `Content-Type: application/json`.
pub(crate) fn json_body(body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = XrpcError::Internal("disk on fire at /var/lib/labeler".into());
        assert_eq!(e.to_string(), "Internal Server Error");
        assert_eq!(e.status_and_name().0, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn rate_limits_ask_for_whole_seconds_rounded_up() {
        use std::time::Duration;
        assert_eq!(retry_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(retry_secs(Duration::from_secs(60)), 60);
        assert_eq!(retry_secs(Duration::ZERO), 1);
        let r = XrpcError::RateLimitExceeded {
            message: "slow down".to_owned(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn wrong_method_uses_the_reference_wording() {
        let e = XrpcError::WrongMethod(Method::POST);
        assert_eq!(e.to_string(), "Incorrect HTTP method (POST) expected GET");
        assert_eq!(
            e.status_and_name(),
            (StatusCode::BAD_REQUEST, "InvalidRequest")
        );
    }
}
