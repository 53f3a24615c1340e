//! Process-wide metrics: sync counters and latencies, the mirror's state as gauges an operator can alert
//! on, and FUSE operation latency histograms (only while a FUSE mount is active), rendered as Prometheus
//! text (served by [`crate::cli::metrics_server`], or written to a file for node-exporter's textfile
//! collector with `--once --metrics-file`). Lock-free atomics, no dependencies.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 10.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let mut cum = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}\n"));
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}\n"
        ));
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{braced} {}\n",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        ));
        out.push_str(&format!("{name}_count{braced} {cum}\n"));
    }
}

/// FUSE operations with their own latency histogram.
pub const FUSE_OPS: [&str; 17] = [
    "lookup", "getattr", "readdir", "open", "read", "release", "statfs", "write", "create",
    "setattr", "mkdir", "unlink", "rmdir", "rename", "flush", "fsync", "other",
];

pub struct Metrics {
    pub sync_passes: AtomicU64,
    pub sync_failures: AtomicU64,
    pub sync_pass_seconds: Histogram,
    pub fuse_latency: [Histogram; FUSE_OPS.len()],
    pub fuse_errors: [AtomicU64; FUSE_OPS.len()],
    /// Unix time of the last successful attempt or sync pass (0: none yet).
    last_success_unix: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    quarantined: AtomicU64,
    bootstrap_complete: AtomicBool,
    /// Consecutive failed attempts or passes (0 while healthy).
    consecutive_failures: AtomicU64,
    realtime_connected: AtomicBool,
    /// Delivery lag of the last event applied from the realtime stream, in ms (`u64::MAX`: none yet).
    realtime_lag_ms: AtomicU64,
    /// Events and batches (transactions) applied from the realtime stream.
    pub realtime_events: AtomicU64,
    pub realtime_batches: AtomicU64,
    fuse_active: AtomicBool,
    /// Two-way sync: files pushed (written or deleted on the remote), push requests, pushes that
    /// failed, conflict copies kept.
    pub pushed_files: AtomicU64,
    pub push_requests: AtomicU64,
    pub push_failures: AtomicU64,
    conflicts_total: AtomicU64,
    /// The outbox as last counted: pending changes, their bytes, the oldest's unix time (0: none),
    /// unsettled conflicts, write-denied, too large and unsupported paths.
    outbox: [AtomicU64; 7],
    /// The last count check (see [`crate::sync::count_check`]): when (Unix seconds, 0: none), the
    /// server's count (`u64::MAX`: not sent), the mirror's, and whether they agreed (2: undecided).
    count_check_unix: AtomicU64,
    count_check_server: AtomicU64,
    count_check_mirror: AtomicU64,
    count_check_match: AtomicU64,
    /// Count checks that found a mismatch (each one started a listing).
    pub count_mismatches: AtomicU64,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    out.push_str(&format!("{name} {value}\n"));
}

