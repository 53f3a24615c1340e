//! The realtime change stream (`/fs/ws`) as the service's fast path; polling stays the fallback.
//!
//! Two tasks ([`spawn`]):
//!
//! * the **connection** task connects from the stored events cursor (so the server's catch-up fills
//!   any gap), reads messages into a queue, pings every `ping_interval` and gives up on a stream that
//!   stays silent (no event, no pong, nothing) for two intervals. Whatever ends a connection (a
//!   refused handshake: 404, 401/403, 429 with `Retry-After`; a close frame such as 1013 "reconnect
//!   from cursor"; a drop; a stall; a malformed message) marks the stream down — the service's poll
//!   loop keeps the mirror in sync meanwhile at its interval — and it reconnects after a capped,
//!   jittered backoff (at least the server's `Retry-After`; at once after a 1013 that followed
//!   delivered events: the server drained a full buffer).
//! * the **apply** task takes the first queued event and everything already queued behind it (up to
//!   [`BATCH_CAP`]) and applies them in one [`Engine::apply_events`] call: one transaction that
//!   records the files and moves the shared events cursor (the polling path's key) to the batch's last
//!   event, never backwards. A lone event is applied at once; a burst becomes a few large batches.
//!   Before that, under the engine's [`Engine::exclusive`] lock shared with the poll loop, events at
//!   or before the stored cursor are dropped (already applied: a reconnect's catch-up, or the poll
//!   loop got there first), and the inline content of a path's last event is decoded, checked against
//!   its `contentHash` and written with [`LocalStore::write_atomic`] (after its intent is committed,
//!   like every write of the engine): `apply_events` then finds the
//!   local bytes matching the event's hash and records the file without a `GET /fs/file`. Content
//!   that is not inline, or fails the check, is fetched as usual. The commit tells the FUSE view what
//!   changed (its cache invalidation), as for any other commit.
//!
//! A batch that fails to apply (the remote refuses a file fetch, the local disk fails) is dropped
//! with everything queued behind it, and the connection is restarted from the stored cursor, so its
//! events come again. Memory is bounded by [`QUEUE_BYTES`] of queued messages: beyond it the reader
//! waits, the server's per-connection buffer fills, and the server closes with 1013 — after which the
//! stream resumes from the cursor.
//!
//! The state (connected or polling, since when, why, the last event and its lag) goes to the
//! metrics at once and to the state DB ([`MetaKey::RealtimeState`]) on every change and at most once
//! a second while events flow, for `mountd status`.
use crate::metrics::Metrics;
use crate::remote::http::ClientConfig;
use crate::remote::types::Event;
use crate::remote::ws::{self, Incoming, StreamError};
use crate::store::db::{event_seq, MetaKey};
use crate::store::{paths, LocalStore};
use crate::sync::engine::{now_rfc3339, Engine, SyncError};
use crate::sync::push::conflict::{self, Verdict};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Most events applied in one transaction.
pub const BATCH_CAP: usize = 4096;
/// Most bytes of messages queued between the connection and the apply task.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Longest wait before reconnecting, whatever the poll interval (a `Retry-After` may ask for more).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// While the stream stays down, one reminder log line per this period.
const LOG_EVERY: Duration = Duration::from_secs(300);
/// The state DB is told about events at most this often (state changes are written at once).
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// How the stream is used.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    /// Where the stream is (the REST client's settings: base URL, workspace, token source, timeouts).
    pub client: ClientConfig,
    /// A `{"type":"ping"}` every this often; a stream silent for twice this long is given up.
    pub ping_interval: Duration,
    /// The poll interval: the longest reconnect backoff (capped at 5 minutes), and said in logs.
    pub poll_interval: Duration,
}

/// What `mountd status` shows of the stream (the JSON of [`MetaKey::RealtimeState`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RealtimeState {
    /// `connected`, `polling` (the stream is down; polling meanwhile, reconnecting) or `off`
    /// (`--websocket=false`).
    pub state: String,
    /// When this state began (RFC 3339).
    pub since: Option<String>,
    /// Why the stream is down.
    pub reason: Option<String>,
    /// The last event applied from the stream, and when.
    pub last_event_id: Option<String>,
    pub last_event_at: Option<String>,
    /// Its delivery lag: from the server's event timestamp to the commit that made it visible.
    pub lag_ms: Option<u64>,
    /// Connections made since the service started.
    pub connections: u64,
    /// Events and batches (transactions) applied from the stream since the service started.
    pub events: u64,
    pub batches: u64,
}

