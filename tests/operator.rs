//! Operator-facing behaviour of the real `mountd` process: the service stays up through remote outages
//! (watchdog, `STATUS=`, bounded logging), `mountd status` tells the truth, metrics an operator can alert
//! on (HTTP and `--metrics-file`), and `statfs` through a real FUSE mount.
mod common;
use common::*;
use mountd_remote::{ErrorFault, FailNext, Faults, RemoteConfig, RemoteHandle};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

/// A running service: killed and unmounted when dropped; its stderr lines collected.
struct Svc {
    child: Option<Child>,
    mnt: Option<PathBuf>,
    stderr: Lines,
}

impl Svc {
    fn spawn(mut c: Command, mnt: Option<&Path>) -> Svc {
        if let Some(m) = mnt {
            std::fs::create_dir_all(m).unwrap();
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("service starts");
        let stderr = Lines::collect(child.stderr.take().unwrap());
        Svc {
            child: Some(child),
            mnt: mnt.map(Path::to_path_buf),
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Panics (with the log) if the service exited.
    fn assert_running(&mut self) {
        if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the service exited ({st}) but must stay up:\n{}",
                self.stderr.all()
            );
        }
    }

    /// SIGTERM and wait: the exit code.
    fn stop(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the service to exit on its own: the exit code.
    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "the service did not exit:\n{}",
                self.stderr.all()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(m) = &self.mnt {
            if is_mounted(m) {
                let p = std::ffi::CString::new(m.to_string_lossy().as_bytes()).unwrap();
                unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// A reference remote on `addr` (a fixed address, so it can go away and come back) with `files`.
fn remote_on(h: &Harness, addr: SocketAddr, files: &[(&str, &[u8])]) -> RemoteHandle {
    let r =
        h.rt.block_on(RemoteHandle::start_on(
            RemoteConfig {
                token: TOKEN.into(),
                page_size: 1000,
                seed_dir: None,
                ..Default::default()
            },
            addr,
        ))
        .expect("remote starts on its address");
    for (p, b) in files {
        r.put(p, b);
    }
    r
}

/// Every sample belongs to a family with `# HELP` and `# TYPE`; returns the unlabelled samples.
fn check_exposition(text: &str) -> HashMap<String, f64> {
    let mut help = HashSet::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut values = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap();
            assert!(!doc.trim().is_empty(), "empty HELP for {name}");
            help.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(help.contains(family), "no # HELP before {line:?}");
        assert!(typed.contains_key(family), "no # TYPE before {line:?}");
        let v: f64 = line
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        if !line.contains('{') {
            values.insert(name.to_string(), v);
        }
    }
    values
}

fn metrics(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

const OPERATOR_GAUGES: [&str; 8] = [
    "mountd_last_success_timestamp_seconds",
    "mountd_files",
    "mountd_bytes",
    "mountd_quarantined_files",
    "mountd_bootstrap_complete",
    "mountd_consecutive_failures",
    "mountd_realtime_connected",
    "mountd_sync_failures_total",
];

/// Lines of the outage log (first failure and the once-a-minute reminders).
fn outage_lines(l: &Lines) -> usize {
    l.count("remote unavailable") + l.count("remote still unavailable")
}

#[test]
fn started_with_the_remote_down_the_service_stays_up_feeds_the_watchdog_and_serves_once_it_comes_up(
) {
    let h = Harness::new();
    let addr = free_addr();
    let metrics_addr = free_addr();
    let sock = NotifySocket::bind(h.tmp.path().join("notify.sock"));
    let mnt = h.tmp.path().join("mnt");
    let mut c = h.service_cmd();
    c.env("RELAYFILE_BASE_URL", format!("http://{addr}"))
        .env("NOTIFY_SOCKET", &sock.path)
        .env("WATCHDOG_USEC", "200000")
        .arg("--mountpoint")
        .arg(&mnt)
        .args(["--metrics-addr", &metrics_addr.to_string()])
        .args(["--bootstrap-idle-timeout", "2s", "--read-timeout", "1s"])
        .args(["--stall-limit", "2"]);
    let started = Instant::now();
    let mut svc = Svc::spawn(with_watchdog_pid(&c), Some(&mnt));

    // Far more failed attempts than the stall limit, well past the idle timeout: still running.
    wait_for("failed attempts to pile up", LIMIT, || {
        svc.assert_running();
        status_of(&h.local()).1["failedAttempts"]
            .as_u64()
            .is_some_and(|n| n >= 6)
    });
    svc.assert_running();
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "past the idle timeout"
    );
    assert!(
        !is_mounted(&mnt),
        "nothing served before the bootstrap completed"
    );

    // The outage is logged once (then once a minute), not once per attempt.
    let (code, st) = status_of(&h.local());
    assert_eq!(code, 1, "bootstrap not complete: {st}");
    let reminders = started.elapsed().as_secs() as usize / 60;
    assert!(
        (1..=1 + reminders).contains(&outage_lines(&svc.stderr)),
        "one outage line (and one a minute) for {} attempts:\n{}",
        st["failedAttempts"],
        svc.stderr.all()
    );
    assert_eq!(st["daemonRunning"], true, "{st}");
    assert_eq!(st["daemonPid"], svc.pid(), "{st}");
    assert_eq!(st["bootstrapComplete"], false);
    assert!(
        st["lastError"]
            .as_str()
            .unwrap()
            .contains("transport error"),
        "{st}"
    );
    assert!(st["errorSince"].is_string(), "{st}");
    assert_eq!(st["noProgressRuns"], 0, "an outage is not a stall: {st}");

    // systemd hears from the process all along, and is told why nothing is served.
    assert!(
        sock.count("WATCHDOG=1") >= 5,
        "watchdog pings while the remote is down: {:?}",
        sock.lines()
    );
    let statuses = sock.statuses();
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("remote unavailable since ")
                && s.contains("transport error")
                && s.contains("bootstrapping")),
        "{statuses:?}"
    );
    assert_eq!(sock.count("READY=1"), 0);
    let m = metrics(metrics_addr);
    let v = check_exposition(&m);
    for g in OPERATOR_GAUGES {
        assert!(v.contains_key(g), "{g} missing:\n{m}");
    }
    assert_eq!(v["mountd_bootstrap_complete"], 0.0);
    assert!(v["mountd_consecutive_failures"] >= 6.0, "{m}");
    assert!(
        !m.contains("mountd_fuse_"),
        "no FUSE series before a mount:\n{m}"
    );

    // The remote comes up on the same address: the bootstrap completes and the mount is served.
    let _remote = remote_on(
        &h,
        addr,
        &[("/hello.txt", b"hello\n"), ("/d/e.txt", b"e\n")],
    );
    wait_for("READY=1", LIMIT, || sock.count("READY=1") == 1);
    assert!(is_mounted(&mnt));
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(mnt.join("d/e.txt")).unwrap(), b"e\n");
    wait_for("the recovery line", LIMIT, || {
        svc.stderr.count("remote reachable again") == 1
    });
    let (code, st) = status_of(&h.local());
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["failedAttempts"], 0);
    assert!(
        st["lastError"].is_null() && st["errorSince"].is_null(),
        "{st}"
    );
    wait_for("STATUS=serving", LIMIT, || {
        sock.statuses()
            .iter()
            .any(|s| s.starts_with("serving; last sync "))
    });
    // The realtime stream is on by default: STATUS= says whether it is connected.
    wait_for("STATUS= with the stream connected", LIMIT, || {
        sock.statuses()
            .iter()
            .any(|s| s.starts_with("serving; ") && s.ends_with("; realtime stream connected"))
    });
    let pings = sock.count("WATCHDOG=1");
    wait_for("more pings while serving", LIMIT, || {
        sock.count("WATCHDOG=1") >= pings + 3
    });
    let m = metrics(metrics_addr);
    let v = check_exposition(&m);
    assert_eq!(v["mountd_bootstrap_complete"], 1.0, "{m}");
    assert_eq!(v["mountd_files"], 2.0, "{m}");
    assert_eq!(v["mountd_consecutive_failures"], 0.0, "{m}");
    assert!(
        m.contains("mountd_fuse_request_latency_seconds_bucket{op=\"read\""),
        "{m}"
    );
    assert_eq!(svc.stop(), 0);
}

