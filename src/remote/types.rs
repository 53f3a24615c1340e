//! Wire types of the relayfile API, read tolerantly (missing optional fields, `null`s). File objects
//! with content are not deserialized whole: [`super::scan`] decodes them as they stream in.
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Deserialize)]
pub struct TreePage {
    #[serde(default)]
    pub entries: Vec<TreeEntry>,
    #[serde(rename = "nextCursor", default)]
    pub next_cursor: Option<String>,
    #[serde(rename = "totalFiles", default)]
    pub total_files: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TreeEntry {
    pub path: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(rename = "contentHash", default)]
    pub content_hash: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

impl TreeEntry {
    pub fn is_dir(&self) -> bool {
        self.kind == "dir" || self.kind == "directory"
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    #[serde(rename = "eventId")]
    pub event_id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(rename = "contentHash", default)]
    pub content_hash: Option<String>,
    /// When the server recorded the event (RFC 3339); the realtime stream's lag is measured from it.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Realtime stream only: the message carries the file's current content (`content`, `encoding`,
    /// `contentType`), to be used once its SHA-256 matches `contentHash`.
    #[serde(rename = "inlineContent", default)]
    pub inline_content: bool,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(rename = "contentType", default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsPage {
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(rename = "nextCursor", default)]
    pub next_cursor: Option<String>,
}

/// Error body of a non-2xx answer (a 409 also says the server's current revision).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(rename = "currentRevision", default)]
    pub current_revision: Option<String>,
}

/// One file to write: the body of `PUT /fs/file`, or an entry of `POST /fs/bulk`. `content` is the
/// text itself (UTF-8) or standard base64 (`encoding: "base64"`); `if_match` is the revision the
/// change was made on (`0`: only if the path is absent).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushFile {
    pub path: String,
    #[serde(rename = "contentType")]
    pub content_type: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    #[serde(rename = "ifMatch")]
    pub if_match: String,
    /// A large file sent straight from disk (`content` is then empty): never held in memory.
    #[serde(skip)]
    pub source: Option<FileSource>,
}

/// A file whose bytes a [`PushFile`] streams from disk (base64), checked against `sha256` as sent: a
/// file that changed meanwhile aborts the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    pub abs: std::path::PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Length of the standard base64 (padded) encoding of `n` bytes.
pub fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

impl PushFile {
    /// A file streamed from `src` (base64).
    pub fn streamed(path: String, src: FileSource, if_match: String) -> PushFile {
        PushFile {
            path,
            content_type: "application/octet-stream".into(),
            content: String::new(),
            encoding: Some("base64"),
            if_match,
            source: Some(src),
        }
    }

    /// The JSON body around a streamed file's content: what comes before and after it.
    pub fn stream_frame(&self) -> (String, String) {
        let json = serde_json::to_string(self).expect("a push body serializes");
        // `content` is serialized empty: split the document there.
        let at = json.find("\"content\":\"\"").expect("the content field") + "\"content\":\"".len();
        (json[..at].to_string(), json[at..].to_string())
    }

    /// The body for `bytes`: text when they are UTF-8 without NUL, else base64.
    pub fn new(path: String, bytes: &[u8], if_match: String) -> PushFile {
        use base64::Engine;
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => PushFile {
                path,
                content_type: "text/plain".into(),
                content: text.to_string(),
                encoding: None,
                if_match,
                source: None,
            },
            _ => PushFile {
                path,
                content_type: "application/octet-stream".into(),
                content: base64::engine::general_purpose::STANDARD.encode(bytes),
                encoding: Some("base64"),
                if_match,
                source: None,
            },
        }
    }

    /// Bytes this entry adds to a request body (its JSON form), for the server's body cap.
    pub fn encoded_len(&self) -> usize {
        let framed = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        match &self.source {
            Some(src) => framed.saturating_add(base64_len(src.size) as usize),
            None => framed,
        }
    }
}

/// The answer to a write of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 2xx: written; the path's new revision when the server said it.
    Accepted { revision: Option<String> },
    /// 409: the path is not at the revision the write was made on.
    Conflict { current: Option<String> },
    /// 404: the path does not exist (a delete of an absent file, or a revision for an absent path).
    Absent,
}

/// The 202 body of a write.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct WriteAck {
    #[serde(rename = "targetRevision", default)]
    pub target_revision: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
}

/// The 202 body of `POST /fs/bulk`: per-file results and errors.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct BulkOutcome {
    #[serde(default)]
    pub results: Vec<BulkResult>,
    #[serde(default)]
    pub errors: Vec<BulkError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BulkResult {
    pub path: String,
    #[serde(default)]
    pub revision: Option<String>,
}

/// One file a bulk request did not write: its path and the error, as a whole request's would say it.
#[derive(Debug, Clone, Deserialize)]
pub struct BulkError {
    pub path: String,
    #[serde(flatten)]
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_tree_page() {
        let p: TreePage = serde_json::from_str(
            r#"{"entries":[{"path":"/a","type":"file","contentHash":null},{"path":"/d","type":"dir"}],"nextCursor":null}"#,
        )
        .unwrap();
        assert_eq!(p.entries.len(), 2);
        assert!(p.entries[1].is_dir() && !p.entries[0].is_dir());
        assert_eq!(p.total_files, None);
    }
}
