//! `GET /v1/workspaces/{ws}/fs/ws`: the realtime event WebSocket, as the real relayfile server
//! speaks it.
//!
//! * **Auth**: the token comes only from the `token` query parameter; a bearer header alone, a
//!   missing or a wrong token → 401 `unauthorized` before any upgrade. No `X-Correlation-Id` is
//!   needed (browsers cannot set headers); the URL and the token are never logged.
//! * **Start**: `cursor=<eventId>` sends every event after it (exclusive), read from the feed in
//!   pages of 100 until exhausted, then goes live; an unknown cursor replays from the start, like
//!   `/fs/events`. Else `from=now` goes live at once; with neither the last 100 events are
//!   replayed first. `cursor` wins over `from=now`.
//! * **Filters**: repeated `path` parameters; an event is sent when its path matches one: exact,
//!   a `*` segment matches any one segment, a trailing `**` segment any rest (`/docs/**` matches
//!   `/docs` and everything below). Without `path` every event is sent.
//! * **Messages** (server → client, one text message each): the `/fs/events` event object
//!   (`eventId`, `type`, `path`, `revision`, `contentHash`, `origin`, `timestamp`). A
//!   `file.created` / `file.updated` whose revision is still the file's current one and whose
//!   stored content string is at most 1 MiB also carries `"inlineContent": true`, `contentType`,
//!   `content` and (for base64 content only) `"encoding": "base64"`.
//! * **Ping**: a client text message `{"type":"ping"}` is answered with
//!   `{"type":"pong","timestamp":"..."}`. Other client messages are ignored.
//! * **Live delivery**: the connection subscribes (under the store lock) before the upgrade
//!   answer is sent and before the catch-up is read, then skips live events whose id is at most
//!   the last catch-up id: no gap and no duplicate at the boundary. Each connection queues at most
//!   4096 live events (`Faults::ws_buffer`); on overflow the queued events are still sent, then
//!   the server closes with 1013 "event stream overflow; reconnect from cursor".
//! * **Shutdown**: open sockets get a 1001 close frame.
//! * **Faults** (see [`crate::Faults`]): `ws_handshake`, `fail_next` route `"ws"`,
//!   `ws_drop_after`, `ws_stall_after`, `ws_malformed_after`, `ws_close_after`, `ws_buffer`.
//!   The "after N" faults count the event messages sent on the connection (pongs and the
//!   malformed message do not count) and are checked before each one, so they apply to open
//!   connections too, once their next event or client message arrives.
//! * **Counts**: `ws` (handshakes, refused ones included), `ws_messages` (event messages sent).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::faults::error_response;
use super::store::{event_num, rfc3339, Event, Subscription};
use super::Shared;

/// Live events queued per connection unless `Faults::ws_buffer` says otherwise.
pub const DEFAULT_WS_BUFFER: usize = 4096;
/// Largest stored content string sent inline.
const MAX_INLINE: usize = 1 << 20;
/// Catch-up page size.
const CATCH_UP_PAGE: usize = 100;
/// Close status "try again later".
const TRY_AGAIN_LATER: u16 = 1013;

/// Where a connection starts.
enum Start {
    Cursor(String),
    Now,
    Recent,
}

pub(crate) async fn fs_ws(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    up: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let corr = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let token = q.iter().find(|(k, _)| k == "token").map(|(_, v)| v.trim());
    {
        let mut c = s.counts();
        c.ws += 1;
        if !s.token_is(token) {
            c.unauthorized += 1;
            return error_response(
                401,
                "unauthorized",
                "missing or invalid token query parameter",
                &corr,
            );
        }
    }
    let buffer = {
        let mut f = s.faults();
        if let Some(e) = f.ws_handshake.clone().or_else(|| f.take_fail_next("ws")) {
            return e.response(&corr);
        }
        f.ws_buffer.unwrap_or(DEFAULT_WS_BUFFER)
    };
    let up = match up {
        Ok(up) => up,
        Err(rej) => return rej.into_response(),
    };
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let start = match (get("cursor"), get("from")) {
        (Some(c), _) => Start::Cursor(c.to_string()),
        (None, Some(f)) if f.eq_ignore_ascii_case("now") => Start::Now,
        _ => Start::Recent,
    };
    let filters = normalize_filters(q.iter().filter(|(k, _)| k == "path").map(|(_, v)| v));
    // Subscribe before answering 101: once the client sees the upgrade, every later event
    // reaches it.
    let sub = s.store().subscribe(buffer);
    tracing::debug!(filters = filters.len(), "ws connected");
    up.on_upgrade(move |socket| async move {
        Conn {
            s,
            socket,
            sub,
            filters,
            pending: VecDeque::new(),
            catch_up_cursor: None,
            catch_up_last: 0,
            sent: 0,
            malformed_sent: false,
        }
        .run(start)
        .await
    })
}

