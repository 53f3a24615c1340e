//! Streaming parse of the export body: a JSON array read element by element on a blocking thread,
//! so memory stays bounded by one entry whatever the body size. Entries arrive on a channel.
use super::types::FileObject;
use super::{BodyStream, RemoteError};
use futures_util::TryStreamExt;
use serde::de::{Deserializer, SeqAccess, Visitor};
use tokio::sync::mpsc;

/// What the parser thread sends: entries, then `Ok(count)` at a clean end, or the error that ended it.
pub enum ExportItem {
    Entry(FileObject),
    End(Result<u64, RemoteError>),
}

/// Spawn the parser for a 2xx export body; read items from the returned channel.
pub fn stream_entries(body: BodyStream) -> mpsc::Receiver<ExportItem> {
    let (tx, rx) = mpsc::channel(64);
    let correlation_id = body.correlation_id;
    let stream = body.chunks.map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(256 * 1024, bridge);
        let mut de = serde_json::Deserializer::from_reader(reader);
        let visitor = EntryVisitor { tx: &tx };
        let result = de
            .deserialize_seq(visitor)
            .and_then(|n| de.end().map(|_| n))
            .map_err(|e| classify(e, &correlation_id));
        let _ = tx.blocking_send(ExportItem::End(result));
    });
    rx
}

fn classify(e: serde_json::Error, cid: &str) -> RemoteError {
    if e.is_io() {
        RemoteError::Transport {
            op: "export".into(),
            detail: format!("body broken while streaming: {e}"),
            correlation_id: cid.to_string(),
            after_status: true,
        }
    } else {
        let what = if e.is_eof() {
            "truncated body"
        } else {
            "malformed body"
        };
        RemoteError::BadData {
            op: "export".into(),
            detail: format!("{what}: {e}"),
            correlation_id: cid.to_string(),
        }
    }
}

struct EntryVisitor<'a> {
    tx: &'a mpsc::Sender<ExportItem>,
}

impl<'de> Visitor<'de> for EntryVisitor<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of file objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0;
        while let Some(entry) = seq.next_element::<FileObject>()? {
            n += 1;
            if self.tx.blocking_send(ExportItem::Entry(entry)).is_err() {
                // The consumer gave up (sub-deadline or cancellation): stop reading.
                return Err(serde::de::Error::custom("export abandoned by the reader"));
            }
        }
        Ok(n)
    }
}
