//! Bodies rendered lazily, in pieces of at most [`PIECE`] bytes of content: a file object of any size
//! is sent straight from the stored string (never copied whole into a response buffer), and either
//! body can be throttled to a byte rate (the `file_rate_bytes_per_sec` / `export_rate_bytes_per_sec`
//! faults: a slow link, for tests of byte progress).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::export::FileJson;
use super::store::FileRec;

/// Largest slice of content rendered at a time.
pub(crate) const PIECE: usize = 64 << 10;
/// Small file objects batched into one piece of the export body.
const BATCH_FILES: usize = 256;

/// The JSON of one file object in pieces: everything up to the content's opening quote, the content
/// escaped slice by slice, then the rest.
pub(crate) struct FilePieces {
    rec: Arc<FileRec>,
    /// The object without its content, split around where the content goes.
    head: Option<Vec<u8>>,
    tail: Option<Vec<u8>>,
    /// Next content byte to render.
    at: usize,
}

impl FilePieces {
    pub(crate) fn new(rec: Arc<FileRec>, bad_hash: bool) -> FilePieces {
        let mut shell = FileJson::new(&rec, bad_hash);
        shell.content = "";
        let json = serde_json::to_vec(&shell).expect("serializing to a Vec cannot fail");
        // `"content":""` cannot occur inside a string value (its quotes would be escaped there).
        const KEY: &[u8] = b"\"content\":\"\"";
        let at = json
            .windows(KEY.len())
            .position(|w| w == KEY)
            .expect("a file object has a content key")
            + KEY.len()
            - 1;
        let (head, tail) = json.split_at(at);
        let (head, tail) = (head.to_vec(), tail.to_vec());
        FilePieces {
            rec,
            head: Some(head),
            tail: Some(tail),
            at: 0,
        }
    }

    /// The rest of the object as one buffer (small objects).
    fn render_into(mut self, out: &mut Vec<u8>) {
        for p in self.by_ref() {
            out.extend_from_slice(&p);
        }
    }
}

/// `s` JSON-escaped, without the surrounding quotes.
fn escape_into(s: &str, out: &mut Vec<u8>) {
    let start = out.len();
    serde_json::to_writer(&mut *out, s).expect("serializing to a Vec cannot fail");
    out.remove(start);
    out.pop();
}

impl Iterator for FilePieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(h) = self.head.take() {
            return Some(Bytes::from(h));
        }
        let content = self.rec.content.as_str();
        if self.at < content.len() {
            let mut end = (self.at + PIECE).min(content.len());
            while !content.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = Vec::with_capacity(end - self.at + 16);
            escape_into(&content[self.at..end], &mut out);
            self.at = end;
            return Some(Bytes::from(out));
        }
        self.tail.take().map(Bytes::from)
    }
}

/// The body of `GET /fs/file` for `rec`, in pieces.
pub(crate) fn file_body(rec: Arc<FileRec>, bad_hash: bool) -> BoxStream<'static, Bytes> {
    stream::iter(FilePieces::new(rec, bad_hash)).boxed()
}

/// The export array in pieces: small objects batched, a large one rendered slice by slice.
struct ExportPieces {
    files: std::vec::IntoIter<Arc<FileRec>>,
    bad: BTreeSet<String>,
    first: bool,
    open: bool,
    current: Option<FilePieces>,
    done: bool,
}

impl Iterator for ExportPieces {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(cur) = &mut self.current {
            match cur.next() {
                Some(p) => return Some(p),
                None => self.current = None,
            }
        }
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        if !self.open {
            self.open = true;
            buf.push(b'[');
        }
        let mut batched = 0;
        while batched < BATCH_FILES && buf.len() < PIECE {
            let Some(rec) = self.files.next() else {
                buf.push(b']');
                self.done = true;
                break;
            };
            if !self.first {
                buf.push(b',');
            }
            self.first = false;
            let pieces = FilePieces::new(rec.clone(), self.bad.contains(&rec.path));
            if rec.content.len() > PIECE {
                // Send what is batched with this object's head; its content follows piece by piece.
                self.current = Some(pieces);
                break;
            }
            pieces.render_into(&mut buf);
            batched += 1;
        }
        if let Some(cur) = &mut self.current {
            if let Some(head) = cur.next() {
                buf.extend_from_slice(&head);
            }
        }
        Some(Bytes::from(buf))
    }
}

