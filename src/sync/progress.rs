//! Progress units: the watchdog's heartbeat, the state file's mtime, the progress bar and counters.
//!
//! A progress unit is a tree page listed, bytes of a response body arriving, a file fetched and written
//! or verified by hash, an export entry applied, or a checkpoint committed.
use crate::sync::statefile::{StateFile, StateFileContent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The terminal progress bar, if one is shown; log lines are printed around it.
pub static BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// stderr writer for the log subscriber that keeps log lines from tearing the progress bar.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BAR.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(|| std::io::stderr().write(buf)),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    start: Instant,
    /// Milliseconds since `start` of the last progress unit.
    last_unit_ms: AtomicU64,
    /// Milliseconds since `start` of the last state-file touch.
    last_touch_ms: AtomicU64,
    /// Milliseconds since `start` of the last progress log line (when no bar is shown).
    last_log_ms: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Body bytes received from the remote (files and the export, as they arrive).
    received: AtomicU64,
    checkpoints: AtomicU64,
    content: Mutex<StateFileContent>,
    file: Option<StateFile>,
    bar: Option<indicatif::ProgressBar>,
}

/// Spacing of the plain progress log lines shown instead of a bar.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Minimum spacing of mtime touches, so 20,000 tiny files do not cost 20,000 extra syscalls.
const TOUCH_EVERY: Duration = Duration::from_millis(20);

impl Progress {
    pub fn new(
        file: Option<StateFile>,
        mount_kind: &str,
        bar: Option<indicatif::ProgressBar>,
    ) -> Progress {
        let content = StateFileContent {
            phase: "starting".into(),
            mount_kind: mount_kind.into(),
            ..Default::default()
        };
        Progress {
            inner: Arc::new(Inner {
                start: Instant::now(),
                last_unit_ms: AtomicU64::new(0),
                last_touch_ms: AtomicU64::new(0),
                last_log_ms: AtomicU64::new(0),
                files: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                received: AtomicU64::new(0),
                checkpoints: AtomicU64::new(0),
                content: Mutex::new(content),
                file,
                bar,
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    /// Restart the watchdog clock (a new attempt starts now).
    pub fn arm(&self) {
        self.inner
            .last_unit_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the last progress unit.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.inner.last_unit_ms.load(Ordering::Relaxed)),
        )
    }

    /// One progress unit without a file (a page listed).
    pub fn unit(&self) {
        let now = self.now_ms();
        self.inner.last_unit_ms.store(now, Ordering::Relaxed);
        let last = self.inner.last_touch_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= TOUCH_EVERY.as_millis() as u64 || last == 0 {
            self.inner.last_touch_ms.store(now, Ordering::Relaxed);
            if let Some(f) = &self.inner.file {
                if let Err(e) = f.touch() {
                    tracing::warn!(error = %e, "cannot touch the state file");
                }
            }
        }
    }

    /// Bytes of a response body arrived: a progress unit (a large file streaming in is progress; the
    /// state file's mtime moves, throttled like every unit).
    pub fn bytes_arrived(&self, n: u64) {
        self.inner.received.fetch_add(n, Ordering::Relaxed);
        self.unit();
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// A file written or verified.
    pub fn file_done(&self, path: &str, bytes: u64) {
        self.inner.files.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.inc(1);
        }
        self.inner.content.lock().unwrap().current_path = path.to_string();
        self.unit();
    }

    /// A checkpoint committed: a progress unit that also rewrites the state file's content.
    pub fn checkpoint(&self) {
        self.inner.checkpoints.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        self.inner.last_unit_ms.store(now, Ordering::Relaxed);
        self.flush_content();
        let last_log = self.inner.last_log_ms.load(Ordering::Relaxed);
        if self.inner.bar.is_none() && now.saturating_sub(last_log) >= LOG_EVERY.as_millis() as u64
        {
            self.inner.last_log_ms.store(now, Ordering::Relaxed);
            let c = self.inner.content.lock().unwrap();
            tracing::info!(
                phase = %c.phase,
                files = c.files_synced,
                total = c.files_total.map_or("?".to_string(), |t| t.to_string()),
                bytes = c.bytes,
                elapsed_s = self.elapsed().as_secs(),
                "progress"
            );
        }
    }

    fn flush_content(&self) {
        let mut c = self.inner.content.lock().unwrap();
        c.files_synced = self.inner.files.load(Ordering::Relaxed);
        c.bytes = self.inner.bytes.load(Ordering::Relaxed);
        if let Some(f) = &self.inner.file {
            if let Err(e) = f.rewrite(&c) {
                tracing::warn!(error = %e, "cannot rewrite the state file");
            }
            self.inner
                .last_touch_ms
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }

    pub fn set_phase(&self, phase: &str) {
        self.inner.content.lock().unwrap().phase = phase.to_string();
        if let Some(bar) = &self.inner.bar {
            bar.set_message(phase.to_string());
        }
    }

    pub fn set_total(&self, total: Option<u64>) {
        self.inner.content.lock().unwrap().files_total = total;
        if let (Some(bar), Some(t)) = (&self.inner.bar, total) {
            bar.set_length(t);
        }
    }

    /// Record the last error for the state file; written with the next checkpoint (no progress, no write).
    pub fn set_error(&self, err: Option<String>) {
        self.inner.content.lock().unwrap().last_error = err;
    }

    pub fn files(&self) -> u64 {
        self.inner.files.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    pub fn checkpoints(&self) -> u64 {
        self.inner.checkpoints.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }

    pub fn finish_bar(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }

    /// Write the final content (phase complete or failed) once, at the end of a run.
    pub fn final_write(&self, phase: &str) {
        self.set_phase(phase);
        self.flush_content();
    }
}