#[test]
fn an_outage_while_serving_keeps_the_mount_and_status_tells_the_truth() {
    let h = Harness::new();
    let addr = free_addr();
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("/f{i}.txt"), format!("{i}\n").into_bytes()))
        .collect();
    let as_refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let remote = remote_on(&h, addr, &as_refs);
    let sock = NotifySocket::bind(h.tmp.path().join("notify.sock"));
    let mnt = h.tmp.path().join("mnt");
    let mut c = h.service_cmd();
    c.env("RELAYFILE_BASE_URL", format!("http://{addr}"))
        .env("NOTIFY_SOCKET", &sock.path)
        .env("WATCHDOG_USEC", "200000")
        .arg("--mountpoint")
        .arg(&mnt);
    let mut svc = Svc::spawn(with_watchdog_pid(&c), Some(&mnt));
    wait_for("READY=1", LIMIT, || sock.count("READY=1") == 1);

    // Healthy, with the daemon's pid.
    wait_for("a healthy status", LIMIT, || status_of(&h.local()).0 == 0);
    let (_, st) = status_of(&h.local());
    assert_eq!(st["daemonRunning"], true, "{st}");
    assert_eq!(st["daemonPid"], svc.pid());
    assert_eq!(st["health"], "healthy");
    assert!(st["lastSuccessAt"].is_string(), "{st}");
    let (_, text) = status_text_of(&h.local());
    assert!(
        text.contains(&format!("running (pid {})", svc.pid())),
        "{text}"
    );

    // The remote goes away.
    h.rt.block_on(remote.shutdown());
    let outage = Instant::now();
    let pings = sock.count("WATCHDOG=1");
    wait_for("a degraded status", LIMIT, || {
        svc.assert_running();
        status_of(&h.local()).0 == 7
    });
    let (_, st) = status_of(&h.local());
    assert_eq!(st["health"], "degraded", "{st}");
    assert_eq!(st["degraded"], true);
    assert!(st["errorSince"].is_string(), "{st}");
    assert!(st["lastErrorAt"].is_string(), "{st}");
    assert!(
        st["lastError"]
            .as_str()
            .unwrap()
            .contains("transport error"),
        "{st}"
    );
    let (code, text) = status_text_of(&h.local());
    assert_eq!(code, 7);
    assert!(text.contains("degraded (failing since"), "{text}");
    assert!(text.contains("last error:"), "{text}");
    // The mount keeps serving the last good state, and systemd keeps hearing from the process.
    wait_for("several failed passes", LIMIT, || {
        status_of(&h.local()).1["failedAttempts"]
            .as_u64()
            .is_some_and(|n| n >= 4)
    });
    svc.assert_running();
    for (p, b) in &files {
        assert_eq!(&std::fs::read(mnt.join(&p[1..])).unwrap(), b);
    }
    assert!(
        sock.count("WATCHDOG=1") >= pings + 5,
        "pings during the outage ({:?})",
        outage.elapsed()
    );
    assert!(
        sock.statuses()
            .iter()
            .any(|s| s.starts_with("remote unavailable since ")
                && s.contains("serving last good state")),
        "{:?}",
        sock.statuses()
    );
    let reminders = outage.elapsed().as_secs() as usize / 60;
    assert!(
        (1..=1 + reminders).contains(&outage_lines(&svc.stderr)),
        "{}",
        svc.stderr.all()
    );

    // Back on the same address (same history, one more file): healthy again.
    let mut more = as_refs.clone();
    more.push(("/after.txt", b"after\n"));
    let _remote = remote_on(&h, addr, &more);
    wait_for("the new file through the mount", LIMIT, || {
        std::fs::read(mnt.join("after.txt")).ok().as_deref() == Some(b"after\n")
    });
    wait_for("a healthy status again", LIMIT, || {
        status_of(&h.local()).0 == 0
    });
    let (_, st) = status_of(&h.local());
    assert!(
        st["lastError"].is_null() && st["errorSince"].is_null(),
        "{st}"
    );
    assert_eq!(
        svc.stderr.count("remote reachable again"),
        1,
        "{}",
        svc.stderr.all()
    );
    assert_eq!(svc.stop(), 0);
    let (code, st) = status_of(&h.local());
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["daemonRunning"], false, "{st}");
    assert!(st["daemonPid"].is_null(), "{st}");
}

