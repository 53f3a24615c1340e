//! Tests of the realtime WebSocket `/v1/workspaces/{ws}/fs/ws` of the reference remote, with a
//! real WebSocket client (tokio-tungstenite). No sleep synchronizes anything: every wait is on a
//! message or a condition, bounded by a timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use mountd_remote::{sha256_hex, ErrorFault, FailNext, Faults, RemoteConfig, RemoteHandle};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TOKEN: &str = "test-token";
const WAIT: Duration = Duration::from_secs(20);

async fn start() -> RemoteHandle {
    RemoteHandle::start(RemoteConfig::default()).await.unwrap()
}

fn ws_url(r: &RemoteHandle, query: &str) -> String {
    format!("ws://{}/v1/workspaces/ws1/fs/ws?{query}", r.addr)
}

/// Connects with the right token plus `query` (`""` for none).
async fn connect(r: &RemoteHandle, query: &str) -> Ws {
    let q = if query.is_empty() {
        format!("token={TOKEN}")
    } else {
        format!("token={TOKEN}&{query}")
    };
    let (ws, resp) = tokio::time::timeout(WAIT, connect_async(ws_url(r, &q)))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// A handshake that must be refused: the HTTP answer (status, headers, body).
async fn refused(
    req: impl IntoClientRequest + Unpin,
) -> tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>> {
    match tokio::time::timeout(WAIT, connect_async(req))
        .await
        .expect("handshake answer in time")
    {
        Err(WsError::Http(resp)) => *resp,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

fn body_json(resp: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>) -> Value {
    serde_json::from_slice(resp.body().as_deref().unwrap_or(b"")).expect("JSON error body")
}

/// Next data or close message (protocol pings/pongs skipped); `None` = stream ended.
async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time");
        match m {
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Some(Ok(Message::Text(t))) => t.as_str().to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    let t = next_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

fn num(v: &Value) -> u64 {
    let id = v["eventId"]
        .as_str()
        .unwrap_or_else(|| panic!("no eventId in {v}"));
    id.strip_prefix("evt_").unwrap().parse().unwrap()
}

/// Reads event messages until the event numbered `last` arrived; returns every number seen.
async fn ids_until(ws: &mut Ws, last: u64) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let n = num(&next_json(ws).await);
        out.push(n);
        assert!(n <= last, "event {n} past the expected end {last}");
        if n == last {
            return out;
        }
    }
}

async fn expect_close(ws: &mut Ws, code: u16) {
    match next(ws).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), code, "{f:?}"),
        other => panic!("expected a close frame {code}, got {other:?}"),
    }
}

/// `n` events: files `/e/f<i>.txt`.
fn write_events(r: &RemoteHandle, n: usize) {
    for i in 0..n {
        r.put(&format!("/e/f{i}.txt"), format!("content {i}").as_bytes());
    }
}

