//! Wire types of the relayfile API, read tolerantly (missing optional fields, `null`s, any encoding case).
use base64::Engine;
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

/// A file with content, as served by `/fs/file` and as each element of `/fs/export`.
#[derive(Debug, Clone, Deserialize)]
pub struct FileObject {
    pub path: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(rename = "contentHash", default)]
    pub content_hash: Option<String>,
    #[serde(rename = "contentType", default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
}

/// Lenient standard base64: accepts input with or without padding.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl FileObject {
    /// Decode the content and verify it against `contentHash` (when the server sent one).
    /// Returns the bytes and their hex SHA-256.
    pub fn decode_verified(&self) -> Result<(Vec<u8>, String), String> {
        self.decode_content(self.content.as_deref().unwrap_or(""))
    }

    /// Like [`FileObject::decode_verified`], but releases the encoded content as soon as it is decoded
    /// (a large file is not held twice while it is verified and written).
    pub fn take_verified(&mut self) -> Result<(Vec<u8>, String), String> {
        let content = self.content.take().unwrap_or_default();
        self.decode_content(&content)
    }

    fn decode_content(&self, raw: &str) -> Result<(Vec<u8>, String), String> {
        let bytes = match self.encoding.as_deref().map(|e| e.to_ascii_lowercase()) {
            None => raw.as_bytes().to_vec(),
            Some(e) if e.is_empty() || e == "utf-8" || e == "utf8" => raw.as_bytes().to_vec(),
            Some(e) if e == "base64" => B64
                .decode(raw.trim_end())
                .map_err(|err| format!("invalid base64 content: {err}"))?,
            Some(e) => return Err(format!("unknown content encoding {e:?}")),
        };
        let hash = sha256_hex(&bytes);
        if let Some(expected) = self.content_hash.as_deref().filter(|h| !h.is_empty()) {
            if !expected.eq_ignore_ascii_case(&hash) {
                return Err(format!(
                    "content hash mismatch: server says {expected}, decoded bytes hash to {hash}"
                ));
            }
        }
        Ok((bytes, hash))
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

/// Numeric part of an event id (`evt_41` → 41), used so a cursor never moves backwards.
pub fn event_seq(id: &str) -> Option<u64> {
    id.rsplit('_').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(enc: Option<&str>, content: &str, hash: Option<String>) -> FileObject {
        FileObject {
            path: "/x".into(),
            revision: None,
            content_hash: hash,
            content_type: None,
            encoding: enc.map(str::to_string),
            content: Some(content.into()),
        }
    }

    #[test]
    fn decodes_encodings_and_verifies() {
        let h = sha256_hex(b"hi\xff");
        assert_eq!(
            obj(Some("BASE64"), "aGn/", Some(h.clone()))
                .decode_verified()
                .unwrap()
                .0,
            b"hi\xff"
        );
        let h2 = sha256_hex(b"hi");
        assert_eq!(
            obj(Some("base64"), "aGk", Some(h2.clone()))
                .decode_verified()
                .unwrap()
                .0,
            b"hi"
        );
        assert_eq!(
            obj(Some("utf8"), "hi", Some(h2.clone()))
                .decode_verified()
                .unwrap()
                .0,
            b"hi"
        );
        assert_eq!(obj(None, "hi", None).decode_verified().unwrap().0, b"hi");
        assert!(obj(Some("base64"), "!!!", None)
            .decode_verified()
            .unwrap_err()
            .contains("base64"));
        assert!(obj(None, "ho", Some(h2))
            .decode_verified()
            .unwrap_err()
            .contains("mismatch"));
    }

    #[test]
    fn event_ids() {
        assert_eq!(event_seq("evt_41"), Some(41));
        assert_eq!(event_seq("garbage"), None);
    }
}
