//! Reading a streamed response body from blocking code: the chunks of a [`BodyStream`] as a
//! `BufRead` (for the scanner, on a blocking thread), and what a failed scan means for the caller.
use super::scan::ScanError;
use super::{ByteStream, RemoteError};
use futures_util::{StreamExt, TryStreamExt};
use std::io::BufRead;

/// A `BufRead` over `chunks` with a `capacity`-byte buffer. Create it in async context (it keeps a
/// handle on the runtime), read it on a blocking thread. The body ends early (as EOF) once `cancel`
/// resolves, so a reader blocked on a stalled body is released when its consumer gives up.
pub fn reader(
    chunks: ByteStream,
    capacity: usize,
    cancel: Option<tokio::sync::oneshot::Receiver<()>>,
) -> impl BufRead + Send + 'static {
    let chunks: ByteStream = match cancel {
        Some(c) => Box::pin(chunks.take_until(c)),
        None => chunks,
    };
    let stream = chunks.map_err(std::io::Error::other);
    let bridge = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    std::io::BufReader::with_capacity(capacity, bridge)
}

/// A body read ahead by [`collect_small`].
pub enum Collected {
    /// The whole body (it ended within the limit).
    Whole(bytes::Bytes),
    /// The body is larger than the limit, or failed while being read: its chunks from the first, the
    /// failure (if any) in its place, to be read as a stream.
    Stream(ByteStream),
}

/// Read `chunks` into memory while the body stays within `limit` bytes. A small body (most files)
/// is then scanned from memory on one blocking thread, without a buffer of `limit` bytes and without
/// the bridge's hop back to the runtime per chunk; a larger body is handed back as a stream
/// (with nothing lost).
pub async fn collect_small(mut chunks: ByteStream, limit: usize) -> Collected {
    let mut got: Vec<bytes::Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        match chunks.next().await {
            None => {
                return Collected::Whole(match got.len() {
                    0 => bytes::Bytes::new(),
                    1 => got.pop().unwrap_or_default(),
                    _ => {
                        let mut all = Vec::with_capacity(len);
                        for c in &got {
                            all.extend_from_slice(c);
                        }
                        all.into()
                    }
                });
            }
            Some(Ok(c)) if len + c.len() <= limit => {
                len += c.len();
                got.push(c);
            }
            Some(item) => {
                let head = futures_util::stream::iter(got.into_iter().map(Ok).chain(Some(item)));
                return Collected::Stream(Box::pin(head.chain(chunks)));
            }
        }
    }
}

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The remote's fault: the body broke (a retryable transport error after the status), was cut
    /// short, or is not the JSON it should be (bad data).
    #[error("{0}")]
    Remote(RemoteError),
    /// Writing the content locally failed: a local disk problem.
    #[error("{0}")]
    Local(std::io::Error),
    /// The consumer stopped reading.
    #[error("stopped by the reader")]
    Stopped,
}

/// Classify a scan failure of the body of `op`.
pub fn classify(e: ScanError, op: &str, correlation_id: &str) -> BodyError {
    let bad = |detail: String| {
        BodyError::Remote(RemoteError::BadData {
            op: op.to_string(),
            detail,
            correlation_id: correlation_id.to_string(),
        })
    };
    match e {
        ScanError::Read(io) => {
            let inner = io
                .get_ref()
                .and_then(|x| x.downcast_ref::<RemoteError>())
                .cloned();
            BodyError::Remote(inner.unwrap_or_else(|| RemoteError::Transport {
                op: op.to_string(),
                detail: format!("body broken while streaming: {io}"),
                correlation_id: correlation_id.to_string(),
                after_status: true,
            }))
        }
        ScanError::Eof => bad("truncated body (it ended in the middle of the JSON)".into()),
        ScanError::Syntax { offset, msg } => bad(format!("malformed body at byte {offset}: {msg}")),
        ScanError::Local(io) => BodyError::Local(io),
        ScanError::Stopped => BodyError::Stopped,
    }
}

/// A `BufRead` over `chunks` for a blocking thread that has work of its own to do between bytes: it
/// hands out each chunk as it arrived (no copy into a buffer of its own), and calls `idle` just before
/// it would wait for a chunk that has not arrived yet, so the reader's caller can finish what it holds
/// (e.g. place the entries already decoded) instead of keeping it while the body is slow or stalled.
/// Create it with a handle on the runtime (the stream is polled inside it), read it off the runtime.
pub struct IdleReader<F> {
    chunks: ByteStream,
    handle: tokio::runtime::Handle,
    cur: bytes::Bytes,
    done: bool,
    idle: F,
}

impl<F: FnMut()> IdleReader<F> {
    pub fn new(chunks: ByteStream, handle: tokio::runtime::Handle, idle: F) -> IdleReader<F> {
        IdleReader {
            chunks,
            handle,
            cur: bytes::Bytes::new(),
            done: false,
            idle,
        }
    }
}

impl<F: FnMut()> std::io::Read for IdleReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<F: FnMut()> BufRead for IdleReader<F> {
    #[inline]
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.cur.is_empty() && !self.done {
            self.next_chunk()?;
        }
        Ok(&self.cur)
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.cur, n);
    }
}

impl<F: FnMut()> IdleReader<F> {
    /// Wait for the next non-empty chunk (or the end), calling `idle` first when none is there yet.
    #[inline(never)]
    fn next_chunk(&mut self) -> std::io::Result<()> {
        while self.cur.is_empty() && !self.done {
            let ready = {
                let _rt = self.handle.enter();
                let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
                self.chunks.poll_next_unpin(&mut cx)
            };
            let item = match ready {
                std::task::Poll::Ready(item) => item,
                std::task::Poll::Pending => {
                    (self.idle)();
                    self.handle.block_on(self.chunks.next())
                }
            };
            match item {
                None => self.done = true,
                Some(Ok(chunk)) => self.cur = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        Ok(())
    }
}
