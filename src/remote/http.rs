//! The relayfile HTTP API as a [`Remote`]: bearer auth, a fresh correlation id per request, error
//! bodies parsed, every failure classified. One call is one request: retries are [`super::retry`]'s job.
//!
//! Timeouts: a connect timeout and a per-read idle timeout only. There is never a whole-request
//! deadline, so a long export body that keeps arriving is never killed; the export's own sub-deadline
//! lives in the bootstrap engine.

use super::error::{parse_retry_after, RemoteError};
use super::types::{
    base64_len, BulkOutcome, ErrorBody, EventsPage, FileSource, PushFile, TreePage, WriteAck,
    WriteOutcome,
};
use super::{BodyStream, Remote};
use futures_util::TryStreamExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Where the bearer token comes from. A file-backed source is re-read once after a 401, so a token
/// rotated on disk is picked up without a restart.
#[derive(Clone)]
pub enum TokenSource {
    /// A token given directly (`--token` / `RELAYFILE_TOKEN`).
    Static(String),
    /// A file holding only the token (surrounding whitespace trimmed): `--token-file`.
    File(PathBuf),
    /// A JSON credentials file: the first non-empty of `token`, `accessToken`, `relayfileToken`
    /// (`--creds-file`, relayfile-mount's format).
    Creds(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TokenSource {
    /// Where the token comes from, for logs (never the token itself).
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Static(_) => "--token/RELAYFILE_TOKEN (value redacted)".into(),
            TokenSource::File(p) => format!("file {}", p.display()),
            TokenSource::Creds(p) => format!("credentials file {}", p.display()),
        }
    }

    /// True when [`TokenSource::load`] can return something new (a file).
    pub fn reloadable(&self) -> bool {
        !matches!(self, TokenSource::Static(_))
    }

    /// The current token. Errors name the file and what is wrong, never the content.
    pub fn load(&self) -> Result<String, String> {
        let tok = match self {
            TokenSource::Static(t) => t.trim().to_string(),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read token file {}: {e}", p.display()))?
                .trim()
                .to_string(),
            TokenSource::Creds(p) => {
                let raw = std::fs::read(p)
                    .map_err(|e| format!("cannot read credentials file {}: {e}", p.display()))?;
                let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| {
                    format!(
                        "credentials file {} is not JSON (line {}, column {})",
                        p.display(),
                        e.line(),
                        e.column()
                    )
                })?;
                ["token", "accessToken", "relayfileToken"]
                    .iter()
                    .find_map(|k| v.get(k).and_then(|t| t.as_str()))
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "credentials file {} has no non-empty \"token\", \"accessToken\" or \"relayfileToken\" string",
                            p.display()
                        )
                    })?
            }
        };
        if tok.is_empty() {
            return Err(match self {
                TokenSource::Static(_) => "the token is empty".into(),
                other => format!("the token in {} is empty", other.describe()),
            });
        }
        Ok(tok)
    }
}

fn bearer(token: &str) -> Result<reqwest::header::HeaderValue, String> {
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token contains characters that cannot be sent in a header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// How to reach one workspace.
#[derive(Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub workspace: String,
    pub token: TokenSource,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("workspace", &self.workspace)
            .field("token", &self.token)
            .finish()
    }
}

/// Largest body buffer allocated up front from a server's Content-Length (beyond it, the buffer grows
/// to the announced size only once that much data has really arrived).
const MAX_PREALLOC: u64 = 64 << 20;

pub struct HttpRemote {
    http: reqwest::Client,
    prefix: String,
    /// The current `Authorization` value; replaced when a 401 makes us re-read a token file.
    auth: RwLock<reqwest::header::HeaderValue>,
    token: TokenSource,
    run_id: String,
    seq: AtomicU64,
}

