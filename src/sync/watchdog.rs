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
/// elapses; on a trip the task is aborted and the error says why.
pub async fn guarded<T: Send + 'static>(
    progress: &Progress,
    idle: Duration,
    cap: Duration,
    fut: impl Future<Output = Result<T, SyncError>> + Send + 'static,
) -> Result<T, SyncError> {
    progress.arm();
    let hard = (!cap.is_zero()).then(|| Instant::now() + cap);
    let mut task = tokio::spawn(fut);
    // Aborts the task when the caller is itself dropped (a signal during an attempt).
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = AbortOnDrop(task.abort_handle());
    loop {
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
                    return Err(SyncError::Stalled(format!(
                        "no progress for {} (bootstrap idle timeout); the in-flight work was cancelled and the last checkpoint kept",
                        humantime::format_duration(idle))));
                }
                if hard.is_some_and(|h| Instant::now() >= h) {
                    return Err(SyncError::Stalled(format!(
                        "hard cap of {} reached (bootstrap timeout); the last checkpoint was kept",
                        humantime::format_duration(cap))));
                }
            }
        }
    }
}