#[test]
fn the_stall_guard_stops_only_a_bootstrap_that_gets_answers_without_progress() {
    let mut h = Harness::new();
    h.sample_tree(3);
    // 503 on every request: the remote is unavailable, which is waited out, not a stall.
    h.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "any".into(),
            count: 1_000_000,
            error: ErrorFault::new(503, "unavailable"),
        }],
        ..Default::default()
    });
    let mut c = h.service_cmd();
    c.args(["--no-fuse", "--no-export", "--stall-limit", "2"])
        .args(["--bootstrap-idle-timeout", "1s", "--read-timeout", "500ms"]);
    let mut svc = Svc::spawn(c, None);
    wait_for("failed attempts past the stall limit", LIMIT, || {
        svc.assert_running();
        status_of(&h.local()).1["failedAttempts"]
            .as_u64()
            .is_some_and(|n| n >= 4)
    });
    svc.assert_running();
    let (_, st) = status_of(&h.local());
    assert_eq!(st["noProgressRuns"], 0, "{st}");
    // Either the retries gave up on the 503s, or the watchdog tripped while they waited (then the
    // probe found the remote unavailable): neither counts.
    let err = st["lastError"].as_str().unwrap();
    assert!(
        err.contains("HTTP 503") || err.contains("no progress for 1s"),
        "{st}"
    );
    // Now the server answers (accepts the requests) but never delivers a page: a stall, counted.
    h.set_faults(Faults {
        tree_hang_after: Some(0),
        ..Default::default()
    });
    let code = svc.wait_exit(LIMIT);
    assert_eq!(code, 4, "{}", svc.stderr.all());
    assert!(
        svc.stderr
            .all()
            .contains("no checkpoint progress in 2 consecutive attempts"),
        "{}",
        svc.stderr.all()
    );
}

