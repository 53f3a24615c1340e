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

/// Why decoding a file's content failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The content is unusable: unknown encoding, bad base64, hash mismatch.
    #[error("{0}")]
    Content(String),
    /// Writing the decoded bytes failed (a local problem).
    #[error("cannot write locally: {0}")]
    Write(std::io::Error),
}

impl FileObject {
    /// Decode the content and verify it against `contentHash` (when the server sent one).
    /// Returns the bytes and their hex SHA-256.
    pub fn decode_verified(&self) -> Result<(Vec<u8>, String), String> {
        let mut out = Vec::new();
        let (_, hash) = self.decode_into(&mut out).map_err(|e| e.to_string())?;
        Ok((out, hash))
    }

    /// Decode into `w`, verifying as it goes; returns (decoded size, hex SHA-256).
    pub fn decode_into(&self, w: &mut impl std::io::Write) -> Result<(u64, String), DecodeError> {
        decode_to(
            self.encoding.as_deref(),
            self.content.as_deref().unwrap_or(""),
            self.content_hash.as_deref(),
            w,
        )
    }
}

/// The raw body of a `/fs/file` answer. Parsed with its content borrowed from the body, so a large file
/// is never copied: it is decoded in chunks straight into the destination.
pub struct FileBody {
    pub raw: Vec<u8>,
    pub correlation_id: String,
}

/// A `/fs/file` object whose content borrows from the body.
#[derive(Debug, Deserialize)]
pub struct FileRef<'a> {
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(rename = "contentHash", default)]
    pub content_hash: Option<String>,
    #[serde(rename = "contentType", default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(borrow, default, deserialize_with = "borrowed_opt_str")]
    pub content: Option<std::borrow::Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows from the input when it can (serde's `borrow` alone does not reach
/// inside an `Option`); strings with escapes are owned, `null` is `None`.
fn borrowed_opt_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::borrow::Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<std::borrow::Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(std::borrow::Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(std::borrow::Cow::Owned(v.to_owned())))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(V)
        }
    }
    d.deserialize_option(V)
}

impl FileBody {
    pub fn parse(&self) -> Result<FileRef<'_>, String> {
        serde_json::from_slice(&self.raw).map_err(|e| {
            format!(
                "file: bad data: malformed JSON: {e} (correlation id {})",
                self.correlation_id
            )
        })
    }
}

impl FileRef<'_> {
    /// Decode into `w`, verifying as it goes; returns (decoded size, hex SHA-256).
    pub fn decode_into(&self, w: &mut impl std::io::Write) -> Result<(u64, String), DecodeError> {
        decode_to(
            self.encoding.as_deref(),
            self.content.as_deref().unwrap_or(""),
            self.content_hash.as_deref(),
            w,
        )
    }
}

/// Base64 characters decoded per step (a multiple of 4): bounds the decode buffer whatever the file size.
const DECODE_CHUNK: usize = 4 << 20;

/// Decode `content` (per `encoding`) into `w` in bounded steps, hashing the decoded bytes; fail on an
/// unknown encoding, bad base64 or a hash that differs from `expected`. Returns (size, hex SHA-256).
pub fn decode_to(
    encoding: Option<&str>,
    content: &str,
    expected: Option<&str>,
    w: &mut impl std::io::Write,
) -> Result<(u64, String), DecodeError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let io = DecodeError::Write;
    match encoding.map(|e| e.to_ascii_lowercase()) {
        None => write_hashed(content.as_bytes(), &mut hasher, &mut size, w).map_err(io)?,
        Some(e) if e.is_empty() || e == "utf-8" || e == "utf8" => {
            write_hashed(content.as_bytes(), &mut hasher, &mut size, w).map_err(io)?
        }
        Some(e) if e == "base64" => {
            let mut rest = content.trim_end().as_bytes();
            let mut buf = Vec::with_capacity(DECODE_CHUNK / 4 * 3);
            while !rest.is_empty() {
                let (step, tail) = rest.split_at(rest.len().min(DECODE_CHUNK));
                buf.clear();
                B64.decode_vec(step, &mut buf).map_err(|err| {
                    DecodeError::Content(format!("invalid base64 content: {err}"))
                })?;
                write_hashed(&buf, &mut hasher, &mut size, w).map_err(io)?;
                rest = tail;
            }
        }
        Some(e) => {
            return Err(DecodeError::Content(format!(
                "unknown content encoding {e:?}"
            )))
        }
    }
    let hash = hex::encode(hasher.finalize());
    if let Some(expected) = expected.filter(|h| !h.is_empty()) {
        if !expected.eq_ignore_ascii_case(&hash) {
            return Err(DecodeError::Content(format!(
                "content hash mismatch: server says {expected}, decoded bytes hash to {hash}"
            )));
        }
    }
    Ok((size, hash))
}

fn write_hashed(
    bytes: &[u8],
    h: &mut Sha256,
    size: &mut u64,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    h.update(bytes);
    *size += bytes.len() as u64;
    w.write_all(bytes)
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
    fn chunked_base64_decode_matches_across_chunk_boundaries() {
        use base64::Engine;
        for len in [
            0usize,
            1,
            2,
            3,
            DECODE_CHUNK / 4 * 3,
            DECODE_CHUNK / 4 * 3 + 1,
            DECODE_CHUNK + 5,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 3) as u8).collect();
            for enc in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
            ] {
                let text = enc.encode(&bytes);
                let mut out = Vec::new();
                let (size, hash) =
                    decode_to(Some("base64"), &text, Some(&sha256_hex(&bytes)), &mut out).unwrap();
                assert_eq!((size as usize, out == bytes), (len, true), "len {len}");
                assert_eq!(hash, sha256_hex(&bytes));
            }
        }
    }

    #[test]
    fn file_body_borrows_its_content() {
        let body = FileBody { raw: br#"{"path":"/a","encoding":"base64","content":"aGk=","contentHash":"8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"}"#.to_vec(), correlation_id: "c".into() };
        let f = body.parse().unwrap();
        assert!(matches!(f.content, Some(std::borrow::Cow::Borrowed(_))));
        let null = FileBody {
            raw: br#"{"path":"/a","content":null}"#.to_vec(),
            correlation_id: "c".into(),
        };
        assert!(null.parse().unwrap().content.is_none());
        let mut out = Vec::new();
        f.decode_into(&mut out).unwrap();
        assert_eq!(out, b"hi");
        let bad = FileBody {
            raw: b"{not json".to_vec(),
            correlation_id: "c9".into(),
        };
        assert!(bad.parse().unwrap_err().contains("c9"));
    }

    #[test]
    fn event_ids() {
        assert_eq!(event_seq("evt_41"), Some(41));
        assert_eq!(event_seq("garbage"), None);
    }
}
