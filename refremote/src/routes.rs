//! HTTP routes of the reference remote: the relayfile API under `/v1/workspaces/{ws}/fs/...`
//! (the realtime WebSocket `/fs/ws` lives in `ws.rs`), `/health`, and the unauthenticated
//! loopback control endpoints under `/_control/`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::export::{export_response, FileJson};
use super::faults::{error_response, ErrorFault, Faults, PathFault};
use super::store::{absolute, decode_content, sha256_hex};
use super::{LoggedRequest, Shared};

type S = State<Arc<Shared>>;
type Q = Query<HashMap<String, String>>;

/// Largest accepted write body.
const MAX_WRITE_BODY: usize = 1 << 20;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let ws = "/v1/workspaces/{ws}/fs";
    Router::new()
        .route("/health", get(health))
        .route(&format!("{ws}/tree"), get(tree))
        .route(
            &format!("{ws}/file"),
            get(get_file).put(put_file).delete(delete_file),
        )
        .route(&format!("{ws}/export"), get(export))
        .route(&format!("{ws}/events"), get(events))
        .route(&format!("{ws}/bulk"), post(bulk))
        .route(&format!("{ws}/ws"), get(super::ws::fs_ws))
        .route("/_control/counts", get(ctl_counts))
        .route("/_control/reset-counts", post(ctl_reset_counts))
        .route("/_control/faults", get(ctl_get_faults).put(ctl_put_faults))
        .route("/_control/page-size", put(ctl_page_size))
        .route("/_control/requests", get(ctl_requests))
        .fallback(|| async { error_response(404, "not_found", "no such route", "") })
        .layer(DefaultBodyLimit::max(64 << 20))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            log_requests,
        ))
        .with_state(shared)
}

/// Records every `/v1/...` request in the request log: route, `path` and `cursor` parameters,
/// correlation id, status, arrival and answer instants.
async fn log_requests(
    State(s): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = req.uri().clone();
    if !uri.path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let at = Instant::now();
    let last = uri.path().rsplit('/').next().unwrap_or("").to_string();
    let route = match (req.method().as_str(), last.as_str()) {
        ("PUT", "file") => "put".to_string(),
        ("DELETE", "file") => "delete".to_string(),
        _ => last,
    };
    let q: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let correlation_id = req
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = next.run(req).await;
    s.log_request(LoggedRequest {
        route,
        path: q.get("path").cloned(),
        cursor: q.get("cursor").cloned(),
        correlation_id,
        status: resp.status().as_u16(),
        at_ms: 0.0,
        done_ms: 0.0,
        at,
        done: Instant::now(),
    });
    resp
}

/// Counts the request, checks auth and correlation id, applies `fail_next`.
/// `Ok` = the correlation id; `Err` = the response to send instead.
#[allow(clippy::result_large_err)]
fn begin(
    s: &Shared,
    route: &str,
    headers: &HeaderMap,
    file_path: Option<&str>,
) -> Result<String, Response> {
    let mut c = s.counts();
    match route {
        "tree" => c.tree += 1,
        "file" => c.file += 1,
        "export" => c.export += 1,
        "events" => c.events += 1,
        "put" => c.put += 1,
        "delete" => c.delete += 1,
        _ => c.bulk += 1,
    }
    if let Some(p) = file_path {
        *c.file_paths.entry(p.to_string()).or_default() += 1;
    }
    let corr = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !s.token_is(token) {
        c.unauthorized += 1;
        return Err(error_response(
            401,
            "unauthorized",
            "missing or invalid bearer token",
            &corr,
        ));
    }
    if corr.is_empty() {
        c.missing_correlation += 1;
        return Err(error_response(
            400,
            "bad_request",
            "missing X-Correlation-Id header",
            "",
        ));
    }
    drop(c);
    tracing::debug!(route, correlation_id = %corr, path = ?file_path, "request");
    if let Some(secs) = s.rate_limited() {
        s.counts().rate_limited += 1;
        return Err(ErrorFault::new(429, "rate_limited")
            .with_retry_after(&secs.to_string())
            .response(&corr));
    }
    if let Some(e) = s.faults().take_fail_next(route) {
        return Err(e.response(&corr));
    }
    Ok(corr)
}