#[tokio::test]
async fn auth_token_only_from_query() {
    let r = start().await;
    r.put("/a.txt", b"a");

    // Query token: accepted.
    let mut ws = connect(&r, "").await;
    assert_eq!(next_json(&mut ws).await["path"], "/a.txt");

    // Bearer header alone: 401 before any upgrade.
    let mut req = ws_url(&r, "").into_client_request().unwrap();
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let resp = refused(req).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(body_json(&resp)["code"], "unauthorized");

    // Wrong token: 401.
    let resp = refused(ws_url(&r, "token=wrong")).await;
    assert_eq!(resp.status().as_u16(), 401);

    // A plain GET (no upgrade) with a wrong token is refused with 401 too, a good one is not upgraded.
    let http = reqwest::Client::new();
    let base = format!("{}/v1/workspaces/ws1/fs/ws", r.base_url());
    let st = http.get(format!("{base}?token=x")).send().await.unwrap();
    assert_eq!(st.status().as_u16(), 401);
    let st = http
        .get(format!("{base}?token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(st.status().is_client_error(), "{}", st.status());

    let c = r.counts();
    assert_eq!((c.ws, c.unauthorized), (5, 3));
    assert_eq!(c.ws_messages, 1);
    r.shutdown().await;
}

#[tokio::test]
async fn cursor_catch_up_is_exclusive_and_pages() {
    let r = start().await;
    write_events(&r, 250);
    let mut ws = connect(&r, "cursor=evt_37").await;
    let ids = ids_until(&mut ws, 250).await;
    assert_eq!(ids, (38..=250).collect::<Vec<_>>());
    // Then live.
    r.put("/live.txt", b"x");
    let v = next_json(&mut ws).await;
    assert_eq!((num(&v), v["path"].as_str()), (251, Some("/live.txt")));

    // Cursor at the tip: nothing to catch up, live next.
    let mut ws2 = connect(&r, "cursor=evt_251").await;
    r.delete("/live.txt");
    let v = next_json(&mut ws2).await;
    assert_eq!((num(&v), v["type"].as_str()), (252, Some("file.deleted")));
    assert_eq!(num(&next_json(&mut ws).await), 252);

    // Unknown cursor: replays from the start.
    let mut ws3 = connect(&r, "cursor=evt_bogus").await;
    assert_eq!(
        ids_until(&mut ws3, 252).await,
        (1..=252).collect::<Vec<_>>()
    );
    r.shutdown().await;
}

#[tokio::test]
async fn from_now_is_live_only() {
    let r = start().await;
    write_events(&r, 20);
    let mut ws = connect(&r, "from=now").await;
    r.put("/now.txt", b"now");
    let v = next_json(&mut ws).await;
    assert_eq!((num(&v), v["path"].as_str()), (21, Some("/now.txt")));
    // A cursor wins over from=now.
    let mut ws2 = connect(&r, "from=now&cursor=evt_19").await;
    assert_eq!(ids_until(&mut ws2, 21).await, vec![20, 21]);
    r.shutdown().await;
}

#[tokio::test]
async fn default_replays_the_last_100() {
    let r = start().await;
    write_events(&r, 150);
    let mut ws = connect(&r, "").await;
    assert_eq!(
        ids_until(&mut ws, 150).await,
        (51..=150).collect::<Vec<_>>()
    );
    r.delete("/e/f0.txt");
    let v = next_json(&mut ws).await;
    assert_eq!((num(&v), v["type"].as_str()), (151, Some("file.deleted")));
    r.shutdown().await;
}

/// Events written continuously by another thread while sockets connect (with a cursor a bit
/// behind the tip, `from=now` and the default): each socket sees a gap-free, duplicate-free
/// run up to the last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_boundary_has_no_gap_and_no_duplicate() {
    let r = Arc::new(start().await);
    // Catch-up and live overlap a lot here: a big queue so that no socket overflows.
    r.update_faults(|f| f.ws_buffer = Some(1 << 20));
    // A backlog, so that the cursor sockets' catch-up spans many pages while the writer runs.
    write_events(&r, 3000);
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    const SOCKETS: usize = 9;
    let writer = {
        let (r, connected, stop) = (r.clone(), connected.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            let mut after_all = 0usize;
            // Bounded: at most 300k events; stops 2000 events after every socket connected.
            while n < 300_000 && after_all < 2000 && !stop.load(Ordering::SeqCst) {
                let p = format!("/live/f{}.txt", n % 64);
                if n % 7 == 6 {
                    r.delete(&p);
                    r.put(&p, b"back");
                    n += 2;
                } else {
                    r.put(&p, format!("v{n}").as_bytes());
                    n += 1;
                }
                if connected.load(Ordering::SeqCst) >= SOCKETS {
                    after_all += 1;
                }
                if n.is_multiple_of(16) {
                    std::thread::yield_now();
                }
            }
        })
    };
    let http = reqwest::Client::new();
    let tip = || async {
        let v: Value = http
            .get(format!(
                "{}/v1/workspaces/ws1/fs/events?direction=desc&limit=1",
                r.base_url()
            ))
            .bearer_auth(TOKEN)
            .header("X-Correlation-Id", "ws_test_tip")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"].get(0).map(num).unwrap_or(0)
    };
    let mut socks: Vec<(Option<u64>, Ws)> = Vec::new();
    for i in 0..SOCKETS {
        let (start, q) = match i % 3 {
            0 => {
                let c = tip().await.saturating_sub(500 + 700 * i as u64);
                (Some(c), format!("cursor=evt_{c}"))
            }
            1 => (None, "from=now".to_string()),
            _ => (None, String::new()),
        };
        socks.push((start, connect(&r, &q).await));
        connected.fetch_add(1, Ordering::SeqCst);
    }
    let writer_done = tokio::task::spawn_blocking(move || writer.join());
    let joined = tokio::time::timeout(WAIT, writer_done).await;
    stop.store(true, Ordering::SeqCst);
    joined.expect("writer ends in time").unwrap().unwrap();
    let last = tip().await;
    assert!(last > 5000, "only {last} events written");
    for (i, (start, ws)) in socks.iter_mut().enumerate() {
        let ids = ids_until(ws, last).await;
        let first = start.map(|c| c + 1).unwrap_or(ids[0]);
        assert_eq!(ids[0], first, "socket {i}: first event");
        for w in ids.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "socket {i}: gap or duplicate after evt_{}",
                w[0]
            );
        }
    }
    assert_eq!(r.counts().ws, SOCKETS as u64);
}

