//! The export's entries as they stream in: the body (a JSON array) is scanned on a blocking thread by
//! [`super::scan::read_export`], each entry's content decoded into the caller's target as it arrives,
//! and finished entries are sent on a bounded channel (the parser waits for a slow consumer). Memory is
//! bounded by the channel and the target, whatever the body size. Dropping [`ExportEntries`] cancels
//! the body, so the parser thread ends even when the body stalls.
use super::body::{self, BodyError};
use super::scan::{read_export, ContentTarget, EntryOutcome};
use super::BodyStream;
use std::fs::File;
use std::ops::ControlFlow;
use tokio::sync::{mpsc, oneshot};

/// What the parser thread sends: entries, then the count at a clean end, or the error that ended it.
pub enum ExportItem<O> {
    Entry(EntryOutcome<O>),
    End(Result<u64, BodyError>),
}

/// The receiving end; dropping it stops the parser.
pub struct ExportEntries<O> {
    rx: mpsc::Receiver<ExportItem<O>>,
    _cancel: oneshot::Sender<()>,
}

impl<O> ExportEntries<O> {
    /// The next item (`None` only if the parser thread died).
    pub async fn next(&mut self) -> Option<ExportItem<O>> {
        self.rx.recv().await
    }

    /// The next item if one is already waiting.
    pub fn try_next(&mut self) -> Option<ExportItem<O>> {
        self.rx.try_recv().ok()
    }
}

/// Start scanning a 2xx export body: `target` receives each entry's decoded content, `spool` provides
/// scratch files for content that arrives before its encoding, `buffer` is the read buffer's size and
/// `queue` the number of finished entries that may wait for the consumer.
pub fn stream_entries<T, S>(
    body: BodyStream,
    mut target: T,
    mut spool: S,
    buffer: usize,
    queue: usize,
) -> ExportEntries<T::Out>
where
    T: ContentTarget + Send + 'static,
    T::Out: Send + 'static,
    S: FnMut() -> std::io::Result<File> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let cid = body.correlation_id;
    let reader = body::reader(body.chunks, buffer, Some(cancel_rx));
    tokio::task::spawn_blocking(move || {
        let result = read_export(reader, &mut target, &mut spool, |entry| {
            match tx.blocking_send(ExportItem::Entry(entry)) {
                Ok(()) => ControlFlow::Continue(()),
                // The consumer gave up (sub-deadline or cancellation): stop reading.
                Err(_) => ControlFlow::Break(()),
            }
        })
        .map_err(|e| body::classify(e, "export", &cid));
        let _ = tx.blocking_send(ExportItem::End(result));
    });
    ExportEntries {
        rx,
        _cancel: cancel_tx,
    }
}
