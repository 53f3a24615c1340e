//! The realtime change stream `GET /v1/workspaces/{ws}/fs/ws`: connect (with the catch-up cursor),
//! read its messages as [`Event`]s, ping it, and classify every way it can end.
//!
//! The server reads the token **only** from the `token` query parameter, so the request URL carries a
//! secret. It lives in one local variable of [`connect`] and is handed to the WebSocket library; no
//! type here keeps it, no error message or `Debug` output contains it, and the library's own request
//! logging (at trace level) is filtered out by the daemon's log setup (see `main.rs`).
//!
//! Failures ([`StreamError`]) say what happened in terms an operator can act on; the realtime loop
//! ([`crate::sync::realtime`]) falls back to polling on every one of them and reconnects with backoff.
use super::error::parse_retry_after;
use super::http::{percent_encode, ClientConfig};
use super::types::Event;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Why the stream is not (or no longer) usable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The handshake was answered with an HTTP status instead of the upgrade (404: no stream on
    /// this server; 401/403: the token is refused for it; 429: come back after `retry_after`).
    #[error(
        "handshake refused: HTTP {status} {code}: {message} (correlation id {correlation_id})"
    )]
    Refused {
        status: u16,
        code: String,
        message: String,
        correlation_id: String,
        retry_after: Option<Duration>,
    },
    /// Connecting or the handshake failed before any HTTP answer (refused connection, TLS, timeout).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server closed the stream with a close frame (1013 = "reconnect from cursor").
    #[error("closed by the server with code {code}{}", if .reason.is_empty() { String::new() } else { format!(" ({})", .reason) })]
    Closed { code: u16, reason: String },
    /// The connection ended without a close frame (reset, EOF, I/O error).
    #[error("connection dropped: {0}")]
    Dropped(String),
    /// Nothing arrived (not even the answer to a ping) within the deadline.
    #[error("silent for {0:?} (no message and no pong within the ping deadline)")]
    Stalled(Duration),
    /// A message that is not an event, nor a pong, nor any JSON object.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl StreamError {
    /// The server's `Retry-After` (a 429 handshake).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StreamError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for logs, metrics and `mountd status`.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamError::Refused { status: 404, .. } => "not_found",
            StreamError::Refused {
                status: 401 | 403, ..
            } => "unauthorized",
            StreamError::Refused { status: 429, .. } => "rate_limited",
            StreamError::Refused { .. } => "refused",
            StreamError::Connect(_) => "connect",
            StreamError::Closed { .. } => "closed",
            StreamError::Dropped(_) => "dropped",
            StreamError::Stalled(_) => "stalled",
            StreamError::Malformed(_) => "malformed",
        }
    }
}

/// One message from the stream.
#[derive(Debug)]
pub enum Incoming {
    /// A change event; `bytes` is the size of its message (for the queue's memory bound).
    Event { event: Box<Event>, bytes: usize },
    /// The answer to a `{"type":"ping"}`.
    Pong,
    /// A JSON message of a kind mountd does not use (ignored, but proof the stream is alive).
    Other,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open stream. Holds no URL and no token.
pub struct Stream {
    ws: Socket,
    /// The handshake's correlation id, for logs.
    pub correlation_id: String,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("correlation_id", &self.correlation_id)
            .finish()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// `http(s)://host/prefix` → `ws(s)://host/prefix/v1/workspaces/{ws}/fs/ws` (no query).
fn stream_base(cfg: &ClientConfig) -> Result<String, StreamError> {
    let base = cfg.base_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(StreamError::Connect(
            "the base URL must start with http:// or https://".into(),
        ));
    };
    Ok(format!(
        "{ws}/v1/workspaces/{}/fs/ws",
        percent_encode(&cfg.workspace)
    ))
}

/// Open the stream, catching up after `cursor` (exclusive) when given. The handshake (TCP, TLS and
/// the HTTP upgrade) must finish within the connect timeout plus the read timeout.
pub async fn connect(cfg: &ClientConfig, cursor: Option<&str>) -> Result<Stream, StreamError> {
    let token = cfg.token.load().map_err(StreamError::Connect)?;
    let correlation_id = format!(
        "mountd_ws_{:08x}_{}",
        rand::random::<u32>(),
        SEQ.fetch_add(1, Ordering::Relaxed) + 1
    );
    let mut url = stream_base(cfg)?;
    url.push_str("?token=");
    url.push_str(&percent_encode(&token));
    if let Some(c) = cursor {
        url.push_str("&cursor=");
        url.push_str(&percent_encode(c));
    }
    // The URL (with the token) goes into the request and nowhere else; errors below are rebuilt
    // from their kind, never from the library's text (which may quote the URL).
    let mut req = url
        .into_client_request()
        .map_err(|_| StreamError::Connect("the stream URL is invalid (check --base-url)".into()))?;
    if let Ok(v) = correlation_id.parse() {
        req.headers_mut().insert("X-Correlation-Id", v);
    }
    if let Ok(v) = concat!("mountd/", env!("CARGO_PKG_VERSION")).parse() {
        req.headers_mut().insert("User-Agent", v);
    }
    let config = WebSocketConfig::default()
        // Inline content is at most 1 MiB as stored (base64 included): a generous bound.
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let deadline = cfg.connect_timeout + cfg.read_timeout;
    let handshake = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), true, None);
    let (ws, _resp) = match tokio::time::timeout(deadline, handshake).await {
        Err(_) => {
            return Err(StreamError::Connect(format!(
                "handshake timed out after {deadline:?} (correlation id {correlation_id})"
            )))
        }
        Ok(Err(e)) => return Err(refusal(e, &correlation_id)),
        Ok(Ok(ok)) => ok,
    };
    Ok(Stream { ws, correlation_id })
}

