//! Large files: any size in flat memory, and arriving bytes counted as progress.
//!
//! * In-process (the engine against a remote whose file and export bodies are generated lazily, so the
//!   only large allocations would be the engine's own): a 256 MiB file through the tree pull and
//!   through the export lands byte for byte, and the process grows by far less than the file — heap
//!   peak (a counting allocator) and peak RSS (`VmHWM`, reset through `/proc/self/clear_refs`).
//! * In-process: a body cut mid-way is fetched again from byte 0 (`BODY_RETRIES`), and an attempt
//!   that fails after cuts still counts its bytes as progress for the stall guard.
//! * Process-level (`mountd --once` against the HTTP reference remote with a bandwidth fault): a 20 MiB
//!   file at 2 MB/s completes under a 2 s idle timeout in one request, through the tree pull and after
//!   the export falls through, while the state file's mtime keeps moving.
//!
//! The tests of this binary run one at a time (the memory figures are per process).
mod common;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use common::Harness;
use futures_util::StreamExt;
use mountd::remote::fault::{Fault, FaultyRemote, Op, Rule};
use mountd::remote::types::{BulkOutcome, EventsPage, PushFile, TreeEntry, TreePage, WriteOutcome};
use mountd::remote::{BodyStream, ByteStream, Remote, RemoteError};
use mountd::store::db::{Db, Identity, State};
use mountd::store::LocalStore;
use mountd::sync::attempt::Limits;
use mountd::sync::engine::{Engine, SyncConfig};
use mountd::sync::progress::Progress;
use mountd_remote::Faults;
use sha2::{Digest, Sha256};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------------------------------
// Memory accounting

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One test at a time: the figures are the process's.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `/proc/self/status` value in KiB.
fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
}

/// Growth of the heap and of the resident set from [`Meter::start`] to their peaks.
struct Meter {
    heap0: usize,
    rss0: u64,
    hwm_reset: bool,
}

impl Meter {
    fn start() -> Meter {
        // "5" resets VmHWM to the current RSS (Linux >= 4.0).
        let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let heap0 = LIVE.load(Ordering::Relaxed);
        PEAK.store(heap0, Ordering::Relaxed);
        Meter {
            heap0,
            rss0: status_kib("VmRSS") << 10,
            hwm_reset,
        }
    }

    /// (heap growth, RSS growth) in bytes; the RSS figure only when the high-water mark could be reset.
    fn growth(&self) -> (usize, Option<u64>) {
        let heap = PEAK.load(Ordering::Relaxed).saturating_sub(self.heap0);
        let rss = (status_kib("VmHWM") << 10).saturating_sub(self.rss0);
        (heap, self.hwm_reset.then_some(rss))
    }
}

const MIB: usize = 1 << 20;

fn assert_flat(what: &str, m: &Meter, file: usize, bound: usize) {
    let (heap, rss) = m.growth();
    eprintln!(
        "{what}: file {} MiB, heap peak growth {:.1} MiB, RSS peak growth {}",
        file / MIB,
        heap as f64 / MIB as f64,
        rss.map_or("not measured".into(), |r| format!(
            "{:.1} MiB",
            r as f64 / MIB as f64
        ))
    );
    assert!(
        heap < bound,
        "{what}: the heap grew by {heap} bytes for a {file}-byte file (bound {bound})"
    );
    if let Some(rss) = rss {
        assert!(
            (rss as usize) < bound,
            "{what}: peak RSS grew by {rss} bytes for a {file}-byte file (bound {bound})"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// A remote with one large file whose bodies are generated as they are read

/// Raw bytes per generated block (a multiple of 3: each block's base64 stands alone).
const BLOCK: usize = 48 << 10;
const BIG: &str = "/big/large.bin";

/// A block of xorshift bytes, and its base64.
fn base() -> &'static (Vec<u8>, String) {
    static BASE: std::sync::OnceLock<(Vec<u8>, String)> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut out = vec![0u8; BLOCK];
        for c in out.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&out);
        (out, b64)
    })
}