#[tokio::test]
async fn inline_content_for_current_small_files_only() {
    let r = start().await;
    r.put("/small.txt", b"hello inline");
    let bin = [0u8, 159, 146, 150, 255];
    r.put_base64("/bin.dat", &bin);
    let big = vec![b'x'; (1 << 20) + 1];
    r.put("/big.txt", &big);
    r.put("/s.txt", b"old");
    r.put("/s.txt", b"new");
    r.delete("/small.txt");
    r.put("/small.txt", b"again");

    let mut ws = connect(&r, "cursor=evt_0").await;
    let mut msgs = Vec::new();
    for _ in 0..7 {
        msgs.push(next_json(&mut ws).await);
    }
    let has_inline = |v: &Value| v.get("inlineContent") == Some(&Value::Bool(true));

    // evt_1 /small.txt rev_1: superseded (deleted and re-created since) → no content.
    assert_eq!(msgs[0]["path"], "/small.txt");
    assert!(
        !has_inline(&msgs[0]) && msgs[0].get("content").is_none(),
        "{}",
        msgs[0]
    );
    // evt_2 base64, current.
    let v = &msgs[1];
    assert!(has_inline(v), "{v}");
    assert_eq!(v["encoding"], "base64");
    assert_eq!(v["contentType"], "application/octet-stream");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, bin);
    assert_eq!(v["contentHash"].as_str().unwrap(), sha256_hex(&bytes));
    // evt_3 > 1 MiB: metadata only.
    let v = &msgs[2];
    assert_eq!(v["path"], "/big.txt");
    assert!(!has_inline(v) && v.get("content").is_none());
    assert_eq!(v["contentHash"].as_str().unwrap(), sha256_hex(&big));
    // evt_4 old revision of /s.txt: none; evt_5 current: "new".
    assert!(!has_inline(&msgs[3]));
    let v = &msgs[4];
    assert_eq!(
        (v["type"].as_str(), v["revision"].as_str()),
        (Some("file.updated"), Some("rev_5"))
    );
    assert!(has_inline(v));
    assert_eq!(v["content"], "new");
    assert!(v.get("encoding").is_none_or(|e| e == "utf-8"), "{v}");
    assert_eq!(v["contentHash"].as_str().unwrap(), sha256_hex(b"new"));
    // evt_6 delete: never inline; evt_7 the re-create, current.
    assert_eq!(msgs[5]["type"], "file.deleted");
    assert!(!has_inline(&msgs[5]));
    assert!(has_inline(&msgs[6]));
    assert_eq!(msgs[6]["content"], "again");
    assert_eq!(
        msgs[6]["contentHash"].as_str().unwrap(),
        sha256_hex(b"again")
    );
    // Every message has the /fs/events shape.
    for v in &msgs {
        for k in ["eventId", "type", "path", "revision", "origin", "timestamp"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
    }
    r.shutdown().await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let r = start().await;
    let mut ws = connect(&r, "from=now").await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "pong");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    // Junk from the client is ignored; events still flow.
    ws.send(Message::text("not json")).await.unwrap();
    r.put("/p.txt", b"p");
    assert_eq!(next_json(&mut ws).await["path"], "/p.txt");
    assert_eq!(r.counts().ws_messages, 1);
    r.shutdown().await;
}

