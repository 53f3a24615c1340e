//! One attempt at bringing the mirror up to date, under the watchdog, with the stall guard: after
//! `stall_limit` consecutive attempts without checkpoint progress the run stops with a diagnosis
//! instead of looping forever.
use crate::store::db::{MetaKey, State};
use crate::sync::engine::{Engine, SyncError};
use std::time::Duration;

/// The bounds of an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No-progress watchdog.
    pub idle: Duration,
    /// Hard cap on the whole attempt (zero: none).
    pub cap: Duration,
    /// Consecutive attempts without checkpoint progress before giving up.
    pub stall_limit: u32,
}

/// How the attempt brought the mirror up to date ("export", "tree" or "catch-up").
pub struct Attempt {
    pub path: &'static str,
}

/// One attempt (see [`Engine::converge`]); records the stall counter and the last error.
pub async fn attempt(engine: &Engine, limits: Limits) -> Result<Attempt, SyncError> {
    let before = (
        engine.progress().checkpoints(),
        engine.progress().received(),
    );
    let work = {
        let e = engine.clone();
        async move { e.converge().await }
    };
    let result =
        crate::sync::watchdog::guarded(engine.progress(), limits.idle, limits.cap, work).await;
    // Checkpoints or arriving bytes: a large file that keeps streaming in is progress even when an
    // attempt is cut before it completes.
    let progressed =
        engine.progress().checkpoints() > before.0 || engine.progress().received() > before.1;
    let err_text = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let clean = progressed || result.is_ok();
    let runs = engine
        .db()
        .run(move |st: &mut State| -> Result<u64, SyncError> {
            let runs = if clean { 0 } else { st.no_progress_runs()? + 1 };
            let mut b = st.batch()?;
            b.set_meta(MetaKey::NoProgressRuns, &runs.to_string())?;
            b.set_meta(MetaKey::LastError, &err_text)?;
            b.commit()?;
            Ok(runs)
        })
        .await;
    let runs = match (runs, &result) {
        (Ok(n), _) => n,
        // The attempt's own error says more than a failure to record it.
        (Err(_), Err(_)) => 0,
        (Err(db), Ok(_)) => return Err(db),
    };
    match result {
        Err(err) if runs >= limits.stall_limit as u64 => Err(SyncError::GaveUp(format!(
            "no checkpoint progress in {runs} consecutive attempts; giving up instead of looping. Last error: {err}. \
             Check the server's health and `mountd status`; the mirror resumes from its checkpoint once the cause is fixed"
        ))),
        Err(err) => Err(err),
        Ok(path) => Ok(Attempt { path }),
    }
}