/// The export body of `files` (sorted by path), in pieces.
pub(crate) fn export_body(
    files: Vec<Arc<FileRec>>,
    bad: BTreeSet<String>,
) -> impl Iterator<Item = Bytes> + Send + 'static {
    ExportPieces {
        files: files.into_iter(),
        bad,
        first: true,
        open: false,
        current: None,
        done: false,
    }
}

/// `s` at most `rate` bytes per second: pieces are split to a twentieth of a second's worth and each
/// is sent when the bytes before it are due.
pub(crate) fn throttle<E: Send + 'static>(
    s: BoxStream<'static, Result<Bytes, E>>,
    rate: u64,
) -> BoxStream<'static, Result<Bytes, E>> {
    let rate = rate.max(1);
    let slice = ((rate / 20) as usize).clamp(1, PIECE);
    let start = tokio::time::Instant::now();
    s.flat_map(move |item| {
        let parts: Vec<Result<Bytes, E>> = match item {
            Ok(b) => (0..b.len().div_ceil(slice))
                .map(|i| Ok(b.slice(i * slice..((i + 1) * slice).min(b.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(parts)
    })
    .scan(0u64, move |sent, item| {
        let due = match &item {
            Ok(b) => {
                let due = start + Duration::from_secs_f64(*sent as f64 / rate as f64);
                *sent += b.len() as u64;
                Some(due)
            }
            Err(_) => None,
        };
        async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
            Some(item)
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn store_with(files: &[(&str, String, bool)]) -> Store {
        let mut st = Store::default();
        for (p, c, b64) in files {
            st.put(p, c.clone(), *b64, "text/plain".into(), "h".into());
        }
        st
    }

    #[test]
    fn pieces_are_the_serialized_object() {
        let big: String = (0..200_000)
            .map(|i| match i % 7 {
                0 => '"',
                1 => '\\',
                2 => '\n',
                3 => 'é',
                4 => '日',
                5 => '\u{1}',
                _ => 'x',
            })
            .collect();
        let st = store_with(&[
            ("/a \"q\".txt", "small \"content\"".into(), false),
            ("/big.txt", big, false),
            ("/c.bin", "AAEC".into(), true),
        ]);
        for rec in st.snapshot("/") {
            let whole = serde_json::to_vec(&FileJson::new(&rec, false)).unwrap();
            let pieces: Vec<Bytes> = FilePieces::new(rec.clone(), false).collect();
            assert!(pieces.iter().all(|p| p.len() <= 6 * PIECE + 64));
            assert_eq!(pieces.concat(), whole, "{}", rec.path);
        }
        let files = st.snapshot("/");
        let mut want = vec![b'['];
        for (i, rec) in files.iter().enumerate() {
            if i > 0 {
                want.push(b',');
            }
            serde_json::to_writer(&mut want, &FileJson::new(rec, false)).unwrap();
        }
        want.push(b']');
        let got: Vec<Bytes> = export_body(files, BTreeSet::new()).collect();
        assert!(got.len() > 3, "the large object comes in pieces");
        assert_eq!(got.concat(), want);
        let empty: Vec<Bytes> = export_body(Vec::new(), BTreeSet::new()).collect();
        assert_eq!(empty.concat(), b"[]");
    }

    #[tokio::test]
    async fn throttle_holds_the_rate() {
        let body: BoxStream<'static, Result<Bytes, ()>> =
            stream::iter(vec![Ok(Bytes::from(vec![7u8; 100_000]))]).boxed();
        let start = tokio::time::Instant::now();
        let got: Vec<_> = throttle(body, 200_000).collect().await;
        let n: usize = got.iter().map(|b| b.as_ref().unwrap().len()).sum();
        assert_eq!(n, 100_000);
        assert_eq!(got.len(), 10, "slices of a twentieth of a second");
        // The last slice is due after 90,000 bytes at 200 kB/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
    }
}
