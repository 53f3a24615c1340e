//! Writes as the real relayfile server accepts them: `PUT /fs/file`, `DELETE /fs/file` and
//! `POST /fs/bulk` with their body cap, `If-Match` preconditions, 409 conflict bodies and 202
//! answers. One implementation for the HTTP routes (which add auth, scope and faults around it)
//! and the in-process [`crate::Workspace`].

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::ApiError;
use crate::faults::ErrorFault;
use crate::store::{absolute, decode_content, sha256_hex, FileRec};
use crate::Shared;

/// Characters of the current content in a 409's `currentContentPreview`.
const PREVIEW_CHARS: usize = 120;

/// What an `If-Match` asks for.
enum Precondition {
    /// `0`: create only if absent.
    Absent,
    /// `*`: whatever is there.
    Any,
    /// This exact current revision (`rev_N`).
    Revision(String),
}

impl Precondition {
    /// `None` for an empty value; quotes and a `W/` prefix are stripped.
    fn parse(raw: &str) -> Option<Precondition> {
        let t = raw.trim();
        let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"').trim();
        match t {
            "" => None,
            "0" => Some(Precondition::Absent),
            "*" => Some(Precondition::Any),
            r => Some(Precondition::Revision(r.to_string())),
        }
    }

    /// The `If-Match` of a `PUT` / `DELETE`: required (missing or empty → 412).
    fn required(raw: Option<&str>) -> Result<Precondition, ApiError> {
        raw.and_then(Precondition::parse)
            .ok_or_else(|| ApiError::new(412, "precondition_failed", "If-Match header is required"))
    }

    fn sent(&self) -> &str {
        match self {
            Precondition::Absent => "0",
            Precondition::Any => "*",
            Precondition::Revision(r) => r,
        }
    }

    /// `Ok` when the precondition holds for `current`; 404 for a revision of an absent path,
    /// 409 `revision_conflict` otherwise.
    fn check(&self, path: &str, current: Option<&FileRec>) -> Result<(), ApiError> {
        match (self, current) {
            (Precondition::Any, _) | (Precondition::Absent, None) => Ok(()),
            (Precondition::Revision(r), None) => Err(ApiError::new(
                404,
                "not_found",
                format!("{path}: no such file (If-Match {r})"),
            )),
            (Precondition::Revision(r), Some(c)) if *r == rev(c.revision) => Ok(()),
            (_, Some(c)) => Err(conflict(path, self.sent(), c)),
        }
    }
}

fn rev(n: u64) -> String {
    format!("rev_{n}")
}

/// 409 `revision_conflict` with `expectedRevision`, `currentRevision` and, for text content,
/// `currentContentPreview`.
fn conflict(path: &str, expected: &str, current: &FileRec) -> ApiError {
    let mut e = ApiError::new(
        409,
        "revision_conflict",
        format!(
            "{path}: revision conflict (If-Match {expected}, current {})",
            rev(current.revision)
        ),
    );
    e.extra.insert("expectedRevision".into(), expected.into());
    e.extra
        .insert("currentRevision".into(), rev(current.revision).into());
    if !current.base64 {
        let preview: String = current.content.chars().take(PREVIEW_CHARS).collect();
        e.extra
            .insert("currentContentPreview".into(), preview.into());
    }
    e
}

/// 413 when `body` is over the server's cap.
fn check_cap(s: &Shared, body: &[u8]) -> Result<(), ApiError> {
    let cap = s.max_body_bytes();
    if body.len() > cap {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!("request body over {cap} bytes"),
        ));
    }
    Ok(())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "bad_request", format!("invalid body: {e}")))
}

/// A file's path as written: absolute, and naming a file (not `/`, no trailing `/`).
pub(crate) fn file_path(path: &str) -> Result<String, ApiError> {
    let p = absolute(path);
    if p.ends_with('/') {
        return Err(ApiError::new(
            400,
            "bad_request",
            format!("{path:?} is not a file path"),
        ));
    }
    Ok(p)
}

/// A `PUT` body, or one `files` element of a bulk.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteFile {
    #[serde(default)]
    path: String,
    #[serde(default)]
    content_type: String,
    content: String,
    #[serde(default)]
    encoding: Option<String>,
    /// Bulk only.
    #[serde(default)]
    if_match: Option<String>,
}

#[derive(Deserialize)]
struct BulkBody {
    files: Vec<WriteFile>,
}

/// One accepted write.
struct Accepted {
    op_id: String,
    revision: String,
    content_type: String,
}

