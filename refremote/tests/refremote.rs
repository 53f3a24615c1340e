//! Tests of the reference remote (`mountd_remote`): the wire contract and a few faults.

use base64::Engine;
use mountd_remote::{ErrorFault, Faults, PathFault, RemoteConfig, RemoteHandle};
use serde_json::Value;

const WS: &str = "/v1/workspaces/ws1/fs";

async fn start() -> RemoteHandle {
    RemoteHandle::start(RemoteConfig::default()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(r: &RemoteHandle, route: &str) -> reqwest::Response {
    client()
        .get(format!("{}{WS}/{route}", r.base_url()))
        .bearer_auth("test-token")
        .header("X-Correlation-Id", "test_corr_1")
        .send()
        .await
        .unwrap()
}

async fn get_json(r: &RemoteHandle, route: &str) -> (u16, Value) {
    let resp = get(r, route).await;
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap())
}

fn paths(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn health_auth_and_correlation() {
    let r = start().await;
    let v: Value = client()
        .get(format!("{}/health", r.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");

    let resp = client()
        .get(format!("{}{WS}/tree", r.base_url()))
        .bearer_auth("wrong")
        .header("X-Correlation-Id", "abc12345")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "unauthorized");
    assert_eq!(v["correlationId"], "abc12345");

    let resp = client()
        .get(format!("{}{WS}/tree", r.base_url()))
        .bearer_auth("test-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "bad_request");

    let c = r.counts();
    assert_eq!(
        (c.health, c.tree, c.unauthorized, c.missing_correlation),
        (1, 2, 1, 1)
    );
    r.shutdown().await;
}

#[tokio::test]
async fn tree_paging_depth_and_cursor() {
    let r = start().await;
    for p in ["/a/b/x.txt", "/a/b-c", "/a/b/y/z.txt", "/top.md"] {
        r.put(p, b"hi");
    }
    r.set_page_size(2);
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("tree?path=/&cursor={c}"),
            None => "tree?path=/".to_string(),
        };
        let (st, v) = get_json(&r, &q).await;
        assert_eq!(st, 200);
        assert_eq!(v["totalFiles"], 4);
        let es = paths(&v);
        assert!(es.len() <= 2);
        all.extend(es);
        pages += 1;
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        all,
        [
            "dir:/a",
            "dir:/a/b",
            "file:/a/b-c",
            "file:/a/b/x.txt",
            "dir:/a/b/y",
            "file:/a/b/y/z.txt",
            "file:/top.md"
        ]
    );
    assert_eq!(pages, 4);

    // Depth limit: the dir at the limit is listed, not its content.
    r.set_page_size(100);
    let (_, v) = get_json(&r, "tree?path=/a&depth=1").await;
    assert_eq!(paths(&v), ["dir:/a/b", "file:/a/b-c"]);
    assert_eq!(v["totalFiles"], 3);
    assert_eq!(v["nextCursor"], Value::Null);
    let (_, v) = get_json(&r, "tree?path=/&depth=2").await;
    assert_eq!(
        paths(&v),
        ["dir:/a", "dir:/a/b", "file:/a/b-c", "file:/top.md"]
    );
    let e = &v["entries"][2];
    assert_eq!(e["size"], 2);
    assert_eq!(e["revision"], "rev_2");
    assert!(e["updatedAt"].as_str().unwrap().ends_with('Z'));

    // Unknown cursor.
    let (st, v) = get_json(&r, "tree?path=/&cursor=/nope").await;
    assert_eq!(st, 400);
    assert_eq!(v["code"], "bad_request");
    r.shutdown().await;
}

#[tokio::test]
async fn file_base64_roundtrip_and_export() {
    let r = start().await;
    let bin: Vec<u8> = (0u8..=255).collect();
    r.put("/img/bin.dat", &bin);
    r.put_base64("/img/t.txt", b"text");
    r.put("/a.txt", b"hello");

    let resp = get(&r, "file?path=/img/bin.dat").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["etag"], "rev_1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["encoding"], "base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, bin);
    assert_eq!(v["contentHash"], mountd_remote::sha256_hex(&bin));

    let (_, v) = get_json(&r, "file?path=/a.txt").await;
    assert_eq!(v["content"], "hello");
    assert!(v.get("encoding").is_none());
    let (st, v) = get_json(&r, "file?path=/missing").await;
    assert_eq!((st, v["code"].as_str().unwrap()), (404, "not_found"));
    assert_eq!(r.counts().file_paths["/a.txt"], 1);

    let (st, v) = get_json(&r, "export?format=json&path=/").await;
    assert_eq!(st, 200);
    let arr = v.as_array().unwrap();
    let ps: Vec<_> = arr.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(ps, ["/a.txt", "/img/bin.dat", "/img/t.txt"]);
    assert_eq!(arr[2]["encoding"], "base64");
    assert_eq!(arr[2]["contentHash"], mountd_remote::sha256_hex(b"text"));
    let (_, v) = get_json(&r, "export?format=json&path=/img").await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (st, _) = get_json(&r, "export?format=tar").await;
    assert_eq!(st, 404);
    r.shutdown().await;
}

#[tokio::test]
async fn events_feed() {
    let r = start().await;
    r.put("/a", b"1");
    r.put("/a", b"2");
    r.append_event("sync.started", "/");
    r.delete("/a");
    let (_, v) = get_json(&r, "events?limit=2").await;
    let ids: Vec<_> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].clone())
        .collect();
    assert_eq!(ids, ["evt_1", "evt_2"]);
    assert_eq!(v["events"][0]["type"], "file.created");
    assert_eq!(v["events"][1]["type"], "file.updated");
    assert_eq!(v["events"][1]["origin"], "agent_write");
    assert_eq!(v["nextCursor"], "evt_2");
    let (_, v) = get_json(&r, "events?cursor=evt_2").await;
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["events"][1]["type"], "file.deleted");
    assert_eq!(v["nextCursor"], Value::Null);
    let (_, v) = get_json(&r, "events?direction=desc&limit=1").await;
    assert_eq!(v["events"][0]["eventId"], "evt_4");
    // Unknown cursor replays from the start.
    let (_, v) = get_json(&r, "events?cursor=evt_99").await;
    assert_eq!(v["events"][0]["eventId"], "evt_1");
    assert_eq!(v["events"].as_array().unwrap().len(), 4);

    r.update_faults(|f| f.events_404 = true);
    let (st, _) = get_json(&r, "events").await;
    assert_eq!(st, 404);
    r.shutdown().await;
}