/// Holds the request until shutdown, then answers 503.
async fn hang(s: &Shared, corr: &str) -> Response {
    s.hang().await;
    error_response(503, "unavailable", "server shutting down", corr)
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn bad_request(msg: &str, corr: &str) -> Response {
    error_response(400, "bad_request", msg, corr)
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

async fn health(State(s): S) -> Response {
    s.counts().health += 1;
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn tree(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let corr = tri!(begin(&s, "tree", &headers, None));
    let n = s.tree_since_faults.fetch_add(1, Ordering::SeqCst) + 1;
    let (delay, hang_after) = {
        let f = s.faults();
        (f.tree_delay_ms, f.tree_hang_after)
    };
    sleep_ms(delay).await;
    if hang_after.is_some_and(|h| n > h) {
        return hang(&s, &corr).await;
    }
    let path = q.get("path").map(String::as_str).unwrap_or("/");
    let dir = {
        let d = absolute(path);
        let t = d.trim_end_matches('/');
        if t.is_empty() {
            "/".to_string()
        } else {
            t.to_string()
        }
    };
    if let Some(e) = s.faults().tree_path_faults.get(&dir).cloned() {
        return e.response(&corr);
    }
    let depth = match q.get("depth").filter(|d| !d.is_empty()) {
        None => 10,
        Some(d) => match d.parse::<usize>() {
            Ok(d) => d.clamp(1, 100),
            Err(_) => return bad_request("depth must be an integer 1..100", &corr),
        },
    };
    let cursor = q
        .get("cursor")
        .map(String::as_str)
        .filter(|c| !c.is_empty());
    let page_size = s.page_size.load(Ordering::SeqCst);
    let res = s.store().tree(path, depth, cursor, page_size);
    match res {
        Ok(page) => Json(page).into_response(),
        Err(m) => bad_request(&m, &corr),
    }
}

async fn get_file(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let path = q.get("path").map(|p| absolute(p));
    let corr = tri!(begin(&s, "file", &headers, path.as_deref()));
    let Some(path) = path else {
        return bad_request("missing path", &corr);
    };
    let (delay, hang_all, pf) = {
        let f = s.faults();
        (
            f.file_delay_ms,
            f.file_hang,
            f.path_faults.get(&path).cloned(),
        )
    };
    sleep_ms(delay).await;
    if hang_all {
        return hang(&s, &corr).await;
    }
    let bad_hash = match pf {
        Some(PathFault::Status(e)) => return e.response(&corr),
        Some(PathFault::BadHash) => true,
        None => false,
    };
    let rec = s.store().get(&path);
    let Some(rec) = rec else {
        return error_response(404, "not_found", "file not found", &corr);
    };
    let body = serde_json::to_vec(&FileJson::new(&rec, bad_hash)).expect("serialize file");
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, format!("rev_{}", rec.revision)),
        ],
        body,
    )
        .into_response()
}

async fn export(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let corr = tri!(begin(&s, "export", &headers, None));
    let f: Faults = s.faults().clone();
    sleep_ms(f.export_delay_ms).await;
    if f.export_hang {
        return hang(&s, &corr).await;
    }
    if let Some(e) = &f.export_status {
        return e.response(&corr);
    }
    if q.get("format").is_some_and(|x| x != "json") {
        return error_response(404, "not_found", "unsupported export format", &corr);
    }
    let path = q.get("path").map(String::as_str).unwrap_or("/");
    let mut files = if f.export_empty {
        Vec::new()
    } else {
        s.store().snapshot(path)
    };
    if let Some(n) = f.export_drop {
        files.truncate(n);
    }
    let bad: BTreeSet<String> = f
        .path_faults
        .iter()
        .filter(|(_, v)| matches!(v, PathFault::BadHash))
        .map(|(k, _)| k.clone())
        .collect();
    export_response(files, bad, f.export_truncate_at, f.export_reset_at)
}

