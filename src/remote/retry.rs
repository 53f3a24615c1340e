//! The one retry policy (exponential backoff with jitter via `backon`) and the shared rate-limit gate,
//! as a [`Remote`] wrapper: [`Retrying`].
//!
//! Every request goes through [`with_retries`]: transport errors, 429 and 5xx are retried (3 times by
//! default); `Retry-After` is honoured, capped; a 429 closes the [`RateGate`] so every worker pauses
//! together instead of stampeding.
use super::error::RemoteError;
use super::types::{EventsPage, TreePage};
use super::{BodyStream, Remote};
use backon::{ExponentialBuilder, Retryable};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff delay (then doubled, with jitter).
    pub base_delay: Duration,
    /// Cap on any single wait, including a server's `Retry-After`.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_wait: Duration::from_secs(60),
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

/// Run `attempt` with the policy: retry retryable errors, honour and cap `Retry-After`, feed the gate.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    gate: &RateGate,
    attempt: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let mut attempt = attempt;
    let cap = policy.max_wait;
    let run = || {
        let fut = {
            let fut = attempt();
            async move {
                gate.wait().await;
                let r = fut.await;
                if let Err(e) = &r {
                    if e.status() == Some(429) {
                        if let Some(ra) = e.retry_after() {
                            gate.close_for(ra.min(cap));
                        }
                    }
                }
                r
            }
        };
        fut
    };
    run.retry(
        ExponentialBuilder::default()
            .with_min_delay(policy.base_delay)
            .with_max_delay(cap)
            .with_max_times(policy.max_retries)
            .with_jitter(),
    )
    .when(|e: &RemoteError| e.is_retryable())
    // `None` means retries are exhausted: keep it `None` (mapping it to a delay would retry forever).
    // A server's Retry-After is honoured (capped) plus up to a quarter more at random, so clients
    // told the same instant do not all come back at it together.
    .adjust(move |e: &RemoteError, d: Option<Duration>| {
        d.map(|d| {
            e.retry_after().map_or(d, |ra| {
                let ra = ra.min(cap);
                (ra + ra.mul_f64(rand::random::<f64>() / 4.0)).min(cap.max(ra))
            })
        })
    })
    .notify(|e: &RemoteError, d: Duration| {
        // Info, not a warning: the caller reports the outcome (an outage is logged at its own rate).
        tracing::info!(error = %e, wait_ms = d.as_millis() as u64, "retrying");
    })
    .await
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
        with_retries(&self.policy, &self.gate, || {
            self.inner.tree(path, depth, cursor)
        })
        .await
    }

    /// Retried until a 2xx status arrives; a body that breaks later is retried by the engine.
    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        with_retries(&self.policy, &self.gate, || self.inner.file(path)).await
    }

    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        with_retries(&self.policy, &self.gate, || {
            self.inner.events(cursor, limit)
        })
        .await
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        with_retries(&self.policy, &self.gate, || self.inner.events_tip()).await
    }

    /// Retried until a 2xx status arrives; a body that breaks later is the export's business.
    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        with_retries(&self.policy, &self.gate, || self.inner.export(path)).await
    }
}
