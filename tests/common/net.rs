//! Raw clients for the connection-limit tests: TCP connections from a chosen loopback address
//! (127.0.0.2, 127.0.0.3, … are distinct client IPs on Linux without any setup), HTTP/1.1
//! written by hand, and a WebSocket client that does its own handshake and frame parsing so
//! that it answers no pings (tungstenite answers them by itself while reading).
//!
//! Every wait is bounded by [`WAIT`].

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::server::WAIT;

/// A TCP connection to `server` from `local` (an address in 127.0.0.0/8).
pub async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    tokio::time::timeout(WAIT, socket.connect(server))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// Whether the peer has closed `stream`, without waiting: `Some(true)` at end of stream or on
/// a reset, `Some(false)` while it is open with nothing to read, `None` when data is waiting.
pub fn closed_now(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 1];
    match stream.try_read(&mut buf) {
        Ok(0) => Some(true),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(false),
        Err(_) => Some(true),
    }
}

/// Reads until the peer closes `stream` (end of stream or reset), discarding what arrives;
/// panics if that takes longer than [`WAIT`].
pub async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server did not close the connection");
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub body: String,
}

/// Sends `GET path` on `stream` (keeping it alive) and reads the response, which must carry a
/// `Content-Length`.
pub async fn get(stream: &mut TcpStream, path: &str) -> RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: labeler\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(WAIT, read_response(stream))
        .await
        .expect("no response in time")
}

async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        body: String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap(),
    }
}

/// An HTTP client whose connections come from `local`.
pub fn http_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A tungstenite subscribeLabels client from `local`, with `X-Forwarded-For: forwarded` when
/// given. `Err` carries the HTTP refusal (status and XRPC error body).
pub async fn subscribe_from(
    local: &str,
    server: SocketAddr,
    forwarded: Option<&str>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, (u16, serde_json::Value)> {
    let stream = connect_from(local, server).await;
    let mut request = format!("ws://{server}/xrpc/com.atproto.label.subscribeLabels")
        .into_client_request()
        .unwrap();
    if let Some(f) = forwarded {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(f).unwrap());
    }
    let connect = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(WAIT, connect)
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            assert!(
                response.headers().contains_key("retry-after"),
                "a refusal says when to retry"
            );
            let body = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            Err((status, body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Whether a tungstenite client is still open: it must not see a close or an error before the
/// next data frame. Reads (and so answers pings) meanwhile.
pub async fn next_data(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Option<Message> {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(m)) => return Some(m),
        }
    }
}

/// A WebSocket frame as the raw client sees it.
#[derive(Debug)]
pub enum RawFrame {
    /// A data frame (text or binary).
    Data(Vec<u8>),
    /// A ping (which the raw client never answers).
    Ping,
    /// A close frame with its code, if any.
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Eof,
}

/// A WebSocket client that does the RFC 6455 handshake itself and never sends anything after
/// it: it reads every frame and answers no ping.
pub struct RawWebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWebSocket {
    /// Opens `path` on `server` from `local` and checks the 101.
    pub async fn connect(local: &str, server: SocketAddr, path: &str) -> RawWebSocket {
        let mut stream = connect_from(local, server).await;
        // The RFC 6455 §1.3 sample key; the server's accept value is checked by its length.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWebSocket {
            stream,
            buf: Vec::new(),
        };
        let head = tokio::time::timeout(WAIT, ws.read_head())
            .await
            .expect("no handshake response in time");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        ws
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..i + 4].to_vec()).unwrap();
                self.buf.drain(..i + 4);
                return head;
            }
            assert!(self.fill().await, "closed during the handshake");
        }
    }

    /// Reads more bytes; false at end of stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Ensures `n` bytes are buffered; false if the stream ended first.
    async fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// The next frame (bounded by [`WAIT`]). Server frames are never masked (RFC 6455 §5.1).
    pub async fn next_frame(&mut self) -> RawFrame {
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("no frame in time")
    }

    async fn read_frame(&mut self) -> RawFrame {
        if !self.need(2).await {
            return RawFrame::Eof;
        }
        let opcode = self.buf[0] & 0x0f;
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                if !self.need(4).await {
                    return RawFrame::Eof;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.need(10).await {
                    return RawFrame::Eof;
                }
                let n = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                (usize::try_from(n).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.need(header + len).await {
            return RawFrame::Eof;
        }
        let payload: Vec<u8> = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        match opcode {
            0x1 | 0x2 => RawFrame::Data(payload),
            0x9 => RawFrame::Ping,
            0x8 => RawFrame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}
