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

/// Error body of a non-2xx answer.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
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
