//! `GET /fs/export?format=json` bodies: a JSON array streamed in chunks from a snapshot, plus the
//! truncated (complete response, cut JSON) and reset (chunked body that errors) fault variants.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use super::store::{sha256_hex, FileRec};

/// Files serialized per body chunk.
const CHUNK_FILES: usize = 256;

/// The `/fs/file` object shape (also the export element).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileJson<'a> {
    path: &'a str,
    revision: String,
    content_hash: String,
    content_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content: &'a str,
    last_edited_at: &'a str,
}

impl<'a> FileJson<'a> {
    pub(crate) fn new(rec: &'a FileRec, bad_hash: bool) -> Self {
        FileJson {
            path: &rec.path,
            revision: format!("rev_{}", rec.revision),
            content_hash: if bad_hash {
                sha256_hex(format!("not the content of {}", rec.path).as_bytes())
            } else {
                rec.hash.clone()
            },
            content_type: &rec.content_type,
            encoding: rec.base64.then_some("base64"),
            content: &rec.content,
            last_edited_at: &rec.updated_at,
        }
    }
}

fn render_chunk(files: &[Arc<FileRec>], bad: &BTreeSet<String>, c: usize, chunks: usize) -> Bytes {
    let start = c * CHUNK_FILES;
    let end = (start + CHUNK_FILES).min(files.len());
    let mut buf = Vec::with_capacity(64 * (end - start) + 2);
    if c == 0 {
        buf.push(b'[');
    }
    for (i, rec) in files[start..end].iter().enumerate() {
        if start + i > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &FileJson::new(rec, bad.contains(&rec.path)))
            .expect("serializing to a Vec cannot fail");
    }
    if c + 1 == chunks {
        buf.push(b']');
    }
    Bytes::from(buf)
}

fn body_stream(
    files: Vec<Arc<FileRec>>,
    bad: BTreeSet<String>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let chunks = files.len().div_ceil(CHUNK_FILES).max(1);
    stream::iter(0..chunks)
        .map(move |c| Ok(render_chunk(&files, &bad, c, chunks)))
        .boxed()
}

/// Passes the first `n` bytes of `s`, then fails (hyper aborts the connection).
fn cut_then_fail(
    s: BoxStream<'static, Result<Bytes, std::io::Error>>,
    n: usize,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    // Phase: 0 = passing bytes, 1 = fail next, 2 = done.
    stream::unfold(
        (s, n, if n == 0 { 1u8 } else { 0 }),
        |(mut s, rem, phase)| async move {
            match phase {
                0 => match s.next().await {
                    Some(Ok(b)) if b.len() < rem => {
                        let left = rem - b.len();
                        Some((Ok(b), (s, left, 0)))
                    }
                    Some(Ok(b)) => Some((Ok(b.slice(..rem)), (s, 0, 1))),
                    Some(Err(e)) => Some((Err(e), (s, 0, 2))),
                    None => Some((Err(reset_error()), (s, 0, 2))),
                },
                1 => {
                    // Let hyper flush what was sent before the abort.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Some((Err(reset_error()), (s, 0, 2)))
                }
                _ => None,
            }
        },
    )
    .boxed()
}

fn reset_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected export reset (reference remote)",
    )
}

/// The export response for a snapshot, applying the body faults.
pub(crate) fn export_response(
    files: Vec<Arc<FileRec>>,
    bad: BTreeSet<String>,
    truncate_at: Option<usize>,
    reset_at: Option<usize>,
) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if let Some(n) = truncate_at {
        let chunks = files.len().div_ceil(CHUNK_FILES).max(1);
        let mut all = Vec::new();
        for c in 0..chunks {
            all.extend_from_slice(&render_chunk(&files, &bad, c, chunks));
        }
        all.truncate(n);
        return (json, all).into_response();
    }
    let s = body_stream(files, bad);
    let s = match reset_at {
        Some(n) => cut_then_fail(s, n),
        None => s,
    };
    (json, Body::from_stream(s)).into_response()
}
