//! A herd: 30 `mountd --once` processes bootstrap the same workspace at once (each its own mirror)
//! against one reference remote with a rate limit. Every one must converge (exit 0, mirror exact), and
//! the server must see no retry storm: total requests within a small factor of the minimum, and no
//! instance sending requests while its `Retry-After` runs.
mod common;
use common::*;
use mountd_remote::{Faults, LoggedRequest};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

const INSTANCES: usize = 30;
/// Files of the workspace and entries per tree page (so the tree pull takes a few pages).
const FILES: usize = 500;
const PAGE: usize = 200;
/// Server rate limit (requests per second over all instances).
const RATE: u32 = 600;

struct Herd {
    h: Harness,
    /// The 60 mirrors live on a tmpfs (unmounted on drop): removing ~30k files and 60 databases
    /// from the test disk takes longer than the herd itself.
    dir: std::path::PathBuf,
    _fs: Tmpfs,
}

/// Per-instance numbers, from the server's request log (an instance = one correlation-id run).
#[derive(Debug, Default, Clone)]
struct Seen {
    requests: usize,
    throttled: usize,
    /// Requests that arrived while one of its own 429s' `Retry-After` was running (after a grace
    /// for requests already on the wire).
    during_pause: usize,
    /// The longest run of 429s one request (route, path, cursor) got in a row.
    longest_refusal: usize,
    /// Requests refused 4 times or more in a row: each would have failed its run had those 429s
    /// counted against the default 3 retries.
    refused_beyond_retries: usize,
}

fn per_instance(log: &[LoggedRequest]) -> BTreeMap<String, Seen> {
    let mut by: BTreeMap<String, Vec<&LoggedRequest>> = BTreeMap::new();
    for q in log {
        by.entry(q.run().to_string()).or_default().push(q);
    }
    let grace = Duration::from_millis(250);
    by.into_iter()
        .map(|(run, qs)| {
            let pauses: Vec<(Instant, Instant)> = qs
                .iter()
                .filter(|q| q.status == 429)
                // The reference remote's Retry-After is 1 s (its window is one second).
                .map(|q| (q.done + grace, q.done + Duration::from_secs(1)))
                .collect();
            let during_pause = qs
                .iter()
                .filter(|q| pauses.iter().any(|(a, b)| q.at > *a && q.at < *b))
                .count();
            // Consecutive 429s per request, in arrival order.
            let mut runs: BTreeMap<(&str, Option<&str>, Option<&str>), usize> = BTreeMap::new();
            let mut refusals = Vec::new();
            let mut ordered = qs.clone();
            ordered.sort_by_key(|q| q.at);
            for q in ordered {
                let key = (q.route.as_str(), q.path.as_deref(), q.cursor.as_deref());
                if q.status == 429 {
                    *runs.entry(key).or_default() += 1;
                } else if let Some(n) = runs.remove(&key) {
                    refusals.push(n);
                }
            }
            refusals.extend(runs.into_values());
            let seen = Seen {
                requests: qs.len(),
                throttled: qs.iter().filter(|q| q.status == 429).count(),
                during_pause,
                longest_refusal: refusals.iter().copied().max().unwrap_or(0),
                refused_beyond_retries: refusals.iter().filter(|n| **n > 3).count(),
            };
            (run, seen)
        })
        .collect()
}

impl Herd {
    fn new() -> Herd {
        let mut h = Harness::with_page_size(PAGE);
        for i in 0..FILES {
            h.put(
                &format!("/h{:02}/f{i:05}.txt", i % 25),
                format!("herd file {i}\n").as_bytes(),
            );
        }
        let dir = h.tmp.path().join("herd");
        let fs = Tmpfs::mount(&dir, "1g");
        Herd { h, dir, _fs: fs }
    }

