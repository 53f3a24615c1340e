//! Switchable faults of the reference remote and the JSON (or HTML) error responses they produce.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The fault set. Every field defaults to "no fault".
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Sleep before sending the export response (headers).
    pub export_delay_ms: u64,
    /// Never answer the export (hold the request open until shutdown).
    pub export_hang: bool,
    /// Answer every export with this error.
    pub export_status: Option<ErrorFault>,
    /// 200 with `[]` although files exist.
    pub export_empty: bool,
    /// Complete response (Content-Length = N) whose JSON body is cut after N bytes.
    pub export_truncate_at: Option<usize>,
    /// 200 + first N bytes of a chunked body, then abort the connection.
    pub export_reset_at: Option<usize>,
    /// Export only the first N files (a shrunk but valid array).
    pub export_drop: Option<usize>,
    /// N errors then normal service, per route.
    pub fail_next: Vec<FailNext>,
    /// Sleep before each /fs/tree page.
    pub tree_delay_ms: u64,
    /// /fs/tree requests numbered > N (from 1 since the faults were last set) hang.
    pub tree_hang_after: Option<u64>,
    /// Sleep before each /fs/file answer.
    pub file_delay_ms: u64,
    /// Every /fs/file hangs.
    pub file_hang: bool,
    /// Per remote path faults on /fs/file (`BadHash` also applies to the export).
    pub path_faults: BTreeMap<String, PathFault>,
    /// /fs/events answers 404 not_found.
    pub events_404: bool,
    /// Per directory faults on /fs/tree: a request whose `path` query (absolute, trailing `/`
    /// trimmed; `/` for the root) is a key answers that error, whatever its cursor. Only a
    /// listing of that very directory fails: a deep listing of an ancestor still includes its
    /// entries (list with depth 1 to have every directory listed on its own).
    pub tree_path_faults: BTreeMap<String, ErrorFault>,
    /// /fs/events requests whose `cursor` is a key answer that error (a feed refusing a stored
    /// cursor: 410 `cursor_expired`, 400 `invalid_cursor`...). The key `"*"` matches every
    /// request that carries a cursor. The tip request (no cursor) is never refused.
    pub events_cursor_faults: BTreeMap<String, ErrorFault>,
    /// Rate limit over every `/fs/...` request (the WebSocket handshake excepted): at most N
    /// requests per one-second window (fixed windows from the first request), the rest answer
    /// 429 `rate_limited` with `Retry-After` = whole seconds until the window ends (at least 1).
    /// Counted in [`crate::Counts::rate_limited`].
    pub rate_limit_per_sec: Option<u32>,
    /// Refuse every `/fs/ws` handshake with this error (e.g. 429 with `Retry-After`, 403, 404)
    /// instead of upgrading. For "N refusals then accept" use `fail_next` with route `"ws"`.
    pub ws_handshake: Option<ErrorFault>,
    /// `/fs/ws`: after N event messages on a connection, drop it: TCP close, no close frame.
    pub ws_drop_after: Option<u64>,
    /// `/fs/ws`: after N event messages on a connection, stall it: send nothing more, answer
    /// no ping (neither `{"type":"ping"}` nor WebSocket pings), keep the TCP connection open
    /// until the server shuts down.
    pub ws_stall_after: Option<u64>,
    /// `/fs/ws`: after N event messages on a connection, send one text message that is not
    /// JSON, then go on normally.
    pub ws_malformed_after: Option<u64>,
    /// `/fs/ws`: after N event messages on a connection, close it with status 1013
    /// ("reconnect from cursor").
    pub ws_close_after: Option<u64>,
    /// `/fs/ws`: live-event queue capacity of connections opened from now on (default 4096);
    /// on overflow the server closes with 1013 (after sending what the queue holds).
    pub ws_buffer: Option<usize>,
}

/// An error answer: status, `code` (`"html"` → an HTML proxy page) and an optional verbatim
/// `Retry-After` header value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorFault {
    pub status: u16,
    pub code: String,
    #[serde(default)]
    pub retry_after: Option<String>,
}

impl ErrorFault {
    pub fn new(status: u16, code: &str) -> Self {
        ErrorFault {
            status,
            code: code.to_string(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, v: &str) -> Self {
        self.retry_after = Some(v.to_string());
        self
    }

    pub fn response(&self, correlation_id: &str) -> Response {
        let mut r = error_response(
            self.status,
            &self.code,
            "injected fault (reference remote)",
            correlation_id,
        );
        if let Some(ra) = &self.retry_after {
            if let Ok(v) = HeaderValue::from_str(ra) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// `count` errors on `route` ("tree" | "file" | "export" | "events" | "put" | "delete" | "bulk" |
/// "ws" (the `/fs/ws` handshake) | "any").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailNext {
    pub route: String,
    pub count: u32,
    pub error: ErrorFault,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PathFault {
    Status(ErrorFault),
    /// A contentHash that does not match the content.
    BadHash,
}

impl Faults {
    /// Consumes one matching `fail_next` entry for `route`, if any.
    pub fn take_fail_next(&mut self, route: &str) -> Option<ErrorFault> {
        let f = self
            .fail_next
            .iter_mut()
            .find(|f| f.count > 0 && (f.route == route || f.route == "any"))?;
        f.count -= 1;
        Some(f.error.clone())
    }
}

/// Error body `{"code","message","correlationId"}`, or an HTML page for code `"html"`.
pub fn error_response(status: u16, code: &str, message: &str, correlation_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if code == "html" {
        return (
            status,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>proxy error</html>",
        )
            .into_response();
    }
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "correlationId": correlation_id,
    });
    (status, axum::Json(body)).into_response()
}
