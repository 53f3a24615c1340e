//! Tests of the reference remote's writes over real HTTP on loopback (`PUT`/`DELETE /fs/file`,
//! `POST /fs/bulk`): `If-Match`, 409 bodies, 202 answers and their events, the body cap, scope,
//! write faults, counters; and the same rules in-process through `Workspace`.

use std::time::{Duration, Instant};

use base64::Engine;
use mountd_remote::{
    sha256_hex, DeleteStorm, ErrorFault, FailNext, Faults, RemoteConfig, RemoteHandle, Workspace,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WS: &str = "/v1/workspaces/ws1/fs";

async fn start() -> RemoteHandle {
    RemoteHandle::start(RemoteConfig::default()).await.unwrap()
}

fn req(r: &RemoteHandle, m: reqwest::Method, route: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(m, format!("{}{WS}/{route}", r.base_url()))
        .bearer_auth("test-token")
        .header("X-Correlation-Id", "corr_write_test")
}

async fn answer(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = rb.send().await.unwrap();
    let st = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (st, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn put_req(
    r: &RemoteHandle,
    path: &str,
    body: &Value,
    if_match: Option<&str>,
) -> reqwest::RequestBuilder {
    let rb = req(r, reqwest::Method::PUT, &format!("file?path={path}")).json(body);
    match if_match {
        Some(m) => rb.header("If-Match", m),
        None => rb,
    }
}

async fn put(r: &RemoteHandle, path: &str, content: &str, if_match: Option<&str>) -> (u16, Value) {
    let body = json!({"contentType": "text/plain", "content": content});
    answer(put_req(r, path, &body, if_match)).await
}

async fn del(r: &RemoteHandle, path: &str, if_match: Option<&str>) -> (u16, Value) {
    let rb = req(r, reqwest::Method::DELETE, &format!("file?path={path}"));
    let rb = match if_match {
        Some(m) => rb.header("If-Match", m),
        None => rb,
    };
    answer(rb).await
}

async fn bulk(r: &RemoteHandle, files: Value) -> (u16, Value) {
    answer(req(r, reqwest::Method::POST, "bulk").json(&json!({ "files": files }))).await
}

/// Every event of the feed.
async fn events(r: &RemoteHandle) -> Vec<Value> {
    let (st, v) = answer(req(r, reqwest::Method::GET, "events?limit=1000")).await;
    assert_eq!(st, 200);
    v["events"].as_array().unwrap().clone()
}

async fn control(r: &RemoteHandle, route: &str, body: Option<Value>) -> u16 {
    let rb = reqwest::Client::new().put(format!("{}/_control/{route}", r.base_url()));
    let rb = match body {
        Some(b) => rb.json(&b),
        None => rb,
    };
    rb.send().await.unwrap().status().as_u16()
}

/// Asserts a 202 write answer and returns its `targetRevision`.
fn accepted(st: u16, v: &Value) -> String {
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "queued");
    assert!(v["opId"].as_str().unwrap().starts_with("op_"), "{v}");
    v["targetRevision"].as_str().unwrap().to_string()
}

fn conflict(st: u16, v: &Value, expected: &str, current: &str) {
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["code"], "revision_conflict");
    assert_eq!(v["correlationId"], "corr_write_test");
    assert_eq!(v["expectedRevision"], expected);
    assert_eq!(v["currentRevision"], current);
}

#[tokio::test]
async fn put_if_match_rules_and_events() {
    let r = start().await;
    let (st, v) = put(&r, "/a.txt", "one", None).await;
    assert_eq!((st, v["code"].as_str()), (412, Some("precondition_failed")));
    let (st, _) = put(&r, "/a.txt", "one", Some("")).await;
    assert_eq!(st, 412);
    assert_eq!(r.revision("/a.txt"), None);

    // 0 = create only if absent.
    let (st, v) = put(&r, "/a.txt", "one", Some("0")).await;
    let rev1 = accepted(st, &v);
    assert_eq!(v["opId"], "op_1");
    assert_eq!(r.revision("/a.txt").as_deref(), Some(rev1.as_str()));
    assert_eq!(r.content("/a.txt").unwrap(), b"one");
    let (st, v) = put(&r, "/a.txt", "two", Some("0")).await;
    conflict(st, &v, "0", &rev1);
    assert_eq!(v["currentContentPreview"], "one");

    // The exact revision; a stale one conflicts.
    let (st, v) = put(&r, "/a.txt", "two", Some(&rev1)).await;
    let rev2 = accepted(st, &v);
    assert_ne!(rev1, rev2);
    let (st, v) = put(&r, "/a.txt", "three", Some(&rev1)).await;
    conflict(st, &v, &rev1, &rev2);
    assert_eq!(r.content("/a.txt").unwrap(), b"two");

    // Quotes and W/ are stripped, also in expectedRevision.
    let (st, v) = put(&r, "/a.txt", "three", Some(&format!("\"{rev2}\""))).await;
    let rev3 = accepted(st, &v);
    let (st, v) = put(&r, "/a.txt", "x", Some(&format!("W/\"{rev2}\""))).await;
    conflict(st, &v, &rev2, &rev3);
    let (st, v) = put(&r, "/a.txt", "four", Some(&format!("W/\"{rev3}\""))).await;
    let rev4 = accepted(st, &v);

    // A real revision for an absent path → 404; * writes whatever is there.
    let (st, v) = put(&r, "/absent.txt", "x", Some("rev_1")).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, v) = put(&r, "/star.txt", "s1", Some("*")).await;
    accepted(st, &v);
    let (st, v) = put(&r, "/a.txt", "five", Some("*")).await;
    let rev5 = accepted(st, &v);

    // Bad bodies.
    let bad64 =
        json!({"contentType": "application/octet-stream", "content": "!!", "encoding": "base64"});
    let (st, v) = answer(put_req(&r, "/b.bin", &bad64, Some("*"))).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("bad_request")));
    let (st, _) = answer(
        req(&r, reqwest::Method::PUT, "file?path=/b.bin")
            .header("If-Match", "*")
            .body("{not json"),
    )
    .await;
    assert_eq!(st, 400);
    let bin: Vec<u8> = (0u8..=255).collect();
    let b64 = json!({"contentType": "application/octet-stream", "encoding": "base64",
        "content": base64::engine::general_purpose::STANDARD.encode(&bin)});
    let (st, v) = answer(put_req(&r, "/b.bin", &b64, Some("0"))).await;
    let rev_bin = accepted(st, &v);
    assert_eq!(r.content("/b.bin").unwrap(), bin);
    let (_, f) = answer(req(&r, reqwest::Method::GET, "file?path=/b.bin")).await;
    assert_eq!(
        (f["revision"].as_str(), f["encoding"].as_str()),
        (Some(rev_bin.as_str()), Some("base64"))
    );

    // Each accepted write is one event carrying targetRevision and the content's hash.
    let evs = events(&r).await;
    let writes: Vec<(&str, &str, &str)> = evs
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["path"].as_str().unwrap(),
                e["revision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("file.created", "/a.txt", rev1.as_str()),
            ("file.updated", "/a.txt", rev2.as_str()),
            ("file.updated", "/a.txt", rev3.as_str()),
            ("file.updated", "/a.txt", rev4.as_str()),
            ("file.created", "/star.txt", "rev_5"),
            ("file.updated", "/a.txt", rev5.as_str()),
            ("file.created", "/b.bin", rev_bin.as_str()),
        ]
    );
    assert_eq!(evs[3]["contentHash"], sha256_hex(b"four"));
    assert_eq!(evs[6]["contentHash"], sha256_hex(&bin));
    assert!(evs.iter().all(|e| e["origin"] == "agent_write"));

    let c = r.counts();
    assert_eq!((c.put, c.writes_applied), (15, 7));
    assert_eq!(c.writes_per_path["/a.txt"], 5);
    assert!(!c.writes_per_path.contains_key("/absent.txt"));
    r.shutdown().await;
}

