//! The no-progress watchdog and the optional hard cap around a bootstrap or sync attempt.
use crate::sync::engine::SyncError;
use crate::sync::progress::Progress;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Run `fut` until it finishes, no progress unit happens for `idle`, or `cap` (if non-zero) elapses.
/// On a trip the future is dropped between two awaits, so no SQLite transaction is half-done:
/// everything committed stays, the in-flight page is abandoned and resumed next time.
pub async fn guarded<T>(
    progress: &Progress,
    idle: Duration,
    cap: Duration,
    fut: impl Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    progress.arm();
    let hard = (!cap.is_zero()).then(|| Instant::now() + cap);
    tokio::pin!(fut);
    loop {
        let until_idle = idle
            .saturating_sub(progress.idle())
            .max(Duration::from_millis(5));
        let mut wake = Instant::now() + until_idle;
        if let Some(h) = hard {
            wake = wake.min(h);
        }
        tokio::select! {
            r = &mut fut => return r,
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