/// Trimmed, absolute, deduplicated path filters.
fn normalize_filters<'a>(values: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let p = if v.starts_with('/') {
            v.to_string()
        } else {
            format!("/{v}")
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Path filter match: exact, `*` = one segment, trailing `**` = any rest.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern.is_empty() || path.is_empty() {
        return false;
    }
    if pattern == path {
        return true;
    }
    let pat: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" && i == pat.len() - 1 {
            return true;
        }
        let Some(s) = segs.get(i) else {
            return false;
        };
        if *p != "*" && p != s {
            return false;
        }
    }
    pat.len() == segs.len()
}

/// What the fault set asks of a connection before its next message.
enum Act {
    Go,
    Drop,
    Close,
    Stall,
    Malformed,
}

struct Conn {
    s: Arc<Shared>,
    socket: WebSocket,
    sub: Subscription,
    filters: Vec<String>,
    /// Catch-up events read from the feed and not sent yet.
    pending: VecDeque<Event>,
    /// Feed cursor of the next catch-up page (`None` = catch-up done).
    catch_up_cursor: Option<String>,
    /// Largest event number the catch-up read: live events up to it are duplicates.
    catch_up_last: u64,
    /// Event messages sent.
    sent: u64,
    malformed_sent: bool,
}

impl Conn {
    async fn run(mut self, start: Start) {
        match start {
            Start::Cursor(c) => self.catch_up_cursor = Some(c),
            Start::Now => {}
            Start::Recent => {
                let page = self.s.store().recent_events(CATCH_UP_PAGE);
                self.note_catch_up(&page);
                self.pending.extend(page);
            }
        }
        loop {
            if self.pending.is_empty() {
                if let Some(c) = self.catch_up_cursor.take() {
                    let (page, next) = self.s.store().events(Some(&c), CATCH_UP_PAGE, false);
                    self.note_catch_up(&page);
                    self.pending.extend(page);
                    self.catch_up_cursor = next;
                }
            }
            if !self.apply_faults().await {
                return;
            }
            tokio::select! {
                biased;
                _ = self.s.hang() => {
                    self.close(close_code::AWAY, "server shutting down").await;
                    return;
                }
                m = self.socket.recv() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if is_ping(t.as_str()) {
                            let pong = serde_json::json!({
                                "type": "pong",
                                "timestamp": rfc3339(SystemTime::now()),
                            });
                            if self.socket.send(Message::Text(pong.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                ev = next_event(&mut self.pending, &mut self.sub.rx) => match ev {
                    Some((e, live)) => {
                        if live && event_num(&e.event_id).is_some_and(|n| n <= self.catch_up_last) {
                            continue;
                        }
                        if !self.filters.is_empty()
                            && !self.filters.iter().any(|f| path_matches(f, &e.path))
                        {
                            continue;
                        }
                        // Faults are checked again right before each event (they may have
                        // changed while this connection waited for it).
                        if !self.apply_faults().await {
                            return;
                        }
                        let msg = self.message(&e);
                        if self.socket.send(Message::Text(msg.into())).await.is_err() {
                            return;
                        }
                        self.sent += 1;
                        self.s.counts().ws_messages += 1;
                    }
                    None => {
                        let why = if self.sub.overflow.load(Ordering::SeqCst) { "overflow" } else { "closed" };
                        tracing::debug!(why, "ws live queue ended");
                        self.close(TRY_AGAIN_LATER, "event stream overflow; reconnect from cursor")
                            .await;
                        return;
                    }
                },
            }
        }
    }

    fn note_catch_up(&mut self, page: &[Event]) {
        if let Some(n) = page.iter().filter_map(|e| event_num(&e.event_id)).max() {
            self.catch_up_last = self.catch_up_last.max(n);
        }
    }

    /// Carries out what the fault set asks now; `false` = the connection is over.
    async fn apply_faults(&mut self) -> bool {
        match self.fault_act() {
            Act::Go => true,
            // Dropping the socket closes TCP without a close frame.
            Act::Drop => false,
            Act::Close => {
                self.close(TRY_AGAIN_LATER, "injected fault; reconnect from cursor")
                    .await;
                false
            }
            Act::Stall => {
                // Stop draining the live queue (it may overflow silently) and the socket (no
                // pong of any kind); hold the connection until shutdown.
                self.sub.rx.close();
                self.s.hang().await;
                false
            }
            Act::Malformed => {
                self.malformed_sent = true;
                let bad = "{\"eventId\": this is not JSON";
                self.socket.send(Message::Text(bad.into())).await.is_ok()
            }
        }
    }

    fn fault_act(&self) -> Act {
        let f = self.s.faults();
        let hit = |after: Option<u64>| after.is_some_and(|n| self.sent >= n);
        if hit(f.ws_drop_after) {
            Act::Drop
        } else if hit(f.ws_close_after) {
            Act::Close
        } else if hit(f.ws_stall_after) {
            Act::Stall
        } else if !self.malformed_sent && hit(f.ws_malformed_after) {
            Act::Malformed
        } else {
            Act::Go
        }
    }

    /// The text message for one event, with inline content when it is current and small.
    fn message(&self, e: &Event) -> String {
        let mut v = serde_json::to_value(e).expect("serialize event");
        if e.ty == "file.created" || e.ty == "file.updated" {
            let rec = self.s.store().get(&e.path);
            if let Some(rec) = rec {
                let current = e
                    .revision
                    .as_deref()
                    .and_then(|r| r.strip_prefix("rev_"))
                    .and_then(|r| r.parse::<u64>().ok())
                    == Some(rec.revision);
                if current && rec.content.len() <= MAX_INLINE {
                    let o = v.as_object_mut().expect("event is an object");
                    o.insert("inlineContent".into(), true.into());
                    o.insert("contentType".into(), rec.content_type.clone().into());
                    o.insert("content".into(), rec.content.clone().into());
                    if rec.base64 {
                        o.insert("encoding".into(), "base64".into());
                    }
                    o.insert("contentHash".into(), rec.hash.clone().into());
                }
            }
        }
        v.to_string()
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}

/// The next catch-up event (`false`) or, once the catch-up is sent, the next live one (`true`).
/// `None` = the live queue ended (overflow). Cancel-safe.
async fn next_event(
    pending: &mut VecDeque<Event>,
    rx: &mut mpsc::Receiver<Event>,
) -> Option<(Event, bool)> {
    if let Some(e) = pending.pop_front() {
        return Some((e, false));
    }
    rx.recv().await.map(|e| (e, true))
}

fn is_ping(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("type")?
                .as_str()
                .map(|t| t.trim().eq_ignore_ascii_case("ping"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::path_matches;

    #[test]
    fn filters() {
        assert!(path_matches("/a/b.md", "/a/b.md"));
        assert!(!path_matches("/a/b.md", "/a/b.mdx"));
        assert!(path_matches("/docs/**", "/docs/x/y/z"));
        assert!(path_matches("/docs/**", "/docs"));
        assert!(!path_matches("/docs/**", "/docsx/a"));
        assert!(path_matches("/*/b", "/a/b"));
        assert!(!path_matches("/*/b", "/a/c/b"));
        assert!(!path_matches("/*", "/a/b"));
        assert!(path_matches("/**", "/anything/at/all"));
    }
}
