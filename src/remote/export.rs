//! The export's entries as they stream in: the body (a JSON array) is scanned on a blocking thread by
//! [`super::scan::read_export`], each entry's content decoded into the caller's target as it arrives.
//! Finished entries are gathered into batches that the caller's [`Batcher`] processes on that same
//! thread (no hand-off per entry), and what it makes of each batch is sent on a bounded channel (the
//! parser waits for a slow consumer). A batch is processed when the batcher says it is full, and
//! whenever the parser is about to wait for bytes that have not arrived, so an entry that arrived is
//! never held back by a slow body. Memory is bounded by the batch and the target, whatever the body
//! size. Dropping [`ExportEntries`] cancels the body, so the parser thread ends even when the body
//! stalls.
use super::body::{self, BodyError, IdleReader};
use super::scan::{read_export, ContentTarget, EntryOutcome};
use super::BodyStream;
use futures_util::StreamExt;
use std::cell::RefCell;
use std::fs::File;
use std::ops::ControlFlow;
use tokio::sync::{mpsc, oneshot};

/// What the parser thread sends: what the batcher made of each batch, then the count at a clean end,
/// or the error that ended the scan.
pub enum ExportItem<B> {
    Batch(B),
    End(Result<u64, BodyError>),
}

/// Gathers finished entries on the parser thread and processes them a batch at a time.
pub trait Batcher<O> {
    /// What a processed batch becomes (sent to the consumer).
    type Out: Send + 'static;
    /// Take one finished entry; `true` when the batch is full and is to be processed now.
    fn push(&mut self, entry: EntryOutcome<O>) -> bool;
    /// Process the entries taken since the last call (`None` when there were none). `Break`: send this
    /// and stop the scan (e.g. after a local disk error). `gone` tells whether the consumer gave up
    /// (then nothing more is to be done: stop as soon as possible).
    fn process(
        &mut self,
        gone: &(dyn Fn() -> bool + Sync),
    ) -> Option<ControlFlow<Self::Out, Self::Out>>;
}

/// The receiving end; dropping it stops the parser.
pub struct ExportEntries<B> {
    rx: mpsc::Receiver<ExportItem<B>>,
    cancel: oneshot::Sender<()>,
    parser: tokio::task::JoinHandle<()>,
}

impl<B> ExportEntries<B> {
    /// The next item (`None` only if the parser thread died).
    pub async fn next(&mut self) -> Option<ExportItem<B>> {
        self.rx.recv().await
    }

    /// Stop the parser and wait until its thread is done (nothing it does outlives this), e.g. before
    /// falling through to another way of filling the mirror.
    pub async fn stop(self) {
        drop(self.rx);
        drop(self.cancel);
        let _ = self.parser.await;
    }
}

/// The parser thread's batcher and its channel: shared by the scan's `each` callback and the body
/// reader's `idle` hook (both on the parser thread, never at once).
struct Flow<B, O>
where
    B: Batcher<O>,
{
    batcher: B,
    tx: mpsc::Sender<ExportItem<B::Out>>,
    stopped: bool,
    _entry: std::marker::PhantomData<fn(O)>,
}

impl<B: Batcher<O>, O> Flow<B, O> {
    /// Process what the batcher holds and send it; after a `Break`, or once the consumer is gone,
    /// the scan stops.
    fn flush(&mut self) {
        if self.stopped {
            return;
        }
        let tx = &self.tx;
        let (out, stop) = match self.batcher.process(&|| tx.is_closed()) {
            None => return,
            Some(ControlFlow::Continue(out)) => (out, false),
            Some(ControlFlow::Break(out)) => (out, true),
        };
        if self.tx.blocking_send(ExportItem::Batch(out)).is_err() || stop {
            self.stopped = true;
        }
    }
}

/// Start scanning a 2xx export body: `target` receives each entry's decoded content, `spool` provides
/// scratch files for content that arrives before its encoding, `batcher` processes finished entries
/// on the parser thread, and `queue` processed batches may wait for the consumer. Call it inside the
/// runtime.
pub fn stream_entries<T, S, B>(
    body: BodyStream,
    mut target: T,
    mut spool: S,
    batcher: B,
    queue: usize,
) -> ExportEntries<B::Out>
where
    T: ContentTarget + Send + 'static,
    S: FnMut() -> std::io::Result<File> + Send + 'static,
    B: Batcher<T::Out> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let cid = body.correlation_id;
    let chunks: super::ByteStream = Box::pin(body.chunks.take_until(cancel_rx));
    let handle = tokio::runtime::Handle::current();
    let parser = tokio::task::spawn_blocking(move || {
        let flow = RefCell::new(Flow {
            batcher,
            tx: tx.clone(),
            stopped: false,
            _entry: std::marker::PhantomData,
        });
        // Before the parser waits for bytes, the entries it holds are processed.
        let reader = IdleReader::new(chunks, handle, || flow.borrow_mut().flush());
        let result = read_export(reader, &mut target, &mut spool, |entry| {
            let mut f = flow.borrow_mut();
            if f.batcher.push(entry) {
                f.flush();
            }
            match f.stopped {
                // The consumer gave up (sub-deadline or cancellation), or the batcher stopped.
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        })
        .map_err(|e| body::classify(e, "export", &cid));
        let mut f = flow.into_inner();
        // The last entries (or those before a broken body) are processed before the end is told.
        f.flush();
        if !f.stopped {
            let _ = tx.blocking_send(ExportItem::End(result));
        }
    });
    ExportEntries {
        rx,
        cancel: cancel_tx,
        parser,
    }
}