    /// Runs the herd; returns (wall time, per-instance numbers).
    fn run(&self, export: bool) -> (Duration, BTreeMap<String, Seen>) {
        let h = &self.h;
        h.remote.reset_counts();
        h.set_faults(Faults {
            rate_limit_per_sec: Some(RATE),
            ..Default::default()
        });
        let tag = if export { "export" } else { "tree" };
        let start = Instant::now();
        let children: Vec<_> = (0..INSTANCES)
            .map(|i| {
                let mut c = h.cmd();
                c.env("RELAYFILE_LOCAL_DIR", self.dir.join(format!("{tag}-{i}")))
                    .env(
                        "RELAYFILE_MOUNT_STATE_FILE",
                        self.dir.join(format!("{tag}-{i}.json")),
                    )
                    .env("MOUNTD_LOG", "warn")
                    // The default retries (3): a request the shared limit refuses many times in a
                    // row is paced by the server's Retry-After, which does not count as a retry.
                    // 30 processes share 2 cores and one rate limit: an instance can wait on
                    // Retry-After gates and the scheduler for more than the harness's 10 s. The
                    // watchdog is not what this test is about.
                    .env("RELAYFILE_BOOTSTRAP_IDLE_TIMEOUT", "60s")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if !export {
                    c.arg("--no-export");
                }
                c.spawn().unwrap()
            })
            .collect();
        // Each one is killed by `wait_output` if still running 120 s after the start.
        let runs: Vec<Run> = children
            .into_iter()
            .map(|child| wait_output(child, Duration::from_secs(120), start))
            .collect();
        let wall = start.elapsed();
        eprintln!("herd {tag}: all exited after {wall:?}");
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r.code, 0, "{tag} instance {i}: {}", r.all());
            let got = read_tree(&self.dir.join(format!("{tag}-{i}")));
            assert_eq!(got.len(), FILES, "{tag} instance {i}");
            for (k, v) in &got {
                assert_eq!(&h.expected[&format!("/{k}")], v, "{tag} instance {i}: {k}");
            }
        }
        eprintln!("herd {tag}: verified after {:?}", start.elapsed());
        let seen = per_instance(&h.remote.requests());
        eprintln!("herd {tag}: log analysed after {:?}", start.elapsed());
        assert_eq!(seen.len(), INSTANCES, "one run id per instance");
        (wall, seen)
    }
}

fn report(tag: &str, wall: Duration, seen: &BTreeMap<String, Seen>, minimum: usize) {
    let total: usize = seen.values().map(|s| s.requests).sum();
    let throttled: usize = seen.values().map(|s| s.throttled).sum();
    let max = seen.values().map(|s| s.requests).max().unwrap();
    let min = seen.values().map(|s| s.requests).min().unwrap();
    let worst_pause = seen.values().map(|s| s.during_pause).max().unwrap();
    let longest = seen.values().map(|s| s.longest_refusal).max().unwrap();
    let beyond: usize = seen.values().map(|s| s.refused_beyond_retries).sum();
    eprintln!(
        "herd {tag}: {INSTANCES} instances x {FILES} files in {wall:.1?}: {total} requests \
         (minimum {minimum}; per instance {min}..{max}), {throttled} answered 429, \
         at most {worst_pause} request(s) of one instance inside its own Retry-After; \
         longest run of 429s for one request {longest}, {beyond} request(s) refused 4+ times in a \
         row (paced by Retry-After, not counted as retries)"
    );
}

#[test]
fn a_herd_of_30_bootstraps_converges_without_a_retry_storm() {
    let t0 = Instant::now();
    let herd = Herd::new();
    eprintln!("herd: workspace ready after {:?}", t0.elapsed());
    let pages = FILES.div_ceil(PAGE) + 1;
    for export in [false, true] {
        let tag = if export { "export" } else { "tree" };
        let (wall, seen) = herd.run(export);
        // Minimum per instance: the events tip and the catch-up page, then the export, or the tree
        // pages and one request per file.
        let per = if export { 3 } else { 2 + pages + FILES };
        let minimum = per * INSTANCES;
        report(tag, wall, &seen, minimum);
        let total: usize = seen.values().map(|s| s.requests).sum();
        let throttled: usize = seen.values().map(|s| s.throttled).sum();
        // The server's limit (RATE) is below what 30 clients of 16 readers ask for, so it answers
        // many 429s: the runs measured 1.34-1.49x the minimum (5.3k-7.4k 429s). A storm would be
        // several times the minimum; 1.75x keeps that apart from the scheduling noise of 30
        // processes on 2 cores. What each 429 may cost is bounded exactly just below.
        assert!(
            total <= minimum * 7 / 4 + 30 * INSTANCES,
            "{tag}: a retry storm: {total} requests for a minimum of {minimum}"
        );
        // Every 429 costs one more request, not a burst.
        assert!(
            total <= minimum + 2 * throttled + 10 * INSTANCES,
            "{tag}: {total} requests, {throttled} throttled, minimum {minimum}"
        );
        for (run, s) in &seen {
            // What one instance may have on the wire when a 429 lands: its 16 readers, plus the lag of
            // 30 processes on 2 cores in seeing the 429 (without the shared gate every reader keeps
            // retrying on its own 100 ms-based backoff: far more).
            assert!(
                s.during_pause <= 24,
                "{tag}: instance {run} sent {} requests during its Retry-After: {s:?}",
                s.during_pause
            );
        }
    }
}