/// Block `i` of the content: the base block with the block number in its first 9 bytes (so a block
/// out of place shows).
fn block(i: usize, size: usize) -> Vec<u8> {
    let n = BLOCK.min(size - i * BLOCK);
    let mut out = base().0[..n].to_vec();
    let mut tag = [0xa5u8; 9];
    tag[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let t = tag.len().min(n);
    out[..t].copy_from_slice(&tag[..t]);
    out
}

/// The base64 of block `i` (the first 9 bytes are 12 characters; the rest is the base block's).
fn block_b64(i: usize, size: usize) -> String {
    let b = block(i, size);
    if b.len() < BLOCK {
        return base64::engine::general_purpose::STANDARD.encode(b);
    }
    let mut s = base64::engine::general_purpose::STANDARD.encode(&b[..9]);
    s.push_str(&base().1[12..]);
    s
}

fn blocks(size: usize) -> usize {
    size.div_ceil(BLOCK)
}

/// The hex SHA-256 of the generated content of `size` bytes (computed once per size).
fn content_hash(size: usize) -> String {
    static HASHES: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let mut h = HASHES.lock().unwrap();
    if let Some((_, x)) = h.iter().find(|(s, _)| *s == size) {
        return x.clone();
    }
    let mut d = Sha256::new();
    for i in 0..blocks(size) {
        d.update(block(i, size));
    }
    let x = hex::encode(d.finalize());
    h.push((size, x.clone()));
    x
}

struct Lazy {
    size: usize,
    hash: String,
}

impl Lazy {
    /// The `/fs/file` object, generated chunk by chunk as it is read.
    fn object(&self) -> impl futures_util::Stream<Item = Result<Bytes, RemoteError>> + Send {
        let head = format!(
            r#"{{"path":"{BIG}","revision":"rev_1","contentHash":"{}","contentType":"application/octet-stream","encoding":"base64","content":""#,
            self.hash
        );
        let size = self.size;
        let body = futures_util::stream::iter(0..blocks(size))
            .map(move |i| Ok(Bytes::from(block_b64(i, size))));
        futures_util::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(body)
            .chain(futures_util::stream::once(async {
                Ok(Bytes::from_static(
                    br#"","lastEditedAt":"2024-01-01T00:00:00.000Z"}"#,
                ))
            }))
    }
}

fn body(
    chunks: impl futures_util::Stream<Item = Result<Bytes, RemoteError>> + Send + 'static,
) -> BodyStream {
    let chunks: ByteStream = Box::pin(chunks);
    BodyStream {
        correlation_id: "lazy".into(),
        chunks,
    }
}

#[async_trait]
impl Remote for Lazy {
    async fn tree(&self, path: &str, _: u32, _: Option<&str>) -> Result<TreePage, RemoteError> {
        let entries = match path {
            "/" => vec![
                TreeEntry {
                    path: "/big".into(),
                    kind: "dir".into(),
                    revision: None,
                    content_hash: None,
                    size: None,
                },
                TreeEntry {
                    path: BIG.into(),
                    kind: "file".into(),
                    revision: Some("rev_1".into()),
                    content_hash: Some(self.hash.clone()),
                    size: Some(self.size as u64),
                },
            ],
            _ => vec![],
        };
        Ok(TreePage {
            entries,
            next_cursor: None,
            total_files: Some(1),
        })
    }

    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        assert_eq!(path, BIG);
        Ok(body(self.object()))
    }

    async fn events(&self, _: Option<&str>, _: u32) -> Result<EventsPage, RemoteError> {
        Ok(EventsPage {
            events: vec![],
            next_cursor: None,
        })
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        Ok(None)
    }

    async fn export(&self, _: &str) -> Result<BodyStream, RemoteError> {
        let open = futures_util::stream::once(async { Ok(Bytes::from_static(b"[")) });
        let close = futures_util::stream::once(async { Ok(Bytes::from_static(b"]")) });
        Ok(body(open.chain(self.object()).chain(close)))
    }

    // A read-only remote: the pull-only engine of these tests never writes.
    async fn put_file(&self, _: &str, _: &PushFile) -> Result<WriteOutcome, RemoteError> {
        unreachable!("pull-only")
    }

    async fn delete_file(&self, _: &str, _: &str) -> Result<WriteOutcome, RemoteError> {
        unreachable!("pull-only")
    }

    async fn bulk(&self, _: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        unreachable!("pull-only")
    }
}

/// An engine over a temp mirror, reading `remote` through a fault layer.
struct Bench {
    tmp: tempfile::TempDir,
    faults: Arc<FaultyRemote>,
    engine: Engine,
    size: usize,
}

fn bench(size: usize, use_export: bool) -> Bench {
    let tmp = tempfile::tempdir().unwrap();
    let remote = Lazy {
        size,
        hash: content_hash(size),
    };
    let faults = Arc::new(FaultyRemote::new(Arc::new(remote)));
    let store = LocalStore::open(&tmp.path().join("mirror")).unwrap();
    let st = State::open(
        &tmp.path().join("state.db"),
        &Identity {
            base_url: "lazy://".into(),
            workspace: "ws".into(),
            remote_root: "/".into(),
            local_dir: store.root().display().to_string(),
        },
    )
    .unwrap();
    let cfg = SyncConfig {
        remote_root: "/".into(),
        tree_depth: 10,
        concurrency: 4,
        use_export,
        // Generous, like the idle limit in `Bench::limits`: a debug build on a loaded 2-core machine
        // streams the 256 MiB entry for tens of seconds, and these tests check memory, not time (an
        // export that took longer fell through to the tree pull and failed the export variant).
        export_timeout: Duration::from_secs(120),
        allow_mass_delete: false,
        memory_budget: 64 << 20,
        mass_delete_ratio: 0.5,
        force_audit: false,
        push: Default::default(),
    };
    let engine = Engine::new(
        faults.clone(),
        Arc::new(store),
        Db::spawn(st).unwrap(),
        cfg,
        Progress::new(None, "daemon", None),
    );
    Bench {
        tmp,
        faults,
        engine,
        size,
    }
}