impl RealtimeState {
    pub fn off() -> RealtimeState {
        RealtimeState {
            state: "off".into(),
            since: Some(now_rfc3339()),
            reason: Some("disabled (--websocket=false)".into()),
            ..Default::default()
        }
    }

    pub fn parse(json: &str) -> Option<RealtimeState> {
        serde_json::from_str(json).ok()
    }
}

/// Record `--websocket=false` for `mountd status`.
pub async fn record_off(engine: &Engine) -> Result<(), SyncError> {
    let json = serde_json::to_string(&RealtimeState::off()).expect("state serializes");
    engine.set_meta(vec![(MetaKey::RealtimeState, json)]).await
}

/// The running stream; dropping it stops both tasks (between two awaits: a transaction is never cut).
pub struct Realtime {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Realtime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        Metrics::global().set_realtime_connected(false);
    }
}

/// One queued event.
struct Queued {
    event: Box<Event>,
    /// The connection it came from (a failed batch discards the rest of its connection's events).
    conn: u64,
    /// Its share of [`QUEUE_BYTES`], released once it is applied or dropped.
    _permit: OwnedSemaphorePermit,
    /// When its message arrived.
    received: Instant,
}

struct Shared {
    engine: Engine,
    cfg: RealtimeConfig,
    state: Mutex<RealtimeState>,
    last_persist: Mutex<Option<Instant>>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, RealtimeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the state to the DB (always when `force`, else at most every [`PERSIST_EVERY`]);
    /// `false` when it was skipped.
    async fn persist(&self, force: bool) -> bool {
        {
            let mut last = self.last_persist.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < PERSIST_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let json = serde_json::to_string(&*self.state()).expect("state serializes");
        if let Err(e) = self
            .engine
            .set_meta(vec![(MetaKey::RealtimeState, json)])
            .await
        {
            tracing::warn!(error = %e, "cannot record the realtime stream's state");
        }
        true
    }

    fn set_connected(&self) {
        Metrics::global().set_realtime_connected(true);
        let mut s = self.state();
        s.state = "connected".into();
        s.since = Some(now_rfc3339());
        s.reason = None;
        s.connections += 1;
    }

    fn set_down(&self, reason: &str) {
        Metrics::global().set_realtime_connected(false);
        let mut s = self.state();
        if s.state != "polling" {
            s.since = Some(now_rfc3339());
        }
        s.state = "polling".into();
        s.reason = Some(reason.to_string());
    }
}

/// Start the stream for `engine` (the service calls this once the mirror is served).
pub fn spawn(engine: Engine, cfg: RealtimeConfig) -> Realtime {
    let shared = Arc::new(Shared {
        engine,
        cfg,
        state: Mutex::new(RealtimeState::default()),
        last_persist: Mutex::new(None),
    });
    shared.set_down("connecting");
    let (tx, rx) = mpsc::unbounded_channel();
    let (fail_tx, fail_rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    let conn = tokio::spawn(connection_task(shared.clone(), tx, fail_rx, budget));
    let apply = tokio::spawn(apply_task(shared, rx, fail_tx));
    Realtime {
        tasks: vec![conn, apply],
    }
}

/// The wait before reconnect number `failures` (1 after the first failure): 0.5 s doubling, capped at
/// the poll interval and at 5 minutes, ±20 % jitter; at least the server's `Retry-After`.
pub fn backoff(failures: u32, poll_interval: Duration, retry_after: Option<Duration>) -> Duration {
    let cap = poll_interval.min(MAX_BACKOFF);
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = exp.min(cap).mul_f64(0.8 + rand::random::<f64>() * 0.4);
    match retry_after {
        Some(r) => d.max(r.min(MAX_BACKOFF)),
        None => d,
    }
}

/// How a connection ended.
enum Ended {
    Stream(StreamError),
    /// A batch of this connection's events could not be applied.
    ApplyFailed(String),
}

impl Ended {
    fn describe(&self) -> String {
        match self {
            Ended::Stream(e) => e.to_string(),
            Ended::ApplyFailed(e) => format!("applying its events failed: {e}"),
        }
    }
}

async fn connection_task(
    sh: Arc<Shared>,
    tx: mpsc::UnboundedSender<Queued>,
    mut failed: mpsc::UnboundedReceiver<(u64, String)>,
    budget: Arc<Semaphore>,
) {
    let mut conn = 0u64;
    // Consecutive failed connections (a connection that delivered something resets it).
    let mut failures = 0u32;
    let mut down_since: Option<Instant> = None;
    let mut last_log: Option<(Instant, &'static str)> = None;
    // The current outage was logged at info or warn level (so its end is too).
    let mut outage_logged = false;
    sh.persist(true).await;
    loop {
        conn += 1;
        let cursor = match sh.engine.read(|st| st.events_cursor()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "realtime: cannot read the events cursor; stream stopped");
                return;
            }
        };
        let (ended, delivered) = match ws::connect(&sh.cfg.client, cursor.as_deref()).await {
            Err(e) => (Ended::Stream(e), false),
            Ok(stream) => {
                sh.set_connected();
                match down_since.take() {
                    Some(t) if outage_logged => tracing::info!(
                        cursor = cursor.as_deref().unwrap_or("-"),
                        correlation_id = %stream.correlation_id,
                        down_for_ms = t.elapsed().as_millis() as u64,
                        "realtime stream connected again; changes are applied as they arrive"
                    ),
                    Some(t) => tracing::debug!(
                        cursor = cursor.as_deref().unwrap_or("-"),
                        correlation_id = %stream.correlation_id,
                        down_for_ms = t.elapsed().as_millis() as u64,
                        "realtime stream connected again"
                    ),
                    None => tracing::info!(
                        cursor = cursor.as_deref().unwrap_or("-"),
                        correlation_id = %stream.correlation_id,
                        "realtime stream connected; changes are applied as they arrive"
                    ),
                }
                sh.persist(true).await;
                outage_logged = false;
                if cursor.is_none() && conn > 1 {
                    // Opened without a cursor, the stream replays only the server's recent
                    // events: what came before them is checked by the count, at once.
                    sh.engine.request_check();
                }
                pump(&sh, stream, conn, &tx, &mut failed, &budget).await
            }
        };
        if delivered {
            failures = 0;
        }
        failures += 1;
        let retry_after = match &ended {
            Ended::Stream(e) => e.retry_after(),
            Ended::ApplyFailed(_) => None,
        };
        // A 1013 after the connection delivered events is the server draining a full buffer and
        // asking to resume from the cursor: at once (the catch-up pages through the feed).
        let resume_now = delivered
            && matches!(
                &ended,
                Ended::Stream(StreamError::Closed { code: 1013, .. })
            );
        let wait = if resume_now {
            Duration::ZERO
        } else {
            backoff(failures, sh.cfg.poll_interval, retry_after)
        };
        let why = ended.describe();
        let kind = match &ended {
            Ended::Stream(e) => e.kind(),
            Ended::ApplyFailed(_) => "apply",
        };
        sh.set_down(&why);
        down_since.get_or_insert_with(Instant::now);
        let wait_ms = wait.as_millis() as u64;
        let interval = humantime::format_duration(sh.cfg.poll_interval).to_string();
        // One line per new kind of failure, a reminder every few minutes, the rest at debug level
        // (a stream that keeps failing the same way, or keeps being closed with 1013 to resume from
        // the cursor, does not fill the log).
        let due = last_log.is_none_or(|(t, k)| k != kind || t.elapsed() >= LOG_EVERY);
        if due {
            last_log = Some((Instant::now(), kind));
            outage_logged = true;
            if matches!(
                &ended,
                Ended::Stream(StreamError::Closed { code: 1013, .. })
            ) {
                tracing::info!(reason = %why, retry_in_ms = wait_ms,
                    "realtime stream: the server asked to reconnect from the cursor; polling every {interval} meanwhile");
            } else {
                tracing::warn!(reason = %why, retry_in_ms = wait_ms,
                    "realtime stream unavailable; polling every {interval} until it is back");
            }
        } else {
            tracing::debug!(reason = %why, retry_in_ms = wait_ms, "realtime stream still unavailable");
        }
        sh.persist(true).await;
        tokio::time::sleep(wait).await;
    }
}

/// Read one connection until it ends: `(why, whether it delivered any message)`.
async fn pump(
    sh: &Shared,
    mut stream: ws::Stream,
    conn: u64,
    tx: &mpsc::UnboundedSender<Queued>,
    failed: &mut mpsc::UnboundedReceiver<(u64, String)>,
    budget: &Arc<Semaphore>,
) -> (Ended, bool) {
    let ping_every = sh.cfg.ping_interval;
    let deadline = ping_every * 2;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = tokio::time::Instant::now();
    let mut delivered = false;
    loop {
        tokio::select! {
            biased;
            m = stream.next() => match m {
                Ok(Incoming::Event { event, bytes }) => {
                    last_rx = tokio::time::Instant::now();
                    delivered = true;
                    let cost = (bytes + 256).min(QUEUE_BYTES) as u32;
                    let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
                        return (Ended::ApplyFailed("the queue closed".into()), delivered);
                    };
                    let q = Queued { event, conn, _permit: permit, received: Instant::now() };
                    if tx.send(q).is_err() {
                        return (Ended::ApplyFailed("the apply task ended".into()), delivered);
                    }
                }
                Ok(Incoming::Pong) | Ok(Incoming::Other) => {
                    last_rx = tokio::time::Instant::now();
                }
                Err(e) => {
                    stream.close().await;
                    return (Ended::Stream(e), delivered);
                }
            },
            f = failed.recv() => match f {
                Some((c, why)) if c >= conn => {
                    stream.close().await;
                    return (Ended::ApplyFailed(why), delivered);
                }
                Some(_) => {}
                None => return (Ended::ApplyFailed("the apply task ended".into()), delivered),
            },
            _ = tokio::time::sleep_until(last_rx + deadline) => {
                stream.close().await;
                return (Ended::Stream(StreamError::Stalled(deadline)), delivered);
            }
            _ = ping.tick() => {
                if let Err(e) = stream.ping().await {
                    return (Ended::Stream(e), delivered);
                }
            }
        }
    }
}