#[tokio::test]
async fn conflict_preview_is_the_first_120_characters() {
    let r = start().await;
    let long = "é".repeat(200);
    r.put("/long.txt", long.as_bytes());
    let (st, v) = put(&r, "/long.txt", "x", Some("0")).await;
    conflict(st, &v, "0", "rev_1");
    assert_eq!(v["currentContentPreview"], "é".repeat(120));
    r.put_base64("/bin", b"\xff");
    let (st, v) = put(&r, "/bin", "x", Some("0")).await;
    conflict(st, &v, "0", "rev_2");
    assert!(v.get("currentContentPreview").is_none());
    r.shutdown().await;
}

#[tokio::test]
async fn delete_rules() {
    let r = start().await;
    r.put("/d.txt", b"d");
    let (st, v) = del(&r, "/d.txt", None).await;
    assert_eq!((st, v["code"].as_str()), (412, Some("precondition_failed")));
    let (st, v) = del(&r, "/nope.txt", Some("*")).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, _) = del(&r, "/nope.txt", Some("rev_1")).await;
    assert_eq!(st, 404);
    let (st, v) = del(&r, "/d.txt", Some("rev_7")).await;
    conflict(st, &v, "rev_7", "rev_1");
    let (st, v) = del(&r, "/d.txt", Some("0")).await;
    conflict(st, &v, "0", "rev_1");
    assert!(r.content("/d.txt").is_some());

    let (st, v) = del(&r, "/d.txt", Some("\"rev_1\"")).await;
    let gone = accepted(st, &v);
    assert_eq!(r.revision("/d.txt"), None);
    let evs = events(&r).await;
    let last = evs.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["revision"].as_str()),
        (Some("file.deleted"), Some(gone.as_str()))
    );

    r.put("/e.txt", b"e");
    let (st, v) = del(&r, "/e.txt", Some("*")).await;
    accepted(st, &v);
    assert_eq!(r.file_count(), 0);
    let c = r.counts();
    assert_eq!((c.delete, c.writes_applied), (7, 2));
    r.shutdown().await;
}

