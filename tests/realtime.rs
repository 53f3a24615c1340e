//! The realtime stream (`/fs/ws`) end to end: the real `mountd` service against the reference
//! remote, in plain-directory mode (`--no-fuse`) and through a FUSE mount. Every wait is on a
//! condition (a file's bytes, a metric, a counter, a log line), bounded by a timeout; nothing
//! sleeps to synchronize.
mod common;
use common::*;
use mountd_remote::{ErrorFault, FailNext, Faults};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A running service with its stderr collected and its metrics endpoint.
struct Svc {
    child: KillOnDrop,
    logs: Lines,
    metrics: std::net::SocketAddr,
    mnt: Option<PathBuf>,
}

impl Svc {
    /// `--no-fuse` unless `mnt` is given; `extra` after the harness's settings.
    fn start(h: &Harness, mnt: Option<&Path>, extra: &[&str], env: &[(&str, &str)]) -> Svc {
        let metrics = free_addr();
        let mut c = h.service_cmd();
        match mnt {
            Some(m) => {
                std::fs::create_dir_all(m).unwrap();
                c.arg("--mountpoint").arg(m);
            }
            None => {
                c.arg("--no-fuse");
            }
        }
        c.arg("--metrics-addr")
            .arg(metrics.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("service starts");
        let logs = Lines::collect(child.stderr.take().unwrap());
        Svc {
            child: KillOnDrop(child),
            logs,
            metrics,
            mnt: mnt.map(Path::to_path_buf),
        }
    }

    /// A metric's value (`None` while the endpoint is not up or the series is absent).
    fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    }

    fn connected(&self) -> bool {
        self.metric("mountd_realtime_connected") == Some(1.0)
    }

    fn wait_connected(&self) {
        wait_for("the realtime stream to connect", WAIT, || self.connected());
    }

    /// The service's first poll pass runs at start: once it is done (with a 30 s interval), the
    /// stream is the only path for a while.
    fn wait_first_pass(&self) {
        wait_for("the first poll pass", WAIT, || {
            self.metric("mountd_sync_passes_total")
                .is_some_and(|n| n >= 1.0)
        });
    }

    fn wait_disconnected(&self) {
        wait_for("the realtime stream to go down", WAIT, || {
            self.metric("mountd_realtime_connected") == Some(0.0)
        });
    }

    fn stop(mut self) -> (i32, String) {
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let st = self.child.0.wait().unwrap();
        if let Some(m) = &self.mnt {
            assert!(!is_mounted(m), "unmounted on SIGTERM");
        }
        (st.code().unwrap_or(-1), self.logs.all())
    }
}

fn wait_bytes(path: &Path, want: &[u8]) {
    wait_for(
        &format!("{} to hold the new bytes", path.display()),
        WAIT,
        || std::fs::read(path).ok().as_deref() == Some(want),
    );
}

/// The events tip of the remote (`evt_N`), from its feed.
fn tip(h: &Harness) -> Option<String> {
    h.rt.block_on(async {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/workspaces/ws_test/fs/events?direction=desc&limit=1",
                h.remote.base_url()
            ))
            .bearer_auth(TOKEN)
            .header("X-Correlation-Id", "test_tip_0001")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["events"][0]["eventId"].as_str().map(str::to_string)
    })
}

fn cursor(h: &Harness) -> Option<String> {
    h.state().events_cursor().unwrap()
}

/// A complete mirror of a small tree, made by `--once`, so the service starts serving at once.
fn bootstrapped(n: usize) -> Harness {
    let mut h = Harness::new();
    h.sample_tree(n);
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    h
}