async fn apply_task(
    sh: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    failed: mpsc::UnboundedSender<(u64, String)>,
) {
    // Events of connections up to this one are dropped (a batch of theirs failed).
    let mut discard_upto = 0u64;
    // The state has news not written yet (a write skipped by the rate limit): written once idle.
    let mut dirty = false;
    loop {
        let first = if dirty {
            match tokio::time::timeout(PERSIST_EVERY, rx.recv()).await {
                Ok(q) => q,
                Err(_) => {
                    dirty = !sh.persist(true).await;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_CAP {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        batch.retain(|q| q.conn > discard_upto);
        let Some(conn) = batch.last().map(|q| q.conn) else {
            continue;
        };
        match apply_batch(&sh.engine, batch).await {
            Ok(None) => {}
            Ok(Some(done)) => {
                let m = Metrics::global();
                m.realtime_events
                    .fetch_add(done.events as u64, std::sync::atomic::Ordering::Relaxed);
                m.realtime_batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(lag) = done.lag {
                    m.set_realtime_lag(lag);
                }
                {
                    let mut s = sh.state();
                    s.last_event_id = Some(done.last_event_id);
                    s.last_event_at = Some(now_rfc3339());
                    s.lag_ms = done.lag.map(|l| l.as_millis() as u64);
                    s.events += done.events as u64;
                    s.batches += 1;
                }
                dirty = !sh.persist(false).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "realtime: applying a batch failed; its events will come again from the cursor");
                discard_upto = discard_upto.max(conn);
                let _ = failed.send((conn, e.to_string()));
            }
        }
    }
}

/// What one applied batch did.
struct Applied {
    events: usize,
    last_event_id: String,
    lag: Option<Duration>,
}

/// Apply queued events: drop those the cursor already covers, write verified inline content, then
/// [`Engine::apply_events`] (one transaction, cursor included). `None`: nothing was new.
async fn apply_batch(engine: &Engine, batch: Vec<Queued>) -> Result<Option<Applied>, SyncError> {
    let started = Instant::now();
    let oldest = batch.first().map(|q| q.received);
    let _exclusive = engine.exclusive().await;
    let locked = started.elapsed();
    let stored = engine.read(|st| st.events_cursor()).await?;
    // Keep an event only when it is past the stored cursor and past every event kept before it: a
    // reconnect replays from the cursor, so a batch can hold the end of one connection and the same
    // events again from the next (applying them twice would also let an older event of a path win).
    let mut floor = stored.as_deref().and_then(event_seq);
    // The permits stay alive (the queue's memory accounting) until the batch is done.
    let mut events: Vec<Event> = Vec::with_capacity(batch.len());
    let mut permits = Vec::with_capacity(batch.len());
    for q in batch {
        match (floor, event_seq(&q.event.event_id)) {
            (Some(f), Some(n)) if n <= f => {}
            (_, n) => {
                floor = n.or(floor);
                events.push(*q.event);
            }
        }
        permits.push(q._permit);
    }
    let Some(last) = events.last() else {
        return Ok(None);
    };
    let last_event_id = last.event_id.clone();
    let last_ts = last.timestamp.clone();
    let mut inline = take_inline(engine, &mut events);
    // Never over a local edit (see `push::conflict`), nor rewriting bytes the file already has.
    let claims = inline
        .iter()
        .map(|f| {
            let incoming = conflict::Incoming::Content {
                hash: Some(f.hash.clone()),
                revision: f.revision.clone(),
            };
            (f.rel.clone(), incoming)
        })
        .collect();
    let verdicts = engine.guard_local(claims).await?;
    // What was asked here is not asked again (and a file just written is not hashed twice).
    let known: HashMap<String, Verdict> = inline
        .iter()
        .map(|f| {
            let v = verdicts.get(&f.rel).copied().unwrap_or(Verdict::Apply);
            (f.rel.clone(), v)
        })
        .collect();
    inline.retain(|f| known[&f.rel] == Verdict::Apply);
    let n_inline = inline.len();
    let t_write = Instant::now();
    if !inline.is_empty() {
        // Their intents first, as for any write: a run interrupted between the bytes and the records
        // leaves files the next run can tell apart from the user's (and remove if the remote did).
        engine
            .intend(inline.iter().map(|f| f.rel.clone()).collect())
            .await?;
        let store = engine.store().clone();
        tokio::task::spawn_blocking(move || write_inline(&store, inline))
            .await
            .map_err(|e| SyncError::Internal(format!("inline content worker: {e}")))??;
    }
    let t_apply = Instant::now();
    engine
        .apply_events_guarded(&events, &last_event_id, known)
        .await?;
    drop(permits);
    tracing::debug!(
        events = events.len(),
        inline = n_inline,
        queued_us = oldest.map_or(0, |t| (started - t).as_micros() as u64),
        lock_us = locked.as_micros() as u64,
        write_us = (t_apply - t_write).as_micros() as u64,
        apply_us = t_apply.elapsed().as_micros() as u64,
        "realtime batch applied"
    );
    let lag = last_ts
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or(Duration::ZERO)
        });
    Ok(Some(Applied {
        events: events.len(),
        last_event_id,
        lag,
    }))
}

/// Inline content to write: the last event of a path, when it is a create/update carrying content
/// and a hash, under the remote root and not a hostile path (those are `apply_events`' business).
struct InlineFile {
    rel: String,
    remote: String,
    content: String,
    encoding: Option<String>,
    hash: String,
    revision: Option<String>,
}

/// Move the usable inline content out of `events` (they keep their metadata).
fn take_inline(engine: &Engine, events: &mut [Event]) -> Vec<InlineFile> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(p) = e.path.as_deref() {
            last.insert(p, i);
        }
    }
    let mut idx: Vec<usize> = last.into_values().collect();
    idx.sort_unstable();
    let root = engine.config().remote_root.clone();
    let mut out = Vec::new();
    for i in idx {
        let e = &mut events[i];
        if !e.inline_content || !matches!(e.kind.as_str(), "file.created" | "file.updated") {
            continue;
        }
        let (Some(remote), Some(hash)) = (e.path.clone(), e.content_hash.clone()) else {
            continue;
        };
        let Ok(rel) = paths::to_local(&root, &remote) else {
            continue;
        };
        let Some(content) = e.content.take() else {
            continue;
        };
        out.push(InlineFile {
            rel,
            remote,
            content,
            encoding: e.encoding.take(),
            hash,
            revision: e.revision.clone(),
        });
    }
    out
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The bytes of inline content, or why it cannot be used.
pub fn decode_inline(content: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    match encoding.map(str::trim) {
        None | Some("") => Ok(content.as_bytes().to_vec()),
        Some(e) if e.eq_ignore_ascii_case("utf-8") || e.eq_ignore_ascii_case("utf8") => {
            Ok(content.as_bytes().to_vec())
        }
        Some(e) if e.eq_ignore_ascii_case("base64") => B64
            .decode(content.trim())
            .map_err(|err| format!("invalid base64 content ({err})")),
        Some(e) => Err(format!("unknown content encoding {e:?}")),
    }
}

