//! Stub of the server interface (replaced by the server branch).
#![allow(missing_docs, unreachable_pub, clippy::unused_async)]
use std::time::Duration;
#[derive(Clone, Debug)]
pub struct Options {
    pub labeler_did: String,
    pub label_key_multikey: String,
    pub max_subscribers: usize,
    pub subscriber_buffer: usize,
    pub write_timeout: Duration,
    pub ping_interval: Duration,
    pub poll_interval: Duration,
}
impl Default for Options {
    fn default() -> Options {
        Options {
            labeler_did: String::new(),
            label_key_multikey: String::new(),
            max_subscribers: 1000,
            subscriber_buffer: 1000,
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
        }
    }
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct Error;
pub struct Server;
impl Server {
    pub fn new(
        _s: crate::store::Store,
        _o: Options,
        _m: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Server {
        Server
    }
    pub async fn run(
        self,
        _l: tokio::net::TcpListener,
        s: tokio_util::sync::CancellationToken,
    ) -> Result<(), Error> {
        s.cancelled().await;
        Ok(())
    }
}