#[tokio::test]
async fn path_filters() {
    let r = start().await;
    for p in [
        "/docs/a.md",
        "/docs/sub/b.md",
        "/img/x.png",
        "/top.md",
        "/docsx/c.md",
    ] {
        r.put(p, b"x");
    }
    let paths = |q: &'static str| {
        let r = &r;
        async move {
            let mut ws = connect(r, &format!("cursor=evt_0&{q}")).await;
            // A marker event that every filter below lets through ends the catch-up.
            r.put("/zz/end", b"end");
            let mut out = Vec::new();
            loop {
                let v = next_json(&mut ws).await;
                let p = v["path"].as_str().unwrap().to_string();
                if p == "/zz/end" {
                    return out;
                }
                out.push(p);
            }
        }
    };
    assert_eq!(
        paths("path=/docs/**&path=/zz/**").await,
        ["/docs/a.md", "/docs/sub/b.md"]
    );
    // `*` is a whole segment, not a glob inside one.
    assert_eq!(paths("path=/*&path=/zz/end").await, ["/top.md"]);
    assert_eq!(paths("path=/*.md&path=/zz/end").await, Vec::<String>::new());
    assert_eq!(
        paths("path=/*/c.md&path=img/x.png&path=/zz/*").await,
        ["/img/x.png", "/docsx/c.md"]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn handshake_faults() {
    let r = start().await;
    r.update_faults(|f| {
        f.ws_handshake = Some(ErrorFault::new(429, "rate_limited").with_retry_after("7"))
    });
    let url = ws_url(&r, &format!("token={TOKEN}"));
    let resp = refused(url.as_str()).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    assert_eq!(body_json(&resp)["code"], "rate_limited");

    for (st, code) in [(403, "forbidden"), (404, "not_found")] {
        r.update_faults(|f| f.ws_handshake = Some(ErrorFault::new(st, code)));
        let resp = refused(url.as_str()).await;
        assert_eq!(resp.status().as_u16(), st);
        assert_eq!(body_json(&resp)["code"], code);
    }

    // fail_next on route "ws": one refusal, then the upgrade.
    r.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "ws".into(),
            count: 1,
            error: ErrorFault::new(503, "unavailable"),
        }],
        ..Default::default()
    });
    assert_eq!(refused(url.as_str()).await.status().as_u16(), 503);
    let _ws = connect(&r, "from=now").await;
    assert_eq!(r.counts().ws, 5);
    r.shutdown().await;
}

#[tokio::test]
async fn fault_drop_after_n() {
    let r = start().await;
    write_events(&r, 5);
    r.update_faults(|f| f.ws_drop_after = Some(2));
    let mut ws = connect(&r, "cursor=evt_0").await;
    assert_eq!(num(&next_json(&mut ws).await), 1);
    assert_eq!(num(&next_json(&mut ws).await), 2);
    match next(&mut ws).await {
        Some(Err(WsError::Protocol(_))) | Some(Err(WsError::Io(_))) | None => {}
        other => panic!("expected a connection drop without close frame, got {other:?}"),
    }
    assert_eq!(r.counts().ws_messages, 2);
    r.shutdown().await;
}

#[tokio::test]
async fn fault_stall_after_n() {
    let r = start().await;
    write_events(&r, 5);
    r.update_faults(|f| f.ws_stall_after = Some(2));
    let mut ws = connect(&r, "cursor=evt_0").await;
    assert_eq!(num(&next_json(&mut ws).await), 1);
    assert_eq!(num(&next_json(&mut ws).await), 2);
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    r.put("/more.txt", b"more");
    // A negative check needs a bounded wait: nothing arrives, and the socket is not closed.
    let got = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
    assert!(got.is_err(), "stalled socket delivered {got:?}");
    assert_eq!(r.counts().ws_messages, 2);
    // Shutdown releases it (no close frame needed).
    r.shutdown().await;
}