impl Bench {
    fn limits() -> Limits {
        Limits {
            idle: Duration::from_secs(120),
            cap: Duration::ZERO,
            stall_limit: 3,
        }
    }

    /// The mirrored file holds exactly the generated bytes.
    fn assert_bytes(&self) {
        let p = self
            .tmp
            .path()
            .join("mirror")
            .join(BIG.trim_start_matches('/'));
        let mut f = std::io::BufReader::new(std::fs::File::open(&p).unwrap());
        assert_eq!(f.get_ref().metadata().unwrap().len(), self.size as u64);
        let mut got = vec![0u8; BLOCK];
        for i in 0..blocks(self.size) {
            let want = block(i, self.size);
            f.read_exact(&mut got[..want.len()]).unwrap();
            assert!(
                got[..want.len()] == want[..],
                "block {i} of the mirrored file differs"
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 256 MiB: large against the bound, and quick enough in a debug build.
const LARGE: usize = 256 * MIB;
/// Growth allowed while mirroring one large file (budget 64 MiB; the file is 4x this).
const BOUND: usize = 64 * MIB;

fn mirror_large(use_export: bool) {
    let _g = serial();
    let b = bench(LARGE, use_export);
    let rt = runtime();
    let m = Meter::start();
    let how = rt
        .block_on(mountd::sync::attempt::attempt(&b.engine, Bench::limits()))
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    let what = if use_export { "export" } else { "tree" };
    assert_flat(&format!("one file via the {what}"), &m, LARGE, BOUND);
    assert_eq!(how, what);
    assert_eq!(b.faults.count_path(Op::File, BIG), u64::from(!use_export));
    assert!(b.engine.progress().received() as usize > LARGE);
    b.assert_bytes();
}

#[test]
fn a_large_file_through_the_tree_pull_in_flat_memory() {
    mirror_large(false);
}

#[test]
fn a_large_file_through_the_export_in_flat_memory() {
    mirror_large(true);
}

/// The tree pull of one `size` file whose body is cut at half its length `times` times.
fn cut_bench(size: usize, times: u32) -> Bench {
    let b = bench(size, false);
    b.faults.add(
        Rule::new(Op::File, Fault::ExportReset(size / 2))
            .path(BIG)
            .times(times),
    );
    b
}

/// A body cut mid-way is fetched again from its first byte (the API has no ranges), up to the
/// engine's `BODY_RETRIES`, within the attempt; the memory stays flat meanwhile.
#[test]
fn a_cut_body_is_fetched_again_from_its_start() {
    let _g = serial();
    let size = 64 * MIB;
    // Two cuts at half the body, then a whole one.
    let b = cut_bench(size, 2);
    let rt = runtime();
    let m = Meter::start();
    let how = rt
        .block_on(mountd::sync::attempt::attempt(&b.engine, Bench::limits()))
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    assert_flat("a file cut twice", &m, size, BOUND);
    assert_eq!(how, "tree");
    assert_eq!(b.faults.count_path(Op::File, BIG), 3);
    // The cost of a cut: what arrived before it, received again.
    let received = b.engine.progress().received() as usize;
    assert!(received > 2 * (size / 2) + size, "{received}");
    b.assert_bytes();
}

/// More cuts than the engine retries: the attempt fails, but the bytes that arrived count as progress,
/// so the stall guard does not count it; the next attempt completes.
#[test]
fn cuts_beyond_the_retries_fail_the_attempt_without_counting_as_a_stall() {
    let _g = serial();
    let size = 8 * MIB;
    let b = cut_bench(size, 5);
    let rt = runtime();
    let first = rt.block_on(mountd::sync::attempt::attempt(&b.engine, Bench::limits()));
    let e = first.err().expect("four cuts in a row fail the attempt");
    assert!(e.to_string().contains("body broken"), "{e}");
    assert_eq!(
        b.faults.count_path(Op::File, BIG),
        4,
        "one fetch and three retries"
    );
    let runs = rt
        .block_on(b.engine.read(|st| st.no_progress_runs()))
        .unwrap();
    assert_eq!(runs, 0, "bytes arrived: the stall guard saw progress");
    let how = rt
        .block_on(mountd::sync::attempt::attempt(&b.engine, Bench::limits()))
        .unwrap_or_else(|e| panic!("{e}"))
        .path;
    assert_eq!(how, "tree");
    assert_eq!(b.faults.count_path(Op::File, BIG), 6);
    b.assert_bytes();
}

// ---------------------------------------------------------------------------------------------------
// Process level: a slow large file under a short idle timeout

const SLOW: usize = 20 * MIB;
const RATE: u64 = 2_000_000;

/// Run `mountd --once` (with `extra`) until it exits, noting every mtime of the state file seen
/// meanwhile. Returns (exit status, stderr, the mtimes).
fn run_watching(
    h: &Harness,
    extra: &[&str],
) -> (std::process::ExitStatus, String, Vec<SystemTime>) {
    let mut child = h.spawn(extra);
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut mtimes: Vec<SystemTime> = Vec::new();
    let started = Instant::now();
    let status = loop {
        if let Ok(t) = std::fs::metadata(h.state_file()).and_then(|m| m.modified()) {
            if mtimes.last() != Some(&t) {
                mtimes.push(t);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "mountd did not finish within 120 s"
        );
        // Polling the state file (what the watchdog of a supervisor would look at).
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, reader.join().unwrap(), mtimes)
}

/// Longest time between successive mtimes seen, and the span from the first to the last.
fn gaps(mtimes: &[SystemTime]) -> (Duration, Duration) {
    let d = |a: &SystemTime, b: &SystemTime| b.duration_since(*a).unwrap_or_default();
    let max = mtimes
        .windows(2)
        .map(|w| d(&w[0], &w[1]))
        .max()
        .unwrap_or_default();
    let span = match (mtimes.first(), mtimes.last()) {
        (Some(a), Some(b)) => d(a, b),
        _ => Duration::ZERO,
    };
    (max, span)
}

fn slow_harness(export_too: bool) -> (Harness, Vec<u8>) {
    let mut h = Harness::new();
    // Text content: lines of the file's offset, so a misplaced range would show.
    let mut content = Vec::with_capacity(SLOW);
    let mut i = 0u64;
    while content.len() < SLOW {
        content.extend_from_slice(format!("line {i:012} of the slow large file\n").as_bytes());
        i += 1;
    }
    content.truncate(SLOW);
    h.put("/slow/large.txt", &content);
    h.put("/slow/small.txt", b"small\n");
    h.set_faults(Faults {
        file_rate_bytes_per_sec: Some(RATE),
        export_rate_bytes_per_sec: export_too.then_some(RATE),
        ..Default::default()
    });
    (h, content)
}

fn check_slow_run(h: &Harness, status: std::process::ExitStatus, log: &str, mtimes: &[SystemTime]) {
    assert!(status.success(), "mountd failed ({status}):\n{log}");
    h.assert_mirror_exact();
    // The watchdog never cancelled the download: one request for the large file, or more only when
    // a read timed out on a loaded machine (each such retry says so in the log).
    let requests = h.remote.counts().file_paths.get("/slow/large.txt").copied();
    let read_retries = log.matches("fetching it again from its start").count() as u64;
    assert_eq!(requests, Some(1 + read_retries), "{log}");
    assert!(
        !log.contains("no progress for"),
        "the watchdog fired:\n{log}"
    );
    // The body takes ~10 s at 2 MB/s: the state file's mtime moved all along, never 2 s apart.
    let (max_gap, span) = gaps(mtimes);
    assert!(
        span >= Duration::from_secs(8),
        "the state file's mtime moved for {span:?} only ({} changes)",
        mtimes.len()
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "the state file's mtime stood still for {max_gap:?}"
    );
}

#[test]
fn a_slow_large_file_completes_under_a_short_idle_timeout() {
    let _g = serial();
    let (h, _) = slow_harness(false);
    let started = Instant::now();
    let (status, log, mtimes) =
        run_watching(&h, &["--no-export", "--bootstrap-idle-timeout", "2s"]);
    check_slow_run(&h, status, &log, &mtimes);
    // 20 MiB at 2 MB/s.
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// With the export as slow: its one large entry misses the export sub-deadline (3/4 of the idle
/// timeout, no entry within it), the bootstrap falls through to the tree pull, which completes.
#[test]
fn a_slow_export_falls_through_and_the_tree_pull_completes() {
    let _g = serial();
    let (h, _) = slow_harness(true);
    let (status, log, mtimes) = run_watching(&h, &["--bootstrap-idle-timeout", "2s"]);
    check_slow_run(&h, status, &log, &mtimes);
    assert!(log.contains("falling through"), "{log}");
    assert_eq!(h.remote.counts().export, 1);
    let path = h
        .state()
        .meta(mountd::store::db::MetaKey::LastPath)
        .unwrap();
    assert_eq!(path.as_deref(), Some("tree"));
}
