//! One attempt at bringing the mirror up to date, under the watchdog, with the stall guard, and the
//! record of every attempt's or sync pass's outcome in the state DB (what `mountd status` and the metrics
//! report).
//!
//! **The stall guard** stops a bootstrap that gets answers but makes no progress: after `stall_limit`
//! consecutive *counted* attempts without checkpoint progress the run stops with a diagnosis instead of
//! looping forever. What counts:
//!
//! * an attempt that made progress (a checkpoint, or body bytes arriving), or succeeded, resets the
//!   count;
//! * an attempt that failed because the remote is **unavailable** — a transport error before any
//!   response status, 429, or 5xx, after the per-request retries ([`is_unavailable`]; a 429 with
//!   `Retry-After` is paced, not counted, for up to the idle timeout per request) — leaves the count
//!   as it is: an outage is waited out (the service retries forever with backoff), not diagnosed as a
//!   stall;
//! * a watchdog stall (no progress within the idle timeout, or the hard cap) is followed by one probe
//!   request (the events tip): if the remote is unavailable right then (as above, or no answer at all),
//!   the stall was an outage waited out by the per-request retries (a long `Retry-After`, 429s paced
//!   for the whole idle timeout, a run of 503s, a server that accepts connections and never answers)
//!   and does not count; the stall's message then says what the remote answered;
//! * every other failure without progress counts: a stall while the server answers the probe (it
//!   answers, but the bootstrap gets nothing usable in time: a listing that hangs, a body that never
//!   ends), a body that broke after its status, bad data, a permanent HTTP error, a local or state
//!   error.
use crate::store::db::{MetaKey, State, StateError};
use crate::sync::engine::{now_rfc3339, Engine, SyncError};
use std::time::{Duration, Instant};

/// The bounds of an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No-progress watchdog.
    pub idle: Duration,
    /// Hard cap on the whole attempt (zero: none).
    pub cap: Duration,
    /// Consecutive counted attempts without checkpoint progress before giving up.
    pub stall_limit: u32,
}

/// How the attempt brought the mirror up to date ("export", "tree" or "catch-up").
pub struct Attempt {
    pub path: &'static str,
}

/// True when `e` says the remote is unavailable (transport error before a status, 429, 5xx) rather
/// than answering wrongly: retried forever by the service, never counted by the stall guard.
pub fn is_unavailable(e: &SyncError) -> bool {
    matches!(e, SyncError::Remote(r) if r.is_retryable())
}

/// After a watchdog stall: one probe request (the events tip, with the usual per-request retries).
/// `Some(why)` when the remote is unavailable (transport error — including per-read timeouts of a
/// server that accepts connections and never answers —, 429, 5xx, or no answer within four idle
/// timeouts); `None` when it answered (2xx, or a permanent error).
async fn unavailable_now(engine: &Engine, idle: Duration) -> Option<String> {
    let probe = tokio::time::timeout(idle.saturating_mul(4), engine.remote().events_tip()).await;
    let unavailable = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.is_retryable() => Some(e.to_string()),
        Ok(Err(_)) => None,
        Err(_) => Some(format!(
            "no answer to a probe within {}",
            humantime::format_duration(idle.saturating_mul(4))
        )),
    };
    if unavailable.is_some() {
        tracing::debug!("the stall was an outage: not counted by the stall guard");
    }
    unavailable
}

/// What an outcome does to the stall guard's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    Reset,
    Count,
    Keep,
}

/// The mirror's health after an outcome was recorded.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Consecutive counted attempts without progress.
    pub no_progress_runs: u64,
    /// Consecutive failed attempts or passes (0 after a success).
    pub failed_attempts: u64,
    /// When the current run of failures began (RFC 3339), `None` while healthy.
    pub error_since: Option<String>,
    /// When an attempt or pass last succeeded (RFC 3339; the last sync for an older mirror).
    pub last_success_at: Option<String>,
}