impl Accepted {
    /// The 202 body of a `PUT` / `DELETE`.
    fn answer(&self) -> Value {
        json!({"opId": self.op_id, "status": "queued", "targetRevision": self.revision})
    }
}

impl Shared {
    /// Counts an applied write and numbers its operation.
    fn applied(&self, path: &str, revision: u64, content_type: String) -> Accepted {
        let mut c = self.counts();
        c.writes_applied += 1;
        *c.writes_per_path.entry(path.to_string()).or_default() += 1;
        drop(c);
        Accepted {
            op_id: format!("op_{}", self.next_op()),
            revision: rev(revision),
            content_type,
        }
    }

    /// Validates `w` and writes it at `path` if `pre` holds (checked and written under one lock).
    fn write_file(
        &self,
        path: &str,
        w: WriteFile,
        pre: &Precondition,
    ) -> Result<Accepted, ApiError> {
        let b64 = w
            .encoding
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("base64"));
        let bytes =
            decode_content(&w.content, b64).map_err(|m| ApiError::new(400, "bad_request", m))?;
        let ct = match w.content_type {
            t if !t.is_empty() => t,
            _ if b64 => "application/octet-stream".to_string(),
            _ => "text/plain".to_string(),
        };
        let mut st = self.store();
        pre.check(path, st.get(path).as_deref())?;
        let revision = st.put(path, w.content, b64, ct.clone(), sha256_hex(&bytes));
        drop(st);
        Ok(self.applied(path, revision, ct))
    }
}

/// `PUT /fs/file?path=P`: the 202 body, or the error (413, 412, 400, 404, 409).
pub(crate) fn put(
    s: &Shared,
    path: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> Result<Value, ApiError> {
    check_cap(s, body)?;
    let path = file_path(path)?;
    let pre = Precondition::required(if_match)?;
    let w: WriteFile = parse(body)?;
    Ok(s.write_file(&path, w, &pre)?.answer())
}

/// `DELETE /fs/file?path=P`: the 202 body, or the error (412, 404, 409).
pub(crate) fn delete(s: &Shared, path: &str, if_match: Option<&str>) -> Result<Value, ApiError> {
    let path = file_path(path)?;
    let pre = Precondition::required(if_match)?;
    let mut st = s.store();
    let Some(current) = st.get(&path) else {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("{path}: no such file"),
        ));
    };
    pre.check(&path, Some(&current))?;
    let revision = st.delete(&path).expect("the file exists under the lock");
    drop(st);
    Ok(s.applied(&path, revision, current.content_type.clone())
        .answer())
}

/// `POST /fs/bulk`: the 202 body (`correlationId` = `corr`), or the error of the whole request
/// (413, 400). A file whose path is in `denied` is not written and is listed in `errors` with
/// that error's code.
pub(crate) fn bulk(
    s: &Shared,
    body: &[u8],
    denied: &BTreeMap<String, ErrorFault>,
    corr: &str,
) -> Result<Value, ApiError> {
    check_cap(s, body)?;
    let b: BulkBody = parse(body)?;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for w in b.files {
        let shown = absolute(&w.path);
        let one = file_path(&w.path).and_then(|path| {
            if let Some(e) = denied.get(&path) {
                return Err(ApiError::new(
                    e.status,
                    &e.code,
                    "write denied (injected fault)",
                ));
            }
            let pre = w
                .if_match
                .as_deref()
                .and_then(Precondition::parse)
                .unwrap_or(Precondition::Any);
            s.write_file(&path, w, &pre)
        });
        match one {
            Ok(a) => results.push(json!({
                "path": shown, "revision": a.revision, "contentType": a.content_type, "opId": a.op_id,
            })),
            Err(e) => errors.push(bulk_error(&shown, e)),
        }
    }
    Ok(json!({
        "written": results.len(),
        "errorCount": errors.len(),
        "errors": errors,
        "results": results,
        "correlationId": corr,
    }))
}

/// A bulk `errors` element: a precondition failure is code `conflict` with `expectedRevision`
/// and `currentRevision`.
fn bulk_error(path: &str, e: ApiError) -> Value {
    let mut o = Map::new();
    o.insert("path".into(), path.into());
    let code = if e.status == 409 { "conflict" } else { &e.code };
    o.insert("code".into(), code.into());
    o.insert("message".into(), e.message.into());
    for k in ["expectedRevision", "currentRevision"] {
        if let Some(v) = e.extra.get(k) {
            o.insert(k.into(), v.clone());
        }
    }
    Value::Object(o)
}