/// A failed handshake, classified; never the library's own text for URL errors.
fn refusal(e: WsError, cid: &str) -> StreamError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = resp.body().as_deref().unwrap_or(b"");
            let parsed = super::http::parse_error_body(body);
            StreamError::Refused {
                status,
                code: parsed.code,
                message: parsed.message,
                correlation_id: cid.to_string(),
                retry_after,
            }
        }
        WsError::Url(_) => StreamError::Connect(format!(
            "the stream URL cannot be used (check --base-url) (correlation id {cid})"
        )),
        WsError::Io(io) => StreamError::Connect(format!("{io} (correlation id {cid})")),
        WsError::Tls(t) => StreamError::Connect(format!("TLS: {t} (correlation id {cid})")),
        other => StreamError::Connect(format!(
            "{} (correlation id {cid})",
            describe_ws_error(&other)
        )),
    }
}

/// A library error during the stream, without any URL.
fn describe_ws_error(e: &WsError) -> String {
    match e {
        WsError::Url(_) => "URL error".into(),
        WsError::Http(r) => format!("unexpected HTTP {}", r.status()),
        other => other.to_string(),
    }
}

/// The `{"type":"ping"}` text message.
const PING: &str = r#"{"type":"ping"}"#;

impl Stream {
    /// The next message. Protocol-level pings are answered by the library; a close frame, the end of
    /// the connection and a message that is not JSON end the stream with a [`StreamError`].
    pub async fn next(&mut self) -> Result<Incoming, StreamError> {
        loop {
            let m = match self.ws.next().await {
                None => return Err(StreamError::Dropped("the connection ended".into())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Err(StreamError::Dropped("the connection closed".into()))
                }
                Some(Err(e)) => return Err(StreamError::Dropped(describe_ws_error(&e))),
                Some(Ok(m)) => m,
            };
            match m {
                Message::Text(t) => return parse(t.as_str()),
                Message::Close(frame) => {
                    return Err(match frame {
                        Some(f) => StreamError::Closed {
                            code: u16::from(f.code),
                            reason: f.reason.as_str().chars().take(200).collect(),
                        },
                        None => StreamError::Closed {
                            code: 1005,
                            reason: "no status".into(),
                        },
                    })
                }
                // Binary frames are not part of the protocol: ignored, like unknown JSON.
                Message::Binary(_) => return Ok(Incoming::Other),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// Send `{"type":"ping"}` (the server answers with a pong message).
    pub async fn ping(&mut self) -> Result<(), StreamError> {
        self.ws
            .send(Message::text(PING))
            .await
            .map_err(|e| StreamError::Dropped(describe_ws_error(&e)))
    }

    /// Close politely (best effort, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// One text message: an event (has `eventId`), a pong, another JSON object (ignored), or malformed.
pub fn parse(text: &str) -> Result<Incoming, StreamError> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| StreamError::Malformed(format!("not JSON ({e}), {} bytes", text.len())))?;
    let Some(obj) = v.as_object() else {
        return Err(StreamError::Malformed("not a JSON object".into()));
    };
    if obj.contains_key("eventId") {
        let event: Event = serde_json::from_value(v)
            .map_err(|e| StreamError::Malformed(format!("bad event: {e}")))?;
        return Ok(Incoming::Event {
            event: Box::new(event),
            bytes: text.len(),
        });
    }
    match obj.get("type").and_then(|t| t.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("pong") => Ok(Incoming::Pong),
        _ => Ok(Incoming::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::http::TokenSource;

    fn cfg(base: &str) -> ClientConfig {
        ClientConfig {
            base_url: base.into(),
            workspace: "ws 1".into(),
            token: TokenSource::Static("secret-token".into()),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            stream_base(&cfg("https://h.example/api/")).unwrap(),
            "wss://h.example/api/v1/workspaces/ws%201/fs/ws"
        );
        assert_eq!(
            stream_base(&cfg("http://127.0.0.1:9")).unwrap(),
            "ws://127.0.0.1:9/v1/workspaces/ws%201/fs/ws"
        );
    }

    #[test]
    fn messages() {
        let m = parse(r#"{"eventId":"evt_3","type":"file.updated","path":"/a","revision":"rev_2","contentHash":"ab","inlineContent":true,"content":"aGk=","encoding":"base64","contentType":"text/plain","timestamp":"2026-01-01T00:00:00.000Z","origin":"x"}"#).unwrap();
        let Incoming::Event { event, .. } = m else {
            panic!("{m:?}")
        };
        assert!(event.inline_content);
        assert_eq!(event.content.as_deref(), Some("aGk="));
        assert_eq!(event.encoding.as_deref(), Some("base64"));
        assert!(matches!(
            parse(r#"{"type":"pong","timestamp":"x"}"#),
            Ok(Incoming::Pong)
        ));
        assert!(matches!(parse(r#"{"type":"hello"}"#), Ok(Incoming::Other)));
        assert!(matches!(
            parse("{\"eventId\": this is not JSON"),
            Err(StreamError::Malformed(_))
        ));
        assert!(matches!(parse("[1]"), Err(StreamError::Malformed(_))));
    }

    /// A refused connection's error names neither the URL nor the token.
    #[tokio::test]
    async fn errors_never_show_the_token() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = connect(&cfg(&format!("http://{addr}")), Some("evt_1"))
            .await
            .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(!text.contains("token="), "{text}");
        assert_eq!(e.kind(), "connect");
    }
}
