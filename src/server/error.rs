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
    /// A failure on our side (500). The cause is logged, never sent.
    #[error("Internal Server Error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl XrpcError {
    /// The HTTP status and the XRPC error name.
    fn status_and_name(&self) -> (StatusCode, &'static str) {
        match self {
            XrpcError::InvalidRequest(_) | XrpcError::WrongMethod(_) => {
                (StatusCode::BAD_REQUEST, "InvalidRequest")
            }
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
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
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
    fn wrong_method_uses_the_reference_wording() {
        let e = XrpcError::WrongMethod(Method::POST);
        assert_eq!(e.to_string(), "Incorrect HTTP method (POST) expected GET");
        assert_eq!(
            e.status_and_name(),
            (StatusCode::BAD_REQUEST, "InvalidRequest")
        );
    }
}
