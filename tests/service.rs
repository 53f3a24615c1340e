//! The long-running service against the reference remote: a real FUSE mount kept in sync from the
//! events feed, restarts, signals, and the plain-directory mode.
mod common;
use common::*;
use mountd_remote::Faults;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Service {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Service {
    fn start(h: &Harness, mnt: &Path, extra: &[&str]) -> Service {
        std::fs::create_dir_all(mnt).unwrap();
        let mut c = h.service_cmd();
        c.arg("--mountpoint")
            .arg(mnt)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Service {
            child: Some(c.spawn().expect("service starts")),
            mnt: mnt.to_path_buf(),
        }
    }

    fn wait_mounted(&self) {
        wait_for("the mount", Duration::from_secs(60), || {
            is_mounted(&self.mnt)
        });
    }

    /// SIGTERM and wait: returns the exit code.
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
                "service did not stop within 30s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            let p = std::ffi::CString::new(self.mnt.to_string_lossy().as_bytes()).unwrap();
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn read_until(path: &Path, want: &[u8]) {
    let start = Instant::now();
    loop {
        if std::fs::read(path).ok().as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never showed the expected bytes",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gone_until(path: &Path) {
    wait_for(
        &format!("{} to disappear", path.display()),
        Duration::from_secs(30),
        || std::fs::symlink_metadata(path).is_err(),
    );
}

#[test]
fn mount_serves_the_mirror_exactly_including_a_5000_entry_directory() {
    let mut h = Harness::with_page_size(97);
    h.sample_tree(20);
    for i in 0..5000 {
        h.put(&format!("/big/e{i:05}"), format!("{i}").as_bytes());
    }
    let r = h.run(&[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let mnt = h.tmp.path().join("mnt");
    let mut svc = Service::start(&h, &mnt, &[]);
    svc.wait_mounted();
    let through = read_tree(&mnt);
    assert_eq!(through.len(), h.expected.len());
    for (k, v) in &h.expected {
        assert!(
            through.get(k.trim_start_matches('/')) == Some(v),
            "{k} differs through the mount"
        );
    }
    let mut names: Vec<_> = std::fs::read_dir(mnt.join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 5000);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5000, "every entry exactly once");
    // Writable (mirror mode, the default): a write lands in the mirror directory itself.
    std::fs::create_dir(mnt.join("newdir")).unwrap();
    std::fs::write(mnt.join("newdir/n.txt"), b"written through the mount").unwrap();
    assert_eq!(
        std::fs::read(h.local().join("newdir/n.txt")).unwrap(),
        b"written through the mount"
    );
    std::fs::remove_file(mnt.join("newdir/n.txt")).unwrap();
    std::fs::remove_dir(mnt.join("newdir")).unwrap();
    for tool in [
        vec!["find", "."],
        vec!["ls", "-lR"],
        vec!["du", "-s"],
        vec!["grep", "-r", "deep", "."],
    ] {
        let st = std::process::Command::new(tool[0])
            .args(&tool[1..])
            .current_dir(&mnt)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "{tool:?}");
    }
    assert_eq!(svc.stop(), 0);
    assert!(!is_mounted(&mnt), "unmounted on SIGTERM");
}

#[test]
fn not_served_before_the_bootstrap_completes() {
    let mut h = Harness::with_page_size(2);
    h.sample_tree(4);
    h.set_faults(Faults {
        tree_hang_after: Some(1),
        ..Default::default()
    });
    let mnt = h.tmp.path().join("mnt");
    let svc = Service::start(
        &h,
        &mnt,
        &[
            "--no-export",
            "--bootstrap-idle-timeout",
            "2s",
            "--read-timeout",
            "1s",
            "--stall-limit",
            "100",
        ],
    );
    wait_for("the hanging page", Duration::from_secs(30), || {
        h.remote.counts().tree >= 2
    });
    assert!(!is_mounted(&mnt), "a half-done mirror must not be served");
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    h.set_faults(Faults::default());
    svc.wait_mounted();
    assert_eq!(read_tree(&mnt).len(), h.expected.len());
}

#[test]
fn remote_changes_show_up_through_the_mount_without_remount() {
    let mut h = Harness::new();
    h.sample_tree(5);
    let mnt = h.tmp.path().join("mnt");
    let svc = Service::start(&h, &mnt, &["--metadata-ttl", "1h"]);
    svc.wait_mounted();
    let readme = mnt.join("README.md");
    assert_eq!(std::fs::read(&readme).unwrap(), b"# sample\n");
    let ino_before = std::fs::metadata(&readme).unwrap().ino();
    // An open file keeps its version across the update.
    let mut old = std::fs::File::open(&readme).unwrap();
    h.put("/README.md", b"# updated on the remote\n");
    h.put("/brand/new/dir/file.txt", b"new dir\n");
    h.put("/bin/new.bin", &[0, 159, 146, 150, 255]);
    h.delete("/empty.txt");
    h.delete("/deep/a/b/c/d/e/f/g/h/i/j/k/l/leaf.txt");
    read_until(&readme, b"# updated on the remote\n");
    read_until(&mnt.join("brand/new/dir/file.txt"), b"new dir\n");
    read_until(&mnt.join("bin/new.bin"), &[0, 159, 146, 150, 255]);
    gone_until(&mnt.join("empty.txt"));
    gone_until(&mnt.join("deep"));
    assert!(
        !h.local().join("deep").exists(),
        "directories emptied by deletes are removed"
    );
    assert_ne!(
        std::fs::metadata(&readme).unwrap().ino(),
        ino_before,
        "a new content version is a new inode (like an atomic rename on a local disk)"
    );
    let mut s = Vec::new();
    use std::io::Read;
    old.read_to_end(&mut s).unwrap();
    assert_eq!(s, b"# sample\n", "the open file kept the version it opened");
    assert_eq!(std::fs::metadata(mnt.join("README.md")).unwrap().len(), 24);
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.iter().any(|n| n == "empty.txt"));
    assert!(names.iter().any(|n| n == "brand"));
    h.assert_mirror_exact();
}

#[test]
fn restart_keeps_inodes_and_applies_events_written_while_down() {
    let mut h = Harness::new();
    h.sample_tree(5);
    let mnt = h.tmp.path().join("mnt");
    let mut svc = Service::start(&h, &mnt, &[]);
    svc.wait_mounted();
    let ino = |p: &str| std::fs::metadata(mnt.join(p)).unwrap().ino();
    let before = (ino("README.md"), ino("bin/blob.bin"), ino("docs"));
    h.put("/while-up.txt", b"up\n");
    read_until(&mnt.join("while-up.txt"), b"up\n");
    assert_eq!(svc.stop(), 0);
    assert!(!is_mounted(&mnt));
    let cursor = h.state().events_cursor().unwrap();
    assert!(cursor.is_some());
    // Written while the daemon is down.
    h.put("/while-down.txt", b"down\n");
    h.delete("/while-up.txt");
    h.remote.reset_counts();
    // A long interval: the catch-up must come from the pass that runs right after mounting.
    let svc = Service::start(&h, &mnt, &["--interval", "1h"]);
    svc.wait_mounted();
    read_until(&mnt.join("while-down.txt"), b"down\n");
    gone_until(&mnt.join("while-up.txt"));
    assert_eq!(
        (ino("README.md"), ino("bin/blob.bin"), ino("docs")),
        before,
        "inodes stable across restarts"
    );
    let c = h.remote.counts();
    // At most one tree request: the pass's count check (not a listing).
    assert_eq!(c.export, 0, "no re-bootstrap after a restart");
    assert!(c.tree <= 1, "no listing after a restart: {c:?}");
    assert_eq!(c.file_paths.get("/README.md"), None, "nothing re-applied");
    drop(svc);
}

#[test]
fn no_fuse_mode_keeps_the_directory_in_sync() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let mut c = h.service_cmd();
    c.arg("--no-fuse")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = KillOnDrop(c.spawn().unwrap());
    wait_for("bootstrap", Duration::from_secs(30), || h.is_complete());
    h.put("/docs/d0/added.txt", b"added\n");
    h.delete("/README.md");
    read_until(&h.local().join("docs/d0/added.txt"), b"added\n");
    gone_until(&h.local().join("README.md"));
    h.assert_mirror_exact();
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn second_instance_on_the_same_mirror_is_refused() {
    let mut h = Harness::new();
    h.put("/a.txt", b"a");
    let mut c = h.service_cmd();
    c.arg("--no-fuse")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _first = KillOnDrop(c.spawn().unwrap());
    wait_for("bootstrap", Duration::from_secs(30), || h.is_complete());
    let r = h.run(&[]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("another mountd is already running"),
        "{}",
        r.all()
    );
}

#[test]
fn sigterm_during_a_sync_pass_unmounts_persists_and_resumes() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let mnt = h.tmp.path().join("mnt");
    // Polling only: the realtime stream would deliver these small files inline, with no file read to
    // hold the pass in flight.
    let mut svc = Service::start(&h, &mnt, &["--websocket=false"]);
    svc.wait_mounted();
    let cursor_before = h.state().events_cursor().unwrap();
    // A slow file read keeps the next pass in flight.
    h.set_faults(Faults {
        file_delay_ms: 60_000,
        ..Default::default()
    });
    h.put("/slow/one.txt", b"one\n");
    h.put("/slow/two.txt", b"two\n");
    wait_for(
        "the pass to start fetching",
        Duration::from_secs(30),
        || h.remote.counts().file >= 1,
    );
    let start = Instant::now();
    assert_eq!(svc.stop(), 0, "clean exit on SIGTERM");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "stopped within a bounded time: {:?}",
        start.elapsed()
    );
    assert!(!is_mounted(&mnt), "unmounted");
    // The in-flight page was abandoned, not half-applied: the cursor did not move past it.
    assert_eq!(h.state().events_cursor().unwrap(), cursor_before);
    h.set_faults(Faults::default());
    h.put("/slow/three.txt", b"three\n");
    let svc = Service::start(&h, &mnt, &[]);
    svc.wait_mounted();
    read_until(&mnt.join("slow/one.txt"), b"one\n");
    read_until(&mnt.join("slow/two.txt"), b"two\n");
    read_until(&mnt.join("slow/three.txt"), b"three\n");
    h.assert_mirror_exact();
    drop(svc);
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let mut h = Harness::new();
    h.sample_tree(2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mnt = h.tmp.path().join("mnt");
    let svc = Service::start(&h, &mnt, &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    svc.wait_mounted();
    std::fs::read(mnt.join("README.md")).unwrap();
    h.put("/m.txt", b"m");
    read_until(&mnt.join("m.txt"), b"m");
    let body = h.rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(body.contains("mountd_sync_passes_total"), "{body}");
    let passes: f64 = body
        .lines()
        .find(|l| l.starts_with("mountd_sync_passes_total "))
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(passes >= 1.0);
    assert!(
        body.contains("mountd_fuse_request_latency_seconds_bucket{op=\"read\""),
        "{body}"
    );
    drop(svc);
}

#[test]
fn audit_heals_local_drift_and_hostile_names_never_appear() {
    let mut h = Harness::new();
    h.sample_tree(10);
    h.remote.put("/../evil.txt", b"evil");
    h.remote.put("/bad\\name.txt", b"evil");
    assert_eq!(h.run(&[]).code, 5, "hostile paths reported as skipped");
    // Drift behind mountd's back: a mirrored file disappears from the directory. (In mirror mode the
    // mirror directory is the local side, and a file deleted there is a local delete, pushed; a
    // pull-only mirror is healed from the remote.)
    std::fs::remove_file(h.local().join("docs/d1/f00001.txt")).unwrap();
    h.remote.reset_counts();
    let mnt = h.tmp.path().join("mnt");
    let svc = Service::start(&h, &mnt, &["--audit-interval", "500ms", "--read-only"]);
    svc.wait_mounted();
    wait_for(
        "the audit to restore the file",
        Duration::from_secs(30),
        || h.local().join("docs/d1/f00001.txt").exists(),
    );
    h.assert_mirror_exact();
    let c = h.remote.counts();
    assert_eq!(c.file_paths.get("/docs/d1/f00001.txt"), Some(&1));
    assert_eq!(
        c.file, 1,
        "the audit fetched only the missing file: {:?}",
        c.file_paths
    );
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("evil") || n.contains('\\')),
        "{names:?}"
    );
    assert!(!h.tmp.path().join("evil.txt").exists());
    drop(svc);
}

