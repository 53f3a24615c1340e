//! `mountd --once` through the per-page tree pull: resume after kill -9, the watchdog, the state file
//! and its wrapper, writes during a bootstrap, quarantine, hostile paths and auth failures.
mod common;
use common::*;
use mountd_remote::{ErrorFault, Faults, PathFault};
use std::time::{Duration, Instant};

#[test]
fn kill_9_mid_tree_pull_resumes_without_refetching() {
    let mut h = Harness::with_page_size(20);
    for i in 0..300 {
        h.put(
            &format!("/d{}/f{i:04}.txt", i % 3),
            format!("content {i}\n").as_bytes(),
        );
    }
    h.set_faults(Faults {
        file_delay_ms: 5,
        ..Default::default()
    });
    let child = h.spawn(&["--no-export", "--read-concurrency", "4"]);
    // Kill once a few pages are persisted (observed through the remote's request counter).
    wait_for("5 tree pages", Duration::from_secs(60), || {
        h.remote.counts().tree >= 5
    });
    let mut child = child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let first = h.remote.counts();
    assert!(
        first.file < 300,
        "killed before the end ({} files)",
        first.file
    );
    let ck = h
        .state()
        .checkpoint()
        .unwrap()
        .expect("checkpoint persisted");
    assert!(ck.pages_done >= 1, "{ck:?}");
    h.set_faults(Faults::default());
    h.remote.reset_counts();
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let second = h.remote.counts();
    // Nothing fetched twice beyond the page in flight at the kill: downloads in both runs ≤ files + one page.
    let mut both = first.file_paths.clone();
    for (p, n) in &second.file_paths {
        *both.entry(p.clone()).or_default() += n;
    }
    let refetched: Vec<_> = both.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        refetched.len() <= 20,
        "at most one page re-fetched, got {}: {refetched:?}",
        refetched.len()
    );
    assert!(
        second.file as usize <= 300 - first.file as usize + 20,
        "second run fetched {} of 300",
        second.file
    );
    assert!(
        second.tree < first.tree + 16,
        "resumed from the cursor, not from the start: {} pages",
        second.tree
    );
}

#[test]
fn hung_page_trips_the_watchdog_and_the_next_run_resumes() {
    let mut h = Harness::with_page_size(5);
    for i in 0..30 {
        h.put(&format!("/f{i:03}.txt"), format!("{i}\n").as_bytes());
    }
    h.set_faults(Faults {
        tree_hang_after: Some(2),
        ..Default::default()
    });
    let r = h.run(&[
        "--no-export",
        "--bootstrap-idle-timeout",
        "2s",
        "--read-timeout",
        "1s",
        "--retries",
        "5",
    ]);
    assert_eq!(r.code, 4, "stalled exit code: {}", r.all());
    assert!(r.stderr.contains("no progress for 2s"), "{}", r.all());
    let ck = h.state().checkpoint().unwrap().expect("state saved");
    assert_eq!(ck.pages_done, 2, "{ck:?}");
    let fetched_first = h.remote.counts().file;
    assert_eq!(fetched_first, 10);
    h.set_faults(Faults::default());
    h.remote.reset_counts();
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(
        c.file, 20,
        "only the files of the unfinished pages are fetched"
    );
    assert_eq!(
        c.tree, 5,
        "pages 3..6 (the last one empty-cursor) listed again, not from the start, and the count check"
    );
}

