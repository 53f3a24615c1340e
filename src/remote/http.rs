//! The relayfile HTTP API as a [`Remote`]: bearer auth, a fresh correlation id per request, error
//! bodies parsed, every failure classified. One call is one request: retries are [`super::retry`]'s job.
//!
//! Timeouts: a connect timeout and a per-read idle timeout only. There is never a whole-request
//! deadline, so a long export body that keeps arriving is never killed; the export's own sub-deadline
//! lives in the bootstrap engine.

use super::error::{parse_retry_after, RemoteError};
use super::types::{ErrorBody, EventsPage, TreePage};
use super::{BodyStream, Remote};
use futures_util::TryStreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How to reach one workspace.
#[derive(Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub workspace: String,
    pub token: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("workspace", &self.workspace)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Largest body buffer allocated up front from a server's Content-Length (beyond it, the buffer grows
/// to the announced size only once that much data has really arrived).
const MAX_PREALLOC: u64 = 64 << 20;

pub struct HttpRemote {
    http: reqwest::Client,
    prefix: String,
    auth: reqwest::header::HeaderValue,
    run_id: String,
    seq: AtomicU64,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpRemote {
    pub fn new(cfg: &ClientConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .retry(reqwest::retry::never())
            .user_agent(concat!("mountd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", cfg.token))
            .map_err(|_| {
                "the token contains characters that cannot be sent in a header".to_string()
            })?;
        auth.set_sensitive(true);
        let base = cfg.base_url.trim_end_matches('/');
        Ok(HttpRemote {
            http,
            prefix: format!("{base}/v1/workspaces/{}", percent_encode(&cfg.workspace)),
            auth,
            run_id: format!("{:08x}", rand::random::<u32>()),
            seq: AtomicU64::new(0),
        })
    }

    fn correlation_id(&self) -> String {
        format!(
            "mountd_{}_{}",
            self.run_id,
            self.seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Send one GET and return the response once a 2xx status arrived; map any other status to an error.
    async fn get_once(
        &self,
        op: &str,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<(reqwest::Response, String), RemoteError> {
        let cid = self.correlation_id();
        let mut url = format!("{}{}", self.prefix, route);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        tracing::debug!(op, correlation_id = %cid, "request");
        let resp = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header("X-Correlation-Id", &cid)
            .send()
            .await
            .map_err(|e| RemoteError::Transport {
                op: op.to_string(),
                detail: describe(&e),
                correlation_id: cid.clone(),
                after_status: false,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, cid));
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = resp.bytes().await.unwrap_or_default();
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&body);
            let snippet: String = text.chars().filter(|c| !c.is_control()).take(120).collect();
            ErrorBody {
                code: "non_json_error".into(),
                message: format!("non-JSON error body: {snippet:?}"),
            }
        });
        let err = RemoteError::Http {
            op: op.to_string(),
            status: status.as_u16(),
            code: parsed.code,
            message: parsed.message,
            correlation_id: cid,
            retry_after,
        };
        tracing::debug!(error = %err, "request failed");
        Err(err)
    }

    /// GET a JSON document's raw body (a body cut short is a retryable transport error).
    async fn get_body(
        &self,
        op: &str,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<(Vec<u8>, String), RemoteError> {
        {
            let (mut resp, cid) = self.get_once(op, route, query).await?;
            let announced = resp.content_length();
            let mut body = Vec::with_capacity(announced.unwrap_or(0).min(MAX_PREALLOC) as usize);
            loop {
                let chunk = resp.chunk().await.map_err(|e| RemoteError::Transport {
                    op: op.to_string(),
                    detail: describe(&e),
                    correlation_id: cid.clone(),
                    after_status: false,
                })?;
                let Some(chunk) = chunk else { break };
                if let (Some(len), true) = (announced, body.capacity() - body.len() < chunk.len()) {
                    // The body really is large: grow once to the announced size, not by doubling.
                    body.reserve_exact((len as usize).saturating_sub(body.len()).max(chunk.len()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body, cid))
        }
    }

    /// GET a body that is consumed as it streams in.
    async fn stream(
        &self,
        op: &'static str,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<BodyStream, RemoteError> {
        let (resp, cid) = self.get_once(op, route, query).await?;
        let c = cid.clone();
        let chunks = resp
            .bytes_stream()
            .map_err(move |e| RemoteError::Transport {
                op: op.into(),
                detail: format!("body broken while streaming: {}", describe(&e)),
                correlation_id: c.clone(),
                after_status: true,
            });
        Ok(BodyStream {
            correlation_id: cid,
            chunks: Box::pin(chunks),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<T, RemoteError> {
        let (body, cid) = self.get_body(op, route, query).await?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::BadData {
            op: op.to_string(),
            detail: format!("malformed JSON: {e}"),
            correlation_id: cid,
        })
    }
}

#[async_trait::async_trait]
impl Remote for HttpRemote {
    async fn tree(
        &self,
        path: &str,
        depth: u32,
        cursor: Option<&str>,
    ) -> Result<TreePage, RemoteError> {
        let depth = depth.to_string();
        let mut q = vec![("path", path), ("depth", depth.as_str())];
        if let Some(c) = cursor {
            q.push(("cursor", c));
        }
        self.get_json("tree", "/fs/tree", &q).await
    }

    async fn file(&self, path: &str) -> Result<BodyStream, RemoteError> {
        self.stream("file", "/fs/file", &[("path", path)]).await
    }

    async fn events(&self, cursor: Option<&str>, limit: u32) -> Result<EventsPage, RemoteError> {
        let limit = limit.to_string();
        let mut q = vec![("direction", "asc"), ("limit", limit.as_str())];
        if let Some(c) = cursor {
            q.push(("cursor", c));
        }
        self.get_json("events", "/fs/events", &q).await
    }

    async fn events_tip(&self) -> Result<Option<String>, RemoteError> {
        let page: EventsPage = self
            .get_json(
                "events_tip",
                "/fs/events",
                &[("direction", "desc"), ("limit", "1")],
            )
            .await?;
        Ok(page.events.into_iter().next().map(|e| e.event_id))
    }

    async fn export(&self, path: &str) -> Result<BodyStream, RemoteError> {
        self.stream(
            "export",
            "/fs/export",
            &[("format", "json"), ("path", path)],
        )
        .await
    }
}

/// A reqwest error with its causes, without the URL's query (which never holds secrets anyway).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out (no data within the read timeout)".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "response body broken".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