/// Decode, verify and write each file (blocking). Content that fails is left to the fetch.
fn write_inline(store: &LocalStore, files: Vec<InlineFile>) -> Result<(), SyncError> {
    for f in files {
        let bytes = match decode_inline(&f.content, f.encoding.as_deref()) {
            Ok(b) => b,
            Err(why) => {
                tracing::warn!(path = %f.remote, reason = %why, "realtime: inline content unusable; fetching the file instead");
                continue;
            }
        };
        let got = crate::remote::types::sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(&f.hash) {
            tracing::warn!(path = %f.remote, expected = %f.hash, got = %got,
                "realtime: inline content does not match its contentHash; fetching the file instead");
            continue;
        }
        store.write_atomic(&f.rel, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_decoding() {
        assert_eq!(decode_inline("héllo", None).unwrap(), "héllo".as_bytes());
        assert_eq!(decode_inline("hi", Some("UTF-8")).unwrap(), b"hi");
        assert_eq!(decode_inline("aGk", Some("BASE64")).unwrap(), b"hi");
        assert_eq!(decode_inline("aGk=", Some("base64")).unwrap(), b"hi");
        assert!(decode_inline("a*b", Some("base64")).is_err());
        assert!(decode_inline("x", Some("gzip")).is_err());
    }

    #[test]
    fn inline_content_is_written_only_when_its_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("m")).unwrap();
        let file = |rel: &str, content: &str, encoding: Option<&str>, hash: String| InlineFile {
            rel: rel.into(),
            remote: format!("/{rel}"),
            content: content.into(),
            encoding: encoding.map(str::to_string),
            hash,
            revision: None,
        };
        let h = |b: &[u8]| crate::remote::types::sha256_hex(b);
        write_inline(
            &store,
            vec![
                file("ok.txt", "right", None, h(b"right")),
                file(
                    "d/bin",
                    "AJ+Wlv8",
                    Some("base64"),
                    h(&[0, 159, 150, 150, 255]),
                ),
                file(
                    "d/bin2",
                    "AJ+Wlv8",
                    Some("base64"),
                    h(&[0, 159, 146, 150, 255]),
                ),
                file("bad.txt", "tampered", None, h(b"original")),
                file("junk", "!!", Some("base64"), h(b"")),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read(store.abs("ok.txt")).unwrap(), b"right");
        assert_eq!(
            std::fs::read(store.abs("d/bin")).unwrap(),
            [0, 159, 150, 150, 255]
        );
        assert!(!store.abs("d/bin2").exists(), "hash mismatch: not written");
        assert!(!store.abs("bad.txt").exists());
        assert!(!store.abs("junk").exists());
    }

    #[test]
    fn backoff_is_capped_jittered_and_honours_retry_after() {
        let s = Duration::from_secs;
        let within = |d: Duration, want: Duration| d >= want.mul_f64(0.8) && d <= want.mul_f64(1.2);
        assert!(within(backoff(1, s(30), None), Duration::from_millis(500)));
        assert!(within(backoff(2, s(30), None), s(1)));
        assert!(within(backoff(10, s(30), None), s(30)));
        assert!(within(backoff(40, s(3600), None), s(300)));
        assert!(within(
            backoff(5, Duration::from_millis(300), None),
            Duration::from_millis(300)
        ));
        assert!(backoff(1, s(30), Some(s(7))) >= s(7));
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(3, s(30), None)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    #[test]
    fn state_round_trips() {
        let s = RealtimeState {
            state: "connected".into(),
            lag_ms: Some(4),
            ..Default::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"lagMs\":4"), "{j}");
        assert_eq!(RealtimeState::parse(&j), Some(s));
    }
}
