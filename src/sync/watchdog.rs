//! The no-progress watchdog and the optional hard cap around a bootstrap or sync attempt.
//!
//! The attempt runs as its own task, so the watchdog keeps its own clock whatever the attempt does:
//! every blocking operation (SQLite, `syncfs`, file writes) runs off the async workers, and on a trip
//! the task is aborted at its next await. Nothing is half-committed: a transaction on the database
//! thread commits whole or not at all, and everything committed stays.
use crate::sync::engine::SyncError;
use crate::sync::progress::Progress;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Run `fut` as a task until it finishes, no progress unit happens for `idle`, or `cap` (if non-zero)
/// elapses; on a trip the task is aborted and the error says why. A trip returns only once the task
/// is gone (dropped at its next await, the fetches it ran side by side with it), so a caller that
/// tries again (the service after a stall) never runs beside the attempt it gave up on. What the
/// task had already handed over is not taken back: a blocking job that started runs to its end, and
/// so does a job sent to the database thread (one more job sent there runs after it).
pub async fn guarded<T: Send + 'static>(
    progress: &Progress,
    idle: Duration,
    cap: Duration,
    fut: impl Future<Output = Result<T, SyncError>> + Send + 'static,
) -> Result<T, SyncError> {
    progress.arm();
    let hard = (!cap.is_zero()).then(|| Instant::now() + cap);
    let mut task = tokio::spawn(fut);
    // Aborts the task when the caller is itself dropped (a signal during an attempt); nobody is left
    // to wait for it then.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(task.abort_handle());
    let tripped = loop {
        let until_idle = idle
            .saturating_sub(progress.idle())
            .max(Duration::from_millis(5));
        let mut wake = Instant::now() + until_idle;
        if let Some(h) = hard {
            wake = wake.min(h);
        }
        tokio::select! {
            r = &mut task => {
                return r.map_err(|e| SyncError::Internal(format!("sync task ended abnormally: {e}")))?;
            }
            _ = tokio::time::sleep_until(wake) => {
                if progress.idle() >= idle {
                    break SyncError::Stalled(format!(
                        "no progress for {} (bootstrap idle timeout); the in-flight work was cancelled and the last checkpoint kept",
                        humantime::format_duration(idle)));
                }
                if hard.is_some_and(|h| Instant::now() >= h) {
                    break SyncError::Stalled(format!(
                        "hard cap of {} reached (bootstrap timeout); the last checkpoint was kept",
                        humantime::format_duration(cap)));
                }
            }
        }
    };
    // `abort` only asks: the task goes at its next await (a worker may be polling it right now).
    // Wait for that — it ends either way, cancelled or, if it got there first, finished.
    task.abort();
    let _ = task.await;
    Err(tripped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Set when the attempt's future is dropped.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    // One thread: an aborted task is only dropped when the scheduler gets to it, which is after
    // `guarded` returned unless `guarded` waits for it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_trip_returns_only_once_the_attempt_is_gone() {
        let progress = Progress::new(None, "daemon", None);
        let gone = Arc::new(AtomicBool::new(false));
        let held = Dropped(gone.clone());
        let r = guarded(
            &progress,
            Duration::from_millis(20),
            Duration::ZERO,
            async move {
                let _held = held;
                std::future::pending::<Result<(), SyncError>>().await
            },
        )
        .await;
        assert!(matches!(r, Err(SyncError::Stalled(_))), "{r:?}");
        assert!(gone.load(Ordering::SeqCst), "the stalled attempt still ran");
    }
}