#[tokio::test]
async fn faults_429_truncate_reset_badhash() {
    let r = start().await;
    r.put("/x.txt", b"some content here");
    r.put("/y.txt", b"more");
    r.set_faults(Faults {
        export_status: Some(ErrorFault::new(429, "workspace_busy").with_retry_after("3")),
        ..Default::default()
    });
    let resp = get(&r, "export?format=json").await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "workspace_busy");

    r.set_faults(Faults {
        export_truncate_at: Some(20),
        ..Default::default()
    });
    let resp = get(&r, "export?format=json").await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 20);
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    r.set_faults(Faults {
        export_reset_at: Some(10),
        ..Default::default()
    });
    let resp = get(&r, "export?format=json").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.bytes().await.is_err());

    let mut f = Faults::default();
    f.path_faults.insert("/x.txt".into(), PathFault::BadHash);
    f.path_faults.insert(
        "/y.txt".into(),
        PathFault::Status(ErrorFault::new(502, "html")),
    );
    f.fail_next.push(mountd_remote::FailNext {
        route: "tree".into(),
        count: 1,
        error: ErrorFault::new(500, "internal_error"),
    });
    r.set_faults(f);
    let (_, v) = get_json(&r, "file?path=/x.txt").await;
    assert_ne!(
        v["contentHash"],
        mountd_remote::sha256_hex(b"some content here")
    );
    let resp = get(&r, "file?path=/y.txt").await;
    assert_eq!(resp.status().as_u16(), 502);
    assert_eq!(resp.text().await.unwrap(), "<html>proxy error</html>");
    assert_eq!(get(&r, "tree").await.status().as_u16(), 500);
    assert_eq!(get(&r, "tree").await.status().as_u16(), 200);
    r.shutdown().await;
}