#[test]
fn without_an_events_feed_periodic_listings_keep_the_mount_in_sync() {
    let mut h = Harness::new();
    h.sample_tree(3);
    h.set_faults(Faults {
        events_404: true,
        ..Default::default()
    });
    let mnt = h.tmp.path().join("mnt");
    let svc = Service::start(&h, &mnt, &[]);
    svc.wait_mounted();
    h.put("/listed-later.txt", b"via listing\n");
    h.put("/README.md", b"changed via listing\n");
    read_until(&mnt.join("listed-later.txt"), b"via listing\n");
    read_until(&mnt.join("README.md"), b"changed via listing\n");
    h.assert_mirror_exact();
    drop(svc);
}

#[test]
fn systemd_ready_is_sent_only_once_the_mount_is_served() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let sock_path = h.tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mnt = h.tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut c = h.service_cmd();
    c.arg("--mountpoint")
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    let mut svc = Service {
        child: Some(child),
        mnt: mnt.clone(),
    };
    let mut buf = [0u8; 4096];
    let mut saw_ready = false;
    let mut watchdog_pings = 0;
    while watchdog_pings < 2 {
        let n = sock.recv(&mut buf).expect("notification within 60s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == "READY=1") {
            assert!(is_mounted(&mnt), "READY=1 sent before the mount was served");
            saw_ready = true;
        }
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            watchdog_pings += 1;
        }
    }
    assert!(saw_ready);
    assert_eq!(svc.stop(), 0);
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 on shutdown");
}

#[test]
fn a_create_the_feed_never_shows_is_found_by_the_safety_polls_count_check() {
    let mut h = Harness::new();
    h.sample_tree(3);
    let mut c = h.service_cmd();
    c.args(["--no-fuse", "--websocket=false"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _svc = KillOnDrop(c.spawn().unwrap());
    wait_for("bootstrap", Duration::from_secs(30), || h.is_complete());
    // The create's event never reaches the feed: only the count check on a poll can see it.
    h.remote.hide_events(mountd_remote::HideEvents {
        paths: Default::default(),
        next: 1,
    });
    h.put("/docs/gap.txt", b"never announced\n");
    read_until(&h.local().join("docs/gap.txt"), b"never announced\n");
    h.assert_mirror_exact();
    let st = h.status_json();
    let check = &st["countCheck"];
    assert!(check.is_object(), "status shows the last count check: {st}");
}