/// One attempt (see [`Engine::converge`]); records the outcome and applies the stall guard.
pub async fn attempt(engine: &Engine, limits: Limits) -> Result<Attempt, SyncError> {
    let before = (
        engine.progress().checkpoints(),
        engine.progress().received(),
    );
    let started = Instant::now();
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
    let mut result = result;
    let stall = match &mut result {
        Ok(_) => Stall::Reset,
        Err(_) if progressed => Stall::Reset,
        Err(e) if is_unavailable(e) => Stall::Keep,
        // The watchdog cannot tell an outage waited out by the per-request retries (a long
        // Retry-After, 429s paced for the whole idle timeout, a run of 503s) from a server that
        // accepts requests and delivers nothing: ask, and say what the remote answered.
        Err(SyncError::Stalled(msg)) => match unavailable_now(engine, limits.idle).await {
            Some(why) => {
                msg.push_str(&format!("; the remote is unavailable: {why}"));
                Stall::Keep
            }
            None => Stall::Count,
        },
        Err(_) => Stall::Count,
    };
    let err = result.as_ref().err().map(|e| e.to_string());
    let health = record_outcome(engine, started.elapsed(), err, stall).await;
    let runs = match (health, &result) {
        (Ok(h), _) => h.no_progress_runs,
        // The attempt's own error says more than a failure to record it.
        (Err(_), Err(_)) => 0,
        (Err(db), Ok(_)) => return Err(db),
    };
    match result {
        Err(err) if stall == Stall::Count && runs >= limits.stall_limit as u64 => Err(SyncError::GaveUp(format!(
            "no checkpoint progress in {runs} consecutive attempts; giving up instead of looping. Last error: {err}. \
             Check the server's health and `mountd status`; the mirror resumes from its checkpoint once the cause is fixed"
        ))),
        Err(err) => Err(err),
        Ok(path) => Ok(Attempt { path }),
    }
}

/// Record the outcome of one sync pass of the service (after the bootstrap): errors and recoveries
/// for `mountd status` and the metrics. A pass never feeds the stall guard (the mount keeps serving and
/// the service keeps retrying); a successful one resets it.
pub async fn record_pass(
    engine: &Engine,
    elapsed: Duration,
    result: Result<(), &SyncError>,
) -> Result<Health, SyncError> {
    let (err, stall) = match result {
        Ok(()) => (None, Stall::Reset),
        Err(e) => (Some(e.to_string()), Stall::Keep),
    };
    record_outcome(engine, elapsed, err, stall).await
}

/// Refresh the mirror gauges of the metrics from the state DB (at start, before any attempt); returns
/// the health recorded there.
pub async fn refresh_metrics(engine: &Engine) -> Result<Health, SyncError> {
    engine
        .db()
        .run(|st: &mut State| -> Result<Health, SyncError> { Ok(publish(st)?) })
        .await
}

/// Update the metrics gauges from the state DB; returns the health recorded there.
fn publish(st: &State) -> Result<Health, StateError> {
    let m = crate::metrics::Metrics::global();
    m.set_mirror(
        st.tracked_files()?,
        st.tracked_bytes()?,
        st.quarantined()?.len() as u64,
        st.is_complete()?,
    );
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let health = Health {
        no_progress_runs: st.no_progress_runs()?,
        failed_attempts: nonempty(st.meta(MetaKey::FailedAttempts)?)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        error_since: nonempty(st.meta(MetaKey::ErrorSince)?),
        // A mirror synced before successes were recorded: its last sync.
        last_success_at: match nonempty(st.meta(MetaKey::LastSuccessAt)?) {
            Some(t) => Some(t),
            None => nonempty(st.meta(MetaKey::LastSyncAt)?),
        },
    };
    m.set_consecutive_failures(health.failed_attempts);
    if let Some(t) = health
        .last_success_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        m.set_last_success(t.as_secs());
    }
    Ok(health)
}

/// One transaction: the stall counter, the last error and since when, the last success; then the
/// metrics.
async fn record_outcome(
    engine: &Engine,
    elapsed: Duration,
    err: Option<String>,
    stall: Stall,
) -> Result<Health, SyncError> {
    crate::metrics::Metrics::global().observe_pass(elapsed, err.is_none());
    engine.progress().set_error(err.clone());
    engine
        .db()
        .run(move |st: &mut State| -> Result<Health, SyncError> {
            let runs = match stall {
                Stall::Reset => 0,
                Stall::Count => st.no_progress_runs()? + 1,
                Stall::Keep => st.no_progress_runs()?,
            };
            let failed = st
                .meta(MetaKey::FailedAttempts)?
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let since = st.meta(MetaKey::ErrorSince)?.filter(|s| !s.is_empty());
            let now = now_rfc3339();
            let mut b = st.batch()?;
            b.set_meta(MetaKey::NoProgressRuns, &runs.to_string())?;
            match &err {
                None => {
                    b.set_meta(MetaKey::LastError, "")?;
                    b.set_meta(MetaKey::LastErrorAt, "")?;
                    b.set_meta(MetaKey::ErrorSince, "")?;
                    b.set_meta(MetaKey::FailedAttempts, "0")?;
                    b.set_meta(MetaKey::LastSuccessAt, &now)?;
                }
                Some(e) => {
                    b.set_meta(MetaKey::LastError, e)?;
                    b.set_meta(MetaKey::LastErrorAt, &now)?;
                    b.set_meta(MetaKey::ErrorSince, since.as_deref().unwrap_or(&now))?;
                    b.set_meta(MetaKey::FailedAttempts, &(failed + 1).to_string())?;
                }
            }
            b.commit()?;
            Ok(publish(st)?)
        })
        .await
}
