//! The reference remote: a real relayfile-API HTTP server on loopback (axum), backed by an
//! in-memory store, with switchable faults and per-route request counters. Tests, the demo and the
//! benchmarks run mountd against it; `src/main.rs` wraps it as a standalone binary.
//!
//! Routes (under `/v1/workspaces/{ws}/fs`): `tree`, `file` (GET/PUT/DELETE), `export`, `events`,
//! `bulk`, and the realtime WebSocket `ws` (see below); `/health`; the unauthenticated loopback
//! control API `/_control/`: `counts` (GET), `reset-counts` (POST), `requests` (GET), `faults`
//! (GET/PUT), `page-size?n=N`, `max-body-bytes?n=N`, `read-only?on=true|false` (PUT),
//! `hide-events` (PUT, JSON [`HideEvents`]: events hidden from the feed), `reset-store` (POST: the
//! store forgets everything, ids and revisions restart).
//!
//! ## Writes: `PUT`/`DELETE /fs/file?path=P`, `POST /fs/bulk`
//!
//! As the real server enforces them (the same code serves [`Workspace::put_json`],
//! [`Workspace::delete_json`] and [`Workspace::bulk_json`], without auth and faults):
//!
//! * Scope: a token without `fs:write` ([`RemoteHandle::set_read_only`], `--read-only`) gets
//!   403 `forbidden` on every write; reads still work.
//! * Body cap: a `PUT` or bulk body over [`RemoteConfig::max_body_bytes`] (1 MiB by default;
//!   `--max-body-bytes`, [`RemoteHandle::set_max_body_bytes`]) → 413 `payload_too_large`.
//! * `PUT` body `{"contentType","content","encoding"?: "base64"}`; invalid JSON or base64 → 400.
//! * `If-Match` is required on `PUT` and `DELETE` (missing → 412 `precondition_failed`): `0` =
//!   only if absent, `*` = whatever is there, else the exact current `rev_N` (surrounding quotes
//!   and a `W/` prefix are stripped). A revision for an absent path → 404; a `DELETE` of an
//!   absent path → 404 whatever the `If-Match`.
//! * A precondition that does not hold → 409 `{"code":"revision_conflict","message",
//!   "correlationId","expectedRevision","currentRevision","currentContentPreview"?}`.
//! * Accepted → 202 `{"opId":"op_N","status":"queued","targetRevision":"rev_M"}`: `rev_M` is
//!   the path's new revision, the one its `file.created` / `file.updated` / `file.deleted`
//!   event carries on `/fs/events` and `/fs/ws`.
//! * Bulk body `{"files":[{path,contentType,content,encoding?,ifMatch?}]}` (no `ifMatch` = write
//!   whatever is there) → 202 `{"written","errorCount","errors":[{path,code,message,
//!   expectedRevision?,currentRevision?}],"results":[{path,revision,contentType,opId}],
//!   "correlationId"}`; a precondition failure is code `conflict`. Each file written is one
//!   revision and one event. Bulk has no delete.
//! * Counters: [`Counts::put`], [`Counts::delete`], [`Counts::bulk`] (requests),
//!   [`Counts::writes_applied`] and [`Counts::writes_per_path`] (files written or deleted).
//!
//! Write faults ([`Faults`]), all off by default:
//!
//! | field | JSON example | effect |
//! | --- | --- | --- |
//! | `fail_next` routes `put`, `delete`, `bulk` | `{"fail_next":[{"route":"put","count":2,"error":{"status":503,"code":"unavailable"}}]}` | the next N requests of that route answer the error (5xx, 429 with `retry_after`...), nothing written |
//! | `write_delay_ms` | `{"write_delay_ms":500}` | sleep before each write is processed |
//! | `write_path_faults` | `{"write_path_faults":{"/locked.md":{"status":403,"code":"forbidden"}}}` | writes of that path answer the error (an ACL deny); in a bulk it is listed in `errors` with that code, the other files are written |
//! | `drop_answer_after_write` | `{"drop_answer_after_write":1}` | the next N accepted writes (202) are applied (revision, event, counters), then the connection closes with no byte of answer |
//! | `delete_storm` | `{"delete_storm":{"max_per_window":5,"window_ms":10000,"retry_after":"60"}}` | deletes beyond 5 in a window answer 429 `delete_storm_rejected` with `Retry-After: 60` (default `"60"`) |
//!
//! ## Realtime WebSocket `GET /v1/workspaces/{ws}/fs/ws`
//!
//! `ws://127.0.0.1:PORT/v1/workspaces/ws1/fs/ws?token=TOKEN[&cursor=evt_N | &from=now][&path=P...]`
//!
//! * Token only from the `token` query parameter (bearer header alone → 401, before the upgrade).
//! * `cursor=evt_N`: every event after `evt_N` (pages of 100 until exhausted), then live; an unknown
//!   cursor replays from `evt_1`. `from=now`: live only. Neither: the last 100 events, then live.
//! * Repeated `path`: exact path, `*` = one whole segment, trailing `**` = any depth below.
//! * One JSON text message per event, the `/fs/events` shape; a current `file.created` /
//!   `file.updated` of at most 1 MiB (stored string) adds `inlineContent: true`, `contentType`,
//!   `content` and, for base64 content, `encoding: "base64"`.
//! * `{"type":"ping"}` → `{"type":"pong","timestamp":"..."}`.
//! * No gap and no duplicate between catch-up and live. Each connection queues at most 4096 live
//!   events ([`Faults::ws_buffer`]); overflow → the queued events, then close 1013.
//! * Server shutdown → close 1001.
//!
//! WebSocket faults ([`Faults`], JSON for `PUT /_control/faults` or `--faults`), all off by default:
//!
//! | field | JSON example | effect |
//! | --- | --- | --- |
//! | `ws_handshake` | `{"ws_handshake":{"status":429,"code":"rate_limited","retry_after":"5"}}` | every handshake refused with this error (403, 404, 503, ... likewise) |
//! | `fail_next` route `ws` | `{"fail_next":[{"route":"ws","count":2,"error":{"status":429,"code":"rate_limited"}}]}` | the next N handshakes refused, then accepted |
//! | `ws_drop_after` | `{"ws_drop_after":3}` | after 3 event messages: TCP close, no close frame |
//! | `ws_stall_after` | `{"ws_stall_after":3}` | after 3: nothing more sent, no pong, connection held open |
//! | `ws_malformed_after` | `{"ws_malformed_after":3}` | after 3: one non-JSON text message, then normal |
//! | `ws_close_after` | `{"ws_close_after":3}` | after 3: close frame 1013 |
//! | `ws_buffer` | `{"ws_buffer":16}` | live queue size of new connections (overflow → 1013) |
//!
//! "After N" counts event messages on that connection (0 = at once) and is checked before each
//! one, so switching a fault on also hits open connections at their next event. Counters:
//! [`Counts::ws`] (handshakes, refused included) and [`Counts::ws_messages`] (event messages).

