//! `GET /fs/export?format=json` bodies: a JSON array streamed in pieces from a snapshot (see
//! `stream.rs`), optionally throttled, plus the truncated (complete response, cut JSON) and reset
//! (chunked body that errors) fault variants.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use super::store::{sha256_hex, FileRec};
use super::stream::{export_body, throttle};

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
    pub(crate) content: &'a str,
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

/// Passes the first `n` bytes of `s`, then fails (hyper aborts the connection).
pub(crate) fn cut_then_fail(
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
        "injected body reset (reference remote)",
    )
}

/// The export response for a snapshot, applying the body faults (`rate`: bytes per second).
pub(crate) fn export_response(
    files: Vec<Arc<FileRec>>,
    bad: BTreeSet<String>,
    truncate_at: Option<usize>,
    reset_at: Option<usize>,
    rate: Option<u64>,
) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if let Some(n) = truncate_at {
        let mut all: Vec<u8> = export_body(files, bad).flat_map(|b| b.to_vec()).collect();
        all.truncate(n);
        return (json, all).into_response();
    }
    let s: BoxStream<'static, Result<Bytes, std::io::Error>> =
        stream::iter(export_body(files, bad).map(Ok)).boxed();
    let s = match rate {
        Some(r) => throttle(s, r),
        None => s,
    };
    let s = match reset_at {
        Some(n) => cut_then_fail(s, n),
        None => s,
    };
    (json, Body::from_stream(s)).into_response()
}