impl Metrics {
    pub fn global() -> &'static Metrics {
        GLOBAL.get_or_init(Metrics::new)
    }

    /// A registry with every counter at zero (the process-wide one is [`Metrics::global`]).
    fn new() -> Metrics {
        Metrics {
            sync_passes: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            sync_pass_seconds: Histogram::new(),
            fuse_latency: [const { Histogram::new() }; FUSE_OPS.len()],
            fuse_errors: [const { AtomicU64::new(0) }; FUSE_OPS.len()],
            last_success_unix: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            bootstrap_complete: AtomicBool::new(false),
            consecutive_failures: AtomicU64::new(0),
            realtime_connected: AtomicBool::new(false),
            realtime_lag_ms: AtomicU64::new(u64::MAX),
            realtime_events: AtomicU64::new(0),
            realtime_batches: AtomicU64::new(0),
            fuse_active: AtomicBool::new(false),
            pushed_files: AtomicU64::new(0),
            push_requests: AtomicU64::new(0),
            push_failures: AtomicU64::new(0),
            conflicts_total: AtomicU64::new(0),
            outbox: [const { AtomicU64::new(0) }; 7],
            count_check_unix: AtomicU64::new(0),
            count_check_server: AtomicU64::new(u64::MAX),
            count_check_mirror: AtomicU64::new(0),
            count_check_match: AtomicU64::new(2),
            count_mismatches: AtomicU64::new(0),
        }
    }

    /// A conflict copy was kept.
    pub fn conflict(&self) {
        self.conflicts_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The push side as last counted, in `STATUS=`'s words: pending changes (count, bytes, the
    /// oldest's age), conflicts, write-denied and too-large paths; empty when there is nothing to say.
    pub fn outbox_status(&self) -> String {
        let v: Vec<u64> = self
            .outbox
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let mut t = String::new();
        if v[0] > 0 {
            let age = unix_now().saturating_sub(v[2]);
            t.push_str(&format!(
                "; {} local change(s) pending ({}, oldest {age}s)",
                v[0],
                crate::store::space::human_bytes(v[1])
            ));
        }
        for (n, what) in [
            (v[3], "conflict(s) (mountd conflicts)"),
            (v[4], "write-denied"),
            (v[5], "too large to push"),
        ] {
            if n > 0 {
                t.push_str(&format!("; {n} {what}"));
            }
        }
        t
    }

    /// The outbox as just counted.
    pub fn set_outbox(&self, s: &crate::store::db::OutboxSummary) {
        let v = [
            s.pending,
            s.bytes,
            s.oldest.map_or(0, |t| t.max(0) as u64),
            s.conflicts,
            s.denied,
            s.too_large,
            s.unsupported,
        ];
        for (a, v) in self.outbox.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub fn observe_pass(&self, d: Duration, ok: bool) {
        self.sync_passes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.sync_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.sync_pass_seconds.observe(d);
    }

    /// Record one FUSE operation (`op` is one of [`FUSE_OPS`]).
    pub fn observe_fuse(&self, op: &str, d: Duration, ok: bool) {
        let i = FUSE_OPS
            .iter()
            .position(|o| *o == op)
            .unwrap_or(FUSE_OPS.len() - 1);
        self.fuse_latency[i].observe(d);
        if !ok {
            self.fuse_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The mirror's state as recorded in the state DB (after each attempt or pass).
    pub fn set_mirror(&self, files: u64, bytes: u64, quarantined: u64, complete: bool) {
        self.files.store(files, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.quarantined.store(quarantined, Ordering::Relaxed);
        self.bootstrap_complete.store(complete, Ordering::Relaxed);
    }

    /// The last successful attempt or pass ended at `unix` seconds.
    pub fn set_last_success(&self, unix: u64) {
        self.last_success_unix.store(unix, Ordering::Relaxed);
    }

    /// Consecutive failed attempts or passes (0: healthy).
    pub fn set_consecutive_failures(&self, n: u64) {
        self.consecutive_failures.store(n, Ordering::Relaxed);
    }

    /// Whether the realtime stream (`/fs/ws`) is connected; called by the stream code (default 0).
    pub fn set_realtime_connected(&self, connected: bool) {
        self.realtime_connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the realtime stream is connected now.
    pub fn realtime_connected(&self) -> bool {
        self.realtime_connected.load(Ordering::Relaxed)
    }

    /// The delivery lag of the last event applied from the realtime stream: from the server's event
    /// timestamp to the commit that made it visible.
    pub fn set_realtime_lag(&self, lag: Duration) {
        self.realtime_lag_ms.store(
            lag.as_millis().min(u64::MAX as u128 - 1) as u64,
            Ordering::Relaxed,
        );
    }

    /// The last count check: the server's count (`None`: not sent), the mirror's, the verdict.
    pub fn set_count_check(
        &self,
        server: Option<u64>,
        mirror: u64,
        verdict: crate::sync::count_check::Verdict,
    ) {
        use crate::sync::count_check::Verdict;
        self.count_check_unix.store(unix_now(), Ordering::Relaxed);
        self.count_check_server
            .store(server.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count_check_mirror.store(mirror, Ordering::Relaxed);
        let m = match verdict {
            Verdict::Match => 1,
            Verdict::Mismatch => 0,
            Verdict::Inconclusive | Verdict::Unsupported => 2,
        };
        self.count_check_match.store(m, Ordering::Relaxed);
    }

    /// A count check found a mismatch.
    pub fn count_mismatch(&self) {
        self.count_mismatches.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a FUSE mount is being served: the FUSE series are rendered only while it is.
    pub fn set_fuse_active(&self, active: bool) {
        self.fuse_active.store(active, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flag = |a: &AtomicBool| u8::from(a.load(Ordering::Relaxed));
        single(
            &mut out,
            "mountd_sync_passes_total",
            "counter",
            "Sync attempts and passes run (bootstrap, catch-up, events pass, audit).",
            load(&self.sync_passes),
        );
        single(
            &mut out,
            "mountd_sync_failures_total",
            "counter",
            "Sync attempts and passes that failed (remote unavailable or failing, stall, local error).",
            load(&self.sync_failures),
        );
        family(
            &mut out,
            "mountd_sync_pass_seconds",
            "histogram",
            "Duration of sync attempts and passes.",
        );
        self.sync_pass_seconds
            .render("mountd_sync_pass_seconds", "", &mut out);
        let last = load(&self.last_success_unix);
        single(
            &mut out,
            "mountd_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful sync (0: the mirror never synced).",
            last,
        );
        family(
            &mut out,
            "mountd_events_lag_seconds",
            "gauge",
            "Seconds since the last successful sync pass (absent until one succeeded).",
        );
        if last > 0 {
            out.push_str(&format!(
                "mountd_events_lag_seconds {}\n",
                unix_now().saturating_sub(last)
            ));
        }
        single(
            &mut out,
            "mountd_consecutive_failures",
            "gauge",
            "Failed sync attempts or passes since the last success (0 while healthy; the mount keeps serving the last good state).",
            load(&self.consecutive_failures),
        );
        let push = [
            ("mountd_push_files_total", "counter", "Local changes pushed (files written or deleted on the remote).", load(&self.pushed_files)),
            ("mountd_push_requests_total", "counter", "Write requests sent (PUT, DELETE, bulk).", load(&self.push_requests)),
            ("mountd_push_failures_total", "counter", "Pushes that failed and wait for a retry.", load(&self.push_failures)),
            ("mountd_conflicts_total", "counter", "Conflict copies kept (both sides changed a file).", load(&self.conflicts_total)),
            ("mountd_outbox_pending", "gauge", "Local changes not yet on the remote.", load(&self.outbox[0])),
            ("mountd_outbox_pending_bytes", "gauge", "Bytes of the files waiting to be pushed.", load(&self.outbox[1])),
            ("mountd_outbox_oldest_timestamp_seconds", "gauge", "Unix time of the oldest pending change (0: none).", load(&self.outbox[2])),
            ("mountd_conflicts", "gauge", "Unsettled conflicts (`mountd conflicts`).", load(&self.outbox[3])),
            ("mountd_write_denied_paths", "gauge", "Paths the remote refused to write (403).", load(&self.outbox[4])),
            ("mountd_too_large_paths", "gauge", "Files above the server's body cap, not pushed.", load(&self.outbox[5])),
            ("mountd_unsupported_paths", "gauge", "Local entries the remote cannot hold (symlinks, devices, extra hard links, non-UTF-8 names).", load(&self.outbox[6])),
        ];
        for (name, kind, help, v) in push {
            single(&mut out, name, kind, help, v);
        }
        single(
            &mut out,
            "mountd_bootstrap_complete",
            "gauge",
            "1 once the mirror's first bootstrap completed.",
            flag(&self.bootstrap_complete),
        );
        single(
            &mut out,
            "mountd_files",
            "gauge",
            "Files in the mirror.",
            load(&self.files),
        );
        single(
            &mut out,
            "mountd_bytes",
            "gauge",
            "Bytes of the files in the mirror.",
            load(&self.bytes),
        );
        single(
            &mut out,
            "mountd_quarantined_files",
            "gauge",
            "Remote files not mirrored (see `mountd status`).",
            load(&self.quarantined),
        );
        single(
            &mut out,
            "mountd_realtime_connected",
            "gauge",
            "1 while the realtime event stream is connected.",
            flag(&self.realtime_connected),
        );
        family(
            &mut out,
            "mountd_realtime_lag_seconds",
            "gauge",
            "Delivery lag of the last event applied from the realtime stream: from the server's event timestamp to the commit that made it visible (absent until one was applied).",
        );
        let lag = load(&self.realtime_lag_ms);
        if lag != u64::MAX {
            out.push_str(&format!(
                "mountd_realtime_lag_seconds {}\n",
                lag as f64 / 1000.0
            ));
        }
        single(
            &mut out,
            "mountd_realtime_events_total",
            "counter",
            "Events applied from the realtime stream.",
            load(&self.realtime_events),
        );
        single(
            &mut out,
            "mountd_realtime_batches_total",
            "counter",
            "Transactions that applied realtime events (a burst is gathered into few).",
            load(&self.realtime_batches),
        );
        self.render_count_check(&mut out);
        if self.fuse_active.load(Ordering::Relaxed) {
            family(
                &mut out,
                "mountd_fuse_request_latency_seconds",
                "histogram",
                "Latency of FUSE requests by operation.",
            );
            for (i, op) in FUSE_OPS.iter().enumerate() {
                self.fuse_latency[i].render(
                    "mountd_fuse_request_latency_seconds",
                    &format!("op=\"{op}\""),
                    &mut out,
                );
            }
            family(
                &mut out,
                "mountd_fuse_request_errors_total",
                "counter",
                "FUSE requests answered with an error by operation (a lookup of a missing name is not an error).",
            );
            for (i, op) in FUSE_OPS.iter().enumerate() {
                out.push_str(&format!(
                    "mountd_fuse_request_errors_total{{op=\"{op}\"}} {}\n",
                    self.fuse_errors[i].load(Ordering::Relaxed)
                ));
            }
        }
        out
    }

    /// The last count check's series (the check's values are absent until one ran).
    fn render_count_check(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let at = load(&self.count_check_unix);
        single(
            out,
            "mountd_count_check_timestamp_seconds",
            "gauge",
            "Unix time of the last check of the mirror's file count against the server's totalFiles (0: none yet).",
            at,
        );
        let series = [
            (
                "mountd_count_check_match",
                "1 when the last count check matched, 0 when it found a mismatch (absent: none yet, inconclusive, or the server sends no totalFiles).",
                load(&self.count_check_match),
                2,
            ),
            (
                "mountd_count_check_server_files",
                "The server's count of files under the mirrored root at the last count check.",
                load(&self.count_check_server),
                u64::MAX,
            ),
            (
                "mountd_count_check_mirror_files",
                "The files the mirror accounted for at the last count check (records, quarantined and skipped paths).",
                load(&self.count_check_mirror),
                u64::MAX,
            ),
        ];
        for (name, help, v, absent) in series {
            family(out, name, "gauge", help);
            if at > 0 && v != absent {
                out.push_str(&format!("{name} {v}\n"));
            }
        }
        single(
            out,
            "mountd_count_mismatches_total",
            "counter",
            "Count checks that found the mirror differing from the server (each started a listing).",
            load(&self.count_mismatches),
        );
    }

    /// Write [`Metrics::render`] to `path` atomically (a temp file in the same directory, then rename),
    /// so a textfile collector never reads half a file.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        let r = write();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Metrics {
        Metrics::new()
    }

    /// Every sample belongs to a family announced with `# HELP` and `# TYPE` before it.
    fn check_exposition(text: &str) {
        let mut help = std::collections::HashSet::new();
        let mut typed = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help.insert(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                typed.insert(
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                );
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let fam = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|f| typed.get(*f).map(String::as_str) == Some("histogram"))
                    })
                    .unwrap_or(name);
                assert!(help.contains(fam), "no HELP for {name}");
                assert!(typed.contains_key(fam), "no TYPE for {name}");
                let v = line.rsplit(' ').next().unwrap();
                assert!(v.parse::<f64>().is_ok(), "bad value in {line:?}");
            }
        }
    }

    #[test]
    fn every_series_has_help_and_type_and_fuse_only_when_mounted() {
        let m = fresh();
        m.observe_pass(Duration::from_millis(3), false);
        let text = m.render();
        check_exposition(&text);
        assert!(!text.contains("mountd_fuse"), "{text}");
        assert!(text.contains("mountd_last_success_timestamp_seconds 0\n"));
        assert!(text.contains("mountd_realtime_connected 0\n"));
        assert!(
            !text.contains("\nmountd_events_lag_seconds "),
            "no lag before a success"
        );
        m.set_fuse_active(true);
        m.set_realtime_connected(true);
        m.set_realtime_lag(Duration::from_millis(7));
        m.set_mirror(7, 700, 1, true);
        m.set_last_success(unix_now() - 5);
        m.observe_fuse("lookup", Duration::from_micros(30), true);
        let text = m.render();
        check_exposition(&text);
        for want in [
            "mountd_fuse_request_latency_seconds_bucket{op=\"lookup\",le=\"0.00005\"} 1\n",
            "mountd_realtime_connected 1\n",
            "mountd_realtime_lag_seconds 0.007\n",
            "mountd_files 7\n",
            "mountd_bytes 700\n",
            "mountd_quarantined_files 1\n",
            "mountd_bootstrap_complete 1\n",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let lag: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("mountd_events_lag_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((5..60).contains(&lag), "{lag}");
    }

    #[test]
    fn the_metrics_file_is_replaced_atomically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mountd.prom");
        std::fs::write(&p, "old").unwrap();
        let m = fresh();
        m.write_file(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        check_exposition(&text);
        assert!(text.contains("mountd_sync_passes_total 0"));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
