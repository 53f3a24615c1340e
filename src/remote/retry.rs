//! The one retry policy (exponential backoff with jitter from `backon`) and the shared rate-limit gate,
//! as a [`Remote`] wrapper: [`Retrying`].
//!
//! Every request goes through [`with_retries`]: transport errors, 429 and 5xx are retried (3 times by
//! default); `Retry-After` is honoured, capped; a 429 closes the [`RateGate`] so every worker pauses
//! together instead of stampeding.
//!
//! **Pacing is not failure.** A 429 that says when to come back (`Retry-After`) is waited out without
//! counting against the retries: a server under load (or a herd of clients under one rate limit) may
//! refuse the same request many times in a row and still be serving everyone at the rate it chose.
//! That is bounded: one request is paced for at most [`RetryPolicy::max_pacing`] in total (the run's
//! idle timeout), after which its 429s count like any other failure — and an attempt that makes no
//! progress meanwhile is stopped by the no-progress watchdog first. A 429 without `Retry-After` and
//! 5xx count as they always did; the export is not paced (its 429s decide whether the bootstrap falls
//! through to the tree pull, and it has its own sub-deadline).
use super::error::RemoteError;
use super::types::{BulkOutcome, EventsPage, PushFile, TreePage, WriteOutcome};
use super::{BodyStream, Remote};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt (429s with `Retry-After` within `max_pacing` not counted).
    pub max_retries: usize,
    /// First backoff delay (then doubled, with jitter).
    pub base_delay: Duration,
    /// Cap on any single wait, including a server's `Retry-After`.
    pub max_wait: Duration,
    /// Longest one request waits out 429s with `Retry-After` (in total) without them counting
    /// against `max_retries`; zero: every 429 counts.
    pub max_pacing: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_wait: Duration::from_secs(60),
            max_pacing: Duration::from_secs(90),
        }
    }
}

/// Shared by all workers: closed until an instant after a 429 with `Retry-After`.
#[derive(Debug, Default)]
pub struct RateGate {
    until: Mutex<Option<Instant>>,
}

impl RateGate {
    /// Wait while the gate is closed.
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().unwrap();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    /// Close the gate for `d` (never shortens an existing pause).
    pub fn close_for(&self, d: Duration) {
        let t = Instant::now() + d;
        let mut g = self.until.lock().unwrap();
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }
}

/// Whether 429s with `Retry-After` may pace a request without counting against its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Up to [`RetryPolicy::max_pacing`].
    Allowed,
    /// Every retry counts (the export).
    Counted,
}

/// Run `attempt` with the policy: retry retryable errors, honour and cap `Retry-After`, feed the gate;
/// with [`Pacing::Allowed`], 429s with `Retry-After` are waited out without counting (up to
/// [`RetryPolicy::max_pacing`] in total).
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    gate: &RateGate,
    pacing: Pacing,
    mut attempt: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let cap = policy.max_wait;
    // The counted retries' delays; `None` once they are exhausted.
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(policy.base_delay)
        .with_max_delay(cap)
        .with_max_times(policy.max_retries)
        .with_jitter()
        .build();
    let mut paced = Duration::ZERO;
    loop {
        gate.wait().await;
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        let throttled = e.status() == Some(429);
        let retry_after = e.retry_after().map(|ra| ra.min(cap));
        if let (true, Some(ra)) = (throttled, retry_after) {
            gate.close_for(ra);
        }
        // A server's Retry-After is honoured (capped) plus up to a quarter more at random, so
        // clients told the same instant do not all come back at it together.
        let honoured =
            retry_after.map(|ra| (ra + ra.mul_f64(rand::random::<f64>() / 4.0)).min(cap.max(ra)));
        let wait = match honoured {
            Some(w) if throttled && pacing == Pacing::Allowed && paced < policy.max_pacing => {
                paced += w;
                tracing::debug!(error = %e, wait_ms = w.as_millis() as u64, paced_ms = paced.as_millis() as u64,
                    "throttled: waiting out Retry-After (not counted as a retry)");
                w
            }
            _ => match backoff.next() {
                None => return Err(e),
                Some(d) => {
                    let w = honoured.unwrap_or(d);
                    // Info, not a warning: the caller reports the outcome (an outage is logged at
                    // its own rate).
                    tracing::info!(error = %e, wait_ms = w.as_millis() as u64, "retrying");
                    w
                }
            },
        };
        tokio::time::sleep(wait).await;
    }
}