mod api;
mod control;
mod export;
mod faults;
mod routes;
mod seed;
mod store;
mod stream;
mod writes;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::{ApiError, Workspace};
pub use faults::{DeleteStorm, ErrorFault, FailNext, Faults, PathFault};
pub use store::{sha256_hex, HideEvents};
pub use ws::DEFAULT_WS_BUFFER;

/// Configuration of a reference remote.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Expected bearer token.
    pub token: String,
    /// Entries per `/fs/tree` page.
    pub page_size: usize,
    /// Directory whose files seed the store at start (remote path = `/` + relative path).
    pub seed_dir: Option<PathBuf>,
    /// Largest write request body (`PUT /fs/file`, `POST /fs/bulk`); a larger one → 413
    /// `payload_too_large`. The real server's default: 1 MiB.
    pub max_body_bytes: usize,
}

/// The real relayfile server's default body cap (`RELAYFILE_MAX_BODY_BYTES`): 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            token: "test-token".to_string(),
            page_size: 1000,
            seed_dir: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Request counters (every request on a route counts, failed or faulted ones included).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub health: u64,
    pub tree: u64,
    pub file: u64,
    pub export: u64,
    pub events: u64,
    pub put: u64,
    pub delete: u64,
    pub bulk: u64,
    /// `/fs/ws` handshakes (refused ones included).
    pub ws: u64,
    /// Event messages sent on `/fs/ws` connections (pongs and injected junk not counted).
    pub ws_messages: u64,
    /// `GET /fs/file` requests per path.
    pub file_paths: BTreeMap<String, u64>,
    /// Files written or deleted in the store through the write API (`PUT`, `DELETE`, each
    /// file of a bulk), in-process writes of a [`Workspace`] included.
    pub writes_applied: u64,
    /// [`Counts::writes_applied`] per path.
    pub writes_per_path: BTreeMap<String, u64>,
    pub unauthorized: u64,
    pub missing_correlation: u64,
    /// Requests refused by [`Faults::rate_limit_per_sec`] (429 `rate_limited`).
    pub rate_limited: u64,
}