#[tokio::test]
async fn fault_malformed_after_n() {
    let r = start().await;
    write_events(&r, 3);
    r.update_faults(|f| f.ws_malformed_after = Some(1));
    let mut ws = connect(&r, "cursor=evt_0").await;
    assert_eq!(num(&next_json(&mut ws).await), 1);
    let junk = next_text(&mut ws).await;
    assert!(serde_json::from_str::<Value>(&junk).is_err(), "{junk}");
    assert_eq!(num(&next_json(&mut ws).await), 2);
    assert_eq!(num(&next_json(&mut ws).await), 3);
    r.shutdown().await;
}

#[tokio::test]
async fn fault_close_1013_after_n() {
    let r = start().await;
    write_events(&r, 5);
    r.update_faults(|f| f.ws_close_after = Some(2));
    let mut ws = connect(&r, "cursor=evt_0").await;
    assert_eq!(num(&next_json(&mut ws).await), 1);
    assert_eq!(num(&next_json(&mut ws).await), 2);
    expect_close(&mut ws, 1013).await;
    // Switched at run time: a live connection meets it at its next event.
    r.set_faults(Faults::default());
    let mut ws = connect(&r, "from=now").await;
    r.update_faults(|f| f.ws_close_after = Some(0));
    r.put("/x", b"x");
    expect_close(&mut ws, 1013).await;
    r.shutdown().await;
}

/// Runs on the current-thread runtime: the writes below happen before the connection task
/// can drain anything, so its 4-event queue overflows deterministically.
#[tokio::test]
async fn overflow_closes_1013_and_cursor_resumes() {
    let r = start().await;
    r.update_faults(|f| f.ws_buffer = Some(4));
    let mut ws = connect(&r, "from=now").await;
    write_events(&r, 20);
    assert_eq!(ids_until(&mut ws, 4).await, vec![1, 2, 3, 4]);
    expect_close(&mut ws, 1013).await;
    // Reconnect from the cursor: the rest, nothing lost.
    r.update_faults(|f| f.ws_buffer = None);
    let mut ws = connect(&r, "cursor=evt_4").await;
    assert_eq!(ids_until(&mut ws, 20).await, (5..=20).collect::<Vec<_>>());
    r.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_going_away() {
    let r = start().await;
    let mut ws = connect(&r, "from=now").await;
    r.shutdown().await;
    match next(&mut ws).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_faults_and_counts_over_the_control_api() {
    let r = start().await;
    let http = reqwest::Client::new();
    let f = serde_json::json!({
        "ws_handshake": {"status": 429, "code": "rate_limited", "retry_after": "3"},
        "ws_drop_after": 1, "ws_stall_after": 2, "ws_malformed_after": 3,
        "ws_close_after": 4, "ws_buffer": 8
    });
    let st = http
        .put(format!("{}/_control/faults", r.base_url()))
        .json(&f)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st.as_u16(), 204);
    let got = r.faults();
    assert_eq!(got.ws_handshake.unwrap().retry_after.as_deref(), Some("3"));
    assert_eq!(
        (
            got.ws_drop_after,
            got.ws_stall_after,
            got.ws_malformed_after,
            got.ws_close_after,
            got.ws_buffer
        ),
        (Some(1), Some(2), Some(3), Some(4), Some(8))
    );
    // Old fault JSON (without the ws fields) still parses, with every ws fault off.
    let old: Faults = serde_json::from_str(r#"{"export_empty":true}"#).unwrap();
    assert!(old.export_empty && old.ws_handshake.is_none() && old.ws_buffer.is_none());
    let c: Value = http
        .get(format!("{}/_control/counts", r.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["ws"].as_u64(), c["ws_messages"].as_u64()),
        (Some(0), Some(0))
    );
    r.shutdown().await;
}
