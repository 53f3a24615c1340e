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