/// One request to the relayfile API (`/v1/...`), as the server saw it: the request log of
/// [`RemoteHandle::requests`] and `GET /_control/requests` (JSON, camelCase, `at`/`done` as
/// milliseconds since the server started: `atMs`, `doneMs`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedRequest {
    /// `tree`, `file` (GET), `put`, `delete`, `export`, `events`, `bulk` or `ws`.
    pub route: String,
    /// The `path` query parameter, as sent.
    pub path: Option<String>,
    /// The `cursor` query parameter, as sent.
    pub cursor: Option<String>,
    /// The `X-Correlation-Id` header (mountd's are `mountd_<run>_<n>`: one run per process).
    pub correlation_id: String,
    /// Status of the answer (its headers).
    pub status: u16,
    /// Arrival, in ms since the server started.
    pub at_ms: f64,
    /// Answer headers ready, in ms since the server started.
    pub done_ms: f64,
    /// Arrival.
    #[serde(skip)]
    pub at: Instant,
    /// Answer headers ready.
    #[serde(skip)]
    pub done: Instant,
}

impl LoggedRequest {
    /// The `<run>` of a `mountd_<run>_<n>` correlation id (one per mountd process), else the id.
    pub fn run(&self) -> &str {
        let c = self.correlation_id.as_str();
        c.strip_prefix("mountd_")
            .and_then(|r| r.rsplit_once('_'))
            .map_or(c, |(run, _)| run)
    }
}

/// Most requests the log keeps (the oldest are dropped beyond).
const REQUEST_LOG_MAX: usize = 1_000_000;

