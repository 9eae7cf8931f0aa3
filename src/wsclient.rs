//! The one way this daemon opens an outgoing WebSocket (Jetstream, a mirror's upstream):
//! bounded message size, a connect deadline, shutdown honoured, and a refusal reported with
//! the HTTP status and the start of the body, which is where servers put the reason.

use std::time::Duration;

use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;

/// A client WebSocket over plain TCP or TLS.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How much of a refusal's body the error quotes.
const REFUSAL_BODY_BYTES: usize = 300;

/// Opens a WebSocket to `url` accepting messages of up to `max_message_bytes`, giving up
/// after `timeout`. `Ok(None)` when `shutdown` fires first; `Err` is a one-line reason for
/// the log and the health report, naming `peer` ("the upstream", "Jetstream").
pub(crate) async fn connect(
    url: &str,
    max_message_bytes: usize,
    timeout: Duration,
    peer: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Ws>, String> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let attempt = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    );
    tokio::select! {
        () = shutdown.cancelled() => Ok(None),
        r = attempt => match r {
            Err(_) => Err(format!("connecting took longer than {timeout:?}")),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| {
                        String::from_utf8_lossy(&b[..b.len().min(REFUSAL_BODY_BYTES)]).into_owned()
                    })
                    .unwrap_or_default();
                Err(format!("{peer} refused the subscription: HTTP {} {body}", resp.status()))
            }
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Ok(Ok((ws, _))) => Ok(Some(ws)),
        }
    }
}