#[tokio::test]
async fn bulk_mixed_success_conflict_forbidden() {
    let r = start().await;
    r.put("/k/exists", b"old"); // rev_1
    r.put("/k/other", b"old"); // rev_2
    let mut f = Faults::default();
    f.write_path_faults
        .insert("/k/locked".into(), ErrorFault::new(403, "forbidden"));
    r.set_faults(f);

    let (st, v) = bulk(
        &r,
        json!([
            {"path": "/k/new", "contentType": "text/plain", "content": "n"},
            {"path": "/k/exists", "contentType": "text/plain", "content": "e", "ifMatch": "rev_1"},
            {"path": "/k/other", "contentType": "text/plain", "content": "o", "ifMatch": "rev_9"},
            {"path": "/k/other", "contentType": "text/plain", "content": "o", "ifMatch": "0"},
            {"path": "/k/locked", "contentType": "text/plain", "content": "l"},
            {"path": "/k/bad", "contentType": "application/octet-stream", "content": "!!", "encoding": "base64"},
            {"path": "/k/absent", "contentType": "text/plain", "content": "a", "ifMatch": "rev_2"},
            {"path": "k/star", "contentType": "text/plain", "content": "s", "ifMatch": "*"},
            {"path": "/k/other", "contentType": "text/plain", "content": "forced"},
        ]),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        (v["written"].as_u64(), v["errorCount"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(v["correlationId"], "corr_write_test");
    let errs: Vec<(&str, &str)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errs,
        [
            ("/k/other", "conflict"),
            ("/k/other", "conflict"),
            ("/k/locked", "forbidden"),
            ("/k/bad", "bad_request"),
            ("/k/absent", "not_found"),
        ]
    );
    let e0 = &v["errors"][0];
    assert_eq!(
        (
            e0["expectedRevision"].as_str(),
            e0["currentRevision"].as_str()
        ),
        (Some("rev_9"), Some("rev_2"))
    );
    assert_eq!(v["errors"][1]["expectedRevision"], "0");
    assert!(v["errors"][2].get("expectedRevision").is_none());

    // Each written file: its own revision, op and event.
    let results = v["results"].as_array().unwrap();
    let paths: Vec<&str> = results
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/k/new", "/k/exists", "/k/star", "/k/other"]);
    let evs = events(&r).await;
    assert_eq!(evs.len(), 2 + 4);
    for (res, ev) in results.iter().zip(&evs[2..]) {
        assert_eq!(res["revision"], ev["revision"]);
        assert_eq!(res["path"], ev["path"]);
        assert_eq!(
            r.revision(res["path"].as_str().unwrap()).as_deref(),
            res["revision"].as_str()
        );
        assert!(res["opId"].as_str().unwrap().starts_with("op_"));
        assert_eq!(res["contentType"], "text/plain");
    }
    assert_eq!(r.content("/k/exists").unwrap(), b"e");
    assert_eq!(r.content("/k/other").unwrap(), b"forced");
    assert_eq!(r.content("/k/locked"), None);

    // The denied path's PUT and DELETE answer the fault, others are written.
    let (st, v) = put(&r, "/k/locked", "x", Some("*")).await;
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = del(&r, "/k/locked", Some("*")).await;
    assert_eq!(st, 403);
    let (st, v) = put(&r, "/k/free", "x", Some("*")).await;
    accepted(st, &v);

    // Bad bulk bodies fail as a whole.
    let (st, _) = answer(req(&r, reqwest::Method::POST, "bulk").body("[]")).await;
    assert_eq!(st, 400);
    let c = r.counts();
    assert_eq!((c.bulk, c.writes_applied), (2, 5));
    assert_eq!(c.writes_per_path["/k/other"], 1);
    r.shutdown().await;
}

/// A PUT body of exactly `len` bytes.
fn body_of(len: usize) -> Vec<u8> {
    let empty = br#"{"contentType":"text/plain","content":""}"#;
    let mut b = br#"{"contentType":"text/plain","content":""#.to_vec();
    b.resize(len - 2, b'x');
    b.extend_from_slice(b"\"}");
    assert_eq!(b.len(), len);
    assert!(len >= empty.len());
    b
}

#[tokio::test]
async fn body_cap_default_and_lowered() {
    let r = start().await;
    let send = |len: usize, path: &'static str| {
        answer(
            req(&r, reqwest::Method::PUT, &format!("file?path={path}"))
                .header("If-Match", "*")
                .header("Content-Type", "application/json")
                .body(body_of(len)),
        )
    };
    let mib = 1 << 20;
    let (st, v) = send(mib + 1, "/big").await;
    assert_eq!((st, v["code"].as_str()), (413, Some("payload_too_large")));
    assert_eq!(r.revision("/big"), None);
    let (st, v) = send(mib, "/big").await;
    accepted(st, &v);

    assert_eq!(control(&r, "max-body-bytes?n=1000", None).await, 204);
    let (st, _) = send(1001, "/small").await;
    assert_eq!(st, 413);
    let (st, v) = send(1000, "/small").await;
    accepted(st, &v);
    let (st, v) = send(999, "/small").await;
    accepted(st, &v);
    assert_eq!(r.content("/small").unwrap().len(), 999 - 41);

    // Bulk: the whole body counts.
    r.set_max_body_bytes(200);
    let file = json!({"path": "/b", "contentType": "text/plain", "content": "y".repeat(100)});
    let (st, v) = bulk(&r, json!([file])).await;
    assert_eq!((st, v["written"].as_u64()), (202, Some(1)));
    let (st, v) = bulk(&r, json!([file, file])).await;
    assert_eq!((st, v["code"].as_str()), (413, Some("payload_too_large")));
    let c = r.counts();
    assert_eq!((c.put, c.bulk, c.writes_applied), (5, 2, 4));
    r.shutdown().await;
}

#[tokio::test]
async fn read_only_token_reads_but_cannot_write() {
    let r = start().await;
    r.put("/r.txt", b"r");
    r.set_read_only(true);
    let (st, v) = put(&r, "/r.txt", "w", Some("*")).await;
    assert_eq!((st, v["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = del(&r, "/r.txt", Some("*")).await;
    assert_eq!(st, 403);
    let (st, _) = bulk(
        &r,
        json!([{"path": "/n", "contentType": "text/plain", "content": "n"}]),
    )
    .await;
    assert_eq!(st, 403);
    let (st, v) = answer(req(&r, reqwest::Method::GET, "file?path=/r.txt")).await;
    assert_eq!((st, v["content"].as_str()), (200, Some("r")));
    assert_eq!(r.counts().writes_applied, 0);

    assert_eq!(control(&r, "read-only?on=false", None).await, 204);
    let (st, v) = put(&r, "/r.txt", "w", Some("*")).await;
    accepted(st, &v);
    assert_eq!(control(&r, "read-only?on=true", None).await, 204);
    let (st, _) = put(&r, "/r.txt", "w", Some("*")).await;
    assert_eq!(st, 403);
    r.shutdown().await;
}

#[tokio::test]
async fn delete_storm_refuses_beyond_the_window_budget() {
    let r = start().await;
    for i in 0..5 {
        r.put(&format!("/s/{i}"), b"s");
    }
    let st = control(
        &r,
        "faults",
        Some(json!({"delete_storm": {"max_per_window": 2, "window_ms": 60000}})),
    )
    .await;
    assert_eq!(st, 204);
    for i in 0..2 {
        let (st, v) = del(&r, &format!("/s/{i}"), Some("*")).await;
        accepted(st, &v);
    }
    let resp = req(&r, reqwest::Method::DELETE, "file?path=/s/2")
        .header("If-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "60");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "delete_storm_rejected");
    assert!(r.content("/s/2").is_some());
    // Writes are not deletes.
    let (st, v) = put(&r, "/s/2", "t", Some("*")).await;
    accepted(st, &v);

    // A short window with its own Retry-After: a new window admits again.
    r.set_faults(Faults {
        delete_storm: Some(DeleteStorm {
            retry_after: "7".into(),
            ..DeleteStorm::new(1, 300)
        }),
        ..Default::default()
    });
    let (st, v) = del(&r, "/s/2", Some("*")).await;
    accepted(st, &v);
    let resp = req(&r, reqwest::Method::DELETE, "file?path=/s/3")
        .header("If-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "7")
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (st, v) = del(&r, "/s/3", Some("*")).await;
    accepted(st, &v);
    assert_eq!(r.counts().writes_per_path.get("/s/3"), Some(&1));
    r.shutdown().await;
}

/// Sends a raw HTTP/1.1 PUT and returns every byte the server sent back before closing.
async fn raw_put(r: &RemoteHandle, path: &str, content: &str) -> Vec<u8> {
    let body = json!({"contentType": "text/plain", "content": content}).to_string();
    let head = format!(
        "PUT {WS}/file?path={path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer test-token\r\n\
         X-Correlation-Id: raw_put_1\r\nIf-Match: *\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        r.addr,
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closes the connection");
    got
}

#[tokio::test]
async fn drop_answer_after_write_applies_then_closes() {
    let r = start().await;
    r.update_faults(|f| f.drop_answer_after_write = Some(1));
    let body = json!({"contentType": "text/plain", "content": "exactly once"});
    let err = put_req(&r, "/once.txt", &body, Some("0"))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.status().is_none(),
        "a transport error, not an answer: {err}"
    );
    assert_eq!(r.content("/once.txt").unwrap(), b"exactly once");
    let c = r.counts();
    assert_eq!(
        (c.put, c.writes_applied, c.writes_per_path["/once.txt"]),
        (1, 1, 1)
    );
    assert_eq!(r.faults().drop_answer_after_write, None);
    let evs = events(&r).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["contentHash"], sha256_hex(b"exactly once"));
    // The retry of the same push: its precondition no longer holds, the write is not repeated.
    let (st, v) = answer(put_req(&r, "/once.txt", &body, Some("0"))).await;
    conflict(st, &v, "0", "rev_1");
    assert_eq!(r.counts().writes_applied, 1);

    // Not a byte of an answer; a rejected write does not consume the fault.
    r.update_faults(|f| f.drop_answer_after_write = Some(3));
    let (st, _) = put(&r, "/once.txt", "x", Some("rev_9")).await;
    assert_eq!(st, 409);
    assert_eq!(raw_put(&r, "/raw.txt", "raw").await, b"");
    assert_eq!(r.content("/raw.txt").unwrap(), b"raw");
    // DELETE and bulk likewise.
    let err = req(&r, reqwest::Method::DELETE, "file?path=/raw.txt")
        .header("If-Match", "*")
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none());
    assert_eq!(r.revision("/raw.txt"), None);
    let err = req(&r, reqwest::Method::POST, "bulk")
        .json(
            &json!({"files": [{"path": "/b1", "contentType": "text/plain", "content": "1"},
                                {"path": "/b2", "contentType": "text/plain", "content": "2"}]}),
        )
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none());
    assert_eq!(r.content("/b2").unwrap(), b"2");
    assert_eq!(r.faults().drop_answer_after_write, None);
    let (st, v) = put(&r, "/after.txt", "a", Some("0")).await;
    accepted(st, &v);
    let c = r.counts();
    assert_eq!(c.writes_applied, 1 + 1 + 1 + 2 + 1);
    // One write per path, the raw PUT and its DELETE aside.
    let per_path: Vec<(&str, u64)> = c
        .writes_per_path
        .iter()
        .map(|(p, n)| (p.as_str(), *n))
        .collect();
    assert_eq!(
        per_path,
        [
            ("/after.txt", 1),
            ("/b1", 1),
            ("/b2", 1),
            ("/once.txt", 1),
            ("/raw.txt", 2)
        ]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn fail_next_and_delay_on_writes() {
    let r = start().await;
    r.put("/f.txt", b"f");
    let fail = |route: &str, count, e: ErrorFault| FailNext {
        route: route.into(),
        count,
        error: e,
    };
    r.set_faults(Faults {
        fail_next: vec![
            fail("put", 2, ErrorFault::new(503, "unavailable")),
            fail(
                "bulk",
                1,
                ErrorFault::new(429, "rate_limited").with_retry_after("2"),
            ),
            fail("delete", 1, ErrorFault::new(500, "internal_error")),
        ],
        ..Default::default()
    });
    for _ in 0..2 {
        let (st, v) = put(&r, "/f.txt", "g", Some("rev_1")).await;
        assert_eq!((st, v["code"].as_str()), (503, Some("unavailable")));
    }
    let (st, v) = put(&r, "/f.txt", "g", Some("rev_1")).await;
    accepted(st, &v);
    let resp = req(&r, reqwest::Method::POST, "bulk")
        .json(&json!({"files": [{"path": "/n", "contentType": "text/plain", "content": "n"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "2")
    );
    let (st, _) = del(&r, "/f.txt", Some("*")).await;
    assert_eq!(st, 500);
    assert!(r.content("/f.txt").is_some());
    let c = r.counts();
    assert_eq!((c.put, c.bulk, c.delete, c.writes_applied), (3, 1, 1, 1));

    // A delay before the write: a client that gives up leaves no write.
    r.update_faults(|f| f.write_delay_ms = 300);
    let t = Instant::now();
    let (st, v) = put(&r, "/slow.txt", "s", Some("0")).await;
    accepted(st, &v);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let err = put_req(&r, "/gave-up.txt", &json!({"content": "g"}), Some("0"))
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(r.revision("/gave-up.txt"), None);
    r.shutdown().await;
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test]
async fn in_process_workspace_writes() {
    let ws = Workspace::new(100);
    let body =
        |c: &str| serde_json::to_vec(&json!({"contentType": "text/plain", "content": c})).unwrap();
    let e = ws.put_json("/w.txt", &body("1"), None).unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (412, "precondition_failed"));
    let v = parse(&ws.put_json("/w.txt", &body("1"), Some("0")).unwrap());
    assert_eq!(
        (v["status"].as_str(), v["targetRevision"].as_str()),
        (Some("queued"), Some("rev_1"))
    );
    assert_eq!(ws.revision("/w.txt").as_deref(), Some("rev_1"));
    assert_eq!(ws.content("w.txt").unwrap(), b"1");

    let e = ws.put_json("/w.txt", &body("2"), Some("0")).unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (409, "revision_conflict"));
    assert_eq!(e.extra["expectedRevision"], "0");
    assert_eq!(e.extra["currentRevision"], "rev_1");
    assert_eq!(e.extra["currentContentPreview"], "1");
    let e = ws
        .put_json("/x.txt", &body("2"), Some("rev_1"))
        .unwrap_err();
    assert_eq!(e.status, 404);
    let e = ws.put_json("/w.txt", b"{", Some("*")).unwrap_err();
    assert_eq!(e.status, 400);

    let v = parse(
        &ws.bulk_json(
            &serde_json::to_vec(&json!({"files": [
                {"path": "/w.txt", "contentType": "text/plain", "content": "2", "ifMatch": "W/\"rev_1\""},
                {"path": "/y.txt", "contentType": "text/plain", "content": "y", "ifMatch": "rev_1"},
            ]}))
            .unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(
        (v["written"].as_u64(), v["errorCount"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["results"][0]["revision"], "rev_2");
    assert_eq!(v["errors"][0]["code"], "not_found");

    let e = ws.delete_json("/w.txt", Some("rev_1")).unwrap_err();
    assert_eq!(
        (e.status, e.extra["currentRevision"].as_str()),
        (409, Some("rev_2"))
    );
    let v = parse(&ws.delete_json("/w.txt", Some("rev_2")).unwrap());
    assert_eq!(v["targetRevision"], "rev_3");
    assert_eq!(ws.delete_json("/w.txt", Some("*")).unwrap_err().status, 404);
    let evs = parse(&ws.events_json(None, 100, false));
    let last = &evs["events"][2];
    assert_eq!(
        (last["type"].as_str(), last["revision"].as_str()),
        (Some("file.deleted"), Some("rev_3"))
    );

    ws.set_max_body_bytes(10);
    let e = ws
        .put_json("/z.txt", &body("too long for ten"), Some("*"))
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (413, "payload_too_large"));
    let c = ws.counts();
    assert_eq!((c.writes_applied, c.writes_per_path["/w.txt"]), (3, 3));
}

#[tokio::test]
async fn handle_workspace_shares_the_write_rules() {
    let r = start().await;
    let ws = r.workspace();
    let body =
        serde_json::to_vec(&json!({"contentType": "text/plain", "content": "shared"})).unwrap();
    let v = parse(&ws.put_json("/s.txt", &body, Some("0")).unwrap());
    // The HTTP route sees the in-process write and answers with the same 409 body.
    let (st, h) = put(&r, "/s.txt", "other", Some("0")).await;
    conflict(st, &h, "0", v["targetRevision"].as_str().unwrap());
    let e = ws.put_json("/s.txt", &body, Some("0")).unwrap_err();
    for k in [
        "expectedRevision",
        "currentRevision",
        "currentContentPreview",
    ] {
        assert_eq!(h[k], e.extra[k]);
    }
    assert_eq!(
        (h["code"].as_str(), h["message"].as_str()),
        (Some(e.code.as_str()), Some(e.message.as_str()))
    );
    assert_eq!(r.counts().writes_applied, 1);
    r.shutdown().await;
}