/// State shared by the handle and the request handlers.
pub(crate) struct Shared {
    /// Expected bearer token (changed by [`RemoteHandle::set_token`]).
    token: Mutex<String>,
    /// The token lacks the `fs:write` scope ([`RemoteHandle::set_read_only`]).
    read_only: AtomicBool,
    page_size: AtomicUsize,
    /// Write body cap in bytes.
    max_body: AtomicUsize,
    /// Last `op_<n>` number given to an accepted write.
    ops: AtomicU64,
    store: Mutex<store::Store>,
    faults: Mutex<Faults>,
    counts: Mutex<Counts>,
    /// `/fs/tree` requests since the faults were last set (for `tree_hang_after`).
    tree_since_faults: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// When the server started (the origin of the request log's milliseconds).
    started: Instant,
    /// The request log (cleared with the counters).
    log: Mutex<Vec<LoggedRequest>>,
    /// Rate limit window: its start and the requests admitted in it.
    rate: Mutex<(Instant, u32)>,
    /// [`Faults::delete_storm`] window: its start and the deletes admitted in it (`None`: no
    /// window open).
    storm: Mutex<Option<(Instant, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new(cfg: &RemoteConfig, shutdown: watch::Receiver<bool>) -> Arc<Shared> {
        Arc::new(Shared {
            token: Mutex::new(cfg.token.clone()),
            read_only: AtomicBool::new(false),
            page_size: AtomicUsize::new(cfg.page_size.max(1)),
            max_body: AtomicUsize::new(cfg.max_body_bytes),
            ops: AtomicU64::new(0),
            store: Mutex::new(store::Store::default()),
            faults: Mutex::new(Faults::default()),
            counts: Mutex::new(Counts::default()),
            tree_since_faults: AtomicU64::new(0),
            shutdown,
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            rate: Mutex::new((Instant::now(), 0)),
            storm: Mutex::new(None),
        })
    }

    /// `Some(Retry-After)` when [`Faults::delete_storm`] refuses a delete now.
    pub(crate) fn delete_storm(&self) -> Option<String> {
        let storm = self.faults().delete_storm.clone()?;
        let now = Instant::now();
        let mut w = lock(&self.storm);
        let (start, n) = match *w {
            Some((start, n))
                if now.duration_since(start) < Duration::from_millis(storm.window_ms) =>
            {
                (start, n)
            }
            _ => (now, 0),
        };
        if n >= storm.max_per_window {
            *w = Some((start, n));
            return Some(storm.retry_after);
        }
        *w = Some((start, n + 1));
        None
    }

    /// Replaces the faults; restarts the `tree_hang_after` count and the delete storm window.
    fn set_faults(&self, f: Faults) {
        *self.faults() = f;
        self.faults_changed();
    }

    fn faults_changed(&self) {
        self.tree_since_faults.store(0, Ordering::SeqCst);
        *lock(&self.storm) = None;
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.max_body.load(Ordering::SeqCst)
    }

    fn set_max_body_bytes(&self, n: usize) {
        self.max_body.store(n, Ordering::SeqCst);
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    pub(crate) fn next_op(&self) -> u64 {
        self.ops.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn revision(&self, path: &str) -> Option<String> {
        let r = self.store().get(&store::absolute(path))?;
        Some(format!("rev_{}", r.revision))
    }

    fn content(&self, path: &str) -> Option<Vec<u8>> {
        let r = self.store().get(&store::absolute(path))?;
        Some(store::decode_content(&r.content, r.base64).expect("stored content decodes"))
    }

    /// `Some(Retry-After seconds)` when [`Faults::rate_limit_per_sec`] refuses a request now.
    pub(crate) fn rate_limited(&self) -> Option<u64> {
        let limit = self.faults().rate_limit_per_sec?;
        let now = Instant::now();
        let mut w = lock(&self.rate);
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            // Fixed one-second windows, aligned on the first window's start.
            let whole = now.duration_since(w.0).as_secs();
            *w = (w.0 + Duration::from_secs(whole), 0);
        }
        if w.1 < limit {
            w.1 += 1;
            return None;
        }
        let left = (w.0 + Duration::from_secs(1)).saturating_duration_since(now);
        Some(left.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub(crate) fn log_request(&self, mut r: LoggedRequest) {
        r.at_ms = r.at.duration_since(self.started).as_secs_f64() * 1000.0;
        r.done_ms = r.done.duration_since(self.started).as_secs_f64() * 1000.0;
        let mut log = lock(&self.log);
        if log.len() >= REQUEST_LOG_MAX {
            log.drain(..REQUEST_LOG_MAX / 10);
        }
        log.push(r);
    }

    pub(crate) fn requests(&self) -> Vec<LoggedRequest> {
        let mut v = lock(&self.log).clone();
        v.sort_by_key(|r| r.at);
        v
    }

    pub(crate) fn clear_counts(&self) {
        *self.counts() = Counts::default();
        lock(&self.log).clear();
    }

    /// True when `t` is the expected token.
    pub(crate) fn token_is(&self, t: Option<&str>) -> bool {
        t == Some(lock(&self.token).as_str())
    }

    fn store(&self) -> MutexGuard<'_, store::Store> {
        lock(&self.store)
    }
    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }
    fn counts(&self) -> MutexGuard<'_, Counts> {
        lock(&self.counts)
    }

    /// Waits until the server shuts down ("hang" faults).
    async fn hang(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Stores `bytes` as text when UTF-8 (unless `force_base64`), otherwise as base64.
    fn put_bytes(&self, path: &str, bytes: &[u8], force_base64: bool) {
        let hash = sha256_hex(bytes);
        let (content, b64, ct) = match std::str::from_utf8(bytes) {
            Ok(s) if !force_base64 => (s.to_string(), false, "text/plain"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                true,
                "application/octet-stream",
            ),
        };
        self.store().put(path, content, b64, ct.to_string(), hash);
    }
}

/// A running reference remote. Dropping the handle stops the server as well (like `shutdown`,
/// without waiting).
pub struct RemoteHandle {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RemoteHandle {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start(cfg: RemoteConfig) -> std::io::Result<RemoteHandle> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`RemoteHandle::start`], on a chosen address.
    pub async fn start_on(cfg: RemoteConfig, addr: SocketAddr) -> std::io::Result<RemoteHandle> {
        let (tx, rx) = watch::channel(false);
        let shared = Shared::new(&cfg, rx.clone());
        if let Some(dir) = &cfg.seed_dir {
            seed::seed_dir(&shared, dir)?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = routes::router(shared.clone());
        let mut stop = rx;
        let task = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!("reference remote stopped: {e}");
            }
        });
        tracing::debug!(%addr, "reference remote listening");
        Ok(RemoteHandle {
            addr,
            shared,
            shutdown: tx,
            task,
        })
    }