#[test]
fn no_fuse_metrics_have_help_and_type_the_operator_gauges_and_no_fuse_series() {
    let mut h = Harness::new();
    h.sample_tree(4);
    let metrics_addr = free_addr();
    let mut c = h.service_cmd();
    c.arg("--no-fuse")
        .args(["--metrics-addr", &metrics_addr.to_string()]);
    let mut svc = Svc::spawn(c, None);
    wait_for("a sync pass after the bootstrap", LIMIT, || {
        svc.assert_running();
        std::net::TcpStream::connect(metrics_addr).is_ok()
            && check_exposition(&metrics(metrics_addr))
                .get("mountd_sync_passes_total")
                .is_some_and(|n| *n >= 2.0)
    });
    let m = metrics(metrics_addr);
    let v = check_exposition(&m);
    for g in OPERATOR_GAUGES {
        assert!(v.contains_key(g), "{g} missing:\n{m}");
    }
    let bytes: usize = h.expected.values().map(Vec::len).sum();
    assert_eq!(v["mountd_files"], h.expected.len() as f64, "{m}");
    assert_eq!(v["mountd_bytes"], bytes as f64, "{m}");
    assert_eq!(v["mountd_bootstrap_complete"], 1.0);
    assert_eq!(v["mountd_quarantined_files"], 0.0);
    // The realtime stream connects on its own schedule (the reference remote serves /fs/ws).
    assert!([0.0, 1.0].contains(&v["mountd_realtime_connected"]), "{m}");
    assert_eq!(v["mountd_consecutive_failures"], 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - v["mountd_last_success_timestamp_seconds"]).abs() < 60.0,
        "{m}"
    );
    assert!(v["mountd_events_lag_seconds"] < 60.0, "{m}");
    assert!(
        !m.contains("mountd_fuse"),
        "no FUSE series without a mount:\n{m}"
    );
    assert_eq!(svc.stop(), 0);
}

