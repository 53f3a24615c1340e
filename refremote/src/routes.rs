//! HTTP routes of the reference remote: the relayfile API under `/v1/workspaces/{ws}/fs/...`
//! (the realtime WebSocket `/fs/ws` lives in `ws.rs`), `/health`, and the unauthenticated
//! loopback control endpoints under `/_control/`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;

use super::api::ApiError;
use super::export::{export_response, FileJson};
use super::faults::{api_error_response, error_response, ErrorFault, Faults, PathFault};
use super::store::absolute;
use super::{writes, LoggedRequest, Shared};

type S = State<Arc<Shared>>;
type Q = Query<HashMap<String, String>>;

/// File bodies with more content than this are streamed in pieces.
const STREAM_OVER: usize = 1 << 20;

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
        .route("/_control/max-body-bytes", put(ctl_max_body_bytes))
        .route("/_control/read-only", put(ctl_read_only))
        .route("/_control/requests", get(ctl_requests))
        .merge(super::control::router())
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
    let (delay, hang_all, pf, rate, reset_at) = {
        let mut f = s.faults();
        // A counted reset: consumed here, so "N cuts then whole bodies" holds across requests.
        let reset_at = match f.file_reset_at {
            Some(n) if f.file_reset_count == 0 => Some(n),
            Some(n) => {
                f.file_reset_count -= 1;
                if f.file_reset_count == 0 {
                    f.file_reset_at = None;
                }
                Some(n)
            }
            None => None,
        };
        (
            f.file_delay_ms,
            f.file_hang,
            f.path_faults.get(&path).cloned(),
            f.file_rate_bytes_per_sec,
            reset_at,
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
    let headers = [
        (header::CONTENT_TYPE, "application/json".to_string()),
        (header::ETAG, format!("rev_{}", rec.revision)),
    ];
    if rec.content.len() <= STREAM_OVER && rate.is_none() && reset_at.is_none() {
        let body = serde_json::to_vec(&FileJson::new(&rec, bad_hash)).expect("serialize file");
        return (headers, body).into_response();
    }
    // A large body is sent from the stored string piece by piece (never copied whole).
    let body = super::stream::file_body(rec, bad_hash)
        .map(Ok::<_, std::io::Error>)
        .boxed();
    let body = match rate {
        Some(r) => super::stream::throttle(body, r),
        None => body,
    };
    let body = match reset_at {
        Some(n) => super::export::cut_then_fail(body, n),
        None => body,
    };
    (headers, axum::body::Body::from_stream(body)).into_response()
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
    export_response(
        files,
        bad,
        f.export_truncate_at,
        f.export_reset_at,
        f.export_rate_bytes_per_sec,
    )
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

/// 403 `forbidden` when the token lacks the `fs:write` scope.
#[allow(clippy::result_large_err)]
fn writable(s: &Shared, corr: &str) -> Result<(), Response> {
    if s.read_only() {
        return Err(error_response(
            403,
            "forbidden",
            "token lacks the fs:write scope",
            corr,
        ));
    }
    Ok(())
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

/// The request body, read to its end (so the client always gets the answer), of which at most
/// `keep` bytes are kept.
#[allow(clippy::result_large_err)]
async fn read_body(body: Body, keep: usize, corr: &str) -> Result<Vec<u8>, Response> {
    let mut out = Vec::new();
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| bad_request(&format!("reading the body: {e}"), corr))?;
        let room = keep.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(out)
}

/// The write's answer: 202 with its body, its error, or, under
/// [`Faults::drop_answer_after_write`], no answer at all.
fn write_answer(s: &Shared, res: Result<serde_json::Value, ApiError>, corr: &str) -> Response {
    match res {
        Ok(_) if s.faults().take_drop_answer() => no_answer(),
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => api_error_response(&e, corr),
    }
}

/// A 202 whose body fails at once: hyper gives up the connection before it has flushed the
/// head, so the client gets no byte of an answer (a transport error). Logged as 202.
fn no_answer() -> Response {
    let fail = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected lost answer (reference remote)",
        ))
    });
    (StatusCode::ACCEPTED, Body::from_stream(fail)).into_response()
}

/// Sleeps [`Faults::write_delay_ms`], then the error of [`Faults::write_path_faults`] for
/// `path`, if any.
#[allow(clippy::result_large_err)]
async fn write_faults(s: &Shared, path: Option<&str>, corr: &str) -> Result<(), Response> {
    let delay = s.faults().write_delay_ms;
    sleep_ms(delay).await;
    let denied = path.and_then(|p| s.faults().write_path_faults.get(p).cloned());
    match denied {
        Some(e) => Err(e.response(corr)),
        None => Ok(()),
    }
}

/// The `path` query parameter, absolute.
fn query_path(q: &HashMap<String, String>) -> Option<String> {
    q.get("path").map(|p| absolute(p))
}

async fn put_file(State(s): S, headers: HeaderMap, Query(q): Q, body: Body) -> Response {
    let corr = tri!(begin(&s, "put", &headers, None));
    tri!(writable(&s, &corr));
    let Some(path) = query_path(&q) else {
        return bad_request("missing path", &corr);
    };
    let body = tri!(read_body(body, s.max_body_bytes().saturating_add(1), &corr).await);
    tri!(write_faults(&s, Some(&path), &corr).await);
    let res = writes::put(&s, &path, &body, if_match(&headers));
    write_answer(&s, res, &corr)
}

async fn delete_file(State(s): S, headers: HeaderMap, Query(q): Q) -> Response {
    let corr = tri!(begin(&s, "delete", &headers, None));
    tri!(writable(&s, &corr));
    let Some(path) = query_path(&q) else {
        return bad_request("missing path", &corr);
    };
    if let Some(ra) = s.delete_storm() {
        return ErrorFault::new(429, "delete_storm_rejected")
            .with_retry_after(&ra)
            .response(&corr);
    }
    tri!(write_faults(&s, Some(&path), &corr).await);
    let res = writes::delete(&s, &path, if_match(&headers));
    write_answer(&s, res, &corr)
}

async fn bulk(State(s): S, headers: HeaderMap, body: Body) -> Response {
    let corr = tri!(begin(&s, "bulk", &headers, None));
    tri!(writable(&s, &corr));
    let body = tri!(read_body(body, s.max_body_bytes().saturating_add(1), &corr).await);
    tri!(write_faults(&s, None, &corr).await);
    let denied = s.faults().write_path_faults.clone();
    let res = writes::bulk(&s, &body, &denied, &corr);
    write_answer(&s, res, &corr)
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
    s.set_faults(f);
    StatusCode::NO_CONTENT
}

async fn ctl_max_body_bytes(State(s): S, Query(q): Q) -> Response {
    match q.get("n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            s.set_max_body_bytes(n);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => bad_request("n must be a byte count", ""),
    }
}

async fn ctl_read_only(State(s): S, Query(q): Q) -> Response {
    match q.get("on").map(String::as_str) {
        Some(v @ ("true" | "false")) => {
            s.read_only.store(v == "true", Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => bad_request("on must be true or false", ""),
    }
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
