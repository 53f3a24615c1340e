//! A fault-injecting [`Remote`] wrapper (tests and chaos runs): delays, failures of each class, cut or
//! hung export bodies, one chosen directory listing or file failing, and a hang at a chosen call so a
//! test can cancel the engine at that await point. It also counts calls per operation and path.
//!
//! Rules are checked in the order they were added; the first that matches a call (operation, and the
//! path when the rule names one) and still has uses left applies to it.
use super::error::RemoteError;
use super::types::{sha256_hex, BulkOutcome, EventsPage, PushFile, TreePage, WriteOutcome};
use super::{BodyStream, ByteStream, Remote};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The operations of [`Remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Tree,
    File,
    Events,
    EventsTip,
    Export,
    Put,
    Delete,
    Bulk,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Tree => "tree",
            Op::File => "file",
            Op::Events => "events",
            Op::EventsTip => "events_tip",
            Op::Export => "export",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Bulk => "bulk",
        }
    }
}

/// What happens to a matching call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Wait, then pass the call through.
    Delay(Duration),
    /// HTTP 429 with this code (`rate_limited`, `queue_full`, `workspace_busy`).
    Throttle {
        code: String,
        retry_after: Option<Duration>,
    },
    /// Any other HTTP status (5xx, 400, 403, 404, 413...).
    Status { status: u16, code: String },
    /// The connection fails before a status arrives.
    Transport,
    /// A 2xx whose body is not usable JSON.
    BadData,
    /// The call never answers.
    Hang,
    /// The body (export or file) ends cleanly after this many bytes (truncated JSON).
    ExportTruncate(usize),
    /// The body (export or file) breaks (connection reset) after this many bytes.
    ExportReset(usize),
    /// The body (export or file) stops arriving after this many bytes, without ending.
    ExportHangAfter(usize),
    /// The file answers with a `contentHash` that does not match its content.
    WrongHash,
    /// A write is applied by the remote, then its answer is lost (a transport error).
    LoseAnswer,
    /// A tree page without `totalFiles` (an older server).
    NoTotal,
}

impl Fault {
    /// An HTTP status with the relayfile error code it usually comes with.
    pub fn status(status: u16) -> Fault {
        let code = match status {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            410 => "gone",
            413 => "payload_too_large",
            503 => "unavailable",
            s if s >= 500 => "internal_error",
            _ => "error",
        };
        Fault::Status {
            status,
            code: code.into(),
        }
    }

    pub fn throttle(code: &str, retry_after: Option<Duration>) -> Fault {
        Fault::Throttle {
            code: code.into(),
            retry_after,
        }
    }
}

/// A fault for calls of one operation (optionally one path), a number of times or for ever.
#[derive(Debug, Clone)]
pub struct Rule {
    pub op: Op,
    pub path: Option<String>,
    pub times: Option<u32>,
    pub fault: Fault,
}

impl Rule {
    pub fn new(op: Op, fault: Fault) -> Rule {
        Rule {
            op,
            path: None,
            times: None,
            fault,
        }
    }

    /// Only calls for this remote path (the directory of a listing, the path of a file).
    pub fn path(mut self, p: &str) -> Rule {
        self.path = Some(p.to_string());
        self
    }

    /// Only the next `n` matching calls.
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }
}

/// One call as the fault layer saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: std::time::Instant,
    pub op: Op,
    pub path: String,
}

pub struct FaultyRemote {
    inner: Arc<dyn Remote>,
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<HashMap<(Op, String), u64>>,
    log: Mutex<Vec<Call>>,
    calls: AtomicU64,
    hang_at: Mutex<Option<u64>>,
    hung: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultyRemote {
    pub fn new(inner: Arc<dyn Remote>) -> FaultyRemote {
        FaultyRemote {
            inner,
            rules: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            hang_at: Mutex::new(None),
            hung: tokio::sync::Notify::new(),
        }
    }

    pub fn add(&self, rule: Rule) {
        lock(&self.rules).push(rule);
    }

    /// Remove every rule and any pending hang: the remote behaves again. A hang signalled with
    /// nobody waiting for it is forgotten too.
    pub fn clear(&self) {
        lock(&self.rules).clear();
        *lock(&self.hang_at) = None;
        self.forget_hangs();
    }

    /// The `n`-th call from now (1-based, any operation) hangs; [`FaultyRemote::hung`] then resolves
    /// (for this hang or a later one: a hang signalled before, with nobody waiting, is forgotten).
    pub fn hang_at_call(&self, n: u64) {
        self.forget_hangs();
        *lock(&self.hang_at) = Some(self.calls.load(Ordering::SeqCst) + n.max(1));
    }

    /// Resolves once a call hung (by a [`Fault::Hang`] rule or [`FaultyRemote::hang_at_call`]),
    /// including one that hung before this was first polled (one hang wakes one waiter, or is kept
    /// for the next) — unless [`FaultyRemote::clear`] or [`FaultyRemote::hang_at_call`] came between.
    pub async fn hung(&self) {
        self.hung.notified().await
    }

    /// Drop the permit a hang left when nobody was waiting (an attempt that hung at a
    /// [`Fault::Hang`] rule and was cut by its own deadline, or a second call hanging in an attempt
    /// already dropped at the first), so that it cannot end a later [`FaultyRemote::hung`] at once.
    fn forget_hangs(&self) {
        use futures_util::FutureExt;
        // Polled once: takes a stored permit, if any; otherwise it stops waiting when dropped.
        let _ = self.hung.notified().now_or_never();
    }

    /// Calls of `op` seen so far (faulted ones included).
    pub fn count(&self, op: Op) -> u64 {
        lock(&self.counts)
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls of `op` for `path` seen so far.
    pub fn count_path(&self, op: Op, path: &str) -> u64 {
        lock(&self.counts)
            .get(&(op, path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every call seen so far, in order, with when it arrived.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.log).clone()
    }

    /// Forget the counts and the call log.
    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
        lock(&self.log).clear();
    }

    /// Every call seen so far.
    pub fn total(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn error(op: Op, f: &Fault) -> RemoteError {
        let correlation_id = "injected-fault".to_string();
        let op = op.name().to_string();
        match f {
            Fault::Throttle { code, retry_after } => RemoteError::Http {
                op,
                status: 429,
                code: code.clone(),
                message: "injected throttle".into(),
                correlation_id,
                retry_after: *retry_after,
            },
            Fault::Status { status, code } => RemoteError::Http {
                op,
                status: *status,
                code: code.clone(),
                message: "injected fault".into(),
                correlation_id,
                retry_after: None,
            },
            Fault::BadData => RemoteError::BadData {
                op,
                detail: "malformed JSON: injected fault".into(),
                correlation_id,
            },
            _ => RemoteError::Transport {
                op,
                detail: "connection refused (injected fault)".into(),
                correlation_id,
                after_status: false,
            },
        }
    }

    /// Count the call and decide its fate: `Ok(Some(fault))` for a body/content fault to apply after the
    /// inner call, `Err` for a failure, `Ok(None)` to pass through. Hangs never return.
    async fn enter(&self, op: Op, path: &str) -> Result<Option<Fault>, RemoteError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.counts)
            .entry((op, path.to_string()))
            .or_default() += 1;
        lock(&self.log).push(Call {
            at: std::time::Instant::now(),
            op,
            path: path.to_string(),
        });
        let hang_now = {
            let mut h = lock(&self.hang_at);
            let due = *h == Some(n);
            if due {
                *h = None;
            }
            due
        };
        let fault = {
            let mut rules = lock(&self.rules);
            rules
                .iter_mut()
                .find(|r| {
                    r.op == op && r.path.as_deref().is_none_or(|p| p == path) && r.times != Some(0)
                })
                .map(|r| {
                    if let Some(t) = r.times.as_mut() {
                        *t -= 1;
                    }
                    r.fault.clone()
                })
        };
        if hang_now || matches!(fault, Some(Fault::Hang)) {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        match fault {
            None => Ok(None),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(
                f @ (Fault::ExportTruncate(_)
                | Fault::ExportReset(_)
                | Fault::ExportHangAfter(_)
                | Fault::WrongHash
                | Fault::LoseAnswer
                | Fault::NoTotal),
            ) => Ok(Some(f)),
            Some(f) => Err(Self::error(op, &f)),
        }
    }
}

/// The first `n` bytes of `chunks`, then `end`: nothing (a clean but early end), an error, or a stall.
fn cut(chunks: ByteStream, n: usize, end: Fault) -> ByteStream {
    let head = chunks
        .scan(n, |left, item| {
            let out = match item {
                Ok(_) if *left == 0 => return futures_util::future::ready(None),
                Ok(b) => {
                    let take = b.len().min(*left);
                    *left -= take;
                    Ok(b.slice(..take))
                }
                Err(e) => Err(e),
            };
            futures_util::future::ready(Some(out))
        })
        .boxed();
    let tail: ByteStream = match end {
        Fault::ExportReset(_) => Box::pin(futures_util::stream::once(async {
            Err(RemoteError::Transport {
                op: "export".into(),
                detail: "body broken while streaming: connection reset (injected fault)".into(),
                correlation_id: "injected-fault".into(),
                after_status: true,
            })
        })),
        Fault::ExportHangAfter(_) => Box::pin(futures_util::stream::pending()),
        _ => Box::pin(futures_util::stream::empty()),
    };
    Box::pin(head.chain(tail))
}

#[async_trait::async_trait]
impl Remote for FaultyRemote {
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError> {
        let f = self.enter(Op::Tree, path).await?;
        let mut page = self.inner.tree(path, depth, cursor).await?;
        if matches!(f, Some(Fault::NoTotal)) {
            page.total_files = None;
        }
        Ok(page)
    }

    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        let f = self.enter(Op::File, path).await?;
        let mut body = self.inner.file(path).await?;
        match f {
            Some(Fault::WrongHash) => {
                // Test files are small: read the body whole, swap the hash, stream it again.
                let mut raw = Vec::new();
                while let Some(chunk) = body.chunks.next().await {
                    raw.extend_from_slice(&chunk?);
                }
                if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&raw) {
                    v["contentHash"] =
                        sha256_hex(format!("not the content of {path}").as_bytes()).into();
                    raw = serde_json::to_vec(&v).expect("JSON value serializes");
                }
                body.chunks = Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(raw))]));
            }
            Some(
                f @ (Fault::ExportTruncate(n) | Fault::ExportReset(n) | Fault::ExportHangAfter(n)),
            ) => {
                body.chunks = cut(body.chunks, n, f);
            }
            _ => {}
        }
        Ok(body)
    }

    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        self.enter(Op::Events, "").await?;
        self.inner.events(cursor, limit).await
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        self.enter(Op::EventsTip, "").await?;
        self.inner.events_tip().await
    }

    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        let f = self.enter(Op::Export, path).await?;
        let mut body = self.inner.export(path).await?;
        if let Some(
            f @ (Fault::ExportTruncate(n) | Fault::ExportReset(n) | Fault::ExportHangAfter(n)),
        ) = f.clone()
        {
            body.chunks = cut(body.chunks, n, f);
        }
        Ok(body)
    }

    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError> {
        let f = self.enter(Op::Put, path).await?;
        let r = self.inner.put_file(path, file).await;
        lost_answer(Op::Put, f, r)
    }

    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError> {
        let f = self.enter(Op::Delete, path).await?;
        let r = self.inner.delete_file(path, if_match).await;
        lost_answer(Op::Delete, f, r)
    }

    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        let f = self.enter(Op::Bulk, "").await?;
        let r = self.inner.bulk(files).await;
        lost_answer(Op::Bulk, f, r)
    }
}

/// With [`Fault::LoseAnswer`], the write `r` went through but its answer is replaced by a transport
/// error after the request was sent.
fn lost_answer<T>(op: Op, f: Option<Fault>, r: Result<T, RemoteError>) -> Result<T, RemoteError> {
    match f {
        Some(Fault::LoseAnswer) => Err(RemoteError::Transport {
            op: op.name().into(),
            detail: "connection reset before the answer (injected fault; the write was applied)"
                .into(),
            correlation_id: "injected-fault".into(),
            after_status: false,
        }),
        _ => r,
    }
}