/// `(number of "applied a batch of changes" lines, sum of their events)` in `logs`.
fn batches(logs: &str) -> (usize, u64) {
    let mut n = 0;
    let mut events = 0;
    for l in logs
        .lines()
        .filter(|l| l.contains("applied a batch of changes"))
    {
        n += 1;
        events += l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("events="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no events= in {l}"));
    }
    (n, events)
}

fn seq(id: &str) -> u64 {
    id.rsplit('_').next().unwrap().parse().unwrap()
}

/// Wait until the stored cursor is the remote's tip (everything applied and committed).
fn wait_caught_up(h: &Harness) {
    let want = tip(h);
    wait_for("the cursor to reach the tip", WAIT, || cursor(h) == want);
}

#[test]
fn lone_writes_arrive_from_the_stream_in_milliseconds_without_polling_or_fetching() {
    let mut h = bootstrapped(3);
    // 30 s poll interval: anything visible within the bound below came from the stream.
    let svc = Svc::start(&h, None, &["--interval", "30s"], &[]);
    svc.wait_connected();
    svc.wait_first_pass();
    h.remote.reset_counts();
    let local = h.local();
    let mut slowest = Duration::ZERO;
    let mut timed = |what: &str, f: &mut dyn FnMut(), done: &dyn Fn() -> bool| {
        let start = Instant::now();
        f();
        wait_for(what, WAIT, done);
        slowest = slowest.max(start.elapsed());
    };
    timed(
        "a new file",
        &mut || h.remote.put("/rt/lone.txt", b"lone write\n"),
        &|| std::fs::read(local.join("rt/lone.txt")).ok().as_deref() == Some(b"lone write\n"),
    );
    timed(
        "an update",
        &mut || h.remote.put("/README.md", b"# changed\n"),
        &|| std::fs::read(local.join("README.md")).ok().as_deref() == Some(b"# changed\n"),
    );
    let bin = [0u8, 159, 146, 150, 255, 10];
    timed(
        "a binary (base64) file",
        &mut || h.remote.put_base64("/rt/deep/er/x.bin", &bin),
        &|| {
            std::fs::read(local.join("rt/deep/er/x.bin"))
                .ok()
                .as_deref()
                == Some(&bin[..])
        },
    );
    timed("a delete", &mut || h.remote.delete("/empty.txt"), &|| {
        !local.join("empty.txt").exists()
    });
    assert!(
        slowest < Duration::from_secs(2),
        "a lone write took {slowest:?} to show up"
    );
    h.expected
        .insert("/rt/lone.txt".into(), b"lone write\n".to_vec());
    h.expected
        .insert("/README.md".into(), b"# changed\n".to_vec());
    h.expected.insert("/rt/deep/er/x.bin".into(), bin.to_vec());
    h.expected.remove("/empty.txt");
    // (Before the test's own feed requests below.)
    let c = h.remote.counts();
    wait_caught_up(&h);
    h.assert_mirror_exact();
    assert_eq!(
        c.file, 0,
        "inline content is used, nothing fetched: {:?}",
        c.file_paths
    );
    assert_eq!(c.events, 0, "no poll was needed");
    assert_eq!(c.ws, 0, "no reconnect");
    // Status and metrics say connected, with the last event and its lag.
    let st = h.status_json();
    assert_eq!(st["realtime"]["state"], "connected", "{st}");
    assert_eq!(st["realtimeConnected"], true, "{st}");
    wait_for("the stream's state to be recorded", WAIT, || {
        h.status_json()["realtime"]["lastEventId"].as_str() == tip(&h).as_deref()
    });
    assert!(h.status_json()["realtime"]["lagMs"].is_u64());
    let (_, text) = status_text_of(&h.local());
    assert!(text.contains("realtime:      connected since"), "{text}");
    assert!(svc.metric("mountd_realtime_lag_seconds").is_some());
    assert_eq!(svc.metric("mountd_realtime_events_total"), Some(4.0));
    let (code, logs) = svc.stop();
    assert_eq!(code, 0, "{logs}");
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
    assert_eq!(h.status_json()["realtime"]["state"], "stopped");
}

#[test]
fn through_the_fuse_mount_changes_show_up_at_once() {
    let mut h = bootstrapped(3);
    let mnt = h.tmp.path().join("mnt");
    // Long kernel cache TTLs: only the invalidation of each applied change can make it visible.
    let svc = Svc::start(
        &h,
        Some(&mnt),
        &["--interval", "30s", "--metadata-ttl", "1h"],
        &[],
    );
    wait_for("the mount", WAIT, || is_mounted(&mnt));
    svc.wait_connected();
    svc.wait_first_pass();
    assert_eq!(std::fs::read(mnt.join("README.md")).unwrap(), b"# sample\n");
    assert!(!mnt.join("rt").exists(), "negative entry cached");
    let timed = |what: &str, cond: &dyn Fn() -> bool, start: Instant| {
        wait_for(what, WAIT, cond);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    };
    let t = Instant::now();
    h.put("/README.md", b"# changed through the stream\n");
    timed(
        "the update through the mount",
        &|| {
            std::fs::read(mnt.join("README.md")).ok().as_deref()
                == Some(b"# changed through the stream\n")
        },
        t,
    );
    let t = Instant::now();
    h.put("/rt/new/file.txt", b"new\n");
    timed(
        "a new file through the mount",
        &|| std::fs::read(mnt.join("rt/new/file.txt")).ok().as_deref() == Some(b"new\n"),
        t,
    );
    let t = Instant::now();
    h.delete("/empty.txt");
    timed(
        "a delete through the mount",
        &|| !mnt.join("empty.txt").exists(),
        t,
    );
    wait_caught_up(&h);
    h.assert_mirror_exact();
    assert_eq!(h.remote.counts().file, 0, "inline content used");
    let (code, logs) = svc.stop();
    assert_eq!(code, 0, "{logs}");
}

/// Polling is made to fail (`/fs/events` answers 503): a write that shows up now came from the
/// stream.
fn polling_broken() -> Faults {
    Faults {
        fail_next: vec![FailNext {
            route: "events".into(),
            count: 1_000_000,
            error: ErrorFault::new(503, "unavailable"),
        }],
        ..Default::default()
    }
}

fn status_reason(h: &Harness) -> (String, String) {
    let st = h.status_json();
    (
        st["realtime"]["state"].as_str().unwrap_or("").to_string(),
        st["realtime"]["reason"].as_str().unwrap_or("").to_string(),
    )
}

/// Every way the stream fails ends in polling (status and metrics say so, and a write made while it
/// is down shows up by polling alone); once the stream is back the service uses it again (a write
/// shows up while polling is broken). A `Retry-After` on a 429 handshake is waited out.
#[test]
fn each_fallback_ends_in_polling_and_the_stream_comes_back() {
    let mut h = bootstrapped(3);
    let svc = Svc::start(
        &h,
        None,
        &["--interval", "1s"],
        &[
            ("MOUNTD_WS_PING_INTERVAL", "200ms"),
            // Everything mountd logs, even at trace level, is checked for the token below.
            ("MOUNTD_LOG", "trace"),
        ],
    );
    svc.wait_connected();
    let handshake = |status: u16, code: &str| Faults {
        ws_handshake: Some(ErrorFault::new(status, code)),
        // The open connection drops at its next event; the handshakes after it are refused.
        ws_drop_after: Some(0),
        ..Default::default()
    };
    let cases: Vec<(&str, Faults, &str)> = vec![
        ("handshake 404", handshake(404, "not_found"), "HTTP 404"),
        ("handshake 401", handshake(401, "unauthorized"), "HTTP 401"),
        ("handshake 403", handshake(403, "forbidden"), "HTTP 403"),
        (
            "handshake 429 with Retry-After",
            Faults {
                ws_handshake: Some(ErrorFault::new(429, "rate_limited").with_retry_after("2")),
                ws_drop_after: Some(0),
                ..Default::default()
            },
            "HTTP 429",
        ),
        (
            "close 1013",
            Faults {
                ws_close_after: Some(0),
                ..Default::default()
            },
            "code 1013",
        ),
        (
            "stall past the ping deadline",
            Faults {
                ws_stall_after: Some(0),
                ..Default::default()
            },
            "silent for",
        ),
        (
            "dropped connection",
            Faults {
                ws_drop_after: Some(0),
                ..Default::default()
            },
            "connection dropped",
        ),
        (
            "malformed message",
            Faults {
                ws_malformed_after: Some(0),
                ..Default::default()
            },
            "malformed message",
        ),
    ];
    for (i, (name, faults, reason)) in cases.into_iter().enumerate() {
        svc.wait_connected();
        let applied = svc.metric("mountd_realtime_events_total").unwrap();
        h.remote.set_faults(faults);
        // This write meets the fault: it can only arrive by polling.
        let down = format!("/fb/{i}/while-down.txt");
        h.put(&down, name.as_bytes());
        wait_for(&format!("{name}: status to say polling"), WAIT, || {
            let (state, why) = status_reason(&h);
            state == "polling" && why.contains(reason)
        });
        if reason.starts_with("HTTP") {
            // (The other faults let the handshake through: connected flickers on and off.)
            svc.wait_disconnected();
        }
        wait_bytes(&h.local().join(&down[1..]), name.as_bytes());
        if reason == "HTTP 429" {
            // Refused handshakes come no faster than Retry-After (2 s), though the backoff is
            // capped at the 1 s interval.
            let n = h.remote.counts().ws;
            wait_for("a refused handshake", WAIT, || h.remote.counts().ws > n);
            let t = Instant::now();
            wait_for("another refused handshake", WAIT, || {
                h.remote.counts().ws > n + 1
            });
            assert!(
                t.elapsed() >= Duration::from_millis(1900),
                "Retry-After ignored: {:?}",
                t.elapsed()
            );
        }
        assert_eq!(
            svc.metric("mountd_realtime_events_total").unwrap(),
            applied,
            "{name}: nothing came from the stream while it was failing"
        );
        // Back: the stream again, with polling broken to prove it.
        h.remote.set_faults(polling_broken());
        svc.wait_connected();
        let up = format!("/fb/{i}/after.txt");
        h.put(&up, b"back");
        wait_bytes(&h.local().join(&up[1..]), b"back");
        wait_for(
            &format!("{name}: the stream to apply the write after recovering"),
            WAIT,
            || svc.metric("mountd_realtime_events_total").unwrap() > applied,
        );
        h.remote.set_faults(Faults::default());
    }
    wait_caught_up(&h);
    h.assert_mirror_exact();
    let (code, logs) = svc.stop();
    assert_eq!(code, 0);
    assert!(!logs.contains(TOKEN), "the token leaked into the logs");
    assert!(
        !logs.contains("fs/ws?"),
        "the stream URL leaked into the logs"
    );
    assert!(logs.contains("realtime stream unavailable; polling every 1s"));
    assert!(logs.contains("realtime stream connected again"));
}

/// Writes keep coming while the stream is dropped, closed, stalled, fed junk, refused and overflowed
/// again and again: in the end the mirror is exact, the cursor is the tip, and every event was
/// applied exactly once (by the stream or by polling: the applied batches add up to the events
/// written) with at most one `GET /fs/file` per file.
#[test]
fn no_event_is_lost_or_applied_twice_across_reconnects() {
    let mut h = bootstrapped(3);
    let start_tip = seq(&tip(&h).unwrap());
    let svc = Svc::start(
        &h,
        None,
        &["--interval", "1s"],
        &[("MOUNTD_WS_PING_INTERVAL", "200ms")],
    );
    svc.wait_connected();
    h.remote.reset_counts();
    let rounds: Vec<Faults> = vec![
        Faults {
            ws_drop_after: Some(3),
            ..Default::default()
        },
        Faults {
            ws_close_after: Some(2),
            ..Default::default()
        },
        Faults {
            ws_malformed_after: Some(1),
            ..Default::default()
        },
        Faults {
            ws_stall_after: Some(4),
            ..Default::default()
        },
        Faults {
            fail_next: vec![FailNext {
                route: "ws".into(),
                count: 2,
                error: ErrorFault::new(503, "unavailable"),
            }],
            ws_drop_after: Some(1),
            ..Default::default()
        },
        // A tiny server-side queue: a burst overflows it (close 1013), the rest comes from the
        // cursor.
        Faults {
            ws_buffer: Some(2),
            ws_close_after: Some(5),
            ..Default::default()
        },
    ];
    let mut once: Vec<String> = Vec::new();
    for (r, faults) in rounds.into_iter().enumerate() {
        h.remote.set_faults(faults);
        for i in 0..25 {
            let p = format!("/loss/r{r}/f{i:02}.txt");
            h.put(&p, format!("round {r} file {i}\n").as_bytes());
            once.push(p);
        }
        // A few paths changed more than once, and deletes.
        h.put(&format!("/loss/r{r}/f00.txt"), b"rewritten\n");
        h.delete(&format!("/loss/r{r}/f01.txt"));
        once.retain(|p| !p.ends_with("/f00.txt") && !p.ends_with("/f01.txt"));
        let last = format!("/loss/r{r}/f24.txt");
        wait_bytes(
            &h.local().join(&last[1..]),
            format!("round {r} file 24\n").as_bytes(),
        );
    }
    h.remote.set_faults(Faults::default());
    svc.wait_connected();
    // A last write through the healthy stream.
    h.put("/loss/end.txt", b"end\n");
    wait_bytes(&h.local().join("loss/end.txt"), b"end\n");
    let c = h.remote.counts();
    wait_caught_up(&h);
    h.assert_mirror_exact();
    let end_tip = seq(&tip(&h).unwrap());
    assert_eq!(cursor(&h), tip(&h), "the cursor is the tip");
    for p in &once {
        let n = c.file_paths.get(p).copied().unwrap_or(0);
        assert!(n <= 1, "{p} fetched {n} times");
    }
    assert!(c.ws >= 8, "the stream reconnected many times: {}", c.ws);
    let (code, logs) = svc.stop();
    assert_eq!(code, 0);
    let (_, applied) = batches(&logs);
    if applied != end_tip - start_tip {
        for l in logs.lines().filter(|l| {
            l.contains("applied a batch") || l.contains("realtime") || l.contains("WARN")
        }) {
            eprintln!("{l}");
        }
    }
    assert_eq!(
        applied,
        end_tip - start_tip,
        "every event applied exactly once (stream and polling together)"
    );
}

/// 10,000 events in a burst: gathered into a handful of transactions, not 10,000; inline content
/// means no file is fetched.
#[test]
fn a_burst_of_10000_events_is_applied_in_few_transactions() {
    let mut h = bootstrapped(3);
    let start_tip = seq(&tip(&h).unwrap());
    // A server queue big enough for the whole burst (overflow has its own test above).
    h.remote.update_faults(|f| f.ws_buffer = Some(1 << 20));
    let svc = Svc::start(&h, None, &["--interval", "30s"], &[]);
    svc.wait_connected();
    svc.wait_first_pass();
    h.remote.reset_counts();
    let before = batches(&svc.logs.all());
    for i in 0..10_000 {
        h.put(
            &format!("/burst/d{}/f{i:05}.txt", i % 10),
            format!("burst {i}\n").as_bytes(),
        );
    }
    let c0 = h.remote.counts();
    wait_caught_up(&h);
    let end_tip = seq(&tip(&h).unwrap());
    assert_eq!(end_tip - start_tip, 10_000);
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(c.file, 0, "all inline");
    assert_eq!(c0.events, 0, "no poll during the burst");
    assert_eq!(c.ws, 0, "one connection throughout");
    let (code, logs) = svc.stop();
    assert_eq!(code, 0);
    let after = batches(&logs);
    let (n, events) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(events, 10_000, "{logs}");
    assert!(
        n <= 100,
        "10,000 events took {n} transactions (expected a handful)"
    );
    eprintln!("10,000 events applied in {n} batches");
}

/// `--websocket=false`: no stream at all, polling only, and status says so.
#[test]
fn websocket_false_polls_only() {
    let mut h = bootstrapped(3);
    let svc = Svc::start(&h, None, &["--interval", "300ms", "--websocket=false"], &[]);
    h.put("/polled.txt", b"polled\n");
    wait_bytes(&h.local().join("polled.txt"), b"polled\n");
    assert_eq!(h.remote.counts().ws, 0, "no handshake");
    wait_for("the state to be recorded", WAIT, || {
        h.status_json()["realtime"]["state"] == "off"
    });
    assert_eq!(svc.metric("mountd_realtime_connected"), Some(0.0));
    let (code, logs) = svc.stop();
    assert_eq!(code, 0);
    assert!(!logs.contains("no effect"), "{logs}");
    assert!(logs.contains("realtime stream off"), "{logs}");
}