    /// The same store without HTTP (for in-process clients and direct inspection).
    pub fn workspace(&self) -> Workspace {
        Workspace::from_shared(self.shared.clone())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or overwrites a file (UTF-8 → text, otherwise base64); appends an event.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        self.shared.put_bytes(path, bytes, false);
    }

    /// Like [`RemoteHandle::put`] but always stores base64.
    pub fn put_base64(&self, path: &str, bytes: &[u8]) {
        self.shared.put_bytes(path, bytes, true);
    }

    /// Removes a file; appends a `file.deleted` event (nothing when it did not exist).
    pub fn delete(&self, path: &str) {
        self.shared.store().delete(path);
    }

    /// Appends a raw event without changing files.
    pub fn append_event(&self, ty: &str, path: &str) {
        let mut st = self.shared.store();
        let (rev, hash) = match st.get(path) {
            Some(r) => (Some(format!("rev_{}", r.revision)), Some(r.hash.clone())),
            None => (None, None),
        };
        st.push_event(ty, path, rev, hash);
    }

    /// Hide events appended from now on from the feed and the stream (see [`HideEvents`]).
    pub fn hide_events(&self, h: HideEvents) {
        self.shared.store().hide_events(h);
    }

    /// Lose every file and event, as an in-memory server does when it restarts: event ids and
    /// revisions start again from 1, open `/fs/ws` connections end.
    pub fn reset_store(&self) {
        self.shared.store().reset();
    }

    /// Expect another bearer token from now on (token rotation): requests with the old one get 401.
    pub fn set_token(&self, token: &str) {
        *lock(&self.shared.token) = token.to_string();
    }

    /// The expected token lacks (`true`) or has (`false`, the default) the `fs:write` scope:
    /// without it every write answers 403 `forbidden`, reads still work. Independent of
    /// [`RemoteHandle::set_token`].
    pub fn set_read_only(&self, read_only: bool) {
        self.shared.read_only.store(read_only, Ordering::SeqCst);
    }

    /// Caps write request bodies at `n` bytes (a larger one → 413 `payload_too_large`).
    pub fn set_max_body_bytes(&self, n: usize) {
        self.shared.set_max_body_bytes(n);
    }

    /// The current revision (`rev_N`) of the file at `path`.
    pub fn revision(&self, path: &str) -> Option<String> {
        self.shared.revision(path)
    }

    /// The decoded bytes of the file at `path`.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.shared.content(path)
    }

    /// Replaces the fault set (and restarts the `tree_hang_after` count and the
    /// `delete_storm` window).
    pub fn set_faults(&self, f: Faults) {
        self.shared.set_faults(f);
    }

    /// Edits the fault set in place (and restarts the `tree_hang_after` count and the
    /// `delete_storm` window).
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.faults());
        self.shared.faults_changed();
    }

    /// Current fault set.
    pub fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }

    /// Snapshot of the request counters.
    pub fn counts(&self) -> Counts {
        self.shared.counts().clone()
    }

    /// Clears the counters and the request log.
    pub fn reset_counts(&self) {
        self.shared.clear_counts();
    }

    /// The request log since the counters were last reset, in arrival order (see [`LoggedRequest`]).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.requests()
    }

    pub fn set_page_size(&self, n: usize) {
        self.shared.page_size.store(n.max(1), Ordering::SeqCst);
    }

    pub fn file_count(&self) -> usize {
        self.shared.store().file_count()
    }

    /// Synthesizes `n` files of `file_size` bytes over `dirs` directories, deterministic content:
    /// `/dNNN/fNNNNNNN.txt`.
    pub fn generate(&self, n: usize, file_size: usize, dirs: usize) {
        seed::generate(&self.shared, n, file_size, dirs);
    }

    /// Adds a large file of `size` bytes with deterministic content (text lines, or pseudo-random bytes
    /// stored as base64), built in place; returns the hex SHA-256 of its bytes. The store holds the
    /// content string (`size` bytes, or 4/3 of it as base64); bodies are sent from it piece by piece.
    pub fn put_big(&self, path: &str, size: usize, base64: bool) -> String {
        seed::big_file(&self.shared, path, size, base64)
    }

    /// Stops serving: hung requests are released, open connections are closed (2 s grace).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
