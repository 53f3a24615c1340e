//! Test harness: a reference remote on loopback (in-process), a temp mirror, and the real `mountd`
//! binary run as a child process.
#![allow(dead_code)]
use mountd_remote::{Faults, RemoteConfig, RemoteHandle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod inproc;

pub const TOKEN: &str = "s3cr3t-token-do-not-log-0123456789";

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub remote: RemoteHandle,
    pub tmp: tempfile::TempDir,
    /// What the remote holds, as the mirror must hold it (remote path → bytes).
    pub expected: BTreeMap<String, Vec<u8>>,
}

impl Harness {
    pub fn new() -> Harness {
        Self::with_page_size(1000)
    }

    pub fn with_page_size(page_size: usize) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let remote = rt
            .block_on(RemoteHandle::start(RemoteConfig {
                token: TOKEN.into(),
                page_size,
                seed_dir: None,
                ..Default::default()
            }))
            .expect("reference remote starts");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Harness {
            rt,
            remote,
            tmp,
            expected: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, path: &str, bytes: &[u8]) {
        self.remote.put(path, bytes);
        self.expected.insert(path.to_string(), bytes.to_vec());
    }

    pub fn delete(&mut self, path: &str) {
        self.remote.delete(path);
        self.expected.remove(path);
    }

    /// A tree with nested dirs, unicode names, empty and binary files, and `n` plain files.
    pub fn sample_tree(&mut self, n: usize) {
        self.put("/README.md", b"# sample\n");
        self.put("/empty.txt", b"");
        self.put(
            "/bin/blob.bin",
            &(0..=255u8).cycle().take(3000).collect::<Vec<_>>(),
        );
        self.remote
            .put_base64("/bin/text-as-b64.txt", b"stored as base64\n");
        self.expected.insert(
            "/bin/text-as-b64.txt".into(),
            b"stored as base64\n".to_vec(),
        );
        self.put("/deep/a/b/c/d/e/f/g/h/i/j/k/l/leaf.txt", b"deep\n");
        self.put("/ünïcødé/日本語 ファイル.txt", "こんにちは\n".as_bytes());
        for i in 0..n {
            self.put(
                &format!("/docs/d{}/f{i:05}.txt", i % 7),
                format!("file {i}\n").as_bytes(),
            );
        }
    }

    pub fn local(&self) -> PathBuf {
        self.tmp.path().join("mirror")
    }

    pub fn state_file(&self) -> PathBuf {
        self.tmp.path().join("state.json")
    }

    pub fn state_db(&self) -> PathBuf {
        self.local().join(".mountd/state.db")
    }

    pub fn set_faults(&self, f: Faults) {
        self.remote.set_faults(f);
    }

    /// The service (no `--once`) with this harness's remote and mirror.
    pub fn service_cmd(&self) -> Command {
        let once = self.cmd();
        let mut c = Command::new(once.get_program());
        c.args(once.get_args().filter(|a| *a != "--once"));
        for (k, v) in once.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.env("RELAYFILE_MOUNT_INTERVAL", "300ms")
            .stdin(Stdio::null());
        c
    }