pub(crate) fn percent_encode(s: &str) -> String {
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
        let auth = bearer(&cfg.token.load()?)?;
        let base = cfg.base_url.trim_end_matches('/');
        Ok(HttpRemote {
            http,
            prefix: format!("{base}/v1/workspaces/{}", percent_encode(&cfg.workspace)),
            auth: RwLock::new(auth),
            token: cfg.token.clone(),
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

    fn current_auth(&self) -> reqwest::header::HeaderValue {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a 401: re-read a file-backed token. True when it changed (or another request already
    /// picked up a newer one than `used`), so the request is worth sending once more.
    fn reload_token(&self, used: &reqwest::header::HeaderValue) -> bool {
        if !self.token.reloadable() {
            return false;
        }
        let fresh = match self.token.load().and_then(|t| bearer(&t)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "401 unauthorized: cannot re-read the token");
                return false;
            }
        };
        let mut cur = self.auth.write().unwrap_or_else(|e| e.into_inner());
        if cur.as_bytes() != used.as_bytes() {
            // Another request reloaded it meanwhile.
            return true;
        }
        if fresh.as_bytes() == used.as_bytes() {
            return false;
        }
        *cur = fresh;
        tracing::info!(source = %self.token.describe(), "401 unauthorized: re-read the token (it changed); retrying the request once with the new token");
        true
    }

    /// Send one request and return its response, whatever the status. A 401 with a file-backed token
    /// re-reads the file once and, if the token changed, sends the request once more.
    async fn send_once(
        &self,
        req: Request<'_>,
    ) -> Result<(reqwest::Response, String), RemoteError> {
        let mut url = format!("{}{}", self.prefix, req.route);
        for (i, (k, v)) in req.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        let mut reloaded = false;
        loop {
            let cid = self.correlation_id();
            let auth = self.current_auth();
            tracing::debug!(op = req.op, correlation_id = %cid, "request");
            let mut r = self
                .http
                .request(req.method.clone(), &url)
                .header(reqwest::header::AUTHORIZATION, auth.clone())
                .header("X-Correlation-Id", &cid);
            if let Some(m) = req.if_match {
                r = r.header(reqwest::header::IF_MATCH, m);
            }
            if let Some(b) = &req.body {
                r = r
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::CONTENT_LENGTH, b.len())
                    .body(b.to_body());
            }
            let resp = r.send().await.map_err(|e| RemoteError::Transport {
                op: req.op.to_string(),
                detail: describe(&e),
                correlation_id: cid.clone(),
                after_status: false,
            })?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED
                && !reloaded
                && self.reload_token(&auth)
            {
                reloaded = true;
                continue;
            }
            return Ok((resp, cid));
        }
    }

    /// A non-2xx answer as an error (its JSON error body parsed; a non-JSON body still said clearly).
    async fn into_error(op: &str, resp: reqwest::Response, cid: String) -> RemoteError {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = resp.bytes().await.unwrap_or_default();
        let parsed = parse_error_body(&body);
        let err = RemoteError::Http {
            op: op.to_string(),
            status: status.as_u16(),
            code: parsed.code,
            message: parsed.message,
            correlation_id: cid,
            retry_after,
        };
        tracing::debug!(error = %err, "request failed");
        err
    }

    /// Send one GET and return the response once a 2xx status arrived; map any other status to an error.
    async fn get_once(
        &self,
        op: &str,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<(reqwest::Response, String), RemoteError> {
        let (resp, cid) = self
            .send_once(Request {
                method: reqwest::Method::GET,
                op,
                route,
                query,
                if_match: None,
                body: None,
            })
            .await?;
        if resp.status().is_success() {
            return Ok((resp, cid));
        }
        Err(Self::into_error(op, resp, cid).await)
    }

    /// A write (`PUT`/`DELETE /fs/file`): 2xx is accepted (with the new revision), 409 a conflict
    /// (with the server's current revision), 404 an absent path; any other status is an error.
    async fn write(&self, req: Request<'_>) -> Result<WriteOutcome, RemoteError> {
        let op = req.op;
        let (resp, cid) = self.send_once(req).await?;
        let status = resp.status().as_u16();
        if !(resp.status().is_success() || status == 409 || status == 404) {
            return Err(Self::into_error(op, resp, cid).await);
        }
        let body = resp.bytes().await.map_err(|e| RemoteError::Transport {
            op: op.to_string(),
            detail: describe(&e),
            correlation_id: cid.clone(),
            after_status: true,
        })?;
        Ok(match status {
            409 => WriteOutcome::Conflict {
                current: parse_error_body(&body).current_revision,
            },
            404 => WriteOutcome::Absent,
            _ => WriteOutcome::Accepted {
                revision: serde_json::from_slice::<WriteAck>(&body)
                    .ok()
                    .and_then(|a| a.target_revision.or(a.revision)),
            },
        })
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

    async fn put_file(&self, path: &str, file: &PushFile) -> Result<WriteOutcome, RemoteError> {
        let body = match &file.source {
            // A large file goes from disk, never whole in memory.
            Some(src) => {
                let (head, tail) = file.stream_frame();
                ReqBody::File {
                    head: head.into(),
                    src: src.clone(),
                    tail: tail.into(),
                }
            }
            None => ReqBody::Bytes(
                serde_json::to_vec(file)
                    .expect("a push body serializes")
                    .into(),
            ),
        };
        self.write(Request {
            method: reqwest::Method::PUT,
            op: "put",
            route: "/fs/file",
            query: &[("path", path)],
            if_match: Some(&file.if_match),
            body: Some(body),
        })
        .await
    }

    async fn delete_file(&self, path: &str, if_match: &str) -> Result<WriteOutcome, RemoteError> {
        self.write(Request {
            method: reqwest::Method::DELETE,
            op: "delete",
            route: "/fs/file",
            query: &[("path", path)],
            if_match: Some(if_match),
            body: None,
        })
        .await
    }

    async fn bulk(&self, files: &[PushFile]) -> Result<BulkOutcome, RemoteError> {
        let body = serde_json::to_vec(&serde_json::json!({ "files": files }))
            .expect("a bulk body serializes");
        let (resp, cid) = self
            .send_once(Request {
                method: reqwest::Method::POST,
                op: "bulk",
                route: "/fs/bulk",
                query: &[],
                if_match: None,
                body: Some(ReqBody::Bytes(body.into())),
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Self::into_error("bulk", resp, cid).await);
        }
        let body = resp.bytes().await.map_err(|e| RemoteError::Transport {
            op: "bulk".into(),
            detail: describe(&e),
            correlation_id: cid.clone(),
            after_status: true,
        })?;
        serde_json::from_slice(&body).map_err(|e| RemoteError::BadData {
            op: "bulk".into(),
            detail: format!("malformed JSON: {e}"),
            correlation_id: cid,
        })
    }
}

/// One request of [`HttpRemote::send_once`].
struct Request<'a> {
    method: reqwest::Method,
    op: &'a str,
    route: &'a str,
    query: &'a [(&'a str, &'a str)],
    if_match: Option<&'a str>,
    body: Option<ReqBody>,
}

/// A JSON request body: in memory, or a file streamed from disk between two pieces of JSON.
enum ReqBody {
    Bytes(bytes::Bytes),
    File {
        head: bytes::Bytes,
        src: FileSource,
        tail: bytes::Bytes,
    },
}

impl ReqBody {
    fn len(&self) -> u64 {
        match self {
            ReqBody::Bytes(b) => b.len() as u64,
            ReqBody::File { head, src, tail } => {
                head.len() as u64 + base64_len(src.size) + tail.len() as u64
            }
        }
    }

    /// A fresh body for one send (a retry reads the file again).
    fn to_body(&self) -> reqwest::Body {
        match self {
            ReqBody::Bytes(b) => b.clone().into(),
            ReqBody::File { head, src, tail } => {
                reqwest::Body::wrap_stream(file_stream(head.clone(), src.clone(), tail.clone()))
            }
        }
    }
}

/// Bytes read from the file per chunk (a multiple of 3: each chunk's base64 has no padding).
const STREAM_CHUNK: usize = 3 * 64 * 1024;

/// `head`, the file's bytes as base64, `tail`; the stream fails when the file is not `src.size` bytes
/// with hash `src.sha256` (it changed since it was staged): the request is cut, never completed with
/// other bytes than the ones recorded.
fn file_stream(
    head: bytes::Bytes,
    src: FileSource,
    tail: bytes::Bytes,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use base64::Engine;
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    enum St {
        Head,
        Open,
        File(Box<(tokio::fs::File, sha2::Sha256, u64)>),
        Tail,
        Done,
    }
    futures_util::stream::unfold(St::Head, move |st| {
        let (head, tail, src) = (head.clone(), tail.clone(), src.clone());
        async move {
            match st {
                St::Head => Some((Ok(head), St::Open)),
                St::Open => match tokio::fs::File::open(&src.abs).await {
                    Ok(f) => Some((
                        Ok(bytes::Bytes::new()),
                        St::File(Box::new((f, sha2::Sha256::new(), 0))),
                    )),
                    Err(e) => Some((Err(e), St::Done)),
                },
                St::File(state) => {
                    let (mut f, mut hasher, mut total) = *state;
                    let mut buf = vec![0u8; STREAM_CHUNK];
                    let mut got = 0;
                    while got < buf.len() {
                        match f.read(&mut buf[got..]).await {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) => return Some((Err(e), St::Done)),
                        }
                    }
                    buf.truncate(got);
                    total += got as u64;
                    hasher.update(&buf);
                    if got == STREAM_CHUNK {
                        let chunk = base64::engine::general_purpose::STANDARD.encode(&buf);
                        return Some((Ok(chunk.into()), St::File(Box::new((f, hasher, total)))));
                    }
                    // The end of the file: it must be the staged bytes.
                    let hash = hex::encode(hasher.finalize());
                    if total != src.size || !hash.eq_ignore_ascii_case(&src.sha256) {
                        let e = std::io::Error::other(format!(
                            "{} changed while it was being pushed",
                            src.abs.display()
                        ));
                        return Some((Err(e), St::Done));
                    }
                    let chunk = base64::engine::general_purpose::STANDARD.encode(&buf);
                    Some((Ok(chunk.into()), St::Tail))
                }
                St::Tail => Some((Ok(tail), St::Done)),
                St::Done => None,
            }
        }
    })
}

/// An error body, or a clear stand-in for one that is not JSON (a proxy's HTML page).
pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        let snippet: String = text.chars().filter(|c| !c.is_control()).take(120).collect();
        ErrorBody {
            code: "non_json_error".into(),
            message: format!("non-JSON error body: {snippet:?}"),
            ..Default::default()
        }
    })
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