#[test]
fn state_file_exists_before_the_first_request() {
    // A server that accepts connections and never answers: the first request hangs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = Harness::new();
    let mut c = h.cmd();
    c.args([
        "--base-url",
        &format!("http://{addr}"),
        "--bootstrap-idle-timeout",
        "2s",
        "--read-timeout",
        "1s",
        "--retries",
        "0",
    ]);
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    wait_for("the first request", Duration::from_secs(30), || {
        conn = listener.accept().ok();
        conn.is_some()
    });
    assert!(
        h.state_file().exists(),
        "state file created before the first request"
    );
    let content: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.state_file()).unwrap()).unwrap();
    assert_eq!(content["phase"], "starting");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn state_file_moves_during_a_slow_page_and_not_while_stalled() {
    let mut h = Harness::with_page_size(8);
    for i in 0..12 {
        h.put(&format!("/s/f{i:02}.txt"), b"x");
    }
    // First page: the dir and 7 slow files read one at a time: the mtime must move inside that page.
    // The second page hangs.
    h.set_faults(Faults {
        file_delay_ms: 150,
        tree_hang_after: Some(1),
        ..Default::default()
    });
    let mut child = h.spawn(&[
        "--no-export",
        "--read-concurrency",
        "1",
        "--bootstrap-idle-timeout",
        "4s",
        "--read-timeout",
        "3s",
    ]);
    let mut seen = Vec::new();
    let start = Instant::now();
    while h.remote.counts().file < 7 && start.elapsed() < Duration::from_secs(30) {
        if let Some(m) = h.mtime() {
            if seen.last() != Some(&m) {
                seen.push(m);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.remote.counts().tree, 1, "still within the first page");
    assert!(
        seen.len() >= 5,
        "mtime advanced during the slow page: {} distinct values",
        seen.len()
    );
    // The second tree request hangs: nothing progresses, so the state file must stay still.
    let t0 = Instant::now();
    while h.remote.counts().tree < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no second page: {:?}",
            h.remote.counts()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = h.mtime().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h.mtime().unwrap(),
        before,
        "state file touched while stalled"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wrapper(h: &Harness, idle: &str, extra: &[&str]) -> Run {
    let mut c = std::process::Command::new("scripts/watch-initial-sync.sh");
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.args(["--state-file"])
        .arg(h.state_file())
        .args(["--idle-timeout", idle, "--"]);
    let inner = h.cmd();
    c.arg(inner.get_program())
        .args(inner.get_args())
        .args(extra);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    run_cmd(c)
}

#[test]
fn wrapper_kills_a_stalled_run_and_lets_a_slow_one_finish() {
    let mut h = Harness::with_page_size(4);
    for i in 0..12 {
        h.put(&format!("/w/f{i:02}.txt"), format!("{i}").as_bytes());
    }
    // Slow but progressing: 12 files at 0.4 s each, one at a time (~5 s) under a 2 s idle wrapper.
    h.set_faults(Faults {
        file_delay_ms: 400,
        ..Default::default()
    });
    let r = wrapper(&h, "2", &["--no-export", "--read-concurrency", "1"]);
    assert_eq!(r.code, 0, "slow run finished: {}", r.all());
    h.assert_mirror_exact();
    // Stalled: the page hangs and mountd's own watchdog is far away; the wrapper kills it with 124.
    let mut h2 = Harness::new();
    h2.put("/x.txt", b"x");
    h2.set_faults(Faults {
        tree_hang_after: Some(0),
        ..Default::default()
    });
    let r = wrapper(
        &h2,
        "2",
        &[
            "--no-export",
            "--bootstrap-idle-timeout",
            "60s",
            "--read-timeout",
            "50s",
        ],
    );
    assert_eq!(r.code, 124, "{}", r.all());
    assert!(r.elapsed < Duration::from_secs(30));
}

#[test]
fn writes_during_the_bootstrap_are_not_lost() {
    let mut h = Harness::with_page_size(5);
    for i in 0..40 {
        h.put(&format!("/b/f{i:03}.txt"), format!("v1 {i}\n").as_bytes());
    }
    h.set_faults(Faults {
        tree_delay_ms: 100,
        ..Default::default()
    });
    let child = h.spawn(&["--no-export"]);
    wait_for("the traversal to start", Duration::from_secs(30), || {
        h.remote.counts().tree >= 2
    });
    // Change files the traversal has already passed, and add one in a directory it has listed.
    h.put("/b/f000.txt", b"v2 changed during bootstrap\n");
    h.delete("/b/f001.txt");
    h.put("/b/f000-new.txt", b"created during bootstrap\n");
    let r = wait_output(child, Duration::from_secs(60), Instant::now());
    // Exit 0 means current as of the end of the run: the same run replayed the events since the tip
    // taken before the snapshot.
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(
        h.state().events_cursor().unwrap().as_deref(),
        Some("evt_43")
    );
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("via catch-up"), "{}", r.all());
    h.assert_mirror_exact();
}

#[test]
fn a_file_that_always_fails_is_quarantined_and_the_rest_completes() {
    let mut h = Harness::with_page_size(10);
    h.sample_tree(20);
    let bad = [
        (
            "/bad/forbidden.txt",
            PathFault::Status(ErrorFault::new(403, "forbidden")),
        ),
        (
            "/bad/broken.txt",
            PathFault::Status(ErrorFault::new(500, "internal_error")),
        ),
        ("/bad/wrong-hash.txt", PathFault::BadHash),
    ];
    let mut f = Faults::default();
    for (p, fault) in &bad {
        h.remote.put(p, b"never mirrored");
        f.path_faults.insert(p.to_string(), fault.clone());
    }
    h.set_faults(f);
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 5, "complete except quarantined: {}", r.all());
    assert!(r.stdout.contains("3 quarantined"), "{}", r.all());
    h.assert_mirror_exact();
    let s = h.status_json();
    let q = s["quarantined"].as_array().unwrap();
    assert_eq!(q.len(), 3, "{s}");
    let reason = |p: &str| {
        q.iter().find(|e| e["path"] == p).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("/bad/forbidden.txt").contains("403"));
    assert!(reason("/bad/broken.txt").contains("500"));
    assert!(reason("/bad/wrong-hash.txt").contains("hash mismatch"));
    assert_eq!(s["bootstrapComplete"], true);
    // The 500 was retried; the 403 and the bad hash were not.
    let c = h.remote.counts();
    assert_eq!(c.file_paths["/bad/broken.txt"], 4);
    assert_eq!(c.file_paths["/bad/forbidden.txt"], 1);
    // Once the server heals, a later run retries them and the status clears.
    h.set_faults(Faults::default());
    for (p, _) in &bad {
        h.expected.insert(p.to_string(), b"never mirrored".to_vec());
    }
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(h.status_json()["quarantined"].as_array().unwrap().len(), 0);
}

#[test]
fn hostile_paths_are_skipped_and_nothing_escapes_the_root() {
    for no_export in [false, true] {
        let mut h = Harness::with_page_size(3);
        h.put("/ok.txt", b"fine");
        let hostile = [
            "/../escape.txt",
            "/a/../../escape2.txt",
            "/.mountd/state.db",
            "/back\\slash.txt",
            "/nul\0byte.txt",
            "/ctl\u{1}.txt",
            "/dot/./x.txt",
        ];
        for p in hostile {
            h.remote.put(p, b"evil");
        }
        h.remote.put(&format!("/{}", "L".repeat(300)), b"long");
        let args: &[&str] = if no_export { &["--no-export"] } else { &[] };
        let r = h.run(args);
        assert_eq!(r.code, 5, "skips are reported: {}", r.all());
        h.assert_mirror_exact();
        // Nothing written next to the mirror.
        let siblings: Vec<_> = std::fs::read_dir(h.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut siblings = siblings;
        siblings.sort();
        assert_eq!(siblings, ["mirror", "state.json", "token"]);
        let q = h.status_json()["quarantined"].as_array().unwrap().clone();
        assert!(q.len() >= 7, "{q:?}");
        assert!(
            q.iter().all(
                |e| e["reason"].as_str().unwrap().contains("hostile") && e["permanent"] == true
            ),
            "{q:?}"
        );
        // The state DB inside the reserved dir is intact.
        assert!(h.state().is_complete().unwrap());
    }
}

#[test]
fn unauthorized_fails_at_once_and_never_leaks_the_token() {
    let mut h = Harness::new();
    h.sample_tree(2);
    std::fs::write(h.tmp.path().join("token"), "wrong-token-value-xyz\n").unwrap();
    let r = h.run(&[]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(
        r.stderr.contains("401") && r.stderr.contains("token"),
        "{}",
        r.all()
    );
    let c = h.remote.counts();
    assert_eq!(c.unauthorized, 1, "no retries on 401");
    for text in [
        r.stdout.as_str(),
        r.stderr.as_str(),
        &std::fs::read_to_string(h.state_file()).unwrap(),
    ] {
        assert!(!text.contains("wrong-token-value-xyz"));
    }
    let db = std::fs::read(h.state_db()).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("wrong-token-value-xyz"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(h.state_db())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // With the right token the token never shows up either, even at debug level.
    std::fs::write(h.tmp.path().join("token"), TOKEN).unwrap();
    let mut c = h.cmd();
    c.env("MOUNTD_LOG", "debug");
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains(TOKEN));
}

#[test]
fn config_errors_are_clear() {
    let h = Harness::new();
    let mut c = h.cmd();
    // A read timeout not shorter than the idle timeout is clamped (one warning), not refused.
    c.args(["--read-timeout", "20s", "--bootstrap-idle-timeout", "10s"]);
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("read timeout clamped from 20s (configured) to 5s"),
        "{}",
        r.all()
    );
    let r = run_cmd({
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mountd"));
        c.args(["--once", "--export-timeout", "1m30"]);
        c
    });
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Go syntax"), "{}", r.all());
    // A state DB of another mirror is refused.
    let mut h2 = Harness::new();
    h2.put("/a", b"a");
    assert_eq!(h2.run(&[]).code, 0);
    let mut c = h2.cmd();
    c.args(["--workspace", "other_ws"]);
    let r = run_cmd(c);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("belongs to another mirror"),
        "{}",
        r.all()
    );
}

#[test]
fn bursts_of_5xx_with_html_bodies_are_retried_and_the_run_completes() {
    let mut h = Harness::with_page_size(4);
    h.sample_tree(6);
    h.set_faults(Faults {
        fail_next: vec![
            mountd_remote::FailNext {
                route: "tree".into(),
                count: 2,
                error: ErrorFault::new(502, "html"),
            },
            mountd_remote::FailNext {
                route: "file".into(),
                count: 3,
                error: ErrorFault::new(503, "unavailable"),
            },
        ],
        ..Default::default()
    });
    let r = h.run(&["--no-export"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert!(
        r.stderr.contains("non-JSON error body"),
        "the proxy page is reported clearly: {}",
        r.all()
    );
    let c = h.remote.counts();
    let files = h.expected.len() as u64;
    assert_eq!(c.file, files + 3, "each failed read retried once");
}

#[test]
fn a_429_pauses_all_workers_for_its_retry_after() {
    let mut h = Harness::new();
    for i in 0..64 {
        h.put(&format!("/g/f{i:02}"), b"g");
    }
    h.set_faults(Faults {
        fail_next: vec![mountd_remote::FailNext {
            route: "file".into(),
            count: 1,
            error: ErrorFault::new(429, "rate_limited").with_retry_after("2"),
        }],
        ..Default::default()
    });
    let r = h.run(&["--no-export", "--read-concurrency", "8"]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    assert_eq!(h.remote.counts().file, 65, "one retry, no stampede of 429s");
    assert!(
        r.elapsed >= Duration::from_secs(2),
        "Retry-After honoured: {:?}",
        r.elapsed
    );
}

#[test]
fn repeated_runs_without_progress_stop_with_a_diagnosis() {
    let mut h = Harness::new();
    h.put("/a.txt", b"a");
    h.set_faults(Faults {
        tree_hang_after: Some(0),
        ..Default::default()
    });
    let args = [
        "--no-export",
        "--bootstrap-idle-timeout",
        "1s",
        "--read-timeout",
        "500ms",
        "--stall-limit",
        "3",
    ];
    for _ in 0..2 {
        let r = h.run(&args);
        assert_eq!(r.code, 4, "{}", r.all());
    }
    let r = h.run(&args);
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(
        r.stderr
            .contains("no checkpoint progress in 3 consecutive attempts"),
        "{}",
        r.all()
    );
    assert_eq!(h.status_json()["noProgressRuns"], 3);
    h.set_faults(Faults::default());
    assert_eq!(h.run(&[]).code, 0);
    assert_eq!(h.status_json()["noProgressRuns"], 0);
}

/// The feed answers an unknown cursor by replaying from its start: the server's history restarted.
/// It is listed again (hash-skip); with nothing to delete the run completes, and the cursor follows
/// the server's history (keeping evt_999 would skip its next 900-odd events).
#[test]
fn an_unknown_cursor_is_recognised_and_the_mirror_listed_again() {
    let mut h = Harness::new();
    h.sample_tree(5);
    assert_eq!(h.run(&[]).code, 0);
    // As after a server restart that lost its feed: the stored cursor is unknown to the server.
    {
        let mut st = h.state();
        let mut b = st.batch().unwrap();
        b.set_meta(mountd::store::db::MetaKey::EventsCursor, "evt_999")
            .unwrap();
        b.commit().unwrap();
    }
    h.put("/after-reset.txt", b"new\n");
    h.remote.reset_counts();
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(
        c.file, 1,
        "only the new file is fetched (hash-skip): {:?}",
        c.file_paths
    );
    assert!(c.tree >= 2, "listed again, then the count check: {c:?}");
    let tip: serde_json::Value =
        serde_json::from_slice(&h.remote.workspace().events_json(None, 1, true)).unwrap();
    assert_eq!(
        h.state().events_cursor().unwrap().as_deref(),
        tip["events"][0]["eventId"].as_str(),
        "the cursor is the server's tip"
    );
}

#[test]
fn remote_path_mirrors_only_that_subtree() {
    let h = Harness::with_page_size(3);
    for (p, b) in [
        ("/docs/a.txt", "a"),
        ("/docs/sub/b.txt", "b"),
        ("/docsx/not.txt", "x"),
        ("/other/c.txt", "c"),
    ] {
        h.remote.put(p, b.as_bytes());
    }
    for export in [true, false] {
        let local = h.tmp.path().join(format!("sub-{export}"));
        let mut c = h.cmd();
        c.args(["--remote-path", "/docs", "--local-dir"])
            .arg(&local)
            .args(["--state-file"])
            .arg(h.tmp.path().join(format!("s-{export}.json")));
        if !export {
            c.arg("--no-export");
        }
        let r = run_cmd(c);
        assert_eq!(r.code, 0, "{}", r.all());
        let got = read_tree(&local);
        assert_eq!(
            got.keys().cloned().collect::<Vec<_>>(),
            ["a.txt", "sub/b.txt"],
            "export={export}"
        );
    }
    // Events outside the subtree are ignored, inside are applied.
    h.remote.put("/docsx/later.txt", b"no");
    h.remote.put("/docs/later.txt", b"yes");
    let local = h.tmp.path().join("sub-true");
    let mut c = h.cmd();
    c.args(["--remote-path", "/docs", "--local-dir"])
        .arg(&local)
        .args(["--state-file"])
        .arg(h.tmp.path().join("s-true.json"));
    let r = run_cmd(c);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        read_tree(&local).keys().cloned().collect::<Vec<_>>(),
        ["a.txt", "later.txt", "sub/b.txt"]
    );
}