async fn events(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let corr = tri!(begin(&s, "events", &headers, None));
    if s.faults().events_404 {
        return error_response(404, "not_found", "no event feed", &corr);
    }
    if let Some(c) = q.get("cursor").filter(|c| !c.is_empty()) {
        let refused = {
            let f = s.faults();
            f.events_cursor_faults
                .get(c)
                .or_else(|| f.events_cursor_faults.get("*"))
                .cloned()
        };
        if let Some(e) = refused {
            return e.response(&corr);
        }
    }
    let limit = match q.get("limit").filter(|l| !l.is_empty()) {
        None => 200,
        Some(l) => match l.parse::<usize>() {
            Ok(l) => l.clamp(1, 1000),
            Err(_) => return bad_request("limit must be an integer 1..1000", &corr),
        },
    };
    let desc = q.get("direction").is_some_and(|d| d == "desc");
    let cursor = q
        .get("cursor")
        .map(String::as_str)
        .filter(|c| !c.is_empty());
    let (events, next_cursor) = s.store().events(cursor, limit, desc);
    Json(EventsPage {
        events,
        next_cursor,
    })
    .into_response()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage {
    events: Vec<super::store::Event>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteFile {
    #[serde(default)]
    path: String,
    #[serde(default)]
    content_type: String,
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

/// Validates and stores one write; `Err((status, code, message))`.
fn write_file(
    s: &Shared,
    path: &str,
    w: WriteFile,
    if_match: Option<&str>,
) -> Result<u64, (u16, &'static str, String)> {
    let b64 = w
        .encoding
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("base64"));
    let bytes = decode_content(&w.content, b64).map_err(|m| (400, "bad_request", m))?;
    let ct = if w.content_type.is_empty() {
        if b64 {
            "application/octet-stream"
        } else {
            "text/plain"
        }
        .to_string()
    } else {
        w.content_type
    };
    let mut st = s.store();
    check_if_match(st.get(path).map(|r| r.revision), if_match)?;
    Ok(st.put(path, w.content, b64, ct, sha256_hex(&bytes)))
}

fn check_if_match(
    current: Option<u64>,
    if_match: Option<&str>,
) -> Result<(), (u16, &'static str, String)> {
    let Some(m) = if_match.map(|m| m.trim().trim_matches('"')) else {
        return Ok(());
    };
    let fail = |msg: String| Err((412, "precondition_failed", msg));
    match (m, current) {
        ("*", _) | ("", _) | ("0", None) => Ok(()),
        ("0", Some(_)) => fail("file already exists".into()),
        (m, Some(r)) if m != format!("rev_{r}") => {
            fail(format!("revision mismatch: current rev_{r}, If-Match {m}"))
        }
        _ => Ok(()),
    }
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

async fn put_file(State(s): S, headers: HeaderMap, Query(q): Q, body: Bytes) -> Response {
    let corr = tri!(begin(&s, "put", &headers, None));
    if body.len() > MAX_WRITE_BODY {
        return error_response(413, "payload_too_large", "body over 1 MiB", &corr);
    }
    let Some(path) = q.get("path").map(|p| absolute(p)) else {
        return bad_request("missing path", &corr);
    };
    let w: WriteFile = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return bad_request(&format!("invalid body: {e}"), &corr),
    };
    match write_file(&s, &path, w, if_match(&headers)) {
        Ok(rev) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"revision": format!("rev_{rev}")})),
        )
            .into_response(),
        Err((st, code, m)) => error_response(st, code, &m, &corr),
    }
}

async fn delete_file(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let corr = tri!(begin(&s, "delete", &headers, None));
    let Some(path) = q.get("path").map(|p| absolute(p)) else {
        return bad_request("missing path", &corr);
    };
    let mut st = s.store();
    let current = st.get(&path).map(|r| r.revision);
    if current.is_none() {
        return error_response(404, "not_found", "file not found", &corr);
    }
    if let Err((code, c, m)) = check_if_match(current, if_match(&headers)) {
        return error_response(code, c, &m, &corr);
    }
    let rev = st.delete(&path).expect("file exists");
    drop(st);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"revision": format!("rev_{rev}")})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BulkBody {
    files: Vec<WriteFile>,
}

async fn bulk(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let corr = tri!(begin(&s, "bulk", &headers, None));
    if body.len() > MAX_WRITE_BODY {
        return error_response(413, "payload_too_large", "body over 1 MiB", &corr);
    }
    let b: BulkBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("invalid body: {e}"), &corr),
    };
    let mut written = 0u64;
    let mut errors = Vec::new();
    for w in b.files {
        let path = absolute(&w.path);
        match write_file(&s, &path, w, None) {
            Ok(_) => written += 1,
            Err((_, code, m)) => {
                errors.push(serde_json::json!({"path": path, "code": code, "message": m}))
            }
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "written": written, "errorCount": errors.len(), "errors": errors,
        })),
    )
        .into_response()
}

async fn ctl_counts(State(s): S) -> Response {
    Json(s.counts().clone()).into_response()
}

async fn ctl_reset_counts(State(s): S) -> StatusCode {
    s.clear_counts();
    StatusCode::NO_CONTENT
}

async fn ctl_requests(State(s): S) -> Response {
    Json(s.requests()).into_response()
}

async fn ctl_get_faults(State(s): S) -> Response {
    Json(s.faults().clone()).into_response()
}

async fn ctl_put_faults(State(s): S, Json(f): Json<Faults>) -> StatusCode {
    *s.faults() = f;
    s.tree_since_faults.store(0, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn ctl_page_size(State(s): S, Query(q): Q) -> Response {
    match q.get("n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n > 0 => {
            s.page_size.store(n, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => bad_request("n must be a positive integer", ""),
    }
}