#[tokio::test]
async fn writes_control_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/a.txt"), "A").unwrap();
    std::fs::write(dir.path().join("b.bin"), [0xffu8, 0xfe]).unwrap();
    let r = RemoteHandle::start(RemoteConfig {
        seed_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(r.file_count(), 2);
    let (_, v) = get_json(&r, "file?path=/b.bin").await;
    assert_eq!(v["encoding"], "base64");

    let c = client();
    let url = format!("{}{WS}/file?path=/new.txt", r.base_url());
    let body =
        serde_json::json!({"contentType": "text/plain", "content": "bmV3", "encoding": "base64"});
    let send = |m: reqwest::Method, im: &'static str| {
        c.request(m, &url)
            .bearer_auth("test-token")
            .header("X-Correlation-Id", "corr_write")
            .header("If-Match", im)
            .json(&body)
            .send()
    };
    assert_eq!(
        send(reqwest::Method::PUT, "0")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        send(reqwest::Method::PUT, "0")
            .await
            .unwrap()
            .status()
            .as_u16(),
        409
    );
    let (_, v) = get_json(&r, "file?path=/new.txt").await;
    assert_eq!(v["contentHash"], mountd_remote::sha256_hex(b"new"));
    assert_eq!(
        send(reqwest::Method::DELETE, "*")
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(r.file_count(), 2);

    let resp = c
        .post(format!("{}{WS}/bulk", r.base_url()))
        .bearer_auth("test-token")
        .header("X-Correlation-Id", "corr_bulk")
        .json(&serde_json::json!({"files": [
            {"path": "/k/1", "contentType": "text/plain", "content": "one"},
            {"path": "/k/2", "contentType": "text/plain", "content": "!!", "encoding": "base64"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["written"].as_u64(), v["errorCount"].as_u64()),
        (Some(1), Some(1))
    );

    let big = "x".repeat(1 << 21);
    let resp = c
        .put(&url)
        .bearer_auth("test-token")
        .header("X-Correlation-Id", "corr_big")
        .header("If-Match", "*")
        .json(&serde_json::json!({"content": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    // Control endpoints.
    let counts: Value = c
        .get(format!("{}/_control/counts", r.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["put"], 3);
    let st = c
        .put(format!("{}/_control/faults", r.base_url()))
        .json(&serde_json::json!({"export_empty": true}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(st.is_success());
    assert!(r.faults().export_empty);
    let (_, v) = get_json(&r, "export?format=json").await;
    assert_eq!(v, serde_json::json!([]));
    c.post(format!("{}/_control/reset-counts", r.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.counts().export, 0);
    r.shutdown().await;
}

#[tokio::test]
async fn hang_released_by_shutdown_and_large_tree() {
    let r = start().await;
    r.generate(5000, 16, 7);
    r.set_page_size(1000);
    let (_, v) = get_json(&r, "tree?path=/&depth=1").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 7);
    assert_eq!(v["totalFiles"], 5000);
    let (_, v) = get_json(&r, "export?format=json").await;
    assert_eq!(v.as_array().unwrap().len(), 5000);

    r.update_faults(|f| f.file_hang = true);
    let url = format!("{}{WS}/file?path=/d000/f0000000.txt", r.base_url());
    let hung = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth("test-token")
            .header("X-Correlation-Id", "corr_hang")
            .timeout(std::time::Duration::from_millis(300))
            .send()
            .await
    });
    assert!(hung.await.unwrap().is_err());

    r.set_faults(Faults {
        tree_hang_after: Some(1),
        export_drop: Some(3),
        ..Default::default()
    });
    let (_, v) = get_json(&r, "export?format=json").await;
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(get(&r, "tree?depth=1").await.status().as_u16(), 200);
    let second = client()
        .get(format!("{}{WS}/tree?depth=1", r.base_url()))
        .bearer_auth("test-token")
        .header("X-Correlation-Id", "corr_hang2")
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(second.unwrap_err().is_timeout());
    let t = std::time::Instant::now();
    r.shutdown().await;
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
}

fn event_ids(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn hidden_events_leave_gaps_and_a_reset_store_restarts_ids_and_revisions() {
    let r = start().await;
    r.put("/a", b"a");
    // Over HTTP: the events of /b, and the next one of any path, are hidden.
    let st = client()
        .put(format!("{}/_control/hide-events", r.base_url()))
        .json(&serde_json::json!({"paths": ["/b"], "next": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 204);
    r.put("/c", b"c"); // evt_2, hidden (next: 1)
    r.put("/b", b"b"); // evt_3, hidden (path)
    r.put("/d", b"d"); // evt_4
    let (_, v) = get_json(&r, "events?limit=1000").await;
    assert_eq!(event_ids(&v), ["evt_1", "evt_4"]);
    let (_, v) = get_json(&r, "events?cursor=evt_1&limit=1").await;
    assert_eq!(event_ids(&v), ["evt_4"]);
    let (_, v) = get_json(&r, "events?direction=desc&limit=2").await;
    assert_eq!(event_ids(&v), ["evt_4", "evt_1"]);
    // The files are there all the same.
    let (_, v) = get_json(&r, "tree?path=/").await;
    assert_eq!(v["totalFiles"], 4);

    let st = client()
        .post(format!("{}/_control/reset-store", r.base_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 204);
    let (_, v) = get_json(&r, "tree?path=/").await;
    assert_eq!(v["totalFiles"], 0);
    r.put("/a", b"again");
    let (_, v) = get_json(&r, "tree?path=/").await;
    assert_eq!(v["entries"][0]["revision"], "rev_1");
    // The old cursor is unknown now: the feed replays from its start.
    let (_, v) = get_json(&r, "events?cursor=evt_4").await;
    assert_eq!(event_ids(&v), ["evt_1"]);
}
