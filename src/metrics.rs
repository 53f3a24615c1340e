//! Process-wide metrics: sync counters and latencies, FUSE operation latency histograms, rendered as
//! Prometheus text (served by [`crate::cli::metrics_server`]). Lock-free counters, no dependencies.
use std::sync::atomic::{AtomicU64, Ordering};
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
        out.push_str(&format!(
            "{name}_sum{{{labels}}} {}\n",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        ));
        out.push_str(&format!("{name}_count{{{labels}}} {cum}\n"));
    }
}

/// FUSE operations with their own latency histogram.
pub const FUSE_OPS: [&str; 8] = [
    "lookup", "getattr", "readdir", "open", "read", "release", "statfs", "other",
];

pub struct Metrics {
    pub sync_passes: AtomicU64,
    pub sync_failures: AtomicU64,
    pub sync_pass_seconds: Histogram,
    pub fuse_latency: [Histogram; FUSE_OPS.len()],
    pub fuse_errors: [AtomicU64; FUSE_OPS.len()],
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    pub fn global() -> &'static Metrics {
        GLOBAL.get_or_init(|| Metrics {
            sync_passes: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            sync_pass_seconds: Histogram::new(),
            fuse_latency: [const { Histogram::new() }; FUSE_OPS.len()],
            fuse_errors: [const { AtomicU64::new(0) }; FUSE_OPS.len()],
        })
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

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE mountd_sync_passes_total counter\n");
        out.push_str(&format!(
            "mountd_sync_passes_total {}\n",
            self.sync_passes.load(Ordering::Relaxed)
        ));
        out.push_str("# TYPE mountd_sync_failures_total counter\n");
        out.push_str(&format!(
            "mountd_sync_failures_total {}\n",
            self.sync_failures.load(Ordering::Relaxed)
        ));
        out.push_str("# TYPE mountd_sync_pass_seconds histogram\n");
        self.sync_pass_seconds
            .render("mountd_sync_pass_seconds", "", &mut out);
        out.push_str("# TYPE mountd_fuse_request_latency_seconds histogram\n");
        for (i, op) in FUSE_OPS.iter().enumerate() {
            self.fuse_latency[i].render(
                "mountd_fuse_request_latency_seconds",
                &format!("op=\"{op}\""),
                &mut out,
            );
        }
        out.push_str("# TYPE mountd_fuse_request_errors_total counter\n");
        for (i, op) in FUSE_OPS.iter().enumerate() {
            out.push_str(&format!(
                "mountd_fuse_request_errors_total{{op=\"{op}\"}} {}\n",
                self.fuse_errors[i].load(Ordering::Relaxed)
            ));
        }
        out
    }
}