#[test]
fn once_writes_the_metrics_file_for_the_textfile_collector() {
    let mut h = Harness::new();
    h.sample_tree(3);
    h.remote.put("/../hostile.txt", b"x");
    let dir = h.tmp.path().join("textfile");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mountd.prom");
    let r = h.run(&["--metrics-file", file.to_str().unwrap()]);
    assert_eq!(r.code, 5, "complete with a skipped path: {}", r.all());
    let text = std::fs::read_to_string(&file).unwrap();
    let v = check_exposition(&text);
    assert_eq!(v["mountd_files"], h.expected.len() as f64, "{text}");
    assert_eq!(v["mountd_bootstrap_complete"], 1.0);
    assert_eq!(v["mountd_quarantined_files"], 1.0);
    assert_eq!(v["mountd_sync_passes_total"], 1.0);
    assert_eq!(v["mountd_consecutive_failures"], 0.0);
    assert!(v["mountd_last_success_timestamp_seconds"] > 0.0);
    assert!(!text.contains("mountd_fuse"), "{text}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temp file left behind"
    );
    // A failing run (the server answers 503 to everything) writes it too, saying so.
    h.set_faults(Faults {
        fail_next: vec![FailNext {
            route: "any".into(),
            count: 1_000_000,
            error: ErrorFault::new(503, "unavailable"),
        }],
        ..Default::default()
    });
    let r = h.run(&["--metrics-file", file.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.all());
    let v = check_exposition(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(v["mountd_consecutive_failures"], 1.0);
    assert_eq!(v["mountd_sync_failures_total"], 1.0);
    assert_eq!(
        v["mountd_bootstrap_complete"], 1.0,
        "the mirror is still complete"
    );
    let (code, st) = status_of(&h.local());
    assert_eq!(code, 7, "degraded after the failed run: {st}");
}

#[test]
fn statfs_through_the_mount_reports_the_mirror_file_system() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let mnt = h.tmp.path().join("mnt");
    let mut c = h.service_cmd();
    c.arg("--mountpoint").arg(&mnt);
    let mut svc = Svc::spawn(c, Some(&mnt));
    wait_for("the mount", LIMIT, || is_mounted(&mnt));
    let through = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let local = nix::sys::statvfs::statvfs(&h.local()).unwrap();
    assert_eq!(through.block_size(), local.block_size());
    assert_eq!(through.fragment_size(), local.fragment_size());
    assert_eq!(through.blocks(), local.blocks(), "same size");
    assert_eq!(through.files(), local.files(), "same inode count");
    // Free space moves with whatever else writes to that disk: 1% of it, or 64 MiB, either way.
    let tolerance = (local.blocks() / 100).max((64 << 20) / local.fragment_size().max(1));
    for (what, a, b) in [
        ("free", through.blocks_free(), local.blocks_free()),
        (
            "available",
            through.blocks_available(),
            local.blocks_available(),
        ),
    ] {
        assert!(a.abs_diff(b) <= tolerance, "{what} blocks {a} vs {b}");
    }
    assert!(through.blocks_available() > 0, "not shown as full");
    assert!(
        through.files_free().abs_diff(local.files_free()) <= 10_000,
        "free inodes {} vs {}",
        through.files_free(),
        local.files_free()
    );
    // Writes go to that file system.
    std::fs::write(mnt.join("new.txt"), b"x").unwrap();
    assert_eq!(std::fs::read(h.local().join("new.txt")).unwrap(), b"x");
    // df agrees.
    let out = Command::new("df").arg("-P").arg(&mnt).output().unwrap();
    assert!(out.status.success());
    let df = String::from_utf8_lossy(&out.stdout);
    assert!(!df.contains(" 100% "), "{df}");
    assert_eq!(svc.stop(), 0);
}
