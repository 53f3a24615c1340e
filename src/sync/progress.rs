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

/// The bar while the total is unknown: a spinner with the count and the rate (never `4096/0`); the
/// phase takes what is left of the line and is cut to the terminal's width.
const SPINNER_TEMPLATE: &str = "{spinner} {human_pos} files {rate} {elapsed} {wide_msg}";
/// The bar once the total is known: the bar takes what is left of the terminal's width.
const BAR_TEMPLATE: &str =
    "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} files {rate} eta {eta}";

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", rate(s.per_sec()));
            },
        )
        .progress_chars("=> ")
}

/// Files per second, short: `0.4/s`, `37/s`, `12,345/s`.
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".into()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{}/s", indicatif::HumanCount(per_sec.round() as u64))
    }
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
        if let Some(bar) = &bar {
            bar.unset_length();
            bar.set_style(style(SPINNER_TEMPLATE));
        }
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
        if let Some(bar) = &self.inner.bar {
            match total {
                Some(t) => {
                    bar.set_length(t);
                    bar.set_style(style(BAR_TEMPLATE));
                }
                None => {
                    bar.unset_length();
                    bar.set_style(style(SPINNER_TEMPLATE));
                }
            }
        }
    }

    /// The total number of files, when the listing told it.
    pub fn total(&self) -> Option<u64> {
        self.inner.content.lock().unwrap().files_total
    }

    /// The current phase (as in the state file).
    pub fn phase(&self) -> String {
        self.inner.content.lock().unwrap().phase.clone()
    }

    /// Record the last error for the state file; written with the next checkpoint (no progress, no write).
    /// The push side as last counted (written with the next checkpoint).
    pub fn set_push(&self, s: &crate::store::db::OutboxSummary) {
        let mut c = self.inner.content.lock().unwrap();
        c.pending_changes = s.pending;
        c.conflicts = s.conflicts;
        c.not_pushed = s.denied + s.too_large;
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::{ProgressBar, ProgressDrawTarget, TermLike};
    use std::sync::Mutex;

    /// A terminal of a fixed width that records every line drawn.
    #[derive(Debug, Clone)]
    struct Term {
        width: u16,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl TermLike for Term {
        fn width(&self) -> u16 {
            self.width
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.lines.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.lines.lock().unwrap().push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A progress with a bar built like the CLI's (length 0), drawing on a `width`-column terminal.
    fn with_bar(width: u16) -> (Progress, ProgressBar, Term) {
        let term = Term {
            width,
            lines: Arc::default(),
        };
        let bar = ProgressBar::with_draw_target(
            Some(0),
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        let p = Progress::new(None, "daemon", Some(bar.clone()));
        p.set_phase("tree");
        (p, bar, term)
    }

    /// The last non-empty line drawn.
    fn last_line(term: &Term) -> String {
        let lines = term.lines.lock().unwrap();
        let last = lines.iter().rev().find(|l| !l.trim().is_empty());
        last.map(|l| l.trim_end().to_string()).unwrap_or_default()
    }

    #[test]
    fn unknown_total_shows_count_and_rate_not_a_bar_of_zero() {
        for width in [60u16, 100, 160] {
            let (p, bar, term) = with_bar(width);
            for i in 0..4096 {
                p.file_done(&format!("/f{i}"), 1);
            }
            bar.abandon();
            let line = last_line(&term);
            assert!(
                line.contains("4,096 files") || line.contains("4096 files"),
                "{line:?}"
            );
            assert!(line.contains("/s"), "a rate: {line:?}");
            let r = line.split(' ').find(|w| w.ends_with("/s")).unwrap();
            assert!(!r.contains('.') || r.len() <= 5, "a short rate: {line:?}");
            assert!(
                !line.contains("/0"),
                "no bar against a zero total: {line:?}"
            );
            assert!(
                !line.contains('['),
                "no bar while the total is unknown: {line:?}"
            );
            for l in term.lines.lock().unwrap().iter() {
                assert!(
                    l.chars().count() <= width as usize,
                    "{} > {width}: {l:?}",
                    l.chars().count()
                );
            }
        }
    }

    #[test]
    fn a_known_total_switches_to_a_bar_that_fits_the_width() {
        for width in [60u16, 100, 160] {
            let (p, bar, term) = with_bar(width);
            p.set_total(Some(5000));
            for i in 0..1200 {
                p.file_done(&format!("/f{i}"), 1);
            }
            assert_eq!(p.total(), Some(5000));
            bar.abandon();
            let line = last_line(&term);
            assert!(
                line.contains("1,200/5,000 files") || line.contains("1200/5000 files"),
                "{line:?}"
            );
            assert!(line.contains('[') && line.contains('='), "a bar: {line:?}");
            assert!(
                line.chars().count() <= width as usize,
                "{line:?} wider than {width}"
            );
            // The bar uses the width it has.
            assert!(
                line.chars().count() + 3 >= width as usize,
                "{line:?} narrower than {width}"
            );
        }
    }
}