    /// `mountd --once` with this harness's remote, mirror and short test timeouts.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mountd"));
        c.arg("--once")
            // Everything as environment, so a test's own flags override it.
            .env("RELAYFILE_BASE_URL", self.remote.base_url())
            .env("RELAYFILE_WORKSPACE", "ws_test")
            .env("RELAYFILE_TOKEN_FILE", self.tmp.path().join("token"))
            .env("RELAYFILE_LOCAL_DIR", self.local())
            .env("RELAYFILE_MOUNT_STATE_FILE", self.state_file())
            .args(["--progress", "never"])
            .env("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "10s")
            .env("MOUNTD_READ_TIMEOUT", "5s")
            .env("RELAYFILE_EXPORT_TIMEOUT", "5s")
            .env("MOUNTD_MAX_RETRY_WAIT", "2s")
            .env_remove("RELAYFILE_TOKEN")
            .env("MOUNTD_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    /// Run to completion (panics after 120 s).
    pub fn run(&self, extra: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(extra);
        run_cmd(c)
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        let mut c = self.cmd();
        c.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("mountd spawns")
    }

    /// The mirror holds exactly `expected` (and nothing else outside `.mountd`).
    pub fn assert_mirror_exact(&self) {
        let got = read_tree(&self.local());
        let want: BTreeMap<String, Vec<u8>> = self
            .expected
            .iter()
            .map(|(k, v)| (k.trim_start_matches('/').to_string(), v.clone()))
            .collect();
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "mirror differs: missing {missing:?}, extra {extra:?}"
        );
        for (k, v) in &want {
            assert!(&got[k] == v, "bytes of {k} differ");
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_mountd"))
            .args(["status", "--json", "--local-dir"])
            .arg(self.local())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn state(&self) -> mountd::store::db::State {
        mountd::store::db::State::open_existing(&self.state_db()).unwrap()
    }

    /// Lose the state DB (the files stay on disk).
    pub fn remove_state_db(&self) {
        for f in std::fs::read_dir(self.local().join(".mountd")).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("state.db") && !name.ends_with(".lock") {
                std::fs::remove_file(p).unwrap();
            }
        }
    }

    /// True once the state DB exists and says the bootstrap completed (false while it is being created).
    pub fn is_complete(&self) -> bool {
        mountd::store::db::State::open_existing(&self.state_db())
            .and_then(|s| s.is_complete())
            .unwrap_or(false)
    }

    pub fn mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.state_file())
            .ok()
            .and_then(|m| m.modified().ok())
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

pub fn run_cmd(mut c: Command) -> Run {
    let start = Instant::now();
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn");
    wait_output(child, Duration::from_secs(120), start)
}

/// Wait for a child with a safety limit (a hung test fails instead of blocking CI).
pub fn wait_output(child: Child, limit: Duration, start: Instant) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let killer = std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let out: Output = child.wait_with_output().expect("wait");
    let _ = tx.send(());
    let _ = killer.join();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Poll `cond` until true (panics after `limit`). Waits on a condition, not on time.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every regular file under `root` except the reserved `.mountd` directory.
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".mountd" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else {
                assert!(ft.is_file(), "{rel} is not a regular file");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// True when `path` is a mount point (its device differs from its parent's).
pub fn is_mounted(path: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    mi.lines().any(|l| l.split(' ').nth(4) == Some(&p))
}

/// A child process killed when dropped (a failing test never leaks a running mountd).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nothing listens on (bound, then released).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET http://addr/path` over a plain TCP connection: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// `mountd status --json` of a mirror: (exit code, parsed output; `null` when there is none, as
/// before the state DB exists).
pub fn status_of(local: &Path) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mountd"))
        .args(["status", "--json", "--local-dir"])
        .arg(local)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// `mountd status` (text) of a mirror: (exit code, stdout).
pub fn status_text_of(local: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mountd"))
        .args(["status", "--local-dir"])
        .arg(local)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Lines read from a child's pipe by a background thread.
#[derive(Clone, Default)]
pub struct Lines(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    pub fn collect(r: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                l.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn count(&self, pat: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A Unix datagram socket standing in for systemd's `NOTIFY_SOCKET`, every message kept.
pub struct NotifySocket {
    pub path: PathBuf,
    msgs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NotifySocket {
    pub fn bind(path: PathBuf) -> NotifySocket {
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let msgs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (msgs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    m.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket { path, msgs, stop }
    }

    /// Every `KEY=value` line received so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    pub fn statuses(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Run `c` through `sh` so that `WATCHDOG_PID` is the pid of the process itself (`exec` keeps the
/// shell's pid), as systemd sets it.
pub fn with_watchdog_pid(c: &Command) -> Command {
    let mut w = Command::new("sh");
    w.arg("-c")
        .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"")
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    w
}

/// A tmpfs mounted on `dir` (root only), unmounted (lazily) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }

    pub fn remount(&self, opts: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: umount2(2) of the mount this guard made.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}