/// Any [`Remote`] with the retry policy and one shared rate gate around every call.
pub struct Retrying<R> {
    inner: R,
    policy: RetryPolicy,
    gate: RateGate,
}

impl<R: Remote> Retrying<R> {
    pub fn new(inner: R, policy: RetryPolicy) -> Retrying<R> {
        Retrying {
            inner,
            policy,
            gate: RateGate::default(),
        }
    }
}

#[async_trait::async_trait]
impl<R: Remote> Remote for Retrying<R> {
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.tree(path, depth, cursor)
        })
        .await
    }

    /// Retried until a 2xx status arrives; a body that breaks later is retried by the engine.
    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.file(path)
        })
        .await
    }

    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.events(cursor, limit)
        })
        .await
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.events_tip()
        })
        .await
    }

    /// Retried until a 2xx status arrives; a body that breaks later is the export's business. Not
    /// paced: every 429 counts (after the retries, `workspace_busy` falls through to the tree pull and
    /// the other codes fail the attempt, as documented).
    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Counted, || {
            self.inner.export(path)
        })
        .await
    }

    /// A write is retried like a read: one whose answer was lost and that is sent again meets the
    /// remote at its own new revision (409), which the push side recognises by the content hash.
    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.put_file(path, file)
        })
        .await
    }

    /// A 429 `delete_storm_rejected` is not a rate limit on reads: it is handed back at once (no
    /// retry, the shared gate stays open) for the push side to hold deletes until its `Retry-After`.
    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || async {
            match self.inner.delete_file(path, if_match).await {
                Err(e) if e.code() == Some(DELETE_STORM) => Ok(Err(e)),
                other => other.map(Ok),
            }
        })
        .await?
    }

    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        with_retries(&self.policy, &self.gate, Pacing::Allowed, || {
            self.inner.bulk(files)
        })
        .await
    }
}

/// The 429 code of a server refusing a burst of deletes.
pub const DELETE_STORM: &str = "delete_storm_rejected";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn throttled(retry_after: Option<Duration>) -> RemoteError {
        RemoteError::Http {
            op: "file".into(),
            status: 429,
            code: "rate_limited".into(),
            message: String::new(),
            correlation_id: "c".into(),
            retry_after,
        }
    }

    /// Calls made until `with_retries` gives up on a server that always answers `e`.
    async fn calls_until_given_up(max_pacing: Duration, pacing: Pacing, e: RemoteError) -> usize {
        let policy = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(1),
            max_wait: Duration::from_millis(50),
            max_pacing,
        };
        let n = AtomicUsize::new(0);
        let r: Result<(), _> = with_retries(&policy, &RateGate::default(), pacing, || {
            n.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            async move { Err(e) }
        })
        .await;
        assert_eq!(r.unwrap_err().status(), Some(429));
        n.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn retry_after_paces_within_the_budget_then_counts() {
        let ra = Some(Duration::from_millis(5));
        // No budget, the export, or no Retry-After: the first try and 3 retries.
        assert_eq!(
            calls_until_given_up(Duration::ZERO, Pacing::Allowed, throttled(ra)).await,
            4
        );
        let long = Duration::from_secs(60);
        assert_eq!(
            calls_until_given_up(long, Pacing::Counted, throttled(ra)).await,
            4
        );
        assert_eq!(
            calls_until_given_up(long, Pacing::Allowed, throttled(None)).await,
            4
        );
        // 100 ms of pacing at 5-6.25 ms a wait: 16 to 21 paced waits, then the 3 counted retries.
        let n =
            calls_until_given_up(Duration::from_millis(100), Pacing::Allowed, throttled(ra)).await;
        assert!((16 + 4..=21 + 4).contains(&n), "{n} calls");
    }
}
