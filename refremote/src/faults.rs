//! Switchable faults of the reference remote and the JSON (or HTML) error responses they produce.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;

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
    /// Send the export body at this many bytes per second (a slow link).
    pub export_rate_bytes_per_sec: Option<u64>,
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
    /// Send /fs/file bodies at this many bytes per second (a slow link): the body streams in slices
    /// of a twentieth of a second's worth.
    pub file_rate_bytes_per_sec: Option<u64>,
    /// /fs/file bodies: 200 + the first N bytes of a chunked body, then abort the connection (every
    /// request; for "N cuts then whole bodies" see `file_reset_count`).
    pub file_reset_at: Option<usize>,
    /// With `file_reset_at`: cut only this many /fs/file bodies, then send them whole (0 = every one).
    pub file_reset_count: u32,
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
    /// Sleep before each write (`PUT`/`DELETE /fs/file`, `POST /fs/bulk`) is processed: a client
    /// that gives up meanwhile leaves no write.
    pub write_delay_ms: u64,
    /// Per path write denial (an ACL deny): a `PUT`/`DELETE` of a key (absolute path) answers
    /// that error, other paths are written; in a bulk the file is listed in `errors` with the
    /// error's code (e.g. `forbidden`) and the other files are written.
    pub write_path_faults: BTreeMap<String, ErrorFault>,
    /// The next N accepted writes (`PUT`/`DELETE` answered 202, every `POST /fs/bulk` answered
    /// 202) are applied to the store (revision, event, counters) and then get no answer at all:
    /// the connection is closed before a byte of the response is sent. Counts down to `None`.
    pub drop_answer_after_write: Option<u32>,
    /// Refuse deletes beyond `max_per_window` within a window with 429 `delete_storm_rejected`.
    pub delete_storm: Option<DeleteStorm>,
}

/// Burst guard on `DELETE /fs/file`: a window opens at the first delete after the previous one
/// ended and admits `max_per_window` deletes during `window_ms`; the others answer 429
/// `delete_storm_rejected` with `Retry-After: retry_after` (default `"60"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteStorm {
    pub max_per_window: u32,
    pub window_ms: u64,
    #[serde(default = "sixty")]
    pub retry_after: String,
}

fn sixty() -> String {
    "60".to_string()
}

impl DeleteStorm {
    /// `max_per_window` deletes per `window_ms`, `Retry-After: 60`.
    pub fn new(max_per_window: u32, window_ms: u64) -> Self {
        DeleteStorm {
            max_per_window,
            window_ms,
            retry_after: sixty(),
        }
    }
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

    /// Consumes one `drop_answer_after_write`: true when this accepted write gets no answer.
    pub(crate) fn take_drop_answer(&mut self) -> bool {
        match self.drop_answer_after_write {
            Some(n) if n > 0 => {
                self.drop_answer_after_write = (n > 1).then_some(n - 1);
                true
            }
            _ => false,
        }
    }
}

/// Error body `{"code","message","correlationId"}`, or an HTML page for code `"html"`.
pub fn error_response(status: u16, code: &str, message: &str, correlation_id: &str) -> Response {
    api_error_response(&ApiError::new(status, code, message), correlation_id)
}

/// Error body `{"code","message","correlationId"}` plus the error's `extra` members (a 409's
/// `expectedRevision`, `currentRevision`...), or an HTML page for code `"html"`.
pub(crate) fn api_error_response(e: &ApiError, correlation_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if e.code == "html" {
        return (
            status,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>proxy error</html>",
        )
            .into_response();
    }
    let mut body = serde_json::Map::new();
    body.insert("code".into(), e.code.clone().into());
    body.insert("message".into(), e.message.clone().into());
    body.insert("correlationId".into(), correlation_id.into());
    body.extend(e.extra.clone());
    (status, axum::Json(body)).into_response()
}
